"""A NATS cluster of three nodes on loopback, configured by `lam nats-config`: its permissions keep
every component to what the Mosquitto ACL allows it, the house runs across the nodes, and of
several coordinators one leads while the others stand by."""

from __future__ import annotations

import queue
import uuid

import pytest

from helpers import wait_until
from lamcontrol.bus import Bus
from lamcontrol.protocol import Result, Task
from natskit import ClusterSystem, NatsCluster, nats_available

USERS = "coordinator,client:load,agent:a1:echo,agent:a2:echo"

pytestmark = pytest.mark.skipif(not nats_available(), reason="nats-server is not installed: tests/run.sh installs it")


def prefix() -> str:
    return f"c{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cluster():
    running = NatsCluster(prefix(), USERS)
    yield running
    running.close()


def test_two_coordinators_one_leads_and_the_house_runs_across_nodes(cluster, tmp_path):
    system = ClusterSystem(cluster, tmp_path)
    try:
        system.coordinator("coordinator", url=cluster.mqtt_url("n1"))
        system.coordinator("standby", url=cluster.mqtt_url("n2"), wait=False)
        system.agent("a1", url=cluster.mqtt_url("n2"))
        prompts = system.load.send(20, seconds=0.05)
        system.load.wait_answered(prompts, 30)
        tally = system.tally(prompts)
        assert tally.clean(), f"{tally}\n{system.logs()}"
        assert system.leader() == "coordinator#0"
        wait_until(lambda: "standing by" in system.processes["standby#0"].log(), 20, "the standby")
    finally:
        system.close()


def test_nats_permissions_keep_an_agent_to_its_own_subtree(cluster):
    """`lam nats-config` turns the Mosquitto ACL into NATS permissions: agent a1 takes its tasks but is
    refused the prompts (and so never ready while it asks for them), and what it writes under a2's
    subtree reaches nobody."""
    coordinator = Bus(cluster.settings("coordinator"), component="coordinator-user", report=False)
    heard: queue.Queue = queue.Queue()
    coordinator.on(f"{cluster.prefix}/agents/+/results/+", lambda topic, payload: heard.put(topic))
    snoop = Bus(cluster.settings("a1"), component="a1-snoop", report=False)
    snoop.on(f"{cluster.prefix}/prompts", lambda topic, payload: None)
    a1 = Bus(cluster.settings("a1"), component="a1", report=False)
    a1.on(f"{cluster.prefix}/tasks/echo", lambda topic, payload: heard.put(topic))
    try:
        coordinator.start(timeout=20)
        a1.start(timeout=20)
        snoop.start()
        wait_until(lambda: "refused" in snoop.last_error, 20, lambda: f"a refusal, not {snoop.last_error!r}")
        assert not snoop.ready.is_set()
        task = Task(task_id="t1", prompt_id="p1", capability="echo", action="say", agent="a1")
        coordinator.publish(task).wait_for_publish(10)
        assert heard.get(timeout=10) == f"{cluster.prefix}/tasks/echo"
        for agent in ("a2", "a1"):  # the forged one first: the genuine one, after it, shows it was not held up
            a1.publish(Result(task_id="t1", agent=agent, state="succeeded")).wait_for_publish(10)
        assert heard.get(timeout=10) == f"{cluster.prefix}/agents/a1/results/t1"
        assert heard.empty()
    finally:
        for bus in (snoop, a1, coordinator):
            bus.stop()


def test_the_journal_takes_writes_from_its_last_claimant_only(cluster):
    """Two coordinators' journals on the same stream: the first claims and writes; the second reads
    it all, claims under a higher epoch, and from then on the first one's writes are refused."""
    from lamcontrol.cluster import ClusterSettings, Names, NatsLink
    from lamcontrol.coordinator.journal import JournalFenced, StreamJournal
    from lamcontrol.protocol import Prompt

    links = [NatsLink(ClusterSettings(nats=cluster.nats, username="coordinator",
                                      password=cluster.password("coordinator")), f"journal-{i}") for i in (1, 2)]
    try:
        for link in links:
            link.connect()
        first, second = (StreamJournal(link, Names(cluster.prefix), holder=f"c{i}", confirm_within=5)
                         for i, link in enumerate(links))
        first.claim(1)
        prompt = Prompt(prompt="echo hi")
        with first.batch():
            assert first.add_prompt(prompt, 1e12)
            first.add_task(prompt.id, "t1", 0, {"capability": "echo", "action": "say", "args": {}, "command": "x"})
            first.update_task("t1", "dispatched", "a1", 1)
        second.follow()
        second.claim(2)
        [(read, deadline, tasks)] = second.open_prompts()
        assert read.id == prompt.id and tasks[0]["state"] == "dispatched" and tasks[0]["agent"] == "a1"
        with pytest.raises(JournalFenced):
            first.reply_sent(prompt.id)
            first.update_task("t1", "accepted", "a1", 1)
        assert first.fenced.is_set()
        second.update_task("t1", "accepted", "a1", 1)
        assert second.open_prompts()[0][2][0]["state"] == "accepted"
        assert first.open_prompts()[0][2][0]["state"] == "dispatched"  # the refused write undone
    finally:
        for link in links:
            link.close()
