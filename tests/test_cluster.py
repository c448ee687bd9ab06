"""A NATS cluster of three nodes on loopback, configured by `lam nats-config`: its permissions keep
every component to what the Mosquitto ACL allows it, the house runs across the nodes, and of
several coordinators one leads while the others stand by."""

from __future__ import annotations

import queue
import uuid

import pytest

from helpers import wait_until
from lamcontrol.bus import Bus
from lamcontrol.protocol import Presence, Result, Task
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
