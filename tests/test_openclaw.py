"""The R1 gateway: a client speaking OpenClaw's gateway protocol (3 and 4), written from its
published frame schemas, against the real gateway, a real broker, coordinator and echo agent.

The schemas below transcribe OpenClaw's TypeBox definitions (``schema/frames.ts``,
``snapshot.ts``, ``logs-chat.ts``, ``error-codes.ts``) into JSON Schema; every frame the
gateway sends is checked against them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import logging
import re
import sqlite3
import ssl
import time
import uuid
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from lamcontrol.bus import BrokerSettings
from lamcontrol import config as lamconfig
from lamcontrol.config import ConfigError
from lamcontrol.protocol import Presence, Prompt, Task
from lamcontrol.r1_bridge import devices
from lamcontrol.r1_bridge.devices import DeviceStore
from lamcontrol.r1_bridge.main import BridgeService
from lamcontrol.r1_bridge.openclaw import (BROKER_AWAY_SENTENCE, Gateway, GatewaySettings, NotJson,
                                           read_frame, voice_source)
from lamcontrol.r1_bridge.pairing import pairing_payload, qr_svg
from lamcontrol.r1_bridge.relay import Relay

from bridgekit import PASSWORD, csrf_from, logged_in, self_signed_certificate
from helpers import wait_until
from stubs.groq_server import VISION_MODELS, GroqStub

ONE_BROKER = pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)  # pairing runs on both

# -- OpenClaw's frame schemas -----------------------------------------------------------------

TEXT = {"type": "string", "minLength": 1}
COUNT = {"type": "integer", "minimum": 0}
TEXTS = {"type": "array", "items": TEXT}


def closed(properties: dict, required: tuple[str, ...] = ()) -> dict:
    """A TypeBox ``Type.Object(..., {additionalProperties: false})``; ``required`` lists the non-optional keys."""
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


ERROR_CODES = ["NOT_LINKED", "NOT_PAIRED", "AGENT_TIMEOUT", "FORBIDDEN", "INVALID_REQUEST", "UNAVAILABLE"]
ERROR_SHAPE = closed({"code": {"enum": ERROR_CODES}, "message": TEXT, "details": {}, "retryable": {"type": "boolean"},
                      "retryAfterMs": COUNT}, ("code", "message"))
RESPONSE_FRAME = closed({"type": {"const": "res"}, "id": TEXT, "ok": {"type": "boolean"}, "payload": {},
                         "error": ERROR_SHAPE}, ("type", "id", "ok"))
STATE_VERSION = closed({"presence": COUNT, "health": COUNT}, ("presence", "health"))
EVENT_FRAME = closed({"type": {"const": "event"}, "event": TEXT, "payload": {}, "seq": COUNT,
                      "stateVersion": STATE_VERSION}, ("type", "event"))
PRESENCE_ENTRY = closed({**{k: TEXT for k in ("host", "ip", "version", "platform", "deviceFamily", "modelIdentifier",
                                              "mode", "reason", "deviceId", "instanceId")},
                         "lastInputSeconds": COUNT, "tags": TEXTS, "text": {"type": "string"}, "ts": COUNT,
                         "roles": TEXTS, "scopes": TEXTS}, ("ts",))
SNAPSHOT = closed({"presence": {"type": "array", "items": PRESENCE_ENTRY}, "health": {},
                   "stateVersion": STATE_VERSION, "uptimeMs": COUNT, "configPath": TEXT, "stateDir": TEXT,
                   "sessionDefaults": closed({"defaultAgentId": TEXT, "mainKey": TEXT, "mainSessionKey": TEXT,
                                              "scope": TEXT}, ("defaultAgentId", "mainKey", "mainSessionKey")),
                   "authMode": {"enum": ["none", "token", "password", "trusted-proxy"]},
                   "updateAvailable": {"type": "object"}, "versionMismatch": {"type": "object"}},
                  ("presence", "health", "stateVersion", "uptimeMs"))
HELLO_OK = closed({
    "type": {"const": "hello-ok"}, "protocol": {"type": "integer", "minimum": 1},
    "server": closed({"version": TEXT, "connId": TEXT}, ("version", "connId")),
    "features": closed({"methods": TEXTS, "events": TEXTS}, ("methods", "events")),
    "snapshot": SNAPSHOT, "canvasHostUrl": TEXT,
    "auth": closed({"deviceToken": TEXT, "role": TEXT, "scopes": TEXTS, "issuedAtMs": COUNT},
                   ("deviceToken", "role", "scopes")),
    "policy": closed({"maxPayload": {"type": "integer", "minimum": 1}, "maxBufferedBytes": {"type": "integer", "minimum": 1},
                      "tickIntervalMs": {"type": "integer", "minimum": 1}}, ("maxPayload", "maxBufferedBytes", "tickIntervalMs")),
    "transport": {"enum": ["json-ws", "protobuf-ws"]},
}, ("type", "protocol", "server", "features", "snapshot", "policy"))
CHAT_BASE = {"runId": TEXT, "sessionKey": TEXT, "spawnedBy": TEXT, "seq": COUNT}
CHAT_EVENT = {"oneOf": [
    closed({**CHAT_BASE, "state": {"const": "delta"}, "message": {}, "deltaText": {"type": "string"},
            "replace": {"type": "boolean"}, "usage": {}}, ("runId", "sessionKey", "seq", "state", "deltaText")),
    closed({**CHAT_BASE, "state": {"const": "final"}, "message": {}, "usage": {}, "stopReason": {"type": "string"}},
           ("runId", "sessionKey", "seq", "state")),
]}


def check(schema: dict, value: object) -> None:
    Draft202012Validator(schema).validate(value)


# -- the client ------------------------------------------------------------------------------

def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class DeviceKey:
    """An OpenClaw device identity: an Ed25519 key, its id the SHA-256 of the raw public key."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.id = hashlib.sha256(self.raw).hexdigest()

    def device(self, client: dict, role: str, scopes: list[str], token: str, nonce: str,
               signed_at: int | None = None, device_id: str | None = None, version: str = "v3") -> dict:
        """``connect.params.device``: the device-auth payload (v3, or the older v2) signed for this challenge."""
        signed_at = int(time.time() * 1000) if signed_at is None else signed_at
        device_id = device_id or self.id
        fields = [version, device_id, client["id"], client["mode"], role, ",".join(scopes), str(signed_at), token, nonce]
        if version == "v3":
            fields += [client["platform"].strip().lower(), client.get("deviceFamily", "").strip().lower()]
        payload = "|".join(fields)
        return {"id": device_id, "publicKey": b64url(self.raw), "signature": b64url(self.key.sign(payload.encode())),
                "signedAt": signed_at, "nonce": nonce}


