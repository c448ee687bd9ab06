"""Prometheus metrics of the coordinator (``[coordinator] metrics_port``; 0 = off).

``lam_prompts_total{status}`` counts replies by outcome, ``lam_task_seconds{capability,state}``
times tasks from first dispatch to their end, ``lam_agents_online`` and ``lam_prompts_running``
are read from the coordinator when scraped, ``lam_parser_fallbacks_total{parser}`` counts
prompts understood by a fallback (``parser`` = who answered instead), and
``lam_errors_total{component}`` counts the refusals every component reports on ``lam/errors``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from lamcontrol.config import ConfigError
from lamcontrol.protocol import ErrorRecord, ProtocolError, decode

from .grammar import ParseResult

if TYPE_CHECKING:
    from .service import Coordinator

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class NoMetrics:
    """What the coordinator calls when metrics are off: nothing is measured."""

    def task_dispatched(self, task_id: str) -> None:
        pass

    def task_finished(self, task_id: str, capability: str, state: str) -> None:
        pass

    def replied(self, status: str) -> None:
        pass

    def parsed(self, result: ParseResult, failed: bool = False) -> ParseResult:
        return result


class Metrics(NoMetrics):
    """The coordinator's metrics, served over HTTP for Prometheus."""

    def __init__(self, coordinator: Coordinator, port: int, bind: str = "127.0.0.1") -> None:
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
        online = prom.Gauge("lam_agents_online", "Agents whose presence says online", registry=self.registry)
        online.set_function(lambda: sum(a.online for a in list(coordinator.registry.agents.values())))
        running = prom.Gauge("lam_prompts_running", "Prompts being carried out", registry=self.registry)
        running.set_function(lambda: len(coordinator.runs))
        self._dispatched: dict[str, float] = {}
        coordinator.bus.on(coordinator.topics.errors, self.on_error)
        try:
            self.server, self.thread = prom.start_http_server(port, bind, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {bind}:{port}: {exc.strerror}") from None
        log.info("Prometheus metrics on http://%s:%d/metrics", bind, self.server.server_port)

    def task_dispatched(self, task_id: str) -> None:
        self._dispatched.setdefault(task_id, time.monotonic())

    def task_finished(self, task_id: str, capability: str, state: str) -> None:
        started = self._dispatched.pop(task_id, None)
        if started is not None:
            self.task_seconds.labels(capability, state).observe(time.monotonic() - started)

    def replied(self, status: str) -> None:
        self.prompts.labels(status).inc()

    def parsed(self, result: ParseResult, failed: bool = False) -> ParseResult:
        """Count ``result`` as a fallback when the configured parser failed or the LLM was unavailable."""
        if failed or result.note:
            self.fallbacks.labels(result.parser).inc()
        return result

    def on_error(self, topic: str, payload: bytes) -> None:
        try:
            record = ErrorRecord.from_dict(decode(payload))
        except ProtocolError:
            return
        self.errors.labels(record.component).inc()


def build_metrics(coordinator: Coordinator, port: int, bind: str = "127.0.0.1") -> NoMetrics:
    """Metrics served on ``port``, or none when it is 0."""
    return Metrics(coordinator, port, bind) if port else NoMetrics()
