"""Summary statistics of a log, the inputs of the settings vidrec derives from the data.

`log_statistics(dataset, train_end_fraction, valid_end_fraction)` reads only counts and times
(vectorized); the windows' shares of the time span are passed in so that statistics about the
training examples and the ranker's rows describe what the two stages will actually see.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vidrec.features.tables import Dataset

SECONDS_PER_DAY = 86_400.0


#: candidates per user and window that become the ranker's rows on a log without impressions
CANDIDATES_PER_USER = 50


def logs_watch_time(impressions: pd.DataFrame | None) -> bool:
    """Whether a log's impressions carry real watch times: clicked rows with more than one
    value (not unit labels). Without them the ranker's exp(logit) is the odds of a watch."""
    if impressions is None or not len(impressions):
        return False
    clicked = impressions["clicked"].to_numpy() > 0
    wt = impressions["watch_time"].to_numpy(np.float64)[clicked]
    return bool(len(wt) and np.unique(wt).size > 1)


def log_statistics(
    dataset: Dataset, train_end_fraction: float = 0.7, valid_end_fraction: float = 0.85
) -> dict[str, Any]:
    """Return counts and shapes of the log: users, items, events, per-user activity, the time
    span, the catalog's growth, whether impressions and real watch times are logged, and how
    many rows the ranker will learn from (impressions of the ranker window, or
    CANDIDATES_PER_USER candidates per user active in it when none are logged) and of how
    many users."""
    w = dataset.watches
    t = w["timestamp"].to_numpy(np.int64)
    start, end = (int(t.min()), int(t.max())) if len(t) else (0, 0)
    span = max(end - start, 1)
    train_end = start + int(span * float(train_end_fraction))
    per_user = w["user_id"].value_counts().to_numpy() if len(w) else np.zeros(1)
    items = dataset.items
    upload = items["upload_time"].to_numpy(np.int64) if "upload_time" in items else None
    new_items = (
        float(np.mean(upload >= train_end)) if upload is not None and len(upload) else 0.0
    )
    watched_items = int(w["item_id"].nunique()) if len(w) else 0
    valid_end = start + int(span * float(valid_end_fraction))
    imp = dataset.impressions
    has_imp = bool(imp is not None and len(imp) > 0)
    if has_imp:
        ti = imp["timestamp"].to_numpy(np.int64)
        in_window = (ti >= train_end) & (ti < valid_end)
        ranker_rows = int(np.sum(in_window))
        ranker_users = int(np.unique(imp["user_id"].to_numpy()[in_window]).size)
        has_watch_time = logs_watch_time(imp)
    else:
        inwin = (t >= train_end) & (t < valid_end)
        ranker_users = int(np.unique(w["user_id"].to_numpy()[inwin]).size)
        ranker_rows = CANDIDATES_PER_USER * ranker_users
        has_watch_time = False
    return {
        "n_users": int(len(dataset.users)),
        "n_items": int(len(items)),
        "n_watched_items": watched_items,
        "n_watches": int(len(w)),
        "n_train_watches": int(np.sum(t < train_end)),
        "watches_per_user_median": float(np.median(per_user)),
        "watches_per_user_mean": float(np.mean(per_user)),
        "span_days": round(span / SECONDS_PER_DAY, 3),
        "share_of_items_uploaded_after_train_end": round(new_items, 4),
        "has_impressions": has_imp,
        "n_impressions": int(len(imp)) if imp is not None else 0,
        "has_watch_time": has_watch_time,
        "n_ranker_rows": ranker_rows,
        "n_ranker_users": ranker_users,
    }
