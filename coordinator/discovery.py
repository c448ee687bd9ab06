"""Home Assistant MQTT discovery: the coordinator and every agent appear as devices.

Each agent is a device with a connectivity binary sensor (no availability, so a dead agent
shows *off* rather than *unavailable*), a load sensor, a last-result sensor and an event
entity fired per finished task; an agent offering ``computer`` also gets play, pause, next
and previous buttons and a volume slider, each of which sends a prompt that only that
agent may run (prompt metadata ``{"agent": "<id>"}``). The coordinator is a device with a
text entity to send a prompt, a last-reply sensor and an event entity per reply.

Configs are published retained at QoS 1 on every connect and again whenever Home
Assistant's (unretained) birth message ``<prefix>/status`` says ``online``. Forgetting an
agent (its retained presence cleared) deletes its entities with empty retained configs.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any

from lamcontrol import __version__
from lamcontrol.bus import Bus
from lamcontrol.protocol import FINISHED, PROMPT_STATUSES, Presence, PresenceState, Prompt, Topics

from .events import AgentForgotten, Events, Extension, PresenceChanged, Replied, TaskFinished

log = logging.getLogger(__name__)
STATE_QOS = 0  # retained state for sensors: the next one replaces it, so no acknowledgement is needed

ORIGIN = {"name": "LAMControl", "sw_version": __version__}
SOURCE = "homeassistant"
TEXT_MAX = 255  # Home Assistant's limit for text entities and sensor states
STATE = "{{ value_json.state }}"
MEDIA_BUTTONS = {"play": ("Play", "play", "mdi:play"), "pause": ("Pause", "pause", "mdi:pause"),
                 "next": ("Next", "next", "mdi:skip-next"),
                 "previous": ("Previous", "back", "mdi:skip-previous")}
VALUE = "\0value\0"  # stands for the text Home Assistant sends, in a command template


def node_id(topics: Topics, kind: str, name: str = "") -> str:
    """A discovery node id (``[a-zA-Z0-9_-]`` only), unique per LAM prefix."""
    raw = "_".join(part for part in (topics.prefix, kind, name) if part)
    return re.sub(r"[^a-zA-Z0-9_-]", "_", raw)


def prompt_payload(text: str, agent: str | None = None) -> str:
    """A prompt from Home Assistant, without an id (each press must be a new prompt)."""
    data = Prompt(prompt=text, source=SOURCE, metadata={"agent": agent} if agent else {}).to_dict()
    del data["id"]
    return json.dumps(data, separators=(",", ":")).replace(json.dumps(VALUE), "{{ value | to_json }}")


def fields(**chosen: str) -> str:
    """A template making a JSON object of payload fields: ``fields(event_type="state")``."""
    pairs = ", ".join(f"'{name}': value_json.{field}" for name, field in chosen.items())
    return f"{{{{ {{{pairs}}} | to_json }}}}"


def availability(*status_topics: str) -> dict[str, Any]:
    """Available only while every one of these presences says online."""
    return {"availability": [{"topic": t, "value_template": STATE} for t in status_topics],
            "availability_mode": "all"}


def text_sensor(name: str, icon: str, topic: str, text: str, available: dict, **attributes: str) -> dict[str, Any]:
    """A sensor showing the ``text`` field of the JSON on ``topic``, with chosen fields as attributes."""
    return {"name": name, "icon": icon, "state_topic": topic,
            "value_template": f"{{{{ value_json.{text}[:{TEXT_MAX}] }}}}",
            "json_attributes_topic": topic, "json_attributes_template": fields(**attributes), **available}


def event(name: str, icon: str, topic: str, kinds: tuple[str, ...], kind: str, available: dict,
          **data: str) -> dict[str, Any]:
    """An event entity fired by each JSON on ``topic``, typed by its ``kind`` field, carrying ``data``."""
    return {"name": name, "icon": icon, "state_topic": topic, "event_types": [str(k) for k in kinds],
            "value_template": fields(event_type=kind, **data), **available}


def connectivity(status_topic: str) -> dict[str, Any]:
    """Online/offline from a retained presence, with no availability: dead means off."""
    return {"name": "Connected", "state_topic": status_topic, "value_template": STATE,
            "payload_on": "online", "payload_off": "offline", "device_class": "connectivity",
            "entity_category": "diagnostic"}


def extension(cfg: dict) -> Extension | None:
    """Discovery under ``[homeassistant] discovery_prefix``, or None when ``enabled`` is false."""
    section = cfg["homeassistant"]
    return functools.partial(Discovery, discovery_prefix=section["discovery_prefix"]) if section["enabled"] else None


class Configs:
    """The discovery configs of the coordinator and of each agent, by config topic."""

    def __init__(self, topics: Topics, discovery_prefix: str = "homeassistant") -> None:
        self.topics = topics
        self.prefix = discovery_prefix.rstrip("/")
        self.coordinator_node = node_id(topics, "coordinator")

    def config_topic(self, component: str, node: str, key: str) -> str:
        return f"{self.prefix}/{component}/{node}/{key}/config"

    def _entity(self, component: str, node: str, key: str, device: dict, body: dict) -> tuple[str, dict]:
        config = {"unique_id": f"{node}_{key}", **body, "device": device, "origin": ORIGIN, "qos": 1}
        return self.config_topic(component, node, key), config

    def coordinator_configs(self) -> dict[str, dict]:
        node = self.coordinator_node
        status = self.topics.coordinator_status
        device = {"identifiers": [node], "name": "LAMControl", "manufacturer": "LAMControl",
                  "model": "Coordinator", "sw_version": __version__}
        last_reply = self.topics.last_reply
        entities = [
            ("binary_sensor", "connectivity", connectivity(status)),
            ("text", "prompt", {"name": "Prompt", "icon": "mdi:microphone-message",
                                "command_topic": self.topics.prompts, "command_template": prompt_payload(VALUE),
                                "min": 1, "max": TEXT_MAX, "mode": "text", **availability(status)}),
            ("sensor", "last_reply", text_sensor("Last reply", "mdi:message-reply-text", last_reply, "response",
                                                 availability(status), status="status", prompt_id="prompt_id")),
            ("event", "reply", event("Reply", "mdi:message-reply", last_reply, PROMPT_STATUSES, "status",
                                     availability(status), response="response", prompt_id="prompt_id")),
        ]
        return dict(self._entity(c, node, k, device, b) for c, k, b in entities)

    def agent_configs(self, presence: Presence, media: bool) -> dict[str, dict]:
        """Configs for one agent; ``media`` adds the computer's buttons and volume slider."""
        agent = presence.agent
        node = node_id(self.topics, "agent", agent)
        status = self.topics.agent_status(agent)
        last = self.topics.last_result(agent)
        device = {"identifiers": [node], "name": f"LAM agent {agent}", "manufacturer": "LAMControl",
                  "model": "Agent", "via_device": self.coordinator_node}
        if presence.version:
            device["sw_version"] = presence.version
        coordinator_up = availability(self.topics.coordinator_status)
        entities = [
            ("binary_sensor", "connectivity", connectivity(status)),
            ("sensor", "load", {"name": "Load", "icon": "mdi:progress-clock", "state_topic": status,
                                "value_template": "{{ value_json.load }}", "unit_of_measurement": "tasks",
                                "state_class": "measurement", "json_attributes_topic": status,
                                "json_attributes_template": fields(capabilities="capabilities",
                                                                   max_concurrent="max_concurrent", host="host"),
                                **availability(status)}),
            ("sensor", "last_result", text_sensor("Last result", "mdi:clipboard-check-outline", last, "message",
                                                  coordinator_up, state="state", task_id="task_id")),
            ("event", "task", event("Task", "mdi:checkbox-marked-circle-outline", last, FINISHED, "state",
                                    coordinator_up, message="message", task_id="task_id")),
        ]
        if media:
            both = availability(self.topics.coordinator_status, status)
            for key, (name, media_key, icon) in MEDIA_BUTTONS.items():
                entities.append(("button", key, {"name": name, "icon": icon, "command_topic": self.topics.prompts,
                                                 "payload_press": prompt_payload(f"computer media {media_key}", agent),
                                                 **both}))
            entities.append(("number", "volume", {
                "name": "Volume", "icon": "mdi:volume-high", "command_topic": self.topics.prompts,
                "command_template": prompt_payload("computer volume {{ value | int }}", agent),
                "min": 0, "max": 100, "step": 1, "mode": "slider", "unit_of_measurement": "%", **both}))
        return dict(self._entity(c, node, k, device, b) for c, k, b in entities)

    def agent_topics(self, agent_id: str) -> list[str]:
        """Every retained topic discovery may have left for an agent (configs and last result)."""
        everything = self.agent_configs(Presence(state=PresenceState.OFFLINE, agent=agent_id), media=True)
        return [*everything, self.topics.last_result(agent_id)]


