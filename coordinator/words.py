"""Words of a sentence as the coordinator reads them: tokens with their place in what was said.

Speech to text writes what it hears: "reddit dot com slash r slash python", "twenty five
percent", "you tube", "telegramme". :func:`words` turns a sentence into tokens in one spelling
(case folded; numbers said as words become digits; a web address said aloud becomes one token)
while each token remembers the characters it came from, so a slot's value is always cut from
the sentence as it was said. :class:`Respeller` then mends words a model does not know but
knows a close spelling of ("discort" is discord), or knows joined ("you tube").
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

RAW = re.compile(r'"[^"]*"|[^\s"]+')
EDGE = " \t,.!?;:()[]{}<>*\u201c\u201d\u2018"
HOST = re.compile(r"^(?:https?://)?(?:[a-z0-9-]+\.)+[a-z]{2,}(?::\d+)?(?:/\S*)?$|^https?://\S+$")
UNITS = {w: n for n, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                    "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * n for n, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
ADDRESS_WORDS = {"dot": ".", "slash": "/", "dash": "-", "hyphen": "-"}


@dataclass(frozen=True)
class Word:
    """One token: its spelling as models see it, and the characters of the sentence it stands for."""

    text: str
    start: int
    end: int
    quoted: bool = False
    address: bool = False  # a web address (said aloud or typed)
    number: bool = False


def fold(text: str) -> str:
    return text.replace("\u2019", "'").casefold()


def words(sentence: str) -> tuple[Word, ...]:
    """The sentence's tokens, numbers and spoken addresses joined, punctuation at word edges dropped."""
    raw = []
    for match in RAW.finditer(sentence):
        text = match.group()
        if text.startswith('"') and text.endswith('"') and len(text) > 1:
            raw.append(Word(fold(text[1:-1]), match.start(), match.end(), quoted=True))
            continue
        start, end = match.start(), match.end()
        while start < end and sentence[start] in EDGE:
            start += 1
        while end > start and sentence[end - 1] in EDGE and not (sentence[end - 1] == "/" and "." in text):
            end -= 1
        if start == end:
            continue
        token = fold(sentence[start:end])
        if token.endswith("%") and token[:-1].isdigit():
            raw += [Word(token[:-1], start, end - 1, number=True), Word("percent", end - 1, end)]
        elif token.endswith("'s") and token[:-2] in ("it", "that", "what", "there", "here", "who", "he", "she"):
            raw.append(Word(token, start, end))
        else:
            raw.append(Word(token, start, end, address=bool(HOST.match(token)) and not token.replace(".", "").isdigit(),
                            number=token.isdigit()))
    return tuple(_addresses(_numbers(raw)))


def _numbers(tokens: list[Word]) -> list[Word]:
    """"twenty five" is 25, "a hundred" and "one hundred" are 100."""
    out: list[Word] = []
    index = 0
    while index < len(tokens):
        value, used = _number_at(tokens, index)
        if used:
            out.append(Word(str(value), tokens[index].start, tokens[index + used - 1].end, number=True))
            index += used
        else:
            out.append(tokens[index])
            index += 1
    return out


def _number_at(tokens: list[Word], index: int) -> tuple[int, int]:
    """The number said at ``index`` and how many tokens say it (0 when none is)."""
    said = [t.text for t in tokens[index:index + 2]] + [""]
    first, second = said[0], said[1]
    if first in ("a", "one") and second == "hundred":
        return 100, 2
    tens, _, unit = first.partition("-")
    if tens in TENS and (not unit or 0 < UNITS.get(unit, 0) < 10):
        if not unit and 0 < UNITS.get(second, 0) < 10:
            return TENS[tens] + UNITS[second], 2
        return TENS[tens] + UNITS.get(unit, 0), 1
    if first in UNITS and first != "one":  # "next one" stays a word
        return UNITS[first], 1
    return 0, 0


def _addresses(tokens: list[Word]) -> list[Word]:
    """"rabbit dot tech" and "reddit dot com slash r slash python" as one address token."""
    out: list[Word] = []
    index = 0
    while index < len(tokens):
        parts, end = [tokens[index].text], index + 1
        while end + 1 < len(tokens) and tokens[end].text in ADDRESS_WORDS and _part(tokens[end + 1].text) \
                and (tokens[end].text == "dot" or len(parts) > 1):
            parts += [ADDRESS_WORDS[tokens[end].text], tokens[end + 1].text]
            end += 2
        spelled = "".join(parts)
        if len(parts) > 1 and _part(parts[0]) and HOST.match(spelled):
            out.append(Word(spelled, tokens[index].start, tokens[end - 1].end, address=True))
            index = end
        else:
            out.append(tokens[index])
            index += 1
    return out


