"""The bus foundation end to end: real brokers, coordinator and agents as processes."""

from __future__ import annotations

import json
import queue
import signal
import sqlite3
import threading
import time

import paho.mqtt.client as mqtt

from helpers import wait_until
from lamcontrol.bus import BrokerSettings, Bus
from lamcontrol.protocol import (CoordinatorPresence, ErrorRecord, Presence, Prompt, Reply, Result, Task, decode,
                                 new_id)


def kinds(lam, prompt_id: str) -> list[str]:
    """The life of one prompt as seen on the bus, as (kind, detail) labels in arrival order."""
    t = lam.topics
    labels = []
    for topic, payload in lam.recorder.messages:
        if topic == t.prompts and Prompt.from_payload(payload).id == prompt_id:
            labels.append("prompt")
        elif topic.startswith(t.task("")):
            labels.append("task")
        elif lam.topics.match(topic) and lam.topics.match(topic).cls is Result:
            labels.append(json.loads(payload)["state"])
        elif topic == t.reply(prompt_id):
            labels.append("reply")
    return labels


def test_echo_round_trip_reads_like_a_log(lam):
    lam.coordinator()
    lam.agent("a1")
    prompt = lam.submit("echo hello")
    reply = lam.reply_to(prompt)
    assert reply.status == "succeeded"
    assert reply.response == "hello"
    assert reply.tasks[0].agent == "a1"
    assert kinds(lam, prompt.id) == ["prompt", "task", "accepted", "succeeded", "reply"]
    task = lam.recorder.parsed(Task, lam.topics.task("echo"))[0]
    assert (task.capability, task.action, task.args) == ("echo", "say", {"text": "hello"})
    statuses = {p.agent: p for p in lam.recorder.parsed(Presence, lam.topics.all_agent_statuses)
                + lam.recorder.parsed(CoordinatorPresence, lam.topics.coordinator_status)}
    assert statuses["coordinator"].state == "online" and statuses["a1"].state == "online"
    assert statuses["a1"].capabilities == {"echo": ["fail", "say", "sleep"]}


def test_plain_text_and_json_prompts_and_chains_in_order(lam):
    lam.coordinator()
    lam.agent("a1")
    lam.publish_raw(lam.topics.prompts, "echo plain text")
    reply = lam.recorder.wait_for(Reply, f"{lam.prefix}/replies/")
    assert reply.status == "succeeded" and reply.response == "plain text"

    reply = lam.send("echo sleep 0.3 first && echo second")
    assert reply.status == "succeeded"
    assert [t.command for t in reply.tasks] == ["echo sleep 0.3 first", "echo second"]
    order = [(t, json.loads(p).get("state")) for t, p in lam.recorder.messages
             if lam.recorder.matches(t, lam.topics.all_results) and json.loads(p)["task_id"] in {x.task_id for x in reply.tasks}]
    first, second = reply.tasks[0].task_id, reply.tasks[1].task_id
    states = [(t.rsplit("/", 1)[1], s) for t, s in order]
    assert states.index((first, "succeeded")) < states.index((second, "accepted"))


def test_failure_skips_the_rest_of_the_chain(lam):
    lam.coordinator()
    lam.agent("a1")
    reply = lam.send("echo one && echo fail it broke && echo three")
    assert reply.status == "partial"
    assert [t.state for t in reply.tasks] == ["succeeded", "failed", "skipped"]
    assert "it broke" in reply.response


def test_least_loaded_agent_is_chosen(lam):
    lam.coordinator()
    lam.agent("a1")
    lam.agent("a2")
    slow = lam.submit("echo sleep 3 slow")
    lam.recorder.wait_for(Result, lam.topics.all_results, lambda r: r.state == "accepted")
    busy = lam.recorder.parsed(Task, lam.topics.task("echo"))[0].agent
    quick = lam.send("echo quick")
    assert quick.tasks[0].agent != busy
    assert lam.reply_to(slow).status == "succeeded"


def test_a_busy_agent_takes_its_queue_and_runs_it_in_turn(lam):
    lam.coordinator()
    lam.agent("a1", extra_config="[agent]\nmax_queued = 2\n", max_concurrent=1)
    presence = lam.recorder.parsed(Presence, lam.topics.agent_status("a1"))[-1]
    assert (presence.max_concurrent, presence.max_queued) == (1, 2)
    prompts = [lam.submit(f"echo sleep 2 n{i}") for i in range(3)]
    assert [lam.reply_to(p).response for p in prompts] == ["n0", "n1", "n2"]
    states = [r.state for r in lam.recorder.parsed(Result, lam.topics.all_results)]
    assert states.count("rejected") == 0
    # All three were out with the agent (two queued) before the first finished.
    assert states.index("succeeded") == 3 and states[:3] == ["accepted"] * 3


