"""Who may connect to the embedded broker, and which topics each user may use.

Without a password file, :class:`NamedSessionAuth` lets everyone in: aMQTT throws away the
queued messages of anonymous sessions when they disconnect, so a session with a name is
treated as a known client and keeps its queue; nameless clients (``mosquitto_sub`` with no
``-u``) are let in only while ``allow_anonymous`` is on.

With a password file (argon2 hashes, ``user:hash`` lines), :class:`PasswordFileAuth` lets in
its users, and clients that log in as nobody in it without a password only from this machine
(loopback, or any of its own addresses) while ``allow_anonymous`` is on (LAMControl's tools name themselves by their client id).
:class:`AclFileCheck` keeps each user to the topics of an ACL file in Mosquitto's format
(``user NAME`` then ``topic read|write|readwrite FILTER`` lines, ``pattern`` lines with ``%u``
and ``%c``), so ``lam join`` writes one ACL for both brokers. Both files are read again
when they change: a user added by ``lam join`` can connect without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from lamcontrol.acl import Reloading, parse_acl
from lamcontrol.config import is_this_machine


class NamedSessionAuth(BaseAuthPlugin):
    """Accept named sessions as known clients; anonymous ones only if allowed."""

    async def authenticate(self, *, session: Session) -> bool:
        if session.username:
            session.is_anonymous = False
            return True
        session.is_anonymous = True
        return bool(self.config.allow_anonymous)

    @dataclass
    class Config:
        allow_anonymous: bool = True


def hash_password(password: str) -> str:
    """An argon2 hash for a password file line."""
    from pwdlib import PasswordHash

    return PasswordHash.recommended().hash(password)


def password_file_text(hashes: dict[str, str]) -> str:
    """``user:hash`` lines."""
    return "".join(f"{user}:{hashed}\n" for user, hashed in hashes.items())


def is_local(session: Session) -> bool:
    """The client runs on this machine: it comes from loopback or from one of this machine's own
    addresses (as it does when it connects to the broker's LAN address)."""
    return is_this_machine(session.remote_address or "")


def parse_hashes(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {user.strip(): hashed.strip() for user, hashed in pairs}


class PasswordFileAuth(BaseAuthPlugin):
    """Users of an argon2 password file; nameless clients only from this machine, if allowed."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        from pwdlib import PasswordHash

        self.hasher = PasswordHash.recommended()
        self.users = Reloading(self.config.password_file, parse_hashes)

    async def authenticate(self, *, session: Session) -> bool:
        hashed = self.users.get().get(session.username or "")
        if not hashed and not session.password:  # no login (our tools name themselves by client id)
            session.is_anonymous = True
            return bool(self.config.allow_anonymous) and is_local(session)
        session.is_anonymous = False
        try:
            return bool(hashed) and self.hasher.verify(session.password or "", hashed)
        except Exception:  # an unreadable hash refuses this user, never the broker
            return False

    @dataclass
    class Config:
        password_file: str = ""
        allow_anonymous: bool = False


class AclFileCheck(BaseTopicPlugin):
    """Each user to the topics its ACL entry gives; nameless local clients (allowed by the auth) everywhere."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.acl = Reloading(self.config.acl_file, parse_acl)

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool:
        if action == Action.RECEIVE:
            return True  # what a client may read was decided when it subscribed
        if session is None or not topic:
            return False
        if session.is_anonymous or not session.username:
            return is_local(session)
        needed = "write" if action == Action.PUBLISH else "read"
        return self.acl.get().allows(session.username, topic, needed, session.client_id or "")

    @dataclass
    class Config:
        acl_file: str = ""
