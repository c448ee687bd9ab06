"""home: control the house through Home Assistant.

``say`` hands a sentence ("turn off the desk lamp") to Home Assistant's Assist conversation
API and answers with Home Assistant's own reply; ``scene``, ``script`` and ``run`` (a script,
else a scene: the original ``google home <automation>``) call the service of the scene or
script whose name matches. The agent advertises the names Home Assistant exposes to Assist
(entities and their aliases, areas and theirs), read over the websocket API, re-read every
``refresh`` seconds and at once when the entity or area registry changes::

    [capabilities.home]
    url = "http://homeassistant.local:8123"
    token_file = "/etc/lamcontrol/hass-token"   # a long-lived access token (or set $HASS_TOKEN)

The token never appears in results or logs.
"""

from __future__ import annotations

import json
import logging
import re
import string
import threading
import time
from functools import cached_property, lru_cache
from urllib.parse import urlsplit, urlunsplit

from lamcontrol import __version__
from lamcontrol.config import ConfigError, read_secret
from lamcontrol.language import listed_value

from .capability import Arg, Capability, Outcome, Setting, TaskFailed, Unavailable, action, require

log = logging.getLogger(__name__)

TOKEN_ENV = "HASS_TOKEN"
TOKEN_REFUSED = "Home Assistant refused the access token; make a new long-lived token."
REGISTRY_EVENTS = ("entity_registry_updated", "area_registry_updated")
# The websocket library logs every frame at debug level, the token included: keep it quiet.
WIRE_LOG = logging.getLogger(f"{__name__}.websocket")
WIRE_LOG.setLevel(logging.WARNING)
RETRY = 5.0  # seconds between attempts to reach Home Assistant for the vocabulary


class HomeError(Exception):
    """Home Assistant could not be used; ``str(exc)`` is a sentence for a person."""


def spoken(name: str) -> str:
    """A name as compared: case-folded, punctuation and a leading "the" dropped."""
    words = "".join(" " if c in string.punctuation else c for c in name.casefold()).split()
    if words[:1] == ["the"]:
        words = words[1:]
    return " ".join(words)


# -- Home Assistant's own sentences ------------------------------------------------------------

# A device advertised without its kind (``--names``) may be any of these.
DOMAINS = ("light", "switch", "fan", "cover", "lock", "climate", "media_player", "sensor", "binary_sensor",
           "scene", "script", "vacuum", "valve", "input_boolean")
HOUSE_SLOTS = {"name", "area", "floor"}
ARTICLES = ("the ", "my ", "our ")


@lru_cache(maxsize=1)
def house_intents():
    """Home Assistant's own English sentences (home-assistant-intents), as hassil reads them."""
    from hassil import Intents
    from home_assistant_intents import get_intents

    return Intents.from_dict(get_intents("en"))


class HouseSentences:
    """The coordinator's reader of house sentences: Home Assistant's own intents, filled with the device
    and area names the home agent advertises, so a clause goes to Home Assistant when it will understand it."""

    def __init__(self, lists: dict) -> None:
        from hassil import TextSlotList

        self.devices = tuple((listed_value(d), "" if isinstance(d, str) else str((d.get("context") or {}).get("domain", "")))
                             for d in lists.get("devices", ()))
        self.areas = tuple(listed_value(a) for a in lists.get("areas", ()))
        named = [(name, name, {"domain": d}) for name, domain in self.devices for d in ((domain,) if domain else DOMAINS)]
        self.slot_lists = {"name": TextSlotList.from_tuples(named, allow_template=False),
                           "area": TextSlotList.from_tuples([(a, a) for a in self.areas], allow_template=False),
                           "floor": TextSlotList.from_tuples([], allow_template=False)}
        self.names = sorted({spoken(n) for n, _ in self.devices} | {spoken(a) for a in self.areas}, key=len, reverse=True)

    def understands(self, clause: str) -> bool:
        """Home Assistant's own intents match the clause, naming one of the advertised devices or areas."""
        from hassil import recognize_all

        said = f" {spoken(clause)} "
        if not any(f" {name} " in said for name in self.names):  # cheap: they only count when they name one
            return False
        return any(HOUSE_SLOTS & set(result.entities)
                   for result in recognize_all(clause, house_intents(), slot_lists=self.slot_lists))

    def carried(self, before: str, clause: str) -> str:
        """A clause that only names a device or an area ("... and the bedroom light") does what the clause
        before it did, to that name."""
        name = spoken(clause)
        for article in ARTICLES:
            if name.startswith(article):
                name = name[len(article):]
        old = next((n for n in self.names if re.search(rf"\b{re.escape(n)}\b", before, re.I)), None)
        if name not in self.names or old is None or old == name:
            return ""
        return re.sub(rf"\b{re.escape(old)}\b", name, before, count=1, flags=re.I)


