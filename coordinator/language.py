"""The language the coordinator understands, built from capability specs (no capability by name).

:class:`Language` holds the specs of the capabilities at hand (those online agents advertise,
else the installed ones) and the names agents know. From them it makes

- the rigid grammar, the one gate to the agents (:meth:`Language.parse_chain`): each action's
  syntax forms, with arguments checked by the same :class:`~lamcontrol.language.Arg` code the
  agent runs;
- the sentence matcher (:meth:`Language.understand`): hassil over every action's templates, with
  openers and fillers as template rules, chains split at "and"/"then", and, for an action whose
  spec sets ``assist``, Home Assistant's own intents (home-assistant-intents) filled with the
  device and area names its agent advertises, so such a clause goes to Home Assistant exactly
  when Home Assistant will understand it;
- the command list of the LLM's instructions (:meth:`Language.command_lines`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections import deque
from pathlib import Path
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from hassil import Intents, RangeSlotList, SlotList, TextSlotList, WildcardSlotList, recognize_all
from hassil.models import MatchEntity

from lamcontrol.config import capability_entry_points
from lamcontrol.protocol import Risk
from lamcontrol.language import (ActionSpec, Arg, ArgumentError, CapabilitySpec, Recogniser, Sentences, Syntax,
                                 listed_value, read_examples, rigid_only)

from .grammar import Command, GrammarError, Known, ParseResult
from .matcher import NONE, NOT_NAMES, Reader, _Sentences, build_intents, plain_of
from .words import trimmed, words

if TYPE_CHECKING:
    from lamcontrol.agents.capability import Capability

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PROMPT = 2000
MAX_CLAUSES = 6
FUZZY = 85  # rapidfuzz ratio from which a name said is taken for an advertised one
TRAILING = re.compile(r"[\s,.!?]+$")
JOINS = re.compile(r"\s*(?:&&|,\s*and then|,\s*then|,\s*and|\band then\b|\bthen\b|\band\b|;|,)\s*", re.I)
COUNTS = {"twice": 2, "thrice": 3, **{f"{word} times": n for n, word in enumerate(
    ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"), 2)}, **{f"{n} times": n for n in range(2, 11)}}
REPEAT = re.compile(rf"^(?P<clause>.+?)\s+(?P<times>{'|'.join(COUNTS)})$", re.I)
# Slots any template may use: {times} ("twice", "three times") repeats the command, as does {count} ("skip two songs").
REPEATS = {"times": TextSlotList.from_tuples(list(COUNTS.items()), allow_template=False, name="times"),
           "count": RangeSlotList("count", start=2, stop=10)}
TOKEN = re.compile(r'"[^"]*"|\S+')
JAILBREAK = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass)\b.{0,40}\b(?:instructions?|rules|prompts?|guidelines|"
    r"restrictions|programming|directives?|guardrails|everything)\b|\byou are now\b|\bdeveloper mode\b|"
    r"\bjailbreak|\bsystem prompt\b|\bnew instructions\b|\b(?:pretend|act as if) (?:you|there)\b", re.I)
CHATTER = re.compile(r"(?:thanks|thank you|thank you so much|hello|hi|hey|good (?:morning|afternoon|evening|night)|"
                     r"bye|goodbye|see you|you're (?:great|awesome|the best)|i love you|nice|cool|awesome)"
                     r"(?: (?:rabbit|buddy|friend|there))?", re.I)
QUESTION = re.compile(r"^(?:tell me|explain|describe|can you tell me|do you know|i (?:want|need) to know|i wonder|"
                      r"what|who|whom|whose|why|how|when|where|which|is|are|am|was|were|do|does|did|"
                      r"should|shall|may|might)\b", re.I)
AMBIGUOUS = "the templates read it more than one way"
REMEMBERED = 512  # prompts whose reading a language keeps (the same button, the same words, again)
# Learned readers of recent sets of specs: training one takes a second or two, and the online agents change often.
READERS: deque[tuple[tuple[Any, ...], Reader]] = deque(maxlen=4)  # by what they were trained on
NAMED: deque[tuple[tuple[str, str], CapabilitySpec]] = deque(maxlen=16)  # specs with the names given them lately
SURE = 0.8  # the learned reader's share from which a reading runs without asking
ASK = 0.4  # from this share up to SURE, the person is asked first ("Did you mean ...?")
NOT_A_COMMAND = 0.97  # the learned reader's share for "no command" that makes even a spelled-out template doubtful
NOT_COMMANDS = Path(__file__).with_name("not_commands.tsv")
NO_ANSWERS = ("That sounds like a question; no agent that answers questions is online (the ai capability "
              "answers them once it has a Groq key: set GROQ_API_KEY or [groq] api_key_file).")


class _Said(dict[str, Any]):
    """Slot values for a question back; a slot the reading did not fill reads as "that"."""

    def __missing__(self, key: str) -> str:
        return "that"


@lru_cache(maxsize=8)
def not_commands(held_out: frozenset[str] = frozenset()) -> _Sentences:
    """Sentences that are no command for anyone (as model tokens), by kind (a question, an alarm, ...)."""
    kinds = _Sentences()
    for said, kind, *source in read_examples(NOT_COMMANDS.read_text(encoding="utf-8")):
        if not (source and source[0] in held_out):
            kinds.setdefault(kind, []).append(plain_of(said))
    return kinds


def screen(prompt: str) -> str:
    """Why no parser should see this prompt (empty, too long, changing the rules), or ''."""
    if not prompt.strip(" \t\r\n.!?,;\"'`"):
        return "The prompt is empty."
    if len(prompt) > MAX_PROMPT:
        return "The prompt is too long; say one thing at a time."
    if JAILBREAK.search(prompt):
        return "I only carry out commands; I can't change my instructions."
    return ""


def folded(text: str) -> str:
    return " ".join(text.replace("\u2019", "'").casefold().strip(" \"'.,!?").split())


def remembered(method: Callable[[Language, str], ParseResult]) -> Callable[[Language, str], ParseResult]:
    """Keep a language's reading of a text: it depends on nothing else (a changed language is a new
    :class:`Language`). Each caller gets its own :class:`ParseResult` to annotate."""

    @functools.wraps(method)
    def reading(self: Language, text: str) -> ParseResult:
        key = (method.__name__, text)
        result = self._remembered.get(key)
        if result is None:
            if len(self._remembered) >= REMEMBERED:
                self._remembered.clear()
            result = self._remembered[key] = method(self, text)
        return replace(result, commands=list(result.commands))

    return reading


@dataclass
class Reading:
    """One way to read a clause: commands (or a question back, or an error) and how sure it is."""

    commands: list[Command] = field(default_factory=list)
    reason: str = ""
    score: tuple[Any, ...] = ()
    how: str = ""
    swallowed: bool = False  # a free-text slot took an "and" or a "then": maybe two requests
    confidence: float = 1.0  # the learned reader's share for this reading (templates spelling it out: 1)
    runner_up: str = ""  # the learned reader's next best intent, and its share
    unsure: bool = False  # likely but not sure: ask the person (or the LLM) before running it
    free: bool = False  # a template's free-text slot took words: the template alone does not make it sure
    none: float = 0.0  # the learned reader's share for "no command at all"
    asks: bool = False  # a template for a sentence that misses something: the reason is a question back
    own: bool = False  # read by its capability's own reader of sentences (Home Assistant's intents, for home)
    named: bool = False  # a template slot took a name agents advertise (a contact, an app)
    learned: bool = False  # read by the learned reader, not spelled out by a template

    @property
    def ok(self) -> bool:
        return bool(self.commands) and not self.reason


class Language:
    """Specs by capability name, plus the names agents know (``{capability: [names]}``)."""

    def __init__(self, specs: dict[str, CapabilitySpec], names: dict[str, list[Any]] | None = None,
                 online: set[str] | None = None, held_out: frozenset[str] = frozenset()) -> None:
        self.online = online  # the capabilities online agents offer (None: all of them), for the LLM
        self.held_out = held_out  # sources of examples not to learn from (to measure on them)
        self._remembered: dict[tuple[str, str], ParseResult] = {}
        self.specs = {name: self._with_names(spec, (names or {}).get(name, ())) for name, spec in specs.items()}
        self.forms: dict[str, list[tuple[CapabilitySpec, ActionSpec, Syntax]]] = {}
        for spec in self.specs.values():
            for action in spec.actions:
                for form in action.syntax:
                    self.forms.setdefault(form.literals[0], []).append((spec, action, form))
        for forms in self.forms.values():  # the form with the most literal words first
            forms.sort(key=lambda f: -len(f[2].literals))

    @staticmethod
    def _with_names(spec: CapabilitySpec, names: Iterable[str]) -> CapabilitySpec:
        """Names given for a capability as a whole (``--names home=...``) join the lists its slots read (as
        its installed class says, when it is installed here)."""
        names = list(names)
        if not names:
            return spec
        key = (spec.fingerprint, repr(names))
        for known, named in NAMED:
            if known == key:
                return named
        named = Language._named(spec, names)
        NAMED.append((key, named))
        return named

    @staticmethod
    def _named(spec: CapabilitySpec, names: list[str]) -> CapabilitySpec:
        installed_class = capability_classes().get(spec.name)
        lists = installed_class.given_names(names) if installed_class else \
            {k: list(names) for action in spec.actions for a in action.args if (k := a.names)}
        return spec.with_lists(lists, add=True)

    @classmethod
    def with_rigid(cls, specs: dict[str, CapabilitySpec], offered: dict[str, list[str]],
                   names: dict[str, list[Any]] | None = None, online: set[str] | None = None) -> Language:
        """Specs, plus ``<capability> <action> <text>`` for capabilities offered without one."""
        merged = {c: rigid_only(c, a) for c, a in offered.items() if c not in specs}
        return cls({**merged, **specs}, names, online)

    def compile(self) -> None:
        """Build everything reading needs now, raising what hassil raises: every sentence template parsed
        (hassil parses them when first matched) and the learned reader trained, not at the first prompt."""
        for intents, *_ in self._intents.values():
            for intent in intents.intents.values():
                for data in intent.data:
                    data.sentences  # noqa: B018 (hassil parses templates lazily)
        self.reader  # noqa: B018

    def _shown(self) -> list[CapabilitySpec]:
        return sorted((s for s in self.specs.values() if self.online is None or s.name in self.online),
                      key=lambda s: s.name)

    # -- the rigid grammar ----------------------------------------------------------------

    def command(self, spec: CapabilitySpec, action: ActionSpec, args: dict[str, Any], spoken: bool = False) -> Command:
        """A checked command; its text re-reads as the same command."""
        checked = action.check(args, spoken)
        form = next((f for f in action.syntax if all(checked.get(k) == v for k, v in f.fixed.items())
                     and all(w[1:-1] in checked or getattr(action.arg(w[1:-1]), "optional", False)
                             for w in f.words if w.startswith("{"))), action.syntax[0])
        words = []
        shape = form.words
        for index, word in enumerate(shape):
            if not word.startswith("{"):
                words.append(word)
            elif word[1:-1] in checked:
                value = str(checked[word[1:-1]])
                words.append(f'"{value}"' if " " in value and index < len(shape) - 1 else value)
        return Command(spec.name, action.name, checked, " ".join(words), risk=action.risk_of(checked),
                       idempotent=action.idempotent_for(checked), photo=action.photo, shows=action.shows_for(checked))

    def parse_command(self, text: str) -> Command:
        """One rigid command, or a GrammarError saying what is wrong."""
        return self._parse_command(text)[0]

    def _parse_command(self, text: str) -> tuple[Command, Syntax]:
        """One rigid command and the form it was read by."""
        text = text.strip()
        tokens = list(TOKEN.finditer(text))
        if not tokens:
            raise GrammarError("The command is empty.")
        verb = tokens[0].group().casefold()
        problem = None
        for spec, action, form in self.forms.get(verb, ()):
            args = self._fill(text, tokens, spec, action, form)
            if args is None:
                continue
            try:
                command = self.command(spec, action, {**args, **form.fixed})
            except ArgumentError as exc:
                problem = problem or str(exc)
                continue
            command.text = " ".join(t.group() for t in tokens) if not any('"' in t.group() for t in tokens) \
                else command.text
            return command, form
        raise GrammarError(problem or f"I don't know the command {verb!r}.")

    def _fill(self, text: str, tokens: list[Any], spec: CapabilitySpec, action: ActionSpec, form: Syntax) -> dict[str, Any] | None:
        """The form's slots read from the tokens, or None when its literal words are not there."""
        args: dict[str, Any] = {}
        at = 0
        words = form.words
        for index, word in enumerate(words):
            last = index == len(words) - 1
            if not word.startswith("{"):
                if at >= len(tokens) or tokens[at].group().casefold() != word.casefold():
                    return None
                at += 1
                continue
            name = word[1:-1]
            if at >= len(tokens):  # a missing argument: the check says which
                return args
            if last:
                args[name] = text[tokens[at].start():].strip()
                return args
            listed = self._listed(spec, action, name, [t.group() for t in tokens[at:]])
            if listed:
                args[name], at = listed[0], at + listed[1]
            else:
                args[name], at = tokens[at].group().strip('"'), at + 1
        return args if at == len(tokens) else None

    def _listed(self, spec: CapabilitySpec, action: ActionSpec, name: str, words: list[str]) -> tuple[Any, ...] | None:
        """The longest advertised name the words start with: (its spelling, words used)."""
        arg = action.arg(name)
        if arg is None or not arg.names:
            return None
        for size in range(min(len(words), 6), 1, -1):
            found = self.canonical(spec, arg.names, " ".join(words[:size]))
            if found:
                return found, size
        return None

    def canonical(self, spec: CapabilitySpec, list_name: str, said: str) -> str:
        """The advertised spelling of a name said, or ''; a close spelling counts (speech to text
        writes "jayson" for Jason), by rapidfuzz's ratio."""
        from rapidfuzz import fuzz, process

        names = {folded(listed_value(v)): listed_value(v) for v in spec.lists.get(list_name, ())}
        wanted = folded(said)
        if wanted in names or not wanted:
            return names.get(wanted, "")
        found = process.extractOne(wanted, list(names), scorer=fuzz.ratio, score_cutoff=FUZZY)
        return names[found[0]] if found else ""

    @remembered
    def parse_chain(self, text: str) -> ParseResult:
        """A whole prompt in the rigid grammar: ``x``, one command, or ``&&`` chains."""
        stripped = text.strip().strip("`").strip()
        if not stripped:
            return ParseResult(reason="The prompt is empty.")
        if stripped.lower() == "x":
            return ParseResult(reason="That is not something I can do.")
        try:
            parsed = [self._parse_command(part) for part in stripped.split("&&")]
        except GrammarError as exc:
            return ParseResult(reason=str(exc))
        # Two words of a form or more ("google home", "computer volume") are no sentence's start.
        return ParseResult(commands=[command for command, _ in parsed],
                           specific=all(len(form.literals) >= 2 for _, form in parsed))

    # -- sentences ------------------------------------------------------------------------

    @cached_property
    def _intents(self) -> dict[str, tuple[Intents, dict[str, Any], dict[str, Any], set[str]]]:
        """Per capability: hassil intents of every action's sentences, the slot lists, intent name -> what
        it means, and the one-word name slots (filled per clause)."""
        return {spec.name: self._capability_intents(spec) for spec in self.specs.values()}

    def _capability_intents(self, spec: CapabilitySpec) -> tuple[Intents, dict[str, Any], dict[str, Any], set[str]]:
        data: dict[str, Any] = {"language": "en", "intents": {}, "lists": {}, "expansion_rules": {}}
        meaning: dict[str, tuple[Any, ...]] = {}
        lists: dict[str, Any] = dict(REPEATS)
        dynamic: set[str] = set()  # one-word names: filled per clause with its words and advertised names
        prefix = f"{spec.name}__"

        def rename(template: str) -> str:
            return re.sub(r"<(\w+)>", lambda m: f"<{prefix}{m[1]}>" if m[1] in spec.rules else m[0], template)

        for rule, body in spec.rules.items():
            data["expansion_rules"][prefix + rule] = rename(body)
        for action in spec.actions:
            for number, group in enumerate(action.sentences):
                key = f"{spec.name}|{action.name}|{number}"
                templates = [rename(t) for t in group.templates]
                for listed, slot in set(re.findall(r"\{(\w+)(?::(\w+))?\}", " ".join(templates))):
                    name = f"{prefix}{action.name}__{listed}"
                    arg = action.arg(slot or listed)
                    if listed in REPEATS:
                        continue
                    if (arg is None or slot) and listed in spec.lists:  # a declared list, parsed by hassil
                        data["lists"][name] = {"values": spec.lists.get(listed, [])}
                    elif arg is not None and arg.one_word:
                        dynamic.add(name)
                    else:  # typed slots; free ones (``{rest}``) are wildcards
                        lists[name] = self._slot_list(name, arg)
                own = f"{prefix}{action.name}__"
                slotted = [re.sub(r"\{(\w+)(?::(\w+))?\}", lambda m: m[0] if m[1] in REPEATS
                                  else f"{{{own}{m[1]}:{m[2] or m[1]}}}", t) for t in templates]
                data["intents"][key] = {"data": [{"sentences": slotted}]}
                meaning[key] = (spec, action, group)
        return Intents.from_dict(data), lists, meaning, dynamic

    @staticmethod
    def _slot_list(name: str, arg: Arg | None) -> SlotList:
        """Numbers as numbers (wider than allowed, so the check can say why), choices as words, else wildcards."""
        if arg is not None and arg.type in ("int", "number"):
            return RangeSlotList(name, start=0, stop=1000)
        if arg is not None and arg.type == "choice":
            return TextSlotList.from_strings(arg.choices, name=name)
        return WildcardSlotList(name)

    @remembered
    def understand(self, prompt: str) -> ParseResult:
        """The prompt read by the templates: commands, or none and why; ``why`` says how they matched."""
        why = screen(prompt)
        if why:
            return ParseResult(parser="sentences", reason=why)
        text = TRAILING.sub("", prompt.strip())
        readings: dict[str, Reading] = {}  # each clause is read once per prompt

        def clause(part: str) -> Reading:
            if part not in readings:
                readings[part] = self.clause(part)
            return readings[part]

        best = self._chain(text, tuple(m.span() for m in JOINS.finditer(text))[:2 * MAX_CLAUSES], clause)
        if best and all(r.ok for r in best):
            best = self._carry_verbs(best)
            hows = sorted({r.how for r in best})
            least = min(best, key=lambda r: r.confidence)
            unsure = [c for r in best if r.unsure for c in r.commands]
            return ParseResult(commands=[c for r in best for c in r.commands], parser="sentences",
                               why=AMBIGUOUS if AMBIGUOUS in hows else f"matched by {' and '.join(hows)}",
                               question=f"Did you mean: {' and '.join(c.text for c in unsure)}?" if unsure else "",
                               confidence=least.confidence, runner_up=least.runner_up,
                               learned=any(r.learned for r in best))
        whole = clause(text)
        core = _without_fillers(text)
        return ParseResult(parser="sentences", reason=self._why_not(text, clause), asks=whole.asks,
                           answerable=not whole.reason and bool(prompt.rstrip().endswith("?") or QUESTION.match(core)
                                                                or CHATTER.fullmatch(core)))

    def open_question(self, prompt: str, photo: bool = False) -> ParseResult | None:
        """A question or chatter (or whatever is said about a photo) for the action that takes open
        questions (ai's), when one is at hand; the person is told when none is. None when it is neither."""
        if not (photo or self.understand(prompt).answerable):
            return None
        found = next(((spec, action) for spec in self._shown() for action in spec.actions if action.questions), None)
        if found is None:
            return ParseResult(parser="sentences", reason=NO_ANSWERS)
        spec, action = found
        text = TRAILING.sub("", prompt.strip())
        command = self.command(spec, action, {action.questions: text})
        return ParseResult(commands=[command], parser="sentences", why=f"a question, for {spec.name}")

    def _chain(self, text: str, joins: tuple[tuple[int, int], ...], clause: Callable[[str], Reading]) -> list[Reading] | None:
        """The reading with the most clauses, every one understood (None if there is none). A whole
        reading wins when no free-text slot swallowed an "and" or a "then"."""
        memo: dict[int, list[Reading] | None] = {}

        def best(at: int) -> list[Reading] | None:
            if at not in memo:
                whole = clause(text[at:].strip())
                # The learned reader reads a whole sentence even across "and": only a split may do that.
                options = [[whole]] if whole.ok and not (whole.swallowed and whole.learned) else []
                if not (whole.ok and not whole.swallowed):
                    for join_start, join_end in joins:
                        head = text[at:join_start].strip() if join_start > at else ""
                        first = clause(head) if head else None
                        rest = best(join_end) if first and first.ok else None
                        if first and rest:
                            options.append([first, *rest])
                # Sure readings first, then those whose free text took no "and", then the fewest clauses:
                # a template spelling out "open youtube and play lofi" beats two commands.
                memo[at] = max(options, key=lambda o: (not any(r.unsure for r in o), not any(r.swallowed for r in o),
                                                       -len(o)), default=None)
            return memo[at]

        return best(0)

    def _carry_verbs(self, readings: list[Reading]) -> list[Reading]:
        """A clause its capability's own reader read after another ("turn off the kitchen light and the
        bedroom light") may do what the one before it did; that reader says."""
        carried = readings[:1]
        for this in readings[1:]:
            before = carried[-1]
            if before.own and this.own and len(before.commands) == len(this.commands) == 1 and \
                    before.commands[0].capability == this.commands[0].capability:
                this = self._carried(before.commands[0], this.commands[0]) or this
            carried.append(this)
        return carried

    def _carried(self, before: Command, this: Command) -> Reading | None:
        spec = self.specs[this.capability]
        action = spec.action(this.action)
        assert action is not None  # a command of this language
        redone = self.recognisers[spec.name].carried(before.args[action.assist], this.args[action.assist])
        return Reading([self.command(spec, action, {action.assist: redone})], how=_own_reader(spec), own=True) \
            if redone else None

    def _why_not(self, text: str, clause: Callable[[str], Reading]) -> str:
        whole = clause(text)
        if whole.reason:
            return whole.reason
        for start, end in [m.span() for m in JOINS.finditer(text)]:
            first = clause(text[:start].strip())
            if first.ok:
                rest = text[end:].strip()
                return f"I understood \"{text[:start].strip()}\" but not \"{rest}\"."
        return "I don't know how to do that."

    def clause(self, text: str) -> Reading:
        """The best reading of one clause (a repeat count at its end repeats the command)."""
        repeat = REPEAT.match(text)
        if repeat:
            once = self.clause(repeat["clause"])
            if once.ok:
                times = COUNTS[repeat["times"].casefold()]
                return Reading(once.commands * times, score=once.score, how=once.how, swallowed=once.swallowed)
        learned = self._learned(text)
        nearby = self._worded(text)
        exact = sorted((self._checked(r, learned) for r in self._readings(text, nearby) + self._assist(text)),
                       key=lambda r: r.score, reverse=True)
        sure = [r for r in exact if r.ok and not r.unsure]
        asks = [r for r in exact if r.asks]
        refused = [r for r in exact if r.reason and not r.asks]
        # Templates spelling the clause out, or their question back ("What should I search for?"), unless
        # the learned reader doubts them; then those it doubts (to be asked about first); the learned
        # reader's reading if it is sure and needs no confirmation; a template's refusal (naming what is
        # wrong: "run sudo reboot" is no application); then the learned reader's reading, to ask about.
        sure_learned = [learned] if learned.ok and not learned.unsure and all(c.risk == Risk.LOW for c in learned.commands) \
            else []
        ranked = sorted(sure + asks, key=lambda r: r.score, reverse=True) or [r for r in exact if r.ok] or sure_learned \
            or refused or [learned]
        best = ranked[0]
        rivals = [r for r in ranked[1:] if r.score == best.score and r.ok and
                  [c.text for c in r.commands] != [c.text for c in best.commands]]
        if best.ok and rivals:
            best.how = AMBIGUOUS
        return best

    def spelled(self, text: str) -> list[Command]:
        """The commands of the first reading the templates alone (no learned reader) make of the whole text."""
        return next((r.commands for r in self._readings(TRAILING.sub("", text.strip())) + self._assist(text) if r.ok), [])

    def _readings(self, text: str, capabilities: set[str] | None = None) -> list[Reading]:
        """What the templates of these capabilities (default: all) spell out for the clause, without the
        openers and closers people wrap it in ("hey rabbit, could you ... please")."""
        text = _without_fillers(self.reader.respeller.mended(text))
        return [r for name, compiled in self._intents.items() if capabilities is None or name in capabilities
                for r in self._capability_readings(text, *compiled)]

    @cached_property
    def _keywords(self) -> dict[str, set[str]]:
        """Per capability, the words its templates, rules and lists spell out, but those most capabilities
        share ("the", "to"): a clause none of them is in cannot match its templates."""
        said = {spec.name: _spelled(spec) for spec in self.specs.values()}
        common = {w for w in set().union(*said.values()) if sum(w in found for found in said.values()) > len(said) / 2}
        return {name: found - common for name, found in said.items()}

    def _worded(self, text: str) -> set[str]:
        """The capabilities whose templates could match the clause: it says one of their words."""
        said = {w.text for w in words(text)}
        return {name for name, found in self._keywords.items() if found & said}

    def _capability_readings(self, text: str, intents: Intents, lists: dict[str, Any], meaning: dict[str, Any], dynamic: set[str]) -> list[Reading]:
        if dynamic:
            spoken = {w.strip(",.!?:") for w in text.split() if w.casefold().strip(",.!?:") not in NOT_NAMES} | \
                set(re.findall(r'"[^"]+"', text))
            advertised = {listed_value(v) for spec in self.specs.values() for action in spec.actions
                          for a in action.args if a.one_word for v in spec.lists.get(a.names, ())}
            words = TextSlotList.from_tuples([(w, w) for w in spoken | advertised if w], allow_template=False)
            lists = {**lists, **{name: words for name in dynamic}}
        readings = []
        for result in recognize_all(text, intents, slot_lists=lists):
            if not all(_whole_words(text, entity) for entity in result.entities.values() if entity.is_wildcard):
                continue  # a wildcard that begins or ends inside a word ("playing" is no "play" + "ing")
            spec, action, group = meaning[result.intent.name]
            values = {name: _original(text, entity) if entity.is_wildcard else entity.value
                      for name, entity in result.entities.items()}
            said = {name: _original(text, entity) for name, entity in result.entities.items()}
            swallowed = any(entity.is_wildcard and JOINS.search(str(entity.text)) for entity in result.entities.values())
            listed = sum(1 for name, entity in result.entities.items() if name not in REPEATS
                         and (entity.value != entity.text or _typed(action.arg(name))))
            if group.ask:
                readings.append(Reading(reason=group.ask.format(**said), score=(2, listed, result.text_chunks_matched),
                                        asks=True))
                continue
            try:
                args = self._args(spec, action, group, values, said)
                named = sum(1 for a in action.args if a.names and self.canonical(spec, a.names, said.get(a.name, "")))
                listed += named
                command = self.command(spec, action, args, spoken=True)
            except ArgumentError as exc:
                readings.append(Reading(reason=str(exc), score=(1, listed, result.text_chunks_matched)))
                continue
            times = int(values.get("times") or values.get("count") or 1)
            readings.append(Reading([command] * times, score=(2, listed, result.text_chunks_matched),
                                    how=f"the {spec.name} templates", swallowed=swallowed, named=bool(named),
                                    free=any(entity.is_wildcard for entity in result.entities.values())))
        return readings

    @cached_property
    def reader(self) -> Reader:
        """The learned reader: every action's templates and examples, and sentences that are no command.
        It depends on what the specs say alone, so a language of the same specs (an agent came back, or
        came or went beside another that offers the same) takes the one already trained."""
        key = (self.held_out, tuple(sorted((name, spec.fingerprint) for name, spec in self.specs.items())))
        for known, reader in READERS:
            if known == key:
                return reader
        reader = self._trained()
        READERS.append((key, reader))
        return reader

    def _trained(self) -> Reader:
        examples = []
        for spec in self.specs.values():
            for said, command, *source in spec.examples:
                if source and source[0] in self.held_out:
                    continue
                try:
                    examples.append((said, self.parse_command(command)))
                except GrammarError:
                    log.debug("%s: example %r is not a command of this language: %s", spec.name, said, command)
        words_of_forms = {w for forms in self.forms.values() for _, _, form in forms for w in form.literals}
        repeats = {"times": [{"in": said, "out": str(n)} for said, n in COUNTS.items()], "count": ()}
        return Reader(build_intents(self.specs, examples, {}, repeats),
                      not_commands(self.held_out), words_of_forms)

    @staticmethod
    def _checked(reading: Reading, learned: Reading) -> Reading:
        """A template reading, weighed by the learned reader. Unless it only shows something or names what an
        agent advertised, it is asked about first when the learned reader is sure the clause is no command,
        and dropped when a free-text
        slot took words (the template shows only the frame) and the learned reader is sure of another action."""
        if not reading.ok:
            return reading
        same = bool(learned.commands) and (learned.commands[0].capability, learned.commands[0].action) == \
            (reading.commands[0].capability, reading.commands[0].action)
        other = learned.ok and not learned.unsure and not same
        shows = all(c.shows for c in reading.commands) or reading.own  # its capability's own reader is sure
        if reading.free and other and not (shows and all(c.shows for c in learned.commands)):
            # Sure of another action: the frame misled the template (unless both only show something).
            return Reading(how=f"{reading.how}, but the learned reader is sure it is another action")
        doubted = not (shows or reading.named) and learned.none >= NOT_A_COMMAND
        reading.runner_up = learned.runner_up
        if not doubted:
            reading.confidence = learned.confidence if same else 1.0 - learned.none
            return reading
        return replace(reading, unsure=True, confidence=learned.confidence if same else 0.0,
                       how=f"{reading.how}, but the learned reader doubts it")

    def _learned(self, text: str) -> Reading:
        """The learned reader's best reading of a clause: sure, unsure (ask first) or none."""
        candidates = self.reader.read(text)
        commands = [c for c in candidates if c.intent.key != NONE]
        none = next((c.confidence for c in candidates if c.intent.key == NONE), 0.0)
        if not commands or candidates[0].intent.key == NONE:
            return Reading(none=none)
        best = commands[0]
        rival = next((c for c in candidates if c.intent.key != best.intent.key), None)
        runner_up = f"{rival.intent.key} ({rival.confidence:.2f})" if rival else ""
        score = (1, best.confidence)
        if best.confidence < ASK:
            return Reading(score=(0, best.confidence), confidence=best.confidence, runner_up=runner_up,
                           how=f"not sure enough of {best.intent.key}", none=none)
        intent = best.intent
        spec = self.specs[intent.capability]
        action = spec.action(intent.action)
        assert action is not None  # the intents are made from these specs
        if intent.ask:
            return Reading(reason=intent.ask.format_map(_Said(best.said)), score=score, confidence=best.confidence,
                           runner_up=runner_up, how="learned")
        try:
            values = {**best.values, **intent.implied}
            group = Sentences((), fixed={}, compose=intent.compose)
            args = self._args(spec, action, group, values, _Said(best.said))
            command = self.command(spec, action, args, spoken=True)
        except ArgumentError as exc:
            return Reading(reason=str(exc), score=(0, best.confidence), confidence=best.confidence)
        times = int(values.get("times") or values.get("count") or 1)
        return Reading([command] * times, score=score, how=f"learned from the {spec.name} language", learned=True,
                       swallowed=best.swallowed or bool(JOINS.search(text)), confidence=best.confidence, runner_up=runner_up,
                       unsure=best.confidence < SURE and not command.shows, none=none)

    def _args(self, spec: CapabilitySpec, action: ActionSpec, group: Sentences, values: dict[str, Any],
              said: dict[str, Any]) -> dict[str, Any]:
        """A template match's slots as arguments: fixed values, composed ones, advertised spellings."""
        args = {k: v for k, v in values.items() if action.arg(k) is not None}
        args.update({k: v.format(**said) for k, v in group.compose.items()})
        args.update(group.fixed)
        for arg in action.args:
            if arg.names and isinstance(args.get(arg.name), str):
                value = args[arg.name]
                spelled = self.canonical(spec, arg.names, value)
                if spelled:
                    args[arg.name] = spelled
                elif value.startswith('"') and value.endswith('"'):
                    args[arg.name] = value.strip('"')
                elif arg.one_word and len(value.split()) > 1:
                    raise ArgumentError(f"{arg.What} of several words must be advertised or quoted: {value}.")
        return args

    # -- Home Assistant's own sentences -----------------------------------------------------

    @cached_property
    def recognisers(self) -> dict[str, Recogniser]:
        """The capabilities' own readers of whole sentences, for those installed here that have one."""
        found = {}
        for name, spec in self.specs.items():
            installed_class = capability_classes().get(name)
            if installed_class is not None and any(a.assist for a in spec.actions):
                try:
                    recogniser = installed_class.recogniser(spec.lists)
                except Exception as exc:  # a broken third-party reader costs its own capability only
                    log.warning("%s: its reader of sentences failed: %s", name, exc)
                    continue
                if recogniser is not None:
                    found[name] = recogniser
        return found

    def _assist(self, text: str) -> list[Reading]:
        """Readings of the capabilities' own readers: the clause (as said, without its wrapping) for their
        action that takes whole sentences."""
        said = _without_fillers(text)
        readings = []
        for name, recogniser in self.recognisers.items():
            spec = self.specs[name]
            action = next(a for a in spec.actions if a.assist)
            if recogniser.understands(said):
                readings.append(Reading([self.command(spec, action, {action.assist: said})], score=(2, 1, 0),
                                        how=_own_reader(spec), own=True))
        return readings

    # -- the LLM's command list -----------------------------------------------------------

    def command_lines(self) -> list[str]:
        """Per capability its summary, then one line per action: its rigid forms and typed arguments' shapes."""
        lines = []
        for spec in self._shown():
            if spec.summary:
                lines.append(f"# {spec.name}: {spec.summary}")
            for action in spec.actions:
                forms = " | ".join(f.form.replace("{", "<").replace("}", ">") for f in action.syntax)
                hints = "; ".join(f"{a.name}: {_hint(a)}" for a in action.args if _hint(a))
                lines.append(f"{forms}   ({hints})" if hints else forms)
        return lines

    def example_lines(self) -> list[str]:
        """The first example of each capability."""
        return [f"{said} => {command}" for spec in self._shown()
                for said, command in [e for action in spec.actions for e in action.examples][:1]]


