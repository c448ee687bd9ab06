"""Faults, measured from outside: processes killed, frozen and cut off, brokers restarted, and
logins that try to act for others. Each test counts, over every prompt it sent, how many were
answered exactly once, lost, or answered twice, how many tasks two agents accepted, and how
many tasks the agents' own records show run twice."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections import Counter

import pytest

from conftest import mosquitto_available
from faultkit import Broker, Namespaces, System, fill, netns_problem, root_problem, small_disk
from helpers import Recorder, wait_until
from lamcontrol import config as lamconfig
from lamcontrol.bus import Bus
from lamcontrol.coordinator.main import build
from lamcontrol.language import ActionSpec, Arg, CapabilitySpec, Sentences, Syntax
from lamcontrol.protocol import AgentSpec, ErrorRecord, Presence, Prompt, Result, Task, parse

USERS = "coordinator,client:load,agent:a1:echo,agent:a2:echo,agent:evil:echo"
TIMEOUT = 20.0  # each prompt's own timeout, seconds
ANSWER_WAIT = 45.0  # longest wait for the last replies

needs_mosquitto = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed")
needs_root = pytest.mark.skipif(bool(root_problem()), reason=root_problem() or "root")


def prefix() -> str:
    return f"f{uuid.uuid4().hex[:8]}"


@pytest.fixture
def mosquitto_system(tmp_path):
    """Coordinator and agents a1, a2 on Mosquitto as `lam mosquitto-config` writes it."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    broker = Broker("mosquitto", tmp_path, prefix(), USERS)
    system = System(broker, tmp_path)
    system.coordinator()
    for agent in ("a1", "a2"):
        system.agent(agent)
    yield system
    system.close()
    broker.close()


def assert_clean(system: System, prompts: list, all_succeeded: bool = True, honest: bool = False) -> None:
    """Every prompt answered once, nothing run twice; with ``honest``, none answered `failed` that ran."""
    system.load.wait_answered(prompts, ANSWER_WAIT)
    tally = system.tally(prompts)
    print("tally:", tally)
    assert tally.clean(), f"{tally}\n{system.logs()}"
    assert not (honest and tally.failed_but_ran), f"{tally}\n{system.logs()}"
    if all_succeeded:
        assert tally.statuses == {"succeeded": len(prompts)}, f"{tally}\n{system.logs()}"
    else:
        assert set(tally.statuses) <= {"succeeded", "failed"}, tally


def process(system: System, name: str):
    """The latest process started under ``name``."""
    return [p for key, p in system.processes.items() if key.split("#")[0] == name][-1]


def test_agent_sigkill(mosquitto_system):
    """Tasks of a killed agent fail with a sentence; nothing is lost or run twice."""
    system = mosquitto_system
    prompts = system.load.send(60, seconds=0.3, timeout=TIMEOUT)
    system.fault()
    process(system, "a1").kill()
    prompts += system.load.send(60, seconds=0.3, timeout=TIMEOUT)
    system.agent("a1")
    prompts += system.load.send(60, seconds=0.3, timeout=TIMEOUT)
    assert_clean(system, prompts, all_succeeded=False)


def freeze_a1(system: System, during: int) -> list:
    """Prompts before, while a1 is frozen for 1.3x the ack timeout, and after."""
    prompts = system.load.send(40, seconds=0.1, timeout=TIMEOUT)
    agent = process(system, "a1")
    system.fault()
    agent.signal(signal.SIGSTOP)
    try:
        prompts += system.load.send(during, seconds=0.1, timeout=TIMEOUT, pace=1.3 * system.ack_timeout / during)
    finally:
        agent.signal(signal.SIGCONT)
    return prompts + system.load.send(40, seconds=0.1, timeout=TIMEOUT)


def test_agent_sigstop_and_sigcont(mosquitto_system):
    """An agent frozen for 1.3x the ack timeout while another is well: every task runs, once."""
    assert_clean(mosquitto_system, freeze_a1(mosquitto_system, 40))


