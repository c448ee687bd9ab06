"""The agents the coordinator knows, from their retained presence."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lamcontrol.protocol import Presence, PresenceState

from .settings import Clock

STALE_AFTER = 3  # heartbeats missed before an agent that said online counts as gone
OVERDUE_AFTER = 1.5  # heartbeats without a word before an agent gets no new task (a frozen process)
# An agent's own word on its size counts up to these: a claim of more cannot draw every task to it.
MAX_CONCURRENT, MAX_QUEUED = 16, 64


@dataclass
class AgentInfo:
    presence: Presence
    last_seen: float
    inflight: int = 0  # tasks we gave it that have not finished
    advertised: dict = field(default_factory=dict)  # what it offered when last online
    left_out: dict = field(default_factory=dict)  # capability -> why it left it out, when last online
    missed: bool = False  # it let an accept window pass, and has not been heard from since

    @property
    def gone_by(self) -> float:
        """When (monotonic) an agent that says online counts as gone if it has not been heard from."""
        return self.last_seen + STALE_AFTER * self.presence.heartbeat + 5

    def available(self, now: float) -> bool:
        """Online, heard from within its heartbeat, and not silent on a task we offered."""
        return self.online and not self.missed and now - self.last_seen <= OVERDUE_AFTER * self.presence.heartbeat

    @property
    def online(self) -> bool:
        return self.presence.online

    @property
    def concurrent(self) -> int:
        """Tasks it runs at once, by its word, within bounds."""
        return min(max(1, self.presence.max_concurrent), MAX_CONCURRENT)

    @property
    def load(self) -> float:
        """Tasks out with it per slot: what it says it runs, never fewer than what we gave it."""
        return max(self.presence.load, self.inflight) / self.concurrent

    @property
    def full(self) -> bool:
        """As many tasks out with it as it runs at once, plus as many as it said it would queue."""
        return self.inflight >= self.concurrent + min(max(0, self.presence.max_queued), MAX_QUEUED)


class Registry:
    """Agent presence by id, with least-loaded choice."""

    def __init__(self, clock: Clock = Clock()) -> None:
        self.clock = clock
        self.agents: dict[str, AgentInfo] = {}
        self.version = 0  # counts changes of presence: what is online, and what it offers
        self._next_due: float | None = None  # see next_due; None: to be worked out again
        self._vocabulary: tuple[int, dict[str, list[str]]] = (-1, {})

    def update(self, presence: Presence) -> bool:
        """Record a presence; True when an agent that was online is now offline."""
        info = self.agents.get(presence.agent)
        was_online = bool(info and info.online)
        self.version += 1
        self._next_due = None
        if info is None:
            info = self.agents[presence.agent] = AgentInfo(presence, self.clock.monotonic())
        else:
            info.presence, info.last_seen, info.missed = presence, self.clock.monotonic(), False
        if info.online:
            info.advertised, info.left_out = presence.capabilities, presence.unavailable
        else:
            info.inflight = 0
        return was_online and not info.online

    def heard(self, agent_id: str) -> bool:
        """The agent said something (a result); True when that brings it back into rotation."""
        info = self.agents.get(agent_id)
        if info is None:
            return False
        info.last_seen = self.clock.monotonic()
        back, info.missed = info.missed, False
        return back

    def missed(self, agent_id: str | None) -> None:
        """The agent let an accept window pass: no new task until it is heard from."""
        info = self.agents.get(agent_id or "")
        if info:
            info.missed = True

    def release(self, agent_id: str | None) -> None:
        """One task fewer out with this agent."""
        info = self.agents.get(agent_id or "")
        if info and info.inflight > 0:
            info.inflight -= 1

    def forget(self, agent_id: str) -> bool:
        """Forget an agent whose retained status was emptied (``lam agents forget``); False, and it is
        kept, while it is online and heard from within its heartbeat: an empty status then is no
        forgetting (a live agent says otherwise at its next heartbeat), but a stray or replayed
        empty message (some brokers hand one to new subscribers after a clear)."""
        info = self.agents.get(agent_id)
        if info is not None and info.online and self.clock.monotonic() - info.last_seen <= info.presence.heartbeat:
            return False
        self.agents.pop(agent_id, None)
        self.version += 1
        self._next_due = None
        return True

    def offers(self, capability: str, action: str) -> bool:
        """Some online agent offers this action."""
        return any(a.presence.offers(capability, action) for a in self.agents.values())

    def ever_offered(self, capability: str, action: str) -> bool:
        """Some agent, online or not, has advertised this action."""
        return any(action in a.advertised.get(capability, ()) for a in self.agents.values())

    def left_out(self, capability: str) -> list[tuple[AgentInfo, str]]:
        """Agents that left the capability out at start, each with its reason (which says the fix)."""
        return [(a, a.left_out[capability]) for _, a in sorted(self.agents.items()) if capability in a.left_out]

    def pick(self, capability: str, action: str, exclude: set[str]) -> AgentInfo | None:
        """The least-loaded available agent offering the action, with room for one more task."""
        now = self.clock.monotonic()
        candidates = [a for a in self.agents.values() if a.presence.offers(capability, action)
                      and a.presence.agent not in exclude and not a.full and a.available(now)]
        return min(candidates, key=lambda a: (a.load, a.presence.agent), default=None)

    def vocabulary(self) -> dict[str, list[str]]:
        """Names online agents advertise (devices, rooms, contacts), by capability."""
        if self._vocabulary[0] != self.version:
            names: dict[str, set[str]] = {}
            for info in self.agents.values():
                if info.online:
                    for capability, words in info.presence.vocabulary.items():
                        names.setdefault(capability, set()).update(words)
            self._vocabulary = (self.version, {c: sorted(w) for c, w in names.items()})
        return self._vocabulary[1]

    def running(self, agent_id: str | None, task_id: str) -> bool:
        """The agent is online and its latest presence lists the task as running."""
        info = self.agents.get(agent_id or "")
        return bool(info and info.online and task_id in info.presence.running)

    def next_due(self) -> float:
        """When (monotonic) :meth:`stale` may next find an agent gone; math.inf when none says online.
        Worked out again after each presence and each :meth:`stale`, not when an agent is merely heard
        from (which only makes it later): until then it may come early, never late."""
        if self._next_due is None:
            self._next_due = min((a.gone_by for a in self.agents.values() if a.online), default=math.inf)
        return self._next_due

    def stale(self) -> list[str]:
        """Agents that said online but missed their heartbeats; they are marked offline."""
        now = self.clock.monotonic()
        gone = [a for a in self.agents.values() if a.online and now > a.gone_by]
        for info in gone:
            info.presence = Presence(state=PresenceState.OFFLINE, agent=info.presence.agent, host=info.presence.host)
            info.inflight = 0
            self.version += 1
        self._next_due = None
        return [info.presence.agent for info in gone]