def _original(text: str, entity: MatchEntity) -> str:
    """What was said for a slot, with its punctuation (hassil's own text drops some)."""
    span = getattr(entity, "text_span", None)
    return text[span[0]:span[1]].strip() if span else str(entity.text).strip()


def _whole_words(text: str, entity: MatchEntity) -> bool:
    span = getattr(entity, "text_span", None)
    if not span:
        return True
    start, end = span
    return (start == 0 or not text[start - 1].isalnum()) and (end >= len(text) or not text[end].isalnum())


def _typed(arg: Arg | None) -> bool:
    """A slot whose value has a shape (a number, a web address, a choice), unlike free text."""
    return arg is not None and arg.type in ("int", "number", "url", "choice")


def _hint(arg: Arg) -> str:
    """The shape of a typed argument for the LLM ('' for free text and names)."""
    if arg.type in ("int", "number") and arg.minimum is not None:
        extra = "|" + "|".join(arg.choices) if arg.choices else ""
        return f"{arg.minimum:g}-{arg.maximum:g}{extra}" if arg.maximum is not None else f">= {arg.minimum:g}"
    if arg.type == "choice":
        return "|".join(arg.choices)
    if arg.type == "url":
        return "a full https:// address"
    return ""


def _without_fillers(text: str) -> str:
    """The clause without the openers and closers people wrap requests in, cut from the text as said."""
    tokens = trimmed(words(text))
    return text[tokens[0].start:tokens[-1].end].strip(" ,") if tokens else text.strip()