CLIENT = {"id": "rabbit-r1", "displayName": "Kitchen R1", "version": "20260901", "platform": "Android",
          "deviceFamily": "rabbit-r1", "mode": "ui"}
SCOPES = ["operator.read", "operator.write"]


class R1:
    """The client's side of the gateway protocol; every frame it receives is schema-checked."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ws = connect(url, open_timeout=10, ssl=ssl_context, max_size=None)
        self.events: list[dict] = []
        self.challenge = self.receive()

    def receive(self, timeout: float = 30) -> dict:
        frame = json.loads(self.ws.recv(timeout))
        check({"oneOf": [RESPONSE_FRAME, EVENT_FRAME]}, frame)
        if frame["type"] == "event" and frame["event"] == "chat":
            check(CHAT_EVENT, frame["payload"])
        return frame

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

    def hello(self, token: str, device_id: str = "r1-kitchen", protocols: tuple[int, int] = (3, 3),
              key: DeviceKey | None = None, role: str = "operator", **auth: str) -> dict:
        """``connect``; with ``key``, signed as OpenClaw's own clients sign it."""
        params = {"minProtocol": protocols[0], "maxProtocol": protocols[1], "client": CLIENT, "role": role,
                  "scopes": SCOPES, "auth": {"token": token, **auth}}
        if key:
            params["device"] = key.device(CLIENT, role, SCOPES, token, self.challenge["payload"]["nonce"])
        else:
            params["device"] = {"id": device_id, "publicKey": "cHVibGlj"}  # what the R1 sends: no signature
        answer = self.request("connect", params)
        if answer["ok"]:
            check(HELLO_OK, answer["payload"])
        return answer

    def chat_events(self, run_id: str) -> list[dict]:
        """The chat events of a run, through its final one."""
        found: list[dict] = []
        while not found or found[-1]["state"] != "final":
            mine = [e for e in self.events if e.get("event") == "chat" and e["payload"]["runId"] == run_id]
            for frame in mine:
                self.events.remove(frame)
                found.append(frame["payload"])
            if not found or found[-1]["state"] != "final":
                self.events.append(self.receive())
        assert [e["seq"] for e in found] == list(range(len(found)))
        return found

    def send_chat(self, text: str, key: str | None = None, status: str = "started", **params: object) -> str:
        ack = self.request("chat.send", {"sessionKey": "main", "message": text,
                                         "idempotencyKey": key or uuid.uuid4().hex, **params})
        assert ack["ok"] and ack["payload"]["status"] == status, ack
        return ack["payload"]["runId"]

    def say(self, text: str, key: str | None = None, status: str = "started", **params: object) -> tuple[str, str]:
        """Push-to-talk: the run id and the sentence the R1 would speak."""
        run_id = self.send_chat(text, key, status, **params)
        payload = self.chat_events(run_id)[-1]
        assert payload["state"] == "final" and payload["sessionKey"] == "main"
        assert payload["message"]["role"] == "assistant"
        return run_id, payload["message"]["content"][0]["text"]

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


