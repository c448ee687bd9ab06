"""The R1 gateway: a client speaking the R1's side of the OpenClaw frames, against the real gateway,
a real broker, coordinator and echo agent."""

from __future__ import annotations

import argparse
import json
import logging
import re
import ssl
import uuid
from pathlib import Path

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from lamcontrol.bus import BrokerSettings
from lamcontrol import config as lamconfig
from lamcontrol.config import ConfigError
from lamcontrol.protocol import Prompt
from lamcontrol.r1_bridge import devices
from lamcontrol.r1_bridge.devices import DeviceStore
from lamcontrol.r1_bridge.main import BridgeService
from lamcontrol.r1_bridge.openclaw import BROKER_AWAY_SENTENCE, Gateway, GatewaySettings, voice_source
from lamcontrol.r1_bridge.pairing import pairing_payload, qr_svg
from lamcontrol.r1_bridge.relay import Relay

from bridgekit import PASSWORD, csrf_from, logged_in, self_signed_certificate
from helpers import wait_until
from stubs.groq_server import GroqStub

ONE_BROKER = pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)  # pairing runs on both


class R1:
    """The R1's side of the gateway protocol."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ws = connect(url, open_timeout=10, ssl=ssl_context)
        self.events: list[dict] = []
        self.challenge = self.receive()

    def receive(self, timeout: float = 30) -> dict:
        return json.loads(self.ws.recv(timeout))

    def send_raw(self, data: str | bytes) -> dict:
        """Send anything; the next response frame."""
        self.ws.send(data)
        return self.next_response()

    def next_response(self) -> dict:
        while True:
            frame = self.receive()
            if frame["type"] == "res":
                return frame
            self.events.append(frame)

    def request(self, method: str, params: dict | None = None) -> dict:
        request_id = uuid.uuid4().hex
        frame = {"type": "req", "id": request_id, "method": method, "params": params or {}}
        response = self.send_raw(json.dumps(frame))
        assert response["id"] == request_id
        return response

    def hello(self, token: str, device_id: str = "r1-kitchen", **auth: str) -> dict:
        return self.request("connect", {
            "minProtocol": 3, "maxProtocol": 3, "role": "operator", "scopes": ["operator.read", "operator.write"],
            "auth": {"token": token, **auth}, "device": {"id": device_id, "publicKey": "cHVibGlj"},
            "client": {"displayName": "Kitchen R1", "platform": "android", "deviceFamily": "rabbit-r1"}})

    def final(self, run_id: str) -> dict:
        """The final chat event of a run."""
        while True:
            found = next((e for e in self.events if e.get("event") == "chat" and e["payload"]["runId"] == run_id), None)
            if found:
                self.events.remove(found)
                return found["payload"]
            self.events.append(self.receive())

    def say(self, text: str, key: str | None = None) -> tuple[str, str]:
        """Push-to-talk: the run id and the sentence the R1 would speak."""
        ack = self.request("chat.send", {"sessionKey": "main", "message": text,
                                         "idempotencyKey": key or uuid.uuid4().hex})
        assert ack["ok"] and ack["payload"]["status"] == "started", ack
        payload = self.final(ack["payload"]["runId"])
        assert payload["state"] == "final" and payload["sessionKey"] == "main"
        assert payload["message"]["role"] == "assistant"
        return ack["payload"]["runId"], payload["message"]["content"][0]["text"]

    def closed_with(self) -> int:
        with pytest.raises(ConnectionClosed):
            while True:
                self.receive(timeout=10)
        return self.ws.close_code

    def close(self) -> None:
        self.ws.close()


class System:
    """Coordinator, echo agent, a relay and the gateway, with a paired-device file of its own."""

    def __init__(self, lam, state: Path) -> None:
        self.lam = lam
        lam.coordinator()
        lam.agent("a1")
        self.relay = Relay(lam.settings)
        self.relay.start(timeout=10)
        self.store = DeviceStore(state / devices.FILE_NAME)
        self.gateway = self.start_gateway()
        self.clients: list[R1] = []

    def start_gateway(self) -> Gateway:
        gateway = Gateway(self.relay, self.store, GatewaySettings(host="127.0.0.1", port=0, reply_timeout=30))
        gateway.start()
        return gateway

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}/"

    def r1(self) -> R1:
        client = R1(self.url)
        self.clients.append(client)
        return client

    def paired(self, device_id: str = "r1-kitchen") -> tuple[R1, str]:
        client = self.r1()
        hello = client.hello(self.store.pairing_token(), device_id)
        assert hello["ok"], hello
        return client, hello["payload"]["auth"]["deviceToken"]

    def prompts(self, text: str) -> list[Prompt]:
        return [p for p in self.lam.recorder.parsed(Prompt, self.lam.topics.prompts) if p.prompt == text]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.gateway.stop()
        self.relay.stop()


@pytest.fixture
def system(lam, tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_STATE_DIR", str(tmp_path))  # where `lam-bridge devices` looks
    running = System(lam, tmp_path)
    yield running
    running.close()


def devices_cli(*argv: str) -> int:
    """``lam-bridge devices ...``, parsed the way the bridge's command line adds it."""
    parser = argparse.ArgumentParser(prog="lam-bridge")
    devices.add_commands(parser.add_subparsers(dest="command"))
    return devices.run_command(parser.parse_args(["devices", *argv]), {})


