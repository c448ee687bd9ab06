"""Prometheus metrics of one bridge, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lam_bridge_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.round_trip = Histogram("lam_bridge_prompt_round_trip_seconds",
                                    "From publishing a prompt to receiving its reply", registry=self.registry,
                                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.prompts = Counter("lam_bridge_prompts", "Prompts relayed, by reply status (pending: none yet)",
                               ["status"], registry=self.registry)
        self.agents_online = Gauge("lam_bridge_agents_online", "Agents whose retained presence says online",
                                   registry=self.registry)
        self.broker_connected = Gauge("lam_bridge_broker_connected", "1 while connected to the MQTT broker",
                                      registry=self.registry)
        self.stream_clients = Gauge("lam_bridge_stream_clients", "Dashboards following the live stream",
                                    registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int):
        """Serve /metrics on a port of its own (for a Prometheus that holds no API token)."""
        return start_http_server(port, addr=host, registry=self.registry)
