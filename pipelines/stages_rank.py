"""Run stages after retrieval: ranker training, ranking evaluation, end-to-end slates, report.

See `pipelines.run` for the time protocol. Rankers compared side by side on the same rows:

    deep_weighted   DeepRanker, watch-time-weighted logistic regression (the system's ranker)
    deep_click      DeepRanker, every example weight 1 (click-only baseline)
    lgbm_weighted   LightGBM binary with the same weighting; expected watch time = exp(raw)
    lgbm_lambdarank LightGBM lambdarank with watch-time relevance
    popularity      item popularity so far
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec.evaluation.ranking import log_loss, ranking_metrics
from vidrec.evaluation.watch_time import (
    calibration_by_decile,
    calibration_summary,
    ground_truth_errors,
    watch_time_errors,
)
from vidrec.features.atomic import atomic_write_json
from vidrec.features.examples import UserHistory
from vidrec.features.ids import to_codes, to_data_ids
from vidrec.features.ranker_features import RankerFrame, build_ranker_frame
from vidrec.features.stats import CANDIDATES_PER_USER
from vidrec.pipelines import scoring
from vidrec.pipelines.config import ranker_config
from vidrec.pipelines.context import RunContext
from vidrec.pipelines.run import cg_model, heldout_users, load_json, save_frame
from vidrec.ranking.baselines import LightGBMLambdaRanker, LightGBMWeightedRanker, PopularityRanker
from vidrec.ranking.config import LightGBMConfig
from vidrec.ranking.train import TrainedRanker, fold_epochs, train_ranker

log = logging.getLogger("vidrec")

RANKERS: tuple[str, ...] = (
    "deep_weighted",
    "deep_click",
    "lgbm_weighted",
    "lgbm_lambdarank",
    "popularity",
)


_BASELINES = {
    "lgbm_weighted": lambda cfg, hl: LightGBMWeightedRanker(cfg, history_len=hl),
    "lgbm_lambdarank": lambda cfg, hl: LightGBMLambdaRanker(cfg, history_len=hl),
    "popularity": lambda cfg, hl: PopularityRanker(),
}



def ranker_time_windows(ctx: RunContext) -> tuple[int, ...]:
    """Windows (s) of the item time signals in the ranker's frames: those of the candidate
    generator that scores the ranker's training rows (fitted on its training window); () when
    features.time_signals is off."""
    if not ctx.config["features"].get("time_signals", False):
        return ()
    signals = cg_model(ctx).featurizer.item_signals_
    return () if signals is None else tuple(signals.windows)


def lgbm_config(config: dict[str, Any]) -> LightGBMConfig:
    c = dict(config["lightgbm"])
    c["vocab_top_n"] = c["vocab_top_n"] if c["vocab_top_n"] > 0 else None
    c["seed"] = int(config["seed"])
    c["weighting"] = config["ranking"]["weighting"]  # the same loss as the deep ranker
    return LightGBMConfig.from_dict(c)


def impression_frame(ctx: RunContext, lo: int, hi: int, max_rows: int = 0) -> RankerFrame:
    """Ranker rows for the impressions in [lo, hi), with out-of-sample CG scores and ranks."""
    ds = ctx.dataset()
    imp = ds.impressions
    if imp is None or len(imp) == 0:
        imp = candidate_impressions(ctx, lo, hi)
    t = imp["timestamp"].to_numpy()
    req = imp[(t >= lo) & (t < hi)].reset_index(drop=True)
    if max_rows and len(req) > max_rows:
        # whole pages, seeded: keep the impressions of a random subset of (user, time) pages
        pages = req.groupby(["user_id", "timestamp"]).ngroup().to_numpy()
        rng = np.random.default_rng(ctx.seed + 11)
        keep_pages = rng.permutation(pages.max() + 1)[
            : int(max_rows / max(len(req) / (pages.max() + 1), 1))
        ]
        req = req[np.isin(pages, keep_pages)].reset_index(drop=True)
    # the candidate generator that was out of sample at the window's start scores its rows
    req = scoring.add_cg_features(cg_model(ctx, lo), ds, req)
    return build_ranker_frame(
        ds,
        req,
        history_len=int(ctx.config["ranking"]["history_len"]),
        time_windows=ranker_time_windows(ctx),
    )


CANDIDATE_LABELS_NOTE = (
    "This data set has no impressions and no watch time: the ranker's rows are the candidate "
    "generator's top candidates for each user at the start of a window (history strictly before it, "
    "watched items excluded), labelled clicked when the user watched the item in that window, with "
    "unit weights (so the weighted and click-only rankers coincide and 'watch time' means watches)."
)


def has_logged_impressions(ctx: RunContext) -> bool:
    imp = ctx.dataset().impressions
    return imp is not None and len(imp) > 0


def candidate_impressions(
    ctx: RunContext, lo: int, hi: int, n: int = CANDIDATES_PER_USER
) -> pd.DataFrame:
    """Pseudo-impressions for data without logged ones (see CANDIDATE_LABELS_NOTE)."""
    from vidrec.candidate_gen.index import ExactIndex
    from vidrec.candidate_gen.retrieve import Retriever
    from vidrec.pipelines.run import serving_item_vectors

    ds = ctx.dataset()
    w = ds.watches
    t = w["timestamp"].to_numpy()
    inwin = w[(t >= lo) & (t < hi)]
    users = np.unique(inwin["user_id"].to_numpy())
    ids, vecs = serving_item_vectors(ctx, lo)
    cands = Retriever(cg_model(ctx, lo), ExactIndex(vecs, ids), ds).retrieve(
        users, n, at_time=lo, exclude_watched=True
    )
    watched = pd.MultiIndex.from_frame(inwin[["user_id", "item_id"]])
    clicked = pd.MultiIndex.from_frame(cands[["user_id", "item_id"]]).isin(watched).astype(np.int8)
    return pd.DataFrame(
        {
            "user_id": cands["user_id"].to_numpy(),
            "item_id": cands["item_id"].to_numpy(),
            "timestamp": np.full(len(cands), lo, dtype=np.int64),
            "clicked": clicked,
            "watch_time": clicked.astype(np.float64),
            "position": cands["rank"].to_numpy() - 1,
            "source": "candidate_gen",
        }
    )


def split_train_valid(
    frame: RankerFrame, cut: int, share: float, seed: int
) -> tuple[RankerFrame, RankerFrame]:
    """Hold out the latest rows (time >= cut); when every row has one timestamp (candidate
    pseudo-impressions) hold out a seeded share of users instead."""
    ts = frame.rows["timestamp"].to_numpy()
    if ts.min() == ts.max():
        users = frame.rows["user_id"].to_numpy()
        uniq = np.unique(users)
        held = np.random.default_rng(seed).choice(
            uniq, size=max(1, int(len(uniq) * share)), replace=False
        )
        is_valid = np.isin(users, held)
    else:
        is_valid = ts >= cut
    return frame.take(np.flatnonzero(~is_valid)), frame.take(np.flatnonzero(is_valid))


def stage_ranker(ctx: RunContext, out: Path) -> dict[str, Any]:
    split = ctx.split()
    lo, hi = split.bounds("valid")
    cut = hi - int((hi - lo) * float(ctx.config["split"]["ranker_valid_share"]))
    t0 = time.perf_counter()
    frame = impression_frame(ctx, lo, hi, int(ctx.config["ranking"]["max_train_rows"]))
    build_s = time.perf_counter() - t0
    train, valid = split_train_valid(
        frame, cut, float(ctx.config["split"]["ranker_valid_share"]), ctx.seed
    )
    log.info(
        "ranker: %d training rows, %d validation rows (features built in %.1f s)",
        len(train),
        len(valid),
        build_s,
    )
    info: dict[str, Any] = {
        "train_rows": len(train),
        "valid_rows": len(valid),
        "feature_seconds": round(build_s, 2),
    }
    folds = int(ctx.config["ranking"].get("epoch_folds", 0))
    for name, weighting in (("deep_weighted", None), ("deep_click", "click")):
        t1 = time.perf_counter()
        cfg = ranker_config(ctx.config, weighting, ranker_time_windows(ctx))
        if folds:
            epochs, curve = fold_epochs(cfg, train, folds)
            log.info(
                "ranker %s: %d epochs, the least validation loss averaged over %d folds of "
                "the training users (%.4f)",
                name,
                epochs,
                folds,
                curve[epochs - 1],
            )
            info[f"{name}_fold_epochs"] = epochs
            info[f"{name}_fold_valid_loss"] = [round(x, 6) for x in curve]
            cfg = dataclasses.replace(cfg, epochs=epochs)
        model = train_ranker(
            cfg,
            train,
            valid,
            checkpoint_dir=out / name / "checkpoints",
            progress=ctx.progress,
            select_on_valid=not folds,
        )
        model.save(out / name / "model")
        info[f"{name}_seconds"] = round(time.perf_counter() - t1, 2)
        atomic_write_json(out / name / "history.json", model.history)
        ctx.cache[name] = model
    lcfg = lgbm_config(ctx.config)
    hl = int(ctx.config["ranking"]["history_len"])
    for name, make in _BASELINES.items():
        t1 = time.perf_counter()
        m = make(lcfg, hl).fit(train, valid)
        m.save(out / name)
        ctx.cache[name] = m
        info[f"{name}_seconds"] = round(time.perf_counter() - t1, 2)
    return info


def rankers(ctx: RunContext) -> dict[str, Any]:
    """The trained rankers by name (loaded from the run directory when not cached)."""
    out = {}
    base = ctx.path / "ranker"
    for name in ("deep_weighted", "deep_click"):
        if name not in ctx.cache:
            ctx.cache[name] = TrainedRanker.load(base / name / "model")
        out[name] = ctx.cache[name]
    for name, make in _BASELINES.items():
        if name not in ctx.cache:
            ctx.cache[name] = type(make(LightGBMConfig(), 1)).load(base / name)
        out[name] = ctx.cache[name]
    return out


def score_all(models: dict[str, Any], frame: RankerFrame) -> dict[str, np.ndarray]:
    """Ranking score per model: exp(logit) for the deep and weighted LightGBM rankers (the
    expected watch time; click odds for deep_click), the model's own score otherwise."""
    scores = {}
    for name, m in models.items():
        if name in ("deep_weighted", "deep_click", "lgbm_weighted"):
            scores[name] = np.asarray(m.predict_expected_watch_time(frame), dtype=np.float64)
        else:
            scores[name] = np.asarray(m.predict_score(frame), dtype=np.float64)
    return scores


