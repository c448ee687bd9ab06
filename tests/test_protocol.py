"""The wire protocol: topics, validation that names the bad field, compact JSON."""

from __future__ import annotations

import json

import pytest

from lamcontrol.coordinator.language import parse_chain
from lamcontrol.bus import BrokerSettings
from lamcontrol.config import ConfigError
from lamcontrol.protocol import (CoordinatorPresence, ErrorRecord, LegacyResult, Metadata, Presence, Prompt,
                                 PromptStatus, ProtocolError, Reply, Result, ResultState, Task, TaskSummary, Topics,
                                 check_agent_id, decode, describe_event, parse, read)


def test_topics_follow_the_design_under_any_prefix():
    t = Topics("home")
    assert (t.prompts, t.reply("p1"), t.task("browser"), t.result("pc", "t1")) == \
        ("home/prompts", "home/replies/p1", "home/tasks/browser", "home/agents/pc/results/t1")
    assert (t.agent_status("pc"), t.coordinator_status, t.errors) == \
        ("home/agents/pc/status", "home/coordinator/status", "home/errors")
    assert Presence(state="online", agent="pc").topic(t) == "home/agents/pc/status"
    assert CoordinatorPresence(state="online").topic(t) == "home/coordinator/status"


MESSAGES = [
    Prompt(prompt="echo hi", id="p1"),
    Reply(prompt_id="p1", status=PromptStatus.SUCCEEDED, response="hi",
          tasks=[TaskSummary(task_id="t1", command="echo hi", state="succeeded", agent="pc")]),
    Task(task_id="t1", prompt_id="p1", capability="echo", action="say", agent="pc"),
    Result(task_id="t1", agent="pc", state=ResultState.ACCEPTED),
    Presence(state="online", agent="pc", capabilities={"echo": ["say"]}),
    CoordinatorPresence(state="online"),
    ErrorRecord(component="pc", topic_name="x", error="bad"),
]


@pytest.mark.parametrize("prefix", ["lam", "home/lam", "a/b/c"])
@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_each_message_finds_its_class_and_ids_from_its_topic(prefix, message):
    topics = Topics(prefix)
    topic = message.topic(topics)
    match = topics.match(topic)
    assert match.cls is type(message)
    assert read(topics, topic, message.to_json()) == message
    assert describe_event(prefix, topic, message.to_json())[0] == type(message).event


def test_matching_ignores_other_topics_and_carries_ids():
    topics = Topics("home/lam")
    assert topics.match("home/lam/agents/pc/results/t1").ids == {"agent": "pc", "task_id": "t1"}
    assert topics.match("home/lam/results/t1").cls is LegacyResult
    assert topics.match("home/lam/state/agents/pc/last_result") is None
    assert topics.match("lam/prompts") is None and topics.match("home/lamprompts") is None
    assert describe_event("home/lam", "home/lam/agents/pc/results/t1",
                          Result(task_id="t1", agent="pc", state="succeeded", message="done").to_json()) == \
        ("result", "t1 pc succeeded: done")


def test_a_message_must_agree_with_its_topic():
    topics = Topics("lam")
    forged = Result(task_id="t1", agent="other", state="rejected").to_json()
    with pytest.raises(ProtocolError, match="topic's agent") as error:
        read(topics, topics.result("pc", "t1"), forged)
    assert error.value.field == "agent"
    with pytest.raises(ProtocolError, match="topic's task_id"):
        read(topics, topics.result("other", "t2"), forged)


def test_reply_tasks_are_typed():
    reply = parse(Reply, MESSAGES[1].to_json())
    assert reply.tasks == MESSAGES[1].tasks and reply.status is PromptStatus.SUCCEEDED
    with pytest.raises(ProtocolError) as error:
        Reply.from_dict({"prompt_id": "p", "status": "failed", "response": "", "tasks": [{"task_id": "t"}]})
    assert error.value.field == "tasks[0].command"


@pytest.mark.parametrize("timeout", ["soon", float("nan"), float("inf"), 0, -1, True])
def test_metadata_timeout_must_be_a_finite_positive_number(timeout):
    with pytest.raises(ProtocolError) as error:
        Prompt.from_dict({"prompt": "hi", "metadata": {"timeout": timeout}})
    assert error.value.field == "metadata.timeout"


def test_metadata_is_typed_and_keeps_other_keys():
    prompt = Prompt.from_payload(b'{"prompt": "hi", "metadata": {"timeout": 5, "agent": "pc", "k": 1}}')
    assert prompt.metadata == Metadata(timeout=5, agent="pc", extra={"k": 1})
    assert json.loads(prompt.to_json())["metadata"] == {"timeout": 5, "agent": "pc", "k": 1}
    with pytest.raises(ProtocolError, match="metadata.agent"):
        Prompt.from_dict({"prompt": "hi", "metadata": {"agent": "a/b"}})


def test_reserved_agent_ids_are_refused():
    with pytest.raises(ProtocolError, match="reserved"):
        check_agent_id("coordinator")
    topics = Topics("lam")
    with pytest.raises(ProtocolError, match="reserved"):
        read(topics, topics.agent_status("coordinator"), Presence(state="online", agent="coordinator").to_json())


