"""`vidrec tune`: a resumable Optuna search on the validation window, its outputs, and that
the test window never enters the choice."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest
import torch
from test_experiments_real import TINY_CG

from vidrec.common.torch_utils import check_finite_loss
from vidrec.pipelines.config import UsageError, resolve_config
from vidrec.pipelines.context import RunContext
from vidrec.pipelines.rundir import RunDir
from vidrec.pipelines.tune import SEARCH_SPACE, search, tune

torch.set_num_threads(1)


def _config(seed: int = 0) -> dict:
    # trials scored as the test is: every user served once at the ranker window's start
    return resolve_config("tiny", [*TINY_CG, "candidate_gen.valid_protocol=window"], seed=seed)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "t"
    result = tune(_config(), out, trials=3, compare=False, progress=False)
    return out, result


def test_search_writes_the_study_the_trials_and_a_config_run_takes(tuned) -> None:
    out, result = tuned
    assert (out / "search" / "study.db").is_file()
    assert (out / "search" / "trials.png").stat().st_size > 0
    trials = json.loads((out / "search" / "trials.json").read_text())["trials"]
    assert len(trials) == 3 and all(t["state"] == "complete" for t in trials)
    assert all(0.0 <= t["value"] <= 1.0 and len(t["curve"]) >= 1 for t in trials)
    best = max(trials, key=lambda t: t["value"])
    assert result["tuned"]["trial"] == best["number"]
    assert result["tuned"]["validation_value"] == pytest.approx(best["value"])
    # best.toml is a config file: `vidrec run --config best.toml` takes it, with its origin
    path = out / "search" / "best.toml"
    values = tomllib.loads(path.read_text())
    cfg = resolve_config("tiny", config_file=path)  # (--set values would override the file)
    for row in result["settings"]:
        section, name = row["setting"].split(".", 1)
        assert cfg[section][name] == values[section][name] == row["tuned"]
    assert set(r["setting"] for r in result["settings"]) == set(SEARCH_SPACE)
    assert cfg["tuned"]["trial"] == best["number"]
    md = (out / "tune.md").read_text()
    assert "| setting | derived | tuned |" in md and "trials.png" in md


def test_a_rerun_resumes_the_study_and_another_config_is_refused(tuned) -> None:
    out, _ = tuned
    before = json.loads((out / "search" / "trials.json").read_text())["trials"]
    again = tune(_config(), out, trials=4, compare=False, progress=False)
    trials = json.loads((out / "search" / "trials.json").read_text())["trials"]
    assert len(trials) == 4 and again["n_trials"] == 4  # one more trial, the first three kept
    assert [(t["params"], t["value"]) for t in trials[:3]] == [
        (t["params"], t["value"]) for t in before
    ]
    with pytest.raises(UsageError, match="another base config"):
        tune(_config(seed=1), out, trials=5, compare=False, progress=False)


def test_no_budget_and_a_bad_budget_are_refused(tmp_path) -> None:
    with pytest.raises(UsageError, match="budget"):
        tune(_config(), tmp_path / "a", trials=None, minutes=None)
    with pytest.raises(UsageError, match="trials"):
        tune(_config(), tmp_path / "b", trials=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_test_window_does_not_change_the_search(tuned, tmp_path) -> None:
    """The same search over a log whose test-window watches are shuffled across items gives
    the same trials and values: only [start, valid_end) is read."""
    out, _ = tuned
    cfg = _config()
    results = []
    for i, scramble in enumerate((False, True)):
        with RunDir(out / "runs" / "derived", cfg) as run:
            ctx = RunContext(run, None, False)
            ds, split = ctx.dataset(), ctx.split()
            if scramble:
                w = ds.watches.copy()
                test = (w["timestamp"] >= split.valid_end).to_numpy()
                assert test.any()
                rng = np.random.default_rng(5)
                w.loc[test, "item_id"] = rng.permutation(w.loc[test, "item_id"].to_numpy())
                ds.watches = w
            work = tmp_path / f"w{i}"
            work.mkdir()
            found = search(cfg, work, ctx, trials=2, minutes=None, progress=False)
        results.append([(t["params"], t["value"]) for t in found["trials"]])
    assert results[0] == results[1]


def test_a_diverging_trial_fails_and_the_search_goes_on(tmp_path, monkeypatch) -> None:
    import vidrec.candidate_gen.train as cg_train

    real = cg_train.train_candidate_generator
    calls: list[float] = []

    def first_diverges(config, *args, **kwargs):
        calls.append(config.learning_rate)
        if len(calls) == 1:
            check_finite_loss(
                float("inf"), stage="candidate_gen", epoch=1, setting="lr", lr=config.learning_rate
            )
        return real(config, *args, **kwargs)

    monkeypatch.setattr(cg_train, "train_candidate_generator", first_diverges)
    result = tune(_config(), tmp_path / "t", trials=2, compare=False, progress=False)
    trials = json.loads((tmp_path / "t" / "search" / "trials.json").read_text())["trials"]
    assert len(calls) == 2
    assert [t["state"] for t in trials] == ["fail", "complete"]
    assert result["tuned"]["trial"] == 1


@pytest.mark.slow
def test_cli_tune_compares_the_tuned_and_derived_settings_on_the_test_window(tmp_path) -> None:
    from vidrec.pipelines.cli import main

    out = tmp_path / "t"
    sets = [x for kv in TINY_CG for x in ("--set", kv)]
    argv = ["tune", "--out", str(out), "--preset", "tiny", *sets, "--trials", "2"]
    rc = main([*argv, "--no-progress"])
    assert rc == 0
    result = json.loads((out / "tune.json").read_text())
    for name in ("derived", "tuned"):
        report = json.loads((out / "runs" / name / "report.json").read_text())
        ours = result["runs"][name]["test"]["retrieval"]["system"]
        assert ours == report["summary"]["retrieval"]["system"]
    tuned_cfg = json.loads((out / "runs" / "tuned" / "config.json").read_text())
    assert tuned_cfg["tuned"]["trial"] == result["tuned"]["trial"]
    md = (out / "tune.md").read_text()
    assert "| retrieval | Recall@50 |" in md
    run_md = (out / "runs" / "tuned" / "report.md").read_text()
    assert "Tuned settings" in run_md and "Hyperparameter search" in run_md


def test_a_tuned_run_reports_its_settings_beside_the_values_searched_from(tuned) -> None:
    from vidrec.pipelines.report import _tuned_section

    out, result = tuned
    cfg = resolve_config("tiny", config_file=out / "search" / "best.toml")
    section = _tuned_section(cfg)
    assert section is not None and section.figures  # the study's trial plot
    table = section.table.set_index("setting")
    for row in result["settings"]:
        assert json.loads(table.loc[row["setting"], "used"]) == row["tuned"]
        assert json.loads(table.loc[row["setting"], "before the search"]) == row["derived"]
    assert _tuned_section(resolve_config("tiny")) is None