def test_lone_agent_frozen_past_the_accept_window(mosquitto_system):
    """The only agent frozen for 1.3x the ack timeout: back long before the prompts' deadlines, it
    runs every task, once."""
    assert process(mosquitto_system, "a2").stop() == 0
    assert_clean(mosquitto_system, freeze_a1(mosquitto_system, 10))


def test_coordinator_sigkill_under_load_repeated(mosquitto_system):
    """Three kills of the coordinator mid-load; prompts sent meanwhile wait in the broker."""
    system = mosquitto_system
    prompts = []
    for _ in range(3):
        prompts += system.load.send(50, seconds=0.1, timeout=TIMEOUT)
        system.fault()
        process(system, "coordinator").kill()
        prompts += system.load.send(20, seconds=0.1, timeout=TIMEOUT)
        system.coordinator()
    prompts += system.load.send(30, seconds=0.1, timeout=TIMEOUT)
    assert_clean(system, prompts)


@pytest.mark.parametrize("kind, journal", [("mosquitto", "same"), ("mosquitto", "own"), ("amqtt", "own")])
def test_a_second_coordinator_refuses_to_start(tmp_path, kind, journal):
    """Two coordinators: a second one started on the bus while prompts flow refuses to start, naming the first,
    and the first serves on. With the same config (the same journal) it finds the journal locked and never
    connects. With a journal of its own it looks at the bus: on the embedded broker it sees the first's
    presence; on Mosquitto as lam mosquitto-config writes it (client id = user name) its look takes the first's
    connection, whose last will says offline, and the first taking it back within a second is the sign."""
    if kind == "mosquitto" and not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    broker = Broker(kind, tmp_path, prefix(), USERS)
    system = System(broker, tmp_path)
    try:
        first = system.coordinator()
        for agent in ("a1", "a2"):
            system.agent(agent)
        said = len(system.load.presence["coordinator"])
        prompts = system.load.send(40, seconds=0.2, timeout=TIMEOUT)
        system.fault()
        path = system.journal if journal == "same" else tmp_path / "second-journal.db"
        config = system.config("coordinator-2", f'[coordinator]\njournal = "{path}"\n', "coordinator")
        second = system._start("coordinator-2", "lamcontrol.coordinator.main", "--config", str(config))
        assert second.popen.wait(60) == 2, second.log()
        assert "another coordinator" in second.log() and f"pid {first.popen.pid} on host " in second.log()
        prompts += system.load.send(40, seconds=0.2, timeout=TIMEOUT)
        system.load.wait_answered(prompts, ANSWER_WAIT)
        tally = system.tally(prompts)
        assert tally.clean() and tally.statuses == {"succeeded": len(prompts)}, f"{tally}\n{system.logs()}"
        assert tally.failed_but_ran == 0
        after = system.load.presence["coordinator"][said:]
        if (kind, journal) == ("mosquitto", "own"):
            assert after[-1:] == ["online"], after  # its will said offline for as long as it took to come back
        else:
            assert "offline" not in after, after  # nobody spoke over the first one's presence
    finally:
        system.close()
        broker.close()


def test_mosquitto_restart_with_persistence(mosquitto_system):
    """A graceful restart of Mosquitto (persistence on) mid-load."""
    system = mosquitto_system
    prompts = system.load.send(80, seconds=0.5, timeout=TIMEOUT)
    broker = system.broker
    system.fault()
    assert broker.process.stop() == 0
    broker.start()
    assert any((broker.folder / "persistence").iterdir()), "Mosquitto wrote no persistence file"
    prompts += system.load.send(40, seconds=0.1, timeout=TIMEOUT)
    assert_clean(system, prompts)


def test_prompts_queued_for_the_coordinator_survive_a_mosquitto_restart(mosquitto_system):
    """Prompts sent while the coordinator is down wait in Mosquitto; with persistence on they
    outlive a broker restart and are answered once the coordinator is back."""
    system = mosquitto_system
    system.fault()
    process(system, "coordinator").kill()
    prompts = system.load.send(60, seconds=0, timeout=TIMEOUT + 20)
    time.sleep(1)  # the last of them in the broker's queue for the coordinator
    assert system.broker.process.stop() == 0
    system.broker.start()
    wait_until(system.load.bus.ready.is_set, 30, "the load generator back on the broker")
    system.coordinator()
    assert_clean(system, prompts)


