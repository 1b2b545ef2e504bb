"""MovieLens (GroupLens) in its official layouts -> the data contract (SPEC §1).

Where it sits in the data path: `vidrec run --dataset movielens --data-dir DIR` calls
`load_movielens(DIR)`; `convert_movielens` writes the same tables as a contract data directory
(`features.io.write_dataset`). Cite F. M. Harper and J. A. Konstan, "The MovieLens Datasets:
History and Context", ACM TiiS 5(4), 2015; the license (README of each release) allows research
use and redistribution under the same terms.

Layouts, detected from the files in the directory:
- `ml-latest` / `ml-latest-small` (also ml-20m, ml-25m): `ratings.csv`
  (`userId,movieId,rating,timestamp`), `movies.csv` (`movieId,title,genres`), optional
  `tags.csv` (`userId,movieId,tag,timestamp`); UTF-8, CRLF line endings in the originals.
- `ml-100k`: `u.data` (tab-separated `user item rating timestamp`), `u.item` (latin-1,
  '|'-separated: id, title, release date, video release date, IMDb URL, 19 genre flags),
  `u.user` ('|'-separated `id|age|gender|occupation|zip`).
- `ml-1m`: `ratings.dat`, `movies.dat`, `users.dat` ('::'-separated, latin-1); the '::' layout
  without `users.dat` (ml-10m) is read too, with its `tags.dat`.

Mapping (every row that is changed or dropped is counted in the returned info dict):
- a rating is a watch at its timestamp; the star rating is kept as the extra watches column
  `rating` (float, not part of the contract). There is no watch time and no impression.
- genres are topics ('(no genres listed)' is none); the title is the title; the year at the end
  of the title ("Heat (1995)", "Fawlty Towers (1975-1979)") gives `upload_time` = Jan 1 of that
  year, UTC (before 1970 is negative and valid). A movie rated before Jan 1 of its title year
  gets its first rating time instead (it was available then); a title without a year gets its
  first rating time; an unrated movie without a year has no time at all and is dropped.
- a movie rated but absent from the movie file becomes an item with no title or topics and its
  first rating time; a movie never rated stays in the catalog.
- a free-text tag is a search query of its user at its timestamp (empty tags are dropped).
- ml-100k / ml-1m demographics: `gender`, `age_bucket` (the ml-1m buckets; ml-100k ages are
  bucketed the same way), occupation as 0/1 numeric columns `occupation_<name>` (the contract
  has no categorical slot for it, and a one-hot column is what an embedding of it would see),
  and the zip code as geography: a US zip's first digit (USPS national area) is `region`
  ("zip8"), its first three digits (sectional center) are the country-like `country`
  ("zip857"); a non-US postcode gets region "non-us" and country "non-us:" + its first 3
  characters.

Malformed lines (a wrong number of fields, a non-numeric id, a bad timestamp, an unknown ml-1m
age or occupation code) raise `DataContractError` naming the file, line and column.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from vidrec.features.atomic import atomic_write_json
from vidrec.features.io import unterminated_note, write_dataset
from vidrec.features.schema import DataContractError, Problem, ValidationReport, validate_dataset
from vidrec.features.sources.delimited import (
    FieldKind,
    ReadStats,
    coerce_field,
    read_delimited_all,
    read_fields,
)
from vidrec.features.tables import Dataset, source_dataset_name

__all__ = [
    "AGE_BUCKETS",
    "ML100K_GENRES",
    "ML1M_OCCUPATIONS",
    "MOVIELENS_LAYOUTS",
    "convert_movielens",
    "detect_movielens_layout",
    "load_movielens",
    "title_years",
]

MOVIELENS_LAYOUTS: tuple[str, ...] = ("ml-latest", "ml-100k", "ml-1m")

# u.genre of ml-100k, in the order of u.item's 19 flags
ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# ml-1m README: age codes are the lower bounds of these buckets
AGE_BUCKETS: dict[int, str] = {
    1: "under 18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "56+",
}
ML1M_OCCUPATIONS: dict[int, str] = {
    0: "other",
    1: "academic/educator",
    2: "artist",
    3: "clerical/admin",
    4: "college/grad student",
    5: "customer service",
    6: "doctor/health care",
    7: "executive/managerial",
    8: "farmer",
    9: "homemaker",
    10: "K-12 student",
    11: "lawyer",
    12: "programmer",
    13: "retired",
    14: "sales/marketing",
    15: "scientist",
    16: "self-employed",
    17: "technician/engineer",
    18: "tradesman/craftsman",
    19: "unemployed",
    20: "writer",
}
_NO_GENRES = "(no genres listed)"
# the last parenthesised year of a title: "(1995)", "(2007-)", "(1975-1979)"
_YEAR_RE = r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$"
_RATING_FIELDS: dict[str, FieldKind] = {
    "user_id": "id",
    "item_id": "id",
    "rating": "number",
    "timestamp": "time",
}
# the contract table each MovieLens file feeds
_TABLE_OF = {"ratings": "watches", "movies": "items", "tags": "searches", "users": "users"}
_ML_NOTE = (
    "MovieLens has no impressions and no watch time: retrieval is evaluated on the next "
    "watches (ratings); the ranker can only be trained and evaluated on retrieved candidates "
    "labelled by whether the user watched (rated) them in the label window, with unit weights "
    "(no watch-time weighting). Label such ranker numbers as MovieLens click-only numbers."
)


# --------------------------------------------------------------------------------------------
# Layout detection
# --------------------------------------------------------------------------------------------


def detect_movielens_layout(
    path: str | os.PathLike[str],
) -> Literal["ml-latest", "ml-100k", "ml-1m"]:
    """Return the MovieLens layout of a directory: "ml-latest", "ml-100k" or "ml-1m".

    Raises `DataContractError` naming the files found and the files each layout needs.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataContractError(
            [
                Problem(
                    "dataset",
                    None,
                    "the MovieLens directory does not exist"
                    if not root.exists()
                    else "not a directory",
                    file=str(root),
                    fix="pass the directory holding the MovieLens files (e.g. ml-latest-small/)",
                )
            ]
        )
    names = {p.name for p in root.iterdir() if p.is_file()}
    if {"ratings.csv", "movies.csv"} <= names:
        return "ml-latest"
    if {"u.data", "u.item"} <= names:
        return "ml-100k"
    if {"ratings.dat", "movies.dat"} <= names:
        return "ml-1m"
    raise DataContractError(
        [
            Problem(
                "dataset",
                None,
                f"no MovieLens layout recognised; found {sorted(names)[:20]}",
                file=str(root),
                fix="pass a directory with ratings.csv + movies.csv (ml-latest, ml-20m, ...), "
                "u.data + u.item + u.user (ml-100k) or ratings.dat + movies.dat + users.dat "
                "(ml-1m), as unpacked from the GroupLens zip files",
            )
        ]
    )


