"""`vidrec experiment movielens-table`: retrieval on real MovieLens logs, mean ± std over seeds.

Where it sits: the MovieLens results table. It reads an official MovieLens directory
(`features.sources.movielens`), holds out each user's last watches, and compares our candidate
generator (with and without the SSL21 regulariser) with the retrieval baselines of
`candidate_gen.baselines` (most popular, item-kNN, PureSVD) under one protocol. It does not use
the run directory stages of `pipelines.run`, whose protocol is a global time split.

Protocol (time-based next-watch, per user):
* Test holdout: each user's watches sorted by time; the cut is the timestamp of the user's
  `n_last`-th last watch, and every watch at or after the cut is held out (watches in the same
  second as the cut are held out together, because their order within a second is unknown, so
  a user may hold out more than `n_last`). The user is served at the cut: history = the
  user's watches strictly before it; targets = the distinct held-out items not in the history.
  Searches (MovieLens tags) at or after the cut are removed too. Users without any watch before
  their cut cannot be served from a history and are counted, not evaluated.
* Every model ranks the whole catalog (every movie of the movie file, rated or not) and never
  returns an item of the user's history. Other users' watches after a user's cut stay in
  training (the usual leave-last-out protocol; a global time split is `vidrec run`'s protocol).
* Validation holdout: the same rule applied to the training part (each user's last `n_last`
  training watches). Every choice is made on it, never on the test holdout: the candidate
  generator's number of epochs (early stopping on validation Recall@`valid_k`, patience
  `candidate_gen.patience`, at most `candidate_gen.epochs`), item-kNN's neighbourhood size and
  PureSVD's rank (grids below). The chosen models are then refitted on all training watches
  (validation watches included) with the chosen settings and scored once on the test holdout.
* Example age (YT16): training examples carry the age of their label relative to the end of
  the training log. Each user is served at their own cut, which for most MovieLens users lies
  years before that end, so the query carries the example age of its cut time (the age a
  training example at that time would have). `vidrec run` serves everybody at the end of the
  window, which is example age 0.
* Metrics (`evaluation.retrieval.retrieval_metrics`): Recall@{10,50,100}, NDCG@10 and
  coverage@k (distinct retrieved items over the catalog), and Recall@50 by item popularity
  (head = top 20% of the catalog by training watches, tail = bottom 50% and every unwatched
  item, torso = the rest).

Cost: on ml-latest-small one seed takes a few minutes of one CPU core (the CG's epochs
dominate). On a machine shared by several torch processes, run with OMP_NUM_THREADS=1: torch's
intra-op threads spin-waiting for descheduled siblings made epochs ~30x slower on two busy cores.

Seeds: one seed drives the candidate generator (initialisation, shuffling, negatives, SSL) and
PureSVD's randomized solver. The holdout, most popular and item-kNN are deterministic, so their
std over seeds is 0; PureSVD's varies only through the solver's random start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec.candidate_gen.baselines import ItemKNN, MostPopular, PureSVD, RetrievalBaseline
from vidrec.candidate_gen.index import ExactIndex
from vidrec.candidate_gen.train import TrainedCandidateGenerator, train_candidate_generator
from vidrec.evaluation.retrieval import popularity_buckets, retrieval_metrics
from vidrec.features.atomic import atomic_write_json, atomic_write_text
from vidrec.features.examples import SECONDS_PER_DAY, CandidateFeaturizer, UserFeatures
from vidrec.features.split import TimeSplit
from vidrec.features.tables import Dataset
from vidrec.pipelines.config import config_hash, resolve_config
from vidrec.pipelines.names import EXPERIMENTS_REAL
from vidrec.pipelines.run import cg_config, featurizer_from_config, load_source

log = logging.getLogger("vidrec")

__all__ = [
    "EXPERIMENTS_REAL",
    "METHODS",
    "Holdout",
    "hold_out_last_watches",
    "evaluate_rankings",
    "cg_rankings",
    "train_cg_early_stopped",
    "run_cg",
    "run_movielens_table",
]


# method key -> label in the table; the CG variants differ only in candidate_gen.ssl
METHODS: dict[str, str] = {
    "cg_ssl": "our CG, SSL (CFM)",
    "cg_no_ssl": "our CG, no SSL",
    "most_popular": "most popular",
    "item_knn": "item-kNN (cosine)",
    "pure_svd": "PureSVD",
}
CG_SSL: dict[str, str] = {"cg_ssl": "cfm", "cg_no_ssl": "none"}

# validation grids of the baselines' one hyperparameter (None = every item is a neighbour)
KNN_NEIGHBORS: tuple[int | None, ...] = (50, 200, None)
SVD_RANKS: tuple[int, ...] = (16, 32, 64, 128)

KS: tuple[int, ...] = (10, 50, 100)
DEFAULT_N_LAST = 10


# ----------------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class Holdout:
    """A per-user last-watches holdout: the training logs and the evaluation queries."""

    train: Dataset  # the logs without any held-out watch or later search
    users: np.ndarray  # (U,) int64 evaluated users (a watch before the cut and a target)
    at_time: np.ndarray  # (U,) int64 each user's cut: the serving time
    history: list[np.ndarray]  # per user: item ids watched before the cut (never recommended)
    targets: list[np.ndarray]  # per user: distinct held-out item ids not in the history
    n_last: int
    n_held_out: int  # held-out watches (all users)
    n_users_without_history: int  # users whose every watch is at or after their cut
    n_users_without_targets: int  # users who held out only items they had watched before

    def summary(self) -> dict[str, Any]:
        """Return the holdout's sizes as a JSON-ready dict."""
        return {
            "n_last": self.n_last,
            "users_evaluated": int(len(self.users)),
            "users_without_history": self.n_users_without_history,
            "users_without_targets": self.n_users_without_targets,
            "held_out_watches": self.n_held_out,
            "training_watches": int(len(self.train.watches)),
            "targets_per_user_mean": float(np.mean([len(t) for t in self.targets]))
            if self.targets
            else 0.0,
        }


