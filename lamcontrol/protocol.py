"""The LAMControl wire protocol: every topic and every message type, in one place.

Each message is a small dataclass that knows its topic in both directions (``topic()``
builds it; :meth:`Topics.match` finds the class and the ids a topic carries), reads
itself from a dict (refusing bad input with a :class:`ProtocolError` that names the
field) and writes compact JSON. Components never build or split topics by hand.

Topics under the prefix (which may itself contain slashes, ``home/lam``)::

    prompts                          Prompt          anyone -> coordinator
    replies/<prompt_id>              Reply           coordinator -> asker
    tasks/<capability>               Task            coordinator -> agents
    agents/<agent>/results/<task_id> Result          agent -> coordinator
    agents/<agent>/status            Presence        agent, retained
    agents/<agent>/spec              AgentSpec       agent, retained
    coordinator/status               CoordinatorPresence  coordinator, retained
    coordinator/request              CoordinatorRequest   anyone allowed -> coordinator
    errors                           ErrorRecord     any component
    results/<task_id>                LegacyResult    older agents (``[coordinator] legacy_results``)

A new message type is a subclass with a ``topic_pattern``; it is matched from then on. Only the
types marked ``retained`` (presence, specs) are ever retained: a retained task, prompt or result
would be handled again by every new subscriber, so brokers and buses refuse to keep one.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import operator
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NamedTuple, TypeVar, get_args, get_origin, get_type_hints

DEFAULT_PREFIX = "lam"
DEFAULT_MAX_PAYLOAD = 64 * 1024
COORDINATOR = "coordinator"
RESERVED_AGENT_IDS = frozenset({COORDINATOR})  # an agent with one of these would speak on another's topics


class PromptStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"
    IGNORED = "ignored"
    REJECTED = "rejected"
    NEEDS_CONFIRMATION = "needs_confirmation"


class ResultState(enum.StrEnum):
    ACCEPTED = "accepted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"


class PresenceState(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class Risk(enum.StrEnum):
    LOW = "low"
    HIGH = "high"


class CoordinatorAction(enum.StrEnum):
    """What may be asked of the coordinator itself: nothing else."""

    RESTART = "restart"
    LOG_LEVEL = "log_level"


LOG_LEVELS = ("debug", "info", "warning", "error")


FINISHED = (ResultState.SUCCEEDED, ResultState.FAILED)  # a task's end (a rejected task is offered on)
PROMPT_STATUSES = tuple(PromptStatus)


class ProtocolError(ValueError):
    """A payload that is not a valid message; ``field`` names what was wrong."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


def new_id() -> str:
    """An id for prompts and tasks: the second it was made, then 64 random bits. Ids made later sort
    later, so the coordinator's journal adds them at the end of its indexes instead of all over."""
    return f"{int(time.time()):08x}{secrets.token_hex(8)}"


ID = re.compile("[A-Za-z0-9_-]{1,128}")
NOT_IN_IDS = re.compile("[^A-Za-z0-9_-]")


def check_id(value: str, field_name: str) -> str:
    """Ids end up in topic levels: letters, digits, '-' and '_' only, which every broker takes as
    one level (NATS refuses '.' and spaces in MQTT topics; RabbitMQ splits levels at '.')."""
    if not isinstance(value, str) or not ID.fullmatch(value):
        suggestion = NOT_IN_IDS.sub("-", value).strip("-") if isinstance(value, str) and len(value) <= 128 else ""
        instead = f"; {value!r} could be {suggestion!r}" if suggestion else ""
        raise ProtocolError(f"must be 1-128 letters, digits, '-' or '_'{instead}", field_name)
    return value


def check_agent_id(value: str, field_name: str = "agent id") -> str:
    """An id an agent may take: a valid topic level that is not reserved for another component."""
    check_id(value, field_name)
    if value in RESERVED_AGENT_IDS:
        raise ProtocolError(f"{value!r} is reserved (its topics belong to another component)", field_name)
    return value


