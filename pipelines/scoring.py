"""Glue between the stages: candidate-generator features for ranker requests, slates, slate metrics.

Lives in `pipelines` because it joins packages that must not import each other: the ranker's
"candidate generator score and rank" feature needs the candidate generator's towers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from vidrec.candidate_gen.train import TrainedCandidateGenerator
from vidrec.features.examples import UserHistory
from vidrec.features.tables import Dataset

_DAY = 86_400
_SCORE_ELEMENTS = 1 << 25  # scores held at once per block (128 MB of float32)
_DIRECT_COUNT_MAX = 32  # pages with at most this many rows count per row, not by sorting


class CatalogCache:
    """What `add_cg_features` reuses across calls over one fixed dataset: the catalog's upload
    order and item-id index (each costs tens of ms to rebuild at 1M items) and each day's item
    vectors in that order (`vectors`: day start or request time -> (N, E) tensor)."""

    def __init__(self) -> None:
        self.order: np.ndarray | None = None  # (N,) catalog rows by upload time
        self.slot = np.zeros(0, dtype=np.int64)  # (N,) catalog row -> position in that order
        self.upload_sorted = np.zeros(0, dtype=np.int64)  # (N,) upload times in that order
        self.ids = pd.Index([], dtype=np.int64)  # the catalog's item ids, hashed once
        self.vectors: dict[int, torch.Tensor] = {}


def add_cg_features(
    model: TrainedCandidateGenerator,
    ds: Dataset,
    requests: pd.DataFrame,
    item_vector_cache: CatalogCache | None = None,
    history: UserHistory | None = None,
    exact_time: bool = False,
) -> pd.DataFrame:
    """`requests` plus `cg_score` (u·v at the request time) and `cg_rank` (1 + number of items
    servable at that time that the candidate generator scores higher, over the whole catalog).

    The rank is over the catalog, not within the page, so that a logged slate of 10 and a
    serving request of 500 candidates give the feature the same meaning. User vectors are
    computed once per page (user, timestamp) from history strictly before it (example age 0,
    as at serving); item vectors once per day of requests (upload ages at that day's start).
    A caller serving many requests from one fixed `ds` passes `item_vector_cache` (a
    `CatalogCache` it keeps): the catalog is sorted once and the item tower runs once per day,
    not once per call; and `history`, the
    featurizer's `index_history(ds)` built once, so the logs are not re-sorted and re-tokenized
    per call. Item vectors take their upload ages at the start of the request's day (training
    rows span many times); `exact_time=True` takes them at the request's own time instead, as
    the serving index does (serving: one time for every request, so one item-tower pass).

    The rank is counted, not sorted (`_count_higher`): per page, one pass over the scores of
    the items servable at its time (a prefix of the catalog in upload order, so nothing is
    masked) keeps those above the page's lowest row, which are then counted against each row.
    A full sort per page made the 1M-item `large` preset's ranker stage run for hours.
    """
    req = requests.reset_index(drop=True).copy()
    if len(req) == 0:
        req["cg_score"] = np.zeros(0)
        req["cg_rank"] = np.zeros(0)
        return req
    pages = req[["user_id", "timestamp"]].drop_duplicates().reset_index(drop=True)
    page_of_row = pd.MultiIndex.from_frame(pages).get_indexer(
        pd.MultiIndex.from_frame(req[["user_id", "timestamp"]])
    )
    feats = model.featurizer.serving(
        history if history is not None else ds,
        pages["user_id"].to_numpy(),
        pages["timestamp"].to_numpy(),
    )
    user_vecs = model.user_embeddings(feats, example_age=0.0)  # (P, E)
    upload = ds.items["upload_time"].to_numpy()
    catalog_ids = ds.items["item_id"].to_numpy()
    # the catalog in upload order: the items servable at time t are a prefix of it
    cache = item_vector_cache if item_vector_cache is not None else CatalogCache()
    if cache.order is None or len(cache.order) != len(upload):
        cache.order = np.argsort(upload, kind="stable")
        cache.upload_sorted = upload[cache.order]
        cache.slot = np.empty(len(upload), dtype=np.int64)
        cache.slot[cache.order] = np.arange(len(upload))
        cache.ids = pd.Index(catalog_ids)
    by_upload, upload_sorted, slot = cache.order, cache.upload_sorted, cache.slot
    item_row = cache.ids.get_indexer(req["item_id"].to_numpy())
    if (item_row < 0).any():
        bad = np.flatnonzero(item_row < 0)
        raise ValueError(
            f"add_cg_features: {len(bad)} request row(s) name items not in the catalog "
            f"(dataset items table), e.g. rows {bad[:5].tolist()} with item_id "
            f"{req['item_id'].to_numpy()[bad[:5]].tolist()}"
        )
    row_slot = slot[item_row]  # (R,) the row's item's position in upload order
    score = np.empty(len(req), dtype=np.float64)
    rank = np.empty(len(req), dtype=np.float64)
    page_time = pages["timestamp"].to_numpy()
    n_servable = np.searchsorted(upload_sorted, page_time, side="right")  # (P,)
    day = page_time if exact_time else (page_time // _DAY) * _DAY  # item vectors' reference
    rows_by_page = np.argsort(page_of_row, kind="stable")
    page_start = np.searchsorted(page_of_row[rows_by_page], np.arange(len(pages) + 1))
    for d in np.unique(day):  # one item-vector pass per day of requests (a handful)
        iv = cache.vectors.get(int(d))
        if iv is None:  # kept in upload order, so a page scores a prefix
            items = model.featurizer.item_features(ds, reference_time=int(d))
            _, item_vecs = model.item_embeddings(items)
            iv = torch.from_numpy(np.ascontiguousarray(item_vecs[by_upload]))
            cache.vectors[int(d)] = iv
        pidx = np.flatnonzero(day == d)
        chunk = max(1, _SCORE_ELEMENTS // max(len(catalog_ids), 1))  # bounds the (C, N) block
        for lo in range(0, len(pidx), chunk):
            pc = pidx[lo : lo + chunk]
            rows_of = [rows_by_page[page_start[p] : page_start[p + 1]] for p in pc]
            # columns: every item servable to a page of the block, and every row's own item
            # (a request may name an item not yet uploaded: it is scored, never counted)
            n_cols = max(
                int(n_servable[pc].max()), int(row_slot[np.concatenate(rows_of)].max()) + 1
            )
            scores = torch.from_numpy(user_vecs[pc]) @ iv[:n_cols].T  # (C, n_cols)
            scores = scores.numpy()
            for c, rows in enumerate(rows_of):
                s_rows = scores[c, row_slot[rows]]  # (M,) the GEMM's own values
                score[rows] = s_rows
                rank[rows] = 1 + _count_higher(scores[c, : n_servable[pc[c]]], s_rows)
    req["cg_score"] = score
    req["cg_rank"] = rank
    return req


def _count_higher(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(M,) int64: for each threshold, how many of `scores` (N,) are strictly greater.

    Only the K scores above the lowest threshold can count: one compress pass picks them, then
    each threshold counts them directly (few thresholds: a logged page) or binary-searches them
    sorted (many: a page of serving candidates)."""
    cand = np.compress(scores > thresholds.min(), scores)  # (K,)
    if len(thresholds) <= _DIRECT_COUNT_MAX:
        return np.array([np.count_nonzero(cand > t) for t in thresholds], dtype=np.int64)
    cand.sort()
    return len(cand) - np.searchsorted(cand, thresholds, side="right")


