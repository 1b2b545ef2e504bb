"""hnswlib side of benchmarks/ann_on_run.py; runs in a separate Python with numpy + hnswlib.

argv: data.npz (ids, vectors, queries, top), M values (comma-separated), seed. Prints one JSON
row per (space, M, ef): recall@100 against `top`, single-query p50/p99 ms (1 thread), build s.
"""

import json
import sys
import time

import hnswlib
import numpy as np

EF = (200, 400, 800, 1600)


def main() -> None:
    z = np.load(sys.argv[1])
    ids, v, q, top = z["ids"], z["vectors"].astype(np.float32), z["queries"], z["top"]
    seed = int(sys.argv[3])
    n2 = (v.astype(np.float64) ** 2).sum(axis=1)
    aug = np.hstack([v, np.sqrt(n2.max() - n2)[:, None].astype(np.float32)])
    q_aug = np.hstack([q, np.zeros((len(q), 1), dtype=np.float32)]).astype(np.float32)
    for m in (int(x) for x in sys.argv[2].split(",")):
        for space, items, queries in (("l2, MIPS-augmented", aug, q_aug), ("ip", v, q)):
            index = hnswlib.Index(space=space.split(",")[0], dim=items.shape[1])
            index.init_index(max_elements=len(items), ef_construction=300, M=m, random_seed=seed)
            index.set_num_threads(2)
            t0 = time.perf_counter()
            index.add_items(items, np.arange(len(items)))
            build = time.perf_counter() - t0
            index.set_num_threads(1)
            for ef in EF:
                index.set_ef(ef)
                hits, ms = [], []
                for i in range(len(queries)):
                    t1 = time.perf_counter()
                    lab, _ = index.knn_query(queries[i : i + 1], k=top.shape[1])
                    ms.append((time.perf_counter() - t1) * 1e3)
                    hits.append(len(np.intersect1d(ids[lab[0]], top[i])) / top.shape[1])
                row = {
                    "index": f"hnswlib {space}",
                    "setting": f"M {m}, ef_construction 300, ef {ef}",
                    "recall": float(np.mean(hits)),
                    "p50_ms": float(np.median(ms)),
                    "p99_ms": float(np.percentile(ms, 99)),
                    "build_s": build,
                }
                print(json.dumps(row), flush=True)
            del index


if __name__ == "__main__":
    main()
