"""Any broker, now: a list of broker addresses tried in turn, subscriptions asked for again until
granted, ids every broker takes as one topic level, and agents that announce themselves again to a
coordinator that comes online. On both single brokers (aMQTT and Mosquitto), with real processes."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import Broker, mosquitto_available
from faultkit import Broker as HardenedBroker
from helpers import ROOT, LamSystem, Process, free_port, wait_for_port, wait_until
from lamcontrol.bus import BrokerSettings, Bus
from lamcontrol import config as lamconfig


@pytest.fixture(params=["amqtt", "mosquitto"])
def kind(request) -> str:
    if request.param == "mosquitto" and not mosquitto_available():
        pytest.fail("mosquitto is not installed: run the test command from the README, which installs it")
    return request.param


def lam_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lamcontrol", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env)


def test_a_list_of_addresses_in_the_config(tmp_path, monkeypatch):
    """`[broker] url` as a TOML list, or one string with commas: every address, in order."""
    monkeypatch.delenv("LAM_BROKER", raising=False)
    listed = tmp_path / "listed.toml"
    listed.write_text('[broker]\nurl = ["mqtt://a.lan:1883", "b.lan:1884", "mqtt://c.lan"]\n')
    settings = BrokerSettings.from_config(lamconfig.load(str(listed)))
    assert settings.addresses == [("a.lan", 1883), ("b.lan", 1884), ("c.lan", 1883)]
    joined = BrokerSettings(url="mqtts://me:secret@a.lan,b.lan:8884")
    assert joined.addresses == [("a.lan", 8883), ("b.lan", 8884)] and joined.tls
    assert (joined.username, joined.password) == ("me", "secret")
    assert "secret" not in joined.safe_url
    with pytest.raises(lamconfig.ConfigError, match="every address must use mqtt://"):
        BrokerSettings(url="mqtt://a.lan,mqtts://b.lan")
    done = lam_cli("send", "--broker", f"mqtt://127.0.0.1:{free_port()},127.0.0.1:{free_port()}",
                   "--connect-timeout", "2", "echo hi")
    assert done.returncode != 0 and "cannot reach the MQTT broker" in done.stderr


def test_a_component_goes_round_the_addresses_until_one_answers(kind, tmp_path):
    """A dead address first, then two brokers: the bus connects to the first that answers and, when
    that one stops, to the next, where it subscribes again."""
    nodes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        nodes.append(Broker(kind, tmp_path / name))
    url = ",".join([f"mqtt://127.0.0.1:{free_port()}", *(f"127.0.0.1:{n.port}" for n in nodes)])
    heard: queue.Queue = queue.Queue()
    bus = Bus(BrokerSettings(url=url), component="rotating", report=False)
    bus.on("rotation/#", lambda topic, payload: heard.put(payload))
    senders = []
    try:
        bus.start(timeout=30)
        for node in nodes:
            sender = Bus(BrokerSettings(url=node.url), component=f"sender-{node.port}", report=False)
            sender.start(timeout=15)
            senders.append(sender)

        def arrives_through(sender: Bus, word: bytes) -> bool:
            sender.publish_raw("rotation/news", word)
            try:
                while True:
                    if heard.get(timeout=0.5) == word:
                        return True
            except queue.Empty:
                return False

        wait_until(lambda: arrives_through(senders[0], b"from a"), 20, "a message through the first broker")
        nodes[0].stop()
        wait_until(lambda: arrives_through(senders[1], b"from b"), 40, "a message through the second broker")
    finally:
        for each in (*senders, bus):
            each.stop()
        for node in nodes:
            node.stop()


class UsersBroker:
    """A broker with one user, ``watcher``, whose ACL the test rewrites while it runs."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        if kind == "mosquitto":
            self.hardened = HardenedBroker("mosquitto", folder, self.prefix, "client:watcher")
            self.acl = self.hardened.folder / "acl"
            self.settings = self.hardened.settings("watcher")
            self.process = self.hardened.process
        else:
            password = uuid.uuid4().hex
            done = subprocess.run([sys.executable, "-m", "lamcontrol.broker.main", "adduser", str(folder / "passwd"),
                                   "watcher"], input=password, capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert done.returncode == 0, done.stderr
            self.acl = folder / "acl"
            self.acl.write_text("")
            port = free_port()
            self.process = Process("broker-users", [sys.executable, "-m", "lamcontrol.broker.main", "--listen",
                                                    f"127.0.0.1:{port}", "--password-file", str(folder / "passwd"),
                                                    "--acl-file", str(self.acl)], folder)
            wait_for_port(port)
            self.settings = BrokerSettings(url=f"mqtt://127.0.0.1:{port}", prefix=self.prefix, username="watcher",
                                           password=password)

    def allow(self, *rules: str) -> None:
        """The watcher's ACL becomes these rules; the broker reads it again."""
        self.acl.write_text("user watcher\n" + "".join(f"topic {rule}\n" for rule in rules))
        if self.kind == "mosquitto":
            self.process.signal(signal.SIGHUP)

    def close(self) -> None:
        if self.kind == "mosquitto":
            self.hardened.close()
        else:
            self.process.stop()


@pytest.mark.parametrize("kind", ["amqtt"])  # Mosquitto 2.0 grants what its ACL forbids, and delivers nothing
def test_a_refused_subscription_is_asked_for_again_until_granted(kind, tmp_path):
    """The broker refuses a subscription (SUBACK 0x80): the component says so, is not ready, and asks
    again until the broker grants it; then it hears what it subscribed to."""
    broker = UsersBroker(kind, tmp_path)
    broker.allow("write news/#")
    heard: queue.Queue = queue.Queue()
    bus = Bus(broker.settings, component="watcher", report=False)
    bus.on("news/today", lambda topic, payload: heard.put(payload))
    try:
        bus.start()
        wait_until(lambda: "refused" in bus.last_error, 20, lambda: f"a refusal, not {bus.last_error!r}")
        assert bus.connected.is_set() and not bus.ready.is_set()
        assert "news/today" in bus.last_error
        broker.allow("readwrite news/#")
        wait_until(bus.ready.is_set, 40, lambda: f"the subscription granted ({bus.last_error})")
        assert bus.last_error == ""
        bus.publish_raw("news/today", b"granted")
        assert heard.get(timeout=15) == b"granted"
    finally:
        bus.stop()
        broker.close()


def test_ids_are_one_topic_level_on_every_broker(tmp_path):
    """An id with a dot (NATS refuses it in a topic, RabbitMQ splits levels at it) is refused by
    name, with the form it could take instead."""
    done = subprocess.run([sys.executable, "-m", "lamcontrol.agents.main", "--id", "kitchen.pi", "-c", "echo",
                           "--broker", f"mqtt://127.0.0.1:{free_port()}"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert "'kitchen.pi' could be 'kitchen-pi'" in done.stderr, done.stderr
    joined = lam_cli("join", "living room", "--wait", "0", env={**__import__("os").environ,
                                                                 "LAM_STATE_DIR": str(tmp_path)})
    assert joined.returncode != 0
    assert "'living room' could be 'living-room'" in joined.stderr, joined.stderr


def test_agents_announce_themselves_again_to_a_coordinator_that_comes_online(broker, tmp_path):
    """A broker that lost an agent's retained presence and spec (a cluster node that never had them):
    the agent hears the coordinator come online and announces itself again, so the coordinator
    routes to it at once rather than after the agent's next heartbeat."""
    lam = LamSystem(broker.url, tmp_path)
    try:
        lam.agent("a1")
        for topic in (lam.topics.agent_status("a1"), lam.topics.agent_spec("a1")):
            lam.bus.publish_raw(topic, b"", retain=True).wait_for_publish(10)
        lam.coordinator()
        reply = lam.send("echo hello again", timeout=20)
        assert reply.status == "succeeded" and reply.tasks[0].agent == "a1", reply
    finally:
        lam.close()
