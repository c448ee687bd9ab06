"""Failover on a three-node NATS cluster with two coordinators, measured from outside as the
fault tests measure it (tests/faultkit.py): per prompt every reply, per task every `accepted`
and the echo agents' own record of what they ran. The leading coordinator killed under load or
frozen for 20 s, and a broker node killed: every prompt is answered once, no task runs twice,
and the deposed leader, woken, does nothing and leaves."""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from helpers import wait_until
from natskit import ClusterSystem, NatsCluster, nats_available

USERS = "coordinator,client:load,agent:a1:echo,agent:a2:echo"
TIMEOUT = 30.0  # each prompt's own timeout, seconds
ANSWER_WAIT = 60.0
RATE = 60.0  # prompts per second under load

pytestmark = pytest.mark.skipif(not nats_available(), reason="nats-server is not installed: tests/run.sh installs it")


@pytest.fixture
def house(tmp_path):
    """Coordinators `coordinator` (leading, first on n1) and `standby` (first on n2), agents a1 on n2
    and a2 on n3, the load on every node."""
    cluster = NatsCluster(f"f{uuid.uuid4().hex[:8]}", USERS)
    system = ClusterSystem(cluster, tmp_path)
    try:
        system.coordinator("coordinator", url=cluster.url_from("n1"))
        system.coordinator("standby", url=cluster.url_from("n2"), wait=False)
        wait_until(lambda: "standing by" in system.processes["standby#0"].log(), 30, "the standby")
        system.agent("a1", url=cluster.url_from("n2"))
        system.agent("a2", url=cluster.url_from("n3"))
        yield system
    finally:
        system.close()
        cluster.close()


def send_for(system: ClusterSystem, seconds: float) -> list:
    return system.load.send(int(seconds * RATE), seconds=0.05, timeout=TIMEOUT, pace=1 / RATE)


def assert_clean(system: ClusterSystem, prompts: list) -> None:
    system.load.wait_answered(prompts, ANSWER_WAIT)
    tally = system.tally(prompts)
    print("tally:", tally)
    assert tally.clean(), f"{tally}\n{system.logs()}"
    assert tally.statuses == {"succeeded": len(prompts)}, f"{tally}\n{system.logs()}"


def test_leader_sigkill_under_load(house):
    """The leading coordinator killed while 60 prompts a second come in: the standby takes the lead
    and answers everything, the prompts sent meanwhile included."""
    prompts = send_for(house, 2)
    house.fault()
    house.processes["coordinator#0"].kill()
    prompts += send_for(house, 12)
    assert house.wait_for_leader(other_than="coordinator#0") == "standby#0"
    assert_clean(house, prompts)


def test_leader_frozen_for_20_seconds(house):
    """The leader frozen (SIGSTOP) for 20 s under load: the standby takes over; the old leader, woken,
    finds its lease gone, publishes nothing and leaves (exit status 3)."""
    old = house.processes["coordinator#0"]
    prompts = send_for(house, 2)
    house.fault()
    old.signal(signal.SIGSTOP)
    try:
        prompts += send_for(house, 20)
    finally:
        old.signal(signal.SIGCONT)
    assert house.leader() == "standby#0"
    prompts += send_for(house, 3)
    assert old.popen.wait(30) == 3, old.log()[-3000:]
    assert "no longer leads" in old.log()
    assert_clean(house, prompts)


def test_a_broker_node_killed_under_load(house):
    """The node the leader's MQTT session and the first agent are on is killed under load: they move
    to the other nodes, the lead stays or passes, every prompt is answered once."""
    prompts = send_for(house, 2)
    house.fault()
    house.cluster.kill("n1")
    prompts += send_for(house, 12)
    assert_clean(house, prompts)