class Match(NamedTuple):
    """What a topic is: the message class it carries and the ids in its levels."""

    cls: type[Message]
    ids: dict[str, str]


@dataclass(frozen=True)
class Topics:
    """The topic table under a configurable prefix: builds topics and recognises them."""

    prefix: str = DEFAULT_PREFIX

    def build(self, pattern: str, **ids: str) -> str:
        """``pattern`` (``"replies/{prompt_id}"``) under the prefix; a missing id becomes ``+``."""
        levels = [ids.get(level[1:-1], "+") if level.startswith("{") else level for level in _levels(pattern)]
        return "/".join([self.prefix, *levels])

    def match(self, topic: str) -> Match | None:
        """The message class and ids of a LAM topic, or None for any other topic."""
        if not topic.startswith(self.prefix + "/"):
            return None
        levels = topic[len(self.prefix) + 1:].split("/")
        for cls, pattern in _BY_SHAPE.get((len(levels), levels[0]), ()):
            ids = _match_levels(pattern, levels)
            if ids is not None:
                return Match(cls, ids)
        return None

    def may_retain(self, topic: str) -> bool:
        """False for a topic of a message type that is never retained (a task, prompt, reply, result
        or error record): a retained message there would be handled again at every start."""
        match = self.match(topic)
        return match is None or match.cls.retained

    @property
    def prompts(self) -> str:
        return self.build(Prompt.topic_pattern)

    def reply(self, prompt_id: str) -> str:
        return self.build(Reply.topic_pattern, prompt_id=prompt_id)

    def task(self, capability: str) -> str:
        return self.build(Task.topic_pattern, capability=capability)

    def result(self, agent_id: str, task_id: str) -> str:
        return self.build(Result.topic_pattern, agent=agent_id, task_id=task_id)

    def agent_status(self, agent_id: str) -> str:
        return self.build(Presence.topic_pattern, agent=agent_id)

    def agent_spec(self, agent_id: str) -> str:
        return self.build(AgentSpec.topic_pattern, agent=agent_id)

    @property
    def coordinator_status(self) -> str:
        return self.build(CoordinatorPresence.topic_pattern)

    @property
    def errors(self) -> str:
        return self.build(ErrorRecord.topic_pattern)

    @property
    def coordinator_request(self) -> str:
        return self.build(CoordinatorRequest.topic_pattern)

    @property
    def coordinator_settings(self) -> str:
        """The coordinator's settings that can be changed at run time (its log level), retained."""
        return f"{self.prefix}/state/coordinator/settings"

    @property
    def agents_online(self) -> str:
        """How many agents are online and which, retained by the coordinator."""
        return f"{self.prefix}/state/coordinator/agents"

    @property
    def last_reply(self) -> str:
        """The coordinator's latest reply, retained (for dashboards such as Home Assistant)."""
        return f"{self.prefix}/state/coordinator/last_reply"

    def last_result(self, agent_id: str) -> str:
        """An agent's latest finished task, retained by the coordinator."""
        return f"{self.prefix}/state/agents/{agent_id}/last_result"

    # Subscription filters.
    @property
    def all(self) -> str:
        return f"{self.prefix}/#"

    @property
    def all_replies(self) -> str:
        return self.reply("+")

    @property
    def all_results(self) -> str:
        return self.result("+", "+")

    @property
    def all_agent_statuses(self) -> str:
        return self.agent_status("+")

    def last_level(self, topic: str) -> str:
        """The id at the end of a topic such as ``lam/replies/<prompt_id>``."""
        return topic.rsplit("/", 1)[-1]


@functools.cache
def _levels(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("/"))


