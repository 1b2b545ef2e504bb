"""Tests for features.split: time windows, slicing and the history view."""

from __future__ import annotations

import pandas as pd
import pytest

from vidrec.features.split import TimeSplit, history_before, slice_time
from vidrec.features.tables import Dataset


def _dataset() -> Dataset:
    users = pd.DataFrame({"user_id": [1, 2]})
    items = pd.DataFrame({"item_id": [10, 11, 12], "upload_time": [0, 50, 150]})
    watches = pd.DataFrame(
        {"user_id": [1, 1, 2, 2], "item_id": [10, 11, 10, 12], "timestamp": [100, 150, 160, 199]}
    )
    searches = pd.DataFrame({"user_id": [1, 2], "timestamp": [120, 180], "query": ["a", "b"]})
    return Dataset(users=users, items=items, watches=watches, searches=searches)


def test_from_fractions_cuts_the_watch_range() -> None:
    # watches span [100, 199] -> window [100, 200), length 100:
    # train_end = 100 + floor(100 * 0.5) = 150, valid_end = 150 + floor(100 * 0.3) = 180
    split = TimeSplit.from_fractions(_dataset(), train=0.5, valid=0.3)
    assert split == TimeSplit(start=100, train_end=150, valid_end=180, test_end=200)
    assert split.bounds("train") == (100, 150)
    assert split.bounds("valid") == (150, 180)
    assert split.bounds("test") == (180, 200)


def test_from_fractions_without_test_window_ends_at_last_watch() -> None:
    split = TimeSplit.from_fractions(_dataset(), train=0.7, valid=0.3)
    assert split.valid_end == split.test_end == 200


def test_from_times_and_round_trip() -> None:
    split = TimeSplit.from_times(_dataset(), train_end=140, valid_end=170)
    assert split == TimeSplit(100, 140, 170, 200)
    assert TimeSplit.from_dict(split.to_dict()) == split


def test_slice_is_half_open() -> None:
    ds = _dataset()
    split = TimeSplit(100, 150, 180, 200)
    # train [100, 150): only t=100; valid [150, 180): t=150, 160; test [180, 200): t=199
    assert split.slice(ds.watches, "train")["timestamp"].tolist() == [100]
    assert split.slice(ds.watches, "valid")["timestamp"].tolist() == [150, 160]
    assert split.slice(ds.watches, "test")["timestamp"].tolist() == [199]
    assert slice_time(ds.items, 50, None, "upload_time")["item_id"].tolist() == [11, 12]


def test_history_before_drops_events_at_and_after_the_cut() -> None:
    past = history_before(_dataset(), 150)
    assert past.watches["timestamp"].tolist() == [100]  # 150 itself is not "before"
    assert past.searches["timestamp"].tolist() == [120]
    assert past.items["item_id"].tolist() == [10, 11]  # item 12 uploaded at 150
    assert len(past.users) == 2


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="start <= train_end"):
        TimeSplit(100, 90, 120, 130)
    with pytest.raises(ValueError, match="train window is empty"):
        TimeSplit(100, 100, 120, 130)
    with pytest.raises(ValueError, match="0 < train <= 1"):
        TimeSplit.from_fractions(_dataset(), train=0.9, valid=0.2)
    with pytest.raises(ValueError, match="unknown window 'dev'"):
        TimeSplit(100, 150, 180, 200).bounds("dev")
    with pytest.raises(KeyError, match="column 'when' is missing"):
        slice_time(_dataset().watches, 0, 1, "when")
    with pytest.raises(ValueError, match="exactly the keys"):
        TimeSplit.from_dict({"start": 1})
    empty = _dataset()
    empty.watches = empty.watches.iloc[:0]
    with pytest.raises(ValueError, match="watches table is empty"):
        TimeSplit.from_fractions(empty)
