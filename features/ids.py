"""Id spaces: user and item ids as the data gives them, and their internal int64 codes.

Where it sits: `features.schema` decides, per id space (the user ids of users/watches/searches/
impressions; the item ids of items/watches/impressions), whether the data's ids are integers or
strings. Integer ids are used as they are (nothing changes for integer data). String ids
(`u1`, `dQw4w9WgXcQ`, UUIDs) are mapped once, at load time, to dense int64 codes: the sorted
distinct ids of every column of the space get codes 0, 1, 2, ... (code = rank in byte order of
the UTF-8 text, so the mapping is deterministic). Every table, model and index then works on
the codes; `IdMaps` turns them back into the data's ids for everything a user reads (serving,
exported candidates and slates, messages).

The map is fitted on the whole loaded log (train, validation and test windows alike). That is
safe: an id is a name, not a feature of time, and each model still learns its own vocabulary
(`features.vocab`) from its training window only, so an id seen first in the test window stays
out of vocabulary there.

A run stores the map beside its tables (`data/tables/id_maps.parquet`, columns `space`,
`code`, `id`); reading that directory back gives the coded tables with the same map.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vidrec.features.atomic import atomic_path

__all__ = [
    "ID_MAPS_FILE",
    "ID_SPACES",
    "IdMaps",
    "UnknownIdError",
    "sorted_ids",
    "to_codes",
    "to_data_ids",
]

#: the id spaces and the table columns holding them
ID_SPACES: dict[str, tuple[tuple[str, str], ...]] = {
    "user": (("users", "user_id"), ("watches", "user_id"), ("searches", "user_id"),
             ("impressions", "user_id")),
    "item": (("items", "item_id"), ("watches", "item_id"), ("impressions", "item_id")),
}  # fmt: skip
#: file name of the map inside a data directory written by `features.io.write_dataset`
ID_MAPS_FILE = "id_maps.parquet"


class UnknownIdError(KeyError):
    """An id that is not in the data (serving asked for a user or item nobody logged)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def sorted_ids(values: pd.Series | np.ndarray) -> np.ndarray:
    """Return the distinct non-missing strings of `values`, sorted by their UTF-8 bytes (object)."""
    arr = pa.array(values, type=pa.large_string(), from_pandas=True)
    uniq = pc.unique(arr.drop_null())
    order = pc.sort_indices(uniq)
    return np.asarray(uniq.take(order).to_pylist(), dtype=object)


