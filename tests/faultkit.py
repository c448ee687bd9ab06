"""Fault-test kit: a LAMControl system of real processes on a broker the test may kill, a load
generator that records every reply and result it sees, and the agents' own records of what
they ran (the echo capability's ``run_record``).

The measure, per the reliability issue: per prompt id every reply, per task id every
``accepted`` and ``succeeded`` with the agent that sent it; "ran twice" is counted from the
agents' records, "accepted twice" from the bus.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from helpers import ROOT, Process, free_port, wait_for_port, wait_until
from lamcontrol import ops
from lamcontrol.bus import BrokerSettings, Bus
from lamcontrol.protocol import CoordinatorPresence, Presence, Prompt, Reply, Result, Topics, parse

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    """The embedded broker, or Mosquitto as ``lam mosquitto-config`` writes it (users, ACL,
    persistence), on a free port; it can be stopped, killed and started again. The embedded
    broker given ``users`` (or listening beyond loopback) gets a password file with a user for each,
    and their ACL, as ``lam join`` writes them."""

    def __init__(self, kind: str, folder: Path, prefix: str, users: str = "", *options: str,
                 host: str = "127.0.0.1", wrap: tuple[str, ...] = ()) -> None:
        self.kind, self.folder, self.prefix, self.host, self.wrap = kind, folder, prefix, host, wrap
        self.port = free_port()
        self.url = f"mqtt://{host}:{self.port}"
        self.hardened = kind == "mosquitto"
        if self.hardened:
            # Mosquitto drops to its own user, who must reach passwd, acl and persistence/.
            self.folder = folder = Path(tempfile.mkdtemp(prefix="lam-faults-"))
            folder.chmod(0o755)
            config = folder / "mosquitto-lam.toml"
            config.write_text(f'[broker]\nprefix = "{prefix}"\n[homeassistant]\ndiscovery_prefix = "ha{prefix}"\n')
            done = subprocess.run([sys.executable, "-m", "lamcontrol", "mosquitto-config", "--out", str(folder),
                                   "--users", users, "--config", str(config), "--listen", f"{host}:{self.port}",
                                   *options], capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert done.returncode == 0, done.stderr
        elif users or not host.startswith("127."):
            self.hardened = True  # lam-broker needs users beyond loopback; with them, an ACL as lam join writes
            accounts = ops.parse_users(users or "coordinator,client:load,agent:a1:echo,agent:a2:echo")
            (folder / "acl").write_text(ops.acl_file(accounts, Topics(prefix), f"ha{prefix}"))
            for user in accounts:
                password = uuid.uuid4().hex
                (folder / "credentials").mkdir(exist_ok=True)
                (folder / "credentials" / user.name).write_text(password)
                done = subprocess.run([sys.executable, "-m", "lamcontrol.broker.main", "adduser",
                                       str(folder / "passwd"), user.name], input=password, capture_output=True,
                                      text=True, timeout=60, cwd=ROOT)
                assert done.returncode == 0, done.stderr
        self.process: Process | None = None
        self.starts = 0
        self.start()

    def argv(self) -> list[str]:
        if self.kind == "mosquitto":
            return [MOSQUITTO, "-c", str(self.folder / "mosquitto.conf")]
        users = ["--password-file", str(self.folder / "passwd"), "--acl-file", str(self.folder / "acl")] \
            if self.hardened else []
        return [sys.executable, "-m", "lamcontrol.broker.main", "--listen", f"{self.host}:{self.port}",
                "--stop-timeout", "5", *users]

    def start(self) -> None:
        self.starts += 1
        self.process = Process(f"broker-{self.kind}-{self.starts}", [*self.wrap, *self.argv()], self.folder)
        if not self.wrap:
            wait_for_port(self.port)

    def close(self) -> None:
        if self.process:
            self.process.stop()
        if self.kind == "mosquitto":
            shutil.rmtree(self.folder, ignore_errors=True)

    def settings(self, user: str = "") -> BrokerSettings:
        password = (self.folder / "credentials" / user).read_text().strip() if self.hardened and user else ""
        return BrokerSettings(url=self.url, prefix=self.prefix, username=user if self.hardened else "",
                              password=password)

    def credentials(self, user: str) -> str:
        """The [broker] lines a component's config needs to log in as ``user``."""
        if not self.hardened:
            return ""
        return f'username = "{user}"\npassword_file = "{self.folder / "credentials" / user}"\n'


