"""lam up: the broker, the coordinator, the bridge and a local agent in one command, for a first run.

Where the broker is, one setting decides for every part it starts and for every command reading
the same config: ``--broker`` or ``$LAM_BROKER`` name a broker to use (lam up starts none);
``[broker] url`` naming this machine is where lam up starts its own (or uses the one already
listening there), naming another machine a broker to use; otherwise ``--listen``, then
``[embedded_broker] listen``, then 127.0.0.1:1883 is where its own listens.

Before starting anything it checks what would stop a part (a port taken, a broker it cannot
reach, a coordinator already serving that broker) and says which part, why and what to do. Each
part runs as a child that ends with it (on Linux even a ``kill -9`` of lam up: the kernel sends
each child SIGTERM when lam up dies). The banner comes last, once every part is online; a part
that stops or stays offline while starting is named with its last words, and the rest stopped.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import importlib.util
import json
import os
import queue
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from . import config as lamconfig
from . import join
from .bus import BrokerSettings, Bus, BusError
from .console import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
from .protocol import Presence, ProtocolError, read

START_TIMEOUT = 90.0  # seconds every part has to come online
STOP_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
LAST_WORDS = 5  # lines of each part's error output kept, to say why it stopped


class Refused(Exception):
    """lam up cannot start: the message names the part, the cause and the fix."""


# -- where the broker is --------------------------------------------------------------------

@dataclass
class Broker:
    """The broker every part uses: its URL, where that came from, and where lam up's own listens ('' when
    lam up starts none)."""

    url: str
    origin: str
    listen: str = ""
    note: str = ""  # said in the banner


def choose_broker(args: argparse.Namespace, cfg: dict) -> Broker:
    origin, url = cfg["broker_origin"], cfg["broker"]["url"]
    if origin in ("--broker", "$LAM_BROKER"):
        if args.listen:
            raise Refused(f"--listen is where lam up's own broker listens, but {origin} names a broker to use: "
                          "give one of them")
        return Broker(url, f"from {origin}")
    if origin.startswith("[broker] url"):
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not lamconfig.is_this_machine(parts.hostname or ""):
            return Broker(url, f"from {origin}")
        port = parts.port or 1883
        default_listen = lamconfig.DEFAULTS["embedded_broker"]["listen"]
        listen = args.listen or (cfg["embedded_broker"]["listen"] if cfg["embedded_broker"]["listen"] != default_listen
                                 else lamconfig.joined(parts.hostname, port))
        if not args.listen and listen and lamconfig.host_port(listen)[1] != port:
            raise Refused(f"[broker] url {url} and [embedded_broker] listen {listen} name different ports, so lam "
                          f"up's broker would not be where the other commands look: keep one of them "
                          f"({cfg.get('path')})")
        if not args.listen and lamconfig.bind_problem(*lamconfig.host_port(lamconfig.local_address(listen))):
            return Broker(url, f"from {origin}", note=f"a broker already listens on {lamconfig.local_address(listen)}:"
                                                      " lam up uses it and starts none of its own")
        return Broker(f"mqtt://{lamconfig.local_address(listen)}" if args.listen else url,
                      "from --listen" if args.listen else f"from {origin}", listen)
    listen = args.listen or cfg["embedded_broker"]["listen"]
    if not listen:
        raise Refused("lam up needs a plain listener for its own components: give --listen, or set "
                      "[embedded_broker] listen")
    where = "from --listen" if args.listen else f"from {origin}" if origin != "the default" else \
        "the default: nothing names another"
    return Broker(f"mqtt://{lamconfig.local_address(listen)}", where, listen)


# -- the parts ------------------------------------------------------------------------------

def bridge_installed() -> bool:
    try:
        return importlib.util.find_spec("lamcontrol.r1_bridge.main") is not None
    except ImportError:
        return False


def component(module: str, *extra: str) -> list[str]:
    """The command line that runs one component with this interpreter and installation (-P: never a
    lamcontrol folder that happens to be in the current directory)."""
    return [sys.executable, "-P", "-m", module, *extra]


@dataclass
class Part:
    """One component lam up starts: its name, command line, extra environment, and once started its
    process and the last lines it wrote to its error output."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    last_words: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LAST_WORDS))

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                                        stderr=subprocess.PIPE, start_new_session=True, preexec_fn=die_with_parent())
        threading.Thread(target=self._relay, name=f"{self.name}-stderr", daemon=True).start()

    def _relay(self) -> None:
        """Pass the part's error output (its log) on as it comes, keeping the last lines."""
        assert self.process is not None and self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace")
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                self.last_words.append(line.strip())

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def why(self) -> str:
        """Its last line that says what went wrong, else its last line."""
        words = list(self.last_words)
        for line in reversed(words):
            if " ERROR " in line or line.startswith(("lam-", "Traceback")) or "Error" in line:
                return line
        return words[-1] if words else "it wrote nothing"


