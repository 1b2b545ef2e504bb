"""Tests of the candidate indexes (candidate_gen.index): exact oracle vs brute force, annoy vs exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vidrec.candidate_gen.index import (
    INDEX_META_FILE,
    AnnoyIndex,
    CandidateIndex,
    ExactIndex,
    load_index,
)

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
    for r, ex in enumerate(exclude):
        valid = got_ids[r][got_ids[r] >= 0]
        assert not np.isin(valid, ex).any()
        assert len(np.unique(valid)) == len(valid)
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


@pytest.mark.parametrize("cls", [ExactIndex, AnnoyIndex])
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


@pytest.mark.parametrize("cls", [ExactIndex, AnnoyIndex])
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


@pytest.mark.parametrize("cls", [ExactIndex, AnnoyIndex])
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
