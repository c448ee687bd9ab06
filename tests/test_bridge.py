"""The R1 bridge over real HTTP: waitress, a real broker, coordinator and echo agent.

Every response is checked against the OpenAPI description the bridge serves.
"""

from __future__ import annotations

import html
import json
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import requests

from bridgekit import (NO_VOICE_GATEWAY, PASSWORD, bridge, broker, csrf_from, dump, logged_in,  # noqa: F401
                       openapi, self_signed_certificate, start_bridge, system)
from conftest import Broker
from helpers import ROOT, free_port, wait_for_port, wait_until
from lamcontrol.bus import BrokerSettings, Bus
from lamcontrol.cli import main as lam_main
from lamcontrol.protocol import Presence, Prompt, Reply
from lamcontrol.r1_bridge.auth import TokenStore


def post_prompt(bridge, body, token=None, **kwargs):
    return bridge.session(token).post(f"{bridge.url}/api/prompt", json=body, timeout=30, **kwargs)


# -- the prompt round trip ---------------------------------------------------------------

def test_prompt_with_wait_answers_with_the_agents_sentence(bridge, openapi):
    answer = openapi.check(post_prompt(bridge, {"prompt": "echo hello there", "source": "r1", "metadata": {"k": 1},
                                                "wait": 10}), "/api/prompt", "post")
    assert answer["status"] == "completed"
    assert answer["response"] == "hello there"
    assert answer["result"]["status"] == "succeeded" and answer["result"]["success"] is True
    [task] = answer["result"]["tasks"]
    assert task["agent"] == "a1" and task["command"] == "echo hello there"

    status = openapi.check(bridge.session().get(f"{bridge.url}/api/prompt/{answer['id']}/status", timeout=10),
                           "/api/prompt/{id}/status")
    assert status["status"] == "completed" and status["response"] == "hello there"

    done = openapi.check(bridge.session().get(f"{bridge.url}/api/task/{task['task_id']}/status", timeout=10),
                         "/api/task/{id}/status")
    assert done["status"] == "completed" and done["success"] is True
    assert done["worker_id"] == "a1" and done["message"] == "hello there" and done["output"] == {"text": "hello there"}
    assert done["prompt_id"] == answer["id"]


def test_prompt_without_wait_is_pending_then_completed(bridge, system, openapi):
    answer = openapi.check(post_prompt(bridge, {"prompt": "echo sleep 1 rested"}), "/api/prompt", "post")
    assert answer["status"] == "pending" and answer["response"] is None
    published = system.recorder.wait_for(Prompt, system.topics.prompts, lambda p: p.id == answer["id"])
    assert published.prompt == "echo sleep 1 rested" and published.source == "r1"

    task = wait_until(lambda: next((json.loads(p) for t, p in system.recorder.on(system.topics.task("echo"))
                                    if json.loads(p)["prompt_id"] == answer["id"]), None), 20, "the task")
    running = openapi.check(bridge.session().get(f"{bridge.url}/api/task/{task['task_id']}/status", timeout=10),
                            "/api/task/{id}/status")
    assert running["status"] == "pending" and running["state"] in ("dispatched", "accepted")

    final = openapi.check(bridge.session().get(f"{bridge.url}/api/prompt/{answer['id']}/status",
                                               params={"wait": 10}, timeout=30), "/api/prompt/{id}/status")
    assert final["status"] == "completed" and final["response"] == "rested"


def test_failed_command_reports_failed_with_its_sentence(bridge, openapi):
    answer = openapi.check(post_prompt(bridge, {"prompt": "echo fail the disk is full", "wait": 10}),
                           "/api/prompt", "post")
    assert answer["status"] == "failed"
    assert answer["result"]["status"] == "failed" and answer["result"]["success"] is False
    assert "the disk is full" in answer["response"]
    again = openapi.check(bridge.session().get(f"{bridge.url}/api/prompt/{answer['id']}/status", timeout=10),
                          "/api/prompt/{id}/status")
    # The original LAMControl client prints data["error"] for a failed prompt.
    assert again["status"] == "failed" and again["error"] == answer["error"] == answer["response"]


def test_wait_is_capped_by_the_configured_maximum(start_bridge, openapi):
    short = start_bridge(max_wait=0.5)
    answer = openapi.check(post_prompt(short, {"prompt": "echo sleep 3", "wait": 3600}), "/api/prompt", "post")
    assert answer["status"] == "pending"


def test_a_retried_prompt_id_runs_once(bridge, system, openapi):
    body = {"prompt": "echo only once", "id": "client-chosen-1", "wait": 10}
    first = openapi.check(post_prompt(bridge, body), "/api/prompt", "post")
    again = openapi.check(post_prompt(bridge, body), "/api/prompt", "post")
    assert first["id"] == again["id"] == "client-chosen-1" and again["response"] == "only once"
    time.sleep(0.5)  # let any duplicate reach the recorder before counting
    assert len([p for p in system.recorder.parsed(Prompt, system.topics.prompts) if p.id == "client-chosen-1"]) == 1


