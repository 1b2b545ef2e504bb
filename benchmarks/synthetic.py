"""Seeded synthetic inputs of the benchmarks: clustered item vectors and a small contract Dataset.

Where it sits: the retrieval benchmarks (exact_topk, annoy_curve) need item vectors shaped like
learned embeddings, not isotropic noise: `clustered_vectors` draws a mixture of Gaussians with
skewed cluster sizes and a popularity-like spread of norms (popular items get longer vectors, as
logQ-corrected softmax embeddings do), and user vectors near one or two clusters.
`load_vectors` reads learned ones instead (RUN_DIR/index/item_vectors.npz). The ranker and
candidate-generator benchmarks need event logs: `synthetic_dataset` builds the five contract
tables (features/tables.py dtypes) with topic-driven preferences, so that models learn
something and every feature the towers read is populated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vidrec.features.schema import validate_dataset
from vidrec.features.tables import Dataset

DAY = 86_400
T0 = 1_700_000_000  # start of the synthetic event window (UTC seconds)
_CHUNK = 131_072  # rows drawn per chunk: bounded float64 temporaries at 1M x 128


@dataclass(frozen=True)
class VectorProblem:
    """Item vectors with their ids and a batch of user (query) vectors."""

    ids: np.ndarray  # (N,) int64
    vectors: np.ndarray  # (N, E) float32
    queries: np.ndarray  # (Q, E) float32
    source: str  # "clustered" or the .npz file read


def clustered_vectors(
    n_items: int,
    n_queries: int,
    dim: int,
    *,
    seed: int,
    n_clusters: int | None = None,
) -> VectorProblem:
    """Return clustered item vectors (N, E) float32 and user vectors (Q, E) float32.

    Items: center of a cluster (cluster sizes ∝ rank^-0.5) plus noise of half its norm, scaled by
    0.5 + 0.15·ln(zipf count), so the norm spread between the most and least popular item is
    about 1 + 0.3·ln N (≈ 5x at 1M items). Users: one cluster center plus 0.5 of a second and
    noise. Everything is drawn in chunks, so memory stays ~ the output arrays.
    """
    if n_items < 1 or n_queries < 0 or dim < 1:
        raise ValueError(
            f"clustered_vectors needs n_items >= 1, n_queries >= 0, dim >= 1; got {n_items}, "
            f"{n_queries}, {dim}"
        )
    rng = np.random.default_rng(seed)
    c = n_clusters if n_clusters is not None else int(max(8, round(np.sqrt(n_items) / 4)))
    centers = rng.standard_normal((c, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    weights = (np.arange(1, c + 1, dtype=np.float64)) ** -0.5
    weights /= weights.sum()
    # popularity rank r (a random permutation) -> zipf count ∝ 1/r -> norm factor
    rank = rng.permutation(n_items).astype(np.float64) + 1.0
    scale = (0.5 + 0.15 * np.log(n_items / rank)).astype(np.float32)  # (N,) in [0.5, 0.5+0.15 lnN]
    vectors = np.empty((n_items, dim), dtype=np.float32)
    noise_sd = np.float32(0.5 / np.sqrt(dim))
    for lo in range(0, n_items, _CHUNK):
        hi = min(lo + _CHUNK, n_items)
        member = rng.choice(c, size=hi - lo, p=weights)
        block = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        block *= noise_sd
        block += centers[member]
        block *= scale[lo:hi, None]
        vectors[lo:hi] = block
    a = rng.choice(c, size=n_queries, p=weights)
    b = rng.choice(c, size=n_queries, p=weights)
    queries = centers[a] + 0.5 * centers[b]
    queries += rng.standard_normal((n_queries, dim), dtype=np.float32) * noise_sd
    ids = np.arange(n_items, dtype=np.int64)
    return VectorProblem(ids, vectors, queries.astype(np.float32), "clustered")


def load_vectors(path: str | Path, n_queries: int, *, seed: int) -> VectorProblem:
    """Return the (ids, vectors) stored in an .npz file and user-like query vectors.

    The file holds `ids` (N,) and `vectors` (N, E), as RUN_DIR/index/item_vectors.npz does.
    Queries are drawn near the items: the mean of 5 random items' vectors plus noise of the
    items' per-dimension spread (no user vectors are stored beside the item vectors).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"--vectors {p}: no such file (expected RUN_DIR/index/item_vectors.npz)"
        )
    with np.load(p, allow_pickle=False) as z:
        missing = [k for k in ("ids", "vectors") if k not in z.files]
        if missing:
            raise ValueError(
                f"{p} has arrays {z.files}; it needs 'ids' (N,) and 'vectors' (N, E) as written "
                "by the pipeline's index stage"
            )
        ids = np.asarray(z["ids"], dtype=np.int64)
        vectors = np.ascontiguousarray(z["vectors"], dtype=np.float32)
    if vectors.ndim != 2 or ids.shape != (vectors.shape[0],) or len(ids) == 0:
        raise ValueError(
            f"{p}: ids {ids.shape} and vectors {vectors.shape} must be (N,) and (N, E) with N >= 1"
        )
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), size=(n_queries, 5))
    spread = vectors.std(axis=0, dtype=np.float64).astype(np.float32)  # (E,)
    queries = vectors[pick].mean(axis=1)
    queries += rng.standard_normal(queries.shape, dtype=np.float32) * spread
    return VectorProblem(ids, vectors, queries.astype(np.float32), str(p))


