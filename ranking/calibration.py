"""Monotone post-hoc calibration of the ranker's expected watch time.

The weighted logistic loss makes exp(logit) an estimate of E[watch time] only at the optimum; an
early-stopped network is under-fitted in places. `WatchTimeCalibrator` corrects the
*level* of the prediction without touching its *order*:

    calibrated log E[T] = g(logit),   g strictly increasing.

It is fitted on held-out impressions (the ranker's validation split, never the test window).
Two methods:

"two_part" (the default): E[T | z] = P(click | z) * E[T | click, z], each part fitted where
its noise allows.
1. P(click | z), binned: sort the rows by logit z, cut them into equal-count bins (at least
   `min_bin_rows` rows each), take each bin's mean logit and click rate, pool adjacent bins
   (pool-adjacent-violators) until the click rates strictly increase; log P is interpolated
   linearly between the pooled (mean logit, log click rate) knots.
2. E[T | click, z], smooth: a Poisson regression with a log link on the clicked rows,
   log E[T | click, z] = a + b z + sum_j c_j max(z - k_j, 0) with `watch_knots` hinges k_j at
   quantiles of the clicked rows' logits, fitted by Newton's method. The fit is refitted with
   fewer hinges until its slope is >= 0 everywhere (every partial sum b + c_1 + ... >= 0); with
   no hinge and a negative slope the part is a constant.
Why two parts: the watch time of a click is heavy-tailed (on the default world the log watch
time of clicks has a standard deviation of 1.3-2.9), so a bin's mean watch time rests on its
few hundred clicks and is off by ±20-30% by chance; a click rate is far less noisy. Pooling the
watch time of every click into a 6-parameter curve borrows strength across the logit range.
Measured on two default-world models (20 bootstrap refits each on their validation windows,
tested against the true E[T] of the test window): deciles within ±15% 9.3 and 9.2 of 10 on
average against 9.0 and 8.0 for "binned".

"binned" (the method before; saved calibrators without a method are this one): the same
equal-count bins and pooling over the observed watch time itself (0 for an unclicked
impression), knots (pooled mean logit, log pooled mean watch time).

When the click rate carries no information (every row clicked, or its pooled rate constant)
"two_part" has nothing to split and fits "binned" instead: `method` stays the one asked for,
`method_` is the one fitted, and the saved state records both. Both are strictly increasing between the first and last knot (strictly increasing
interpolation times a non-decreasing curve) and continue beyond them with slope 1, i.e. the
network's own relative differences, shifted to meet the end values. So the ranking of every
page is unchanged (AUC, NDCG and the weighted per-user loss are those of the raw logits); only
exp(g(logit)) as a watch time moves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

#: Calibration methods (see the module docstring).
METHODS: tuple[str, ...] = ("two_part", "binned")
#: clicked rows per hinge of the watch-time curve at least (fewer clicks: fewer hinges)
_CLICKS_PER_KNOT = 200


class WatchTimeCalibrator:
    """Strictly increasing map logit -> calibrated log expected watch time (see the module).

    As in scikit-learn, the constructor's arguments are kept as given and `fit` never changes
    them; what `fit` learns has a trailing underscore: `method_` (the method fitted, "binned"
    when "two_part" falls back), `knots_x_`, `knots_y_`, `hinges_`, `coef_` and `n_rows_`.
    """

    # binned part, strictly increasing: (K,) pooled mean logits and the log of the pooled mean
    # watch time ("binned") or of the pooled click rate ("two_part")
    knots_x_: np.ndarray
    knots_y_: np.ndarray
    # "two_part": log E[T | click, z] = coef_[0] + coef_[1] z + sum_j coef_[2 + j] (z - hinges_[j])+
    hinges_: np.ndarray
    coef_: np.ndarray
    method_: str
    n_rows_: int

    def __init__(
        self,
        n_bins: int = 100,
        min_bin_rows: int = 500,
        *,
        method: str = "two_part",
        watch_knots: int = 4,
    ) -> None:
        if isinstance(n_bins, bool) or int(n_bins) < 2:
            raise ValueError(f"WatchTimeCalibrator: n_bins must be >= 2, got {n_bins!r}")
        if isinstance(min_bin_rows, bool) or int(min_bin_rows) < 1:
            raise ValueError(
                f"WatchTimeCalibrator: min_bin_rows must be >= 1, got {min_bin_rows!r}"
            )
        if method not in METHODS:
            raise ValueError(
                f"WatchTimeCalibrator: method must be one of {METHODS}, got {method!r}"
            )
        if isinstance(watch_knots, bool) or int(watch_knots) < 0:
            raise ValueError(f"WatchTimeCalibrator: watch_knots must be >= 0, got {watch_knots!r}")
        self.n_bins = int(n_bins)
        self.min_bin_rows = int(min_bin_rows)
        self.method = method
        self.watch_knots = int(watch_knots)

    @property
    def fitted(self) -> bool:
        return hasattr(self, "knots_x_")

    def fit(
        self, logits: ArrayLike, watch_time: ArrayLike, clicked: ArrayLike | None = None
    ) -> WatchTimeCalibrator:
        """Return self fitted on held-out rows: raw logits, observed watch time (0 = unclicked)
        and, optionally, the click labels (default: watch time > 0).

        Raises ValueError on mismatched lengths, non-finite values, negative watch times, fewer
        than 2 * min_bin_rows rows, or no watch time at all.
        """
        x = np.asarray(logits, dtype=np.float64).ravel()
        y = np.asarray(watch_time, dtype=np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(
                f"WatchTimeCalibrator.fit: {x.size} logits but {y.size} watch times; give one "
                "watch time per row (0 for unclicked impressions)"
            )
        c = y > 0 if clicked is None else np.asarray(clicked).ravel().astype(bool)
        if c.shape != x.shape:
            raise ValueError(f"WatchTimeCalibrator.fit: {x.size} logits but {c.size} click labels")
        bad = ~np.isfinite(x) | ~np.isfinite(y) | (y < 0)
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise ValueError(
                f"WatchTimeCalibrator.fit: {int(bad.sum())} rows with a non-finite logit or a "
                f"non-finite/negative watch time (first rows {rows})"
            )
        n = x.size
        if n < 2 * self.min_bin_rows:
            raise ValueError(
                f"WatchTimeCalibrator.fit needs at least {2 * self.min_bin_rows} rows "
                f"(2 bins of min_bin_rows={self.min_bin_rows}), got {n}"
            )
        y = np.where(c, y, 0.0)  # an unclicked impression watches nothing
        if not y.sum() > 0:
            raise ValueError(
                "WatchTimeCalibrator.fit: no watch time in the rows (all zero, or only on rows "
                "not clicked)"
            )
        method = self.method
        target = y if method == "binned" else c.astype(np.float64)
        knots_x, knots_y = _pooled_knots(x, target, self.n_bins, self.min_bin_rows)
        if method == "two_part" and knots_x.size < 2:
            # the click rate carries no information (every row clicked, or pooled flat): no
            # split to make, and no strictly increasing part to carry the order
            method = "binned"
            knots_x, knots_y = _pooled_knots(x, y, self.n_bins, self.min_bin_rows)
        hinges, coef = np.zeros(0), np.zeros(2)
        if method == "two_part":
            hinges, coef = _increasing_poisson_curve(
                x[c], y[c], min(self.watch_knots, int(c.sum()) // _CLICKS_PER_KNOT)
            )
        self.method_, self.knots_x_, self.knots_y_ = method, knots_x, knots_y
        self.hinges_, self.coef_, self.n_rows_ = hinges, coef, int(n)
        return self

    def _watch_per_click(self, x: np.ndarray) -> np.ndarray:
        """log E[T | click, x] of the two-part fit (0 for "binned")."""
        if self.method_ == "binned":
            return np.zeros_like(x)
        out = self.coef_[0] + self.coef_[1] * x
        for k, b in zip(self.hinges_, self.coef_[2:], strict=True):
            out = out + b * np.maximum(x - k, 0.0)
        return out

    def transform(self, logits: ArrayLike) -> np.ndarray:
        """Return g(logits): the calibrated log expected watch time (float64, same shape)."""
        if not self.fitted:
            raise RuntimeError("WatchTimeCalibrator is not fitted: call fit(logits, watch_time)")
        x = np.asarray(logits, dtype=np.float64)
        kx, ky = self.knots_x_, self.knots_y_
        lo_x, hi_x = kx[0], kx[-1]
        inside = np.clip(x, lo_x, hi_x)
        out = np.interp(inside, kx, ky) + self._watch_per_click(inside)
        return out + (x - inside)  # slope 1 beyond the ends

    def expected_watch_time(self, logits: ArrayLike) -> np.ndarray:
        """Return exp(g(logits)): the calibrated expected watch time in seconds."""
        return np.exp(self.transform(logits))

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters and the fitted state as a JSON-serialisable dict."""
        if not self.fitted:
            raise RuntimeError("WatchTimeCalibrator is not fitted: nothing to save")
        return {
            "kind": "WatchTimeCalibrator",
            "method": self.method,
            "fitted_method": self.method_,
            "n_bins": self.n_bins,
            "min_bin_rows": self.min_bin_rows,
            "watch_knots": self.watch_knots,
            "n_rows": self.n_rows_,
            "knots_x": self.knots_x_.tolist(),
            "knots_y": self.knots_y_.tolist(),
            "hinges": self.hinges_.tolist(),
            "coef": self.coef_.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WatchTimeCalibrator:
        """Return the calibrator stored by `to_dict` (checked: finite, strictly increasing).

        A saved state without a method is a "binned" calibrator (the only kind before); one
        without `fitted_method` holds the method fitted in `method` (as saved before the two
        were told apart).
        """
        if not isinstance(d, dict) or d.get("kind") != "WatchTimeCalibrator":
            raise ValueError("not a saved WatchTimeCalibrator (kind != 'WatchTimeCalibrator')")
        method = d.get("method", "binned")
        fitted_method = d.get("fitted_method", method)
        for name in (method, fitted_method):
            if name not in METHODS:
                raise ValueError(f"saved WatchTimeCalibrator has an unknown method {name!r}")
        cal = cls(
            int(d["n_bins"]),
            int(d["min_bin_rows"]),
            method=method,
            watch_knots=int(d.get("watch_knots", 0)),
        )
        kx = np.asarray(d["knots_x"], dtype=np.float64)
        ky = np.asarray(d["knots_y"], dtype=np.float64)
        hinges = np.asarray(d.get("hinges", []), dtype=np.float64)
        coef = np.asarray(d.get("coef", [0.0, 0.0]), dtype=np.float64)
        ok = (
            kx.ndim == 1
            and kx.shape == ky.shape
            and kx.size >= 1
            and np.isfinite(kx).all()
            and np.isfinite(ky).all()
            and (np.diff(kx) > 0).all()
            and (np.diff(ky) > 0).all()
        )
        if not ok:
            raise ValueError(
                "saved WatchTimeCalibrator is corrupt: knots must be finite, of equal length "
                "and strictly increasing"
            )
        curve_ok = (
            hinges.ndim == 1
            and coef.shape == (hinges.size + 2,)
            and np.isfinite(coef).all()
            and np.isfinite(hinges).all()
            and (np.cumsum(coef[1:]) >= 0).all()
        )
        if not curve_ok:
            raise ValueError(
                "saved WatchTimeCalibrator is corrupt: the watch-per-click curve needs "
                "len(coef) = len(hinges) + 2, finite values and a slope >= 0 everywhere"
            )
        cal.method_, cal.knots_x_, cal.knots_y_ = fitted_method, kx, ky
        cal.hinges_, cal.coef_, cal.n_rows_ = hinges, coef, int(d.get("n_rows", 0))
        return cal


def _pooled_knots(
    x: np.ndarray, y: np.ndarray, n_bins: int, min_bin_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean logit, log mean y) of equal-count bins over the rows sorted by x, pooled
    until both are strictly increasing (y >= 0 with some y > 0)."""
    n = x.size
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    n_bins = max(2, min(n_bins, n // min_bin_rows))
    edges = (np.arange(n_bins + 1) * n) // n_bins  # equal-count bins over the sorted rows
    counts = np.diff(edges).astype(np.float64)  # (B,)
    cnt, sx, sy = _pool_increasing(
        counts, np.add.reduceat(xs, edges[:-1]), np.add.reduceat(ys, edges[:-1])
    )
    return sx / cnt, np.log(sy / cnt)


def _increasing_poisson_curve(
    x: np.ndarray, y: np.ndarray, n_knots: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (hinges (J,), coef (J + 2,)) of the Poisson regression log E[y | x] = coef[0] +
    coef[1] x + sum_j coef[2 + j] (x - hinge_j)+ with the most hinges (<= n_knots, at equal-count
    quantiles of x) whose slope is >= 0 everywhere; a constant when even the line falls."""
    for j in range(max(n_knots, 0), -1, -1):
        hinges = np.quantile(x, np.arange(1, j + 1) / (j + 1)) if j else np.zeros(0)
        hinges = np.unique(hinges)
        basis = np.column_stack([np.ones_like(x), x] + [np.maximum(x - k, 0.0) for k in hinges])
        coef = _poisson_newton(basis, y)
        if coef is not None and (np.cumsum(coef[1:]) >= 0).all():
            return hinges, coef
    mean = float(y.mean()) if y.size else 1.0
    return np.zeros(0), np.array([np.log(max(mean, 1e-12)), 0.0])


def _poisson_newton(basis: np.ndarray, y: np.ndarray, max_iter: int = 100) -> np.ndarray | None:
    """Return the Poisson (log link) maximum-likelihood coefficients by Newton's method with
    step halving, or None when it does not converge (a singular or diverging fit)."""
    if y.size == 0 or not y.sum() > 0:
        return None
    coef = np.zeros(basis.shape[1])
    coef[0] = np.log(y.mean())

    def loglik(c: np.ndarray) -> float:
        eta = basis @ c
        return float(y @ eta - np.exp(eta).sum())

    cur = loglik(coef)
    for _ in range(max_iter):
        mu = np.exp(basis @ coef)
        grad = basis.T @ (y - mu)
        hess = basis.T @ (basis * mu[:, None])
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        t = 1.0
        while t > 1e-8:
            new = coef + t * step
            val = loglik(new)
            if np.isfinite(val) and val >= cur - 1e-12 * abs(cur):
                break
            t /= 2.0
        else:
            return None
        coef, prev, cur = new, cur, val
        if abs(cur - prev) <= 1e-10 * max(abs(cur), 1.0) and np.abs(t * step).max() < 1e-8:
            return coef if np.isfinite(coef).all() else None
        if np.abs(t * step).max() < 1e-10:
            return coef if np.isfinite(coef).all() else None
    return coef if np.isfinite(coef).all() else None


def _pool_increasing(
    counts: np.ndarray, sum_x: np.ndarray, sum_y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (counts, sum_x, sum_y) of blocks pooled until the means sum_y / counts are
    strictly increasing and positive (pool-adjacent-violators over B bins, O(B) amortised).

    The logit means of the pooled blocks stay strictly increasing when the bins' logits are
    sorted and distinct; blocks whose logit means tie are pooled as well.
    """
    cnt: list[float] = []
    sx: list[float] = []
    sy: list[float] = []
    for c, a, b in zip(counts.tolist(), sum_x.tolist(), sum_y.tolist(), strict=True):
        cnt.append(c)
        sx.append(a)
        sy.append(b)
        # pool while the last block does not strictly exceed the one before it (in y or in x)
        while len(cnt) > 1 and (
            sy[-1] / cnt[-1] <= sy[-2] / cnt[-2] or sx[-1] / cnt[-1] <= sx[-2] / cnt[-2]
        ):
            c2, a2, b2 = cnt.pop(), sx.pop(), sy.pop()
            cnt[-1] += c2
            sx[-1] += a2
            sy[-1] += b2
    # a first block with no watch time at all (log 0) is pooled into the next one
    while len(cnt) > 1 and sy[0] <= 0:
        c2, a2, b2 = cnt.pop(0), sx.pop(0), sy.pop(0)
        cnt[0] += c2
        sx[0] += a2
        sy[0] += b2
    return np.asarray(cnt), np.asarray(sx), np.asarray(sy)
