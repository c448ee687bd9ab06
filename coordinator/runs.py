"""A prompt being carried out (a run of jobs, one per command) and the words of its reply."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lamcontrol.protocol import Prompt, PromptStatus, Risk, TaskState, TaskSummary

from .grammar import Command

WAITING, DISPATCHED, ACCEPTED, SUCCEEDED, FAILED, SKIPPED = (TaskState.WAITING, TaskState.DISPATCHED, TaskState.ACCEPTED,
                                                           TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED)
DONE = (SUCCEEDED, FAILED, SKIPPED)  # a job in one of these has nothing left to do
OUT = (DISPATCHED, ACCEPTED)  # a job an agent holds


@dataclass
class Job:
    """One command of a prompt and where it stands."""

    task_id: str
    position: int
    command: Command
    state: TaskState = WAITING
    agent: str | None = None
    attempt: int = 0
    tried: set[str] = field(default_factory=set)
    ack_deadline: float = 0.0
    agent_started: float = 0.0  # the agent's presence ``started`` when it was given the job (0: unknown)
    retry_at: float = 0.0
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> tuple[str, str]:
        return self.command.capability, self.command.action

    def summary(self) -> TaskSummary:
        return TaskSummary(task_id=self.task_id, command=self.command.text, state=self.state, agent=self.agent,
                           message=self.message, data=self.data)

    def sentence(self, alone: bool) -> str:
        """What happened to this step, in words ('' for a lone success with nothing to say)."""
        said = self.message.strip()
        if self.state == SKIPPED:
            return f"Skipped {self.command.text}."
        if said:
            return said if alone or said[-1] in ".!?" else said + "."
        if self.state == SUCCEEDED:
            return "" if alone else f"Done: {self.command.text}."
        return f"{self.command.text.capitalize()} failed."


@dataclass
class Run:
    """A prompt being carried out."""

    prompt: Prompt
    deadline: float
    jobs: list[Job]
    note: str = ""

    def current(self) -> Job | None:
        return next((j for j in self.jobs if j.state not in DONE), None)

    def outcome(self) -> tuple[PromptStatus, str]:
        """The reply's status and its words: one sentence per step, skipped ones included."""
        succeeded = sum(j.state == SUCCEEDED for j in self.jobs)
        if succeeded == len(self.jobs):
            status = PromptStatus.SUCCEEDED
        else:
            status = PromptStatus.PARTIAL if succeeded else PromptStatus.FAILED
        alone = len(self.jobs) == 1
        response = " ".join(s for j in self.jobs if (s := j.sentence(alone))) or "Done."
        return status, f"{response} ({self.note})" if self.note else response


@dataclass
class Held:
    """High-risk commands waiting for the same source to confirm."""

    prompt: Prompt
    commands: list[Command]
    expires: float
    note: str = ""


def command_from_dict(data: dict) -> Command:
    return Command(data["capability"], data["action"], data["args"], data["command"], Risk(data.get("risk", Risk.LOW)),
                   data.get("idempotent", False), data.get("photo", ""), data.get("confirmed", False))


def command_to_dict(command: Command) -> dict:
    return {**command.to_dict(), "risk": command.risk, "idempotent": command.idempotent, "photo": command.photo,
            "confirmed": command.confirmed}


def describe(command: Command) -> str:
    """What a command does, in the words a person may say: ``browser youtube``; just ``home`` for an
    action whose name is no word of the command (``home say`` is ``home <sentence>``)."""
    words = command.text.split()
    if words[:2] == [command.capability, command.action]:
        return f"{command.capability} {command.action}"
    return command.capability
