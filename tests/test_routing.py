"""Routing in process: the real coordinator, journal and bus routing, with a bus that never connects
and a clock the test moves. Redispatch, timeouts, confirmation and crash resume, deterministically."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from lamcontrol.agents.main import main as agent_main
from lamcontrol.bus import CONNECT, BrokerSettings, Bus
from lamcontrol.clock import Clock
from lamcontrol.coordinator.discovery import Discovery
from lamcontrol.coordinator.events import Events, Extension, PresenceChanged, Replied, TaskDispatched, TaskFinished
from lamcontrol.coordinator.journal import Journal
from lamcontrol.coordinator.grammar import Command, ParseResult
from lamcontrol.coordinator.parsing import ChainParser, Parser
from lamcontrol.coordinator.service import Coordinator
from lamcontrol.coordinator.settings import Settings
from lamcontrol.protocol import (ErrorRecord, LegacyResult, Message, Presence, Prompt, Reply, Result, Task,
                                 read)

ECHO = {"echo": ["fail", "say", "sleep"]}
NO_COMPUTER_VOLUME = "No agent can do computer volume; start an agent with lam-agent -c computer."


class FakeClock:
    """Wall and monotonic time that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


class FakeBus(Bus):
    """The real bus (subscriptions, parsing, transactions), never connected: what goes out is kept."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, bytes]] = []
        self.acked: list[int] = []
        self._client.ack = lambda mid, qos: self.acked.append(mid)  # paho's, never connected here
        self.connected.set()

    def _send(self, topic: str, payload: bytes | str, qos: int, retain: bool) -> None:
        self.sent.append((topic, payload if isinstance(payload, bytes) else payload.encode()))

    def run_deferred(self) -> bool:
        """Handle what other threads handed to the bus thread (there is none here); True if there was some."""
        handed = bool(self._inbox)
        while self._inbox:
            self._handle_burst([self._inbox.popleft()])
        return handed


class Routing:
    """A coordinator on a fake bus and clock, with agents played by the test."""

    def __init__(self, journal: Path, parser: Parser | None = None, **settings: float | bool) -> None:
        self.journal = journal
        self.parser = parser or ChainParser()
        self.settings = Settings(**{"warmup": 0.0, **settings})
        self.clock = FakeClock()
        self.coordinator = self.restart()

    def restart(self) -> Coordinator:
        """A new coordinator on the same journal, as after a crash; it takes up what was open."""
        self.coordinator = Coordinator(BrokerSettings(prefix="home/lam"), self.parser,
                                       Journal(self.journal, clock=self.clock), self.settings, self.clock,
                                       bus_factory=FakeBus)
        self.bus = self.coordinator.bus
        with self.coordinator.transaction():
            self.coordinator.resume()
        self.settle()
        return self.coordinator

    def deliver(self, message: Message, topic: str | None = None) -> None:
        self.bus.handle(topic or message.topic(self.bus.topics), message.to_json())
        self.settle()

    def settle(self) -> None:
        """Wait until the prompts handed over are understood, and handle what comes back, as the bus
        thread would."""
        assert self.coordinator.intake.settled(30)
        while self.bus.run_deferred():
            assert self.coordinator.intake.settled(30)

    def online(self, agent: str, capabilities: dict = ECHO, max_concurrent: int = 4) -> None:
        self.deliver(Presence(state="online", agent=agent, capabilities=capabilities, max_concurrent=max_concurrent))

    def offline(self, agent: str) -> None:
        self.deliver(Presence(state="offline", agent=agent))

    def send(self, text: str, source: str = "test", **metadata: object) -> Prompt:
        prompt = Prompt(prompt=text, source=source, metadata=metadata)
        self.deliver(prompt)
        return prompt

    def say(self, task: Task, state: str, message: str = "", agent: str | None = None) -> None:
        """``agent`` (default: the task's own) reports on the task, on its own topic."""
        self.deliver(Result(task_id=task.task_id, agent=agent or task.agent, state=state, message=message))

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.coordinator.tick()
        self.settle()

    def sent(self, kind: type[Message]) -> list:
        found = [read(self.bus.topics, t, p) for t, p in self.bus.sent]
        return [m for m in found if type(m) is kind]

    def tasks(self) -> list[Task]:
        return self.sent(Task)

    def replies(self) -> list[Reply]:
        return self.sent(Reply)


@pytest.fixture
def routing(tmp_path: Path) -> Routing:
    return Routing(tmp_path / "journal.db")


def test_rejected_task_goes_to_the_next_agent(routing):
    routing.online("a1")
    routing.online("a2")
    prompt = routing.send("echo hello")
    [first] = routing.tasks()
    assert first.agent == "a1" and first.attempt == 1
    routing.say(first, "rejected", "busy")
    second = routing.tasks()[1]
    assert (second.task_id, second.agent, second.attempt) == (first.task_id, "a2", 2)
    routing.say(second, "accepted")
    routing.say(second, "succeeded", "hello")
    [reply] = routing.replies()
    assert (reply.prompt_id, reply.status, reply.response) == (prompt.id, "succeeded", "hello")
    assert [(t.agent, t.state) for t in reply.tasks] == [("a2", "succeeded")]


def test_a_task_not_accepted_in_time_goes_elsewhere_and_the_late_word_is_ignored(routing):
    routing.online("a1")
    routing.online("a2")
    routing.send("echo hello")
    [first] = routing.tasks()
    assert first.accept_by == routing.clock.now + routing.settings.ack_timeout
    routing.advance(routing.settings.ack_timeout + routing.settings.ack_grace - 0.01)  # its word may be on the way
    assert len(routing.tasks()) == 1
    routing.advance(0.02)
    second = routing.tasks()[1]
    assert second.agent == "a2"
    routing.say(first, "accepted")  # a1 woke up too late: not heard
    routing.say(first, "succeeded", "from a1")
    assert routing.replies() == []
    routing.say(second, "accepted")
    routing.say(second, "succeeded", "from a2")
    assert [r.response for r in routing.replies()] == ["from a2"]


def test_agent_offline_before_accepting_means_another_agent_and_after_accepting_a_failure(routing):
    routing.online("a1")
    routing.online("a2")
    routing.send("echo sleep 1 nap")
    routing.offline("a1")
    assert [t.agent for t in routing.tasks()] == ["a1", "a2"]
    routing.say(routing.tasks()[1], "accepted")
    routing.offline("a2")
    routing.advance(routing.settings.agent_grace - 0.1)
    assert routing.replies() == []  # it may come back and report the task
    routing.advance(0.2)
    [reply] = routing.replies()
    assert reply.status == "failed" and "went offline while running" in reply.response


def test_idempotent_work_of_an_agent_gone_offline_is_offered_again(routing):
    routing.online("a1")
    routing.send("echo hello")  # saying something twice does no harm
    routing.say(routing.tasks()[0], "accepted")
    routing.offline("a1")
    routing.online("a2")
    routing.advance(routing.settings.agent_grace + 0.1)
    [_, again] = routing.tasks()
    assert (again.agent, again.attempt) == ("a2", 2)


def test_deadlines_answer_every_prompt(routing):
    routing.online("a1")
    routing.send("echo hello", timeout=2.0)
    [task] = routing.tasks()
    routing.say(task, "accepted")
    routing.advance(1.9)
    assert routing.replies() == []
    routing.advance(0.2)
    [reply] = routing.replies()
    assert reply.status == "failed" and reply.response == "Echo did not finish in time."


def test_waiting_for_an_agent_until_one_comes_or_the_deadline_passes(routing):
    routing.online("a1", max_concurrent=1)
    routing.send("echo hello")
    routing.send("echo again", timeout=3.0)
    [first] = routing.tasks()  # a1 is full: the second waits
    routing.say(first, "accepted")
    routing.say(first, "succeeded", "hello")
    second = routing.tasks()[1]
    assert second.agent == "a1" and second.args == {"text": "again"}
    routing.send("echo late", timeout=1.0)
    routing.advance(1.1)
    assert routing.replies()[-1].response == "No agent could take echo in time."


def test_an_agent_gets_as_many_tasks_as_it_runs_and_queues(routing):
    routing.deliver(Presence(state="online", agent="a1", capabilities=ECHO, max_concurrent=1, max_queued=2))
    for text in ("one", "two", "three", "four"):
        routing.send(f"echo {text}")
    assert [t.args["text"] for t in routing.tasks()] == ["one", "two", "three"]  # the fourth waits for room
    first = routing.tasks()[0]
    routing.say(first, "accepted")
    routing.say(first, "succeeded", "one")
    assert [t.args["text"] for t in routing.tasks()] == ["one", "two", "three", "four"]


def test_high_risk_commands_wait_for_the_same_source_to_confirm(routing):
    routing.online("pc", {"computer": ["power"]})
    asked = routing.send("computer power shutdown", source="r1")
    assert routing.replies()[-1].status == "needs_confirmation" and routing.tasks() == []
    routing.send("confirm", source="other")  # not the one asked
    assert routing.tasks() == []
    routing.send("confirm", source="r1")
    [task] = routing.tasks()
    assert (task.capability, task.action, task.args, task.risk) == ("computer", "power", {"mode": "shutdown"}, "high")
    assert task.prompt_id != asked.id and task.confirmed  # the agent runs it only so
    routing.send("computer power shutdown", source="r1")
    routing.advance(routing.settings.confirm_window + 1)
    routing.send("confirm", source="r1")
    assert len(routing.tasks()) == 1


def test_an_agent_refusing_an_unconfirmed_task_ends_it_with_its_sentence(routing):
    """An agent whose own spec says high risk refuses a task the coordinator thought low: no other agent
    is asked (they read the action the same way), the reply says why."""
    routing.online("pc1", {"computer": ["power"]})
    routing.online("pc2", {"computer": ["power"]})
    routing.send("computer power lock")
    [task] = routing.tasks()
    assert not task.confirmed and task.risk == "low"
    routing.deliver(Result(task_id=task.task_id, agent=task.agent, state="rejected", data={"needs_confirmation": True},
                           message="computer power lock needs your confirmation first; I did nothing."))
    [reply] = routing.replies()
    assert (reply.status, reply.response) == ("failed", "computer power lock needs your confirmation first; I did "
                                                         "nothing.")
    assert len(routing.tasks()) == 1


def test_an_agents_word_on_its_size_counts_only_so_far(routing):
    """An agent saying it runs a million tasks at once, with a negative load, is counted at 16 at once
    and 64 queued: the others get their share, and lam/errors says so."""
    routing.deliver(Presence(state="online", agent="big", capabilities=ECHO, max_concurrent=10**6,
                             max_queued=10**6, load=-1000))
    routing.online("small", max_concurrent=4)
    for n in range(40):
        routing.send(f"echo sleep 5 t{n}")
    given = [t.agent for t in routing.tasks()]
    assert (given.count("big"), given.count("small")) == (36, 4)
    [refusal] = [m for m in routing.sent(ErrorRecord) if "big" in m.error]
    assert refusal.error == "agent big says it runs 1000000 tasks at once and queues 1000000; I count at most 16 and 64"


def test_a_restarted_coordinator_finishes_what_the_journal_shows_open(routing):
    routing.online("a1")
    prompt = routing.send("echo hello && echo again")
    [task] = routing.tasks()
    routing.say(task, "accepted")
    routing.say(task, "succeeded", "hello")
    dispatched = routing.tasks()[1]
    routing.restart()  # the first coordinator is gone without a word
    routing.online("a1")
    routing.say(dispatched, "accepted")
    routing.say(dispatched, "succeeded", "again")
    [reply] = routing.replies()
    assert (reply.prompt_id, reply.response) == (prompt.id, "hello. again.")
    routing.deliver(prompt)  # a redelivery after the restart is not run again
    assert len(routing.tasks()) == 0 and len(routing.replies()) == 1


def test_a_resumed_task_nobody_accepts_is_offered_again(routing):
    routing.online("a1")
    routing.online("a2")
    routing.send("echo hello")
    routing.restart()
    routing.online("a1")
    routing.online("a2")
    routing.advance(routing.settings.ack_timeout + routing.settings.ack_grace + 0.1)
    [task] = routing.tasks()
    assert task.attempt == 2


def test_results_count_only_from_the_assignees_own_topic(routing):
    routing.online("a1")
    routing.online("a2")
    routing.send("echo hello")
    [task] = routing.tasks()
    routing.say(task, "rejected", agent="a2")  # a2 speaks about a1's task on its own topic: ignored
    forged = Result(task_id=task.task_id, agent="a1", state="rejected")
    routing.deliver(forged, routing.bus.topics.result("a2", task.task_id))  # a2 claims to be a1: refused
    routing.deliver(LegacyResult(task_id=task.task_id, agent="a1", state="rejected"))  # old topic: off
    assert len(routing.tasks()) == 1
    [record] = routing.sent(ErrorRecord)
    assert "topic's agent" in record.error and record.topic_name == "home/lam/agents/a2/results/" + task.task_id
    routing.say(task, "succeeded", "hello")
    assert routing.replies()[0].status == "succeeded"


def test_the_legacy_results_topic_when_a_setting_allows_it(tmp_path):
    routing = Routing(tmp_path / "journal.db", legacy_results=True)
    routing.online("a1")
    routing.send("echo hello")
    [task] = routing.tasks()
    routing.deliver(LegacyResult(task_id=task.task_id, agent="a1", state="succeeded", message="hello"))
    assert routing.replies()[0].response == "hello"


@pytest.mark.parametrize("text, status, response, states", [
    ("echo one && computer volume 30", "partial", f"one. {NO_COMPUTER_VOLUME}", ["succeeded", "failed"]),
    ("computer volume 30 && echo two", "failed", f"{NO_COMPUTER_VOLUME} Skipped echo two.",
     ["failed", "skipped"]),
])
def test_a_chain_reply_says_what_happened_to_every_step(routing, text, status, response, states):
    routing.online("a1")
    routing.send(text)
    for task in routing.tasks():
        routing.say(task, "accepted")
        routing.say(task, "succeeded", task.args["text"])
    [reply] = routing.replies()
    assert (reply.status, reply.response, [t.state for t in reply.tasks]) == (status, response, states)


class Heard(Extension):
    """An extension that notes what reaches it: events, typed and raw messages, connects."""

    def __init__(self, bus: Bus, events: Events, clock: Clock) -> None:
        super().__init__(bus, events, clock)
        self.heard: list[str] = []
        self.listen(PresenceChanged, lambda event: self.heard.append(f"event {event.presence.agent}"))
        self.subscribe(Presence, lambda presence: self.heard.append(f"message {presence.agent}"))
        self.on(bus.topics.build(Presence.topic_pattern), lambda topic, payload: self.heard.append(topic))
        self.on_connect(lambda: self.heard.append("connect"))


def test_a_stopped_extension_hears_nothing_more(routing):
    """As Zigbee2MQTT's: stop() takes back every subscription the extension made, and only its own."""
    first, second = routing.coordinator.extend(Heard), routing.coordinator.extend(Heard)
    routing.online("a1")
    first.stop()
    routing.online("a2")
    routing.bus.handle(CONNECT, b"")  # as the bus thread does after a connect
    a1, a2 = (routing.bus.topics.build(Presence.topic_pattern, agent=agent) for agent in ("a1", "a2"))
    assert first.heard == [a1, "event a1", "message a1"]
    assert second.heard == [a1, "event a1", "message a1", a2, "event a2", "message a2", "connect"]


def test_the_coordinator_stops_its_extensions(routing):
    heard = routing.coordinator.extend(Heard)
    routing.coordinator.stop()
    routing.coordinator.events.emit(PresenceChanged(Presence(state="online", agent="a1")))
    routing.bus.handle(routing.bus.topics.build(Presence.topic_pattern, agent="a1"),
                       Presence(state="online", agent="a1").to_json())
    assert heard.heard == []


def test_extensions_hear_the_events_and_publish_after_the_reply(routing):
    heard = []
    for kind in (PresenceChanged, TaskDispatched, TaskFinished, Replied):
        routing.coordinator.events.on(kind, lambda event: heard.append(type(event).__name__))
    Discovery(routing.bus, routing.coordinator.events)
    routing.online("a1")
    prompt = routing.send("echo hello")
    [task] = routing.tasks()
    routing.say(task, "accepted")
    routing.say(task, "succeeded", "hello")
    assert heard == ["PresenceChanged", "TaskDispatched", "TaskFinished", "Replied"]
    topics = [t for t, _ in routing.bus.sent]
    reply_at = topics.index(routing.bus.topics.reply(prompt.id))
    mirrors = (routing.bus.topics.last_reply, routing.bus.topics.last_result("a1"))
    assert min(topics.index(t) for t in mirrors) > reply_at  # Home Assistant's state after the reply
    assert read(routing.bus.topics, topics[reply_at], routing.bus.sent[reply_at][1]).response == "hello"
    last = dict(routing.bus.sent)[routing.bus.topics.last_result("a1")]
    assert Result.from_payload(last) == Result(task_id=task.task_id, agent="a1", state="succeeded",
                                               message="hello", attempt=1)


def test_an_agent_cannot_take_a_reserved_id(capsys):
    assert agent_main(["--id", "coordinator", "--capability", "echo"]) == 2
    assert "'coordinator' is reserved" in capsys.readouterr().err


# -- faults (issue 15) ------------------------------------------------------------------------

def test_accept_windows_wait_while_the_coordinator_is_cut_off(routing):
    routing.online("a1")
    routing.online("a2")
    routing.send("echo hello")
    [task] = routing.tasks()
    routing.bus.connected.clear()  # our own outage: a1's word cannot reach us
    routing.advance(3 * routing.settings.ack_timeout)
    assert len(routing.tasks()) == 1
    routing.clock.now += 0.5
    routing.bus.connected.set()
    routing.bus.handle("connect", b"")  # back: the window starts again, a1's `accepted` is on its way
    routing.advance(routing.settings.ack_timeout)
    routing.say(task, "accepted")
    routing.say(task, "succeeded", "hello")
    assert len(routing.tasks()) == 1 and routing.replies()[0].response == "hello"


def test_an_agent_that_misses_an_accept_window_gets_no_new_task_until_heard_from(routing):
    routing.online("a1")
    routing.online("a2")
    routing.send("echo one")
    routing.advance(routing.settings.ack_timeout + routing.settings.ack_grace + 0.1)
    routing.send("echo two")
    routing.send("echo three")
    assert [t.agent for t in routing.tasks()] == ["a1", "a2", "a2", "a2"]
    routing.say(routing.tasks()[0], "rejected", "woke up too late")  # a1 shows life: back in rotation
    routing.send("echo four")
    assert routing.tasks()[-1].agent == "a1"


def test_an_agent_whose_heartbeat_is_overdue_gets_no_new_task(routing):
    routing.online("a1")
    routing.advance(10.0)
    routing.online("a2")
    routing.advance(40.0)  # a1 said nothing for 50 s, more than 1.5 heartbeats (30 s)
    routing.online("a2")
    routing.send("echo hello")
    assert [t.agent for t in routing.tasks()] == ["a2"]


def test_deadlines_count_from_when_the_prompt_was_sent(routing):
    routing.online("a1")
    late = Prompt(prompt="echo hello", source="test", metadata={"timeout": 5.0}, ts=routing.clock.now - 6.0)
    routing.deliver(late)  # queued in the broker through our outage, longer than its timeout
    assert routing.tasks() == []
    [reply] = routing.replies()
    assert (reply.prompt_id, reply.status) == (late.id, "failed") and "after its deadline" in reply.response
    held = Prompt(prompt="echo again", source="test", metadata={"timeout": 5.0}, ts=routing.clock.now - 4.0)
    routing.deliver(held)
    [task] = routing.tasks()
    assert task.deadline == held.ts + 5.0 and task.accept_by == task.deadline  # within what is left
    ahead = Prompt(prompt="echo ahead", source="test", metadata={"timeout": 5.0}, ts=routing.clock.now + 100.0)
    routing.deliver(ahead)  # a sender's clock ahead of ours gains nothing
    assert routing.tasks()[-1].deadline == routing.clock.now + 5.0


def test_no_task_is_sent_after_its_prompts_deadline(routing):
    routing.online("a1")
    routing.send("echo one && echo two", timeout=5.0)
    [first] = routing.tasks()
    routing.say(first, "accepted")
    routing.restart()  # down past the deadline
    routing.clock.now += 6.0
    routing.online("a1")
    routing.say(first, "succeeded", "one")
    routing.advance(0.1)
    assert routing.tasks() == []  # "echo two" never went out
    [reply] = routing.replies()
    assert reply.status == "partial" and [t.state for t in reply.tasks] == ["succeeded", "failed"]


def test_an_agent_back_within_its_grace_period_keeps_its_task(routing):
    routing.online("a1")
    routing.online("a2")
    routing.send("echo one")
    routing.send("echo two")
    one, two = routing.tasks()
    for task in (one, two):
        routing.say(task, "accepted")
    routing.offline("a1")  # a broker restart publishes every last will
    routing.offline("a2")
    routing.advance(1.0)
    routing.say(one, "succeeded", "one")  # a1 back, with its result
    routing.deliver(Presence(state="online", agent="a2", capabilities=ECHO, max_concurrent=4, running=[two.task_id]))
    routing.advance(routing.settings.agent_grace)
    assert [r.response for r in routing.replies()] == ["one"]  # a2 still runs "two"
    routing.say(two, "succeeded", "two")
    assert [r.response for r in routing.replies()] == ["one", "two"] and len(routing.tasks()) == 2


def test_a_task_an_agent_lists_as_running_counts_as_accepted(routing):
    routing.online("a1")
    routing.online("a2")
    routing.send("echo hello")
    [task] = routing.tasks()  # its `accepted` was lost with a broker that kept nothing
    routing.deliver(Presence(state="online", agent="a1", capabilities=ECHO, max_concurrent=4, running=[task.task_id]))
    routing.advance(2 * routing.settings.ack_timeout)
    assert len(routing.tasks()) == 1
    routing.say(task, "succeeded", "hello")
    assert routing.replies()[0].status == "succeeded"


def test_back_on_a_broker_that_kept_nothing_an_agent_is_asked_again_not_passed_over(routing):
    """The broker restarted without persistence: a1 took the task and finished it, but its words
    reached the broker before we were back on it, and were lost. Offered the task again when heard
    from, a1 answers from what became of it; the task never goes to a2."""
    routing.online("a1")
    routing.online("a2")
    routing.send("echo hello")
    [first] = routing.tasks()
    routing.bus.connected.clear()
    routing.advance(routing.settings.tick)
    routing.bus.connected.set()
    routing.bus.session_present = False
    routing.bus.handle("connect", b"")
    routing.online("a2")
    assert len(routing.tasks()) == 1  # a2 had nothing of ours
    routing.online("a1")
    again = routing.tasks()[1]
    assert (again.task_id, again.agent, again.attempt) == (first.task_id, "a1", 2)
    routing.online("a1")  # its next heartbeat: asked once is enough
    assert len(routing.tasks()) == 2
    routing.say(again, "accepted")
    routing.say(again, "succeeded", "hello")
    routing.advance(2 * (routing.settings.ack_timeout + routing.settings.ack_grace))
    assert [t.agent for t in routing.tasks()] == ["a1", "a1"]
    assert [(r.status, r.response) for r in routing.replies()] == [("succeeded", "hello")]


def test_a_late_refusal_of_an_earlier_offer_leaves_the_task_with_its_agent(routing):
    """Back on a broker that kept nothing, a1 is offered the task again (attempt 2). The first offer,
    sent again by our MQTT client on reconnecting, reaches a1 after its window and a1 refuses it,
    while it takes the second. That refusal is of an offer that is over: the task stays with a1 and
    goes to no other agent, whichever of a1's words comes first."""
    routing.online("a1")
    routing.online("a2")
    routing.send("echo hello")
    [first] = routing.tasks()
    routing.bus.session_present = False
    routing.bus.handle("connect", b"")
    routing.online("a1")
    again = routing.tasks()[1]
    assert (again.agent, again.attempt) == ("a1", 2)
    late = Result(task_id=first.task_id, agent="a1", state="rejected", attempt=1,
                  message="The task arrived after its dispatch window closed.")
    routing.deliver(late)
    routing.deliver(Result(task_id=first.task_id, agent="a1", state="accepted", attempt=2))
    routing.deliver(late)
    routing.deliver(Result(task_id=first.task_id, agent="a1", state="succeeded", message="hello", attempt=2))
    assert [t.agent for t in routing.tasks()] == ["a1", "a1"]
    assert [(r.status, r.response) for r in routing.replies()] == [("succeeded", "hello")]

@pytest.mark.parametrize("restarted", [False, True])
def test_back_on_a_broker_that_kept_nothing_a_task_finished_unheard(routing, restarted):
    """a1 accepted the task, finished it while we were away, and the broker lost its result. The
    same a1 process (same ``started``), no longer running it, is asked again and answers from what
    became of it; a restarted a1 is not asked (it could not know): the prompt fails at its deadline."""
    def a1(started: float) -> None:
        routing.deliver(Presence(state="online", agent="a1", capabilities=ECHO, max_concurrent=4, started=started))

    a1(100.0)
    routing.send("echo hello", timeout=5.0)
    [task] = routing.tasks()
    routing.say(task, "accepted")
    routing.bus.session_present = False
    routing.bus.handle("connect", b"")
    a1(200.0 if restarted else 100.0)
    if restarted:
        routing.advance(5.1)
        assert len(routing.tasks()) == 1
        assert [r.status for r in routing.replies()] == ["failed"]
        return
    again = routing.tasks()[1]
    assert (again.task_id, again.agent, again.attempt) == (task.task_id, "a1", 2)
    routing.say(again, "accepted")
    routing.say(again, "succeeded", "hello")
    assert [(r.status, r.response) for r in routing.replies()] == [("succeeded", "hello")]


def test_back_on_a_broker_that_kept_nothing_a_task_still_running_is_asked_about_too(routing):
    """a1 lists the task as running when first heard from, then finishes it before we are subscribed
    to the new broker, which drops its result. Asked again at once, the same a1 process says it took
    the task and, when it ends, how it ended: the prompt is answered, not failed at its deadline."""
    routing.deliver(Presence(state="online", agent="a1", capabilities=ECHO, max_concurrent=4, started=100.0))
    routing.send("echo sleep 1 hello", timeout=5.0)
    [task] = routing.tasks()
    routing.say(task, "accepted")
    routing.bus.session_present = False
    routing.bus.handle("connect", b"")
    routing.deliver(Presence(state="online", agent="a1", capabilities=ECHO, max_concurrent=4, started=100.0,
                             running=[task.task_id]))
    again = routing.tasks()[1]
    assert (again.task_id, again.agent, again.attempt) == (task.task_id, "a1", 2)
    routing.say(again, "accepted")
    routing.say(again, "succeeded", "hello")
    assert [(r.status, r.response) for r in routing.replies()] == [("succeeded", "hello")]


def test_back_on_a_broker_that_kept_our_session_nobody_is_asked_again(routing):
    routing.online("a1")
    routing.send("echo hello")
    routing.bus.session_present = True
    routing.bus.handle("connect", b"")
    routing.online("a1")
    assert len(routing.tasks()) == 1


def test_replies_not_acknowledged_by_the_broker_are_sent_again_after_a_restart(routing):
    routing.online("a1")
    answered = routing.send("echo one")
    [task] = routing.tasks()
    routing.say(task, "accepted")
    routing.say(task, "succeeded", "one")
    unsent = routing.send("nothing I know")
    assert [r.prompt_id for r in routing.replies()] == [answered.id, unsent.id]
    routing.coordinator.journal.reply_sent(answered.id)  # the broker acknowledged this one only
    routing.restart()  # killed before the broker acknowledged the other
    routing.coordinator.resend_replies()
    assert [r.prompt_id for r in routing.replies()] == [unsent.id]


def test_transcripts_and_held_confirmations_are_kept_for_the_most_recent_sources(tmp_path):
    routing = Routing(tmp_path / "journal.db", sources=3)
    routing.online("pc", {"computer": ["power"], "echo": ["say"]}, max_concurrent=10)
    for n in range(5):
        routing.send("computer power shutdown", source=f"h{n}")
        routing.send(f"echo {n}", source=f"s{n}")
    intake = routing.coordinator.intake
    assert list(intake.transcripts) == ["s2", "s3", "s4"] and list(intake.held) == ["h2", "h3", "h4"]
    routing.send("confirm", source="h0")  # forgotten: not run
    assert all(t.capability == "echo" for t in routing.tasks())
    routing.send("confirm", source="h4")
    assert routing.tasks()[-1].capability == "computer"


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MB tmpfs, mounted for the test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True, timeout=20)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], timeout=20)


