"""The computer capability against real parts: Xvfb with an X client recording key presses;
PulseAudio and PipeWire servers with a null sink, read back through pactl; playerctl talking
over a real D-Bus session bus to an MPRIS player; real child processes for ``run`` and ``power``;
and a whole system (broker, coordinator, agent process) taking spoken commands."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time

import pytest
from Xlib import X, XK, display as xdisplay

from lamcontrol.agents.capability import TaskFailed, Unavailable
from lamcontrol.agents.computer import Computer
from desktop_parts import SOUND_SERVERS, SoundServer
from helpers import wait_until
from lamcontrol.protocol import Presence, Result, Task, new_id

XK.load_keysym_group("xf86")
KEYSYM_NAMES = {getattr(XK, name): name[3:].replace("_", "", 1) for name in dir(XK) if name.startswith("XK_XF86_")}

# The Debian package of each program the tests start.
PACKAGES = {"Xvfb": "xvfb", "pulseaudio": "pulseaudio", "pactl": "pulseaudio-utils", "dbus-daemon": "dbus-daemon",
            "pipewire": "pipewire-bin", "pw-cli": "pipewire-bin", "pipewire-pulse": "pipewire-pulse",
            "wireplumber": "wireplumber", "wpctl": "wireplumber", "playerctl": "playerctl"}


def need(*programs: str) -> None:
    """Fail the test, saying what to install, unless every program is on PATH."""
    missing = [program for program in programs if not shutil.which(program)]
    if missing:
        packages = " ".join(sorted({PACKAGES[program] for program in missing}))
        pytest.fail(f"{', '.join(missing)} not found: apt-get install {packages}")


# A program for `run` and `power` to start: it writes its arguments to the file named first.
WRITER = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[2:]))"


# -- real parts -----------------------------------------------------------------------------

@pytest.fixture
def desktop(xvfb, monkeypatch):
    """DISPLAY set to the Xvfb server, and no D-Bus session (so no media player can answer)."""
    monkeypatch.setenv("DISPLAY", xvfb)
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
    return xvfb


class KeyRecorder:
    """An X client owning a focused window; records the keysym of every KeyPress it receives."""

    def __init__(self, name: str) -> None:
        self.display = xdisplay.Display(name)
        screen = self.display.screen()
        self.window = screen.root.create_window(0, 0, 100, 100, 0, screen.root_depth,
                                                event_mask=X.KeyPressMask | X.StructureNotifyMask)
        self.window.map()
        self.wait_for_event(X.MapNotify)
        self.window.set_input_focus(X.RevertToParent, X.CurrentTime)
        self.display.sync()
        self.pressed: list[str] = []

    def events(self, timeout: float):
        """The events that arrive within ``timeout`` seconds (or were already queued)."""
        select.select([self.display.fileno()], [], [], timeout)
        for _ in range(self.display.pending_events()):
            yield self.display.next_event()

    def wait_for_event(self, kind: int) -> None:
        wait_until(lambda: any(event.type == kind for event in self.events(0.1)), 10, f"X event {kind}")

    def keys(self, count: int) -> list[str]:
        """The names of the keys pressed so far, once there are at least ``count``."""
        def collect() -> bool:
            for event in self.events(0.05):
                if event.type == X.KeyPress:
                    keysym = self.display.keycode_to_keysym(event.detail, 0)
                    self.pressed.append(KEYSYM_NAMES.get(keysym) or XK.keysym_to_string(keysym) or hex(keysym))
            return len(self.pressed) >= count
        wait_until(collect, 10, f"{count} key presses")
        collect()  # and any extra ones already queued
        return self.pressed

    def close(self) -> None:
        self.display.close()


@pytest.fixture
def recorder(desktop):
    rec = KeyRecorder(desktop)
    yield rec
    rec.close()


@pytest.fixture(scope="module", params=list(SOUND_SERVERS))
def sound_server(request, tmp_path_factory):
    need(*SOUND_SERVERS[request.param][0])
    server = SoundServer(request.param, tmp_path_factory.mktemp(request.param))
    yield server
    server.stop()


@pytest.fixture
def sound(sound_server, monkeypatch):
    """The sound server, with this test's clients pointed at it, volume 30%, not muted."""
    for name, value in sound_server.env.items():
        monkeypatch.setenv(name, value)
    pactl("set-sink-mute", "0")
    pactl("set-sink-volume", "30%")
    return sound_server