class Load:
    """Sends prompts and records every reply (per prompt id) and every result (per task id, with
    the agent it came from), through a persistent session so a broker restart loses nothing."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.replies: dict[str, list[Reply]] = defaultdict(list)
        self.answered_at: dict[str, float] = {}  # prompt id -> when its first reply came
        self.results: dict[str, list[tuple[str, str]]] = defaultdict(list)  # task id -> [(state, agent)]
        self.presence: dict[str, list[str]] = defaultdict(list)
        self._lock = threading.Lock()
        self.bus = Bus(settings, component="fault-load", client_id=f"{settings.prefix}-load-{uuid.uuid4().hex[:6]}",
                       persistent=True, report=False)
        topics = self.bus.topics
        self.topics = topics
        self.bus.on(topics.all_replies, self._reply)
        for results in (topics.build("results/+"), topics.all_results):
            self.bus.on(results, self._result)
        self.bus.on(f"{topics.prefix}/agents/+/status", self._presence)
        self.bus.on(topics.coordinator_status, self._presence)
        self.bus.start(timeout=20)

    def _reply(self, topic: str, payload: bytes) -> None:
        reply = parse(Reply, payload)
        with self._lock:
            self.replies[reply.prompt_id].append(reply)
            self.answered_at.setdefault(reply.prompt_id, time.time())

    def _result(self, topic: str, payload: bytes) -> None:
        result = parse(Result, payload)
        parts = topic.split("/")
        agent = parts[-3] if parts[-4:-3] == ["agents"] else result.agent  # the topic names it, after the move
        with self._lock:
            self.results[result.task_id].append((result.state, agent))

    def _presence(self, topic: str, payload: bytes) -> None:
        if payload:
            presence = parse(CoordinatorPresence if topic == self.topics.coordinator_status else Presence, payload)
            with self._lock:
                self.presence[presence.agent or "coordinator"].append(presence.state)

    def online(self, who: str, since: int = 0) -> bool:
        with self._lock:
            return "online" in self.presence[who][since:]

    def send(self, count: int, seconds: float = 0.0, timeout: float = 20.0, pace: float = 0.01,
             source: str = "faults", padding: int = 0) -> list[Prompt]:
        """Publish ``count`` prompts ``echo sleep <seconds> <token>``, each with its own token (after
        ``padding`` characters of words, for prompts that fill a journal)."""
        prompts = []
        words = "words " * (padding // 6)
        for _ in range(count):
            prompt = Prompt(prompt=f"echo sleep {seconds:g} {words}tok{uuid.uuid4().hex[:12]}", source=source,
                            metadata={"timeout": timeout})
            self.bus.publish(prompt)
            prompts.append(prompt)
            time.sleep(pace)
        return prompts

    def wait_answered(self, prompts: list[Prompt], timeout: float) -> None:
        """Wait (bounded) until every prompt has a reply; the counts say what happened if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(not self.replies.get(p.id) for p in prompts):
            time.sleep(0.1)
        time.sleep(0.5)  # room for a second reply to show up

    def tally(self, prompts: list[Prompt], runs: Counter, fault_at: float = 0.0) -> Tally:
        with self._lock:
            copies = {p.id: list(self.replies.get(p.id, [])) for p in prompts}
            results = {k: list(v) for k, v in self.results.items()}
        # A reply sent again after a restart (journaled, never acknowledged) is the same message,
        # byte for byte, as QoS 1 may deliver any message twice: an asker keeps the first copy.
        replies = {p: list({r.to_json(): r for r in rs}.values()) for p, rs in copies.items()}
        task_ids = {t.task_id for rs in replies.values() for r in rs for t in r.tasks if t.task_id}
        accepted_by = {t: {a for s, a in results.get(t, []) if s == "accepted"} for t in task_ids}
        tokens = {p.prompt.rsplit(" ", 1)[1] for p in prompts}
        failed = {p.prompt.rsplit(" ", 1)[1] for p in prompts if replies[p.id] and replies[p.id][0].status == "failed"}
        return Tally(prompts=len(prompts),
                     once=sum(len(r) == 1 for r in replies.values()),
                     lost=sum(not r for r in replies.values()),
                     twice=sum(len(r) > 1 for r in replies.values()),
                     copies=sum(len(r) > len(replies[p]) for p, r in copies.items()),
                     accepted_by_two=sum(len(a) > 1 for a in accepted_by.values()),
                     ran_twice=sum(runs[t] > 1 for t in tokens),
                     failed_but_ran=sum(runs[t] > 0 for t in failed),
                     statuses=Counter(r[0].status for r in replies.values() if r),
                     slowest=max((self.answered_at.get(p.id, time.time()) - p.ts for p in prompts
                                  if fault_at and p.ts >= fault_at), default=0.0),
                     resumed=min((self.answered_at[p.id] - fault_at for p in prompts
                                  if fault_at and p.ts >= fault_at and p.id in self.answered_at), default=0.0))

    def close(self) -> None:
        self.bus.stop()


