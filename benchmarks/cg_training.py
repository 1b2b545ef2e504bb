"""Candidate generator: training examples/s, embedding export, retrieval latency.

Setting: a synthetic contract Dataset (benchmarks/synthetic.py), the `default` preset's
featurizer and candidate-generator settings (sampled softmax, 2048 logQ-corrected negatives,
batch 1024, user tower 256 -> 64) on CPU, no validation.

Figures, measured in one run:
- training examples per second for ssl "none" and "cfm" (the SSL item batch and the two masked
  item-tower passes are the extra work): the per-epoch rate `candidate_gen.train` records,
  median over `repeats` epochs of one training run (each epoch is one repeat), and the
  whole call's wall time (it also builds the batches, and for CFM the mutual information);
- item-embedding export (`TrainedCandidateGenerator.item_embeddings`, items/s);
- index build over the learned item vectors: exact and annoy (n_trees 50);
- retrieval (`Retriever.retrieve`, 500 candidates, watched items excluded): per-user latency
  p50/p99 and batch throughput (users/s), with the exact and the annoy index.
References: CFM's throughput against no SSL; per-user retrieval throughput against batched.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    Column,
    PhasePeak,
    check_repeats,
    median,
    pct,
    per_call_ms,
    ratio,
    result,
    time_repeats,
)
from benchmarks.synthetic import synthetic_dataset
from vidrec.candidate_gen.config import CandidateGenConfig
from vidrec.candidate_gen.index import AnnoyIndex, ExactIndex
from vidrec.candidate_gen.retrieve import Retriever
from vidrec.candidate_gen.train import TrainedCandidateGenerator, train_candidate_generator
from vidrec.features.examples import CandidateFeaturizer
from vidrec.features.split import TimeSplit
from vidrec.pipelines.config import load_preset

NAME = "cg_training"

COLUMNS = (
    Column("what", "measure", "{}"),
    Column("value", "figure", "{:,.4g}"),
    Column("unit", "unit", "{}"),
    Column("p50", "p50 ms", "{:.2f}"),
    Column("p99", "p99 ms", "{:.2f}"),
    Column("vs", "reference", "{}"),
    Column("ratio", "ratio", "{:.3g}"),
)


def sizes(quick: bool) -> dict[str, Any]:
    """Return the data sizes (quick: a few seconds)."""
    if quick:
        return {
            "users": 100,
            "items": 300,
            "watches": 2_000,
            "searches": 200,
            "days": 20,
            "serving_users": 5,
            "batch_users": 20,
            "candidates": 50,
        }
    return {
        "users": 5_000,
        "items": 50_000,
        "watches": 60_000,
        "searches": 20_000,
        "days": 30,
        "serving_users": 200,
        "batch_users": 1_024,
        "candidates": 500,
    }


def cg_config(quick: bool, seed: int, **changes: Any) -> CandidateGenConfig:
    """Return the `default` preset's candidate-generator settings on CPU, with `changes`."""
    section = dict(load_preset("default")["candidate_gen"])
    c = {k: v for k, v in section.items() if k in CandidateGenConfig.field_names()}
    if not c.get("max_examples_per_user"):
        c["max_examples_per_user"] = None
    c.update(device="cpu", seed=seed, patience=0)
    if quick:
        c.update(num_negatives=32, batch_size=64, ssl_batch_size=32, user_layers=(32, 64))
    c.update(changes)
    return CandidateGenConfig.from_dict(c)


def _featurizer(quick: bool) -> CandidateFeaturizer:
    params = dict(load_preset("default")["features"])
    if quick:
        params.update(n_quantiles=50)
    return CandidateFeaturizer(**params)


