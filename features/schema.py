"""Typed specs of the five contract tables (SPEC §1) and their validation.

Where it sits in the data path: every source (synthetic world, MovieLens, KuaiRand, a user's
files read by `features.io`) hands its tables to `validate_dataset`, which checks them and
returns a copy with the canonical dtypes of `features.tables`. Everything downstream may then
rely on those dtypes without checking again.

Validation collects *every* problem of a dataset before raising one `DataContractError`, so a
user sees the whole list at once. Each `Problem` names the file, table and column, how many
rows are affected, the first offending rows (with their row number and CSV line), and what to
fix. All checks are vectorized (numpy/pandas/pyarrow), so they scale to tables of tens of
millions of rows.

Coercions (each one is reported in the `ValidationReport`, never silently):
- ids: decided per id space (user ids: users, watches, searches, impressions; item ids: items,
  watches, impressions; `features.ids.ID_SPACES`). A space holds string ids when some value of
  one of its columns, as text, is not a number at all (`u1`, `dQw4w9WgXcQ`, a UUID): every id
  of the space is then taken as the exact text given (an empty field is missing), and mapped to
  a dense int64 code (`features.ids.IdMaps`, codes in sorted order). Otherwise the space holds
  integer ids, int64 as they are: an id given as text must be plain integer text, i.e. ASCII
  digits with an optional leading '-' (`integer_text_ids`); '1e2', '73.0', '+6' and ' 5' look
  like numbers, so they keep the space an integer one and are errors there, never read as 100,
  73, 6 or 5 (a corrupted integer column is refused, not silently turned into string ids).
  Floating-point id columns (parquet float64) whose values are all whole numbers, and decimal
  ones, are converted and reported; a fraction is an error. Integer columns of other widths
  (int32, uint64 below 2^63) are taken as they are.
- times: int64 UTC seconds; ISO-8601 strings and datetime columns are converted (timezone-aware
  values to UTC, naive values are taken as UTC); fractional seconds are floored. Upload times
  before 1970 are valid (negative seconds); event timestamps must be >= 0.
- `topics`: a list of str per row; a '|'-separated string is split; missing means no topics;
  topics are stripped of surrounding whitespace and empty ones dropped.
- strings: an empty string is a missing value.
- extra columns of `users` and `items` are features, typed by `EXTRA_COLUMN_RULES` (or as
  declared, `columns=`): categorical (str), continuous (float64) or multi-valued (list[str]);
  the report says what each was taken as and why one was ignored. Extra columns of the event
  tables are ignored and listed.

Warnings (the data is accepted, and the report counts what looks wrong; see
`ValidationReport.warnings`): event rows repeating an earlier row exactly (double logging), and
watch times above `WATCH_TIME_OVER_DURATION` (10) times the item's duration (a unit mix-up or
a wrong item id: replays of a video rarely add up to ten plays).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import gc
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from vidrec.features.ids import ID_MAPS_FILE, ID_SPACES, IdMaps, sorted_ids
from vidrec.features.tables import COLUMN_TYPES, OPTIONAL_TABLES, TABLES, Dataset

__all__ = [
    "CheckedTables",
    "ColumnSpec",
    "DataContractError",
    "EXTRA_COLUMN_RULES",
    "Problem",
    "TABLE_SPECS",
    "TableSpec",
    "ValidationReport",
    "WATCH_TIME_OVER_DURATION",
    "check_dataset",
    "check_tables",
    "csv_line_numbers",
    "declare_columns",
    "declared_columns",
    "file_may_pad_integers",
    "integer_text_ids",
    "page_sizes",
    "repeated_rows",
    "table_warnings",
    "text_id_spaces",
    "validate_dataset",
    "validate_table",
]

Kind = Literal["id", "time", "seconds", "binary", "count", "str", "topics"]

_CANONICAL_DTYPE: dict[str, str] = {
    "id": "int64",
    "time": "int64",
    "seconds": "float64",
    "binary": "int8",
    "count": "int64",
    "str": "str",
    "topics": "object",
}
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
# Seconds beyond this (year 5138) are almost surely milliseconds or microseconds.
MILLISECONDS_THRESHOLD = 1e11
_MAX_EXAMPLES = 5
_MAX_EXAMPLE_CHARS = 60
# A watch time above this many times the item's duration is counted as a warning: replays add
# up to a few plays, while a factor of 10 or more points at milliseconds read as seconds or at a
# watch attributed to the wrong (shorter) item.
WATCH_TIME_OVER_DURATION = 10.0

#: How an extra column of users or items is typed when no declaration (`data.columns`) names
#: it, in this order; `vidrec validate` prints the outcome for every column.
EXTRA_COLUMN_RULES: tuple[str, ...] = (
    "numbers (an int, float or bool column; in CSV, a column whose every field is a number) "
    "-> continuous, float64 (bools 0/1); missing values stay NaN",
    "lists of text (parquet), or text where some value contains '|' -> multi-valued, "
    "list[str] ('a|b' is split, values stripped, empty ones dropped)",
    "any other text -> categorical, str (an empty field is missing)",
    "ignored: a column with no values, one with the same value in every row (constant; a "
    "missing value counts as a value), and a categorical one whose every value is distinct (an "
    "identifier, such as a name or an email)",
    "a declaration overrides the rules: categorical (numbers are taken as their text, e.g. zip "
    "codes), continuous (every value must be a number), multi, or ignore",
)


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnSpec:
    """One contract column: its name, kind (which fixes the canonical dtype) and meaning."""

    name: str
    kind: Kind
    required: bool = False
    meaning: str = ""
    allow_negative: bool = False  # only for kind "time": upload times may precede 1970

    @property
    def dtype(self) -> str:
        """Return the canonical pandas dtype name of this column."""
        return _CANONICAL_DTYPE[self.kind]


@dataclass(frozen=True)
class TableSpec:
    """One contract table: its columns, primary key, references and extra-column policy."""

    name: str
    columns: tuple[ColumnSpec, ...]
    primary_key: str | None = None
    # (column, referenced table): values must exist in the referenced table's primary key
    references: tuple[tuple[str, str], ...] = ()
    typed_extras: bool = False  # extra columns are features (users, items), else ignored

    @property
    def required(self) -> bool:
        """Return whether a dataset must contain this table."""
        return self.name not in OPTIONAL_TABLES

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Return the names of the required columns, in contract order."""
        return tuple(c.name for c in self.columns if c.required)

    @property
    def column_names(self) -> tuple[str, ...]:
        """Return the names of all contract columns, in contract order."""
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> ColumnSpec:
        """Return the spec of column `name` (KeyError naming the known columns otherwise)."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table {self.name!r} has no column {name!r}; it has {self.column_names}")

    def dtypes(self) -> dict[str, str]:
        """Return {column: canonical dtype name} for the contract columns."""
        return {c.name: c.dtype for c in self.columns}


def _user_id(required: bool = True) -> ColumnSpec:
    return ColumnSpec("user_id", "id", required, "integer id of a user in the users table")


def _item_id(required: bool = True) -> ColumnSpec:
    return ColumnSpec("item_id", "id", required, "integer id of an item in the items table")


def _event_time() -> ColumnSpec:
    return ColumnSpec("timestamp", "time", True, "UTC seconds since 1970 when the event happened")


TABLE_SPECS: dict[str, TableSpec] = {
    "users": TableSpec(
        "users",
        (
            ColumnSpec("user_id", "id", True, "unique integer id of the user"),
            ColumnSpec("gender", "str", meaning="categorical demographic"),
            ColumnSpec("age_bucket", "str", meaning="categorical age bucket, e.g. '25-34'"),
            ColumnSpec("country", "str", meaning="categorical geography"),
            ColumnSpec("region", "str", meaning="categorical geography"),
            ColumnSpec("language", "str", meaning="categorical language code"),
            ColumnSpec("device", "str", meaning="categorical device"),
        ),
        primary_key="user_id",
        typed_extras=True,
    ),
    "items": TableSpec(
        "items",
        (
            ColumnSpec("item_id", "id", True, "unique integer id of the item"),
            ColumnSpec(
                "upload_time",
                "time",
                True,
                "UTC seconds when the item was uploaded (negative before 1970)",
                allow_negative=True,
            ),
            ColumnSpec("duration", "seconds", meaning="length of the video in seconds"),
            ColumnSpec("channel_id", "str", meaning="channel (uploader) of the item"),
            ColumnSpec("topics", "topics", meaning="list of topic strings"),
            ColumnSpec("language", "str", meaning="language code of the item"),
            ColumnSpec("title", "str", meaning="title text"),
        ),
        primary_key="item_id",
        typed_extras=True,
    ),
    "watches": TableSpec(
        "watches",
        (
            _user_id(),
            _item_id(),
            _event_time(),
            ColumnSpec("watch_time", "seconds", meaning="seconds watched"),
        ),
        references=(("user_id", "users"), ("item_id", "items")),
    ),
    "searches": TableSpec(
        "searches",
        (
            _user_id(),
            _event_time(),
            ColumnSpec("query", "str", True, "the search query text"),
        ),
        references=(("user_id", "users"),),
    ),
    "impressions": TableSpec(
        "impressions",
        (
            _user_id(),
            _item_id(),
            _event_time(),
            ColumnSpec("clicked", "binary", True, "1 if the shown item was clicked, else 0"),
            ColumnSpec("watch_time", "seconds", True, "seconds watched (0 when not clicked)"),
            ColumnSpec("position", "count", meaning="0-based or 1-based slot in the slate"),
            ColumnSpec("source", "str", meaning="which candidate source proposed the item"),
        ),
        references=(("user_id", "users"), ("item_id", "items")),
    ),
}


# --------------------------------------------------------------------------------------------
# Problems, errors and the report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One violation of the data contract, with what a user needs to find and fix it."""

    table: str
    column: str | None
    message: str
    n_rows: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    file: str | None = None
    fix: str = ""

    def format(self) -> str:
        """Return this problem as readable lines (where, what, first rows, fix)."""
        where = [self.file] if self.file else []
        where.append(f"table {self.table!r}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        lines = [f"{', '.join(where)}: {self.message}"]
        if self.examples:
            lines.append(f"   first offending rows ({len(self.examples)} of {self.n_rows}):")
            for ex in self.examples:
                values = {k: v for k, v in ex.items() if k not in ("row", "line")}
                pos = f"row {ex['row']}" if "row" in ex else "row ?"
                if "line" in ex:
                    pos += f" (line {ex['line']})"
                shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
                lines.append(f"     {pos}: {shown}")
        if self.fix:
            lines.append(f"   fix: {self.fix}")
        return "\n".join(lines)


class DataContractError(ValueError):
    """The data violates the contract; `problems` lists every violation found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.problems: list[Problem] = list(problems)

    def __str__(self) -> str:
        n = len(self.problems)
        head = (
            f"the data does not match the vidrec data contract: {n} problem{'s' if n != 1 else ''}"
        )
        body = [f"{i}. {p.format()}" for i, p in enumerate(self.problems, 1)]
        return "\n\n".join([head, *body])


@dataclass
class ValidationReport:
    """What validation saw and did: rows per table, ignored columns/files, conversions, notes."""

    source: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    ignored_files: list[str] = field(default_factory=list)
    conversions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # accepted, but counted because it looks wrong (duplicated events, implausible watch times)
    warnings: list[str] = field(default_factory=list)
    # per id space ("user", "item"): "integer" or "string"
    id_types: dict[str, str] = field(default_factory=dict)
    # {table: {column: "categorical" | "continuous" | "multi" | "ignored"}} of every column
    # beyond the contract, and {table: {column: why}}: what it was taken as, or why ignored
    column_types: dict[str, dict[str, str]] = field(default_factory=dict)
    column_reasons: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-serialisable dicts and lists."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Per-table checker
# --------------------------------------------------------------------------------------------


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _py(value: Any) -> Any:
    """Return `value` as a short plain-Python value for an example row."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [_py(v) for v in value][:10]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return None
    if value is pd.NA:
        return None
    if isinstance(value, str) and len(value) > _MAX_EXAMPLE_CHARS:
        return value[: _MAX_EXAMPLE_CHARS - 3] + "..."
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


class _TableChecker:
    """Checks and coerces one table, collecting problems, conversions and notes."""

    def __init__(
        self,
        spec: TableSpec,
        df: pd.DataFrame,
        file: str | None,
        report: ValidationReport,
        *,
        string_ids: Mapping[str, pd.Index] | None = None,
        coded: Mapping[str, int] | None = None,
        declared: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.string_ids = dict(string_ids or {})  # string id space -> its sorted ids
        self.coded = dict(coded or {})  # id space -> number of codes of a loaded id map
        self.declared = dict(declared or {})  # extra column -> declared type
        self.extra_types: dict[str, str] = {}  # kept extra column -> type
        self.df = df.reset_index(drop=True)  # row numbers are positions
        self.file = file
        self.report = report
        self.problems: list[Problem] = []
        self.is_csv = bool(file) and str(file).lower().endswith(".csv")
        self.context = [c for c in ("user_id", "item_id", "timestamp") if c in self.df.columns]
        self.coerced: dict[str, pd.Series] = {}  # the columns that passed their own checks
        self._line_starts: int | np.ndarray | None = None  # CSV line of each row (lazy)

    # -- recording ---------------------------------------------------------------------------

    def flag(
        self,
        column: str | None,
        mask: np.ndarray | pd.Series,
        what: str,
        fix: str,
        show: tuple[str, ...] = (),
        source: pd.DataFrame | None = None,
    ) -> None:
        """Record a problem for the rows where `mask` is True (nothing if none)."""
        m = np.asarray(mask, dtype=bool)
        n = int(np.count_nonzero(m))
        if n == 0:
            return
        idx = np.flatnonzero(m)[:_MAX_EXAMPLES]
        self.problems.append(
            Problem(
                table=self.spec.name,
                column=column,
                message=f"{what} ({n} of {len(m)} rows)",
                n_rows=n,
                examples=self.examples(idx, column, show, source),
                file=self.file,
                fix=fix,
            )
        )

    def flag_table(self, column: str | None, message: str, fix: str) -> None:
        """Record a problem about the table or a whole column (no offending rows)."""
        self.problems.append(Problem(self.spec.name, column, message, 0, [], self.file, fix))

    def examples(
        self,
        idx: np.ndarray,
        column: str | None,
        show: tuple[str, ...],
        source: pd.DataFrame | None,
    ) -> list[dict[str, Any]]:
        src = self.df if source is None else source
        cols = list(dict.fromkeys([*self.context, *(c for c in (column,) if c), *show]))
        cols = [c for c in cols if c in src.columns]
        lines = self.csv_lines(idx) if self.is_csv else None
        out = []
        for k, i in enumerate(idx.tolist()):
            ex: dict[str, Any] = {"row": i}
            if lines is not None:
                ex["line"] = lines[k]
            for c in cols:
                ex[c] = _py(src[c].iloc[i])
            out.append(ex)
        return out

    def csv_lines(self, idx: np.ndarray) -> list[int] | None:
        """Return the CSV line where each row of `idx` starts, or None if the file is gone.

        Usually row i is on line i + 2 (line 1 is the header). Quoted line breaks inside a
        field and blank lines (which the reader skips) shift that; then the file is scanned
        record by record (error path only). A file that cannot be read (a table validated in
        memory under a file's name) is taken to have the usual layout.
        """
        if len(idx) == 0:
            return []
        upto = int(idx.max())
        known = self._line_starts
        if known is None or (not isinstance(known, int) and len(known) <= upto):
            try:
                self._line_starts = _csv_record_lines(str(self.file), len(self.df), upto)
            except OSError:
                self._line_starts = 2
            except (UnicodeDecodeError, csv.Error):
                return None
        starts = self._line_starts
        if starts is None:
            return None
        if isinstance(starts, int):  # the simple layout: `starts` is the line of row 0
            return [starts + i for i in idx.tolist()]
        lines = [int(starts[i]) for i in idx.tolist()]
        return lines if all(line > 0 for line in lines) else None  # 0: the scan did not agree

    def convert(self, column: str, what: str) -> None:
        self.report.conversions.append(f"{self.spec.name}.{column}: {what}")

    def note(self, text: str) -> None:
        self.report.notes.append(f"{self.spec.name}: {text}")

    # -- the whole table --------------------------------------------------------------------

    def run(self) -> pd.DataFrame | None:
        """Return the coerced table, or None when a problem was recorded."""
        df = self.df
        dup = df.columns.duplicated()
        if dup.any():
            for name in dict.fromkeys(df.columns[dup]):
                self.flag_table(
                    str(name),
                    f"column {name!r} appears {int((df.columns == name).sum())} times",
                    "give every column a distinct name; keep one copy of the contract column",
                )
            df = self.df = df.loc[:, ~dup]

        for name in self.spec.required_columns:
            if name not in df.columns:
                self.flag_table(name, "required column is missing", self._missing_fix(name))

        out: dict[str, pd.Series] = {}
        for col in self.spec.columns:
            if col.name in df.columns:
                coerced = self.column(col, df[col.name])
                if coerced is not None:
                    out[col.name] = coerced

        extras = [c for c in df.columns if c not in self.spec.column_names]
        ignored: list[str] = []
        for name in extras:
            if self.spec.typed_extras:
                kept, kind, why = self.extra(str(name), self.decode_bytes(str(name), df[name]))
            else:
                kept, kind = None, "ignored"
                why = (
                    f"not part of the contract for {self.spec.name} (only users and items "
                    "take extra columns)"
                )
            self.report.column_types.setdefault(self.spec.name, {})[str(name)] = kind
            self.report.column_reasons.setdefault(self.spec.name, {})[str(name)] = why
            if kept is None:
                ignored.append(str(name))
            else:
                out[str(name)] = kept
                self.extra_types[str(name)] = kind
        if ignored:
            self.report.ignored_columns.setdefault(self.spec.name, []).extend(ignored)

        self.table_checks(out)
        self.coerced = out
        if self.problems:
            return None
        ordered = [c for c in self.spec.column_names if c in out] + [
            c for c in out if c not in self.spec.column_names
        ]
        return pd.DataFrame({c: out[c] for c in ordered})

    def _missing_fix(self, name: str) -> str:
        present = [str(c) for c in self.df.columns]
        norm = {c.strip().lower().replace(" ", "_"): c for c in present}
        if name in norm:
            return f"rename column {norm[name]!r} to {name!r}"
        close = difflib.get_close_matches(name, present, n=1, cutoff=0.6)
        if close:
            return f"add column {name!r} (did you mean to rename {close[0]!r} to {name!r}?)"
        if len(present) == 1 and any(sep in present[0] for sep in ";\t|"):
            return (
                f"the header is one column {present[0][:60]!r}: the file seems to use another "
                "separator than ','; save it as comma-separated CSV"
            )
        return (
            f"add column {name!r} ({self.spec.column(name).meaning}); "
            f"the table has columns {present}"
        )

    def table_checks(self, out: dict[str, pd.Series]) -> None:
        pk = self.spec.primary_key
        if pk and pk in out:
            dup = out[pk].duplicated(keep=False).to_numpy()
            if dup.any():
                n_ids = int(out[pk][dup].nunique())
                ids = "1 id appears" if n_ids == 1 else f"{n_ids} ids appear"
                self.flag(
                    pk,
                    dup,
                    f"duplicate {pk}: {ids} more than once",
                    f"each {pk} must appear once in {self.spec.name}; drop or merge the "
                    "duplicate rows",
                )
        if self.spec.name == "impressions" and "clicked" in out and "watch_time" in out:
            bad = (out["clicked"].to_numpy() == 0) & (out["watch_time"].to_numpy() > 0)
            self.flag(
                "watch_time",
                bad,
                "watch_time > 0 on an unclicked impression (clicked = 0)",
                "an impression that was not clicked has watch_time 0; set clicked = 1 if the "
                "item was watched, or watch_time = 0",
                show=("clicked",),
            )

    # -- one column --------------------------------------------------------------------------

    def column(self, col: ColumnSpec, s: pd.Series) -> pd.Series | None:
        """Return column `s` coerced to the canonical dtype of `col`, or None on problems."""
        n_before = len(self.problems)
        s = self.decode_bytes(col.name, s)
        result: pd.Series | None
        if col.kind == "id" and _space_of(col.name) in self.string_ids:
            result = self.string_id_codes(col, s)
        elif col.kind == "id":
            result = self.ids(col, s)
        elif col.kind == "time":
            result = self.times(col, s)
        elif col.kind == "topics":
            result = self.topics(col, s)
        elif col.kind == "str":
            result = self.strings(col, s)
        else:
            result = self.numbers(col, s)
        if len(self.problems) > n_before:
            return None
        return result

    def decode_bytes(self, name: str, s: pd.Series) -> pd.Series:
        """Return `s` with bytes values (parquet binary columns) decoded as UTF-8 text.

        Bytes that are not UTF-8 are flagged and become missing values.
        """
        if not pd.api.types.is_object_dtype(s.dtype) or len(s) == 0:
            return s
        if pd.api.types.infer_dtype(s, skipna=True) not in ("bytes", "mixed"):
            return s
        try:  # all bytes (or missing): arrow decodes and validates the whole column at once
            arr = pa.array(s, type=pa.large_binary(), from_pandas=True)
            text = arr.cast(pa.large_string())
            self.convert(name, f"decoded {len(arr) - arr.null_count} UTF-8 byte strings")
            return pd.Series(text.to_pandas(), index=s.index, name=s.name).astype("str")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        # error path: bytes that are not UTF-8, or bytes mixed with other values
        values = s.to_numpy(dtype=object).copy()
        bad = np.zeros(len(s), bool)
        for i, v in enumerate(values.tolist()):
            if isinstance(v, bytes | bytearray):
                try:
                    values[i] = bytes(v).decode("utf-8")
                except UnicodeDecodeError:
                    bad[i], values[i] = True, None
        self.flag(
            name,
            bad,
            "bytes that are not UTF-8 text",
            f"store {name} as text (a UTF-8 string column), not as binary data in another "
            "encoding; e.g. decode it with the right codec before writing the parquet file",
        )
        return pd.Series(values, index=s.index, name=s.name)

    def missing(self, col: ColumnSpec, missing: np.ndarray, fix: str | None = None) -> None:
        self.flag(
            col.name,
            missing,
            "missing values",
            fix or f"every row needs a {col.name} ({col.meaning}); fill it in or drop those rows",
        )

    def ids(self, col: ColumnSpec, s: pd.Series) -> pd.Series:
        fix = (
            f"{col.name} must be an integer (int64) id; map other ids to integers first, e.g. "
            f"codes, uniques = pandas.factorize(ids), using the same mapping in every table"
        )
        values, missing, bad = self._exact_ints(col, s, fix, what="ids")
        if col.required:
            self.missing(col, missing)
        self.flag(col.name, bad, "values that are not integer ids", fix)
        self.flag(
            col.name,
            ~missing & ~bad & (values < 0),
            "negative ids",
            f"{col.name} must be >= 0 (-1 marks 'no item' in retrieval results); remap the ids, "
            "e.g. codes, uniques = pandas.factorize(ids), using the same mapping in every table",
        )
        space = _space_of(col.name)
        if space in self.coded:  # the tables of a directory with an id_maps.parquet hold codes
            self.flag(
                col.name,
                ~missing & ~bad & (values >= self.coded[space]),
                f"codes beyond the {self.coded[space]} {space} ids of {ID_MAPS_FILE}",
                f"the ids of this directory are codes of {ID_MAPS_FILE} (written with the "
                "tables); restore the directory as it was written, or read the original data",
            )
        return pd.Series(values, name=col.name)

    def string_id_codes(self, col: ColumnSpec, s: pd.Series) -> pd.Series:
        """Return the int64 codes of a column of string ids (the exact text given).

        Integer-typed values (a parquet int column beside text ids) are taken as their decimal
        text; floating-point, boolean or other values are refused: they are not how text ids
        are stored.
        """
        space = _space_of(col.name)
        text, bad = _id_text(s)
        missing = text.isna().to_numpy() & ~bad
        self.flag(
            col.name,
            bad,
            f"values that are not text in a column of string {space} ids",
            f"the {space} ids of this data are strings (e.g. "
            f"{self.string_ids[space][0]!r}): store {col.name} as text in every table",
        )
        if col.required:
            self.missing(col, missing)
        codes = self.string_ids[space].get_indexer(text.to_numpy(dtype=object, na_value=None))
        return pd.Series(np.where(codes >= 0, codes, 0).astype(np.int64), name=col.name)

    def _exact_ints(
        self, col: ColumnSpec, s: pd.Series, fix: str, what: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (int64 values, missing mask, bad mask) without going through float64."""
        n = len(s)
        dtype = s.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            s = s.astype(dtype.categories.dtype)
            dtype = s.dtype
        if pd.api.types.is_object_dtype(dtype):
            inferred = pd.api.types.infer_dtype(s, skipna=True)
            if inferred == "integer":
                try:
                    s, dtype = s.astype("Int64"), pd.Int64Dtype()
                except OverflowError:  # Python ints beyond int64: range-checked as digits
                    return self._digit_strings(col, s)
            elif inferred == "decimal":
                s = _decimal_ints(s)
                dtype = s.dtype
                if not pd.api.types.is_integer_dtype(dtype):
                    return self._digit_strings(col, s)
                n_dec = int(s.notna().sum())
                if n_dec:
                    self.convert(col.name, f"converted {n_dec} whole decimal {what} to int64")
            elif inferred in ("floating", "mixed-integer-float"):
                s = pd.to_numeric(s, errors="coerce").astype("float64")
                dtype = s.dtype
        if pd.api.types.is_bool_dtype(dtype):
            missing = s.isna().to_numpy()
            return np.zeros(n, np.int64), missing, ~missing
        if pd.api.types.is_integer_dtype(dtype):
            missing = s.isna().to_numpy()
            if pd.api.types.is_unsigned_integer_dtype(dtype):
                raw = s.to_numpy(dtype=np.uint64, na_value=0)
                bad = raw > np.uint64(_INT64_MAX)
                self.flag(col.name, bad, f"{what} larger than the int64 maximum", fix)
                values = np.where(bad, 0, raw).astype(np.int64)
                return values, missing, np.zeros(n, bool)
            return s.to_numpy(dtype=np.int64, na_value=0), missing, np.zeros(n, bool)
        if pd.api.types.is_float_dtype(dtype):
            f = s.to_numpy(dtype=np.float64, na_value=np.nan)
            missing = np.isnan(f)
            with np.errstate(invalid="ignore"):
                ok = np.isfinite(f) & (np.floor(f) == f)
                # a float64 holds every integer only up to 2^53: beyond, the id may have changed
                inexact = ok & (np.abs(f) > 2.0**53)
            self.flag(
                col.name,
                inexact,
                f"{what} beyond 2^53 stored as floating-point numbers, which cannot hold them "
                "exactly",
                f"store {col.name} as integers: in CSV without a decimal point or exponent and "
                "with no empty field in the column; in parquet as an int64 column",
            )
            ok &= ~inexact
            n_ok = int(ok.sum())
            if n_ok:  # exact, but not what the contract asks for: say so (once per column)
                self.convert(
                    col.name,
                    f"converted {n_ok} floating-point {what} that are whole numbers to int64 "
                    f"(store {col.name} as an int64 column to skip this)",
                )
            return np.where(ok, f, 0).astype(np.int64), missing, ~ok & ~missing & ~inexact
        if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
            return self._digit_strings(col, s)
        # datetimes, timedeltas, intervals...: not ids
        missing = s.isna().to_numpy()
        return np.zeros(n, np.int64), missing, ~missing

    def _digit_strings(
        self, col: ColumnSpec, s: pd.Series
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (int64 values, missing, bad) of an id column given as text.

        Only plain integer text is an id (`integer_text_ids`). Other spellings of a whole
        number ('1e2', '73.0', '+6', ' 5') are flagged here, apart from the values that are no
        integer at all (returned as `bad`), so that neither message hides the other.
        """
        n = len(s)
        t, missing = _stripped(s)
        values, plain, fits = integer_text_ids(s)
        self.flag(
            col.name,
            plain & ~fits,
            "integers outside the int64 range",
            f"{col.name} must fit in a signed 64-bit integer; remap the ids",
        )
        rest = ~plain & ~missing
        spelled = np.zeros(n, bool)
        if rest.any():  # error path: which of the others are whole numbers written otherwise
            num, is_num = _parse_floats(t.where(rest))
            with np.errstate(invalid="ignore"):
                spelled = rest & is_num & np.isfinite(num) & (np.floor(num) == num)
            self.flag(
                col.name,
                spelled,
                "ids written with a sign, a space, a decimal point or an exponent (such as "
                "'+6', ' 5', '73.0', '1e2'), not as plain integer text",
                f"ids must be integer text: digits only, with an optional leading '-' (write "
                f"100, not 1e2, 100.0, +100 or ' 100'); in pandas, write {col.name} as an "
                "int64 column (a column with empty fields is written as floats)",
            )
        n_fit = int(np.count_nonzero(fits))
        if n_fit and not self.is_csv:  # every CSV field is text: nothing was converted
            self.convert(col.name, f"converted {n_fit} digit strings to int64")
        return values, missing, rest & ~spelled

    def times(self, col: ColumnSpec, s: pd.Series) -> pd.Series:
        """Return int64 UTC seconds; flag unparseable, infinite, millisecond-like values."""
        n = len(s)
        name = col.name
        iso_fix = (
            f"{name} must be UTC seconds since 1970 (an integer) or an ISO-8601 string such as "
            "'2024-01-31T12:00:00Z'"
        )
        values = np.zeros(n, np.int64)
        dtype = s.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            s = s.astype(dtype.categories.dtype)
            dtype = s.dtype
        if pd.api.types.is_object_dtype(dtype):
            inferred = pd.api.types.infer_dtype(s, skipna=True)
            if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
                s = pd.to_numeric(s, errors="coerce")
                dtype = s.dtype
            elif inferred in ("datetime", "datetime64", "date"):
                s = pd.to_datetime(s, utc=True, errors="coerce")
                dtype = s.dtype
        valid = np.zeros(n, bool)
        if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
            missing = s.isna().to_numpy()
            secs = _datetime_seconds(s)
            valid = ~missing
            values[valid] = secs[valid]
            self.convert(name, f"converted {int(valid.sum())} datetime values to UTC seconds")
        elif pd.api.types.is_bool_dtype(dtype):
            missing = s.isna().to_numpy()
            self.flag(name, ~missing, "boolean values where a time is expected", iso_fix)
        elif pd.api.types.is_integer_dtype(dtype):
            missing = s.isna().to_numpy()
            if pd.api.types.is_unsigned_integer_dtype(dtype):
                raw = s.to_numpy(np.uint64, na_value=0)
                values = np.minimum(raw, np.uint64(_INT64_MAX)).astype(np.int64)
            else:
                values = s.to_numpy(np.int64, na_value=0)
            valid = ~missing
        elif pd.api.types.is_float_dtype(dtype):
            f = s.to_numpy(np.float64, na_value=np.nan)
            missing, valid = self._float_seconds(name, f, values)
        elif pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
            t, missing = _stripped(s)
            num, is_num = _parse_floats(t)
            if is_num.any():
                _, valid_num = self._float_seconds(name, np.where(is_num, num, np.nan), values)
                valid |= valid_num
            rest = ~missing & ~is_num
            if rest.any():
                parsed = pd.to_datetime(t[rest], format="ISO8601", errors="coerce", utc=True)
                ok = parsed.notna().to_numpy()
                pos = np.flatnonzero(rest)
                values[pos[ok]] = _datetime_seconds(parsed)[ok]
                valid[pos[ok]] = True
                bad = np.zeros(n, bool)
                bad[pos[~ok]] = True
                self.flag(name, bad, "timestamps that cannot be parsed", iso_fix)
                if ok.any():
                    self.convert(
                        name, f"converted {int(ok.sum())} ISO-8601 timestamps to UTC seconds"
                    )
        else:
            missing = s.isna().to_numpy()
            self.flag(name, ~missing, f"values of type {dtype} where a time is expected", iso_fix)

        if col.required:
            self.missing(col, missing)
        self.flag(
            name,
            valid & (np.abs(values) > MILLISECONDS_THRESHOLD),
            "times beyond +-1e11 seconds (after the year 5138 or before 1200 BC), which look "
            "like milliseconds",
            f"{name} must be in seconds: divide milliseconds by 1000 (microseconds by 1e6)",
        )
        if not col.allow_negative:
            self.flag(
                name,
                valid & (values < 0),
                "times before 1970 (negative seconds)",
                f"event times must be UTC seconds since 1970-01-01; only items.upload_time "
                f"may be before 1970. Check the unit and epoch of {name}",
            )
        return pd.Series(values, name=name)

    def _float_seconds(
        self, name: str, f: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Write floored float seconds into `values`; return (missing, valid) masks."""
        missing = np.isnan(f)
        inf = np.isinf(f)
        self.flag(name, inf, "infinite values", f"{name} must be a finite number of seconds")
        # finite and small enough to cast; larger ones are caught by the millisecond check
        valid = ~missing & ~inf
        with np.errstate(invalid="ignore"):
            castable = valid & (np.abs(f) < 9e18)
            frac = castable & (np.floor(f) != f)
        values[castable] = np.floor(f[castable]).astype(np.int64)
        values[valid & ~castable] = _INT64_MAX
        if frac.any():
            self.convert(name, f"floored {int(frac.sum())} fractional timestamps to whole seconds")
        return missing, valid

    def numbers(self, col: ColumnSpec, s: pd.Series) -> pd.Series:
        """Return seconds (float64), clicked (int8) or position (int64) after range checks."""
        name = col.name
        f, missing = self._floats(name, s, allow_bool=col.kind == "binary")
        self.flag(name, np.isinf(f), "infinite values", f"{name} must be a finite number")
        if col.kind == "seconds":
            with np.errstate(invalid="ignore"):
                neg = f < 0
            self.flag(name, neg, "negative values", f"{name} ({col.meaning}) must be >= 0")
            if col.required:
                fix = None
                if self.spec.name == "impressions":
                    fix = "every impression needs a watch_time; use 0 for unclicked impressions"
                self.missing(col, missing, fix)
            elif missing.any():
                self.note(f"{name}: {int(missing.sum())} missing values kept as NaN (unknown)")
            return pd.Series(f, name=name)
        self.missing(
            col,
            missing,
            None
            if col.required
            else f"fill in {name} for every row, or drop the optional column {name!r}",
        )
        finite = ~missing & ~np.isinf(f)
        if col.kind == "binary":
            with np.errstate(invalid="ignore"):
                bad = finite & (f != 0) & (f != 1)
            self.flag(name, bad, "values other than 0 and 1", f"{name} must be 0 or 1")
            return pd.Series(np.where(finite & ~bad, f, 0).astype(np.int8), name=name)
        with np.errstate(invalid="ignore"):
            bad = finite & ((np.floor(f) != f) | (f < 0) | (f >= 2.0**63))
        self.flag(
            name,
            bad,
            "values that are not non-negative integers",
            f"{name} ({col.meaning}) must be an integer >= 0",
        )
        return pd.Series(np.where(finite & ~bad, f, 0).astype(np.int64), name=name)

    def _floats(self, name: str, s: pd.Series, allow_bool: bool) -> tuple[np.ndarray, np.ndarray]:
        """Return (float64 values with NaN for missing/bad, missing mask); flag non-numbers."""
        dtype = s.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            s = s.astype(dtype.categories.dtype)
            dtype = s.dtype
        fix = f"{name} must be a number; values such as the ones shown cannot be read as one"
        if pd.api.types.is_bool_dtype(dtype):
            missing = s.isna().to_numpy()
            if allow_bool:
                self.convert(name, f"converted {int((~missing).sum())} booleans to 0/1")
                return s.to_numpy(np.float64, na_value=np.nan), missing
            self.flag(name, ~missing, "boolean values where a number is expected", fix)
            return np.full(len(s), np.nan), missing
        if pd.api.types.is_numeric_dtype(dtype):
            f = s.to_numpy(np.float64, na_value=np.nan)
            return f, np.isnan(f)
        if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
            inferred = pd.api.types.infer_dtype(s, skipna=True)
            if inferred == "boolean" and allow_bool:
                return self._floats(name, s.astype("boolean"), allow_bool)
            if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
                f = pd.to_numeric(s, errors="coerce").to_numpy(np.float64, na_value=np.nan)
                return f, np.isnan(f)
            t, missing = _stripped(s)
            f, is_num = _parse_floats(t)
            # "nan", "null", ... are missing values, not bad ones
            missing = missing | _regex_mask(t, _NA_RE)
            bad = ~is_num & ~missing
            self.flag(name, bad, "values that are not numbers", fix)
            converted = int(is_num.sum())
            if converted:
                self.convert(name, f"converted {converted} numeric strings to numbers")
            return np.where(bad, np.nan, f), missing
        missing = s.isna().to_numpy()
        self.flag(name, ~missing, f"values of type {dtype} where a number is expected", fix)
        return np.full(len(s), np.nan), missing

    def strings(self, col: ColumnSpec, s: pd.Series) -> pd.Series:
        """Return the column as pandas str dtype; empty strings become missing values."""
        name = col.name
        dtype = s.dtype
        if pd.api.types.is_float_dtype(dtype):
            f = s.to_numpy(np.float64, na_value=np.nan)
            fin = f[np.isfinite(f)]
            if len(fin) and (np.floor(fin) == fin).all() and (np.abs(fin) < 2.0**53).all():
                s = s.astype("Int64")  # ids read as float because of gaps: "7", not "7.0"
        if pd.api.types.is_bool_dtype(dtype):
            s = s.astype("boolean")
        t = _as_str(s)
        empty = (t == "").to_numpy(dtype=bool, na_value=False)
        if empty.any():
            t = t.where(~empty)
            self.convert(name, f"treated {int(empty.sum())} empty strings as missing")
        missing = t.isna().to_numpy()
        if col.required:
            self.missing(col, missing)
        return t.rename(name)

    def topics(self, col: ColumnSpec, s: pd.Series) -> pd.Series:
        """Return an object column of list[str]; '|'-separated strings are split."""
        name = col.name
        fix = (
            f"{name} must be a list of strings per row (parquet) or one '|'-separated string "
            "such as 'music|jazz' (CSV); leave it empty for no topics"
        )
        lists = _topic_lists(s)
        if lists is None:
            kinds = s.map(lambda v: type(v).__name__).to_numpy()  # error path only
            listy = np.isin(kinds, ["list", "ndarray", "tuple"])
            stringy = kinds == "str"
            other = ~listy & ~stringy & ~s.isna().to_numpy(bool)
            if other.any():
                self.flag(name, other, "values that are neither a list nor a string", fix)
            elif listy.any() and stringy.any():
                self.flag(name, stringy, "'|'-separated strings mixed with lists", fix)
            else:
                self.flag(name, listy, "lists holding values that are not strings", fix)
            return pd.Series([[]] * len(s), name=name, dtype=object)
        lists, n_split, n_dropped = lists
        what = "topic" if name == "topics" else "value"
        if n_split:
            self.convert(name, f"split {n_split} '|'-separated strings into {what} lists")
        if n_dropped:
            self.convert(name, f"dropped {n_dropped} empty {what} strings")
        with _gc_paused():  # the million small lists are acyclic: skip the collector's passes
            return pd.Series(lists.to_pylist(), name=name, dtype=object)

    def extra(self, name: str, s: pd.Series) -> tuple[pd.Series | None, str, str]:
        """Return (the typed column, or None when ignored; its type; why) of an extra column of
        users or items, by `EXTRA_COLUMN_RULES` or as declared."""
        declared = self.declared.get(name)
        if declared == "ignore":
            return None, "ignored", "declared 'ignore' (data.columns)"
        if isinstance(s.dtype, pd.CategoricalDtype):
            s = s.astype(object).where(s.notna(), None)
        shape = _value_shape(s)
        if shape == "other":
            self.flag(
                name,
                s.notna().to_numpy(),
                f"values of type {s.dtype} in an extra column",
                f"store {name} as numbers, text, or lists of text (parquet), or declare it "
                f"'ignore' in data.columns",
            )
            return None, "ignored", "values of an unsupported type"
        if shape == "mixed-lists":
            self.flag(
                name,
                s.map(lambda v: isinstance(v, str)).to_numpy(bool),  # error path only
                "'|'-separated strings mixed with lists",
                f"store {name} as lists of text (parquet) or as '|'-separated text (CSV)",
            )
            return None, "ignored", "strings mixed with lists"
        how = "declared in data.columns" if declared else "inferred"
        if shape == "empty":
            if not declared:
                return None, "ignored", "no values: every row is missing"
            kind = declared
        elif declared:
            kind = declared
        elif shape == "number":
            kind = "continuous"
        elif shape == "list":
            kind = "multi"
        else:  # text: numbers written as text, '|'-separated values, or categories
            t, missing = _stripped(s)
            _, is_num = _parse_floats(t)
            na = _regex_mask(t, _NA_RE)
            bar = _regex_mask(_as_str(s), r"\|")
            if is_num.any() and (is_num | missing | na).all():
                kind = "continuous"
            elif bar.any():
                kind = "multi"
            else:
                kind = "categorical"
        n_before = len(self.problems)
        if kind == "continuous":
            out, what = self._continuous_extra(name, s, shape)
        elif kind == "categorical":
            out, what = self._categorical_extra(name, s, shape)
        else:
            out, what = self._multi_extra(name, s, shape)
        if len(self.problems) > n_before or out is None:
            return None, "ignored", "refused: see the problems"
        if kind == "multi":
            lists = pa.array(out, type=pa.large_list(pa.string()))
            n_distinct = len(pc.unique(lists.flatten()))
            # constant: every row holds the same list
            one_set = len(pc.unique(pc.binary_join(lists, "\x1f"))) <= 1
        else:
            n_distinct = int(out.nunique(dropna=True))
            one_set = int(out.nunique(dropna=False)) <= 1  # a missing value is a value here
        n_present = int(out.notna().sum())
        if not declared and shape != "empty" and one_set and len(out) >= 2:
            return None, "ignored", "one value in every row (constant): it carries no information"
        if (
            not declared
            and kind == "categorical"
            and n_present >= 2
            and n_distinct == n_present
        ):
            return (
                None,
                "ignored",
                f"every value is distinct ({n_distinct:,} values): an identifier, not a feature "
                f"(declare {name} = \"categorical\" in data.columns to use it anyway)",
            )
        if kind != "continuous":
            what += f", {n_distinct:,} distinct values"
        return out.rename(name), kind, f"{what} ({how})"

    def _continuous_extra(
        self, name: str, s: pd.Series, shape: str
    ) -> tuple[pd.Series | None, str]:
        if shape == "list":
            self.flag(
                name,
                s.notna().to_numpy(),
                "lists in a column declared continuous",
                f"declare {name} as 'multi' in data.columns, or store one number per row",
            )
            return None, ""
        if shape in ("number", "empty"):
            num = pd.to_numeric(s, errors="coerce") if s.dtype == object else s
            f = num.to_numpy(np.float64, na_value=np.nan)
            what = "booleans as 0/1" if pd.api.types.is_bool_dtype(num.dtype) else "numbers"
        else:
            t, missing = _stripped(s)
            f, is_num = _parse_floats(t)
            missing = missing | _regex_mask(t, _NA_RE)
            self.flag(
                name,
                ~is_num & ~missing,
                "values that are not numbers in a continuous column",
                f"{name} is taken as continuous: every value must be a number; declare it "
                "'categorical' in data.columns if it holds categories",
            )
            f = np.where(is_num, f, np.nan)
            what = "numbers written as text"
            if is_num.any():
                self.convert(name, f"converted {int(is_num.sum())} numeric strings to float64")
        self.flag(name, np.isinf(f), "infinite values", f"{name} must be finite")
        n_missing = int(np.isnan(f).sum())
        if n_missing:
            self.note(f"{name}: {n_missing} missing values kept as NaN")
        return pd.Series(f, name=name), what

    def _categorical_extra(
        self, name: str, s: pd.Series, shape: str
    ) -> tuple[pd.Series | None, str]:
        if shape == "list":
            self.flag(
                name,
                s.notna().to_numpy(),
                "lists in a column declared categorical",
                f"declare {name} as 'multi' in data.columns, or store one value per row",
            )
            return None, ""
        col = ColumnSpec(name, "str", meaning="extra categorical column")
        what = "numbers taken as categories" if shape == "number" else "text"
        return self.strings(col, s), what

    def _multi_extra(
        self, name: str, s: pd.Series, shape: str
    ) -> tuple[pd.Series | None, str]:
        if shape == "number":
            s = self.strings(ColumnSpec(name, "str"), s)
        col = ColumnSpec(name, "topics", meaning="extra multi-valued column")
        out = self.topics(col, s)
        what = "lists of text" if shape == "list" else "'|'-separated text"
        return out, what


# Plain integer text: what an integer id given as text must look like (RE2 '$' is the end of
# the text only, so '5\n' does not match).
_INTEGER_TEXT_RE = r"^-?[0-9]+$"
_NUMBER_RE = r"(?i)^\s*[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|inf|infinity)\s*$"
_NA_RE = r"(?i)^(nan|na|n/a|null|none|<na>)$"


def integer_text_ids(text: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (int64 values, plain, fits) of integer ids given as text (a CSV field, a string).

    The contract's one rule for ids in text form: plain integer text, i.e. ASCII digits with an
    optional leading '-' and nothing else. Anything else ('1e2', '73.0', '+6', ' 5', '5 ',
    'u1') is not an id, so that no id is ever changed on the way in ('1e2' is not user 100).
    `plain` (N,) marks the values of that form, `fits` those of them within int64, and
    `values` holds those (0 elsewhere; missing values are not plain). Every reader of integer
    ids from text calls this (`features.schema` for data directories, `features.sources.
    delimited` for MovieLens and KuaiRand), so a mode with string ids bypasses this function.
    """
    n = len(text)
    t = _as_str(text)
    plain = _regex_mask(t, _INTEGER_TEXT_RE)
    values = np.zeros(n, np.int64)
    fits = plain.copy()
    if plain.any():
        pos = np.flatnonzero(plain)
        digits = t[plain]
        try:
            values[pos] = pc.cast(pa.array(digits, type=pa.large_string()), pa.int64()).to_numpy()
        except pa.ArrowInvalid:
            # some value overflows int64 (error path): range-check the long ones one by one
            ok = np.ones(len(digits), bool)
            long = (digits.str.lstrip("-").str.lstrip("0").str.len() >= 19).to_numpy(bool)
            ok[long] = [_INT64_MIN <= int(v) <= _INT64_MAX for v in digits[long]]
            parsed = pc.cast(pa.array(digits[ok], type=pa.large_string()), pa.int64())
            values[pos[ok]] = parsed.to_numpy()
            fits[pos[~ok]] = False
    return values, plain, fits


def file_may_pad_integers(path: str | os.PathLike[str], sep: str = ",") -> bool:
    """Return whether a delimited file holds a '+' or whitespace other than its separator.

    pandas' C parser reads ' 5', '5 ' and '+6' as the integer 5 or 6, so an integer-id column
    it parsed as integers is plain integer text (`integer_text_ids`) only when the file has
    none of these bytes. Readers parse the id columns of such a file as numbers (fast) and
    read them as text otherwise. Scans the file in 4 MiB blocks (about 1 GB/s).
    """
    needles = [b"+", b" ", b"\x0b", b"\x0c"] + ([] if "\t" in sep else [b"\t"])
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            if any(b in block for b in needles):
                return True
    return False


def csv_line_numbers(path: str, n_rows: int, rows: np.ndarray) -> list[int] | None:
    """Return the 1-based line where each of `rows` of a CSV file of `n_rows` rows starts.

    None when the file cannot be read or does not agree (a table that changed since).
    """
    if len(rows) == 0:
        return []
    try:
        starts = _csv_record_lines(path, n_rows, int(np.max(rows)))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if isinstance(starts, int):
        return [starts + int(i) for i in rows]
    lines = [int(starts[i]) for i in rows]
    return lines if all(line > 0 for line in lines) else None


def _csv_record_lines(path: str, n_rows: int, upto: int) -> int | np.ndarray:
    """Return the 1-based line where each data row of a CSV file starts.

    Returns the int 2 when row i simply sits on line i + 2 (one line per record, no blank
    lines: the line breaks number n_rows + 1, or n_rows without a final one); otherwise an
    int64 array (min(n_rows, upto + 1),) from a record-by-record scan with the csv module,
    which skips blank lines like pandas does (0 where the scan found no such row).
    """
    n_breaks = 0
    last = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            n_breaks += chunk.count(b"\n")
            last = chunk[-1:]
    if n_breaks == n_rows + int(last == b"\n"):
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
        if b"\r" not in head.replace(b"\r\n", b""):  # no old-Mac line ends
            return 2
    n = min(n_rows, upto + 1)
    starts = np.zeros(n, np.int64)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)  # the header
        i, line = 0, reader.line_num + 1
        for record in reader:  # error path only: a scan in Python up to the last row needed
            if i == n:
                break
            if record:
                starts[i] = line
                i += 1
            line = reader.line_num + 1
    return starts


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _stripped(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Return (`s` as str with surrounding whitespace removed, mask of missing/blank values)."""
    t = _as_str(s).str.strip()
    return t, (t.isna() | (t == "")).to_numpy(dtype=bool, na_value=True)


def _regex_mask(t: pd.Series, pattern: str) -> np.ndarray:
    """Return where the str series `t` matches `pattern` (arrow's RE2: fast, vectorized)."""
    arr = pa.array(t, type=pa.large_string(), from_pandas=True)
    hit = pc.fill_null(pc.match_substring_regex(arr, pattern), False)
    return hit.to_numpy(zero_copy_only=False)


def _parse_floats(t: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Return (float64 values, NaN where not a number; mask of numbers) of stripped strings."""
    is_num = _regex_mask(t, _NUMBER_RE)
    out = np.full(len(t), np.nan)
    if is_num.any():
        try:
            arr = pa.array(t[is_num], type=pa.large_string())
            out[is_num] = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # a spelling arrow does not parse; pandas does
            out[is_num] = pd.to_numeric(t[is_num], errors="coerce").to_numpy(np.float64)
            is_num = is_num & ~np.isnan(out)
    return out, is_num


def _decimal_ints(s: pd.Series) -> pd.Series:
    """Return decimal.Decimal values exactly as Int64, or as str where one is not an int64."""
    try:
        ints = pc.cast(pa.array(s, from_pandas=True), pa.int64())  # raises on fractions/overflow
        return pd.Series(
            ints.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get), index=s.index
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    # error path: a value is fractional or beyond int64; integral ones keep all their digits
    out = [
        None
        if v is None or v is pd.NA
        else (str(int(v)) if v.is_finite() and v == v.to_integral_value() else str(v))
        for v in s.tolist()
    ]
    return pd.Series(out, index=s.index, dtype="str")


def _as_str(s: pd.Series) -> pd.Series:
    """Return `s` as pandas' str dtype with missing values kept missing."""
    if isinstance(s.dtype, pd.StringDtype) and s.dtype.na_value is np.nan:
        return s
    return s.astype("str")


def _datetime_seconds(s: pd.Series) -> np.ndarray:
    """Return int64 UTC seconds (floored) of a datetime column; NaT gives garbage (mask it)."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    # numpy floors when casting to a coarser unit, so -0.5 s becomes -1 s
    return s.to_numpy().astype("datetime64[s]").astype(np.int64)


def _topic_lists(s: pd.Series) -> tuple[pa.Array, int, int] | None:
    """Return (large_list<string> array, #split strings, #dropped empty topics) or None."""
    n = len(s)
    if n == 0:
        return pa.array([], pa.large_list(pa.string())), 0, 0
    if pd.api.types.is_float_dtype(s.dtype) and s.isna().all():
        return pa.array([[]] * n, pa.large_list(pa.string())), 0, 0
    try:
        arr = pa.array(s, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return None
    n_split = 0
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        n_split = int(pc.sum(pc.is_valid(arr)).as_py() or 0)
        arr = pc.split_pattern(arr, "|")
    elif pa.types.is_null(arr.type):
        arr = pa.array([[]] * n, pa.large_list(pa.string()))
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        return None
    value_type = arr.type.value_type
    if not (
        pa.types.is_string(value_type)
        or pa.types.is_large_string(value_type)
        or pa.types.is_null(value_type)
        or pa.types.is_integer(value_type)
    ):
        return None
    arr = arr.cast(pa.large_list(pa.string()))
    flat = pc.utf8_trim_whitespace(arr.flatten())
    parent = pc.list_parent_indices(arr).to_numpy()
    keep = pc.fill_null(pc.not_equal(flat, ""), False).to_numpy(zero_copy_only=False)
    n_dropped = int(len(keep) - keep.sum())
    counts = np.bincount(parent[keep], minlength=n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    values = flat.filter(pa.array(keep))
    return pa.LargeListArray.from_arrays(pa.array(offsets), values), n_split, n_dropped


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _spec(name: str) -> TableSpec:
    if name not in TABLE_SPECS:
        raise ValueError(f"unknown table {name!r}; the contract has {', '.join(TABLES)}")
    return TABLE_SPECS[name]


def validate_table(
    name: str,
    df: pd.DataFrame,
    *,
    file: str | None = None,
    report: ValidationReport | None = None,
) -> pd.DataFrame:
    """Return a copy of table `name` coerced to the canonical dtypes.

    Raises `DataContractError` listing every problem of this table. Cross-table references
    are checked by `validate_dataset`. `report`, when given, receives the conversions done and
    the ignored columns. String ids become codes of this table's own sorted ids: a dataset
    with string ids is validated whole by `validate_dataset`, which keeps the map.
    """
    tables, problems = check_tables(
        {name: df}, files={name: file} if file else None, report=report, only=(name,)
    )
    if problems:
        raise DataContractError(problems)
    return cast(pd.DataFrame, tables[name])  # no problems: the table was coerced


def check_tables(
    tables: Mapping[str, pd.DataFrame | None],
    *,
    files: Mapping[str, str] | None = None,
    report: ValidationReport | None = None,
    only: tuple[str, ...] | None = None,
    unreadable: tuple[str, ...] = (),
) -> tuple[dict[str, pd.DataFrame | None], list[Problem]]:
    """Return (coerced tables, every problem found) without raising (see `check_dataset`)."""
    checked = check_dataset(
        tables, files=files, report=report, only=only, unreadable=unreadable
    )
    return checked.tables, checked.problems


@dataclass
class CheckedTables:
    """What `check_dataset` found: coerced tables, problems, id maps and extra-column types."""

    tables: dict[str, pd.DataFrame | None]
    problems: list[Problem]
    ids: IdMaps | None  # None: every id space holds integer ids
    columns: dict[str, dict[str, str]]  # {users/items: {kept extra column: type}}


def check_dataset(
    tables: Mapping[str, pd.DataFrame | None],
    *,
    files: Mapping[str, str] | None = None,
    report: ValidationReport | None = None,
    only: tuple[str, ...] | None = None,
    unreadable: tuple[str, ...] = (),
    columns: Mapping[str, str] | None = None,
    id_maps: IdMaps | None = None,
) -> CheckedTables:
    """Return the coerced tables, every problem found (without raising), the id maps and the
    types of the extra columns.

    `only` restricts the check to those tables (no missing-table or reference checks then);
    `unreadable` names tables whose file could not be read (already reported by the reader):
    they are not reported as missing and references into them are not checked. `columns`
    declares extra columns of users and items ({"zip": "categorical", "items.budget":
    "ignore"}, see `declared_columns`). `id_maps` are the maps of tables whose ids are codes
    already (a directory written with an id_maps.parquet): their spaces must hold codes.
    """
    files = dict(files or {})
    report = report if report is not None else ValidationReport()
    names = only if only is not None else TABLES
    problems: list[Problem] = []
    out: dict[str, pd.DataFrame | None] = {}
    checkers: dict[str, _TableChecker] = {}
    declared, found = _declarations(columns, tables, names, files)
    problems.extend(found)
    coded = {sp: id_maps.size(sp) for sp in (id_maps.ids if id_maps is not None else {})}
    string_ids = _string_id_spaces(tables, names, coded, report)
    for name in names:
        spec = _spec(name)
        df = tables.get(name)
        if df is None:
            out[name] = None
            if only is None and spec.required and name not in unreadable:
                problems.append(
                    Problem(
                        name,
                        None,
                        "required table is missing",
                        fix=f"provide the {name} table (columns {list(spec.required_columns)})",
                    )
                )
            continue
        if not isinstance(df, pd.DataFrame):
            out[name] = None
            problems.append(
                Problem(
                    name,
                    None,
                    f"expected a pandas DataFrame, got {type(df).__name__}",
                    file=files.get(name),
                    fix="pass the table as a pandas.DataFrame",
                )
            )
            continue
        checker = _TableChecker(
            spec,
            df,
            files.get(name),
            report,
            string_ids=string_ids,
            coded=coded,
            declared=declared.get(name),
        )
        out[name] = checker.run()
        checkers[name] = checker
        problems.extend(checker.problems)
        report.rows[name] = len(df)
        if only is None and spec.required and len(df) == 0:
            problems.append(
                Problem(
                    name,
                    None,
                    "table has no rows",
                    file=files.get(name),
                    fix=f"the {name} table must contain at least one row",
                )
            )
    maps = dict(id_maps.ids) if id_maps is not None else {}
    maps.update({sp: idx.to_numpy(dtype=object) for sp, idx in string_ids.items()})
    ids = IdMaps(maps) if maps else None
    if only is None:
        problems.extend(_reference_problems(checkers, files))
        if not problems:
            _count_suspicious(out, checkers, report, ids)
    kept = {t: dict(c.extra_types) for t, c in checkers.items() if c.spec.typed_extras}
    return CheckedTables(out, problems, ids, kept)


def declared_columns(config_columns: Mapping[str, Any] | None) -> dict[str, str]:
    """Return the declarations of a config's `data.columns` table as {"col" or "table.col": type}.

    `[data.columns] zip = "categorical"` names a column of users or items; `[data.columns.items]
    budget = "ignore"` (or the key "items.budget") names one table's column.
    """
    out: dict[str, str] = {}
    for key, value in (config_columns or {}).items():
        if isinstance(value, Mapping):
            for col, kind in value.items():
                out[f"{key}.{col}"] = kind
        else:
            out[str(key)] = value
    return out


def _declarations(
    columns: Mapping[str, str] | None,
    tables: Mapping[str, pd.DataFrame | None],
    names: tuple[str, ...],
    files: Mapping[str, str],
) -> tuple[dict[str, dict[str, str]], list[Problem]]:
    """Return ({users/items: {column: declared type}}, problems) of declarations `columns`."""
    out: dict[str, dict[str, str]] = {"users": {}, "items": {}}
    problems: list[Problem] = []
    typed = ("users", "items")

    def extras_of(table: str) -> list[str] | None:
        df = tables.get(table)
        if table not in names or not isinstance(df, pd.DataFrame):
            return None  # not checked here: nothing to say about it
        return [str(c) for c in df.columns if c not in TABLE_SPECS[table].column_names]

    def problem(table: str, column: str, message: str, fix: str) -> None:
        problems.append(Problem(table, column, message, file=files.get(table), fix=fix))

    for key, kind in declared_columns(columns).items():
        table, _, col = key.rpartition(".")
        where = [table] if table else list(typed)
        if kind not in COLUMN_TYPES:
            problem(
                where[0],
                col,
                f"declared as {kind!r} in data.columns",
                f"declare one of {', '.join(COLUMN_TYPES)}",
            )
            continue
        if table and table not in typed:
            problem(
                table if table in TABLES else "dataset",
                col,
                f"data.columns declares {key!r}, but only users and items take extra columns",
                "declare columns of users or items only (the other tables' extra columns are "
                "ignored)",
            )
            continue
        hits = []
        for t in where:
            extras = extras_of(t)
            if extras is None:
                continue
            if col in TABLE_SPECS[t].column_names:
                problem(
                    t,
                    col,
                    f"data.columns declares {col!r}, a contract column of {t} whose type is fixed",
                    f"remove the declaration; the contract's {t} columns are "
                    f"{list(TABLE_SPECS[t].column_names)}",
                )
                hits.append(t)
            elif col in extras:
                out[t][col] = kind
                hits.append(t)
        checked = [t for t in where if extras_of(t) is not None]
        if not hits and len(checked) == len(where):
            have = {t: extras_of(t) for t in checked}
            problem(
                where[0],
                col,
                f"data.columns declares {key!r}, but {' and '.join(where)} have no such column",
                f"declare a column that exists (extra columns: {have}) or remove the "
                "declaration",
            )
    return out, problems


def _first_column(df: pd.DataFrame, name: str) -> pd.Series:
    """Return column `name` (its first copy when the header repeats it)."""
    col = df[name]
    return col.iloc[:, 0] if isinstance(col, pd.DataFrame) else col


def _string_id_spaces(
    tables: Mapping[str, pd.DataFrame | None],
    names: tuple[str, ...],
    coded: Mapping[str, int],
    report: ValidationReport,
) -> dict[str, pd.Index]:
    """Return {space: its sorted distinct ids} of the id spaces holding string ids.

    A space holds string ids when a value of one of its columns, as text, is not a number
    ('u1'; not '1e2' or '73.0', which keep the space an integer one and are refused there).
    Spaces of `coded` hold codes already and are not string spaces here.
    """
    out: dict[str, pd.Index] = {}
    for space, where in ID_SPACES.items():
        cols = [
            _first_column(df, c)
            for t, c in where
            if t in names and isinstance(df := tables.get(t), pd.DataFrame) and c in df.columns
        ]
        if not cols:
            continue
        if space in coded:
            report.id_types[space] = "string"
            continue
        if not any(_has_non_numeric_text(s) for s in cols):
            report.id_types[space] = "integer"
            continue
        texts = [_id_text(s)[0] for s in cols]
        ids = sorted_ids(pd.concat(texts, ignore_index=True))
        out[space] = pd.Index(ids, dtype=object)
        report.id_types[space] = "string"
        shown = ", ".join(repr(v) for v in ids[:3].tolist())
        report.notes.append(
            f"{space} ids are strings ({len(ids):,} distinct, e.g. {shown}): every output shows "
            f"them as given; inside a run each is an int64 code, 0..{len(ids) - 1} in sorted "
            "order, fitted on the whole log (an id is a name, not a feature of time)"
        )
    return out


def text_id_spaces(tables: Mapping[str, pd.DataFrame | None]) -> set[str]:
    """Return the id spaces in which some value of `tables` is text that is not a number."""
    out: set[str] = set()
    for space, where in ID_SPACES.items():
        for t, c in where:
            df = tables.get(t)
            if isinstance(df, pd.DataFrame) and c in df.columns:
                if _has_non_numeric_text(_first_column(df, c)):
                    out.add(space)
    return out


def _space_of(column: str) -> str:
    return "user" if column == "user_id" else "item"


def _has_non_numeric_text(s: pd.Series) -> bool:
    """Return whether some value of an id column, as text, is not a number (a string id)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(object)
    if not (pd.api.types.is_string_dtype(s.dtype) or pd.api.types.is_object_dtype(s.dtype)):
        return False
    text, bad = _id_text(s)
    t, missing = _stripped(text)
    other = ~missing & ~_regex_mask(t, _NUMBER_RE) & ~_regex_mask(t, _NA_RE)
    return bool(other.any())


def _id_text(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Return (the ids of a column as exact text, NaN where missing; mask of values that are
    not text ids: floats, bools, dates...). Integers are taken as their decimal text."""
    n = len(s)
    dtype = s.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        s = s.astype(object)
        dtype = s.dtype
    if pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        return s.astype("str"), np.zeros(n, bool)
    if pd.api.types.is_object_dtype(dtype):
        try:
            arr = pa.array(s, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            arr = None
        if arr is not None and (
            pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)
        ):
            try:
                arr = arr.cast(pa.large_string())
            except pa.ArrowInvalid:
                arr = None
        if arr is not None and (pa.types.is_integer(arr.type) or pa.types.is_null(arr.type)):
            s = pd.Series(arr.cast(pa.large_string()).to_pandas(), index=s.index).astype("str")
        elif arr is not None and _is_text_type(arr.type):
            s = pd.Series(arr.to_pandas(), index=s.index).astype("str")
        else:  # mixed values (error path): text and Python ints kept, anything else refused
            ok = s.map(lambda v: isinstance(v, str | int | np.integer) and not isinstance(v, bool))
            bad = ~ok.to_numpy(bool) & s.notna().to_numpy()
            text = s.where(ok.to_numpy(bool)).map(lambda v: v if v is None else str(v))
            return _blank_missing(text.astype("str")), bad
        dtype = s.dtype
    if pd.api.types.is_string_dtype(dtype):
        return _blank_missing(_as_str(s)), np.zeros(n, bool)
    missing = s.isna().to_numpy()
    return pd.Series(np.nan, index=s.index, dtype="str"), ~missing


def _is_text_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _blank_missing(t: pd.Series) -> pd.Series:
    """Return the str series `t` with empty strings as missing values."""
    empty = (t == "").to_numpy(dtype=bool, na_value=False)
    return t.where(~empty) if empty.any() else t


def _value_shape(s: pd.Series) -> str:
    """Return what an extra column holds: "empty", "number", "list", "text", "mixed-lists" or
    "other" (dates and the like)."""
    dtype = s.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        return "empty" if not s.notna().any() else "number"
    if not (pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype)):
        return "empty" if not s.notna().any() else "other"
    present = s.notna().to_numpy()
    if not present.any():
        return "empty"
    if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        return "text" if (s[present] != "").any() else "empty"
    try:
        arr = pa.array(s, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        listy = s.map(lambda v: isinstance(v, list | tuple | np.ndarray)).to_numpy(bool)
        return "mixed-lists" if listy.any() else "text"
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "list"
    if _is_text_type(t):
        return "text" if (s[present] != "").any() else "empty"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_boolean(t):
        return "number"
    if pa.types.is_null(t):
        return "empty"
    return "other"


def _where(checker: _TableChecker) -> Callable[[str, np.ndarray], str]:
    """Return a function naming the first rows of a table (with their CSV lines)."""

    def where(table: str, rows: np.ndarray) -> str:
        idx = rows[:3]
        lines = checker.csv_lines(idx) if checker.is_csv and checker.spec.name == table else None
        return _row_list(idx, lines, len(rows))

    return where


def _row_list(idx: np.ndarray, lines: list[int] | None, n: int) -> str:
    parts = [
        f"row {i}" + (f" (line {lines[k]})" if lines is not None else "")
        for k, i in enumerate(idx.tolist())
    ]
    return ", ".join(parts) + (", ..." if n > len(idx) else "")


def repeated_rows(df: pd.DataFrame) -> np.ndarray:
    """Return the positions of the rows equal in every column to an earlier row (ascending).

    Hashes the rows and sorts the hashes (fast on tens of millions of rows); only rows whose
    hash repeats are compared exactly.
    """
    if len(df) < 2 or df.shape[1] == 0:
        return np.zeros(0, np.int64)
    h = pd.util.hash_pandas_object(df, index=False).to_numpy()
    hs = np.sort(h)
    same = hs[1:] == hs[:-1]
    if not same.any():
        return np.zeros(0, np.int64)
    rep = hs[1:][same]  # sorted: a binary search per row finds the rows holding them
    idx = np.minimum(np.searchsorted(rep, h), len(rep) - 1)
    cand = np.flatnonzero(rep[idx] == h)
    dup = df.iloc[cand].duplicated(keep="first").to_numpy()
    return cand[dup]


def table_warnings(
    tables: Mapping[str, pd.DataFrame | None],
    where: Mapping[str, Callable[[str, np.ndarray], str]] | None = None,
    ids: IdMaps | None = None,
) -> list[str]:
    """Return the counted warnings about valid tables: what is accepted but looks wrong.

    - event rows (watches, searches, impressions) equal in every column to an earlier row:
      double logging, which counts the event twice in training and metrics;
    - watch times above `WATCH_TIME_OVER_DURATION` times the item's duration (items with a
      duration > 0): replays add up to a few plays, ten or more point at milliseconds or at
      a wrong item id.

    `tables` are coerced contract tables whose references hold; `where` maps a table to a
    function naming its first offending rows (default: row numbers); `ids` names string ids
    as the data gives them.
    """
    label = ids.label if ids is not None else (lambda _space, code: int(code))
    out: list[str] = []
    items = tables.get("items")
    for name in ("watches", "searches", "impressions"):
        df = tables.get(name)
        if df is None or len(df) == 0:
            continue
        rows_of = (where or {}).get(name) or (lambda _t, r: _row_list(r[:3], None, len(r)))
        contract = [c for c in TABLE_SPECS[name].column_names if c in df.columns]
        rep = repeated_rows(df[contract])
        if len(rep):
            out.append(
                f"{name}: {len(rep):,} of {len(df):,} rows repeat an earlier row exactly (every "
                f"contract column equal; first repeats at {rows_of(name, rep)}): kept, so each "
                "counts again in training and in the metrics; if the log recorded them twice, "
                "drop them (pandas: df.drop_duplicates())"
            )
        if (
            "watch_time" in df.columns
            and items is not None
            and "duration" in items.columns
            and "item_id" in df.columns
        ):
            pos = pd.Index(items["item_id"].to_numpy()).get_indexer(df["item_id"].to_numpy())
            dur = items["duration"].to_numpy(np.float64)[pos]  # every item_id is known here
            wt = df["watch_time"].to_numpy(np.float64)
            with np.errstate(invalid="ignore"):
                over = (dur > 0) & (wt > WATCH_TIME_OVER_DURATION * dur)
            if over.any():
                rows = np.flatnonzero(over)
                top = rows[np.argmax(wt[rows] / dur[rows])]
                out.append(
                    f"{name}: {len(rows):,} of {len(df):,} rows have a watch_time above "
                    f"{WATCH_TIME_OVER_DURATION:g} times the item's duration (largest: "
                    f"{wt[top]:g} s on item {label('item', int(df['item_id'].iloc[top]))!r} of "
                    f"{dur[top]:g} s; "
                    f"first at {rows_of(name, rows)}): kept as given; check that watch_time "
                    "and items.duration are both in seconds and that these item ids are right"
                )
    return out


def _count_suspicious(
    tables: Mapping[str, pd.DataFrame | None],
    checkers: Mapping[str, _TableChecker],
    report: ValidationReport,
    ids: IdMaps | None = None,
) -> None:
    """Count what is valid but looks wrong into `report.warnings`; describe impression pages."""
    report.warnings.extend(
        table_warnings(tables, {name: _where(c) for name, c in checkers.items()}, ids)
    )
    imps = tables.get("impressions")
    if imps is not None and len(imps):
        sizes = page_sizes(imps["user_id"].to_numpy(), imps["timestamp"].to_numpy())
        report.notes.append(
            f"impressions: a page (the slate that ranking metrics and the ranker group by) is "
            f"the rows sharing (user_id, timestamp): {len(sizes):,} pages, "
            f"{len(imps) / len(sizes):.1f} impressions per page on average, "
            f"{int((sizes == 1).sum()):,} pages of a single impression"
        )
        single = int((sizes == 1).sum())
        if single > len(sizes) / 2:
            report.warnings.append(
                f"impressions: {single:,} of {len(sizes):,} pages ({single / len(sizes):.0%}) "
                "hold a single impression: a page is the rows sharing (user_id, timestamp), "
                "and GAUC, NDCG and the weighted per-user loss compare clicked with unclicked "
                "rows of one page, so on single-row pages they are n/a. Give the impressions "
                "of one slate the same timestamp (the request time), not each its own"
            )


def page_sizes(user_id: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Return the number of rows of each distinct (user_id, timestamp) pair (any order)."""
    if len(user_id) == 0:
        return np.zeros(0, np.int64)
    u, t = user_id.astype(np.int64), timestamp.astype(np.int64)
    u_span = int(u.max()) - int(u.min()) + 1
    t_span = int(t.max()) - int(t.min()) + 1
    if u_span * t_span < 2**62:  # one int64 key per pair: a sort counts them
        key = np.sort((u - u.min()) * t_span + (t - t.min()))
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        return np.diff(np.r_[starts, len(key)])
    frame = pd.DataFrame({"u": u, "t": t})
    return frame.groupby(["u", "t"], sort=False).size().to_numpy()


def _reference_problems(
    checkers: Mapping[str, _TableChecker], files: Mapping[str, str]
) -> list[Problem]:
    """Return the problems of rows whose user_id/item_id is not in users/items.

    Uses every id column that passed its own checks, so unknown ids are reported even when
    other columns of the same tables have problems.
    """
    problems: list[Problem] = []
    for name in TABLES:
        checker = checkers.get(name)
        if checker is None:
            continue
        for column, target in TABLE_SPECS[name].references:
            key = str(TABLE_SPECS[target].primary_key)
            target_checker = checkers.get(target)
            if target_checker is None or key not in target_checker.coerced:
                continue  # the target's own problems are reported already
            ids = checker.coerced.get(column)
            if ids is None:
                continue
            unknown = ~ids.isin(target_checker.coerced[key]).to_numpy()
            if not unknown.any():
                continue
            n_ids = int(ids[unknown].nunique())
            before = len(checker.problems)
            checker.flag(
                column,
                unknown,
                f"unknown {column}: {n_ids} distinct values not in {target}.{key}",
                f"every {column} in {name} must exist in the {target} table; add the missing "
                f"{target} to {files.get(target, target)} or drop these rows",
            )
            problems.extend(checker.problems[before:])
    return problems


def validate_dataset(
    ds: Dataset,
    *,
    files: dict[str, str] | None = None,
    report: ValidationReport | None = None,
    columns: Mapping[str, str] | None = None,
) -> Dataset:
    """Return a copy of `ds` with every table coerced to the canonical dtypes.

    Checks all five tables and the references between them (watches/searches/impressions of
    unknown users or items) and raises one `DataContractError` listing every problem found.
    `files` maps table names to the files they came from (named in the messages). Extra
    columns keep the types of `ds.columns` (a validated dataset's), then `columns` declares
    more (see `check_dataset`). String ids become codes, with their map in `.ids`; a dataset
    whose `ids` are set already holds codes in those spaces.
    """
    tables = {name: ds.table(name) for name in TABLES}
    declared = {f"{t}.{c}": kind for t, cols in ds.columns.items() for c, kind in cols.items()}
    declared.update(declared_columns(columns))
    checked = check_dataset(
        tables, files=files, report=report, columns=declared, id_maps=ds.ids
    )
    if checked.problems:
        raise DataContractError(checked.problems)
    out = checked.tables
    # no problems: every required table was present and coerced
    return Dataset(
        users=cast(pd.DataFrame, out["users"]),
        items=cast(pd.DataFrame, out["items"]),
        watches=cast(pd.DataFrame, out["watches"]),
        searches=out["searches"],
        impressions=out["impressions"],
        name=ds.name,
        meta=dict(ds.meta),
        ids=checked.ids,
        columns=checked.columns,
    )


def declare_columns(
    ds: Dataset, columns: Mapping[str, str] | None, report: ValidationReport | None = None
) -> Dataset:
    """Return `ds` with its users' and items' extra columns typed again under the declarations
    `columns` (over the types `ds.columns` has); the other tables are kept as they are.

    For sources converted in memory (MovieLens, KuaiRand, the synthetic world), whose extra
    columns a run config declares; a data directory takes them in `features.io.read_dataset`.
    """
    if not columns:
        return ds
    declared = {f"{t}.{c}": kind for t, cols in ds.columns.items() for c, kind in cols.items()}
    declared.update(declared_columns(columns))
    checked = check_dataset(
        {"users": ds.users, "items": ds.items},
        report=report,
        only=("users", "items"),
        columns=declared,
        id_maps=ds.ids,
    )
    if checked.problems:
        raise DataContractError(checked.problems)
    return dataclasses.replace(
        ds,
        users=cast(pd.DataFrame, checked.tables["users"]),
        items=cast(pd.DataFrame, checked.tables["items"]),
        columns=checked.columns,
    )