def hold_out_last_watches(dataset: Dataset, n_last: int = DEFAULT_N_LAST) -> Holdout:
    """Return the holdout of each user's last `n_last` watches in time order (see the module
    docstring: ties at the cut second are held out together)."""
    if isinstance(n_last, bool) or not isinstance(n_last, int | np.integer) or n_last < 1:
        raise ValueError(f"n_last must be a positive integer (watches per user), got {n_last!r}")
    w = dataset.watches
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in w.columns]
    if missing:
        raise ValueError(
            f"table 'watches' lacks column(s) {missing}; load the data with "
            "features.sources.movielens.load_movielens or validate it first"
        )
    if len(w) == 0:
        raise ValueError("table 'watches' is empty: there is nothing to hold out")
    user = w["user_id"].to_numpy(np.int64)
    ts = w["timestamp"].to_numpy(np.int64)
    item = w["item_id"].to_numpy(np.int64)
    order = np.lexsort((ts, user))  # (W,) by user, then time
    u_s, t_s, i_s = user[order], ts[order], item[order]
    starts = np.flatnonzero(np.r_[True, u_s[1:] != u_s[:-1]])
    ends = np.r_[starts[1:], len(u_s)]
    users = u_s[starts]  # (U,) sorted
    cut = t_s[np.maximum(ends - int(n_last), starts)]  # (U,) time of the n-th last watch
    held_s = t_s >= np.repeat(cut, ends - starts)  # (W,) in sorted order
    held = np.empty(len(w), dtype=bool)
    held[order] = held_s

    searches = searches_before(dataset.searches, users, cut)
    train = dataclasses.replace(dataset, watches=w.loc[~held], searches=searches)

    # history and distinct new targets per user, as sorted (user, item) pairs
    hist = pd.DataFrame({"u": u_s[~held_s], "i": i_s[~held_s]}).drop_duplicates()
    tgt = pd.DataFrame({"u": u_s[held_s], "i": i_s[held_s]}).drop_duplicates()
    seen = tgt.merge(hist, on=["u", "i"], how="left", indicator=True)["_merge"] == "both"
    tgt = tgt.loc[~seen.to_numpy()]
    has_history = np.isin(users, hist["u"].to_numpy())
    has_target = np.isin(users, tgt["u"].to_numpy())
    keep = users[has_history & has_target]
    return Holdout(
        train=train,
        users=keep,
        at_time=cut[has_history & has_target],
        history=_lists_by_user(hist, keep),
        targets=_lists_by_user(tgt, keep),
        n_last=int(n_last),
        n_held_out=int(held.sum()),
        n_users_without_history=int((~has_history).sum()),
        n_users_without_targets=int((has_history & ~has_target).sum()),
    )