def _match_levels(pattern: tuple[str, ...], levels: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(levels):
        return None
    ids = {}
    for want, got in zip(pattern, levels):
        if want.startswith("{"):
            if not got:
                return None
            ids[want[1:-1]] = got
        elif want != got:
            return None
    return ids


Check = Callable[[Any, str], Any]  # (value, field name) -> the value as its field's type, else a ProtocolError


@functools.cache
def _check(hint: Any) -> Check:
    """How to read a value of the type a field declares (enums, nested records, lists of them), made
    once per type: every message read goes through here."""
    optional = type(None) in get_args(hint)
    expected = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        def check(value: Any, name: str) -> Any:
            try:
                return expected(value)
            except ValueError:
                raise ProtocolError(f"must be one of {', '.join(expected)}", name) from None
    elif isinstance(expected, type) and issubclass(expected, Record):
        check = expected.from_dict
    else:
        origin = get_origin(expected) or expected
        accepted = (int, float) if origin is float else origin
        item = _check(get_args(expected)[0]) if origin is list and get_args(expected) else None

        def check(value: Any, name: str) -> Any:
            if isinstance(value, bool) and origin is not bool or not isinstance(value, accepted):
                wanted = "a number" if origin is float else origin.__name__
                raise ProtocolError(f"must be {wanted}, not {type(value).__name__}", name)
            return [item(v, f"{name}[{i}]") for i, v in enumerate(value)] if item else value
    if not optional:
        return check
    return lambda value, name: None if value is None else check(value, name)


@functools.cache
def _readers(cls: type) -> tuple[tuple[str, bool, Check], ...]:
    """Each field of a record: its name, whether it is required, how to read it."""
    hints = get_type_hints(cls)
    return tuple((f.name, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                  _check(hints[f.name])) for f in dataclasses.fields(cls))


@functools.cache
def _writer(cls: type) -> tuple[tuple[str, ...], Callable[[Any], tuple], tuple[str, ...]]:
    """A record's field names, a getter of all their values at once, and the fields that may hold
    records (written out as dicts); made once per class, as every message sent goes through here."""
    names = tuple(f.name for f in dataclasses.fields(cls))
    hints = get_type_hints(cls)
    nested = tuple(name for name in names if _may_hold_records(hints[name]))
    getter = operator.attrgetter(*names)
    return names, (getter if len(names) > 1 else lambda record: (getter(record),)), nested


def _may_hold_records(hint: Any) -> bool:
    return (isinstance(hint, type) and issubclass(hint, Record)) or get_origin(hint) is list or \
        any(_may_hold_records(arg) for arg in get_args(hint))


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


R = TypeVar("R", bound="Record")


class Record:
    """A dataclass read from a dict with every field checked, written back as plain JSON values."""

    kind: ClassVar[str]
    ids: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls: type[R], data: Any, where: str = "") -> R:
        if not isinstance(data, dict):
            raise ProtocolError(f"a {cls.kind} must be a JSON object, not {type(data).__name__}", where or None)
        values = {}
        for key, required, check in _readers(cls):
            if key in data:
                values[key] = check(data[key], f"{where}.{key}" if where else key)
            elif required:
                raise ProtocolError("is required", f"{where}.{key}" if where else key)
        record = cls(**values)
        record.validate()
        return record

    def validate(self) -> None:
        for name in self.ids:
            check_id(getattr(self, name), name)

    def to_dict(self) -> dict[str, Any]:
        names, values, nested = _writer(type(self))
        data = dict(zip(names, values(self)))
        for name in nested:
            data[name] = _plain(data[name])
        return data


M = TypeVar("M", bound="Message")
# Every class with a topic, in the order they are matched, by its topic's number of levels and
# first level (which every pattern spells out): a topic is compared only with those of its shape.
_BY_SHAPE: dict[tuple[int, str], list[tuple[type[Message], tuple[str, ...]]]] = {}


