"""CLI commands that run models: run, recommend, predict, ab (registered into `vidrec`)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from vidrec.pipelines.config import AUTO, PRESETS, UsageError, data_statistics, resolve_config

INT64_MAX = 2**63 - 1


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (e.g. -k)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


# text that reads as a number without being plain integer text ('1e2', '73.0', '+6'): as in
# the data (features.schema), it is neither an integer id nor a string id
_NUMBER_LIKE = re.compile(r"(?i)[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|inf|infinity|nan)")


def id_value(text: str) -> int | str:
    """argparse type: a user or item id as the data has it.

    Plain integer text within int64 gives an int ('42'); other text is a string id, kept as
    given ('u1', 'dQw4w9WgXcQ', '007': the serving run's ids decide what it names, e.g. '007'
    is user 7 of integer ids). Refused: empty text, surrounding spaces, all-digit ids beyond
    int64, and numbers written otherwise ('1e2', '73.0', '+6').
    """
    if not text or text.strip() != text:
        raise argparse.ArgumentTypeError(
            f"ids are integer text or string ids without surrounding spaces, got {text!r}"
        )
    if text.lstrip("-").isdigit() and text.isascii():
        v = int(text)
        if not 0 <= v <= INT64_MAX:
            raise argparse.ArgumentTypeError(
                f"id {text} is outside 0..{INT64_MAX} (64-bit ids), so no user or item has it"
            )
        return v if str(v) == text else text
    if _NUMBER_LIKE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"ids are integer text, got {text!r}: a number written with a sign, a decimal point "
            "or an exponent is no id (string ids such as 'u1' are taken as they are)"
        )
    return text



def _stage_list(option: str, text: str | None, stages: tuple[str, ...]) -> tuple[str, ...]:
    if not text:
        return ()
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [s for s in names if s not in stages]
    if unknown or not names:
        raise UsageError(
            f"{option}: unknown stage(s) {unknown or [text]}; stages are {', '.join(stages)}"
        )
    return names


def add_config_arguments(s: argparse.ArgumentParser) -> None:
    """The data and config options of `vidrec run` (also taken by `vidrec tune`)."""
    s.add_argument(
        "--preset",
        default=None,
        choices=(*PRESETS, AUTO),
        help="named settings; default: 'auto' with --data (settings derived from the log's own "
        "statistics, listed in the report), 'default' for the built-in simulated world",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--data",
        default=None,
        help="a data directory in the contract layout (default: the built-in synthetic world)",
    )
    s.add_argument(
        "--dataset",
        default=None,
        choices=("dir", "movielens", "kuairand"),
        help="layout of --data/--data-dir: the contract layout (dir, the default), or an official "
        "MovieLens (ml-latest(-small), ml-100k, ml-1m) or KuaiRand-Pure directory",
    )
    s.add_argument("--data-dir", dest="data_dir_alias", default=None, help="same as --data")
    s.add_argument("--config", default=None, help="TOML/JSON file of config values to apply")
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set ranking.hidden=[1024,512,256] (repeatable)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "run",
        help="the main job: data -> candidate generator -> index -> ranker -> slates -> report",
        description="Run (or resume) the whole pipeline into a run directory and write "
        "report.json, report.md and report.html there. A rerun skips finished stages.",
    )
    s.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    add_config_arguments(s)
    s.add_argument("--stages", default=None, help="comma-separated subset of stages to run")
    s.add_argument(
        "--redo", default=None, help="comma-separated stages to run again even if finished"
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="training processes per machine (DDP via torchrun; gloo on CPU, NCCL on GPU)",
    )
    s.add_argument(
        "--nnodes", type=int, default=1, help="machines taking part (run the same command on each)"
    )
    s.add_argument("--node-rank", type=int, default=0, help="this machine's index, 0 .. nnodes-1")
    s.add_argument("--master-addr", default=None, help="address of node 0 (multi-machine runs)")
    s.add_argument("--master-port", type=int, default=None, help="a free TCP port on node 0")
    s.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("recommend", help="print a user's top-k slate from a finished run")
    s.add_argument("--run", required=True, help="run directory of a finished `vidrec run`")
    s.add_argument(
        "--user", required=True, type=id_value, help="the user's id as the data has it (42, u1)"
    )
    s.add_argument("-k", type=positive_int, default=10)
    _add_request_arguments(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_recommend)

    s = sub.add_parser(
        "predict", help="expected watch time of items for a user, from a finished run"
    )
    s.add_argument("--run", required=True)
    s.add_argument(
        "--user", required=True, type=id_value, help="the user's id as the data has it (42, u1)"
    )
    s.add_argument(
        "--items", required=True, help="comma-separated item ids as the data has them (1,2; m1,m2)"
    )
    _add_request_arguments(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_predict)
    register_ab(sub)
    register_experiment(sub)
    register_tune(sub)


def run_config(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved config of `vidrec run`'s data and config options (also `vidrec tune`'s), and
    what the run's context may take as already computed (the log read for its statistics).
    Sets args.data from --data-dir."""
    overrides = list(args.overrides)
    if args.data_dir_alias:
        if args.data and args.data != args.data_dir_alias:
            raise UsageError("give the data directory once (--data or --data-dir)")
        args.data = args.data_dir_alias
    if args.dataset and not args.data:
        raise UsageError(f"--dataset {args.dataset} needs --data-dir DIR")
    if args.data:
        overrides.append(f"data.source={args.dataset or 'dir'}")
    preset = args.preset or (AUTO if args.data else "default")
    stats, shared = None, {}
    if preset == AUTO:
        if not args.data:
            raise UsageError("--preset auto derives its settings from a log: give --data DIR")
        stats, loaded = data_statistics(args.dataset or "dir", args.data)
        shared["loaded_source"] = loaded
    config = resolve_config(preset, overrides, args.config, seed=args.seed, data_stats=stats)
    if config["data"].get("columns"):
        shared.clear()  # declared column types: the data stage reads the log with them
    return config, shared