def searches_before(
    searches: pd.DataFrame | None, users: np.ndarray, cut: np.ndarray
) -> pd.DataFrame | None:
    """Return the searches without those of `users` (sorted) at or after their `cut` time;
    other users' searches are kept."""
    if searches is None or not len(searches) or not len(users):
        return searches
    s_user = searches["user_id"].to_numpy(np.int64)
    pos = np.minimum(np.searchsorted(users, s_user), len(users) - 1)
    s_cut = np.where(users[pos] == s_user, cut[pos], np.iinfo(np.int64).max)
    return searches.loc[searches["timestamp"].to_numpy(np.int64) < s_cut]


def _lists_by_user(pairs: pd.DataFrame, users: np.ndarray) -> list[np.ndarray]:
    """Return, per user of `users` (sorted), the sorted item ids of the (u, i) `pairs`."""
    p = pairs.loc[pairs["u"].isin(users)].sort_values(["u", "i"], kind="stable")
    counts = np.bincount(np.searchsorted(users, p["u"].to_numpy()), minlength=len(users))
    return np.split(p["i"].to_numpy(np.int64), np.cumsum(counts)[:-1])


def evaluate_rankings(
    ids: np.ndarray, holdout: Holdout, catalog: np.ndarray, ks: Sequence[int] = KS
) -> dict[str, float]:
    """Return the retrieval metrics of rankings `ids` (U, >= max(ks)) against the holdout's
    targets, with Recall@k split by training popularity (head/torso/tail)."""
    counts = (
        holdout.train.watches["item_id"].value_counts().reindex(catalog, fill_value=0).to_numpy()
    )
    buckets = {"popularity": popularity_buckets(catalog, counts)}
    m = retrieval_metrics(
        ids, holdout.targets, ks=list(ks), catalog_size=len(catalog), item_bucket=buckets
    )
    return {k: float(v) for k, v in m.items() if isinstance(v, int | float) and v is not None}


# ----------------------------------------------------------------------------- our CG


def log_split(train: Dataset) -> TimeSplit:
    """Return a split whose train window is the whole training log (no global valid/test)."""
    t = train.watches["timestamp"].to_numpy(np.int64)
    end = int(t.max()) + 1
    return TimeSplit(start=int(t.min()), train_end=end, valid_end=end, test_end=end)


def query_features(
    featurizer: CandidateFeaturizer, train: Dataset, users: np.ndarray, at_time: np.ndarray
) -> UserFeatures:
    """Return the users' serving features at their cut times, with the example age of that time.

    The age is the one a training example labelled at `at_time` would carry:
    clip((reference time - at_time) / (training window length), 0, 1) in days, as in
    `CandidateFeaturizer.examples`, expanded to [a, a², √a].
    """
    feats = featurizer.serving(featurizer.index_history(train), users, at_time)
    days = (featurizer.reference_time_ - at_time.astype(np.float64)) / SECONDS_PER_DAY
    a = np.clip(days / featurizer.train_days_, 0.0, 1.0).astype(np.float32)  # (U,)
    return dataclasses.replace(feats, example_age=np.stack([a, a * a, np.sqrt(a)], axis=1))


def cg_rankings(
    model: TrainedCandidateGenerator,
    holdout: Holdout,
    k: int,
    features: UserFeatures | None = None,
) -> np.ndarray:
    """Return the exact top-k item ids (U, k) of the holdout's users over the model's whole
    catalog, their histories excluded."""
    if features is None:
        features = query_features(model.featurizer, holdout.train, holdout.users, holdout.at_time)
    ids, vectors = model.item_embeddings()
    users = model.user_embeddings(features, example_age=None)  # ages set by query_features
    top, _ = ExactIndex(vectors, ids).search(users, int(k), holdout.history)
    return top


def fit_cg(
    config: dict[str, Any], train: Dataset, items: pd.DataFrame
) -> tuple[Any, Any, Any, CandidateFeaturizer]:
    """Return (CG config, training examples, item features, featurizer) fitted on `train`."""
    cfg = cg_config(config)
    featurizer = featurizer_from_config(config).fit(train, log_split(train))
    examples = featurizer.examples(train, "train", max_examples_per_user=cfg.max_examples_per_user)
    return cfg, examples, featurizer.item_features(items, watches=train.watches), featurizer


