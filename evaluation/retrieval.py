"""Retrieval metrics for the candidate generator (SPEC §6): pure numpy over id arrays.

Where it sits: the retriever returns, per held-out query (a user at the split time), a ranked
row of item ids (-1 = padding); the targets are the items that user actually watched next.
`retrieval_metrics` scores the rows against the targets, overall and per item bucket
(popularity head/torso/tail from `popularity_buckets`, freshness from `freshness_buckets`);
`ann_recall` measures an approximate index against the exact one on the same queries.

Definitions (binary relevance; per query q with target set T_q, |T_q| >= 1, and hit indicator
rel_r = [retrieved[q, r] ∈ T_q] at rank r = 1..k):
- recall@k   = Σ_{r<=k} rel_r / |T_q|
- hitrate@k  = [Σ_{r<=k} rel_r > 0]
- ndcg@k     = Σ_{r<=k} rel_r / log2(r + 1)  ÷  Σ_{r<=min(|T_q|, k)} 1 / log2(r + 1)
- map@k      = Σ_{r<=k} rel_r · precision@r / min(|T_q|, k)   (AP@k, then mean over queries)
- coverage@k = |distinct ids among all queries' top k| / catalog_size
Every per-query metric is averaged over the queries with at least one target; queries without
targets are counted in `n_queries_without_targets` and otherwise ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "retrieval_metrics",
    "popularity_buckets",
    "freshness_buckets",
    "ann_recall",
    "history_groups",
    "single_list_in_hindsight",
    "DEFAULT_KS",
    "HINDSIGHT",
]

DEFAULT_KS: tuple[int, ...] = (10, 50, 100, 500)
# the default buckets (shares of the catalog, days since upload); the report's glossary
# describes the buckets with these numbers
HEAD_SHARE = 0.2
TAIL_SHARE = 0.5
FRESH_DAYS = 7
_CHUNK_ELEMENTS = 1 << 21  # rows per chunk × K stays below this: bounded temporaries
_LOOKUP_TABLE_MAX_ID = 1 << 25  # coverage indexes a table by id below this, else re-codes

Metrics = dict[str, float | int | str | None]


def _as_id_matrix(name: str, a: np.ndarray) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (queries, k) of item ids, got shape {arr.shape}"
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer item ids (-1 = padding), got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if (arr < -1).any():
        r, c = np.argwhere(arr < -1)[0]
        raise ValueError(
            f"{name} holds negative id {int(arr[r, c])} at query {int(r)}; item ids are >= 0 "
            "and -1 is the only padding value"
        )
    return arr


def _check_no_duplicates(name: str, arr: np.ndarray) -> None:
    if arr.shape[1] < 2:
        return
    step = max(1, _CHUNK_ELEMENTS // arr.shape[1])
    for r0 in range(0, arr.shape[0], step):  # chunked: the sorted copy stays small
        s = np.sort(arr[r0 : r0 + step], axis=1)
        dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
        if dup.any():
            r, c = np.argwhere(dup)[0]
            raise ValueError(
                f"{name} row {int(r0 + r)} returns item {int(s[r, c + 1])} more than once; a "
                "retriever must return distinct items per query (a duplicate would count twice)"
            )


def _flatten_targets(
    targets: Sequence[np.ndarray], n_queries: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (query index, item id) int64 of every target, in query order."""
    if len(targets) != n_queries:
        raise ValueError(
            f"targets must have one array of relevant item ids per query ({n_queries} rows "
            f"retrieved), got {len(targets)}"
        )
    arrays = [np.asarray(t).reshape(-1) for t in targets]
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=n_queries)
    if lengths.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    flat = np.concatenate(arrays)
    if not np.issubdtype(flat.dtype, np.integer):
        raise TypeError(f"targets must hold integer item ids, got dtype {flat.dtype}")
    flat = flat.astype(np.int64, copy=False)
    if (flat < 0).any():
        raise ValueError(
            f"targets hold negative item id {int(flat[flat < 0][0])}; item ids are >= 0"
        )
    return np.repeat(np.arange(n_queries, dtype=np.int64), lengths), flat


@dataclass(frozen=True)
class _Hits:
    """The hits of a retrieved matrix against per-query target sets, stored sparsely.

    `universe` holds the distinct target ids; a target or hit is identified by its code (index
    into `universe`). Hits are ordered by (row, col); `ordinal` is 1 for a row's first hit,
    2 for its second, ... so precision at a hit is ordinal / (col + 1).
    """

    universe: np.ndarray  # (U,) sorted distinct target ids
    t_rows: np.ndarray  # (T,) query of each distinct (query, target) pair
    t_codes: np.ndarray  # (T,)
    rows: np.ndarray  # (H,) query of each hit
    cols: np.ndarray  # (H,) 0-based rank of each hit
    codes: np.ndarray  # (H,) target code of each hit
    ordinal: np.ndarray  # (H,) 1-based index of the hit within its row


