"""Pages: the admin login and dashboard, its live stream, the R1 page and its install QR code."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from markupsafe import Markup

from lamcontrol.config import is_loopback

from .auth import new_csrf_token
from .devices import DeviceStore, format_time
from .pairing import qr_svg
from .web import admin_session, auth_log, bridge, client_address, csrf_ok, json_error

pages = Blueprint("pages", __name__)


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = new_csrf_token()
    return session["csrf"]


@pages.app_context_processor
def template_globals() -> dict:
    settings = bridge().settings
    return {"csrf_token": csrf_token, "title": settings.title, "theme_color": settings.theme_color}


def login_required(view: Callable | None = None, *, page: bool = True) -> Callable:
    """An admin session (and, for POST, its CSRF token); pages send strangers to the login form."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not admin_session():
                if page and request.method == "GET":
                    return redirect(url_for("pages.login", next=request.path))
                return json_error("Log in first", 401)
            if request.method == "POST" and not csrf_ok():
                return json_error("Missing or wrong CSRF token; reload the page", 403)
            return view(*args, **kwargs)

        return guarded

    return decorate(view) if view else decorate


def local_path(target: str | None) -> str:
    """Only same-site paths are followed after login (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        return "/"
    return target


@pages.route("/login", methods=["GET", "POST"])
def login() -> Any:
    state = bridge()
    if request.method == "GET":
        return render_template("login.html", error="", next=local_path(request.args.get("next")))
    client = client_address()
    username = request.form.get("username", "")
    # Failures count per address (with the user name) and per user name. An address that failed too
    # often is locked out for that user; while a user name has failed too often from anywhere (a
    # spread-out guesser), only addresses with no failures of their own may log in as it. So no
    # flood from other addresses locks the owner out: a right password from a clean address passes.
    here, anywhere = f"login {client} {username}", f"user {username}"
    wait = state.limiter.retry_after(here)
    if not wait and state.limiter.failures(here):
        wait = state.user_limiter.retry_after(anywhere)
    if wait:
        return login_form(f"Too many failed attempts; try again in {wait} seconds.", 429, {"Retry-After": str(wait)})
    if not csrf_ok():
        return login_form("This form had expired; please log in again.", 403)
    if not state.admin.verify(username, request.form.get("password", "")):
        locked_here, locked_anywhere = state.limiter.fail(here), state.user_limiter.fail(anywhere)
        auth_log.warning("failed dashboard login for user %r from %s", username[:64], client)
        if locked_here:
            auth_log.warning("locked out dashboard logins for user %r from %s for %g seconds", username[:64],
                             client, state.settings.login_window)
        if locked_anywhere:
            auth_log.warning("many failed dashboard logins for user %r from several addresses: for %g seconds only "
                             "addresses without failures may log in as it", username[:64], state.settings.login_window)
        return login_form("Wrong user name or password.", 401)
    session.clear()
    session["admin"] = state.admin.fingerprint
    session["csrf"] = new_csrf_token()
    return redirect(local_path(request.form.get("next")))


def login_form(error: str, status: int, headers: dict | None = None) -> tuple:
    """The login form again, saying in a sentence why the last try did not log in."""
    return render_template("login.html", error=error, next=local_path(request.form.get("next"))), status, headers or {}


@pages.post("/logout")
@login_required
def logout() -> Any:
    session.clear()
    return redirect(url_for("pages.login"))


@pages.get("/")
@login_required
def dashboard() -> str:
    return render_template("dashboard.html")


@pages.get("/events")
@login_required(page=False)
def events() -> Response:
    """The live stream of the bus, as server-sent events.

    Each open stream holds one of waitress's threads, so at most half of them may stream;
    the rest stay free for the API.
    """
    state = bridge()
    if state.hub.subscribers >= max(1, state.settings.threads // 2):
        return json_error("Too many live streams are open; close a dashboard tab", 503)

    def counted():
        state.metrics.stream_clients.inc()
        try:
            yield from state.hub.stream(state.settings.stream_max_age)
        finally:
            state.metrics.stream_clients.dec()

    return Response(counted(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@pages.get("/api/docs")
def api_docs() -> str:
    """The API's OpenAPI description (``/api/openapi.json``) as a page a person can read."""
    from .api import openapi_spec

    spec = openapi_spec()
    return render_template("api.html", spec=spec, operations=operations(spec), logged_in=admin_session())


def operations(spec: dict) -> list[dict]:
    """Each route of an OpenAPI description: method, path, what it does, its parameters, body and answers."""
    shared = spec.get("components", {}).get("responses", {})
    found = []
    for path, methods in spec.get("paths", {}).items():
        for method, operation in methods.items():
            answers = {code: shared.get(answer.get("$ref", "").rsplit("/", 1)[-1], answer).get("description", "")
                       for code, answer in operation.get("responses", {}).items()}
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            found.append({"method": method.upper(), "path": path, "summary": operation.get("summary", ""),
                          "description": operation.get("description", ""),
                          "parameters": operation.get("parameters", []),
                          "body": body.get("$ref", "").rsplit("/", 1)[-1], "answers": answers,
                          "open": operation.get("security") == []})
    return found


@pages.get("/r1")
def r1() -> str:
    """The page the R1 loads as a creation; it talks to the API with the token it keeps."""
    return render_template("r1.html", max_wait=min(bridge().settings.max_wait, 20))


def public_base() -> str:
    configured = bridge().settings.public_url.rstrip("/")
    return configured or request.host_url.rstrip("/")


def creation_qr(token: str = "") -> tuple[Markup, dict]:
    """The QR code an R1 scans to install the page, as inline SVG, and the JSON it encodes."""
    settings = bridge().settings
    base = public_base()
    creation = {"title": settings.title, "url": f"{base}/r1" + (f"#token={token}" if token else ""),
                "description": "Say what your computers should do.", "iconUrl": f"{base}/static/icon.png",
                "themeColor": settings.theme_color}
    return Markup(qr_svg(creation)), creation


@pages.route("/r1/install", methods=["GET", "POST"])
@login_required
def r1_install() -> str:
    """GET: the plain install code. POST: pair a device: a new token, carried in the URL fragment."""
    token = ""
    if request.method == "POST":
        token = bridge().tokens.create(f"r1-{time.strftime('%Y%m%d-%H%M%S')}")
    svg, creation = creation_qr(token)
    return render_template("install.html", qr=svg, creation=creation, paired=bool(token),
                           insecure=not creation["url"].startswith("https://"))


@pages.route("/r1/pair", methods=["GET", "POST"])
@login_required
def r1_pair() -> Any:
    """The pairing code for the R1's voice (OpenClaw), the paired R1s and requests to pair under a paired
    R1's id; POST revokes an R1, approves a request or makes a new code."""
    gateway = bridge().gateway
    store = gateway.store if gateway else DeviceStore()
    if request.method == "POST":
        if request.form.get("revoke"):
            store.revoke(request.form["revoke"])
        elif request.form.get("approve"):
            store.approve(request.form["approve"])
        elif request.form.get("new_code"):
            store.rotate_pairing_token()
        return redirect(url_for("pages.r1_pair"))
    payload = gateway.pairing_payload() if gateway else None
    unreachable = bool(payload) and all(is_loopback(ip) for ip in payload["ips"])  # an R1 is never this machine
    return render_template("pair.html", payload=payload, qr=Markup(qr_svg(payload)) if payload else "",
                           unreachable=unreachable, devices=store.devices(), requests=store.requests(),
                           format_time=format_time)
