"""Tests of the data contract validation (features.schema): every error path, coercions."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from vidrec.features.schema import (
    TABLE_SPECS,
    DataContractError,
    Problem,
    ValidationReport,
    check_tables,
    validate_dataset,
    validate_table,
)
from vidrec.features.tables import Dataset

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z


def _users(**extra: object) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [1, 2, 3], **extra})


def _items(**extra: object) -> pd.DataFrame:
    return pd.DataFrame({"item_id": [10, 11], "upload_time": [T0 - 100, T0 - 50], **extra})


def _watches(**over: object) -> pd.DataFrame:
    cols: dict[str, object] = {
        "user_id": [1, 2, 3],
        "item_id": [10, 11, 10],
        "timestamp": [T0, T0 + 1, T0 + 2],
        "watch_time": [5.0, 7.5, 0.0],
    }
    cols.update(over)
    return pd.DataFrame(cols)


def _impressions(**over: object) -> pd.DataFrame:
    cols: dict[str, object] = {
        "user_id": [1, 1, 2],
        "item_id": [10, 11, 10],
        "timestamp": [T0, T0, T0 + 5],
        "clicked": [1, 0, 0],
        "watch_time": [12.0, 0.0, 0.0],
    }
    cols.update(over)
    return pd.DataFrame(cols)


def _ds(**tables: pd.DataFrame | None) -> Dataset:
    base: dict[str, pd.DataFrame | None] = {
        "users": _users(),
        "items": _items(),
        "watches": _watches(),
        "searches": None,
        "impressions": None,
    }
    base.update(tables)
    return Dataset(**base)  # type: ignore[arg-type]


def _one(exc: pytest.ExceptionInfo[DataContractError]) -> Problem:
    assert len(exc.value.problems) == 1, str(exc.value)
    return exc.value.problems[0]


# -- valid data and canonical dtypes ---------------------------------------------------------


def test_valid_dataset_gets_canonical_dtypes() -> None:
    searches = pd.DataFrame({"user_id": [1], "timestamp": [T0], "query": ["jazz piano"]})
    imps = _impressions(position=[0, 1, 0], source=["cg", "cg", None])
    ds = validate_dataset(_ds(searches=searches, impressions=imps))
    for name in TABLE_SPECS:
        table = ds.table(name)
        assert table is not None
        for col, dtype in TABLE_SPECS[name].dtypes().items():
            if col in table.columns:
                assert table[col].dtype == dtype, (name, col, table[col].dtype)
    assert ds.impressions is not None and ds.impressions["clicked"].dtype == np.int8
    assert ds.counts() == {"users": 3, "items": 2, "watches": 3, "searches": 1, "impressions": 3}


def test_validate_table_returns_copy_with_range_index() -> None:
    df = _watches().set_axis([7, 8, 9])
    out = validate_table("watches", df)
    assert list(out.index) == [0, 1, 2]
    assert out is not df
    assert df.index.tolist() == [7, 8, 9]  # the input is untouched


def test_unknown_table_name() -> None:
    with pytest.raises(ValueError, match="unknown table 'clicks'"):
        validate_table("clicks", _watches())


# -- missing tables, columns, values ---------------------------------------------------------


def test_missing_required_table() -> None:
    with pytest.raises(DataContractError, match="required table is missing") as exc:
        validate_dataset(_ds(watches=None))
    assert _one(exc).table == "watches"


def test_not_a_dataframe() -> None:
    with pytest.raises(DataContractError, match="expected a pandas DataFrame, got dict"):
        validate_dataset(_ds(items={"item_id": [1]}))  # type: ignore[arg-type]


def test_empty_required_table() -> None:
    with pytest.raises(DataContractError, match="table has no rows"):
        validate_dataset(_ds(watches=_watches().iloc[:0]))


def test_missing_required_column_suggests_rename() -> None:
    df = _watches().rename(columns={"item_id": "Item_ID"})
    with pytest.raises(DataContractError, match="required column is missing") as exc:
        validate_table("watches", df)
    p = _one(exc)
    assert (p.table, p.column) == ("watches", "item_id")
    assert "rename column 'Item_ID' to 'item_id'" in p.fix


def test_missing_column_lists_present_columns() -> None:
    with pytest.raises(DataContractError, match="required column is missing") as exc:
        validate_table("searches", pd.DataFrame({"user_id": [1], "timestamp": [T0]}))
    assert "the search query text" in _one(exc).fix


def test_missing_values_in_required_column() -> None:
    df = _watches(item_id=[10.0, np.nan, np.nan])
    with pytest.raises(DataContractError, match=r"missing values \(2 of 3 rows\)") as exc:
        validate_table("watches", df)
    p = _one(exc)
    assert p.n_rows == 2
    assert [e["row"] for e in p.examples] == [1, 2]


def test_missing_query_and_empty_string_query() -> None:
    df = pd.DataFrame({"user_id": [1, 2], "timestamp": [T0, T0], "query": ["", None]})
    with pytest.raises(DataContractError, match=r"column 'query': missing values \(2 of 2"):
        validate_table("searches", df)


def test_duplicate_column_names() -> None:
    df = pd.concat([_watches(), _watches()[["user_id"]]], axis=1)
    with pytest.raises(DataContractError, match="column 'user_id' appears 2 times"):
        validate_table("watches", df)


# -- ids -------------------------------------------------------------------------------------


def test_text_ids_make_the_space_a_string_one() -> None:
    # one value that is no number at all ('u2') makes every user id a string id, kept as given
    report = ValidationReport()
    out = validate_table("watches", _watches(user_id=["1", "u2", "3"]), report=report)
    assert out["user_id"].dtype == np.int64 and out["user_id"].tolist() == [0, 2, 1]  # sorted
    assert report.id_types == {"user": "string", "item": "integer"}
    assert any("user ids are strings (3 distinct" in n for n in report.notes)


def test_values_that_are_no_ids_at_all() -> None:
    df = _watches(user_id=pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]))
    with pytest.raises(DataContractError, match="values that are not integer ids") as exc:
        validate_table("watches", df)
    p = _one(exc)
    assert p.examples[0]["row"] == 0 and "factorize" in p.fix


def test_digit_string_ids_are_converted_and_reported() -> None:
    report = ValidationReport()
    out = validate_table("watches", _watches(user_id=["1", "2", "-0"]), report=report)
    assert out["user_id"].tolist() == [1, 2, 0] and out["user_id"].dtype == np.int64
    assert report.conversions == ["watches.user_id: converted 3 digit strings to int64"]


def test_ids_must_be_plain_integer_text() -> None:
    # a sign or spaces around the digits are not an id (they were read as 1 and 3)
    with pytest.raises(DataContractError, match="not as plain integer text") as exc:
        validate_table("watches", _watches(user_id=[" 1", "2", "+3"]))
    p = _one(exc)
    assert p.n_rows == 2 and [e["row"] for e in p.examples] == [0, 2]
    assert "ids must be integer text" in p.fix


def test_nineteen_digit_ids_fit_and_twenty_digit_ids_do_not() -> None:
    big = 9_223_372_036_854_775_807  # int64 max, 19 digits
    out = validate_table("users", pd.DataFrame({"user_id": [str(big), "5"]}))
    assert out["user_id"].tolist() == [big, 5]
    with pytest.raises(DataContractError, match="integers outside the int64 range"):
        validate_table("users", pd.DataFrame({"user_id": [str(big + 1), "5"]}))


def test_uint64_ids_beyond_int64() -> None:
    ids = pd.Series([1, 2**63], dtype="uint64")
    with pytest.raises(DataContractError, match="ids larger than the int64 maximum"):
        validate_table("users", pd.DataFrame({"user_id": ids}))


def test_fractional_and_boolean_ids() -> None:
    with pytest.raises(DataContractError, match="not integer ids") as exc:
        validate_table("users", pd.DataFrame({"user_id": [1.0, 2.5, 3.0]}))
    assert _one(exc).examples == [{"row": 1, "user_id": 2.5}]
    with pytest.raises(DataContractError, match="not integer ids"):
        validate_table("users", pd.DataFrame({"user_id": [True, False]}))


def test_duplicate_primary_ids() -> None:
    with pytest.raises(DataContractError, match="duplicate user_id: 1 id appears more") as exc:
        validate_table("users", pd.DataFrame({"user_id": [4, 5, 4, 6]}))
    assert [e["row"] for e in _one(exc).examples] == [0, 2]
    with pytest.raises(DataContractError, match="duplicate item_id: 2 ids appear"):
        validate_table("items", pd.DataFrame({"item_id": [1, 1, 2, 2], "upload_time": [0] * 4}))


# -- numbers: watch_time, duration, clicked, position ---------------------------------------


def test_non_numeric_watch_time_reports_values() -> None:
    with pytest.raises(DataContractError, match="values that are not numbers") as exc:
        validate_table("watches", _watches(watch_time=["5", "long", "7"]))
    assert _one(exc).examples[0]["watch_time"] == "long"


def test_numeric_strings_and_na_tokens() -> None:
    report = ValidationReport()
    out = validate_table("watches", _watches(watch_time=["5", " 1e1 ", "NaN"]), report=report)
    np.testing.assert_array_equal(out["watch_time"], [5.0, 10.0, np.nan])
    assert "watches.watch_time: converted 2 numeric strings to numbers" in report.conversions
    assert "watches: watch_time: 1 missing values kept as NaN (unknown)" in report.notes


def test_negative_watch_time_and_duration() -> None:
    with pytest.raises(DataContractError, match=r"negative values \(1 of 3 rows\)") as exc:
        validate_table("watches", _watches(watch_time=[1.0, -3.0, 2.0]))
    assert _one(exc).examples == [
        {"row": 1, "user_id": 2, "item_id": 11, "timestamp": T0 + 1, "watch_time": -3.0}
    ]
    with pytest.raises(DataContractError, match="column 'duration'.*negative values"):
        validate_table("items", _items(duration=[-1.0, 3.0]))


def test_boolean_watch_time_is_an_error() -> None:
    with pytest.raises(DataContractError, match="boolean values where a number is expected"):
        validate_table("watches", _watches(watch_time=[True, False, True]))


def test_infinite_values() -> None:
    with pytest.raises(DataContractError, match="column 'watch_time': infinite values"):
        validate_table("watches", _watches(watch_time=[1.0, np.inf, 2.0]))
    with pytest.raises(DataContractError, match="column 'timestamp': infinite values"):
        validate_table("watches", _watches(timestamp=[float(T0), -np.inf, float(T0)]))
    with pytest.raises(DataContractError, match="column 'score': infinite values"):
        validate_table("users", _users(score=[1.0, np.inf, 0.0]))


def test_clicked_not_binary() -> None:
    with pytest.raises(DataContractError, match="values other than 0 and 1") as exc:
        validate_table("impressions", _impressions(clicked=[1, 2, -1]))
    assert _one(exc).n_rows == 2


def test_boolean_clicked_is_converted() -> None:
    report = ValidationReport()
    out = validate_table("impressions", _impressions(clicked=[True, False, False]), report=report)
    assert out["clicked"].tolist() == [1, 0, 0] and out["clicked"].dtype == np.int8
    assert "impressions.clicked: converted 3 booleans to 0/1" in report.conversions


def test_watch_time_on_unclicked_impression() -> None:
    with pytest.raises(DataContractError, match="watch_time > 0 on an unclicked") as exc:
        validate_table("impressions", _impressions(watch_time=[12.0, 3.0, 0.0]))
    p = _one(exc)
    assert p.examples[0]["clicked"] == 0 and p.examples[0]["watch_time"] == 3.0


def test_impression_watch_time_missing_says_use_zero() -> None:
    with pytest.raises(DataContractError, match="missing values") as exc:
        validate_table("impressions", _impressions(watch_time=[12.0, np.nan, 0.0]))
    assert "use 0 for unclicked" in _one(exc).fix


def test_position_must_be_non_negative_integer_and_complete() -> None:
    with pytest.raises(DataContractError, match="not non-negative integers"):
        validate_table("impressions", _impressions(position=[0, -1, 1.5]))
    with pytest.raises(DataContractError, match="column 'position': missing values"):
        validate_table("impressions", _impressions(position=[0, None, 2]))


# -- times -----------------------------------------------------------------------------------


def test_iso_timestamps_are_converted_to_utc_seconds() -> None:
    report = ValidationReport()
    ts = ["1970-01-02", "2024-01-31T12:00:00+02:00", "2024-01-31 10:00:00", str(T0)]
    out = validate_table("watches", _watches(timestamp=ts[:3]), report=report)
    # 1970-01-02 = 86400 s; 12:00+02:00 = 10:00Z; naive 10:00 is taken as UTC -> same second
    assert out["timestamp"].tolist() == [86_400, 1_706_695_200, 1_706_695_200]
    assert report.conversions == [
        "watches.timestamp: converted 3 ISO-8601 timestamps to UTC seconds"
    ]
    mixed = validate_table("watches", _watches(timestamp=[ts[3], ts[0], "86401"]))
    assert mixed["timestamp"].tolist() == [T0, 86_400, 86_401]


def test_datetime_columns_are_converted() -> None:
    aware = pd.to_datetime(["2024-01-31T12:00:00+02:00"] * 3, utc=True).tz_convert("Asia/Tokyo")
    out = validate_table("watches", _watches(timestamp=aware))
    assert out["timestamp"].tolist() == [1_706_695_200] * 3
    naive = pd.to_datetime(["1970-01-01T00:01:00"] * 3)
    assert validate_table("watches", _watches(timestamp=naive))["timestamp"].tolist() == [60] * 3


def test_unparseable_timestamps() -> None:
    df = _watches(timestamp=["2024-01-31", "31/01/2024", "yesterday"])
    with pytest.raises(DataContractError, match="timestamps that cannot be parsed") as exc:
        validate_table("watches", df)
    p = _one(exc)
    assert p.n_rows == 2 and [e["timestamp"] for e in p.examples] == ["31/01/2024", "yesterday"]
    assert "ISO-8601" in p.fix


def test_millisecond_timestamps() -> None:
    with pytest.raises(DataContractError, match="look like milliseconds") as exc:
        validate_table("watches", _watches(timestamp=[T0 * 1000, T0, T0]))
    assert "divide milliseconds by 1000" in _one(exc).fix


def test_pre_1970_upload_times_are_valid() -> None:
    items = pd.DataFrame(
        {"item_id": [1, 2, 3], "upload_time": [-100, "1969-12-31T23:59:59Z", "1900-01-01"]}
    )
    out = validate_table("items", items)
    # 1900-01-01 is 70 years (17 of them leap) before 1970: -(70*365+17)*86400 = -2208988800
    assert out["upload_time"].tolist() == [-100, -1, -2_208_988_800]


def test_negative_event_timestamps_are_an_error() -> None:
    with pytest.raises(DataContractError, match=r"times before 1970 \(negative seconds\)"):
        validate_table("watches", _watches(timestamp=[T0, -5, T0]))


def test_fractional_timestamps_are_floored() -> None:
    report = ValidationReport()
    out = validate_table("watches", _watches(timestamp=[10.9, 11.0, 12.5]), report=report)
    assert out["timestamp"].tolist() == [10, 11, 12]
    assert (
        "watches.timestamp: floored 2 fractional timestamps to whole seconds" in report.conversions
    )
    pre = validate_table("items", _items(upload_time=[-0.5, 3.0]))
    assert pre["upload_time"].tolist() == [-1, 3]  # floor, not truncation toward 0


def test_boolean_timestamps() -> None:
    with pytest.raises(DataContractError, match="boolean values where a time is expected"):
        validate_table("watches", _watches(timestamp=[True, False, True]))


# -- strings and topics ----------------------------------------------------------------------


def test_string_columns() -> None:
    report = ValidationReport()
    out = validate_table("items", _items(channel_id=[7.0, np.nan], title=["", "NA"]), report=report)
    assert out["channel_id"].tolist()[0] == "7" and out["channel_id"].isna().tolist()[1]
    assert out["title"].isna().tolist() == [True, False] and out["title"][1] == "NA"
    assert out["title"].dtype == "str"
    assert "items.title: treated 1 empty strings as missing" in report.conversions


def test_topics_from_strings_lists_and_arrays() -> None:
    report = ValidationReport()
    out = validate_table("items", _items(topics=["music| jazz ||", None]), report=report)
    assert out["topics"].tolist() == [["music", "jazz"], []]
    assert "items.topics: dropped 2 empty topic strings" in report.conversions
    arr = np.array(["a", "b"], dtype=object)
    out = validate_table("items", _items(topics=[arr, []]))
    assert out["topics"].tolist() == [["a", "b"], []]
    assert isinstance(out["topics"][0], list)
    assert validate_table("items", _items(topics=[[1, 2], None]))["topics"].tolist() == [
        ["1", "2"],
        [],
    ]


def test_bad_topics() -> None:
    with pytest.raises(DataContractError, match="neither a list nor a string") as exc:
        validate_table("items", _items(topics=[{"a": 1}, "x"]))
    assert _one(exc).examples[0]["row"] == 0
    with pytest.raises(DataContractError, match="strings mixed with lists"):
        validate_table("items", _items(topics=[["a"], "b|c"]))
    with pytest.raises(DataContractError, match="lists holding values that are not strings"):
        validate_table("items", _items(topics=[[1.5], [2.5]]))


# -- extra columns ---------------------------------------------------------------------------


def test_extra_columns_of_users_and_items_are_typed_and_ignored_elsewhere() -> None:
    report = ValidationReport()
    users = _users(
        age_days=[1, 2, 3],
        score=["0.5", None, "2"],
        occupation=["doctor", "artist", "doctor"],
        hobbies=["chess|go", None, "go"],
        nickname=["a", "b", "c"],
        plan=["free", "free", "free"],
        empty=[None, None, None],
    )
    out = validate_table("users", users, report=report)
    assert list(out.columns) == ["user_id", "age_days", "score", "occupation", "hobbies"]
    assert out["age_days"].dtype == np.float64
    np.testing.assert_array_equal(out["score"], [0.5, np.nan, 2.0])
    assert out["occupation"].tolist() == ["doctor", "artist", "doctor"]
    assert out["hobbies"].tolist() == [["chess", "go"], [], ["go"]]
    assert report.column_types["users"] == {
        "age_days": "continuous",
        "score": "continuous",
        "occupation": "categorical",
        "hobbies": "multi",
        "nickname": "ignored",
        "plan": "ignored",
        "empty": "ignored",
    }
    why = report.column_reasons["users"]
    assert "identifier" in why["nickname"] and "constant" in why["plan"]
    assert "no values" in why["empty"] and "inferred" in why["occupation"]
    items = _items(budget=[1.5, 20.0], genres=[["Drama"], ["Drama", "Comedy"]])
    out = validate_table("items", items, report=report)
    assert out["budget"].dtype == np.float64 and out["genres"].tolist()[1] == ["Drama", "Comedy"]
    assert report.column_types["items"] == {"budget": "continuous", "genres": "multi"}
    validate_table("watches", _watches(device=["tv", "tv", "phone"]), report=report)
    assert report.ignored_columns == {
        "users": ["nickname", "plan", "empty"],
        "watches": ["device"],
    }
    assert "not part of the contract" in report.column_reasons["watches"]["device"]


def test_a_missing_value_keeps_a_one_value_column() -> None:
    # known (10) against unknown: it tells users apart, so it is not constant
    out = validate_table("users", _users(age_days=[10, None, 10]))
    assert "age_days" in out.columns


def test_declared_column_types_override_the_rules() -> None:
    report = ValidationReport()
    users = _users(zip=[2139, 2139, 10001], nickname=["a", "b", "c"], score=[1, 2, 3])
    out = validate_dataset(
        _ds(users=users),
        report=report,
        columns={"zip": "categorical", "users.nickname": "categorical", "score": "ignore"},
    ).users
    assert out["zip"].tolist() == ["2139", "2139", "10001"]
    assert out["nickname"].tolist() == ["a", "b", "c"]  # an identifier, but declared
    assert "score" not in out.columns
    assert report.column_types["users"] == {
        "zip": "categorical",
        "nickname": "categorical",
        "score": "ignored",
    }
    assert "declared" in report.column_reasons["users"]["zip"]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"zop": "categorical"}, "users and items have no such column"),
        ({"country": "ignore"}, "a contract column of users"),
        ({"watches.device": "ignore"}, "only users and items take extra columns"),
        ({"zip": "numeric"}, "declared as 'numeric'"),
        ({"name": "continuous"}, "values that are not numbers in a continuous column"),
        ({"tags": "categorical"}, "lists in a column declared categorical"),
    ],
)
def test_bad_declarations_are_refused(columns: dict[str, str], message: str) -> None:
    users = _users(zip=[1, 2, 3], name=["a", "b", "c"], country=["KR", "KR", "CN"])
    items = _items(tags=[["x"], ["y"]])
    with pytest.raises(DataContractError, match=message):
        validate_dataset(_ds(users=users, items=items), columns=columns)


# -- cross-table references ------------------------------------------------------------------


def test_unknown_users_and_items() -> None:
    watches = _watches(user_id=[1, 9, 9])
    imps = _impressions(item_id=[10, 99, 10])
    searches = pd.DataFrame({"user_id": [8], "timestamp": [T0], "query": ["x"]})
    with pytest.raises(DataContractError) as exc:
        validate_dataset(_ds(watches=watches, impressions=imps, searches=searches))
    got = {(p.table, p.column): p for p in exc.value.problems}
    assert set(got) == {("watches", "user_id"), ("searches", "user_id"), ("impressions", "item_id")}
    p = got[("watches", "user_id")]
    assert p.n_rows == 2 and "1 distinct values not in users.user_id" in p.message
    assert "unknown item_id" in got[("impressions", "item_id")].message


def test_all_problems_are_collected_at_once() -> None:
    users = pd.DataFrame({"user_id": [1, 1, 2]})  # duplicate
    items = _items(duration=[-1.0, 2.0])  # negative
    watches = _watches(user_id=[1, 2, 7], watch_time=[1.0, "x", 2.0])  # unknown user, bad number
    imps = _impressions(clicked=[1, 0, 5])  # not binary
    with pytest.raises(DataContractError) as exc:
        validate_dataset(_ds(users=users, items=items, watches=watches, impressions=imps))
    kinds = [(p.table, p.column) for p in exc.value.problems]
    assert kinds == [
        ("users", "user_id"),
        ("items", "duration"),
        ("watches", "watch_time"),
        ("impressions", "clicked"),
        ("watches", "user_id"),
    ]
    assert "5 problems" in str(exc.value)


def test_check_tables_does_not_raise() -> None:
    out, problems = check_tables({"users": _users(), "items": None, "watches": _watches()})
    assert out["items"] is None and out["users"] is not None
    assert [p.message for p in problems] == ["required table is missing"]


# -- the error object ------------------------------------------------------------------------


def test_error_message_names_file_table_column_rows_and_fix() -> None:
    df = _watches(
        watch_time=[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0] * 1,
        user_id=[1] * 6,
        item_id=[10] * 6,
        timestamp=[T0] * 6,
    )
    with pytest.raises(DataContractError) as exc:
        validate_table("watches", df, file="data/watches.csv")
    p = _one(exc)
    assert p.file == "data/watches.csv" and p.n_rows == 6 and len(p.examples) == 5
    assert p.examples[0]["line"] == 2  # row 0 is on line 2, after the header
    text = str(exc.value)
    assert "data/watches.csv, table 'watches', column 'watch_time'" in text
    assert "first offending rows (5 of 6)" in text
    assert "row 4 (line 6): user_id=1, item_id=10" in text
    assert "fix: watch_time (seconds watched) must be >= 0" in text
    assert isinstance(exc.value, ValueError)


def test_error_survives_pickling_and_long_values_are_shortened() -> None:
    err = DataContractError([Problem("items", "title", "bad", 1, [{"row": 0, "title": "x"}])])
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.problems == err.problems
    with pytest.raises(DataContractError) as exc:
        validate_table(
            "searches", pd.DataFrame({"user_id": [1], "timestamp": ["z" * 200], "query": ["q"]})
        )
    shown = _one(exc).examples[0]["timestamp"]
    assert len(shown) == 60 and shown.endswith("...")


def test_report_to_dict() -> None:
    report = ValidationReport()
    validate_dataset(_ds(), report=report)
    d = report.to_dict()
    assert d["rows"] == {"users": 3, "items": 2, "watches": 3}
    assert set(d) == {
        "source",
        "files",
        "rows",
        "ignored_columns",
        "ignored_files",
        "conversions",
        "notes",
        "warnings",
        "id_types",
        "column_types",
        "column_reasons",
    }
