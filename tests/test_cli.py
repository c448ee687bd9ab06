"""The `lam` command as a person uses it, against real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from helpers import ROOT, Process, free_port, wait_for_port, wait_until


def lam_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lamcontrol", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_parse_prints_commands_without_a_broker():
    result = lam_cli("parse", "browser youtube weezer && computer volume 50", "--broker", "mqtt://127.0.0.1:1")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["commands"] == [
        {"command": "browser youtube weezer", "capability": "browser", "action": "youtube",
         "args": {"query": "weezer"}},
        {"command": "computer volume 50", "capability": "computer", "action": "volume", "args": {"level": 50}},
    ]
    assert data["parser"]


def test_parse_of_something_not_for_us_gives_a_reason():
    data = json.loads(lam_cli("parse", "x").stdout)
    assert data["commands"] == [] and data["reason"]


def test_send_agents_and_monitor(lam):
    lam.coordinator()
    lam.agent("desk", "echo")
    config = str(lam.config("cli"))
    monitor = Process("monitor", [sys.executable, "-m", "lamcontrol", "monitor", "--config", config,
                                  "--duration", "20"], lam.tmp_path)
    wait_until(lambda: "desk online" in monitor.log(), 20, "monitor to show the agent")

    sent = lam_cli("send", "--config", config, "echo", "hello")
    assert (sent.returncode, sent.stdout.strip()) == (0, "hello")
    failed = lam_cli("send", "--config", config, "echo fail no luck")
    assert (failed.returncode, failed.stdout.strip()) == (1, "no luck")
    as_json = json.loads(lam_cli("send", "--config", config, "--json", "echo hi").stdout)
    assert as_json["status"] == "succeeded" and as_json["tasks"][0]["agent"] == "desk"

    agents = lam_cli("agents", "--config", config)
    header, row = agents.stdout.splitlines()[:2]
    assert header.split()[:4] == ["AGENT", "STATE", "HOST", "LOAD"]
    assert row.split()[:2] == ["desk", "online"] and "echo: fail, say, sleep" in row
    listed = json.loads(lam_cli("agents", "--config", config, "--json").stdout)
    assert [a["agent"] for a in listed] == ["desk"]

    wait_until(lambda: "reply" in monitor.log() and "succeeded: hi" in monitor.log(), 20, "monitor lines")
    lines = monitor.log()
    for kind in ("prompt", "task", "result", "reply", "agent", "coordinator"):
        assert f" {kind} " in lines, kind
    monitor.stop()


def test_send_says_when_the_broker_is_unreachable(tmp_path):
    result = lam_cli("send", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--connect-timeout", "2", "echo hi")
    assert result.returncode == 2
    assert "cannot reach the MQTT broker" in result.stderr


def test_broker_url_precedence(tmp_path):
    from lamcontrol import config

    path = tmp_path / "c.toml"
    path.write_text('[broker]\nurl = "mqtt://from-file:1"\n')
    os.environ["LAM_BROKER"] = "mqtt://from-env:2"
    try:
        assert config.load(str(path), "mqtts://from-flag:3")["broker"]["url"] == "mqtts://from-flag:3"
        assert config.load(str(path))["broker"]["url"] == "mqtt://from-env:2"
    finally:
        del os.environ["LAM_BROKER"]
    assert config.load(str(path))["broker"]["url"] == "mqtt://from-file:1"


def test_lam_up_starts_everything_and_stops_cleanly(tmp_path):
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[embedded_broker]\nlisten = "127.0.0.1:{port}"\n'
                      f'[coordinator]\njournal = "{tmp_path / "journal.db"}"\n'
                      f'[bridge]\nlisten = "127.0.0.1:{free_port()}"\n')
    env = {"LAM_STATE_DIR": str(tmp_path / "state")}
    up = Process("lam-up", [sys.executable, "-m", "lamcontrol", "up", "--config", str(config), "-c", "echo",
                            "--agent-id", "home-pc"], tmp_path, env)
    wait_for_port(port)
    wait_until(lambda: "LAMControl is up" in up.log(), 30, "lam up banner")
    reply = wait_until(lambda: (r := lam_cli("send", "--broker", f"mqtt://127.0.0.1:{port}", "echo hello",
                                             "--timeout", "10")).returncode == 0 and r, 60, "a reply via lam up")
    assert reply.stdout.strip() == "hello"
    assert up.stop() == 0
    assert "exited with an error" not in up.log()


def test_example_config_is_valid_for_every_part():
    from agents import capability
    from lamcontrol import config
    from r1_bridge.app import BridgeSettings
    from r1_bridge.openclaw import GatewaySettings

    cfg = config.load(str(ROOT / "config" / "lamcontrol.example.toml"))
    assert set(cfg) - {"path"} <= set(config.DEFAULTS) | {"openclaw"}
    for name, settings in cfg["capabilities"].items():
        capability.load(name).validate_settings(settings)
    BridgeSettings.from_config(cfg)
    GatewaySettings.from_config(cfg)
