"""A subscriber to everything that stops reading: what it costs everyone else, and the broker.

The same system (a coordinator and two echo agents, each logging in as itself) answers the same
prompts twice in one run: first with no one else on the bus (the floor), then with a client
subscribed to ``<prefix>/#`` that reads nothing (a plain socket with a tiny receive buffer, as
a frozen or cut-off client looks to the broker). Printed per pass: prompts answered of those
sent, prompts per second and its ratio to the floor, and the broker's resident memory before,
at its peak and after; then what the broker logged about the client (it should say so once).

    python bench/bench_slow_subscriber.py                    # the embedded broker, 5,000 prompts
    python bench/bench_slow_subscriber.py --broker mosquitto # Mosquitto as lam mosquitto-config writes it
    python bench/bench_slow_subscriber.py --prompts 20000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from bench_soak import Sampler, rss_mb  # noqa: E402
from faultkit import Broker, StalledSubscriber, System  # noqa: E402


def run_pass(system: System, broker_pid: int, count: int, window: int, give_up: float) -> dict:
    """Send ``count`` prompts, at most ``window`` unanswered at once; the counts and memory of the pass."""
    sampler = Sampler({"broker": broker_pid}, 0.5)
    sampler.start()
    load, prompts = system.load, []
    earlier = len(load.answered_at)  # prompts answered in passes before this one
    before = rss_mb(broker_pid) or 0.0
    started = time.monotonic()
    deadline = started + give_up
    while len(prompts) < count and time.monotonic() < deadline:
        if len(prompts) - (len(load.answered_at) - earlier) >= window:
            time.sleep(0.005)
            continue
        prompts += load.send(1, seconds=0, timeout=60.0, pace=0)
    load.wait_answered(prompts, max(5.0, deadline - time.monotonic()))
    elapsed = time.monotonic() - started
    sampler.stopping.set()
    sampler.join()
    answered = sum(1 for p in prompts if load.replies.get(p.id))
    return {"sent": len(prompts), "answered": answered, "rate": answered / elapsed, "before": before,
            "peak": max(sampler.samples["broker"], default=before), "after": rss_mb(broker_pid) or 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=["amqtt", "mosquitto"], default="amqtt")
    parser.add_argument("--prompts", type=int, default=5000, help="prompts per pass (default 5000)")
    parser.add_argument("--window", type=int, default=200, help="prompts unanswered at once at most (default 200)")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="give up a pass after this long")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="lam-slow-"))
    prefix = f"s{uuid.uuid4().hex[:8]}"
    broker = Broker(args.broker, folder, prefix, "coordinator,client:load,monitor,agent:a1:echo,agent:a2:echo")
    system = System(broker, folder, ack_timeout=5.0)
    stalled, log = None, ""
    try:
        system.coordinator()
        for agent in ("a1", "a2"):
            system.agent(agent)
        pid = broker.process.popen.pid
        floor = run_pass(system, pid, args.prompts, args.window, args.max_seconds)
        login = ("monitor", (broker.folder / "credentials" / "monitor").read_text().strip()) if broker.hardened \
            else None
        stalled = StalledSubscriber(broker.port, f"{prefix}-stalled", f"{prefix}/#", login)
        slowed = run_pass(system, pid, args.prompts, args.window, args.max_seconds)
        log = broker.process.log()
    finally:
        if stalled:
            stalled.close()
        system.close()
        broker.close()

    print(f"slow subscriber: {args.broker}, {args.prompts} prompts per pass, {args.window} in flight at most")
    print(f"{'pass':<28}{'answered':>14}{'prompts/s':>11}{'ratio':>7}{'broker MB before':>18}{'peak':>8}{'after':>8}")
    for name, row in (("no slow subscriber (floor)", floor), ("a subscriber of # stalled", slowed)):
        print(f"{name:<28}{row['answered']:>7} of {row['sent']:<5}{row['rate']:>10.0f}{row['rate'] / floor['rate']:>7.2f}"
              f"{row['before']:>18.1f}{row['peak']:>8.1f}{row['after']:>8.1f}")
    said = [line for line in log.splitlines() if "does not keep up" in line or "are being dropped" in line]
    print(f"the broker said so {len(said)} time(s){': ' + said[0] if said else ''}")
    return 0 if slowed["answered"] == slowed["sent"] and floor["answered"] == floor["sent"] else 1


if __name__ == "__main__":
    sys.exit(main())
