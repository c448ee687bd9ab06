"""What the bridge sees on the bus: a live event stream for the dashboard and task states.

Both are fed by :class:`~lamcontrol.r1_bridge.relay.Relay` watchers on the bus thread, so
they only record and queue; nothing here publishes or decides anything.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import OrderedDict, deque
from typing import Iterator

from lamcontrol.protocol import FINISHED, ProtocolError, Result, Task, TaskState, Topics, describe_event, read


class EventHub:
    """Fans bus events out to server-sent-event subscribers; keeps the last few for newcomers."""

    def __init__(self, topics: Topics, history: int = 100, backlog: int = 500) -> None:
        self.topics = topics
        self.recent: deque[dict] = deque(maxlen=history)
        self.backlog = backlog
        self._subscribers: set[queue.Queue] = set()
        self._lock = threading.Lock()

    def watch(self, topic: str, payload: bytes) -> None:
        kind, text = describe_event(self.topics.prefix, topic, payload)
        if kind == "other":
            return  # not part of the conversation (retained state mirrors, foreign topics)
        self.publish({"kind": kind, "text": text, "topic": topic, "ts": time.time()})

    def publish(self, event: dict) -> None:
        with self._lock:
            self.recent.append(event)
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                subscriber.put_nowait(event)
            except queue.Full:
                pass  # a stalled browser loses events rather than holding memory

    def stream(self, max_age: float, keepalive: float = 15.0) -> Iterator[str]:
        """Server-sent events: recent history, then live events, for at most ``max_age`` seconds."""
        inbox: queue.Queue = queue.Queue(self.backlog)
        with self._lock:
            self._subscribers.add(inbox)
            history = list(self.recent)
        try:
            yield "retry: 2000\n\n"
            for event in history:
                yield sse(event)
            ends = time.monotonic() + max_age
            while (left := ends - time.monotonic()) > 0:
                try:
                    yield sse(inbox.get(timeout=min(keepalive, left)))
                except queue.Empty:
                    yield ": keepalive\n\n"
        finally:
            with self._lock:
                self._subscribers.discard(inbox)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


def sse(event: dict) -> str:
    """One server-sent event; browsers get it as a plain ``message`` carrying its kind inside."""
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


class TaskTracker:
    """The last ``keep`` tasks seen on the bus and where each one stands."""

    def __init__(self, topics: Topics, keep: int = 1000) -> None:
        self.topics = topics
        self.keep = keep
        self.tasks: OrderedDict[str, dict] = OrderedDict()
        self.counts = dict.fromkeys(FINISHED, 0)
        self._lock = threading.Lock()

    def watch(self, topic: str, payload: bytes) -> None:
        try:
            message = read(self.topics, topic, payload)
        except ProtocolError:
            return  # the coordinator and agents report bad messages; we only observe
        if isinstance(message, Task):
            self._on_task(message)
        elif isinstance(message, Result):  # also one on the legacy topic: the coordinator decides
            self._on_result(message)

    def _on_task(self, task: Task) -> None:
        with self._lock:
            entry = self.tasks.setdefault(task.task_id, {"message": "", "data": {}})
            entry.update(task_id=task.task_id, prompt_id=task.prompt_id, agent=task.agent, state=TaskState.DISPATCHED,
                         command=task.command or f"{task.capability} {task.action}", ts=time.time())
            while len(self.tasks) > self.keep:
                self.tasks.popitem(last=False)

    def _on_result(self, result: Result) -> None:
        with self._lock:
            entry = self.tasks.get(result.task_id)
            if entry is None or entry["state"] in FINISHED:
                return  # unknown, or a duplicate delivery of a final result
            if result.state in FINISHED:
                self.counts[result.state] += 1
            entry.update(state=result.state, agent=result.agent, message=result.message, data=result.data,
                         ts=time.time())

    def get(self, task_id: str) -> dict | None:
        with self._lock:
            entry = self.tasks.get(task_id)
            return dict(entry) if entry else None