def test_agent_killed_before_accepting_task_runs_on_the_other(lam):
    lam.coordinator()
    first = lam.agent("a1")
    lam.agent("a2")
    first.signal(signal.SIGSTOP)  # a1 (chosen first: both idle, lowest id) will not accept
    prompt = lam.submit("echo rescued")
    lam.recorder.wait_for(Task, lam.topics.task("echo"), lambda t: t.agent == "a1")
    first.kill()
    reply = lam.reply_to(prompt)
    assert reply.status == "succeeded"
    assert reply.tasks[0].agent == "a2"
    attempts = [t.attempt for t in lam.recorder.parsed(Task, lam.topics.task("echo"))]
    assert attempts == [1, 2]


def test_accepted_task_is_never_rerun_elsewhere(lam):
    lam.coordinator()
    first = lam.agent("a1")
    lam.agent("a2")
    prompt = lam.submit("echo sleep 5 once")
    lam.recorder.wait_for(Result, lam.topics.all_results, lambda r: r.state == "accepted" and r.agent == "a1")
    first.kill()
    reply = lam.reply_to(prompt)
    assert reply.status == "failed"
    assert "a1 went offline" in reply.response
    assert [t.agent for t in lam.recorder.parsed(Task, lam.topics.task("echo"))] == ["a1"]


def test_duplicate_and_late_deliveries_are_not_run(lam):
    lam.agent("a1")
    task = Task(task_id=new_id(), prompt_id=new_id(), capability="echo", action="say", agent="a1",
                args={"text": "twice?"}, accept_by=time.time() + 30)
    lam.publish(task)
    lam.publish(task)
    late = Task(task_id=new_id(), prompt_id=new_id(), capability="echo", action="say", agent="a1",
                args={"text": "late"}, accept_by=time.time() - 1)
    lam.publish(late)
    other = Task(task_id=new_id(), prompt_id=new_id(), capability="echo", action="say", agent="someone-else",
                 args={"text": "not mine"}, accept_by=time.time() + 30)
    lam.publish(other)
    lam.recorder.wait_for(Result, lam.topics.result("+", late.task_id))
    lam.recorder.wait_for(Result, lam.topics.result("+", task.task_id), lambda r: r.state == "succeeded")
    time.sleep(0.5)
    assert [r.state for r in lam.recorder.parsed(Result, lam.topics.result("+", task.task_id))] == ["accepted", "succeeded"]
    late_results = lam.recorder.parsed(Result, lam.topics.result("+", late.task_id))
    assert [r.state for r in late_results] == ["rejected"] and "dispatch window" in late_results[0].message
    assert lam.recorder.on(lam.topics.result("+", other.task_id)) == []


def test_task_queued_while_agent_was_away_is_delivered_on_reconnect(lam):
    agent = lam.agent("a1")
    agent.kill()
    lam.recorder.wait_for(Presence, lam.topics.agent_status("a1"), lambda p: p.state == "offline")
    task = Task(task_id=new_id(), prompt_id=new_id(), capability="echo", action="say", agent="a1",
                args={"text": "held for you"}, accept_by=time.time() + 60)
    lam.publish(task)
    lam.agent("a1")
    result = lam.recorder.wait_for(Result, lam.topics.result("+", task.task_id), lambda r: r.state == "succeeded")
    assert result.message == "held for you"


def test_prompt_sent_while_the_only_agent_restarts_is_not_lost(lam):
    lam.coordinator()
    agent = lam.agent("a1")
    agent.kill()
    lam.recorder.wait_for(Presence, lam.topics.agent_status("a1"), lambda p: p.state == "offline")
    prompt = lam.submit("echo still here")
    time.sleep(0.5)
    lam.agent("a1")
    reply = lam.reply_to(prompt)
    assert reply.status == "succeeded" and reply.response == "still here"


