"""The layers of the code base, read from the imports (ast) of every module outside tests/.

    4  train.py test.py predict.py demo.py reproduce.py, benchmarks/   scripts: parse, build, call
    3  vipmt/, synthetic/                                 library: builders, loops, loader; dataset writers
    2  models/, dataset/                                  the network; the data pipeline
    1  config/                                            every default, the config rules
    0  utils/                                             helpers that know no other layer

A module imports only its own package and packages of a lower layer: no arrow between scripts,
none between packages of one layer, none back up, hence no cycle. Nothing loads a module by
path (importlib), so a script cannot reach another script that way either.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("train", "test", "predict", "demo", "reproduce")
LAYERS = {"utils": 0, "config": 1, "models": 2, "dataset": 2, "vipmt": 3, "synthetic": 3, "benchmarks": 4,
          **{script: 4 for script in SCRIPTS}}
SKIPPED = {"tests", "scripts", "data", "pretrain_model", "outputs", "runs"}   # no library code in these


def source_files() -> dict[str, list[Path]]:
    """Every .py file outside tests/, grouped by its top-level unit (a script or a package)."""
    units: dict[str, list[Path]] = {}
    for path in sorted(REPO.rglob("*.py")):
        parts = path.relative_to(REPO).parts
        if parts[0] in SKIPPED or any(p.startswith(".") for p in parts):
            continue
        units.setdefault(Path(parts[0]).stem, []).append(path)
    return units


def imports_of(source: str) -> list[tuple[str, int]]:
    """(top-level name, line) of every absolute import; relative imports stay inside the package."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def violations(unit: str, source: str, where: str) -> list[str]:
    """The layer rules broken by the module ``where`` (of top-level ``unit``) with text ``source``."""
    found = []
    for name, line in imports_of(source):
        if name == "importlib":
            found.append(f"{where}:{line}: loads modules by path (importlib); import the library instead")
        elif name in LAYERS and name != unit and LAYERS[name] >= LAYERS[unit]:
            kind = "a script" if name in SCRIPTS else f"{name}/ (layer {LAYERS[name]})"
            found.append(f"{where}:{line}: {unit} (layer {LAYERS[unit]}) imports {kind}")
    return found


def test_every_unit_has_a_layer():
    units = source_files()
    assert set(SCRIPTS) | {"vipmt", "models", "dataset", "utils", "config"} <= set(units)
    assert not set(units) - set(LAYERS), "place new top-level packages in LAYERS (and the layout in docs/README.md)"


def test_imports_only_go_down():
    broken = []
    for unit, paths in source_files().items():
        for path in paths:
            broken += violations(unit, path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("unit, source, expected", [
    ("test", "from train import build_model\n", "test (layer 4) imports a script"),
    ("demo", "import importlib.util\n", "importlib"),
    ("models", "def f():\n    from vipmt.build import build_model\n", "imports vipmt/ (layer 3)"),
    ("dataset", "import models.vipmt\n", "imports models/ (layer 2)"),
    ("utils", "from config import DEFAULTS\n", "imports config/ (layer 1)"),
    ("vipmt", "from .build import build_model\nfrom models import VIPMT\nimport torch\n", None),
])
def test_the_rules_catch_upward_and_sideways_imports(unit, source, expected):
    found = violations(unit, source, "x.py")
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found


def module_imports(package: str, path: Path) -> set[str]:
    """The modules of ``package`` that the module at ``path`` imports (anywhere in it, also under
    TYPE_CHECKING or inside a function): ``package.name`` for ``from .name import ...``,
    ``from . import name``, ``from package.name import ...``, ``import package.name``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {f"{package}.{node.module}"} if node.module else {f"{package}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(f"{package}."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(f"{package}.")}
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle of a module graph {module: modules it imports}, each once (starting at its least name)."""
    cycles = []

    def walk(path):
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == path[0]:
                cycles.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:
                walk(path + [nxt])

    for start in sorted(graph):
        walk([start])
    return cycles


def test_no_import_cycle_between_the_modules_of_a_package():
    # vipmt/hooks.py <-> vipmt/training.py used to import each other (HookBase, Checkpointer, default_hooks)
    cycles = []
    for unit, paths in source_files().items():
        if len(paths) > 1:
            graph = {f"{unit}.{p.stem}": module_imports(unit, p) for p in paths if p.stem != "__init__"}
            cycles += import_cycles(graph)
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_check_finds_cycles():
    assert import_cycles({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}) == [["p.a", "p.b", "p.c", "p.a"]]
    assert import_cycles({"p.a": {"p.b"}, "p.b": set()}) == []
