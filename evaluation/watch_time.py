"""Expected-watch-time evaluation (SPEC §6): calibration by decile, MAE/RMSE, error against the
simulator's ground truth, and the true expected watch time of each user's top-k slate.

Where this sits: the weighted-LR ranker's serving score exp(Wx + b) is meant to be the
*expected watch time* of an impression (SPEC §5: E[T](1 + P) ≈ E[T], watch time 0 when not
clicked). These functions check that claim on held-out impressions, comparing the predicted
value with the observed watch time (seconds, 0 for an impression that was not clicked) and, on
simulated data, with the true expectation the world knows.

Calibration bins are *equal-count* bins of the predicted value (deciles by default): rows are
ranked by prediction (ties kept in row order) and cut into n_bins consecutive slices of equal
size (±1 row), so every bin has data even when many predictions are tied. A bin is calibrated
when its mean prediction is within ±tolerance (15% by default) of its mean observed
watch time: |mean_predicted / mean_observed − 1| <= tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

ArrayLike = Any  # anything np.asarray accepts as a 1-D array

__all__ = [
    "calibration_by_decile",
    "calibration_summary",
    "ground_truth_errors",
    "top_k_true_watch_time",
    "watch_time_errors",
]


def _values(name: str, x: ArrayLike, *, nonnegative: bool = False) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per impression), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric watch times in seconds, got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} has {int(bad.sum())} NaN/inf values (first at row {i}); "
            "fix the model output or drop those rows before evaluating"
        )
    if nonnegative and (out < 0).any():
        i = int(np.flatnonzero(out < 0)[0])
        raise ValueError(f"{name} must be >= 0 seconds; row {i} is {out[i]}")
    return out


def _pair(
    a_name: str, a: ArrayLike, b_name: str, b: ArrayLike, *, b_nonnegative: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    x = _values(a_name, a)
    y = _values(b_name, b, nonnegative=b_nonnegative)
    if len(x) != len(y):
        raise ValueError(
            f"{a_name} has {len(x)} rows but {b_name} has {len(y)}; pass one value per impression to each"
        )
    if len(x) == 0:
        raise ValueError(f"got 0 rows in {a_name} and {b_name}; evaluate on a non-empty set")
    return x, y


def _check_tolerance(tolerance: float) -> None:
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be a fraction in (0, 1) such as 0.15, got {tolerance}")


# --------------------------------------------------------------------------- calibration
def calibration_by_decile(
    predicted: ArrayLike, observed: ArrayLike, n_bins: int = 10, tolerance: float = 0.15
) -> pd.DataFrame:
    """Return one row per equal-count bin of `predicted`: predicted vs observed mean watch time.

    Columns: `bin` (1 = lowest predictions), `pred_min`, `pred_max`, `mean_predicted`,
    `mean_observed`, `count`, `ratio` (mean_predicted / mean_observed; NaN when nothing was
    watched in the bin), `relative_error` (ratio − 1) and `within_tolerance` (|ratio − 1| <=
    tolerance; False when the ratio is NaN).
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer such as 10, got {n_bins!r}")
    _check_tolerance(tolerance)
    pred, obs = _pair("predicted", predicted, "observed", observed)
    n = len(pred)
    if n < n_bins:
        raise ValueError(f"calibration needs at least n_bins={n_bins} rows, got {n}; lower n_bins")
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(pred, kind="stable")] = np.arange(n)
    bins = rank * n_bins // n  # equal-count slices 0..n_bins-1
    frame = pd.DataFrame({"bin": bins + 1, "pred": pred, "obs": obs})
    table = frame.groupby("bin", sort=True).agg(
        pred_min=("pred", "min"),
        pred_max=("pred", "max"),
        mean_predicted=("pred", "mean"),
        mean_observed=("obs", "mean"),
        count=("pred", "size"),
    )
    table = table.reset_index()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(
            table["mean_observed"] > 0, table["mean_predicted"] / table["mean_observed"], np.nan
        )
    table["ratio"] = ratio
    table["relative_error"] = ratio - 1.0
    table["within_tolerance"] = np.abs(ratio - 1.0) <= tolerance  # NaN compares False
    table["count"] = table["count"].astype(np.int64)
    return table


def calibration_summary(
    predicted: ArrayLike, observed: ArrayLike, n_bins: int = 10, tolerance: float = 0.15
) -> dict[str, float | int | bool]:
    """Return a one-line digest of `calibration_by_decile`: worst bin, bins within tolerance.

    Keys: `n_bins`, `bins_within_tolerance`, `all_within_tolerance`, `max_abs_relative_error`
    (largest |mean_predicted / mean_observed − 1| over the bins; inf when a bin has predictions
    but no observed watch time), `worst_bin`, `overall_ratio` (sum predicted / sum observed),
    `mean_predicted`, `mean_observed`, `tolerance`, `n`.
    """
    table = calibration_by_decile(predicted, observed, n_bins=n_bins, tolerance=tolerance)
    dev = np.abs(table["relative_error"].to_numpy())
    dev = np.where(
        np.isnan(dev), np.inf, dev
    )  # a bin with no observed watch time is never calibrated
    worst = int(np.argmax(dev))
    total_pred = float((table["mean_predicted"] * table["count"]).sum())
    total_obs = float((table["mean_observed"] * table["count"]).sum())
    n = int(table["count"].sum())
    return {
        "n_bins": int(len(table)),
        "bins_within_tolerance": int(table["within_tolerance"].sum()),
        "all_within_tolerance": bool(table["within_tolerance"].all()),
        "max_abs_relative_error": float(dev[worst]),
        "worst_bin": int(table["bin"].iloc[worst]),
        "overall_ratio": total_pred / total_obs if total_obs > 0 else float("nan"),
        "mean_predicted": total_pred / n,
        "mean_observed": total_obs / n,
        "tolerance": float(tolerance),
        "n": n,
    }


