"""`vidrec tune`: hyperparameter search for the candidate generator on the validation window.

Protocol. Every trial trains the candidate generator on [start, train_end) with one set of
settings and is scored by its best validation Recall@K: the next watches of the ranker window
[train_end, valid_end), the metric the run's early stopping already uses. The test window is
never read by the search. Optuna's TPE sampler (seeded by the run's seed) proposes the settings
of `SEARCH_SPACE`; a median pruner stops a trial whose recall after an epoch falls below the
median of the earlier trials at that epoch (after a few complete trials and two epochs).

Resumable. The study is stored in OUT/search/study.db (SQLite through Optuna's RDB storage):
an interrupted search, or a rerun with a larger budget, continues it; trials left running by a
killed process are marked failed and not counted. A study made from another base config is
refused (its trials would not be comparable).

Outputs (OUT is a vidrec run directory: ownership marker, lock and write ledger as `vidrec run`):
    search/study.db     the Optuna study
    search/trials.json  every trial: number, state, settings, value, per-epoch recall, seconds
    search/trials.png   validation recall per trial and the best so far
    search/best.toml    the best trial's settings over the derived ones, a config file that
                        `vidrec run --config` takes (its [tuned] table names the study)
    tune.json, tune.md  tuned vs derived settings side by side and, unless compare=False, both
                        evaluated on the test window by full runs in runs/derived and runs/tuned
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vidrec.features.atomic import atomic_path, atomic_write_json, atomic_write_text
from vidrec.pipelines.config import (
    ConfigError,
    UsageError,
    apply_overrides,
    check_values,
    config_hash,
    flatten,
)
from vidrec.pipelines.context import RunContext
from vidrec.pipelines.run import (
    cg_config,
    featurizer_from_config,
    run_pipeline,
    validation_examples,
)
from vidrec.pipelines.rundir import RunDir, check_data_outside_run, git_commit

log = logging.getLogger("vidrec")

STUDY_NAME = "candidate_gen"
#: the settings searched, each with its range (documented in `suggest`)
SEARCH_SPACE: dict[str, str] = {
    "candidate_gen.learning_rate": "log-uniform 3e-4 .. 1e-2",
    "candidate_gen.embedding_dim": "16, 32 or 64 (the user tower's last layer follows)",
    "candidate_gen.user_layers": "one hidden layer of 2x or 4x the embedding width, or none",
    "candidate_gen.num_negatives": "powers of two from 64 to a quarter of the catalog (<= 2048)",
    "candidate_gen.normalize_embeddings": "true (cosine scores) or false (inner products)",
    "candidate_gen.temperature": "log-uniform 0.05 .. 1",
    "candidate_gen.unigram_power": "uniform 0 .. 1 (0: uniform negatives)",
    "candidate_gen.ssl_alpha": "uniform 0 .. 0.5 (weight of the self-supervised loss)",
    "candidate_gen.weight_decay": "0, 1e-6, 1e-5 or 1e-4",
    "features.max_history": "10, 25 or 50 recent watches averaged",
    "candidate_gen.recent_history": "0 (none), 1 or 3: a second bag of the last watches",
}
# complete trials before the pruner judges, and epochs a trial always gets
_STARTUP_TRIALS = 4
_WARMUP_EPOCHS = 2


def suggest(trial: Any, n_items: int) -> dict[str, Any]:
    """The trial's settings ({dotted config key: value}) drawn from SEARCH_SPACE; the negatives'
    range depends on the catalog (`n_items` items seen in training)."""
    dim = trial.suggest_categorical("embedding_dim", [16, 32, 64])
    width = trial.suggest_categorical("hidden_multiple", [0, 2, 4])
    top = int(min(2048, max(64, 2 ** math.floor(math.log2(max(n_items / 4, 64))))))
    negatives = [2**p for p in range(6, int(math.log2(top)) + 1)]
    return {
        "candidate_gen.learning_rate": trial.suggest_float("learning_rate", 3e-4, 1e-2, log=True),
        "candidate_gen.embedding_dim": dim,
        "candidate_gen.user_layers": ([width * dim] if width else []) + [dim],
        "candidate_gen.num_negatives": trial.suggest_categorical("num_negatives", negatives),
        "candidate_gen.normalize_embeddings": trial.suggest_categorical(
            "normalize_embeddings", [True, False]
        ),
        "candidate_gen.temperature": trial.suggest_float("temperature", 0.05, 1.0, log=True),
        "candidate_gen.unigram_power": trial.suggest_float("unigram_power", 0.0, 1.0),
        "candidate_gen.ssl_alpha": trial.suggest_float("ssl_alpha", 0.0, 0.5),
        "candidate_gen.weight_decay": trial.suggest_categorical(
            "weight_decay", [0.0, 1e-6, 1e-5, 1e-4]
        ),
        "features.max_history": trial.suggest_categorical("max_history", [10, 25, 50]),
        "candidate_gen.recent_history": trial.suggest_categorical("recent_history", [0, 1, 3]),
    }


class _Examples:
    """Training and validation examples per features config (a trial that changes the history
    length gets its own; the others share them)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.cache: dict[str, tuple[Any, Any, Any]] = {}

    def get(self, config: dict[str, Any]) -> tuple[Any, Any, Any]:
        cap = config["candidate_gen"]["max_examples_per_user"]
        protocol = config["candidate_gen"].get("valid_protocol")
        key = json.dumps([config["features"], cap, protocol], sort_keys=True)
        if key not in self.cache:
            ds, split = self.ctx.dataset(), self.ctx.split()
            f = featurizer_from_config(config).fit(ds, split)
            per_user = cap if cap > 0 else None
            self.cache[key] = (
                f.examples(ds, "train", max_examples_per_user=per_user),
                validation_examples(config, f, ds),
                f.item_features(ds),
            )
        return self.cache[key]


