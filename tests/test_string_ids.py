"""String ids kept as given end to end, and extra columns of users and items typed as features.

The fixture is a MovieLens-style directory: users `u1..`, movies `m1..` (string ids), an extra
text column of users (`occupation`), an identifier-like one (`email`), a numeric extra column
of items (`budget`) and a '|'-separated one (`genres`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vidrec.candidate_gen.config import CandidateGenConfig
from vidrec.candidate_gen.towers import ItemBatch, TwoTowerModel, UserBatch
from vidrec.features.examples import CandidateFeaturizer
from vidrec.features.ids import ID_MAPS_FILE, IdMaps, UnknownIdError, to_codes, to_data_ids
from vidrec.features.io import COLUMN_TYPES_FILE, read_dataset, write_dataset
from vidrec.features.ranker_features import (
    CONTINUOUS_COLUMNS,
    RankerVocabularies,
    build_ranker_frame,
)
from vidrec.features.schema import DataContractError
from vidrec.features.split import TimeSplit
from vidrec.pipelines.cli import main
from vidrec.pipelines.commands import id_value
from vidrec.pipelines.config import ConfigError, resolve_config

T0 = 1_600_000_000
DAY = 86_400
OCCUPATIONS = ("doctor", "engineer", "artist", "student", "writer")
GENRES = ("Action", "Drama", "Comedy", "Horror", "Romance", "SciFi")


def movielens_style(root: Path, n_users: int = 60, n_items: int = 40, seed: int = 0) -> Path:
    """Write a MovieLens-style data directory with string ids and extra columns (CSV)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    occupation = np.array(OCCUPATIONS)[rng.integers(0, len(OCCUPATIONS), n_users)]
    pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(1, n_users + 1)],
            "occupation": occupation,
            "email": [f"user{i}@example.org" for i in range(1, n_users + 1)],
            "gender": rng.choice(["F", "M"], n_users),
        }
    ).to_csv(root / "users.csv", index=False)
    g1 = rng.integers(0, len(GENRES), n_items)
    g2 = (g1 + rng.integers(1, len(GENRES), n_items)) % len(GENRES)
    pd.DataFrame(
        {
            "item_id": [f"m{i}" for i in range(1, n_items + 1)],
            "upload_time": T0 - DAY * rng.integers(1, 400, n_items),
            "title": [f"Movie {i}" for i in range(1, n_items + 1)],
            "genres": [f"{GENRES[a]}|{GENRES[b]}" for a, b in zip(g1, g2, strict=True)],
            "budget": np.round(rng.lognormal(3.0, 1.0, n_items), 2),
        }
    ).to_csv(root / "items.csv", index=False)
    rows = []
    for u in range(n_users):  # a fixture of a few dozen users
        k = int(rng.integers(15, 30))
        items = rng.choice(n_items, size=k, replace=False)
        rows.append(
            pd.DataFrame(
                {
                    "user_id": f"u{u + 1}",
                    "item_id": [f"m{i + 1}" for i in items],
                    "timestamp": np.sort(T0 + rng.integers(0, 60 * DAY, k)),
                }
            )
        )
    pd.concat(rows, ignore_index=True).to_csv(root / "watches.csv", index=False)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return movielens_style(tmp_path_factory.mktemp("ml") / "data")


# ----------------------------------------------------------------------------- the contract


