"""What the report says in words: its metadata, the meaning of every number, how numbers are
formatted and escaped, and the notes that depend on the run."""

import re

import numpy as np
import pandas as pd
import pytest

from vidrec.evaluation import plots
from vidrec.evaluation.report import Report, Section, explain
from vidrec.evaluation.watch_time import calibration_by_decile


def _write(tmp_path, sections=(), extra_meta=None):
    report = Report(
        {"ranking": {"auc": 0.7}}, dataset="synthetic:tiny", split="time", seed=0, preset="tiny",
        sections=sections, extra_meta=extra_meta,
    )  # fmt: skip
    paths = report.write_all(tmp_path)
    return paths["markdown"].read_text("utf-8"), paths["html"].read_text("utf-8")


def test_stage_seconds_are_rows_in_stage_order_without_the_running_report():
    from vidrec.pipelines.report import stage_seconds

    manifest = {  # manifest.json stores the stages by name; the report stage is still running
        "stages": {
            "candidate_gen": {"status": "done", "seconds": 5.9},
            "data": {"status": "done", "seconds": 0.288},
            "report": {"status": "running"},
        }
    }
    assert list(stage_seconds(manifest).items()) == [("data", 0.288), ("candidate_gen", 5.9)]


def test_a_dict_in_the_metadata_is_shown_as_rows_not_as_a_python_repr(tmp_path):
    md, page = _write(tmp_path, extra_meta={"stage_seconds": {"data": 0.288, "ranker": 4.0}})
    assert "| stage_seconds.data | 0.288 |" in md and "| stage_seconds.ranker | 4 |" in md
    assert "stage_seconds.data</th><td>0.288</td>" in page
    for text in (md, page):
        assert "{" not in text.split("</style>")[-1] and "None" not in text
        assert "&#x27;data" not in text and "'data'" not in text  # a dict's repr, quoted keys


# key paths of the tiny preset's report whose rows showed no meaning
TINY_REPORT_KEYS = [
    "data.counts.impressions", "data.counts.items", "data.counts.searches",
    "data.counts.users", "data.counts.watches",
    "retrieval.hitrate@50", "retrieval.coverage@50", "retrieval.n_queries",
    "watch_time.errors.mean_pred", "watch_time.errors.mean_obs",
    "end_to_end.distinct_items", "end_to_end.hitrate@10", "end_to_end.ndcg_watch_time@10",
    "end_to_end.true_expected_watch_time.ci_high", "end_to_end.true_expected_watch_time.ci_low",
    "end_to_end.true_expected_watch_time.mean", "end_to_end.users_with_next_watches",
]  # fmt: skip


@pytest.mark.parametrize("key", TINY_REPORT_KEYS)
def test_every_metric_of_the_tiny_report_has_a_meaning(key):
    assert explain(key), key


def _rows_without_meaning(section: Section) -> list[str]:
    return [k for k, _, meaning in section.metric_rows() if not meaning]


def test_the_world_derived_tuned_and_ab_sections_explain_every_row():
    from test_cg_examples import random_dataset

    from vidrec.features.stats import log_statistics
    from vidrec.pipelines.report import _WORLD_NOTES, _derived_section, _tuned_section, ab_section

    world = Section("Data", "d", metrics={"world": {"catalog": "synthetic", "name": "s",
                                                    "preset": "tiny", "seed": 0}},
                    metric_notes=_WORLD_NOTES)  # fmt: skip
    assert _rows_without_meaning(world) == []
    stats = log_statistics(random_dataset(n_users=20, n_items=30, n_watches=200, seed=1))
    cfg = {
        "candidate_gen": {"epochs": 40},
        "derived": {"stats": stats, "settings": {"candidate_gen.epochs": {"value": 40, "from": "x"}}},
        "tuned": {"study": "s.db", "trial": 3, "trials": 8, "validation_metric": "Recall@50",
                  "validation_value": 0.2, "before": {"candidate_gen.epochs": 20}},
    }  # fmt: skip
    assert _rows_without_meaning(_derived_section(cfg)) == []
    assert _rows_without_meaning(_tuned_section(cfg)) == []
    arm = {"watch_time_per_user": {"mean": 10.0, "ci": [9.0, 11.0]}}
    ab = {
        "description": "A/B.",
        "config": {"arms": ["system", "most_popular"]},
        "table": [{"arm": "system"}, {"arm": "most_popular"}],
        "metrics": {
            "arms": {"system": arm, "most_popular": arm},
            "vs_control": {"most_popular": {"control": "system", "relative_watch_time": -0.1,
                                            "ci": [-0.2, 0.0]}},
            "n_users": 50,
        },
    }  # fmt: skip
    assert _rows_without_meaning(ab_section(ab)) == []


