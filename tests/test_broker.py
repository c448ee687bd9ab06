"""The embedded broker (``lam-broker``) under the churn the test suite and ``lam send`` create."""

from __future__ import annotations

import asyncio
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import paho.mqtt.client as mqtt
import pytest

from faultkit import StalledSubscriber
from helpers import Process, free_port, wait_for_port, wait_until

THREADS = 8
CLIENTS_PER_THREAD = 40
RETAINED = 5


@pytest.fixture
def embedded_broker(tmp_path):
    """A ``lam-broker`` process on a free port; yields (port, process)."""
    port = free_port()
    process = Process("lam-broker", [sys.executable, "-m", "lamcontrol.broker.main", "--listen", f"127.0.0.1:{port}"], tmp_path)
    wait_for_port(port)
    yield port, process
    process.stop()


class Client:
    """A paho client named and (if asked) persistent as LAMControl components are, subscribed to filters.

    It never reconnects by itself, so a connection the broker drops shows up as a problem.
    """

    def __init__(self, port: int, client_id: str, filters: list[str], persistent: bool = True,
                 will_topic: str = "", login: tuple[str, str] | None = None) -> None:
        self.client_id = client_id
        self.received: list[bytes] = []
        self.subscribed = threading.Event()
        self.dropped = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
        self.client.username_pw_set(*(login or (client_id,)))
        self.refused = threading.Event()
        self.client.on_connect = lambda client, userdata, flags, reason, properties: (
            self.refused.set() if reason.is_failure else None)
        if will_topic:
            self.client.will_set(will_topic, b'{"online": false}', qos=1, retain=True)
        self.client.reconnect_delay_set(60, 60)
        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retain flag)
        self.client.on_message = lambda client, userdata, message: (
            self.received.append(message.payload), self.messages.append((message.topic, message.payload, message.retain)))
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_disconnect = lambda *args: self.dropped.set()
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if filters:
            self.client.subscribe([(f, 1) for f in filters])

    def problem(self) -> str:
        """Why the subscription did not go through ('' if it did)."""
        if not self.subscribed.wait(15):
            return f"{self.client_id}: no SUBACK" + (" (dropped by the broker)" if self.dropped.is_set() else "")
        return f"{self.client_id}: dropped by the broker" if self.dropped.is_set() else ""

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(15)

    def close(self, abrupt: bool = False) -> None:
        sock = self.client.socket()
        if abrupt and sock:
            sock.close()  # the broker sends the last will
        else:
            self.client.disconnect()
        self.client.loop_stop()


def churn(port: int, worker: int) -> list[str]:
    """Clients that connect, subscribe, announce themselves and leave, one after another."""
    problems = []
    for n in range(CLIENTS_PER_THREAD):
        persistent = (worker + n) % 2 == 0
        # Persistent clients come back under a few names, as agents do; the others are one-offs.
        client_id = f"churn-{worker}-{n % 3}" if persistent else f"churn-{uuid.uuid4().hex[:10]}"
        status = f"lam/agents/{client_id}/status"
        client = Client(port, client_id, [f"lam/replies/{uuid.uuid4().hex}", "lam/#"], persistent, status)
        problem = client.problem()
        if problem:
            problems.append(problem)
        else:
            client.publish(status, b'{"online": true}', retain=True)
        client.close(abrupt=n % 4 == 0)
    return problems


def test_many_short_lived_clients_all_connect_while_others_come_and_go(embedded_broker):
    port, process = embedded_broker
    watcher = Client(port, "churn-watcher", ["lam/#"], persistent=False)
    for n in range(RETAINED):
        watcher.publish(f"lam/agents/seed-{n}/status", b'{"online": true}', retain=True)

    with ThreadPoolExecutor(THREADS) as pool:
        problems = [p for found in pool.map(churn, [port] * THREADS, range(THREADS)) for p in found]
    watcher.close()

    assert problems == []
    assert "Unhandled exception" not in process.log()


def test_a_session_taken_over_by_a_new_connection_keeps_receiving(embedded_broker):
    """An agent restarted before the broker noticed its old connection still gets its tasks."""
    port, _ = embedded_broker
    old = Client(port, "lam-agent-takeover", ["lam/tasks/echo"])
    assert old.problem() == ""
    new = Client(port, "lam-agent-takeover", ["lam/tasks/echo"])
    assert new.problem() == ""
    assert old.dropped.wait(15), "the broker kept the old connection"
    publisher = Client(port, "takeover-publisher", [], persistent=False)
    tasks = [f"task {n}".encode() for n in range(3)]
    try:
        for task in tasks:
            publisher.publish("lam/tasks/echo", task)
        wait_until(lambda: new.received == tasks, what="the tasks on the new connection")
    finally:
        for client in (publisher, old, new):
            client.close()


