"""The coordinator's durable journal (SQLite in WAL mode).

A prompt is written before anything is done with it, each task as it is dispatched and
as its state changes, and the reply before it is published; the reply is marked sent once
the broker has acknowledged it. A coordinator killed at any moment reads back what was open
and finishes it, and publishes again the replies it had not seen acknowledged.

Commits append to the write-ahead log; :meth:`Journal.checkpoint`, on a connection of its own
and off the writer's path, copies it into the database file, so that the writer's own checkpoint
(SQLite's, past 1000 pages: it keeps the log's size bounded under load) finds little left to do.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lamcontrol.protocol import Prompt

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
"""


class Journal:
    """Prompts, tasks and replies, durable across crashes."""

    def __init__(self, path: str | Path, keep_days: float = 7.0) -> None:
        self.keep_days = keep_days
        if str(path) != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            path = Path(path).expanduser()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._depth = 0
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._checkpointer = (sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
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
        or the commit fails (a full disk, say), and the error raised."""
        with self._lock:
            if self._depth == 0:
                self._db.execute("BEGIN")
            self._depth += 1
            try:
                yield
                if self._depth == 1:
                    self._db.execute("COMMIT")
            except BaseException:
                if self._depth == 1 and self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            finally:
                self._depth -= 1

    @property
    def in_batch(self) -> bool:
        return self._depth > 0

    def _write(self, sql: str, params: tuple) -> None:
        with self._lock:
            self._db.execute(sql, params)

    def add_prompt(self, prompt: Prompt, deadline: float) -> bool:
        """Record a new prompt; False when its id is already known (a redelivery)."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO prompts (id, body, received, deadline) VALUES (?, ?, ?, ?)",
                (prompt.id, prompt.to_json().decode(), time.time(), deadline))
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
        """Forget answered prompts older than ``keep_days``; the number forgotten."""
        cutoff = time.time() - self.keep_days * 86400
        with self.batch():
            self._db.execute("DELETE FROM tasks WHERE prompt_id IN "
                             "(SELECT id FROM prompts WHERE reply IS NOT NULL AND received < ?)", (cutoff,))
            return self._db.execute("DELETE FROM prompts WHERE reply IS NOT NULL AND received < ?",
                                    (cutoff,)).rowcount

    def checkpoint(self) -> None:
        """Copy what the log holds into the database file, without waiting for or holding up the writer."""
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        with self._lock:
            self._db.close()