def test_pairing_prompt_and_reconnect(system, capsys):
    r1 = system.r1()
    assert r1.challenge["type"] == "event" and r1.challenge["event"] == "connect.challenge"
    assert r1.challenge["payload"]["nonce"] and r1.challenge["payload"]["ts"] > 0
    pairing_token = system.store.pairing_token()
    hello = r1.hello(pairing_token)
    assert hello["ok"] and hello["payload"]["type"] == "hello-ok" and hello["payload"]["protocol"] == 3
    assert hello["payload"]["policy"]["tickIntervalMs"] > 0
    device_token = hello["payload"]["auth"]["deviceToken"]
    assert device_token and device_token != pairing_token and hello["payload"]["auth"]["role"] == "operator"

    run_id, spoken = r1.say("echo hello")
    assert spoken == "hello"
    [prompt] = system.prompts("echo hello")
    assert prompt.source == voice_source("r1-kitchen") == "r1-voice:r1-kitchen"
    reply = system.lam.reply_to(prompt)
    assert reply.status == "succeeded" and reply.response == spoken

    # Only a hash of the device token is kept, and it survives a restart of the gateway.
    assert device_token not in system.store.path.read_text()
    system.gateway.stop()
    system.gateway = system.start_gateway()
    again = system.r1()
    hello = again.hello(device_token)
    assert hello["ok"] and hello["payload"]["auth"]["deviceToken"] == device_token
    assert again.say("echo welcome back")[1] == "welcome back"

    assert devices_cli("list") == 0
    listing = capsys.readouterr().out
    assert "r1-kitchen" in listing and "Kitchen R1" in listing and "active" in listing


def test_long_device_ids_make_sources_within_the_limit():
    source = voice_source("d" * 128)
    assert source.startswith("r1-voice:") and len(source) == 64


@ONE_BROKER
def test_confirmation_round_trip(system):
    r1, _ = system.paired()
    _, question = r1.say("computer power shutdown")
    [asked] = system.prompts("computer power shutdown")
    assert system.lam.reply_to(asked).status == "needs_confirmation"
    assert "sure" in question and "computer power shutdown" in question

    _, answer = r1.say("yes")
    [confirmed] = system.prompts("yes")
    assert confirmed.source == asked.source
    reply = system.lam.reply_to(confirmed)
    # The confirmation went through; with no computer agent the command cannot run.
    assert reply.status == "failed" and answer == reply.response
    assert "computer" in answer.lower()


@ONE_BROKER
def test_prompt_that_is_not_a_command_without_an_ai_agent(system):
    r1, _ = system.paired()
    _, spoken = r1.say("what a lovely morning")
    [prompt] = system.prompts("what a lovely morning")
    reply = system.lam.reply_to(prompt)
    assert reply.status == "ignored" and spoken == reply.response and spoken
    assert not [p for p in system.lam.recorder.parsed(Prompt, system.lam.topics.prompts) if p.prompt.startswith("ai ")]
    _, spoken = r1.say("   ")
    assert "did not catch" in spoken


