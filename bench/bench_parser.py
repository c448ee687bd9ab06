"""Parser benchmark: how fast prompts become commands, and the parser's share of a round trip.

Runs every prompt of the test corpus through the offline chain (rigid grammar, then the
sentence grammar) and reports parses per second and per-prompt latency. With ``--groq`` it
also runs the Groq path against the local stand-in (the real SDK over HTTP on this machine,
so it shows our overhead, not Groq's own latency). Give ``--e2e-ms`` (for example the p50
that ``bench/bench_bus.py`` prints, or a prompt's time measured with ``lam send``) to see
which share of that time parsing takes.

    python bench/bench_parser.py
    python bench/bench_parser.py --groq --e2e-ms 4.2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from lamcontrol.coordinator.parsing import Context, build_parser  # noqa: E402
from corpus import CASES  # noqa: E402


def timed(parser, prompts: list[str], rounds: int) -> list[float]:
    """Seconds per parse, for every prompt in every round."""
    context = Context(source="bench")
    times = []
    for _ in range(rounds):
        for prompt in prompts:
            start = time.perf_counter()
            parser.parse(prompt, context)
            times.append(time.perf_counter() - start)
    return times


def report(name: str, times: list[float], e2e_ms: float | None) -> None:
    ordered = sorted(times)
    p50, p99 = ordered[len(ordered) // 2] * 1e3, ordered[int(len(ordered) * 0.99)] * 1e3
    mean = statistics.fmean(times) * 1e3
    print(f"{name:>8}: {len(times) / sum(times):9.0f} parses/s   mean {mean:7.3f} ms   p50 {p50:7.3f} ms   "
          f"p99 {p99:7.3f} ms")
    if e2e_ms:
        print(f"{'':>8}  share of a {e2e_ms:g} ms round trip: {100 * mean / e2e_ms:.1f}% (mean), "
              f"{100 * p50 / e2e_ms:.1f}% (p50)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="passes over the corpus (offline)")
    parser.add_argument("--groq", action="store_true", help="also time the Groq path against the local stand-in")
    parser.add_argument("--e2e-ms", type=float, help="an end-to-end prompt time to compare against, in ms")
    args = parser.parse_args()
    prompts = [case.prompt for case in CASES]
    print(f"corpus: {len(prompts)} prompts")
    report("offline", timed(build_parser({"groq": {"api_key": ""}}), prompts, args.rounds), args.e2e_ms)
    if args.groq:
        from stubs.groq_server import GroqStub, answer

        expected = {case.prompt.strip(): case.expected for case in CASES}
        with GroqStub(lambda body: answer(expected[body["messages"][-1]["content"].split("Prompt: ", 1)[1]])) as stub:
            llm = build_parser({"groq": {"api_key": "bench", "base_url": stub.url, "max_retries": 0}})
            report("groq", timed(llm, prompts, 1), args.e2e_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