@pytest.mark.parametrize("protocols, spoken", [((3, 3), 3), ((4, 4), 4), ((3, 4), 4), ((2, 9), 4)])
def test_protocol_versions_are_negotiated(system, protocols, spoken):
    r1 = system.r1()
    hello = r1.hello(system.store.pairing_token(), protocols=protocols)
    assert hello["ok"] and hello["payload"]["protocol"] == spoken
    assert "chat.send" in hello["payload"]["features"]["methods"] and "chat" in hello["payload"]["features"]["events"]
    assert r1.say("echo in protocol %d" % spoken)[1] == "in protocol %d" % spoken


@pytest.mark.parametrize("protocols", [(5, 6), (1, 2)])
def test_protocol_mismatch_is_answered_as_openclaw_does(system, protocols):
    r1 = system.r1()
    refused = r1.hello(system.store.pairing_token(), protocols=protocols)
    assert refused["ok"] is False and refused["error"]["code"] == "INVALID_REQUEST"
    assert refused["error"]["message"] == "protocol mismatch" and refused["error"]["details"]["expectedProtocol"] == 4
    assert r1.closed_with() == 1002
    assert system.store.devices() == []


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


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_a_frame_with_numbers_json_does_not_have_is_not_json(number):
    with pytest.raises(NotJson, match=f"{number} is not a JSON number"):
        read_frame('{"type": "req", "id": "n1", "method": "agent", "params": {"timeout": %s}}' % number)


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
def test_a_question_goes_to_the_ai_from_the_coordinator(system):
    with GroqStub("It is indeed; enjoy it.") as groq:
        system.lam.agent("brain", "ai", extra_config=f'[capabilities.ai]\napi_key = "k"\nbase_url = "{groq.url}"\n')
        wait_until(lambda: any(a.offers("ai", "ask") for a in system.relay.online_agents()), what="the ai agent")
        r1, _ = system.paired()
        _, spoken = r1.say("what a lovely morning")
        assert spoken == "It is indeed; enjoy it."
        # One prompt, as from any entry point: the coordinator made it a task for the ai.
        [prompt] = system.prompts("what a lovely morning")
        assert prompt.source == "r1-voice:r1-kitchen" and system.lam.reply_to(prompt).status == "succeeded"
        [task] = [t for t in system.lam.recorder.parsed(Task, system.lam.topics.task("ai")) if t.prompt_id == prompt.id]
        assert task.args["prompt"] == "what a lovely morning"
        assert groq.calls[-1]["messages"][-1]["content"] == "what a lovely morning"
        # A command is still a command, and "no" after a question is an answer, not a question for the ai.
        assert r1.say("echo plain")[1] == "plain"
        assert "sure" in r1.say("computer power restart")[1]
        assert r1.say("no")[1] == "Cancelled."
        assert not [p for p in system.lam.recorder.parsed(Prompt, system.lam.topics.prompts) if p.prompt.startswith("ai ")]
        assert len(groq.calls) == 1


