"""``lam``: start the whole system, send prompts, watch the bus, list agents, try the parser."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import time
from datetime import datetime
from typing import Callable

from . import config as lamconfig
from . import http_client
from . import ops  # systemd install, mosquitto-config, agents forget
from .bus import BrokerSettings, Bus, BusError
from .protocol import Presence, Prompt, ProtocolError, Reply, describe_event, parse

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2
COLOURS = {"prompt": "36", "task": "34", "result": "35", "reply": "32", "agent": "33", "error": "31",
           "coordinator": "33", "other": "37"}


# -- helpers ----------------------------------------------------------------------------

def settings_from(args: argparse.Namespace) -> BrokerSettings:
    cfg = lamconfig.load(args.config, args.broker)
    if getattr(args, "ca_file", None):
        cfg["broker"]["ca_file"] = args.ca_file
    return BrokerSettings.from_config(cfg)


def connect(args: argparse.Namespace, handlers: dict[str, Callable[[str, bytes], None]], component: str) -> Bus:
    """A short-lived bus with handlers subscribed, or BusError."""
    bus = Bus(settings_from(args), component=component, report=False)
    for topic_filter, handler in handlers.items():
        bus.on(topic_filter, handler)
    bus.start(timeout=args.connect_timeout)
    return bus


def send_prompt(args: argparse.Namespace, text: str) -> Reply | None:
    """Publish one prompt and wait for its reply (None on timeout)."""
    prompt = Prompt(prompt=text, source=args.source, metadata={"timeout": args.timeout})
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

def collect_retained(args: argparse.Namespace, topic_filter: str, quiet: float = 0.5) -> dict[str, bytes]:
    """Retained messages under a filter: read until the bus has been quiet for ``quiet`` seconds."""
    seen: dict[str, bytes] = {}
    last = [time.monotonic()]

    def keep(topic: str, payload: bytes) -> None:
        seen[topic] = payload
        last[0] = time.monotonic()

    bus = connect(args, {topic_filter: keep}, "lam-cli")
    last[0] = time.monotonic()
    while time.monotonic() - last[0] < quiet:
        time.sleep(0.05)
    bus.stop()
    return seen


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


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


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
    from lamcontrol.coordinator.parsing import Context, build_parser

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

def installed_capabilities() -> list[str]:
    return sorted(ep.name for ep in importlib.metadata.entry_points(group="lamcontrol.capabilities"))


def bridge_installed() -> bool:
    try:
        return importlib.util.find_spec("lamcontrol.r1_bridge.main") is not None
    except ImportError:
        return False


def component(module: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", module, *extra]


def wants_embedded_broker(args: argparse.Namespace, cfg: dict) -> bool:
    """True unless a broker was named: --broker, $LAM_BROKER, or a config ``[broker] url`` of its own."""
    if args.broker or os.environ.get("LAM_BROKER"):
        return False
    own = (lamconfig.DEFAULTS["broker"]["url"], f"mqtt://{cfg['embedded_broker']['listen']}")
    return cfg["broker"]["url"] in own


STOP_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]


def cmd_up(args: argparse.Namespace) -> int:
    cfg = lamconfig.load(args.config, args.broker)
    embedded = wants_embedded_broker(args, cfg)
    common = [*(["--config", args.config] if args.config else [])]
    url = cfg["broker"]["url"]
    plan: list[tuple[str, list[str]]] = []
    if embedded:
        listen = cfg["embedded_broker"]["listen"]
        url = f"mqtt://{listen}"
        plan.append(("broker", component("lamcontrol.broker.main", *common, "--listen", listen)))
    linked = [*common, "--broker", url]
    plan.append(("coordinator", component("lamcontrol.coordinator.main", *linked)))
    agent_id = args.agent_id or cfg["agent"]["id"] or lamconfig.default_agent_id()
    agent_args = [*linked, "--id", agent_id]
    for name in args.capability or ():
        agent_args += ["--capability", name]
    if not args.capability:
        agent_args.append("--all")
    plan.append(("agent", component("lamcontrol.agents.main", *agent_args)))
    if bridge_installed() and not args.no_bridge:
        plan.append(("bridge", component("lamcontrol.r1_bridge.main", *linked)))
    stopping: list[int] = []
    # Ctrl-C, SIGTERM and a closed terminal all stop everything, in order; the children run in a
    # session of their own, so the terminal's Ctrl-C reaches only us and never the broker first.
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda number, frame: stopping.append(number))
    processes: dict[str, subprocess.Popen] = {}
    try:
        if not start_all(plan, processes, cfg, stopping):
            return EXIT_UNREACHABLE
        if not stopping:
            settings = BrokerSettings.from_config({**cfg, "broker": {**cfg["broker"], "url": url}})
            late = wait_until_online(settings, agent_id, processes, stopping)
            print(banner(cfg, url, processes, late), flush=True)
        while not stopping and all(p.poll() is None for p in processes.values()):
            time.sleep(0.2)
    finally:
        stop_all(processes)
    dead = [n for n, p in processes.items() if p.returncode not in (0, -signal.SIGTERM)]
    if dead:
        print(f"lam up: {', '.join(dead)} exited with an error", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def start_all(plan: list[tuple[str, list[str]]], processes: dict[str, subprocess.Popen], cfg: dict,
              stopping: list[int]) -> bool:
    """Start each component in order; False when the embedded broker could not start."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, argv in plan:
        if stopping:
            return True
        processes[name] = subprocess.Popen(argv, env=env, start_new_session=True)
        if name == "broker":
            time.sleep(1.0)
            if processes[name].poll() is not None:
                print(f"lam up: the embedded broker could not start on {cfg['embedded_broker']['listen']} "
                      "(is another broker using the port? then run: lam up --broker mqtt://host:port)",
                      file=sys.stderr)
                return False
    return True


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
            if parse(Presence, payload).state == "online":
                online.add(topic)
        except ProtocolError:
            pass

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


