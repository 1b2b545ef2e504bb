"""Baselines for the deep ranker (SPEC §5): two LightGBM models and a popularity ranker.

All read the same `RankerFrame` as the deep ranker and share one interface:
`fit(train, valid) -> self`, `predict_score(frame) -> (N,)` (higher = rank first) and, where the
score is a watch time (`provides_expected_watch_time`), `predict_expected_watch_time(frame)`.

- `LightGBMWeightedRanker`: binary objective with the deep ranker's weighting (clicked rows
  weigh their watch time, others 1), so exp(raw score) is the expected watch time, as for the
  deep ranker's exp(logit).
- `LightGBMLambdaRanker`: lambdarank over pages (user, timestamp) with watch-time gain: labels
  are watch-time buckets and each label's gain is its bucket's mean watch time.
- `PopularityRanker`: score = the item's watches before t; its expected watch time is the
  training mean watch time per impression of the item's popularity bin.

LightGBM reads a flat numeric matrix (`flatten_frame`): the id codes as LightGBM categoricals,
the raw continuous features (trees need no normalization), the flags, and the watched bag
summarized by its size and how often the scored item occurs in it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np
import pandas as pd

from vidrec.features.atomic import atomic_write_json, atomic_write_text
from vidrec.features.integrity import ArtifactError, read_json_object, require_int
from vidrec.features.ranker_features import (
    CONTINUOUS_COLUMNS,
    FLAG_COLUMNS,
    RankerFrame,
    RankerVocabularies,
)
from vidrec.features.time_signals import ITEM_TIME_VALUES
from vidrec.features.vocab import NotFittedError
from vidrec.ranking.config import LightGBMConfig

#: Columns of `flatten_frame` that LightGBM treats as categorical (vocabulary codes, 0 = OOV).
CATEGORICAL_FEATURES: tuple[str, ...] = (
    "item",
    "user_language",
    "item_language",
    "channel",
    "topic",
    "source",
)
#: Numeric summaries of the watched bag.
BAG_FEATURES: tuple[str, ...] = ("bag_size", "bag_has_item")


def flatten_frame(
    frame: RankerFrame, vocabularies: RankerVocabularies, history_len: int
) -> pd.DataFrame:
    """Return the flat matrix (N, columns) LightGBM reads from a ranker frame.

    Categorical codes (int32): item, user_language, item_language, channel, topic (the item's
    first topic), source. Numeric (float32): the frame's continuous columns as they are (NaN
    allowed: CONTINUOUS_COLUMNS, then the item time signals when the frame has them),
    FLAG_COLUMNS, bag_size = min(watches before t, history_len), bag_has_item = how many of
    those last watches were of the scored item.
    """
    codes = vocabularies.encode(frame)
    rows = np.arange(len(frame))
    bag = codes.history(rows, history_len)  # (N, L)
    topics = codes.topics(rows)  # (N, T)
    out = pd.DataFrame(
        {
            "item": codes.item.astype(np.int32),
            "user_language": codes.user_language.astype(np.int32),
            "item_language": codes.item_language.astype(np.int32),
            "channel": codes.channel.astype(np.int32),
            "topic": topics[:, 0].astype(np.int32),
            "source": codes.source.astype(np.int32),
        }
    )
    for col in frame.continuous.columns:
        out[col] = frame.continuous[col].to_numpy(dtype=np.float32)
    for col in FLAG_COLUMNS:
        out[col] = frame.flags[col].to_numpy(dtype=np.float32)
    out["bag_size"] = np.minimum(frame.history_count, history_len).astype(np.float32)
    # OOV items (code 0) never count as "in the bag": 0 is also the padding code
    out["bag_has_item"] = (
        ((bag == codes.item[:, None]) & (codes.item[:, None] > 0)).sum(axis=1).astype(np.float32)
    )
    return out


def _labels(frame: RankerFrame, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not frame.has_labels:
        raise ValueError(f"{what} has no labels: build it from impressions (clicked, watch_time)")
    if len(frame) == 0:
        raise ValueError(f"{what} has 0 rows")
    return frame.labels()


def binary_training_rows(
    clicked: np.ndarray, watch_time: np.ndarray, weighting: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (rows, labels, weights) (M,) each: the weighted binary examples of a weighting.

    `rows` index the impressions. "watch_time": every impression once, clicked ones labelled 1
    with weight = watch time, the others 0 with weight 1. "watch_time_unbiased": the same plus a
    copy of every clicked impression labelled 0 with weight 1 (every impression is a negative of
    weight 1, so exp(raw score) learns E[T] rather than E[T] / (1 - P)). "click": weight 1.
    """
    n = len(clicked)
    y = (np.asarray(clicked) > 0).astype(np.int8)
    rows = np.arange(n)
    if weighting == "click":
        return rows, y, np.ones(n, dtype=np.float64)
    w = np.where(y > 0, watch_time, 1.0).astype(np.float64)
    if weighting == "watch_time":
        return rows, y, w
    pos = np.flatnonzero(y)
    return (
        np.r_[rows, pos],
        np.r_[y, np.zeros(len(pos), dtype=np.int8)],
        np.r_[w, np.ones(len(pos), dtype=np.float64)],
    )


