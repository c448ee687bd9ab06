"""Idle benchmark: how often each process ``lam up`` starts wakes up, and its memory, with nothing to do.

A house runs LAMControl all day on a small machine, so an idle process should sleep until it
has something to do. This starts ``lam up`` (embedded broker, coordinator, agent, bridge) on
loopback ports, waits until it is up and has settled, then counts each process's context
switches (voluntary and not, over all its threads, from /proc; Linux) over a window, with its
CPU time and its memory (RSS). The floor, in the same run, is a plain paho client in a process
of its own, connected to the same broker and doing nothing (``loop_forever``).

    python bench/bench_idle.py                   # 60 s window (two heartbeats) after 10 s settling
    python bench/bench_idle.py --window 300      # a longer window
    python bench/bench_idle.py -c echo           # offer only echo (default: lam up's, every installed one)
    python bench/bench_idle.py --threads         # the busiest threads of each process too
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
FLOOR = """
import socket, sys
import paho.mqtt.client as mqtt
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="idle-floor")
client.on_socket_open = lambda c, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
client.on_connect = lambda c, u, f, r, p: c.subscribe("lam/idle-floor/#", qos=1)
client.connect("127.0.0.1", int(sys.argv[1]), keepalive=30)
client.loop_forever()
"""
NAMES = {"lamcontrol.broker.main": "broker", "lamcontrol.coordinator.main": "coordinator",
         "lamcontrol.agents.main": "agent", "lamcontrol.r1_bridge.main": "bridge"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def role(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return next((name for module, name in NAMES.items() if module in argv), argv[-1])


@dataclass
class Sample:
    """What a process had used at one moment: context switches per thread, CPU seconds."""

    switches: dict[int, int]
    cpu: float

    @classmethod
    def of(cls, pid: int) -> Sample:
        switches = {}
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines())
                switches[int(task.name)] = (int(status["voluntary_ctxt_switches"])
                                            + int(status["nonvoluntary_ctxt_switches"]))
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return cls(switches, (int(fields[11]) + int(fields[12])) / TICKS)


def rss_mb(pid: int) -> float:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024


@contextlib.contextmanager
def lam_up(workdir: Path, capabilities: list[str]):
    """``lam up`` with its own broker and bridge on free loopback ports; yields its process once it is up."""
    port = free_port()
    config = workdir / "config.toml"
    config.write_text(f'[embedded_broker]\nlisten = "127.0.0.1:{port}"\n'
                      f'[coordinator]\njournal = "{workdir / "journal.db"}"\n'
                      f'[bridge]\nlisten = "127.0.0.1:{free_port()}"\n'
                      f'[openclaw]\nhost = "127.0.0.1"\nport = {free_port()}\n')
    offered = [arg for name in capabilities for arg in ("-c", name)]
    log = (workdir / "lam-up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "lamcontrol", "up", "--config", str(config), "--agent-id", "idle",
                           *offered], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "LAM_STATE_DIR": str(workdir / "state")})
    try:
        deadline = time.monotonic() + 90
        while "LAMControl is up" not in (workdir / "lam-up.log").read_text(errors="replace"):
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lam up did not come up:\n{(workdir / 'lam-up.log').read_text()}")
            time.sleep(0.2)
        yield up, port
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=60.0, help="seconds over which wake-ups are counted")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait after lam up is up")
    parser.add_argument("-c", "--capability", action="append", default=[],
                        help="offer this capability (repeatable; default: every installed one, as lam up does)")
    parser.add_argument("--threads", action="store_true", help="also list each process's busiest threads")
    args = parser.parse_args()
    if args.window < 1 or args.settle < 0:
        parser.error("--window must be at least 1 second and --settle not negative")
    with tempfile.TemporaryDirectory() as tmp, lam_up(Path(tmp), args.capability) as (up, port):
        floor = subprocess.Popen([sys.executable, "-c", FLOOR, str(port)])
        try:
            time.sleep(args.settle)
            pids = {"lam up": up.pid, **{role(pid): pid for pid in children_of(up.pid)}, "raw paho (floor)": floor.pid}
            before = {name: Sample.of(pid) for name, pid in pids.items()}
            time.sleep(args.window)
            after = {name: Sample.of(pid) for name, pid in pids.items()}
            memory = {name: rss_mb(pid) for name, pid in pids.items()}
        finally:
            floor.terminate()
            floor.wait(10)
    print(f"lam up idle for {args.window:g} s after {args.settle:g} s settling, "
          f"capabilities: {' '.join(args.capability) or 'every installed one'}")
    print(f"{'process':20}{'threads':>8}{'wake-ups/s':>12}{'CPU %':>8}{'RSS MB':>8}{'RSS / floor':>13}")
    floor_rss = memory["raw paho (floor)"]
    for name in pids:
        woke = {tid: count - before[name].switches.get(tid, 0) for tid, count in after[name].switches.items()}
        cpu = (after[name].cpu - before[name].cpu) / args.window * 100
        print(f"{name:20}{len(woke):8}{sum(woke.values()) / args.window:12.2f}{cpu:8.2f}{memory[name]:8.1f}"
              f"{memory[name] / floor_rss:13.2f}")
        if args.threads:
            for tid, count in sorted(woke.items(), key=lambda item: -item[1])[:5]:
                if count:
                    print(f"{'':4}thread {tid:<10}{count / args.window:18.2f}")
    quiet = all(sum(after[name].switches.values()) - sum(before[name].switches.values()) <= args.window
                for name in pids if name != "raw paho (floor)")
    print(f"every LAMControl process at most 1 wake-up per second: {'yes' if quiet else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