@ONE_BROKER
def test_retried_chat_send_runs_once(system):
    r1, device_token = system.paired()
    key = uuid.uuid4().hex
    first_run, first = r1.say("echo only once", key)
    assert first_run == key  # as in OpenClaw, the run is named by its idempotency key
    # The R1 lost the answer, reconnected and sent the same utterance again: done already, it hears "ok".
    r1.close()
    retry = system.r1()
    assert retry.hello("", deviceToken=device_token)["ok"]  # the device token may come in either field
    second_run, second = retry.say("echo only once", key, status="ok")
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
    # As OpenClaw answers it: a client told NOT_PAIRED would wait for an approval that never comes.
    assert refused["ok"] is False and refused["error"]["code"] == "INVALID_REQUEST"
    assert refused["error"]["message"] == "unauthorized: gateway token mismatch (provide gateway auth token)"
    assert refused["error"]["details"]["code"] == "AUTH_TOKEN_MISMATCH"
    assert r1.closed_with() == 1008
    assert "r1-kitchen" in caplog.text and "refused" in caplog.text and wrong not in caplog.text
    tokenless = system.r1()
    refused = tokenless.hello("")
    assert refused["error"]["code"] == "INVALID_REQUEST" and refused["error"]["details"]["code"] == "AUTH_TOKEN_MISSING"
    assert tokenless.closed_with() == 1008

    # Nothing may run before connect either.
    early = system.r1()
    response = early.request("chat.send", {"sessionKey": "main", "message": "computer power shutdown",
                                           "idempotencyKey": "k1"})
    assert response["ok"] is False and response["error"]["code"] == "INVALID_REQUEST"
    assert "first request must be connect" in response["error"]["message"]
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

    # The live connection is refused at its next request; so is every way back in, as OpenClaw refuses
    # a device token that no longer holds.
    response = r1.request("chat.send", {"sessionKey": "main", "message": "echo after", "idempotencyKey": "k2"})
    assert response["ok"] is False and response["error"]["code"] == "INVALID_REQUEST"
    assert response["error"]["details"]["code"] == "AUTH_DEVICE_TOKEN_MISMATCH"
    assert r1.closed_with() == 1008
    for token in (device_token, old_pairing_token, other_token):
        again = system.r1()
        refused = again.hello(token)
        assert refused["error"]["code"] == "INVALID_REQUEST", refused
        assert refused["error"]["details"]["code"] == "AUTH_DEVICE_TOKEN_MISMATCH"
        assert again.closed_with() == 1008
    assert not system.prompts("echo after")

    # The other R1 keeps working; a new pairing code pairs the revoked one again.
    assert other.say("echo still here")[1] == "still here"
    assert system.store.pairing_token() != old_pairing_token
    back = system.r1()
    assert back.hello(system.store.pairing_token())["ok"]


@ONE_BROKER
def test_bad_frames_are_answered_as_openclaw_does(system):
    r1, _ = system.paired()
    answered = [
        '{"type": "event", "event": "chat", "id": "e1"}',
        '{"type": "res", "id": "r1", "ok": true}',
        '{"type": "req", "id": "m1"}',
        '{"type": "req", "id": "p1", "method": "health", "params": [1]}',
        '{"type": "req", "id": "c1", "method": "chat.send", "params": {"message": 42}}',
        '{"type": "req", "id": "c2", "method": "chat.send", "params": {}}',
        '{"type": "req", "id": "c3", "method": "chat.send", "params": {"message": "hi", "idempotencyKey": ""}}',
        '{"type": "req", "id": "c6", "method": "chat.send", "params": {"message": "echo \\ud800", "idempotencyKey": "s"}}',
        '{"type": "req", "id": "c4", "method": "chat.send", "params": {"message": "hi", "attachments": "x"}}',
        '{"type": "req", "id": "c5", "method": "chat.send", "params": {"message": "hi", '
        '"attachments": [{"type": "image", "mimeType": "image/jpeg", "content": "not base64!"}]}}',
        '{"type": "req", "id": "h1", "method": "connect", "params": {}}',
        '{"type": "req", "id": "u1", "method": "talk.speak", "params": {"text": "hi"}}',
    ]
    for raw in answered:
        response = r1.send_raw(raw)
        assert response["ok"] is False and response["error"]["code"] == "INVALID_REQUEST", raw
        assert response["id"] == json.loads(raw)["id"] and response["error"]["message"]
    assert response["error"]["message"] == "unknown method: talk.speak"

    # Still connected and answering.
    assert r1.send_raw('{"type": "req", "id": "n1", "method": "health", "params": null}')["ok"] is True
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

    # Once connected, as in OpenClaw: a frame that is not JSON is skipped, one without an id to answer
    # is answered with the id "invalid"; the connection stays open.
    for raw in ["not json at all", b"\x00\x01binary"]:
        r1.ws.send(raw)
    for raw in ["[1, 2, 3]", '"just a string"', '{"type": "req", "method": "health"}',
                '{"type": "req", "id": 5, "method": "health"}']:
        response = r1.send_raw(raw)
        assert response["id"] == "invalid" and response["error"]["code"] == "INVALID_REQUEST", raw
    assert r1.request("health")["ok"] is True
    # Before connect, a frame that is not JSON ends the connection normally (1000), as OpenClaw does.
    for raw in ["not json at all", b"\x00\x01binary"]:
        early = system.r1()
        early.ws.send(raw)
        assert early.closed_with() == 1000, raw
    # A handshake that fails is answered, then the connection ends.
    for params in ({"auth": "nope", "device": {"id": "r1"}}, {"auth": {"token": "x"}}, {"minProtocol": "3"}):
        stranger = system.r1()
        refused = stranger.request("connect", params)
        assert refused["error"]["code"] == "INVALID_REQUEST" and stranger.closed_with() == 1008
    # Before connect, frames are small: 64 KiB at most.
    flood = system.r1()
    flood.ws.send("x" * 70_000)
    assert flood.closed_with() == 1009
    assert r1.request("health")["ok"] is True


