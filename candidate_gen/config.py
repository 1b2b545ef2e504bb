"""Configuration of the candidate generator (SPEC §2–§3): one frozen dataclass, JSON round trip.

Where it sits: `pipelines.config` composes this into the pipeline config; `candidate_gen.train`
reads it; every checkpoint and saved model carries it (`config.json`), so a model can always be
rebuilt and its training reproduced.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

LOSSES: tuple[str, ...] = ("sampled", "in_batch")
NEGATIVE_SAMPLERS: tuple[str, ...] = ("unigram", "uniform")
SSL_METHODS: tuple[str, ...] = ("none", "spread_out", "rfm", "cfm")
OPTIMIZERS: tuple[str, ...] = ("adam", "adagrad", "sgd")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
ITEM_ENCODERS: tuple[str, ...] = ("features", "id_only")
#: the indexes a run can serve candidates from (`candidate_gen.index`, retrieval.index)
INDEX_KINDS: tuple[str, ...] = ("annoy", "hnsw", "exact")

# Fields that may differ between the run that wrote a checkpoint and the run resuming it.
RESUMABLE_CHANGES: frozenset[str] = frozenset({"epochs", "device"})


@dataclass(frozen=True)
class CandidateGenConfig:
    """Every knob of the two-tower candidate generator; defaults suit a laptop CPU run.

    Towers
      embedding_dim: width of user and item vectors and of every embedding bag.
      user_layers: widths of the user tower's ReLU layers; the last must equal
        `embedding_dim` (YT16 Fig. 6: () = depth 0, a single linear layer; (256,) = depth 1;
        (2048, 1024, 512, 256) = depth 4 with embedding_dim 256).
      item_layers: hidden ReLU widths of the item tower, followed by a linear layer to
        `embedding_dim` (linear so item vectors may have negative components).
      item_encoder: "features" (id, channel, topics, language, duration and upload-age
        buckets: cold items get embeddings) or "id_only" (the paper's plain id embedding).
      categorical_dim: embedding width of each user categorical feature.
      normalize_embeddings: L2-normalize user and item vectors (cosine scores; pair with a
        temperature well below 1).
    Features (YT16 Fig. 6 feature sets)
      use_searches, use_example_age, use_demographics, use_continuous.
      recent_history: a second watch bag, the mean of the last this many watches of the
        history bag, beside the mean of the whole bag (0 = none). On logs where the next watch
        follows the last few, the tower then sees both what the user watches overall and
        what they watched just now.
    Objective
      loss: "sampled" (num_negatives shared negatives per batch drawn from
        `negative_sampler`, logQ-corrected) or "in_batch" (the batch's other positives,
        logQ-corrected with the label frequency). Both remove accidental hits.
      negative_sampler: "unigram" draws item j with probability proportional to
        (training label count_j + 1) ** unigram_power (the +1 keeps never-watched items
        reachable); "uniform" draws every catalog item with equal probability.
      temperature: divides the logits of the main softmax.
    SSL (SSL21)
      ssl: "none", "spread_out" (identity augmentations), "rfm" or "cfm".
      ssl_alpha: weight of L_self in L = L_main + alpha * L_self.
      ssl_temperature, ssl_batch_size (items drawn uniformly from the catalog per step),
      ssl_dropout: probability of dropping each value of a multi-valued feature (topics).
    Training
      optimizer, learning_rate, weight_decay, epochs, batch_size,
      patience: epochs without a better validation Recall@valid_k before stopping
        (0 = never stop early; needs validation examples to have any effect),
      valid_k, valid_max_examples: validation examples scored per epoch (a seeded sample),
      max_examples_per_user: keep each user's most recent training labels (None = all),
      label_fraction: share of training examples kept (seeded sample; label-sparsity study),
      seed: drives initialization, shuffling, negatives, SSL batches and masks,
      device: "auto" (CUDA when available), "cpu" or "cuda".
    """

    embedding_dim: int = 64
    user_layers: tuple[int, ...] = (256, 64)
    item_layers: tuple[int, ...] = ()
    item_encoder: str = "features"
    categorical_dim: int = 8
    normalize_embeddings: bool = False

    use_searches: bool = True
    use_example_age: bool = True
    use_demographics: bool = True
    use_continuous: bool = True
    recent_history: int = 0

    loss: str = "sampled"
    num_negatives: int = 2048
    negative_sampler: str = "unigram"
    unigram_power: float = 0.75
    temperature: float = 1.0

    ssl: str = "none"
    ssl_alpha: float = 0.1
    ssl_temperature: float = 0.1
    ssl_batch_size: int = 256
    ssl_dropout: float = 0.1

    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 5
    batch_size: int = 512
    patience: int = 2
    valid_k: int = 50
    valid_max_examples: int = 20_000
    max_examples_per_user: int | None = None
    label_fraction: float = 1.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("user_layers", "item_layers"):
            value = getattr(self, name)
            if not isinstance(value, list | tuple):
                raise ValueError(
                    f"CandidateGenConfig: {name} must be a list of widths, got {value!r}"
                )
            object.__setattr__(self, name, tuple(value))  # lists from JSON/TOML -> tuples
        _positive_int("embedding_dim", self.embedding_dim)
        _positive_int("categorical_dim", self.categorical_dim)
        for name, widths in (("user_layers", self.user_layers), ("item_layers", self.item_layers)):
            for w in widths:
                _positive_int(f"{name} width", w)
        if self.user_layers and self.user_layers[-1] != self.embedding_dim:
            raise ValueError(
                f"CandidateGenConfig: the last user_layers width ({self.user_layers[-1]}) must "
                f"equal embedding_dim ({self.embedding_dim}); e.g. user_layers="
                f"{self.user_layers[:-1] + (self.embedding_dim,)}"
            )
        _choice("item_encoder", self.item_encoder, ITEM_ENCODERS)
        _choice("loss", self.loss, LOSSES)
        _choice("negative_sampler", self.negative_sampler, NEGATIVE_SAMPLERS)
        _choice("ssl", self.ssl, SSL_METHODS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("device", self.device, DEVICES)
        _positive_int("num_negatives", self.num_negatives)
        _positive_int("ssl_batch_size", self.ssl_batch_size)
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("valid_k", self.valid_k)
        _positive_int("valid_max_examples", self.valid_max_examples)
        if self.max_examples_per_user is not None:
            _positive_int("max_examples_per_user", self.max_examples_per_user)
        if (
            not isinstance(self.recent_history, int)
            or isinstance(self.recent_history, bool)
            or self.recent_history < 0
        ):
            raise ValueError(
                "CandidateGenConfig: recent_history must be an integer >= 0, got "
                f"{self.recent_history!r}"
            )
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(
                f"CandidateGenConfig: patience must be an integer >= 0, got {self.patience!r}"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"CandidateGenConfig: seed must be an integer >= 0, got {self.seed!r}")
        for name in ("temperature", "ssl_temperature", "learning_rate"):
            _positive_float(name, getattr(self, name))
        for name in ("unigram_power", "ssl_alpha", "weight_decay"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                raise ValueError(
                    f"CandidateGenConfig: {name} must be a finite number >= 0, got {value!r}"
                )
        if not _finite(self.ssl_dropout) or not (0.0 <= self.ssl_dropout < 1.0):
            raise ValueError(
                f"CandidateGenConfig: ssl_dropout must be in [0, 1), got {self.ssl_dropout!r}"
            )
        if not _finite(self.label_fraction) or not (0.0 < self.label_fraction <= 1.0):
            raise ValueError(
                f"CandidateGenConfig: label_fraction must be in (0, 1], got {self.label_fraction!r}"
            )
        if self.ssl in ("rfm", "cfm") and self.item_encoder == "id_only":
            raise ValueError(
                f"CandidateGenConfig: ssl={self.ssl!r} masks item features, but item_encoder="
                "'id_only' has a single feature; use item_encoder='features' or ssl='none'/'spread_out'"
            )
        for name in (
            "use_searches",
            "use_example_age",
            "use_demographics",
            "use_continuous",
            "normalize_embeddings",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"CandidateGenConfig: {name} must be true or false, got {getattr(self, name)!r}"
                )

    @property
    def depth(self) -> int:
        """Number of ReLU layers of the user tower (0 = linear)."""
        return len(self.user_layers)

    def replace(self, **changes: Any) -> CandidateGenConfig:
        """Return a copy with `changes` applied (validated like the constructor)."""
        unknown = set(changes) - set(self.field_names())
        if unknown:
            raise ValueError(_unknown_message(unknown))
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Return the names of the configurable fields."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (tuples as lists)."""
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateGenConfig:
        """Return the config stored by `to_dict`; unknown keys are an error (typos fail loudly)."""
        if not isinstance(data, dict):
            raise TypeError(
                f"CandidateGenConfig.from_dict expects a dict, got {type(data).__name__}"
            )
        unknown = set(data) - set(cls.field_names())
        if unknown:
            raise ValueError(_unknown_message(unknown))
        return cls(**data)


def _unknown_message(unknown: set[str]) -> str:
    return (
        f"unknown candidate-generator config key(s) {sorted(unknown)}; valid keys: "
        f"{', '.join(CandidateGenConfig.field_names())}"
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"CandidateGenConfig: {name} must be an integer >= 1, got {value!r}")


def _positive_float(name: str, value: Any) -> None:
    if not _finite(value) or value <= 0:
        raise ValueError(f"CandidateGenConfig: {name} must be a finite number > 0, got {value!r}")


def _choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(
            f"CandidateGenConfig: {name} must be one of {', '.join(options)}; got {value!r}"
        )
