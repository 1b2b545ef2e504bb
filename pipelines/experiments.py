"""`vidrec experiment NAME`: the studies of YT16 and SSL21, mean ± std over seeds.

* `cg-features`  YT16 Fig. 6 analogue: feature sets (watches -> +searches -> +example age ->
                 +demographics/geography) at the preset's depth, and tower depth 0-4 with all
                 features; holdout Recall@50 / MAP@50; upload-age distribution of retrieved items
                 with and without example age.
* `cg-ssl`       SSL21: none / spread-out / RFM / CFM, overall and tail Recall@50, with 10 / 25 /
                 50 / 100 % of the training labels.
* `ranker-table` YT16 Table 1 analogue: hidden layers vs weighted per-user loss, the two ablations
                 (no normalized continuous features; positives and negatives weighted equally) and
                 the LightGBM baselines; plus the true expected watch time of each held-out user's
                 top-10 built from the same candidates (simulated world).

Every variant of a seed shares that seed's world (generated once) and split; each variant is an
ordinary run directory under OUT/seed<S>/<variant>, so any of them can be inspected or resumed.
Everything is evaluated on the test window, never on training data.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec.evaluation.ranking import ranking_metrics
from vidrec.evaluation.watch_time import calibration_summary
from vidrec.features.atomic import atomic_path, atomic_write_json, atomic_write_text
from vidrec.features.ids import to_codes
from vidrec.pipelines.config import apply_overrides, resolve_config, world_config
from vidrec.pipelines.context import RunContext
from vidrec.pipelines.names import EXPERIMENTS
from vidrec.pipelines.run import heldout_users, run_pipeline
from vidrec.pipelines.rundir import RunDir

log = logging.getLogger("vidrec")

CG_STAGES = ("data", "candidate_gen", "index", "retrieval")


def _depth_layers(depth: int, dim: int) -> list[int]:
    """Tower widths for depth 0-4 ending at `dim` (YT16's 2048->1024->512->256, scaled to dim)."""
    widths = [dim * 8, dim * 4, dim * 2, dim][-depth:] if depth else []
    return widths


def cg_feature_variants(base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    dim = int(base["candidate_gen"]["embedding_dim"])
    depth = len(base["candidate_gen"]["user_layers"])
    feats = {
        "watches": dict(use_searches=False, use_example_age=False, use_demographics=False),
        "+searches": dict(use_searches=True, use_example_age=False, use_demographics=False),
        "+example_age": dict(use_searches=True, use_example_age=True, use_demographics=False),
        "+demographics": dict(use_searches=True, use_example_age=True, use_demographics=True),
    }
    out = {
        f"{k} (depth {depth})": {f"candidate_gen.{a}": b for a, b in v.items()}
        for k, v in feats.items()
    }
    for d in range(5):
        if d == depth:
            continue
        out[f"all features (depth {d})"] = {"candidate_gen.user_layers": _depth_layers(d, dim)}
    return out


def cg_ssl_variants(
    base: dict[str, Any], fractions: tuple[float, ...]
) -> dict[str, dict[str, Any]]:
    return {
        f"{m} @ {int(f * 100)}% labels": {
            "candidate_gen.ssl": m,
            "candidate_gen.label_fraction": float(f),
        }
        for f in fractions
        for m in ("none", "spread_out", "rfm", "cfm")
    }


RANKER_VARIANTS: dict[str, dict[str, Any]] = {
    "no hidden layer": {"hidden": []},
    "256": {"hidden": [256]},
    "512": {"hidden": [512]},
    "1024": {"hidden": [1024]},
    "512-256": {"hidden": [512, 256]},
    "1024-512": {"hidden": [1024, 512]},
    "1024-512-256": {"hidden": [1024, 512, 256]},
    "1024-512-256, no continuous features": {"hidden": [1024, 512, 256], "use_continuous": False},
    "1024-512-256, pos/neg weighted equally": {"hidden": [1024, 512, 256], "weighting": "click"},
    "1024-512-256, YT16 weighting (only unclicked negatives)": {
        "hidden": [1024, 512, 256],
        "weighting": "watch_time",
    },
    # the raw exp(logit) of the two watch-time weightings, without the validation calibrator
    "1024-512-256, uncalibrated": {"hidden": [1024, 512, 256], "calibrate": False},
    # the calibrator before the two-part one: pooled bins of the observed watch time itself
    "1024-512-256, binned calibrator": {"hidden": [1024, 512, 256], "calibrator": "binned"},
    "1024-512-256, YT16 weighting, uncalibrated": {
        "hidden": [1024, 512, 256],
        "weighting": "watch_time",
        "calibrate": False,
    },
}


# The retrieval studies read exact-search metrics only; a small annoy index with annoy's default
# search_k keeps the ANN part of each study run cheap (the ANN itself is measured by every
# ordinary run and by the benchmarks), whatever index the base config serves.
CHEAP_ANN: dict[str, Any] = {
    "retrieval.index": "annoy",
    "retrieval.n_trees": 5,
    "retrieval.search_k": -1,
}
#: the [retrieval] keys of the served index alone, which the studies' exact metrics ignore
_ANN_KEYS = ("index", "n_trees", "search_k", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search")


def _finished_study_run(run: Path, cfg: dict[str, Any], need_exact_ages: bool) -> bool:
    """True when `run` holds finished retrieval metrics of `cfg` (index settings aside, and with
    the exact-search upload ages when `need_exact_ages`): an interrupted study resumes from the
    variants it finished."""
    try:
        done = json.loads((run / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    if not (run / "retrieval" / "retrieval.json").is_file():
        return False
    if need_exact_ages:
        try:
            with np.load(run / "retrieval" / "upload_ages.npz") as z:
                if "retrieved_exact" not in z:
                    return False
        except (OSError, ValueError):
            return False
    # the sections the retrieval stages read (the rankers' sections play no part)
    keys = ("seed", "data", "split", "evaluation", "features", "candidate_gen")
    return all(done.get(k) == cfg[k] for k in keys) and {
        k: v for k, v in done["retrieval"].items() if k not in _ANN_KEYS
    } == {k: v for k, v in cfg["retrieval"].items() if k not in _ANN_KEYS}


def wasserstein_1(a: np.ndarray, b: np.ndarray, n_grid: int = 1001) -> float:
    """Return the 1-Wasserstein distance between two samples: ∫ |Q_a(u) - Q_b(u)| du over
    quantile levels u (the mean absolute gap between their quantile functions)."""
    u = np.linspace(0.0, 1.0, n_grid)
    return float(np.mean(np.abs(np.quantile(a, u) - np.quantile(b, u))))


def _retrieval_row(run: Path) -> dict[str, Any]:
    r = json.loads((run / "retrieval" / "retrieval.json").read_text("utf-8"))
    m = r["metrics"]["exact"]
    with np.load(run / "retrieval" / "upload_ages.npz") as z:
        retrieved = z["retrieved_exact"] if "retrieved_exact" in z else None
        watched = z["watched_next"]
    age = (
        {
            "retrieved age median (d)": float(np.median(retrieved)),
            "retrieved share < 7d": float(np.mean(retrieved < 7.0)),
            "age W1 retrieved vs watched-next (d)": wasserstein_1(retrieved, watched),
        }
        if retrieved is not None and len(retrieved) and len(watched)
        else {}
    )
    return {
        "recall@50": m.get("recall@50"),
        "map@50": m.get("map@50"),
        "tail recall@50": m.get("popularity.tail.recall@50"),
        "head recall@50": m.get("popularity.head.recall@50"),
        "fresh recall@50": m.get("freshness.fresh.recall@50"),
        "watched-next age median (d)": r["upload_age"]["watched_next_days"].get("median"),
        "watched-next share < 7d": r["upload_age"]["watched_next_days"].get("share_under_7d"),
        **age,
    }


def _world(cfg: dict[str, Any]) -> Any:
    from vidrec.features.sources.synthetic import generate_world

    return generate_world(world_config(cfg["data"]), seed=int(cfg["seed"]))


def run_experiment(
    name: str,
    *,
    preset: str,
    seeds: list[int],
    out: Path,
    overrides: list[str] | None = None,
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0),
    only: list[str] | None = None,
) -> dict[str, Any]:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        base = resolve_config(preset, overrides or [], seed=seed)
        t0 = time.perf_counter()
        shared = {"world": _world(base)} if base["data"]["source"] == "synthetic" else {}
        log.info(
            "experiment %s seed %d: world ready in %.1f s", name, seed, time.perf_counter() - t0
        )
        if name == "ranker-table":
            rows += _ranker_table(base, out / f"seed{seed}", shared, only)
            _write(out, name, preset, seeds, rows)
            continue
        variants = (
            cg_feature_variants(base) if name == "cg-features" else cg_ssl_variants(base, fractions)
        )
        for vname, over in variants.items():
            if only and vname not in only:
                continue
            cfg = apply_overrides(base, {**CHEAP_ANN, **over})
            run = out / f"seed{seed}" / _slug(vname)
            if _finished_study_run(run, cfg, need_exact_ages=name == "cg-features"):
                rows.append({"seed": seed, "variant": vname, **_retrieval_row(run)})
                log.info("  %-40s recall@50 %.4f (reused)", vname, rows[-1]["recall@50"])
                continue
            t1 = time.perf_counter()
            run_pipeline(cfg, run, progress=False, stages=CG_STAGES, shared=shared)
            rows.append(
                {
                    "seed": seed,
                    "variant": vname,
                    **_retrieval_row(run),
                    "seconds": round(time.perf_counter() - t1, 1),
                }
            )
            log.info(
                "  %-40s recall@50 %.4f (%.0f s)", vname, rows[-1]["recall@50"], rows[-1]["seconds"]
            )
            _write(out, name, preset, seeds, rows)
    if name == "cg-features":
        example_age_figure(out, base, seeds[0])
    return _write(out, name, preset, seeds, rows)


def example_age_figure(out: Path, base: dict[str, Any], seed: int) -> Path | None:
    """Write OUT/example_age.png: the upload ages (days, at serving time) of the exact top-50
    retrieved without example age (+searches), with it (+example_age), and of the items the
    users actually watched next, for one seed; return its path (None when a run is missing)."""
    from vidrec.evaluation.plots import upload_age_histograms

    depth = len(base["candidate_gen"]["user_layers"])
    runs = {
        "without": out / f"seed{seed}" / _slug(f"+searches (depth {depth})"),
        "with": out / f"seed{seed}" / _slug(f"+example_age (depth {depth})"),
    }
    ages: dict[str, np.ndarray] = {}
    for label, run in runs.items():
        try:
            with np.load(run / "retrieval" / "upload_ages.npz") as z:
                ages[f"retrieved top-50, {label} example age"] = z["retrieved_exact"]
                watched = z["watched_next"]
        except (OSError, KeyError, ValueError):
            log.warning("example-age figure skipped: %s has no exact upload ages", run)
            return None
    ages["watched next (test window)"] = watched
    png = upload_age_histograms(
        ages,
        title=f"Upload age of retrieved vs watched-next items (default world, seed {seed}, test users)",
        xlabel="upload age at serving time (days; < 0: uploaded after it, so not yet servable; "
        "last bin includes older)",
    )
    path = out / "example_age.png"
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return path


def _ranker_table(
    base: dict[str, Any], out: Path, shared: dict[str, Any], only: list[str] | None = None
) -> list[dict[str, Any]]:
    from vidrec.pipelines import stages_rank
    from vidrec.ranking.baselines import LightGBMLambdaRanker, LightGBMWeightedRanker
    from vidrec.ranking.train import train_ranker

    seed = int(base["seed"])
    run_pipeline(base, out / "base", progress=False, stages=CG_STAGES, shared=shared)
    ctx = RunContext(RunDir.open(out / "base"), progress=False)
    ctx.cache.update(shared)
    split = ctx.split()
    lo, hi = split.bounds("valid")
    cut = hi - int((hi - lo) * float(base["split"]["ranker_valid_share"]))
    frame = stages_rank.impression_frame(ctx, lo, hi, int(base["ranking"]["max_train_rows"]))
    train, valid = stages_rank.split_train_valid(
        frame, cut, float(base["split"]["ranker_valid_share"]), seed
    )
    test = stages_rank.impression_frame(
        ctx, *split.bounds("test"), int(base["ranking"]["max_eval_rows"])
    )
    clicked, watch = test.labels()
    groups = test.page_ids()
    # candidates of held-out users at serving time, for the true top-10 watch time
    cands = to_codes(
        ctx.dataset().ids, pd.read_parquet(out / "base" / "retrieval" / "candidates.parquet")
    )
    users = heldout_users(ctx)
    req, cand_frame = stages_rank.candidate_frame(ctx, cands, split.valid_end)
    world = shared.get("world")
    k = int(base["evaluation"]["slate_k"])

    truth = (
        world.expected_watch_time(
            test.rows["user_id"].to_numpy(),
            test.rows["item_id"].to_numpy(),
            test.rows["timestamp"].to_numpy(),
            position=test.rows["position"].to_numpy() if "position" in test.rows else None,
        )
        if world is not None
        else None
    )

    def evaluate(
        vname: str,
        test_score: np.ndarray,
        cand_score: np.ndarray,
        seconds: float,
        expected: np.ndarray | None = None,
    ) -> dict[str, Any]:
        from vidrec.pipelines import scoring

        m = ranking_metrics(groups, clicked, watch, test_score)
        row = {
            "seed": seed,
            "variant": vname,
            "weighted per-user loss": m["weighted_per_user_loss"],
            "AUC": m["auc"],
            "GAUC": m["gauc"],
            "NDCG@10 (watch time)": m.get("ndcg@10"),
            "train seconds": round(seconds, 1),
        }
        if expected is not None:  # calibration of the predicted expected watch time by decile
            obs = calibration_summary(expected, watch)
            row["calibration: worst decile |pred/obs - 1|"] = obs["max_abs_relative_error"]
            row["calibration: deciles within ±15%"] = obs["bins_within_tolerance"]
            row["calibration: sum pred / sum obs"] = obs["overall_ratio"]
            if truth is not None:
                tru = calibration_summary(expected, truth)
                row["calibration vs truth: worst decile |pred/true - 1|"] = tru[
                    "max_abs_relative_error"
                ]
        if world is not None:
            sl = scoring.top_k_per_user(
                req["user_id"].to_numpy(), req["item_id"].to_numpy(), cand_score, users, k
            )
            row[f"true E[watch time] of top-{k} per user (s)"] = float(
                world.slate_expected_watch_time(users, sl, split.valid_end).mean()
            )
        return row

    rows = []
    for vname, over in RANKER_VARIANTS.items():
        if only and vname not in only:
            continue
        cfg = stages_rank.ranker_config(
            apply_overrides(base, {f"ranking.{a}": b for a, b in over.items()})
        )
        t1 = time.perf_counter()
        model = train_ranker(cfg, train, valid, progress=False)
        rows.append(
            evaluate(
                vname,
                model.predict_logit(test),
                model.predict_logit(cand_frame),
                time.perf_counter() - t1,
                expected=model.predict_expected_watch_time(test)
                if cfg.weighting != "click"
                else None,
            )
        )
        log.info("  %-45s weighted per-user loss %.4f", vname, rows[-1]["weighted per-user loss"])
    lcfg = stages_rank.lgbm_config(base)
    hl = int(base["ranking"]["history_len"])
    for vname, model in (
        ("LightGBM weighted binary", LightGBMWeightedRanker(lcfg, history_len=hl)),
        ("LightGBM lambdarank (watch-time gain)", LightGBMLambdaRanker(lcfg, history_len=hl)),
    ):
        if only and vname not in only:
            continue
        t1 = time.perf_counter()
        model.fit(train, valid)
        rows.append(
            evaluate(
                vname,
                model.predict_score(test),
                model.predict_score(cand_frame),
                time.perf_counter() - t1,
                expected=np.exp(model.predict_score(test))
                if isinstance(model, LightGBMWeightedRanker)
                else None,
            )
        )
        log.info("  %-45s weighted per-user loss %.4f", vname, rows[-1]["weighted per-user loss"])
    return rows


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def _write(
    out: Path, name: str, preset: str, seeds: list[int], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    df = pd.DataFrame(rows)
    metrics = [
        c
        for c in df.columns
        if c not in ("seed", "variant") and pd.api.types.is_numeric_dtype(df[c])
    ]
    agg = df.groupby("variant", sort=False)[metrics].agg(["mean", "std"])
    table = pd.DataFrame({"variant": agg.index})
    for c in metrics:
        mean, std = agg[(c, "mean")].to_numpy(), agg[(c, "std")].fillna(0).to_numpy()
        table[c] = [
            f"{a:.4f} ± {b:.4f}" if abs(a) < 10 else f"{a:.1f} ± {b:.1f}"
            for a, b in zip(mean, std, strict=True)
        ]
    table["seeds"] = df.groupby("variant", sort=False)["seed"].nunique().to_numpy()
    md = (
        f"# experiment {name}\n\npreset {preset}, seeds {seeds}; test-window metrics, mean ± std over seeds\n\n"
        + _markdown(table)
        + "\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.md", md)
    result = {"experiment": name, "preset": preset, "seeds": seeds, "rows": rows}
    atomic_write_json(out / f"{name}.json", result)
    return result | {"markdown": md}


def _markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])
