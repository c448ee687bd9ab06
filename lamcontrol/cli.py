"""lam: start the whole system, send prompts, watch the bus, list agents, try the parser."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from . import __version__
from . import config as lamconfig
from . import config_docs, http_client, join, ops
from .bus import BrokerSettings, Bus, BusError
from .console import (EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, broker_options, collect_retained, config_option,
                      connect, print_table, settings_from)
from .protocol import Presence, Prompt, ProtocolError, Reply, describe_event, parse, read

COLOURS = {"prompt": "36", "task": "34", "result": "35", "reply": "32", "agent": "33", "error": "31",
           "coordinator": "33", "other": "37"}


def send_prompt(args: argparse.Namespace, text: str) -> Reply | None:
    """Publish one prompt and wait for its reply (None on timeout)."""
    metadata = {"timeout": args.timeout, **({"agent": args.agent} if args.agent else {})}
    prompt = Prompt(prompt=text, source=args.source, metadata=metadata)
    replies: queue.Queue[Reply] = queue.Queue()
    bus = Bus(settings_from(args), component="lam-cli")
    topics = bus.topics
    bus.on(topics.reply(prompt.id), lambda topic, payload: replies.put(parse(Reply, payload)))
    bus.start(timeout=args.connect_timeout)
    try:
        bus.publish(prompt)
        return replies.get(timeout=args.timeout + 2)
    except queue.Empty:
        return None
    finally:
        bus.stop()


# -- lam send ---------------------------------------------------------------------------

def cmd_send(args: argparse.Namespace) -> int:
    if args.http:
        return http_client.send_command(args)
    reply = send_prompt(args, " ".join(args.prompt))
    if reply is None:
        print(f"no reply within {args.timeout:g} seconds", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(reply.to_json().decode())
    else:
        print(reply.response)
    return EXIT_OK if reply.status == "succeeded" else EXIT_FAILED


# -- lam agents -------------------------------------------------------------------------

def ago(ts: float) -> str:
    seconds = max(0, time.time() - ts)
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    return f"{seconds / 60:.0f}m ago" if seconds < 5400 else f"{seconds / 3600:.0f}h ago"


def agent_rows(presences: list[Presence]) -> list[list[str]]:
    rows = [["AGENT", "STATE", "HOST", "LOAD", "CAPABILITIES", "LAST SEEN"]]
    for p in sorted(presences, key=lambda p: p.agent):
        offered = "; ".join(f"{c}: {', '.join(a)}" for c, a in sorted(p.capabilities.items())) or "-"
        load = f"{p.load}/{p.max_concurrent}" if p.state == "online" else "-"
        rows.append([p.agent, p.state, p.host or "-", load, offered, ago(p.ts)])
    return rows


def cmd_agents(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    found = collect_retained(args, settings.topics.all_agent_statuses)
    presences = []
    for topic, payload in found.items():
        try:
            presences.append(parse(Presence, payload))
        except ProtocolError as exc:
            print(f"skipping {topic}: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps([p.to_dict() for p in presences]))
    elif presences:
        print_table(agent_rows(presences))
    else:
        print("no agents have announced themselves on this broker")
    return EXIT_OK


# -- lam monitor ------------------------------------------------------------------------

def cmd_monitor(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    colour = sys.stdout.isatty() and not args.no_colour and os.environ.get("NO_COLOR") is None
    lines: queue.Queue = queue.Queue()

    def show(topic: str, payload: bytes) -> None:
        kind, text = describe_event(settings.prefix, topic, payload)
        stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        label = f"{kind:<11}"
        if colour:
            label = f"\033[{COLOURS.get(kind, '37')}m{label}\033[0m"
        lines.put(f"{stamp} {label} {text}")

    bus = connect(args, {settings.topics.all: show}, "lam-monitor")
    stop = time.monotonic() + args.duration if args.duration else None
    try:
        while stop is None or time.monotonic() < stop:
            try:
                print(lines.get(timeout=0.2), flush=True)
            except queue.Empty:
                pass
    except KeyboardInterrupt:
        pass
    finally:
        bus.stop()
    return EXIT_OK


# -- lam parse --------------------------------------------------------------------------

def cmd_parse(args: argparse.Namespace) -> int:
    from lamcontrol.coordinator.language import Context
    from lamcontrol.coordinator.parsing import build_parser

    cfg = lamconfig.load(args.config)
    parser = build_parser(cfg)
    result = parser.parse(" ".join(args.prompt), Context(source="cli", vocabulary=names_given(args.names)))
    data = result.to_dict()
    if args.explain:
        data["explain"] = parser.explain(result)
    print(json.dumps(data, ensure_ascii=False))
    return EXIT_OK


def names_given(given: list[str]) -> dict[str, list[str]]:
    """``--names home=kitchen,desk lamp`` as ``{"home": ["kitchen", "desk lamp"]}``."""
    names: dict[str, list[str]] = {}
    for item in given:
        capability, _, listed = item.partition("=")
        names.setdefault(capability.strip(), []).extend(n.strip() for n in listed.split(",") if n.strip())
    return names


# -- lam up -----------------------------------------------------------------------------

def bridge_installed() -> bool:
    try:
        return importlib.util.find_spec("lamcontrol.r1_bridge.main") is not None
    except ImportError:
        return False


def component(module: str, *extra: str) -> list[str]:
    """The command line that runs one component with this interpreter and installation (-P: never a
    lamcontrol folder that happens to be in the current directory)."""
    return [sys.executable, "-P", "-m", module, *extra]


def wants_embedded_broker(args: argparse.Namespace, cfg: dict) -> bool:
    """True unless a broker was named: --broker, $LAM_BROKER, or a config ``[broker] url`` of its own."""
    if args.broker or os.environ.get("LAM_BROKER"):
        return False
    listen = cfg["embedded_broker"]["listen"]
    own = (lamconfig.DEFAULTS["broker"]["url"], f"mqtt://{listen}", f"mqtt://{local_address(listen)}" if listen else "")
    return cfg["broker"]["url"] in own


STOP_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]


@dataclass
class Step:
    """One component lam up starts: its name, command line and extra environment."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def local_address(listen: str) -> str:
    """host:port that reaches a listener on this machine (its wildcard address is not one)."""
    host, port = lamconfig.host_port(listen, "--listen")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cmd_up(args: argparse.Namespace) -> int:
    cfg = lamconfig.load(args.config, args.broker)
    embedded = wants_embedded_broker(args, cfg)
    common = [*(["--config", args.config] if args.config else [])]
    agent_id = args.agent_id or cfg["agent"]["id"] or lamconfig.default_agent_id()
    url, logins, plan, exposed, listen = cfg["broker"]["url"], {}, [], "", ""
    if embedded:
        from lamcontrol.broker.main import Listeners

        listen = args.listen or cfg["embedded_broker"]["listen"]
        if not listen:
            raise lamconfig.ConfigError("lam up needs a plain listener for its own components: give --listen")
        url = f"mqtt://{local_address(listen)}"
        users, login_args = join.UserFolder.of(cfg), {}
        if users.exists():  # made by lam join: every component logs in as itself
            users.ensure_local(agent_id, args.capability or lamconfig.installed_capabilities())
            login_args = {"--password-file": str(users.path / "passwd"), "--acl-file": str(users.path / "acl")}
            logins = {name: users.password(user) for name, user in
                      (("coordinator", "coordinator"), ("bridge", "bridge"), ("agent", agent_id))}
            exposed = f"{listen}, users in {users.path}"
        problem = Listeners.from_config(cfg["embedded_broker"], listen=listen,
                                        password_file=login_args.get("--password-file"),
                                        acl_file=login_args.get("--acl-file")).problem()
        if problem:
            print(f"lam up: {problem}", file=sys.stderr)
            return EXIT_UNREACHABLE
        broker_args = [*common, "--listen", listen, *(arg for pair in login_args.items() for arg in pair)]
        plan.append(Step("broker", component("lamcontrol.broker.main", *broker_args)))

    def linked(name: str, module: str, *extra: str) -> Step:
        """A component that connects to the broker, as its own user when there are users."""
        if name not in logins:
            return Step(name, component(module, *common, "--broker", url, *extra))
        login = url.replace("://", f"://{agent_id if name == 'agent' else name}@", 1)
        return Step(name, component(module, *common, "--broker", login, *extra), {"LAM_BROKER_PASSWORD": logins[name]})

    offered = [arg for c in args.capability or () for arg in ("--capability", c)] or ["--all"]
    plan += [linked("coordinator", "lamcontrol.coordinator.main"),
             linked("agent", "lamcontrol.agents.main", "--id", agent_id, *offered)]
    if bridge_installed() and not args.no_bridge:
        plan.append(linked("bridge", "lamcontrol.r1_bridge.main"))
    # Ctrl-C, SIGTERM and a closed terminal all stop everything, in order; the children run in a
    # session of their own, so the terminal's Ctrl-C reaches only us and never the broker first.
    stopping, woken = catch_stop_signals()
    processes: dict[str, subprocess.Popen] = {}
    try:
        if not start_all(plan, processes, listen, stopping):
            return EXIT_UNREACHABLE
        if not stopping:
            settings = BrokerSettings.from_config({**cfg, "broker": {**cfg["broker"], "url": url}})
            late = wait_until_online(settings, agent_id, processes, stopping)
            print(banner(cfg, url, processes, late, exposed), flush=True)
        wait_for_stop_or_exit(processes, stopping, woken)
    finally:
        stop_all(processes)
    dead = [n for n, p in processes.items() if p.returncode not in (0, -signal.SIGTERM)]
    if dead:
        print(f"lam up: {', '.join(dead)} exited with an error", file=sys.stderr)
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


