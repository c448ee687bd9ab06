"""systemd: the units `lam systemd install` writes pass `systemd-analyze verify`, and the real
processes speak the notify protocol (READY=1, WATCHDOG=1, STOPPING=1) to a stand-in socket."""

from __future__ import annotations

import configparser
import os
import socket
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from helpers import ROOT, free_port, wait_until
from lamcontrol.cli import ops

SYSTEM_UNITS = ("lam-broker.service", "lam-coordinator.service", "lam-bridge.service")


def lam_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lamcontrol", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def verify(unit: Path, *options: str, env: dict | None = None) -> None:
    done = subprocess.run(["systemd-analyze", "verify", *options, str(unit)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})
    assert done.returncode == 0 and not done.stderr.strip(), f"{unit.name}:\n{done.stdout}{done.stderr}"


def unit_settings(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read_string("\n".join(l for l in path.read_text().splitlines() if not l.startswith("#")))
    return parser


def test_system_units_verify_and_are_sandboxed(tmp_path):
    done = lam_cli("systemd", "install", "--prefix", str(tmp_path), "--broker-url", "mqtt://10.0.0.2:1883")
    assert done.returncode == 0, done.stderr
    assert "systemctl enable --now lam-broker.service lam-coordinator.service lam-bridge.service" in done.stdout
    unit_dir = tmp_path / "etc/systemd/system"
    for name in SYSTEM_UNITS:
        verify(unit_dir / name)
        unit = unit_settings(unit_dir / name)
        service = unit["Service"]
        assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
        assert service["Restart"] == "on-failure" and int(service["WatchdogSec"]) > 0
        assert service["DynamicUser"] == "yes" and service["User"] == "lamcontrol"
        assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
        assert service["StateDirectory"] == "lamcontrol"
        script = service["ExecStart"].split()[0]
        assert Path(script).is_file() and os.access(script, os.X_OK), script  # the installed console script
        component = name.removeprefix("lam-").removesuffix(".service")
        assert f"--config /etc/lamcontrol/{component}.toml" in service["ExecStart"]
        config = (tmp_path / f"etc/lamcontrol/{component}.toml").read_text()
        assert 'url = "mqtt://10.0.0.2:1883"' in config


def test_agent_user_template_verifies(tmp_path):
    home = tmp_path / "home"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    done = lam_cli("systemd", "install", "--user", "--agent-id", "desk", "-c", "echo", "-c", "browser",
                   "--broker-url", "mqtt://broker-host:1883", "--prefix", str(tmp_path / "root"),
                   env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".cfg")})
    assert done.returncode == 0, done.stderr
    assert "systemctl --user enable --now lam-agent@desk.service" in done.stdout
    staged = tmp_path / "root" / str(home / ".cfg").lstrip("/")
    template = staged / "systemd/user/lam-agent@.service"
    verify(template, "--user", env={"XDG_RUNTIME_DIR": str(runtime), "HOME": str(home)})
    service = unit_settings(template)["Service"]
    assert service["Type"] == "notify" and "--id %i --config %E/lamcontrol/agent-%i.toml" in service["ExecStart"]
    config = (staged / "lamcontrol/agent-desk.toml").read_text()
    assert 'capabilities = ["echo", "browser"]' in config and 'url = "mqtt://broker-host:1883"' in config


def test_broken_unit_fails_verification(tmp_path):
    """The check above can fail: a unit naming a missing program is refused."""
    unit = tmp_path / "lam-broken.service"
    unit.write_text(ops.system_unit("coordinator", tmp_path / "missing-bin"))
    with pytest.raises(AssertionError):
        verify(unit)


def test_shipped_units_are_what_install_writes():
    for name in ops.SERVICES:
        shipped = (ROOT / "systemd" / f"lam-{name}.service").read_text()
        assert shipped == ops.system_unit(name, Path("/usr/local/bin")), f"regenerate systemd/lam-{name}.service"
    assert (ROOT / "systemd/lam-agent@.service").read_text() == ops.agent_unit(Path("/usr/local/bin"))


