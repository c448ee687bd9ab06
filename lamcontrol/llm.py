"""Groq, shared by everything that asks a language model: settings, the client, and back-off.

Settings come from the ``[groq]`` section (``api_key``, ``api_key_file`` or ``$GROQ_API_KEY``,
``model``, ``base_url``, ``timeout``, ``max_retries``, ``reasoning_effort``); a component may
override any of them with its own non-empty values. :class:`GroqChat` sends one chat
completion through the official ``groq`` SDK and turns every failure into
:class:`LLMUnavailable` with a sentence. It reads the ``x-ratelimit-*`` and ``retry-after``
headers and refuses to call Groq at all while a limit is in force, so a caller can fall back
at once instead of waiting. A 429 is never retried by the SDK (that would sleep inside the
request); the back-off here takes its place.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

from .config import DEFAULTS, read_secret

log = logging.getLogger(__name__)

API_KEY_ENV = "GROQ_API_KEY"
TOKENS_HEADROOM = 1500  # fewer tokens left than one request needs: wait for the reset
FAILURE_BACKOFF = (5.0, 300.0)  # first and longest pause after Groq failed to answer
CONFIG_BACKOFF = 3600.0  # a retired model or a refused key will not fix itself soon
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class LLMUnavailable(Exception):
    """Groq gave no usable answer; ``str(exc)`` says why in a few words."""


@dataclass(frozen=True)
class GroqSettings:
    """How to reach Groq."""

    api_key: str = ""
    model: str = DEFAULTS["groq"]["model"]
    base_url: str = ""
    timeout: float = DEFAULTS["groq"]["timeout"]
    max_retries: int = DEFAULTS["groq"]["max_retries"]
    reasoning_effort: str = DEFAULTS["groq"]["reasoning_effort"]

    @classmethod
    def from_config(cls, section: dict[str, Any] | None, overrides: dict[str, Any] | None = None) -> GroqSettings:
        """Settings from a ``[groq]`` section, with the non-empty ``overrides`` winning."""
        merged = {**DEFAULTS["groq"], **(section or {})}
        merged.update({k: v for k, v in (overrides or {}).items() if v not in ("", None)})
        try:
            timeout, retries = float(merged["timeout"]), int(merged["max_retries"])
        except (TypeError, ValueError):
            raise ValueError("[groq] timeout must be a number of seconds and max_retries a whole number") from None
        if timeout <= 0 or retries < 0:
            raise ValueError("[groq] timeout must be positive and max_retries zero or more")
        key = read_secret(str(merged["api_key"]), str(merged["api_key_file"]), API_KEY_ENV)
        return cls(api_key=key.strip(), model=str(merged["model"]), base_url=str(merged["base_url"]),
                   timeout=timeout, max_retries=retries, reasoning_effort=str(merged["reasoning_effort"]))

    @property
    def configured(self) -> bool:
        return bool(self.api_key)


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Groq reset header (``"2m59.56s"``, ``"7.66s"``, ``"120ms"``, ``"30"``), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _no_sdk_retry_on_429(response: Any) -> None:
    """Tell the SDK not to sleep and retry a 429: GroqChat backs off instead."""
    if response.status_code == 429:
        response.headers["x-should-retry"] = "false"


class GroqChat:
    """One Groq client with its rate-limit state; safe to share between threads."""

    def __init__(self, settings: GroqSettings) -> None:
        if not settings.configured:
            raise ValueError(f"no Groq API key: set [groq] api_key_file or ${API_KEY_ENV}")
        import groq  # the extra is optional; only a configured Groq needs it

        self.groq = groq
        self.settings = settings
        self.client = groq.Groq(
            api_key=settings.api_key, base_url=settings.base_url or None, timeout=settings.timeout,
            max_retries=settings.max_retries,
            http_client=groq.DefaultHttpxClient(event_hooks={"response": [_no_sdk_retry_on_429]}))
        self._lock = threading.Lock()
        self._blocked_until = 0.0
        self._blocked_why = ""
        self._failures = 0

    # -- back-off -----------------------------------------------------------------------

    def blocked(self) -> str:
        """Why Groq must not be called now, or '' when it may."""
        with self._lock:
            left = self._blocked_until - time.monotonic()
            return f"{self._blocked_why}, {left:.0f} s left" if left > 0 else ""

    def _block(self, seconds: float, why: str) -> None:
        with self._lock:
            until = time.monotonic() + seconds
            if until > self._blocked_until:
                self._blocked_until, self._blocked_why = until, why

    def _read_limits(self, headers: Any) -> None:
        """Pause before a limit is hit, as the ``x-ratelimit-*`` headers tell."""
        for kind, floor in (("requests", 1), ("tokens", TOKENS_HEADROOM)):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if remaining is not None and remaining.isdigit() and int(remaining) < floor and reset:
                log.warning("Groq %s limit reached; not asking Groq for %.0f s", kind, reset)
                self._block(reset, f"Groq {kind} limit reached")

    def _failed(self, why: str) -> LLMUnavailable:
        """Count a failure to answer and pause longer each time it repeats."""
        with self._lock:
            self._failures += 1
            pause = min(FAILURE_BACKOFF[0] * 2 ** (self._failures - 1), FAILURE_BACKOFF[1])
        self._block(pause, why)
        return LLMUnavailable(why)

    # -- the call -----------------------------------------------------------------------

    def complete(self, messages: list[dict[str, Any]], max_tokens: int = 512, model: str | None = None) -> str:
        """The assistant's text for ``messages``; LLMUnavailable when there is none."""
        why = self.blocked()
        if why:
            raise LLMUnavailable(why)
        model = model or self.settings.model
        extra = {"reasoning_effort": self.settings.reasoning_effort} if self.settings.reasoning_effort else {}
        errors = self.groq
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=model, messages=cast(Any, messages), max_completion_tokens=max_tokens, temperature=0, extra_body=extra)
        except errors.RateLimitError as exc:
            wait = (parse_duration(exc.response.headers.get("retry-after"))
                    or parse_duration(exc.response.headers.get("x-ratelimit-reset-requests")) or 10.0)
            log.warning("Groq rate limit (429); not asking Groq for %.0f s", wait)
            self._block(wait, "Groq is rate-limiting us")
            raise LLMUnavailable("Groq is rate-limiting us") from None
        except errors.APITimeoutError:
            raise self._failed("Groq timed out") from None
        except errors.APIConnectionError:
            raise self._failed("Groq is unreachable") from None
        except errors.InternalServerError as exc:
            raise self._failed(f"Groq had a server error ({exc.status_code})") from None
        except errors.AuthenticationError:
            log.error("Groq refused the API key (401); check [groq] api_key_file or $%s", API_KEY_ENV)
            self._block(CONFIG_BACKOFF, "Groq refused the API key")
            raise LLMUnavailable("Groq refused the API key") from None
        except errors.APIStatusError as exc:
            code = _error_code(exc.body)
            if code in ("model_decommissioned", "model_not_found") or exc.status_code == 404 and "model" in str(exc):
                log.error("Groq no longer serves the model %r (%s %s); set [groq] model to a current one, "
                          "such as %s", model, exc.status_code, code or "not found", DEFAULTS["groq"]["model"])
                self._block(CONFIG_BACKOFF, f"Groq no longer serves the model {model}")
                raise LLMUnavailable(f"Groq no longer serves the model {model}") from None
            log.warning("Groq refused the request (%s %s); check [groq] base_url and model", exc.status_code, code)
            raise LLMUnavailable(f"Groq refused the request ({exc.status_code})") from None
        except errors.APIError as exc:  # a response the SDK could not read
            raise self._failed(f"Groq's answer could not be read ({exc.__class__.__name__})") from None
        self._read_limits(raw.headers)
        with self._lock:
            self._failures = 0
        try:
            completion = raw.parse()
            content = completion.choices[0].message.content
        except (errors.APIError, AttributeError, IndexError, TypeError, ValueError):
            raise LLMUnavailable("Groq's answer could not be read") from None
        if not isinstance(content, str) or not content.strip():
            raise LLMUnavailable("Groq answered with nothing")
        return content.strip()


def _error_code(body: object) -> str:
    """The ``code`` of an OpenAI-style error body, or ''."""
    error = body.get("error", body) if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else ""
