"""``lam-bridge``: the HTTP face of LAMControl (REST API, R1 page, admin dashboard).

    lam-bridge [--broker URL] [--config FILE] [--listen HOST:PORT] [--voice-port PORT]
    lam-bridge token create [--name NAME] | token list | token revoke ID
    lam-bridge passwd [--password-stdin]
    lam-bridge devices [list | revoke ID | new-code]   (R1s paired for voice)

On its first start the bridge creates an API token and an admin password and prints each
once; only their hashes are kept (in the state directory, or where ``[bridge]`` says). Under
systemd, whose journal would keep them, they go to a private file instead and only its path
is logged.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from datetime import datetime

from lamcontrol import config as lamconfig
from lamcontrol.bus import BrokerSettings
from lamcontrol.service import component_parser, run_service, setup_logging

from .app import Bridge, BridgeSettings, create_app, too_large
from .auth import AdminPassword, TokenStore
from .devices import add_commands as add_device_commands, run_command as cmd_devices
from .openclaw import Gateway
from .relay import Relay
from .server import Server

log = logging.getLogger(__name__)

# Bodies up to this size reach the app, which refuses those over [bridge] max_body with a JSON
# error; waitress itself refuses larger ones (in plain text) before buffering them.
WAITRESS_BODY_LIMIT = 1024 * 1024


class BridgeService:
    """Relay, app and HTTP server together: ``start()``, then ``stop()``."""

    def __init__(self, cfg: dict) -> None:
        self.settings = BridgeSettings.from_config(cfg)
        broker = BrokerSettings.from_config(cfg)
        self.relay = Relay(broker, keep=self.settings.keep)
        self.app = create_app(self.relay, self.settings)
        self.bridge: Bridge = self.app.extensions["lam"]
        self.server = Server(self.app, self.settings.listen, threads=self.settings.threads,
                             cert_file=self.settings.cert_file, key_file=self.settings.key_file,
                             max_body=max(self.settings.max_body, WAITRESS_BODY_LIMIT),
                             too_large=too_large(self.settings.max_body),
                             max_connections=self.settings.max_connections,
                             per_address=self.settings.max_connections_per_address)
        self.metrics_server = None
        self.gateway = Gateway.from_config(self.relay, cfg)  # the R1's OpenClaw port; None when disabled
        self.bridge.gateway = self.gateway

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.relay.start()  # connects in the background; health says "unhealthy" until it is up
        self.server.start()
        if self.gateway:
            self.gateway.start()
        if self.settings.metrics_listen:
            host, port = lamconfig.host_port(self.settings.metrics_listen, "metrics_listen")
            self.metrics_server, _ = self.bridge.metrics.serve(host, port)

    def ready(self) -> bool:
        return self.relay.bus.ready.is_set()

    def stop(self) -> None:
        self.server.close()
        if self.gateway:
            self.gateway.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        self.relay.stop()


def first_run(settings: BridgeSettings) -> list[str]:
    """Create the admin password and a first token when there are none; the lines to show once."""
    lines = []
    admin = AdminPassword(settings.state_file("admin_file"))
    if not admin.is_set:
        lines.append(f"  admin login: {admin.USERNAME} / {admin.generate()}   (change it: lam-bridge passwd)")
    tokens = TokenStore(settings.state_file("token_file"))
    if tokens.empty:
        lines.append(f"  API token:   {tokens.create('first')}   (more: lam-bridge token create)")
    return lines


FIRST_START_FILE = "bridge-first-start.txt"


def output_is_journal() -> bool:
    """Whether standard output is systemd's journal: ``$JOURNAL_STREAM`` names its device and inode."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
    return f"{stat.st_dev}:{stat.st_ino}" == f"{device}:{inode}"


def announce_first_run(lines: list[str], settings: BridgeSettings) -> None:
    """Show the first-start secrets once: on the terminal, or under systemd in a private file
    (whoever may read the system journal would find the password there)."""
    if not output_is_journal():
        print("First start: keep these now, they are not shown again:", *lines, sep="\n", flush=True)
        return
    path = settings.state_file("admin_file").parent / FIRST_START_FILE
    lamconfig.write_private(path, "\n".join(["LAMControl bridge, first start: keep these, then delete this file.",
                                             *lines, ""]))
    print(f"First start: the admin password and API token are in {path} (readable by this service's user "
          "only); read it, then delete it.", flush=True)


def cmd_serve(args: argparse.Namespace, cfg: dict) -> int:
    if args.listen:
        cfg["bridge"]["listen"] = args.listen
    if args.voice_port is not None:
        cfg["openclaw"]["port"] = args.voice_port
    try:
        lamconfig.host_port(cfg["bridge"]["listen"], "listen address")
        service = BridgeService(cfg)
    except ValueError as exc:
        print(f"lam-bridge: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"lam-bridge: cannot listen on {cfg['bridge']['listen']}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    secrets_once = first_run(service.settings)
    service.start()
    print(f"LAMControl bridge on {service.url}  (dashboard: {service.url}/  R1 page: {service.url}/r1)", flush=True)
    if secrets_once:
        announce_first_run(secrets_once, service.settings)
    return run_service(service.ready, service.stop, "bridge", service.relay.bus.gave_up)


def cmd_token(args: argparse.Namespace, cfg: dict) -> int:
    store = TokenStore(BridgeSettings.from_config(cfg).state_file("token_file"))
    if args.action == "create":
        print(store.create(args.name or f"token-{datetime.now():%Y%m%d-%H%M%S}"))
        return 0
    if args.action == "revoke":
        if not args.id:
            print("lam-bridge token revoke: give the id or name of the token (see: lam-bridge token list)",
                  file=sys.stderr)
            return 2
        if not store.revoke(args.id):
            print(f"lam-bridge: no token with id or name {args.id!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.id}")
        return 0
    tokens = store.list()
    if not tokens:
        print("no tokens (create one: lam-bridge token create)")
    for token in tokens:
        print(f"{token['id']}  {token['name']}  created {datetime.fromtimestamp(token['created']):%Y-%m-%d %H:%M}")
    return 0


def cmd_passwd(args: argparse.Namespace, cfg: dict) -> int:
    admin = AdminPassword(BridgeSettings.from_config(cfg).state_file("admin_file"))
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("new admin password: ")
        if getpass.getpass("again: ") != password:
            print("lam-bridge: the passwords differ", file=sys.stderr)
            return 1
    try:
        admin.set(password)
    except ValueError as exc:
        print(f"lam-bridge: {exc}", file=sys.stderr)
        return 1
    print("admin password changed; open dashboard sessions are logged out")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = component_parser("lam-bridge", __doc__)
    parser.add_argument("--listen", help="host:port to serve on (default: [bridge] listen, 127.0.0.1:8080)")
    parser.add_argument("--voice-port", type=int, metavar="PORT", help="port of the R1 voice gateway (default: "
                                                                       "[openclaw] port, 18789)")
    sub = parser.add_subparsers(dest="command")
    token = sub.add_parser("token", help="create, list or revoke API tokens")
    token.add_argument("action", choices=["create", "list", "revoke"])
    token.add_argument("id", nargs="?", help="for revoke: the token's id or name")
    token.add_argument("--name", help="for create: a name to recognise it by")
    passwd = sub.add_parser("passwd", help="set the admin password of the dashboard")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add_device_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    commands = {None: cmd_serve, "token": cmd_token, "passwd": cmd_passwd, "devices": cmd_devices}
    try:
        cfg = lamconfig.load(args.config, args.broker)
        return commands[args.command](args, cfg)
    except lamconfig.ConfigError as exc:
        print(f"lam-bridge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
