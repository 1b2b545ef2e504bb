"""The in-memory form of the data contract (SPEC §1): five pandas tables in one `Dataset`.

Every data source (synthetic world, MovieLens, KuaiRand, a user's own files) produces a
`Dataset`; everything downstream reads only this. Validation lives in `features.schema`.

Canonical in-memory dtypes (what `features.schema.validate_dataset` guarantees after coercion):

users        user_id int64 | optional: gender, age_bucket, country, region, language, device (str);
             any other numeric column is a continuous user feature (float64)
items        item_id int64, upload_time int64 (UTC s, may be < 0 for pre-1970 items)
             | optional: duration float64 (s), channel_id (str), topics (object: list[str]),
               language (str), title (str)
watches      user_id int64, item_id int64, timestamp int64 | optional: watch_time float64 (s)
searches     user_id int64, timestamp int64, query str
impressions  user_id int64, item_id int64, timestamp int64, clicked int8 (0/1),
             watch_time float64 (0 when not clicked) | optional: position int64, source str
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

TABLES: tuple[str, ...] = ("users", "items", "watches", "searches", "impressions")
OPTIONAL_TABLES: tuple[str, ...] = ("searches", "impressions")

USER_CATEGORICAL = ("gender", "age_bucket", "country", "region", "language", "device")
ITEM_CATEGORICAL = ("channel_id", "language")


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