class HomeAssistant:
    """A client of one Home Assistant: REST for actions, websocket for what Assist knows."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        import requests

        parts = urlsplit(url.rstrip("/"))
        self.url = urlunsplit(parts)
        self.where = parts.netloc.rpartition("@")[2] or url
        self.websocket_url = urlunsplit(parts._replace(scheme="wss" if parts.scheme == "https" else "ws",
                                                       path=parts.path + "/api/websocket"))
        self.token = token
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers.update({"Authorization": f"Bearer {token}", "User-Agent": f"lamcontrol/{__version__}"})

    def close(self) -> None:
        self.http.close()

    def error(self, what: str) -> HomeError:
        """``Home Assistant at <host> <what>.`` (``{timeout}`` is filled in)."""
        return HomeError(f"Home Assistant at {self.where} {what.format(timeout=self.timeout)}.")

    # -- REST ---------------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict | None = None) -> object:
        """The JSON answer to one REST call; every failure becomes a HomeError sentence."""
        import requests

        try:
            response = self.http.request(method, f"{self.url}{path}", json=body, timeout=self.timeout)
        except requests.Timeout:
            raise self.error("did not answer within {timeout:g} seconds") from None
        except requests.ConnectionError:
            raise self.error("is not reachable") from None
        except requests.RequestException:
            raise self.error("could not be asked (check the url)") from None
        if response.status_code == 401:
            raise HomeError(TOKEN_REFUSED)
        if response.status_code >= 400:
            raise HomeError(f"Home Assistant could not do that (HTTP {response.status_code}).")
        try:
            return response.json()
        except ValueError:
            raise HomeError("Home Assistant answered with something that is not JSON.") from None

    def converse(self, text: str, language: str = "") -> dict:
        """Assist's answer to a sentence: the ``response`` object of the conversation API."""
        body = {"text": text, **({"language": language} if language else {})}
        answer = self.request("POST", "/api/conversation/process", body)
        response = answer.get("response") if isinstance(answer, dict) else None
        if not isinstance(response, dict):
            raise HomeError("Home Assistant answered without a response.")
        return response

    def states(self) -> list[dict]:
        answer = self.request("GET", "/api/states")
        return [s for s in answer if isinstance(s, dict)] if isinstance(answer, list) else []

    def call(self, domain: str, service: str, entity_id: str) -> None:
        self.request("POST", f"/api/services/{domain}/{service}", {"entity_id": entity_id})

    # -- websocket ----------------------------------------------------------------------

    def connect(self):
        """An authenticated websocket connection (a context manager)."""
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        try:
            ws = connect(self.websocket_url, open_timeout=self.timeout, close_timeout=self.timeout,
                         logger=WIRE_LOG, max_size=None)
        except (OSError, TimeoutError, WebSocketException):
            raise self.error("is not reachable") from None
        try:
            self.receive(ws)  # auth_required
            self.send(ws, {"type": "auth", "access_token": self.token})
            if self.receive(ws).get("type") != "auth_ok":
                raise HomeError(TOKEN_REFUSED)
        except BaseException:
            ws.close()
            raise
        return ws

    def send(self, ws, message: dict) -> None:
        from websockets.exceptions import WebSocketException

        try:
            ws.send(json.dumps(message))
        except (OSError, WebSocketException):
            raise self.error("dropped the connection") from None

    def receive(self, ws, timeout: float | None = None) -> dict | None:
        """The next message, or None when ``timeout`` (default: a HomeError after the client's) passes."""
        from websockets.exceptions import WebSocketException

        try:
            message = json.loads(ws.recv(timeout=self.timeout if timeout is None else timeout))
        except TimeoutError:
            if timeout is None:
                raise self.error("did not answer within {timeout:g} seconds") from None
            return None
        except (OSError, ValueError, WebSocketException):
            raise self.error("dropped the connection") from None
        return message if isinstance(message, dict) else {}