def test_coordinator_killed_mid_prompt_finishes_after_restart(lam):
    coordinator = lam.coordinator()
    lam.agent("a1")
    running = lam.submit("echo sleep 2 finished")
    lam.recorder.wait_for(Result, lam.topics.all_results, lambda r: r.state == "accepted")
    coordinator.kill()
    while_down = lam.submit("echo asked while down")
    lam.coordinator()
    assert lam.reply_to(running).response == "finished"
    assert lam.reply_to(while_down).response == "asked while down"
    replies = [t for t, _ in lam.recorder.on(f"{lam.prefix}/replies/")]
    assert len(replies) == len(set(replies)) == 2


def test_bad_input_is_refused_on_lam_errors_and_the_next_prompt_works(lam):
    lam.coordinator()
    lam.agent("a1")
    t = lam.topics
    garbage = {
        t.prompts: [b"{not json", b'{"prompt": 42}', b"\xff\xfe", b'["a list"]', b"x" * 70_000],
        t.result("a1", "abc"): [b"{}", b'{"task_id": "abc", "agent": "a1", "state": "exploded"}'],
        t.agent_status("ghost"): [b"nope", b'{"state": "online", "agent": "other"}'],
        t.task("echo"): [b"[]", b'{"task_id": "x"}', b'{"task_id": "a/b", "prompt_id": "p", "capability": "echo",'
                                                     b' "action": "say", "agent": "a1"}'],
    }
    sent = 0
    for topic, payloads in garbage.items():
        for payload in payloads:
            lam.publish_raw(topic, payload)
            sent += 1
    wait_until(lambda: len(lam.recorder.on(t.errors)) >= sent, 20, f"{sent} error records")
    records = [ErrorRecord.from_dict(decode(p)) for _, p in lam.recorder.on(t.errors)]
    assert {r.topic_name for r in records} == set(garbage)
    assert any("exceeds" in r.error for r in records)
    assert any(r.error.startswith("prompt: must be str") for r in records)
    assert all(r.component in ("coordinator", "agent a1") for r in records)
    reply = lam.send("echo still fine")
    assert reply.status == "succeeded"


def test_json_prompt_with_an_id_but_bad_fields_is_answered_rejected(lam):
    lam.coordinator()
    lam.publish_raw(lam.topics.prompts, b'{"id": "p123", "prompt": ["not", "text"]}')
    reply = lam.recorder.wait_for(Reply, lam.topics.reply("p123"))
    assert reply.status == "rejected" and "prompt" in reply.response


def test_command_no_agent_can_do_fails_with_a_sentence(lam):
    lam.coordinator()
    lam.agent("a1")
    reply = lam.send("browser google hiking boots")
    assert reply.status == "failed"
    assert reply.response == "No agent can do browser google; start an agent with lam-agent -c browser."


def test_no_agent_names_the_machine_that_left_the_capability_out_and_the_fix(lam):
    """An agent that could not start a capability says why in its presence; the reply repeats it."""
    lam.coordinator()
    lam.agent("desk", "echo", "browser", extra_config='[capabilities.browser]\nbinary = "/nonexistent/chromium"')
    reply = lam.send("browser youtube weezer")
    assert reply.status == "failed"
    assert reply.response.startswith("No agent can do browser youtube: on desk, browser "), reply.response
    assert "[capabilities.browser]" in reply.response


def test_not_for_us_is_ignored_with_a_reason(lam):
    lam.coordinator()
    reply = lam.send("x")
    assert reply.status == "ignored" and reply.response


def test_high_risk_command_waits_for_confirmation_from_the_same_source(lam):
    lam.coordinator()
    lam.agent("a1")
    held = lam.send("computer power shutdown", source="r1")
    assert held.status == "needs_confirmation"
    other = lam.send("confirm", source="someone-else")
    assert other.status == "ignored"
    cancelled = lam.send("no", source="r1")
    assert cancelled.status == "ignored" and cancelled.response == "Cancelled."
    lam.send("computer power shutdown", source="r1")
    confirmed = lam.send("confirm", source="r1")
    assert confirmed.status == "failed" and confirmed.response.startswith("No agent can do computer power;")
    assert not lam.recorder.on(lam.topics.task("computer"))


def test_agent_sigterm_goes_offline_and_fails_running_task_cleanly(lam):
    lam.coordinator()
    agent = lam.agent("a1", extra_config="[agent]\nstop_grace = 0.5\n")
    prompt = lam.submit("echo sleep 20 long")
    lam.recorder.wait_for(Result, lam.topics.all_results, lambda r: r.state == "accepted")
    assert agent.stop() == 0
    final = lam.recorder.parsed(Presence, lam.topics.agent_status("a1"))[-1]
    assert final.state == "offline"
    reply = lam.reply_to(prompt)
    assert reply.status == "failed" and "stopped" in reply.response


