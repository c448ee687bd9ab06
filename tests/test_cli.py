"""The `lam` command as a person uses it, against real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import ROOT, Process, free_port, wait_for_port, wait_until
from lamcontrol.protocol import describe_event
from lamcontrol.protocol import Prompt


def lam_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lamcontrol", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_parse_prints_commands_without_a_broker():
    result = lam_cli("parse", "browser youtube weezer && computer volume 50")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["commands"] == [
        {"command": "browser youtube weezer", "capability": "browser", "action": "youtube",
         "args": {"query": "weezer"}},
        {"command": "computer volume 50", "capability": "computer", "action": "volume", "args": {"level": 50}},
    ]
    assert data["parser"]


def test_parse_explains_which_parser_answered_and_why():
    env_without_groq = {k: v for k, v in os.environ.items() if not k.startswith("GROQ_")}

    def explained(text: str) -> dict:
        result = subprocess.run([sys.executable, "-m", "lamcontrol", "parse", "--explain", text], capture_output=True,
                                text=True, cwd=ROOT, env=env_without_groq, timeout=60)
        return json.loads(result.stdout)

    rigid, loose = explained("computer volume 30"), explained("set the volume to 30 percent")
    assert rigid["commands"] == loose["commands"]
    assert rigid["explain"] == "answered by the grammar parser: the prompt is already in the command language"
    assert loose["parser"] == "sentences" and "matched by the computer templates" in loose["explain"]


def test_parse_names_stand_in_for_what_agents_advertise():
    def parsed(*args: str) -> dict:
        return json.loads(lam_cli("parse", *args).stdout)

    chain = "text mary ann on telegram I'm on my way and turn off the living room lights"
    named = parsed("--names", "messaging=Mary Ann", "--names", "home=living room,desk lamp", chain)
    assert [c["command"] for c in named["commands"]] == ['telegram "Mary Ann" I\'m on my way',
                                                       "home turn off the living room lights"]
    assert parsed(chain)["commands"] == []  # without the names, "mary ann" is no one and the lights nothing


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


def test_monitor_shows_a_prompts_own_id_and_invents_none():
    prompt = Prompt(prompt="echo hi", source="cli")
    assert describe_event("lam", "lam/prompts", prompt.to_json()) == ("prompt", f"{prompt.id} from cli: 'echo hi'")
    assert describe_event("lam", "lam/prompts", b"echo hi") == ("prompt", "(plain text) from mqtt: 'echo hi'")


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


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("stop", ["SIGTERM", "Ctrl-C"])
def test_lam_up_starts_everything_and_stops_cleanly(tmp_path, stop):
    port, bridge_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[embedded_broker]\nlisten = "127.0.0.1:{port}"\n'
                      f'[coordinator]\njournal = "{tmp_path / "journal.db"}"\n'
                      f'[bridge]\nlisten = "127.0.0.1:{bridge_port}"\n'
                      f'[openclaw]\nhost = "127.0.0.1"\nport = {free_port()}\n')
    log_path = tmp_path / "lam-up.log"
    with log_path.open("wb") as log:  # a session of its own, as a terminal gives it
        up = subprocess.Popen([sys.executable, "-m", "lamcontrol", "up", "--config", str(config), "-c", "echo",
                               "--agent-id", "home-pc"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                              start_new_session=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", "LAM_STATE_DIR": str(tmp_path / "state")})
    try:
        wait_for_port(port)
        wait_until(lambda: "API token:" in log_path.read_text(), 30, "the bridge's first-start lines")
        reply = wait_until(lambda: (r := lam_cli("send", "--broker", f"mqtt://127.0.0.1:{port}", "echo hello",
                                                 "--timeout", "10")).returncode == 0 and r, 60, "a reply via lam up")
        assert reply.stdout.strip() == "hello"
        output = log_path.read_text()
        assert "LAMControl is up" in output and f"bridge: http://127.0.0.1:{bridge_port}/" in output
        assert "not online yet" not in output
        assert re.search(r"admin login: admin / \S+", output)
        children = children_of(up.pid)
        assert len(children) == 4, children  # broker, coordinator, agent, bridge
        if stop == "Ctrl-C":
            os.killpg(up.pid, signal.SIGINT)
        else:
            up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0, log_path.read_text()
    finally:
        if up.poll() is None:
            up.kill()
    output = log_path.read_text()
    assert "exited with an error" not in output
    assert "reconnecting" not in output and "cannot reach" not in output  # the broker stopped last
    assert not [pid for pid in children if alive(pid)]


def test_lam_up_uses_the_broker_the_config_names(broker, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[broker]\nurl = "{broker.url}"\nprefix = "up-{uuid.uuid4().hex[:8]}"\n'
                      f'[coordinator]\njournal = "{tmp_path / "journal.db"}"\n')
    up = Process("lam-up", [sys.executable, "-m", "lamcontrol", "up", "--config", str(config), "-c", "echo",
                            "--no-bridge"], tmp_path, {"LAM_STATE_DIR": str(tmp_path / "state")})
    wait_until(lambda: "LAMControl is up" in up.log(), 30, "lam up banner")
    assert f"LAMControl is up on {broker.url}: coordinator, agent." in up.log()
    reply = wait_until(lambda: (r := lam_cli("send", "--config", str(config), "echo hello",
                                             "--timeout", "10")).returncode == 0 and r, 60, "a reply via lam up")
    assert reply.stdout.strip() == "hello"
    assert up.stop() == 0


def test_version_and_help_a_person_can_read():
    from lamcontrol import __version__
    from lamcontrol.cli import build_parser

    assert lam_cli("--version").stdout.strip() == f"lam (lamcontrol) {__version__}"

    def parsers(parser):
        yield parser
        for action in parser._actions:
            for child in getattr(action, "choices", None) or {}:
                if isinstance(action.choices, dict):
                    yield from parsers(action.choices[child])

    seen = list(parsers(build_parser()))
    assert {p.prog for p in seen} >= {"lam up", "lam join", "lam config example", "lam systemd install"}
    for parser in seen:
        assert "`" not in parser.format_help(), parser.prog
        for action in parser._actions:
            if action.dest not in ("help", "version") and not action.choices:
                assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"
    options = {p.prog: {o for a in p._actions for o in a.option_strings} for p in seen}
    for quiet in ("lam parse", "lam systemd install", "lam mosquitto-config", "lam join", "lam config check"):
        assert not options[quiet] & {"--broker", "--ca-file", "--connect-timeout"}, quiet
    assert [o for o in options["lam mosquitto-config"] if "ca" in o] == ["--client-ca"]
    assert {"--broker", "--ca-file", "--connect-timeout"} <= options["lam send"]


def test_a_port_clash_is_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "lamcontrol", "up", "--listen", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={**os.environ, "LAM_STATE_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"lam up: cannot listen on 127.0.0.1:{port}: Address already in use (another broker? then use it: "
        f"lam up --broker mqtt://127.0.0.1:{port}; or pick another port)"]


def test_lam_up_refuses_the_network_without_users(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lamcontrol", "up", "--listen", f"0.0.0.0:{free_port()}"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "LAM_STATE_DIR": str(tmp_path)})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "refusing to listen on 0.0.0.0" in done.stderr and "without users and passwords" in done.stderr
    assert "lam join NAME" in done.stderr
