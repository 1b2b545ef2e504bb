"""Candidate-generator training throughput: ours against torch-rechub's YoutubeDNN.

Same data: one synthetic world (benchmarks.learned_world), our featurizer's next-watch
training examples (rollback, <= 20 per user), exported as arrays (user attribute codes,
watch-history and search-token bags padded with 0, continuous features with squares and
roots, example age, label item codes) and fed to both. torch-rechub (`pip install
torch-rechub`) is never our dependency: its side runs in a separate virtual environment
(`--rechub-python`, default /tmp/rechub-venv/bin/python) as pipelines/rechub_worker.py
(driven through `pipelines.rechub`), a process this driver keeps alive and sends "epoch"
commands to, so that our epochs and theirs
alternate (interleaved repeats, the same machine load) and neither process's memory is the
other's.

Same settings where the APIs allow: embedding size 64, batch 1024, user tower 256 -> 64 ReLU,
Adam lr 1e-3 without weight decay, and per example one positive against K negatives (K = 2048,
our default, and a small K). What differs (torch-rechub's API or model, listed in the notes):
- negatives: ours draws K per batch (unigram^0.75 over the catalog, shared by the batch's
  rows, logQ-corrected); theirs are K per example drawn once before training with its
  `negative_sample` (count^0.75 over the labels), no logQ correction. Both score B x (1 + K)
  logits per batch; theirs gathers B x K item embeddings, ours K.
- towers: theirs L2-normalises both towers and divides by a temperature (0.02, as in its
  YoutubeDNN example), adds BatchNorm after each user layer, and every user attribute
  embedding has the item width (its EmbeddingLayer concatenates sparse embeddings along one
  axis), so our closest configuration also uses width 64 for them (our default is 8);
  its item side is the id embedding alone (YT16), ours "id_only" adds one linear layer.
- loop: theirs iterates a torch DataLoader over per-example dicts (num_workers 0; its helper's
  default of 8 workers would oversubscribe 2 cores), ours slices prebuilt tensors.
Our runs: "ours, closest" (id-only item tower, no SSL, attribute width 64) and "ours, default"
(feature item tower with CFM SSL, the preset's settings). Figures: training examples/s per
epoch (each system's own epoch timer: the epoch loop, no setup), median over interleaved
repeats; the epoch's resident-set growth and each process's peak; Recall@50 of the same
validation examples after the last epoch (a check that both learn, not a quality study).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.cg_training import cg_config
from benchmarks.common import (
    Column,
    PhasePeak,
    check_repeats,
    median,
    ratio,
    result,
    time_repeats,
)
from benchmarks.learned_world import WorldSpec, draw_world
from vidrec.candidate_gen.towers import ItemBatch, UserBatch
from vidrec.candidate_gen.train import (
    TrainedCandidateGenerator,
    recall_at_k,
    train_candidate_generator,
)
from vidrec.features.examples import CandidateExamples, ItemFeatures
from vidrec.pipelines.rechub import (
    RECHUB_TEMPERATURE,
    RechubWorker,
    export_examples,
    rechub_python,
    rechub_version,
)

NAME = "rechub_compare"
TARGET_RATIO = 3.0  # ours (closest) against torch-rechub at the same negatives per example

COLUMNS = (
    Column("system", "system", "{}"),
    Column("negatives", "negatives K", "{}"),
    Column("examples_per_s", "examples/s (median)", "{:,.0f}"),
    Column("ratio_vs_rechub", "vs torch-rechub", "{:.2f}"),
    Column("epoch_peak_mb", "epoch peak MiB", "{:.0f}"),
    Column("process_peak_mb", "process peak MiB", "{:.0f}"),
    Column("recall50", "valid Recall@50", "{:.3f}"),
    Column("loss_last", "last epoch loss", "{:.3g}"),
    Column("step_gflop", "GFLOP a step", "{:.3g}"),
    Column("floor_ratio", "step / GEMM floor", "{:.2f}"),
)


def sizes(quick: bool) -> dict[str, Any]:
    """Return the world, negatives and validation sizes (quick: seconds)."""
    if quick:
        return {
            "world": WorldSpec(preset="tiny", epochs=1, quick=True),
            "negatives": (16,),
            "batch_size": 64,
            "valid_examples": 200,
            "train_examples": None,
        }
    return {
        "world": WorldSpec(preset="default", overrides={"n_users": 5_000, "impressions": 400_000}),
        "negatives": (2048, 100),
        "batch_size": 1024,
        "valid_examples": 2_000,
        # a seeded subset per epoch: torch-rechub gathers B x K embeddings per batch, so one of
        # its epochs over all ~29k examples with K = 2048 takes many minutes on 2 cores
        "train_examples": 10_240,
    }


class OurRun:
    """One of our configurations, trained one more epoch per call (resumed from a checkpoint)."""

    def __init__(
        self,
        label: str,
        config: Any,
        examples: CandidateExamples,
        items: ItemFeatures,
        directory: Path,
    ) -> None:
        self.label = label
        self.config = config
        self.examples = examples
        self.items = items
        self.directory = directory
        self.epochs = 0
        self.model: TrainedCandidateGenerator | None = None
        self.peaks: list[float] = []

    def epoch(self) -> dict[str, Any]:
        """Train one more epoch; return its history record (examples_per_second, ...)."""
        self.epochs += 1
        with PhasePeak() as peak:
            self.model = train_candidate_generator(
                self.config.replace(epochs=self.epochs),
                self.examples,
                self.items,
                checkpoint_dir=self.directory,
                resume=True,
                progress=False,
            )
        self.peaks.append(peak.peak_mb)
        return dict(self.model.history[-1])

    def recall(self, valid: CandidateExamples, k: int = 50) -> float:
        """Return Recall@k of `valid` (exact search over the whole catalog)."""
        if self.model is None:
            raise RuntimeError("train at least one epoch before measuring recall")
        rows = torch.from_numpy(self.items.rows(valid.label_item).astype(np.int64))
        return recall_at_k(
            self.model.model,
            UserBatch.from_features(valid.features),
            rows,
            ItemBatch.from_features(self.items),
            k,
        )


def step_flops(config: Any, examples: CandidateExamples, items: ItemFeatures, batch: int) -> float:
    """FLOPs of one training step of `config` (forward and backward, as torch's FlopCounterMode
    counts the matrix products): two batches' training less one batch's, so that what a
    training call does once (building the model, the catalog) cancels out."""
    from torch.utils.flop_counter import FlopCounterMode

    totals = []
    for n_batches in (1, 2):
        part = examples.take(np.arange(min(n_batches * batch, len(examples))))
        with FlopCounterMode(display=False) as counter:
            train_candidate_generator(config.replace(epochs=1), part, items, progress=False)
        totals.append(counter.get_total_flops())
    return float(totals[1] - totals[0])


def gemm_flops_per_s(n: int = 1024, repeats: int = 7) -> float:
    """The machine's float32 GEMM rate (FLOP/s) on an n x n x n product, median of `repeats`,
    with the process's torch threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2.0 * n**3 / median(time_repeats(lambda: torch.mm(a, b), repeats))


