"""Bus benchmark: LAMControl's echo round trip against the raw MQTT floor, in one run.

The floor is plain paho clients relaying a message over the same four hops a prompt makes
(prompt -> coordinator -> task -> agent -> result -> coordinator -> reply), each relay in
its own process like the real components. Both sets run side by side (the one not measured
idles). Both are measured sequentially (p50, p99), then pipelined (prompts per second) in
alternating rounds, raw then LAM, so that a noisy neighbour on a shared machine weighs on both
alike; the median rates are printed with LAM/raw ratios, then the CPU time each process spent
per pipelined prompt over all rounds (Linux), which says where the difference goes.

    python bench/bench_bus.py                  # Mosquitto with set_tcp_nodelay true
    python bench/bench_bus.py --broker amqtt   # the embedded broker
    python bench/bench_bus.py --distinct       # every prompt new to the parser (no remembered reading)
    python bench/bench_bus.py --rounds 5       # more pipelined rounds each (default 3)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent

from lamcontrol.bus import BrokerSettings, Bus  # noqa: E402
from lamcontrol.protocol import Prompt, Reply, parse  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start_broker(kind: str, port: int, workdir: Path) -> subprocess.Popen:
    if kind == "amqtt":
        argv = [sys.executable, "-m", "lamcontrol.broker.main", "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING"]
    else:
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                        "max_queued_messages 100000\npersistence false\nlog_dest stderr\nlog_type error\n")
        argv = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)]
    process = subprocess.Popen(argv, cwd=ROOT)
    wait_for_port(port)
    return process


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paho_client(port: int, name: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    client.on_socket_open = lambda c, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.connect("127.0.0.1", port)
    return client


def raw_relay(port: int, listen: str, forward: str, ready) -> None:
    """Forward every message on ``listen/#`` to ``forward`` (a raw stand-in for one component)."""
    client = paho_client(port, f"relay-{listen}")
    outbox: queue.Queue = queue.Queue()
    client.on_message = lambda c, u, m: outbox.put(m.payload)
    client.subscribe(f"{listen}/#", qos=1)
    client.loop_start()
    time.sleep(0.3)
    ready.set()
    while True:
        client.publish(forward, outbox.get(), qos=1)


def raw_coordinator(port: int, ready) -> None:
    """prompt -> task, result -> reply: the raw coordinator's two hops."""
    client = paho_client(port, "raw-coordinator")
    inbox: queue.Queue = queue.Queue()
    client.on_message = lambda c, u, m: inbox.put((m.topic, m.payload))
    client.subscribe([("raw/prompts", 1), ("raw/results", 1)])
    client.loop_start()
    time.sleep(0.3)
    ready.set()
    while True:
        topic, payload = inbox.get()
        client.publish("raw/tasks" if topic == "raw/prompts" else "raw/replies", payload, qos=1)


class Timer:
    """Send one message and wait for its answer, sequentially or pipelined."""

    def __init__(self, send, answers: queue.Queue, pids: dict[str, int]) -> None:
        self.send = send
        self.answers = answers
        self.pids = pids  # the processes whose CPU time a pipelined prompt costs
        self.rates: list[float] = []
        self.cpu = dict.fromkeys(pids, 0.0)  # seconds, over all pipelined rounds
        self.pipelined_count = 0

    def sequential(self, count: int) -> list[float]:
        times = []
        for i in range(count):
            start = time.perf_counter()
            self.send(i)
            self.answers.get(timeout=30)
            times.append(time.perf_counter() - start)
        return times

    def pipelined(self, count: int, window: int = 200) -> None:
        """One round: ``count`` prompts with up to ``window`` unanswered; its rate and CPU are kept."""
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        start = time.perf_counter()
        sent = received = 0
        while received < count:
            while sent < count and sent - received < window:
                self.send(sent)
                sent += 1
            self.answers.get(timeout=60)
            received += 1
        self.rates.append(count / (time.perf_counter() - start))
        for name, pid in self.pids.items():
            self.cpu[name] += cpu_seconds(pid) - before[name]
        self.pipelined_count += count

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu_per_prompt(self) -> dict[str, float]:
        """CPU microseconds per pipelined prompt, per process."""
        return {name: used * 1e6 / self.pipelined_count for name, used in self.cpu.items()}


@contextlib.contextmanager
def raw_floor(port: int, broker: int) -> Iterator[Timer]:
    """The raw relay, started; a timer that sends through it."""
    ctx = multiprocessing.get_context("spawn")
    ready = [ctx.Event(), ctx.Event()]
    workers = [ctx.Process(target=raw_coordinator, args=(port, ready[0]), daemon=True),
               ctx.Process(target=raw_relay, args=(port, "raw/tasks", "raw/results", ready[1]), daemon=True)]
    for worker in workers:
        worker.start()
    for event in ready:
        event.wait(30)
    answers: queue.Queue = queue.Queue()
    client = paho_client(port, "raw-client")
    client.on_message = lambda c, u, m: answers.put(m.payload)
    client.subscribe("raw/replies", qos=1)
    client.loop_start()
    time.sleep(0.3)
    payload = Prompt(prompt="echo hello", source="bench").to_json()
    pids = {"coordinator": workers[0].pid, "agent": workers[1].pid, "broker": broker, "asker": os.getpid()}
    try:
        yield Timer(lambda i: client.publish("raw/prompts", payload, qos=1), answers, pids)
    finally:
        client.loop_stop()
        for worker in workers:
            worker.terminate()