def wait_for_stop_or_exit(processes: dict[str, subprocess.Popen], stopping: list[int],
                          woken: queue.SimpleQueue) -> None:
    """Sleep until a stop signal comes or a component exits: each exit wakes us, nothing polls."""
    for process in processes.values():
        threading.Thread(target=lambda p=process: woken.put(p.wait()), daemon=True).start()
    while not stopping and all(p.poll() is None for p in processes.values()):
        woken.get()


def start_all(plan: list[Step], processes: dict[str, subprocess.Popen], listen: str, stopping: list[int]) -> bool:
    """Start each component in order; False when the embedded broker did not start (it said why)."""
    for step in plan:
        if stopping:
            return True
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
        processes[step.name] = subprocess.Popen(step.argv, env=env, start_new_session=True)
        if step.name == "broker" and not listening(processes["broker"], listen):
            return False
    return True


def listening(process: subprocess.Popen, listen: str, timeout: float = 30.0) -> bool:
    """True once the broker holds its port (found without connecting); False if it exits first or is too slow."""
    host, port = lamconfig.host_port(listen, "--listen")
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if lamconfig.bind_problem(host, port):  # it was free before the broker started
            return True
        time.sleep(0.1)
    if process.poll() is None:
        print(f"lam up: the embedded broker did not listen on {listen} within {timeout:g} seconds", file=sys.stderr)
    return False


