"""`vidrec experiment movielens-table`: the per-user last-watches holdout, the movielens preset,
and an end-to-end run on a tiny MovieLens directory written in the official ml-latest layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vidrec.features.tables import Dataset
from vidrec.pipelines import experiments_real
from vidrec.pipelines.cli import main
from vidrec.pipelines.config import ConfigError, flatten, load_preset, resolve_config
from vidrec.pipelines.experiments_real import (
    METHODS,
    hold_out_last_watches,
    query_features,
    run_movielens_table,
)
from vidrec.pipelines.run import cg_config, featurizer_from_config

torch.set_num_threads(1)

# a candidate generator small enough for a few seconds per training
TINY_CG = [
    "candidate_gen.embedding_dim=8",
    "candidate_gen.user_layers=[8]",
    "candidate_gen.num_negatives=16",
    "candidate_gen.batch_size=64",
    "candidate_gen.ssl_batch_size=16",
    "candidate_gen.epochs=2",
    "candidate_gen.patience=1",
]


def _dataset() -> Dataset:
    # user 1: times 100, 200, 300, 300, 400 -> with n_last=2 the cut is the 2nd-last time, 300;
    #         both watches at 300 are held out with the one at 400 (3 targets), history {10, 11}
    # user 2: 10@50, 10@60 (a rewatch), 11@70 -> cut 60; held out 10, 11; 10 is in the
    #         history, so the only target is 11
    # user 3: two watches at 500 -> cut 500: no history left, counted, not evaluated
    # user 4: 11@10, 11@20, 11@30 -> cut 20: history {11}, held-out {11} is no new item
    watches = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4],
            "item_id": [14, 13, 12, 11, 10, 10, 10, 11, 12, 13, 11, 11, 11],
            "timestamp": [400, 300, 300, 200, 100, 50, 60, 70, 500, 500, 10, 20, 30],
        }
    )
    searches = pd.DataFrame(
        {"user_id": [1, 1, 5], "timestamp": [250, 300, 999], "query": ["a", "b", "c"]}
    )
    items = pd.DataFrame({"item_id": [10, 11, 12, 13, 14], "upload_time": [0] * 5})
    users = pd.DataFrame({"user_id": [1, 2, 3, 4, 5]})
    return Dataset(users=users, items=items, watches=watches, searches=searches)


def test_holdout_cuts_each_users_last_watches_with_ties():
    h = hold_out_last_watches(_dataset(), 2)
    assert h.users.tolist() == [1, 2]
    assert h.at_time.tolist() == [300, 60]
    assert [x.tolist() for x in h.history] == [[10, 11], [10]]
    assert [x.tolist() for x in h.targets] == [[12, 13, 14], [11]]
    # held out: user 1: 3, user 2: 2, user 3: 2, user 4: 2 -> 9 of 13 watches
    assert h.n_held_out == 9 and len(h.train.watches) == 13 - 9
    assert h.n_users_without_history == 1 and h.n_users_without_targets == 1
    # user 1's search at the cut second (300) is the future; user 5 has no watches: kept
    assert h.train.searches["timestamp"].tolist() == [250, 999]
    # the training log holds nothing at or after any user's cut
    cut = dict(zip([1, 2, 3, 4], [300, 60, 500, 20], strict=True))
    tw = h.train.watches
    assert (tw["timestamp"] < tw["user_id"].map(cut)).all()
    s = h.summary()
    assert s["users_evaluated"] == 2 and s["targets_per_user_mean"] == 2.0  # (3 + 1) / 2


def test_holdout_applied_twice_gives_the_validation_split():
    test = hold_out_last_watches(_dataset(), 1)
    # n_last=1: user 1 cut 400 (holds 14), user 2 cut 70 (holds 11), user 4 cut 30
    assert test.users.tolist() == [1, 2] and test.at_time.tolist() == [400, 70]
    valid = hold_out_last_watches(test.train, 1)
    # on the rest, user 1's last time is 300 (two watches tie), user 2's is 60 (a rewatch of
    # 10, no new target), user 4's is 20 (a rewatch)
    assert valid.users.tolist() == [1] and valid.at_time.tolist() == [300]
    assert valid.targets[0].tolist() == [12, 13] and valid.history[0].tolist() == [10, 11]


def test_holdout_refuses_bad_input():
    ds = _dataset()
    with pytest.raises(ValueError, match="n_last must be a positive integer"):
        hold_out_last_watches(ds, 0)
    with pytest.raises(ValueError, match="n_last must be a positive integer"):
        hold_out_last_watches(ds, True)  # type: ignore[arg-type]
    empty = Dataset(users=ds.users, items=ds.items, watches=ds.watches.iloc[:0])
    with pytest.raises(ValueError, match="'watches' is empty"):
        hold_out_last_watches(empty, 1)
    no_time = Dataset(users=ds.users, items=ds.items, watches=ds.watches.drop(columns="timestamp"))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['timestamp'\]"):
        hold_out_last_watches(no_time, 1)


def test_movielens_preset_resolves_and_validates():
    cfg = resolve_config("movielens")
    assert set(flatten(cfg)) == set(flatten(load_preset("tiny")))  # the same schema
    assert cfg["data"]["source"] == "movielens"
    cg = cg_config(cfg)  # validated by CandidateGenConfig
    assert cg.max_examples_per_user is None  # 0 in TOML = every rollback example
    assert cg.normalize_embeddings and cg.temperature < 1.0 and cg.patience > 0
    featurizer_from_config(cfg)  # validated by CandidateFeaturizer
    over = resolve_config("movielens", ["candidate_gen.ssl=none"], seed=2)
    assert over["candidate_gen"]["ssl"] == "none" and over["seed"] == 2
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_config("movielens", ["candidate_gen.temprature=0.1"])


def test_query_features_carry_the_example_age_of_the_cut():
    ds = _dataset()
    h = hold_out_last_watches(ds, 2)
    cfg = resolve_config("movielens")
    train = h.train
    from vidrec.features.split import TimeSplit

    # training log times 10 .. 200 -> window [10, 201): 191 s long
    f = featurizer_from_config(cfg).fit(train, TimeSplit(10, 201, 201, 201))
    feats = query_features(f, train, h.users, h.at_time)
    # age of a cut = (201 - cut) / 191 clipped to [0, 1]: user 1 (300) -> 0, user 2 (60) -> 141/191
    a = np.array([0.0, 141 / 191])
    np.testing.assert_allclose(feats.example_age[:, 0], a, rtol=1e-6)
    np.testing.assert_allclose(feats.example_age[:, 1], a**2, rtol=1e-6)
    np.testing.assert_allclose(feats.example_age[:, 2], np.sqrt(a), rtol=1e-6)


def write_ml_latest(root: Path, n_users: int = 14, n_movies: int = 30, seed: int = 0) -> Path:
    """Write a tiny ml-latest directory (ratings.csv, movies.csv, tags.csv), official columns."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    genres = ["Action", "Comedy", "Drama", "Horror"]
    movies = pd.DataFrame(
        {
            "movieId": np.arange(1, n_movies + 1),
            "title": [f"Movie {i} ({1980 + i % 30})" for i in range(1, n_movies + 1)],
            "genres": [f"{genres[i % 4]}|{genres[(i + 1) % 4]}" for i in range(n_movies)],
        }
    )
    movies.to_csv(root / "movies.csv", index=False)
    rows = []
    for u in range(1, n_users + 1):  # per user: a taste (a genre) and a session in time
        n = int(rng.integers(12, 18))
        taste = np.flatnonzero(np.arange(n_movies) % 4 == u % 4)
        pool = np.unique(np.r_[taste, rng.choice(n_movies, size=8, replace=False)])
        picked = rng.choice(pool, size=min(n, len(pool)), replace=False) + 1
        t0 = 1_000_000_000 + int(rng.integers(0, 10**7))
        times = t0 + np.sort(rng.integers(0, 50_000, size=len(picked)))
        rows += [(u, int(m), 4.0, int(t)) for m, t in zip(picked, times, strict=True)]
    pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(
        root / "ratings.csv", index=False
    )
    pd.DataFrame(
        {"userId": [1, 2], "movieId": [1, 2], "tag": ["funny", "dark"], "timestamp": [1, 2]}
    ).to_csv(root / "tags.csv", index=False)
    return root


