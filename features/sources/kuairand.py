"""KuaiRand (Kuaishou short videos) in its official layout -> the data contract (SPEC §1).

Where it sits in the data path: `vidrec run --dataset kuairand --data-dir DIR` calls
`load_kuairand(DIR)`; `convert_kuairand` writes the same tables as a contract data directory.
Cite Gao et al., "KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly Exposed
Videos", CIKM 2022 (data license CC BY-SA 4.0).

Files (KuaiRand-Pure's `data/` folder; the 1K and 27K releases differ only in the suffix):
- `log_standard_*_pure.csv`: exposures by the production recommender, columns `user_id,
  video_id, date, hourmin, time_ms, is_click, is_like, is_follow, is_comment, is_forward,
  is_hate, long_view, play_time_ms, duration_ms, profile_stay_time, comment_stay_time,
  is_profile_enter, is_rand, tab`;
- `log_random_*_pure.csv` (optional): the same columns for videos exposed uniformly at random;
- `user_features_pure.csv` and `video_features_basic_pure.csv`: the side tables.

Mapping (every handled case is counted in the returned info dict):
- every exposure is an impression at `time_ms // 1000` (UTC seconds); `clicked = is_click`;
  `watch_time = play_time_ms / 1000` for clicked exposures and 0 otherwise.
- **play time without a click.** The app autoplays videos in its feed, so an exposure can have
  `play_time_ms > 0` and `is_click = 0`. The contract forbids watch time on an unclicked
  impression. Default (`unclicked_play="drop"`): the exposure stays unclicked with watch_time 0,
  keeping `clicked` equal to the logged click (the ranker's label); such rows and their play
  seconds are counted. `unclicked_play="click"` treats them as clicks instead (clicked = 1, the
  play time as watch time, and a watch), for studies of watch time under autoplay.
- clicked exposures (from both logs) are watches, with their watch time.
- **the random log is the unbiased evaluation set.** Its exposures are impressions with
  `source = "random"` (an exposure of the standard log flagged `is_rand = 1` too); the
  production ones have `source = "standard"`. The column survives `write_dataset` /
  `read_dataset`. Train the ranker on `source == "standard"`, evaluate it unbiasedly on
  `source == "random"` (`split_impressions`); `dataset.meta["impression_sources"]` holds the
  counts. The random clicks are also watches, so a time split keeps them out of training.
- videos: `author_id` -> `channel_id`; `tag` (comma-separated category ids) -> `topics`;
  `upload_dt` (a calendar date in Beijing time) -> `upload_time` = 00:00 UTC+8 of that date;
  `video_duration` ms -> `duration` s, a missing one taken from the logs' `duration_ms` of that
  video, else left missing (NaN). A logged video absent from the video file becomes an item
  uploaded at its first exposure.
- users: **by default only the user ids.** Every column of `user_features_pure.csv` is one
  snapshot taken at the end of the collection, not a value known at each logged exposure:
  `user_active_degree` and `is_lowactive_period` summarise the activity of the whole period,
  `follow_user_num`, `fans_user_num`, `friend_user_num` count what the user had gathered by
  its end, `register_days` is measured at its end (a user who signed up during the log has
  fewer days than the log is long), and `is_live_streamer` / `is_video_author` say what the
  user had done by then. Read as the same value at every example time (every numeric user
  column becomes a continuous feature of the candidate generator, `features.examples`), they
  tell a model of an early example about the activity that follows it: future information.
  `snapshot_user_features=True` keeps them anyway (e.g. for studies that accept the leak):
  `user_active_degree` -> 0/1 columns `active_degree_<value>` ("UNKNOWN": all 0);
  `is_lowactive_period`, `is_live_streamer`, `is_video_author` (values other than 0/1, e.g.
  the -124 of `is_live_streamer`, are missing), `follow_user_num`, `fans_user_num`,
  `friend_user_num`, `register_days` -> numeric user features. The file is read and checked
  (and its cases counted) either way. The `*_range` columns repeat the counts as buckets and
  the anonymised `onehot_feat*` ids have no contract slot (a categorical extra would need a
  contract change): both are always left out. A logged user absent from the user file becomes
  a user without features.

Logs are read `chunksize` lines at a time, keeping only the converted columns, so memory is one
raw chunk plus the output. Malformed lines raise `DataContractError` naming file, line, column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from vidrec.features.atomic import atomic_write_json
from vidrec.features.io import unterminated_note, write_dataset
from vidrec.features.schema import (
    DataContractError,
    Problem,
    ValidationReport,
    validate_dataset,
    validate_table,
)
from vidrec.features.sources.delimited import (
    FieldKind,
    ReadStats,
    read_delimited,
    read_delimited_all,
)
from vidrec.features.tables import Dataset, source_dataset_name

__all__ = [
    "KUAIRAND_LOG_COLUMNS",
    "KuaiRandFiles",
    "convert_kuairand",
    "find_kuairand_files",
    "load_kuairand",
    "load_kuairand_items",
    "load_kuairand_users",
    "split_impressions",
]

KUAIRAND_LOG_COLUMNS: tuple[str, ...] = (
    "user_id",
    "video_id",
    "date",
    "hourmin",
    "time_ms",
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "play_time_ms",
    "duration_ms",
    "profile_stay_time",
    "comment_stay_time",
    "is_profile_enter",
    "is_rand",
    "tab",
)
# `tab` is the last column: reading it makes a short line a missing-value error
_LOG_FIELDS: dict[str, FieldKind] = {
    "user_id": "id",
    "video_id": "id",
    "time_ms": "time",
    "is_click": "flag",
    "play_time_ms": "nonneg",
    "duration_ms": "nonneg",
    "is_rand": "flag",
    "tab": "int",
}
_VIDEO_FIELDS: dict[str, FieldKind] = {
    "video_id": "id",
    "author_id": "id",
    "upload_dt": "str",
    "video_duration": "nonneg",
    "tag": "str",
}
_USER_FLAGS = ("is_lowactive_period", "is_live_streamer", "is_video_author")
_USER_COUNTS = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
_USER_FIELDS: dict[str, FieldKind] = {
    "user_id": "id",
    "user_active_degree": "str",
    **dict.fromkeys(_USER_FLAGS, "number"),
    **dict.fromkeys(_USER_COUNTS, "nonneg"),
}
_BEIJING_OFFSET_S = 8 * 3600
_SOURCES = np.asarray(["standard", "random"], dtype=object)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KuaiRandFiles:
    """The official files found in a KuaiRand directory (logs sorted by name)."""

    root: Path
    standard: tuple[Path, ...]
    random: tuple[Path, ...]
    users: Path
    videos: Path


def _missing_file(root: Path, what: str, pattern: str) -> DataContractError:
    return DataContractError(
        [
            Problem(
                "dataset",
                None,
                f"no {what} ({pattern}) in the KuaiRand directory",
                file=str(root),
                fix="pass KuaiRand-Pure's data/ folder (log_standard_4_08_to_4_21_pure.csv, "
                "log_standard_4_22_to_5_08_pure.csv, log_random_4_22_to_5_08_pure.csv, "
                "user_features_pure.csv, video_features_basic_pure.csv); for the side tables "
                "alone use load_kuairand_items / load_kuairand_users",
            )
        ]
    )


def find_kuairand_files(path: str | os.PathLike[str]) -> KuaiRandFiles:
    """Return the official files of a KuaiRand directory (or of its `data/` sub-folder)."""
    root = Path(path)
    if not root.is_dir():
        raise DataContractError(
            [
                Problem(
                    "dataset",
                    None,
                    "the KuaiRand directory does not exist"
                    if not root.exists()
                    else "not a directory",
                    file=str(root),
                    fix="pass the folder holding the KuaiRand csv files",
                )
            ]
        )
    if not list(root.glob("log_standard_*.csv")) and (root / "data").is_dir():
        root = root / "data"  # the release's top folder
    standard = tuple(sorted(root.glob("log_standard_*.csv")))
    if not standard:
        raise _missing_file(root, "standard exposure log", "log_standard_*.csv")

    def one(pattern: str, what: str) -> Path:
        found = sorted(root.glob(pattern))
        if not found:
            raise _missing_file(root, what, pattern)
        if len(found) > 1:
            raise DataContractError(
                [
                    Problem(
                        "dataset",
                        None,
                        f"several {what} files: {[p.name for p in found]}",
                        file=str(root),
                        fix="keep the one of the release you load (e.g. the *_pure.csv ones)",
                    )
                ]
            )
        return found[0]

    return KuaiRandFiles(
        root=root,
        standard=standard,
        random=tuple(sorted(root.glob("log_random_*.csv"))),
        users=one("user_features*.csv", "user feature"),
        videos=one("video_features_basic*.csv", "basic video feature"),
    )


# --------------------------------------------------------------------------------------------
# Side tables
# --------------------------------------------------------------------------------------------


def _topic_lists(tags: pd.Series) -> list[list[str]]:
    """Return one list of category ids per comma-separated tag string (missing: [])."""
    arr = pa.array(tags.astype("str").to_numpy(object, na_value=None), type=pa.large_string())
    lists = pc.split_pattern(pc.fill_null(arr, ""), ",")
    flat = pc.utf8_trim_whitespace(lists.flatten())
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    parent = pc.list_parent_indices(lists).to_numpy()
    offsets = np.zeros(len(tags) + 1, np.int64)
    np.cumsum(np.bincount(parent[keep], minlength=len(tags)), out=offsets[1:])
    out = pa.LargeListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))
    return out.to_pylist()


def load_kuairand_items(
    path: str | os.PathLike[str], *, chunksize: int = 500_000
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Return (the validated contract items table, counts) of `video_features_basic_*.csv`.

    Videos without an upload date are left out and counted (`load_kuairand` dates the logged
    ones by their first exposure); missing durations stay NaN and are counted.
    """
    items, counts = _video_table(Path(path), chunksize)
    dated = items["upload_time"].notna().to_numpy()
    items = items.loc[dated].assign(upload_time=lambda f: f["upload_time"].astype(np.int64))
    return validate_table("items", items, file=str(path)), counts


