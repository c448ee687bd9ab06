"""One coordinator per bus: the check a coordinator makes before it connects.

Two coordinators on one broker take each other's session (they share a client id) and each
answers prompts for tasks the other ran. So before it connects, a coordinator

* locks its journal (``<journal>.lock``, held until the process ends, however it ends): a second
  coordinator with the same journal is stopped without touching the broker at all;
* looks at the bus under a client id of its own: a retained ``online`` presence on
  ``coordinator/status`` from a coordinator that still lives (it spoke within two of its
  heartbeats, and when it runs on this machine its process is there) is another coordinator
  serving this bus.

Either way it refuses to start, naming the other one (host, process, since when), and publishes
nothing, so the first one's presence stays as it is. On a NATS cluster (``[cluster] nats``) this
check is not made: there coordinators take turns under a lease and a second one stands by
(:mod:`.leader`); ``main`` chooses between the two, in one place.

The look logs in as the coordinator (the only login it has). On a broker that turns user names
into client ids (Mosquitto's ``use_username_as_clientid``, as ``lam mosquitto-config`` writes it)
that connection takes over the live coordinator's: the broker publishes its last will, and it
comes straight back, which is how the look knows it lives (see :func:`live_coordinator`). Its
session and what it was sent meanwhile are kept for it. The journal lock spares a second
coordinator on the same machine even that.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import IO

from lamcontrol.bus import BrokerSettings, Bus, BusError
from lamcontrol.config import ConfigError
from lamcontrol.protocol import CoordinatorPresence, ProtocolError, parse

try:
    import fcntl
except ImportError:  # Windows: no journal lock, the look on the bus still stands
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOOK = 3.0  # seconds to wait for the broker when looking
RETAINED = 0.5  # seconds to wait, once subscribed, for a retained presence to arrive
KNOCK = 3.0  # seconds a coordinator whose last will the look set off has to take its connection back
WILL_AGE = 60.0  # an offline presence made this soon after its coordinator started is its last will
HEARTBEATS = 2  # heartbeats without a word after which a coordinator's "online" is taken as stale
HOST = socket.gethostname()


class AnotherCoordinator(RuntimeError):
    """A coordinator already serves this bus; the message names it and says what to do."""


def claim(journal: Path, settings: BrokerSettings, look: float = LOOK) -> IO | None:
    """Make sure no other coordinator runs: the journal's lock (kept open for the life of the process,
    returned), then a look at the bus; AnotherCoordinator when one does."""
    lock = lock_journal(journal)
    try:
        rival = live_coordinator(settings, look)
    except BaseException:
        release(lock)
        raise
    if rival is not None:
        release(lock)
        raise AnotherCoordinator(refusal(rival, settings))
    return lock


def release(lock: IO | None) -> None:
    if lock is not None:
        lock.close()


def lock_journal(journal: Path) -> IO | None:
    """Hold ``<journal>.lock`` (the kernel lets go when the process ends, even on SIGKILL) and write who
    holds it; AnotherCoordinator naming the holder when it is taken."""
    if fcntl is None:
        return None
    path = journal.with_name(journal.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot use the journal {journal}: {exc.filename or path}: {exc.strerror} (see "
                          "[coordinator] journal, or the state directory: $LAM_STATE_DIR)") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        try:
            holder = json.loads(handle.read() or "{}")
        except ValueError:
            holder = {}
        handle.close()
        raise AnotherCoordinator(f"another coordinator uses the journal {journal}: {who(holder)}; stop it first, "
                                 "or give this one a journal of its own ([coordinator] journal)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": HOST, "started": time.time()}))
    handle.flush()
    return handle


class Look(Bus):
    """The connection a starting coordinator looks at the bus with, under a client id of its own. On a broker
    that makes user names client ids it is the coordinator's all the same, and connecting hands it a live
    coordinator's session: so it keeps that session (persistent), acknowledges nothing it is sent there, which
    stays for that coordinator, and takes its one subscription back before it leaves."""

    def _ack(self, burst: list) -> None:
        pass

    def leave(self, topic_filter: str) -> None:
        self._client.unsubscribe(topic_filter)
        self.stop()


def live_coordinator(settings: BrokerSettings, look: float = LOOK) -> CoordinatorPresence | None:
    """The coordinator serving the bus now, from its retained presence; None when there is none (or the
    broker cannot be reached: then there is nothing to take over either).

    On a broker that makes user names client ids, looking takes the connection of a live coordinator with
    the same login, and the broker publishes its last will: an offline presence of a coordinator that did not
    say goodbye. Such a coordinator comes back within a second and takes its connection back from the look;
    that is waited for (up to KNOCK seconds), and then it is the live one."""
    found: list[CoordinatorPresence] = []
    heard = threading.Event()
    topic = settings.topics.coordinator_status

    def keep(topic: str, payload: bytes) -> None:
        try:
            found.append(parse(CoordinatorPresence, payload))
        except ProtocolError:
            pass
        heard.set()

    bus = Look(settings, component="coordinator-look", client_id=f"{settings.prefix}-coordinator-look",
               persistent=True, report=False, ack_when_handled=True)
    bus.on(topic, keep)
    try:
        bus.start(timeout=look)
    except BusError as exc:
        log.warning("could not look for another coordinator: %s", exc)
        return None
    try:
        heard.wait(RETAINED)
        presence = found[-1] if found else None
        if presence is not None and presence.host == HOST and presence.pid == os.getpid():
            return None  # this very process, before it restarted itself (see coordinator/control.py)
        if presence is None or alive(presence):
            return presence
        if presence.online or not last_will(presence) or (presence.host == HOST and not process_runs(presence.pid)):
            return None  # stale, stopped, or a will of a process on this machine that is gone
        deadline = time.monotonic() + KNOCK
        while bus.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        return None if bus.connected.is_set() else presence
    finally:
        bus.leave(topic)


def last_will(presence: CoordinatorPresence) -> bool:
    """An offline presence written when its coordinator started (its last will), not when it stopped."""
    return bool(presence.started) and presence.ts - presence.started < WILL_AGE


def alive(presence: CoordinatorPresence, now: float | None = None) -> bool:
    """An ``online`` presence from a coordinator that still lives: heard within HEARTBEATS of its heartbeat,
    and, when it says it runs on this machine, its process is there."""
    now = time.time() if now is None else now
    if not presence.online or now - presence.ts > HEARTBEATS * presence.heartbeat + 1:
        return False
    return not (presence.host == HOST and presence.pid) or process_runs(presence.pid)


def process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, but someone else's
        return True
    return True


def who(holder: dict) -> str:
    """``pid 4242 on host desk, up since 2026-05-09 12:01:33``, from what it says of itself."""
    named = " ".join(filter(None, [f"pid {holder['pid']}" if holder.get("pid") else "",
                                   f"on host {holder['host']}" if holder.get("host") else ""])) or "a coordinator"
    if holder.get("started"):
        named += f", up since {datetime.fromtimestamp(holder['started']):%Y-%m-%d %H:%M:%S}"
    return named


def refusal(presence: CoordinatorPresence, settings: BrokerSettings) -> str:
    named = who({"pid": presence.pid, "host": presence.host, "started": presence.started})
    if presence.online:
        heard = f"last heard {max(0.0, time.time() - presence.ts):.0f} s ago"
    else:
        heard = "it took its connection back from this one's look: they share a login"
    return (f"another coordinator serves the broker at {settings.where}: {named} (client id "
            f"{settings.prefix}-coordinator, {heard}); stop it first, or use it (lam send, lam agents)")
