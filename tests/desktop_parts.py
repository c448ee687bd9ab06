"""Real desktop parts for tests and benchmarks: an Xvfb X server, and a sound server of its own
whose default output is a null sink."""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

from helpers import wait_until


def start_xvfb() -> tuple[subprocess.Popen, str]:
    """An X server on a display number it picks itself: the process and its ':N'."""
    read_end, write_end = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-nolisten", "tcp", "-noreset",
                               "-screen", "0", "1280x1024x24"],
                              pass_fds=[write_end], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    number = b""
    while select.select([read_end], [], [], 20)[0]:
        chunk = os.read(read_end, 16)
        number += chunk
        if not chunk or number.endswith(b"\n"):
            break
    os.close(read_end)
    if not number.strip().isdigit():
        server.kill()
        server.wait(10)
        raise RuntimeError("Xvfb did not report its display")
    return server, f":{number.decode().strip()}"


SOUND_SERVERS = {
    # name: (programs it needs, the mixer the capability should pick)
    "pulseaudio": (("pulseaudio", "pactl"), "pactl"),
    "pipewire": (("dbus-daemon", "pipewire", "wireplumber", "pipewire-pulse", "pw-cli", "wpctl", "pactl"), "wpctl"),
}


class SoundServer:
    """A sound server of its own, in a temporary directory, whose default output is a null sink.

    ``env`` points clients at it (and only at it): pactl through ``PULSE_SERVER`` (PipeWire
    answers there through pipewire-pulse), wpctl through ``PIPEWIRE_RUNTIME_DIR``.
    """

    def __init__(self, kind: str, home: Path) -> None:
        self.kind, self.home = kind, home
        self.backend = SOUND_SERVERS[kind][1]
        self.env = {"PULSE_SERVER": f"unix:{home / 'pulse' / 'native'}", "PIPEWIRE_RUNTIME_DIR": str(home)}
        self.server_env = {**os.environ, **self.env, "HOME": str(home), "XDG_RUNTIME_DIR": str(home),
                           "XDG_CONFIG_HOME": str(home / "config"), "XDG_STATE_HOME": str(home / "state"),
                           "DBUS_SESSION_BUS_ADDRESS": f"unix:path={home / 'bus'}"}
        self.server_env.pop("DISPLAY", None)
        self.processes: list[subprocess.Popen] = []
        try:
            self._start_servers()
        except BaseException:
            self.stop()
            raise

    def _start_servers(self) -> None:
        home, kind = self.home, self.kind
        if kind == "pulseaudio":
            (home / "pulse").mkdir()
            self.start("pulseaudio", "--daemonize=no", "--system=false", "-n", "--exit-idle-time=-1",
                       "--disallow-exit", "--use-pid-file=no", "--disable-shm=yes", "--log-target=stderr",
                       f"--load=module-native-protocol-unix socket={home / 'pulse' / 'native'} auth-anonymous=1",
                       "--load=module-null-sink sink_name=lamtest")
        else:
            self.start("dbus-daemon", "--session", f"--address=unix:path={home / 'bus'}", "--nofork", "--nopidfile")
            wait_until((home / "bus").exists, 20, "dbus-daemon to start")
            self.start("pipewire")
            wait_until((home / "pipewire-0").exists, 20, f"PipeWire to start (see {home})")
            self.start("wireplumber")
            self.start("pipewire-pulse")
            self.tool("pw-cli", "create-node", "adapter", "{ factory.name=support.null-audio-sink node.name=lamtest "
                      "media.class=Audio/Sink object.linger=true audio.position=[FL FR] }")
            wait_until(lambda: self.tool("wpctl", "get-volume", "@DEFAULT_AUDIO_SINK@"), 20,
                       f"WirePlumber to pick the null sink (see {home})")
        wait_until(lambda: self.tool("pactl", "info"), 20, f"{kind} to answer pactl (see {home})")

    def start(self, program: str, *args: str) -> None:
        log = (self.home / f"{program}.log").open("wb")
        self.processes.append(subprocess.Popen([program, *args], env=self.server_env, stdout=log, stderr=log))

    def tool(self, *argv: str) -> bool:
        return subprocess.run(argv, env=self.server_env, capture_output=True).returncode == 0

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            process.wait(10)