# --------------------------------------------------------------------------------------------
# Raw tables per layout
# --------------------------------------------------------------------------------------------


class _Raw:
    """The tables read from one layout, before the contract mapping."""

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self.files: dict[str, str] = {}
        self.encodings: dict[str, str] = {}
        self.blank_lines: dict[str, int] = {}
        self.ratings: dict[str, np.ndarray] = {}
        # movies: item_id (int64), title (str), genres ('|'-separated str or missing)
        self.movies = pd.DataFrame()
        self.users: pd.DataFrame | None = None  # user_id + demographics, when the layout has them
        self.tags: pd.DataFrame | None = None  # user_id, timestamp, tag


def _read_all(
    raw: _Raw,
    key: str,
    path: Path,
    fields: dict[str, FieldKind],
    *,
    chunksize: int,
    rename: dict[str, str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Return every chunk of a delimited file concatenated, noting file, encoding, blanks."""
    stats = ReadStats()
    file_fields = {(rename or {}).get(k, k): v for k, v in fields.items()}
    cols = read_delimited_all(path, file_fields, chunksize=chunksize, stats=stats, **kwargs)
    raw.files[key] = path.name
    raw.encodings[path.name] = kwargs.get("encoding", "utf-8")
    if stats.blank_lines:
        raw.blank_lines[path.name] = stats.blank_lines
    back = {v: k for k, v in (rename or {}).items()}
    return {back.get(k, k): v for k, v in cols.items()}


def _checked(
    frame: pd.DataFrame,
    lines: np.ndarray,
    fields: dict[str, FieldKind],
    *,
    table: str,
    file: Path,
) -> dict[str, Any]:
    """Return the columns of a `read_fields` frame converted to their kinds (raise on problems)."""
    out: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, kind in fields.items():
        out[name], found = coerce_field(
            frame[name], kind, column=name, table=table, file=file, lines=lines
        )
        problems += found
    if problems:
        raise DataContractError(problems)
    return out


def _read_split(
    raw: _Raw, key: str, path: Path, names: list[str], *, table: str, sep: str, **kw: Any
) -> tuple[pd.DataFrame, np.ndarray]:
    stats = ReadStats()
    frame, lines, encoding = read_fields(path, names, table=table, sep=sep, stats=stats, **kw)
    raw.files[key] = path.name
    raw.encodings[path.name] = encoding
    if stats.blank_lines:
        raw.blank_lines[path.name] = stats.blank_lines
    return frame, lines


def _read_latest(root: Path, chunksize: int) -> _Raw:
    raw = _Raw("ml-latest")
    ren = {"user_id": "userId", "item_id": "movieId"}
    raw.ratings = _read_all(
        raw, "ratings", root / "ratings.csv", _RATING_FIELDS, table="watches",
        chunksize=chunksize, rename=ren,
    )  # fmt: skip
    movies = _read_all(
        raw, "movies", root / "movies.csv",
        {"item_id": "id", "title": "str", "genres": "str"}, table="items",
        chunksize=chunksize, rename={"item_id": "movieId"}, optional=("title", "genres"),
    )  # fmt: skip
    raw.movies = pd.DataFrame(movies)
    if (root / "tags.csv").is_file():
        tags = _read_all(
            raw, "tags", root / "tags.csv",
            {"user_id": "id", "item_id": "id", "tag": "str", "timestamp": "time"},
            table="searches", chunksize=chunksize, rename=ren, optional=("tag",),
        )  # fmt: skip
        raw.tags = pd.DataFrame(tags).drop(columns="item_id")
    return raw


def _read_100k(root: Path, chunksize: int) -> _Raw:
    raw = _Raw("ml-100k")
    raw.ratings = _read_all(
        raw, "ratings", root / "u.data", _RATING_FIELDS, table="watches",
        chunksize=chunksize, names=list(_RATING_FIELDS), sep="\t",
    )  # fmt: skip
    flags = [f"g{i}" for i in range(len(ML100K_GENRES))]
    names = ["item_id", "title", "release", "video_release", "url", *flags]
    path = root / "u.item"
    frame, lines = _read_split(
        raw, "movies", path, names, table="items", sep="|", encodings=("latin-1",)
    )
    cols = _checked(
        frame, lines, {"item_id": "id", **dict.fromkeys(flags, "flag")}, table="items", file=path
    )
    genres = pd.Series("", index=frame.index, dtype="str")
    for flag, name in zip(flags, ML100K_GENRES, strict=True):
        genres = genres + np.where(cols[flag] == 1, name + "|", "")
    raw.movies = pd.DataFrame(
        {
            "item_id": cols["item_id"],
            "title": frame["title"].where(frame["title"].str.strip() != ""),
            "genres": genres.str.rstrip("|"),
        }
    )
    upath = root / "u.user"
    if upath.is_file():
        uframe, ulines = _read_split(
            raw, "users", upath, ["user_id", "age", "gender", "occupation", "zip"],
            table="users", sep="|", encodings=("latin-1",),
        )  # fmt: skip
        ucols = _checked(uframe, ulines, {"user_id": "id", "age": "int"}, table="users", file=upath)
        age = ucols["age"]
        # the ml-1m buckets: [0,18) [18,25) [25,35) [35,45) [45,50) [50,56) [56,inf)
        bucket = np.asarray(list(AGE_BUCKETS.values()), dtype=object)[
            np.searchsorted(np.asarray(list(AGE_BUCKETS)[1:]), age, side="right")
        ]
        raw.users = pd.DataFrame(
            {
                "user_id": ucols["user_id"],
                "gender": uframe["gender"].str.strip(),
                "age_bucket": bucket,
                "occupation": uframe["occupation"].str.strip(),
                "zip": uframe["zip"].str.strip(),
            }
        )
    return raw


def _read_1m(root: Path, chunksize: int) -> _Raw:
    raw = _Raw("ml-1m")
    raw.ratings = _read_all(
        raw, "ratings", root / "ratings.dat", _RATING_FIELDS, table="watches",
        chunksize=chunksize, names=list(_RATING_FIELDS), sep="::", encoding="latin-1",
    )  # fmt: skip
    path = root / "movies.dat"
    frame, lines = _read_split(
        raw, "movies", path, ["item_id", "title", "genres"], table="items", sep="::"
    )
    cols = _checked(frame, lines, {"item_id": "id"}, table="items", file=path)
    raw.movies = pd.DataFrame(
        {"item_id": cols["item_id"], "title": frame["title"], "genres": frame["genres"]}
    )
    upath = root / "users.dat"
    if upath.is_file():
        uframe, ulines = _read_split(
            raw, "users", upath, ["user_id", "gender", "age", "occupation", "zip"],
            table="users", sep="::",
        )  # fmt: skip
        ucols = _checked(
            uframe,
            ulines,
            {"user_id": "id", "age": "int", "occupation": "int"},
            table="users",
            file=upath,
        )
        problems = []
        for name, codes in (("age", AGE_BUCKETS), ("occupation", ML1M_OCCUPATIONS)):
            unknown = ~np.isin(ucols[name], np.asarray(list(codes)))
            if unknown.any():
                at = np.flatnonzero(unknown)[:5]
                problems.append(
                    Problem(
                        "users",
                        name,
                        f"unknown {name} code at line "
                        f"{', '.join(str(int(ulines[i])) for i in at)} ({int(unknown.sum())} "
                        "rows)",
                        n_rows=int(unknown.sum()),
                        examples=[
                            {"row": int(i), "line": int(ulines[i]), name: int(ucols[name][i])}
                            for i in at
                        ],
                        file=str(upath),
                        fix=f"ml-1m {name} codes are {sorted(codes)} (see its README)",
                    )
                )
        if problems:
            raise DataContractError(problems)
        raw.users = pd.DataFrame(
            {
                "user_id": ucols["user_id"],
                "gender": uframe["gender"].str.strip(),
                "age_bucket": pd.Series(ucols["age"]).map(AGE_BUCKETS).to_numpy(object),
                "occupation": pd.Series(ucols["occupation"]).map(ML1M_OCCUPATIONS).to_numpy(object),
                "zip": uframe["zip"].str.strip(),
            }
        )
    else:
        raw.layout = "ml-10m"  # the '::' layout without demographics
    tpath = root / "tags.dat"
    if tpath.is_file():
        tframe, tlines = _read_split(
            raw, "tags", tpath, ["user_id", "item_id", "tag", "timestamp"],
            table="searches", sep="::",
        )  # fmt: skip
        tcols = _checked(
            tframe,
            tlines,
            {"user_id": "id", "item_id": "id", "timestamp": "time"},
            table="searches",
            file=tpath,
        )
        raw.tags = pd.DataFrame(
            {"user_id": tcols["user_id"], "tag": tframe["tag"], "timestamp": tcols["timestamp"]}
        )
    return raw


# --------------------------------------------------------------------------------------------
# The contract mapping
# --------------------------------------------------------------------------------------------


def title_years(titles: pd.Series) -> np.ndarray:
    """Return the year at the end of each title as float64 (NaN where there is none)."""
    years = titles.astype("str").str.extract(_YEAR_RE, expand=False)
    return pd.to_numeric(years, errors="coerce").to_numpy(np.float64)


def _jan1_seconds(years: np.ndarray) -> np.ndarray:
    """Return UTC seconds of Jan 1 of each (integer) year; before 1970 is negative."""
    return ((years.astype(np.int64) - 1970).astype("datetime64[Y]").astype("datetime64[s]")).astype(
        np.int64
    )


def _first_times(item: np.ndarray, ts: np.ndarray) -> pd.Series:
    """Return the first event time per item id (Series indexed by item id)."""
    return pd.Series(ts).groupby(item, sort=True).min()


def _items(raw: _Raw, counts: dict[str, int], conversions: list[str]) -> pd.DataFrame:
    movies = raw.movies
    dup = movies["item_id"].duplicated(keep="first").to_numpy()
    if dup.any():
        ids = movies["item_id"].to_numpy()[dup][:5].tolist()
        raise DataContractError(
            [
                Problem(
                    "items",
                    "item_id",
                    f"movie ids listed more than once in the movie file: {ids}",
                    n_rows=int(dup.sum()),
                    file=raw.files.get("movies"),
                    fix="each movie must appear once; restore the official file",
                )
            ]
        )
    first = _first_times(raw.ratings["item_id"], raw.ratings["timestamp"])
    in_file = movies["item_id"].to_numpy(np.int64)
    rated = first.index.to_numpy(np.int64)
    is_rated = np.isin(in_file, rated)
    counts["movies_in_movie_file"] = len(movies)
    counts["movies_rated"] = len(rated)
    counts["movies_never_rated"] = int((~is_rated).sum())
    missing = rated[~np.isin(rated, in_file)]
    counts["rated_movies_missing_from_movie_file"] = len(missing)
    if len(missing):
        conversions.append(
            f"{len(missing)} rated movies absent from {raw.files['movies']} became items with "
            "no title or topics, uploaded at their first rating"
        )
        movies = pd.concat(
            [
                movies,
                pd.DataFrame(
                    {
                        "item_id": missing,
                        "title": pd.Series([None] * len(missing), dtype="str"),
                        "genres": pd.Series([None] * len(missing), dtype="str"),
                    }
                ),
            ],
            ignore_index=True,
        )
    ids = movies["item_id"].to_numpy(np.int64)
    first_time = first.reindex(ids).to_numpy(np.float64)  # NaN: never rated
    years = title_years(movies["title"])
    has_year = ~np.isnan(years)
    in_file_mask = np.arange(len(movies)) < counts["movies_in_movie_file"]
    counts["titles_without_year"] = int((~has_year & in_file_mask).sum())
    upload = np.full(len(movies), np.nan)
    upload[has_year] = _jan1_seconds(years[has_year])
    early = has_year & (first_time < upload)
    counts["upload_time_moved_to_first_rating"] = int(early.sum())
    no_year_rated = ~has_year & ~np.isnan(first_time)
    counts["upload_time_from_first_rating"] = int((no_year_rated & in_file_mask).sum())
    upload = np.where(early | ~has_year, first_time, upload)
    timeless = np.isnan(upload)
    counts["unrated_movies_without_year_dropped"] = int(timeless.sum())
    if early.any():
        conversions.append(
            f"{int(early.sum())} movies rated before Jan 1 of their title year: upload_time "
            "set to their first rating (they were available then)"
        )
    if counts["upload_time_from_first_rating"]:
        conversions.append(
            f"{counts['upload_time_from_first_rating']} titles without a year: upload_time "
            "set to the movie's first rating"
        )
    genres = movies["genres"].astype("str").str.strip()
    no_genre = genres.isna() | (genres == "") | (genres == _NO_GENRES)
    counts["movies_without_genres"] = int(no_genre.sum())
    keep = ~timeless
    return pd.DataFrame(
        {
            "item_id": ids[keep],
            "upload_time": upload[keep].astype(np.int64),
            "topics": genres.where(~no_genre).to_numpy(object)[keep],
            "title": movies["title"].to_numpy(object)[keep],
        }
    )


def _zip_geography(zips: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (region, country, is_us) from zip codes: USPS area and 3-digit prefix."""
    z = zips.astype("str").str.strip().str.upper()
    us = z.str.match(r"^\d{5}").to_numpy(dtype=bool, na_value=False)
    missing = (z.isna() | (z == "")).to_numpy(dtype=bool)
    region = np.where(us, "zip" + z.str[:1].fillna(""), "non-us").astype(object)
    country = np.where(us, "zip" + z.str[:3].fillna(""), "non-us:" + z.str[:3].fillna(""))
    country = country.astype(object)
    region[missing] = None
    country[missing] = None
    return region, country, us & ~missing


def _occupation_columns(occupation: pd.Series) -> dict[str, np.ndarray]:
    """Return {"occupation_<name>": 0/1 float64} with one column per occupation seen."""
    occ = occupation.astype("str").str.strip().str.lower()
    names = sorted(occ.dropna().unique().tolist())
    safe = pd.Series(names, dtype="str").str.replace(r"[^a-z0-9]+", "_", regex=True).str.strip("_")
    return {
        f"occupation_{s}": (occ == n).to_numpy(dtype=np.float64, na_value=0.0)
        for n, s in zip(names, safe, strict=True)
    }


def _users(raw: _Raw, counts: dict[str, int], conversions: list[str]) -> pd.DataFrame:
    rated = np.unique(raw.ratings["user_id"])
    tagged = (
        np.unique(raw.tags["user_id"].to_numpy(np.int64))
        if raw.tags is not None
        else np.zeros(0, np.int64)
    )
    active = np.union1d(rated, tagged)
    counts["users_with_ratings"] = len(rated)
    counts["users_with_tags_only"] = int((~np.isin(tagged, rated)).sum())
    if raw.users is None:
        return pd.DataFrame({"user_id": active})
    users = raw.users
    dup = users["user_id"].duplicated().to_numpy()
    if dup.any():
        raise DataContractError(
            [
                Problem(
                    "users",
                    "user_id",
                    f"user ids listed more than once: {users['user_id'][dup].head().tolist()}",
                    n_rows=int(dup.sum()),
                    file=raw.files.get("users"),
                    fix="each user must appear once; restore the official file",
                )
            ]
        )
    in_file = users["user_id"].to_numpy(np.int64)
    counts["users_in_user_file"] = len(users)
    counts["users_without_ratings"] = int((~np.isin(in_file, rated)).sum())
    absent = active[~np.isin(active, in_file)]
    counts["active_users_missing_from_user_file"] = len(absent)
    if len(absent):
        conversions.append(
            f"{len(absent)} users with ratings but absent from {raw.files['users']} were added "
            "without demographics"
        )
        users = pd.concat([users, pd.DataFrame({"user_id": absent})], ignore_index=True)
    region, country, us = _zip_geography(users["zip"])
    counts["non_us_zip_codes"] = int((~us & ~pd.isna(region)).sum())
    out = pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy(np.int64),
            "gender": users["gender"].to_numpy(object),
            "age_bucket": users["age_bucket"].to_numpy(object),
            "region": region,
            "country": country,
        }
    )
    occupation = _occupation_columns(users["occupation"])
    conversions.append(
        f"occupation -> {len(occupation)} numeric 0/1 columns occupation_<name>; zip -> region "
        "(first digit) and country (first 3 digits)"
    )
    return out.assign(**occupation)


