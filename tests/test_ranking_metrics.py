"""Ranking metrics (evaluation/ranking.py) against hand-computed values and brute force."""

import math

import numpy as np
import pandas as pd
import pytest

from vidrec.evaluation.ranking import (
    auc,
    group_auc,
    log_loss,
    ndcg_at_k,
    ranking_metrics,
    weighted_per_user_loss,
)

# ---------------------------------------------------------------------------- AUC


def test_auc_with_ties_hand_computed():
    # positives p1=.9, p3=.5, p5=.1; negatives n2=.8, n4=.1
    # p1: beats n2, n4 -> 2; p3: loses to n2, beats n4 -> 1; p5: loses n2, ties n4 -> 0.5
    # AUC = 3.5 / (3 * 2) = 0.583333
    labels = [1, 0, 1, 0, 1]
    scores = [0.9, 0.8, 0.5, 0.1, 0.1]
    assert auc(labels, scores) == pytest.approx(3.5 / 6)


def test_auc_weighted_hand_computed():
    # same rows, weights [2, 1, 1, 1, 1]: a pair carries w_pos * w_neg
    # p1 (w 2): 2*1 + 2*1 = 4; p3: 0 + 1 = 1; p5: 0 + 0.5 = 0.5 -> 5.5
    # denominator W_pos * W_neg = (2 + 1 + 1) * (1 + 1) = 8 -> 0.6875
    labels = [1, 0, 1, 0, 1]
    scores = [0.9, 0.8, 0.5, 0.1, 0.1]
    assert auc(labels, scores, weights=[2, 1, 1, 1, 1]) == pytest.approx(5.5 / 8)


def test_auc_extremes_and_single_class():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied: every pair counts 1/2
    assert math.isnan(auc([1, 1], [0.1, 0.2]))  # undefined with one class


def test_auc_matches_mann_whitney_average_ranks():
    # AUC = (sum of positives' average ranks - P(P+1)/2) / (P * N)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = rng.integers(0, 15, 400).astype(float)  # many ties
    ranks = pd.Series(s).rank(method="average").to_numpy()
    p, n = y.sum(), (1 - y).sum()
    expected = (ranks[y == 1].sum() - p * (p + 1) / 2) / (p * n)
    assert auc(y, s) == pytest.approx(expected, rel=1e-12)


def test_group_auc_hand_computed():
    # A: labels [1,0,0] scores [.3,.5,.1]: pos beats .1, loses to .5 -> 1/2 = 0.5 (3 rows)
    # B: labels [1,1,0,0] scores [.9,.2,.4,.2]: .9 beats both (2), .2 loses .4, ties .2 (0.5)
    #    -> 2.5 / 4 = 0.625 (4 rows)
    # C: only negatives, D: only a positive -> left out
    # GAUC = (3 * 0.5 + 4 * 0.625) / 7 = 4 / 7
    groups = ["A"] * 3 + ["B"] * 4 + ["C"] * 2 + ["D"]
    labels = [1, 0, 0, 1, 1, 0, 0, 0, 0, 1]
    scores = [0.3, 0.5, 0.1, 0.9, 0.2, 0.4, 0.2, 0.7, 0.1, 0.0]
    value, n_groups = group_auc(labels, scores, groups)
    assert value == pytest.approx(4 / 7)
    assert n_groups == 2


def test_group_auc_brute_force():
    rng = np.random.default_rng(1)
    n = 600
    g = rng.integers(0, 40, n)
    y = rng.integers(0, 2, n)
    s = rng.integers(0, 6, n).astype(float)
    values, weights = [], []
    for _, d in pd.DataFrame({"g": g, "y": y, "s": s}).groupby("g"):
        if d.y.nunique() == 2:
            values.append(auc(d.y.to_numpy(), d.s.to_numpy()))
            weights.append(len(d))
    value, used = group_auc(y, s, g)
    assert used == len(values)
    assert value == pytest.approx(np.average(values, weights=weights), rel=1e-12)


def test_group_auc_no_group_with_both_classes():
    value, used = group_auc([1, 0], [0.1, 0.2], ["u1", "u2"])
    assert math.isnan(value) and used == 0


# ---------------------------------------------------------------------------- log loss