def _spelled(spec: CapabilitySpec) -> set[str]:
    """The words a capability's templates, rules and list entries spell out."""
    texts = [t for action in spec.actions for group in action.sentences for t in group.templates]
    texts += [*spec.rules.values(), *(e if isinstance(e, str) else str(e.get("in") or e.get("out") or "")
                                      for entries in spec.lists.values() for e in entries)]
    return {w.text for text in texts for w in words(re.sub(r"\{\w+(?::\w+)?\}|<\w+>|[()\[\]|;]", " ", text))}


def _own_reader(spec: CapabilitySpec) -> str:
    return f"{spec.name}'s own reader of sentences"


def _each(items: Iterable[tuple[str, T]], make: Callable[[T], Any], what: str) -> dict[str, Any]:
    """``make(item)`` by name; one that fails is left out with a warning: a broken third-party capability
    must not break understanding."""
    made = {}
    for name, item in items:
        try:
            made[name] = make(item)
        except Exception as exc:
            log.warning("cannot %s %s: %s", what, name, exc)
    return made


@lru_cache(maxsize=1)
def capability_classes() -> dict[str, type[Capability]]:
    """The capability classes installed here (entry points), by name."""
    return _each(capability_entry_points().items(), lambda entry_point: entry_point.load(), "load capability")


