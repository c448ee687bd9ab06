"""Type-checks the package with mypy as it installs: ``python tests/typecheck.py`` (settings: setup.cfg).

The component folders install as ``lamcontrol.*`` through setup.cfg's package_dir, which mypy cannot
follow from the checkout (an editable install is an import hook mypy does not run). So this lays the
package out as it installs, in build/typecheck/ with links to the files, runs ``mypy -p lamcontrol``
there, and names each file in mypy's messages by its place in the repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("agents", "broker", "cli", "coordinator", "r1_bridge")
INSTALLED_PATH = re.compile(rf"^lamcontrol/(?=(?:{'|'.join(COMPONENTS)})/)", re.M)


def lay_out(tree: Path) -> Path:
    """``tree``/lamcontrol as the wheel holds it: the core package's files with the component folders
    inside, each a link into the checkout."""
    package = tree / "lamcontrol"
    shutil.rmtree(package, ignore_errors=True)
    package.mkdir(parents=True)
    for path in [*(ROOT / "lamcontrol").iterdir(), *(ROOT / folder for folder in COMPONENTS)]:
        if path.name != "__pycache__":
            (package / path.name).symlink_to(path)
    return tree


def main(argv: list[str]) -> int:
    tree = lay_out(ROOT / "build" / "typecheck")
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "setup.cfg"),
                           "--cache-dir", str(ROOT / ".mypy_cache"), *argv, "-p", "lamcontrol"],
                          cwd=tree, capture_output=True, text=True)
    sys.stdout.write(INSTALLED_PATH.sub("", done.stdout))
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
