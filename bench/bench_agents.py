"""Agent benchmark: the idle memory of an agent per capability, and the time from a task to
``accepted`` and to ``succeeded`` for each action, in one run.

Each capability runs in a real ``lam-agent`` process against the same real parts the tests use:
headless Chromium and local stand-in sites (browser), Xvfb and a PulseAudio null sink
(computer), the Telegram and Discord stand-ins (messaging), the Groq stand-in (ai), and a real
Home Assistant when ``tests/hass/install.py`` has already installed one (home). Tasks are
published straight on ``lam/tasks/<capability>`` on a Mosquitto broker (``set_tcp_nodelay
true``), one at a time, and timed until their results arrive; one untimed task per action
warms up first. The floor is a plain paho publish -> echo -> receive round trip on the same
broker.

    python bench/bench_agents.py                       # every capability, 20 tasks per action
    python bench/bench_agents.py --count 50 --only echo,ai
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from bench_bus import Timer, free_port, paho_client, pct, relay, start_broker  # noqa: E402
from desktop_parts import SoundServer, start_xvfb  # noqa: E402
from hass_server import HASS, HomeAssistant  # noqa: E402
from helpers import Process  # noqa: E402
from lamcontrol.bus import BrokerSettings, Bus  # noqa: E402
from lamcontrol.protocol import Presence, Result, Task, new_id, parse  # noqa: E402
from standins import DISCORD_TOKEN, TELEGRAM_TOKEN, StandIn, discord_api, site_routes, telegram_api  # noqa: E402
from stubs.groq_server import GroqStub  # noqa: E402

CAPABILITIES = ["echo", "browser", "computer", "messaging", "ai", "home"]
TASK_TIMEOUT = 60.0  # seconds a task may take before the run gives up on it
IDLE = 2.0  # seconds an agent sits idle before its memory is read


@dataclass
class Setup:
    """What one capability's agent needs: its settings, environment, and the actions to time."""

    settings: dict
    actions: list[tuple[str, str, dict]]  # (label, action, args)
    env: dict = field(default_factory=dict)
    tables: dict[str, dict] = field(default_factory=dict)  # further TOML tables, e.g. contacts


def toml(tables: dict[str, dict]) -> str:
    """TOML for flat tables of strings, numbers, booleans and string lists (JSON spells them alike)."""
    return "".join(f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())
                   for name, table in tables.items())


# -- the real parts each capability works against ----------------------------------------------

@contextlib.contextmanager
def echo_setup(tmp: Path) -> Iterator[Setup]:
    yield Setup({}, [("say", "say", {"text": "hello"})])


@contextlib.contextmanager
def browser_setup(tmp: Path) -> Iterator[Setup]:
    with StandIn(site_routes()) as sites:
        yield Setup({"headless": True, "profile_dir": str(tmp / "profile"), "page_timeout": 15.0,
                     **{f"{site}_url": sites.url for site in ("google", "youtube", "gmail", "amazon")}},
                    [("site", "site", {"url": f"{sites.url}/site.html"}),
                     ("google", "google", {"query": "weezer"}),
                     ("youtube", "youtube", {"query": "weezer"}),
                     ("youtube play", "youtube", {"query": "weezer", "play": True}),
                     ("gmail", "gmail", {"query": "from:jason invoice"}),
                     ("amazon", "amazon", {"query": "usb cable"})],
                    {"SE_MANAGER_PATH": "/nonexistent/selenium-manager"})


@contextlib.contextmanager
def computer_setup(tmp: Path) -> Iterator[Setup]:
    (tmp / "sound").mkdir()
    xvfb, display = start_xvfb()
    try:
        sound = SoundServer("pulseaudio", tmp / "sound")
        try:
            yield Setup({}, [("volume 50", "volume", {"level": 50}), ("volume up", "volume", {"level": "up"}),
                             ("volume mute", "volume", {"level": "mute"}), ("media next", "media", {"key": "next"}),
                             ("run", "run", {"app": "nothing"}), ("power lock", "power", {"mode": "lock"})],
                        {"DISPLAY": display, "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent", **sound.env},
                        {"capabilities.computer.allowed_apps": {"nothing": ["true"]},
                         "capabilities.computer.power_commands": {"lock": ["true"]}})
        finally:
            sound.stop()
    finally:
        xvfb.terminate()
        xvfb.wait(10)


