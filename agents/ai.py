"""ai: answers questions and drafts text with a Groq-hosted model (``ai <question or task>``).

A task may carry a photo (``args.image``, a JPEG data URL the R1 bridge made small): then a
Groq vision model (``vision_model``) answers the question about it. The photo is only sent
to Groq, never kept.

The answer comes back as the result's sentence, short and plain so the R1 can speak it; the
full text is in the result's data. Nothing the model writes is ever run: code in an answer is
left out of the spoken sentence and only returned as text.

Groq settings are those of the config file's ``[groq]`` section (handed over by the agent, see
:class:`~lamcontrol.agents.capability.Shared`) and ``$GROQ_API_KEY``; any non-empty key of
``[capabilities.ai]`` overrides them.
"""

from __future__ import annotations

import dataclasses
import logging
import re

from lamcontrol.llm import GroqChat, GroqSettings, LLMUnavailable

from .capability import Arg, Capability, Outcome, Sentences, Setting, Shared, TaskFailed, Unavailable, action, require

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You answer through a small voice assistant with a speaker. Reply in plain text of at most three "
    "short sentences: no markdown, no lists, no code. When asked to draft a message, reply with the draft "
    "only. You cannot run programs or act on the computer; if a task needs that, say briefly what the "
    "person could do instead."
)
_CODE = re.compile(r"```.*?(?:```|$)", re.S)
_MARKUP = re.compile(r"(?m)^\s*(?:#+|[-*+] |\d+\. |> )|[*_`#]+")
MAX_PROMPT = 4000
MAX_IMAGE = 4 * 1024 * 1024  # Groq's limit for a request with a Base64 image
VISION_MODEL = "meta-llama/llama-4-scout-17b-16e-instruct"


def speakable(text: str, limit: int) -> str:
    """The answer as a sentence to speak: no code, no markup, cut at a sentence end near ``limit``."""
    text = _CODE.sub(" ", text)
    text = " ".join(_MARKUP.sub("", text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind("? "), cut.rfind("! "))
    return cut[:end + 1] if end > limit // 3 else cut.rsplit(" ", 1)[0] + "..."


class Ai(Capability):
    name = "ai"
    summary = "Answers questions and drafts messages with Groq; never runs code."
    extra = "ai"
    requirements = ("groq",)
    config_schema = {
        "api_key": Setting("", "Groq API key (better: api_key_file or $GROQ_API_KEY); empty: [groq]"),
        "api_key_file": Setting("", "file holding the Groq API key; empty: [groq]"),
        "model": Setting("", "Groq model id; empty: [groq] model"),
        "vision_model": Setting(VISION_MODEL, "Groq model id for questions about a photo"),
        "base_url": Setting("", "Groq API base URL; empty: [groq] base_url, else Groq itself"),
        "timeout": Setting(30.0, "seconds to wait for an answer"),
        "max_retries": Setting(1, "retries after a failed call (never after a rate limit)"),
        "max_tokens": Setting(800, "longest answer, in tokens (reasoning included)"),
        "max_chars": Setting(400, "longest spoken answer, in characters; data.answer keeps all"),
    }

    def __init__(self, settings: dict | None = None, shared: Shared | None = None) -> None:
        super().__init__(settings, shared)
        self.chat: GroqChat | None = None
        self.vision: GroqChat | None = None

    def groq_settings(self) -> GroqSettings:
        own = {k: v for k, v in self.settings.items() if k not in ("max_tokens", "max_chars", "vision_model")}
        try:
            return GroqSettings.from_config(self.shared.groq, own)
        except ValueError as exc:
            raise Unavailable(f"ai cannot use its Groq settings: {exc}") from None

    def check(self) -> None:
        super().check()
        if not self.groq_settings().configured:
            raise Unavailable("ai needs a Groq API key: set [capabilities.ai] api_key_file, [groq] api_key_file "
                              "or $GROQ_API_KEY")

    def start(self) -> None:
        settings = self.groq_settings()
        self.chat = GroqChat(settings)
        # Vision models do not reason: Groq refuses reasoning_effort for them.
        self.vision = GroqChat(dataclasses.replace(settings, model=self.settings["vision_model"], reasoning_effort=""))

    lists = {"task_verbs": ["summarize", "translate", "draft", "write", "compose", "explain", "rewrite",
                            "brainstorm", "describe", "outline", "proofread", "paraphrase"]}

    @action(syntax=["ai {prompt}", "openinterpreter {prompt}"], args=[Arg("prompt", "text", "a question or task")],
            shows=True, questions="prompt", sentences=[
        Sentences(("(ask|have|tell|get) [the] (ai|assistant|chatbot|llm|open interpreter) [to] {prompt}",
                   "(ai|assistant)[,] {prompt}", "use open interpreter to {prompt}")),
        Sentences(("{task_verbs} {rest}",), compose={"prompt": "{task_verbs} {rest}"}),
        Sentences(("ask [the] (ai|assistant)",), ask="What should I ask the ai?"),
    ], examples=[("ask the ai why the sky is blue", "ai why the sky is blue")], photo="image")
    def ask(self, args: dict) -> Outcome:
        """Answer a question or write something."""
        prompt = require(args, "prompt").strip()
        if len(prompt) > MAX_PROMPT:
            raise TaskFailed("That question is too long for me.")
        if self.chat is None:
            self.start()
        assert self.chat is not None and self.vision is not None  # start() made them
        content, chat = prompt, self.chat
        image = args.get("image")
        if image is not None:
            if not isinstance(image, str) or not image.startswith("data:image/") or len(image) > MAX_IMAGE:
                raise TaskFailed("I cannot read that photo.")
            content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": image}}]
            chat = self.vision
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]
        try:
            answer = chat.complete(messages, max_tokens=self.settings["max_tokens"])
        except LLMUnavailable as exc:
            raise TaskFailed(f"I couldn't get an answer: {exc}.") from None
        spoken = speakable(answer, self.settings["max_chars"])
        if not spoken:
            raise TaskFailed("The answer was only code, which I don't run or read out.")
        return Outcome(spoken, {"answer": answer, "model": chat.settings.model})
