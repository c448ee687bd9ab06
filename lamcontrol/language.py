"""What a capability says it understands: the spec an agent advertises and the coordinator reads.

A capability declares, beside its handlers, a :class:`CapabilitySpec`: per action the rigid
syntax (``computer volume {level}``), typed arguments (:class:`Arg`, whose :meth:`Arg.check` is
the one validation both the coordinator's gate and the agent run), risk and idempotence,
sentence templates in hassil's syntax (alternatives ``(a|b)``, optional words ``[the]``, slots
``{query}``, rules ``<opener>``), the name lists a slot draws from, a few examples and the Home
Assistant entities it wants. The spec travels as JSON on ``lam/agents/<id>/spec`` (retained,
``version`` below); readers ignore keys they do not know, so older and newer sides get along.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

from .protocol import AgentSpec, Risk

SPEC_VERSION = 1
MAX_TEXT = 2000
NAME = re.compile(r"^[\w][\w.@'+-]{0,63}$")  # a one-word name, as typed in a rigid command
LONG_NAME = re.compile(r"^[\w][\w .@'+-]{0,63}$")  # an advertised or quoted name may hold spaces
SHELL = re.compile(r"[`;|<>$]|&&|(?:^|\s)[-~/]|\b(?:sudo|rm|bash|sh|zsh|cmd|powershell|curl|wget|chmod|eval|exec)\b", re.I)
TYPES = ("text", "name", "int", "number", "url", "choice", "flag")


class ArgumentError(ValueError):
    """An argument that does not fit its declaration; the message is a sentence for a person."""


def _plain(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that ``cls`` knows (a newer side may send more)."""
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in known}


def listed_value(value: str | dict[str, Any]) -> str:
    """What a list entry stands for: the string itself, or an ``{"in", "out"}`` entry's out (else in)."""
    return value if isinstance(value, str) else str(value.get("out") or value.get("in"))


def spoken_address(text: str) -> str:
    """``rabbit dot tech``, ``reddit dot com slash r slash python`` or ``example.com/page`` as an https
    address ('' when the text is not one address: "netflix.com in the browser" is not)."""
    address = re.sub(r"\s+(dot|slash)\s+", lambda m: "." if m[1] == "dot" else "/", text.strip().casefold())
    if " " in address:
        return ""
    if "://" in address:
        return address
    host = address.split("/")[0]
    if re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}|\d{1,3}(\.\d{1,3}){3}", host):
        return f"https://{address}"
    return ""


@dataclass(frozen=True)
class Arg:
    """One typed argument. ``check`` converts and validates; its errors are sentences."""

    name: str
    type: str = "text"  # one of TYPES
    help: str = ""  # what it is, in a few words (used in errors and the LLM's command list)
    choices: tuple[Any, ...] = ()  # the allowed words (for "int", words allowed besides the numbers)
    minimum: float | None = None
    maximum: float | None = None  # for text: the longest (default MAX_TEXT characters)
    optional: bool = False
    names: str = ""  # the name list (``contacts``, ``apps``) a sentence slot draws from
    command_like: bool = False  # screened for shell words, on every path
    one_word: bool = False  # in a sentence, a name not advertised (nor quoted) is one word
    repeats: tuple[Any, ...] = ()  # values that make the action not idempotent
    risky: tuple[Any, ...] = ()  # values that make the action high risk
    acts: tuple[Any, ...] = ()  # values that make an action that only shows something do more (play what it found)

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"argument {self.name}: unknown type {self.type!r}")

    @property
    def what(self) -> str:
        """What it is, with its article ("a volume level")."""
        return self.help or f"a {self.name}"

    @property
    def What(self) -> str:  # noqa: N802
        return self.what[:1].upper() + self.what[1:]

    def _range(self) -> str:
        words = f", or {', '.join(self.choices[:-1])} or {self.choices[-1]}" if self.choices else ""
        return f"a number from {self.minimum:g} to {self.maximum:g}{words}"

    def check(self, value: Any, spoken: bool = False) -> Any:
        """The value converted to its type; ArgumentError when it does not fit.

        ``spoken`` values come from a sentence: a spoken web address may lack its https://.
        """
        if isinstance(value, str):
            value = value.strip()
        if value in (None, ""):
            raise ArgumentError(f"The command needs {self.what}.")
        if self.type == "flag":
            if isinstance(value, bool):
                return value
            raise ArgumentError(f"{self.What} must be true or false.")
        if self.choices and isinstance(value, str) and value.casefold() in self.choices:
            return value.casefold()
        if self.type == "choice":
            raise ArgumentError(f"{self.What} is {', '.join(self.choices[:-1])} or {self.choices[-1]}.")
        if self.type in ("int", "number"):
            return self._number(value)
        if not isinstance(value, str):
            raise ArgumentError(f"The command needs {self.what}.")
        text = value
        if len(text) > (self.maximum or MAX_TEXT):
            raise ArgumentError(f"{self.What} is too long.")
        if self.type == "url":
            return self._url(text, spoken)
        if self.type == "name" and not LONG_NAME.match(text):
            raise ArgumentError(f"{self.What} may only hold letters, digits, spaces and . @ ' + -")
        if self.command_like and SHELL.search(text):
            raise ArgumentError(f"That looks like a shell command; {self.what} may only hold letters, digits, "
                                "spaces and - _ . +")
        return text

    def _number(self, value: Any) -> int | float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ArgumentError(f"{self.What} must be {self._range()}.") from None
        if self.type == "int":
            if not number.is_integer():
                raise ArgumentError(f"{self.What} must be {self._range()}.")
            number = int(number)
        if isinstance(value, bool) or (self.minimum is not None and number < self.minimum) or \
                (self.maximum is not None and number > self.maximum):
            raise ArgumentError(f"{self.What} must be {self._range()}.")
        return number

    def _url(self, text: str, spoken: bool) -> str:
        url = spoken_address(text) if spoken else text
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or " " in url:
            raise ArgumentError("A site must be a full http:// or https:// address.")
        return url