def test_survives_a_broker_restart(broker, lam):
    lam.coordinator()
    lam.agent("a1")
    assert lam.send("echo before").status == "succeeded"
    restarted = time.time()
    broker.restart()
    wait_until(lambda: lam.recorder.bus.ready.is_set() and lam.bus.ready.is_set(), 45, "test clients reconnected")

    def back(kind: type[Presence], topic: str) -> bool:
        return any(p.online and p.ts >= restarted for p in lam.recorder.parsed(kind, topic))

    # Without persistence the broker forgot every subscription: wait until both say online again
    # (the last wills the broker sent as it stopped say offline).
    wait_until(lambda: back(CoordinatorPresence, lam.topics.coordinator_status)
               and back(Presence, lam.topics.agent_status("a1")), 45, "the coordinator and the agent back online")
    reply = lam.send("echo after", timeout=45)
    assert reply.status == "succeeded" and reply.response == "after"


def raw_client(broker, name: str, subscriptions: list[str], received: queue.Queue | None = None) -> mqtt.Client:
    """A plain paho client, connected and subscribed; every message it gets goes to ``received``."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{new_id()}")
    subscribed = queue.Queue()
    client.on_subscribe = lambda *args: subscribed.put(True)
    if received is not None:
        client.on_message = lambda c, userdata, message: received.put((message.topic, message.retain))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    for topic_filter in subscriptions:
        client.subscribe(topic_filter, qos=1)
        subscribed.get(timeout=10)
    return client


def test_a_new_subscriber_gets_each_retained_message_once(broker):
    """However many filters other clients hold, a retained message comes once per subscription."""
    root = f"retained-{new_id()}"
    publisher = raw_client(broker, "publisher", [])
    publisher.publish(f"{root}/status", b"online", qos=1, retain=True).wait_for_publish(10)
    others = raw_client(broker, "others", [f"{root}/#", f"{root}/+", f"{root}/status"])
    received: queue.Queue = queue.Queue()
    late = raw_client(broker, "late", [f"{root}/#"], received)
    publisher.publish(f"{root}/marker", b"", qos=1).wait_for_publish(10)
    seen = []
    while (message := received.get(timeout=10)) != (f"{root}/marker", False):
        seen.append(message)
    assert seen == [(f"{root}/status", True)]
    for client in (publisher, others, late):
        client.disconnect()
        client.loop_stop()


def test_a_task_rejected_as_late_runs_when_offered_again(lam):
    """Duplicates are dropped per (task, attempt): a new attempt of a task the agent refused runs."""
    lam.agent("a1")
    task = Task(task_id=new_id(), prompt_id=new_id(), capability="echo", action="say", agent="a1",
                args={"text": "second time lucky"}, attempt=1, accept_by=time.time() - 1)
    lam.publish(task)
    lam.recorder.wait_for(Result, lam.topics.result("a1", task.task_id), lambda r: r.state == "rejected")
    again = Task(**{**task.__dict__, "attempt": 2, "accept_by": time.time() + 30})
    lam.publish(again)
    lam.publish(again)  # a duplicate delivery of the new attempt: dropped
    lam.recorder.wait_for(Result, lam.topics.result("a1", task.task_id), lambda r: r.state == "succeeded")
    time.sleep(0.5)
    states = [(r.state, r.attempt) for r in lam.recorder.parsed(Result, lam.topics.result("a1", task.task_id))]
    assert states == [("rejected", 1), ("accepted", 2), ("succeeded", 2)]


def test_a_task_accepted_once_is_answered_not_run_when_offered_again(lam):
    """The coordinator missed the `accepted` and offers the task again: the agent says what became of
    it and does not run it again."""
    record = lam.tmp_path / "runs.jsonl"
    lam.agent("a1", extra_config=f'[capabilities.echo]\nrun_record = "{record}"\n')
    task = Task(task_id=new_id(), prompt_id=new_id(), capability="echo", action="say", agent="a1",
                args={"text": "only once"}, attempt=1, accept_by=time.time() + 30)
    lam.publish(task)
    lam.recorder.wait_for(Result, lam.topics.result("a1", task.task_id), lambda r: r.state == "succeeded")
    lam.publish(Task(**{**task.__dict__, "attempt": 2}))
    wait_until(lambda: len(lam.recorder.on(lam.topics.result("a1", task.task_id))) >= 4, 20, "the second answer")
    states = [(r.state, r.attempt) for r in lam.recorder.parsed(Result, lam.topics.result("a1", task.task_id))]
    assert states == [("accepted", 1), ("succeeded", 1), ("accepted", 2), ("succeeded", 2)]
    assert len(record.read_text().splitlines()) == 1


HOSTILE_PROMPTS = {  # by prompt id: timeout NaN, "soon" and infinite, lone surrogates, 5,000 digits, deep JSON
    "h-nan": b'{"id": "h-nan", "prompt": "echo hi", "metadata": {"timeout": NaN}}',
    "h-soon": b'{"id": "h-soon", "prompt": "echo hi", "metadata": {"timeout": "soon"}}',
    "h-inf": b'{"id": "h-inf", "prompt": "echo hi", "metadata": {"timeout": Infinity}}',
    "h-sur1": b'{"id": "h-sur1", "prompt": "echo \\ud800 hi"}',
    "h-sur2": b'{"id": "h-sur2", "prompt": "echo hi", "source": "\\udc00"}',
    "h-sur3": b'{"id": "h-sur3", "prompt": "echo hi", "metadata": {"note": "\\ud83d"}}',
    "h-digits": b'{"id": "h-digits", "prompt": "computer volume ' + b"7" * 5000 + b'"}',
    "h-deep": b'{"id": "h-deep", "prompt": "echo hi", "metadata": {"x": ' + b"[" * 10_000
                          + b"]" * 10_000 + b"}}",
}


def test_inputs_that_once_broke_the_coordinator_get_a_record_and_a_rejected_reply(lam):
    lam.coordinator()
    lam.agent("a1")
    for payload in HOSTILE_PROMPTS.values():
        lam.publish_raw(lam.topics.prompts, payload)
    for prompt_id in HOSTILE_PROMPTS:
        reply = lam.recorder.wait_for(Reply, lam.topics.reply(prompt_id))
        assert reply.status == "rejected", reply
    wait_until(lambda: len(lam.recorder.on(lam.topics.errors)) >= len(HOSTILE_PROMPTS), 20, "an error record each")
    records = [ErrorRecord.from_dict(decode(p)) for _, p in lam.recorder.on(lam.topics.errors)]
    assert len(records) == len(HOSTILE_PROMPTS)
    assert not any("internal error" in r.error for r in records), records
    assert lam.send("echo still fine").status == "succeeded"


def test_a_reply_is_marked_sent_in_the_journal_once_the_broker_has_it(lam):
    lam.coordinator()
    lam.agent("a1")
    prompts = [lam.submit(f"echo number {n}") for n in range(5)]
    for prompt in prompts:
        lam.reply_to(prompt)

    def unsent() -> list:
        with sqlite3.connect(lam.tmp_path / "journal.db") as db:
            return db.execute("SELECT id FROM prompts WHERE sent = 0 OR reply IS NULL").fetchall()
    wait_until(lambda: unsent() == [], 20, "every reply marked sent")


def test_what_other_threads_and_handlers_publish_all_goes_out_once(broker):
    """One thread per bus reads, handles and writes: other threads write what they publish or wake it,
    and what a handler publishes is written at once; under load from both, every message goes out, once."""
    root, threads, each = f"wake-{new_id()}", 4, 150
    seen: queue.Queue = queue.Queue()
    watcher = Bus(BrokerSettings(url=broker.url), component="watcher")
    watcher.on(f"{root}/#", lambda topic, payload: seen.put(topic))
    echoer = Bus(BrokerSettings(url=broker.url), component="echoer")
    echoer.on(f"{root}/in/#", lambda topic, payload: echoer.publish_raw(topic.replace("/in/", "/out/"), payload))
    watcher.start(timeout=15)
    echoer.start(timeout=15)

    def publish(thread: int) -> None:
        for n in range(each):
            echoer.publish_raw(f"{root}/in/{thread}-{n}", b"x")

    try:
        senders = [threading.Thread(target=publish, args=(t,)) for t in range(threads)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(30)
        topics = [seen.get(timeout=30) for _ in range(2 * threads * each)]
        time.sleep(0.5)  # room for a copy to show up
        assert seen.empty()
        assert sorted(topics) == sorted(f"{root}/{way}/{t}-{n}" for way in ("in", "out")
                                        for t in range(threads) for n in range(each))
    finally:
        echoer.stop()
        watcher.stop()


def test_messages_published_from_another_thread_while_the_bus_sleeps_each_go_out(broker):
    """While its thread sleeps, a bus lets another thread write what it publishes; each such message
    goes out at once, not only the first (nor only once the bus thread wakes for something else)."""
    root = f"asleep-{new_id()}"
    seen: queue.Queue = queue.Queue()
    watcher = Bus(BrokerSettings(url=broker.url), component="watcher")
    watcher.on(f"{root}/#", lambda topic, payload: seen.put(payload))
    sender = Bus(BrokerSettings(url=broker.url), component="sender")
    watcher.start(timeout=15)
    sender.start(timeout=15)
    try:
        for n in range(5):
            wait_until(lambda: sender._sleeping, 10, "the sender's bus thread asleep")
            sender.publish_raw(f"{root}/{n}", str(n).encode())
            assert seen.get(timeout=10) == str(n).encode()
    finally:
        sender.stop()
        watcher.stop()


def test_messages_larger_than_the_socket_takes_at_once_arrive_whole_and_in_order(broker):
    """Writes are gathered and sent as the socket takes them, reads taken in large chunks: messages
    that span many reads, queued faster than the socket drains, all arrive intact and in order."""
    root, count, size = f"big-{new_id()}", 40, 60 * 1024
    payloads = [bytes([n]) * size for n in range(count)]
    seen: queue.Queue = queue.Queue()
    reader = Bus(BrokerSettings(url=broker.url), component="reader")
    reader.on(f"{root}/#", lambda topic, payload: seen.put((topic, payload)))
    writer = Bus(BrokerSettings(url=broker.url), component="writer")
    reader.start(timeout=15)
    writer.start(timeout=15)
    try:
        for payload in payloads:
            writer.publish_raw(f"{root}/data", payload)  # one topic: the broker keeps its order
        received = [seen.get(timeout=30) for _ in range(count)]
        assert [topic for topic, _ in received] == [f"{root}/data"] * count
        assert [payload for _, payload in received] == payloads
    finally:
        writer.stop()
        reader.stop()


def test_a_retained_task_never_runs_again_at_an_agent_start(lam, broker, tmp_path):
    """A task someone left retained on ``lam/tasks/<capability>`` ran at every start of its agent. An
    agent now ignores a retained task, reports it on lam/errors and clears it."""
    record = tmp_path / "ran.jsonl"
    config = f'[capabilities.echo]\nrun_record = "{record}"\n'
    agent = lam.agent("a1", extra_config=config)
    now = time.time()
    left = Task(task_id=new_id(), prompt_id=new_id(), capability="echo", action="say", agent="a1",
                args={"text": "left retained"}, accept_by=now + 300, deadline=now + 300)
    lam.bus.publish(left, retain=True).wait_for_publish(10)  # a live task: taken once, as any other

    def ran() -> list[str]:
        return [json.loads(line)["args"]["text"] for line in record.read_text().splitlines()] if record.exists() else []

    wait_until(lambda: ran() == ["left retained"], 15, "the task run once, at publish")
    for _ in range(3):
        agent.stop()
        agent = lam.agent("a1", extra_config=config)
    wait_until(lambda: any(ErrorRecord.from_dict(decode(p)).topic_name == lam.topics.task("echo")
                           for _, p in lam.recorder.on(lam.topics.errors)), 15, "the retained task reported")
    # Cleared: a new subscriber finds nothing retained there.
    received: queue.Queue = queue.Queue()
    marker = f"{lam.prefix}/marker-{new_id()}"
    late = raw_client(broker, "late", [lam.topics.task("echo"), marker], received)
    late.publish(marker, b"m", qos=1).wait_for_publish(10)
    assert received.get(timeout=10) == (marker, False)
    late.disconnect()
    late.loop_stop()
    barrier = Task(task_id=new_id(), prompt_id=new_id(), capability="echo", action="say", agent="a1",
                   args={"text": "barrier"}, accept_by=time.time() + 30)
    lam.publish(barrier)
    lam.recorder.wait_for(Result, lam.topics.result("a1", barrier.task_id), lambda r: r.state == "succeeded")
    assert ran() == ["left retained", "barrier"]