def test_retained_messages_go_only_to_clients_whose_filters_match(embedded_broker):
    port, _ = embedded_broker
    watcher = Client(port, "retained-watcher", ["lam/#"], persistent=False)
    assert watcher.problem() == ""
    watcher.publish("lam/agents/retained-agent/status", b'{"online": true}', retain=True)
    # Anything sent at connect time arrives before the SUBACK.
    sender = Client(port, "retained-sender", ["lam/replies/retained-sender"], persistent=False)
    interested = Client(port, "retained-interested", ["lam/agents/+/status"], persistent=False)
    try:
        assert sender.problem() == interested.problem() == ""
        wait_until(lambda: interested.received == [b'{"online": true}'], what="the retained status")
        assert sender.received == []
    finally:
        for client in (watcher, sender, interested):
            client.close()


def test_websocket_listener_and_password_file(tmp_path):
    """MQTT over websockets reaches TCP clients; with a password file only its users get in."""
    import queue

    from lamcontrol.bus import BrokerSettings, Bus, BusError

    passwords = tmp_path / "passwd"
    added = subprocess.run([sys.executable, "-m", "lamcontrol.broker.main", "adduser", str(passwords), "agent-a"],
                           input="s3cret\n", capture_output=True, text=True, timeout=30)
    assert added.returncode == 0 and "s3cret" not in passwords.read_text()
    port, ws_port = free_port(), free_port()
    broker = Process("lam-broker-ws", [sys.executable, "-m", "lamcontrol.broker.main", "--listen", f"127.0.0.1:{port}",
                                       "--websocket", f"127.0.0.1:{ws_port}", "--password-file", str(passwords)],
                     tmp_path)
    wait_for_port(port)
    wait_for_port(ws_port)
    received: queue.Queue = queue.Queue()
    listener = Bus(BrokerSettings(url=f"ws://agent-a:s3cret@127.0.0.1:{ws_port}"), component="ws")
    listener.on("lam/hello", lambda topic, payload: received.put(payload))
    sender = Bus(BrokerSettings(url=f"mqtt://agent-a:s3cret@127.0.0.1:{port}"), component="tcp")
    try:
        listener.start(timeout=10)
        sender.start(timeout=10)
        sender.publish_raw("lam/hello", b"over websockets").wait_for_publish(10)
        assert received.get(timeout=10) == b"over websockets"
        with pytest.raises(BusError, match="refused"):
            Bus(BrokerSettings(url=f"mqtt://agent-a:wrong@127.0.0.1:{port}"), component="intruder").start(timeout=5)
    finally:
        listener.stop()
        sender.stop()
        broker.stop()


def add_user(passwords, user: str, password: str) -> None:
    added = subprocess.run([sys.executable, "-m", "lamcontrol.broker.main", "adduser", str(passwords), user],
                           input=password + "\n", capture_output=True, text=True, timeout=30)
    assert added.returncode == 0, added.stderr


def test_a_login_cannot_take_over_another_users_session(tmp_path):
    """Client ids are bound to logins: another user, or a wrong password, presenting the
    coordinator's client id neither disconnects it nor takes its queued messages."""
    passwords = tmp_path / "passwd"
    for user in ("coordinator", "desk"):
        add_user(passwords, user, f"{user}-secret")
    port = free_port()
    broker = Process("lam-broker-ids", [sys.executable, "-m", "lamcontrol.broker.main", "--listen",
                                        f"127.0.0.1:{port}", "--password-file", str(passwords)], tmp_path)
    wait_for_port(port)
    coordinator = Client(port, "lam-coordinator", ["lam/prompts"], login=("coordinator", "coordinator-secret"))
    assert coordinator.problem() == ""
    intruders = [Client(port, "lam-coordinator", ["lam/prompts"], login=login)
                 for login in (("desk", "desk-secret"), ("coordinator", "wrong"), ("desk", "wrong"))]
    # The second coordinator client of the same user under another id lives alongside the first.
    publisher = Client(port, "lam-cli-1", [], persistent=False, login=("coordinator", "coordinator-secret"))
    try:
        assert intruders[0].problem() == ""  # desk gets in, in a session of its own
        wait_until(lambda: all(i.refused.is_set() for i in intruders[1:]), 15, "the wrong passwords refused")
        publisher.publish("lam/prompts", b"still mine")
        wait_until(lambda: coordinator.received == [b"still mine"], 15, "the prompt at the coordinator")
        assert not coordinator.dropped.is_set()
        wait_until(lambda: intruders[0].received == [b"still mine"], 15, "desk's own subscription")
    finally:
        for client in (publisher, coordinator, *intruders):
            client.close()
        broker.stop()
    assert "Unhandled exception" not in broker.log()


