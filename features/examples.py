"""Candidate-generation examples: user-side features with rollback, and item-side feature codes.

Where this sits: contract tables (`features.tables.Dataset`) + a `features.split.TimeSplit` ->
`CandidateFeaturizer` (vocabularies, duration buckets, quantile normalizer, all fitted on the
train window) -> `CandidateExamples` (training / validation labels), `UserFeatures` (serving)
and `ItemFeatures` (every catalog item) -> `candidate_gen` towers.

Rollback (SPEC §2, [YT16] Fig. 5b): the label is watch i of a user; its features use only that
user's events with a timestamp strictly before watch i's timestamp. Events at the same second
as the label are excluded too, even when they come earlier in the file, because their order
within a second is not known.

Time of the item side: an item's only time-dependent feature is its upload-age bucket. Serving
takes it at the request time; a training example takes it at the example's own (label) time,
as example age is taken [YT16 §3.3], and an item uploaded after that time is not servable to
that example (`ItemFeatures.upload_time` / `at_time`; the trainer applies both per row).
With `time_signals`, the item's recent popularity is time-dependent as well (watches in recent
windows, time since its first watch, trend; `features.time_signals`): taken at the request
time when serving and at each example's own time in training (`ItemFeatures.time_table`, the
codes of every (item, grid time) of the training and validation windows), from watches
strictly before that time; and the user side gets the time since the user's previous watch.

User attributes: the contract's categorical columns and the users table's extra columns, as
validation typed them (`features.tables.extra_columns`): categorical ones get a vocabulary each
(frequency floor `min_category_count` over the users active in the train window, OOV code 0),
continuous ones join the quantile-normalized continuous features, and multi-valued ones share
one bag of `column=value` codes (`UserFeatures.tags`, mean-pooled by the user tower). Each is
read as the same value at every example time. The table
must therefore hold attributes known before the examples (demographics, a sign-up date), not
snapshots taken at the end of the log: a follower count or activity level measured at the end
of collection encodes the activity that comes after an early example (see
`features.sources.kuairand`, which leaves such columns out by default).

Everything is built in bulk: events are sorted by (user, time) once, "how many events of this
user come strictly before time t" is a merge of two sorted sequences (`np.lexsort` + a
cumulative count), and the last-50 bags are gathered with index arithmetic into padded arrays.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec.features.atomic import atomic_write_json
from vidrec.features.normalize import QuantileNormalizer
from vidrec.features.split import TimeSplit
from vidrec.features.tables import USER_CATEGORICAL, Dataset, extra_columns
from vidrec.features.text import tokens_flat
from vidrec.features.time_signals import (
    ITEM_TIME_CODES,
    NEVER_SECONDS,
    ItemTimeSignals,
    ItemTimeTable,
    since_previous,
)
from vidrec.features.vocab import IdVocabulary, NotFittedError

SECONDS_PER_DAY = 86_400.0

# Upload-age buckets (days since upload at the reference time). Code 1 = uploaded after the
# reference time; codes 2.. = [0, 1), [1, 3), [3, 7), [7, 14), [14, 30), [30, 90), [90, 365),
# [365, inf) days. Fixed edges: freshness matters on a log-like scale whatever the source.
UPLOAD_AGE_EDGES_DAYS: tuple[float, ...] = (1.0, 3.0, 7.0, 14.0, 30.0, 90.0, 365.0)
# the same edges in seconds (whole numbers), for ages measured in seconds
UPLOAD_AGE_EDGES_S: tuple[int, ...] = tuple(int(d * SECONDS_PER_DAY) for d in UPLOAD_AGE_EDGES_DAYS)
UPLOAD_AGE_FUTURE = 1  # the code of an item not uploaded yet at the reference time
N_UPLOAD_AGE_CODES = len(UPLOAD_AGE_EDGES_DAYS) + 3  # 0 unused, 1 = future, 2.. = ages

ACTIVITY_FEATURES: tuple[str, ...] = (
    "n_watches_before",  # watches strictly before the example time
    "n_searches_before",  # searches strictly before the example time
    "days_since_first_event",  # example time - the user's first watch or search (0 if none)
)

# with time_signals: the time since the user's previous watch strictly before the example time
# (a user without one gets NEVER_SECONDS, i.e. the top quantile: "long ago")
RECENCY_FEATURES: tuple[str, ...] = ("days_since_previous_watch",)

ITEM_CATEGORICAL_FEATURES: tuple[str, ...] = ("channel_id", "language")



def upload_age_codes(age_seconds: np.ndarray | int) -> np.ndarray:
    """Return the upload-age bucket code (int32) of each age in seconds (reference time minus
    upload time): `UPLOAD_AGE_FUTURE` (1) when negative (not uploaded yet), else 2 + the number
    of `UPLOAD_AGE_EDGES_S` at or below the age."""
    age = np.asarray(age_seconds, dtype=np.int64)
    codes = 2 + np.searchsorted(np.asarray(UPLOAD_AGE_EDGES_S, dtype=np.int64), age, side="right")
    return np.where(age < 0, UPLOAD_AGE_FUTURE, codes).astype(np.int32)


# Rows processed per chunk when gathering padded bags, to bound temporary (rows, width) arrays.
_CHUNK = 1 << 17


# ----------------------------------------------------------------------------- containers


@dataclass
class UserFeatures:
    """User-side inputs of the candidate generator, one row per (user, time) query.

    Bags are left-aligned, padded with 0 (0 is also the OOV code; towers mask code 0).
    """

    user_id: np.ndarray  # (N,) int64 raw user ids
    history: np.ndarray  # (N, L) int32 item codes of the last <= L watches, oldest first
    history_len: np.ndarray  # (N,) int32 filled slots of `history` (OOV items included)
    search_tokens: np.ndarray  # (N, S) int32 token codes of the last searches (OOV dropped)
    search_len: np.ndarray  # (N,) int32 filled slots of `search_tokens`
    categorical: np.ndarray  # (N, C) int32 codes of the user's categorical attributes
    continuous: np.ndarray  # (N, 3K) float32 [x~, x~^2, sqrt x~] of K continuous features
    example_age: np.ndarray  # (N, 3) float32 [a, a^2, sqrt a], a = normalized example age
    # (N, T) int32 codes of the user's multi-valued attributes ("column=value"), 0 = pad/OOV;
    # T = 0 when the users table has no multi-valued column
    tags: np.ndarray

    def __len__(self) -> int:
        return int(len(self.user_id))

    def take(self, index: np.ndarray) -> UserFeatures:
        """Return the rows at `index` (integer or boolean array)."""
        return UserFeatures(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def with_example_age(self, value: float = 0.0) -> UserFeatures:
        """Return a copy whose example age is `value` (normalized units) for every row."""
        a = np.full(len(self), float(np.clip(value, 0.0, 1.0)), dtype=np.float32)
        age = np.stack([a, a * a, np.sqrt(a)], axis=1)
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["example_age"] = age
        return UserFeatures(**data)


@dataclass
class CandidateExamples:
    """Next-watch training/evaluation examples: user features + the watched (label) item."""

    features: UserFeatures
    label_item: np.ndarray  # (N,) int64 raw item id watched at `timestamp`
    label_code: np.ndarray  # (N,) int64 item-vocabulary code of the label (0 = OOV)
    timestamp: np.ndarray  # (N,) int64 label time (UTC s)
    featurizer: CandidateFeaturizer
    window: tuple[int, int]  # [lo, hi) label time window
    n_labels_in_window: int  # labels before the per-user cap
    n_dropped_by_cap: int  # labels removed by `max_examples_per_user`

    def __len__(self) -> int:
        return int(len(self.label_item))

    @property
    def user_id(self) -> np.ndarray:
        """(N,) raw user id of each example."""
        return self.features.user_id

    def take(self, index: np.ndarray) -> CandidateExamples:
        """Return the examples at `index` (integer or boolean array)."""
        idx = np.asarray(index)
        n = int(idx.sum()) if idx.dtype == bool else int(len(idx))
        return CandidateExamples(
            features=self.features.take(idx),
            label_item=self.label_item[idx],
            label_code=self.label_code[idx],
            timestamp=self.timestamp[idx],
            featurizer=self.featurizer,
            window=self.window,
            n_labels_in_window=n,
            n_dropped_by_cap=0,
        )


@dataclass
class ItemFeatures:
    """Feature codes for every catalog item (seen in training or not), for the item tower."""

    item_id: np.ndarray  # (N,) int64 raw item ids, in catalog order
    single: np.ndarray  # (N, Fs) int32 codes of single-valued features, see `single_names`
    topics: np.ndarray  # (N, T) int32 topic codes, left-aligned, 0 = pad/OOV (T may be 0)
    single_names: tuple[str, ...]
    single_cardinalities: tuple[int, ...]  # embedding rows per single-valued feature
    topic_cardinality: int  # embedding rows for topics (0 = no topics feature)
    reference_time: int  # time the upload-age buckets were computed at
    # (N,) int64 upload time of each item (UTC s): lets a trainer take the upload-age bucket
    # at each example's own time (`at_time`) and keep items not uploaded yet out of it; None
    # for hand-built catalogs and catalogs saved without it (then used as they are)
    upload_time: np.ndarray | None = None
    # item time-signal codes of every item at each grid time of the training and validation
    # windows (`features.time_signals`), so a trainer takes them at each example's own time;
    # None without time signals or for a serving snapshot (then the codes in `single`, taken
    # at `reference_time`, are used as they are). Never saved (`to_arrays`): it is rebuilt
    # from the logs
    time_table: ItemTimeTable | None = None

    def __len__(self) -> int:
        return int(len(self.item_id))

    @property
    def age_column(self) -> int | None:
        """Column of "upload_age_bucket" in `single` (None when the catalog has none)."""
        names = self.single_names
        return names.index("upload_age_bucket") if "upload_age_bucket" in names else None

    @property
    def time_columns(self) -> tuple[int, ...]:
        """Columns of the item time-signal codes in `single` (`ITEM_TIME_CODES` order; empty
        without time signals)."""
        names = self.single_names
        return tuple(names.index(c) for c in ITEM_TIME_CODES if c in names)

    def servable_at(self, time: int) -> np.ndarray:
        """Return the (N,) bool mask of the items uploaded at or before `time` (all of them
        when the catalog carries no upload times)."""
        if self.upload_time is None:
            return np.ones(len(self), dtype=bool)
        return self.upload_time <= int(time)

    def take(self, index: np.ndarray) -> ItemFeatures:
        """Return the items at catalog rows `index` (integer or boolean array)."""
        return dataclasses.replace(
            self,
            item_id=self.item_id[index],
            single=self.single[index],
            topics=self.topics[index],
            upload_time=None if self.upload_time is None else self.upload_time[index],
            time_table=None if self.time_table is None else self.time_table.take(index),
        )

    def at_time(self, reference_time: int) -> ItemFeatures:
        """Return a copy whose upload-age buckets are taken at `reference_time`: exactly what
        `CandidateFeaturizer.item_features(catalog, reference_time)` gives for these items."""
        col = self.age_column
        if self.upload_time is None or col is None:
            raise ValueError(
                "these item features carry no upload times or no upload-age bucket; build them "
                "with CandidateFeaturizer.item_features(catalog, reference_time) instead"
            )
        single = self.single.copy()
        single[:, col] = upload_age_codes(int(reference_time) - self.upload_time)
        time_cols = self.time_columns
        if time_cols:
            if self.time_table is None:
                raise ValueError(
                    "these item features carry time-signal codes but no time table; build "
                    "them with CandidateFeaturizer.item_features(dataset, reference_time) instead"
                )
            k = self.time_table.position(int(reference_time))
            single[:, list(time_cols)] = self.time_table.codes[:, k, :]
        return dataclasses.replace(self, single=single, reference_time=int(reference_time))

    @property
    def has_topics(self) -> bool:
        """Whether the catalog has a topics feature."""
        return self.topic_cardinality > 0

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Item-tower feature order: the single-valued features, then "topics" if present."""
        return self.single_names + (("topics",) if self.has_topics else ())

    def codes(self) -> np.ndarray:
        """Return (N, F) int64 codes, one column per item-tower feature (for mutual information).

        The multi-valued topics feature is represented by its first topic (0 when none).
        """
        cols = [self.single.astype(np.int64)]
        if self.has_topics:
            first = self.topics[:, 0] if self.topics.shape[1] else np.zeros(len(self), np.int32)
            cols.append(first.astype(np.int64)[:, None])
        return np.concatenate(cols, axis=1)

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Return the catalog row of each raw item id (-1 where the item is not in the catalog)."""
        return pd.Index(self.item_id).get_indexer(np.asarray(item_ids, dtype=np.int64))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Return the arrays and metadata as a dict of numpy arrays (for `np.savez`)."""
        return {
            "item_id": self.item_id,
            "single": self.single,
            "topics": self.topics,
            "single_names": np.asarray(self.single_names, dtype=str),
            "single_cardinalities": np.asarray(self.single_cardinalities, dtype=np.int64),
            "topic_cardinality": np.asarray(self.topic_cardinality, dtype=np.int64),
            "reference_time": np.asarray(self.reference_time, dtype=np.int64),
            **({} if self.upload_time is None else {"upload_time": self.upload_time}),
        }

    @classmethod
    def from_arrays(cls, arrays: Any) -> ItemFeatures:
        """Return the item features stored by `to_arrays` (a dict or an `np.load` result)."""
        return cls(
            item_id=np.asarray(arrays["item_id"], dtype=np.int64),
            single=np.asarray(arrays["single"], dtype=np.int32),
            topics=np.asarray(arrays["topics"], dtype=np.int32),
            single_names=tuple(str(s) for s in arrays["single_names"]),
            single_cardinalities=tuple(int(c) for c in arrays["single_cardinalities"]),
            topic_cardinality=int(arrays["topic_cardinality"]),
            reference_time=int(arrays["reference_time"]),
            upload_time=(
                np.asarray(arrays["upload_time"], dtype=np.int64)
                if "upload_time" in arrays
                else None
            ),
        )


