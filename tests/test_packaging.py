"""The wheel installs one top-level package, `vidrec`, with its presets, and nothing else."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: build with this environment's setuptools, without reaching an index
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (whl,) = out.glob("vidrec-*.whl")
    return whl


def test_wheel_holds_only_the_vidrec_namespace(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"vidrec"}
    for pkg in ("common", "candidate_gen", "ranking", "features", "features/sources", "evaluation", "pipelines"):
        assert f"vidrec/{pkg}/__init__.py" in names
    assert "vidrec/pipelines/presets/tiny.toml" in names
    assert not any(n.startswith("vidrec/tests/") for n in names)


def test_wheel_installed_into_a_fresh_venv_has_one_top_level_name(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, text=True,
    )
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout.strip()
    installed = {p.name for p in Path(site).iterdir()}
    ours = {n for n in installed if not n.startswith(("pip", "_distutils", "distutils", "setuptools", "pkg_resources", "__pycache__"))}
    assert {n for n in ours if not n.endswith(".dist-info")} == {"vidrec"}, sorted(ours)
    # the installed package holds its presets (installed without its dependencies: stdlib only)
    probe = (
        "import importlib.resources as r, vidrec; print(vidrec.__file__, "
        "r.files('vidrec.pipelines').joinpath('presets', 'tiny.toml').is_file())"
    )
    got = subprocess.run(
        [str(py), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout
    assert str(venv) in got and "site-packages" in got and got.strip().endswith("True")


PACKAGES = ("candidate_gen", "ranking", "features", "evaluation", "pipelines", "common", "vidrec")
#: scripts shipped in the package that run under another interpreter with its own packages:
#: the rechub worker runs in torch-rechub's environment (pipelines/rechub.py)
OTHER_INTERPRETER = {"pipelines/rechub_worker.py"}
#: import names of distributions named otherwise, for those not installed here
DISTRIBUTION_OF = {
    "sklearn": "scikit-learn",
    "faiss": "faiss-cpu",
    "tomli_w": "tomli-w",
    "yaml": "pyyaml",
    "PIL": "pillow",
}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level names of every absolute import in the packages that is neither the standard
    library nor vidrec, each with the files that import it (lazy imports inside functions too)."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for f in sorted((ROOT / package).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            if rel in OTHER_INTERPRETER:
                continue
            for node in ast.walk(ast.parse(f.read_text("utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {n.split(".")[0] for n in names}:
                    if top not in sys.stdlib_module_names and top != "vidrec":
                        found.setdefault(top, set()).add(rel)
    return found


def test_every_third_party_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    declared = {
        _normalized(re.match(r"[A-Za-z0-9._-]+", req).group()) for req in project["dependencies"]
    }
    installed = importlib.metadata.packages_distributions()
    missing = []
    for module, files in sorted(_third_party_imports().items()):
        dists = installed.get(module) or [DISTRIBUTION_OF.get(module, module)]
        if not {_normalized(d) for d in dists} & declared:
            where = ", ".join(sorted(files))
            missing.append(f"{module} ({' or '.join(dists)}), imported by {where}")
    assert not missing, "not in pyproject.toml [project] dependencies:\n" + "\n".join(missing)
    assert "torch" in _third_party_imports()  # the scan does see the packages' imports
