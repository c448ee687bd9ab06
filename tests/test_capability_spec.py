"""A capability is one module: its language travels with it.

A ``weather`` capability that exists only in a temporary module and its entry point (a
dist-info folder on PYTHONPATH, nothing edited anywhere else) is understood end to end: its
agent advertises the spec on the broker, the coordinator (which does not have the module)
routes "what's the weather in paris" to it without asking the LLM, lists it in the LLM's
instructions, and ``lam parse`` understands it where the module is installed. Older and newer
sides get along: a coordinator reading an agent without a spec falls back to the installed
spec, else to the rigid actions in presence; a spec with keys it does not know is read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import ROOT, unset, wait_until
from lamcontrol.coordinator.language import Language, installed_specs
from lamcontrol.coordinator.registry import Registry
from lamcontrol.coordinator.specs import SpecStore
from lamcontrol.language import (SPEC_VERSION, ActionSpec, Arg, ArgumentError, CapabilitySpec, advertisement,
                                 read_specs)
from lamcontrol.protocol import AgentSpec, Presence, ProtocolError, Topics
from stubs.groq_server import GroqStub

WEATHER = '''
"""weather: the forecast for a city (answers from a table, for the test)."""

from lamcontrol.agents.capability import Arg, Capability, Outcome, action


class Weather(Capability):
    name = "weather"
    summary = "Tells the weather forecast for a city."

    @action(syntax=["weather forecast {city}"], args=[Arg("city", "text", "a city")], idempotent=True,
            sentences=["[(what's|what is|how's|how is)] the (weather|forecast) (in|for) {city} [today]",
                       "(weather|forecast) (in|for) {city}", "tell me the forecast for {city}"],
            examples=[("what's the weather in paris", "weather forecast paris")])
    def forecast(self, args: dict) -> Outcome:
        """The forecast for a city."""
        return Outcome(f"Sunny in {args['city']}.", {"city": args["city"]})
'''


@pytest.fixture
def weather(tmp_path):
    """The capability as a plugin: a module and a dist-info with its entry point; the PYTHONPATH to use."""
    site = tmp_path / "plugin"
    (site / "lam_weather-0.1.dist-info").mkdir(parents=True)
    (site / "lam_weather.py").write_text(textwrap.dedent(WEATHER))
    (site / "lam_weather-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: lam-weather\n"
                                                                 "Version: 0.1\n")
    (site / "lam_weather-0.1.dist-info" / "entry_points.txt").write_text(
        "[lamcontrol.capabilities]\nweather = lam_weather:Weather\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def lam_parse(env: dict, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "lamcontrol", "parse", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**{k: v for k, v in os.environ.items() if not k.startswith("GROQ_")}, **env},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_lam_parse_understands_an_installed_plugin(weather):
    parsed = lam_parse(weather, "--explain", "tell me the forecast for paris")
    assert [c["command"] for c in parsed["commands"]] == ["weather forecast paris"]
    assert parsed["parser"] == "sentences"
    # Not installed: not a weather command, only a question for the ai.
    assert [c["capability"] for c in lam_parse({}, "what's the weather in paris")["commands"]] == ["ai"]


def test_a_plugin_is_understood_end_to_end(lam, weather, monkeypatch):
    unset(monkeypatch, "GROQ_API_KEY")
    with GroqStub("x") as groq:
        lam.coordinator(f'[groq]\napi_key = "test-key"\nbase_url = "{groq.url}"\nmax_retries = 0\n')
        lam.agent("sky", "weather", env=weather)
        topic = lam.topics.agent_spec("sky")
        specs = read_specs(wait_until(lambda: next(iter(lam.recorder.parsed(AgentSpec, topic)), None), 20, "the spec"))
        assert specs["weather"].action("forecast").syntax[0].form == "weather forecast {city}"
        for prompt in ("what's the weather in paris", "weather in paris", "tell me the forecast for paris"):
            reply = lam.send(prompt)
            assert reply.response == "Sunny in paris." and reply.tasks[0].agent == "sky"
        assert groq.calls == [], "sentences the templates match never reach the LLM"
        lam.send("is it going to be nice out in lisbon")  # no template: Groq is asked, with weather listed
        system = groq.calls[-1]["messages"][0]["content"]
        assert "weather forecast <city>" in system and "what's the weather in paris => weather forecast paris" in system


def test_a_coordinator_without_a_spec_falls_back():
    """No spec from an agent: the installed spec of that name, else the rigid actions in presence."""
    registry = Registry()
    registry.update(Presence(state="online", agent="old", capabilities={"computer": ["volume"], "lamp": ["on"]}))
    language = SpecStore().language(registry)
    assert language.parse_chain("computer volume 30").commands[0].args == {"level": 30}
    assert language.understand("turn it up").commands[0].text == "computer volume up"
    lamp = language.parse_chain("lamp on the desk one")
    assert (lamp.commands[0].capability, lamp.commands[0].args) == ("lamp", {"text": "the desk one"})


def test_an_advertised_spec_wins_and_a_newer_spec_is_read():
    registry = Registry()
    registry.update(Presence(state="online", agent="new", capabilities={"lamp": ["on"]}))
    spec = CapabilitySpec("lamp", "Lamps.", (ActionSpec("on", syntax=(), args=(Arg("which", "choice", "a lamp",
                                                                                     choices=("desk", "door")),)),))
    data = advertisement("new", [spec]).to_dict()
    data["capabilities"]["lamp"]["future_key"] = {"anything": 1}  # a newer agent's field
    data["capabilities"]["lamp"]["actions"][0]["syntax"] = [{"form": "lamp on {which}", "fixed": {}, "later": 2}]
    data["capabilities"]["broken"] = {"actions": "not a list of actions"}
    store = SpecStore()
    store.on_spec(AgentSpec.from_dict(json.loads(json.dumps(data))))
    language = store.language(registry)
    assert language.parse_chain("lamp on desk").commands[0].args == {"which": "desk"}
    assert "is desk or door" in language.parse_chain("lamp on attic").reason
    with pytest.raises(ProtocolError):  # the bus refuses it on lam/errors; the store never sees it
        AgentSpec.from_payload(b"{not json")
    assert data["version"] == SPEC_VERSION and "broken" not in read_specs(AgentSpec.from_dict(data))


def test_an_older_coordinator_reads_a_newer_agents_presence():
    """The spec is a topic of its own: presence keeps its old shape (capabilities, flat vocabulary)."""
    presence = Presence(state="online", agent="a", capabilities={"messaging": ["telegram"]},
                        vocabulary={"messaging": ["Mary Ann"]})
    assert set(json.loads(presence.to_json())) >= {"state", "agent", "capabilities", "vocabulary"}


def test_argument_checks_are_the_same_for_gate_and_agent():
    spec = installed_specs()["computer"]
    volume = spec.action("volume")
    with pytest.raises(ArgumentError, match="0 to 100"):
        volume.check({"level": 150})
    assert Language({"computer": spec}).parse_chain("computer volume 150").reason == str(
        pytest.raises(ArgumentError, volume.check, {"level": 150}).value)


def test_lam_monitor_reads_a_spec_line():
    from lamcontrol.protocol import describe_event

    payload = advertisement("sky", [CapabilitySpec("weather")]).to_json()
    topic = Topics("lam").agent_spec("sky")
    assert describe_event("lam", topic, payload) == ("agent", "sky spec: weather")
    assert describe_event("lam", topic, b"") == ("agent", f"{topic} cleared")


def test_names_of_every_online_agent_are_known():
    """Two messaging agents with different contacts: the coordinator knows both lists; an offline one's go."""
    messaging = installed_specs()["messaging"]
    registry, store = Registry(), SpecStore()
    for agent, contact in (("a", "Mary Ann"), ("b", "Uncle Bob")):
        registry.update(Presence(state="online", agent=agent, capabilities={"messaging": ["telegram"]}))
        store.on_spec(advertisement(agent, [messaging.with_lists({"contacts": [contact]})]))
    texts = lambda: [c.text for c in store.language(registry).understand(  # noqa: E731
        "text mary ann on telegram hi and text uncle bob on telegram bye").commands]
    assert texts() == ['telegram "Mary Ann" hi', 'telegram "Uncle Bob" bye']
    registry.update(Presence(state="offline", agent="b"))
    assert 'telegram "Uncle Bob" bye' not in texts()