@ONE_BROKER
def test_prompt_that_is_not_a_command_goes_to_the_ai(system):
    with GroqStub("It is indeed; enjoy it.") as groq:
        system.lam.agent("brain", "ai", extra_config=f'[capabilities.ai]\napi_key = "k"\nbase_url = "{groq.url}"\n')
        wait_until(lambda: any(a.offers("ai", "ask") for a in system.relay.online_agents()), what="the ai agent")
        r1, _ = system.paired()
        _, spoken = r1.say("what a lovely morning")
        assert spoken == "It is indeed; enjoy it."
        assert system.lam.reply_to(system.prompts("what a lovely morning")[0]).status == "ignored"
        [asked] = system.prompts("ai what a lovely morning")
        assert asked.source == "r1-voice:r1-kitchen"
        assert groq.calls[-1]["messages"][-1]["content"] == "what a lovely morning"
        # A command is still a command, and "no" after a question is an answer, not a question for the ai.
        assert r1.say("echo plain")[1] == "plain"
        assert "sure" in r1.say("computer power restart")[1]
        assert r1.say("no")[1] == "Cancelled."
        assert not system.prompts("ai no") and not system.prompts("ai echo plain")
        assert len(groq.calls) == 1


@ONE_BROKER
def test_retried_chat_send_runs_once(system):
    r1, device_token = system.paired()
    key = uuid.uuid4().hex
    first_run, first = r1.say("echo only once", key)
    # The R1 lost the answer, reconnected and sent the same utterance again.
    r1.close()
    retry = system.r1()
    assert retry.hello("", deviceToken=device_token)["ok"]  # the device token may come in either field
    second_run, second = retry.say("echo only once", key)
    assert (second_run, second) == (first_run, first) == (first_run, "only once")
    # A later prompt from the same bridge reaches the bus after any duplicate would have.
    assert retry.say("echo barrier")[1] == "barrier"
    system.lam.reply_to(system.prompts("echo barrier")[0])
    assert len(system.prompts("echo only once")) == 1
    # A new key is a new utterance.
    third_run, _ = retry.say("echo only once", uuid.uuid4().hex)
    assert third_run != first_run
    wait_until(lambda: len(system.prompts("echo only once")) == 2, what="the second prompt")


@ONE_BROKER
def test_bad_token_is_refused_and_logged(system, caplog):
    caplog.set_level(logging.WARNING, logger="lamcontrol.r1_bridge.openclaw")
    r1 = system.r1()
    wrong = "not-the-token-" + uuid.uuid4().hex
    refused = r1.hello(wrong)
    assert refused["ok"] is False and refused["error"]["code"] == "UNAUTHORIZED"
    assert r1.closed_with() == 1008
    assert "r1-kitchen" in caplog.text and "refused" in caplog.text and wrong not in caplog.text

    # Nothing may run before connect either.
    early = system.r1()
    response = early.request("chat.send", {"sessionKey": "main", "message": "computer power shutdown",
                                           "idempotencyKey": "k1"})
    assert response["ok"] is False and response["error"]["code"] == "UNAUTHORIZED"
    assert early.closed_with() == 1008
    assert not system.prompts("computer power shutdown")
    assert system.store.devices() == []


