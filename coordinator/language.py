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
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache

from hassil import Intents, RangeSlotList, TextSlotList, WildcardSlotList, recognize_all

from lamcontrol.config import capability_entry_points
from lamcontrol.language import ActionSpec, ArgumentError, CapabilitySpec, Syntax, listed_value, rigid_only

from .grammar import Command, GrammarError, Known, ParseResult

log = logging.getLogger(__name__)

MAX_PROMPT = 2000
MAX_CLAUSES = 6
FUZZY = 85  # rapidfuzz ratio from which a name said is taken for an advertised one
OPENER = ("[(hey|hi|ok|okay|so|um|uh|alright|yo|well|oh|now) [rabbit]] [(so|now|then|um)] "
          "[(can|could|would|will) you] [(please|kindly)] [please] [(just|quickly|go ahead and|also)] "
          "[(i need you to|i want you to)]")
CLOSER = "[(please|now|for me|thanks|thank you)]"
TRAILING = re.compile(r"[\s,.!?]+$")
JOINS = re.compile(r"\s*(?:,\s*and then|,\s*then|,\s*and|\band then\b|\bthen\b|\band\b|;|,)\s*", re.I)
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
QUESTION = re.compile(r"^(?:what|who|whom|whose|why|how|when|where|which|is|are|am|was|were|do|does|did|"
                      r"should|shall|may|might)\b", re.I)
OPENER_WORDS = {"hey", "hi", "ok", "okay", "so", "um", "uh", "alright", "yo", "well", "oh", "please", "kindly",
                "just", "can", "could", "would", "will", "you", "rabbit", "quickly"}
CLOSER_WORDS = {"please", "now", "thanks"}
HOUSE_SLOTS = {"name", "area", "floor"}
AMBIGUOUS = "the templates read it more than one way"
HOUSE = "Home Assistant's own sentences"
ARTICLES = ("the ", "my ", "our ")
REMEMBERED = 512  # prompts whose reading a language keeps (the same button, the same words, again)


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


def remembered(method):
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
    score: tuple = ()
    how: str = ""
    swallowed: bool = False  # a free-text slot took an "and" or a "then": maybe two requests

    @property
    def ok(self) -> bool:
        return bool(self.commands) and not self.reason


