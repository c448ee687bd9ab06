"""The prompt corpus: loose sentences and what the parsers must make of them.

``prompts.tsv`` holds one case a line: the prompt, the expected rigid command text (``x`` for
none) and optionally ``reason: <words the reason must contain>`` or ``xfail: <why it is a
known miss>``. Lines starting with ``#`` are comments, except ``# names: CAPABILITY=NAME,NAME``:
the names agents advertise while the file is scored (what ``lam parse --names`` stands in for).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROMPTS = Path(__file__).with_name("prompts.tsv")
FRESH = Path(__file__).with_name("fresh.tsv")


@dataclass(frozen=True)
class Case:
    prompt: str
    expected: str  # the rigid command text, ``" && "``-joined; "x" for no command
    reason: str = ""
    xfail: str = ""

    @property
    def commands(self) -> list[str]:
        return [] if self.expected == "x" else [part.strip() for part in self.expected.split("&&")]


def load(path: Path = PROMPTS) -> list[Case]:
    cases = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("#") or not line.strip():
            continue
        prompt, expected, *note = line.split("\t")
        kind, _, text = (note[0] if note else "").partition(": ")
        if kind not in ("", "reason", "xfail"):
            raise ValueError(f"{path.name}:{number}: unknown note {kind!r}")
        cases.append(Case(prompt, expected.strip(), text if kind == "reason" else "", text if kind == "xfail" else ""))
    return cases


def names(path: Path) -> dict[str, list[str]]:
    """The ``# names:`` lines of a corpus file, by capability."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.startswith("# names:"):
            capability, _, listed = line.removeprefix("# names:").strip().partition("=")
            found.setdefault(capability.strip(), []).extend(n.strip() for n in listed.split(",") if n.strip())
    return found


CASES = load()
FRESH_CASES = load(FRESH)
FRESH_NAMES = names(FRESH)
