"""echo: diagnostics and benchmarks. ``echo <text>`` answers with the text."""

from __future__ import annotations

import json
import threading

from .capability import Arg, Capability, Outcome, Setting, Shared, TaskFailed, action


class Echo(Capability):
    name = "echo"
    summary = "Answers with what it was given; for checking the system end to end."
    config_schema = {"max_sleep": Setting(60.0, "longest pause `echo sleep` may take, in seconds"),
                     "run_record": Setting("", "file to append a JSON line to (action and args) as each "
                                               "action starts: the agent's own record of what it ran")}

    def __init__(self, settings: dict | None = None, shared: Shared | None = None) -> None:
        super().__init__(settings, shared)
        self.stopping = threading.Event()
        self._record_lock = threading.Lock()

    def run(self, action_name: str, args: dict) -> Outcome:
        if self.settings["run_record"]:
            line = json.dumps({"action": action_name, "args": args}) + "\n"
            with self._record_lock, open(self.settings["run_record"], "a", encoding="utf-8") as record:
                record.write(line)
        return super().run(action_name, args)

    @action(syntax=["echo {text}"], args=[Arg("text", "text", "some text")], idempotent=True,
            examples=[("echo hello", "echo hello")])
    def say(self, args: dict) -> Outcome:
        """Answer with the text."""
        text = args["text"]
        return Outcome(text, {"text": text})

    @action(syntax=["echo sleep {seconds} {text}"], args=[Arg("seconds", "number", "a number of seconds", minimum=0),
                                                           Arg("text", optional=True)])
    def sleep(self, args: dict) -> Outcome:
        """Pause (for tests and load checks), then answer like ``say``."""
        seconds = args["seconds"]
        if seconds > self.settings["max_sleep"]:
            raise TaskFailed(f"I can only sleep between 0 and {self.settings['max_sleep']:g} seconds.")
        if self.stopping.wait(seconds):
            raise TaskFailed("The agent stopped before the pause ended.")
        text = args.get("text") or f"Slept {seconds:g} seconds."
        return Outcome(text, {"text": text, "seconds": seconds})

    @action(syntax=["echo fail {text}"], args=[Arg("text", optional=True)])
    def fail(self, args: dict) -> Outcome:
        """Always fails with the given sentence (for tests)."""
        raise TaskFailed(args.get("text") or "Failing as asked.")

    def close(self) -> None:
        self.stopping.set()