def fill(path: Path) -> None:
    with path.open("wb", buffering=0) as filler:
        try:
            for _ in range(1024):
                filler.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return
    raise AssertionError("the disk never filled")


def test_a_full_journal_disk_answers_failed_at_once_and_recovers_by_itself(small_disk, caplog):
    """The disk fills: the prompt whose commit failed, and every one after it, is answered `failed` at
    once naming the journal and its disk (logged once); a task under way carries on and its reply is
    journaled once space is back, when prompts run again."""
    routing = Routing(small_disk / "journal.db")
    for agent in range(20):  # room for every task
        routing.online(f"a{agent}", max_concurrent=16)
    bus, journal = routing.bus, routing.coordinator.journal
    under_way = routing.send("echo under way")
    [task] = routing.tasks()
    fill(small_disk / "filler")
    for mid in range(1, 301):  # each prompt a few KB more in the journal, until the disk is full
        prompt = Prompt(prompt=f"echo {mid} " + "words " * 300, source=f"s{mid}")
        bus._handle_burst([(bus.topics.prompts, prompt.to_json(), mid, 1, routing.clock.now)])
        routing.settle()
        if journal.unwritable:
            break
    assert journal.unwritable, "the journal never failed"
    assert mid in bus.acked, "the prompt was left to be delivered again instead of answered"
    refused = [prompt] + [routing.send(f"echo more {n}", source=f"m{n}") for n in range(20)]
    replies = {r.prompt_id: r for r in routing.replies()}
    for prompt in refused:
        assert replies[prompt.id].status == "failed"
        assert "full" in replies[prompt.id].response and str(small_disk) in replies[prompt.id].response
    assert caplog.text.count("cannot be written") == 1
    assert not [t for t in routing.tasks() if t.prompt_id in {p.id for p in refused}]
    routing.say(task, "accepted")
    routing.say(task, "succeeded", "done")
    assert [r.status for r in routing.replies() if r.prompt_id == under_way.id] == ["succeeded"]
    routing.coordinator._retry_journal()
    assert journal.unwritable, "the journal claims to write on a full disk"
    (small_disk / "filler").unlink()
    routing.coordinator._retry_journal()
    assert not journal.unwritable and "can be written again" in caplog.text
    after = routing.send("echo after")
    assert [t.prompt_id for t in routing.tasks()][-1] == after.id
    assert under_way.id not in {p.id for p, _, _ in journal.open_prompts()}