def top_k_per_user(
    user_ids: np.ndarray, item_ids: np.ndarray, scores: np.ndarray, users: np.ndarray, k: int
) -> np.ndarray:
    """(U, k) item ids of the k highest-scoring rows per user, in `users` order (-1 padded)."""
    df = pd.DataFrame({"u": user_ids, "i": item_ids, "s": scores})
    df = df.sort_values(["u", "s"], ascending=[True, False], kind="stable")
    df["r"] = df.groupby("u").cumcount()
    df = df[df["r"] < k]
    out = np.full((len(users), k), -1, dtype=np.int64)
    pos = pd.Index(users).get_indexer(df["u"].to_numpy())
    ok = pos >= 0
    out[pos[ok], df["r"].to_numpy()[ok]] = df["i"].to_numpy()[ok]
    return out


def slate_offline_metrics(
    users: np.ndarray, slates: np.ndarray, next_watches: pd.DataFrame
) -> dict[str, float]:
    """Offline metrics of (U, k) slates against what each user watched next.

    `next_watches` holds the test window's watches (user_id, item_id[, watch_time]). Recall@k
    and HitRate@k count distinct watched items; NDCG@k uses the user's total watch time of an
    item as its gain (1 per watch when there is no watch time), the ideal being the user's own
    most-watched items; users who watched nothing next are left out of every mean.
    """
    k = slates.shape[1]
    nw = next_watches[next_watches["user_id"].isin(users)]
    gain_col = nw["watch_time"] if "watch_time" in nw else pd.Series(1.0, index=nw.index)
    gains = gain_col.groupby([nw["user_id"].to_numpy(), nw["item_id"].to_numpy()]).sum()
    gains.index = gains.index.set_names(["user_id", "item_id"])
    g = gains.rename("gain").reset_index()
    upos = pd.Index(users).get_indexer(g["user_id"].to_numpy())
    n_targets = np.bincount(upos, minlength=len(users))
    has = n_targets > 0
    slot_keys = pd.MultiIndex.from_arrays([np.repeat(users, k), slates.ravel()])
    slot_gain = gains.reindex(slot_keys).to_numpy().reshape(len(users), k)
    hit = ~np.isnan(slot_gain)
    slot_gain = np.nan_to_num(slot_gain)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (slot_gain * disc).sum(axis=1)
    # ideal DCG: each user's k largest gains in decreasing order
    g = g.assign(u=upos).sort_values(["u", "gain"], ascending=[True, False])
    g["r"] = g.groupby("u").cumcount()
    g = g[g["r"] < k]
    ideal = np.zeros((len(users), k))
    ideal[g["u"].to_numpy(), g["r"].to_numpy()] = g["gain"].to_numpy()
    idcg = (ideal * disc).sum(axis=1)
    ok = has & (idcg > 0)
    recall = hit.sum(axis=1)[has] / n_targets[has]
    return {
        f"recall@{k}": float(recall.mean()) if has.any() else float("nan"),
        f"hitrate@{k}": float(hit.any(axis=1)[has].mean()) if has.any() else float("nan"),
        f"ndcg_watch_time@{k}": float((dcg[ok] / idcg[ok]).mean()) if ok.any() else float("nan"),
        "distinct_items": int(len(np.unique(slates[slates >= 0]))),
        "users_with_next_watches": int(has.sum()),
    }
