"""Parser benchmark: how fast prompts become commands, and how many skip the LLM.

Offline: the time to build the language of the installed capabilities (templates compiled, the
learned reader trained), then every prompt of the repository corpus (tests/corpus/prompts.tsv), of
the fresh set (tests/corpus/fresh.tsv, with the names it declares) and of HWU64 folds 1-5
(bench/data/hwu64) through the offline chain (rigid grammar, the capabilities' templates and the
learned reader): parses per second and per-prompt latency, for the first reading of each prompt and
for the same prompts said again (remembered readings). With
``--groq`` the whole chain runs with Groq configured, against the local stand-in answering
each prompt's expected commands after ``--latency`` seconds (0.3 is about Groq's own time to
answer): it prints which share of the prompts the templates answered without the LLM, and the
p50 time to commands (what the coordinator then publishes as tasks) for each path.

    python bench/bench_parser.py
    python bench/bench_parser.py --groq --latency 0.3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers (bench/ is on the path as the script's folder)

from lamcontrol.coordinator.language import Context, Language, installed_specs  # noqa: E402
from lamcontrol.coordinator.parsing import build_parser  # noqa: E402
from corpus import CASES, FRESH_CASES, FRESH_NAMES  # noqa: E402

SETS = {"repo": (CASES, {}), "fresh": (FRESH_CASES, FRESH_NAMES)}
HWU64 = ROOT / "bench" / "data" / "hwu64" / "folds-1-5.tsv"


def timed(parser, prompts: list[tuple[str, dict]], rounds: int,
          languages: dict | None = None) -> tuple[list[float], dict[str, list[float]]]:
    """Seconds per parse, for every prompt in every round, and the same by the path that answered."""
    times, by_path = [], defaultdict(list)
    for _ in range(rounds):
        for prompt, names in prompts:
            language = (languages or {}).get(repr(names))
            start = time.perf_counter()
            result = parser.parse(prompt, Context(source="bench", vocabulary=names, language=language))
            took = time.perf_counter() - start
            times.append(took)
            by_path[result.parser].append(took)
    return times, by_path


def p50(times: list[float]) -> float:
    return sorted(times)[len(times) // 2] * 1e3


def report(name: str, times: list[float]) -> None:
    ordered = sorted(times)
    print(f"{name:>8}: {len(times) / sum(times):9.0f} parses/s   mean {statistics.fmean(times) * 1e3:7.3f} ms   "
          f"p50 {p50(times):7.3f} ms   p99 {ordered[int(len(ordered) * 0.99)] * 1e3:7.3f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="passes over the corpora (offline)")
    parser.add_argument("--groq", action="store_true", help="also run the chain with Groq's stand-in")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds the stand-in takes to answer")
    args = parser.parse_args()
    people = [line.split("\t")[2] for line in HWU64.read_text().splitlines() if line and not line.startswith("#")]
    prompts = [(case.prompt, names) for cases, names in SETS.values() for case in cases] + [(p, {}) for p in people]
    print(f"prompts: {len(CASES)} of the corpus, {len(FRESH_CASES)} of the fresh set, {len(people)} of HWU64 folds 1-5")
    installed_specs()
    languages = {}
    for names in ({}, FRESH_NAMES):
        start = time.perf_counter()
        languages[repr(names)] = language = Language(installed_specs(), names)
        language.compile()
        print(f"build: {time.perf_counter() - start:.2f} s (templates compiled, learned reader trained"
              f"{', with the fresh set names' if names else ''})")
    offline = build_parser({"groq": {"api_key": ""}})
    # The coordinator remembers its latest readings: the first pass reads every prompt afresh, the
    # later ones show a prompt said again (the same button, the same words).
    times = timed(offline, prompts, args.rounds, languages)[0]
    report("first", times[:len(prompts)])
    if args.rounds > 1:
        report("again", times[len(prompts):])
    if args.groq:
        from stubs.groq_server import GroqStub, answer

        expected = {case.prompt.strip(): case.expected for cases, _ in SETS.values() for case in cases}
        with GroqStub(lambda body: answer(expected[body["messages"][-1]["content"].split("Prompt: ", 1)[1]]),
                      latency=args.latency) as stub:
            llm = build_parser({"groq": {"api_key": "bench", "base_url": stub.url, "max_retries": 0}})
            times, by_path = timed(llm, prompts, 1)
        skipped = len(times) - len(by_path["groq"])
        print(f"with Groq at {args.latency * 1e3:g} ms: {skipped}/{len(times)} prompts "
              f"({100 * skipped / len(times):.1f}%) answered without the LLM; p50 time to commands by path:")
        for path, path_times in sorted(by_path.items()):
            print(f"{path:>10}: {len(path_times):4d} prompts   p50 {p50(path_times):8.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
