"""Training objectives of the candidate generator (SPEC §2, §3): pure torch functions.

Every loss here is a mean-reduced scalar over the rows of its batch and has no state, so the
towers (`candidate_gen.towers`) and the training loop (`candidate_gen.train`) stay separate
from the objective, and each objective can be tested against hand-computed numbers.

- `sampled_softmax_loss`: the positive against explicitly sampled negatives [YT16 §3].
- `in_batch_softmax_loss`: the other positives of the batch are the negatives (two-tower).
- Both apply the logQ correction of [LOGQ19]: logit = u·v / temperature − log q(v), where q(v)
  is the probability that the sampler proposes v (`log_q_from_counts` estimates it from item
  frequencies). Without it, popular items are over-represented among negatives and the model
  learns to under-score them.
- `ssl_contrastive_loss`: the SSL21 contrastive loss L_self between two augmented views.
- `sampled_softmax_from_scores` / `in_batch_softmax_from_scores`: the same two softmaxes from
  precomputed dot products, for a trainer whose item vectors differ per row (an item's
  upload age is taken at each example's time); both take a mask of the candidates servable to
  each row, and a masked candidate leaves that row's softmax like an accidental hit does.
  Removing a candidate from a row is consistent with the logQ correction: restricted to the
  servable items the proposal is q_j / Q(row) for every candidate of the row, the positive
  included, and a constant shift of a row's logits does not change its softmax.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "log_q_from_counts",
    "sampled_softmax_loss",
    "sampled_softmax_from_scores",
    "in_batch_softmax_loss",
    "in_batch_softmax_from_scores",
    "ssl_contrastive_loss",
]


def log_q_from_counts(counts: np.ndarray | torch.Tensor, smoothing: float = 1.0) -> torch.Tensor:
    """Return log p_j with p_j = (c_j + s) / Σ_k (c_k + s), as a float32 tensor of shape (V,).

    `counts[j]` is how often item j occurs in the training labels (the sampling distribution of
    in-batch negatives is the label distribution). Additive smoothing `s` keeps items with no
    training watch at a finite log-probability.
    """
    if isinstance(counts, torch.Tensor):
        c = counts.detach().to(device="cpu", dtype=torch.float64)
    else:
        arr = np.asarray(counts)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(
                f"counts must be a numeric array of item frequencies, got dtype {arr.dtype}"
            )
        c = torch.from_numpy(arr.astype(np.float64, copy=False))
    if c.ndim != 1 or c.numel() == 0:
        raise ValueError(
            f"counts must be a non-empty 1-D array (one count per item), got shape {tuple(c.shape)}"
        )
    if not torch.isfinite(c).all():
        raise ValueError("counts contains NaN or infinite values; pass finite item frequencies")
    if (c < 0).any():
        first = int(torch.nonzero(c < 0)[0, 0])
        raise ValueError(f"counts must be >= 0; item position {first} has count {float(c[first])}")
    if not np.isfinite(smoothing) or smoothing < 0:
        raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing}")
    smoothed = c + float(smoothing)  # (V,)
    total = smoothed.sum()
    if total <= 0:
        raise ValueError(
            "all counts are 0 and smoothing is 0, so no sampling probability can be estimated; "
            "use smoothing > 0"
        )
    # log(0) = -inf for zero-count items when smoothing == 0: such items are never sampled.
    log_q = torch.log(smoothed) - torch.log(total)
    out_device = counts.device if isinstance(counts, torch.Tensor) else torch.device("cpu")
    return log_q.to(device=out_device, dtype=torch.float32)


def _check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, int | float) and np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_2d(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, embedding_dim), got shape {tuple(t.shape)}")


def _check_1d(name: str, t: torch.Tensor, n: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")


def sampled_softmax_loss(
    user_emb: torch.Tensor,
    pos_emb: torch.Tensor,
    neg_emb: torch.Tensor,
    pos_log_q: torch.Tensor,
    neg_log_q: torch.Tensor,
    *,
    temperature: float = 1.0,
    pos_ids: torch.Tensor | None = None,
    neg_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the mean sampled-softmax cross-entropy of each positive against shared negatives.

    Row b scores its positive and the S negatives shared by the batch:
        logit_b,j = user_emb[b] · v_j / temperature − log q_j,
    and the loss is −log softmax(logits_b)[positive]. The positive's logit is corrected by its
    own log q too: that is the standard [LOGQ19] practice, and it makes the sampled softmax an
    unbiased-in-the-limit estimate of the full softmax when the positive can also be drawn as a
    negative (subtracting log q from every candidate of the row, positive included, is what the
    correction derives from; correcting only the negatives would over-score popular positives).

    When `pos_ids` (B,) and `neg_ids` (S,) are given, a negative whose id equals the row's
    positive id (an accidental hit) is removed from that row's softmax.
    """
    _check_temperature(temperature)
    _check_2d("user_emb", user_emb)
    _check_2d("pos_emb", pos_emb)
    _check_2d("neg_emb", neg_emb)
    b, e = user_emb.shape
    s = neg_emb.shape[0]
    if pos_emb.shape != (b, e):
        raise ValueError(
            f"pos_emb must have the shape of user_emb {(b, e)}, got {tuple(pos_emb.shape)}"
        )
    if neg_emb.shape[1] != e:
        raise ValueError(
            f"neg_emb must have embedding_dim {e} like user_emb, got shape {tuple(neg_emb.shape)}"
        )
    if s == 0:
        raise ValueError("neg_emb has no rows; sample at least one negative")
    _check_1d("pos_log_q", pos_log_q, b)
    _check_1d("neg_log_q", neg_log_q, s)
    if (pos_ids is None) != (neg_ids is None):
        raise ValueError(
            "pass both pos_ids and neg_ids to remove accidental hits, or neither of them"
        )

    return sampled_softmax_from_scores(
        (user_emb * pos_emb).sum(dim=1),
        user_emb @ neg_emb.T,
        pos_log_q,
        neg_log_q,
        temperature=temperature,
        pos_ids=pos_ids,
        neg_ids=neg_ids,
    )