# the impressions a log shows at random (KuaiRand's random-exposure log): free of the logging
# policy's choices, so the rankers' metrics on them are the unbiased view
RANDOM_SOURCE = "random"


def slice_metrics(
    frame: RankerFrame,
    groups: np.ndarray,
    clicked: np.ndarray,
    watch: np.ndarray,
    scores: dict[str, np.ndarray],
    source: str,
) -> dict[str, Any]:
    """{"<source>_exposure": {"n_rows", "n_pages", "metrics": {model: ranking metrics}}} over
    the frame's rows of impression `source`, or {} when it has none."""
    if "source" not in frame.rows:
        return {}
    sel = np.flatnonzero(frame.rows["source"].to_numpy() == source)
    if not len(sel):
        return {}
    g = groups[sel]
    return {
        f"{source}_exposure": {
            "n_rows": int(len(sel)),
            "n_pages": int(np.unique(g).size),
            "metrics": {
                name: ranking_metrics(g, clicked[sel], watch[sel], s[sel])
                for name, s in scores.items()
            },
        }
    }


def stage_ranking_eval(ctx: RunContext, out: Path) -> dict[str, Any]:
    split = ctx.split()
    frame = impression_frame(
        ctx, *split.bounds("test"), int(ctx.config["ranking"]["max_eval_rows"])
    )
    clicked, watch = frame.labels()
    groups = frame.page_ids()
    models = rankers(ctx)
    t0 = time.perf_counter()
    scores = score_all(models, frame)
    score_s = time.perf_counter() - t0
    metrics: dict[str, Any] = {}
    for name, s in scores.items():
        m = ranking_metrics(groups, clicked, watch, s)
        if name in ("deep_click",):
            odds = s
            m["logloss"] = log_loss(clicked, odds / (1.0 + odds))
        metrics[name] = m
    # expected watch time: calibration by decile on held-out impressions (observed watch time,
    # 0 for unclicked) and, on the simulated world, against the ground truth
    calib: dict[str, Any] = {}
    tables = {}
    truth = None
    if ctx.is_synthetic:
        world = ctx.world()
        pos = frame.rows["position"].to_numpy() if "position" in frame.rows else None
        truth = world.expected_watch_time(
            frame.rows["user_id"].to_numpy(),
            frame.rows["item_id"].to_numpy(),
            frame.rows["timestamp"].to_numpy(),
            position=pos,
        )
    for name in ("deep_weighted", "lgbm_weighted"):
        pred = scores[name]
        table = calibration_by_decile(pred, watch)
        tables[name] = table
        save_frame(table, out / f"calibration_{name}.parquet")
        entry = {
            "observed": calibration_summary(pred, watch),
            "errors": watch_time_errors(pred, watch),
        }
        if truth is not None:
            entry["vs_ground_truth"] = ground_truth_errors(pred, truth)
            gt_table = calibration_by_decile(pred, truth)
            save_frame(gt_table, out / f"calibration_truth_{name}.parquet")
            entry["ground_truth_calibration"] = calibration_summary(pred, truth)
        calib[name] = entry
    result = {
        "labels": "logged impressions" if has_logged_impressions(ctx) else CANDIDATE_LABELS_NOTE,
        "metrics": metrics,
        **slice_metrics(frame, groups, clicked, watch, scores, RANDOM_SOURCE),
        "calibration": calib,
        "n_rows": int(len(frame)),
        "n_pages": int(groups.max() + 1) if len(groups) else 0,
        "window": list(split.bounds("test")),
        "scoring_rows_per_second": float(len(frame) * len(models) / max(score_s, 1e-9)),
    }
    atomic_write_json(out / "ranking.json", result)
    return {"n_rows": int(len(frame))}


