"""Layering: pipelines -> {candidate_gen, ranking, evaluation} -> features; never upward or across."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "features": {"features"},
    "candidate_gen": {"features", "candidate_gen"},
    "ranking": {"features", "ranking"},
    "evaluation": {"features", "evaluation"},
    "pipelines": {"features", "candidate_gen", "ranking", "evaluation", "pipelines"},
}
FORBIDDEN_IN_FEATURES = {"torch", "annoy", "lightgbm"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package):
    ours = set(ALLOWED)
    bad = []
    for f in sorted((ROOT / package).rglob("*.py")):
        imported = _imports(f)
        for mod in imported & ours - ALLOWED[package]:
            bad.append(f"{f.relative_to(ROOT)} imports {mod}")
        if package == "features":
            for mod in imported & FORBIDDEN_IN_FEATURES:
                bad.append(f"{f.relative_to(ROOT)} imports {mod} (features is the data layer)")
    assert not bad, "layering violated:\n" + "\n".join(bad)
