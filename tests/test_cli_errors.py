"""Every expected failure of the command line is one readable line with the documented exit code:
2 for a command line that cannot be run as given, 3 for bad config values (docs/failure_modes.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidrec.pipelines.cli import main

USAGE, DATA = 2, 3


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = int(exc.code or 0)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


@pytest.mark.parametrize(
    "argv,code,phrase",
    [
        (["run", "--preset", "tiny", "--stages", "data,foo"], USAGE, "--stages: unknown stage(s) ['foo']"),
        (["run", "--preset", "tiny", "--redo", "bar"], USAGE, "--redo: unknown stage(s) ['bar']"),
        (["run", "--dataset", "movielens"], USAGE, "--dataset movielens needs --data-dir DIR"),
        (["recommend", "--user", "1", "-k", "0"], USAGE, "argument -k: expected an integer >= 1, got 0"),
        (["recommend", "--user", "99999999999999999999"], USAGE, "outside 0..9223372036854775807"),
        (["recommend", "--user", "1e2"], USAGE, "ids are integer text, got '1e2'"),
        (["predict", "--user", "1", "--items", "1,99999999999999999999"], USAGE, "outside 0.."),
        (["predict", "--user", "1", "--items", ","], USAGE, "--items names no item id"),
        (["run", "--preset", "tiny", "--set", "split.train_end=2.0"], DATA, "'split.train_end' expects a number > 0 and < 1"),
        (["run", "--preset", "tiny", "--set", "split.valid_end=0.5", "--set", "split.train_end=0.6"], DATA, "train_end < valid_end"),
        (["run", "--preset", "tiny", "--set", "candidate_gen.learning_rate=nan"], DATA, "must be a finite number, got nan"),
        (["run", "--preset", "tiny", "--set", "ranking.lr=inf"], DATA, "must be a finite number"),
        (["run", "--preset", "tiny", "--set", "ranking.epochs=-1"], DATA, "'ranking.epochs' expects a number >= 1, got -1"),
        (["run", "--preset", "tiny", "--set", "candidate_gen.num_negatives=0"], DATA, "'candidate_gen.num_negatives' expects"),
    ],
)
def test_one_line_and_exit_code(
    argv: list[str], code: int, phrase: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    flag = "--out" if argv[0] == "run" else "--run"
    rc, last = _run([*argv, flag, str(out)], capsys)
    assert rc == code, last
    assert phrase in last
    assert "Traceback" not in last
    assert not out.exists()  # refused before anything was written


def test_version_and_help_do_not_import_torch():
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from vidrec.pipelines.cli import main\n"
        "for argv in (['--version'], ['--help'], ['run', '--help'], ['experiment', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "vidrec 0.1.0" in out.stdout and "usage: vidrec" in out.stdout
    assert out.stdout.strip().endswith("TORCH False")


def test_an_import_error_of_vidrecs_own_modules_is_not_hidden(monkeypatch: pytest.MonkeyPatch):
    """A broken module must surface as its ImportError, not as "invalid choice: run"."""
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "vidrec.pipelines" and args and args[2] and "commands" in args[2]:
            raise ImportError("cannot import name 'x' from 'vidrec.pipelines.commands'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(ImportError, match="vidrec.pipelines.commands"):
        main(["run", "--preset", "tiny", "--out", "x"])


def test_a_diverged_training_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vidrec.common.torch_utils import check_finite_loss
    from vidrec.pipelines import commands

    def diverge(args: object) -> int:
        check_finite_loss(float("nan"), stage="ranker", epoch=2, setting="ranking.lr", lr=0.5)
        return 0

    monkeypatch.setattr(commands, "cmd_run", diverge)
    rc, last = _run(["run", "--preset", "tiny", "--out", str(tmp_path / "run")], capsys)
    assert rc == DATA
    assert last == (
        "vidrec run: error: ranker: the training loss is nan at epoch 2: training diverged; "
        "lower ranking.lr (now 0.5) and train again"
    )