def test_a_journal_that_cannot_commit_for_another_reason_publishes_and_acknowledges_nothing(routing, caplog):
    """Any other failure to commit: nothing goes out, nothing is acknowledged, the broker delivers again."""
    routing.online("a1")
    bus, journal = routing.bus, routing.coordinator.journal
    journal._db.execute("CREATE TRIGGER refuse BEFORE INSERT ON prompts BEGIN SELECT RAISE(ABORT, 'refused'); END")
    prompt = Prompt(prompt="echo hi")
    before = len(bus.sent)
    bus._handle_burst([(bus.topics.prompts, prompt.to_json(), 7, 1, routing.clock.now)])
    routing.settle()
    assert 7 not in bus.acked and not journal.unwritable
    [record] = [read(bus.topics, t, p) for t, p in bus.sent[before:]]
    assert isinstance(record, ErrorRecord) and "not journaled" in record.error
    journal._db.execute("DROP TRIGGER refuse")
    bus._handle_burst([(bus.topics.prompts, prompt.to_json(), 8, 1, routing.clock.now)])  # delivered again
    routing.settle()
    assert 8 in bus.acked
    assert [t.prompt_id for t in routing.tasks()] == [prompt.id]


def test_a_prompt_whose_understanding_cannot_be_committed_is_taken_up_again_from_the_journal(routing):
    """The prompt is journaled, but the commit of what it was understood to ask for fails: nothing goes
    out, the answer of the understanding thread is dropped with the state, and the prompt, read back
    from the journal, is understood again and run once."""
    routing.online("a1")
    bus, journal = routing.bus, routing.coordinator.journal
    journal._db.execute("CREATE TRIGGER refuse BEFORE INSERT ON tasks BEGIN SELECT RAISE(ABORT, 'refused'); END")
    prompt = routing.send("echo hi")
    assert routing.tasks() == [] and routing.replies() == []
    assert any("not journaled" in e.error for e in routing.sent(ErrorRecord))
    journal._db.execute("DROP TRIGGER refuse")
    routing.advance(0.1)
    [task] = routing.tasks()
    assert task.prompt_id == prompt.id
    routing.say(task, "accepted")
    routing.say(task, "succeeded", "hi")
    assert [(r.prompt_id, r.status) for r in routing.replies()] == [(prompt.id, "succeeded")]


