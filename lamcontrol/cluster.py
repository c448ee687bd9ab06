"""The NATS side of a clustered house (``[cluster]``): where JetStream is, and what lives in it.

On a NATS cluster the MQTT broker is NATS's own MQTT front end; beside it, JetStream's key-value
store holds the coordinators' lease and a stream holds their journal. This module names them
(per topic prefix, so several houses can share a cluster) and gives blocking code a NATS
connection (:class:`NatsLink`: nats-py's asyncio client on a thread of its own). The lease and
the journal themselves are the coordinator's (``coordinator/leader.py``, ``coordinator/journal.py``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, TypeVar
from urllib.parse import urlsplit

from . import config as lamconfig

log = logging.getLogger(__name__)

T = TypeVar("T")


def tag(prefix: str) -> str:
    """The topic prefix as a JetStream name part (``home/lam`` -> ``home_lam``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix)


@dataclass(frozen=True)
class Names:
    """What the coordinators of one topic prefix keep in JetStream."""

    prefix: str

    @property
    def lease_bucket(self) -> str:
        return f"LAM_{tag(self.prefix)}_lease"

    @property
    def lease_subject(self) -> str:
        """The subjects of the lease bucket (a key-value bucket is a stream on ``$KV.<bucket>.>``)."""
        return f"$KV.{self.lease_bucket}.>"

    @property
    def journal_stream(self) -> str:
        return f"LAM_{tag(self.prefix)}_journal"

    @property
    def journal_subject(self) -> str:
        return f"lamjournal.{tag(self.prefix)}"


LEASE_KEY = "leader"


@dataclass
class ClusterSettings:
    """``[cluster]``: the NATS servers and the lease's timings; empty ``nats`` is a single box."""

    nats: str = ""
    lease: float = 6.0
    renew: float = 1.5
    replicas: int = 3
    username: str = ""
    password: str = ""
    ca_file: str = ""

    def __post_init__(self) -> None:
        self.servers = []
        for item in (part.strip() for part in self.nats.split(",")):
            if not item:
                continue
            parts = urlsplit(item if "://" in item else f"nats://{item}")
            if parts.scheme not in ("nats", "tls"):
                raise lamconfig.ConfigError(f"[cluster] nats: {item} must start with nats:// or tls://")
            try:
                port = parts.port or 4222
            except ValueError:
                raise lamconfig.ConfigError(f"[cluster] nats: {item} has a bad port") from None
            self.servers.append(f"{parts.scheme}://{parts.hostname or '127.0.0.1'}:{port}")
        if self.servers and not 0 < self.renew * 2 < self.lease:
            raise lamconfig.ConfigError("[cluster] renew must be below half of lease, so a renewal can fail once "
                                        "and the next still come in time")

    @property
    def enabled(self) -> bool:
        return bool(self.servers)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ClusterSettings:
        """The cluster a config names; it logs in as the component's MQTT user (NATS's users are both)."""
        section, broker = config["cluster"], config["broker"]
        password = lamconfig.read_secret(broker["password"], broker["password_file"], "LAM_BROKER_PASSWORD")
        return cls(nats=section["nats"], lease=float(section["lease"]), renew=float(section["renew"]),
                   replicas=int(section["replicas"]), username=broker["username"], password=password,
                   ca_file=broker["ca_file"])


class NatsLink:
    """A NATS connection for blocking code: nats-py on an asyncio loop of its own thread, which
    reconnects to any server of the list by itself; :meth:`call` runs a coroutine there and waits."""

    def __init__(self, settings: ClusterSettings, name: str, timeout: float = 2.0) -> None:
        self.settings = settings
        self.name = name
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"{name}-nats", daemon=True)
        self._thread.start()
        self.nc: Any = None
        self.js: Any = None

    def connect(self) -> None:
        """Connect, or raise (nats.errors.NoServersError when no server answers)."""
        import nats

        s = self.settings
        options: dict[str, Any] = dict(
            servers=s.servers, name=self.name, connect_timeout=self.timeout, allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=0.5, ping_interval=max(1, int(s.renew)),
            max_outstanding_pings=2, error_cb=self._error, disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected)
        if s.username:
            options.update(user=s.username, password=s.password or None)
        if any(server.startswith("tls://") for server in s.servers):
            import ssl

            options["tls"] = ssl.create_default_context(cafile=s.ca_file or None)
        self.nc = self.call(nats.connect(**options), self.timeout * (len(s.servers) + 1))
        self.js = self.nc.jetstream(timeout=self.timeout)

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def call(self, coroutine: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the link's loop; its result, or its exception (TimeoutError after ``timeout``)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
        try:
            return future.result(self.timeout if timeout is None else timeout)
        except TimeoutError:
            future.cancel()
            raise

    async def _error(self, error: Exception) -> None:
        log.warning("%s: NATS: %s", self.name, error)

    async def _disconnected(self) -> None:
        log.warning("%s: NATS connection lost; reconnecting", self.name)

    async def _reconnected(self) -> None:
        log.info("%s: NATS connection back, to %s", self.name, self.nc.connected_url.netloc if self.nc else "?")

    def close(self) -> None:
        if self.nc is not None:
            try:
                self.call(self.nc.close(), self.timeout)
            except Exception:  # closing a link that is already gone
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(self.timeout)
