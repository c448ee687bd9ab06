"""Who may use the bridge: API tokens, the admin password, CSRF tokens and a rate limit.

Tokens are long random strings; only their SHA-256 is stored (they are not guessable, so a
fast hash is enough and keeps each request cheap). The admin password is stored as an
argon2 hash. Both files are re-read when they change on disk, so ``lam-bridge token
revoke`` and ``lam-bridge passwd`` take effect on a running bridge.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from lamcontrol.config import new_secret, write_private

TOKEN_BYTES = 32


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class JsonFile:
    """A small JSON document on disk, re-read whenever its modification time changes."""

    def __init__(self, path: Path, empty: dict) -> None:
        self.path = Path(path)
        self.empty = empty
        self._data: dict = json.loads(json.dumps(empty))
        self._stamp: float | None = None
        self._lock = threading.Lock()

    def read(self) -> dict:
        with self._lock:
            try:
                stamp = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                self._data, self._stamp = json.loads(json.dumps(self.empty)), None
                return self._data
            if stamp != self._stamp:
                self._data, self._stamp = json.loads(self.path.read_text()), stamp
            return self._data

    def write(self, data: dict) -> None:
        with self._lock:
            write_private(self.path, json.dumps(data, indent=1))
            self._data, self._stamp = data, self.path.stat().st_mtime_ns

    @property
    def exists(self) -> bool:
        return self.path.exists()


class TokenStore:
    """API tokens, kept as hashes: ``create`` returns the only copy of a new token."""

    def __init__(self, path: Path) -> None:
        self.file = JsonFile(path, {"tokens": []})

    def create(self, name: str) -> str:
        token = new_secret(TOKEN_BYTES)
        data = self.file.read()
        entry = {"id": digest(token)[:8], "name": name, "hash": digest(token), "created": time.time()}
        self.file.write({"tokens": [*data["tokens"], entry]})
        return token

    def list(self) -> list[dict]:
        return [{k: v for k, v in entry.items() if k != "hash"} for entry in self.file.read()["tokens"]]

    def revoke(self, token_id: str) -> bool:
        tokens = self.file.read()["tokens"]
        kept = [t for t in tokens if t["id"] != token_id and t["name"] != token_id]
        if len(kept) == len(tokens):
            return False
        self.file.write({"tokens": kept})
        return True

    def check(self, token: str) -> dict | None:
        """The entry of a valid token, or None."""
        wanted = digest(token)
        found = None
        for entry in self.file.read()["tokens"]:
            if hmac.compare_digest(entry["hash"], wanted):
                found = entry
        return found

    @property
    def empty(self) -> bool:
        return not self.file.read()["tokens"]


class AdminPassword:
    """The dashboard's one login, stored as an argon2 hash."""

    USERNAME = "admin"

    def __init__(self, path: Path) -> None:
        self.file = JsonFile(path, {})
        self.hasher = PasswordHasher()

    @property
    def is_set(self) -> bool:
        return bool(self.file.read().get("hash"))

    def set(self, password: str) -> None:
        if len(password) < 8:
            raise ValueError("the password must be at least 8 characters long")
        self.file.write({"username": self.USERNAME, "hash": self.hasher.hash(password), "changed": time.time()})

    def generate(self) -> str:
        password = new_secret(12)
        self.set(password)
        return password

    def verify(self, username: str, password: str) -> bool:
        stored = self.file.read()
        if not stored.get("hash") or not hmac.compare_digest(username.encode(), self.USERNAME.encode()):
            return False
        try:
            return self.hasher.verify(stored["hash"], password)
        except (VerificationError, InvalidHashError):
            return False

    @property
    def fingerprint(self) -> str:
        """Changes whenever the password does: sessions carry it, so a new password logs everyone out."""
        return digest(self.file.read().get("hash", ""))[:16]


class RateLimiter:
    """At most ``limit`` failures per key (an address, a user, a credential) within ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures[key]
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def failures(self, key: str) -> int:
        """Failures counted against ``key`` within the window."""
        with self._lock:
            return len(self._recent(key, time.monotonic()))

    def retry_after(self, *keys: str) -> int:
        """Seconds until none of ``keys`` is locked out; 0 when all may try now."""
        now = time.monotonic()
        wait = 0
        with self._lock:
            for key in keys:
                failures = self._recent(key, now)
                if len(failures) >= self.limit:
                    wait = max(wait, int(failures[-self.limit] + self.window - now + 0.999), 1)
        return wait

    def fail(self, *keys: str) -> list[str]:
        """Count a failure against each key; the keys it locked out just now."""
        now = time.monotonic()
        locked = []
        with self._lock:
            for key in keys:
                failures = self._failures[key]
                failures.append(now)
                if len(self._recent(key, now)) == self.limit:
                    locked.append(key)
        return locked


def load_secret_key(path: Path) -> bytes:
    """The key that signs session cookies, made on first use and kept across restarts."""
    path = Path(path)
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(32)
    write_private(path, key.hex())
    return key


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)
