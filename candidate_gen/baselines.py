"""Retrieval baselines: most popular, recent popular, item-kNN, EASE, PureSVD.

Where they sit: next to the candidate generator in the same retrieval evaluation. Each one is
fitted on the watches of the training window and answers the same question as the
`Retriever`: the top-k items for users at a time, with the items to exclude per user, as
`(ids (U, k) int64, scores (U, k) float32)`, best first, padded with -1 / -inf when fewer than
k items remain (the `CandidateIndex` convention, so `evaluation.retrieval` scores them alike).

- `MostPopular`: items ranked by their number of watches in the training window (optionally
  only its last `window_s` seconds). The same list for every user.
- `RecentPopular`: items ranked by their number of watches in [train_end - window_s, train_end)
  (the last `window_s` seconds before the serving time), ties broken by the whole training
  window's counts. The same list for every user.
- `ItemKNN`: cosine similarity between the items' columns of the binary user-item matrix of the
  training window, `sim(i, j) = |U_i ∩ U_j| / sqrt(|U_i| |U_j|)`, optionally pruned to each
  item's `neighbors` most similar items (exactly that many; ties to the more popular item); a
  user's score for j is the sum of the similarities of j to the items of the user's history.
- `EASE` (Steck, WWW 2019): the item-item weights B = I - P diag(1/diag(P)) with
  P = (XᵀX + λI)⁻¹ (closed form of a ridge regression of each item's column on the others',
  with a zero diagonal); a history h scores h B. Dense (items, items) float64, so it refuses a
  catalog whose matrix would exceed `memory_budget_gb` (`MemoryBudgetExceeded`).
- `PureSVD` (Cremonesi et al., RecSys 2010): a truncated SVD X ≈ U Σ Vᵀ of the binary training
  matrix (scikit-learn's seeded randomized solver); a user with history row h scores h V Vᵀ,
  which for a training user equals its row of U Σ Vᵀ and folds in any other history.

Hyperparameters: each class names its one tuned constructor argument in `hyperparameter`
(`window_s`, `neighbors`, `l2`, `n_components`); `fit_grid` fits one model per value of a grid
on the same watches, sharing what the values have in common (the histories; item-kNN's
similarities are computed once, for the widest neighbourhood, and pruned for the others).

A user's history is every watch strictly before the query's `at_time` (from all of the
dataset's watches, as the `Retriever` reads it); the models themselves see only the training
window. Ties are broken by training popularity, then item id, so a user without history gets
the most popular items. Scoring is sparse (scipy.sparse) and batched over users, with bounded
dense (batch, items) temporaries.
"""

from __future__ import annotations

import copy
import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from sklearn.decomposition import TruncatedSVD

from vidrec.features.tables import Dataset

__all__ = [
    "BASELINES",
    "EASE",
    "ItemKNN",
    "MemoryBudgetExceeded",
    "MostPopular",
    "PureSVD",
    "RecentPopular",
    "RetrievalBaseline",
]

# dense (users, items) temporaries per batch stay below this many elements
_BATCH_ELEMENTS = 1 << 22


class MemoryBudgetExceeded(MemoryError):
    """A model's dense matrices would exceed the memory budget it was given."""


