"""Write the HWU64 sentences this project uses, from a checkout of the public data set.

HWU64 (Liu, Eshghi, Swietojanski, Rieser, "Benchmarking Natural Language Understanding Services
for building Conversational Agents", IWSDS 2019; repository xliuhw/NLU-Evaluation-Data, CC BY 4.0)
holds 11,036 crowd-written commands to a home assistant in ten disjoint test folds. This script
writes them as ``bench/data/hwu64/folds-1-5.tsv`` (ours to learn from and tune on) and
``folds-6-10.tsv`` (for evaluation only: never read sentence by sentence, never tuned to), one
sentence a line: fold, intent, text, and the span of its annotated entities (start:end, or empty).

    python bench/hwu64_extract.py path/to/NLU-Evaluation-Data
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FOLDS = "CrossValidation/autoGeneFromRealAnno/autoGene_2018_03_22-13_01_25_169/CrossValidation"
OUT = Path(__file__).resolve().parent / "data" / "hwu64"
HEADER = ("# HWU64 test folds {folds}: fold, intent, text, entity span (start:end). From Liu, Eshghi, Swietojanski,\n"
          "# Rieser, \"Benchmarking Natural Language Understanding Services for building Conversational Agents\",\n"
          "# IWSDS 2019; data: github.com/xliuhw/NLU-Evaluation-Data, licensed CC BY 4.0.\n")


def rows(root: Path) -> list[tuple[int, str, str, str]]:
    found = []
    for path in sorted((root / FOLDS).glob("KFold_*/testset/annotated/*/*.json")):
        fold = int(path.parts[-5].removeprefix("KFold_"))
        for item in json.loads(path.read_text())["test_data_annotation"]:
            text = " ".join(item["text"].split())
            entities = item["entities"]
            span = ""
            if entities and text == item["text"]:
                span = f"{min(e['start'] for e in entities)}:{max(e['end'] for e in entities)}"
            found.append((fold, item["intent"], text, span))
    return found


def main() -> int:
    found = rows(Path(sys.argv[1]))
    OUT.mkdir(parents=True, exist_ok=True)
    for name, folds in (("folds-1-5.tsv", range(1, 6)), ("folds-6-10.tsv", range(6, 11))):
        lines = [f"{fold}\t{intent}\t{text}\t{span}" for fold, intent, text, span in found if fold in folds]
        (OUT / name).write_text(HEADER.format(folds=f"{folds.start}-{folds.stop - 1}") + "\n".join(lines) + "\n")
        print(f"{name}: {len(lines)} sentences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