def run(
    *,
    quick: bool = False,
    repeats: int = 5,
    seed: int = 0,
    rechub_python_path: str | Path | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Return the ours-vs-torch-rechub training benchmark's result (table printed)."""
    repeats = check_repeats(repeats, quick)
    cfg = sizes(quick)
    python = rechub_python(rechub_python_path)
    spec: WorldSpec = cfg["world"]
    batch = cfg["batch_size"]
    world = draw_world(spec, seed)
    ds, featurizer = world.dataset, world.featurizer
    examples = featurizer.examples(ds, "train", max_examples_per_user=spec.max_examples_per_user)
    n_all = len(examples)
    if cfg["train_examples"] is not None and n_all > cfg["train_examples"]:
        subset = np.random.default_rng(seed).choice(n_all, cfg["train_examples"], replace=False)
        examples = examples.take(np.sort(subset))
    items = featurizer.item_features(ds)
    valid_all = featurizer.examples(ds, "valid", max_examples_per_user=spec.max_examples_per_user)
    known = np.flatnonzero(valid_all.label_code > 0)  # labels both models can name
    pick = np.random.default_rng(seed).permutation(known)[: cfg["valid_examples"]]
    valid = valid_all.take(np.sort(pick))
    threads = torch.get_num_threads()
    gemm_rate = gemm_flops_per_s(256 if quick else 1024)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    peaks: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_rechub_"))
    try:
        for k_neg in cfg["negatives"]:
            base = cg_config(quick, seed, num_negatives=k_neg, batch_size=batch, patience=0)
            ours = {
                "ours, closest": OurRun(
                    "ours, closest",
                    base.replace(
                        item_encoder="id_only", ssl="none", categorical_dim=base.embedding_dim
                    ),
                    examples,
                    items,
                    tmp / f"closest_{k_neg}",
                ),
                "ours, default": OurRun(
                    "ours, default", base, examples, items, tmp / f"default_{k_neg}"
                ),
            }
            data = tmp / f"examples_{k_neg}.npz"
            export_examples(
                data,
                examples,
                valid,
                embedding_dim=base.embedding_dim,
                user_layers=tuple(base.user_layers),
            )
            log_path = tmp / f"worker_{k_neg}.log"
            with open(log_path, "w") as log:
                worker = RechubWorker(
                    python,
                    data,
                    {
                        "batch_size": batch,
                        "negatives": k_neg,
                        "temperature": RECHUB_TEMPERATURE,
                        "lr": base.learning_rate,
                        "seed": seed,
                        "threads": threads,
                    },
                    log,
                )
                try:
                    theirs: list[dict[str, Any]] = []
                    mine: dict[str, list[dict[str, Any]]] = {name: [] for name in ours}
                    for r in range(repeats):
                        for name, our in ours.items():
                            mine[name].append(our.epoch())
                        theirs.append(worker.ask("epoch"))
                        print(
                            f"  K={k_neg} repeat {r + 1}/{repeats}: "
                            + ", ".join(
                                f"{n} {m[-1]['examples_per_second']:,.0f}" for n, m in mine.items()
                            )
                            + f", torch-rechub {theirs[-1]['examples_per_second']:,.0f} ex/s",
                            flush=True,
                        )
                    their_recall = worker.ask("eval")["recall"]
                finally:
                    worker.close()
            their_rate = median([t["examples_per_second"] for t in theirs])
            rows.append(
                {
                    "system": "torch-rechub YoutubeDNN",
                    "negatives": f"{k_neg} per example",
                    "examples_per_s": their_rate,
                    "ratio_vs_rechub": 1.0,
                    "epoch_peak_mb": max(t["epoch_peak_mb"] for t in theirs),
                    "process_peak_mb": max(t["peak_rss_mb"] for t in theirs),
                    "recall50": their_recall,
                    "loss_last": theirs[-1]["loss"],
                    "per_epoch": [round(t["examples_per_second"], 1) for t in theirs],
                    "prep_seconds": worker.ready["prep_seconds"],
                    "parameters": worker.ready["parameters"],
                }
            )
            for name, our in ours.items():
                rate = median([h["examples_per_second"] for h in mine[name]])
                flops = step_flops(our.config, examples, items, batch)
                rows.append(
                    {
                        "system": name,
                        "negatives": f"{k_neg} per batch",
                        "examples_per_s": rate,
                        "ratio_vs_rechub": ratio(rate, their_rate),
                        "epoch_peak_mb": max(our.peaks),
                        "process_peak_mb": None,
                        "recall50": our.recall(valid),
                        "loss_last": mine[name][-1]["train_loss"],
                        "per_epoch": [round(h["examples_per_second"], 1) for h in mine[name]],
                        "step_gflop": flops / 1e9,
                        # a step's time against its products at the machine's GEMM rate
                        "floor_ratio": ratio(batch / rate, flops / gemm_rate),
                        "parameters": int(sum(p.numel() for p in our.model.model.parameters()))
                        if our.model
                        else None,
                    }
                )
            peaks[f"rechub_worker_peak_k{k_neg}_mb"] = rows[-3]["process_peak_mb"]
            notes.append(
                f"K={k_neg}: torch-rechub data preparation (its negative_sample for "
                f"{len(examples):,} x {k_neg} negatives, loader) {worker.ready['prep_seconds']:.1f} s, "
                "not in its examples/s"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # the headline compares the same number of negatives per example at the smallest K, where
    # torch-rechub's per-example negatives cost it least (at K = 2048 it is ~30x slower)
    small = min(cfg["negatives"])
    closest = next(
        r for r in rows if r["system"] == "ours, closest" and r["negatives"].startswith(f"{small} ")
    )
    theirs_row = next(
        r
        for r in rows
        if r["system"].startswith("torch-rechub") and r["negatives"].startswith(f"{small} ")
    )
    headline = {
        "what": f"candidate-generator training examples/s, ours (closest configuration) vs "
        f"torch-rechub YoutubeDNN, K={small} negatives per example (ours shared by the batch), "
        f"batch {batch}, embedding 64, same examples",
        "figure": closest["examples_per_s"],
        "reference": theirs_row["examples_per_s"],
        "ratio": ratio(closest["examples_per_s"], theirs_row["examples_per_s"]),
        "unit": "examples/s",
        "target": f">= {TARGET_RATIO:g}x torch-rechub at the same K",
        "met": bool(ratio(closest["examples_per_s"], theirs_row["examples_per_s"]) >= TARGET_RATIO),
    }
    notes = [
        f"{len(examples):,} training examples per epoch (a seeded subset of the {n_all:,} built; "
        f"{spec.describe_world()}, <= {spec.max_examples_per_user} per user), batch {batch}, "
        f"{threads} torch threads in both processes, {repeats} interleaved repeats "
        "(ours closest, ours default, theirs), medians of the per-epoch rates",
        "ours: K negatives per batch shared by its rows, unigram^0.75 over the catalog, logQ "
        "correction; torch-rechub: K negatives per example drawn once before training "
        "(negative_sample method 1, count^0.75 over labels), no logQ",
        f"torch-rechub: L2-normalised towers / temperature {RECHUB_TEMPERATURE}, BatchNorm in "
        "the user MLP, attribute embeddings 64 wide (its EmbeddingLayer needs one width), "
        "id-only item side, DataLoader (num_workers 0); ours closest: id_only item tower "
        "(+1 linear layer), ssl none, attribute width 64; ours default: feature item tower + "
        "CFM SSL, attribute width 8",
        f"valid Recall@50: {len(valid):,} validation-window examples whose label has an id "
        "code, exact top-50 (ours over the whole catalog, theirs over every item code), after "
        f"the {repeats} timed epochs: a check that both train, not a quality comparison (that "
        "needs full training)",
        "epoch peak = resident-set growth during one epoch (VmHWM); process peak = the "
        "torch-rechub worker's peak resident set (VmHWM; ours: peak_rss_mb, the driver "
        "process, which also holds the world and the featurizer)",
        f"GFLOP a step: our training step's matrix products (forward and backward) as torch's "
        f"FlopCounterMode counts them; GEMM floor = those FLOPs at the machine's float32 GEMM "
        f"rate on a 1024^3 product ({gemm_rate / 1e9:.0f} GFLOP/s, {threads} threads); step / "
        "GEMM floor = (batch / examples per s) / floor",
        *notes,
    ]
    return result(
        NAME,
        "candidate-generator training: ours vs torch-rechub YoutubeDNN (same examples)",
        rows,
        COLUMNS,
        headline=headline,
        repeats=repeats,
        notes=notes,
        memory=peaks,
        params={
            "examples": len(examples),
            "valid_examples": len(valid),
            "negatives": list(cfg["negatives"]),
            "batch_size": batch,
            "world": spec.describe_world(),
            "rechub_python": str(python),
            "seed": seed,
            "rechub_version": rechub_version(python),
            "gemm_gflops": gemm_rate / 1e9,
        },
    )


if __name__ == "__main__":  # a direct run: python -m benchmarks.rechub_compare
    started = time.perf_counter()
    run(quick="--quick" in sys.argv, repeats=2 if "--quick" in sys.argv else 5)
    print(f"{time.perf_counter() - started:.1f} s")