def _bootstrap_mean(x: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    means = x[idx].mean(axis=1)
    return {
        "mean": float(x.mean()),
        "ci_low": float(np.percentile(means, 2.5)),
        "ci_high": float(np.percentile(means, 97.5)),
        "n_users": int(len(x)),
    }


def candidate_frame(
    ctx: RunContext,
    cands: pd.DataFrame,
    t_serve: int,
    cache: scoring.CatalogCache | None = None,
    history: UserHistory | None = None,
) -> tuple[pd.DataFrame, RankerFrame]:
    """Ranker rows for retrieved candidates at serving time; the CG score and catalog rank are
    computed exactly as for the training impressions (scoring.add_cg_features; a caller
    building several frames passes the item vectors' `cache` and the indexed `history`)."""
    ds = ctx.dataset()
    req = cands[["user_id", "item_id"]].copy()
    req["timestamp"] = np.int64(t_serve)
    req = scoring.add_cg_features(cg_model(ctx, t_serve), ds, req, cache, history)
    req["source"] = "candidate_gen"
    frame = build_ranker_frame(
        ds,
        req[["user_id", "item_id", "timestamp", "source", "cg_score", "cg_rank"]],
        history_len=int(ctx.config["ranking"]["history_len"]),
        time_windows=ranker_time_windows(ctx),
    )
    return req, frame


#: candidate rows (users x their candidates) scored at once by `ranked_slates`: the ranker
#: features of every held-out user's candidates at once (about 1.1 KB a row) set the peak
#: memory of a run; a chunk of this many rows takes ~150 MB
E2E_CHUNK_ROWS = 131_072


def ranked_slates(
    ctx: RunContext,
    cands: pd.DataFrame,
    users: np.ndarray,
    t_serve: int,
    k: int,
    chunk_rows: int = E2E_CHUNK_ROWS,
) -> dict[str, np.ndarray]:
    """Each ranker's top-k slate (U, k) of `users`' retrieved candidates, and the candidate
    generator's own ("candidate_gen_only"), scored a chunk of users at a time (at most about
    `chunk_rows` candidate rows, one user at least): every feature and score of a row depends
    only on its user, item and the serving time, so the slates equal those of one pass."""
    models = rankers(ctx)
    cache = scoring.CatalogCache()  # the catalog's item vectors, computed once for all chunks
    history = cg_model(ctx, t_serve).featurizer.index_history(ctx.dataset())  # logs sorted once
    pos = pd.Index(users).get_indexer(cands["user_id"].to_numpy())  # -1: not a held-out user
    held = np.flatnonzero(pos >= 0)
    per_user = int(np.bincount(pos[held]).max()) if len(held) else 1
    step = max(1, chunk_rows // per_user)
    # the rows grouped by chunk once (in their own order within a chunk), sliced per chunk
    n_chunks = -(-len(users) // step)
    chunk_of = pos[held] // step
    order = np.argsort(chunk_of, kind="stable")
    by_chunk = held[order]
    bounds = np.searchsorted(chunk_of[order], np.arange(n_chunks + 1))
    parts: dict[str, list[np.ndarray]] = {}
    names = (*models, "candidate_gen_only")
    for c in range(n_chunks):
        chunk = users[c * step : (c + 1) * step]
        rows = by_chunk[bounds[c] : bounds[c + 1]]
        if len(rows) == 0:  # no candidates for these users: empty slates (-1), nothing to score
            for name in names:
                parts.setdefault(name, []).append(np.full((len(chunk), k), -1, dtype=np.int64))
            continue
        req, frame = candidate_frame(ctx, cands.iloc[rows], t_serve, cache, history)
        scores = score_all(models, frame)
        scores["candidate_gen_only"] = req["cg_score"].to_numpy(dtype=np.float64)
        for name, score in scores.items():
            parts.setdefault(name, []).append(
                scoring.top_k_per_user(
                    req["user_id"].to_numpy(), req["item_id"].to_numpy(), score, chunk, k
                )
            )
        del req, frame, scores
    if not parts:  # no held-out user: empty slates of every ranker
        return {n: np.zeros((0, k), dtype=np.int64) for n in names}
    return {name: np.concatenate(p) for name, p in parts.items()}


def stage_end_to_end(ctx: RunContext, out: Path) -> dict[str, Any]:
    ds, split = ctx.dataset(), ctx.split()
    k = int(ctx.config["evaluation"]["slate_k"])
    t_serve = split.valid_end
    cands = to_codes(
        ds.ids,
        pd.read_parquet(ctx.path / "retrieval" / "candidates.parquet"),
        "retrieval/candidates.parquet",
    )
    users = heldout_users(ctx)
    slates = ranked_slates(ctx, cands, users, t_serve, k)
    del cands
    # the retrieval baselines' own top k (tuned in the retrieval stage; same users, exclusions)
    baseline_npz = ctx.path / "retrieval" / "baseline_slates.npz"
    if baseline_npz.exists():
        with np.load(baseline_npz, allow_pickle=False) as z:
            if np.array_equal(z["users"], users):
                slates.update(
                    {n: z[n][:, :k] for n in z.files if n != "users" and z[n].shape[1] >= k}
                )
            else:
                log.warning("%s holds other users than the held-out ones; not used", baseline_npz)
    next_watches = split.slice(ds.watches, "test")
    result: dict[str, Any] = {
        "k": k,
        "served_at": int(t_serve),
        "n_users": int(len(users)),
        "slates": {},
    }
    n_boot = int(ctx.config["evaluation"]["bootstrap"])
    world = ctx.world() if ctx.is_synthetic else None
    if world is not None:
        rng = np.random.default_rng(ctx.seed + 23)
        slates["random"] = world.random_slates(users, t_serve, k, rng)
        slates["most_popular"] = world.most_popular_slates(users, t_serve, k)
        slates["logging_policy"] = world.logging_policy_slates(users, t_serve, k, rng)
        slates["oracle"] = world.oracle_slates(users, t_serve, k)
    for name, sl in slates.items():
        entry = scoring.slate_offline_metrics(users, sl, next_watches)
        if world is not None:
            per_user = world.slate_expected_watch_time(users, sl, t_serve)
            entry["true_expected_watch_time"] = _bootstrap_mean(per_user, n_boot, ctx.seed + 31)
        result["slates"][name] = entry
    if world is not None:
        oracle = result["slates"]["oracle"]["true_expected_watch_time"]["mean"]
        for entry in result["slates"].values():
            entry["fraction_of_oracle"] = entry["true_expected_watch_time"]["mean"] / max(
                oracle, 1e-12
            )
    atomic_write_json(out / "end_to_end.json", result)
    slate_rows = pd.DataFrame(
        {
            "user_id": np.repeat(users, k),
            "rank": np.tile(np.arange(1, k + 1), len(users)),
            "item_id": slates["deep_weighted"].ravel(),
        }
    )
    if ds.ids is not None and ds.ids.is_string("item"):  # a short slate's padding: no item
        slate_rows = slate_rows[slate_rows["item_id"].to_numpy() >= 0].reset_index(drop=True)
    save_frame(to_data_ids(ds.ids, slate_rows), out / "slates.parquet")
    return {"n_users": int(len(users))}


def stage_report(ctx: RunContext, out: Path) -> dict[str, Any]:
    from vidrec.pipelines.report import build_report

    build_report(ctx)
    return {}


def read_stage_json(ctx: RunContext, stage: str, name: str) -> Any:
    return load_json(ctx.path / stage / name)
