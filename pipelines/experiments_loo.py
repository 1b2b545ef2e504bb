"""`vidrec experiment loo`: the leave-last-out retrieval benchmark of the literature.

Where it sits: beside `vidrec experiment movielens-table` (pipelines/experiments_real.py, a
hold-out of each user's last N watches) and `vidrec run` (a global time split). This is the
protocol most retrieval papers report (one held-out item per user, the whole catalog ranked),
so our candidate generator's numbers can be set beside theirs. It reuses the candidate
generator's training and scoring of movielens-table (`experiments_real.validate_cg`,
`refit_and_test_cg`) and the
retrieval baselines and grids of `vidrec run` (`candidate_gen.baselines`,
`pipelines.retrieval_baselines.grids`).

Protocol:
* Watches: one per (user, item); a user's later watches of an item they watched before are
  dropped (counted). Each user's watches are ordered by timestamp; watches in the same second
  are ordered by a fixed hash of (user id, item id) (`tie_order`), so the split depends
  neither on the rows' order in the files nor on how item ids were numbered.
* Test target: each user's last watch. Validation target: the one before it. Users with
  fewer than 3 watches are not evaluated (counted); their watches stay in training.
* Validation: every model is fitted on all watches but the two held out per user, and every
  hyperparameter is chosen on the validation targets only: the candidate generator's epochs
  (early stopping on validation HR@`candidate_gen.valid_k`, patience `candidate_gen.patience`,
  at most `candidate_gen.epochs`) and the recent watches its user tower averages
  (`features.max_history` in CG_HISTORY_GRID, unless --set fixes it; torch-rechub's
  YoutubeDNN, fed by our featurizer, gets the length our CG chose on the same seed), recent
  popular's window, item-kNN's neighbours, EASE's L2
  penalty, PureSVD's rank (the grids of the config's [retrieval_baselines]; each chosen by
  validation HR@50, ties to the first in grid order), torch-rechub's epochs as ours. Test: the
  chosen settings are refitted on every watch but the test targets (the validation targets
  included) and scored once on the test targets.
* Serving: a user is served from all of their own training watches (at the second after the
  target's; the featurizer and the baselines read the history strictly before it). The user's
  searches at or after the target's second are removed (MovieLens tags are searches: a tag
  written with the rating would give the target away). Other users' later watches stay in
  training, as in the literature's leave-last-out; `vidrec run` is the global time split.
* Ranking: every catalog item, each user's training items excluded. Items without a training
  watch can be retrieved only by models that score items from their features (our candidate
  generator's item tower); item-id models (the baselines, torch-rechub) never rank them.
* Metrics (`evaluation.retrieval.retrieval_metrics`; with one target recall@k is HR@k): HR@10,
  HR@50, HR@100 and NDCG@10 in the table; the JSON keeps every metric of that function
  (coverage, popularity buckets).
* Recent popular counts the watches of the last W seconds of the training log (its serving
  time is the end of the log, one list for everybody); its windows are span / 2^j of the
  validation training log's span.
* EASE is skipped, with the reason in the table, when one dense item x item float64 matrix
  would exceed `retrieval_baselines.ease_max_gb`.

Seeds and timing: our candidate generator and torch-rechub's YoutubeDNN are trained once per
seed (initialisation, shuffling, negatives) and reported as mean ± sample std over the seeds;
the baselines are deterministic (PureSVD's randomized solver has the fixed seed 0) and run
once. Beside every number: the wall seconds of fitting including the tuning (every grid
value or epoch fitted and scored on validation, plus the final refit) and of the final refit
alone, on the machine named in the output (CPU, cores, load average), at the git commit named
there.

torch-rechub (`--rechub-python PATH`): its YoutubeDNN runs in a separate virtual environment
(`pipelines.rechub`; never a vidrec dependency) on exactly our candidate generator's training
examples and serving features (our featurizer, fitted on the same training log), with its own
per-example negatives (`--rechub-negatives`, drawn by its `negative_sample`), its temperature
0.02, and our batch size, learning rate, embedding size and user tower widths.

Outputs (written atomically): OUT/loo.json (every row labelled with data set, protocol, seed,
machine and commit) and OUT/loo.md (generated from that JSON by `render_markdown`). Each
(method, seed) result is also kept in OUT/rows/ and reused by a rerun with the same data,
config and settings, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vidrec.candidate_gen.baselines import MemoryBudgetExceeded, MostPopular, RetrievalBaseline
from vidrec.features.atomic import atomic_write_json, atomic_write_text
from vidrec.features.examples import CandidateFeaturizer
from vidrec.features.stats import log_statistics
from vidrec.features.tables import Dataset
from vidrec.pipelines.config import AUTO, UsageError, config_hash, load_preset, resolve_config
from vidrec.pipelines.experiments_real import (
    KS,
    Holdout,
    evaluate_rankings,
    fit_cg,
    load_saved_row,
    log_split,
    query_features,
    refit_and_test_cg,
    searches_before,
    validate_cg,
)
from vidrec.pipelines.names import EXPERIMENTS_LOO, LOO_METHODS, RECHUB_NEGATIVES
from vidrec.pipelines.rechub import (
    RECHUB_TEMPERATURE,
    RechubWorker,
    export_examples,
    export_queries,
    rechub_python,
    rechub_version,
)
from vidrec.pipelines.retrieval_baselines import NAMES, TUNE_K, grids
from vidrec.pipelines.run import cg_config, load_source
from vidrec.pipelines.rundir import cpu_model, git_commit

log = logging.getLogger("vidrec")

__all__ = [
    "EXPERIMENTS_LOO",
    "METHODS",
    "LeaveLastOut",
    "leave_last_out",
    "render_markdown",
    "run_loo",
    "tie_order",
]

PROTOCOL = "leave-last-out"
PROTOCOL_VERSION = 2  # part of every saved row's key: a changed protocol recomputes
MIN_WATCHES = 3
# the recent watches our CG's user tower averages, chosen on the validation targets like the
# baselines' settings: a short history for the next watch, the preset's long one for tastes
CG_HISTORY_GRID: tuple[int, ...] = (3, 10, 50)

METHODS = LOO_METHODS
STOCHASTIC: frozenset[str] = frozenset({"cg", "rechub"})
COLUMNS: dict[str, str] = {
    "hitrate@10": "HR@10",
    "hitrate@50": "HR@50",
    "hitrate@100": "HR@100",
    "ndcg@10": "NDCG@10",
}
TIMES: dict[str, str] = {
    "fit_seconds": "fit s (incl. tuning)",
    "final_fit_seconds": "final fit s",
}


# ----------------------------------------------------------------------------- the split


def tie_order(user_id: np.ndarray, item_id: np.ndarray) -> np.ndarray:
    """Return (W,) uint64 keys ordering watches of the same user in the same second: a fixed
    hash (SplitMix64's finaliser) of (user id, item id). It does not depend on the rows' order
    and is not monotone in the item id (MovieLens numbers movies roughly by release)."""
    u = np.asarray(user_id).astype(np.uint64)
    i = np.asarray(item_id).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = u * np.uint64(0x9E3779B97F4A7C15) + i
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class LeaveLastOut:
    """The validation and test holdouts of one target each per evaluated user."""

    valid: Holdout  # train: every watch but the last two per evaluated user
    test: Holdout  # train: every watch but the last per evaluated user
    n_users: int  # users with a watch
    n_users_skipped: int  # users with fewer than `min_watches` (distinct) watches
    n_repeat_watches: int  # later watches of an item the user watched before (dropped)
    min_watches: int

    def summary(self) -> dict[str, Any]:
        """Return the split's sizes as a JSON-ready dict."""
        return {
            "min_watches": self.min_watches,
            "users": self.n_users,
            "users_evaluated": int(len(self.test.users)),
            "users_skipped_fewer_watches": self.n_users_skipped,
            "repeat_watches_dropped": self.n_repeat_watches,
            "training_watches_validation": int(len(self.valid.train.watches)),
            "training_watches_test": int(len(self.test.train.watches)),
        }


def leave_last_out(dataset: Dataset, min_watches: int = MIN_WATCHES) -> LeaveLastOut:
    """Return the leave-last-out split of `dataset` (module docstring)."""
    if isinstance(min_watches, bool) or not isinstance(min_watches, int) or min_watches < 3:
        raise ValueError(
            f"min_watches must be an integer >= 3 (a history, a validation and a test watch), "
            f"got {min_watches!r}"
        )
    w = dataset.watches
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in w.columns]
    if missing:
        raise ValueError(f"table 'watches' lacks column(s) {missing}; validate the data first")
    if len(w) == 0:
        raise ValueError("table 'watches' is empty: there is nothing to hold out")
    user = w["user_id"].to_numpy(np.int64)
    item = w["item_id"].to_numpy(np.int64)
    ts = w["timestamp"].to_numpy(np.int64)
    order = np.lexsort((item, tie_order(user, item), ts, user))  # (W,) per user, in time
    repeat = pd.DataFrame({"u": user[order], "i": item[order]}).duplicated().to_numpy()
    order = order[~repeat]  # each (user, item)'s first watch
    u, i, t = user[order], item[order], ts[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    counts = np.diff(np.r_[starts, len(u)])
    ok = counts >= min_watches
    users = u[starts[ok]]  # (U,) sorted
    last = starts[ok] + counts[ok] - 1  # (U,) positions of the test targets
    second = last - 1  # (U,) of the validation targets

    kept = np.zeros(len(w), dtype=bool)
    kept[order] = True
    test_rows = kept.copy()
    test_rows[order[last]] = False
    valid_rows = test_rows.copy()
    valid_rows[order[second]] = False
    per_user = np.split(i[np.repeat(ok, counts)], np.cumsum(counts[ok])[:-1])

    def holdout(rows: np.ndarray, target: np.ndarray, n_before: int) -> Holdout:
        train = dataclasses.replace(
            dataset,
            watches=w.loc[rows],
            searches=searches_before(dataset.searches, users, t[target]),
        )
        return Holdout(
            train=train,
            users=users,
            at_time=t[target] + 1,  # the history is every training watch of the user
            history=[np.sort(x[: len(x) - n_before]) for x in per_user],
            targets=[np.array([x], dtype=np.int64) for x in i[target]],
            n_last=1,
            n_held_out=int(len(target)),
            n_users_without_history=0,
            n_users_without_targets=0,
        )

    return LeaveLastOut(
        valid=holdout(valid_rows, second, 2),
        test=holdout(test_rows, last, 1),
        n_users=int(len(starts)),
        n_users_skipped=int((~ok).sum()),
        n_repeat_watches=int(repeat.sum()),
        min_watches=int(min_watches),
    )


# ----------------------------------------------------------------------------- models


def machine() -> dict[str, Any]:
    """Return the machine that measures: processor, CPU model, cores, torch threads, load."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average": load,
    }


def baseline_models(
    config: dict[str, Any], methods: Sequence[str], valid_train: Dataset
) -> dict[str, tuple[RetrievalBaseline, list[Any], Any]]:
    """Return, per baseline in `methods`: (an unfitted model, its grid, a label of a value)."""
    section = dict(config["retrieval_baselines"]) | {n: n in methods for n in NAMES}
    out: dict[str, tuple[RetrievalBaseline, list[Any], Any]] = {}
    if "most_popular" in methods:
        out["most_popular"] = (MostPopular(), [None], lambda _: "-")
    # the solver seed of PureSVD is fixed: the baselines run once, not per seed
    out.update(grids(section | {"seed": 0}, log_split(valid_train)))
    return out


def _recommend(model: RetrievalBaseline, holdout: Holdout, k: int) -> np.ndarray:
    ids, _ = model.recommend(holdout.users, k, at_time=holdout.at_time, exclude=holdout.history)
    return ids


def tune_baseline(
    model: RetrievalBaseline, grid: Sequence[Any], valid: Holdout, catalog: np.ndarray
) -> tuple[Any, list[float]]:
    """Return (the chosen grid value, validation HR@TUNE_K per value): each value fitted on
    the validation training log and scored on the validation targets (the first best wins)."""
    if model.hyperparameter is None:
        return grid[0], []
    end = log_split(valid.train).train_end
    scores = []
    for _, fitted in model.fit_grid(valid.train, end, grid):
        m = evaluate_rankings(_recommend(fitted, valid, TUNE_K), valid, catalog, (TUNE_K,))
        scores.append(m[f"hitrate@{TUNE_K}"])
    return grid[int(np.argmax(scores))], scores


def run_baseline(
    name: str,
    spec: tuple[RetrievalBaseline, list[Any], Any],
    split: LeaveLastOut,
    catalog: np.ndarray,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Return (row, test rankings (U, max(KS)) or None when skipped) of one baseline: tuned
    on validation, refitted on the test training log, scored on the test targets."""
    model, grid, label = spec
    t0 = time.perf_counter()
    try:
        chosen, scores = tune_baseline(model, grid, split.valid, catalog)
        t1 = time.perf_counter()
        params = model.get_params()
        if model.hyperparameter is not None:
            params[model.hyperparameter] = chosen
        final = type(model)(**params).fit(split.test.train, log_split(split.test.train).train_end)
        t2 = time.perf_counter()
    except MemoryBudgetExceeded as exc:
        return {"skipped": str(exc)}, None
    ids = _recommend(final, split.test, max(KS))
    row = {
        "setting": label(chosen),
        "hyperparameter": model.hyperparameter,
        "validation": {
            "metric": f"hitrate@{TUNE_K}",
            "grid": [label(v) for v in grid] if scores else [],
            "scores": scores,
        },
        "valid_hitrate@50": max(scores) if scores else None,
        "tune_seconds": t1 - t0,
        "final_fit_seconds": t2 - t1,
        "test": evaluate_rankings(ids, split.test, catalog, KS),
    }
    return row, ids


def _code_to_id(featurizer: CandidateFeaturizer) -> np.ndarray:
    """(codes,) int64 item id of every item code of the featurizer; -1 for code 0."""
    vocab = featurizer.item_vocab_
    inverse = vocab.inverse_transform(np.arange(len(vocab)))
    return np.array([-1, *inverse[1:]], dtype=np.int64)


class _RechubSide:
    """torch-rechub's YoutubeDNN trained on one holdout's training log, ranking its users."""

    def __init__(
        self,
        config: dict[str, Any],
        holdout: Holdout,
        items: pd.DataFrame,
        python: Path,
        args: dict[str, Any],
        directory: Path,
        stack: contextlib.ExitStack,
    ) -> None:
        cfg, examples, _, featurizer = fit_cg(config, holdout.train, items)
        directory.mkdir(parents=True, exist_ok=True)
        data = directory / "examples.npz"
        export_examples(
            data,
            examples,
            examples.take(np.zeros(0, np.int64)),
            embedding_dim=cfg.embedding_dim,
            user_layers=tuple(cfg.user_layers),
        )
        self.queries = directory / "queries.npz"
        self.out = directory / "ranked.npz"
        vocab = featurizer.item_vocab_
        exclude = [c[c > 0] for c in (vocab.transform(h) for h in holdout.history)]
        feats = query_features(featurizer, holdout.train, holdout.users, holdout.at_time)
        export_queries(self.queries, feats, exclude)
        self.ids = _code_to_id(featurizer)
        self.examples = len(examples)
        logfile = stack.enter_context(open(directory / "worker.log", "w"))
        self.worker = stack.enter_context(RechubWorker(python, data, args, logfile))

    def epoch(self) -> dict[str, Any]:
        return self.worker.ask("epoch")

    def rankings(self, k: int) -> np.ndarray:
        return self.ids[self.worker.rank(self.queries, self.out, k)]


def run_rechub(
    config: dict[str, Any],
    split: LeaveLastOut,
    items: pd.DataFrame,
    catalog: np.ndarray,
    python: Path,
    negatives: int,
    workdir: Path,
) -> dict[str, Any]:
    """Return the row of torch-rechub's YoutubeDNN: epochs early-stopped on validation HR@
    `valid_k` as ours, retrained on the test training log for that many epochs, scored."""
    cfg = cg_config(config)
    args = {
        "batch_size": cfg.batch_size,
        "negatives": negatives,
        "temperature": RECHUB_TEMPERATURE,
        "lr": cfg.learning_rate,
        "seed": int(config["seed"]),
        "threads": torch.get_num_threads(),
    }
    ks = sorted({*KS, cfg.valid_k})
    workdir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        t0 = time.perf_counter()
        best, best_epoch = -1.0, 0
        with contextlib.ExitStack() as stack:
            side = _RechubSide(config, split.valid, items, python, args, Path(tmp) / "v", stack)
            for epoch in range(1, cfg.epochs + 1):
                reply = side.epoch()
                m = evaluate_rankings(side.rankings(max(ks)), split.valid, catalog, ks)
                score = m[f"recall@{cfg.valid_k}"]
                records.append(
                    {
                        "epoch": epoch,
                        "train_loss": reply["loss"],
                        "valid_hitrate@50": m["hitrate@50"],
                    }
                )
                log.info("  torch-rechub epoch %d: valid HR@%d %.4f", epoch, cfg.valid_k, score)
                if score > best:
                    best, best_epoch = score, epoch
                elif cfg.patience > 0 and epoch - best_epoch >= cfg.patience:
                    break
        t1 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            side = _RechubSide(config, split.test, items, python, args, Path(tmp) / "t", stack)
            for _ in range(best_epoch):
                side.epoch()
            t2 = time.perf_counter()
            ids = side.rankings(max(KS))
            examples = side.examples
    return {
        "setting": f"epochs={best_epoch}",
        "validation": {"metric": f"hitrate@{cfg.valid_k}", "curve": records},
        "valid_hitrate@50": records[best_epoch - 1]["valid_hitrate@50"],
        "training_examples": int(examples),
        "negatives_per_example": int(negatives),
        "temperature": RECHUB_TEMPERATURE,
        "rechub_version": rechub_version(python),
        "tune_seconds": t1 - t0,
        "final_fit_seconds": t2 - t1,
        "test": evaluate_rankings(ids, split.test, catalog, KS),
    }


def _cg_row(
    config: dict[str, Any],
    split: LeaveLastOut,
    items: pd.DataFrame,
    catalog: np.ndarray,
    workdir: Path,
    history_grid: Sequence[int] = CG_HISTORY_GRID,
) -> dict[str, Any]:
    """Return the row of our candidate generator: for each history length of `history_grid`
    (the recent watches the user tower averages) a model early-stopped on the validation
    targets (`experiments_real.validate_cg`); the length and epoch count with the best
    validation HR@50 (ties: the first in grid order) are refitted on every watch but the test
    targets and scored once (`experiments_real.refit_and_test_cg`). Validation numbers are
    named as hit rates (one target per user: recall@k = HR@k)."""
    t0 = time.perf_counter()
    tried: list[tuple[float, int, int, list[dict[str, float]]]] = []
    for length in history_grid:
        cfg = _with_history(config, length)
        records, best_epoch = validate_cg(
            cfg, split.valid, items, catalog, workdir / f"history{length}"
        )
        score = float(records[best_epoch - 1]["valid_recall@50"])
        log.info("  our CG, %d recent watches: validation HR@50 %.4f at epoch %d",
                 length, score, best_epoch)
        tried.append((score, length, best_epoch, records))
    score, length, best_epoch, records = max(tried, key=lambda t: t[0])  # first wins a tie
    t1 = time.perf_counter()
    row = refit_and_test_cg(_with_history(config, length), best_epoch, split.test, items, catalog)
    curve = [
        {
            "epoch": r["epoch"],
            "train_main_loss": r["train_main_loss"],
            "valid_hitrate@50": r["valid_recall@50"],
        }
        for r in records
    ]
    return {
        "setting": f"max_history={length}, epochs={best_epoch}",
        "max_history": int(length),
        "validation": {
            "metric": f"hitrate@{cg_config(config).valid_k}",
            "curve": curve,
            "history_grid": {str(h): {"hitrate@50": s, "epochs": e} for s, h, e, _ in tried},
        },
        "valid_hitrate@50": score,
        "tune_seconds": t1 - t0,
        **row,
    }


def _with_history(config: dict[str, Any], length: int) -> dict[str, Any]:
    """`config` with features.max_history = length (a copy)."""
    out = copy.deepcopy(config)
    out["features"]["max_history"] = int(length)
    return out


# ----------------------------------------------------------------------------- experiment


def run_loo(
    data_dir: str | Path,
    *,
    out: str | Path,
    dataset: str = "movielens",
    seeds: Sequence[int] = (0, 1, 2),
    preset: str = AUTO,
    overrides: list[str] | None = None,
    methods: Sequence[str] | None = None,
    rechub_python_path: str | Path | None = None,
    rechub_negatives: int = RECHUB_NEGATIVES,
) -> dict[str, Any]:
    """Return the result dict (rows, table, markdown) after writing OUT/loo.json and
    OUT/loo.md. `methods` (default: every one the config enables, torch-rechub only with
    `rechub_python_path`) selects the models."""
    if not seeds:
        raise UsageError("give at least one seed")
    # which methods the config enables does not depend on the log ("auto" derives model sizes)
    base_config = resolve_config("default" if preset == AUTO else preset, overrides or [], seed=0)
    if methods is None:
        enabled = base_config["retrieval_baselines"]
        chosen = ["cg", "most_popular", *(n for n in NAMES if enabled[n])]
        if rechub_python_path is not None:
            chosen.append("rechub")
    else:
        chosen = list(dict.fromkeys(methods))
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if isinstance(rechub_negatives, bool) or not isinstance(rechub_negatives, int) or (
        rechub_negatives < 1
    ):
        raise UsageError(f"rechub_negatives must be a positive integer, got {rechub_negatives!r}")
    python: Path | None = None
    if "rechub" in chosen:
        if rechub_python_path is None:
            raise UsageError(
                "method rechub needs --rechub-python PATH, the interpreter of a separate "
                "virtual environment with torch-rechub"
            )
        try:
            python = rechub_python(rechub_python_path)
        except RuntimeError as exc:  # the interpreter runs but has no torch-rechub
            raise UsageError(str(exc)) from None
    out = Path(out)
    t0 = time.perf_counter()
    data, info = load_source(dataset, data_dir)
    stats = None
    if preset == AUTO:  # settings derived from the log itself, as `vidrec run --data` does
        split_cfg = load_preset("default")["split"]
        stats = log_statistics(data, float(split_cfg["train_end"]), float(split_cfg["valid_end"]))
        base_config = resolve_config(AUTO, overrides or [], seed=0, data_stats=stats)
    catalog = np.unique(data.items["item_id"].to_numpy(np.int64))
    split = leave_last_out(data)
    labels = {
        "dataset": data.name,
        "protocol": PROTOCOL,
        "machine": machine(),
        "commit": git_commit(),
    }
    protocol = {
        "name": PROTOCOL,
        "version": PROTOCOL_VERSION,
        "dataset": data.name,
        "data_dir": str(data_dir),
        "layout": dataset,
        "catalog_items": int(len(catalog)),
        **split.summary(),
        "tuning_metric": f"HR@{TUNE_K}",
        "ks": list(KS),
    }
    log.info(
        "%s: %d users evaluated (%d skipped with fewer than %d watches), catalog %d (%.1f s)",
        data.name,
        len(split.test.users),
        split.n_users_skipped,
        split.min_watches,
        len(catalog),
        time.perf_counter() - t0,
    )
    key_base = {
        "experiment": "loo",
        "protocol_version": PROTOCOL_VERSION,
        "dataset": data.name,
        "counts": data.counts(),
        "min_watches": split.min_watches,
    }
    rows: list[dict[str, Any]] = []
    specs = baseline_models(base_config, chosen, split.valid.train)
    # a history length the user set is kept; else it is chosen on validation (CG_HISTORY_GRID)
    fixed = any(o.split("=", 1)[0].strip() == "features.max_history" for o in overrides or [])
    grid = (int(base_config["features"]["max_history"]),) if fixed else CG_HISTORY_GRID
    key_base["cg_history_grid"] = list(grid)
    history: dict[int | None, int] = {}  # seed -> the history length our CG used
    for method in chosen:
        runs = list(seeds) if method in STOCHASTIC else [None]
        for seed in runs:
            config = resolve_config(
                preset, overrides or [], seed=0 if seed is None else seed, data_stats=stats
            )
            # a baseline depends on its own section only: other settings do not recompute it
            hashed = config if method in STOCHASTIC else config["retrieval_baselines"]
            key = key_base | {"method": method, "seed": seed, "config": config_hash(hashed)}
            if method == "rechub":
                key["rechub_negatives"] = rechub_negatives
            tag = method if seed is None else f"{method}_seed{seed}"
            path = out / "rows" / f"{tag}.json"
            row = load_saved_row(path, key)
            if row is None:
                if method == "cg":
                    row = _cg_row(config, split, data.items, catalog, out / "work" / tag, grid)
                elif method == "rechub":
                    assert python is not None
                    if seed in history:  # our CG's history length on this seed
                        config = _with_history(config, history[seed])
                    row = run_rechub(
                        config,
                        split,
                        data.items,
                        catalog,
                        python,
                        rechub_negatives,
                        out / "work" / tag,
                    )
                else:
                    row, _ = run_baseline(method, specs[method], split, catalog)
                if "skipped" not in row:
                    row["fit_seconds"] = row["tune_seconds"] + row["final_fit_seconds"]
                row = {"method": method, "label": METHODS[method], "seed": seed, **labels, **row}
                atomic_write_json(path, {"key": key, "row": row})
            if "skipped" in row:
                log.info("%-14s skipped: %s", method, row["skipped"])
            else:
                log.info(
                    "%-14s seed %s: test HR@50 %.4f (validation %.4f, %s), fit %.1f s",
                    method,
                    "-" if seed is None else seed,
                    row["test"]["hitrate@50"],
                    float("nan") if row["valid_hitrate@50"] is None else row["valid_hitrate@50"],
                    row["setting"],
                    row["fit_seconds"],
                )
            if method == "cg" and "max_history" in row:
                history[seed] = int(row["max_history"])
            rows.append(row)
    result: dict[str, Any] = {
        "experiment": "loo",
        "label": f"{data.name}, {PROTOCOL}",
        **labels,
        "protocol": protocol,
        "preset": preset,
        "overrides": list(overrides or []),
        "seeds": [int(s) for s in seeds],
        "methods": chosen,
        "rows": rows,
        "table": aggregate(rows, chosen),
    }
    result["markdown"] = render_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "loo.json", result)
    atomic_write_text(out / "loo.md", result["markdown"])
    return result


