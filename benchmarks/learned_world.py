"""A briefly trained candidate generator on a small synthetic world, and a grown catalog for it.

Where it sits: the benchmarks that need *learned* embeddings at 100k and 1M items
(benchmarks/annoy_learned.py, benchmarks/serving.py) share this setup:

1. `train_world`: draw a synthetic world (features.sources.synthetic, a preset with overrides),
   split its time window as the pipeline does (70% / 15% / 15%), fit the featurizer and train
   the candidate generator (the `default` preset's settings, a few epochs, no validation).
2. `grow_catalog`: grow the world's catalog to N servable items with the world's own catalog
   generator: the same preset and seed draw the same channels and topics (their layout is drawn
   before any item), so the extra items are new uploads of the same world. The world's items
   servable at the serving time keep their ids (and their trained id embeddings); the extra
   items take the generator's ids from `n_items` on, so they are unseen by training and the
   item tower embeds them from their features (channel, language, duration and upload-age
   buckets, topics), as it does for every new upload.
3. `embed_items` / `user_vectors`: item vectors at the serving time (upload ages measured then)
   and user vectors with example age 0 from the history strictly before it, as serving does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.cg_training import cg_config
from vidrec.candidate_gen.train import TrainedCandidateGenerator, train_candidate_generator
from vidrec.features.examples import CandidateFeaturizer
from vidrec.features.sources.synthetic import WorldConfig, generate_world
from vidrec.features.split import TimeSplit
from vidrec.features.tables import Dataset
from vidrec.pipelines.config import load_preset

__all__ = [
    "DrawnWorld",
    "LearnedWorld",
    "WorldSpec",
    "draw_world",
    "embed_items",
    "grow_catalog",
    "train_world",
    "user_vectors",
]

TRAIN_FRACTION = 0.70  # the presets' split: CG on [0, 70%), ranker on [70%, 85%), test after
VALID_FRACTION = 0.15


@dataclass(frozen=True)
class WorldSpec:
    """Which synthetic world to train on and how long: a preset with overrides, epochs."""

    preset: str = "default"
    overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = 2
    max_examples_per_user: int = 20
    quick: bool = False  # the quick (smoke) candidate-generator settings of cg_training

    def describe_world(self) -> str:
        """Return a one-line description of the world alone."""
        extra = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"world preset {self.preset!r}" + (f" ({extra})" if extra else "")

    def describe(self) -> str:
        """Return a one-line description of the world and training."""
        return (
            f"{self.describe_world()}, CG trained {self.epochs} epoch(s), "
            f"<= {self.max_examples_per_user} examples/user"
        )


@dataclass
class LearnedWorld:
    """A drawn world, its split, the fitted featurizer and the trained candidate generator."""

    spec: WorldSpec
    seed: int
    dataset: Dataset
    split: TimeSplit
    model: TrainedCandidateGenerator
    n_world_items: int  # the world's whole catalog (ids 0..n-1), incl. later uploads
    examples: int
    train_seconds: float
    world_seconds: float

    @property
    def at(self) -> int:
        """Return the serving time: the end of the validation window (as the pipeline serves)."""
        return int(self.split.valid_end)


def _featurizer(quick: bool) -> CandidateFeaturizer:
    params = dict(load_preset("default")["features"])
    if quick:
        params.update(n_quantiles=50)
    return CandidateFeaturizer(**params)


@dataclass
class DrawnWorld:
    """A drawn world's dataset, its split and a featurizer fitted on the train window."""

    spec: WorldSpec
    seed: int
    dataset: Dataset
    split: TimeSplit
    featurizer: CandidateFeaturizer
    n_world_items: int  # the world's whole catalog (ids 0..n-1), incl. later uploads
    world_seconds: float


def draw_world(spec: WorldSpec, seed: int) -> DrawnWorld:
    """Return the world of `spec` (seeded), its 70/15/15 split and the fitted featurizer."""
    t0 = time.perf_counter()
    world = generate_world(WorldConfig.preset(spec.preset, **spec.overrides), seed=seed)
    world_seconds = time.perf_counter() - t0
    ds = world.dataset
    split = TimeSplit.from_fractions(ds, TRAIN_FRACTION, VALID_FRACTION)
    featurizer = _featurizer(spec.quick).fit(ds, split)
    return DrawnWorld(spec, seed, ds, split, featurizer, int(world.n_items), world_seconds)