@ONE_BROKER
def test_signed_device_identity_is_verified_and_pinned(system):
    key = DeviceKey()
    r1 = system.r1()
    hello = r1.hello(system.store.pairing_token(), protocols=(4, 4), key=key)
    assert hello["ok"], hello
    assert system.store.get(key.id).public_key == b64url(key.raw)
    device_token = hello["payload"]["auth"]["deviceToken"]
    assert r1.say("echo signed")[1] == "signed"
    [prompt] = system.prompts("echo signed")
    assert prompt.source == voice_source(key.id)

    # Reconnecting with the device token, signed again: fine. Unsigned, or signed by another key: refused.
    again = system.r1()
    assert again.hello(device_token, protocols=(4, 4), key=key)["ok"]
    unsigned = system.r1()
    refused = unsigned.hello(device_token, key.id)
    assert refused["error"]["code"] == "NOT_PAIRED" and refused["error"]["message"] == "device identity required"
    assert refused["error"]["details"]["code"] == "DEVICE_IDENTITY_REQUIRED" and unsigned.closed_with() == 1008
    impostor = system.r1()
    params = {"minProtocol": 4, "maxProtocol": 4, "client": CLIENT, "role": "operator", "scopes": SCOPES,
              "auth": {"token": system.store.pairing_token()},
              "device": DeviceKey().device(CLIENT, "operator", SCOPES, system.store.pairing_token(),
                                           impostor.challenge["payload"]["nonce"], device_id=key.id)}
    refused = impostor.request("connect", params)
    assert refused["error"]["code"] == "INVALID_REQUEST" and "mismatch" in refused["error"]["message"]
    assert refused["error"]["details"]["code"] == "DEVICE_AUTH_DEVICE_ID_MISMATCH"
    assert impostor.closed_with() == 1008
    assert system.store.get(key.id).public_key == b64url(key.raw)


@pytest.mark.parametrize("spoil, words, code", [
    (lambda d, c: {**d, "signature": b64url(b"\0" * 64)}, "signature invalid", "DEVICE_AUTH_SIGNATURE_INVALID"),
    (lambda d, c: {**d, "nonce": "not-the-challenge"}, "nonce mismatch", "DEVICE_AUTH_NONCE_MISMATCH"),
    (lambda d, c: {**d, "nonce": ""}, "nonce required", "DEVICE_AUTH_NONCE_REQUIRED"),
    (lambda d, c: {**d, "id": "0" * 64}, "identity mismatch", "DEVICE_AUTH_DEVICE_ID_MISMATCH"),
    (lambda d, c: {**d, "publicKey": "short"}, "public key invalid", "DEVICE_AUTH_PUBLIC_KEY_INVALID"),
    (lambda d, c: d | {"signedAt": d["signedAt"] - 3_600_000}, "expired", "DEVICE_AUTH_SIGNATURE_EXPIRED"),
    (lambda d, c: d | {"signedAt": d["signedAt"] + 150_000}, "expired", "DEVICE_AUTH_SIGNATURE_EXPIRED"),  # > 2 min
    (lambda d, c: c.update(platform="ios") or d, "signature invalid", "DEVICE_AUTH_SIGNATURE_INVALID"),
])
def test_bad_device_signatures_are_refused(system, spoil, words, code):
    r1 = system.r1()
    client = dict(CLIENT)
    token = system.store.pairing_token()
    device = DeviceKey().device(client, "operator", SCOPES, token, r1.challenge["payload"]["nonce"])
    device = spoil(device, client)
    refused = r1.request("connect", {"minProtocol": 3, "maxProtocol": 4, "client": client, "role": "operator",
                                     "scopes": SCOPES, "auth": {"token": token}, "device": device})
    assert refused["ok"] is False and refused["error"]["code"] == "INVALID_REQUEST"
    assert words in refused["error"]["message"] and refused["error"]["details"]["code"] == code
    assert r1.closed_with() == 1008 and system.store.devices() == []


