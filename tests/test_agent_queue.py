"""The agent's intake in process: the real agent and bus routing, a bus that never connects, tasks
handed over as the bus delivers them. Beyond its running limit an agent queues a few tasks, only
those it will start before their deadline, and never starts one after it stopped."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest

from helpers import wait_until
from lamcontrol.agents.echo import Echo
from lamcontrol.agents.runtime import Agent
from lamcontrol.bus import BrokerSettings
from lamcontrol.protocol import Result, Task, new_id, read
from test_routing import FakeBus


class Harness:
    """An agent with the echo capability, which records each action as it starts it."""

    def __init__(self, record: Path, max_concurrent: int, max_queued: int, task_record: Path | None = None) -> None:
        self.record = record
        echo = Echo({"run_record": str(record)})
        self.agent = Agent("a1", {"echo": echo}, BrokerSettings(), max_concurrent=max_concurrent,
                           max_queued=max_queued, stop_grace=0.0, bus_factory=FakeBus, task_record=task_record)
        self.bus = self.agent.bus

    def task(self, action: str = "sleep", deadline: float = 60.0, accept_by: float = 5.0, **args) -> Task:
        """Hand the agent a task, as its bus would; ``sleep`` ones take 30 seconds."""
        now = time.time()
        task = Task(task_id=new_id(), prompt_id=new_id(), capability="echo", action=action, agent="a1",
                    args={"seconds": 30, **args} if action == "sleep" else args, accept_by=now + accept_by,
                    deadline=now + deadline)
        return self.give(task)

    def give(self, task: Task) -> Task:
        self.bus.handle(task.topic(self.bus.topics), task.to_json())
        return task

    def results(self, task: Task) -> list[tuple[str, str]]:
        found = [read(self.bus.topics, t, p) for t, p in self.bus.sent]
        return [(r.state, r.message) for r in found if isinstance(r, Result) and r.task_id == task.task_id]

    def ran(self) -> list[dict]:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [json.loads(line)["args"] for line in lines]


@pytest.fixture
def harness(tmp_path: Path):
    made: list[Harness] = []
    yield lambda **limits: made.append(Harness(tmp_path / f"ran-{len(made)}.jsonl", **limits)) or made[-1]
    for h in made:
        h.agent.stop()


def test_beyond_its_limit_an_agent_queues_a_few_and_refuses_the_rest(harness):
    h = harness(max_concurrent=1, max_queued=2)
    running, queued, also_queued, refused = (h.task(text=name) for name in ("one", "two", "three", "four"))
    for task in (running, queued, also_queued):
        assert h.results(task) == [("accepted", "")]
    assert h.results(refused) == [("rejected", "The agent is busy.")]
    wait_until(lambda: len(h.ran()) == 1, 10, "the first task started")
    h.agent.stop()  # queued tasks never start once the agent stops: at most once
    for task in (queued, also_queued):
        assert h.results(task)[-1] == ("failed", "The agent stopped before the task started.")
    assert [args["text"] for args in h.ran()] == ["one"]


def test_a_task_is_queued_only_if_it_would_start_before_its_deadline(harness):
    h = harness(max_concurrent=1, max_queued=4)
    h.task(text="long")
    hurried = h.task(deadline=0.5, text="hurried")  # no run yet: a task is taken to need a second
    patient = h.task(deadline=60.0, text="patient")
    assert h.results(hurried) == [("rejected", "The agent is busy.")]
    assert h.results(patient) == [("accepted", "")]


def test_queued_tasks_run_in_order_as_slots_free(harness):
    h = harness(max_concurrent=1, max_queued=3)
    tasks = [h.task("say", text=f"n{i}") for i in range(4)]
    wait_until(lambda: all(h.results(t)[-1:] == [("succeeded", f"n{i}")] for i, t in enumerate(tasks)), 10,
               "every queued task succeeded")
    assert [args["text"] for args in h.ran()] == ["n0", "n1", "n2", "n3"]
    assert all(state != "rejected" for t in tasks for state, _ in h.results(t))


def test_tasks_implausibly_far_ahead_are_refused(harness):
    """A task whose accept window or deadline no coordinator would give (a forgery, or a copy kept to
    be replayed at every restart) is refused, not run."""
    h = harness(max_concurrent=2, max_queued=0)
    tasks = [h.task("say", accept_by=3 * 86_400, deadline=3 * 86_400, text="forever"),
             h.task("say", deadline=2 * 86_400, text="much later")]
    for task in tasks:
        [(state, message)] = h.results(task)
        assert state == "rejected" and "implausibly far ahead" in message
    assert h.ran() == []


def test_an_agent_restarted_never_runs_a_task_it_accepted_again(harness, tmp_path):
    """What an agent accepted is kept in its task record: after a restart, a task offered again (a
    copy delivered again, or the coordinator asking after it) is answered, not run."""
    record = tmp_path / "agent-a1-tasks.jsonl"
    first = harness(max_concurrent=2, max_queued=0, task_record=record)
    done = first.task("say", text="once only")
    wait_until(lambda: first.results(done)[-1:] == [("succeeded", "once only")], 10, "the task done")
    running = first.task(text="cut short")  # 30 seconds: still running at the "crash"
    wait_until(lambda: len(first.ran()) == 2, 10, "the long task started")
    again = harness(max_concurrent=2, max_queued=0, task_record=record)  # the agent, restarted
    assert again.ran() == []
    for task, final in ((done, ("succeeded", "once only")),
                        (running, ("failed", "The agent restarted before the task finished; it was not run again."))):
        again.give(Task.from_dict({**task.to_dict(), "attempt": task.attempt + 1}))
        assert again.results(task) == [("accepted", ""), final]
    assert [args["text"] for args in first.ran()] == ["once only", "cut short"] and again.ran() == []
    fresh = again.task("say", text="new")
    wait_until(lambda: again.results(fresh)[-1:] == [("succeeded", "new")], 10, "a new task runs")
def test_a_task_past_its_deadline_fails_then_though_the_agent_sleeps_until_its_heartbeat(harness):
    """Between heartbeats (30 s here) the agent's timer thread sleeps; a task accepted meanwhile with
    an earlier deadline wakes it, so the task fails at its deadline, not at the next heartbeat."""
    h = harness(max_concurrent=1, max_queued=0)
    h.agent._soonest = 0.0  # until the timer thread, about to sleep, says what it waits for
    threading.Thread(target=h.agent._heartbeat_loop, daemon=True).start()
    wait_until(lambda: h.agent._soonest == math.inf, 10, "the timer thread asleep until the heartbeat")
    task = h.task(deadline=1.0, text="slow")
    wait_until(lambda: h.results(task)[-1:] == [("failed", "The task ran out of time.")], 10,
               "the task failed at its deadline")
