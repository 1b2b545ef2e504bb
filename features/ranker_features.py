"""Ranker feature rows (SPEC §5): one row per (user, item, timestamp) request, built in bulk.

Where this sits: contract tables (`Dataset`) + requests -> `RankerFrame` (raw values) ->
`RankerVocabularies.encode` -> integer codes that the ranking stage embeds. For training the
requests are the impressions; at serving they are the candidate generator's output with t = now.

Every feature of a row uses only events STRICTLY BEFORE the row's timestamp (an event at the same
second does not count), so training rows never see their own or any later outcome.

Categorical (raw values here, codes after `RankerVocabularies.encode`):
    item_id            the scored item (shares the "item" id space with the watched bag)
    watched bag        the user's last N watched item ids (stored once, gathered per row)
    user_language      from `users.language`
    item_language      from `items.language` (shares the "language" id space with user_language)
    channel_id         from `items.channel_id`
    topics             the item's topics, padded
    source             the candidate source (`requests.source`)
    attributes         the item's categorical and multi-valued extra columns as one bag of
                       "column=value" (only when the items table has such columns; id space
                       "attribute", frequency floor `ATTRIBUTE_MIN_COUNT` training rows)

Extra columns of the items table (`features.tables.extra_columns`) come in as the bag above and,
the continuous ones, as continuous columns "item.<column>" after `CONTINUOUS_COLUMNS`. Extra
columns of the users table reach the ranker through the candidate generator: its user tower
takes them, and the CG score is a ranker feature.

Continuous (`CONTINUOUS_COLUMNS`, raw; the ranker normalizes them with a QuantileNormalizer fitted
on the training frame) and 0/1 indicators (`FLAG_COLUMNS`, fed as they are): see the tuples below.
With `time_windows` (the candidate generator's item time signals, `features.time_signals`), the
frame also holds the item's watches in [t - W, t) per window, the time since its first watch and
its trend (`ITEM_TIME_VALUES`), as of the row's own time t, as the last continuous columns.

Implementation: every "how many / when last, before t" feature is one sorted searchsorted over a
composite (group, time) key, e.g. group = (user, channel); no Python loop per row.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec.features.atomic import atomic_write_json
from vidrec.features.tables import Dataset, extra_columns
from vidrec.features.time_signals import ITEM_TIME_VALUES, NO_EVENT, item_signal_values
from vidrec.features.vocab import IdVocabulary

#: Seconds used for "time since ..." when the user never did it (68 years, above any real gap);
#: the matching `never_*` flag is 1 for those rows.
NEVER_SECONDS: float = float(2**31)

#: Raw continuous features, in this column order.
CONTINUOUS_COLUMNS: tuple[str, ...] = (
    "user_channel_watches",  # watches by the user of items of this item's channel before t
    "since_channel_watch",  # s since the user last watched this channel (NEVER_SECONDS if never)
    "since_topic_watch",  # s since the user last watched any of this item's topics (or NEVER)
    "user_item_watches",  # times the user already watched this very item before t
    "user_item_impressions",  # times this item was shown to this user before t (churn)
    "user_item_unclicked",  # ... of which not clicked
    "cg_score",  # candidate generator's score; CG_SCORE_ABSENT when the request has none
    "cg_rank",  # requests.cg_rank if given (e.g. rank over the catalog), else the 1-based rank
    # of cg_score within the page (user, timestamp); 0 when absent
    "item_age",  # t - upload_time in s (clipped at 0: an item is never younger than new)
    "duration",  # item duration in s (NaN when unknown; normalizes to 0)
    "item_popularity",  # watches of the item by anyone before t
    "user_activity",  # watches by the user before t
)

#: 0/1 indicators that qualify the continuous features.
FLAG_COLUMNS: tuple[str, ...] = (
    "never_watched_channel",  # the user never watched this channel before t (or item has none)
    "never_watched_topic",  # the user never watched any of this item's topics before t
    "has_cg_score",  # the request carried a candidate-generator score for this row
)

#: Value of `cg_score` for rows without a candidate-generator score (with has_cg_score = 0).
CG_SCORE_ABSENT: float = 0.0

#: Names of the id spaces; the scored item and the watched bag share "item", user and item
#: language share "language".
ID_SPACES: tuple[str, ...] = ("item", "language", "channel", "topic", "source")
#: The id space of the items' extra categorical and multi-valued columns, present only when the
#: items table has such columns (so models of other data keep their inputs exactly).
ATTRIBUTE_SPACE = "attribute"
#: Training rows an extra-column value needs to get its own code (else OOV, code 0).
ATTRIBUTE_MIN_COUNT = 2


def embedding_width(
    vocab_size: int, *, scale: float = 6.0, min_width: int = 4, max_width: int = 128
) -> int:
    """Return the embedding width for a vocabulary: round(scale * log2(vocab_size)), clipped.

    The rule that the width grows with the log of the vocabulary size (SPEC §5): 2 codes -> 6,
    10 -> 20, 1 000 -> 60, 100 000 -> 100, 1 000 000 -> 120 with the defaults; clipped to
    [min_width, max_width].
    """
    if vocab_size < 1:
        raise ValueError(f"embedding_width: vocab_size must be >= 1, got {vocab_size}")
    return int(min(max_width, max(min_width, round(scale * math.log2(max(vocab_size, 1))))))


# --------------------------------------------------------------------------- the frame


@dataclass
class RankerFrame:
    """Raw ranker features for N requests, in the requests' order.

    rows            (N) user_id, item_id, timestamp, source, user_language, item_language,
                    channel_id [, position][, clicked, watch_time]   (labels when the requests had them)
    continuous      (N, len(CONTINUOUS_COLUMNS)) float64
    flags           (N, len(FLAG_COLUMNS)) float32 0/1
    history_items   (W,) int64 watched item ids of the frame's users, grouped by user, oldest first
                    within a user; shared by all rows (and by frames made with `take`)
    history_end     (N,) int64: the row's watches strictly before t are history_items[start:end]
    history_count   (N,) int64: how many of them (end - start); the bag is the last
                    min(count, history_len) of them
    topics          (I, T) object: padded topic lists (None = padding) of the frame's distinct items
    topic_row       (N,) int64: row -> index into `topics` (and into `attributes`)
    history_len     the default bag size N of `history_matrix`
    attributes      None, or (I, A) object: the distinct items' "column=value" of their extra
                    categorical and multi-valued columns (None = padding)
    """

    rows: pd.DataFrame
    continuous: pd.DataFrame
    flags: pd.DataFrame
    history_items: np.ndarray
    history_end: np.ndarray
    history_count: np.ndarray
    topics: np.ndarray
    topic_row: np.ndarray
    history_len: int
    attributes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def has_labels(self) -> bool:
        """Return True when the rows carry `clicked` and `watch_time` labels."""
        return "clicked" in self.rows.columns and "watch_time" in self.rows.columns

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (clicked int8 (N,), watch_time float64 (N,)); raises if the frame has no labels."""
        if not self.has_labels:
            raise ValueError(
                "this RankerFrame has no labels: build it from requests with 'clicked' and "
                "'watch_time' columns (e.g. dataset.impressions) to train or evaluate on it"
            )
        return (
            np.array(self.rows["clicked"].to_numpy(dtype=np.int8)),  # writable copies
            np.array(self.rows["watch_time"].to_numpy(dtype=np.float64)),
        )

    def history_matrix(
        self, rows: np.ndarray | None = None, history_len: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (positions (B, L) int64 into history_items, valid (B, L) bool), most recent first.

        Gathering per batch keeps memory at O(W + N) instead of O(N * L).
        """
        length = self.history_len if history_len is None else int(history_len)
        sel = slice(None) if rows is None else rows
        end = self.history_end[sel]  # (B,)
        count = np.minimum(self.history_count[sel], length)  # (B,)
        offs = np.arange(length, dtype=np.int64)  # (L,)
        valid = offs[None, :] < count[:, None]  # (B, L)
        pos = np.where(valid, end[:, None] - 1 - offs[None, :], 0)  # (B, L)
        return pos, valid

    def history_ids(
        self, rows: np.ndarray | None = None, history_len: int | None = None
    ) -> np.ndarray:
        """Return the raw watched-item ids (B, L) int64, most recent first, -1 = padding."""
        pos, valid = self.history_matrix(rows, history_len)
        if len(self.history_items) == 0:
            return np.full(pos.shape, -1, dtype=np.int64)
        return np.where(valid, self.history_items[pos], -1)

    def page_ids(self) -> np.ndarray:
        """Return (N,) int64 page codes: rows sharing (user_id, timestamp) form one page."""
        codes, _ = pd.MultiIndex.from_arrays(
            [self.rows["user_id"].to_numpy(), self.rows["timestamp"].to_numpy()]
        ).factorize()
        return codes.astype(np.int64)

    def take(self, indices: np.ndarray) -> RankerFrame:
        """Return the frame restricted to `indices` (rows re-indexed 0..n-1; shared arrays kept)."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return RankerFrame(
            rows=self.rows.iloc[idx].reset_index(drop=True),
            continuous=self.continuous.iloc[idx].reset_index(drop=True),
            flags=self.flags.iloc[idx].reset_index(drop=True),
            history_items=self.history_items,
            history_end=self.history_end[idx],
            history_count=self.history_count[idx],
            topics=self.topics,
            topic_row=self.topic_row[idx],
            history_len=self.history_len,
            attributes=self.attributes,
        )