def _trial_config(base: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    cfg = apply_overrides(base, settings)
    check_values(cfg)
    return cfg


def _objective(base: dict[str, Any], examples: _Examples, n_items: int) -> Callable[[Any], float]:
    import optuna

    from vidrec.candidate_gen.train import train_candidate_generator

    def objective(trial: optuna.Trial) -> float:
        settings = suggest(trial, n_items)
        cfg = _trial_config(base, settings)
        train, valid, items = examples.get(cfg)
        if not len(valid):
            raise ConfigError("the ranker window has no validation examples: nothing to tune on")
        ccfg = cg_config(cfg)
        key = f"valid_recall@{ccfg.valid_k}"
        curve: list[float] = []
        t0 = time.perf_counter()

        def on_epoch(record: dict[str, Any]) -> None:
            curve.append(float(record[key]))
            trial.set_user_attr("curve", curve)
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
            trial.report(curve[-1], int(record["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned()

        train_candidate_generator(
            ccfg, train, items, valid=valid, progress=False, on_epoch=on_epoch
        )
        return max(curve)

    return objective


def _study(path: Path, seed: int, base_hash: str) -> Any:
    import optuna

    # a trial whose process died stops beating: after the grace period optimize() marks it
    # failed (not counted), so a resumed search does not wait on it
    with warnings.catch_warnings():  # the heartbeat is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{path}", heartbeat_interval=60, grace_period=120
        )
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=_STARTUP_TRIALS, n_warmup_steps=_WARMUP_EPOCHS
        ),
        load_if_exists=True,
    )
    made_from = study.user_attrs.get("base_config_hash")
    if made_from is None:
        study.set_user_attr("base_config_hash", base_hash)
    elif made_from != base_hash:
        raise UsageError(
            f"{path} holds a study of another base config (hash {made_from}, now {base_hash}): "
            "its trials are not comparable; give another --out to start a new search"
        )
    return study


def _log_trial(study: Any, trial: Any) -> None:
    curve = trial.user_attrs.get("curve", [])
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = max((t.value for t in complete), default=float("nan"))
    log.info(
        "tune: trial %d %s after %d epoch(s), %.0f s: validation %.4f (best %.4f)",
        trial.number,
        trial.state.name.lower(),
        len(curve),
        float(trial.user_attrs.get("seconds", 0.0)),
        max(curve) if curve else float("nan"),
        best,
    )


def _finished(study: Any) -> int:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=done))


