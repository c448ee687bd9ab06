"""Home Assistant MQTT discovery: payloads against the documented schema, their templates
rendered as Home Assistant renders them, the birth-message and removal behaviour over a real
broker with a real coordinator and agents, and what a real Home Assistant 2024.3 makes of it
all (its MQTT integration added over REST as a person does, its log checked for warnings)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import types
import uuid
from dataclasses import replace
from datetime import datetime, timezone

import jinja2
import pytest
import requests

from helpers import ROOT, wait_until
from lamcontrol.coordinator.discovery import BIRTH_QUIET, WITHDRAWN_BYTES, Configs, node_id
from lamcontrol.coordinator.language import parse_command
from lamcontrol.bus import BrokerSettings
from lamcontrol import __version__
from lamcontrol.protocol import (PROMPT_STATUSES, CoordinatorPresence, CoordinatorRequest, ErrorRecord, Presence,
                                 Prompt, Reply, Result, Task, Topics, parse)

# Home Assistant's documented MQTT options (integrations/<platform>.mqtt, "Configuration Variables").
COMMON = {"availability", "availability_mode", "availability_template", "availability_topic", "device",
          "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon", "json_attributes_template",
          "json_attributes_topic", "name", "object_id", "origin", "payload_available", "payload_not_available",
          "qos", "unique_id"}
PLATFORMS = {  # platform: (required, optional)
    "binary_sensor": ({"state_topic"}, {"device_class", "expire_after", "force_update", "off_delay", "payload_off",
                                        "payload_on", "value_template"}),
    "sensor": ({"state_topic"}, {"device_class", "expire_after", "force_update", "last_reset_value_template",
                                 "options", "suggested_display_precision", "state_class", "unit_of_measurement",
                                 "value_template"}),
    "event": ({"state_topic", "event_types"}, {"device_class", "value_template"}),
    "text": ({"command_topic"}, {"command_template", "max", "min", "mode", "pattern", "retain", "state_topic",
                                 "value_template"}),
    "button": ({"command_topic"}, {"command_template", "device_class", "payload_press", "retain"}),
    "number": ({"command_topic"}, {"command_template", "device_class", "max", "min", "mode", "optimistic",
                                   "payload_reset", "retain", "state_topic", "step", "unit_of_measurement",
                                   "value_template"}),
    "select": ({"command_topic", "options"}, {"command_template", "optimistic", "retain", "state_topic",
                                              "value_template"}),
    "update": (set(), {"command_topic", "device_class", "latest_version_template", "latest_version_topic",
                       "payload_install", "release_summary", "release_url", "retain", "state_topic", "title",
                       "value_template"}),
}
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id",
               "name", "serial_number", "suggested_area", "sw_version", "via_device"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
CONFIG_TOPIC = re.compile(r"^(?P<prefix>[^/]+)/(?P<component>[a-z_]+)/(?P<node>[a-zA-Z0-9_-]+)/"
                          r"(?P<object>[a-zA-Z0-9_-]+)/config$")
SOURCE = "homeassistant"
COORDINATOR = 8  # entities: connectivity, prompt, last reply, reply, agents online, restart, log level, version
BASICS = 6  # an agent's: connectivity, load, last seen, version, last result, task
COMPUTER = BASICS + 5  # a computer agent's: play, pause, next, previous, volume


def as_datetime(value):
    """Home Assistant's ``as_datetime``: a Unix time or an ISO time as a datetime, else None."""
    try:
        return datetime.fromtimestamp(float(value), timezone.utc)
    except (TypeError, ValueError):
        try:
            return datetime.fromisoformat(value)
        except (TypeError, ValueError):
            return None


def render(template: str, value=None, payload: bytes | None = None, state: str = "unknown") -> str:
    """A template rendered the way Home Assistant does (``value``, ``value_json``, ``this``, ``to_json``,
    ``as_datetime``, ``now``); ``state`` is the entity's own."""
    env = jinja2.Environment()
    env.filters["to_json"] = lambda obj: json.dumps(obj, ensure_ascii=False)
    env.filters["as_datetime"] = as_datetime
    context = {"value": value, "this": types.SimpleNamespace(state=state), "as_datetime": as_datetime,
               "now": lambda: datetime.now(timezone.utc)}
    if payload is not None:
        context.update(value=payload.decode(), value_json=json.loads(payload))
    return env.from_string(template).render(**context)


def computer_presence(agent: str = "desk", load: int = 0) -> Presence:
    return Presence(state="online", agent=agent, load=load, max_concurrent=4, version="1.0",
                    capabilities={"computer": ["volume", "media", "run", "power"], "echo": ["say"]})


@pytest.fixture
def discovery():
    return Configs(Topics("lamx"), "homeassistant")


def all_configs(discovery: Configs) -> dict[str, dict]:
    return {**discovery.coordinator_configs(), **discovery.agent_configs(computer_presence()),
            **discovery.agent_configs(Presence(state="online", agent="kitchen-pi", capabilities={"echo": ["say"]}))}


