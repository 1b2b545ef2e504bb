"""Settings derived from a log's own statistics (`--preset auto`, the default with --data)."""

from __future__ import annotations

import pytest

from vidrec.features.stats import log_statistics
from vidrec.pipelines.config import AUTO, ConfigError, derive_settings, resolve_config


def _stats(**kw):
    base = {
        "n_users": 600,
        "n_items": 9000,
        "n_watched_items": 9000,
        "n_watches": 100_000,
        "n_train_watches": 70_000,
        "watches_per_user_median": 70.0,
        "watches_per_user_mean": 150.0,
        "span_days": 8000.0,
        "share_of_items_uploaded_after_train_end": 0.1,
        "has_impressions": False,
        "n_impressions": 0,
    }
    return base | kw


def test_small_and_large_logs_get_different_settings() -> None:
    small = {k: v for k, (v, _) in derive_settings(_stats()).items()}
    big = {
        k: v
        for k, (v, _) in derive_settings(
            _stats(n_users=2_000_000, n_items=1_000_000, n_watched_items=900_000,
                   n_watches=50_000_000, n_train_watches=35_000_000, has_impressions=True,
                   n_impressions=200_000_000)
        ).items()
    }
    assert small["candidate_gen.max_examples_per_user"] == 0  # few users: every label counts
    assert big["candidate_gen.max_examples_per_user"] == 20
    assert small["candidate_gen.embedding_dim"] < big["candidate_gen.embedding_dim"]
    assert small["candidate_gen.epochs"] > big["candidate_gen.epochs"] >= 3
    assert small["candidate_gen.num_negatives"] <= 9000 // 4 + 1
    assert big["retrieval.search_k"] == -1 and small["retrieval.search_k"] > 0
    assert small["retrieval.index"] == "annoy" and big["retrieval.index"] == "hnsw"
    assert small["evaluation.max_users"] == 600
    # a few hundred optimizer steps an epoch on a small log, the widest batch on a big one
    assert 150 <= 70_000 / small["candidate_gen.batch_size"] <= 600
    assert big["candidate_gen.batch_size"] == 1024


def test_every_derived_setting_names_its_statistic_and_is_a_valid_config() -> None:
    cfg = resolve_config(AUTO, ["data.source=dir"], data_stats=_stats(), seed=3)
    for key, d in cfg["derived"]["settings"].items():
        section, name = key.split(".")
        assert cfg[section][name] == d["value"]
        assert d["from"]
    assert cfg["seed"] == 3


def test_set_overrides_a_derived_setting_and_auto_needs_data() -> None:
    cfg = resolve_config(AUTO, ["candidate_gen.epochs=2"], data_stats=_stats())
    assert cfg["candidate_gen"]["epochs"] == 2
    assert cfg["derived"]["settings"]["candidate_gen.epochs"]["value"] == 40
    with pytest.raises(ConfigError, match="give --data"):
        resolve_config(AUTO)


def test_log_statistics_of_a_small_log() -> None:
    from test_cg_examples import random_dataset

    ds = random_dataset(n_users=30, n_items=50, n_watches=600, n_searches=0, seed=1)
    s = log_statistics(ds, 0.7)
    assert s["n_users"] == 30 and s["n_items"] == 50 and s["n_watches"] == 600
    assert 0 < s["n_train_watches"] < 600
    assert s["span_days"] > 0


def test_ranker_settings_follow_its_row_count_and_the_watch_times() -> None:
    few = {k: v for k, (v, _) in derive_settings(_stats(n_ranker_rows=4_000)).items()}
    many = {
        k: v
        for k, (v, _) in derive_settings(
            _stats(has_impressions=True, n_impressions=9_000_000, n_ranker_rows=2_000_000,
                   has_watch_time=True)
        ).items()
    }
    # a few thousand rows still get ~50 optimizer steps an epoch and room to early-stop
    assert few["ranking.batch_size"] * 40 <= 4_000 <= few["ranking.batch_size"] * 100
    assert few["ranking.epochs"] > many["ranking.epochs"] >= 4
    assert many["ranking.batch_size"] == 1024
    # the L2 penalty falls with the rows
    assert few["ranking.weight_decay"] == pytest.approx(1e-4)
    assert 0 < many["ranking.weight_decay"] < 1e-6
    # clicks without watch time: the plain weighted loss (unit weights), never the variant
    # that also counts every click as a negative
    assert few["ranking.weighting"] == "watch_time"
    assert "ranking.weighting" not in many  # real watch times: the preset's weighting stays


