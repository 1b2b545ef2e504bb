"""Quantile normalisation of continuous features: x -> x~ = F(x) in [0, 1) (SPEC §5).

F is the training CDF estimated from quantiles with linear interpolation; fit on the training
window only (fitting on validation or test data leaks their distribution). The ranker and the
user tower get x~, x~^2 and sqrt(x~) (`expand`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec.features.atomic import atomic_write_json
from vidrec.features.vocab import NotFittedError

_TOP = np.nextafter(np.float32(1.0), np.float32(0.0))  # largest float32 below 1


class QuantileNormalizer:
    """scikit-learn-style transformer mapping each column through its training CDF."""

    def __init__(self, n_quantiles: int = 1000) -> None:
        if n_quantiles < 2:
            raise ValueError(f"QuantileNormalizer: n_quantiles must be >= 2, got {n_quantiles}")
        self.n_quantiles = int(n_quantiles)

    @staticmethod
    def _as_2d(X: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, list[str] | None]:
        if isinstance(X, pd.DataFrame):
            bad = [c for c, dt in X.dtypes.items() if not pd.api.types.is_numeric_dtype(dt)]
            if bad:
                raise TypeError(f"QuantileNormalizer: columns {bad} are not numeric")
            return X.to_numpy(dtype=np.float64), [str(c) for c in X.columns]
        arr = np.asarray(X, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"QuantileNormalizer expects a 2-D array, got shape {arr.shape}")
        return arr, None

    def fit(self, X: pd.DataFrame | np.ndarray) -> QuantileNormalizer:
        """Learn per-column quantiles (NaN ignored; inf refused); returns self."""
        arr, cols = self._as_2d(X)
        if arr.shape[0] == 0:
            raise ValueError("QuantileNormalizer.fit: got 0 rows; fit needs training data")
        if np.isinf(arr).any():
            col = int(np.where(np.isinf(arr).any(axis=0))[0][0])
            name = cols[col] if cols else f"#{col}"
            raise ValueError(f"QuantileNormalizer.fit: column {name} contains inf values")
        levels = np.linspace(0.0, 1.0, self.n_quantiles)
        # a column never observed in training maps everything to 0 (its quantiles are not
        # computed: numpy would warn "All-NaN slice encountered" into the user's log)
        q = np.zeros((self.n_quantiles, arr.shape[1]))
        seen = ~np.isnan(arr).all(axis=0)
        if seen.any():
            q[:, seen] = np.nanquantile(arr[:, seen], levels, axis=0)  # (n_quantiles, F seen)
        self.quantiles_ = q.T.copy()  # (F, n_quantiles)
        self.levels_ = levels
        self.columns_ = cols
        self.n_features_ = arr.shape[1]
        return self

    def _check(self, arr: np.ndarray, cols: list[str] | None) -> None:
        if not hasattr(self, "quantiles_"):
            raise NotFittedError(
                "This QuantileNormalizer is not fitted yet. Call 'fit' with the training "
                "window's features before using 'transform'."
            )
        if arr.shape[1] != self.n_features_:
            raise ValueError(
                f"QuantileNormalizer was fitted on {self.n_features_} columns, got {arr.shape[1]}"
            )
        if cols is not None and self.columns_ is not None and cols != self.columns_:
            raise ValueError(
                f"QuantileNormalizer column mismatch: fitted on {self.columns_}, got {cols}"
            )

    def transform(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """x~ = F(x) in [0, 1) as float32 (N, F); NaN maps to 0."""
        arr, cols = self._as_2d(X)
        self._check(arr, cols)
        out = np.empty(arr.shape, dtype=np.float64)
        cols_first = np.ascontiguousarray(arr.T)  # (F, N): each column contiguous for np.interp
        for j in range(arr.shape[1]):  # loop over columns (few), vectorized over rows
            xp = self.quantiles_[j]
            x = cols_first[j]
            # repeated quantile values (ties, e.g. many zeros) make interpolation one-sided:
            # average the forward and backward interpolation (as scikit-learn does)
            fwd = np.interp(x, xp, self.levels_)
            bwd = -np.interp(-x, -xp[::-1], -self.levels_[::-1])
            out[:, j] = 0.5 * (fwd + bwd)
        out = np.nan_to_num(out, nan=0.0)
        return np.clip(out, 0.0, _TOP).astype(np.float32)

    def fit_transform(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    @staticmethod
    def expand(xt: np.ndarray) -> np.ndarray:
        """[x~, x~^2, sqrt(x~)] side by side: (N, F) -> (N, 3F)."""
        xt = np.asarray(xt, dtype=np.float32)
        return np.concatenate([xt, xt * xt, np.sqrt(xt)], axis=1)

    def transform_expanded(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        return self.expand(self.transform(X))

    def to_dict(self) -> dict[str, Any]:
        if not hasattr(self, "quantiles_"):
            raise NotFittedError("This QuantileNormalizer is not fitted yet; nothing to save.")
        return {
            "kind": "QuantileNormalizer",
            "n_quantiles": self.n_quantiles,
            "columns": self.columns_,
            "quantiles": self.quantiles_.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantileNormalizer:
        if d.get("kind") != "QuantileNormalizer":
            raise ValueError(f"not a QuantileNormalizer record (kind={d.get('kind')!r})")
        n = cls(n_quantiles=d["n_quantiles"])
        n.quantiles_ = np.asarray(d["quantiles"], dtype=np.float64).reshape(-1, d["n_quantiles"])
        n.levels_ = np.linspace(0.0, 1.0, n.n_quantiles)
        n.columns_ = d["columns"]
        n.n_features_ = n.quantiles_.shape[0]
        return n

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> QuantileNormalizer:
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))
