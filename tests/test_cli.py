"""The `lam` command as a person uses it, against real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import ROOT, Process, free_port, wait_for_port, wait_until
from lamcontrol import config as lamconfig
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
    port = free_port()
    result = lam_cli("send", "--broker", f"mqtt://127.0.0.1:{port}", "--connect-timeout", "2", "echo hi")
    assert result.returncode == 2
    assert f"cannot reach the MQTT broker at mqtt://127.0.0.1:{port} (from --broker)" in result.stderr
    config = tmp_path / "config.toml"  # the broker's address from the embedded broker's listen key alone
    config.write_text(f'[embedded_broker]\nlisten = "0.0.0.0:{port}"\n')
    derived = lam_cli("send", "--config", str(config), "--connect-timeout", "2", "echo hi")
    assert derived.returncode == 2 and (f"cannot reach the MQTT broker at mqtt://127.0.0.1:{port} (from "
                                        f"[embedded_broker] listen in {config})") in derived.stderr, derived.stderr


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
        # (a reply needs no bridge: the banner may come a moment after it)
        output = wait_until(lambda: "LAMControl is up" in (text := log_path.read_text()) and text, 60, "the banner")
        assert f"bridge: http://127.0.0.1:{bridge_port}/" in output
        # Last, once every part is online: the bridge healthy (after its first-start lines), the coordinator and
        # the agent by their presence (their own "ready" lines may trail it by a poll of their readiness).
        assert output.index("LAMControl is up") > output.index("API token:")
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
    wait_until(lambda: "LAMControl is up" in up.log(), 60, "lam up banner")
    assert f"LAMControl is up on {broker.url}: coordinator, agent " in up.log()
    assert f"a broker already listens on 127.0.0.1:{broker.port}: lam up uses it" in up.log()
    reply = wait_until(lambda: (r := lam_cli("send", "--config", str(config), "echo hello",
                                             "--timeout", "10")).returncode == 0 and r, 60, "a reply via lam up")
    assert reply.stdout.strip() == "hello"
    assert up.stop() == 0


def test_version_and_help_a_person_can_read():
    from lamcontrol import __version__
    from lamcontrol.cli.main import build_parser

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
    from lamcontrol.service import component_parser

    for parser in [*seen, component_parser("lam-agent", "")]:  # every --config says where it is looked for
        for action in parser._actions:
            if "--config" in action.option_strings:
                assert "$LAM_CONFIG" in action.help and "/etc/lamcontrol/config.toml" in action.help, parser.prog


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
        f"lam up: cannot listen on 127.0.0.1:{port}: Address already in use. Another broker runs there? To use it: "
        f"lam up --broker mqtt://127.0.0.1:{port} (refused while a coordinator serves it); or pick another port: "
        f"lam up --listen 127.0.0.1:{port + 1}"]


def test_lam_up_refuses_the_network_without_users(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lamcontrol", "up", "--listen", f"0.0.0.0:{free_port()}"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "LAM_STATE_DIR": str(tmp_path)})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "refusing to listen on 0.0.0.0" in done.stderr and "without users and passwords" in done.stderr
    assert "lam join NAME" in done.stderr
    assert "--password-file" not in done.stderr and "[embedded_broker] password_file" in done.stderr  # lam up's own


# -- lam up: ports, start, failures, Ctrl-C, kill -9, a second one (the first hour) ------

def start_up(tmp_path: Path, *args: str, name: str = "lam-up", env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """lam up in a session of its own, as a terminal gives it, its output in a log file."""
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "lamcontrol", "up", *args], stdout=log, stderr=subprocess.STDOUT,
                              cwd=ROOT, start_new_session=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", "LAM_STATE_DIR": str(tmp_path / "state"),
                                   **(env or {})})
    return up, log_path


def running_with(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (a test's own config path)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace") and alive(int(cmdline.parent.name)):
                found.append(int(cmdline.parent.name))
        except (OSError, ValueError):
            continue
    return found


def up_config(tmp_path: Path, broker_line: str = "", extra: str = "") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'{broker_line}\n[coordinator]\njournal = "{tmp_path / "journal.db"}"\n'
                      f'[bridge]\nlisten = "127.0.0.1:{free_port()}"\n'
                      f'[openclaw]\nhost = "127.0.0.1"\nport = {free_port()}\n{extra}')
    return config


@pytest.mark.parametrize("setting", ["[embedded_broker] listen", "[broker] url"])
def test_one_setting_moves_the_broker_for_lam_up_and_every_command(tmp_path, setting):
    """The port set once (either key) is where lam up's broker listens and where lam send, lam agents and
    the banner's hints go; lam up's flags move the bridge and the voice gateway."""
    port, bridge_port, voice_port = free_port(), free_port(), free_port()
    line = (f'[embedded_broker]\nlisten = "127.0.0.1:{port}"' if setting.startswith("[embedded")
            else f'[broker]\nurl = "mqtt://127.0.0.1:{port}"')
    config = up_config(tmp_path, line)
    up, log_path = start_up(tmp_path, "--config", str(config), "-c", "echo", "--agent-id", "porter",
                            "--bridge-listen", f"127.0.0.1:{bridge_port}", "--voice-port", str(voice_port))
    try:
        wait_until(lambda: "Ctrl-C stops everything" in log_path.read_text() or up.poll() is not None, 120,
                   lambda: f"lam up's banner\n{log_path.read_text()}")
        output = log_path.read_text()
        assert f"LAMControl is up on mqtt://127.0.0.1:{port}: broker, coordinator, agent porter, bridge." in output
        assert f"from {setting} in {config}" in output
        assert f"mosquitto_sub -p {port} -v -t 'lam/#'" in output and f'lam send --config {config} "echo hello"' in output
        assert f"bridge: http://127.0.0.1:{bridge_port}/" in output
        sent = lam_cli("send", "--config", str(config), "echo hello", "--timeout", "20")
        assert (sent.returncode, sent.stdout.strip()) == (0, "hello"), sent.stderr
        agents = lam_cli("agents", "--config", str(config))
        assert "porter" in agents.stdout
        wait_for_port(voice_port)  # the voice gateway took the port it was given
        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(60) == 0, log_path.read_text()
    finally:
        if up.poll() is None:
            up.kill()


def test_a_part_that_cannot_start_is_named_with_the_cause_and_the_fix(tmp_path):
    import socket

    with socket.socket() as taken:  # the bridge's port: found before anything starts
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = up_config(tmp_path, f'[embedded_broker]\nlisten = "127.0.0.1:{free_port()}"')
        up, log_path = start_up(tmp_path, "--config", str(config), "-c", "echo", "--bridge-listen", f"127.0.0.1:{port}")
        assert up.wait(60) == 2
    assert log_path.read_text().strip().splitlines() == [
        f"lam up: the bridge cannot listen on 127.0.0.1:{port}: Address already in use. Give it another port: lam up "
        f"--bridge-listen 127.0.0.1:{port + 1} (or [bridge] listen), or start none: --no-bridge"]

    # A part that stops while starting: named, with its last words; the banner never comes and nothing is left.
    config = up_config(tmp_path, f'[embedded_broker]\nlisten = "127.0.0.1:{free_port()}"',
                       extra='[capabilities.echo]\nmax_sleep = 5\n')
    config.write_text(config.read_text().replace(str(tmp_path / "journal.db"), "/proc/no/such/journal.db"))
    up, log_path = start_up(tmp_path, "--config", str(config), "-c", "echo", "--no-bridge", name="lam-up-2")
    assert up.wait(120) == 2, log_path.read_text()
    output = log_path.read_text()
    assert ("lam up: the coordinator stopped while starting (exit status 2): lam-coordinator: cannot use the journal "
            "/proc/no/such/journal.db: /proc/no: No such file or directory") in output, output
    assert "Traceback" not in output
    assert "LAMControl is up" not in output and "Ctrl-C stops everything" not in output
    wait_until(lambda: not running_with(str(config)), 30, "every part stopped")


@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0, 2.5])
def test_ctrl_c_at_any_moment_of_the_start_prints_no_traceback(tmp_path, delay):
    config = up_config(tmp_path, f'[embedded_broker]\nlisten = "127.0.0.1:{free_port()}"')
    up, log_path = start_up(tmp_path, "--config", str(config), "-c", "echo")
    time.sleep(delay)
    os.killpg(up.pid, signal.SIGINT)
    up.wait(60)
    output = log_path.read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    if "LAMControl is up" in output:  # it was up before the Ctrl-C (a fast start); never a banner after it
        assert output.index("LAMControl is up") < output.index(" stopping"), output
    wait_until(lambda: not running_with(str(config)), 30, "every part stopped")


def test_kill_9_of_lam_up_leaves_no_part_running(tmp_path):
    port = free_port()
    config = up_config(tmp_path, f'[embedded_broker]\nlisten = "127.0.0.1:{port}"')
    up, log_path = start_up(tmp_path, "--config", str(config), "-c", "echo")
    try:
        wait_until(lambda: "Ctrl-C stops everything" in log_path.read_text(), 120,
                   lambda: f"lam up's banner\n{log_path.read_text()}")
        parts = running_with(str(config))
        assert len(parts) == 5, parts  # lam up, broker, coordinator, agent, bridge
        up.send_signal(signal.SIGKILL)
        up.wait(10)
        wait_until(lambda: not running_with(str(config)), 60, lambda: f"the parts to end\n{log_path.read_text()}")
        assert lamconfig.bind_problem("127.0.0.1", port) == ""  # the broker's port is free again
    finally:
        if up.poll() is None:
            up.kill()


def coordinator_pid(marker: str) -> int:
    for pid in running_with(marker):
        if "lamcontrol.coordinator.main" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return pid
    raise AssertionError("no coordinator runs")


def test_a_second_coordinator_refuses_naming_the_first_and_leaves_it_be(tmp_path):
    import socket

    from helpers import Recorder
    from lamcontrol.bus import BrokerSettings

    port = free_port()
    config = up_config(tmp_path, f'[embedded_broker]\nlisten = "127.0.0.1:{port}"')
    up, log_path = start_up(tmp_path, "--config", str(config), "-c", "echo", "--no-bridge")
    recorder = None
    try:
        wait_until(lambda: "Ctrl-C stops everything" in log_path.read_text(), 120,
                   lambda: f"lam up's banner\n{log_path.read_text()}")
        first = coordinator_pid(str(config))
        recorder = Recorder(BrokerSettings(url=f"mqtt://127.0.0.1:{port}"))
        wait_until(lambda: recorder.on("lam/coordinator/status"), 10, "the first coordinator's retained presence")
        named = f"pid {first} on host {socket.gethostname()}, up since "

        second = tmp_path / "second"
        second.mkdir()
        again = subprocess.run([sys.executable, "-m", "lamcontrol", "up", "--broker", f"mqtt://127.0.0.1:{port}",
                                "-c", "echo", "--agent-id", "second", "--no-bridge"], capture_output=True, text=True,
                               timeout=120, cwd=ROOT, env={**os.environ, "LAM_STATE_DIR": str(second)})
        assert again.returncode == 2, again.stderr
        assert again.stderr.startswith(f"lam up: another coordinator serves the broker at mqtt://127.0.0.1:{port} "
                                       f"(from --broker): {named}"), again.stderr
        assert "lam up started nothing" in again.stderr

        standalone = [sys.executable, "-m", "lamcontrol.coordinator.main", "--broker", f"mqtt://127.0.0.1:{port}"]
        elsewhere = subprocess.run([*standalone, "--journal", str(second / "journal.db")], capture_output=True,
                                   text=True, timeout=60, cwd=ROOT)
        assert elsewhere.returncode == 2 and f"another coordinator serves the broker at mqtt://127.0.0.1:{port} " \
                                             f"(from --broker): {named}" in elsewhere.stderr, elsewhere.stderr
        same_journal = subprocess.run([*standalone, "--config", str(config)], capture_output=True, text=True,
                                      timeout=60, cwd=ROOT)
        assert same_journal.returncode == 2, same_journal.stderr
        assert f"another coordinator uses the journal {tmp_path / 'journal.db'}: {named}" in same_journal.stderr

        statuses = [json.loads(p)["state"] for _, p in recorder.on("lam/coordinator/status") if p]
        assert "offline" not in statuses, statuses  # nobody spoke over the first one's presence
        sent = lam_cli("send", "--config", str(config), "echo still here", "--timeout", "20")
        assert sent.stdout.strip() == "still here", sent.stderr
        assert coordinator_pid(str(config)) == first
    finally:
        if recorder is not None:
            recorder.bus.stop()
        os.killpg(up.pid, signal.SIGINT)
        up.wait(60)


def test_a_refused_login_says_the_broker_was_reached_and_an_agent_stops_trying(tmp_path):
    from lamcontrol.cli.join import UserFolder, agent_item

    users = UserFolder(tmp_path / "users", True, "lam", "homeassistant")
    users.add("monitor", agent_item("desk", ["echo"]))
    port = free_port()
    broker = Process("broker", [sys.executable, "-m", "lamcontrol.broker.main", "--listen", f"127.0.0.1:{port}",
                                "--password-file", str(users.path / "passwd"), "--no-anonymous"], tmp_path)
    try:
        wait_for_port(port)
        agent = Process("agent", [sys.executable, "-m", "lamcontrol.agents.main", "--id", "desk", "-c", "echo",
                                  "--broker", f"mqtt://desk@127.0.0.1:{port}"], tmp_path,
                        {"LAM_BROKER_PASSWORD": "wrong"})
        wait_until(lambda: agent.popen.poll() is not None, 120, lambda: f"the agent to stop trying\n{agent.log()}")
        assert agent.popen.returncode == 2
        refusal = (f"the MQTT broker at mqtt://desk@127.0.0.1:{port} (from --broker) was reached and refused user "
                   "desk (")
        assert refusal in agent.log() and "from $LAM_BROKER_PASSWORD" in agent.log()
        assert agent.log().count("was reached and refused") <= 4, agent.log()  # a few tries, then it stops

        wrong = tmp_path / "wrong-password"
        wrong.write_text("nope\n")
        config = tmp_path / "send.toml"
        config.write_text(f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\nusername = "desk"\npassword_file = "{wrong}"\n')
        sent = lam_cli("send", "--config", str(config), "--connect-timeout", "5", "echo hi")
        assert sent.returncode == 2
        assert (f"the MQTT broker at mqtt://127.0.0.1:{port} (from [broker] url in {config}) was reached and refused "
                f"user desk") in sent.stderr
        assert f"check the user name and the password, from {wrong} ([broker] password_file)" in sent.stderr
        nameless = lam_cli("send", "--broker", f"mqtt://127.0.0.1:{port}", "--connect-timeout", "5", "echo hi")
        assert "was reached and refused user lam-cli-" in nameless.stderr and "no password was given" in nameless.stderr
        assert "cannot reach" not in sent.stderr + nameless.stderr
    finally:
        broker.stop()


def test_send_to_an_unknown_or_offline_agent_is_answered_at_once(lam):
    lam.coordinator()
    lam.agent("desk", "echo")
    kitchen = lam.agent("kitchen", "echo")
    config = str(lam.config("cli"))
    # A timeout far beyond the wait here: the answer must not wait for it.
    unknown = lam_cli("send", "--config", config, "--agent", "kitchn", "--timeout", "500", "echo hi", timeout=60)
    assert unknown.returncode == 1
    assert unknown.stdout.strip() == "There is no agent kitchn; did you mean kitchen? Online: desk, kitchen."
    kitchen.stop()
    wait_until(lambda: "went offline" in lam.processes[0].log(), 30, "the coordinator to see kitchen go")
    offline = lam.send("echo hi", agent="kitchen", timeout=20)  # from any entry point: the reply says it
    assert (offline.status, offline.response) == ("failed", "kitchen is offline. Online: desk.")
    assert lam_cli("send", "--config", config, "--agent", "desk", "echo hi").stdout.strip() == "hi"


def test_lam_up_on_a_lan_address_lets_this_machines_own_clients_in(tmp_path):
    """lam up --listen <an address of this machine beyond loopback>: with users made by lam join, lam up's own
    clients, lam send and lam agents on this machine get in without a password, as they do on loopback.
    In a network namespace of its own, where a veth pair carries the address."""
    from faultkit import ip, netns_problem
    from lamcontrol.cli.join import UserFolder, agent_item

    problem = netns_problem()
    if problem:
        pytest.skip(problem)
    namespace, address = f"lamlan{os.getpid() % 10000}{uuid.uuid4().hex[:4]}", f"10.{uuid.uuid4().int % 200 + 16}.9.5"
    state = tmp_path / "state"
    UserFolder(state / "mqtt", True, "lam", "homeassistant").add("coordinator", "bridge", "monitor",
                                                                  agent_item("lan", ["echo"]))
    config = up_config(tmp_path)
    inside = ["ip", "netns", "exec", namespace, sys.executable, "-m", "lamcontrol"]
    ip("netns", "add", namespace)
    up = None
    try:
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "link", "add", "lan0", "type", "veth", "peer", "name", "lan1")
        ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "lan0")
        for device in ("lan0", "lan1"):
            ip("-n", namespace, "link", "set", device, "up")
        log_path = tmp_path / "lam-up.log"
        with log_path.open("wb") as log:
            up = subprocess.Popen([*inside, "up", "--config", str(config), "--listen", f"{address}:1883", "-c", "echo",
                                   "--agent-id", "lan", "--no-bridge"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  start_new_session=True, env={**os.environ, "LAM_STATE_DIR": str(state)})
        wait_until(lambda: "Ctrl-C stops everything" in log_path.read_text() or up.poll() is not None, 120,
                   lambda: f"lam up's banner\n{log_path.read_text()}")
        output = log_path.read_text()
        assert f"LAMControl is up on mqtt://{address}:1883: broker, coordinator, agent lan." in output, output
        assert f"open to the network on {address}:1883" in output
        sent = subprocess.run([*inside, "send", "--broker", f"mqtt://{address}:1883", "echo from this machine"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert sent.stdout.strip() == "from this machine", sent.stderr
        assert "Not authorized" not in output
    finally:
        if up is not None:
            os.killpg(up.pid, signal.SIGINT)
            up.wait(60)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=20)