@ONE_BROKER
def test_revoked_device_is_refused(system, capsys):
    r1, device_token = system.paired()
    old_pairing_token = system.store.pairing_token()
    other, other_token = system.paired("r1-office")
    assert r1.say("echo before")[1] == "before"

    assert devices_cli("revoke", "r1-kitchen") == 0
    assert devices_cli("revoke", "r1-kitchen") == 1
    assert devices_cli("revoke", "no-such-r1") == 1
    capsys.readouterr()
    devices_cli("list")
    listing = capsys.readouterr().out
    assert "revoked" in listing and "r1-office" in listing

    # The live connection is refused at its next request; so is every way back in.
    response = r1.request("chat.send", {"sessionKey": "main", "message": "echo after", "idempotencyKey": "k2"})
    assert response["ok"] is False and response["error"]["code"] == "UNAUTHORIZED"
    assert r1.closed_with() == 1008
    for token in (device_token, old_pairing_token, other_token):
        again = system.r1()
        assert again.hello(token)["error"]["code"] == "UNAUTHORIZED"
        assert again.closed_with() == 1008
    assert not system.prompts("echo after")

    # The other R1 keeps working; a new pairing code pairs the revoked one again.
    assert other.say("echo still here")[1] == "still here"
    assert system.store.pairing_token() != old_pairing_token
    back = system.r1()
    assert back.hello(system.store.pairing_token())["ok"]


@ONE_BROKER
def test_garbage_frames_get_error_frames(system):
    r1 = system.r1()
    assert r1.send_raw("hello?")["error"]["code"] == "INVALID_REQUEST"  # before connect: still open
    assert r1.hello(system.store.pairing_token())["ok"]
    garbage = [
        ("not json at all", None),
        (b"\x00\x01binary", None),
        ("[1, 2, 3]", None),
        ('"just a string"', None),
        ('{"type": "event", "event": "chat", "id": "e1"}', "e1"),
        ('{"type": "res", "id": "r1", "ok": true}', "r1"),
        ('{"type": "req", "id": "m1"}', "m1"),
        ('{"type": "req", "method": "health"}', None),
        ('{"type": "req", "id": "p1", "method": "health", "params": [1]}', "p1"),
        ('{"type": "req", "id": "c1", "method": "chat.send", "params": {"message": 42}}', "c1"),
        ('{"type": "req", "id": "c2", "method": "chat.send", "params": {}}', "c2"),
        ('{"type": "req", "id": "c3", "method": "chat.send", "params": {"message": "hi", "idempotencyKey": ""}}', "c3"),
        ('{"type": "req", "id": "h1", "method": "connect", "params": {"auth": "nope"}}', "h1"),
        ('{"type": "req", "id": "h2", "method": "connect", "params": {"auth": {"token": "x"}}}', "h2"),
    ]
    for raw, request_id in garbage:
        response = r1.send_raw(raw)
        assert response["ok"] is False and response["error"]["code"] == "INVALID_REQUEST", raw
        assert response["id"] == request_id and response["error"]["message"]

    # Still connected and answering.
    mismatch = r1.request("connect", {"minProtocol": 4, "maxProtocol": 5, "auth": {"token": "x"},
                                      "device": {"id": "r1-kitchen"}})
    assert mismatch["ok"] is False and mismatch["error"]["code"] == "PROTOCOL_MISMATCH"
    assert r1.send_raw('{"type": "req", "id": "n1", "method": "health", "params": null}')["ok"] is True
    unknown = r1.request("node.list", {"anything": 1})
    assert unknown["ok"] is True
    health = r1.request("health")["payload"]
    assert health["ok"] is True and health["coordinator"] == "online" and "a1" in health["agents"]
    presence = r1.request("system-presence")["payload"]["entries"]
    assert [entry["deviceId"] for entry in presence] == ["r1-kitchen"]
    tools = [tool["name"] for tool in r1.request("tools.catalog")["payload"]["tools"]]
    assert "echo say" in tools
    assert r1.say("echo still fine")[1] == "still fine"
    history = r1.request("chat.history", {"sessionKey": "main", "limit": 2})["payload"]["messages"]
    assert [(m["role"], m["content"][0]["text"]) for m in history] == [("user", "echo still fine"),
                                                                      ("assistant", "still fine")]
    assert not system.prompts("hi")

    flood = system.r1()
    flood.ws.send("x" * 70_000)
    assert flood.closed_with() == 1009  # frames over 64 KiB close the connection (message too big)
    assert r1.request("health")["ok"] is True


