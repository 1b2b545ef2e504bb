"""Assemble report.json / report.md / report.html from the stage outputs of a run directory.

Key paths (see evaluation.report for the schema): the system's own numbers sit under
`retrieval.*`, `ranking.*`, `watch_time.*`, `end_to_end.*`; every baseline's under
`baselines.<name>.<area>.*` (e.g. `baselines.most_popular.retrieval.recall@50`,
`baselines.deep_click.ranking.weighted_per_user_loss`, `baselines.oracle.end_to_end...`).
The tuned retrieval baselines (`pipelines.retrieval_baselines`) also carry
`baselines.<name>.retrieval_tuning` (the chosen value and the grid's validation Recall@50), or
`baselines.<name>.retrieval_skipped` (why it did not run).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec.evaluation import plots
from vidrec.evaluation.report import Figure, Report, Section, unflatten
from vidrec.evaluation.retrieval import HINDSIGHT
from vidrec.pipelines.config import flatten
from vidrec.pipelines.context import RunContext
from vidrec.pipelines.run import STAGES

SYSTEM_RANKER = "deep_weighted"
RANKER_LABELS = {
    "deep_weighted": "deep ranker, watch-time-weighted LR (system)",
    "deep_click": "deep ranker, click-only LR",
    "lgbm_weighted": "LightGBM, watch-time-weighted binary",
    "lgbm_lambdarank": "LightGBM lambdarank (watch-time gain)",
    "popularity": "popularity so far",
}
HINDSIGHT_LABEL = (
    "best single list in hindsight (chosen on the test targets: an upper bound for any list "
    "served to everyone, not a baseline)"
)
SLATE_LABELS = {
    "deep_weighted": "full system: CG -> deep weighted ranker",
    "deep_click": "CG -> click-only deep ranker",
    "lgbm_weighted": "CG -> LightGBM weighted",
    "lgbm_lambdarank": "CG -> LightGBM lambdarank",
    "popularity": "CG -> popularity ranker",
    "candidate_gen_only": "candidate generator alone (no ranker)",
    "random": "random slate",
    "most_popular": "most popular",
    "logging_policy": "logging policy",
    "oracle": "oracle (ground-truth best)",
    "recent_popular": "recent popular (retrieval baseline, its own top k)",
    "item_knn": "item-kNN (retrieval baseline, its own top k)",
    "ease": "EASE (retrieval baseline, its own top k)",
    "pure_svd": "PureSVD (retrieval baseline, its own top k)",
}


def _load(path: Path) -> Any:
    return json.loads(path.read_text("utf-8")) if path.exists() else None


def _iso(t: int) -> str:
    return datetime.fromtimestamp(int(t), tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _stages(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The manifest's stage records in pipeline order (manifest.json stores them by name)."""
    order = {name: i for i, name in enumerate(STAGES)}
    stages = manifest.get("stages", {})
    return sorted(stages.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def stage_commits(manifest: dict[str, Any]) -> str | None:
    """Return the commit that built the run's stages: one hash, or, when a resumed run mixed
    code versions, each commit (short) with the stages it built, in stage order."""
    by_commit: dict[str, list[str]] = {}
    for name, st in _stages(manifest):
        commit = st.get("git_commit", manifest.get("git_commit"))
        if st.get("status") == "done" and commit:
            by_commit.setdefault(commit, []).append(name)
    if not by_commit:
        return manifest.get("git_commit")
    if len(by_commit) == 1:
        return next(iter(by_commit))
    return "; ".join(f"{c[:7]} ({', '.join(names)})" for c, names in by_commit.items())


def stage_seconds(manifest: dict[str, Any]) -> dict[str, float]:
    """Seconds each stage took, in stage order, for the stages that recorded a time (the
    report stage is still running while its report is written: it has none yet)."""
    return {
        name: st["seconds"]
        for name, st in _stages(manifest)
        if isinstance(st.get("seconds"), int | float)
    }


def _best(rows: dict[str, dict[str, Any]], key: str, lower: bool = False) -> tuple[str, float] | None:
    """(name, value) of the best row by `key` (None when no row has a number there)."""
    scored = [
        (n, float(v[key]))
        for n, v in rows.items()
        if isinstance(v, dict) and isinstance(v.get(key), int | float) and np.isfinite(v[key])
    ]
    if not scored:
        return None
    return min(scored, key=lambda t: t[1]) if lower else max(scored, key=lambda t: t[1])


def _ratio(a: float, b: float) -> float | None:
    return float(f"{a / b:.3g}") if b else None


def _compare(
    rows: list[dict[str, Any]],
    out: dict[str, Any],
    key: str,
    stage: str,
    metric: str,
    system: float,
    best: tuple[str, float],
    label: str,
) -> None:
    """Add the system against the best baseline (`best` = (name, value), `label` its display
    name) as a summary table row and as `out[key]`."""
    rows.append(
        {
            "stage": stage,
            "metric": metric,
            "system": system,
            "best baseline": f"{label}: {best[1]:.4g}",
            "system / best": _ratio(system, best[1]),
        }
    )
    out[key] = {"system": system, "best_baseline": best[0], "best": best[1]}


def summary_section(
    retr: dict[str, Any] | None, rank: dict[str, Any] | None, e2e: dict[str, Any] | None
) -> Section | None:
    """What wins, stage by stage: the system against the best baseline on the metrics that
    matter, with the protocol in one line, and why the metrics disagree where they do."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    out: dict[str, Any] = {}
    if retr:
        m = retr["metrics"]
        served = served_kind(retr)
        ours = m.get(served, {}).get("recall@50")
        base = {n: v for n, v in m.items() if n not in (served, "exact", HINDSIGHT)}
        best = _best(base, "recall@50")
        if isinstance(ours, int | float) and best:
            _compare(
                rows,
                out,
                "retrieval",
                "retrieval",
                "Recall@50 (test window, held-out users)",
                ours,
                best,
                best[0],
            )
        n_new, n_all = retr.get("n_users_new"), retr.get("n_users_with_targets")
        key = "history.returning.recall@50"
        ret_ours = m.get(served, {}).get(key)
        ret_best = _best(base, key)
        if isinstance(n_new, int) and n_all and isinstance(ret_ours, int | float) and ret_best:
            _compare(
                rows,
                out,
                "retrieval_returning",
                "retrieval",
                "Recall@50, returning users (a watch before the test window)",
                ret_ours,
                ret_best,
                ret_best[0],
            )
            if n_new >= 0.5 * n_all:
                bound = m.get(HINDSIGHT, {}).get("recall@50")
                notes.append(
                    f"{n_new} of the {n_all} held-out users ({n_new / n_all:.0%}) had no watch "
                    "before the test window: a model that serves from the watch history serves "
                    "every one of them the same list (without user features), and a popularity "
                    "list over a recent window is close to the best single list there is"
                    + (
                        f" (the best single list in hindsight, chosen on the test targets "
                        f"themselves, has Recall@50 {bound:.3g})"
                        if isinstance(bound, int | float)
                        else ""
                    )
                    + ". The returning users are where a watch history can win."
                )
    # without logged watch times every clicked row weighs 1: the click-only deep ranker is then
    # the system's own model trained twice, not a baseline to hold it against
    same = () if not rank or rank.get("labels") in (None, "logged impressions") else ("deep_click",)
    if rank:
        rm = rank["metrics"]
        ours = rm.get(SYSTEM_RANKER, {})
        others = {n: v for n, v in rm.items() if n != SYSTEM_RANKER and n not in same}
        best = _best(others, "weighted_per_user_loss", lower=True)
        loss = ours.get("weighted_per_user_loss")
        if isinstance(loss, int | float) and best:
            _compare(
                rows,
                out,
                "ranking",
                "ranking",
                "weighted per-user loss (test impressions; lower is better)",
                loss,
                best,
                RANKER_LABELS.get(best[0], best[0]),
            )
        auc_best = _best(others, "auc")
        if (
            isinstance(ours.get("auc"), int | float)
            and auc_best
            and ours["auc"] < auc_best[1]
            and isinstance(loss, int | float)
            and best
            and loss <= best[1]
        ):
            notes.append(
                "The system ranker has a lower AUC than "
                f"{RANKER_LABELS.get(auc_best[0], auc_best[0])} but the lowest weighted per-user "
                "loss: AUC counts clicks alike, while the system ranks by expected watch time, so "
                "it puts a long watch above a short click. Clicks are not watch time."
            )
        rnd = rank.get("random_exposure") or {}
        r_ours = (rnd.get("metrics") or {}).get(SYSTEM_RANKER, {}).get("weighted_per_user_loss")
        r_others = {
            n: v for n, v in (rnd.get("metrics") or {}).items() if n != SYSTEM_RANKER and n not in same
        }
        r_best = _best(r_others, "weighted_per_user_loss", lower=True)
        if isinstance(r_ours, int | float) and r_best:
            _compare(
                rows,
                out,
                "ranking_random_exposure",
                "ranking",
                f"weighted per-user loss, the {rnd['n_rows']:,} random-exposure test "
                "impressions (the unbiased view)",
                r_ours,
                r_best,
                RANKER_LABELS.get(r_best[0], r_best[0]),
            )
        labels = rank.get("labels")
        if isinstance(labels, str) and labels != "logged impressions":
            notes.append("Ranker rows: " + labels)
    if e2e:
        sl = e2e["slates"]
        k = e2e.get("k", 10)
        key = f"recall@{k}"
        ours = sl.get(SYSTEM_RANKER, {})
        base = {
            n: v
            for n, v in sl.items()
            if n not in (SYSTEM_RANKER, "oracle", "candidate_gen_only", *same)
        }
        best = _best(base, key)
        if isinstance(ours.get(key), int | float) and best:
            _compare(
                rows,
                out,
                "end_to_end",
                "end to end",
                f"top-{k} recall of the test window's watches",
                ours[key],
                best,
                SLATE_LABELS.get(best[0], best[0]),
            )
        tw = (ours.get("true_expected_watch_time") or {}).get("mean")
        tbase = {
            n: {"m": (v.get("true_expected_watch_time") or {}).get("mean")}
            for n, v in base.items()
        }
        tbest = _best(tbase, "m")
        if isinstance(tw, int | float) and tbest:
            _compare(
                rows,
                out,
                "end_to_end_true_watch_time",
                "end to end",
                f"true expected watch time of the top-{k} per user (s, simulator)",
                tw,
                tbest,
                SLATE_LABELS.get(tbest[0], tbest[0]),
            )
            cg = sl.get("candidate_gen_only", {})
            cg_tw = (cg.get("true_expected_watch_time") or {}).get("mean")
            if (
                isinstance(cg.get(key), int | float)
                and isinstance(ours.get(key), int | float)
                and ours[key] < cg[key]
                and isinstance(cg_tw, int | float)
                and tw > cg_tw
            ):
                notes.append(
                    f"The full system's top-{k} recall of logged watches ({ours[key]:.3g}) is below "
                    f"the candidate generator alone ({cg[key]:.3g}), yet its true expected watch "
                    f"time is {tw / cg_tw:.1f}x the candidate generator's: logged watches carry the "
                    "logging policy's exposure (a user can only watch what was shown), and the "
                    "ranker optimises watch time, not the next logged click. The ground truth is "
                    "the unbiased view."
                )
    if not rows:
        return None
    return Section(
        "Summary",
        "Each stage of the system against the strongest baseline the report computed on the same "
        "data, window and users (baselines tuned on the ranker window only; protocol: train "
        "before train_end, tune on the ranker window, test on the test window with models "
        "refitted on everything before it). "
        + (" ".join(notes) if notes else ""),
        metrics=out,
        key_prefix="summary",
        metric_notes={
            f"{stage}.{k}": text
            for stage in out
            for k, text in (
                ("system", "the system's value (see the table for the metric)"),
                ("best_baseline", "the baseline with the best value of the same metric"),
                ("best", "that baseline's value"),
            )
        },
        table=pd.DataFrame(rows),
        table_caption="The system against the best baseline per stage (ratio > 1 is better for "
        "recall and watch time, < 1 for the loss).",
        column_formats={"system / best": "ratio"},
    )


# the simulated world's identity (world.json) beside the data counts
_WORLD_NOTES = {
    "world.name": "the simulated data set",
    "world.preset": "the world preset that sets its size and behaviour",
    "world.seed": "the seed the world was drawn with",
    "world.catalog": "where its items come from: 'synthetic' (drawn) or 'kuairand' (KuaiRand's "
    "real item metadata)",
}
# features.stats.log_statistics: what `--preset auto` derives its settings from
_STATS_NOTES = {
    "n_users": "users in the log",
    "n_items": "items in the catalogue",
    "n_watched_items": "items watched at least once",
    "n_watches": "watches in the log",
    "n_train_watches": "watches before train_end",
    "watches_per_user_median": "median watches per user (users with a watch)",
    "watches_per_user_mean": "mean watches per user (users with a watch)",
    "span_days": "days from the first watch to the last",
    "share_of_items_uploaded_after_train_end": "share of the catalogue uploaded after train_end "
    "(0-1)",
    "has_impressions": "whether the log has impressions (without, the ranker learns from "
    "retrieved candidates of the ranker window's active users)",
    "n_impressions": "impressions in the log",
    "has_watch_time": "whether the impressions log watch times (else every click weighs 1)",
    "n_ranker_rows": "rows the ranker learns from in the ranker window",
    "n_ranker_users": "users in the ranker window",
}
# the [tuned] table `vidrec tune` writes into its config file
_TUNED_NOTES = {
    "study": "the Optuna study (SQLite) the settings come from",
    "trial": "the number of the best trial",
    "trials": "trials in the study",
    "validation_metric": "what the search maximised (candidate generator, ranker window)",
    "validation_value": "the best trial's validation value",
}


def _derived_section(cfg: dict[str, Any]) -> Section | None:
    """The settings `--preset auto` derived from the log, each with the statistic it came from
    and the value the run used (a config file or --set may have overridden it)."""
    derived = cfg.get("derived")
    if not isinstance(derived, dict) or not derived.get("settings"):
        return None
    flat = flatten(cfg)
    rows = [
        {
            "setting": key,
            "derived": json.dumps(d["value"]),
            "used": json.dumps(flat.get(key)),
            "from the log's statistics": d["from"],
        }
        for key, d in derived["settings"].items()
    ]
    stats = derived.get("stats", {})
    return Section(
        "Settings derived from the data",
        "No preset was named: the run took the default preset and derived these settings from "
        "the log's own statistics (counts of the whole log; training watches are those before "
        "train_end). 'used' differs from 'derived' where a config file or --set overrode it.",
        metrics={"stats": stats},
        key_prefix="derived",
        metric_notes={f"stats.{k}": text for k, text in _STATS_NOTES.items()},
        table=pd.DataFrame(rows),
        table_caption="Derived settings, the value used, and the statistic each came from.",
    )


def _tuned_section(cfg: dict[str, Any]) -> Section | None:
    """The settings `vidrec tune` chose (from a config file's [tuned] table): each beside the
    value the search started from, and the study's trial plot when it is still there."""
    tuned = cfg.get("tuned")
    if not isinstance(tuned, dict):
        return None
    flat = flatten(cfg)
    before = tuned.get("before") if isinstance(tuned.get("before"), dict) else {}
    rows = [
        {"setting": k, "before the search": json.dumps(v), "used": json.dumps(flat.get(k))}
        for k, v in before.items()
    ]
    figures = []
    plot = Path(str(tuned.get("study", ""))).parent / "trials.png"
    if tuned.get("study") and plot.is_file():
        figures.append(
            Figure(
                "Hyperparameter search",
                plot.read_bytes(),
                "Validation recall of the candidate generator per trial (ranker window; x: "
                "pruned after an epoch below the median) and the best so far.",
            )
        )
    return Section(
        "Tuned settings",
        f"These settings come from `vidrec tune` (study {tuned.get('study')}, best of "
        f"{tuned.get('trials')} trials: trial {tuned.get('trial')}, validation "
        f"{tuned.get('validation_metric')} {float(tuned.get('validation_value', 0.0)):.4f} on the "
        "ranker window). The search never read the test window; the numbers below are this "
        "run's test-window numbers with them.",
        metrics={k: v for k, v in tuned.items() if k != "before"},
        key_prefix="tuned",
        metric_notes=_TUNED_NOTES,
        table=pd.DataFrame(rows) if rows else None,
        figures=figures,
        table_caption="Each tuned setting: the value the search started from and the value used.",
    )


def _served_by(cg_stage: dict[str, Any]) -> str:
    """Which candidate generator served which window (from the candidate_gen stage's record)."""
    models = cg_stage.get("models") or {}
    if "serving_model" in models:
        return (
            f"Ranker window: the model {models['model']}. Test window: the serving model "
            f"{models['serving_model']}; the retrieval baselines are likewise refitted on "
            "everything before the test window."
        )
    if "model" in models:
        return f"One candidate generator serves both windows: {models['model']}."
    return ""


def _load_words(ann: dict[str, Any]) -> str:
    """How busy the machine was when the latencies were measured, in words."""
    load, cores = ann.get("load_avg_1m"), ann.get("cpu_count")
    if not isinstance(load, int | float):
        return "; load unknown (no load average was recorded beside them)"
    on = f" on {cores} CPU cores" if isinstance(cores, int) else ""
    return (
        f", the machine at a 1-minute load average of {load:.2f}{on} (a load near or above the "
        "core count slows every timing)"
    )


def served_kind(retr: dict[str, Any]) -> str:
    """The kind of index the run served ("annoy" in runs from before the choice existed)."""
    return str(retr.get("index") or retr.get("ann", {}).get("index") or "annoy")


def _index_words(kind: str, retrieval_cfg: dict[str, Any]) -> str:
    """The served index and its settings, in words."""
    if kind == "hnsw":
        return (
            f"an HNSW graph (faiss, L2 over MIPS-augmented vectors, M "
            f"{retrieval_cfg.get('hnsw_m', '?')}, ef_construction "
            f"{retrieval_cfg.get('hnsw_ef_construction', '?')}, ef_search "
            f"{retrieval_cfg.get('hnsw_ef_search', '?')})"
        )
    if kind == "exact":
        return 'exact brute-force search (retrieval.index = "exact")'
    return (
        f"an annoy index (inner product, {retrieval_cfg['n_trees']} trees, search_k "
        f"{retrieval_cfg['search_k']})"
    )


def ann_section(ann: dict[str, Any], retrieval_cfg: dict[str, Any]) -> Section:
    """The served index (annoy, HNSW) against exact search on the same vectors: agreement and
    single-query latency, with the machine's load when the latencies were measured."""
    kind = str(ann.get("index", "annoy"))
    where = "in this run" if kind == "exact" else "side by side in this run"
    timing = (
        f"Latency is one query at a time ({ann['n_queries_timed']} queries x 3 repeats, top "
        f"100), measured {where}{_load_words(ann)}."
    )
    if kind == "exact":
        title = "Served index: exact search"
        text = (
            f"The run serves {_index_words(kind, retrieval_cfg)} over {ann['n_items']} item "
            "vectors, so there is no approximate index to compare: the agreement with exact "
            f"search is 1 by construction. {timing}"
        )
    else:
        title = f"Approximate search ({kind}) against exact search"
        text = (
            f"The same {ann['n_items']} item vectors searched by the served index, "
            f"{_index_words(kind, retrieval_cfg)}, and by exact brute force, for the held-out "
            f"users' query vectors. {timing} On small catalogs exact search can be as fast as "
            f"{kind}."
        )
    return Section(
        title,
        text,
        metrics=ann,
        key_prefix="retrieval.ann",
        metric_notes={
            "index": "the index the run serves (retrieval.index)",
            "recall@10": f"share of the exact top-10 that {kind} also returns (0-1)",
            "recall@100": f"share of the exact top-100 that {kind} also returns (0-1)",
            f"{kind}_p50_ms": f"median single-query {kind} latency (ms)",
            f"{kind}_p99_ms": f"99th-percentile single-query {kind} latency (ms)",
            "exact_p50_ms": "median single-query exact-search latency (ms)",
            "exact_p99_ms": "99th-percentile single-query exact-search latency (ms)",
            "speedup_p50": f"exact p50 latency / {kind} p50 latency (>1: {kind} faster)",
            "n_items": "items in the index (uploaded by serving time)",
            "n_queries_timed": "queries timed per method",
            "load_avg_1m": "the machine's 1-minute load average (processes running or waiting "
            "for a core) right after the latencies were measured; n/a = load unknown",
            "cpu_count": "CPU cores of the machine that measured the latencies",
        },
    )


def truth_calibration_figure(table: pd.DataFrame) -> Figure:
    """The system ranker's calibration deciles against the simulated world's true expected
    watch time (a `calibration_by_decile` table whose reference column holds the truth)."""
    return Figure(
        "Calibration against the ground truth",
        plots.calibration_plot(
            {RANKER_LABELS[SYSTEM_RANKER]: table},
            title="Predicted vs true expected watch time (simulator), by decile",
            reference="true expected watch time (simulator)",
        ),
        "Same deciles, against the world's true E[watch time] of each impression.",
    )


def build_report(ctx: RunContext, extra: dict[str, Any] | None = None) -> Report:
    """Build and write the run's report (json, md, html) into the run directory."""
    root = ctx.path
    cfg = ctx.config
    data = _load(root / "data" / "data.json")
    split = ctx.split()
    world = _load(root / "data" / "world.json")
    cg_stage = ctx.rundir.manifest["stages"].get("candidate_gen", {})
    cg_hist = _load(root / "candidate_gen" / "history.json") or []
    retr = _load(root / "retrieval" / "retrieval.json")
    rank = _load(root / "ranking_eval" / "ranking.json")
    e2e = _load(root / "end_to_end" / "end_to_end.json")
    ab = _load(root / "ab" / "ab.json")
    dsname = data["name"]
    windows = (
        f"train [{_iso(split.start)}, {_iso(split.train_end)}), "
        f"ranker window [{_iso(split.train_end)}, {_iso(split.valid_end)}), "
        f"test [{_iso(split.valid_end)}, {_iso(split.test_end)})"
    )
    metrics: dict[str, Any] = {"data": {"counts": data["counts"]}, "baselines": {}}
    sections: list[Section] = []
    base = metrics["baselines"]

    sections.append(
        Section(
            "Data and protocol",
            f"Data set: {dsname} ({data.get('source', '')}). Time-based split: {windows}. The "
            "candidate generator learns next-watch labels of the train window; the ranker learns the "
            "impressions of the ranker window, scored by the candidate generator trained before it "
            "(out of sample); every test number comes from the test window, with users served at "
            "its start from their history strictly before it. "
            + _served_by(cg_stage),
            metrics={"data": {"counts": data["counts"]}}
            | ({"world": _scalars(world)} if world else {}),
            metric_notes=_WORLD_NOTES,
        )
    )

    for extra_section in (_derived_section(cfg), _tuned_section(cfg)):
        if extra_section is not None:
            sections.append(extra_section)

    if retr:
        flat_m = _in_retrieval_order(retr["metrics"])
        m = {name: unflatten(v) for name, v in flat_m.items()}
        served = served_kind(retr)
        metrics["retrieval"] = m[served] | {"ann": retr["ann"], "upload_age": retr["upload_age"]}
        base["exact_search"] = {"retrieval": m["exact"]}
        base["most_popular"] = {"retrieval": m["most_popular"]}
        base["random"] = {"retrieval": m["random"]}
        if HINDSIGHT in m:
            base[HINDSIGHT] = {"retrieval": m[HINDSIGHT]}
        labels = {
            served: f"candidate generator ({served})",
            "exact": "candidate generator (exact search)",
            "most_popular": "most popular",
            "random": "random",
            HINDSIGHT: HINDSIGHT_LABEL,
        }
        tuned = _in_retrieval_order(retr.get("tuned_baselines") or {})
        for name, rec in tuned.items():
            if "skipped" in rec:
                base[name] = {"retrieval_skipped": rec["skipped"]}
                continue
            labels[name] = f"{rec['label']}, {rec['chosen_label']}"
            base[name] = {"retrieval": m[name], "retrieval_tuning": _tuning_metrics(rec)}
        curve = _recall_curve_frame({labels.get(k, k): v for k, v in flat_m.items()})
        figs = [
            Figure(
                "Recall@k by item popularity",
                plots.recall_curves_by_bucket(curve),
                "Share of each held-out user's next watches (test window) found among the "
                "top k retrieved items; panels split the targets by the item's training "
                "popularity (head/torso/tail).",
            )
        ]
        ages_npz = root / "retrieval" / "upload_ages.npz"
        if ages_npz.exists():
            with np.load(ages_npz) as z:
                ages = {"retrieved (top 50)": z["retrieved"], "watched next": z["watched_next"]}
            figs.append(
                Figure(
                    "Upload age of retrieved vs watched items",
                    plots.upload_age_histograms(ages),
                    "Age of items (days since upload at serving time) among the top-50 "
                    "retrieved and among the items users actually watched next.",
                )
            )
        if cg_hist:
            figs.append(
                Figure(
                    "Candidate generator training",
                    plots.training_curves(_curves(cg_hist)),
                    "Per-epoch training loss and validation recall (ranker-window labels).",
                )
            )
        ks = [int(k) for k in cfg["evaluation"]["ks"]]
        table = pd.DataFrame(
            [
                {"model": labels.get(name, name)}
                | {f"recall@{k}": v.get(f"recall@{k}") for k in ks}
                | {
                    "ndcg@10": v.get("ndcg@10"),
                    "map@10": v.get("map@10"),
                    "coverage@50": v.get("coverage@50"),
                    "head recall@50": v.get("popularity.head.recall@50"),
                    "torso recall@50": v.get("popularity.torso.recall@50"),
                    "tail recall@50": v.get("popularity.tail.recall@50"),
                    "fresh recall@50": v.get("freshness.fresh.recall@50"),
                    "new users recall@50": v.get("history.new.recall@50"),
                    "returning users recall@50": v.get("history.returning.recall@50"),
                }
                for name, v in flat_m.items()
            ]
        )
        headline = {
            k: metrics["retrieval"].get(k)
            for k in [f"recall@{k}" for k in ks]
            + ["hitrate@50", "ndcg@10", "map@10", "coverage@50", "n_queries"]
        }
        headline["popularity"] = {
            b: {"recall@50": v.get("recall@50")} for b, v in m[served].get("popularity", {}).items()
        }
        headline["freshness"] = {
            b: {"recall@50": v.get("recall@50")} for b, v in m[served].get("freshness", {}).items()
        }
        sections.append(
            Section(
                "Retrieval (candidate generation)",
                f"Held-out users: {retr['n_users']} users who watched something in the test window, "
                f"served at {_iso(retr['served_at'])}"
                + (
                    f"; {retr['n_users_new']} of them had no watch before then (new users)"
                    if "n_users_new" in retr
                    else ""
                )
                + ". Targets: the distinct items each watched in the "
                f"test window{' (items already watched before are excluded from both the candidates and the targets)' if retr['exclude_watched'] else ''}. "
                f"The system retrieves from {_index_words(served, cfg['retrieval'])} over "
                "item-tower embeddings of every item uploaded by then; 'exact' is brute-force "
                "search over the same vectors. "
                f"Trained on {cg_stage.get('train_examples', '?')} next-watch examples.",
                metrics=headline,
                key_prefix="retrieval",
                table=table,
                table_caption="Test-window retrieval metrics per model (fractions); each tuned "
                "baseline's name carries the hyperparameter chosen on the ranker window.",
                figures=figs,
            )
        )
        if tuned:
            sections.append(_tuned_baselines_section(tuned, flat_m, retr))
        sections.append(ann_section(retr["ann"], cfg["retrieval"]))

    if rank:
        rm = rank["metrics"]
        metrics["ranking"] = rm[SYSTEM_RANKER]
        for name, v in rm.items():
            if name != SYSTEM_RANKER:
                base.setdefault(name, {})["ranking"] = v
        table = pd.DataFrame(
            [
                {
                    "ranker": RANKER_LABELS.get(n, n),
                    "weighted per-user loss": v["weighted_per_user_loss"],
                    "AUC": v["auc"],
                    "GAUC": v["gauc"],
                    "NDCG@5 (watch time)": v.get("ndcg@5"),
                    "NDCG@10 (watch time)": v.get("ndcg@10"),
                }
                for n, v in rm.items()
            ]
        )
        panels: dict[str, dict[str, list[float]]] = {}
        for name in ("deep_weighted", "deep_click"):
            hist = _load(root / "ranker" / name / "history.json") or []
            for key in ("train_loss", "valid_loss"):
                vals = [h.get(key) for h in hist]
                if vals and all(isinstance(v, int | float) for v in vals):
                    panels.setdefault(f"{key} (weighted log loss)", {})[RANKER_LABELS[name]] = [
                        float(v) for v in vals
                    ]
        rank_figs = (
            [
                Figure(
                    "Ranker training",
                    plots.training_curves(panels),
                    "Per-epoch loss of the deep rankers on their training rows and on the held-out "
                    "latest share of the ranker window; the weights of the best validation epoch are kept.",
                )
            ]
            if panels
            else []
        )
        sections.append(
            Section(
                "Ranking",
                f"Held-out impressions of the test window ({rank['n_rows']} rows on {rank['n_pages']} "
                "pages). Weighted per-user loss [YT16]: over every (clicked, unclicked) pair shown on "
                "the same page, the share of clicked watch time whose item scored no higher than the "
                "unclicked one (lower is better).",
                metrics=metrics["ranking"],
                key_prefix="ranking",
                table=table,
                table_caption="Test-window ranking metrics per ranker.",
                figures=rank_figs,
            )
        )
        cal = rank["calibration"]
        metrics["watch_time"] = cal[SYSTEM_RANKER]
        base.setdefault("lgbm_weighted", {})["watch_time"] = cal.get("lgbm_weighted")
        tables = {}
        for n in cal:
            p = root / "ranking_eval" / f"calibration_{n}.parquet"
            if p.exists():
                tables[RANKER_LABELS[n]] = pd.read_parquet(p)
        figs = [
            Figure(
                "Calibration of expected watch time",
                plots.calibration_plot(tables),
                "Mean predicted exp(logit) against mean observed watch time (0 for an "
                "unclicked impression) per decile of the prediction; the band is +-15%.",
            )
        ]
        pt = root / "ranking_eval" / f"calibration_truth_{SYSTEM_RANKER}.parquet"
        if pt.exists():
            figs.append(truth_calibration_figure(pd.read_parquet(pt)))
        sections.append(
            Section(
                "Expected watch time",
                "exp(logit) of the watch-time-weighted ranker is its expected watch time per impression "
                "(seconds); with ranking.calibrate = true it is exp(g(logit)), g a strictly increasing "
                "map fitted on the ranker's validation impressions (same order, corrected level; "
                "ranking.calibrator says how: 'two_part' = click rate x watch time per click). "
                "Calibration on held-out test impressions by decile of the prediction.",
                metrics=_watch_time_headline(metrics["watch_time"]),
                key_prefix="watch_time",
                figures=figs,
            )
        )

    if e2e:
        sl = e2e["slates"]
        metrics["end_to_end"] = sl[SYSTEM_RANKER]
        for name, v in sl.items():
            if name != SYSTEM_RANKER:
                base.setdefault(name, {})["end_to_end"] = v
        rows = []
        for name, v in sl.items():
            tw = v.get("true_expected_watch_time") or {}
            rows.append(
                {
                    "slate": SLATE_LABELS.get(name, name),
                    **{k: v.get(k) for k in v if k.startswith(("recall", "ndcg"))},
                    "true E[watch time]/user (s)": tw.get("mean"),
                    "95% CI low": tw.get("ci_low"),
                    "95% CI high": tw.get("ci_high"),
                    "share of oracle": v.get("fraction_of_oracle"),
                }
            )
        table = pd.DataFrame(rows)
        figs = []
        if all("true_expected_watch_time" in v for v in sl.values()):
            bars = pd.DataFrame(
                [
                    {"name": SLATE_LABELS.get(n, n), **v["true_expected_watch_time"]}
                    for n, v in sl.items()
                ]
            )
            figs.append(
                Figure(
                    "True expected watch time per user by slate",
                    plots.bars_with_ci(
                        bars,
                        title=f"Top-{e2e['k']} slates: true expected watch time per user",
                        ylabel="seconds per user (ground truth)",
                        highlight=SLATE_LABELS[SYSTEM_RANKER],
                    ),
                    "Ground-truth expected watch time of each user's slate under the simulator, "
                    "mean over held-out users with a bootstrap 95% interval.",
                )
            )
        sections.append(
            Section(
                "End to end",
                f"For {e2e['n_users']} held-out users served at {_iso(e2e['served_at'])}: top-{e2e['k']} "
                "slates from each system, compared with what the users watched in the test window "
                "(recall, NDCG with watch time as gain) and, on the simulated world, by the slate's "
                "true expected watch time under the ground truth (with position bias).",
                metrics=metrics["end_to_end"],
                key_prefix="end_to_end",
                table=table,
                table_caption="Per slate; 'share of oracle' is its true expected watch time in "
                "percent of the oracle slate's.",
                column_formats={"share of oracle": "percent"},
                figures=figs,
            )
        )
    if ab:
        metrics["ab"] = ab["metrics"]
        sections.append(ab_section(ab))

    det_metrics, det_section = determinism_section(ctx.rundir.manifest, cfg)
    metrics["determinism"] = det_metrics
    sections.append(det_section)
    summary = summary_section(retr, rank, e2e)
    if summary is not None:
        metrics["summary"] = summary.metrics
        sections.insert(1, summary)  # right after the data and protocol

    report = Report(
        metrics,
        dataset=dsname,
        split=windows,
        seed=ctx.seed,
        preset=str(cfg["data"].get("world_preset", "custom"))
        + _scale_label(float(cfg["data"].get("world_scale", 1.0))),
        sections=sections,
        title=f"vidrec report: {dsname}",
        intro="Two-stage recommender (YouTube-DNN): candidate generation -> ranking by expected "
        "watch time. Every number is labelled with the data and window it was computed on.",
        extra_meta={
            "config_hash": ctx.rundir.config_hash,
            "git_commit": stage_commits(ctx.rundir.manifest),
            "stage_seconds": stage_seconds(ctx.rundir.manifest),
            **(extra or {}),
        },
    )
    report.write_all(root)
    return report


# the closed-loop A/B's comparison of each arm with the control (pipelines.simulate.summarize_ab)
_VS_CONTROL_NOTES = {
    "control": "the arm every other arm is compared with",
    "relative_watch_time": "watch time per user relative to the control, minus 1 (0.05 = 5% more)",
    "ci": "paired bootstrap 95% interval of that difference (the same visitors in both arms)",
}


def ab_section(ab: dict[str, Any]) -> Section:
    """The closed-loop simulated A/B (ab/ab.json): per-arm table, each arm against the control
    and the watch time per user by arm."""
    arms = ab["metrics"]["arms"]
    table = pd.DataFrame(ab["table"])
    table = table[["arm"] + [c for c in table.columns if c != "arm"]]
    bars = pd.DataFrame(
        [
            {
                "name": n,
                "mean": v["watch_time_per_user"]["mean"],
                "ci_low": v["watch_time_per_user"]["ci"][0],
                "ci_high": v["watch_time_per_user"]["ci"][1],
            }
            for n, v in arms.items()
        ]
    )
    first = ab["config"]["arms"][0]  # the control (report.json sorts the arms' keys)
    order = [*ab["config"]["arms"]]
    bars = bars.set_index("name").loc[[a for a in order if a in arms]].reset_index()
    fig = Figure(
        "A/B: watch time per user by arm",
        plots.bars_with_ci(
            bars,
            title="Closed-loop A/B: watch time per user over the experiment",
            ylabel="seconds per user (sampled by the world)",
            highlight=first,
        ),
        "Total sampled watch time per user over the simulated days, mean over users with a "
        "bootstrap 95% interval; the highlighted arm is the control.",
    )
    return Section(
        "Closed-loop simulated A/B",
        ab["description"],
        metrics={
            "n_users": ab["metrics"]["n_users"],
            "vs_control": ab["metrics"]["vs_control"],
        },
        key_prefix="ab",
        metric_notes={
            "n_users": "simulated users with an impression in any arm (every arm's mean is over "
            "all of them)",
            **{
                f"vs_control.{arm}.{k}": text
                for arm in ab["metrics"]["vs_control"]
                for k, text in _VS_CONTROL_NOTES.items()
            },
        },
        table=table,
        table_caption="Per arm over the whole experiment (CTR and fresh share are ratios of sums; "
        "'vs control' is the relative difference in watch time per user with a paired bootstrap 95% interval).",
        figures=[fig],
    )


# the stages whose numbers depend on floating-point training (their runtime settings matter)
_TRAINING_STAGES = ("candidate_gen", "ranker")
_SETTINGS_NOTES = {
    "seed": "the one seed that drives data generation, initialisation, sampling and shuffling",
    "trained_on": "the device of the training stages (config device 'auto' picks a visible GPU)",
    "torch_threads": "torch intra-op threads: float sums are split by thread, so the count "
    "must match for bit-identical results",
    "deterministic_algorithms": "torch.use_deterministic_algorithms was on",
    "cudnn_deterministic": "torch.backends.cudnn.deterministic",
    "cudnn_benchmark": "torch.backends.cudnn.benchmark (autotuning picks kernels per run)",
    "cuda_matmul_allow_tf32": "torch.backends.cuda.matmul.allow_tf32 (TF32 matmuls on GPU)",
    "cublas_workspace_config": "the CUBLAS_WORKSPACE_CONFIG environment variable (n/a = unset)",
    "bit_identical_rerun_expected": "whether a rerun with this seed on this machine is expected "
    "to reproduce every metric exactly",
    "settings_differ_between_stages": "the training stages ran with different settings (e.g. "
    "a run resumed on another machine); see the manifest's per-stage runtime",
}


def determinism_section(
    manifest: dict[str, Any], config: dict[str, Any]
) -> tuple[dict[str, Any], Section]:
    """Return (report.json metrics, report section) on what this run's numbers depend on.

    Reads the runtime settings each training stage recorded in the manifest (threads, devices,
    torch's determinism switches) and says what is reproducible and what is not on GPU.
    """
    stages = manifest.get("stages", {})
    recorded = [
        stages[s]["runtime"]
        for s in _TRAINING_STAGES
        if isinstance(stages.get(s, {}).get("runtime"), dict)
    ]
    runtime = recorded[0] if recorded else {}
    on_gpu = any(r.get("cuda_available") for r in recorded) and any(
        str(config.get(sec, {}).get("device", "auto")) != "cpu"
        for sec in ("candidate_gen", "ranking")
    )
    metrics: dict[str, Any] = {
        "seed": int(config["seed"]),
        "trained_on": (runtime.get("cuda_device") or "cuda") if on_gpu else "cpu",
        **{
            k: runtime.get(k)
            for k in (
                "torch_threads",
                "deterministic_algorithms",
                "cudnn_deterministic",
                "cudnn_benchmark",
                "cuda_matmul_allow_tf32",
                "cublas_workspace_config",
            )
        },
        # on CPU only one intra-op thread sums in a fixed order (measured: two 2-thread runs of
        # the default world differ from the first epoch's loss on, two 1-thread runs do not)
        "bit_identical_rerun_expected": (not on_gpu and runtime.get("torch_threads") == 1)
        or bool(
            on_gpu
            and runtime.get("deterministic_algorithms")
            and runtime.get("cublas_workspace_config")
        ),
        "settings_differ_between_stages": any(r != runtime for r in recorded),
    }
    description = (
        "What a rerun reproduces. Deterministic: on CPU with one torch thread "
        "(OMP_NUM_THREADS=1), the same seed, config, data and package versions on the same "
        "machine give bit-identical weights, indexes and metrics (every random draw takes an "
        "explicit seeded generator; annoy and HNSW indexes "
        "build with one thread and a fixed seed; LightGBM runs with deterministic=True, a "
        "seed and a fixed thread count; a run killed and resumed from its checkpoints "
        "reaches the same numbers; tests/test_crash_resume.py checks both). Only timings "
        "(seconds, latencies, throughput) differ between reruns. With several torch threads "
        "some CPU kernels split their float sums across threads in an order that can change "
        "from run to run: two 2-thread runs of the default world differ in the 6th digit of "
        "the first epoch's loss and, compounded over training, in the 3rd digit of the test "
        "metrics. "
    )
    # why GPU reruns differ matters only to a run that trained on one
    gpu = (
        "This run trained on a GPU, which is not deterministic unless torch.use_deterministic_algorithms(True) is set together with "
        "CUBLAS_WORKSPACE_CONFIG=:4096:8: the backward passes of the embedding lookups and "
        "embedding bags (candidate-generator towers, the ranker's history and topic bags) "
        "accumulate gradient rows with atomic adds (index_add_/scatter_add_-style kernels), "
        "whose float summation order changes from run to run; cuBLAS may choose split-K "
        "reductions and other kernels per run, and TF32 matmuls round differently; with "
        "several GPUs the gradient all-reduce adds in an order that depends on the number "
        "of ranks. These are rounding-level differences per step that compound over training "
        "(and can move an early-stopping epoch), so GPU reruns agree closely, not bit for "
        "bit. "
    )
    description += (gpu if on_gpu else "This run trained on CPU. ") + (
        "The settings below are those the training stages recorded in manifest.json."
    )
    return metrics, Section(
        "Determinism",
        description,
        metrics=metrics,
        key_prefix="determinism",
        metric_notes=_SETTINGS_NOTES,
    )


# retrieval rows: the candidate generator, then the baselines (report.json sorts keys)
_RETRIEVAL_ORDER = (
    "annoy",
    "hnsw",
    "exact",
    "most_popular",
    "recent_popular",
    "item_knn",
    "ease",
)


def _in_retrieval_order(d: dict[str, Any]) -> dict[str, Any]:
    """`d` with the names of _RETRIEVAL_ORDER first, in that order, then the rest sorted."""
    rank = {n: i for i, n in enumerate(_RETRIEVAL_ORDER)}
    return dict(sorted(d.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def _tuning_metrics(rec: dict[str, Any]) -> dict[str, Any]:
    """report.json entry of one tuned retrieval baseline: the chosen value and the grid."""
    val = rec["validation"]
    scores = val["scores"]
    best = rec["grid"].index(rec["chosen"])
    return {
        "hyperparameter": rec["hyperparameter"],
        "chosen": rec["chosen"],
        "chosen_label": rec["chosen_label"],
        f"validation_{val['metric']}": scores[best],
        "grid": rec["grid"],
        f"grid_validation_{val['metric']}": scores,
        "validation_users": val["n_users_with_targets"],
    }


def _tuned_baselines_section(
    tuned: dict[str, Any], flat_m: dict[str, Any], retr: dict[str, Any]
) -> Section:
    """The tuning of the retrieval baselines: grid, validation scores, choice, test score."""
    rows, notes = [], []
    window = None
    for name, rec in tuned.items():
        if "skipped" in rec:
            notes.append(f"{rec['label']} was skipped: {rec['skipped']}.")
            continue
        val = rec["validation"]
        window = val["window"]
        metric = val["metric"]
        grid = "; ".join(
            f"{lab}: {'n/a' if sc is None else f'{sc:.4f}'}"
            + (" (chosen)" if v == rec["chosen"] else "")
            for lab, v, sc in zip(rec["grid_labels"], rec["grid"], val["scores"], strict=True)
        )
        rows.append(
            {
                "baseline": rec["label"],
                "hyperparameter": rec["hyperparameter"],
                "chosen": rec["chosen_label"],
                f"validation {metric} per grid value": grid,
                f"test {metric}": flat_m.get(name, {}).get(metric),
            }
        )
    where = (
        f"the ranker window [{_iso(window[0])}, {_iso(window[1])}), users served at "
        f"{_iso(window[0])}"
        if window
        else "the ranker window"
    )
    return Section(
        "Retrieval baselines (tuned on the ranker window)",
        "Each baseline's one hyperparameter is chosen by validation Recall@50 on "
        f"{where}: fitted on the watches before the window's start, the window's watches of its "
        "active users (at most evaluation.max_users) as targets. Then it is refitted on every "
        f"watch before the test window with the chosen value and served at "
        f"{_iso(retr['served_at'])} to the same held-out users as the candidate generator, with "
        "the same exclusions, targets and metrics (the retrieval table above). Nothing of the "
        "test window enters the choice. Recent popular counts the watches of the last W "
        "seconds before serving; item-kNN keeps each item's k most cosine-similar items; EASE "
        "is the closed-form item-item regression with L2 penalty λ; PureSVD scores the "
        "projection of a history on the top singular vectors."
        + (" " + " ".join(notes) if notes else ""),
        table=pd.DataFrame(rows) if rows else None,
        table_caption="Grid, validation score per value (ranker window) and the chosen value's "
        "test-window score per baseline.",
    )


def _watch_time_headline(w: dict[str, Any]) -> dict[str, Any]:
    """The calibration numbers a reader needs (all of them stay in report.json)."""
    keep = {
        "observed": ("overall_ratio", "max_abs_relative_error", "bins_within_tolerance", "n"),
        "errors": ("mae", "rmse", "bias", "mean_pred", "mean_obs"),
        "ground_truth_calibration": (
            "overall_ratio",
            "max_abs_relative_error",
            "bins_within_tolerance",
        ),
        "vs_ground_truth": ("mae", "pearson", "spearman"),
    }
    return {g: {k: w[g][k] for k in ks if k in w.get(g, {})} for g, ks in keep.items() if g in w}


def _scalars(d: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (d or {}).items() if isinstance(v, int | float | str | bool)}


def _curves(history: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    panels: dict[str, dict[str, list[float]]] = {}
    for key in history[0]:
        if not (key.endswith("loss") or "recall" in key):  # throughput and seconds are timing noise
            continue
        vals = [h.get(key) for h in history]
        if all(isinstance(v, int | float) for v in vals):
            panels[key] = {"candidate generator": [float(v) for v in vals]}
    return panels


def _recall_curve_frame(models: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for model, m in models.items():
        for key, value in m.items():
            if not key.startswith(("recall@", "popularity.")) or value is None:
                continue
            parts = key.split(".")
            if len(parts) == 1:
                bucket, metric = "all", parts[0]
            elif len(parts) == 3 and parts[2].startswith("recall@"):
                bucket, metric = parts[1], parts[2]
            else:
                continue
            rows.append(
                {
                    "model": model,
                    "bucket": bucket,
                    "k": int(metric.split("@")[1]),
                    "value": float(value),
                }
            )
    return pd.DataFrame(rows)


def _scale_label(scale: float) -> str:
    """The label of a world scaled by `data.world_scale` (" x0.5"); "" at the preset's size."""
    return "" if scale == 1.0 else f" x{scale:g}"