def train_cg_early_stopped(
    config: dict[str, Any],
    valid: Holdout,
    items: pd.DataFrame,
    catalog: np.ndarray,
    checkpoint_dir: Path,
    progress: bool = False,
) -> tuple[TrainedCandidateGenerator, list[dict[str, float]], int]:
    """Return (best model, per-epoch records, best epoch): trained on `valid.train`, one epoch
    at a time (resuming its checkpoint), scored after each epoch on the validation holdout
    under the test protocol, stopped after `patience` epochs without a better
    Recall@`valid_k`."""
    cfg, examples, item_feats, featurizer = fit_cg(config, valid.train, items)
    feats = query_features(featurizer, valid.train, valid.users, valid.at_time)
    k = max(max(KS), cfg.valid_k)
    best: tuple[float, int, TrainedCandidateGenerator | None] = (-1.0, 0, None)
    records: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        model = train_candidate_generator(
            cfg.replace(epochs=epoch),
            examples,
            item_feats,
            checkpoint_dir=checkpoint_dir,
            resume=True,
            progress=progress,
        )
        ks = sorted({*KS, cfg.valid_k})
        m = evaluate_rankings(cg_rankings(model, valid, k, feats), valid, catalog, ks)
        last = model.history[-1]
        records.append(
            {
                "epoch": epoch,
                "train_main_loss": float(last["main_loss"]),
                "train_ssl_loss": float(last["ssl_loss"]),
                **{f"valid_{key}": m[key] for key in ("recall@10", "recall@50", "ndcg@10")},
            }
        )
        score = m[f"recall@{cfg.valid_k}"]
        log.info("  epoch %d: valid recall@%d %.4f", epoch, cfg.valid_k, score)
        if score > best[0]:
            best = (score, epoch, model)
        elif cfg.patience > 0 and epoch - best[1] >= cfg.patience:
            break
    if best[2] is None:  # epochs >= 1 (CandidateGenConfig) always yields a model
        raise RuntimeError("no epoch was trained; candidate_gen.epochs must be >= 1")
    return best[2], records, best[1]


# ----------------------------------------------------------------------------- baselines


def _baseline_factories(seed: int) -> dict[str, list[tuple[str, Callable[[], RetrievalBaseline]]]]:
    """Return, per baseline method, its validation grid as (setting label, factory) pairs."""
    return {
        "most_popular": [("-", MostPopular)],
        "item_knn": [
            (f"neighbors={'all' if n is None else n}", partial(ItemKNN, neighbors=n))
            for n in KNN_NEIGHBORS
        ],
        "pure_svd": [(f"rank={r}", partial(PureSVD, r, seed=seed)) for r in SVD_RANKS],
    }


def baseline_rankings(model: RetrievalBaseline, holdout: Holdout, k: int) -> np.ndarray:
    """Return the top-k item ids (U, k) of a baseline fitted on `holdout.train`."""
    end = int(holdout.train.watches["timestamp"].max()) + 1
    model.fit(holdout.train, end)
    ids, _ = model.recommend(holdout.users, int(k), exclude=holdout.history)
    return ids


# ----------------------------------------------------------------------------- experiment


