"""Hand-computed checks of the candidate-generation losses (candidate_gen.losses)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vidrec.candidate_gen.losses import (
    in_batch_softmax_from_scores,
    in_batch_softmax_loss,
    log_q_from_counts,
    sampled_softmax_from_scores,
    sampled_softmax_loss,
    ssl_contrastive_loss,
)

torch.set_num_threads(1)

# Shared B=2, E=2 example.
U = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
POS = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
NEG = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
ZERO2 = torch.zeros(2)


def test_log_q_from_counts_hand_computed() -> None:
    # counts (3, 1, 0) + smoothing 1 -> (4, 2, 1) / 7
    got = log_q_from_counts(np.array([3, 1, 0]), smoothing=1.0)
    assert got.dtype == torch.float32
    expected = torch.tensor([math.log(4 / 7), math.log(2 / 7), math.log(1 / 7)])
    torch.testing.assert_close(got, expected)
    # tensor input, no smoothing: (1, 3) / 4; a zero count gives -inf (never sampled)
    got_t = log_q_from_counts(torch.tensor([1.0, 3.0, 0.0]), smoothing=0.0)
    torch.testing.assert_close(got_t[:2], torch.tensor([math.log(0.25), math.log(0.75)]))
    assert got_t[2] == float("-inf")


@pytest.mark.parametrize(
    ("counts", "smoothing", "exc", "match"),
    [
        (np.array([1, -2]), 1.0, ValueError, "must be >= 0; item position 1"),
        (np.zeros((2, 2)), 1.0, ValueError, "non-empty 1-D"),
        (np.array([], dtype=np.int64), 1.0, ValueError, "non-empty 1-D"),
        (np.array([1.0, np.nan]), 1.0, ValueError, "NaN or infinite"),
        (np.array([1, 2]), -1.0, ValueError, "smoothing must be"),
        (np.array([0, 0]), 0.0, ValueError, "use smoothing > 0"),
        (np.array(["a", "b"]), 1.0, TypeError, "numeric array"),
    ],
)
def test_log_q_from_counts_errors(counts, smoothing, exc, match) -> None:
    with pytest.raises(exc, match=match):
        log_q_from_counts(counts, smoothing=smoothing)


def test_sampled_softmax_hand_computed() -> None:
    # Row 0: pos 1*2 = 2; negs u0·(1,1) = 1, u0·(0,0) = 0 -> log(e^2 + e + 1) - 2 = 0.407606
    # Row 1: pos 2*1 = 2; negs u1·(1,1) = 2, 0            -> log(2e^2 + 1) - 2    = 0.758624
    got = sampled_softmax_loss(U, POS, NEG, ZERO2, ZERO2)
    assert got.shape == ()
    assert got.item() == pytest.approx((0.407606 + 0.758624) / 2, abs=1e-5)


def test_sampled_softmax_log_q_corrects_positive_and_negatives() -> None:
    # pos_log_q (-1, 0), neg_log_q (0, -1): logit = u·v - log q
    # Row 0: pos 2+1 = 3; negs 1-0 = 1, 0+1 = 1 -> log(e^3 + 2e) - 3    = 0.239545
    # Row 1: pos 2-0 = 2; negs 2-0 = 2, 0+1 = 1 -> log(2e^2 + e) - 2    = 0.861995
    got = sampled_softmax_loss(U, POS, NEG, torch.tensor([-1.0, 0.0]), torch.tensor([0.0, -1.0]))
    assert got.item() == pytest.approx((0.239545 + 0.861995) / 2, abs=1e-5)


def test_sampled_softmax_temperature() -> None:
    # temperature 0.5 doubles the dot products.
    # Row 0: pos 4; negs 2, 0 -> log(e^4 + e^2 + 1) - 4 = 0.142932
    # Row 1: pos 4; negs 4, 0 -> log(2e^4 + 1) - 4      = 0.702263
    got = sampled_softmax_loss(U, POS, NEG, ZERO2, ZERO2, temperature=0.5)
    assert got.item() == pytest.approx((0.142932 + 0.702263) / 2, abs=1e-5)


def test_sampled_softmax_removes_accidental_hits() -> None:
    # Row 1's positive is id 8, which is also negative 0: that negative leaves row 1's softmax.
    # Row 0 unchanged: 0.407606; row 1: log(e^2 + e^0) - 2 = 0.126928
    got = sampled_softmax_loss(
        U, POS, NEG, ZERO2, ZERO2, pos_ids=torch.tensor([7, 8]), neg_ids=torch.tensor([8, 9])
    )
    assert got.item() == pytest.approx((0.407606 + 0.126928) / 2, abs=1e-5)


def test_sampled_softmax_gradients_finite_with_masking() -> None:
    u = U.clone().requires_grad_(True)
    loss = sampled_softmax_loss(
        u, POS, NEG, ZERO2, ZERO2, pos_ids=torch.tensor([8, 8]), neg_ids=torch.tensor([8, 8])
    )
    # every negative is an accidental hit: the softmax holds only the positive -> loss 0
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature must be"),
        ({"pos_emb": torch.zeros(3, 2)}, ValueError, "pos_emb must have the shape"),
        ({"neg_emb": torch.zeros(2, 3)}, ValueError, "neg_emb must have embedding_dim 2"),
        ({"neg_emb": torch.zeros(0, 2), "neg_log_q": torch.zeros(0)}, ValueError, "no rows"),
        ({"user_emb": torch.zeros(2)}, ValueError, "user_emb must be 2-D"),
        ({"user_emb": np.zeros((2, 2))}, TypeError, "user_emb must be a torch.Tensor"),
        ({"pos_log_q": torch.zeros(3)}, ValueError, r"pos_log_q must have shape \(2,\)"),
        ({"neg_log_q": torch.zeros(1)}, ValueError, r"neg_log_q must have shape \(2,\)"),
        ({"pos_ids": torch.tensor([1, 2])}, ValueError, "pass both pos_ids and neg_ids"),
        (
            {"pos_ids": torch.tensor([1]), "neg_ids": torch.tensor([1, 2])},
            ValueError,
            r"pos_ids must have shape \(2,\)",
        ),
    ],
)
def test_sampled_softmax_errors(kwargs, exc, match) -> None:
    args = {
        "user_emb": U,
        "pos_emb": POS,
        "neg_emb": NEG,
        "pos_log_q": ZERO2,
        "neg_log_q": ZERO2,
    }
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        sampled_softmax_loss(**args)


def test_in_batch_hand_computed() -> None:
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # logits [[2, 0], [0, 1]]
    # row 0: log(e^2 + 1) - 2 = 0.126928; row 1: log(1 + e) - 1 = 0.313262
    got = in_batch_softmax_loss(u, v, ZERO2)
    assert got.item() == pytest.approx((0.126928 + 0.313262) / 2, abs=1e-5)
    # log q (-1, 0) -> logits [[3, 0], [1, 1]]
    # row 0: log(e^3 + 1) - 3 = 0.048587; row 1: log(e + e) - 1 = log 2 = 0.693147
    got_q = in_batch_softmax_loss(u, v, torch.tensor([-1.0, 0.0]))
    assert got_q.item() == pytest.approx((0.048587 + 0.693147) / 2, abs=1e-5)
    # temperature 2 halves the dot products: logits [[1, 0], [0, 0.5]]
    # row 0: log(e + 1) - 1 = 0.313262; row 1: log(1 + e^0.5) - 0.5 = 0.474077
    got_t = in_batch_softmax_loss(u, v, ZERO2, temperature=2.0)
    assert got_t.item() == pytest.approx((0.313262 + 0.474077) / 2, abs=1e-5)


def test_in_batch_masks_duplicate_items() -> None:
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # both rows watched item 5: each row's only other candidate is its own positive -> loss 0
    got = in_batch_softmax_loss(u, v, ZERO2, item_ids=torch.tensor([5, 5]))
    assert got.item() == pytest.approx(0.0, abs=1e-7)
    # distinct ids: nothing masked
    got_distinct = in_batch_softmax_loss(u, v, ZERO2, item_ids=torch.tensor([5, 6]))
    assert got_distinct.item() == pytest.approx((0.126928 + 0.313262) / 2, abs=1e-5)


def test_in_batch_equals_sampled_softmax_with_batch_negatives() -> None:
    # In-batch softmax is sampled softmax whose negatives are the batch's positives, with the
    # row's own positive removed as an accidental hit.
    g = torch.Generator().manual_seed(0)
    u = torch.randn(6, 4, generator=g)
    v = torch.randn(6, 4, generator=g)
    lq = torch.log_softmax(torch.randn(6, generator=g), dim=0)
    ids = torch.tensor([1, 2, 3, 2, 5, 6])
    a = in_batch_softmax_loss(u, v, lq, temperature=0.3, item_ids=ids)
    b = sampled_softmax_loss(u, v, v, lq, lq, temperature=0.3, pos_ids=ids, neg_ids=ids)
    torch.testing.assert_close(a, b)


def test_masked_negatives_leave_the_softmax_like_removed_columns() -> None:
    # A negative not servable at a row's time leaves that row's softmax: the loss equals the
    # loss over the row's servable negatives only (row by row).
    g = torch.Generator().manual_seed(1)
    u, pos = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    neg = torch.randn(5, 4, generator=g)
    lq_pos, lq_neg = -torch.rand(3, generator=g), -torch.rand(5, generator=g)
    mask = torch.tensor(
        [[True, False, True, True, False], [True] * 5, [False, False, True, False, False]]
    )
    got = sampled_softmax_from_scores(
        (u * pos).sum(1), u @ neg.T, lq_pos, lq_neg, temperature=0.5, neg_mask=mask
    )
    rows = [
        sampled_softmax_loss(
            u[b : b + 1], pos[b : b + 1], neg[mask[b]], lq_pos[b : b + 1], lq_neg[mask[b]],
            temperature=0.5,
        )
        for b in range(3)
    ]  # fmt: skip
    torch.testing.assert_close(got, torch.stack(rows).mean())
    # without a mask it is sampled_softmax_loss
    torch.testing.assert_close(
        sampled_softmax_from_scores((u * pos).sum(1), u @ neg.T, lq_pos, lq_neg, temperature=0.5),
        sampled_softmax_loss(u, pos, neg, lq_pos, lq_neg, temperature=0.5),
    )


def test_in_batch_from_scores_rank_slice_and_mask() -> None:
    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    lq = torch.log_softmax(torch.randn(6, generator=g), dim=0)
    ids = torch.tensor([1, 2, 3, 2, 5, 6])
    whole = in_batch_softmax_loss(u, v, lq, temperature=0.3, item_ids=ids)
    # two rank slices of 3 rows each, scored against the 6 positives: their mean is the whole
    halves = [
        in_batch_softmax_from_scores(
            u[r * 3 : (r + 1) * 3] @ v.T, lq, temperature=0.3, row_offset=r * 3, item_ids=ids
        )
        for r in (0, 1)
    ]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)
    # a mask removes unservable columns but never the row's own positive
    mask = torch.zeros(6, 6, dtype=torch.bool)
    got = in_batch_softmax_from_scores(u @ v.T, lq, temperature=0.3, item_ids=ids, mask=mask)
    assert got.item() == pytest.approx(0.0, abs=1e-7)  # each row is left with its positive
    mask[0, 4] = True
    one = in_batch_softmax_from_scores(u @ v.T, lq, temperature=0.3, mask=mask)
    logits = (u[0] @ v[[0, 4]].T) / 0.3 - lq[[0, 4]]
    want = (torch.logsumexp(logits, 0) - logits[0]) / 6  # rows 1..5 contribute 0
    torch.testing.assert_close(one, want)
    with pytest.raises(ValueError, match="row_offset must be in"):
        in_batch_softmax_from_scores(u[:3] @ v.T, lq, row_offset=4)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"item_emb": torch.zeros(3, 2)}, ValueError, "item_emb must have the shape"),
        ({"item_log_q": torch.zeros(3)}, ValueError, r"item_log_q must have shape \(2,\)"),
        ({"item_ids": torch.tensor([1])}, ValueError, r"item_ids must have shape \(2,\)"),
        ({"temperature": -1.0}, ValueError, "temperature must be"),
        (
            {"user_emb": torch.zeros(0, 2), "item_emb": torch.zeros(0, 2)},
            ValueError,
            "batch is empty",
        ),
    ],
)
def test_in_batch_errors(kwargs, exc, match) -> None:
    args = {"user_emb": U, "item_emb": POS, "item_log_q": ZERO2}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        in_batch_softmax_loss(**args)


def test_ssl_contrastive_hand_computed() -> None:
    # normalised: z1 -> [[1, 0], [0, 1]], z2 -> [[1, 0], [1/√2, 1/√2]]
    # cos [[1, 0.707107], [0, 0.707107]] / τ=0.5 -> [[2, 1.414214], [0, 1.414214]]
    # row 0: log(e^2 + e^1.414214) - 2 = 0.442548
    # row 1: log(1 + e^1.414214) - 1.414214 = 0.217622
    z1 = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    z2 = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    got = ssl_contrastive_loss(z1, z2, temperature=0.5)
    assert got.item() == pytest.approx((0.442548 + 0.217622) / 2, abs=1e-5)


def test_ssl_contrastive_is_scale_invariant_and_differentiable() -> None:
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(5, 3, generator=g, requires_grad=True)
    z2 = torch.randn(5, 3, generator=g)
    a = ssl_contrastive_loss(z1, z2)
    b = ssl_contrastive_loss(z1 * 7.0, z2 * 0.1)
    torch.testing.assert_close(a, b)
    a.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()


@pytest.mark.parametrize(
    ("z1", "z2", "temperature", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), 0.1, "same shape"),
        (torch.zeros(0, 3), torch.zeros(0, 3), 0.1, "SSL batch is empty"),
        (torch.zeros(2), torch.zeros(2), 0.1, "z1 must be 2-D"),
        (torch.ones(2, 3), torch.ones(2, 3), float("nan"), "temperature must be"),
    ],
)
def test_ssl_contrastive_errors(z1, z2, temperature, match) -> None:
    with pytest.raises(ValueError, match=match):
        ssl_contrastive_loss(z1, z2, temperature=temperature)