def die_with_parent():
    """For Popen's preexec_fn: on Linux, the child gets SIGTERM when lam up ends, however it ends
    (prctl PR_SET_PDEATHSIG), so a ``kill -9`` of lam up leaves no part holding its port; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent = os.getpid()

    def in_child() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # lam up died before that took hold
            os._exit(1)

    return in_child


def stop_all(parts: list[Part]) -> None:
    """SIGTERM each running part, the broker last so the others can say goodbye; SIGKILL what hangs."""
    for part in reversed(parts):
        if part.running:
            part.process.send_signal(signal.SIGTERM)
            try:
                part.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                part.process.kill()
                part.process.wait()


# -- what would stop a part -----------------------------------------------------------------

def check_ports(cfg: dict, bridge: bool) -> list[str]:
    """Refused for a bridge whose port is taken; notes for a voice gateway whose port is taken."""
    notes = []
    if bridge:
        listen = cfg["bridge"]["listen"]
        busy = lamconfig.bind_problem(*lamconfig.host_port(listen, "[bridge] listen"))
        if busy:
            host, port = lamconfig.host_port(listen)
            raise Refused(f"the bridge cannot listen on {listen}: {busy}. Give it another port: lam up --bridge-listen "
                          f"{lamconfig.joined(host, port + 1)} (or [bridge] listen), or start none: --no-bridge")
        voice = cfg["openclaw"]
        if voice.get("enabled", True) and voice.get("port", 18789):
            port = voice.get("port", 18789)
            busy = lamconfig.bind_problem(voice.get("host", "0.0.0.0"), port)
            if busy:
                notes.append(f"voice:  the R1 voice gateway cannot listen on port {port} ({busy}), so R1s cannot "
                             f"pair by voice; give it another: lam up --voice-port {port + 1} (or [openclaw] port)")
    return notes


def check_bus(settings: BrokerSettings, timeout: float) -> None:
    """Refused when the broker cannot be reached, or a coordinator already serves it."""
    from lamcontrol.coordinator import single

    probe = Bus(settings, component="lam-up", report=False)
    try:
        probe.start(timeout=timeout)
    except BusError as exc:
        fix = "" if probe.refused else (". Start that broker, or let lam up start its own: drop --broker, "
                                        "$LAM_BROKER and [broker] url")
        raise Refused(f"{exc}{fix}") from None
    probe.stop()
    rival = single.live_coordinator(settings, timeout)
    if rival is not None:
        raise Refused(f"{single.refusal(rival, settings)}. lam up started nothing")


# -- waiting for every part -----------------------------------------------------------------

class Watch:
    """Which parts are online: the coordinator and the agent by their presence on the bus, the bridge by
    its health endpoint (200 once it has the broker)."""

    def __init__(self, settings: BrokerSettings, agent_id: str, bridge_url: str = "") -> None:
        topics = settings.topics
        self.expected = {topics.coordinator_status: "coordinator", topics.agent_status(agent_id): "agent"}
        self.online: set[str] = set()
        self.bridge_url = bridge_url
        self.bus = Bus(settings, component="lam-up", report=False)
        for topic in self.expected:
            self.bus.on(topic, self._seen)
        self.bus.start()

    def _seen(self, topic: str, payload: bytes) -> None:
        try:
            presence = read(self.bus.topics, topic, payload)
        except ProtocolError:
            return
        if isinstance(presence, Presence) and presence.online:
            self.online.add(self.expected[topic])

    def missing(self) -> list[str]:
        if self.bridge_url and "bridge" not in self.online and bridge_healthy(self.bridge_url):
            self.online.add("bridge")
        wanted = [*self.expected.values(), *(["bridge"] if self.bridge_url else [])]
        return [name for name in wanted if name not in self.online]

    def stop(self) -> None:
        self.bus.stop()


def bridge_healthy(base: str) -> bool:
    """The bridge answers its health check with 200 (it has the broker)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # our own child, on this machine
    try:
        with urllib.request.urlopen(f"{base}/api/health", timeout=2, context=context) as answer:
            return answer.status == 200 and json.load(answer).get("broker") == "connected"
    except (OSError, ValueError, urllib.error.URLError):
        return False


def wait_online(parts: list[Part], watch: Watch, stopping: list[int], timeout: float = START_TIMEOUT) -> None:
    """Until every part is online; Refused naming a part that stopped or stayed offline."""
    deadline = time.monotonic() + timeout
    while not stopping:
        stopped = next((p for p in parts if not p.running), None)
        if stopped is not None:
            raise Refused(f"the {stopped.name} stopped while starting (exit status {stopped.process.returncode}): "
                          f"{stopped.why()}")
        missing = watch.missing()
        if not missing:
            return
        if time.monotonic() > deadline:
            late = [p for p in parts if p.name in missing]
            raise Refused("; ".join(f"the {p.name} is not online after {timeout:g} s; its last words: {p.why()}"
                                    for p in late))
        time.sleep(0.2)


