"""Training loop of the two-tower candidate generator (SPEC §2–§3) and the trained artifact.

Where it sits: `features.examples` builds `CandidateExamples` and `ItemFeatures`;
`train_candidate_generator` fits a `TwoTowerModel` with the objective chosen in
`CandidateGenConfig` (sampled or in-batch softmax with logQ correction, plus the SSL21
regulariser `L = L_main + alpha * L_self` on an item batch drawn uniformly from the catalog);
the resulting `TrainedCandidateGenerator` exports item and user vectors for
`candidate_gen.index` / `candidate_gen.retrieve`, and saves/loads itself.

Randomness: one `torch.Generator` seeded from `config.seed` drives shuffling, negative
sampling, SSL batches, masks and dropout; its state is checkpointed after every epoch with the
model and optimizer, so `resume=True` continues to the same weights as an uninterrupted run
(bit-for-bit on CPU; on CUDA up to the nondeterminism of its kernels). Parameter
initialization is seeded by `config.seed` without touching torch's global RNG.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from candidate_gen.config import RESUMABLE_CHANGES, CandidateGenConfig
from candidate_gen.losses import (
    in_batch_softmax_loss,
    log_q_from_counts,
    sampled_softmax_loss,
    ssl_contrastive_loss,
)
from candidate_gen.ssl import cfm_masks, multivalue_dropout, mutual_information, rfm_masks
from candidate_gen.towers import ItemBatch, TwoTowerModel, UserBatch, with_topics_mask
from features.atomic import atomic_path, atomic_write_json
from features.examples import CandidateExamples, CandidateFeaturizer, ItemFeatures, UserFeatures

__all__ = [
    "TrainedCandidateGenerator",
    "train_candidate_generator",
    "resolve_device",
    "recall_at_k",
    "CHECKPOINT_FILE",
]

CHECKPOINT_FILE = "checkpoint.pt"
_CHECKPOINT_FORMAT = 1
_MODEL_FORMAT = 1
_EMBED_CHUNK = 16_384  # rows per forward pass when exporting vectors


def resolve_device(name: str) -> torch.device:
    """Return the torch device for "auto" (CUDA when available), "cpu" or "cuda"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device='cuda' was requested but torch sees no CUDA device; use device='auto' or 'cpu'"
        )
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'")
    return torch.device(name)


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
    def item_embeddings(self, items: ItemFeatures | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return `(item ids (N,) int64, vectors (N, E) float32)` for every catalog item.

        `items` defaults to the training catalog; pass `featurizer.item_features(new_catalog)`
        to embed items uploaded since (the item tower embeds unseen items from their features).
        """
        items = self.items if items is None else items
        _check_items_match(self.featurizer, items)
        self.model.eval()
        batch = ItemBatch.from_features(items, self.device)
        out = [
            self.model.item_vectors(
                batch.index(torch.arange(i, min(i + _EMBED_CHUNK, len(items)), device=self.device))
            )
            for i in range(0, len(items), _EMBED_CHUNK)
        ]
        vectors = (
            torch.cat(out).float().cpu().numpy()
            if out
            else np.zeros((0, self.config.embedding_dim), np.float32)
        )
        return items.item_id.copy(), vectors

    @torch.no_grad()
    def user_embeddings(
        self, features: UserFeatures, *, example_age: float | None = 0.0
    ) -> np.ndarray:
        """Return user vectors (N, E) float32; example age is set to `example_age` (serving: 0).

        Pass `example_age=None` to keep the ages stored in `features`.
        """
        if example_age is not None:
            features = features.with_example_age(example_age)
        self.model.eval()
        users = UserBatch.from_features(features, self.device)
        out = [
            self.model.user_vectors(
                users.index(
                    torch.arange(i, min(i + _EMBED_CHUNK, len(features)), device=self.device)
                )
            )
            for i in range(0, len(features), _EMBED_CHUNK)
        ]
        if not out:
            return np.zeros((0, self.config.embedding_dim), np.float32)
        return torch.cat(out).float().cpu().numpy()

    def save(self, directory: str | Path) -> Path:
        """Write weights, config, vocabularies and catalog features into `directory`; return it.

        Files: `model.pt` (state_dict), `config.json`, `featurizer.json` (vocabularies,
        normalizer), `items.npz`, `history.json`, and `model.json` written last (a directory
        with `model.json` is complete).
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        with atomic_path(out / "model.pt") as tmp:
            torch.save(state, tmp)
        atomic_write_json(out / "config.json", self.config.to_dict())
        self.featurizer.save(out / "featurizer.json")
        arrays: dict[str, Any] = self.items.to_arrays()
        with atomic_path(out / "items.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        atomic_write_json(out / "history.json", self.history)
        atomic_write_json(
            out / "model.json",
            {
                "kind": "TrainedCandidateGenerator",
                "format": _MODEL_FORMAT,
                "files": [
                    "model.pt",
                    "config.json",
                    "featurizer.json",
                    "items.npz",
                    "history.json",
                ],
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
        config = CandidateGenConfig.from_dict(
            json.loads((d / "config.json").read_text(encoding="utf-8"))
        )
        featurizer = CandidateFeaturizer.load(d / "featurizer.json")
        with np.load(d / "items.npz", allow_pickle=False) as arrays:
            items = ItemFeatures.from_arrays(arrays)
        dev = resolve_device(device)
        model = TwoTowerModel(config, featurizer.schema())
        state = torch.load(d / "model.pt", map_location=dev, weights_only=True)
        model.load_state_dict(state)
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
) -> TrainedCandidateGenerator:
    """Return a candidate generator trained on `examples` over the catalog `item_features`.

    Every training label must be a catalog item. With `valid`, Recall@`config.valid_k` (exact
    search over the whole catalog) is measured after each epoch, training stops after
    `config.patience` epochs without improvement, and the best epoch's weights are returned.
    With `checkpoint_dir`, a checkpoint (weights, optimizer, RNG state, history, config) is
    written atomically after every epoch; `resume=True` continues from it (or starts afresh
    when there is none) and reaches the same result as an uninterrupted run. Only `epochs` and
    `device` may differ from the config that wrote the checkpoint.
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
    device = resolve_device(config.device)
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
    selected = examples.features if len(keep) == len(examples) else examples.features.take(keep)
    train_users = UserBatch.from_features(selected, device)  # zero-copy on CPU when all kept
    train_rows = torch.from_numpy(rows_np[keep].astype(np.int64)).to(device)
    catalog = ItemBatch.from_features(item_features, device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = TwoTowerModel(config, featurizer.schema())
    model.to(device)
    optimizer = _make_optimizer(config, model)
    gen = torch.Generator().manual_seed(config.seed)

    counts = np.bincount(rows_np[keep], minlength=n_items).astype(np.float64)
    sampler = _NegativeSampler(config, counts, device)
    label_log_q = log_q_from_counts(counts, smoothing=1.0).to(device)  # (N,) in-batch logQ
    mi = None
    if config.ssl == "cfm":
        mi = mutual_information(item_features.codes()[:, : model.item_tower.n_features])

    valid_users, valid_rows = None, None
    if valid is not None and len(valid):
        pick = _valid_sample(config, len(valid))
        valid_users = UserBatch.from_features(valid.features.take(pick), device)
        valid_rows = torch.from_numpy(
            item_features.rows(valid.label_item[pick]).astype(np.int64)
        ).to(device)

    state = _TrainState()
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    fingerprint = _fingerprint(rows_np[keep], n_items)
    if resume and ckpt_path is not None and ckpt_path.exists():
        state = _load_checkpoint(ckpt_path, config, fingerprint, model, optimizer, gen, device)
    elif checkpoint_dir is not None:
        atomic_write_json(Path(checkpoint_dir) / "config.json", config.to_dict())

    n_train = len(keep)
    n_batches = math.ceil(n_train / config.batch_size)
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if state.stopped:
            break
        model.train()
        start = time.perf_counter()
        perm = torch.randperm(n_train, generator=gen).to(device)
        totals = np.zeros(3)  # loss, main, ssl (example-weighted sums)
        bar = tqdm(
            total=n_batches,
            desc=f"candidate_gen epoch {epoch}/{config.epochs}",
            disable=not progress,
            leave=False,
        )
        for b in range(n_batches):
            idx = perm[b * config.batch_size : (b + 1) * config.batch_size]
            users = train_users.index(idx)
            pos = train_rows[idx]  # (B,) catalog rows of the labels
            main = _main_loss(config, model, users, pos, catalog, sampler, label_log_q, gen)
            ssl = _ssl_loss(config, model, catalog, mi, gen) if config.ssl != "none" else None
            loss = main if ssl is None else main + config.ssl_alpha * ssl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            w = len(idx)
            totals += w * np.array([loss.item(), main.item(), 0.0 if ssl is None else ssl.item()])
            bar.update(1)
            if b % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(totals[0] / n_train),
            "main_loss": float(totals[1] / n_train),
            "ssl_loss": float(totals[2] / n_train),
            "train_seconds": float(seconds),
            "examples_per_second": float(n_train / max(seconds, 1e-9)),
        }
        if valid_users is not None and valid_rows is not None:
            recall = recall_at_k(model, valid_users, valid_rows, catalog, config.valid_k)
            record[f"valid_recall@{config.valid_k}"] = recall
            if recall > state.best_metric:
                state.best_metric, state.best_epoch, state.bad_epochs = recall, epoch, 0
                state.best_model = {
                    k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                }
            else:
                state.bad_epochs += 1
                if config.patience > 0 and state.bad_epochs >= config.patience:
                    state.stopped = True
        state.history.append(record)
        state.epoch = epoch
        if progress:
            tqdm.write(_describe(record))
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, config, fingerprint, model, optimizer, gen, state)

    if state.best_model:
        model.load_state_dict(state.best_model)
    return TrainedCandidateGenerator(
        config, model, featurizer, item_features, state.history, device
    )


@torch.no_grad()
def recall_at_k(
    model: TwoTowerModel, users: UserBatch, label_rows: torch.Tensor, catalog: ItemBatch, k: int
) -> float:
    """Return the share of users whose label row is among the exact top-k of the whole catalog.

    Label rows of -1 (items missing from the catalog) count as misses.
    """
    was_training = model.training
    model.eval()
    n_items = len(catalog)
    dev = label_rows.device
    items = torch.cat(
        [
            model.item_vectors(
                catalog.index(torch.arange(i, min(i + _EMBED_CHUNK, n_items), device=dev))
            )
            for i in range(0, n_items, _EMBED_CHUNK)
        ]
    )  # (N, E)
    k_eff = min(k, n_items)
    hits = 0
    chunk = max(1, min(4096, (1 << 26) // max(n_items, 1)))  # bound the (chunk, N) score block
    for i in range(0, len(users), chunk):
        rows = torch.arange(i, min(i + chunk, len(users)), device=dev)
        u = model.user_vectors(users.index(rows))  # (c, E)
        top = torch.topk(u @ items.T, k_eff, dim=1).indices  # (c, k)
        hits += int((top == label_rows[rows].unsqueeze(1)).any(dim=1).sum())
    model.train(was_training)
    return hits / max(len(users), 1)


# ----------------------------------------------------------------------------- internals


class _TrainState:
    """What a checkpoint must carry besides weights and optimizer to resume exactly."""

    def __init__(self) -> None:
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_metric = -math.inf
        self.best_epoch = 0
        self.best_model: dict[str, torch.Tensor] = {}
        self.bad_epochs = 0
        self.stopped = False


class _NegativeSampler:
    """Draws shared negatives by inverse-CDF lookup; `log_q` is each item's log proposal prob."""

    def __init__(
        self, config: CandidateGenConfig, counts: np.ndarray, device: torch.device
    ) -> None:
        if config.negative_sampler == "uniform":
            weights = np.ones_like(counts)
        else:  # unigram ** power, +1 so items without training labels can still be drawn
            weights = (counts + 1.0) ** config.unigram_power
        p = weights / weights.sum()
        self.cdf = torch.from_numpy(np.cumsum(p))  # (N,) float64 on CPU
        self.log_q = torch.from_numpy(np.log(p)).float().to(device)  # (N,)
        self.n = len(counts)
        self.size = config.num_negatives
        self.device = device

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        """Return `num_negatives` catalog rows (S,) drawn with replacement."""
        u = torch.rand(self.size, generator=gen, dtype=torch.float64)
        rows = torch.searchsorted(self.cdf, u, right=True).clamp_max_(self.n - 1)
        return rows.to(self.device)


def _main_loss(
    config: CandidateGenConfig,
    model: TwoTowerModel,
    users: UserBatch,
    pos: torch.Tensor,
    catalog: ItemBatch,
    sampler: _NegativeSampler,
    label_log_q: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    u = model.user_vectors(users)  # (B, E)
    if config.loss == "sampled":
        neg = sampler.sample(gen)  # (S,)
        v = model.item_vectors(catalog.index(torch.cat([pos, neg])))  # (B + S, E)
        b = len(pos)
        return sampled_softmax_loss(
            u,
            v[:b],
            v[b:],
            sampler.log_q[pos],
            sampler.log_q[neg],
            temperature=config.temperature,
            pos_ids=pos,
            neg_ids=neg,
        )
    v = model.item_vectors(catalog.index(pos))  # (B, E)
    return in_batch_softmax_loss(
        u, v, label_log_q[pos], temperature=config.temperature, item_ids=pos
    )


def _ssl_loss(
    config: CandidateGenConfig,
    model: TwoTowerModel,
    catalog: ItemBatch,
    mi: np.ndarray | None,
    gen: torch.Generator,
) -> torch.Tensor:
    """L_self on an item batch drawn uniformly from the catalog (not from the label distribution)."""
    rows = torch.randint(len(catalog), (config.ssl_batch_size,), generator=gen).to(
        catalog.single.device
    )
    items = catalog.index(rows)
    if config.ssl == "spread_out":  # identity augmentations
        z = model.ssl_projection(items)
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
        views.append(model.ssl_projection(view, mask))
    return ssl_contrastive_loss(views[0], views[1], temperature=config.ssl_temperature)


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
        "best_metric": float(state.best_metric),
        "best_epoch": state.best_epoch,
        "best_model": state.best_model,
        "bad_epochs": state.bad_epochs,
        "stopped": state.stopped,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(
    path: Path,
    config: CandidateGenConfig,
    fingerprint: list[int],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    gen: torch.Generator,
    device: torch.device,
) -> _TrainState:
    payload = torch.load(path, map_location="cpu", weights_only=True)
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
    model.load_state_dict({k: v.to(device) for k, v in payload["model"].items()})
    optimizer.load_state_dict(payload["optimizer"])
    gen.set_state(payload["generator"])
    state = _TrainState()
    state.epoch = int(payload["epoch"])
    state.history = json.loads(payload["history"])
    state.best_metric = float(payload["best_metric"])
    state.best_epoch = int(payload["best_epoch"])
    state.best_model = dict(payload["best_model"])
    state.bad_epochs = int(payload["bad_epochs"])
    state.stopped = bool(payload["stopped"])
    return state


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
