"""The in-memory form of the data contract (SPEC §1): five pandas tables in one `Dataset`.

Every data source (synthetic world, MovieLens, KuaiRand, a user's own files) produces a
`Dataset`; everything downstream reads only this. Validation lives in `features.schema`.

Canonical in-memory dtypes (what `features.schema.validate_dataset` guarantees after coercion):

users        user_id int64 | optional: gender, age_bucket, country, region, language, device (str)
items        item_id int64, upload_time int64 (UTC s, may be < 0 for pre-1970 items)
             | optional: duration float64 (s), channel_id (str), topics (object: list[str]),
               language (str), title (str)
             users and items may hold extra columns, typed by validation (`Dataset.columns`):
             categorical (str), continuous (float64) or multi-valued (object: list[str])
ids          int64 everywhere; string ids of the data are dense codes (`Dataset.ids`, an
             `features.ids.IdMaps`, turns them back into the data's ids)
watches      user_id int64, item_id int64, timestamp int64 | optional: watch_time float64 (s)
searches     user_id int64, timestamp int64, query str
impressions  user_id int64, item_id int64, timestamp int64, clicked int8 (0/1),
             watch_time float64 (0 when not clicked) | optional: position int64, source str
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from vidrec.features.ids import IdMaps

TABLES: tuple[str, ...] = ("users", "items", "watches", "searches", "impressions")
OPTIONAL_TABLES: tuple[str, ...] = ("searches", "impressions")

USER_CATEGORICAL = ("gender", "age_bucket", "country", "region", "language", "device")
ITEM_CATEGORICAL = ("channel_id", "language")
#: what an extra column of users or items is used as (`Dataset.columns`); "ignore" drops it
COLUMN_TYPES: tuple[str, ...] = ("categorical", "continuous", "multi", "ignore")


@dataclass
class Dataset:
    """The five contract tables; `searches` and `impressions` may be None."""

    users: pd.DataFrame
    items: pd.DataFrame
    watches: pd.DataFrame
    searches: pd.DataFrame | None = None
    impressions: pd.DataFrame | None = None
    name: str = "unnamed"
    meta: dict = field(default_factory=dict)
    # the string id spaces' maps (None: every id is an integer, used as it is)
    ids: IdMaps | None = None
    # {table: {extra column: "categorical" | "continuous" | "multi"}} of users and items, as
    # validation typed them (declared or inferred); the featurizers read `extra_columns`
    columns: dict[str, dict[str, str]] = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame | None:
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; the contract has {', '.join(TABLES)}")
        return getattr(self, name)

    def counts(self) -> dict[str, int]:
        """Rows per table (0 for an absent optional table)."""
        out = {}
        for t in TABLES:
            df = self.table(t)
            out[t] = 0 if df is None else len(df)
        return out


def source_dataset_name(source: str, directory: str | os.PathLike[str]) -> str:
    """Return the name of a data set read from `directory` by the loader of `source`.

    The directory's name, preceded by the source's unless it names the source already: an
    official "ml-latest-small" is "movielens-ml-latest-small", a directory "movielens-latest-
    small" keeps its name (never "movielens-movielens-latest-small"), "KuaiRand-Pure" too.
    """
    folder = Path(directory).resolve().name
    return folder if source.lower() in folder.lower() else f"{source}-{folder}"


def extra_columns(ds: Dataset, table: str) -> dict[str, str]:
    """Return {extra column: "categorical" | "continuous" | "multi"} of users or items.

    A validated dataset says so itself (`Dataset.columns`). For tables built in memory and not
    validated, the rule of the contract before extra columns were typed: a numeric (not bool)
    column of users other than the contract's is continuous; nothing else is a feature.
    """
    frame = ds.table(table)
    if frame is None:
        return {}
    if table in ds.columns:
        return {c: k for c, k in ds.columns[table].items() if c in frame.columns}
    if table != "users":
        return {}
    return {
        str(c): "continuous"
        for c in frame.columns
        if c != "user_id"
        and c not in USER_CATEGORICAL
        and pd.api.types.is_numeric_dtype(frame[c].dtype)
        and not pd.api.types.is_bool_dtype(frame[c].dtype)
    }