class Discovery:
    """Publishes and withdraws discovery configs; keeps the retained state they read.

    A coordinator extension: it follows the coordinator's events (presence changed, agent
    forgotten, task finished, replied). Every handler runs under the coordinator's lock or
    on the bus dispatcher thread, so the agent table needs no lock of its own.
    """

    def __init__(self, bus: Bus, events: Events, discovery_prefix: str = "homeassistant") -> None:
        self.bus = bus
        self.topics = bus.topics
        self.configs = Configs(bus.topics, discovery_prefix)
        self.agents: dict[str, dict[str, dict]] = {}  # agent id -> {config topic: config}
        bus.on(f"{self.configs.prefix}/status", self.on_ha_status)
        bus.on_connect(self.publish_all)
        events.on(PresenceChanged, lambda event: self.presence_received(event.presence))
        events.on(AgentForgotten, lambda event: self.forget(event.agent_id))
        events.on(TaskFinished, self.task_finished)
        events.on(Replied, self.replied)

    # -- publishing ---------------------------------------------------------------------

    def _publish(self, configs: dict[str, dict]) -> None:
        for topic, config in configs.items():
            self.bus.publish_raw(topic, json.dumps(config, separators=(",", ":")), retain=True)

    def publish_all(self) -> None:
        """Every config we know of: on connect and when Home Assistant comes online."""
        configs = [self.configs.coordinator_configs(), *self.agents.values()]
        for group in configs:
            self._publish(group)
        log.info("published Home Assistant discovery for the coordinator and %d agent(s)", len(configs) - 1)

    def forget(self, agent_id: str) -> None:
        """Delete an agent's entities and its retained last result."""
        self.agents.pop(agent_id, None)
        for topic in self.configs.agent_topics(agent_id):
            self.bus.publish_raw(topic, b"", retain=True)
        log.info("removed agent %s from Home Assistant", agent_id)

    # -- handlers -----------------------------------------------------------------------

    def on_ha_status(self, topic: str, payload: bytes) -> None:
        if payload.strip() == b"online":
            self.publish_all()

    def presence_received(self, presence: Presence) -> None:
        """An agent's (valid) presence: publish or update its entities."""
        agent_id = presence.agent
        known = self.agents.get(agent_id)
        if presence.online:
            media = {"media", "volume"} <= set(presence.capabilities.get("computer", ()))
            configs = self.configs.agent_configs(presence, media)
        elif known is None:  # first seen offline: what it offers is unknown, keep to the basics
            configs = self.configs.agent_configs(presence, media=False)
        else:
            return
        if configs == known:
            return
        self.agents[agent_id] = configs
        stale = [t for t in (known or {}) if t not in configs]
        for topic_name in stale:
            self.bus.publish_raw(topic_name, b"", retain=True)
        self._publish(configs)

    def task_finished(self, event: TaskFinished) -> None:
        """Keep each known agent's latest finished task, retained, for its sensor and event."""
        result = event.result()
        if result is not None and result.agent in self.agents and result.state in FINISHED:
            self.bus.publish_after(self.topics.last_result(result.agent), result.to_json(), retain=True,
                                   qos=STATE_QOS)

    def replied(self, event: Replied) -> None:
        """Keep the latest reply, retained, for the coordinator's sensor and event."""
        self.bus.publish_after(self.topics.last_reply, event.reply.to_json(), retain=True, qos=STATE_QOS)
