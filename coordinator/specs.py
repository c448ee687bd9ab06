"""The specs agents advertise, and the language of what is online.

Agents publish their capabilities' specs retained on ``lam/agents/<id>/spec``. The store keeps, by
agent, those fit to read (:func:`~lamcontrol.language.vetted_specs`: key and name agree, within
bounds of size and shape); the others are refused on ``lam/errors``. The language of the
online agents is made in two steps, so that the costly one never runs on the bus thread:
:meth:`SpecStore.offer` (bus thread, cheap) takes what the online agents offer now, and
:meth:`SpecStore.build` (the thread that understands prompts) makes, and keeps, the
:class:`~lamcontrol.coordinator.language.Language` of it:

- a capability installed here is read with its installed spec, and only the name lists (contacts,
  devices, apps) of what its agents advertise; an advertised spec that differs is refused, unless
  the capability is in ``[coordinator] approved_specs``;
- another capability with its advertised spec (the first agent's by id, with every agent's names),
  once its templates are found to stand for a bounded number of sentences
  (:func:`~lamcontrol.language.check_readings`), compile on their own and read none of the
  installed capabilities' sentences or commands (unless approved); else with its rigid actions from
  presence, as for an agent that advertises no spec.
"""

from __future__ import annotations

import functools
import json
import logging
import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

from lamcontrol.language import ActionSpec, CapabilitySpec, SpecRefused, check_readings, listed_value, vetted_specs
from lamcontrol.protocol import AgentSpec

from .language import REPEATS, Language, installed, installed_specs
from .registry import Registry

log = logging.getLogger(__name__)

Refuse = Callable[[str, str], None]  # (agent id, why its spec is not used)
SAMPLES = 6  # sentences drawn from each installed template, to test a new spec against
PLACEHOLDERS = ("weezer", "30", "hello there", "mary", "20 percent", "the news", "paris")
PROBES = 8, 400  # sentences drawn from each template of a new spec, and at most in all
VERDICTS = 256  # advertised specs whose verdict is kept


@dataclass(frozen=True)
class Offer:
    """What the online agents offer, taken on the bus thread for the language to be made from."""

    key: str
    offered: dict[str, list[str]]  # capability -> actions
    advertised: dict[str, list[tuple[str, CapabilitySpec]]]  # capability -> (agent, its spec), by agent id
    names: dict[str, list[str]]  # names in presence, by capability (older agents without a spec)

    def known(self, capability: str, action: str) -> bool:
        """Some online agent offers this action."""
        return action in self.offered.get(capability, ())


