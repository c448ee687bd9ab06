"""A local stand-in for Groq's OpenAI-compatible chat API, for the real ``groq`` SDK.

Point the SDK at it with ``Groq(api_key="test", base_url=stub.url)`` (or ``[groq] base_url``)::

    with GroqStub("computer volume up") as stub:          # every call answers this text
        stub.then(rate_limited(30), answer("x"))          # ...after these one-shot replies
        ...
        stub.calls[-1]["model"], stub.system_prompt()     # what the client sent

``answer`` may also be a function of the request's JSON body returning a :class:`Reply`, so a
test can answer by prompt. Requests are checked as Groq checks them: message content is text or
a list of ``text`` and ``image_url`` parts (images only for a vision model, as a URL or a Base64
``data:`` URL, a Base64 request at most 4 MB), no ``reasoning_effort`` for a vision model;
:meth:`GroqStub.images` gives the images a call carried. Replies: :func:`answer`, :func:`error`, :func:`rate_limited`,
:func:`server_error`, :func:`retired`, :func:`unknown_model`, :func:`slow`, :func:`malformed`.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from standins import Request, Response, StandIn

PATH = "/openai/v1/chat/completions"
VISION_MODELS = ("meta-llama/llama-4-scout-17b-16e-instruct", "meta-llama/llama-4-maverick-17b-128e-instruct")
MAX_BASE64_REQUEST = 4 * 1024 * 1024
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

    def images(self, index: int = -1) -> list[bytes]:
        """The images (decoded) that a call sent in ``image_url`` parts."""
        found = []
        for message in self.calls[index]["messages"]:
            for part in message["content"] if isinstance(message["content"], list) else ():
                if part["type"] == "image_url":
                    found.append(base64.b64decode(part["image_url"]["url"].partition(",")[2]))
        return found

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
        problem = refusal(body, len(request.body))
        if problem:
            return Response(400, {"error": {"message": problem, "type": "invalid_request_error",
                                            "code": "invalid_request_error"}})
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


def refusal(body: dict, size: int) -> str:
    """What Groq would refuse in this request body, or ""."""
    model = body.get("model", "")
    if "reasoning_effort" in body and model in VISION_MODELS:
        return f"`reasoning_effort` is not supported with model `{model}`"
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str) or content is None:
            continue
        if not isinstance(content, list) or message.get("role") != "user":
            return "'messages.content' must be a string, or a list of parts in a user message"
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind != "image_url" or not isinstance(part.get("image_url"), dict):
                return f"unknown content part {part!r}"
            if model not in VISION_MODELS:
                return f"model `{model}` does not support image input"
            url = part["image_url"].get("url", "")
            if url.startswith("data:"):
                if ";base64," not in url or size > MAX_BASE64_REQUEST:
                    return "a Base64 image request must be a data URL and at most 4MB"
            elif not url.startswith(("http://", "https://")):
                return "image_url.url must be a URL or a data URL"
    return ""