# -- lam up ---------------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    # Ctrl-C, SIGTERM and a closed terminal stop everything, in order, at any moment; the parts run in a
    # session of their own, so the terminal's Ctrl-C reaches only us and never the broker first.
    stopping, woken = catch_stop_signals()
    parts: list[Part] = []
    try:
        banner = start(args, parts, stopping)
        if banner and not stopping:
            print(banner, flush=True)
        wait_for_stop_or_exit(parts, stopping, woken)
    except (Refused, lamconfig.ConfigError) as exc:
        print(f"lam up: {exc}", file=sys.stderr, flush=True)
        return EXIT_UNREACHABLE
    finally:
        stop_all(parts)
    failed = [p.name for p in parts if p.process.returncode not in (0, -signal.SIGTERM)]
    if failed and not stopping:
        print(f"lam up: the {', '.join(failed)} stopped: {'; '.join(p.why() for p in parts if p.name in failed)}",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def catch_stop_signals() -> tuple[list[int], queue.SimpleQueue]:
    """The stop signals received, and a queue each one wakes (its put() is safe in a signal handler)."""
    stopping: list[int] = []
    woken: queue.SimpleQueue = queue.SimpleQueue()

    def stop(number: int, frame: object) -> None:
        stopping.append(number)
        woken.put(number)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    return stopping, woken


def wait_for_stop_or_exit(parts: list[Part], stopping: list[int], woken: queue.SimpleQueue) -> None:
    """Sleep until a stop signal comes or a part exits: each exit wakes us, nothing polls."""
    for part in parts:
        if part.process is not None:
            threading.Thread(target=lambda p=part.process: woken.put(p.wait()), daemon=True).start()
    while not stopping and all(p.running for p in parts):
        woken.get()


def start(args: argparse.Namespace, parts: list[Part], stopping: list[int]) -> str:
    """Check, start every part, wait until each is online; the banner ('' when stopped meanwhile)."""
    cfg = lamconfig.load(args.config, args.broker)
    if args.bridge_listen:
        cfg["bridge"]["listen"] = args.bridge_listen
        lamconfig.host_port(args.bridge_listen, "--bridge-listen")
    if args.voice_port is not None:
        cfg["openclaw"]["port"] = args.voice_port
    broker = choose_broker(args, cfg)
    agent_id = args.agent_id or cfg["agent"]["id"] or lamconfig.default_agent_id()
    common = ["--config", args.config] if args.config else []
    bridge = bridge_installed() and not args.no_bridge
    logins, exposed, watcher = {}, "", BrokerSettings.from_config({**cfg, "broker": {**cfg["broker"],
                                                                                     "url": broker.url}})
    notes = check_ports(cfg, bridge)
    plan: list[Part] = []
    if broker.listen:
        from lamcontrol.broker.main import Listeners

        users, login_args = join.UserFolder.of(cfg), {}
        if users.exists():  # made by lam join: every component logs in as itself, lam up as the monitor
            users.ensure_local(agent_id, args.capability or lamconfig.installed_capabilities())
            login_args = {"--password-file": str(users.path / "passwd"), "--acl-file": str(users.path / "acl")}
            logins = {name: (user, users.password(user)) for name, user in
                      (("coordinator", "coordinator"), ("bridge", "bridge"), ("agent", agent_id))}
            watcher.username, watcher.password = "monitor", users.password("monitor")
            exposed = f"{broker.listen}, users in {users.path}"
        problem = Listeners.from_config(cfg["embedded_broker"], listen=broker.listen,
                                        password_file=login_args.get("--password-file"),
                                        acl_file=login_args.get("--acl-file")).problem(lam_up=True)
        if problem:
            raise Refused(problem)
        broker_args = [*common, "--listen", broker.listen, *(arg for pair in login_args.items() for arg in pair)]
        plan.append(Part("broker", component("lamcontrol.broker.main", *broker_args)))
    else:
        check_bus(watcher, args.connect_timeout)

    def linked(name: str, module: str, *extra: str) -> Part:
        """A component that connects to the broker, as its own user when there are users."""
        if name not in logins:
            return Part(name, component(module, *common, "--broker", broker.url, *extra))
        user, password = logins[name]
        login = broker.url.replace("://", f"://{user}@", 1)
        return Part(name, component(module, *common, "--broker", login, *extra), {"LAM_BROKER_PASSWORD": password})

    offered = [arg for c in args.capability or () for arg in ("--capability", c)] or ["--all"]
    plan += [linked("coordinator", "lamcontrol.coordinator.main"),
             linked("agent", "lamcontrol.agents.main", "--id", agent_id, *offered)]
    if bridge:
        voice = ["--voice-port", str(cfg["openclaw"]["port"])] if args.voice_port is not None else []
        plan.append(linked("bridge", "lamcontrol.r1_bridge.main", "--listen", cfg["bridge"]["listen"], *voice))
    for part in plan:
        if stopping:
            return ""
        parts.append(part)
        part.start()
        if part.name == "broker":
            wait_listening(part, broker.listen, stopping)
    watch = Watch(watcher, agent_id, bridge_address(cfg) if bridge else "")
    try:
        wait_online(parts, watch, stopping)
    finally:
        watch.stop()
    return banner(args, cfg, broker, parts, exposed, agent_id, notes)


def wait_listening(part: Part, listen: str, stopping: list[int], timeout: float = 30.0) -> None:
    """Until the broker holds its port (found without connecting); Refused if it stops or is too slow."""
    host, port = lamconfig.host_port(listen, "--listen")
    deadline = time.monotonic() + timeout
    while part.running and time.monotonic() < deadline and not stopping:
        if lamconfig.bind_problem(host, port):  # it was free before the broker started
            return
        time.sleep(0.1)
    if stopping:
        return
    if part.running:
        raise Refused(f"the embedded broker did not listen on {listen} within {timeout:g} seconds")
    raise Refused(f"the broker stopped while starting: {part.why()}")


def bridge_address(cfg: dict) -> str:
    """The bridge's URL on this machine."""
    scheme = "https" if cfg["bridge"]["cert_file"] else "http"
    return f"{scheme}://{lamconfig.local_address(cfg['bridge']['listen'])}"


def reach(args: argparse.Namespace, url: str) -> str:
    """The options another command needs to reach this broker: --config when lam up had one, --broker
    when that config (with this environment) would lead elsewhere."""
    options = f" --config {args.config}" if args.config else ""
    try:
        same = lamconfig.load(args.config)["broker"]["url"] == url
    except lamconfig.ConfigError:
        same = False
    return options + ("" if same else f" --broker {url}")


def banner(args: argparse.Namespace, cfg: dict, broker: Broker, parts: list[Part], exposed: str, agent_id: str,
           notes: list[str]) -> str:
    names = ", ".join(f"agent {agent_id}" if p.name == "agent" else p.name for p in parts)
    own = "lam up's own" if broker.listen else "not started by lam up"
    lines = [f"\nLAMControl is up on {broker.url}: {names}.",
             f"  broker: {own}, {broker.origin}" + (f"; {broker.note}" if broker.note else "")]
    if exposed:
        lines.append(f"  open to the network on {exposed}; add a machine: lam join NAME")
    if any(p.name == "bridge" for p in parts):
        bridge = cfg["bridge"]
        address = bridge.get("public_url") or bridge_address(cfg)
        lines.append(f"  bridge: {address}/  (on its first start it prints an API token and the admin password)")
    parts_of_url = urlsplit(broker.url)
    where = "".join([f" -h {parts_of_url.hostname}" if parts_of_url.hostname not in ("127.0.0.1", "localhost") else "",
                     f" -p {parts_of_url.port}" if (parts_of_url.port or 1883) != 1883 else ""])
    options = reach(args, broker.url)
    lines += [f"  try:    lam send{options} \"echo hello\"",
              f"  watch:  mosquitto_sub{where} -v -t '{cfg['broker']['prefix']}/#'   (or: lam monitor{options})",
              f"  agents: lam agents{options}", *(f"  {note}" for note in notes),
              "Ctrl-C stops everything.\n"]
    return "\n".join(lines)


def add_command(sub: argparse._SubParsersAction, *parents: argparse.ArgumentParser) -> None:
    up = sub.add_parser("up", parents=list(parents), help="start broker, coordinator, bridge and a local agent")
    up.add_argument("--listen", help="host:port for lam up's own broker (default: [embedded_broker] listen, else the "
                                     "address [broker] url names on this machine, else 127.0.0.1:1883); beyond "
                                     "loopback it needs users: lam join NAME makes them")
    up.add_argument("--bridge-listen", metavar="HOST:PORT", help="where the HTTP bridge listens (default: [bridge] "
                                                                 "listen, 127.0.0.1:8080)")
    up.add_argument("--voice-port", type=int, metavar="PORT", help="port of the R1 voice gateway (default: [openclaw] "
                                                                   "port, 18789)")
    up.add_argument("--capability", "-c", action="append", help="capabilities for the local agent (default: all)")
    up.add_argument("--agent-id", help="id of the local agent (default: the host name)")
    up.add_argument("--no-bridge", action="store_true", help="do not start the HTTP bridge")
    up.set_defaults(func=cmd_up)