def stalled_broker(tmp_path, name: str, *clients: str) -> tuple[int, Process, list[Client]]:
    """A ``lam-broker`` with persistent subscribers named ``clients`` (in that order), then a
    subscriber that stopped reading with its socket full, and the client that filled it: the
    broker cannot flush that socket, so stopping its connection takes a while."""
    port = free_port()
    broker = Process(name, [sys.executable, "-m", "lamcontrol.broker.main", "--listen", f"127.0.0.1:{port}",
                            "--stop-timeout", "3"], tmp_path)
    wait_for_port(port)
    subscribers = [Client(port, client_id, ["lam/replies/#"]) for client_id in clients]
    stuck = Client(port, "stuck-reader", ["lam/flood"], persistent=False)
    for client in (*subscribers, stuck):
        assert client.problem() == ""
    stuck.client.loop_stop()  # the socket stays open; nobody reads it any more
    flooder = Client(port, "flooder", [], persistent=False)
    for _ in range(400):
        flooder.client.publish("lam/flood", b"z" * 60_000, qos=0)
    wait_until(lambda: not flooder.client.want_write(), 30, "the flood sent")
    time.sleep(1)  # let the broker fill the stuck reader's socket
    return port, broker, [*subscribers, stuck, flooder]


def stop_all(broker: Process, clients: list[Client]) -> None:
    for client in clients:
        client.close(abrupt=client.client_id == "stuck-reader")
    broker.stop()


def test_sigterm_ends_the_broker_while_a_client_has_stopped_reading(tmp_path):
    """A subscriber that stops reading (frozen, or cut off without a FIN) leaves the broker
    waiting to flush its socket for ever; SIGTERM must still end ``lam-broker``."""
    _, broker, clients = stalled_broker(tmp_path, "lam-broker-stuck")
    try:
        broker.signal(signal.SIGTERM)
        try:
            code = broker.popen.wait(3 + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"lam-broker ignored SIGTERM\n{broker.log()[-2000:]}")
        assert code in (0, 1), broker.log()
    finally:
        stop_all(broker, clients)


def test_a_stopping_broker_takes_no_new_connection(tmp_path):
    """Once SIGTERM has made the broker drop its clients, a client that reconnects at once (a
    coordinator sending its unacknowledged replies again) must be refused: a broker on its way
    out would acknowledge those messages and then drop them, and the sender would forget them."""
    port, broker, clients = stalled_broker(tmp_path, "lam-broker-stopping", "asker")
    asker = clients[0]
    try:
        broker.signal(signal.SIGTERM)
        assert asker.dropped.wait(15), "SIGTERM did not end the asker's connection"
        late = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="coordinator-back", clean_session=False)
        late.username_pw_set("coordinator-back")
        with pytest.raises(ConnectionRefusedError):
            late.connect("127.0.0.1", port, keepalive=30)
            late.loop_start()
            sent = late.publish("lam/replies/p1", b"{}", qos=1)
            sent.wait_for_publish(10)
            late.loop_stop()
            pytest.fail(f"the stopping broker took a connection (message acknowledged: {sent.is_published()})")
    finally:
        stop_all(broker, clients)


def test_garbage_instead_of_connect_is_refused(embedded_broker):
    """Bytes that are no MQTT CONNECT end that connection only; the broker serves on."""
    port, process = embedded_broker
    for junk in (b"\x00" * 10, b"\x10\xff\xff\xff\xff\x7f", b"GET / HTTP/1.1\r\n\r\n", b"\x10\x02\x00",
                 bytes(range(256))):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1024) in (b"", b"\x20\x02\x00\x01")  # closed, or CONNACK "unacceptable protocol"
    client = Client(port, "after-the-junk", ["lam/x"], persistent=False)
    try:
        assert client.problem() == ""
    finally:
        client.close()
    assert "Unhandled exception" not in process.log()


def configured_broker(tmp_path, name: str, config: str) -> tuple[int, Process]:
    """A ``lam-broker`` process reading ``config`` (TOML), on a free port: (port, process)."""
    path = tmp_path / "lam.toml"
    path.write_text(config)
    port = free_port()
    broker = Process(f"lam-broker-{name}", [sys.executable, "-m", "lamcontrol.broker.main", "--config", str(path),
                                           "--listen", f"127.0.0.1:{port}"], tmp_path)
    wait_for_port(port)
    return port, broker


