"""Tuned retrieval baselines: EASE, RecentPopular, hyperparameter grids and the tuning protocol
(pipelines.retrieval_baselines), on small hand-made logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import vidrec.candidate_gen.baselines as baselines
from vidrec.candidate_gen.baselines import (
    EASE,
    ItemKNN,
    MemoryBudgetExceeded,
    MostPopular,
    PureSVD,
    RecentPopular,
    RetrievalBaseline,
)
from vidrec.features.split import TimeSplit
from vidrec.features.tables import Dataset
from vidrec.pipelines.config import resolve_config
from vidrec.pipelines.report import _tuned_baselines_section
from vidrec.pipelines.retrieval_baselines import evaluate_baselines, served_view, tune


def _dataset(watches: list[tuple[int, int, int]], n_items: int, first_id: int = 0) -> Dataset:
    w = pd.DataFrame(watches, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": np.arange(first_id, first_id + n_items), "upload_time": 0})
    users = pd.DataFrame({"user_id": np.unique(w["user_id"])})
    return Dataset(users=users, items=items, watches=w)


def _random_log(seed: int, n_users: int = 60, n_items: int = 30, n_watches: int = 500) -> Dataset:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n_watches)
    item = 100 + (rng.zipf(1.5, n_watches) % (n_items - 2))  # the last 2 items: never watched
    ts = rng.integers(0, 1000, n_watches)
    return _dataset(list(zip(user, item, ts, strict=True)), n_items, first_id=100)


# ----------------------------------------------------------------------------- EASE


@pytest.mark.parametrize("batch", [1 << 22, 40])  # one block, and blocks of a few columns
def test_ease_matches_a_brute_force_solve(monkeypatch, batch):
    monkeypatch.setattr(baselines, "_BATCH_ELEMENTS", batch)
    ds = _random_log(0)
    lam = 7.0
    m = EASE(l2=lam).fit(ds, 1000)
    # brute force: X (users x items, item id order) binary, B = I - P diag(1/diag P)
    catalog = np.sort(ds.items["item_id"].to_numpy())
    users = np.unique(ds.watches["user_id"])
    x = np.zeros((len(users), len(catalog)))
    x[
        np.searchsorted(users, ds.watches["user_id"]),
        np.searchsorted(catalog, ds.watches["item_id"]),
    ] = 1.0
    p = np.linalg.solve(x.T @ x + lam * np.eye(len(catalog)), np.eye(len(catalog)))
    b = np.eye(len(catalog)) - p / np.diag(p)[None, :]
    assert np.abs(np.diag(b)).max() < 1e-12
    np.testing.assert_allclose(b[:, -2:], 0.0, atol=1e-12)  # never watched: zero columns
    want = x @ b
    n = len(catalog)
    ids, scores = m.recommend(users, n, 1000)  # every item, best first
    got = np.zeros_like(want)
    got[np.repeat(np.arange(len(users)), n), np.searchsorted(catalog, ids.ravel())] = scores.ravel()
    np.testing.assert_allclose(got, want, atol=1e-5)  # float32 scores


def test_ease_exact_weights_on_a_tiny_matrix():
    # users: 1 {a, b}, 2 {a, b, c}, 3 {c}; item d never watched
    ds = _dataset([(1, 0, 1), (1, 1, 2), (2, 0, 3), (2, 1, 4), (2, 2, 5), (3, 2, 6)], 4)
    m = EASE(l2=1.0).fit(ds, 10)
    x = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 0]], float)
    p = np.linalg.inv(x.T @ x + np.eye(4))
    b = np.eye(4) - p / np.diag(p)
    col = {int(i): c for c, i in enumerate(m.item_ids_)}
    n = m.n_weighted_
    assert n == 3  # d has no training watch: no weights
    got = np.zeros((4, 4))
    idx = [i for i in range(4) if col[i] < n]
    for i in idx:
        for j in idx:
            got[i, j] = m.weights_[col[i], col[j]]
    np.testing.assert_allclose(got, b, atol=1e-12)


def test_ease_memory_budget_refuses_before_allocating():
    ds = _random_log(1)
    with pytest.raises(MemoryBudgetExceeded, match=r"EASE on 30 items needs .* budget of 1e-09"):
        EASE(l2=1.0, memory_budget_gb=1e-9).fit(ds, 1000)
    EASE(l2=1.0, memory_budget_gb=EASE.dense_gb(30)).fit(ds, 1000)  # exactly at the budget
    with pytest.raises(ValueError, match="l2 must be a positive number"):
        EASE(l2=0.0)
    with pytest.raises(ValueError, match="memory_budget_gb must be None or a positive"):
        EASE(memory_budget_gb=0)


# ----------------------------------------------------------------------------- RecentPopular


def test_recent_popular_counts_only_the_window_before_the_serving_time():
    t, w = 1000, 100
    ds = _dataset(
        [
            (1, 0, t - w - 1), (2, 0, t - w - 1), (3, 0, 5),  # item 0: only before the window
            (1, 1, t - w),  # item 1: at the window's first second (counts)
            (2, 2, t - 1), (3, 2, t - 50),  # item 2: twice inside
            (1, 3, t), (2, 3, t), (3, 3, t + 5),  # item 3: at and after t (never counts)
            (4, 4, t - 1),  # item 4: once inside
        ],
        6,
    )  # fmt: skip
    m = RecentPopular(window_s=w).fit(ds, t)
    ids, scores = m.recommend(np.array([9]), 6)
    # recent counts: 2 -> 2, 1 -> 1, 4 -> 1 (tie: both 1 training watch, then id), then the
    # zero-recent items by training count: 0 (3 watches) before 3 and 5 (none before t)
    assert ids.tolist() == [[2, 1, 4, 0, 3, 5]]
    assert scores.tolist() == [[2, 1, 1, 0, 0, 0]]
    # served later (fitted at t + 10), the watches at t and t + 5 are inside the window
    ids, scores = RecentPopular(window_s=w).fit(ds, t + 10).recommend(np.array([9]), 2)
    assert ids.tolist() == [[3, 2]] and scores.tolist() == [[3, 2]]
    with pytest.raises(ValueError, match="window_s must be a positive number"):
        RecentPopular(window_s=0)


def test_popularity_lists_equal_the_generic_dense_path(monkeypatch):
    ds = _random_log(2)
    users = np.arange(65)  # 60 known users and 5 unknown
    for model in (MostPopular(), MostPopular(window_s=300), RecentPopular(window_s=100)):
        model.fit(ds, 800)
        exclude = model.history(users, 800)
        for k in (1, 7, 40):
            fast = model.recommend(users, k, 800, exclude)
            slow = RetrievalBaseline.recommend(model, users, k, 800, exclude)
            np.testing.assert_array_equal(fast[0], slow[0])
            np.testing.assert_array_equal(fast[1], slow[1])
        monkeypatch.setattr(baselines, "_BATCH_ELEMENTS", 50)  # several batches
        batched = model.recommend(users, 40, 800, exclude)
        monkeypatch.undo()
        np.testing.assert_array_equal(batched[0], fast[0])


# ----------------------------------------------------------------------------- grids


def test_fit_grid_equals_separate_fits():
    ds = _random_log(3)
    users = np.arange(60)
    for model, grid in (
        (ItemKNN(5), [3, None, 1, 10]),
        (EASE(1.0), [0.5, 20.0]),
        (RecentPopular(10), [1000, 64, 3]),
    ):
        for value, fitted in model.fit_grid(ds, 900, grid):
            alone = type(model)(**(model.get_params() | {model.hyperparameter: value}))
            alone.fit(ds, 900)
            exclude = alone.history(users, 900)
            a = fitted.recommend(users, 12, 900, exclude)
            b = alone.recommend(users, 12, 900, exclude)
            np.testing.assert_array_equal(a[0], b[0], err_msg=f"{model} {value}")
            np.testing.assert_allclose(a[1], b[1], rtol=1e-6, err_msg=f"{model} {value}")


def test_pure_svd_grid_keeps_the_leading_vectors_of_the_largest_rank():
    ds = _random_log(4)
    fitted = dict(PureSVD(8, seed=1).fit_grid(ds, 1000, [2, 8, 4]))
    big = PureSVD(8, seed=1).fit(ds, 1000)
    for r, m in fitted.items():
        assert m.n_components == r and m.item_factors_.shape[1] == r
        np.testing.assert_array_equal(m.item_factors_, big.item_factors_[:, :r])
    with pytest.raises(TypeError, match="MostPopular has no hyperparameter"):
        next(MostPopular().fit_grid(ds, 1000, [1]))


# ----------------------------------------------------------------------------- protocol

START, TRAIN_END, VALID_END, TEST_END = 0, 1000, 2000, 3000


def _protocol_log(with_test_window: bool) -> Dataset:
    """Training: item 0 watched 10 times long ago, fillers 1..60 three times each long ago,
    item 61 twice just before train_end, 'junk' items 62..121 once each just before it.
    Ranker window: 5 new users watch item 61 (favours a short recent window: rank 1 there,
    rank 62 over the whole span). Test window: 20 new users watch fillers 1..20 (ranks 2..21
    over the whole span, after the 61 recently watched items in a short window)."""
    w: list[tuple[int, int, int]] = []
    uid = 1000
    for j in range(10):
        w.append((uid, 0, 10 + j))
        uid += 1
    for f in range(1, 61):
        for j in range(3):
            w.append((uid, f, 100 + j))
            uid += 1
    w += [(uid, 61, 950), (uid + 1, 61, 960)]
    uid += 2
    for junk in range(62, 122):
        w.append((uid, junk, 900 + junk - 62))
        uid += 1
    for v in range(5):  # ranker window
        w.append((v, 61, 1500 + v))
    if with_test_window:
        for u in range(20):
            w.append((100 + u, 1 + u, 2500 + u))
    else:
        w.append((99, 0, 2500))  # one test-window watch (the split needs the same end)
    w.append((98, 0, TEST_END - 1))
    return _dataset(w, 122)


def test_tuning_never_reads_the_test_window():
    split = TimeSplit(START, TRAIN_END, VALID_END, TEST_END)
    grid = [1000, 125]  # the whole training span, and its last eighth
    kw = {"max_users": 100, "exclude_watched": True, "seed": 0}
    with_test = _protocol_log(with_test_window=True)
    without = _protocol_log(with_test_window=False)
    a = tune(RecentPopular(1000), grid, with_test, split, **kw)
    b = tune(RecentPopular(1000), grid, without, split, **kw)
    assert a == b
    assert a["chosen"] == 125 and a["scores"] == [0.0, 1.0] and a["n_users"] == 5
    # the same tuning reading the test window's watches as targets would choose otherwise
    leaky = TimeSplit(START, TRAIN_END, TEST_END, TEST_END)
    assert tune(RecentPopular(1000), grid, with_test, leaky, **kw)["chosen"] == 1000
    # and the models tuned are fitted on nothing at or after train_end
    view = served_view(with_test, TRAIN_END)
    assert view.watches["timestamp"].max() < TRAIN_END


def test_evaluate_baselines_tunes_on_the_ranker_window_and_scores_the_test_users():
    split = TimeSplit(START, TRAIN_END, VALID_END, TEST_END)
    config = resolve_config(
        "tiny",
        [
            "retrieval_baselines.recent_popular_halvings=3",
            "retrieval_baselines.item_knn_neighbors=[5,0]",
            "retrieval_baselines.ease_l2=[1.0,100.0]",
            "retrieval_baselines.pure_svd_ranks=[2,8]",
        ],
    )
    results = {}
    for with_test in (True, False):
        ds = _protocol_log(with_test)
        users = np.array([98] + ([100 + u for u in range(20)] if with_test else [99]))
        targets = [
            np.unique(ds.watches["item_id"][(ds.watches["user_id"] == u).to_numpy()])
            for u in users
        ]
        results[with_test] = evaluate_baselines(
            ds,
            split,
            config,
            users=users,
            exclude=[np.zeros(0, np.int64)] * len(users),
            targets=targets,
            ks=[10, 50],
            catalog_size=122,
            item_bucket=None,
            slate_k=10,
        )
    metrics, records, slates = results[True]
    assert list(records) == ["recent_popular", "item_knn", "ease", "pure_svd"]
    assert records["recent_popular"]["grid"] == [1000, 500, 250, 125]
    assert records["item_knn"]["grid"] == [5, 0]  # 0: every item
    for name, rec in records.items():
        assert rec["chosen"] in rec["grid"], name
        assert rec["validation"]["window"] == [TRAIN_END, VALID_END]
        assert rec["validation"]["n_users"] == 5
        assert len(rec["validation"]["scores"]) == len(rec["grid"])
        assert slates[name].shape == (21, 10)
        assert metrics[name]["n_queries"] == 21
        # test-window events change the test numbers, never the tuning
        other = results[False][1][name]
        assert other["chosen"] == rec["chosen"] and other["validation"] == rec["validation"]
    # windows of 500 s and less see item 61's recent watches (ties: the first in grid order)
    assert records["recent_popular"]["validation"]["scores"] == [0.0, 1.0, 1.0, 1.0]
    assert records["recent_popular"]["chosen"] == 500
    # the chosen window, refitted before valid_end, ranks item 61 first for everybody
    assert slates["recent_popular"][:, 0].tolist() == [61] * 21
    # disabled baselines and EASE over its budget
    off = resolve_config(
        "tiny",
        [
            "retrieval_baselines.item_knn=false",
            "retrieval_baselines.pure_svd=false",
            "retrieval_baselines.recent_popular=false",
            "retrieval_baselines.ease_max_gb=1e-6",
        ],
    )
    ds = _protocol_log(True)
    m, rec, sl = evaluate_baselines(
        ds, split, off, users=np.array([98]), exclude=None, targets=[np.array([0])],
        ks=[10], catalog_size=122, item_bucket=None, slate_k=10,
    )  # fmt: skip
    assert m == {} and sl == {} and list(rec) == ["ease"]
    assert "needs" in rec["ease"]["skipped"] and "budget of 1e-06 GB" in rec["ease"]["skipped"]


def test_report_section_lists_every_tuned_baseline():
    tuned = {
        "item_knn": {
            "label": "item-kNN (cosine)",
            "hyperparameter": "neighbors",
            "grid": [20, 0],
            "grid_labels": ["k=20", "k=all"],
            "chosen": 0,
            "chosen_label": "k=all",
            "validation": {
                "metric": "recall@50",
                "window": [TRAIN_END, VALID_END],
                "scores": [0.1, 0.2],
                "n_users": 5,
                "n_users_with_targets": 5,
            },
        },
        "ease": {"label": "EASE", "skipped": "EASE on 40,000 items needs 12.8 GB"},
    }
    section = _tuned_baselines_section(
        tuned, {"item_knn": {"recall@50": 0.3}}, {"served_at": VALID_END}
    )
    assert section.table is not None
    row = section.table.iloc[0].to_dict()
    assert row["baseline"] == "item-kNN (cosine)" and row["chosen"] == "k=all"
    assert row["validation recall@50 per grid value"] == "k=20: 0.1000; k=all: 0.2000 (chosen)"
    assert row["test recall@50"] == 0.3
    assert "EASE was skipped: EASE on 40,000 items needs 12.8 GB." in section.description