def _find_hits(retrieved: np.ndarray, t_rows: np.ndarray, t_ids: np.ndarray) -> _Hits:
    """Return the sparse hits of `retrieved` (Q, K) against the (query, target id) pairs.

    Works from the targets side: each distinct (query, target) pair is compared with its
    query's K retrieved ids, in chunks of pairs. That is O(T·K) cheap comparisons for T pairs
    (a query's ids are distinct, so a pair is found at most once) and needs no table over the
    item ids, whatever their range.
    """
    order = np.lexsort((t_ids, t_rows))  # by query, then id
    r_sorted, i_sorted = t_rows[order], t_ids[order]
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = (r_sorted[1:] != r_sorted[:-1]) | (i_sorted[1:] != i_sorted[:-1])
    t_rows_u, t_ids_u = r_sorted[keep], i_sorted[keep]  # deduplicated pairs
    universe, t_codes_u = np.unique(t_ids_u, return_inverse=True)
    t_codes_u = t_codes_u.reshape(-1).astype(np.int64)
    width = retrieved.shape[1]
    cols = np.full(len(t_rows_u), -1, dtype=np.int64)  # rank of each pair's hit, -1 = missed
    if width:
        step = max(1, _CHUNK_ELEMENTS // width)
        for c0 in range(0, len(t_rows_u), step):
            eq = retrieved[t_rows_u[c0 : c0 + step]] == t_ids_u[c0 : c0 + step, None]  # (c, K)
            cols[c0 : c0 + step] = np.where(eq.any(axis=1), eq.argmax(axis=1), -1)
    found = cols >= 0
    by_rank = np.lexsort((cols[found], t_rows_u[found]))  # hits by (row, col)
    rows = t_rows_u[found][by_rank]
    first = np.searchsorted(rows, rows, side="left")
    ordinal = np.arange(1, len(rows) + 1, dtype=np.int64) - first
    return _Hits(
        universe=universe,
        t_rows=t_rows_u,
        t_codes=t_codes_u,
        rows=rows,
        cols=cols[found][by_rank],
        codes=t_codes_u[found][by_rank],
        ordinal=ordinal,
    )


def _validate_ks(ks: Sequence[int]) -> list[int]:
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"every k in ks must be a positive integer, got {k!r}")
        out.append(int(k))
    if not out:
        raise ValueError("ks is empty; pass at least one cutoff, e.g. ks=(10, 50)")
    return sorted(set(out))


def _coverage_at(retrieved: np.ndarray, ks: list[int]) -> list[int]:
    """Return, for each k, the number of distinct ids among all rows' first k columns."""
    valid = retrieved >= 0
    if not valid.any():
        return [0] * len(ks)
    hi = int(retrieved.max())
    if hi < _LOOKUP_TABLE_MAX_ID:
        codes, n_codes = retrieved, hi + 1  # index the seen-table by id directly
    else:
        uniq, inv = np.unique(retrieved[valid], return_inverse=True)
        codes = np.full(retrieved.shape, -1, dtype=np.int64)
        codes[valid] = inv.reshape(-1)
        n_codes = len(uniq)
    out = []
    for k in ks:
        # one extra slot: the -1 padding writes to it by Python's negative indexing
        seen = np.zeros(n_codes + 1, dtype=bool)
        seen[codes[:, :k]] = True
        out.append(int(seen[:-1].sum()))
    return out