@pytest.mark.parametrize("version, skew_ms", [("v2", 0), ("v3", -100_000), ("v2", 100_000)])
def test_v2_and_v3_signatures_within_two_minutes_are_accepted(system, version, skew_ms):
    """OpenClaw accepts both device-auth payload versions, signed within two minutes of its clock."""
    key = DeviceKey()
    r1 = system.r1()
    token = system.store.pairing_token()
    device = key.device(CLIENT, "operator", SCOPES, token, r1.challenge["payload"]["nonce"],
                        signed_at=int(time.time() * 1000) + skew_ms, version=version)
    hello = r1.request("connect", {"minProtocol": 3, "maxProtocol": 4, "client": CLIENT, "role": "operator",
                                   "scopes": SCOPES, "auth": {"token": token}, "device": device})
    assert hello["ok"], hello
    assert system.store.get(key.id).public_key == b64url(key.raw)


@pytest.mark.parametrize("role", ["operator", "node"])
def test_hello_echoes_the_granted_role(system, role):
    hello = system.r1().hello(system.store.pairing_token(), f"r1-{role}", role=role)
    assert hello["ok"] and hello["payload"]["auth"]["role"] == role and hello["payload"]["auth"]["scopes"] == SCOPES
    signed = system.r1()
    assert signed.hello(system.store.pairing_token(), key=DeviceKey(), role=role)["payload"]["auth"]["role"] == role
    stranger = system.r1()
    refused = stranger.hello(system.store.pairing_token(), "r1-admin", role="admin")
    assert refused["error"] == {"code": "INVALID_REQUEST", "message": "invalid role"}
    assert stranger.closed_with() == 1008


@ONE_BROKER
def test_a_repeated_idempotency_key_is_in_flight_then_ok(system):
    """A chat.send repeated while its run is going is not run again: OpenClaw answers ``in_flight``."""
    r1, _ = system.paired()
    key = uuid.uuid4().hex
    assert r1.send_chat("echo sleep 2 slowly", key) == key
    assert r1.send_chat("echo sleep 2 slowly", key, status="in_flight") == key
    events = r1.chat_events(key)
    assert events[-1]["state"] == "final"
    assert r1.send_chat("echo sleep 2 slowly", key, status="ok") == key
    assert len(system.prompts("echo sleep 2 slowly")) == 1


@ONE_BROKER
def test_the_pairing_code_alone_cannot_take_over_a_paired_r1(system, capsys):
    """A second client with the R1's device id and the QR code's token is not paired in its place:
    it needs the R1's own token or key, or the owner's approval."""
    kitchen, kitchen_token = system.paired()
    thief = system.r1()
    refused = thief.hello(system.store.pairing_token(), "r1-kitchen")
    assert refused["error"]["code"] == "NOT_PAIRED" and refused["error"]["message"].startswith("pairing required")
    assert refused["error"]["details"]["code"] == "PAIRING_REQUIRED"
    assert thief.closed_with() == 1008
    # The paired R1 is unaffected, on its live connection and with its token.
    assert kitchen.say("echo still mine")[1] == "still mine"
    again = system.r1()
    assert again.hello(kitchen_token)["ok"] and again.say("echo mine again")[1] == "mine again"
    # The owner sees the request and, if it is the R1 itself (reset, its token lost), approves it.
    capsys.readouterr()
    assert devices_cli("list") == 0
    assert "lam-bridge devices approve r1-kitchen" in capsys.readouterr().out
    assert devices_cli("approve", "r1-unknown") == 1
    assert devices_cli("approve", "r1-kitchen") == 0
    reset = system.r1()
    hello = reset.hello(system.store.pairing_token(), "r1-kitchen")
    assert hello["ok"] and hello["payload"]["auth"]["deviceToken"] != kitchen_token
    assert reset.say("echo after approval")[1] == "after approval"
    stale = system.r1()
    assert stale.hello(kitchen_token)["error"]["details"]["code"] == "AUTH_DEVICE_TOKEN_MISMATCH"
    # The approval was used up: the code alone does not pair that id again.
    assert system.r1().hello(system.store.pairing_token(), "r1-kitchen")["error"]["code"] == "NOT_PAIRED"


