"""A client for LAMControl bridges over HTTP, with fail-over between several of them.

The successor of the original r1_client_distributed.py: lam send --http URL [--http
URL2 ...] tries the bridges in order, moves on when one cannot be reached or is not
healthy, and retries the round with back-off. The prompt id is chosen here and sent with
every attempt, so a retry can never make a command run twice (a bridge answers a known id
with the prompt it already has, and the coordinator drops a prompt id it has seen).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from lamcontrol import __version__
from lamcontrol.protocol import new_id

from .console import print_table

USER_AGENT = f"lamcontrol/{__version__}"
RETRY_STATUSES = (429, 500, 502, 503, 504)  # the prompt was not taken: another bridge may take it


class BridgeError(RuntimeError):
    """No bridge could take the prompt; the message says what each one answered."""


class Refused(BridgeError):
    """A bridge refused the request itself (bad token, bad input): trying others will not help."""


class Unreachable(Exception):
    pass


@dataclass
class BridgeClient:
    urls: list[str]
    token: str = ""
    attempts: int = 3
    backoff: float = 0.5
    ca_file: str = ""
    context: ssl.SSLContext | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("give at least one bridge URL")
        self.urls = [url.rstrip("/") for url in self.urls]
        if self.ca_file:
            self.context = ssl.create_default_context(cafile=self.ca_file)

    def call(self, base: str, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) from one bridge; Unreachable when there is no HTTP answer."""
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"{}")
            except ValueError:
                payload = {}
            return exc.code, payload if isinstance(payload, dict) else {}
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(str(reason)) from None

    def health(self, base: str, timeout: float = 5.0) -> tuple[float, int | None, dict[str, Any] | str]:
        """(seconds taken, HTTP status or None, health body or the connection error)."""
        started = time.monotonic()
        try:
            status, data = self.call(base, "GET", "/api/health", timeout=timeout)
        except Unreachable as exc:
            return time.monotonic() - started, None, str(exc)
        return time.monotonic() - started, status, data

    def send(self, prompt: str, wait: float = 30.0, source: str = "cli", metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """The prompt's final state (``status`` completed) or its last known state when time ran out."""
        body = {"prompt": prompt, "source": source, "metadata": metadata or {}, "id": new_id(), "wait": wait}
        deadline = time.monotonic() + wait
        failures: list[str] = []
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            for base in self.urls:
                try:
                    return self._send_to(base, body, deadline)
                except Unreachable as exc:
                    failures.append(f"{base}: {exc}")
        raise BridgeError("no bridge took the prompt: " + "; ".join(failures[-len(self.urls):]))

    def _send_to(self, base: str, body: dict[str, Any], deadline: float) -> dict[str, Any]:
        left = max(0.0, deadline - time.monotonic())
        status, data = self.call(base, "POST", "/api/prompt", {**body, "wait": left}, timeout=left + 10)
        if status in RETRY_STATUSES:
            raise Unreachable(f"HTTP {status} {data.get('error', '')}".strip())
        if status != 200:
            raise Refused(f"{base} refused the prompt (HTTP {status}): {data.get('error', 'no reason given')}")
        while data.get("status") == "pending" and (left := deadline - time.monotonic()) > 0:
            status, data = self.call(base, "GET", f"/api/prompt/{body['id']}/status?wait={left:.1f}",
                                     timeout=left + 10)
            if status != 200:
                raise Unreachable(f"HTTP {status} {data.get('error', '')}".strip())
        return data


# -- lam send --http / lam bridges ---------------------------------------------------------

def token_from(args: argparse.Namespace) -> str:
    return args.token or os.environ.get("LAM_TOKEN", "")


def send_command(args: argparse.Namespace) -> int:
    """``lam send --http URL ...``: exit 0 when the prompt succeeded, 1 when not, 2 when no bridge took it."""
    token = token_from(args)
    if not token:
        print("lam: --http needs an API token: --token TOKEN or $LAM_TOKEN (lam-bridge token create makes one)",
              file=sys.stderr)
        return 2
    client = BridgeClient(args.http, token=token, ca_file=args.ca_file or "")
    try:
        state = client.send(" ".join(args.prompt), wait=args.timeout, source=args.source,
                            metadata={"timeout": args.timeout})
    except Refused as exc:
        print(f"lam: {exc}", file=sys.stderr)
        return 1
    except BridgeError as exc:
        print(f"lam: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(state, ensure_ascii=False))
    elif state.get("status") in ("completed", "failed"):
        print(state.get("response", ""))
    else:
        print(f"no reply within {args.timeout:g} seconds (prompt {state.get('id')})", file=sys.stderr)
        return 1
    return 0 if state.get("result", {}).get("status") == "succeeded" else 1


def health_rows(client: BridgeClient) -> tuple[list[list[str]], list[dict[str, Any]]]:
    rows = [["BRIDGE", "STATUS", "BROKER", "COORDINATOR", "AGENTS", "PROMPTS", "UPTIME", "VERSION", "MS"]]
    report = []
    for base in client.urls:
        took, status, data = client.health(base)
        if isinstance(data, dict) and "status" in data:
            stats = data.get("stats", {})
            rows.append([base, data["status"], data.get("broker", "?"), data.get("coordinator", "?"),
                         f"{data.get('online_workers', 0)}/{data.get('workers', 0)}",
                         str(stats.get("total_prompts", "?")), f"{data.get('uptime', 0):.0f}s",
                         data.get("version", "?"), f"{took * 1000:.0f}"])
            report.append({"url": base, "http_status": status, **data})
        else:
            error = data if isinstance(data, str) else f"HTTP {status}"
            rows.append([base, "unreachable", "-", "-", "-", "-", "-", "-", f"{took * 1000:.0f}"])
            report.append({"url": base, "status": "unreachable", "error": error})
    return rows, report


def bridges_command(args: argparse.Namespace) -> int:
    """``lam bridges --http URL ... [--monitor]``: each bridge's health, once or refreshed until Ctrl-C."""
    client = BridgeClient(args.http, ca_file=args.ca_file or "")
    clear = args.monitor and sys.stdout.isatty()
    try:
        while True:
            rows, report = health_rows(client)
            if clear:
                print("\033[H\033[2J", end="")
            if args.json:
                print(json.dumps(report), flush=True)
            else:
                print_table(rows)
                if args.monitor:
                    print(time.strftime("%H:%M:%S"), "- refreshing every", f"{args.interval:g}s; Ctrl-C stops", flush=True)
            if not args.monitor:
                return 0 if all(r.get("status") == "healthy" for r in report) else 1
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def add_arguments(send: argparse.ArgumentParser, sub: Any) -> None:
    """The ``--http`` options of ``lam send`` and the ``lam bridges`` command."""
    send.add_argument("--http", action="append", metavar="URL",
                      help="send through this bridge instead of MQTT; repeat for fail-over (https://host:8080)")
    send.add_argument("--token", help="API token for --http (default: $LAM_TOKEN)")
    bridges = sub.add_parser("bridges", help="health of HTTP bridges (--monitor to keep watching)")
    bridges.add_argument("--http", action="append", metavar="URL", required=True, help="a bridge; repeat for more")
    bridges.add_argument("--monitor", action="store_true", help="refresh until Ctrl-C")
    bridges.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    bridges.add_argument("--ca-file", help="CA certificate for https:// bridges")
    bridges.add_argument("--json", action="store_true", help="print their health as JSON")
    bridges.set_defaults(func=bridges_command)
