"""The messaging capability against local servers speaking the Telegram Bot API, Discord's REST
and webhook APIs, and a page laid out like Messenger, driven by a real headless Chromium."""

from __future__ import annotations

import json
import logging
import socket
from urllib.parse import urlsplit

import pytest

pytest.importorskip("requests")

from lamcontrol.agents.capability import TaskFailed, Unavailable  # noqa: E402
from lamcontrol.agents.messaging import Messaging  # noqa: E402
from lamcontrol.protocol import Presence  # noqa: E402
from helpers import running, unset  # noqa: E402
from standins import (DISCORD_TOKEN, TELEGRAM_TOKEN, Response, StandIn, discord_api, site_routes,  # noqa: E402
                      telegram_api)

CONTACTS = {
    "Jason": {"telegram": 12345, "discord": "user:80351110224678912", "facebook": "jason.smith"},
    "team": {"telegram": "@lamteam", "discord": "channel:41771983423143937"},
    "mom": {"discord": "http://127.0.0.1:9/api/webhooks/1234/webhook-secret"},  # pointed at the stand-in
}


@pytest.fixture(autouse=True)
def no_tokens_from_outside(monkeypatch):
    unset(monkeypatch, "LAM_TELEGRAM_TOKEN", "LAM_DISCORD_TOKEN")


@pytest.fixture
def telegram():
    with StandIn(telegram_api()) as server:
        yield server


@pytest.fixture
def discord():
    with StandIn(discord_api()) as server:
        yield server


def messaging(tmp_path, telegram=None, discord=None, **settings) -> Messaging:
    token_file = tmp_path / "telegram.token"
    token_file.write_text(TELEGRAM_TOKEN + "\n")
    contacts = json.loads(json.dumps(CONTACTS))
    if discord is not None:
        contacts["mom"]["discord"] = f"{discord.url}/api/webhooks/1234/webhook-secret"
    capability = Messaging({
        "contacts": contacts,
        "telegram_token_file": str(token_file),
        "telegram_api_url": telegram.url if telegram else "http://127.0.0.1:9",
        "discord_api_url": f"{discord.url}/api/v10" if discord else "http://127.0.0.1:9",
        "timeout": 5.0,
        **settings,
    })
    capability.check()
    capability.start()
    return capability


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- Telegram -------------------------------------------------------------------------


def test_telegram_sends_through_the_bot_api(tmp_path, telegram):
    outcome = messaging(tmp_path, telegram).run("telegram", {"name": "JASON", "message": "check the shopping list"})
    assert outcome.message == "Sent to JASON on Telegram"
    assert outcome.data == {"message_id": 42}
    [request] = telegram.requests
    assert request.method == "POST"
    assert request.path == f"/bot{TELEGRAM_TOKEN}/sendMessage"
    assert request.headers["Content-Type"] == "application/json"
    assert request.json() == {"chat_id": 12345, "text": "check the shopping list"}


def test_telegram_channel_names_are_sent_as_text(tmp_path, telegram):
    messaging(tmp_path, telegram).run("telegram", {"name": "Team", "message": "standup in 5"})
    assert telegram.requests[0].json() == {"chat_id": "@lamteam", "text": "standup in 5"}


def test_telegram_token_from_the_environment_wins(tmp_path, telegram, monkeypatch):
    monkeypatch.setenv("LAM_TELEGRAM_TOKEN", "999:from-env")
    with pytest.raises(TaskFailed) as failure:
        messaging(tmp_path, telegram).run("telegram", {"name": "jason", "message": "hi"})
    assert telegram.requests[0].path == "/bot999:from-env/sendMessage"
    assert str(failure.value) == "Telegram refused the bot token (Unauthorized); check the token."
    assert "from-env" not in str(failure.value)


