"""Understanding that learns: spoken forms, the learned reader's readings and how sure it is, questions
for the ai, a question back answered by the next prompt, and an unsure reading asked about first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lamcontrol.coordinator.language import NO_ANSWERS, Context, Language, installed, installed_specs
from lamcontrol.coordinator.parsing import ChainParser
from lamcontrol.coordinator.words import Respeller, trimmed, words
from lamcontrol.language import spoken_address
from lamcontrol.protocol import PromptStatus
from test_routing import Routing

NAMES = {"home": ["desk lamp", "kitchen", "living room", "movie night", "front door"], "messaging": ["Jason", "Amy"]}


@pytest.fixture(autouse=True)
def no_groq_key(monkeypatch):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)


def read(prompt: str, names: dict | None = None):
    return ChainParser().parse(prompt, Context(vocabulary=NAMES if names is None else names))


def commands(prompt: str, names: dict | None = None) -> list[str]:
    return [c.text for c in read(prompt, names).runs]


def test_words_join_numbers_and_addresses_said_aloud():
    said = "take me to reddit dot com slash r slash python at twenty five percent"
    tokens = words(said)
    assert [t.text for t in tokens] == ["take", "me", "to", "reddit.com/r/python", "at", "25", "percent"]
    assert tokens[3].address and said[tokens[3].start:tokens[3].end] == "reddit dot com slash r slash python"
    assert tokens[5].number and said[tokens[5].start:tokens[5].end] == "twenty five"
    assert [t.text for t in trimmed(words("hey rabbit, could you open youtube for me please"))] == ["open", "youtube"]


def test_an_address_is_one_address_or_none():
    assert spoken_address("bbc dot co dot uk") == "https://bbc.co.uk"
    assert spoken_address("reddit dot com slash r slash python") == "https://reddit.com/r/python"
    assert spoken_address("netflix.com in the browser") == ""  # words after an address are no part of it


def test_misheard_names_of_capabilities_are_mended_but_words_are_not():
    mend = Respeller({"youtube", "telegram", "discord", "video"}, {("open", "interpreter")}).mended
    assert mend("play despacito on you tube") == "play despacito on youtube"
    assert mend("send a telegramme to jason") == "send a telegram to jason"
    assert mend("message jason on discort") == "message jason on discord"
    assert mend("show me cat videos") == "show me cat videos"  # a plural is no mishearing


@pytest.mark.parametrize("prompt, expected", [
    # Phrasings no template spells out, read by the learned reader.
    ("olly turn the volume up", ["computer volume up"]),
    ("rise volume", ["computer volume up"]),
    ("i want the speakers turned up high", ["computer volume up"]),
    ("quiet please", ["computer volume mute"]),
    ("go back to the previous track", ["computer media back"]),
    ("search up taylor swift tour dates", ["browser google taylor swift tour dates"]),
    # The frame's own words stay out of a free-text slot.
    ("open netflix.com in the browser", ["browser site https://netflix.com"]),
    ("take me to reddit dot com slash r slash python", ["browser site https://reddit.com/r/python"]),
    ("start discord on my computer", ["computer run discord"]),
    ("play despacito on you tube", ["browser youtube play despacito"]),
    ("open youtube and play lofi then dim the desk lamp to twenty percent",
     ["browser youtube play lofi", "home dim the desk lamp to twenty percent"]),
    ("hey rabbit put on the movie night scene", ["home scene movie night"]),
    ("send a telegram message to amy hello there", ["telegram Amy hello there"]),
    ("message jason on discort saying hi", ["discord Jason hi"]),
    # The house without a name it knows: Home Assistant answers, or asks which lights.
    ("please turn on the lights", ["home turn on the lights"]),
    ("dim the lights please", ["home dim the lights"]),
    ("turn off lights in bathroom", ["home turn off lights in bathroom"]),
    # Plainly in the command language.
    ("google home good night", ["google home good night"]),
    ("computer volume 50", ["computer volume 50"]),
])
def test_sentences_people_say(prompt, expected):
    assert commands(prompt) == expected


def test_questions_and_chatter_go_to_the_ai_and_nothing_else_does():
    assert commands("can you tell me a joke") == ["ai can you tell me a joke"]
    assert commands("who won the world cup in 2018?") == ["ai who won the world cup in 2018"]
    assert commands("thank you") == ["ai thank you"]
    assert commands("frobnicate the whatsit") == []
    # Without an agent that answers questions, the reply says so and what would answer them.
    offline = Language({name: spec for name, spec in installed_specs().items() if name != "ai"})
    result = ChainParser().parse("what is the capital of france", Context(language=offline))
    assert not result.commands and result.reason == NO_ANSWERS and "GROQ_API_KEY" in result.reason


def test_a_likely_reading_is_asked_about_not_run():
    result = read("glorp the volume")
    assert [c.text for c in result.commands] == ["computer volume up"] and not result.runs
    assert result.question == "Did you mean: computer volume up?" and result.confidence < 0.8


def test_a_sure_template_match_needs_no_doubt_and_power_is_still_confirmed():
    result = read("shut down my computer")
    assert [c.text for c in result.runs] == ["computer power shutdown"] and result.runs[0].risk == "high"


def test_explain_says_how_sure_and_the_runner_up():
    done = subprocess.run([sys.executable, "-m", "lamcontrol", "parse", "--explain", "i can't hear a thing"],
                          capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    parsed = json.loads(done.stdout)
    assert [c["command"] for c in parsed["commands"]] == ["computer volume up"]
    assert "learned" in parsed["explain"] and "sure" in parsed["explain"] and "runner-up" in parsed["explain"]


def test_the_reader_is_built_from_the_language_alone():
    language = installed()
    intents = {i.key for i in language.reader.intents}
    assert {"computer volume [level=up]", "browser youtube [play=True]", "home say #whole"} <= intents
    # Example files beside the capabilities' modules taught it; their sentences travel in the spec.
    assert any(source.startswith("hwu64:") for *_, source in installed_specs()["computer"].examples)


@pytest.fixture
def routing(tmp_path):
    return Routing(tmp_path / "journal.db")


def test_a_question_back_is_answered_by_the_next_prompt(routing):
    routing.online("pc", {"browser": ["google", "site", "youtube", "amazon", "gmail"]})
    routing.send("search for", source="r1")
    [asked] = routing.replies()
    assert asked.status == PromptStatus.IGNORED and asked.response == "What should I search for?"
    routing.send("cheap flights to lisbon", source="r1")
    [task] = routing.tasks()
    assert (task.capability, task.action, task.args) == ("browser", "google", {"query": "cheap flights to lisbon"})
    routing.send("cheap flights to lisbon", source="r1")  # the question was answered: alone, it is not read with it
    assert len(routing.tasks()) == 1 and routing.replies()[-1].status != PromptStatus.SUCCEEDED


def test_an_unsure_reading_runs_only_when_the_person_says_yes(routing):
    routing.online("pc", {"computer": ["volume", "media"]})
    routing.send("glorp the volume", source="r1")
    [asked] = routing.replies()
    assert asked.status == PromptStatus.NEEDS_CONFIRMATION and "Did you mean: computer volume up?" in asked.response
    assert not routing.tasks()
    routing.send("yes", source="r1")
    [task] = routing.tasks()
    assert (task.capability, task.action, task.args) == ("computer", "volume", {"level": "up"})