# -- health, workers, metrics ------------------------------------------------------------

def test_health_is_open_and_reports_the_bus(bridge, openapi):
    health = openapi.check(requests.get(f"{bridge.url}/api/health", timeout=10), "/api/health")
    assert health["status"] == "healthy" and health["broker"] == "connected" and health["coordinator"] == "online"
    assert health["online_workers"] >= 1 and health["stats"]["active_workers"] >= 1
    assert re.match(r"\d+\.\d+", health["version"])


def test_workers_lists_agents_from_retained_presence(bridge, system, openapi):
    system.agent("w2")
    workers = openapi.check(bridge.session().get(f"{bridge.url}/api/workers", timeout=10), "/api/workers")
    by_id = {w["worker_id"]: w for w in workers["workers"]}
    assert by_id["a1"]["status"] == "online" and by_id["a1"]["capabilities"] == ["echo"]
    assert "say" in by_id["a1"]["actions"]["echo"]
    wait_until(lambda: "w2" in {w["worker_id"] for w in bridge.session().get(
        f"{bridge.url}/api/workers", timeout=10).json()["workers"]}, 10, "w2 listed")
    system.processes[-1].stop()
    wait_until(lambda: {w["worker_id"]: w["status"] for w in bridge.session().get(
        f"{bridge.url}/api/workers", timeout=10).json()["workers"]}.get("w2") == "offline", 15, "w2 offline")


def test_metrics_need_a_token_and_count_round_trips(bridge):
    post_prompt(bridge, {"prompt": "echo measured", "wait": 10})
    assert requests.get(f"{bridge.url}/metrics", timeout=10).status_code == 401
    text = bridge.session().get(f"{bridge.url}/metrics", timeout=10).text
    assert re.search(r'lam_bridge_requests_total\{endpoint="/api/prompt",method="POST",status="200"\} [1-9]', text)
    count = re.search(r"lam_bridge_prompt_round_trip_seconds_count ([0-9.]+)", text)
    assert count and float(count.group(1)) >= 1


def test_metrics_on_a_port_of_their_own(start_bridge):
    port = free_port()
    separate = start_bridge(metrics_listen=f"127.0.0.1:{port}")
    assert "lam_bridge_requests_total" in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert requests.get(f"{separate.url}/metrics", timeout=10).status_code == 404


# -- every way to get it wrong -------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
BAD_PROMPTS = [
    ({"data": "not json", "headers": {"Content-Type": "text/plain"}}, 400, "Content-Type: application/json"),
    ({"data": "{broken", "headers": JSON}, 400, "not valid JSON: Expecting property name"),
    ({"data": '{"prompt": "echo hi", "metadata": {"timeout": NaN}}', "headers": JSON}, 400,
     "not valid JSON: NaN is not a JSON number"),
    ({"data": "", "headers": JSON}, 400, "no body"),
    ({"data": b"\xff\xfe{}", "headers": JSON}, 400, "not UTF-8"),
    ({"data": "[" * 5000 + "]" * 5000, "headers": JSON}, 400, "nested too deeply"),
    ({"json": ["echo hi"]}, 400, "object"),
    ({"json": {}}, 400, "No prompt"),
    ({"json": {"prompt": "   "}}, 400, "No prompt"),
    ({"json": {"prompt": 42}}, 400, "prompt must be a string"),
    ({"json": {"prompt": ["echo hi"]}}, 400, "prompt must be a string"),
    ({"data": '{"prompt": "echo \\ud800 hi"}', "headers": JSON}, 400, "lone surrogate ('\\ud800')"),
    ({"data": '{"prompt": "echo hi", "source": "r1\\udfff"}', "headers": JSON}, 400, "lone surrogate"),
    ({"data": '{"prompt": "echo hi", "metadata": {"\\ud83d": 1}}', "headers": JSON}, 400, "lone surrogate"),
    ({"json": {"prompt": "x" * 2001}}, 400, "longer"),
    ({"json": {"prompt": "echo hi", "source": 7}}, 400, "source"),
    ({"json": {"prompt": "echo hi", "source": "s" * 65}}, 400, "source"),
    ({"json": {"prompt": "echo hi", "metadata": ["a"]}}, 400, "metadata"),
    ({"json": {"prompt": "echo hi", "wait": -1}}, 400, "wait"),
    ({"json": {"prompt": "echo hi", "wait": "soon"}}, 400, "wait"),
    ({"json": {"prompt": "echo hi", "wait": True}}, 400, "wait"),
    ({"json": {"prompt": "echo hi", "id": "a/b"}}, 400, "id"),
    ({"json": {"prompt": "echo hi", "id": 5}}, 400, "id"),
    ({"data": json.dumps({"prompt": "x" * 100_000}), "headers": JSON}, 413, "at most 16384 bytes"),
    ({"data": json.dumps({"prompt": "x" * 1_100_000}), "headers": JSON}, 413, "at most 16384 bytes"),
]


