"""Run-directory ownership: vidrec writes only into directories it created, deletes only the
files it wrote, never writes through a link out of its run directory, and one process at a time
writes a run directory (pipelines/rundir.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vidrec.features.atomic import atomic_write_text, make_dirs
from vidrec.pipelines.run import run_pipeline
from vidrec.pipelines.rundir import (
    LEDGER_FILE,
    LOCK_FILE,
    MARKER_FILE,
    RunDir,
    RunDirError,
    check_data_outside_run,
    read_lock,
)

CFG = {"seed": 0}


def _stage(*names: str):
    """A stage function that writes `names` (relative files) as vidrec's writers do."""

    def fn(d: Path) -> None:
        for n in names:
            atomic_write_text(d / n, n)

    return fn


def test_new_directory_is_marked_before_anything_else(tmp_path: Path) -> None:
    root = tmp_path / "new" / "run"
    with RunDir(root, CFG) as rd:
        rd.run_stage("a", _stage("x.txt", "sub/y.txt"))
    assert (root / MARKER_FILE).is_file()
    ledger = (root / LEDGER_FILE).read_text().split()
    assert {"a", "a/x.txt", "a/sub", "a/sub/y.txt", "manifest.json", "config.json"} <= set(ledger)


def test_foreign_non_empty_out_is_refused_and_untouched(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "config.json").write_text('{"mine": true}')
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(RunDirError, match="not a vidrec run directory"):
        RunDir(root, CFG)
    assert sorted(p.name for p in root.iterdir()) == before
    assert json.loads((root / "config.json").read_text()) == {"mine": True}


def test_empty_existing_out_is_taken(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with RunDir(root, CFG) as rd:
        rd.run_stage("a", _stage("x"))
    assert (root / MARKER_FILE).is_file() and (root / "a" / "x").is_file()


def test_data_inside_out_and_out_inside_data_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "P"
    (p / "data").mkdir(parents=True)
    with pytest.raises(RunDirError, match="lies inside the run directory"):
        check_data_outside_run(p / "data", p)
    with pytest.raises(RunDirError, match="inside the data directory"):
        check_data_outside_run(p, p / "runs" / "r1")
    with pytest.raises(RunDirError, match="lies inside the run directory"):
        check_data_outside_run(p, p)
    check_data_outside_run(p / "data", tmp_path / "runs" / "r1")  # siblings are fine
    # through the pipeline: refused before anything is written
    (p / "data" / "watches.csv").write_text("user_id,item_id,timestamp\n")
    with pytest.raises(RunDirError):
        run_pipeline({"seed": 0}, p, data_dir=p / "data", stages=("data",))
    assert sorted(x.name for x in p.iterdir()) == ["data"]
    assert (p / "data" / "watches.csv").read_text() == "user_id,item_id,timestamp\n"


def test_discard_deletes_only_what_vidrec_wrote(tmp_path: Path) -> None:
    root = tmp_path / "r"
    with RunDir(root, CFG) as rd:
        rd.run_stage("data", _stage("tables/watches.parquet", "checkpoints/c.pt"))
    # a user puts files of their own beside vidrec's, inside the stage directory and at the top
    (root / "data" / "my_tables").mkdir()
    (root / "data" / "my_tables" / "watches.csv").write_text("mine")
    (root / "data" / "notes.txt").write_text("mine")
    (root / "notes.txt").write_text("mine")
    with RunDir(root, {"seed": 1}) as rd:  # another config: every stage's attempt is discarded
        rd.run_stage("data", _stage("tables/watches.parquet"))
        recorded = set(rd.manifest["stages"]["data"]["artifacts"])
    assert (root / "data" / "my_tables" / "watches.csv").read_text() == "mine"
    assert (root / "data" / "notes.txt").read_text() == "mine"
    assert (root / "notes.txt").read_text() == "mine"
    assert not (root / "data" / "checkpoints" / "c.pt").exists()  # vidrec's old checkpoint went
    # a stranger's file is never recorded as an artifact
    assert recorded == {"data/tables/watches.parquet", "data/provenance.json"}


def test_symlinked_stage_directory_is_refused(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "r", tmp_path / "elsewhere"
    elsewhere.mkdir()
    with RunDir(root, CFG):
        pass
    (root / "a").symlink_to(elsewhere)
    with RunDir(root, CFG) as rd, pytest.raises(RunDirError, match="symbolic link"):
        rd.run_stage("a", _stage("x"))
    assert list(elsewhere.iterdir()) == []


def test_symlink_inside_a_stage_is_not_written_through(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "r", tmp_path / "elsewhere"
    elsewhere.mkdir()
    with RunDir(root, CFG) as rd:
        make_dirs(root / "a")
        (root / "a" / "checkpoints").symlink_to(elsewhere)
        with pytest.raises(RunDirError, match="leads out of the run directory"):
            rd.run_stage("a", _stage("checkpoints/c.pt"))
    assert list(elsewhere.iterdir()) == []


def test_legacy_run_directory_is_adopted(tmp_path: Path) -> None:
    root = tmp_path / "old"
    with RunDir(root, CFG) as rd:
        rd.run_stage("a", _stage("x"))
    # as an older vidrec left it: no marker, no ledger
    (root / MARKER_FILE).unlink()
    (root / LEDGER_FILE).unlink()
    with RunDir(root, CFG) as rd:
        assert rd.is_done("a")
    assert (root / MARKER_FILE).is_file()
    assert "a/x" in (root / LEDGER_FILE).read_text().split()


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from vidrec.pipelines.rundir import RunDir
    rd = RunDir(sys.argv[1], {"seed": 0})
    print("locked", flush=True)
    time.sleep(60)
    """
)


def _hold(root: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_naming_the_holder_then_a_dead_lock_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "r"
    proc = _hold(root)
    try:
        with pytest.raises(RunDirError, match=f"in use by another vidrec process \\(pid {proc.pid}"):
            RunDir(root, {"seed": 1})
        with pytest.raises(RunDirError, match="being written by a vidrec run"), read_lock(root):
            pass
    finally:
        proc.kill()  # SIGKILL: the process cannot clean up; the OS releases its lock
        proc.wait()
    assert json.loads((root / LOCK_FILE).read_text())["pid"] == proc.pid
    caplog.set_level("INFO", logger="vidrec")
    with RunDir(root, {"seed": 1}):
        assert json.loads((root / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock left by pid {proc.pid}" in caplog.text
    with read_lock(root):  # no writer now
        pass
