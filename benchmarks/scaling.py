"""Scaling: the whole pipeline at several world sizes, time and peak memory fitted against events.

    python benchmarks/scaling.py [--preset default] [--scales 0.25,0.5,1] [--seed 0]
        [--out bench_out/scaling] [--set KEY=VALUE ...]

Each scale is one `vidrec run --preset PRESET --set data.world_scale=S` in its own process (so
its peak resident set is its own), into OUT/scale_S, one after another (never in parallel: on a
shared machine parallel runs make every figure meaningless). `data.world_scale` multiplies the
world preset's users, items, channels and impressions; every other setting is the preset's.
From each run's manifest: the wall seconds and the process's peak resident set at the end of
each stage, and the events of the generated log (impressions + watches + searches).

Fits, over the scales: time ~ events^b, the exponent b by least squares on log-log, for the
whole run and for each stage; peak memory ~ events^b likewise; and the growth of the peak
from the second-largest to the largest scale (with scales 0.5 and 1: from 1/2 to 1 x the
preset). Writes OUT/scaling.json and OUT/scaling.md (a table per run and the fits).
A scale whose run directory already holds a finished run is read, not run again (delete the
directory to measure it again); a run that fails stops the benchmark with its exit code.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Column, load_average, machine_info, markdown_table  # noqa: E402
from vidrec.features.atomic import atomic_write_json, atomic_write_text  # noqa: E402

EVENT_TABLES = ("impressions", "watches", "searches")

RUN_COLUMNS = (
    Column("scale", "scale", "{:g}"),
    Column("events", "events", "{:,}"),
    Column("total_s", "stages s", "{:.1f}"),
    Column("wall_s", "process wall s", "{:.1f}"),
    Column("peak_gib", "peak GiB", "{:.2f}"),
)
FIT_COLUMNS = (
    Column("what", "what", "{}"),
    Column("exponent", "exponent vs events", "{:.2f}"),
    Column("smallest", "at the smallest scale", "{}"),
    Column("largest", "at the largest scale", "{}"),
)


def scale_dir(out: Path, scale: float) -> Path:
    """The run directory of one scale (OUT/scale_0.25)."""
    return out / f"scale_{scale:g}"


def run_scale(
    preset: str, scale: float, seed: int, run_dir: Path, extra: list[str]
) -> tuple[dict[str, Any], float | None]:
    """Run (or read, when it is finished) the pipeline at `scale`; return (its manifest, the
    process's wall seconds, None when an earlier run was read)."""
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        found = json.loads(manifest.read_text("utf-8"))
        if found.get("stages", {}).get("report", {}).get("status") == "done":
            print(f"  scale {scale:g}: reading the finished run in {run_dir}", flush=True)
            return found, None
    cmd = [
        sys.executable,
        "-m",
        "vidrec.pipelines.cli",
        "run",
        "--preset",
        preset,
        "--seed",
        str(seed),
        "--out",
        str(run_dir),
        "--no-progress",
        "--set",
        f"data.world_scale={scale:g}",
    ]
    for item in extra:
        cmd += ["--set", item]
    print(f"  scale {scale:g}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"the run at scale {scale:g} failed with exit code {done.returncode}")
    return json.loads(manifest.read_text("utf-8")), wall


def run_figures(scale: float, manifest: dict[str, Any], wall: float | None) -> dict[str, Any]:
    """One run's events, per-stage seconds and peak memory (MiB) from its manifest."""
    stages = manifest["stages"]
    counts = stages["data"]["counts"]
    seconds = {name: float(s["seconds"]) for name, s in stages.items() if "seconds" in s}
    peaks = {name: s.get("peak_rss_mb") for name, s in stages.items()}
    peak = max((p for p in peaks.values() if p is not None), default=float("nan"))
    return {
        "scale": scale,
        "events": int(sum(int(counts.get(t, 0)) for t in EVENT_TABLES)),
        "counts": counts,
        "stage_seconds": seconds,
        "stage_peak_rss_mb": peaks,
        "total_s": sum(seconds.values()),
        "wall_s": float("nan") if wall is None else wall,
        "peak_mb": peak,
        "peak_gib": peak / 1024,
    }


def exponent(events: list[int], values: list[float]) -> float:
    """The least-squares slope of log(value) on log(events): value ~ events^slope."""
    x, y = np.log(np.asarray(events, float)), np.log(np.asarray(values, float))
    if len(x) < 2 or np.ptp(x) == 0 or not np.isfinite(y).all():
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def fits(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The exponents of total time, each stage's time and the peak memory against events."""
    events = [r["events"] for r in runs]
    first, last = runs[0], runs[-1]
    rows = [
        {
            "what": "total time (the stages' seconds)",
            "exponent": exponent(events, [r["total_s"] for r in runs]),
            "smallest": f"{first['total_s']:.1f} s",
            "largest": f"{last['total_s']:.1f} s",
        },
        {
            "what": "peak resident memory",
            "exponent": exponent(events, [r["peak_mb"] for r in runs]),
            "smallest": f"{first['peak_gib']:.2f} GiB",
            "largest": f"{last['peak_gib']:.2f} GiB",
        },
    ]
    for stage in last["stage_seconds"]:
        values = [r["stage_seconds"].get(stage, float("nan")) for r in runs]
        if min(values) <= 0:
            continue
        rows.append(
            {
                "what": f"stage {stage}",
                "exponent": exponent(events, values),
                "smallest": f"{values[0]:.1f} s",
                "largest": f"{values[-1]:.1f} s",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the scales one after another and write the fits; return the exit code."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="default", help="the pipeline preset (default: default)")
    ap.add_argument(
        "--scales",
        default="0.25,0.5,1",
        help="world scales, comma-separated, smallest first (default 0.25,0.5,1)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench_out/scaling"))
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another setting for every run (repeatable)",
    )
    a = ap.parse_args(argv)
    try:
        scales = sorted(float(s) for s in a.scales.split(",") if s.strip())
    except ValueError:
        ap.error(f"--scales must be numbers separated by commas, got {a.scales!r}")
    if len(scales) < 2 or scales[0] <= 0:
        ap.error("--scales needs at least two scales, all > 0")
    a.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    load_start = machine["load_average"]
    runs = []
    for scale in scales:
        manifest, wall = run_scale(a.preset, scale, a.seed, scale_dir(a.out, scale), a.set)
        runs.append(run_figures(scale, manifest, wall))
    fit_rows = fits(runs)
    growth = runs[-1]["peak_mb"] / runs[-2]["peak_mb"] - 1.0
    out = {
        "name": "scaling",
        "preset": a.preset,
        "scales": scales,
        "seed": a.seed,
        "settings": a.set,
        "runs": runs,
        "fits": fit_rows,
        "peak_growth_last_step": growth,
        "machine": machine,
        "load_average_start": load_start,
        "load_average_end": load_average(),
    }
    atomic_write_json(a.out / "scaling.json", out)
    cmd = "python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = [
        "# Scaling of the pipeline with the log",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']} "
        f"({machine['torch_cpu_capability']}); load average {load_start} → "
        f"{out['load_average_end']}",
        "",
        markdown_table(runs, RUN_COLUMNS),
        "",
        markdown_table(fit_rows, FIT_COLUMNS),
        "",
        f"Peak memory grows {growth:+.0%} from scale {runs[-2]['scale']:g} to "
        f"{runs[-1]['scale']:g}. Exponents are least-squares slopes on log-log over "
        f"{len(runs)} scales; per-stage peaks are the process's peak at the end of each stage.",
        "",
    ]
    atomic_write_text(a.out / "scaling.md", "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
