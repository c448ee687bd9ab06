"""One TOML file configures every process; defaults work with no file at all.

Every key lives once, in :data:`MODEL`, with its default and what it means; the example file
and the key table of docs/configuration.md are generated from it (``lam config example``), and a key the
model does not know is refused, with the closest known one suggested. Adding a key is one
line in its section.

Where things are looked for, first match wins:

* the config file: ``--config``, then ``$LAM_CONFIG``, then ``~/.config/lamcontrol/config.toml``,
  then ``/etc/lamcontrol/config.toml``;
* the broker: ``--broker``, then ``$LAM_BROKER``, then ``[broker] url`` in the file, then the
  embedded broker's ``[embedded_broker] listen`` in the file (so that one setting moves the port
  for ``lam up`` and every command reading the same file), then 127.0.0.1:1883. ``load`` records
  which one it took in ``config["broker_origin"]``, for messages that say which broker was tried.

Values are checked too, with the section and the key named: a number of seconds above 0, a port,
a ``host:port``, a broker URL (:data:`MODEL` says which key takes what).

Secrets never need to live in the file: every ``*_file`` key names a file that holds one,
and ``$LAM_BROKER_PASSWORD`` overrides the broker password.
"""

from __future__ import annotations

import copy
import difflib
import importlib.metadata
import ipaddress
import os
import secrets
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from .protocol import DEFAULT_MAX_PAYLOAD, ProtocolError, check_id

CAPABILITY_GROUP = "lamcontrol.capabilities"

Check = Callable[[Any], str]  # a value -> what is wrong with it ('' when nothing)


@dataclass(frozen=True)
class Setting:
    """One config key: its default (which fixes its type), what it means, and what values it takes.

    ``state_file`` names the file in the state directory used while the value is empty;
    ``check`` says what is wrong with a value of the right type ('' when nothing).
    """

    default: Any
    help: str
    state_file: str = ""
    check: Check | None = None
    joins: str = ""  # a list of strings is taken too, joined with this (a broker's addresses)


def above(low: float) -> Check:
    """A number greater than ``low``."""
    return lambda value: "" if value > low else f"must be above {low:g}"


def at_least(low: float) -> Check:
    """A number of ``low`` or more."""
    return lambda value: "" if value >= low else f"must be {low:g} or more"


def port(value: int) -> str:
    return "" if 0 <= value < 65536 else "must be a port number, 0 to 65535"


def one_of(*choices: str) -> Check:
    return lambda value: "" if value in choices else f"must be one of {', '.join(choices)}"


def address(optional: bool = False) -> Check:
    """``host:port`` (``''`` too when ``optional``)."""
    def check(value: str) -> str:
        if optional and value == "":
            return ""
        try:
            host_port(value)
        except ConfigError:
            return "must look like host:port, e.g. 127.0.0.1:1883" + (" (or \"\" for none)" if optional else "")
        return ""
    return check


def url(*schemes: str, optional: bool = False, several: bool = False) -> Check:
    """A URL with one of ``schemes`` and a host (``''`` too when ``optional``); with ``several``, one or
    more separated by commas, where those after the first may leave the scheme out (the first's applies)."""
    def check(value: str) -> str:
        if optional and value == "":
            return ""
        items = [item.strip() for item in value.split(",")] if several else [value]
        first = urlsplit(items[0]).scheme if "://" in items[0] else ""
        for item in items:
            try:
                parts = urlsplit(item if "://" in item or not first else f"{first}://{item}")
                parts.port  # noqa: B018 (raises on a bad port)
            except ValueError:
                parts = None
            if parts is None or parts.scheme not in schemes or not parts.hostname:
                return (f"must be a URL such as {schemes[0]}://host:port ({', '.join(s + '://' for s in schemes)})"
                        + (", or several separated by commas" if several else ""))
        return ""
    return check


def topic_prefix(value: str) -> str:
    if not value or value.startswith("/") or value.endswith("/") or any(c in value for c in "+#\0"):
        return "must be one or more topic levels, without + or # and without a leading or trailing /"
    return ""


