"""Dispatch and routing: each command of a run, in order, to the least-loaded agent offering it.

A task is re-offered when its agent rejects it, does not accept within ``ack_timeout`` (plus
``ack_grace`` for the word to reach us; an agent that lets a window pass gets no new task until
it is heard from again) or vanishes before accepting. An accepted task is never run elsewhere
unless it is idempotent: when its agent goes offline it keeps the task for ``agent_grace`` to
come back and report it. Accept windows do not run while the coordinator itself is cut off;
back on a broker that kept nothing for it, it offers each agent what it holds of ours again when
it next hears from it (see :meth:`Router.agent_back`), rather than elsewhere, since its word may
have been lost.
Every prompt is answered by its deadline, an absolute time; no task is sent after it. Windows
and deadlines are judged as of when the coordinator's bus received the tick (:meth:`Router.tick`'s
``now``): every message it received before then has been heard, however long handling took. An
unknown capability fails a command only once the warm-up has passed since the coordinator first
reached the broker: before, nobody could have been heard. The warm-up is ``PRESENCE_WAIT`` for the
agents' retained presence to arrive, longer (up to ``warmup``) while an agent heard of is offline:
after a broker restart the agents come back by themselves, each within the 8 s it waits at most
between tries. The router keeps no lock of its own: the coordinator calls it inside its transaction.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from lamcontrol.clock import Clock
from lamcontrol.protocol import (Presence, Prompt, PromptStatus, Result, ResultState, Task, TaskState, TaskSummary,
                                 new_id)

from .events import Events, TaskDispatched, TaskFinished
from .grammar import Command
from .journal import Journal, StreamJournal
from .registry import Registry
from .runs import (ACCEPTED, DISPATCHED, FAILED, OUT, SKIPPED, WAITING, Job, Run, command_from_dict,
                   command_to_dict, describe)
from .settings import Settings

log = logging.getLogger(__name__)

PRESENCE_WAIT = 3.0  # seconds after reaching the broker for the agents' retained presence to arrive

Reply = Callable[[str, PromptStatus, str, list[TaskSummary]], None]


@dataclass(eq=False)
class Router:
    """Runs, their jobs, the tasks waiting for an agent, and the timers on them."""

    settings: Settings
    clock: Clock
    journal: Journal | StreamJournal
    registry: Registry
    publish: Callable[[Task], object]
    reply: Reply
    events: Events
    runs: dict[str, Run] = field(default_factory=dict)
    jobs: dict[str, tuple[Run, Job]] = field(default_factory=dict)
    # Reminders (when, "ack", "grace" or "run", task or prompt id), soonest first; stale ones are skipped.
    _due: list[tuple[float, str, str]] = field(default_factory=list)
    # False while the coordinator is cut off from the broker: accept windows wait.
    connected: bool = True
    # Tasks with no agent yet, oldest first, by (capability, action).
    _waiting: dict[tuple[str, str], dict[str, None]] = field(default_factory=dict)
    # Agents whose word on a task may have been lost with a broker that kept nothing for us.
    _unsure: set[str] = field(default_factory=set)
    # When the coordinator first reached the broker (monotonic): the warm-up counts from there.
    _reached: float | None = None
    epoch: int = 0  # the lease this coordinator leads under, carried by every task (0: none)

    def reset(self) -> None:
        """Forget every run and timer, to read them back from the journal (one router, always: the
        bus's handlers and the intake keep pointing at this one)."""
        self.runs.clear()
        self.jobs.clear()
        self._due.clear()
        self._waiting.clear()
        self._unsure.clear()

    def broker_reached(self) -> None:
        """Connected to the broker: from the first time, agents' retained presence is on its way."""
        if self._reached is None:
            self._reached = self.clock.monotonic()

    def warming_up(self) -> bool:
        """Too early to say no agent offers something: the broker not reached yet, or only just, or
        not long ago while an agent heard of is offline (it may be on its way back)."""
        return self.clock.monotonic() < self.warmup_over()

    # -- runs ---------------------------------------------------------------------------

    def start(self, prompt: Prompt, deadline: float, commands: list[Command], note: str = "") -> None:
        """Carry out a prompt's commands in order."""
        jobs = [Job(new_id(), i, c) for i, c in enumerate(commands)]
        for job in jobs:
            self.journal.add_task(prompt.id, job.task_id, job.position, command_to_dict(job.command))
        run = Run(prompt, deadline, jobs, note)
        self._open(run)
        self._advance(run)

    def resume(self, prompt: Prompt, deadline: float, tasks: list[dict[str, Any]]) -> None:
        """Take up a run the journal recorded: a task out for acceptance gets a new accept window, a
        task not sent yet waits for the next round of :meth:`retry_waiting`."""
        jobs = [Job(t["task_id"], t["position"], command_from_dict(t["command"]), TaskState(t["state"]), t["agent"],
                    t["attempt"], message=t["message"], data=t["data"]) for t in tasks]
        for job in jobs:
            if job.state == DISPATCHED:
                job.ack_deadline = self.clock.time() + self.settings.ack_timeout  # its answer may be queued for us
                heapq.heappush(self._due, (job.ack_deadline, "ack", job.task_id))
        run = Run(prompt, deadline, jobs)
        self._open(run)
        current = run.current()
        if current is None:
            self._finish(run)
        elif current.state == WAITING:
            self._waiting.setdefault(current.kind, {})[current.task_id] = None

    def _open(self, run: Run) -> None:
        self.runs[run.prompt.id] = run
        heapq.heappush(self._due, (run.deadline, "run", run.prompt.id))
        for job in run.jobs:
            self.jobs[job.task_id] = (run, job)

    def _advance(self, run: Run) -> None:
        """Dispatch the next command of a run, or answer when there is nothing left."""
        job = run.current()
        if job is None:
            self._finish(run)
        elif job.state == WAITING:
            self._dispatch(run, job)

    def _finish(self, run: Run) -> None:
        for job in run.jobs:
            self.jobs.pop(job.task_id, None)
        self.runs.pop(run.prompt.id, None)
        status, response = run.outcome()
        self.reply(run.prompt.id, status, response, [j.summary() for j in run.jobs])

    # -- dispatch -----------------------------------------------------------------------

    def _dispatch(self, run: Run, job: Job) -> None:
        now = self.clock.time()
        if now >= run.deadline:  # nobody waits for it any more: never sent
            self._time_out(run)
            return
        command = job.command
        others = self._not_asked_for(run.prompt)
        agent = self.registry.pick(command.capability, command.action, job.tried | others)
        if agent is None and job.tried and now >= job.retry_at:
            if job.retry_at:  # every capable agent was tried: begin another round, busy ones may have room
                job.tried.clear()
                agent = self.registry.pick(command.capability, command.action, job.tried | others)
            job.retry_at = 0.0 if agent else now + self.settings.retry_round
        if agent is None:
            if not self.warming_up() and not self.registry.ever_offered(command.capability, command.action):
                self._end_job(run, job, FAILED, self._nobody_offers(command))
            else:
                job.state, job.agent = WAITING, None
                self._waiting.setdefault(job.kind, {})[job.task_id] = None
            return
        self._waiting.get(job.kind, {}).pop(job.task_id, None)
        job.state, job.agent, job.agent_started = DISPATCHED, agent.presence.agent, agent.presence.started
        agent.inflight += 1
        self._offer(run, job, now)

    def _offer(self, run: Run, job: Job, now: float) -> None:
        """Send the job to its agent as a new attempt, with a new accept window."""
        assert job.agent is not None  # a job is offered once it has an agent
        job.attempt += 1
        job.ack_deadline = now + self.settings.ack_timeout
        heapq.heappush(self._due, (job.ack_deadline, "ack", job.task_id))
        command = job.command
        photo = run.prompt.metadata.image
        args = {**command.args, command.photo: photo} if command.photo and photo else command.args
        task = Task(task_id=job.task_id, prompt_id=run.prompt.id, capability=command.capability,
                    action=command.action, agent=job.agent, command=command.text, args=args,
                    attempt=job.attempt, accept_by=min(job.ack_deadline, run.deadline),
                    deadline=min(run.deadline, now + self.settings.task_timeout), risk=command.risk,
                    confirmed=command.confirmed, epoch=self.epoch)
        self.journal.update_task(job.task_id, job.state, job.agent, job.attempt)
        self.publish(task)
        self.events.emit(TaskDispatched(task))

    def _nobody_offers(self, command: Command) -> str:
        """No agent can do it: which machine left which part out and why (the agent's own words
        say how to fix it), else how to offer it."""
        what = describe(command)
        said = f"No agent can do {what}" if " " in what else f"No agent offers {what}"
        capability = command.capability
        reasons = [f"on {info.presence.agent}, {reason.rstrip('.')}" if reason.startswith(capability)
                   else f"on {info.presence.agent}, {capability} is left out: {reason.rstrip('.')}"
                   for info, reason in self.registry.left_out(capability)]
        if reasons:
            return f"{said}: {'; '.join(reasons)}."
        if any(capability in info.advertised for info in self.registry.agents.values()):
            return f"{said}: the agents offering {capability} do not know it; update them."
        return f"{said}; start an agent with lam-agent -c {capability}."

    def _not_asked_for(self, prompt: Prompt) -> set[str]:
        """All agents but the one the prompt's metadata ``agent`` names, if it names one."""
        wanted = prompt.metadata.agent
        if not wanted:
            return set()
        return {agent_id for agent_id in self.registry.agents if agent_id != wanted}

    def _redispatch(self, run: Run, job: Job, reason: str) -> None:
        log.info("task %s: %s; trying another agent", job.task_id, reason)
        self.registry.release(job.agent)
        if job.agent:
            job.tried.add(job.agent)
        job.state, job.agent = WAITING, None
        self._dispatch(run, job)

    def _end_job(self, run: Run, job: Job, state: TaskState, message: str, data: dict[str, Any] | None = None) -> None:
        if job.state in OUT:
            self.registry.release(job.agent)
        job.state, job.message, job.data = state, message, data or {}
        self._waiting.get(job.kind, {}).pop(job.task_id, None)
        self.journal.update_task(job.task_id, state, job.agent, job.attempt, message, job.data)
        self.events.emit(TaskFinished(job.task_id, job.command.capability, job.agent, state, message, job.data,
                                      job.attempt))
        if state == FAILED:
            for later in run.jobs[job.position + 1:]:
                later.state = SKIPPED
        self._advance(run)

    # -- what agents say ----------------------------------------------------------------

    def result(self, result: Result) -> None:
        """An agent's word on a task; only the agent the task is out with is heard."""
        if self.registry.heard(result.agent):
            self.retry_waiting()  # back in rotation
        found = self.jobs.get(result.task_id)
        if found is None:
            return  # a task from an answered prompt, or not ours
        run, job = found
        if result.agent != job.agent or job.state not in OUT:
            log.info("ignoring %s from %s for task %s (now %s on %s)", result.state, result.agent,
                     result.task_id, job.state, job.agent)
            return
        if result.state == ResultState.REJECTED and result.attempt < job.attempt:
            # An earlier offer, delivered late (sent again after a reconnect): the agent may take this one.
            log.info("ignoring %s's refusal of attempt %d of task %s: attempt %d is out with it", result.agent,
                     result.attempt, result.task_id, job.attempt)
            return
        if result.state == ResultState.ACCEPTED:
            job.state = ACCEPTED
            self.journal.update_task(job.task_id, ACCEPTED, job.agent, job.attempt)
        elif result.state == ResultState.REJECTED and result.data.get("needs_confirmation"):
            self._end_job(run, job, FAILED, result.message)  # its own rules: no other agent will differ
        elif result.state == ResultState.REJECTED:
            self._redispatch(run, job, f"{job.agent} rejected it ({result.message})")
        else:
            self._end_job(run, job, TaskState(result.state), result.message, result.data)
            self.retry_waiting()  # the agent has room for a waiting task

    def agent_gone(self, agent_id: str) -> None:
        """Re-offer what the agent had not accepted; what it accepted waits ``agent_grace`` for it to
        come back (a broker restart sends every agent's last will)."""
        log.info("agent %s went offline", agent_id)
        for run, job in list(self.jobs.values()):
            if job.agent == agent_id and job.state == DISPATCHED:
                self._redispatch(run, job, f"{agent_id} went offline before accepting")
            elif job.agent == agent_id and job.state == ACCEPTED:
                heapq.heappush(self._due, (self.clock.time() + self.settings.agent_grace, "grace", job.task_id))

    def agent_back(self, presence: Presence) -> None:
        """An online presence: the tasks it lists as running were accepted, whatever became of that word.

        First heard since we came back to a broker that kept nothing for us, the agent is offered
        again what it holds of ours, as its word on it may have been lost: the tasks we did not hear
        it accept, and, when it is the same process (``started``), the ones it did, finished or still
        running (a result it sends before we are subscribed again is lost too). An agent that took a
        task answers from what became of it, at once or when it ends; never having had it, it takes
        it now. A restarted agent is not asked about what it accepted: it could not know."""
        agent_id = presence.agent
        for task_id in presence.running:
            run, job = self.jobs.get(task_id, (None, None))
            if job is not None and job.agent == agent_id and job.state == DISPATCHED:
                job.state = ACCEPTED
                self.journal.update_task(job.task_id, ACCEPTED, job.agent, job.attempt)
        if agent_id not in self._unsure:
            return
        self._unsure.discard(agent_id)
        now = self.clock.time()
        for run, job in list(self.jobs.values()):
            if job.agent != agent_id or now >= run.deadline:
                continue
            same_process = bool(presence.started) and job.agent_started == presence.started
            if job.state == DISPATCHED or (job.state == ACCEPTED and same_process):
                log.info("task %s: offered to %s again, its word may have been lost", job.task_id, agent_id)
                self._offer(run, job, now)

    def _grace_over(self, run: Run, job: Job) -> None:
        """The agent did not come back with the task it accepted: re-offer it if idempotent, else fail it."""
        if self.registry.running(job.agent, job.task_id):
            return  # back, and still running it
        if job.command.idempotent:
            self._redispatch(run, job, f"{job.agent} went offline while running it")
        else:
            self._end_job(run, job, FAILED,
                          f"The agent {job.agent} went offline while running {describe(job.command)}.")

    def suspend(self) -> None:
        """The coordinator is cut off from the broker: no agent can be heard, accept windows wait."""
        self.connected = False

    def reconnected(self, session_lost: bool = False) -> None:
        """Back on the broker (or awake after a freeze): every open accept window starts again, as an
        `accepted` sent meanwhile may be on its way to us. When the broker kept no session for us
        (restarted without persistence), what was sent meanwhile is lost: see :meth:`agent_back`.
        On a cluster (an epoch) the same holds for what the broker had handed to the connection just
        lost: a NATS node hands it on again only after its ``ack_wait``, so we ask the agents now."""
        self.connected = True
        now = self.clock.time()
        for run, job in self.jobs.values():
            if job.state == DISPATCHED:
                job.ack_deadline = max(job.ack_deadline, now + self.settings.ack_timeout)
                heapq.heappush(self._due, (job.ack_deadline, "ack", job.task_id))
            if (session_lost or self.epoch) and job.state in OUT and job.agent is not None:
                self._unsure.add(job.agent)
        if self.epoch:
            for agent_id in list(self._unsure):
                info = self.registry.agents.get(agent_id)
                if info is not None and info.presence.online:
                    self.agent_back(info.presence)

    def retry_waiting(self) -> None:
        """Offer waiting tasks again, oldest first; once one finds no agent, the rest of its kind wait on."""
        for kind, queue in list(self._waiting.items()):
            while queue:  # each pass takes the oldest off the queue, or stops: it still waits
                run, job = self.jobs[next(iter(queue))]  # a finished job has left its queue already
                self._dispatch(run, job)
                if job.state == WAITING:
                    break
            if not queue:
                del self._waiting[kind]

    # -- timers -------------------------------------------------------------------------

    def next_due(self) -> float:
        """When (wall time) :meth:`tick` next has work: the soonest reminder, or now while tasks wait for
        an agent (the caller paces its ticks); math.inf when there is nothing to wait for."""
        if self._waiting:
            return self.clock.time()
        return self._due[0][0] if self._due else math.inf

    def warmup_over(self) -> float:
        """When (monotonic) the warm-up ends, as things stand; math.inf before the broker is reached."""
        if self.settings.warmup <= 0:
            return -math.inf
        if self._reached is None:
            return math.inf
        away = any(not info.online for info in self.registry.agents.values())
        return self._reached + (self.settings.warmup if away else min(PRESENCE_WAIT, self.settings.warmup))

    def tick(self, now: float) -> None:
        """Accept windows, grace periods and deadlines that passed by ``now``; then offer waiting tasks
        again."""
        later = []
        while self._due and self._due[0][0] < now:
            due = heapq.heappop(self._due)
            _, what, key = due
            if what == "run" and key in self.runs:
                self._time_out(self.runs[key])
            elif key not in self.jobs:
                continue
            elif not self.connected:
                later.append(due)  # we hear nobody now: their word may be waiting for us
            elif what == "ack":
                self._accept_window_over(*self.jobs[key], now)
            elif what == "grace" and self.jobs[key][1].state == ACCEPTED:
                self._grace_over(*self.jobs[key])
        for due in later:
            heapq.heappush(self._due, due)
        self.retry_waiting()

    def _accept_window_over(self, run: Run, job: Job, now: float) -> None:
        if job.state != DISPATCHED:
            return
        if now <= job.ack_deadline + self.settings.ack_grace:
            heapq.heappush(self._due, (job.ack_deadline + self.settings.ack_grace, "ack", job.task_id))
            return
        self.registry.missed(job.agent)
        self._redispatch(run, job, f"{job.agent} did not accept in time")

    def _time_out(self, run: Run) -> None:
        job = run.current()
        if job is not None:
            if job.state == WAITING:
                message = f"No agent could take {describe(job.command)} in time."
            else:
                message = f"{describe(job.command).capitalize()} did not finish in time."
            self._end_job(run, job, FAILED, message)
