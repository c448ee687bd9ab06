"""The LAMControl wire protocol: every topic and every message type, in one place.

Each message is a small dataclass that knows its topic, reads itself from a dict
(refusing bad input with a :class:`ProtocolError` that names the field) and writes
compact JSON. Components never build topics or payloads by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, get_args, get_origin, get_type_hints

DEFAULT_PREFIX = "lam"
DEFAULT_MAX_PAYLOAD = 64 * 1024

PROMPT_STATUSES = ("succeeded", "failed", "partial", "ignored", "rejected", "needs_confirmation")
RESULT_STATES = ("accepted", "succeeded", "failed", "rejected")
PRESENCE_STATES = ("online", "offline")
RISKS = ("low", "high")


class ProtocolError(ValueError):
    """A payload that is not a valid message; ``field`` names what was wrong."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


def new_id() -> str:
    """A short random id for prompts and tasks."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class Topics:
    """The topic table, under a configurable prefix."""

    prefix: str = DEFAULT_PREFIX

    @property
    def prompts(self) -> str:
        return f"{self.prefix}/prompts"

    def reply(self, prompt_id: str) -> str:
        return f"{self.prefix}/replies/{prompt_id}"

    def task(self, capability: str) -> str:
        return f"{self.prefix}/tasks/{capability}"

    def result(self, task_id: str) -> str:
        return f"{self.prefix}/results/{task_id}"

    def agent_status(self, agent_id: str) -> str:
        return f"{self.prefix}/agents/{agent_id}/status"

    @property
    def coordinator_status(self) -> str:
        return f"{self.prefix}/coordinator/status"

    @property
    def errors(self) -> str:
        return f"{self.prefix}/errors"

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
        return self.result("+")

    @property
    def all_agent_statuses(self) -> str:
        return self.agent_status("+")

    def last_level(self, topic: str) -> str:
        """The id at the end of a topic such as ``lam/results/<task_id>``."""
        return topic.rsplit("/", 1)[-1]

    def agent_of(self, status_topic: str) -> str:
        """The agent id in ``lam/agents/<agent_id>/status``."""
        return status_topic.split("/")[-2]


def check_id(value: str, field_name: str) -> str:
    """Ids end up in topic levels: refuse wildcards, separators and empties."""
    if not value or len(value) > 128 or any(c in value for c in "/+#\0 ") or not value.isprintable():
        raise ProtocolError("must be 1-128 printable characters without '/', '+', '#' or spaces", field_name)
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _checked(value: Any, hint: Any, name: str) -> Any:
    """``value`` if it has the type the field declares, else a ProtocolError naming it."""
    optional = type(None) in get_args(hint)
    if value is None and optional:
        return None
    expected = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    expected = get_origin(expected) or expected
    accepted = (int, float) if expected is float else expected
    if isinstance(value, bool) and expected is not bool or not isinstance(value, accepted):
        raise ProtocolError(f"must be {expected.__name__}, not {type(value).__name__}", name)
    return value

M = TypeVar("M", bound="Message")


class Message:
    """Base of every message: validation from dicts, compact JSON out."""

    kind: ClassVar[str]
    ids: ClassVar[tuple[str, ...]] = ()
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def from_dict(cls: type[M], data: Any) -> M:
        if not isinstance(data, dict):
            raise ProtocolError(f"a {cls.kind} must be a JSON object, not {type(data).__name__}")
        hints = _hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ProtocolError("is required", f.name)
                continue
            values[f.name] = _checked(data[f.name], hints[f.name], f.name)
        message = cls(**values)
        message.validate()
        return message

    def validate(self) -> None:
        for name in self.ids:
            check_id(getattr(self, name), name)
        for name, allowed in self.choices.items():
            if getattr(self, name) not in allowed:
                raise ProtocolError(f"must be one of {', '.join(allowed)}", name)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


def decode(payload: bytes, max_size: int = DEFAULT_MAX_PAYLOAD) -> Any:
    """Bytes to JSON, refusing oversized and undecodable payloads."""
    if len(payload) > max_size:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {max_size}-byte limit")
    try:
        return json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"payload is not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"payload is not JSON ({exc.msg} at char {exc.pos})") from None


def parse(cls: type[M], payload: bytes, max_size: int = DEFAULT_MAX_PAYLOAD) -> M:
    """Decode and validate one message of type ``cls``."""
    return cls.from_dict(decode(payload, max_size))


@dataclass
class Prompt(Message):
    """Something a person said or typed, for the coordinator."""

    kind: ClassVar[str] = "prompt"
    ids = ("id",)
    prompt: str
    id: str = field(default_factory=new_id)
    source: str = "mqtt"
    metadata: dict = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        if len(self.source) > 64:
            raise ProtocolError("must be at most 64 characters", "source")

    @classmethod
    def from_payload(cls, payload: bytes, max_size: int = DEFAULT_MAX_PAYLOAD) -> Prompt:
        """A JSON prompt object, or any other UTF-8 text taken as the prompt itself."""
        if len(payload) > max_size:
            raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {max_size}-byte limit")
        text = payload.decode("utf-8", errors="strict") if payload else ""
        if text.lstrip().startswith(("{", "[")):
            return cls.from_dict(decode(payload, max_size))
        return cls(prompt=text.strip(), source="mqtt")

    def topic(self, topics: Topics) -> str:
        return topics.prompts


@dataclass
class TaskSummary(Message):
    """One command of a prompt, as reported in its reply."""

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
    ids = ("prompt_id",)
    choices = {"status": PROMPT_STATUSES}
    prompt_id: str
    status: str
    response: str
    tasks: list = field(default_factory=list)
    ts: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "ignored", "needs_confirmation")

    def topic(self, topics: Topics) -> str:
        return topics.reply(self.prompt_id)


@dataclass
class Task(Message):
    """One command for one agent.

    ``accept_by`` closes the dispatch window: a task delivered later (a broker held it
    while the agent was away) is rejected, since it may already run elsewhere.
    ``deadline`` is when the work itself must be done.
    """

    kind: ClassVar[str] = "task"
    ids = ("task_id", "prompt_id", "capability", "agent")
    choices = {"risk": RISKS}
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
    risk: str = "low"

    def topic(self, topics: Topics) -> str:
        return topics.task(self.capability)


@dataclass
class Result(Message):
    """An agent's word on a task: accepted, then succeeded or failed; or rejected."""

    kind: ClassVar[str] = "result"
    ids = ("task_id", "agent")
    choices = {"state": RESULT_STATES}
    task_id: str
    agent: str
    state: str
    message: str = ""
    data: dict = field(default_factory=dict)
    attempt: int = 1

    def topic(self, topics: Topics) -> str:
        return topics.result(self.task_id)