def test_payloads_follow_the_documented_schema(discovery):
    configs = all_configs(discovery)
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(unique_ids) == len(set(unique_ids)), "unique ids must be unique"
    for topic, config in configs.items():
        match = CONFIG_TOPIC.match(topic)
        assert match and match["prefix"] == "homeassistant", topic
        required, optional = PLATFORMS[match["component"]]
        assert required <= set(config), f"{topic} lacks {required - set(config)}"
        unknown = set(config) - COMMON - required - optional
        assert not unknown, f"{topic}: options Home Assistant does not know: {unknown}"
        assert config["unique_id"].startswith("lamx_")
        device = config["device"]
        assert device["identifiers"] and device["name"] and set(device) <= DEVICE_KEYS
        assert config["origin"]["name"] == "LAMControl" and set(config["origin"]) <= ORIGIN_KEYS
        assert not ({"availability", "availability_topic"} <= set(config)), "availability is one or the other"
        for entry in config.get("availability", []):
            assert set(entry) == {"topic", "value_template"}
            assert render(entry["value_template"], payload=b'{"state":"online"}') == "online"
        if match["component"] == "text":
            assert 0 < config["max"] <= 255
        if match["component"] == "number":
            assert config["min"] < config["max"] and config["step"] > 0
    nodes = {CONFIG_TOPIC.match(t)["node"] for t in configs}
    assert {"lamx_coordinator", "lamx_agent_desk"} < nodes and len(nodes) == 3
    for config in configs.values():
        assert config["object_id"] == config["unique_id"]


def test_ids_differing_in_punctuation_are_different_devices(discovery):
    """Default agent ids are host names: kitchen-pi and kitchen_pi must not share a device, and
    forgetting one must not touch the other's entities."""
    dotted, underscored = (Presence(state="online", agent=a, capabilities={"echo": ["say"]})
                           for a in ("kitchen-pi", "kitchen_pi"))
    dotted_topics, underscored_topics = discovery.agent_configs(dotted), discovery.agent_configs(underscored)
    assert not set(dotted_topics) & set(underscored_topics)
    assert {c["device"]["identifiers"][0] for c in dotted_topics.values()}.isdisjoint(
        c["device"]["identifiers"][0] for c in underscored_topics.values())
    assert not set(discovery.agent_topics("kitchen-pi")) & set(underscored_topics)


def test_templates_survive_the_empty_payloads_that_delete_state(discovery):
    """An empty retained payload has no value_json: every template still renders, to nothing harmful:
    attributes to an empty object (Home Assistant logs "Erroneous JSON" for anything else)."""
    for topic, config in all_configs(discovery).items():
        if "value_template" in config:
            rendered = render(config["value_template"], value="")
            assert rendered in ("", "offline", "0", "None") or as_datetime(rendered), topic
        if "json_attributes_template" in config:
            assert render(config["json_attributes_template"], value="") == "{}", topic
        for entry in config.get("availability", []):
            assert render(entry["value_template"], value="") == "offline"


def test_dashboard_and_origin_links():
    configs = Configs(Topics("lamx"), "homeassistant", dashboard_url="http://lam.local:8080")
    for config in [*configs.coordinator_configs().values(), *configs.agent_configs(computer_presence()).values()]:
        assert config["device"]["configuration_url"] == "http://lam.local:8080"
        assert config["origin"]["support_url"] == "http://lam.local:8080"


def test_connectivity_shows_off_not_unavailable(discovery):
    """No availability on connectivity sensors and Last seen (when an agent is gone is when they
    matter); every other entity has one, the coordinator's included."""
    configs = all_configs(discovery)
    for topic, config in configs.items():
        if "/last_seen/" in topic:
            assert "availability" not in config and config["device_class"] == "timestamp"
        elif "/binary_sensor/" in topic:
            assert "availability" not in config and "availability_topic" not in config
            assert config["device_class"] == "connectivity"
            assert render(config["value_template"], payload=b'{"state":"offline","agent":"desk"}') == "offline"
            assert config["payload_off"] == "offline" and config["payload_on"] == "online"
        else:
            topics = {a["topic"] for a in config["availability"]}
            assert topics & {"lamx/coordinator/status", "lamx/agents/desk/status", "lamx/agents/kitchen-pi/status"}
    desk = "homeassistant/{}/lamx_agent_desk/{}/config"
    assert {desk.format("button", "play"), desk.format("button", "pause"), desk.format("button", "next"),
            desk.format("button", "previous"), desk.format("number", "volume")} <= set(configs)
    assert not any("/button/lamx_agent_kitchen-pi/" in t for t in configs), "only computer agents get media buttons"


def test_commands_reach_that_agent(discovery):
    configs = discovery.agent_configs(computer_presence())
    expected = {"play": "computer media play", "pause": "computer media pause", "next": "computer media next",
                "previous": "computer media back"}
    for key, command in expected.items():
        button = configs[f"homeassistant/button/lamx_agent_desk/{key}/config"]
        prompt = Prompt.from_payload(button["payload_press"].encode())
        assert (prompt.prompt, prompt.source, prompt.metadata.to_dict()) == (command, SOURCE, {"agent": "desk"})
        assert parse_command(prompt.prompt) is not None
    volume = configs["homeassistant/number/lamx_agent_desk/volume/config"]
    prompt = Prompt.from_payload(render(volume["command_template"], value=42.0).encode())
    assert (prompt.prompt, prompt.metadata.to_dict()) == ("computer volume 42", {"agent": "desk"})
    assert parse_command(prompt.prompt).args == {"level": 42}
    # Each press is a new prompt: an id in the payload would make the coordinator drop repeats.
    assert Prompt.from_payload(render(volume["command_template"], value=42).encode()).id != prompt.id


def test_text_entity_sends_any_sentence_as_a_prompt(discovery):
    text = discovery.coordinator_configs()["homeassistant/text/lamx_coordinator/prompt/config"]
    assert text["command_topic"] == "lamx/prompts"
    # A state from the coordinator's retained status: the box is empty, never "unknown".
    assert text["state_topic"] == "lamx/coordinator/status"
    assert render(text["value_template"], payload=b'{"state":"online"}') == "" and text["min"] == 0
    said = 'play "Buddy Holly" by weezer {not json}'
    prompt = Prompt.from_payload(render(text["command_template"], value=said).encode())
    assert (prompt.prompt, prompt.source) == (said, SOURCE)


