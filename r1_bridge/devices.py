"""Paired R1s: the pairing token, device tokens (stored hashed), revocation, ``lam-bridge devices``.

A new R1 pairs by presenting the pairing token from the QR code; it is then issued a device
token of its own, of which only an argon2 hash is kept. An id that is already paired is not
paired again on the pairing token alone (anyone who saw the QR code could take the R1's place):
the connection must prove it is that R1 (its device token, or a signature by its pinned key), or
the owner approves the new pairing (``lam-bridge devices approve ID`` or ``/r1/pair``). Revoking a
device also replaces the pairing token, since the revoked R1 knows the old one and could
otherwise pair again under another name; R1s still paired keep working with their device tokens.

Everything lives in one JSON file in the state directory (mode 0600), re-read on every call
and rewritten atomically under a file lock, so ``lam-bridge devices revoke`` takes effect in
a running bridge at the device's next request.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from lamcontrol.config import new_secret, state_dir, write_private

try:
    import fcntl
except ImportError:  # Windows: one bridge process per state directory is assumed there
    fcntl = None

FILE_NAME = "r1-devices.json"
HASHER = PasswordHasher()
APPROVAL_WINDOW = 600.0  # seconds an owner's approval of a new pairing waits for the R1 to use it
MAX_REQUESTS = 50  # pairing requests kept for the owner to see; the oldest go first


def new_token() -> str:
    return new_secret(32)


@dataclass
class Device:
    """One R1 that paired with this bridge."""

    id: str
    name: str = ""
    platform: str = ""
    family: str = ""
    token_hash: str = ""
    public_key: str = ""  # Base64url Ed25519 key, pinned when the device proved it holds it
    state: str = "active"  # or "revoked"
    paired: float = field(default_factory=time.time)
    last_seen: float = 0.0

    @property
    def active(self) -> bool:
        return self.state == "active"


class DeviceStore:
    """The pairing token and the paired devices, persisted in ``path``."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else state_dir() / FILE_NAME
        self._lock = threading.Lock()

    # -- file access ------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive access to the file, across threads and processes."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_suffix(".lock"), "a") as lock_file:
            if fcntl:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot read the paired devices in {self.path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.setdefault("devices", {}), dict):
            raise RuntimeError(f"the paired devices in {self.path} are damaged: not a JSON object")
        data.setdefault("pairing_token", "")
        if not isinstance(data.setdefault("requests", {}), dict):
            raise RuntimeError(f"the paired devices in {self.path} are damaged: requests is not a JSON object")
        return data

    def _device(self, record: dict) -> Device:
        try:
            return Device(**record)
        except TypeError as exc:
            raise RuntimeError(f"the paired devices in {self.path} are damaged: {exc}") from None

    def _write(self, data: dict) -> None:
        write_private(self.path, json.dumps(data, indent=1))

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict]:
        with self._locked():
            data = self._read()
            yield data
            self._write(data)

    # -- the pairing token ------------------------------------------------------------

    def pairing_token(self) -> str:
        """The token the pairing QR carries; made on first use."""
        with self._editing() as data:
            if not data["pairing_token"]:
                data["pairing_token"] = new_token()
            return data["pairing_token"]

    def rotate_pairing_token(self) -> str:
        """Replace the pairing token: old QR codes stop working, paired devices do not."""
        with self._editing() as data:
            data["pairing_token"] = new_token()
            return data["pairing_token"]

    def is_pairing_token(self, token: str) -> bool:
        with self._locked():
            current = self._read()["pairing_token"]
        return bool(current) and hmac.compare_digest(current.encode(), token.encode())

    # -- devices ----------------------------------------------------------------------

    def devices(self) -> list[Device]:
        with self._locked():
            return [self._device(record) for record in self._read()["devices"].values()]

    def get(self, device_id: str) -> Device | None:
        with self._locked():
            record = self._read()["devices"].get(device_id)
        return self._device(record) if record else None

    def pair(self, device_id: str, name: str = "", platform: str = "", family: str = "", public_key: str = "",
             address: str = "") -> str | None:
        """Record a device and return its new device token (only the hash is kept).

        An id already paired and active is paired again only when ``public_key`` is the key
        pinned for it (the connection was signed by it) or the owner approved a request for it
        within APPROVAL_WINDOW; otherwise the attempt is kept as a request for the owner to
        approve, and the answer is None.
        """
        token = new_token()
        device = Device(device_id, name, platform, family, HASHER.hash(token), public_key, last_seen=time.time())
        with self._editing() as data:
            known, requests = data["devices"].get(device_id), data["requests"]
            if known and known.get("state") == "active" and not (known.get("public_key") and
                                                                  known["public_key"] == public_key):
                approved = requests.get(device_id, {}).get("approved", 0)
                if time.time() - approved > APPROVAL_WINDOW:
                    requests.pop(device_id, None)  # newest last
                    requests[device_id] = {"name": name, "platform": platform, "address": address,
                                           "requested": time.time(), "approved": approved}
                    while len(requests) > MAX_REQUESTS:
                        requests.pop(next(iter(requests)))
                    return None
            requests.pop(device_id, None)
            data["devices"][device_id] = asdict(device)
        return token

    def requests(self) -> dict[str, dict]:
        """Pairing requests for ids already paired, waiting for the owner: id -> name, address, when."""
        with self._locked():
            return dict(self._read()["requests"])

    def approve(self, device_id: str) -> bool:
        """Let the next pairing of ``device_id`` (within APPROVAL_WINDOW) replace the paired R1; False
        when nothing asked to pair under that id."""
        with self._editing() as data:
            request = data["requests"].get(device_id)
            if request is None:
                return False
            request["approved"] = time.time()
        return True

    def authenticate(self, device_id: str, token: str) -> bool:
        """True when ``token`` is the device token of this active device; notes when it was seen."""
        device = self.get(device_id)
        if device is None or not device.active or not device.token_hash:
            return False
        try:
            HASHER.verify(device.token_hash, token)
        except (VerificationError, InvalidHashError):
            return False
        with self._editing() as data:
            record = data["devices"].get(device_id)
            if record is None or record["state"] != "active":  # revoked while we checked
                return False
            record["last_seen"] = time.time()
        return True

    def is_active(self, device_id: str) -> bool:
        device = self.get(device_id)
        return device is not None and device.active

    def revoke(self, device_id: str) -> bool:
        """Refuse this device from now on; False when no active device has that id."""
        with self._editing() as data:
            record = data["devices"].get(device_id)
            if record is None or record["state"] != "active":
                return False
            record.update(state="revoked", token_hash="")
            data["requests"].pop(device_id, None)  # a revoked id pairs again with the new code, no approval
            data["pairing_token"] = new_token()
        return True


