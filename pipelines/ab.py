"""`vidrec ab`: build arms from finished run directories and run the closed-loop simulation."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vidrec.candidate_gen.train import TrainedCandidateGenerator
from vidrec.features.atomic import atomic_write_json, make_dirs
from vidrec.features.ranker_features import build_ranker_frame
from vidrec.features.split import TimeSplit
from vidrec.features.tables import Dataset
from vidrec.pipelines.config import ConfigError
from vidrec.pipelines.context import RunContext
from vidrec.pipelines.rundir import RunDir, read_lock, serving_cg_dir
from vidrec.pipelines.simulate import (
    Policy,
    daily_index,
    ranker_policy,
    run_ab,
    summarize_ab,
    world_policy,
)
from vidrec.ranking.baselines import LightGBMWeightedRanker
from vidrec.ranking.train import TrainedRanker, train_ranker

log = logging.getLogger("vidrec")

_RANKER_DIRS = {
    "system": "deep_weighted",
    "click_only": "deep_click",
    "lgbm_weighted": "lgbm_weighted",
}
_WORLD = ("most_popular", "logging_policy", "random", "oracle")


def _context(run: Path) -> RunContext:
    """The run's context, after checking its serving artifacts belong together (as serving
    does: finished stages, sha256 per file, same run, no stale stage)."""
    from vidrec.pipelines.serve import SERVING_INPUTS, SERVING_STAGES

    rundir = RunDir.open(run)
    rundir.verify(SERVING_STAGES, SERVING_INPUTS)
    ctx = RunContext(rundir, progress=False)
    if not ctx.is_synthetic:
        raise ConfigError(
            f"run {run} is on {ctx.config['data']['source']!r} data: the A/B simulation needs the synthetic world's ground truth"
        )
    return ctx


def _arm(
    spec: str, default_run: Path, k: int, seed: int, cache: dict[Path, RunContext]
) -> tuple[str, Policy, RunContext]:
    policy, _, run = spec.partition("@")
    run_dir = Path(run) if run else default_run
    if policy not in (*_RANKER_DIRS, "cg_only", *_WORLD):
        raise ConfigError(
            f"unknown A/B policy {policy!r}; choose from {', '.join((*_RANKER_DIRS, 'cg_only', *_WORLD))}"
        )
    ctx = cache.setdefault(run_dir, _context(run_dir))
    name = spec if run else policy
    if policy in _WORLD:
        return name, world_policy(ctx.world(), policy, k, seed), ctx
    cg = TrainedCandidateGenerator.load(serving_cg_dir(run_dir))
    index = daily_index(cg, ctx.config["retrieval"], ctx.seed)
    n_cand = int(ctx.config["retrieval"]["n_candidates"])
    if policy == "cg_only":
        return name, ranker_policy(cg, index, None, k, n_cand), ctx
    rdir = run_dir / "ranker" / _RANKER_DIRS[policy]
    ranker = (
        LightGBMWeightedRanker.load(rdir)
        if policy == "lgbm_weighted"
        else TrainedRanker.load(rdir / "model")
    )
    hl = int(ctx.config["ranking"]["history_len"])
    return name, ranker_policy(cg, index, ranker, k, n_cand, hl), ctx


@contextlib.contextmanager
def _ab_locks(run: Path, arm_specs: list[str]) -> Iterator[None]:
    """The run is written (ab/ab.json, the report): hold its writer's lock; the runs of other
    arms (`policy@RUN`) are only read: hold their readers' locks."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(RunDir.open(run, write=True))
        others = {Path(r) for _, _, r in (spec.partition("@") for spec in arm_specs) if r}
        for other in sorted(others - {run}):
            stack.enter_context(read_lock(other))
        yield