def _searches(raw: _Raw, counts: dict[str, int]) -> pd.DataFrame | None:
    if raw.tags is None:
        return None
    query = raw.tags["tag"].astype("str").str.strip()
    empty = (query.isna() | (query == "")).to_numpy(dtype=bool)
    counts["tags"] = len(query)
    counts["empty_tags_dropped"] = int(empty.sum())
    return pd.DataFrame(
        {
            "user_id": raw.tags["user_id"].to_numpy(np.int64)[~empty],
            "timestamp": raw.tags["timestamp"].to_numpy(np.int64)[~empty],
            "query": query[~empty].to_numpy(object),
        }
    )


def load_movielens(
    path: str | os.PathLike[str], *, chunksize: int = 1_000_000
) -> tuple[Dataset, dict[str, Any]]:
    """Return (the validated contract `Dataset`, an info dict) of a MovieLens directory.

    The info dict (JSON-serialisable) holds the layout, files and encodings read, `counts` of
    every handled case (movies never rated, rated movies missing from the movie file, titles
    without a year, ...), the `conversions` made, `notes` on what the data lacks, and the
    contract `validation` report. Ratings files are read `chunksize` lines at a time.
    """
    root = Path(path)
    layout = detect_movielens_layout(root)
    reader = {"ml-latest": _read_latest, "ml-100k": _read_100k, "ml-1m": _read_1m}[layout]
    raw = reader(root, chunksize)
    counts: dict[str, int] = {"ratings": len(raw.ratings["user_id"])}
    conversions = [
        "ratings -> watches at their timestamps; the rating is kept as the extra column "
        "watches.rating (no watch_time)",
        "genres -> topics; title year -> upload_time (Jan 1, UTC)",
    ]
    items = _items(raw, counts, conversions)
    users = _users(raw, counts, conversions)
    searches = _searches(raw, counts)
    if searches is not None:
        conversions.append("tags -> searches (query = tag text, at the tag's timestamp)")
    watches = pd.DataFrame(
        {
            "user_id": raw.ratings["user_id"],
            "item_id": raw.ratings["item_id"],
            "timestamp": raw.ratings["timestamp"],
        }
    )
    report = ValidationReport(
        source=str(root), files={_TABLE_OF[key]: f for key, f in raw.files.items()}
    )
    for key, f in raw.files.items():
        note = unterminated_note(_TABLE_OF[key], root / f)
        if note is not None:
            report.notes.append(note)
    ds = validate_dataset(
        Dataset(users=users, items=items, watches=watches, searches=searches, name="movielens"),
        files={_TABLE_OF[key]: str(root / f) for key, f in raw.files.items()},
        report=report,
    )
    ds.watches["rating"] = raw.ratings["rating"]
    ignored = sorted(
        p.name for p in root.iterdir() if p.is_file() and p.name not in raw.files.values()
    )
    info: dict[str, Any] = {
        "dataset": "movielens",
        "layout": raw.layout,
        "path": str(root),
        "files": dict(raw.files),
        "ignored_files": ignored,
        "encodings": dict(raw.encodings),
        "blank_lines_skipped": dict(raw.blank_lines),
        "tables": ds.counts(),
        "counts": counts,
        "conversions": conversions,
        "notes": [_ML_NOTE],
        "validation": report.to_dict(),
    }
    ds.name = source_dataset_name("movielens", root)
    ds.meta = {
        "source": "movielens",
        "layout": raw.layout,
        "path": str(root),
        "labels": "ratings as watches; no impressions, no watch time",
    }
    return ds, info


def convert_movielens(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    fmt: Literal["parquet", "csv"] = "parquet",
    *,
    chunksize: int = 1_000_000,
) -> dict[str, Any]:
    """Return the info dict after writing MovieLens `src` as a contract data directory `dst`.

    `dst` gets one file per table (`features.io.write_dataset`; watches keep the extra
    `rating` column, which `read_dataset` reports as ignored) and `source_info.json`.
    """
    ds, info = load_movielens(src, chunksize=chunksize)
    write_dataset(ds, dst, fmt, validate=False)  # validated by load_movielens
    atomic_write_json(Path(dst) / "source_info.json", info)
    return info