@pytest.mark.parametrize("request_kwargs,status,words", BAD_PROMPTS)
def test_bad_prompts_get_a_json_error(bridge, openapi, request_kwargs, status, words):
    response = bridge.session().post(f"{bridge.url}/api/prompt", timeout=10, **request_kwargs)
    assert response.status_code == status, dump(response)
    assert words.lower() in openapi.check(response, "/api/prompt", "post")["error"].lower()


@pytest.mark.parametrize("method,path,status", [
    ("get", "/api/prompt/nosuchprompt/status", 404),
    ("get", "/api/prompt/nosuchprompt/status?wait=abc", 400),
    ("get", "/api/task/nosuchtask/status", 404),
    ("get", "/api/nothing", 404),
    ("get", "/api/prompt", 405),
    ("delete", "/api/workers", 405),
])
def test_unknown_ids_and_paths_get_a_json_error(bridge, method, path, status):
    response = getattr(bridge.session(), method)(f"{bridge.url}{path}", timeout=10)
    assert response.status_code == status, dump(response)
    assert response.headers["Content-Type"] == "application/json" and response.json()["error"]


@pytest.mark.parametrize("method,path,replaced_by", [
    ("post", "/api/worker/register", "lam-agent"),
    ("post", "/api/worker/desk_computer/heartbeat", "presence"),
    ("delete", "/api/worker/desk_computer/remove", "lam agents forget"),
    ("get", "/r1/login", "/r1"),
    ("post", "/r1/login", "/r1"),
    ("post", "/r1", "POST /api/prompt"),
    ("get", "/r1/logout", "revoke"),
])
def test_routes_of_the_original_server_say_what_replaced_them(bridge, openapi, method, path, replaced_by):
    response = getattr(requests, method)(f"{bridge.url}{path}", json={"worker_type": "browser"}, timeout=10)
    documented = path.replace("desk_computer", "{id}")
    body = openapi.check(response, documented, method) if documented in openapi.spec["paths"] else response.json()
    assert response.status_code == 410 and "original LAMControl" in body["error"]
    assert replaced_by in body["replaced_by"]


ORIGINAL_CLIENT = {"User-Agent": "LAMControl-R1-Client-Distributed/3.0", "Content-Type": "application/json"}


def test_the_original_r1_client_gets_its_answer_without_polling(bridge, openapi):
    """It posts {prompt, source, metadata}, prints ``response`` and never polls."""
    body = {"prompt": "echo from the old client", "source": "r1", "metadata": {}}
    answer = openapi.check(bridge.session().post(f"{bridge.url}/api/prompt", json=body, headers=ORIGINAL_CLIENT,
                                                 timeout=30), "/api/prompt", "post")
    assert answer["status"] == "completed" and answer["response"] == "from the old client"
    modern = openapi.check(post_prompt(bridge, {"prompt": "echo from a new client"}), "/api/prompt", "post")
    assert modern["status"] == "pending" and modern["response"] is None  # others choose their wait


def test_task_status_takes_prompt_ids_as_the_original_page_sends(bridge, openapi):
    answer = openapi.check(post_prompt(bridge, {"prompt": "echo polled by prompt id", "wait": 10}), "/api/prompt", "post")
    state = openapi.check(bridge.session().get(f"{bridge.url}/api/task/{answer['id']}/status", timeout=10),
                          "/api/task/{id}/status")
    assert state["status"] == "completed" and state["success"] is True and state["message"] == "polled by prompt id"
    assert state["worker_id"] == "a1" and state["prompt_id"] == answer["id"]
    failed = openapi.check(post_prompt(bridge, {"prompt": "echo fail no luck", "wait": 10}), "/api/prompt", "post")
    state = openapi.check(bridge.session().get(f"{bridge.url}/api/task/{failed['id']}/status", timeout=10),
                          "/api/task/{id}/status")
    assert state["status"] == "failed" and state["success"] is False and "no luck" in state["message"]
    # A task id still gives the task itself.
    task_id = answer["result"]["tasks"][0]["task_id"]
    task = openapi.check(bridge.session().get(f"{bridge.url}/api/task/{task_id}/status", timeout=10),
                         "/api/task/{id}/status")
    assert task["id"] == task_id and task["state"] == "succeeded" and task["status"] == "completed"


