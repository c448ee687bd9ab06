"""Faults, measured from outside: processes killed, frozen and cut off, brokers restarted, and
logins that try to act for others. Each test counts, over every prompt it sent, how many were
answered exactly once, lost, or answered twice, how many tasks two agents accepted, and how
many tasks the agents' own records show run twice."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid

import pytest

from conftest import mosquitto_available
from faultkit import Broker, Namespaces, System, netns_problem
from helpers import wait_until
from lamcontrol.bus import Bus
from lamcontrol.protocol import Result, Task, parse

USERS = "coordinator,client:load,agent:a1:echo,agent:a2:echo,agent:evil:echo"
TIMEOUT = 20.0  # each prompt's own timeout, seconds
ANSWER_WAIT = 45.0  # longest wait for the last replies

needs_mosquitto = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed")


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


def assert_clean(system: System, prompts: list, all_succeeded: bool = True) -> None:
    system.load.wait_answered(prompts, ANSWER_WAIT)
    tally = system.tally(prompts)
    print("tally:", tally)
    assert tally.clean(), f"{tally}\n{system.logs()}"
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
    resubscribed would be missed by the test, not lost by the system)."""
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
        assert_clean(system, prompts, all_succeeded=False)
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
            ran_before = len(system.record("a1").read_text().splitlines())
            prompts += system.load.send(40, seconds=0.1, timeout=TIMEOUT)
            assert_clean(system, prompts)
            assert len(system.record("a1").read_text().splitlines()) > ran_before, "a1 never came back"
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