def test_messages_round_trip_as_compact_json():
    task = Task(task_id="t1", prompt_id="p1", capability="echo", action="say", agent="a1", args={"text": "héllo"})
    payload = task.to_json()
    assert b": " not in payload and "héllo".encode() in payload
    assert parse(Task, payload) == task


@pytest.mark.parametrize("kind, data, field", [
    (Task, {"task_id": "t"}, "prompt_id"),
    (Task, {"task_id": "t", "prompt_id": "p", "capability": "echo", "action": "say", "agent": "a", "attempt": "2"},
     "attempt"),
    (Task, {"task_id": "t/x", "prompt_id": "p", "capability": "echo", "action": "say", "agent": "a"}, "task_id"),
    (Task, {"task_id": "t", "prompt_id": "p", "capability": "#", "action": "say", "agent": "a"}, "capability"),
    (Result, {"task_id": "t", "agent": "a", "state": "done"}, "state"),
    (Result, {"task_id": "t", "agent": "a", "state": "failed", "data": []}, "data"),
    (Reply, {"prompt_id": "p", "status": "succeeded", "response": None}, "response"),
    (Presence, {"state": "online", "agent": "a", "capabilities": {"echo": "say"}}, "capabilities.echo"),
    (Presence, {"state": "online", "agent": "a", "load": True}, "load"),
    (Prompt, {"prompt": "hi", "source": "s" * 65}, "source"),
])
def test_validation_names_the_bad_field(kind, data, field):
    with pytest.raises(ProtocolError) as error:
        kind.from_dict(data)
    assert error.value.field == field


def test_plain_text_is_a_prompt_and_json_must_be_an_object():
    assert Prompt.from_payload(b"  computer volume 50 ").prompt == "computer volume 50"
    with pytest.raises(ProtocolError, match="JSON object"):
        Prompt.from_payload(b'["computer volume 50"]')
    with pytest.raises(ProtocolError, match="not JSON"):
        Prompt.from_payload(b'{"prompt": ')


def test_oversized_and_undecodable_payloads_are_refused():
    with pytest.raises(ProtocolError, match="exceeds the 100-byte limit"):
        decode(b"{" + b" " * 200 + b"}", max_size=100)
    with pytest.raises(ProtocolError, match="not UTF-8"):
        decode(b"\xff")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_numbers_json_does_not_have_are_refused_in_every_message(number):
    """Python's JSON reader takes NaN and Infinity; no JSON writer sends them, and they compare to nothing."""
    topics = Topics("lam")
    presence = Presence(state="online", agent="pc").to_json().replace(b'"heartbeat":30.0', b'"heartbeat":' + number.encode())
    with pytest.raises(ProtocolError, match=f"{number} is not a JSON number"):
        read(topics, topics.agent_status("pc"), presence)
    with pytest.raises(ProtocolError, match="not a JSON number"):
        Prompt.from_payload(b'{"prompt": "echo hi", "metadata": {"note": [' + number.encode() + b"]}}")
    assert Prompt.from_payload(number.encode()).prompt == number  # as plain text, it is just words


def test_deeply_nested_json_is_refused_not_a_crash():
    with pytest.raises(ProtocolError, match="nested too deeply"):
        Prompt.from_payload(b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_error_record_uses_the_topic_key_on_the_wire():
    record = ErrorRecord.about("coordinator", "lam/prompts", ValueError("bad"), b"\xffpayload" * 100)
    wire = json.loads(record.to_json())
    assert set(wire) == {"component", "topic", "error", "excerpt"} and len(wire["excerpt"]) <= 200
    assert ErrorRecord.from_dict(wire) == record


@pytest.mark.parametrize("url, expected", [
    ("mqtt://127.0.0.1:1884", ("tcp", False, "127.0.0.1", 1884, "", "")),
    ("mqtts://user:p%40ss@broker.lan", ("tcp", True, "broker.lan", 8883, "user", "p@ss")),
    ("ws://host:9001/mqtt", ("websockets", False, "host", 9001, "", "")),
    ("broker.lan:1883", ("tcp", False, "broker.lan", 1883, "", "")),
])
def test_broker_urls(url, expected):
    s = BrokerSettings(url=url)
    assert (s.transport, s.tls, s.host, s.port, s.username, s.password) == expected


def test_broker_url_errors_and_password_masking():
    with pytest.raises(ConfigError, match="must start with"):
        BrokerSettings(url="http://host")
    assert BrokerSettings(url="mqtt://u:secret@h:1").safe_url == "mqtt://u:***@h:1"


@pytest.mark.parametrize("text, reason", [
    ("browser site ftp://example.com", "http"),
    ("browser site example.com", "http"),
    ("computer run ; rm -rf ~", "application name"),
    ("computer run $(reboot)", "application name"),
    ("computer volume 101", "0 to 100"),
    ("computer power explode", "lock, sleep"),
    ("telegram", "recipient"),
    ("rm -rf /", "don't know"),
])
def test_grammar_refuses_bad_commands_with_a_sentence(text, reason):
    result = parse_chain(text)
    assert result.commands == [] and reason in result.reason


def test_grammar_marks_risk_and_idempotence():
    shutdown, volume, up = parse_chain("computer power shutdown && computer volume 30 && computer volume up").commands
    assert (shutdown.risk, volume.idempotent, up.idempotent) == ("high", True, False)
    assert parse_chain("computer power lock").commands[0].risk == "low"