def run_ab_command(
    run: Path,
    arm_specs: list[str],
    *,
    days: int,
    k: int,
    max_visits: int,
    retrain: bool,
    seed: int | None,
) -> dict[str, Any]:
    if len(arm_specs) < 2:
        raise ConfigError("an A/B test needs at least two arms, e.g. --arms system,most_popular")
    if days < 1:
        raise ConfigError(f"--days must be >= 1, got {days}")
    with _ab_locks(run, arm_specs):
        cache: dict[Path, RunContext] = {}
        base_ctx = cache.setdefault(run, _context(run))
        seed = base_ctx.seed if seed is None else int(seed)
        arms: dict[str, Policy] = {}
        for spec in arm_specs:
            name, policy, _ = _arm(spec, run, k, seed, cache)
            if name in arms:
                raise ConfigError(f"arm {name!r} given twice")
            arms[name] = policy
        world = base_ctx.world()
        split: TimeSplit = base_ctx.split()
        # every arm starts from the logs as they were at the start of the test window
        ds = base_ctx.dataset()
        base_logs = _logs_before(ds, split.valid_end)
        retrain_fn = _retrainer(base_ctx, k) if retrain else None
        results = run_ab(
            world,
            base_logs,
            arms,
            start=split.valid_end,
            days=days,
            k=k,
            seed=seed,
            max_visits_per_day=max_visits,
            retrain=retrain_fn,
        )
        summary = summarize_ab(
            results, ds.items, n_boot=int(base_ctx.config["evaluation"]["bootstrap"]), seed=seed + 41
        )
        summary["description"] = (
            f"Closed loop over {days} simulated day(s) from the start of the test window: the world's visitors "
            f"(at most {max_visits or 'all'} visits a day, the same visitors and random draws for every arm) get a "
            f"top-{k} slate from each arm; clicks and watch times come from the world's ground truth and feed back "
            f"into that arm's own logs{' and its ranker is refitted nightly' if retrain else ''}. First arm "
            f"({arm_specs[0]}) is the control; intervals are bootstrap 95% over users (paired for the differences)."
        )
        summary["config"] = {
            "arms": arm_specs,
            "days": days,
            "k": k,
            "max_visits_per_day": max_visits,
            "retrain": retrain,
            "seed": seed,
        }
        out = make_dirs(run / "ab")
        atomic_write_json(out / "ab.json", summary)
        from vidrec.pipelines.report import build_report

        build_report(base_ctx)
        return summary


def _logs_before(ds: Dataset, t: int) -> Dataset:
    """The data set restricted to events strictly before `t` (the catalog stays whole)."""

    def cut(df):
        return None if df is None else df[df["timestamp"].to_numpy() < t].reset_index(drop=True)

    return Dataset(
        users=ds.users,
        items=ds.items,
        watches=cut(ds.watches),
        searches=cut(ds.searches),
        impressions=cut(ds.impressions),
        name=ds.name,
        meta=dict(ds.meta),
    )


def _retrainer(ctx: RunContext, k: int):
    """Nightly refit of an arm's deep ranker on the last days of impressions in its own logs."""
    from vidrec.pipelines import scoring
    from vidrec.pipelines.stages_rank import ranker_config, ranker_time_windows

    cg = TrainedCandidateGenerator.load(serving_cg_dir(ctx.path))
    index = daily_index(cg, ctx.config["retrieval"], ctx.seed)
    n_cand = int(ctx.config["retrieval"]["n_candidates"])
    split = ctx.split()
    window = split.valid_end - split.train_end

    def refit(name: str, logs: Dataset) -> Policy:
        if name not in ("system", "click_only"):
            return _arm(name, ctx.path, k, ctx.seed, {ctx.path: ctx})[1]
        imp = logs.impressions
        t_now = int(imp["timestamp"].max()) + 1
        req = imp[imp["timestamp"].to_numpy() >= t_now - window].reset_index(drop=True)
        req = scoring.add_cg_features(cg, logs, req)
        windows = ranker_time_windows(ctx)
        frame = build_ranker_frame(
            logs,
            req,
            history_len=int(ctx.config["ranking"]["history_len"]),
            time_windows=windows or None,
        )
        ts = frame.rows["timestamp"].to_numpy()
        cut = np.quantile(ts, 0.8)
        cfg = ranker_config(ctx.config, "watch_time" if name == "system" else "click", windows)
        model = train_ranker(
            cfg,
            frame.take(np.flatnonzero(ts < cut)),
            frame.take(np.flatnonzero(ts >= cut)),
            progress=False,
        )
        return ranker_policy(cg, index, model, k, n_cand, int(ctx.config["ranking"]["history_len"]))

    return refit