@contextlib.contextmanager
def messaging_setup(tmp: Path) -> Iterator[Setup]:
    (tmp / "telegram.token").write_text(TELEGRAM_TOKEN + "\n")
    (tmp / "discord.token").write_text(DISCORD_TOKEN + "\n")
    with StandIn(telegram_api()) as telegram, StandIn(discord_api()) as discord:
        yield Setup({"telegram_token_file": str(tmp / "telegram.token"), "telegram_api_url": telegram.url,
                     "discord_token_file": str(tmp / "discord.token"), "discord_api_url": f"{discord.url}/api/v10"},
                    [(platform, platform, {"name": "Jason", "message": "see you at eight"})
                     for platform in ("telegram", "discord")],
                    {"LAM_TELEGRAM_TOKEN": "", "LAM_DISCORD_TOKEN": ""},
                    {"capabilities.messaging.contacts.Jason": {"telegram": 12345,
                                                               "discord": "user:80351110224678912"}})


@contextlib.contextmanager
def ai_setup(tmp: Path) -> Iterator[Setup]:
    with GroqStub("Paris is the capital of France.") as stub:
        yield Setup({"api_key": "bench-key", "base_url": stub.url, "max_retries": 0, "timeout": 10.0},
                    [("ask", "ask", {"prompt": "what is the capital of france"})],
                    {"GROQ_API_KEY": "", "GROQ_BASE_URL": ""})


def installed_hass() -> str:
    """The ``hass`` executable ``tests/hass/install.py`` installed, or '' when there is none yet."""
    spec = importlib.util.spec_from_file_location("hass_install", HASS / "install.py")
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    target = install.venv_dir()
    stamp, hass = target / ".lamcontrol-ready", target / "bin" / "hass"
    ready = stamp.exists() and stamp.read_text() == install.stamp_text() and hass.exists()
    return str(hass) if ready else ""


@contextlib.contextmanager
def home_setup(tmp: Path) -> Iterator[Setup]:
    (tmp / "hass").mkdir()
    server = HomeAssistant(installed_hass(), tmp / "hass")
    try:
        server.start()
        server.onboard()
        (tmp / "hass.token").write_text(server.token)
        yield Setup({"url": server.url, "token_file": str(tmp / "hass.token")},
                    [("say", "say", {"text": "turn off the desk lamp"}), ("scene", "scene", {"name": "movie night"}),
                     ("script", "script", {"name": "good night"}), ("run", "run", {"name": "good night"})])
    finally:
        server.stop()


SETUPS = {"echo": echo_setup, "browser": browser_setup, "computer": computer_setup,
          "messaging": messaging_setup, "ai": ai_setup, "home": home_setup}


# -- memory ---------------------------------------------------------------------------------------

def status_kb(pid: int, field_name: str = "VmRSS") -> int:
    """A ``/proc/<pid>/status`` field in kB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def start_time(pid: int) -> str:
    """When the process started (field 22 of ``/proc/<pid>/stat``), so a reused pid is never mistaken for it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass
class Memory:
    agent_kb: int
    children: int
    children_rss_kb: int
    children_pss_kb: int

    @classmethod
    def of(cls, pid: int) -> Memory:
        below = descendants(pid)
        return cls(status_kb(pid), len(below), sum(status_kb(p) for p in below), sum(pss_kb(p) for p in below))


# -- timing tasks -----------------------------------------------------------------------------------