class CarelessParser(ChainParser):
    """A parser plugin with a bug: what it reads from "echo odd" carries an argument no journal can hold."""

    name = "careless"

    def parse(self, prompt, context):
        if prompt == "echo odd":
            return ParseResult([Command("echo", "say", {"text": {"odd"}}, "echo say odd")], parser=self.name)
        return super().parse(prompt, context)


def test_a_prompt_that_cannot_be_acted_on_is_answered_failed_and_the_next_one_runs(tmp_path, caplog):
    """Acting on what a prompt was understood to ask for raises (here, a parser's bug): the prompt is
    answered `failed` at once, not left open until a restart, and the prompts after it run."""
    routing = Routing(tmp_path / "journal.db", parser=CarelessParser())
    routing.online("a1")
    odd = routing.send("echo odd")
    assert [(r.prompt_id, r.status) for r in routing.replies()] == [(odd.id, "failed")]
    assert "TypeError" in routing.replies()[0].response and "could not act on prompt" in caplog.text
    after = routing.send("echo say hi")
    [task] = routing.tasks()
    assert task.prompt_id == after.id
    assert odd.id not in {p.id for p, _, _ in routing.coordinator.journal.open_prompts()}


# -- honest answers and limits (hardening issue) ------------------------------------------

def test_after_a_failed_commit_one_router_hears_results_and_answers_once(routing):
    """A commit that fails reads the state back from the journal; the results that come after go to
    the same router that times the task, so the prompt gets one reply, not `succeeded` and then
    `failed` at its deadline."""
    routing.online("a1")
    routing.send("echo hi", timeout=10.0)
    [task] = routing.tasks()
    journal = routing.coordinator.journal
    journal._db.execute("CREATE TRIGGER refuse BEFORE UPDATE ON tasks BEGIN SELECT RAISE(ABORT, 'refused'); END")
    routing.say(task, "accepted")  # its commit fails: the state is read back from the journal
    journal._db.execute("DROP TRIGGER refuse")
    routing.say(task, "accepted")  # the broker delivers it again
    routing.say(task, "succeeded", "hi")
    routing.advance(11.0)
    assert [(r.status, r.response) for r in routing.replies()] == [("succeeded", "hi")]


