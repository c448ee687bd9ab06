"""`lam mosquitto-config`: a real Mosquitto runs the configuration and enforces every rule,
and the whole system works through it with one user per component."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import mosquitto_available
from helpers import ROOT, Process, Recorder, assert_tls_login, free_port, wait_for_port, wait_until
from lamcontrol import ops
from lamcontrol.bus import BrokerSettings, Bus, BusError
from lamcontrol.protocol import CoordinatorPresence, Presence, Prompt, Reply, Result, Task, parse

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed")

USERS = "coordinator,bridge,homeassistant,monitor,agent:desk:echo,agent:lab:browser"
QUIET = 1.0  # seconds a refused message is given to show up anyway


def lam_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lamcontrol", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


class HardenedBroker:
    """Mosquitto running what `lam mosquitto-config` wrote, under a test prefix of its own."""

    def __init__(self, *extra: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lam-mosquitto-"))
        self.dir.chmod(0o755)  # the broker drops to its own user, who must reach passwd and acl
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        config = self.dir / "lam.toml"
        config.write_text(f'[broker]\nprefix = "{self.prefix}"\n'
                          f'[homeassistant]\ndiscovery_prefix = "ha{self.prefix}"\n')
        self.port = free_port()
        self.written = lam_cli("mosquitto-config", "--out", str(self.dir), "--users", USERS, "--config", str(config),
                               "--listen", f"127.0.0.1:{self.port}", *extra)
        assert self.written.returncode == 0, self.written.stderr
        self.process = Process("mosquitto-hardened", [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
                                                      str(self.dir / "mosquitto.conf")], self.dir)
        wait_for_port(self.port)
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def password(self, user: str) -> str:
        return (self.dir / "credentials" / user).read_text().strip()

    def settings(self, user: str | None, password: str | None = None) -> BrokerSettings:
        return BrokerSettings(url=self.url, prefix=self.prefix, username=user or "",
                              password=self.password(user) if user and password is None else password or "")

    def bus(self, user: str, handlers: dict | None = None) -> Bus:
        bus = Bus(self.settings(user), component=f"test-{user}", report=False)
        for topic_filter, handler in (handlers or {}).items():
            bus.on(topic_filter, handler)
        bus.start(timeout=10)
        return bus

    def config(self, user: str) -> Path:
        path = self.dir / f"{user}.toml"
        path.write_text(f'[broker]\nurl = "{self.url}"\nprefix = "{self.prefix}"\nusername = "{user}"\n'
                        f'password_file = "{self.dir / "credentials" / user}"\n'
                        f'[coordinator]\njournal = "{self.dir / "journal.db"}"\nack_timeout = 3.0\n'
                        f'[homeassistant]\ndiscovery_prefix = "ha{self.prefix}"\n')
        return path

    def close(self) -> None:
        self.process.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def hardened():
    broker = HardenedBroker()
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def legacy_hardened():
    """Written with --legacy-results: agents may still write lam/results/#."""
    broker = HardenedBroker("--legacy-results")
    assert f"topic write {broker.prefix}/results/#" in (broker.dir / "acl").read_text()
    yield broker
    broker.close()


@pytest.fixture
def monitor(hardened):
    recorder = Recorder(hardened.settings("monitor"))
    yield recorder
    recorder.bus.stop()