class Message(Record):
    """A record with a topic: ``topic_pattern`` under the prefix, ``{field}`` levels filled from it."""

    topic_pattern: ClassVar[str]
    event: ClassVar[str]  # its kind in monitors and live streams
    retained: ClassVar[bool] = False  # the broker keeps the last one; never for tasks, prompts, results

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "topic_pattern" in cls.__dict__:
            pattern = _levels(cls.topic_pattern)
            if pattern[0].startswith("{"):
                raise TypeError(f"{cls.__name__}: a topic pattern must begin with a fixed level")
            _BY_SHAPE.setdefault((len(pattern), pattern[0]), []).append((cls, pattern))

    @classmethod
    def from_payload(cls: type[M], payload: bytes) -> M:
        return cls.from_dict(decode(payload))

    @classmethod
    def from_topic(cls: type[M], ids: dict[str, str], payload: bytes) -> M:
        """The message on a topic whose levels carried ``ids``: its fields must agree with them."""
        message = cls.from_payload(payload)
        for name, value in ids.items():
            if getattr(message, name, value) != value:
                raise ProtocolError(f"does not match the topic's {name} {value!r}", name)
        return message

    def topic(self, topics: Topics) -> str:
        return f"{topics.prefix}/{self.topic_pattern.format_map(vars(self))}"  # its {levels} are fields

    def to_json(self) -> bytes:
        return _JSON.encode(self.to_dict()).encode()

    def describe(self) -> str:
        """One human line, for ``lam monitor`` and the dashboard."""
        return str(self.to_dict())


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # compact, UTF-8 as it is
LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # a JSON escape that may leave half a character


def _not_a_number(constant: str) -> Any:
    raise ProtocolError(f"{constant} is not a JSON number")


# Reads JSON text as every part must: Python's reader would also take NaN and Infinity, which JSON
# does not have and which compare to nothing (a ProtocolError names them).
JSON_READER = json.JSONDecoder(parse_constant=_not_a_number)


def decode(payload: bytes, max_size: int | None = None) -> Any:
    """Bytes to JSON, refusing oversized (when a limit is given) and undecodable payloads, and the
    ``NaN`` and ``Infinity`` that Python's reader would let through."""
    if max_size is not None and len(payload) > max_size:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {max_size}-byte limit")
    try:
        data = JSON_READER.decode(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"payload is not UTF-8 ({exc.reason})") from None
    except ProtocolError as exc:
        raise ProtocolError(f"payload is not JSON ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"payload is not JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise ProtocolError("payload is nested too deeply") from None
    if LONE_SURROGATE.search(payload):
        check_unicode(data)
    return data


def check_unicode(data: Any) -> None:
    """Refuse decoded JSON holding a lone surrogate (``"\\ud800"``): it cannot be written out again."""
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"payload has a lone surrogate ({exc.object[exc.start:exc.end]!a}), which is not "
                            "valid Unicode") from None


def parse(cls: type[M], payload: bytes, max_size: int = DEFAULT_MAX_PAYLOAD) -> M:
    """Check the size, decode and validate one message of type ``cls``."""
    check_size(payload, max_size)
    return cls.from_payload(payload)


def check_size(payload: bytes, max_size: int) -> None:
    if len(payload) > max_size:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {max_size}-byte limit")


@dataclass
class Metadata(Record):
    """What a prompt may ask for besides its words.

    ``timeout``: seconds within which to answer, a finite number above 0 (the coordinator caps
    it; without it, ``[coordinator] prompt_timeout``). ``agent``: the only agent that may run the
    prompt's commands. ``image``: a photo the prompt is about, as a ``data:image/...`` URL (the
    bridge scales an R1 photo to fit one message); it goes to the action that declares it takes a
    photo, and leaves the journal once the prompt is answered. Other keys are carried along
    untouched in ``extra``.
    """

    kind: ClassVar[str] = "metadata"
    timeout: float | None = None
    agent: str | None = None
    image: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = "metadata") -> Metadata:
        if isinstance(data, dict):
            known = {k: data[k] for k in ("timeout", "agent", "image") if k in data}
            data = {**known, "extra": {k: v for k, v in data.items() if k not in known}}
        return super().from_dict(data, where)

    def validate(self) -> None:
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ProtocolError("must be a finite number of seconds above 0", "metadata.timeout")
        if self.agent is not None:
            check_id(self.agent, "metadata.agent")
        if self.image is not None and not self.image.startswith("data:image/"):
            raise ProtocolError("must be a data:image/... URL", "metadata.image")

    def to_dict(self) -> dict[str, Any]:
        chosen = {"timeout": self.timeout, "agent": self.agent, "image": self.image}
        return {**self.extra, **{k: v for k, v in chosen.items() if v is not None}}


