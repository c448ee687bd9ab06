"""The ai capability against the local Groq stand-in, with the real SDK."""

from __future__ import annotations

import pytest

import base64
import io
import os

from PIL import Image

from lamcontrol.agents.ai import SYSTEM_PROMPT, VISION_MODEL, Ai, speakable
from lamcontrol import config as lamconfig
from lamcontrol.agents.capability import Shared, TaskFailed, Unavailable
from lamcontrol.agents.main import load_capabilities
from helpers import unset
from stubs.groq_server import GroqStub, rate_limited, retired, server_error, slow

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_real_key(monkeypatch, tmp_path):
    unset(monkeypatch, "GROQ_API_KEY", "GROQ_BASE_URL", "LAM_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))  # no user config file


@pytest.fixture
def stub():
    with GroqStub("Paris is the capital of France.") as server:
        yield server


def ai_for(stub, **settings) -> Ai:
    ai = Ai({"api_key": "test-key", "base_url": stub.url, "max_retries": 0, "timeout": 5.0, **settings})
    ai.check()
    ai.start()
    return ai


def test_answer_is_the_outcome(stub):
    outcome = ai_for(stub).run("ask", {"prompt": "what is the capital of france"})
    assert outcome.message == "Paris is the capital of France."
    assert outcome.data == {"answer": "Paris is the capital of France.", "model": "openai/gpt-oss-20b"}
    call = stub.calls[-1]
    assert call["messages"] == [{"role": "system", "content": SYSTEM_PROMPT},
                                {"role": "user", "content": "what is the capital of france"}]
    assert call["model"] == "openai/gpt-oss-20b" and stub.requests[-1].headers["Authorization"] == "Bearer test-key"


def test_code_and_markup_are_not_spoken_and_never_run(stub, tmp_path):
    marker = tmp_path / "ran"
    stub.answer = f"**Sure.** Run this:\n```bash\ntouch {marker}\n```\n- It creates a file."
    outcome = ai_for(stub).run("ask", {"prompt": "make a file"})
    assert outcome.message == "Sure. Run this: It creates a file."
    assert "touch" in outcome.data["answer"] and not marker.exists()


def test_only_code_is_a_failure(stub):
    stub.answer = "```python\nimport os\nos.system('reboot')\n```"
    with pytest.raises(TaskFailed, match="only code"):
        ai_for(stub).run("ask", {"prompt": "reboot it with python"})


def test_long_answers_are_cut_at_a_sentence(stub):
    stub.answer = "First sentence here. " * 40
    outcome = ai_for(stub, max_chars=100).run("ask", {"prompt": "talk"})
    assert len(outcome.message) <= 100 and outcome.message.endswith(".")
    assert len(outcome.data["answer"]) > 500


@pytest.mark.parametrize("reply, why", [
    (rate_limited(20), "rate-limiting"),
    (server_error(503), "server error"),
    (retired("llama-3.3-70b-versatile"), "no longer serves the model"),
])
def test_groq_failures_are_sentences(stub, reply, why):
    stub.then(reply)
    with pytest.raises(TaskFailed, match=why):
        ai_for(stub, model="llama-3.3-70b-versatile").run("ask", {"prompt": "hi"})


def test_timeout_is_a_sentence(stub):
    stub.then(slow(30, "too late"))
    with pytest.raises(TaskFailed, match="timed out"):
        ai_for(stub, timeout=0.5).run("ask", {"prompt": "hi"})


@pytest.mark.parametrize("args", [{}, {"prompt": ""}, {"prompt": 42}])
def test_bad_args(stub, args):
    with pytest.raises(TaskFailed, match="needs a question or task"):
        ai_for(stub).run("ask", args)
    assert stub.calls == []


def test_too_long_prompt(stub):
    with pytest.raises(TaskFailed, match="too long"):
        ai_for(stub).run("ask", {"prompt": "a" * 5000})


def test_no_key_is_unavailable_with_what_to_set():
    with pytest.raises(Unavailable, match="GROQ_API_KEY"):
        Ai({}).check()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown keys"):
        Ai({"temperature": 2})
    with pytest.raises(Unavailable, match="timeout"):
        Ai({"api_key": "k", "timeout": -1.0}).check()


def test_groq_section_is_shared_and_overridden(stub, tmp_path):
    """The agent hands the config file's [groq] section to ai when it makes it: nothing goes through
    the environment, and ai reads no file of its own."""
    config = tmp_path / "lam.toml"
    config.write_text(f'[groq]\napi_key = "shared-key"\nbase_url = "{stub.url}"\nmodel = "openai/gpt-oss-120b"\n'
                      '[capabilities.ai]\nmax_retries = 0\n')
    made, left_out = load_capabilities(["ai"], lamconfig.load(str(config)))
    assert left_out == {} and "LAM_CONFIG" not in os.environ
    made["ai"].run("ask", {"prompt": "hi"})
    assert stub.calls[-1]["model"] == "openai/gpt-oss-120b"
    assert stub.requests[-1].headers["Authorization"] == "Bearer shared-key"
    shared = Shared.from_config(lamconfig.load(str(config)))
    Ai({"model": "openai/gpt-oss-20b"}, shared).run("ask", {"prompt": "hi"})
    assert stub.calls[-1]["model"] == "openai/gpt-oss-20b"
    with pytest.raises(Unavailable, match="GROQ_API_KEY"):
        Ai({}).check()  # made without the shared sections: no key


def jpeg_url(colour: str = "red", size: tuple[int, int] = (64, 48)) -> tuple[str, bytes]:
    encoded = io.BytesIO()
    Image.new("RGB", size, colour).save(encoded, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.getvalue()).decode(), encoded.getvalue()


def test_a_photo_goes_to_the_vision_model_with_the_question(stub):
    url, raw = jpeg_url()
    stub.answer = "A red square."
    outcome = ai_for(stub).run("ask", {"prompt": "what colour is this", "image": url})
    assert outcome.message == "A red square." and outcome.data == {"answer": "A red square.", "model": VISION_MODEL}
    call = stub.calls[-1]
    assert call["model"] == VISION_MODEL and "reasoning_effort" not in call
    assert call["messages"][-1]["content"][0] == {"type": "text", "text": "what colour is this"}
    assert stub.images() == [raw]
    # The next plain question uses the text model again, photo-free.
    ai_for(stub).run("ask", {"prompt": "and now?"})
    assert stub.calls[-1]["model"] == "openai/gpt-oss-20b" and stub.images() == []


def test_the_vision_model_is_a_setting(stub):
    url, _ = jpeg_url("blue")
    ai_for(stub, vision_model="meta-llama/llama-4-maverick-17b-128e-instruct").run("ask", {"prompt": "what", "image": url})
    assert stub.calls[-1]["model"] == "meta-llama/llama-4-maverick-17b-128e-instruct"


@pytest.mark.parametrize("image", [42, "http://example.org/cat.jpg", "data:text/plain;base64,aGk=",
                                   "data:image/jpeg;base64," + "A" * (4 * 1024 * 1024)])
def test_unusable_photos_are_refused_before_groq(stub, image):
    with pytest.raises(TaskFailed, match="cannot read that photo"):
        ai_for(stub).run("ask", {"prompt": "what is it", "image": image})
    assert stub.calls == []


def test_the_stand_in_refuses_images_for_a_text_model(stub):
    """The stand-in checks what Groq checks, so the tests above mean something."""
    url, _ = jpeg_url()
    with pytest.raises(TaskFailed, match="couldn't get an answer"):
        ai_for(stub, vision_model="openai/gpt-oss-20b").run("ask", {"prompt": "what", "image": url})


def test_speakable():
    assert speakable("# Title\n\n* one\n* two", 100) == "Title one two"
    assert speakable("word " * 50, 30).endswith("...")


def test_end_to_end_question_answered_without_the_parser_llm(lam):
    """The coordinator's Groq is down; the sentence templates understand the prompt without it (the
    fast path never asks Groq) and the ai agent answers with its own Groq."""
    with GroqStub() as parser_groq, GroqStub("Two plus two is four.") as ai_groq:
        parser_groq.answer = lambda body: server_error(503)
        lam.coordinator(f'[groq]\napi_key = "k"\nbase_url = "{parser_groq.url}"\nmax_retries = 0\n',
                        env={"GROQ_API_KEY": ""})
        lam.agent("brain", "ai", extra_config=f'[capabilities.ai]\napi_key = "k"\nbase_url = "{ai_groq.url}"\n',
                  env={"GROQ_API_KEY": ""})
        reply = lam.send("ask the ai what is two plus two", source="r1")
        assert reply.status == "succeeded", reply
        assert "Two plus two is four." in reply.response and parser_groq.calls == []
        assert ai_groq.calls[-1]["messages"][-1]["content"] == "what is two plus two"