def test_files_are_private_and_passwords_never_printed(hardened):
    for name in ("passwd", "acl"):
        assert stat.S_IMODE((hardened.dir / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((hardened.dir / "credentials").stat().st_mode) == 0o700
    for user in ("coordinator", "bridge", "homeassistant", "monitor", "desk", "lab"):
        path = hardened.dir / "credentials" / user
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        password = hardened.password(user)
        assert len(password) >= 24
        for text in (hardened.written.stdout, hardened.written.stderr, (hardened.dir / "passwd").read_text(),
                     (hardened.dir / "mosquitto.conf").read_text()):
            assert password not in text
    conf = (hardened.dir / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "set_tcp_nodelay true" in conf and "max_queued_messages" in conf
    assert f"listener {hardened.port} 127.0.0.1\n" + "\n".join(ops.BOUND_IDS) in conf and "persistence true" in conf
    persistence = hardened.dir / "persistence"
    assert f"persistence_location {persistence}/" in conf
    if os.geteuid() == 0:  # Mosquitto drops to its own user, who must write there
        assert persistence.stat().st_uid == pwd.getpwnam("mosquitto").pw_uid


def test_strangers_are_refused(hardened):
    for settings in (hardened.settings(None), hardened.settings("desk", "wrong password"),
                     hardened.settings("nobody", "whatever")):
        with pytest.raises(BusError, match="refused|disconnected"):
            Bus(settings, component="stranger", report=False).start(timeout=2)
    hardened.bus("monitor").stop()  # while a known user with its password gets in


def test_an_agent_cannot_send_prompts_or_speak_for_others(hardened, monitor):
    desk = hardened.bus("desk")
    topics = desk.topics
    desk.publish(Prompt(prompt="computer power shutdown")).wait_for_publish(5)
    desk.publish(Presence(state="online", agent="lab", capabilities={"browser": ["site"]}), retain=True) \
        .wait_for_publish(5)
    own = Presence(state="online", agent="desk", capabilities={"echo": ["say"]})
    desk.publish(own, retain=True).wait_for_publish(5)
    # Results: only under its own subtree; neither the shared results topic nor another agent's.
    forged = Result(task_id="t1", agent="lab", state="succeeded").to_json()
    for topic in (topics.build("results/t1"), f"{hardened.prefix}/agents/lab/results/t1"):
        desk.publish_raw(topic, forged).wait_for_publish(5)
    own_result = f"{hardened.prefix}/agents/desk/results/t1"
    desk.publish_raw(own_result, Result(task_id="t1", agent="desk", state="succeeded").to_json()).wait_for_publish(5)
    bridge = hardened.bus("bridge")
    bridge.publish(Prompt(prompt="echo say allowed")).wait_for_publish(5)
    monitor.wait_for(Prompt, topics.prompts, lambda p: p.prompt == "echo say allowed")
    monitor.wait_for(Result, own_result)
    monitor.wait_for(Presence, topics.agent_status("desk"))
    time.sleep(QUIET)
    assert [p.prompt for p in monitor.parsed(Prompt, topics.prompts)] == ["echo say allowed"]
    assert not monitor.on(topics.agent_status("lab"))
    assert not monitor.on(topics.build("results/t1")) and not monitor.on(f"{hardened.prefix}/agents/lab/")
    desk.publish_raw(topics.agent_status("desk"), b"", retain=True).wait_for_publish(5)
    for bus in (desk, bridge):
        bus.stop()


def test_an_agent_reads_only_its_own_capabilities(hardened):
    received: list[str] = []
    desk = hardened.bus("desk", {"+/tasks/#": lambda topic, payload: received.append(topic)})
    coordinator = hardened.bus("coordinator")
    topics = coordinator.topics
    for capability in ("browser", "echo"):
        coordinator.publish(Task(task_id=f"t-{capability}", prompt_id="p", capability=capability, action="say",
                                 agent="desk")).wait_for_publish(5)
    wait_until(lambda: topics.task("echo") in received, 10, "the echo task")
    time.sleep(QUIET)
    assert received == [topics.task("echo")]
    for bus in (desk, coordinator):
        bus.stop()


def test_monitor_is_read_only_and_home_assistant_gets_discovery(hardened, monitor):
    monitor.bus.publish(Prompt(prompt="echo say from the monitor")).wait_for_publish(5)
    ha_seen: list[str] = []
    ha = hardened.bus("homeassistant", {f"ha{hardened.prefix}/#": lambda t, p: ha_seen.append(t),
                                        f"{hardened.prefix}/#": lambda t, p: ha_seen.append(t)})
    ha.publish(Prompt(prompt="echo say from home assistant")).wait_for_publish(5)
    ha.publish_raw(f"ha{hardened.prefix}/status", "online").wait_for_publish(5)
    coordinator = hardened.bus("coordinator")
    coordinator.publish_raw(f"ha{hardened.prefix}/sensor/x/y/config", "{}").wait_for_publish(5)
    wait_until(lambda: f"ha{hardened.prefix}/sensor/x/y/config" in ha_seen, 10, "discovery read by homeassistant")
    monitor.wait_for(Prompt, hardened.prefix + "/prompts", lambda p: p.prompt == "echo say from home assistant")
    time.sleep(QUIET)
    assert [p.prompt for p in monitor.parsed(Prompt, hardened.prefix + "/prompts")] == ["echo say from home assistant"]
    for bus in (ha, coordinator):
        bus.stop()


def test_a_login_cannot_take_over_another_users_session(hardened):
    """An agent's login presenting the coordinator's client id gets a session of its own."""
    connects: list[int] = []
    received: list[bytes] = []
    coordinator = Bus(hardened.settings("coordinator"), component="test-coordinator",
                      client_id=f"{hardened.prefix}-coordinator", persistent=True, report=False)
    coordinator.on(f"{hardened.prefix}/prompts", lambda topic, payload: received.append(payload))
    coordinator.on_connect(lambda: connects.append(1))
    coordinator.start(timeout=10)
    intruder = Bus(hardened.settings("desk"), component="intruder", client_id=coordinator.client_id,
                   persistent=True, report=False)
    intruder.start(timeout=10)
    bridge = hardened.bus("bridge")
    try:
        bridge.publish(Prompt(prompt="echo say still the coordinator's")).wait_for_publish(5)
        wait_until(lambda: received, 10, "the prompt at the coordinator")
        time.sleep(QUIET)
        assert len(connects) == 1 and coordinator.connected.is_set() and len(received) == 1
    finally:
        for bus in (bridge, intruder, coordinator):
            bus.stop()


@pytest.mark.parametrize("legacy", [True, False])
def test_echo_round_trip_with_a_user_per_component(legacy, request):
    hardened = request.getfixturevalue("legacy_hardened" if legacy else "hardened")
    monitor = Recorder(hardened.settings("monitor"))
    coordinator = Process("coordinator", [sys.executable, "-m", "lamcontrol.coordinator.main", "--config",
                                          str(hardened.config("coordinator"))], hardened.dir)
    agent = Process("agent", [sys.executable, "-m", "lamcontrol.agents.main", "--id", "desk", "--capability", "echo",
                              "--config", str(hardened.config("desk"))], hardened.dir)
    try:
        topics = monitor.topics
        monitor.wait_for(CoordinatorPresence, topics.coordinator_status, lambda p: p.state == "online")
        monitor.wait_for(Presence, topics.agent_status("desk"), lambda p: p.state == "online")
        replies: list[Reply] = []
        bridge = hardened.bus("bridge", {topics.all_replies: lambda t, p: replies.append(parse(Reply, p))})
        prompt = Prompt(prompt="echo say through the hardened broker")
        bridge.publish(prompt).wait_for_publish(5)
        reply = wait_until(lambda: next((r for r in replies if r.prompt_id == prompt.id), None), 20,
                           f"the reply\n{coordinator.log()}\n{agent.log()}")
        assert reply.status == "succeeded" and reply.tasks[0].agent == "desk"
        assert "through the hardened broker" in reply.response
        # Home Assistant discovery got through the coordinator's rights too.
        ha_seen: list[str] = []
        ha = hardened.bus("homeassistant", {f"ha{hardened.prefix}/#": lambda t, p: ha_seen.append(t)})
        wait_until(lambda: any("/binary_sensor/" in t for t in ha_seen), 10, "discovery configs")
        for bus in (bridge, ha):
            bus.stop()
    finally:
        agent.stop()
        coordinator.stop()
        monitor.bus.stop()
    logs = coordinator.log() + agent.log()
    for user in ("coordinator", "desk"):
        assert hardened.password(user) not in logs


def test_tls_listener():
    keys = Path(tempfile.mkdtemp(prefix="lam-tls-"))
    keys.chmod(0o755)  # the broker reads the key after dropping to its own user
    cert, key = keys / "server.pem", keys / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    shutil.chown(key, "mosquitto", "mosquitto")
    tls_port = free_port()
    broker = HardenedBroker("--cert", str(cert), "--key", str(key), "--tls-listen", f"127.0.0.1:{tls_port}")
    try:
        conf = (broker.dir / "mosquitto.conf").read_text()
        assert f"listener {tls_port} 127.0.0.1" in conf and "tls_version tlsv1.2" in conf
        wait_for_port(tls_port)
        assert_tls_login(tls_port, str(cert), "monitor", broker.password("monitor"), broker.prefix)
    finally:
        broker.close()
        shutil.rmtree(keys, ignore_errors=True)


def test_bad_user_lists_are_refused():
    for users, complaint in (("coordinator,agent:desk", "agent:ID:capability"), ("robot", "users are"),
                             ("agent:monitor:echo", "may not be called"),
                             ("client:bridge", "may not be called"), ("client:a/b", "client name"), ("coordinator,coordinator", "twice"),
                             ("agent:a/b:echo", "agent id")):
        done = lam_cli("mosquitto-config", "--out", tempfile.gettempdir() + "/lam-never-written", "--users", users)
        assert done.returncode != 0 and complaint in done.stderr, (users, done.stderr)
        assert "Traceback" not in done.stderr
    for args, complaint in ((["--listen", ""], "needs a listener"), (["--cert", "/nonexistent.pem"], "go together"),
                            (["--cert", "/etc/hostname", "--key", "/nonexistent.key"], "does not exist"),
                            (["--listen", "localhost"], "host:port")):
        done = lam_cli("mosquitto-config", "--out", tempfile.gettempdir() + "/lam-never-written", *args)
        assert done.returncode != 0 and complaint in done.stderr, (args, done.stderr)
    assert not Path(tempfile.gettempdir(), "lam-never-written").exists()


def test_running_again_keeps_passwords_and_adds_users(tmp_path):
    out = tmp_path / "mosquitto"
    assert lam_cli("mosquitto-config", "--out", str(out), "--users", "coordinator", "--owner", "root").returncode == 0
    first = (out / "credentials/coordinator").read_text()
    done = lam_cli("mosquitto-config", "--out", str(out), "--users", "coordinator,agent:desk:echo", "--owner", "root")
    assert done.returncode == 0, done.stderr
    assert (out / "credentials/coordinator").read_text() == first
    assert [line.split(":")[0] for line in (out / "passwd").read_text().splitlines()] == ["coordinator", "desk"]
    assert "user desk" in (out / "acl").read_text()


def retained_under(hardened, topic_filter: str, quiet: float = 1.0) -> dict[str, bytes]:
    """What a new subscription (a plain client with the monitor's login) finds retained under ``topic_filter``."""
    found: dict[str, bytes] = {}
    last = [time.monotonic()]

    def keep(client, userdata, message) -> None:
        if message.retain:
            found[message.topic] = message.payload
        last[0] = time.monotonic()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"retained-{uuid.uuid4().hex[:6]}")
    client.username_pw_set("monitor", hardened.password("monitor"))
    client.on_message = keep
    client.connect("127.0.0.1", hardened.port)
    client.loop_start()
    client.subscribe(topic_filter, qos=1)
    last[0] = time.monotonic()
    while time.monotonic() - last[0] < quiet:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    return found


def test_the_broker_has_limits_and_an_agent_retains_only_its_presence_and_spec(hardened):
    conf = (hardened.dir / "mosquitto.conf").read_text()
    for setting in ("max_queued_messages 100000", "max_queued_bytes 67108864", "message_size_limit 65536",
                    "memory_limit 536870912", "persistent_client_expiration 14d"):
        assert f"\n{setting}\n" in conf, setting  # and Mosquitto runs it (the fixture started it)
    acl = (hardened.dir / "acl").read_text()
    assert f"topic write {hardened.prefix}/agents/desk/results/+\n" in acl and "agents/desk/#" not in acl
    own = f"{hardened.prefix}/agents/desk"
    desk = hardened.bus("desk")
    coordinator = Bus(hardened.settings("coordinator"), component="test-coordinator")
    coordinator.sweep_every = 1.0  # a minute in a real coordinator
    coordinator.subscribe(Result, lambda result: None)
    coordinator.start(timeout=10)
    try:
        for n in range(3):  # elsewhere under its topics: refused by the ACL
            desk.publish_raw(f"{own}/junk/{n}", b"x" * 60_000, retain=True).wait_for_publish(5)
        desk.publish_raw(f"{own}/status", b"y" * 200_000, retain=True).wait_for_publish(5)  # over the size limit
        stray = Result(task_id="t-stray", agent="desk", state="succeeded").to_json()
        desk.publish_raw(f"{own}/results/t-stray", stray, retain=True).wait_for_publish(5)
        # The one it may write is taken (results must be), then cleared by the coordinator's next sweep.
        wait_until(lambda: f"{own}/results/t-stray" not in retained_under(hardened, f"{own}/#"), 20,
                   "the stray result cleared")
        left = retained_under(hardened, f"{own}/#")  # what other tests' agents left: a presence, a spec
        assert set(left) <= {f"{own}/status", f"{own}/spec"} and all(len(p) < 60_000 for p in left.values())
        desk.publish(Result(task_id="t-live", agent="desk", state="succeeded")).wait_for_publish(5)
    finally:
        for bus in (desk, coordinator):
            bus.stop()


def test_forgetting_an_agent_clears_everything_it_left_retained(hardened):
    lab = hardened.bus("lab")
    own = f"{hardened.prefix}/agents/lab"
    for topic, payload in ((f"{own}/status", Presence(state="offline", agent="lab").to_json()),
                           (f"{own}/results/t-left", Result(task_id="t-left", agent="lab", state="failed").to_json())):
        lab.publish_raw(topic, payload, retain=True).wait_for_publish(5)
    lab.stop()
    assert set(retained_under(hardened, f"{own}/#")) == {f"{own}/status", f"{own}/results/t-left"}
    done = lam_cli("agents", "forget", "lab", "--config", str(hardened.config("coordinator")))
    assert done.returncode == 0, done.stderr
    assert retained_under(hardened, f"{own}/#") == {}