def test_embedded_broker_sigkill_and_sigterm(tmp_path):
    """The embedded broker killed mid-load, restarted, then stopped with SIGTERM mid-load (it must
    exit, whatever state the kill left it in), three times over.

    While the broker is down the LAMControl processes are frozen, so the test's observer is the
    first client back (aMQTT keeps no sessions across a restart: a reply sent before the observer
    resubscribed would be missed by the test, not lost by the system). A message the killed broker
    had acknowledged and not yet handed on is lost with it, as the README says: a prompt the
    coordinator's journal never saw, or a reply it shows the broker took, is counted apart (the
    prompt must never have run, the reply's task at most once); every other prompt counts."""
    broker = Broker("amqtt", tmp_path, prefix())
    system = System(broker, tmp_path)
    try:
        system.coordinator()
        for agent in ("a1", "a2"):
            system.agent(agent)
        prompts = []

        def come_back() -> None:
            with system.frozen():
                broker.start()
                wait_until(system.load.bus.ready.is_set, 30, "the observer back on the broker")
            seen = len(system.load.presence["coordinator"])
            wait_until(lambda: system.load.online("coordinator", seen), 30, "the coordinator back")

        for _ in range(3):
            prompts += system.load.send(40, seconds=0.2, timeout=TIMEOUT)
            system.fault()
            broker.process.kill()
            come_back()
            prompts += system.load.send(40, seconds=0.2, timeout=TIMEOUT)
            broker.process.signal(signal.SIGTERM)
            try:
                broker.process.popen.wait(5 + 10)  # --stop-timeout 5, plus the forced exit's margin
            except subprocess.TimeoutExpired:
                pytest.fail(f"lam-broker ignored SIGTERM\n{broker.process.log()[-3000:]}")
            come_back()
        prompts += system.load.send(20, seconds=0.1, timeout=TIMEOUT)
        system.load.wait_answered(prompts, ANSWER_WAIT)
        in_broker = system.lost_in_broker(prompts)
        print("lost in the killed broker:", Counter(in_broker.values()))
        ran = system.runs()
        runs = {p.id: ran[p.prompt.rsplit(" ", 1)[1]] for p in prompts if p.id in in_broker}
        assert all(runs[i] <= (what == "reply") for i, what in in_broker.items()), f"{runs}\n{system.logs()}"
        assert_clean(system, [p for p in prompts if p.id not in in_broker], all_succeeded=False)
    finally:
        system.close()
        broker.close()


def test_prompts_whose_deadline_passed_while_the_coordinator_was_down_are_never_run(mosquitto_system):
    """Deadlines are absolute: prompts that waited out their timeout in the broker while the
    coordinator was down are answered `failed` when it is back, and never run."""
    system = mosquitto_system
    system.fault()
    process(system, "coordinator").kill()
    expired = system.load.send(30, seconds=0, timeout=2.0)
    time.sleep(3.0)  # longer than their timeout
    system.coordinator()
    prompts = expired + system.load.send(30, seconds=0, timeout=TIMEOUT)
    system.load.wait_answered(prompts, ANSWER_WAIT)
    tally = system.tally(prompts)
    assert tally.clean(), f"{tally}\n{system.logs()}"
    assert tally.statuses == {"failed": 30, "succeeded": 30}, tally
    assert all("after its deadline" in system.load.replies[p.id][0].response for p in expired)
    ran = system.runs()
    assert not any(ran[p.prompt.rsplit(" ", 1)[1]] for p in expired)


