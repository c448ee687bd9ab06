"""Understanding that learns from the capabilities' language: a statistical reader of whole sentences.

Templates only take sentences they spell out; people phrase things their own way. So the
templates, lists and examples capabilities declare (and the example files they ship) become
training material, in the manner of Home Assistant's fuzzy matching:

- An **intent** is an action with the argument values its sentences imply ("computer volume"
  with ``level = up`` for "i can't hear a thing"). Its sentences become **frames**: token
  sequences with slots kept as placeholders ("turn the volume to {level}"), from which it gets an
  n-gram model (:mod:`lamcontrol.coordinator.ngrams`).
- Sentences that are not commands for anyone (questions, chatter, things no capability does)
  train one more model, ``none``, the reading every command must beat.
- A sentence is read by annotating its spans with every slot they could fill (list values,
  numbers, advertised names, web addresses, any span for free text), scoring each reading with
  its intent's model plus what the slot's words cost, and comparing the best reading of every
  intent: :meth:`Reader.read` returns them best first, each with its share of the probability
  (``confidence``). Where a free-text slot ends is learnt the same way: "in the browser" after a
  site is cheap for an intent that has seen it there, and dear inside a slot.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Iterator, Sequence

from hassil.expression import Alternative, Expression, Group, ListReference, Permutation, RuleReference, TextChunk
from hassil.parse_expression import parse_sentence

from lamcontrol.language import ActionSpec, CapabilitySpec

from .grammar import Command
from .ngrams import NGrams
from .words import Respeller, Word, trimmed, words

NONE = "none"
SAMPLES = 48  # expansions of one template (each alternative is used at least once when it has fewer)
MAX_WORDS = 24  # longer clauses are not read (the chain splits sentences first)
SHORTLIST = 4  # intents (and kinds of no command) read in full, chosen by the bag of words' first look
COST = {"list": -1.5, "number": -2.0, "address": -3.0, "name": -1.5, "word": -7.0}  # log-cost of a slot's value by kind
PLACEHOLDER = re.compile(r"^__(\w+)__$")
UNKNOWN = -3.0  # log-cost of a word in the frame that the intent never saw (on top of its probability)
BAG = 1.0  # weight of the bag of words' opinion against the n-gram models'
NOT_NAMES = {"him", "her", "them", "me", "you", "it", "that", "this", "someone", "somebody", "everyone", "my",
             "the", "a", "an", "to", "on", "in", "for", "and", "then", "with", "about", "say", "saying"}
NONE_SHARE = 2.0  # the prior of "no command at all", in command intents
CONTENT = 0.5  # weight of the words examples put in a free-text slot, against any word at all


@dataclass(frozen=True)
class Slot:
    """What can fill a placeholder. ``kind`` is ``text`` (any span: a search, a message), ``name``
    (advertised names, any quoted words, else words nobody advertised at a cost) or ``list``;
    ``phrases`` maps spoken tokens to the values they stand for; ``numbers`` and ``addresses`` say
    that a number or a web address fills it too."""

    name: str
    kind: str
    phrases: dict[tuple[str, ...], Any] = field(default_factory=dict, hash=False, compare=False)
    one_word: bool = False  # a name not advertised (nor quoted) is one word
    numbers: bool = False
    addresses: bool = False


@dataclass
class Intent:
    """An action with the argument values its sentences imply, and how its sentences go."""

    key: str
    capability: str
    action: str
    implied: dict[str, Any]
    slots: dict[str, Slot]
    frames: list[tuple[str, ...]] = field(default_factory=list)
    templated: list[tuple[str, ...]] = field(default_factory=list)  # the frames its templates spell out
    compose: dict[str, Any] = field(default_factory=dict)
    ask: str = ""
    whole: str = ""  # the argument that takes the whole clause (Home Assistant's sentences)
    required: frozenset[str] = frozenset()  # slots a reading must fill (arguments neither optional nor implied)
    contents: dict[str, Any] = field(default_factory=dict)  # text slot -> Counter of the words examples put in it
    model: NGrams = field(init=False, repr=False)  # made by the Reader that reads it


@dataclass
class Candidate:
    """One reading of a sentence by one intent: slot values and the log score."""

    intent: Intent
    values: dict[str, Any]  # slot name -> value (list values resolved, text cut from the sentence as said)
    said: dict[str, Any]  # slot name -> the words as said
    score: float
    confidence: float = 0.0
    frame: tuple[str, ...] = ()

    @property
    def swallowed(self) -> bool:
        """A free-text slot took a word that joins clauses: maybe two requests."""
        return any(re.search(r"\b(and|then)\b", str(self.said.get(s.name, "")), re.I)
                   for s in self.intent.slots.values() if s.kind == "text")


# -- training material ----------------------------------------------------------------------

def expand(template: str, rules: dict[str, str], limit: int = SAMPLES) -> list[str]:
    """Sentences a template says, slots as ``__slot__``: every one when there are at most ``limit``,
    else ``limit`` of them covering every alternative (sample ``n`` takes each choice's ``n``-th)."""
    parsed = parse_sentence(template)
    rule_trees = {name: parse_sentence(body) for name, body in rules.items()}
    total = _count(parsed.expression, rule_trees, 0)
    if total <= limit:
        return sorted({" ".join(_all(parsed.expression, rule_trees, 0))} if total == 1 else
                      {" ".join(s.split()) for s in _every(parsed.expression, rule_trees, 0)})
    rng = random.Random(template)
    return sorted({" ".join(_one(parsed.expression, rule_trees, n, rng, 0).split()) for n in range(limit)})


def _count(node: Expression, rules: dict[str, Any], depth: int) -> int:
    if depth > 20:
        raise ValueError("rules nest too deep")
    if isinstance(node, TextChunk) or isinstance(node, ListReference):
        return 1
    if isinstance(node, RuleReference):
        return _count(rules[node.rule_name].expression, rules, depth + 1) if node.rule_name in rules else 1
    if isinstance(node, Alternative):
        return min(sum(_count(i, rules, depth) for i in node.items), 10**9)
    if isinstance(node, Group):
        product = 1
        for item in node.items:
            product = min(product * _count(item, rules, depth), 10**9)
        return product
    return 1


def _leaf(node: Expression) -> str:
    if isinstance(node, TextChunk):
        return node.text
    if isinstance(node, ListReference):
        return f" __{node.slot_name}__ "
    return ""


def _every(node: Expression, rules: dict[str, Any], depth: int) -> list[str]:
    if isinstance(node, RuleReference):
        return _every(rules[node.rule_name].expression, rules, depth + 1) if node.rule_name in rules else [""]
    if isinstance(node, Alternative):
        return [s for item in node.items for s in _every(item, rules, depth)]
    if isinstance(node, Group):
        results = [""]
        items = node.items if not isinstance(node, Permutation) else node.items
        for item in items:
            results = [a + b for a in results for b in _every(item, rules, depth)]
        return results
    return [_leaf(node)]


def _all(node: Expression, rules: dict[str, Any], depth: int) -> list[str]:
    return _every(node, rules, depth)[:1]


def _one(node: Expression, rules: dict[str, Any], n: int, rng: random.Random, depth: int) -> str:
    if isinstance(node, RuleReference):
        return _one(rules[node.rule_name].expression, rules, n, rng, depth + 1) if node.rule_name in rules else ""
    if isinstance(node, Alternative):
        items = node.items
        pick = (n + rng.randrange(len(items))) % len(items) if n >= len(items) else n
        return _one(items[pick], rules, n, rng, depth)
    if isinstance(node, Group):
        return "".join(_one(item, rules, n, rng, depth) for item in node.items)
    return _leaf(node)


def frame_of(sentence: str) -> tuple[str, ...]:
    """A training sentence (``__slot__`` for slots) as model tokens (``{slot}``)."""
    out = []
    for word in trimmed(words(sentence)):
        found = PLACEHOLDER.match(word.text)
        out.append(f"{{{found[1]}}}" if found else word.text)
    return tuple(out)


def plain_of(sentence: str) -> tuple[str, ...]:
    """A sentence as model tokens, openers and closers trimmed."""
    return tuple(w.text for w in trimmed(words(sentence)))


def phrases_of(entries: Iterable[Any], rules: dict[str, Any] | None = None) -> dict[tuple[str, ...], str]:
    """A list's entries as spoken token tuples -> the value each stands for (``in`` forms expanded)."""
    phrases: dict[tuple[str, ...], str] = {}
    for entry in entries:
        spoken, value = (entry, entry) if isinstance(entry, str) else (str(entry.get("in") or entry.get("out")),
                                                                     str(entry.get("out") or entry.get("in")))
        forms = expand(spoken, rules or {}, limit=64) if any(c in spoken for c in "([<") else [spoken]
        for form in forms:
            tokens = tuple(w.text for w in words(form))
            if tokens:
                phrases.setdefault(tokens, value)
    return phrases


# -- a second opinion -----------------------------------------------------------------------

class Bag:
    """Multinomial naive Bayes over words, word pairs and letter groups: which intent a sentence's
    words point to, whatever their order. It trains in one pass and sees what the n-gram models
    miss (a word that only ever means one thing), so the reader weighs both."""

    ALPHA = 0.1

    def __init__(self, documents: dict[str, list[tuple[str, ...]]], priors: dict[str, float]) -> None:
        counts: dict[str, Counter[str]] = {}
        for label, sentences in documents.items():
            counted = counts[label] = Counter()
            for sentence in sentences:
                counted.update(features(sentence))
        size = len({f for counted in counts.values() for f in counted}) + 1
        totals = {label: sum(c.values()) + self.ALPHA * size for label, c in counts.items()}
        # A feature a label never saw costs it log(ALPHA / total); ``seen`` holds what the others add to that.
        self.unseen = {label: math.log(self.ALPHA / totals[label]) for label in counts}
        self.seen: dict[str, list[tuple[str, float]]] = {}
        for label, counted in counts.items():
            for feature, count in counted.items():
                self.seen.setdefault(feature, []).append(
                    (label, math.log((count + self.ALPHA) / totals[label]) - self.unseen[label]))
        self.priors = priors

    def shares(self, sentence: tuple[str, ...]) -> dict[str, float]:
        """P(label | sentence) for every label."""
        found = features(sentence)
        scores = {label: self.priors[label] + len(found) * unseen for label, unseen in self.unseen.items()}
        for feature in found:
            for label, extra in self.seen.get(feature, ()):
                scores[label] += extra
        top = max(scores.values())
        exp = {label: math.exp(score - top) for label, score in scores.items()}
        total = sum(exp.values())
        return {label: value / total for label, value in exp.items()}


def features(sentence: tuple[str, ...]) -> list[str]:
    words_only = [t for t in sentence if not t.startswith("{")]
    found = list(words_only) + [f"{a} {b}" for a, b in zip(words_only, words_only[1:])]
    for word in words_only:
        padded = f" {word} "
        found += [padded[i:i + 3] for i in range(len(padded) - 2)]
    return found


# -- reading ------------------------------------------------------------------------------

VOCABULARY = 4000  # words any model may meet: an unknown word costs 1/VOCABULARY at the bottom of each


class _Sentences(dict[str, Any]):
    """Sentences by kind, hashable by identity (one per held-out set), so their models are made once."""

    __hash__ = object.__hash__  # type: ignore[assignment]  # a dict's is None


@lru_cache(maxsize=8)
def _none_models(not_commands: _Sentences) -> dict[str, NGrams]:
    return {kind: NGrams(sentences, VOCABULARY) for kind, sentences in not_commands.items() if sentences}


class Reader:
    """The intents' models and the ``none`` model; :meth:`read` scores a sentence's readings."""

    def __init__(self, intents: list[Intent], not_commands: _Sentences,
                 names: frozenset[str] | set[str] = frozenset()) -> None:
        self.intents = [i for i in intents if i.frames]
        for intent in self.intents:
            intent.model = NGrams(intent.frames, VOCABULARY)
        self.nones = _none_models(not_commands)
        # Every command intent is as likely as the next; all sentences that are no command together weigh
        # NONE_SHARE of that, whatever the number of kinds they come in.
        self.prior = -math.log(max(len(self.intents), 1) + NONE_SHARE)
        self.none_prior = self.prior + math.log(NONE_SHARE / max(len(self.nones), 1))
        self.by_key = {i.key: i for i in self.intents}
        self.content_totals = {(i.key, name): sum(seen.values()) for i in self.intents for name, seen in i.contents.items()}
        self._looks: dict[tuple[str, ...], tuple[dict[str, float], list[str]]] = {}
        self.bag = Bag({**{i.key: i.frames for i in self.intents},
                        **{f"{NONE}:{kind}": sentences for kind, sentences in not_commands.items() if sentences}},
                       {**{i.key: self.prior for i in self.intents},
                        **{f"{NONE}:{kind}": self.none_prior for kind in not_commands}})
        # What speech to text mishears: the words the capabilities' templates and commands are made of.
        self.respeller = Respeller({i.capability for i in self.intents} | names |
                                   {t for i in self.intents for f in i.templated for t in f if not t.startswith("{")},
                                   {pair for i in self.intents for f in i.templated for pair in zip(f, f[1:])})
        self.general = NGrams([s for sentences in not_commands.values() for s in sentences] +
                              [f for i in self.intents for f in i.frames], VOCABULARY)

    def tokens(self, sentence: str) -> tuple[Word, ...]:
        return trimmed(self.respeller.mend(words(sentence)))

    def _looked_at(self, plain: tuple[str, ...]) -> tuple[dict[str, float], list[str]]:
        """The bag of words' shares for a sentence, and its labels best first (the last few kept)."""
        found = self._looks.get(plain)
        if found is None:
            if len(self._looks) > 256:
                self._looks.clear()
            shares = self.bag.shares(plain)
            found = self._looks[plain] = (shares, sorted(shares, key=lambda label: shares[label], reverse=True))
        return found

    def capabilities(self, sentence: str) -> set[str]:
        """The capabilities whose intents the bag of words finds likely for a sentence (their templates
        are worth matching), and those with a web address slot when it holds one."""
        tokens = self.tokens(sentence)
        ranked = self._looked_at(tuple(t.text for t in tokens))[1]
        found = {self.by_key[label].capability for label in ranked[:SHORTLIST] if label in self.by_key}
        if any(t.address for t in tokens):
            found |= {i.capability for i in self.intents if any(s.addresses for s in i.slots.values())}
        return found

    def read(self, sentence: str) -> list[Candidate]:
        """The best reading of each likely intent, best first, and ``none``'s score as a candidate."""
        tokens = self.tokens(sentence)
        if not tokens or len(tokens) > MAX_WORDS or all(t.text in NOT_NAMES for t in tokens):
            return []  # nothing to read, too long to read, or only little words ("the", "and then")
        plain = tuple(t.text for t in tokens)
        bag, ranked = self._looked_at(plain)
        kinds = [label.partition(":")[2] for label in ranked if label.startswith(f"{NONE}:")][:SHORTLIST]
        none_score, kind = max(((self.nones[kind].logprob(plain) + self.none_prior, kind) for kind in kinds),
                               default=(-1e9, ""))
        none = Candidate(Intent(NONE, "", "", {"kind": kind}, {}), {}, {}, none_score)
        by_bag = [self.by_key[label] for label in ranked if label in self.by_key][:SHORTLIST]
        typed = [i for i in self.intents if any(s.addresses for s in i.slots.values())] \
            if any(t.address for t in tokens) else []
        first = list({i.key: i for i in by_bag + typed}.values())
        candidates = [c for intent in first if (c := self._best(intent, sentence, tokens))]
        candidates.append(none)
        for candidate in candidates:
            share = bag.get(candidate.intent.key, 0.0) if candidate.intent.key != NONE else \
                sum(v for k, v in bag.items() if k.startswith(f"{NONE}:"))
            candidate.score += BAG * math.log(max(share, 1e-12))
        top = max(c.score for c in candidates)
        shares = [math.exp(c.score - top) for c in candidates]
        for candidate, share in zip(candidates, shares):
            candidate.confidence = share / sum(shares)
        return sorted(candidates, key=lambda c: c.score, reverse=True)

    def _best(self, intent: Intent, sentence: str, tokens: tuple[Word, ...]) -> Candidate | None:
        plain = tuple(t.text for t in tokens)
        if intent.whole:  # the clause as said, without what it was wrapped in ("can you ... please")
            score = intent.model.logprob(plain) + self.prior + UNKNOWN * sum(t not in intent.model.known for t in plain)
            said = sentence[tokens[0].start:tokens[-1].end]
            return Candidate(intent, {intent.whole: said}, {intent.whole: said}, score, frame=plain)
        spans = {name: self._spans(intent, slot, sentence, tokens) for name, slot in intent.slots.items()
                 if slot.kind != "text"}
        texts = [name for name, slot in intent.slots.items() if slot.kind == "text"]
        needed = {name for value in intent.compose.values() for name in re.findall(r"\{(\w+)\}", value)} | \
            (intent.required - intent.compose.keys())
        best: tuple[float, dict[str, Any]] | None = None
        for chosen in _combinations(list(spans.items())):
            if not needed - chosen.keys() and len({i for s, e, *_ in chosen.values() for i in range(s, e)}) < len(tokens):
                score = self._score(intent, sentence, tokens, chosen).score
                if best is None or score > best[0]:
                    best = (score, chosen)
            if texts and needed - chosen.keys() <= {texts[0]}:
                found = self._best_text(intent, tokens, chosen, texts[0])
                if found and (best is None or found[0] > best[0]):
                    best = found
        return self._score(intent, sentence, tokens, best[1]) if best else None

    def _best_text(self, intent: Intent, tokens: tuple[Word, ...], chosen: dict[str, Any], name: str) -> tuple[float, dict[str, Any]] | None:
        """The best span of free words for the text slot ``name`` beside the ``chosen`` slots, and its score:
        the frame's n-gram score split into what comes before the slot, the slot, and what follows, so
        that each span costs a few lookups instead of a whole sentence's."""
        model, known = intent.model, intent.model.known
        starts = {span[0]: (key, span) for key, span in chosen.items()}
        frame: list[str] = []
        where: list[int | None] = []  # the token index of each free frame word
        index, fixed = 0, self.prior
        while index < len(tokens):
            if index in starts:
                key, span = starts[index]
                frame.append(f"{{{key}}}")
                where.append(None)
                fixed += span[3]
                index = span[1]
            else:
                frame.append(tokens[index].text)
                where.append(index)
                index += 1
        size, slot, pad = len(frame), f"{{{name}}}", ("<s>",) * 3

        def lp(history: tuple[str, ...], word: str) -> float:
            return math.log(model.prob(history[-3:], word))

        unknown = [UNKNOWN * (word not in known) for word in frame]
        unknown_slot = UNKNOWN * (slot not in known)
        before = [0.0] * (size + 1)  # the frame before position s, scored
        for i in range(size):
            before[i + 1] = before[i] + lp(pad + tuple(frame[:i]), frame[i]) + unknown[i]
        after = [0.0] * (size + 1)  # what follows position e, from its third word on, and the end
        for e in range(size + 1):
            rest = frame[e:]
            history = (slot, *rest[:2])
            after[e] = sum(lp(history + tuple(rest[2:k]), rest[k]) for k in range(2, len(rest))) + \
                (lp(history + tuple(rest[2:]), "</s>") if len(rest) >= 2 else 0.0) + sum(unknown[e:])
        best = None
        for s in range(size):
            first = where[s]
            if first is None:
                continue
            head = pad + tuple(frame[:s])
            content = 0.0
            for e in range(s + 1, size + 1):
                last = where[e - 1]
                if last is None:
                    break
                content += self._content_word(intent, name, tokens, first, last)
                if not any(where[i] is not None for i in (*range(s), *range(e, size))):
                    continue  # slots alone would take anything
                tail = head + (slot,) + tuple(frame[e:e + 2])
                score = fixed + before[s] + lp(head, slot) + unknown_slot + content + after[e] + \
                    sum(lp(tail[:len(head) + 1 + k], frame[e + k]) for k in range(min(2, size - e))) + \
                    (lp(tail, "</s>") if size - e < 2 else 0.0)
                if best is None or score > best[0]:
                    best = (score, {**chosen, name: (first, last + 1, None, 0.0)})
        return best

    def _score(self, intent: Intent, sentence: str, tokens: tuple[Word, ...], chosen: dict[str, Any]) -> Candidate:
        """A reading with these slots filled (``chosen``: slot -> (start, end, value, cost)), scored whole."""
        starts = {span[0]: name for name, span in chosen.items()}
        frame, score, index = [], self.prior, 0
        values, said = {}, {}
        while index < len(tokens):
            name = starts.get(index)
            if name is None:
                frame.append(tokens[index].text)
                index += 1
                continue
            start, end, value, cost = chosen[name]
            frame.append(f"{{{name}}}")
            text = sentence[tokens[start].start:tokens[end - 1].end]
            said[name] = text
            if intent.slots[name].kind == "text":
                cost = self._content(intent, name, tokens[start:end])
                value = text
            values[name] = value
            score += cost
            index = end
        frame_tuple = tuple(frame)
        score += intent.model.logprob(frame_tuple)
        score += UNKNOWN * sum(token not in intent.model.known for token in frame_tuple)
        return Candidate(intent, values, said, score, frame=frame_tuple)

    def _content(self, intent: Intent, name: str, tokens: tuple[Word, ...]) -> float:
        """log P(the words of a free-text slot): what examples put in that slot, mixed with what people
        say in general (the n-gram model of every sentence the reader learnt from)."""
        return sum(self._content_word(intent, name, tokens, 0, i) for i in range(len(tokens)))

    def _content_word(self, intent: Intent, name: str, tokens: tuple[Word, ...], first: int, at: int) -> float:
        """The cost of the word at ``at`` in a free-text slot that begins at ``first``."""
        seen = intent.contents.get(name)
        said = seen[tokens[at].text] / self.content_totals[intent.key, name] if seen else 0.0
        history = (("<s>",) * 3 + tuple(t.text for t in tokens[first:at]))[-3:]
        return math.log(CONTENT * said + (1 - CONTENT) * self.general.prob(history, tokens[at].text))

    def _spans(self, intent: Intent, slot: Slot, sentence: str, tokens: tuple[Word, ...]) -> list[tuple[Any, ...]]:
        """(start, end, value, cost) of every span this slot could fill."""
        found = []
        plain = [t.text for t in tokens]
        if slot.phrases:
            longest = max(len(p) for p in slot.phrases)
            for start in range(len(tokens)):
                for end in range(start + 1, min(start + longest, len(tokens)) + 1):
                    value = slot.phrases.get(tuple(plain[start:end]))
                    if value is not None:
                        found.append((start, end, value, COST["name" if slot.kind == "name" else "list"]))
        for index, token in enumerate(tokens):
            if slot.numbers and token.number:
                found.append((index, index + 1, token.text, COST["number"]))
            elif slot.addresses and token.address:
                found.append((index, index + 1, token.text, COST["address"]))
            elif slot.kind == "name" and token.quoted:
                found.append((index, index + 1, sentence[token.start:token.end].strip('"'), COST["name"]))
        if slot.kind == "name":
            found += self._close_names(slot, sentence, tokens, found) if slot.phrases else []
            if slot.one_word or not slot.phrases:  # names of several words are taken as advertised, once some are
                found += self._unknown_names(intent, slot, sentence, tokens)
        return found

    @staticmethod
    def _unknown_names(intent: Intent, slot: Slot, sentence: str, tokens: tuple[Word, ...]) -> list[tuple[Any, ...]]:
        """Words nobody advertised, taken for a name at a cost (one word, or up to three), but never the
        intent's own words ("on", "telegram") nor a pronoun."""
        found = []
        for start in range(len(tokens)):
            for end in range(start + 1, min(start + (1 if slot.one_word else 3), len(tokens)) + 1):
                if any(t.text in intent.model.known or t.text in NOT_NAMES or t.quoted or t.address
                       for t in tokens[start:end]):
                    break
                found.append((start, end, sentence[tokens[start].start:tokens[end - 1].end], COST["word"] * (end - start)))
        return found

    @staticmethod
    def _close_names(slot: Slot, sentence: str, tokens: tuple[Word, ...], found: list[Any]) -> list[tuple[Any, ...]]:
        """Spans close to an advertised name (speech to text writes "jayson" for Jason)."""
        from rapidfuzz import fuzz, process

        names = {" ".join(p): v for p, v in slot.phrases.items()}
        exact = {(s, e) for s, e, *_ in found}
        close = []
        for start in range(len(tokens)):
            for end in range(start + 1, min(start + 4, len(tokens)) + 1):
                if (start, end) in exact:
                    continue
                said = " ".join(t.text for t in tokens[start:end])
                match = process.extractOne(said, list(names), scorer=fuzz.ratio, score_cutoff=85)
                if match:
                    close.append((start, end, names[match[0]], COST["name"] - 1.0))
        return close


def _combinations(slots: list[tuple[str, list[Any]]]) -> Iterable[dict[str, Any]]:
    """Every choice of one span (or none) per slot, without overlaps."""
    if not slots:
        yield {}
        return
    (name, spans), rest = slots[0], slots[1:]
    for tail in _combinations(rest):
        yield tail
        used: set[int] = set()
        for start, end, *_ in tail.values():
            used.update(range(start, end))
        for span in spans:
            if not used.intersection(range(span[0], span[1])):
                yield {**tail, name: span}


# -- building the intents from specs --------------------------------------------------------

TEMPLATE_SLOT = re.compile(r"\{(\w+)(?::(\w+))?\}")
REPEAT_SLOTS = ("times", "count")


def slot_for(spec: CapabilitySpec, action: ActionSpec, name: str, lists: set[str], repeats: dict[str, Any]) -> Slot:
    """What fills the placeholder ``name`` of an action's sentences (``lists``: the lists its templates
    draw it from)."""
    arg = action.arg(name)
    if name in repeats:
        return Slot(name, "list", phrases_of(list(repeats[name])), numbers=name == "count")
    lists = {n for n in lists | ({arg.names} if arg is not None and arg.names else set()) if n in spec.lists}
    phrases = {k: v for n in sorted(lists) for k, v in phrases_of(spec.lists[n], spec.rules).items()}
    if arg is not None and arg.type in ("int", "number", "choice"):
        phrases |= phrases_of(arg.choices)
    kind = "name" if arg is not None and arg.type == "name" else "list" if phrases or arg is not None and \
        arg.type in ("int", "number", "url") else "text"
    return Slot(name, kind, phrases, one_word=bool(arg is not None and arg.one_word),
                numbers=arg is not None and arg.type in ("int", "number"), addresses=arg is not None and arg.type == "url")


def intent_key(capability: str, action: str, implied: dict[str, Any], group: str = "") -> str:
    implied_text = ",".join(f"{k}={v}" for k, v in sorted(implied.items()))
    return f"{capability} {action}" + (f" [{implied_text}]" if implied_text else "") + (f" #{group}" if group else "")


def align(sentence: str, args: dict[str, Any], action: ActionSpec) -> tuple[str, dict[str, Any]] | None:
    """An example sentence with the arguments it says replaced by placeholders, and the arguments it
    implies (None when a free-text argument is not in the sentence: nothing to learn)."""
    tokens = [w.text for w in words(sentence)]
    implied = {}
    slots = []
    for name, value in args.items():
        arg = action.arg(name)
        wanted = [w.text for w in words(str(value))] if value not in (None, "") else []
        where = _find(tokens, wanted) if wanted else None
        if where is None or isinstance(value, bool):
            if arg is not None and arg.type in ("text", "name", "url") and not isinstance(value, bool):
                return None
            implied[name] = value
        else:
            slots.append((where, name))
    slots.sort(reverse=True)
    for (start, end), name in slots:
        if any(s < end and start < e for (s, e), n in slots if n != name):
            return None
        tokens[start:end] = [f"__{name}__"]
    return " ".join(tokens), implied


def _find(tokens: list[str], wanted: list[str]) -> tuple[int, int] | None:
    for start in range(len(tokens) - len(wanted) + 1):
        if tokens[start:start + len(wanted)] == wanted:
            return start, start + len(wanted)
    return None


def build_intents(specs: dict[str, CapabilitySpec], examples: Sequence[tuple[str, Command]], whole: dict[tuple[str, str], list[str]],
                  repeats: dict[str, Any]) -> list[Intent]:
    """Intents from every action's sentence groups, its examples (``(sentence, command)``) and, for
    actions that take whole sentences, the sentences given in ``whole`` (by capability, action)."""
    intents: dict[str, Intent] = {}
    lists_of: dict[tuple[str, str], set[str]] = {}

    def intent(spec: CapabilitySpec, action: ActionSpec, implied: dict[str, Any], group: str = "", **extra: Any) -> Intent:
        key = intent_key(spec.name, action.name, implied, group)
        if key not in intents:
            required = frozenset(a.name for a in action.args if not a.optional and a.name not in implied)
            intents[key] = Intent(key, spec.name, action.name, dict(implied), {}, required=required, **extra)
        return intents[key]

    def add(found: Intent, spec: CapabilitySpec, action: ActionSpec, sentence: str, listed: dict[str, str]) -> None:
        frame = frame_of(sentence)
        if any(not token.startswith("{") for token in frame):  # a frame of slots alone would take anything
            found.frames.append(frame)
        for token in frame:
            name = token[1:-1]
            if token.startswith("{") and (name not in found.slots or listed.get(name)):
                known = lists_of.setdefault((found.key, name), set())
                known.update({listed[name]} if listed.get(name) else set())
                found.slots[name] = slot_for(spec, action, name, known, repeats)

    for spec in specs.values():
        for action in spec.actions:
            for number, group in enumerate(action.sentences):
                if group.ask:  # a sentence that misses something: only its templates, spelled out, ask back
                    continue
                special = group.compose
                found = intent(spec, action, dict(group.fixed), str(number) if special else "",
                               compose=dict(group.compose))
                for template in group.templates:
                    listed = {slot or name: name for name, slot in TEMPLATE_SLOT.findall(template)}
                    renamed = TEMPLATE_SLOT.sub(lambda m: "{" + (m[2] or m[1]) + "}", template)
                    for sentence in expand(renamed, spec.rules):
                        add(found, spec, action, sentence, listed)
                        found.templated.append(frame_of(sentence))
            if action.assist and whole.get((spec.name, action.name)):
                found = intent(spec, action, {}, "whole", whole=action.assist)
                found.frames.extend(f for f in map(plain_of, whole[(spec.name, action.name)]) if f)
    for sentence, command in examples:
        owner = specs.get(command.capability)
        declared = owner.action(command.action) if owner else None
        if owner is None or declared is None:
            continue
        if declared.assist and command.args.get(declared.assist, "").strip().casefold() == sentence.strip().casefold():
            found = intent(owner, declared, {}, "whole", whole=declared.assist)
            found.frames.append(plain_of(sentence))
            continue
        aligned = align(sentence, command.args, declared)
        if aligned is not None:
            found = intent(owner, declared, aligned[1])
            add(found, owner, declared, aligned[0], {})
            for name, slot in found.slots.items():
                if slot.kind == "text" and command.args.get(name) not in (None, ""):
                    found.contents.setdefault(name, Counter()).update(w.text for w in words(str(command.args[name])))
    return list(intents.values())