def test_each_popularity_and_freshness_bucket_says_what_it_is():
    meanings = {
        b: explain(f"retrieval.{dim}.{b}.recall@50")
        for dim, buckets in (("popularity", ("head", "torso", "tail")), ("freshness", ("fresh", "old")))
        for b in buckets
    }  # fmt: skip
    assert len(set(meanings.values())) == 5
    assert "20% of the catalogue most watched" in meanings["head"]
    assert "50% of the catalogue least watched" in meanings["tail"]
    assert "neither head nor tail" in meanings["torso"]
    assert "less than 7 days before serving" in meanings["fresh"]
    assert "7 days or more before serving" in meanings["old"]
    assert all("top 50" in m for m in meanings.values())
    assert "new users only" in explain("baselines.ease.retrieval.history.new.recall@50")
    truth = explain("watch_time.ground_truth_calibration.overall_ratio")
    assert "true expected watch time" in truth and "observed" not in truth
    assert "observed" in explain("watch_time.observed.overall_ratio")


def test_the_ground_truth_calibration_plot_names_the_truth_on_its_axis(monkeypatch):
    from vidrec.pipelines.report import truth_calibration_figure

    labels = []
    png = plots._png
    monkeypatch.setattr(
        plots, "_png", lambda fig: labels.append(fig.axes[0].get_ylabel()) or png(fig)
    )
    rng = np.random.default_rng(0)
    pred = rng.exponential(30.0, 200)
    table = calibration_by_decile(pred, pred * rng.uniform(0.8, 1.2, 200))
    truth_calibration_figure(table)
    plots.calibration_plot(table)
    assert labels[0] == "mean true expected watch time (simulator) (s)"
    assert labels[1] == "mean observed watch time (s)"


def test_shares_and_ratios_keep_three_significant_digits(tmp_path):
    from vidrec.evaluation.report import format_as

    assert format_as(0.3, "percent") == "30.0%" and format_as(0.01398, "percent") == "1.40%"
    assert format_as(1.0, "percent") == "100%" and format_as(None, "percent") == "n/a"
    assert format_as(0.3, "ratio") == "0.300" and format_as(0.99961, "ratio") == "1.00"
    assert format_as(0.3, None) == "0.3"
    section = Section(
        "End to end", "Slates.", metrics={"fraction_of_oracle": 0.3, "overall_ratio": 1.2},
        table=pd.DataFrame({"slate": ["system"], "share of oracle": [0.3], "system / best": [0.7]}),
        column_formats={"share of oracle": "percent", "system / best": "ratio"},
    )  # fmt: skip
    assert [v for _, v, _ in section.metric_rows()] == ["30.0%", "1.20"]
    assert "percent" in explain("end_to_end.fraction_of_oracle")
    md, _ = _write(tmp_path, [section])
    assert "| system | 30.0% | 0.700 |" in md
    with pytest.raises(ValueError, match="unknown formats"):
        Section("x", "y", column_formats={"a": "percentage"})

    from vidrec.pipelines.report import _ratio

    assert _ratio(0.0012345, 1.0) == 0.00123  # 3 significant digits, not 3 decimals


def test_markdown_holds_plain_text_and_html_escapes_it(tmp_path):
    section = Section(
        "Slates", "CG -> ranker.", metrics={"auc": 0.7},
        metric_notes={"auc": "clicks & watches, ratio > 1"},
        table=pd.DataFrame({"slate": ["CG -> ranker", "deep <b>", "a < b"], "x": [1, 2, 3]}),
        table_caption="ratio > 1 is better",
    )  # fmt: skip
    md, page = _write(tmp_path, [section])
    assert not re.search(r"&(gt|lt|amp);", md)
    assert "| CG -> ranker | 1 |" in md and "| a < b | 3 |" in md
    assert "| deep \\<b> | 2 |" in md  # would open an HTML tag in a markdown viewer
    assert "*ratio > 1 is better*" in md and "clicks & watches, ratio > 1 |" in md
    assert "CG -&gt; ranker" in page and "deep &lt;b&gt;" in page
    assert "clicks &amp; watches" in page


