"""``lam-broker``: the embedded aMQTT broker, LAMControl's zero-setup default.

It listens on 127.0.0.1:1883 unless told otherwise. With a password file (argon2 hashes,
made by ``lam-broker adduser FILE USER``) only listed users get in; without one, named
clients keep their queued messages across reconnects and anonymous ones may watch.
Production setups can use Mosquitto instead: nothing in LAMControl depends on aMQTT.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from lamcontrol import config as lamconfig
from lamcontrol.service import pet_watchdog, sd_notify, setup_logging

log = logging.getLogger("lam-broker")


def broker_config(listen: str, websocket: str = "", password_file: str = "", allow_anonymous: bool = True) -> dict:
    """The aMQTT configuration for our options."""
    listeners = {"default": {"type": "tcp", "bind": listen}}
    if websocket:
        listeners["ws"] = {"type": "ws", "bind": websocket}
    if password_file:
        auth = {"amqtt.plugins.authentication.FileAuthPlugin": {"password_file": password_file}}
    else:
        auth = {"lamcontrol.broker.auth.NamedSessionAuth": {"allow_anonymous": allow_anonymous}}
    return {"listeners": listeners, "plugins": auth}


def exit_after(seconds: float) -> threading.Timer:
    """Force the process out after ``seconds``, whatever its event loop is stuck on."""

    def expire() -> None:
        log.error("shutdown did not finish within %g s; exiting anyway", seconds)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


async def serve(config: dict, stop_timeout: float = 10.0) -> None:
    from lamcontrol.broker.server import EmbeddedBroker

    broker = EmbeddedBroker(config)
    await broker.start()
    log.info("broker listening on %s", ", ".join(f"{n}={l['bind']}" for n, l in config["listeners"].items()))
    sd_notify("READY=1\nSTATUS=broker listening")
    watchdog = asyncio.create_task(pet_watchdog())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    sd_notify("STOPPING=1")
    # The process leaves within stop_timeout (plus a little for the loop's own cleanup) even if
    # the broker's shutdown hangs on a client connection.
    exit_after(stop_timeout + 2)
    watchdog.cancel()
    try:
        await asyncio.wait_for(broker.shutdown(), stop_timeout)
    except asyncio.TimeoutError:
        log.error("broker shutdown took longer than %g s; stopping without it", stop_timeout)


def add_user(password_file: str, username: str) -> int:
    """Add or replace a user in an argon2 password file (password read from stdin or a prompt)."""
    from pwdlib import PasswordHash

    password = getpass.getpass(f"password for {username}: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    if not password:
        print("lam-broker: empty password refused", file=sys.stderr)
        return 2
    path = Path(password_file)
    lines = [l for l in path.read_text().splitlines() if not l.startswith(f"{username}:")] if path.exists() else []
    lines.append(f"{username}:{PasswordHash.recommended().hash(password)}")
    lamconfig.write_private(path, "\n".join(lines) + "\n")
    print(f"user {username} written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lam-broker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML config file ([embedded_broker] section)")
    parser.add_argument("--listen", help="host:port for MQTT (default 127.0.0.1:1883)")
    parser.add_argument("--websocket", help="host:port for MQTT over websockets (off by default)")
    parser.add_argument("--password-file", help="argon2 password file; only its users may connect")
    parser.add_argument("--no-anonymous", action="store_true", help="refuse clients that give no user name")
    parser.add_argument("--stop-timeout", type=float, default=10.0,
                        help="seconds a shutdown may take before the process exits anyway (default 10)")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command")
    adduser = sub.add_parser("adduser", help="add a user to a password file")
    adduser.add_argument("file")
    adduser.add_argument("username")
    args = parser.parse_args(argv)
    if args.command == "adduser":
        return add_user(args.file, args.username)
    setup_logging(args.log_level)
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        section = lamconfig.load(args.config)["embedded_broker"]
    except lamconfig.ConfigError as exc:
        print(f"lam-broker: {exc}", file=sys.stderr)
        return 2
    config = broker_config(args.listen or section["listen"], args.websocket or section["websocket"],
                           args.password_file or section["password_file"],
                           section["allow_anonymous"] and not args.no_anonymous)
    try:
        asyncio.run(serve(config, args.stop_timeout))
    except OSError as exc:
        print(f"lam-broker: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
