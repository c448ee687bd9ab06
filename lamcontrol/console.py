"""What every ``lam`` subcommand shares: exit codes, tables, and short-lived bus connections."""

from __future__ import annotations

import argparse
import time
from typing import Callable

from . import config as lamconfig
from .bus import BrokerSettings, Bus

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2


def settings_from(args: argparse.Namespace) -> BrokerSettings:
    """The broker settings of the config file, with ``--broker`` and ``--ca-file`` applied."""
    cfg = lamconfig.load(args.config, args.broker)
    if getattr(args, "ca_file", None):
        cfg["broker"]["ca_file"] = args.ca_file
    return BrokerSettings.from_config(cfg)


def connect(args: argparse.Namespace, handlers: dict[str, Callable[[str, bytes], None]], component: str,
            strays: bool = False) -> Bus:
    """A short-lived bus with handlers subscribed, or BusError (``strays``: see :class:`Bus`)."""
    bus = Bus(settings_from(args), component=component, report=False, strays=strays)
    for topic_filter, handler in handlers.items():
        bus.on(topic_filter, handler)
    bus.start(timeout=args.connect_timeout)
    return bus


def collect_retained(args: argparse.Namespace, topic_filter: str, quiet: float = 0.5,
                     strays: bool = False) -> dict[str, bytes]:
    """Retained messages under a filter (with ``strays``, also those where nothing may be retained):
    read until the bus has been quiet for ``quiet`` seconds."""
    seen: dict[str, bytes] = {}
    last = [time.monotonic()]

    def keep(topic: str, payload: bytes) -> None:
        seen[topic] = payload
        last[0] = time.monotonic()

    bus = connect(args, {topic_filter: keep}, "lam-cli", strays)
    last[0] = time.monotonic()
    while time.monotonic() - last[0] < quiet:
        time.sleep(0.05)
    bus.stop()
    return seen


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def broker_options() -> argparse.ArgumentParser:
    """The options of every subcommand that talks to a broker."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--broker", help="mqtt://[user:pass@]host:port, mqtts:// for TLS (default: $LAM_BROKER, "
                                          "then the config file's [broker] url, then its [embedded_broker] listen, "
                                          "then mqtt://127.0.0.1:1883)")
    options.add_argument("--ca-file", help="CA certificate that signed the broker's, for mqtts://")
    options.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the broker")
    return options


def config_option() -> argparse.ArgumentParser:
    """The ``--config`` option every subcommand takes."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--config", help="TOML config file (default: $LAM_CONFIG, then "
                                          f"{', then '.join(lamconfig.SEARCH_PATH)})")
    return options
