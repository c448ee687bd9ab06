"""The package type-checks with mypy (settings in setup.cfg): strict on the core package and the
coordinator's core, the defaults plus function bodies elsewhere; no error anywhere."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(600)


def test_the_package_has_no_type_errors():
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "typecheck.py")], capture_output=True, text=True,
                          timeout=580)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout


def test_the_core_is_checked_strictly_and_components_by_their_bodies(tmp_path):
    """The same settings on a small package laid out like ours: an unannotated function is an error in
    the core and not in a component, and a wrong type inside it is an error in both."""
    unannotated = "def twice(x):\n    times: int = 'two'\n    return x * times\n"
    for folder in ("lamcontrol", "lamcontrol/agents"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("")
        (tmp_path / folder / "probe.py").write_text(unannotated)
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "setup.cfg"), "--cache-dir",
                           str(tmp_path / "cache"), "-p", "lamcontrol"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=280)
    errors = {line.split(": error: ")[0].replace("\\", "/") for line in done.stdout.splitlines() if ": error: " in line}
    assert errors == {"lamcontrol/probe.py:1", "lamcontrol/probe.py:2", "lamcontrol/agents/probe.py:2"}, done.stdout