@pytest.mark.skipif(bool(netns_problem()), reason=netns_problem() or "network namespaces available")
def test_silent_network_cut_between_an_agent_and_the_broker(tmp_path):
    """Agent a1 in a network namespace of its own; blackhole routes both ways for a while."""
    net = Namespaces()
    try:
        broker = Broker("amqtt", tmp_path, prefix(), host=net.broker_ip, wrap=net.exec(net.broker_ns))
        with net.entered(net.broker_ns):
            system = System(broker, tmp_path, wrap={"coordinator": net.exec(net.broker_ns),
                                                    "a2": net.exec(net.broker_ns), "a1": net.exec(net.agent_ns)})
        try:
            system.coordinator()
            system.agent("a2")
            system.agent("a1")
            prompts = system.load.send(40, seconds=0.1, timeout=TIMEOUT)
            system.fault()
            net.cut()
            try:
                prompts += system.load.send(60, seconds=0.1, timeout=TIMEOUT, pace=0.1)
            finally:
                net.mend()
            record = system.record("a1")  # none yet if a2 took every task before the cut
            ran_before = len(record.read_text().splitlines()) if record.exists() else 0
            prompts += system.load.send(40, seconds=0.1, timeout=TIMEOUT)
            assert_clean(system, prompts)
            assert record.exists() and len(record.read_text().splitlines()) > ran_before, "a1 never came back"
        finally:
            system.close()
            broker.close()
    finally:
        net.close()


# -- attacks on the ACL `lam mosquitto-config` writes ---------------------------------------

@needs_mosquitto
def test_forged_results_from_another_agents_login(tmp_path):
    """Agent `evil` answers `rejected` and `succeeded` for every task addressed to a1, on the old and
    the new results topics: the ACL refuses all of it, a1's tasks run once and succeed."""
    broker = Broker("mosquitto", tmp_path, prefix(), USERS)
    system = System(broker, tmp_path)
    forged = []

    def forge(topic: str, payload: bytes) -> None:
        task = parse(Task, payload)
        for state in ("rejected", "succeeded"):
            result = Result(task_id=task.task_id, agent=task.agent, state=state, message="forged")
            for target in (system.load.topics.build("results/{task_id}", task_id=task.task_id),
                           f"{broker.prefix}/agents/{task.agent}/results/{task.task_id}"):
                evil.publish_raw(target, result.to_json())
                forged.append(target)

    evil = Bus(broker.settings("evil"), component="evil", report=False)
    evil.on(system.load.topics.task("echo"), forge)
    try:
        system.coordinator()
        system.agent("a1")
        evil.start(timeout=10)
        system.fault()
        prompts = system.load.send(30, seconds=0.3, timeout=TIMEOUT)
        system.load.wait_answered(prompts, ANSWER_WAIT)
        assert forged
        assert_clean(system, prompts)
        replies = [system.load.replies[p.id][0] for p in prompts]
        assert all(r.tasks[0].agent == "a1" and "forged" not in r.response for r in replies)
    finally:
        evil.stop()
        system.close()
        broker.close()


@needs_mosquitto
def test_client_id_takeover_by_an_agents_login(mosquitto_system):
    """Agent `evil` connects again and again with the coordinator's client id while prompts flow:
    its login gets a session of its own, every prompt is answered once."""
    system = mosquitto_system
    coordinator_id = f"{system.broker.prefix}-coordinator"
    system.fault()
    prompts = []
    for _ in range(5):
        intruder = Bus(system.broker.settings("evil"), component="evil", client_id=coordinator_id, persistent=True,
                       report=False)
        intruder.start(timeout=10)
        prompts += system.load.send(20, seconds=0.1, timeout=TIMEOUT)
        intruder.stop()
    assert_clean(system, prompts)
    assert "already connected" not in process(system, "coordinator").log()


# -- honest answers and limits (hardening issue) --------------------------------------------