MAX_PROMPT_CHARS = 2000  # what one prompt may say


@dataclass
class Prompt(Message):
    """Something a person said or typed, for the coordinator (``metadata``: see :class:`Metadata`)."""

    kind: ClassVar[str] = "prompt"
    event: ClassVar[str] = "prompt"
    topic_pattern: ClassVar[str] = "prompts"
    ids = ("id",)
    prompt: str
    id: str = field(default_factory=new_id)
    source: str = "mqtt"
    metadata: Metadata = field(default_factory=Metadata)
    ts: float = field(default_factory=time.time)  # when sent, by the sender's clock: its deadline counts from here

    def __post_init__(self) -> None:
        if isinstance(self.metadata, dict):
            self.metadata = Metadata.from_dict(self.metadata)

    def validate(self) -> None:
        super().validate()
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ProtocolError(f"must be at most {MAX_PROMPT_CHARS} characters", "prompt")
        if len(self.source) > 64:
            raise ProtocolError("must be at most 64 characters", "source")
        if not math.isfinite(self.ts):
            raise ProtocolError("must be a finite time in seconds", "ts")

    @classmethod
    def from_payload(cls, payload: bytes) -> Prompt:
        """A JSON prompt object, or any other UTF-8 text taken as the prompt itself."""
        try:
            text = payload.decode("utf-8") if payload else ""
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"payload is not UTF-8 ({exc.reason})") from None
        if text.lstrip().startswith(("{", "[")):
            return cls.from_dict(decode(payload))
        return cls(prompt=text.strip(), source="mqtt")

    def describe(self) -> str:
        return f"{self.id} from {self.source}: {self.prompt!r}"


@dataclass
class TaskSummary(Record):
    """One command of a prompt, as reported in its reply (``state`` also ``waiting`` or ``skipped``)."""

    kind: ClassVar[str] = "task summary"
    task_id: str
    command: str
    state: str
    agent: str | None = None
    message: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Reply(Message):
    """The one answer every prompt gets."""

    kind: ClassVar[str] = "reply"
    event: ClassVar[str] = "reply"
    topic_pattern: ClassVar[str] = "replies/{prompt_id}"
    ids = ("prompt_id",)
    prompt_id: str
    status: PromptStatus
    response: str
    tasks: list[TaskSummary] = field(default_factory=list)
    ts: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.status in (PromptStatus.SUCCEEDED, PromptStatus.IGNORED, PromptStatus.NEEDS_CONFIRMATION)

    def describe(self) -> str:
        return f"{self.prompt_id} {self.status}: {self.response}"


@dataclass
class Task(Message):
    """One command for one agent.

    ``accept_by`` closes the dispatch window: a task delivered later (a broker held it
    while the agent was away) is rejected, since it may already run elsewhere.
    ``deadline`` is when the work itself must be done. ``confirmed`` says the person confirmed the
    prompt: an agent runs what its own spec marks high-risk only then (older agents ignore it).
    ``epoch`` is the sending coordinator's lease (0: a lone coordinator, with none): agents refuse
    one below the highest they have seen.
    """

    kind: ClassVar[str] = "task"
    event: ClassVar[str] = "task"
    topic_pattern: ClassVar[str] = "tasks/{capability}"
    ids = ("task_id", "prompt_id", "capability", "agent")
    task_id: str
    prompt_id: str
    capability: str
    action: str
    agent: str
    command: str = ""
    args: dict = field(default_factory=dict)
    attempt: int = 1
    accept_by: float = 0.0
    deadline: float = 0.0
    risk: Risk = Risk.LOW
    confirmed: bool = False
    epoch: int = 0

    def describe(self) -> str:
        return f"{self.task_id} -> {self.agent}: {self.command or self.capability + ' ' + self.action} " \
               f"(attempt {self.attempt})"


