"""computer: volume, media keys, allow-listed applications and power, on Linux, macOS and Windows.

Volume goes through the system mixer where there is one (PipeWire's ``wpctl`` or PulseAudio's
``pactl`` on Linux, ``osascript`` on macOS), so the answer says the level actually reached;
otherwise the volume keys are pressed. Media control asks the running player through
``playerctl`` when there is one, else presses the media keys. Keys go through the XTest
extension on X11 (pyautogui's X11 backend has no media keys and silently skips them) and
through pyautogui on Windows and macOS.

Nothing here runs a shell: every command is an argument list, and ``run`` starts only the
applications named in ``[capabilities.computer] allowed_apps``::

    [capabilities.computer.allowed_apps]
    firefox = ["firefox", "--new-window"]       # a command
    calculator = "org.gnome.Calculator"         # a desktop entry (Linux) or app name (macOS)
"""

from __future__ import annotations

import configparser
import importlib.util
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .capability import Arg, Capability, Entity, Outcome, Sentences, Setting, Shared, TaskFailed, Unavailable, action

VOLUME_WORDS = ("up", "down", "mute", "unmute")
MEDIA_KEYS = ("play", "pause", "next", "back")
POWER_MODES = ("lock", "sleep", "restart", "shutdown")
LEVEL = Arg("level", "int", "a volume level", choices=VOLUME_WORDS, minimum=0, maximum=100, repeats=("up", "down"))
KEY = Arg("key", "choice", "a media key", choices=MEDIA_KEYS)
MODE = Arg("mode", "choice", "a power mode", choices=POWER_MODES, risky=("sleep", "restart", "shutdown"))
APP = Arg("app", "name", "an application name", names="apps", command_like=True)
BACKENDS = ("auto", "wpctl", "pactl", "osascript", "keys")
SPOKEN_NAME = re.compile(r"^[\w][\w .+-]{0,63}$")
DESKTOP_FIELD_CODE = re.compile(r"%(.)")  # %% is a percent sign, every other %x a field code


def platform_key() -> str:
    """``linux``, ``darwin`` or ``win32``: the key of the per-OS tables below."""
    return "linux" if sys.platform.startswith("linux") else sys.platform


POWER_DEFAULTS: dict[str, dict[str, list[str]]] = {
    "linux": {
        "lock": ["loginctl", "lock-session"],
        "sleep": ["systemctl", "suspend"],
        "restart": ["systemctl", "reboot"],
        "shutdown": ["systemctl", "poweroff"],
    },
    "darwin": {
        "lock": ["pmset", "displaysleepnow"],
        "sleep": ["pmset", "sleepnow"],
        "restart": ["osascript", "-e", 'tell application "System Events" to restart'],
        "shutdown": ["osascript", "-e", 'tell application "System Events" to shut down'],
    },
    "win32": {
        "lock": ["rundll32.exe", "user32.dll,LockWorkStation"],
        "sleep": ["rundll32.exe", "powrprof.dll,SetSuspendState", "0,1,0"],
        "restart": ["shutdown", "/r", "/t", "0"],
        "shutdown": ["shutdown", "/s", "/t", "0"],
    },
}
POWER_SENTENCES = {"lock": "Screen locked.", "sleep": "Going to sleep.",
                   "restart": "Restarting now.", "shutdown": "Shutting down now."}


# -- running OS tools ---------------------------------------------------------------------