def _video_table(path: Path, chunksize: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """Return (items with float upload_time, NaN where undated; counts) of the video file."""
    cols: dict[str, Any] = read_delimited_all(
        path, _VIDEO_FIELDS, table="items", chunksize=chunksize, optional=("video_duration", "tag")
    )
    dup = pd.Series(cols["video_id"]).duplicated().to_numpy()
    if dup.any():
        raise DataContractError(
            [
                Problem(
                    "items",
                    "video_id",
                    f"video ids listed more than once: {cols['video_id'][dup][:5].tolist()}",
                    n_rows=int(dup.sum()),
                    file=str(path),
                    fix="each video must appear once; restore the official file",
                )
            ]
        )
    dates = cols["upload_dt"]
    parsed = pd.to_datetime(dates, format="%Y-%m-%d", errors="coerce")
    bad = (dates.notna() & parsed.isna()).to_numpy()
    if bad.any():
        rows = np.flatnonzero(bad)[:5]
        raise DataContractError(
            [
                Problem(
                    "items",
                    "upload_dt",
                    "dates that are not YYYY-MM-DD at line "
                    f"{', '.join(str(int(i) + 2) for i in rows)} ({int(bad.sum())} rows)",
                    n_rows=int(bad.sum()),
                    examples=[
                        {"row": int(i), "line": int(i) + 2, "upload_dt": dates.iloc[i]}
                        for i in rows
                    ],
                    file=str(path),
                    fix="upload_dt must be a date such as 2022-04-10; fix or remove the line",
                )
            ]
        )
    days = parsed.to_numpy().astype("datetime64[s]").astype(np.int64)
    upload = np.where(parsed.isna().to_numpy(), np.nan, days - _BEIJING_OFFSET_S)
    topics = _topic_lists(cols["tag"])
    counts = {
        "videos_in_video_file": len(dates),
        "videos_without_duration": int(np.isnan(cols["video_duration"]).sum()),
        "videos_without_tag": sum(1 for t in topics if not t),
        "videos_without_upload_date": int(parsed.isna().sum()),
    }
    items = pd.DataFrame(
        {
            "item_id": cols["video_id"],
            "upload_time": upload,
            "duration": cols["video_duration"] / 1000.0,
            "channel_id": cols["author_id"].astype(str).astype(object),
            "topics": pd.Series(topics, dtype=object),
        }
    )
    return items, counts


def load_kuairand_users(
    path: str | os.PathLike[str],
    *,
    snapshot_user_features: bool = False,
    chunksize: int = 500_000,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Return (the validated contract users table, counts) of `user_features_*.csv`.

    The table holds only `user_id` unless `snapshot_user_features=True`: the file's columns are
    measured at the end of the collection and encode the activity that follows an early
    example (module docstring).
    """
    users, counts = _user_table(Path(path), chunksize, snapshot_user_features)
    return validate_table("users", users, file=str(path)), counts


def _user_table(
    path: Path, chunksize: int, snapshot_user_features: bool = False
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Return (the users table before validation, counts) of the user file; the snapshot
    columns only with `snapshot_user_features` (their cases are counted either way)."""
    cols: dict[str, Any] = read_delimited_all(
        path, _USER_FIELDS, table="users", chunksize=chunksize, optional=tuple(_USER_FIELDS)[1:]
    )
    dup = pd.Series(cols["user_id"]).duplicated().to_numpy()
    if dup.any():
        raise DataContractError(
            [
                Problem(
                    "users",
                    "user_id",
                    f"user ids listed more than once: {cols['user_id'][dup][:5].tolist()}",
                    n_rows=int(dup.sum()),
                    file=str(path),
                    fix="each user must appear once; restore the official file",
                )
            ]
        )
    counts: dict[str, int] = {"users_in_user_file": len(cols["user_id"])}
    out: dict[str, Any] = {"user_id": cols["user_id"]}
    degree = cols["user_active_degree"].str.strip()
    for value in sorted(set(degree.dropna().unique().tolist()) - {"UNKNOWN"}):
        out[f"active_degree_{value}"] = (degree == value).to_numpy(np.float64, na_value=0.0)
    counts["users_with_unknown_active_degree"] = int((degree.isna() | (degree == "UNKNOWN")).sum())
    for name in _USER_FLAGS:
        v = cols[name]
        odd = ~np.isnan(v) & (v != 0) & (v != 1)  # e.g. is_live_streamer = -124
        counts[f"{name}_missing"] = int((odd | np.isnan(v)).sum())
        out[name] = np.where(odd, np.nan, v)
    for name in _USER_COUNTS:
        out[name] = cols[name]
    if not snapshot_user_features:
        out = {"user_id": out["user_id"]}
    return pd.DataFrame(out), counts


# --------------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------------


def _read_logs(
    files: list[tuple[Path, int]], chunksize: int, counts: dict[str, int]
) -> tuple[dict[str, np.ndarray], pd.Series, dict[str, int]]:
    """Return (impression columns, logged duration s per video, rows per file).

    `files` pairs each log with its source code (0 standard, 1 random).
    """
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("user_id", "item_id", "timestamp", "is_click", "play", "source")
    }
    durations = pd.Series(dtype=np.float64)
    rows: dict[str, int] = {}
    blank: dict[str, int] = {}
    for path, source in files:
        stats = ReadStats()
        n = 0
        for c in read_delimited(
            path,
            _LOG_FIELDS,
            table="impressions",
            chunksize=chunksize,
            optional=("play_time_ms", "duration_ms"),
            stats=stats,
        ):
            m = len(c["user_id"])
            n += m
            rand = np.asarray(c["is_rand"]) == 1
            if source == 0:
                counts["standard_log_rows_flagged_is_rand"] += int(rand.sum())
            else:
                counts["random_log_rows_not_flagged_is_rand"] += int((~rand).sum())
            parts["user_id"].append(np.asarray(c["user_id"]))
            parts["item_id"].append(np.asarray(c["video_id"]))
            parts["timestamp"].append(np.asarray(c["time_ms"]) // 1000)
            parts["is_click"].append(np.asarray(c["is_click"]))
            parts["play"].append(np.asarray(c["play_time_ms"]) / 1000.0)
            parts["source"].append(np.where(rand, 1, source).astype(np.int8))
            # the first logged duration of each video (constant per video in the logs)
            dur = pd.Series(np.asarray(c["duration_ms"]) / 1000.0)
            first = dur.groupby(np.asarray(c["video_id"])).first()  # skips NaN
            durations = durations.combine_first(first)
        rows[path.name] = n
        if stats.blank_lines:
            blank[path.name] = stats.blank_lines
    out = {k: np.concatenate(v) for k, v in parts.items()}
    counts["blank_lines_skipped"] = sum(blank.values())
    return out, durations, rows


def split_impressions(dataset: Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (standard, random) impressions of a KuaiRand dataset, by `source`.

    The random ones (uniformly exposed videos) are the unbiased evaluation set of a ranker
    trained on the standard ones.
    """
    imp = dataset.impressions
    if imp is None or "source" not in imp.columns:
        raise ValueError(
            "the dataset has no impressions with a 'source' column; load it with "
            "load_kuairand (impressions.source is 'standard' or 'random')"
        )
    is_random = (imp["source"] == "random").to_numpy(dtype=bool, na_value=False)
    return imp.loc[~is_random].reset_index(drop=True), imp.loc[is_random].reset_index(drop=True)


def load_kuairand(
    path: str | os.PathLike[str],
    *,
    include_random: bool = True,
    unclicked_play: Literal["drop", "click"] = "drop",
    snapshot_user_features: bool = False,
    chunksize: int = 500_000,
) -> tuple[Dataset, dict[str, Any]]:
    """Return (the validated contract `Dataset`, an info dict) of a KuaiRand directory.

    `include_random` adds the random-exposure log as impressions with source "random";
    `unclicked_play` says what an unclicked exposure with play time becomes (module docstring).
    `snapshot_user_features` keeps the user file's columns (activity degree, follow / fan /
    friend counts, register days, streamer and author flags): off by default because they are
    measured at the end of the log, so as features of an earlier example they encode future
    activity (module docstring); the users table then holds only user ids.
    The info dict (JSON-serialisable) holds the files read, rows per file, `counts` of every
    handled case, the `conversions`, `notes` and the contract `validation` report.
    """
    if unclicked_play not in ("drop", "click"):
        raise ValueError(f"unclicked_play must be 'drop' or 'click', got {unclicked_play!r}")
    files = find_kuairand_files(path)
    counts: dict[str, int] = {
        "standard_log_rows_flagged_is_rand": 0,
        "random_log_rows_not_flagged_is_rand": 0,
    }
    logs = [(p, 0) for p in files.standard] + (
        [(p, 1) for p in files.random] if include_random else []
    )
    log, logged_duration, rows = _read_logs(logs, chunksize, counts)
    items, item_counts = _video_table(files.videos, chunksize)
    users, user_counts = _user_table(files.users, chunksize, snapshot_user_features)
    counts |= item_counts | user_counts

    # impressions: the click is the logged one; play time only on clicks (module docstring)
    clicked = log["is_click"].astype(np.int8)
    play = np.nan_to_num(log["play"], nan=0.0)
    counts["exposures"] = len(clicked)
    counts["clicks"] = int(clicked.sum())
    counts["clicks_without_play_time"] = int(((clicked == 1) & (play == 0)).sum())
    unclicked_play_rows = (clicked == 0) & (play > 0)
    counts["unclicked_exposures_with_play_time"] = int(unclicked_play_rows.sum())
    conversions = [
        "exposures -> impressions (clicked = is_click, watch_time = play_time_ms / 1000 on "
        "clicks, timestamp = time_ms // 1000)",
        "clicked exposures -> watches",
    ]
    if unclicked_play == "click":
        clicked = np.where(unclicked_play_rows, 1, clicked).astype(np.int8)
        conversions.append(
            f"{counts['unclicked_exposures_with_play_time']} unclicked exposures with play "
            "time counted as clicks (unclicked_play='click')"
        )
    else:
        # play_time_ms is whole milliseconds: the sum is exact in ms
        counts["unclicked_play_ms_dropped"] = int(round(play[unclicked_play_rows].sum() * 1000))
        conversions.append(
            f"{counts['unclicked_exposures_with_play_time']} unclicked exposures with play "
            "time (autoplay) kept unclicked with watch_time 0"
        )
    watch_time = np.where(clicked == 1, play, 0.0)
    source = _SOURCES[log["source"]]
    impressions = pd.DataFrame(
        {
            "user_id": log["user_id"],
            "item_id": log["item_id"],
            "timestamp": log["timestamp"],
            "clicked": clicked,
            "watch_time": watch_time,
            "source": source,
        }
    )
    is_click = clicked == 1
    watches = pd.DataFrame(
        {
            "user_id": log["user_id"][is_click],
            "item_id": log["item_id"][is_click],
            "timestamp": log["timestamp"][is_click],
            "watch_time": watch_time[is_click],
        }
    )

    # items: durations from the logs where the video file has none; logged videos not in it
    first_seen = pd.Series(log["timestamp"]).groupby(log["item_id"]).min()
    known = items["item_id"].to_numpy(np.int64)
    unknown_ids = first_seen.index.to_numpy(np.int64)[~np.isin(first_seen.index, known)]
    counts["logged_videos_missing_from_video_file"] = len(unknown_ids)
    if len(unknown_ids):
        items = pd.concat(
            [
                items,
                pd.DataFrame(
                    {
                        "item_id": unknown_ids,
                        "upload_time": np.nan,
                        "duration": np.nan,
                        "channel_id": pd.Series([None] * len(unknown_ids), dtype=object),
                        "topics": pd.Series([[] for _ in unknown_ids], dtype=object),
                    }
                ),
            ],
            ignore_index=True,
        )
        conversions.append(
            f"{len(unknown_ids)} logged videos absent from {files.videos.name} became items "
            "uploaded at their first exposure, without channel or topics"
        )
    ids = items["item_id"].to_numpy(np.int64)
    undated = np.isnan(items["upload_time"].to_numpy(np.float64))
    seen = first_seen.reindex(ids).to_numpy(np.float64)
    upload = np.where(undated, seen, items["upload_time"].to_numpy(np.float64))
    counts["undated_videos_dropped"] = int(np.isnan(upload).sum())
    no_dur = np.isnan(items["duration"].to_numpy(np.float64))
    from_log = logged_duration.reindex(ids).to_numpy(np.float64)
    counts["durations_filled_from_log"] = int((no_dur & ~np.isnan(from_log)).sum())
    counts["durations_missing"] = int((no_dur & np.isnan(from_log)).sum())
    items = items.assign(
        upload_time=upload, duration=np.where(no_dur, from_log, items["duration"])
    ).loc[~np.isnan(upload)]
    items = items.assign(upload_time=items["upload_time"].astype(np.int64)).reset_index(drop=True)
    upload_of = pd.Series(items["upload_time"].to_numpy(), index=items["item_id"].to_numpy())
    before = log["timestamp"] < upload_of.reindex(log["item_id"]).to_numpy(np.float64)
    counts["exposures_before_upload_time"] = int(before.sum())

    # users: logged users absent from the user file get no features
    logged_users = np.unique(log["user_id"])
    absent = logged_users[~np.isin(logged_users, users["user_id"].to_numpy(np.int64))]
    counts["logged_users_missing_from_user_file"] = len(absent)
    if len(absent):
        users = pd.concat([users, pd.DataFrame({"user_id": absent})], ignore_index=True)
        conversions.append(
            f"{len(absent)} logged users absent from {files.users.name} were added without features"
        )
    n_exposures, n_random = len(source), int((source == "random").sum())
    # the raw columns are copied into the frames: free them before validation copies again
    del log, clicked, play, watch_time, source, is_click, before, unclicked_play_rows

    names = {
        "users": str(files.users),
        "items": str(files.videos),
        "watches": str(files.standard[0]),
        "impressions": str(files.standard[0]),
    }
    report = ValidationReport(
        source=str(files.root), files={k: Path(v).name for k, v in names.items()}
    )
    read = [("impressions", log_path) for log_path, _ in logs]
    for table, file in [*read, ("users", files.users), ("items", files.videos)]:
        note = unterminated_note(table, file)
        if note is not None:
            report.notes.append(note)
    ds = validate_dataset(
        Dataset(users=users, items=items, watches=watches, impressions=impressions),
        files=names,
        report=report,
    )
    ds.name = source_dataset_name("kuairand", files.root)
    ds.meta = {
        "source": "kuairand",
        "path": str(files.root),
        "impression_sources": {"standard": n_exposures - n_random, "random": n_random},
        "unbiased_eval": "impressions.source == 'random'",
        "unclicked_play": unclicked_play,
        "snapshot_user_features": bool(snapshot_user_features),
    }
    info: dict[str, Any] = {
        "dataset": "kuairand",
        "path": str(files.root),
        "files": {
            "standard_logs": [p.name for p in files.standard],
            "random_logs": [p.name for p in files.random] if include_random else [],
            "users": files.users.name,
            "videos": files.videos.name,
        },
        "rows_per_log": rows,
        "tables": ds.counts(),
        "impression_sources": dict(ds.meta["impression_sources"]),
        "counts": counts,
        "conversions": conversions,
        "notes": [
            "impressions.source == 'random' (the random-exposure log) is the unbiased "
            "evaluation set: train the ranker on source == 'standard'.",
            "upload_dt is a Beijing date: upload_time is 00:00 UTC+8 of it.",
            (
                "user file columns kept (snapshot_user_features=True): they are measured at "
                "the end of the log and encode future activity when read at an earlier time."
                if snapshot_user_features
                else "user file columns left out (snapshot_user_features=False): activity "
                "degree, low-activity period, follow/fan/friend counts, register days and the "
                "streamer/author flags are measured at the end of the log, so as features of "
                "earlier examples they encode future activity; the users table holds user ids."
            ),
            "left out: user *_range buckets (repeat the counts), onehot_feat0..17 (anonymised "
            "categorical ids without a contract slot), video_type, upload_type, "
            "visible_status, music, sizes, likes/follows/comments/forwards/hates, tab.",
        ],
        "validation": report.to_dict(),
    }
    return ds, info


def convert_kuairand(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    fmt: Literal["parquet", "csv"] = "parquet",
    **options: Any,
) -> dict[str, Any]:
    """Return the info dict after writing KuaiRand `src` as a contract data directory `dst`.

    `options` go to `load_kuairand`; `dst` also gets `source_info.json`.
    """
    ds, info = load_kuairand(src, **options)
    write_dataset(ds, dst, fmt, validate=False)  # validated by load_kuairand
    atomic_write_json(Path(dst) / "source_info.json", info)
    return info
