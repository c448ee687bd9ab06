"""Install the Home Assistant the tests run, once per machine, and print its ``hass`` path.

Home Assistant 2024.3.3 is the newest release for Python 3.11. It goes into a venv of its
own (``$LAM_HASS_VENV``, default ``~/.cache/lamcontrol-test/hass-venv``), installed under
the ``package_constraints.txt`` shipped in its wheel plus ``josepy<2`` (josepy 2 breaks every
HTTP request), with the requirements of every integration ``configuration.yaml`` loads (and of
MQTT, which the tests add over REST) installed ahead, so ``hass --skip-pip`` starts offline. A
finished venv is stamped and reused.

    python tests/hass/install.py    # prints the path of the hass executable; exit status 3:
                                    # the package index cannot be reached
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

VERSION = "2024.3.3"
HERE = Path(__file__).resolve().parent
CONFIGURATION = HERE / "configuration.yaml"
# Integrations the tests add over REST, as a person does in the UI: MQTT, whose entry sets up an
# entity platform of each domain it serves, camera among them, and camera imports stream.
CONFIG_ENTRIES = {"mqtt", "camera", "stream"}
# Walks the manifests of the integrations Home Assistant will load (its defaults, those named
# in the configuration, and their dependencies) and prints their requirements, the way
# Home Assistant itself would install them on first start.
REQUIREMENTS = """
import json, sys
from homeassistant import bootstrap
import homeassistant.components as components
from pathlib import Path

root = Path(components.__file__).parent
wanted = set(sys.argv[1:]) | bootstrap.CORE_INTEGRATIONS | bootstrap.DEFAULT_INTEGRATIONS
seen, requirements = set(), set()
while wanted:
    name = wanted.pop()
    manifest_path = root / name / "manifest.json"
    if name in seen or not manifest_path.exists():
        continue
    seen.add(name)
    manifest = json.loads(manifest_path.read_text())
    requirements.update(manifest.get("requirements", []))
    wanted |= set(manifest.get("dependencies", [])) | set(manifest.get("after_dependencies", []))
print("\\n".join(sorted(requirements)))
"""


class Unreachable(Exception):
    """The package index cannot be reached: the install cannot run here."""


def venv_dir() -> Path:
    return Path(os.environ.get("LAM_HASS_VENV") or "~/.cache/lamcontrol-test/hass-venv").expanduser()


def integrations() -> list[str]:
    """Integrations the tests load: top-level keys and entity platforms of the configuration, and
    those added as config entries."""
    text = CONFIGURATION.read_text()
    return sorted(set(re.findall(r"^(\w+):", text, re.M)) | set(re.findall(r"platform: (\w+)", text))
                  | CONFIG_ENTRIES)


def stamp_text() -> str:
    return json.dumps({"version": VERSION, "python": sys.version.split()[0], "integrations": integrations()})


def run(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.PIPE, text=True).stdout


def install(target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    venv.create(target, with_pip=True)
    python = target / "bin" / "python"
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = target / "wheels"
    try:
        run(*pip, "download", "--no-deps", "--only-binary", ":all:", "-d", wheels, f"homeassistant=={VERSION}")
    except subprocess.CalledProcessError:
        raise Unreachable(f"cannot download homeassistant=={VERSION} from the package index (no network?)") from None
    wheel = next(wheels.glob("homeassistant-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        constraints = archive.read("homeassistant/package_constraints.txt").decode()
    constraints_file = target / "constraints.txt"
    constraints_file.write_text(constraints + "\njosepy<2\n")
    run(*pip, "install", "-c", constraints_file, wheel, "josepy<2")
    requirements = run(python, "-c", REQUIREMENTS, *integrations()).split()
    run(*pip, "install", "-c", constraints_file, *requirements)


def main() -> int:
    target = venv_dir()
    stamp = target / ".lamcontrol-ready"
    hass = target / "bin" / "hass"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time; the others wait and reuse it
        if not (stamp.exists() and stamp.read_text() == stamp_text() and hass.exists()):
            started = time.monotonic()
            print(f"installing Home Assistant {VERSION} into {target} ...", file=sys.stderr, flush=True)
            try:
                install(target)
            except Unreachable as exc:
                print(exc, file=sys.stderr)
                return 3
            except subprocess.CalledProcessError as exc:
                print(f"installing Home Assistant failed: {exc}", file=sys.stderr)
                return 2
            stamp.write_text(stamp_text())
            print(f"installed in {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(hass)
    return 0


if __name__ == "__main__":
    sys.exit(main())
