"""Authentication for the embedded broker when no password file is configured.

aMQTT throws away the queued messages of anonymous sessions when they disconnect. Every
LAMControl client presents a user name, so a session with a name is treated as a known
client and keeps its queue across reconnects; nameless clients (``mosquitto_sub`` with no
``-u``) are let in as anonymous only while ``allow_anonymous`` is on.
"""

from __future__ import annotations

from dataclasses import dataclass

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session


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
