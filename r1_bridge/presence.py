"""Which agents the bridge believes in: presences are forgotten once their agent has gone quiet."""

from __future__ import annotations

import logging
import time

from lamcontrol.protocol import Presence

from .relay import Relay

log = logging.getLogger(__name__)

STALE_AFTER_BEATS = 3  # a live agent republishes its presence every heartbeat


def expire_presences(relay: Relay, now: float | None = None) -> list[str]:
    """Forget agents not heard from for ``STALE_AFTER_BEATS`` heartbeats; their ids.

    An old presence is left over (a crashed agent's that its broker kept, or a fake one); the
    bridge neither shows it nor counts on it. (Agents' clocks are taken to be roughly right.)
    """
    now = time.time() if now is None else now
    stale = [agent_id for agent_id, presence in list(relay.agents.items())
             if now - presence.ts > STALE_AFTER_BEATS * max(presence.heartbeat, 1.0)]
    for agent_id in stale:
        relay.agents.pop(agent_id, None)
    if stale:
        log.info("forgot agents not heard from in %d heartbeats: %s", STALE_AFTER_BEATS, ", ".join(stale))
    return stale


def known_agents(relay: Relay) -> list[Presence]:
    """Every agent heard from lately, online or not."""
    expire_presences(relay)
    return list(relay.agents.values())


def online_agents(relay: Relay) -> list[Presence]:
    return [presence for presence in known_agents(relay) if presence.state == "online"]
