"""Id vocabularies: raw ids (ints or strings) -> dense codes, fitted on the training window only.

Code 0 is both padding and out-of-vocabulary (OOV): an embedding table built with
`padding_idx=0` gives unknown values the zero vector (SPEC §5), and masked mean-pooling ignores
them. Codes 1..n are assigned by descending training frequency (ties by value), so "top-N by
frequency" is `max_size=N`. What the frequency floor and size cap cut is counted, never silent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec.features.atomic import atomic_write_json

# requests of at most this many values are looked up in a dict (string vocabularies only)
_DICT_LOOKUP_MAX = 4096


class NotFittedError(RuntimeError):
    """A fitted transform was used before `fit`."""


class IdVocabulary:
    """Maps raw values to int64 codes; 0 = padding/OOV, 1..n by descending frequency."""

    def __init__(self, min_count: int = 1, max_size: int | None = None, name: str = "ids") -> None:
        if min_count < 1:
            raise ValueError(f"IdVocabulary({name!r}): min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size < 1:
            raise ValueError(
                f"IdVocabulary({name!r}): max_size must be >= 1 or None, got {max_size}"
            )
        self.min_count = int(min_count)
        self.max_size = max_size
        self.name = name

    # ------------------------------------------------------------------ fit
    def fit(self, values: Iterable[Any] | np.ndarray | pd.Series) -> IdVocabulary:
        """Learn the vocabulary from training values; returns self."""
        s = pd.Series(np.asarray(values) if not isinstance(values, pd.Series) else values)
        s = s.dropna()
        counts = s.value_counts(sort=False)
        order = pd.DataFrame({"v": counts.index, "c": counts.to_numpy()})
        # descending count, ties broken by value so the result is deterministic
        order = order.sort_values(["c", "v"], ascending=[False, True], kind="stable")
        keep = order[order["c"] >= self.min_count]
        if self.max_size is not None:
            keep = keep.iloc[: self.max_size]
        self.values_ = keep["v"].to_numpy()
        self.is_numeric_ = (
            bool(pd.api.types.is_numeric_dtype(keep["v"].dtype))
            if len(keep)
            else (bool(pd.api.types.is_numeric_dtype(s.dtype)))
        )
        kept_counts = keep["c"].to_numpy(dtype=np.int64)
        n_total = int(order["c"].sum())
        self.counts_ = np.concatenate([[n_total - int(kept_counts.sum())], kept_counts]).astype(
            np.int64
        )
        self.n_values_seen_ = int(len(order))
        self.n_values_dropped_ = int(len(order) - len(keep))
        self._build_index()
        return self

    def _build_index(self) -> None:
        self._index = pd.Index(self.values_)
        # string vocabularies also get a dict, for small requests (serving one user's page):
        # pandas converts every request to its string dtype first, ~1 ms per call
        self._lookup: dict[Any, int] | None = (
            None if self.is_numeric_ else {v: i for i, v in enumerate(self.values_.tolist())}
        )

    def _check_fitted(self) -> None:
        if not hasattr(self, "values_"):
            raise NotFittedError(
                f"This IdVocabulary ({self.name!r}) is not fitted yet. Call 'fit' with the "
                "training values before using 'transform'."
            )

    # ------------------------------------------------------------ transform
    def transform(self, values: Iterable[Any] | np.ndarray | pd.Series) -> np.ndarray:
        """Codes (int64) for `values`; unknown or missing values map to 0 (OOV)."""
        self._check_fitted()
        arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
        if arr.size == 0:
            return np.zeros(arr.shape, dtype=np.int64)
        flat = arr.reshape(-1)
        if self.is_numeric_ and flat.dtype.kind not in "iuf":
            # e.g. string ids "12" against an int vocabulary: compare as numbers when possible
            num = pd.to_numeric(pd.Series(flat), errors="coerce").to_numpy()
            flat = num
        if self._lookup is not None and flat.size <= _DICT_LOOKUP_MAX:
            get = self._lookup.get  # at most _DICT_LOOKUP_MAX values: a bounded loop
            codes = np.fromiter((get(v, -1) for v in flat.tolist()), np.int64, flat.size)
        else:
            codes = self._index.get_indexer(flat)
        return (codes + 1).astype(np.int64).reshape(arr.shape)  # -1 (unknown) -> 0

    def fit_transform(self, values: Iterable[Any] | np.ndarray | pd.Series) -> np.ndarray:
        return self.fit(values).transform(values)

    def inverse_transform(self, codes: Iterable[int] | np.ndarray) -> np.ndarray:
        """Raw values for codes; code 0 (padding/OOV) gives None."""
        self._check_fitted()
        c = np.asarray(codes, dtype=np.int64)
        if c.size and (c.min() < 0 or c.max() >= len(self)):
            raise ValueError(
                f"IdVocabulary({self.name!r}): codes must lie in [0, {len(self) - 1}], "
                f"got min {c.min()} max {c.max()}"
            )
        table = np.empty(len(self), dtype=object)
        table[0] = None
        table[1:] = self.values_
        return table[c]

    def __len__(self) -> int:
        """Number of codes including 0 (the embedding table's row count)."""
        self._check_fitted()
        return int(len(self.values_) + 1)

    def __contains__(self, value: Any) -> bool:
        return bool(self.transform([value])[0] > 0)

    def summary(self) -> dict[str, int]:
        """What fitting kept and cut: sizes and the number of training occurrences mapped to OOV."""
        self._check_fitted()
        return {
            "size": len(self),
            "distinct_values_seen": self.n_values_seen_,
            "distinct_values_dropped": self.n_values_dropped_,
            "occurrences_mapped_to_oov": int(self.counts_[0]),
        }

    # -------------------------------------------------------------- persist
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        vals = self.values_.tolist()
        return {
            "kind": "IdVocabulary",
            "name": self.name,
            "min_count": self.min_count,
            "max_size": self.max_size,
            "numeric": self.is_numeric_,
            "values": [v.item() if hasattr(v, "item") else v for v in vals],
            "counts": self.counts_.tolist(),
            "distinct_values_seen": self.n_values_seen_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IdVocabulary:
        if d.get("kind") != "IdVocabulary":
            raise ValueError(f"not an IdVocabulary record (kind={d.get('kind')!r})")
        v = cls(min_count=d["min_count"], max_size=d["max_size"], name=d["name"])
        v.is_numeric_ = bool(d["numeric"])
        v.values_ = np.asarray(d["values"], dtype=np.int64 if v.is_numeric_ else object)
        if v.is_numeric_ and len(d["values"]) and any(isinstance(x, float) for x in d["values"]):
            v.values_ = np.asarray(d["values"], dtype=np.float64)
        v.counts_ = np.asarray(d["counts"], dtype=np.int64)
        if len(v.counts_) != len(v.values_) + 1:
            raise ValueError(
                f"IdVocabulary({v.name!r}): corrupt record, counts and values disagree"
            )
        v.n_values_seen_ = int(d["distinct_values_seen"])
        v.n_values_dropped_ = v.n_values_seen_ - len(v.values_)
        v._build_index()
        return v

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> IdVocabulary:
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))
