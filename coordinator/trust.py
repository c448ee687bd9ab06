"""What the coordinator takes from an agent's word: only what the agent's broker login lets it do.

An agent says which capabilities it offers (its presence) and what they understand (its spec).
The broker's ACL, as ``lam mosquitto-config`` and ``lam join`` write it, binds every agent's
topics to its login (an agent writes only under ``<prefix>/agents/<its id>/``), so the topic names
the login, and the ACL says which tasks that login may read. The coordinator takes a capability
from an agent only when its login may read ``<prefix>/tasks/<capability>``:

- **With an ACL** (``[coordinator] acl_file``; by default the one beside the credentials folder of
  ``[broker] password_file``, else the embedded broker's): exactly what the agent's login may
  read. An agent id with no user in the ACL can only have been written by a client without a
  login, which the embedded broker lets in from this machine only (and Mosquitto configured by
  ``lam mosquitto-config`` not at all): it counts as this machine's.
- **Without an ACL, when the coordinator itself logs in** (the broker has users it cannot read the
  rules of): only the agents listed in ``[coordinator] trusted_agents``.
- **A broker without users**: on this machine (its address is a loopback one), every agent: the
  embedded broker without users listens on this machine only; elsewhere, only the agents listed
  in ``trusted_agents``.

Each refusal is said once on ``lam/errors`` (and in the log), naming the agent, the capability
and why.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from lamcontrol import config as lamconfig
from lamcontrol.acl import Reloading, parse_acl
from lamcontrol.bus import BrokerSettings
from lamcontrol.protocol import Presence, Topics

from .registry import MAX_CONCURRENT, MAX_QUEUED

log = logging.getLogger(__name__)

REMEMBERED = 10_000  # refusals already said, so each is said once (forgotten all at once beyond this)


@dataclass
class Trust:
    """Which capabilities each agent may offer (see the module's description)."""

    topics: Topics = field(default_factory=Topics)
    acl_file: str = ""  # the broker's ACL, '' when there is none to read
    logged_in: bool = False  # the coordinator logs in with a user name: the broker has users
    local_broker: bool = True  # the broker's address is on this machine
    trusted: frozenset[str] = frozenset()  # [coordinator] trusted_agents

    def __post_init__(self) -> None:
        self._acl = Reloading(self.acl_file, parse_acl) if self.acl_file else None

    @classmethod
    def from_config(cls, cfg: dict[str, Any], broker: BrokerSettings) -> Trust:
        section = cfg["coordinator"]
        return cls(topics=broker.topics, acl_file=str(acl_path(cfg) or ""), logged_in=bool(broker.username),
                   local_broker=lamconfig.is_loopback(broker.host),
                   trusted=frozenset(map(str, section["trusted_agents"])))

    def describe(self) -> str:
        """How agents are judged, for the log at start."""
        if self._acl is not None:
            return f"agents may offer the capabilities whose tasks their logins may read (the ACL {self.acl_file})"
        listed = ", ".join(sorted(self.trusted)) or "none"
        if self.logged_in:
            return ("the broker has users but no ACL is known here: only agents in [coordinator] trusted_agents may "
                    "offer capabilities; set [coordinator] acl_file to the broker's ACL")
        if self.local_broker:
            return "the broker has no users and is on this machine: agents are taken at their word"
        return f"the broker has no users and is on another machine: only agents in trusted_agents ({listed})"

    def refusal(self, agent_id: str, capability: str) -> str:
        """Why ``agent_id`` may not offer ``capability`` (a sentence), or '' when it may."""
        if self._acl is not None:
            acl = self._acl.get()
            if self._acl.error or self._acl.stamp is None:
                why = self._acl.error or "it does not exist"
                return (f"agent {agent_id} offers {capability}, but I cannot read the broker's ACL {self.acl_file} "
                        f"({why})")
            if not acl.knows(agent_id) or acl.allows(agent_id, self.topics.task(capability), "read"):
                return ""
            return (f"agent {agent_id} offers {capability}, but its login may not read {self.topics.task(capability)} "
                    f"(the ACL {self.acl_file})")
        if agent_id in self.trusted or (self.local_broker and not self.logged_in):
            return ""
        if self.logged_in:
            return (f"agent {agent_id} offers {capability}, but the broker's ACL is unknown here: set [coordinator] "
                    "acl_file, or list the agent in trusted_agents")
        return (f"agent {agent_id} offers {capability} through a broker without users on another machine: list it in "
                "[coordinator] trusted_agents")


def acl_path(cfg: dict[str, Any]) -> Path | None:
    """The broker's ACL the coordinator reads: ``[coordinator] acl_file``; else the ``acl`` beside the
    credentials folder of ``[broker] password_file`` (as ``lam mosquitto-config`` and ``lam join`` lay
    them out), else the embedded broker's (``[embedded_broker] acl_file``, else ``acl`` in its users
    folder), when there is one."""
    if cfg["coordinator"]["acl_file"]:
        return Path(cfg["coordinator"]["acl_file"]).expanduser()
    candidates = []
    password_file = cfg["broker"]["password_file"]
    if password_file and Path(password_file).expanduser().parent.name == "credentials":
        candidates.append(Path(password_file).expanduser().parent.parent / "acl")
    embedded = cfg["embedded_broker"]
    candidates.append(Path(embedded["acl_file"]).expanduser() if embedded["acl_file"] else
                      lamconfig.state_path("embedded_broker", "users_dir", embedded["users_dir"]) / "acl")
    return next((path for path in candidates if path.is_file()), None)


class Refusals:
    """Says each refusal once, on ``lam/errors`` (for the topic it concerns) and in the log; safe from
    any thread. The sentences name the agent, so one said about its presence is not said again about
    its spec."""

    def __init__(self, refuse: Callable[[str, str], None]) -> None:
        self._refuse = refuse  # (topic, sentence): Bus.refuse
        self._said: set[str] = set()
        self._lock = threading.Lock()

    def say(self, topic: str, sentence: str) -> None:
        with self._lock:
            if sentence in self._said:
                return
            if len(self._said) >= REMEMBERED:
                self._said.clear()
            self._said.add(sentence)
        self._refuse(topic, sentence)


def vetted(presence: Presence, trust: Trust, refuse: Callable[[str], None]) -> Presence:
    """The presence with only the capabilities (and their names) the agent may offer; each refusal said,
    and a size beyond what is counted (see the registry). Why it left a capability out is kept only
    for those it may offer: replies repeat it to people."""
    if presence.max_concurrent > MAX_CONCURRENT or presence.max_queued > MAX_QUEUED:
        refuse(f"agent {presence.agent} says it runs {presence.max_concurrent} tasks at once and queues "
               f"{presence.max_queued}; I count at most {MAX_CONCURRENT} and {MAX_QUEUED}")
    if not presence.capabilities and not presence.vocabulary and not presence.unavailable:
        return presence
    allowed = {}
    for capability in {*presence.capabilities, *presence.vocabulary}:
        why = trust.refusal(presence.agent, capability)
        if why:
            refuse(why)
        allowed[capability] = not why
    unavailable = {c: why for c, why in presence.unavailable.items() if not trust.refusal(presence.agent, c)}
    if all(allowed.values()) and unavailable == presence.unavailable:
        return presence
    return replace(presence, capabilities={c: a for c, a in presence.capabilities.items() if allowed[c]},
                   vocabulary={c: n for c, n in presence.vocabulary.items() if allowed[c]}, unavailable=unavailable,
                   readings={c: r for c, r in presence.readings.items() if allowed.get(c)})
