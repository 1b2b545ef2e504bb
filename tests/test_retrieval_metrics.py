"""Hand-computed checks of the retrieval metrics (evaluation.retrieval)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import vidrec.evaluation.retrieval as er
from vidrec.evaluation.retrieval import (
    ann_recall,
    freshness_buckets,
    popularity_buckets,
    retrieval_metrics,
)

# Four queries, K = 4:
#   q0 retrieves 1 2 3 4, targets {2, 4, 11}      -> rel 0 1 0 1
#   q1 retrieves 5 6 - -, targets {5, 5} = {5}    -> rel 1 0 0 0
#   q2 retrieves 7 8 9 10, no targets             -> left out of the means
#   q3 retrieves 12 13 14 15, targets {99}        -> rel 0 0 0 0
RETRIEVED = np.array([[1, 2, 3, 4], [5, 6, -1, -1], [7, 8, 9, 10], [12, 13, 14, 15]])
TARGETS = [np.array([2, 4, 11]), np.array([5, 5]), np.array([], dtype=np.int64), np.array([99])]
D2 = 1 / math.log2(3)  # discount at rank 2 = 0.630930
D4 = 1 / math.log2(5)  # discount at rank 4 = 0.430677


def test_overall_metrics_hand_computed() -> None:
    m = retrieval_metrics(RETRIEVED, TARGETS, ks=(1, 2, 4, 5), catalog_size=20)
    assert m["n_queries"] == 3 and m["n_queries_without_targets"] == 1
    # recall: q0 0/3, 1/3, 2/3; q1 1, 1, 1; q3 0
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx((1 / 3 + 1) / 3)  # 0.444444
    assert m["recall@4"] == pytest.approx((2 / 3 + 1) / 3)  # 0.555556
    # hitrate: q0 0, 1, 1; q1 1, 1, 1; q3 0
    assert m["hitrate@1"] == pytest.approx(1 / 3)
    assert m["hitrate@2"] == pytest.approx(2 / 3)
    assert m["hitrate@4"] == pytest.approx(2 / 3)
    # ndcg q0: @1 0/1; @2 D2/(1 + D2) = 0.386853; @4 (D2 + D4)/(1 + D2 + 1/2) = 0.498189
    #      q1: 1 everywhere; q3: 0
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["ndcg@2"] == pytest.approx((D2 / (1 + D2) + 1) / 3)  # 0.462284
    assert m["ndcg@4"] == pytest.approx(((D2 + D4) / (1 + D2 + 0.5) + 1) / 3)  # 0.499396
    # AP q0: @1 0; @2 (1/2)/min(3,2) = 0.25; @4 (1/2 + 2/4)/min(3,4) = 1/3
    #    q1: 1 everywhere; q3: 0
    assert m["map@1"] == pytest.approx(1 / 3)
    assert m["map@2"] == pytest.approx((0.25 + 1) / 3)  # 0.416667
    assert m["map@4"] == pytest.approx((1 / 3 + 1) / 3)  # 0.444444
    # coverage over all 4 queries (q2 included), catalog 20:
    # @1 {1,5,7,12} = 4; @2 {1,2,5,6,7,8,12,13} = 8; @4 4 + 2 + 4 + 4 = 14
    assert m["coverage@1"] == pytest.approx(4 / 20)
    assert m["coverage@2"] == pytest.approx(8 / 20)
    assert m["coverage@4"] == pytest.approx(14 / 20)
    # k = 5 > K = 4: reported as None with a note
    for name in ("recall", "hitrate", "ndcg", "map", "coverage"):
        assert m[f"{name}@5"] is None
    assert "k=5 exceeds the 4 items retrieved" in str(m["note"])
    assert "note" not in retrieval_metrics(RETRIEVED, TARGETS, ks=(1, 4), catalog_size=20)


def test_query_group_metrics_hand_computed() -> None:
    # q0 and q2 are "new" users, q1 and q3 "returning"; q2 has no target (left out)
    group = {"history": ["new", "returning", "new", "returning"]}
    m = retrieval_metrics(RETRIEVED, TARGETS, ks=(2, 4, 5), catalog_size=20, query_group=group)
    assert m["history.new.n_queries"] == 1 and m["history.returning.n_queries"] == 2
    assert m["history.new.recall@2"] == pytest.approx(1 / 3)  # q0 alone
    assert m["history.new.recall@4"] == pytest.approx(2 / 3)
    assert m["history.returning.recall@4"] == pytest.approx(0.5)  # q1 1, q3 0
    assert m["history.returning.hitrate@2"] == pytest.approx(0.5)
    assert m["history.new.ndcg@2"] == pytest.approx(D2 / (1 + D2))
    assert m["history.new.recall@5"] is None  # k beyond the retrieved width
    # the groups' means, weighted by their queries, give the overall mean
    n_new, n_ret = m["history.new.n_queries"], m["history.returning.n_queries"]
    both = n_new * m["history.new.recall@4"] + n_ret * m["history.returning.recall@4"]
    assert both / (n_new + n_ret) == pytest.approx(m["recall@4"])
    with pytest.raises(ValueError, match="one label per query"):
        retrieval_metrics(RETRIEVED, TARGETS, ks=(2,), catalog_size=20, query_group={"h": ["a"]})
    with pytest.raises(ValueError, match="must not contain"):
        retrieval_metrics(
            RETRIEVED, TARGETS, ks=(2,), catalog_size=20, query_group={"a.b": ["x"] * 4}
        )
    with pytest.raises(ValueError, match="non-empty strings"):
        retrieval_metrics(
            RETRIEVED, TARGETS, ks=(2,), catalog_size=20, query_group={"h": ["x", "", "x", "x"]}
        )


def test_single_list_in_hindsight_maximises_mean_recall() -> None:
    from itertools import permutations

    from vidrec.evaluation.retrieval import history_groups, single_list_in_hindsight

    # weights: 1 -> 1/2 + 1/3, 2 -> 1/2, 3 -> 1/3 + 1, 4 -> 1/3 (q with {3} weighs it 1)
    targets = [np.array([1, 2]), np.array([1, 3, 4, 4]), np.array([3]), np.array([], int)]
    order = single_list_in_hindsight(targets)
    assert order.tolist() == [3, 1, 2, 4]
    # no other single list of two items has a higher mean recall@2
    def recall2(lst):
        ids = np.tile(np.array(lst), (4, 1))
        return retrieval_metrics(ids, targets, ks=(2,), catalog_size=10)["recall@2"]

    best = max(recall2(list(p)) for p in permutations([1, 2, 3, 4], 2))
    assert recall2(order[:2].tolist()) == pytest.approx(best)
    assert single_list_in_hindsight([np.array([], int)]).size == 0
    labels = history_groups([np.array([5]), np.array([], int)])
    assert labels.tolist() == ["returning", "new"]


def test_bucket_metrics_hand_computed() -> None:
    buckets = {
        "popularity": {2: "head", 5: "head", 4: "tail", 11: "tail", 99: "torso", 3: "head"},
        "freshness": {2: "fresh", 99: "fresh", 4: "old", 11: "old", 5: "old"},
    }
    m = retrieval_metrics(RETRIEVED, TARGETS, ks=(1, 2, 4, 5), catalog_size=20, item_bucket=buckets)
    # head: q0 targets {2} (rank 2), q1 {5} (rank 1) -> recall@1 (0 + 1)/2, @2 and @4 1
    assert m["popularity.head.n_queries"] == 2
    assert m["popularity.head.recall@1"] == pytest.approx(0.5)
    assert m["popularity.head.recall@2"] == pytest.approx(1.0)
    assert m["popularity.head.hitrate@4"] == pytest.approx(1.0)
    # item 3 is labeled head and retrieved by q0, but is not q0's target: no hit
    # tail: q0 targets {4, 11}, 4 at rank 4 -> recall@2 0, @4 1/2; hitrate@4 1
    assert m["popularity.tail.n_queries"] == 1
    assert m["popularity.tail.recall@2"] == pytest.approx(0.0)
    assert m["popularity.tail.recall@4"] == pytest.approx(0.5)
    assert m["popularity.tail.hitrate@4"] == pytest.approx(1.0)
    # torso: q3 {99}, never retrieved
    assert m["popularity.torso.n_queries"] == 1
    assert m["popularity.torso.recall@4"] == pytest.approx(0.0)
    # fresh: q0 {2} (rank 2), q3 {99} -> recall@2 (1 + 0)/2; old: q0 {4, 11}, q1 {5}
    assert m["freshness.fresh.recall@1"] == pytest.approx(0.0)
    assert m["freshness.fresh.recall@2"] == pytest.approx(0.5)
    # old @4: q0 1/2 (item 4), q1 1 (item 5) -> 0.75; @1: q0 0, q1 1 -> 0.5
    assert m["freshness.old.recall@4"] == pytest.approx(0.75)
    assert m["freshness.old.recall@1"] == pytest.approx(0.5)
    assert m["freshness.old.hitrate@1"] == pytest.approx(0.5)
    assert m["popularity.tail.recall@5"] is None


def test_empty_bucket_and_no_targets_give_none() -> None:
    m = retrieval_metrics(
        np.array([[1, 2]]), [np.array([], dtype=np.int64)], ks=(2,), catalog_size=5
    )
    assert m["n_queries"] == 0 and m["recall@2"] is None and m["map@2"] is None
    assert m["coverage@2"] == pytest.approx(2 / 5)


def _naive(retrieved, targets, ks, catalog_size):
    # one query at a time, straight from the definitions
    out = {}
    rows = [(r, set(t.tolist())) for r, t in zip(retrieved, targets, strict=True) if len(t)]
    for k in ks:
        rec, hr, nd, ap = [], [], [], []
        for r, t in rows:
            top = r[:k].tolist()
            rel = [1.0 if x in t else 0.0 for x in top]
            rec.append(sum(rel) / len(t))
            hr.append(float(sum(rel) > 0))
            dcg = sum(g / math.log2(i + 2) for i, g in enumerate(rel))
            idcg = sum(1 / math.log2(i + 2) for i in range(min(len(t), k)))
            nd.append(dcg / idcg)
            s, h = 0.0, 0
            for i, g in enumerate(rel):
                if g:
                    h += 1
                    s += h / (i + 1)
            ap.append(s / min(len(t), k))
        out[f"recall@{k}"] = np.mean(rec)
        out[f"hitrate@{k}"] = np.mean(hr)
        out[f"ndcg@{k}"] = np.mean(nd)
        out[f"map@{k}"] = np.mean(ap)
        top = retrieved[:, :k]
        out[f"coverage@{k}"] = len(set(top[top >= 0].tolist())) / catalog_size
    return out


@pytest.mark.parametrize(("chunk", "id_scale"), [(1 << 21, 1), (7, 1), (1 << 21, 10**12)])
def test_vectorized_matches_naive_definitions(chunk: int, id_scale: int, monkeypatch) -> None:
    # chunk 7 -> one target pair / query row per chunk; id_scale 10**12 -> sparse ids (coverage's
    # np.unique path)
    monkeypatch.setattr(er, "_CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(0)
    n_q, width, n_items = 60, 12, 40
    retrieved = np.stack([rng.permutation(n_items)[:width] for _ in range(n_q)]).astype(np.int64)
    retrieved[rng.random((n_q, width)) < 0.1] = -1  # some padding (distinct ids remain distinct)
    targets = [rng.integers(0, n_items, int(s)) * id_scale for s in rng.integers(0, 6, n_q)]
    retrieved = np.where(retrieved >= 0, retrieved * id_scale, -1)
    got = retrieval_metrics(retrieved, targets, ks=(1, 5, 12), catalog_size=n_items)
    want = _naive(retrieved, targets, (1, 5, 12), n_items)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


@pytest.mark.parametrize(
    ("retrieved", "targets", "kwargs", "exc", "match"),
    [
        (
            np.array([[1, 2, 1]]),
            [np.array([1])],
            {},
            ValueError,
            "row 0 returns item 1 more than once",
        ),
        (np.array([[1, -2]]), [np.array([1])], {}, ValueError, "negative id -2 at query 0"),
        (np.array([1, 2]), [np.array([1])], {}, ValueError, "2-D array"),
        (np.array([[1.0, 2.0]]), [np.array([1])], {}, TypeError, "integer item ids"),
        (np.array([[1, 2]]), [np.array([1]), np.array([2])], {}, ValueError, r"per query \(1 rows"),
        (np.array([[1, 2]]), [np.array([-3])], {}, ValueError, "negative item id -3"),
        (np.array([[1, 2]]), [np.array([1.5])], {}, TypeError, "targets must hold integer"),
        (np.array([[1, 2]]), [np.array([1])], {"catalog_size": 0}, ValueError, "catalog_size"),
        (np.array([[1, 2]]), [np.array([1])], {"ks": (0,)}, ValueError, "positive integer"),
        (np.array([[1, 2]]), [np.array([1])], {"ks": ()}, ValueError, "ks is empty"),
        (
            np.array([[1, 2]]),
            [np.array([1, 7])],
            {"item_bucket": {"popularity": {1: "head"}}},
            ValueError,
            r"no bucket for target item ids \[7\]",
        ),
        (
            np.array([[1, 2]]),
            [np.array([1])],
            {"item_bucket": {"pop.ularity": {1: "head"}}},
            ValueError,
            "must not contain '.'",
        ),
        (
            np.array([[1, 2]]),
            [np.array([1])],
            {"item_bucket": {"popularity": {}}},
            ValueError,
            "non-empty mapping",
        ),
    ],
)
def test_retrieval_metrics_errors(retrieved, targets, kwargs, exc, match) -> None:
    args = {"ks": (1,), "catalog_size": 10}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        retrieval_metrics(retrieved, targets, **args)


def test_popularity_buckets_hand_computed() -> None:
    ids = np.arange(10, 20)
    counts = np.array([50, 0, 3, 3, 20, 1, 0, 7, 2, 9])
    # rank by count desc, ties by id: 10(50) 14(20) 19(9) 17(7) 12(3) 13(3) 18(2) 15(1) 11(0) 16(0)
    # head = first floor(0.2·10) = 2 ranks; tail = last floor(0.5·10) = 5 ranks
    got = popularity_buckets(ids, counts)
    assert {i for i, b in got.items() if b == "head"} == {10, 14}
    assert {i for i, b in got.items() if b == "torso"} == {19, 17, 12}
    assert {i for i, b in got.items() if b == "tail"} == {13, 18, 15, 11, 16}
    # tail_share 0.1: only the last rank (16) by rank, plus every zero-count item (11)
    got = popularity_buckets(ids, counts, head_share=0.2, tail_share=0.1)
    assert {i for i, b in got.items() if b == "tail"} == {16, 11}
    assert {i for i, b in got.items() if b == "torso"} == {19, 17, 12, 13, 18, 15}
    # zero-count items are tail even inside the head ranks
    assert popularity_buckets(np.array([1, 2]), np.array([0, 0]), 1.0, 0.0) == {
        1: "tail",
        2: "tail",
    }


@pytest.mark.parametrize(
    ("ids", "counts", "kwargs", "exc", "match"),
    [
        (np.array([1, 2]), np.array([1]), {}, ValueError, "same length"),
        (np.array([1, 1]), np.array([1, 2]), {}, ValueError, "item 1 occurs twice"),
        (np.array([1, 2]), np.array([1, -1]), {}, ValueError, "finite and >= 0"),
        (np.array([1, 2]), np.array(["a", "b"]), {}, TypeError, "counts must be numeric"),
        (np.array([1.0, 2.0]), np.array([1, 2]), {}, TypeError, "integer item ids"),
        (np.array([1, 2]), np.array([1, 2]), {"head_share": 1.5}, ValueError, "head_share must be"),
        (
            np.array([1, 2]),
            np.array([1, 2]),
            {"head_share": 0.6, "tail_share": 0.6},
            ValueError,
            "must be <= 1",
        ),
    ],
)
def test_popularity_buckets_errors(ids, counts, kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        popularity_buckets(ids, counts, **kwargs)


def test_freshness_buckets() -> None:
    at = 1_000_000
    week = 7 * 86400
    # ages: exactly 7 days (old), 7 days - 1 s (fresh), -100 s = uploaded later (fresh), 1e6 s (old)
    got = freshness_buckets(
        np.array([1, 2, 3, 4]), np.array([at - week, at - week + 1, at + 100, 0]), at
    )
    assert got == {1: "old", 2: "fresh", 3: "fresh", 4: "old"}
    assert freshness_buckets(np.array([1]), np.array([at - 86400]), at, fresh_days=0.5) == {
        1: "old"
    }
    with pytest.raises(ValueError, match="fresh_days must be a positive number"):
        freshness_buckets(np.array([1]), np.array([0]), at, fresh_days=0)
    with pytest.raises(TypeError, match="UTC timestamp"):
        freshness_buckets(np.array([1]), np.array([0]), "2024-01-01")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same length"):
        freshness_buckets(np.array([1, 2]), np.array([0]), at)


def test_ann_recall_hand_computed() -> None:
    approx = np.array([[1, 2, 3], [4, 5, -1], [7, 8, 9]])
    exact = np.array([[1, 2, 4], [4, 6, -1], [-1, -1, -1]])
    # q0 {1,2} of {1,2,4} = 2/3; q1 {4} of {4,6} = 1/2; q2 has no exact items -> left out
    assert ann_recall(approx, exact) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert ann_recall(exact[:2], exact[:2]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        ann_recall(approx[:, :2], exact)
    with pytest.raises(ValueError, match="all -1"):
        ann_recall(approx[2:], exact[2:])
    with pytest.raises(ValueError, match="approx_ids row 0 returns item 1 more than once"):
        ann_recall(np.array([[1, 1, 3]]), exact[:1])
