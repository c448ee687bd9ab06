"""The home capability against a real Home Assistant 2024.3.3, installed and started by the tests.

The session-scoped ``home_assistant`` fixture (tests/conftest.py) starts it with
``tests/hass/configuration.yaml``: a desk lamp, dimmable living room lights, a garage door, the
"Movie night" scene and the "Good night" script.
"""

from __future__ import annotations

import socket

import pytest

from lamcontrol.agents.capability import TaskFailed, Unavailable
from lamcontrol.agents.home import Home
from helpers import wait_until
from lamcontrol.language import read_specs
from lamcontrol.protocol import AgentSpec
from lamcontrol.protocol import Presence

EXPOSED = {"Bedroom", "Desk lamp", "Garage door", "Good night", "Kitchen", "Living Room", "Living room lights",
           "Movie night"}


@pytest.fixture
def house(home_assistant):
    """The house in a known state: desk lamp on, living room lights full, garage door open."""
    home_assistant.call("input_boolean", "turn_on", entity_id=["input_boolean.desk_lamp_power",
                                                               "input_boolean.garage_door_open"])
    home_assistant.call("input_number", "set_value", entity_id="input_number.living_room_level", value=100)
    return home_assistant


@pytest.fixture
def home(house):
    capability = Home({"url": house.url, "token": house.token, "timeout": 10.0, "refresh": 2.0})
    capability.check()
    yield capability
    capability.close()


def test_a_sentence_switches_the_lamp_off_and_home_assistant_answers(home, house):
    outcome = home.run("say", {"text": "turn off the desk lamp"})
    assert outcome.message == "Turned off the light"
    assert outcome.data["success"] == ["Desk lamp"]
    assert house.state("light.desk_lamp")["state"] == "off"


def test_a_sentence_dims_the_living_room_lights(home, house):
    home.run("say", {"text": "set the living room lights to 30 percent"})
    assert float(house.state("input_number.living_room_level")["state"]) == 30


def test_a_sentence_only_newer_home_assistants_know_says_so(home, house):
    home.start()
    wait_until(lambda: home.names().get("areas"), 30, "the names Home Assistant exposes")
    with pytest.raises(TaskFailed) as failed:
        home.run("say", {"text": "lights off in the living room"})
    assert "This Home Assistant (2024.3.3) does not know that sentence; newer releases" in str(failed.value)
    assert house.state("light.living_room_lights")["state"] == "on"


def test_a_question_is_answered_from_the_real_state(home, house):
    assert home.run("say", {"text": "is the garage door open"}).message == "Yes"
    house.call("cover", "close_cover", entity_id="cover.garage_door")
    assert home.run("say", {"text": "is the garage door open"}).message == "No, closed"


def test_a_scene_is_activated_by_name(home, house):
    outcome = home.run("scene", {"name": "movie night"})
    assert outcome.message == "Activated Movie night."
    assert house.state("light.desk_lamp")["state"] == "off"
    assert float(house.state("input_number.living_room_level")["state"]) == 30


@pytest.mark.parametrize("action, name", [("script", "the Good Night script"), ("run", "good night")])
def test_a_script_runs_by_name(home, house, action, name):
    outcome = home.run(action, {"name": name})
    assert outcome.message == "Started Good night."
    wait_until(lambda: house.state("light.living_room_lights")["state"] == "off", 10, "the script to finish")
    assert house.state("light.desk_lamp")["state"] == "off"


@pytest.mark.parametrize("action, args, sentence", [
    ("say", {"text": "turn off the flux capacitor"}, "Sorry, I am not aware of any device called flux capacitor"),
    ("scene", {"name": "disco"}, "Home Assistant has no scene called disco."),
    ("script", {"name": "movie night"}, "Home Assistant has no script called movie night."),
    ("run", {"name": "desk lamp"}, "Home Assistant has no script or scene called desk lamp."),
])
def test_an_unknown_name_fails_with_a_sentence(home, house, action, args, sentence):
    with pytest.raises(TaskFailed) as failed:
        home.run(action, args)
    assert str(failed.value) == sentence
    assert house.state("light.desk_lamp")["state"] == "on"


