"""Peak resident memory (pipelines.peak_rss): getrusage's units per platform, and None where the
platform has no `resource` module (Windows)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vidrec.pipelines import peak_rss

ROOT = Path(__file__).resolve().parents[1]


def test_ru_maxrss_is_bytes_on_macos_and_kib_elsewhere() -> None:
    assert peak_rss.maxrss_mb(3 * 2**20, "darwin") == 3.0
    assert peak_rss.maxrss_mb(3 * 1024, "linux") == 3.0
    assert peak_rss.maxrss_mb(3 * 1024, "freebsd14") == 3.0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_the_peak_matches_the_kernels_high_water_mark() -> None:
    status = Path("/proc/self/status").read_text().splitlines()
    hwm_mb = next(float(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    peak = peak_rss.peak_rss_mb()
    # the two counters are updated at slightly different moments; a unit mistake (bytes read
    # as KiB, or the reverse) would be off by a factor of 1024
    assert peak is not None and hwm_mb / 2 <= peak <= hwm_mb * 2


def test_no_resource_module_reports_no_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peak_rss, "resource", None)
    assert peak_rss.peak_rss_mb() is None


def test_a_run_records_a_null_peak_where_the_platform_has_no_resource_module(tmp_path) -> None:
    probe = (
        "import json, sys\n"
        "sys.modules['resource'] = None  # as on Windows: `import resource` raises ImportError\n"
        "from vidrec.pipelines.rundir import RunDir\n"
        f"run = {str(tmp_path / 'run')!r}\n"
        "with RunDir(run, {'seed': 0}) as rd:\n"
        "    rd.run_stage('data', lambda out: None)\n"
        "manifest = json.loads(open(run + '/manifest.json', encoding='utf-8').read())\n"
        "print(manifest['stages']['data']['status'], manifest['stages']['data']['peak_rss_mb'])\n"
    )
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done None"


def test_the_module_imports_only_the_standard_library() -> None:
    """pipelines/rechub_worker.py loads it by file in an interpreter that has no vidrec."""
    tree = ast.parse((ROOT / "pipelines" / "peak_rss.py").read_text("utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported and all(m.split(".")[0] in sys.stdlib_module_names for m in imported)