def test_log_loss_hand_computed_and_clipping():
    # -(ln 0.8 + ln 0.6) / 2 = (0.223144 + 0.510826) / 2 = 0.366985
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(0.3669845, rel=1e-6)
    # certain and wrong: clipped to eps = 1e-7 -> -ln(1e-7) = 16.118 per row
    assert log_loss([0, 1], [1.0, 0.0]) == pytest.approx(-math.log(1e-7), rel=1e-6)


# ---------------------------------------------------------------------------- NDCG


def test_ndcg_hand_computed():
    # g1: gains [3, 0, 1], scores [.1, .9, .5] -> ranked gains [0, 1, 3]
    #   DCG@2 = 0 + 1/log2(3) = 0.630930; IDCG@2 = 3 + 1/log2(3) = 3.630930 -> 0.173765
    #   DCG@3 = 0.630930 + 3/log2(4) = 2.130930 (IDCG@3 same as @2) -> 0.586878
    # g2: all gains 0 -> left out; g3: one item with gain 2 -> 1.0
    groups = [1, 1, 1, 2, 2, 3]
    gains = [3.0, 0.0, 1.0, 0.0, 0.0, 2.0]
    scores = [0.1, 0.9, 0.5, 0.3, 0.2, 0.4]
    inv3 = 1 / math.log2(3)
    assert ndcg_at_k(groups, gains, scores, 2) == pytest.approx((inv3 / (3 + inv3) + 1) / 2)
    assert ndcg_at_k(groups, gains, scores, 3) == pytest.approx(((inv3 + 1.5) / (3 + inv3) + 1) / 2)
    assert ndcg_at_k(groups, gains, [0.9, 0.1, 0.5, 0, 0, 0], 3) == pytest.approx(1.0)


def test_ndcg_ties_are_pessimistic_and_no_gain_is_nan():
    # equal scores: the zero-gain row is placed first -> DCG@1 = 0
    assert ndcg_at_k([7, 7], [5.0, 0.0], [1.0, 1.0], 1) == 0.0
    assert math.isnan(ndcg_at_k([1, 1], [0.0, 0.0], [0.2, 0.1], 5))


def test_ndcg_brute_force_with_ties():
    rng = np.random.default_rng(2)
    n = 500
    g = rng.integers(0, 30, n)
    s = rng.integers(0, 4, n).astype(float)
    gain = np.round(rng.random(n) * 3) * (rng.random(n) < 0.4)
    for k in (1, 3, 10):
        per_group = []
        for _, d in pd.DataFrame({"g": g, "s": s, "gain": gain}).groupby("g"):
            if d.gain.sum() == 0:
                continue
            d = d.sort_values(["s", "gain"], ascending=[False, True])
            disc = 1 / np.log2(np.arange(len(d)) + 2)
            dcg = (d.gain.to_numpy() * disc)[:k].sum()
            idcg = (np.sort(d.gain.to_numpy())[::-1] * disc)[:k].sum()
            per_group.append(dcg / idcg)
        assert ndcg_at_k(g, gain, s, k) == pytest.approx(np.mean(per_group), rel=1e-12)


# ---------------------------------------------------------------------------- YT16 loss

# user 1: positives a (wt 100, .9), b (wt 50, .3); negatives c (.5), d (.1)
#   pairs a-c, a-d, b-c, b-d; weights 100, 100, 50, 50 (total 300)
#   b-c mispredicted (.5 >= .3) -> 50
# user 2: positive e (wt 30, .2); negatives f (.2, tie), g (.7), h (.1)
#   3 pairs of weight 30 (total 90); e-f (tie) and e-g mispredicted -> 60
# user 3: a positive without any negative -> no pair, not counted
# loss = (50 + 60) / (300 + 90) = 110 / 390 = 0.282051
YT16_GROUPS = ["u1"] * 4 + ["u2"] * 4 + ["u3"]
YT16_CLICKED = [1, 1, 0, 0, 1, 0, 0, 0, 1]
YT16_WATCH = [100.0, 50.0, 0.0, 0.0, 30.0, 0.0, 0.0, 0.0, 1000.0]
YT16_SCORES = [0.9, 0.3, 0.5, 0.1, 0.2, 0.2, 0.7, 0.1, 0.0]


