"""The agent runtime: take tasks for our capabilities, answer at once, run, report.

An agent announces itself with retained presence (its last will says offline), takes the
tasks addressed to it on ``lam/tasks/<capability>``, answers ``accepted`` before any work
starts, runs each task on its own thread under a concurrency limit and a deadline, and
publishes ``succeeded`` or ``failed`` with a sentence. When every slot is taken it still
accepts a few tasks (``max_queued``), each started as a running one ends, if by its recent
pace it will run them before their deadline; otherwise it answers ``rejected`` (busy), so the
coordinator can look elsewhere. Duplicate deliveries (QoS 1 is at-least-once) of one attempt
are dropped; a task that arrives after its dispatch window is rejected. A task accepted here is
never run twice: offered again (the coordinator missed our word), it is answered from what
became of it. A task from a coordinator whose lead has passed to another (an ``epoch`` below
the highest seen) is rejected, and the agent announces itself again whenever a coordinator
comes online, so no coordinator depends on retained presence a cluster's node may lack.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from lamcontrol import __version__
from lamcontrol.bus import BrokerSettings, Bus
from lamcontrol.language import advertisement
from lamcontrol.protocol import (CoordinatorPresence, Presence, PresenceState, Result, ResultState, Task,
                                 check_agent_id)

from .capability import Capability, TaskFailed

log = logging.getLogger(__name__)

SEEN_TASKS = 10_000
DEADLINE_CHECK = 0.1  # seconds between deadline checks
FIRST_PACE = 1.0  # seconds a task is taken to run until some have run
OUT_OF_TIME = "The task ran out of time."
DEPOSED = "The task comes from a coordinator that no longer leads."


class Agent:
    """One agent process serving one or more capabilities."""

    def __init__(self, agent_id: str, capabilities: dict[str, Capability], settings: BrokerSettings,
                 max_concurrent: int = 4, heartbeat: float = 30.0, stop_grace: float = 10.0,
                 max_queued: int = 8, bus_factory: Callable[..., Bus] = Bus) -> None:
        self.id = check_agent_id(agent_id)
        self.capabilities = capabilities
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.heartbeat = heartbeat
        self.stop_grace = stop_grace
        self.host = socket.gethostname()
        self.started = time.time()
        self._lock = threading.Lock()
        self._running: dict[str, Task] = {}  # accepted and not finished: running, or queued for a slot
        self._queued: OrderedDict[str, Task] = OrderedDict()  # accepted, waiting for a slot, oldest first
        self._pace = FIRST_PACE  # recent seconds per task, for what the queue can promise
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()  # (task id, attempt) delivered
        self._accepted: OrderedDict[str, Result | None] = OrderedDict()  # task id -> its final result, once done
        self._stopping = threading.Event()
        self._advertised = b""  # the spec last published; sent again after every connect
        self._epoch = 0  # the highest coordinator epoch seen on a task
        self._coordinator: tuple[str, float] | None = None  # the coordinator's last (state, started)
        # Room beyond the limit: a task failed at its deadline may still hold its thread.
        self._pool = ThreadPoolExecutor(max_workers=2 * max_concurrent + 2, thread_name_prefix="task")
        self.bus = bus_factory(settings, component=f"agent {agent_id}", client_id=f"{settings.prefix}-agent-{agent_id}",
                       will=self.presence(PresenceState.OFFLINE), persistent=True)
        self.topics = self.bus.topics
        for name, capability in capabilities.items():
            self.bus.subscribe(Task, self._on_task, capability=name)
            capability.on_change = self.announce
        self.bus.subscribe(CoordinatorPresence, self._on_coordinator, cleared=lambda ids: None)
        self.bus.on_connect(self._reconnected)

    # -- presence -----------------------------------------------------------------------

    def presence(self, state: PresenceState = PresenceState.ONLINE) -> Presence:
        online = state == PresenceState.ONLINE
        capabilities = {name: cap.actions() for name, cap in self.capabilities.items()} if online else {}
        vocabulary = {name: words for name, cap in self.capabilities.items() if online and (words := cap.vocabulary())}
        with self._lock:
            running = sorted(self._running) if online else []
        return Presence(state=state, agent=self.id, capabilities=capabilities, vocabulary=vocabulary,
                        load=len(self._running), running=running,
                        max_concurrent=self.max_concurrent, max_queued=self.max_queued, host=self.host,
                        version=__version__, heartbeat=self.heartbeat, started=self.started)

    def announce(self) -> None:
        if self.bus.connected.is_set() and not self._stopping.is_set():
            self.advertise()
            self.bus.publish(self.presence(), retain=True)

    def advertise(self) -> None:
        """The capabilities' specs, retained on ``lam/agents/<id>/spec`` (README.md, "Topics")."""
        spec = advertisement(self.id, [c.advertised_spec() for c in self.capabilities.values()])
        if spec.to_json() != self._advertised:
            self.bus.publish(spec, retain=True)
            self._advertised = spec.to_json()

    def _reconnected(self) -> None:
        self._advertised = b""
        self.announce()

    def _on_coordinator(self, presence: CoordinatorPresence) -> None:
        """A coordinator came online (another one, or the same one back): announce again, so that it
        hears of us even where the broker kept no retained presence (a cluster node that lost it)."""
        seen, self._coordinator = self._coordinator, (presence.state, presence.started)
        if presence.online and seen != self._coordinator:
            self._advertised = b""
            self.announce()

    def _heartbeat_loop(self) -> None:
        """Presence every heartbeat; in between, fail tasks that ran past their deadline."""
        next_beat = time.monotonic() + self.heartbeat
        while not self._stopping.wait(DEADLINE_CHECK):
            now = time.time()
            for task in [t for t in list(self._running.values()) if t.deadline and now > t.deadline]:
                self._finish(task, ResultState.FAILED, OUT_OF_TIME)
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.heartbeat
                self.announce()

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        self.bus.start(timeout)
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()

    def stop(self) -> None:
        """Stop taking tasks, let running ones finish within the grace period, go offline."""
        self._stopping.set()
        deadline = time.monotonic() + self.stop_grace
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)
        for capability in self.capabilities.values():
            capability.close()
        for task in list(self._running.values()):
            self._finish(task, ResultState.FAILED, "The agent stopped before the task finished.")
        self.bus.stop(final=self.presence(PresenceState.OFFLINE))
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- tasks --------------------------------------------------------------------------

    def _on_task(self, task: Task) -> None:
        if task.agent != self.id:
            return
        with self._lock:
            if (task.task_id, task.attempt) in self._seen:
                log.info("dropping duplicate delivery of task %s attempt %d", task.task_id, task.attempt)
                return
            remember(self._seen, (task.task_id, task.attempt), None)
            if task.epoch and task.epoch < self._epoch:  # epoch 0: a lone coordinator, with no lease
                log.info("task %s comes from epoch %d, below %d: refused", task.task_id, task.epoch, self._epoch)
                self._publish(task, ResultState.REJECTED, DEPOSED)
                return
            self._epoch = max(self._epoch, task.epoch)
            if task.task_id in self._accepted:
                self._answer_again(task, self._accepted[task.task_id])
                return
        refusal = self._refusal(task)
        if refusal:
            self._publish(task, ResultState.REJECTED, refusal)
            return
        with self._lock:
            self._running[task.task_id] = self._queued[task.task_id] = task
            remember(self._accepted, task.task_id, None)
        self._publish(task, ResultState.ACCEPTED, "")
        self._start_queued()

    def _answer_again(self, task: Task, final: Result | None) -> None:
        """A task we accepted before, offered again (the coordinator missed our word): never run twice,
        say it was accepted and, once finished, how it ended."""
        log.info("task %s offered again (attempt %d): already accepted here", task.task_id, task.attempt)
        self._publish(task, ResultState.ACCEPTED, "")
        if final is not None:
            self._publish(task, final.state, final.message, final.data)

    def _refusal(self, task: Task) -> str:
        """Why this agent will not run the task, or '' when it will."""
        capability = self.capabilities.get(task.capability)
        if capability is None or task.action not in capability.actions():
            return f"This agent cannot do {task.capability} {task.action}."
        if self._stopping.is_set():
            return "The agent is shutting down."
        if task.accept_by and time.time() > task.accept_by:
            return "The task arrived after its dispatch window closed."
        if len(self._running) - len(self._queued) >= self.max_concurrent and not self._may_queue(task):
            return "The agent is busy."
        return ""

    def _may_queue(self, task: Task) -> bool:
        """Room in the queue, and by the recent pace the task would run before its deadline (after the
        running tasks and those queued before it)."""
        if len(self._queued) >= self.max_queued:
            return False
        rounds = len(self._queued) // self.max_concurrent + 2
        return not task.deadline or time.time() + rounds * self._pace < task.deadline

    def _start_queued(self) -> None:
        """Start queued tasks, oldest first, while a slot is free; once stopping, fail them instead."""
        while True:
            with self._lock:
                full = len(self._running) - len(self._queued) >= self.max_concurrent
                if not self._queued or (full and not self._stopping.is_set()):
                    return
                _, task = self._queued.popitem(last=False)
            if self._stopping.is_set():
                self._finish(task, ResultState.FAILED, "The agent stopped before the task started.")
            elif task.deadline and time.time() > task.deadline:
                self._finish(task, ResultState.FAILED, OUT_OF_TIME)  # never started late
            else:
                self._pool.submit(self._run, task)

    def _run(self, task: Task) -> None:
        started = time.monotonic()
        try:
            outcome = self.capabilities[task.capability].run(task.action, task.args)
        except TaskFailed as exc:
            self._finish(task, ResultState.FAILED, str(exc))
        except Exception as exc:  # a broken handler must not take the agent down
            log.exception("task %s (%s %s) crashed", task.task_id, task.capability, task.action)
            self._finish(task, ResultState.FAILED, f"Something went wrong: {exc.__class__.__name__}.")
        else:
            self._finish(task, ResultState.SUCCEEDED, outcome.message, outcome.data)
        finally:
            self._pace += (time.monotonic() - started - self._pace) / 8

    def _finish(self, task: Task, state: ResultState, message: str, data: dict | None = None) -> None:
        """Publish the final result once, whoever gets here first (handler, deadline or stop); a freed
        slot starts the oldest queued task."""
        with self._lock:
            if self._running.pop(task.task_id, None) is None:
                return
            self._queued.pop(task.task_id, None)
            if task.task_id in self._accepted:
                self._accepted[task.task_id] = Result(task_id=task.task_id, agent=self.id, state=state,
                                                      message=message, data=data or {})
        log.info("task %s %s: %s", task.task_id, state, message)
        self._publish(task, state, message, data or {})
        self._start_queued()

    def _publish(self, task: Task, state: ResultState, message: str, data: dict | None = None) -> None:
        self.bus.publish(Result(task_id=task.task_id, agent=self.id, state=state, message=message,
                                data=data or {}, attempt=task.attempt))


def remember(recent: OrderedDict, key: object, value: object) -> None:
    """Keep ``key`` among the last SEEN_TASKS."""
    recent[key] = value
    if len(recent) > SEEN_TASKS:
        recent.popitem(last=False)
