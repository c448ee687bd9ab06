"""Loose sentences about the house, routed to the ``home`` capability.

A sentence goes to Home Assistant when it reads like a request to the house (it starts with a
verb or question word such as "turn", "set", "dim", "open", "activate", "is") and names
something the home agents advertise (an entity, scene, script or area Home Assistant exposes
to Assist). It becomes ``home <sentence>``, so Home Assistant's own Assist understands it and
answers; "activate the movie night scene" and "run the good night script", which say what kind
of thing they name, become ``home scene <name>`` and ``home script <name>``.

Everything else is left to the other parsers: sentences that name no home thing, chains, and
sentences about the computer or another capability ("turn off my computer", "open youtube and
play the desk lamp song") even when a home name happens to appear in them.
"""

from __future__ import annotations

FILLERS = ("hey", "hi", "ok", "okay", "please", "kindly", "just", "now", "can you", "could you", "would you",
           "will you", "i want you to", "i'd like you to", "go ahead and")
HOME_VERBS = {"turn", "switch", "set", "dim", "brighten", "open", "close", "shut", "lock", "unlock", "activate",
              "run", "start", "trigger", "execute", "toggle", "raise", "lower", "make", "change", "put", "stop",
              "is", "are", "what", "what's", "whats", "how", "which", "does", "do"}
START_VERBS = {"activate", "run", "start", "trigger", "execute"}
KINDS = {"scene", "script"}
# Words that put a sentence on the computer, the browser or a messenger, never on the house.
ELSEWHERE = {"computer", "pc", "laptop", "desktop", "screen", "volume", "browser", "website", "youtube", "google",
             "gmail", "amazon", "search", "telegram", "discord", "facebook", "messenger", "message", "text", "email",
             "app", "application"}


def spoken(text: str) -> list[str]:
    """Words as compared: case-folded, without surrounding punctuation."""
    words = (w.strip(".,!?;:\"()[]").casefold() for w in text.replace("\u2019", "'").split())
    return [w for w in words if w]


def _find(words: list[str], phrase: list[str]) -> int:
    """Where ``phrase`` starts in ``words``, or -1."""
    size = len(phrase)
    return next((i for i in range(len(words) - size + 1) if words[i:i + size] == phrase), -1)


def _strip_fillers(words: list[str]) -> list[str]:
    fillers = [f.split() for f in sorted(FILLERS, key=len, reverse=True)]
    changed = True
    while changed and words:
        changed = False
        for filler in fillers:
            if words[:len(filler)] == filler:
                words, changed = words[len(filler):], True
        if words and words[-1] in ("please", "now"):
            words, changed = words[:-1], True
    return words


def route_home(prompt: str, vocabulary: dict[str, list[str]]) -> str | None:
    """The rigid ``home ...`` command for a sentence about something the home agents know, or None."""
    names = {" ".join(spoken(n)): n for n in vocabulary.get("home") or []}
    names = {key: name for key, name in names.items() if key and key not in ELSEWHERE}
    if not names or "&&" in prompt:
        return None
    words = _strip_fillers(spoken(prompt))
    if not words or words[0] not in HOME_VERBS:
        return None
    found = max(((key, _find(words, key.split())) for key in names), key=lambda kv: (kv[1] >= 0, len(kv[0])))
    key, start = found
    if start < 0:
        return None
    span = range(start, start + len(key.split()))
    others = {" ".join(spoken(n)) for capability, listed in vocabulary.items() if capability != "home" for n in listed}
    outside = [w for i, w in enumerate(words) if i not in span]
    if ELSEWHERE & set(outside) or any(o and _find(outside, o.split()) >= 0 for o in others - set(names)):
        return None
    rest = [w for w in words[1:] if w != "the"]
    if words[0] in START_VERBS and len(rest) == len(key.split()) + 1 and rest[-1] in KINDS \
            and " ".join(rest[:-1]) == key:
        return f"home {rest[-1]} {names[key]}"
    return "home " + " ".join(words)


def home_prompt_line(vocabulary: dict[str, list[str]]) -> str:
    """One line for an LLM's instructions naming what the house knows ('' when nothing)."""
    names = vocabulary.get("home") or []
    if not names:
        return ""
    listed = ", ".join(sorted(names, key=str.casefold))
    return (f"- `home <the sentence>` for a request about something in the house (Home Assistant knows: {listed}); "
            "`home scene <name>` / `home script <name>` when the person names a scene or a script.")