@dataclass(frozen=True)
class Syntax:
    """One rigid form: literal words then ``{arg}`` slots, e.g. ``browser youtube play {query}``.

    ``fixed`` are argument values the form implies (``{"play": True}``).
    """

    form: str
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def words(self) -> list[str]:
        return self.form.split()

    @property
    def literals(self) -> list[str]:
        return [w.casefold() for w in self.words if not w.startswith("{")]


@dataclass(frozen=True)
class Sentences:
    """Natural sentence templates (hassil syntax) for an action, and the argument values they imply.

    ``compose`` builds an argument from slots: ``{"prompt": "{verb} {rest}"}``. A group with an
    ``ask`` is a sentence that misses something: matching it answers with that question, filled in
    from its slots (``"Should I message {name} on telegram, discord or facebook?"``).
    """

    templates: tuple[str, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    compose: dict[str, Any] = field(default_factory=dict)
    ask: str = ""


@dataclass(frozen=True)
class Entity:
    """A Home Assistant entity an agent with this action gets: a button or a number slider.

    ``command`` is the rigid command it sends; a number's ``{value}`` is the slider's value. A
    number with a ``reading`` shows that reading of the capability (``Capability.readings``) when
    the agent reports it, the real value rather than the last one sent.
    """

    component: str  # "button" or "number"
    key: str
    name: str
    command: str
    icon: str = ""
    minimum: float = 0
    maximum: float = 100
    unit: str = ""
    reading: str = ""


@dataclass(frozen=True)
class ActionSpec:
    name: str
    summary: str = ""
    syntax: tuple[Syntax, ...] = ()
    args: tuple[Arg, ...] = ()
    sentences: tuple[Sentences, ...] = ()
    examples: tuple[tuple[str, str], ...] = ()  # (what a person says, the rigid command)
    risk: str = "low"
    idempotent: bool = False
    entities: tuple[Entity, ...] = ()
    assist: str = ""  # the argument that takes whole sentences Home Assistant's own intents understand
    # It only shows or tells something (a search, an answer, a page, an app opened): read from a sentence
    # that is likely but not sure, running it costs little, so it is not asked about first.
    shows: bool = False
    questions: str = ""  # the argument that takes open questions and chatter no other action takes (ai's)
    photo: str = ""  # the argument that receives the prompt's photo (metadata.image), when it carries one

    def arg(self, name: str) -> Arg | None:
        return next((a for a in self.args if a.name == name), None)

    def check(self, args: dict[str, Any], spoken: bool = False) -> dict[str, Any]:
        """Every declared argument checked and converted; undeclared ones (a newer sender's) pass as they are."""
        checked = {k: v for k, v in args.items() if self.arg(k) is None}
        for arg in self.args:
            if args.get(arg.name) in (None, "") and arg.optional:
                continue
            checked[arg.name] = arg.check(args.get(arg.name), spoken)
        return checked

    def risk_of(self, args: dict[str, Any]) -> Risk:
        return Risk.HIGH if self.risk == Risk.HIGH or any(args.get(a.name) in a.risky for a in self.args if a.risky) \
            else Risk.LOW

    def shows_for(self, args: dict[str, Any]) -> bool:
        return self.shows and not any(args.get(a.name) in a.acts for a in self.args if a.acts)

    def idempotent_for(self, args: dict[str, Any]) -> bool:
        return self.idempotent and not any(args.get(a.name) in a.repeats for a in self.args if a.repeats)


@dataclass(frozen=True)
class CapabilitySpec:
    """A capability's whole language; ``lists`` are the names its slots draw from."""

    name: str
    summary: str = ""
    actions: tuple[ActionSpec, ...] = ()
    lists: dict[str, Any] = field(default_factory=dict)  # list name -> ["value" | {"in": "spoken", "out": "value"}]
    rules: dict[str, Any] = field(default_factory=dict)  # hassil expansion rules its templates use
    version: int = SPEC_VERSION
    # What people say and the rigid command it means (sentence, command, source): the examples file
    # a capability ships beside its module, training material for the coordinator's reader.
    examples: tuple[tuple[str, ...], ...] = ()

    def action(self, name: str) -> ActionSpec | None:
        return next((a for a in self.actions if a.name == name), None)

    def with_lists(self, lists: dict[str, Any], add: bool = False) -> CapabilitySpec:
        """The spec with these lists (what the agent learned at run time: contacts, devices), replacing
        its own, or with ``add`` joining them (each entry once)."""
        merged = dict(self.lists)
        for key, values in lists.items():
            entries = [*self.lists.get(key, ()), *values] if add else list(values)
            merged[key] = list({json.dumps(v, sort_keys=True): v for v in entries}.values())
        return replace(self, lists=merged)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @cached_property
    def fingerprint(self) -> str:
        """A digest of all the spec says: specs with the same fingerprint are read alike."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CapabilitySpec:
        """A spec from JSON; unknown keys (a newer agent's) are ignored, bad shapes raise ValueError."""
        try:
            actions = tuple(_action(a) for a in data.get("actions", ()))
            lists = {str(k): list(v) for k, v in dict(data.get("lists") or {}).items()}
            examples = tuple(tuple(str(part) for part in example[:3]) for example in data.get("examples", ())
                             if isinstance(example, (list, tuple)) and len(example) >= 2)
            return cls(name=str(data["name"]), summary=str(data.get("summary", "")), actions=actions,
                       lists=lists, rules={str(k): str(v) for k, v in dict(data.get("rules") or {}).items()},
                       version=int(data.get("version", SPEC_VERSION)), examples=examples)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a capability spec: {exc}") from None


def _tupled(data: dict[str, Any], listed: Callable[[str, Any], bool]) -> dict[str, Any]:
    """``data`` with the values ``listed`` picks as tuples (JSON has lists; specs are frozen)."""
    return {k: tuple(v) if listed(k, v) else v for k, v in data.items()}


def _action(data: dict[str, Any]) -> ActionSpec:
    plain = _plain(ActionSpec, data)
    plain["syntax"] = tuple(Syntax(**_plain(Syntax, s)) for s in data.get("syntax", ()))
    plain["args"] = tuple(Arg(**_tupled(_plain(Arg, a), lambda k, v: isinstance(v, list))) for a in data.get("args", ()))
    plain["sentences"] = tuple(Sentences(**_tupled(_plain(Sentences, s), lambda k, v: k == "templates"))
                               for s in data.get("sentences", ()))
    plain["examples"] = tuple(tuple(e) for e in data.get("examples", ()))
    plain["entities"] = tuple(Entity(**_plain(Entity, e)) for e in data.get("entities", ()))
    return ActionSpec(**plain)


def read_examples(text: str) -> tuple[tuple[str, ...], ...]:
    """An examples file: one ``sentence<TAB>command[<TAB>source]`` a line; ``#`` starts a comment line."""
    return tuple(tuple(part.strip() for part in line.split("\t")[:3]) for line in text.splitlines()
                 if line.strip() and not line.startswith("#") and "\t" in line)


class Recogniser(Protocol):
    """A capability's own reader of whole sentences, for its action that takes them (``assist``): the
    coordinator asks it, beside its learned reader, which clauses surely belong to that capability.
    A capability class returns one from ``recogniser(lists)``, given the names its agents advertise."""

    def understands(self, clause: str) -> bool:
        """The clause is surely this capability's (its own grammar reads it)."""

    def carried(self, before: str, clause: str) -> str:
        """``clause`` done as ``before`` was ("turn off the kitchen light" + "the bedroom light"), or ''."""


def rigid_only(capability: str, actions: list[str]) -> CapabilitySpec:
    """What an agent without a spec offers: ``<capability> <action> <text>`` for each action."""
    return CapabilitySpec(capability, actions=tuple(
        ActionSpec(a, syntax=(Syntax(f"{capability} {a} {{text}}"),), args=(Arg("text", optional=True),))
        for a in actions))


def advertisement(agent_id: str, specs: list[CapabilitySpec]) -> AgentSpec:
    """The retained message an agent publishes on ``<prefix>/agents/<id>/spec``."""
    return AgentSpec(agent=agent_id, capabilities={s.name: s.to_dict() for s in specs}, version=SPEC_VERSION)


def read_specs(message: AgentSpec) -> dict[str, CapabilitySpec]:
    """The specs an agent advertised that are fit to use (see :func:`vetted_specs`)."""
    return vetted_specs(message)[0]


def vetted_specs(message: AgentSpec) -> tuple[dict[str, CapabilitySpec], dict[str, str]]:
    """(the specs an agent advertised that are fit to read, why each other one is not). A spec is read
    with what this version knows (a newer agent's richer spec never breaks an older coordinator),
    within the limits below, checked on its text alone (cheap: the coordinator does it as the spec
    arrives); :func:`check_readings` parses it. One bad spec costs its own capability, never another's."""
    specs, refused = {}, {}
    for name, data in message.capabilities.items():
        try:
            specs[name] = bounded_spec(name, data)
        except SpecRefused as exc:
            refused[name] = str(exc)
        except Exception as exc:  # a shape no check foresaw: this capability only
            refused[name] = f"the spec of {name[:80]} cannot be read: {exc.__class__.__name__}: {exc}"
    return specs, refused


# What one advertised capability may declare: every built-in several times over, and little enough
# that reading it, compiling its templates and matching a sentence against them stay cheap.
MAX_SPEC_BYTES = 16 * 1024  # its actions and rules, as JSON (its name lists apart)
MAX_ACTIONS = 32
MAX_TEMPLATES = 200  # sentence templates of all its actions, rules included
MAX_TEMPLATE_CHARS = 400
MAX_SLOTS = 4  # {slots} in one template
MAX_DEPTH = 6  # groups within groups in one template (hassil's parser slows down fast beyond)
MAX_READINGS = 100_000  # word sequences one template may stand for, its rules expanded
MAX_SPEC_READINGS = 250_000  # the same, all its templates together
MAX_NAMES = 2000  # entries of all its lists (the names an agent knows: devices, contacts)
MAX_NAME_CHARS = 200
MAX_NAME_READINGS = 100  # word sequences one list entry's spoken form may stand for ("(youtube|you tube)")
WORD = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a capability's or an action's name: a topic level, a template key


class SpecRefused(ValueError):
    """An advertised spec that is not used; the message says why, for ``lam/errors``."""


def bounded_spec(name: str, data: Any) -> CapabilitySpec:
    """The spec advertised under ``name``, read and checked against the limits above on its text."""
    if not WORD.match(name):
        raise SpecRefused(f"the capability name {name[:80]!r} may only hold letters, digits, - and _")
    if not isinstance(data, dict):
        raise SpecRefused(f"the spec of {name} is not a JSON object")
    if data.get("name") != name:
        raise SpecRefused(f"a spec advertised as {name} names itself {str(data.get('name'))[:80]!r}; key and name "
                          "must agree")
    size = len(json.dumps({k: v for k, v in data.items() if k != "lists"}, ensure_ascii=False).encode())
    if size > MAX_SPEC_BYTES:
        raise SpecRefused(f"the spec of {name} is {size} bytes; at most {MAX_SPEC_BYTES} are read (lists apart)")
    try:
        spec = CapabilitySpec.from_dict(data)
    except ValueError as exc:
        raise SpecRefused(f"the spec of {name} cannot be read: {exc}") from None
    if len(spec.actions) > MAX_ACTIONS:
        raise SpecRefused(f"{name} declares {len(spec.actions)} actions; at most {MAX_ACTIONS} are read")
    for action in spec.actions:
        if not isinstance(action.name, str) or not WORD.match(action.name):
            raise SpecRefused(f"{name} has an action named {str(action.name)[:80]!r}: letters, digits, - and _ only")
        if not all(isinstance(f.form, str) and f.form[:1].isalnum() and isinstance(f.fixed, dict)
                   for f in action.syntax):
            raise SpecRefused(f"every command form of {name} {action.name} must begin with a word")
    entries = [entry for values in spec.lists.values() for entry in values]
    if len(entries) > MAX_NAMES:
        raise SpecRefused(f"{name} lists {len(entries)} names; at most {MAX_NAMES} are read")
    for entry in entries:
        said = entry if isinstance(entry, str) else entry.get("in") if isinstance(entry, dict) else None
        if not isinstance(said, str) or len(json.dumps(entry)) > MAX_NAME_CHARS or _depth(said) > MAX_DEPTH:
            raise SpecRefused(f"{name} lists a name that is not a string (or an {{\"in\", \"out\"}} entry) "
                              f"of at most {MAX_NAME_CHARS} characters: {json.dumps(entry)[:80]}")
    templates = _templates(spec)
    if len(templates) > MAX_TEMPLATES:
        raise SpecRefused(f"{name} has {len(templates)} templates and rules; at most {MAX_TEMPLATES} are read")
    for template in templates:
        if not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS:
            raise SpecRefused(f"{name} has a template over {MAX_TEMPLATE_CHARS} characters")
        if template.count("{") > MAX_SLOTS:
            raise SpecRefused(f"{name} has a template with more than {MAX_SLOTS} slots: {template[:80]!r}")
        if _depth(template) > MAX_DEPTH:
            raise SpecRefused(f"{name} has a template nesting groups more than {MAX_DEPTH} deep: {template[:80]!r}")
    return spec


def _templates(spec: CapabilitySpec) -> list[Any]:
    sentences = (t for action in spec.actions for group in action.sentences for t in group.templates)
    return [*spec.rules.values(), *sentences]


def check_readings(spec: CapabilitySpec) -> None:
    """Every template parses, uses only rules the spec defines and stands for a bounded number of word
    sequences, and so does every listed name's spoken form: estimated on hassil's parse trees, before
    anything is compiled. SpecRefused says which does not."""
    total = 0
    counted: dict[str, int] = {}
    for template in _templates(spec):
        readings = _readings(template, spec, counted, ())
        if readings > MAX_READINGS:
            raise SpecRefused(f"{spec.name} has a template standing for more than {MAX_READINGS:,} sentences: "
                              f"{template[:80]!r}")
        total += readings
    if total > MAX_SPEC_READINGS:
        raise SpecRefused(f"{spec.name}'s templates stand for more than {MAX_SPEC_READINGS:,} sentences together")
    spoken = CapabilitySpec(spec.name)  # a listed name may use no rule
    for values in spec.lists.values():
        for entry in values:
            if isinstance(entry, dict) and _readings(entry["in"], spoken, {}, ()) > MAX_NAME_READINGS:
                raise SpecRefused(f"{spec.name} lists a name spoken more than {MAX_NAME_READINGS} ways: "
                                  f"{entry['in'][:80]!r}")


def _depth(template: str) -> int:
    """How deep its (groups) and [optional parts] nest."""
    depth = deepest = 0
    for char in template:
        depth += (char in "([") - (char in ")]")
        deepest = max(deepest, depth)
    return deepest


def _readings(template: str, spec: CapabilitySpec, counted: dict[str, int], using: tuple[str, ...]) -> int:
    """How many word sequences a template stands for, its rules expanded (slots count once)."""
    from hassil.expression import Alternative, Permutation, RuleReference, Sequence
    from hassil.parse_expression import parse_sentence
    from hassil.parser import ParseError

    def count(expression: object) -> int:
        if isinstance(expression, RuleReference):
            rule = expression.rule_name
            if rule not in spec.rules:
                raise SpecRefused(f"{spec.name} uses the rule <{rule}>, which it does not define")
            if rule in using:
                raise SpecRefused(f"{spec.name}'s rule <{rule}> refers to itself")
            if rule not in counted:
                counted[rule] = _readings(spec.rules[rule], spec, counted, (*using, rule))
            return counted[rule]
        if isinstance(expression, Permutation):
            return math.factorial(len(expression.items)) * math.prod(map(count, expression.items))
        if isinstance(expression, Alternative):
            return sum(map(count, expression.items))
        if isinstance(expression, Sequence):
            return math.prod(map(count, expression.items))
        return 1  # words, slots

    try:
        return min(count(parse_sentence(template).expression), MAX_SPEC_READINGS + 1)
    except (ParseError, ValueError, IndexError) as exc:
        if isinstance(exc, SpecRefused):
            raise
        raise SpecRefused(f"{spec.name} has a template that does not parse ({exc}): {template[:80]!r}") from None
