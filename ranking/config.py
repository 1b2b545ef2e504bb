"""Frozen configurations of the ranking stage: the deep ranker and the LightGBM baselines.

They are saved as JSON inside every checkpoint and trained artifact (`to_dict` / `from_dict`), so
a model always travels with the settings that produced it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from vidrec.ranking.calibration import METHODS as CALIBRATION_METHODS

Weighting = Literal["watch_time", "watch_time_unbiased", "click"]
WEIGHTINGS: tuple[str, ...] = ("watch_time", "watch_time_unbiased", "click")


def _from_dict(cls: type, d: dict[str, Any], what: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**d)


def _check_weighting(weighting: str, what: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"{what}.weighting must be one of {WEIGHTINGS}, got {weighting!r}")


@dataclass(frozen=True)
class RankerConfig:
    """Settings of the deep weighted-logistic ranker (SPEC §5).

    hidden             ReLU tower widths, e.g. (1024, 512, 256); () = no hidden layer (a
                       logistic regression over embeddings and normalized features)
    weighting          "watch_time": positives weighted by watch time, unclicked negatives by 1
                       (YT16; the odds learn E[T]/(1 - P), which overshoots E[T] by the click
                       rate P); "watch_time_unbiased": clicked impressions are positives weighted
                       by watch time AND every impression is a negative of weight 1, so the
                       odds learn E[T] itself; "click": every impression weight 1 (click-only)
    use_continuous     False drops the normalized continuous features and their flags (ablation)
    continuous_powers  feed x~, x~^2, sqrt(x~) (True) or x~ alone (False)
    history_len        watched-bag size N
    vocab_top_n        top-N most frequent values kept per id space (None = all)
    embedding_scale / max_embedding_width   width = clip(round(scale * log2(vocab size)), 4, max)
    n_quantiles        quantiles of the continuous features' training CDF
    dropout            probability of dropping each hidden unit while training (0 = off)
    calibrate          after training, fit a `WatchTimeCalibrator` (ranking.calibration) on the
                       validation frame: a strictly increasing map of the logit, so the expected
                       watch time's level is corrected and no page's order changes (ignored
                       for weighting="click", whose exp(logit) is the click odds)
    calibrator         the calibrator's method: "two_part" (click rate by pooled bins x watch
                       time per click by a smooth increasing Poisson curve) or "binned" (pooled
                       bins of the watch time itself); see ranking.calibration
    lr, weight_decay   Adam step size and L2 penalty
    epochs, batch_size, patience   training length; stop after `patience` epochs without a better
                       validation weighted log loss and keep the best epoch's weights
    seed               drives initialisation and the batch order
    time_windows       windows (s) of the item time signals the ranker's frames carry
                       (`features.ranker_features.build_ranker_frame(time_windows=...)`),
                       () without; `TrainedRanker.score_items` builds its frames with them
    device             "cpu", "cuda", "cuda:N" or "auto" (cuda when available)
    """

    hidden: tuple[int, ...] = (1024, 512, 256)
    weighting: Weighting = "watch_time"
    use_continuous: bool = True
    continuous_powers: bool = True
    history_len: int = 50
    vocab_top_n: int | None = 100_000
    embedding_scale: float = 6.0
    max_embedding_width: int = 64
    n_quantiles: int = 1000
    dropout: float = 0.0
    calibrate: bool = False
    calibrator: str = "two_part"
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 1024
    patience: int = 2
    seed: int = 0
    device: str = "cpu"
    time_windows: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "time_windows", tuple(int(w) for w in self.time_windows))
        if any(w < 1 for w in self.time_windows):
            raise ValueError(
                f"RankerConfig.time_windows must be seconds >= 1, got {list(self.time_windows)}"
            )
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"RankerConfig.hidden widths must be >= 1, got {list(self.hidden)}")
        _check_weighting(self.weighting, "RankerConfig")
        positive = {
            "history_len": self.history_len,
            "max_embedding_width": self.max_embedding_width,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "patience": self.patience,
        }
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"RankerConfig.{name} must be >= 1, got {value}")
        if self.vocab_top_n is not None and self.vocab_top_n < 1:
            raise ValueError(
                f"RankerConfig.vocab_top_n must be >= 1 or None, got {self.vocab_top_n}"
            )
        if self.n_quantiles < 2:
            raise ValueError(f"RankerConfig.n_quantiles must be >= 2, got {self.n_quantiles}")
        if not self.lr > 0 or self.weight_decay < 0 or not self.embedding_scale > 0:
            raise ValueError(
                "RankerConfig: lr and embedding_scale must be > 0 and weight_decay >= 0, got "
                f"lr={self.lr}, embedding_scale={self.embedding_scale}, weight_decay={self.weight_decay}"
            )
        if self.calibrator not in CALIBRATION_METHODS:
            raise ValueError(
                f"RankerConfig.calibrator must be one of {CALIBRATION_METHODS}, got "
                f"{self.calibrator!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RankerConfig.dropout must be in [0, 1), got {self.dropout}")
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ValueError(
                f"RankerConfig.device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dict."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["time_windows"] = list(self.time_windows)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankerConfig:
        """Return the config stored by `to_dict` (unknown fields are refused)."""
        return _from_dict(cls, d, "RankerConfig")


@dataclass(frozen=True)
class LightGBMConfig:
    """Settings of the LightGBM baselines (weighted binary and lambdarank).

    weighting          as RankerConfig.weighting (the binary model's sample weights)
    relevance_buckets  lambdarank: clicked impressions get labels 1..K by training watch-time
                       quantiles, unclicked 0; each label's gain is its bucket's mean watch time
    ndcg_at            lambdarank: the NDCG cut-off monitored for early stopping
    page_weighted      lambdarank: weight every page by its ideal DCG and turn LightGBM's
                       per-page lambda normalization off, so the objective is DCG with watch-time
                       gain. Plain NDCG (False) rescales each page to [0, 1]: a page whose click
                       was watched 10 s counts as much as one watched 300 s, which favours
                       often-clicked click-bait over long watches.
    vocab_top_n        categorical codes kept per id space (rest -> 0)
    num_threads        explicit thread count (with deterministic=True results repeat exactly)
    """

    weighting: Weighting = "watch_time"
    num_leaves: int = 63
    learning_rate: float = 0.05
    n_estimators: int = 500
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.9
    lambda_l2: float = 1.0
    early_stopping_rounds: int = 30
    relevance_buckets: int = 8
    ndcg_at: int = 10
    page_weighted: bool = True
    vocab_top_n: int | None = 10_000
    num_threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _check_weighting(self.weighting, "LightGBMConfig")
        for name in (
            "num_leaves",
            "n_estimators",
            "min_data_in_leaf",
            "early_stopping_rounds",
            "relevance_buckets",
            "ndcg_at",
            "num_threads",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LightGBMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_leaves < 2:
            raise ValueError(f"LightGBMConfig.num_leaves must be >= 2, got {self.num_leaves}")
        if not self.learning_rate > 0 or not 0 < self.feature_fraction <= 1 or self.lambda_l2 < 0:
            raise ValueError(
                "LightGBMConfig: learning_rate must be > 0, feature_fraction in (0, 1], lambda_l2 >= 0"
            )
        if self.vocab_top_n is not None and self.vocab_top_n < 1:
            raise ValueError(
                f"LightGBMConfig.vocab_top_n must be >= 1 or None, got {self.vocab_top_n}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LightGBMConfig:
        """Return the config stored by `to_dict` (unknown fields are refused)."""
        return _from_dict(cls, d, "LightGBMConfig")
