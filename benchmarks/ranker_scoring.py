"""Deep ranker scoring: rows per second in batch vs per-user latency to rank 500.

Setting: a synthetic contract Dataset (benchmarks/synthetic.py), a `RankerFeatureIndex` built
once (as serving does), and a `TrainedRanker` with the `default` preset's ranking settings
trained for 1 epoch on the earlier 80% of the impressions.

Figures, measured in one run:
- batch: `TrainedRanker.predict_logit` over a prebuilt frame of the held-out impressions (rows
  scored per second), the frame build alone (`build_ranker_frame`) and both together;
- per user: `score_items` for one user's 500 candidates (frame build + score) plus the sort,
  as serving calls it: latency p50/p99 over many users, and its pieces (build, score);
- batched users: the same users' 500 candidates in one frame (build + score + per-user sort).
References: per-user throughput (500 / p50) against the batch throughput, and the per-user p99
against the 20 ms serving budget (which also covers retrieval).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.common import (
    Column,
    PhasePeak,
    check_repeats,
    median,
    pct,
    per_call_ms,
    ratio,
    result,
    time_repeats,
    tracemalloc_peak_mb,
)
from benchmarks.synthetic import DAY, T0, synthetic_dataset
from vidrec.features.ranker_features import RankerFeatureIndex, build_ranker_frame
from vidrec.pipelines.config import load_preset
from vidrec.ranking.config import RankerConfig
from vidrec.ranking.train import train_ranker

NAME = "ranker_scoring"
SERVING_BUDGET_MS = 20.0  # target: p99 per user for retrieve-500 + rank

COLUMNS = (
    Column("what", "measure", "{}"),
    Column("value", "figure", "{:,.4g}"),
    Column("unit", "unit", "{}"),
    Column("p50", "p50", "{:.2f}"),
    Column("p99", "p99", "{:.2f}"),
    Column("vs", "reference", "{}"),
    Column("ratio", "ratio", "{:.3g}"),
)


def sizes(quick: bool) -> dict[str, Any]:
    """Return the data sizes (quick: a few seconds)."""
    if quick:
        return {
            "users": 100,
            "items": 500,
            "watches": 2_000,
            "impressions": 2_000,
            "searches": 200,
            "candidates": 50,
            "serving_users": 5,
            "days": 10,
        }
    return {
        "users": 5_000,
        "items": 50_000,
        "watches": 400_000,
        "impressions": 250_000,
        "searches": 20_000,
        "candidates": 500,
        "serving_users": 200,
        "days": 30,
    }


def ranker_config(quick: bool, seed: int) -> RankerConfig:
    """Return the `default` preset's ranker settings, 1 epoch on CPU (quick: a small tower)."""
    section = dict(load_preset("default")["ranking"])
    fields = set(RankerConfig.__dataclass_fields__)
    c = {k: v for k, v in section.items() if k in fields}
    c["hidden"] = tuple(c.get("hidden", ()))
    if c.get("vocab_top_n", 0) <= 0:
        c["vocab_top_n"] = None
    # trained without a validation frame here, so without the calibrator (fitted on one); its
    # serving cost is one np.interp over the scored rows
    c.update(epochs=1, device="cpu", seed=seed, calibrate=False)
    if quick:
        c.update(hidden=(32,), n_quantiles=50)
    return RankerConfig.from_dict(c)


def _requests(imps: pd.DataFrame, labelled: bool) -> pd.DataFrame:
    cols = ["user_id", "item_id", "timestamp", "source"]
    if labelled:
        cols += ["clicked", "watch_time"]
    return imps[cols].reset_index(drop=True)


