"""The coordinator's timings and switches (``[coordinator]`` in the config), and its clock."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Every timing in seconds."""

    ack_timeout: float = 5.0  # an agent must accept a task within this
    prompt_timeout: float = 60.0  # a prompt is answered within this, unless its metadata asks otherwise
    max_prompt_timeout: float = 600.0  # the longest a prompt's metadata may ask for
    task_timeout: float = 45.0  # a task's own deadline, within its prompt's
    confirm_window: float = 30.0  # a high-risk command waits this long for "confirm"
    heartbeat: float = 30.0  # between the coordinator's presence announcements
    warmup: float = 3.0  # after start, unknown capabilities are waited for, not failed
    retry_round: float = 1.0  # pause before offering a task again to agents that refused it
    tick: float = 0.1  # between checks of timeouts and waiting tasks
    prune_every: float = 3600.0  # between journal clean-ups
    transcript: int = 5  # commands remembered per source, for the parser's context
    legacy_results: bool = False  # also take results on the old topic lam/results/<task_id>
    ack_grace: float = 1.0  # past an accept window, for an `accepted` sent within it to reach us
    agent_grace: float = 15.0  # an agent gone offline keeps its accepted tasks this long, to come back
    sources: int = 1000  # sources whose transcripts and held confirmations are kept (least recent go)
    source_rate: float = 20.0  # prompts a second one source may send, sustained (0: no limit)
    source_burst: float = 200.0  # prompts one source may send at once, before source_rate applies
    max_waiting: int = 1000  # prompts journaled and waiting to be understood, all sources together
    clock_skew: float = 10.0  # seconds a source's clock may be off before its prompts are timed on arrival

    @classmethod
    def from_config(cls, section: dict) -> Settings:
        """The settings a ``[coordinator]`` section names; the rest keep their defaults."""
        defaults: dict[str, Any] = {f.name: f.default for f in fields(cls)}
        return cls(**{name: type(defaults[name])(value) for name, value in section.items() if name in defaults})


class Clock:
    """Wall time for deadlines on the wire, monotonic time for intervals; tests pass their own."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