# --------------------------------------------------------------------------- point errors
def watch_time_errors(predicted: ArrayLike, observed: ArrayLike) -> dict[str, float | int]:
    """Return MAE, RMSE and bias (mean predicted − observed, s) against observed watch time.

    Keys: `mae`, `rmse`, `bias`, `relative_bias` (bias / mean_obs; NaN when nothing was
    watched), `mean_pred`, `mean_obs`, `n`. Observed watch time is 0 for unclicked impressions,
    so per-row errors are large by nature; the calibration table is the fairer view.
    """
    pred, obs = _pair("predicted", predicted, "observed", observed)
    err = pred - obs
    mean_obs = float(obs.mean())
    bias = float(err.mean())
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt(np.mean(err * err))),
        "bias": bias,
        "relative_bias": bias / mean_obs if mean_obs > 0 else float("nan"),
        "mean_pred": float(pred.mean()),
        "mean_obs": mean_obs,
        "n": int(len(pred)),
    }


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")  # undefined for constant input
    return float(np.corrcoef(a, b)[0, 1])


def ground_truth_errors(predicted: ArrayLike, true_expected: ArrayLike) -> dict[str, float | int]:
    """Return errors of predicted against the simulator's true E[watch time] of each impression.

    Keys: `mae`, `rmse`, `bias` (mean predicted − true, s), `relative_bias`, `mean_pred`,
    `mean_true`, `pearson` and `spearman` (rank correlation: does the prediction order the
    impressions as the truth does; NaN for constant input), `n`.
    """
    pred, true = _pair("predicted", predicted, "true_expected", true_expected)
    base = watch_time_errors(pred, true)
    ranks_p = pd.Series(pred).rank(method="average").to_numpy()
    ranks_t = pd.Series(true).rank(method="average").to_numpy()
    return {
        "mae": base["mae"],
        "rmse": base["rmse"],
        "bias": base["bias"],
        "relative_bias": base["relative_bias"],
        "mean_pred": base["mean_pred"],
        "mean_true": base["mean_obs"],
        "pearson": _correlation(pred, true),
        "spearman": _correlation(ranks_p, ranks_t),
        "n": base["n"],
    }


# --------------------------------------------------------------------------- slates
def top_k_true_watch_time(
    groups: ArrayLike, scores: ArrayLike, true_expected: ArrayLike, k: int = 10
) -> pd.DataFrame:
    """Return, per group (user), the true expected watch time of the model's top-k vs the oracle's.

    For every group: `slate` = sum of `true_expected` over the k best-scored rows (ties broken
    pessimistically, lowest true value first), `oracle` = sum over the k rows with the highest
    true value (the best possible slate from the same candidates), `fraction_of_oracle` =
    slate / oracle (NaN when the oracle is 0), `n_candidates`. Groups with fewer than k
    candidates use all of them. One row per group, in order of first appearance; the caller
    averages (or bootstraps) over users.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer such as 10, got {k!r}")
    s = _values("scores", scores)
    true = _values("true_expected", true_expected, nonnegative=True)
    keys = np.asarray(groups)
    if keys.ndim != 1 or not len(keys) == len(s) == len(true):
        raise ValueError(
            f"groups, scores and true_expected need one value per candidate; got lengths "
            f"{len(keys)}, {len(s)}, {len(true)}"
        )
    if len(s) == 0:
        raise ValueError("got 0 candidates; pass each user's scored candidates")
    codes, uniques = pd.factorize(keys, sort=False)
    if (codes < 0).any():
        raise ValueError(
            f"groups has missing keys (NaN/None), first at row {int(np.flatnonzero(codes < 0)[0])}"
        )
    n_groups = len(uniques)

    def position(order: np.ndarray) -> np.ndarray:
        sorted_codes = codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        pos = np.empty(len(order), dtype=np.int64)
        pos[order] = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        return pos

    model_pos = position(np.lexsort((true, -s, codes)))  # best score first, pessimistic ties
    oracle_pos = position(np.lexsort((-true, codes)))
    slate = np.bincount(codes, weights=true * (model_pos < k), minlength=n_groups)
    oracle = np.bincount(codes, weights=true * (oracle_pos < k), minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(oracle > 0, slate / oracle, np.nan)
    return pd.DataFrame(
        {
            "group": uniques,
            "slate": slate,
            "oracle": oracle,
            "fraction_of_oracle": fraction,
            "n_candidates": np.bincount(codes, minlength=n_groups).astype(np.int64),
        }
    )