def test_movielens_table_end_to_end(tmp_path, monkeypatch):
    data = write_ml_latest(tmp_path / "ml")
    out = tmp_path / "table"
    res = run_movielens_table(data, out=out, seeds=[0, 1], overrides=TINY_CG, n_last=3)
    assert [e["method"] for e in res["table"]] == list(METHODS)
    md = (out / "movielens_table.md").read_text("utf-8")
    saved = json.loads((out / "movielens_table.json").read_text("utf-8"))
    assert saved["label"] == "movielens-ml, test holdout"  # the source named once
    assert "**movielens-ml, test holdout**" in md and "most popular" in md and "PureSVD" in md
    assert saved["protocol"]["test"]["n_last"] == 3
    by = {e["method"]: e for e in saved["table"]}
    for det in ("most_popular", "item_knn"):  # deterministic: identical over seeds
        assert all(by[det][c]["std"] == 0.0 for c in experiments_real.TABLE_COLUMNS)
    for e in saved["table"]:
        r50 = e["recall@50"]["mean"]
        assert 0.0 <= r50 <= 1.0 and e["seeds"] == 2
    cg_rows = [r for r in saved["rows"] if r["method"] == "cg_ssl"]
    # the epoch count was chosen on validation (1 or 2) and each epoch was scored there
    assert all(r["setting"] in ("epochs=1", "epochs=2") for r in cg_rows)
    assert all(1 <= len(r["validation_curve"]) <= 2 for r in cg_rows)
    assert (out / "seed0" / "cg_no_ssl" / "validation_curve.json").is_file()

    # a rerun reuses every finished (seed, method) result: no training happens
    def no_training(*args, **kwargs):
        raise AssertionError("a finished result was recomputed")

    monkeypatch.setattr(experiments_real, "train_candidate_generator", no_training)
    again = run_movielens_table(data, out=out, seeds=[0, 1], overrides=TINY_CG, n_last=3)
    assert again["table"] == res["table"]


def test_movielens_table_cli(tmp_path, capsys):
    data = write_ml_latest(tmp_path / "ml")
    rc = main(
        [
            "experiment",
            "movielens-table",
            "--data-dir",
            str(data),
            "--out",
            str(tmp_path / "o"),
            "--seeds",
            "0",
            "--holdout",
            "3",
            "--only",
            "most_popular;item_knn",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| most popular |" in printed and "| item-kNN (cosine) |" in printed
    assert "PureSVD" not in printed.split("| method |")[1].split("\n\n")[0]
    rc = main(["experiment", "movielens-table", "--out", str(tmp_path / "o")])
    assert rc != 0
    assert "needs --data-dir" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown method"):
        run_movielens_table(data, out=tmp_path / "x", seeds=[0], methods=["als"])
    with pytest.raises(ValueError, match="at least one seed"):
        run_movielens_table(data, out=tmp_path / "x", seeds=[])
