"""Flood: one source sends prompts as fast as it can while another speaks now and then.

A coordinator with its default limits and two echo agents on a broker; a victim source sends a
few prompts alone first (its floor), then the same again while a flood source publishes
``--flood`` prompts with no pause. Prints counts: the victim's prompts answered and how, the
flood's answered, rejected (over its rate) and lost, prompts answered twice or run twice, and
the journal's size and rows at the end; and, for information only, the victim's median wait
under the flood as a multiple of its floor. Bounded in count and time.

    python bench/bench_flood.py                      # 5,000 prompts of flood, the embedded broker
    python bench/bench_flood.py --flood 20000 --broker mosquitto
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers (bench/ is on the path as the script's folder)

from faultkit import Broker, System  # noqa: E402


def waits(system: System, prompts: list) -> list[float]:
    return [system.load.answered_at[p.id] - p.ts for p in prompts if p.id in system.load.answered_at]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=5000, help="prompts the flood source sends (default 5000)")
    parser.add_argument("--victim", type=int, default=20, help="prompts the other source sends (default 20)")
    parser.add_argument("--broker", choices=["amqtt", "mosquitto"], default="amqtt")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="give up waiting for replies after this")
    parser.add_argument("--source-rate", type=float, help="[coordinator] source_rate (default: its own; 0: no limit, "
                                                          "to see the turns per source alone)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="lam-flood-"))
    broker = Broker(args.broker, folder, f"fl{uuid.uuid4().hex[:8]}", "coordinator,client:load,agent:a1:echo,"
                                                                     "agent:a2:echo")
    rate = f"source_rate = {args.source_rate}\n" if args.source_rate is not None else ""
    system = System(broker, folder, ack_timeout=5.0, coordinator_settings=rate)
    try:
        system.coordinator()
        for agent in ("a1", "a2"):
            system.agent(agent)
        load = system.load
        floor = load.send(args.victim, seconds=0, timeout=60.0, pace=0.25, source="victim")
        load.wait_answered(floor, 60.0)
        flood: list = []
        flooder = threading.Thread(target=lambda: flood.extend(load.send(args.flood, timeout=60.0, pace=0,
                                                                         source="flood")))
        flooder.start()
        victim = load.send(args.victim, seconds=0, timeout=60.0, pace=0.25, source="victim")
        flooder.join(args.max_seconds)
        load.wait_answered(victim + flood, args.max_seconds)
        tally = system.tally(floor + victim + flood)
        first = {p.id: load.replies[p.id][0] for p in victim + flood if load.replies.get(p.id)}
        db = sqlite3.connect(system.journal)
        rows = db.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]
        db.close()
        size = sum(p.stat().st_size for p in folder.glob("journal.db*"))
    finally:
        system.close()
        broker.close()

    def count(prompts: list, status: str) -> int:
        return sum(first.get(p.id) is not None and first[p.id].status == status for p in prompts)

    print(f"flood: {len(flood)} prompts from one source, {args.victim} from another, {args.broker}")
    print(f"{'source':<8}{'sent':>8}{'answered':>10}{'succeeded':>11}{'rejected':>10}{'failed':>8}{'lost':>6}")
    for name, prompts in (("victim", victim), ("flood", flood)):
        print(f"{name:<8}{len(prompts):>8}{sum(p.id in first for p in prompts):>10}{count(prompts, 'succeeded'):>11}"
              f"{count(prompts, 'rejected'):>10}{count(prompts, 'failed'):>8}{sum(p.id not in first for p in prompts):>6}")
    print(f"answered twice {tally.twice}, run twice {tally.ran_twice}, failed but ran {tally.failed_but_ran}")
    print(f"journal at the end: {rows} prompts, {size / 1024:.0f} KiB on disk")
    alone, flooded = waits(system, floor), waits(system, victim)
    if alone and flooded:
        print(f"victim's median wait under the flood: {statistics.median(flooded) / statistics.median(alone):.1f}x "
              f"its wait alone ({statistics.median(flooded):.2f} s against {statistics.median(alone):.3f} s; "
              f"information, not a pass mark)")
    victim_ok = count(victim, "succeeded") == len(victim)
    return 0 if victim_ok and not (tally.lost or tally.twice or tally.ran_twice) else 1


if __name__ == "__main__":
    sys.exit(main())
