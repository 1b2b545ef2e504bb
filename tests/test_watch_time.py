"""Expected-watch-time evaluation (evaluation/watch_time.py): calibration deciles and errors."""

import math

import numpy as np
import pytest

from vidrec.evaluation.watch_time import (
    calibration_by_decile,
    calibration_summary,
    ground_truth_errors,
    top_k_true_watch_time,
    watch_time_errors,
)


def test_calibration_bins_hand_computed():
    # 10 rows, 5 bins -> 2 rows per bin, ordered by prediction (given shuffled)
    # bin 1: pred 1, 2 (mean 1.5) obs 1, 2 (1.5) -> ratio 1.0
    # bin 2: pred 3, 4 (3.5)  obs 3, 3 (3.0) -> ratio 1.1667 (+16.7%, outside +-15%)
    # bin 3: pred 5, 6 (5.5)  obs 6, 6 (6.0) -> ratio 0.9167 (-8.3%, inside)
    # bin 4: pred 7, 8 (7.5)  obs 0, 0 (0)   -> ratio NaN, not within tolerance
    # bin 5: pred 9, 10 (9.5) obs 10, 9 (9.5) -> ratio 1.0
    pred = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=float)
    obs = np.array([1, 2, 3, 3, 6, 6, 0, 0, 10, 9], dtype=float)
    perm = np.random.default_rng(0).permutation(10)
    table = calibration_by_decile(pred[perm], obs[perm], n_bins=5)
    assert table["bin"].tolist() == [1, 2, 3, 4, 5]
    assert table["count"].tolist() == [2] * 5
    assert table["mean_predicted"].tolist() == [1.5, 3.5, 5.5, 7.5, 9.5]
    assert table["mean_observed"].tolist() == [1.5, 3.0, 6.0, 0.0, 9.5]
    assert table["pred_min"].tolist() == [1, 3, 5, 7, 9]
    assert table["pred_max"].tolist() == [2, 4, 6, 8, 10]
    np.testing.assert_allclose(table["ratio"].to_numpy(), [1, 3.5 / 3, 5.5 / 6, np.nan, 1])
    assert table["within_tolerance"].tolist() == [True, False, True, False, True]

    summary = calibration_summary(pred, obs, n_bins=5)
    assert summary["bins_within_tolerance"] == 3
    assert summary["all_within_tolerance"] is False
    assert summary["max_abs_relative_error"] == math.inf  # bin 4: predictions, nothing watched
    assert summary["worst_bin"] == 4
    # overall ratio = sum pred / sum obs = 55 / 40
    assert summary["overall_ratio"] == pytest.approx(55 / 40)
    assert summary["mean_predicted"] == pytest.approx(5.5)
    assert summary["mean_observed"] == pytest.approx(4.0)


def test_calibration_equal_count_deciles_with_ties():
    # 1,000 rows, all predictions tied: equal-count bins still hold 100 rows each
    pred = np.full(1000, 30.0)
    obs = np.random.default_rng(1).exponential(30.0, 1000)
    table = calibration_by_decile(pred, obs)
    assert len(table) == 10 and (table["count"] == 100).all()
    # uneven split: 13 rows in 4 bins -> sizes 4,3,3,3 (bin = rank * 4 // 13)
    sizes = calibration_by_decile(np.arange(13.0), np.ones(13), n_bins=4)["count"].tolist()
    assert sorted(sizes) == [3, 3, 3, 4] and sum(sizes) == 13


def test_calibration_summary_calibrated_case():
    # pred 10 everywhere, obs alternating 8 and 12 in every bin -> ratio exactly 1
    pred = np.full(100, 10.0)
    obs = np.tile([8.0, 12.0], 50)
    s = calibration_summary(pred, obs)
    assert s["all_within_tolerance"] is True
    assert s["max_abs_relative_error"] == pytest.approx(0.0)


def test_watch_time_errors_hand_computed():
    # errors: pred - obs = [2, -2, 0, 4] -> MAE 2, RMSE sqrt((4+4+0+16)/4) = sqrt(6), bias 1
    e = watch_time_errors([12.0, 8.0, 0.0, 4.0], [10.0, 10.0, 0.0, 0.0])
    assert e["mae"] == pytest.approx(2.0)
    assert e["rmse"] == pytest.approx(math.sqrt(6.0))
    assert e["bias"] == pytest.approx(1.0)
    assert e["mean_obs"] == pytest.approx(5.0)
    assert e["relative_bias"] == pytest.approx(0.2)
    assert e["n"] == 4


def test_ground_truth_errors():
    # prediction = 2 * truth: rank order and linear relation are perfect, bias = mean truth
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    g = ground_truth_errors(2 * truth, truth)
    assert g["pearson"] == pytest.approx(1.0)
    assert g["spearman"] == pytest.approx(1.0)
    assert g["bias"] == pytest.approx(2.5)
    assert g["mean_true"] == pytest.approx(2.5)
    assert math.isnan(ground_truth_errors([1.0, 1.0], [1.0, 2.0])["pearson"])  # constant input


def test_top_k_true_watch_time_hand_computed():
    # user a: scores [.9, .8, .1], true [1, 5, 9]; k=2 -> slate 1+5 = 6, oracle 9+5 = 14
    # user b: scores [.5, .5], true [4, 2]; tie -> pessimistic, k=1 picks 2; oracle 4
    out = top_k_true_watch_time(
        ["a", "a", "a", "b", "b"], [0.9, 0.8, 0.1, 0.5, 0.5], [1, 5, 9, 4, 2], k=2
    )
    assert out["group"].tolist() == ["a", "b"]
    assert out["slate"].tolist() == [6.0, 6.0]  # b has only 2 candidates: both in the slate
    assert out["oracle"].tolist() == [14.0, 6.0]
    one = top_k_true_watch_time(["b", "b"], [0.5, 0.5], [4.0, 2.0], k=1)
    assert one["slate"].tolist() == [2.0] and one["fraction_of_oracle"].tolist() == [0.5]


def test_input_errors_are_explained():
    with pytest.raises(ValueError, match="predicted has 3 rows but observed has 2"):
        watch_time_errors([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="observed must be >= 0 seconds; row 1"):
        watch_time_errors([1.0, 2.0], [1.0, -2.0])
    with pytest.raises(ValueError, match="predicted has 1 NaN/inf"):
        calibration_by_decile([1.0, np.inf], [1.0, 2.0], n_bins=2)
    with pytest.raises(ValueError, match="at least n_bins=10 rows, got 3"):
        calibration_by_decile([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        calibration_by_decile([1.0], [1.0], n_bins=0)
    with pytest.raises(ValueError, match="tolerance must be a fraction"):
        calibration_summary([1.0], [1.0], n_bins=1, tolerance=15)
    with pytest.raises(ValueError, match="got 0 rows"):
        ground_truth_errors([], [])
    with pytest.raises(ValueError, match="numeric watch times"):
        watch_time_errors(["a"], [1.0])
    with pytest.raises(ValueError, match="one value per candidate"):
        top_k_true_watch_time([1, 1], [0.1], [1.0, 2.0])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k_true_watch_time([1], [0.1], [1.0], k=0)