def run(*, quick: bool = False, repeats: int = 5, seed: int = 0, **_: Any) -> dict[str, Any]:
    """Return the candidate-generator benchmark's result (table printed)."""
    repeats = check_repeats(repeats, quick)
    cfg = sizes(quick)
    ds = synthetic_dataset(
        n_users=cfg["users"],
        n_items=cfg["items"],
        n_watches=cfg["watches"],
        n_impressions=0,
        n_searches=cfg["searches"],
        days=cfg["days"],
        seed=seed,
    )
    split = TimeSplit.from_fractions(ds, 0.7, 0.15)
    featurizer = _featurizer(quick).fit(ds, split)
    base = cg_config(quick, seed)
    examples = featurizer.examples(ds, "train", max_examples_per_user=base.max_examples_per_user)
    items = featurizer.item_features(ds)
    rows: list[dict[str, Any]] = []

    # ---- training throughput: every epoch is one repeat
    rates: dict[str, float] = {}
    models: dict[str, TrainedCandidateGenerator] = {}
    peaks: dict[str, float] = {}
    for ssl in ("none", "cfm"):
        config = base.replace(ssl=ssl, epochs=repeats)
        with PhasePeak() as peak:
            t0 = time.perf_counter()
            model = train_candidate_generator(config, examples, items, progress=False)
            wall = time.perf_counter() - t0
        peaks[f"train_{ssl}_peak_mb"] = peak.peak_mb
        per_epoch = [h["examples_per_second"] for h in model.history]
        rates[ssl] = median(per_epoch)
        models[ssl] = model
        rows.append(
            {
                "what": f"train examples/s, ssl={ssl} (epoch median)",
                "value": rates[ssl],
                "unit": "examples/s",
                "vs": "ssl=none" if ssl != "none" else "",
                "ratio": ratio(rates[ssl], rates["none"]) if ssl != "none" else None,
                "per_epoch": per_epoch,
            }
        )
        rows.append(
            {
                "what": f"train call wall, ssl={ssl} ({repeats} epochs, incl. setup)",
                "value": len(examples) * repeats / wall,
                "unit": "examples/s",
            }
        )
    model = models["none"]

    # ---- item-embedding export and index builds over the learned vectors
    t_export = time_repeats(lambda: model.item_embeddings(), repeats)
    ids, vectors = model.item_embeddings()
    rows.append(
        {
            "what": f"item-embedding export ({len(ids):,} items)",
            "value": len(ids) / median(t_export),
            "unit": "items/s",
        }
    )
    t_exact = time_repeats(lambda: ExactIndex(vectors, ids), repeats)
    rows.append({"what": "exact index build", "value": median(t_exact) * 1e3, "unit": "ms"})
    t0 = time.perf_counter()
    annoy = AnnoyIndex(vectors, ids, n_trees=50, seed=seed, n_jobs=-1)
    annoy_build = time.perf_counter() - t0
    rows.append(
        {
            "what": "annoy index build (50 trees, all cores)",
            "value": annoy_build * 1e3,
            "unit": "ms",
        }
    )

    # ---- retrieval: per user and batched, exact and annoy
    rng = np.random.default_rng(seed)
    at = split.valid_end
    pool = ds.users["user_id"].to_numpy()
    k = cfg["candidates"]
    users = rng.choice(pool, size=min(cfg["serving_users"], len(pool)), replace=False)
    batch = rng.choice(pool, size=min(cfg["batch_users"], len(pool)), replace=False)
    for label, index in (("exact", ExactIndex(vectors, ids)), ("annoy", annoy)):
        retriever = Retriever(model, index, ds)

        def one(i: int, r: Retriever = retriever) -> None:
            r.retrieve(users[i : i + 1], k, at_time=at, exclude_watched=True)

        def many(r: Retriever = retriever) -> None:
            r.retrieve(batch, k, at_time=at, exclude_watched=True)

        lat = per_call_ms(one, len(users))
        t_batch = time_repeats(many, repeats)
        per_user_rate = 1e3 / median(lat)
        batch_rate = len(batch) / median(t_batch)
        rows.append(
            {
                "what": f"retrieve {k} per user ({label}, {len(ids):,} items)",
                "value": per_user_rate,
                "unit": "users/s",
                "p50": pct(lat, 50),
                "p99": pct(lat, 99),
                "vs": "batched users/s",
                "ratio": ratio(per_user_rate, batch_rate),
            }
        )
        rows.append(
            {
                "what": f"retrieve {k} for {len(batch):,} users in one call ({label})",
                "value": batch_rate,
                "unit": "users/s",
                "p50": median(t_batch) * 1e3 / len(batch),
            }
        )
    headline = {
        "what": "candidate-generator training examples/s, ssl=cfm vs ssl=none",
        "figure": rates["cfm"],
        "reference": rates["none"],
        "ratio": ratio(rates["cfm"], rates["none"]),
        "unit": "examples/s",
        "ssl_none_examples_per_s": rates["none"],
    }
    notes = [
        f"{len(examples):,} training examples/epoch ({cfg['users']:,} users, {cfg['items']:,} "
        f"items, {cfg['watches']:,} watches); default preset: batch {base.batch_size}, "
        f"{base.num_negatives} sampled negatives ({base.negative_sampler}), embedding "
        f"{base.embedding_dim}, user tower {list(base.user_layers)}, CPU, "
        f"{torch.get_num_threads()} torch threads",
        f"training: median of {repeats} epochs of one run per ssl setting",
        f"retrieval per user: p50/p99 over {len(users)} users (one call each, watched items "
        f"excluded); batched: median of {repeats} calls, p50 column = ms per user",
    ]
    return result(
        NAME,
        "candidate generator: training, export, retrieval",
        rows,
        COLUMNS,
        headline=headline,
        repeats=repeats,
        notes=notes,
        memory=peaks,
        params={**cfg, "seed": seed, "examples": len(examples), "config": base.to_dict()},
    )
