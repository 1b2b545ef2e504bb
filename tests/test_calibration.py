"""WatchTimeCalibrator: pooled bins by hand, strict monotonicity, extrapolation, persistence."""

import json

import numpy as np
import pytest

from ranking.calibration import WatchTimeCalibrator, _pool_increasing


def test_pool_by_hand():
    # bins (count, mean y): (1, 1) (1, 3) (1, 2) (1, 5): 3 > 2 violates -> pool to (2, 2.5)
    counts = np.ones(4)
    sx = np.array([0.0, 1.0, 2.0, 3.0])
    sy = np.array([1.0, 3.0, 2.0, 5.0])
    cnt, px, py = _pool_increasing(counts, sx, sy)
    np.testing.assert_allclose(cnt, [1, 2, 1])
    np.testing.assert_allclose(py / cnt, [1.0, 2.5, 5.0])
    np.testing.assert_allclose(px / cnt, [0.0, 1.5, 3.0])


def test_pool_ties_and_empty_first_block():
    # equal means are pooled too (strictly increasing knots); a first block with y = 0 joins
    # the next: (1, 0) (1, 2) (1, 2) (1, 4) -> (1,0)(2,2)(1,4) -> (3, 4/3) (1, 4)
    cnt, px, py = _pool_increasing(np.ones(4), np.arange(4.0), np.array([0.0, 2.0, 2.0, 4.0]))
    np.testing.assert_allclose(cnt, [3, 1])
    np.testing.assert_allclose(py / cnt, [4 / 3, 4.0])


def test_fit_recovers_a_known_miscalibration():
    # the true E[T | logit] = 2 * exp(logit): a calibrated map is g(l) = l + log 2
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 1.0, 200_000)
    watch = rng.exponential(2.0 * np.exp(logits))
    cal = WatchTimeCalibrator(n_bins=50, min_bin_rows=1000).fit(logits, watch)
    grid = np.linspace(-1.5, 1.5, 7)
    np.testing.assert_allclose(cal.transform(grid), grid + np.log(2.0), atol=0.08)
    assert np.all(np.diff(cal.knots_x) > 0) and np.all(np.diff(cal.knots_y) > 0)


def test_transform_is_strictly_increasing_and_extrapolates_with_slope_one():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=5000)
    watch = np.where(rng.random(5000) < 0.3, rng.exponential(np.exp(logits)), 0.0)
    cal = WatchTimeCalibrator(n_bins=10, min_bin_rows=100).fit(logits, watch)
    x = np.linspace(-10, 10, 2001)
    g = cal.transform(x)
    assert np.all(np.diff(g) > 0)  # order of every page is preserved
    lo, hi = cal.knots_x[0], cal.knots_x[-1]
    assert cal.transform(np.array([lo - 3.0]))[0] == pytest.approx(cal.knots_y[0] - 3.0)
    assert cal.transform(np.array([hi + 2.0]))[0] == pytest.approx(cal.knots_y[-1] + 2.0)
    np.testing.assert_allclose(cal.expected_watch_time(x), np.exp(g))


def test_round_trip_and_corrupt_state():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=2000)
    cal = WatchTimeCalibrator(n_bins=8, min_bin_rows=50).fit(logits, rng.exponential(size=2000))
    back = WatchTimeCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(back.transform(logits), cal.transform(logits))
    bad = cal.to_dict() | {"knots_y": list(reversed(cal.to_dict()["knots_y"]))}
    if len(bad["knots_y"]) > 1:
        with pytest.raises(ValueError, match="strictly increasing"):
            WatchTimeCalibrator.from_dict(bad)
    with pytest.raises(ValueError, match="not a saved WatchTimeCalibrator"):
        WatchTimeCalibrator.from_dict({"kind": "other"})


def test_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        WatchTimeCalibrator().transform([0.0])
    with pytest.raises(ValueError, match="n_bins must be >= 2"):
        WatchTimeCalibrator(n_bins=1)
    cal = WatchTimeCalibrator(n_bins=4, min_bin_rows=2)
    with pytest.raises(ValueError, match="3 logits but 2 watch times"):
        cal.fit([0.0, 1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"1 rows .* \(first rows \[1\]\)"):
        cal.fit([0.0, np.nan, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="negative"):
        cal.fit([0.0, 1.0, 2.0, 3.0], [1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="at least 4 rows"):
        cal.fit([0.0, 1.0, 2.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="no watch time"):
        cal.fit([0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0])
