"""`vidrec experiment`: variant construction, the W1 distance, resuming, and tiny end-to-end runs."""

import json

import numpy as np
import pytest

from vidrec.evaluation.watch_time import calibration_summary
from vidrec.pipelines import experiments
from vidrec.pipelines.config import apply_overrides, resolve_config
from vidrec.pipelines.experiments import (
    CHEAP_ANN,
    RANKER_VARIANTS,
    _depth_layers,
    _finished_study_run,
    _slug,
    cg_feature_variants,
    cg_ssl_variants,
    run_experiment,
    wasserstein_1,
)


def test_wasserstein_1_by_hand():
    # [0, 1] vs [2, 3]: the quantile functions differ by exactly 2 at every level
    assert wasserstein_1(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == pytest.approx(2.0)
    assert wasserstein_1(np.array([5.0, 1.0, 3.0]), np.array([1.0, 3.0, 5.0])) == 0.0
    # a point mass at 0 vs a uniform sample over [0, 1]: ∫ u du = 0.5
    assert wasserstein_1(np.zeros(10), np.linspace(0, 1, 10_001)) == pytest.approx(0.5, abs=1e-3)


def test_depth_layers_end_at_the_embedding_dim():
    assert _depth_layers(0, 64) == []
    assert _depth_layers(1, 64) == [64]
    assert _depth_layers(2, 64) == [128, 64]
    assert _depth_layers(4, 64) == [512, 256, 128, 64]


def test_variants_cover_the_feature_ladder_depths_and_ssl_grid():
    base = resolve_config("default", [], seed=0)
    v = cg_feature_variants(base)
    assert list(v)[:4] == [
        "watches (depth 2)",
        "+searches (depth 2)",
        "+example_age (depth 2)",
        "+demographics (depth 2)",
    ]
    assert v["watches (depth 2)"]["candidate_gen.use_searches"] is False
    assert v["+example_age (depth 2)"]["candidate_gen.use_example_age"] is True
    assert v["+example_age (depth 2)"]["candidate_gen.use_demographics"] is False
    assert {k for k in v if k.startswith("all features")} == {
        f"all features (depth {d})" for d in (0, 1, 3, 4)
    }
    s = cg_ssl_variants(base, (0.1, 1.0))
    assert len(s) == 8
    assert s["cfm @ 10% labels"] == {
        "candidate_gen.ssl": "cfm",
        "candidate_gen.label_fraction": 0.1,
    }
    # every ranker variant is a valid override of the preset
    for over in RANKER_VARIANTS.values():
        apply_overrides(base, {f"ranking.{k}": val for k, val in over.items()})


def test_finished_study_run_ignores_annoy_but_not_the_model(tmp_path):
    base = resolve_config("tiny", [], seed=0)
    cfg = apply_overrides(base, CHEAP_ANN)
    (tmp_path / "retrieval").mkdir()
    assert not _finished_study_run(tmp_path, cfg, need_exact_ages=False)  # no config.json
    (tmp_path / "config.json").write_text(json.dumps(base), "utf-8")
    assert not _finished_study_run(tmp_path, cfg, need_exact_ages=False)  # no metrics
    (tmp_path / "retrieval" / "retrieval.json").write_text("{}", "utf-8")
    assert _finished_study_run(tmp_path, cfg, need_exact_ages=False)  # annoy differs only
    assert not _finished_study_run(tmp_path, cfg, need_exact_ages=True)  # no ages file
    np.savez(tmp_path / "retrieval" / "upload_ages.npz", retrieved_exact=np.ones(2))
    assert _finished_study_run(tmp_path, cfg, need_exact_ages=True)
    other = apply_overrides(cfg, {"candidate_gen.ssl": "none"})
    assert not _finished_study_run(tmp_path, other, need_exact_ages=False)
    assert not _finished_study_run(tmp_path, apply_overrides(cfg, {"seed": 1}), False)


def test_unknown_experiment_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment 'fig7'"):
        run_experiment("fig7", preset="tiny", seeds=[0], out=tmp_path)


@pytest.mark.slow
def test_cg_features_tiny_end_to_end_and_resume(tmp_path, caplog):
    only = ["+searches (depth 2)", "+example_age (depth 2)"]
    res = run_experiment("cg-features", preset="tiny", seeds=[0], out=tmp_path, only=only)
    rows = res["rows"]
    assert [r["variant"] for r in rows] == only
    for r in rows:
        run = tmp_path / "seed0" / _slug(r["variant"])
        metrics = json.loads((run / "retrieval" / "retrieval.json").read_text("utf-8"))["metrics"]
        # the variant's own exact-search recall, well above the random baseline of its run
        assert r["recall@50"] == metrics["exact"]["recall@50"]
        assert r["recall@50"] > 5 * metrics["random"]["recall@50"]
        with np.load(run / "retrieval" / "upload_ages.npz") as ages:
            w1 = wasserstein_1(ages["retrieved_exact"], ages["watched_next"])
        assert r["age W1 retrieved vs watched-next (d)"] == w1 > 0.0
    assert (tmp_path / "example_age.png").read_bytes()[:4] == b"\x89PNG"
    assert "| variant |" in (tmp_path / "cg-features.md").read_text("utf-8")
    # a second call reuses the finished variants and reports the same metrics
    caplog.set_level("INFO", logger="vidrec")
    again = run_experiment("cg-features", preset="tiny", seeds=[0], out=tmp_path, only=only)
    assert "reused" in caplog.text
    assert [r["recall@50"] for r in again["rows"]] == [r["recall@50"] for r in rows]


def _deciles_within(pred: np.ndarray, obs: np.ndarray, tolerance: float = 0.15) -> int:
    """Deciles of the predictions (equal counts, by rank) whose mean is within `tolerance` of
    the mean observed watch time there."""
    order = np.argsort(pred, kind="stable")
    decile = np.arange(len(pred)) * 10 // len(pred)
    return sum(
        abs(pred[order][decile == d].mean() / obs[order][decile == d].mean() - 1) <= tolerance
        for d in range(10)
    )


@pytest.mark.slow
def test_ranker_table_tiny_reports_calibration(tmp_path, monkeypatch):
    calls = []  # (predicted, observed) of every calibration the experiment measures

    def spy(predicted, observed, *args, **kwargs):
        calls.append((np.asarray(predicted, float), np.asarray(observed, float)))
        return calibration_summary(predicted, observed, *args, **kwargs)

    monkeypatch.setattr(experiments, "calibration_summary", spy)
    only = ["no hidden layer", "1024-512-256, YT16 weighting (only unclicked negatives)"]
    res = run_experiment("ranker-table", preset="tiny", seeds=[0], out=tmp_path, only=only)
    rows = res["rows"]
    assert [r["variant"] for r in rows] == only
    # per variant: predictions against the observed watch time, then against the world's truth
    assert len(calls) == 2 * len(rows)
    for r, (pred, obs) in zip(rows, calls[::2], strict=True):
        assert r["weighted per-user loss"] > 0
        assert r["calibration: deciles within ±15%"] == _deciles_within(pred, obs)
        assert r["calibration: sum pred / sum obs"] == pytest.approx(pred.sum() / obs.sum())
        assert r["true E[watch time] of top-10 per user (s)"] > 0
