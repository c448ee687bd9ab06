"""lam: start the whole system, send prompts, watch the bus, list agents, try the parser."""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import time
from datetime import datetime
from typing import Any

from lamcontrol import __version__
from lamcontrol import config as lamconfig
from lamcontrol.bus import Bus, BusError
from lamcontrol.protocol import (Metadata, Presence, PresenceState, Prompt, PromptStatus, ProtocolError, Reply,
                                 describe_event, parse)

from . import config_docs, http_client, join, ops, up
from .console import (EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, broker_options, collect_retained, config_option,
                      connect, print_table, settings_from)

EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it

COLOURS = {"prompt": "36", "task": "34", "result": "35", "reply": "32", "agent": "33", "error": "31",
           "coordinator": "33", "other": "37"}


def send_prompt(args: argparse.Namespace, text: str) -> Reply | None:
    """Publish one prompt and wait for its reply (None on timeout)."""
    prompt = Prompt(prompt=text, source=args.source, metadata=Metadata(timeout=args.timeout, agent=args.agent or None))
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
    return EXIT_OK if reply.status == PromptStatus.SUCCEEDED else EXIT_FAILED


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
        load = f"{p.load}/{p.max_concurrent}" if p.state == PresenceState.ONLINE else "-"
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
    lines: queue.Queue[Any] = queue.Queue()

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
        print(f"{cfg.get('path', 'no config file')}: every key is known and every value fits")
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

    up.add_command(sub, configured, bus)

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
    config_sub.add_parser("docs", help="rewrite the example file and the key table of docs/configuration.md (source checkout)"
                          ).set_defaults(func=cmd_config)
    join.add_command(sub)
    ops.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # loading ran with Ctrl-C ending us quietly
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (lamconfig.ConfigError, BusError) as exc:
        print(f"lam: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
