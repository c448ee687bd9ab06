"""A second machine joins the bus with exactly the commands lam join prints.

The first machine runs lam up with its broker open to the network (and so with users and
passwords); the second is a separate virtual environment, home folder and config that runs
the printed commands (all but systemctl, which needs a desktop session: the agent is started
as the written unit's ExecStart says) and answers a task.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import mosquitto_available
from helpers import ROOT, Process, Recorder, assert_tls_login, free_port, wait_for_port, wait_until
from lamcontrol import config as lamconfig
from lamcontrol.bus import BrokerSettings, Bus, BusError
from lamcontrol.cli.join import UserFolder, agent_item
from lamcontrol.protocol import Prompt

NAME = "kitchen"


def without_an_index(tmp_path: Path) -> dict[str, str]:
    """pip settings that leave it no package index and no folder of wheels to look in."""
    empty = tmp_path / "no-wheels"
    empty.mkdir(exist_ok=True)
    return {"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(empty)}


def system_packages(where: Path) -> Path:
    """This interpreter's packages but LAMControl itself: what the second machine already has (its 'system')."""
    where.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("lamcontrol", "__editable__", "pip", "_distutils_hack")) \
                and entry.suffix != ".pth":
            (where / entry.name).symlink_to(entry)
    return where


def second_machine(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine with Python and the dependencies, but no LAMControl and its own home."""
    bin_dir = tmp_path / "kitchen-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
    home = tmp_path / "kitchen-home"
    home.mkdir()
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("LAM_", "XDG_", "VIRTUAL_ENV", "PYTHON"))}
    return {**keep, "HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin",
            "PYTHONPATH": str(system_packages(tmp_path / "kitchen-site")), "PYTHONUNBUFFERED": "1",
            **without_an_index(tmp_path)}


def printed_script(log: str) -> str:
    found = re.search(r"paste these \(.*?\):\n\n(.*?)\n\nServing the wheel", log, re.S)
    assert found, log
    return found.group(1)


@pytest.mark.timeout(600)
def test_a_second_machine_joins_with_the_printed_commands(tmp_path):
    """Neither machine has a package index: lam join packs this installation, the other installs it as printed."""
    port = free_port()
    first = {"LAM_STATE_DIR": str(tmp_path / "first-state"), **without_an_index(tmp_path)}
    config = tmp_path / "first.toml"
    config.write_text(f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\n'
                      f'[embedded_broker]\nlisten = "0.0.0.0:{port}"\n'
                      f'[coordinator]\njournal = "{tmp_path / "journal.db"}"\n[agent]\nid = "first"\n')
    lam = [sys.executable, "-m", "lamcontrol"]
    joining = Process("join", [*lam, "join", NAME, "-c", "echo", "--address", "127.0.0.1", "--config", str(config),
                               "--wait", "300"], tmp_path, first)
    processes = [joining]
    try:
        wait_until(lambda: "waiting for kitchen" in joining.log(), 120, lambda: f"lam join's commands\n{joining.log()}")
        up = Process("up", [*lam, "up", "--config", str(config), "-c", "echo", "--no-bridge"], tmp_path, first)
        processes.append(up)
        wait_until(lambda: "LAMControl is up" in up.log(), 60, lambda: f"lam up\n{up.log()}")
        assert f"open to the network on 0.0.0.0:{port}" in up.log()

        machine = second_machine(tmp_path)
        script = printed_script(joining.log())
        assert f"mqtt://127.0.0.1:{port}" in script and "#sha256=" in script
        by_hand = "\n".join(line for line in script.splitlines() if not line.startswith("systemctl "))
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", by_hand], env=machine, cwd=machine["HOME"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        home = Path(machine["HOME"])
        assert (home / ".config/lamcontrol/agent-kitchen.password").stat().st_mode & 0o077 == 0
        unit = (home / ".config/systemd/user/lam-agent@.service").read_text()
        exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
        argv = shlex.split(exec_start.replace("%i", NAME).replace("%E", str(home / ".config")))
        assert argv[0].startswith(str(home / ".local/share/lamcontrol/bin/"))
        agent = Process("kitchen-agent", argv, tmp_path, {k: v for k, v in machine.items() if k not in os.environ
                                                          or os.environ[k] != v})
        processes.append(agent)

        wait_until(lambda: "kitchen is online" in joining.log(), 120,
                   lambda: f"the joined agent online\n{joining.log()}\n{agent.log()}")
        assert joining.popen.wait(30) == 0
        sent = subprocess.run([*lam, "send", "--config", str(config), "--agent", NAME, "--json",
                               "echo hello from kitchen"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={**os.environ, **first})
        assert sent.returncode == 0, sent.stderr
        assert '"response":"hello from kitchen"' in sent.stdout and f'"agent":"{NAME}"' in sent.stdout

        with pytest.raises(BusError):  # the bus has users now: a wrong password is refused
            Bus(BrokerSettings(url=f"mqtt://127.0.0.1:{port}", username=NAME, password="wrong"), component="stranger",
                report=False).start(timeout=3)
    finally:
        for process in reversed(processes):
            process.stop()


def folder(path: Path, embedded: bool) -> UserFolder:
    return UserFolder(path, embedded, prefix=f"j{path.name[-6:]}", discovery="homeassistant")


def login(port: int, users: UserFolder, user: str, password: str | None = None) -> Bus:
    bus = Bus(BrokerSettings(url=f"mqtt://127.0.0.1:{port}", prefix=users.prefix, username=user,
                             password=users.password(user) if password is None else password),
              component=f"test-{user}", report=False)
    bus.start(timeout=5)
    return bus


def check_users_and_acl(port: int, users: UserFolder, reload) -> None:
    """Wrong passwords are refused, an agent cannot send prompts, and a user added later gets in."""
    with pytest.raises(BusError):
        login(port, users, "desk", "wrong")
    monitor = Recorder(BrokerSettings(url=f"mqtt://127.0.0.1:{port}", prefix=users.prefix, username="monitor",
                                      password=users.password("monitor")))
    desk = login(port, users, "desk")
    try:
        desk.publish(Prompt(prompt="computer power shutdown")).wait_for_publish(5)
        desk.publish_raw(desk.topics.agent_status("desk"), b"{}").wait_for_publish(5)
        wait_until(lambda: monitor.on(desk.topics.agent_status("desk")), 10, "desk's own status")
        assert not monitor.on(desk.topics.prompts)  # sent before the status, refused by the ACL
    finally:
        desk.stop()
        monitor.bus.stop()
    users.add(agent_item("attic", ["echo"]))
    reload()
    wait_until(lambda: login(port, users, "attic").stop() or True, 10, "the user added later to get in")


def test_embedded_broker_keeps_users_to_their_acl(tmp_path):
    users = folder(tmp_path / "users", embedded=True)
    users.add("coordinator", "bridge", "monitor", agent_item("desk", ["echo"]))
    port = free_port()
    broker = Process("broker", [sys.executable, "-m", "lamcontrol.broker.main", "--listen", f"0.0.0.0:{port}",
                                "--password-file", str(users.path / "passwd"), "--acl-file", str(users.path / "acl")],
                     tmp_path)
    try:
        wait_for_port(port)
        check_users_and_acl(port, users, reload=lambda: None)  # the broker reads changed files by itself
    finally:
        broker.stop()


def test_nameless_clients_get_in_from_this_machine_only(tmp_path):
    """With users, a client giving no login gets in from this machine, on loopback and on its LAN address alike,
    and not from another machine: two network namespaces joined by a veth pair stand for the two machines."""
    import socket

    from faultkit import Namespaces, netns_problem

    problem = netns_problem()
    if problem:
        pytest.skip(problem)
    users = folder(tmp_path / "users", embedded=True)
    users.add("monitor")
    net = Namespaces()
    port = free_port()
    broker = Process("broker-lan", [*net.exec(net.broker_ns), sys.executable, "-m", "lamcontrol.broker.main",
                                    "--listen", f"0.0.0.0:{port}", "--password-file", str(users.path / "passwd")],
                     tmp_path)

    def nameless(where: str, address: str) -> None:
        with net.entered(where):
            bus = Bus(BrokerSettings(url=f"mqtt://{address}:{port}"), component="nameless", report=False)
            bus.start(5)
            bus.stop()

    def listening() -> bool:
        with net.entered(net.broker_ns), socket.socket() as probe:
            return probe.connect_ex((net.broker_ip, port)) == 0

    try:
        wait_until(listening, 30, "the broker in its namespace")
        nameless(net.broker_ns, net.broker_ip)  # this machine, on its LAN address
        nameless(net.broker_ns, "127.0.0.1")
        with pytest.raises(BusError, match="was reached and refused"):
            nameless(net.agent_ns, net.broker_ip)  # another machine
    finally:
        broker.stop()
        net.close()


@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed")
def test_joining_a_mosquitto_broker(tmp_path):
    out = tmp_path / "mosquitto"
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "lamcontrol", "mosquitto-config", "--out", str(out), "--users",
                           "coordinator,monitor,agent:desk:echo", "--listen", f"127.0.0.1:{port}", "--owner", "root"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    users = UserFolder(out, False, prefix="lam", discovery="homeassistant")
    assert users.items == ["coordinator", "monitor", "agent:desk:echo"]
    users.prefix = f"j{tmp_path.name[-6:]}"
    users.add(agent_item("desk", ["echo"]))  # rewrites the ACL under this test's prefix
    conf = out / "mosquitto.conf"
    conf.write_text(conf.read_text() + "user root\n")
    mosquitto = Process("mosquitto", ["mosquitto", "-c", str(conf)], tmp_path)
    try:
        wait_for_port(port)
        check_users_and_acl(port, users, reload=lambda: mosquitto.signal(1))  # SIGHUP: Mosquitto rereads them
    finally:
        mosquitto.stop()


def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_embedded_broker_over_tls_and_what_join_hands_out(tmp_path):
    cert, key = certificate(tmp_path)
    users = folder(tmp_path / "users", embedded=True)
    users.add("monitor", agent_item("desk", ["echo"]))
    port = free_port()
    broker = Process("broker-tls", [sys.executable, "-m", "lamcontrol.broker.main", "--listen", "",
                                    "--tls-listen", f"0.0.0.0:{port}", "--cert", str(cert), "--key", str(key),
                                    "--password-file", str(users.path / "passwd")], tmp_path)
    try:
        wait_for_port(port)
        assert_tls_login(port, str(cert), "desk", users.password("desk"), users.prefix)
    finally:
        broker.stop()

    from lamcontrol.cli.join import broker_url, commands

    cfg = lamconfig.DEFAULTS | {"embedded_broker": {**lamconfig.DEFAULTS["embedded_broker"],
                                                    "tls_listen": f"0.0.0.0:{port}", "cert_file": str(cert)}}
    url, pem = broker_url(cfg, "192.0.2.7")
    assert url == f"mqtts://192.0.2.7:{port}" and "BEGIN CERTIFICATE" in pem
    script = commands("desk", url, "secret", ["echo"], "lamcontrol @ http://192.0.2.7:1/x.whl", "lam", pem)
    assert "cat > ~/.config/lamcontrol/broker-ca.pem" in script and 'ca_file = "~/.config/lamcontrol/broker-ca.pem"' \
        in script


def test_broker_refuses_what_it_must_not_run(tmp_path):
    for args, complaint in ((["--listen", "0.0.0.0:1"], "refusing to listen on 0.0.0.0:1 without users and passwords"),
                            (["--listen", "", "--tls-listen", "127.0.0.1:1"], "--tls-listen needs --cert and --key"),
                            (["--listen", "nowhere"], "must look like host:port")):
        done = subprocess.run([sys.executable, "-m", "lamcontrol.broker.main", *args], capture_output=True,
                              text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
        assert complaint in done.stderr


def test_join_hands_out_the_mosquitto_listener_the_network_reaches(tmp_path):
    from lamcontrol.cli.join import mosquitto_url

    cert, key = certificate(tmp_path)
    for listen, extra, expected in (("127.0.0.1:1883", [], None), ("0.0.0.0:1884", [], "mqtt://192.0.2.7:1884"),
                                    ("127.0.0.1:1883", ["--cert", str(cert), "--key", str(key), "--tls-listen",
                                                        "0.0.0.0:8884"], "mqtts://192.0.2.7:8884")):
        out = tmp_path / f"mosquitto-{listen.replace(':', '-')}-{len(extra)}"
        done = subprocess.run([sys.executable, "-m", "lamcontrol", "mosquitto-config", "--out", str(out), "--users",
                               "coordinator", "--listen", listen, "--owner", "root", *extra],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        if expected is None:
            with pytest.raises(lamconfig.ConfigError, match="listens on this machine only"):
                mosquitto_url(out / "mosquitto.conf", "192.0.2.7")
            continue
        url, pem = mosquitto_url(out / "mosquitto.conf", "192.0.2.7")
        assert url == expected and (pem == cert.read_text() if extra else pem == "")


def test_the_packed_wheel_holds_what_a_built_one_does(tmp_path):
    """lam join packs this installation without building: the same files as pip's build of the checkout."""
    import zipfile

    from lamcontrol.cli.join import pack_wheel

    packed = zipfile.ZipFile(pack_wheel(tmp_path))
    source = tmp_path / "source"  # a copy: setuptools builds in the source tree, and keeps what it built there
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "built"),
                           str(source)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    built = zipfile.ZipFile(next((tmp_path / "built").glob("lamcontrol-*.whl")))
    assert sorted(packed.namelist()) == sorted(built.namelist())
    for name in built.namelist():
        if ".dist-info/" not in name:
            assert packed.read(name) == built.read(name), name
    info = next(n for n in packed.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert packed.read(info) == built.read(info)


def folder_state(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()} \
        if path.exists() else {}


def test_a_join_that_fails_takes_back_the_user_it_wrote(tmp_path):
    import socket

    state = tmp_path / "state"
    env = {**os.environ, "LAM_STATE_DIR": str(state)}
    config = tmp_path / "config.toml"  # a broker nobody runs: lam join waits for the agent there in vain
    config.write_text(f'[embedded_broker]\nlisten = "127.0.0.1:{free_port()}"\n')
    join = [sys.executable, "-m", "lamcontrol", "join", "-c", "echo", "--address", "127.0.0.1", "--wait", "1",
            "--config", str(config)]
    with socket.socket() as taken:  # serving the wheel fails, after the user was written
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        first = subprocess.run([*join, NAME, "--port", port], capture_output=True, text=True, timeout=120, cwd=ROOT,
                               env=env)
        assert first.returncode == 1 and "Address already in use" in first.stderr, first.stderr
        assert not (state / "mqtt").exists()  # nothing was there before: nothing is left
        made = subprocess.run([*join, NAME], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
        assert "paste these" in made.stdout, made.stderr  # the retry starts clean; its commands are out: kept
        before = folder_state(state / "mqtt")
        assert f"agent:{NAME}:echo" in before["users"].decode()
        again = subprocess.run([*join, "attic", "--port", port], capture_output=True, text=True, timeout=120, cwd=ROOT,
                               env=env)
        assert again.returncode == 1 and "Address already in use" in again.stderr, again.stderr
    assert folder_state(state / "mqtt") == before


@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed")
def test_a_refused_join_writes_nothing(tmp_path):
    out = tmp_path / "mosquitto"
    done = subprocess.run([sys.executable, "-m", "lamcontrol", "mosquitto-config", "--out", str(out), "--users",
                           "coordinator,monitor", "--listen", "127.0.0.1:1883", "--owner", "root"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    before = folder_state(out)
    refused = subprocess.run([sys.executable, "-m", "lamcontrol", "join", NAME, "-c", "echo", "--mosquitto", str(out),
                              "--wait", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert refused.returncode == 1 and "listens on this machine only" in refused.stderr, refused.stderr
    assert folder_state(out) == before
