"""Benchmark: generate a synthetic world preset; print events per second and peak memory.

    python benchmarks/bench_world.py --preset default [--seed 0] [--set impressions=5000000]

Events = rows of the generated tables (impressions + watches + searches). Peak memory is the
process's maximum resident set size (getrusage ru_maxrss; null where the platform reports
none), which includes the Python interpreter and imported libraries (~0.1 GB).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidrec.features.sources.synthetic import PRESETS, WorldConfig, generate_world  # noqa: E402
from vidrec.pipelines.peak_rss import peak_rss_mb  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Return the exit code after generating the world and printing the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="default", choices=PRESETS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a WorldConfig field, e.g. --set impressions=5000000 (repeatable)",
    )
    p.add_argument("--card", action="store_true", help="also print the world card")
    args = p.parse_args(argv)
    overrides = {}
    for item in args.set:
        if "=" not in item:
            p.error(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    try:
        cfg = WorldConfig.preset(args.preset, **overrides)
    except ValueError as exc:
        p.error(str(exc))

    t0 = time.perf_counter()
    world = generate_world(cfg, seed=args.seed)
    seconds = time.perf_counter() - t0
    counts = world.dataset.counts()
    events = counts["impressions"] + counts["watches"] + counts["searches"]
    peak_mb = peak_rss_mb()
    result = {
        "preset": args.preset,
        "overrides": overrides,
        "seed": args.seed,
        "seconds": round(seconds, 2),
        "events": events,
        "events_per_second": round(events / seconds),
        "peak_rss_gib": None if peak_mb is None else round(peak_mb / 1024, 3),
        "counts": counts,
        "machine": f"{platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}",
    }
    print(json.dumps(result, indent=2))
    if args.card:
        print(json.dumps(world.card(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