def test_the_warm_up_counts_from_reaching_the_broker_not_from_start(tmp_path):
    """A coordinator started while the broker is down waits for agents however long that lasts; the
    warm-up begins once it reaches the broker."""
    routing = Routing(tmp_path / "journal.db", warmup=3.0)
    prompt = routing.send("echo sleep 0 pending")  # journaled, no agent heard yet
    routing.restart()  # a new process, the broker down
    routing.advance(10.0)
    routing.advance(10.0)
    assert routing.replies() == []
    routing.bus.handle("connect", b"")
    routing.advance(1.0)
    assert routing.replies() == []
    routing.online("a1")
    routing.advance(0.1)
    [task] = routing.tasks()
    assert task.prompt_id == prompt.id
    later = routing.send("browser google boots")
    routing.advance(3.0)
    [reply] = [r for r in routing.replies() if r.prompt_id == later.id]
    assert reply.response == "No agent can do browser google; start an agent with lam-agent -c browser."


def test_the_warm_up_lasts_while_an_agent_heard_of_is_offline(tmp_path):
    """Back on a restarted broker, the agents' last wills say they are offline: the warm-up runs up to
    ``warmup`` while one of them is, and what they offer goes to them the moment they are back."""
    routing = Routing(tmp_path / "journal.db", warmup=10.0)
    routing.bus.handle("connect", b"")
    routing.offline("a1")  # its last will, handed over by the restarted broker
    prompt = routing.send("echo hello")
    routing.advance(5.0)
    assert routing.replies() == [] and routing.tasks() == []
    routing.online("a1")
    [task] = routing.tasks()
    assert task.prompt_id == prompt.id
    routing.offline("a2")
    later = routing.send("browser google boots")
    routing.advance(4.0)
    assert not [r for r in routing.replies() if r.prompt_id == later.id]
    routing.advance(1.5)
    [reply] = [r for r in routing.replies() if r.prompt_id == later.id]
    assert reply.response == "No agent can do browser google; start an agent with lam-agent -c browser."


