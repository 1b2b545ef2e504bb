"""Chunked readers for the delimited files of public data sets, with contract errors by line.

Where it sits in the data path: `features.sources.movielens` and `features.sources.kuairand`
read the official files of their data sets (CSV, tab-, '|'- or '::'-separated, UTF-8 or
latin-1) through these readers before mapping them to the contract tables.

- `read_delimited` streams a large file in chunks (`chunksize` rows at a time, only the wanted
  columns, parsed by pandas' C parser), checks and converts every column of a chunk with
  vectorized numpy/pandas code, and keeps only the converted compact columns, so the memory
  held is one raw chunk plus the converted output.
- `read_fields` reads a small text file (a movie or user list) whose fields may contain the
  separator's characters or quotes, by splitting each line on the exact separator string.

Every malformed line (a wrong number of fields, a non-numeric id, a bad timestamp, a missing
value, undecodable bytes) raises one `DataContractError` whose problems name the file, the
contract table being built, the column and the line numbers (1-based, header included).
Blank lines are skipped and counted, never reported as errors.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np
import pandas as pd

from vidrec.features.schema import (
    DataContractError,
    Problem,
    file_may_pad_integers,
    integer_text_ids,
)

__all__ = [
    "FieldKind",
    "ReadStats",
    "coerce_field",
    "read_delimited",
    "read_delimited_all",
    "read_fields",
    "read_header",
]

FieldKind = Literal["id", "time", "int", "number", "nonneg", "flag", "str"]

_MAX_EXAMPLES = 5
# Integers above 2**53 are not exact in float64: ids read as float (a column with gaps) must
# stay below it.
_FLOAT_EXACT = 2.0**53
_WHAT: dict[str, str] = {
    "id": "a non-negative integer id",
    "time": "a non-negative integer timestamp",
    "int": "an integer",
    "number": "a finite number",
    "nonneg": "a finite number >= 0",
    "flag": "0 or 1",
}
_SEP_NAMES = {"\t": "tab", ",": "comma"}


@dataclass
class ReadStats:
    """What a reader saw: data lines read and blank lines skipped."""

    lines: int = 0
    blank_lines: int = 0


def _example(line: int, row: int, column: str, value: Any) -> dict[str, Any]:
    if isinstance(value, float) and np.isnan(value):
        value = None
    elif isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, str) and len(value) > 60:
        value = value[:57] + "..."
    return {"row": row, "line": line, column: value}


def _error(table: str, file: Path, message: str, fix: str, column: str | None = None) -> NoReturn:
    raise DataContractError([Problem(table, column, message, file=str(file), fix=fix)])


def coerce_field(
    s: pd.Series,
    kind: FieldKind,
    *,
    column: str,
    table: str,
    file: Path,
    lines: np.ndarray,
    required: bool = True,
) -> tuple[np.ndarray | pd.Series, list[Problem]]:
    """Return (the column converted to its kind, the problems of its values).

    `lines` (N,) are the 1-based file line numbers of the rows, named in the problems. ids,
    times and ints become int64 (missing values, allowed only when not `required`, become 0:
    callers that accept them read the mask from the input), flags int8, numbers float64 with
    NaN for missing values, and strings stay strings.
    """
    n = len(s)
    problems: list[Problem] = []

    def flag(mask: np.ndarray, message: str, fix: str) -> None:
        bad = np.flatnonzero(mask)
        if len(bad) == 0:
            return
        first = bad[:_MAX_EXAMPLES]
        examples = [_example(int(lines[i]), int(i), column, s.iloc[i]) for i in first.tolist()]
        where = ", ".join(str(int(lines[i])) for i in first)
        more = f" and {len(bad) - len(first)} more" if len(bad) > len(first) else ""
        problems.append(
            Problem(
                table,
                column,
                f"{message} at line {where}{more} ({len(bad)} of {n} rows read)",
                n_rows=len(bad),
                examples=examples,
                file=str(file),
                fix=fix,
            )
        )

    missing_fix = (
        f"every line needs a value in column {column!r}: check that the line has as many "
        "fields as the header (a short line leaves the last fields empty) or remove the line"
    )
    if kind == "str":
        t = s.astype("str")
        t = t.where(t.str.strip() != "")
        if required:
            flag(t.isna().to_numpy(), "missing value", missing_fix)
        return t, problems

    dtype = s.dtype
    textual = pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype)
    if kind == "id" and textual:
        return _text_ids(s, required, flag, column), problems
    if textual:
        text = s.astype("str").str.strip()
        blank = (text.isna() | (text == "")).to_numpy(dtype=bool, na_value=True)
        f = pd.to_numeric(text.where(~blank), errors="coerce").to_numpy(np.float64)
        flag(
            ~blank & np.isnan(f),
            f"value that is not a number (column {column!r} must hold {_WHAT[kind]})",
            f"fix or remove the line; column {column!r} must hold {_WHAT[kind]}",
        )
        missing = blank
        values = f
    elif pd.api.types.is_integer_dtype(dtype) and kind != "number" and kind != "nonneg":
        missing = s.isna().to_numpy()
        values = s.to_numpy(np.int64, na_value=0)
    else:
        values = s.to_numpy(np.float64, na_value=np.nan)
        missing = np.isnan(values)
    if required:
        flag(missing, "missing value", missing_fix)

    ok = ~missing
    if values.dtype == np.float64:
        with np.errstate(invalid="ignore"):
            finite = ok & np.isfinite(values)
            if kind in ("number", "nonneg"):
                flag(ok & ~np.isfinite(values), "infinite value", f"{column} must be finite")
                if kind == "nonneg":
                    flag(finite & (values < 0), "negative value", f"{column} must be >= 0")
                return values, problems
            integral = finite & (np.floor(values) == values) & (np.abs(values) < _FLOAT_EXACT)
        flag(
            ok & ~np.isnan(values) & ~integral,
            f"value that is not an integer (column {column!r} must hold {_WHAT[kind]})",
            f"column {column!r} must hold {_WHAT[kind]}; fix or remove the line",
        )
        ints = np.where(integral, values, 0).astype(np.int64)
    else:
        ints = values
    if kind in ("number", "nonneg"):
        out = ints.astype(np.float64)
        out[missing] = np.nan
        if kind == "nonneg":
            flag(ok & (out < 0), "negative value", f"{column} must be >= 0")
        return out, problems
    if kind in ("id", "time"):
        flag(
            ok & (ints < 0),
            f"negative value (column {column!r} must hold {_WHAT[kind]})",
            f"column {column!r} must hold {_WHAT[kind]}; fix or remove the line",
        )
    if kind == "flag":
        flag(
            ok & (ints != 0) & (ints != 1),
            f"value other than 0 and 1 in column {column!r}",
            f"column {column!r} is a 0/1 flag; fix or remove the line",
        )
        return ints.astype(np.int8), problems
    return ints, problems


def _text_ids(
    s: pd.Series, required: bool, flag: Callable[[np.ndarray, str, str], None], column: str
) -> np.ndarray:
    """Return int64 ids of a text column; flag values that are not plain integer text.

    The rule is `features.schema.integer_text_ids`: digits with an optional leading '-'. Of the
    other values, words, fractions and whole numbers written otherwise ('+6', ' 5', '73.0',
    '1e2') get a message each.
    """
    text = s.astype("str")
    stripped = text.str.strip()
    blank = (stripped.isna() | (stripped == "")).to_numpy(dtype=bool, na_value=True)
    values, plain, fits = integer_text_ids(text)
    what = f"column {column!r} must hold {_WHAT['id']}"
    if required:
        flag(
            blank,
            "missing value",
            f"every line needs a value in column {column!r}: check that the line has as many "
            "fields as the header (a short line leaves the last fields empty) or remove the line",
        )
    rest = ~blank & ~plain
    if rest.any():  # error path
        f = pd.to_numeric(stripped.where(rest), errors="coerce").to_numpy(np.float64)
        number = rest & ~np.isnan(f)
        with np.errstate(invalid="ignore"):
            whole = number & np.isfinite(f) & (np.floor(f) == f)
        fix = f"{what}; fix or remove the line"
        flag(rest & ~number, f"value that is not a number ({what})", fix)
        flag(number & ~whole, f"value that is not an integer ({what})", fix)
        flag(
            whole,
            f"id written with a sign, a space, a decimal point or an exponent ({what} as plain "
            "integer text)",
            "ids must be integer text: digits only, with an optional leading '-' (100, not "
            "+100, ' 100', 100.0 or 1e2); fix or remove the line",
        )
    flag(plain & ~fits, f"integer beyond the int64 range ({what})", f"{what}; fix the line")
    flag(
        plain & fits & (values < 0),
        f"negative value ({what})",
        f"{what}; fix or remove the line",
    )
    return values


def read_header(path: Path, *, table: str, encoding: str, sep: str = ",") -> list[str]:
    """Return the column names on the first line of a delimited file with a header."""
    try:
        with open(path, encoding="utf-8-sig" if encoding == "utf-8" else encoding) as fh:
            first = fh.readline()
    except UnicodeDecodeError:
        _encoding_problem(path, table, encoding)
    except OSError as exc:
        _error(table, path, f"cannot open the file: {exc.strerror}", "check the path")
    if not first.strip():
        _error(table, path, "the file is empty (no header line)", "restore the original file")
    names = [c.strip() for c in next(csv.reader([first.rstrip("\r\n")], delimiter=sep))]
    dups = sorted({c for c in names if names.count(c) > 1})
    if dups:
        _error(table, path, f"the header line names {dups} more than once", "restore the file")
    return names


def _encoding_problem(path: Path, table: str, encoding: str) -> NoReturn:
    """Raise the error for undecodable bytes, naming the first bad line (error path)."""
    line_no, bad = 0, b""
    with open(path, "rb") as fh:
        for i, line in enumerate(fh, 1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as exc:
                line_no, bad = i, line[exc.start : exc.end]
                break
    _error(
        table,
        path,
        f"line {line_no} has the byte(s) {bad!r}, which are not valid {encoding} text",
        f"the official file is {encoding}; restore it or re-save it as {encoding}",
    )


def _parser_problem(
    path: Path, table: str, exc: pd.errors.ParserError, n_columns: int, sep: str
) -> NoReturn:
    text = str(exc)
    m = re.search(r"Expected \d+ fields in line (\d+), saw (\d+)", text)
    if m:
        line, saw = int(m.group(1)), int(m.group(2))
        if sep == "::":
            saw = (saw + 1) // 2  # a '::' line of n fields has 2n - 1 ':'-separated parts
        _error(
            table,
            path,
            f"line {line} has {saw} {_SEP_NAMES.get(sep, repr(sep))}-separated fields, "
            f"expected {n_columns}",
            "fix or remove that line (in CSV a field holding a comma must be quoted)",
        )
    m = re.search(r"line (\d+)", text)
    where = f"line {m.group(1)}: " if m else ""
    _error(
        table,
        path,
        f"cannot parse the file: {where}{text.split('. ', 1)[-1]}",
        "check the quoting near that line (an unclosed '\"' swallows the rest of the file)",
    )


def read_delimited(
    path: str | os.PathLike[str],
    fields: Mapping[str, FieldKind],
    *,
    table: str,
    names: list[str] | None = None,
    sep: str = ",",
    encoding: str = "utf-8",
    chunksize: int = 1_000_000,
    optional: tuple[str, ...] = (),
    stats: ReadStats | None = None,
) -> Iterator[dict[str, np.ndarray | pd.Series]]:
    """Yield chunks of a delimited file as {field: converted column} (see `coerce_field`).

    With `names` the file has no header and `names` are its columns in order; otherwise the
    header line names them and must hold every field of `fields`. `sep` '::' is read with the
    C parser as ':' with an empty part between fields (only for files whose fields never hold
    ':', e.g. ratings.dat). Raises `DataContractError` at the first chunk with a problem.
    """
    path = Path(path)
    if chunksize < 1:
        raise ValueError(f"chunksize must be >= 1, got {chunksize}")
    stats = stats if stats is not None else ReadStats()
    sub = 2 if sep == "::" else 1
    if names is None:
        header = read_header(path, table=table, encoding=encoding, sep=sep)
        absent = [f for f in fields if f not in header]
        if absent:
            _error(
                table,
                path,
                f"the header line lacks column(s) {absent}; it has {header}",
                "pass the official file of the data set (its header names these columns)",
            )
        columns, skip, first_line = header, 1, 2
    else:
        columns, skip, first_line = list(names), 0, 1
    bad_optional = [f for f in optional if fields.get(f) not in ("number", "nonneg", "str")]
    if bad_optional:
        raise ValueError(
            f"optional fields must be of kind number, nonneg or str (missing values are NaN), "
            f"got {bad_optional}"
        )
    spread = _spread(columns, sub)
    raw_names = [f"{c}\x00{i}" if i % sub else c for i, c in enumerate(spread)]
    spacers = [c for c in raw_names if "\x00" in c]
    # every column is parsed (pandas drops surplus fields silently when usecols is given, so
    # a line with too many fields would go unnoticed); unused ones are dropped per chunk
    keep = [c for c in raw_names if c in fields] + spacers
    read_sep = ":" if sep == "::" else sep
    ids = [c for c in keep if fields.get(c) == "id"]

    def open_chunks(ids_as_text: bool) -> Any:  # pandas' TextFileReader: holds the file open
        text = {c for c in keep if fields.get(c, "str") == "str" or (ids_as_text and c in ids)}
        with _parse_errors(path, table, encoding, first_line, len(columns), sep):
            return pd.read_csv(
                path,
                sep=read_sep,
                header=None,
                names=raw_names,
                index_col=False,  # a longer first line must not become an index column
                skiprows=skip,
                dtype={c: "str" for c in text},
                keep_default_na=False,
                na_values=[""],
                skip_blank_lines=False,
                encoding=encoding,
                chunksize=chunksize,
                quoting=csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE,
                engine="c",
            )

    def next_chunk(chunks: Any) -> pd.DataFrame | None:
        # parse one chunk at a time under the error translation (not across the yield)
        with _parse_errors(path, table, encoding, first_line, len(columns), sep):
            return next(chunks, None)

    # ids must be plain integer text (schema.integer_text_ids), but the parser reads ' 5' and
    # '+6' as integers: ids are parsed as text when the file holds such bytes at all, and as
    # numbers (fast) otherwise
    ids_as_text = bool(ids) and file_may_pad_integers(path, sep)
    chunks = open_chunks(ids_as_text)
    # closed on every exit: a refused chunk, or a caller that stops early, must not leave the
    # file open until the garbage collector finds it
    try:
        row0, n_chunks = 0, 0
        while True:
            chunk = next_chunk(chunks)
            if chunk is None:
                return
            if not ids_as_text and any(_respell(chunk[c]) for c in ids):
                # floats or booleans in an id column ('1e2', '73.0', an empty field): parse the
                # file again with ids as text up to this chunk, so that the problems show how
                # each value was written (error path only: the chunk is refused)
                ids_as_text = True
                chunks.close()
                chunks = open_chunks(True)
                for _ in range(n_chunks + 1):
                    chunk = next_chunk(chunks)
                assert chunk is not None  # the same file, parsed into the same chunks
            yield _convert_chunk(
                chunk[keep], fields, table, path, first_line + row0, optional, stats
            )
            row0 += len(chunk)
            n_chunks += 1
    finally:
        chunks.close()


def _respell(s: pd.Series) -> bool:
    """Return whether the parser made an id column floats or booleans (not plain integers)."""
    return pd.api.types.is_float_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype)


@contextlib.contextmanager
def _parse_errors(
    path: Path, table: str, encoding: str, first_line: int, n_columns: int, sep: str
) -> Iterator[None]:
    """Translate pandas' read errors into `DataContractError` naming the file and line."""
    try:
        with warnings.catch_warnings():
            # with index_col=False pandas only warns (and drops fields) when the first line
            # has more fields than the names
            warnings.simplefilter("error", pd.errors.ParserWarning)
            yield
    except pd.errors.ParserWarning:
        _error(
            table,
            path,
            f"line {first_line} has more than {n_columns} "
            f"{_SEP_NAMES.get(sep, repr(sep))}-separated fields",
            "fix or remove that line (in CSV a field holding a comma must be quoted)",
        )
    except UnicodeDecodeError:
        _encoding_problem(path, table, encoding)
    except pd.errors.ParserError as exc:
        _parser_problem(path, table, exc, n_columns, sep)