def run_tool(argv: list[str], timeout: float) -> str:
    """Run a command (never through a shell) and return its output; failures become TaskFailed."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                              timeout=timeout, env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError:
        raise TaskFailed(f"{argv[0]} is not installed.") from None
    except subprocess.TimeoutExpired:
        raise TaskFailed(f"{argv[0]} did not answer within {timeout:g} seconds.") from None
    except OSError as exc:
        raise TaskFailed(f"Could not run {argv[0]}: {exc.strerror}.") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise TaskFailed(f"{argv[0]} failed: {detail[0] if detail else f'exit status {done.returncode}'}.")
    return done.stdout


# -- mixers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mixer:
    """A system volume tool: commands to read and set the default output, and a reader."""

    name: str
    read_commands: tuple[tuple[str, ...], ...]
    parse: Callable[[str], tuple[int, bool]]
    set_level_command: tuple[str, ...]  # "{level}" is replaced by 0-100
    set_muted_command: tuple[str, ...]  # "{muted}" is replaced by one of muted_words
    muted_words: tuple[str, str]  # (off, on)

    def read(self, timeout: float) -> tuple[int, bool]:
        """(level 0-100, muted) of the default output."""
        output = "\n".join(run_tool(list(argv), timeout) for argv in self.read_commands)
        try:
            return self.parse(output)
        except ValueError:
            raise TaskFailed(f"Could not read the volume from {self.name}.") from None

    def set_level(self, level: int, timeout: float) -> None:
        run_tool([arg.format(level=level) for arg in self.set_level_command], timeout)

    def set_muted(self, muted: bool, timeout: float) -> None:
        run_tool([arg.format(muted=self.muted_words[muted]) for arg in self.set_muted_command], timeout)


def parse_pactl(output: str) -> tuple[int, bool]:
    """``Volume: front-left: 32768 /  50% / ...`` and ``Mute: no`` → (50, False)."""
    levels = [int(p) for p in re.findall(r"/\s*(\d+)%", output)]
    muted = re.search(r"^Mute:\s*(yes|no)", output, re.MULTILINE)
    if not levels or not muted:
        raise ValueError(output)
    return round(sum(levels) / len(levels)), muted.group(1) == "yes"


def parse_wpctl(output: str) -> tuple[int, bool]:
    """``Volume: 0.50 [MUTED]`` → (50, True)."""
    level = re.search(r"Volume:\s*([\d.]+)", output)
    if level is None:
        raise ValueError(output)
    return round(float(level.group(1)) * 100), "[MUTED]" in output


def parse_osascript(output: str) -> tuple[int, bool]:
    """``output volume:50, input volume:75, alert volume:100, output muted:false`` → (50, False)."""
    level = re.search(r"output volume:(\d+)", output)
    if level is None:
        raise ValueError(output)
    return int(level.group(1)), "output muted:true" in output


MIXERS = {
    "wpctl": Mixer("wpctl", (("wpctl", "get-volume", "@DEFAULT_AUDIO_SINK@"),), parse_wpctl,
                   ("wpctl", "set-volume", "@DEFAULT_AUDIO_SINK@", "{level}%"),
                   ("wpctl", "set-mute", "@DEFAULT_AUDIO_SINK@", "{muted}"), ("0", "1")),
    "pactl": Mixer("pactl", (("pactl", "get-sink-volume", "@DEFAULT_SINK@"),
                             ("pactl", "get-sink-mute", "@DEFAULT_SINK@")), parse_pactl,
                   ("pactl", "set-sink-volume", "@DEFAULT_SINK@", "{level}%"),
                   ("pactl", "set-sink-mute", "@DEFAULT_SINK@", "{muted}"), ("0", "1")),
    "osascript": Mixer("osascript", (("osascript", "-e", "get volume settings"),), parse_osascript,
                       ("osascript", "-e", "set volume output volume {level}"),
                       ("osascript", "-e", "set volume output muted {muted}"), ("false", "true")),
}
AUTO_MIXERS = {"linux": ("wpctl", "pactl"), "darwin": ("osascript",), "win32": ()}


# -- keys ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    """One media key, as each OS names it."""

    x11: str  # X keysym
    pyautogui: str  # pyautogui key name (Windows)
    mac: str  # NX special key type (macOS, where pyautogui.press drops media keys)
    spoken: str


KEYS = {
    "play": Key("XF86_AudioPlay", "playpause", "KEYTYPE_PLAY", "play"),
    "pause": Key("XF86_AudioPause", "playpause", "KEYTYPE_PLAY", "pause"),
    "next": Key("XF86_AudioNext", "nexttrack", "KEYTYPE_NEXT", "next-track"),
    "back": Key("XF86_AudioPrev", "prevtrack", "KEYTYPE_PREVIOUS", "previous-track"),
    "up": Key("XF86_AudioRaiseVolume", "volumeup", "KEYTYPE_SOUND_UP", "volume up"),
    "down": Key("XF86_AudioLowerVolume", "volumedown", "KEYTYPE_SOUND_DOWN", "volume down"),
    "mute": Key("XF86_AudioMute", "volumemute", "KEYTYPE_MUTE", "mute"),
}


class X11Keys:
    """Presses keys through XTest on the X display in $DISPLAY, one connection per press."""

    def __init__(self) -> None:
        from Xlib import XK, error

        XK.load_keysym_group("xf86")
        self.errors = (error.DisplayError, error.ConnectionClosedError, OSError)
        with self.connection() as display:
            if not display.has_extension("XTEST"):
                raise Unavailable(f"the X display {display.get_display_name()} has no XTEST extension")

    def connection(self) -> closing:
        from Xlib import display

        try:
            return closing(display.Display())
        except self.errors as exc:
            raise Unavailable(f"cannot open the X display {os.environ.get('DISPLAY', '')!r}: {exc}") from None

    def press(self, key: Key, times: int = 1) -> None:
        from Xlib import X, XK
        from Xlib.ext import xtest

        try:
            with self.connection() as display:
                keycode = display.keysym_to_keycode(XK.string_to_keysym(key.x11))
                if not keycode:
                    raise TaskFailed(f"This keyboard map has no {key.spoken} key.")
                for _ in range(times):
                    xtest.fake_input(display, X.KeyPress, keycode)
                    xtest.fake_input(display, X.KeyRelease, keycode)
                display.sync()
        except (Unavailable, *self.errors) as exc:
            raise TaskFailed(f"Could not press the {key.spoken} key: {exc}.") from None


class PyautoguiKeys:
    """Presses keys through pyautogui (Windows and macOS)."""

    def __init__(self) -> None:
        import pyautogui

        pyautogui.FAILSAFE = False  # the fail-safe guards mouse-moving scripts; nothing here moves the mouse
        self.pyautogui = pyautogui

    def press(self, key: Key, times: int = 1) -> None:
        for _ in range(times):
            if sys.platform == "darwin":
                # pyautogui maps the macOS media keys to nothing; its special-key event is what works.
                self.pyautogui.platformModule._specialKeyEvent(key.mac, "down")
                self.pyautogui.platformModule._specialKeyEvent(key.mac, "up")
            else:
                self.pyautogui.press(key.pyautogui, _pause=False)


def open_keys() -> X11Keys | PyautoguiKeys:
    """The key presser for this OS; Unavailable says what is missing."""
    if platform_key() == "linux":
        if importlib.util.find_spec("Xlib") is None:
            raise Unavailable("pressing keys needs python-xlib: pip install 'lamcontrol[computer]'")
        if not os.environ.get("DISPLAY"):
            raise Unavailable("pressing keys needs an X display: set DISPLAY")
        return X11Keys()
    try:
        return PyautoguiKeys()
    except ImportError:
        raise Unavailable("pressing keys needs pyautogui: pip install 'lamcontrol[computer]'") from None


# -- applications -------------------------------------------------------------------------

def spoken(name: str) -> str:
    """The form names are compared in: case-folded, single spaces."""
    return " ".join(name.split()).casefold()


def desktop_entry_argv(entry_id: str) -> list[str]:
    """The command of an installed desktop entry (``org.gnome.Calculator`` or ``firefox.desktop``)."""
    file_name = entry_id if entry_id.endswith(".desktop") else f"{entry_id}.desktop"
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    data_dirs = os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share"
    for base in [data_home, *data_dirs.split(":")]:
        path = Path(base, "applications", file_name)
        if not path.is_file():
            continue
        entry = configparser.ConfigParser(interpolation=None, strict=False)
        entry.optionxform = str  # type: ignore[assignment, method-assign]  # keys keep their case
        try:
            entry.read(path, encoding="utf-8")
            words = shlex.split(entry["Desktop Entry"]["Exec"])
        except (configparser.Error, KeyError, ValueError, UnicodeDecodeError):
            words = []
        argv = [arg for arg in (DESKTOP_FIELD_CODE.sub(lambda m: "%" if m[1] == "%" else "", w) for w in words) if arg]
        if not argv:
            raise TaskFailed(f"The desktop entry {file_name} has no usable Exec line.")
        return argv
    raise TaskFailed(f"No desktop entry named {file_name} is installed.")


def start_detached(argv: list[str]) -> subprocess.Popen:
    """Start a program on its own (no shell, no terminal, its own session) and reap it when it exits."""
    options: dict = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                     "close_fds": True, "cwd": Path.home() if Path.home().is_dir() else None}
    if sys.platform == "win32":
        options["creationflags"] = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        options["start_new_session"] = True
    process = subprocess.Popen(argv, **options)
    threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()
    return process


# -- the capability -----------------------------------------------------------------------

def command_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(word, str) and word for word in value)


class Computer(Capability):
    name = "computer"
    summary = "Volume, media keys, allow-listed applications and power on this computer."
    extra = "computer"
    config_schema = {
        "allowed_apps": Setting({}, "spoken name -> command (list of strings), or a desktop entry id (Linux) / "
                                    "application name (macOS); nothing else can be started"),
        "power_commands": Setting({}, "lock|sleep|restart|shutdown -> command (list of strings), "
                                      "overriding this OS's default"),
        "volume_step": Setting(10, "percent that volume up/down changes"),
        "key_volume_step": Setting(2, "percent one volume key press changes, when keys are all there is"),
        "backend": Setting("auto", "volume through auto, wpctl, pactl, osascript or keys"),
        "command_timeout": Setting(10.0, "seconds to wait for a system tool"),
    }

    def __init__(self, settings: dict | None = None, shared: Shared | None = None) -> None:
        super().__init__(settings, shared)
        s = self.settings
        if s["backend"] not in BACKENDS:
            raise ValueError(f"[capabilities.computer] backend must be one of {', '.join(BACKENDS)}")
        if not 1 <= s["volume_step"] <= 100 or not 1 <= s["key_volume_step"] <= 100:
            raise ValueError("[capabilities.computer] volume_step and key_volume_step must be 1 to 100")
        for name, target in s["allowed_apps"].items():
            if not SPOKEN_NAME.match(name) or not (command_list(target) or isinstance(target, str) and target):
                raise ValueError(f"[capabilities.computer] allowed_apps {name!r} must be a name "
                                 "mapped to a command list or a desktop entry id")
        for mode, command in s["power_commands"].items():
            if mode not in POWER_MODES or not command_list(command):
                raise ValueError(f"[capabilities.computer] power_commands {mode!r} must be one of "
                                 f"{', '.join(POWER_MODES)} mapped to a command list")
        self.apps = {spoken(name): (name, target) for name, target in s["allowed_apps"].items()}
        self.power_commands = {**POWER_DEFAULTS.get(platform_key(), {}), **s["power_commands"]}
        self.keys: X11Keys | PyautoguiKeys | None = None
        self.mixer: Mixer | None = None
        self.problems: list[str] = []
        self.probed = False

    # -- what this machine can do ---------------------------------------------------------

    def check(self) -> None:
        super().check()
        self.probe()
        if self.keys is None and self.mixer is None:
            raise Unavailable(f"computer can neither press keys nor reach a mixer: {'; '.join(self.problems)}")

    def probe(self) -> None:
        """Find the key presser and the mixer this machine has (once)."""
        if self.probed:
            return
        self.probed = True
        try:
            self.keys = open_keys()
        except Unavailable as exc:
            self.problems.append(str(exc))
        backend = self.settings["backend"]
        if backend == "keys":
            self.problems.append("the volume backend is set to keys")
            return
        candidates = AUTO_MIXERS.get(platform_key(), ()) if backend == "auto" else (backend,)
        for name in candidates:
            try:
                MIXERS[name].read(self.settings["command_timeout"])
            except TaskFailed as exc:
                if backend != "auto":
                    raise Unavailable(f"the volume backend {name} does not work here: {exc}") from None
                self.problems.append(f"no working {name} ({str(exc).rstrip('.')})")
                continue
            self.mixer = MIXERS[name]
            return

    lists = {"apps": []}
    rules = {"it": "[(the|my)] (volume|sound|audio|music|it|that)",
             "bit": "[(a|one)] [(bit|little|notch|tad)] [more]",
             "computer": "[(the|my|this)] (computer|pc|laptop|desktop|machine|mac|screen)"}

    def names(self) -> dict[str, list]:
        return {"apps": sorted(name for name, _ in self.apps.values())}

    def readings(self) -> dict[str, object]:
        """The volume, when a mixer can read it (pressing keys reads nothing)."""
        self.probe()
        if self.mixer is None:
            return {}
        try:
            level, _ = self.mixer.read(self.settings["command_timeout"])
        except TaskFailed:
            return {}
        return {"volume": level}

    def actions(self) -> list[str]:
        self.probe()
        names = {"power"}
        if self.apps:
            names.add("run")
        if self.keys or self.mixer:
            names.add("volume")
        if self.keys or shutil.which("playerctl"):
            names.add("media")
        return sorted(names)

    # -- volume ---------------------------------------------------------------------------

    @action(syntax=["computer volume {level}"], args=[LEVEL], idempotent=True, sentences=[
        Sentences(("(turn|crank|bump|pump|jack) [<it>] up [<it>] [<bit>]", "(louder|make it louder|<it> louder)",
                   "(increase|raise|boost) <it> [<bit>]", "<it> up [<bit>]", "(crank|bump) it",
                   "(it's|it is) too (quiet|soft)", "<it> (is|it's) too (quiet|low)", "more volume"),
                  {"level": "up"}),
        Sentences(("(turn|bring) [<it>] down [<it>] [<bit>]", "[(a|a little|a bit)] (quieter|softer|lower)",
                   "make [<it>] (quieter|softer) [<bit>]", "make <it> <bit> (quieter|softer)", "(lower|decrease|reduce) <it> [<bit>]", "lower it",
                   "<it> down [<bit>]", "(it's|it is) [(way|much)] too loud"), {"level": "down"}),
        Sentences(("[(set|turn|change|put)] <it> [(up|down)] (to|at|on) {level} [(percent|%)]",
                   "(volume|sound) {level} [(percent|%)]", "make it {level} (percent|%)",
                   "set volume {level} [(percent|%)]")),
        Sentences(("(max|maximum|full) volume", "<it> (to|at) (max|maximum|full)", "<it> all the way up",
                   "<it> to the max"), {"level": 100}),
        Sentences(("half volume", "<it> (to|at) half"), {"level": 50}),
        Sentences(("(mute|silence|kill the sound|turn off the (sound|audio)) [<it>] [<computer>]",),
                  {"level": "mute"}),
        Sentences(("unmute [<it>] [<computer>]", "(turn|bring) (the|my) (sound|audio) back [on]",
                   "bring (the|my) sound back"), {"level": "unmute"}),
        Sentences(("(set|change) <it>",), ask="What level should I set the volume to?"),
    ], examples=[("set the volume to 30 percent", "computer volume 30"), ("turn it up", "computer volume up")],
        entities=[Entity("number", "volume", "Volume", "computer volume {value}", "mdi:volume-high", 0, 100, "%",
                         reading="volume")])
    def volume(self, args: dict) -> Outcome:
        """Set the volume: 0 to 100, up, down, mute or unmute."""
        level = args["level"]
        self.probe()
        if self.mixer:
            return self.volume_with_mixer(self.mixer, level)
        if self.keys:
            return self.volume_with_keys(self.keys, level)
        raise TaskFailed("This computer has no volume control I can reach.")

    def volume_with_mixer(self, mixer: Mixer, level: int | str) -> Outcome:
        timeout = self.settings["command_timeout"]
        current, muted = mixer.read(timeout)
        if level == "mute":
            mixer.set_muted(True, timeout)
        elif level == "unmute":
            mixer.set_muted(False, timeout)
        else:
            if level in ("up", "down"):
                step = self.settings["volume_step"]
                target = max(0, min(100, current + (step if level == "up" else -step)))
            else:
                target = level
            mixer.set_level(target, timeout)
            if muted and level != "down" and target > 0:
                mixer.set_muted(False, timeout)  # asking for sound means wanting to hear it
        now, muted = mixer.read(timeout)
        if level == "mute":
            message = "Muted." if muted else f"Still not muted; volume is {now}%."
        elif level == "unmute":
            message = f"Unmuted; volume is {now}%." if not muted else "Still muted."
        else:
            said = "Volume set to" if isinstance(level, int) else "Volume is now"
            message = f"{said} {now}%{' (muted)' if muted else ''}."
        return Outcome(message, {"level": now, "muted": muted, "backend": mixer.name})

    def volume_with_keys(self, keys: X11Keys | PyautoguiKeys, level: int | str) -> Outcome:
        key_step = self.settings["key_volume_step"]
        if level in ("mute", "unmute"):
            keys.press(KEYS["mute"])
            return Outcome("Pressed the mute key.", {"backend": "keys", "presses": {"mute": 1}})
        if level in ("up", "down"):
            presses = max(1, round(self.settings["volume_step"] / key_step))
            keys.press(KEYS[level], presses)
            return Outcome(f"Pressed {KEYS[level].spoken} {presses} times." if presses > 1 else
                           f"Pressed {KEYS[level].spoken}.", {"backend": "keys", "presses": {level: presses}})
        # No way to read the level: go to the bottom, then count presses up.
        down, up = math.ceil(100 / key_step), round(level / key_step)
        keys.press(KEYS["down"], down)
        keys.press(KEYS["up"], up)
        return Outcome(f"Volume set to about {min(100, up * key_step)}%.",
                       {"backend": "keys", "presses": {"down": down, "up": up}})

    # -- media ----------------------------------------------------------------------------

    @action(syntax=["computer media {key}"], args=[KEY], sentences=[
        Sentences(("pause [(it|that|the (music|song|track|video)|playing|playback)] [on <computer>]",
                   "stop (the (music|song|track|video)|playing|playback) [on <computer>]",
                   "hit pause", "hold on pause (it|that)", "turn off the music"), {"key": "pause"}),
        Sentences(("(play|resume|continue|unpause) [(it|the (music|song|track)|playing|playback)] [again]",
                   "play music", "start the music again"), {"key": "play"}),
        Sentences(("(next|skip|skip ahead|skip forward) [(song|track|one)] [{times}]",
                   "skip (this|the) (song|track|one)", "[(go|skip)] to the next (song|track)",
                   "play the next (song|track)", "skip [(forward|ahead)] {count} (songs|tracks)",
                   "next one"), {"key": "next"}),
        Sentences(("(previous|last) (song|track)", "(go|skip) back [(a|one)] [(song|track)]",
                   "back one (song|track)", "play the (previous|last) (song|track)",
                   "play the (song|track) before this one", "(go|skip) back {count} (songs|tracks)",
                   "(go|skip) back {times} [on <computer>]"),
                  {"key": "back"}),
    ], examples=[("skip this song", "computer media next"), ("pause the music", "computer media pause")],
        entities=[Entity("button", "play", "Play", "computer media play", "mdi:play"),
                  Entity("button", "pause", "Pause", "computer media pause", "mdi:pause"),
                  Entity("button", "next", "Next", "computer media next", "mdi:skip-next"),
                  Entity("button", "previous", "Previous", "computer media back", "mdi:skip-previous")])
    def media(self, args: dict) -> Outcome:
        """Press a media key: play, pause, next or back."""
        key = args["key"]
        player = self.player()
        if player:
            verb = {"back": "previous"}.get(key, key)
            run_tool(["playerctl", "--player", player, verb], self.settings["command_timeout"])
            sentences = {"play": f"Playing on {player}.", "pause": f"Paused {player}.",
                         "next": f"Next track on {player}.", "back": f"Previous track on {player}."}
            return Outcome(sentences[key], {"player": player, "key": key})
        self.probe()
        if not self.keys:
            raise TaskFailed("No media player is running that I can reach, and there is no display to press keys on.")
        self.keys.press(KEYS[key])
        return Outcome(f"Pressed the {KEYS[key].spoken} key.", {"key": key, "backend": "keys"})

    def player(self) -> str:
        """The first media player playerctl can reach, or ''."""
        if not shutil.which("playerctl"):
            return ""
        try:
            players = run_tool(["playerctl", "--list-all"], self.settings["command_timeout"]).split()
        except TaskFailed:
            return ""
        return players[0] if players else ""

    # -- applications ---------------------------------------------------------------------

    @action("run", syntax=["computer run {app}"], args=[APP], shows=True, sentences=[
        Sentences(("(open|launch|start|run|fire up|start up|open up|bring up) [(the|my)] {app} [(app|application)]"
                   " [on <computer>] [for me]",)),
        Sentences(("(open|launch|start|run)",), ask="What should I open?"),
    ], examples=[("open the calculator", "computer run calculator")])
    def start_app(self, args: dict) -> Outcome:
        """Start an application from the allow-list."""
        app = args["app"]
        allowed = ", ".join(sorted(name for name, _ in self.apps.values())) or "none"
        if not SPOKEN_NAME.match(app.strip()):
            raise TaskFailed(f"I only start applications by name from my list ({allowed}).")
        found = self.apps.get(spoken(app))
        if found is None:
            raise TaskFailed(f"{app.strip()} is not on my list of applications I may start ({allowed}).")
        name, target = found
        argv = target if isinstance(target, list) else self.resolve(target)
        try:
            process = start_detached(argv)
        except FileNotFoundError:
            raise TaskFailed(f"{name} is on my list, but {argv[0]} is not installed.") from None
        except OSError as exc:
            raise TaskFailed(f"Could not start {name}: {exc.strerror}.") from None
        return Outcome(f"Started {name}.", {"app": name, "pid": process.pid, "command": argv})

    @staticmethod
    def resolve(target: str) -> list[str]:
        """The command of a named application: a desktop entry on Linux, an app bundle on macOS."""
        if platform_key() == "linux":
            return desktop_entry_argv(target)
        if platform_key() == "darwin":
            return ["open", "-a", target]
        return [target]

    # -- power ----------------------------------------------------------------------------

    @action(syntax=["computer power {mode}"], args=[MODE], sentences=[
        Sentences(("lock [(it|up|down)] [<computer>] [(up|down)]", "lock [the] screen"), {"mode": "lock"}),
        Sentences(("(put|send) <computer> to sleep", "(sleep|suspend|hibernate) [<computer>]"),
                  {"mode": "sleep"}),
        Sentences(("(restart|reboot) [<computer>]",), {"mode": "restart"}),
        Sentences(("(shut|power) [<computer>] (down|off)", "turn <computer> off", "(shut down|power down|power off|"
                   "turn off) <computer>", "shutdown [<computer>]"), {"mode": "shutdown"}),
        Sentences(("turn off",), ask="What should I turn off?"),
    ], examples=[("lock my computer", "computer power lock"), ("shut down my computer", "computer power shutdown")])
    def power(self, args: dict) -> Outcome:
        """Lock, sleep, restart or shut down the computer (all but lock are confirmed first)."""
        mode = args["mode"]
        command = self.power_commands.get(mode)
        if not command:
            raise TaskFailed(f"I do not know how to {mode} this computer; set power_commands.{mode}.")
        run_tool(command, self.settings["command_timeout"])
        return Outcome(POWER_SENTENCES[mode], {"mode": mode, "command": command})
