"""Test helpers: free ports, waiting, and a LAMControl system made of real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

import pytest
from paho.mqtt.client import topic_matches_sub

from lamcontrol.agents.capability import Capability, Unavailable
from lamcontrol.bus import BrokerSettings, Bus, BusError
from lamcontrol.protocol import CoordinatorPresence, Message, Presence, Prompt, Reply, parse

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0,
               what: str | Callable[[], str] = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``
    (``what`` may be a function, for a description made at that moment, such as a log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what() if callable(what) else what}")


def unset(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Remove environment variables for one test, so none leaks in from the machine running it."""
    for name in names:
        monkeypatch.delenv(name, raising=False)


def lacking(what: str) -> NoReturn:
    """This machine lacks a part a test needs: skip, or fail in CI, where the test command installs every part."""
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


def running(capability: Capability) -> Iterator[Capability]:
    """For a fixture: check and start ``capability`` (see ``lacking`` when this machine cannot); close after."""
    try:
        capability.check()
    except Unavailable as exc:
        lacking(str(exc))
    capability.start()
    yield capability
    capability.close()


def assert_tls_login(port: int, ca_file: str, username: str, password: str, prefix: str = "lam") -> None:
    """A TLS listener on 127.0.0.1:port lets this user in, checking the server against ca_file, and
    refuses a wrong password."""
    url = f"mqtts://127.0.0.1:{port}"
    bus = Bus(BrokerSettings(url=url, prefix=prefix, username=username, password=password, ca_file=ca_file),
              component="tls-test", report=False)
    bus.start(timeout=10)
    bus.stop()
    with pytest.raises(BusError):
        Bus(BrokerSettings(url=url, username=username, password="wrong", ca_file=ca_file),
            component="tls-stranger", report=False).start(timeout=3)


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_until(listening, timeout, f"port {port}")


class Process:
    """A component running as a real subprocess, its output kept in a log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.returncode
        finally:
            self._log.close()


class Recorder:
    """Every message under the test's prefix, in arrival order."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.bus = Bus(settings, component="test-recorder", report=False)
        self.topics = self.bus.topics
        self.bus.on(self.topics.all, self._keep)
        self.bus.start(timeout=15)

    def _keep(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages.append((topic, payload))

    def on(self, topic: str) -> list[tuple[str, bytes]]:
        """Messages on topics that match ``topic`` as a filter (with ``+`` or ``#``), else start with it."""
        with self._lock:
            return [(t, p) for t, p in self.messages if self.matches(t, topic)]

    @staticmethod
    def matches(topic: str, wanted: str) -> bool:
        return topic_matches_sub(wanted, topic) if "+" in wanted or "#" in wanted else topic.startswith(wanted)

    def parsed(self, kind: type[Message], topic_prefix: str) -> list:
        return [parse(kind, p) for t, p in self.on(topic_prefix) if p]

    def wait_for(self, kind: type[Message], topic_prefix: str, predicate: Callable[[Any], bool] = lambda m: True,
                 timeout: float = 20.0) -> Any:
        def found() -> Any:
            return next((m for m in self.parsed(kind, topic_prefix) if predicate(m)), None)

        return wait_until(found, timeout, f"{kind.__name__} on {topic_prefix}")


class LamSystem:
    """Coordinator and agents as real processes on one broker, under a topic prefix of their own."""

    def __init__(self, broker_url: str, tmp_path: Path) -> None:
        self.broker_url = broker_url
        self.tmp_path = tmp_path
        self.prefix = f"t{uuid.uuid4().hex[:8]}/lam"  # a slash in the prefix, as config allows
        self.settings = BrokerSettings(url=broker_url, prefix=self.prefix)
        self.topics = self.settings.topics
        self.processes: list[Process] = []
        self.recorder = Recorder(self.settings)
        self._bus: Bus | None = None

    def config(self, name: str = "config", extra: str = "") -> Path:
        path = self.tmp_path / f"{name}.toml"
        path.write_text(f'[broker]\nurl = "{self.broker_url}"\nprefix = "{self.prefix}"\n'
                        f'[coordinator]\njournal = "{self.tmp_path / "journal.db"}"\nack_timeout = 3.0\n{extra}\n')
        return path

    def start(self, name: str, module: str, *args: str, env: dict | None = None) -> Process:
        env = {"LAM_STATE_DIR": str(self.tmp_path / "state"), **(env or {})}  # agents keep their task records there
        process = Process(name, [sys.executable, "-m", module, *args], self.tmp_path, env)
        self.processes.append(process)
        return process

    def coordinator(self, extra_config: str = "", wait: bool = True, env: dict | None = None) -> Process:
        seen = len(self.recorder.on(self.topics.coordinator_status))
        process = self.start(f"coordinator-{len(self.processes)}", "lamcontrol.coordinator.main",
                             "--config", str(self.config("coordinator", extra_config)), env=env)
        if wait:
            wait_until(lambda: any(parse(CoordinatorPresence, p).state == "online"
                                   for _, p in self.recorder.on(self.topics.coordinator_status)[seen:]),
                       60, lambda: f"coordinator online\n{process.log()}")
        return process

    def agent(self, agent_id: str, *capabilities: str, extra_config: str = "", max_concurrent: int = 4,
              wait: bool = True, env: dict | None = None) -> Process:
        caps = [arg for c in (capabilities or ("echo",)) for arg in ("--capability", c)]
        seen = len(self.recorder.on(self.topics.agent_status(agent_id)))
        process = self.start(f"agent-{agent_id}-{len(self.processes)}", "lamcontrol.agents.main", "--id", agent_id, *caps,
                             "--max-concurrent", str(max_concurrent),
                             "--config", str(self.config(f"agent-{agent_id}", extra_config)), env=env)
        if wait:
            wait_until(lambda: any(p and parse(Presence, p).state == "online"
                                   for _, p in self.recorder.on(self.topics.agent_status(agent_id))[seen:]),
                       60, lambda: f"agent {agent_id} online\n{process.log()}")
        return process

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            self._bus = Bus(self.settings, component="test-client")
            self._bus.start(timeout=15)
        return self._bus

    def publish(self, message: Message) -> None:
        self.bus.publish(message).wait_for_publish(10)

    def publish_raw(self, topic: str, payload: bytes | str) -> None:
        self.bus.publish_raw(topic, payload).wait_for_publish(10)

    def submit(self, text: str, source: str = "test", **metadata: Any) -> Prompt:
        """Publish a prompt without waiting for its reply."""
        prompt = Prompt(prompt=text, source=source, metadata=metadata)
        self.publish(prompt)
        return prompt

    def reply_to(self, prompt: Prompt, timeout: float = 30.0) -> Reply:
        return self.recorder.wait_for(Reply, self.topics.reply(prompt.id), timeout=timeout)

    def send(self, text: str, source: str = "test", timeout: float = 30.0, **metadata: Any) -> Reply:
        return self.reply_to(self.submit(text, source, **metadata), timeout)

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        for bus in (self._bus, self.recorder.bus):
            if bus is not None:
                bus.stop()
