"""Data-parallel training: N processes (DDP over gloo) vs 1 process, same global batch.

Setting: a synthetic contract Dataset (benchmarks/synthetic.py) on CPU; the candidate generator
with the `default` preset's settings (sampled softmax over 2048 logQ-corrected negatives, CFM
SSL, batch 1024) and the deep ranker with the `default` preset's ranking settings (batch 1024).
Every configuration trains in fresh processes started with torch.multiprocessing (loopback,
gloo), so process start-up is not counted.

Figures, measured in one run:
- candidate generator examples/s: the per-epoch rate `train_candidate_generator` records
  (global examples / epoch wall time), median over `repeats` epochs after a warm-up epoch;
- deep ranker rows/s: (T(1 + repeats epochs) - T(1 epoch)) / repeats per epoch, so that the
  vocabulary/normalizer fit and the encoding are not counted;
for 1 process with every core's threads, 1 process with 1 thread, and N processes with
cores / N threads each. The reference is the faster of the two 1-process settings (on a loaded
machine, threads that wait for each other can make the all-cores process the slower one); on
one machine DDP only pays off when one process cannot use the cores by itself.

Quality (`--quality-seeds S`): the tests' tiny world (tests/test_distributed.py), Recall@10
after 2 epochs of sampled softmax + CFM for seeds 0..S-1 with 1 and with 2 processes: means, sds
and per-seed differences, the noise the test's tolerance is set from.

    python benchmarks/ddp_throughput.py [--quick] [--repeats 5] [--nproc 2] [--quality-seeds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from benchmarks.common import Column, check_repeats, median, result  # noqa: E402
from benchmarks.synthetic import synthetic_dataset  # noqa: E402
from vidrec.candidate_gen.config import CandidateGenConfig  # noqa: E402
from vidrec.candidate_gen.train import train_candidate_generator  # noqa: E402
from vidrec.features.examples import CandidateFeaturizer  # noqa: E402
from vidrec.features.ranker_features import build_ranker_frame  # noqa: E402
from vidrec.features.split import TimeSplit  # noqa: E402
from vidrec.pipelines.config import load_preset  # noqa: E402
from vidrec.ranking.config import RankerConfig  # noqa: E402
from vidrec.ranking.train import train_ranker  # noqa: E402

NAME = "ddp_throughput"

COLUMNS = (
    Column("model", "model", "{}"),
    Column("setting", "processes x threads", "{}"),
    Column("rate", "rows/s", "{:,.0f}"),
    Column("epoch_s", "s / epoch", "{:.2f}"),
    Column("ratio", "vs best 1 process", "{:.2f}"),
)


def sizes(quick: bool) -> dict[str, int]:
    """Return the data sizes (quick: seconds)."""
    if quick:
        return {"users": 200, "items": 500, "watches": 4_000, "searches": 200, "impressions": 3_000}
    return {
        "users": 5_000,
        "items": 50_000,
        "watches": 60_000,
        "searches": 20_000,
        "impressions": 60_000,
    }


def _cg_config(quick: bool, seed: int, epochs: int) -> CandidateGenConfig:
    section = dict(load_preset("default")["candidate_gen"])
    c = {k: v for k, v in section.items() if k in CandidateGenConfig.field_names()}
    c["max_examples_per_user"] = c.get("max_examples_per_user") or None
    c.update(device="cpu", seed=seed, patience=0, epochs=epochs)
    if quick:
        c.update(num_negatives=32, batch_size=64, ssl_batch_size=32, user_layers=(32, 64))
    return CandidateGenConfig.from_dict(c)


def _ranker_config(quick: bool, seed: int, epochs: int) -> RankerConfig:
    section = dict(load_preset("default")["ranking"])
    c = {k: v for k, v in section.items() if k not in ("max_train_rows", "max_eval_rows")}
    c.update(device="cpu", seed=seed, epochs=epochs, patience=epochs, calibrate=False)
    if quick:
        c.update(hidden=(32,), batch_size=128, n_quantiles=50)
    return RankerConfig.from_dict(c)


# ----------------------------------------------------------------------------- workers
def _job(task: dict[str, Any]) -> dict[str, Any]:
    """Run one training task in this process (a rank when a process group exists)."""
    with open(task["inputs"], "rb") as fh:
        inputs = pickle.load(fh)
    start = time.perf_counter()
    if task["model"] == "cg":
        model = train_candidate_generator(
            task["config"], inputs["train"], inputs["items"], valid=inputs.get("valid"),
            progress=False,
        )  # fmt: skip
        return {"history": model.history, "seconds": time.perf_counter() - start}
    train_ranker(task["config"], inputs["train"], None, progress=False)
    return {"seconds": time.perf_counter() - start}


def _worker(rank: int, world: int, port: int, threads: int, task_path: str, out: str) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
        )
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with open(task_path, "rb") as fh:
            tasks = pickle.load(fh)
        results = [_job(t) for t in tasks]
        if rank == 0:
            with open(out, "wb") as fh:
                pickle.dump(results, fh)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_tasks(tasks: list[dict[str, Any]], world: int, threads: int) -> list[dict[str, Any]]:
    """Return rank 0's results of `tasks`, run in `world` fresh processes of `threads` threads."""
    with tempfile.TemporaryDirectory() as tmp:
        task_path, out = Path(tmp) / "tasks.pkl", Path(tmp) / "out.pkl"
        with open(task_path, "wb") as fh:
            pickle.dump(tasks, fh)
        args = (world, _free_port(), threads, str(task_path), str(out))
        mp.spawn(_worker, args=args, nprocs=world, join=True)
        with open(out, "rb") as fh:
            return list(pickle.load(fh))


