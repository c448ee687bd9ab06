"""A small n-gram language model: interpolated Kneser-Ney smoothing over token sequences.

One model per intent scores how likely a sentence's frame ("turn the volume to {level}") is in
that intent's language; Kneser-Ney gives a word the weight of the contexts it was seen in, so a
model trained on a few hundred template expansions still scores unseen word orders sensibly.
Every model of one reader shares the size of the vocabulary, so an unknown word costs the same
in each and scores stay comparable between intents.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

START, END = "<s>", "</s>"


class NGrams:
    """Order-``order`` interpolated Kneser-Ney model; :meth:`logprob` of a token sequence."""

    DISCOUNT = 0.75

    def __init__(self, sentences: list[tuple[str, ...]], vocabulary_size: int, order: int = 4) -> None:
        self.order = order
        self.vocabulary_size = vocabulary_size
        highest: Counter[tuple[str, ...]] = Counter()
        for sentence in sentences:
            padded = (START,) * (order - 1) + sentence + (END,)
            for index in range(order - 1, len(padded)):
                highest[padded[index - order + 1:index + 1]] += 1
        # counts[k]: k-gram counts (highest order) or continuation counts (lower orders)
        self.counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order + 1)]
        self.counts[order] = highest
        for k in range(order, 1, -1):
            for gram in self.counts[k]:
                self.counts[k - 1][gram[1:]] += 1
        self.totals: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order + 1)]
        self.followers: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order + 1)]
        for k in range(1, order + 1):
            for gram, count in self.counts[k].items():
                self.totals[k][gram[:-1]] += count
                self.followers[k][gram[:-1]] += 1
        self.known = {gram[0] for gram in self.counts[1]}
        self._cache: dict[tuple[tuple[str, ...], str], float] = {}

    def prob(self, context: tuple[str, ...], word: str) -> float:
        """P(word | the last order-1 words of context), every lower order's share cached too."""
        context = context[-(self.order - 1):]
        key = (context, word)
        found = self._cache.get(key)
        if found is None:
            lower = self.prob(context[1:], word) if context else 1.0 / self.vocabulary_size
            k = len(context) + 1
            total = self.totals[k].get(context, 0)
            if total:
                count = self.counts[k].get(context + (word,), 0)
                lower = (max(count - self.DISCOUNT, 0) + self.DISCOUNT * self.followers[k][context] * lower) / total
            found = self._cache[key] = lower
        return found

    def logprob(self, sentence: tuple[str, ...], start: tuple[str, ...] = (START,) * 3, end: bool = True) -> float:
        """log P(sentence | start context), with the end of the sentence when ``end``."""
        history = start[-(self.order - 1):]
        total = 0.0
        for word in sentence + ((END,) if end else ()):
            total += math.log(self.prob(history, word))
            history = (history + (word,))[-(self.order - 1):]
        return total
