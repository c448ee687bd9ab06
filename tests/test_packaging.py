"""The project installs inside one namespace: `lamcontrol` and nothing else at the top level."""
import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("agents", "broker", "cli", "coordinator", "r1_bridge")  # "cli": the front end, above the others


def python_sources() -> list[Path]:
    """Every Python file of the repository: the package, the components, tests, benches and tools."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    if listed.returncode == 0:
        return [ROOT / name for name in listed.stdout.splitlines() if (ROOT / name).exists()]
    skipped = {".venv", "build", "dist", ".git"}  # a source tree without git
    return [path for path in ROOT.rglob("*.py") if not skipped & set(path.relative_to(ROOT).parts)]


def bare_imports(source: str) -> list[tuple[int, str]]:
    """Imports of a component folder by its bare name (`import agents`, `from broker.x import y`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [(node.lineno, name) for name in names if name.split(".")[0] in COMPONENTS]
    return found


def test_no_source_imports_a_component_by_its_bare_name():
    sources = list(python_sources())
    assert len(sources) > 50
    offenders = [(str(path.relative_to(ROOT)), *hit) for path in sources for hit in bare_imports(path.read_text())]
    assert offenders == []


FOLDER_NAMES = re.compile(rf"(:(?:mod|class|func|meth|attr|data):`~?|-m |\bimport_module\([\"'])"
                          rf"(?:{'|'.join(COMPONENTS)})\.")


def cited_by_folder_name(text: str) -> list[int]:
    """Lines that name a module by its folder name: a docstring's cross-reference (:mod:`agents.main`),
    a `python -m coordinator.main`, an import_module("broker.auth")."""
    return [number for number, line in enumerate(text.splitlines(), 1) if FOLDER_NAMES.search(line)]


def test_no_source_names_a_module_by_its_folder_name():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    texts = [ROOT / name for name in tracked.splitlines() if name.endswith((".py", ".sh", ".service", ".cfg", ".toml"))
             or name.startswith(".ci/")] or python_sources()
    offenders = [(str(path.relative_to(ROOT)), line) for path in texts if path.exists()
                 for line in cited_by_folder_name(path.read_text()) if path.name != "test_packaging.py"]
    assert offenders == []


def test_no_script_puts_the_repository_root_on_the_path():
    """The package is imported as installed (pip install -e .), never from the checkout's root."""
    offenders = [str(path.relative_to(ROOT)) for path in python_sources()
                 if re.search(r"sys\.path\b.*\bstr\(ROOT\)[,)\]]", path.read_text())]
    assert offenders == []


def test_folder_name_check_sees_a_citation():
    sample = "see :mod:`agents.webdriver`\n:class:`~lamcontrol.coordinator.language.Context`\npython -m coordinator.main\n"
    assert cited_by_folder_name(sample) == [1, 3]


@pytest.mark.parametrize("folder", COMPONENTS)
def test_a_component_imported_by_its_folder_name_says_how_to_import_it(folder):
    """From the repository root the folders are on the path; importing one by its bare name would make a
    second copy of its modules (a handler registered on one copy's event never fires for the other)."""
    out = subprocess.run([sys.executable, "-c", f"import {folder}.main"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert f"ImportError: import lamcontrol.{folder}, not {folder}: " in out.stderr
    installed = subprocess.run([sys.executable, "-c", f"import lamcontrol.{folder}.main"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
    assert installed.returncode == 0, installed.stderr


def test_bare_import_check_sees_a_bare_import():
    sample = "import agents.main\nfrom coordinator import journal\nfrom lamcontrol.agents import main\n"
    assert bare_imports(sample) == [(1, "agents.main"), (2, "coordinator")]


PACKAGES = {"lamcontrol": "lamcontrol", **{folder: f"lamcontrol.{folder}" for folder in COMPONENTS}}


def module_imports() -> dict[str, set[str]]:
    """Each project module and the project modules it imports, wherever in the file (a function-level
    import still ties two modules together); only ``if TYPE_CHECKING:`` blocks do not count."""
    modules = {f"{package}.{path.stem}": path for folder, package in PACKAGES.items()
               for path in (ROOT / folder).glob("*.py")}
    imports = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        guarded = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test) == "TYPE_CHECKING" for node in ast.walk(block)}
        package = name.rpartition(".")[0]
        found = set()
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            if isinstance(node, ast.ImportFrom):
                base = ".".join(filter(None, (package if node.level == 1 else "", node.module or "")))
                found |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        imports[name] = {module for module in found if module in modules and module != name}
    return imports


def circles(imports: dict[str, set[str]]) -> list[str]:
    def reaches(start: str, target: str, seen: frozenset[str]) -> bool:
        return any(m == target or (m not in seen and reaches(m, target, seen | {m})) for m in imports.get(start, ()))

    return sorted(module for module in imports if reaches(module, module, frozenset()))


def test_no_module_imports_itself_round_a_circle():
    """Shared helpers live a level below the modules that use them: the CLI's in cli/console.py,
    the bridge's in r1_bridge/web.py, understanding's types in coordinator/grammar.py."""
    imports = module_imports()
    assert len(imports) > 50 and "lamcontrol.r1_bridge.web" in imports["lamcontrol.r1_bridge.api"]
    assert circles(imports) == []


def upward_imports(imports: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports against the layers, bottom up: the core package (lamcontrol/), the components, the
    command-line front end (cli/) that starts, asks and sets them up. ``lamcontrol/__main__.py``,
    the ``lam`` program's entry, is the front end's door and stands above them all."""
    def layer(module: str) -> int:
        parts = module.split(".")
        return 3 if module == "lamcontrol.__main__" else 2 if parts[1] == "cli" else 1 if len(parts) > 2 else 0

    return sorted((m, i) for m, found in imports.items() for i in found if layer(i) > layer(m))


def test_imports_go_down_only_the_core_imports_no_component():
    """Even an import inside a function ties two modules: the core reaches no component, lazily or not."""
    imports = module_imports()
    assert {"lamcontrol.cli.up", "lamcontrol.bus", "lamcontrol.coordinator.single"} <= set(imports)
    assert upward_imports(imports) == []


def test_the_layer_check_sees_an_upward_import():
    imports = {"lamcontrol.bus": {"lamcontrol.protocol"}, "lamcontrol.up": {"lamcontrol.coordinator.single"},
               "lamcontrol.coordinator.service": {"lamcontrol.bus", "lamcontrol.cli.console"},
               "lamcontrol.cli.up": {"lamcontrol.coordinator.single"}, "lamcontrol.__main__": {"lamcontrol.cli.main"}}
    assert upward_imports(imports) == [("lamcontrol.coordinator.service", "lamcontrol.cli.console"),
                                       ("lamcontrol.up", "lamcontrol.coordinator.single")]


def test_the_circle_check_sees_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]


def test_installed_components_resolve_inside_the_namespace(tmp_path):
    """Outside the checkout, the components import as lamcontrol.* and no bare `agents` comes from us."""
    probe = ("import importlib.util, json, lamcontrol.agents.main, lamcontrol.r1_bridge.app;"
             "spec = importlib.util.find_spec('agents');"
             "print(json.dumps([lamcontrol.agents.main.__file__, spec and spec.origin]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    agents_main, bare_agents = __import__("json").loads(out.stdout)
    assert Path(agents_main).resolve() == (ROOT / "agents" / "main.py").resolve()
    assert bare_agents is None or not Path(bare_agents).resolve().is_relative_to(ROOT)


@pytest.mark.timeout(240)
def test_wheel_holds_only_the_lamcontrol_namespace(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=220)
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("lamcontrol-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"lamcontrol"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "lamcontrol/r1_bridge/templates/r1.html" in names
    assert "lamcontrol/agents/main.py" in names
