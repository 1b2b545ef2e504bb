"""Retrieval baselines on a tiny hand-made log: most popular, item-kNN, PureSVD."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import vidrec.candidate_gen.baselines as baselines
from vidrec.candidate_gen.baselines import BASELINES, ItemKNN, MostPopular, PureSVD, _top_k
from vidrec.features.tables import Dataset

A, B, C, D, E, F = 1, 2, 3, 4, 5, 6
TRAIN_END = 100


@pytest.fixture()
def ds() -> Dataset:
    # training window (< 100): user 1 {a, b}, 2 {a, b, c}, 3 {c, d}, 4 {a}, 5 {e};
    # item f is never watched; user 4 watches b at 150 (after the training window)
    w = pd.DataFrame(
        [
            (1, A, 10), (1, B, 20),
            (2, A, 11), (2, B, 21), (2, C, 30),
            (3, C, 12), (3, D, 22),
            (4, A, 13), (4, B, 150),
            (5, E, 50),
        ],
        columns=["user_id", "item_id", "timestamp"],
    )  # fmt: skip
    items = pd.DataFrame({"item_id": [A, B, C, D, E, F], "upload_time": 0})
    return Dataset(users=pd.DataFrame({"user_id": [1, 2, 3, 4, 5]}), items=items, watches=w)


def test_most_popular_ranks_by_training_counts(ds):
    m = MostPopular().fit(ds, TRAIN_END)
    # counts before 100: a 3, b 2, c 2, d 1, e 1, f 0 (b's watch at 150 is not counted);
    # ties by id: b before c, d before e
    ids, scores = m.recommend(np.array([4, 9]), 6)
    assert ids.tolist() == [[A, B, C, D, E, F]] * 2  # user 9 is unknown: the same list
    assert scores[0].tolist() == [3, 2, 2, 1, 1, 0]
    ids, scores = m.recommend(np.array([4]), 3, exclude=[np.array([A, 99])])  # 99: unknown
    assert ids.tolist() == [[B, C, D]]


def test_padding_when_fewer_items_remain(ds):
    ids, scores = (
        MostPopular().fit(ds, TRAIN_END).recommend(np.array([1]), 8, exclude=[np.array([A, B, C])])
    )
    # 6 items - 3 excluded = 3 left, then -1 / -inf padding up to k = 8
    assert ids.tolist() == [[D, E, F, -1, -1, -1, -1, -1]]
    assert np.isneginf(scores[0, 3:]).all() and ids.dtype == np.int64
    assert scores.dtype == np.float32


def test_most_popular_window(ds):
    # only watches in [100 - 80, 100) = [20, 100): b at 20 and 21, c at 30, d at 22, e at 50
    ids, scores = MostPopular(window_s=80).fit(ds, TRAIN_END).recommend(np.array([1]), 3)
    assert ids.tolist() == [[B, C, D]] and scores[0].tolist() == [2, 1, 1]


def test_item_knn_cosine_similarities(ds):
    m = ItemKNN(neighbors=None).fit(ds, TRAIN_END)
    sim = m.similarity_.toarray()
    col = {int(i): c for c, i in enumerate(m.item_ids_)}
    # users: a {1, 2, 4}, b {1, 2}, c {2, 3}, d {3}
    assert sim[col[A], col[B]] == pytest.approx(2 / np.sqrt(3 * 2))
    assert sim[col[A], col[C]] == pytest.approx(1 / np.sqrt(3 * 2))
    assert sim[col[B], col[C]] == pytest.approx(1 / np.sqrt(2 * 2))
    assert sim[col[C], col[D]] == pytest.approx(1 / np.sqrt(2 * 1))
    assert sim[col[A], col[A]] == 0 and sim[col[E]].sum() == 0
    np.testing.assert_allclose(sim, sim.T)


def test_item_knn_recommends_the_co_watched_item(ds):
    m = ItemKNN(neighbors=None).fit(ds, TRAIN_END)
    users = np.array([4, 3])
    ids, scores = m.recommend(users, 2, TRAIN_END, exclude=m.history(users, TRAIN_END))
    # user 4 watched a: b (2/sqrt 6 = 0.816) then c (1/sqrt 6 = 0.408)
    assert ids[0].tolist() == [B, C]
    np.testing.assert_allclose(scores[0], [2 / np.sqrt(6), 1 / np.sqrt(6)], rtol=1e-6)
    # user 3 watched c, d: b (c~b 0.5) before a (c~a 0.408), unlike popularity (a first)
    assert ids[1].tolist() == [B, A]


def test_item_knn_neighbors_prune(ds):
    m = ItemKNN(neighbors=1).fit(ds, TRAIN_END)
    # each item keeps its single most similar item: c -> d, d -> c, so user 3 (history c, d)
    # scores 0 on everything else and falls back to popularity: a, then b
    ids, scores = m.recommend(np.array([3]), 2, exclude=[np.array([C, D])])
    assert ids.tolist() == [[A, B]] and scores.tolist() == [[0, 0]]


def test_history_is_strictly_before_at_time(ds):
    m = ItemKNN().fit(ds, TRAIN_END)
    hist = m.history(np.array([4, 4, 4, 77]), np.array([13, 100, 151, 500]))
    assert [h.tolist() for h in hist] == [[], [A], [A, B], []]
    # after the window user 4's history is {a, b}: c scores 1/sqrt 6 + 1/2 = 0.908
    ids, scores = m.recommend(np.array([4]), 1, 151, exclude=hist[2:3])
    assert ids.tolist() == [[C]]
    assert scores[0, 0] == pytest.approx(1 / np.sqrt(6) + 0.5, rel=1e-6)


def test_pure_svd_scores_are_the_projection_on_item_factors(ds):
    m = PureSVD(n_components=3, seed=0).fit(ds, TRAIN_END)
    # the binary training matrix (users 1..5 x items a..f)
    x = np.array(
        [[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0],
         [0, 0, 0, 0, 1, 0]], dtype=float
    )  # fmt: skip
    v = np.linalg.svd(x)[2][:3].T  # (6, 3) top right singular vectors
    expected = x @ v @ v.T  # sign-free projection: (5, 6)
    ids, scores = m.recommend(np.arange(1, 6), 6)
    order = {int(i): c for c, i in enumerate([A, B, C, D, E, F])}
    got = np.zeros((5, 6))
    for u in range(5):
        got[u, [order[int(i)] for i in ids[u]]] = scores[u]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # user 4 (history a) gets b first: a and b share the leading factor
    assert ids[3, 0] == A and ids[3, 1] == B


def test_pure_svd_is_seeded_and_clamps_components(ds):
    a = PureSVD(n_components=64, seed=3).fit(ds, TRAIN_END)
    b = PureSVD(n_components=64, seed=3).fit(ds, TRAIN_END)
    assert a.n_components_ == 4  # 5 training users x 6 items: at most min - 1
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)


def test_batches_give_the_same_answer(ds, monkeypatch):
    users = np.array([1, 2, 3, 4, 5, 4])
    times = np.array([100, 100, 100, 100, 100, 151])
    for name, cls in BASELINES.items():
        model = cls().fit(ds, TRAIN_END)
        exclude = model.history(users, times)
        full = model.recommend(users, 4, times, exclude)
        monkeypatch.setattr(baselines, "_BATCH_ELEMENTS", 6)  # one user per batch
        small = model.recommend(users, 4, times, exclude)
        monkeypatch.undo()
        np.testing.assert_array_equal(full[0], small[0], err_msg=name)
        np.testing.assert_array_equal(full[1], small[1], err_msg=name)


def test_top_k_matches_a_full_sort_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 30)).astype(float)  # many ties
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    for k in (1, 7, 30, 45):
        cols, vals = _top_k(scores, k)
        kk = min(k, 30)
        # reference: sort each row by (-score, column)
        ref = np.lexsort((np.broadcast_to(np.arange(30), scores.shape), -scores), axis=1)[:, :kk]
        np.testing.assert_array_equal(cols, ref)
        np.testing.assert_array_equal(vals, np.take_along_axis(scores, ref, 1))


def test_errors(ds):
    with pytest.raises(RuntimeError, match="This ItemKNN instance is not fitted yet"):
        ItemKNN().recommend(np.array([1]), 3)
    m = MostPopular().fit(ds, TRAIN_END)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        m.recommend(np.array([1]), 0)
    with pytest.raises(ValueError, match=r"exclude must hold one array of item ids per user \(2\)"):
        m.recommend(np.array([1, 2]), 3, exclude=[np.array([A])])
    with pytest.raises(ValueError, match=r"at_time must be one time or one per user \(2\)"):
        m.recommend(np.array([1, 2]), 3, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="at_time must be integer UTC seconds"):
        m.recommend(np.array([1]), 3, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="user_ids must be a 1-D array of integer ids"):
        m.recommend(np.array([[1]]), 3)
    with pytest.raises(ValueError, match="no watches before train_end=5"):
        MostPopular().fit(ds, 5)
    with pytest.raises(TypeError, match="train_end must be an integer"):
        MostPopular().fit(ds, 100.0)  # type: ignore[arg-type]
    bad = Dataset(ds.users, ds.items[ds.items["item_id"] != A], ds.watches)
    with pytest.raises(
        ValueError, match=r"3 watches are of items not in dataset.items \(first: 1\)"
    ):
        MostPopular().fit(bad, TRAIN_END)
    with pytest.raises(ValueError, match="neighbors must be None"):
        ItemKNN(neighbors=0)
    with pytest.raises(ValueError, match="window_s must be None"):
        MostPopular(window_s=0)
    with pytest.raises(ValueError, match="n_components must be a positive integer"):
        PureSVD(n_components=0)
    one_user = Dataset(ds.users, ds.items, ds.watches[ds.watches["user_id"] == 5])
    with pytest.raises(ValueError, match="PureSVD needs at least 2 training users"):
        PureSVD().fit(one_user, TRAIN_END)
