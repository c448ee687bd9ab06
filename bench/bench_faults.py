"""Faults, measured: the fault tests run as a bench, their counts gathered into one table.

Runs ``tests/test_faults.py`` and, on a three-node NATS cluster with two coordinators,
``tests/test_failover.py`` (``--runs`` times; ``-k`` to pick tests) with ``$LAM_FAULT_REPORT``
set, so each test's tally (see ``tests/faultkit.py``) is written down whether or not it passes,
then prints per fault: prompts sent, answered exactly once / lost / answered twice, tasks run
twice (from the echo agents' own records), prompts answered `failed` whose task ran all the same,
prompts whose one reply came twice (a reply sent again after a coordinator restart: the same
message, byte for byte), and recovery: the longest any prompt sent from the fault on waited for
its reply, as a multiple of the configured ack timeout, and in seconds, with the time from the
fault to the first reply to a prompt sent after it (for a failover: how long the house was deaf).
The tests never assert these. Needs root for the network-namespace faults and the small disks of
the journal faults, as CI has.

    python bench/bench_faults.py                 # every fault test once
    python bench/bench_faults.py --runs 3 -k "sigkill or sigstop"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COUNTS = ("prompts", "once", "lost", "twice", "copies", "ran_twice", "accepted_by_two", "failed_but_ran")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="times to run the fault tests (default 1)")
    parser.add_argument("-k", default="", help="pytest -k expression choosing the faults")
    args = parser.parse_args()
    report = Path(tempfile.mkdtemp(prefix="lam-faults-")) / "report.jsonl"
    failed_runs = 0
    for run in range(args.runs):
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_faults.py",
                   "tests/test_failover.py"]
        done = subprocess.run(command + (["-k", args.k] if args.k else []), cwd=ROOT, timeout=3600,
                              env={**os.environ, "LAM_FAULT_REPORT": str(report)}, capture_output=True, text=True)
        print(f"run {run + 1}: {done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.returncode}")
        failed_runs += done.returncode != 0
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in report.read_text().splitlines() if report.exists() else []:
        tally = json.loads(line)
        row = rows[tally["test"]]
        for key in COUNTS:
            row[key] += tally.get(key, 0)
        row["recovery"] = max(row["recovery"], tally["slowest"] / tally["ack_timeout"])
        row["slowest"] = max(row["slowest"], tally["slowest"])
        row["resumed"] = max(row["resumed"], tally.get("resumed", 0.0))
        row["tallies"] += 1
    print(f"\n{'fault (test)':<64}{'N':>6}{'once':>6}{'lost':>6}{'twice':>6}{'copy':>6}{'run 2x':>7}"
          f"{'failed, ran':>12}{'recovery':>10}{'slowest':>9}{'deaf':>7}")
    for test, row in rows.items():
        print(f"{test.removeprefix('test_'):<64}{row['prompts']:>6.0f}{row['once']:>6.0f}{row['lost']:>6.0f}"
              f"{row['twice']:>6.0f}{row['copies']:>6.0f}{row['ran_twice']:>7.0f}{row['failed_but_ran']:>12.0f}"
              f"{row['recovery']:>9.1f}x{row['slowest']:>8.1f}s{row['resumed']:>6.1f}s")
    print("\nfailed, ran: prompts answered `failed` whose task an agent's records show it ran"
          "\nrecovery: the longest any prompt sent from the fault on waited for its reply, over the ack timeout"
          "\nslowest: the same in seconds; deaf: seconds from the fault to the first reply to a prompt sent after it "
          "(worst run)")
    return 1 if failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
