"""The report writer (evaluation/report.py) and its figures (evaluation/plots.py)."""

import base64
import json
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from vidrec.evaluation import plots
from vidrec.evaluation.report import Figure, Report, Section, explain, flatten, unflatten
from vidrec.evaluation.watch_time import calibration_by_decile

PNG = b"\x89PNG\r\n\x1a\n"


def _metrics():
    return {
        "retrieval": {"recall@50": 0.123456789, "tail": {"recall@50": np.float32(0.05)}},
        "ranking": {"auc": 0.7, "logloss": float("nan"), "n_rows": np.int64(1234), "ok": True},
        "baselines": {"most_popular": {"retrieval": {"recall@50": 0.02}}},
        "notes": {"model": "deep", "curve": [0.5, np.float64(0.25), float("inf")]},
    }


def _report(sections=()):
    return Report(
        _metrics(), dataset="synthetic:tiny", split="time: last day", seed=3, preset="tiny",
        sections=sections, extra_meta={"git_commit": "abc"},
    )  # fmt: skip


# ---------------------------------------------------------------------------- key paths


def test_flatten_numeric_leaves_and_unflatten_roundtrip():
    flat = flatten(_metrics())
    assert flat["retrieval.recall@50"] == pytest.approx(0.123456789)
    assert flat["retrieval.tail.recall@50"] == pytest.approx(0.05)
    assert flat["baselines.most_popular.retrieval.recall@50"] == 0.02
    assert flat["ranking.ok"] == 1.0 and math.isnan(flat["ranking.logloss"])
    assert "notes.model" not in flat and "notes.curve" not in flat  # descriptive, not metrics
    assert flatten(unflatten(flat), "") == pytest.approx(flat, nan_ok=True)
    assert unflatten({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}


def test_key_errors_are_explained():
    with pytest.raises(ValueError, match="contains '.'"):
        flatten({"retrieval": {"recall.50": 0.1}})
    with pytest.raises(ValueError, match="must be a non-empty string"):
        flatten({"retrieval": {50: 0.1}})
    with pytest.raises(ValueError, match="both a value and a group"):
        unflatten({"a.b": 1, "a": 2})
    with pytest.raises(ValueError, match="runs through 'a', which is a value"):
        unflatten({"a": 2, "a.b": 1})


def test_explain_uses_the_glossary_with_k():
    assert "top 50" in explain("baselines.x.retrieval.recall@50")
    assert "lower is better" in explain("ranking.weighted_per_user_loss")
    assert explain("something.unknown") == ""


# ---------------------------------------------------------------------------- JSON


def test_json_rounding_nan_meta(tmp_path):
    path = _report().write_json(tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert data["_meta"] == {
        "schema_version": 1, "title": "vidrec evaluation report", "dataset": "synthetic:tiny",
        "split": "time: last day", "seed": 3, "preset": "tiny", "git_commit": "abc",
    }  # fmt: skip
    assert data["retrieval"]["recall@50"] == 0.123457  # 6 significant digits
    assert data["retrieval"]["tail"]["recall@50"] == 0.05  # float32 noise rounded away
    assert data["ranking"]["logloss"] is None  # NaN -> null
    assert data["ranking"]["n_rows"] == 1234 and data["ranking"]["ok"] is True
    assert data["notes"]["curve"] == [0.5, 0.25, None]  # inf -> null
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_report_input_errors():
    with pytest.raises(ValueError, match="reserved"):
        Report({"_meta": {}}, dataset="d", split="s", seed=1, preset="p")
    with pytest.raises(TypeError, match="at ranking.table has type DataFrame"):
        Report({"ranking": {"table": pd.DataFrame()}}, dataset="d", split="s", seed=1, preset="p")
    with pytest.raises(TypeError, match="seed must be an int"):
        Report({}, dataset="d", split="s", seed="1", preset="p")
    with pytest.raises(ValueError, match="dataset must be a non-empty string"):
        Report({}, dataset="", split="s", seed=1, preset="p")
    with pytest.raises(ValueError, match="may not override \\['seed'\\]"):
        Report({}, dataset="d", split="s", seed=1, preset="p", extra_meta={"seed": 2})
    with pytest.raises(TypeError, match="must be evaluation.report.Section"):
        Report({}, dataset="d", split="s", seed=1, preset="p", sections=["text"])
    with pytest.raises(ValueError, match="needs a description"):
        Section("Ranking", "  ")
    with pytest.raises(ValueError, match="non-empty title"):
        Section("", "what")
    with pytest.raises(ValueError, match="contains '.'"):
        Section("Ranking", "what", metrics={"ranking.auc": 0.5})
    with pytest.raises(ValueError, match="key_prefix 'ranking..auc' must be a key path"):
        Section("Ranking", "what", key_prefix="ranking..auc")
    with pytest.raises(TypeError, match="table must be a pandas DataFrame"):
        Section("Ranking", "what", table=[[1, 2]])
    with pytest.raises(ValueError, match="png must be PNG bytes"):
        Figure("plot", b"GIF89a")


# ---------------------------------------------------------------------------- writers


def test_report_writes_all_three_files_with_inline_images(tmp_path):
    rng = np.random.default_rng(0)
    pred = rng.exponential(30.0, 200)
    table = calibration_by_decile(pred, pred * rng.uniform(0.8, 1.2, 200))
    png = plots.calibration_plot(table)
    sections = [
        Section(
            "Ranking | held-out impressions",
            "Computed on the last day's impressions.\n\nLower loss is better.",
            metrics={"auc": 0.7, "nested": {"weighted_per_user_loss": 0.35}},
            table=pd.DataFrame({"model": ["deep <b>", "lightgbm"], "loss": [0.35, 0.36]}),
            table_caption="weighted per-user loss by model",
            metric_notes={"auc": "custom meaning"},
            key_prefix="ranking",
        ),
        Section("Calibration", "Deciles.", table=table, figures=[Figure("Calibration", png, "y = x is perfect.")]),
    ]  # fmt: skip
    paths = _report(sections).write_all(tmp_path)
    assert {p.name for p in paths.values()} == {"report.json", "report.md", "report.html"}

    page = paths["html"].read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 1 and base64.b64decode(images[0]) == png
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "deep &lt;b&gt;" in page  # table cells are escaped
    assert "custom meaning" in page and "top 50" not in page
    assert "ranking.nested.weighted_per_user_loss" in page and "lower is better" in page
    assert page.count("metric (key path in report.json)") == 1  # section 2 has no prefix
    assert page.count("<p>") >= 3  # the description's two paragraphs + section 2
    assert 'href="#s2"' in page

    md = paths["markdown"].read_text()
    assert "## 1. Ranking | held-out impressions" in md
    assert "| deep \\<b> | 0.35 |" in md  # a tag's "<" is escaped the markdown way, not as &lt;
    assert "| `ranking.auc` | 0.7 | custom meaning |" in md
    assert "| seed | 3 |" in md and "| git_commit | abc |" in md
    assert "![Calibration](report_figures/02-01-calibration.png)" in md
    assert (tmp_path / "report_figures" / "02-01-calibration.png").read_bytes() == png
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_same_report_writes_identical_bytes(tmp_path):
    png = plots.training_curves({"loss (nats)": {"a": [3.0, 2.0, 1.5]}})
    sections = [Section("Training", "Curves.", figures=[Figure("Loss", png)])]
    first = _report(sections).write_all(tmp_path / "a")
    second = _report(sections).write_all(tmp_path / "b")
    for key in first:
        assert first[key].read_bytes() == second[key].read_bytes()
    png_again = plots.training_curves({"loss (nats)": {"a": [3.0, 2.0, 1.5]}})
    assert png_again == png  # no timestamps in the PNG either


# ---------------------------------------------------------------------------- plots


def test_every_plot_returns_png():
    rng = np.random.default_rng(1)
    recall = pd.DataFrame(
        [(m, b, k, 0.1 * i + 0.05 * np.log10(k)) for i, m in enumerate(["ssl", "no ssl"])
         for b in ["all", "tail"] for k in (10, 50, 100)],
        columns=["model", "bucket", "k", "value"],
    )  # fmt: skip
    bars = pd.DataFrame(
        {
            "name": ["random", "full"],
            "mean": [1.0, 2.0],
            "ci_low": [0.9, 1.8],
            "ci_high": [1.1, 2.2],
        }
    )
    table = calibration_by_decile(rng.exponential(30, 100), rng.exponential(30, 100))
    outputs = [
        plots.recall_curves_by_bucket(recall),
        plots.upload_age_histograms({"with example age": rng.exponential(3, 100), "watched": [1.0, 2.0]}),
        plots.training_curves({"loss": {"a": [2, 1]}, "recall@50": {"a": [0.1, 0.2], "b": [0.2, float("nan")]}}),
        plots.calibration_plot({"deep": table, "click-only": table}, log_scale=False),
        plots.bars_with_ci(bars, title="watch time", ylabel="s per user", highlight="full"),
    ]  # fmt: skip
    for png in outputs:
        assert png.startswith(PNG) and len(png) > 5000


def test_recall_curves_lay_out_many_models_with_long_names():
    # eight models, one named by a sentence, over four buckets (a report's retrieval figure):
    # the panels keep their size (matplotlib warns when the layout collapses them)
    names = [f"model {i}" for i in range(7)] + ["best single list in hindsight " * 4]
    recall = pd.DataFrame(
        [(m, b, k, 0.01 * i) for i, m in enumerate(names) for b in ["head", "tail", "torso", "all"]
         for k in (10, 50, 100, 500)],
        columns=["model", "bucket", "k", "value"],
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = plots.recall_curves_by_bucket(recall)
    assert png.startswith(PNG)


def test_plot_input_errors():
    with pytest.raises(ValueError, match="missing columns \\['value'\\]"):
        plots.recall_curves_by_bucket(pd.DataFrame({"model": ["a"], "bucket": ["all"], "k": [10]}))
    with pytest.raises(TypeError, match="must be a pandas DataFrame"):
        plots.bars_with_ci({"name": ["a"]}, title="t", ylabel="y")
    with pytest.raises(ValueError, match="has no rows"):
        plots.bars_with_ci(
            pd.DataFrame(columns=["name", "mean", "ci_low", "ci_high"]), title="t", ylabel="y"
        )
    bars = pd.DataFrame({"name": ["a"], "mean": [1.0], "ci_low": [1.5], "ci_high": [2.0]})
    with pytest.raises(ValueError, match="does not contain the mean"):
        plots.bars_with_ci(bars, title="t", ylabel="y")
    bars["ci_low"] = 0.5
    with pytest.raises(ValueError, match="highlight='b' is not one of the bars"):
        plots.bars_with_ci(bars, title="t", ylabel="y", highlight="b")
    with pytest.raises(ValueError, match="non-empty mapping"):
        plots.training_curves({})
    with pytest.raises(ValueError, match="is empty; pass one value per epoch"):
        plots.training_curves({"loss": {"a": []}})
    with pytest.raises(ValueError, match="no finite values"):
        plots.upload_age_histograms({"retrieved": [float("nan")]})
    table = pd.DataFrame({"mean_predicted": [0.0, 1.0], "mean_observed": [0.0, 1.0]})
    with pytest.raises(ValueError, match="log_scale=True needs every mean"):
        plots.calibration_plot(table, log_scale=True)
    with pytest.raises(ValueError, match="tolerance must be a fraction"):
        plots.calibration_plot(table, tolerance=15)


def test_stage_commits_names_each_commit_of_a_resumed_run():
    from vidrec.pipelines.report import stage_commits

    one = {"git_commit": "a" * 40, "stages": {"data": {"status": "done", "git_commit": "a" * 40}}}
    assert stage_commits(one) == "a" * 40
    mixed = {
        "git_commit": "a" * 40,
        "stages": {
            "data": {"status": "done", "git_commit": "a" * 40},
            "retrieval": {"status": "done"},  # recorded before stages kept their own commit
            "ranker": {"status": "done", "git_commit": "b" * 40},
            "report": {"status": "running"},
        },
    }
    assert stage_commits(mixed) == "aaaaaaa (data, retrieval); bbbbbbb (ranker)"
    assert stage_commits({"stages": {}}) is None


def test_summary_names_the_best_baseline_and_explains_disagreeing_metrics():
    from vidrec.pipelines.report import summary_section

    retr = {"metrics": {"annoy": {"recall@50": 0.2}, "exact": {"recall@50": 0.21},
                        "recent_popular": {"recall@50": 0.3}, "item_knn": {"recall@50": 0.1}}}
    rank = {
        "metrics": {
            "deep_weighted": {"weighted_per_user_loss": 0.15, "auc": 0.60},
            "lgbm_weighted": {"weighted_per_user_loss": 0.19, "auc": 0.70},
            "popularity": {"weighted_per_user_loss": 0.40, "auc": 0.55},
        },
        "labels": "logged impressions",
    }
    e2e = {
        "k": 10,
        "slates": {
            "deep_weighted": {"recall@10": 0.025, "true_expected_watch_time": {"mean": 300.0}},
            "candidate_gen_only": {"recall@10": 0.068, "true_expected_watch_time": {"mean": 100.0}},
            "most_popular": {"recall@10": 0.03, "true_expected_watch_time": {"mean": 120.0}},
            "oracle": {"recall@10": 0.01, "true_expected_watch_time": {"mean": 900.0}},
        },
    }
    sec = summary_section(retr, rank, e2e)
    assert sec is not None
    assert sec.metrics["retrieval"] == {"system": 0.2, "best_baseline": "recent_popular", "best": 0.3}
    assert sec.metrics["ranking"]["best_baseline"] == "lgbm_weighted"
    assert sec.metrics["end_to_end"]["best_baseline"] == "most_popular"  # never the oracle
    assert sec.metrics["end_to_end_true_watch_time"]["best"] == 120.0
    assert "Clicks are not watch time" in sec.description
    assert "logging policy's exposure" in sec.description
    assert list(sec.table["system / best"])[0] == round(0.2 / 0.3, 3)
    assert summary_section(None, None, None) is None


def test_summary_splits_new_and_returning_users_when_most_are_new():
    """When most held-out users have no history, the summary says so and puts the system
    beside the best baseline on the returning users too."""
    from vidrec.pipelines.report import summary_section

    def m(r, new, ret):
        return {"recall@50": r, "history.new.recall@50": new, "history.returning.recall@50": ret}

    retr = {
        "metrics": {
            "annoy": m(0.17, 0.18, 0.12),
            "exact": m(0.17, 0.18, 0.12),
            "recent_popular": m(0.18, 0.20, 0.05),
            "item_knn": m(0.14, 0.15, 0.09),
            "hindsight_single_list": m(0.20, 0.23, 0.19),  # an upper bound, never the best
        },
        "n_users_new": 104,
        "n_users_with_targets": 123,
    }
    sec = summary_section(retr, None, None)
    assert sec.metrics["retrieval_returning"] == {
        "system": 0.12, "best_baseline": "item_knn", "best": 0.09
    }
    assert "104 of the 123 held-out users (85%) had no watch" in sec.description
    assert "in hindsight, chosen on the test targets themselves, has Recall@50 0.2" in (
        sec.description
    )
    assert sec.metrics["retrieval"]["best_baseline"] == "recent_popular"
    few_new = summary_section(retr | {"n_users_new": 10}, None, None)
    assert "had no watch" not in few_new.description  # the row stays, the note does not
    assert "retrieval_returning" in few_new.metrics
    old = {"metrics": {k: {"recall@50": v["recall@50"]} for k, v in retr["metrics"].items()}}
    assert "retrieval_returning" not in summary_section(old, None, None).metrics
    # a run that served HNSW: its metrics stand under "hnsw", and the summary reads them
    hnsw = dict(retr, index="hnsw")
    hnsw["metrics"] = {("hnsw" if k == "annoy" else k): v for k, v in retr["metrics"].items()}
    assert summary_section(hnsw, None, None).metrics == sec.metrics


def test_summary_adds_the_random_exposure_view_when_the_log_has_one():
    from vidrec.pipelines.report import summary_section

    rank = {
        "metrics": {
            "deep_weighted": {"weighted_per_user_loss": 0.30},
            "lgbm_weighted": {"weighted_per_user_loss": 0.32},
        },
        "labels": "logged impressions",
        "random_exposure": {
            "n_rows": 1200,
            "metrics": {
                "deep_weighted": {"weighted_per_user_loss": 0.41},
                "lgbm_weighted": {"weighted_per_user_loss": 0.39},
            },
        },
    }
    sec = summary_section(None, rank, None)
    assert sec.metrics["ranking_random_exposure"] == {
        "system": 0.41, "best_baseline": "lgbm_weighted", "best": 0.39
    }
    assert any("1,200 random-exposure" in m for m in sec.table["metric"])
    no_random = {k: v for k, v in rank.items() if k != "random_exposure"}
    assert "ranking_random_exposure" not in summary_section(None, no_random, None).metrics


def test_summary_does_not_hold_the_system_against_itself_on_click_only_logs():
    """Without watch times the click-only deep ranker is the system's model trained twice:
    the summary compares with the real baselines instead."""
    from vidrec.pipelines.report import summary_section

    same = {"weighted_per_user_loss": 0.35, "auc": 0.66}
    rank = {
        "metrics": {
            "deep_weighted": same,
            "deep_click": dict(same),
            "lgbm_weighted": {"weighted_per_user_loss": 0.36, "auc": 0.65},
        },
        "labels": "This data set has no impressions and no watch time: ...",
    }
    e2e = {
        "k": 10,
        "slates": {
            "deep_weighted": {"recall@10": 0.06},
            "deep_click": {"recall@10": 0.06},
            "recent_popular": {"recall@10": 0.065},
        },
    }
    sec = summary_section(None, rank, e2e)
    assert sec.metrics["ranking"] == {"system": 0.35, "best_baseline": "lgbm_weighted", "best": 0.36}
    assert sec.metrics["end_to_end"]["best_baseline"] == "recent_popular"
