"""Training loop of the two-tower candidate generator (SPEC §2–§3) and the trained artifact.

Where it sits: `features.examples` builds `CandidateExamples` and `ItemFeatures`;
`train_candidate_generator` fits a `TwoTowerModel` with the objective chosen in
`CandidateGenConfig` (sampled or in-batch softmax with logQ correction, plus the SSL21
regulariser `L = L_main + alpha * L_self` on an item batch drawn uniformly from the training
window's items); the resulting `TrainedCandidateGenerator` exports item and user vectors for
`candidate_gen.index` / `candidate_gen.retrieve`, and saves/loads itself.

Time (no future information, no train/serve skew): the catalog passed in may hold items
uploaded after the training examples (the pipeline passes the whole catalog, so that the
saved model can embed them later). Training uses
- as sampled negatives, SSL items and rows of the CFM mutual-information matrix only the
  items uploaded at or before the last training example (the training window's items);
- for each example (row at time t), only the items servable at t (uploaded at or before t):
  a sampled or in-batch negative uploaded later leaves that row's softmax;
- each item with its upload-age bucket at the row's own time t (`TimedCatalog`), which is
  what a request at t is served with (`CandidateFeaturizer.item_features(catalog, t)`, the
  index built at the serving time); example age is taken at t the same way [YT16 §3.3].
  With item time signals (`features.time_signals`: recent watch counts, time since the first
  watch, trend) each item's signal codes are taken at t as well, from the catalog's time
  table (the codes of every item at each grid time, counted from watches strictly before
  it), which is what `item_features(catalog, t)` serves with.
  SSL items and the MI matrix take the ages at the last training example's time.
An item watched in training before its logged upload time counts as uploaded at its first
such watch. Validation Recall@k ranks, for each validation label at time t, the items
servable at t with their ages at t.

Randomness: one `torch.Generator` seeded from `config.seed` drives shuffling, negative
sampling, SSL batches, masks and dropout; its state is checkpointed after every epoch with the
model and optimizer, so `resume=True` continues to the same weights as an uninterrupted run
(bit-for-bit on CPU; on CUDA up to the nondeterminism of its kernels). Parameter
initialization is seeded by `config.seed` without touching torch's global RNG.

Several processes (a default torch.distributed process group of W > 1 ranks, e.g. under
torchrun; see `pipelines.distributed`): the model is wrapped in DistributedDataParallel (gloo
on CPU, NCCL on CUDA, one GPU per rank) and the single-process objective is kept:
- the seeded generator still draws each epoch's permutation (the same on every rank); each
  global batch of `batch_size` rows is split into W equal rank slices (`features.dist_env.
  shard_batches`), so every rank runs the same number of steps;
- each rank draws ceil(num_negatives / W) sampled negatives and ceil(ssl_batch_size / W) SSL
  items (with their masks) from its own generator, seeded from (seed, epoch, rank); the
  ids of the negatives and of the in-batch positives are all-gathered, and each rank embeds
  them at its own rows' times, so every row of the global batch is scored against the same
  candidates as in one process; each rank's main loss is the mean over its rows, so DDP's
  gradient average is the gradient of the global-batch loss; SSL views are all-gathered with
  gradients;
- validation Recall@k is computed on rank shards and summed over ranks; rank 0's value decides
  early stopping on every rank; only rank 0 reads and writes checkpoints (the others receive
  its checkpoint by broadcast, so no shared filesystem is needed), and a resumed run may use a
  different number of processes.
Batch inference (`item_embeddings`, `user_embeddings`, `recall_at_k` with `distributed=True`)
splits rows by rank and all-gathers them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vidrec.candidate_gen.config import RESUMABLE_CHANGES, CandidateGenConfig
from vidrec.candidate_gen.losses import (
    in_batch_softmax_from_scores,
    log_q_from_counts,
    sampled_softmax_from_scores,
    ssl_contrastive_loss,
)
from vidrec.candidate_gen.ssl import cfm_masks, multivalue_dropout, mutual_information, rfm_masks
from vidrec.candidate_gen.towers import ItemBatch, TwoTowerModel, UserBatch, with_topics_mask
from vidrec.common import distributed as dist_utils
from vidrec.common.torch_utils import (
    EarlyStopping,
    check_finite_loss,
    load_weights,
    progress_bar,
    resolve_device,
    save_weights,
)
from vidrec.features.atomic import atomic_path, atomic_write_json
from vidrec.features.dist_env import rank_seed, row_range, shard_batches
from vidrec.features.examples import (
    N_UPLOAD_AGE_CODES,
    UPLOAD_AGE_EDGES_S,
    UPLOAD_AGE_FUTURE,
    CandidateExamples,
    CandidateFeaturizer,
    ItemFeatures,
    UserFeatures,
)
from vidrec.features.integrity import (
    ArtifactError,
    DamagedWeightsError,
    check_digest,
    resolve_inside,
    sha256_file,
)

__all__ = [
    "TimedCatalog",
    "TrainedCandidateGenerator",
    "train_candidate_generator",
    "resolve_device",
    "recall_at_k",
    "CHECKPOINT_FILE",
]

CHECKPOINT_FILE = "checkpoint.pt"
log = logging.getLogger(__name__)
_CHECKPOINT_FORMAT = 1
_MODEL_FORMAT = 1
_COMPANIONS = ("config.json", "featurizer.json", "items.npz")
_EMBED_CHUNK = 16_384  # rows per forward pass when exporting vectors
_GROUP_CODES = 2048  # joint codes per group of item time-signal columns (`_code_groups`)


# ----------------------------------------------------------------------------- catalog in time


class TimedCatalog:
    """The catalog's item-tower inputs on a device, at any time: which items are servable
    then, and each item's upload-age bucket then.

    An item is servable at time t when its upload time is at or before t (the rule of
    `pipelines.run.available_items`, which the serving index applies); its upload-age bucket
    at t is `features.examples.upload_age_codes(t - upload_time)`, the code that
    `CandidateFeaturizer.item_features(catalog, reference_time=t)` gives, i.e. what a request
    at t is served with. Training takes both at each example's own time, as example age is.
    Without upload times (a hand-built `ItemFeatures`) every item is servable at every time
    and its codes are used as they are; `n_single` (the item tower's single-valued feature
    count) leaves the age alone when the tower does not read it ("id_only").

    With item time signals (`ItemFeatures.time_columns`), each item's signal codes at t are
    those of the grid time of t in the catalog's time table (`ItemFeatures.time_table`), the
    codes `item_features(catalog, reference_time=t)` gives as well.
    """

    def __init__(
        self, items: ItemFeatures, device: torch.device | str, *, n_single: int | None = None
    ) -> None:
        self.batch = ItemBatch.from_features(items, device)
        self.n = len(items)
        self.upload = (
            None
            if items.upload_time is None
            else torch.from_numpy(np.asarray(items.upload_time, dtype=np.int64)).to(device)
        )
        col = items.age_column
        read = col is not None and (n_single is None or col < n_single)
        self.age_col = col if self.upload is not None and read else None
        self.edges = torch.tensor(UPLOAD_AGE_EDGES_S, dtype=torch.int64, device=device)
        cols = items.time_columns
        self.time_cols: tuple[int, ...] = ()
        self.groups: list[list[tuple[int, int]]] = []  # (signal position, cardinality) lists
        self.group_tables: list[torch.Tensor] = []  # per group (N * K,) joint codes
        if cols and (n_single is None or cols[-1] < n_single):
            table = items.time_table
            if table is None:
                raise ValueError(
                    "the catalog has item time-signal codes but no time table: build the "
                    "training catalog with CandidateFeaturizer.item_features(dataset) (no "
                    "reference_time), which holds the codes of every grid time"
                )
            self.time_cols = cols  # consecutive columns of `single`
            self.k_lo, self.step, self.anchor = table.k_lo, table.step, table.anchor
            self.n_grid = table.n_grid
            # the signal columns in groups of few joint codes (mixed radix): a block's codes
            # are one flat gather per group, and a group's score one gather (`_Decomposed`)
            cards = [int(items.single_cardinalities[c]) for c in cols]
            self.groups = _code_groups(cards, _GROUP_CODES)
            self.group_tables = [
                torch.from_numpy(_joint_codes(table.codes, group, cards)).to(device)
                for group in self.groups
            ]

    def __len__(self) -> int:
        return self.n

    def servable(self, rows: torch.Tensor, times: torch.Tensor | int) -> torch.Tensor | None:
        """Whether catalog `rows` are uploaded at or before `times` (broadcast together); None
        when the catalog has no upload times (everything is)."""
        if self.upload is None:
            return None
        return self.upload[rows] <= times

    def age_codes(self, rows: torch.Tensor, times: torch.Tensor | int) -> torch.Tensor:
        """Upload-age bucket codes of catalog `rows` at `times` (broadcast together)."""
        if self.upload is None:
            raise ValueError("this catalog carries no upload times")
        age = times - self.upload[rows]
        codes = torch.bucketize(age, self.edges, right=True) + 2
        return codes.masked_fill(age < 0, UPLOAD_AGE_FUTURE)

    def grid(self, times: torch.Tensor | int) -> torch.Tensor:
        """Position in the time table of the grid time of `times` (clamped to the table:
        `train_candidate_generator` checks that its examples' times lie inside it)."""
        t = torch.as_tensor(times, device=self.batch.single.device)
        k = torch.div(t - self.anchor, self.step, rounding_mode="floor") - self.k_lo
        return k.clamp(0, self.n_grid - 1)

    def group_codes(self, rows: torch.Tensor, times: torch.Tensor | int) -> list[torch.Tensor]:
        """Joint time-signal codes of catalog `rows` at `times` (broadcast together): one int64
        tensor per group of signal columns."""
        if not self.group_tables:
            raise ValueError("this catalog carries no item time signals")
        flat = rows * self.n_grid + self.grid(times)
        return [table[flat].long() for table in self.group_tables]

    def time_codes(self, rows: torch.Tensor, times: torch.Tensor | int) -> list[torch.Tensor]:
        """Item time-signal codes of catalog `rows` at `times` (broadcast together): one int64
        tensor per signal column (`time_cols` order)."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(self.time_cols)
        for group, joint in zip(self.groups, self.group_codes(rows, times), strict=True):
            for j, card in reversed(group):  # the last digit varies fastest
                out[j] = joint % card
                joint = torch.div(joint, card, rounding_mode="floor")
        return out

    def at(self, rows: torch.Tensor, times: torch.Tensor | int) -> ItemBatch:
        """Item-tower inputs of catalog `rows` (M,), row i with its upload age (and item time
        signals) at times[i] (or at one time for all)."""
        items = self.batch.index(rows)  # a copy: the age column can be written
        if self.age_col is not None:
            codes = self.age_codes(rows, times)
            items.single[:, self.age_col] = codes.to(items.single.dtype)
        if self.time_cols:
            for col, codes in zip(self.time_cols, self.time_codes(rows, times), strict=True):
                items.single[:, col] = codes.to(items.single.dtype)
        return items

    def _dynamic(self, rows: torch.Tensor, times: torch.Tensor) -> list[torch.Tensor]:
        """Codes (B, S) of the time-dependent column groups (the upload age, then each group
        of time signals) of catalog `rows` (S,) at the rows' `times` (B,)."""
        codes: list[torch.Tensor] = []
        if self.age_col is not None:
            codes.append(self.age_codes(rows.unsqueeze(0), times.unsqueeze(1)))
        codes.extend(self.group_codes(rows.unsqueeze(0), times.unsqueeze(1)))
        return codes

    def prepare(self, model: TwoTowerModel, rows: torch.Tensor) -> _Decomposed | None:
        """The time-independent part of catalog `rows`' vectors and the per-code terms of
        their time-dependent column groups (`_Decomposed`), or None when the item tower is
        not linear in its feature embeddings (hidden layers)."""
        cols = ([self.age_col] if self.age_col is not None else []) + list(self.time_cols)
        terms = _linear_terms(model, cols)
        if terms is None:
            return None
        n_age = len(cols) - len(self.time_cols)
        signal = terms[n_age:]
        groups = [[t] for t in terms[:n_age]] + [[signal[j] for j, _ in g] for g in self.groups]
        items = self.batch.index(rows)
        chunks = [
            torch.arange(i, min(i + _EMBED_CHUNK, len(rows)), device=rows.device)
            for i in range(0, len(rows), _EMBED_CHUNK)
        ]
        # (S, E) before any normalization, in chunks (a whole catalog when validating)
        raw = torch.cat([model.item_tower(items.index(c)) for c in chunks])
        for col, term in zip(cols, terms, strict=True):
            raw = raw - term[items.single[:, col].long()]  # the stored codes' terms
        return _Decomposed.build(raw, groups, model.config.normalize_embeddings)

    def timed_scores(
        self,
        model: TwoTowerModel,
        users: torch.Tensor,
        times: torch.Tensor,
        rows: torch.Tensor,
        prepared: _Decomposed | None = None,
    ) -> torch.Tensor:
        """Scores (B, S) of `users` (B, E) at `times` (B,) against catalog `rows` (S,), each
        item with its upload age and time signals at the row's time (a catalog with time
        signals). `prepared` is `prepare(model, rows)` when the caller scores the same rows
        many times (validation)."""
        dec = prepared if prepared is not None else self.prepare(model, rows)
        if dec is not None:
            return dec.score(users, self._dynamic(rows, times))
        # not linear: embed each distinct (item, upload-age code, grid time) once
        n_age = N_UPLOAD_AGE_CODES if self.age_col is not None else 1
        k = self.grid(times).unsqueeze(1)  # (B, 1)
        if self.age_col is not None:
            age = self.age_codes(rows.unsqueeze(0), times.unsqueeze(1))
        else:
            age = torch.zeros_like(k)
        slot = torch.arange(len(rows), device=rows.device).unsqueeze(0)
        key = (slot * n_age + age) * self.n_grid + k  # (B, S)
        distinct, inverse = torch.unique(key, return_inverse=True)
        pair_row = rows[distinct // (n_age * self.n_grid)]
        items = self.batch.index(pair_row)
        if self.age_col is not None:
            a = (distinct // self.n_grid) % n_age
            items.single[:, self.age_col] = a.to(items.single.dtype)
        pair_time = self.anchor + (self.k_lo + distinct % self.n_grid) * self.step
        for col, codes in zip(self.time_cols, self.time_codes(pair_row, pair_time), strict=True):
            items.single[:, col] = codes.to(items.single.dtype)
        vectors = model.item_vectors(items)  # (U, E)
        return torch.cat(
            [
                (users[b : b + 64].unsqueeze(1) * vectors[inverse[b : b + 64]]).sum(-1)
                for b in range(0, len(users), 64)  # bounds the (rows, S, E) product
            ]
        )

    def scores(
        self, model: TwoTowerModel, users: torch.Tensor, times: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (scores (B, S), servable (B, S) or None): user vector b (`users` (B, E),
        at `times` (B,)) dotted with catalog row rows[s] embedded with its upload age at
        times[b], and whether rows[s] is servable then.

        With a linear item tower (no hidden layer, no normalization: every preset) an item's
        vector is a sum of one term per feature, so u · v(item, code) = u · (v(item) − the
        stored code's term) + u · term(code): one (B, S) product and one (B, codes) product,
        the cost of scoring a single catalog. Otherwise each distinct (item, age code) of the
        block is embedded once (an item uploaded well before the rows' times has one code for
        all of them, a fresh one a few) and scored by a (B, distinct pairs) product.
        With item time signals the same decomposition runs over every time-dependent column
        (`timed_scores`), the norm of cosine vectors included.
        """
        servable = self.servable(rows.unsqueeze(0), times.unsqueeze(1))
        if self.time_cols:
            return self.timed_scores(model, users, times, rows), servable
        if self.age_col is None:
            return users @ model.item_vectors(self.batch.index(rows)).T, servable
        codes = self.age_codes(rows.unsqueeze(0), times.unsqueeze(1))  # (B, S)
        terms = _age_terms(model, self.age_col)  # (codes, E) or None
        if terms is not None:
            items = self.batch.index(rows)
            stored = items.single[:, self.age_col].long()  # (S,) the catalog's own codes
            base = model.item_vectors(items) - terms[stored]  # (S, E) without the age term
            return users @ base.T + (users @ terms.T).gather(1, codes), servable
        nb = N_UPLOAD_AGE_CODES
        key = torch.arange(len(rows), device=rows.device).unsqueeze(0) * nb + codes  # (B, S)
        present = torch.zeros(len(rows) * nb, dtype=torch.bool, device=rows.device)
        present[key.reshape(-1)] = True
        distinct = torch.nonzero(present).squeeze(1)  # (U,) sorted keys
        slot = torch.cumsum(present, 0) - 1  # key -> its place among the distinct keys
        items = self.batch.index(rows[distinct // nb])
        items.single[:, self.age_col] = (distinct % nb).to(items.single.dtype)
        vectors = model.item_vectors(items)  # (U, E)
        return (users @ vectors.T).gather(1, slot[key]), servable

    def pairs_between(self, t_lo: int, t_hi: int) -> _AgePairs:
        """Every (item, age code) that some time in [t_lo, t_hi] gives (codes grow with time,
        so an item's codes are the range from its code at t_lo to its code at t_hi)."""
        rows = torch.arange(self.n, device=self.batch.single.device)
        if self.age_col is None:
            return _AgePairs(rows, self.batch, rows, None)
        lo = self.age_codes(rows, t_lo)
        span = self.age_codes(rows, t_hi) - lo + 1  # (N,) >= 1
        start = torch.cumsum(span, 0) - span
        pair_rows = torch.repeat_interleave(rows, span)  # (P,)
        codes = lo[pair_rows] + torch.arange(len(pair_rows), device=rows.device) - start[pair_rows]
        items = self.batch.index(pair_rows)
        items.single[:, self.age_col] = codes.to(items.single.dtype)
        return _AgePairs(pair_rows, items, start, lo)


def _age_terms(model: TwoTowerModel, age_col: int) -> torch.Tensor | None:
    """Return the upload-age term (codes, E) of a linear item tower's vectors, one row per
    age code (v = Σ_f W_f e_f + b, the age feature's W_f e_age(code)), or None when the tower
    is not linear in its feature embeddings (hidden layers, normalized vectors)."""
    tower = model.item_tower
    layers = list(tower.mlp)
    if (
        model.config.normalize_embeddings
        or age_col >= tower.n_single
        or len(layers) != 1
        or not isinstance(layers[0], nn.Linear)
    ):
        return None
    e = model.config.embedding_dim
    block = layers[0].weight[:, age_col * e : (age_col + 1) * e]  # (E, E): the age slot
    table = tower.other_embeddings[age_col - 1].weight  # (codes, E); single col j -> table j-1
    return table @ block.T


def _linear_terms(model: TwoTowerModel, cols: list[int]) -> list[torch.Tensor] | None:
    """Return the terms (codes, E) of columns `cols` in a linear item tower's output
    (v = Σ_f W_f e_f + b, before any normalization), or None when the tower has hidden
    layers."""
    tower = model.item_tower
    layers = list(tower.mlp)
    if any(c >= tower.n_single for c in cols) or len(layers) != 1:
        return None
    if not isinstance(layers[0], nn.Linear):
        return None
    e = model.config.embedding_dim
    weight = layers[0].weight
    # single col j > 0 -> other_embeddings[j - 1]; its slot of the linear layer's input
    return [tower.other_embeddings[c - 1].weight @ weight[:, c * e : (c + 1) * e].T for c in cols]


def _code_groups(cards: list[int], limit: int) -> list[list[tuple[int, int]]]:
    """Consecutive columns (position, cardinality) grouped so that each group's joint codes
    (the product of its cardinalities) stay within `limit` (a column above it stays alone)."""
    groups: list[list[tuple[int, int]]] = []
    size = limit + 1
    for j, card in enumerate(cards):
        if groups and size * card <= limit:
            groups[-1].append((j, card))
            size *= card
        else:
            groups.append([(j, card)])
            size = card
    return groups


def _joint_codes(codes: np.ndarray, group: list[tuple[int, int]], cards: list[int]) -> np.ndarray:
    """(N * K,) joint codes of a group of columns of the (N, K, F) code table (mixed radix, the
    group's last column varying fastest), in the smallest integer type that holds them."""
    joint = np.zeros(codes.shape[:2], dtype=np.int64)
    for j, card in group:
        joint = joint * card + codes[:, :, j]
    size = int(np.prod([card for _, card in group]))
    dtype = np.uint8 if size <= 256 else np.int16 if size <= 32768 else np.int32
    return np.ascontiguousarray(joint.reshape(-1).astype(dtype))


def _joint(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Sums over every combination of the parts' entries along `dim`, in joint-code order:
    parts (.., n_j, ..) -> (.., prod n_j, ..), entry (c_1, .., c_m) = sum_j parts[j][c_j]."""
    out = parts[0]
    for part in parts[1:]:
        a, b = out.unsqueeze(dim + 1), part.unsqueeze(dim)
        out = (a + b).flatten(dim, dim + 1)
    return out


@dataclass
class _Decomposed:
    """Catalog rows' vectors split into a time-independent part and per-code terms of the
    time-dependent column groups, so that scoring S items at B different times costs one
    (B, S) product plus a few gathers per group.

    v(item, codes) = base(item) + Σ_g term_g[code_g], term_g[joint code] the sum of its
    columns' terms; with normalized vectors the score is u · v / |v|, where
    |v|² = |base|² + 2 Σ_g base · term_g[c_g] + Σ_g |term_g[c_g]|²
    + 2 Σ_{g<h} term_g[c_g] · term_h[c_h], each a gather from a small precomputed table.
    """

    base: torch.Tensor  # (S, E)
    groups: list[list[torch.Tensor]]  # per group, its columns' terms (codes_j, E)
    normalized: bool
    base_sq: torch.Tensor | None = None  # (S,)
    base_terms: list[torch.Tensor] | None = None  # per group (codes_g, S) = term_g @ base.T
    sq_terms: list[torch.Tensor] | None = None  # per group (codes_g,) = |term_g|²
    cross: dict[tuple[int, int], torch.Tensor] | None = None  # (g, h) -> term_g @ term_h.T

    @classmethod
    def build(
        cls, base: torch.Tensor, groups: list[list[torch.Tensor]], normalized: bool
    ) -> _Decomposed:
        if not normalized:
            return cls(base, groups, False)
        terms = [_joint(g, 0) for g in groups]  # (codes_g, E): a few thousand rows at most
        n = len(groups)
        return cls(
            base,
            groups,
            True,
            base_sq=(base * base).sum(dim=1),
            base_terms=[_joint([t @ base.T for t in g], 0) for g in groups],
            sq_terms=[(t * t).sum(dim=1) for t in terms],
            cross={(f, g): terms[f] @ terms[g].T for f in range(n) for g in range(f + 1, n)},
        )

    def score(self, users: torch.Tensor, codes: list[torch.Tensor]) -> torch.Tensor:
        """Scores (B, S) of `users` (B, E) against the items with group codes (B, S) each."""
        s = users @ self.base.T
        for group, c in zip(self.groups, codes, strict=True):
            s = s + _joint([users @ t.T for t in group], 1).gather(1, c)
        if not self.normalized:
            return s
        assert self.base_sq is not None and self.base_terms is not None
        assert self.sq_terms is not None and self.cross is not None
        sq = self.base_sq.unsqueeze(0).expand_as(s)
        for f, c in enumerate(codes):
            sq = sq + 2.0 * self.base_terms[f].gather(0, c) + self.sq_terms[f][c]
            for g in range(f + 1, len(codes)):
                cross = self.cross[(f, g)]
                sq = sq + 2.0 * cross.reshape(-1)[c * cross.shape[1] + codes[g]]
        return s / sq.clamp_min(0.0).sqrt().clamp_min(1e-12)  # F.normalize's eps


@dataclass
class _AgePairs:
    """Item-tower inputs of (item, age code) pairs, an item's pairs consecutive."""

    rows: torch.Tensor  # (P,) catalog row of each pair
    items: ItemBatch  # (P) the pairs' inputs
    start: torch.Tensor  # (N,) each item's first pair
    code_lo: torch.Tensor | None  # (N,) each item's first code (None: one pair per item)

    def column(
        self, catalog: TimedCatalog, rows: torch.Tensor, times: torch.Tensor
    ) -> torch.Tensor:
        """Pair index (T, R) of catalog `rows` (R,) at `times` (T, 1), within the range."""
        if self.code_lo is None:
            return self.start[rows].expand(times.shape[0], -1)
        return self.start[rows] + catalog.age_codes(rows, times) - self.code_lo[rows]


# ----------------------------------------------------------------------------- trained model


class TrainedCandidateGenerator:
    """A trained two-tower model with the featurizer and catalog it was trained with."""

    def __init__(
        self,
        config: CandidateGenConfig,
        model: TwoTowerModel,
        featurizer: CandidateFeaturizer,
        items: ItemFeatures,
        history: list[dict[str, Any]] | None = None,
        device: torch.device | None = None,
    ) -> None:
        _check_items_match(featurizer, items)
        self.config = config
        self.device = device if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.featurizer = featurizer
        self.items = items
        self.history = list(history or [])

    @torch.no_grad()
    def item_embeddings(
        self, items: ItemFeatures | None = None, *, distributed: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return `(item ids (N,) int64, vectors (N, E) float32)` for every catalog item.

        `items` defaults to the training catalog; pass `featurizer.item_features(new_catalog)`
        to embed items uploaded since (the item tower embeds unseen items from their features).
        With `distributed=True` and a process group of several ranks, every rank must call this
        with the same items: each embeds its `row_range` share and all ranks receive all rows.
        """
        items = self.items if items is None else items
        _check_items_match(self.featurizer, items)
        self.model.eval()
        rank, world = dist_utils.rank_and_world() if distributed else (0, 1)
        lo, hi = row_range(len(items), rank, world)
        vectors = _item_vectors(self.model, ItemBatch.from_features(items, self.device), lo, hi)
        if world > 1:
            vectors = dist_utils.all_gather_rows(vectors, len(items))
        return items.item_id.copy(), vectors.float().cpu().numpy()

    @torch.no_grad()
    def user_embeddings(
        self,
        features: UserFeatures,
        *,
        example_age: float | None = 0.0,
        distributed: bool = False,
    ) -> np.ndarray:
        """Return user vectors (N, E) float32; example age is set to `example_age` (serving: 0).

        Pass `example_age=None` to keep the ages stored in `features`. With `distributed=True`
        and a process group of several ranks, every rank must pass the same users: each embeds
        its `row_range` share and all ranks receive all N rows in order.
        """
        if example_age is not None:
            features = features.with_example_age(example_age)
        if self.model.training:  # eval() walks both towers: ~0.3 ms of a one-user request
            self.model.eval()
        rank, world = dist_utils.rank_and_world() if distributed else (0, 1)
        lo, hi = row_range(len(features), rank, world)
        own = features if world == 1 else features.take(np.arange(lo, hi))
        vectors = _user_vectors(self.model, UserBatch.from_features(own, self.device), 0, hi - lo)
        if world > 1:
            vectors = dist_utils.all_gather_rows(vectors, len(features))
        return vectors.float().cpu().numpy()

    def save(self, directory: str | Path) -> Path:
        """Write weights, config, vocabularies and catalog features into `directory`; return it.

        Files: `model.pt` (state_dict), `config.json`, `featurizer.json` (vocabularies,
        normalizer), `items.npz`, `history.json`, and `model.json` written last (a directory
        with `model.json` is complete).
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        save_weights(out / "model.pt", state)
        atomic_write_json(out / "config.json", self.config.to_dict())
        self.featurizer.save(out / "featurizer.json")
        arrays: dict[str, Any] = self.items.to_arrays()
        with atomic_path(out / "items.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        atomic_write_json(out / "history.json", self.history)
        files = ["model.pt", "config.json", "featurizer.json", "items.npz", "history.json"]
        atomic_write_json(
            out / "model.json",
            {
                "kind": "TrainedCandidateGenerator",
                "format": _MODEL_FORMAT,
                "files": files,
                # the files the weights must be used with (the vocabularies are in
                # featurizer.json), checked on load; model.pt itself is checked by shape
                "sha256": {name: sha256_file(out / name) for name in _COMPANIONS},
            },
        )
        return out

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto") -> TrainedCandidateGenerator:
        """Return the model saved by `save` in `directory`, on `device`."""
        d = Path(directory)
        meta_path = d / "model.json"
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{d} holds no complete candidate-generator model (model.json is missing); "
                "point to a directory written by TrainedCandidateGenerator.save"
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("kind") != "TrainedCandidateGenerator" or meta.get("format") != _MODEL_FORMAT:
            raise ValueError(
                f"{meta_path} is not a candidate-generator model of format {_MODEL_FORMAT}: {meta}"
            )
        _check_files(d, meta.get("sha256"))
        config = CandidateGenConfig.from_dict(
            json.loads((d / "config.json").read_text(encoding="utf-8"))
        )
        featurizer = CandidateFeaturizer.load(d / "featurizer.json")
        with np.load(d / "items.npz", allow_pickle=False) as arrays:
            items = ItemFeatures.from_arrays(arrays)
        dev = resolve_device(device)
        model = TwoTowerModel(config, featurizer.schema())
        state = load_weights(d / "model.pt", dev)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # tables sized by featurizer.json differ from model.pt
            raise ArtifactError(
                f"{d / 'model.pt'} does not fit {d / 'featurizer.json'} "
                f"({str(exc).splitlines()[-1].strip()}): the files come from different runs; "
                "restore the featurizer.json saved with this model, or retrain"
            ) from None
        history = json.loads((d / "history.json").read_text(encoding="utf-8"))
        return cls(config, model, featurizer, items, history, device=dev)


# ----------------------------------------------------------------------------- training


def train_candidate_generator(
    config: CandidateGenConfig,
    examples: CandidateExamples,
    item_features: ItemFeatures,
    *,
    valid: CandidateExamples | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainedCandidateGenerator:
    """Return a candidate generator trained on `examples` over the catalog `item_features`.

    Every training label must be a catalog item. Items uploaded after the last training
    example are never negatives or SSL items, and each example sees the items as servable at
    its own time (module docstring). With `valid`, Recall@`config.valid_k` (exact search over
    the items servable at each label's time) is measured after each epoch, training stops after
    `config.patience` epochs without improvement, and the best epoch's weights are returned.
    With `checkpoint_dir`, a checkpoint (weights, optimizer, RNG state, history, config) is
    written atomically after every epoch; `resume=True` continues from it (or starts afresh
    when there is none) and reaches the same result as an uninterrupted run. Only `epochs` and
    `device` may differ from the config that wrote the checkpoint. `on_epoch` is called with
    each epoch's history record (losses, validation recall) after its checkpoint is written;
    an exception it raises (a hyperparameter search pruning the trial) ends training there.
    An epoch whose mean training loss is NaN or infinite (the optimizer diverged) raises
    `NonFiniteLossError` before its checkpoint is written.

    Under a process group of several ranks every rank calls this with the same arguments and
    trains its shard with DistributedDataParallel (see the module docstring); `batch_size`
    must then be a multiple of the number of processes. Every rank returns the same model.
    """
    if not isinstance(config, CandidateGenConfig):
        raise TypeError(f"config must be a CandidateGenConfig, got {type(config).__name__}")
    featurizer = examples.featurizer
    _check_items_match(featurizer, item_features)
    if valid is not None and valid.featurizer.schema() != featurizer.schema():
        raise ValueError(
            "validation examples were built by a different featurizer than the training "
            "examples; build both with the same fitted CandidateFeaturizer"
        )
    rank, world = dist_utils.rank_and_world()
    if config.batch_size % world:
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by the {world} processes; use a "
            "multiple of the process count so that the global batch equals the single-process "
            "batch"
        )
    device = dist_utils.worker_device(resolve_device(config.device))
    n_items = len(item_features)
    if n_items < 2:
        raise ValueError(f"the catalog has {n_items} item(s); training needs at least 2")

    rows_np = item_features.rows(examples.label_item)
    if (rows_np < 0).any():
        missing = np.unique(examples.label_item[rows_np < 0])
        raise ValueError(
            f"{int((rows_np < 0).sum())} training label(s) watch items that are not in the "
            f"catalog passed as item_features (first item ids: {missing[:5].tolist()}); build "
            "item_features from a catalog that contains every watched item"
        )
    keep = _select_examples(config, examples)
    if len(keep) == 0:
        raise ValueError("no training examples left (empty window, or label_fraction too small)")
    # inputs are valid: a launcher that runs this on rank 0 alone replays the call on the others
    dist_utils.announce(
        train_candidate_generator,
        (config, examples, item_features),
        {"valid": valid, "checkpoint_dir": checkpoint_dir, "resume": resume, "progress": progress},
    )
    fingerprint = _fingerprint(rows_np[keep], n_items)
    dist_utils.check_same_on_all_ranks(
        (fingerprint, json.dumps(config.to_dict(), sort_keys=True)), "training examples or config"
    )
    selected = examples.features if len(keep) == len(examples) else examples.features.take(keep)
    train_users = UserBatch.from_features(selected, device)  # zero-copy on CPU when all kept
    train_rows = torch.from_numpy(rows_np[keep].astype(np.int64)).to(device)
    train_times = torch.from_numpy(examples.timestamp[keep].astype(np.int64)).to(device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = TwoTowerModel(config, featurizer.schema())
    model.to(device)
    optimizer = _make_optimizer(config, model)
    gen = torch.Generator().manual_seed(config.seed)
    label_times = examples.timestamp[keep].astype(np.int64)
    timed_items = _uploaded_by_first_watch(item_features, rows_np[keep], label_times)
    catalog = TimedCatalog(timed_items, device, n_single=model.item_tower.n_single)
    if catalog.time_cols and timed_items.time_table is not None:
        # the time table must hold every time the examples are taken at (raises otherwise)
        timed_items.time_table.position(np.array([label_times.min(), label_times.max()]))
        if valid is not None and len(valid):
            timed_items.time_table.position(valid.timestamp)

    counts = np.bincount(rows_np[keep], minlength=n_items).astype(np.float64)
    # the items the training examples may meet: those servable at the last example's time
    t_last = int(label_times.max())
    in_window = timed_items.servable_at(t_last)
    sampler = _NegativeSampler(config, counts, device, in_window)
    label_log_q = log_q_from_counts(counts, smoothing=1.0).to(device)  # (N,) in-batch logQ
    ssl_rows = torch.from_numpy(np.flatnonzero(in_window)).to(device)
    mi = None
    if config.ssl == "cfm":
        known = timed_items.take(in_window)
        if known.upload_time is not None and known.age_column is not None:
            known = known.at_time(t_last)  # the catalog as the end of the window knows it
        mi = mutual_information(known.codes()[:, : model.item_tower.n_features])

    valid_users, valid_rows, valid_times = None, None, None
    if valid is not None and len(valid):
        pick = _valid_sample(config, len(valid))
        valid_users = UserBatch.from_features(valid.features.take(pick), device)
        valid_rows = torch.from_numpy(
            item_features.rows(valid.label_item[pick]).astype(np.int64)
        ).to(device)
        valid_times = torch.from_numpy(valid.timestamp[pick].astype(np.int64)).to(device)

    state = _TrainState(config.patience)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    payload = None
    if resume and ckpt_path is not None:
        payload = dist_utils.on_rank0(_read_checkpoint, ckpt_path, config, fingerprint)
    if payload is not None:
        state = _apply_checkpoint(payload, model, optimizer, gen, device, config.patience)
        if rank == 0:
            log.info("candidate_gen: resuming from %s after epoch %d", ckpt_path, state.epoch)
    elif checkpoint_dir is not None:
        cfg_path = Path(checkpoint_dir) / "config.json"
        dist_utils.on_rank0(atomic_write_json, cfg_path, config.to_dict())

    # one module computes a step's loss, so that DDP sees (and synchronizes) all of it
    group = dist_utils.new_group() if world > 1 else None  # for the loss's gathers
    step = _TrainStep(
        config, model, catalog, sampler, label_log_q, mi, ssl_rows, t_last, group, rank, world
    )
    runner: nn.Module = step
    if world > 1:
        # without a masking SSL objective the SSL head (and, for spread_out, the default feature
        # embeddings) never get a gradient: DDP must then look for unused parameters each step
        runner = DistributedDataParallel(
            step, find_unused_parameters=config.ssl in ("none", "spread_out")
        )
    n_train = len(keep)
    try:
        for epoch in range(state.epoch + 1, config.epochs + 1):
            if state.stopped:
                break
            start = time.perf_counter()
            perm = torch.randperm(n_train, generator=gen)  # the same on every rank
            # negatives, SSL items and masks: the single stream in one process, else per rank
            draw = (
                gen
                if world == 1
                else torch.Generator().manual_seed(rank_seed(config.seed, epoch, rank))
            )
            bar = progress_bar(
                progress and rank == 0,
                desc=f"candidate_gen epoch {epoch}/{config.epochs}",
                leave=False,
            )
            totals = _run_epoch(
                runner,
                optimizer,
                shard_batches(perm.numpy(), config.batch_size, rank, world),
                train_users,
                train_rows,
                train_times,
                draw,
                bar,
            )
            seconds = time.perf_counter() - start
            record: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": float(totals[0] / totals[3]),
                "main_loss": float(totals[1] / totals[3]),
                "ssl_loss": float(totals[2] / totals[3]),
                "train_seconds": float(seconds),
                "examples_per_second": float(n_train / max(seconds, 1e-9)),
            }
            check_finite_loss(
                record["train_loss"],
                stage="candidate_gen",
                epoch=epoch,
                setting="candidate_gen.learning_rate",
                lr=config.learning_rate,
            )
            if valid_users is not None and valid_rows is not None:
                recall = recall_at_k(
                    model,
                    valid_users,
                    valid_rows,
                    catalog,
                    config.valid_k,
                    times=valid_times,
                    distributed=world > 1,
                )
                recall = dist_utils.broadcast_object(recall)  # rank 0 decides for every rank
                record[f"valid_recall@{config.valid_k}"] = recall
                state.update(recall, epoch, model)
            state.history.append(record)
            state.epoch = epoch
            if rank == 0:  # one line an epoch, with or without the progress bar
                log.info(_describe(record))
            if ckpt_path is not None:
                # rank 0 writes (atomically); the others wait for it (a barrier)
                dist_utils.on_rank0(
                    _save_checkpoint, ckpt_path, config, fingerprint, model, optimizer, gen, state
                )
            if on_epoch is not None:
                on_epoch(record)
    finally:
        dist_utils.destroy_group(group)
    state.restore(model)
    return TrainedCandidateGenerator(
        config, model, featurizer, item_features, state.history, device
    )


@torch.no_grad()
def recall_at_k(
    model: TwoTowerModel,
    users: UserBatch,
    label_rows: torch.Tensor,
    catalog: ItemBatch | TimedCatalog,
    k: int,
    *,
    times: torch.Tensor | None = None,
    distributed: bool = False,
) -> float:
    """Return the share of users whose label row is among the exact top-k of the catalog.

    With a `TimedCatalog` and the label `times` (N,), user i is ranked against the items
    servable at times[i] (uploaded at or before it), each with its upload age then: what a
    request at that time would be served from. Otherwise (an `ItemBatch`) the whole catalog
    is ranked with its feature codes as they are.

    Label rows of -1 (items missing from the catalog) count as misses. With `distributed=True`
    under a process group of several ranks (all passing the same arguments), each rank embeds
    its share of the catalog and scores its share of the users; hits are summed over ranks.
    """
    was_training = model.training
    model.eval()
    rank, world = dist_utils.rank_and_world() if distributed else (0, 1)
    timed = isinstance(catalog, TimedCatalog) and times is not None
    batch = catalog.batch if isinstance(catalog, TimedCatalog) else catalog
    n_items = len(batch)
    dev = label_rows.device
    if timed and isinstance(catalog, TimedCatalog) and catalog.time_cols:
        assert times is not None
        hits, n_users = _timed_hits(model, users, label_rows, catalog, k, times, rank, world)
        model.train(was_training)
        if world > 1:
            hits, n_users = dist_utils.all_reduce_sum([hits, n_users])
        return float(hits / max(n_users, 1))
    if timed:
        assert isinstance(catalog, TimedCatalog) and times is not None
        # every (item, age code) the validation times need, embedded once
        pairs = catalog.pairs_between(int(times.min()), int(times.max()))
        n_pairs = len(pairs.rows)
        items = _item_vectors(model, pairs.items, *row_range(n_pairs, rank, world))
        if world > 1:
            items = dist_utils.all_gather_rows(items, n_pairs)  # (P, E) on every rank
    else:
        items = _item_vectors(model, batch, *row_range(n_items, rank, world))
        if world > 1:
            items = dist_utils.all_gather_rows(items, n_items)  # (N, E) on every rank
    k_eff = min(k, n_items)
    lo, hi = row_range(len(users), rank, world)
    hits = 0
    # bound the (chunk, N) blocks of scores and, when timed, of int64 pair indices
    chunk = max(1, min(4096, (1 << (24 if timed else 26)) // max(len(items), 1)))
    every = torch.arange(n_items, device=dev)
    for i in range(lo, hi, chunk):
        rows = torch.arange(i, min(i + chunk, hi), device=dev)
        u = model.user_vectors(users.index(rows))  # (c, E)
        scores = u @ items.T  # (c, N), or (c, P) when timed
        if timed:
            assert isinstance(catalog, TimedCatalog) and times is not None
            t = times[rows].unsqueeze(1)  # (c, 1)
            scores = scores.gather(1, pairs.column(catalog, every, t))  # (c, N)
            ok = catalog.servable(every, t)
            if ok is not None:
                scores = scores.masked_fill(~ok, float("-inf"))
        top = torch.topk(scores, k_eff, dim=1).indices  # (c, k)
        hits += int((top == label_rows[rows].unsqueeze(1)).any(dim=1).sum())
    model.train(was_training)
    total_hits, n_users = dist_utils.all_reduce_sum([hits, hi - lo]) if world > 1 else (hits, hi)
    return float(total_hits / max(n_users, 1))


def _timed_hits(
    model: TwoTowerModel,
    users: UserBatch,
    label_rows: torch.Tensor,
    catalog: TimedCatalog,
    k: int,
    times: torch.Tensor,
    rank: int,
    world: int,
) -> tuple[int, int]:
    """(hits, users) of this rank's share of `users` against the whole catalog, each item with
    its upload age and time signals at the user's label time (a catalog with time signals)."""
    every = torch.arange(len(catalog), device=label_rows.device)
    prepared = catalog.prepare(model, every)  # the catalog's time-independent part, once
    n_cols = 1 + (catalog.age_col is not None) + len(catalog.groups)
    chunk = max(1, min(4096, (1 << 24) // max(len(catalog) * n_cols, 1)))
    lo, hi = row_range(len(users), rank, world)
    k_eff = min(k, len(catalog))
    hits = 0
    for i in range(lo, hi, chunk):
        rows = torch.arange(i, min(i + chunk, hi), device=label_rows.device)
        u = model.user_vectors(users.index(rows))  # (c, E)
        t = times[rows]
        scores = catalog.timed_scores(model, u, t, every, prepared)  # (c, N)
        ok = catalog.servable(every.unsqueeze(0), t.unsqueeze(1))
        if ok is not None:
            scores = scores.masked_fill(~ok, float("-inf"))
        top = torch.topk(scores, k_eff, dim=1).indices
        hits += int((top == label_rows[rows].unsqueeze(1)).any(dim=1).sum())
    return hits, hi - lo


def _item_vectors(model: TwoTowerModel, catalog: ItemBatch, lo: int, hi: int) -> torch.Tensor:
    """Return the item vectors (hi - lo, E) of catalog rows [lo, hi), in chunks."""
    dev = catalog.single.device
    out = [
        model.item_vectors(catalog.index(torch.arange(i, min(i + _EMBED_CHUNK, hi), device=dev)))
        for i in range(lo, hi, _EMBED_CHUNK)
    ]
    return torch.cat(out) if out else torch.zeros((0, model.config.embedding_dim), device=dev)


def _user_vectors(model: TwoTowerModel, users: UserBatch, lo: int, hi: int) -> torch.Tensor:
    """Return the user vectors (hi - lo, E) of rows [lo, hi) of `users`, in chunks."""
    dev = next(model.parameters()).device
    out = [
        model.user_vectors(users.index(torch.arange(i, min(i + _EMBED_CHUNK, hi), device=dev)))
        for i in range(lo, hi, _EMBED_CHUNK)
    ]
    return torch.cat(out) if out else torch.zeros((0, model.config.embedding_dim), device=dev)


# ----------------------------------------------------------------------------- internals


class _TrainState(EarlyStopping):
    """What a checkpoint must carry besides weights and optimizer to resume exactly: the epoch,
    the history, and the early stopping on validation recall (higher is better)."""

    def __init__(self, patience: int) -> None:
        super().__init__(higher_is_better=True, patience=patience)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []


def _run_epoch(
    runner: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[np.ndarray],
    train_users: UserBatch,
    train_rows: torch.Tensor,
    train_times: torch.Tensor,
    draw: torch.Generator,
    bar: Any,
) -> np.ndarray:
    """Train one epoch over this rank's `batches`; return the sums over ranks of
    [loss, main loss, SSL loss] weighted by rows, and of the rows."""
    runner.train()
    device = train_rows.device
    bar.reset(total=len(batches))
    totals = np.zeros(4)
    for b, local in enumerate(batches):
        idx = torch.from_numpy(local).to(device)
        loss, main, ssl = runner(train_users.index(idx), train_rows[idx], train_times[idx], draw)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        w = len(idx)
        totals += [w * loss.item(), w * main.item(), w * ssl.item(), w]
        bar.update(1)
        if b % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return dist_utils.all_reduce_sum(totals)


class _NegativeSampler:
    """Draws shared negatives by inverse-CDF lookup; `log_q` is each item's log proposal prob.

    Only the catalog rows where `allowed` is True are ever drawn (the items of the training
    window: nothing uploaded after the last training example); the others have log q = -inf.
    """

    def __init__(
        self,
        config: CandidateGenConfig,
        counts: np.ndarray,
        device: torch.device,
        allowed: np.ndarray | None = None,
    ) -> None:
        rows = np.arange(len(counts)) if allowed is None else np.flatnonzero(allowed)
        if len(rows) == 0:
            raise ValueError("no catalog item may be drawn as a negative")
        if config.negative_sampler == "uniform":
            weights = np.ones(len(rows))
        else:  # unigram ** power, +1 so items without training labels can still be drawn
            weights = (counts[rows] + 1.0) ** config.unigram_power
        p = weights / weights.sum()
        self.cdf = torch.from_numpy(np.cumsum(p))  # (R,) float64 on CPU
        log_q = np.full(len(counts), -np.inf)
        log_q[rows] = np.log(p)
        self.log_q = torch.from_numpy(log_q).float().to(device)  # (N,)
        self.rows = torch.from_numpy(rows.astype(np.int64))  # (R,) the drawable catalog rows
        self.size = config.num_negatives
        self.device = device

    def sample(self, gen: torch.Generator, size: int | None = None) -> torch.Tensor:
        """Return `size` (default `num_negatives`) catalog rows (S,) drawn with replacement."""
        u = torch.rand(self.size if size is None else size, generator=gen, dtype=torch.float64)
        pick = torch.searchsorted(self.cdf, u, right=True).clamp_max_(len(self.rows) - 1)
        return self.rows[pick].to(self.device)


class _TrainStep(nn.Module):
    """A training step's loss as a module: DDP synchronizes the gradients of its forward.

    Each rank computes the main loss of its own rows (DDP's gradient average of the rank
    means is the gradient of the global-batch mean): under W ranks each draws ceil(S / W)
    negatives and the ids are all-gathered, so every row is scored against the same S
    negatives as in one process, each embedded at the row's own time; in-batch, each row is
    scored against the positives of the whole global batch (their ids all-gathered). The
    SSL batch (ceil(ssl_batch_size / W) items per rank) is all-gathered with gradients
    (`dist_utils.gather_with_grad`) so its contrastive softmax spans the global SSL batch.
    """

    def __init__(
        self,
        config: CandidateGenConfig,
        model: TwoTowerModel,
        catalog: TimedCatalog,
        sampler: _NegativeSampler,
        label_log_q: torch.Tensor,
        mi: np.ndarray | None,
        ssl_rows: torch.Tensor,
        ssl_time: int,
        group: Any,
        rank: int,
        world: int,
    ) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.catalog = catalog
        self.sampler = sampler
        self.label_log_q = label_log_q
        self.mi = mi
        self.ssl_rows = ssl_rows
        self.ssl_time = ssl_time
        self.group = group
        self.rank = rank
        self.n_negatives = -(-config.num_negatives // world)  # ceil(S / W) per rank
        self.n_ssl = -(-config.ssl_batch_size // world)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of `t` in rank order (differentiable); `t` in one process."""
        return dist_utils.gather_with_grad(t, self.group)

    def forward(
        self, users: UserBatch, pos: torch.Tensor, times: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (loss, main loss, SSL loss or 0) of this rank's batch; only `loss` has a graph."""
        main = _main_loss(
            self.config,
            self.model,
            users,
            pos,
            times,
            self.catalog,
            self.sampler,
            self.label_log_q,
            gen,
            self.gather,
            self.n_negatives,
            self.rank,
        )
        if self.config.ssl == "none":
            return main, main.detach(), torch.zeros((), device=main.device)
        ssl = _ssl_loss(
            self.config,
            self.model,
            self.catalog,
            self.mi,
            gen,
            self.gather,
            self.n_ssl,
            self.ssl_rows,
            self.ssl_time,
        )
        return main + self.config.ssl_alpha * ssl, main.detach(), ssl.detach()


def _main_loss(
    config: CandidateGenConfig,
    model: TwoTowerModel,
    users: UserBatch,
    pos: torch.Tensor,
    times: torch.Tensor,
    catalog: TimedCatalog,
    sampler: _NegativeSampler,
    label_log_q: torch.Tensor,
    gen: torch.Generator,
    gather: Callable[[torch.Tensor], torch.Tensor],
    n_negatives: int,
    rank: int,
) -> torch.Tensor:
    """This rank's mean main loss: every candidate is embedded with its upload age at the
    row's time, and candidates not servable then leave the row's softmax."""
    u = model.user_vectors(users)  # (b, E)
    if config.loss == "sampled":
        neg_all = gather(sampler.sample(gen, n_negatives))  # (S,) every rank's share, shared
        v_pos = model.item_vectors(catalog.at(pos, times))  # (b, E)
        neg_scores, servable = catalog.scores(model, u, times, neg_all)  # (b, S)
        return sampled_softmax_from_scores(
            (u * v_pos).sum(dim=1),
            neg_scores,
            sampler.log_q[pos],
            sampler.log_q[neg_all],
            temperature=config.temperature,
            pos_ids=pos,
            neg_ids=neg_all,
            neg_mask=servable,
        )
    pos_all = gather(pos)  # (B,) the global batch: the in-batch softmax of one process
    scores, servable = catalog.scores(model, u, times, pos_all)  # (b, B)
    return in_batch_softmax_from_scores(
        scores,
        label_log_q[pos_all],
        temperature=config.temperature,
        row_offset=rank * len(pos),  # equal slices per rank (features.dist_env.shard_batches)
        item_ids=pos_all,
        mask=servable,
    )


def _ssl_loss(
    config: CandidateGenConfig,
    model: TwoTowerModel,
    catalog: TimedCatalog,
    mi: np.ndarray | None,
    gen: torch.Generator,
    gather: Callable[[torch.Tensor], torch.Tensor],
    n_items: int,
    ssl_rows: torch.Tensor,
    ssl_time: int,
) -> torch.Tensor:
    """L_self on an item batch drawn uniformly from the training window's items (`ssl_rows`,
    nothing uploaded after the last training example; not from the label distribution), each
    with its features as at `ssl_time`, the last training example's time.

    Each rank draws `n_items` items and its own masks; the views of all ranks are gathered so
    that the contrastive softmax runs over the whole SSL batch.
    """
    pick = torch.randint(len(ssl_rows), (n_items,), generator=gen).to(ssl_rows.device)
    items = catalog.at(ssl_rows[pick], ssl_time)
    if config.ssl == "spread_out":  # identity augmentations
        z = gather(model.ssl_projection(items))
        return ssl_contrastive_loss(z, z, temperature=config.ssl_temperature)
    n_features = model.item_tower.n_features
    if config.ssl == "cfm":
        if mi is None:
            raise RuntimeError("CFM needs the item features' mutual information; none was computed")
        mask_a, mask_b = cfm_masks(mi, gen)
    else:
        mask_a, mask_b = rfm_masks(n_features, gen)
    views = []
    for mask in (mask_a, mask_b):
        view = items
        if model.item_tower.use_topics and config.ssl_dropout > 0:
            dropped = multivalue_dropout(items.topics, items.topics_mask, config.ssl_dropout, gen)
            view = with_topics_mask(items, dropped)
        views.append(gather(model.ssl_projection(view, mask)))
    return ssl_contrastive_loss(views[0], views[1], temperature=config.ssl_temperature)


def _uploaded_by_first_watch(
    items: ItemFeatures, label_rows: np.ndarray, label_times: np.ndarray
) -> ItemFeatures:
    """Return `items` whose upload time is at the latest its first training label's time.

    A watch logged before its item's upload time (a logging artifact: KuaiRand counts such
    exposures) makes the item servable from that watch on, so that the positive is never an
    item "not uploaded yet" at its own example's time.
    """
    if items.upload_time is None or len(label_rows) == 0:
        return items
    first = np.full(len(items), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, label_rows, label_times)
    upload = np.minimum(items.upload_time, first)
    if np.array_equal(upload, items.upload_time):
        return items
    return dataclasses.replace(items, upload_time=upload)


def _make_optimizer(config: CandidateGenConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = list(model.parameters())  # the shared id table appears once
    factories: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "adam": lambda: torch.optim.Adam(
            params, lr=config.learning_rate, weight_decay=config.weight_decay
        ),
        "adagrad": lambda: torch.optim.Adagrad(
            params, lr=config.learning_rate, weight_decay=config.weight_decay
        ),
        "sgd": lambda: torch.optim.SGD(
            params, lr=config.learning_rate, weight_decay=config.weight_decay
        ),
    }
    return factories[config.optimizer]()


def _select_examples(config: CandidateGenConfig, examples: CandidateExamples) -> np.ndarray:
    """Return the example indices to train on: per-user cap (most recent), then label_fraction."""
    n = len(examples)
    keep = np.arange(n)
    if config.max_examples_per_user is not None and n:
        order = np.lexsort((np.arange(n), examples.timestamp, examples.user_id))
        users = examples.user_id[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], n]
        rank_from_end = np.repeat(ends, ends - starts) - 1 - np.arange(n)
        keep = np.sort(order[rank_from_end < config.max_examples_per_user])
    if config.label_fraction < 1.0:
        rng = np.random.default_rng(config.seed)
        m = max(1, int(round(config.label_fraction * len(keep))))
        keep = np.sort(rng.choice(keep, size=m, replace=False))
    return keep


def _valid_sample(config: CandidateGenConfig, n: int) -> np.ndarray:
    if n <= config.valid_max_examples:
        return np.arange(n)
    rng = np.random.default_rng([config.seed, 1])
    return np.sort(rng.choice(n, size=config.valid_max_examples, replace=False))


def _fingerprint(label_rows: np.ndarray, n_items: int) -> list[int]:
    """A cheap identity of the training data, checked on resume."""
    r = label_rows.astype(np.int64)
    weights = np.arange(1, len(r) + 1, dtype=np.int64) % 1_000_003
    return [int(len(r)), int(n_items), int(r.sum()), int((r * weights).sum() % (2**61 - 1))]


def _save_checkpoint(
    path: Path,
    config: CandidateGenConfig,
    fingerprint: list[int],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    gen: torch.Generator,
    state: _TrainState,
) -> None:
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "fingerprint": fingerprint,
        "epoch": state.epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "generator": gen.get_state(),
        "history": json.dumps(state.history),
        "best_metric": float(state.best),
        "best_epoch": state.best_epoch,
        "best_model": state.best_weights,
        "bad_epochs": state.bad_epochs,
        "stopped": state.stopped,
    }
    save_weights(path, payload)


def _read_checkpoint(
    path: Path, config: CandidateGenConfig, fingerprint: list[int]
) -> dict[str, Any] | None:
    """Return the checkpoint at `path` (None if there is none), checked against config and data."""
    if not path.exists():
        return None
    try:
        payload = load_weights(path, "cpu")
    except DamagedWeightsError as exc:
        # a kill or a full disk can leave a torn checkpoint behind: it is no use to resume
        # from, and keeping it would fail every rerun; the stage trains from the first epoch
        log.warning("candidate_gen: %s; discarding it and training from the first epoch", exc)
        return None
    if payload.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a candidate-generator checkpoint of format {_CHECKPOINT_FORMAT}"
        )
    saved = json.loads(payload["config"])
    now = config.to_dict()
    differ = sorted(
        k
        for k in set(saved) | set(now)
        if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES
    )
    if differ:
        raise ValueError(
            f"cannot resume from {path}: the config differs in {differ} (checkpoint: "
            f"{ {k: saved.get(k) for k in differ} }, now: { {k: now.get(k) for k in differ} }); "
            f"only {sorted(RESUMABLE_CHANGES)} may change, or start without resume"
        )
    if list(payload["fingerprint"]) != fingerprint:
        raise ValueError(
            f"cannot resume from {path}: it was trained on different examples or a different "
            "catalog; rebuild the same examples or start without resume"
        )
    return payload


def _apply_checkpoint(
    payload: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    gen: torch.Generator,
    device: torch.device,
    patience: int,
) -> _TrainState:
    """Load a checked checkpoint into model, optimizer and generator; return the loop state."""
    model.load_state_dict({k: v.to(device) for k, v in payload["model"].items()})
    optimizer.load_state_dict(payload["optimizer"])
    gen.set_state(payload["generator"])
    state = _TrainState(patience)
    state.epoch = int(payload["epoch"])
    state.history = json.loads(payload["history"])
    state.best = float(payload["best_metric"])
    state.best_epoch = int(payload["best_epoch"])
    state.best_weights = dict(payload["best_model"])
    state.bad_epochs = int(payload["bad_epochs"])
    return state


def _check_files(directory: Path, digests: object) -> None:
    """Refuse companion files that are not the ones model.json recorded (e.g. another run's
    featurizer.json, whose vocabularies would look up the wrong embedding rows)."""
    if not isinstance(digests, dict):
        return  # saved before model.json recorded digests
    for name, digest in digests.items():
        path = resolve_inside(directory, name, "model.json file name")
        check_digest(
            path,
            str(digest),
            f"the {name} this model was saved with (recorded in model.json)",
            "restore the file saved with this model, or retrain it",
        )


def _check_items_match(featurizer: CandidateFeaturizer, items: ItemFeatures) -> None:
    schema = featurizer.schema()
    if (
        list(items.single_names) != schema["item_single"]
        or list(items.single_cardinalities) != schema["item_single_cardinalities"]
        or items.topic_cardinality != schema["topic_cardinality"]
    ):
        raise ValueError(
            "item_features were built by a different featurizer than the examples/model "
            f"(features {list(items.single_names)} with sizes {list(items.single_cardinalities)}, "
            f"expected {schema['item_single']} with sizes {schema['item_single_cardinalities']}); "
            "build them with the same fitted CandidateFeaturizer.item_features"
        )


def _describe(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}", f"loss {record['train_loss']:.4f}"]
    parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("valid_")]
    parts.append(f"{record['examples_per_second']:.0f} ex/s")
    return "candidate_gen: " + ", ".join(parts)
