"""echo: diagnostics and benchmarks. ``echo <text>`` answers with the text."""

from __future__ import annotations

import threading

from .capability import Capability, Outcome, Setting, TaskFailed, action, require


class Echo(Capability):
    name = "echo"
    summary = "Answers with what it was given; for checking the system end to end."
    config_schema = {"max_sleep": Setting(60.0, "longest pause `echo sleep` may take, in seconds")}

    def __init__(self, settings: dict | None = None) -> None:
        super().__init__(settings)
        self.stopping = threading.Event()

    @action()
    def say(self, args: dict) -> Outcome:
        text = require(args, "text")
        return Outcome(text, {"text": text})

    @action()
    def sleep(self, args: dict) -> Outcome:
        """Pause (for tests and load checks), then answer like ``say``."""
        seconds = args.get("seconds")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= self.settings["max_sleep"]:
            raise TaskFailed(f"I can only sleep between 0 and {self.settings['max_sleep']:g} seconds.")
        if self.stopping.wait(seconds):
            raise TaskFailed("The agent stopped before the pause ended.")
        text = args.get("text") or f"Slept {seconds:g} seconds."
        return Outcome(text, {"text": text, "seconds": seconds})

    @action()
    def fail(self, args: dict) -> Outcome:
        """Always fails with the given sentence (for tests)."""
        raise TaskFailed(args.get("text") or "Failing as asked.")

    def close(self) -> None:
        self.stopping.set()
