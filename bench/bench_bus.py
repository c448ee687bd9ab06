"""Bus benchmark: LAMControl's echo round trip against the raw MQTT floor, in one run.

The floor is plain paho clients relaying a message over the same four hops a prompt makes
(prompt -> coordinator -> task -> agent -> result -> coordinator -> reply), each relay in its
own process like the real components, publishing straight from paho's message callback (the
tight floor). A second raw set hands each message to another thread before publishing it (the
handoff relay, what a component that works off paho's thread pays at the least). The three
sets run side by side (those not measured idle). Each is measured sequentially (p50, p99), then
pipelined (prompts per second) in alternating rounds, so that a noisy neighbour on a shared
machine weighs on all alike; the median rates are printed, then LAM's figures as ratios against
the tight floor and against the handoff relay, then the CPU time each process spent per
pipelined prompt over all rounds (Linux), which says where the difference goes. The components
log at INFO, as ``lam up`` runs them.

    python bench/bench_bus.py                  # Mosquitto with set_tcp_nodelay true
    python bench/bench_bus.py --broker amqtt   # the embedded broker
    python bench/bench_bus.py --distinct       # every prompt new to the parser (no remembered reading)
    python bench/bench_bus.py --rounds 5       # more pipelined rounds each (default 3)
    python bench/bench_bus.py --log-level WARNING  # components quieter than lam up runs them
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
sys.path.insert(0, str(ROOT))

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


def relay(port: int, name: str, routes: dict[str, str], handoff: bool, ready) -> None:
    """A raw stand-in for one component: every message on a topic of ``routes`` goes on to its value.

    The tight relay publishes from paho's callback (paho allows it; only waiting for a publish
    there is forbidden); the handoff relay gives each message to another thread first, through a
    queue, as a component that works off paho's thread would."""
    client = paho_client(port, name)
    outbox: queue.Queue = queue.Queue()
    if handoff:
        client.on_message = lambda c, u, m: outbox.put((routes[m.topic], m.payload))
    else:
        client.on_message = lambda c, u, m: c.publish(routes[m.topic], m.payload, qos=1)
    client.on_subscribe = lambda *args: ready.set()
    client.subscribe([(topic, 1) for topic in routes])
    client.loop_start()
    while True:
        client.publish(*outbox.get(), qos=1)


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
def raw_floor(port: int, broker: int, handoff: bool) -> Iterator[Timer]:
    """A raw coordinator and agent (prompt -> task, task -> result, result -> reply), started; a timer
    that sends through them."""
    kind = "handoff" if handoff else "tight"
    ctx = multiprocessing.get_context("spawn")
    routes = {"coordinator": {f"{kind}/prompts": f"{kind}/tasks", f"{kind}/results": f"{kind}/replies"},
              "agent": {f"{kind}/tasks": f"{kind}/results"}}
    ready = {name: ctx.Event() for name in routes}
    workers = {name: ctx.Process(target=relay, args=(port, f"{kind}-{name}", routes[name], handoff, ready[name]),
                                 daemon=True) for name in routes}
    for worker in workers.values():
        worker.start()
    for event in ready.values():
        event.wait(30)
    answers: queue.Queue = queue.Queue()
    client = paho_client(port, f"{kind}-asker")
    client.on_message = lambda c, u, m: answers.put(m.payload)
    client.subscribe(f"{kind}/replies", qos=1)
    client.loop_start()
    time.sleep(0.3)
    payload = Prompt(prompt="echo hello", source="bench").to_json()
    pids = {"coordinator": workers["coordinator"].pid, "agent": workers["agent"].pid, "broker": broker,
            "asker": os.getpid()}
    try:
        yield Timer(lambda i: client.publish(f"{kind}/prompts", payload, qos=1), answers, pids)
    finally:
        client.loop_stop()
        for worker in workers.values():
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
    parser.add_argument("--rounds", type=int, default=3, help="pipelined rounds each, alternating the three sets")
    parser.add_argument("--max-concurrent", type=int, help="tasks the agent runs at once (default: lam up's)")
    parser.add_argument("--max-queued", type=int, help="tasks the agent queues beyond that (default: lam up's)")
    parser.add_argument("--distinct", action="store_true",
                        help="a different prompt each time, so the coordinator parses every one afresh")
    parser.add_argument("--log-level", choices=["INFO", "WARNING"], default="INFO",
                        help="the components' log level: INFO (lam up's) writes a line per prompt and per task, "
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
        sets = {"tight floor": running.enter_context(raw_floor(port, broker.pid, handoff=False)),
                "handoff relay": running.enter_context(raw_floor(port, broker.pid, handoff=True)),
                "LAM echo": running.enter_context(lam_system(port, broker.pid, Path(tmp), limits, args.distinct,
                                                             args.log_level))}
        sequential = {}
        for label, timer in sets.items():
            timer.sequential(50)
            sequential[label] = timer.sequential(args.count)
        for _ in range(args.rounds):
            for timer in sets.values():
                timer.pipelined(args.burst)
    print(f"broker: {args.broker}, {args.count} sequential round trips, {args.rounds} alternating pipelined rounds "
          f"of {args.burst}, journal on, agent limits: {' '.join(limits) or 'the defaults'}"
          f"{', distinct prompts' if args.distinct else ''}, components log at {args.log_level}")
    report(sets, sequential)
    return 0


def report(sets: dict[str, Timer], sequential: dict[str, list[float]]) -> None:
    """Each set's figures, then LAM's as ratios against the tight floor and against the handoff relay."""
    floor, relay, lam = sets
    print(f"{'':24}{'p50 µs':>10}{'p99 µs':>10}{'prompts/s':>12}   (median; each round)")
    for label, timer in sets.items():
        times = sequential[label]
        print(f"{label:24}{pct(times, 50):10.0f}{pct(times, 99):10.0f}{timer.rate:12.0f}   "
              f"{' '.join(f'{rate:.0f}' for rate in timer.rates)}")
    for base in (floor, relay):
        ratios = " ".join(f"{mine / theirs:.2f}" for mine, theirs in zip(sets[lam].rates, sets[base].rates))
        print(f"{f'LAM / {base}':24}{pct(sequential[lam], 50) / pct(sequential[base], 50):10.2f}"
              f"{pct(sequential[lam], 99) / pct(sequential[base], 99):10.2f}"
              f"{sets[lam].rate / sets[base].rate:12.2f}   {ratios}")
    cpu = {label: timer.cpu_per_prompt for label, timer in sets.items()}
    names = list(cpu[floor])
    print(f"\nCPU µs per pipelined prompt{''.join(f'{name:>13}' for name in names)}{'all':>13}")
    for label, used in cpu.items():
        print(f"{label:27}{''.join(f'{used[name]:13.0f}' for name in names)}{sum(used.values()):13.0f}")
    for base in (floor, relay):
        print(f"{f'LAM / {base}':27}{''.join(f'{cpu[lam][name] / cpu[base][name]:13.2f}' for name in names)}"
              f"{sum(cpu[lam].values()) / sum(cpu[base].values()):13.2f}")


if __name__ == "__main__":
    sys.exit(main())