def cmd_run(args: argparse.Namespace) -> int:
    import os
    import sys

    from vidrec.pipelines.run import STAGES, run_pipeline

    if (args.nproc > 1 or args.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        from vidrec.pipelines.distributed import launch, strip_launcher_options

        return launch(
            strip_launcher_options(sys.argv[1:]),
            nproc=args.nproc,
            nnodes=args.nnodes,
            node_rank=args.node_rank,
            master_addr=args.master_addr,
            master_port=args.master_port,
        )

    config, shared = run_config(args)
    if args.print_config:
        print(json.dumps(config, indent=2))
        return 0
    stages = _stage_list("--stages", args.stages, STAGES) or STAGES
    redo = _stage_list("--redo", args.redo, STAGES)
    report = run_pipeline(
        config,
        args.out,
        data_dir=args.data,
        progress=not args.no_progress,
        stages=stages,
        redo=redo,
        shared=shared,
    )
    _print_headline(report, Path(args.out))
    return 0


def _print_headline(report: dict, out: Path) -> None:
    if not report:
        return
    from vidrec.evaluation.report import format_as  # pandas: not for `vidrec --help`

    get = lambda path: _dig(report, path)  # noqa: E731
    lines = [
        f"data: {get('_meta.dataset')}   seed: {get('_meta.seed')}",
        f"retrieval  recall@50 = {_f(get('retrieval.recall@50'))}  (most popular {_f(get('baselines.most_popular.retrieval.recall@50'))})",
        f"ranking    weighted per-user loss = {_f(get('ranking.weighted_per_user_loss'))}  (click-only {_f(get('baselines.deep_click.ranking.weighted_per_user_loss'))})",
    ]
    tw = get("end_to_end.true_expected_watch_time.mean")
    if tw is not None:
        lines.append(
            f"end to end true expected watch time per user = {_f(tw)} s, "
            f"{format_as(get('end_to_end.fraction_of_oracle'), 'percent')} of the oracle's"
        )
    lines.append(f"report: {out / 'report.html'}")
    print("\n".join(lines))


def _dig(d: dict, path: str):
    cur = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _score(row: dict, out: dict) -> str:
    """The ranker's score as its unit says: seconds of watch time, or, on a log without watch
    times, the odds of a watch."""
    value = row["expected_watch_time"]
    if out.get("score_unit", "s") == "s":
        return f"expected watch time {value:8.1f} s"
    return f"watch odds {value:8.3f}"


def _add_request_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--history",
        default=None,
        help="comma-separated items the user watched since the logs were written, oldest first "
        "(served from them, not as a cold start)",
    )
    s.add_argument(
        "--at",
        default=None,
        help="serving time: Unix seconds or ISO 8601 (default: the run's, the end of its "
        "validation window)",
    )


def _id_list(option: str, text: str) -> list[int | str]:
    try:
        return [id_value(x.strip()) for x in text.split(",") if x.strip()]
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{option} must be comma-separated item ids: {exc}") from None


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """The --history and --at of a serving command as Recommender keyword arguments."""
    at: int | str | None = args.at
    if at is not None and at.lstrip("-").isdigit():
        at = int(at)
    history = _id_list("--history", args.history) if args.history else None
    return {"history": history, "at": at}


