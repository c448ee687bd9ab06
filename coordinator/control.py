"""The coordinator's own commands, on ``lam/coordinator/request``: restart, and the log level.

Home Assistant's Restart button and Log level select send them (``mosquitto_pub`` can too, where
the ACL lets it write that topic). Nothing else can be asked: the request is a
:class:`~lamcontrol.protocol.CoordinatorRequest`, refused on ``lam/errors`` when it is anything
but these two. A restart stops the coordinator cleanly (offline presence, journal closed) and
runs it again in the same process, so systemd and ``lam up`` keep following it. A log level
applies at once and is reported, retained, on ``lam/state/coordinator/settings``.

A request is never kept: one found retained (published with the retain flag by mistake, maybe
long ago) is not acted on, or every start would restart the coordinator again; the bus refuses it
on ``lam/errors`` and clears it, as it does any message retained where nothing may be.
"""

from __future__ import annotations

import json
import logging

from lamcontrol.bus import Bus
from lamcontrol.protocol import CoordinatorAction, CoordinatorRequest
from lamcontrol.service import request_restart

from .events import Events

log = logging.getLogger(__name__)


def extension(cfg: dict) -> type[Control]:
    """Always on: these commands are the coordinator's own."""
    return Control


def log_level() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()


class Control:
    """Answers the coordinator's own requests."""

    def __init__(self, bus: Bus, events: Events) -> None:
        self.bus = bus
        self.topics = bus.topics
        bus.subscribe(CoordinatorRequest, self.on_request)
        bus.on_connect(self.report)

    def on_request(self, request: CoordinatorRequest) -> None:
        if request.action == CoordinatorAction.LOG_LEVEL:
            logging.getLogger().setLevel(request.value.upper())
            log.warning("log level set to %s", request.value)
            self.report()
        else:
            log.warning("restart asked for over MQTT")
            request_restart()

    def report(self) -> None:
        """The settings that can change, retained (Home Assistant's select reads them)."""
        self.bus.publish_raw(self.topics.coordinator_settings, json.dumps({"log_level": log_level()}), retain=True)