@needs_mosquitto
def test_a_busy_coordinator_hears_the_accepted_that_came_in_time(tmp_path):
    """The coordinator's bus thread is held up (a slow handler, three times, each longer than an
    accept window) while agents accept: their `accepted` reached it in time, so no task goes to a
    second agent and nothing is answered `failed`."""
    broker = Broker("mosquitto", tmp_path, prefix(), USERS)
    system = System(broker, tmp_path)
    coordinator = build(lamconfig.load(str(system.coordinator_config())))
    held_up = []

    def busy(topic: str, payload: bytes) -> None:  # its own task, heard back; the bus thread waits here
        if len(held_up) < 3:
            held_up.append(topic)
            time.sleep(3 * (system.ack_timeout + 1.0))

    coordinator.bus.on(system.load.topics.task("echo"), busy)
    try:
        system.agent("a1")
        system.agent("a2")
        coordinator.start()
        wait_until(coordinator.bus.ready.is_set, 30, "the coordinator on the broker")
        system.fault()
        prompts = system.load.send(20, seconds=0.5, timeout=60.0, pace=0.05)
        system.load.wait_answered(prompts, 120)
        assert len(held_up) == 3
        assert_clean(system, prompts)
    finally:
        coordinator.stop()
        system.close()
        broker.close()


@needs_mosquitto
def test_broker_down_at_start(mosquitto_system):
    """A coordinator started while the broker is down, longer than its warm-up, with prompts waiting
    for it in the broker: it waits to hear the agents before saying nobody can do them."""
    system = mosquitto_system
    prompts = system.load.send(10, seconds=0.1, timeout=TIMEOUT)
    system.load.wait_answered(prompts, ANSWER_WAIT)
    system.fault()
    assert process(system, "coordinator").stop() == 0
    prompts += system.load.send(30, seconds=0.1, timeout=TIMEOUT + 30)  # they wait in its session
    time.sleep(1)  # the last of them in the broker's queue
    assert system.broker.process.stop() == 0
    coordinator = system.coordinator(wait=False)
    wait_until(lambda: "cannot reach" in coordinator.log(), 30, "the coordinator trying the broker")
    time.sleep(4.0)  # longer than the warm-up of a coordinator that has heard of no agent (3 s)
    system.broker.start()
    wait_until(system.load.bus.ready.is_set, 30, "the load generator back on the broker")
    assert_clean(system, prompts)


@needs_mosquitto
@needs_root
def test_journal_disk_full(tmp_path):
    """The journal's disk fills under load: every prompt it cannot journal is answered `failed` at
    once, naming the disk (logged once); what was under way finishes; once space is back the
    coordinator takes prompts again by itself."""
    broker = Broker("mosquitto", tmp_path, prefix(), USERS)
    system = System(broker, tmp_path)
    try:
        with small_disk(tmp_path / "disk") as disk:
            system.journal = disk / "journal.db"
            try:
                coordinator = system.coordinator()
                for agent in ("a1", "a2"):
                    system.agent(agent)
                prompts = system.load.send(20, seconds=0.1, timeout=TIMEOUT)
                prompts += system.load.send(10, seconds=2.0, timeout=TIMEOUT)  # under way when the disk fills
                system.fault()
                filler = fill(disk)
                refused = []
                for _ in range(10):  # big prompts, until the journal needs room it cannot have
                    batch = system.load.send(20, seconds=0, timeout=TIMEOUT, padding=1800)
                    system.load.wait_answered(batch, ANSWER_WAIT)
                    prompts += batch
                    refused = [p for p in batch if "cannot write my journal" in system.load.replies[p.id][0].response]
                    if refused:
                        break
                assert refused, coordinator.log()[-3000:]
                assert all(system.load.replies[p.id][0].status == "failed" and str(disk) in
                           system.load.replies[p.id][0].response for p in refused)
                assert coordinator.log().count("cannot be written") == 1
                filler.unlink()
                wait_until(lambda: "can be written again" in coordinator.log(), 30, "the journal writing again")
                after = system.load.send(20, seconds=0.1, timeout=TIMEOUT)
                assert_clean(system, prompts + after, all_succeeded=False, honest=True)
                assert {system.load.replies[p.id][0].status for p in after} == {"succeeded"}
            finally:
                system.close()
    finally:
        broker.close()


