"""Prometheus metrics of the coordinator (``[coordinator] metrics_port``; 0 = off).

``lam_prompts_total{status}`` counts replies by outcome, ``lam_task_seconds{capability,state}``
times tasks from first dispatch to their end, ``lam_agents_online`` and ``lam_prompts_running``
follow the coordinator's events, ``lam_parser_fallbacks_total{parser}`` counts
prompts understood by a fallback (``parser`` = who answered instead), and
``lam_errors_total{component}`` counts the refusals every component reports on ``lam/errors``.
"""

from __future__ import annotations

import functools
import logging

from lamcontrol.bus import Bus
from lamcontrol.clock import Clock
from lamcontrol.config import ConfigError
from lamcontrol.protocol import ErrorRecord

from .events import (AgentForgotten, Events, Extension, ExtensionFactory, PresenceChanged, PromptParsed, PromptReceived, Replied,
                     TaskDispatched, TaskFinished)

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def extension(cfg: dict) -> ExtensionFactory | None:
    """Metrics on ``[coordinator] metrics_port``, or None when it is 0."""
    section = cfg["coordinator"]
    port = int(section["metrics_port"])
    return functools.partial(Metrics, port=port, bind=section["metrics_bind"]) if port else None


class Metrics(Extension):
    """The coordinator's metrics, kept from its events and served over HTTP for Prometheus."""

    def __init__(self, bus: Bus, events: Events, clock: Clock, port: int, bind: str = "127.0.0.1") -> None:
        super().__init__(bus, events, clock)
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigError("[coordinator] metrics_port needs prometheus-client: "
                              "pip install 'lamcontrol[metrics]'") from None
        self.registry = prom.CollectorRegistry()
        self.prompts = prom.Counter("lam_prompts", "Prompts answered, by reply status", ["status"],
                                    registry=self.registry)
        self.task_seconds = prom.Histogram("lam_task_seconds", "Seconds from a task's first dispatch to its end",
                                           ["capability", "state"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.fallbacks = prom.Counter("lam_parser_fallbacks", "Prompts understood by a fallback parser, by "
                                      "the parser that answered", ["parser"], registry=self.registry)
        self.errors = prom.Counter("lam_errors", "Messages refused on the errors topic, by component", ["component"],
                                   registry=self.registry)
        self._online: set[str] = set()
        self._running: set[str] = set()
        online = prom.Gauge("lam_agents_online", "Agents whose presence says online", registry=self.registry)
        online.set_function(lambda: len(self._online))
        running = prom.Gauge("lam_prompts_running", "Prompts being carried out", registry=self.registry)
        running.set_function(lambda: len(self._running))
        self._dispatched: dict[str, float] = {}
        self.listen(PromptReceived, lambda e: self._running.add(e.prompt.id))
        self.listen(PromptParsed, self.parsed)
        self.listen(TaskDispatched, self.dispatched)
        self.listen(TaskFinished, self.task_finished)
        self.listen(Replied, self.replied)
        self.listen(PresenceChanged, self.presence_changed)
        self.listen(AgentForgotten, lambda e: self._online.discard(e.agent_id))
        self.subscribe(ErrorRecord, lambda record: self.errors.labels(record.component).inc())
        try:
            self.server, self.thread = prom.start_http_server(port, bind, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {bind}:{port}: {exc.strerror}") from None
        log.info("Prometheus metrics on http://%s:%d/metrics", bind, self.server.server_port)

    def stop(self) -> None:
        super().stop()
        self.server.shutdown()
        self.server.server_close()

    def task_finished(self, event: TaskFinished) -> None:
        started = self._dispatched.pop(event.task_id, None)
        if started is not None:
            self.task_seconds.labels(event.capability, event.state).observe(self.clock.monotonic() - started)

    def replied(self, event: Replied) -> None:
        self._running.discard(event.reply.prompt_id)
        self.prompts.labels(event.reply.status).inc()

    def dispatched(self, event: TaskDispatched) -> None:
        self._dispatched.setdefault(event.task.task_id, self.clock.monotonic())

    def parsed(self, event: PromptParsed) -> None:
        """Count a fallback when the configured parser failed or the LLM was unavailable."""
        if event.failed or event.result.note:
            self.fallbacks.labels(event.result.parser).inc()

    def presence_changed(self, event: PresenceChanged) -> None:
        if event.presence.online:
            self._online.add(event.presence.agent)
        else:
            self._online.discard(event.presence.agent)
