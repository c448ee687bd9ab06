"""The agent runtime: take tasks for our capabilities, answer at once, run, report.

An agent announces itself with retained presence (its last will says offline), takes the
tasks addressed to it on ``lam/tasks/<capability>``, answers ``accepted`` before any work
starts, runs each task on its own thread under a concurrency limit and a deadline, and
publishes ``succeeded`` or ``failed`` with a sentence. When every slot is taken it still
accepts a few tasks (``max_queued``), each started as a running one ends, if by its recent
pace it will run them before their deadline; otherwise it answers ``rejected`` (busy), so the
coordinator can look elsewhere. Duplicate deliveries (QoS 1 is at-least-once) of one attempt
are dropped; a task that arrives after its dispatch window is rejected, and so is one whose
window or deadline lies implausibly far ahead (no coordinator sends one: it is a forgery or a
copy kept to be replayed). A task accepted here is never run twice: offered again (the
coordinator missed our word), it is answered from what became of it, also after a restart,
as the accepted tasks are kept in a small file (:class:`TaskRecord`). A retained task is never
handled at all (the bus ignores it): it would come again at every start. What the capability's
own spec marks high-risk (a shutdown) runs only when the task says its prompt was confirmed,
whatever risk the coordinator gave it. A task from a coordinator whose lead has passed to
another (an ``epoch`` below the highest seen) is rejected, and the agent announces itself again
whenever a coordinator comes online, so no coordinator depends on retained presence a cluster's
node may lack.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Callable

from lamcontrol import __version__
from lamcontrol.bus import BrokerSettings, Bus
from lamcontrol.clock import Clock
from lamcontrol.config import default
from lamcontrol.language import ArgumentError, advertisement
from lamcontrol.protocol import (CoordinatorPresence, Presence, PresenceState, Result, ResultState, Risk, Task,
                                 check_agent_id)

from .capability import Capability, TaskFailed

log = logging.getLogger(__name__)

SEEN_TASKS = 10_000
FIRST_PACE = 1.0  # seconds a task is taken to run until some have run
OUT_OF_TIME = "The task ran out of time."
# Coordinators give seconds to accept a task and minutes to run it (its ack_timeout, task_timeout):
# beyond these, allowing for clocks that disagree, a task is not one a coordinator sent just now.
LONGEST_ACCEPT_WINDOW = 600.0
LONGEST_DEADLINE = 86_400.0
RESTARTED = "The agent restarted before the task finished; it was not run again."
KEPT_MESSAGE = 500  # characters of a final sentence kept in the task record
DEPOSED = "The task comes from a coordinator that no longer leads."


class Agent:
    """One agent process serving one or more capabilities."""

    def __init__(self, agent_id: str, capabilities: dict[str, Capability], settings: BrokerSettings,
                 max_concurrent: int = default("agent", "max_concurrent"),
                 heartbeat: float = default("agent", "heartbeat"), stop_grace: float = default("agent", "stop_grace"),
                 max_queued: int = default("agent", "max_queued"), clock: Clock = Clock(),
                 bus_factory: Callable[..., Bus] = Bus, left_out: dict[str, str] | None = None,
                 task_record: Path | None = None) -> None:
        self.id = check_agent_id(agent_id)
        self.clock = clock  # deadlines on the wire, and the heartbeat's and the queue's intervals
        self.capabilities = capabilities
        self.left_out = left_out or {}  # capability -> why it could not run here (said in presence)
        self._specs = {name: capability.spec() for name, capability in capabilities.items()}  # their own risks
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.heartbeat = heartbeat
        self.stop_grace = stop_grace
        self.host = socket.gethostname()
        self.started = self.clock.time()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the heartbeat thread: an earlier deadline, or stopping
        self._soonest = math.inf  # the deadline (wall time) the heartbeat thread waits for
        self._running: dict[str, Task] = {}  # accepted and not finished: running, or queued for a slot
        self._queued: OrderedDict[str, Task] = OrderedDict()  # accepted, waiting for a slot, oldest first
        self._pace = FIRST_PACE  # recent seconds per task, for what the queue can promise
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()  # (task id, attempt) delivered
        self._record = TaskRecord(task_record, self.id)
        self._accepted = self._record.load()  # task id -> its final result, once done (None: running)
        self._stopping = threading.Event()
        self._advertised = b""  # the spec last published; sent again after every connect
        self._readings: dict[str, dict] = {}  # what the capabilities read, as last announced
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
        readings = self._read() if online else {}
        with self._lock:
            running = sorted(self._running) if online else []
        return Presence(state=state, agent=self.id, capabilities=capabilities, vocabulary=vocabulary,
                        load=len(self._running), running=running, unavailable=self.left_out if online else {},
                        max_concurrent=self.max_concurrent, max_queued=self.max_queued, host=self.host,
                        version=__version__, heartbeat=self.heartbeat, started=self.started, readings=readings)

    def _read(self) -> dict[str, dict]:
        """Each capability's readings (those that have any), remembered as announced."""
        self._readings = {name: values for name, cap in self.capabilities.items() if (values := cap.readings())}
        return self._readings

    def announce(self) -> None:
        if self.bus.connected.is_set() and not self._stopping.is_set():
            self.advertise()
            self.bus.publish(self.presence(), retain=True)

    def advertise(self) -> None:
        """The capabilities' specs, retained on ``lam/agents/<id>/spec`` (docs/protocol.md, "Topics")."""
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
        """Presence every heartbeat; in between, fail tasks that run past their deadline. It sleeps until
        the next of them: a task accepted with an earlier deadline wakes it."""
        next_beat = self.clock.monotonic() + self.heartbeat
        while not self._stopping.is_set():
            now = self.clock.time()
            for task in [t for t in list(self._running.values()) if t.deadline and now >= t.deadline]:
                self._finish(task, ResultState.FAILED, OUT_OF_TIME)
            if self.clock.monotonic() >= next_beat:
                next_beat = self.clock.monotonic() + self.heartbeat
                self.announce()
            with self._wake:
                self._soonest = min((t.deadline for t in self._running.values() if t.deadline), default=math.inf)
                if not self._stopping.is_set():
                    self._wake.wait(min(next_beat - self.clock.monotonic(), self._soonest - self.clock.time()))

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        self.bus.start(timeout)
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()

    def stop(self) -> None:
        """Stop taking tasks, let running ones finish within the grace period, go offline."""
        with self._wake:
            self._stopping.set()
            self._wake.notify()
        deadline = time.monotonic() + self.stop_grace  # waited in real time, as the sleeps are
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
        if self._unconfirmed(task):
            log.warning("task %s (%s) is high-risk and its prompt was not confirmed: refused", task.task_id,
                        task.command)
            self._publish(task, ResultState.REJECTED, f"{task.command or task.action} needs your confirmation "
                          "first; I did nothing.", {"needs_confirmation": True})
            return
        with self._lock:
            self._running[task.task_id] = self._queued[task.task_id] = task
            remember(self._accepted, task.task_id, None)
            if task.deadline and task.deadline < self._soonest:
                self._wake.notify()
        self._record.accepted(task.task_id)
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
        now = self.clock.time()
        if task.accept_by and now > task.accept_by:
            return "The task arrived after its dispatch window closed."
        if task.accept_by > now + LONGEST_ACCEPT_WINDOW or task.deadline > now + LONGEST_DEADLINE:
            log.warning("refusing task %s (%s %s): its dispatch window or deadline lies implausibly far ahead",
                        task.task_id, task.capability, task.action)
            return "The task's dispatch window or deadline lies implausibly far ahead; no coordinator sent it now."
        if len(self._running) - len(self._queued) >= self.max_concurrent and not self._may_queue(task):
            return "The agent is busy."
        return ""

    def _unconfirmed(self, task: Task) -> bool:
        """The task is high-risk by this agent's own spec of the action (never the coordinator's word), and
        the person did not confirm its prompt."""
        if task.confirmed:
            return False
        action = self._specs[task.capability].action(task.action)
        if action is None:
            return False
        try:
            args = action.check(task.args)
        except ArgumentError:
            args = task.args  # it will fail with a sentence; judge the risk on what was sent
        return action.risk_of(args) == Risk.HIGH

    def _may_queue(self, task: Task) -> bool:
        """Room in the queue, and by the recent pace the task would run before its deadline (after the
        running tasks and those queued before it)."""
        if len(self._queued) >= self.max_queued:
            return False
        rounds = len(self._queued) // self.max_concurrent + 2
        return not task.deadline or self.clock.time() + rounds * self._pace < task.deadline

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
            elif task.deadline and self.clock.time() > task.deadline:
                self._finish(task, ResultState.FAILED, OUT_OF_TIME)  # never started late
            else:
                self._pool.submit(self._run, task)

    def _run(self, task: Task) -> None:
        started = self.clock.monotonic()
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
            self._pace += (self.clock.monotonic() - started - self._pace) / 8
        read = self._readings.get(task.capability)
        if read is not None and self.capabilities[task.capability].readings() != read:
            self.announce()  # what the task changed (the volume) shows at once, not at the next heartbeat

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
        self._record.finished(task.task_id, state, message)
        self._publish(task, state, message, data or {})
        log.info("task %s %s: %s", task.task_id, state, message)  # once the result is on its way
        self._start_queued()

    def _publish(self, task: Task, state: ResultState, message: str, data: dict | None = None) -> None:
        self.bus.publish(Result(task_id=task.task_id, agent=self.id, state=state, message=message,
                                data=data or {}, attempt=task.attempt))