def test_pairing_code(tmp_path):
    store = DeviceStore(tmp_path / "devices.json")
    payload = pairing_payload(store.pairing_token(), 18789, tls=True, ips=["192.168.1.20"])
    assert payload == {"type": "clawdbot-gateway", "version": 1, "ips": ["192.168.1.20"], "port": 18789,
                       "token": store.pairing_token(), "protocol": "wss"}
    gateway = Gateway(relay=None, store=store, settings=GatewaySettings(host="127.0.0.1", port=0))
    plain = gateway.pairing_payload()
    assert plain["protocol"] == "ws" and plain["port"] == gateway.port and plain["token"] == store.pairing_token()
    assert all(not ip.startswith("127.") for ip in plain["ips"])
    svg = qr_svg(plain)
    assert svg.startswith("<svg") and "<path" in svg
    gateway.stop()
    assert (store.path.stat().st_mode & 0o777) == 0o600
    store.rotate_pairing_token()
    assert store.pairing_token() != payload["token"]
    assert qr_svg(payload) != qr_svg({**payload, "token": store.pairing_token()})


@pytest.mark.parametrize("section, problem", [
    ({"port": "18789"}, "port"),
    ({"port": 70000}, "port"),
    ({"cert_file": "/c.pem"}, "both"),
    ({"advertise": "10.0.0.2"}, "advertise"),
    ({"reply_timeout": 0}, "reply_timeout"),
    ({"enabled": "yes"}, "enabled"),
    ({"listen": "0.0.0.0:18789"}, "unknown settings: listen"),
])
def test_bad_gateway_settings(section, problem):
    with pytest.raises(ConfigError, match=problem):
        GatewaySettings.from_config({"openclaw": section})