class TaskTimer:
    """Publishes tasks on the bus and notes when their results arrive."""

    def __init__(self, url: str) -> None:
        self.bus = Bus(BrokerSettings(url=url), component="bench-agents", report=False)
        self.topics = self.bus.topics
        self.results: dict[str, queue.Queue] = {}
        self.presence: dict[str, Presence] = {}
        self.bus.on(self.topics.all_results, self._on_result)
        self.bus.on(self.topics.all_agent_statuses, self._on_presence)
        self.bus.start(timeout=15)

    def _on_result(self, topic: str, payload: bytes) -> None:
        arrived = time.perf_counter()
        result = parse(Result, payload)
        if result.task_id in self.results:
            self.results[result.task_id].put((arrived, result))

    def _on_presence(self, topic: str, payload: bytes) -> None:
        if payload:
            presence = parse(Presence, payload)
            self.presence[presence.agent] = presence

    def wait_online(self, agent_id: str, capability: str, process: Process, timeout: float = 120.0) -> Presence:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            presence = self.presence.get(agent_id)
            if presence and presence.state == "online" and capability in presence.capabilities:
                return presence
            if process.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"agent {agent_id} did not come online with {capability}:\n{process.log()[-3000:]}")

    def run(self, agent_id: str, capability: str, action: str, args: dict) -> tuple[float, float, Result]:
        """Publish one task and wait for its end: seconds to ``accepted``, to the end, and the final result."""
        task_id = new_id()
        answers: queue.Queue = queue.Queue()
        self.results[task_id] = answers
        now = time.time()
        task = Task(task_id=task_id, prompt_id=new_id(), capability=capability, action=action, agent=agent_id,
                    args=args, accept_by=now + 10, deadline=now + TASK_TIMEOUT)
        try:
            start = time.perf_counter()
            self.bus.publish(task)
            accepted = 0.0
            while True:
                try:
                    arrived, result = answers.get(timeout=TASK_TIMEOUT + 10)
                except queue.Empty:
                    raise RuntimeError(f"no result for {capability} {action} from {agent_id}") from None
                if result.state == "accepted":
                    accepted = arrived - start
                else:
                    return accepted, arrived - start, result
        finally:
            del self.results[task_id]

    def close(self) -> None:
        self.bus.stop()


@dataclass
class Row:
    capability: str
    action: str
    accepted: list[float]
    succeeded: list[float]
    failures: list[str]
    idle: Memory | None = None  # set on each capability's first row only
    after_first: Memory | None = None
    after_all: Memory | None = None
    first: float = 0.0  # seconds the very first task of the agent took


def bench_capability(name: str, timer: TaskTimer, url: str, tmp: Path, count: int) -> list[Row]:
    """Start one agent offering ``name``, measure its idle memory, then time every action."""
    tmp.mkdir()
    with SETUPS[name](tmp) as setup:
        config = tmp / "agent.toml"
        config.write_text(toml({"broker": {"url": url}, f"capabilities.{name}": setup.settings, **setup.tables}))
        agent_id = f"bench-{name}"
        process = Process(f"agent-{name}", [sys.executable, "-m", "lamcontrol.agents.main", "--id", agent_id, "-c", name,
                                            "--config", str(config), "--log-level", "WARNING"],
                          tmp, {"LAM_STATE_DIR": str(tmp), **setup.env})
        try:
            timer.wait_online(agent_id, name, process)
            time.sleep(IDLE)
            idle = Memory.of(process.popen.pid)
            rows = []
            for label, action, args in setup.actions:
                row = Row(name, label, [], [], [])
                _, first, result = timer.run(agent_id, name, action, args)  # warm-up, untimed
                if result.state != "succeeded":
                    raise RuntimeError(f"{name} {label} {result.state}: {result.message}\n{process.log()[-3000:]}")
                if not rows:
                    time.sleep(IDLE)
                    row.idle, row.first, row.after_first = idle, first, Memory.of(process.popen.pid)
                for _ in range(count):
                    accepted, done, result = timer.run(agent_id, name, action, args)
                    if result.state == "succeeded":
                        row.accepted.append(accepted)
                        row.succeeded.append(done)
                    else:
                        row.failures.append(f"{result.state}: {result.message}")
                rows.append(row)
            time.sleep(IDLE)
            rows[0].after_all = Memory.of(process.popen.pid)
            return rows
        finally:
            started = {pid: start_time(pid) for pid in descendants(process.popen.pid)}
            process.stop()
            for pid, since in started.items():  # a browser the agent could not close in time
                if since and start_time(pid) == since:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def raw_floor(port: int, count: int) -> list[float]:
    """Plain paho: publish, a relay process echoes it back from its message callback, receive; sequential
    round trips."""
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    echo = spawn.Process(target=relay, args=(port, "raw-agent", {"raw/tasks": "raw/results"}, False, ready), daemon=True)
    echo.start()
    client = paho_client(port, "raw-client")
    try:
        if not ready.wait(30):
            raise RuntimeError("the raw relay did not start")
        answers: queue.Queue = queue.Queue()
        subscribed = threading.Event()
        client.on_subscribe = lambda *args: subscribed.set()
        client.on_message = lambda c, u, m: answers.put(m.payload)
        client.subscribe("raw/results", qos=1)
        client.loop_start()
        subscribed.wait(10)
        payload = Task(task_id=new_id(), prompt_id=new_id(), capability="echo", action="say", agent="raw",
                       args={"text": "hello"}).to_json()
        timer = Timer(lambda i: client.publish("raw/tasks", payload, qos=1), answers, {})
        timer.sequential(50)
        return timer.sequential(count)
    finally:
        client.loop_stop()
        client.disconnect()
        echo.terminate()
        echo.join(10)