def _bucket_label_codes(
    dim: str, mapping: Mapping[int, str], universe: np.ndarray, t_codes: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Return (label index per universe code, -1 when unlabeled; sorted label names)."""
    if not isinstance(mapping, Mapping) or len(mapping) == 0:
        raise ValueError(f"item_bucket[{dim!r}] must be a non-empty mapping item id -> bucket name")
    keys = np.fromiter(mapping.keys(), dtype=np.int64, count=len(mapping))
    names = np.asarray([str(v) for v in mapping.values()])
    labels, label_idx = np.unique(names, return_inverse=True)
    per_code = np.full(len(universe), -1, dtype=np.int64)
    if len(universe):
        at = np.minimum(np.searchsorted(universe, keys), len(universe) - 1)
        known = universe[at] == keys
        per_code[at[known]] = label_idx.reshape(-1)[known]
    missing = per_code[t_codes] < 0
    if missing.any():
        first = universe[t_codes[missing]][:5].tolist()
        raise ValueError(
            f"item_bucket[{dim!r}] has no bucket for target item ids {first} "
            f"({int(missing.sum())} target rows in all); build the buckets over the whole catalog"
        )
    return per_code, [str(x) for x in labels]


def retrieval_metrics(
    retrieved: np.ndarray,
    targets: Sequence[np.ndarray],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    catalog_size: int,
    item_bucket: Mapping[str, Mapping[int, str]] | None = None,
    query_group: Mapping[str, Sequence[str]] | None = None,
) -> Metrics:
    """Return recall/hitrate/ndcg/map/coverage at each k, overall, per item bucket and per
    group of queries.

    `retrieved` (Q, K) int64 holds each query's ranked item ids (-1 = padding, no duplicate
    ids per row); `targets[q]` holds the relevant ids of query q (duplicates are counted once).
    Keys: "recall@50", "hitrate@50", "ndcg@50", "map@50", "coverage@50", "n_queries",
    "n_queries_without_targets"; with `item_bucket` = {"popularity": {item: "head"|...}, ...}
    also "popularity.tail.recall@50", "popularity.tail.hitrate@50" and
    "popularity.tail.n_queries", where each query's targets are restricted to the bucket's items
    (queries with no target in the bucket are left out of that bucket's means).
    With `query_group` = {"history": [label of query 0, label of query 1, ...], ...} also
    "history.new.recall@50", "history.new.hitrate@50", "history.new.ndcg@50" and
    "history.new.n_queries": the means over the queries of each label (e.g. users served with
    and without a watch history), with their targets whole.
    A k larger than K cannot be evaluated: its metrics are None and the "note" key says why.
    A mean over zero queries is None.
    """
    ret = _as_id_matrix("retrieved", retrieved)
    _check_no_duplicates("retrieved", ret)
    ks_all = _validate_ks(ks)
    if (
        isinstance(catalog_size, bool)
        or not isinstance(catalog_size, int | np.integer)
        or catalog_size < 1
    ):
        raise ValueError(f"catalog_size must be a positive integer, got {catalog_size!r}")
    n_q, width = ret.shape
    t_rows, t_ids = _flatten_targets(targets, n_q)
    h = _find_hits(ret, t_rows, t_ids)
    n_rel = np.bincount(h.t_rows, minlength=n_q)  # (Q,) distinct targets per query
    has = n_rel > 0
    n_eval = int(has.sum())
    groups = _query_group_labels(query_group, n_q, item_bucket)

    ks_ok = [k for k in ks_all if k <= width]
    ks_bad = [k for k in ks_all if k > width]
    out: Metrics = {"n_queries": n_eval, "n_queries_without_targets": int(n_q - n_eval)}
    per_q: dict[str, np.ndarray] = {}  # (Qe,) per evaluated query, for the query groups

    def mean(x: np.ndarray) -> float | None:
        return float(x.mean()) if x.size else None

    def per_query(sel: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        # (Q,) sum over the selected hits of each query (their count without weights)
        w = None if weights is None else weights[sel]
        return np.bincount(h.rows[sel], weights=w, minlength=n_q)

    if ks_ok:
        kmax = ks_ok[-1]
        disc = 1.0 / np.log2(np.arange(2, kmax + 2, dtype=np.float64))  # (kmax,) 1/log2(r+1)
        disc_cum = np.cumsum(disc)
        hit_disc = disc[np.minimum(h.cols, kmax - 1)]  # (H,) only used where col < k
        hit_prec = h.ordinal / (h.cols + 1.0)  # (H,) precision at each hit's rank
        rel = n_rel[has]  # (Qe,)
        coverage = _coverage_at(ret, ks_ok)
        for j, k in enumerate(ks_ok):
            in_k = h.cols < k
            nh = per_query(in_k)[has]
            n_ideal = np.minimum(rel, k)
            per_q[f"recall@{k}"] = nh / rel
            per_q[f"hitrate@{k}"] = (nh > 0).astype(np.float64)
            per_q[f"ndcg@{k}"] = per_query(in_k, hit_disc)[has] / disc_cum[n_ideal - 1]
            out[f"recall@{k}"] = mean(per_q[f"recall@{k}"])
            out[f"hitrate@{k}"] = mean(per_q[f"hitrate@{k}"])
            out[f"ndcg@{k}"] = mean(per_q[f"ndcg@{k}"])
            out[f"map@{k}"] = mean(per_query(in_k, hit_prec)[has] / n_ideal)
            out[f"coverage@{k}"] = coverage[j] / catalog_size
    for k in ks_bad:
        for m in ("recall", "hitrate", "ndcg", "map", "coverage"):
            out[f"{m}@{k}"] = None
    if ks_bad:
        out["note"] = (
            f"k={', '.join(map(str, ks_bad))} exceeds the {width} items retrieved per query: "
            "those metrics are None; retrieve at least max(ks) candidates to report them"
        )

    for dim, mapping in (item_bucket or {}).items():
        if "." in str(dim):
            raise ValueError(f"bucket dimension names must not contain '.', got {dim!r}")
        per_code, labels = _bucket_label_codes(str(dim), mapping, h.universe, h.t_codes)
        t_label = per_code[h.t_codes]  # (T,)
        hit_label = per_code[h.codes]  # (H,)
        for b, name in enumerate(labels):
            n_rel_b = np.bincount(h.t_rows[t_label == b], minlength=n_q)
            has_b = n_rel_b > 0
            out[f"{dim}.{name}.n_queries"] = int(has_b.sum())
            for k in ks_ok:
                nh_b = per_query((h.cols < k) & (hit_label == b))[has_b]
                out[f"{dim}.{name}.recall@{k}"] = mean(nh_b / n_rel_b[has_b])
                out[f"{dim}.{name}.hitrate@{k}"] = mean((nh_b > 0).astype(np.float64))
            for k in ks_bad:
                out[f"{dim}.{name}.recall@{k}"] = None
                out[f"{dim}.{name}.hitrate@{k}"] = None
    for dim, labels in groups.items():
        lab = labels[has]
        for name in sorted(set(labels.tolist())):
            sel = lab == name
            out[f"{dim}.{name}.n_queries"] = int(sel.sum())
            for key, values in per_q.items():
                out[f"{dim}.{name}.{key}"] = mean(values[sel])
            for k in ks_bad:
                for m in ("recall", "hitrate", "ndcg"):
                    out[f"{dim}.{name}.{m}@{k}"] = None
    return out


def history_groups(histories: Sequence[np.ndarray]) -> np.ndarray:
    """Label each served user "new" (no watch before the serving time: a model that serves
    from the history serves them from nothing) or "returning" (`retrieval_metrics`'
    `query_group`)."""
    n = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    return np.where(n > 0, "returning", "new").astype(object)


# the name of `single_list_in_hindsight`'s row beside the baselines (an upper bound, not one)
HINDSIGHT = "hindsight_single_list"


def single_list_in_hindsight(targets: Sequence[np.ndarray]) -> np.ndarray:
    """Item ids ranked by Σ over queries of 1 / |targets of the query| (each query's distinct
    targets): the one list served to every query that maximises mean recall at every k (mean
    recall is a sum over the list's items of that weight), before per-query exclusions. It is
    chosen on the targets themselves: an upper bound for any list that does not depend on the
    user (popularity of any window, a new user's list), never a baseline. Ties: lower id first."""
    parts = [np.unique(np.asarray(t, dtype=np.int64)) for t in targets]
    parts = [t for t in parts if len(t)]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    ids = np.concatenate(parts)
    weight = np.concatenate([np.full(len(t), 1.0 / len(t)) for t in parts])
    uniq, inv = np.unique(ids, return_inverse=True)
    total = np.bincount(inv, weights=weight)
    return uniq[np.lexsort((uniq, -total))]


def _query_group_labels(
    query_group: Mapping[str, Sequence[str]] | None,
    n_queries: int,
    item_bucket: Mapping[str, Mapping[int, str]] | None,
) -> dict[str, np.ndarray]:
    """Check the query groups: one string label per query, names without '.', none shared
    with an item bucket dimension."""
    out: dict[str, np.ndarray] = {}
    for dim, labels in (query_group or {}).items():
        if "." in str(dim) or str(dim) in (item_bucket or {}):
            raise ValueError(
                f"query group names must not contain '.' nor repeat an item bucket name, got {dim!r}"
            )
        arr = np.asarray(labels, dtype=object)
        if arr.shape != (n_queries,):
            raise ValueError(
                f"query group {dim!r} needs one label per query ({n_queries}), got shape {arr.shape}"
            )
        bad = [x for x in arr.tolist() if not isinstance(x, str) or not x or "." in x]
        if bad:
            raise ValueError(
                f"query group {dim!r}: labels must be non-empty strings without '.', got {bad[0]!r}"
            )
        out[str(dim)] = arr
    return out


def _check_item_arrays(
    item_ids: np.ndarray, values: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(item_ids)
    vals = np.asarray(values)
    if ids.ndim != 1 or vals.shape != ids.shape:
        raise ValueError(
            f"item_ids and {what} must be 1-D arrays of the same length, got {ids.shape} and {vals.shape}"
        )
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"item_ids must be integer item ids, got dtype {ids.dtype}")
    if vals.size and not np.issubdtype(vals.dtype, np.number):
        raise TypeError(f"{what} must be numeric, got dtype {vals.dtype}")
    ids = ids.astype(np.int64, copy=False)
    uniq, cnt = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        raise ValueError(
            f"item_ids must be unique; item {int(uniq[cnt > 1][0])} occurs twice or more"
        )
    return ids, vals


def popularity_buckets(
    item_ids: np.ndarray,
    counts: np.ndarray,
    head_share: float = HEAD_SHARE,
    tail_share: float = TAIL_SHARE,
) -> dict[int, str]:
    """Return {item id: "head" | "torso" | "tail"} by rank of training watch count.

    Definition (by share of catalog items, the usual Pareto-style split): items are ranked by
    `counts` (training-window watches), most watched first, ties broken by ascending item id;
    the first floor(head_share · N) ranks are "head", the last floor(tail_share · N) ranks are
    "tail", the rest "torso". Every item with a zero count is "tail" whatever its rank (an item
    never watched in training is long-tail by any definition). Pass the whole catalog, so that
    target items with no training watch get a bucket too.
    """
    ids, c = _check_item_arrays(item_ids, counts, "counts")
    for name, share in (("head_share", head_share), ("tail_share", tail_share)):
        if not (isinstance(share, int | float) and 0.0 <= share <= 1.0):
            raise ValueError(f"{name} must be in [0, 1], got {share!r}")
    if head_share + tail_share > 1.0:
        raise ValueError(f"head_share + tail_share must be <= 1, got {head_share} + {tail_share}")
    c = c.astype(np.float64, copy=False)
    if (c < 0).any() or not np.isfinite(c).all():
        raise ValueError("counts must be finite and >= 0 (training watch counts per item)")
    n = ids.size
    order = np.lexsort((ids, -c))  # most watched first, then ascending id
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    n_head = math.floor(head_share * n + 1e-9)
    n_tail = math.floor(tail_share * n + 1e-9)
    label = np.full(n, "torso", dtype=object)
    label[rank < n_head] = "head"
    label[(rank >= n - n_tail) | (c == 0)] = "tail"
    return dict(zip(ids.tolist(), label.tolist(), strict=True))


def freshness_buckets(
    item_ids: np.ndarray,
    upload_time: np.ndarray,
    at_time: int,
    fresh_days: float = FRESH_DAYS,
) -> dict[int, str]:
    """Return {item id: "fresh" | "old"}: fresh when uploaded less than fresh_days before at_time.

    Age = at_time − upload_time (UTC seconds); "fresh" when age < fresh_days · 86400. Items
    uploaded after `at_time` (negative age, e.g. uploaded during the test window when at_time is
    the end of training) are "fresh".
    """
    ids, up = _check_item_arrays(item_ids, upload_time, "upload_time")
    if not (isinstance(fresh_days, int | float) and math.isfinite(fresh_days) and fresh_days > 0):
        raise ValueError(f"fresh_days must be a positive number, got {fresh_days!r}")
    if isinstance(at_time, bool) or not isinstance(at_time, int | np.integer | float):
        raise TypeError(f"at_time must be a UTC timestamp in seconds, got {at_time!r}")
    age = float(at_time) - up.astype(np.float64)
    label = np.where(age < fresh_days * 86400.0, "fresh", "old")
    return dict(zip(ids.tolist(), label.tolist(), strict=True))


def ann_recall(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Return the mean over queries of |approx top-k ∩ exact top-k| / |exact top-k|.

    Both are (Q, k) id arrays from the same queries (-1 = padding, ignored); queries whose
    exact row is all padding are left out.
    """
    a = _as_id_matrix("approx_ids", approx_ids)
    e = _as_id_matrix("exact_ids", exact_ids)
    if a.shape != e.shape:
        raise ValueError(
            f"approx_ids and exact_ids must have the same shape (Q, k), got {a.shape} and {e.shape}"
        )
    _check_no_duplicates("approx_ids", a)
    _check_no_duplicates("exact_ids", e)
    n_q = e.shape[0]
    e_valid = e >= 0
    e_rows = np.broadcast_to(np.arange(n_q, dtype=np.int64)[:, None], e.shape)[e_valid]
    h = _find_hits(a, e_rows, e[e_valid])
    n_rel = np.bincount(h.t_rows, minlength=n_q)
    has = n_rel > 0
    if not has.any():
        raise ValueError("exact_ids holds no item for any query (all -1); nothing to compare")
    found = np.bincount(h.rows, minlength=n_q)
    return float((found[has] / n_rel[has]).mean())
