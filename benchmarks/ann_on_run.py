"""ANN on a finished run's own item embeddings: annoy and HNSW (ours) against exact search, and
hnswlib in a separate virtual environment, all against the same held-out user queries.

    python benchmarks/ann_on_run.py RUN_DIR [--users 300] [--annoy-trees 50,150]
        [--faiss-m 32] [--faiss-ef-construction 300]
        [--hnsw-python /tmp/hnsw-venv/bin/python] [--hnsw-m 32] [--out FILE.json]

Queries: `--users` random users who watched before the end of the validation window, their
serving vectors (user tower, example age 0) from the run's candidate generator; the reference
is `ExactIndex`'s top-100 of each, timed one query at a time. Annoy: `AnnoyIndex` (the served
"mips" metric) at each n_trees over search_k in {-1 (annoy's default), 10k, 30k, 100k}.
HNSW: `HnswIndex` (faiss, the served "mips" metric; `retrieval.index = "hnsw"`) at each
`--faiss-m` over ef_search in {200, 400, 800, 1600}, built with one thread as a run builds it
(none when `--faiss-m` is empty).
hnswlib (`pip install hnswlib numpy` in a separate venv; never our dependency) runs as
benchmarks/hnsw_worker.py in that Python over the same vectors and queries: the MIPS
augmentation [v, sqrt(M^2 - |v|^2)] with L2 distance (so the L2 order is the inner-product
order, as our annoy "mips" does with angles) and, for comparison, hnswlib's own "ip" space.
One query at a time, one thread for every searcher; recall@100 against the exact top-100;
speed-up = exact p50 / p50.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidrec.candidate_gen.index import AnnoyIndex, ExactIndex, HnswIndex  # noqa: E402
from vidrec.candidate_gen.retrieve import Retriever  # noqa: E402
from vidrec.candidate_gen.train import TrainedCandidateGenerator  # noqa: E402
from vidrec.features.integrity import read_json_object  # noqa: E402
from vidrec.features.io import read_dataset  # noqa: E402
from vidrec.features.split import TimeSplit  # noqa: E402
from vidrec.pipelines.rundir import serving_cg_dir  # noqa: E402

SEARCH_K = (-1, 10_000, 30_000, 100_000)
EF_SEARCH = (200, 400, 800, 1600)
K = 100


def held_out_queries(run: Path, n_users: int, seed: int) -> dict[str, np.ndarray]:
    """Return the run's item ids/vectors, user queries at the validation end and their exact
    top-K (ids) with per-query exact latency (ms)."""
    with np.load(run / "index" / "item_vectors.npz") as z:
        ids = np.asarray(z["ids"], dtype=np.int64)
        vectors = np.ascontiguousarray(z["vectors"], dtype=np.float32)
    ds, _ = read_dataset(run / "data" / "tables")
    split = TimeSplit.from_dict(read_json_object(run / "data" / "split.json", "the split"))
    cg = TrainedCandidateGenerator.load(serving_cg_dir(run))
    exact = ExactIndex(vectors, ids)
    at = int(split.valid_end)
    w = ds.watches
    seen = np.unique(w.loc[w["timestamp"] < at, "user_id"].to_numpy())
    users = np.random.default_rng(seed).choice(seen, min(n_users, len(seen)), replace=False)
    queries = Retriever(cg, exact, ds).user_vectors(users, at).astype(np.float32)
    top, ms = [], []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        got, _ = exact.search(queries[i : i + 1], K)
        ms.append((time.perf_counter() - t0) * 1e3)
        top.append(got[0])
    return {
        "ids": ids,
        "vectors": vectors,
        "queries": queries,
        "top": np.array(top),
        "exact_ms": np.array(ms),
    }


def recall(found: np.ndarray, top: np.ndarray) -> float:
    """Mean share of each query's exact top-K found (rows of ids)."""
    return float(
        np.mean([len(np.intersect1d(f, t)) / t.size for f, t in zip(found, top, strict=True)])
    )


