"""A real Home Assistant for tests and benchmarks, from the venv ``tests/hass/install.py`` makes."""

from __future__ import annotations

import json
import string
from pathlib import Path

import requests
from websockets.sync.client import connect

from helpers import Process, free_port, wait_until

HASS = Path(__file__).parent / "hass"


class HomeAssistant:
    """A Home Assistant process with its own config directory and an onboarded owner."""

    def __init__(self, hass: str, config_dir: Path) -> None:
        self.hass = hass
        self.config_dir = config_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.process: Process | None = None
        template = string.Template((HASS / "configuration.yaml").read_text())
        (config_dir / "configuration.yaml").write_text(template.substitute(port=self.port))

    def start(self) -> None:
        self.process = Process("hass-output", [self.hass, "-c", str(self.config_dir), "--skip-pip"],
                               self.config_dir)
        wait_until(self._running, 120, f"Home Assistant running\n{self.process.log()[-3000:]}")

    def _running(self) -> bool:
        if self.process.popen.poll() is not None:
            raise AssertionError(f"Home Assistant exited\n{self.process.log()[-3000:]}")
        try:
            if not self.token:
                return requests.get(f"{self.url}/api/onboarding", timeout=2).ok
            return requests.get(f"{self.url}/api/config", headers=self.headers, timeout=2).json()["state"] == "RUNNING"
        except (requests.RequestException, ValueError, KeyError):
            return False

    def stop(self) -> None:
        if self.process:
            self.process.stop(30)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def onboard(self) -> None:
        """Create the owner over REST, then trade the auth code for a token and that for a long-lived one."""
        client_id = f"{self.url}/"
        created = requests.post(f"{self.url}/api/onboarding/users", timeout=30, json={
            "client_id": client_id, "name": "Test", "username": "test", "password": "test-password", "language": "en"})
        created.raise_for_status()
        token = requests.post(f"{self.url}/auth/token", timeout=30, data={
            "grant_type": "authorization_code", "code": created.json()["auth_code"], "client_id": client_id})
        token.raise_for_status()
        self.token = token.json()["access_token"]
        self.token = self.websocket("auth/long_lived_access_token", client_name="lamcontrol tests", lifespan=30)
        wait_until(self._running, 60, "Home Assistant running")

    def websocket(self, kind: str, **fields):
        with connect(f"ws://127.0.0.1:{self.port}/api/websocket", open_timeout=10) as ws:
            ws.recv(timeout=10)
            ws.send(json.dumps({"type": "auth", "access_token": self.token}))
            assert json.loads(ws.recv(timeout=10))["type"] == "auth_ok"
            ws.send(json.dumps({"id": 1, "type": kind, **fields}))
            answer = json.loads(ws.recv(timeout=10))
        assert answer["success"], answer
        return answer["result"]

    def call(self, domain: str, service: str, **data) -> None:
        requests.post(f"{self.url}/api/services/{domain}/{service}", json=data, headers=self.headers,
                      timeout=30).raise_for_status()

    def state(self, entity_id: str) -> dict:
        answer = requests.get(f"{self.url}/api/states/{entity_id}", headers=self.headers, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def flow(self, path: str, **data) -> dict:
        """One step of a config or options flow over REST, as the UI's forms send it."""
        answer = requests.post(f"{self.url}/api/config/config_entries/{path}", json=data, headers=self.headers,
                               timeout=60)
        answer.raise_for_status()
        return answer.json()

    def add_mqtt(self, host: str, port: int, discovery_prefix: str) -> str:
        """Add the MQTT integration as a person does in the UI, with its discovery prefix and birth and
        will topic set to ``discovery_prefix``; the config entry id."""
        form = self.flow("flow", handler="mqtt")
        created = self.flow(f"flow/{form['flow_id']}", broker=host, port=port)
        assert created["type"] == "create_entry", created
        entry_id = created["result"]["entry_id"]
        form = self.flow("options/flow", handler=entry_id)
        form = self.flow(f"options/flow/{form['flow_id']}", broker=host, port=port)
        status = f"{discovery_prefix}/status"
        done = self.flow(f"options/flow/{form['flow_id']}", discovery=True, discovery_prefix=discovery_prefix,
                         birth_enable=True, birth_topic=status, birth_payload="online", birth_qos=0,
                         birth_retain=False, will_enable=True, will_topic=status, will_payload="offline",
                         will_qos=0, will_retain=False)
        assert done["type"] == "create_entry", done
        return entry_id

    def reload_entry(self, entry_id: str) -> None:
        requests.post(f"{self.url}/api/config/config_entries/entry/{entry_id}/reload", headers=self.headers,
                      timeout=60).raise_for_status()

    def remove_entry(self, entry_id: str) -> None:
        requests.delete(f"{self.url}/api/config/config_entries/entry/{entry_id}", headers=self.headers,
                        timeout=60).raise_for_status()

    def registry(self, kind: str) -> list[dict]:
        """The device or entity registry (``kind`` ``device`` or ``entity``)."""
        return self.websocket(f"config/{kind}_registry/list")

    def log(self) -> str:
        return self.process.log() if self.process else ""
