"""The specs agents advertise, and the language of what is online.

Agents publish their capabilities' specs retained on ``lam/agents/<id>/spec``. The store keeps
them by agent; :meth:`SpecStore.language` builds (and caches) the :class:`~coordinator.language.Language`
of the online agents: each capability from an advertised spec, else the installed spec of that name
(an older agent that advertises none), else its rigid actions from presence.
"""

from __future__ import annotations

import threading

from lamcontrol.language import CapabilitySpec, read_specs
from lamcontrol.protocol import AgentSpec

from .language import Language, installed_specs
from .registry import Registry

class SpecStore:
    def __init__(self) -> None:
        self.by_agent: dict[str, dict[str, CapabilitySpec]] = {}
        self._lock = threading.Lock()
        self._cached: tuple[str, Language] | None = None
        self._seen = (-1, -1)  # the registry's version and the specs received when last checked
        self._received = 0  # specs read so far: a new one means a new language

    def on_spec(self, message: AgentSpec) -> None:
        """An agent's retained spec."""
        specs = read_specs(message)
        with self._lock:
            self.by_agent[message.agent] = specs
            self._received += 1

    def on_cleared(self, ids: dict[str, str]) -> None:
        """An emptied spec topic: the agent is forgotten."""
        with self._lock:
            self.by_agent.pop(ids["agent"], None)
            self._received += 1

    def advertised(self, agent_id: str) -> dict[str, CapabilitySpec]:
        """What an agent advertised (nothing for an agent that advertises no spec)."""
        with self._lock:
            return dict(self.by_agent.get(agent_id, {}))

    def language(self, registry: Registry) -> Language:
        """What the online agents understand (installed capabilities when none is online)."""
        if self._cached and self._seen == (registry.version, self._received):
            return self._cached[1]
        self._seen = (registry.version, self._received)
        offered: dict[str, list[str]] = {}
        advertised: dict[str, CapabilitySpec] = {}
        online = sorted(a for a, info in list(registry.agents.items()) if info.online)
        names = registry.vocabulary()
        key = repr((online, [registry.agents[a].presence.capabilities for a in online], self._received,
                    sorted(names.items())))
        if self._cached and self._cached[0] == key:
            return self._cached[1]
        with self._lock:
            for agent_id in online:
                for capability, actions in registry.agents[agent_id].presence.capabilities.items():
                    offered.setdefault(capability, []).extend(a for a in actions if a not in offered[capability])
                    spec = self.by_agent.get(agent_id, {}).get(capability)
                    if spec is not None:
                        known = advertised.get(capability)
                        advertised[capability] = spec if known is None else known.with_lists(spec.lists, add=True)
        specs = {**installed_specs(), **advertised}
        language = Language.with_rigid(specs, {c: a for c, a in offered.items() if c not in specs},
                                       {c: n for c, n in names.items() if c not in advertised},
                                       online=set(offered) or None)
        self._cached = (key, language)
        return language