def sampled_softmax_from_scores(
    pos_scores: torch.Tensor,
    neg_scores: torch.Tensor,
    pos_log_q: torch.Tensor,
    neg_log_q: torch.Tensor,
    *,
    temperature: float = 1.0,
    pos_ids: torch.Tensor | None = None,
    neg_ids: torch.Tensor | None = None,
    neg_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return `sampled_softmax_loss` from the dot products: `pos_scores` (B,) of each row with
    its positive, `neg_scores` (B, S) of each row with each shared negative.

    `neg_mask` (B, S) bool, when given, says which negatives row b may use (True = servable at
    the row's time); the others leave the row's softmax, as accidental hits do.
    """
    _check_temperature(temperature)
    if not isinstance(neg_scores, torch.Tensor) or neg_scores.ndim != 2:
        raise ValueError("neg_scores must be a 2-D tensor (rows, negatives)")
    b, s = neg_scores.shape
    if s == 0:
        raise ValueError("neg_scores has no columns; sample at least one negative")
    _check_1d("pos_scores", pos_scores, b)
    _check_1d("pos_log_q", pos_log_q, b)
    _check_1d("neg_log_q", neg_log_q, s)
    if (pos_ids is None) != (neg_ids is None):
        raise ValueError(
            "pass both pos_ids and neg_ids to remove accidental hits, or neither of them"
        )
    pos_logit = pos_scores / temperature - pos_log_q  # (B,)
    neg_logits = neg_scores / temperature - neg_log_q.unsqueeze(0)  # (B, S)
    drop = None
    if pos_ids is not None and neg_ids is not None:
        _check_1d("pos_ids", pos_ids, b)
        _check_1d("neg_ids", neg_ids, s)
        drop = pos_ids.unsqueeze(1) == neg_ids.unsqueeze(0)  # (B, S) accidental hits
    if neg_mask is not None:
        if neg_mask.shape != (b, s) or neg_mask.dtype != torch.bool:
            raise ValueError(f"neg_mask must be a bool tensor of shape ({b}, {s})")
        drop = ~neg_mask if drop is None else drop | ~neg_mask
    if drop is not None:
        neg_logits = neg_logits.masked_fill(drop, float("-inf"))
    logits = torch.cat([pos_logit.unsqueeze(1), neg_logits], dim=1)  # (B, 1 + S)
    # The positive sits in column 0 and is never masked, so every row has a finite logsumexp.
    return (torch.logsumexp(logits, dim=1) - pos_logit).mean()


def in_batch_softmax_loss(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    item_log_q: torch.Tensor,
    *,
    temperature: float = 1.0,
    item_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the mean in-batch softmax cross-entropy; row b's positive is item_emb[b].

    The B×B logits are user_emb[b] · item_emb[j] / temperature − item_log_q[j]: the other rows'
    positives are row b's negatives, corrected by their sampling log-probability [LOGQ19] (they
    were "sampled" from the label distribution). The diagonal is corrected as well, as in
    `sampled_softmax_loss`. When `item_ids` (B,) is given, an off-diagonal entry whose item is the
    same as row b's positive (the same video twice in a batch) is removed from row b's softmax,
    so the model is not pushed to score its own positive below itself.
    """
    _check_temperature(temperature)
    _check_2d("user_emb", user_emb)
    _check_2d("item_emb", item_emb)
    if item_emb.shape != user_emb.shape:
        raise ValueError(
            f"item_emb must have the shape of user_emb {tuple(user_emb.shape)}, "
            f"got {tuple(item_emb.shape)}"
        )
    b = user_emb.shape[0]
    if b == 0:
        raise ValueError("the batch is empty; in-batch softmax needs at least one row")
    _check_1d("item_log_q", item_log_q, b)

    return in_batch_softmax_from_scores(
        user_emb @ item_emb.T, item_log_q, temperature=temperature, item_ids=item_ids
    )


def in_batch_softmax_from_scores(
    scores: torch.Tensor,
    item_log_q: torch.Tensor,
    *,
    temperature: float = 1.0,
    row_offset: int = 0,
    item_ids: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return `in_batch_softmax_loss` from the dot products `scores` (b, B) of b rows with the
    B positives of the (global) batch; row i's own positive is column `row_offset + i` (a
    data-parallel rank's rows are a slice of the global batch).

    With `item_ids` (B,), a column holding row i's positive item elsewhere leaves row i's
    softmax; with `mask` (b, B) bool (True = servable at the row's time), so does every
    False column other than the row's own positive.
    """
    _check_temperature(temperature)
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise ValueError("scores must be a 2-D tensor (rows, batch positives)")
    b, n = scores.shape
    if b == 0:
        raise ValueError("the batch is empty; in-batch softmax needs at least one row")
    if not 0 <= row_offset <= n - b:
        raise ValueError(
            f"row_offset must be in [0, {n - b}] for {b} rows of {n}, got {row_offset}"
        )
    _check_1d("item_log_q", item_log_q, n)
    logits = scores / temperature - item_log_q.unsqueeze(0)  # (b, B)
    labels = torch.arange(row_offset, row_offset + b, device=logits.device)  # (b,)
    own = torch.zeros((b, n), dtype=torch.bool, device=logits.device)
    own[torch.arange(b, device=logits.device), labels] = True
    drop = None
    if item_ids is not None:
        _check_1d("item_ids", item_ids, n)
        same = item_ids[labels].unsqueeze(1) == item_ids.unsqueeze(0)  # (b, B)
        drop = same & ~own
    if mask is not None:
        if mask.shape != (b, n) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape ({b}, {n})")
        unservable = ~mask & ~own
        drop = unservable if drop is None else drop | unservable
    if drop is not None:
        logits = logits.masked_fill(drop, float("-inf"))
    return F.cross_entropy(logits, labels)


def ssl_contrastive_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Return L_self of SPEC §3: mean −log softmax_j(cos(z1_i, z2_j)/τ) at j = i.

    z1[i] and z2[i] are the two views of item i; the other items' second views are the
    negatives. Both are L2-normalised inside, so the similarity is the cosine. With identical
    (identity-augmented) inputs this is the spread-out regulariser baseline.
    """
    _check_temperature(temperature)
    _check_2d("z1", z1)
    _check_2d("z2", z2)
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[0] == 0:
        raise ValueError("the SSL batch is empty; pass at least one item")
    a = F.normalize(z1, dim=1)  # (N, D)
    c = F.normalize(z2, dim=1)  # (N, D)
    logits = a @ c.T / temperature  # (N, N)
    labels = torch.arange(a.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)