@ONE_BROKER
def test_a_signed_r1_pairs_again_with_its_own_key(system):
    """An R1 whose key is pinned may pair again with the code (it lost its token): the key proves it."""
    key = DeviceKey()
    first = system.r1().hello(system.store.pairing_token(), key=key)
    assert first["ok"]
    again = system.r1().hello(system.store.pairing_token(), key=key)
    assert again["ok"] and again["payload"]["auth"]["deviceToken"] != first["payload"]["auth"]["deviceToken"]


@ONE_BROKER
def test_a_chain_streams_a_delta_per_command_then_the_final(system):
    r1, _ = system.paired()
    run_id = r1.send_chat("echo first && echo second && echo third")
    events = r1.chat_events(run_id)
    deltas = [e for e in events if e["state"] == "delta"]
    assert [e["deltaText"] for e in deltas] == ["first", "second", "third"]
    assert deltas[-1]["message"]["content"][0]["text"] == "first second third"
    [prompt] = system.prompts("echo first && echo second && echo third")
    final = events[-1]
    assert final["state"] == "final" and final["message"]["content"][0]["text"] == system.lam.reply_to(prompt).response
    assert [e["seq"] for e in events] == [0, 1, 2, 3]


@ONE_BROKER
def test_agents_gone_quiet_do_not_count(system):
    """A leftover presence (a crashed agent's, or a fake) neither answers health nor takes questions."""
    ghost = Presence(state="online", agent="ghost", capabilities={"ai": ["ask"]}, heartbeat=10.0, ts=time.time() - 60)
    system.lam.publish(ghost)
    wait_until(lambda: "ghost" in system.relay.agents, what="the ghost's presence")
    r1, _ = system.paired()
    assert "ghost" not in r1.request("health")["payload"]["agents"] and "ghost" not in system.relay.agents
    system.lam.publish(ghost)
    wait_until(lambda: "ghost" in system.relay.agents, what="the ghost's presence again")
    _, spoken = r1.say("what a lovely morning")  # not a command, and no live ai agent: no "ai ..." prompt
    assert spoken and not system.prompts("ai what a lovely morning")


def camera_photo(width: int = 1600, height: int = 1200) -> bytes:
    """A noisy photo, as big as a phone camera's: it does not compress well."""
    image = Image.frombytes("RGB", (width, height), bytes(random_bytes(width * height * 3)))
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=95)
    return encoded.getvalue()


def random_bytes(count: int) -> bytes:
    return hashlib.shake_256(b"photo").digest(count)


