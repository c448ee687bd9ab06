"""lam-broker: the embedded aMQTT broker, LAMControl's zero-setup default.

It listens on 127.0.0.1:1883 unless told otherwise. Beyond loopback it needs a password
file (argon2 hashes; lam join makes one, with an ACL): only its users get in, and nameless
clients only from this machine. Without one, named clients keep their queued messages
across reconnects and anonymous ones may watch. TLS listens where --tls-listen says.
Each client's queue is bounded (max_queued_messages, max_queued_bytes in [embedded_broker]):
a client that stops reading has messages dropped, QoS 0 first, and costs no one else.
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
from dataclasses import dataclass
from pathlib import Path

from amqtt.errors import BrokerError

from lamcontrol import __version__
from lamcontrol import config as lamconfig
from lamcontrol.broker.auth import hash_password, parse_hashes, password_file_text
from lamcontrol.broker.outbox import QueueLimits
from lamcontrol.protocol import DEFAULT_PREFIX
from lamcontrol.service import pet_watchdog, sd_notify, setup_logging

log = logging.getLogger("lam-broker")


@dataclass
class Listeners:
    """Where the broker listens and who may come in."""

    listen: str = "127.0.0.1:1883"
    websocket: str = ""
    tls_listen: str = ""
    cert_file: str = ""
    key_file: str = ""
    password_file: str = ""
    acl_file: str = ""
    allow_anonymous: bool = True

    @classmethod
    def from_config(cls, section: dict, **chosen: str | None) -> Listeners:
        """``[embedded_broker]`` with the options given (None: not given) applied."""
        fields = ("listen", "websocket", "tls_listen", "cert_file", "key_file", "password_file", "acl_file",
                  "allow_anonymous")
        return cls(**{key: section[key] if chosen.get(key) is None else chosen[key] for key in fields})

    def addresses(self) -> dict[str, tuple[str, int]]:
        """Listener name -> (host, port); ConfigError on a bad address."""
        named = {"default": self.listen, "ws": self.websocket, "tls": self.tls_listen}
        return {name: lamconfig.host_port(value, f"{name} listener") for name, value in named.items() if value}

    def problem(self, lam_up: bool = False) -> str:
        """Why these settings must not run ('' when they may), with the fix in the flags of lam-broker, or of
        lam up when ``lam_up``."""
        addresses = self.addresses()
        if not addresses:
            return "no listener: give --listen, --websocket or --tls-listen"
        if self.tls_listen and not (self.cert_file and self.key_file):
            return "--tls-listen needs --cert and --key"
        for value in (self.cert_file, self.key_file, self.password_file):
            if value and not Path(value).expanduser().is_file():
                return f"{value} does not exist"
        exposed = [f"{h}:{p}" for h, p in addresses.values() if not lamconfig.is_loopback(h)]
        if exposed and not self.password_file:
            users = ("set [embedded_broker] password_file" if lam_up else
                     "give --password-file (lam-broker adduser FILE USER)")
            return (f"refusing to listen on {', '.join(exposed)} without users and passwords (anyone on the network "
                    "could use the bus). Make them with: lam join NAME (a user for each of this machine's components "
                    f"and for the agent NAME), then: lam up --listen {exposed[0]}; or {users}; or listen on 127.0.0.1")
        for host, port in addresses.values():
            busy = lamconfig.bind_problem(host, port)
            if busy:
                listen = "lam up --listen" if lam_up else "--listen"
                taken = lamconfig.joined(host, port)
                return (f"cannot listen on {taken}: {busy}. Another broker runs there? To use it: lam up --broker "
                        f"mqtt://{lamconfig.local_address(taken)} (refused while a coordinator serves it); or pick "
                        f"another port: {listen} {lamconfig.joined(host, port + 1 if port < 65535 else 1883)}")
        return ""

    def amqtt_config(self) -> dict:
        """The aMQTT configuration for these settings."""
        listeners: dict[str, dict] = {}
        for name, (host, port) in self.addresses().items():
            listeners[name] = {"type": "ws" if name == "ws" else "tcp", "bind": f"{host}:{port}"}
            if name == "tls":
                listeners[name].update(ssl=True, certfile=str(Path(self.cert_file).expanduser()),
                                       keyfile=str(Path(self.key_file).expanduser()))
        if "default" not in listeners:  # aMQTT wants a listener by that name
            listeners["default"] = listeners.pop(next(iter(listeners)))
        if self.password_file:
            plugins = {"lamcontrol.broker.auth.PasswordFileAuth": {"password_file": self.password_file,
                                                                   "allow_anonymous": self.allow_anonymous}}
            if self.acl_file:
                plugins["lamcontrol.broker.auth.AclFileCheck"] = {"acl_file": self.acl_file}
        else:
            plugins = {"lamcontrol.broker.auth.NamedSessionAuth": {"allow_anonymous": self.allow_anonymous}}
        return {"listeners": listeners, "plugins": plugins}


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


LIMITS = {"max_queued_messages": "messages", "max_queued_bytes": "bytes", "max_inflight_messages": "inflight"}


def queue_limits(section: dict) -> QueueLimits:
    """The per-client limits of ``[embedded_broker]``; ConfigError when one is not a whole number above 0."""
    for key in LIMITS:
        value = section[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise lamconfig.ConfigError(f"[embedded_broker] {key} must be a whole number above 0, not {value!r}")
    return QueueLimits(**{field: section[key] for key, field in LIMITS.items()})


async def serve(config: dict, stop_timeout: float = 10.0, prefix: str = DEFAULT_PREFIX,
                limits: QueueLimits = QueueLimits()) -> None:
    from lamcontrol.broker.server import EmbeddedBroker

    broker = EmbeddedBroker(config, prefix, limits)
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
    password = getpass.getpass(f"password for {username}: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    if not password:
        print("lam-broker: empty password refused", file=sys.stderr)
        return 2
    path = Path(password_file)
    hashes = parse_hashes(path.read_text()) if path.exists() else {}
    lamconfig.write_private(path, password_file_text({**hashes, username: hash_password(password)}))
    print(f"user {username} written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lam-broker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lam-broker (lamcontrol) {__version__}")
    parser.add_argument("--config", help="TOML config file, for its [embedded_broker] section (default: $LAM_CONFIG, "
                                          f"then {', then '.join(lamconfig.SEARCH_PATH)})")
    parser.add_argument("--listen", help="host:port for plain MQTT (default 127.0.0.1:1883; '' for none); beyond "
                                         "loopback it needs --password-file")
    parser.add_argument("--websocket", help="host:port for MQTT over websockets (off by default)")
    parser.add_argument("--tls-listen", help="host:port for MQTT over TLS, with --cert and --key")
    parser.add_argument("--cert", help="server certificate (PEM) for --tls-listen")
    parser.add_argument("--key", help="private key of --cert")
    parser.add_argument("--password-file", help="argon2 password file; only its users may connect (nameless "
                                                "clients only from this machine, unless --no-anonymous)")
    parser.add_argument("--acl-file", help="topic rules per user, in Mosquitto's acl_file format")
    parser.add_argument("--no-anonymous", action="store_true", help="refuse clients that give no user name")
    parser.add_argument("--stop-timeout", type=float, default=10.0,
                        help="seconds a shutdown may take before the process exits anyway (default 10)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command")
    adduser = sub.add_parser("adduser", help="add a user to a password file (the password is read from stdin)")
    adduser.add_argument("file", help="the password file")
    adduser.add_argument("username", help="the user to add or replace")
    args = parser.parse_args(argv)
    if args.command == "adduser":
        return add_user(args.file, args.username)
    setup_logging(args.log_level)
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A line per unacknowledged message of a client that stopped reading; the outbox says it once.
    logging.getLogger("amqtt.mqtt.protocol.handler").setLevel(logging.ERROR)
    try:
        cfg = lamconfig.load(args.config)
        listeners = Listeners.from_config(
            cfg["embedded_broker"], listen=args.listen, websocket=args.websocket,
            tls_listen=args.tls_listen, cert_file=args.cert, key_file=args.key, password_file=args.password_file,
            acl_file=args.acl_file, allow_anonymous=False if args.no_anonymous else None)
        limits = queue_limits(cfg["embedded_broker"])
        problem = listeners.problem()
    except lamconfig.ConfigError as exc:
        problem = str(exc)
    if problem:
        print(f"lam-broker: {problem}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(listeners.amqtt_config(), args.stop_timeout, cfg["broker"]["prefix"], limits))
    except (OSError, BrokerError) as exc:
        print(f"lam-broker: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