def test_validate_accepts_string_ids_and_reports_column_types(data_dir, capsys):
    assert main(["validate", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "ids: user ids string, item ids string" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ") and "." in ln}
    assert "categorical  text, 5 distinct values (inferred)" in lines["users.occupation"]
    assert "ignored" in lines["users.email"] and "an identifier" in lines["users.email"]
    assert "continuous   numbers (inferred)" in lines["items.budget"]
    assert "multi        '|'-separated text, 6 distinct values" in lines["items.genres"]
    assert "user ids are strings (60 distinct, e.g. 'u1', 'u10', 'u11')" in out


def test_string_ids_become_sorted_codes_and_round_trip(data_dir, tmp_path):
    ds, report = read_dataset(data_dir)
    assert ds.ids is not None and ds.ids.is_string("user") and ds.ids.is_string("item")
    users = ds.ids.ids["user"]
    assert users.tolist() == sorted(users.tolist())  # deterministic: sorted order
    assert ds.users["user_id"].dtype == np.int64
    raw = pd.read_csv(data_dir / "watches.csv")
    np.testing.assert_array_equal(ds.ids.labels("user", ds.watches["user_id"]), raw["user_id"])
    np.testing.assert_array_equal(ds.ids.labels("item", ds.watches["item_id"]), raw["item_id"])
    assert ds.columns == {
        "users": {"occupation": "categorical"},
        "items": {"genres": "multi", "budget": "continuous"},
    }
    assert ds.items["genres"].iloc[0] == pd.read_csv(data_dir / "items.csv")["genres"][0].split("|")
    # the run's data stage writes the codes with their map and the column types
    out = write_dataset(ds, tmp_path / "tables")
    assert (out / ID_MAPS_FILE).is_file() and (out / COLUMN_TYPES_FILE).is_file()
    back, back_report = read_dataset(out)
    assert back.ids is not None and back_report.ignored_files == []
    for table in ("users", "items", "watches"):
        pd.testing.assert_frame_equal(back.table(table), ds.table(table))
    assert back.columns == ds.columns
    np.testing.assert_array_equal(back.ids.ids["item"], ds.ids.ids["item"])


def test_integer_ids_stay_integers_without_maps(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "users.csv").write_text("user_id,age\n1,30\n2,40\n", encoding="utf-8")
    (root / "items.csv").write_text("item_id,upload_time\n10,0\n11,0\n", encoding="utf-8")
    (root / "watches.csv").write_text("user_id,item_id,timestamp\n1,10,5\n2,11,6\n", "utf-8")
    ds, report = read_dataset(root)
    assert ds.ids is None and report.id_types == {"user": "integer", "item": "integer"}
    assert ds.watches["user_id"].tolist() == [1, 2]
    out = write_dataset(ds, tmp_path / "w")
    names = sorted(p.name for p in out.iterdir() if p.name != ".vidrec-data")
    assert names == ["items.parquet", "users.parquet", "watches.parquet"]


def test_digit_ids_beside_string_ids_keep_their_text(tmp_path):
    # users.csv alone reads as integers (007 -> 7); watches.csv's 'u1' makes every user id a
    # string, so users.csv is read again as text: '007' is the id, not 7
    root = tmp_path / "d"
    root.mkdir()
    (root / "users.csv").write_text("user_id\n007\nu1\n", encoding="utf-8")
    (root / "items.csv").write_text("item_id,upload_time\n10,0\n", encoding="utf-8")
    (root / "watches.csv").write_text("user_id,item_id,timestamp\n007,10,5\nu1,10,6\n", "utf-8")
    ds, _ = read_dataset(root)
    assert ds.ids is not None and ds.ids.ids["user"].tolist() == ["007", "u1"]
    assert not ds.ids.is_string("item") and ds.watches["item_id"].tolist() == [10, 10]
    (root / "users.csv").write_text("user_id\n7\nu1\n", encoding="utf-8")
    with pytest.raises(DataContractError, match="unknown user_id") as exc:
        read_dataset(root)
    assert "user_id='007'" in str(exc.value)  # messages show the data's ids


def test_a_broken_integer_column_is_refused_not_taken_as_string_ids(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "users.csv").write_text("user_id\n1\n2\n100\n", encoding="utf-8")
    (root / "items.csv").write_text("item_id,upload_time\n10,0\n", encoding="utf-8")
    (root / "watches.csv").write_text(
        "user_id,item_id,timestamp\n1,10,5\n2,10,6\n1e2,10,7\n73.0,10,8\n", encoding="utf-8"
    )
    with pytest.raises(DataContractError, match="not as plain integer text") as exc:
        read_dataset(root)
    assert "watches.csv" in str(exc.value) and "user_id='1e2'" in str(exc.value)


def test_id_maps_codes_labels_and_unknown_ids():
    maps = IdMaps({"item": np.array(["a", "b", "c"], dtype=object)})
    assert maps.codes("item", ["c", "zz", "a"]).tolist() == [2, -1, 0]
    assert maps.labels("item", [1, -1]).tolist() == ["b", None]
    assert maps.codes("user", [5, "7", "u1"]).tolist() == [5, 7, -1]  # integer space
    assert maps.label("user", 5) == 5 and maps.label("item", 0) == "a"
    with pytest.raises(UnknownIdError, match="item 'zz' is not in the data"):
        maps.code("item", "zz")
    frame = pd.DataFrame({"user_id": [3, 4], "item_id": [2, 0]}, index=[5, 9])
    shown = to_data_ids(maps, frame)
    assert shown["item_id"].tolist() == ["c", "a"] and shown["user_id"].tolist() == [3, 4]
    pd.testing.assert_frame_equal(to_codes(maps, shown), frame)
    with pytest.raises(UnknownIdError, match="not ids of this data"):
        to_codes(maps, shown.assign(item_id=["c", "nope"]))
    assert IdMaps.from_frame(maps.to_frame()).ids["item"].tolist() == ["a", "b", "c"]


def test_cli_id_values():
    assert id_value("42") == 42 and id_value("u1") == "u1"
    assert id_value("dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert id_value("007") == "007"  # '007' is user 7 of integer ids, and '007' of string ids
    assert id_value("123e4567-e89b-12d3-a456-426614174000").startswith("123e4567")
    for bad, message in (
        ("1e2", "ids are integer text, got '1e2'"),
        ("73.0", "ids are integer text"),
        ("", "without surrounding spaces"),
        (" u1", "without surrounding spaces"),
        ("99999999999999999999", "outside 0.."),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            id_value(bad)


def test_config_declares_column_types():
    cfg = resolve_config(
        "tiny", ["data.columns.zip=categorical", "data.columns.items.budget=ignore"]
    )
    assert cfg["data"]["columns"] == {"zip": "categorical", "items": {"budget": "ignore"}}
    assert "columns" not in resolve_config("tiny")["data"]  # nothing declared: no key at all
    for bad, message in (
        ("data.columns.zip=numeric", "expects one of categorical, continuous, multi, ignore"),
        ("data.columns.watches.rating=ignore", "only extra columns of users and items"),
        ("data.columns.a.b.c=ignore", "declare a column as"),
    ):
        with pytest.raises(ConfigError, match=message):
            resolve_config("tiny", [bad])


def test_validate_applies_declarations(data_dir, capsys):
    args = ["validate", str(data_dir), "--set", "data.columns.email=categorical"]
    assert main([*args, "--set", "data.columns.users.gender=ignore"]) == 3
    assert "a contract column of users" in capsys.readouterr().err
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "users.email" in out and "text, 60 distinct values (declared in data.columns)" in out
    ds, report = read_dataset(data_dir, columns={"budget": "ignore", "genres": "categorical"})
    assert ds.columns["items"] == {"genres": "categorical"}
    assert ds.items["genres"].iloc[0].count("|") == 1  # one category, not split
    assert "declared 'ignore'" in report.column_reasons["items"]["budget"]


# ----------------------------------------------------------------------------- features


def _split(ds) -> TimeSplit:
    return TimeSplit.from_fractions(ds, train=0.7, valid=0.15)


def test_candidate_featurizer_uses_the_extra_columns(data_dir):
    ds, _ = read_dataset(data_dir)
    # a multi-valued user column too
    ds.users["langs"] = [["en", "fr"] if i % 2 else ["en"] for i in range(len(ds.users))]
    ds.columns["users"]["langs"] = "multi"
    f = CandidateFeaturizer(max_topics=3).fit(ds, _split(ds))
    assert f.user_categorical_ == ("gender", "occupation")
    assert f.user_multi_ == ("langs",) and len(f.user_tag_vocab_) == 3  # OOV, en, fr
    schema = f.schema()
    assert "budget_bucket" in schema["item_single"] and schema["user_tag_cardinality"] == 3
    items = f.item_features(ds)
    assert items.topics.shape == (len(ds.items), 3)  # the genres, as the item's bag
    assert set(f.topic_vocab_.values_.tolist()) == {f"genres={g}" for g in GENRES}
    ex = f.examples(ds, "train")
    assert ex.features.tags.shape == (len(ex), 3) and (ex.features.tags[:, 0] > 0).all()
    cfg = CandidateGenConfig(embedding_dim=8, user_layers=(8,), num_negatives=4)
    model = TwoTowerModel(cfg, schema)
    users = UserBatch.from_features(ex.features.take(np.arange(4)))
    scores = model(users, ItemBatch.from_features(items))
    assert scores.shape == (4, len(ds.items)) and torch.isfinite(scores).all()
    # saved and loaded, the featurizer gives the same features
    again = CandidateFeaturizer.from_dict(json.loads(json.dumps(f.to_dict())))
    np.testing.assert_array_equal(again.item_features(ds).single, items.single)
    np.testing.assert_array_equal(again.examples(ds, "train").features.tags, ex.features.tags)


def test_ranker_frame_takes_the_items_extra_columns(data_dir):
    ds, _ = read_dataset(data_dir)
    req = ds.watches[["user_id", "item_id", "timestamp"]].iloc[:200].reset_index(drop=True)
    frame = build_ranker_frame(ds, req.assign(source="cg"), history_len=5)
    assert list(frame.continuous.columns) == [*CONTINUOUS_COLUMNS, "item.budget"]
    pos = pd.Index(ds.items["item_id"]).get_indexer(req["item_id"])
    budget = ds.items["budget"].to_numpy()[pos]
    np.testing.assert_array_equal(frame.continuous["item.budget"], budget)
    bag = frame.attributes[frame.topic_row[0]]
    assert {v for v in bag if v} == {f"genres={g}" for g in ds.items["genres"].iloc[pos[0]]}
    vocabs = RankerVocabularies.fit(frame.take(np.arange(150)))
    assert vocabs.spaces[-1] == "attribute" and vocabs.sizes()["attribute"] > 1
    codes = vocabs.encode(frame)
    assert codes.attributes(np.arange(3)).shape[0] == 3
    back = RankerVocabularies.from_dict(json.loads(json.dumps(vocabs.to_dict())))
    assert back.sizes() == vocabs.sizes()


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_run_recommend_and_predict_speak_the_data_ids(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--preset", "tiny", "--data", str(data_dir), "--out", str(out), "--no-progress"]
    # the ranker's epoch count chosen over folds of its training users (small logs)
    assert main([*args, "--set", "ranking.epoch_folds=3"]) == 0
    capsys.readouterr()
    stage = json.loads((out / "manifest.json").read_text())["stages"]["ranker"]
    for name in ("deep_weighted", "deep_click"):
        epochs, curve = stage[f"{name}_fold_epochs"], stage[f"{name}_fold_valid_loss"]
        assert epochs == 1 + int(np.argmin(curve)) and len(curve) >= epochs
        history = json.loads((out / "ranker" / name / "history.json").read_text())
        assert len(history) == epochs  # trained for exactly that many epochs, the last kept
    assert main(["recommend", "--run", str(out), "--user", "u1", "-k", "5"]) == 0
    text = capsys.readouterr().out
    items = [ln.split()[2] for ln in text.splitlines() if ln.strip()[:1].isdigit()]
    assert len(items) == 5 and all(i.startswith("m") for i in items), text
    # no watch times in this log: the score is the odds of a watch, never "seconds"
    assert "watch odds" in text and " s  (" not in text
    assert main(["recommend", "--run", str(out), "--user", "u1", "-k", "3", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["user"] == "u1" and all(r["item_id"].startswith("m") for r in rec["slate"])
    assert rec["score_unit"] == "watch odds"
    args = ["predict", "--run", str(out), "--user", "u2", "--items", "m1,m2,m999", "--json"]
    assert main(args) == 0
    pred = json.loads(capsys.readouterr().out)
    assert [r["item_id"] for r in pred["items"]] == ["m1", "m2"]
    assert pred["unknown_items"] == ["m999"] and pred["note"] == ""
    assert main(["recommend", "--run", str(out), "--user", "nobody", "-k", "2"]) == 0
    assert "user nobody is not in the data (cold start)" in capsys.readouterr().out
    cands = pd.read_parquet(out / "retrieval" / "candidates.parquet")
    assert cands["user_id"].str.startswith("u").all() and cands["item_id"].str.startswith("m").all()
    slates = pd.read_parquet(out / "end_to_end" / "slates.parquet")
    assert slates["item_id"].str.startswith("m").all()
    ranker = json.loads((out / "ranker" / "deep_weighted" / "model" / "ranker.json").read_text())
    assert "attribute" in ranker["model"]["vocab_sizes"]  # the genres reach the ranker