class SpecStore:
    """The specs each agent advertised, and the language made of what is online (see the module)."""

    def __init__(self, refuse: Refuse | None = None, approved: Iterable[str] = ()) -> None:
        self.by_agent: dict[str, dict[str, CapabilitySpec]] = {}
        self.refuse = refuse or (lambda agent, why: log.warning("agent %s: %s", agent, why))
        self.approved = frozenset(approved)
        self._received = 0  # specs read so far: a new one means a new language
        self._offer: tuple[tuple[int, int], Offer] | None = None
        self._built: tuple[str, str, Language] | None = None  # (offer key, what it says, its language)
        self._verdicts: dict[str, str] = {}  # an advertised spec's JSON -> why it is not used ('' when it is)

    def on_spec(self, message: AgentSpec, refusal: Callable[[str], str] = lambda capability: "") -> None:
        """An agent's retained spec; what cannot be read, or (``refusal``) the agent may not offer, is refused."""
        specs, refused = vetted_specs(message)
        for capability in list(specs):
            refused[capability] = refusal(capability)
            if refused[capability]:
                del specs[capability]
        for why in filter(None, refused.values()):
            self.refuse(message.agent, why)
        self.by_agent[message.agent] = specs
        self._received += 1

    def on_cleared(self, ids: dict[str, str]) -> None:
        """An emptied spec topic: the agent is forgotten."""
        self.by_agent.pop(ids["agent"], None)
        self._received += 1

    def advertised(self, agent_id: str) -> dict[str, CapabilitySpec]:
        """What an agent advertised and could be read (nothing for an agent that advertises no spec), an
        installed capability as installed here (unless approved): the entities Home Assistant gets."""
        installed = installed_specs()
        return {name: installed[name] if name in installed and name not in self.approved else spec
                for name, spec in self.by_agent.get(agent_id, {}).items()}

    def language(self, registry: Registry) -> Language:
        """What the online agents understand, made now (installed capabilities when none is online).
        Not on the bus thread: the coordinator takes the :meth:`offer` there and builds elsewhere."""
        return self.build(self.offer(registry))

    def offer(self, registry: Registry) -> Offer:
        """What the online agents offer now (cheap; the same object while nothing changed)."""
        seen = (registry.version, self._received)
        if self._offer and self._offer[0] == seen:
            return self._offer[1]
        online = sorted(a for a, info in registry.agents.items() if info.online)
        offered: dict[str, list[str]] = {}
        advertised: dict[str, list[tuple[str, CapabilitySpec]]] = {}
        for agent_id in online:
            for capability, actions in registry.agents[agent_id].presence.capabilities.items():
                offered.setdefault(capability, []).extend(a for a in actions if a not in offered[capability])
                spec = self.by_agent.get(agent_id, {}).get(capability)
                if spec is not None:
                    advertised.setdefault(capability, []).append((agent_id, spec))
        names = registry.vocabulary()
        key = repr((online, [registry.agents[a].presence.capabilities for a in online], self._received,
                    sorted(names.items())))
        offer = Offer(key, offered, advertised, names)
        self._offer = (seen, offer)
        return offer

    def build(self, offer: Offer) -> Language:
        """The language of an offer (kept while the offer stays the same)."""
        if self._built and self._built[0] == offer.key:
            return self._built[2]
        installed = installed_specs()
        chosen = {}
        for capability, sources in offer.advertised.items():
            try:
                spec = self._choose(capability, sources, installed)
            except Exception:  # a bug; it must cost this capability only
                log.exception("cannot judge the advertised specs of %s", capability)
                continue
            if spec is not None:
                chosen[capability] = spec
        names = {c: n for c, n in offer.names.items() if c not in chosen}
        rigid = {c: a for c, a in offer.offered.items() if c not in chosen and c not in installed}
        said = json.dumps([sorted((c, s.fingerprint) for c, s in {**installed, **chosen}.items()), rigid, names,
                           sorted(offer.offered)], sort_keys=True, default=str)
        if self._built and self._built[1] == said:  # agents came back saying what they said before
            self._built = (offer.key, said, self._built[2])
            return self._built[2]
        try:
            language = Language.with_rigid({**installed, **chosen}, rigid, names, online=set(offer.offered) or None)
            language.compile()
        except Exception:  # every spec compiled alone: this is a bug, and must not stop understanding
            log.exception("the advertised specs together do not compile; using the installed ones")
            rigid = {c: a for c, a in offer.offered.items() if c not in installed}
            language = Language.with_rigid(installed, rigid, offer.names, online=set(offer.offered) or None)
        self._built = (offer.key, said, language)
        return language

    def _choose(self, capability: str, sources: list[tuple[str, CapabilitySpec]],
                installed: dict[str, CapabilitySpec]) -> CapabilitySpec | None:
        """The spec a capability is read with, from what its agents advertised; each refusal said."""
        if capability in installed and capability not in self.approved:
            base = installed[capability]
            wanted = name_lists(base)
            names: dict[str, list[Any]] = {}
            for agent_id, spec in sources:
                why = difference(base, spec)
                if why:
                    self.refuse(agent_id, why)
                taken = {key: spec.lists[key] for key in wanted & set(spec.lists)}
                try:
                    check_readings(CapabilitySpec(capability, lists=taken))
                except SpecRefused as exc:
                    self.refuse(agent_id, str(exc))
                    continue
                for key, values in taken.items():
                    names.setdefault(key, []).extend(values)
            return base.with_lists(names, add=True)
        accepted = []
        for agent_id, spec in sources:
            why = self._verdict(spec)
            if why:
                self.refuse(agent_id, why)
            else:
                accepted.append(spec)
        if not accepted:
            return None
        return functools.reduce(lambda merged, spec: merged.with_lists(spec.lists, add=True), accepted[1:], accepted[0])

    def _verdict(self, spec: CapabilitySpec) -> str:
        """Why an advertised spec of a capability not installed here is not used ('' when it is)."""
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key not in self._verdicts:
            if len(self._verdicts) >= VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = judge(spec, approved=spec.name in self.approved)
        return self._verdicts[key]


def judge(spec: CapabilitySpec, approved: bool = False) -> str:
    """Why an advertised spec must not be used: it does not compile or read its own examples on its own,
    or (unless approved) its commands or sentences would take what an installed capability reads."""
    try:
        check_readings(spec)
    except SpecRefused as exc:
        return str(exc)
    try:
        alone = Language({spec.name: spec})
        alone.compile()
        alone.command_lines()
        for said, command in (e for action in spec.actions for e in action.examples):
            alone.spelled(said)
            alone.parse_chain(command)
        probes = drawn(spec, *PROBES)
    except Exception as exc:
        return f"the templates of {spec.name} do not compile: {exc.__class__.__name__}: {exc}"
    if approved:
        return ""
    specs = installed_specs()
    verbs = {f.literals[0]: s.name for s in specs.values() for a in s.actions for f in a.syntax} | \
        {name: name for name in specs}
    for action in spec.actions:
        for form in action.syntax:
            if form.literals[0] in verbs:
                return (f"{spec.name}'s command {form.form!r} begins like {verbs[form.literals[0]]}'s commands; "
                        "approve it in [coordinator] approved_specs to let it")
    house = installed()
    for said in probes:  # what it would say, read by the installed capabilities' templates
        read = house.spelled(said)
        if read:
            return (f"{spec.name}'s templates would read \"{said}\", which {read[0].capability} understands; approve "
                    "it in [coordinator] approved_specs to let it")
    for said, owner in installed_sentences():  # what the installed capabilities say, read by it
        try:
            taken = alone.spelled(said)
        except Exception as exc:
            return f"the templates of {spec.name} fail on a sentence: {exc.__class__.__name__}: {exc}"
        if taken:
            return (f"{spec.name}'s templates would read \"{said}\", which {owner} understands; approve it in "
                    "[coordinator] approved_specs to let it")
    return ""