def run(*, quick: bool = False, repeats: int = 5, seed: int = 0, **_: Any) -> dict[str, Any]:
    """Return the ranker scoring benchmark's result (table printed)."""
    repeats = check_repeats(repeats, quick)
    cfg = sizes(quick)
    ds = synthetic_dataset(
        n_users=cfg["users"],
        n_items=cfg["items"],
        n_watches=cfg["watches"],
        n_impressions=cfg["impressions"],
        n_searches=cfg["searches"],
        days=cfg["days"],
        seed=seed,
    )
    cut = T0 + int(0.8 * cfg["days"] * DAY)
    if ds.impressions is None:
        raise RuntimeError("synthetic_dataset made no impressions table; the benchmark needs one")
    imps = ds.impressions.sort_values("timestamp", kind="stable")
    train_imps = imps[imps["timestamp"] < cut]
    eval_imps = imps[imps["timestamp"] >= cut]
    config = ranker_config(quick, seed)

    index = RankerFeatureIndex(ds)  # built once, as serving does
    train_frame = build_ranker_frame(
        index, _requests(train_imps, True), history_len=config.history_len
    )
    ranker = train_ranker(config, train_frame, None, progress=False)
    rows: list[dict[str, Any]] = []
    train_s = ranker.history[0].get("train_seconds") if ranker.history else None
    del train_frame

    # ---- batch: frame build, scoring, both
    req = _requests(eval_imps, False)
    n_rows = len(req)
    frame = build_ranker_frame(index, req, history_len=config.history_len)
    t_build = time_repeats(
        lambda: build_ranker_frame(index, req, history_len=config.history_len), repeats
    )
    t_score = time_repeats(lambda: ranker.predict_logit(frame), repeats)
    with PhasePeak() as score_peak:
        ranker.predict_logit(frame)
    batch_score = n_rows / median(t_score)
    batch_build = n_rows / median(t_build)
    batch_both = n_rows / (median(t_build) + median(t_score))
    rows += [
        {
            "what": f"batch scoring ({n_rows:,} rows, prebuilt frame)",
            "value": batch_score,
            "unit": "rows/s",
        },
        {"what": "batch frame build", "value": batch_build, "unit": "rows/s"},
        {"what": "batch build + score", "value": batch_both, "unit": "rows/s"},
    ]

    # ---- per user: score_items (build + score) + sort, one user at a time
    rng = np.random.default_rng(seed)
    n_c = cfg["candidates"]
    users = rng.choice(ds.users["user_id"].to_numpy(), size=cfg["serving_users"], replace=False)
    item_ids = ds.items["item_id"].to_numpy()
    cands = np.stack([rng.choice(item_ids, size=n_c, replace=False) for _ in users])  # (U, C)
    cg_scores = np.sort(rng.normal(size=(len(users), n_c)), axis=1)[:, ::-1].copy()  # best first
    cg_ranks = np.broadcast_to(np.arange(1, n_c + 1, dtype=np.float64), cands.shape)
    t_serve = T0 + cfg["days"] * DAY

    def rank_user(i: int) -> np.ndarray:
        scored = ranker.score_items(
            index,
            int(users[i]),
            cands[i],
            t_serve,
            cg_scores=cg_scores[i],
            cg_ranks=cg_ranks[i],
            source="ann",
        )
        order = np.argsort(-scored["expected_watch_time"].to_numpy(), kind="stable")
        return scored["item_id"].to_numpy()[order]

    def user_request(i: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "user_id": np.full(n_c, users[i], dtype=np.int64),
                "item_id": cands[i],
                "timestamp": np.full(n_c, t_serve, dtype=np.int64),
                "cg_score": cg_scores[i],
                "cg_rank": cg_ranks[i],
                "source": "ann",
            }
        )

    requests = [user_request(i) for i in range(len(users))]
    frames = [build_ranker_frame(index, r, history_len=config.history_len) for r in requests]
    lat = per_call_ms(rank_user, len(users))
    lat_build = per_call_ms(
        lambda i: build_ranker_frame(index, requests[i], history_len=config.history_len), len(users)
    )
    lat_score = per_call_ms(lambda i: ranker.predict_logit(frames[i]), len(users))
    per_user_rows_s = n_c / (median(lat) / 1e3)
    user_py_peak = tracemalloc_peak_mb(lambda: rank_user(0))
    rows += [
        {
            "what": f"per user: rank {n_c} (build + score + sort)",
            "value": per_user_rows_s,
            "unit": "rows/s",
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "vs": "batch scoring rows/s",
            "ratio": ratio(per_user_rows_s, batch_score),
        },
        {
            "what": "per user: p99 latency vs 20 ms budget",
            "value": pct(lat, 99),
            "unit": "ms",
            "vs": f"{SERVING_BUDGET_MS:g} ms",
            "ratio": pct(lat, 99) / SERVING_BUDGET_MS,
        },
        {
            "what": "per user: frame build only",
            "value": median(lat_build),
            "unit": "ms",
            "p50": pct(lat_build, 50),
            "p99": pct(lat_build, 99),
        },
        {
            "what": "per user: scoring only",
            "value": median(lat_score),
            "unit": "ms",
            "p50": pct(lat_score, 50),
            "p99": pct(lat_score, 99),
        },
    ]

    # ---- the same users batched into one frame: build + score + per-user sort
    all_req = pd.concat(requests, ignore_index=True)

    def rank_batched() -> np.ndarray:
        fr = build_ranker_frame(index, all_req, history_len=config.history_len)
        ewt = np.exp(ranker.predict_logit(fr)).reshape(len(users), n_c)  # (U, C)
        order = np.argsort(-ewt, axis=1, kind="stable")
        return np.take_along_axis(cands, order, axis=1)

    t_batched = time_repeats(rank_batched, repeats)
    batched_ms_per_user = median(t_batched) * 1e3 / len(users)
    rows.append(
        {
            "what": f"{len(users)} users batched: build + score + sort",
            "value": len(users) * n_c / median(t_batched),
            "unit": "rows/s",
            "p50": batched_ms_per_user,
            "vs": "per-user p50 ms",
            "ratio": ratio(batched_ms_per_user, pct(lat, 50)),
        }
    )
    if train_s:
        rows.append(
            {
                "what": "training, 1 epoch (rows/s)",
                "value": len(train_imps) / train_s,
                "unit": "rows/s",
            }
        )
    headline = {
        "what": f"per-user throughput (rank {n_c}: build + score + sort) vs batch scoring throughput",
        "figure": per_user_rows_s,
        "reference": batch_score,
        "ratio": ratio(per_user_rows_s, batch_score),
        "unit": "rows/s",
        "per_user_p50_ms": pct(lat, 50),
        "per_user_p99_ms": pct(lat, 99),
        "batch_rows_per_s": batch_score,
    }
    notes = [
        f"ranker: default preset (hidden {list(config.hidden)}, history {config.history_len}), "
        f"1 epoch on {len(train_imps):,} impressions; {torch.get_num_threads()} torch threads",
        f"data: {cfg['users']:,} users, {cfg['items']:,} items, {cfg['watches']:,} watches, "
        f"{cfg['impressions']:,} impressions (synthetic, benchmarks/synthetic.py)",
        f"batch: medians of {repeats} repeats; per user: p50/p99 over {len(users)} users "
        "(one call each, after 3 warm-up calls), RankerFeatureIndex built once",
        "p50 column of the batched row = ms per user (batch wall / users)",
    ]
    return result(
        NAME,
        "deep ranker scoring: batch vs per user",
        rows,
        COLUMNS,
        headline=headline,
        repeats=repeats,
        notes=notes,
        memory={
            "batch_scoring_peak_mb": score_peak.peak_mb,
            "per_user_tracemalloc_peak_mb": user_py_peak,
        },
        params={**cfg, "seed": seed, "ranker": config.to_dict()},
    )