class Language:
    """Specs by capability name, plus the names agents know (``{capability: [names]}``)."""

    def __init__(self, specs: dict[str, CapabilitySpec], names: dict[str, list] | None = None,
                 online: set[str] | None = None) -> None:
        self.online = online  # the capabilities online agents offer (None: all of them), for the LLM
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
    def _with_names(spec: CapabilitySpec, names) -> CapabilitySpec:
        """Names given for a capability as a whole (``--names home=...``) join each list its slots read."""
        if not names:
            return spec
        lists = {k: list(names) for action in spec.actions for a in action.args if (k := a.names)}
        if any(a.assist for a in spec.actions):
            # A house's names are devices and areas both; "kitchen light" also names the kitchen.
            rooms = [name.rsplit(" ", 1)[0] for name in names if " " in name.strip()]
            lists |= {"devices": list(names), "areas": list(dict.fromkeys([*names, *rooms]))}
        return spec.with_lists(lists, add=True)

    @classmethod
    def with_rigid(cls, specs: dict[str, CapabilitySpec], offered: dict[str, list[str]],
                   names: dict[str, list] | None = None, online: set[str] | None = None) -> Language:
        """Specs, plus ``<capability> <action> <text>`` for capabilities offered without one."""
        merged = {c: rigid_only(c, a) for c, a in offered.items() if c not in specs}
        return cls({**merged, **specs}, names, online)

    def _shown(self) -> list[CapabilitySpec]:
        return sorted((s for s in self.specs.values() if self.online is None or s.name in self.online),
                      key=lambda s: s.name)

    # -- the rigid grammar ----------------------------------------------------------------

    def command(self, spec: CapabilitySpec, action: ActionSpec, args: dict, spoken: bool = False) -> Command:
        """A checked command; its text re-reads as the same command."""
        checked = action.check(args, spoken)
        form = next((f for f in action.syntax if all(checked.get(k) == v for k, v in f.fixed.items())
                     and all(w[1:-1] in checked or action.arg(w[1:-1]).optional
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
                       idempotent=action.idempotent_for(checked), photo=action.photo)

    def parse_command(self, text: str) -> Command:
        """One rigid command, or a GrammarError saying what is wrong."""
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
            return command
        raise GrammarError(problem or f"I don't know the command {verb!r}.")

    def _fill(self, text: str, tokens: list, spec: CapabilitySpec, action: ActionSpec, form: Syntax) -> dict | None:
        """The form's slots read from the tokens, or None when its literal words are not there."""
        args: dict = {}
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

    def _listed(self, spec: CapabilitySpec, action: ActionSpec, name: str, words: list[str]) -> tuple | None:
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
            return ParseResult(commands=[self.parse_command(part) for part in stripped.split("&&")])
        except GrammarError as exc:
            return ParseResult(reason=str(exc))

    # -- sentences ------------------------------------------------------------------------

    @cached_property
    def _intents(self) -> tuple[Intents, dict, dict, set]:
        """hassil intents of every action's sentences, the slot lists, intent name -> what it means, and
        the one-word name slots (filled per clause)."""
        data: dict = {"language": "en", "intents": {}, "lists": {},
                      "expansion_rules": {"opener": OPENER, "closer": CLOSER}}
        meaning: dict[str, tuple] = {}
        lists: dict = dict(REPEATS)
        dynamic: set[str] = set()  # one-word names: filled per clause with its words and advertised names
        for spec in self.specs.values():
            prefix = f"{spec.name}__"
            rename = lambda t, s=spec, p=prefix: re.sub(  # noqa: E731
                r"<(\w+)>", lambda m: f"<{p}{m[1]}>" if m[1] in s.rules else m[0], t)
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
                    slotted = [re.sub(r"\{(\w+)(?::(\w+))?\}", lambda m, p=f"{prefix}{action.name}__": m[0]
                                      if m[1] in REPEATS else f"{{{p}{m[1]}:{m[2] or m[1]}}}", t) for t in templates]
                    data["intents"][key] = {"data": [{"sentences": [f"<opener> ({t}) <closer>" for t in slotted]}]}
                    meaning[key] = (spec, action, group)
        intents = Intents.from_dict(data)
        return intents, lists, meaning, dynamic

    def compile(self) -> None:
        """Parse every sentence template now, raising what hassil raises, rather than at the first prompt
        (hassil parses them when first matched)."""
        for intent in self._intents[0].intents.values():
            for data in intent.data:
                data.sentences  # noqa: B018

    @staticmethod
    def _slot_list(name: str, arg):
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
            return ParseResult(commands=[c for r in best for c in r.commands], parser="sentences",
                               why=AMBIGUOUS if AMBIGUOUS in hows else f"matched by {' and '.join(hows)}")
        return ParseResult(parser="sentences", reason=self._why_not(text, clause))

    def _chain(self, text: str, joins: tuple, clause) -> list[Reading] | None:
        """The reading with the most clauses, every one understood (None if there is none). A whole
        reading wins when no free-text slot swallowed an "and" or a "then"."""
        memo: dict[int, list[Reading] | None] = {}

        def best(at: int) -> list[Reading] | None:
            if at not in memo:
                whole = clause(text[at:].strip())
                options = [[whole]] if whole.ok else []
                if not (whole.ok and not whole.swallowed):
                    for join_start, join_end in joins:
                        head = text[at:join_start].strip() if join_start > at else ""
                        first = clause(head) if head else None
                        rest = best(join_end) if first and first.ok else None
                        if rest:
                            options.append([first, *rest])
                memo[at] = max(options, key=len, default=None)
            return memo[at]

        return best(0)

    def _carry_verbs(self, readings: list[Reading]) -> list[Reading]:
        """A house clause that only names a device or an area ("turn off the kitchen light and the
        bedroom light") does what the house clause before it did, to that name."""
        carried = readings[:1]
        for this in readings[1:]:
            before = carried[-1]
            if before.how == this.how == HOUSE and len(before.commands) == len(this.commands) == 1:
                this = self._with_verb_of(before.commands[0], this.commands[0]) or this
            carried.append(this)
        return carried

    def _with_verb_of(self, before: Command, this: Command) -> Reading | None:
        spec = self.specs[this.capability]
        action = spec.action(this.action)
        names = sorted({listed_value(n) for key in ("devices", "areas") for n in spec.lists.get(key, ())},
                       key=len, reverse=True)
        name = this.args[action.assist].strip(" \"'.,!?")
        for article in ARTICLES:
            if name.casefold().startswith(article):
                name = name[len(article):]
        earlier = before.args[action.assist]
        old = next((n for n in names if re.search(rf"\b{re.escape(n)}\b", earlier, re.I)), None)
        if folded(name) not in {folded(n) for n in names} or old is None or folded(old) == folded(name):
            return None
        redone = re.sub(rf"\b{re.escape(old)}\b", name, earlier, count=1, flags=re.I)
        return Reading([self.command(spec, action, {action.assist: redone})], how=HOUSE)

    def _why_not(self, text: str, clause) -> str:
        whole = clause(text)
        if whole.reason:
            return whole.reason
        for start, end in [m.span() for m in JOINS.finditer(text)]:
            first = clause(text[:start].strip())
            if first.ok:
                rest = text[end:].strip()
                return f"I understood \"{text[:start].strip()}\" but not \"{rest}\"."
        if text.endswith("?") or QUESTION.match(text):
            return "That sounds like a question, not something I can do."
        return "I don't know how to do that."

    def clause(self, text: str) -> Reading:
        """The best reading of one clause (a repeat count at its end repeats the command)."""
        repeat = REPEAT.match(text)
        if repeat:
            once = self.clause(repeat["clause"])
            if once.ok:
                times = COUNTS[repeat["times"].casefold()]
                return Reading(once.commands * times, score=once.score, how=once.how, swallowed=once.swallowed)
        readings = self._readings(text) + self._assist(text)
        if not readings:
            return Reading()
        readings.sort(key=lambda r: r.score, reverse=True)
        best = readings[0]
        rivals = [r for r in readings[1:] if r.score == best.score and r.ok and
                  [c.text for c in r.commands] != [c.text for c in best.commands]]
        if best.ok and rivals:
            best.how = AMBIGUOUS
        return best

    def _readings(self, text: str) -> list[Reading]:
        intents, lists, meaning, dynamic = self._intents
        if dynamic:
            said = {w.strip(",.!?:") for w in text.split()} | set(re.findall(r'"[^"]+"', text))
            advertised = {listed_value(v) for spec in self.specs.values() for action in spec.actions
                          for a in action.args if a.one_word for v in spec.lists.get(a.names, ())}
            words = TextSlotList.from_tuples([(w, w) for w in said | advertised if w], allow_template=False)
            lists = {**lists, **{name: words for name in dynamic}}
        readings = []
        for result in recognize_all(text, intents, slot_lists=lists):
            spec, action, group = meaning[result.intent.name]
            values = {name: _original(text, entity) if entity.is_wildcard else entity.value
                      for name, entity in result.entities.items()}
            said = {name: _original(text, entity) for name, entity in result.entities.items()}
            swallowed = any(entity.is_wildcard and JOINS.search(str(entity.text)) for entity in result.entities.values())
            listed = sum(1 for name, entity in result.entities.items() if name not in REPEATS
                         and (entity.value != entity.text or _typed(action.arg(name))))
            if group.ask:
                readings.append(Reading(reason=group.ask.format(**said), score=(2, listed, result.text_chunks_matched)))
                continue
            try:
                args = self._args(spec, action, group, values, said)
                listed += sum(1 for a in action.args if a.names and self.canonical(spec, a.names, said.get(a.name, "")))
                command = self.command(spec, action, args, spoken=True)
            except ArgumentError as exc:
                readings.append(Reading(reason=str(exc), score=(1, listed, result.text_chunks_matched)))
                continue
            times = int(values.get("times") or values.get("count") or 1)
            readings.append(Reading([command] * times, score=(2, listed, result.text_chunks_matched),
                                    how=f"the {spec.name} templates",
                                    swallowed=swallowed))
        return readings

    def _args(self, spec: CapabilitySpec, action: ActionSpec, group, values: dict, said: dict) -> dict:
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

    def _assist(self, text: str) -> list[Reading]:
        readings = []
        for spec in self.specs.values():
            for action in spec.actions:
                if action.assist and _names_one(text, spec.lists.get("devices", ()), spec.lists.get("areas", ())):
                    said = _without_fillers(text)
                    devices = tuple((listed_value(d), "" if isinstance(d, str) else
                                     str((d.get("context") or {}).get("domain", ""))) for d in spec.lists.get("devices", ()))
                    if _house_understands(said, devices, tuple(map(listed_value, spec.lists.get("areas", ())))):
                        command = self.command(spec, action, {action.assist: said})
                        readings.append(Reading([command], score=(2, 1, 0), how=HOUSE))
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


def _original(text: str, entity) -> str:
    """What was said for a slot, with its punctuation (hassil's own text drops some)."""
    span = getattr(entity, "text_span", None)
    return text[span[0]:span[1]].strip() if span else str(entity.text).strip()


def _typed(arg) -> bool:
    """A slot whose value has a shape (a number, a web address, a choice), unlike free text."""
    return arg is not None and arg.type in ("int", "number", "url", "choice")


def _hint(arg) -> str:
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
    words = text.split()
    while len(words) > 1 and words[0].casefold().strip(",") in OPENER_WORDS:
        words.pop(0)
    while len(words) > 1 and words[-1].casefold().strip(",.!?") in CLOSER_WORDS:
        words.pop()
    return " ".join(words).strip(" ,")


@lru_cache(maxsize=1)
def _house_intents() -> Intents:
    """Home Assistant's own English sentences (home-assistant-intents)."""
    from home_assistant_intents import get_intents

    return Intents.from_dict(get_intents("en"))


# A device advertised without its kind (``--names``) may be any of these.
DOMAINS = ("light", "switch", "fan", "cover", "lock", "climate", "media_player", "sensor", "binary_sensor",
           "scene", "script", "vacuum", "valve", "input_boolean")


@lru_cache(maxsize=8)
def _house_lists(devices: tuple[tuple[str, str], ...], areas: tuple[str, ...]) -> dict:
    """Slot lists for Home Assistant's sentences: (name, domain) devices, every domain when unknown."""
    named = [(name, name, {"domain": d}) for name, domain in devices for d in ((domain,) if domain else DOMAINS)]
    return {"name": TextSlotList.from_tuples(named, allow_template=False),
            "area": TextSlotList.from_tuples([(str(a), str(a)) for a in areas], allow_template=False),
            "floor": TextSlotList.from_tuples([], allow_template=False)}


def _names_one(text: str, devices, areas) -> bool:
    """The clause says one of the advertised device or area names (a cheap test before Home Assistant's
    sentences, which only count when they name one)."""
    said = f" {folded(text)} "
    return any(f" {folded(listed_value(name))} " in said
               for name in (*devices, *areas))


def _house_understands(text: str, devices: tuple[tuple[str, str], ...], areas: tuple[str, ...]) -> bool:
    """Home Assistant's own English intents match the clause, naming one of our devices or areas."""
    intents = _house_intents()
    return any(HOUSE_SLOTS & set(result.entities)
               for result in recognize_all(text, intents, slot_lists=_house_lists(devices, areas)))


@lru_cache(maxsize=1)
def installed_specs() -> dict[str, CapabilitySpec]:
    """The specs of every capability installed here (entry points), for ``lam parse`` without a broker."""
    specs = {}
    for name, entry_point in capability_entry_points().items():
        try:
            specs[name] = entry_point.load().spec()
        except Exception as exc:  # a broken third-party capability must not break understanding
            log.warning("cannot read the language of capability %s: %s", name, exc)
    return specs


_INSTALLED: dict[str, Language] = {}


def installed(names: dict | None = None) -> Language:
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
    language: Language | None = None  # what online agents understand (default: the installed capabilities)

    @property
    def understood(self) -> Language:
        return self.language or installed(self.vocabulary)


def parse_command(text: str, language: Language | None = None) -> Command:
    """One rigid command of ``language`` (default: the installed capabilities), or a GrammarError."""
    return (language or installed()).parse_command(text)


def parse_chain(text: str, known: Known | None = None, vocabulary: dict | None = None,
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
