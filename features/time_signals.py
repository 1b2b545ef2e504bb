"""Time-aware popularity of items and recency of users, as of a time t, from events strictly
before t ([YT16 §3.3]: without a notion of time a watch-history model learns the average
popularity of its training window, not what is popular at the request time).

Item signals as of t, all from the watches strictly before t (an event at t or later never
counts):

    watches in window j      watches of the item in [t - W_j, t), W_j = span / (64, 16, 4)
    since first watch        t - the item's first watch (or "never watched")
    trend                    log2 of the rate in the shortest window over the rate in the rest
                             of the longest one, each smoothed by one watch spread over the
                             longest window (an item without watches has trend 0)

`span` is the length of the training window of the featurizer that fits the signals
(`ItemTimeSignals.fit`), so the windows scale with the log; they are stored in the fitted
featurizer and reused at serving.

The ranker reads these values raw at each impression's own time (`item_signal_values`,
`features.ranker_features`). The candidate generator's item tower reads them as bucket codes
(`ItemTimeSignals.codes`): counts on a log2 scale, time since the first watch on a log scale of
the span, trend on fixed log2-ratio edges. Its examples span many times, so the codes are
taken on a time grid: a request or example at t reads the codes as of the grid time
g(t) = anchor + floor((t - anchor) / step) * step <= t (the anchor is the featurizer's
reference time, the end of its training window, so a model refit up to the serving time
serves with the exact counts over [t - W, t)). A training catalog precomputes the codes of
every (item, grid time) of its windows with cumulative sums (`ItemTimeSignals.table`); a
serving catalog computes one grid time (`ItemTimeSignals.codes_at`). Both count the same
events for the same (item, t).

Everything is vectorized: events are binned by grid step and counted with `np.bincount` +
cumulative sums over items in chunks; no Python loop per event or item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Item-tower features (bucket codes), in column order after the upload-age bucket.
ITEM_TIME_CODES: tuple[str, ...] = (
    "watches_window_0",  # watches in [t - W_0, t), the shortest window
    "watches_window_1",
    "watches_window_2",  # ... the longest window
    "since_first_watch_bucket",
    "watch_trend_bucket",
)
#: Ranker continuous features (raw values), the same signals at the impression's time.
ITEM_TIME_VALUES: tuple[str, ...] = (
    "item_watches_window_0",
    "item_watches_window_1",
    "item_watches_window_2",
    "since_item_first_watch",  # seconds; NEVER_SECONDS when the item was never watched
    "item_watch_trend",  # log2 rate ratio (0 without watches)
)
#: The windows are the training span divided by these (shortest first).
WINDOW_DIVISORS: tuple[int, ...] = (64, 16, 4)
#: Grid steps per training span (the resolution of the candidate generator's item codes).
GRID_STEPS = 256
#: Bytes a training catalog's (item, grid time) code table may take; a larger catalog gets a
#: coarser grid (fewer steps per span), never fewer than MIN_GRID_STEPS.
MAX_TABLE_BYTES = 1 << 30
MIN_GRID_STEPS = 16
#: Edges of the trend bucket (log2 of the rate ratio).
TREND_EDGES: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)
#: "Since first watch" edges: the span divided by these (ascending edges).
SINCE_FIRST_DIVISORS: tuple[int, ...] = (1024, 256, 64, 16, 4, 1)
#: Seconds used for "since first watch" of an item never watched before t (as the ranker's
#: other "time since" features).
NEVER_SECONDS: float = float(2**31)
NO_EVENT = np.iinfo(np.int64).max  # first-watch time of an item never watched
_CHUNK_CELLS = 1 << 22  # (items x grid cells) per chunk of the cumulative counts


def watch_trend(counts: np.ndarray, windows: tuple[int, ...]) -> np.ndarray:
    """(N,) float64 log2 of the watch rate in the shortest window over the rate in the rest of
    the longest one; `counts` (N, n_windows) are the watches in each window. Each rate is
    smoothed by one watch spread over the longest window, so no watches at all gives 0."""
    c = np.asarray(counts, dtype=np.float64)
    w0, wl = float(windows[0]), float(windows[-1])
    if wl <= w0:
        return np.zeros(len(c))
    recent = c[:, 0]
    older = c[:, -1] - c[:, 0]
    return np.log2((recent * wl + w0) * (wl - w0)) - np.log2(w0 * (older * wl + wl - w0))


def item_signal_values(
    counts: np.ndarray, first: np.ndarray, times: np.ndarray, windows: tuple[int, ...]
) -> np.ndarray:
    """(N, len(ITEM_TIME_VALUES)) float64 raw signals of N (item, time) queries: `counts`
    (N, n_windows) watches in [t - W_j, t), `first` (N,) the item's first watch time
    (NO_EVENT if none), `times` (N,) the query times."""
    first = np.asarray(first, dtype=np.int64)
    t = np.asarray(times, dtype=np.int64)
    seen = first < t
    since = np.where(seen, (t - np.where(seen, first, 0)).astype(np.float64), NEVER_SECONDS)
    return np.column_stack(
        [np.asarray(counts, dtype=np.float64), since, watch_trend(counts, windows)]
    )


@dataclass(frozen=True)
class ItemTimeSignals:
    """The fitted definition of the item time signals (windows, grid and buckets)."""

    windows: tuple[int, ...]  # seconds, shortest first, each a multiple of `step`
    step: int  # grid step (s)
    anchor: int  # a grid time: the end of the fitting featurizer's training window
    since_edges: tuple[int, ...]  # ascending "since first watch" bucket edges (s)
    n_count_codes: int  # codes of each window's count (0 unused, 1 = none, 2.. = log2)

    @classmethod
    def fit(
        cls, start: int, reference_time: int, n_items: int, n_train_watches: int
    ) -> ItemTimeSignals:
        """Return the signals of a training window [start, reference_time) with `n_items`
        catalog items and `n_train_watches` watches in it."""
        span = max(int(reference_time) - int(start), 1)
        # the training table holds ~1.5 spans of grid times (training and validation windows)
        fit_steps = MAX_TABLE_BYTES // max(1, int(n_items) * len(ITEM_TIME_CODES) * 3 // 2)
        steps = int(max(MIN_GRID_STEPS, min(GRID_STEPS, fit_steps)))
        step = max(1, span // steps)
        windows = tuple(max(1, round(span / (d * step))) * step for d in WINDOW_DIVISORS)
        since = tuple(int(x) for x in np.unique([max(1, span // d) for d in SINCE_FIRST_DIVISORS]))
        n_codes = 3 + int(np.floor(np.log2(max(int(n_train_watches), 1))))
        return cls(
            windows=tuple(int(w) for w in windows),
            step=int(step),
            anchor=int(reference_time),
            since_edges=since,
            n_count_codes=int(n_codes),
        )

    # ------------------------------------------------------------------ schema
    @property
    def cardinalities(self) -> tuple[int, ...]:
        """Embedding rows per code column of `ITEM_TIME_CODES`."""
        return (
            (self.n_count_codes,) * len(self.windows)
            + (len(self.since_edges) + 3,)  # 0 unused, 1 = never watched, 2.. = buckets
            + (len(TREND_EDGES) + 3,)  # 0 unused, 1 = no watch in the longest window
        )

    def grid_index(self, times: np.ndarray | int) -> np.ndarray:
        """Grid index k of each time: its codes are those as of anchor + k * step <= t."""
        return np.floor_divide(np.asarray(times, dtype=np.int64) - self.anchor, self.step)

    def grid_time(self, times: np.ndarray | int) -> np.ndarray:
        """The grid time g(t) <= t whose codes a request at t reads."""
        return self.anchor + self.grid_index(times) * self.step

    # ------------------------------------------------------------------- codes
    def bucket(self, counts: np.ndarray, first: np.ndarray, times: np.ndarray) -> np.ndarray:
        """(N, 5) uint8 codes of N (item, time) queries from their window counts (N, n_w), the
        items' first watch times (N,) and the query times (N,)."""
        counts = np.asarray(counts, dtype=np.int64)
        values = item_signal_values(counts, first, times, self.windows)
        n_w = len(self.windows)
        log_c = np.floor(np.log2(np.maximum(counts, 1))).astype(np.int64)
        count_codes = np.where(counts > 0, np.minimum(2 + log_c, self.n_count_codes - 1), 1)
        since = values[:, n_w]
        seen = np.asarray(first, dtype=np.int64) < np.asarray(times, dtype=np.int64)
        since_codes = np.where(
            seen, 2 + np.searchsorted(np.asarray(self.since_edges, np.float64), since, "right"), 1
        )
        trend = values[:, n_w + 1]
        trend_codes = np.where(
            counts[:, -1] > 0, 2 + np.searchsorted(np.asarray(TREND_EDGES), trend, "right"), 1
        )
        return np.column_stack([count_codes, since_codes, trend_codes]).astype(np.uint8)

    def table(
        self, ev_row: np.ndarray, ev_time: np.ndarray, n_rows: int, t_lo: int, t_hi: int
    ) -> ItemTimeTable:
        """Return the codes of every item row and grid time covering [t_lo, t_hi] from the
        events (`ev_row` catalog rows, `ev_time` times; rows < 0 are ignored)."""
        k_lo, k_hi = (int(k) for k in self.grid_index(np.array([t_lo, t_hi])))
        k_hi = max(k_hi, k_lo)
        return ItemTimeTable(
            codes=self._codes(ev_row, ev_time, n_rows, k_lo, k_hi),
            k_lo=k_lo,
            step=self.step,
            anchor=self.anchor,
        )

    def codes_at(
        self, ev_row: np.ndarray, ev_time: np.ndarray, n_rows: int, time: int
    ) -> np.ndarray:
        """(n_rows, 5) uint8 codes of every item row as of the grid time of `time`."""
        k = int(self.grid_index(int(time)))
        return self._codes(ev_row, ev_time, n_rows, k, k)[:, 0, :]

    def _codes(
        self, ev_row: np.ndarray, ev_time: np.ndarray, n_rows: int, k_lo: int, k_hi: int
    ) -> np.ndarray:
        """(n_rows, K, 5) uint8 codes at grid indices k_lo..k_hi.

        An event at time e counts at grid time g_k iff e < g_k, i.e. iff its bin
        kb = floor((e - anchor) / step) + 1 is <= k; the watches in [g_k - W, g_k) are
        cum(k) - cum(k - W / step), cum(k) = events with kb <= k.
        """
        ev_row = np.asarray(ev_row, dtype=np.int64)
        ev_time = np.asarray(ev_time, dtype=np.int64)
        keep = (ev_row >= 0) & (ev_row < n_rows)
        ev_row, ev_time = ev_row[keep], ev_time[keep]
        n_k = k_hi - k_lo + 1
        m = np.asarray([w // self.step for w in self.windows], dtype=np.int64)
        m_max = int(m.max())
        width = n_k + m_max  # bins: grid indices k_lo - m_max .. k_hi
        kb = np.floor_divide(ev_time - self.anchor, self.step) + 1
        late = kb > k_hi  # counts at no grid time of the table
        ev_row, ev_time, kb = ev_row[~late], ev_time[~late], kb[~late]
        bins = np.maximum(kb - (k_lo - m_max), 0)  # earlier events count at every grid time
        first = np.full(n_rows, NO_EVENT, dtype=np.int64)
        np.minimum.at(first, ev_row, ev_time)
        order = np.argsort(ev_row, kind="stable")
        ev_row, bins = ev_row[order], bins[order]
        grid_times = self.anchor + (k_lo + np.arange(n_k, dtype=np.int64)) * self.step
        out = np.empty((n_rows, n_k, len(ITEM_TIME_CODES)), dtype=np.uint8)
        chunk = max(1, _CHUNK_CELLS // width)
        for r0 in range(0, n_rows, chunk):  # chunks of items bound the (rows, bins) counts
            r1 = min(n_rows, r0 + chunk)
            e0, e1 = np.searchsorted(ev_row, [r0, r1])
            flat = (ev_row[e0:e1] - r0) * width + bins[e0:e1]
            hist = np.bincount(flat, minlength=(r1 - r0) * width).reshape(r1 - r0, width)
            cum = np.cumsum(hist, axis=1)
            now = cum[:, m_max:]  # (rows, n_k) events before each grid time
            counts = np.stack(
                [now - cum[:, m_max - mj : width - mj] for mj in m.tolist()], axis=-1
            )  # (rows, n_k, n_w)
            n = (r1 - r0) * n_k
            codes = self.bucket(
                counts.reshape(n, len(m)),
                np.repeat(first[r0:r1], n_k),
                np.tile(grid_times, r1 - r0),
            )
            out[r0:r1] = codes.reshape(r1 - r0, n_k, -1)
        return out

    # ---------------------------------------------------------------- persist
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready record."""
        return {
            "windows": list(self.windows),
            "step": self.step,
            "anchor": self.anchor,
            "since_edges": list(self.since_edges),
            "n_count_codes": self.n_count_codes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ItemTimeSignals:
        """Return the signals stored by `to_dict`."""
        return cls(
            windows=tuple(int(w) for w in d["windows"]),
            step=int(d["step"]),
            anchor=int(d["anchor"]),
            since_edges=tuple(int(e) for e in d["since_edges"]),
            n_count_codes=int(d["n_count_codes"]),
        )


@dataclass
class ItemTimeTable:
    """Item time codes of every catalog row at consecutive grid times (a training catalog)."""

    codes: np.ndarray  # (N, K, 5) uint8, grid indices k_lo .. k_lo + K - 1
    k_lo: int
    step: int
    anchor: int

    @property
    def n_grid(self) -> int:
        """Grid times K."""
        return int(self.codes.shape[1])

    def position(self, times: np.ndarray | int) -> np.ndarray:
        """Table position of each time's grid time; raises when a time is outside the table."""
        k = np.floor_divide(np.asarray(times, dtype=np.int64) - self.anchor, self.step) - self.k_lo
        if np.any(k < 0) or np.any(k >= self.n_grid):
            lo = self.anchor + self.k_lo * self.step
            hi = lo + self.n_grid * self.step
            raise ValueError(
                f"times {np.min(times)}..{np.max(times)} are outside the item time table "
                f"[{lo}, {hi}); build the item features with a time_range covering them"
            )
        return k

    def take(self, index: np.ndarray) -> ItemTimeTable:
        """The table of catalog rows `index`."""
        return ItemTimeTable(self.codes[index], self.k_lo, self.step, self.anchor)


# ----------------------------------------------------------------------------- users


def since_previous(
    ev_time_sorted: np.ndarray, end: np.ndarray, start: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """(N,) float64 seconds from each query's previous event to its time, NaN when the query
    has none: the events of query q strictly before its time are ev_time_sorted[start:end]
    (sorted by time), so the previous one is at end - 1."""
    has = end > start
    out = np.full(len(times), np.nan)
    if has.any():
        out[has] = times[has] - ev_time_sorted[end[has] - 1]
    return out