def read_delimited_all(
    path: str | os.PathLike[str], fields: Mapping[str, FieldKind], **kwargs: Any
) -> dict[str, np.ndarray | pd.Series]:
    """Return every chunk of `read_delimited(path, fields, **kwargs)` concatenated per field.

    Only the converted columns are kept, so memory is the output plus one raw chunk.
    """
    chunks = list(read_delimited(path, fields, **kwargs))
    out: dict[str, np.ndarray | pd.Series] = {}
    for name, kind in fields.items():
        parts = [c[name] for c in chunks]
        if kind == "str":
            out[name] = pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype="str")
        else:
            dtype = {"number": np.float64, "nonneg": np.float64, "flag": np.int8}.get(
                kind, np.int64
            )
            out[name] = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return out


def _spread(columns: list[str], sub: int) -> list[str]:
    """Return the column names with an empty part between fields when `sub` is 2 ('::')."""
    if sub == 1:
        return columns
    out: list[str] = []
    for c in columns:
        out += [c, c]
    return out[:-1]


def _convert_chunk(
    chunk: pd.DataFrame,
    fields: Mapping[str, FieldKind],
    table: str,
    path: Path,
    first_line: int,
    optional: tuple[str, ...],
    stats: ReadStats,
) -> dict[str, np.ndarray | pd.Series]:
    lines = first_line + np.arange(len(chunk), dtype=np.int64)
    blank = chunk.isna().all(axis=1).to_numpy()
    stats.lines += len(chunk)
    if blank.any():
        stats.blank_lines += int(blank.sum())
        chunk, lines = chunk.loc[~blank], lines[~blank]
    problems: list[Problem] = []
    spacers = [c for c in chunk.columns if "\x00" in str(c)]
    if spacers:
        # "1:2::3::4" puts a value into a part that must be empty between two '::'
        bad = chunk[spacers].notna().any(axis=1).to_numpy()
        if bad.any():
            first = np.flatnonzero(bad)[:_MAX_EXAMPLES]
            where = ", ".join(str(int(lines[i])) for i in first)
            problems.append(
                Problem(
                    table,
                    None,
                    f"lines not separated by '::' at line {where} ({int(bad.sum())} of "
                    f"{len(bad)} rows read)",
                    n_rows=int(bad.sum()),
                    file=str(path),
                    fix="every field must be separated by exactly '::'; fix those lines",
                )
            )
            raise DataContractError(problems)  # the other columns are misaligned on them
    out: dict[str, np.ndarray | pd.Series] = {}
    for name, kind in fields.items():
        values, found = coerce_field(
            chunk[name],
            kind,
            column=name,
            table=table,
            file=path,
            lines=lines,
            required=name not in optional,
        )
        problems += found
        out[name] = values
    if problems:
        raise DataContractError(problems)
    return out


