"""A NATS cluster for the tests: three ``nats-server`` processes on loopback, configured by
``lam nats-config`` (users and permissions, JetStream, the MQTT front end), that a test can
kill, freeze and start again; and a fault-test system whose coordinators lead and stand by on it."""

from __future__ import annotations

import random
import shutil
import socket
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from faultkit import System
from helpers import ROOT, Process, wait_for_port, wait_until
from lamcontrol.bus import BrokerSettings
from lamcontrol.cluster import ClusterSettings, NatsLink

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def nats_available() -> bool:
    return Path(NATS_SERVER).exists()


def quiet_ports(count: int) -> list[int]:
    """Free ports below the range the system hands out for outgoing connections, where no client's
    connection takes one between now and the server binding it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) if \
        Path("/proc/sys/net/ipv4/ip_local_port_range").exists() else 32768
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in chosen:
            chosen.append(port)
    return chosen


class NatsCluster:
    """Three NATS nodes on 127.0.0.1, each with its client, route and MQTT port; ``url`` lists the
    MQTT ports of all three, ``nats`` their client ports."""

    def __init__(self, prefix: str, users: str, size: int = 3, hosts: dict[str, str] | None = None,
                 wrap: dict[str, tuple[str, ...]] | None = None, bind: str = "127.0.0.1") -> None:
        self.prefix = prefix
        self.folder = Path(tempfile.mkdtemp(prefix="lam-nats-"))
        self.folder.chmod(0o755)
        self.hardened = True
        self.names = [f"n{i + 1}" for i in range(size)]
        self.ports = dict(zip(self.names, zip(*[iter(quiet_ports(3 * size))] * 3)))  # client, route, mqtt
        self.hosts = {name: (hosts or {}).get(name, "127.0.0.1") for name in self.names}
        self.wrap = wrap or {}  # node -> command prefix (``ip netns exec NS``)
        config = self.folder / "lam.toml"
        config.write_text(f'[broker]\nprefix = "{prefix}"\n[homeassistant]\ndiscovery_prefix = "ha{prefix}"\n')
        nodes = ",".join(f"{name}={self.hosts[name]}:{c}:{r}:{m}" for name, (c, r, m) in self.ports.items())
        done = subprocess.run([sys.executable, "-m", "lamcontrol", "nats-config", "--out", str(self.folder),
                               "--nodes", nodes, "--users", users, "--config", str(config), "--bind", bind,
                               "--store", str(self.folder / "jetstream")], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        self.processes: dict[str, Process] = {}
        self.starts = 0
        try:
            for name in self.names:
                self.start(name, wait=False)
            for name in self.names:
                self.wait_for(name)
            self.wait_for_jetstream()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return ",".join(self.mqtt_url(n) for n in self.names)

    @property
    def nats(self) -> str:
        return ",".join(f"nats://{self.hosts[n]}:{self.ports[n][0]}" for n in self.names)

    def mqtt_url(self, name: str) -> str:
        return f"mqtt://{self.hosts[name]}:{self.ports[name][2]}"

    def url_from(self, name: str) -> str:
        """Every node's MQTT address, beginning with ``name``'s (where a component connects first)."""
        i = self.names.index(name)
        return ",".join(self.mqtt_url(n) for n in self.names[i:] + self.names[:i])

    def start(self, name: str, wait: bool = True) -> None:
        self.starts += 1
        self.processes[name] = Process(f"nats-{name}-{self.starts}", [*self.wrap.get(name, ()), NATS_SERVER, "-c",
                                       str(self.folder / name / "nats-server.conf")], self.folder)
        if wait:
            self.wait_for(name)

    def wait_for(self, name: str) -> None:
        """Until the node takes MQTT connections (from where the test runs: its namespace, if any)."""
        if self.hosts[name] == "127.0.0.1":
            wait_for_port(self.ports[name][2], 30)
            return

        def listening() -> bool:
            try:
                socket.create_connection((self.hosts[name], self.ports[name][2]), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_until(listening, 30, f"node {name}")

    def kill(self, name: str) -> None:
        self.processes[name].kill()

    def signal(self, name: str, sig: int) -> None:
        self.processes[name].signal(sig)

    def password(self, user: str) -> str:
        return (self.folder / "credentials" / user).read_text().strip()

    def settings(self, user: str = "", url: str = "") -> BrokerSettings:
        return BrokerSettings(url=url or self.url, prefix=self.prefix, username=user,
                              password=self.password(user) if user else "")

    def credentials(self, user: str) -> str:
        """The [broker] lines a component's config needs to log in as ``user``."""
        return f'username = "{user}"\npassword_file = "{self.folder / "credentials" / user}"\n'

    def wait_for_jetstream(self, timeout: float = 60.0) -> None:
        """Until the cluster's JetStream places a stream on every node, as the journal's is (a meta
        leader is elected, and every peer has joined it: before, a stream gets "no suitable peers
        for placement")."""
        link = NatsLink(ClusterSettings(nats=self.nats, username="coordinator", password=self.password("coordinator")),
                        "test-probe")

        async def place_a_stream() -> None:
            from nats.js import api

            name = f"{self.prefix}-probe"
            await link.js.add_stream(api.StreamConfig(name=name, subjects=[f"{name}.probe"],
                                                      num_replicas=len(self.names), storage=api.StorageType.MEMORY))
            await link.js.delete_stream(name)

        def answers() -> bool:
            try:
                if not link.connected:
                    link.connect()
                link.call(place_a_stream())
                return True
            except Exception:
                return False

        try:
            wait_until(answers, timeout, lambda: f"JetStream on the cluster\n{self.logs()}")
        finally:
            link.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-2000:]}" for p in self.processes.values())

    def close(self) -> None:
        for process in self.processes.values():
            process.signal(signal.SIGCONT)
            process.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class ClusterSystem(System):
    """The fault-test system on a NATS cluster: coordinators with ``[cluster]`` that lead or stand by
    (each a process of its own name), agents and the load on whichever nodes the test says."""

    def __init__(self, cluster: NatsCluster, folder: Path, ack_timeout: float = 2.0,
                 wrap: dict[str, tuple[str, ...]] | None = None) -> None:
        # The load is one source at up to 60 prompts a second, beyond the per-source rate limit, which
        # is not what these tests measure.
        super().__init__(cluster, folder, ack_timeout, wrap,  # type: ignore[arg-type]
                         coordinator_settings="source_rate = 0\n")
        self.cluster = cluster

    def coordinator(self, name: str = "coordinator", url: str = "", wait: bool = True) -> Process:  # type: ignore[override]
        seen = len(self.load.presence["coordinator"])
        body = (f'[coordinator]\nack_timeout = {self.ack_timeout}\n{self.coordinator_settings}'
                f'[cluster]\nnats = "{self.cluster.nats}"\n')
        config = self.config(name, body, "coordinator", url)
        process = self._start(name, "lamcontrol.coordinator.main", "--config", str(config))
        if wait:
            wait_until(lambda: self.load.online("coordinator", seen), 60,
                       lambda: f"coordinator online\n{process.log()}")
        return process

    def leader(self) -> str:
        """The coordinator process that leads now, by the logs: running, has taken the lead and not lost it."""
        leading = [key for key, p in self.processes.items() if key.startswith(("coordinator", "standby"))
                   and p.popen.poll() is None and "takes the lead" in (log := p.log()) and "no longer leads" not in log]
        return leading[-1] if leading else ""

    def wait_for_leader(self, other_than: str = "", timeout: float = 30.0) -> str:
        return wait_until(lambda: (lambda name: name if name and name != other_than else "")(self.leader()),
                          timeout, lambda: f"a new leader\n{self.logs()}")