# -- lam-bridge devices ---------------------------------------------------------------

def format_time(ts: float) -> str:
    """A timestamp as local date and minute, or "never"."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "never"


def cmd_list(store: DeviceStore, args: argparse.Namespace) -> int:
    devices = store.devices()
    if not devices:
        print("No R1 is paired. Open /r1/pair on the bridge and scan the code with the R1.")
        return 0
    width = max(len("DEVICE"), *(len(device.id) for device in devices))
    print(f"{'DEVICE':<{width}}  {'NAME':<18} {'STATE':<8} {'PAIRED':<17} LAST SEEN")
    for device in sorted(devices, key=lambda d: d.paired):
        print(f"{device.id:<{width}}  {(device.name or '-')[:18]:<18} {device.state:<8} "
              f"{format_time(device.paired):<17} {format_time(device.last_seen)}")
    for device_id, request in store.requests().items():
        print(f"\n{device_id} is paired, and {request.get('address') or 'a client'} asked to pair under that id on "
              f"{format_time(request.get('requested', 0))}. If that was your R1 (reset, or lost its token): "
              f"lam-bridge devices approve {device_id}")
    return 0


def cmd_revoke(store: DeviceStore, args: argparse.Namespace) -> int:
    if not store.revoke(args.device):
        print(f"No paired R1 has the id {args.device!r} (see `lam-bridge devices list`).", file=sys.stderr)
        return 1
    print(f"Revoked {args.device}. The pairing code changed too: R1s still paired keep working; "
          "to pair another one, scan the new code on /r1/pair.")
    return 0


def cmd_approve(store: DeviceStore, args: argparse.Namespace) -> int:
    if not store.approve(args.device):
        print(f"Nothing asked to pair as {args.device!r} (see `lam-bridge devices list`).", file=sys.stderr)
        return 1
    print(f"Approved: the next R1 to pair as {args.device} within {APPROVAL_WINDOW / 60:g} minutes replaces the "
          "one paired now, whose device token then stops working.")
    return 0


def cmd_new_code(store: DeviceStore, args: argparse.Namespace) -> int:
    store.rotate_pairing_token()
    print("Made a new pairing code; the old QR code no longer pairs. Paired R1s keep working.")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``devices [list|revoke ID|new-code]`` to a command's subparsers."""
    parser = subparsers.add_parser("devices", help="list paired R1s, revoke one, approve one's new pairing, or "
                                                   "make a new pairing code",
                                   description=f"Paired R1s are kept in {FILE_NAME} in the state directory.")
    actions = parser.add_subparsers(dest="devices_action")
    actions.add_parser("list", help="list paired R1s (the default)")
    revoke = actions.add_parser("revoke", help="refuse one R1 from now on (also changes the pairing code)")
    revoke.add_argument("device", help="the device id shown by `lam-bridge devices list`")
    approve = actions.add_parser("approve", help="let a client pair again under the id of an R1 already paired "
                                                 "(an R1 that was reset); its old device token stops working")
    approve.add_argument("device", help="the device id shown by `lam-bridge devices list`")
    actions.add_parser("new-code", help="replace the pairing code shown on /r1/pair")


def run_command(args: argparse.Namespace, config: dict | None = None) -> int:
    """Run the ``devices`` subcommand chosen in ``args`` (called like the bridge's other commands,
    with its configuration, which the device file does not depend on); returns the exit status."""
    commands = {"list": cmd_list, "revoke": cmd_revoke, "approve": cmd_approve, "new-code": cmd_new_code}
    store = DeviceStore()
    try:
        return commands[args.devices_action or "list"](store, args)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
