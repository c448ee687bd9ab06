"""How well the offline reader understands sentences people wrote for other systems (HWU64).

HWU64 (Liu et al. 2019; bench/data/hwu64, CC BY 4.0) holds crowd-written commands to a home
assistant in ten disjoint folds. Folds 1-5 are the project's to learn from (the capabilities'
example files hold their in-scope sentences, coordinator/not_commands.tsv the rest); folds 6-10
are only ever scored here. Both are printed side by side: a gap between them is over-fitting.

- Folds 1-5 are scored by cross-validation: each fold is read by a reader that learned from the
  other four (its own sentences held out), so no sentence is scored by a model that saw it.
- Folds 6-10 are read by the reader as shipped (it learned from folds 1-5).

In scope (what a LAMControl house can do) a sentence is right when it becomes that command:
volume up/down as ``computer volume up|down`` or a level, mute as ``computer volume mute`` or
``computer media pause``, music as ``browser youtube play ...`` or ``computer media play``, lights,
plugs and the vacuum as ``home``. Out of scope, a sentence is wrong when it becomes an action
nobody asked for; being ignored, asked back about, answered by ``ai``, searched for on Google or
opened when it says open/start is fine (a search is any of Google's, Amazon's, Gmail's or YouTube's
results shown: nothing played, sent or bought). Parsing is offline (no Groq), with the names of the
repository's fresh corpus advertised, as ``lam parse --names`` would.

    python bench/bench_understanding.py            # folds 1-5 (cross-validated) and 6-10
    python bench/bench_understanding.py --folds 1-5 --misses 20
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers (bench/ is on the path as the script's folder)

from lamcontrol.coordinator.language import Context, Language, installed_specs  # noqa: E402
from lamcontrol.coordinator.parsing import ChainParser  # noqa: E402
from corpus import FRESH_NAMES  # noqa: E402

DATA = ROOT / "bench" / "data" / "hwu64"
IN_SCOPE = {
    "audio_volume_up": {"computer volume up", "computer volume <level>"},
    "audio_volume_down": {"computer volume down", "computer volume <level>"},
    "audio_volume_mute": {"computer volume mute", "computer media pause"},
    "play_music": {"browser youtube play", "computer media play"},
    **{intent: {"home"} for intent in ("iot_hue_lightoff", "iot_hue_lighton", "iot_hue_lightdim", "iot_hue_lightup",
                                       "iot_hue_lightchange", "iot_wemo_on", "iot_wemo_off", "iot_cleaning")},
}
OPENS = re.compile(r"\b(open|start|launch|run|go to|take me to|pull up|bring up|show me)\b", re.I)


def sentences(folds: range) -> list[tuple[int, str, str]]:
    name = "folds-1-5.tsv" if folds.start < 6 else "folds-6-10.tsv"
    rows = []
    for line in (DATA / name).read_text().splitlines():
        if line and not line.startswith("#"):
            fold, intent, text, _ = line.split("\t")
            if int(fold) in folds:
                rows.append((int(fold), intent, text))
    return rows


def shape(command) -> str:
    """A command as the benchmark compares it."""
    if command.capability == "home":
        return "home"
    if command.capability == "computer" and command.action == "volume" and isinstance(command.args.get("level"), int):
        return "computer volume <level>"
    if command.capability == "browser" and command.action == "youtube":
        return "browser youtube play" if command.args.get("play") else "browser youtube"
    return " ".join(command.text.split()[:3])


SEARCHES = {("browser", "google"), ("browser", "amazon"), ("browser", "gmail"), ("browser", "youtube")}


def harmless(command, text: str) -> bool:
    """An action out of scope that nobody minds: a question for the ai, a web search (Google, Amazon,
    Gmail or YouTube results shown, nothing played or bought), opening an app or a site when asked to open."""
    if command.capability == "ai":
        return True
    if (command.capability, command.action) in SEARCHES:
        return not command.args.get("play")
    return (command.capability, command.action) in (("browser", "site"), ("computer", "run")) and bool(OPENS.search(text))


def judge(intent: str, result, text: str) -> bool:
    """Right (in scope) or harmless (out of scope)."""
    # A question back, and a power command (always confirmed first), are no action yet.
    sure = result.commands and not result.question and all(c.risk == "low" for c in result.commands)
    if intent in IN_SCOPE:
        return bool(sure) and all(shape(c) in IN_SCOPE[intent] for c in result.commands)
    return not sure or all(harmless(c, text) for c in result.commands)


def score(rows: list[tuple[int, str, str]], languages) -> tuple[dict, list]:
    per_intent: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses = []
    for fold, intent, text in rows:
        result = PARSER.parse(text, Context(source="bench", language=languages(fold)))
        good = judge(intent, result, text)
        per_intent[intent][0] += good
        per_intent[intent][1] += 1
        if not good:
            misses.append((intent, text, [c.text for c in result.commands] if not result.question else [],
                           result.question or result.reason))
    return per_intent, misses


def language(held_out: frozenset[str]) -> Language:
    return Language(installed_specs(), FRESH_NAMES, held_out=held_out)


def report(title: str, per_intent: dict) -> None:
    inside = [per_intent[i] for i in IN_SCOPE if i in per_intent]
    right, total = sum(r for r, _ in inside), sum(t for _, t in inside)
    outside = [v for i, v in per_intent.items() if i not in IN_SCOPE]
    harmed = sum(t - r for r, t in outside)
    out_total = sum(t for _, t in outside)
    print(f"{title}: in scope {right}/{total} right ({right / max(total, 1):.1%}); "
          f"out of scope {harmed}/{out_total} became an action nobody asked for ({harmed / max(out_total, 1):.2%})")
    for intent in IN_SCOPE:
        if intent in per_intent:
            good, count = per_intent[intent]
            print(f"    {intent:<22} {good:4d}/{count:<4d} {good / count:6.1%}")
    wrong = sorted(((t - r, i) for i, (r, t) in per_intent.items() if i not in IN_SCOPE and r < t), reverse=True)
    if wrong:
        print("    out of scope, acted on: " + ", ".join(f"{i} {n}" for n, i in wrong))


PARSER = ChainParser()  # offline: no Groq


class Languages:
    """One language per held-out set of example sources (built once each)."""

    def __init__(self, cross_validate: bool) -> None:
        self.cross_validate = cross_validate
        self.built: dict[int, Language] = {}

    def __call__(self, fold: int) -> Language:
        key = fold if self.cross_validate else 0
        if key not in self.built:
            held_out = frozenset({f"hwu64:{fold}"}) if self.cross_validate else frozenset()
            self.built[key] = language(held_out)
        return self.built[key]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", choices=("1-5", "6-10", "both"), default="both")
    parser.add_argument("--misses", type=int, default=0, help="print this many misses of folds 1-5 (never 6-10)")
    args = parser.parse_args()
    if args.folds in ("1-5", "both"):
        per_intent, misses = score(sentences(range(1, 6)), Languages(cross_validate=True))
        report("HWU64 folds 1-5 (each fold read by a reader that did not learn from it)", per_intent)
        for intent, text, commands, why in misses[:args.misses]:
            print(f"      {intent:<20} {text!r} -> {commands or why}")
    if args.folds in ("6-10", "both"):
        per_intent, _ = score(sentences(range(6, 11)), Languages(cross_validate=False))
        report("HWU64 folds 6-10 (held out: never learnt from, never tuned to)", per_intent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