def trials_table(study: Any) -> list[dict[str, Any]]:
    """Every trial of the study as a JSON-able dict."""
    return [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "params": t.params,
            "curve": t.user_attrs.get("curve", []),
            "seconds": t.user_attrs.get("seconds"),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def plot_trials(trials: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Validation metric per trial (pruned trials at their last epoch) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    best, xs, bests = -np.inf, [], []
    for t in trials:
        value = t["value"] if t["value"] is not None else (max(t["curve"]) if t["curve"] else None)
        if value is None:
            continue
        pruned = t["state"] == "pruned"
        ax.scatter(
            t["number"], value, c="tab:gray" if pruned else "tab:blue", s=18,
            marker="x" if pruned else "o",
        )
        if t["state"] == "complete":
            best = max(best, value)
        if np.isfinite(best):
            xs.append(t["number"])
            bests.append(best)
    ax.step(xs, bests, where="post", c="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric + " (validation)")
    ax.set_title("candidate generator search (x: pruned)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def best_toml(settings: dict[str, Any], tuned: dict[str, Any]) -> str:
    """A config file of the tuned settings ({dotted key: value}) and a [tuned] table that says
    where they came from (`resolve_config` keeps it as the config's `tuned` section)."""
    import tomli_w

    doc: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        section, name = key.split(".", 1)
        doc.setdefault(section, {})[name] = value
    doc["tuned"] = dict(tuned)
    head = "# vidrec tune: the best trial's settings, chosen on the validation window only\n"
    return head + tomli_w.dumps(doc)


def search(
    base: dict[str, Any],
    out: Path,
    ctx: RunContext,
    *,
    trials: int | None,
    minutes: float | None,
    progress: bool,
) -> dict[str, Any]:
    """Run (or resume) the study until it holds `trials` finished trials or `minutes` pass;
    write OUT/search/*; return the best trial's settings and the study's summary."""
    import optuna

    from vidrec.common.torch_utils import NonFiniteLossError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sdir = out / "search"
    sdir.mkdir(parents=True, exist_ok=True)
    study = _study(sdir / "study.db", int(base["seed"]), config_hash(base))
    n_items = int(ctx.dataset().items["item_id"].nunique())
    done = _finished(study)
    todo = None if trials is None else max(int(trials) - done, 0)
    log.info(
        "tune: %d trial(s) already in %s; running %s more%s",
        done,
        sdir / "study.db",
        "up to the time budget" if todo is None else todo,
        f" within {minutes:g} min" if minutes else "",
    )
    if todo != 0:
        study.optimize(
            _objective(base, _Examples(ctx), n_items),
            n_trials=todo,
            timeout=None if minutes is None else float(minutes) * 60.0,
            show_progress_bar=progress,
            # a learning rate that makes training diverge fails its trial, which the sampler
            # leaves out; the search goes on
            catch=(NonFiniteLossError,),
            callbacks=[_log_trial],
        )
    table = trials_table(study)
    complete = [t for t in table if t["state"] == "complete"]
    if not complete:
        raise ConfigError(f"{sdir / 'study.db'}: no trial completed; raise --trials or --minutes")
    best = study.best_trial
    settings = suggest(optuna.trial.FixedTrial(best.params), n_items)
    metric = f"Recall@{cg_config(base).valid_k}"
    atomic_write_json(sdir / "trials.json", {"metric": metric, "trials": table})
    plot_trials(table, metric, sdir / "trials.png")
    base_flat = flatten(base)
    tuned = {
        "study": str((sdir / "study.db").resolve()),
        "trial": int(best.number),
        "validation_metric": metric,
        "validation_value": float(best.value),
        "trials": len(table),
        "before": {k: base_flat[k] for k in settings},  # the settings the search started from
    }
    atomic_write_text(sdir / "best.toml", best_toml(settings, tuned))
    return {"settings": settings, "tuned": tuned, "trials": table, "metric": metric}


#: the metric of each stage's summary entry in report.json (pipelines.report.summary_section)
HEADLINE_METRICS = {
    "retrieval": "Recall@50",
    "ranking": "weighted per-user loss (lower is better)",
    "end_to_end": "top-10 recall of the test window's watches",
}


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    s = report.get("summary") or {}
    return {
        stage: {k: s[stage].get(k) for k in ("system", "best_baseline", "best")}
        for stage in ("retrieval", "ranking", "end_to_end")
        if isinstance(s.get(stage), dict)
    }


def tune(
    config: dict[str, Any],
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    trials: int | None = 30,
    minutes: float | None = None,
    compare: bool = True,
    progress: bool = True,
    shared: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Search the candidate generator's settings on the validation window (module docstring),
    then, with `compare`, run the pipeline with the derived and with the tuned settings and put
    their test-window numbers side by side. Returns (and writes to OUT/tune.json) the result."""
    if trials is None and minutes is None:
        raise UsageError("give a budget: --trials N and/or --minutes M")
    if trials is not None and int(trials) < 1:
        raise UsageError(f"--trials must be >= 1, got {trials}")
    if minutes is not None and not float(minutes) > 0:
        raise UsageError(f"--minutes must be > 0, got {minutes}")
    out = Path(out)
    check_data_outside_run(data_dir, out)
    derived_dir, tuned_dir = out / "runs" / "derived", out / "runs" / "tuned"
    tune_config = {"tune": {"space": SEARCH_SPACE, "study": STUDY_NAME}, "base": config}
    with RunDir(out, tune_config) as rundir:
        # the derived settings' run reads and splits the data once; the search reads it there
        run_pipeline(
            config, derived_dir, data_dir=data_dir, progress=progress, stages=("data",),
            shared=shared,
        )
        with RunDir(derived_dir, config) as drun:
            ctx = RunContext(drun, Path(data_dir) if data_dir else None, progress)
            found = search(config, out, ctx, trials=trials, minutes=minutes, progress=progress)
        rundir.save()
    tuned_config = apply_overrides(config, found["settings"])
    tuned_config["tuned"] = found["tuned"]
    check_values(tuned_config)
    base_flat = flatten(config)
    rows = [
        {"setting": k, "derived": base_flat.get(k), "tuned": v}
        for k, v in found["settings"].items()
    ]
    result: dict[str, Any] = {
        "experiment": "tune",
        "protocol": "each trial: train on [start, train_end), scored by its best validation "
        f"{found['metric']} on the next watches of the ranker window; the test window is only "
        "read by the two comparison runs",
        "commit": git_commit(),
        "search_space": SEARCH_SPACE,
        "settings": rows,
        **{k: found[k] for k in ("tuned", "metric")},
        "n_trials": len(found["trials"]),
        "n_complete": sum(t["state"] == "complete" for t in found["trials"]),
        "n_pruned": sum(t["state"] == "pruned" for t in found["trials"]),
        "runs": {},
    }
    if compare:
        for name, cfg, d in (("derived", config, derived_dir), ("tuned", tuned_config, tuned_dir)):
            report = run_pipeline(
                cfg, d, data_dir=data_dir, progress=progress,
                shared=dict(shared or {}) if name == "derived" else None,
            )
            result["runs"][name] = {"dir": str(d), "test": _headline(report)}
    with RunDir(out, tune_config):
        atomic_write_json(out / "tune.json", result)
        atomic_write_text(out / "tune.md", render_markdown(result))
    return result


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


def render_markdown(result: dict[str, Any]) -> str:
    """The tune report (generated from tune.json)."""
    t = result["tuned"]
    lines = [
        "# vidrec tune: candidate generator",
        "",
        f"Protocol: {result['protocol']}.",
        "",
        f"{result['n_trials']} trials ({result['n_complete']} complete, {result['n_pruned']} "
        f"pruned); best: trial {t['trial']}, validation {t['validation_metric']} "
        f"{t['validation_value']:.4f}. Commit {result.get('commit')}.",
        "",
        "![trials](search/trials.png)",
        "",
        "| setting | derived | tuned |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['setting']} | {_fmt(r['derived'])} | {_fmt(r['tuned'])} |"
        for r in result["settings"]
    ]
    if result["runs"]:
        lines += [
            "",
            "Both settings evaluated on the test window (full runs, same seed and data):",
            "",
            "| stage | metric | derived | tuned | best baseline (derived run) |",
            "|---|---|--:|--:|---|",
        ]
        d, tu = result["runs"].get("derived", {}), result["runs"].get("tuned", {})
        for stage in ("retrieval", "ranking", "end_to_end"):
            a, b = d.get("test", {}).get(stage, {}), tu.get("test", {}).get(stage, {})
            if not a and not b:
                continue
            lines.append(
                f"| {stage} | {HEADLINE_METRICS[stage]} | {_fmt(a.get('system'))} | "
                f"{_fmt(b.get('system'))} | {a.get('best_baseline')}: {_fmt(a.get('best'))} |"
            )
    return "\n".join(lines) + "\n"
