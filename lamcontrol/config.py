"""One TOML file configures every process; defaults work with no file at all.

Where things are looked for, first match wins:

* the config file: ``--config``, then ``$LAM_CONFIG``, then ``~/.config/lamcontrol/config.toml``,
  then ``/etc/lamcontrol/config.toml``;
* the broker: ``--broker``, then ``$LAM_BROKER``, then ``[broker] url`` in the file.

Secrets never need to live in the file: every ``*_file`` key names a file that holds one,
and ``$LAM_BROKER_PASSWORD`` overrides the broker password.
"""

from __future__ import annotations

import copy
import os
import socket
import tomllib
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "broker": {
        "url": "mqtt://127.0.0.1:1883",
        "username": "",
        "password": "",
        "password_file": "",
        "ca_file": "",
        "cert_file": "",
        "key_file": "",
        "tls_insecure": False,
        "keepalive": 30,
        "prefix": "lam",
        "max_payload": 64 * 1024,
    },
    "embedded_broker": {
        "listen": "127.0.0.1:1883",
        "websocket": "",
        "password_file": "",
        "allow_anonymous": True,
    },
    "coordinator": {
        "journal": "",  # default: journal.db in the state directory
        "journal_days": 7.0,  # answered prompts are kept this long
        "ack_timeout": 5.0,
        "prompt_timeout": 60.0,
        "task_timeout": 45.0,
        "confirm_window": 30.0,
        "heartbeat": 30.0,
        "metrics_port": 0,  # Prometheus metrics on this port; 0 = off
        "metrics_bind": "127.0.0.1",
        "max_prompt_timeout": 600.0,
        "warmup": 3.0,
        "retry_round": 1.0,
        "tick": 0.1,
        "prune_every": 3600.0,
        "legacy_results": False,
    },
    "homeassistant": {
        "enabled": True,
        "discovery_prefix": "homeassistant",
    },
    "agent": {
        "id": "",
        "capabilities": ["echo"],
        "max_concurrent": 4,
        "heartbeat": 30.0,
        "stop_grace": 10.0,
    },
    "groq": {
        "api_key": "",
        "api_key_file": "",
        "model": "openai/gpt-oss-20b",
        "base_url": "",
        "timeout": 10.0,
        "max_retries": 1,
        "reasoning_effort": "low",
    },
    "bridge": {
        "listen": "127.0.0.1:8080",
        "public_url": "",  # the address the R1 uses, for the install QR code (default: as requested)
        "cert_file": "",  # HTTPS when both are set
        "key_file": "",
        "cors_origins": [],  # e.g. ["https://example.org"]; empty: no cross-origin access
        "max_wait": 30.0,  # longest "wait" a client may ask for, in seconds
        "max_body": 16 * 1024,
        "threads": 16,
        "token_file": "",  # default: bridge-tokens.json in the state directory
        "admin_file": "",  # default: bridge-admin.json in the state directory
        "secret_key_file": "",  # default: bridge-secret.key in the state directory
        "login_attempts": 5,  # failed logins or token guesses allowed per client address...
        "login_window": 300.0,  # ...within this many seconds
        "metrics_listen": "",  # e.g. "127.0.0.1:9108"; empty: /metrics on the bridge, behind a token
        "keep": 1000,  # prompts and tasks remembered for the status endpoints
        "stream_max_age": 300.0,  # seconds a dashboard's live stream lasts before the browser reconnects
        "title": "LAMControl",
        "theme_color": "#FE5000",
    },
    "capabilities": {},
}

SEARCH_PATH = ("~/.config/lamcontrol/config.toml", "/etc/lamcontrol/config.toml")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what to fix."""


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


def merge(base: dict, override: dict) -> dict:
    """``base`` updated recursively with ``override``."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(path: str | None = None, broker: str | None = None) -> dict[str, Any]:
    """The merged configuration, with the broker URL precedence applied."""
    config = copy.deepcopy(DEFAULTS)
    found = config_path(path)
    if found:
        try:
            config = merge(config, tomllib.loads(found.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{found}: {exc}") from None
        config["path"] = str(found)
    url = broker or os.environ.get("LAM_BROKER")
    if url:
        config["broker"]["url"] = url
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


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (secrets, tokens, hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


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