@pytest.mark.parametrize("answer, sentence", [
    (Response(429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 7",
                    "parameters": {"retry_after": 7}}),
     "Telegram is limiting how fast the bot sends; try again in 7 seconds."),
    (Response(403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}),
     "Telegram did not let the bot send that message (Forbidden: bot was blocked by the user)."),
    (Response(400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}),
     "Telegram refused the message (Bad Request: chat not found)."),
    (Response(502, "<html>Bad Gateway</html>"), "Telegram refused the message."),
])
def test_telegram_refusals_become_sentences(tmp_path, answer, sentence):
    with StandIn(telegram_api([answer])) as server:
        with pytest.raises(TaskFailed) as failure:
            messaging(tmp_path, server).run("telegram", {"name": "jason", "message": "hi"})
    assert str(failure.value) == sentence


def test_network_down_fails_clearly(tmp_path):
    capability = messaging(tmp_path, telegram_api_url=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(TaskFailed, match=r"^Could not reach Telegram; is the network up\?$"):
        capability.run("telegram", {"name": "jason", "message": "hi"})


def test_a_silent_server_times_out(tmp_path):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        capability = messaging(tmp_path, telegram_api_url=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        with pytest.raises(TaskFailed, match=r"^Telegram did not answer within 0.5 seconds.$"):
            capability.run("telegram", {"name": "jason", "message": "hi"})


def test_tokens_never_reach_the_logs(tmp_path, telegram, caplog):
    caplog.set_level(logging.DEBUG)
    capability = messaging(tmp_path, telegram)
    capability.run("telegram", {"name": "jason", "message": "hi"})
    with pytest.raises(TaskFailed):
        capability.run("telegram", {"name": "jason", "message": "x" * 5000})
    assert "sendMessage" in caplog.text  # the request was logged ...
    assert TELEGRAM_TOKEN not in caplog.text  # ... without its token


# -- names ----------------------------------------------------------------------------


def test_unknown_names_are_never_guessed(tmp_path, telegram):
    capability = messaging(tmp_path, telegram)
    with pytest.raises(TaskFailed, match="^I have no contact named Jasonn.$"):
        capability.run("telegram", {"name": "Jasonn", "message": "hi"})
    with pytest.raises(TaskFailed, match="^I have no Telegram address for mom.$"):
        capability.run("telegram", {"name": "mom", "message": "hi"})
    assert telegram.requests == []


@pytest.mark.parametrize("args, sentence", [
    ({"message": "hi"}, "The command needs a recipient."),
    ({"name": "jason"}, "The command needs a message."),
    ({"name": "jason", "message": "   "}, "The command needs a message."),
    ({"name": "jason", "message": "x" * 4097},
     "That message is too long for Telegram (4097 characters, at most 4096)."),
])
def test_bad_tasks_fail_before_sending(tmp_path, telegram, args, sentence):
    with pytest.raises(TaskFailed) as failure:
        messaging(tmp_path, telegram).run("telegram", args)
    assert str(failure.value) == sentence
    assert telegram.requests == []


@pytest.mark.parametrize("contacts, complaint", [
    ({"jason": "12345"}, "must be a table"),
    ({"jason": {"signal": "+1555"}}, "unknown keys: signal"),
    ({"jason": {"telegram": "twelve"}}, "chat id number or an @name"),
    ({"jason": {"discord": "987"}}, "user:<id>, channel:<id> or a webhook URL"),
    ({"jason": {"facebook": "a/b"}}, "messenger.com/t/<name>"),
    ({"Jason": {"telegram": 1}, "jason": {"telegram": 2}}, "two contacts are named 'jason'"),
])
def test_bad_contacts_are_refused_at_start(contacts, complaint):
    with pytest.raises(ValueError, match=complaint):
        Messaging({"contacts": contacts})


# -- Discord --------------------------------------------------------------------------


def test_discord_direct_message_opens_the_dm_channel_once(tmp_path, discord, monkeypatch):
    monkeypatch.setenv("LAM_DISCORD_TOKEN", DISCORD_TOKEN)
    capability = messaging(tmp_path, discord=discord)
    outcome = capability.run("discord", {"name": "jason", "message": "game at 8? @everyone"})
    capability.run("discord", {"name": "jason", "message": "bring snacks"})
    assert outcome.message == "Sent to jason on Discord"
    assert outcome.data == {"message_id": "9001"}
    opened, first, second = discord.requests
    assert (opened.method, opened.path) == ("POST", "/api/v10/users/@me/channels")
    assert opened.json() == {"recipient_id": "80351110224678912"}
    for request in discord.requests:
        assert request.headers["Authorization"] == f"Bot {DISCORD_TOKEN}"
        assert request.headers["User-Agent"].startswith("DiscordBot (")
        assert request.headers["Content-Type"] == "application/json"
    assert (first.method, first.path) == ("POST", "/api/v10/channels/555/messages")
    assert first.json() == {"content": "game at 8? @everyone", "allowed_mentions": {"parse": []}}
    assert second.path == "/api/v10/channels/555/messages"


def test_discord_channel_message(tmp_path, discord, monkeypatch):
    monkeypatch.setenv("LAM_DISCORD_TOKEN", DISCORD_TOKEN)
    messaging(tmp_path, discord=discord).run("discord", {"name": "team", "message": "deploy done"})
    [request] = discord.requests
    assert request.path == "/api/v10/channels/41771983423143937/messages"
    assert request.json()["content"] == "deploy done"


def test_discord_webhook_needs_no_token(tmp_path, discord):
    capability = messaging(tmp_path, discord=discord)
    assert capability.actions() == ["discord", "telegram"]
    outcome = capability.run("discord", {"name": "Mom", "message": "landed safely"})
    assert outcome.message == "Sent to Mom on Discord"
    [request] = discord.requests
    assert (request.method, request.path) == ("POST", "/api/webhooks/1234/webhook-secret?wait=true")
    assert "Authorization" not in request.headers
    assert request.json() == {"content": "landed safely", "allowed_mentions": {"parse": []}}
    with pytest.raises(TaskFailed, match="needs a bot token"):
        capability.run("discord", {"name": "jason", "message": "hi"})


@pytest.mark.parametrize("answer, sentence", [
    (Response(401, {"message": "401: Unauthorized", "code": 0}),
     "Discord refused the bot token (401: Unauthorized); check the token."),
    (Response(403, {"message": "Cannot send messages to this user", "code": 50007}),
     "Discord did not let the bot send that message (Cannot send messages to this user)."),
    (Response(429, {"message": "You are being rate limited.", "retry_after": 2.5, "global": False},
              headers={"Retry-After": "3"}),
     "Discord is limiting how fast the bot sends; try again in 3 seconds."),
])
def test_discord_refusals_become_sentences(tmp_path, monkeypatch, answer, sentence):
    monkeypatch.setenv("LAM_DISCORD_TOKEN", DISCORD_TOKEN)
    with StandIn(discord_api([answer])) as server:
        with pytest.raises(TaskFailed) as failure:
            messaging(tmp_path, discord=server).run("discord", {"name": "team", "message": "hi"})
    assert str(failure.value) == sentence


# -- what is offered ------------------------------------------------------------------


def test_only_ready_platforms_are_offered(tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_DISCORD_TOKEN", DISCORD_TOKEN)
    capability = Messaging({"contacts": {"jason": {"telegram": 1, "discord": "user:80351110224678912"}}})
    capability.check()
    assert capability.actions() == ["discord"]
    with pytest.raises(TaskFailed, match="^Telegram is not set up here: no Telegram bot token"):
        capability.run("telegram", {"name": "jason", "message": "hi"})


def test_contact_names_are_advertised_as_vocabulary(tmp_path, telegram):
    assert messaging(tmp_path, telegram).vocabulary() == ["Jason", "mom", "team"]


def test_nothing_ready_is_refused_with_what_to_set():
    with pytest.raises(Unavailable, match=r"Telegram: no Telegram bot token: set \$LAM_TELEGRAM_TOKEN"):
        Messaging({"contacts": {"jason": {"telegram": 1}}}).check()


def test_no_contacts_is_refused_with_what_to_add():
    with pytest.raises(Unavailable, match=r"no contacts: add a \[capabilities.messaging.contacts.<name>\] table"):
        Messaging().check()


def test_an_unreadable_token_file_counts_as_no_token(tmp_path):
    capability = Messaging({"contacts": {"jason": {"telegram": 1}},
                            "telegram_token_file": str(tmp_path / "missing")})
    with pytest.raises(Unavailable, match="no Telegram bot token"):
        capability.check()


# -- Messenger ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def messenger():
    state = {"signed_in": True}
    with StandIn(site_routes(lambda: state["signed_in"])) as server:
        server.state = state
        yield server


@pytest.fixture(scope="module")
def facebook(messenger, tmp_path_factory):
    yield from running(Messaging({"contacts": CONTACTS, "messenger_url": messenger.url, "headless": True,
                                  "profile_dir": str(tmp_path_factory.mktemp("profile")), "page_timeout": 5.0}))


def test_messenger_types_into_the_thread_and_sends(facebook, messenger):
    assert facebook.actions() == ["discord", "facebook"]  # the webhook needs no token; Telegram has none
    outcome = facebook.run("facebook", {"name": "Jason", "message": "see you at 6 🎉\nbring the map"})
    assert outcome.message == "Sent to Jason on Messenger"
    sent = [request for request in messenger.requests if request.path == "/api/send"]
    assert [request.json() for request in sent] == [{"thread": "jason.smith",
                                                     "text": "see you at 6 🎉 bring the map"}]
    with facebook.session.use() as driver:
        assert driver.current_url == f"{messenger.url}/t/jason.smith"
        assert driver.find_element("css selector", "[role=row]").text == "see you at 6 🎉 bring the map"


def test_messenger_signed_out_says_so(facebook, messenger):
    messenger.state["signed_in"] = False
    try:
        with pytest.raises(TaskFailed, match="^Messenger is not signed in"):
            facebook.run("facebook", {"name": "jason", "message": "hi"})
    finally:
        messenger.state["signed_in"] = True


def test_messenger_contact_without_facebook(facebook):
    with pytest.raises(TaskFailed, match="^I have no Messenger address for team.$"):
        facebook.run("facebook", {"name": "team", "message": "hi"})


# -- end to end -----------------------------------------------------------------------


def test_spoken_chain_through_coordinator_and_agent(lam, telegram, messenger, tmp_path):
    """Browser and messaging in one agent process share its browser; the reply tells it all."""
    lam.coordinator()
    lam.agent("desk", "browser", "messaging", env={"LAM_TELEGRAM_TOKEN": TELEGRAM_TOKEN}, extra_config=f"""
[capabilities.browser]
headless = true
profile_dir = "{tmp_path / 'profile'}"
youtube_url = "{messenger.url}"
[capabilities.messaging]
telegram_api_url = "{telegram.url}"
messenger_url = "{messenger.url}"
[capabilities.messaging.contacts.jason]
telegram = 12345
facebook = "jason.smith"
""")
    [presence] = [p for p in lam.recorder.parsed(Presence, lam.topics.agent_status("desk")) if p.state == "online"][:1]
    assert presence.capabilities == {"browser": ["amazon", "gmail", "google", "site", "youtube"],
                                     "messaging": ["facebook", "telegram"]}
    assert presence.vocabulary == {"messaging": ["jason"]}
    reply = lam.send("browser youtube play weezer && telegram Jason now playing weezer && facebook jason hi there",
                     timeout=60)
    assert reply.status == "succeeded", reply
    assert reply.response == ("Playing weezer - First Video on YouTube. Sent to Jason on Telegram. "
                              "Sent to jason on Messenger.")
    assert [r.json() for r in telegram.requests] == [{"chat_id": 12345, "text": "now playing weezer"}]
    pages = [urlsplit(r.path) for r in messenger.requests]
    assert ("/watch", "v=first") in [(p.path, p.query) for p in pages]
    assert {"thread": "jason.smith", "text": "hi there"} in [r.json() for r in messenger.requests
                                                             if r.path == "/api/send"]
