"""The coordinator's durable journal (SQLite in WAL mode).

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

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lamcontrol.clock import Clock
from lamcontrol.config import default
from lamcontrol.protocol import Prompt, TaskState

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

    def __init__(self, path: str | Path, keep_days: float = default("coordinator", "journal_days"),
                 max_prompts: int = default("coordinator", "journal_max_prompts"), clock: Clock = Clock()) -> None:
        self.clock = clock  # when prompts arrive, and so which are old
        self.keep_days = keep_days
        self.max_prompts = max_prompts  # answered prompts kept at most, newest first
        self.path = Path(path).expanduser() if str(path) != ":memory:" else Path(":memory:")
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._depth = 0
        self.unwritable = ""  # why writes are held in memory now ('' while the journal writes)
        self._held: list[tuple[str, tuple[Any, ...]]] = []  # the statements held meanwhile, in order
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

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
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
                                                                               (self.clock.time(),))]:
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
                (prompt.id, prompt.to_json().decode(), self.clock.time(), deadline))
            self.added += cursor.rowcount
            return cursor.rowcount == 1

    def add_task(self, prompt_id: str, task_id: str, position: int, command: dict[str, Any]) -> None:
        self._write("INSERT OR IGNORE INTO tasks (task_id, prompt_id, position, command, state) VALUES (?, ?, ?, ?, ?)",
                    (task_id, prompt_id, position, json.dumps(command), TaskState.WAITING))

    def update_task(self, task_id: str, state: TaskState, agent: str | None = None, attempt: int = 0,
                    message: str = "", data: dict[str, Any] | None = None) -> None:
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

    def open_prompts(self) -> list[tuple[Prompt, float, list[dict[str, Any]]]]:
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
            cutoff = self.clock.time() - self.keep_days * 86400
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
