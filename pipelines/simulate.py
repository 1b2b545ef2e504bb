"""Closed-loop simulated A/B: recommenders serve slates to simulated users for several days.

Each arm is a policy `(user_ids, t) -> (U, k) slates` built from a finished run directory
(`system` = CG -> deep weighted ranker, `click_only`, `cg_only`, `lgbm_weighted`) or from the
world itself (`most_popular`, `logging_policy`, `random`, `oracle`). Every day of the
experiment:

1. the world draws who visits and when (the same visitors for every arm: common random
   numbers, so differences between arms are not visitor noise);
2. each arm serves each visit a top-k slate from that user's history *in the arm's own logs*
   strictly before the visit;
3. the world samples clicks and watch times from its ground truth, with the same random draws
   for every arm;
4. the responses are appended to the arm's own logs (clicked impressions also become watches),
   so tomorrow's features see what this arm caused; with `retrain`, the arm's rankers are
   re-fitted each night on the impressions its own logs hold.

Per arm: watch time per user, CTR, share of fresh items (uploaded < 7 days before the visit)
in the slates, catalog coverage, each with a bootstrap 95% interval over users, and the
relative difference of every arm against the first (control) arm with a paired bootstrap
interval.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vidrec.features.ranker_features import build_ranker_frame
from vidrec.features.tables import Dataset
from vidrec.pipelines.scoring import add_cg_features

log = logging.getLogger("vidrec")

DAY = 86_400
SERVE_BLOCK = 4 * 3600  # visits served together (see ranker_policy)
FRESH_DAYS = 7.0
Policy = Callable[[Dataset, np.ndarray, np.ndarray], np.ndarray]  # (logs, users, times) -> (U, k)


@dataclass
class ArmResult:
    name: str
    impressions: pd.DataFrame  # what this arm served and how users responded


def daily_index(cg: Any, retrieval: dict[str, Any], seed: int) -> Callable[[Dataset, int], Any]:
    """Index factory: the item tower embeds every item uploaded by `day_start` (upload ages at
    that time), so items uploaded during the experiment enter retrieval the next day, as a
    nightly index refresh would do in production. The index is the kind a run's [retrieval]
    section names (retrieval.index and its settings)."""
    from vidrec.candidate_gen.index import make_index
    from vidrec.pipelines.config import index_settings

    kind, settings = index_settings(retrieval)

    def make(logs: Dataset, day_start: int) -> Any:
        items = logs.items
        feats = cg.featurizer.item_features(logs, reference_time=day_start)
        ids, vecs = cg.item_embeddings(feats)
        keep = items["upload_time"].to_numpy() <= day_start
        return make_index(kind, vecs[keep], ids[keep], seed=seed, **settings)

    return make


def ranker_policy(
    cg: Any,
    make_index: Callable[[Dataset, int], Any],
    ranker: Any | None,
    k: int,
    n_candidates: int,
    history_len: int = 50,
) -> Policy:
    """CG retrieval from the day's index (watched excluded) -> ranker expected watch time (or
    the CG score alone when `ranker` is None)."""
    from vidrec.candidate_gen.retrieve import Retriever

    built: dict[int, Any] = {}

    def serve(logs: Dataset, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        day = int(times.min()) // DAY * DAY if len(times) else 0
        if day not in built:
            built.clear()
            built[day] = make_index(logs, day)
        retriever = Retriever(cg, built[day], logs)
        slates = np.full((len(users), k), -1, dtype=np.int64)
        # visits are served in blocks of SERVE_BLOCK seconds, from history strictly before the
        # block's start (a user's own earlier visit in the same block is not yet in the logs)
        hours = times // SERVE_BLOCK * SERVE_BLOCK
        for h in np.unique(hours):
            sel = np.flatnonzero(hours == h)
            cands = retriever.retrieve(
                users[sel], n_candidates, at_time=int(h), exclude_watched=True
            )
            cands["pos"] = pd.Index(users[sel]).get_indexer(
                cands["user_id"]
            )  # users unique per hour
            if ranker is None:
                score = cands["score"].to_numpy()
            else:
                req = cands[["user_id", "item_id"]].copy()
                req["timestamp"] = np.int64(h)
                req = add_cg_features(cg, logs, req)
                req["source"] = "candidate_gen"
                frame = build_ranker_frame(
                    logs,
                    req[["user_id", "item_id", "timestamp", "source", "cg_score", "cg_rank"]],
                    history_len=history_len,
                    time_windows=ranker.config.time_windows or None,
                )
                score = ranker.predict_expected_watch_time(frame)
            order = np.lexsort((-score, cands["pos"].to_numpy()))
            c = cands.iloc[order]
            r = c.groupby("pos").cumcount().to_numpy()
            keep = r < k
            slates[sel[c["pos"].to_numpy()[keep]], r[keep]] = c["item_id"].to_numpy()[keep]
        return slates

    return serve


def world_policy(world: Any, kind: str, k: int, seed: int) -> Policy:
    rng = np.random.default_rng(seed)

    def serve(logs: Dataset, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        t = int(np.median(times)) if len(times) else 0
        if kind == "most_popular":
            return world.most_popular_slates(users, t, k)
        if kind == "logging_policy":
            return world.logging_policy_slates(users, t, k, rng)
        if kind == "random":
            return world.random_slates(users, t, k, rng)
        if kind == "oracle":
            return world.oracle_slates(users, t, k)
        raise ValueError(f"unknown world policy {kind!r}")

    return serve


def _append_logs(logs: Dataset, imp: pd.DataFrame) -> Dataset:
    """The arm's logs plus today's impressions (clicked ones also as watches)."""
    out = copy.copy(logs)
    cols = (
        [c for c in logs.impressions.columns if c in imp.columns]
        if logs.impressions is not None
        else list(imp.columns)
    )
    out.impressions = (
        pd.concat([logs.impressions, imp[cols]], ignore_index=True)
        if logs.impressions is not None
        else imp
    )
    clicked = imp[imp["clicked"] == 1]
    new_w = clicked[["user_id", "item_id", "timestamp", "watch_time"]]
    out.watches = pd.concat(
        [logs.watches, new_w[[c for c in logs.watches.columns if c in new_w.columns]]],
        ignore_index=True,
    )
    return out


def run_ab(
    world: Any,
    base_logs: Dataset,
    arms: dict[str, Policy],
    *,
    start: int,
    days: int,
    k: int,
    seed: int,
    max_visits_per_day: int = 0,
    retrain: Callable[[str, Dataset], Policy] | None = None,
) -> dict[str, ArmResult]:
    """Serve every arm for `days` days from `start`; return each arm's served impressions."""
    logs = {name: base_logs for name in arms}
    served: dict[str, list[pd.DataFrame]] = {name: [] for name in arms}
    policies = dict(arms)
    for d in range(days):
        day_rng = np.random.default_rng([seed, d])
        lo, hi = start + d * DAY, start + (d + 1) * DAY
        users, times = world.visitors(lo, hi, day_rng)
        if max_visits_per_day and len(users) > max_visits_per_day:
            pick = np.sort(day_rng.choice(len(users), max_visits_per_day, replace=False))
            users, times = users[pick], times[pick]
        # one visit per user and serving block keeps page ids unique; later visits in the same
        # block are dropped and counted
        key = pd.DataFrame({"u": users, "h": times // SERVE_BLOCK})
        first = ~key.duplicated().to_numpy()
        users, times = users[first], times[first]
        log.info(
            "A/B day %d: %d visits (%d repeats within a serving block dropped)",
            d + 1,
            len(users),
            int((~first).sum()),
        )
        resp_seed = int(day_rng.integers(2**31))
        for name, policy in policies.items():
            slates = policy(logs[name], users, times)
            imp = world.respond(users, slates, times, np.random.default_rng(resp_seed))
            imp["arm"] = name
            imp["day"] = d
            served[name].append(imp)
            logs[name] = _append_logs(logs[name], imp)
        if retrain is not None and d < days - 1:
            policies = {name: retrain(name, logs[name]) for name in policies}
    return {
        name: ArmResult(name, pd.concat(frames, ignore_index=True))
        for name, frames in served.items()
    }


def _per_user(imp: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    upload = pd.Series(items["upload_time"].to_numpy(), index=items["item_id"].to_numpy())
    age_days = (
        imp["timestamp"].to_numpy() - upload.reindex(imp["item_id"].to_numpy()).to_numpy()
    ) / DAY
    df = pd.DataFrame(
        {
            "user_id": imp["user_id"].to_numpy(),
            "watch_time": imp["watch_time"].to_numpy(),
            "clicked": imp["clicked"].to_numpy(),
            "fresh": age_days < FRESH_DAYS,
        }
    )
    return df.groupby("user_id").agg(
        watch_time=("watch_time", "sum"),
        clicks=("clicked", "sum"),
        impressions=("clicked", "size"),
        fresh=("fresh", "sum"),
    )


def _boot(values: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize_ab(
    results: dict[str, ArmResult], items: pd.DataFrame, *, n_boot: int, seed: int
) -> dict[str, Any]:
    """Per-arm metrics with bootstrap CIs over users, and each arm vs the first (paired)."""
    names = list(results)
    per = {n: _per_user(results[n].impressions, items) for n in names}
    users = sorted(set().union(*[set(p.index) for p in per.values()]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(users), size=(n_boot, len(users)))
    metrics: dict[str, Any] = {"arms": {}, "vs_control": {}}
    table = []
    n_catalog = len(items)
    mats = {}
    for n in names:
        p = per[n].reindex(users, fill_value=0)
        wt = p["watch_time"].to_numpy(dtype=float)
        ctr_u = p["clicks"].to_numpy(dtype=float)
        imp_u = p["impressions"].to_numpy(dtype=float)
        fresh_u = p["fresh"].to_numpy(dtype=float)
        mats[n] = (wt, ctr_u, imp_u, fresh_u)
        # ratio metrics (CTR, fresh share) bootstrapped as ratios of sums over resampled users
        ctr_b = ctr_u[idx].sum(1) / np.maximum(imp_u[idx].sum(1), 1)
        fresh_b = fresh_u[idx].sum(1) / np.maximum(imp_u[idx].sum(1), 1)
        shown = results[n].impressions["item_id"]
        entry = {
            "watch_time_per_user": {"mean": float(wt.mean()), "ci": list(_boot(wt, idx))},
            "ctr": {
                "mean": float(ctr_u.sum() / max(imp_u.sum(), 1)),
                "ci": [float(np.percentile(ctr_b, 2.5)), float(np.percentile(ctr_b, 97.5))],
            },
            "fresh_share": {
                "mean": float(fresh_u.sum() / max(imp_u.sum(), 1)),
                "ci": [float(np.percentile(fresh_b, 2.5)), float(np.percentile(fresh_b, 97.5))],
            },
            "catalog_coverage": float(shown.nunique() / max(n_catalog, 1)),
            "impressions": int(len(shown)),
        }
        metrics["arms"][n] = entry
        table.append(
            {
                "arm": n,
                "watch time per user (s)": entry["watch_time_per_user"]["mean"],
                "95% CI": f"[{entry['watch_time_per_user']['ci'][0]:.1f}, {entry['watch_time_per_user']['ci'][1]:.1f}]",
                "CTR": entry["ctr"]["mean"],
                "fresh share": entry["fresh_share"]["mean"],
                "catalog coverage": entry["catalog_coverage"],
            }
        )
    control = names[0]
    wc = mats[control][0]
    for n in names[1:]:
        wa = mats[n][0]
        rel_b = wa[idx].mean(1) / np.maximum(wc[idx].mean(1), 1e-12) - 1.0
        rel = float(wa.mean() / max(wc.mean(), 1e-12) - 1.0)
        metrics["vs_control"][n] = {
            "control": control,
            "relative_watch_time": rel,
            "ci": [float(np.percentile(rel_b, 2.5)), float(np.percentile(rel_b, 97.5))],
        }
        table[names.index(n)]["vs control"] = (
            f"{rel:+.1%} [{np.percentile(rel_b, 2.5):+.1%}, {np.percentile(rel_b, 97.5):+.1%}]"
        )
    metrics["n_users"] = len(users)
    return {"metrics": metrics, "table": table}