def test_an_accept_window_is_judged_as_of_when_the_tick_was_received(routing):
    """A busy bus thread hands over a tick and then, long after, the `accepted` that reached it before
    the window closed: the window is judged as of the tick's arrival, so the task stays with its
    agent and is sent to no other."""
    routing.online("a1")
    routing.online("a2")
    routing.send("echo sleep 1 busy")
    [task] = routing.tasks()
    offered = routing.clock.now
    routing.clock.now += 30.0  # the bus thread was busy all this time
    accepted = Result(task_id=task.task_id, agent="a1", state="accepted")
    routing.bus._handle_burst([
        ("call", lambda: routing.coordinator.tick(routing.bus.received), 0, 0, offered + 1.0),
        (accepted.topic(routing.bus.topics), accepted.to_json(), 0, 0, offered + 2.0)])
    routing.advance(1.0)
    routing.say(task, "succeeded", "busy")
    assert [t.agent for t in routing.tasks()] == ["a1"]
    assert [(r.status, r.response) for r in routing.replies()] == [("succeeded", "busy")]


def test_an_empty_status_does_not_forget_a_live_agent(routing):
    """An empty retained status (a stray or replayed clear) leaves an agent alone while it is online
    and heard from within its heartbeat; it forgets one that is offline."""
    routing.online("a1")
    routing.bus.handle(routing.bus.topics.agent_status("a1"), b"")
    routing.send("echo still here")
    assert [t.agent for t in routing.tasks()] == ["a1"]
    routing.offline("a1")
    routing.bus.handle(routing.bus.topics.agent_status("a1"), b"")
    assert "a1" not in routing.coordinator.registry.agents