def test_a_subscriber_that_stops_reading_costs_only_itself(tmp_path):
    """A subscriber to everything that stops reading: the others get every message; the broker holds
    at most its queue for it, dropping QoS 0 messages first, and says so once."""
    port, broker = configured_broker(tmp_path, "slow", "[embedded_broker]\nmax_queued_messages = 300\n"
                                                      "max_inflight_messages = 20\n")
    stalled = StalledSubscriber(port, "stalled", "#")
    reader = Client(port, "reader", ["load/#"])
    publisher = Client(port, "publisher", [], persistent=False)
    try:
        assert reader.problem() == ""
        sent = []
        for n in range(2200):
            qos = 1 if n % 11 == 0 else 0  # 200 at QoS 1, 2000 at QoS 0
            payload = f"{n:05d}".encode() + b"x" * 16_000
            sent.append(publisher.client.publish(f"load/{qos}", payload, qos=qos))
        for info in sent:
            info.wait_for_publish(60)
        wait_until(lambda: len(reader.received) == 2200, 60, lambda: f"every message at the reader "
                                                                  f"({len(reader.received)} of 2200)")
        assert sorted(p[:5] for p in reader.received) == [f"{n:05d}".encode() for n in range(2200)]
        got = stalled.read_all()
        qos1 = {payload[:5] for qos, payload in got if qos == 1}
        qos0 = {payload[:5] for qos, payload in got if qos == 0}
        assert qos1 == {f"{n:05d}".encode() for n in range(0, 2200, 11)}  # every QoS 1 message
        assert 0 < len(qos0) < 1000, len(qos0)  # QoS 0 ones beyond its queue were dropped
    finally:
        stalled.close()
        for client in (reader, publisher):
            client.close()
        broker.stop()
    log = broker.log()
    assert log.count("does not keep up") == 1 and "anonymous:stalled" in log, log[-3000:]
    assert "Task failed" not in log and "Unhandled exception" not in log


def test_no_task_prompt_or_result_is_kept_retained_and_queued_messages_are_not_retained(tmp_path):
    """Under the configured prefix, a retained task, prompt or result is delivered but not kept (it
    would run again for every new subscriber); what waited for a persistent session comes with the
    retain flag cleared, as MQTT requires (agents ignore retained tasks)."""
    port, broker = configured_broker(tmp_path, "retain", '[broker]\nprefix = "home/lam"\n')
    live = Client(port, "live", ["home/lam/#"], persistent=False)
    agent = Client(port, "lam-agent-a1", ["home/lam/tasks/echo"])
    publisher = Client(port, "publisher", [], persistent=False)
    try:
        assert live.problem() == agent.problem() == ""
        agent.close()
        kept = {"home/lam/agents/a1/status": b"online", "home/lam/agents/a1/spec": b"{}"}
        forgotten = {"home/lam/tasks/echo": b"task", "home/lam/prompts": b"prompt",
                     "home/lam/agents/a1/results/t1": b"result", "home/lam/errors": b"error"}
        for topic, payload in {**forgotten, **kept}.items():
            publisher.publish(topic, payload, retain=True)
        wait_until(lambda: len(live.messages) == 6, 15, "every message delivered live")
        late = Client(port, "late", ["home/lam/#", "marker"], persistent=False)
        assert late.problem() == ""
        publisher.publish("marker", b"m")
        wait_until(lambda: late.received[-1:] == [b"m"], 15, "the marker")
        assert {(t, p) for t, p, retained in late.messages if retained} == set(kept.items())
        late.close()
        back = Client(port, "lam-agent-a1", [])  # the agent, back: its session kept the task sent meanwhile
        wait_until(lambda: back.messages, 15, "the task queued for the agent")
        assert back.messages == [("home/lam/tasks/echo", b"task", False)]
        back.close()
    finally:
        for client in (live, publisher):
            client.close()
        broker.stop()
    assert "published a retained Task on home/lam/tasks/echo: delivered, not kept" in broker.log()
def test_sessions_of_clients_that_left_are_dropped_and_kept_ones_stay():
    """lam-broker looks for ended sessions when a client leaves (not every second, as aMQTT does): a
    clean session goes as soon as its client does, a persistent one stays for its client's return."""
    from lamcontrol.broker.main import Listeners
    from lamcontrol.broker.server import EmbeddedBroker

    port, running, stop = free_port(), queue.SimpleQueue(), threading.Event()

    async def serve() -> None:
        broker = EmbeddedBroker(Listeners(listen=f"127.0.0.1:{port}").amqtt_config())
        await broker.start()
        running.put(broker)
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await broker.shutdown()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    broker = running.get(timeout=30)
    try:
        clients = [Client(port, f"leaver-{persistent}", ["lam/x"], persistent) for persistent in (True, False)]
        assert [client.problem() for client in clients] == ["", ""]
        for client in clients:
            client.close()
        wait_until(lambda: not any(key.endswith(":leaver-False") for key in list(broker._sessions)), 10,
                   "the clean session dropped")
        kept = [key for key in list(broker._sessions) if key.endswith(":leaver-True")]
        assert kept and broker._sessions[kept[0]][0].transitions.state == "disconnected"
    finally:
        stop.set()
        thread.join(15)
