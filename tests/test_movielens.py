"""MovieLens loader: the three official layouts on small fixtures, malformed lines, the real
ml-latest-small, and the conversion to a contract data directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidrec.features.io import read_dataset
from vidrec.features.schema import DataContractError
from vidrec.features.sources.movielens import (
    convert_movielens,
    detect_movielens_layout,
    load_movielens,
    title_years,
)

FIXTURES = Path(__file__).parent / "fixtures"
LATEST = FIXTURES / "movielens_latest"
ML100K = FIXTURES / "movielens_100k"
ML1M = FIXTURES / "movielens_1m"
REAL_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-latest-small"

# UTC seconds of Jan 1: 1995 = 9131 days * 86400 = 788,918,400; 1975 = 1826 d = 157,766,400;
# 1927 = -(43 * 365 + 11 leap days) * 86400 = -1,356,998,400; 2001 = 11323 d = 978,307,200;
# 1996 = 9496 d = 820,454,400; 1977 = 2557 d = 220,924,800
JAN1 = {1995: 788_918_400, 1975: 157_766_400, 1927: -1_356_998_400, 2001: 978_307_200}


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _replace_line(path: Path, line_no: int, text: str, encoding: str = "utf-8") -> None:
    """Replace 1-based line `line_no` of `path` (keeping its line ending style)."""
    raw = path.read_bytes().decode(encoding)
    ending = "\r\n" if "\r\n" in raw else "\n"
    lines = raw.split(ending)
    lines[line_no - 1] = text
    path.write_bytes(ending.join(lines).encode(encoding))


# --------------------------------------------------------------------------------- layouts


def test_detects_each_layout():
    assert detect_movielens_layout(LATEST) == "ml-latest"
    assert detect_movielens_layout(ML100K) == "ml-100k"
    assert detect_movielens_layout(ML1M) == "ml-1m"


def test_unknown_directory_names_the_expected_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataContractError, match=r"no MovieLens layout recognised.*notes\.txt"):
        load_movielens(tmp_path)
    with pytest.raises(DataContractError, match="does not exist"):
        load_movielens(tmp_path / "absent")


@pytest.mark.parametrize(
    "folder,name",
    [
        ("ml-latest-small", "movielens-ml-latest-small"),
        ("movielens-latest-small", "movielens-latest-small"),  # not movielens-movielens-...
        ("MovieLens", "MovieLens"),
    ],
)
def test_the_data_set_is_named_once_after_its_directory(tmp_path, folder, name):
    root = tmp_path / folder
    shutil.copytree(LATEST, root)
    ds, _ = load_movielens(root)
    assert ds.name == name


def test_title_years_take_the_last_parenthesised_year():
    titles = pd.Series(
        ["Heat (1995)", "Fawlty Towers (1975-1979)", "Big Bang Theory, The (2007-)", "Hyena Road",
         "1900 (1976) ", "City (1930) (a.k.a. X)"]
    )  # fmt: skip
    np.testing.assert_array_equal(title_years(titles), [1995, 1975, 2007, np.nan, 1976, np.nan])


def test_ml_latest_fixture_maps_every_table():
    ds, info = load_movielens(LATEST)
    assert info["layout"] == "ml-latest"
    # watches: 8 ratings in file order, the rating kept as an extra column
    assert ds.watches["user_id"].tolist() == [1, 1, 1, 2, 2, 2, 3, 3]
    assert ds.watches["item_id"].tolist() == [1, 2, 4, 1, 5, 9, 8, 3]
    assert ds.watches["rating"].tolist() == [4.0, 3.5, 2.0, 5.0, 4.5, 3.0, 4.0, 1.0]
    assert "watch_time" not in ds.watches
    items = ds.items.set_index("item_id")
    # movie 7 has no year and no rating: no time can be given, it is dropped; 9 is rated but
    # absent from movies.csv: added with its first rating time
    assert items.index.tolist() == [1, 2, 3, 4, 5, 6, 8, 9]
    up = items["upload_time"]
    assert up[1] == up[2] == JAN1[1995]
    assert up[3] == JAN1[1975]  # "(1975-1979)"
    assert up[5] == JAN1[1927]  # before 1970: negative
    assert up[6] == JAN1[2001]  # never rated: kept
    assert up[4] == 1_445_714_835  # no year: its first rating
    assert up[8] == 1_420_070_400  # "(2016)" but first rated 2015-01-01: its first rating
    assert up[9] == 1_445_716_000
    assert items.loc[1, "topics"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert items.loc[4, "topics"] == []  # "(no genres listed)"
    assert items.loc[2, "title"] == "American President, The (1995)"  # quoted comma
    assert pd.isna(items.loc[9, "title"])
    assert ds.users["user_id"].tolist() == [1, 2, 3, 4]  # user 4 only typed a tag
    # tags -> searches; the empty tag of user 2 is dropped
    assert ds.searches["query"].tolist() == ["pixar", "politics, romance"]
    assert ds.searches["timestamp"].tolist() == [964_982_800, 1_445_714_999]
    c = info["counts"]
    assert c["ratings"] == 8
    assert c["movies_in_movie_file"] == 8 and c["movies_rated"] == 7
    assert c["movies_never_rated"] == 2  # 6 and 7
    assert c["rated_movies_missing_from_movie_file"] == 1  # 9
    assert c["titles_without_year"] == 2  # 4 and 7
    assert c["upload_time_from_first_rating"] == 1  # 4
    assert c["unrated_movies_without_year_dropped"] == 1  # 7
    assert c["upload_time_moved_to_first_rating"] == 1  # 8
    assert c["users_with_tags_only"] == 1 and c["empty_tags_dropped"] == 1
    assert info["ignored_files"] == ["links.csv"]
    assert info["tables"] == {
        "users": 4,
        "items": 8,
        "watches": 8,
        "searches": 2,
        "impressions": 0,
    }
    json.dumps(info)  # the report embeds it


def test_ml_100k_fixture_reads_latin1_flags_and_demographics():
    ds, info = load_movielens(ML100K)
    assert info["layout"] == "ml-100k"
    assert info["encodings"]["u.item"] == "latin-1"
    items = ds.items.set_index("item_id")
    assert items.loc[3, "title"] == "Misérables, Les (1995)"  # latin-1 byte 0xe9
    # flags 3, 4, 5 of u.genre's order = Animation, Children's, Comedy
    assert items.loc[1, "topics"] == ["Animation", "Children's", "Comedy"]
    assert items.loc[3, "topics"] == ["Drama", "War"]
    assert 4 not in items.index  # "unknown": no year, never rated
    assert (items["upload_time"] == JAN1[1995]).all()
    users = ds.users.set_index("user_id")
    # ages 24, 53, 23, 17 in the ml-1m buckets
    assert users["age_bucket"].tolist() == ["18-24", "50-55", "18-24", "under 18"]
    assert users["gender"].tolist() == ["M", "F", "M", "F"]
    assert users["region"].tolist() == ["zip8", "zip9", "non-us", "zip0"]
    assert users["country"].tolist() == ["zip857", "zip940", "non-us:T8H", "zip021"]
    assert users.loc[1, "occupation_technician"] == 1.0
    assert users.loc[1, "occupation_writer"] == 0.0
    assert users.loc[3, "occupation_writer"] == 1.0
    assert info["counts"]["users_without_ratings"] == 1  # user 4
    assert info["counts"]["non_us_zip_codes"] == 1
    assert ds.searches is None


def test_ml_1m_fixture_reads_double_colon_files():
    ds, info = load_movielens(ML1M)
    assert info["layout"] == "ml-1m"
    assert ds.watches["item_id"].tolist() == [1193, 661, 1193, 3408]
    items = ds.items.set_index("item_id")
    assert items.loc[260, "title"] == "Star Wars: Episode IV - A New Hope (1977)"  # ':' kept
    assert items.loc[661, "topics"] == ["Animation", "Children's", "Musical"]
    assert items.loc[661, "upload_time"] == 820_454_400  # 1996
    assert items.loc[3408, "upload_time"] == 978_300_000  # missing from movies.dat
    assert info["counts"]["rated_movies_missing_from_movie_file"] == 1
    assert info["counts"]["movies_never_rated"] == 2  # 260 and 3
    users = ds.users.set_index("user_id")
    assert users["age_bucket"].tolist() == ["under 18", "56+", "25-34"]  # codes 1, 56, 25
    assert users.loc[1, "occupation_k_12_student"] == 1.0  # code 10
    assert users.loc[2, "occupation_self_employed"] == 1.0  # code 16
    assert users.loc[3, "country"] == "zip551"  # ZIP+4 "55117-1234"


def test_chunked_reading_gives_the_same_dataset():
    small_ds, _ = load_movielens(LATEST, chunksize=3)
    ds, _ = load_movielens(LATEST)
    pd.testing.assert_frame_equal(small_ds.watches, ds.watches)
    pd.testing.assert_frame_equal(small_ds.items, ds.items)


# ------------------------------------------------------------------------- malformed lines


@pytest.mark.parametrize(
    ("file", "line", "text", "match"),
    [
        ("ratings.csv", 4, "1,4,2.0,1445714835,7", r"ratings\.csv.*line 4 has 5 comma-separated"),
        ("ratings.csv", 3, "x1,2,3.5,964981247", r"ratings\.csv.*column 'userId'.*not a number.*line 3"),
        ("ratings.csv", 5, "2,1,5.0,yesterday", r"column 'timestamp'.*not a number.*line 5"),
        ("ratings.csv", 5, "2,1,5.0,-3", r"column 'timestamp'.*negative.*line 5"),
        ("ratings.csv", 6, "2,5,4.5", r"column 'timestamp'.*missing value at line 6"),
        ("ratings.csv", 2, "1,1.5,4.0,964982703", r"column 'movieId'.*not an integer.*line 2"),
        ("tags.csv", 2, "1,1,pixar,soon", r"tags\.csv.*column 'timestamp'.*line 2"),
        ("movies.csv", 3, "2.5,Heat (1995),Drama", r"movies\.csv.*column 'movieId'.*line 3"),
        ("ratings.csv", 1, "user,movie,rating,timestamp", r"lacks column\(s\) \['userId', 'movieId'\]"),
    ],
)  # fmt: skip
def test_ml_latest_malformed_lines_name_file_line_and_column(tmp_path, file, line, text, match):
    root = _copy(LATEST, tmp_path)
    _replace_line(root / file, line, text)
    with pytest.raises(DataContractError, match=match):
        load_movielens(root)


@pytest.mark.parametrize(
    ("file", "line", "text", "column"),
    [
        ("ratings.csv", 3, "1e0,2,3.5,964981247", "userId"),  # was read as user 1
        ("ratings.csv", 4, "1,4.0,2.0,1445714835", "movieId"),
        ("ratings.csv", 5, "+2,1,5.0,1445714900", "userId"),
        ("ratings.csv", 6, " 2,5,4.5,1445715000", "userId"),
        ("movies.csv", 3, "2.0,Jumanji (1995),Adventure", "movieId"),
    ],
)  # fmt: skip
def test_ml_latest_ids_must_be_plain_integer_text(tmp_path, file, line, text, column):
    root = _copy(LATEST, tmp_path)
    _replace_line(root / file, line, text)
    match = rf"{file}.*column '{column}': id written with a sign, a space.*at line {line} "
    with pytest.raises(DataContractError, match=match) as exc:
        load_movielens(root)
    assert "ids must be integer text" in exc.value.problems[0].fix


def test_ml_100k_ids_must_be_plain_integer_text(tmp_path):
    root = _copy(ML100K, tmp_path)
    _replace_line(root / "u.data", 2, "1\t2.0\t3\t876893171", encoding="latin-1")
    with pytest.raises(DataContractError, match=r"u\.data.*column 'item_id': id written.*line 2"):
        load_movielens(root)


def test_ml_latest_duplicate_movie_is_an_error(tmp_path):
    root = _copy(LATEST, tmp_path)
    _replace_line(root / "movies.csv", 3, "1,Toy Story again (1995),Comedy")
    with pytest.raises(DataContractError, match=r"movie ids listed more than once.*\[1\]"):
        load_movielens(root)


@pytest.mark.parametrize(
    ("file", "line", "text", "match"),
    [
        ("u.data", 2, "1\t2\t3", r"u\.data.*column 'timestamp'.*missing value at line 2"),
        ("u.data", 3, "2\tone\t4\t888550871", r"u\.data.*column 'item_id'.*line 3"),
        ("u.data", 1, "1\t1\t5\t874965758\t9", r"u\.data.*line 1 has more than 4 tab-separated"),
        ("u.data", 3, "2\t1\t4\t888550871\t9", r"u\.data.*line 3 has 5 tab-separated fields, expected 4"),
        ("u.item", 2, "2|GoldenEye (1995)|01-Jan-1995", r"u\.item.*wrong number of '\|'.*line 2 \(3 fields\)"),
        ("u.user", 4, "4|seventeen|F|student|02138", r"u\.user.*column 'age'.*line 4"),
    ],
)  # fmt: skip
def test_ml_100k_malformed_lines(tmp_path, file, line, text, match):
    root = _copy(ML100K, tmp_path)
    _replace_line(root / file, line, text, encoding="latin-1")
    with pytest.raises(DataContractError, match=match):
        load_movielens(root)


def test_ml_100k_bad_genre_flag(tmp_path):
    root = _copy(ML100K, tmp_path)
    flags = "|".join(["0"] * 18 + ["2"])
    _replace_line(root / "u.item", 1, f"1|Toy Story (1995)|01-Jan-1995||url|{flags}", "latin-1")
    with pytest.raises(DataContractError, match=r"column 'g18'.*other than 0 and 1.*line 1"):
        load_movielens(root)


@pytest.mark.parametrize(
    ("file", "line", "text", "match"),
    [
        ("ratings.dat", 2, "1:661::3::978302109", r"ratings\.dat.*not separated by '::' at line 2"),
        ("ratings.dat", 3, "2::1193::4::978298413::1", r"line 3 has 5 '::'-separated fields, expected 4"),
        ("ratings.dat", 4, "2::3408::4::1e99x", r"column 'timestamp'.*not a number.*line 4"),
        ("movies.dat", 2, "661::James (1996)", r"movies\.dat.*line 2 \(2 fields\)"),
        ("users.dat", 3, "3::M::26::15::55117", r"users\.dat.*unknown age code at line 3"),
        ("users.dat", 1, "1::F::1::21::48067", r"unknown occupation code at line 1"),
    ],
)  # fmt: skip
def test_ml_1m_malformed_lines(tmp_path, file, line, text, match):
    root = _copy(ML1M, tmp_path)
    _replace_line(root / file, line, text, encoding="latin-1")
    with pytest.raises(DataContractError, match=match):
        load_movielens(root)


def test_blank_lines_are_skipped_and_counted(tmp_path):
    root = _copy(ML1M, tmp_path)
    with open(root / "ratings.dat", "ab") as fh:
        fh.write(b"\n\n")
    ds, info = load_movielens(root)
    assert len(ds.watches) == 4
    assert info["blank_lines_skipped"] == {"ratings.dat": 2}


# ------------------------------------------------------------------------------ conversion


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_convert_writes_a_contract_directory(tmp_path, fmt):
    info = convert_movielens(LATEST, tmp_path / "out", fmt)
    back, report = read_dataset(tmp_path / "out")
    ds, _ = load_movielens(LATEST)
    pd.testing.assert_frame_equal(back.watches, ds.watches.drop(columns="rating"))
    pd.testing.assert_frame_equal(back.items, ds.items)
    assert report.ignored_columns == {"watches": ["rating"]}
    assert "source_info.json" in report.ignored_files
    saved = json.loads((tmp_path / "out" / "source_info.json").read_text())
    assert saved["counts"] == info["counts"]


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(not REAL_SMALL.is_dir(), reason="shared ml-latest-small not present")
def test_real_ml_latest_small_matches_its_readme():
    ds, info = load_movielens(REAL_SMALL)
    c = info["counts"]
    # README.txt: 100,004 ratings and 1,296 tag applications across 9,125 movies by 671 users
    assert c["ratings"] == len(ds.watches) == 100_004
    assert len(ds.users) == 671 and c["users_with_ratings"] == 671
    assert c["movies_in_movie_file"] == 9_125
    assert c["movies_rated"] == 9_066  # data README: 9,066 rated movies
    assert c["movies_never_rated"] == 9_125 - 9_066
    assert c["rated_movies_missing_from_movie_file"] == 0
    assert len(ds.searches) == c["tags"] == 1_296
    # every movie is kept but an unrated one without a year
    assert len(ds.items) == 9_125 - c["unrated_movies_without_year_dropped"]
    assert ds.watches["rating"].between(0.5, 5.0).all()
    assert ds.watches["timestamp"].min() >= 789_004_800  # 1995-01-09
    assert ds.items["upload_time"].min() < 0  # silent-era films