def _runtime(cuda: bool) -> dict:
    return {"torch_threads": 2, "cuda_available": cuda, "cuda_device": "H100" if cuda else None,
            "deterministic_algorithms": False, "cublas_workspace_config": None}  # fmt: skip


def test_the_gpu_determinism_note_appears_only_when_training_ran_on_a_gpu():
    from vidrec.pipelines.report import determinism_section

    config = {"seed": 0, "candidate_gen": {"device": "auto"}, "ranking": {"device": "auto"}}

    def description(cuda: bool, cfg=config) -> str:
        stages = {s: {"runtime": _runtime(cuda)} for s in ("candidate_gen", "ranker")}
        return determinism_section({"stages": stages}, cfg)[1].description

    cpu = description(False)
    assert "atomic adds" not in cpu and "CUBLAS_WORKSPACE_CONFIG" not in cpu
    assert "This run trained on CPU" in cpu and "bit-identical" in cpu
    assert "atomic adds" in description(True) and "This run trained on a GPU" in description(True)
    cpu_config = {**config, "candidate_gen": {"device": "cpu"}, "ranking": {"device": "cpu"}}
    assert "atomic adds" not in description(True, cpu_config)  # a GPU seen but not used


def test_latencies_carry_the_machine_load(monkeypatch):
    from vidrec.pipelines import run
    from vidrec.pipelines.report import ann_section

    monkeypatch.setattr(run.os, "getloadavg", lambda: (1.5, 1.0, 0.5))
    monkeypatch.setattr(run.os, "cpu_count", lambda: 2)
    assert run.machine_load() == {"load_avg_1m": 1.5, "cpu_count": 2}

    def no_load():
        raise OSError("no load average")

    monkeypatch.setattr(run.os, "getloadavg", no_load)
    assert run.machine_load() == {"load_avg_1m": None, "cpu_count": 2}
    monkeypatch.delattr(run.os, "getloadavg")  # Windows has none
    assert run.machine_load()["load_avg_1m"] is None

    ann = {"n_items": 100, "n_queries_timed": 10, "annoy_p50_ms": 0.2, "exact_p50_ms": 0.1}
    retrieval_cfg = {"n_trees": 20, "search_k": -1}
    busy = ann_section(ann | {"load_avg_1m": 1.5, "cpu_count": 2}, retrieval_cfg)
    assert "1-minute load average of 1.50 on 2 CPU cores" in busy.description
    assert all(meaning for _, _, meaning in busy.metric_rows())
    unknown = ann_section(ann | {"load_avg_1m": None, "cpu_count": 2}, retrieval_cfg)
    assert "load unknown" in unknown.description
    assert "load unknown" in ann_section(ann, retrieval_cfg).description  # a run before it


def test_the_ann_section_names_the_served_index():
    from vidrec.pipelines.report import ann_section, served_kind

    common = {"n_items": 100, "n_queries_timed": 10, "exact_p50_ms": 0.1}
    cfg = {"n_trees": 20, "search_k": -1, "hnsw_m": 16, "hnsw_ef_construction": 40,
           "hnsw_ef_search": 80}  # fmt: skip
    hnsw = ann_section(common | {"index": "hnsw", "hnsw_p50_ms": 0.2, "recall@10": 0.9}, cfg)
    assert hnsw.title == "Approximate search (hnsw) against exact search"
    assert "HNSW graph (faiss" in hnsw.description and "M 16, ef_construction 40" in hnsw.description
    assert all(meaning for _, _, meaning in hnsw.metric_rows())
    assert "top-10 that hnsw also returns" in dict(
        (k, m) for k, _, m in hnsw.metric_rows()
    )["retrieval.ann.recall@10"]
    exact = ann_section(common | {"index": "exact"}, cfg)
    assert exact.title == "Served index: exact search" and "1 by construction" in exact.description
    annoy = ann_section(common | {"annoy_p50_ms": 0.2}, cfg)  # a run from before the choice
    assert "annoy index (inner product, 20 trees" in annoy.description
    assert served_kind({"metrics": {}}) == "annoy" and served_kind({"index": "hnsw"}) == "hnsw"