@dataclass
class Result(Message):
    """An agent's word on a task: accepted, then succeeded or failed; or rejected.

    Published under the agent's own subtree, so a broker ACL can bind it to the agent's login.
    """

    kind: ClassVar[str] = "result"
    event: ClassVar[str] = "result"
    topic_pattern: ClassVar[str] = "agents/{agent}/results/{task_id}"
    ids = ("task_id", "agent")
    task_id: str
    agent: str
    state: ResultState
    message: str = ""
    data: dict = field(default_factory=dict)
    attempt: int = 1

    def describe(self) -> str:
        return f"{self.task_id} {self.agent} {self.state}" + (f": {self.message}" if self.message else "")


@dataclass
class LegacyResult(Result):
    """A result on the old topic ``results/<task_id>``, whose ``agent`` only the payload vouches for."""

    topic_pattern: ClassVar[str] = "results/{task_id}"


@dataclass
class Presence(Message):
    """Retained status of an agent (also its last will)."""

    kind: ClassVar[str] = "presence"
    event: ClassVar[str] = "agent"
    topic_pattern: ClassVar[str] = "agents/{agent}/status"
    retained: ClassVar[bool] = True
    reserved: ClassVar[frozenset[str]] = RESERVED_AGENT_IDS
    ids = ("agent",)
    state: PresenceState
    agent: str
    capabilities: dict = field(default_factory=dict)
    load: int = 0  # tasks accepted and not finished (running or queued)
    max_concurrent: int = 1
    max_queued: int = 0  # tasks accepted beyond max_concurrent, each started as a running one ends
    host: str = ""
    version: str = ""
    heartbeat: float = 30.0
    vocabulary: dict = field(default_factory=dict)  # names a capability knows, e.g. {"home": ["desk lamp"]}
    running: list[str] = field(default_factory=list)  # ids of the tasks it is running
    started: float = 0.0  # when the agent process started: a new value is an agent that forgot its tasks
    readings: dict = field(default_factory=dict)  # what capabilities read now, e.g. {"computer": {"volume": 40}}
    ts: float = field(default_factory=time.time)
    unavailable: dict = field(default_factory=dict)  # capability -> why this agent left it out, and the fix

    def validate(self) -> None:
        super().validate()
        if self.agent in self.reserved:
            check_agent_id(self.agent, "agent")
        if not all(isinstance(v, str) for v in self.unavailable.values()):
            raise ProtocolError("each capability left out must map to a sentence", "unavailable")
        for capability, actions in {**self.capabilities, **self.vocabulary}.items():
            if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
                raise ProtocolError("each capability must map to a list of names", f"capabilities.{capability}")
        for capability, values in self.readings.items():
            if not isinstance(values, dict):
                raise ProtocolError("each capability must map to an object of readings", f"readings.{capability}")

    @property
    def online(self) -> bool:
        return self.state == PresenceState.ONLINE

    def offers(self, capability: str, action: str) -> bool:
        return self.online and action in self.capabilities.get(capability, ())

    def describe(self) -> str:
        offered = " ".join(f"{c}[{','.join(a)}]" for c, a in sorted(self.capabilities.items()))
        return f"{self.agent} {self.state}{self._load()} {offered}".rstrip()

    def _load(self) -> str:
        return f" load {self.load}/{self.max_concurrent}" if self.online else ""


@dataclass
class CoordinatorPresence(Presence):
    """The coordinator's retained status, the same shape as an agent's (``agent`` is ``coordinator``)."""

    event: ClassVar[str] = "coordinator"
    topic_pattern: ClassVar[str] = "coordinator/status"
    reserved: ClassVar[frozenset[str]] = frozenset()
    agent: str = COORDINATOR
    pid: int = 0  # its process on ``host``: with ``started``, who a second coordinator finds serving the bus

    def _load(self) -> str:
        return ""