def synthetic_dataset(
    *,
    n_users: int,
    n_items: int,
    n_watches: int,
    n_impressions: int,
    n_searches: int,
    days: int = 30,
    n_topics: int = 20,
    seed: int = 0,
) -> Dataset:
    """Return a seeded, validated contract Dataset where users prefer one topic.

    Item i has topic i % n_topics, a channel of that topic, a language tied to its channel, a
    duration and an upload time before the window. A user of topic g watches items of g 80% of
    the time, Zipf-popular within the topic; impressions show the user's topic 60% of the time
    and are clicked with probability 0.25 (own topic) or 0.05; a click's watch time is a Beta
    share of the duration. Searches name the user's topic. Events are uniform over `days`.
    """
    rng = np.random.default_rng(seed)
    topics = np.array([f"topic{t}" for t in range(n_topics)], dtype=object)
    langs = np.array(["en", "de", "fr", "ko"], dtype=object)
    n_channels = max(n_topics, n_items // 50)
    item_ids = np.arange(1, n_items + 1, dtype=np.int64)
    item_topic = np.arange(n_items) % n_topics
    channel = item_topic + n_topics * rng.integers(0, max(1, n_channels // n_topics), n_items)
    duration = rng.gamma(2.0, 300.0, n_items) + 5.0
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "upload_time": (T0 - rng.integers(DAY, 120 * DAY, n_items)).astype(np.int64),
            "duration": duration,
            "channel_id": np.char.add("ch", channel.astype(str)).astype(object),
            "topics": pd.Series(topics[item_topic]).map(lambda t: [t]).to_numpy(),
            "language": langs[channel % len(langs)],
        }
    )
    user_ids = np.arange(1, n_users + 1, dtype=np.int64) + 10_000_000
    group = rng.integers(0, n_topics, n_users)
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "gender": rng.choice(np.array(["f", "m", "x"], dtype=object), n_users),
            "age_bucket": rng.choice(
                np.array(["18-24", "25-34", "35-54", "55+"], dtype=object), n_users
            ),
            "country": rng.choice(np.array(["us", "de", "fr", "kr", "br"], dtype=object), n_users),
            "language": langs[group % len(langs)],
            "tenure_days": rng.exponential(300.0, n_users),
        }
    )
    per_topic = -(-n_items // n_topics)

    def pick_items(u: np.ndarray, own_share: float) -> np.ndarray:
        own = rng.random(len(u)) < own_share
        topic = np.where(own, group[u], rng.integers(0, n_topics, len(u)))
        rank = np.minimum(rng.zipf(1.2, len(u)) - 1, per_topic - 1)
        pos = topic + n_topics * rank
        pos = np.where(pos < n_items, pos, topic)  # the last topic rows may be short
        return pos

    end = days * DAY
    wu = rng.integers(0, n_users, n_watches)
    wpos = pick_items(wu, 0.8)
    watches = pd.DataFrame(
        {
            "user_id": user_ids[wu],
            "item_id": item_ids[wpos],
            "timestamp": (T0 + rng.integers(0, end, n_watches)).astype(np.int64),
            "watch_time": duration[wpos] * rng.beta(2.0, 2.0, n_watches),
        }
    )
    su = rng.integers(0, n_users, n_searches)
    searches = pd.DataFrame(
        {
            "user_id": user_ids[su],
            "timestamp": (T0 + rng.integers(0, end, n_searches)).astype(np.int64),
            "query": "best " + topics[group[su]] + " video",
        }
    )
    iu = rng.integers(0, n_users, n_impressions)
    ipos = pick_items(iu, 0.6)
    own = item_topic[ipos] == group[iu]
    clicked = (rng.random(n_impressions) < np.where(own, 0.25, 0.05)).astype(np.int8)
    impressions = pd.DataFrame(
        {
            "user_id": user_ids[iu],
            "item_id": item_ids[ipos],
            "timestamp": (T0 + rng.integers(0, end, n_impressions)).astype(np.int64),
            "clicked": clicked,
            "watch_time": clicked * duration[ipos] * rng.beta(2.0, 3.0, n_impressions),
            "position": rng.integers(0, 10, n_impressions).astype(np.int64),
            "source": rng.choice(np.array(["ann", "popular"], dtype=object), n_impressions),
        }
    )
    # validated like every data source, so the benchmarks see the canonical dtypes
    return validate_dataset(
        Dataset(
            users=users,
            items=items,
            watches=watches,
            searches=searches,
            impressions=impressions,
            name=f"bench-synthetic-{seed}",
        )
    )
