"""Shared state of one run: config sections turned into stage configs, and lazily loaded artifacts.

Stages (pipelines.run) read what earlier stages wrote through this object, so that a stage run
in a fresh process (a resumed run) loads the artifacts from the run directory instead of
recomputing them, while a single uninterrupted run keeps them in memory.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidrec.features.io import read_dataset, write_dataset
from vidrec.features.split import TimeSplit
from vidrec.features.tables import Dataset
from vidrec.pipelines.config import world_config
from vidrec.pipelines.rundir import RunDir

log = logging.getLogger("vidrec")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's legacy global state and torch (stages also pass seeds explicitly)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)



@dataclass
class RunContext:
    """What the stages share: the run directory, config and cached artifacts."""

    rundir: RunDir
    data_dir: Path | None = None
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return self.rundir.config

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def path(self) -> Path:
        return self.rundir.path

    # ------------------------------------------------------------------ data
    @property
    def is_synthetic(self) -> bool:
        return self.config["data"]["source"] == "synthetic"

    def world(self) -> Any:
        """The synthetic world (regenerated deterministically from the seed when not cached)."""
        if "world" not in self.cache:
            if not self.is_synthetic:
                raise RuntimeError("this run's data is not the synthetic world; no ground truth")
            from vidrec.features.sources.synthetic import generate_world

            d = self.config["data"]
            wcfg = world_config(d)
            log.info(
                "generating the synthetic world (preset %s, seed %d)", d["world_preset"], self.seed
            )
            self.cache["world"] = generate_world(wcfg, seed=self.seed)
        return self.cache["world"]

    def dataset(self) -> Dataset:
        if "dataset" not in self.cache:
            ds, _ = read_dataset(self.path / "data" / "tables")
            ds.name = json.loads((self.path / "data" / "data.json").read_text("utf-8"))["name"]
            self.cache["dataset"] = ds
        return self.cache["dataset"]

    def store_dataset(self, ds: Dataset, stage_dir: Path) -> None:
        write_dataset(ds, stage_dir / "tables", fmt="parquet")
        self.cache["dataset"] = ds

    def split(self) -> TimeSplit:
        if "split" not in self.cache:
            raw = json.loads((self.path / "data" / "split.json").read_text("utf-8"))
            self.cache["split"] = TimeSplit.from_dict(raw)
        return self.cache["split"]
