"""Candidate retrieval (SPEC §4): user vectors at serving time -> top-k items from an index.

Where it sits: a `TrainedCandidateGenerator` (towers + featurizer) gives user vectors with
example age 0 from the history strictly before the serving time; a `CandidateIndex`
(`ExactIndex` oracle, `AnnoyIndex` or `HnswIndex`) over the model's item vectors answers the
top-k; the result is a long table of candidates that `ranking` scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vidrec.candidate_gen.index import CandidateIndex, make_index
from vidrec.candidate_gen.train import TrainedCandidateGenerator
from vidrec.features.examples import UserHistory, watched_before
from vidrec.features.tables import Dataset

__all__ = ["Retriever", "build_index"]

CANDIDATE_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "score", "rank")


def build_index(
    model: TrainedCandidateGenerator, kind: str = "annoy", *, seed: int = 0, **settings: Any
) -> CandidateIndex:
    """Return an index ("annoy", "hnsw" or "exact") over the model's vectors for its whole
    catalog; `settings` are the kind's own (`candidate_gen.index.make_index`)."""
    ids, vectors = model.item_embeddings()
    return make_index(kind, vectors, ids, seed=seed, **settings)


class Retriever:
    """Retrieves candidates for users at a time: model user vectors -> index top-k.

    `dataset` provides the users' histories (watches, searches) and attributes, indexed once
    at construction (build a new Retriever when the logs change); only events strictly before
    `at_time` are read.
    """

    def __init__(
        self, model: TrainedCandidateGenerator, index: CandidateIndex, dataset: Dataset
    ) -> None:
        if index.dim != model.config.embedding_dim:
            raise ValueError(
                f"the index holds {index.dim}-dim vectors but the model makes "
                f"{model.config.embedding_dim}-dim ones; build the index from this model"
            )
        self.model = model
        self.index = index
        self.dataset = dataset
        # sorted and encoded once: each request then costs O(Q log W), not a pass over the logs
        self.history = model.featurizer.index_history(dataset)

    def user_vectors(
        self,
        user_ids: np.ndarray,
        at_time: int | np.ndarray,
        history: UserHistory | None = None,
    ) -> np.ndarray:
        """Return the serving vectors (Q, E) of `user_ids` at `at_time` (example age 0), from
        `history` (the featurizer's `index_history` of other logs) instead of the dataset's."""
        features = self.model.featurizer.serving(self.history if history is None else history, user_ids, at_time)
        return self.model.user_embeddings(features, example_age=0.0)

    def retrieve(
        self,
        user_ids: np.ndarray,
        k: int,
        *,
        at_time: int | np.ndarray,
        exclude_watched: bool = False,
    ) -> pd.DataFrame:
        """Return candidates as a DataFrame(user_id, item_id, score, rank), rank 1 = best.

        Up to `k` rows per user (fewer when the catalog, minus exclusions, is smaller); with
        `exclude_watched`, items the user watched before `at_time` are never returned.
        """
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        users = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        if len(users) == 0:
            return _empty()
        vectors = self.user_vectors(users, at_time)
        exclude = None
        if exclude_watched:
            offsets, watched = watched_before(self.history, users, at_time)
            exclude = np.split(watched, offsets[1:-1])  # one array per user, as the index takes
        ids, scores = self.index.search(vectors, int(k), exclude)
        found = ids >= 0  # (Q, k) padding where fewer than k items remain
        ranks = np.broadcast_to(np.arange(1, ids.shape[1] + 1), ids.shape)
        return pd.DataFrame(
            {
                "user_id": np.repeat(users, ids.shape[1]).reshape(ids.shape)[found],
                "item_id": ids[found],
                "score": scores[found].astype(np.float32),
                "rank": ranks[found].astype(np.int64),
            }
        )

    def retrieve_ranked(
        self, user_id: int, n: int, *, at_time: int, history: UserHistory | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return one user's top-n unwatched candidates as (item ids, scores, catalog ranks),
        best first, the ranks as the index saw them before the watched items were dropped.

        The index is asked for n + (the user's watched items) so that dropping them still
        leaves n; a candidate's rank is 1 + the number of indexed items scoring strictly higher,
        watched ones included (ties share a rank). With an exact index that is its rank over
        the whole catalog; with annoy or HNSW, an item the search missed is not counted. `history`
        replaces the dataset's indexed events (e.g. the user's with fresh watches added).
        """
        if not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        users = np.array([user_id], dtype=np.int64)
        _, watched = watched_before(self.history if history is None else history, users, at_time)
        watched = np.unique(watched)
        vectors = self.user_vectors(users, at_time, history)  # (1, E)
        ids, scores32 = self.index.search(vectors, int(n) + len(watched))
        found = ids[0] >= 0
        ids, scores = ids[0][found], scores32[0][found].astype(np.float64)  # best first
        ranks = 1 + np.searchsorted(-scores, -scores, side="left")
        keep = np.flatnonzero(~np.isin(ids, watched))[: int(n)]
        return ids[keep], scores[keep], ranks[keep].astype(np.float64)


def _empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": np.zeros(0, np.int64),
            "item_id": np.zeros(0, np.int64),
            "score": np.zeros(0, np.float32),
            "rank": np.zeros(0, np.int64),
        }
    )
