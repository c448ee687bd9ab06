"""Fuzz: malformed and hostile payloads on every LAMControl topic, then a normal prompt.

A seeded generator (the same seed gives the same run) makes broken JSON, wrong types in every
field, huge and deeply nested documents, NaN and infinities, lone surrogates, control
characters, binary junk and oversized payloads, and publishes them on each topic the
components read. Bounded in count and time. Afterwards every process must still be running
and a normal prompt must be answered; it prints what each topic got and how many refusals
came back on ``lam/errors``.

    python bench/bench_fuzz.py                       # 2,000 payloads, seed 1
    python bench/bench_fuzz.py --count 500 --seed 7

It runs on the embedded broker without users, so every payload reaches its readers (on a
hardened Mosquitto the ACL would refuse most of them before any component saw them).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers (bench/ is on the path as the script's folder)

from faultkit import Broker, System  # noqa: E402
from lamcontrol.bus import Bus  # noqa: E402
from lamcontrol.protocol import Prompt, Reply, Result, Task  # noqa: E402

HOSTILE_STRINGS = ["", " ", "x" * 70_000, "\x00\x01\x1b[2J", "\ud800", "../../etc/passwd", "<script>alert(1)</script>",
                   "' OR 1=1 --", "%s%s%n", "😀" * 1000, "\u202e", "computer power shutdown", "a" * 300]
HOSTILE_VALUES = [None, True, -1, 0, 10**400, 1e308, float("nan"), float("inf"), -float("inf"), [], {}, [[[]]],
                  {"$ne": 1}, *HOSTILE_STRINGS]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def payloads(rng: random.Random, template: dict) -> bytes:
    """One hostile payload shaped like ``template`` (a valid message of the topic)."""
    kind = rng.randrange(9)
    if kind == 0:  # a field with a hostile value
        doc = dict(template)
        doc[rng.choice(list(doc))] = rng.choice(HOSTILE_VALUES)
        text = json.dumps(doc, allow_nan=True, ensure_ascii=rng.random() < 0.5, default=str)
    elif kind == 1:  # fields missing
        doc = {k: v for k, v in template.items() if rng.random() < 0.5}
        text = json.dumps(doc)
    elif kind == 2:  # truncated JSON
        text = json.dumps(template)[: rng.randrange(1, len(json.dumps(template)))]
    elif kind == 3:  # the wrong JSON type altogether
        text = json.dumps(rng.choice([[template], "a string", 42, None, True, [1, 2, 3]]))
    elif kind == 4:  # nested deep enough to break a recursive parser
        text = nested(rng.choice([100, 1000, 10_000, 50_000]))
    elif kind == 5:  # binary junk
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 512)))
    elif kind == 6:  # larger than any component accepts
        doc = dict(template)
        doc[rng.choice(list(doc))] = "y" * rng.choice([65_000, 70_000, 200_000])
        text = json.dumps(doc)
    elif kind == 7:  # plain text, with hostile strings
        text = rng.choice(HOSTILE_STRINGS + ["echo say hi", "computer volume " + "9" * 5000, "x"])
    else:  # unknown extra fields and odd encodings
        doc = dict(template, **{rng.choice(HOSTILE_STRINGS)[:40]: rng.choice(HOSTILE_VALUES)})
        text = json.dumps(doc, allow_nan=True, default=str)
    return text.encode("utf-8", "surrogatepass")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="payloads in all (default 2000)")
    parser.add_argument("--seconds", type=float, default=120.0, help="stop sending after this long (default 120)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="lam-fuzz-"))
    prefix = f"z{uuid.uuid4().hex[:8]}"
    broker = Broker("amqtt", folder, prefix)
    system = System(broker, folder)
    sent: Counter = Counter()
    errors: list[bytes] = []
    try:
        system.coordinator()
        system.agent("fz1")
        fuzzer = Bus(broker.settings(), component="fuzzer", report=False)
        topics = fuzzer.topics
        fuzzer.on(topics.errors, lambda topic, payload: errors.append(payload))
        fuzzer.start(timeout=20)
        task_id = uuid.uuid4().hex[:16]
        targets = {
            topics.prompts: Prompt(prompt="echo say hi", source="fuzz", metadata={"timeout": 5}).to_dict(),
            topics.task("echo"): Task(task_id=task_id, prompt_id="p", capability="echo", action="say",
                                      args={"text": "x"}, agent="fz1").to_dict(),
            topics.build("results/{task_id}", task_id=task_id): Result(task_id=task_id, agent="fz1", state="succeeded").to_dict(),
            f"{prefix}/agents/fz1/results/{task_id}": Result(task_id=task_id, agent="fz1", state="accepted").to_dict(),
            topics.agent_status("fz9"): {"state": "online", "agent": "fz9", "capabilities": {"echo": ["say"]}},
            topics.coordinator_status: {"state": "online", "agent": "coordinator"},
            topics.reply("p"): {"prompt_id": "p", "status": "succeeded", "response": "x", "tasks": []},
            f"{prefix}/agents/fz1/spec": {"agent": "fz1", "capabilities": {}},
            "homeassistant/status": {"state": "online"},
        }
        started = time.monotonic()
        for n in range(args.count):
            if time.monotonic() - started > args.seconds:
                break
            topic = rng.choice(list(targets))
            fuzzer.publish_raw(topic, payloads(rng, targets[topic]))
            sent[topic] += 1
            if n % 50 == 49:
                time.sleep(0.05)  # let the readers keep up; this is a fuzz, not a flood
        fuzz_seconds = time.monotonic() - started
        time.sleep(2)
        dead = [p.name for p in system.processes.values() if p.popen.poll() is not None]
        dead += ["broker"] if broker.process.popen.poll() is not None else []
        probe = system.load.send(1, seconds=0, timeout=15.0)
        system.load.wait_answered(probe, 30)
        answer: list[Reply] = system.load.replies.get(probe[0].id, [])
        fuzzer.stop()
    finally:
        system.close()
        broker.close()

    print(f"fuzz: seed {args.seed}, {sum(sent.values())} payloads in {fuzz_seconds:.1f} s")
    for topic, count in sorted(sent.items()):
        print(f"  {count:>5}  {topic}")
    print(f"refusals on {prefix}/errors: {len(errors)}")
    print(f"processes not running afterwards: {dead or 'none'}")
    print(f"normal prompt afterwards: {answer[0].status + ': ' + answer[0].response if answer else 'NO REPLY'}")
    return 0 if not dead and answer and answer[0].status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
