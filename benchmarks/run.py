"""Run the benchmark suite: `python benchmarks/run.py [--only NAME] [--quick] [--out FILE]`.

Every benchmark module measures a figure and its reference side by side in one run (medians
of >= 5 repeats, peak memory) and prints a small table; this runner runs them, each in its own
Python process by default (so a benchmark's peak RSS is its own, and one benchmark's memory or
threads cannot disturb the next), and writes:

- `--out` (default bench_out/results.json): machine, command, git commit and every benchmark's
  result dict; running a subset updates only those benchmarks' entries of an existing file;
- the same path with `.md`: the tables as markdown, ready for the README.

Benchmarks (`--only` takes names, comma-separated or repeated):
  exact_topk      ExactIndex top-100 of 1024 users over 1M / 100k items vs the GEMM floor
  annoy_curve     annoy vs exact: build time, size, recall@100, single-query latency grid
  ranker_scoring  deep ranker rows/s in batch vs per-user latency to rank 500 candidates
  cg_training     candidate generator examples/s (sampled softmax, SSL none vs CFM), item
                  embedding export, retrieval latency per user and batch throughput
  annoy_learned   annoy vs exact on LEARNED item embeddings (a briefly trained model's item
                  tower over a catalog grown to 100k / 1M items), real user queries; exact
                  batch top-100 of 1024 learned users vs the GEMM floor
  serving         Recommender.recommend at 1M items: retrieve 500 (annoy, exact) + ranker
                  features + deep ranker + sort, p50/p99 per component and throughput
  rechub_compare  (optional, not run by default) training examples/s of our candidate
                  generator vs torch-rechub's YoutubeDNN on the same examples; needs
                  torch-rechub in a separate virtual environment (--rechub-python)

`--quick` shrinks every size for a smoke run (tests/test_benchmarks.py); its figures are not
meaningful. `--vectors FILE.npz` (ids, vectors) makes annoy_curve use learned item embeddings,
e.g. RUN_DIR/index/item_vectors.npz. `--serving-hnsw M,EF_CONSTRUCTION,EF_SEARCH` adds an HNSW
index to the serving benchmark. `--serving-users N` and `--serving-annoy TREES,SEARCH_K`
set the serving benchmark's users and annoy setting (default: 1,000 users, the `default` preset's
retrieval setting); `--rechub-python PATH` the separate interpreter with torch-rechub
(default /tmp/rechub-venv/bin/python); `--annoy-items`, `--annoy-trees`,
`--annoy-trees-dot`, `--annoy-trees-normalised`, `--annoy-search-k` shrink annoy_learned's grid
(comma-separated).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    MIN_REPEATS,
    columns_of,
    load_average,
    machine_info,
    markdown_table,
)
from vidrec.features.atomic import atomic_write_json, atomic_write_text  # noqa: E402

BENCHMARKS: tuple[str, ...] = (
    "exact_topk",
    "annoy_curve",
    "ranker_scoring",
    "cg_training",
    "annoy_learned",
    "serving",
    "rechub_compare",
)
# run only when named with --only: they need something outside vidrec's environment
OPTIONAL: dict[str, str] = {
    "rechub_compare": "torch-rechub installed in a separate virtual environment (--rechub-python)",
}
DEFAULT_BENCHMARKS: tuple[str, ...] = tuple(n for n in BENCHMARKS if n not in OPTIONAL)
DEFAULT_OUT = Path("bench_out") / "results.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Return the parsed command line."""
    p = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="vidrec benchmark suite: each figure against its reference, in one run.",
    )
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NAME",
        help=f"benchmark(s) to run, comma-separated or repeated; known: {', '.join(BENCHMARKS)} "
        f"(default: all but {', '.join(OPTIONAL)})",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not figures")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results JSON (default %(default)s)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed repeats per measurement (default {MIN_REPEATS}; 2 with --quick)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every synthetic input")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    p.add_argument(
        "--vectors",
        type=Path,
        default=None,
        help="annoy_curve: .npz with ids (N,) and vectors (N, E), e.g. RUN_DIR/index/item_vectors.npz",
    )
    p.add_argument(
        "--rechub-python",
        type=Path,
        default=None,
        metavar="PATH",
        help="rechub_compare: Python of a separate virtual environment with torch-rechub "
        "(default /tmp/rechub-venv/bin/python)",
    )
    p.add_argument(
        "--serving-users",
        type=int,
        default=None,
        metavar="N",
        help="serving: users served per index (default 1000; --quick 5)",
    )
    p.add_argument(
        "--serving-annoy",
        default=None,
        metavar="TREES,SEARCH_K",
        help="serving: annoy n_trees,search_k (default: the default preset's retrieval setting)",
    )
    p.add_argument(
        "--serving-hnsw",
        default=None,
        metavar="M,EF_CONSTRUCTION,EF_SEARCH",
        help="serving: also serve from an HNSW index (HnswIndex) of these settings (default: none)",
    )
    p.add_argument(
        "--annoy-trees",
        default=None,
        metavar="LIST",
        help="annoy_learned: forests (n_trees, comma-separated) of the served index (metric "
        "'mips') on the dot-product vectors (default 10,50,100)",
    )
    p.add_argument(
        "--annoy-trees-dot",
        default=None,
        metavar="LIST",
        help="annoy_learned: forests with annoy's own 'dot' metric on the same vectors, for "
        "comparison (default 20)",
    )
    p.add_argument(
        "--annoy-trees-normalised",
        default=None,
        metavar="LIST",
        help="annoy_learned: forests on the L2-normalised vectors (default 10,50)",
    )
    p.add_argument(
        "--annoy-search-k",
        default=None,
        metavar="LIST",
        help="annoy_learned: search_k values, written --annoy-search-k=-1,10000 (the = keeps "
        "-1 from reading as an option; default -1,3000,10000,30000,100000,300000,1000000)",
    )
    p.add_argument(
        "--annoy-items",
        default=None,
        metavar="LIST",
        help="annoy_learned: catalog sizes (default 100000,1000000)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the benchmarks in this process (peak RSS is then shared between them)",
    )
    p.add_argument(
        "--wait-load",
        type=float,
        default=None,
        metavar="LOAD",
        help="before each benchmark, wait until the 1-minute load average is below LOAD "
        "(a shared machine: oversubscribed torch threads slow down many-fold)",
    )
    p.add_argument(
        "--wait-max",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="give up waiting for --wait-load after this long and run anyway (default %(default)s)",
    )
    p.add_argument("--child-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names: list[str] = []
    for chunk in args.only or [",".join(DEFAULT_BENCHMARKS)]:
        names += [n.strip() for n in chunk.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    args.names = list(dict.fromkeys(names))
    if args.repeats is None:
        args.repeats = 2 if args.quick else MIN_REPEATS
    if args.repeats < 1 or (not args.quick and args.repeats < MIN_REPEATS):
        p.error(f"--repeats must be >= {MIN_REPEATS} (>= 1 with --quick), got {args.repeats}")
    if args.wait_load is not None and not args.wait_load > 0:
        p.error(f"--wait-load must be > 0, got {args.wait_load}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.vectors is not None and not args.vectors.is_file():
        p.error(f"--vectors {args.vectors}: no such file")
    if args.serving_users is not None and args.serving_users < 1:
        p.error(f"--serving-users must be >= 1, got {args.serving_users}")
    if args.serving_annoy is not None:
        parts = args.serving_annoy.split(",")
        try:
            trees, search_k = (int(x) for x in parts)
        except ValueError:
            p.error(f"--serving-annoy takes TREES,SEARCH_K (integers), got {args.serving_annoy!r}")
        if trees < 1 or search_k < -1 or search_k == 0:
            p.error(f"--serving-annoy: TREES >= 1 and SEARCH_K -1 or >= 1, got {trees},{search_k}")
        args.serving_annoy = (trees, search_k)
    if args.serving_hnsw is not None:
        try:
            m, ef_construction, ef_search = (int(x) for x in args.serving_hnsw.split(","))
        except ValueError:
            p.error(
                "--serving-hnsw takes M,EF_CONSTRUCTION,EF_SEARCH (integers), got "
                f"{args.serving_hnsw!r}"
            )
        if m < 2 or ef_construction < 1 or ef_search < 1:
            p.error(f"--serving-hnsw: M >= 2 and both ef >= 1, got {args.serving_hnsw}")
        args.serving_hnsw = (m, ef_construction, ef_search)
    for name, low in (
        ("annoy_trees", 1),
        ("annoy_trees_dot", 1),
        ("annoy_trees_normalised", 1),
        ("annoy_search_k", -1),
        ("annoy_items", 1),
    ):
        value = getattr(args, name)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        try:
            values = tuple(int(x) for x in value.split(",") if x.strip())
        except ValueError:
            p.error(f"{flag} takes comma-separated integers, got {value!r}")
        if not values or min(values) < low or 0 in values:
            p.error(f"{flag}: integers >= {low} (search_k: -1 or >= 1) needed, got {value!r}")
        setattr(args, name, values)
    return args


def wait_for_load(limit: float, max_seconds: float, *, poll: float = 10.0) -> float:
    """Return the seconds waited until the 1-minute load average fell below `limit` (or gave up)."""
    t0 = time.perf_counter()
    while True:
        load = load_average()
        waited = time.perf_counter() - t0
        if not load or load[0] < limit or waited >= max_seconds:
            return waited
        print(f"  load average {load[0]} >= {limit}: waiting ({waited:.0f} s so far)", flush=True)
        time.sleep(min(poll, max(0.0, max_seconds - waited)))


def run_in_process(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Return benchmark `name`'s result dict, run in this process."""
    import torch  # noqa: PLC0415  (imported late: the parent process of child runs needs none)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    module = importlib.import_module(f"benchmarks.{name}")
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = load_average()
    t0 = time.perf_counter()
    res = module.run(
        quick=args.quick,
        repeats=args.repeats,
        seed=args.seed,
        vectors=args.vectors,
        rechub_python_path=args.rechub_python,
        serving_users=args.serving_users,
        serving_annoy=args.serving_annoy,
        serving_hnsw=args.serving_hnsw,
        grid={
            key: getattr(args, f"annoy_{key}")
            for key in ("trees", "trees_dot", "trees_normalised", "search_k", "items")
            if getattr(args, f"annoy_{key}") is not None
        },
    )
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    res["run_at"] = started
    res["load_average_start"] = load_start
    res["torch_threads"] = torch.get_num_threads()
    return dict(res)


def run_in_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Return benchmark `name`'s result dict, run in a fresh Python process (its own peak RSS)."""
    with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--only",
            name,
            "--repeats",
            str(args.repeats),
            "--seed",
            str(args.seed),
            "--child-json",
            str(out),
        ]
        if args.quick:
            cmd.append("--quick")
        if args.threads is not None:
            cmd += ["--threads", str(args.threads)]
        if args.vectors is not None:
            cmd += ["--vectors", str(args.vectors)]
        if args.rechub_python is not None:
            cmd += ["--rechub-python", str(args.rechub_python)]
        if args.serving_users is not None:
            cmd += ["--serving-users", str(args.serving_users)]
        if args.serving_annoy is not None:
            cmd += ["--serving-annoy", ",".join(str(x) for x in args.serving_annoy)]
        if args.serving_hnsw is not None:
            cmd += ["--serving-hnsw", ",".join(str(x) for x in args.serving_hnsw)]
        for key in ("trees", "trees_dot", "trees_normalised", "search_k", "items"):
            value = getattr(args, f"annoy_{key}")
            if value is not None:
                # "=": a value starting with -1 would otherwise read as an option
                cmd.append(f"--annoy-{key.replace('_', '-')}=" + ",".join(str(x) for x in value))
        proc = subprocess.run(cmd, cwd=ROOT, stdout=None, stderr=subprocess.PIPE, text=True)
        if proc.stderr:
            sys.stderr.write(proc.stderr[-4000:])
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or "").strip().splitlines()[-5:]
            return {"name": name, "error": f"exit code {proc.returncode}: " + " | ".join(tail)}
        return dict(json.loads(out.read_text()))


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return proc.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def markdown_report(results: dict[str, Any]) -> str:
    """Return the results as markdown: machine, command, then one table per benchmark."""
    m = results["machine"]
    lines = [
        "# vidrec benchmarks",
        "",
        f"Command: `{results['command']}`  ",
        f"Commit: `{results.get('git_commit')}`, {results['finished']}  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} "
        f"({m['torch_cpu_capability']}), {m['torch_threads']} torch threads; "
        f"load average at start {m['load_average']}",
        "",
    ]
    if results.get("quick"):
        lines += ["**Quick (smoke) run: tiny sizes, the figures mean nothing.**", ""]
    for name in BENCHMARKS:
        res = results["benchmarks"].get(name)
        if res is None:
            continue
        if "error" in res:
            lines += [f"## {name}", "", f"FAILED: {res['error']}", ""]
            continue
        h = res["headline"]
        lines += [f"## {name}: {res['title']}", ""]
        head = f"**{h['what']}**: {h['figure']:.4g} vs {h['reference']:.4g} {h['unit']}"
        head += f" → ratio {h['ratio']:.3g}"
        if "target" in h:
            head += f" (target {h['target']}: {'met' if h['met'] else 'NOT met'})"
        lines += [head, "", markdown_table(res["rows"], columns_of(res)), ""]
        mem = ", ".join(f"{k} {v}" for k, v in res["memory_mb"].items())
        lines += [
            f"Memory (MiB): {mem}. {res['repeats']} repeats, {res['wall_s']} s wall, load "
            f"average {res['load_average_start']} → {res['load_average_end']}.",
            "",
        ]
        lines += [f"- {n}" for n in res["notes"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; return the exit code (1 if any benchmark failed)."""
    args = parse_args(argv)
    if args.child_json is not None:  # a child: one benchmark, result to the given file
        atomic_write_json(args.child_json, run_in_process(args.names[0], args))
        return 0
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    machine = machine_info()
    if args.threads is not None:
        machine["torch_threads"] = args.threads
    out: Path = args.out
    previous: dict[str, Any] = {}
    if out.is_file():
        try:
            previous = json.loads(out.read_text()).get("benchmarks", {})
        except (OSError, ValueError):
            previous = {}
    benchmarks = dict(previous)
    failed = []
    for name in args.names:
        waited = 0.0
        if args.wait_load is not None:
            waited = wait_for_load(args.wait_load, args.wait_max)
        print(f"\n### running {name} (load average {load_average()})", flush=True)
        res = run_in_process(name, args) if args.in_process else run_in_child(name, args)
        res["waited_for_load_s"] = round(waited, 1)
        benchmarks[name] = res
        if "error" in res:
            failed.append(name)
            print(f"!! {name} failed: {res['error']}", file=sys.stderr)
    results = {
        "command": command.strip(),
        "git_commit": _git_commit(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "machine": machine,
        "wall_s": round(time.perf_counter() - started, 1),
        "benchmarks": {n: benchmarks[n] for n in BENCHMARKS if n in benchmarks},
    }
    atomic_write_json(out, results)
    atomic_write_text(out.with_suffix(".md"), markdown_report(results))
    print(f"\nwrote {out} and {out.with_suffix('.md')} ({results['wall_s']} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
