"""Read and write a data directory: one CSV or parquet file per contract table.

Where it sits in the data path: a user's own logs (and the synthetic world's output) live in a
directory such as

    data/
      users.csv        or users.parquet         required
      items.csv        or items.parquet         required
      watches.csv      or watches.parquet       required
      searches.csv     or searches.parquet      optional
      impressions.csv  or impressions.parquet   optional

`read_dataset` reads it, validates it against the contract (`features.schema`) and returns the
canonical `Dataset` with a `ValidationReport`; `write_dataset` writes a `Dataset` back so that
reading it again gives exactly the same tables.

File conventions: CSV is UTF-8, comma-separated, with a header line; an empty field is a
missing value; `topics` is one '|'-separated string (`music|jazz`). In parquet `topics` is a
list of strings. Integer ids are plain integer text (digits, optionally a leading '-'; see
`features.schema.integer_text_ids`). Times are UTC seconds or ISO-8601 strings. Every read error (bad encoding,
ragged lines, another separator, an unreadable parquet file) becomes a `DataContractError`
naming the file and line.
"""

from __future__ import annotations

import csv
import difflib
import os
import re
from pathlib import Path
from typing import Literal, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.atomic import atomic_path
from features.schema import (
    TABLE_SPECS,
    DataContractError,
    Problem,
    ValidationReport,
    check_tables,
    file_may_pad_integers,
    validate_dataset,
)
from features.tables import TABLES, Dataset

__all__ = [
    "FORMATS",
    "ValidationReport",
    "format_report",
    "read_dataset",
    "read_table",
    "validate_directory",
    "write_dataset",
]

FORMATS: tuple[str, ...] = ("csv", "parquet")
# In numeric CSV columns these mean "missing"; in string columns only the empty field does,
# so that a title such as "NA" survives.
_NA_TOKENS = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "<NA>"]
_OTHER_SEPARATORS = {";": "';'", "\t": "a tab", "|": "'|'"}


def _string_columns(table: str) -> set[str]:
    return {c.name for c in TABLE_SPECS[table].columns if c.kind in ("str", "topics")}


def _id_columns(table: str) -> set[str]:
    return {c.name for c in TABLE_SPECS[table].columns if c.kind == "id"}


