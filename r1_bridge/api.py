"""The LAMControl-compatible REST API under ``/api``.

Shapes follow the original LAMControl server (``POST /api/prompt`` → ``{status, id,
response}``, the status endpoints, health and workers) but report real outcomes: a prompt
is ``pending`` until the coordinator's reply arrives, then ``completed`` with its sentence.
"""

from __future__ import annotations

import functools
import hmac
import json
import math
from typing import Any, Callable

from flask import Blueprint, Response, jsonify, request, session

from lamcontrol import __version__
from lamcontrol.protocol import Presence, Prompt, ProtocolError

from .app import HERE, bridge, iso, json_error
from .metrics import CONTENT_TYPE
from .relay import Exchange

api = Blueprint("api", __name__, url_prefix="/api")

MAX_PROMPT_CHARS = 2000


def client_address() -> str:
    return request.remote_addr or "unknown"


def admin_session() -> bool:
    """A logged-in dashboard whose password has not changed since."""
    return session.get("admin") == bridge().admin.fingerprint and bridge().admin.is_set


def csrf_ok() -> bool:
    expected = session.get("csrf")
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
    return bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def token_required(view: Callable) -> Callable:
    """A valid bearer token, or a dashboard session with its CSRF header; guesses are rate-limited."""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        state = bridge()
        client = client_address()
        wait = state.limiter.retry_after(client)
        if wait:
            return json_error(f"Too many failed attempts; try again in {wait} seconds", 429, **{"Retry-After": str(wait)})
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            if state.tokens.check(token.strip()):
                return view(*args, **kwargs)
            state.limiter.fail(client)
            return json_error("Invalid token", 401, **{"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if admin_session() and csrf_ok():
            return view(*args, **kwargs)
        return json_error("Authentication required: send Authorization: Bearer <token>", 401,
                          **{"WWW-Authenticate": "Bearer"})

    return guarded


def json_body() -> dict:
    """The request's JSON object, or a 400 naming what is wrong."""
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("Request body must be JSON (Content-Type: application/json)")
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object")
    return data


class BadRequest(Exception):
    """A client mistake; the message is sent back as the error."""


@api.errorhandler(BadRequest)
def bad_request(exc: BadRequest) -> Response:
    return json_error(str(exc), 400)


def wait_seconds(value: Any, where: str) -> float:
    """A client's ``wait``: a number of seconds, capped by the configured maximum."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadRequest(f"{where} must be a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise BadRequest(f"{where} must be a number of seconds, 0 or more")
    return min(float(value), bridge().settings.max_wait)


def result_of(exchange: Exchange) -> dict | None:
    reply = exchange.reply
    if reply is None:
        return None
    return {"status": reply.status, "success": reply.ok, "message": reply.response, "tasks": reply.to_dict()["tasks"],
            "timestamp": iso(reply.ts)}


def prompt_state(exchange: Exchange, wait: float = 0.0) -> dict:
    """The prompt's state as the API shows it, once it has a reply or ``wait`` seconds have passed."""
    if wait:
        exchange.done.wait(wait)
    result = result_of(exchange)
    state = {"status": "completed" if result else "pending", "id": exchange.prompt.id,
             "response": result["message"] if result else None, "timestamp": iso(exchange.submitted)}
    if result:
        state["result"] = result
    return state


@api.post("/prompt")
@token_required
def post_prompt() -> Response:
    body = json_body()
    text = body.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("No prompt provided: send {\"prompt\": \"...\"}")
    if len(text) > MAX_PROMPT_CHARS:
        raise BadRequest(f"prompt is longer than {MAX_PROMPT_CHARS} characters")
    wait = wait_seconds(body.get("wait"), "wait")
    fields = {"prompt": text.strip(), "source": body.get("source", "r1"), "metadata": body.get("metadata", {})}
    if "id" in body:
        fields["id"] = body["id"]
    try:
        prompt = Prompt.from_dict(fields)
    except ProtocolError as exc:
        raise BadRequest(str(exc)) from None
    relay = bridge().relay
    if not relay.bus.connected.is_set():
        return json_error("Not connected to the MQTT broker; try another bridge or later", 503)
    # A client retrying with the id it chose gets the same prompt back, never a second run.
    exchange = relay.exchanges.get(prompt.id) or relay.send(prompt)
    return jsonify(prompt_state(exchange, wait))


@api.get("/prompt/<prompt_id>/status")
@token_required
def prompt_status(prompt_id: str) -> Response:
    wait = wait_seconds(request.args.get("wait"), "wait")
    exchange = bridge().relay.exchanges.get(prompt_id)
    if exchange is None:
        return json_error("Prompt not found", 404)
    return jsonify(prompt_state(exchange, wait))


@api.get("/task/<task_id>/status")
@token_required
def task_status(task_id: str) -> Response:
    state = bridge()
    task = state.tracker.get(task_id)
    if task is None:
        found = state.relay.find_task(task_id)
        if found is None:
            return json_error("Task not found", 404)
        exchange, summary = found
        task = {**summary, "prompt_id": exchange.prompt.id, "ts": exchange.reply.ts if exchange.reply else 0}
    body = {"id": task_id, "prompt_id": task.get("prompt_id"), "command": task.get("command", ""),
            "worker_id": task.get("agent"), "state": task["state"], "timestamp": iso(task.get("ts") or 0)}
    if task["state"] in ("succeeded", "failed"):
        body.update(status="completed", success=task["state"] == "succeeded", message=task.get("message", ""),
                    output=task.get("data", {}),
                    result={"state": task["state"], "message": task.get("message", ""), "data": task.get("data", {})})
    else:
        body.update(status="pending", message="Task is being processed...")
    return jsonify(body)


@api.get("/health")
def health() -> Response:
    body, status = bridge().health()
    response = jsonify(body)
    response.status_code = status
    return response


def worker_view(presence: Presence, topics_prefix: str) -> dict:
    capabilities = sorted(presence.capabilities)
    return {
        "worker_id": presence.agent, "worker_type": ",".join(capabilities) or "none",
        "capabilities": capabilities, "actions": presence.capabilities, "status": presence.state,
        "current_tasks": presence.load, "max_tasks": presence.max_concurrent,
        "last_heartbeat": iso(presence.ts), "location": presence.host, "description": "",
        "custom_name": presence.agent, "version": presence.version,
        "endpoint": f"mqtt:{topics_prefix}/agents/{presence.agent}/status",
    }


@api.get("/workers")
@token_required
def workers() -> Response:
    relay = bridge().relay
    agents = sorted(relay.agents.values(), key=lambda p: p.agent)
    return jsonify(workers=[worker_view(p, relay.topics.prefix) for p in agents], total_workers=len(agents),
                   online_workers=sum(1 for p in agents if p.state == "online"))


@api.get("/openapi.json")
def openapi() -> Response:
    spec = json.loads((HERE / "openapi.json").read_text())
    spec["info"]["version"] = __version__
    return jsonify(spec)


@token_required
def metrics() -> Response:
    """Prometheus text format (mounted at /metrics unless a metrics port is configured)."""
    return Response(bridge().metrics.render(), content_type=CONTENT_TYPE)

