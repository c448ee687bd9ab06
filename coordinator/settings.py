"""The coordinator's timings and switches (``[coordinator]`` in the config)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

from lamcontrol.config import setting

coordinator = functools.partial(setting, "coordinator")  # a field with the [coordinator] key's default


@dataclass(frozen=True)
class Settings:
    """Every timing in seconds. What each is and its default: :data:`lamcontrol.config.MODEL`."""

    ack_timeout: float = coordinator("ack_timeout")
    prompt_timeout: float = coordinator("prompt_timeout")
    max_prompt_timeout: float = coordinator("max_prompt_timeout")
    task_timeout: float = coordinator("task_timeout")
    confirm_window: float = coordinator("confirm_window")
    heartbeat: float = coordinator("heartbeat")
    warmup: float = coordinator("warmup")
    retry_round: float = coordinator("retry_round")
    tick: float = coordinator("tick")
    prune_every: float = coordinator("prune_every")
    transcript: int = 5  # commands remembered per source, for the parser's context
    legacy_results: bool = coordinator("legacy_results")
    ack_grace: float = coordinator("ack_grace")
    agent_grace: float = coordinator("agent_grace")
    sources: int = coordinator("sources")
    source_rate: float = coordinator("source_rate")
    source_burst: float = coordinator("source_burst")
    max_waiting: int = coordinator("max_waiting")
    clock_skew: float = coordinator("clock_skew")

    @classmethod
    def from_config(cls, section: dict) -> Settings:
        """The settings a ``[coordinator]`` section names; the rest keep their defaults."""
        defaults: dict[str, Any] = {f.name: f.default for f in fields(cls)}
        return cls(**{name: type(defaults[name])(value) for name, value in section.items() if name in defaults})