def ideal_dcg(page: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Return each page's ideal DCG (n_pages,): its gains sorted descending, Σ g_r / log2(r + 1)."""
    order = np.lexsort((-gain, page))  # by page, then by gain descending
    p_sorted, g_sorted = page[order], gain[order]
    starts = np.r_[0, np.flatnonzero(np.diff(p_sorted)) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))  # 0-based
    return np.bincount(
        p_sorted,
        weights=g_sorted / np.log2(rank + 2),
        minlength=int(page.max()) + 1 if len(page) else 0,
    )


def relevance_labels(clicked: np.ndarray, watch_time: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Return integer relevance (N,): 0 unclicked, 1..len(edges)+1 by watch-time bucket."""
    return np.where(clicked > 0, 1 + np.searchsorted(edges, watch_time, side="right"), 0).astype(
        np.int32
    )


class _LightGBMRanker:
    """Shared parts: vocabularies, matrix, deterministic parameters, persistence."""

    kind: ClassVar[str] = ""
    provides_expected_watch_time: ClassVar[bool] = False
    vocabularies_: RankerVocabularies
    booster_: lgb.Booster
    best_iteration_: int

    def __init__(self, config: LightGBMConfig | None = None, *, history_len: int = 50) -> None:
        self.config = config if config is not None else LightGBMConfig()
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {history_len}")
        self.history_len = int(history_len)

    def _base_params(self) -> dict[str, Any]:
        c = self.config
        return {
            "learning_rate": c.learning_rate,
            "num_leaves": c.num_leaves,
            "min_data_in_leaf": c.min_data_in_leaf,
            "feature_fraction": c.feature_fraction,
            "lambda_l2": c.lambda_l2,
            "seed": c.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": c.num_threads,
            "verbose": -1,
        }

    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet. Call 'fit' with a training frame first."
            )

    def _matrix(self, frame: RankerFrame) -> pd.DataFrame:
        return flatten_frame(frame, self.vocabularies_, self.history_len)

    def _dataset(self, X: pd.DataFrame, **kw: Any) -> lgb.Dataset:
        return lgb.Dataset(
            X, categorical_feature=list(CATEGORICAL_FEATURES), free_raw_data=False, **kw
        )

    def _train(
        self, params: dict[str, Any], train_set: lgb.Dataset, valid_set: lgb.Dataset | None
    ) -> None:
        callbacks: list[Callable[..., Any]] = []
        valid_sets = []
        if valid_set is not None:
            valid_sets = [valid_set]
            callbacks.append(lgb.early_stopping(self.config.early_stopping_rounds, verbose=False))
        self.booster_ = lgb.train(
            params,
            train_set,
            num_boost_round=self.config.n_estimators,
            valid_sets=valid_sets,
            valid_names=["valid"] if valid_set is not None else None,
            callbacks=callbacks,
        )
        self.best_iteration_ = int(
            self.booster_.best_iteration or self.booster_.current_iteration()
        )

    def predict_score(self, frame: RankerFrame) -> np.ndarray:
        """Return the raw scores (N,) float64; higher ranks first."""
        self._check_fitted()
        return np.asarray(
            self.booster_.predict(
                self._matrix(frame), raw_score=True, num_iteration=self.best_iteration_
            ),
            dtype=np.float64,
        )

    def _extra(self) -> dict[str, Any]:
        return {}

    def _set_extra(self, d: dict[str, Any]) -> None:
        return None

    def save(self, directory: str | Path) -> Path:
        """Write config, vocabularies and the booster (text) to `directory`; return it."""
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            d / "baseline.json",
            {
                "kind": self.kind,
                "config": self.config.to_dict(),
                "history_len": self.history_len,
                "best_iteration": self.best_iteration_,
                **self._extra(),
            },
        )
        self.vocabularies_.save(d / "vocabularies.json")
        atomic_write_text(d / "model.txt", self.booster_.model_to_string())
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Any:
        """Return the ranker saved in `directory` by `save`.

        Everything is read as JSON or LightGBM model text (nothing is unpickled). A directory
        whose files do not belong together is refused with an `ArtifactError`: a booster
        trained on other features, a best iteration beyond its trees, or category codes that
        the saved vocabularies do not have (vocabularies.json of another run).
        """
        d = Path(directory)
        meta_path = d / "baseline.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{d} is not a saved {cls.__name__}: missing baseline.json")
        meta = read_json_object(meta_path, f"the {cls.__name__} in {d}")
        if meta.get("kind") != cls.kind:
            raise ArtifactError(
                f"{d} holds a {meta.get('kind')!r} model, not a {cls.kind!r}; load it with its own class"
            )
        try:
            config = LightGBMConfig.from_dict(meta["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"{meta_path}: no valid LightGBM config ({exc}); save the model again"
            ) from None
        history_len = require_int(meta, "history_len", meta_path, minimum=1)
        best_iteration = require_int(meta, "best_iteration", meta_path)
        vocab_path = d / "vocabularies.json"
        try:
            vocabularies = RankerVocabularies.from_dict(
                read_json_object(vocab_path, f"the vocabularies of {d}")
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(
                f"{vocab_path} is not a valid vocabulary record ({exc}); save the model again"
            ) from None
        model_path = d / "model.txt"
        try:
            text = model_path.read_text(encoding="utf-8")
            booster = lgb.Booster(model_str=text)
        except (OSError, UnicodeDecodeError, lgb.basic.LightGBMError) as exc:
            raise ArtifactError(
                f"cannot read the LightGBM model {model_path} ({exc}); save the model again"
            ) from None
        _check_booster(booster, text, vocabularies, best_iteration, model_path)
        obj = cls(config, history_len=history_len)
        obj.vocabularies_ = vocabularies
        obj.booster_ = booster
        obj.best_iteration_ = best_iteration
        try:
            obj._set_extra(meta)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"{meta_path} lacks a valid {exc} record for {cls.__name__}; save the model again"
            ) from None
        return obj


#: Which vocabulary encodes each categorical column of `flatten_frame`.
_CATEGORICAL_SPACE = {
    "item": "item",
    "user_language": "language",
    "item_language": "language",
    "channel": "channel",
    "topic": "topic",
    "source": "source",
}


def _check_booster(
    booster: lgb.Booster,
    text: str,
    vocabularies: RankerVocabularies,
    best_iteration: int,
    path: Path,
) -> None:
    """Refuse a booster that does not fit `flatten_frame`, its best iteration or vocabularies.

    LightGBM's model text lists, per feature, the categories it saw in training
    (`feature_infos=0:3:7 ...`, "none" for unused features, "[lo:hi]" for numeric ones): every
    code must exist in the saved vocabulary, else the vocabularies belong to another model.
    """
    names = list(booster.feature_name())
    # the frame's continuous columns: CONTINUOUS_COLUMNS, the items' continuous extra columns
    # ("item.<column>") and the item time signals, when the data and config have them
    tail = len(FLAG_COLUMNS) + len(BAG_FEATURES)
    added = names[len(CATEGORICAL_FEATURES) + len(CONTINUOUS_COLUMNS) : len(names) - tail]
    n_time = len(ITEM_TIME_VALUES)
    timed = len(added) >= n_time and added[len(added) - n_time :] == list(ITEM_TIME_VALUES)
    extras = [c for c in added[: len(added) - n_time * timed] if c.startswith("item.")]
    continuous = [*CONTINUOUS_COLUMNS, *extras, *(ITEM_TIME_VALUES if timed else ())]
    expected = [*CATEGORICAL_FEATURES, *continuous, *FLAG_COLUMNS, *BAG_FEATURES]
    if names != expected:
        raise ArtifactError(
            f"{path} was trained on the features {names}, but this version builds {expected}; "
            "retrain the LightGBM baseline"
        )
    n_iter = booster.current_iteration()
    if best_iteration > n_iter:
        raise ArtifactError(
            f"{path} has {n_iter} boosting iterations but baseline.json says the best is "
            f"{best_iteration}; the two files come from different models: save it again"
        )
    header = text.split("\nTree=", 1)[0]
    infos = next(
        (
            ln.split("=", 1)[1].split(" ")
            for ln in header.splitlines()
            if ln.startswith("feature_infos=")
        ),
        None,
    )
    if infos is None or len(infos) != len(names):
        raise ArtifactError(f"{path} has no feature_infos line for its {len(names)} features")
    sizes = vocabularies.sizes()
    for name, info in zip(names, infos, strict=True):
        space = _CATEGORICAL_SPACE.get(name)
        if space is None or info == "none" or info.startswith("["):
            continue
        top = max(int(v) for v in info.split(":"))
        if top >= sizes[space]:
            raise ArtifactError(
                f"{path} was trained on {name} codes up to {top}, but vocabularies.json has "
                f"{sizes[space]} {space} codes (0..{sizes[space] - 1}): the vocabularies come "
                "from another run; restore the vocabularies.json saved with this model"
            )


class LightGBMWeightedRanker(_LightGBMRanker):
    """LightGBM binary classifier with watch-time weights; exp(raw score) = expected watch time."""

    kind = "lightgbm_weighted"
    provides_expected_watch_time = True

    def fit(self, train: RankerFrame, valid: RankerFrame | None = None) -> LightGBMWeightedRanker:
        """Fit on `train` (early stopping on `valid`'s weighted log loss when given); return self."""
        clicked, wt = _labels(train, "train frame")
        self.vocabularies_ = RankerVocabularies.fit(
            train, top_n=self.config.vocab_top_n, history_len=self.history_len
        )
        params = {**self._base_params(), "objective": "binary", "metric": "binary_logloss"}
        rows, y, w = binary_training_rows(clicked, wt, self.config.weighting)
        train_set = self._dataset(self._matrix(train).iloc[rows], label=y, weight=w)
        valid_set = None
        if valid is not None:
            v_clicked, v_wt = _labels(valid, "valid frame")
            v_rows, v_y, v_w = binary_training_rows(v_clicked, v_wt, self.config.weighting)
            valid_set = self._dataset(
                self._matrix(valid).iloc[v_rows], label=v_y, weight=v_w, reference=train_set
            )
        self._train(params, train_set, valid_set)
        return self

    def predict_expected_watch_time(self, frame: RankerFrame) -> np.ndarray:
        """Return exp(raw score) (N,): the expected watch time (the click odds for weighting="click")."""
        return np.exp(self.predict_score(frame))


class LightGBMLambdaRanker(_LightGBMRanker):
    """LightGBM lambdarank over pages (user, timestamp) with watch-time gain.

    Relevance: unclicked 0; clicked 1..K by the training clicks' watch-time quantiles
    (K = config.relevance_buckets, fewer when watch times tie); label_gain[k] = mean training
    watch time of bucket k (0 for unclicked), so NDCG's gain is approximately the watch time.
    With config.page_weighted (default) each page's rows weigh the page's ideal DCG and
    LightGBM's per-page lambda normalization is off: the objective becomes DCG, in which a page
    with a long watch counts more than a page with a short one (see LightGBMConfig).
    """

    kind = "lightgbm_lambdarank"
    provides_expected_watch_time = False

    def fit(self, train: RankerFrame, valid: RankerFrame | None = None) -> LightGBMLambdaRanker:
        """Fit on `train` (early stopping on `valid`'s NDCG@ndcg_at when given); return self."""
        clicked, wt = _labels(train, "train frame")
        pos = wt[clicked > 0]
        if len(pos) == 0:
            raise ValueError(
                "train frame has no clicked rows; lambdarank needs some relevant items"
            )
        k = self.config.relevance_buckets
        self.edges_ = np.unique(np.quantile(pos, np.arange(1, k) / k)) if k > 1 else np.zeros(0)
        labels = relevance_labels(clicked, wt, self.edges_)
        means = [0.0]
        for b in range(1, len(self.edges_) + 2):
            in_b = wt[(labels == b)]
            means.append(float(in_b.mean()) if len(in_b) else means[-1])
        # gains must not decrease with the label; a tiny step keeps equal buckets ordered
        gains = np.maximum.accumulate(np.asarray(means))
        self.label_gain_ = (gains + 1e-6 * np.arange(len(gains))).tolist()
        self.vocabularies_ = RankerVocabularies.fit(
            train, top_n=self.config.vocab_top_n, history_len=self.history_len
        )
        params = {
            **self._base_params(),
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [self.config.ndcg_at],
            "label_gain": self.label_gain_,
            "lambdarank_norm": not self.config.page_weighted,
        }
        train_set = self._grouped(train, labels)
        valid_set = None
        if valid is not None:
            v_clicked, v_wt = _labels(valid, "valid frame")
            valid_set = self._grouped(
                valid, relevance_labels(v_clicked, v_wt, self.edges_), reference=train_set
            )
        self._train(params, train_set, valid_set)
        return self

    def _grouped(self, frame: RankerFrame, labels: np.ndarray, **kw: Any) -> lgb.Dataset:
        """Return a Dataset with the rows of each page contiguous (lambdarank's query groups)."""
        page = frame.page_ids()
        order = np.argsort(page, kind="stable")
        sizes = np.bincount(page)
        X = self._matrix(frame).iloc[order].reset_index(drop=True)
        if self.config.page_weighted:
            gain = np.asarray(self.label_gain_)[labels]
            kw["weight"] = ideal_dcg(page, gain)[page][order]  # pages without clicks weigh 0
        return self._dataset(X, label=labels[order], group=sizes[sizes > 0], **kw)

    def _extra(self) -> dict[str, Any]:
        return {"edges": self.edges_.tolist(), "label_gain": self.label_gain_}

    def _set_extra(self, d: dict[str, Any]) -> None:
        self.edges_ = np.asarray(d["edges"], dtype=np.float64)
        self.label_gain_ = list(d["label_gain"])


class PopularityRanker:
    """Ranks by the item's popularity so far (watches before t); no personalization.

    Expected watch time: the training mean watch time per impression of the row's popularity
    bin (n_bins quantile bins of `item_popularity`), a calibrated non-personal baseline.
    """

    kind: ClassVar[str] = "popularity"
    provides_expected_watch_time: ClassVar[bool] = True

    def __init__(self, n_bins: int = 10) -> None:
        if n_bins < 1:
            raise ValueError(f"PopularityRanker: n_bins must be >= 1, got {n_bins}")
        self.n_bins = int(n_bins)

    def fit(self, train: RankerFrame, valid: RankerFrame | None = None) -> PopularityRanker:
        """Learn the popularity bins' mean watch time per impression on `train`; return self.

        `valid` is accepted for the common interface and not used (nothing to early-stop).
        """
        _, wt = _labels(train, "train frame")
        pop = train.continuous["item_popularity"].to_numpy(dtype=np.float64)
        self.edges_ = np.unique(np.quantile(pop, np.arange(1, self.n_bins) / self.n_bins))
        b = np.searchsorted(self.edges_, pop, side="right")
        n_b = len(self.edges_) + 1
        counts = np.bincount(b, minlength=n_b)
        sums = np.bincount(b, weights=wt, minlength=n_b)
        overall = float(wt.mean())
        self.bin_watch_time_ = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "edges_"):
            raise NotFittedError(
                "This PopularityRanker is not fitted yet. Call 'fit' with a training frame first."
            )

    def predict_score(self, frame: RankerFrame) -> np.ndarray:
        """Return the item's watches before t (N,) float64."""
        return frame.continuous["item_popularity"].to_numpy(dtype=np.float64).copy()

    def predict_expected_watch_time(self, frame: RankerFrame) -> np.ndarray:
        """Return the training mean watch time per impression of each row's popularity bin (N,)."""
        self._check_fitted()
        b = np.searchsorted(
            self.edges_,
            frame.continuous["item_popularity"].to_numpy(dtype=np.float64),
            side="right",
        )
        return self.bin_watch_time_[b].astype(np.float64)

    def save(self, directory: str | Path) -> Path:
        """Write the bins to `directory`/baseline.json; return the directory."""
        self._check_fitted()
        d = Path(directory)
        atomic_write_json(
            d / "baseline.json",
            {
                "kind": self.kind,
                "n_bins": self.n_bins,
                "edges": self.edges_.tolist(),
                "bin_watch_time": self.bin_watch_time_.tolist(),
            },
        )
        return d

    @classmethod
    def load(cls, directory: str | Path) -> PopularityRanker:
        """Return the ranker saved in `directory` by `save`."""
        path = Path(directory) / "baseline.json"
        if not path.exists():
            raise FileNotFoundError(
                f"{directory} is not a saved PopularityRanker: missing baseline.json"
            )
        meta = read_json_object(path, f"the PopularityRanker in {directory}")
        if meta.get("kind") != cls.kind:
            raise ArtifactError(
                f"{directory} holds a {meta.get('kind')!r} model, not a 'popularity' one"
            )
        obj = cls(require_int(meta, "n_bins", path, minimum=1))
        try:
            edges = np.asarray(meta["edges"], dtype=np.float64)
            bins = np.asarray(meta["bin_watch_time"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: no valid bins ({exc}); fit and save it again") from None
        if edges.ndim != 1 or bins.shape != (len(edges) + 1,) or (np.diff(edges) < 0).any():
            raise ArtifactError(
                f"{path}: {len(edges)} edges need {len(edges) + 1} bin watch times in ascending "
                f"bins, got shape {bins.shape}; fit and save it again"
            )
        obj.edges_, obj.bin_watch_time_ = edges, bins
        return obj
