"""Failover on a three-node NATS cluster with two coordinators, measured from outside as the
fault tests measure it (tests/faultkit.py): per prompt every reply, per task every `accepted`
and the echo agents' own record of what they ran. The leading coordinator killed under load or
frozen for 20 s, a broker node killed, and the leader's node cut off silently: every prompt is
answered once, no task runs twice, and the deposed leader, woken, does nothing and stands by."""

from __future__ import annotations

import signal
import uuid

import pytest

from faultkit import Namespaces, netns_problem
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
        start(system, coordinator="n1", standby="n2", a1="n2", a2="n3")
        yield system
    finally:
        system.close()
        cluster.close()


def start(system: ClusterSystem, coordinator: str, standby: str, a1: str, a2: str) -> None:
    """The leading coordinator, the standby (once it stands by) and the two agents, each first on the node named."""
    system.coordinator("coordinator", url=system.cluster.url_from(coordinator))
    system.coordinator("standby", url=system.cluster.url_from(standby), wait=False)
    wait_until(lambda: "standing by" in system.processes["standby#0"].log(), 30, "the standby")
    system.agent("a1", url=system.cluster.url_from(a1))
    system.agent("a2", url=system.cluster.url_from(a2))


def send_for(system: ClusterSystem, seconds: float) -> list:
    return system.load.send(int(seconds * RATE), seconds=0.05, timeout=TIMEOUT, pace=1 / RATE)


def assert_clean(system: ClusterSystem, prompts: list, all_succeeded: bool = True) -> None:
    system.load.wait_answered(prompts, ANSWER_WAIT)
    tally = system.tally(prompts)
    print("tally:", tally)
    assert tally.clean(), f"{tally}\n{system.logs()}"
    if all_succeeded:
        assert tally.statuses == {"succeeded": len(prompts)}, f"{tally}\n{system.logs()}"
    else:
        assert set(tally.statuses) <= {"succeeded", "failed"}, tally


def test_leader_sigkill_under_load(house):
    """The leading coordinator killed while 60 prompts a second come in: the standby takes the lead
    and answers everything, the prompts sent meanwhile included."""
    prompts = send_for(house, 2)
    house.fault()
    house.processes["coordinator#0"].kill()
    prompts += send_for(house, 12)
    assert house.wait_for_leader(other_than="coordinator#0") == "standby#0"
    assert_clean(house, prompts, all_succeeded=False)  # now and then one task's end is heard too late


def test_leader_frozen_for_20_seconds(house):
    """The leader frozen (SIGSTOP) for 20 s under load: the standby takes over; the old leader, woken,
    finds its lease gone, publishes nothing and stands by."""
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
    wait_until(lambda: "standing by" in old.log(), 30, lambda: old.log()[-3000:])
    assert "no longer leads" in old.log() and old.popen.poll() is None
    assert_clean(house, prompts, all_succeeded=False)
    assert house.leader() == "standby#0"


@pytest.mark.xfail(strict=False, reason="a task offered in the seconds around a node's death may run twice: NATS "
                   "moves the coordinator session's consumer, and an agent's `accepted` can come after the accept "
                   "window (docs/guarantees.md)")
def test_a_broker_node_killed_under_load(house):
    """The node the leader's MQTT session and the first agent are on is killed under load: they move
    to the other nodes, the lead stays or passes, every prompt is answered once."""
    prompts = send_for(house, 2)
    house.fault()
    house.cluster.kill("n1")
    prompts += send_for(house, 12)
    assert_clean(house, prompts)


@pytest.mark.xfail(strict=False, reason="recovery from a silent cut of the leader's node is not yet bounded: it "
                   "took up to 22.9 s, and failed one full run of the suite (issue: availability)")
@pytest.mark.skipif(bool(netns_problem()), reason=netns_problem() or "network namespaces available")
def test_the_leaders_node_cut_off_silently(tmp_path):
    """Node n3 and the leading coordinator in a network namespace of their own, cut off from the
    rest by blackhole routes both ways (no FIN, no RST) under load: the standby, on the side that
    keeps the quorum, takes the lead; the old leader finds its lease gone and stands by. (An agent
    cut off with them is the agent cut of tests/test_faults.py.)"""
    net = Namespaces()
    try:
        outside, inside = net.exec(net.broker_ns), net.exec(net.agent_ns)
        with net.entered(net.broker_ns):
            cluster = NatsCluster(f"f{uuid.uuid4().hex[:8]}", USERS, bind="0.0.0.0",
                                  hosts={"n1": net.broker_ip, "n2": net.broker_ip, "n3": net.agent_ip},
                                  wrap={"n1": outside, "n2": outside, "n3": inside})
            system = ClusterSystem(cluster, tmp_path, wrap={"coordinator": inside, "standby": outside,
                                                            "a1": outside, "a2": outside})
        try:
            start(system, coordinator="n3", standby="n1", a1="n1", a2="n2")
            old = system.processes["coordinator#0"]
            prompts = send_for(system, 2)
            system.fault()
            net.cut()
            try:
                prompts += send_for(system, 12)
            finally:
                net.mend()
            prompts += send_for(system, 3)
            wait_until(lambda: "standing by" in old.log(), 30, lambda: old.log()[-3000:])
            # Once mended, NATS 2.9 drops MQTT connections while its streams settle (some seconds):
            # prompts then waiting for an agent may fail, with a sentence, at their deadline.
            assert_clean(system, prompts, all_succeeded=False)
        finally:
            system.close()
            cluster.close()
    finally:
        net.close()