def test_a_source_whose_clock_is_far_behind_is_timed_from_arrival_and_logged_once(routing, caplog):
    """Connected for two hours, a prompt that says it was sent an hour ago cannot have waited for us:
    its source's clock is behind, and its deadline counts from when it arrived."""
    routing.bus.handle("connect", b"")
    routing.advance(7200.0)
    routing.online("a1")
    for n in range(2):
        routing.deliver(Prompt(prompt=f"echo late clock {n}", source="kitchen", ts=routing.clock.now - 3600.0))
    assert len(routing.tasks()) == 2
    assert caplog.text.count("the clock of source 'kitchen' is about 3600 s behind") == 1
    queued = Prompt(prompt="echo queued", source="kitchen", metadata={"timeout": 5.0}, ts=routing.clock.now - 3600.0)
    routing.bus.handle("connect", b"")  # back after an outage: a prompt from before it waited in the broker
    routing.deliver(queued)
    assert [r.status for r in routing.replies() if r.prompt_id == queued.id] == ["failed"]


def test_no_agent_says_which_machine_left_the_capability_out_and_why(routing):
    routing.deliver(Presence(state="online", agent="desk", capabilities=ECHO, unavailable={
        "browser": "browser found no Chromium: install it (Debian: apt install chromium chromium-driver)",
        "home": "needs Home Assistant's address: set url in [capabilities.home]."}))
    routing.send("browser youtube weezer")
    routing.send("home turn off the desk lamp")
    assert [r.response for r in routing.replies()] == [
        "No agent can do browser youtube: on desk, browser found no Chromium: install it (Debian: apt install "
        "chromium chromium-driver).",
        "No agent offers home: on desk, home is left out: needs Home Assistant's address: set url in "
        "[capabilities.home]."]