@dataclass
class CoordinatorRequest(Message):
    """An order for the coordinator itself: ``restart``, or ``log_level`` with the level in ``value``
    (Home Assistant's Restart button and Log level select send them). Never retained."""

    kind: ClassVar[str] = "coordinator request"
    event: ClassVar[str] = "coordinator"
    topic_pattern: ClassVar[str] = "coordinator/request"
    action: CoordinatorAction
    value: str = ""

    def validate(self) -> None:
        super().validate()
        if self.action == CoordinatorAction.LOG_LEVEL and self.value not in LOG_LEVELS:
            raise ProtocolError(f"must be one of {', '.join(LOG_LEVELS)}", "value")

    def describe(self) -> str:
        return f"coordinator asked to {self.action}{f' {self.value}' if self.value else ''}"


@dataclass
class AgentSpec(Message):
    """What an agent's capabilities understand, retained beside its presence: ``capabilities`` maps
    each name to its spec (read by :mod:`lamcontrol.language`, which skips what it cannot read, so a
    newer agent never breaks an older coordinator). An empty payload clears it."""

    kind: ClassVar[str] = "spec"
    event: ClassVar[str] = "agent"
    topic_pattern: ClassVar[str] = "agents/{agent}/spec"
    retained: ClassVar[bool] = True
    ids = ("agent",)
    agent: str
    capabilities: dict = field(default_factory=dict)
    version: int = 1

    def describe(self) -> str:
        return f"{self.agent} spec: {' '.join(sorted(self.capabilities)) or 'none'}"


@dataclass
class ErrorRecord(Message):
    """A message some component had to refuse, and why."""

    kind: ClassVar[str] = "error record"
    event: ClassVar[str] = "error"
    topic_pattern: ClassVar[str] = "errors"
    component: str
    topic_name: str
    error: str
    excerpt: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "topic": self.topic_name, "error": self.error, "excerpt": self.excerpt}

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> ErrorRecord:
        if isinstance(data, dict) and "topic" in data:
            data = {("topic_name" if k == "topic" else k): v for k, v in data.items()}
        return super().from_dict(data, where)

    @classmethod
    def about(cls, component: str, topic: str, error: Exception | str, payload: bytes = b"") -> ErrorRecord:
        excerpt = payload[:200].decode("utf-8", errors="replace")
        return cls(component=component, topic_name=topic, error=str(error), excerpt=excerpt)

    def describe(self) -> str:
        return f"{self.component} refused {self.topic_name}: {self.error}"


def read(topics: Topics, topic: str, payload: bytes) -> Message | None:
    """The message on a LAM topic, checked against the ids its levels carry; None for other
    topics and for emptied retained ones. Size limits are the caller's (see :func:`parse`)."""
    match = topics.match(topic)
    if match is None or not payload:
        return None
    return match.cls.from_topic(match.ids, payload)


def describe_event(prefix: str, topic: str, payload: bytes) -> tuple[str, str]:
    """(kind, one human line) for any message on the LAM topics; kind ``other`` for the rest."""
    topics = Topics(prefix)
    match = topics.match(topic)
    if match is None:
        return "other", f"{topic} {payload[:200].decode('utf-8', 'replace')}"
    if not payload:
        return match.cls.event, f"{topic} cleared"
    try:
        message = read(topics, topic, payload)
    except ProtocolError as exc:
        return "error", f"unreadable message on {topic}: {exc}"
    if isinstance(message, Prompt) and not payload.lstrip().startswith(b"{"):
        # A plain-text prompt has no id yet: the coordinator gives it one, unknown here.
        return "prompt", f"(plain text) from {message.source}: {message.prompt!r}"
    return match.cls.event, message.describe()
