"""Soak: many prompts through a coordinator and ten echo agents, memory sampled all along.

Each process's resident memory (RSS, from /proc) is sampled every few seconds; at the end it
prints the first, peak and last sample per process, the journal's size on disk, and the counts
the fault tests use: prompts answered exactly once, lost, answered twice, tasks run twice (from
the agents' own run records).

    python bench/bench_soak.py                        # 10 agents, 10,000 prompts, Mosquitto
    python bench/bench_soak.py --prompts 500 --broker amqtt
    python bench/bench_soak.py --distinct-sources    # memory per distinct `source`
    python bench/bench_soak.py --distinct-sources --sources 1000000000   # as if unbounded
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers (bench/ is on the path as the script's folder)

from faultkit import Broker, System  # noqa: E402


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Sampler(threading.Thread):
    """RSS of each named process every ``interval`` seconds."""

    def __init__(self, pids: dict[str, int], interval: float) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.samples: dict[str, list[float]] = {name: [] for name in pids}
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            for name, pid in self.pids.items():
                value = rss_mb(pid)
                if value is not None:
                    self.samples[name].append(value)
            if self.stopping.wait(self.interval):
                return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--broker", choices=["mosquitto", "amqtt"], default="mosquitto")
    parser.add_argument("--window", type=int, default=200, help="prompts in flight at most (default 200)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between memory samples")
    parser.add_argument("--distinct-sources", action="store_true", help="every prompt from a source of its own")
    parser.add_argument("--sources", type=int, default=0,
                        help="[coordinator] sources: how many sources' recent commands are kept (default: its own)")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="give up after this long")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="lam-soak-"))
    agents = [f"soak{n}" for n in range(args.agents)]
    users = ",".join(["coordinator", "client:load", *(f"agent:{a}:echo" for a in agents)])
    prefix = f"s{uuid.uuid4().hex[:8]}"
    broker = Broker(args.broker, folder, prefix, users, "--legacy-results")
    limits = "source_rate = 0\n"  # the soak measures the pipeline, not the per-source rate limit
    system = System(broker, folder, ack_timeout=5.0,
                    coordinator_settings=limits + (f"sources = {args.sources}\n" if args.sources else ""))
    try:
        system.coordinator()
        for agent in agents:
            system.agent(agent)
        pids = {"broker": broker.process.popen.pid,
                **{key.split("#")[0]: p.popen.pid for key, p in system.processes.items()}}
        sampler = Sampler(pids, args.interval)
        sampler.start()
        load = system.load
        prompts = []
        started = time.monotonic()
        give_up = started + args.max_seconds
        while len(prompts) < args.prompts and time.monotonic() < give_up:
            if len(prompts) - len(load.replies) >= args.window:
                time.sleep(0.005)
                continue
            source = f"soak-{len(prompts)}" if args.distinct_sources else "soak"
            prompts += load.send(1, seconds=0, timeout=60.0, pace=0, source=source)
        sent = time.monotonic()
        load.wait_answered(prompts, max(10.0, give_up - time.monotonic()))
        elapsed = time.monotonic() - started
        sampler.stopping.set()
        sampler.join()
        tally = system.tally(prompts)
        journal = sum(p.stat().st_size for p in folder.glob("journal.db*"))
    finally:
        system.close()
        broker.close()

    print(f"soak: {len(prompts)} prompts, {args.agents} agents, {args.broker}; sent in {sent - started:.1f} s, "
          f"all answered after {elapsed:.1f} s ({len(prompts) / elapsed:.0f} prompts/s)")
    print(f"answered once {tally.once}, lost {tally.lost}, answered twice {tally.twice}, accepted by two agents "
          f"{tally.accepted_by_two}, run twice {tally.ran_twice}, statuses {dict(tally.statuses)}")
    print(f"journal on disk at the end: {journal / 1024 / 1024:.1f} MB")
    print(f"{'process':<14}{'first MB':>10}{'peak MB':>10}{'last MB':>10}{'samples':>9}")
    for name, values in sampler.samples.items():
        if values:
            print(f"{name:<14}{values[0]:>10.1f}{max(values):>10.1f}{values[-1]:>10.1f}{len(values):>9}")
    return 0 if tally.clean() else 1


if __name__ == "__main__":
    sys.exit(main())
