"""What every long-running LAMControl process shares: logging, signals and systemd.

``run_service`` logs, waits for SIGTERM or SIGINT, and keeps systemd informed when it runs
under a ``Type=notify`` unit: ``READY=1`` once the process is connected and subscribed,
``WATCHDOG=1`` while it stays connected, ``STOPPING=1`` on the way out.
"""

from __future__ import annotations

import asyncio
import argparse
import logging
import os
import queue
import signal
import socket
from typing import Callable

log = logging.getLogger(__name__)

HEALTH_EVERY = 5.0  # seconds between health checks under systemd, once ready (sooner if its watchdog asks)


def component_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The command line every LAMControl process shares: --broker, --config, --log-level."""
    from . import __version__

    parser = argparse.ArgumentParser(prog=prog, description=(description or "").replace("``", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{prog} (lamcontrol) {__version__}")
    parser.add_argument("--broker", help="mqtt://[user:pass@]host:port (default: $LAM_BROKER or the config)")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def sd_notify(message: str) -> bool:
    """Send one state line to systemd's notify socket; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("cannot notify systemd: %s", exc)
            return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog period systemd asked for, in seconds, or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6


async def pet_watchdog() -> None:
    """Tell systemd's watchdog, from an asyncio loop, that the loop still runs (no-op without one)."""
    interval = watchdog_interval()
    while interval:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def run_service(is_ready: Callable[[], bool], stop: Callable[[], None], name: str) -> None:
    """Block until SIGTERM/SIGINT, telling systemd about readiness and health, then ``stop()``.

    Readiness is checked ten times a second until it comes. After that, health is checked only for
    systemd (its watchdog and status line), every HEALTH_EVERY seconds or as often as the watchdog
    asks; without systemd the process sleeps until a signal comes."""
    signals: queue.SimpleQueue = queue.SimpleQueue()  # put() is safe from a signal handler
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: signals.put(number))
    ready_sent = was_healthy = False
    interval = watchdog_interval()
    health_every = min(interval or HEALTH_EVERY, HEALTH_EVERY) if os.environ.get("NOTIFY_SOCKET") else None
    while True:
        try:
            signals.get(timeout=health_every if ready_sent else 0.1)
            break
        except queue.Empty:
            pass
        healthy = is_ready()
        if healthy and not ready_sent:
            ready_sent = sd_notify(f"READY=1\nSTATUS={name} connected") or True
            log.info("%s ready", name)
        elif ready_sent and healthy != was_healthy:
            sd_notify(f"STATUS={name} {'connected' if healthy else 'reconnecting to the broker'}")
        was_healthy = healthy
        if interval and healthy:
            sd_notify("WATCHDOG=1")
    sd_notify("STOPPING=1")
    log.info("%s stopping", name)
    stop()
