"""Tests of the SSL augmentations (candidate_gen.ssl): MI, CFM/RFM masks, value dropout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

import vidrec.candidate_gen.ssl as ssl
from vidrec.candidate_gen.ssl import (
    apply_feature_mask,
    cfm_masks,
    multivalue_dropout,
    mutual_information,
    rfm_masks,
)

torch.set_num_threads(1)


def test_mutual_information_hand_computed() -> None:
    codes = np.array(
        [
            [0, 0, 0],
            [0, 1, 1],
            [1, 1, 0],
            [1, 1, 1],
        ]
    )
    mi = mutual_information(codes)
    # f0 = (0,0,1,1), f1 = (0,1,1,1): P(f0) = (1/2, 1/2), P(f1) = (1/4, 3/4),
    # joint (0,0) = 1/4, (0,1) = 1/4, (1,1) = 1/2
    # MI = 1/4 log(1/4 / (1/2·1/4)) + 1/4 log(1/4 / (1/2·3/4)) + 1/2 log(1/2 / (1/2·3/4))
    #    = 1/4 log 2 + 1/4 log(2/3) + 1/2 log(4/3) = 0.173287 - 0.101366 + 0.143841 = 0.215762
    assert mi[0, 1] == pytest.approx(0.215762, abs=1e-6)
    assert mi[1, 0] == mi[0, 1]
    # f2 = (0,1,0,1) is independent of f0: every joint cell is 1/4 = 1/2·1/2 -> MI 0
    assert mi[0, 2] == pytest.approx(0.0, abs=1e-12)
    # diagonal = entropies: H(f0) = log 2 = 0.693147; H(f1) = 1/4 log 4 + 3/4 log(4/3) = 0.562335
    assert mi[0, 0] == pytest.approx(0.693147, abs=1e-6)
    assert mi[1, 1] == pytest.approx(0.562335, abs=1e-6)
    assert mi[1, 2] == pytest.approx(mutual_info_score(codes[:, 1], codes[:, 2]), abs=1e-12)


@pytest.mark.parametrize("force_sparse", [False, True])
def test_mutual_information_matches_sklearn(force_sparse: bool, monkeypatch) -> None:
    if force_sparse:
        monkeypatch.setattr(ssl, "_DENSE_CONTINGENCY_MAX_CELLS", 0)
    rng = np.random.default_rng(0)
    n = 300
    a = rng.integers(0, 40, n)
    b = (a // 4 + rng.integers(0, 2, n)) * 1000 - 7  # correlated with a, sparse negative codes
    c = rng.integers(-3, 3, n)  # independent
    codes = np.stack([a, b, c], axis=1)
    mi = mutual_information(codes)
    for i in range(3):
        for j in range(3):
            assert mi[i, j] == pytest.approx(mutual_info_score(codes[:, i], codes[:, j]), abs=1e-10)
    np.testing.assert_allclose(mi, mi.T)
    assert mi[0, 1] > mi[0, 2]


@pytest.mark.parametrize(
    ("codes", "exc", "match"),
    [
        (np.zeros(3, dtype=np.int64), ValueError, "2-D array"),
        (np.zeros((0, 2), dtype=np.int64), ValueError, "at least one item"),
        (np.zeros((3, 2), dtype=np.float64), TypeError, "integer category codes"),
    ],
)
def test_mutual_information_errors(codes, exc, match) -> None:
    with pytest.raises(exc, match=match):
        mutual_information(codes)


def _block_mi() -> np.ndarray:
    # features {0, 1} strongly related, {2, 3} strongly related, weak across the blocks
    return np.array(
        [
            [1.0, 0.9, 0.1, 0.0],
            [0.9, 1.0, 0.0, 0.1],
            [0.1, 0.0, 1.0, 0.8],
            [0.0, 0.1, 0.8, 1.0],
        ]
    )


def test_cfm_masks_group_correlated_features() -> None:
    g = torch.Generator().manual_seed(0)
    seen: dict[tuple[int, ...], int] = {}
    for _ in range(200):
        m1, m2 = cfm_masks(_block_mi(), g)
        assert m1.dtype == torch.bool and m1.shape == (4,)
        assert torch.equal(m2, ~m1)
        key = tuple(torch.nonzero(m1).squeeze(1).tolist())
        seen[key] = seen.get(key, 0) + 1
    # Whatever the seed, it is masked together with its partner: {0, 1} or {2, 3},
    # each about half the time (uniform seed; binomial(200, 1/2) is within 100 ± 30 w.p. >0.9999).
    assert set(seen) == {(0, 1), (2, 3)}
    assert 70 <= seen[(0, 1)] <= 130


def test_cfm_masks_odd_count_and_ties_and_determinism() -> None:
    mi = np.zeros((5, 5))  # all ties: the masked half is random, of size ceil(5/2) = 3
    g = torch.Generator().manual_seed(3)
    subsets = set()
    for _ in range(50):
        m1, m2 = cfm_masks(torch.from_numpy(mi), g)
        assert int(m1.sum()) == 3 and int(m2.sum()) == 2
        subsets.add(tuple(m1.tolist()))
    assert len(subsets) > 3
    a = cfm_masks(_block_mi(), torch.Generator().manual_seed(11))
    b = cfm_masks(_block_mi(), torch.Generator().manual_seed(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    ("mi", "exc", "match"),
    [
        (np.zeros((2, 3)), ValueError, "square"),
        (np.zeros((1, 1)), ValueError, "at least 2 item features"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), ValueError, "NaN or infinite"),
    ],
)
def test_cfm_masks_errors(mi, exc, match) -> None:
    with pytest.raises(exc, match=match):
        cfm_masks(mi, torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="torch.Generator"):
        cfm_masks(np.zeros((3, 3)), np.random.default_rng(0))  # type: ignore[arg-type]


def test_rfm_masks() -> None:
    g = torch.Generator().manual_seed(0)
    subsets = set()
    for _ in range(50):
        m1, m2 = rfm_masks(7, g)
        assert int(m1.sum()) == math.ceil(7 / 2) == 4
        assert torch.equal(m2, ~m1)
        subsets.add(tuple(m1.tolist()))
    assert len(subsets) > 10  # C(7, 4) = 35 possible halves
    a = rfm_masks(6, torch.Generator().manual_seed(5))[0]
    b = rfm_masks(6, torch.Generator().manual_seed(5))[0]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="at least 2 item features"):
        rfm_masks(1, g)


def test_multivalue_dropout_extremes_and_rate() -> None:
    ids = torch.tensor([[3, 4, 5], [6, 0, 0], [0, 0, 0]])
    mask = ids != 0
    g = torch.Generator().manual_seed(0)
    assert torch.equal(multivalue_dropout(ids, mask, 0.0, g), mask)
    # p = 1 drops every value: all bags become empty
    assert not multivalue_dropout(ids, mask, 1.0, g).any()
    # keep_at_least_one: the non-empty rows keep exactly one originally present value
    kept = multivalue_dropout(ids, mask, 1.0, g, keep_at_least_one=True)
    assert kept.sum(dim=1).tolist() == [1, 1, 0]
    assert not (kept & ~mask).any()
    # rate: 10_000 present values, p = 0.3 -> about 7_000 kept (binomial sd ≈ 46)
    big_ids = torch.ones(100, 100, dtype=torch.long)
    big = multivalue_dropout(big_ids, big_ids > 0, 0.3, torch.Generator().manual_seed(1))
    assert 6800 <= int(big.sum()) <= 7200
    # input mask is not modified, result is deterministic for a seeded generator
    m = torch.ones(4, 5, dtype=torch.bool)
    a = multivalue_dropout(m.long(), m, 0.5, torch.Generator().manual_seed(2))
    b = multivalue_dropout(m.long(), m, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and m.all()


def test_multivalue_dropout_keep_one_is_uniform() -> None:
    # one row with 3 present values, all dropped: the survivor is each value ~1/3 of the time
    ids = torch.tensor([[1, 2, 3, 0]])
    mask = ids != 0
    g = torch.Generator().manual_seed(0)
    picks = torch.stack(
        [multivalue_dropout(ids, mask, 1.0, g, keep_at_least_one=True)[0] for _ in range(300)]
    )
    counts = picks.sum(dim=0).tolist()
    assert counts[3] == 0 and sum(counts) == 300
    assert all(70 <= c <= 130 for c in counts[:3])


@pytest.mark.parametrize(
    ("ids", "mask", "p", "exc", "match"),
    [
        (
            torch.zeros(3, dtype=torch.long),
            torch.zeros(3, dtype=torch.bool),
            0.1,
            ValueError,
            "2-D",
        ),
        (
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2, 2, dtype=torch.bool),
            0.1,
            ValueError,
            "shape of ids",
        ),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), 0.1, TypeError, "bool tensor"),
        (
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2, 3, dtype=torch.bool),
            1.5,
            ValueError,
            r"in \[0, 1\]",
        ),
        (np.zeros((2, 3)), torch.zeros(2, 3, dtype=torch.bool), 0.1, TypeError, "torch.Tensors"),
    ],
)
def test_multivalue_dropout_errors(ids, mask, p, exc, match) -> None:
    with pytest.raises(exc, match=match):
        multivalue_dropout(ids, mask, p, torch.Generator().manual_seed(0))


def test_apply_feature_mask() -> None:
    emb = torch.arange(12, dtype=torch.float32).view(2, 3, 2)  # (N=2, F=3, E=2)
    default = torch.full((3, 2), -1.0, requires_grad=True)
    mask = torch.tensor([False, True, False])
    out = apply_feature_mask(emb, mask, default)
    expected = torch.tensor(
        [
            [[0.0, 1.0], [-1.0, -1.0], [4.0, 5.0]],
            [[6.0, 7.0], [-1.0, -1.0], [10.0, 11.0]],
        ]
    )
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    # only the masked feature's default receives gradient: 2 items -> 2 per component
    torch.testing.assert_close(default.grad, torch.tensor([[0.0, 0.0], [2.0, 2.0], [0.0, 0.0]]))


@pytest.mark.parametrize(
    ("emb", "mask", "default", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(3, dtype=torch.bool), torch.zeros(3, 2), "3-D"),
        (
            torch.zeros(2, 3, 2),
            torch.zeros(2, dtype=torch.bool),
            torch.zeros(3, 2),
            r"shape \(3,\)",
        ),
        (torch.zeros(2, 3, 2), torch.zeros(3), torch.zeros(3, 2), "bool tensor"),
        (torch.zeros(2, 3, 2), torch.zeros(3, dtype=torch.bool), torch.zeros(3, 4), r"\(3, 2\)"),
    ],
)
def test_apply_feature_mask_errors(emb, mask, default, match) -> None:
    with pytest.raises(ValueError, match=match):
        apply_feature_mask(emb, mask, default)
