"""Imports run one way: ``d2ssl.evaluation`` builds on ``d2ssl.engine``, the engine never imports it
(the kNN monitor reaches the training loop as a lazy call of the config)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.config import LazyCall as L
from detectron2.engine import HookBase

from d2ssl.config import ConfigError
from d2ssl.engine.hooks import instantiate_hook
from d2ssl.evaluation.knn_monitor import build_knn_monitor

REPO_ROOT = Path(__file__).resolve().parents[2]
ENGINE = REPO_ROOT / "d2ssl" / "engine"


def _imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, at any depth of the file (function-local imports included),
    relative imports resolved against the ``d2ssl.engine`` package."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ..evaluation import y
                base = ["d2ssl", "engine"][: 2 - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_engine_module_imports_evaluation():
    files = sorted(ENGINE.glob("**/*.py"))
    assert len(files) >= 5  # the glob found the package
    offenders = {
        str(path.relative_to(REPO_ROOT)): name
        for path in files
        for name in _imported_modules(path)
        if name == "d2ssl.evaluation" or name.startswith("d2ssl.evaluation.")
    }
    assert not offenders, f"d2ssl/engine imports d2ssl.evaluation: {offenders}"


def test_the_static_check_sees_a_relative_import_of_evaluation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ..evaluation.knn import knn_scores\n")
    assert "d2ssl.evaluation.knn" in _imported_modules(bad)


def test_importing_the_training_loop_loads_no_evaluation_module():
    code = (
        "import json, sys\n"
        "import d2ssl.engine.train_loop\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'd2ssl.evaluation' "
        "or m.startswith('d2ssl.evaluation.'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


class _Hook(HookBase):
    def __init__(self, period: int):
        self.period = period


def _maybe_hook(period: int = 0) -> _Hook | None:
    return _Hook(period) if period else None


def _not_a_hook(period: int = 0) -> dict:
    return {"period": period}


def _unbuildable() -> list:
    raise AssertionError("an argument of a hook turned off was built")


def test_a_hook_node_is_instantiated_and_none_means_no_hook():
    assert instantiate_hook(None, "train.knn_monitor") is None
    assert instantiate_hook(L(_maybe_hook)(period=0), "train.knn_monitor") is None
    # period 0: off, and nothing under it is built (the monitor's data sets need not exist).
    off = L(build_knn_monitor)(period=0, memory=L(_unbuildable)())
    assert instantiate_hook(off, "train.knn_monitor") is None
    hook = instantiate_hook(L(_maybe_hook)(period=3), "train.knn_monitor")
    assert isinstance(hook, _Hook) and hook.period == 3


def test_an_old_style_monitor_section_is_an_error_naming_the_key_and_the_fix():
    with pytest.raises(ConfigError, match=r"train\.knn_monitor must be a lazy call.*build_knn_monitor"):
        instantiate_hook(dict(period=2, memory=None), "train.knn_monitor")
    with pytest.raises(ConfigError, match=r"train\.knn_monitor: .* not a detectron2 HookBase"):
        instantiate_hook(L(_not_a_hook)(period=2), "train.knn_monitor")