@needs_mosquitto
@needs_root
def test_read_only_state(mosquitto_system, tmp_path):
    """A coordinator whose state directory is read-only exits at once with one sentence naming the
    journal; the prompts sent meanwhile wait in the broker for a coordinator that can write."""
    system = mosquitto_system
    prompts = system.load.send(20, seconds=0.1, timeout=TIMEOUT + 30)
    system.load.wait_answered(prompts, ANSWER_WAIT)
    system.fault()
    assert process(system, "coordinator").stop() == 0
    prompts += system.load.send(20, seconds=0.1, timeout=TIMEOUT + 30)
    writable = system.journal
    with small_disk(tmp_path / "read-only", "1m", read_only=True) as state:
        system.journal = state / "lamcontrol" / "journal.db"
        refused = system.coordinator(wait=False)
        assert refused.popen.wait(30) == 2
        said = [line for line in refused.log().splitlines() if line.strip()]
        assert len(said) == 1 and str(system.journal) in said[0] and "Traceback" not in said[0], said
    system.journal = writable
    system.coordinator()
    assert_clean(system, prompts)


# -- agents that lie --------------------------------------------------------------------------

def lying_spec() -> dict:
    """What `evil` (whose login may read only echo tasks) advertises: `computer` with power at low
    risk, read from "turn the volume to 20" and "play the music"; and, under the key `zzhijack`, a
    spec that names itself `echo` and reads every echo prompt."""
    power = ActionSpec("power", syntax=(Syntax("computer power {mode}"),),
                       args=(Arg("mode", "choice", "a power mode", choices=("lock", "sleep", "restart", "shutdown")),),
                       sentences=(Sentences(("turn the volume to {level}", "play the music"),
                                            fixed={"mode": "shutdown"}),),
                       risk="low")
    hijack = ActionSpec("say", syntax=(Syntax("echo {text}"),), args=(Arg("text"),),
                        sentences=(Sentences(("echo {text}", "echo sleep {seconds} {text}")),))
    return {"computer": CapabilitySpec("computer", actions=(power,)).to_dict(),
            "zzhijack": CapabilitySpec("echo", actions=(hijack,)).to_dict()}


@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
def test_lying_specs(tmp_path, kind):
    """`evil`, allowed only echo, claims computer (power at low risk, read from volume and music
    sentences) and a spec whose name is not its key, says it runs a million tasks at once with a
    negative load, and refuses every echo task it gets. No power task is ever published, the
    refusals are on lam/errors, and the echo load is answered once each, run once, by a1 and a2."""
    if kind == "mosquitto" and not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    broker = Broker(kind, tmp_path, prefix(), f"{USERS},monitor")
    system = System(broker, tmp_path)
    watcher = evil = None
    try:
        system.coordinator()
        for agent in ("a1", "a2"):
            system.agent(agent)
        watcher = Recorder(broker.settings("monitor"))
        topics = system.load.topics
        evil = Bus(broker.settings("evil"), component="evil", report=False)
        offered: list[Task] = []

        def refuse(topic: str, payload: bytes) -> None:
            task = parse(Task, payload)
            if task.agent == "evil":
                offered.append(task)
                evil.publish(Result(task_id=task.task_id, agent="evil", state="rejected", message="busy",
                                    attempt=task.attempt))

        evil.on(topics.task("echo"), refuse)
        evil.start(timeout=10)
        system.fault()
        evil.publish(AgentSpec(agent="evil", capabilities=lying_spec()), retain=True)
        evil.publish(Presence(state="online", agent="evil", capabilities={
            "echo": ["say", "sleep", "fail"], "computer": ["power", "volume", "media"], "zzhijack": ["say"]},
            max_concurrent=10**6, max_queued=10**6, load=-1000), retain=True).wait_for_publish(10)
        for topic in (topics.agent_spec("evil"), topics.agent_status("evil")):  # the broker took them in order:
            wait_until(lambda: watcher.on(topic), 20, topic)  # the coordinator reads them before the prompts
        spoken = [Prompt(prompt=text, source="faults", metadata={"timeout": TIMEOUT})
                  for text in ("turn the volume to 20", "play the music", "computer power shutdown") * 5]
        for prompt in spoken:
            system.load.bus.publish(prompt)
        prompts = system.load.send(60, seconds=0.1, timeout=TIMEOUT)
        system.load.wait_answered(prompts + spoken, ANSWER_WAIT)
        tally = system.tally(prompts)
        assert tally.clean() and tally.failed_but_ran == 0, f"{tally}\n{system.logs()}"
        assert tally.statuses == {"succeeded": len(prompts)}, tally
        assert all(system.load.replies[p.id][0].tasks[0].agent in ("a1", "a2") for p in prompts)
        tasks = watcher.parsed(Task, topics.build("tasks/#"))
        assert not [t for t in tasks if t.capability != "echo"], "a task for what evil may not offer"
        assert not [t for t in tasks if t.action == "say" and "sleep" in t.command], "echo prompts hijacked"
        assert {t.capability for t in offered} <= {"echo"}
        for prompt in spoken:  # read by the installed computer spec, which no agent here may offer
            [reply] = system.load.replies[prompt.id]
            if prompt.prompt.startswith("computer power"):
                assert reply.status == "needs_confirmation", reply
            else:
                assert reply.status == "failed" and reply.response.startswith("No agent can do computer"), reply
        errors = [e.error for e in watcher.parsed(ErrorRecord, topics.errors) if e.component == "coordinator"]
        assert any("evil" in e and "computer" in e and "may not read" in e for e in errors), errors
        assert any("evil" in e and "zzhijack" in e and "names itself 'echo'" in e for e in errors), errors
        assert any("evil" in e and "tasks at once" in e for e in errors), errors
        assert len(errors) == len(set(errors)), "each refusal is said once"
    finally:
        for bus in (evil, watcher and watcher.bus):
            if bus is not None:
                bus.stop()
        system.close()
        broker.close()