def test_sources_are_served_in_turn_and_limited_in_rate(tmp_path):
    """A source's flood waits behind its own prompts, not another's; beyond its burst and rate it is
    answered `rejected`, before anything is journaled."""
    routing = Routing(tmp_path / "journal.db", source_rate=1.0, source_burst=5.0)
    routing.online("a1", max_concurrent=1000)
    coordinator = routing.coordinator
    flood = [Prompt(prompt=f"echo flood {n}", source="flood") for n in range(8)]
    victim = Prompt(prompt="echo victim", source="victim")
    bus = routing.bus
    bus._handle_burst([(bus.topics.prompts, p.to_json(), 0, 0, routing.clock.now) for p in [*flood, victim]])
    routing.settle()
    assert [t.args["text"] for t in routing.tasks()] == ["flood 0", "victim", "flood 1", "flood 2", "flood 3",
                                                         "flood 4"]
    rejected = [r for r in routing.replies() if r.status == "rejected"]
    assert [r.prompt_id for r in rejected] == [p.id for p in flood[5:]]
    assert "Too many prompts from flood" in rejected[0].response
    assert not {p.id for p in flood[5:]} & {p.id for p, _, _ in coordinator.journal.open_prompts()}
    routing.clock.now += 2.0  # two more a second later
    assert len([routing.send("echo again", source="flood") for _ in range(3)]) == 3
    assert [r.status for r in routing.replies()].count("rejected") == 4