# -- report ---------------------------------------------------------------------------------------

def ms(values: list[float], q: int) -> str:
    return f"{pct(values, q) / 1000:.1f}" if len(values) >= 2 else "-"


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f}"


def report(rows: list[Row], floor: list[float], count: int, skipped: dict[str, str]) -> None:
    print(f"\nMosquitto (set_tcp_nodelay true), tasks published on lam/tasks/<capability> one at a time, "
          f"{count} per action after one warm-up; RSS of the agent process in MB: idle, after its first task, "
          "at the end; times in ms")
    header = (f"{'capability':<11}{'action':<14}{'RSS idle':>9}{'1st task':>9}{'end':>5}{'accepted p50':>13}{'p99':>8}"
              f"{'succeeded p50':>14}{'p99':>9}{'failed':>7}")
    print(header)
    print("-" * len(header))
    for row in rows:
        idle, first, end = (mb(m.agent_kb) if m else "" for m in (row.idle, row.after_first, row.after_all))
        print(f"{row.capability:<11}{row.action:<14}{idle:>9}{first:>9}{end:>5}{ms(row.accepted, 50):>13}"
              f"{ms(row.accepted, 99):>8}{ms(row.succeeded, 50):>14}{ms(row.succeeded, 99):>9}{len(row.failures):>7}")
    print("-" * len(header))
    print(f"{'raw paho publish -> echo -> receive':<48}{ms(floor, 50):>13}{ms(floor, 99):>8}"
          f"   ({len(floor)} round trips)")
    print("\nfirst task of each agent (cold), and the processes it started:")
    for row in rows:
        if row.idle:
            line = f"  {row.capability:<10} first {row.action} {row.first * 1000:.0f} ms"
            for when, memory in (("idle", row.idle), ("after it", row.after_first), ("at the end", row.after_all)):
                if memory and memory.children:
                    line += (f"; {when}: {memory.children} child processes, RSS sum {mb(memory.children_rss_kb)} MB, "
                             f"PSS sum {mb(memory.children_pss_kb)} MB")
            print(line)
    for row in rows:
        for failure in sorted(set(row.failures)):
            print(f"  {row.capability} {row.action}: {row.failures.count(failure)} x {failure}")
    for name, why in skipped.items():
        print(f"  {name}: skipped ({why})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20, help="timed tasks per action")
    parser.add_argument("--only", default=",".join(CAPABILITIES), help="comma-separated capabilities to measure")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(CAPABILITIES)
    if unknown or args.count < 2:
        parser.error(f"unknown capabilities: {', '.join(sorted(unknown))}" if unknown else "--count must be at least 2")
    skipped = {}
    if "home" in names and not installed_hass():
        names.remove("home")
        skipped["home"] = "no Home Assistant installed yet: run python tests/hass/install.py"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every finally below runs
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-agents-") as tmp:
        broker = start_broker("mosquitto", port, Path(tmp))
        try:
            floor = raw_floor(port, 200)
            timer = TaskTimer(url)
            try:
                for name in names:
                    print(f"measuring {name} ...", file=sys.stderr, flush=True)
                    rows += bench_capability(name, timer, url, Path(tmp) / name, args.count)
            finally:
                timer.close()
        finally:
            broker.terminate()
            try:
                broker.wait(10)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait(10)
    report(rows, floor, args.count, skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
