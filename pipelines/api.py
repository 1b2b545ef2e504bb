"""The Python API that `vidrec/__init__` exports: load a log, run the pipeline, fit a stage.

    import vidrec

    data = vidrec.load_data("my_logs/")
    config = vidrec.Config.for_data("my_logs/")
    report = vidrec.run(config, data="my_logs/", out="runs/mine")
    rec = vidrec.Recommender.load("runs/mine")
    rec.recommend(user_id, k=10)

`fit_candidate_generator` trains the first stage alone on a loaded log and returns a model with
`save` and `load`. (The ranker trains on the candidate generator's candidates, so it is fitted
inside a run: `TrainedRanker.load(run / "ranker" / "deep_weighted" / "model")` reads it back.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vidrec.pipelines.config import Config, ConfigError


def load_data(path: str | Path, *, dataset: str = "dir", columns: dict[str, Any] | None = None) -> Any:
    """Return the validated tables (`vidrec.features.tables.Dataset`) of the log in `path`.

    `dataset` is the directory's layout: "dir" (the data contract: users, items, watches and
    optionally searches and impressions as CSV or parquet), "movielens" or "kuairand" (the
    official layouts, converted on the fly). `columns` declares extra columns' types, as a
    config's `data.columns` ({"zip": "categorical"}). Bad input raises DataContractError naming
    the file, table, column and rows."""
    from vidrec.pipelines.run import load_source

    ds, _ = load_source(dataset, path, columns=columns)
    return ds


def run(
    config: Config | None = None,
    *,
    data: str | Path | None = None,
    out: str | Path,
    dataset: str = "dir",
    progress: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the whole pipeline into the run directory `out`; return its report.

    Without `data` the run generates the simulated world its config names (the default preset
    when `config` is None); with `data` it reads that log (layout `dataset`) and, when `config`
    is None, derives its settings from the log (`Config.for_data`). The report is the dict that
    `out/report.json` holds; `Recommender.load(out)` serves the run."""
    from vidrec.pipelines.run import run_pipeline

    if config is None:
        config = Config.for_data(data, dataset=dataset) if data is not None else Config.preset()
    if not isinstance(config, Config):
        raise ConfigError(f"config must be a vidrec.Config, got {type(config).__name__}")
    if data is not None and config["data.source"] != dataset:
        config = config.replace({"data.source": dataset})
    if data is None and config["data.source"] != "synthetic":
        raise ConfigError(
            f"the config reads a log (data.source = {config['data.source']!r}): pass data=DIR"
        )
    return run_pipeline(config.to_dict(), out, data_dir=data, progress=progress)


def fit_candidate_generator(
    data: Any, config: Config | None = None, *, progress: bool = False
) -> Any:
    """Train the candidate generator on a loaded log (`load_data`) and return it
    (`TrainedCandidateGenerator`: `save(dir)`, `TrainedCandidateGenerator.load(dir)`,
    `item_embeddings()`, user vectors through `vidrec.candidate_gen.retrieve.Retriever`).

    It trains on the config's training window [start, train_end) and stops early on the ranker
    window, as a run's first model does."""
    from vidrec.pipelines import run

    raw = (config or Config.preset()).to_dict()
    model, *_ = run.fit_candidate_generator(
        raw, data, run.config_split(raw, data), progress=progress
    )
    return model
