"""The deep ranker (SPEC §5, [YT16] §4): embeddings + normalized continuous features -> ReLU
tower -> one logit, trained by watch-time-weighted logistic regression.

Where this sits: `features.ranker_features` gives integer codes and raw continuous features,
`ranking.train` normalizes them and batches them as `RankerBatch`; this module holds only the
network (`DeepRanker`), the objective (`weighted_logistic_loss`, a pure function) and the
serving transform (`expected_watch_time`).

Why exp(logit) is a watch time: with positives weighted by their watch time T_i and negatives by
1, the odds the model learns are Σ T_i / (N - k) (k clicks among N impressions), which is
E[T] (1 + P) ≈ E[T] when the click probability P is small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from vidrec.common.torch_utils import mean_bag
from vidrec.ranking.config import WEIGHTINGS

#: Embedding tables of the ranker; the scored item and the watched bag share "item", the user
#: and item language share "language".
EMBEDDING_SPACES: tuple[str, ...] = ("item", "language", "channel", "topic", "source")
#: The optional table of the items' extra categorical and multi-valued columns (a mean-pooled
#: bag), built only when `vocab_sizes` has it.
ATTRIBUTE_SPACE = "attribute"


@dataclass
class RankerBatch:
    """One batch of ranker inputs (0 = padding/OOV in every code tensor).

    item            (B,) int64 scored item codes
    history         (B, L) int64 watched-bag item codes, 0-padded
    user_language   (B,) int64
    item_language   (B,) int64
    channel         (B,) int64
    topics          (B, T) int64 topic codes, 0-padded
    source          (B,) int64 candidate source codes
    dense           (B, D) float32 normalized continuous features (+ 0/1 flags); D may be 0
    history_row     None, or (B,) int64: then `history` holds U distinct bags (U, L) and row b
                    takes bag history_row[b] (scoring one user's candidates: one bag, not 500)
    attributes      None, or (B, A) int64 codes of the item's extra columns, 0-padded
    """

    item: torch.Tensor
    history: torch.Tensor
    user_language: torch.Tensor
    item_language: torch.Tensor
    channel: torch.Tensor
    topics: torch.Tensor
    source: torch.Tensor
    dense: torch.Tensor
    history_row: torch.Tensor | None = None
    attributes: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> RankerBatch:
        """Return the batch with every tensor moved to `device`."""
        moved = {}
        for name in self.__dataclass_fields__:
            t = getattr(self, name)
            moved[name] = None if t is None else t.to(device, non_blocking=True)
        return RankerBatch(**moved)

    def __len__(self) -> int:
        return int(self.item.shape[0])



class DeepRanker(nn.Module):
    """Returns one logit per impression; exp(logit) is the expected watch time.

    vocab_sizes / embedding_widths: per space in EMBEDDING_SPACES (rows incl. code 0), and
    ATTRIBUTE_SPACE when the items have extra columns (one more mean-pooled input).
    n_dense: width of `RankerBatch.dense` (ignored, and not read, when use_continuous=False).
    hidden: ReLU layer widths; () gives a linear model over the concatenated inputs.
    dropout: probability of zeroing each hidden unit during training (after every ReLU; 0 = off).
    """

    def __init__(
        self,
        vocab_sizes: Mapping[str, int],
        embedding_widths: Mapping[str, int],
        n_dense: int,
        hidden: Sequence[int] = (1024, 512, 256),
        *,
        use_continuous: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"DeepRanker: dropout must be in [0, 1), got {dropout}")
        missing = [s for s in EMBEDDING_SPACES if s not in vocab_sizes or s not in embedding_widths]
        if missing:
            raise ValueError(
                f"DeepRanker: vocab_sizes and embedding_widths need the spaces {missing}"
            )
        if n_dense < 0:
            raise ValueError(f"DeepRanker: n_dense must be >= 0, got {n_dense}")
        self.spaces = EMBEDDING_SPACES + (
            (ATTRIBUTE_SPACE,)
            if ATTRIBUTE_SPACE in vocab_sizes and ATTRIBUTE_SPACE in embedding_widths
            else ()
        )
        self.vocab_sizes = {s: int(vocab_sizes[s]) for s in self.spaces}
        self.embedding_widths = {s: int(embedding_widths[s]) for s in self.spaces}
        self.n_dense = int(n_dense)
        self.hidden = tuple(int(h) for h in hidden)
        self.use_continuous = bool(use_continuous)
        self.dropout = float(dropout)
        self.embeddings = nn.ModuleDict(
            {
                s: nn.Embedding(self.vocab_sizes[s], self.embedding_widths[s], padding_idx=0)
                for s in self.spaces
            }
        )
        for s in self.spaces:
            # small init keeps the first logits near 0; row 0 (padding/OOV) stays the zero vector
            weight = self.table(s).weight
            nn.init.normal_(weight, std=1.0 / self.embedding_widths[s] ** 0.5)
            with torch.no_grad():
                weight[0].zero_()
        w = self.embedding_widths
        # scored item, watched bag, user language, item language, channel, topics, source
        n_in = 2 * w["item"] + 2 * w["language"] + w["channel"] + w["topic"] + w["source"]
        n_in += w.get(ATTRIBUTE_SPACE, 0)  # the items' extra columns
        n_in += self.n_dense if self.use_continuous else 0
        layers: list[nn.Module] = []
        for width in self.hidden:
            layers += [nn.Linear(n_in, width), nn.ReLU()]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            n_in = width
        layers.append(nn.Linear(n_in, 1))
        self.tower = nn.Sequential(*layers)

    def table(self, space: str) -> nn.Embedding:
        """Return the embedding table of an id space."""
        return cast(nn.Embedding, self.embeddings[space])

    def _history_bags(self, batch: RankerBatch) -> torch.Tensor:
        """Return the watched-bag means (B, Ei), each distinct bag computed once."""
        bags = mean_bag(batch.history, self.table("item").weight)  # (U, Ei) or (B, Ei)
        return bags if batch.history_row is None else bags[batch.history_row]

    def forward(self, batch: RankerBatch) -> torch.Tensor:
        """Return the logits (B,) of a batch."""
        e = self.table
        parts = [
            e("item")(batch.item),  # (B, Ei)
            # mean over the non-padding ids of the bag (padding excluded; an empty bag gives 0)
            self._history_bags(batch),  # (B, Ei)
            e("language")(batch.user_language),  # (B, El)
            e("language")(batch.item_language),  # (B, El)
            e("channel")(batch.channel),  # (B, Ec)
            mean_bag(batch.topics, e("topic").weight),  # (B, Et)
            e("source")(batch.source),  # (B, Es)
        ]
        if ATTRIBUTE_SPACE in self.vocab_sizes:
            attributes = batch.attributes
            if attributes is None:  # no extra-column codes given: all OOV
                attributes = torch.zeros_like(batch.item).unsqueeze(1)
            parts.append(mean_bag(attributes, e(ATTRIBUTE_SPACE).weight))  # (B, Ea)
        if self.use_continuous:
            if batch.dense.shape[1] != self.n_dense:
                raise ValueError(
                    f"DeepRanker was built for {self.n_dense} dense features, the batch has "
                    f"{batch.dense.shape[1]}; normalize with the ranker's own normalizer"
                )
            parts.append(batch.dense)  # (B, D)
        x = torch.cat(parts, dim=1)  # (B, n_in)
        return self.tower(x).squeeze(-1)  # (B,)

    def spec(self) -> dict[str, object]:
        """Return the constructor arguments (JSON-serialisable) to rebuild this network."""
        return {
            "vocab_sizes": dict(self.vocab_sizes),
            "embedding_widths": dict(self.embedding_widths),
            "n_dense": self.n_dense,
            "hidden": list(self.hidden),
            "use_continuous": self.use_continuous,
            "dropout": self.dropout,
        }


def loss_weights(
    clicked: torch.Tensor, watch_time: torch.Tensor, weighting: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (w_pos, w_neg) (B,), (B,): the weights of each impression's positive and negative
    log-likelihood terms.

    "watch_time" (YT16): clicked rows are positives of weight T, unclicked rows negatives of
    weight 1. The optimal odds are Σ T / #unclicked = E[T] / (1 - P).
    "watch_time_unbiased": clicked rows are positives of weight T and every row is also a
    negative of weight 1, so the optimal odds are Σ T / #impressions = E[T] exactly.
    "click": positives and negatives weight 1 (the click-only model; odds = P / (1 - P)).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    y = (clicked > 0).to(torch.float32)  # (B,)
    if weighting == "click":
        return y, 1.0 - y
    w_pos = y * watch_time.to(torch.float32)  # (B,)
    if weighting == "watch_time":
        return w_pos, 1.0 - y
    return w_pos, torch.ones_like(y)


def example_weights(
    clicked: torch.Tensor, watch_time: torch.Tensor, weighting: str
) -> torch.Tensor:
    """Return per-impression total weights w_pos + w_neg (B,): watch time for clicks and 1
    otherwise ("watch_time"), watch time + 1 for clicks and 1 otherwise ("watch_time_unbiased"),
    or all 1 ("click")."""
    w_pos, w_neg = loss_weights(clicked, watch_time, weighting)
    return w_pos + w_neg


def weighted_logistic_loss(
    logits: torch.Tensor,
    clicked: torch.Tensor,
    watch_time: torch.Tensor,
    weighting: str = "watch_time",
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """Return the weighted cross-entropy of click labels: Σ ℓ_i / Σ (w_pos + w_neg)_i ("mean").

    ℓ_i = -[w_pos,i log σ(z_i) + w_neg,i log(1 - σ(z_i))] with the weights of `loss_weights`
    (for "watch_time": w_i times the usual cross-entropy, w_i = watch time for clicked rows and
    1 for the others). reduction "sum" gives Σ ℓ_i, "none" the per-row ℓ_i (B,).
    """
    if logits.shape != clicked.shape or logits.shape != watch_time.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, clicked {tuple(clicked.shape)} and watch_time "
            f"{tuple(watch_time.shape)} must have the same shape"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    w_pos, w_neg = loss_weights(clicked, watch_time, weighting)  # (B,), (B,)
    z = logits.float()
    # -log σ(z) = softplus(-z), -log(1 - σ(z)) = softplus(z)
    per_row = w_pos * F.softplus(-z) + w_neg * F.softplus(z)  # (B,)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / (w_pos + w_neg).sum().clamp_min(torch.finfo(torch.float32).tiny)


def expected_watch_time(logits: torch.Tensor) -> torch.Tensor:
    """Return exp(logit), the expected watch time a watch-time-weighted ranker predicts."""
    return torch.exp(logits)