def stop_all(processes: dict[str, subprocess.Popen]) -> None:
    """SIGTERM each component, the broker last so the others can say goodbye; SIGKILL what hangs."""
    for name in reversed(list(processes)):
        process = processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_online(settings: BrokerSettings, agent_id: str, processes: dict[str, subprocess.Popen],
                      stopping: list[int], timeout: float = 30.0) -> list[str]:
    """Wait for the coordinator's and the local agent's online presence; the names of those still missing."""
    topics = settings.topics
    expected = {topics.coordinator_status: "coordinator", topics.agent_status(agent_id): "agent"}
    online: set[str] = set()

    def seen(topic: str, payload: bytes) -> None:
        try:
            presence = read(topics, topic, payload)
        except ProtocolError:
            return
        if isinstance(presence, Presence) and presence.online:
            online.add(topic)

    bus = Bus(settings, component="lam-up", report=False)
    for topic in expected:
        bus.on(topic, seen)
    deadline = time.monotonic() + timeout
    try:
        bus.start(timeout=timeout)
        while (len(online) < len(expected) and time.monotonic() < deadline and not stopping
               and all(p.poll() is None for p in processes.values())):
            time.sleep(0.1)
        bus.stop()
    except BusError:
        pass  # the components keep trying, and say so in their log lines
    return [name for topic, name in expected.items() if topic not in online]


