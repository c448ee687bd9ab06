"""HTTP benchmark: the bridge's prompt round trip against a plain Flask-on-waitress request.

The round trip is ``POST /api/prompt {"prompt": "echo hello", "wait": 10}`` to a running
``lam-bridge``: HTTP in, prompt published on MQTT, coordinator, echo agent, reply, HTTP out.
The floor is a Flask app on waitress (same thread count) answering a JSON POST without
doing anything, measured in the same run over the same keep-alive client; the same echo
round trip from a plain MQTT client shows what the bus itself takes. Each server runs
in its own process; both are measured sequentially and printed as p50 / p99 with ratios.

    python bench/bench_http.py                  # Mosquitto with set_tcp_nodelay true
    python bench/bench_http.py --broker amqtt   # the embedded broker
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent

from bench_bus import Timer, free_port, pct, start_broker, wait_for_port  # noqa: E402
from lamcontrol.bus import BrokerSettings, Bus  # noqa: E402
from lamcontrol.protocol import Prompt  # noqa: E402

THREADS = 16


def plain_server(port: int) -> None:
    """The floor: Flask on waitress, a JSON POST answered with JSON, nothing else."""
    from flask import Flask, jsonify, request
    from waitress import serve

    app = Flask("plain")

    @app.post("/api/prompt")
    def prompt():
        body = request.get_json()
        return jsonify(status="completed", id="plain", response=body["prompt"].removeprefix("echo "))

    serve(app, host="127.0.0.1", port=port, threads=THREADS, _quiet=True)


def timed(session: requests.Session, url: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        response = session.post(url, json={"prompt": "echo hello", "wait": 10}, timeout=30)
        times.append(time.perf_counter() - start)
        if response.status_code != 200 or response.json()["response"] != "hello":
            raise RuntimeError(f"unexpected answer: {response.status_code} {response.text[:200]}")
    return times


def bus_timed(broker_port: int, count: int) -> list[float]:
    """The same echo round trip from an MQTT client, without HTTP: what the bridge adds is the rest."""
    answers: queue.Queue = queue.Queue()
    bus = Bus(BrokerSettings(url=f"mqtt://127.0.0.1:{broker_port}"), component="bench")
    bus.on(bus.topics.all_replies, lambda topic, payload: answers.put(payload))
    bus.start(timeout=15)
    timer = Timer(lambda i: bus.publish(Prompt(prompt="echo hello", source="bench")), answers)
    timer.sequential(100)
    times = timer.sequential(count)
    bus.stop()
    return times


def start_system(broker_port: int, workdir: Path) -> tuple[list[subprocess.Popen], str, str]:
    """Coordinator, echo agent and bridge as processes; the bridge's URL and first API token."""
    url = f"mqtt://127.0.0.1:{broker_port}"
    env = {**os.environ, "LAM_STATE_DIR": str(workdir), "PYTHONUNBUFFERED": "1"}
    config = workdir / "bench.toml"
    config.write_text(f'[broker]\nurl = "{url}"\n[coordinator]\njournal = "{workdir / "journal.db"}"\n'
                      f'source_rate = 0\n[bridge]\nthreads = {THREADS}\n')  # one source: the pipeline, unlimited
    bridge_port = free_port()
    common = ["--config", str(config), "--log-level", "WARNING"]
    processes = [subprocess.Popen([sys.executable, "-m", "lamcontrol.coordinator.main", *common], cwd=ROOT, env=env),
                 subprocess.Popen([sys.executable, "-m", "lamcontrol.agents.main", *common, "--id", "bench", "-c", "echo"],
                                  cwd=ROOT, env=env)]
    bridge = subprocess.Popen([sys.executable, "-m", "lamcontrol.r1_bridge.main", *common, "--listen", f"127.0.0.1:{bridge_port}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    processes.append(bridge)
    token = ""
    while not token:
        line = bridge.stdout.readline()
        if not line:
            raise RuntimeError("the bridge exited before printing its token")
        found = re.search(r"API token:\s+(\S+)", line)
        token = found.group(1) if found else ""
    wait_for_port(bridge_port)
    return processes, f"http://127.0.0.1:{bridge_port}", token


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=["mosquitto", "amqtt"], default="mosquitto")
    parser.add_argument("--count", type=int, default=1000, help="sequential requests per server")
    parser.add_argument("--plain-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        plain_server(args.plain_server)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker_port, plain_port = free_port(), free_port()
        broker = start_broker(args.broker, broker_port, workdir)
        plain = subprocess.Popen([sys.executable, __file__, "--plain-server", str(plain_port)], cwd=ROOT)
        processes = [plain]
        try:
            started, bridge_url, token = start_system(broker_port, workdir)
            processes += started
            wait_for_port(plain_port)
            bridge = requests.Session()
            bridge.headers["Authorization"] = f"Bearer {token}"
            deadline = time.monotonic() + 30
            while bridge.get(f"{bridge_url}/api/health", timeout=10).json()["online_workers"] < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the echo agent did not come online")
                time.sleep(0.2)
            floor = requests.Session()
            timed(floor, f"http://127.0.0.1:{plain_port}/api/prompt", 100)  # warm up both
            timed(bridge, f"{bridge_url}/api/prompt", 100)
            plain_times = timed(floor, f"http://127.0.0.1:{plain_port}/api/prompt", args.count)
            bridge_times = timed(bridge, f"{bridge_url}/api/prompt", args.count)
            bus_times = bus_timed(broker_port, args.count)
        finally:
            for process in reversed(processes):
                process.send_signal(signal.SIGTERM)
                process.wait(15)
            broker.terminate()
            broker.wait(15)
    rows = [("plain Flask on waitress", plain_times), ("bus round trip, MQTT client (echo)", bus_times),
            ("bridge prompt round trip (wait, echo)", bridge_times)]
    print(f"\n{args.count} sequential requests each, broker: {args.broker}")
    print(f"{'':40} {'p50 ms':>9} {'p99 ms':>9}")
    for name, times in rows:
        print(f"{name:40} {pct(times, 50) / 1000:9.2f} {pct(times, 99) / 1000:9.2f}")
    print(f"{'ratio bridge / plain':40} {pct(bridge_times, 50) / pct(plain_times, 50):9.1f}x "
          f"{pct(bridge_times, 99) / pct(plain_times, 99):8.1f}x")
    print(f"{'ratio bridge / (plain + bus)':40} {pct(bridge_times, 50) / (pct(plain_times, 50) + pct(bus_times, 50)):9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