# ----------------------------------------------------------------------------- featurizer


class CandidateFeaturizer:
    """Fits vocabularies/normalizers on the train window; builds examples, serving and item features.

    Parameters
    ----------
    max_history: watched items per bag (the last <= this many watches).
    max_searches: search queries per bag (the last <= this many searches).
    max_search_tokens: tokens per search bag (the most recent tokens win; OOV tokens dropped).
    max_topics: topics kept per item (the first ones listed).
    min_item_count: training watches an item needs to get its own id code (else OOV).
    min_token_count: training occurrences a query token needs (else dropped as OOV).
    min_category_count: rows a categorical value needs (user and item attributes).
    n_duration_buckets: item duration buckets (quantiles of the train-window catalog).
    n_quantiles: quantiles of the continuous-feature normalizer.
    time_signals: item popularity as of each example / request time (watches in recent
        windows, time since the first watch, trend: `features.time_signals`) as item-tower
        codes, and the time since the user's previous watch as a user continuous feature.
    """

    def __init__(
        self,
        max_history: int = 50,
        max_searches: int = 50,
        max_search_tokens: int = 64,
        max_topics: int = 8,
        min_item_count: int = 1,
        min_token_count: int = 2,
        min_category_count: int = 1,
        n_duration_buckets: int = 10,
        n_quantiles: int = 1000,
        time_signals: bool = False,
    ) -> None:
        for name, value, low in (
            ("max_history", max_history, 1),
            ("max_searches", max_searches, 1),
            ("max_search_tokens", max_search_tokens, 1),
            ("max_topics", max_topics, 1),
            ("min_item_count", min_item_count, 1),
            ("min_token_count", min_token_count, 1),
            ("min_category_count", min_category_count, 1),
            ("n_duration_buckets", n_duration_buckets, 1),
            ("n_quantiles", n_quantiles, 2),
        ):
            if not isinstance(value, int | np.integer) or value < low:
                raise ValueError(
                    f"CandidateFeaturizer: {name} must be an integer >= {low}, got {value!r}"
                )
        self.max_history = int(max_history)
        self.max_searches = int(max_searches)
        self.max_search_tokens = int(max_search_tokens)
        self.max_topics = int(max_topics)
        self.min_item_count = int(min_item_count)
        self.min_token_count = int(min_token_count)
        self.min_category_count = int(min_category_count)
        self.n_duration_buckets = int(n_duration_buckets)
        self.n_quantiles = int(n_quantiles)
        if not isinstance(time_signals, bool | np.bool_):
            raise ValueError(
                f"CandidateFeaturizer: time_signals must be true or false, got {time_signals!r}"
            )
        self.time_signals = bool(time_signals)

    # ------------------------------------------------------------------ fit
    def fit(self, dataset: Dataset, split: TimeSplit) -> CandidateFeaturizer:
        """Learn every vocabulary, bucket edge and normalizer from the train window; returns self."""
        _require(dataset.watches, "watches", ("user_id", "item_id", "timestamp"))
        _require(dataset.items, "items", ("item_id", "upload_time"))
        _require(dataset.users, "users", ("user_id",))
        lo, hi = split.bounds("train")
        self.split_ = split
        self.reference_time_ = int(split.train_end)
        self.train_days_ = (split.train_end - split.start) / SECONDS_PER_DAY  # > 0 by TimeSplit

        watches = dataset.watches
        wt = watches["timestamp"].to_numpy()
        train_watches = watches.loc[(wt >= lo) & (wt < hi)]
        if len(train_watches) == 0:
            raise ValueError(
                f"the train window [{lo}, {hi}) holds no watches; choose a later train_end"
            )
        self.item_vocab_ = IdVocabulary(min_count=self.min_item_count, name="item_id").fit(
            train_watches["item_id"].to_numpy()
        )

        searches = dataset.searches
        self.use_searches_ = searches is not None and len(searches) > 0
        train_queries = pd.Series([], dtype="object")
        if searches is not None and len(searches) > 0:
            _require(searches, "searches", ("user_id", "timestamp", "query"))
            st = searches["timestamp"].to_numpy()
            train_queries = searches.loc[(st >= lo) & (st < hi), "query"]
        _, train_tokens = tokens_flat(train_queries)
        self.token_vocab_ = IdVocabulary(min_count=self.min_token_count, name="query_token").fit(
            train_tokens.astype(str)
        )

        # Static user attributes, counted over the users active in the train window.
        users = dataset.users
        active = users.loc[users["user_id"].isin(train_watches["user_id"].unique())]
        user_extras = extra_columns(dataset, "users")
        self.user_categorical_ = tuple(c for c in USER_CATEGORICAL if c in users.columns) + tuple(
            c for c, kind in user_extras.items() if kind == "categorical"
        )
        self.user_vocabs_ = {
            c: IdVocabulary(min_count=self.min_category_count, name=f"user.{c}").fit(
                active[c].astype("string").to_numpy(dtype=object, na_value=None)
            )
            for c in self.user_categorical_
        }
        self.user_numeric_ = tuple(c for c, kind in user_extras.items() if kind == "continuous")
        self.user_multi_ = tuple(c for c, kind in user_extras.items() if kind == "multi")
        self.user_tag_vocab_ = IdVocabulary(min_count=self.min_category_count, name="user.tags")
        self.user_tag_vocab_.fit(_tag_values(active, self.user_multi_))

        # Item attributes, from the catalog known at the end of the train window.
        items = dataset.items
        known = items.loc[items["upload_time"].to_numpy() < hi]
        item_extras = extra_columns(dataset, "items")
        self.item_categorical_ = tuple(
            c for c in ITEM_CATEGORICAL_FEATURES if c in items.columns
        ) + tuple(c for c, kind in item_extras.items() if kind == "categorical")
        self.item_vocabs_ = {
            c: IdVocabulary(min_count=self.min_category_count, name=f"item.{c}").fit(
                known[c].astype("string").to_numpy(dtype=object, na_value=None)
            )
            for c in self.item_categorical_
        }
        # the item's bag: its topics, then the values of multi-valued extra columns as
        # "column=value" (one vocabulary, one mean-pooled embedding in the item tower)
        self.item_topics_ = "topics" in items.columns
        self.item_multi_ = tuple(c for c, kind in item_extras.items() if kind == "multi")
        self.has_topics_ = self.item_topics_ or bool(self.item_multi_)
        if self.has_topics_:
            flat = known["topics"].explode() if self.item_topics_ else pd.Series([], dtype=object)
            values = flat.dropna().astype(str).to_numpy(dtype=object)
            if self.item_multi_:
                values = np.concatenate([values, _tag_values(known, self.item_multi_)])
            self.topic_vocab_ = IdVocabulary(
                min_count=self.min_category_count, name="item.topics"
            ).fit(values)
        self.duration_edges_ = np.zeros(0, dtype=np.float64)
        self.has_duration_ = "duration" in items.columns
        if self.has_duration_:
            d = known["duration"].to_numpy(dtype=np.float64)
            d = d[np.isfinite(d)]
            if len(d):
                levels = np.linspace(0.0, 1.0, self.n_duration_buckets + 1)[1:-1]
                self.duration_edges_ = np.unique(np.quantile(d, levels))
        # continuous extra columns of items: quantile buckets, as duration (the item tower
        # embeds every item feature)
        self.item_numeric_edges_ = {
            c: _quantile_edges(known[c], self.n_duration_buckets)
            for c, kind in item_extras.items()
            if kind == "continuous"
        }

        # Item time signals: windows and grid from the train window's span (fitted here, kept)
        self.item_signals_ = (
            ItemTimeSignals.fit(split.start, hi, len(known), len(train_watches))
            if self.time_signals
            else None
        )

        # Continuous features of the training labels -> the quantile normalizer.
        self.continuous_names_ = self.user_numeric_ + ACTIVITY_FEATURES
        if self.time_signals:
            self.continuous_names_ += RECENCY_FEATURES
        history = self._build_history(dataset)
        in_train = (history.watches.ts >= lo) & (history.watches.ts < hi)
        raw = self._raw_continuous(
            history, history.watches.user[in_train], history.watches.ts[in_train]
        )
        self.normalizer_ = QuantileNormalizer(n_quantiles=self.n_quantiles).fit(raw)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "normalizer_"):
            raise NotFittedError(
                "This CandidateFeaturizer is not fitted yet. Call 'fit(dataset, split)' before "
                "building examples, serving features or item features."
            )

    # --------------------------------------------------------------- schema
    def schema(self) -> dict[str, Any]:
        """Return the sizes the towers are built from (vocabulary sizes, feature counts)."""
        self._check_fitted()
        single_names, single_card = self._item_single_schema()
        return {
            "n_item_codes": len(self.item_vocab_),
            "n_token_codes": len(self.token_vocab_),
            "user_categorical": list(self.user_categorical_),
            "user_categorical_cardinalities": [
                len(self.user_vocabs_[c]) for c in self.user_categorical_
            ],
            "continuous": list(self.continuous_names_),
            "n_continuous": 3 * len(self.continuous_names_),
            "n_example_age": 3,
            "max_history": self.max_history,
            "max_search_tokens": self.max_search_tokens,
            "item_single": list(single_names),
            "item_single_cardinalities": list(single_card),
            "topic_cardinality": len(self.topic_vocab_) if self.has_topics_ else 0,
            "max_topics": self.max_topics,
            "user_tag_cardinality": len(self.user_tag_vocab_) if self.user_multi_ else 0,
        }

    def _item_single_schema(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        names: list[str] = ["item_id"]
        card: list[int] = [len(self.item_vocab_)]
        for c in self.item_categorical_:
            names.append(c)
            card.append(len(self.item_vocabs_[c]))
        if self.has_duration_:
            names.append("duration_bucket")
            card.append(len(self.duration_edges_) + 2)  # 0 = unknown, 1.. = buckets
        for c, edges in self.item_numeric_edges_.items():
            names.append(f"{c}_bucket")
            card.append(len(edges) + 2)  # 0 = unknown, 1.. = buckets
        names.append("upload_age_bucket")
        card.append(N_UPLOAD_AGE_CODES)  # 0 unused, 1 = future, 2.. = ages
        if self.item_signals_ is not None:
            names.extend(ITEM_TIME_CODES)
            card.extend(self.item_signals_.cardinalities)
        return tuple(names), tuple(card)

    # -------------------------------------------------------------- examples
    def examples(
        self,
        dataset: Dataset,
        window: str | tuple[int, int] = "train",
        *,
        max_examples_per_user: int | None = None,
    ) -> CandidateExamples:
        """Return next-watch examples whose labels are the watches in `window` (rollback).

        `window` is "train", "valid", "test" (of the fitted split) or explicit `(lo, hi)` times.
        With `max_examples_per_user`, each user keeps only their most recent labels. Example
        age is (train_end - label time) / (train window length), clipped to [0, 1]: labels
        after the train window get 0, as at serving time.
        """
        self._check_fitted()
        if isinstance(window, str):
            lo, hi = self.split_.bounds(window)
        else:
            lo, hi = (int(window[0]), int(window[1]))
            if hi < lo:
                raise ValueError(f"example window must have lo <= hi, got ({lo}, {hi})")
        if max_examples_per_user is not None and max_examples_per_user < 1:
            raise ValueError(
                f"max_examples_per_user must be >= 1 or None, got {max_examples_per_user}"
            )
        history = self.index_history(dataset)
        w = history.watches
        in_window = (w.ts >= lo) & (w.ts < hi)
        label_pos = np.flatnonzero(in_window)  # positions in the (user, time)-sorted watches
        n_in_window = int(len(label_pos))
        if max_examples_per_user is not None and n_in_window:
            users = w.user[label_pos]
            # labels are sorted by (user, time): rank from the end of each user's run
            starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
            ends = np.r_[starts[1:], len(users)]
            run_end = np.repeat(ends, ends - starts)
            rank_from_end = run_end - 1 - np.arange(len(users))
            label_pos = label_pos[rank_from_end < max_examples_per_user]
        users = w.user[label_pos]
        times = w.ts[label_pos]
        label_item = history.watch_items[label_pos]
        feats = self._user_features(history, users, times, serving=False)
        return CandidateExamples(
            features=feats,
            label_item=label_item.astype(np.int64),
            label_code=history.watch_codes[label_pos].astype(np.int64),
            timestamp=times.astype(np.int64),
            featurizer=self,
            window=(lo, hi),
            n_labels_in_window=n_in_window,
            n_dropped_by_cap=n_in_window - int(len(label_pos)),
        )

    def window_examples(
        self, dataset: Dataset, window: str | tuple[int, int] = "valid"
    ) -> CandidateExamples:
        """Return examples of serving every user active in `window` = [lo, hi) once, at lo:
        the user's features at lo (history strictly before it, example age 0, as `serving`
        gives) paired with each distinct item the user watches in the window and had not
        watched before lo; every example's time is lo, so only items uploaded by then count.

        Recall@k over them is the share of (user, new item) pairs that one request at the
        window's start retrieves: the protocol of the test-window evaluation (which averages
        per user instead), where `examples` measures the next watch from each watch's own
        history. Sorted by (user, item)."""
        self._check_fitted()
        lo, hi = self.split_.bounds(window) if isinstance(window, str) else map(int, window)
        w = dataset.watches
        t = w["timestamp"].to_numpy(np.int64)
        pairs = w[["user_id", "item_id"]].astype(np.int64)
        inwin = pairs[(t >= lo) & (t < hi)].drop_duplicates()
        seen = pd.MultiIndex.from_frame(pairs[t < lo].drop_duplicates())
        new = inwin[~pd.MultiIndex.from_frame(inwin).isin(seen)]
        new = new.sort_values(["user_id", "item_id"], kind="stable")
        users = new["user_id"].to_numpy(np.int64)
        items = new["item_id"].to_numpy(np.int64)
        feats = self.serving(self.index_history(dataset), users, lo)
        return CandidateExamples(
            features=feats,
            label_item=items,
            label_code=self.item_vocab_.transform(items).astype(np.int64),
            timestamp=np.full(len(items), lo, dtype=np.int64),
            featurizer=self,
            window=(lo, hi),
            n_labels_in_window=int(len(items)),
            n_dropped_by_cap=0,
        )

    def index_history(self, dataset: Dataset) -> UserHistory:
        """Return the dataset's events indexed for this featurizer (sorted, encoded once).

        Serving many small requests against the same logs should build this once and pass it
        to `serving`: each request then costs O(Q log W) instead of re-sorting the logs.
        """
        self._check_fitted()
        return self._build_history(dataset)

    def _build_history(self, dataset: Dataset) -> UserHistory:
        _require(dataset.watches, "watches", ("user_id", "item_id", "timestamp"))
        _require(dataset.users, "users", ("user_id",))
        w = _sorted_watches(dataset.watches)
        w_items = w["item_id"].to_numpy(dtype=np.int64)
        watches = _SortedEvents(
            w["user_id"].to_numpy(dtype=np.int64), w["timestamp"].to_numpy(dtype=np.int64)
        )
        s_user = s_ts = np.zeros(0, dtype=np.int64)
        token_ptr = np.zeros(1, dtype=np.int64)
        tokens = np.zeros(0, dtype=np.int32)
        table = dataset.searches
        if self.use_searches_ and table is not None and len(table):
            _require(table, "searches", ("user_id", "timestamp", "query"))
            su = table["user_id"].to_numpy(dtype=np.int64)
            st = table["timestamp"].to_numpy(dtype=np.int64)
            order = np.lexsort((st, su))
            s_user, s_ts = su[order], st[order]
            ptr, flat = tokens_flat(table["query"].iloc[order])
            codes = self.token_vocab_.transform(flat.astype(str)).astype(np.int32)
            keep = codes > 0  # OOV tokens leave the bag instead of taking a slot
            kept_before = np.zeros(len(codes) + 1, dtype=np.int64)
            np.cumsum(keep, out=kept_before[1:])
            token_ptr = kept_before[ptr]  # (M+1,) offsets into the kept tokens
            tokens = codes[keep]

        users = dataset.users
        user_index = pd.Index(users["user_id"].to_numpy(dtype=np.int64))
        if not user_index.is_unique:
            dup = user_index[user_index.duplicated()].unique()[:5].tolist()
            raise ValueError(
                f"table 'users' has duplicate user_id values (first: {dup}); keep one row per user"
            )
        categorical = np.zeros((len(users), len(self.user_categorical_)), dtype=np.int32)
        for j, c in enumerate(self.user_categorical_):  # a few columns, vectorized over rows
            if c not in users.columns:
                raise KeyError(
                    f"users table lacks column {c!r}, which the featurizer was fitted with; "
                    "serve with the same user attributes as in training"
                )
            col = users[c].astype("string").to_numpy(dtype=object, na_value=None)
            categorical[:, j] = self.user_vocabs_[c].transform(col)
        numeric = np.full((len(users), len(self.user_numeric_)), np.nan)
        for j, c in enumerate(self.user_numeric_):
            if c not in users.columns:
                raise KeyError(
                    f"users table lacks numeric column {c!r}, which the featurizer was fitted "
                    "with; serve with the same user attributes as in training"
                )
            numeric[:, j] = users[c].to_numpy(dtype=np.float64, na_value=np.nan)
        missing = [c for c in self.user_multi_ if c not in users.columns]
        if missing:
            raise KeyError(
                f"users table lacks multi-valued column(s) {missing}, which the featurizer was "
                "fitted with; serve with the same user attributes as in training"
            )
        tags = _tag_bags(users, self.user_multi_, self.user_tag_vocab_, self.max_topics)
        return UserHistory(
            watches=watches,
            watch_items=w_items,
            watch_codes=self.item_vocab_.transform(w_items).astype(np.int32),
            searches=_SortedEvents(s_user, s_ts),
            token_ptr=token_ptr,
            tokens=tokens,
            user_index=user_index,
            user_categorical=categorical,
            user_numeric=numeric,
            user_tags=tags,
        )

    def serving(
        self, source: Dataset | UserHistory, user_ids: np.ndarray, at_time: int | np.ndarray
    ) -> UserFeatures:
        """Return user features at `at_time` (history strictly before it) with example age 0.

        `source` is the logs (a Dataset) or, for repeated requests, `index_history(dataset)`.
        `at_time` is one time for all users or one per user.
        """
        self._check_fitted()
        history = source if isinstance(source, UserHistory) else self.index_history(source)
        users = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        times = np.broadcast_to(np.asarray(at_time, dtype=np.int64), users.shape).copy()
        return self._user_features(history, users, times, serving=True)

    def _user_features(
        self, history: UserHistory, users: np.ndarray, times: np.ndarray, *, serving: bool
    ) -> UserFeatures:
        n = len(users)
        # watched-item bag: the user's events strictly before (user, time)
        w_hi = history.watches.count_before(users, times)  # (N,)
        w_lo = history.watches.user_start(users)  # (N,) the user's first watch
        bag, bag_len = _gather_last(history.watch_codes, w_lo, w_hi, self.max_history)

        # search-token bag: tokens of the last <= max_searches searches, newest tokens kept
        if len(history.searches.user):
            s_hi = history.searches.count_before(users, times)
            s_lo = np.maximum(history.searches.user_start(users), s_hi - self.max_searches)
            ptr = history.token_ptr
            search_tokens, search_len = _gather_last(
                history.tokens, ptr[s_lo], ptr[s_hi], self.max_search_tokens
            )
        else:
            search_tokens = np.zeros((n, self.max_search_tokens), dtype=np.int32)
            search_len = np.zeros(n, dtype=np.int32)

        rows = history.user_index.get_indexer(users)  # -1 for users missing from the table
        known = rows >= 0
        categorical = np.zeros((n, len(self.user_categorical_)), dtype=np.int32)
        categorical[known] = history.user_categorical[rows[known]]
        tags = np.zeros((n, history.user_tags.shape[1]), dtype=np.int32)
        tags[known] = history.user_tags[rows[known]]

        raw = self._raw_continuous(history, users, times, w_lo=w_lo, w_hi=w_hi, rows=rows)
        continuous = QuantileNormalizer.expand(self.normalizer_.transform(raw))

        if serving:
            a = np.zeros(n, dtype=np.float32)
        else:
            days = (self.reference_time_ - times) / SECONDS_PER_DAY
            a = np.clip(days / self.train_days_, 0.0, 1.0).astype(np.float32)
        example_age = np.stack([a, a * a, np.sqrt(a)], axis=1).astype(np.float32)
        return UserFeatures(
            user_id=users.astype(np.int64),
            history=bag,
            history_len=bag_len,
            search_tokens=search_tokens,
            search_len=search_len,
            categorical=categorical,
            continuous=continuous.astype(np.float32),
            example_age=example_age,
            tags=tags,
        )

    def _raw_continuous(
        self,
        history: UserHistory,
        users: np.ndarray,
        times: np.ndarray,
        *,
        w_lo: np.ndarray | None = None,
        w_hi: np.ndarray | None = None,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """(N, K) float64 raw continuous features: user-table numerics, then activity so far."""
        n = len(users)
        if w_hi is None or w_lo is None:
            w_hi = history.watches.count_before(users, times)
            w_lo = history.watches.user_start(users)
        if rows is None:
            rows = history.user_index.get_indexer(users)
        k = len(self.user_numeric_)
        out = np.full((n, len(self.continuous_names_)), np.nan)
        known = rows >= 0
        out[known, :k] = history.user_numeric[rows[known]]
        first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        has_w = w_hi > w_lo
        first[has_w] = history.watches.ts[w_lo[has_w]]
        n_s = np.zeros(n, dtype=np.float64)
        if len(history.searches.user):
            s_hi = history.searches.count_before(users, times)
            s_lo = history.searches.user_start(users)
            n_s = (s_hi - s_lo).astype(np.float64)
            has_s = s_hi > s_lo
            first[has_s] = np.minimum(first[has_s], history.searches.ts[s_lo[has_s]])
        any_event = first != np.iinfo(np.int64).max
        days = np.zeros(n, dtype=np.float64)
        days[any_event] = (times[any_event] - first[any_event]) / SECONDS_PER_DAY
        out[:, k] = (w_hi - w_lo).astype(np.float64)
        out[:, k + 1] = n_s
        out[:, k + 2] = days
        if self.time_signals:  # time since the previous watch strictly before t, in days
            since = since_previous(history.watches.ts, w_hi, w_lo, times)
            out[:, k + 3] = np.where(np.isnan(since), NEVER_SECONDS, since) / SECONDS_PER_DAY
        return out

    # ----------------------------------------------------------------- items
    def item_features(
        self,
        catalog: Dataset | pd.DataFrame,
        reference_time: int | None = None,
        *,
        watches: pd.DataFrame | None = None,
        time_range: tuple[int, int] | None = None,
    ) -> ItemFeatures:
        """Return feature codes for every item of `catalog` (a Dataset or its items table).

        Items never watched in training get id code 0 but keep their other features, so the
        item tower still embeds them. Upload-age buckets are computed at `reference_time`
        (default: the end of the train window); serving passes the request time. The result
        keeps each item's upload time, and the trainer (`candidate_gen.train`) re-takes the
        bucket at each training example's own time (`ItemFeatures.at_time`), so a training row
        sees an item's age as a request at that time would: the default reference time only
        matters to callers that use these codes as they are.

        With time signals the item time codes are taken from the watches strictly before the
        grid time of `reference_time` (`features.time_signals`): the watches of the Dataset, or
        `watches` with an items table. Without `reference_time` (a training catalog), or with
        an explicit `time_range` (lo, hi), the result also holds the codes of every grid time
        in [lo, hi] (`ItemFeatures.time_table`; default: the fitted split's training and
        validation windows), which the trainer takes at each example's own time.
        """
        self._check_fitted()
        items = catalog.items if isinstance(catalog, Dataset) else catalog
        _require(items, "items", ("item_id", "upload_time"))
        ref = self.reference_time_ if reference_time is None else int(reference_time)
        n = len(items)
        names, card = self._item_single_schema()
        single = np.zeros((n, len(names)), dtype=np.int32)
        item_ids = items["item_id"].to_numpy(dtype=np.int64)
        if not pd.Index(item_ids).is_unique:
            dup = pd.Index(item_ids)[pd.Index(item_ids).duplicated()].unique()[:5].tolist()
            raise ValueError(
                f"table 'items' has duplicate item_id values (first: {dup}); keep one row per item"
            )
        single[:, 0] = self.item_vocab_.transform(item_ids)
        j = 1
        for c in self.item_categorical_:
            if c not in items.columns:
                raise KeyError(
                    f"items table lacks column {c!r}, which the featurizer was fitted with; "
                    "pass a catalog with the same item attributes as in training"
                )
            col = items[c].astype("string").to_numpy(dtype=object, na_value=None)
            single[:, j] = self.item_vocabs_[c].transform(col)
            j += 1
        if self.has_duration_:
            if "duration" not in items.columns:
                raise KeyError(
                    "items table lacks column 'duration', which the featurizer was fitted with"
                )
            d = items["duration"].to_numpy(dtype=np.float64, na_value=np.nan)
            bucket = 1 + np.searchsorted(self.duration_edges_, d, side="right")
            single[:, j] = np.where(np.isfinite(d), bucket, 0)
            j += 1
        for c, edges in self.item_numeric_edges_.items():
            if c not in items.columns:
                raise KeyError(
                    f"items table lacks column {c!r}, which the featurizer was fitted with"
                )
            v = pd.to_numeric(items[c], errors="coerce").to_numpy(np.float64, na_value=np.nan)
            single[:, j] = np.where(np.isfinite(v), 1 + np.searchsorted(edges, v, "right"), 0)
            j += 1
        upload = items["upload_time"].to_numpy(dtype=np.int64)
        single[:, j] = upload_age_codes(ref - upload)
        table = None
        if self.item_signals_ is not None:
            table = self._item_time_codes(
                catalog, watches, item_ids, reference_time, time_range, single, j + 1
            )

        if self.has_topics_:
            missing = [
                c
                for c in ("topics",) * self.item_topics_ + self.item_multi_
                if c not in items.columns
            ]
            if missing:
                raise KeyError(
                    f"items table lacks column(s) {missing}, which the featurizer was fitted with"
                )
            parts = [_tag_bags(items, self.item_multi_, self.topic_vocab_, self.max_topics)]
            if self.item_topics_:
                parts.insert(0, _topic_bags(items["topics"], self.topic_vocab_, self.max_topics))
            topics = np.concatenate(parts, axis=1)
            topic_card = len(self.topic_vocab_)
        else:
            topics = np.zeros((n, 0), dtype=np.int32)
            topic_card = 0
        return ItemFeatures(
            item_id=item_ids,
            single=single,
            topics=topics,
            single_names=names,
            single_cardinalities=card,
            topic_cardinality=topic_card,
            reference_time=ref,
            upload_time=upload.copy(),
            time_table=table,
        )

    def _item_time_codes(
        self,
        catalog: Dataset | pd.DataFrame,
        watches: pd.DataFrame | None,
        item_ids: np.ndarray,
        reference_time: int | None,
        time_range: tuple[int, int] | None,
        single: np.ndarray,
        col: int,
    ) -> ItemTimeTable | None:
        """Write the item time codes at the reference time into single[:, col:col + 5]; return
        the time table of a training catalog (see `item_features`), else None."""
        signals = self.item_signals_
        assert signals is not None
        w = catalog.watches if isinstance(catalog, Dataset) else watches
        if w is None:
            raise ValueError(
                "this featurizer has item time signals, computed from the watches: pass the "
                "Dataset (or watches=) to item_features, not only its items table"
            )
        _require(w, "watches", ("item_id", "timestamp"))
        ev_row = pd.Index(item_ids).get_indexer(w["item_id"].to_numpy(dtype=np.int64))
        ev_t = w["timestamp"].to_numpy(dtype=np.int64)
        ref = self.reference_time_ if reference_time is None else int(reference_time)
        cols = slice(col, col + len(ITEM_TIME_CODES))
        if reference_time is not None and time_range is None:
            single[:, cols] = signals.codes_at(ev_row, ev_t, len(item_ids), ref)
            return None
        if time_range is None:
            time_range = (self.split_.start, max(self.split_.valid_end, ref))
        lo, hi = (int(t) for t in time_range)
        if hi < lo:
            raise ValueError(f"time_range must have lo <= hi, got ({lo}, {hi})")
        table = signals.table(ev_row, ev_t, len(item_ids), lo, hi)
        if lo <= ref <= hi:
            single[:, cols] = table.codes[:, int(table.position(ref)), :]
        else:
            single[:, cols] = signals.codes_at(ev_row, ev_t, len(item_ids), ref)
        return table

    # --------------------------------------------------------------- persist
    def to_dict(self) -> dict[str, Any]:
        """Return the fitted featurizer as a JSON-ready dict (vocabularies included)."""
        self._check_fitted()
        return {
            "kind": "CandidateFeaturizer",
            "params": {
                "max_history": self.max_history,
                "max_searches": self.max_searches,
                "max_search_tokens": self.max_search_tokens,
                "max_topics": self.max_topics,
                "min_item_count": self.min_item_count,
                "min_token_count": self.min_token_count,
                "min_category_count": self.min_category_count,
                "n_duration_buckets": self.n_duration_buckets,
                "n_quantiles": self.n_quantiles,
                "time_signals": self.time_signals,
            },
            "split": self.split_.to_dict(),
            "reference_time": self.reference_time_,
            "train_days": self.train_days_,
            "use_searches": self.use_searches_,
            "item_vocab": self.item_vocab_.to_dict(),
            "token_vocab": self.token_vocab_.to_dict(),
            "user_categorical": list(self.user_categorical_),
            "user_vocabs": {c: v.to_dict() for c, v in self.user_vocabs_.items()},
            "user_numeric": list(self.user_numeric_),
            "item_categorical": list(self.item_categorical_),
            "item_vocabs": {c: v.to_dict() for c, v in self.item_vocabs_.items()},
            "has_topics": self.has_topics_,
            "topic_vocab": self.topic_vocab_.to_dict() if self.has_topics_ else None,
            "item_topics": self.item_topics_,
            "item_multi": list(self.item_multi_),
            "item_numeric_edges": {c: e.tolist() for c, e in self.item_numeric_edges_.items()},
            "user_multi": list(self.user_multi_),
            "user_tag_vocab": self.user_tag_vocab_.to_dict(),
            "has_duration": self.has_duration_,
            "duration_edges": self.duration_edges_.tolist(),
            "continuous_names": list(self.continuous_names_),
            "normalizer": self.normalizer_.to_dict(),
            "item_signals": None if self.item_signals_ is None else self.item_signals_.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CandidateFeaturizer:
        """Return the featurizer stored by `to_dict`."""
        if d.get("kind") != "CandidateFeaturizer":
            raise ValueError(f"not a CandidateFeaturizer record (kind={d.get('kind')!r})")
        f = cls(**d["params"])
        f.split_ = TimeSplit.from_dict(d["split"])
        f.reference_time_ = int(d["reference_time"])
        f.train_days_ = float(d["train_days"])
        f.use_searches_ = bool(d["use_searches"])
        f.item_vocab_ = IdVocabulary.from_dict(d["item_vocab"])
        f.token_vocab_ = IdVocabulary.from_dict(d["token_vocab"])
        f.user_categorical_ = tuple(d["user_categorical"])
        f.user_vocabs_ = {c: IdVocabulary.from_dict(v) for c, v in d["user_vocabs"].items()}
        f.user_numeric_ = tuple(d["user_numeric"])
        f.item_categorical_ = tuple(d["item_categorical"])
        f.item_vocabs_ = {c: IdVocabulary.from_dict(v) for c, v in d["item_vocabs"].items()}
        f.has_topics_ = bool(d["has_topics"])
        if f.has_topics_:
            f.topic_vocab_ = IdVocabulary.from_dict(d["topic_vocab"])
        # typed extra columns (absent from featurizers saved before them: none)
        f.item_topics_ = bool(d.get("item_topics", f.has_topics_))
        f.item_multi_ = tuple(d.get("item_multi", ()))
        f.item_numeric_edges_ = {
            c: np.asarray(e, dtype=np.float64) for c, e in d.get("item_numeric_edges", {}).items()
        }
        f.user_multi_ = tuple(d.get("user_multi", ()))
        f.user_tag_vocab_ = (
            IdVocabulary.from_dict(d["user_tag_vocab"])
            if "user_tag_vocab" in d
            else IdVocabulary(name="user.tags").fit(np.zeros(0, dtype=object))
        )
        f.has_duration_ = bool(d["has_duration"])
        f.duration_edges_ = np.asarray(d["duration_edges"], dtype=np.float64)
        f.continuous_names_ = tuple(d["continuous_names"])
        f.normalizer_ = QuantileNormalizer.from_dict(d["normalizer"])
        signals = d.get("item_signals")  # absent in records saved before time signals
        f.item_signals_ = None if signals is None else ItemTimeSignals.from_dict(signals)
        return f

    def save(self, path: str | Path) -> Path:
        """Write the fitted featurizer as JSON (atomically); returns the path."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> CandidateFeaturizer:
        """Return the featurizer saved at `path`."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


def watched_before(
    source: Dataset | UserHistory, user_ids: np.ndarray, at_time: int | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return `(offsets (Q+1,) int64, item_ids (W,) int64)`: query q's watches strictly before
    its time are `item_ids[offsets[q]:offsets[q+1]]`, oldest first (CSR layout).

    `source` is the logs or an indexed `UserHistory`; `at_time` is one time for all users or
    one per user; unknown users have no watches.
    """
    if isinstance(source, UserHistory):
        events, items = source.watches, source.watch_items
    else:
        _require(source.watches, "watches", ("user_id", "item_id", "timestamp"))
        w = _sorted_watches(source.watches)
        events = _SortedEvents(
            w["user_id"].to_numpy(dtype=np.int64), w["timestamp"].to_numpy(dtype=np.int64)
        )
        items = w["item_id"].to_numpy(dtype=np.int64)
    users = np.asarray(user_ids, dtype=np.int64).reshape(-1)
    times = np.broadcast_to(np.asarray(at_time, dtype=np.int64), users.shape)
    hi = events.count_before(users, times)
    lo = events.user_start(users)
    lengths = np.maximum(hi - lo, 0)
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # element t of query q is items[lo[q] + t]
    gather = np.repeat(lo - offsets[:-1], lengths) + np.arange(int(offsets[-1]), dtype=np.int64)
    return offsets, items[gather]


# ----------------------------------------------------------------------------- helpers


class _SortedEvents:
    """Events sorted by (user, time) answering "where do this user's events start" and "how
    many events precede (user, t)" in O(log n) per query.

    (user, time) pairs are packed into one int64 key (user rank x time span + time) and looked
    up with `np.searchsorted`. A query user without events gets an odd rank between two event
    users, so their history is empty; query times are clipped to just outside the events' time
    range, which changes no answer and keeps keys bounded. When keys would overflow (a huge
    time span times many users), a stable `np.lexsort` merge answers instead.
    """

    def __init__(self, user: np.ndarray, ts: np.ndarray) -> None:
        self.user = user  # (n,) int64, sorted
        self.ts = ts  # (n,) int64, sorted within each user
        n = len(user)
        new_user = np.r_[True, user[1:] != user[:-1]] if n else np.zeros(0, dtype=bool)
        self._uniq = user[new_user]
        self._rank = (np.cumsum(new_user) - 1).astype(np.int64)  # (n,) dense user rank
        self._t_min = int(ts.min()) - 1 if n else 0
        self._t_max = int(ts.max()) + 1 if n else 0
        self._span = self._t_max - self._t_min + 1
        packed = (2 * len(self._uniq) + 1) * self._span < 2**62
        self._key = 2 * self._rank * self._span + (ts - self._t_min) if packed else None

    def user_start(self, q_user: np.ndarray) -> np.ndarray:
        """Return the index of each query user's first event (its insertion point if none)."""
        return np.searchsorted(self.user, q_user, side="left").astype(np.int64)

    def count_before(self, q_user: np.ndarray, q_ts: np.ndarray) -> np.ndarray:
        """Return, per query, how many events are lexicographically before (q_user, q_ts): the
        end of the query user's strictly-earlier history."""
        n, m = len(self.user), len(q_user)
        if m == 0 or n == 0:
            return np.zeros(m, dtype=np.int64)
        q_pos = np.searchsorted(self._uniq, q_user).astype(np.int64)
        last = len(self._uniq) - 1
        present = (q_pos <= last) & (self._uniq[np.minimum(q_pos, last)] == q_user)
        q_rank = 2 * q_pos - (~present)  # a missing user sits between two present ones
        if self._key is not None:
            t = np.clip(q_ts, self._t_min, self._t_max)
            q_key = q_rank * self._span + (t - self._t_min)
            return np.searchsorted(self._key, q_key, side="left").astype(np.int64)
        users = np.concatenate([2 * self._rank, q_rank])
        ts = np.concatenate([self.ts, q_ts])
        is_event = np.concatenate([np.ones(n, dtype=np.int8), np.zeros(m, dtype=np.int8)])
        order = np.lexsort((is_event, ts, users))  # queries sort before events at equal keys
        events_sorted = is_event[order].astype(np.int64)
        before = np.cumsum(events_sorted) - events_sorted  # events strictly earlier when merged
        position = np.empty(n + m, dtype=np.int64)
        position[order] = np.arange(n + m)
        return before[position[n:]]


@dataclass
class UserHistory:
    """A dataset's watches, searches and user attributes, sorted and encoded for one featurizer.

    Build with `CandidateFeaturizer.index_history(dataset)`; pass it to `serving` or
    `watched_before` to answer many requests without re-reading the logs.
    """

    watches: _SortedEvents  # watches sorted by (user, time)
    watch_items: np.ndarray  # (W,) int64 raw item ids, in that order
    watch_codes: np.ndarray  # (W,) int32 item-vocabulary codes
    searches: _SortedEvents  # searches sorted by (user, time) (empty without searches)
    token_ptr: np.ndarray  # (M+1,) int64 offsets of each search's kept tokens
    tokens: np.ndarray  # (T,) int32 in-vocabulary token codes
    user_index: pd.Index  # users-table user ids -> row
    user_categorical: np.ndarray  # (U, C) int32 codes per users-table row
    user_numeric: np.ndarray  # (U, K0) float64 numeric attributes per users-table row
    user_tags: np.ndarray  # (U, T) int32 codes of the multi-valued attributes per row


def _sorted_watches(watches: pd.DataFrame) -> pd.DataFrame:
    """Watches sorted by (user, time), file order kept within ties."""
    u = watches["user_id"].to_numpy(dtype=np.int64)
    t = watches["timestamp"].to_numpy(dtype=np.int64)
    return watches.iloc[np.lexsort((t, u))]


def _first_at_or_after(
    ev_user: np.ndarray, ev_ts: np.ndarray, q_user: np.ndarray, q_ts: np.ndarray
) -> np.ndarray:
    """Return, per query, the index of the first event with (user, ts) >= (q_user, q_ts);
    events sorted lexicographically by (user, ts)."""
    return _SortedEvents(ev_user, ev_ts).count_before(q_user, q_ts)


def _gather_last(
    values: np.ndarray, lo: np.ndarray, hi: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return `(bags (N, width) int32, lengths (N,) int32)`: row i holds values[max(lo, hi-width):hi].

    Left-aligned (oldest of the kept values first), zero-padded on the right.
    """
    n = len(lo)
    out = np.zeros((n, width), dtype=np.int32)
    start = np.maximum(lo, hi - width)
    length = (hi - start).astype(np.int32)
    if len(values) == 0 or n == 0:
        return out, np.zeros(n, dtype=np.int32)
    offsets = np.arange(width, dtype=np.int64)
    last = len(values) - 1
    for c0 in range(0, n, _CHUNK):  # chunks bound the (rows, width) temporaries
        c1 = min(n, c0 + _CHUNK)
        idx = start[c0:c1, None] + offsets[None, :]  # (n_chunk, width)
        valid = offsets[None, :] < length[c0:c1, None]
        out[c0:c1] = np.where(valid, values[np.minimum(idx, last)], 0)
    return out, length


def _topic_bags(
    topics: pd.Series, vocab: IdVocabulary, width: int, prefix: str = ""
) -> np.ndarray:
    """(N, width) int32 topic codes per item (first `width` known topics), zero-padded; each
    value is looked up as `prefix` + value."""
    n = len(topics)
    exploded = topics.reset_index(drop=True).explode()
    row = exploded.index.to_numpy(dtype=np.int64)
    values = exploded.to_numpy(dtype=object)
    present = pd.notna(values)
    codes = np.zeros(len(values), dtype=np.int64)
    if present.any():
        looked_up = values[present].astype(str)
        if prefix:
            looked_up = (prefix + pd.Series(looked_up, dtype=object)).to_numpy(dtype=object)
        codes[present] = vocab.transform(looked_up)
    keep = codes > 0
    row, codes = row[keep], codes[keep]
    counts = np.bincount(row, minlength=n)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    hi = np.minimum(ptr[1:], ptr[:-1] + width)
    # first `width` topics: take the window [ptr, hi) -> _gather_last with lo = ptr
    bags, _ = _gather_last(codes.astype(np.int32), ptr[:-1], hi, width)
    return bags


def _tag_values(table: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """Return every "column=value" of the multi-valued `columns` of `table` (object, flat)."""
    parts = [np.zeros(0, dtype=object)]
    for c in columns:
        flat = table[c].explode().dropna()
        parts.append((c + "=" + flat.astype(str)).to_numpy(dtype=object))
    return np.concatenate(parts)


def _tag_bags(
    table: pd.DataFrame, columns: tuple[str, ...], vocab: IdVocabulary, width: int
) -> np.ndarray:
    """(N, width * len(columns)) int32 codes of "column=value" of each multi-valued column: the
    first `width` known values of each, zero-padded (N, 0) without such columns)."""
    bags = [np.zeros((len(table), 0), dtype=np.int32)]
    for c in columns:
        bags.append(_topic_bags(table[c], vocab, width, prefix=f"{c}="))
    return np.concatenate(bags, axis=1)


def _quantile_edges(values: pd.Series, n_buckets: int) -> np.ndarray:
    """The distinct inner quantiles of the finite `values` (n_buckets buckets), float64."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.zeros(0, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, n_buckets + 1)[1:-1]
    return np.unique(np.quantile(v, levels))


def _require(frame: pd.DataFrame | None, table: str, columns: tuple[str, ...]) -> None:
    if frame is None:
        raise ValueError(f"table {table!r} is required here but the dataset has none")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(
            f"table {table!r} lacks required column(s) {missing} (has {list(frame.columns)}); "
            "see features.tables for the data contract"
        )