def test_configs_stay_the_same_from_one_heartbeat_to_the_next(discovery):
    """Nothing that changes with time: Home Assistant is sent a config again only when it changed."""
    later = computer_presence()
    later.ts += 30
    assert discovery.agent_configs(computer_presence()) == discovery.agent_configs(later)
    assert discovery.coordinator_configs() == Configs(Topics("lamx"), "homeassistant").coordinator_configs()
    for config in all_configs(discovery).values():
        for key in ("payload_press", "command_template"):
            assert "ts" not in json.loads(render(config.get(key, "{}"), value=1))


def test_the_coordinator_device_has_what_zigbee2mqtts_bridge_has(discovery):
    """Restart and log level send the coordinator's own requests; version and agents online read its state."""
    configs = discovery.coordinator_configs()
    entity = lambda component, key: configs[f"homeassistant/{component}/lamx_coordinator/{key}/config"]
    restart = entity("button", "restart")
    assert restart["command_topic"] == "lamx/coordinator/request" and restart["entity_category"] == "config"
    assert CoordinatorRequest.from_payload(restart["payload_press"].encode()).action == "restart"
    select = entity("select", "log_level")
    assert select["options"] == ["debug", "info", "warning", "error"]
    assert select["command_topic"] == restart["command_topic"]
    request = CoordinatorRequest.from_payload(render(select["command_template"], value="debug").encode())
    assert (request.action, request.value) == ("log_level", "debug")
    assert select["state_topic"] == "lamx/state/coordinator/settings"
    assert render(select["value_template"], payload=b'{"log_level":"warning"}') == "warning"
    version = entity("sensor", "version")
    assert render(version["value_template"], payload=b'{"state":"online","version":"1.2"}') == "1.2"
    online = entity("sensor", "agents_online")
    state = b'{"online":2,"agents":["desk","pantry"]}'
    assert render(online["value_template"], payload=state) == "2"
    assert json.loads(render(online["json_attributes_template"], payload=state)) == {"agents": ["desk", "pantry"]}
    assert version["entity_category"] == "diagnostic" and restart["device"]["hw_version"]


def test_an_agent_device_has_last_seen_version_and_diagnostics(discovery):
    configs = discovery.agent_configs(replace(computer_presence(), host="kitchen-pc"))
    entity = lambda component, key: configs[f"homeassistant/{component}/lamx_agent_desk/{key}/config"]
    assert entity("sensor", "load")["device"]["hw_version"] == "kitchen-pc"
    assert entity("sensor", "load")["entity_category"] == "diagnostic"
    seen = entity("sensor", "last_seen")["value_template"]
    beat = b'{"state":"online","agent":"desk","ts":1700000000.5}'
    assert as_datetime(render(seen, payload=beat)) == datetime.fromtimestamp(1700000000.5, timezone.utc)
    will = b'{"state":"offline","agent":"desk","ts":1600000000}'  # a last will's time is when it connected
    assert render(seen, payload=will, state="2023-11-14T22:13:20.500000+00:00") == "2023-11-14T22:13:20.500000+00:00"
    assert as_datetime(render(seen, payload=will)).year == 2020  # nothing better known
    update = entity("update", "version")
    assert update["entity_category"] == "diagnostic" and update["latest_version_topic"] == "lamx/coordinator/status"
    assert render(update["value_template"], payload=beat.replace(b"}", b',"version":"0.9"}')) == "0.9"
    assert render(update["latest_version_template"], payload=b'{"state":"online","version":"1.0"}') == "1.0"


def test_the_volume_slider_shows_the_volume_the_agent_reads(discovery):
    volume = "homeassistant/number/lamx_agent_desk/volume/config"
    assert "state_topic" not in discovery.agent_configs(computer_presence())[volume], "nothing read: optimistic"
    reading = replace(computer_presence(), readings={"computer": {"volume": 37}})
    slider = discovery.agent_configs(reading)[volume]
    assert slider["state_topic"] == "lamx/agents/desk/status"
    assert render(slider["value_template"], payload=reading.to_json()) == "37"
    too_loud = replace(reading, readings={"computer": {"volume": 150}})
    assert render(slider["value_template"], payload=too_loud.to_json()) == "100"
    assert render(slider["value_template"], payload=computer_presence().to_json()) == "None"


def test_state_templates_read_results_and_replies(discovery):
    agent = discovery.agent_configs(computer_presence())
    result = Result(task_id="t1", agent="desk", state="succeeded", message="Volume set to 42.").to_json()
    last = agent["homeassistant/sensor/lamx_agent_desk/last_result/config"]
    assert last["state_topic"] == "lamx/state/agents/desk/last_result"
    assert render(last["value_template"], payload=result) == "Volume set to 42."
    attributes = json.loads(render(last["json_attributes_template"], payload=result))
    assert attributes == {"outcome": "succeeded", "task_id": "t1"}  # "state" is dropped by Home Assistant
    event = agent["homeassistant/event/lamx_agent_desk/task/config"]
    fired = json.loads(render(event["value_template"], payload=result))
    assert fired["event_type"] in event["event_types"] and fired["message"] == "Volume set to 42."
    load = agent["homeassistant/sensor/lamx_agent_desk/load/config"]
    assert render(load["value_template"], payload=computer_presence(load=3).to_json()) == "3"
    coordinator = discovery.coordinator_configs()
    reply = Reply(prompt_id="p1", status="partial", response="x" * 300).to_json()
    assert render(coordinator["homeassistant/sensor/lamx_coordinator/last_reply/config"]["value_template"],
                  payload=reply) == "x" * 255
    event = coordinator["homeassistant/event/lamx_coordinator/reply/config"]
    assert set(event["event_types"]) == set(PROMPT_STATUSES)
    assert json.loads(render(event["value_template"], payload=reply))["event_type"] == "partial"


