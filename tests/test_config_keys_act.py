"""Every config key acts: each key of config.DEFAULTS is read by code outside config/ (not only validated).

A key is read where the code (ast of every module outside config/, tests/ and benchmarks/) takes it
from a config object: ``cfg.KEY``, ``cfg["KEY"]``, ``cfg.get("KEY")`` or ``getattr(cfg, "KEY")``,
the object named ``cfg``, ``config``, ``resolved`` or ``values`` (or an attribute of that name, as in
``self.cfg.KEY``). A key validated and then read by nothing is a setting that silently does nothing
(``memory_pool_size`` once was one: test.py ran the authors' unbounded pool whatever it said).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from config import DEFAULTS
from config.config import DATASET_ROOT_KEYS

REPO = Path(__file__).resolve().parents[1]
NOT_LIBRARY = {"config", "tests", "benchmarks", "scripts", "data", "pretrain_model", "outputs", "runs"}
CONFIG_NAMES = {"cfg", "config", "resolved", "values"}
# Keys whose one reader sits elsewhere by design, each with that reader (checked below):
READ_AS_DEFAULTS = {"predictor_memory_pool_size"}     # the Python API's default (DEFAULTS.predictor_memory_pool_size)
READ_IN_CONFIG = set(DATASET_ROOT_KEYS.values())     # the dataset roots: config.dataset_root(cfg)


def _receiver(node: ast.AST) -> str:
    """The last name of what a key is read from: ``cfg`` for ``cfg`` and ``self.cfg``, '' otherwise."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _string(node: ast.AST):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def keys_read(source: str, receivers=frozenset(CONFIG_NAMES)) -> set:
    """The keys of DEFAULTS that ``source`` reads from an object whose name is in ``receivers``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _receiver(node.value) in receivers:
            found.add(node.attr)
        elif isinstance(node, ast.Subscript) and _receiver(node.value) in receivers and _string(node.slice):
            found.add(_string(node.slice))
        elif isinstance(node, ast.Call):
            func, args = node.func, node.args
            if (isinstance(func, ast.Attribute) and func.attr == "get" and _receiver(func.value) in receivers
                    and args and _string(args[0])):
                found.add(_string(args[0]))
            elif (isinstance(func, ast.Name) and func.id == "getattr" and len(args) > 1
                  and _receiver(args[0]) in receivers and _string(args[1])):
                found.add(_string(args[1]))
    return found & set(DEFAULTS)


def library_sources() -> dict:
    """{path: source} of every module outside config/, tests/ and benchmarks/."""
    return {str(path.relative_to(REPO)): path.read_text(encoding="utf-8") for path in sorted(REPO.rglob("*.py"))
            if not ({path.relative_to(REPO).parts[0]} & NOT_LIBRARY
                    or any(part.startswith(".") for part in path.relative_to(REPO).parts))}


def test_every_key_is_read_outside_config():
    read = set()
    for source in library_sources().values():
        read |= keys_read(source)
    unread = sorted(set(DEFAULTS) - read - READ_AS_DEFAULTS - READ_IN_CONFIG)
    assert not unread, (f"config keys validated but read by no code outside config/: {unread}; wire each to "
                        f"what it configures (cfg.KEY) or remove it")


def test_the_keys_read_elsewhere_by_design_are_read_there():
    from config import dataset_root

    assert READ_AS_DEFAULTS <= set(DEFAULTS) and READ_IN_CONFIG <= set(DEFAULTS)
    as_defaults = set()
    for source in library_sources().values():
        as_defaults |= keys_read(source, receivers={"DEFAULTS"})
    assert READ_AS_DEFAULTS <= as_defaults
    for dataset, key in DATASET_ROOT_KEYS.items():       # each root is what dataset_root gives for its dataset
        cfg = dict(DEFAULTS, dataset=dataset, **{key: f"/elsewhere/{key}"})
        assert dataset_root(cfg) == f"/elsewhere/{key}"


@pytest.mark.parametrize("source, expected", [
    ("def f(cfg):\n    return cfg.memory_pool_size\n", {"memory_pool_size"}),
    ("def f(self):\n    return self.cfg.lr\n", {"lr"}),
    ("def f(values):\n    return values['seed'], values.get('group')\n", {"seed", "group"}),
    ("def f(config):\n    return getattr(config, 'epochs')\n", {"epochs"}),
    ("def f(segmenter, args):\n    return segmenter.memory_pool_size, args.memory_size\n", set()),
])
def test_the_scan_tells_config_reads_from_other_attributes(source, expected):
    assert keys_read(source) == expected