def some_id(value: str) -> str:
    """An id that can be a topic level, as the protocol takes it ('' for the default)."""
    if not value:
        return ""
    try:
        check_id(value, "")
    except ProtocolError as exc:
        return str(exc)
    return ""


SECONDS = above(0)


@dataclass(frozen=True)
class Section:
    """A ``[table]`` of the config file.

    ``fill`` is False for a section whose reader applies the defaults itself (``[openclaw]``
    takes its certificate from ``[bridge]`` unless it names its own).
    """

    help: str
    settings: dict[str, Setting] = field(default_factory=dict)
    fill: bool = True


MODEL: dict[str, Section] = {
    "broker": Section("how every component reaches the MQTT broker", {
        "url": Setting("mqtt://127.0.0.1:1883", "mqtt://host:port; mqtts:// for TLS, ws:// or wss:// for websockets; "
                                                "several nodes of a cluster as a list or mqtt://a:1883,b:1883,c:1883 "
                                                "(tried in turn); --broker and $LAM_BROKER win over it; unset: "
                                                "[embedded_broker] listen",
                       check=url("mqtt", "mqtts", "ws", "wss", several=True), joins=","),
        "username": Setting("", "MQTT user; empty: none (the embedded broker on loopback needs none)"),
        "password": Setting("", "better: password_file or $LAM_BROKER_PASSWORD"),
        "password_file": Setting("", "file holding the MQTT password"),
        "ca_file": Setting("", "CA certificate for mqtts:// and wss://; empty: the system's"),
        "cert_file": Setting("", "client certificate, for brokers that ask for one"),
        "key_file": Setting("", "private key of cert_file"),
        "tls_insecure": Setting(False, "skip the host name check (self-signed test brokers only)"),
        "keepalive": Setting(30, "seconds between MQTT keepalives", check=at_least(1)),
        "prefix": Setting("lam", "every topic starts with this", check=topic_prefix),
        "max_payload": Setting(DEFAULT_MAX_PAYLOAD, "bigger incoming messages are refused on lam/errors", check=at_least(1024)),
    }),
    "embedded_broker": Section("lam-broker, which lam up starts unless a broker is named", {
        "listen": Setting("127.0.0.1:1883", "host:port for plain MQTT; '' for none. Beyond loopback it needs "
                                            "password_file (lam join makes one). Set alone, every command reading "
                                            "this file uses it as the broker's address", check=address(optional=True)),
        "websocket": Setting("", "host:port for MQTT over websockets, e.g. 127.0.0.1:8081", check=address(optional=True)),
        "tls_listen": Setting("", "host:port for MQTT over TLS (mqtts://), e.g. 0.0.0.0:8883; needs cert_file",
                              check=address(optional=True)),
        "cert_file": Setting("", "server certificate (PEM) for tls_listen"),
        "key_file": Setting("", "private key of cert_file"),
        "password_file": Setting("", "argon2 password file: only its users get in (lam join, or "
                                     "lam-broker adduser FILE USER)"),
        "acl_file": Setting("", "topic rules per user, in Mosquitto's acl_file format (lam join writes it)"),
        "allow_anonymous": Setting(True, "clients with no user name may connect; with a password_file only from "
                                         "this machine (a proxy on it counts as this machine)"),
        "users_dir": Setting("", "where lam join keeps users, passwords and the ACL", state_file="mqtt"),
        "max_queued_messages": Setting(100_000, "messages held for one client that does not keep up (beyond those "
                                                "in flight); more are dropped, QoS 0 first", check=at_least(1)),
        "max_queued_bytes": Setting(64 * 1024 * 1024, "bytes of messages held for one client that does not keep up",
                                     check=at_least(64 * 1024)),
        "max_inflight_messages": Setting(100, "messages sent to one client and not yet acknowledged, at once",
                                        check=at_least(1)),
    }),
    "coordinator": Section("lam-coordinator: parsing, routing, the journal, replies", {
        "journal": Setting("", "SQLite journal", state_file="journal.db"),
        "journal_days": Setting(7.0, "answered prompts are kept this long", check=SECONDS),
        "ack_timeout": Setting(5.0, "seconds an agent has to accept a task before another gets it", check=SECONDS),
        "prompt_timeout": Setting(60.0, "every prompt is answered within this many seconds", check=SECONDS),
        "task_timeout": Setting(45.0, "seconds a task may run", check=SECONDS),
        "confirm_window": Setting(30.0, "seconds to say \"confirm\" after a power command", check=SECONDS),
        "heartbeat": Setting(30.0, "seconds between retained status messages", check=SECONDS),
        "metrics_port": Setting(0, "Prometheus metrics on this port; 0 = off", check=port),
        "metrics_bind": Setting("127.0.0.1", "address the metrics port listens on"),
        "max_prompt_timeout": Setting(600.0, "the longest metadata.timeout a prompt may ask for, in seconds",
                                      check=SECONDS),
        "warmup": Setting(10.0, "seconds after first reaching the broker to wait, while an agent heard of is "
                                "offline, before saying nobody offers a capability (3 s when none is): longer than "
                                "the 8 s an agent waits at most between tries to reach a broker that was down",
                          check=at_least(0)),
        "retry_round": Setting(1.0, "seconds between tries to place tasks that found no free agent", check=SECONDS),
        "tick": Setting(0.1, "shortest seconds between checks of deadlines and accept windows (each is checked as "
                             "it falls due)", check=SECONDS),
        "prune_every": Setting(3600.0, "seconds between prunings of the journal", check=SECONDS),
        "legacy_results": Setting(False, "also accept results on the old lam/results/<task_id> topic, which an "
                                         "ACL cannot bind to one agent"),
        "ack_grace": Setting(1.0, "seconds past an accept window the coordinator still waits for the `accepted` "
                                  "an agent sent within it", check=at_least(0)),
        "agent_grace": Setting(15.0, "seconds an agent that went offline keeps the tasks it accepted, to come back "
                                     "and report them (a broker restart sends every last will)", check=at_least(0)),
        "sources": Setting(1000, "sources (people, devices) whose recent commands and held confirmations are "
                                 "remembered; the least recently heard are forgotten first", check=at_least(1)),
        "source_rate": Setting(20.0, "prompts a second one source may send, sustained; more are answered "
                                     "`rejected` (0 = no limit)", check=at_least(0)),
        "source_burst": Setting(200.0, "prompts one source may send at once before source_rate applies",
                                check=at_least(1)),
        "max_waiting": Setting(1000, "prompts waiting to be understood, all sources together, served in turn "
                                     "per source; more are answered `rejected`", check=at_least(1)),
        "clock_skew": Setting(10.0, "seconds a source's clock may be off; a source further off is timed by when "
                                    "its prompts arrive (logged once per source)", check=SECONDS),
        "journal_max_prompts": Setting(100000, "answered prompts the journal keeps at most (the oldest go first)",
                                       check=at_least(1)),
        "acl_file": Setting("", "the broker's ACL (Mosquitto's format): an agent may offer only the capabilities "
                                "whose tasks its login may read; empty: the acl beside the credentials folder of "
                                "[broker] password_file, else the embedded broker's, when there is one"),
        "trusted_agents": Setting([], "agents taken at their word where no ACL says what their logins may read (a "
                                      "broker with users whose ACL is not known here, or one without users on "
                                      "another machine)"),
        "approved_specs": Setting([], "capabilities whose advertised spec is used even where it replaces the "
                                      "installed one or reads sentences an installed capability reads"),
    }),
    "cluster": Section("several coordinators on a NATS JetStream cluster: one leads under a lease, the others "
                       "stand by (docs/operations.md: A standby coordinator)", {
        "nats": Setting("", "nats://host:4222 of the cluster's nodes (a list, or comma-separated), for the lease and "
                            "the journal; empty: one coordinator, with the SQLite journal", joins=","),
        "lease": Setting(6.0, "seconds the leading coordinator's lease lasts unless renewed", check=SECONDS),
        "renew": Setting(1.5, "seconds between renewals of the lease (and between a standby's looks at it)",
                         check=SECONDS),
        "replicas": Setting(3, "copies JetStream keeps of the lease and the journal: the number of nodes, up to 5",
                            check=lambda value: "" if 1 <= value <= 5 else "must be 1 to 5"),
    }),
    "homeassistant": Section("Home Assistant MQTT discovery, published by the coordinator", {
        "enabled": Setting(True, "agents and the coordinator appear in Home Assistant"),
        "discovery_prefix": Setting("homeassistant", "Home Assistant's discovery prefix"),
    }),
    "agent": Section("lam-agent", {
        "id": Setting("", "the agent's id; empty: the host name", check=some_id),
        "capabilities": Setting(["echo"], "capabilities to offer (lam up offers every installed one instead)"),
        "max_concurrent": Setting(4, "tasks run at once", check=at_least(1)),
        "max_queued": Setting(8, "tasks accepted beyond max_concurrent when the agent will start them before their "
                                 "deadline, each started as a running one ends; 0 = none", check=at_least(0)),
        "heartbeat": Setting(30.0, "seconds between retained status messages", check=SECONDS),
        "stop_grace": Setting(10.0, "seconds running tasks get to finish on SIGTERM", check=at_least(0)),
    }),
    "groq": Section("the LLM parser; without a key the offline grammar answers", {
        "api_key": Setting("", "better: api_key_file or $GROQ_API_KEY"),
        "api_key_file": Setting("", "file holding the Groq API key"),
        "model": Setting("openai/gpt-oss-20b", "Groq model id"),
        "base_url": Setting("", "API base URL; empty: Groq itself", check=url("https", "http", optional=True)),
        "timeout": Setting(10.0, "seconds to wait for Groq", check=SECONDS),
        "max_retries": Setting(1, "retries after a failed call", check=at_least(0)),
        "reasoning_effort": Setting("low", "low, medium or high, for models that reason",
                                    check=one_of("low", "medium", "high")),
    }),
    "bridge": Section("lam-bridge: the HTTP API, the R1 page, the dashboard", {
        "listen": Setting("127.0.0.1:8080", "host:port for HTTP(S)", check=address()),
        "public_url": Setting("", "the address the R1 uses, for the install QR code, e.g. "
                                  "https://lam.example.net:8443; empty: as requested", check=url("https", "http", optional=True)),
        "cert_file": Setting("", "HTTPS certificate (an R1 loads creations over HTTPS only)"),
        "key_file": Setting("", "private key of cert_file"),
        "cors_origins": Setting([], "origins allowed cross-origin access, e.g. [\"https://example.org\"]"),
        "max_wait": Setting(30.0, "longest \"wait\" a client may ask for, in seconds", check=SECONDS),
        "max_body": Setting(16 * 1024, "largest request body, in bytes", check=at_least(1024)),
        "threads": Setting(16, "requests served at once", check=at_least(2)),
        "max_connections": Setting(200, "connections held open at once; idle ones close after 15 s, a request must "
                                        "arrive whole within 10 s", check=at_least(2)),
        "max_connections_per_address": Setting(20, "connections one client address may hold (behind a reverse proxy "
                                                   "every client has the proxy's address: raise it)", check=at_least(1)),
        "token_file": Setting("", "API token hashes", state_file="bridge-tokens.json"),
        "admin_file": Setting("", "the admin password's hash", state_file="bridge-admin.json"),
        "secret_key_file": Setting("", "key signing the dashboard's sessions", state_file="bridge-secret.key"),
        "login_attempts": Setting(5, "failed logins or token guesses allowed per client address...", check=at_least(1)),
        "login_window": Setting(300.0, "...within this many seconds", check=SECONDS),
        "metrics_listen": Setting("", "host:port for Prometheus metrics; empty: /metrics on the bridge, "
                                      "behind a token", check=address(optional=True)),
        "keep": Setting(1000, "prompts and tasks remembered for the status endpoints", check=at_least(1)),
        "stream_max_age": Setting(300.0, "seconds a dashboard's live stream lasts before the browser reconnects",
                                  check=SECONDS),
        "title": Setting("LAMControl", "the R1 page's title"),
        "theme_color": Setting("#FE5000", "the R1 page's colour"),
    }),
    "openclaw": Section("the R1's push-to-talk voice gateway, inside lam-bridge", {
        "enabled": Setting(True, "listen for R1s"),
        "host": Setting("0.0.0.0", "address to listen on (the R1 reaches it over the LAN)"),
        "port": Setting(18789, "port to listen on (0: any free one)", check=port),
        "cert_file": Setting("", "certificate for wss://; default: [bridge] cert_file"),
        "key_file": Setting("", "private key of cert_file; default: [bridge] key_file"),
        "reply_timeout": Setting(75.0, "seconds an R1 waits for a reply", check=SECONDS),
        "advertise": Setting([], "addresses for the pairing QR code; empty: this machine's LAN addresses"),
    }, fill=False),
}
CAPABILITIES = "capabilities"  # [capabilities.<name>]: each capability declares its own settings


