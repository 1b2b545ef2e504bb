"""Layering: pipelines -> {candidate_gen, ranking, evaluation} -> features; never upward or across."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "features": {"features"},
    "common": {"features", "common"},  # shared torch code, below both stages
    "candidate_gen": {"features", "common", "candidate_gen"},
    "ranking": {"features", "common", "ranking"},
    "evaluation": {"features", "evaluation"},
    "pipelines": {"features", "common", "candidate_gen", "ranking", "evaluation", "pipelines"},
}
FORBIDDEN_IN_FEATURES = {"torch", "annoy", "lightgbm"}


def _package(module: str) -> str:
    """'vidrec.features.io' -> 'features'; the bare namespace is 'vidrec'; others their top name."""
    parts = module.split(".")
    return parts[1] if parts[0] == "vidrec" and len(parts) > 1 else parts[0]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {_package(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(_package(node.module))
    return out


def _absolute_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package):
    ours = set(ALLOWED) | {"vidrec"}  # the public API (vidrec/__init__) sits above every package
    bad = []
    for f in sorted((ROOT / package).rglob("*.py")):
        imported = _imports(f)
        for mod in imported & ours - ALLOWED[package]:
            bad.append(f"{f.relative_to(ROOT)} imports {mod}")
        if package == "features":
            for mod in imported & FORBIDDEN_IN_FEATURES:
                bad.append(f"{f.relative_to(ROOT)} imports {mod} (features is the data layer)")
    assert not bad, "layering violated:\n" + "\n".join(bad)


def test_the_project_imports_itself_through_one_namespace():
    """`import features` would pick up any other distribution's top-level `features`."""
    bad = []
    for folder in [*ALLOWED, "tests", "benchmarks", "vidrec"]:
        for f in sorted((ROOT / folder).rglob("*.py")):
            for mod in _absolute_imports(f):
                if mod.split(".")[0] in ALLOWED:
                    bad.append(f"{f.relative_to(ROOT)} imports {mod}; use vidrec.{mod}")
    assert not bad, "\n".join(bad)
