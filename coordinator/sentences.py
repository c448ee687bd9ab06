"""The offline sentence grammar: loose English to rigid commands, with no LLM.

It knows the phrasings people use for what the agents can do ("open youtube music and play
weezer", "can you skip back twice on my computer", "text Jason on telegram to check the
shopping list") and writes the rigid command text, which then goes through
:func:`~coordinator.grammar.parse_chain` like any other parser's output. Prompts already in
the rigid language pass through unchanged.

Choices worth knowing:

* "play X" (on YouTube, YouTube Music, or nowhere in particular) is ``browser youtube play X``;
  the grammar has no YouTube Music command, and playing the first YouTube result is what
  "play weezer" means to most people. "open youtube music" alone opens https://music.youtube.com.
* "search for X" and "look up X" with no site use Google; "buy", "shop for" and "order" use
  Amazon (only ever a search). "watch X" plays it on YouTube.
* "open X" opens a web address when X looks like one ("rabbit.tech", "rabbit dot tech"),
  a well-known site by name, and otherwise starts the application X (agents only start
  allow-listed ones). An application the computer agents advertise in the vocabulary wins
  over a site of the same name.
* Nothing is guessed: a message with no recipient, platform or text, a search with no query,
  a volume out of range all give no command and a reason naming what is missing. Questions,
  chit-chat and attempts to change the rules give no command either.
* Per-source transcript (``Context.transcript``, oldest first): "do that again" repeats the
  last command; "more"/"less" after a volume change nudge it again; "now on amazon" repeats
  the last search on another site.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .grammar import MESSENGERS, NAME, ParseResult, parse_chain

if TYPE_CHECKING:
    from .parsing import Context

RIGID_VERBS = {"browser", "computer", "ai", "openinterpreter", "echo", "home", "google", *MESSENGERS}
MAX_REPEAT = 10
MAX_PROMPT = 1000  # characters; about three minutes of speech

# -- words ------------------------------------------------------------------------------

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = {word: n for n, word in enumerate(_UNITS)}
NUMBER_WORDS.update({word: 20 + 10 * n for n, word in enumerate(_TENS)})
NUMBER_WORDS.update({"a hundred": 100, "one hundred": 100, "hundred": 100, "half": 50, "max": 100,
                     "maximum": 100, "full": 100, "zero": 0, "none": 0})
NUMBER = r"(\d{1,3}|(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:[- ](?:one|two|three|four|five|six|seven|eight|nine))?|" \
         r"(?:a |one )?hundred|" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r"|half|max(?:imum)?|full)"
TIMES = {"once": 1, "twice": 2, "thrice": 3}

PLATFORMS = {"telegram": "telegram", "discord": "discord", "facebook": "facebook", "messenger": "facebook",
             "facebook messenger": "facebook", "fb": "facebook", "fb messenger": "facebook"}
PLATFORM = r"(facebook messenger|fb messenger|telegram|discord|facebook|messenger|fb)"
NOT_NAMES = {"a", "an", "the", "my", "me", "us", "you", "him", "her", "them", "it", "this", "that",
             "someone", "somebody", "everyone", "message", "text", "note", "dm", "on", "to", "saying", "and"}
PRONOUNS = {"me", "us", "you", "him", "her", "them", "it", "someone", "somebody", "everyone"}

SITES = {
    "youtube": "https://www.youtube.com", "youtube music": "https://music.youtube.com",
    "google": "https://www.google.com", "gmail": "https://mail.google.com", "amazon": "https://www.amazon.com",
    "my email": "https://mail.google.com", "my inbox": "https://mail.google.com", "my mail": "https://mail.google.com",
    "email": "https://mail.google.com", "reddit": "https://www.reddit.com", "wikipedia": "https://www.wikipedia.org",
    "github": "https://github.com", "netflix": "https://www.netflix.com", "twitter": "https://x.com",
    "facebook": "https://www.facebook.com", "instagram": "https://www.instagram.com",
    "linkedin": "https://www.linkedin.com", "rabbit": "https://www.rabbit.tech",
}
SITE_TARGETS = {"youtube": "youtube", "youtube music": "youtube", "google": "google", "gmail": "gmail",
                "my email": "gmail", "my inbox": "gmail", "my mail": "gmail", "email": "gmail", "amazon": "amazon"}
SEARCH_SITE = (r"(youtube music|youtube|yt|google|the web|the internet|online|amazon|gmail|"
               r"my (?:e-?mail|inbox|mail|gmail)|e-?mail)")
DEVICE = r"(?:(?:my|the|this|our) )?(?:computer|pc|laptop|desktop|mac|machine|system|workstation)"
URLISH = re.compile(r"^(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<host>(?:[a-z0-9-]+\.)+[a-z]{2,}|localhost|"
                    r"\d{1,3}(?:\.\d{1,3}){3})"
                    r"(?::\d{1,5})?(?:/\S*)?$", re.I)

# -- outcomes of one clause -------------------------------------------------------------


@dataclass(frozen=True)
class Intent:
    """One understood clause: the rigid text, and what a neighbouring clause may change."""

    text: str
    opens: str = ""  # the search site this clause opened ("open amazon")
    search: tuple[str, str] | None = None  # (query, "play" or "") when the site was not named


class Missing(Exception):
    """The clause is a command with a part missing; the message says which."""


# -- cleaning ---------------------------------------------------------------------------

_LEADING = [re.compile(p, re.I) for p in (
    r"^(?:hey|hi|hello|ok|okay|yo)[, ]+(?:rabbit|r1|lam|computer|there)\b[,.!]?\s*",
    r"^(?:please|kindly|just|quickly|now|also|then|and|so|um+|uh+|oh|yo|hey|ok|okay)\b[,]?\s+",
    r"^(?:can|could|would|will) you(?: please| kindly)?\s+",
    r"^(?:i (?:want|need|would like|'d like) (?:you )?to|i'd like you to|go ahead and|"
    r"i want|i'd like|i would like|let's|lets|help me)\s+",
)]
_TRAILING = [re.compile(p, re.I) for p in (
    r"[,]?\s+(?:please|for me|thanks|thank you|right now|now|asap|real quick|quickly)$",
    r"\s+(?:on|in|from|using) " + DEVICE + r"$",
)]


def clean(text: str) -> str:
    """The prompt without politeness, wake words, quotes and end punctuation."""
    text = " ".join(text.replace("\u2019", "'").split()).strip(" \"'")
    previous = None
    while text != previous:
        previous = text
        text = text.rstrip(".!?,; ").strip()
        for pattern in _LEADING + _TRAILING:
            text = pattern.sub("", text).strip()
    return text


def number(word: str) -> int | None:
    word = word.lower().replace("-", " ").strip()
    if word.isdigit():
        return int(word)
    if word in NUMBER_WORDS:
        return NUMBER_WORDS[word]
    tens, _, unit = word.partition(" ")
    if tens in NUMBER_WORDS and unit in NUMBER_WORDS:
        return NUMBER_WORDS[tens] + NUMBER_WORDS[unit]
    return None


# -- screening --------------------------------------------------------------------------

_JAILBREAK = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass)\b.{0,40}\b(?:instructions?|rules|prompts?|guidelines|"
    r"restrictions|programming|directives?|guardrails)\b|\byou are now\b|\bdeveloper mode\b|\bjailbreak|"
    r"\bsystem prompt\b|\bnew instructions\b|\b(?:pretend|act as if) (?:you|there)\b", re.I)
_QUESTION = re.compile(r"^(?:what|who|whom|whose|why|how|when|where|which|is|are|am|was|were|do|does|did|"
                       r"should|shall|may|might|tell me (?:about|why|how|what|who|a))\b", re.I)


def screen(prompt: str) -> ParseResult | None:
    """A final answer for prompts no parser should see (empty, or trying to change the rules)."""
    if not prompt.strip(" \t\r\n.!?,;\"'`"):
        return ParseResult(parser="sentences", reason="The prompt is empty.")
    if len(prompt) > MAX_PROMPT:
        return ParseResult(parser="sentences", reason="The prompt is too long; say one thing at a time.")
    if _JAILBREAK.search(prompt):
        return ParseResult(parser="sentences", reason="I only carry out commands; I can't change my instructions.")
    return None


# -- the clause rules -------------------------------------------------------------------


def _m(pattern: str, text: str) -> re.Match | None:
    return re.fullmatch(pattern, text, re.I)


def power(c: str, ctx: Context) -> Intent | None:
    if _m(r"lock(?: (?:it|up))?(?: " + DEVICE + r")?(?: (?:screen|up|down))?|lock(?: (?:the|my))? ?screen", c):
        return Intent("computer power lock")
    if _m(r"(?:shut ?down|shut off|power (?:off|down))(?: " + DEVICE + r")?|(?:turn|switch) off " + DEVICE
          + r"|(?:shut|turn|power|switch) " + DEVICE + r" (?:down|off)", c):
        return Intent("computer power shutdown")
    if _m(r"(?:turn|switch) (?:it )?off", c):
        raise Missing("What should I turn off: the computer, the sound or the music?")
    if _m(r"(?:restart|reboot)(?: " + DEVICE + ")?|(?:restart|reboot) it", c):
        return Intent("computer power restart")
    if _m(r"(?:put|send|set) " + DEVICE + r" to sleep|(?:sleep|suspend|hibernate)(?: " + DEVICE + ")?|"
          r"(?:make|let) " + DEVICE + " (?:go to )?sleep|go to sleep", c):
        return Intent("computer power sleep")
    return None


_SOUND = r"(?:(?:the|my) )?(?:volume|sound|audio|music|speakers?|it|this|that|computer|pc|tunes)"


def volume(c: str, ctx: Context) -> Intent | None:
    if _m(r"(?:mute|silence|kill)(?: " + _SOUND + r")?|turn (?:off )?(?:the )?(?:sound|volume|audio)(?: off)?|"
          r"(?:sound|volume) off|be quiet|shut up|quiet", c):
        return Intent("computer volume mute")
    if _m(r"unmute(?: " + _SOUND + r")?|turn (?:the )?(?:sound|volume|audio) (?:back )?on|(?:sound|volume) on", c):
        return Intent("computer volume unmute")
    step = r"(?: (?:a|one) (?:bit|little|notch|tad|step))?(?: more)?"
    if _m(r"(?:turn|crank|pump|bump|bring) (?:up )?" + _SOUND + r" up" + step + r"|(?:turn|crank|pump|bump) up " + _SOUND
          + "|(?:increase|raise|boost) " + _SOUND + step + r"|volume up|(?:make it |a (?:bit|little) )?louder"
          + r"|(?:sound|audio) up|turn it up" + step + r"|up the volume|make " + _SOUND + r"(?: a (?:bit|little))? louder", c):
        return Intent("computer volume up")
    if _m(r"(?:turn|bring) (?:down )?" + _SOUND + r" down" + step + r"|turn down " + _SOUND
          + "|(?:decrease|lower|reduce|drop) " + _SOUND + step + r"|volume down|(?:make it |a (?:bit|little) )?"
          r"(?:quieter|softer)|(?:sound|audio) down|turn it down" + step
          + r"|make " + _SOUND + r"(?: a (?:bit|little))? (?:quieter|softer)", c):
        return Intent("computer volume down")
    level = _m(r"(?:(?:set|change|put|turn|make|adjust|bring|move)(?: (?:up|down))? )?(?:(?:the|my) )?"
               r"(?:volume|sound|audio)(?: level)?(?: (?:up|down))?(?: (?:to|at|on))? " + NUMBER + r"(?: ?%| percent)?"
               r"|(?:make it|set it to|turn it to) " + NUMBER + r"(?: ?%| percent)"
               r"|" + NUMBER + r"(?: ?%| percent)? volume|volume (?:to )?" + NUMBER, c)
    if level:
        value = number(next(g for g in level.groups() if g))
        if value is None or not 0 <= value <= 100:
            raise Missing("The volume must be set from 0 to 100 percent.")
        return Intent(f"computer volume {value}")
    if _m(r"(?:set|change|adjust) (?:the )?volume(?: to)?|volume", c):
        raise Missing("What level should the volume be, from 0 to 100?")
    return None


_MEDIA = r"(?: (?:the|my|this|that))?(?: (?:music|song|track|video|playback|audio|player|tune|tunes|it|spotify|youtube|podcast))?"


def media(c: str, ctx: Context) -> Intent | None:
    c = re.sub(r"^(?:hit|press|push) ", "", c, flags=re.I)
    if _m(r"(?:pause|stop|hold)" + _MEDIA + r"(?: playing| playback)?|turn off the music|stop playing(?: music)?", c):
        return Intent("computer media pause")
    if _m(r"(?:play|resume|continue|unpause)" + _MEDIA + r"(?: playing| playback)?|"
          r"(?:start|keep) (?:the )?(?:music|playing|playback)(?: again)?|play (?:some )?music|resume playing", c):
        return Intent("computer media play")
    if _m(r"(?:(?:play|go to|skip to) (?:the )?)?next(?: (?:song|track|one|video|tune))?(?: please)?|"
          r"skip(?: (?:the|this|that))?(?: (?:song|track|one|video|tune|ahead|forward))?|"
          r"skip (?:to )?(?:the )?next(?: (?:song|track|one|video))?|forward", c):
        return Intent("computer media next")
    if _m(r"(?:(?:play|go (?:back )?to) (?:the )?)?(?:previous|last|prior)(?: (?:song|track|one|video|tune))?(?: again)?|"
          r"(?:skip|go|jump) back(?: (?:a|one) (?:song|track|video))?|back(?: (?:a|one) (?:song|track))?|"
          r"previous|rewind|(?:play )?the (?:song|track|video) before(?: this(?: one)?)?", c):
        return Intent("computer media back")
    return None


def _site_url(target: str) -> str | None:
    """A full address for something that looks like one ("rabbit.tech", "rabbit dot tech")."""
    target = re.sub(r"\s+dot\s+", ".", target.strip(), flags=re.I).replace(" ", "") \
        if re.search(r"\bdot\b", target, re.I) else target.strip()
    match = URLISH.match(target)
    if not match:
        return None
    scheme = (match.group("scheme") or "").lower()
    if scheme and scheme not in ("http", "https"):
        raise Missing("I can only open http:// or https:// addresses.")
    return target if scheme else "https://" + target


def _apps(ctx: Context) -> set[str]:
    return {name.lower() for name in ctx.vocabulary.get("computer", [])}


def browse(c: str, ctx: Context) -> Intent | None:
    """Opening a site or an application by name."""
    opened = _m(r"(?:open|go to|goto|visit|navigate to|browse to|load|pull up|bring up|take me to|show me|launch|start|"
                r"run|fire up|boot up|start up)(?: up)?(?: (?:the|my|a))?(?: (?:web ?site|website|page|site|url|"
                r"web ?page|app|application|program))? (?P<target>.+?)(?: (?:web ?site|website|page|site|dot com|"
                r"app|application|program))?(?: (?:in|on) (?:the |my )?browser)?", c)
    if not opened:
        if _m(r"open|launch|start|run|go to|visit", c):
            raise Missing("What should I open?")
        return None
    target = opened.group("target").strip()
    verb = c.split()[0].lower()
    if re.search(r" dot com$", c, re.I) and "." not in target:
        target += ".com"
    url = _site_url(target)
    if url:
        return Intent(f"browser site {url}")
    name = target.lower()
    if name in ("website", "web site", "site", "page", "web page", "app", "application", "program", "url"):
        raise Missing("Which site or application should I open?")
    starts_apps = verb in ("open", "launch", "start", "run", "fire", "boot")
    if name in _apps(ctx) and starts_apps:
        return Intent(f"computer run {target}")
    if name in SITES and verb not in ("launch", "run", "start", "fire", "boot"):
        return Intent(f"browser site {SITES[name]}", opens=SITE_TARGETS.get(name, ""))
    if not starts_apps or len(name.split()) > 4 or re.search(r"\b(?:and|then|to|with|for|of)\b", name):
        return None
    return Intent(f"computer run {'browser' if name in ('browser', 'web browser') else target}")


_QUERY_LEAD = re.compile(r"^(?:for|about|up|me|some|an?|a video of|videos? of)(?:\s+|$)", re.I)


def _query(text: str) -> str:
    previous = None
    while text != previous:
        previous, text = text, _QUERY_LEAD.sub("", text.strip()).strip(" \"'")
    return text


def _target(site: str | None) -> str | None:
    if not site:
        return None
    site = site.lower()
    if site in ("the web", "the internet", "online"):
        return "google"
    if site == "yt" or site.startswith("youtube"):
        return "youtube"
    if "mail" in site:
        return "gmail"
    return site


def _search_intent(site: str | None, query: str, play: bool = False) -> Intent:
    target = _target(site)
    query = _query(query)
    where = {"youtube": "YouTube", "google": "Google", "amazon": "Amazon", "gmail": "your email"}
    if not query:
        raise Missing(f"What should I {'play' if play else 'search'}"
                      f"{' on ' + where[target] if target else ''}{'' if play else ' for'}?")
    if target == "gmail":
        query = re.sub(r"^(from|to)\s+(\S+)", r"\1:\2", query, flags=re.I)
    site_named = target is not None
    target = target or ("youtube" if play else "google")
    if play and target != "youtube":
        raise Missing(f"I can only play things on YouTube, not {where[target]}.")
    text = f"browser {target} {'play ' if play else ''}{query}"
    return Intent(text, search=None if site_named else (query, "play" if play else ""))


def search(c: str, ctx: Context) -> Intent | None:
    on = r"(?: (?:on|in|using|with|at|from|via) " + SEARCH_SITE + r")"
    play = _m(r"(?:play|put on|listen to|hear|watch|stream|start playing|queue up|find and play)(?: me)? (?P<q>.+?)" + on + "?", c)
    if play:
        return _search_intent(play.group(2), play.group("q"), play=True)
    shop = _m(r"(?:buy|shop for|order|purchase|find me|get me)(?: some| a| an)? (?P<q>.+?)" + on + "?", c)
    if shop and (shop.group(2) or c.split()[0].lower() in ("buy", "shop", "order", "purchase")):
        return _search_intent(shop.group(2) or "amazon", shop.group("q"))
    named = _m(r"(?:search|look|check|go|browse)(?: on| in| up)? " + SEARCH_SITE + r"(?: (?:for|about))?(?: (?P<q>.*))?|"
               + SEARCH_SITE + r"(?: search)?(?: for)? (?P<q2>.+)", c)
    if named:
        site = named.group(1) or named.group(3)
        query = named.group("q") or named.group("q2") or ""
        if site.lower() in ("online", "the web", "the internet", "e-mail", "email") and not named.group(1):
            return None
        if _target(site) == "youtube" and re.match(r"play\s", query, re.I):
            return _search_intent(site, query[5:], play=True)
        if not query and c.split()[0].lower() in ("check", "go", "browse"):
            return Intent(f"browser site {SITES.get(site.lower(), SITES[_target(site)])}")
        return _search_intent(site, query)
    mail = _m(r"(?:find|search|show me|check|look for|search for)(?: (?:my|all|the))? (?:e-?mails?|mail|messages) "
              r"(?P<q>(?:from|about|to|with|containing|on) .+)", c)
    if mail:
        return _search_intent("gmail", mail.group("q"))
    shown = _m(r"(?:show me|pull up|bring up|find)(?: some)? (?P<q>.+?)" + on, c)
    if shown:
        return _search_intent(shown.group(2), shown.group("q"))
    generic = _m(r"(?:search|search for|look up|lookup|look for|find|find me|google|search up|research|bing)"
                 r"(?: (?P<q>.+?))?" + on + "?", c)
    if generic:
        return _search_intent(generic.group(2) or ("google" if c.lower().startswith("google") else None),
                              generic.group("q") or "")
    return None


_VERB = r"(?:text|message|msg|dm|ping|tell|write(?: to)?|send(?: a)?(?: (?:message|text|dm|note))?(?: to)?)"
_VIA = r"(?:on|via|over|in|through|using|with)"
_BODY_LEAD = re.compile(r"^\s*(?:[,:\-]\s*)?(?:(?:and )?(?:saying|that says|which says|to say|say|and say|"
                        r"and tell (?:him|her|them)|telling (?:him|her|them)|with the message|the message|"
                        r"message|that|to)\b[:,]?\s*)?", re.I)


def _body(text: str) -> str:
    return _BODY_LEAD.sub("", text.strip(), count=1).strip().strip("\"'").strip()


def message(c: str, ctx: Context) -> Intent | None:
    forms = (
        r"(?:on|via|using|in) " + PLATFORM + r",? " + _VERB + r" (?P<name>\S+)(?P<rest>.*)",
        r"let (?P<name>\S+) know(?: " + _VIA + " " + PLATFORM + r")?(?P<rest>.*)",
        r"send (?P<name>\S+) an? " + PLATFORM + r"(?: message| text| dm)?(?P<rest>.*)",
        r"(?:send )?(?:an? )?" + PLATFORM + r"(?: (?:message|text|dm|msg|note))? to (?P<name>\S+)(?P<rest>.*)",
        r"(?:send )?(?:an? )?" + PLATFORM + r" (?:message|text|dm|msg|note) (?P<name>\S+)(?P<rest>.*)",
        r"send(?: an?)? (?:message|text|dm|note) (?:to )?(?P<name>\S+)(?: " + _VIA + " " + PLATFORM + r")?(?P<rest>.*)",
        r"(?:" + PLATFORM + r"|" + _VERB + r") (?P<name>\S+)(?: " + _VIA + " " + PLATFORM + r")?(?P<rest>.*)",
    )
    for form in forms:
        match = _m(form, c)
        if match:
            break
    else:
        if _m(r"(?:send )?(?:an? )?(?:message|text|dm)(?: " + _VIA + " " + PLATFORM + r")?(?: .*)?", c):
            raise Missing("Who should I send the message to?")
        return None
    platforms = [g for g in match.groups() if g and g.lower() in PLATFORMS]
    name, rest = match.group("name").strip(",:"), match.group("rest")
    tail = re.fullmatch(r"(?P<rest>.*?)\s+" + _VIA + " " + PLATFORM, rest, re.I)
    if tail and not platforms:
        rest, platforms = tail.group("rest"), [tail.group(2)]
    if name.lower() in PLATFORMS:  # "send a message on telegram", "text on telegram"
        raise Missing(f"Who should I message on {PLATFORMS[name.lower()]}?")
    if name.lower() in PRONOUNS or name.lower() in NOT_NAMES:
        if c.split()[0].lower() in ("tell", "write"):
            return None
        named = re.search(r"\b" + PLATFORM + r"\b", c, re.I)
        raise Missing(f"Who should I message on {PLATFORMS[named.group(1).lower()]}?" if named
                      else "Who should I send the message to?")
    if not NAME.match(name):
        return None
    contacts = {n.lower(): n for n in ctx.vocabulary.get("messaging", [])}
    name = contacts.get(name.lower(), name)
    body = _body(rest)
    if not platforms:
        if c.split()[0].lower() in ("tell", "write") and not body:
            return None
        raise Missing(f"Should I message {name} on telegram, discord or facebook?")
    platform = PLATFORMS[platforms[0].lower()]
    if not body:
        raise Missing(f"What should the {platform} message to {name} say?")
    return Intent(f"{platform} {name} {body}")


_AI = r"(?:the |an |my |your )?(?:ai|a\.i\.|assistant|groq|llm|chat ?bot|chat ?gpt|open ?interpreter|language model)"


def ai(c: str, ctx: Context) -> Intent | None:
    asked = _m(r"(?:ask|have|get|use|let|tell|query|consult) " + _AI + r"(?:\b[,:]?)(?: (?:to|about|for))?(?: (?P<q>.*))?", c) \
        or _m(r"(?:ai|open ?interpreter)[,:]? (?P<q>.+)", c)
    if asked:
        question = (asked.group("q") or "").strip()
        if not question:
            raise Missing("What should I ask the AI?")
        return Intent(f"ai {question}")
    if _m(r"(?:draft|compose|write(?: me)?|summari[sz]e|translate|proofread|rewrite|brainstorm) .+", c) and \
            not _m(r"write (?:to|a message to) .+", c):
        return Intent(f"ai {c}")
    return None


def _last(ctx: Context, pattern: str) -> re.Match | None:
    for command in reversed(ctx.transcript):
        for part in reversed(command.split("&&")):
            match = re.fullmatch(pattern, part.strip(), re.I)
            if match:
                return match
    return None


def follow_up(c: str, ctx: Context) -> Intent | None:
    """Prompts that only make sense after an earlier command of the same source."""
    if _m(r"(?:do|run|try)(?: (?:that|it|this|the same(?: thing)?))?(?: one more time| again| once more)|again|"
          r"repeat(?: (?:that|it|the last (?:command|one)))?|one more time|once more|same (?:thing )?again|"
          r"do the same(?: thing)?(?: again)?", c):
        if not ctx.transcript:
            raise Missing("There is nothing to repeat yet.")
        return Intent(ctx.transcript[-1])
    if _m(r"(?:a (?:bit|little) |even |some |much )?(?:more|higher|louder still|up more)|more volume|keep going", c):
        last = _last(ctx, r"computer volume (\S+)")
        if last:
            return Intent(f"computer volume {'down' if last.group(1).lower() == 'down' else 'up'}")
        raise Missing("More of what? I have no earlier volume change to repeat.")
    if _m(r"(?:a (?:bit|little) |even |some |much )?(?:less|lower|quieter still|down more)", c):
        if _last(ctx, r"computer volume \S+"):
            return Intent("computer volume down")
        raise Missing("Less of what? I have no earlier volume change to repeat.")
    other = _m(r"(?:now |and )?(?:(?:do|try|search|look|check|find) )?(?:(?:the same|that|it|this)(?: thing)? )?"
               r"(?:on|in|with|using) (youtube|google|amazon|gmail)(?: instead| too| as well)?|"
               r"(?:now |and )?(?:try )?(youtube|google|amazon|gmail) instead", c)
    if other:
        last = _last(ctx, r"browser (?:google|youtube|amazon|gmail)(?: play)? (.+)")
        if not last:
            raise Missing("What should I search for? I have no earlier search to repeat.")
        return Intent(f"browser {(other.group(1) or other.group(2)).lower()} {last.group(1)}")
    return None


RULES = (follow_up, power, volume, media, message, ai, search, browse)

# -- putting clauses together -----------------------------------------------------------

_SPLIT = re.compile(r"\s*(?:,\s*)?\b(?:and then|and also|and after that|after that|then|and)\b,?\s*|\s*;\s*|\s*&&\s*", re.I)
_REPEAT = re.compile(r"^(?P<c>.+?)\s+(?P<n>twice|thrice|once|(?:\d+|" + "|".join(_UNITS[2:11]) + r") times)$", re.I)
_COUNTED = re.compile(r"^(?P<c>(?:skip|go|jump)(?: (?:forward|ahead|back))?)\s+(?P<n>\d+|" + "|".join(_UNITS[2:11])
                      + r") (?:songs|tracks|videos|tunes)$", re.I)


def _clause(c: str, ctx: Context) -> list[Intent] | None:
    """The intents of one clause (several for "skip twice"), None when not understood."""
    c = clean(c)
    if not c:
        return None
    count = 1
    repeated = _REPEAT.match(c) or _COUNTED.match(c)
    if repeated:
        n = repeated.group("n").lower()
        count = TIMES.get(n) or number(n.split()[0]) or 1
        c = repeated.group("c")
    for rule in RULES:
        intent = rule(c, ctx)
        if intent:
            if count > 1 and not re.fullmatch(r"computer (?:media \w+|volume (?:up|down))", intent.text) \
                    and rule is not follow_up:
                raise Missing("I can only repeat media keys and volume steps.")
            return [intent] * min(count, MAX_REPEAT)
    return None


def _merge(intents: list[Intent]) -> list[Intent]:
    """ "open amazon and search for boots" is one search on Amazon, not two commands."""
    merged: list[Intent] = []
    for intent in intents:
        before = merged[-1] if merged else None
        if before and before.opens and intent.search and (before.opens == "youtube" or not intent.search[1]):
            query, play = intent.search
            merged[-1] = replace(intent, text=f"browser {before.opens} {play + ' ' if play else ''}{query}", search=None)
            continue
        merged.append(intent)
    return merged


def _understand(text: str, ctx: Context) -> list[Intent]:
    """Intents for the whole prompt: split into clauses when each part is understood, else whole."""
    parts = [p for p in _SPLIT.split(text) if p and p.strip()]
    problem: Missing | None = None
    if len(parts) > 1:
        found: list[Intent] = []
        try:
            for part in parts:
                intents = _clause(part, ctx)
                if intents is None:
                    if found:
                        problem = Missing(f"I didn't understand \"{clean(part)}\".")
                    break
                found.extend(intents)
            else:
                return _merge(found)
        except Missing as exc:
            problem = exc
    try:
        whole = _clause(text, ctx)
    except Missing:
        if problem:
            raise problem from None
        raise
    if whole is None and problem:
        raise problem
    return whole or []


def _not_understood(text: str) -> str:
    if text.endswith("?") or _QUESTION.match(text):
        return "That sounds like a question; say \"ask the AI\" and the question to have it answered."
    return "That is not something I can do."


class SentenceParser:
    """Loose English to rigid commands, offline."""

    name = "sentences"

    def parse(self, prompt: str, context: Context) -> ParseResult:
        screened = screen(prompt)
        if screened:
            return screened
        rigid = parse_chain(prompt, context.known)
        if rigid.commands:
            return rigid
        text = clean(prompt)
        try:
            intents = _understand(text, context)
        except Missing as exc:
            return ParseResult(parser=self.name, reason=str(exc))
        if not intents:
            first = text.split()[0].lower() if text else ""
            reason = rigid.reason if first in RIGID_VERBS else _not_understood(prompt.strip())
            return ParseResult(parser=self.name, reason=reason)
        result = parse_chain(" && ".join(intent.text for intent in intents), context.known)
        result.parser = self.name
        return result