def cmd_recommend(args: argparse.Namespace) -> int:
    from vidrec.pipelines.serve import Recommender

    rec = Recommender.load(args.run)
    out = rec.recommend(args.user, args.k, **_request(args))
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        if out["note"]:
            print(f"note: {out['note']}")
        print(f"user {args.user} at {out['at']}: top {args.k}")
        for row in out["slate"]:
            title = f"  {row['title'][:40]:<40}" if "title" in row else ""
            print(
                f"  {row['rank']:>3}  item {row['item_id']:>9}{title}  {_score(row, out)}"
                f"  (retrieved #{row['retrieval_rank']} by {row['stage']}, cg score {row['cg_score']:.3f})"
            )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from vidrec.pipelines.serve import Recommender

    items = _id_list("--items", args.items)
    if not items:
        raise UsageError(f"--items names no item id, got {args.items!r}")
    request = _request(args)
    rec = Recommender.load(args.run)
    out = rec.predict(args.user, items, **request)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        if out["note"]:
            print(f"note: {out['note']}")
        for row in out["items"]:
            print(f"  item {row['item_id']:>9}  {_score(row, out)}")
        if out["unknown_items"]:
            print(f"unknown items (not in the catalog): {out['unknown_items']}")
    return 0


AB_POLICIES = (
    "system",
    "click_only",
    "cg_only",
    "lgbm_weighted",
    "most_popular",
    "logging_policy",
    "random",
    "oracle",
)


def register_ab(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "ab",
        help="closed-loop simulated A/B test between recommenders over simulated days",
        description="Serve slates from several arms to the simulated world's visitors for --days "
        "days starting at the test window, feed each arm's responses back into its own logs, and "
        "report watch time per user, CTR, fresh share and coverage with bootstrap intervals. "
        "Arms: POLICY or POLICY@RUN_DIR (a finished `vidrec run` on the synthetic world; the "
        "first arm is the control). Policies: " + ", ".join(AB_POLICIES),
    )
    s.add_argument(
        "--run",
        required=True,
        help="finished run directory (synthetic world) for arms without @RUN_DIR; results go to RUN/ab/",
    )
    s.add_argument("--arms", default="system,click_only,cg_only,most_popular,logging_policy")
    s.add_argument("--days", type=int, default=3)
    s.add_argument("-k", type=positive_int, default=10)
    s.add_argument("--max-visits-per-day", type=int, default=2000, help="0 = every visit")
    s.add_argument(
        "--retrain",
        action="store_true",
        help="refit each arm's deep ranker nightly on its own logs",
    )
    s.add_argument("--seed", type=int, default=None, help="default: the run's seed")
    s.set_defaults(func=cmd_ab)