def _problem(table: str, file: Path | str, message: str, fix: str) -> DataContractError:
    return DataContractError([Problem(table, None, message, file=str(file), fix=fix)])


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_table(path: str | os.PathLike[str], table: str) -> pd.DataFrame:
    """Return the raw (not yet validated) table stored in a .csv or .parquet file.

    Raises `DataContractError` naming the file (and line, for CSV) when it cannot be read.
    """
    path = Path(path)
    if table not in TABLE_SPECS:
        raise ValueError(f"unknown table {table!r}; the contract has {', '.join(TABLES)}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, table)
    if suffix == ".parquet":
        return _read_parquet(path, table)
    raise ValueError(f"cannot read {path}: expected a .csv or .parquet file")


def _read_parquet(path: Path, table: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise _problem(
            table,
            path,
            f"cannot read the parquet file: {exc}",
            f"write {path.name} as a parquet file (pandas.DataFrame.to_parquet), or save the "
            f"table as {path.stem}.csv instead",
        ) from None


def _read_csv(path: Path, table: str) -> pd.DataFrame:
    header = _csv_header(path, table)
    strings = _string_columns(table)
    ids = [c for c in header if c in _id_columns(table)]
    # ids must be plain integer text (schema.integer_text_ids): the parser would read ' 5' and
    # '+6' as integers, so ids are read as text when the file holds such bytes at all
    df = _parse_csv(path, table, header, strings, ids if file_may_pad_integers(path) else [])
    # ... and as numbers otherwise (fast); a column that came out as floats or booleans holds a
    # '1e2', '73.0', 'True' or an empty field: read it again as text so that the check sees
    # how each value was written (error path only: such ids are refused)
    respell = [
        c
        for c in ids
        if c in df.columns
        and (pd.api.types.is_float_dtype(df[c].dtype) or pd.api.types.is_bool_dtype(df[c].dtype))
    ]
    if respell:
        df = _parse_csv(path, table, header, strings, ids)
    return df


def _parse_csv(
    path: Path, table: str, header: list[str], strings: set[str], as_text: list[str]
) -> pd.DataFrame:
    # only the contract's string columns (and `as_text`) are read as strings: the rest are
    # inferred, so a bad value in a numeric column shows up as a string that validation can
    # point at
    dtype = {c: "str" for c in header if c in strings or c in as_text}
    na_values = {c: ([""] if c in strings else _NA_TOKENS) for c in header}
    try:
        return pd.read_csv(
            path,
            dtype=dtype,
            keep_default_na=False,
            na_values=na_values,
            encoding="utf-8",
            low_memory=False,
        )
    except UnicodeDecodeError:
        raise _encoding_error(path, table) from None
    except pd.errors.ParserError as exc:
        raise _parser_error(path, table, exc) from None
    except (ValueError, OSError) as exc:
        raise _problem(
            table, path, f"cannot read the CSV file: {exc}", "check the file's format"
        ) from None


def _csv_header(path: Path, table: str) -> list[str]:
    """Return the header's column names; raise on an empty file, another separator, dups."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first = fh.readline()
    except UnicodeDecodeError:
        raise _encoding_error(path, table) from None
    except OSError as exc:
        raise _problem(
            table, path, f"cannot open the file: {exc.strerror}", "check the path"
        ) from None
    expected = list(TABLE_SPECS[table].required_columns)
    if not first.strip():
        raise _problem(
            table,
            path,
            "the file is empty (no header line)",
            f"the first line must name the columns, e.g. {','.join(expected)}",
        )
    names = next(csv.reader([first]))
    if len(names) == 1:
        for sep, word in _OTHER_SEPARATORS.items():
            if sep in names[0]:
                raise _problem(
                    table,
                    path,
                    f"line 1 is a single column {names[0].strip()[:80]!r} that contains {word}: "
                    f"the file is separated by {word}, not by commas",
                    "save the file as comma-separated CSV (e.g. pandas.DataFrame.to_csv(path, "
                    "index=False))",
                )
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    dups = [n for n, k in seen.items() if k > 1]
    if dups:
        raise _problem(
            table,
            path,
            f"line 1 names the column(s) {dups} more than once",
            "give every column a distinct name",
        )
    return names


def _ends_with_line_break(path: Path) -> bool:
    """Return whether the file's last byte is a line break (False for an empty file)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) in (b"\n", b"\r")


def _encoding_error(path: Path, table: str) -> DataContractError:
    """Return the error for a file that is not UTF-8, naming the first bad line."""
    line_no, bad = 0, b""
    # error path only: scan line by line until the first line that is not UTF-8
    with open(path, "rb") as fh:
        for i, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                line_no, bad = i, line[exc.start : exc.end]
                break
    where = f"line {line_no} has the byte(s) {bad!r}, which are" if line_no else "it is"
    return _problem(
        table,
        path,
        f"the file is not UTF-8 text: {where} not valid UTF-8",
        "re-save the file with UTF-8 encoding (e.g. in Python: "
        "open(path, encoding='latin-1').read() then write it with encoding='utf-8')",
    )


def _parser_error(path: Path, table: str, exc: pd.errors.ParserError) -> DataContractError:
    text = str(exc)
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if m:
        expected, line, saw = m.groups()
        return _problem(
            table,
            path,
            f"line {line} has {saw} fields but the header has {expected}",
            'quote fields that contain commas (e.g. a title: "Hello, world"), and give every '
            "line the same number of fields as the header",
        )
    m = re.search(r"line (\d+)", text)
    where = f"line {m.group(1)}: " if m else ""
    return _problem(
        table,
        path,
        f"cannot parse the CSV file: {where}{text.split('. ', 1)[-1]}",
        "check the quoting near that line (an unclosed '\"' swallows the rest of the file)",
    )


def _locate(root: Path) -> tuple[dict[str, Path], list[str], list[Problem]]:
    """Return ({table: file}, ignored file names, problems) for a data directory."""
    found: dict[str, dict[str, Path]] = {}
    ignored: list[str] = []
    expected = {f"{t}.{fmt}" for t in TABLES for fmt in FORMATS}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue  # hidden files (editor swap files, unfinished atomic writes)
        if entry.is_file() and entry.name in expected:
            stem, fmt = entry.name.rsplit(".", 1)
            found.setdefault(stem, {})[fmt] = entry
        else:
            ignored.append(entry.name + ("/" if entry.is_dir() else ""))
    files: dict[str, Path] = {}
    problems: list[Problem] = []
    for table in TABLES:
        forms = found.get(table, {})
        if len(forms) > 1:
            problems.append(
                Problem(
                    table,
                    None,
                    f"both {table}.csv and {table}.parquet exist",
                    file=str(root),
                    fix=f"keep one of them: remove or rename {table}.csv or {table}.parquet",
                )
            )
        elif forms:
            files[table] = next(iter(forms.values()))
        elif TABLE_SPECS[table].required:
            close = difflib.get_close_matches(f"{table}.csv", ignored, n=2, cutoff=0.6)
            close += difflib.get_close_matches(f"{table}.parquet", ignored, n=2, cutoff=0.6)
            hint = f" (found {sorted(set(close))}: rename it)" if close else ""
            problems.append(
                Problem(
                    table,
                    None,
                    f"required table is missing: no {table}.csv or {table}.parquet",
                    file=str(root),
                    fix=f"add {table}.csv or {table}.parquet to {root}{hint}; columns "
                    f"{list(TABLE_SPECS[table].required_columns)}",
                )
            )
    return files, ignored, problems


def read_dataset(path: str | os.PathLike[str]) -> tuple[Dataset, ValidationReport]:
    """Return the validated `Dataset` of a data directory and the `ValidationReport`.

    Reads every table file, validates all tables and their references, and raises one
    `DataContractError` listing every problem found (unreadable files included).
    """
    root = Path(path)
    if not root.exists():
        raise _problem(
            "dataset",
            root,
            "the data directory does not exist",
            "pass a directory holding users, items and watches files (.csv or .parquet)",
        )
    if not root.is_dir():
        raise _problem(
            "dataset",
            root,
            "not a directory",
            "pass the directory that holds the table files, not a single file",
        )
    files, ignored, problems = _locate(root)
    report = ValidationReport(
        source=str(root), files={t: p.name for t, p in files.items()}, ignored_files=ignored
    )
    tables: dict[str, pd.DataFrame | None] = {}
    unreadable: list[str] = []
    for table, file in files.items():
        try:
            tables[table] = df = read_table(file, table)
        except DataContractError as exc:
            problems.extend(exc.problems)
            unreadable.append(table)
            continue
        if file.suffix.lower() == ".csv" and len(df) and not _ends_with_line_break(file):
            report.notes.append(
                f"{table}: {file.name} does not end with a line break; if the file was cut short "
                f"(an interrupted copy or download), its last row (row {len(df) - 1}) is "
                "incomplete: check it"
            )
    # tables present twice (csv and parquet) are reported already: not "missing"
    unreadable += [p.table for p in problems if p.table in TABLES]
    checked, more = check_tables(
        tables,
        files={t: str(p) for t, p in files.items()},
        report=report,
        unreadable=tuple(unreadable),
    )
    problems.extend(more)
    if problems:
        raise DataContractError(problems)
    ds = Dataset(
        # no problems: every required table was present and coerced
        users=cast(pd.DataFrame, checked["users"]),
        items=cast(pd.DataFrame, checked["items"]),
        watches=cast(pd.DataFrame, checked["watches"]),
        searches=checked["searches"],
        impressions=checked["impressions"],
        name=root.resolve().name,
        meta={"source": str(root), "files": dict(report.files)},
    )
    return ds, report


def validate_directory(path: str | os.PathLike[str]) -> ValidationReport:
    """Return the `ValidationReport` of a data directory; raise `DataContractError` if invalid."""
    return read_dataset(path)[1]


def format_report(report: ValidationReport) -> str:
    """Return a human-readable summary of a validation report (for `vidrec validate`)."""
    lines = [f"data directory {report.source}: valid" if report.source else "dataset: valid"]
    for table in TABLES:
        if table in report.rows:
            file = report.files.get(table)
            lines.append(
                f"  {table:<12} {report.rows[table]:>12,} rows" + (f"  ({file})" if file else "")
            )
        else:
            lines.append(f"  {table:<12} {'absent':>12} (optional)")
    if report.ignored_columns:
        lines.append("ignored columns:")
        lines += [f"  {t}: {', '.join(cols)}" for t, cols in report.ignored_columns.items()]
    if report.ignored_files:
        lines.append("ignored files: " + ", ".join(report.ignored_files))
    if report.conversions:
        lines.append("conversions:")
        lines += [f"  {c}" for c in report.conversions]
    if report.notes:
        lines.append("notes:")
        lines += [f"  {n}" for n in report.notes]
    if report.warnings:
        them = "them" if len(report.warnings) > 1 else "it"
        lines.append(f"warnings ({len(report.warnings)}; the data is accepted, but check {them}):")
        lines += [f"  {w}" for w in report.warnings]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_dataset(
    ds: Dataset,
    path: str | os.PathLike[str],
    fmt: Literal["parquet", "csv"] = "parquet",
    *,
    validate: bool = True,
) -> Path:
    """Return the directory after writing one file per table of `ds` into it.

    Each file is written atomically. With `validate` (the default) the dataset is validated
    first, so that nothing that breaks the contract is written and `read_dataset` gives back
    exactly the same tables. Contract files of the other format (or of a table that `ds` does
    not have) are removed from the directory, so it holds exactly this dataset.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    if validate:
        ds = validate_dataset(ds)
    root = Path(path)
    for table in TABLES:
        df = ds.table(table)
        if df is not None:
            target = root / f"{table}.{fmt}"
            if fmt == "parquet":
                _write_parquet(df, target)
            else:
                _write_csv(df, target, table)
        for other in FORMATS:
            stale = root / f"{table}.{other}"
            if (df is None or other != fmt) and stale.exists():
                stale.unlink()
    return root


def _topics_array(s: pd.Series) -> pa.Array:
    return pa.array(s, type=pa.list_(pa.string()), from_pandas=True)


def _write_parquet(df: pd.DataFrame, target: Path) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    if "topics" in df.columns:
        # an explicit type: all-empty lists would otherwise be inferred as list<null>
        i = table.schema.get_field_index("topics")
        table = table.set_column(i, "topics", _topics_array(df["topics"]))
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def _write_csv(df: pd.DataFrame, target: Path, table: str) -> None:
    out = df
    if "topics" in df.columns:
        lists = _topics_array(df["topics"])
        flat = lists.flatten()
        has_bar = pc.fill_null(pc.match_substring(flat, "|"), False).to_numpy(zero_copy_only=False)
        if has_bar.any():
            rows = pc.list_parent_indices(lists).to_numpy()[has_bar]
            raise ValueError(
                f"cannot write {table}.topics as CSV: {int(has_bar.sum())} topics contain '|', "
                f"the CSV separator of topics (first rows {np.unique(rows)[:5].tolist()}); "
                "write parquet instead or remove '|' from topic names"
            )
        joined = pc.binary_join(lists, "|").to_pandas()
        out = df.assign(topics=joined.where(joined != "", None).astype("str"))
    with atomic_path(target) as tmp:
        out.to_csv(tmp, index=False, lineterminator="\n", encoding="utf-8")
