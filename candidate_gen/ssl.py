"""Two-stage feature augmentation for the SSL-regularised item tower (SPEC §3, [SSL21]).

Where it sits: the item tower embeds an item's F categorical/bucketed features into a
(N, F, E) tensor; before pooling, an SSL batch is augmented twice and the two views feed
`candidate_gen.losses.ssl_contrastive_loss`.

1. Masking into complementary halves. A mask is a bool tensor of shape (F,) where True means
   "this feature is masked in this view": `apply_feature_mask` replaces it by a learned
   per-feature default embedding. `rfm_masks` (Random Feature Masking) draws the halves at
   random; `cfm_masks` (Correlated Feature Masking) masks a uniformly drawn seed feature with
   the features most correlated with it, measured by `mutual_information` over the catalog,
   so the two views cannot trivially predict each other from correlated features.
2. Dropout of multi-valued features (`multivalue_dropout`): each present value of a bag
   (topics, title tokens) is dropped with probability p.

All randomness comes from an explicit `torch.Generator`; nothing reads global RNG state.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "mutual_information",
    "cfm_masks",
    "rfm_masks",
    "multivalue_dropout",
    "apply_feature_mask",
]

# Above this many cells, a pair's contingency table is counted by sorting pair codes
# (np.unique) instead of a dense np.bincount, so id-like features with huge cardinality
# cannot allocate K_i × K_j counters.
_DENSE_CONTINGENCY_MAX_CELLS = 1 << 22


def _entropy_from_counts(counts: np.ndarray, n: int) -> float:
    p = counts / n
    return float(-(p * np.log(p)).sum())


def mutual_information(codes: np.ndarray) -> np.ndarray:
    """Return the (F, F) matrix of pairwise mutual information (nats) between feature columns.

    `codes[n, f]` is item n's value of categorical feature f, as any integers (a missing value
    is simply one more category, e.g. 0 or -1). With empirical probabilities over the N items,
        MI(V_i, V_j) = Σ_{a,b} P(a, b) · log[P(a, b) / (P(a) P(b))],
    computed from contingency counts of the pair codes. The matrix is symmetric and its
    diagonal is each feature's entropy H(V_i) = MI(V_i, V_i). Natural log, so the values equal
    `sklearn.metrics.mutual_info_score`.
    """
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"codes must be a 2-D array (items, features), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise TypeError(
            f"codes must hold integer category codes, got dtype {arr.dtype}; encode each "
            "categorical feature with a vocabulary first (features.vocab)"
        )
    n, f = arr.shape
    if n == 0 or f == 0:
        raise ValueError(
            f"codes must have at least one item and one feature, got shape {arr.shape}"
        )

    dense: list[np.ndarray] = []
    card: list[int] = []
    log_marg: list[np.ndarray] = []
    out = np.zeros((f, f), dtype=np.float64)
    for j in range(f):
        _, inv, cnt = np.unique(arr[:, j], return_inverse=True, return_counts=True)
        dense.append(inv.reshape(-1).astype(np.int64))
        card.append(len(cnt))
        log_marg.append(np.log(cnt / n))
        out[j, j] = _entropy_from_counts(cnt, n)

    for i in range(f):
        for j in range(i + 1, f):
            a, b = dense[i], dense[j]
            key = a * card[j] + b  # (N,) one code per observed (a, b) pair
            cells = card[i] * card[j]
            if cells <= max(_DENSE_CONTINGENCY_MAX_CELLS, n):
                joint = np.bincount(key, minlength=cells)
                keys = np.flatnonzero(joint)
                joint = joint[keys]
            else:
                keys, joint = np.unique(key, return_counts=True)
            p = joint / n
            ka, kb = np.divmod(keys, card[j])
            mi = float((p * (np.log(p) - log_marg[i][ka] - log_marg[j][kb])).sum())
            # Rounding can leave a tiny negative for independent features; MI is >= 0.
            out[i, j] = out[j, i] = max(mi, 0.0)
    return out


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator (seeded once per run), got {type(generator).__name__}"
        )


def cfm_masks(
    mi: np.ndarray | torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return two complementary bool masks (F,) by Correlated Feature Masking (True = masked).

    A seed feature is drawn uniformly; the first mask holds the seed and the ceil(F/2) − 1
    other features with the highest mutual information with it (ties broken at random by
    `generator`); the second mask is the complement. Masks live on the generator's device.
    """
    _check_generator(generator)
    m = torch.as_tensor(np.asarray(mi) if not isinstance(mi, torch.Tensor) else mi)
    m = m.detach().to(device="cpu", dtype=torch.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"mi must be a square (F, F) matrix, got shape {tuple(m.shape)}")
    f = m.shape[0]
    if f < 2:
        raise ValueError(
            f"complementary masking needs at least 2 item features, got {f}; "
            "add features to the item tower or disable SSL"
        )
    if not torch.isfinite(m).all():
        raise ValueError("mi contains NaN or infinite values; recompute it with mutual_information")
    device = generator.device
    seed = int(torch.randint(f, (1,), generator=generator, device=device).item())
    score = m[seed].clone()  # (F,) MI of every feature with the seed
    score[seed] = math.inf  # the seed itself is always masked
    # A random permutation followed by a stable sort breaks MI ties at random.
    perm = torch.randperm(f, generator=generator, device=device).cpu()
    order = perm[torch.sort(score[perm], descending=True, stable=True).indices]
    first = torch.zeros(f, dtype=torch.bool)
    first[order[: math.ceil(f / 2)]] = True
    first = first.to(device)
    return first, ~first


