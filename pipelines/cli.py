"""`vidrec` command line: data, validation, the end-to-end run, serving and experiments.

Every command validates its inputs and turns expected failures (bad data, bad config, missing
run directory) into one readable message and a non-zero exit code, never a library traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("vidrec")

EXIT_USAGE = 2
EXIT_DATA = 3


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
    )


# --------------------------------------------------------------------------- commands
def cmd_simulate_data(args: argparse.Namespace) -> int:
    from vidrec.features.atomic import atomic_write_json
    from vidrec.features.io import write_dataset
    from vidrec.features.sources.synthetic import WorldConfig, generate_world

    overrides: dict[str, str] = {}
    if args.catalog:
        overrides["catalog"] = args.catalog
    if args.catalog_path:
        overrides["catalog_path"] = args.catalog_path
    cfg = WorldConfig.preset(args.preset, **overrides)
    world = generate_world(cfg, seed=args.seed)
    out = Path(args.out)
    write_dataset(world.dataset, out, fmt=args.format, also=("world.json",))
    card = world.card()
    atomic_write_json(out / "world.json", card)
    print(json.dumps(card, indent=2, default=str))
    print(
        f"wrote {', '.join(f'{k}={v:,}' for k, v in world.dataset.counts().items())} rows to {out}"
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from vidrec.features.io import format_report, read_dataset
    from vidrec.features.schema import ValidationReport, declare_columns, declared_columns
    from vidrec.pipelines.config import resolve_config

    layout = args.dataset or "dir"
    preset = args.preset or "default"
    # resolved as `vidrec run --preset P --config F --set ... --data DIR` resolves it
    config = resolve_config(preset, [*args.overrides, f"data.source={layout}"], args.config)
    columns = declared_columns(config["data"].get("columns"))
    # declarations alone (--set data.columns.X=...) only type the columns
    other_keys = [o for o in args.overrides if not o.strip().startswith("data.columns.")]
    for_run = bool(args.for_run or args.preset or args.config or other_keys)
    if layout == "dir":
        ds, report = read_dataset(args.data_dir, columns=columns)
    else:  # an official MovieLens / KuaiRand-Pure directory, converted as `vidrec run` does
        if layout == "movielens":
            from vidrec.features.sources.movielens import load_movielens as load
        else:
            from vidrec.features.sources.kuairand import load_kuairand as load
        ds, info = load(args.data_dir)
        report = ValidationReport(**info["validation"])
        ds = declare_columns(ds, columns, report)
    print(format_report(report))
    if not for_run:
        print(f"OK: {args.data_dir} satisfies the vidrec data contract")
        print(
            "(to check it against a run's time windows before training: vidrec validate "
            f"{args.data_dir} --for-run --preset NAME)"
        )
        return 0
    from vidrec.features.preflight import preflight

    checked = preflight(ds, config, log_warnings=False, data_warnings=False)
    print(checked.format())
    settings = " and these settings" if args.config or other_keys else ""
    print(
        f"OK: {args.data_dir} satisfies the vidrec data contract and the pre-flight checks of "
        f"a run with preset {preset}{settings}"
    )
    return 0


# --------------------------------------------------------------------------- parser
def _version() -> str:
    """The installed distribution's version (a source checkout that is not installed: unknown)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vidrec")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vidrec",
        description="Two-stage YouTube-DNN video recommender: candidate generation, ranking by "
        "expected watch time, evaluation and offline simulation.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"vidrec {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate-data", help="generate the synthetic world's tables and world.json")
    s.add_argument("--preset", default="tiny", choices=("tiny", "default", "large"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output data directory")
    s.add_argument("--format", default="parquet", choices=("parquet", "csv"))
    s.add_argument(
        "--catalog",
        choices=("synthetic", "kuairand"),
        default=None,
        help="take the item catalog from real KuaiRand metadata instead of drawing it",
    )
    s.add_argument(
        "--catalog-path", default=None, help="video_features_basic_pure.csv for --catalog kuairand"
    )
    s.set_defaults(func=cmd_simulate_data)

    from vidrec.pipelines.config import PRESETS  # no torch: `validate` stays fast

    s = sub.add_parser(
        "validate",
        help="check a data directory against the data contract (--for-run: and a run's windows)",
        description="Check a data directory against the data contract and print what was taken "
        "as what. Ids: per id space (user ids, item ids), integers when every value is integer "
        "text, else strings kept exactly as given ('u1', 'dQw4w9WgXcQ'); a column of numbers "
        "with a few '1e2' or '73.0' is a broken integer column, refused. Extra columns of users "
        "and items become features: numbers -> continuous (quantile-normalized), lists or "
        "'|'-separated text -> multi-valued, other text -> categorical (frequency floor, OOV); "
        "ignored: empty, constant, and all-distinct text columns (identifiers). Declare a type "
        "with --set data.columns.COLUMN=categorical|continuous|multi|ignore (or "
        "data.columns.items.COLUMN=..., or a [data.columns] table in --config). With --for-run "
        "(or --preset, --config, --set of other keys) also cut the time split of that run "
        "config and check, in seconds and before any training, that every stage finds data in "
        "its window (the same pre-flight checks `vidrec run` makes first).",
    )
    s.add_argument(
        "data_dir", help="directory with users.*, items.*, watches.* [searches.*, impressions.*]"
    )
    s.add_argument(
        "--for-run", action="store_true", help="also run the pre-flight checks of a run config"
    )
    s.add_argument(
        "--preset", default=None, choices=PRESETS, help="run preset to check (default: default)"
    )
    s.add_argument("--config", default=None, help="TOML/JSON file of config values to apply")
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set split.train_end=0.6 or "
        "--set data.columns.zip=categorical (repeatable)",
    )
    s.add_argument(
        "--dataset",
        default=None,
        choices=("dir", "movielens", "kuairand"),
        help="layout of DATA_DIR: the contract layout (dir, the default), or an official "
        "MovieLens or KuaiRand-Pure directory",
    )
    s.set_defaults(func=cmd_validate)

    _register_pipeline_commands(sub)
    return p


def _register_pipeline_commands(sub: argparse._SubParsersAction) -> None:
    """Commands that run models (their modules import torch when a command runs, not here)."""
    from vidrec.pipelines import commands

    commands.register(sub)


def _known_errors() -> tuple[type[BaseException], ...]:
    """The errors a command reports as one line (bad data, config, run directory, artifacts, a
    diverged training); anything else, an ImportError of vidrec's own modules included, keeps its traceback."""
    from vidrec.features.atomic import ArtifactWriteError
    from vidrec.features.ids import UnknownIdError
    from vidrec.features.integrity import ArtifactError
    from vidrec.features.schema import DataContractError
    from vidrec.features.vocab import NotFittedError
    from vidrec.pipelines.config import ConfigError
    from vidrec.pipelines.rundir import RunDirError

    known: tuple[type[BaseException], ...] = (
        DataContractError, ConfigError, RunDirError, ArtifactWriteError, NotFittedError,
        ArtifactError, UnknownIdError,
    )
    # a diverged training (lower the learning rate) happens only where torch_utils was loaded;
    # other commands report their errors without importing torch
    torch_utils = sys.modules.get("vidrec.common.torch_utils")
    if torch_utils is not None:
        known += (torch_utils.NonFiniteLossError,)
    return known


def main(argv: Sequence[str] | None = None) -> int:
    # printed results reach a redirected stdout (a log file, a pipe) line by line, as they come
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    from vidrec.pipelines.config import UsageError

    try:
        return func(args)
    except UsageError as exc:
        print(f"vidrec {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _known_errors() as exc:
        print(f"vidrec {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except FileNotFoundError as exc:
        print(f"vidrec {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print(
            f"vidrec {args.command}: interrupted; rerun the same command to resume", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