def train_world(spec: WorldSpec, seed: int, **cg_changes: Any) -> LearnedWorld:
    """Return the world of `spec` and a candidate generator trained on its train window.

    The candidate generator uses the `default` preset's settings on CPU (benchmarks.cg_training
    `cg_config`; quick: a small one) with `spec.epochs` epochs and `cg_changes` applied.
    """
    if spec.epochs < 1 or spec.max_examples_per_user < 1:
        raise ValueError(
            f"WorldSpec.epochs and max_examples_per_user must be >= 1, got {spec.epochs}, "
            f"{spec.max_examples_per_user}"
        )
    dw = draw_world(spec, seed)
    ds, featurizer = dw.dataset, dw.featurizer
    examples = featurizer.examples(ds, "train", max_examples_per_user=spec.max_examples_per_user)
    items = featurizer.item_features(ds)
    config = cg_config(spec.quick, seed, epochs=spec.epochs, **cg_changes)
    t0 = time.perf_counter()
    model = train_candidate_generator(config, examples, items, progress=False)
    return LearnedWorld(
        spec=spec,
        seed=seed,
        dataset=ds,
        split=dw.split,
        model=model,
        n_world_items=dw.n_world_items,
        examples=len(examples),
        train_seconds=time.perf_counter() - t0,
        world_seconds=dw.world_seconds,
    )


def grow_catalog(lw: LearnedWorld, n_items: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Return (items table, servable mask): the world's items plus new uploads, N servable.

    The table holds every item of `lw.dataset.items` (servable at `lw.at` or not: logs refer to
    them) and then new items drawn by the world's catalog generator (same preset, overrides
    and seed, hence the same channels and topics; ids from `lw.n_world_items` on; uploaded at
    or before `lw.at`), so that exactly `n_items` items are servable at `lw.at`. When the
    world alone has more servable items than `n_items`, the first `n_items` are servable and
    none is added.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    base = lw.dataset.items
    at = lw.at
    base_servable = base["upload_time"].to_numpy() <= at
    need = n_items - int(base_servable.sum())
    if need <= 0:
        keep = np.flatnonzero(base_servable)[:n_items]
        servable = np.zeros(len(base), dtype=bool)
        servable[keep] = True
        return base.reset_index(drop=True), servable
    # upload times are uniform over the generator's window; over-draw for the unservable share
    cfg = WorldConfig.preset(lw.spec.preset, **lw.spec.overrides)
    span = cfg.pre_window_days + cfg.days + cfg.future_days
    share = (cfg.pre_window_days + TRAIN_FRACTION * cfg.days + VALID_FRACTION * cfg.days) / span
    draw = lw.n_world_items + math.ceil(need / share * 1.05) + 1_000
    grown = generate_world(
        WorldConfig.preset(
            lw.spec.preset,
            **{
                **lw.spec.overrides,
                "n_items": draw,
                "n_users": 1,
                "impressions": 0,
                "searches_per_visit": 0.0,
                "browse_per_visit": 0.0,
            },
        ),
        seed=lw.seed,
    ).catalog
    ids = grown["item_id"].to_numpy()
    new = grown[(ids >= lw.n_world_items) & (grown["upload_time"].to_numpy() <= at)]
    if len(new) < need:
        raise RuntimeError(
            f"the grown catalog drew {len(new)} new servable items, {need} were needed; "
            "this is a bug in the over-draw share"
        )
    new = new.iloc[:need][list(base.columns)]
    items = pd.concat([base, new], ignore_index=True)
    servable = np.concatenate([base_servable, np.ones(need, dtype=bool)])
    return items, servable


def embed_items(
    model: TrainedCandidateGenerator,
    items: pd.DataFrame,
    at: int,
    watches: pd.DataFrame | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (ids (N,) int64, vectors (N, E) float32) of `items` with upload ages (and, from
    `watches`, the item time signals) at `at`."""
    features = model.featurizer.item_features(items, reference_time=at, watches=watches)
    return model.item_embeddings(features)


def user_vectors(lw: LearnedWorld, n_users: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (user ids (U,), vectors (U, E) float32) of random users who watched before `at`.

    Users are drawn without replacement (all of them when fewer than `n_users` qualify);
    vectors come from the history strictly before `lw.at` with example age 0, as served.
    """
    w = lw.dataset.watches
    active = np.unique(w["user_id"].to_numpy()[w["timestamp"].to_numpy() < lw.at])
    if len(active) == 0:
        raise ValueError("no user watched anything before the serving time; grow the world")
    rng = np.random.default_rng(seed)
    users = rng.choice(active, size=min(n_users, len(active)), replace=False)
    history = lw.model.featurizer.index_history(lw.dataset)
    feats = lw.model.featurizer.serving(history, users, lw.at)
    return users.astype(np.int64), lw.model.user_embeddings(feats, example_age=0.0)
