"""The coordinator: prompts in, tasks out, one reply per prompt.

Life of a prompt (README.md, "How it works"): journal it; parse it into commands; hold
high-risk ones until the same source confirms; send each command, in order, to the
least-loaded online agent that offers it; re-dispatch when an agent rejects, does not
accept in time or vanishes before accepting; never re-run an accepted task elsewhere
unless it is idempotent; answer once, before the deadline.

All state changes happen under one lock, from the bus dispatcher thread and a ticker.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from lamcontrol import __version__
from lamcontrol.bus import BrokerSettings, Bus
from lamcontrol.protocol import (Presence, Prompt, ProtocolError, Reply, Result, Task, TaskSummary, check_id,
                                 decode, new_id, parse)

from .discovery import Discovery
from .grammar import Command, ParseResult, parse_chain
from .journal import Journal
from .metrics import build_metrics
from .parsing import Context, Parser, is_cancellation, is_confirmation
from .registry import Registry
from .specs import SpecStore

log = logging.getLogger(__name__)

TICK = 0.1
WARMUP = 3.0  # seconds after start during which unknown capabilities are waited for
TRANSCRIPT = 5
RETRY_ROUND = 1.0  # pause before offering a task again to agents that already refused it
MAX_PROMPT_TIMEOUT = 600.0
PRUNE_EVERY = 3600.0  # seconds between journal clean-ups


@dataclass
class Job:
    """One command of a prompt and where it stands."""

    task_id: str
    position: int
    command: Command
    state: str = "waiting"  # waiting, dispatched, accepted, succeeded, failed, skipped
    agent: str | None = None
    attempt: int = 0
    tried: set[str] = field(default_factory=set)
    ack_deadline: float = 0.0
    retry_at: float = 0.0
    message: str = ""
    data: dict = field(default_factory=dict)

    @property
    def kind(self) -> tuple[str, str]:
        return self.command.capability, self.command.action

    def summary(self) -> dict:
        return TaskSummary(task_id=self.task_id, command=self.command.text, state=self.state, agent=self.agent,
                           message=self.message, data=self.data).to_dict()


@dataclass
class Run:
    """A prompt being carried out."""

    prompt: Prompt
    deadline: float
    jobs: list[Job]
    note: str = ""

    def current(self) -> Job | None:
        return next((j for j in self.jobs if j.state not in ("succeeded", "failed", "skipped")), None)


@dataclass
class Held:
    """High-risk commands waiting for the same source to confirm."""

    prompt: Prompt
    commands: list[Command]
    expires: float
    note: str = ""


def command_from_dict(data: dict) -> Command:
    return Command(data["capability"], data["action"], data["args"], data["command"], data.get("risk", "low"),
                   data.get("idempotent", False))


def command_to_dict(command: Command) -> dict:
    return {**command.to_dict(), "risk": command.risk, "idempotent": command.idempotent}


def describe(command: Command) -> str:
    return f"{command.capability} {command.action}"


class Coordinator:
    """The routing brain. ``start()`` connects; ``stop()`` goes offline cleanly."""

    def __init__(self, settings: BrokerSettings, parser: Parser, journal: Journal, ack_timeout: float = 5.0,
                 prompt_timeout: float = 60.0, task_timeout: float = 45.0, confirm_window: float = 30.0,
                 heartbeat: float = 30.0, discovery_prefix: str = "", metrics_port: int = 0,
                 metrics_bind: str = "127.0.0.1") -> None:
        self.parser = parser
        self.journal = journal
        self.ack_timeout = ack_timeout
        self.prompt_timeout = prompt_timeout
        self.task_timeout = task_timeout
        self.confirm_window = confirm_window
        self.heartbeat = heartbeat
        self.registry = Registry()
        self.runs: dict[str, Run] = {}
        self.jobs: dict[str, tuple[Run, Job]] = {}
        self.held: dict[str, Held] = {}
        # Reminders (when, "ack" or "run", task or prompt id), soonest first; stale ones are skipped.
        self._due: list[tuple[float, str, str]] = []
        # Tasks with no agent yet, oldest first, by (capability, action).
        self._waiting: dict[tuple[str, str], dict[str, None]] = {}
        self.transcripts: dict[str, deque[str]] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._started = time.monotonic()
        self.bus = Bus(settings, component="coordinator", client_id=f"{settings.prefix}-coordinator",
                       will=self.presence("offline"), persistent=True, ack_when_handled=True,
                       transaction=self.transaction)
        self.topics = self.bus.topics
        self.bus.on(self.topics.prompts, self.on_prompt)
        self.bus.on(self.topics.all_results, self.on_result)
        self.bus.on(self.topics.all_agent_statuses, self.on_presence)
        self.specs = SpecStore(self.bus.settings.max_payload)  # what online agents understand
        self.bus.on(f"{self.topics.prefix}/agents/+/spec", self.specs.on_spec)
        self.bus.on_connect(self.announce)
        self.discovery = Discovery(self.bus, discovery_prefix, specs_of=self.specs.of_agent) if discovery_prefix else None
        self.metrics = build_metrics(self, metrics_port, metrics_bind)

    # -- life cycle ---------------------------------------------------------------------

    def presence(self, state: str = "online") -> Presence:
        return Presence(state=state, agent="coordinator", load=len(self.runs), version=__version__,
                        heartbeat=self.heartbeat, max_concurrent=0)

    def announce(self) -> None:
        self.bus.publish(self.presence(), retain=True)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The state lock, then one journal transaction: always taken in this order."""
        with self._lock, self.journal.batch():
            yield

    def start(self, timeout: float | None = None) -> None:
        self.resume()
        self.bus.start(timeout)
        threading.Thread(target=self._tick_loop, name="coordinator-tick", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self.bus.stop(final=self.presence("offline"))
        with self._lock:
            self.journal.close()

    def _tick_loop(self) -> None:
        last_beat = last_prune = time.monotonic()
        while not self._stopping.wait(TICK):
            try:
                self.tick()
                if time.monotonic() - last_beat >= self.heartbeat and self.bus.connected.is_set():
                    last_beat = time.monotonic()
                    self.announce()
                if time.monotonic() - last_prune >= PRUNE_EVERY:
                    last_prune = time.monotonic()
                    with self._lock:
                        log.info("journal: forgot %d old prompt(s)", self.journal.prune())
            except Exception:
                log.exception("coordinator tick failed")

    def resume(self) -> None:
        """Take up every prompt the journal shows unanswered (after a crash or restart)."""
        for prompt, deadline, tasks in self.journal.open_prompts():
            log.info("resuming prompt %s (%d task(s) recorded)", prompt.id, len(tasks))
            if not tasks:
                self._handle(prompt, deadline)
                continue
            jobs = [Job(t["task_id"], t["position"], command_from_dict(t["command"]), t["state"], t["agent"],
                        t["attempt"], message=t["message"], data=t["data"]) for t in tasks]
            run = Run(prompt, deadline, jobs)
            for job in jobs:
                if job.state == "dispatched":
                    job.ack_deadline = time.time() + self.ack_timeout  # its answer may be queued for us
                    heapq.heappush(self._due, (job.ack_deadline, "ack", job.task_id))
                self.jobs[job.task_id] = (run, job)
            self.runs[prompt.id] = run
            heapq.heappush(self._due, (deadline, "run", prompt.id))
            self._advance(run)

    # -- prompts ------------------------------------------------------------------------

    def on_prompt(self, topic: str, payload: bytes) -> None:
        try:
            prompt = Prompt.from_payload(payload, self.bus.settings.max_payload)
        except (ProtocolError, UnicodeDecodeError) as exc:
            self._reject_unreadable(topic, payload, exc)
            return
        timeout = prompt.metadata.get("timeout")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            timeout = self.prompt_timeout
        deadline = time.time() + min(timeout, MAX_PROMPT_TIMEOUT)
        with self.transaction():
            if not self.journal.add_prompt(prompt, deadline):
                log.info("ignoring redelivered prompt %s", prompt.id)
                return
            self._handle(prompt, deadline)

    def _reject_unreadable(self, topic: str, payload: bytes, error: Exception) -> None:
        """Refuse a bad prompt on lam/errors, and answer it too when it carries a usable id."""
        self.bus.refuse(topic, error, payload)
        try:
            data = decode(payload, self.bus.settings.max_payload)
            prompt_id = check_id(data["id"], "id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
        except (ProtocolError, KeyError):
            prompt_id = None
        if prompt_id:
            self.bus.publish(Reply(prompt_id=prompt_id, status="rejected", response=f"I could not read that: {error}"))

    def _handle(self, prompt: Prompt, deadline: float) -> None:
        source = prompt.source
        held = self.held.pop(source, None)
        if held and held.expires >= time.time():
            if is_confirmation(prompt.prompt):
                self._start(prompt, deadline, held.commands, held.note)
                return
            if is_cancellation(prompt.prompt):
                self._reply(prompt.id, "ignored", "Cancelled.", [])
                return
        result = self._parse(prompt)
        if not result.commands:
            self._reply(prompt.id, "ignored", result.reason or "That is not something I can do.", [])
            return
        risky = [c for c in result.commands if c.risk == "high"]
        if risky:
            self.held[source] = Held(prompt, result.commands, time.time() + self.confirm_window, result.note)
            what = " and ".join(c.text for c in risky)
            self._reply(prompt.id, "needs_confirmation",
                        f"Are you sure you want me to run {what}? Say confirm within {self.confirm_window:g} seconds.", [])
            return
        self._start(prompt, deadline, result.commands, result.note)

    def _parse(self, prompt: Prompt) -> ParseResult:
        context = Context(source=prompt.source, transcript=list(self.transcripts.get(prompt.source, ())),
                          known=self.registry.offers, vocabulary=self.registry.vocabulary(),
                          language=self.specs.language(self.registry))
        try:
            return self.metrics.parsed(self.parser.parse(prompt.prompt, context))
        except Exception:
            log.exception("parser %s failed; falling back to the command grammar", self.parser.name)
            return self.metrics.parsed(parse_chain(prompt.prompt, self.registry.offers), failed=True)

    def _start(self, prompt: Prompt, deadline: float, commands: list[Command], note: str) -> None:
        jobs = [Job(new_id(), i, c) for i, c in enumerate(commands)]
        for job in jobs:
            self.journal.add_task(prompt.id, job.task_id, job.position, command_to_dict(job.command))
        transcript = self.transcripts.setdefault(prompt.source, deque(maxlen=TRANSCRIPT))
        transcript.extend(c.text for c in commands)
        run = Run(prompt, deadline, jobs, note)
        self.runs[prompt.id] = run
        heapq.heappush(self._due, (deadline, "run", prompt.id))
        for job in jobs:
            self.jobs[job.task_id] = (run, job)
        self._advance(run)

    # -- dispatch -----------------------------------------------------------------------

    def _advance(self, run: Run) -> None:
        """Dispatch the next command of a run, or answer when there is nothing left."""
        job = run.current()
        if job is None:
            self._finish(run)
        elif job.state == "waiting":
            self._dispatch(run, job)

    def _dispatch(self, run: Run, job: Job) -> None:
        command = job.command
        others = self._not_asked_for(run.prompt)
        agent = self.registry.pick(command.capability, command.action, job.tried | others)
        if agent is None and job.tried and time.time() >= job.retry_at:
            if job.retry_at:  # every capable agent was tried: begin another round, busy ones may have room
                job.tried.clear()
                agent = self.registry.pick(command.capability, command.action, job.tried | others)
            job.retry_at = 0.0 if agent else time.time() + RETRY_ROUND
        if agent is None:
            warming_up = time.monotonic() - self._started < WARMUP
            if not warming_up and not self.registry.ever_offered(command.capability, command.action):
                self._end_job(run, job, "failed", f"No agent can do {describe(command)}.")
            else:
                job.state, job.agent = "waiting", None
                self._waiting.setdefault(job.kind, {})[job.task_id] = None
            return
        self._waiting.get(job.kind, {}).pop(job.task_id, None)
        now = time.time()
        job.state, job.agent, job.attempt = "dispatched", agent.presence.agent, job.attempt + 1
        job.ack_deadline = now + self.ack_timeout
        heapq.heappush(self._due, (job.ack_deadline, "ack", job.task_id))
        agent.inflight += 1
        task = Task(task_id=job.task_id, prompt_id=run.prompt.id, capability=command.capability,
                    action=command.action, agent=job.agent, command=command.text, args=command.args,
                    attempt=job.attempt, accept_by=job.ack_deadline, deadline=min(run.deadline, now + self.task_timeout),
                    risk=command.risk)
        self.journal.update_task(job.task_id, "dispatched", job.agent, job.attempt)
        self.bus.publish(task)
        self.metrics.task_dispatched(job.task_id)

    def _not_asked_for(self, prompt: Prompt) -> set[str]:
        """All agents but the one the prompt's metadata ``agent`` names, if it names one."""
        wanted = prompt.metadata.get("agent")
        if not isinstance(wanted, str) or not wanted:
            return set()
        return {agent_id for agent_id in self.registry.agents if agent_id != wanted}

    def _release(self, job: Job) -> None:
        info = self.registry.agents.get(job.agent or "")
        if info and info.inflight > 0:
            info.inflight -= 1


    def _redispatch(self, run: Run, job: Job, reason: str) -> None:
        log.info("task %s: %s; trying another agent", job.task_id, reason)
        self._release(job)
        if job.agent:
            job.tried.add(job.agent)
        job.state, job.agent = "waiting", None
        self._dispatch(run, job)

    def _end_job(self, run: Run, job: Job, state: str, message: str, data: dict | None = None) -> None:
        if job.state in ("dispatched", "accepted"):
            self._release(job)
        job.state, job.message, job.data = state, message, data or {}
        self._waiting.get(job.kind, {}).pop(job.task_id, None)
        self.journal.update_task(job.task_id, state, job.agent, job.attempt, message, job.data)
        self.metrics.task_finished(job.task_id, job.command.capability, state)
        if state == "failed":
            for later in run.jobs[job.position + 1:]:
                later.state = "skipped"
        self._advance(run)

    # -- results and presence ------------------------------------------------------------

    def on_result(self, topic: str, payload: bytes) -> None:
        result = parse(Result, payload, self.bus.settings.max_payload)
        if result.task_id != self.topics.last_level(topic):
            raise ProtocolError("does not match the topic's task id", "task_id")
        if self.discovery:
            self.discovery.result_received(result, payload)
        with self.transaction():
            found = self.jobs.get(result.task_id)
            if found is None:
                return  # a task from an answered prompt, or not ours
            run, job = found
            if result.agent != job.agent or job.state not in ("dispatched", "accepted"):
                log.info("ignoring %s from %s for task %s (now %s on %s)", result.state, result.agent,
                         result.task_id, job.state, job.agent)
                return
            if result.state == "accepted":
                job.state = "accepted"
                self.journal.update_task(job.task_id, "accepted", job.agent, job.attempt)
            elif result.state == "rejected":
                self._redispatch(run, job, f"{job.agent} rejected it ({result.message})")
            else:
                self._end_job(run, job, result.state, result.message, result.data)
                self._retry_waiting()  # the agent has room for a waiting task

    def on_presence(self, topic: str, payload: bytes) -> None:
        if not payload:
            with self._lock:
                self.registry.forget(self.topics.agent_of(topic))
            if self.discovery:
                self.discovery.forget(self.topics.agent_of(topic))
            return
        presence = parse(Presence, payload, self.bus.settings.max_payload)
        if presence.agent != self.topics.agent_of(topic):
            raise ProtocolError("does not match the topic's agent id", "agent")
        if self.discovery:
            self.discovery.presence_received(presence)
        with self.transaction():
            if self.registry.update(presence):
                self._agent_gone(presence.agent)
            self._retry_waiting()

    def _agent_gone(self, agent_id: str) -> None:
        log.info("agent %s went offline", agent_id)
        for run, job in list(self.jobs.values()):
            if job.agent != agent_id:
                continue
            if job.state == "dispatched":
                self._redispatch(run, job, f"{agent_id} went offline before accepting")
            elif job.state == "accepted" and job.command.idempotent:
                self._redispatch(run, job, f"{agent_id} went offline while running it")
            elif job.state == "accepted":
                self._end_job(run, job, "failed",
                              f"The agent {agent_id} went offline while running {describe(job.command)}.")

    def _retry_waiting(self) -> None:
        """Offer waiting tasks again, oldest first; once one finds no agent, the rest of its kind wait on."""
        for kind, queue in list(self._waiting.items()):
            for task_id in list(queue):
                run, job = self.jobs[task_id]  # a finished job has left its queue already
                self._dispatch(run, job)
                if job.state == "waiting":
                    break
            if not queue:
                del self._waiting[kind]

    def tick(self) -> None:
        """Ack timeouts, deadlines, stale agents, expired confirmations, waiting jobs."""
        now = time.time()
        with self.transaction():
            for agent_id in self.registry.stale():
                self._agent_gone(agent_id)
            while self._due and self._due[0][0] < now:
                _, what, key = heapq.heappop(self._due)
                if what == "ack" and key in self.jobs:
                    run, job = self.jobs[key]
                    if job.state == "dispatched" and now > job.ack_deadline:
                        self._redispatch(run, job, f"{job.agent} did not accept in time")
                elif what == "run" and key in self.runs:
                    self._time_out(self.runs[key])
            for source, held in list(self.held.items()):
                if held.expires < now:
                    del self.held[source]
            self._retry_waiting()

    def _time_out(self, run: Run) -> None:
        job = run.current()
        if job is not None:
            if job.state == "waiting":
                message = f"No agent could take {describe(job.command)} in time."
            else:
                message = f"{describe(job.command).capitalize()} did not finish in time."
            self._end_job(run, job, "failed", message)

    # -- replies ------------------------------------------------------------------------

    def _finish(self, run: Run) -> None:
        for job in run.jobs:
            self.jobs.pop(job.task_id, None)
        self.runs.pop(run.prompt.id, None)
        succeeded = [j for j in run.jobs if j.state == "succeeded"]
        if len(succeeded) == len(run.jobs):
            status = "succeeded"
        else:
            status = "partial" if succeeded else "failed"
        sentences = [j.message.strip() for j in run.jobs if j.message.strip()]
        if len(sentences) > 1:
            sentences = [s if s[-1] in ".!?" else s + "." for s in sentences]
        response = " ".join(sentences) or "Done."
        if run.note:
            response = f"{response} ({run.note})"
        self._reply(run.prompt.id, status, response, [j.summary() for j in run.jobs])

    def _reply(self, prompt_id: str, status: str, response: str, tasks: list[dict]) -> None:
        reply = Reply(prompt_id=prompt_id, status=status, response=response, tasks=tasks)
        payload = reply.to_json()
        self.journal.set_reply(prompt_id, payload)
        self.bus.publish_raw(reply.topic(self.topics), payload)
        if self.discovery:
            self.discovery.reply_sent(payload)
        self.metrics.replied(status)
        log.info("prompt %s %s: %s", prompt_id, status, response)
