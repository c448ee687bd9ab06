"""Fixtures: real brokers (aMQTT and Mosquitto) and a LAMControl system of real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from desktop_parts import start_xvfb
from hass_server import HASS, HomeAssistant
from helpers import ROOT, LamSystem, Process, free_port, lacking, wait_for_port


class Broker:
    """A broker process on a free port."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.tmp = tmp
        self.process: Process | None = None
        self.start()

    def start(self) -> None:
        if self.kind == "amqtt":
            argv = [sys.executable, "-m", "lamcontrol.broker.main", "--listen", f"127.0.0.1:{self.port}"]
        else:
            conf = self.tmp / "mosquitto.conf"
            recommended = (ROOT / "config" / "mosquitto.conf").read_text()
            settings = [line for line in recommended.splitlines()
                        if line.startswith(("set_tcp_nodelay", "max_queued_messages"))]
            conf.write_text("\n".join([*settings, f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                                       "persistence false", "log_dest stdout", "log_type error",
                                       "log_type warning", ""]))
            argv = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)]
        self.process = Process(f"broker-{self.kind}", argv, self.tmp)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def restart(self) -> None:
        self.stop()
        self.start()


def mosquitto_available() -> bool:
    return bool(shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())


@pytest.fixture(scope="session", params=["amqtt", "mosquitto"])
def broker(request, tmp_path_factory):
    if request.param == "mosquitto" and not mosquitto_available():
        pytest.fail("mosquitto is not installed: run the test command from the README, which installs it")
    running = Broker(request.param, tmp_path_factory.mktemp(request.param))
    yield running
    running.stop()


@pytest.fixture
def lam(broker, tmp_path):
    system = LamSystem(broker.url, tmp_path)
    yield system
    system.close()


@pytest.fixture(scope="session")
def xvfb():
    """An X server on a display number it picks itself; yields ':N'."""
    if not shutil.which("Xvfb"):
        lacking("Xvfb not found: apt-get install xvfb")
    server, display = start_xvfb()
    yield display
    server.terminate()
    server.wait(10)


@pytest.fixture(scope="session")
def home_assistant(tmp_path_factory):
    """A real Home Assistant: ``tests/hass/install.py`` puts it in a venv cached across runs; it starts
    on a free port with ``tests/hass/configuration.yaml``, onboarded over REST with a long-lived
    access token, the way a person would."""
    started = time.monotonic()
    installed = subprocess.run([sys.executable, str(HASS / "install.py")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=900)
    if installed.returncode == 3 and not (os.environ.get("CI") or os.environ.get("LAM_REQUIRE_HASS")):
        pytest.skip(f"Home Assistant cannot be installed here: {installed.stderr.strip().splitlines()[-1]}")
    if installed.returncode != 0:
        pytest.fail(f"installing Home Assistant failed:\n{installed.stderr[-3000:]}")
    install_time = time.monotonic() - started
    server = HomeAssistant(installed.stdout.strip(), tmp_path_factory.mktemp("home-assistant"))
    server.start()
    server.onboard()
    print(f"\nHome Assistant: install {install_time:.0f} s, start and onboarding "
          f"{time.monotonic() - started - install_time:.0f} s", file=sys.stderr)
    yield server
    server.stop()