def test_an_agent_saying_again_what_it_said_makes_no_new_language():
    """After a broker restart every agent comes back and publishes its spec again: the same words are
    read with the language already made; a new contact makes a new one."""
    messaging = installed_specs()["messaging"]
    registry, store = Registry(), SpecStore()
    spoken = [messaging.with_lists({"contacts": ["Mary Ann"]})]
    registry.update(Presence(state="online", agent="a", capabilities={"messaging": ["telegram"]}))
    store.on_spec(advertisement("a", spoken))
    first = store.language(registry)
    registry.update(Presence(state="offline", agent="a"))
    registry.update(Presence(state="online", agent="a", capabilities={"messaging": ["telegram"]}))
    store.on_spec(advertisement("a", spoken))
    assert store.language(registry) is first
    store.on_spec(advertisement("a", [messaging.with_lists({"contacts": ["Mary Ann", "Uncle Bob"]})]))
    changed = store.language(registry)
    assert changed is not first
    assert [c.text for c in changed.understand("text uncle bob on telegram hi").commands] == ['telegram "Uncle Bob" hi']


def test_rigid_chains_keep_each_commands_words():
    language = Language(installed_specs(), {"messaging": ["Mary Ann"]})
    chain = language.parse_chain("browser google weather &&   telegram Mary Ann hi there&&discord \"Uncle Bob\" ok")
    assert [(c.action, c.args) for c in chain.commands] == [
        ("google", {"query": "weather"}), ("telegram", {"name": "Mary Ann", "message": "hi there"}),
        ("discord", {"name": "Uncle Bob", "message": "ok"})]