def pactl(*args: str) -> str:
    return subprocess.run(["pactl", args[0], "@DEFAULT_SINK@", *args[1:]], capture_output=True, text=True,
                          check=True, env={**os.environ, "LC_ALL": "C"}).stdout


def sink_state() -> tuple[list[int], str]:
    """The sink's channel volumes in percent and its mute state, as pactl reports them."""
    return [int(v) for v in re.findall(r"(\d+)%", pactl("get-sink-volume"))], pactl("get-sink-mute").split()[-1]


def toml_tables(tables: dict[str, dict[str, list[str]]]) -> str:
    """TOML for tables of string lists (a JSON string list is a TOML array)."""
    return "".join(f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())
                   for name, table in tables.items())


def only_programs(tmp_path, monkeypatch, *programs: str) -> None:
    """Leave only these programs on PATH."""
    need(*programs)
    (tmp_path / "bin").mkdir()
    for program in programs:
        (tmp_path / "bin" / program).symlink_to(shutil.which(program))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))


def computer(**settings) -> Computer:
    cap = Computer(settings)
    cap.check()
    return cap


@pytest.fixture(scope="module")
def session_bus(tmp_path_factory):
    """A D-Bus session bus of its own; yields its address."""
    need("dbus-daemon")
    socket_path = tmp_path_factory.mktemp("dbus") / "bus"
    daemon = subprocess.Popen(["dbus-daemon", "--session", f"--address=unix:path={socket_path}", "--nofork",
                               "--nopidfile"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(socket_path.exists, 20, "dbus-daemon to start")
    yield f"unix:path={socket_path}"
    daemon.terminate()
    daemon.wait(10)


class MprisPlayer:
    """A media player on a D-Bus bus that speaks MPRIS (what playerctl talks to) and records
    the player methods called on it."""

    PLAYER = "org.mpris.MediaPlayer2.Player"
    PROPERTIES = {
        "org.mpris.MediaPlayer2": {"Identity": ("s", "Test Player"), "CanQuit": ("b", False),
                                   "CanRaise": ("b", False), "HasTrackList": ("b", False),
                                   "SupportedUriSchemes": ("as", []), "SupportedMimeTypes": ("as", [])},
        PLAYER: {"PlaybackStatus": ("s", "Paused"), "CanControl": ("b", True), "CanPlay": ("b", True),
                 "CanPause": ("b", True), "CanGoNext": ("b", True), "CanGoPrevious": ("b", True),
                 "CanSeek": ("b", False), "Metadata": ("a{sv}", {}), "Position": ("x", 0), "Rate": ("d", 1.0),
                 "Volume": ("d", 1.0), "LoopStatus": ("s", "None"), "Shuffle": ("b", False)},
    }

    def __init__(self, bus_address: str, name: str) -> None:
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        self.calls: list[str] = []
        self.connection = open_dbus_connection(bus=bus_address)
        self.connection.send_and_get_reply(message_bus.RequestName(f"org.mpris.MediaPlayer2.{name}"), timeout=10)
        self.running = True
        self.thread = threading.Thread(target=self.serve, name="mpris", daemon=True)
        self.thread.start()

    def serve(self) -> None:
        from jeepney import HeaderFields, MessageType, new_error, new_method_return

        while self.running:
            try:
                message = self.connection.receive(timeout=0.1)
            except TimeoutError:
                continue
            except OSError:
                return
            if message.header.message_type != MessageType.method_call:
                continue
            fields = message.header.fields
            interface, member = fields.get(HeaderFields.interface), fields[HeaderFields.member]
            if interface == "org.freedesktop.DBus.Properties" and member == "GetAll":
                reply = new_method_return(message, "a{sv}", (self.PROPERTIES.get(message.body[0], {}),))
            elif interface == "org.freedesktop.DBus.Properties" and member == "Get":
                reply = new_method_return(message, "v", (self.PROPERTIES[message.body[0]][message.body[1]],))
            elif interface in (self.PLAYER, None) and member in ("Play", "Pause", "PlayPause", "Next", "Previous"):
                self.calls.append(member)
                reply = new_method_return(message)
            else:
                reply = new_error(message, "org.freedesktop.DBus.Error.UnknownMethod")
            self.connection.send(reply)

    def close(self) -> None:
        self.running = False
        self.thread.join(10)
        self.connection.close()


@pytest.fixture
def player(session_bus, monkeypatch):
    need("playerctl")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", session_bus)
    running = MprisPlayer(session_bus, "lamtest")
    yield running
    running.close()


# -- keys -------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, keysym, sentence", [
    ("play", "XF86AudioPlay", "Pressed the play key."),
    ("pause", "XF86AudioPause", "Pressed the pause key."),
    ("next", "XF86AudioNext", "Pressed the next-track key."),
    ("back", "XF86AudioPrev", "Pressed the previous-track key."),
])
def test_media_keys_reach_an_x_client(recorder, key, keysym, sentence):
    outcome = computer(backend="keys").run("media", {"key": key})
    assert outcome.message == sentence
    assert recorder.keys(1) == [keysym]


