"""`vidrec run`: data -> split -> candidate generator -> index -> retrieval -> ranker -> slates -> report.

Time protocol (every number in the report says which window it comes from):

    [start ............ train_end) [train_end ...... valid_end) [valid_end ........ end)
     candidate generator labels      ranker training impressions   test: retrieval targets,
     (example age relative to        (CG scores are out of sample:  held-out impressions,
      train_end)                      the CG never saw them)          end-to-end slates at valid_end

* The candidate generator trains on next-watch labels before `train_end` and stops early on
  labels in the ranker window.
* The ranker trains on impressions in [train_end, valid_end) (the latest share held out for
  early stopping); its candidate-generator score feature comes from the CG trained before.
* Test: held-out users are served at `valid_end` from their history strictly before it;
  retrieval targets are what they watched in the test window; ranking metrics are on test
  impressions; on the simulated world every slate is also scored by the world's ground truth.
* Retrieval baselines (`pipelines.retrieval_baselines`: recent popular, item-kNN, EASE,
  PureSVD) choose their hyperparameter on the ranker window (fitted before `train_end`, users
  served at `train_end`), then are refitted on everything before `valid_end` and tested on
  the same users, exclusions and targets as the candidate generator.
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec.candidate_gen.index import CandidateIndex, ExactIndex, make_index
from vidrec.candidate_gen.retrieve import Retriever
from vidrec.candidate_gen.train import TrainedCandidateGenerator, train_candidate_generator
from vidrec.evaluation.retrieval import (
    HINDSIGHT,
    ann_recall,
    freshness_buckets,
    history_groups,
    popularity_buckets,
    retrieval_metrics,
    single_list_in_hindsight,
)
from vidrec.features.atomic import atomic_path, atomic_write_json
from vidrec.features.examples import CandidateExamples, CandidateFeaturizer
from vidrec.features.ids import to_data_ids
from vidrec.features.split import TimeSplit
from vidrec.features.tables import Dataset
from vidrec.pipelines.config import (
    DATA_SOURCES,
    ConfigError,
    cg_config,
    index_kind,
    index_settings,
    none_if_zero,
)
from vidrec.pipelines.context import RunContext, seed_everything
from vidrec.pipelines.rundir import (
    RunDir,
    check_data_outside_run,
    check_index_matches_model,
    load_served_index,
)

log = logging.getLogger("vidrec")

STAGES: tuple[str, ...] = (
    "data",
    "candidate_gen",
    "index",
    "retrieval",
    "ranker",
    "ranking_eval",
    "end_to_end",
    "report",
)


# ----------------------------------------------------------------------------- helpers
def save_frame(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))



def featurizer_from_config(config: dict[str, Any]) -> CandidateFeaturizer:
    return CandidateFeaturizer(**config["features"])


def heldout_users(ctx: RunContext) -> np.ndarray:
    """Users with at least one watch in the test window (a seeded sample of max_users)."""
    ds, split = ctx.dataset(), ctx.split()
    lo, hi = split.bounds("test")
    w = ds.watches
    t = w["timestamp"].to_numpy()
    users = np.unique(w["user_id"].to_numpy()[(t >= lo) & (t < hi)])
    cap = int(ctx.config["evaluation"]["max_users"])
    if len(users) > cap:
        rng = np.random.default_rng(ctx.seed + 101)
        users = np.sort(rng.choice(users, size=cap, replace=False))
    return users


def watched_lists(
    ds_watches: pd.DataFrame, users: np.ndarray, lo: int, hi: int
) -> list[np.ndarray]:
    """Distinct items each user watched in [lo, hi), one array per user (in `users` order)."""
    w = ds_watches
    t = w["timestamp"].to_numpy()
    sel = w.loc[(t >= lo) & (t < hi), ["user_id", "item_id"]].drop_duplicates()
    sel = sel[sel["user_id"].isin(users)]
    pos = pd.Index(users).get_indexer(sel["user_id"].to_numpy())
    order = np.argsort(pos, kind="stable")
    items = sel["item_id"].to_numpy()[order]
    counts = np.bincount(pos, minlength=len(users))
    return np.split(items, np.cumsum(counts)[:-1])


def available_items(ds_items: pd.DataFrame, at_time: int) -> np.ndarray:
    """Boolean mask of catalog items uploaded at or before `at_time` (servable then)."""
    return ds_items["upload_time"].to_numpy() <= at_time


# ----------------------------------------------------------------------------- stages


def load_source(
    source: str, path: str | Path, *, columns: dict[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """(Dataset, info) of a data directory: the contract layout ("dir") or an official
    MovieLens / KuaiRand-Pure layout converted on the fly. `columns` is a config's
    `data.columns`: the declared types of extra columns of users and items."""
    from vidrec.features.schema import declare_columns, declared_columns

    declared = declared_columns(columns)
    if source == "dir":
        from vidrec.features.io import read_dataset

        ds, report = read_dataset(path, columns=declared)
        return ds, {"validation": report.to_dict()}
    if source == "movielens":
        from vidrec.features.sources.movielens import load_movielens as load
    elif source == "kuairand":
        from vidrec.features.sources.kuairand import load_kuairand as load
    else:
        raise ValueError(
            f"unknown data source {source!r}; choose one of {', '.join(DATA_SOURCES)}"
        )
    ds, info = load(path)
    return declare_columns(ds, declared), info


def stage_data(ctx: RunContext, out: Path) -> dict[str, Any]:
    cfg = ctx.config
    info: dict[str, Any] = {}
    if ctx.is_synthetic:
        world = ctx.world()
        ds = world.dataset
        if cfg["data"].get("columns"):
            from vidrec.features.schema import declare_columns, declared_columns

            ds = declare_columns(ds, declared_columns(cfg["data"]["columns"]))
        atomic_write_json(out / "world.json", world.card())
        info["source"] = f"synthetic world, preset {cfg['data']['world_preset']}, seed {ctx.seed}"
    else:
        source = cfg["data"]["source"]
        if ctx.data_dir is None:
            raise ValueError(f"data.source is {source!r} but no --data DIR was given")
        # `vidrec run --data DIR` without a preset has read the log already (its statistics)
        loaded = ctx.cache.pop("loaded_source", None)
        ds, info_source = loaded or load_source(
            source, ctx.data_dir, columns=cfg["data"].get("columns")
        )
        atomic_write_json(out / "source.json", info_source)
        info["source"] = f"{source} data from {ctx.data_dir}"
        if ds.name == "unnamed":
            ds.name = Path(ctx.data_dir).name
    from vidrec.features.preflight import preflight

    preflight(ds, cfg, simulated=ctx.is_synthetic)  # data a run cannot use fails here, untrained
    ctx.store_dataset(ds, out)
    split = config_split(cfg, ds)
    ctx.cache["split"] = split
    atomic_write_json(out / "split.json", split.to_dict())
    counts = ds.counts()
    atomic_write_json(out / "data.json", {"name": ds.name, "counts": counts, **info})
    return {"counts": counts, "split": split.to_dict()}


def validation_examples(
    config: dict[str, Any], featurizer: CandidateFeaturizer, ds: Dataset
) -> CandidateExamples:
    """The ranker window's examples the candidate generator's early stopping (and `vidrec
    tune`) measures Recall@K on, as `candidate_gen.valid_protocol` says: "next_watch" (each
    watch from the history before it) or "window" (every active user served once at the
    window's start, the new items watched there as targets: the test's protocol)."""
    if config["candidate_gen"].get("valid_protocol", "next_watch") == "window":
        return featurizer.window_examples(ds, "valid")
    cap = none_if_zero(config["candidate_gen"]["max_examples_per_user"])
    return featurizer.examples(ds, "valid", max_examples_per_user=cap)


def config_split(config: dict[str, Any], ds: Dataset) -> TimeSplit:
    """The time split a config's `split` fractions cut the log's watch time range into."""
    cut = config["split"]
    return TimeSplit.from_fractions(
        ds, train=cut["train_end"], valid=cut["valid_end"] - cut["train_end"]
    )


def fit_candidate_generator(
    config: dict[str, Any],
    ds: Dataset,
    split: TimeSplit,
    *,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> tuple[TrainedCandidateGenerator, CandidateFeaturizer, CandidateExamples, CandidateExamples]:
    """The candidate generator trained on [start, train_end) and early-stopped on the ranker
    window, with its featurizer and its training and validation examples."""
    cfg = cg_config(config)
    featurizer = featurizer_from_config(config).fit(ds, split)
    train = featurizer.examples(ds, "train", max_examples_per_user=cfg.max_examples_per_user)
    valid = validation_examples(config, featurizer, ds)
    log.info(
        "candidate generator: %d training examples (%d dropped by the per-user cap), %d validation",
        len(train),
        train.n_dropped_by_cap,
        len(valid),
    )
    model = train_candidate_generator(
        cfg,
        train,
        featurizer.item_features(ds),
        valid=valid if len(valid) else None,
        checkpoint_dir=checkpoint_dir,
        resume=checkpoint_dir is not None,
        progress=progress,
    )
    return model, featurizer, train, valid


def stage_candidate_gen(ctx: RunContext, out: Path) -> dict[str, Any]:
    """Train the candidate generator on [start, train_end), early-stopped on the ranker window's
    next watches: its scores are out of sample for the ranker's training rows. With
    `candidate_gen.refit_for_test` (the default) a second model with the same settings is then
    refit on everything before `valid_end` for the number of epochs the first one chose, and
    serves the test window (index, retrieval, end to end, `vidrec recommend`), as a production
    system retrains on its newest logs before it serves."""
    ds, split = ctx.dataset(), ctx.split()
    cfg = cg_config(ctx.config)
    t0 = time.perf_counter()
    model, featurizer, train, valid = fit_candidate_generator(
        ctx.config, ds, split, checkpoint_dir=out / "checkpoints", progress=ctx.progress
    )
    seconds = time.perf_counter() - t0
    model.save(out / "model")
    ctx.cache["cg_model"] = model
    atomic_write_json(out / "history.json", model.history)
    info: dict[str, Any] = {
        "train_examples": len(train),
        "valid_examples": len(valid),
        "examples_dropped_by_cap": int(train.n_dropped_by_cap),
        "train_seconds": round(seconds, 2),
        "featurizer": {k: v for k, v in featurizer.schema().items() if isinstance(v, int | str)},
        "models": {
            "model": f"trained on [start, train_end) = [{split.start}, {split.train_end}), "
            f"early-stopped on the next watches of [{split.train_end}, {split.valid_end}); "
            "scores the ranker's training rows (out of sample)",
        },
    }
    if not ctx.config["candidate_gen"].get("refit_for_test", False):
        info["models"]["model"] += "; also serves the test window (no refit)"
        return info
    epochs = best_epoch(model.history, cfg.epochs)
    refit_split = TimeSplit(
        start=split.start,
        train_end=split.valid_end,
        valid_end=split.valid_end,
        test_end=split.test_end,
    )
    refit_featurizer = featurizer_from_config(ctx.config).fit(ds, refit_split)
    refit_train = refit_featurizer.examples(
        ds, "train", max_examples_per_user=cfg.max_examples_per_user
    )
    log.info(
        "candidate generator for the test window: refit on %d examples before valid_end for "
        "%d epoch(s) (the epoch the first model stopped at)",
        len(refit_train),
        epochs,
    )
    t0 = time.perf_counter()
    serving = train_candidate_generator(
        cfg.replace(epochs=epochs),
        refit_train,
        refit_featurizer.item_features(ds),
        valid=None,
        checkpoint_dir=out / "serving_checkpoints",
        resume=True,
        progress=ctx.progress,
    )
    refit_seconds = time.perf_counter() - t0
    serving.save(out / "serving_model")
    ctx.cache["serving_cg_model"] = serving
    info["refit_examples"] = len(refit_train)
    info["refit_epochs"] = epochs
    info["refit_seconds"] = round(refit_seconds, 2)
    info["models"]["serving_model"] = (
        f"refit on [start, valid_end) = [{split.start}, {split.valid_end}) for {epochs} "
        "epoch(s) with the same settings; serves the test window (index, retrieval, end to "
        "end, vidrec recommend)"
    )
    return info


def best_epoch(history: list[dict[str, Any]], epochs: int) -> int:
    """The epoch whose validation recall was best (the trained epochs when none was measured)."""
    scored = [
        (float(v), int(h["epoch"]))
        for h in history
        for k, v in h.items()
        if k.startswith("valid_recall@")
    ]
    if not scored:
        return max(int(history[-1]["epoch"]) if history else epochs, 1)
    best = max(m for m, _ in scored)
    return min(e for m, e in scored if m == best)


def cg_model(ctx: RunContext, at_time: int | None = None) -> TrainedCandidateGenerator:
    """The candidate generator that is out of sample at `at_time`: the refit serving model from
    `valid_end` on (when the run refits one), otherwise the model trained before `train_end`."""
    if at_time is not None and int(at_time) >= ctx.split().valid_end:
        path = ctx.path / "candidate_gen" / "serving_model"
        if "serving_cg_model" in ctx.cache:
            return ctx.cache["serving_cg_model"]
        if (path / "model.pt").is_file():
            ctx.cache["serving_cg_model"] = TrainedCandidateGenerator.load(path)
            return ctx.cache["serving_cg_model"]
    if "cg_model" not in ctx.cache:
        ctx.cache["cg_model"] = TrainedCandidateGenerator.load(ctx.path / "candidate_gen" / "model")
    return ctx.cache["cg_model"]


def serving_item_vectors(ctx: RunContext, at_time: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the items servable at `at_time`, upload ages measured at that time, from
    the candidate generator that serves that time."""
    model, ds = cg_model(ctx, at_time), ctx.dataset()
    items = model.featurizer.item_features(ds, reference_time=at_time)
    ids, vecs = model.item_embeddings(items)
    keep = available_items(ds.items, at_time)
    return ids[keep], vecs[keep]