def banner(cfg: dict, url: str, processes: dict[str, subprocess.Popen], late: list[str]) -> str:
    lines = [f"\nLAMControl is up on {url}: {', '.join(processes)}."]
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

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lam", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--broker", help="mqtt://[user:pass@]host:port, mqtts:// for TLS (default: $LAM_BROKER, "
                                         "then the config file)")
    common.add_argument("--config", help="TOML config file (default: $LAM_CONFIG, ~/.config/lamcontrol/config.toml)")
    common.add_argument("--ca-file", help="CA certificate for mqtts://")
    common.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the broker")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", parents=[common], help="start broker, coordinator, bridge and a local agent")
    up.add_argument("--capability", "-c", action="append", help="capabilities for the local agent (default: all)")
    up.add_argument("--agent-id", help="id of the local agent (default: the host name)")
    up.add_argument("--no-bridge", action="store_true", help="do not start the HTTP bridge")
    up.set_defaults(func=cmd_up)

    send = sub.add_parser("send", parents=[common], help="send a prompt and print the reply")
    send.add_argument("prompt", nargs="+")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the reply")
    send.add_argument("--source", default="cli", help="who is asking (confirmations are per source)")
    send.add_argument("--json", action="store_true", help="print the whole reply as JSON")
    send.set_defaults(func=cmd_send)
    http_client.add_arguments(send, sub)

    agents = sub.add_parser("agents", parents=[common], help="list agents from their retained presence")
    agents.add_argument("--json", action="store_true")
    agents.set_defaults(func=cmd_agents)

    monitor = sub.add_parser("monitor", parents=[common], help="a live, readable line per event")
    monitor.add_argument("--no-colour", action="store_true")
    monitor.add_argument("--duration", type=float, help="stop after this many seconds")
    monitor.set_defaults(func=cmd_monitor)

    parse_cmd = sub.add_parser("parse", parents=[common], help="show the commands a prompt becomes (offline)")
    parse_cmd.add_argument("prompt", nargs="+")
    parse_cmd.add_argument("--explain", action="store_true", help="say which parser answered and why")
    parse_cmd.add_argument("--names", action="append", default=[], metavar="CAPABILITY=NAME,NAME",
                           help="names an agent would advertise (home devices and areas, contacts, apps); repeatable")
    parse_cmd.set_defaults(func=cmd_parse)
    ops.add_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (lamconfig.ConfigError, BusError) as exc:
        print(f"lam: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