def test_few_ranker_users_pick_the_epoch_over_folds() -> None:
    def folds(**kw):
        key = "ranking.epoch_folds"
        value, why = derive_settings(_stats(**kw))[key]
        return value, why

    small, why = folds(n_ranker_rows=8_500, n_ranker_users=170)
    assert small == 5 and "170 users" in why
    assert folds(n_ranker_rows=2_000_000, n_ranker_users=40_000, has_impressions=True)[0] == 0
    # the derived value is a valid config, and --set still overrides it
    cfg = resolve_config(AUTO, ["ranking.epoch_folds=0"], data_stats=_stats(n_ranker_users=170))
    assert cfg["ranking"]["epoch_folds"] == 0
    with pytest.raises(ConfigError, match="epoch_folds"):
        resolve_config("tiny", ["ranking.epoch_folds=1"])


def test_log_statistics_count_the_ranker_rows() -> None:
    import numpy as np
    from test_cg_examples import random_dataset

    from vidrec.features.stats import CANDIDATES_PER_USER

    ds = random_dataset(n_users=30, n_items=50, n_watches=600, n_searches=0, seed=1)
    s = log_statistics(ds, 0.7, 0.85)
    t = ds.watches["timestamp"].to_numpy()
    lo = t.min() + int((t.max() - t.min()) * 0.7)
    hi = t.min() + int((t.max() - t.min()) * 0.85)
    active = np.unique(ds.watches["user_id"].to_numpy()[(t >= lo) & (t < hi)]).size
    assert s["n_ranker_rows"] == CANDIDATES_PER_USER * active > 0
    assert s["n_ranker_users"] == active
    assert s["has_watch_time"] is False and s["has_impressions"] is False


def test_derived_early_stopping_measures_what_the_test_measures() -> None:
    cfg = resolve_config(AUTO, data_stats=_stats())
    assert cfg["candidate_gen"]["valid_protocol"] == "window"
    assert resolve_config("default")["candidate_gen"]["valid_protocol"] == "next_watch"
    with pytest.raises(ConfigError, match="valid_protocol.*'next_watch', 'window'"):
        resolve_config("default", ["candidate_gen.valid_protocol=leave_one_out"])


def test_logs_watch_time_tells_real_watch_times_from_unit_labels() -> None:
    import pandas as pd

    from vidrec.features.stats import logs_watch_time

    imp = pd.DataFrame({"clicked": [1, 0, 1], "watch_time": [1.0, 0.0, 1.0]})
    assert not logs_watch_time(imp) and not logs_watch_time(None)
    assert not logs_watch_time(imp.iloc[:0])
    assert logs_watch_time(imp.assign(watch_time=[30.0, 0.0, 12.5]))


@pytest.mark.parametrize(("n_items", "kind"), [(99_999, "annoy"), (100_000, "hnsw")])
def test_the_served_index_follows_the_catalog_size(n_items: int, kind: str) -> None:
    derived = derive_settings(_stats(n_items=n_items))
    value, why = derived["retrieval.index"]
    assert value == kind and f"{n_items:,} items" in why
    cfg = resolve_config(AUTO, ["data.source=dir"], data_stats=_stats(n_items=n_items))
    assert cfg["retrieval"]["index"] == kind
    # a --set (or a config file) overrides the derived choice
    cfg = resolve_config(AUTO, ["retrieval.index=exact"], data_stats=_stats(n_items=n_items))
    assert cfg["retrieval"]["index"] == "exact"
    assert cfg["derived"]["settings"]["retrieval.index"]["value"] == kind
