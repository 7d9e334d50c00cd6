"""The package's architecture: floors that import only downwards, no circles, small modules."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "clip_hba"
# each floor imports only from floors below it (the pipeline, files -> reports)
FLOORS = ["rsa", "data", "meg", "models", "evaluation", "training", "pipelines", "cli"]
BASE = {"clip_hba", "_validation", "_io", "_lazy", "cpu", "testing"}  # below every floor
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(module, imported names, at module level) of every clip_hba import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("clip_hba"):
            found.append((node.module, [a.name for a in node.names], id(node) in top))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("clip_hba"):
                    found.append((alias.name, [], id(node) in top))
    return found


def _floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASE:
        return -1
    return FLOORS.index(parts[1])


MODULES = _modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_downwards_only(name):
    own = _floor(name)
    for module, names, top_level in _imports(MODULES[name]):
        target = _floor(module)
        same_package = target == own and own >= 0
        assert target <= own, f"{name} imports {module} from a higher floor"
        # the command line imports the library inside its commands, so that --help is fast
        assert top_level or name.startswith("clip_hba.cli"), (
            f"{name} imports {module} inside a function"
        )
        if not same_package:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{name} uses private names {private} of {module}"


def test_no_import_circles():
    graph = {
        name: {m for m, _, top in _imports(path) if top and m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    # a package's __init__ re-exports its modules; the modules must not need each other in a ring
    graph = {
        n: {m for m in deps if not MODULES[m].name == "__init__.py"} for n, deps in graph.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join([*trail, node, dep]))
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_small(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


@pytest.mark.parametrize("package", FLOORS[:-1])  # the cli's modules serve its commands
def test_every_subpackage_lists_its_public_names(package):
    module = importlib.import_module(f"clip_hba.{package}")
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    # every public name of the package's modules is reachable from the package
    for path in (PACKAGE / package).glob("*.py"):
        if path.name.startswith("_"):
            continue
        sub = importlib.import_module(f"clip_hba.{package}.{path.stem}")
        missing = set(getattr(sub, "__all__", ())) - set(module.__all__)
        assert not missing, f"clip_hba.{package} does not list {sorted(missing)} of {path.stem}"


def test_the_command_line_starts_without_torch():
    import subprocess
    import sys

    code = "import sys, clip_hba.cli; print('torch' in sys.modules, 'peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_type_errors_and_value_errors_are_told_apart():
    from clip_hba.rsa import bootstrap_rdm_correlation
    from clip_hba.training import BehaviorFitConfig

    a, b = [0.1, 0.4, 0.2, 0.9, 0.5, 0.3], [0.2, 0.5, 0.1, 0.8, 0.6, 0.2]
    with pytest.raises(TypeError, match="n_bootstrap must be an integer, but got str '10'"):
        bootstrap_rdm_correlation(a, b, n_bootstrap="10")
    with pytest.raises(ValueError, match="'n_bootstrap': expected a positive integer, got 0"):
        bootstrap_rdm_correlation(a, b, n_bootstrap=0)
    with pytest.raises(TypeError, match="epochs must be an integer, but got float 2.5"):
        BehaviorFitConfig(model="m", out="o", epochs=2.5)
    with pytest.raises(ValueError, match=r"'lr': expected a number in \(0, inf\), but got -1"):
        BehaviorFitConfig(model="m", out="o", lr=-1)