def test_install_with_mqtt_credentials(tmp_path):
    out = tmp_path / "mosquitto"
    done = lam_cli("mosquitto-config", "--out", str(out), "--users", "coordinator,bridge,agent:desk:echo",
                   "--owner", "root")
    assert done.returncode == 0, done.stderr
    done = lam_cli("systemd", "install", "--no-broker", "--prefix", str(tmp_path / "root"),
                   "--credentials", str(out / "credentials"))
    assert done.returncode == 0, done.stderr
    etc = tmp_path / "root/etc"
    assert not (etc / "systemd/system/lam-broker.service").exists()
    unit = (etc / "systemd/system/lam-coordinator.service").read_text()
    assert "LoadCredential=mqtt-password:/etc/lamcontrol/coordinator.password\n" in unit
    assert f"LoadCredential=mqtt-acl:{out / 'acl'}\n" in unit  # the live ACL: what each agent's login may read
    secret = etc / "lamcontrol/coordinator.password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.read_text() == (out / "credentials/coordinator").read_text()
    config = (etc / "lamcontrol/coordinator.toml").read_text()
    assert 'username = "coordinator"' in config
    assert 'password_file = "/run/credentials/lam-coordinator.service/mqtt-password"' in config
    assert 'acl_file = "/run/credentials/lam-coordinator.service/mqtt-acl"' in config
    assert "acl_file" not in (etc / "lamcontrol/bridge.toml").read_text()
    assert secret.read_text().strip() not in done.stdout


def test_dry_run_writes_nothing_and_shows_no_secret(tmp_path):
    out = tmp_path / "mosquitto"
    written = lam_cli("mosquitto-config", "--out", str(out), "--users", "coordinator,bridge", "--owner", "root")
    assert written.returncode == 0, written.stderr
    done = lam_cli("systemd", "install", "--dry-run", "--prefix", str(tmp_path / "root"),
                   "--credentials", str(out / "credentials"))
    assert done.returncode == 0, done.stderr
    assert "would write" in done.stdout and "[Service]" in done.stdout
    assert (out / "credentials/coordinator").read_text().strip() not in done.stdout
    assert not (tmp_path / "root").exists()


def test_install_refuses_missing_credentials_and_unwritable_places(tmp_path):
    missing = lam_cli("systemd", "install", "--prefix", str(tmp_path), "--credentials", str(tmp_path / "none"))
    assert missing.returncode != 0 and "lam mosquitto-config" in missing.stderr
    unwritable = lam_cli("systemd", "install", "--prefix", "/proc/lam")
    assert unwritable.returncode != 0
    assert "cannot write /proc/lam/etc/systemd/system/lam-broker.service" in unwritable.stderr
    assert "Traceback" not in missing.stderr + unwritable.stderr


# -- the notify protocol, spoken by the real processes ------------------------------------

class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.name = f"lam-test-notify-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)  # abstract namespace: systemd's "@name" form
        self.messages: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            self.messages.extend(data.decode().splitlines())

    def env(self, watchdog_usec: int = 200_000) -> dict:
        return {"NOTIFY_SOCKET": "@" + self.name, "WATCHDOG_USEC": str(watchdog_usec)}

    def count(self, line: str) -> int:
        return self.messages.count(line)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify():
    stand_in = NotifySocket()
    yield stand_in
    stand_in.close()


def check_lifecycle(notify: NotifySocket, process, status: str) -> None:
    wait_until(lambda: notify.count("READY=1"), 20, f"READY=1\n{process.log()}")
    assert any(m.startswith(f"STATUS={status}") for m in notify.messages), notify.messages
    wait_until(lambda: notify.count("WATCHDOG=1") >= 3, 20, f"three WATCHDOG=1\n{process.log()}")
    assert notify.count("READY=1") == 1
    assert process.stop() == 0
    wait_until(lambda: notify.count("STOPPING=1"), 10, "STOPPING=1")


def test_coordinator_notifies_systemd(lam, notify):
    check_lifecycle(notify, lam.coordinator(env=notify.env()), "coordinator connected")


def test_agent_notifies_systemd(lam, notify):
    check_lifecycle(notify, lam.agent("notified", "echo", env=notify.env()), "agent notified connected")


def test_embedded_broker_notifies_systemd(lam, notify):
    port = free_port()
    process = lam.start("notified-broker", "lamcontrol.broker.main", "--listen", f"127.0.0.1:{port}", env=notify.env())
    check_lifecycle(notify, process, "broker listening")


def test_no_watchdog_messages_without_a_watchdog(lam, notify):
    process = lam.agent("unwatched", "echo", env={"NOTIFY_SOCKET": "@" + notify.name})
    wait_until(lambda: notify.count("READY=1"), 20, "READY=1")
    process.stop()
    wait_until(lambda: notify.count("STOPPING=1"), 10, "STOPPING=1")
    assert notify.count("WATCHDOG=1") == 0


def test_bridge_notifies_systemd(lam, notify):
    port = free_port()
    process = lam.start("notified-bridge", "lamcontrol.r1_bridge.main", "--config", str(lam.config("bridge")),
                        "--listen", f"127.0.0.1:{port}", env=notify.env())
    check_lifecycle(notify, process, "bridge connected")