def banner(cfg: dict, url: str, processes: dict[str, subprocess.Popen], late: list[str], exposed: str) -> str:
    lines = [f"\nLAMControl is up on {url}: {', '.join(processes)}."]
    if exposed:
        lines.append(f"  open to the network on {exposed}; add a machine: lam join NAME")
    if late:
        lines.append(f"  not online yet: {', '.join(late)} (their log lines above say why)")
    if "bridge" in processes:
        bridge = cfg["bridge"]
        address = bridge.get("public_url") or f"{'https' if bridge.get('cert_file') else 'http'}://{bridge['listen']}"
        lines.append(f"  bridge: {address}/  (on its first start it prints an API token and the admin password)")
    lines += ["  try:    lam send \"echo hello\"",
              f"  watch:  mosquitto_sub -v -t '{cfg['broker']['prefix']}/#'   (or: lam monitor)",
              "  agents: lam agents",
              "Ctrl-C stops everything.\n"]
    return "\n".join(lines)


# -- entry point ------------------------------------------------------------------------

def cmd_config(args: argparse.Namespace) -> int:
    """lam config example | check | docs."""
    if args.config_command == "example":
        print(config_docs.example(), end="")
        return EXIT_OK
    if args.config_command == "check":
        from lamcontrol.agents import capability

        cfg = lamconfig.load(args.config)
        for name, settings in cfg["capabilities"].items():
            try:
                capability.load(name).validate_settings(settings)
            except (capability.Unavailable, ValueError) as exc:
                raise lamconfig.ConfigError(f"{cfg.get('path', 'the config')}: {exc}") from None
        print(f"{cfg.get('path', 'no config file')}: every key is known and well typed")
        return EXIT_OK
    root = config_docs.source_root()
    if root is None:
        raise lamconfig.ConfigError("lam config docs runs in a source checkout (an editable install)")
    for path, text in config_docs.generated(root).items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lam", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lam (lamcontrol) {__version__}")
    configured, bus = config_option(), broker_options()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", parents=[configured, bus], help="start broker, coordinator, bridge and a local agent")
    up.add_argument("--listen", help="host:port for the embedded broker (default: [embedded_broker] listen, "
                                     "127.0.0.1:1883); beyond loopback it needs users: lam join NAME makes them")
    up.add_argument("--capability", "-c", action="append", help="capabilities for the local agent (default: all)")
    up.add_argument("--agent-id", help="id of the local agent (default: the host name)")
    up.add_argument("--no-bridge", action="store_true", help="do not start the HTTP bridge")
    up.set_defaults(func=cmd_up)

    send = sub.add_parser("send", parents=[configured, bus], help="send a prompt and print the reply")
    send.add_argument("prompt", nargs="+", help="what to do, in words or as a command")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the reply")
    send.add_argument("--source", default="cli", help="who is asking (confirmations are per source)")
    send.add_argument("--agent", help="only this agent may run the prompt's tasks")
    send.add_argument("--json", action="store_true", help="print the whole reply as JSON")
    send.set_defaults(func=cmd_send)
    http_client.add_arguments(send, sub)

    agents = sub.add_parser("agents", parents=[configured, bus], help="list agents from their retained presence")
    agents.add_argument("--json", action="store_true", help="print them as JSON")
    agents.set_defaults(func=cmd_agents)

    monitor = sub.add_parser("monitor", parents=[configured, bus], help="a live, readable line per event")
    monitor.add_argument("--no-colour", action="store_true", help="plain text even on a terminal")
    monitor.add_argument("--duration", type=float, help="stop after this many seconds")
    monitor.set_defaults(func=cmd_monitor)

    parse_cmd = sub.add_parser("parse", parents=[configured], help="show the commands a prompt becomes (offline)")
    parse_cmd.add_argument("prompt", nargs="+", help="what a person would say")
    parse_cmd.add_argument("--explain", action="store_true", help="say which parser answered and why")
    parse_cmd.add_argument("--names", action="append", default=[], metavar="CAPABILITY=NAME,NAME",
                           help="names an agent would advertise (home devices and areas, contacts, apps); repeatable")
    parse_cmd.set_defaults(func=cmd_parse)

    config = sub.add_parser("config", help="the configuration file: an example with every key, or a check")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_sub.add_parser("example", help="print every key with its default and meaning").set_defaults(
        func=cmd_config)
    config_sub.add_parser("check", parents=[configured], help="load the config and say what is wrong").set_defaults(
        func=cmd_config)
    config_sub.add_parser("docs", help="rewrite the example file and the README's key table (source checkout)"
                          ).set_defaults(func=cmd_config)
    join.add_command(sub)
    ops.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (lamconfig.ConfigError, BusError) as exc:
        print(f"lam: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