def rfm_masks(n_features: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return two complementary bool masks (F,) by Random Feature Masking (True = masked).

    The first mask holds a uniformly random subset of ceil(F/2) features, the second the rest.
    """
    _check_generator(generator)
    if not isinstance(n_features, int | np.integer) or n_features < 2:
        raise ValueError(
            f"complementary masking needs at least 2 item features, got n_features={n_features!r}"
        )
    f = int(n_features)
    perm = torch.randperm(f, generator=generator, device=generator.device)
    first = torch.zeros(f, dtype=torch.bool, device=generator.device)
    first[perm[: math.ceil(f / 2)]] = True
    return first, ~first


def multivalue_dropout(
    ids: torch.Tensor,
    mask: torch.Tensor,
    p: float,
    generator: torch.Generator,
    *,
    keep_at_least_one: bool = False,
) -> torch.Tensor:
    """Return a new presence mask (N, T) in which each present value was dropped with prob. p.

    `ids` (N, T) are the padded value ids of a multi-valued feature and `mask` (N, T) says
    which positions hold a value; only `mask` decides presence, `ids` fixes the expected shape
    and device. The ids themselves are not changed: the tower mean-pools over the new mask.

    When every value of a row is dropped, the row becomes an empty bag by default — exactly
    like an item that has no value for this feature, which the tower must already handle (its
    pooled embedding is the empty-bag embedding). With `keep_at_least_one=True`, such a row
    instead keeps one of its originally present values, chosen uniformly by `generator`.
    Rows that were empty to begin with stay empty.
    """
    _check_generator(generator)
    if not isinstance(ids, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise TypeError("ids and mask must be torch.Tensors of shape (N, T)")
    if ids.ndim != 2:
        raise ValueError(f"ids must be 2-D (items, values), got shape {tuple(ids.shape)}")
    if mask.shape != ids.shape:
        raise ValueError(
            f"mask must have the shape of ids {tuple(ids.shape)}, got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
        raise ValueError(f"dropout probability p must be in [0, 1], got {p!r}")
    u = torch.rand(ids.shape, generator=generator, device=generator.device).to(mask.device)
    kept = mask & (u >= p)  # (N, T); u in [0, 1), so p = 0 keeps everything, p = 1 nothing
    if keep_at_least_one:
        emptied = mask.any(dim=1) & ~kept.any(dim=1)  # (N,)
        if bool(emptied.any()):
            # The present position with the largest fresh uniform draw is a uniform choice.
            r = torch.rand(ids.shape, generator=generator, device=generator.device)
            r = r.to(mask.device).masked_fill(~mask, -1.0)
            pick = r.argmax(dim=1)  # (N,)
            rows = torch.nonzero(emptied).squeeze(1)
            kept[rows, pick[rows]] = True
    return kept


def apply_feature_mask(
    feature_emb: torch.Tensor, mask: torch.Tensor, default_emb: torch.Tensor
) -> torch.Tensor:
    """Return feature_emb (N, F, E) with every masked feature f replaced by default_emb[f].

    `mask` (F,) is True for the features this view hides; `default_emb` (F, E) holds the
    learned default embeddings (an `nn.Parameter`), which receive the gradient of the masked
    positions while the unmasked positions keep theirs.
    """
    if feature_emb.ndim != 3:
        raise ValueError(
            f"feature_emb must be 3-D (items, features, dim), got shape {tuple(feature_emb.shape)}"
        )
    _, f, e = feature_emb.shape
    if mask.shape != (f,) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape ({f},), got {mask.dtype} {tuple(mask.shape)}"
        )
    if default_emb.shape != (f, e):
        raise ValueError(f"default_emb must have shape ({f}, {e}), got {tuple(default_emb.shape)}")
    m = mask.to(feature_emb.device).view(1, f, 1)  # (1, F, 1)
    return torch.where(m, default_emb.unsqueeze(0).to(feature_emb.dtype), feature_emb)
