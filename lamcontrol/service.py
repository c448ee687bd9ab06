"""What every long-running LAMControl process shares: logging, signals and systemd.

``run_service`` logs, waits for SIGTERM or SIGINT (or :func:`request_restart`), and keeps
systemd informed when it runs under a ``Type=notify`` unit: ``READY=1`` once the process is
connected and subscribed, ``WATCHDOG=1`` while it stays connected, ``STOPPING=1`` on the way
out, or ``RELOADING=1`` before a restart, which :func:`restart` makes in the same process (same
process id: systemd and ``lam up`` keep following it; the new program says ``READY=1`` again).
"""

from __future__ import annotations

import asyncio
import argparse
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from typing import Callable, NoReturn

log = logging.getLogger(__name__)
_wakes: queue.SimpleQueue = queue.SimpleQueue()  # run_service wakes at each put (safe from a signal handler)
STOP, LOOK = "stop", "look"  # what a wake-up asks: to stop, or to check the component again
_restart = threading.Event()

HEALTH_EVERY = 5.0  # seconds between health checks under systemd, once ready (sooner if its watchdog asks)


def component_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The command line every LAMControl process shares: --broker, --config, --log-level."""
    from . import __version__
    from .config import SEARCH_PATH

    parser = argparse.ArgumentParser(prog=prog, description=(description or "").replace("``", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{prog} (lamcontrol) {__version__}")
    parser.add_argument("--broker", help="mqtt://[user:pass@]host:port (default: $LAM_BROKER or the config)")
    parser.add_argument("--config", help=f"TOML config file (default: $LAM_CONFIG, then {', then '.join(SEARCH_PATH)})")
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


def request_restart() -> None:
    """Ask :func:`run_service` to stop the service and run it again (:func:`restart`)."""
    _restart.set()
    _wakes.put(STOP)


def look_again() -> None:
    """Have :func:`run_service` check its component at once (a bus that gave up, say), from any thread."""
    _wakes.put(LOOK)


def restart() -> NoReturn:
    """Run this program again in this process, with the same interpreter, arguments and environment
    (open files and sockets close on exec)."""
    log.warning("restarting")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def run_service(is_ready: Callable[[], bool], stop: Callable[[], None], name: str,
                gave_up: Callable[[], str] | None = None) -> int:
    """Block until SIGTERM/SIGINT, telling systemd about readiness and health, then ``stop()``; the exit
    status. After :func:`request_restart` it runs the program again instead of returning.

    Readiness is checked ten times a second until it comes. After that, health is checked only for
    systemd (its watchdog and status line), every HEALTH_EVERY seconds or as often as the watchdog
    asks, and when :func:`look_again` is called; without systemd the process sleeps until then.

    ``gave_up()`` says why to stop on its own ('' while there is hope): a broker that keeps refusing
    this login will not let it in by being asked again (the bus calls :func:`look_again` when it gives
    up). Then the status is 2."""
    status = 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: _wakes.put(STOP))
    ready_sent = was_healthy = False
    interval = watchdog_interval()
    health_every = min(interval or HEALTH_EVERY, HEALTH_EVERY) if os.environ.get("NOTIFY_SOCKET") else None
    while True:
        try:
            if _wakes.get(timeout=health_every if ready_sent else 0.1) == STOP:
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
        reason = gave_up() if gave_up else ""
        if reason:
            log.error("%s stops trying: %s", name, reason)
            status = 2
            break
    restarting = _restart.is_set()
    sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}" if restarting else "STOPPING=1")
    log.info("%s %s", name, "stopping to restart" if restarting else "stopping")
    stop()
    if restarting:
        restart()
    return status
