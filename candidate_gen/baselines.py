"""Retrieval baselines (issue 6): most popular, item-kNN co-occurrence, PureSVD.

Where they sit: next to the candidate generator in the same retrieval evaluation. Each one is
fitted on the watches of the training window and answers the same question as the
`Retriever`: the top-k items for users at a time, with the items to exclude per user, as
`(ids (U, k) int64, scores (U, k) float32)`, best first, padded with -1 / -inf when fewer than
k items remain (the `CandidateIndex` convention, so `evaluation.retrieval` scores them alike).

- `MostPopular`: items ranked by their number of watches in the training window (optionally
  only its last `window_s` seconds). The same list for every user.
- `ItemKNN`: cosine similarity between the items' columns of the binary user-item matrix of the
  training window, `sim(i, j) = |U_i ∩ U_j| / sqrt(|U_i| |U_j|)`, optionally pruned to each
  item's `neighbors` most similar items; a user's score for j is the sum of the similarities of
  j to the items of the user's history.
- `PureSVD` (Cremonesi et al., RecSys 2010): a truncated SVD X ≈ U Σ Vᵀ of the binary training
  matrix (scikit-learn's seeded randomized solver); a user with history row h scores h V Vᵀ,
  which for a training user equals its row of U Σ Vᵀ and folds in any other history.

A user's history is every watch strictly before the query's `at_time` (from all of the
dataset's watches, as the `Retriever` reads it); the models themselves see only the training
window. Ties are broken by training popularity, then item id, so a user without history gets
the most popular items. Scoring is sparse (scipy.sparse) and batched over users, with bounded
dense (batch, items) temporaries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD

from features.tables import Dataset

__all__ = [
    "BASELINES",
    "ItemKNN",
    "MostPopular",
    "PureSVD",
    "RetrievalBaseline",
]

# dense (users, items) temporaries per batch stay below this many elements
_BATCH_ELEMENTS = 1 << 22


class RetrievalBaseline(ABC):
    """Common fit/recommend machinery: the item catalog, the training matrix, the histories.

    Subclasses implement `_fit_model(train)` and `_scores(history)`.
    """

    def fit(self, dataset: Dataset, train_end: int) -> RetrievalBaseline:
        """Return self after fitting on the watches with timestamp < `train_end`."""
        if isinstance(train_end, bool) or not isinstance(train_end, int | np.integer):
            raise TypeError(f"train_end must be an integer time (UTC seconds), got {train_end!r}")
        watches = dataset.watches
        missing = [c for c in ("user_id", "item_id", "timestamp") if c not in watches.columns]
        if missing:
            raise ValueError(
                f"dataset.watches lacks column(s) {missing}; validate the dataset first "
                "(features.schema.validate_dataset)"
            )
        catalog = np.unique(dataset.items["item_id"].to_numpy(np.int64))
        if len(catalog) == 0:
            raise ValueError("dataset.items is empty: there is nothing to recommend")
        user = watches["user_id"].to_numpy(np.int64)
        item = watches["item_id"].to_numpy(np.int64)
        ts = watches["timestamp"].to_numpy(np.int64)
        pos = np.minimum(np.searchsorted(catalog, item), len(catalog) - 1)
        unknown = catalog[pos] != item
        if unknown.any():
            raise ValueError(
                f"{int(unknown.sum())} watches are of items not in dataset.items (first: "
                f"{int(item[unknown][0])}); validate the dataset first "
                "(features.schema.validate_dataset)"
            )
        train = ts < int(train_end)
        if not train.any():
            raise ValueError(
                f"no watches before train_end={int(train_end)} (the first watch is at "
                f"{int(ts.min()) if len(ts) else 'none'}); move train_end later"
            )
        counts = self._popularity_counts(pos[train], ts[train], int(train_end), len(catalog))
        # columns in popularity order (then id): the lowest column wins a tie in `recommend`
        order = np.lexsort((catalog, -counts))
        col_of = np.empty(len(catalog), np.int64)
        col_of[order] = np.arange(len(catalog))
        self.item_ids_ = catalog[order]  # (I,) item id of each column
        self.popularity_ = counts[order]  # (I,) training watches per column
        col = col_of[pos]  # (W,) column of every watch

        # histories: all watches sorted by (user, time), looked up by packed (user, time) keys
        srt = np.lexsort((ts, user))
        self._h_user, self._h_time, self._h_col = user[srt], ts[srt], col[srt]
        self._users = np.unique(self._h_user)  # (U,) sorted
        self._times = np.unique(self._h_time)  # (T,) sorted
        self._span = len(self._times) + 1
        u_rank = np.searchsorted(self._users, self._h_user)
        # at most (U + 1) * (T + 1) <= (W + 1)^2: fits int64 for any realistic log
        self._key = u_rank * self._span + np.searchsorted(self._times, self._h_time)

        t_users, t_rows = np.unique(user[train], return_inverse=True)
        x = sp.csr_matrix(
            (np.ones(int(train.sum())), (t_rows, col[train])),
            shape=(len(t_users), len(catalog)),
        )
        x.sum_duplicates()
        x.data[:] = 1.0  # binary: watched at least once in the training window
        self.train_end_ = int(train_end)
        self._fit_model(x)
        return self

    def _popularity_counts(
        self, pos: np.ndarray, ts: np.ndarray, train_end: int, n_items: int
    ) -> np.ndarray:
        return np.bincount(pos, minlength=n_items).astype(np.float64)

    def _fit_model(self, train: sp.csr_matrix) -> None:
        """Learn the model from the binary (train users, items) matrix (popularity: nothing)."""
        return None

    @abstractmethod
    def _scores(self, history: sp.csr_matrix) -> np.ndarray:
        """Return the dense (B, I) float64 scores of a batch of binary history rows."""

    # -- serving -----------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "item_ids_"):
            raise RuntimeError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with the "
                "dataset and train_end before using it."
            )

    def _queries(
        self, user_ids: np.ndarray, at_time: int | np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        users = np.asarray(user_ids)
        if users.ndim != 1 or not (np.issubdtype(users.dtype, np.integer) or users.size == 0):
            raise ValueError(f"user_ids must be a 1-D array of integer ids, got {users.dtype} "
                             f"with shape {users.shape}")  # fmt: skip
        users = users.astype(np.int64)
        t = np.asarray(self.train_end_ if at_time is None else at_time)
        if t.ndim > 1 or (t.ndim == 1 and t.shape != users.shape):
            raise ValueError(
                f"at_time must be one time or one per user ({len(users)}), got shape {t.shape}"
            )
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"at_time must be integer UTC seconds, got dtype {t.dtype}")
        return users, np.broadcast_to(t.astype(np.int64), users.shape)

    def _history_range(self, users: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (start, end) (Q,) of each query's watches strictly before its time."""
        pos = np.searchsorted(self._users, users)
        present = (pos < len(self._users)) & (
            self._users[np.minimum(pos, len(self._users) - 1)] == users
        )
        base = pos * self._span
        start = np.searchsorted(self._key, base, side="left")
        end = np.searchsorted(self._key, base + np.searchsorted(self._times, times), side="left")
        end = np.where(present, end, start)  # an unknown user has no history
        return start, end

    def history(
        self, user_ids: np.ndarray, at_time: int | np.ndarray | None = None
    ) -> list[np.ndarray]:
        """Return, per user, the ids of the items watched strictly before `at_time`.

        `at_time` is one time, one per user, or None for the end of the training window. Pass
        the result as `exclude` to recommend only items the user has not watched yet.
        """
        self._check_fitted()
        users, times = self._queries(user_ids, at_time)
        start, end = self._history_range(users, times)
        offsets = np.zeros(len(users) + 1, np.int64)
        np.cumsum(end - start, out=offsets[1:])
        flat = self.item_ids_[self._h_col[_ranges(start, end)]]
        return np.split(flat, offsets[1:-1])

    def _history_matrix(self, users: np.ndarray, times: np.ndarray) -> sp.csr_matrix:
        """Return the binary (Q, I) matrix of the queries' histories before their times."""
        start, end = self._history_range(users, times)
        indptr = np.zeros(len(users) + 1, np.int64)
        np.cumsum(end - start, out=indptr[1:])
        cols = self._h_col[_ranges(start, end)]
        h = sp.csr_matrix(
            (np.ones(len(cols)), cols, indptr), shape=(len(users), len(self.item_ids_))
        )
        h.sum_duplicates()
        h.data[:] = 1.0
        return h

    def recommend(
        self,
        user_ids: np.ndarray,
        k: int,
        at_time: int | np.ndarray | None = None,
        exclude: list[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (ids (U, k) int64, scores (U, k) float32), best first, padded with -1/-inf.

        `at_time` (one time, one per user, or None = the end of the training window) bounds the
        history each user is scored from; `exclude[u]` are item ids never returned to user u.
        """
        self._check_fitted()
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        users, times = self._queries(user_ids, at_time)
        if exclude is not None and len(exclude) != len(users):
            raise ValueError(
                f"exclude must hold one array of item ids per user ({len(users)}), got "
                f"{len(exclude)}"
            )
        n_items = len(self.item_ids_)
        k = int(k)
        out_ids = np.full((len(users), k), -1, np.int64)
        out_scores = np.full((len(users), k), -np.inf, np.float32)
        ex_rows, ex_cols = self._exclusions(exclude, len(users))
        step = max(1, _BATCH_ELEMENTS // n_items)
        for b0 in range(0, len(users), step):
            b1 = min(b0 + step, len(users))
            history = self._history_matrix(users[b0:b1], times[b0:b1])
            scores = self._scores(history)  # (B, I) float64
            lo, hi = np.searchsorted(ex_rows, [b0, b1])
            scores[ex_rows[lo:hi] - b0, ex_cols[lo:hi]] = -np.inf
            cols, vals = _top_k(scores, k)  # (B, kk)
            found = np.isfinite(vals)
            kk = cols.shape[1]
            out_ids[b0:b1, :kk] = np.where(found, self.item_ids_[np.maximum(cols, 0)], -1)
            out_scores[b0:b1, :kk] = np.where(found, vals, -np.inf)
        return out_ids, out_scores

    def _exclusions(
        self, exclude: list[np.ndarray] | None, n_users: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (rows, columns) of the excluded (user, item) pairs, rows ascending."""
        if exclude is None or n_users == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        arrays = [np.asarray(e).reshape(-1) for e in exclude]
        lengths = np.fromiter((a.size for a in arrays), np.int64, count=n_users)
        if lengths.sum() == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        flat = np.concatenate(arrays)
        if not np.issubdtype(flat.dtype, np.integer):
            raise ValueError(f"exclude must hold integer item ids, got dtype {flat.dtype}")
        rows = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
        order = np.argsort(self.item_ids_)
        sorted_ids = self.item_ids_[order]
        at = np.minimum(np.searchsorted(sorted_ids, flat), len(sorted_ids) - 1)
        known = sorted_ids[at] == flat  # unknown item ids cannot be recommended anyway
        return rows[known], order[at[known]]


def _ranges(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Return the concatenation of arange(start[q], end[q]) over q (vectorized)."""
    lengths = end - start
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(start - offsets, lengths) + np.arange(total, dtype=np.int64)


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (columns (B, kk), scores (B, kk)) of each row's kk = min(k, I) best, best first.

    Ties go to the lowest column (columns are in popularity order). Exact and vectorized: the
    kk-th largest value per row is found by partition; every larger value is taken, and the
    tied ones in column order until kk are taken.
    """
    n_rows, n_cols = scores.shape
    kk = min(k, n_cols)
    if n_rows == 0:
        return np.zeros((0, kk), np.int64), np.zeros((0, kk))
    thr = np.partition(scores, n_cols - kk, axis=1)[:, n_cols - kk]  # (B,) kk-th largest
    above = scores > thr[:, None]
    ties = scores == thr[:, None]
    need = kk - above.sum(axis=1)  # (B,) >= 1
    chosen = above | (ties & (np.cumsum(ties, axis=1) <= need[:, None]))
    rows, flat_cols = np.nonzero(chosen)  # row-major: exactly kk per row, columns ascending
    cols = flat_cols.reshape(n_rows, kk)
    vals = scores[rows, flat_cols].reshape(n_rows, kk)
    order = np.lexsort((cols, -vals), axis=1)  # by score, then column
    return np.take_along_axis(cols, order, 1), np.take_along_axis(vals, order, 1)


class MostPopular(RetrievalBaseline):
    """The items watched most in the training window (or its last `window_s` seconds)."""

    def __init__(self, window_s: int | None = None) -> None:
        if window_s is not None and (
            isinstance(window_s, bool) or not isinstance(window_s, int) or window_s < 1
        ):
            raise ValueError(
                f"window_s must be None or a positive number of seconds, got {window_s!r}"
            )
        self.window_s = window_s

    def _popularity_counts(
        self, pos: np.ndarray, ts: np.ndarray, train_end: int, n_items: int
    ) -> np.ndarray:
        if self.window_s is not None:
            pos = pos[ts >= train_end - self.window_s]
        return np.bincount(pos, minlength=n_items).astype(np.float64)

    def _history_matrix(self, users: np.ndarray, times: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((len(users), len(self.item_ids_)))  # the score needs no history

    def _scores(self, history: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.popularity_, history.shape).copy()


class ItemKNN(RetrievalBaseline):
    """Item-to-item cosine similarity on the binary user-item matrix; score = Σ over history."""

    def __init__(self, neighbors: int | None = 200) -> None:
        if neighbors is not None and (
            isinstance(neighbors, bool) or not isinstance(neighbors, int) or neighbors < 1
        ):
            raise ValueError(
                f"neighbors must be None (all) or a positive integer, got {neighbors!r}"
            )
        self.neighbors = neighbors

    def _fit_model(self, train: sp.csr_matrix) -> None:
        n_items = train.shape[1]
        norms = np.sqrt(np.asarray(train.sum(axis=0)).ravel())  # (I,) sqrt(|U_i|)
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        xn = sp.csc_matrix(train @ sp.diags(inv))  # (U, I) columns of unit length
        xt = sp.csr_matrix(xn.T)  # (I, U)
        step = max(1, _BATCH_ELEMENTS // n_items)
        blocks = []
        for a in range(0, n_items, step):
            b = min(a + step, n_items)
            sim = (xt[a:b] @ xn).toarray()  # (bsz, I) cosine similarities
            sim[np.arange(b - a), np.arange(a, b)] = 0.0  # an item is not its own neighbour
            if self.neighbors is not None and self.neighbors < n_items:
                # keep each row's `neighbors` largest similarities
                cut = np.partition(sim, n_items - self.neighbors, axis=1)[
                    :, n_items - self.neighbors
                ]
                sim[sim < cut[:, None]] = 0.0
            blocks.append(sp.csr_matrix(sim))
        self.similarity_ = sp.vstack(blocks, format="csr")  # (I, I) row i: i's neighbours

    def _scores(self, history: sp.csr_matrix) -> np.ndarray:
        return (history @ self.similarity_).toarray()  # (B, I)


class PureSVD(RetrievalBaseline):
    """Truncated SVD of the binary user-item matrix; a history h scores h V Vᵀ."""

    def __init__(self, n_components: int = 64, *, n_iter: int = 7, seed: int = 0) -> None:
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
        self.n_components = n_components
        self.n_iter = n_iter
        self.seed = seed

    def _fit_model(self, train: sp.csr_matrix) -> None:
        # the randomized solver needs fewer components than either side of the matrix
        limit = min(train.shape) - 1
        if limit < 1:
            raise ValueError(
                f"PureSVD needs at least 2 training users and 2 items, got a {train.shape} "
                "training matrix"
            )
        self.n_components_ = min(self.n_components, limit)
        svd = TruncatedSVD(
            n_components=self.n_components_,
            algorithm="randomized",
            n_iter=self.n_iter,
            random_state=self.seed,
        )
        svd.fit(train)
        self.item_factors_ = np.ascontiguousarray(svd.components_.T)  # (I, F) = V

    def _scores(self, history: sp.csr_matrix) -> np.ndarray:
        user = history @ self.item_factors_  # (B, F) = h V
        return user @ self.item_factors_.T  # (B, I) = h V Vᵀ


BASELINES: dict[str, type[RetrievalBaseline]] = {
    "most_popular": MostPopular,
    "item_knn": ItemKNN,
    "svd": PureSVD,
}
