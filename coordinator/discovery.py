"""Home Assistant MQTT discovery: the coordinator and every agent appear as devices.

Each agent is a device (its host as hardware) with a connectivity binary sensor and a last-seen
sensor (no availability, so a dead agent shows *off* and when it was last heard from), a load
sensor, a version update entity (behind the coordinator: update available), a last-result
sensor and an event entity fired per finished task, plus the buttons and sliders its
capabilities' specs declare for the actions it offers (a computer agent's play, pause, next,
previous and volume, the slider showing the volume the agent reads), each of which sends a
prompt that only that agent may run (prompt metadata ``{"agent": "<id>"}``). The coordinator is
a device with a text entity to send a prompt, a last-reply sensor and an event entity per reply,
the number of agents online, its version, and Zigbee2MQTT's bridge controls: a Restart button and
a Log level select (handled by :mod:`.control`). Every template reads ``value_json`` only when
the payload is JSON, so the empty retained payloads that delete state leave Home Assistant's log
quiet.

Configs are published retained at QoS 1 on every connect and again, once per burst, whenever
Home Assistant's (unretained) birth message ``<prefix>/status`` says ``online``. They change
only when what they describe changes: nothing in them varies with time. The coordinator reads
its retained configs back, so it knows what a coordinator before it published: the first
presence of an agent clears every entity it no longer has, and any other config of ours that
nobody wants goes too. Forgetting an agent (its retained presence cleared) deletes its entities
with empty retained configs. Deletions Home Assistant may have missed, being away, are sent again
at its next birth (see :class:`Discovery`).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import logging
import re
import socket
import threading
from typing import Any, Callable, Iterable

from lamcontrol import __version__
from lamcontrol.bus import Bus
from lamcontrol.clock import Clock
from lamcontrol.config import host_port
from lamcontrol.language import CapabilitySpec, Entity
from lamcontrol.protocol import (FINISHED, LOG_LEVELS, PROMPT_STATUSES, CoordinatorAction, Metadata, Presence, PresenceState,
                                 Prompt, Topics)

from .events import AgentForgotten, Events, Extension, ExtensionFactory, PresenceChanged, Replied, SpecsChanged, TaskFinished
from .language import installed_specs

log = logging.getLogger(__name__)
STATE_QOS = 0  # retained state for sensors: the next one replaces it, so no acknowledgement is needed
BIRTH_QUIET = 1.0  # seconds after a birth during which more births are answered by the same republication
WITHDRAWN_BYTES = 48 * 1024  # the remembered entities (about 1 kB each) stay well within a message; oldest go first

SOURCE = "homeassistant"
TEXT_MAX = 255  # Home Assistant's limit for text entities and sensor states
JSON = "value_json is defined"  # false for the empty payloads that delete retained state
STATE = f"{{{{ value_json.state if {JSON} else 'offline' }}}}"
VALUE = "\0value\0"  # stands for the text Home Assistant sends, in a command template


def node_id(topics: Topics, kind: str, name: str = "") -> str:
    """A discovery node id (``[a-zA-Z0-9_-]`` only), unique per LAM prefix: a name that had to be
    changed to fit gets a short hash of itself, so ``kitchen.pi`` and ``kitchen_pi`` stay apart."""
    raw = "_".join(part for part in (topics.prefix, kind, name) if part)
    safe = re.sub(r"[^a-zA-Z0-9_-]", "_", raw)
    return safe if safe == raw else f"{safe}_{hashlib.sha1(raw.encode()).hexdigest()[:6]}"


def prompt_payload(text: str, agent: str | None = None) -> str:
    """A prompt from Home Assistant, without an id (each press must be a new prompt) and without a
    time: the coordinator counts its deadline from when it arrives, not from when discovery was
    published, and the config stays the same from one heartbeat to the next."""
    data = Prompt(prompt=text, source=SOURCE, metadata=Metadata(agent=agent)).to_dict()
    del data["id"], data["ts"]
    return json.dumps(data, separators=(",", ":")).replace(json.dumps(VALUE), "{{ value | to_json }}")


def fields(otherwise: str, **chosen: str) -> str:
    """A template making a JSON object of payload fields (``fields("", event_type="state")``), or
    ``otherwise`` for a payload that is not JSON: ``{}`` for attributes, which Home Assistant must be
    able to read as an object, ``''`` for an event, which it then ignores."""
    pairs = ", ".join(f"'{name}': value_json.{field}" for name, field in chosen.items())
    return f"{{{{ {{{pairs}}} | to_json if {JSON} else '{otherwise}' }}}}"


def availability(*status_topics: str) -> dict[str, Any]:
    """Available only while every one of these presences says online."""
    return {"availability": [{"topic": t, "value_template": STATE} for t in status_topics],
            "availability_mode": "all"}


def text_sensor(name: str, icon: str, topic: str, text: str, available: dict, **attributes: str) -> dict[str, Any]:
    """A sensor showing the ``text`` field of the JSON on ``topic``, with chosen fields as attributes."""
    return {"name": name, "icon": icon, "state_topic": topic,
            "value_template": f"{{{{ value_json.{text}[:{TEXT_MAX}] if {JSON} else '' }}}}",
            "json_attributes_topic": topic, "json_attributes_template": fields("{}", **attributes), **available}


def event(name: str, icon: str, topic: str, kinds: tuple[str, ...], kind: str, available: dict,
          **data: str) -> dict[str, Any]:
    """An event entity fired by each JSON on ``topic``, typed by its ``kind`` field, carrying ``data``."""
    return {"name": name, "icon": icon, "state_topic": topic, "event_types": list(kinds),
            "value_template": fields("", event_type=kind, **data), **available}


def reading(capability: str, name: str, low: float, high: float) -> str:
    """A template for a capability's reading in an agent's presence, kept within ``low``..``high`` (a
    number outside its range is an error in Home Assistant's log); ``None`` (unknown) without it."""
    value = f"value_json.readings[{capability!r}][{name!r}]"
    present = (f"{JSON} and value_json.readings is defined and {capability!r} in value_json.readings "
               f"and {name!r} in value_json.readings[{capability!r}]")
    return f"{{{{ [[{value}, {low:g}] | max, {high:g}] | min if {present} else 'None' }}}}"


# When an agent was last heard from: the time of its latest online presence. An offline one (its
# last will carries the time it connected) keeps what is known; a timestamp sensor must always
# get a time, or Home Assistant logs the state as invalid.
LAST_SEEN = ("{% set seen = this.state | as_datetime %}"
             f"{{% if {JSON} and value_json.ts is defined and (seen is none or value_json.state == 'online') %}}"
             "{{ as_datetime(value_json.ts).isoformat() }}"
             "{% elif seen is not none %}{{ seen.isoformat() }}{% else %}{{ now().isoformat() }}{% endif %}")


def connectivity(status_topic: str) -> dict[str, Any]:
    """Online/offline from a retained presence, with no availability: dead means off."""
    return {"name": "Connected", "state_topic": status_topic, "value_template": STATE,
            "payload_on": "online", "payload_off": "offline", "device_class": "connectivity",
            "entity_category": "diagnostic"}


def extension(cfg: dict) -> ExtensionFactory | None:
    """Discovery under ``[homeassistant] discovery_prefix``, or None when ``enabled`` is false."""
    section = cfg["homeassistant"]
    if not section["enabled"]:
        return None
    return functools.partial(Discovery, discovery_prefix=section["discovery_prefix"], dashboard_url=dashboard_url(cfg))


def dashboard_url(cfg: dict) -> str:
    """Where people reach the bridge's dashboard: ``[bridge] public_url``, else its listen address."""
    bridge = cfg["bridge"]
    if bridge["public_url"]:
        return bridge["public_url"].rstrip("/") + "/"
    host, port = host_port(bridge["listen"], "[bridge] listen")
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    return f"{'https' if bridge['cert_file'] else 'http'}://{host}:{port}/"


class Configs:
    """The discovery configs of the coordinator and of each agent, by config topic."""

    def __init__(self, topics: Topics, discovery_prefix: str = "homeassistant", dashboard_url: str = "",
                 specs_of: Callable[[str], dict[str, CapabilitySpec]] = lambda agent_id: installed_specs()) -> None:
        self.topics = topics
        self.prefix = discovery_prefix.rstrip("/")
        self.coordinator_node = node_id(topics, "coordinator")
        self.dashboard_url = dashboard_url
        self.specs_of = specs_of  # an agent's capability specs (the entities they want)
        self.origin = {"name": "LAMControl", "sw_version": __version__,
                       **({"support_url": dashboard_url} if dashboard_url else {})}
        self.host = socket.gethostname()  # where the coordinator runs, shown as its device's hardware

    def config_topic(self, component: str, node: str, key: str) -> str:
        return f"{self.prefix}/{component}/{node}/{key}/config"

    def _entity(self, component: str, node: str, key: str, device: dict, body: dict) -> tuple[str, dict]:
        config = {"unique_id": f"{node}_{key}", "object_id": f"{node}_{key}", **body, "device": device,
                  "origin": self.origin, "qos": 1}
        return self.config_topic(component, node, key), config

    def coordinator_configs(self) -> dict[str, dict]:
        node = self.coordinator_node
        status = self.topics.coordinator_status
        device = {"identifiers": [node], "name": "LAMControl", "manufacturer": "LAMControl",
                  "model": "Coordinator", "sw_version": __version__, "hw_version": self.host,
                  **({"configuration_url": self.dashboard_url} if self.dashboard_url else {})}
        last_reply, request, agents = self.topics.last_reply, self.topics.coordinator_request, self.topics.agents_online
        up = availability(status)
        entities = [
            ("binary_sensor", "connectivity", connectivity(status)),
            # Its state is the empty box, set by the coordinator's retained status, which is there
            # whenever the coordinator has connected: never "unknown", on a fresh install or after a
            # broker that keeps nothing restarts.
            ("text", "prompt", {"name": "Prompt", "icon": "mdi:microphone-message",
                                "command_topic": self.topics.prompts, "command_template": prompt_payload(VALUE),
                                "state_topic": status, "value_template": "{{ '' }}",
                                "min": 0, "max": TEXT_MAX, "mode": "text", **availability(status)}),
            ("sensor", "last_reply", text_sensor("Last reply", "mdi:message-reply-text", last_reply, "response",
                                                 availability(status), status="status", prompt_id="prompt_id")),
            ("event", "reply", event("Reply", "mdi:message-reply", last_reply, PROMPT_STATUSES, "status",
                                     availability(status), response="response", prompt_id="prompt_id")),
            ("sensor", "agents_online", {"name": "Agents online", "icon": "mdi:lan-connect", "state_topic": agents,
                                         "value_template": f"{{{{ value_json.online if {JSON} else 'None' }}}}",
                                         "unit_of_measurement": "agents", "state_class": "measurement",
                                         "json_attributes_topic": agents,
                                         "json_attributes_template": fields("{}", agents="agents"), **up}),
            # The coordinator's own commands (coordinator/control.py), as Zigbee2MQTT's bridge has them.
            ("button", "restart", {"name": "Restart", "command_topic": request, "device_class": "restart",
                                   "payload_press": json.dumps({"action": CoordinatorAction.RESTART}),
                                   "entity_category": "config", **up}),
            ("select", "log_level", {"name": "Log level", "icon": "mdi:math-log", "command_topic": request,
                                     "command_template": '{"action":"log_level","value":{{ value | to_json }}}',
                                     "options": list(LOG_LEVELS), "state_topic": self.topics.coordinator_settings,
                                     "value_template": f"{{{{ value_json.log_level if {JSON} else 'None' }}}}",
                                     "entity_category": "config", **up}),
            ("sensor", "version", {"name": "Version", "icon": "mdi:tag", "state_topic": status,
                                   "value_template": f"{{{{ value_json.version if {JSON} else '' }}}}",
                                   "entity_category": "diagnostic", **up}),
        ]
        return dict(self._entity(c, node, k, device, b) for c, k, b in entities)

    def agent_configs(self, presence: Presence) -> dict[str, dict]:
        """Configs for one agent: the basics, and the entities its specs declare for what it offers."""
        agent = presence.agent
        node = node_id(self.topics, "agent", agent)
        status = self.topics.agent_status(agent)
        last = self.topics.last_result(agent)
        device = {"identifiers": [node], "name": f"LAM agent {agent}", "manufacturer": "LAMControl",
                  "model": "Agent", "via_device": self.coordinator_node,
                  **({"configuration_url": self.dashboard_url} if self.dashboard_url else {})}
        if presence.version:
            device["sw_version"] = presence.version
        if presence.host:
            device["hw_version"] = presence.host
        coordinator_up = availability(self.topics.coordinator_status)
        version = f"{{{{ value_json.version if {JSON} else '' }}}}"
        entities = [
            ("binary_sensor", "connectivity", connectivity(status)),
            ("sensor", "load", {"name": "Load", "icon": "mdi:progress-clock", "state_topic": status,
                                "value_template": f"{{{{ value_json.load if {JSON} else 0 }}}}", "unit_of_measurement": "tasks",
                                "state_class": "measurement", "json_attributes_topic": status,
                                "json_attributes_template": fields("{}", capabilities="capabilities",
                                                                         max_concurrent="max_concurrent", host="host"),
                                "entity_category": "diagnostic", **availability(status)}),
            # No availability: when the agent is gone is when its last sighting matters.
            ("sensor", "last_seen", {"name": "Last seen", "icon": "mdi:clock-check-outline", "state_topic": status,
                                     "device_class": "timestamp", "value_template": LAST_SEEN,
                                     "entity_category": "diagnostic"}),
            # Installed: the agent's version; latest: the coordinator's. "Update available" when behind.
            ("update", "version", {"name": "Version", "title": "LAMControl", "state_topic": status,
                                   "value_template": version, "latest_version_topic": self.topics.coordinator_status,
                                   "latest_version_template": version, "entity_category": "diagnostic",
                                   **coordinator_up}),
            # "state" is a name Home Assistant drops from attributes: the outcome goes as "outcome".
            ("sensor", "last_result", text_sensor("Last result", "mdi:clipboard-check-outline", last, "message",
                                                  coordinator_up, outcome="state", task_id="task_id")),
            ("event", "task", event("Task", "mdi:checkbox-marked-circle-outline", last, FINISHED, "state",
                                    coordinator_up, message="message", task_id="task_id")),
        ]
        both = availability(self.topics.coordinator_status, status)
        entities += [(e.component, e.key, self._control(e, capability, presence, both))
                     for capability, e in self._wanted(presence)]
        return dict(self._entity(c, node, k, device, b) for c, k, b in entities)

    def _wanted(self, presence: Presence) -> list[tuple[str, Entity]]:
        """The entities the agent's specs declare for the actions it offers, with their capability."""
        specs = self.specs_of(presence.agent)
        return [(capability, entity) for capability, actions in presence.capabilities.items() if capability in specs
                for action in specs[capability].actions if action.name in actions for entity in action.entities]

    def _control(self, entity: Entity, capability: str, presence: Presence, available: dict) -> dict:
        """A button pressing, or a slider sending, the entity's command to that agent only; a slider
        whose reading the agent reports shows it (else it shows the last value sent)."""
        agent = presence.agent
        body = {"name": entity.name, "command_topic": self.topics.prompts, **({"icon": entity.icon} if entity.icon else {}),
                **available}
        if entity.component == "number":
            body.update(command_template=prompt_payload(entity.command.replace("{value}", "{{ value | int }}"), agent),
                        min=entity.minimum, max=entity.maximum, step=1, mode="slider",
                        **({"unit_of_measurement": entity.unit} if entity.unit else {}))
            if entity.reading and entity.reading in presence.readings.get(capability, {}):
                body.update(state_topic=self.topics.agent_status(agent),
                            value_template=reading(capability, entity.reading, entity.minimum, entity.maximum))
        else:
            body["payload_press"] = prompt_payload(entity.command, agent)
        return body

    def agent_topics(self, agent_id: str) -> list[str]:
        """Every retained topic discovery may have left for an agent: configs of every entity any spec
        declares, and its last result."""
        offering_all = Presence(state=PresenceState.ONLINE, agent=agent_id, capabilities={
            name: [a.name for a in spec.actions] for name, spec in self.specs_of(agent_id).items()})
        return [*self.agent_configs(offering_all), self.topics.last_result(agent_id)]


class Discovery(Extension):
    """Publishes and withdraws discovery configs; keeps the retained state they read.

    A coordinator extension: it follows the coordinator's events (presence and specs changed,
    agent forgotten, task finished, replied). Every handler runs under the coordinator's lock or
    on the bus thread, so its tables need no lock of their own.

    An entity withdrawn while Home Assistant may not be listening (it said ``offline``, or we have
    not heard from it since we connected) is remembered with its last config, retained under
    ``<lam>/state/coordinator/withdrawn`` so a coordinator restart keeps the list. At Home
    Assistant's next birth each is sent once more and deleted at once: Home Assistant, which kept
    it in its registry, makes it again and removes it for good. Our retained configs are read back
    too (``<prefix>/+/+/+/config`` with our device), so a restarted coordinator knows what it
    published: a config it no longer wants is withdrawn, and its config is what is remembered.
    """

    def __init__(self, bus: Bus, events: Events, clock: Clock = Clock(), discovery_prefix: str = "homeassistant",
                 dashboard_url: str = "") -> None:
        super().__init__(bus, events, clock)
        self.topics = bus.topics
        self.specs: dict[str, dict[str, CapabilitySpec]] = {}  # what each agent advertised
        self.configs = Configs(bus.topics, discovery_prefix, dashboard_url, self.specs_of)
        self.agents: dict[str, dict[str, dict]] = {}  # agent id -> {config topic: config}
        self.presences: dict[str, Presence] = {}  # the last presence of each agent
        self.nodes: dict[str, str] = {}  # discovery node id -> agent id, for the agents we know
        self.retained: dict[str, dict] = {}  # config topic -> our config, as the broker keeps it
        self.withdrawn: dict[str, dict] = {}  # config topic -> config, withdrawn while Home Assistant may not hear
        self.withdrawn_topic = f"{self.topics.prefix}/state/coordinator/withdrawn"
        self.listening: bool | None = None  # Home Assistant's last word on <prefix>/status since we connected
        self._written: collections.deque[bytes] = collections.deque(maxlen=8)  # our recent lists, to know their echoes
        self._birth_pending = False
        self._online: list[str] | None = None  # the online agents as last published
        self.on(f"{self.configs.prefix}/status", self.on_ha_status)
        self.on(f"{self.configs.prefix}/+/+/+/config", self.on_config)
        self.on(self.withdrawn_topic, self.on_withdrawn)
        self.on_connect(self.connected)
        self.listen(PresenceChanged, lambda event: self.presence_received(event.presence))
        self.listen(SpecsChanged, self.specs_changed)
        self.listen(AgentForgotten, lambda event: self.forget(event.agent_id))
        self.listen(TaskFinished, self.task_finished)
        self.listen(Replied, self.replied)

    def specs_of(self, agent_id: str) -> dict[str, CapabilitySpec]:
        """An agent's specs: what it advertised, else what is installed here."""
        return {**installed_specs(), **self.specs.get(agent_id, {})}

    # -- publishing ---------------------------------------------------------------------

    def _publish(self, configs: dict[str, dict]) -> None:
        for topic, config in configs.items():
            self.bus.publish_raw(topic, json.dumps(config, separators=(",", ":")), retain=True)

    def connected(self) -> None:
        """After each connect: Home Assistant's state is unknown again; every config goes out."""
        self.listening = None
        self.publish_all()
        self._online = None
        self.count_online()
        if self.withdrawn:
            self._write_withdrawn()  # a broker that kept nothing has lost the list

    def publish_all(self) -> None:
        """Every config we know of: on connect and when Home Assistant comes online."""
        configs = [self.configs.coordinator_configs(), *self.agents.values()]
        for group in configs:
            self._publish(group)
        log.info("published Home Assistant discovery for the coordinator and %d agent(s)", len(configs) - 1)

    def withdraw(self, topics: Iterable[str], known: dict[str, dict] | None = None) -> None:
        """Delete these entities; remember those Home Assistant may not hear of (with their last config,
        from ``known`` or read back from the broker) for its next birth."""
        remembered = False
        for topic in topics:
            self.bus.publish_raw(topic, b"", retain=True)
            config = (known or {}).get(topic) or self.retained.get(topic)
            if config is not None and not self.listening:
                self.withdrawn.pop(topic, None)
                self.withdrawn[topic] = config
                remembered = True
        if remembered:
            self._write_withdrawn()

    def _write_withdrawn(self) -> None:
        payload = json.dumps(self.withdrawn, separators=(",", ":")).encode() if self.withdrawn else b""
        while len(payload) > WITHDRAWN_BYTES:
            del self.withdrawn[next(iter(self.withdrawn))]
            payload = json.dumps(self.withdrawn, separators=(",", ":")).encode()
        self._written.append(payload)
        self.bus.publish_raw(self.withdrawn_topic, payload, retain=True)

    def home_assistant_back(self) -> None:
        """Home Assistant's birth: every config again, and every entity withdrawn while it was away
        made and deleted once more, so it drops them too."""
        self._birth_pending = False
        self.publish_all()
        if self.withdrawn:
            for topic, config in self.withdrawn.items():
                self._publish({topic: config})
                self.bus.publish_raw(topic, b"", retain=True)
            log.info("removed %d entity(ies) withdrawn while Home Assistant was away", len(self.withdrawn))
            self.withdrawn.clear()
            self._write_withdrawn()

    def forget(self, agent_id: str) -> None:
        """Delete an agent's entities (those it had, those read back, any its specs declare), then its
        retained last result."""
        known = self.agents.pop(agent_id, None) or {}
        self.presences.pop(agent_id, None)
        node = node_id(self.topics, "agent", agent_id)
        self.nodes.pop(node, None)
        self.withdraw(dict.fromkeys([*known, *self._retained_at(node), *self.configs.agent_topics(agent_id)[:-1]]),
                      known)
        self.bus.publish_raw(self.topics.last_result(agent_id), b"", retain=True)
        self.specs.pop(agent_id, None)
        self.count_online()
        log.info("removed agent %s from Home Assistant", agent_id)

    def count_online(self) -> None:
        """How many agents are online and which, retained for the coordinator's sensor, when it changed."""
        online = sorted(agent for agent, presence in self.presences.items() if presence.online)
        if online != self._online:
            self._online = online
            self.bus.publish_after(self.topics.agents_online, json.dumps({"online": len(online), "agents": online}),
                                   retain=True, qos=STATE_QOS)

    def _retained_at(self, node: str) -> list[str]:
        return [topic for topic in self.retained if topic.split("/")[-3] == node]

    # -- handlers -----------------------------------------------------------------------

    def on_ha_status(self, topic: str, payload: bytes) -> None:
        """Home Assistant's birth (``online``, answered once per burst) and will (``offline``)."""
        word = payload.strip()
        if word == b"online":
            self.listening = True
            if not self._birth_pending:  # a burst of births is answered once, after it
                self._birth_pending = True
                timer = threading.Timer(BIRTH_QUIET, self.bus.defer, (self.home_assistant_back,))
                timer.daemon = True
                timer.start()
        elif word == b"offline":
            self.listening = False

    def on_config(self, topic: str, payload: bytes) -> None:
        """A discovery config as the broker keeps it: ours are remembered, and withdrawn when a known
        device no longer wants them (a coordinator before us published them)."""
        if not payload:
            self.retained.pop(topic, None)
            return
        try:
            config = json.loads(payload)
        except ValueError:
            return
        if not self._ours(config):
            return
        self.retained[topic] = config
        node = topic.split("/")[-3]
        if node == self.configs.coordinator_node:
            wanted = self.configs.coordinator_configs()
        elif node in self.nodes:
            wanted = self.agents.get(self.nodes[node], {})
        else:
            return  # an agent not heard from yet: its first presence decides
        if topic not in wanted:
            self.withdraw([topic])

    def _ours(self, config: object) -> bool:
        device = config.get("device") if isinstance(config, dict) else None
        if not isinstance(device, dict):
            return False
        coordinator = self.configs.coordinator_node
        identifiers = device.get("identifiers")
        return device.get("via_device") == coordinator or (isinstance(identifiers, list) and coordinator in identifiers)

    def on_withdrawn(self, topic: str, payload: bytes) -> None:
        """The list of withdrawn entities a coordinator before us left (not the echo of ours): added to
        what we remember, whenever it arrives."""
        if not payload or payload in self._written:
            return
        try:
            entries = json.loads(payload)
        except ValueError:
            return
        if isinstance(entries, dict):
            prefix = self.configs.prefix + "/"
            self.withdrawn.update({t: c for t, c in entries.items()
                                   if t.startswith(prefix) and self._ours(c) and t not in self.withdrawn})

    def presence_received(self, presence: Presence) -> None:
        """An agent's (valid) presence: publish or update its entities."""
        agent_id = presence.agent
        known = self.agents.get(agent_id)
        self.presences[agent_id] = presence
        self.count_online()
        if not presence.online and known is not None:
            return  # gone for now: it keeps its entities
        configs = self.configs.agent_configs(presence)  # first seen offline: only the basics (it offers nothing)
        if configs == known:
            return
        node = node_id(self.topics, "agent", agent_id)
        self.nodes[node] = agent_id
        self.agents[agent_id] = configs
        # First sight since we started: whatever it had before (buttons of a capability it lost) goes too.
        before = known if known is not None else [*self._retained_at(node), *self.configs.agent_topics(agent_id)[:-1]]
        self.withdraw([t for t in dict.fromkeys(before) if t not in configs], known)
        self._publish(configs)

    def specs_changed(self, event: SpecsChanged) -> None:
        """An agent's advertised specs: the entities they declare follow."""
        self.specs[event.agent_id] = event.specs
        presence = self.presences.get(event.agent_id)
        if presence is not None and presence.online:
            self.presence_received(presence)

    def task_finished(self, event: TaskFinished) -> None:
        """Keep each known agent's latest finished task, retained, for its sensor and event."""
        result = event.result()
        if result is not None and result.agent in self.agents and result.state in FINISHED:
            self.bus.publish_after(self.topics.last_result(result.agent), result.to_json(), retain=True,
                                   qos=STATE_QOS)

    def replied(self, event: Replied) -> None:
        """Keep the latest reply, retained, for the coordinator's sensor and event."""
        self.bus.publish_after(self.topics.last_reply, event.payload, retain=True, qos=STATE_QOS)