def _row(
    index: Any, p: dict[str, np.ndarray], name: str, setting: str, build: float, **search: Any
) -> dict:
    """Return the row of `index` searched one query at a time with `search` settings:
    recall@K against the exact top-K and the latency p50/p99 (ms)."""
    found, ms = [], []
    for i in range(len(p["queries"])):
        t1 = time.perf_counter()
        got, _ = index.search(p["queries"][i : i + 1], K, **search)
        ms.append((time.perf_counter() - t1) * 1e3)
        found.append(got[0])
    return {
        "index": name,
        "setting": setting,
        "recall": recall(np.array(found), p["top"]),
        "p50_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "build_s": build,
    }


def annoy_rows(p: dict[str, np.ndarray], trees: list[int], seed: int) -> list[dict]:
    rows = []
    for n_trees in trees:
        t0 = time.perf_counter()
        index = AnnoyIndex(p["vectors"], p["ids"], n_trees=n_trees, seed=seed, n_jobs=-1)
        build = time.perf_counter() - t0
        for sk in SEARCH_K:
            setting = f"{n_trees} trees, search_k {sk}"
            rows.append(_row(index, p, "annoy mips", setting, build, search_k=sk))
        del index
    return rows


def faiss_rows(
    p: dict[str, np.ndarray], m_values: list[int], ef_construction: int, seed: int
) -> list[dict]:
    rows = []
    for m in m_values:
        t0 = time.perf_counter()
        index = HnswIndex(p["vectors"], p["ids"], m=m, ef_construction=ef_construction, seed=seed)
        build = time.perf_counter() - t0
        for ef in EF_SEARCH:
            setting = f"M {m}, ef_construction {ef_construction}, ef {ef}"
            name = "HnswIndex (faiss) mips"
            rows.append(_row(index, p, name, setting, build, ef_search=ef, n_threads=1))
        del index
    return rows


def hnsw_rows(p: dict[str, np.ndarray], python: str, m: list[int], seed: int) -> list[dict]:
    worker = Path(__file__).with_name("hnsw_worker.py")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npz"
        np.savez(data, ids=p["ids"], vectors=p["vectors"], queries=p["queries"], top=p["top"])
        out = subprocess.run(
            [python, str(worker), str(data), ",".join(map(str, m)), str(seed)],
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode != 0:
        raise RuntimeError(f"hnsw worker failed ({python}):\n{out.stderr[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--annoy-trees", default="50,150")
    ap.add_argument("--faiss-m", default="", help="HnswIndex M values, e.g. 32 (none: skipped)")
    ap.add_argument("--faiss-ef-construction", type=int, default=300)
    ap.add_argument("--hnsw-python", default="/tmp/hnsw-venv/bin/python")
    ap.add_argument("--hnsw-m", default="32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench_out/ann_on_run.json"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # one query at a time, one thread, as the hnswlib side
    p = held_out_queries(a.run, a.users, a.seed)
    exact_p50 = float(np.median(p["exact_ms"]))
    rows = annoy_rows(p, [int(x) for x in a.annoy_trees.split(",")], a.seed)
    if a.faiss_m:
        m_values = [int(x) for x in a.faiss_m.split(",")]
        rows += faiss_rows(p, m_values, a.faiss_ef_construction, a.seed)
    if Path(a.hnsw_python).exists():
        rows += hnsw_rows(p, a.hnsw_python, [int(x) for x in a.hnsw_m.split(",")], a.seed)
    else:
        print(f"(no {a.hnsw_python}: hnswlib side skipped)")
    norms = np.linalg.norm(p["vectors"], axis=1)
    print(
        f"run {a.run}: {len(p['ids']):,} items x {p['vectors'].shape[1]}, {len(p['queries'])} "
        f"held-out user queries; item norms p1/p50/p99 "
        f"{np.percentile(norms, [1, 50, 99]).round(2).tolist()}"
    )
    print(
        f"exact (ExactIndex, 1 thread) single query p50 {exact_p50:.2f} ms, "
        f"p99 {np.percentile(p['exact_ms'], 99):.2f} ms"
    )
    print("| index | setting | recall@100 | p50 ms | p99 ms | speed-up vs exact | build s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["speedup"] = exact_p50 / r["p50_ms"]
        print(
            f"| {r['index']} | {r['setting']} | {r['recall']:.3f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['speedup']:.1f}x | {r['build_s']:.0f} |"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps({"run": str(a.run), "exact_p50_ms": exact_p50, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
