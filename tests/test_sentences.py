"""The offline sentence grammar over the prompt corpus, plus transcripts and confirmations."""

from __future__ import annotations

import pytest

from corpus import CASES, Case
from lamcontrol.coordinator.language import Context, installed, parse_chain
from lamcontrol.coordinator.parsing import ChainParser, build_parser, is_cancellation, is_confirmation


@pytest.fixture(autouse=True)
def no_groq_key(monkeypatch):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)


def shape(commands) -> list[tuple]:
    """What an agent receives, without the command text's spelling."""
    return [(c.capability, c.action, c.args) for c in commands]


def check(case: Case, context: Context | None = None) -> None:
    result = ChainParser().parse(case.prompt, context or Context())
    assert shape(result.runs) == shape(parse_chain(case.expected).commands), result.to_dict()
    if not case.commands:
        assert result.answer, "a prompt without commands must say why"
        assert case.reason.lower() in result.answer.lower(), result.answer


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(reason=c.xfail, strict=True)) if c.xfail
                                  else c for c in CASES], ids=lambda c: c.prompt[:60] or "<empty>")
def test_corpus(case):
    check(case)


def test_corpus_is_large_and_accuracy_is_reported(capsys):
    assert len(CASES) >= 150
    hits = 0
    for case in CASES:
        try:
            check(case)
            hits += 1
        except AssertionError:
            pass
    with capsys.disabled():
        print(f"\noffline grammar: {hits}/{len(CASES)} corpus prompts right ({100 * hits / len(CASES):.1f}%)")
    assert hits == len(CASES) - sum(1 for c in CASES if c.xfail)


CONTACTS = Context(vocabulary={"messaging": ["Jason", "Mom"], "computer": ["spotify"]})


@pytest.mark.parametrize("prompt, expected", [
    ("text jason on telegram hi", "telegram Jason hi"),  # the contact's own spelling
    ("tell MOM on discord I'm home", "discord Mom I'm home"),
    ("open spotify", "computer run spotify"),  # an advertised application beats the website
    ("open youtube", "browser site https://www.youtube.com"),
    ("text jayson on telegram hi", "telegram Jason hi"),  # speech to text's spelling of an advertised name
    ("text tom on telegram hi", "telegram tom hi"),  # too far from Mom: a name of its own
])
def test_vocabulary(prompt, expected):
    result = ChainParser().parse(prompt, CONTACTS)
    assert [c.text for c in result.commands] == [expected]


@pytest.mark.parametrize("text", ["confirm", "Yes", "yes, do it", "Yes do it!", "do it", "go ahead", "Go ahead please",
                                  "confirmed.", "yep"])
def test_confirmations(text):
    assert is_confirmation(text) and not is_cancellation(text)


@pytest.mark.parametrize("text", ["cancel", "No.", "never mind", "don't", "stop", "forget it", "no thanks"])
def test_cancellations(text):
    assert is_cancellation(text) and not is_confirmation(text)


@pytest.mark.parametrize("text", ["yes shut it down", "confirm the order on amazon", "do it tomorrow", "", "no way jose"])
def test_neither(text):
    assert not is_confirmation(text) and not is_cancellation(text)


def test_offline_chain_without_a_key(monkeypatch):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    parser = build_parser({"groq": {"api_key": ""}})
    rigid = parser.parse("computer volume 50", Context())
    assert rigid.parser == "grammar" and rigid.commands[0].args == {"level": 50}
    loose = parser.parse("shut down my computer", Context())
    assert loose.parser == "sentences" and loose.commands[0].risk == "high" and not loose.note


@pytest.mark.parametrize("prompt", ["x" * 5000, "open " + "a." * 3000 + "com", "text " + "J" * 200 + " on telegram hi",
                                    "\x00\x01 volume up", "🙂🙂🙂", "&& && &&", "computer volume", "browser site ftp://x.org"])
def test_odd_input_is_refused_with_a_reason_never_a_crash(prompt):
    result = build_parser({}).parse(prompt, Context())
    assert result.commands or result.reason


def test_loose_power_prompt_waits_for_a_spoken_confirmation(lam):
    lam.coordinator(env={"GROQ_API_KEY": ""})
    held = lam.send("can you shut down my computer", source="r1")
    assert held.status == "needs_confirmation" and "computer power shutdown" in held.response
    confirmed = lam.send("Yes, do it.", source="r1")
    assert confirmed.status == "failed" and confirmed.response.startswith("No agent can do computer power;")
    lam.send("restart my computer", source="r1")
    assert lam.send("never mind", source="r1").response == "Cancelled."


HOUSE_NAMES = {"home": ["kitchen light", "bedroom light", "living room lamp"]}


@pytest.mark.parametrize("prompt, expected", [
    ("turn off the kitchen light and the bedroom light",
     ["home turn off the kitchen light", "home turn off the bedroom light"]),
    ("turn on the living room lamp and the kitchen light and text mom on telegram hi",
     ["home turn on the living room lamp", "home turn on the kitchen light", "telegram mom hi"]),
    ("turn off the kitchen light and turn on the bedroom light",
     ["home turn off the kitchen light", "home turn on the bedroom light"]),
])
def test_a_house_clause_that_only_names_a_device_does_what_the_one_before_did(prompt, expected):
    """Home Assistant reads a bare name as "turn it on": "... and the bedroom light" must carry the verb."""
    assert [c.text for c in installed(HOUSE_NAMES).understand(prompt).commands] == expected