class RetrievalBaseline(ABC):
    """Common fit/recommend machinery: the item catalog, the training matrix, the histories.

    Subclasses implement `_fit_model(train)` and `_scores(history)`; constructor arguments are
    stored under their own names (`get_params`).
    """

    # the constructor argument `fit_grid` varies (None: nothing to tune)
    hyperparameter: ClassVar[str | None] = None
    # what `_fit_common` sets: the column order and histories, which do not depend on the
    # hyperparameter (the models of one `fit_grid` share them)
    _COMMON: ClassVar[tuple[str, ...]] = (
        "item_ids_", "popularity_", "_h_user", "_h_time", "_h_col", "_users", "_times",
        "_span", "_key", "train_end_", "_train",
    )  # fmt: skip

    def get_params(self) -> dict[str, Any]:
        """Return the constructor arguments (name -> value) of this model."""
        names = [
            p.name
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        return {n: getattr(self, n) for n in names}

    def fit(self, dataset: Dataset, train_end: int) -> RetrievalBaseline:
        """Return self after fitting on the watches with timestamp < `train_end`."""
        self._fit_model(self._fit_common(dataset, train_end))
        return self

    def fit_grid(
        self, dataset: Dataset, train_end: int, values: Iterable[Any]
    ) -> Iterator[tuple[Any, RetrievalBaseline]]:
        """Yield (value, a new model fitted on the watches before `train_end`) for each value
        of `hyperparameter`, in order; the other settings are this model's."""
        name = self.hyperparameter
        if name is None:
            raise TypeError(f"{type(self).__name__} has no hyperparameter to tune")
        common: RetrievalBaseline | None = None
        for value in values:
            model = type(self)(**(self.get_params() | {name: value}))
            if common is None:
                model.fit(dataset, train_end)
                common = model
            else:
                for attr in self._COMMON:
                    setattr(model, attr, getattr(common, attr))
                model._fit_model(model._train)
            yield value, model

    def _fit_common(self, dataset: Dataset, train_end: int) -> sp.csr_matrix:
        """Set the catalog columns and histories; return the binary training matrix."""
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
        self._train = x
        return x

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
        users, times, k = self._recommend_args(user_ids, k, at_time, exclude)
        n_items = len(self.item_ids_)
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

    def _recommend_args(
        self,
        user_ids: np.ndarray,
        k: int,
        at_time: int | np.ndarray | None,
        exclude: list[np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Return (users, times, k) of a `recommend` call after checking its arguments."""
        self._check_fitted()
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        users, times = self._queries(user_ids, at_time)
        if exclude is not None and len(exclude) != len(users):
            raise ValueError(
                f"exclude must hold one array of item ids per user ({len(users)}), got "
                f"{len(exclude)}"
            )
        return users, times, int(k)

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
    chosen = scores >= thr[:, None]  # >= kk per row; more where the kk-th value is tied
    extra = chosen.sum(axis=1) > kk
    if extra.any():  # those rows take the tied values in column order until kk
        sub, t = scores[extra], thr[extra, None]
        above, ties = sub > t, sub == t
        need = kk - above.sum(axis=1)  # (B',) >= 1
        chosen[extra] = above | (ties & (np.cumsum(ties, axis=1) <= need[:, None]))
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

    def _list_scores(self) -> np.ndarray:
        """(I,) the score of every column: one list for every user."""
        return self.popularity_

    def _history_matrix(self, users: np.ndarray, times: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((len(users), len(self.item_ids_)))  # the score needs no history

    def _scores(self, history: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self._list_scores(), history.shape).copy()

    def recommend(
        self,
        user_ids: np.ndarray,
        k: int,
        at_time: int | np.ndarray | None = None,
        exclude: list[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """As `RetrievalBaseline.recommend` (the same answer): every user gets the first k items
        of one ranking (score, then column) that are not excluded, without dense scores."""
        users, _, k = self._recommend_args(user_ids, k, at_time, exclude)
        scores = self._list_scores()
        n_items = len(scores)
        ranked = np.lexsort((np.arange(n_items), -scores))  # (I,) columns, best first
        rank_of = np.empty(n_items, np.int64)
        rank_of[ranked] = np.arange(n_items)
        ex_rows, ex_cols = self._exclusions(exclude, len(users))
        ex_rank = rank_of[ex_cols]
        per_user = np.bincount(ex_rows, minlength=len(users))
        out_ids = np.full((len(users), k), -1, np.int64)
        out_scores = np.full((len(users), k), -np.inf, np.float32)
        # the first k + (most exclusions of one user) ranks hold every user's answer
        width = min(n_items, k + int(per_user.max(initial=0)))
        step = max(1, _BATCH_ELEMENTS // width)
        for b0 in range(0, len(users), step):
            b1 = min(b0 + step, len(users))
            lo, hi = np.searchsorted(ex_rows, [b0, b1])
            r, c = ex_rows[lo:hi] - b0, ex_rank[lo:hi]
            free = np.ones((b1 - b0, width), bool)
            free[r[c < width], c[c < width]] = False
            free &= np.cumsum(free, axis=1) <= k
            rows, ranks = np.nonzero(free)  # row-major: each row's kept ranks ascending
            slot = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
            cols = ranked[ranks]
            out_ids[b0 + rows, slot] = self.item_ids_[cols]
            out_scores[b0 + rows, slot] = scores[cols]
        return out_ids, out_scores


class RecentPopular(MostPopular):
    """The items watched most in the last `window_s` seconds before the serving time.

    Fitted at `train_end` (the serving time), it counts the watches in
    [train_end - window_s, train_end); items with equal recent counts are ordered by their
    watches in the whole training window, then by id. Scores are the recent counts.
    """

    hyperparameter = "window_s"

    def __init__(self, window_s: int = 7 * 86_400) -> None:
        if isinstance(window_s, np.integer):
            window_s = int(window_s)
        if isinstance(window_s, bool) or not isinstance(window_s, int) or window_s < 1:
            raise ValueError(f"window_s must be a positive number of seconds, got {window_s!r}")
        self.window_s = window_s

    def _popularity_counts(
        self, pos: np.ndarray, ts: np.ndarray, train_end: int, n_items: int
    ) -> np.ndarray:
        # the columns' order (ties of the recent counts): the whole training window's counts
        return np.bincount(pos, minlength=n_items).astype(np.float64)

    def _fit_model(self, train: sp.csr_matrix) -> None:
        t = self._h_time
        recent = (t >= self.train_end_ - self.window_s) & (t < self.train_end_)
        self.recent_ = np.bincount(self._h_col[recent], minlength=len(self.item_ids_)).astype(
            np.float64
        )  # (I,) watches per column in [train_end - window_s, train_end)

    def _list_scores(self) -> np.ndarray:
        return self.recent_


class ItemKNN(RetrievalBaseline):
    """Item-to-item cosine similarity on the binary user-item matrix; score = Σ over history."""

    hyperparameter = "neighbors"

    def __init__(self, neighbors: int | None = 200) -> None:
        if isinstance(neighbors, np.integer):
            neighbors = int(neighbors)
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
        xn = sp.csr_matrix(train @ sp.diags(inv))  # (U, I) columns of unit length
        xt = sp.csr_matrix(xn.T)  # (I, U)
        # row blocks of the (I, I) product bounded by their multiply-adds (>= their non-zeros):
        # item i costs the summed history lengths of its users
        lengths = np.asarray(train.sum(axis=1)).ravel()  # (U,)
        work = np.cumsum(train.T @ lengths)  # (I,) cumulative
        blocks = []
        a = 0
        while a < n_items:
            done = work[a - 1] if a else 0.0
            b = max(a + 1, int(np.searchsorted(work, done + _BATCH_ELEMENTS, side="right")))
            b = min(b, n_items)
            sim = sp.csr_matrix(xt[a:b] @ xn)  # (bsz, I) cosine similarities
            rows = np.repeat(np.arange(b - a), np.diff(sim.indptr))
            cols, vals = sim.indices.astype(np.int64), sim.data
            keep = (cols != rows + a) & (vals > 0)  # an item is not its own neighbour
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
            if self.neighbors is not None:
                rows, cols, vals = _top_per_row(rows, cols, vals, self.neighbors)
            blocks.append(sp.csr_matrix((vals, (rows, cols)), shape=(b - a, n_items)))
            a = b
        self.similarity_ = sp.vstack(blocks, format="csr")  # (I, I) row i: i's neighbours

    def fit_grid(
        self, dataset: Dataset, train_end: int, values: Iterable[Any]
    ) -> Iterator[tuple[Any, RetrievalBaseline]]:
        """As `RetrievalBaseline.fit_grid`; the similarities are computed once, for the widest
        neighbourhood, and each value keeps the first `neighbors` of every row of them (the
        same matrix a fit with that value computes)."""
        values = list(values)
        for v in values:
            ItemKNN(v)  # validate every value first
        if not values:
            return
        widest = None if any(v is None for v in values) else max(values)
        base = ItemKNN(widest).fit(dataset, train_end)
        s = base.similarity_.tocoo()
        rows, cols = s.row.astype(np.int64), s.col.astype(np.int64)
        for value in values:
            model = copy.copy(base)
            model.neighbors = value
            if value != widest:
                r, c, v = _top_per_row(rows, cols, s.data, value)
                model.similarity_ = sp.csr_matrix((v, (r, c)), shape=s.shape)
            yield value, model

    def _scores(self, history: sp.csr_matrix) -> np.ndarray:
        return (history @ self.similarity_).toarray()  # (B, I)


def _top_per_row(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep each row's k largest entries of a COO triplet (ties: the lower column)."""
    if len(rows) == 0:
        return rows, cols, vals
    long = np.bincount(rows)[rows] > k  # only rows with more than k entries lose any
    if not long.any():
        return rows, cols, vals
    r, c, v = rows[long], cols[long], vals[long]
    order = np.lexsort((c, -v, r))
    r, c, v = r[order], c[order], v[order]
    first = np.searchsorted(r, r, side="left")  # r is sorted: each row's first entry
    keep = np.arange(len(r)) - first < k
    short = ~long
    return (
        np.concatenate([rows[short], r[keep]]),
        np.concatenate([cols[short], c[keep]]),
        np.concatenate([vals[short], v[keep]]),
    )


class EASE(RetrievalBaseline):
    """Steck's EASE: B = I - P diag(1/diag(P)), P = (XᵀX + l2·I)⁻¹; a history h scores h B.

    Only items with a training watch get weights (an unwatched item's row and column of B are
    0 for any l2, so the solve is restricted to the watched items); P is inverted from its
    Cholesky factor (LAPACK potrf/potri through scipy). `memory_budget_gb` (None = no limit)
    bounds one dense (items, items) float64 matrix over the catalog the model is fitted on:
    a larger catalog raises `MemoryBudgetExceeded` before anything dense is allocated.
    """

    hyperparameter = "l2"

    def __init__(self, l2: float = 100.0, memory_budget_gb: float | None = None) -> None:
        if isinstance(l2, bool) or not isinstance(l2, int | float | np.number) or not l2 > 0:
            raise ValueError(f"l2 must be a positive number, got {l2!r}")
        if memory_budget_gb is not None and (
            isinstance(memory_budget_gb, bool)
            or not isinstance(memory_budget_gb, int | float)
            or not memory_budget_gb > 0
        ):
            raise ValueError(
                f"memory_budget_gb must be None or a positive number, got {memory_budget_gb!r}"
            )
        self.l2 = float(l2)
        self.memory_budget_gb = memory_budget_gb

    @staticmethod
    def dense_gb(n_items: int) -> float:
        """Size (GB, 1e9 bytes) of one dense (n_items, n_items) float64 matrix."""
        return float(n_items) ** 2 * 8 / 1e9

    def _fit_model(self, train: sp.csr_matrix) -> None:
        n_items = train.shape[1]
        need = self.dense_gb(n_items)
        if self.memory_budget_gb is not None and need > self.memory_budget_gb:
            raise MemoryBudgetExceeded(
                f"EASE on {n_items:,} items needs {need:.1f} GB per dense item x item float64 "
                f"matrix, over its budget of {self.memory_budget_gb:g} GB"
            )
        # columns are in popularity order: the watched items are the leading ones
        n = int(np.count_nonzero(np.asarray(train.sum(axis=0)).ravel()))
        xw = sp.csc_matrix(train[:, :n])
        xt = sp.csr_matrix(xw.T)
        step = max(1, _BATCH_ELEMENTS // max(n, 1))  # column blocks of bounded size
        g = np.empty((n, n), order="F")  # XᵀX + l2 I, filled block by block (no sparse n x n)
        for j0 in range(0, n, step):
            j1 = min(j0 + step, n)
            g[:, j0:j1] = (xt @ xw[:, j0:j1]).toarray()
        g[np.diag_indices(n)] += self.l2
        potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (g,))
        c, info = potrf(g, lower=False, overwrite_a=True, clean=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: Cholesky factorisation failed (info={info})")
        p, info = potri(c, lower=False, overwrite_c=True)  # P's upper triangle, in place
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: inversion failed (info={info})")
        for j0 in range(0, n, step):  # mirror the upper triangle: P symmetric, in place
            j1 = min(j0 + step, n)
            p[j0:j1, :j0] = p[:j0, j0:j1].T
            d = p[j0:j1, j0:j1]
            d[...] = np.triu(d) + np.triu(d, 1).T
        w = p.T  # C-ordered view; P is symmetric, so its entries are P's
        w /= -np.diag(w).copy()[None, :]  # B_ij = -P_ij / P_jj
        w[np.diag_indices(n)] = 0.0  # B_jj = 0
        self.weights_ = w  # (n, n) over the first n columns
        self.n_weighted_ = n

    def _scores(self, history: sp.csr_matrix) -> np.ndarray:
        out = np.zeros(history.shape)
        n = self.n_weighted_
        if n:
            out[:, :n] = history[:, :n] @ self.weights_
        return out


class PureSVD(RetrievalBaseline):
    """Truncated SVD of the binary user-item matrix; a history h scores h V Vᵀ."""

    hyperparameter = "n_components"

    def __init__(self, n_components: int = 64, *, n_iter: int = 7, seed: int = 0) -> None:
        if isinstance(n_components, np.integer):
            n_components = int(n_components)
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

    def fit_grid(
        self, dataset: Dataset, train_end: int, values: Iterable[Any]
    ) -> Iterator[tuple[Any, RetrievalBaseline]]:
        """As `RetrievalBaseline.fit_grid`, from one decomposition at the largest rank: rank r
        keeps its r leading singular vectors (the randomized solver finds them at least as
        accurately as a rank-r run does)."""
        values = list(values)
        for v in values:
            PureSVD(v)  # validate every value first
        if not values:
            return
        base = PureSVD(max(values), n_iter=self.n_iter, seed=self.seed).fit(dataset, train_end)
        for value in values:
            model = copy.copy(base)
            model.n_components = value
            model.n_components_ = min(value, base.n_components_)
            model.item_factors_ = np.ascontiguousarray(base.item_factors_[:, : model.n_components_])
            yield value, model

    def _scores(self, history: sp.csr_matrix) -> np.ndarray:
        user = history @ self.item_factors_  # (B, F) = h V
        return user @ self.item_factors_.T  # (B, I) = h V Vᵀ


BASELINES: dict[str, type[RetrievalBaseline]] = {
    "most_popular": MostPopular,
    "recent_popular": RecentPopular,
    "item_knn": ItemKNN,
    "ease": EASE,
    "svd": PureSVD,
}