def test_agents_not_heard_from_are_forgotten(bridge, system, openapi):
    """A presence three heartbeats old (a crashed agent's, or a fake) is not shown as a worker."""
    for agent_id, age in (("ghost", 120.0), ("sleepy", 60.0)):
        presence = Presence(state="online", agent=agent_id, capabilities={"nothing": ["here"]}, heartbeat=30.0,
                            ts=time.time() - age)
        system.publish(presence)
    wait_until(lambda: {"ghost", "sleepy"} <= set(bridge.service.relay.agents), what="both presences")
    try:
        workers = openapi.check(bridge.session().get(f"{bridge.url}/api/workers", timeout=10), "/api/workers")
        shown = [w["worker_id"] for w in workers["workers"]]
        assert "ghost" not in shown and "sleepy" in shown and "ghost" not in bridge.service.relay.agents
        health = openapi.check(requests.get(f"{bridge.url}/api/health", timeout=10), "/api/health")
        assert health["workers"] == workers["total_workers"]
    finally:
        system.publish_raw(system.topics.agent_status("sleepy"), b"")


@pytest.mark.parametrize("path,method", [("/api/prompt", "post"), ("/api/prompt/x/status", "get"),
                                         ("/api/task/x/status", "get"), ("/api/workers", "get")])
def test_api_needs_a_token(bridge, openapi, path, method):
    response = getattr(requests, method)(f"{bridge.url}{path}", json={"prompt": "echo hi"}, timeout=10)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    spec_path = path.replace("/x/", "/{id}/")
    assert "token" in openapi.check(response, spec_path, method)["error"].lower()


def test_token_guesses_are_rate_limited_but_valid_tokens_never(start_bridge, openapi, caplog):
    guarded = start_bridge(login_attempts=3, login_window=60.0)
    guess = "guess-" + "x" * 20
    for _ in range(3):
        response = post_prompt(guarded, {"prompt": "echo hi"}, token=guess)
        assert openapi.check(response, "/api/prompt", "post")["error"] == "Invalid token"
    for token in (guess, "another-guess"):  # this address's wrong tokens wait now...
        blocked = post_prompt(guarded, {"prompt": "echo hi"}, token=token)
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
        assert "too many" in openapi.check(blocked, "/api/prompt", "post")["error"].lower()
    right = post_prompt(guarded, {"prompt": "echo still served", "wait": 10})  # ...a valid one never does
    assert openapi.check(right, "/api/prompt", "post")["response"] == "still served"
    log = caplog.text
    assert log.count("invalid API token from 127.0.0.1") == 3 and "locked out invalid tokens from 127.0.0.1" in log
    assert guess not in log and guarded.token not in log


def test_revoked_tokens_stop_working_at_once(bridge):
    extra = bridge.bridge.tokens.create("temporary")
    assert post_prompt(bridge, {"prompt": "echo hi"}, token=extra).status_code == 200
    [entry] = [t for t in bridge.bridge.tokens.list() if t["name"] == "temporary"]
    assert bridge.bridge.tokens.revoke(entry["id"])
    assert post_prompt(bridge, {"prompt": "echo hi"}, token=extra).status_code == 401
    stored = (bridge.state / "tokens.json").read_text()
    assert extra not in stored and bridge.token not in stored  # only hashes on disk