@dataclass
class Presence(Message):
    """Retained status of an agent or the coordinator (also its last will)."""

    kind: ClassVar[str] = "presence"
    ids = ("agent",)
    choices = {"state": PRESENCE_STATES}
    state: str
    agent: str
    capabilities: dict = field(default_factory=dict)
    load: int = 0
    max_concurrent: int = 1
    host: str = ""
    version: str = ""
    heartbeat: float = 30.0
    vocabulary: dict = field(default_factory=dict)  # names a capability knows, e.g. {"home": ["desk lamp"]}
    ts: float = field(default_factory=time.time)

    def validate(self) -> None:
        super().validate()
        for capability, actions in {**self.capabilities, **self.vocabulary}.items():
            if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
                raise ProtocolError("each capability must map to a list of names", f"capabilities.{capability}")

    def offers(self, capability: str, action: str) -> bool:
        return self.state == "online" and action in self.capabilities.get(capability, ())

    def topic(self, topics: Topics) -> str:
        if self.agent == "coordinator":
            return topics.coordinator_status
        return topics.agent_status(self.agent)


@dataclass
class ErrorRecord(Message):
    """A message some component had to refuse, and why."""

    kind: ClassVar[str] = "error record"
    component: str
    topic_name: str
    error: str
    excerpt: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "topic": self.topic_name, "error": self.error, "excerpt": self.excerpt}

    @classmethod
    def from_dict(cls, data: Any) -> ErrorRecord:
        if isinstance(data, dict) and "topic" in data:
            data = {("topic_name" if k == "topic" else k): v for k, v in data.items()}
        return super().from_dict(data)

    @classmethod
    def about(cls, component: str, topic: str, error: Exception | str, payload: bytes = b"") -> ErrorRecord:
        excerpt = payload[:200].decode("utf-8", errors="replace")
        return cls(component=component, topic_name=topic, error=str(error), excerpt=excerpt)

    def topic(self, topics: Topics) -> str:
        return topics.errors


def describe_event(prefix: str, topic: str, payload: bytes) -> tuple[str, str]:
    """(kind, one human line) for any message on the LAM topics."""
    parts = topic.split("/")
    kind = parts[1] if len(parts) > 1 and topic.startswith(prefix + "/") else "other"
    try:
        if kind == "prompts":
            p = Prompt.from_payload(payload)
            # A plain-text prompt has no id yet: the coordinator gives it one, unknown here.
            given_id = p.id if payload.lstrip().startswith(b"{") else "(plain text)"
            return "prompt", f"{given_id} from {p.source}: {p.prompt!r}"
        if kind == "tasks":
            t = parse(Task, payload)
            return "task", f"{t.task_id} -> {t.agent}: {t.command or t.capability + ' ' + t.action} (attempt {t.attempt})"
        if kind == "results":
            r = parse(Result, payload)
            return "result", f"{r.task_id} {r.agent} {r.state}" + (f": {r.message}" if r.message else "")
        if kind == "replies":
            r = parse(Reply, payload)
            return "reply", f"{r.prompt_id} {r.status}: {r.response}"
        if kind == "agents" and parts[-1] == "spec":  # lamcontrol.language: what its capabilities understand
            spec = decode(payload) if payload else {}
            names = sorted(spec.get("capabilities") or {}) if isinstance(spec, dict) else []
            return "agent", f"{parts[-2]} spec: {' '.join(names) or 'cleared'}"
        if kind in ("agents", "coordinator"):
            if not payload:
                return "agent", f"{topic} cleared"
            p = parse(Presence, payload)
            offered = " ".join(f"{c}[{','.join(a)}]" for c, a in sorted(p.capabilities.items()))
            load = f" load {p.load}/{p.max_concurrent}" if p.state == "online" and kind == "agents" else ""
            return "agent" if kind == "agents" else "coordinator", f"{p.agent} {p.state}{load} {offered}".rstrip()
        if kind == "errors":
            e = ErrorRecord.from_dict(decode(payload))
            return "error", f"{e.component} refused {e.topic_name}: {e.error}"
    except (ProtocolError, UnicodeDecodeError) as exc:
        return "error", f"unreadable message on {topic}: {exc}"
    return "other", f"{topic} {payload[:200].decode('utf-8', 'replace')}"