class Watcher:
    """Keeps the names Assist knows up to date over one websocket connection."""

    def __init__(self, client: HomeAssistant, refresh: float, on_names) -> None:
        self.client = client
        self.refresh = refresh
        self.on_names = on_names
        self.stopping = threading.Event()
        self.next_id = 0
        self.changed = False  # a registry event arrived while names were being read
        self.problem = ""  # the last problem logged, so a long outage is logged once
        self.ws = None  # the open connection, which stop() closes to wake the thread waiting on it
        self.thread = threading.Thread(target=self.run, name="home-vocabulary", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.ws is not None:
            self.ws.close()
        self.thread.join(self.client.timeout + 2)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.watch()
            except Exception as exc:  # whatever Home Assistant sends, keep watching
                if self.stopping.is_set():
                    return  # stop() closed the connection
                if str(exc) != self.problem:
                    log.warning("cannot read the names Home Assistant exposes: %s", exc,
                                exc_info=not isinstance(exc, HomeError))
                    self.problem = str(exc)
                self.stopping.wait(RETRY)

    def watch(self) -> None:
        """Subscribe to registry changes, then re-read the names on a change or every ``refresh`` s,
        sleeping in between until a message comes."""
        with self.client.connect() as ws:
            self.ws = ws
            if self.stopping.is_set():  # stop() came before it could close this connection
                return
            for event in REGISTRY_EVENTS:
                self.command(ws, "subscribe_events", event_type=event)
            due = 0.0
            while not self.stopping.is_set():
                if time.monotonic() >= due:
                    self.changed = False
                    self.on_names(self.names(ws))
                    self.problem = ""
                    due = time.monotonic() + (0.5 if self.changed else self.refresh)
                message = self.client.receive(ws, timeout=max(0.0, due - time.monotonic()))
                if message and message.get("type") == "event":
                    due = min(due, time.monotonic() + 0.5)  # registries change in bursts

    def command(self, ws, kind: str, **fields) -> object:
        """Send one command and return its result, noting events that arrive meanwhile."""
        self.next_id += 1
        self.client.send(ws, {"id": self.next_id, "type": kind, **fields})
        while True:
            message = self.client.receive(ws)
            if message.get("type") == "event":
                self.changed = True
            elif message.get("id") == self.next_id and message.get("type") == "result":
                if not message.get("success"):
                    raise HomeError(f"Home Assistant refused {kind}: {message.get('error', {}).get('message', '')}")
                return message.get("result")

    def names(self, ws) -> dict[str, list[str]]:
        """What Assist matches: exposed entities' names and aliases (scenes and scripts also on their
        own), areas' names and aliases."""
        exposed = self.command(ws, "homeassistant/expose_entity/list").get("exposed_entities", {})
        entity_ids = [e for e, assistants in exposed.items() if assistants.get("conversation")]
        states = {s.get("entity_id"): s for s in self.command(ws, "get_states")}
        registry = self.command(ws, "config/entity_registry/get_entries", entity_ids=entity_ids) or {}
        found: dict[str, set] = {"devices": set(), "areas": set(), "scenes": set(), "scripts": set()}
        for entity_id in entity_ids:
            if entity_id in states:
                called = {states[entity_id].get("attributes", {}).get("friendly_name") or entity_id.split(".")[-1],
                          *(registry.get(entity_id) or {}).get("aliases", [])}
                domain = entity_id.split(".")[0]
                found["devices"].update(json.dumps({"in": n, "context": {"domain": domain}}) for n in called
                                        if isinstance(n, str) and n.strip())
                found.get(f"{domain}s", set()).update(called)
        for area in self.command(ws, "config/area_registry/list"):
            found["areas"].update([area.get("name", ""), *area.get("aliases", [])])
        devices = [json.loads(d) for d in sorted(found.pop("devices"))]  # with their domain, for Assist's sentences
        return {"devices": devices, **{key: sorted({n.strip() for n in names if isinstance(n, str) and n.strip()},
                                                   key=str.casefold) for key, names in found.items()}}


class Home(Capability):
    name = "home"
    summary = "Switches lights, scenes and scripts, and answers questions, through Home Assistant."
    extra = "home"
    requirements = ("requests", "websockets")
    config_schema = {
        "url": Setting("", "Home Assistant's address, e.g. http://homeassistant.local:8123"),
        "token": Setting("", f"a long-lived access token; better: token_file or ${TOKEN_ENV}"),
        "token_file": Setting("", f"file holding the long-lived access token (or set ${TOKEN_ENV})"),
        "timeout": Setting(10.0, "seconds to wait for Home Assistant to answer"),
        "language": Setting("", "language of the sentences (default: Home Assistant's own)"),
        "refresh": Setting(60.0, "seconds between re-reads of the names Home Assistant exposes"),
    }

    def __init__(self, settings: dict | None = None) -> None:
        super().__init__(settings)
        if self.settings["timeout"] <= 0 or self.settings["refresh"] < 1:
            raise ValueError("[capabilities.home] timeout must be above 0 and refresh at least 1 second")
        self.known: dict[str, list[str]] = {}
        self.watcher: Watcher | None = None

    @cached_property
    def token(self) -> str:
        return read_secret(self.settings["token"], self.settings["token_file"], TOKEN_ENV).strip()

    @cached_property
    def client(self) -> HomeAssistant:
        return HomeAssistant(self.settings["url"], self.token, self.settings["timeout"])

    def check(self) -> None:
        super().check()
        url = urlsplit(self.settings["url"])
        if url.scheme not in ("http", "https") or not url.netloc:
            raise Unavailable("home needs Home Assistant's address: set url = \"http://host:8123\" "
                              "in [capabilities.home]")
        try:
            token = self.token
        except ConfigError as exc:
            raise Unavailable(f"home cannot read its access token: {exc}") from None
        if not token:
            raise Unavailable(f"home needs a long-lived access token from Home Assistant: set ${TOKEN_ENV} "
                              "or token_file in [capabilities.home]")

    def start(self) -> None:
        self.watcher = Watcher(self.client, self.settings["refresh"], self._set_names)
        self.watcher.start()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if "client" in self.__dict__:
            self.client.close()

    def names(self) -> dict[str, list[str]]:
        return dict(self.known)

    @classmethod
    def given_names(cls, names: list[str]) -> dict[str, list]:
        """A house's names are devices and areas both; "kitchen light" also names the kitchen."""
        rooms = [name.rsplit(" ", 1)[0] for name in names if " " in name.strip()]
        return {**super().given_names(names), "devices": list(names), "areas": list(dict.fromkeys([*names, *rooms]))}

    @classmethod
    def recogniser(cls, lists: dict) -> HouseSentences:
        return HouseSentences(lists)

    def _set_names(self, names: dict[str, list[str]]) -> None:
        if names != self.known:
            self.known = names
            log.info("Home Assistant exposes %d devices and %d areas", len(names["devices"]), len(names["areas"]))
            self.changed()

    # -- actions ------------------------------------------------------------------------

    lists = {"devices": [], "areas": [], "scenes": [], "scripts": []}

    @action(syntax=["home {text}", "home say {text}"], args=[Arg("text", "text", "something to tell the home")], assist="text",
            examples=[("turn off the living room lights", "home turn off the living room lights")])
    def say(self, args: dict) -> Outcome:
        """Hand a sentence about the house to Home Assistant's Assist (what its own intents understand)."""
        text = args["text"]
        try:
            response = self.client.converse(text, self.settings["language"])
        except HomeError as exc:
            raise TaskFailed(str(exc)) from None
        speech = str(response.get("speech", {}).get("plain", {}).get("speech") or "").strip()
        data = response.get("data") if isinstance(response.get("data"), dict) else {}
        done = [t.get("name") for t in data.get("success", []) if isinstance(t, dict)]
        failed = [t.get("name") for t in data.get("failed", []) if isinstance(t, dict)]
        if response.get("response_type") == "error" or failed and not done:
            raise TaskFailed((speech or f"Home Assistant could not do {text!r}.") + self._older(text))
        return Outcome(speech or "Done.", {"speech": speech, "response_type": response.get("response_type"),
                                           "success": done, "failed": failed})

    def _older(self, text: str) -> str:
        """When Home Assistant could not do a sentence that the newest Home Assistant sentences (which the
        coordinator checks against) read with names it has: say which release this one is."""
        if not HouseSentences(self.known).understands(text):
            return ""
        try:
            version = str(self.client.request("GET", "/api/config").get("version") or "")
        except (HomeError, AttributeError):
            version = ""
        return (f" This Home Assistant{f' ({version})' if version else ''} does not know that sentence; newer "
                "releases of Home Assistant do: update it, or say it another way.")

    @action(syntax=["home scene {name}"], args=[Arg("name", "name", "a scene name", names="scenes")],
            idempotent=True, sentences=["(activate|turn on|start|set|switch to) [the] {name} scene"])
    def scene(self, args: dict) -> Outcome:
        """Activate a scene."""
        return self._turn_on(args["name"], ("scene",))

    @action(syntax=["home script {name}"], args=[Arg("name", "name", "a script name", names="scripts")],
            sentences=["(run|start|execute|trigger) [the] {name} script"])
    def script(self, args: dict) -> Outcome:
        """Run a script."""
        return self._turn_on(args["name"], ("script",))

    @action("run", syntax=["home run {name}", "google home {name}"],
            args=[Arg("name", "name", "a script or scene name", names="scripts")])
    def run_named(self, args: dict) -> Outcome:
        """A script of that name, else a scene (what a Google Home automation became)."""
        return self._turn_on(require(args, "name"), ("script", "scene"))

    def _turn_on(self, name: str, domains: tuple[str, ...]) -> Outcome:
        try:
            found = self._find(name, domains)
            if found is None:
                kinds = " or ".join(domains)
                raise TaskFailed(f"Home Assistant has no {kinds} called {name.strip()}.")
            entity_id, friendly = found
            domain = entity_id.split(".")[0]
            self.client.call(domain, "turn_on", entity_id)
        except HomeError as exc:
            raise TaskFailed(str(exc)) from None
        verb = "Activated" if domain == "scene" else "Started"
        return Outcome(f"{verb} {friendly}.", {"entity_id": entity_id})

    def _find(self, name: str, domains: tuple[str, ...]) -> tuple[str, str] | None:
        """(entity id, friendly name) of the first domain's entity that goes by ``name``."""
        wanted = spoken(name)
        for domain in domains:
            if wanted.endswith(f" {domain}"):
                wanted = wanted[: -len(domain) - 1]
        by_domain: dict[str, tuple[str, str]] = {}
        for state in self.client.states():
            entity_id = str(state.get("entity_id", ""))
            domain, _, object_id = entity_id.partition(".")
            friendly = (state.get("attributes") or {}).get("friendly_name") or object_id.replace("_", " ")
            if domain in domains and wanted in (spoken(friendly), spoken(object_id.replace("_", " "))):
                by_domain.setdefault(domain, (entity_id, friendly))
        return next((by_domain[d] for d in domains if d in by_domain), None)
