"""Several coordinators on a cluster: one leads under a lease, the others stand by.

The lease is one entry of a JetStream key-value bucket whose entries expire ``lease`` seconds
after they were last written (``[cluster] lease``, 6 s). A coordinator takes the lead by
creating the entry (refused while it exists) and keeps it by updating it every ``renew``
seconds with compare-and-set on its last revision. The revision of the creation is the
coordinator's **epoch**: revisions only grow, so a later leader always has a higher one. Tasks
carry it and agents refuse one lower than the highest they have seen; the journal (a stream,
:class:`~.journal.StreamJournal`) takes writes only from the coordinator that claimed it last.

A leader counts its lease from when it *sent* the renewal that the cluster confirmed, and
stops acting ``renew`` seconds before that would run out, so it is done before the cluster lets
the entry expire (its clock need only run at about the cluster's rate: no clocks are compared).
Frozen (SIGSTOP) or cut off past that, it wakes to find the lease gone: it connects to nothing,
writes nothing, leaves the broker without a word and starts over as a standby (the same
process, executed afresh, so nothing of its old state survives). A standby
looks at the lease every ``renew`` seconds, so it takes over within ``lease`` + ``renew``
seconds of the leader's last renewal; a leader that stops cleanly deletes the entry, and the
next one takes over at its next look.

Only the leader connects as the coordinator's MQTT session (``<prefix>-coordinator``, whose
queued prompts and results it inherits) and publishes; a standby holds only its NATS
connection, under a name of its own, and reads the journal as it is written.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

from lamcontrol.cluster import LEASE_KEY, ClusterSettings, Names, NatsLink
from lamcontrol.service import restart

from .journal import StreamJournal

log = logging.getLogger(__name__)

CLAIM_WITHIN = 30.0  # seconds a new leader may take to read the journal to its end and claim it


class Lease:
    """The lead among the coordinators of one topic prefix (see the module's docstring)."""

    def __init__(self, link: NatsLink, names: Names, holder: str, expiry: float, renew: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.link, self.names, self.holder = link, names, holder
        self.expiry, self.renew_every, self.clock = expiry, renew, clock
        self.revision = 0  # of our last write of the entry
        self.epoch = 0  # the revision that made us leader
        self.valid_until = 0.0  # on our clock: when we must have stopped acting
        self._kv: Any = None

    def setup(self, replicas: int) -> None:
        """Find the bucket, or make it."""
        self._kv = self.link.call(self._bucket(replicas), self.link.timeout * 3)

    async def _bucket(self, replicas: int) -> Any:
        from nats.js import api
        from nats.js.errors import BucketNotFoundError

        try:
            kv = await self.link.js.key_value(self.names.lease_bucket)
        except BucketNotFoundError:
            return await self.link.js.create_key_value(api.KeyValueConfig(
                bucket=self.names.lease_bucket, ttl=self.expiry, history=1, replicas=replicas))
        status = await kv.status()
        if status.ttl and abs(status.ttl - self.expiry) > 0.01:
            log.warning("the lease bucket keeps entries %.1f s, not the %.1f s configured: every coordinator "
                        "takes the bucket's", status.ttl, self.expiry)
            self.expiry = status.ttl
        return kv

    def held(self) -> bool:
        """Whether we may still act as the leader."""
        return self.clock() < self.valid_until

    def acquire(self) -> bool:
        """Take the lead if nobody holds it; True when we did."""
        from nats.js.errors import KeyWrongLastSequenceError

        sent = self.clock()
        try:
            revision = self.link.call(self._kv.create(LEASE_KEY, self.holder.encode()))
        except KeyWrongLastSequenceError:
            return False
        self.revision = self.epoch = revision
        self._renewed(sent)
        return True

    def renew(self) -> bool | None:
        """Keep the lead: True renewed, False lost (it expired and someone else may hold it), None when the
        cluster did not answer (try again while :meth:`held`)."""
        from nats.js.errors import KeyWrongLastSequenceError

        sent = self.clock()
        try:
            self.revision = self.link.call(self._kv.update(LEASE_KEY, self.holder.encode(), last=self.revision))
        except KeyWrongLastSequenceError:
            self.valid_until = 0.0
            return False
        except Exception as exc:  # no answer, no responders, a link reconnecting to another node
            log.warning("lease not renewed (%r); %.1f s left", exc, max(0.0, self.valid_until - self.clock()))
            return None
        self._renewed(sent)
        return True

    def _renewed(self, sent: float) -> None:
        self.valid_until = sent + self.expiry - self.renew_every

    def leader(self) -> str:
        """Who holds the lease now, as its holder wrote itself ('' when nobody does, or unknown)."""
        try:
            entry = self.link.call(self._kv.get(LEASE_KEY))
        except Exception:  # not found, deleted, or no answer
            return ""
        return (entry.value or b"").decode(errors="replace")

    def release(self) -> None:
        """Give the lead up at once (a clean stop): the next coordinator need not wait for the expiry."""
        self.valid_until = 0.0
        try:
            self.link.call(self._kv.delete(LEASE_KEY, last=self.revision))
        except Exception as exc:  # taken meanwhile, or no answer: the entry expires anyway
            log.info("lease not released (%r); it expires by itself", exc)


class Leadership:
    """A coordinator process on a cluster: stands by until it holds the lease, then leads until it
    stops or loses the lease, and then starts over as a standby (see the module's docstring).

    ``build(journal, epoch, may_connect)`` makes the coordinator that leads."""

    def __init__(self, cfg: dict, build: Callable[..., Any]) -> None:
        self.cfg = cfg
        self.build = build
        self.settings = ClusterSettings.from_config(cfg)
        self.names = Names(cfg["broker"]["prefix"])
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.link = NatsLink(self.settings, f"lam-coordinator-{self.holder}")
        self.lease = Lease(self.link, self.names, self.holder, self.settings.lease, self.settings.renew)
        self.journal: StreamJournal | None = None
        self.coordinator: Any = None
        self.deposed = False
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def ready(self) -> bool:
        """Standing by with the cluster in reach, or leading on a connected bus."""
        if self.coordinator is not None:
            return self.coordinator.bus.ready.is_set()
        return self.link.connected and self.journal is not None

    def may_act(self) -> bool:
        return self.lease.held() and not (self.journal is not None and self.journal.fenced.is_set())

    def stop(self) -> None:
        """Stop: a leader goes offline and hands the lease on at once."""
        self._stopping.set()
        self._done.wait(self.settings.lease + 10)
        if self.coordinator is not None:
            self.coordinator.stop(announce=not self.deposed)
            if not self.deposed:
                self.lease.release()
        elif self.journal is not None:
            self.journal.close()
        self.link.close()

    def _run(self) -> None:
        try:
            if self._connect() and self._stand_by():
                self._lead()
        except Exception:
            log.exception("coordinator: the lead could not be kept")
            self.deposed = True
        finally:
            self._done.set()
        if self.deposed and not self._stopping.is_set():
            self._stand_by_again()

    def _stand_by_again(self) -> None:
        """Leave the broker without a word, then run this program again in this process: a fresh
        standby, which keeps nothing of the state it led with (the journal has all of it)."""
        if self.coordinator is not None:
            self.coordinator.stop(announce=False)
        self.link.close()
        self._stopping.wait(self.settings.renew)  # never a hot loop
        if self._stopping.is_set():
            return
        log.info("coordinator %s standing by again", self.holder)
        restart()

    def _connect(self) -> bool:
        """Reach the cluster, then the lease bucket and the journal (retried until stopped)."""
        while not self._stopping.is_set():
            try:
                if not self.link.connected:
                    self.link.connect()
                self.lease.setup(self.settings.replicas)
                keep_days = float(self.cfg["coordinator"]["journal_days"])
                self.journal = StreamJournal(self.link, self.names, keep_days, self.settings.replicas, self.holder,
                                             may_write=self.may_act, confirm_within=self.settings.lease,
                                             max_prompts=int(self.cfg["coordinator"]["journal_max_prompts"]))
                self.journal.follow()
                return True
            except Exception as exc:  # no server yet, no JetStream quorum yet
                log.warning("coordinator: cannot reach the cluster's JetStream at %s (%r); trying again",
                            ", ".join(self.settings.servers), exc)
                self._stopping.wait(self.settings.renew)
        return False

    def _stand_by(self) -> bool:
        """Wait for the lease; True once it is ours."""
        seen = None
        while not self._stopping.is_set():
            try:
                if self.lease.acquire():
                    return True
            except Exception as exc:  # no answer: look again
                log.warning("coordinator: cannot look at the lease (%r)", exc)
            leader = self.lease.leader()
            if leader != seen:
                seen = leader
                log.info("coordinator standing by: %s leads", leader or "another coordinator")
            self._stopping.wait(self.settings.renew)
        return False

    def _lead(self) -> None:
        """Claim the journal and lead, renewing the lease meanwhile, until stopped or deposed."""
        epoch = self.lease.epoch
        log.info("coordinator %s takes the lead, epoch %d", self.holder, epoch)
        assert self.journal is not None
        renewing = threading.Thread(target=self._keep_lease, name="lease", daemon=True)
        renewing.start()
        self.journal.claim(epoch, timeout=CLAIM_WITHIN)
        if self.may_act():
            self.coordinator = self.build(self.journal, epoch, self.may_act)
            self.coordinator.start()
        renewing.join()

    def _keep_lease(self) -> None:
        while not self._stopping.wait(self.settings.renew):
            renewed = self.lease.renew()
            if renewed is False or not self.may_act():
                self.deposed = True
                why = ("its journal writes were refused or went unconfirmed" if self.journal and
                       self.journal.fenced.is_set() else "its lease ran out" if renewed is not False else
                       "its lease was taken")
                log.error("coordinator %s (epoch %d) no longer leads: %s; leaving to stand by again", self.holder,
                          self.lease.epoch, why)
                return