def read_fields(
    path: str | os.PathLike[str],
    names: list[str],
    *,
    table: str,
    sep: str,
    encodings: tuple[str, ...] = ("utf-8", "latin-1"),
    stats: ReadStats | None = None,
) -> tuple[pd.DataFrame, np.ndarray, str]:
    """Return (str columns `names`, their 1-based line numbers, the encoding used).

    For small headerless files whose text fields may hold quotes or the separator's characters
    (u.item, movies.dat, users.dat): each line is split on the exact string `sep`; a line with
    another number of fields raises `DataContractError` naming it. The first encoding of
    `encodings` that decodes the whole file is used (latin-1 decodes any byte).
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    data = b""
    try:
        data = path.read_bytes()
    except OSError as exc:
        _error(table, path, f"cannot open the file: {exc.strerror}", "check the path")
    text, used = None, encodings[-1]
    for enc in encodings:
        try:
            text, used = data.decode(enc), enc
            break
        except UnicodeDecodeError:
            continue
    if text is None:
        _encoding_problem(path, table, encodings[-1])
    raw = pd.Series(str(text).splitlines(), dtype="str")
    line_no = np.arange(1, len(raw) + 1, dtype=np.int64)
    blank = (raw.str.strip() == "").to_numpy(dtype=bool)
    stats.lines += len(raw)
    stats.blank_lines += int(blank.sum())
    raw, line_no = raw[~blank].reset_index(drop=True), line_no[~blank]
    parts = raw.str.split(sep, regex=False)
    n_fields = parts.str.len().to_numpy(dtype=np.int64)
    bad = np.flatnonzero(n_fields != len(names))
    if len(bad):
        first = bad[:_MAX_EXAMPLES]
        where = ", ".join(f"{int(line_no[i])} ({int(n_fields[i])} fields)" for i in first)
        raise DataContractError(
            [
                Problem(
                    table,
                    None,
                    f"lines with a wrong number of {sep!r}-separated fields (expected "
                    f"{len(names)}: {', '.join(names)}) at line {where} ({len(bad)} lines)",
                    n_rows=len(bad),
                    examples=[
                        {"row": int(i), "line": int(line_no[i]), "text": str(raw.iloc[i])[:60]}
                        for i in first
                    ],
                    file=str(path),
                    fix="restore the official file or fix those lines",
                )
            ]
        )
    if len(raw) == 0:
        return pd.DataFrame({n: pd.Series([], dtype="str") for n in names}), line_no, used
    frame = pd.DataFrame(parts.tolist(), columns=names).astype("str")
    return frame, line_no, used