def remember(recent: OrderedDict, key: object, value: object) -> None:
    """Keep ``key`` among the last SEEN_TASKS."""
    recent[key] = value
    if len(recent) > SEEN_TASKS:
        recent.popitem(last=False)


class TaskRecord:
    """The tasks an agent accepted and how each ended, a JSON line per change in a small file, so a
    restarted agent never runs one of them again. Appends are not synced: it outlives the process,
    not the machine. Compacted to the last SEEN_TASKS tasks when it holds twice as many lines.
    A file that cannot be written is logged once; the agent runs on, remembering in memory only."""

    def __init__(self, path: Path | None, agent_id: str) -> None:
        self.broken = path is None  # then nothing is read or written, and the path is never used
        self.path = path if path is not None else Path(os.devnull)
        self.agent_id = agent_id
        self.lines = 0
        self._file: IO[str] | None = None  # opened for appending at the first write, line-buffered
        self._lock = threading.Lock()

    def load(self) -> OrderedDict[str, Result | None]:
        """Task id -> how it ended; one that was running when the agent stopped ended with the restart."""
        tasks: OrderedDict[str, Result | None] = OrderedDict()
        if self.broken or not self.path.exists():
            return tasks
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            self._fail(exc)
            return tasks
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                task_id, state = str(entry["task"]), ResultState(entry["state"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
            self.lines += 1
            result = None if state == ResultState.ACCEPTED else \
                Result(task_id=task_id, agent=self.agent_id, state=state, message=str(entry.get("message", "")))
            tasks.pop(task_id, None)
            remember(tasks, task_id, result)
        for task_id, result in tasks.items():
            if result is None:
                tasks[task_id] = Result(task_id=task_id, agent=self.agent_id, state=ResultState.FAILED,
                                        message=RESTARTED)
        return tasks

    def accepted(self, task_id: str) -> None:
        self._write({"task": task_id, "state": ResultState.ACCEPTED.value})

    def finished(self, task_id: str, state: ResultState, message: str) -> None:
        self._write({"task": task_id, "state": state.value, "message": message[:KEPT_MESSAGE]})

    def _write(self, entry: dict) -> None:
        if self.broken:
            return
        with self._lock:
            try:
                if self._file is None:
                    self._file = open(self.path, "a", encoding="utf-8", buffering=1)
                self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
                self.lines += 1
                if self.lines > 2 * SEEN_TASKS:
                    self._compact()
            except OSError as exc:
                self._fail(exc)

    def _compact(self) -> None:
        """Keep each of the last SEEN_TASKS tasks' latest line, replacing the file at once."""
        latest: OrderedDict[str, str] = OrderedDict()
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                task_id = str(json.loads(line)["task"])
            except (ValueError, KeyError, TypeError):
                continue
            latest.pop(task_id, None)
            remember(latest, task_id, line)
        fresh = self.path.with_name(self.path.name + ".new")
        fresh.write_text("".join(line + "\n" for line in latest.values()), encoding="utf-8")
        if self._file is not None:
            self._file.close()
        self._file = None
        os.replace(fresh, self.path)
        self.lines = len(latest)

    def _fail(self, exc: OSError) -> None:
        self.broken = True
        log.error("cannot keep the record of accepted tasks in %s (%s): a restart will forget them, and a task "
                  "delivered again after one could run twice", self.path, exc.strerror or exc)