def difference(base: CapabilitySpec, spec: CapabilitySpec) -> str:
    """How an advertised spec of an installed capability differs from the installed one ('' if it does not)."""
    used = f"the installed spec of {base.name} is used (approved_specs can say otherwise)"
    for action in spec.actions:
        mine = base.action(action.name)
        if mine is None:
            return f"its spec of {base.name} has an action {action.name} the installed one does not; {used}"
        if plain(action) != plain(mine):
            lowered = mine.risk == "high" and action.risk != "high" or any(
                set(arg.risky) - set(getattr(action.arg(arg.name), "risky", ())) for arg in mine.args)
            what = "marks it less risky" if lowered else "reads it differently"
            return f"its spec of {base.name} {action.name} {what} than the installed one; {used}"
    if spec.rules != base.rules:
        return f"its spec of {base.name} changes the template rules; {used}"
    return ""


def plain(action: ActionSpec) -> object:
    """An action's declaration as JSON values (tuples and lists alike)."""
    return json.loads(json.dumps(asdict(action)))


def name_lists(spec: CapabilitySpec) -> set[str]:
    """The lists an agent fills at run time: its arguments' name lists, devices and areas for Assist."""
    lists = {arg.names for action in spec.actions for arg in action.args if arg.names}
    return lists | ({"devices", "areas"} if any(action.assist for action in spec.actions) else set())


@functools.lru_cache(maxsize=1)
def installed_sentences() -> list[tuple[str, str]]:
    """(sentence, capability) for what the installed capabilities understand: their examples and a few
    sentences drawn from each template."""
    found: dict[str, str] = {}
    for name, spec in sorted(installed_specs().items()):
        found.update((said, name) for said in drawn(spec, SAMPLES) if said not in found)
    return list(found.items())


def drawn(spec: CapabilitySpec, per_template: int, limit: int | None = None) -> list[str]:
    """A spec's examples and a few sentences drawn from each of its templates: the same ones every time."""
    from hassil.parse_expression import parse_sentence

    rules = {rule: parse_sentence(body).expression for rule, body in spec.rules.items()}
    rng = random.Random(spec.name)
    found = {said: None for action in spec.actions for said, _ in action.examples}
    for action in spec.actions:
        for group in action.sentences:
            for template in group.templates:
                expression = parse_sentence(template).expression
                for _ in range(per_template):
                    found[" ".join(_say(expression, spec, action, rules, rng).split())] = None
    return list(found)[:limit]


def _say(expression: object, spec: CapabilitySpec, action: ActionSpec, rules: dict[str, Any], rng: random.Random) -> str:
    """One sentence a template stands for, its slots filled with a listed name, a number or a word."""
    from hassil.expression import Alternative, ListReference, Permutation, RuleReference, Sequence, TextChunk
    from hassil.parse_expression import parse_sentence

    say = functools.partial(_say, spec=spec, action=action, rules=rules, rng=rng)
    if isinstance(expression, TextChunk):
        return expression.text
    if isinstance(expression, RuleReference):
        return say(rules[expression.rule_name]) if expression.rule_name in rules else ""
    if isinstance(expression, ListReference):
        listed = spec.lists.get(expression.list_name)
        arg = action.arg(expression.slot_name)
        if listed:
            entry = rng.choice(listed)
            return entry if isinstance(entry, str) else say(parse_sentence(str(entry.get("in") or listed_value(entry)))
                                                            .expression)
        if expression.list_name in REPEATS:
            return rng.choice(("twice", "three times"))
        if arg is not None and arg.type in ("int", "number"):
            return str(rng.randint(int(arg.minimum or 0), int(arg.maximum if arg.maximum is not None else 100)))
        if arg is not None and arg.choices:
            return str(rng.choice(arg.choices))
        return rng.choice(PLACEHOLDERS)
    if isinstance(expression, Permutation):
        items = list(expression.items)
        rng.shuffle(items)
        return " ".join(map(say, items))
    if isinstance(expression, Alternative):
        return say(rng.choice(expression.items))
    if isinstance(expression, Sequence):
        return "".join(map(say, expression.items))
    return ""
