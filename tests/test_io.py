"""Tests of reading/writing data directories (features.io): CSV, parquet, read errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidrec.features.io import (
    format_report,
    read_dataset,
    read_table,
    validate_directory,
    write_dataset,
)
from vidrec.features.schema import DataContractError, validate_dataset
from vidrec.features.tables import TABLES, Dataset

T0 = 1_700_000_000

USERS_CSV = "user_id,gender,age_days\n1,f,10\n2,m,\n"
ITEMS_CSV = "item_id,upload_time,topics,title\n10,-86400,music|jazz,Old song\n11,1700000000,,New\n"
WATCHES_CSV = "user_id,item_id,timestamp,watch_time\n1,10,1700000000,12.5\n2,11,1700000100,3\n"


def _dataset() -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        users=pd.DataFrame(
            {
                "user_id": [1, 2, 3],
                "gender": ["f", None, "m"],
                "country": ["KR", "CN", "NA"],  # Namibia, not a missing value
                "age_days": [0.1 + 0.2, np.nan, 1 / 3],
            }
        ),
        items=pd.DataFrame(
            {
                "item_id": [10, 11, 12],
                "upload_time": [-2_208_988_800, -1, T0],  # 1900-01-01, 1969-12-31T23:59:59Z
                "duration": [61.25, np.nan, rng.random() * 100],
                "channel_id": ["007", "7", None],
                "topics": [["music", "jazz piano"], [], ["news"]],
                "language": ["en", "ko", "zh"],
                "title": ['He said "hi", then left', "line one\nline two", "日本語, ok"],
            }
        ),
        watches=pd.DataFrame(
            {
                "user_id": [1, 2, 3, 1],
                "item_id": [10, 11, 12, 12],
                "timestamp": [T0, T0 + 1, T0 + 2, T0 + 3],
                "watch_time": rng.random(4) * 300,
            }
        ),
        searches=pd.DataFrame(
            {"user_id": [1, 2], "timestamp": [T0 - 5, T0 - 4], "query": ["jazz, piano", "news"]}
        ),
        impressions=pd.DataFrame(
            {
                "user_id": [1, 1, 2],
                "item_id": [10, 11, 11],
                "timestamp": [T0, T0, T0 + 1],
                "clicked": [1, 0, 1],
                "watch_time": [rng.random() * 60, 0.0, 4.0],
                "position": [0, 1, 0],
                "source": ["cg", "cg", "popular"],
            }
        ),
        name="tiny",
    )


def _write(root: Path, **files: str | bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = root / name.replace("__", ".")
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    return root


def _minimal(root: Path, **files: str | bytes) -> Path:
    base: dict[str, str | bytes] = {
        "users__csv": USERS_CSV,
        "items__csv": ITEMS_CSV,
        "watches__csv": WATCHES_CSV,
    }
    base.update(files)
    return _write(root, **base)


# -- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip_is_exact(tmp_path: Path, fmt: str) -> None:
    ds = validate_dataset(_dataset())
    root = write_dataset(ds, tmp_path / "data", fmt)  # type: ignore[arg-type]
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted([".vidrec-data", *(f"{t}.{fmt}" for t in TABLES)])
    back, report = read_dataset(root)
    for table in TABLES:
        pd.testing.assert_frame_equal(back.table(table), ds.table(table), check_exact=True)
    assert back.items["topics"].tolist() == [["music", "jazz piano"], [], ["news"]]
    assert back.items["upload_time"].tolist() == [-2_208_988_800, -1, T0]
    assert back.name == "data" and report.rows["impressions"] == 3
    assert report.files == {t: f"{t}.{fmt}" for t in TABLES}


def test_round_trip_without_optional_tables_and_stale_files(tmp_path: Path) -> None:
    full = _dataset()
    write_dataset(full, tmp_path, "csv")
    small = Dataset(full.users, full.items, full.watches)
    write_dataset(small, tmp_path, "parquet")  # removes its own csv and optional tables
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "items.parquet",
        "users.parquet",
        "watches.parquet",
    ]
    back, report = read_dataset(tmp_path)
    assert back.searches is None and back.impressions is None
    assert "searches" not in report.rows
    assert "searches" in format_report(report) and "absent" in format_report(report)


def test_parquet_topics_are_lists_and_csv_topics_are_joined(tmp_path: Path) -> None:
    ds = _dataset()
    write_dataset(ds, tmp_path / "p", "parquet")
    raw = pd.read_parquet(tmp_path / "p" / "items.parquet")
    assert list(raw["topics"][0]) == ["music", "jazz piano"]
    write_dataset(ds, tmp_path / "c", "csv")
    text = (tmp_path / "c" / "items.csv").read_text(encoding="utf-8")
    assert "music|jazz piano" in text


def test_write_rejects_bar_in_csv_topics_and_unknown_format(tmp_path: Path) -> None:
    ds = _dataset()
    ds.items["topics"] = [["a|b"], [], []]
    with pytest.raises(ValueError, match=r"1 topics contain '\|'.*first rows \[0\]"):
        write_dataset(ds, tmp_path, "csv")
    write_dataset(ds, tmp_path, "parquet")  # lists hold any string
    with pytest.raises(ValueError, match="unknown format 'json'"):
        write_dataset(ds, tmp_path, "json")  # type: ignore[arg-type]


def test_write_validates_first(tmp_path: Path) -> None:
    ds = _dataset()
    ds.watches.loc[0, "watch_time"] = -1.0
    with pytest.raises(DataContractError, match="negative values"):
        write_dataset(ds, tmp_path)
    assert not tmp_path.joinpath("watches.parquet").exists()


# -- reading CSV -----------------------------------------------------------------------------


def test_read_csv_directory_with_iso_times_and_report(tmp_path: Path) -> None:
    watches = (
        "user_id,item_id,timestamp\n1,10,2023-11-14T22:13:20Z\n2,11,2023-11-15 07:13:20+09:00\n"
    )
    root = _minimal(tmp_path, watches__csv=watches, README__md="notes", extra__csv="x\n1\n")
    ds, report = read_dataset(root)
    # both are 2023-11-14T22:13:20Z = 1_700_000_000 s
    assert ds.watches["timestamp"].tolist() == [T0, T0]
    assert ds.items["upload_time"].tolist() == [-86_400, T0]
    assert ds.items["topics"].tolist() == [["music", "jazz"], []]
    assert ds.users["age_days"].dtype == np.float64
    assert "watches.timestamp: converted 2 ISO-8601 timestamps to UTC seconds" in report.conversions
    assert report.ignored_files == ["README.md", "extra.csv"]
    assert validate_directory(root).to_dict() == report.to_dict()
    json.dumps(report.to_dict())  # serialisable as is
    text = format_report(report)
    assert "users                   2 rows  (users.csv)" in text
    assert "ignored files: README.md, extra.csv" in text


def test_ignored_columns_are_reported(tmp_path: Path) -> None:
    items = "item_id,upload_time,views,shelf\n10,0,5,a\n11,0,6,a\n"
    watches = "user_id,item_id,timestamp,device\n1,10,1700000000,tv\n2,11,1700000100,tv\n"
    ds, report = read_dataset(
        _minimal(
            tmp_path,
            items__csv=items,
            users__csv="user_id,nick\n1,a\n2,b\n",
            watches__csv=watches,
        )
    )
    assert report.ignored_columns == {
        "users": ["nick"],
        "items": ["shelf"],
        "watches": ["device"],
    }
    assert ds.columns == {"users": {}, "items": {"views": "continuous"}}
    text = format_report(report)
    assert "columns beyond the contract (what each was taken as, and why):" in text
    assert "users.nick      ignored      every value is distinct (2 values): an identifier" in text
    assert "items.views     continuous   numbers (inferred)" in text
    assert "items.shelf     ignored      one value in every row (constant)" in text
    assert "watches.device  ignored      not part of the contract for watches" in text
    assert "ids: user ids integer, item ids integer" in text


def test_csv_validation_errors_name_file_and_line(tmp_path: Path) -> None:
    watches = WATCHES_CSV + "1,10,1700000200,-4\n"
    root = _minimal(tmp_path, watches__csv=watches)
    with pytest.raises(DataContractError, match="negative values") as exc:
        read_dataset(root)
    (p,) = exc.value.problems
    assert p.file == str(root / "watches.csv")
    assert p.examples[0]["row"] == 2 and p.examples[0]["line"] == 4
    assert "row 2 (line 4)" in str(exc.value)


def test_csv_string_columns_keep_leading_zeros_and_na_words(tmp_path: Path) -> None:
    items = "item_id,upload_time,channel_id,language\n10,0,007,NA\n11,0,,en\n"
    ds, _ = read_dataset(_minimal(tmp_path, items__csv=items))
    assert ds.items["channel_id"][0] == "007" and pd.isna(ds.items["channel_id"][1])
    assert ds.items["language"].tolist() == ["NA", "en"]


def test_bad_encoding_names_the_line(tmp_path: Path) -> None:
    users = "user_id,country\n1,KR\n2,Espa\xf1a\n".encode("latin-1")
    with pytest.raises(DataContractError, match=r"not UTF-8 text: line 3 has the byte\(s\)"):
        read_dataset(_minimal(tmp_path, users__csv=users))
    header = "user_id,pa\xefs\n1,KR\n".encode("latin-1")
    with pytest.raises(DataContractError, match="line 1 has the byte"):
        read_table(_write(tmp_path / "h", users__csv=header) / "users.csv", "users")


def test_ragged_line_names_the_line(tmp_path: Path) -> None:
    items = "item_id,upload_time,title\n10,0,fine\n11,0,Hello, world\n"
    with pytest.raises(DataContractError, match="line 3 has 4 fields but the header has 3") as exc:
        read_dataset(_minimal(tmp_path, items__csv=items))
    assert "quote fields that contain commas" in exc.value.problems[0].fix


@pytest.mark.parametrize(("sep", "word"), [(";", "';'"), ("\t", "a tab")])
def test_other_separator(tmp_path: Path, sep: str, word: str) -> None:
    watches = WATCHES_CSV.replace(",", sep)
    with pytest.raises(DataContractError, match=f"separated by {word}, not by commas"):
        read_dataset(_minimal(tmp_path, watches__csv=watches))


def test_empty_file_and_duplicate_header(tmp_path: Path) -> None:
    with pytest.raises(DataContractError, match="the file is empty"):
        read_dataset(_minimal(tmp_path / "a", users__csv=""))
    dup = "user_id,item_id,timestamp,user_id\n1,10,1700000000,1\n"
    with pytest.raises(DataContractError, match=r"names the column\(s\) \['user_id'\] more"):
        read_dataset(_minimal(tmp_path / "b", watches__csv=dup))


def test_header_only_table_is_empty(tmp_path: Path) -> None:
    with pytest.raises(DataContractError, match="table has no rows"):
        read_dataset(_minimal(tmp_path, watches__csv="user_id,item_id,timestamp\n"))
    ds, _ = read_dataset(_minimal(tmp_path / "ok", searches__csv="user_id,timestamp,query\n"))
    assert ds.searches is not None and len(ds.searches) == 0


def test_read_errors_of_several_files_are_collected(tmp_path: Path) -> None:
    root = _minimal(
        tmp_path,
        users__csv=b"user_id\n\xff\n",
        items__csv="item_id;upload_time\n1;0\n",
        impressions__csv="user_id,item_id,timestamp\n1,10,1700000000\n",
    )
    with pytest.raises(DataContractError) as exc:
        read_dataset(root)
    got = [(p.table, p.column, p.message.split(":")[0]) for p in exc.value.problems]
    assert got == [
        ("users", None, "the file is not UTF-8 text"),
        ("items", None, "line 1 is a single column 'item_id;upload_time' that contains ';'"),
        ("impressions", "clicked", "required column is missing"),
        ("impressions", "watch_time", "required column is missing"),
    ]


# -- directory layout ------------------------------------------------------------------------


def test_missing_required_table_names_expected_files(tmp_path: Path) -> None:
    root = _write(tmp_path, users__csv=USERS_CSV, items__csv=ITEMS_CSV, watch__csv=WATCHES_CSV)
    with pytest.raises(
        DataContractError, match="required table is missing: no watches.csv or watches.parquet"
    ) as exc:
        read_dataset(root)
    assert "found ['watch.csv']: rename it" in exc.value.problems[0].fix


def test_csv_and_parquet_for_one_table(tmp_path: Path) -> None:
    root = _minimal(tmp_path)
    pd.DataFrame({"user_id": [1, 2]}).to_parquet(root / "users.parquet")
    with pytest.raises(DataContractError, match="both users.csv and users.parquet exist") as exc:
        read_dataset(root)
    assert len(exc.value.problems) == 1  # not also reported as missing


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DataContractError, match="the data directory does not exist"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "users.csv").write_text(USERS_CSV)
    with pytest.raises(DataContractError, match="not a directory"):
        validate_directory(tmp_path / "users.csv")


def test_corrupt_parquet(tmp_path: Path) -> None:
    root = _minimal(tmp_path)
    (root / "items.csv").unlink()
    (root / "items.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataContractError, match="cannot read the parquet file") as exc:
        read_dataset(root)
    assert exc.value.problems[0].file == str(root / "items.parquet")


def test_parquet_with_datetime_and_string_topics(tmp_path: Path) -> None:
    root = _minimal(tmp_path)
    (root / "items.csv").unlink()
    pd.DataFrame(
        {
            "item_id": [10, 11],
            "upload_time": pd.to_datetime(
                ["1969-12-31T23:00:00Z", "1970-01-01T01:00:00+01:00"], utc=True
            ),
            "topics": ["a|b", None],
        }
    ).to_parquet(root / "items.parquet")
    ds, report = read_dataset(root)
    assert ds.items["upload_time"].tolist() == [-3600, 0]
    assert ds.items["topics"].tolist() == [["a", "b"], []]
    assert "items.upload_time: converted 2 datetime values to UTC seconds" in report.conversions


def test_read_table_rejects_unknown_table_and_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown table 'likes'"):
        read_table(tmp_path / "likes.csv", "likes")
    with pytest.raises(ValueError, match=r"expected a .csv or .parquet file"):
        read_table(tmp_path / "users.json", "users")


def test_write_never_touches_files_it_did_not_write(tmp_path: Path) -> None:
    """A data set is written only into a new or empty directory or one vidrec wrote: a user's
    own tables (e.g. users.csv beside which `vidrec simulate-data` was pointed) are neither
    removed nor overwritten, and nothing is written."""
    from vidrec.features.atomic import ArtifactWriteError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "users.csv").write_text("user_id\n1\n")
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ArtifactWriteError, match=r"did not write \(notes.txt, users.csv\)"):
        write_dataset(_dataset(), mine, "parquet")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "users.csv"]
    assert (mine / "users.csv").read_text() == "user_id\n1\n"
    # a directory vidrec wrote: rewritten; a file the user adds later blocks the next write
    ours = tmp_path / "ours"
    write_dataset(_dataset(), ours, "csv")
    write_dataset(_dataset(), ours, "parquet")
    (ours / "mine.txt").write_text("x")
    with pytest.raises(ArtifactWriteError, match="mine.txt"):
        write_dataset(_dataset(), ours, "csv")
    assert (ours / "users.parquet").exists() and (ours / "mine.txt").read_text() == "x"