# -- over a real broker -------------------------------------------------------------------

class Watcher:
    """Every message under some topic prefixes, with the retain flag as delivered."""

    def __init__(self, broker_url: str, *prefixes: str) -> None:
        import paho.mqtt.client as mqtt

        self.seen: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        client_id = f"watch-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.username_pw_set(client_id)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe([(f"{prefix}/#", 1) for prefix in prefixes])
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._keep
        settings = BrokerSettings(url=broker_url)
        self.client.connect(settings.host, settings.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _keep(self, client, userdata, message) -> None:
        with self._lock:
            self.seen.append((message.topic, message.payload, bool(message.retain)))

    def configs(self, node: str) -> dict[str, bytes]:
        """The latest payload of each config topic of a node."""
        with self._lock:
            return {t: p for t, p, _ in self.seen if f"/{node}/" in t}

    def live(self, node: str) -> dict[str, bytes]:
        """The config topics of a node whose latest payload is not a deletion."""
        return {t: p for t, p in self.configs(node).items() if p}

    def count(self, topic_part: str) -> int:
        with self._lock:
            return sum(1 for t, _, _ in self.seen if topic_part in t)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def ha(lam):
    """A discovery prefix of this test's own, and the coordinator using it."""
    prefix = f"ha{uuid.uuid4().hex[:8]}"
    lam.ha_prefix = prefix
    lam.ha_config = f'[homeassistant]\ndiscovery_prefix = "{prefix}"\n'
    watcher = Watcher(lam.broker_url, prefix)
    yield watcher
    watcher.close()


def test_discovery_on_connect_birth_and_forget(lam, ha):
    lam.coordinator(extra_config=lam.ha_config)
    node = node_id(lam.topics, "coordinator")
    wait_until(lambda: len(ha.configs(node)) == COORDINATOR, 20, "the coordinator's entities")
    agent = lam.agent("pantry", "echo")
    agent_node = node_id(lam.topics, "agent", "pantry")
    wait_until(lambda: len(ha.live(agent_node)) == BASICS, 20, "the agent's entities")
    assert all(json.loads(p)["unique_id"] for p in ha.live(agent_node).values())

    # Published retained: a Home Assistant that connects later reads them all.
    late = Watcher(lam.broker_url, lam.ha_prefix)
    wait_until(lambda: len(late.live(agent_node)) == BASICS, 10, "retained configs")
    assert all(retained for t, _, retained in late.seen if f"/{agent_node}/" in t)
    late.close()

    # Home Assistant's birth message (not retained) brings them all again.
    before = ha.count(f"/{agent_node}/")
    lam.publish_raw(f"{lam.ha_prefix}/status", "online")
    wait_until(lambda: ha.count(f"/{agent_node}/") >= before + BASICS and ha.count(f"/{node}/") >= 2 * COORDINATOR, 10,
               "republished")
    lam.publish_raw(f"{lam.ha_prefix}/status", "offline")

    # A finished task fills the agent's last result; a reply the coordinator's last reply.
    reply = lam.send("echo say hello there")
    assert reply.status == "succeeded", reply
    result = lam.recorder.wait_for(Result, lam.topics.last_result("pantry"))
    assert result.state == "succeeded" and result.agent == "pantry"
    assert lam.recorder.wait_for(Reply, lam.topics.last_reply).prompt_id == reply.prompt_id

    # A dead agent keeps its entities (connectivity shows off); forgetting it deletes them.
    assert "refused" in lam_forget(lam, "pantry", expect_ok=False)
    agent.stop()
    lam.recorder.wait_for(Presence, lam.topics.agent_status("pantry"), lambda p: p.state == "offline")
    assert len(ha.live(agent_node)) == BASICS, "an offline agent keeps its entities"
    lam_forget(lam, "pantry")
    wait_until(lambda: ha.configs(agent_node) and not any(ha.configs(agent_node).values()), 10, "empty configs")
    wait_until(lambda: lam.recorder.on(lam.topics.agent_status("pantry"))[-1][1] == b"", 10, "presence cleared")
    late = Watcher(lam.broker_url, lam.ha_prefix)
    wait_until(lambda: len(late.configs(node)) == COORDINATOR, 10, "the coordinator's retained configs")
    assert not late.configs(agent_node), "nothing of the forgotten agent stays retained"
    late.close()

    # ...and Home Assistant's next birth does not bring it back: made and deleted once more (it was
    # away when the agent went), then the list of what it has yet to be told is emptied.
    withdrawn = f"{lam.prefix}/state/coordinator/withdrawn"
    lam.publish_raw(f"{lam.ha_prefix}/status", "online")
    wait_until(lambda: ha.count(f"/{node}/") >= 3 * COORDINATOR and lam.recorder.on(withdrawn)[-1][1] == b"", 10,
               "republished after forget")
    assert not any(ha.configs(agent_node).values())


def lam_forget(lam, agent_id: str, expect_ok: bool = True) -> str:
    config = lam.config("cli", lam.ha_config)
    done = subprocess.run([sys.executable, "-m", "lamcontrol", "agents", "forget", agent_id, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (done.returncode == 0) == expect_ok, done.stdout + done.stderr
    return done.stdout + ("refused" if done.returncode else "") + done.stderr


def test_media_buttons_reach_that_agent_only(lam, ha):
    """Two computer agents: the button of the busier one still sends its task to it."""
    lam.coordinator(extra_config=lam.ha_config)
    for agent, load in (("aaa", 0), ("desk", 2)):  # presences as two computer agents would announce them
        lam.bus.publish(computer_presence(agent, load), retain=True).wait_for_publish(10)
    node = node_id(lam.topics, "agent", "desk")
    wait_until(lambda: len(ha.live(node)) == COMPUTER, 20, "the computer agent's entities")
    button = json.loads(ha.configs(node)[f"{lam.ha_prefix}/button/{node}/next/config"])
    lam.publish_raw(button["command_topic"], button["payload_press"])
    volume = json.loads(ha.configs(node)[f"{lam.ha_prefix}/number/{node}/volume/config"])
    lam.publish_raw(volume["command_topic"], render(volume["command_template"], value=30.0))
    unnamed = lam.submit("computer media next")  # no agent named: the least loaded one takes it
    tasks = wait_until(lambda: len(lam.recorder.parsed(Task, lam.topics.task("computer"))) == 3 and
                       lam.recorder.parsed(Task, lam.topics.task("computer")), 20, "three tasks")
    # (sources take turns, so the prompt of the test may be run between Home Assistant's two)
    taken_by = {(t.action, t.prompt_id == unnamed.id): t.agent for t in tasks}
    assert taken_by == {("media", False): "desk", ("volume", False): "desk", ("media", True): "aaa"}
    assert [t.args for t in tasks if t.action == "volume"] == [{"level": 30}]
    for agent in ("aaa", "desk"):  # clear the retained stand-in presences
        lam.bus.publish_raw(lam.topics.agent_status(agent), b"", retain=True).wait_for_publish(10)


def test_heartbeats_send_no_discovery_again(lam, ha):
    """An agent's presence every heartbeat, the same but for its time, sends Home Assistant nothing."""
    lam.coordinator(extra_config=lam.ha_config)
    node = node_id(lam.topics, "agent", "desk")
    lam.bus.publish(computer_presence("desk"), retain=True).wait_for_publish(10)
    wait_until(lambda: len(ha.live(node)) == COMPUTER, 20, "the computer agent's entities")
    sent = ha.count(f"/{node}/")
    for _ in range(3):
        lam.bus.publish(computer_presence("desk"), retain=True).wait_for_publish(10)
    barrier(lam, ha)
    assert ha.count(f"/{node}/") == sent
    lam.bus.publish_raw(lam.topics.agent_status("desk"), b"", retain=True).wait_for_publish(10)


def barrier(lam, ha) -> None:
    """Wait until the coordinator has handled every message the test published before: the
    discovery of one more agent comes after whatever those made it publish."""
    agent = f"barrier{uuid.uuid4().hex[:6]}"
    lam.bus.publish(Presence(state="online", agent=agent, capabilities={"echo": ["say"]}), retain=True)
    node = node_id(lam.topics, "agent", agent)
    wait_until(lambda: len(ha.live(node)) == BASICS, 20, "the barrier agent's entities")
    lam.bus.publish_raw(lam.topics.agent_status(agent), b"", retain=True).wait_for_publish(10)


def test_a_burst_of_births_is_answered_once(lam, ha):
    """200 birth messages in a row make a handful of republications, not 200."""
    lam.coordinator(extra_config=lam.ha_config)
    node = node_id(lam.topics, "coordinator")
    wait_until(lambda: ha.count(f"/{node}/") == COORDINATOR, 20, "the coordinator's entities")
    for _ in range(200):
        lam.bus.publish_raw(f"{lam.ha_prefix}/status", "online")
    lam.bus.publish_raw(f"{lam.ha_prefix}/status", "offline").wait_for_publish(10)
    wait_until(lambda: ha.count(f"/{node}/") >= 2 * COORDINATOR, 20, "discovery sent again")
    time.sleep(2 * BIRTH_QUIET)  # room for any later republication
    barrier(lam, ha)
    republished = ha.count(f"/{node}/") // COORDINATOR - 1
    print(f"200 births: {republished} republication(s)")
    assert 1 <= republished <= 5


def test_a_restarted_coordinator_withdraws_what_it_no_longer_publishes(lam, ha):
    """Configs a coordinator before it left (read back from the broker) that it no longer makes are
    deleted; other devices' configs are not touched."""
    node = node_id(lam.topics, "coordinator")
    ours = f"{lam.ha_prefix}/sensor/{node}/retired/config"
    theirs = f"{lam.ha_prefix}/sensor/zigbee_lamp/retired/config"
    for topic, device in ((ours, node), (theirs, "zigbee_lamp")):
        config = {"unique_id": f"{device}_retired", "state_topic": "x", "device": {"identifiers": [device]}}
        lam.bus.publish_raw(topic, json.dumps(config), retain=True).wait_for_publish(10)
    lam.coordinator(extra_config=lam.ha_config)
    wait_until(lambda: ha.configs(node).get(ours) == b"", 20, "the retired entity withdrawn")
    assert ha.live("zigbee_lamp") == {theirs: ha.configs("zigbee_lamp")[theirs]}
    lam.bus.publish_raw(theirs, b"", retain=True).wait_for_publish(10)


def test_the_list_of_withdrawn_entities_stays_within_one_message(lam, ha):
    """Entities withdrawn while Home Assistant may not hear are kept, retained, the oldest dropped
    before the list outgrows a message; the newest are there."""
    lam.coordinator(extra_config=lam.ha_config)
    agents = [f"desk{n}" for n in range(8)]
    for agent in agents:
        lam.bus.publish(computer_presence(agent), retain=True)
    last = node_id(lam.topics, "agent", agents[-1])
    wait_until(lambda: len(ha.live(last)) == COMPUTER, 20, "the last agent's entities")
    for agent in agents:  # stopped, then forgotten while Home Assistant has said nothing since we connected
        lam.bus.publish(Presence(state="offline", agent=agent), retain=True)
        lam.bus.publish_raw(lam.topics.agent_status(agent), b"", retain=True)
    wait_until(lambda: not ha.live(last), 20, "the last agent's entities withdrawn")
    topic = f"{lam.prefix}/state/coordinator/withdrawn"
    listed = wait_until(lambda: [p for _, p in lam.recorder.on(topic) if f"/{last}/".encode() in p], 20,
                        "the withdrawn list")[-1]
    assert WITHDRAWN_BYTES // 2 < len(listed) <= WITHDRAWN_BYTES
    kept = json.loads(listed)
    assert {t for t in kept if f"/{last}/" in t} == set(ha.configs(last))
    assert not any(f"/{node_id(lam.topics, 'agent', agents[0])}/" in t for t in kept), "the oldest went first"


def test_prompt_for_a_named_agent_runs_there(lam):
    lam.coordinator()
    lam.agent("first", "echo")
    lam.agent("second", "echo")
    assert lam.send("echo say hi").tasks[0].agent == "first"  # least loaded, then by name
    assert lam.send("echo say hi", agent="second").tasks[0].agent == "second"


def test_a_capability_lost_while_the_coordinator_was_down_loses_its_entities(lam, ha):
    """The agent drops computer while no coordinator runs; the next coordinator removes its buttons."""
    coordinator = lam.coordinator(extra_config=lam.ha_config)
    lam.bus.publish(computer_presence("desk"), retain=True).wait_for_publish(10)
    node = node_id(lam.topics, "agent", "desk")
    wait_until(lambda: len(ha.live(node)) == COMPUTER, 20, "the computer agent's entities")
    coordinator.stop()
    echo_only = Presence(state="online", agent="desk", max_concurrent=4, capabilities={"echo": ["say"]})
    lam.bus.publish(echo_only, retain=True).wait_for_publish(10)
    lam.coordinator(extra_config=lam.ha_config)
    wait_until(lambda: len(ha.live(node)) == BASICS, 20, lambda: f"only the basics left: {sorted(ha.live(node))}")
    assert not any("/button/" in t or "/number/" in t for t in ha.live(node))
    lam.bus.publish_raw(lam.topics.agent_status("desk"), b"", retain=True).wait_for_publish(10)


# -- in a real Home Assistant ---------------------------------------------------------------

class Home:
    """A real Home Assistant whose MQTT integration reads this test's broker and discovery prefix."""

    def __init__(self, server, lam) -> None:
        self.server = server
        self.lam = lam
        self.log_start = len(server.log())

    def entity_id(self, component: str, node: str, key: str) -> str:
        return f"{component}.{node}_{key}".lower()

    def state(self, entity_id: str) -> str | None:
        """The entity's state, or None while Home Assistant has no such entity."""
        try:
            return self.server.state(entity_id)["state"]
        except requests.HTTPError:
            return None

    def unique_ids(self, node: str) -> set[str]:
        """The unique ids of a discovery node's entities in Home Assistant's entity registry."""
        return {e["unique_id"] for e in self.server.registry("entity")
                if e["platform"] == "mqtt" and e["unique_id"].startswith(f"{node}_")}

    def has_device(self, node: str) -> bool:
        return any(["mqtt", node] in d["identifiers"] for d in self.server.registry("device"))

    def log(self) -> str:
        """What Home Assistant logged since this test began."""
        return self.server.log()[self.log_start:]

    def warnings(self) -> list[str]:
        """Warnings and errors Home Assistant logged about MQTT entities since this test began (its
        client's word on a broker going away is not about them)."""
        return [line for line in self.log().splitlines()
                if re.search(r" (WARNING|ERROR) .*\[homeassistant\.components\.mqtt\.(?!client\])", line)]


@pytest.fixture
def home(home_assistant, lam, ha):
    settings = BrokerSettings(url=lam.broker_url)
    entry = home_assistant.add_mqtt(settings.host, settings.port, lam.ha_prefix)
    house = Home(home_assistant, lam)
    house.entry_id = entry
    yield house
    home_assistant.remove_entry(entry)
    assert not house.warnings(), "\n".join(house.warnings())


def test_the_prompt_box_answers_long_after_discovery(lam, ha, home):
    """What is typed into the Prompt box later than a prompt's deadline after discovery still runs."""
    lam.coordinator(extra_config="prompt_timeout = 5.0\n" + lam.ha_config)
    lam.agent("pantry", "echo")
    node = node_id(lam.topics, "coordinator")
    prompt_box = home.entity_id("text", node, "prompt")
    wait_until(lambda: home.state(prompt_box) not in (None, "unavailable"), 30, "the Prompt box in Home Assistant")
    wait_until(lambda: ha.count(f"/{node}/") == 2 * COORDINATOR, 30, "discovery sent again for Home Assistant's birth")
    published = ha.count(f"/{node}/")
    time.sleep(6)  # past the prompt deadline, counted from when discovery was last published
    assert ha.count(f"/{node}/") == published, "discovery was published again meanwhile"
    home.server.call("text", "set_value", entity_id=prompt_box, value="echo hello from the box")
    reply = lam.recorder.wait_for(Reply, lam.topics.all_replies, lambda r: "hello from the box" in r.response
                                  or r.status == "failed")
    assert (reply.status, reply.response) == ("succeeded", "hello from the box"), reply
    last_reply = home.entity_id("sensor", node, "last_reply")
    wait_until(lambda: home.state(last_reply) == "hello from the box", 20, "the reply in Home Assistant")


def test_the_prompt_box_is_empty_on_a_fresh_install_and_after_the_broker_restarts(lam, ha, home, broker):
    lam.coordinator(extra_config=lam.ha_config)
    prompt_box = home.entity_id("text", node_id(lam.topics, "coordinator"), "prompt")
    wait_until(lambda: home.state(prompt_box) == "", 30, lambda: f"an empty Prompt box, not {home.state(prompt_box)}")
    before = home.server.state(prompt_box)["last_updated"]
    seen = len(lam.recorder.on(lam.topics.coordinator_status))
    broker.restart()  # it keeps no retained message
    wait_until(lambda: len(lam.recorder.on(lam.topics.coordinator_status)) > seen, 30, "the coordinator back")
    home.server.reload_entry(home.entry_id)  # Home Assistant makes every entity afresh
    wait_until(lambda: home.server.state(prompt_box)["last_updated"] != before, 30, "the Prompt box made again")
    wait_until(lambda: home.state(prompt_box) == "", 30, lambda: f"an empty Prompt box, not {home.state(prompt_box)}")


def test_entities_removed_while_home_assistant_was_away_go_when_it_comes_back(lam, ha, home):
    """Home Assistant keeps entities in its registry; the removals it missed are sent at its birth,
    even by a coordinator that started meanwhile."""
    coordinator = lam.coordinator(extra_config=lam.ha_config)
    desk, pantry = node_id(lam.topics, "agent", "desk"), node_id(lam.topics, "agent", "pantry")
    lam.bus.publish(computer_presence("desk"), retain=True).wait_for_publish(10)
    pantry_agent = lam.agent("pantry", "echo")
    wait_until(lambda: len(home.unique_ids(desk)) == COMPUTER and len(home.unique_ids(pantry)) == BASICS, 30,
               "both agents' entities in Home Assistant")
    home.server.stop()
    # While it is away: desk loses its computer, pantry is forgotten, the coordinator restarts.
    echo_only = Presence(state="online", agent="desk", max_concurrent=4, capabilities={"echo": ["say"]})
    lam.bus.publish(echo_only, retain=True).wait_for_publish(10)
    pantry_agent.stop()
    lam.recorder.wait_for(Presence, lam.topics.agent_status("pantry"), lambda p: p.state == "offline")
    lam_forget(lam, "pantry")
    wait_until(lambda: len(ha.live(desk)) == BASICS and not ha.live(pantry), 20, "the configs withdrawn")
    barrier(lam, ha)
    coordinator.stop()
    lam.coordinator(extra_config=lam.ha_config)
    home.server.start()
    wait_until(lambda: len(home.unique_ids(desk)) == BASICS and not home.unique_ids(pantry), 30,
               lambda: f"the withdrawn entities gone: {home.unique_ids(desk)} {home.unique_ids(pantry)}")
    assert not home.has_device(pantry)
    lam.bus.publish_raw(lam.topics.agent_status("desk"), b"", retain=True).wait_for_publish(10)


def test_forgetting_an_agent_removes_its_entities_quietly(lam, ha, home):
    """`lam agents forget`: the configs go before the presence they read, and Home Assistant logs
    nothing (the fixture checks its log)."""
    lam.coordinator(extra_config=lam.ha_config)
    agent = lam.agent("pantry", "echo")
    node = node_id(lam.topics, "agent", "pantry")
    wait_until(lambda: len(home.unique_ids(node)) == BASICS, 30, "the agent's entities in Home Assistant")
    assert lam.send("echo a last result").status == "succeeded"
    agent.stop()
    lam.recorder.wait_for(Presence, lam.topics.agent_status("pantry"), lambda p: p.state == "offline")
    order = Watcher(lam.broker_url, lam.prefix, lam.ha_prefix)
    try:
        lam_forget(lam, "pantry")
        wait_until(lambda: not home.unique_ids(node) and not home.has_device(node), 30, "the entities removed")
        cleared = [t for t, p, _ in order.seen if not p]
        status = cleared.index(lam.topics.agent_status("pantry"))
        assert {t for t in ha.configs(node)} <= set(cleared[:status])
        assert lam.topics.last_result("pantry") in cleared[:status]
    finally:
        order.close()


def test_the_coordinator_and_agent_devices_in_home_assistant(lam, ha, home):
    """Every entity Zigbee2MQTT's bridge taught us to expect, as Home Assistant shows it, with nothing in
    its log (the fixture checks): versions, agents online, last seen, a slider that reads the volume,
    diagnostics, and the coordinator's log level and restart, which act at once."""
    coordinator = lam.coordinator(extra_config=lam.ha_config)
    pantry_agent = lam.agent("pantry", "echo", extra_config="[agent]\nheartbeat = 1.0\n")
    behind = replace(computer_presence("desk"), version="0.0.1", host="desk-pc", readings={"computer": {"volume": 42}})
    lam.bus.publish(behind, retain=True).wait_for_publish(10)
    coordinator_node, desk, pantry = (node_id(lam.topics, "coordinator"), node_id(lam.topics, "agent", "desk"),
                                      node_id(lam.topics, "agent", "pantry"))
    agents_online = home.entity_id("sensor", coordinator_node, "agents_online")
    wait_until(lambda: home.state(agents_online) == "2", 30,
               lambda: f"two agents online, not {home.state(agents_online)}")
    volume = home.entity_id("number", desk, "volume")
    wait_until(lambda: home.state(volume) == "42", 30, lambda: f"the volume read back, not {home.state(volume)}")
    assert home.server.state(agents_online)["attributes"]["agents"] == ["desk", "pantry"]
    assert home.state(home.entity_id("sensor", coordinator_node, "version")) == __version__
    assert home.state(home.entity_id("update", desk, "version")) == "on"  # 0.0.1 is behind the coordinator
    wait_until(lambda: home.state(home.entity_id("update", pantry, "version")) == "off", 20, "pantry up to date")
    assert as_datetime(home.state(home.entity_id("sensor", pantry, "last_seen")))
    registry = {e["entity_id"]: e for e in home.server.registry("entity")}
    assert registry[home.entity_id("sensor", pantry, "load")]["entity_category"] == "diagnostic"
    assert registry[home.entity_id("button", coordinator_node, "restart")]["entity_category"] == "config"
    devices = {d["identifiers"][0][1]: d for d in home.server.registry("device") if d["identifiers"][0][0] == "mqtt"}
    assert devices[desk]["hw_version"] == "desk-pc" and devices[coordinator_node]["sw_version"] == __version__

    log_level = home.entity_id("select", coordinator_node, "log_level")
    wait_until(lambda: home.state(log_level) == "info", 20, "the log level read")
    home.server.call("select", "select_option", entity_id=log_level, option="debug")
    wait_until(lambda: home.state(log_level) == "debug", 20, "the log level changed")
    assert lam.send("echo heard in detail").status == "succeeded"
    assert " DEBUG " in coordinator.log().split("log level set to debug", 1)[1]

    seen = len(lam.recorder.on(lam.topics.coordinator_status))
    home.server.call("button", "press", entity_id=home.entity_id("button", coordinator_node, "restart"))
    wait_until(lambda: any(p and parse(CoordinatorPresence, p).state == "online"
                           for _, p in lam.recorder.on(lam.topics.coordinator_status)[seen + 1:]), 60,
               lambda: f"the coordinator back\n{coordinator.log()[-3000:]}")
    assert coordinator.popen.poll() is None, "the same process runs on"
    assert "restarting" in coordinator.log() and lam.send("echo after a restart").response == "after a restart"
    wait_until(lambda: home.state(log_level) == "info", 20, "the restarted coordinator's own log level")

    # An agent dead: Last seen stays at its last online presence (its last will's time is when it
    # connected). Home Assistant keeps whole seconds.
    last_seen = home.entity_id("sensor", pantry, "last_seen")
    started = parse(Presence, lam.recorder.on(lam.topics.agent_status("pantry"))[0][1]).started
    wait_until(lambda: as_datetime(home.state(last_seen)).timestamp() > started + 2, 20, "heartbeats seen")
    pantry_agent.kill()
    wait_until(lambda: home.state(home.entity_id("binary_sensor", pantry, "connectivity")) == "off", 60, "pantry off")
    wait_until(lambda: not parse(Presence, lam.recorder.on(lam.topics.agent_status("pantry"))[-1][1]).online, 20,
               "pantry's last will at the recorder")
    beats = [parse(Presence, p) for _, p in lam.recorder.on(lam.topics.agent_status("pantry")) if p]
    heard = datetime.fromtimestamp([b for b in beats if b.online][-1].ts, timezone.utc).replace(microsecond=0)
    assert as_datetime(home.state(last_seen)) == heard and beats[-1].ts < heard.timestamp() - 1
    lam.bus.publish_raw(lam.topics.agent_status("desk"), b"", retain=True).wait_for_publish(10)


def test_coordinator_requests_are_never_kept_and_only_its_own(lam, ha):
    """A request published retained by mistake is not acted on (it may be old), but refused on
    lam/errors and cleared; a live one is acted on; anything but restart and log level is refused."""
    lam.bus.publish_raw(lam.topics.coordinator_request, '{"action":"log_level","value":"warning"}',
                        retain=True).wait_for_publish(10)
    lam.coordinator(extra_config=lam.ha_config)
    lam.recorder.wait_for(ErrorRecord, lam.topics.errors, lambda e: e.topic_name == lam.topics.coordinator_request
                          and "retained" in e.error)
    late = Watcher(lam.broker_url, lam.prefix)
    try:
        barrier(lam, ha)
        assert not [t for t, _, _ in late.seen if t == lam.topics.coordinator_request], "nothing retained"
    finally:
        late.close()
    assert not any(p and json.loads(p) == {"log_level": "warning"}
                   for _, p in lam.recorder.on(lam.topics.coordinator_settings)), "a retained request acted on"
    lam.publish_raw(lam.topics.coordinator_request, '{"action":"log_level","value":"warning"}')
    wait_until(lambda: any(p and json.loads(p) == {"log_level": "warning"}
                           for _, p in lam.recorder.on(lam.topics.coordinator_settings)), 20, "the level applied")
    lam.publish_raw(lam.topics.coordinator_request, '{"action":"shutdown"}')
    error = lam.recorder.wait_for(ErrorRecord, lam.topics.errors,
                                  lambda e: e.topic_name == lam.topics.coordinator_request and "retained" not in e.error)
    assert "action" in error.error
