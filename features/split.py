"""Time-based train / validation / test windows over a `Dataset` (SPEC §2, §6).

Three consecutive half-open windows on the event time axis:

    train = [start, train_end)    valid = [train_end, valid_end)    test = [valid_end, test_end)

Labels of a window are the events whose timestamp falls inside it; their features may use every
event strictly before the label (rollback, see `features.examples`), never anything at or after
it. Vocabularies, normalizers and item statistics are fitted on the train window only, so no
quantity the model sees was computed from the future of a training label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vidrec.features.tables import Dataset

WINDOWS: tuple[str, ...] = ("train", "valid", "test")

# Tables with a `timestamp` column; `items` are timed by `upload_time`.
_EVENT_TABLES: tuple[str, ...] = ("watches", "searches", "impressions")


@dataclass(frozen=True)
class TimeSplit:
    """Three consecutive half-open time windows (UTC seconds): train, valid, test."""

    start: int
    train_end: int
    valid_end: int
    test_end: int

    def __post_init__(self) -> None:
        if not (self.start <= self.train_end <= self.valid_end <= self.test_end):
            raise ValueError(
                "TimeSplit needs start <= train_end <= valid_end <= test_end, got "
                f"start={self.start}, train_end={self.train_end}, valid_end={self.valid_end}, "
                f"test_end={self.test_end}; pass increasing times"
            )
        if self.train_end == self.start:
            raise ValueError(
                f"TimeSplit train window is empty (start == train_end == {self.start}); "
                "move train_end later"
            )

    @classmethod
    def from_fractions(cls, dataset: Dataset, train: float = 0.8, valid: float = 0.1) -> TimeSplit:
        """Return a split cutting the dataset's watch time range at the given fractions.

        The window spans [first watch, last watch + 1 s); `train` and `valid` are fractions of
        its length, and the test window takes the rest (`1 - train - valid`, may be 0).
        """
        if not (0.0 < train <= 1.0) or not (0.0 <= valid <= 1.0) or train + valid > 1.0 + 1e-12:
            raise ValueError(
                f"TimeSplit.from_fractions needs 0 < train <= 1, 0 <= valid and train + valid "
                f"<= 1, got train={train}, valid={valid}"
            )
        ts = _watch_times(dataset)
        start, end = int(ts.min()), int(ts.max()) + 1
        span = end - start
        # the train window holds at least one second; the valid window starts where it ends
        # (with a span of a second or two, flooring alone left valid_end before train_end)
        train_end = max(start + int(np.floor(span * train)), start + 1)
        valid_end = min(end, train_end + int(np.floor(span * valid)))
        if train + valid >= 1.0 - 1e-12:
            valid_end = end
        return cls(start=start, train_end=train_end, valid_end=valid_end, test_end=end)

    @classmethod
    def from_times(
        cls,
        dataset: Dataset,
        train_end: int,
        valid_end: int,
        test_end: int | None = None,
    ) -> TimeSplit:
        """Return a split at explicit times; `start` is the first watch, `test_end` defaults to
        one second after the last watch."""
        ts = _watch_times(dataset)
        end = int(ts.max()) + 1 if test_end is None else int(test_end)
        return cls(
            start=int(ts.min()), train_end=int(train_end), valid_end=int(valid_end), test_end=end
        )

    def bounds(self, window: str) -> tuple[int, int]:
        """Return the half-open `(lo, hi)` bounds of window "train", "valid" or "test"."""
        if window == "train":
            return self.start, self.train_end
        if window == "valid":
            return self.train_end, self.valid_end
        if window == "test":
            return self.valid_end, self.test_end
        raise ValueError(f"unknown window {window!r}; use one of {', '.join(WINDOWS)}")

    def slice(
        self, frame: pd.DataFrame, window: str, time_column: str = "timestamp"
    ) -> pd.DataFrame:
        """Return the rows of `frame` whose `time_column` lies in `window` (a copy-free view)."""
        lo, hi = self.bounds(window)
        return slice_time(frame, lo, hi, time_column)

    def to_dict(self) -> dict[str, int]:
        """Return the split as a JSON-ready dict."""
        return {
            "start": self.start,
            "train_end": self.train_end,
            "valid_end": self.valid_end,
            "test_end": self.test_end,
        }

    @classmethod
    def from_dict(cls, data: dict) -> TimeSplit:
        """Return the split stored by `to_dict`."""
        keys = {"start", "train_end", "valid_end", "test_end"}
        if set(data) != keys:
            raise ValueError(
                f"TimeSplit dict must have exactly the keys {sorted(keys)}, got {sorted(data)}"
            )
        return cls(**{k: int(v) for k, v in data.items()})


def slice_time(
    frame: pd.DataFrame, lo: int | None, hi: int | None, time_column: str = "timestamp"
) -> pd.DataFrame:
    """Return the rows of `frame` with `lo <= frame[time_column] < hi` (None = unbounded)."""
    if time_column not in frame.columns:
        raise KeyError(
            f"cannot slice by time: column {time_column!r} is missing (columns: {list(frame.columns)})"
        )
    t = frame[time_column].to_numpy()
    keep = np.ones(len(frame), dtype=bool)
    if lo is not None:
        keep &= t >= lo
    if hi is not None:
        keep &= t < hi
    return frame.loc[keep]


def history_before(dataset: Dataset, until: int) -> Dataset:
    """Return the dataset as it was known just before `until`: events and items strictly before it.

    Users are kept whole (their static attributes are not events). This is the view a feature
    computed "at time `until`" may read.
    """
    tables: dict[str, pd.DataFrame | None] = {}
    for name in _EVENT_TABLES:
        frame = dataset.table(name)
        tables[name] = None if frame is None else slice_time(frame, None, until)
    items = slice_time(dataset.items, None, until, time_column="upload_time")
    return Dataset(
        users=dataset.users,
        items=items,
        watches=tables["watches"],  # type: ignore[arg-type]
        searches=tables["searches"],
        impressions=tables["impressions"],
        name=dataset.name,
        meta=dict(dataset.meta),
        ids=dataset.ids,
        columns=dataset.columns,
    )


def _watch_times(dataset: Dataset) -> np.ndarray:
    ts = dataset.watches["timestamp"].to_numpy()
    if len(ts) == 0:
        raise ValueError("cannot split: the watches table is empty")
    return ts