@dataclass
class IdMaps:
    """The string ids of each string id space; code i stands for `ids[space][i]`.

    A space absent from `ids` holds integer ids, used as their own codes.
    """

    ids: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index: dict[str, pd.Index] = {}
        for space, values in self.ids.items():
            if space not in ID_SPACES:
                raise ValueError(f"unknown id space {space!r}; spaces are {list(ID_SPACES)}")
            self.ids[space] = np.asarray(values, dtype=object)

    def __bool__(self) -> bool:
        return bool(self.ids)

    def is_string(self, space: str) -> bool:
        """Return whether `space` holds string ids (mapped to codes)."""
        return space in self.ids

    def size(self, space: str) -> int:
        """Return the number of codes of a string space."""
        return int(len(self.ids[space]))

    def index(self, space: str) -> pd.Index:
        """Return the pandas Index of a string space's ids (position = code)."""
        if space not in self._index:
            self._index[space] = pd.Index(self.ids[space], dtype=object)
        return self._index[space]

    # ------------------------------------------------------------------ codes <-> ids
    def codes(self, space: str, values: Any) -> np.ndarray:
        """Return the int64 codes of the data's ids `values` (-1 where an id is unknown).

        In an integer space the values are integers (int, or integer text) and are their own
        codes; text that is not an integer gives -1.
        """
        raw = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
        raw = raw.reshape(-1)
        if space not in self.ids:
            if raw.dtype.kind in "iu":
                return raw.astype(np.int64)
            # a few ids typed by a person (serving): one check each
            ints = pd.Series(raw, dtype=object).map(_integer_or_none)
            ok = ints.notna().to_numpy()
            out = np.full(len(raw), -1, dtype=np.int64)
            out[ok] = ints[ok].astype(np.int64).to_numpy()
            return out
        s = pd.Series(raw, dtype=object)
        if pd.api.types.infer_dtype(s, skipna=False) != "string":  # e.g. ints given for text ids
            s = s.map(lambda v: v if isinstance(v, str) else str(v))
        return self.index(space).get_indexer(s.to_numpy(dtype=object)).astype(np.int64)

    def code(self, space: str, value: Any) -> int:
        """Return the code of one id; raise `UnknownIdError` (naming it) when the data lacks it."""
        c = int(self.codes(space, [value])[0])
        if c < 0:
            what = "user" if space == "user" else "item"
            kind = "string" if space in self.ids else "integer"
            raise UnknownIdError(f"{what} {value!r} is not in the data ({what} ids are {kind}s)")
        return c

    def labels(self, space: str, codes: Any) -> np.ndarray:
        """Return the data's ids of `codes`: strings (object) in a string space, int64 else.

        Codes outside the map (e.g. -1 padding) give None in a string space.
        """
        c = np.asarray(codes, dtype=np.int64)
        if space not in self.ids:
            return c
        table = self.ids[space]
        out = np.full(c.shape, None, dtype=object)
        ok = (c >= 0) & (c < len(table))
        out[ok] = table[c[ok]]
        return out

    def label(self, space: str, code: int) -> int | str:
        """Return the data's id of one code (int in an integer space, str in a string space)."""
        v = self.labels(space, [int(code)])[0]
        return int(v) if space not in self.ids else v

    # ------------------------------------------------------------------ persist
    def to_frame(self) -> pd.DataFrame:
        """Return the maps as one table: space (str), code (int64), id (str)."""
        parts = [
            pd.DataFrame(
                {
                    "space": pd.Series([space] * len(v), dtype="str"),
                    "code": np.arange(len(v), dtype=np.int64),
                    "id": pd.Series(v, dtype="str"),
                }
            )
            for space, v in self.ids.items()
        ]
        if not parts:
            return pd.DataFrame({"space": [], "code": [], "id": []})
        return pd.concat(parts, ignore_index=True)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, file: str = ID_MAPS_FILE) -> IdMaps:
        """Return the maps stored by `to_frame`; ValueError naming `file` when it is damaged."""
        need = {"space", "code", "id"}
        if not need <= set(df.columns):
            raise ValueError(f"{file}: expected columns {sorted(need)}, got {list(df.columns)}")
        out: dict[str, np.ndarray] = {}
        for space, part in df.groupby("space", sort=True):
            if space not in ID_SPACES:
                raise ValueError(f"{file}: unknown id space {space!r}")
            code = part["code"].to_numpy(np.int64)
            order = np.argsort(code, kind="stable")
            if not np.array_equal(code[order], np.arange(len(code))):
                raise ValueError(f"{file}: the codes of space {space!r} are not 0..{len(code) - 1}")
            ids = part["id"].to_numpy(dtype=object)[order]
            if pd.isna(ids).any() or pd.Index(ids).has_duplicates:
                raise ValueError(f"{file}: space {space!r} has missing or repeated ids")
            out[str(space)] = ids
        return cls(out)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `id_maps.parquet` into `directory` atomically; return its path."""
        target = Path(directory) / ID_MAPS_FILE
        with atomic_path(target) as tmp:
            pq.write_table(pa.Table.from_pandas(self.to_frame(), preserve_index=False), tmp)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IdMaps:
        """Return the maps stored in an `id_maps.parquet` file."""
        return cls.from_frame(pd.read_parquet(path), file=str(path))


def _integer_or_none(v: Any) -> int | None:
    """An integer id (int, numpy int, or plain integer text), else None."""
    if isinstance(v, bool | np.bool_):
        return None
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, str) and v.lstrip("-").isdigit() and v.isascii():
        return int(v)
    return None


def to_data_ids(ids: IdMaps | None, frame: pd.DataFrame) -> pd.DataFrame:
    """Return `frame` with its user_id / item_id codes replaced by the data's ids (a copy when
    a column of a string space changes; `frame` itself when every id is an integer)."""
    cols = {
        c: space
        for c, space in (("user_id", "user"), ("item_id", "item"))
        if c in frame.columns and ids is not None and ids.is_string(space)
    }
    if not cols:
        return frame
    assert ids is not None
    return frame.assign(
        **{
            c: pd.Series(ids.labels(space, frame[c].to_numpy(np.int64)), index=frame.index)
            .astype("str")
            for c, space in cols.items()
        }
    )


def to_codes(ids: IdMaps | None, frame: pd.DataFrame, what: str = "table") -> pd.DataFrame:
    """Return `frame` (written by `to_data_ids`) with the data's ids of user_id / item_id
    replaced by their codes; an id the maps lack raises `UnknownIdError` naming `what`."""
    cols = {
        c: space
        for c, space in (("user_id", "user"), ("item_id", "item"))
        if c in frame.columns and ids is not None and ids.is_string(space)
    }
    if not cols:
        return frame
    assert ids is not None
    out = {}
    for c, space in cols.items():
        codes = ids.codes(space, frame[c].to_numpy(dtype=object))
        if (codes < 0).any():
            bad = frame[c].to_numpy(dtype=object)[codes < 0][:3].tolist()
            raise UnknownIdError(f"{what}: {c} values {bad} are not ids of this data")
        out[c] = codes
    return frame.assign(**out)
