"""lam join NAME: bring another machine's agent onto this machine's bus.

Run it where the broker runs. It gives the new agent an MQTT user, a password and an ACL
entry (in the embedded broker's users folder, or with --mosquitto in the folder that
lam mosquitto-config wrote), builds this installation's wheel and serves it over HTTP, prints
the commands to paste on the new machine (install, config, user service), and waits until
the new agent says it is online.

The users folder holds ``users`` (the user list, in lam mosquitto-config's --users form),
``credentials/<user>`` (each password, mode 0600), ``passwd`` (hashes: argon2 for the
embedded broker, mosquitto_passwd's for Mosquitto) and ``acl`` (Mosquitto's format, which
the embedded broker reads too). Users, passwords and ACL lines come from the same functions
as lam mosquitto-config's.

Everything that may refuse is checked before anything is written, and a join that fails before
it has printed the commands leaves the users folder as it found it, so a retry starts clean.
The wheel is packed from this installation itself, with no package index and no build tools.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

from lamcontrol import config as lamconfig
from lamcontrol.bus import BrokerSettings, Bus, BusError
from lamcontrol.protocol import Presence, PresenceState, ProtocolError, Topics, check_id, parse

from . import ops
from .console import EXIT_FAILED, EXIT_OK, config_option

USERS_FILE = "users"
LOCAL_COMPONENTS = ("coordinator", "bridge", "monitor")
DEFAULT_CAPABILITIES = ("echo", "browser", "computer")
VENV = "~/.local/share/lamcontrol"  # the new machine's agent runs as a user service: its home is fine
CONFIG_DIR = "~/.config/lamcontrol"


def user_name(item: str) -> str:
    """The user an item of a --users list names (agent:ID:caps names ID)."""
    return item.split(":")[1] if item.startswith(("agent:", "client:")) else item


def agent_item(agent_id: str, capabilities: list[str]) -> str:
    return ops.user_spec(ops.MqttUser(agent_id, capabilities, "agent"))


@dataclass
class UserFolder:
    """The users, passwords and ACL of one broker (see the module's description)."""

    path: Path
    embedded: bool
    prefix: str
    discovery: str

    @classmethod
    def of(cls, cfg: dict[str, Any], mosquitto: str | None = None) -> UserFolder:
        """The embedded broker's folder ([embedded_broker] users_dir), or the Mosquitto one given."""
        section = cfg["embedded_broker"]
        path = Path(mosquitto) if mosquitto else lamconfig.state_path("embedded_broker", "users_dir",
                                                                          section["users_dir"])
        return cls(path.expanduser().resolve(), not mosquitto, cfg["broker"]["prefix"],
                   cfg["homeassistant"]["discovery_prefix"])

    @property
    def items(self) -> list[str]:
        listed = self.path / USERS_FILE
        return [i.strip() for i in listed.read_text().split(",") if i.strip()] if listed.is_file() else []

    def exists(self) -> bool:
        return bool(self.items)

    def password(self, user: str) -> str:
        return (self.path / "credentials" / user).read_text().strip()

    def add(self, *items: str) -> None:
        """Add users (an agent listed again gets its new capabilities), with passwords and ACL entries."""
        known = {user_name(i): i for i in self.items}
        known.update({user_name(i): i for i in items})
        users = ops.parse_users(",".join(known.values()))
        self.path.mkdir(parents=True, exist_ok=True)
        passwords = ops.credentials(self.path / "credentials", users)
        if self.embedded:
            from lamcontrol.broker.auth import hash_password, password_file_text

            lamconfig.write_private(self.path / "passwd",
                                    password_file_text({u: hash_password(p) for u, p in passwords.items()}))
        else:
            ops.write_password_file(self.path / "passwd", passwords)
        lamconfig.write_private(self.path / "acl", ops.acl_file(users, Topics(self.prefix), self.discovery))
        lamconfig.write_private(self.path / USERS_FILE, ",".join(known.values()) + "\n")

    def ensure_local(self, agent_id: str, capabilities: list[str]) -> None:
        """This machine's components and agent have users (lam up calls it)."""
        missing = [c for c in LOCAL_COMPONENTS if c not in {user_name(i) for i in self.items}]
        mine = agent_item(agent_id, capabilities)
        if missing or mine not in self.items:
            self.add(*missing, mine)

    @contextmanager
    def restored_on_failure(self) -> Iterator[None]:
        """Users, passwords and ACL written in the block are taken back if it fails (or is interrupted)."""
        existed = self.path.exists()
        kept = {name: (self.path / name).read_text() if (self.path / name).is_file() else None
                for name in (USERS_FILE, "passwd", "acl")}
        credentials = self.path / "credentials"
        had = set(credentials.iterdir()) if credentials.is_dir() else set()
        try:
            yield
        except BaseException:
            if not existed:
                shutil.rmtree(self.path, ignore_errors=True)
                raise
            for name, text in kept.items():
                if text is None:
                    (self.path / name).unlink(missing_ok=True)
                else:
                    lamconfig.write_private(self.path / name, text)
            for made in (set(credentials.iterdir()) if credentials.is_dir() else set()) - had:
                made.unlink()
            raise


# -- the wheel ----------------------------------------------------------------------------

def pack_wheel(out: Path, name: str = "lamcontrol") -> Path:
    """This installation as a wheel in ``out``, packed from what is installed: no build, no package index.
    Its metadata and entry points are the installed distribution's; its files those the distribution
    records, or for an editable install those the checkout's setup.cfg puts in a wheel."""
    dist = installed(name)
    info = f"{dist.metadata['Name']}-{dist.version}.dist-info"
    source = editable_source(dist)
    files = checkout_files(source) if source else installed_files(dist)
    entries = {arcname: path.read_bytes() for arcname, path in sorted(files.items())}
    for kept in ("METADATA", "entry_points.txt", "top_level.txt"):
        text = dist.read_text(kept)
        if text is not None:
            entries[f"{info}/{kept}"] = text.encode()
    entries[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: lamcontrol (lam join)\nRoot-Is-Purelib: true\n"
                                b"Tag: py3-none-any\n")
    record = [f"{arcname},sha256={digest(data)},{len(data)}" for arcname, data in entries.items()]
    entries[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    wheel = out / f"{dist.metadata['Name']}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for arcname, data in entries.items():
            archive.writestr(arcname, data)
    return wheel


def installed(name: str) -> importlib.metadata.Distribution:
    """The installed distribution (its .dist-info, with a RECORD), not a source checkout's .egg-info that
    happens to be on the path."""
    for dist in importlib.metadata.distributions(name=name):
        if dist.read_text("RECORD") is not None:
            return dist
    raise OSError(f"{name} is not installed here (pip install it first, or give the wheel to serve with --wheel FILE)")


def digest(data: bytes) -> str:
    """A RECORD line's hash: urlsafe base64 of the SHA-256, unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def editable_source(dist: importlib.metadata.Distribution) -> Path | None:
    """The checkout an editable install runs from, or None."""
    try:
        origin = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    if not origin.get("dir_info", {}).get("editable") or not origin.get("url", "").startswith("file://"):
        return None
    return Path(unquote(urlsplit(origin["url"]).path))


def installed_files(dist: importlib.metadata.Distribution) -> dict[str, Path]:
    """The files a regular install recorded, but its scripts, compiled files and metadata (written anew)."""
    files = {}
    for recorded in dist.files or ():
        parts = recorded.parts
        if parts[0] == ".." or "__pycache__" in parts or parts[0].endswith((".dist-info", ".pth")) or \
                recorded.suffix == ".pyc":
            continue
        files[recorded.as_posix()] = Path(recorded.locate())
    return files


def checkout_files(root: Path) -> dict[str, Path]:
    """What setup.cfg puts in the wheel: each package's modules and package data, by their place in the wheel."""
    setup = configparser.ConfigParser(interpolation=None)
    if not setup.read(root / "setup.cfg"):
        raise OSError(f"{root / 'setup.cfg'} is missing: give the wheel to serve with --wheel FILE")
    options = setup["options"]
    folders = {package.strip(): folder.strip() for package, folder in
               (line.split("=", 1) for line in options.get("package_dir", "").splitlines() if "=" in line)}
    data = {package: [glob.strip() for glob in globs.split(",") if glob.strip()]
            for package, globs in (setup["options.package_data"].items() if setup.has_section("options.package_data")
                                   else ())}
    files = {}
    for package in options.get("packages", "").split():
        folder = root / folders.get(package, package.replace(".", "/"))
        for pattern in ["*.py", *data.get("*", []), *data.get(package, [])]:
            for path in folder.glob(pattern):
                if path.is_file():
                    files[f"{package.replace('.', '/')}/{path.relative_to(folder).as_posix()}"] = path
    return files


class WheelServer:
    """Serves one file over HTTP in a thread, until stopped."""

    def __init__(self, wheel: Path, host: str, port: int) -> None:
        handler = functools.partial(QuietHandler, directory=str(wheel.parent))
        self.server = ThreadingHTTPServer((host, port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="wheel-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def __enter__(self) -> WheelServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        print(f"served {self.path} to {self.client_address[0]}", flush=True)


def lan_address() -> str:
    """This machine's address on the network its default route leads to (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            return str(probe.getsockname()[0])
        except OSError:
            return socket.gethostname()


# -- what the new machine runs ------------------------------------------------------------

def broker_url(cfg: dict[str, Any], address: str) -> tuple[str, str]:
    """(URL the new machine uses for the embedded broker, the CA certificate's PEM for mqtts:// or '')."""
    section = cfg["embedded_broker"]
    if section["tls_listen"] and section["cert_file"]:
        _, port = lamconfig.host_port(section["tls_listen"], "[embedded_broker] tls_listen")
        return f"mqtts://{address}:{port}", Path(section["cert_file"]).expanduser().read_text()
    _, port = lamconfig.host_port(section["listen"] or "127.0.0.1:1883", "[embedded_broker] listen")
    return f"mqtt://{address}:{port}", ""


def mosquitto_url(conf: Path, address: str) -> tuple[str, str]:
    """(URL the new machine uses for the Mosquitto that ``conf`` configures, its certificate's PEM for mqtts://)."""
    listeners: list[dict[str, str]] = []
    for words in (line.split() for line in conf.read_text().splitlines()):
        if words[:1] == ["listener"] and len(words) >= 2:
            listeners.append({"port": words[1], "host": words[2] if len(words) > 2 else "0.0.0.0", "cert": ""})
        elif words[:1] == ["certfile"] and listeners and len(words) == 2:
            listeners[-1]["cert"] = words[1]
    reachable = [ln for ln in listeners if not lamconfig.is_loopback(ln["host"])]
    if not reachable:
        raise lamconfig.ConfigError(f"{conf} listens on this machine only: run lam mosquitto-config again with "
                                    "--listen 0.0.0.0:1883, or --cert and --key for TLS")
    chosen = max(reachable, key=lambda ln: bool(ln["cert"]))  # TLS where there is a TLS listener
    if chosen["cert"]:
        return f"mqtts://{address}:{chosen['port']}", Path(chosen["cert"]).read_text()
    return f"mqtt://{address}:{chosen['port']}", ""


def commands(agent_id: str, url: str, password: str, capabilities: list[str], requirement: str, prefix: str,
             ca_pem: str = "") -> str:
    """The shell lines that install, configure and start the agent on the new machine."""
    config, secret, ca = (f"{CONFIG_DIR}/agent-{agent_id}.toml", f"{CONFIG_DIR}/agent-{agent_id}.password",
                          f"{CONFIG_DIR}/broker-ca.pem")
    text = ops.component_config(url, prefix, agent_id, secret, capabilities, ca_file=ca if ca_pem else "")
    lines = [f"python3 -m venv --system-site-packages {VENV}",
             f"{VENV}/bin/pip install {shlex.quote(requirement)}",
             f"mkdir -p {CONFIG_DIR}",
             f"(umask 077 && echo {shlex.quote(password)} > {secret})"]
    if ca_pem:
        lines.append(f"cat > {ca} <<'END'\n{ca_pem.strip()}\nEND")
    lines += [f"cat > {config} <<'END'\n{text.strip()}\nEND",
              f"{VENV}/bin/lam systemd install --user --agent-id {agent_id}",
              "systemctl --user daemon-reload",
              "systemctl --user import-environment DISPLAY XAUTHORITY WAYLAND_DISPLAY",
              f"systemctl --user enable --now lam-agent@{agent_id}.service"]
    return "\n".join(lines)


def extras(capabilities: list[str]) -> list[str]:
    """The pip extras the capabilities need."""
    from lamcontrol.agents import capability

    found = []
    for name in capabilities:
        try:
            extra = capability.load(name).extra
        except capability.Unavailable:
            continue
        if extra and extra not in found:
            found.append(extra)
    return found


def wait_online(settings: BrokerSettings, agent_id: str, seconds: float) -> bool:
    """True once the agent's presence says online, within ``seconds``."""
    online = threading.Event()

    def seen(topic: str, payload: bytes) -> None:
        try:
            if payload and parse(Presence, payload).state == PresenceState.ONLINE:
                online.set()
        except ProtocolError:
            pass

    bus = Bus(settings, component="lam-join", report=False)
    bus.on(settings.topics.agent_status(agent_id), seen)
    deadline = time.monotonic() + seconds
    while not bus.connected.is_set():
        try:
            bus.start(timeout=max(1.0, deadline - time.monotonic()))
        except BusError:
            if time.monotonic() >= deadline:
                return False
    try:
        return online.wait(max(0.0, deadline - time.monotonic()))
    finally:
        bus.stop()


def checked_folder(args: argparse.Namespace, cfg: dict[str, Any]) -> tuple[UserFolder, list[str]]:
    """The users folder and the new agent's capabilities, once nothing stands in the way of adding it
    (nothing is written here)."""
    check_id(args.agent_id, "agent id")
    capabilities = [check_id(c, "capability") for c in args.capability or DEFAULT_CAPABILITIES]
    folder = UserFolder.of(cfg, args.mosquitto)
    if not folder.embedded and not folder.exists():
        raise lamconfig.ConfigError(f"{folder.path} has no users list: run lam mosquitto-config --out {folder.path} "
                                    "first")
    if args.agent_id in {user_name(i) for i in folder.items} and not args.again:
        raise lamconfig.ConfigError(f"{args.agent_id} already has a user; use --again to print its commands again "
                                    "(its password stays)")
    return folder, capabilities


def add_user(args: argparse.Namespace, cfg: dict[str, Any], folder: UserFolder, capabilities: list[str]) -> None:
    """The new agent's user, password and ACL entry (and this machine's, for the embedded broker)."""
    if folder.embedded:
        folder.ensure_local(args.local_id or cfg["agent"]["id"] or lamconfig.default_agent_id(),
                            lamconfig.installed_capabilities())
    folder.add(agent_item(args.agent_id, capabilities))


def cmd_join(args: argparse.Namespace) -> int:
    cfg = lamconfig.load(args.config)
    try:
        folder, capabilities = checked_folder(args, cfg)
        address = args.address or lan_address()
        if args.broker_url:
            url, ca_pem = args.broker_url, ""
        elif args.mosquitto:
            url, ca_pem = mosquitto_url(folder.path / "mosquitto.conf", address)
        else:
            url, ca_pem = broker_url(cfg, address)
        with tempfile.TemporaryDirectory(prefix="lam-wheel-") as built:
            wheel = Path(args.wheel).resolve() if args.wheel else pack_wheel(Path(built))
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            with folder.restored_on_failure():  # until the commands are out, a failure takes the user back
                add_user(args, cfg, folder, capabilities)
                server = WheelServer(wheel, "0.0.0.0", args.port)
            with server:
                wanted = ",".join(extras(capabilities))
                requirement = (f"lamcontrol{f'[{wanted}]' if wanted else ''} @ "
                               f"http://{address}:{server.port}/{wheel.name}#sha256={digest}")
                script = commands(args.agent_id, url, folder.password(args.agent_id), capabilities, requirement,
                                  folder.prefix, ca_pem)
                print(report(folder, args.agent_id, address, script, cfg["embedded_broker"]["listen"]), flush=True)
                monitor = dataclasses.replace(BrokerSettings.from_config(cfg), prefix=folder.prefix,
                                              username="monitor", password=folder.password("monitor"))
                online = wait_online(monitor, args.agent_id, args.wait)
    except (lamconfig.ConfigError, ValueError, ProtocolError, OSError) as exc:
        print(f"lam join: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    if not online:
        print(f"{args.agent_id} did not come online within {args.wait:g} seconds; its log says why: journalctl "
              f"--user -u lam-agent@{args.agent_id} (on {args.agent_id})", file=sys.stderr)
        return EXIT_FAILED
    print(f"\n{args.agent_id} is online. Try: lam send --agent {args.agent_id} \"echo hello from "
          f"{args.agent_id}\"", flush=True)
    return EXIT_OK


def report(folder: UserFolder, agent_id: str, address: str, script: str, listen: str) -> str:
    if folder.embedded:
        _, port = lamconfig.host_port(listen or "127.0.0.1:1883", "[embedded_broker] listen")
        broker = ("Start (or restart) the broker with these users, open to the network:\n"
                  f"  lam up --listen 0.0.0.0:{port}\n(users added later need no restart)")
    else:
        broker = ("Make Mosquitto read the new user: sudo systemctl reload mosquitto (or kill -HUP its pid).\n"
                  "A coordinator installed by lam systemd install reads the ACL when it starts: sudo systemctl "
                  "restart lam-coordinator")
    return (f"{agent_id} has an MQTT user, a password and an ACL entry in {folder.path}.\n{broker}\n\n"
            f"On {agent_id}, paste these (they hold its password: nowhere else, please):\n\n{script}\n\n"
            f"Serving the wheel from http://{address} and waiting for {agent_id} to come online "
            f"(Ctrl-C stops).")


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    join = sub.add_parser("join", parents=[config_option()], help="make a user for another machine's agent and "
                                                                  "print the commands that install and start it")
    join.add_argument("agent_id", metavar="NAME", help="the new agent's id, usually that machine's host name")
    join.add_argument("--capability", "-c", action="append",
                      help=f"capabilities it offers (default: {', '.join(DEFAULT_CAPABILITIES)})")
    join.add_argument("--address", help="this machine's address as the new one reaches it (default: the address "
                                        "of the default route)")
    join.add_argument("--broker-url", help="the URL the new machine uses for the broker (default: ADDRESS and the "
                                           "broker's port, mqtts:// where it has a TLS listener)")
    join.add_argument("--mosquitto", metavar="DIR", help="Mosquitto is the broker: the folder lam mosquitto-config "
                                                          "wrote (default: the embedded broker's users)")
    join.add_argument("--local-id", help="id of this machine's own agent, for its user (default: [agent] id, "
                                         "else the host name)")
    join.add_argument("--wheel", help="the wheel to serve (default: packed from this installation, no package index "
                                      "needed)")
    join.add_argument("--port", type=int, default=0, help="port to serve the wheel on (default: any free one)")
    join.add_argument("--wait", type=float, default=1800.0, help="seconds to wait for the agent to come online")
    join.add_argument("--again", action="store_true", help="print the commands for an agent that has a user "
                                                            "already")
    join.set_defaults(func=cmd_join)
