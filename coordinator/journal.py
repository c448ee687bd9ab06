"""The coordinator's durable journal: SQLite in WAL mode on a single box (:class:`Journal`), or a
NATS JetStream stream every coordinator of a cluster reads (:class:`StreamJournal`), one interface.

A prompt is written before anything is done with it, each task as it is dispatched and
as its state changes, and the reply before it is published; the reply is marked sent once
the broker has acknowledged it. A coordinator killed at any moment reads back what was open
and finishes it, and publishes again the replies it had not seen acknowledged.

Commits append to the write-ahead log; :meth:`Journal.checkpoint`, on a connection of its own
and off the writer's path, copies it into the database file, so that the writer's own checkpoint
(SQLite's, past 1000 pages: it keeps the log's size bounded under load) finds little left to do.

When the disk is full or turns read-only, :meth:`Journal.hold` keeps the writes of what is already
under way in memory (the coordinator takes no new prompt meanwhile), and :meth:`Journal.retry`
writes them once it can. Answered prompts are pruned by age and beyond a number (``max_prompts``),
so a flood cannot grow the journal without end.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from lamcontrol.protocol import Prompt

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    received REAL NOT NULL,
    deadline REAL NOT NULL,
    reply TEXT,
    sent INTEGER NOT NULL DEFAULT 1  -- 0 from the reply's journaling until the broker acknowledged it
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    prompt_id TEXT NOT NULL REFERENCES prompts(id),
    position INTEGER NOT NULL,
    command TEXT NOT NULL,
    state TEXT NOT NULL,
    agent TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS tasks_by_prompt ON tasks(prompt_id, position);
CREATE TABLE IF NOT EXISTS probe (at REAL NOT NULL);  -- one row, rewritten to learn whether the disk takes writes
"""

# SQLite's primary result codes for a journal that cannot be written, and how to say so.
CANNOT_WRITE = {13: "the disk is full", 8: "it is read-only", 10: "the disk failed to write",
                14: "it cannot be opened"}