def test_weighted_per_user_loss_two_users_hand_computed():
    loss = weighted_per_user_loss(YT16_GROUPS, YT16_CLICKED, YT16_WATCH, YT16_SCORES)
    assert loss == pytest.approx(110 / 390)


def test_weighted_per_user_loss_perfect_reversed_and_no_pairs():
    groups, clicked, wt = [1, 1, 1], [1, 0, 0], [10.0, 0.0, 0.0]
    assert weighted_per_user_loss(groups, clicked, wt, [3.0, 2.0, 1.0]) == 0.0
    assert weighted_per_user_loss(groups, clicked, wt, [1.0, 2.0, 3.0]) == 1.0
    assert math.isnan(weighted_per_user_loss([1, 2], [1, 0], [5.0, 0.0], [0.1, 0.2]))


def test_weighted_per_user_loss_brute_force():
    rng = np.random.default_rng(3)
    n = 400
    g = rng.integers(0, 25, n)
    y = rng.integers(0, 2, n)
    s = rng.integers(0, 8, n).astype(float)
    wt = y * rng.random(n) * 100
    num = den = 0.0
    for _, d in pd.DataFrame({"g": g, "y": y, "s": s, "wt": wt}).groupby("g"):
        neg = d.s[d.y == 0].to_numpy()
        for score, w in zip(d.s[d.y == 1], d.wt[d.y == 1], strict=True):
            den += w * len(neg)
            num += w * (neg >= score).sum()
    assert weighted_per_user_loss(g, y, wt, s) == pytest.approx(num / den, rel=1e-12)


# ---------------------------------------------------------------------------- all metrics


def test_ranking_metrics_keys_and_values():
    probs = np.full(len(YT16_SCORES), 0.5)
    m = ranking_metrics(YT16_GROUPS, YT16_CLICKED, YT16_WATCH, YT16_SCORES, probs=probs)
    assert set(m) == {
        "auc", "gauc", "gauc_groups", "logloss", "ndcg@5", "ndcg@10", "ndcg_groups",
        "weighted_per_user_loss", "n_rows", "n_groups", "n_positives", "ctr", "mean_watch_time",
    }  # fmt: skip
    assert m["weighted_per_user_loss"] == pytest.approx(110 / 390)
    assert m["auc"] == pytest.approx(auc(YT16_CLICKED, YT16_SCORES))
    assert m["gauc_groups"] == 2 and m["ndcg_groups"] == 3
    assert m["logloss"] == pytest.approx(math.log(2))  # p = 0.5 everywhere -> ln 2
    assert (m["n_rows"], m["n_groups"], m["n_positives"]) == (9, 3, 4)
    assert m["mean_watch_time"] == pytest.approx(1180 / 9)
    assert "logloss" not in ranking_metrics([1, 1], [1, 0], [5.0, 0.0], [0.2, 0.1], ks=(3,))


# ---------------------------------------------------------------------------- input errors


def test_input_errors_are_explained():
    with pytest.raises(ValueError, match="one value per impression; got lengths"):
        auc([1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only 0 and 1; row 1 is 2"):
        auc([1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="numeric 0/1"):
        auc(["yes", "no"], [0.1, 0.2])
    with pytest.raises(ValueError, match="scores has 1 NaN/inf"):
        auc([1, 0], [0.1, np.nan])
    with pytest.raises(ValueError, match="weights must be >= 0"):
        auc([1, 0], [0.1, 0.2], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="got 0 rows"):
        auc([], [])
    with pytest.raises(ValueError, match="must be 1-D"):
        auc([[1, 0]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="watch_time must be >= 0"):
        weighted_per_user_loss([1, 1], [1, 0], [-3.0, 0.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="groups has missing keys"):
        group_auc([1, 0], [0.1, 0.2], ["u1", None])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ndcg_at_k([1], [1.0], [0.1], 0)
    with pytest.raises(ValueError, match="ks is empty"):
        ranking_metrics([1], [1], [1.0], [0.1], ks=())
    with pytest.raises(ValueError, match="click probabilities in \\[0, 1\\]"):
        log_loss([1, 0], [0.5, 30.0])
    with pytest.raises(ValueError, match="eps must be in"):
        log_loss([1, 0], [0.5, 0.5], eps=0.0)
    with pytest.raises(ValueError, match="scores must be numeric"):
        ndcg_at_k([1], [1.0], ["high"], 1)
