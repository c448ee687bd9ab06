"""What a capability is: one small module declaring its name, actions, requirements and
config schema next to its handlers.

A capability is a :class:`Capability` subclass registered under the ``lamcontrol.capabilities``
entry-point group; built-ins register exactly the way a third-party package does::

    [options.entry_points]
    lamcontrol.capabilities =
        echo = lamcontrol.agents.echo:Echo

Handlers are methods marked with :func:`action`. Each gets the task's ``args`` dict and
returns the sentence a person hears (or an :class:`Outcome` with data); a failure is a
:class:`TaskFailed` carrying that sentence.

The same decorator declares the action's language (docs/understanding.md, "Writing a capability"): its
rigid syntax, typed arguments, sentence templates and examples (see :mod:`lamcontrol.language`).
Arguments are checked against those declarations before the handler runs, with the very code
the coordinator's gate uses; :meth:`Capability.spec` is what the agent advertises.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from lamcontrol.config import Setting, capability_entry_points, checked, refuse_unknown
from lamcontrol.language import (ActionSpec, Arg, ArgumentError, CapabilitySpec, Entity, Recogniser, Sentences, Syntax,
                                 listed_value, read_examples)

__all__ = ["ActionSpec", "Arg", "Capability", "CapabilitySpec", "Entity", "Outcome", "Sentences", "Setting", "Shared",
           "Syntax", "TaskFailed", "Unavailable", "action", "require"]


ADVERTISED_EXAMPLES = 4096  # bytes of example sentences an agent's spec carries on the bus


class TaskFailed(Exception):
    """The action could not be done; ``str(exc)`` is the sentence to report."""


class Unavailable(Exception):
    """The capability cannot run on this machine; the message says what to install or set."""


@dataclass
class Outcome:
    """A successful action: a sentence for a person, and optional data for programs."""

    message: str
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Shared:
    """The config file's sections that capabilities share, handed to every capability when it is made.

    Configuration reaches a capability in two ways only, both through its constructor: its own
    ``[capabilities.<name>]`` section (``settings``) and this. ``groq`` is the ``[groq]`` section,
    which ``ai`` falls back on for its model, key and base URL.
    """

    groq: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: dict) -> Shared:
        """The shared sections of a loaded config (:func:`lamcontrol.config.load`)."""
        return cls(groq=dict(cfg.get("groq", {})))


Handler = Callable[[Any, dict], "str | Outcome"]


def action(name: str | None = None, *, syntax: Sequence[Syntax | str] = (), args: Sequence[Arg] = (),
           sentences: Sequence[Sentences | str] = (), **declared: Any) -> Callable[[Handler], Handler]:
    """Mark a method as the handler of an action (by default, the method's name) and declare its language.

    ``syntax`` holds rigid forms (strings or :class:`Syntax`), ``sentences`` templates (strings or
    :class:`Sentences` groups); ``declared`` are the other :class:`ActionSpec` fields (summary,
    examples, risk, idempotent, entities, assist).
    """

    def mark(func: Handler) -> Handler:
        action_name = name or func.__name__
        func.lam_action = action_name  # type: ignore[attr-defined]
        func.lam_spec = ActionSpec(  # type: ignore[attr-defined]
            action_name, summary=declared.pop("summary", (func.__doc__ or "").strip().split("\n")[0]),
            syntax=tuple(s if isinstance(s, Syntax) else Syntax(s) for s in syntax), args=tuple(args),
            sentences=tuple(s if isinstance(s, Sentences) else Sentences((s,)) for s in sentences), **declared)
        return func

    return mark


def require(args: dict, key: str, kind: type = str) -> Any:
    """``args[key]`` if present and of the right type, else a TaskFailed saying so."""
    value = args.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool or value == "":
        raise TaskFailed(f"The task is missing its {key}.")
    return value


class Capability:
    """Base of every capability. Subclasses set the class attributes and write handlers."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    extra: ClassVar[str] = ""  # the pip extra that installs what it needs
    requirements: ClassVar[tuple[str, ...]] = ()  # modules that must import
    platforms: ClassVar[tuple[str, ...]] = ("linux", "darwin", "win32")
    config_schema: ClassVar[dict[str, Setting]] = {}
    lists: ClassVar[dict[str, list]] = {}  # name lists its sentence slots draw from (sites, verbs)
    rules: ClassVar[dict[str, str]] = {}  # hassil expansion rules its templates share

    def __init__(self, settings: dict | None = None, shared: Shared | None = None) -> None:
        self.settings = self.validate_settings(settings or {})
        self.shared = shared or Shared()
        self.on_change: Callable[[], None] = lambda: None  # the runtime re-announces presence

    def names(self) -> dict[str, list]:
        """Name lists learned at run time (contacts from the config, devices from Home Assistant)."""
        return {}

    def readings(self) -> dict[str, object]:
        """What it can read now (a computer's volume), for the entities that show it; read at each
        heartbeat and after each task, so keep it quick. Nothing, by default."""
        return {}

    def vocabulary(self) -> list[str]:
        """Every name it knows, flat (what older coordinators read from presence)."""
        return sorted({listed_value(v) for values in self.names().values() for v in values}, key=str.casefold)

    @classmethod
    def spec(cls) -> CapabilitySpec:
        """The declared language, from the class alone (what ``lam parse`` reads without a broker)."""
        actions = tuple(func.lam_spec for _, func in vars_with_bases(cls) if hasattr(func, "lam_spec"))
        return CapabilitySpec(cls.name, cls.summary, tuple(sorted(actions, key=lambda a: a.name)),
                              dict(cls.lists), dict(cls.rules), examples=cls.examples())

    @classmethod
    @functools.cache
    def examples(cls) -> tuple[tuple[str, ...], ...]:
        """What people say for it: ``<module>.examples.tsv`` beside the module that defines the class
        (``sentence<TAB>rigid command``), if there is one."""
        source = getattr(sys.modules.get(cls.__module__), "__file__", None)  # None for a class made at run time
        path = Path(source).with_suffix(".examples.tsv") if source else None
        return read_examples(path.read_text(encoding="utf-8")) if path and path.is_file() else ()

    def advertised_spec(self) -> CapabilitySpec:
        """The spec this agent advertises: the offered actions, with the names it knows now, and its
        examples file's first lines up to ``ADVERTISED_EXAMPLES`` bytes (a coordinator where the
        capability is installed reads the whole file itself)."""
        spec = self.spec().with_lists(self.names())
        offered = set(self.actions())
        kept, size = [], 0
        for example in spec.examples:
            size += sum(len(part) + 4 for part in example)
            if size > ADVERTISED_EXAMPLES:
                break
            kept.append(example)
        return replace(spec, actions=tuple(a for a in spec.actions if a.name in offered), examples=tuple(kept))

    @classmethod
    def given_names(cls, names: list[str]) -> dict[str, list]:
        """Names given for the capability as a whole (``lam parse --names``): each list its slots read."""
        return {arg.names: list(names) for action in cls.spec().actions for arg in action.args if arg.names}

    @classmethod
    def recogniser(cls, lists: dict) -> Recogniser | None:
        """Its own reader of whole sentences (see :class:`lamcontrol.language.Recogniser`), if it has one."""
        return None

    def changed(self) -> None:
        """Call when actions or vocabulary change, so the agent announces them again."""
        self.on_change()

    @classmethod
    def validate_settings(cls, settings: dict) -> dict:
        """The settings with defaults filled in; a ValueError names any bad key."""
        where = f"[capabilities.{cls.name}]"
        refuse_unknown(where, settings, cls.config_schema)
        return {key: checked(where, key, settings.get(key, setting.default), setting.default)
                for key, setting in cls.config_schema.items()}

    def check(self) -> None:
        """Raise Unavailable when this machine cannot run the capability."""
        if not any(sys.platform.startswith(p) for p in self.platforms):
            raise Unavailable(f"{self.name} does not run on {sys.platform}")
        for module in self.requirements:
            try:
                importlib.import_module(module)
            except ImportError:
                hint = f"pip install 'lamcontrol[{self.extra}]'" if self.extra else f"install the {module} module"
                raise Unavailable(f"{self.name} needs the Python module {module}: {hint}") from None

    def start(self) -> None:
        """Acquire long-lived resources (a browser session, say). Called once, after check()."""

    def close(self) -> None:
        """Release what start() acquired."""

    @classmethod
    @functools.cache
    def handlers(cls) -> dict[str, str]:
        """Action name -> method name, for every method marked with @action (found once per class:
        every task asks)."""
        return {func.lam_action: attr for attr, func in vars_with_bases(cls) if hasattr(func, "lam_action")}

    def actions(self) -> list[str]:
        """The action names this capability advertises."""
        return sorted(self.handlers())

    def run(self, action_name: str, args: dict) -> Outcome:
        """Run one action; unknown actions and bad results become TaskFailed."""
        method = self.handlers().get(action_name)
        if method is None:
            raise TaskFailed(f"{self.name} cannot {action_name}.")
        declared = getattr(getattr(self, method), "lam_spec", None)
        if declared is not None and declared.args:
            try:
                args = declared.check(args)
            except ArgumentError as exc:
                raise TaskFailed(str(exc)) from None
        result = getattr(self, method)(args)
        return result if isinstance(result, Outcome) else Outcome(str(result))


def vars_with_bases(cls: type) -> list[tuple[str, Any]]:
    """Attributes of a class and its bases, subclasses winning."""
    seen: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        seen.update(vars(klass))
    return list(seen.items())


def load(name: str) -> type[Capability]:
    """The capability class registered under ``name``."""
    entry_points = capability_entry_points()
    if name not in entry_points:
        known = ", ".join(sorted(entry_points)) or "none"
        raise Unavailable(f"no capability named {name!r} is installed (installed: {known})")
    return entry_points[name].load()