def _part(text: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9][a-z0-9.-]*", text))


class Respeller:
    """Mends words a model does not know into words it knows: two words said apart ("you tube",
    "g mail") and close spellings of its rarer words ("discort", "telegramme"), by rapidfuzz's ratio."""

    CLOSE = 84

    def __init__(self, known: set[str], pairs: Collection[tuple[str, str]] = frozenset()) -> None:
        self.known = known
        self.pairs = pairs  # word pairs the language says apart ("open interpreter"): never joined
        self.long = sorted(w for w in known if len(w) >= 5 and w.isalpha())
        self.long_words = set(self.long)

    @lru_cache(maxsize=4096)  # noqa: B019 (a Respeller lives as long as its model)
    def respelled(self, word: str) -> str:
        if word in self.known or len(word) < 5 or not word.isalpha():
            return word
        from rapidfuzz import fuzz, process

        found = process.extractOne(word, self.long, scorer=fuzz.ratio, score_cutoff=self.CLOSE)
        if not found or found[0][0] != word[0] or _inflected(word, found[0]) or _inflected(found[0], word):
            return word  # "flight" is no misheard "light", nor "videos" a misheard "video"
        return found[0]

    def mend(self, tokens: tuple[Word, ...]) -> tuple[Word, ...]:
        out: list[Word] = []
        index = 0
        while index < len(tokens):
            this = tokens[index]
            if index + 1 < len(tokens) and not this.quoted:
                joined = this.text + tokens[index + 1].text
                if len(joined) >= 5 and joined in self.long_words and not tokens[index + 1].quoted and \
                        (this.text, tokens[index + 1].text) not in self.pairs:
                    out.append(Word(joined, this.start, tokens[index + 1].end))
                    index += 2
                    continue
            if not (this.quoted or this.address or this.number):
                spelled = self.respelled(this.text)
                if spelled != this.text:
                    this = Word(spelled, this.start, this.end)
            out.append(this)
            index += 1
        return tuple(out)

    def mended(self, sentence: str) -> str:
        """The sentence with the words :meth:`mend` mends written mended ("you tube" as youtube)."""
        pieces, at = [], 0
        for word in self.mend(words(sentence)):
            said = sentence[word.start:word.end]
            if fold(said) != word.text and not (word.number or word.address or word.quoted):
                pieces += [sentence[at:word.start], word.text]
                at = word.end
        return "".join(pieces) + sentence[at:]


def _inflected(word: str, stem: str) -> bool:
    return word.startswith(stem) and word[len(stem):] in ("s", "es", "ed", "d", "ing", "er", "ers")


OPENERS = (("hey",), ("hi",), ("ok",), ("okay",), ("so",), ("um",), ("uh",), ("alright",), ("yo",), ("well",),
           ("oh",), ("now",), ("please",), ("kindly",), ("just",), ("quickly",), ("rabbit",), ("olly",), ("also",),
           ("can", "you"), ("could", "you"), ("would", "you"), ("will", "you"), ("go", "ahead", "and"),
           ("i", "need", "you", "to"), ("i", "want", "you", "to"), ("would", "you", "mind"))
CLOSERS = (("please",), ("now",), ("thanks",), ("thank", "you"), ("for", "me"), ("right", "now"))


def trimmed(tokens: tuple[Word, ...]) -> tuple[Word, ...]:
    """The tokens without the openers and closers people wrap requests in ("hey, could you ... please")."""
    start, end = 0, len(tokens)
    changed = True
    while changed:
        changed = False
        for opener in OPENERS:
            if end - start > len(opener) and tuple(t.text for t in tokens[start:start + len(opener)]) == opener:
                start += len(opener)
                changed = True
        for closer in CLOSERS:
            if end - start > len(closer) and tuple(t.text for t in tokens[end - len(closer):end]) == closer:
                end -= len(closer)
                changed = True
    return tokens[start:end]
