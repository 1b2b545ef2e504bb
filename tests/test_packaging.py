"""The wheel installs one top-level package, `vidrec`, with its presets, and nothing else."""

import subprocess
import sys
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