@lru_cache(maxsize=1)
def installed_specs() -> dict[str, CapabilitySpec]:
    """The specs of every capability installed here, for ``lam parse`` without a broker."""
    return _each(capability_classes().items(), lambda found: found.spec(), "read the language of capability")


_INSTALLED: dict[str, Language] = {}


def installed(names: dict[str, Any] | None = None) -> Language:
    """The installed capabilities' language, with these names (cached per set of names)."""
    key = repr(sorted((k, sorted(map(str, v))) for k, v in (names or {}).items()))
    if key not in _INSTALLED:
        if len(_INSTALLED) > 32:
            _INSTALLED.clear()
        _INSTALLED[key] = Language(installed_specs(), names)
    return _INSTALLED[key]


@dataclass
class Context:
    """What a parser may know besides the prompt."""

    source: str = ""
    transcript: list[str] = field(default_factory=list)  # this source's recent commands, oldest first
    known: Known | None = None  # (capability, action) offered by an online agent
    vocabulary: dict[str, list[str]] = field(default_factory=dict)  # names agents advertise, by capability
    photo: bool = False  # the prompt carries a photo: what is not a command is a question about it
    language: Language | None = None  # what online agents understand (default: the installed capabilities)

    @property
    def understood(self) -> Language:
        return self.language or installed(self.vocabulary)


def parse_command(text: str, language: Language | None = None) -> Command:
    """One rigid command of ``language`` (default: the installed capabilities), or a GrammarError."""
    return (language or installed()).parse_command(text)


def parse_chain(text: str, known: Known | None = None, vocabulary: dict[str, Any] | None = None,
                language: Language | None = None) -> ParseResult:
    """A whole prompt in the rigid grammar of ``language`` (default: the installed capabilities,
    with ``vocabulary``'s names and ``known``'s actions for capabilities without a spec)."""
    if language is None:
        language = installed(vocabulary)
    result = language.parse_chain(text)
    words = text.split()
    if not result.commands and known and len(words) >= 2 and words[0].lower() not in language.specs \
            and known(words[0].lower(), words[1].lower()):  # an agent's action without a spec
        return language.with_rigid({}, {words[0].lower(): [words[1].lower()]}).parse_chain(text)
    return result
