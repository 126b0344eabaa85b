"""benchmarks/mutation.py: each mutant is one edit of cosmic-ray's operators, inside the functions named,
never in an annotation that ``from __future__ import annotations`` leaves unevaluated, and always a
program that compiles."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("cosmic_ray")  # a dev dependency (pip install -e '.[dev]')

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mutation.py"
SOURCE = '''from __future__ import annotations


def scaled(x: int | None, k: int = 2) -> int | None:
    return x * k


def kept(y):
    return y + 1
'''


@pytest.fixture(scope="module")
def mutation():
    spec = importlib.util.spec_from_file_location("mutation_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_mutants_are_single_edits_inside_the_named_function_and_never_in_annotations(mutation):
    mutants = mutation.generate_mutants(SOURCE, mutation.function_lines(SOURCE, ("scaled",)))
    edits = sorted((mutation.edit_of(SOURCE, m.code)[:2]) for m in mutants)
    assert edits == [
        ("def scaled(x: int | None, k: int = 2) -> int | None:",
         "def scaled(x: int | None, k: int = 3) -> int | None:"),
        ("return x * k", "return x / k"),
    ]
    for m in mutants:
        compile(m.code, "<mutant>", "exec")
        assert m.code.count("\n") == SOURCE.count("\n")  # one line changed, nothing added or removed


def test_unknown_function_names_are_refused_naming_them(mutation):
    with pytest.raises(SystemExit, match=r"\['missing'\] not defined in the module"):
        mutation.function_lines(SOURCE, ("scaled", "missing"))