def cannot_write(error: BaseException) -> str:
    """Why ``error`` means the journal cannot be written now ('' for any other error)."""
    code = getattr(error, "sqlite_errorcode", None)
    return CANNOT_WRITE.get(code & 0xFF, "") if isinstance(code, int) else ""


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path``: the disk a person must free."""
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


class Journal:
    """Prompts, tasks and replies, durable across crashes."""

    failures: tuple[type[Exception], ...] = (sqlite3.Error,)  # what a transaction that did not commit raises

    def __init__(self, path: str | Path, keep_days: float = 7.0, max_prompts: int = 100_000) -> None:
        self.keep_days = keep_days
        self.max_prompts = max_prompts  # answered prompts kept at most, newest first
        self.path = Path(path).expanduser() if str(path) != ":memory:" else Path(":memory:")
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._depth = 0
        self.unwritable = ""  # why writes are held in memory now ('' while the journal writes)
        self._held: list[tuple[str, tuple]] = []  # the statements held meanwhile, in order
        self.added = 0  # prompts added since the last pruning
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._checkpointer = (sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
                              if str(path) != ":memory:" else None)
        self._checkpoint_lock = threading.Lock()
        self._db.executescript(SCHEMA)
        if "sent" not in {row[1] for row in self._db.execute("PRAGMA table_info(prompts)")}:
            self._db.execute("ALTER TABLE prompts ADD COLUMN sent INTEGER NOT NULL DEFAULT 1")  # older journals
        # Older journals indexed open prompts and unsent replies: each commit paid for it, for a
        # query that runs once per start (a scan of a week's prompts takes milliseconds).
        self._db.execute("DROP INDEX IF EXISTS open_prompts")
        self._db.execute("DROP INDEX IF EXISTS unsent_replies")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group the writes of one handled message into one transaction; rolled back when the block
        or the commit fails (a full disk, say), and the error raised. While writes are held, none."""
        with self._lock:
            began = self._depth == 0 and not self.unwritable
            if began:
                self._db.execute("BEGIN")
            self._depth += 1
            try:
                yield
                if began:
                    self._db.execute("COMMIT")
            except BaseException:
                if began and self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            finally:
                self._depth -= 1

    @property
    def in_batch(self) -> bool:
        return self._depth > 0

    def _write(self, sql: str, params: tuple) -> None:
        with self._lock:
            if self.unwritable:
                self._held.append((sql, params))
            else:
                self._db.execute(sql, params)

    # -- when the disk cannot take writes -------------------------------------------------

    def hold(self, reason: str) -> None:
        """Keep writes in memory from now on, as the journal cannot write (``reason`` says why)."""
        self.unwritable = reason

    def retry(self) -> bool:
        """Write what was held, in one transaction; True, and writing as usual again, once that went through."""
        with self._lock:
            if not self.unwritable:
                return True
            try:
                self._db.execute("BEGIN")
                for sql, params in [*self._held, ("DELETE FROM probe", ()), ("INSERT INTO probe VALUES (?)",
                                                                               (time.time(),))]:
                    self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                return False
            self._held.clear()
            self.unwritable = ""
            return True

    def where(self) -> str:
        """The journal's path and the disk it is on, for a person."""
        return f"{self.path} (on the disk mounted at {mount_point(self.path.parent)})"

    # -- records --------------------------------------------------------------------------

    def known(self, prompt_id: str) -> bool:
        """A prompt of this id is recorded."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM prompts WHERE id = ?", (prompt_id,)).fetchone() is not None

    def add_prompt(self, prompt: Prompt, deadline: float) -> bool:
        """Record a new prompt; False when its id is already known (a redelivery)."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO prompts (id, body, received, deadline) VALUES (?, ?, ?, ?)",
                (prompt.id, prompt.to_json().decode(), time.time(), deadline))
            self.added += cursor.rowcount
            return cursor.rowcount == 1

    def add_task(self, prompt_id: str, task_id: str, position: int, command: dict) -> None:
        self._write("INSERT OR IGNORE INTO tasks (task_id, prompt_id, position, command, state) VALUES (?, ?, ?, ?, ?)",
                    (task_id, prompt_id, position, json.dumps(command), "waiting"))

    def update_task(self, task_id: str, state: str, agent: str | None = None, attempt: int = 0,
                    message: str = "", data: dict | None = None) -> None:
        self._write("UPDATE tasks SET state = ?, agent = ?, attempt = ?, message = ?, data = ? WHERE task_id = ?",
                    (state, agent, attempt, message, json.dumps(data) if data else "{}", task_id))

    def set_reply(self, prompt_id: str, reply: bytes) -> None:
        # A photo (metadata.image) is kept only until the prompt is answered.
        self._write("UPDATE prompts SET reply = ?, sent = 0, body = json_remove(body, '$.metadata.image') "
                    "WHERE id = ?", (reply.decode(), prompt_id))

    def reply_sent(self, prompt_id: str) -> None:
        """The broker has the prompt's reply."""
        self._write("UPDATE prompts SET sent = 1 WHERE id = ?", (prompt_id,))

    def unsent_replies(self) -> list[tuple[str, bytes]]:
        """Replies journaled but never acknowledged by the broker, oldest first."""
        with self._lock:
            return [(prompt_id, reply.encode()) for prompt_id, reply in self._db.execute(
                "SELECT id, reply FROM prompts WHERE sent = 0 ORDER BY received")]

    def open_prompts(self) -> list[tuple[Prompt, float, list[dict]]]:
        """Prompts without a reply, oldest first, each with its deadline and recorded tasks."""
        with self._lock:
            prompts = self._db.execute(
                "SELECT id, body, deadline FROM prompts WHERE reply IS NULL ORDER BY received").fetchall()
            opened = []
            for prompt_id, body, deadline in prompts:
                rows = self._db.execute(
                    "SELECT task_id, position, command, state, agent, attempt, message, data FROM tasks "
                    "WHERE prompt_id = ? ORDER BY position", (prompt_id,)).fetchall()
                tasks = [{"task_id": r[0], "position": r[1], "command": json.loads(r[2]), "state": r[3],
                          "agent": r[4], "attempt": r[5], "message": r[6], "data": json.loads(r[7])} for r in rows]
                opened.append((Prompt.from_dict(json.loads(body)), deadline, tasks))
            return opened

    def prune(self) -> int:
        """Forget answered prompts older than ``keep_days``, and the oldest beyond the newest
        ``max_prompts``; the number forgotten (none while writes are held)."""
        with self._lock:
            if self.unwritable:
                return 0
            self.added = 0
            cutoff = time.time() - self.keep_days * 86400
            row = self._db.execute("SELECT received FROM prompts ORDER BY received DESC LIMIT 1 OFFSET ?",
                                   (max(0, self.max_prompts - 1),)).fetchone()
            if row is not None:
                cutoff = max(cutoff, row[0])  # the newest max_prompts stay
            old = "SELECT id FROM prompts WHERE reply IS NOT NULL AND received < ?"
            with self.batch():
                self._db.execute(f"DELETE FROM tasks WHERE prompt_id IN ({old})", (cutoff,))
                return self._db.execute(f"DELETE FROM prompts WHERE id IN ({old})", (cutoff,)).rowcount

    def size(self) -> int:
        """Bytes on disk: the database file and its write-ahead log."""
        return sum(os.path.getsize(f) for f in (self.path, Path(f"{self.path}-wal")) if os.path.exists(f))

    def checkpoint(self) -> None:
        """Copy what the log holds into the database file, without waiting for or holding up the writer.
        Nothing while writes are held: the disk takes none (the writer says so, once)."""
        with self._checkpoint_lock:
            if self._checkpointer is not None and not self.unwritable:
                try:
                    self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    if not cannot_write(exc):
                        raise

    def close(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        with self._lock:
            self._db.close()


class JournalFenced(RuntimeError):
    """The journal would not take this coordinator's write: another one leads now, or the cluster
    could not confirm the write while this one still held the lead. Either way this one must stop."""


@dataclass
class Entry:
    """One prompt as the stream journal keeps it in memory."""

    received: float
    deadline: float
    body: str | None  # the prompt's JSON; dropped once its reply is sent
    reply: str | None = None
    sent: bool = True
    answered: bool = False
    tasks: dict[str, dict] = field(default_factory=dict)


class StreamJournal:
    """The journal in a NATS JetStream stream, which every coordinator of a cluster can read.

    The same interface as :class:`Journal`. Each transaction is one message (or a few, for a big
    one, applied only when all are read) holding what changed, published with compare-and-set on
    the stream's last sequence (``Nats-Expected-Last-Sequence``), so the stream has one writer at a
    time: a coordinator that takes the lead first reads the stream to its end, then writes a claim
    with its epoch, after which the old leader's writes are refused. A write is retried with the
    same message id (JetStream drops a copy it already has) until the cluster confirms it; one it
    cannot confirm while the lead is held, or that another writer came before, raises
    :class:`JournalFenced`. The state lives in memory, read back from the stream by a standby as
    it is written; the stream keeps ``keep_days`` of it.
    """

    failures: tuple[type[Exception], ...] = (JournalFenced,)
    PART = 256 * 1024  # bytes of changes per message (NATS takes 1 MB by default)

    def __init__(self, link: Any, names: Any, keep_days: float = 7.0, replicas: int = 3, holder: str = "",
                 may_write: Callable[[], bool] = lambda: True, confirm_within: float = 10.0,
                 max_prompts: int = 100_000) -> None:
        self.link, self.names, self.keep_days, self.holder = link, names, keep_days, holder
        self.max_prompts = max_prompts  # answered prompts kept in memory at most, newest first
        self.added = 0  # prompts added since the last pruning
        # Never set: a stream write that fails is not one of a disk that cannot write, held until it can
        # (:class:`Journal`, :func:`cannot_write`); the coordinator stops leading instead.
        self.unwritable = ""
        self.may_write = may_write  # the lead is still ours: without it no write is retried
        self.confirm_within = confirm_within
        self.epoch = 0  # of the last claim read or written
        self.fenced = threading.Event()
        self._lock = threading.RLock()
        self._prompts: dict[str, Entry] = {}
        self._task_prompt: dict[str, str] = {}
        self._last_seq = 0  # the stream's last message applied here
        self._reading: list[dict] = []  # parts of a batch being read
        self._depth = 0
        self._ops: list[list] = []
        self._undo: dict[str, Entry | None] = {}
        self._follower: Any = None
        self.link.call(self._ensure_stream(replicas), link.timeout * 3)

    # -- the stream ----------------------------------------------------------------------

    async def _ensure_stream(self, replicas: int) -> None:
        from nats.js import api
        from nats.js.errors import NotFoundError

        try:
            await self.link.js.stream_info(self.names.journal_stream)
        except NotFoundError:
            await self.link.js.add_stream(api.StreamConfig(
                name=self.names.journal_stream, subjects=[self.names.journal_subject], num_replicas=replicas,
                storage=api.StorageType.FILE, max_age=self.keep_days * 86400, duplicate_window=120.0))

    def follow(self) -> None:
        """Read what is written from now on, beginning after the last message applied (a standby)."""
        self.link.call(self._follow(), self.link.timeout * 3)

    async def _follow(self) -> None:
        from nats.js import api

        start = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                   opt_start_seq=self._last_seq + 1)
        self._follower = await self.link.js.subscribe(self.names.journal_subject, cb=self._read_message,
                                                      ordered_consumer=True, config=start)

    async def _read_message(self, msg: Any) -> None:
        with self._lock:
            self._read(msg.metadata.sequence.stream, msg.data)

    async def _unfollow(self) -> None:
        if self._follower is not None:
            follower, self._follower = self._follower, None
            await follower.unsubscribe()

    def _read(self, seq: int, data: bytes) -> None:
        """Apply one message of the stream, once all the parts of its batch are in."""
        if seq <= self._last_seq:
            return
        self._last_seq = seq
        part = json.loads(data)
        if self._reading and self._reading[0]["b"] != part["b"]:
            self._reading = []  # a batch whose writer could not finish it: never committed
        self._reading.append(part)
        if part["i"] + 1 < part["n"]:
            return
        for each in self._reading:
            for op in each["ops"]:
                self._apply(op)
        self._reading = []

    def last_sequence(self) -> int:
        """The stream's last sequence, as the cluster says now."""
        return self.link.call(self.link.js.stream_info(self.names.journal_stream)).state.last_seq

    def claim(self, epoch: int, timeout: float = 30.0) -> None:
        """Become the writer: read the stream to its end, then write a claim under ``epoch``; from then
        on the previous writer's writes are refused. JournalFenced when it cannot within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.may_write():
            try:
                last = self.last_sequence()
                while self._last_seq < last and time.monotonic() < deadline:
                    if self._follower is None:
                        self.follow()
                    time.sleep(0.02)
                self.link.call(self._unfollow())
                with self.batch():
                    self._record(["e", epoch, self.holder])
                return
            except (JournalFenced, OSError, TimeoutError, RuntimeError) as exc:
                log.info("journal: claim under epoch %d not taken yet (%s); reading on", epoch, exc)
                self.fenced.clear()
                time.sleep(0.2)
        raise JournalFenced(f"could not claim the journal under epoch {epoch}")

    # -- writing -------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The changes of the block, published as one when it ends; undone in memory when the block
        fails or the stream does not take them (JournalFenced)."""
        with self._lock:
            self._depth += 1
            try:
                yield
                if self._depth == 1:
                    self._commit()
            except BaseException:
                if self._depth == 1:
                    self._rollback()
                raise
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._ops, self._undo = [], {}

    @property
    def in_batch(self) -> bool:
        return self._depth > 0

    def _record(self, op: list) -> None:
        """Apply a change here now (keeping what to undo), and keep it for the batch's message."""
        with self.batch():
            prompt_id = op[1] if op[0] in "ptrs" else self._task_prompt.get(op[1]) if op[0] == "u" else None
            if prompt_id is not None and prompt_id not in self._undo:
                kept = self._prompts.get(prompt_id)
                self._undo[prompt_id] = copy.deepcopy(kept)
            self._apply(op)
            self._ops.append(op)

    def _rollback(self) -> None:
        for prompt_id, entry in self._undo.items():
            current = self._prompts.pop(prompt_id, None)
            for task_id in current.tasks if current else ():
                self._task_prompt.pop(task_id, None)
            if entry is not None:
                self._prompts[prompt_id] = entry
                self._task_prompt.update((task_id, prompt_id) for task_id in entry.tasks)

    def _commit(self) -> None:
        if not self._ops:
            return
        if self.fenced.is_set():
            raise JournalFenced("another coordinator has claimed the journal")
        batch = uuid.uuid4().hex
        chunks, chunk, size = [], [], 0
        for op in self._ops:
            encoded = len(json.dumps(op))
            if chunk and size + encoded > self.PART:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(op)
            size += encoded
        chunks.append(chunk)
        seq = self._last_seq
        for i, ops in enumerate(chunks):
            part = json.dumps({"b": batch, "w": self.holder, "e": self.epoch, "i": i, "n": len(chunks), "ops": ops},
                              separators=(",", ":")).encode()
            seq = self._publish(part, f"{batch}-{i}", seq)
        self._last_seq = seq

    def _publish(self, data: bytes, msg_id: str, after: int) -> int:
        """Publish one message as the next after ``after``; its sequence. Retried until the cluster
        confirms it: a try that went in unconfirmed is found by its message id (JetStream refuses the
        next try for its expected sequence before it looks for a copy)."""
        from nats.js.errors import APIError

        headers = {"Nats-Expected-Last-Sequence": str(after), "Nats-Msg-Id": msg_id}
        give_up = time.monotonic() + self.confirm_within
        while True:
            try:
                ack = self.link.call(self.link.js.publish(self.names.journal_subject, data, headers=headers))
                return ack.seq
            except APIError as exc:
                problem: Exception = exc
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    try:  # an earlier try of ours that went in unconfirmed, or another writer's message?
                        found = self.link.call(self.link.js.get_msg(self.names.journal_stream, after + 1))
                    except Exception as lookup:  # no answer: try again
                        problem = lookup
                    else:
                        if (found.headers or {}).get("Nats-Msg-Id") == msg_id:
                            return after + 1
                        self.fenced.set()
                        raise JournalFenced(f"another coordinator wrote to the journal first "
                                            f"({exc.description})") from None
            except Exception as exc:  # no answer, no responders, a reconnecting link: try again
                problem = exc
            if not self.may_write() or time.monotonic() > give_up:
                self.fenced.set()
                raise JournalFenced(f"the cluster did not confirm a journal write ({problem!r})")
            log.warning("journal: write not confirmed (%r); trying again", problem)
            time.sleep(0.2)

    # -- the state -----------------------------------------------------------------------

    def _apply(self, op: list) -> None:
        kind = op[0]
        if kind == "p":
            _, prompt_id, body, received, deadline = op
            self._prompts[prompt_id] = Entry(received, deadline, body)
        elif kind == "t":
            _, prompt_id, task_id, position, command = op
            entry = self._prompts.get(prompt_id)
            if entry is not None and task_id not in entry.tasks:
                entry.tasks[task_id] = {"task_id": task_id, "position": position, "command": command,
                                        "state": "waiting", "agent": None, "attempt": 0, "message": "", "data": {}}
                self._task_prompt[task_id] = prompt_id
        elif kind == "u":
            _, task_id, state, agent, attempt, message, data = op
            entry = self._prompts.get(self._task_prompt.get(task_id, ""))
            if entry is not None:
                entry.tasks[task_id].update(state=state, agent=agent, attempt=attempt, message=message,
                                            data=data or {})
        elif kind == "r":
            entry = self._prompts.get(op[1])
            if entry is not None:
                entry.reply, entry.sent, entry.answered = op[2], False, True
        elif kind == "s":
            entry = self._prompts.get(op[1])
            if entry is not None and entry.answered:
                entry.sent, entry.reply, entry.body = True, None, None  # nothing more is read of it
                for task_id in entry.tasks:
                    self._task_prompt.pop(task_id, None)
                entry.tasks = {}
        elif kind == "e":
            self.epoch = op[1]

    def where(self) -> str:
        return f"the stream {self.names.journal_stream}"

    def known(self, prompt_id: str) -> bool:
        with self._lock:
            return prompt_id in self._prompts

    def add_prompt(self, prompt: Prompt, deadline: float) -> bool:
        with self._lock:
            if prompt.id in self._prompts:
                return False
            self._record(["p", prompt.id, prompt.to_json().decode(), time.time(), deadline])
            self.added += 1
            return True

    def add_task(self, prompt_id: str, task_id: str, position: int, command: dict) -> None:
        with self._lock:
            if task_id not in self._task_prompt:
                self._record(["t", prompt_id, task_id, position, command])

    def update_task(self, task_id: str, state: str, agent: str | None = None, attempt: int = 0,
                    message: str = "", data: dict | None = None) -> None:
        with self._lock:
            if task_id in self._task_prompt:
                self._record(["u", task_id, state, agent, attempt, message, data or {}])

    def set_reply(self, prompt_id: str, reply: bytes) -> None:
        with self._lock:
            if prompt_id in self._prompts:
                self._record(["r", prompt_id, reply.decode()])

    def reply_sent(self, prompt_id: str) -> None:
        with self._lock:
            if prompt_id in self._prompts:
                self._record(["s", prompt_id])

    def unsent_replies(self) -> list[tuple[str, bytes]]:
        with self._lock:
            entries = sorted(((e.received, i, e.reply) for i, e in self._prompts.items() if e.answered and not e.sent))
            return [(prompt_id, reply.encode()) for _, prompt_id, reply in entries if reply is not None]

    def open_prompts(self) -> list[tuple[Prompt, float, list[dict]]]:
        with self._lock:
            entries = sorted((e.received, i) for i, e in self._prompts.items() if not e.answered and e.body)
            opened = []
            for _, prompt_id in entries:
                entry = self._prompts[prompt_id]
                tasks = sorted((copy.deepcopy(t) for t in entry.tasks.values()), key=lambda t: t["position"])
                opened.append((Prompt.from_dict(json.loads(entry.body)), entry.deadline, tasks))
            return opened

    def prune(self) -> int:
        """Forget, here, answered prompts older than ``keep_days`` and the oldest beyond the newest
        ``max_prompts`` (the stream drops its old messages itself)."""
        cutoff = time.time() - self.keep_days * 86400
        with self._lock:
            self.added = 0
            newest = sorted((e.received for e in self._prompts.values()), reverse=True)
            if len(newest) >= self.max_prompts:
                cutoff = max(cutoff, newest[self.max_prompts - 1])
            old = [i for i, e in self._prompts.items() if e.answered and e.sent and e.received < cutoff]
            for prompt_id in old:
                del self._prompts[prompt_id]
            return len(old)

    def checkpoint(self) -> None:
        """Nothing to do: the cluster keeps the stream."""

    def close(self) -> None:
        try:
            self.link.call(self._unfollow())
        except Exception:  # a link that is already gone
            pass


WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed Nats-Expected-Last-Sequence
