"""Home Assistant MQTT discovery: payloads against the documented schema, their templates
rendered as Home Assistant renders them, and the birth-message and removal behaviour over a
real broker with a real coordinator and agents."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import uuid

import jinja2
import pytest

from helpers import ROOT, wait_until
from lamcontrol.coordinator.discovery import Configs, node_id
from lamcontrol.coordinator.language import parse_command
from lamcontrol.bus import BrokerSettings
from lamcontrol.protocol import PROMPT_STATUSES, Presence, Prompt, Reply, Result, Task, Topics

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
}
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id",
               "name", "serial_number", "suggested_area", "sw_version", "via_device"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
CONFIG_TOPIC = re.compile(r"^(?P<prefix>[^/]+)/(?P<component>[a-z_]+)/(?P<node>[a-zA-Z0-9_-]+)/"
                          r"(?P<object>[a-zA-Z0-9_-]+)/config$")
SOURCE = "homeassistant"


def render(template: str, value=None, payload: bytes | None = None) -> str:
    """A template rendered the way Home Assistant does (``value``, ``value_json``, ``to_json``)."""
    env = jinja2.Environment()
    env.filters["to_json"] = lambda obj: json.dumps(obj, ensure_ascii=False)
    context = {"value": value}
    if payload is not None:
        context = {"value": payload.decode(), "value_json": json.loads(payload)}
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
    """An empty retained payload has no value_json: every template still renders, to nothing harmful."""
    for topic, config in all_configs(discovery).items():
        for key in ("value_template", "json_attributes_template"):
            if key in config:
                assert render(config[key], value="") in ("", "offline", "0"), (topic, key)
        for entry in config.get("availability", []):
            assert render(entry["value_template"], value="") == "offline"


def test_dashboard_and_origin_links():
    configs = Configs(Topics("lamx"), "homeassistant", dashboard_url="http://lam.local:8080")
    for config in [*configs.coordinator_configs().values(), *configs.agent_configs(computer_presence()).values()]:
        assert config["device"]["configuration_url"] == "http://lam.local:8080"
        assert config["origin"]["support_url"] == "http://lam.local:8080"


def test_connectivity_shows_off_not_unavailable(discovery):
    """No availability on connectivity sensors; every other entity has one, the coordinator's included."""
    configs = all_configs(discovery)
    for topic, config in configs.items():
        if "/binary_sensor/" in topic:
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
    # A state from the retained last reply: after a restart the box is empty, not "unknown".
    assert text["state_topic"] == "lamx/state/coordinator/last_reply" or text["state_topic"].endswith("last_reply")
    assert render(text["value_template"], payload=b'{"response":"hi"}') == "" and text["min"] == 0
    said = 'play "Buddy Holly" by weezer {not json}'
    prompt = Prompt.from_payload(render(text["command_template"], value=said).encode())
    assert (prompt.prompt, prompt.source) == (said, SOURCE)


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
    """Every message under a discovery prefix, with the retain flag as delivered."""

    def __init__(self, broker_url: str, prefix: str) -> None:
        import paho.mqtt.client as mqtt

        self.seen: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        client_id = f"watch-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.username_pw_set(client_id)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{prefix}/#", qos=1)
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
    wait_until(lambda: len(ha.configs(node)) == 4, 20, "the coordinator's four entities")
    agent = lam.agent("pantry", "echo")
    agent_node = node_id(lam.topics, "agent", "pantry")
    wait_until(lambda: len(ha.live(agent_node)) == 4, 20, "the agent's four entities")
    assert all(json.loads(p)["unique_id"] for p in ha.live(agent_node).values())

    # Published retained: a Home Assistant that connects later reads them all.
    late = Watcher(lam.broker_url, lam.ha_prefix)
    wait_until(lambda: len(late.live(agent_node)) == 4, 10, "retained configs")
    assert all(retained for t, _, retained in late.seen if f"/{agent_node}/" in t)
    late.close()

    # Home Assistant's birth message (not retained) brings them all again.
    before = ha.count(f"/{agent_node}/")
    lam.publish_raw(f"{lam.ha_prefix}/status", "online")
    wait_until(lambda: ha.count(f"/{agent_node}/") >= before + 4 and ha.count(f"/{node}/") >= 8, 10, "republished")
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
    assert len(ha.live(agent_node)) == 4, "an offline agent keeps its entities"
    lam_forget(lam, "pantry")
    wait_until(lambda: ha.configs(agent_node) and not any(ha.configs(agent_node).values()), 10, "empty configs")
    wait_until(lambda: lam.recorder.on(lam.topics.agent_status("pantry"))[-1][1] == b"", 10, "presence cleared")
    late = Watcher(lam.broker_url, lam.ha_prefix)
    wait_until(lambda: len(late.configs(node)) == 4, 10, "the coordinator's retained configs")
    assert not late.configs(agent_node), "nothing of the forgotten agent stays retained"
    late.close()

    # ...and Home Assistant's next birth does not bring it back.
    lam.publish_raw(f"{lam.ha_prefix}/status", "online")
    wait_until(lambda: ha.count(f"/{node}/") >= 12, 10, "republished after forget")
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
    wait_until(lambda: len(ha.live(node)) == 9, 20, "the computer agent's nine entities")
    button = json.loads(ha.configs(node)[f"{lam.ha_prefix}/button/{node}/next/config"])
    lam.publish_raw(button["command_topic"], button["payload_press"])
    volume = json.loads(ha.configs(node)[f"{lam.ha_prefix}/number/{node}/volume/config"])
    lam.publish_raw(volume["command_topic"], render(volume["command_template"], value=30.0))
    lam.submit("computer media next")  # no agent named: the least loaded one takes it
    tasks = wait_until(lambda: len(lam.recorder.parsed(Task, lam.topics.task("computer"))) == 3 and
                       lam.recorder.parsed(Task, lam.topics.task("computer")), 20, "three tasks")
    assert [(t.action, t.agent) for t in tasks] == [("media", "desk"), ("volume", "desk"), ("media", "aaa")]
    assert tasks[1].args == {"level": 30}
    for agent in ("aaa", "desk"):  # clear the retained stand-in presences
        lam.bus.publish_raw(lam.topics.agent_status(agent), b"", retain=True).wait_for_publish(10)


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
    wait_until(lambda: len(ha.live(node)) == 9, 20, "the computer agent's nine entities")
    coordinator.stop()
    echo_only = Presence(state="online", agent="desk", max_concurrent=4, capabilities={"echo": ["say"]})
    lam.bus.publish(echo_only, retain=True).wait_for_publish(10)
    lam.coordinator(extra_config=lam.ha_config)
    wait_until(lambda: len(ha.live(node)) == 4, 20, lambda: f"only the basics left: {sorted(ha.live(node))}")
    assert not any("/button/" in t or "/number/" in t for t in ha.live(node))
    lam.bus.publish_raw(lam.topics.agent_status("desk"), b"", retain=True).wait_for_publish(10)