@ONE_BROKER
def test_a_photo_goes_to_the_ai_agent_and_its_vision_model(system):
    photo = camera_photo()
    assert len(photo) > 200_000  # more than the 64 KiB an unauthenticated frame may carry
    with GroqStub("It is a grey, noisy picture.") as groq:
        r1, _ = system.paired()
        attachment = {"type": "image", "mimeType": "image/jpeg", "fileName": "camera.jpg",
                      "content": base64.b64encode(photo).decode()}
        _, spoken = r1.say("what is this?", attachments=[attachment])
        assert "no agent that answers questions is online" in spoken  # no ai agent yet, says the coordinator

        system.lam.agent("brain", "ai", extra_config=f'[capabilities.ai]\napi_key = "k"\nbase_url = "{groq.url}"\n')
        wait_until(lambda: any(a.offers("ai", "ask") for a in system.relay.online_agents()), what="the ai agent")
        _, spoken = r1.say("what is this?", attachments=[attachment])
        assert spoken == "It is a grey, noisy picture."
        call = groq.calls[-1]
        assert call["model"] in VISION_MODELS and call["messages"][-1]["content"][0]["text"].rstrip("?") == "what is this"
        [sent] = groq.images()
        with Image.open(io.BytesIO(sent)) as seen:
            assert seen.format == "JPEG" and max(seen.size) <= 1024 and seen.size[0] / seen.size[1] == pytest.approx(4 / 3, 0.02)
        [prompt] = system.prompts("what is this?")[-1:]
        assert prompt.metadata.image.startswith("data:image/jpeg;base64,")
        [task] = [t for t in system.lam.recorder.parsed(Task, system.lam.topics.task("ai")) if t.prompt_id == prompt.id]
        assert task.args["image"] == prompt.metadata.image and len(task.to_json()) <= system.relay.bus.settings.max_payload
        # Once answered, the coordinator's journal no longer holds the photo.
        system.lam.reply_to(prompt)
        with sqlite3.connect(system.lam.tmp_path / "journal.db") as journal:
            [(body,)] = journal.execute("SELECT body FROM prompts WHERE id = ?", (prompt.id,)).fetchall()
        kept = json.loads(body)["metadata"]
        assert kept["device"] == "r1-kitchen" and "image" not in kept

        # A photo without a question gets the default one; an unreadable photo is said so.
        r1.say("", attachments=[attachment])
        assert groq.calls[-1]["messages"][-1]["content"][0]["text"].rstrip("?") == "What is in this photo"
        broken = {**attachment, "content": base64.b64encode(b"not a picture").decode()}
        assert r1.say("what is this?", attachments=[broken])[1] == "Sorry, I could not read that photo."
        assert len(groq.calls) == 2


def test_pairing_code(tmp_path):
    store = DeviceStore(tmp_path / "devices.json")
    payload = pairing_payload(store.pairing_token(), 18789, tls=True, ips=["192.168.1.20"])
    assert payload == {"type": "clawdbot-gateway", "version": 1, "ips": ["192.168.1.20"], "port": 18789,
                       "token": store.pairing_token(), "protocol": "wss"}
    gateway = Gateway(relay=None, store=store, settings=GatewaySettings(host="127.0.0.1", port=0))
    plain = gateway.pairing_payload()
    assert plain["protocol"] == "ws" and plain["port"] == gateway.port and plain["token"] == store.pairing_token()
    assert plain["ips"] == ["127.0.0.1"]  # where it listens: a LAN address there would be one it does not listen on
    everywhere = Gateway(relay=None, store=store, settings=GatewaySettings(host="0.0.0.0", port=0))
    assert all(not ip.startswith("127.") for ip in everywhere.pairing_payload()["ips"])  # this machine's LAN ones
    everywhere.stop()
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
        assert payload["ips"] == ["127.0.0.1"] and 'id="unreachable"' in page  # the truth, and what to change
        row = re.search(r"<tr><td>r1-kitchen</td><td>Kitchen R1</td><td>active</td>.*?</tr>", page, re.S)
        assert row and 'name="revoke" value="r1-kitchen"' in row.group(0)

        rotated = browser.post(page_url, data={"csrf_token": csrf_from(page), "new_code": "1"}, timeout=10)
        assert rotated.status_code == 200 and store.pairing_token() != first_code
        assert qr_svg(service.gateway.pairing_payload()) in rotated.text and qr_svg(payload) not in rotated.text
        late = R1(f"ws://127.0.0.1:{service.gateway.port}/")
        assert not late.hello(first_code, "r1-late")["ok"]  # the old QR code no longer pairs
        late.close()

        # Someone pairing under the kitchen R1's id waits for the admin, who sees it here.
        again = R1(f"ws://127.0.0.1:{service.gateway.port}/")
        assert again.hello(store.pairing_token())["error"]["code"] == "NOT_PAIRED"
        again.close()
        page = browser.get(page_url, timeout=10).text
        asking = re.search(r'<table id="requests">.*?</table>', page, re.S)
        assert asking and "r1-kitchen" in asking.group(0) and 'name="approve" value="r1-kitchen"' in asking.group(0)
        approved = browser.post(page_url, data={"csrf_token": csrf_from(page), "approve": "r1-kitchen"}, timeout=10)
        assert approved.status_code == 200 and store.requests()["r1-kitchen"]["approved"]

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
