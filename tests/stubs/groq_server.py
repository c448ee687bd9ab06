"""A local stand-in for Groq's OpenAI-compatible chat API, for the real ``groq`` SDK.

Point the SDK at it with ``Groq(api_key="test", base_url=stub.url)`` (or ``[groq] base_url``)::

    with GroqStub("computer volume up") as stub:          # every call answers this text
        stub.then(rate_limited(30), answer("x"))          # ...after these one-shot replies
        ...
        stub.calls[-1]["model"], stub.system_prompt()     # what the client sent

``answer`` may also be a function of the request's JSON body returning a :class:`Reply`, so a
test can answer by prompt. Replies: :func:`answer`, :func:`error`, :func:`rate_limited`,
:func:`server_error`, :func:`retired`, :func:`unknown_model`, :func:`slow`, :func:`malformed`.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from standins import Request, Response, StandIn

PATH = "/openai/v1/chat/completions"
PLENTY = {  # the rate-limit headers Groq sends with every answer, far from any limit
    "x-ratelimit-limit-requests": "1000", "x-ratelimit-remaining-requests": "999",
    "x-ratelimit-reset-requests": "1m26.4s", "x-ratelimit-limit-tokens": "8000",
    "x-ratelimit-remaining-tokens": "7000", "x-ratelimit-reset-tokens": "7.5s",
}


@dataclass
class Reply:
    """One scripted answer: an assistant message (``content``) or an error/raw ``body``."""

    status: int = 200
    content: str | None = None
    body: dict | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def answer(content: str, headers: dict[str, str] | None = None) -> Reply:
    """A normal completion whose message is ``content`` (``headers`` replace the rate-limit ones)."""
    return Reply(content=content, headers=PLENTY if headers is None else headers)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    """An error in Groq's body format ``{"error": {"message", "type", "code"}}``."""
    kind = "invalid_request_error" if status < 500 else "internal_server_error"
    return Reply(status, body={"error": {"message": message, "type": kind, "code": code}}, headers=headers or {})


def rate_limited(retry_after: float = 30) -> Reply:
    return error(429, "rate_limit_exceeded", "Rate limit reached for model: tokens per minute (TPM).",
                 {"retry-after": f"{retry_after:g}", "x-ratelimit-remaining-tokens": "0",
                  "x-ratelimit-reset-tokens": f"{retry_after:g}s"})


def server_error(status: int = 503) -> Reply:
    return error(status, "service_unavailable", "Service unavailable.")


def retired(model: str = "llama-3.3-70b-versatile") -> Reply:
    return error(400, "model_decommissioned", f"The model `{model}` has been decommissioned and is no longer supported.")


def unknown_model(model: str = "llama-3.3-70b-versatile") -> Reply:
    return error(404, "model_not_found", f"The model `{model}` does not exist or you do not have access to it.")


def slow(seconds: float, content: str = "x") -> Reply:
    """An answer that only comes after ``seconds`` (or when the stub stops)."""
    return Reply(content=content, headers=PLENTY, delay=seconds)


def malformed() -> Reply:
    """A 200 whose body is not JSON."""
    return Reply(body="<html>upstream hiccup</html>")


class GroqStub(StandIn):
    """Serves ``POST /openai/v1/chat/completions``; records every request in ``requests``."""

    def __init__(self, answer_with: str | Callable[[dict], Reply] = "x", latency: float = 0.0) -> None:
        super().__init__(self._respond)
        self.answer = answer_with
        self.latency = latency  # seconds every answer takes at least (benchmarks: Groq's own, ~0.3)
        self.script: deque[Reply] = deque()
        self.stopping = threading.Event()
        self._ids = itertools.count(1)

    def then(self, *replies: Reply) -> GroqStub:
        """Use these replies for the next calls, in order, before the default answer."""
        self.script.extend(replies)
        return self

    @property
    def calls(self) -> list[dict]:
        """The JSON bodies of the chat completion requests, oldest first."""
        return [r.json() for r in self.requests if r.path == PATH]

    def system_prompt(self, index: int = -1) -> str:
        messages = self.calls[index]["messages"]
        return next((m["content"] for m in messages if m["role"] == "system"), "")

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        super().__exit__(*exc)

    def _respond(self, request: Request) -> Response:
        if request.method != "POST" or request.path != PATH:
            return Response(404, {"error": {"message": "Unknown request URL", "type": "invalid_request_error",
                                            "code": "unknown_url"}})
        try:
            body = request.json()
        except ValueError:
            return Response(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error",
                                            "code": "json_invalid"}})
        reply = self.script.popleft() if self.script else self._default(body)
        if reply.delay or self.latency:
            self.stopping.wait(max(reply.delay, self.latency))
        if reply.content is None:
            return Response(reply.status, reply.body or "", content_type="application/json", headers=reply.headers)
        completion = {
            "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", ""), "system_fingerprint": "fp_stub",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": reply.content}}],
            "usage": {"prompt_tokens": len(json.dumps(body["messages"])) // 4,
                      "completion_tokens": len(reply.content) // 4 + 1,
                      "total_tokens": (len(json.dumps(body["messages"])) + len(reply.content)) // 4 + 1},
        }
        return Response(reply.status, completion, headers=reply.headers)

    def _default(self, body: dict) -> Reply:
        return answer(self.answer) if isinstance(self.answer, str) else self.answer(body)