@ONE_BROKER
def test_wss_with_a_certificate(system, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    config = {"openclaw": {"host": "127.0.0.1", "port": 0}, "bridge": {"cert_file": cert, "key_file": key}}
    secure = Gateway.from_config(system.relay, config, system.store)
    secure.start()
    try:
        assert secure.pairing_payload()["protocol"] == "wss"
        trusted = ssl.create_default_context(cafile=cert)
        r1 = R1(f"wss://127.0.0.1:{secure.port}/", trusted)
        assert r1.hello(system.store.pairing_token())["ok"]
        assert r1.say("echo over tls")[1] == "over tls"
        r1.close()
    finally:
        secure.stop()


@ONE_BROKER
def test_port_in_use_is_a_clear_error(system, caplog):
    port = system.gateway.port
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
        Gateway(system.relay, system.store, GatewaySettings(host="127.0.0.1", port=port))
    # Where the bridge starts it, the HTTP side goes on without it, and the log says why.
    config = {"openclaw": {"host": "127.0.0.1", "port": port}}
    assert Gateway.from_config(system.relay, config, system.store) is None
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text and "[openclaw] port" in caplog.text


def test_disabled_gateway_does_not_start(tmp_path):
    store = DeviceStore(tmp_path / "d.json")
    assert Gateway.from_config(relay=None, config={"openclaw": {"enabled": False}}, store=store) is None


def test_without_the_broker_the_r1_hears_why(tmp_path):
    """A relay that never reached its broker: the gateway still answers, with a sentence saying so."""
    relay = Relay(BrokerSettings(url="mqtt://127.0.0.1:9", prefix="unreached"))  # never started
    store = DeviceStore(tmp_path / "d.json")
    gateway = Gateway.from_config(relay, {"openclaw": {"host": "127.0.0.1", "port": 0}}, store)
    gateway.start()
    try:
        r1 = R1(f"ws://127.0.0.1:{gateway.port}/")
        assert r1.hello(store.pairing_token())["ok"]
        assert r1.say("echo anyone there")[1] == BROKER_AWAY_SENTENCE
        r1.close()
    finally:
        gateway.stop()


def test_missing_certificate_is_a_clear_error(tmp_path):
    config = {"openclaw": {"port": 0, "cert_file": str(tmp_path / "none.pem"), "key_file": str(tmp_path / "k.pem")}}
    with pytest.raises(ConfigError, match="cannot load the R1 gateway certificate"):
        Gateway.from_config(relay=None, config=config, store=DeviceStore(tmp_path / "d.json"))


@ONE_BROKER
def test_the_bridge_serves_the_r1_gateway(lam, tmp_path, monkeypatch):
    """``lam-bridge`` listens for the R1 beside its HTTP server, as ``[openclaw]`` says."""
    monkeypatch.setenv("LAM_STATE_DIR", str(tmp_path))
    lam.coordinator()
    lam.agent("a1")
    cfg = lamconfig.load(str(lam.config("bridge", '[openclaw]\nhost = "127.0.0.1"\nport = 0\n')))
    cfg["bridge"]["listen"] = "127.0.0.1:0"
    service = BridgeService(cfg)
    service.start()
    try:
        wait_until(service.ready, what="the bridge on the broker")
        r1 = R1(f"ws://127.0.0.1:{service.gateway.port}/")
        assert r1.hello(DeviceStore().pairing_token())["ok"]
        assert r1.say("echo through the bridge")[1] == "through the bridge"
        r1.close()
    finally:
        service.stop()
    assert [d.id for d in DeviceStore().devices()] == ["r1-kitchen"]


@ONE_BROKER
def test_pair_page_shows_the_code_makes_new_ones_and_revokes(lam, tmp_path, monkeypatch):
    """``/r1/pair``: the admin sees the pairing QR and the paired R1s, makes a new code, revokes an R1."""
    monkeypatch.setenv("LAM_STATE_DIR", str(tmp_path))
    cfg = lamconfig.load(str(lam.config("bridge", '[openclaw]\nhost = "127.0.0.1"\nport = 0\n')))
    cfg["bridge"]["listen"] = "127.0.0.1:0"
    service = BridgeService(cfg)
    service.bridge.admin.set(PASSWORD)
    service.start()
    try:
        page_url = f"{service.url}/r1/pair"
        stranger = requests.get(page_url, allow_redirects=False, timeout=10)
        assert stranger.status_code == 302 and stranger.headers["Location"].startswith("/login")
        store = service.gateway.store
        first_code = store.pairing_token()
        kitchen = R1(f"ws://127.0.0.1:{service.gateway.port}/")
        assert kitchen.hello(first_code)["ok"]
        kitchen.close()

        browser, _ = logged_in(service)
        page = browser.get(page_url, timeout=10).text
        payload = service.gateway.pairing_payload()
        assert payload["token"] == first_code and payload["port"] == service.gateway.port
        assert qr_svg(payload) in page and "<svg" in page
        row = re.search(r"<tr><td>r1-kitchen</td><td>Kitchen R1</td><td>active</td>.*?</tr>", page, re.S)
        assert row and 'name="revoke" value="r1-kitchen"' in row.group(0)

        rotated = browser.post(page_url, data={"csrf_token": csrf_from(page), "new_code": "1"}, timeout=10)
        assert rotated.status_code == 200 and store.pairing_token() != first_code
        assert qr_svg(service.gateway.pairing_payload()) in rotated.text and qr_svg(payload) not in rotated.text
        late = R1(f"ws://127.0.0.1:{service.gateway.port}/")
        assert not late.hello(first_code, "r1-late")["ok"]  # the old QR code no longer pairs
        late.close()

        forged = browser.post(page_url, data={"revoke": "r1-kitchen"}, timeout=10)
        assert forged.status_code == 403 and store.get("r1-kitchen").state == "active"
        revoked = browser.post(page_url, data={"csrf_token": csrf_from(page), "revoke": "r1-kitchen"}, timeout=10)
        assert revoked.status_code == 200 and store.get("r1-kitchen").state == "revoked"
        assert "<td>r1-kitchen</td>" in revoked.text and 'value="r1-kitchen"' not in revoked.text
    finally:
        service.stop()


@pytest.mark.parametrize("content", ["{not json", "[]", '{"devices": {"r1": {"colour": "red"}}}'])
def test_damaged_device_file_is_a_clear_error(tmp_path, monkeypatch, capsys, content):
    monkeypatch.setenv("LAM_STATE_DIR", str(tmp_path))
    (tmp_path / devices.FILE_NAME).write_text(content)
    assert devices_cli("list") == 1
    assert "paired devices" in capsys.readouterr().err