def test_media_keys_when_no_player_runs(recorder, session_bus, monkeypatch):
    need("playerctl")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", session_bus)
    assert computer().run("media", {"key": "next"}).message == "Pressed the next-track key."
    assert recorder.keys(1) == ["XF86AudioNext"]


def test_volume_keys_without_a_mixer(recorder):
    cap = computer(backend="keys", volume_step=10, key_volume_step=5)
    assert cap.run("volume", {"level": "up"}).message == "Pressed volume up 2 times."
    assert cap.run("volume", {"level": "mute"}).message == "Pressed the mute key."
    assert cap.run("volume", {"level": 30}).message == "Volume set to about 30%."
    assert recorder.keys(2 + 1 + 20 + 6) == (["XF86AudioRaiseVolume"] * 2 + ["XF86AudioMute"]
                                             + ["XF86AudioLowerVolume"] * 20 + ["XF86AudioRaiseVolume"] * 6)


@pytest.mark.parametrize("key, method, sentence", [
    ("play", "Play", "Playing on lamtest."),
    ("pause", "Pause", "Paused lamtest."),
    ("next", "Next", "Next track on lamtest."),
    ("back", "Previous", "Previous track on lamtest."),
])
def test_media_goes_to_a_running_player(player, monkeypatch, key, method, sentence):
    monkeypatch.delenv("DISPLAY", raising=False)
    outcome = Computer({}).run("media", {"key": key})
    assert (outcome.message, outcome.data) == (sentence, {"player": "lamtest", "key": key})
    assert player.calls == [method]


# -- volume on a real sound server ------------------------------------------------------------

def test_volume_on_a_null_sink(sound):
    cap = computer()
    assert cap.mixer.name == sound.backend
    outcome = cap.run("volume", {"level": 50})
    assert outcome.message == "Volume set to 50%."
    assert outcome.data == {"level": 50, "muted": False, "backend": sound.backend}
    assert sink_state() == ([50, 50], "no")
    assert cap.run("volume", {"level": "up"}).message == "Volume is now 60%."
    assert cap.run("volume", {"level": "down"}).message == "Volume is now 50%."
    assert cap.run("volume", {"level": "Down"}).message == "Volume is now 40%."
    assert sink_state() == ([40, 40], "no")
    pactl("set-sink-volume", "35%")  # changed by someone else: the reading is the real volume
    assert cap.readings() == {"volume": 35}


def test_mute_unmute_and_limits(sound):
    cap = computer(volume_step=15)
    assert cap.run("volume", {"level": "mute"}).message == "Muted."
    assert sink_state() == ([30, 30], "yes")
    assert cap.run("volume", {"level": "down"}).message == "Volume is now 15% (muted)."
    assert cap.run("volume", {"level": "unmute"}).message == "Unmuted; volume is 15%."
    assert sink_state() == ([15, 15], "no")
    assert cap.run("volume", {"level": "down"}).message == "Volume is now 0%."
    assert cap.run("volume", {"level": 95}).message == "Volume set to 95%."
    assert cap.run("volume", {"level": "up"}).message == "Volume is now 100%."
    assert sink_state() == ([100, 100], "no")