# ----------------------------------------------------------------- bulk "before t" lookups


def _before(
    ev_g: np.ndarray,
    ev_t: np.ndarray,
    q_g: np.ndarray,
    q_t: np.ndarray,
    n_groups: int,
    *,
    stable: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (count (Q,), end (Q,), order (E,)): events of the query's group strictly before its time.

    Events sorted by (group, time) are `ev[order]`; a query's events are the sorted positions
    end - count .. end - 1, oldest first. Group codes lie in [0, n_groups); -1 = no group (an
    event that never counts, a query that gets count 0). `stable` keeps events of the same
    group and second in input order (needed only where their order is kept, the watched bag).
    """
    n_ev = len(ev_t)
    t_all = np.concatenate([ev_t, q_t]).astype(np.int64)
    t_min = int(t_all.min()) if len(t_all) else 0
    span = int(t_all.max()) - t_min + 1 if len(t_all) else 1
    ev_tc, q_tc = ev_t.astype(np.int64) - t_min, q_t.astype(np.int64) - t_min
    if n_groups * span >= 2**62:  # the composite key would overflow: renumber groups densely
        g_all = np.concatenate([ev_g, q_g])
        codes, uniq = pd.factorize(g_all)
        codes = np.where(g_all < 0, -1, codes).astype(np.int64)
        ev_g, q_g, n_groups = codes[:n_ev], codes[n_ev:], len(uniq)
        if n_groups * span >= 2**62:  # ... and code times by their rank
            rank_times = np.unique(t_all)
            ev_tc = np.searchsorted(rank_times, ev_t).astype(np.int64)
            q_tc = np.searchsorted(rank_times, q_t).astype(np.int64)
            span = len(rank_times)
    ev_key = np.where(ev_g >= 0, ev_g * span + ev_tc, -1)
    order = np.argsort(ev_key, kind="stable" if stable else "quicksort")
    key = ev_key[order]
    valid = q_g >= 0
    q_key = np.where(valid, q_g * span + q_tc, -1)
    q_order = np.argsort(q_key)  # sorted needles keep searchsorted cache-friendly
    end = np.empty(len(q_t), dtype=np.int64)
    start = np.empty(len(q_t), dtype=np.int64)
    end[q_order] = np.searchsorted(key, q_key[q_order], side="left")
    start[q_order] = np.searchsorted(key, (np.maximum(q_g, 0) * span)[q_order], side="left")
    count = np.where(valid, end - start, 0)
    return count, end, order


def _count_and_last(
    ev_g: np.ndarray, ev_t: np.ndarray, q_g: np.ndarray, q_t: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (count (Q,) int64, last time (Q,) float64, NaN if none) of events before each query."""
    count, end, order = _before(ev_g, ev_t, q_g, q_t, n_groups)
    last = np.full(len(q_t), np.nan)
    has = count > 0
    if has.any():
        last[has] = ev_t[order[end[has] - 1]]
    return count.astype(np.int64), last


# ------------------------------------------------------------------------ validation


def _first_rows(df: pd.DataFrame, mask: np.ndarray, n: int = 5) -> str:
    return df.loc[mask].head(n).to_string()


def _validate_requests(requests: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(requests, pd.DataFrame):
        raise TypeError(f"requests must be a pandas DataFrame, got {type(requests).__name__}")
    dtypes = requests.dtypes.to_dict()  # one lookup per column name below
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in dtypes]
    if missing:
        raise ValueError(
            f"requests is missing column(s) {missing}; it needs user_id, item_id, timestamp "
            "(optional: source, cg_score, cg_rank, clicked, watch_time, position)"
        )
    idx = requests.index
    plain = isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1
    req = requests if plain else requests.reset_index(drop=True)
    for col in ("user_id", "item_id", "timestamp"):
        if not pd.api.types.is_integer_dtype(dtypes[col]):
            raise TypeError(
                f"requests.{col} must be an integer column (canonical int64; timestamps in UTC "
                f"seconds), got dtype {dtypes[col]}; convert it with .astype('int64')"
            )
    has_clicked, has_wt = "clicked" in req.columns, "watch_time" in req.columns
    if has_clicked != has_wt:
        raise ValueError(
            "requests has only one of 'clicked' / 'watch_time'; give both (labelled impressions) "
            "or neither (serving candidates)"
        )
    if has_clicked:
        clicked = _as_float(req["clicked"])
        bad = ~np.isin(clicked, (0.0, 1.0))
        if bad.any():
            raise ValueError(
                f"requests.clicked must be 0 or 1; first offending rows:\n{_first_rows(req, bad)}"
            )
        wt = _as_float(req["watch_time"])
        bad = ~np.isfinite(wt) | (wt < 0)
        if bad.any():
            raise ValueError(
                "requests.watch_time must be finite and >= 0 (0 when not clicked); first "
                f"offending rows:\n{_first_rows(req, bad)}"
            )
    sc = None
    if "cg_score" in req.columns:
        sc = _as_float(req["cg_score"])
        bad = np.isinf(sc)
        if bad.any():
            raise ValueError(
                f"requests.cg_score contains inf; first offending rows:\n{_first_rows(req, bad)}"
            )
    if "cg_rank" in req.columns:
        if sc is None:  # cg_score absent
            raise ValueError("requests has cg_rank but no cg_score; give both or only cg_score")
        rk = _as_float(req["cg_rank"])
        bad = ~np.isnan(sc) & ~(np.isfinite(rk) & (rk >= 1))
        if bad.any():
            raise ValueError(
                "requests.cg_rank must be a number >= 1 wherever cg_score is given; first "
                f"offending rows:\n{_first_rows(req, bad)}"
            )
    return req


def _str_codes_of(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Return (codes (n,) int64, -1 = missing; names (K,) object str) of a categorical column."""
    if isinstance(values.dtype, pd.CategoricalDtype):  # codes already: name the categories
        cat = values.array
        names = np.array([str(c) for c in cat.categories], dtype=object)
        if len(set(names)) == len(names):  # distinct names: the codes stand as they are
            return np.asarray(cat.codes, dtype=np.int64), names
    arr = values.to_numpy(dtype=object)
    present = pd.notna(arr)
    codes = np.full(len(arr), -1, dtype=np.int64)
    if not present.any():
        return codes, np.array([], dtype=object)
    v = arr if present.all() else arr[present]
    if pd.api.types.infer_dtype(v, skipna=False) != "string":  # e.g. int ids: named by str()
        v = np.array([str(x) for x in v], dtype=object)
    c, names = pd.factorize(v)
    codes[present] = c
    return codes, np.asarray(names, dtype=object)


def _block(columns: dict[str, np.ndarray], order: tuple[str, ...], dtype: Any) -> np.ndarray:
    """(N, len(order)) array of `dtype` with `order`'s columns side by side."""
    block = np.empty((len(next(iter(columns.values()))), len(order)), dtype=dtype)
    for j, name in enumerate(order):
        block[:, j] = columns[name]
    return block


def _topic_codes_of(topics: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Return (codes (I, T) int64 with -1 padding, names (K,) object) of per-item topic lists."""
    n = len(topics)
    ex = topics.reset_index(drop=True).explode()
    ex = ex[ex.notna()]
    if len(ex) == 0:
        return np.full((n, 1), -1, dtype=np.int64), np.array([], dtype=object)
    pos = np.asarray(
        ex.index, dtype=np.int64
    )  # item position, non-decreasing (explode keeps order)
    starts = np.r_[0, np.flatnonzero(np.diff(pos)) + 1]
    within = np.arange(len(pos)) - np.repeat(starts, np.diff(np.r_[starts, len(pos)]))
    codes, names = pd.factorize(ex.map(str).to_numpy(dtype=object))
    out = np.full((n, int(within.max()) + 1), -1, dtype=np.int64)
    out[pos, within] = codes
    return out, np.asarray(names, dtype=object)


def _attribute_codes_of(items: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Return (codes (I, A) int64 with -1 padding, names (K,) object) of each item's
    "column=value" over the categorical (one value) and multi-valued (lists) `columns`."""
    n = len(items)
    pos_parts, name_parts = [np.zeros(0, np.int64)], [np.zeros(0, dtype=object)]
    for c in columns:
        ex = items[c].reset_index(drop=True).explode()  # a str column stays one value per row
        ex = ex[ex.notna()]
        pos_parts.append(np.asarray(ex.index, dtype=np.int64))
        name_parts.append((c + "=" + ex.astype(str)).to_numpy(dtype=object))
    pos, names = np.concatenate(pos_parts), np.concatenate(name_parts)
    if len(pos) == 0:
        return np.full((n, 1), -1, dtype=np.int64), np.array([], dtype=object)
    order = np.argsort(pos, kind="stable")  # by item, columns in order
    pos, names = pos[order], names[order]
    starts = np.r_[0, np.flatnonzero(np.diff(pos)) + 1]
    within = np.arange(len(pos)) - np.repeat(starts, np.diff(np.r_[starts, len(pos)]))
    codes, uniq = pd.factorize(names)
    out = np.full((n, int(within.max()) + 1), -1, dtype=np.int64)
    out[pos, within] = codes
    return out, np.asarray(uniq, dtype=object)


def _codes_in(sorted_uniq: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Return the position of each value in `sorted_uniq`, -1 when absent."""
    if len(sorted_uniq) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_uniq, values), len(sorted_uniq) - 1)
    return np.where(sorted_uniq[pos] == values, pos, -1).astype(np.int64)


def _pair_codes(
    ev: tuple[np.ndarray, np.ndarray], q: tuple[np.ndarray, np.ndarray], n_a: int, n_b: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (event groups, query groups, n_groups) of the pairs (a, b); -1 where a or b is -1."""
    n_ev = len(ev[0])
    a = np.concatenate([ev[0], q[0]])
    b = np.concatenate([ev[1], q[1]])
    bad = (a < 0) | (b < 0)
    if n_a * n_b < 2**62:
        g, n = np.where(bad, -1, a * n_b + b), n_a * n_b
    else:  # too many combinations for a product code: number the pairs that occur instead
        codes, uniq = pd.MultiIndex.from_arrays([a, b]).factorize()
        g, n = np.where(bad, -1, codes).astype(np.int64), len(uniq)
    return g[:n_ev], g[n_ev:], n


def _categorical(codes: np.ndarray, names: np.ndarray | pd.Index) -> pd.Categorical:
    cats = names if isinstance(names, pd.Index) else pd.Index(names, dtype=object)
    return pd.Categorical.from_codes(codes, categories=cats)


def _as_float(col: pd.Series) -> np.ndarray:
    """A request column as float64, anything not numeric as NaN (no parsing when it already is
    a number column: the common case, ~0.1 ms cheaper per column and request)."""
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)


def _gather_users(
    sorted_users: np.ndarray, uniq_users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return (positions into the user-sorted events, user code in uniq_users) of uniq_users' events.

    Events keep their (user, time) order; concatenating contiguous slices costs O(result).
    """
    starts = np.searchsorted(sorted_users, uniq_users, side="left")
    lengths = np.searchsorted(sorted_users, uniq_users, side="right") - starts
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths  # where each user's slice begins in the result
    pos = np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, lengths)
    return pos, np.repeat(np.arange(len(uniq_users), dtype=np.int64), lengths)


class _TimeSortedGroups:
    """Events sorted by (group, time) answering "how many before t" for any query time."""

    def __init__(self, group: np.ndarray, t: np.ndarray, n_groups: int) -> None:
        keep = group >= 0
        group, t = group[keep], t[keep].astype(np.int64)
        self.t_min = int(t.min()) if len(t) else 0
        t_max = int(t.max()) if len(t) else 0
        self.span = t_max - self.t_min + 2  # codes 0..span-2 for events, span-1 = after all
        self.times: np.ndarray | None = None
        if max(n_groups, 1) * self.span >= 2**62:  # code times by rank instead
            self.times = np.unique(t)
            self.span = len(self.times) + 1
        self.key = np.sort(group * self.span + self._code(t))

    def _code(self, t: np.ndarray) -> np.ndarray:
        # a query time's code counts the event times strictly below it; clipping keeps codes in
        # range without changing that count
        if self.times is not None:
            return np.searchsorted(self.times, t, side="left").astype(np.int64)
        return np.clip(t.astype(np.int64) - self.t_min, 0, self.span - 1)

    def count_before(self, group: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Return (Q,) int64: events of the query's group strictly before its time (0 for -1)."""
        valid = group >= 0
        g = np.maximum(group, 0)
        q_key = g * self.span + self._code(t)
        order = np.argsort(q_key)  # sorted needles keep searchsorted cache-friendly
        end = np.empty(len(t), dtype=np.int64)
        start = np.empty(len(t), dtype=np.int64)
        end[order] = np.searchsorted(self.key, q_key[order], side="left")
        start[order] = np.searchsorted(self.key, (g * self.span)[order], side="left")
        return np.where(valid, end - start, 0)


class RankerFeatureIndex:
    """A `Dataset` prepared for building ranker features repeatedly (serving, many requests).

    Holds the items' attribute codes, the watches and impressions sorted by (user, time) and
    the watches sorted by (item, time). Building from an index reads only the requesting users'
    events (plus a binary search per row for item popularity), so scoring one user's
    candidates does not scan the whole log. The index is a snapshot: rebuild it when the
    dataset changes.
    """

    def __init__(self, dataset: Dataset) -> None:
        items, users = dataset.items, dataset.users
        for name, table, cols in (
            ("items", items, ("item_id", "upload_time")),
            ("users", users, ("user_id",)),
            ("watches", dataset.watches, ("user_id", "item_id", "timestamp")),
        ):
            miss = [c for c in cols if c not in table.columns]
            if miss:
                raise ValueError(
                    f"dataset.{name} is missing column(s) {miss} (see features/tables.py)"
                )
        self.n_items = len(items)
        self.item_index = pd.Index(items["item_id"].to_numpy(dtype=np.int64))
        if not self.item_index.is_unique:
            raise ValueError("dataset.items.item_id has duplicates; each item must appear once")
        none: tuple[np.ndarray, np.ndarray] = (
            np.full(self.n_items, -1, dtype=np.int64),
            np.array([], dtype=object),
        )
        # per item: channel / language / topic codes (-1 = missing) and the names they index
        self.channel_codes: np.ndarray
        self.channel_names: np.ndarray
        self.language_codes: np.ndarray
        self.language_names: np.ndarray
        self.channel_codes, self.channel_names = (
            _str_codes_of(items["channel_id"]) if "channel_id" in items else none
        )
        self.language_codes, self.language_names = (
            _str_codes_of(items["language"]) if "language" in items else none
        )
        if "topics" in items:
            self.topic_codes, self.topic_names = _topic_codes_of(items["topics"])
        else:
            self.topic_codes = np.full((self.n_items, 1), -1, dtype=np.int64)
            self.topic_names = np.array([], dtype=object)
        # extra columns of items: continuous values, and one bag of "column=value" codes
        extras = extra_columns(dataset, "items")
        self.extra_continuous = {
            f"item.{c}": pd.to_numeric(items[c], errors="coerce").to_numpy(np.float64)
            for c, kind in extras.items()
            if kind == "continuous"
        }
        bagged = [c for c, kind in extras.items() if kind in ("categorical", "multi")]
        self.attribute_codes: np.ndarray | None = None
        self.attribute_names = np.array([], dtype=object)
        if bagged:
            self.attribute_codes, self.attribute_names = _attribute_codes_of(items, bagged)
        self.upload = items["upload_time"].to_numpy(dtype=np.int64)
        self.duration = (
            pd.to_numeric(items["duration"], errors="coerce").to_numpy(dtype=np.float64)
            if "duration" in items
            else np.full(self.n_items, np.nan)
        )
        self.user_index = pd.Index(users["user_id"].to_numpy(dtype=np.int64))
        if "language" in users:
            self.user_language_codes, self.user_language_names = _str_codes_of(users["language"])
        else:
            self.user_language_codes, self.user_language_names = (
                np.full(len(users), -1, dtype=np.int64),
                np.array([], dtype=object),
            )
        # the categories of the frames' categorical columns, built once (a 40k-channel Index
        # rebuilt per serving request costs milliseconds)
        self.channel_categories = pd.Index(self.channel_names, dtype=object)
        self.language_categories = pd.Index(self.language_names, dtype=object)
        self.user_language_categories = pd.Index(self.user_language_names, dtype=object)

        w = dataset.watches
        w_user = w["user_id"].to_numpy(dtype=np.int64)
        w_t = w["timestamp"].to_numpy(dtype=np.int64)
        order = np.lexsort((w_t, w_user))  # by user, then time; stable within a second
        self.w_user = w_user[order]
        self.w_t = w_t[order]
        self.w_item = w["item_id"].to_numpy(dtype=np.int64)[order]
        self.w_ipos = self.item_index.get_indexer(self.w_item).astype(np.int64)
        self.popularity = _TimeSortedGroups(self.w_ipos, self.w_t, self.n_items)
        self._first_watch: np.ndarray | None = None  # per item, built on first use

        imp = dataset.impressions
        if imp is not None and len(imp):
            for col in ("user_id", "item_id", "timestamp", "clicked"):
                if col not in imp.columns:
                    raise ValueError(
                        f"dataset.impressions is missing column {col!r} (see features/tables.py)"
                    )
            i_user = imp["user_id"].to_numpy(dtype=np.int64)
            i_t = imp["timestamp"].to_numpy(dtype=np.int64)
            order = np.lexsort((i_t, i_user))
            self.i_user = i_user[order]
            self.i_t = i_t[order]
            self.i_ipos = self.item_index.get_indexer(
                imp["item_id"].to_numpy(dtype=np.int64)[order]
            ).astype(np.int64)
            self.i_clicked = imp["clicked"].to_numpy(dtype=np.int64)[order]
        else:
            self.i_user = self.i_t = self.i_ipos = self.i_clicked = np.zeros(0, dtype=np.int64)

    def for_user(self, user: int, items: np.ndarray, times: np.ndarray) -> RankerFeatureIndex:
        """A view of this index for requests of `user` alone, with the watches `items` at
        `times` added to that user's logged ones (fresh watches a caller passes at serving).

        The user's own events are a few rows cut from the sorted arrays; the catalog and the
        items' popularity are this index's, shared and unchanged (one user's fresh watches do
        not move an item's popularity). Requests of other users read no events from it."""
        self.first_watch()  # an item-level statistic: computed on the whole log, then shared
        view = copy.copy(self)
        lo, hi = np.searchsorted(self.w_user, [user, user + 1])
        ipos = self.item_index.get_indexer(np.asarray(items, dtype=np.int64)).astype(np.int64)
        t = np.concatenate([self.w_t[lo:hi], np.asarray(times, dtype=np.int64)])
        order = np.argsort(t, kind="stable")
        view.w_t = t[order]
        view.w_user = np.full(len(t), user, dtype=np.int64)
        view.w_item = np.concatenate([self.w_item[lo:hi], np.asarray(items, dtype=np.int64)])[order]
        view.w_ipos = np.concatenate([self.w_ipos[lo:hi], ipos])[order]
        lo, hi = np.searchsorted(self.i_user, [user, user + 1])
        view.i_user, view.i_t = self.i_user[lo:hi], self.i_t[lo:hi]
        view.i_ipos, view.i_clicked = self.i_ipos[lo:hi], self.i_clicked[lo:hi]
        return view

    def first_watch(self) -> np.ndarray:
        """(n_items,) int64 time of each item's first watch (NO_EVENT if never watched)."""
        if self._first_watch is None:
            first = np.full(self.n_items, NO_EVENT, dtype=np.int64)
            known = self.w_ipos >= 0
            np.minimum.at(first, self.w_ipos[known], self.w_t[known])
            self._first_watch = first
        return self._first_watch

    def item_time_values(
        self, ipos: np.ndarray, t: np.ndarray, windows: tuple[int, ...]
    ) -> np.ndarray:
        """(N, len(ITEM_TIME_VALUES)) raw item time signals of items `ipos` at times `t`, from
        the watches strictly before t (`features.time_signals.item_signal_values`)."""
        before = self.popularity.count_before(ipos, t)
        counts = np.column_stack(
            [before - self.popularity.count_before(ipos, t - int(w)) for w in windows]
        )
        return item_signal_values(counts, self.first_watch()[ipos], t, tuple(windows))


@dataclass
class RequestFeatures:
    """The numeric features of N requests: everything of a `RankerFrame` but its strings.

    `build_ranker_frame` names these values (categories, topic names, DataFrames);
    `RankerVocabularies.encode_requests` turns them into codes through a `CatalogCodes`
    without any string, for serving.

    ipos            (N,) the row's item's position in the index's catalog
    upos            (N,) the row's user's position in the index's users (-1: not in the data)
    uniq_ipos       (I,) the frame's distinct item positions; topic_row (N,) indexes them
    continuous      (N, len(continuous_columns)) float64, raw
    flags           (N, len(FLAG_COLUMNS)) float32 0/1
    history_items, history_end, history_count: as in `RankerFrame`
    """

    ipos: np.ndarray
    upos: np.ndarray
    uniq_ipos: np.ndarray
    topic_row: np.ndarray
    continuous: np.ndarray
    continuous_columns: tuple[str, ...]
    flags: np.ndarray
    history_items: np.ndarray
    history_end: np.ndarray
    history_count: np.ndarray


def request_features(
    ix: RankerFeatureIndex,
    r_user: np.ndarray,
    ipos: np.ndarray,
    r_t: np.ndarray,
    cg_score: np.ndarray | None = None,
    cg_rank: np.ndarray | None = None,
    time_windows: tuple[int, ...] | None = None,
) -> RequestFeatures:
    """Return the numeric features of the requests (user `r_user`, catalog item `ipos`, time
    `r_t`), each from `ix`'s events strictly before its time (see `build_ranker_frame`).

    `cg_score` (NaN = none for that row) and `cg_rank` (the rank to use where a score is
    given) are the candidate generator's, or None when the requests carry none. Every `ipos`
    must be a catalog position (>= 0): `build_ranker_frame` refuses other items first.
    """
    n = len(r_user)
    n_items = ix.n_items
    ch_codes, tp_codes = ix.channel_codes, ix.topic_codes
    uniq_ipos, topic_row = np.unique(ipos, return_inverse=True)
    requested = np.zeros(n_items, dtype=bool)
    requested[ipos] = True

    # ---- users: dense codes over the requests' users
    uniq_users = np.unique(r_user)
    n_u = len(uniq_users)
    r_uc = np.searchsorted(uniq_users, r_user).astype(np.int64)
    upos = ix.user_index.get_indexer(uniq_users)[r_uc]  # one lookup per distinct user

    # ---- the requesting users' watches, in (user, time) order
    t_cap = int(r_t.max()) if n else 0  # no event at or after the last request can matter
    sel, w_uc = _gather_users(ix.w_user, uniq_users)
    w_t = ix.w_t[sel]
    early = w_t < t_cap
    sel, w_uc, w_t = sel[early], w_uc[early], w_t[early]
    w_item, w_ipos = ix.w_item[sel], ix.w_ipos[sel]

    # user activity + watched bag
    user_activity, hist_end, hist_order = _before(w_uc, w_t, r_uc, r_t, n_u, stable=True)
    history_items = w_item[hist_order]

    # user x item: watches of this very item
    ev_g, q_g, n_g = _pair_codes((w_uc, w_ipos), (r_uc, ipos), n_u, n_items)
    user_item_watches, _ = _count_and_last(ev_g, w_t, q_g, r_t, n_g)

    # item popularity: watches by anyone of the item before t
    item_popularity = ix.popularity.count_before(ipos, r_t)

    # user x channel
    n_ch = max(len(ix.channel_names), 1)
    w_ch = np.where(w_ipos >= 0, ch_codes[np.maximum(w_ipos, 0)], -1)
    ev_g, q_g, n_g = _pair_codes((w_uc, w_ch), (r_uc, ch_codes[ipos]), n_u, n_ch)
    user_channel_watches, last_ch = _count_and_last(ev_g, w_t, q_g, r_t, n_g)
    never_ch = np.isnan(last_ch)
    since_channel = np.where(never_ch, NEVER_SECONDS, r_t - np.nan_to_num(last_ch))

    # user x topic: one event per (watch, topic of the watched item), one query per (row, topic
    # of the scored item); the row takes the latest over its topics
    known = w_ipos >= 0
    w_tp = tp_codes[w_ipos[known]]  # (Wk, T)
    e_row, e_col = np.nonzero(w_tp >= 0)
    q_tp = tp_codes[ipos]  # (N, T)
    q_row, q_col = np.nonzero(q_tp >= 0)
    ev_g, q_g, n_g = _pair_codes(
        (w_uc[known][e_row], w_tp[e_row, e_col]),
        (r_uc[q_row], q_tp[q_row, q_col]),
        n_u,
        max(len(ix.topic_names), 1),
    )
    _, last_q = _count_and_last(ev_g, w_t[known][e_row], q_g, r_t[q_row], n_g)
    last_mat = np.full(q_tp.shape, -np.inf)  # (N, T)
    last_mat[q_row, q_col] = np.where(np.isnan(last_q), -np.inf, last_q)
    last_topic = last_mat.max(axis=1)  # (N,)
    never_topic = ~np.isfinite(last_topic)
    since_topic = np.where(never_topic, NEVER_SECONDS, r_t - np.where(never_topic, 0, last_topic))

    # ---- churn: impressions of this item to this user before t (and the unclicked ones)
    sel, i_uc = _gather_users(ix.i_user, uniq_users)
    i_t, i_ipos = ix.i_t[sel], ix.i_ipos[sel]
    m = (i_t < t_cap) & (i_ipos >= 0)
    m &= requested[np.maximum(i_ipos, 0)]
    ev_g, q_g, n_g = _pair_codes((i_uc[m], i_ipos[m]), (r_uc, ipos), n_u, n_items)
    shown, _ = _count_and_last(ev_g, i_t[m], q_g, r_t, n_g)
    m0 = ix.i_clicked[sel][m] == 0
    unclicked, _ = _count_and_last(ev_g[m0], i_t[m][m0], q_g, r_t, n_g)

    # ---- the candidate generator's score and rank
    if cg_score is not None:
        has_cg = ~np.isnan(cg_score)
        cg_rank = np.where(has_cg, cg_rank if cg_rank is not None else 0.0, 0.0)
        cg_score = np.where(has_cg, cg_score, CG_SCORE_ABSENT)
    else:
        has_cg = np.zeros(n, dtype=bool)
        cg_rank = np.zeros(n)
        cg_score = np.full(n, CG_SCORE_ABSENT)

    cont = {
        "user_channel_watches": user_channel_watches,
        "since_channel_watch": since_channel,
        "since_topic_watch": since_topic,
        "user_item_watches": user_item_watches,
        "user_item_impressions": shown,
        "user_item_unclicked": unclicked,
        "cg_score": cg_score,
        "cg_rank": cg_rank,
        "item_age": np.maximum(r_t - ix.upload[ipos], 0),
        "duration": ix.duration[ipos],
        "item_popularity": item_popularity,
        "user_activity": user_activity,
    }
    cont.update({name: values[ipos] for name, values in ix.extra_continuous.items()})
    columns = CONTINUOUS_COLUMNS + tuple(ix.extra_continuous)
    if time_windows:  # the item's recent popularity as of t
        values = ix.item_time_values(ipos, r_t, tuple(int(w) for w in time_windows))
        cont.update({name: values[:, j] for j, name in enumerate(ITEM_TIME_VALUES)})
        columns += ITEM_TIME_VALUES
    flags = {
        "never_watched_channel": never_ch,
        "never_watched_topic": never_topic,
        "has_cg_score": has_cg,
    }
    return RequestFeatures(
        ipos=ipos,
        upos=upos,
        uniq_ipos=uniq_ipos,
        topic_row=topic_row.astype(np.int64),
        continuous=_block(cont, columns, np.float64),
        continuous_columns=columns,
        flags=_block(flags, FLAG_COLUMNS, np.float32),
        history_items=history_items.astype(np.int64),
        history_end=hist_end.astype(np.int64),
        history_count=user_activity.astype(np.int64),
    )


def page_ranks(cg_score: np.ndarray, users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(N,) float64: each row's 1-based rank by CG score within its page (user, timestamp),
    highest first, ties in row order; NaN where the score is NaN."""
    return (
        pd.Series(cg_score)
        .groupby([users, times], sort=False)
        .rank(ascending=False, method="first")
        .to_numpy()
    )


def build_ranker_frame(
    dataset: Dataset | RankerFeatureIndex,
    requests: pd.DataFrame,
    *,
    history_len: int = 50,
    time_windows: tuple[int, ...] | None = None,
) -> RankerFrame:
    """Return the `RankerFrame` of `requests` (user_id, item_id, timestamp[, source, cg_score, cg_rank]).

    Every feature uses only `dataset` events strictly before the request's timestamp. Pass a
    `RankerFeatureIndex` instead of the dataset to build repeatedly (serving) without re-sorting
    the logs. Requests of items absent from `dataset.items` are refused (their attributes are
    unknown); a user absent from `dataset.users` gets a missing (OOV) language. Labels
    (`clicked`, `watch_time`) and `position` are carried through when present. With
    `time_windows` (seconds, shortest first) the item time signals `ITEM_TIME_VALUES` are added
    as the last continuous columns; without, the frame is as it was before them.
    """
    if history_len < 1:
        raise ValueError(f"build_ranker_frame: history_len must be >= 1, got {history_len}")
    req = _validate_requests(requests)
    ix = dataset if isinstance(dataset, RankerFeatureIndex) else RankerFeatureIndex(dataset)
    n = len(req)

    r_user = req["user_id"].to_numpy(dtype=np.int64)
    r_item = req["item_id"].to_numpy(dtype=np.int64)
    r_t = req["timestamp"].to_numpy(dtype=np.int64)

    ipos = ix.item_index.get_indexer(r_item)
    unknown = ipos < 0
    if unknown.any():
        raise ValueError(
            f"requests reference {int(unknown.sum())} row(s) with item_id absent from "
            f"dataset.items; first offending rows:\n{_first_rows(req, unknown)}\n"
            "score only items of the catalog (or add them to the items table)"
        )

    # ---- the candidate generator score, and its rank within the page (user, timestamp)
    # unless the requests give one (e.g. over the whole catalog)
    cg, rank = None, None
    if "cg_score" in req.columns:
        cg = _as_float(req["cg_score"])
        rank = (
            _as_float(req["cg_rank"]) if "cg_rank" in req.columns else page_ranks(cg, r_user, r_t)
        )
    f = request_features(ix, r_user, ipos, r_t, cg, rank, time_windows)

    # ---- names: the items' topics and attributes, the rows' categories
    tp_rows = ix.topic_codes[f.uniq_ipos]  # (I, T)
    topics = np.full(tp_rows.shape, None, dtype=object)  # (I, T) topic names, None = padding
    topics[tp_rows >= 0] = ix.topic_names[tp_rows[tp_rows >= 0]]
    attributes = None
    if ix.attribute_codes is not None:
        at_rows = ix.attribute_codes[f.uniq_ipos]  # (I, A)
        attributes = np.full(at_rows.shape, None, dtype=object)
        attributes[at_rows >= 0] = ix.attribute_names[at_rows[at_rows >= 0]]
    user_lang = _categorical(
        np.where(f.upos >= 0, ix.user_language_codes[np.maximum(f.upos, 0)], -1)
        if len(ix.user_language_codes)
        else np.full(n, -1, dtype=np.int64),
        ix.user_language_categories,
    )
    if "source" in req.columns:
        src_codes, src_names = _str_codes_of(req["source"])
    else:
        src_codes, src_names = np.full(n, -1, dtype=np.int64), np.array([], dtype=object)
    rows = pd.DataFrame(
        {
            "user_id": r_user,
            "item_id": r_item,
            "timestamp": r_t,
            "source": _categorical(src_codes, src_names),
            "user_language": user_lang,
            "item_language": _categorical(ix.language_codes[ipos], ix.language_categories),
            "channel_id": _categorical(ix.channel_codes[ipos], ix.channel_categories),
        }
    )
    if "position" in req.columns:
        rows["position"] = req["position"].to_numpy()
    if "clicked" in req.columns:
        rows["clicked"] = pd.to_numeric(req["clicked"]).to_numpy(dtype=np.int8)
        rows["watch_time"] = pd.to_numeric(req["watch_time"]).to_numpy(dtype=np.float64)

    return RankerFrame(
        rows=rows,
        # one 2-D block each (a frame built column by column costs ~1 ms more per request)
        continuous=pd.DataFrame(f.continuous, columns=list(f.continuous_columns), copy=False),
        flags=pd.DataFrame(f.flags, columns=list(FLAG_COLUMNS), copy=False),
        history_items=f.history_items,
        history_end=f.history_end,
        history_count=f.history_count,
        topics=topics,
        topic_row=f.topic_row,
        history_len=int(history_len),
        attributes=attributes,
    )


# ---------------------------------------------------------------------- vocabularies


@dataclass
class EncodedRankerFrame:
    """Integer codes of a `RankerFrame` (0 = padding/OOV everywhere).

    item, user_language, item_language, channel, source: (N,) int64
    history_codes (W,) int64 codes of frame.history_items; topic_codes (I, T) int64
    history_end, history_count, topic_row: as in RankerFrame
    attribute_codes None, or (I, A) int64 codes of frame.attributes (vocabularies with an
                    "attribute" space only)
    """

    item: np.ndarray
    user_language: np.ndarray
    item_language: np.ndarray
    channel: np.ndarray
    source: np.ndarray
    history_codes: np.ndarray
    history_end: np.ndarray
    history_count: np.ndarray
    topic_codes: np.ndarray
    topic_row: np.ndarray
    attribute_codes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.item)

    def history(self, rows: np.ndarray, history_len: int) -> np.ndarray:
        """Return the watched-bag codes (B, L) int64 of `rows`, most recent first, 0 = padding."""
        end = self.history_end[rows]  # (B,)
        count = np.minimum(self.history_count[rows], history_len)  # (B,)
        offs = np.arange(history_len, dtype=np.int64)  # (L,)
        valid = offs[None, :] < count[:, None]  # (B, L)
        if len(self.history_codes) == 0:
            return np.zeros(valid.shape, dtype=np.int64)
        pos = np.where(valid, end[:, None] - 1 - offs[None, :], 0)  # (B, L)
        return np.where(valid, self.history_codes[pos], 0)

    def topics(self, rows: np.ndarray) -> np.ndarray:
        """Return the topic codes (B, T) int64 of `rows`, 0 = padding."""
        return self.topic_codes[self.topic_row[rows]]

    def attributes(self, rows: np.ndarray) -> np.ndarray | None:
        """Return the extra-column codes (B, A) int64 of `rows` (0 = padding), or None."""
        if self.attribute_codes is None:
            return None
        return self.attribute_codes[self.topic_row[rows]]


@dataclass(frozen=True)
class CatalogCodes:
    """A `RankerFeatureIndex`'s catalog and users in a `RankerVocabularies`' codes (0 = padding
    or OOV), per catalog position (item, language, channel: (n_items,); topics (n_items, T);
    attributes (n_items, A) or None) and per user position (user_language (n_users,)).
    Built once by `RankerVocabularies.catalog_codes`; shared by the index's `for_user` views."""

    item: np.ndarray
    language: np.ndarray
    channel: np.ndarray
    topics: np.ndarray
    user_language: np.ndarray
    attributes: np.ndarray | None = None


def _covered(end: np.ndarray, count: np.ndarray, history_len: int, size: int) -> np.ndarray:
    """Return a (size,) bool mask of history positions that fall in at least one row's bag."""
    start = end - np.minimum(count, history_len)
    diff = (
        np.bincount(start, minlength=size + 1)[: size + 1]
        - np.bincount(end, minlength=size + 1)[: size + 1]
    )
    return np.cumsum(diff)[:size] > 0


@dataclass
class RankerVocabularies:
    """One `IdVocabulary` per id space (see `ID_SPACES`), fitted on a training frame; plus
    `attribute` when the frame has extra item columns (`ATTRIBUTE_SPACE`)."""

    item: IdVocabulary
    language: IdVocabulary
    channel: IdVocabulary
    topic: IdVocabulary
    source: IdVocabulary
    attribute: IdVocabulary | None = None

    @property
    def spaces(self) -> tuple[str, ...]:
        """The id spaces these vocabularies have (`ID_SPACES`, then "attribute" if fitted)."""
        return ID_SPACES + ((ATTRIBUTE_SPACE,) if self.attribute is not None else ())

    @classmethod
    def fit(
        cls,
        frame: RankerFrame,
        top_n: int | Mapping[str, int | None] | None = None,
        *,
        history_len: int | None = None,
    ) -> RankerVocabularies:
        """Return vocabularies of the top-N most frequent values per id space of a TRAINING frame.

        Frequencies: item = scored items + the watches inside the rows' bags (each watch once);
        language = user and item languages of the rows; channel, topic, source = per row.
        `top_n` is one cap for every space or a mapping space -> cap (None = keep all);
        everything cut maps to code 0, whose embedding is the zero vector.
        """
        spaces = (*ID_SPACES, ATTRIBUTE_SPACE)
        if isinstance(top_n, Mapping):
            unknown = set(top_n) - set(spaces)
            if unknown:
                raise ValueError(
                    f"top_n names unknown id space(s) {sorted(unknown)}; known: {spaces}"
                )
            caps = {s: top_n.get(s) for s in spaces}
        else:
            caps = dict.fromkeys(spaces, top_n)
        for space, cap in caps.items():
            if cap is not None and int(cap) < 1:
                raise ValueError(f"top_n for id space {space!r} must be >= 1 or None, got {cap}")
        if len(frame) == 0:
            raise ValueError("RankerVocabularies.fit: the training frame has 0 rows")
        length = frame.history_len if history_len is None else int(history_len)
        rows = frame.rows
        cov = _covered(frame.history_end, frame.history_count, length, len(frame.history_items))
        item_values = np.concatenate([rows["item_id"].to_numpy(np.int64), frame.history_items[cov]])
        lang = pd.concat([rows["user_language"], rows["item_language"]], ignore_index=True)
        topic_values = frame.topics[frame.topic_row].reshape(-1)
        topic_values = topic_values[pd.notna(topic_values)]

        def vocab(space: str) -> IdVocabulary:
            return IdVocabulary(max_size=caps[space], name=space)

        attribute = None
        if frame.attributes is not None:  # per row: the item's "column=value" bag
            values = frame.attributes[frame.topic_row].reshape(-1)
            values = pd.Series(values[pd.notna(values)], dtype=object).astype(str)
            attribute = IdVocabulary(
                min_count=ATTRIBUTE_MIN_COUNT, max_size=caps[ATTRIBUTE_SPACE], name=ATTRIBUTE_SPACE
            ).fit(values)
        return cls(
            item=vocab("item").fit(item_values),
            language=vocab("language").fit(lang.dropna().astype(str)),
            channel=vocab("channel").fit(rows["channel_id"].dropna().astype(str)),
            topic=vocab("topic").fit(pd.Series(topic_values, dtype=object).astype(str)),
            source=vocab("source").fit(rows["source"].dropna().astype(str)),
            attribute=attribute,
        )

    def sizes(self) -> dict[str, int]:
        """Return the number of codes (incl. 0) per id space."""
        return {s: len(getattr(self, s)) for s in self.spaces}

    def embedding_widths(
        self, *, scale: float = 6.0, min_width: int = 4, max_width: int = 128
    ) -> dict[str, int]:
        """Return the embedding width per id space by `embedding_width`."""
        return {
            s: embedding_width(n, scale=scale, min_width=min_width, max_width=max_width)
            for s, n in self.sizes().items()
        }

    @staticmethod
    def _codes(vocab: IdVocabulary, column: pd.Series) -> np.ndarray:
        """Return vocabulary codes (N,) of a categorical (or object) column; missing -> 0."""
        cat = (
            column.astype("category")
            if not isinstance(column.dtype, pd.CategoricalDtype)
            else column
        ).array  # pd.Categorical: its codes and categories without Series wrappers
        codes = np.asarray(cat.codes, dtype=np.int64)  # -1 = missing
        # only the categories present are looked up (a frame's dtype may list thousands)
        used = np.unique(codes[codes >= 0])
        names = cat.categories.to_numpy(dtype=object)[used]
        table = np.zeros(len(cat.categories) + 1, dtype=np.int64)
        table[used + 1] = vocab.transform(np.array([str(v) for v in names], dtype=object))
        return table[codes + 1]  # code -1 -> 0

    @staticmethod
    def _object_codes(vocab: IdVocabulary, values: np.ndarray) -> np.ndarray:
        """Return vocabulary codes of an object array (None/NaN -> 0), any shape."""
        flat = values.reshape(-1)
        codes, names = pd.factorize(flat)
        table = np.concatenate(
            [[0], vocab.transform(np.array([str(v) for v in names], dtype=object))]
        )
        return table[codes + 1].astype(np.int64).reshape(values.shape)

    def encode(self, frame: RankerFrame) -> EncodedRankerFrame:
        """Return the integer codes of `frame` (unknown and missing values -> 0)."""
        rows = frame.rows
        return EncodedRankerFrame(
            item=self.item.transform(rows["item_id"].to_numpy(np.int64)),
            user_language=self._codes(self.language, rows["user_language"]),
            item_language=self._codes(self.language, rows["item_language"]),
            channel=self._codes(self.channel, rows["channel_id"]),
            source=self._codes(self.source, rows["source"]),
            history_codes=self.item.transform(frame.history_items),
            history_end=frame.history_end,
            history_count=frame.history_count,
            topic_codes=self._object_codes(self.topic, frame.topics),
            topic_row=frame.topic_row,
            attribute_codes=self._attribute_codes(frame),
        )

    def catalog_codes(self, ix: RankerFeatureIndex) -> CatalogCodes:
        """Return the codes of every catalog item and user of `ix`, looked up once: what
        `encode_requests` gathers per request instead of naming and looking up strings."""

        def table(vocab: IdVocabulary, names: np.ndarray) -> np.ndarray:
            # name position -> code, position -1 (missing) -> 0, as `_codes` maps them
            return self._object_codes(vocab, np.concatenate([[None], names]).astype(object))

        attributes = None
        if self.attribute is not None:
            if ix.attribute_codes is None:  # a catalog without those columns: all OOV
                attributes = np.zeros((ix.n_items, 1), dtype=np.int64)
            else:
                attributes = table(self.attribute, ix.attribute_names)[ix.attribute_codes + 1]
        return CatalogCodes(
            item=self.item.transform(ix.item_index.to_numpy()),
            language=table(self.language, ix.language_names)[ix.language_codes + 1],
            channel=table(self.channel, ix.channel_names)[ix.channel_codes + 1],
            topics=table(self.topic, ix.topic_names)[ix.topic_codes + 1],
            user_language=table(self.language, ix.user_language_names)[ix.user_language_codes + 1],
            attributes=attributes,
        )

    def encode_requests(
        self, f: RequestFeatures, codes: CatalogCodes, source: str | None
    ) -> EncodedRankerFrame:
        """Return the codes of requests' features `f` (`request_features`) through the
        catalog's `codes` (`catalog_codes` of the same index): equal to
        `encode(build_ranker_frame(...))` of the same requests, with every row's `source`."""
        n = len(f.ipos)
        src = 0 if source is None else int(self.source.transform(np.array([str(source)]))[0])
        return EncodedRankerFrame(
            item=codes.item[f.ipos],
            user_language=np.where(f.upos >= 0, codes.user_language[np.maximum(f.upos, 0)], 0),
            item_language=codes.language[f.ipos],
            channel=codes.channel[f.ipos],
            source=np.full(n, src, dtype=np.int64),
            history_codes=self.item.transform(f.history_items),
            history_end=f.history_end,
            history_count=f.history_count,
            topic_codes=codes.topics[f.uniq_ipos],
            topic_row=f.topic_row,
            attribute_codes=None if codes.attributes is None else codes.attributes[f.uniq_ipos],
        )

    def _attribute_codes(self, frame: RankerFrame) -> np.ndarray | None:
        """The codes (I, A) of the frame's extra-column bags; None without an attribute space."""
        if self.attribute is None:
            return None
        if frame.attributes is None:  # a frame of items without those columns: all OOV
            return np.zeros((len(frame.topics), 1), dtype=np.int64)
        return self._object_codes(self.attribute, frame.attributes)

    # ------------------------------------------------------------------ persist
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable record of all id spaces."""
        return {
            "kind": "RankerVocabularies",
            **{s: getattr(self, s).to_dict() for s in self.spaces},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankerVocabularies:
        """Return the vocabularies stored by `to_dict`."""
        if d.get("kind") != "RankerVocabularies":
            raise ValueError(f"not a RankerVocabularies record (kind={d.get('kind')!r})")
        missing = [s for s in ID_SPACES if s not in d]
        if missing:
            raise ValueError(f"RankerVocabularies record lacks id space(s) {missing}")
        spaces = (*ID_SPACES, ATTRIBUTE_SPACE) if ATTRIBUTE_SPACE in d else ID_SPACES
        return cls(**{s: IdVocabulary.from_dict(d[s]) for s in spaces})

    def save(self, path: str | Path) -> Path:
        """Write the vocabularies as JSON (atomically); return the path."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> RankerVocabularies:
        """Return the vocabularies saved at `path`."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))
