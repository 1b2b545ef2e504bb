"""Tuned retrieval baselines beside the candidate generator in `vidrec run`'s retrieval stage.

Each baseline of `candidate_gen.baselines` that the config's `[retrieval_baselines]` section
enables (recent popular, item-kNN, EASE, PureSVD) gets one hyperparameter chosen and one test
number, in the time protocol of `pipelines.run`:

* Tuning (the ranker window only): for each value of the baseline's grid, fit on the watches
  before `train_end` (items uploaded by then), serve a seeded sample of at most
  `evaluation.max_users` users with a watch in [train_end, valid_end) at `train_end` from
  their history before it, and score Recall@50 of the distinct items each watched in that
  window (items watched before excluded from both candidates and targets when
  `retrieval.exclude_watched`). The value with the highest Recall@50 wins (ties: the first in
  grid order). Nothing at or after `valid_end` is read: the model is fitted on a copy of the
  data holding only watches before `train_end`, and the validation targets end at `valid_end`.
* Test: the chosen value is refitted on every watch before `valid_end` (items uploaded by
  then: the candidate generator's servable catalog) and evaluated exactly like the candidate
  generator: the same held-out users served at `valid_end`, the same exclusions and targets,
  `evaluation.retrieval.retrieval_metrics` with the same ks, catalog size and item buckets.

Grids: recent popular's window W = span / 2^j, j = 0..`recent_popular_halvings`, with span
the training window's length (train_end - start); item-kNN's neighbours per item (0 = all);
EASE's L2 penalty λ; PureSVD's rank. EASE is skipped, with the reason kept for the report,
when one dense item x item float64 matrix over the catalog would exceed `ease_max_gb`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from vidrec.candidate_gen.baselines import (
    EASE,
    ItemKNN,
    MemoryBudgetExceeded,
    PureSVD,
    RecentPopular,
    RetrievalBaseline,
)
from vidrec.evaluation.retrieval import retrieval_metrics
from vidrec.features.split import TimeSplit
from vidrec.features.tables import Dataset
from vidrec.pipelines.names import BASELINE_LABELS, BASELINE_NAMES

log = logging.getLogger("vidrec")

__all__ = [
    "LABELS",
    "NAMES",
    "TUNE_K",
    "evaluate_baselines",
    "served_view",
    "tune",
]

# the baselines in report order; their config toggles are retrieval_baselines.<name>
NAMES, LABELS = BASELINE_NAMES, BASELINE_LABELS
TUNE_K = 50  # the tuning metric is Recall@TUNE_K on the ranker window


# ----------------------------------------------------------------------------- data views


def served_view(dataset: Dataset, at_time: int) -> Dataset:
    """The data a model serving at `at_time` may be fitted on: the items uploaded by then
    (the servable catalog) and their watches strictly before `at_time`."""
    items = dataset.items[dataset.items["upload_time"].to_numpy() <= at_time]
    w = dataset.watches
    keep = (w["timestamp"].to_numpy() < at_time) & np.isin(
        w["item_id"].to_numpy(), items["item_id"].to_numpy()
    )
    return Dataset(
        users=dataset.users, items=items, watches=w.loc[keep], name=dataset.name, meta={}
    )


def _distinct_items(watches: pd.DataFrame, users: np.ndarray, lo: int, hi: int) -> list[np.ndarray]:
    """Distinct items each of `users` (sorted ids) watched in [lo, hi), sorted, one per user."""
    t = watches["timestamp"].to_numpy()
    sel = (t >= lo) & (t < hi)
    u = watches["user_id"].to_numpy()[sel]
    i = watches["item_id"].to_numpy()[sel]
    pos = np.searchsorted(users, u)
    mine = (pos < len(users)) & (users[np.minimum(pos, len(users) - 1)] == u)
    pairs = np.unique(np.stack([pos[mine], i[mine]]), axis=1)  # sorted by (user, item)
    counts = np.bincount(pairs[0], minlength=len(users))
    return np.split(pairs[1], np.cumsum(counts)[:-1])


def validation_queries(
    dataset: Dataset, split: TimeSplit, max_users: int, exclude_watched: bool, seed: int
) -> tuple[np.ndarray, list[np.ndarray] | None, list[np.ndarray]]:
    """(users, exclusions, targets) of the ranker window: users with a watch in
    [train_end, valid_end) (a seeded sample of `max_users`), served at `train_end`."""
    w = dataset.watches
    lo, hi = split.bounds("valid")
    t = w["timestamp"].to_numpy()
    users = np.unique(w["user_id"].to_numpy()[(t >= lo) & (t < hi)]).astype(np.int64)
    if len(users) > max_users:
        rng = np.random.default_rng(seed + 103)
        users = np.sort(rng.choice(users, size=max_users, replace=False))
    targets = _distinct_items(w, users, lo, hi)
    if not exclude_watched:
        return users, None, targets
    history = _distinct_items(w, users, np.iinfo(np.int64).min, lo)
    targets = [np.setdiff1d(tg, h) for tg, h in zip(targets, history, strict=True)]
    return users, history, targets


# ----------------------------------------------------------------------------- grids


def _window_label(seconds: int, span: int) -> str:
    days = seconds / 86400
    length = f"{days:,.0f}" if days >= 100 else f"{days:.3g}"
    return f"W={length} d (training span/{span / seconds:.3g})"


def grids(
    cfg: dict[str, Any], split: TimeSplit
) -> dict[str, tuple[RetrievalBaseline, list[Any], Callable[[Any], str]]]:
    """Per enabled baseline: (an unfitted model, its grid, a label of one grid value)."""
    span = int(split.train_end - split.start)
    out: dict[str, tuple[RetrievalBaseline, list[Any], Callable[[Any], str]]] = {}
    if cfg["recent_popular"]:
        windows = sorted(
            {max(1, span // 2**j) for j in range(int(cfg["recent_popular_halvings"]) + 1)},
            reverse=True,
        )
        out["recent_popular"] = (
            RecentPopular(windows[0]),
            windows,
            lambda w: _window_label(int(w), span),
        )
    if cfg["item_knn"]:
        ks = [None if int(k) <= 0 else int(k) for k in cfg["item_knn_neighbors"]]
        out["item_knn"] = (ItemKNN(ks[0]), ks, lambda k: f"k={'all' if k is None else k}")
    if cfg["ease"]:
        ls = [float(x) for x in cfg["ease_l2"]]
        out["ease"] = (
            EASE(ls[0], memory_budget_gb=float(cfg["ease_max_gb"])),
            ls,
            lambda x: f"λ={x:g}",
        )
    if cfg["pure_svd"]:
        ranks = [int(r) for r in cfg["pure_svd_ranks"]]
        out["pure_svd"] = (PureSVD(ranks[0], seed=int(cfg["seed"])), ranks, lambda r: f"rank={r}")
    return out


def _json_value(v: Any) -> Any:
    """A grid value for JSON (None, for 'all neighbours', is written 0 as in the config)."""
    if v is None:
        return 0
    return v.item() if isinstance(v, np.generic) else v


# ----------------------------------------------------------------------------- protocol


def tune(
    model: RetrievalBaseline,
    grid: Sequence[Any],
    dataset: Dataset,
    split: TimeSplit,
    *,
    max_users: int,
    exclude_watched: bool,
    seed: int,
) -> dict[str, Any]:
    """Choose `model`'s hyperparameter by Recall@TUNE_K on the ranker window (module
    docstring); return {"chosen", "scores" (one per grid value), "n_users",
    "n_users_with_targets"}. Reads only watches before `split.valid_end`."""
    t_fit = int(split.train_end)
    view = served_view(dataset, t_fit)
    # validation targets end at valid_end: the rest of the log never enters
    before_valid_end = Dataset(
        users=dataset.users,
        items=dataset.items,
        watches=dataset.watches[dataset.watches["timestamp"].to_numpy() < split.valid_end],
    )
    users, exclude, targets = validation_queries(
        before_valid_end, split, max_users, exclude_watched, seed
    )
    n_catalog = max(1, len(view.items))
    scores: list[float | None] = []
    for _, fitted in model.fit_grid(view, t_fit, grid):
        ids, _ = fitted.recommend(users, TUNE_K, at_time=t_fit, exclude=exclude)
        m = retrieval_metrics(ids, targets, ks=[TUNE_K], catalog_size=n_catalog)
        scores.append(m[f"recall@{TUNE_K}"])  # type: ignore[arg-type]
    valid = [s for s in scores if s is not None]
    best = int(np.argmax([-np.inf if s is None else s for s in scores])) if valid else None
    return {
        "chosen": grid[best] if best is not None else grid[len(grid) // 2],
        "scores": scores,
        "n_users": int(len(users)),
        "n_users_with_targets": int(sum(len(t) > 0 for t in targets)),
    }


def evaluate_baselines(
    dataset: Dataset,
    split: TimeSplit,
    config: dict[str, Any],
    *,
    users: np.ndarray,
    exclude: list[np.ndarray] | None,
    targets: list[np.ndarray],
    ks: Sequence[int],
    catalog_size: int,
    item_bucket: dict[str, dict[int, str]] | None,
    slate_k: int,
    query_group: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """Tune, refit and evaluate every enabled baseline (module docstring).

    Return (metrics per baseline, tuning record per baseline, top-`slate_k` ids (U, slate_k)
    per baseline for the end-to-end slates). A baseline that cannot run (EASE over its memory
    budget) has a tuning record with "skipped" (the reason) and no metrics or slate.
    """
    section = config.get("retrieval_baselines")
    if not section:
        return {}, {}, {}
    cfg = section | {"seed": int(config["seed"])}
    exclude_watched = bool(config["retrieval"]["exclude_watched"])
    max_users = int(config["evaluation"]["max_users"])
    t_serve = int(split.valid_end)
    view = served_view(dataset, t_serve)
    k_eval = max(max(int(k) for k in ks), int(slate_k))
    metrics: dict[str, Any] = {}
    records: dict[str, Any] = {}
    slates: dict[str, np.ndarray] = {}
    for name, (model, grid, label) in grids(cfg, split).items():
        t0 = time.perf_counter()
        record: dict[str, Any] = {
            "label": LABELS[name],
            "hyperparameter": model.hyperparameter,
            "grid": [_json_value(v) for v in grid],
            "grid_labels": [label(v) for v in grid],
        }
        try:
            tuned = tune(
                model,
                grid,
                dataset,
                split,
                max_users=max_users,
                exclude_watched=exclude_watched,
                seed=int(config["seed"]),
            )
            chosen = tuned["chosen"]
            params = model.get_params() | {model.hyperparameter: chosen}
            final = type(model)(**params).fit(view, t_serve)
        except MemoryBudgetExceeded as exc:
            record["skipped"] = str(exc)
            records[name] = record
            log.info("retrieval baseline %s skipped: %s", name, exc)
            continue
        ids, _ = final.recommend(users, k_eval, at_time=t_serve, exclude=exclude)
        metrics[name] = retrieval_metrics(
            ids,
            targets,
            ks=ks,
            catalog_size=catalog_size,
            item_bucket=item_bucket,
            query_group=query_group,
        )
        slates[name] = ids[:, :slate_k]
        record.update(
            chosen=_json_value(chosen),
            chosen_label=label(chosen),
            validation={
                "metric": f"recall@{TUNE_K}",
                "window": [int(split.train_end), int(split.valid_end)],
                "served_at": int(split.train_end),
                "scores": tuned["scores"],
                "n_users": tuned["n_users"],
                "n_users_with_targets": tuned["n_users_with_targets"],
            },
            seconds=round(time.perf_counter() - t0, 2),
        )
        if isinstance(final, PureSVD):
            record["effective_rank"] = int(final.n_components_)
        records[name] = record
        log.info(
            "retrieval baseline %s: %s chosen on the ranker window (recall@%d %s); "
            "test recall@50 %s (%.1f s)",
            name,
            label(chosen),
            TUNE_K,
            " ".join("n/a" if x is None else f"{x:.4f}" for x in tuned["scores"]),
            metrics[name].get("recall@50"),
            record["seconds"],
        )
    return metrics, records, slates