@contextlib.contextmanager
def lam_system(port: int, broker: int, workdir: Path, limits: list[str], distinct: bool,
               log_level: str) -> Iterator[Timer]:
    """A coordinator and an echo agent as ``lam up`` starts them, online; a timer that asks them."""
    url = f"mqtt://127.0.0.1:{port}"
    env = {**os.environ, "LAM_STATE_DIR": str(workdir)}
    config = workdir / "bench.toml"
    # One source sends everything: no rate limit, as the pipeline is what is measured.
    config.write_text(f'[broker]\nurl = "{url}"\n[coordinator]\njournal = "{workdir / "journal.db"}"\n'
                      'source_rate = 0\n')
    quiet = subprocess.DEVNULL if log_level == "INFO" else None
    processes = [subprocess.Popen([sys.executable, "-m", module, "--config", str(config), "--log-level", log_level,
                                   *extra], cwd=ROOT, env=env, stderr=quiet)
                 for module, extra in (("lamcontrol.coordinator.main", []),
                                       ("lamcontrol.agents.main", ["--id", "bench", "-c", "echo", *limits]))]
    answers: queue.Queue = queue.Queue()
    online: set[str] = set()
    bus = Bus(BrokerSettings(url=url), component="bench")
    bus.on(bus.topics.all_replies, lambda topic, payload: answers.put(parse(Reply, payload)))
    def seen_online(topic: str, payload: bytes) -> None:
        if b'"online"' in payload:
            online.add(topic)
    bus.on(f"{bus.topics.prefix}/+/+/status", seen_online)
    bus.on(bus.topics.coordinator_status, seen_online)
    bus.start(timeout=15)
    try:
        deadline = time.monotonic() + 30
        while len(online) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(online) < 2:
            raise RuntimeError("the coordinator and agent did not come online")
        numbers = itertools.count()
        text = (lambda: f"echo hello {next(numbers)}") if distinct else (lambda: "echo hello")
        pids = {"coordinator": processes[0].pid, "agent": processes[1].pid, "broker": broker, "asker": os.getpid()}
        yield Timer(lambda i: bus.publish(Prompt(prompt=text(), source="bench")), answers, pids)
    finally:
        bus.stop()
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(15)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=["mosquitto", "amqtt"], default="mosquitto")
    parser.add_argument("--count", type=int, default=1000, help="sequential round trips")
    parser.add_argument("--burst", type=int, default=3000, help="pipelined prompts per round")
    parser.add_argument("--rounds", type=int, default=3, help="pipelined rounds each, alternating raw and LAM")
    parser.add_argument("--max-concurrent", type=int, help="tasks the agent runs at once (default: lam up's)")
    parser.add_argument("--max-queued", type=int, help="tasks the agent queues beyond that (default: lam up's)")
    parser.add_argument("--distinct", action="store_true",
                        help="a different prompt each time, so the coordinator parses every one afresh")
    parser.add_argument("--log-level", choices=["WARNING", "INFO"], default="WARNING",
                        help="the components' log level; INFO (lam up's) writes a line per prompt and per task, "
                             "here to /dev/null")
    args = parser.parse_args()
    if args.count < 2 or min(args.burst, args.rounds) < 1:
        parser.error("--count must be at least 2 (for percentiles), --burst and --rounds at least 1")
    limits = [arg for flag, value in (("--max-concurrent", args.max_concurrent), ("--max-queued", args.max_queued))
              if value is not None for arg in (flag, str(value))]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as running:
        broker = start_broker(args.broker, port, Path(tmp))
        running.callback(broker.wait, 10)
        running.callback(broker.terminate)
        raw = running.enter_context(raw_floor(port, broker.pid))
        lam = running.enter_context(lam_system(port, broker.pid, Path(tmp), limits, args.distinct, args.log_level))
        raw.sequential(50)
        raw_seq = raw.sequential(args.count)
        lam.sequential(50)
        lam_seq = lam.sequential(args.count)
        for _ in range(args.rounds):
            raw.pipelined(args.burst)
            lam.pipelined(args.burst)
    print(f"broker: {args.broker}, {args.count} sequential round trips, {args.rounds} alternating pipelined rounds "
          f"of {args.burst}, journal on, agent limits: {' '.join(limits) or 'the defaults'}"
          f"{', distinct prompts' if args.distinct else ''}, components log at {args.log_level}")
    print(f"{'':24}{'p50 µs':>10}{'p99 µs':>10}{'prompts/s':>12}   (median; each round)")
    for label, timer, times in (("raw paho, 4 hops", raw, raw_seq), ("LAM echo", lam, lam_seq)):
        print(f"{label:24}{pct(times, 50):10.0f}{pct(times, 99):10.0f}{timer.rate:12.0f}   "
              f"{' '.join(f'{rate:.0f}' for rate in timer.rates)}")
    ratios = " ".join(f"{lam_rate / raw_rate:.2f}" for lam_rate, raw_rate in zip(lam.rates, raw.rates))
    print(f"{'LAM / raw':24}{pct(lam_seq, 50) / pct(raw_seq, 50):10.2f}{pct(lam_seq, 99) / pct(raw_seq, 99):10.2f}"
          f"{lam.rate / raw.rate:12.2f}   {ratios}")
    raw_cpu, lam_cpu = raw.cpu_per_prompt, lam.cpu_per_prompt
    print(f"\nCPU µs per pipelined prompt{''.join(f'{name:>13}' for name in raw_cpu)}{'all':>13}")
    for label, used in (("raw paho, 4 hops", raw_cpu), ("LAM echo", lam_cpu)):
        print(f"{label:27}{''.join(f'{value:13.0f}' for value in used.values())}{sum(used.values()):13.0f}")
    print(f"{'LAM / raw':27}{''.join(f'{lam_cpu[name] / raw_cpu[name]:13.2f}' for name in raw_cpu)}"
          f"{sum(lam_cpu.values()) / sum(raw_cpu.values()):13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
