"""Shared by the bridge tests: one aMQTT broker, a coordinator with an echo agent, bridges
served by waitress in this process, and responses checked against the bridge's OpenAPI."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import requests
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec

from conftest import Broker
from helpers import LamSystem
from lamcontrol import config as lamconfig
from lamcontrol.r1_bridge.devices import DeviceStore
from lamcontrol.r1_bridge.main import BridgeService

PASSWORD = "correct horse battery"
NO_VOICE_GATEWAY = "[openclaw]\nenabled = false\n"  # its own tests cover it; here it would only hold a port


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """One aMQTT broker is enough for HTTP tests (the bus itself is tested on both brokers)."""
    running = Broker("amqtt", tmp_path_factory.mktemp("amqtt"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def system(broker, tmp_path_factory):
    """A coordinator and the echo agent ``a1``, under a topic prefix of their own."""
    lam = LamSystem(broker.url, tmp_path_factory.mktemp("system"))
    lam.coordinator()
    lam.agent("a1")
    yield lam
    lam.close()


class RunningBridge:
    """A bridge on a free port, its state files in ``state``, with a token and the admin password set."""

    def __init__(self, system: LamSystem, state: Path, broker_url: str | None = None, voice: bool = False,
                 **bridge: object) -> None:
        self.state = state
        gateway = '[openclaw]\nhost = "127.0.0.1"\nport = 0\n' if voice else NO_VOICE_GATEWAY
        cfg = lamconfig.load(str(system.config(f"bridge-{state.name}", gateway)), broker_url)
        cfg["bridge"].update(listen="127.0.0.1:0", token_file=str(state / "tokens.json"),
                             admin_file=str(state / "admin.json"), secret_key_file=str(state / "secret.key"),
                             **bridge)
        self.service = BridgeService(cfg)
        if self.service.gateway:
            self.service.gateway.store = DeviceStore(state / "r1-devices.json")
        self.bridge = self.service.bridge
        self.token = self.bridge.tokens.create("test")
        self.bridge.admin.set(PASSWORD)
        self.service.start()
        self.url = self.service.url
        self.running = True

    def session(self, token: str | None = None) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token or self.token}"
        return session

    def stop(self) -> None:
        if self.running:
            self.service.stop()
            self.running = False


@pytest.fixture(scope="module")
def start_bridge(system, tmp_path_factory):
    """``start_bridge(**[bridge] settings)`` → a running bridge, stopped after the module (``voice=True``:
    with the R1 voice gateway on a free port)."""
    started: list[RunningBridge] = []

    def start(broker_url: str | None = None, voice: bool = False, **settings: object) -> RunningBridge:
        running = RunningBridge(system, tmp_path_factory.mktemp("bridge"), broker_url, voice, **settings)
        started.append(running)
        if broker_url is None:
            running.service.relay.bus.ready.wait(15)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="module")
def bridge(start_bridge) -> RunningBridge:
    return start_bridge(max_wait=10.0)


class OpenAPI:
    """Checks responses against the schemas the bridge itself publishes."""

    def __init__(self, spec: dict) -> None:
        validate_spec(spec)
        self.spec = spec

    def resolve(self, node):
        if isinstance(node, dict):
            if "$ref" in node:
                target = self.spec
                for part in node["$ref"].lstrip("#/").split("/"):
                    target = target[part]
                return self.resolve(target)
            return {key: self.resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [self.resolve(item) for item in node]
        return node

    def check(self, response: requests.Response, path: str, method: str = "get") -> dict:
        """The response's JSON, after checking its status and body are what the spec documents."""
        operation = self.spec["paths"][path][method]
        documented = operation["responses"]
        assert str(response.status_code) in documented, \
            f"{method.upper()} {path} answered {response.status_code}, not documented: {response.text}"
        answer = self.resolve(documented[str(response.status_code)])
        assert response.headers["Content-Type"].startswith("application/json")
        body = response.json()
        OAS30Validator(answer["content"]["application/json"]["schema"]).validate(body)
        return body


@pytest.fixture(scope="module")
def openapi(bridge) -> OpenAPI:
    return OpenAPI(requests.get(f"{bridge.url}/api/openapi.json", timeout=10).json())


def self_signed_certificate(directory: Path) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def dump(response: requests.Response) -> str:
    return f"{response.status_code} {json.dumps(dict(response.headers))} {response.text[:500]}"


def csrf_from(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def logged_in(bridge) -> tuple[requests.Session, str]:
    """A session logged in to the dashboard of ``bridge`` (anything with a ``url``), and its CSRF token."""
    browser = requests.Session()
    csrf = csrf_from(browser.get(f"{bridge.url}/login", timeout=10).text)
    response = browser.post(f"{bridge.url}/login", data={"csrf_token": csrf, "username": "admin",
                                                         "password": PASSWORD}, allow_redirects=False, timeout=10)
    assert response.status_code == 302, dump(response)
    page = browser.get(f"{bridge.url}/", timeout=10)
    return browser, re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