def cmd_ab(args: argparse.Namespace) -> int:
    from vidrec.pipelines.ab import run_ab_command

    report = run_ab_command(
        Path(args.run),
        [a.strip() for a in args.arms.split(",") if a.strip()],
        days=args.days,
        k=args.k,
        max_visits=args.max_visits_per_day,
        retrain=args.retrain,
        seed=args.seed,
    )
    for row in report["table"]:
        print(
            "  ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )
    print(f"written to {Path(args.run) / 'ab' / 'ab.json'} and the run's report")
    return 0


def register_experiment(sub: argparse._SubParsersAction) -> None:
    from vidrec.pipelines.names import (
        EXPERIMENTS,
        EXPERIMENTS_LOO,
        EXPERIMENTS_REAL,
        RECHUB_NEGATIVES,
    )
    from vidrec.pipelines.names import LOO_METHODS as METHODS

    s = sub.add_parser(
        "experiment",
        help="the YT16 / SSL21 studies, the MovieLens table and the leave-last-out benchmark (mean ± std "
        "over seeds)",
        description="movielens-table needs --data-dir, an official MovieLens directory; "
        "its preset defaults to 'movielens' (pipelines/experiments_real.py has the protocol). "
        "loo, the leave-last-out benchmark of the literature (each user's last watch is the "
        "test target, the one before it the validation target; pipelines/experiments_loo.py), "
        "needs --data-dir and reads it as --dataset says; its settings are derived from the log "
        "(preset 'auto') unless --preset names one, and the candidate generator's history "
        "length (3, 10 or 50 recent watches) is chosen on the validation targets unless --set "
        "features.max_history gives one.",
    )
    s.add_argument("name", choices=EXPERIMENTS + EXPERIMENTS_REAL + EXPERIMENTS_LOO)
    s.add_argument(
        "--preset",
        default=None,
        choices=(*PRESETS, AUTO),
        help="default: default (movielens-table: movielens; loo: auto, derived from the log)",
    )
    s.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    s.add_argument("--out", required=True)
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--fractions", default="0.1,0.25,0.5,1.0", help="label fractions for cg-ssl")
    s.add_argument(
        "--only",
        default=None,
        help="variant names to run, separated by semicolons (loo: methods among "
        f"{', '.join(METHODS)})",
    )
    s.add_argument("--data-dir", default=None, help="movielens-table, loo: the data directory")
    s.add_argument(
        "--holdout", type=int, default=10, help="movielens-table: last watches held out per user"
    )
    s.add_argument(
        "--dataset",
        default="movielens",
        choices=("movielens", "dir", "kuairand"),
        help="loo: layout of --data-dir: an official MovieLens directory (the default), the "
        "contract layout (dir), or KuaiRand-Pure",
    )
    s.add_argument(
        "--rechub-python",
        default=None,
        metavar="PATH",
        help="loo: also train torch-rechub's YoutubeDNN with this interpreter of a separate "
        "virtual environment that has torch-rechub installed (never a vidrec dependency)",
    )
    s.add_argument(
        "--rechub-negatives",
        type=positive_int,
        default=RECHUB_NEGATIVES,
        help="loo: torch-rechub's sampled negatives per training example",
    )
    s.set_defaults(func=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    from vidrec.pipelines.experiments import run_experiment

    try:
        seeds = [int(x) for x in args.seeds.split(",")]
        fractions = tuple(float(x) for x in args.fractions.split(","))
    except ValueError:
        raise UsageError("--seeds and --fractions take comma-separated numbers") from None
    only = [v.strip() for v in args.only.split(";")] if args.only else None
    if args.name in ("loo", "movielens-table"):
        from vidrec.pipelines.config import ConfigError

        if not args.data_dir:
            layout = "see --dataset" if args.name == "loo" else "an official MovieLens layout"
            raise ConfigError(f"{args.name} needs --data-dir DIR ({layout})")
        common: dict[str, Any] = {
            "out": Path(args.out),
            "seeds": seeds,
            "preset": args.preset or ("auto" if args.name == "loo" else "movielens"),
            "overrides": args.overrides,
            "methods": only,
        }
        if args.name == "loo":
            from vidrec.pipelines.experiments_loo import run_loo

            res = run_loo(
                args.data_dir,
                **common,
                dataset=args.dataset,
                rechub_python_path=args.rechub_python,
                rechub_negatives=args.rechub_negatives,
            )
        else:
            from vidrec.pipelines.experiments_real import run_movielens_table

            res = run_movielens_table(args.data_dir, **common, n_last=args.holdout)
        print(res["markdown"])
        return 0
    res = run_experiment(
        args.name,
        preset=args.preset or "default",
        seeds=seeds,
        out=Path(args.out),
        overrides=args.overrides,
        fractions=fractions,
        only=only,
    )
    print(res["markdown"])
    return 0


def register_tune(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "tune",
        help="search the candidate generator's settings on the validation window (Optuna)",
        description="Search the candidate generator's settings with Optuna (TPE, median "
        "pruning by epoch), each trial scored by its validation Recall@K on the ranker window; "
        "the test window is never used to choose. The study lives in OUT/search/study.db, so "
        "an interrupted search resumes. Writes OUT/search/best.toml (for `vidrec run "
        "--config`), the trial plot, and OUT/tune.md: the tuned and derived settings side by "
        "side, both evaluated on the test window by full runs in OUT/runs/.",
    )
    s.add_argument("--out", required=True, help="tuning directory (created; reused to resume)")
    add_config_arguments(s)
    s.add_argument("--trials", type=positive_int, default=None, help="finished trials wanted")
    s.add_argument("--minutes", type=float, default=None, help="time budget of the search")
    s.add_argument(
        "--no-compare",
        action="store_true",
        help="only search: no runs of the tuned and derived settings on the test window",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from vidrec.pipelines.tune import tune

    trials = args.trials if args.trials is not None or args.minutes is not None else 30
    config, shared = run_config(args)
    result = tune(
        config,
        args.out,
        data_dir=args.data,
        trials=trials,
        minutes=args.minutes,
        compare=not args.no_compare,
        progress=not args.no_progress,
        shared=shared,
    )
    t = result["tuned"]
    print(
        f"best trial {t['trial']} of {result['n_trials']}: validation {t['validation_metric']} "
        f"{t['validation_value']:.4f}; config: {Path(args.out) / 'search' / 'best.toml'}; "
        f"report: {Path(args.out) / 'tune.md'}"
    )
    return 0