def test_retained_tasks(tmp_path):
    """On the embedded broker with no users (where any local process may publish), someone replays an
    answered prompt's task retained, its dispatch window a day ahead; later another task is left
    retained (one retained message per topic: it replaces the replay) with a window of seconds.
    Their agent is restarted twice after each, under load: neither task runs again (before, each ran
    at every restart), and every prompt is answered once."""
    broker = Broker("amqtt", tmp_path, prefix())
    system = System(broker, tmp_path)
    replayer = Bus(broker.settings(), component="replayer", report=False)
    try:
        system.coordinator()
        for agent in ("a1", "a2"):
            system.agent(agent)
        prompts = system.load.send(20, seconds=0.1, timeout=TIMEOUT)
        system.load.wait_answered(prompts, ANSWER_WAIT)
        first = prompts[0]
        [done] = system.load.replies[first.id][0].tasks
        now = time.time()
        replayed = Task(task_id=done.task_id, prompt_id=first.id, capability="echo", action="sleep", agent=done.agent,
                        args={"seconds": 0.1, "text": first.prompt.rsplit(" ", 1)[1]}, accept_by=now + 86_400,
                        deadline=now + 86_400)
        left = Task(task_id=uuid.uuid4().hex[:24], prompt_id=uuid.uuid4().hex[:24], capability="echo",
                    action="sleep", agent=done.agent, args={"seconds": 0.1, "text": "tokleftretained"},
                    accept_by=now + 5, deadline=now + 30)
        replayer.start(timeout=10)
        system.fault()
        for task in (replayed, left):
            replayer.publish(task, retain=True).wait_for_publish(10)
            for _ in range(2):
                prompts += system.load.send(20, seconds=0.1, timeout=TIMEOUT)
                assert process(system, done.agent).stop() == 0
                system.agent(done.agent)
        prompts += system.load.send(20, seconds=0.1, timeout=TIMEOUT)
        assert_clean(system, prompts, all_succeeded=False)  # an agent stopped fails what it had not started
        assert system.runs()["tokleftretained"] <= 1  # taken when published, as any live task; never again
    finally:
        replayer.stop()
        system.close()
        broker.close()
