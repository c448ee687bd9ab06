"""The LAMControl-compatible REST API under ``/api``.

Shapes follow the original LAMControl server (``POST /api/prompt`` → ``{status, id,
response}``, the status endpoints, health and workers) but report real outcomes: a prompt
is ``pending`` until the coordinator's reply arrives, then ``completed`` with its sentence.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Callable

from flask import Blueprint, Response, jsonify, request

from lamcontrol import __version__
from lamcontrol.protocol import JSON_READER, Presence, Prompt, ProtocolError, check_unicode

from .auth import digest
from .metrics import CONTENT_TYPE
from .relay import Exchange
from .web import (HERE, BadRequest, admin_session, auth_log, bridge, client_address, csrf_ok, iso, json_error,
                  too_many_attempts)

api = Blueprint("api", __name__, url_prefix="/api")

MAX_PROMPT_CHARS = 2000
# The original LAMControl R1 client never polls: it prints the first answer it gets.
LEGACY_CLIENT = "LAMControl-R1-Client"
LEGACY_WAIT = 25.0  # it gives up after 30 seconds


def token_required(view: Callable) -> Callable:
    """A valid bearer token, or a dashboard session with its CSRF header.

    A valid token is always served. Wrong tokens are counted per address and per token, so
    a client repeating a revoked token, or someone guessing, is locked out without locking
    out the others that share the address (every local tool comes from 127.0.0.1).
    """

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        state = bridge()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            if state.tokens.check(token):
                return view(*args, **kwargs)
            client = client_address()
            keys = (f"address {client}", f"token {digest(token)}")
            wait = state.limiter.retry_after(*keys)
            if wait:
                return too_many_attempts(wait)
            locked = state.limiter.fail(*keys)
            auth_log.warning("invalid API token from %s for %s %s", client, request.method, request.path)
            if locked:
                auth_log.warning("locked out %s for %g seconds after %d invalid tokens; valid tokens are still served",
                            f"invalid tokens from {client}" if keys[0] in locked else "one invalid token",
                            state.settings.login_window, state.settings.login_attempts)
            return json_error("Invalid token", 401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if admin_session() and csrf_ok():
            return view(*args, **kwargs)
        return json_error("Authentication required: send Authorization: Bearer <token>", 401,
                          headers={"WWW-Authenticate": "Bearer"})

    return guarded


def json_body() -> dict:
    """The request's JSON object, or a 400 naming what is wrong with it."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise BadRequest('The request has no body: send a JSON object such as {"prompt": "..."}')
    try:
        data = JSON_READER.decode(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("The request body is not UTF-8 text") from None
    except ProtocolError as exc:  # NaN or Infinity
        raise BadRequest(f"The request body is not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        if request.is_json:
            raise BadRequest(f"The request body is not valid JSON: {exc.msg} at character {exc.pos}") from None
        raise BadRequest("The request body must be JSON, sent with Content-Type: application/json") from None
    except RecursionError:
        raise BadRequest("The request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object")
    try:
        check_unicode(data)
    except ProtocolError as exc:
        raise BadRequest(f"The request is not valid: {exc}; send each character whole") from None
    return data


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


def default_wait(body: dict) -> float:
    """The wait a client gets that did not ask for one: the original R1 client cannot poll."""
    if "wait" in body or not request.headers.get("User-Agent", "").startswith(LEGACY_CLIENT):
        return 0.0
    return min(LEGACY_WAIT, bridge().settings.max_wait)


def result_of(exchange: Exchange) -> dict | None:
    reply = exchange.reply
    if reply is None:
        return None
    return {"status": reply.status, "success": reply.ok, "message": reply.response, "tasks": reply.to_dict()["tasks"],
            "timestamp": iso(reply.ts)}


def outcome(exchange: Exchange) -> str:
    """``pending`` until the reply comes, then ``completed``, or ``failed`` when the prompt failed."""
    if exchange.reply is None:
        return "pending"
    return "completed" if exchange.reply.ok else "failed"


def prompt_state(exchange: Exchange, wait: float = 0.0) -> dict:
    """The prompt's state as the API shows it, once it has a reply or ``wait`` seconds have passed.
    A failed prompt also says why in ``error``, where the original LAMControl client reads it."""
    if wait:
        exchange.done.wait(wait)
    result = result_of(exchange)
    state = {"status": outcome(exchange), "id": exchange.prompt.id,
             "response": result["message"] if result else None, "timestamp": iso(exchange.submitted)}
    if result:
        state["result"] = result
    if state["status"] == "failed":
        state["error"] = result["message"]
    return state


def text_field(body: dict, name: str) -> str:
    value = body.get(name)
    if value is None:
        raise BadRequest(f'No {name} provided: send {{"{name}": "..."}}')
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise BadRequest(f'No {name} provided: send {{"{name}": "..."}} with some text')
    return value


@api.post("/prompt")
@token_required
def post_prompt() -> Response:
    body = json_body()
    text = text_field(body, "prompt")
    if len(text) > MAX_PROMPT_CHARS:
        raise BadRequest(f"prompt is longer than {MAX_PROMPT_CHARS} characters")
    wait = wait_seconds(body.get("wait"), "wait") or default_wait(body)
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


def prompt_as_task(exchange: Exchange) -> dict:
    """A prompt in the task-status shape: the original R1 page polls it with the prompt's id."""
    body = {"id": exchange.prompt.id, "prompt_id": exchange.prompt.id, "command": exchange.prompt.prompt,
            "worker_id": None, "timestamp": iso(exchange.submitted)}
    reply = exchange.reply
    if reply is None:
        return {**body, "state": "pending", "status": "pending", "message": "Task is being processed..."}
    agents = sorted({t.agent for t in reply.tasks if t.agent})
    tasks = [t.to_dict() for t in reply.tasks]
    return {**body, "state": reply.status, "status": outcome(exchange), "success": reply.ok,
            "message": reply.response, "worker_id": ",".join(agents) or None, "output": {"tasks": tasks},
            "result": {"state": reply.status, "message": reply.response, "data": {"tasks": tasks}}}


@api.get("/task/<task_id>/status")
@token_required
def task_status(task_id: str) -> Response:
    state = bridge()
    task = state.tracker.get(task_id)
    if task is None:
        found = state.relay.find_task(task_id)
        if found is None:
            exchange = state.relay.exchanges.get(task_id)
            if exchange is None:
                return json_error("Task not found (neither a task id nor a prompt id this bridge knows)", 404)
            return jsonify(prompt_as_task(exchange))
        exchange, summary = found
        task = {**summary, "prompt_id": exchange.prompt.id, "ts": exchange.reply.ts if exchange.reply else 0}
    body = {"id": task_id, "prompt_id": task.get("prompt_id"), "command": task.get("command", ""),
            "worker_id": task.get("agent"), "state": task["state"], "timestamp": iso(task.get("ts") or 0)}
    if task["state"] in ("succeeded", "failed"):
        body.update(status="completed" if task["state"] == "succeeded" else "failed",
                    success=task["state"] == "succeeded", message=task.get("message", ""),
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
    state = bridge()
    agents = sorted(state.relay.known_agents(), key=lambda p: p.agent)
    return jsonify(workers=[worker_view(p, state.relay.topics.prefix) for p in agents], total_workers=len(agents),
                   online_workers=sum(1 for p in agents if p.state == "online"))


def openapi_spec() -> dict:
    """The OpenAPI description of this API, with this version."""
    spec = json.loads((HERE / "openapi.json").read_text())
    spec["info"]["version"] = __version__
    return spec


@api.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_spec())


@token_required
def metrics() -> Response:
    """Prometheus text format (mounted at /metrics unless a metrics port is configured)."""
    return Response(bridge().metrics.render(), content_type=CONTENT_TYPE)