def stage_index(ctx: RunContext, out: Path) -> dict[str, Any]:
    split = ctx.split()
    kind, settings = index_settings(ctx.config["retrieval"])
    ids, vecs = serving_item_vectors(ctx, split.valid_end)
    t0 = time.perf_counter()
    index = make_index(kind, vecs, ids, seed=ctx.seed, **settings)
    build = time.perf_counter() - t0
    index.save(out / kind)
    with atomic_path(out / "item_vectors.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=ids, vectors=vecs)
    ctx.cache["served_index"] = index
    return {
        "index": kind,
        "items_indexed": int(len(ids)),
        "dim": int(vecs.shape[1]),
        "build_seconds": round(build, 3),
        "served_at": int(split.valid_end),
    }


def served_index(ctx: RunContext) -> CandidateIndex:
    """The index the run serves (retrieval.index), as the index stage saved it."""
    if "served_index" not in ctx.cache:
        fix = f"rebuild it: {ctx.rundir.redo_hint('index')}"
        index, where = load_served_index(ctx.path, ctx.config, fix)
        _check_index(ctx, where, index.dim, index.ids)
        ctx.cache["served_index"] = index
    return ctx.cache["served_index"]


def exact_index(ctx: RunContext) -> ExactIndex:
    if "exact" not in ctx.cache:
        path = ctx.path / "index" / "item_vectors.npz"
        with np.load(path, allow_pickle=False) as z:
            index = ExactIndex(z["vectors"], z["ids"])
        _check_index(ctx, path, index.dim, index.ids)
        ctx.cache["exact"] = index
    return ctx.cache["exact"]


def _check_index(ctx: RunContext, where: Path, dim: int, ids: np.ndarray) -> None:
    """Refuse an index loaded from disk that this run's candidate generator did not build."""
    check_index_matches_model(
        ctx.path,
        where,
        dim,
        ids,
        cg_model(ctx, ctx.split().valid_end).config.embedding_dim,
        ctx.dataset().items["item_id"].to_numpy(),
        f"rebuild it: {ctx.rundir.redo_hint('index')}",
    )


def _latency(fn, queries: np.ndarray, repeats: int = 3) -> dict[str, float]:
    """Per-query latency (ms) of fn(one query) over `queries`: p50/p99 over all calls."""
    times = []
    for _ in range(repeats):
        for q in queries:
            t0 = time.perf_counter()
            fn(q[None, :])
            times.append((time.perf_counter() - t0) * 1e3)
    arr = np.asarray(times)
    return {"p50_ms": float(np.median(arr)), "p99_ms": float(np.percentile(arr, 99))}


def machine_load() -> dict[str, Any]:
    """The machine's load when latencies are measured, recorded beside them: a p99 taken on a
    busy machine says little about the code. The 1-minute load average is None where the
    platform has no getloadavg (Windows)."""
    try:
        load: float | None = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    return {"load_avg_1m": load, "cpu_count": os.cpu_count()}


def stage_retrieval(ctx: RunContext, out: Path) -> dict[str, Any]:
    ds, split = ctx.dataset(), ctx.split()
    ev, r = ctx.config["evaluation"], ctx.config["retrieval"]
    ks = [int(k) for k in ev["ks"]]
    kmax = max(max(ks), int(r["n_candidates"]))
    users = heldout_users(ctx)
    t_serve = split.valid_end
    kind = index_kind(r)
    served = served_index(ctx)
    retriever = Retriever(cg_model(ctx, t_serve), served, ds)
    vectors = retriever.user_vectors(users, t_serve)
    history = watched_lists(ds.watches, users, split.start - 10**12, t_serve)
    exclude = history if r["exclude_watched"] else None
    targets = watched_lists(ds.watches, users, *split.bounds("test"))
    if r["exclude_watched"]:
        targets = [np.setdiff1d(t, h) for t, h in zip(targets, history, strict=True)]
    served_ids, served_scores = served.search(vectors, kmax, exclude)
    if kind == "exact":
        exact_ids = served_ids
    else:
        exact_ids = exact_index(ctx).search(vectors, kmax, exclude)[0]

    # popularity buckets from training-window watch counts; freshness at serving time
    w = ds.watches
    tr = split.slice(w, "train")
    counts = tr["item_id"].value_counts()
    all_items = ds.items["item_id"].to_numpy()
    pop = popularity_buckets(all_items, counts.reindex(all_items, fill_value=0).to_numpy())
    fresh = freshness_buckets(all_items, ds.items["upload_time"].to_numpy(), t_serve)
    buckets = {"popularity": pop, "freshness": fresh}
    n_catalog = int(available_items(ds.items, t_serve).sum())
    # users served without any watch before the serving time (new users: every model that
    # serves from a history serves them from none) and the others, each averaged apart
    groups = {"history": history_groups(history)}
    evaluate = partial(
        retrieval_metrics, ks=ks, catalog_size=n_catalog, item_bucket=buckets, query_group=groups
    )
    # the served index's metrics under its kind ("annoy", "hnsw"; one entry when it is exact)
    metrics = {kind: evaluate(served_ids, targets), "exact": evaluate(exact_ids, targets)}
    # baselines: most popular in the window before serving (train + valid), random
    before = w[w["timestamp"].to_numpy() < t_serve]
    top = before["item_id"].value_counts()
    servable = set(all_items[available_items(ds.items, t_serve)].tolist())
    top = top[top.index.isin(servable)]
    pop_ids = _top_excluding(top.index.to_numpy(), exclude, len(users), kmax)
    rng = np.random.default_rng(ctx.seed + 7)
    servable_arr = np.fromiter(servable, dtype=np.int64)
    rand_ids = _top_excluding(rng.permutation(servable_arr), exclude, len(users), kmax, rng=rng)
    metrics["most_popular"] = evaluate(pop_ids, targets)
    metrics["random"] = evaluate(rand_ids, targets)
    # an upper bound, not a baseline: the best list served to everyone, chosen on the targets
    hindsight = single_list_in_hindsight(targets)
    hindsight = hindsight[np.isin(hindsight, servable_arr)]
    metrics[HINDSIGHT] = evaluate(_top_excluding(hindsight, exclude, len(users), kmax), targets)
    # tuned baselines (recent popular, item-kNN, EASE, PureSVD): hyperparameters chosen on the
    # ranker window, then scored on these users, exclusions and targets
    from vidrec.pipelines.retrieval_baselines import evaluate_baselines

    tuned_metrics, tuned, tuned_slates = evaluate_baselines(
        ds,
        split,
        ctx.config,
        users=users,
        exclude=exclude,
        targets=targets,
        ks=ks,
        catalog_size=n_catalog,
        item_bucket=buckets,
        slate_k=int(ev["slate_k"]),
        query_group=groups,
    )
    metrics.update(tuned_metrics)
    with atomic_path(out / "baseline_slates.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, users=users, **tuned_slates)  # top slate_k per baseline (end to end)

    # ANN quality and speed of the served index against exact search on the same vectors
    ann: dict[str, Any] = {"index": kind}
    ann.update(
        {
            f"recall@{k}": ann_recall(served_ids[:, :k], exact_ids[:, :k])
            for k in (10, 100)
            if k <= kmax
        }
    )
    q = vectors[: min(200, len(vectors))]
    lat_served = _latency(lambda x: served.search(x, 100), q)
    lat_exact = (
        lat_served if kind == "exact" else _latency(lambda x: exact_index(ctx).search(x, 100), q)
    )
    ann.update(
        {
            f"{kind}_p50_ms": lat_served["p50_ms"],
            f"{kind}_p99_ms": lat_served["p99_ms"],
            "exact_p50_ms": lat_exact["p50_ms"],
            "exact_p99_ms": lat_exact["p99_ms"],
            "speedup_p50": lat_exact["p50_ms"] / max(lat_served["p50_ms"], 1e-9),
            "n_items": n_catalog,
            "n_queries_timed": int(len(q)),
            **machine_load(),
        }
    )
    # upload ages (days at serving time) of retrieved items vs the items watched next
    upload = pd.Series(ds.items["upload_time"].to_numpy(), index=all_items)

    def top50_ages(ids: np.ndarray) -> np.ndarray:
        top50 = ids[:, :50]
        return (t_serve - upload.reindex(top50[top50 >= 0].ravel()).to_numpy()) / 86400.0

    ret_age, ret_age_exact = top50_ages(served_ids), top50_ages(exact_ids)
    nxt = np.concatenate(targets) if targets else np.array([], dtype=np.int64)
    nxt_age = (t_serve - upload.reindex(nxt).to_numpy()) / 86400.0
    ages = {
        "retrieved_top50_days": _quantiles(ret_age),
        "retrieved_exact_top50_days": _quantiles(ret_age_exact),
        "watched_next_days": _quantiles(nxt_age),
    }
    with atomic_path(out / "upload_ages.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, retrieved=ret_age, retrieved_exact=ret_age_exact, watched_next=nxt_age)

    n_c = int(r["n_candidates"])
    cands = pd.DataFrame(
        {
            "user_id": np.repeat(users, n_c),
            "item_id": served_ids[:, :n_c].ravel(),
            "score": served_scores[:, :n_c].ravel(),
            "rank": np.tile(np.arange(1, n_c + 1), len(users)),
        }
    )
    cands = cands[cands["item_id"] >= 0].reset_index(drop=True)
    # the data's own ids (string ids as given; the end-to-end stage reads them back)
    save_frame(to_data_ids(ds.ids, cands), out / "candidates.parquet")
    result = {
        "index": kind,
        "metrics": metrics,
        "ann": ann,
        "upload_age": ages,
        "n_users": int(len(users)),
        "n_users_with_targets": int(sum(len(t) > 0 for t in targets)),
        "n_users_new": int(np.sum(groups["history"] == "new")),
        "served_at": int(t_serve),
        "exclude_watched": bool(r["exclude_watched"]),
        "tuned_baselines": tuned,
    }
    atomic_write_json(out / "retrieval.json", result)
    return {"n_users": int(len(users))}


def _quantiles(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {}
    qs = np.percentile(x, [10, 25, 50, 75, 90])
    return {
        "mean": float(x.mean()),
        "p10": qs[0],
        "p25": qs[1],
        "median": qs[2],
        "p75": qs[3],
        "p90": qs[4],
        "share_under_7d": float((x < 7).mean()),
    }


def _top_excluding(
    ranked: np.ndarray,
    exclude: list[np.ndarray] | None,
    n_users: int,
    k: int,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """(U, k) ids: the first k of `ranked` not in each user's exclusion list (-1 padded).

    With `rng`, each user gets its own shuffle of `ranked` (random baseline)."""
    out = np.full((n_users, k), -1, dtype=np.int64)
    width = min(len(ranked), k + (max((len(e) for e in exclude), default=0) if exclude else 0))
    for u in range(n_users):  # per user, not per event: U is the held-out sample (<= max_users)
        cand = rng.permutation(ranked)[:width] if rng is not None else ranked[:width]
        if exclude is not None and len(exclude[u]):
            cand = cand[~np.isin(cand, exclude[u])]
        cand = cand[:k]
        out[u, : len(cand)] = cand
    return out


def run_pipeline(
    config: dict[str, Any],
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    progress: bool = True,
    stages: tuple[str, ...] = STAGES,
    redo: tuple[str, ...] = (),
    shared: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) every stage into `out`; return the report dict.

    `shared` pre-fills the context's cache (e.g. {"world": world} so that experiments over many
    configs generate the synthetic world once per seed)."""
    unknown = [s for s in (*stages, *redo) if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    check_data_outside_run(data_dir, out)
    seed_everything(int(config["seed"]))
    with RunDir(out, config) as rundir:
        return _run_stages(rundir, data_dir, progress, stages, redo, shared)


def _run_stages(
    rundir: RunDir,
    data_dir: str | Path | None,
    progress: bool,
    stages: tuple[str, ...],
    redo: tuple[str, ...],
    shared: dict[str, Any] | None,
) -> dict[str, Any]:
    from vidrec.pipelines import stages_rank  # ranking, end-to-end and report stages

    ctx = RunContext(rundir, Path(data_dir) if data_dir else None, progress)
    ctx.cache.update(shared or {})
    funcs = {
        "data": stage_data,
        "candidate_gen": stage_candidate_gen,
        "index": stage_index,
        "retrieval": stage_retrieval,
        "ranker": stages_rank.stage_ranker,
        "ranking_eval": stages_rank.stage_ranking_eval,
        "end_to_end": stages_rank.stage_end_to_end,
        "report": stages_rank.stage_report,
    }
    for name in redo:
        rundir.forget(name)
    t0 = time.perf_counter()
    for name in stages:
        # every earlier stage is an input: a stage reruns when one of them changed since
        inputs = STAGES[: STAGES.index(name)]
        rundir.run_stage(name, lambda d, f=funcs[name]: f(ctx, d), inputs=inputs)
    if "report" in stages:
        log.info(
            "run finished in %.1f s; report: %s",
            time.perf_counter() - t0,
            rundir.path / "report.html",
        )
    else:  # a partial run writes no report; --stages ...,report (or a full run) builds it
        log.info(
            "stages %s finished in %.1f s (no report: the report stage was not asked for)",
            ",".join(stages),
            time.perf_counter() - t0,
        )
    return load_json(rundir.path / "report.json") if (rundir.path / "report.json").exists() else {}