def _mean_std(values: list[float]) -> dict[str, float | None]:
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()) if len(v) else None,
        "std": float(v.std(ddof=1)) if len(v) > 1 else None,
    }


def aggregate(rows: list[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Return one table entry per method: mean and sample std (ddof 1; None for one run) of
    each metric and time over its runs, with the labels of the runs it summarises."""
    table = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        entry: dict[str, Any] = {
            "method": method,
            "label": METHODS[method],
            "stochastic": method in STOCHASTIC,
            "runs": len(mine),
            "seeds": [r["seed"] for r in mine],
            "dataset": sorted({r["dataset"] for r in mine}),
            "protocol": sorted({r["protocol"] for r in mine}),
            "commit": sorted({str(r["commit"]) for r in mine}),
            "machine": sorted(
                {f"{r['machine']['cpu']}, {r['machine']['cpu_count']} cores" for r in mine}
            ),
        }
        done = [r for r in mine if "skipped" not in r]
        if not done:
            entry["skipped"] = mine[0]["skipped"] if mine else "not run"
            table.append(entry)
            continue
        for col in (*COLUMNS, "valid_hitrate@50"):
            vals = [r["test"][col] if col in COLUMNS else r[col] for r in done]
            entry[col] = _mean_std([v for v in vals if v is not None])
        for col in TIMES:
            entry[col] = _mean_std([r[col] for r in done])
        entry["settings"] = [r["setting"] for r in done]
        table.append(entry)
    return table


def _cell(stat: dict[str, float | None], fmt: str) -> str:
    if stat["mean"] is None:
        return "n/a"
    if stat["std"] is None:
        return format(stat["mean"], fmt)
    return f"{format(stat['mean'], fmt)} ± {format(stat['std'], fmt)}"


def render_markdown(result: dict[str, Any]) -> str:
    """Return the markdown report of a result dict (as saved in loo.json)."""
    p = result["protocol"]
    m = result["machine"]
    name = result["dataset"]
    head = (
        f"# {name}: retrieval, {PROTOCOL}\n\n"
        f"Every number is measured on **{name}, {PROTOCOL}** (protocol version "
        f"{p['version']}): each of {p['users_evaluated']:,} users' last watch is the test "
        f"target and the one before it the validation target ({p['users_skipped_fewer_watches']:,}"
        f" users with fewer than {p['min_watches']} watches skipped; "
        f"{p['repeat_watches_dropped']:,} repeat watches dropped; ties in time ordered by a "
        f"fixed hash of (user, item)). All {p['catalog_items']:,} catalog items are ranked, each "
        "user's training items excluded. Every hyperparameter was chosen on the validation "
        f"targets ({p['tuning_metric']}; the CG's and torch-rechub's epochs by early "
        "stopping), then refitted on the training and validation watches and scored once on "
        "the test targets.\n\n"
        f"Machine: {m['cpu']} ({m['processor']}), {m['cpu_count']} cores, {m['torch_threads']} "
        f"torch threads, load average {m['load_average']} at the start; commit "
        f"{result['commit']}; preset `{result['preset']}`"
        + (f" with {', '.join(result['overrides'])}" if result["overrides"] else "")
        + f"; seeds {result['seeds']}.\n\n"
    )
    cols = [*COLUMNS.values(), "valid HR@50", *TIMES.values(), "setting", "runs"]
    lines = [
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "--:|" * (len(cols) - 2) + "---|---|",
    ]
    notes = []
    for e in result["table"]:
        if "skipped" in e:
            lines.append(f"| {e['label']} | " + " | ".join(["—"] * (len(cols) - 1)) + " | 0 |")
            notes.append(f"- {e['label']} skipped: {e['skipped']}")
            continue
        cells = [_cell(e[c], ".4f") for c in (*COLUMNS, "valid_hitrate@50")]
        cells += [_cell(e[c], ".2f") for c in TIMES]
        distinct = list(dict.fromkeys(e["settings"]))
        cells.append(distinct[0] if len(distinct) == 1 else " / ".join(e["settings"]))
        n = e["runs"]
        runs = f"{n} seed{'s' if n != 1 else ''}" if e["stochastic"] else "1 (deterministic)"
        lines.append(f"| {e['label']} | " + " | ".join(cells) + f" | {runs} |")
    foot = (
        "\n\nMean ± sample std (ddof 1) over seeds for the stochastic models (our CG, "
        "torch-rechub's YoutubeDNN: initialisation, shuffling, negatives); the baselines are "
        "deterministic (PureSVD's solver seed is fixed) and ran once. Fit seconds are wall "
        "time: including the tuning (every grid value or epoch fitted and scored on "
        "validation, and the final refit), and the final refit alone. HR@k = the share of "
        "users whose test item is in the top k.\n"
    )
    return head + "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + foot