def run_movielens_table(
    data_dir: str | Path,
    *,
    out: str | Path,
    seeds: Sequence[int] = (0, 1, 2),
    preset: str = "movielens",
    overrides: list[str] | None = None,
    n_last: int = DEFAULT_N_LAST,
    methods: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Return the results dict (rows per seed and method, aggregated table, markdown) after
    writing OUT/movielens_table.json and OUT/movielens_table.md.

    Each (seed, method) result is also written to OUT/seed<S>/<method>.json and reused by a
    rerun with the same config and protocol, so an interrupted experiment resumes.
    """
    chosen = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not seeds:
        raise ValueError("give at least one seed")
    out = Path(out)
    t0 = time.perf_counter()
    dataset, info = load_source("movielens", data_dir)
    catalog = np.unique(dataset.items["item_id"].to_numpy(np.int64))
    test = hold_out_last_watches(dataset, n_last)
    valid = hold_out_last_watches(test.train, n_last)
    protocol = {
        "dataset": dataset.name,
        "data_dir": str(data_dir),
        "layout": info.get("layout"),
        "catalog_items": int(len(catalog)),
        "test": test.summary(),
        "validation": valid.summary(),
    }
    log.info(
        "%s: %d test users, %d validation users, catalog %d items (%.1f s)",
        dataset.name,
        len(test.users),
        len(valid.users),
        len(catalog),
        time.perf_counter() - t0,
    )
    rows: list[dict[str, Any]] = []
    kmax = max(KS)
    for seed in seeds:
        config = resolve_config(preset, overrides or [], seed=int(seed))
        seed_dir = out / f"seed{seed}"
        for method in chosen:
            key = {
                "config": config_hash(config),
                "n_last": n_last,
                "method": method,
                "dataset": dataset.name,
                "counts": dataset.counts(),
            }
            path = seed_dir / f"{method}.json"
            row = load_saved_row(path, key)
            if row is None:
                t1 = time.perf_counter()
                if method in CG_SSL:
                    cfg = {**config, "candidate_gen": {**config["candidate_gen"]}}
                    cfg["candidate_gen"]["ssl"] = CG_SSL[method]
                    row = run_cg(cfg, valid, test, dataset.items, catalog, seed_dir / method)
                else:
                    row = _run_baseline(method, int(seed), valid, test, catalog, kmax)
                row.update(seed=int(seed), method=method, seconds=time.perf_counter() - t1)
                atomic_write_json(path, {"key": key, "row": row})
            log.info(
                "seed %s %-13s test recall@50 %.4f (validation %.4f, %s)",
                seed,
                method,
                row["test"]["recall@50"],
                row["valid_recall@50"],
                row["setting"],
            )
            rows.append(row)
    return _write(out, protocol, preset, list(seeds), chosen, rows)


def load_saved_row(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """Return the "row" saved at `path` under the same `key` (None: absent or another key)."""
    try:
        saved = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return saved["row"] if isinstance(saved, dict) and saved.get("key") == key else None


def run_cg(
    config: dict[str, Any],
    valid: Holdout,
    test: Holdout,
    items: pd.DataFrame,
    catalog: np.ndarray,
    workdir: Path,
) -> dict[str, Any]:
    """Early-stop on the validation holdout, refit on all training watches for the chosen
    number of epochs, score the test holdout. The row's "tune_seconds" (featurizing and
    training on the validation holdout's training log, scoring each epoch) and
    "final_fit_seconds" (featurizing and training the refit) are wall seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records, best_epoch = validate_cg(config, valid, items, catalog, workdir)
    t1 = time.perf_counter()
    row = refit_and_test_cg(config, best_epoch, test, items, catalog)
    atomic_write_json(workdir / "validation_curve.json", records)
    return {
        "setting": f"epochs={best_epoch}",
        "valid_recall@50": records[best_epoch - 1]["valid_recall@50"],
        "validation_curve": records,
        "tune_seconds": t1 - t0,
        **row,
    }


def validate_cg(
    config: dict[str, Any], valid: Holdout, items: pd.DataFrame, catalog: np.ndarray, workdir: Path
) -> tuple[list[dict[str, float]], int]:
    """Return (per-epoch validation records, best epoch) of `train_cg_early_stopped`, its
    checkpoints in a temporary directory under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir) as ckpt:
        _, records, best_epoch = train_cg_early_stopped(config, valid, items, catalog, Path(ckpt))
    return records, best_epoch


def refit_and_test_cg(
    config: dict[str, Any], epochs: int, test: Holdout, items: pd.DataFrame, catalog: np.ndarray
) -> dict[str, Any]:
    """Train on the test holdout's training log for `epochs` epochs and score its targets:
    {"training_examples", "final_fit_seconds", "test": metrics}."""
    t0 = time.perf_counter()
    cfg, examples, item_feats, _ = fit_cg(config, test.train, items)
    model = train_candidate_generator(
        cfg.replace(epochs=epochs), examples, item_feats, progress=False
    )
    fit_s = time.perf_counter() - t0
    ids = cg_rankings(model, test, max(KS))
    return {
        "training_examples": int(len(examples)),
        "final_fit_seconds": fit_s,
        "test": evaluate_rankings(ids, test, catalog),
    }


def _run_baseline(
    method: str, seed: int, valid: Holdout, test: Holdout, catalog: np.ndarray, k: int
) -> dict[str, Any]:
    """Pick the baseline's setting by validation Recall@50, refit on all training watches,
    score the test holdout."""
    grid = _baseline_factories(seed)[method]
    scored = []
    for label, make in grid:
        m = evaluate_rankings(baseline_rankings(make(), valid, k), valid, catalog)
        scored.append((m["recall@50"], label, make))
    best = max(scored, key=lambda s: s[0])  # the first setting wins a tie
    ids = baseline_rankings(best[2](), test, k)
    return {
        "setting": best[1],
        "valid_recall@50": best[0],
        "validation_grid": {label: score for score, label, _ in scored},
        "test": evaluate_rankings(ids, test, catalog),
    }


TABLE_COLUMNS: dict[str, str] = {
    "recall@10": "Recall@10",
    "recall@50": "Recall@50",
    "recall@100": "Recall@100",
    "ndcg@10": "NDCG@10",
    "coverage@50": "coverage@50",
    "popularity.head.recall@50": "head R@50",
    "popularity.torso.recall@50": "torso R@50",
    "popularity.tail.recall@50": "tail R@50",
}


def _write(
    out: Path,
    protocol: dict[str, Any],
    preset: str,
    seeds: list[int],
    methods: list[str],
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """Aggregate mean ± sample std (ddof 1) over seeds; write the JSON and markdown tables."""
    table: list[dict[str, Any]] = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        entry: dict[str, Any] = {"method": method, "label": METHODS[method], "seeds": len(mine)}
        for col in (*TABLE_COLUMNS, "recall@50 (validation)"):
            vals = np.array(
                [r["valid_recall@50"] if col.endswith("(validation)") else r["test"].get(col)
                 for r in mine],
                dtype=np.float64,
            )  # fmt: skip
            entry[col] = {
                "mean": float(np.nanmean(vals)),
                "std": float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0,
            }
        entry["settings"] = [r["setting"] for r in mine]
        table.append(entry)
    name = protocol["dataset"]
    t, v = protocol["test"], protocol["validation"]
    head = (
        f"# {name}: retrieval, test holdout (mean ± std over seeds {seeds})\n\n"
        f"Every number is measured on **{name}, test holdout**: each of "
        f"{t['users_evaluated']} users' last {t['n_last']} watches in time order (ties at the "
        f"cut second held out together; {t['targets_per_user_mean']:.2f} new items per user "
        f"on average), ranked over all {protocol['catalog_items']} catalog items, items the "
        "user watched before excluded. Settings (CG epochs, item-kNN neighbours, PureSVD rank) "
        f"were chosen on a validation holdout of the {v['n_last']} watches before it "
        f"({v['users_evaluated']} users), then refitted on every training watch. Popularity "
        "buckets: head = top 20% of items by training watches, tail = bottom 50% and unwatched, "
        f"torso = the rest. Std is the sample std (ddof 1) over seeds; preset `{preset}`.\n\n"
    )
    cols = list(TABLE_COLUMNS.values()) + ["Recall@50 (validation)", "setting (per seed)"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "--:|" * (len(cols) - 1) + "---|"]
    for e in table:
        cells = [
            f"{e[c]['mean']:.4f} ± {e[c]['std']:.4f}"
            for c in (*TABLE_COLUMNS, "recall@50 (validation)")
        ]
        distinct = list(dict.fromkeys(e["settings"]))
        settings = distinct[0] if len(distinct) == 1 else " / ".join(e["settings"])
        lines.append(f"| {e['label']} | " + " | ".join(cells) + f" | {settings} |")
    note = (
        "\n\nMost popular, item-kNN and the holdout are deterministic: their std over seeds is 0. "
        "PureSVD varies only through its randomized solver's seed; the candidate generator "
        "through its initialisation, shuffling, sampled negatives and SSL batches.\n"
    )
    md = head + "\n".join(lines) + note
    result = {
        "experiment": "movielens-table",
        "label": f"{name}, test holdout",
        "protocol": protocol,
        "preset": preset,
        "seeds": seeds,
        "table": table,
        "rows": rows,
        "markdown": md,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "movielens_table.json", result)
    atomic_write_text(out / "movielens_table.md", md)
    return result