def test_the_names_exposed_to_assist_are_advertised_and_follow_changes(home, house):
    announced = []
    home.on_change = lambda: announced.append(home.vocabulary())
    home.start()
    wait_until(lambda: set(home.vocabulary()) == EXPOSED, 20, f"the exposed names (have {home.vocabulary()})")
    house.websocket("config/entity_registry/update", entity_id="light.desk_lamp", aliases=["reading light"])
    try:
        wait_until(lambda: "reading light" in home.vocabulary(), 20, "the new alias")
        assert announced[-1] == home.vocabulary()
    finally:
        house.websocket("config/entity_registry/update", entity_id="light.desk_lamp", aliases=[])


def test_a_refused_token_fails_with_a_sentence(house):
    home = Home({"url": house.url, "token": "not-a-token", "timeout": 10.0})
    with pytest.raises(TaskFailed, match="Home Assistant refused the access token"):
        home.run("say", {"text": "turn off the desk lamp"})
    with pytest.raises(TaskFailed, match="Home Assistant refused the access token"):
        home.run("scene", {"name": "movie night"})
    assert house.state("light.desk_lamp")["state"] == "on"


def test_a_stopped_home_assistant_fails_fast_then_works_again(home, house):
    house.stop()
    try:
        with pytest.raises(TaskFailed, match=rf"Home Assistant at 127.0.0.1:{house.port} is not reachable."):
            home.run("say", {"text": "turn off the desk lamp"})
    finally:
        house.start()
    assert home.run("say", {"text": "turn off the desk lamp"}).message == "Turned off the light"


def test_a_silent_home_assistant_times_out():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        home = Home({"url": f"http://127.0.0.1:{silent.getsockname()[1]}", "token": "t", "timeout": 1.0})
        with pytest.raises(TaskFailed, match=r"did not answer within 1 seconds"):
            home.run("say", {"text": "turn off the desk lamp"})


def test_check_refuses_without_an_address_or_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("HASS_TOKEN", raising=False)
    with pytest.raises(Unavailable, match="url"):
        Home({"token": "t"}).check()
    with pytest.raises(Unavailable, match="HASS_TOKEN or token_file"):
        Home({"url": "http://127.0.0.1:8123"}).check()
    with pytest.raises(Unavailable, match="cannot read"):
        Home({"url": "http://127.0.0.1:8123", "token_file": str(tmp_path / "missing")}).check()
    (tmp_path / "token").write_text("from-a-file\n")
    monkeypatch.setenv("HASS_TOKEN", "from-the-environment")
    home = Home({"url": "http://127.0.0.1:8123", "token_file": str(tmp_path / "token")})
    home.check()
    assert home.token == "from-the-environment"


def test_home_from_the_bus(lam, house, tmp_path):
    token_file = tmp_path / "hass-token"
    token_file.write_text(house.token)
    agent = lam.agent("home1", "home", extra_config=f'[capabilities.home]\nurl = "{house.url}"\n'
                                                    f'token_file = "{token_file}"\n')
    lam.recorder.wait_for(Presence, lam.topics.agent_status("home1"),
                          lambda p: "Desk lamp" in p.vocabulary.get("home", []))
    lam.coordinator()
    reply = lam.send("home turn off the desk lamp")
    assert (reply.status, reply.response) == ("succeeded", "Turned off the light"), reply
    assert house.state("light.desk_lamp")["state"] == "off"
    # The spec carries each device with its domain, for Home Assistant's own sentences.
    topic = lam.topics.agent_spec("home1")
    spec = wait_until(lambda: next((s["home"] for m in reversed(lam.recorder.parsed(AgentSpec, topic))
                                    if (s := read_specs(m)) and s["home"].lists.get("devices")), None),
                      20, "the home agent's spec with its devices")
    assert {"in": "Desk lamp", "context": {"domain": "light"}} in spec.lists["devices"]
    # Natural sentences, one or chained, reach Home Assistant as it understands them.
    chained = lam.send("hey, turn on the desk lamp and then switch off the desk lamp please")
    assert chained.status == "succeeded", chained
    assert [t.command for t in chained.tasks] == ["home turn on the desk lamp", "home switch off the desk lamp"]
    assert house.state("light.desk_lamp")["state"] == "off"
    assert house.token not in agent.log()