def test_tokens_never_begin_with_a_dash_so_they_can_follow_an_option(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    tokens = [store.create(f"script {n}") for n in range(300)]  # about one in 64 would begin with "-"
    assert len(set(tokens)) == 300 and not [token for token in tokens if token.startswith("-")]


def test_cors_is_off_unless_configured(bridge, start_bridge):
    origin = {"Origin": "https://creation.example"}
    closed = bridge.session().get(f"{bridge.url}/api/workers", headers=origin, timeout=10)
    assert closed.status_code == 200 and "Access-Control-Allow-Origin" not in closed.headers
    opened = start_bridge(cors_origins=["https://creation.example"])
    preflight = requests.options(f"{opened.url}/api/prompt", timeout=10, headers={
        **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://creation.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    other = opened.session().get(f"{opened.url}/api/workers", headers={"Origin": "https://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in other.headers


def test_without_a_broker_health_says_so_and_prompts_are_refused(start_bridge, openapi):
    lonely = start_bridge(broker_url=f"mqtt://127.0.0.1:{free_port()}")
    health = openapi.check(requests.get(f"{lonely.url}/api/health", timeout=10), "/api/health")
    assert health["status"] == "unhealthy" and health["broker"] == "disconnected"
    refused = post_prompt(lonely, {"prompt": "echo hi"})
    assert refused.status_code == 503 and "broker" in openapi.check(refused, "/api/prompt", "post")["error"]


# -- dashboard login, CSRF, live stream --------------------------------------------------------

def test_dashboard_needs_a_login_with_csrf(bridge):
    browser = requests.Session()
    assert browser.get(f"{bridge.url}/", allow_redirects=False, timeout=10).headers["Location"].startswith("/login")
    csrf = csrf_from(browser.get(f"{bridge.url}/login", timeout=10).text)
    forged = browser.post(f"{bridge.url}/login", data={"username": "admin", "password": PASSWORD}, timeout=10)
    assert forged.status_code == 403 and "This form had expired; please log in again." in forged.text
    wrong = browser.post(f"{bridge.url}/login", data={"csrf_token": csrf, "username": "admin", "password": "nope"},
                         timeout=10)
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    cookie = next(c for c in browser.cookies if c.name == "lam_session")
    assert cookie.has_nonstandard_attr("HttpOnly")


def test_dashboard_session_uses_the_api_only_with_its_csrf_token(bridge):
    browser, csrf = logged_in(bridge)
    assert browser.get(f"{bridge.url}/api/workers", timeout=10).status_code == 401
    workers = browser.get(f"{bridge.url}/api/workers", headers={"X-CSRF-Token": csrf}, timeout=10)
    assert workers.status_code == 200 and workers.json()["online_workers"] >= 1
    reply = browser.post(f"{bridge.url}/api/prompt", json={"prompt": "echo from the dashboard", "wait": 10},
                         headers={"X-CSRF-Token": csrf}, timeout=30)
    assert reply.json()["response"] == "from the dashboard"


def test_failed_logins_are_rate_limited_and_logged(start_bridge, caplog):
    guarded = start_bridge(login_attempts=2, login_window=60.0)

    def login(username: str, password: str) -> int:
        browser = requests.Session()
        attempt = {"csrf_token": csrf_from(browser.get(f"{guarded.url}/login", timeout=10).text),
                   "username": username, "password": password}
        return browser.post(f"{guarded.url}/login", data=attempt, allow_redirects=False, timeout=10).status_code

    # Someone mistyping another user name from this address locks out only that name.
    assert [login("root", "guess-secret") for _ in range(3)] == [401, 401, 429]
    assert login("admin", PASSWORD) == 302
    assert [login("admin", "guess-secret") for _ in range(3)] == [401, 401, 429]
    assert login("admin", PASSWORD) == 429
    assert "failed dashboard login for user 'admin' from 127.0.0.1" in caplog.text
    assert "locked out dashboard logins for user 'root' from 127.0.0.1" in caplog.text
    assert "guess-secret" not in caplog.text and PASSWORD not in caplog.text
    # API tokens from the same address are not affected.
    assert post_prompt(guarded, {"prompt": "echo hi"}).status_code == 200


def test_a_locked_out_login_form_says_so_in_a_sentence(start_bridge):
    guarded = start_bridge(login_attempts=1, login_window=60.0)
    browser = requests.Session()
    attempt = {"csrf_token": csrf_from(browser.get(f"{guarded.url}/login", timeout=10).text), "username": "admin",
               "password": "guess"}
    assert browser.post(f"{guarded.url}/login", data=attempt, timeout=10).status_code == 401
    locked = browser.post(f"{guarded.url}/login", data=attempt, timeout=10)
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert locked.headers["Content-Type"].startswith("text/html") and "<form" in locked.text
    assert re.search(r"Too many failed attempts; try again in \d+ seconds\.", locked.text)
    assert '{"error"' not in locked.text


def test_the_api_description_is_a_page_a_person_can_read(bridge, openapi):
    page = requests.get(f"{bridge.url}/api/docs", timeout=10)  # no token, like the description itself
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    spec = requests.get(f"{bridge.url}/api/openapi.json", timeout=10).json()
    text = html.unescape(page.text)
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            assert f"{method.upper()}</span> <code>{path}</code>" in text and operation["summary"] in text, path
    for name in spec["components"]["schemas"]:
        assert f'id="schema-{name}"' in text
    assert "Bearer &lt;token&gt;" in page.text
    browser, _ = logged_in(bridge)
    assert 'href="/api/docs">API</a>' in browser.get(f"{bridge.url}/", timeout=10).text  # linked from the dashboard
class FromAddress(requests.adapters.HTTPAdapter):
    """Connections from another loopback address (127.0.0.2, ...): a client on another machine, as the bridge sees it."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def test_a_login_flood_from_other_addresses_never_locks_the_owner_out(start_bridge, caplog):
    guarded = start_bridge(login_attempts=2, login_window=60.0)

    def login(address: str, password: str) -> int:
        browser = requests.Session()
        browser.mount("http://", FromAddress(address))
        attempt = {"csrf_token": csrf_from(browser.get(f"{guarded.url}/login", timeout=10).text),
                   "username": "admin", "password": password}
        return browser.post(f"{guarded.url}/login", data=attempt, allow_redirects=False, timeout=10).status_code

    # Five addresses guess five times each: each is locked out after its own two failures, and once the
    # user name has failed eight times from anywhere, after its first ...
    for host in range(2, 6):
        assert [login(f"127.0.0.{host}", "guess-secret") for _ in range(5)] == [401, 401, 429, 429, 429]
    assert "many failed dashboard logins for user 'admin' from several addresses" in caplog.text
    assert [login("127.0.0.6", "guess-secret") for _ in range(5)] == [401, 429, 429, 429, 429]
    # ... the owner, from an address with no failures, still logs in; a guesser's address with one
    # failure may not, even with the right password, while the user name is under attack.
    assert login("127.0.0.1", PASSWORD) == 302
    assert login("127.0.0.8", "guess-secret") == 401
    assert login("127.0.0.8", PASSWORD) == 429
    assert login("127.0.0.9", PASSWORD) == 302


def test_a_new_password_logs_sessions_out(start_bridge):
    own = start_bridge()
    browser, csrf = logged_in(own)
    assert browser.get(f"{own.url}/api/workers", headers={"X-CSRF-Token": csrf}, timeout=10).status_code == 200
    own.bridge.admin.set("another long password")
    assert browser.get(f"{own.url}/api/workers", headers={"X-CSRF-Token": csrf}, timeout=10).status_code == 401


def test_live_stream_carries_prompts_tasks_and_replies(bridge):
    browser, csrf = logged_in(bridge)
    assert requests.get(f"{bridge.url}/events", timeout=10).status_code == 401
    seen: list[dict] = []
    with browser.get(f"{bridge.url}/events", stream=True, timeout=30) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        post_prompt(bridge, {"prompt": "echo streamed words", "wait": 10})
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
            if any(e["kind"] == "reply" and "streamed words" in e["text"] for e in seen):
                break
    kinds = [e["kind"] for e in seen if "streamed" in e["text"] or e["kind"] in ("task", "result")]
    assert {"prompt", "task", "result", "reply"} <= set(kinds)


@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
def test_live_stream_shows_each_message_once(start_bridge, system, broker, tmp_path, kind):
    """A broker may deliver a message once per matching subscription (aMQTT does): the bridge has one."""
    own = broker if kind == "amqtt" else Broker(kind, tmp_path)
    running = start_bridge(broker_url=own.url)
    assert running.service.relay.bus.ready.wait(15)
    publisher = Bus(BrokerSettings(url=own.url, prefix=system.prefix), component="test-publisher")
    publisher.start(timeout=15)
    browser, _ = logged_in(running)
    seen: list[dict] = []
    try:
        with browser.get(f"{running.url}/events", stream=True, timeout=30) as stream:
            publisher.publish(Reply(prompt_id="once", status="succeeded", response="Said once."))
            publisher.publish(Presence(state="online", agent="once"))
            publisher.publish(Reply(prompt_id="last", status="succeeded", response="The end.")).wait_for_publish(10)
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                if any("The end." in e["text"] for e in seen):
                    break
    finally:
        publisher.stop()
        if own is not broker:
            own.stop()
    assert [e["kind"] for e in seen if "Said once." in e["text"]] == ["reply"]
    assert len([e for e in seen if e["kind"] == "agent" and e["text"].startswith("once ")]) == 1
    assert running.service.relay.agents["once"].online


def test_live_streams_leave_threads_for_the_api(start_bridge):
    small = start_bridge(threads=4)
    browser, _ = logged_in(small)
    streams = [browser.get(f"{small.url}/events", stream=True, timeout=30) for _ in range(2)]
    try:
        assert all(s.status_code == 200 for s in streams)
        wait_until(lambda: small.bridge.hub.subscribers == 2, 10, "two streams")
        third = browser.get(f"{small.url}/events", timeout=10)
        assert third.status_code == 503 and "Too many live streams" in third.json()["error"]
        assert post_prompt(small, {"prompt": "echo still served", "wait": 10}).json()["response"] == "still served"
    finally:
        for stream in streams:
            stream.close()


def test_install_page_pairs_an_r1_with_a_new_token(bridge):
    browser, _ = logged_in(bridge)
    page = browser.get(f"{bridge.url}/r1/install", timeout=10).text
    assert "<svg" in page and "#token=" not in page
    paired = browser.post(f"{bridge.url}/r1/install", data={"csrf_token": csrf_from(page)}, timeout=10).text
    creation = json.loads(re.search(r'<pre id="creation">(.*?)</pre>', paired, re.S).group(1).replace("&#34;", '"'))
    assert set(creation) == {"title", "url", "description", "iconUrl", "themeColor"}
    token = creation["url"].split("#token=")[1]
    assert creation["url"].startswith(f"{bridge.url}/r1#")
    assert requests.get(creation["iconUrl"], timeout=10).headers["Content-Type"] == "image/png"
    assert post_prompt(bridge, {"prompt": "echo paired", "wait": 10}, token=token).json()["response"] == "paired"


def ended_by_server(sockets: list, wanted: int, within: float = 40.0) -> list:
    """The ``sockets`` the server closed, waiting (at most ``within`` seconds) until ``wanted`` have."""
    pending, ended = set(sockets), []
    deadline = time.monotonic() + within
    while pending and len(ended) < wanted and time.monotonic() < deadline:
        readable, _, _ = select.select(list(pending), [], [], 0.2)
        for sock in readable:
            try:
                data = sock.recv(4096)
            except (OSError, ssl.SSLError):
                data = b""
            if not data:
                ended.append(sock)
                pending.discard(sock)
    return ended


def hold(port: int, count: int, source: str, wrap=None) -> list:
    """``count`` connections to the bridge from ``source`` that never send a request."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        held.append(wrap(sock) if wrap else sock)
    return held


def test_idle_connections_do_not_take_the_bridge_down(start_bridge):
    """101 connections that never send a request (waitress alone took 100 and let them idle 600 s)."""
    idle_bridge = start_bridge()
    port = idle_bridge.service.server.port
    held = hold(port, 101, "127.0.0.3")
    try:
        # One address keeps 20 of them; the bridge ends the other 81 at once ...
        refused = ended_by_server(held, 81)
        assert len(refused) == 81
        # ... answers everyone else meanwhile ...
        for host in range(4, 9):
            browser = requests.Session()
            browser.mount("http://", FromAddress(f"127.0.0.{host}"))
            assert browser.get(f"{idle_bridge.url}/api/health", timeout=10).status_code == 200
        # ... and ends the 20 it kept once they idled, as it ends a request that never finishes
        # arriving, even one byte at a time.
        slow = hold(port, 1, "127.0.0.9")[0]
        slow.sendall(b"POST /api/prompt HTTP/1.1\r\nHost: x\r\n")
        stop = threading.Event()

        def dribble() -> None:
            for _ in range(120):
                if stop.wait(0.5):
                    return
                try:
                    slow.sendall(b"X")
                except OSError:
                    return

        threading.Thread(target=dribble, daemon=True).start()
        kept = [sock for sock in held if sock not in refused]
        assert len(ended_by_server(kept, 20)) == 20
        assert len(ended_by_server([slow], 1)) == 1
        stop.set()
        assert requests.get(f"{idle_bridge.url}/api/health", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_the_https_front_limits_connections_per_address(start_bridge, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    secure = start_bridge(cert_file=cert, key_file=key, max_connections_per_address=5)
    held = hold(secure.service.server.port, 12, "127.0.0.3")
    try:
        assert len(ended_by_server(held, 7)) == 7
        assert requests.get(f"{secure.url}/api/health", timeout=10, verify=cert).status_code == 200
    finally:
        for sock in held:
            sock.close()


# -- HTTPS ---------------------------------------------------------------------------------

def test_https_with_a_certificate(start_bridge, tmp_path, openapi):
    cert, key = self_signed_certificate(tmp_path)
    secure = start_bridge(cert_file=cert, key_file=key)
    assert secure.url.startswith("https://")
    answer = openapi.check(post_prompt(secure, {"prompt": "echo over tls", "wait": 10}, verify=cert),
                           "/api/prompt", "post")
    assert answer["response"] == "over tls"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{secure.url}/api/health", timeout=10)  # an unknown certificate is refused
    spec = requests.get(f"{secure.url}/api/openapi.json", verify=cert, timeout=10)  # several TLS records
    assert spec.json() == openapi.spec
    login = requests.get(f"{secure.url}/login", verify=cert, timeout=10)
    assert "Secure" in login.headers["Set-Cookie"]
    # the rate limit sees the client's address, not the TLS front's loopback hop
    assert secure.bridge.limiter.retry_after("127.0.0.1") == 0


# -- lam send --http ---------------------------------------------------------------------------

def test_lam_send_http_fails_over_when_a_bridge_stops(start_bridge, capsys):
    first, second = start_bridge(), start_bridge()
    second.bridge.tokens.file.write(first.bridge.tokens.file.read())  # one token for both
    args = ["send", "--http", first.url, "--http", second.url, "--token", first.token, "--timeout", "15"]
    assert lam_main([*args, "echo via the first"]) == 0
    assert capsys.readouterr().out.strip() == "via the first"
    first.stop()
    assert lam_main([*args, "echo via the second"]) == 0
    assert capsys.readouterr().out.strip() == "via the second"
    assert any(e.prompt.prompt == "echo via the second" for e in second.service.relay.exchanges.values())

    assert lam_main(["bridges", "--http", first.url, "--http", second.url]) == 1
    table = capsys.readouterr().out
    assert re.search(rf"{re.escape(first.url)}\s+unreachable", table)
    assert re.search(rf"{re.escape(second.url)}\s+healthy\s+connected\s+online", table)


def test_lam_send_http_reports_refusals(bridge, capsys, monkeypatch):
    monkeypatch.delenv("LAM_TOKEN", raising=False)
    assert lam_main(["send", "--http", bridge.url, "echo hi"]) == 2
    assert "token" in capsys.readouterr().err
    monkeypatch.setenv("LAM_TOKEN", "wrong")
    assert lam_main(["send", "--http", bridge.url, "echo hi"]) == 1
    assert "Invalid token" in capsys.readouterr().err
    assert lam_main(["send", "--http", f"http://127.0.0.1:{free_port()}", "echo hi"]) == 2
    assert "no bridge took the prompt" in capsys.readouterr().err
    # A failed command is reported at once, with its sentence.
    monkeypatch.setenv("LAM_TOKEN", bridge.token)
    assert lam_main(["send", "--http", bridge.url, "--timeout", "15", "echo fail out of ink"]) == 1
    assert capsys.readouterr().out.strip() == "out of ink"


# -- the lam-bridge command ------------------------------------------------------------------

def test_lam_bridge_first_run_tokens_and_password(system, broker, tmp_path):
    # A $JOURNAL_STREAM inherited from elsewhere (this output is a file, not the journal) changes nothing.
    env = {"LAM_STATE_DIR": str(tmp_path / "state"), "JOURNAL_STREAM": "1:1"}
    port = free_port()
    config = str(system.config("bridge-main", NO_VOICE_GATEWAY))
    argv = [sys.executable, "-m", "lamcontrol.r1_bridge.main", "--config", config, "--listen", f"127.0.0.1:{port}"]

    def run(*extra: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([*argv, *extra], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60,
                              env={**__import__("os").environ, **env})

    process = system.start("bridge-main", "lamcontrol.r1_bridge.main", "--config", config, "--listen", f"127.0.0.1:{port}",
                           env=env)
    wait_until(lambda: "API token" in process.log(), 20, f"first-run output\n{process.log()}")
    wait_for_port(port)
    log = process.log()
    assert f"http://127.0.0.1:{port}" in log
    token = re.search(r"API token:\s+(\S+)", log).group(1)
    password = re.search(r"admin login: admin / (\S+)", log).group(1)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.post(f"{url}/api/prompt", json={"prompt": "echo up", "wait": 10}, headers=headers,
                         timeout=30).json()["response"] == "up"
    assert password not in (tmp_path / "state" / "bridge-admin.json").read_text()

    created = run("token", "create", "--name", "laptop")
    new_token = created.stdout.strip()
    assert created.returncode == 0 and len(new_token) > 30
    assert requests.get(f"{url}/api/workers", headers={"Authorization": f"Bearer {new_token}"}, timeout=10).ok
    listing = run("token", "list").stdout
    assert "laptop" in listing and "first" in listing and new_token not in listing
    assert run("token", "revoke", "laptop").returncode == 0
    assert requests.get(f"{url}/api/workers", headers={"Authorization": f"Bearer {new_token}"},
                        timeout=10).status_code == 401
    assert run("token", "revoke", "laptop").returncode == 1
    assert run("passwd", "--password-stdin", stdin="short\n").returncode == 1
    assert run("passwd", "--password-stdin", stdin="a much better password\n").returncode == 0

    assert process.stop() == 0
    again = system.start("bridge-again", "lamcontrol.r1_bridge.main", "--config", config, "--listen", f"127.0.0.1:{port}",
                         env=env)
    wait_for_port(port)
    wait_until(lambda: "LAMControl bridge on" in again.log(), 20, "second start")
    assert "API token" not in again.log() and "admin login" not in again.log()
    taken = run()  # the port is in use: a clear error, no traceback
    assert taken.returncode == 2 and "cannot listen" in taken.stderr and "Traceback" not in taken.stderr


def test_under_systemd_the_first_start_secrets_stay_out_of_the_journal(system, tmp_path):
    """systemd sets $JOURNAL_STREAM when output goes to the journal: the secrets go to a private file.
    (A $JOURNAL_STREAM inherited from a parent whose output went there does not count.)"""
    state = tmp_path / "state"
    port = free_port()
    config = str(system.config("bridge-journal", NO_VOICE_GATEWAY))
    journal = system.tmp_path / "bridge-journal.log"  # where the process's output goes: our "journal"
    journal.touch()
    stream = f"{journal.stat().st_dev}:{journal.stat().st_ino}"
    process = system.start("bridge-journal", "lamcontrol.r1_bridge.main", "--config", config, "--listen",
                           f"127.0.0.1:{port}", env={"LAM_STATE_DIR": str(state), "JOURNAL_STREAM": stream})
    secrets_file = state / "bridge-first-start.txt"
    wait_until(lambda: "First start" in process.log(), 20, f"first-run output\n{process.log()}")
    wait_for_port(port)
    log = process.log()
    assert str(secrets_file) in log and "API token:" not in log and "admin login" not in log
    assert (secrets_file.stat().st_mode & 0o777) == 0o600
    written = secrets_file.read_text()
    token = re.search(r"API token:\s+(\S+)", written).group(1)
    password = re.search(r"admin login: admin / (\S+)", written).group(1)
    assert token not in log and password not in log
    answer = requests.post(f"http://127.0.0.1:{port}/api/prompt", json={"prompt": "echo journal-free", "wait": 30},
                           headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert answer.json().get("response") == "journal-free", answer.text
    assert process.stop() == 0