@dataclass
class Tally:
    """What a fault test counted."""

    prompts: int
    once: int
    lost: int
    twice: int  # prompts with two different replies
    accepted_by_two: int  # tasks two different agents said they accepted (bus view)
    ran_twice: int  # prompts whose task the agents' own records show run more than once
    statuses: Counter = field(default_factory=Counter)
    slowest: float = 0.0  # seconds, the longest a prompt sent from the fault on waited for its reply (benches)
    copies: int = 0  # prompts whose one reply came more than once (sent again after a restart)
    failed_but_ran: int = 0  # prompts answered `failed` whose task the agents' records show run
    resumed: float = 0.0  # seconds from the fault to the first reply to a prompt sent after it (benches)

    def clean(self) -> bool:
        """Nothing lost, twice or run twice (a task started by an agent killed meanwhile may be
        answered `failed` and still be in its record: ``failed_but_ran`` is checked where it must be 0)."""
        return self.once == self.prompts and not (self.lost or self.twice or self.accepted_by_two or self.ran_twice)


class System:
    """Coordinator and echo agents as real processes, each logging in as itself on a hardened
    broker; every echo agent keeps a record of the tasks it ran."""

    def __init__(self, broker: Broker, folder: Path, ack_timeout: float = 2.0,
                 wrap: dict[str, tuple[str, ...]] | None = None, coordinator_settings: str = "") -> None:
        self.broker, self.folder, self.ack_timeout = broker, folder, ack_timeout
        self.coordinator_settings = coordinator_settings  # more [coordinator] lines
        self.wrap = wrap or {}  # process name -> command prefix (e.g. `ip netns exec NS`)
        self.processes: dict[str, Process] = {}
        self.load = Load(broker.settings("load"))
        self.journal = folder / "journal.db"
        self.fault_at = 0.0  # when the test's first fault began (for the recovery figure of bench_faults)

    def fault(self) -> None:
        """Mark the start of the test's fault."""
        self.fault_at = self.fault_at or time.time()

    def config(self, name: str, body: str, user: str, url: str = "") -> Path:
        path = self.folder / f"{name}.toml"
        path.write_text(f'[broker]\nurl = "{url or self.broker.url}"\nprefix = "{self.broker.prefix}"\n'
                        f'{self.broker.credentials(user)}[homeassistant]\nenabled = false\n{body}')
        return path

    def coordinator_config(self) -> Path:
        return self.config("coordinator", f'[coordinator]\njournal = "{self.journal}"\n'
                                          f"ack_timeout = {self.ack_timeout}\n{self.coordinator_settings}",
                           "coordinator")

    def coordinator(self, wait: bool = True) -> Process:
        """The coordinator as a process; with ``wait``, once it says it is online."""
        seen = len(self.load.presence["coordinator"])
        process = self._start("coordinator", "lamcontrol.coordinator.main", "--config", str(self.coordinator_config()))
        if wait:
            wait_until(lambda: self.load.online("coordinator", seen), 60,
                       lambda: f"coordinator online\n{process.log()}")
        return process

    def record(self, agent_id: str) -> Path:
        return self.folder / f"runs-{agent_id}.jsonl"

    def agent(self, agent_id: str, max_concurrent: int = 4, url: str = "") -> Process:
        seen = len(self.load.presence[agent_id])
        config = self.config(f"agent-{agent_id}", f'[capabilities.echo]\nrun_record = "{self.record(agent_id)}"\n',
                             agent_id, url)
        process = self._start(agent_id, "lamcontrol.agents.main", "--id", agent_id, "--capability", "echo",
                              "--max-concurrent", str(max_concurrent), "--config", str(config))
        wait_until(lambda: self.load.online(agent_id, seen), 60, lambda: f"agent {agent_id} online\n{process.log()}")
        return process

    def _start(self, name: str, module: str, *args: str) -> Process:
        runs = sum(1 for n in self.processes if n.split("#")[0] == name)
        process = Process(f"{name}-{runs}", [*self.wrap.get(name, ()), sys.executable, "-m", module, *args],
                          self.folder, {"LAM_STATE_DIR": str(self.folder / "state")})
        self.processes[f"{name}#{runs}"] = process
        return process

    def runs(self) -> Counter:
        """How many times the agents' own records show each token run."""
        runs: Counter = Counter()
        for path in self.folder.glob("runs-*.jsonl"):
            for line in path.read_text().splitlines():
                if line.strip():
                    runs[json.loads(line)["args"]["text"].rsplit(" ", 1)[-1]] += 1
        return runs

    def lost_in_broker(self, prompts: list[Prompt]) -> dict[str, str]:
        """The prompts left without a reply whose loss the coordinator's journal puts in a broker that
        died (prompt id -> "prompt" or "reply"): never journaled, as the broker had acknowledged the
        prompt to its sender and not handed it on (the coordinator acknowledges a prompt only once it
        is journaled); or answered, the broker having acknowledged the reply (the journal marks it
        sent only then) and not handed it on. Any other prompt without a reply is lost by us."""
        unanswered = [p.id for p in prompts if not self.load.replies.get(p.id)]
        with closing(sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=10)) as db:
            sent = dict(db.execute(f"SELECT id, reply IS NOT NULL AND sent FROM prompts WHERE id IN "
                                   f"({','.join('?' * len(unanswered))})", unanswered).fetchall())
        return {prompt_id: "prompt" if prompt_id not in sent else "reply" for prompt_id in unanswered
                if sent.get(prompt_id, True)}

    def tally(self, prompts: list[Prompt]) -> Tally:
        """The counts; with $LAM_FAULT_REPORT set (bench/bench_faults.py), also appended there."""
        tally = self.load.tally(prompts, self.runs(), self.fault_at)
        report = os.environ.get("LAM_FAULT_REPORT")
        if report:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
            with open(report, "a", encoding="utf-8") as out:
                out.write(json.dumps({"test": test, "ack_timeout": self.ack_timeout,
                                      **{k: v for k, v in tally.__dict__.items() if k != "statuses"}}) + "\n")
        return tally

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in self.processes.values())

    def frozen(self) -> Iterator[None]:
        """Every LAMControl process stopped (SIGSTOP) meanwhile; continued after."""
        return freeze([p for p in self.processes.values() if p.popen.poll() is None])

    def close(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.signal(signal.SIGCONT)
            process.stop()
        self.load.close()


@contextmanager
def small_disk(folder: Path, size: str = "2m", read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` for the block (root only): a disk to fill, or a
    read-only one. Unmounted after, whatever is left open on it."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True, timeout=20)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], timeout=20)


def fill(folder: Path) -> Path:
    """Fill the disk holding ``folder`` with one file, until it takes no more; that file."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as out:
        for _ in range(1 << 20):  # at most 4 GiB: the disks filled here are small
            try:
                out.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return filler
    raise AssertionError(f"{folder} never filled")


def root_problem() -> str:
    """Why this process cannot mount small disks ('' if it can)."""
    return "" if os.geteuid() == 0 else "mounting a small disk needs root (CI runs as root)"


@contextmanager
def freeze(processes: list[Process]) -> Iterator[None]:
    for process in processes:
        process.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for process in processes:
            process.signal(signal.SIGCONT)


# -- a client that stops reading ----------------------------------------------------------

def remaining_length(count: int) -> bytes:
    encoded = bytearray()
    while True:
        count, digit = divmod(count, 128)
        encoded.append(digit | (0x80 if count else 0))
        if not count:
            return bytes(encoded)


def mqtt_string(text: str) -> bytes:
    return len(text.encode()).to_bytes(2, "big") + text.encode()


class StalledSubscriber:
    """An MQTT 3.1.1 subscriber on a plain socket with a tiny receive buffer, that reads only when told:
    a client that stops reading (frozen, or on a dead link) without its socket closing."""

    def __init__(self, port: int, client_id: str, topic_filter: str, login: tuple[str, str] | None = None) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(10)
        flags = 0x02 | (0xC0 if login else 0)  # clean session; user name and password
        body = mqtt_string("MQTT") + bytes([4, flags]) + (600).to_bytes(2, "big") + mqtt_string(client_id)
        if login:
            body += mqtt_string(login[0]) + mqtt_string(login[1])
        self.sock.sendall(b"\x10" + remaining_length(len(body)) + body)
        assert self.sock.recv(4) == b"\x20\x02\x00\x00"
        body = (1).to_bytes(2, "big") + mqtt_string(topic_filter) + b"\x01"
        self.sock.sendall(b"\x82" + remaining_length(len(body)) + body)
        assert self.sock.recv(5) == b"\x90\x03\x00\x01\x01"
        self.buffer = b""

    def read_all(self, quiet: float = 3.0, within: float = 90.0) -> list[tuple[int, bytes]]:
        """Read on until nothing comes for ``quiet`` seconds: (QoS, payload) of each message, QoS 1 acknowledged."""
        received = []
        self.sock.settimeout(quiet)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            self.buffer += chunk
            while (packet := self._packet()) is not None:
                header, body = packet
                if header >> 4 != 3:  # PUBLISH
                    continue
                qos = (header >> 1) & 3
                topic_end = 2 + int.from_bytes(body[:2], "big")
                payload = body[topic_end + (2 if qos else 0):]
                if qos:
                    self.sock.sendall(b"\x40\x02" + body[topic_end:topic_end + 2])
                received.append((qos, payload))
        return received

    def _packet(self) -> tuple[int, bytes] | None:
        length, multiplier, index = 0, 1, 1
        while True:
            if index >= len(self.buffer):
                return None
            digit = self.buffer[index]
            length += (digit & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not digit & 0x80:
                break
        if len(self.buffer) < index + length:
            return None
        header, body = self.buffer[0], self.buffer[index:index + length]
        self.buffer = self.buffer[index + length:]
        return header, body

    def close(self) -> None:
        self.sock.close()


# -- network namespaces -----------------------------------------------------------------

def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"


class Namespaces:
    """Two network namespaces joined by a veth pair, with addresses that exist only inside them:
    the broker's side and an agent's side. ``cut()`` adds blackhole routes both ways (no FIN, no
    RST: packets just vanish), ``mend()`` removes them. Everything is deleted on close."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{uuid.uuid4().hex[:4]}"
        self.broker_ns, self.agent_ns = f"lamb{tag}", f"lama{tag}"
        octet = 16 + int(uuid.uuid4().hex[:2], 16) % 200
        self.broker_ip, self.agent_ip = f"10.{octet}.77.1", f"10.{octet}.77.2"
        self.created: list[str] = []
        try:
            for ns in (self.broker_ns, self.agent_ns):
                ip("netns", "add", ns)
                self.created.append(ns)
                ip("-n", ns, "link", "set", "lo", "up")
            ip("link", "add", f"vb{tag}", "netns", self.broker_ns, "type", "veth", "peer", "name", f"va{tag}",
               "netns", self.agent_ns)
            for ns, dev, address in ((self.broker_ns, f"vb{tag}", self.broker_ip),
                                     (self.agent_ns, f"va{tag}", self.agent_ip)):
                ip("-n", ns, "addr", "add", f"{address}/30", "dev", dev)
                ip("-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise

    def exec(self, ns: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", ns)

    def cut(self) -> None:
        ip("-n", self.broker_ns, "route", "add", "blackhole", f"{self.agent_ip}/32")
        ip("-n", self.agent_ns, "route", "add", "blackhole", f"{self.broker_ip}/32")

    def mend(self) -> None:
        ip("-n", self.broker_ns, "route", "del", "blackhole", f"{self.agent_ip}/32")
        ip("-n", self.agent_ns, "route", "del", "blackhole", f"{self.broker_ip}/32")

    @contextmanager
    def entered(self, ns: str) -> Iterator[None]:
        """Run the block's new sockets and threads in ``ns`` (threads started inside keep it)."""
        libc = ctypes.CDLL(None, use_errno=True)
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(target, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), f"setns {ns}")
            yield
        finally:
            libc.setns(home, 0x40000000)
            os.close(home)
            os.close(target)

    def close(self) -> None:
        for ns in self.created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.created = []


def netns_problem() -> str:
    """Why this machine cannot make network namespaces ('' if it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "the ip command (iproute2) is missing"
    return ""