def default(section: str, key: str) -> Any:
    """The default of ``[section] key``: written once, in :data:`MODEL`, for every reader of the setting."""
    return copy.deepcopy(MODEL[section].settings[key].default)


def setting(section: str, key: str) -> Any:
    """A dataclass field whose default is ``[section] key``'s (a list is copied for each instance)."""
    value = MODEL[section].settings[key].default
    if isinstance(value, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(value))
    return field(default=value)


def defaults() -> dict[str, Any]:
    """Every section with its defaults (``[openclaw]`` stays as written; its reader fills it)."""
    return {name: {key: copy.deepcopy(s.default) for key, s in section.settings.items()} if section.fill else {}
            for name, section in MODEL.items()} | {CAPABILITIES: {}}


DEFAULTS: dict[str, Any] = defaults()
SEARCH_PATH = ("~/.config/lamcontrol/config.toml", "/etc/lamcontrol/config.toml")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what to fix."""


def refuse_unknown(where: str, given: Any, known: Any, what: str = "keys") -> None:
    """ConfigError naming what in ``given`` is not in ``known``, with the closest known name."""
    unknown = [name for name in given if name not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(known)) or 'none'}"
        raise ConfigError(f"{where} has unknown {what}: {', '.join(unknown)} ({hint})")


def checked(where: str, key: str, value: Any, default: Any) -> Any:
    """``value`` if it has the type of ``default`` (an int where a float goes is made a float)."""
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and (expected is bool or not isinstance(value, bool)):
        return value
    kinds = {bool: "true or false", int: "a whole number", float: "a number", str: "text in quotes", dict: "a table"}
    kind = f"{expected.__name__} ({kinds[expected]})" if expected in kinds else expected.__name__
    raise ConfigError(f"{where} {key} must be {kind}, not {value!r}")


def capability_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Every installed capability's entry point, by name (nothing is imported until one is loaded)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=CAPABILITY_GROUP)}


def installed_capabilities() -> list[str]:
    """Names of the installed capabilities."""
    return sorted(capability_entry_points())


def validate(config: dict[str, Any], source: str = "the config") -> dict[str, Any]:
    """``config`` (as read from TOML) with values checked against the model; ConfigError names the problem."""
    refuse_unknown(source, config, [*MODEL, CAPABILITIES], "sections")
    for name, values in config.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table, not {values!r}")
        if name == CAPABILITIES:
            refuse_unknown(f"{source}: [capabilities]", values, installed_capabilities(),
                           "capabilities (none installed by that name)")
            continue
        schema = MODEL[name].settings
        refuse_unknown(f"{source}: [{name}]", values, schema)
        for key, value in values.items():
            if schema[key].joins and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                value = schema[key].joins.join(value)
            values[key] = value = checked(f"{source}: [{name}]", key, value, schema[key].default)
            check = schema[key].check
            problem = check(value) if check else ""
            if problem:
                raise ConfigError(f"{source}: [{name}] {key} {problem}, not {value!r}")
    return config


def config_path(explicit: str | None = None) -> Path | None:
    """The config file to read, or None when there is none."""
    chosen = explicit or os.environ.get("LAM_CONFIG")
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    for candidate in SEARCH_PATH:
        path = Path(candidate).expanduser()
        if path.is_file():
            return path
    return None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``override``."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(path: str | None = None, broker: str | None = None) -> dict[str, Any]:
    """The merged configuration, with the broker URL precedence applied (see the module's description);
    ``config["broker_origin"]`` says where the URL came from."""
    config = copy.deepcopy(DEFAULTS)
    found = config_path(path)
    given: dict[str, Any] = {}
    if found:
        try:
            given = validate(tomllib.loads(found.read_text()), str(found))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{found}: {exc}") from None
        config = merge(config, given)
        config["path"] = str(found)
    listen = given.get("embedded_broker", {}).get("listen")
    where = found.resolve() if found else None  # given holds something only when a file was found
    if broker:
        config["broker"]["url"], origin = broker, "--broker"
    elif os.environ.get("LAM_BROKER"):
        config["broker"]["url"], origin = os.environ["LAM_BROKER"], "$LAM_BROKER"
    elif "url" in given.get("broker", {}):
        origin = f"[broker] url in {where}"
    elif listen:
        config["broker"]["url"], origin = f"mqtt://{local_address(listen)}", f"[embedded_broker] listen in {where}"
    else:
        origin = "the default"
    config["broker_origin"] = origin
    return config


def read_secret(value: str = "", file: str = "", env: str = "") -> str:
    """A secret from the environment, a file, or (last) the config value itself."""
    if env and os.environ.get(env):
        return os.environ[env]
    if file:
        try:
            return Path(file).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {file}: {exc.strerror}") from None
    return value


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file atomically, readable only by its owner unless ``mode`` says otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def new_secret(nbytes: int) -> str:
    """A random URL-safe string that never begins with "-", so it reads as a value after an option."""
    while (secret := secrets.token_urlsafe(nbytes)).startswith("-"):
        pass
    return secret


def default_agent_id() -> str:
    """The host name, made safe for a topic level."""
    name = socket.gethostname().split(".")[0].lower() or "agent"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def state_dir() -> Path:
    """Where journals, tokens and generated files live ($STATE_DIRECTORY under systemd)."""
    base = os.environ.get("STATE_DIRECTORY") or os.environ.get("LAM_STATE_DIR") or "~/.local/state/lamcontrol"
    path = Path(base).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_path(section: str, key: str, value: str = "") -> Path:
    """``value`` as a path, or when empty the key's file in the state directory (see ``Setting.state_file``)."""
    return Path(value).expanduser() if value else state_dir() / MODEL[section].settings[key].state_file


def host_port(value: str, what: str = "address") -> tuple[str, int]:
    """``host:port`` (``[::1]:1883`` for IPv6; an empty host is every interface) as a pair; ConfigError if not."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what} must look like host:port, e.g. 127.0.0.1:1883, not {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def joined(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_address(listen: str) -> str:
    """host:port that reaches a listener on this machine (its wildcard address is not one)."""
    host, port = host_port(listen, "listen address")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return joined(host, port)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_this_machine(host: str) -> bool:
    """True for the addresses of this machine: loopback, and every address of its own interfaces (a
    connection from this machine to one of them comes from that very address). Found by binding to
    it, which only works for an address the machine has, unless the kernel lets programs bind to
    any address (``ip_nonlocal_bind``), where only loopback counts."""
    if is_loopback(host):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if ip.is_unspecified or ip.is_multicast or nonlocal_bind(ip.version):
        return False
    try:
        with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


def nonlocal_bind(version: int) -> bool:
    """Linux lets programs bind to addresses this machine does not have."""
    try:
        return Path(f"/proc/sys/net/ipv{version}/ip_nonlocal_bind").read_text().strip() != "0"
    except OSError:
        return False


def bind_problem(host: str, port: int) -> str:
    """Why nothing could listen on ``host:port`` now ('' when it could)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""
