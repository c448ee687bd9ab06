"""The coordinator's journal: what is open survives, what is old and answered is forgotten."""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from typing import Iterator

from lamcontrol.coordinator.journal import Journal
from lamcontrol.protocol import Prompt, Reply
from test_routing import FakeClock


def answered(journal: Journal, text: str, age_days: float) -> Prompt:
    """A prompt that arrived ``age_days`` ago by the journal's (fake) clock, and was answered."""
    prompt = Prompt(prompt=text)
    with earlier(journal.clock, age_days):
        journal.add_prompt(prompt, deadline=journal.clock.time() + 60)
    journal.add_task(prompt.id, f"{prompt.id}t", 0, {"command": text})
    journal.set_reply(prompt.id, Reply(prompt_id=prompt.id, status="succeeded", response="ok").to_json())
    return prompt


@contextmanager
def earlier(clock: FakeClock, days: float) -> Iterator[None]:
    clock.now -= days * 86400
    try:
        yield
    finally:
        clock.now += days * 86400


def test_redelivered_prompt_is_recognised(tmp_path):
    journal = Journal(tmp_path / "j.db")
    prompt = Prompt(prompt="echo hi")
    assert journal.add_prompt(prompt, deadline=0) is True
    assert journal.add_prompt(prompt, deadline=0) is False


def test_open_prompts_survive_a_reopen_with_their_tasks(tmp_path):
    journal = Journal(tmp_path / "j.db", clock=FakeClock())
    prompt = Prompt(prompt="echo one && echo two", source="r1")
    journal.add_prompt(prompt, deadline=123.0)
    journal.add_task(prompt.id, "t1", 0, {"command": "echo one"})
    journal.update_task("t1", "accepted", "a1", 1)
    answered(journal, "echo done", age_days=0)
    journal.close()

    reopened = Journal(tmp_path / "j.db")
    [(again, deadline, tasks)] = reopened.open_prompts()
    assert (again, deadline) == (prompt, 123.0)
    assert [(t["task_id"], t["state"], t["agent"], t["attempt"]) for t in tasks] == [("t1", "accepted", "a1", 1)]


def test_prune_forgets_only_old_answered_prompts(tmp_path):
    journal = Journal(tmp_path / "j.db", keep_days=7, clock=FakeClock())
    old = answered(journal, "echo old", age_days=8)
    recent = answered(journal, "echo recent", age_days=1)
    unanswered = Prompt(prompt="echo waiting")
    with earlier(journal.clock, 30):
        journal.add_prompt(unanswered, deadline=0)

    assert journal.prune() == 1
    ids = {row[0] for row in journal._db.execute("SELECT id FROM prompts")}
    assert ids == {recent.id, unanswered.id}
    tasks = {row[0] for row in journal._db.execute("SELECT prompt_id FROM tasks")}
    assert old.id not in tasks and recent.id in tasks


def test_commits_reach_the_database_file_at_the_checkpoint(tmp_path):
    """A commit appends to the log; the checkpoint, on a connection of its own, copies it into the
    database file while the writer goes on."""
    journal = Journal(tmp_path / "j.db")

    def in_database_file() -> list[str]:
        copy = tmp_path / "copy.db"  # the database file alone, without its log
        copy.write_bytes((tmp_path / "j.db").read_bytes())
        db = sqlite3.connect(copy)
        try:
            return [row[0] for row in db.execute("SELECT body FROM prompts")]
        finally:
            db.close()

    journal.checkpoint()  # the tables
    prompts = [Prompt(prompt=f"echo {n}") for n in range(50)]
    for prompt in prompts:
        with journal.batch():
            journal.add_prompt(prompt, deadline=time.time() + 60)
    assert in_database_file() == []
    journal.checkpoint()
    with journal.batch():
        journal.add_prompt(Prompt(prompt="echo after"), deadline=time.time() + 60)
    assert sorted(in_database_file()) == sorted(p.to_json().decode() for p in prompts)
    journal.close()
    journal.checkpoint()  # after close: nothing to do, no error


def test_prune_keeps_at_most_the_newest_answered_prompts(tmp_path):
    """Under a flood the journal is bounded by number as well as by age."""
    journal = Journal(tmp_path / "j.db", max_prompts=10, clock=FakeClock())
    prompts = [answered(journal, f"echo {n}", age_days=(30 - n) / 86400) for n in range(30)]
    assert journal.added == 30
    assert journal.prune() == 20
    assert {row[0] for row in journal._db.execute("SELECT id FROM prompts")} == {p.id for p in prompts[20:]}
    assert journal.added == 0
