"""Real item catalog from the KuaiRand-Pure metadata, used by the synthetic world (SPEC §7).

Where it sits in the data path: `features.sources.synthetic` calls `load_kuairand_catalog` when
`WorldConfig(catalog="kuairand")`; the world then keeps these real items (ids, durations,
channels, tags, upload days) and draws only what the metadata lacks (language, title, latent
popularity, quality and click appeal).

Input: `video_features_basic_pure.csv` of KuaiRand-Pure (Gao et al., CIKM 2022; CC BY-SA 4.0):
`video_id, author_id, upload_dt, video_duration (ms), tag (comma-separated category ids)` are
used; the other columns are ignored. Missing values are handled and counted, never dropped:
- `video_duration` missing (239 of 7,583 rows in the shipped file): imputed with the median
  duration of items sharing the item's first tag, else the global median.
- `tag` missing (96 rows): the item's *table* topics stay an empty list (the data has none),
  while its *latent* topic, which the world needs to give users an interest in the item, is
  imputed with the most common tag of its author's other videos, else the most common tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["KUAIRAND_REQUIRED_COLUMNS", "KuaiRandCatalog", "load_kuairand_catalog"]

KUAIRAND_REQUIRED_COLUMNS: tuple[str, ...] = (
    "video_id",
    "author_id",
    "upload_dt",
    "video_duration",
    "tag",
)
_DAY = 86_400


@dataclass(frozen=True)
class KuaiRandCatalog:
    """The real catalog, one row per video, in file order sorted by video id.

    Tags are held flat: the tags of item `n` are `tag_values[tag_offsets[n]:tag_offsets[n+1]]`.
    """

    item_id: np.ndarray  # (I,) int64, the KuaiRand video_id
    upload_day: np.ndarray  # (I,) int64 UTC seconds of midnight of upload_dt
    duration: np.ndarray  # (I,) float64 seconds, imputed where missing
    channel: np.ndarray  # (I,) object str, the author_id
    tag_values: np.ndarray  # (nnz,) object str, the real tags (missing tags: none)
    tag_offsets: np.ndarray  # (I+1,) int64
    latent_tag: np.ndarray  # (I,) object str: the first real tag, or the imputed one
    missing: dict[str, int]  # counts of handled missing values, by what was done

    @property
    def n_items(self) -> int:
        """Number of videos."""
        return int(self.item_id.shape[0])


def load_kuairand_catalog(path: str | Path) -> KuaiRandCatalog:
    """Return the KuaiRand-Pure video catalog read from `video_features_basic_pure.csv`."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"KuaiRand catalog file {p} does not exist; pass catalog_path= the path of "
            "KuaiRand-Pure's video_features_basic_pure.csv (shipped in "
            "shared/data/kuairand-pure-metadata/)"
        )
    df = pd.read_csv(p, dtype={"tag": "str", "upload_dt": "str"})
    absent = [c for c in KUAIRAND_REQUIRED_COLUMNS if c not in df.columns]
    if absent:
        raise ValueError(
            f"KuaiRand catalog {p} lacks column(s) {absent}; it has {list(df.columns)}. "
            "Pass the video_features_basic_pure.csv file of KuaiRand-Pure."
        )
    if len(df) == 0:
        raise ValueError(f"KuaiRand catalog {p} has no rows; pass a non-empty catalog file")
    missing: dict[str, int] = {}

    ids = pd.to_numeric(df["video_id"], errors="coerce")
    bad = ids.isna().to_numpy()
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(
            f"KuaiRand catalog {p}, column video_id: {int(bad.sum())} rows are not integers "
            f"(first rows {rows}); fix or remove them"
        )
    item_id = ids.to_numpy(dtype=np.int64)
    dup = pd.Series(item_id).duplicated().to_numpy()
    if dup.any():
        raise ValueError(
            f"KuaiRand catalog {p}, column video_id: {int(dup.sum())} duplicate ids "
            f"(first {item_id[dup][:5].tolist()}); each video must appear once"
        )
    authors = df["author_id"]
    if authors.isna().any():
        rows = np.flatnonzero(authors.isna().to_numpy())[:5].tolist()
        raise ValueError(
            f"KuaiRand catalog {p}, column author_id: {int(authors.isna().sum())} rows are "
            f"missing (first rows {rows}); every video needs its author (channel)"
        )

    day = pd.to_datetime(df["upload_dt"], errors="coerce", utc=True, format="%Y-%m-%d")
    bad = day.isna().to_numpy()
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(
            f"KuaiRand catalog {p}, column upload_dt: {int(bad.sum())} rows are not dates "
            f"YYYY-MM-DD (first rows {rows}: {df['upload_dt'].iloc[rows].tolist()}); fix them"
        )
    upload_day = day.to_numpy(dtype="datetime64[s]").astype(np.int64)

    # tags: explode "39,68" into (row, tag) pairs; empty pieces are dropped
    tag_str = df["tag"].astype("str").where(df["tag"].notna(), "")
    pieces = tag_str.str.split(",").explode().str.strip()
    pieces = pieces[pieces.notna() & (pieces != "")]
    tag_rows = pieces.index.to_numpy(dtype=np.int64)
    tag_values = pieces.to_numpy(dtype=object)
    counts = np.bincount(tag_rows, minlength=len(df))
    tag_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    first_tag = np.full(len(df), None, dtype=object)
    has_tag = counts > 0
    first_tag[has_tag] = tag_values[tag_offsets[:-1][has_tag]]

    channel = authors.astype(np.int64).astype(str).to_numpy(dtype=object)
    latent_tag = first_tag.copy()
    n_untagged = int((~has_tag).sum())
    if n_untagged:
        if not has_tag.any():
            raise ValueError(
                f"KuaiRand catalog {p}, column tag: no row has a tag; the world needs tags "
                "as topics"
            )
        tagged = pd.DataFrame({"channel": channel[has_tag], "tag": first_tag[has_tag]})
        # most common tag per author (ties: the smallest tag string, deterministic)
        mode = (
            tagged.groupby(["channel", "tag"])
            .size()
            .rename("n")
            .reset_index()
            .sort_values(["channel", "n", "tag"], ascending=[True, False, True])
            .drop_duplicates("channel")
            .set_index("channel")["tag"]
        )
        by_channel = pd.Series(channel[~has_tag]).map(mode).to_numpy(dtype=object)
        global_mode = pd.Series(first_tag[has_tag]).value_counts().index[0]
        from_channel = pd.notna(by_channel)
        by_channel[~from_channel] = global_mode
        latent_tag[~has_tag] = by_channel
        missing["tag_imputed_from_author"] = int(from_channel.sum())
        missing["tag_imputed_global_mode"] = int((~from_channel).sum())

    duration = (
        pd.to_numeric(df["video_duration"], errors="coerce").to_numpy(np.float64, copy=True)
        / 1000.0
    )
    negative = duration <= 0
    if negative.any():
        rows = np.flatnonzero(negative)[:5].tolist()
        raise ValueError(
            f"KuaiRand catalog {p}, column video_duration: {int(negative.sum())} rows are "
            f"<= 0 ms (first rows {rows}); durations must be positive milliseconds"
        )
    no_duration = np.isnan(duration)
    if no_duration.any():
        if no_duration.all():
            raise ValueError(
                f"KuaiRand catalog {p}, column video_duration: every row is missing; the "
                "world needs durations"
            )
        tag_median = pd.Series(duration[~no_duration]).groupby(latent_tag[~no_duration]).median()
        fill = pd.Series(latent_tag[no_duration]).map(tag_median).to_numpy(np.float64, copy=True)
        from_tag = ~np.isnan(fill)
        fill[~from_tag] = float(np.median(duration[~no_duration]))
        duration[no_duration] = fill
        missing["duration_imputed_tag_median"] = int(from_tag.sum())
        missing["duration_imputed_global_median"] = int((~from_tag).sum())

    order = np.argsort(item_id, kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        # reorder rows (and the flat tag arrays) by video id
        starts, ends = tag_offsets[:-1][order], tag_offsets[1:][order]
        new_counts = ends - starts
        new_offsets = np.concatenate([[0], np.cumsum(new_counts)]).astype(np.int64)
        gather = np.repeat(starts - new_offsets[:-1], new_counts) + np.arange(new_offsets[-1])
        tag_values, tag_offsets = tag_values[gather], new_offsets
        item_id, upload_day, duration = item_id[order], upload_day[order], duration[order]
        channel, latent_tag = channel[order], latent_tag[order]

    return KuaiRandCatalog(
        item_id=item_id,
        upload_day=upload_day,
        duration=duration,
        channel=channel,
        tag_values=tag_values,
        tag_offsets=tag_offsets,
        latent_tag=latent_tag,
        missing=missing,
    )
