"""Tests of the candidate indexes (candidate_gen.index): exact oracle vs brute force, annoy and
HNSW vs exact."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from vidrec.candidate_gen import hnsw
from vidrec.candidate_gen.index import (
    INDEX_META_FILE,
    AnnoyIndex,
    CandidateIndex,
    ExactIndex,
    HnswIndex,
    load_index,
)
from vidrec.features.integrity import ArtifactError

torch.set_num_threads(1)


def _random(n: int = 300, e: int = 8, q: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, e)).astype(np.float32)
    ids = rng.permutation(np.arange(1000, 1000 + 3 * n, 3))  # non-contiguous, shuffled
    queries = rng.normal(size=(q, e)).astype(np.float32)
    return vectors, ids.astype(np.int64), queries


def _brute(vectors, ids, queries, k, exclude=None):
    scores = queries.astype(np.float64) @ vectors.T.astype(np.float64)  # (Q, N)
    if exclude is not None:
        for r, ex in enumerate(exclude):
            scores[r, np.isin(ids, ex)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    return np.where(np.isfinite(top), ids[order], -1), top


def _assert_excluded(got_ids: np.ndarray, exclude: list[np.ndarray]) -> None:
    """No row holds an excluded id or an id twice."""
    for r, ex in enumerate(exclude):
        valid = got_ids[r][got_ids[r] >= 0]
        assert not np.isin(valid, ex).any()
        assert len(np.unique(valid)) == len(valid)


def _clustered(n: int = 2000, e: int = 16, q: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, e)) * 3.0
    vectors = centers[rng.integers(0, 20, n)] + rng.normal(size=(n, e))
    queries = centers[rng.integers(0, 20, q)] + rng.normal(size=(q, e)) * 0.5
    return vectors.astype(np.float32), np.arange(n, dtype=np.int64), queries.astype(np.float32)


def test_exact_hand_computed() -> None:
    index = ExactIndex(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), np.array([10, 20, 30]))
    ids, scores = index.search(np.array([[2.0, 1.0]]), k=3)
    # scores: item 10 -> 2, item 20 -> 1, item 30 -> 3
    assert ids.tolist() == [[30, 10, 20]]
    assert scores.tolist() == [[3.0, 2.0, 1.0]]
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    # exclude 30 and an id the index does not have (ignored); k=3 leaves one padded slot
    ids, scores = index.search(np.array([[2.0, 1.0]]), k=3, exclude=[np.array([30, 999])])
    assert ids.tolist() == [[10, 20, -1]]
    assert scores[0, :2].tolist() == [2.0, 1.0] and scores[0, 2] == -np.inf


@pytest.mark.parametrize("k", [1, 7, 64, 300])
@pytest.mark.parametrize("blocks", [{}, {"query_block": 5, "block_elements": 5 * 40}])
def test_exact_matches_argsort(k: int, blocks: dict) -> None:
    vectors, ids, queries = _random()
    index = ExactIndex(vectors, ids, **blocks)
    got_ids, got_scores = index.search(queries, k)
    want_ids, want_scores = _brute(vectors, ids, queries, k)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blocks", [{}, {"query_block": 4, "block_elements": 4 * 30}])
def test_exact_exclusion_and_padding(blocks: dict) -> None:
    vectors, ids, queries = _random(n=60, q=9)
    rng = np.random.default_rng(1)
    exclude = [rng.choice(ids, size=int(s), replace=False) for s in rng.integers(0, 60, 9)]
    exclude[0] = np.array([], dtype=np.int64)
    exclude[1] = ids.copy()  # everything excluded: fully padded row
    index = ExactIndex(vectors, ids, **blocks)
    got_ids, got_scores = index.search(queries, 20, exclude=exclude)
    want_ids, want_scores = _brute(vectors, ids, queries, 20, exclude)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    assert (got_ids[1] == -1).all() and np.isneginf(got_scores[1]).all()
    # k larger than the catalog pads too
    big_ids, big_scores = index.search(queries[:2], 70)
    assert (big_ids[:, 60:] == -1).all() and np.isneginf(big_scores[:, 60:]).all()
    assert (big_ids[:, :60] >= 0).all()


def test_exact_empty_query_batch() -> None:
    vectors, ids, _ = _random(n=10)
    got_ids, got_scores = ExactIndex(vectors, ids).search(np.zeros((0, 8), np.float32), 5)
    assert got_ids.shape == (0, 5) and got_scores.shape == (0, 5)


def test_annoy_dot_recall_against_exact() -> None:
    vectors, ids, queries = _clustered()
    exact = ExactIndex(vectors, ids)
    approx = AnnoyIndex(vectors, ids, n_trees=20, seed=0)
    assert isinstance(approx, CandidateIndex) and isinstance(exact, CandidateIndex)
    e_ids, _ = exact.search(queries, 10)
    a_ids, a_scores = approx.search(queries, 10)
    recall = np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(a_ids, e_ids, strict=True)])
    assert recall >= 0.9
    # annoy's dot "distance" is the inner product: scores equal u·v of the returned items
    np.testing.assert_allclose(
        a_scores, np.einsum("qe,qke->qk", queries, vectors[a_ids]), rtol=1e-4, atol=1e-4
    )
    assert (np.diff(a_scores, axis=1) <= 1e-6).all()  # best first


def test_annoy_exclusion_padding_and_determinism() -> None:
    vectors, ids, queries = _random(n=50, q=6)
    index = AnnoyIndex(vectors, ids, n_trees=10, seed=3)
    exclude = [ids[:10], np.array([], dtype=np.int64), ids, ids[5:7], np.array([7]), ids[:1]]
    got_ids, got_scores = index.search(queries, 45, exclude=exclude)
    _assert_excluded(got_ids, exclude)
    # search_k = -1 with k + excluded >= n visits everything: the rows are exact
    want_ids, _ = _brute(vectors, ids, queries, 45, exclude)
    np.testing.assert_array_equal(got_ids, want_ids)
    assert (got_ids[2] == -1).all() and np.isneginf(got_scores[2]).all()
    assert (got_ids[0, 40:] == -1).all()  # 50 - 10 excluded = 40 remain
    again = AnnoyIndex(vectors, ids, n_trees=10, seed=3).search(queries, 5)
    np.testing.assert_array_equal(index.search(queries, 5)[0], again[0])
    threaded = index.search(queries, 45, exclude=exclude, n_threads=4)
    np.testing.assert_array_equal(threaded[0], got_ids)
    np.testing.assert_array_equal(threaded[1], got_scores)


@pytest.mark.parametrize("cls", [ExactIndex, AnnoyIndex, HnswIndex])
def test_save_load_roundtrip(cls, tmp_path) -> None:
    vectors, ids, queries = _clustered(n=400, q=10)
    index = cls(vectors, ids)
    before = index.search(queries, 15, exclude=[ids[:3]] * 10)
    out = index.save(tmp_path / "idx")
    meta = json.loads((out / INDEX_META_FILE).read_text())
    assert meta["kind"] == cls.kind and meta["size"] == 400 and meta["dim"] == 16
    assert not list(out.glob(".*.tmp"))  # no temporary files left behind
    for loaded in (cls.load(out), load_index(out)):
        assert type(loaded) is cls and loaded.size == 400 and loaded.dim == 16
        after = loaded.search(queries, 15, exclude=[ids[:3]] * 10)
        np.testing.assert_array_equal(after[0], before[0])
        np.testing.assert_allclose(after[1], before[1])
    if cls is AnnoyIndex:
        loaded = cls.load(out)
        assert (loaded.n_trees, loaded.search_k, loaded.seed) == (50, -1, 0)
        loaded.save(tmp_path / "again")  # a memory-mapped index can be saved elsewhere
        np.testing.assert_array_equal(
            load_index(tmp_path / "again").search(queries, 15)[0], index.search(queries, 15)[0]
        )
    if cls is HnswIndex:
        assert (meta["m"], meta["ef_construction"], meta["ef_search"], meta["seed"]) == (
            32,
            300,
            1600,
            0,
        )
        assert meta["metric"] == "mips" and meta["hnsw_file_bytes"] > 0
        loaded = cls.load(out)
        assert (loaded.m, loaded.ef_construction, loaded.ef_search, loaded.seed) == (
            32,
            300,
            1600,
            0,
        )
        loaded.save(tmp_path / "again")  # a memory-mapped index can be saved elsewhere
        again = load_index(tmp_path / "again")
        np.testing.assert_array_equal(again.search(queries, 15)[0], index.search(queries, 15)[0])


def test_load_errors(tmp_path) -> None:
    vectors, ids, _ = _random(n=20)
    with pytest.raises(FileNotFoundError, match="not a saved index"):
        load_index(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="not a saved index"):
        ExactIndex.load(tmp_path / "nothing")
    exact_dir = ExactIndex(vectors, ids).save(tmp_path / "exact")
    with pytest.raises(ValueError, match="holds a 'exact' index, not 'annoy'"):
        AnnoyIndex.load(exact_dir)
    annoy_dir = AnnoyIndex(vectors, ids, n_trees=2).save(tmp_path / "annoy")
    (annoy_dir / AnnoyIndex.ANN_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="items.ann is missing"):
        AnnoyIndex.load(annoy_dir)
    meta = json.loads((exact_dir / INDEX_META_FILE).read_text())
    (exact_dir / INDEX_META_FILE).write_text(json.dumps({**meta, "size": 21}))
    with pytest.raises(ValueError, match="expected float32 \\(21, 8\\)"):
        ExactIndex.load(exact_dir)
    (exact_dir / INDEX_META_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="index format 99"):
        ExactIndex.load(exact_dir)
    (exact_dir / INDEX_META_FILE).write_text(json.dumps({**meta, "kind": "faiss"}))
    with pytest.raises(ValueError, match="unknown index kind 'faiss'"):
        load_index(exact_dir)


@pytest.mark.parametrize("cls", [ExactIndex, AnnoyIndex, HnswIndex])
@pytest.mark.parametrize(
    ("vectors", "ids", "exc", "match"),
    [
        (np.zeros((3, 2)), np.array([1, 1, 2]), ValueError, "ids must be unique; id 1"),
        (np.zeros((3, 2)), np.array([1, -2, 3]), ValueError, "first negative id: -2"),
        (np.zeros((3, 2)), np.array([1, 2]), ValueError, r"one id per vector \(3\)"),
        (np.zeros((3, 2)), np.array([1.0, 2.0, 3.0]), TypeError, "integer item ids"),
        (np.zeros((0, 2)), np.zeros(0, np.int64), ValueError, "non-empty 2-D"),
        (np.array([[0.0, 1.0], [np.nan, 0.0]]), np.array([1, 2]), ValueError, "first at row 1"),
        (np.array([["a", "b"]]), np.array([1]), TypeError, "vectors must be numeric"),
    ],
)
def test_build_errors(cls, vectors, ids, exc, match) -> None:
    with pytest.raises(exc, match=match):
        cls(vectors, ids)


@pytest.mark.parametrize("cls", [ExactIndex, AnnoyIndex, HnswIndex])
def test_search_errors(cls) -> None:
    vectors, ids, queries = _random(n=20, q=3)
    index = cls(vectors, ids)
    with pytest.raises(ValueError, match=r"shape \(Q, 8\)"):
        index.search(queries[:, :4], 5)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="one array of item ids per query \\(3\\), got 1"):
        index.search(queries, 5, exclude=[ids[:2]])
    with pytest.raises(TypeError, match="integer item ids"):
        index.search(queries, 5, exclude=[np.array([1.5])] * 3)
    bad = queries.copy()
    bad[2, 0] = np.inf
    with pytest.raises(ValueError, match="first at row 2"):
        index.search(bad, 5)


def test_annoy_parameter_errors() -> None:
    vectors, ids, queries = _random(n=20)
    with pytest.raises(ValueError, match="n_trees must be >= 1"):
        AnnoyIndex(vectors, ids, n_trees=0)
    with pytest.raises(ValueError, match="search_k must be -1"):
        AnnoyIndex(vectors, ids, search_k=0)
    with pytest.raises(ValueError, match="n_jobs must be -1"):
        AnnoyIndex(vectors, ids, n_jobs=-2)
    with pytest.raises(ValueError, match="search_k must be -1"):
        AnnoyIndex(vectors, ids, n_trees=2).search(queries, 3, search_k=-5)
    with pytest.raises(ValueError, match="n_threads must be a positive integer"):
        AnnoyIndex(vectors, ids, n_trees=2).search(queries, 3, n_threads=0)
    with pytest.raises(ValueError, match="query_block and block_elements"):
        ExactIndex(vectors, ids, query_block=0)


@pytest.mark.parametrize("metric", ["mips", "dot"])
def test_annoy_metrics_recall_scores_and_roundtrip(metric, tmp_path) -> None:
    # norms spread 0.2..3 (as learned embeddings' are): MIPS is not cosine search
    rng = np.random.default_rng(5)
    vectors, ids, queries = _random(n=2000, e=16, q=20, seed=5)
    vectors *= rng.uniform(0.2, 3.0, size=(len(vectors), 1)).astype(np.float32)
    exact = ExactIndex(vectors, ids)
    index = AnnoyIndex(vectors, ids, n_trees=20, seed=0, metric=metric)
    e_ids, _ = exact.search(queries, 10)
    a_ids, a_scores = index.search(queries, 10, search_k=4000)
    recall = np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(a_ids, e_ids, strict=True)])
    assert recall >= 0.9, recall
    # scores are u·v of the returned items (mips: from the angular distance, float rounding)
    rows = np.searchsorted(ids, a_ids, sorter=np.argsort(ids))
    want = np.einsum("qe,qke->qk", queries, vectors[np.argsort(ids)][rows])
    np.testing.assert_allclose(a_scores, want, rtol=1e-3, atol=1e-3)
    assert (np.diff(a_scores, axis=1) <= 1e-4).all()  # best first
    d = index.save(tmp_path / "ix")
    meta = json.loads((d / INDEX_META_FILE).read_text())
    assert meta["metric"] == metric and meta["max_norm"] == pytest.approx(
        float(np.linalg.norm(vectors, axis=1).max()), rel=1e-6
    )
    back = AnnoyIndex.load(d)
    assert back.metric == metric and back.dim == 16
    got = back.search(queries, 10, search_k=4000)
    np.testing.assert_array_equal(got[0], a_ids)
    np.testing.assert_allclose(got[1], a_scores, rtol=1e-6)
    (d / INDEX_META_FILE).write_text(json.dumps({**meta, "max_norm": -1}))
    with pytest.raises(ValueError, match="'max_norm' must be a finite number > 0"):
        AnnoyIndex.load(d)
    (d / INDEX_META_FILE).write_text(json.dumps({**meta, "metric": "euclidean"}))
    with pytest.raises(ValueError, match="says metric 'euclidean'"):
        AnnoyIndex.load(d)


def test_mips_beats_annoys_dot_metric_on_varied_norms() -> None:
    # a few long vectors hold the top of every query's list; annoy's dot forest misses them
    # far more often than the angular forest over MIPS-augmented vectors at the same budget
    rng = np.random.default_rng(9)
    vectors, ids, queries = _random(n=5000, e=16, q=40, seed=9)
    vectors *= rng.lognormal(0.0, 0.5, size=(len(vectors), 1)).astype(np.float32)
    e_ids, _ = ExactIndex(vectors, ids).search(queries, 20)

    def recall(metric: str) -> float:
        a_ids, _ = AnnoyIndex(vectors, ids, n_trees=10, seed=0, metric=metric).search(queries, 20)
        hits = [len(np.intersect1d(a, e)) / 20 for a, e in zip(a_ids, e_ids, strict=True)]
        return float(np.mean(hits))

    assert recall("mips") > recall("dot") + 0.05


def test_annoy_metric_is_validated() -> None:
    vectors, ids, _ = _random(n=20)
    with pytest.raises(ValueError, match="metric must be one of"):
        AnnoyIndex(vectors, ids, metric="cosine")


# ----------------------------------------------------------------------------- HNSW


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    k = want.shape[1]
    return float(np.mean([len(np.intersect1d(a, e)) / k for a, e in zip(got, want, strict=True)]))


def _varied_norms(n: int = 2000, e: int = 16, q: int = 30, seed: int = 5):
    # norms spread 0.2..3 (as learned embeddings' are): MIPS is not nearest-neighbour search
    vectors, ids, queries = _random(n=n, e=e, q=q, seed=seed)
    rng = np.random.default_rng(seed)
    vectors *= rng.uniform(0.2, 3.0, size=(n, 1)).astype(np.float32)
    return vectors, ids, queries


@pytest.mark.parametrize(
    ("data", "metric"),
    [("clustered", "mips"), ("varied", "mips"), ("clustered", "ip"), ("varied", "ip")],
)
def test_hnsw_recall_and_scores_against_exact(data: str, metric: str) -> None:
    vectors, ids, queries = _clustered() if data == "clustered" else _varied_norms()
    exact = ExactIndex(vectors, ids)
    index = HnswIndex(vectors, ids, m=16, ef_construction=100, ef_search=400, metric=metric)
    assert isinstance(index, CandidateIndex) and index.size == len(ids) and index.dim == 16
    e_ids, _ = exact.search(queries, 10)
    h_ids, h_scores = index.search(queries, 10)
    assert _recall(h_ids, e_ids) >= 0.95
    # scores are u·v of the returned items, best first
    rows = np.searchsorted(ids, h_ids, sorter=np.argsort(ids))
    want = np.einsum("qe,qke->qk", queries, vectors[np.argsort(ids)][rows])
    np.testing.assert_allclose(h_scores, want, rtol=1e-5, atol=1e-4)
    assert (np.diff(h_scores, axis=1) <= 0).all()


def test_hnsw_exclusion_padding_threads_and_determinism() -> None:
    vectors, ids, queries = _random(n=50, q=6)
    index = HnswIndex(vectors, ids, m=4, ef_construction=16, ef_search=8, seed=3)
    exclude = [ids[:10], np.array([], dtype=np.int64), ids, ids[5:7], np.array([7]), ids[:1]]
    got_ids, got_scores = index.search(queries, 45, exclude=exclude)
    _assert_excluded(got_ids, exclude)
    # k + excluded >= n: the whole index is searched, so the rows are exact
    want_ids, want_scores = _brute(vectors, ids, queries, 45, exclude)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    assert (got_ids[2] == -1).all() and np.isneginf(got_scores[2]).all()
    assert (got_ids[0, 40:] == -1).all()  # 50 - 10 excluded = 40 remain
    # k beyond the catalog pads too
    big_ids, big_scores = index.search(queries[:2], 60)
    assert (big_ids[:, 50:] == -1).all() and np.isneginf(big_scores[:, 50:]).all()
    assert sorted(big_ids[0, :50].tolist()) == sorted(ids.tolist())
    # the same seed and parameters build the same graph; any thread count gives the same rows
    again = HnswIndex(vectors, ids, m=4, ef_construction=16, ef_search=8, seed=3)
    np.testing.assert_array_equal(index.search(queries, 5)[0], again.search(queries, 5)[0])
    for n_threads in (1, 2):
        threaded = index.search(queries, 45, exclude=exclude, n_threads=n_threads)
        np.testing.assert_array_equal(threaded[0], got_ids)
        np.testing.assert_array_equal(threaded[1], got_scores)
    empty = index.search(np.zeros((0, 8), np.float32), 5)
    assert empty[0].shape == (0, 5) and empty[1].shape == (0, 5)


def test_hnsw_seed_sets_the_graph_levels() -> None:
    vectors, ids, _ = _random(n=500)

    def levels(seed: int) -> np.ndarray:
        index = HnswIndex(vectors, ids, m=4, ef_construction=16, seed=seed)
        return faiss.vector_to_array(index._index.hnsw.levels)

    np.testing.assert_array_equal(levels(7), levels(7))
    assert not np.array_equal(levels(7), levels(8))


def test_hnsw_exclusions_against_exact_on_a_larger_catalog() -> None:
    # many exclusions per query: over-fetching k + excluded keeps k results, none excluded
    vectors, ids, queries = _clustered(n=2000, q=20)
    exact = ExactIndex(vectors, ids)
    rng = np.random.default_rng(2)
    nearest, _ = exact.search(queries, 200)
    exclude = [np.r_[nearest[i, : 50 * (i % 4)], rng.choice(ids, 30)] for i in range(20)]
    index = HnswIndex(vectors, ids, m=16, ef_construction=100, ef_search=100)
    h_ids, h_scores = index.search(queries, 20, exclude=exclude)
    e_ids, _ = exact.search(queries, 20, exclude=exclude)
    assert (h_ids >= 0).all()
    assert not any(np.isin(h_ids[i], exclude[i]).any() for i in range(20))
    assert _recall(h_ids, e_ids) >= 0.95
    # one query alone gets the row it gets in a batch
    one = index.search(queries[3:4], 20, exclude=[exclude[3]])
    np.testing.assert_array_equal(one[0][0], h_ids[3])


class _ShortGraph:
    """Wraps a faiss index: its searches for fewer than `below` results return only `share`
    of them (as a graph whose search ends early does)."""

    def __init__(self, index, below: int, share: float = 0.5) -> None:
        self.index, self.below, self.share, self.asked = index, below, share, []

    def search(self, x, k, params=None):
        self.asked.append(k)
        dist, pos = self.index.search(x, k, params=params)
        if k < self.below:
            pos[:, int(k * self.share) :] = -1
        return dist, pos


def test_hnsw_asks_again_when_the_graph_returns_too_few() -> None:
    vectors, ids, queries = _clustered(n=1000, q=8)
    index = HnswIndex(vectors, ids, m=8, ef_construction=50, ef_search=50)
    index._index = _ShortGraph(index._index, below=40)
    exclude = [ids[:5]] * 8
    got, _ = index.search(queries, 10, exclude=exclude)
    assert (got >= 0).all() and not np.isin(got, ids[:5]).any()
    assert index._index.asked == [16, 32]  # 10 + 5 excluded (rounded up), then twice as many
    # a graph that returns nothing: the widths double until the whole index is searched exactly
    index._index = _ShortGraph(index._index.index, below=10**9, share=0.0)
    got, _ = index.search(queries, 10, exclude=exclude)
    np.testing.assert_array_equal(got, ExactIndex(vectors, ids).search(queries, 10, exclude)[0])
    assert index._index.asked == [16, 32, 64, 128, 256, 512]  # then 1,000 = every item


def test_hnsw_width_rounds_up_within_a_quarter() -> None:
    need = np.array([10, 11, 13, 100, 101, 1000, 5000])
    got = hnsw._width(need, 10, 4000)
    assert got.tolist() == [10, 12, 14, 112, 112, 1024, 4000]
    assert (got >= np.minimum(need, 4000)).all()
    assert (got <= np.maximum(np.ceil(need * 1.25), 10)).all()


def test_hnsw_parameter_errors() -> None:
    vectors, ids, queries = _random(n=20)
    for kwargs, match in [
        ({"m": 1}, "m must be an integer >= 2"),
        ({"ef_construction": 0}, "ef_construction must be an integer >= 1"),
        ({"ef_search": 0}, "ef_search must be an integer >= 1"),
        ({"seed": -1}, r"seed must be in \[0, 2\*\*63\)"),
        ({"n_jobs": 0}, "n_jobs must be -1"),
        ({"metric": "cosine"}, "metric must be one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            HnswIndex(vectors, ids, **kwargs)
    index = HnswIndex(vectors, ids, m=4, ef_construction=8)
    with pytest.raises(ValueError, match="ef_search must be an integer >= 1"):
        index.search(queries, 3, ef_search=0)
    with pytest.raises(ValueError, match="n_threads must be an integer >= 1"):
        index.search(queries, 3, n_threads=0)


@pytest.fixture
def hnsw_dir(tmp_path: Path) -> Path:
    vectors, ids, _ = _random(n=60)
    return HnswIndex(vectors, ids, m=4, ef_construction=16).save(tmp_path / "hnsw")


def _write_faiss(index, path: Path) -> None:
    """Write a faiss index over `path` and record its size in the index.json beside it."""
    faiss.write_index(index, str(path))
    meta_path = path.parent / INDEX_META_FILE
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "hnsw_file_bytes": path.stat().st_size}))


@pytest.mark.parametrize("damage", ["truncate", "append", "random", "empty"])
def test_hnsw_refuses_a_damaged_file(hnsw_dir: Path, damage: str) -> None:
    path = hnsw_dir / HnswIndex.HNSW_FILE
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "append":
        data += b"\0" * 16
    elif damage == "random":
        data = np.random.default_rng(0).bytes(len(data))
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(ArtifactError, match=f"{HnswIndex.HNSW_FILE}.*rebuild the index"):
        load_index(hnsw_dir)


def test_hnsw_refuses_random_bytes_of_the_recorded_size(hnsw_dir: Path) -> None:
    path = hnsw_dir / HnswIndex.HNSW_FILE
    data = bytearray(path.read_bytes())
    data[:4] = b"IxHF"[::-1]  # another faiss index type's fourcc
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="faiss cannot read .*items.faiss"):
        HnswIndex.load(hnsw_dir)


@pytest.mark.parametrize("other", ["dimension", "size", "flat", "metric", "M"])
def test_hnsw_refuses_a_file_of_another_index(hnsw_dir: Path, other: str) -> None:
    vectors, ids, _ = _random(n=60)
    path = hnsw_dir / HnswIndex.HNSW_FILE
    if other == "dimension":
        built = HnswIndex(vectors[:, :4].copy(), ids, m=4, ef_construction=16)._index
    elif other == "size":
        built = HnswIndex(vectors[:59], ids[:59], m=4, ef_construction=16)._index
    elif other == "metric":
        built = HnswIndex(vectors, ids, m=4, ef_construction=16, metric="ip")._index
    elif other == "M":
        built = HnswIndex(vectors, ids, m=6, ef_construction=16)._index
    else:
        built = faiss.IndexFlatL2(9)
        built.add(np.zeros((60, 9), np.float32))
    _write_faiss(built, path)
    match = {"M": "M = 4 links", "flat": "not an HNSW index"}.get(other, "not 60 of dimension 9")
    with pytest.raises(ArtifactError, match=match):
        HnswIndex.load(hnsw_dir)


@pytest.mark.parametrize("damage", ["link", "upper_link", "entry", "level"])
def test_hnsw_refuses_a_graph_faiss_would_follow_out_of_bounds(hnsw_dir: Path, damage: str) -> None:
    # recent faiss checks part of this itself when it reads the file; vidrec checks it all
    vectors, ids, _ = _random(n=60)
    built = HnswIndex(vectors, ids, m=4, ef_construction=16)._index
    graph = built.hnsw
    links = faiss.rev_swig_ptr(graph.neighbors.data(), graph.neighbors.size())
    levels = faiss.vector_to_array(graph.levels)
    if damage == "link":
        links[3] = 60
        match = "links point outside|out of range"
    elif damage == "upper_link":
        # a layer-1 link of an item on layer 1 that names an item of layer 0 only
        upper = int(np.flatnonzero(levels > 1)[0])
        start = int(faiss.vector_to_array(graph.offsets)[upper]) + 2 * 4
        links[start] = int(np.flatnonzero(levels == 1)[0])
        match = "layer-1 links to items below it"
    elif damage == "entry":
        graph.entry_point = 60
        match = "entry point|entry_point"
    else:
        graph.levels.push_back(1)  # one item too many
        match = "tables do not cover 60 items|offsets size"
    path = hnsw_dir / HnswIndex.HNSW_FILE
    with pytest.raises(ArtifactError, match=match.split("|")[0]):
        hnsw._check_graph(graph, 60, 4, path, "rebuild the index")
    _write_faiss(built, path)
    with pytest.raises(ArtifactError, match=f"{HnswIndex.HNSW_FILE}.*({match})"):
        HnswIndex.load(hnsw_dir)


def test_hnsw_index_json_fields(hnsw_dir: Path) -> None:
    meta = json.loads((hnsw_dir / INDEX_META_FILE).read_text())
    for key, value, match in [
        ("m", 1, "'m' must be an integer >= 2"),
        ("ef_search", 0, "'ef_search' must be an integer >= 1"),
        ("ef_construction", "16", "'ef_construction' must be an integer"),
        ("hnsw_file_bytes", meta["hnsw_file_bytes"] + 1, "index.json says it was saved with"),
        ("metric", "dot", "says metric 'dot'"),
        ("max_norm", 0, "'max_norm' must be a finite number > 0"),
        ("hnsw_file", "../items.faiss", "points outside"),
    ]:
        (hnsw_dir / INDEX_META_FILE).write_text(json.dumps({**meta, key: value}))
        with pytest.raises(ArtifactError, match=match):
            HnswIndex.load(hnsw_dir)
    (hnsw_dir / INDEX_META_FILE).write_text(json.dumps(meta))
    (hnsw_dir / HnswIndex.HNSW_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="items.faiss is missing"):
        load_index(hnsw_dir)


def test_hnsw_loaded_vectors_are_memory_mapped_read_only(hnsw_dir: Path) -> None:
    index = HnswIndex.load(hnsw_dir)
    assert not index._stored.flags.writeable and index._stored.shape == (60, 9)
    assert load_index(hnsw_dir).kind == "hnsw"


def test_make_index_builds_each_kind() -> None:
    from vidrec.candidate_gen.index import make_index

    vectors, ids, queries = _random(n=80)
    want, _ = ExactIndex(vectors, ids).search(queries, 5)
    for kind, settings in [
        ("exact", {}),
        ("annoy", {"n_trees": 5, "search_k": 10_000}),
        ("hnsw", {"m": 8, "ef_construction": 40, "ef_search": 80}),
    ]:
        index = make_index(kind, vectors, ids, seed=1, **settings)
        assert index.kind == kind and isinstance(index, CandidateIndex)
        np.testing.assert_array_equal(index.search(queries, 5)[0], want)
    with pytest.raises(ValueError, match="unknown index kind 'faiss'"):
        make_index("faiss", vectors, ids)
