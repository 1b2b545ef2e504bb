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
list of strings. Ids are integers or strings, decided per id space (`features.schema`):
integer ids are plain integer text (digits, optionally a leading '-'; see
`features.schema.integer_text_ids`), string ids are kept exactly as written. Times are UTC
seconds or ISO-8601 strings. Extra columns of users and items are typed as features
(`features.schema.EXTRA_COLUMN_RULES`, or declared with `columns=`). Every read error (bad
encoding, ragged lines, another separator, an unreadable parquet file) becomes a
`DataContractError` naming the file and line.

A directory written by `write_dataset` from a dataset with string ids or typed extra columns
also holds `id_maps.parquet` (its ids are then codes of that map) and `column_types.json` (the
extra columns' types, so that reading it back types them the same way).
"""

from __future__ import annotations

import csv
import difflib
import errno
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vidrec.features.atomic import ArtifactWriteError, atomic_path, atomic_write_json
from vidrec.features.ids import ID_MAPS_FILE, ID_SPACES, IdMaps
from vidrec.features.schema import (
    TABLE_SPECS,
    DataContractError,
    Problem,
    ValidationReport,
    check_dataset,
    declared_columns,
    file_may_pad_integers,
    text_id_spaces,
    validate_dataset,
)
from vidrec.features.tables import TABLES, Dataset

__all__ = [
    "FORMATS",
    "ValidationReport",
    "format_report",
    "read_dataset",
    "read_table",
    "unterminated_note",
    "validate_directory",
    "write_dataset",
]

FORMATS: tuple[str, ...] = ("csv", "parquet")
#: the extra columns' types of a directory written by `write_dataset` (read back as declarations)
COLUMN_TYPES_FILE = "column_types.json"
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


def read_table(
    path: str | os.PathLike[str], table: str, *, text: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Return the raw (not yet validated) table stored in a .csv or .parquet file.

    `text` names CSV columns read as text whatever they hold (string ids, columns declared
    categorical such as zip codes: '02139' stays '02139'). Raises `DataContractError` naming
    the file (and line, for CSV) when it cannot be read.
    """
    path = Path(path)
    if table not in TABLE_SPECS:
        raise ValueError(f"unknown table {table!r}; the contract has {', '.join(TABLES)}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, table, text)
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


def _read_csv(path: Path, table: str, text: tuple[str, ...] = ()) -> pd.DataFrame:
    header = _csv_header(path, table)
    strings = _string_columns(table) | {c for c in text if c not in _id_columns(table)}
    ids = [c for c in header if c in _id_columns(table)]
    if any(c in text for c in ids):  # string ids: every id column as text
        return _parse_csv(path, table, header, strings, ids)
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


def unterminated_note(table: str, path: Path, last: str = "last line") -> str | None:
    """Return the note on a delimited file whose last byte is not a line break, None when it
    ends with one or is empty.

    Such a file may have been cut short (an interrupted copy or download) inside its `last`
    line or row, whose fields then still parse (a timestamp missing its last digits): it is
    read, and the note asks the user to check it.
    """
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return None
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) in (b"\n", b"\r"):
            return None
    return (
        f"{table}: {path.name} does not end with a line break; if the file was cut short "
        f"(an interrupted copy or download), its {last} is incomplete: check it"
    )


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
        elif entry.is_file() and entry.name in (ID_MAPS_FILE, COLUMN_TYPES_FILE):
            continue  # written with the tables (write_dataset); read by read_dataset
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


def read_dataset(
    path: str | os.PathLike[str], *, columns: dict[str, str] | None = None
) -> tuple[Dataset, ValidationReport]:
    """Return the validated `Dataset` of a data directory and the `ValidationReport`.

    Reads every table file, validates all tables and their references, and raises one
    `DataContractError` listing every problem found (unreadable files included). `columns`
    declares the types of extra columns of users and items (`data.columns` of a run config:
    {"zip": "categorical", "items.budget": "ignore"}), over those of the directory's
    column_types.json.
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
    id_maps, declared = _written_with(root, problems)
    declared.update(declared_columns(columns))
    tables: dict[str, pd.DataFrame | None] = {}
    unreadable: list[str] = []
    for table, file in files.items():
        try:
            tables[table] = df = read_table(file, table, text=_text_columns(table, declared))
        except DataContractError as exc:
            problems.extend(exc.problems)
            unreadable.append(table)
            continue
        if file.suffix.lower() == ".csv" and len(df):
            note = unterminated_note(table, file, f"last row (row {len(df) - 1})")
            if note is not None:
                report.notes.append(note)
    _reread_text_ids(tables, files, id_maps, declared)
    # tables present twice (csv and parquet) are reported already: not "missing"
    unreadable += [p.table for p in problems if p.table in TABLES]
    result = check_dataset(
        tables,
        files={t: str(p) for t, p in files.items()},
        report=report,
        unreadable=tuple(unreadable),
        columns=declared,
        id_maps=id_maps,
    )
    problems.extend(result.problems)
    if problems:
        raise DataContractError(problems)
    checked = result.tables
    ds = Dataset(
        # no problems: every required table was present and coerced
        users=cast(pd.DataFrame, checked["users"]),
        items=cast(pd.DataFrame, checked["items"]),
        watches=cast(pd.DataFrame, checked["watches"]),
        searches=checked["searches"],
        impressions=checked["impressions"],
        name=root.resolve().name,
        meta={"source": str(root), "files": dict(report.files)},
        ids=result.ids,
        columns=result.columns,
    )
    return ds, report


def _written_with(root: Path, problems: list[Problem]) -> tuple[IdMaps | None, dict[str, str]]:
    """Return (the id maps, the extra columns' types) that `write_dataset` stored beside the
    tables of `root` (None and {} when it stored none); a damaged file is a problem."""
    id_maps: IdMaps | None = None
    declared: dict[str, str] = {}
    maps_file, types_file = root / ID_MAPS_FILE, root / COLUMN_TYPES_FILE
    if maps_file.is_file():
        try:
            id_maps = IdMaps.load(maps_file)
        except (OSError, pa.ArrowException, ValueError) as exc:
            problems.append(
                Problem(
                    "dataset",
                    None,
                    f"cannot read the id maps: {exc}",
                    file=str(maps_file),
                    fix="it was written with the tables, whose ids are its codes: restore the "
                    "directory as it was written",
                )
            )
    if types_file.is_file():
        try:
            raw = json.loads(types_file.read_text("utf-8"))
            if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
                raise ValueError("expected {table: {column: type}}")
            declared = {f"{t}.{c}": str(k) for t, cols in raw.items() for c, k in cols.items()}
        except (OSError, ValueError) as exc:
            problems.append(
                Problem(
                    "dataset",
                    None,
                    f"cannot read the column types: {exc}",
                    file=str(types_file),
                    fix="restore the file written with the tables, or remove it (the extra "
                    "columns are then typed by their values)",
                )
            )
    return id_maps, declared


def _text_columns(table: str, declared: dict[str, str]) -> tuple[str, ...]:
    """Return the columns of `table` declared categorical or multi-valued (read as text)."""
    if table not in ("users", "items"):
        return ()
    out = []
    for key, kind in declared.items():
        t, _, col = key.rpartition(".")
        if kind in ("categorical", "multi") and t in ("", table):
            out.append(col)
    return tuple(out)


def _reread_text_ids(
    tables: dict[str, pd.DataFrame | None],
    files: dict[str, Path],
    id_maps: IdMaps | None,
    declared: dict[str, str],
) -> None:
    """Read the id columns of a string id space again as text where the CSV parser made
    numbers of them (users.csv with ids '007', '8' beside watches.csv with 'u1': '007' is the
    id, not 7)."""
    spaces = text_id_spaces(tables) - set(id_maps.ids if id_maps is not None else ())
    for table, file in files.items():
        df = tables.get(table)
        if df is None or file.suffix.lower() != ".csv":
            continue
        numeric = [
            c
            for space in spaces
            for t, c in ID_SPACES[space]
            if t == table and c in df.columns and not pd.api.types.is_string_dtype(df[c].dtype)
        ]
        if numeric:
            text = (*_text_columns(table, declared), *numeric)
            tables[table] = read_table(file, table, text=text)


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
    if report.id_types:
        lines.append(
            "ids: "
            + ", ".join(f"{space} ids {kind}" for space, kind in report.id_types.items())
        )
    if report.column_types:
        lines.append("columns beyond the contract (what each was taken as, and why):")
        width = max(len(f"{t}.{c}") for t, cols in report.column_types.items() for c in cols)
        for t, cols in report.column_types.items():
            for c, kind in cols.items():
                why = report.column_reasons.get(t, {}).get(c, "")
                lines.append(f"  {f'{t}.{c}':<{width}}  {kind:<11}  {why}")
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
    also: Sequence[str] = (),
) -> Path:
    """Return the directory after writing one file per table of `ds` into it.

    Each file is written atomically. With `validate` (the default) the dataset is validated
    first, so that nothing that breaks the contract is written and `read_dataset` gives back
    exactly the same tables. The id maps of string ids (`ds.ids`) go to id_maps.parquet and the
    extra columns' types (`ds.columns`) to column_types.json, so that reading the directory
    back gives the same ids and features.

    The directory must be new, empty, or one an earlier `write_dataset` wrote: its files are
    listed in `.vidrec-data`. Files listed there that this dataset does not write (the other
    format, a table `ds` does not have) are removed, so the directory holds exactly this
    dataset; a file vidrec did not write is never removed or overwritten (ArtifactWriteError,
    nothing written). `also` names further files the caller writes there (e.g. world.json),
    recorded as vidrec's too.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    if validate:
        ds = validate_dataset(ds)
    root = Path(path)
    ours = _claim_data_dir(root)
    writes = [f"{t}.{fmt}" for t in TABLES if ds.table(t) is not None]
    writes += [ID_MAPS_FILE] if ds.ids else []
    writes += [COLUMN_TYPES_FILE] if _types_file_needed(ds) else []
    writes += list(also)
    # the listing first: a write interrupted after it leaves only files the listing names
    listing = {"written_by": "vidrec", "files": sorted(set(ours) | set(writes))}
    atomic_write_json(root / DATA_MARKER, listing)
    for table in TABLES:
        df = ds.table(table)
        if df is not None:
            target = root / f"{table}.{fmt}"
            if fmt == "parquet":
                _write_parquet(df, target)
            else:
                _write_csv(df, target, table)
    if ds.ids:
        ds.ids.save(root)
    types = {t: dict(cols) for t, cols in ds.columns.items() if cols}
    if _types_file_needed(ds):
        atomic_write_json(root / COLUMN_TYPES_FILE, types)
    for name in sorted(set(ours) - set(writes)):  # our own files of an earlier dataset
        stale = root / name
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()
    atomic_write_json(root / DATA_MARKER, {"written_by": "vidrec", "files": sorted(writes)})
    return root


#: the files an earlier write_dataset wrote into a data directory (and may replace or remove)
DATA_MARKER = ".vidrec-data"


def _claim_data_dir(root: Path) -> list[str]:
    """Return the files vidrec wrote into `root` before (none for a new or empty directory);
    refuse a directory holding files it did not write."""
    if root.exists() and not root.is_dir():
        raise ArtifactWriteError(
            errno.ENOTDIR,
            f"{root} exists and is not a directory; choose another output directory",
        )
    if not root.is_dir():
        return []
    ours: list[str] = []
    marker = root / DATA_MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            listed = json.loads(marker.read_text("utf-8")).get("files", [])
            ours = [str(n) for n in listed if isinstance(n, str) and "/" not in n]
        except (OSError, ValueError, AttributeError):
            ours = []
    foreign = sorted(
        e.name
        for e in root.iterdir()
        if e.name != DATA_MARKER and e.name not in ours and not e.name.startswith(".vidrec")
    )
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        shown = ", ".join(foreign[:5]) + more
        raise ArtifactWriteError(
            errno.EEXIST,
            f"{root} holds files vidrec did not write ({shown}); vidrec writes a data set only "
            "into a new or empty directory, or one it wrote before, and never replaces your "
            "files: choose another output directory",
        )
    return ours


def _types_file_needed(ds: Dataset) -> bool:
    """Return whether reading the written tables back could type an extra column otherwise:
    categorical and multi-valued ones (numbers as text, a single value, all-distinct values)
    and constant continuous ones. Numeric columns read back as themselves (no file)."""
    for table, cols in ds.columns.items():
        frame = ds.table(table)
        for c, kind in cols.items():
            if kind != "continuous":
                return True
            if frame is not None and c in frame.columns and frame[c].nunique(dropna=False) <= 1:
                return True
    return False


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
