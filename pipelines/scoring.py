"""Glue between the stages: candidate-generator features for ranker requests, slates, slate metrics.

Lives in `pipelines` because it joins packages that must not import each other: the ranker's
"candidate generator score and rank" feature needs the candidate generator's towers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from candidate_gen.train import TrainedCandidateGenerator
from features.examples import UserHistory
from features.tables import Dataset

_DAY = 86_400
_SCORE_ELEMENTS = 1 << 25  # scores held at once per block (128 MB of float32)


def add_cg_features(
    model: TrainedCandidateGenerator,
    ds: Dataset,
    requests: pd.DataFrame,
    item_vector_cache: dict[int, torch.Tensor] | None = None,
    history: UserHistory | None = None,
    exact_time: bool = False,
) -> pd.DataFrame:
    """`requests` plus `cg_score` (u·v at the request time) and `cg_rank` (1 + number of items
    servable at that time that the candidate generator scores higher, over the whole catalog).

    The rank is over the catalog, not within the page, so that a logged slate of 10 and a
    serving request of 500 candidates give the feature the same meaning. User vectors are
    computed once per page (user, timestamp) from history strictly before it (example age 0,
    as at serving); item vectors once per day of requests (upload ages at that day's start).
    A caller serving many requests from one fixed `ds` passes `item_vector_cache` (a dict it
    keeps): the item tower then runs once per day, not once per call; and `history`, the
    featurizer's `index_history(ds)` built once, so the logs are not re-sorted and re-tokenized
    per call. Item vectors take their upload ages at the start of the request's day (training
    rows span many times); `exact_time=True` takes them at the request's own time instead, as
    the serving index does (serving: one time for every request, so one item-tower pass).

    The rank counts only items scored at least the page's lowest row score (every item scored
    higher than a row is among them), found with a partial top-k; a page whose rows sit deep in
    the catalog falls back to a full sort. Both give the same integers.
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
    item_row = pd.Index(catalog_ids).get_indexer(req["item_id"].to_numpy())
    score = np.empty(len(req), dtype=np.float64)
    rank = np.empty(len(req), dtype=np.float64)
    page_time = pages["timestamp"].to_numpy()
    day = page_time if exact_time else (page_time // _DAY) * _DAY  # item vectors' reference
    rows_by_page = np.argsort(page_of_row, kind="stable")
    page_start = np.searchsorted(page_of_row[rows_by_page], np.arange(len(pages) + 1))
    page_t = pages["timestamp"].to_numpy()
    upload_t = torch.from_numpy(np.ascontiguousarray(upload, dtype=np.int64).copy())
    n_rows_page = np.diff(page_start)
    for d in np.unique(day):  # one item-vector pass per day of requests (a handful)
        iv = item_vector_cache.get(int(d)) if item_vector_cache is not None else None
        if iv is None:
            items = model.featurizer.item_features(ds, reference_time=int(d))
            _, item_vecs = model.item_embeddings(items)
            iv = torch.from_numpy(item_vecs)
            if item_vector_cache is not None:
                item_vector_cache[int(d)] = iv
        n_items = iv.shape[0]
        pidx = np.flatnonzero(day == d)
        chunk = max(1, _SCORE_ELEMENTS // max(len(catalog_ids), 1))  # bounds the (C, N) block
        for lo in range(0, len(pidx), chunk):
            pc = pidx[lo : lo + chunk]
            scores = torch.from_numpy(user_vecs[pc]) @ iv.T  # (C, N)
            servable = upload_t[None, :] <= torch.from_numpy(page_t[pc])[:, None]  # (C, N)
            masked = scores.masked_fill(~servable, -torch.inf)  # (C, N)
            # the pages' rows as a padded (C, M) block: row j of page c at [c, j]
            counts = n_rows_page[pc]
            local = np.repeat(np.arange(len(pc)), counts)
            within = np.arange(len(local)) - np.repeat(np.cumsum(counts) - counts, counts)
            rows = rows_by_page[np.repeat(page_start[pc], counts) + within]
            s_rows = scores[torch.from_numpy(local), torch.from_numpy(item_row[rows])]  # (R,)
            block = torch.full((len(pc), int(counts.max())), torch.inf)
            block[torch.from_numpy(local), torch.from_numpy(within)] = s_rows
            # items scored strictly higher than a row all score >= the page's lowest row
            floor = block.min(dim=1, keepdim=True).values  # (C, 1)
            k_sel = int((masked >= floor).sum(dim=1).max())
            if k_sel <= n_items // 4:  # partial: the k_sel best per page, ascending
                ordered = torch.topk(masked, max(k_sel, 1), dim=1).values.flip(1)  # (C, k)
            else:
                ordered = torch.sort(masked, dim=1).values  # (C, N)
            # scored strictly higher = listed - (listed scored <= s); items left out of a partial
            # list all score below the page floor, so they are never higher than a row
            higher = ordered.shape[1] - torch.searchsorted(ordered, block, right=True)  # (C, M)
            score[rows] = s_rows.double().numpy()
            rank[rows] = (
                1 + higher[torch.from_numpy(local), torch.from_numpy(within)].double().numpy()
            )
    req["cg_score"] = score
    req["cg_rank"] = rank
    return req


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
