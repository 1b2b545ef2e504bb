"""KuaiRand loader: a fixture in the official KuaiRand-Pure layout (real side-table rows,
hand-written logs), malformed lines, the real metadata tables, and the conversion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidrec.features.examples import ACTIVITY_FEATURES, CandidateFeaturizer
from vidrec.features.io import read_dataset
from vidrec.features.schema import DataContractError
from vidrec.features.sources.kuairand import (
    KUAIRAND_LOG_COLUMNS,
    convert_kuairand,
    find_kuairand_files,
    load_kuairand,
    load_kuairand_items,
    load_kuairand_users,
    split_impressions,
)
from vidrec.features.split import TimeSplit

FIXTURE = Path(__file__).parent / "fixtures" / "kuairand"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "kuairand-pure-metadata"
STD1 = "log_standard_4_08_to_4_21_pure.csv"

# 2022-04-10 00:00 Beijing = 2022-04-09 16:00 UTC = 19091 days * 86400 - 8 * 3600
APR10_BJ = 1_649_520_000
APR11_BJ = APR10_BJ + 86_400


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "kuairand"
    shutil.copytree(FIXTURE, dst)
    return dst


def _replace_line(path: Path, line_no: int, text: str) -> None:
    lines = path.read_text().split("\n")
    lines[line_no - 1] = text
    path.write_text("\n".join(lines))


@pytest.fixture(scope="module")
def loaded():
    return load_kuairand(FIXTURE)


def test_the_data_set_is_named_once_after_its_directory(loaded, tmp_path):
    assert loaded[0].name == "kuairand"  # the folder names the source: not kuairand-kuairand
    shutil.copytree(FIXTURE, tmp_path / "pure")
    assert load_kuairand(tmp_path / "pure")[0].name == "kuairand-pure"


def test_fixture_logs_use_the_official_columns():
    for name in (STD1, "log_standard_4_22_to_5_08_pure.csv", "log_random_4_22_to_5_08_pure.csv"):
        header = (FIXTURE / name).read_text().split("\n", 1)[0]
        assert tuple(header.split(",")) == KUAIRAND_LOG_COLUMNS


@pytest.mark.skipif(not REAL.is_dir(), reason="shared KuaiRand metadata not present")
@pytest.mark.parametrize("name", ["user_features_pure.csv", "video_features_basic_pure.csv"])
def test_fixture_side_tables_are_real_rows(name):
    real = (REAL / name).read_text().split("\n")
    mine = (FIXTURE / name).read_text().strip().split("\n")
    assert mine[0] == real[0]
    assert set(mine[1:]) <= set(real[1:])


def test_impressions_clicks_and_watch_time(loaded):
    ds, info = loaded
    imp = ds.impressions
    # 8 + 2 standard exposures, then 3 random ones, in file order
    assert len(imp) == 13
    assert imp["source"].tolist() == ["standard"] * 10 + ["random"] * 3
    assert imp["timestamp"].iloc[0] == 1_649_577_600  # time_ms 1649577600123 floored
    assert imp["clicked"].tolist() == [1, 0, 0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 0]
    # play_time_ms / 1000 on clicks; 0 on unclicked rows even with play time (rows 3 and 11)
    assert imp["watch_time"].tolist() == [90.5, 0, 0, 0, 0, 45.0, 0, 12.0, 200.0, 0, 0, 20.0, 0]
    c = info["counts"]
    assert c["exposures"] == 13 and c["clicks"] == 6
    assert c["unclicked_exposures_with_play_time"] == 2
    assert c["unclicked_play_ms_dropped"] == 1385 + 2500
    assert c["clicks_without_play_time"] == 1  # user 1, video 5
    assert info["impression_sources"] == {"standard": 10, "random": 3}
    assert ds.meta["unbiased_eval"] == "impressions.source == 'random'"


def test_watches_are_the_clicked_exposures(loaded):
    ds, _ = loaded
    w = ds.watches
    assert list(zip(w["user_id"], w["item_id"], strict=True)) == [
        (0, 0), (1, 5), (1, 0), (3120, 9999), (1, 1), (1, 7)
    ]  # fmt: skip
    assert w["watch_time"].tolist() == [90.5, 0.0, 45.0, 12.0, 200.0, 20.0]


def test_items_map_author_tags_upload_date_and_duration(loaded):
    ds, info = loaded
    items = ds.items.set_index("item_id")
    assert items.index.tolist() == [0, 1, 5, 7, 75, 9999]
    assert items.loc[0, "channel_id"] == "7349781"  # author_id
    assert items.loc[5, "topics"] == ["20", "43"]  # tag "20,43"
    assert items.loc[75, "topics"] == []  # tag missing
    assert items.loc[0, "upload_time"] == APR10_BJ  # upload_dt 2022-04-10
    assert items.loc[75, "upload_time"] == APR11_BJ
    assert items.loc[0, "duration"] == pytest.approx(87.433)  # 87433 ms
    # video 7 has no video_duration: the logs' duration_ms 31250
    assert items.loc[7, "duration"] == pytest.approx(31.25)
    # video 9999 is logged but not in the video file: first exposure, logged duration
    assert items.loc[9999, "upload_time"] == 1_649_638_900
    assert items.loc[9999, "duration"] == pytest.approx(15.0)
    assert pd.isna(items.loc[9999, "channel_id"])
    c = info["counts"]
    assert c["videos_in_video_file"] == 5
    assert c["videos_without_duration"] == 1 and c["videos_without_tag"] == 1
    assert c["logged_videos_missing_from_video_file"] == 1
    assert c["durations_filled_from_log"] == 2  # 7, and 9999 which had no row at all
    assert c["durations_missing"] == 0
    assert c["exposures_before_upload_time"] == 1  # user 0 saw video 75 at 16:05 on Apr 10


def test_user_snapshot_columns_are_left_out_by_default(loaded):
    # the user file is one snapshot at the end of the log: activity degree, follow/fan/friend
    # counts, register days and the flags would tell an early example its user's future
    ds, info = loaded
    assert ds.users.columns.tolist() == ["user_id"]
    assert ds.users["user_id"].tolist() == [0, 1, 3120, 77777]
    assert ds.meta["snapshot_user_features"] is False
    assert any("encode future activity" in n for n in info["notes"])
    assert info["counts"]["users_in_user_file"] == 3  # the file is still read and checked
    users, _ = load_kuairand_users(FIXTURE / "user_features_pure.csv")
    assert users.columns.tolist() == ["user_id"]


def test_user_snapshot_columns_never_reach_the_candidate_generator(loaded):
    ds, _ = loaded
    kept, _ = load_kuairand(FIXTURE, snapshot_user_features=True)
    split = TimeSplit.from_fractions(ds, 0.7, 0.15)
    snapshot = {"follow_user_num", "fans_user_num", "friend_user_num", "register_days"}
    snapshot |= {"is_lowactive_period", "is_live_streamer", "is_video_author"}
    default = CandidateFeaturizer(min_token_count=1).fit(ds, split)
    assert default.continuous_names_ == ACTIVITY_FEATURES  # only activity before the example
    on = CandidateFeaturizer(min_token_count=1).fit(kept, split)
    names = set(on.continuous_names_)
    assert snapshot <= names and any(c.startswith("active_degree_") for c in names)


def test_users_features():
    ds, info = load_kuairand(FIXTURE, snapshot_user_features=True)
    assert ds.meta["snapshot_user_features"] is True
    users = ds.users.set_index("user_id")
    assert users.index.tolist() == [0, 1, 3120, 77777]  # 77777 only in the log
    assert users.loc[0, "follow_user_num"] == 514
    assert users.loc[0, "is_live_streamer"] == 1
    assert np.isnan(users.loc[1, "is_live_streamer"])  # -124 in the file
    assert users.loc[0, "active_degree_full_active"] == 1.0
    assert users.loc[3120, "active_degree_full_active"] == 0.0  # UNKNOWN
    assert np.isnan(users.loc[77777, "register_days"])
    assert not any(c.startswith("onehot_feat") or c.endswith("_range") for c in users.columns)
    c = info["counts"]
    assert c["is_live_streamer_missing"] == 2
    assert c["users_with_unknown_active_degree"] == 1
    assert c["logged_users_missing_from_user_file"] == 1


def test_split_impressions_gives_the_unbiased_set(loaded):
    ds, _ = loaded
    standard, random = split_impressions(ds)
    assert len(standard) == 10 and len(random) == 3
    assert random["item_id"].tolist() == [5, 7, 1]
    with pytest.raises(ValueError, match="no impressions with a 'source' column"):
        split_impressions(ds.__class__(ds.users, ds.items, ds.watches))


def test_unclicked_play_as_click():
    ds, info = load_kuairand(FIXTURE, unclicked_play="click")
    imp = ds.impressions
    assert imp["clicked"].tolist() == [1, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0]
    assert imp["watch_time"].iloc[2] == pytest.approx(1.385)
    assert len(ds.watches) == 8  # 6 clicks + 2 autoplays
    with pytest.raises(ValueError, match="unclicked_play must be 'drop' or 'click'"):
        load_kuairand(FIXTURE, unclicked_play="keep")  # type: ignore[arg-type]


def test_without_random_log_and_in_small_chunks(loaded):
    ds, info = load_kuairand(FIXTURE, include_random=False, chunksize=3)
    assert ds.impressions["source"].eq("standard").all() and len(ds.impressions) == 10
    assert info["files"]["random_logs"] == []
    full, _ = load_kuairand(FIXTURE, chunksize=2)
    pd.testing.assert_frame_equal(full.impressions, loaded[0].impressions)
    pd.testing.assert_frame_equal(full.items, loaded[0].items)


def test_standard_rows_flagged_random_become_random(tmp_path):
    root = _copy(tmp_path)
    _replace_line(
        root / STD1, 2, "0,0,20220410,1600,1649577600123,1,0,0,0,0,0,1,90500,87433,0,0,0,1,1"
    )
    ds, info = load_kuairand(root)
    assert ds.impressions["source"].iloc[0] == "random"
    assert info["counts"]["standard_log_rows_flagged_is_rand"] == 1


# ------------------------------------------------------------------------- malformed lines


@pytest.mark.parametrize(
    ("file", "line", "text", "match"),
    [
        (STD1, 3, "0,1,20220410,1600,1649577700456,0,0,0,0,0,0,0,0,218066,0,0,0,0,1,7", r"line 3 has 20 comma-separated fields, expected 19"),
        (STD1, 4, "0,7,20220410,1600,1649577800789,0,0,0,0,0,0,0,1385,31250,0,0,0,0", r"column 'tab'.*missing value at line 4"),
        (STD1, 5, "u0,75,20220410,1600,1649577900000,0,0,0,0,0,0,0,0,6466,0,0,0,0,1", r"log_standard_4_08_to_4_21_pure\.csv.*column 'user_id'.*not a number.*line 5"),
        (STD1, 6, "1,5,20220410,1700,soon,1,0,0,0,0,0,0,0,358016,0,0,0,0,2", r"column 'time_ms'.*not a number.*line 6"),
        (STD1, 7, "1,0,20220410,1700,-1649581300000,1,1,0,0,0,0,0,45000,87433,0,0,0,0,2", r"column 'time_ms'.*negative.*line 7"),
        (STD1, 8, "3120,75,20220411,900,1649638800000,2,0,0,0,0,0,0,0,6466,0,0,0,0,0", r"column 'is_click'.*other than 0 and 1.*line 8"),
        (STD1, 9, "3120,9999,20220411,900,1649638900000,1,0,0,0,0,0,0,-5,15000,0,0,0,0,0", r"column 'play_time_ms'.*negative value at line 9"),
        ("video_features_basic_pure.csv", 3, "1,2103883,NORMAL,10/04/2022,Kmovie,0.0,218066.0,720.0,1280.0,6355810746,9.0,2", r"column 'upload_dt'.*not YYYY-MM-DD at line 3"),
        ("user_features_pure.csv", 2, "x" + "0,full_active,0,1,1,514,500+,150,\"[100,1k)\",34,\"[30,60)\",799,730+,1,1,29,949,1.0,0,0,14,135,6,3,0,0.0,1.0,0.0,0.0,0.0,0.0", r"user_features_pure\.csv.*column 'user_id'.*line 2"),
    ],
)  # fmt: skip
def test_malformed_lines_name_file_line_and_column(tmp_path, file, line, text, match):
    root = _copy(tmp_path)
    _replace_line(root / file, line, text)
    with pytest.raises(DataContractError, match=match):
        load_kuairand(root)


def test_duplicate_video_and_missing_files(tmp_path):
    root = _copy(tmp_path)
    _replace_line(
        root / "video_features_basic_pure.csv",
        3,
        "0,1,NORMAL,2022-04-10,Web,0.0,1.0,1.0,1.0,1,9.0,2",
    )
    with pytest.raises(DataContractError, match=r"video ids listed more than once: \[0\]"):
        load_kuairand(root)
    (root / "video_features_basic_pure.csv").unlink()
    with pytest.raises(DataContractError, match=r"no basic video feature \(video_features_basic"):
        load_kuairand(root)
    with pytest.raises(
        DataContractError, match=r"(?s)no standard exposure log.*load_kuairand_items"
    ):
        load_kuairand(REAL if REAL.is_dir() else tmp_path)
    with pytest.raises(DataContractError, match="does not exist"):
        find_kuairand_files(tmp_path / "absent")


def test_release_top_folder_with_data_subfolder(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "KuaiRand-Pure" / "data")
    files = find_kuairand_files(tmp_path / "KuaiRand-Pure")
    assert files.root.name == "data" and len(files.standard) == 2 and len(files.random) == 1


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_convert_keeps_the_source_column(tmp_path, fmt, loaded):
    info = convert_kuairand(FIXTURE, tmp_path / "out", fmt)
    back, report = read_dataset(tmp_path / "out")
    pd.testing.assert_frame_equal(back.impressions, loaded[0].impressions)
    pd.testing.assert_frame_equal(back.watches, loaded[0].watches)
    assert back.impressions["source"].eq("random").sum() == 3
    saved = json.loads((tmp_path / "out" / "source_info.json").read_text())
    assert saved["counts"] == info["counts"]


# --------------------------------------------------------------------------- real metadata


@pytest.mark.skipif(not REAL.is_dir(), reason="shared KuaiRand metadata not present")
def test_real_video_and_user_tables():
    items, c = load_kuairand_items(REAL / "video_features_basic_pure.csv")
    # data README: 7,583 videos, 239 missing durations, 96 missing tags
    assert len(items) == c["videos_in_video_file"] == 7_583
    assert c["videos_without_duration"] == int(items["duration"].isna().sum()) == 239
    assert c["videos_without_tag"] == int((items["topics"].map(len) == 0).sum()) == 96
    # upload dates 2022-04-09 .. 2022-04-11 (Beijing)
    assert items["upload_time"].min() == APR10_BJ - 86_400
    assert items["upload_time"].max() == APR11_BJ
    assert items["duration"].min() > 0
    users, uc = load_kuairand_users(REAL / "user_features_pure.csv", snapshot_user_features=True)
    assert len(users) == 27_285 and users["user_id"].is_unique
    assert uc["users_with_unknown_active_degree"] == 6
    assert uc["is_live_streamer_missing"] == int(users["is_live_streamer"].isna().sum()) > 0
    assert len([c for c in users.columns if c.startswith("active_degree_")]) == 8