# ----------------------------------------------------------------------------- figures
def _inputs(quick: bool, seed: int, tmp: Path) -> tuple[Path, Path, int, int]:
    """Write the CG and ranker inputs; return their paths and row counts."""
    n = sizes(quick)
    ds = synthetic_dataset(
        n_users=n["users"],
        n_items=n["items"],
        n_watches=n["watches"],
        n_impressions=n["impressions"],
        n_searches=n["searches"],
        seed=seed,
    )
    split = TimeSplit.from_fractions(ds, 0.7, 0.15)
    params = dict(load_preset("default")["features"])
    if quick:
        params.update(n_quantiles=50)
    featurizer = CandidateFeaturizer(**params).fit(ds, split)
    cfg = _cg_config(quick, seed, 1)
    train = featurizer.examples(ds, "train", max_examples_per_user=cfg.max_examples_per_user)
    cg_path, rk_path = tmp / "cg.pkl", tmp / "ranker.pkl"
    with open(cg_path, "wb") as fh:
        pickle.dump({"train": train, "items": featurizer.item_features(ds)}, fh)
    hl = int(load_preset("default")["ranking"]["history_len"])
    frame = build_ranker_frame(ds, ds.impressions, history_len=hl)
    with open(rk_path, "wb") as fh:
        pickle.dump({"train": frame}, fh)
    return cg_path, rk_path, len(train), len(frame)


def run(
    *, quick: bool = False, repeats: int = 5, seed: int = 0, nproc: int = 2, **_: Any
) -> dict[str, Any]:
    """Return the DDP throughput benchmark's result (table printed)."""
    repeats = check_repeats(repeats, quick)
    cores = os.cpu_count() or 1
    settings = [(1, cores), (1, 1), (nproc, max(1, cores // nproc))]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cg_path, rk_path, n_cg, n_rk = _inputs(quick, seed, Path(tmp))
        for world, threads in settings:
            cg_task = {
                "model": "cg",
                "inputs": cg_path,
                "config": _cg_config(quick, seed, 1 + repeats),
            }
            rk_tasks = [
                {"model": "ranker", "inputs": rk_path, "config": _ranker_config(quick, seed, e)}
                for e in (1, 1 + repeats)
            ]
            cg, rk_short, rk_long = run_tasks([cg_task, *rk_tasks], world, threads)
            rate = median([h["examples_per_second"] for h in cg["history"][1:]])
            epoch_s = (rk_long["seconds"] - rk_short["seconds"]) / repeats
            setting = f"{world} x {threads}"
            rows.append(
                {"model": "candidate_gen", "setting": setting, "rate": rate, "epoch_s": n_cg / rate}
            )
            rows.append(
                {"model": "ranker", "setting": setting, "rate": n_rk / epoch_s, "epoch_s": epoch_s}
            )
    best = {}
    for model in ("candidate_gen", "ranker"):
        best[model] = max(
            r["rate"] for r in rows if r["model"] == model and r["setting"].startswith("1 x")
        )
        for r in rows:
            if r["model"] == model:
                r["ratio"] = r["rate"] / best[model]
    ddp = {r["model"]: r for r in rows if r["setting"].startswith(f"{nproc} x")}
    headline = {
        "figure": ddp["candidate_gen"]["rate"],
        "reference": best["candidate_gen"],
        "ratio": ddp["candidate_gen"]["ratio"],
        "unit": "candidate-generator training examples/s",
        "ranker_ratio": ddp["ranker"]["ratio"],
    }
    return result(
        NAME,
        f"training throughput, {nproc} DDP processes vs 1 process, same global batch",
        rows,
        COLUMNS,
        headline=headline,
        repeats=repeats,
        params={"sizes": sizes(quick), "cg_examples": n_cg, "ranker_rows": n_rk, "cores": cores},
        notes=[
            f"{cores} cores; processes x threads per process; gloo over loopback",
            "per-epoch rates after a warm-up epoch; process start-up not counted",
        ],
    )


def quality(seeds: int) -> dict[str, Any]:
    """Return Recall@10 of 1- vs 2-process training on the tests' tiny world over `seeds` seeds."""
    tests = ROOT / "tests"
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    from test_distributed import SAMPLED, cg_config, cg_world

    train, valid, items = cg_world()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cg.pkl"
        with open(path, "wb") as fh:
            pickle.dump({"train": train, "items": items, "valid": valid}, fh)
        tasks = [
            {"model": "cg", "inputs": path, "config": cg_config(**SAMPLED, seed=s)}
            for s in range(seeds)
        ]
        one = [r["history"][-1]["valid_recall@10"] for r in run_tasks(tasks, 1, 1)]
        two = [r["history"][-1]["valid_recall@10"] for r in run_tasks(tasks, 2, 1)]
    a, b = np.array(one), np.array(two)
    d = b - a
    out = {
        "one_process": {"mean": a.mean(), "sd": a.std(ddof=1), "values": one},
        "two_processes": {"mean": b.mean(), "sd": b.std(ddof=1), "values": two},
        "difference": {"mean": d.mean(), "sd": d.std(ddof=1), "max_abs": np.abs(d).max()},
    }
    print(json.dumps(out, indent=2, default=float))
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the figures and print them."""
    p = argparse.ArgumentParser(prog="python benchmarks/ddp_throughput.py", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--quality-seeds", type=int, default=0, help="also run the quality sweep")
    p.add_argument("--out", default=None, help="write the result dict to this JSON file")
    args = p.parse_args(argv)
    res = run(quick=args.quick, repeats=args.repeats, seed=args.seed, nproc=args.nproc)
    if args.quality_seeds:
        res["quality"] = quality(args.quality_seeds)
    if args.out:
        from vidrec.features.atomic import atomic_write_json

        atomic_write_json(args.out, json.loads(json.dumps(res, default=float)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