def test_setting_a_level_unmutes(sound):
    pactl("set-sink-mute", "1")
    assert computer().run("volume", {"level": 20}).message == "Volume set to 20%."
    assert sink_state() == ([20, 20], "no")


def test_volume_fails_with_a_sentence_when_the_server_goes(sound, monkeypatch):
    cap = computer()
    monkeypatch.setenv("PULSE_SERVER", "unix:/nonexistent/native")
    monkeypatch.setenv("PIPEWIRE_RUNTIME_DIR", "/nonexistent")
    with pytest.raises(TaskFailed, match=f"{sound.backend} failed: "):
        cap.run("volume", {"level": 50})


@pytest.mark.parametrize("level", [101, -1, "loud", True, None, 50.5])
def test_bad_volume_is_refused(level):
    with pytest.raises(TaskFailed, match="(must be a number from 0 to 100|needs a volume level)"):
        Computer({}).run("volume", {"level": level})


# -- what the machine can do ------------------------------------------------------------------

def test_refuses_without_display_or_mixer(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("PULSE_SERVER", "unix:/nonexistent/native")
    monkeypatch.setenv("PIPEWIRE_RUNTIME_DIR", "/nonexistent")
    with pytest.raises(Unavailable, match="set DISPLAY"):
        Computer({}).check()


def test_an_explicit_backend_that_does_not_work_is_refused(monkeypatch):
    monkeypatch.setenv("PULSE_SERVER", "unix:/nonexistent/native")
    with pytest.raises(Unavailable, match="volume backend pactl does not work here"):
        Computer({"backend": "pactl"}).check()


@pytest.mark.parametrize("programs, advertised", [
    (("pactl", "wpctl"), ["power", "volume"]),
    (("pactl", "wpctl", "playerctl"), ["media", "power", "volume"]),
])
def test_advertises_only_what_it_can_do(sound, tmp_path, monkeypatch, programs, advertised):
    monkeypatch.delenv("DISPLAY", raising=False)
    only_programs(tmp_path, monkeypatch, *programs)
    assert computer().actions() == advertised


def test_advertises_everything_with_a_display_and_apps(desktop):
    assert computer(allowed_apps={"editor": ["true"]}).actions() == ["media", "power", "run", "volume"]


@pytest.mark.parametrize("settings, problem", [
    ({"backend": "alsa"}, "backend must be one of"),
    ({"allowed_apps": {"editor": 3}}, "allowed_apps 'editor'"),
    ({"allowed_apps": {"editor": []}}, "allowed_apps 'editor'"),
    ({"allowed_apps": {"rm -rf;": ["rm"]}}, "allowed_apps 'rm -rf;'"),
    ({"power_commands": {"explode": ["true"]}}, "power_commands 'explode'"),
    ({"power_commands": {"lock": "loginctl lock-session"}}, "power_commands 'lock'"),
    ({"volume_step": 0}, "volume_step"),
    ({"colour": "red"}, "unknown keys: colour"),
])
def test_bad_settings_are_named(settings, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        Computer(settings)


# -- run ----------------------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch):
    """A throwaway HOME with a file that must survive every refused command."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "keep").write_text("still here")
    return tmp_path


def test_run_starts_an_allow_listed_program(home):
    marker = home / "started"
    cap = Computer({"allowed_apps": {"Marker Writer": [sys.executable, "-c", WRITER, str(marker), "hello"]}})
    outcome = cap.run("run", {"app": "marker   WRITER"})
    assert outcome.message == "Started Marker Writer."
    assert outcome.data["pid"] > 0
    assert wait_until(lambda: marker.exists() and marker.read_text(), what="the marker") == "hello"


def test_run_starts_a_desktop_entry(home, monkeypatch):
    data_home = home / "share"
    (data_home / "applications").mkdir(parents=True)
    marker = home / "from-desktop-entry"
    (data_home / "applications" / "org.example.Writer.desktop").write_text(
        "[Desktop Entry]\nType=Application\nName=Writer\n"
        f'Exec="{sys.executable}" -c "{WRITER}" {marker} opened %U 100%% %%U\n')
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    cap = Computer({"allowed_apps": {"writer": "org.example.Writer"}})
    assert cap.run("run", {"app": "Writer"}).message == "Started writer."
    assert wait_until(lambda: marker.exists() and marker.read_text(), what="the marker") == "opened 100% %U"


@pytest.mark.parametrize("entry, sentence", [
    (None, "No desktop entry named org.example.Writer.desktop is installed."),
    ("[Desktop Entry]\nName=Writer\n", "The desktop entry org.example.Writer.desktop has no usable Exec line."),
    ('[Desktop Entry]\nExec="unclosed\n', "The desktop entry org.example.Writer.desktop has no usable Exec line."),
    ("not a desktop entry", "The desktop entry org.example.Writer.desktop has no usable Exec line."),
])
def test_a_missing_or_broken_desktop_entry_is_a_sentence(home, monkeypatch, entry, sentence):
    (home / "applications").mkdir()
    if entry is not None:
        (home / "applications" / "org.example.Writer.desktop").write_text(entry)
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    monkeypatch.setenv("XDG_DATA_DIRS", str(home / "nothing"))
    cap = Computer({"allowed_apps": {"writer": "org.example.Writer"}})
    with pytest.raises(TaskFailed, match=re.escape(sentence)):
        cap.run("run", {"app": "writer"})


def test_an_allowed_program_that_is_not_installed_is_a_sentence(home):
    cap = Computer({"allowed_apps": {"ghost": [str(home / "no-such-program")]}})
    with pytest.raises(TaskFailed, match="ghost is on my list, but .*no-such-program is not installed."):
        cap.run("run", {"app": "ghost"})


@pytest.mark.parametrize("app", [
    "; rm -rf ~", "writer; rm -rf ~", "writer && touch pwned", "$(touch pwned)", "`touch pwned`",
    "writer | sh", "/bin/sh", "/usr/bin/touch", "../writer", "sh", "writerx", "", "   ", None, 42,
])
def test_run_refuses_anything_not_on_the_list(home, app):
    marker = home / "started"
    cap = Computer({"allowed_apps": {"writer": [sys.executable, "-c", WRITER, str(marker), "ran"]}})
    with pytest.raises(TaskFailed) as failure:
        cap.run("run", {"app": app})
    # refused by the declared argument check (shape, shell words), else by the allow-list
    assert re.search(r"list|needs an application name|may only hold", str(failure.value))
    if app == "writerx":
        assert "writer" in str(failure.value)  # says what may be started
    time.sleep(0.2)  # give anything wrongly started the chance to leave a trace
    assert not marker.exists() and not (home / "pwned").exists()
    assert (home / "keep").read_text() == "still here"


# -- power ----------------------------------------------------------------------------------------

def test_power_runs_the_configured_commands(tmp_path):
    commands = {mode: [sys.executable, "-c", WRITER, str(tmp_path / mode), "did", mode]
                for mode in ("lock", "sleep", "restart", "shutdown")}
    cap = Computer({"power_commands": commands})
    sentences = {}
    for mode in commands:
        outcome = cap.run("power", {"mode": mode})
        sentences[mode] = outcome.message
        assert outcome.data == {"mode": mode, "command": commands[mode]}
        assert (tmp_path / mode).read_text() == f"did {mode}"
    assert sentences == {"lock": "Screen locked.", "sleep": "Going to sleep.",
                         "restart": "Restarting now.", "shutdown": "Shutting down now."}


def test_a_failing_power_command_says_why(tmp_path):
    failing = [sys.executable, "-c", "import sys; sys.exit('No session to lock')"]
    cap = Computer({"power_commands": {"lock": failing}})
    with pytest.raises(TaskFailed, match="failed: No session to lock."):
        cap.run("power", {"mode": "lock"})


@pytest.mark.parametrize("action, args, sentence", [
    ("power", {"mode": "explode"}, "A power mode is lock, sleep, restart or shutdown."),
    ("power", {}, "The command needs a power mode."),
    ("media", {"key": "stop"}, "A media key is play, pause, next or back."),
    ("dance", {}, "computer cannot dance."),
])
def test_bad_tasks_get_a_sentence(action, args, sentence):
    with pytest.raises(TaskFailed, match=re.escape(sentence)):
        Computer({}).run(action, args)


# -- end to end ---------------------------------------------------------------------------------

def test_spoken_commands_reach_the_computer(lam, recorder, sound, tmp_path):
    """Prompts through the broker and the coordinator to a real agent process, and their effects."""
    apps = {"writer": [sys.executable, "-c", WRITER, str(tmp_path / "started"), "ran"]}
    power = {"shutdown": [sys.executable, "-c", WRITER, str(tmp_path / "power"), "did shutdown"]}
    lam.coordinator()
    lam.agent("desk", "computer", extra_config=toml_tables({"capabilities.computer.allowed_apps": apps,
                                                            "capabilities.computer.power_commands": power}))
    presence = lam.recorder.wait_for(Presence, lam.topics.agent_status("desk"), lambda p: p.state == "online")
    assert presence.capabilities == {"computer": ["media", "power", "run", "volume"]}
    assert presence.readings == {"computer": {"volume": 30}}

    reply = lam.send("computer volume 50")
    assert (reply.status, reply.response) == ("succeeded", "Volume set to 50%.")
    assert sink_state() == ([50, 50], "no")
    # Announced at once, not at the next heartbeat: Home Assistant's slider shows it.
    lam.recorder.wait_for(Presence, lam.topics.agent_status("desk"), lambda p: p.readings == {"computer": {"volume": 50}})

    assert lam.send("computer media next").status == "succeeded"
    assert recorder.keys(1) == ["XF86AudioNext"]

    assert lam.send("computer run Writer").response == "Started writer."
    assert wait_until(lambda: (tmp_path / "started").exists() and (tmp_path / "started").read_text()) == "ran"

    refused = lam.send("computer run ; rm -rf ~")
    assert refused.status != "succeeded" and refused.tasks == []  # never reaches an agent
    refused = lam.send("computer run notepad")
    assert (refused.status, refused.response) == (
        "failed", "notepad is not on my list of applications I may start (writer).")

    assert lam.send("computer power shutdown").status == "needs_confirmation"
    assert not (tmp_path / "power").exists()
    assert lam.send("confirm").response == "Shutting down now."
    assert (tmp_path / "power").read_text() == "did shutdown"


def test_the_agent_runs_a_shutdown_only_when_its_prompt_was_confirmed(lam, desktop, tmp_path):
    """Tasks published straight to the agent, as a coordinator misled about the risk would (``risk``
    low): the agent reads the risk from its own spec, refuses the unconfirmed shutdown with a sentence
    and runs nothing; the same task confirmed runs."""
    power = {"shutdown": [sys.executable, "-c", WRITER, str(tmp_path / "power"), "did shutdown"]}
    lam.agent("desk", "computer", extra_config=toml_tables({"capabilities.computer.power_commands": power}))
    results = lam.topics.build("agents/desk/results")

    def offer(confirmed: bool) -> Result:
        task = Task(task_id=new_id(), prompt_id=new_id(), capability="computer", action="power", agent="desk",
                    command="computer power shutdown", args={"mode": "shutdown"}, risk="low", confirmed=confirmed,
                    accept_by=time.time() + 30, deadline=time.time() + 60)
        lam.publish(task)
        return lam.recorder.wait_for(Result, results, lambda r: r.task_id == task.task_id and r.state != "accepted")

    refused = offer(confirmed=False)
    assert (refused.state, refused.data) == ("rejected", {"needs_confirmation": True})
    assert refused.message == "computer power shutdown needs your confirmation first; I did nothing."
    assert not (tmp_path / "power").exists()
    assert offer(confirmed=True).state == "succeeded"
    assert (tmp_path / "power").read_text() == "did shutdown"
