"""Names of the experiments and of the methods they compare, importable without torch: the
command line's parser reads them, and `vidrec --help` must not wait for the models' imports."""

from __future__ import annotations

#: studies on the simulated world (`pipelines.experiments`)
EXPERIMENTS: tuple[str, ...] = ("cg-features", "cg-ssl", "ranker-table")
#: the MovieLens time-split table (`pipelines.experiments_real`)
EXPERIMENTS_REAL: tuple[str, ...] = ("movielens-table",)
#: the leave-last-out benchmark (`pipelines.experiments_loo`)
EXPERIMENTS_LOO: tuple[str, ...] = ("loo",)

#: the retrieval baselines in report order; their config toggles are retrieval_baselines.<name>
BASELINE_NAMES: tuple[str, ...] = ("recent_popular", "item_knn", "ease", "pure_svd")
BASELINE_LABELS: dict[str, str] = {
    "recent_popular": "recent popular",
    "item_knn": "item-kNN (cosine)",
    "ease": "EASE",
    "pure_svd": "PureSVD",
}

#: the leave-last-out benchmark's methods: key -> label, in table order
LOO_METHODS: dict[str, str] = {
    "cg": "our CG",
    "most_popular": "most popular",
    **BASELINE_LABELS,
    "rechub": "torch-rechub YoutubeDNN",
}
#: torch-rechub's sampled negatives per training example in the leave-last-out benchmark
RECHUB_NEGATIVES = 100
