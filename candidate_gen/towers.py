"""User and item towers of the two-tower candidate generator (SPEC §2–§3), as plain nn.Modules.

Where it sits: `features.examples` gives padded numpy arrays; `UserBatch` / `ItemBatch` turn
them into tensors and are the only things the towers' `forward` takes; the objective lives in
`candidate_gen.losses` and the loop in `candidate_gen.train`.

- `UserTower` [YT16 §3]: mean-pooled embeddings of the watched items and of the search tokens
  (masked: code 0 is padding or out-of-vocabulary and is ignored), embedded demographics (and
  categorical extra columns), a mean-pooled bag of multi-valued user attributes when the data
  has some, normalized continuous features and example age, concatenated into ReLU layers
  whose last width is the embedding dimension (no layer: one linear map, "depth 0").
- `ItemTower`: one embedding per item feature (id, channel, language, duration bucket,
  upload-age bucket, mean-pooled topics) stacked into (N, F, E), so SSL can replace masked
  features by learned defaults and drop topic values before the MLP. Its id table is the
  same `nn.Embedding` the user tower pools for watched items.
- `TwoTowerModel` ties both towers and the SSL projection head together.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidrec.candidate_gen.config import CandidateGenConfig
from vidrec.candidate_gen.ssl import apply_feature_mask
from vidrec.common.torch_utils import mean_bag
from vidrec.features.examples import ItemFeatures, UserFeatures

# ----------------------------------------------------------------------------- batches


@dataclass
class UserBatch:
    """User-side tensors of a batch (B rows); integer codes may be int32 or int64."""

    history: torch.Tensor  # (B, L) watched-item codes, 0 = pad/OOV
    search_tokens: torch.Tensor  # (B, S) query-token codes, 0 = pad
    categorical: torch.Tensor  # (B, C) user attribute codes
    continuous: torch.Tensor  # (B, K) float normalized continuous features (+ squares, roots)
    example_age: torch.Tensor  # (B, 3) float [a, a^2, sqrt a]
    tags: torch.Tensor  # (B, T) codes of multi-valued user attributes, 0 = pad (T may be 0)

    def __len__(self) -> int:
        return int(self.history.shape[0])

    @classmethod
    def from_features(cls, features: UserFeatures, device: torch.device | str = "cpu") -> UserBatch:
        """Return the tensors of `features` on `device` (zero-copy on CPU)."""
        return cls(
            history=torch.from_numpy(np.ascontiguousarray(features.history)).to(device),
            search_tokens=torch.from_numpy(np.ascontiguousarray(features.search_tokens)).to(device),
            categorical=torch.from_numpy(np.ascontiguousarray(features.categorical)).to(device),
            continuous=torch.from_numpy(np.ascontiguousarray(features.continuous)).to(device),
            example_age=torch.from_numpy(np.ascontiguousarray(features.example_age)).to(device),
            tags=torch.from_numpy(np.ascontiguousarray(features.tags)).to(device),
        )

    def index(self, rows: torch.Tensor) -> UserBatch:
        """Return the rows `rows` (a 1-D index tensor on the batch's device)."""
        return UserBatch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def to(self, device: torch.device | str) -> UserBatch:
        """Return the batch on `device`."""
        return UserBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class ItemBatch:
    """Item-side tensors of N items."""

    single: torch.Tensor  # (N, Fs) codes of the single-valued features
    topics: torch.Tensor  # (N, T) topic codes, 0 = pad (T may be 0)
    topics_mask: torch.Tensor  # (N, T) bool, which topic slots are present (dropout edits it)

    def __len__(self) -> int:
        return int(self.single.shape[0])

    @classmethod
    def from_features(cls, items: ItemFeatures, device: torch.device | str = "cpu") -> ItemBatch:
        """Return the tensors of the whole catalog `items` on `device`."""
        topics = torch.from_numpy(np.ascontiguousarray(items.topics)).to(device)
        return cls(
            single=torch.from_numpy(np.ascontiguousarray(items.single)).to(device),
            topics=topics,
            topics_mask=topics != 0,
        )

    def index(self, rows: torch.Tensor) -> ItemBatch:
        """Return the items at catalog rows `rows`."""
        return ItemBatch(self.single[rows], self.topics[rows], self.topics_mask[rows])

    def to(self, device: torch.device | str) -> ItemBatch:
        """Return the batch on `device`."""
        return ItemBatch(
            self.single.to(device), self.topics.to(device), self.topics_mask.to(device)
        )


# ----------------------------------------------------------------------------- building blocks


def masked_mean(emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the mean of `emb` (B, L, E) over positions where `mask` (B, L) is True; 0 if none."""
    m = mask.to(emb.dtype).unsqueeze(-1)  # (B, L, 1)
    total = (emb * m).sum(dim=1)  # (B, E)
    count = m.sum(dim=1).clamp_min(1.0)  # (B, 1)
    return total / count


def last_in_bag(ids: torch.Tensor, n: int) -> torch.Tensor:
    """`ids` (B, L), left-aligned bags padded with 0 on the right, with every slot before each
    row's last `n` filled slots set to 0 (an out-of-vocabulary 0 inside a bag counts as a slot)."""
    pos = torch.arange(1, ids.shape[1] + 1, device=ids.device)
    length = torch.where(ids != 0, pos, 0).amax(dim=1, keepdim=True)  # (B, 1) last filled + 1
    return ids.masked_fill(pos <= length - n, 0)


def _embedding(rows: int, dim: int) -> nn.Embedding:
    """An embedding table whose row 0 (padding/OOV) is the zero vector and gets no gradient."""
    emb = nn.Embedding(rows, dim, padding_idx=0)
    nn.init.normal_(emb.weight, std=dim**-0.5)
    with torch.no_grad():
        emb.weight[0].zero_()
    return emb


def _mlp(in_dim: int, widths: tuple[int, ...], out_dim: int | None) -> nn.Sequential:
    """ReLU layers of `widths`; then a linear layer to `out_dim` when given (else none)."""
    layers: list[nn.Module] = []
    prev = in_dim
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    if out_dim is not None:
        layers.append(nn.Linear(prev, out_dim))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- towers


class ItemTower(nn.Module):
    """Item features -> per-feature embeddings (N, F, E) -> MLP -> item vector (N, E)."""

    def __init__(
        self,
        config: CandidateGenConfig,
        single_names: tuple[str, ...],
        single_cardinalities: tuple[int, ...],
        topic_cardinality: int,
    ) -> None:
        super().__init__()
        if not single_names or single_names[0] != "item_id":
            raise ValueError(
                f"ItemTower expects the first single-valued item feature to be 'item_id', got {single_names}"
            )
        if len(single_names) != len(single_cardinalities):
            raise ValueError(
                f"ItemTower: {len(single_names)} feature names but {len(single_cardinalities)} cardinalities"
            )
        e = config.embedding_dim
        self.id_only = config.item_encoder == "id_only"
        n_single = 1 if self.id_only else len(single_names)
        self.use_topics = topic_cardinality > 0 and not self.id_only
        self.feature_names = tuple(single_names[:n_single]) + (
            ("topics",) if self.use_topics else ()
        )
        self.id_embedding = _embedding(single_cardinalities[0], e)
        self.other_embeddings = nn.ModuleList(
            [_embedding(card, e) for card in single_cardinalities[1:n_single]]
        )
        self.topic_embedding = _embedding(topic_cardinality, e) if self.use_topics else None
        self.n_single = n_single
        n_features = len(self.feature_names)
        # learned stand-ins for masked features (SSL21 "default embeddings"), one per feature
        self.default_embeddings = nn.Parameter(torch.randn(n_features, e) * e**-0.5)  # (F, E)
        self.mlp = _mlp(n_features * e, config.item_layers, e)

    @property
    def n_features(self) -> int:
        """Number of item features F."""
        return len(self.feature_names)

    def feature_embeddings(self, batch: ItemBatch) -> torch.Tensor:
        """Return the per-feature embeddings (N, F, E) of `batch` (topics mean-pooled)."""
        cols = [self.id_embedding(batch.single[:, 0])]  # [(N, E)]
        for j, table in enumerate(self.other_embeddings, start=1):
            cols.append(table(batch.single[:, j]))
        if self.topic_embedding is not None:
            topics = self.topic_embedding(batch.topics)  # (N, T, E)
            cols.append(masked_mean(topics, batch.topics_mask))
        return torch.stack(cols, dim=1)  # (N, F, E)

    def encode(self, feature_emb: torch.Tensor) -> torch.Tensor:
        """Return item vectors (N, E) from per-feature embeddings (N, F, E)."""
        return self.mlp(feature_emb.flatten(start_dim=1))  # (N, F*E) -> (N, E)

    def forward(self, batch: ItemBatch) -> torch.Tensor:
        """Return item vectors (N, E)."""
        return self.encode(self.feature_embeddings(batch))


class UserTower(nn.Module):
    """User history, searches, demographics, continuous features, example age -> vector (B, E)."""

    def __init__(
        self,
        config: CandidateGenConfig,
        item_embedding: nn.Embedding,
        n_token_codes: int,
        categorical_cardinalities: tuple[int, ...],
        n_continuous: int,
        n_tag_codes: int = 0,
    ) -> None:
        super().__init__()
        e = config.embedding_dim
        if item_embedding.embedding_dim != e:
            raise ValueError(
                f"UserTower: the shared item embedding has width {item_embedding.embedding_dim}, "
                f"expected embedding_dim {e}"
            )
        self.config = config
        self.item_embedding = item_embedding  # shared with ItemTower.id_embedding
        self.token_embedding = _embedding(n_token_codes, e) if config.use_searches else None
        self.categorical_embeddings = nn.ModuleList(
            [_embedding(card, config.categorical_dim) for card in categorical_cardinalities]
            if config.use_demographics
            else []
        )
        # multi-valued user attributes (one bag of "column=value" codes): built only when the
        # data has such a column, so other models keep their parameters and initialisation
        self.tag_embedding = (
            _embedding(n_tag_codes, config.categorical_dim)
            if config.use_demographics and n_tag_codes > 1
            else None
        )
        in_dim = e
        in_dim += e if config.recent_history else 0
        in_dim += e if config.use_searches else 0
        in_dim += len(self.categorical_embeddings) * config.categorical_dim
        in_dim += config.categorical_dim if self.tag_embedding is not None else 0
        in_dim += n_continuous if config.use_continuous else 0
        in_dim += 3 if config.use_example_age else 0
        self.input_dim = in_dim
        if config.user_layers:
            self.mlp = _mlp(in_dim, config.user_layers, None)  # every layer ReLU, as in YT16
        else:
            self.mlp = _mlp(in_dim, (), e)  # depth 0: one linear layer

    def forward(self, batch: UserBatch) -> torch.Tensor:
        """Return user vectors (B, E)."""
        parts = [mean_bag(batch.history, self.item_embedding.weight)]  # (B, E)
        if self.config.recent_history:
            parts.append(
                mean_bag(
                    last_in_bag(batch.history, self.config.recent_history),
                    self.item_embedding.weight,
                )
            )  # (B, E)
        if self.token_embedding is not None:
            parts.append(mean_bag(batch.search_tokens, self.token_embedding.weight))  # (B, E)
        for j, table in enumerate(self.categorical_embeddings):
            parts.append(table(batch.categorical[:, j]))  # (B, categorical_dim)
        if self.tag_embedding is not None:
            parts.append(mean_bag(batch.tags, self.tag_embedding.weight))  # (B, categorical_dim)
        if self.config.use_continuous:
            parts.append(batch.continuous)  # (B, K)
        if self.config.use_example_age:
            parts.append(batch.example_age)  # (B, 3)
        return self.mlp(torch.cat(parts, dim=1))  # (B, in_dim) -> (B, E)


class TwoTowerModel(nn.Module):
    """User tower + item tower (shared item id table) + SSL projection head."""

    def __init__(self, config: CandidateGenConfig, schema: dict) -> None:
        super().__init__()
        self.config = config
        self.item_tower = ItemTower(
            config,
            tuple(schema["item_single"]),
            tuple(schema["item_single_cardinalities"]),
            int(schema["topic_cardinality"]),
        )
        self.user_tower = UserTower(
            config,
            self.item_tower.id_embedding,
            int(schema["n_token_codes"]),
            tuple(schema["user_categorical_cardinalities"]),
            int(schema["n_continuous"]),
            int(schema.get("user_tag_cardinality", 0)),
        )
        e = config.embedding_dim
        # SSL projection head: z = W2 relu(W1 v); L_self compares cosines of z (SSL21 / SimCLR)
        self.ssl_head = nn.Sequential(nn.Linear(e, e), nn.ReLU(), nn.Linear(e, e))

    def _post(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(v, dim=-1) if self.config.normalize_embeddings else v

    def user_vectors(self, batch: UserBatch) -> torch.Tensor:
        """Return user vectors (B, E) (L2-normalized if configured)."""
        return self._post(self.user_tower(batch))

    def item_vectors(self, batch: ItemBatch) -> torch.Tensor:
        """Return item vectors (N, E) (L2-normalized if configured)."""
        return self._post(self.item_tower(batch))

    def ssl_projection(self, batch: ItemBatch, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return SSL projections (N, E) of `batch`, with masked features (F,) set to defaults."""
        emb = self.item_tower.feature_embeddings(batch)  # (N, F, E)
        if mask is not None:
            emb = apply_feature_mask(emb, mask, self.item_tower.default_embeddings)
        return self.ssl_head(self.item_tower.encode(emb))

    def forward(self, users: UserBatch, items: ItemBatch) -> torch.Tensor:
        """Return the score matrix (B, N) of every user in `users` against every item in `items`."""
        return self.user_vectors(users) @ self.item_vectors(items).T


def with_topics_mask(batch: ItemBatch, topics_mask: torch.Tensor) -> ItemBatch:
    """Return `batch` with a replaced topic presence mask (multi-value dropout)."""
    return replace(batch, topics_mask=topics_mask)
