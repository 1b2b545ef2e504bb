"""`vidrec experiment loo`: the leave-last-out split, exclusions, tuning on validation only, the
CLI and its output files (tiny hand-made logs and the tiny ml-latest directory of
test_experiments_real)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_experiments_real import TINY_CG, write_ml_latest

from vidrec.candidate_gen.train import train_candidate_generator
from vidrec.features.tables import Dataset
from vidrec.pipelines import experiments_loo
from vidrec.pipelines.cli import main
from vidrec.pipelines.config import UsageError, resolve_config
from vidrec.pipelines.experiments_loo import (
    LeaveLastOut,
    baseline_models,
    leave_last_out,
    render_markdown,
    run_baseline,
    run_loo,
    tie_order,
)
from vidrec.pipelines.experiments_real import cg_rankings, evaluate_rankings, fit_cg
from vidrec.pipelines.rechub import export_queries, rechub_python
from vidrec.pipelines.run import load_source

torch.set_num_threads(1)

BASELINES = ("most_popular", "recent_popular", "item_knn", "ease", "pure_svd")


def _dataset(watches: list[tuple[int, int, int]], n_items: int = 20, searches=None) -> Dataset:
    w = pd.DataFrame(watches, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": np.arange(n_items), "upload_time": 0})
    users = pd.DataFrame({"user_id": np.unique(w["user_id"])})
    return Dataset(users=users, items=items, watches=w, searches=searches)


# ----------------------------------------------------------------------------- the split


def _split_log() -> Dataset:
    # user 1: 10@100, 11@200, then 12 and 13 in the same second (300): the tie order decides
    # user 2: two watches: skipped, kept in training
    # user 3: 5@10, 5@20 (a repeat: dropped), 6@30, 7@40 -> 3 distinct: history {5}, 6, 7
    watches = [
        (1, 12, 300), (1, 10, 100), (1, 13, 300), (1, 11, 200),
        (2, 10, 50), (2, 11, 60),
        (3, 5, 10), (3, 5, 20), (3, 6, 30), (3, 7, 40),
    ]  # fmt: skip
    searches = pd.DataFrame(
        {"user_id": [1, 1, 3, 3], "timestamp": [250, 300, 35, 40], "query": ["a", "b", "c", "d"]}
    )
    return _dataset(watches, searches=searches)


def test_split_holds_out_the_last_and_second_last_watch_per_user():
    split = leave_last_out(_split_log())
    test, valid = split.test, split.valid
    k12, k13 = tie_order(np.array([1, 1]), np.array([12, 13]))
    last, before = (13, 12) if k13 > k12 else (12, 13)  # the larger key is later in the second
    assert test.users.tolist() == [1, 3] and valid.users.tolist() == [1, 3]
    assert [t.tolist() for t in test.targets] == [[last], [7]]
    assert [t.tolist() for t in valid.targets] == [[before], [6]]
    assert [h.tolist() for h in test.history] == [sorted([10, 11, before]), [5, 6]]
    assert [h.tolist() for h in valid.history] == [[10, 11], [5]]
    # served from every training watch of the user: the second after the target's
    assert test.at_time.tolist() == [301, 41] and valid.at_time.tolist() == [301, 31]
    s = split.summary()
    assert s["users_skipped_fewer_watches"] == 1 and s["repeat_watches_dropped"] == 1
    assert s["users"] == 3 and s["users_evaluated"] == 2

    def pairs(ds: Dataset) -> set[tuple[int, int]]:
        return set(zip(ds.watches["user_id"], ds.watches["item_id"], strict=True))

    # the skipped user's watches stay in both training logs; the repeat is gone
    assert {(2, 10), (2, 11)} <= pairs(test.train) and {(2, 10), (2, 11)} <= pairs(valid.train)
    assert len(test.train.watches) == 10 - 1 - 2 and len(valid.train.watches) == 10 - 1 - 4
    assert (1, last) not in pairs(test.train) and (1, before) in pairs(test.train)
    assert not {(1, last), (1, before), (3, 6), (3, 7)} & pairs(valid.train)
    # searches at or after the target's second are removed (test: 300 and 40; valid: 300, 35)
    assert test.train.searches["timestamp"].tolist() == [250, 35]
    assert valid.train.searches["timestamp"].tolist() == [250]


def test_split_does_not_depend_on_row_order():
    ds = _split_log()
    a = leave_last_out(ds)
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(len(ds.watches))
        b = leave_last_out(_dataset(ds.watches.iloc[perm].values.tolist(), searches=ds.searches))
        for h in ("test", "valid"):
            x, y = getattr(a, h), getattr(b, h)
            assert [t.tolist() for t in x.targets] == [t.tolist() for t in y.targets]
            assert [t.tolist() for t in x.history] == [t.tolist() for t in y.history]
            assert x.at_time.tolist() == y.at_time.tolist()


def test_tie_order_is_fixed_and_not_the_item_order():
    items = np.arange(1, 101)
    keys = tie_order(np.full(100, 7), items)
    assert keys.dtype == np.uint64 and len(np.unique(keys)) == 100
    np.testing.assert_array_equal(keys, tie_order(np.full(100, 7), items))
    assert not (np.diff(keys.astype(np.float64)) > 0).all()  # not monotone in the item id
    assert (tie_order(np.full(100, 8), items) != keys).any()  # depends on the user


def test_split_refuses_bad_input():
    ds = _split_log()
    with pytest.raises(ValueError, match="min_watches must be an integer >= 3"):
        leave_last_out(ds, 2)
    with pytest.raises(ValueError, match="'watches' is empty"):
        leave_last_out(Dataset(users=ds.users, items=ds.items, watches=ds.watches.iloc[:0]))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['timestamp'\]"):
        leave_last_out(
            Dataset(users=ds.users, items=ds.items, watches=ds.watches.drop(columns="timestamp"))
        )


# ----------------------------------------------------------------------------- exclusions


@pytest.fixture(scope="module")
def ml(tmp_path_factory) -> Path:
    return write_ml_latest(tmp_path_factory.mktemp("loo") / "ml", n_users=20, n_movies=60)


def _ml_split(ml: Path) -> tuple[Dataset, LeaveLastOut, np.ndarray]:
    ds, _ = load_source("movielens", ml)
    return ds, leave_last_out(ds), np.unique(ds.items["item_id"].to_numpy(np.int64))


def _assert_excluded(ids: np.ndarray, split: LeaveLastOut) -> None:
    test = split.test
    w = test.train.watches
    assert ids.shape == (len(test.users), 100)
    for row, user, history in zip(ids, test.users, test.history, strict=True):
        # the exclusions are exactly the user's training items
        trained = np.unique(w.loc[w["user_id"] == user, "item_id"].to_numpy())
        np.testing.assert_array_equal(history, trained)
        assert not np.isin(row, history).any()
        assert len(np.unique(row[row >= 0])) == (row >= 0).sum()


def _assert_fills_the_catalog(ids: np.ndarray, split: LeaveLastOut, catalog: np.ndarray) -> None:
    """Every catalog item but the user's training items is ranked (60 items < 100 slots)."""
    left = len(catalog) - np.array([len(h) for h in split.test.history])
    np.testing.assert_array_equal((ids >= 0).sum(axis=1), left)
    assert (ids[:, : left.min()] >= 0).all()  # padding only at the end


def test_every_model_ranks_the_catalog_without_the_training_items(ml):
    ds, split, catalog = _ml_split(ml)
    config = resolve_config("movielens", TINY_CG)
    specs = baseline_models(config, BASELINES, split.valid.train)
    assert list(specs) == list(BASELINES)
    for name in BASELINES:
        row, ids = run_baseline(name, specs[name], split, catalog)
        assert ids is not None, row
        _assert_excluded(ids, split)
        if name in ("most_popular", "recent_popular"):  # they rank every item
            _assert_fills_the_catalog(ids, split, catalog)
    cfg, examples, item_feats, _ = fit_cg(config, split.test.train, ds.items)
    model = train_candidate_generator(cfg.replace(epochs=1), examples, item_feats, progress=False)
    ids = cg_rankings(model, split.test, 100)
    _assert_excluded(ids, split)
    _assert_fills_the_catalog(ids, split, catalog)  # items watched in training or not


# ----------------------------------------------------------------------------- tuning


def _tuning_log() -> Dataset:
    """A log where validation and test prefer different recent-popular windows.

    Items 100..159 are watched 3 times in [0, 500) and 3 times in [500, 1000); item 1 ten
    times in [0, 500) only; item 2 five times in [500, 1000) only (one-or-two-watch users,
    never evaluated). Over the whole log item 1 ranks first and item 2 after the 60 others;
    over its last half item 2 first and item 1 last. Three evaluated users: a history item,
    then item 2 (validation target) and item 1 (test target): validation prefers the half
    window, the test targets the whole log.
    """
    rows, user = [], 1000
    rng = np.random.default_rng(0)
    for f in range(60):
        for _ in range(3):
            rows += [(user, 100 + f, int(rng.integers(1, 500))),
                     (user, 100 + (f + 1) % 60, int(rng.integers(500, 999)))]  # fmt: skip
            user += 1
    rows[0] = (rows[0][0], rows[0][1], 0)  # the log spans [0, 1000)
    rows[1] = (rows[1][0], rows[1][1], 999)
    for j in range(10):
        rows.append((user + j, 1, int(rng.integers(1, 500))))
    for j in range(5):
        rows.append((user + 10 + j, 2, int(rng.integers(500, 999))))
    for u, h in ((1, 100), (2, 101), (3, 102)):
        rows += [(u, h, 100), (u, 2, 900), (u, 1, 950)]
    return _dataset(rows, n_items=160)


def test_tuning_reads_the_validation_targets_never_the_test_targets():
    ds = _tuning_log()
    split = leave_last_out(ds)
    assert split.test.users.tolist() == [1, 2, 3]
    catalog = np.arange(160)
    config = resolve_config("movielens", ["retrieval_baselines.recent_popular_halvings=1"])
    spec = baseline_models(config, ["recent_popular"], split.valid.train)["recent_popular"]
    model, grid, label = spec
    assert grid == [1000, 500]
    row, _ = run_baseline("recent_popular", spec, split, catalog)
    # validation targets (item 2) are hit only by the half window: it is chosen
    assert row["validation"]["scores"] == [0.0, 1.0]
    assert row["setting"] == label(500)
    # the test targets (item 1) would have chosen the whole log: the choice ignored them
    end = int(split.test.train.watches["timestamp"].max()) + 1
    oracle = []
    for _, fitted in model.fit_grid(split.test.train, end, grid):
        ids, _ = fitted.recommend(split.test.users, 50, exclude=split.test.history)
        oracle.append(evaluate_rankings(ids, split.test, catalog, (50,))["hitrate@50"])
    assert oracle == [1.0, 0.0]
    assert row["test"]["hitrate@50"] == 0.0


def _replace_test_targets(ds: Dataset, split: LeaveLastOut) -> Dataset:
    """The same log with each evaluated user's test watch replaced by a watch of another
    item they never watched, a second after their last watch."""
    w = ds.watches
    test = split.test
    user, item, ts = (w[c].to_numpy() for c in ("user_id", "item_id", "timestamp"))
    catalog = np.unique(ds.items["item_id"].to_numpy())
    drop = np.zeros(len(w), dtype=bool)
    new = []
    for u, target, t in zip(test.users, test.targets, test.at_time - 1, strict=True):
        row = np.flatnonzero((user == u) & (item == target[0]) & (ts == t))
        assert len(row) == 1
        drop[row] = True
        replaced = w.iloc[row].copy()
        replaced["item_id"] = catalog[~np.isin(catalog, item[user == u])][-1]
        replaced["timestamp"] = ts[user == u].max() + 1
        new.append(replaced)
    watches = pd.concat([w.loc[~drop], *new], ignore_index=True)
    return Dataset(users=ds.users, items=ds.items, watches=watches, searches=ds.searches)


def test_changing_the_test_targets_changes_no_choice(ml):
    ds, split, catalog = _ml_split(ml)
    other = _replace_test_targets(ds, split)
    split2 = leave_last_out(other)
    assert [t.tolist() for t in split2.valid.targets] == [t.tolist() for t in split.valid.targets]
    assert [t.tolist() for t in split2.test.targets] != [t.tolist() for t in split.test.targets]
    config = resolve_config("movielens", TINY_CG)
    specs = baseline_models(config, BASELINES, split.valid.train)
    specs2 = baseline_models(config, BASELINES, split2.valid.train)
    for name in BASELINES:
        a, _ = run_baseline(name, specs[name], split, catalog)
        b, _ = run_baseline(name, specs2[name], split2, catalog)
        assert a["validation"] == b["validation"] and a["setting"] == b["setting"], name
    # the CG's epochs: the same validation curve, so the same choice
    a = experiments_loo._cg_row(config, split, ds.items, catalog, Path(ml).parent / "a")
    b = experiments_loo._cg_row(config, split2, other.items, catalog, Path(ml).parent / "b")
    assert a["validation"] == b["validation"] and a["setting"] == b["setting"]
    assert a["test"] != b["test"]


def test_cg_history_length_is_chosen_on_validation_and_refitted(ml, monkeypatch, tmp_path):
    """Every grid length is validated; the best one (and its epochs) is the one refitted;
    a length the user sets is kept and no grid is run."""
    ds, split, catalog = _ml_split(ml)
    validated, refitted = [], []
    scores = {3: 0.10, 10: 0.30, 50: 0.20, 7: 0.05}

    def fake_validate(config, valid, items, catalog, workdir):
        h = config["features"]["max_history"]
        validated.append(h)
        recs = [{"epoch": e, "train_main_loss": 1.0, "valid_recall@50": scores[h] * e / 2}
                for e in (1, 2)]
        return recs, 2

    def fake_refit(config, epochs, test, items, catalog):
        refitted.append((config["features"]["max_history"], epochs))
        test_m = dict.fromkeys(experiments_loo.COLUMNS, 0.5)
        return {"training_examples": 1, "final_fit_seconds": 0.0, "test": test_m}

    monkeypatch.setattr(experiments_loo, "validate_cg", fake_validate)
    monkeypatch.setattr(experiments_loo, "refit_and_test_cg", fake_refit)
    config = resolve_config("movielens", TINY_CG)
    row = experiments_loo._cg_row(config, split, ds.items, catalog, tmp_path)
    assert validated == [3, 10, 50] and refitted == [(10, 2)]
    assert row["max_history"] == 10 and row["valid_hitrate@50"] == pytest.approx(0.30)
    assert config["features"]["max_history"] == 50  # the caller's config is left as it was
    validated.clear(), refitted.clear()
    run_loo(ml, out=tmp_path / "o", seeds=[0], methods=["cg"],
            overrides=[*TINY_CG, "features.max_history=7"])
    assert validated == [7] and refitted == [(7, 2)]


# ----------------------------------------------------------------------------- CLI, outputs


def test_loo_end_to_end_outputs_and_resume(ml, tmp_path, monkeypatch):
    out = tmp_path / "loo"
    res = run_loo(ml, out=out, seeds=[0, 1], overrides=TINY_CG)
    saved = json.loads((out / "loo.json").read_text("utf-8"))
    md = (out / "loo.md").read_text("utf-8")
    assert md == render_markdown(saved) == res["markdown"]  # the table comes from the JSON
    assert [e["method"] for e in saved["table"]] == ["cg", *BASELINES]
    assert saved["protocol"]["name"] == "leave-last-out"
    assert saved["protocol"]["users_evaluated"] == 20
    for row in saved["rows"]:
        assert row["dataset"] == "movielens-ml" and row["protocol"] == "leave-last-out"
        assert row["machine"]["cpu_count"] >= 1 and "processor" in row["machine"]
        assert "commit" in row and "seed" in row
        if "skipped" not in row:
            assert row["fit_seconds"] == pytest.approx(
                row["tune_seconds"] + row["final_fit_seconds"]
            )
            assert set(experiments_loo.COLUMNS) <= set(row["test"])
    by = {e["method"]: e for e in saved["table"]}
    assert by["cg"]["runs"] == 2 and by["cg"]["seeds"] == [0, 1]
    for row in saved["rows"]:
        if row["method"] == "cg":  # the history length chosen on validation, from the grid
            grid = row["validation"]["history_grid"]
            assert set(grid) == {str(h) for h in experiments_loo.CG_HISTORY_GRID}
            best = max(grid.values(), key=lambda g: g["hitrate@50"])
            assert row["valid_hitrate@50"] == best["hitrate@50"]
            assert row["setting"].startswith(f"max_history={row['max_history']},")
    assert by["cg"]["hitrate@50"]["std"] is not None
    for name in BASELINES:  # deterministic: one run, no std
        assert by[name]["runs"] == 1 and by[name]["seeds"] == [None]
        assert by[name]["hitrate@10"]["std"] is None
    assert "1 (deterministic)" in md and "2 seeds" in md and "fit s (incl. tuning)" in md

    # a rerun reuses every finished result
    def fail(*args, **kwargs):
        raise AssertionError("a finished result was recomputed")

    monkeypatch.setattr(experiments_loo, "validate_cg", fail)
    monkeypatch.setattr(experiments_loo, "refit_and_test_cg", fail)
    monkeypatch.setattr(experiments_loo, "run_baseline", fail)
    again = run_loo(ml, out=out, seeds=[0, 1], overrides=TINY_CG)
    assert again["table"] == res["table"]


def test_ease_over_its_memory_budget_is_skipped_with_a_note(ml, tmp_path):
    res = run_loo(
        ml,
        out=tmp_path / "o",
        seeds=[0],
        methods=["ease", "most_popular"],
        overrides=["retrieval_baselines.ease_max_gb=1e-6"],
    )
    ease = res["table"][0]
    assert ease["method"] == "ease" and "budget" in ease["skipped"]
    assert "EASE skipped:" in res["markdown"]


def test_loo_cli(ml, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["experiment", "loo", "--data-dir", str(ml), "--out", str(out), "--seeds", "0"]
    assert main([*argv, "--only", "most_popular;item_knn"]) == 0
    printed = capsys.readouterr().out
    assert "| most popular |" in printed and "| item-kNN (cosine) |" in printed
    assert (out / "loo.json").is_file() and (out / "loo.md").is_file()
    saved = json.loads((out / "loo.json").read_text("utf-8"))
    assert saved["methods"] == ["most_popular", "item_knn"] and saved["seeds"] == [0]
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporaries left

    assert main(["experiment", "loo", "--out", str(out)]) != 0
    assert "needs --data-dir" in capsys.readouterr().err
    assert main([*argv, "--only", "als"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main([*argv, "--only", "rechub"]) == 2
    assert "needs --rechub-python" in capsys.readouterr().err
    with pytest.raises(UsageError, match="at least one seed"):
        run_loo(ml, out=tmp_path / "x", seeds=[])


# ----------------------------------------------------------------------------- torch-rechub


def test_export_queries_round_trip(ml, tmp_path):
    from vidrec.pipelines.experiments_real import query_features

    ds, split, _ = _ml_split(ml)
    config = resolve_config("movielens", TINY_CG)
    _, _, _, featurizer = fit_cg(config, split.test.train, ds.items)
    feats = query_features(featurizer, split.test.train, split.test.users, split.test.at_time)
    exclude = [featurizer.item_vocab_.transform(h) for h in split.test.history]
    export_queries(tmp_path / "q.npz", feats, exclude)
    with np.load(tmp_path / "q.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["history"], feats.history)
        assert z["dense"].shape[1] == feats.continuous.shape[1] + 3
        ptr = z["exclude_ptr"]
        for u, codes in enumerate(exclude):
            np.testing.assert_array_equal(z["exclude_codes"][ptr[u] : ptr[u + 1]], codes)
    with pytest.raises(ValueError, match="one exclusion list per user"):
        export_queries(tmp_path / "q.npz", feats, exclude[:-1])


def _rechub_available() -> bool:
    try:
        rechub_python(None)
    except (FileNotFoundError, RuntimeError):
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _rechub_available(), reason="no torch-rechub environment")
def test_rechub_rows_rank_without_the_training_items(ml, tmp_path, monkeypatch):
    ranked: list[np.ndarray] = []
    original = experiments_loo._RechubSide.rankings

    def keep(self, k):
        ids = original(self, k)
        ranked.append(ids)
        return ids

    monkeypatch.setattr(experiments_loo._RechubSide, "rankings", keep)
    res = run_loo(
        ml,
        out=tmp_path / "o",
        seeds=[0, 1],
        methods=["rechub"],
        overrides=TINY_CG,
        rechub_python_path=str(rechub_python(None)),
        rechub_negatives=8,
    )
    _, split, _ = _ml_split(ml)
    _assert_excluded(ranked[-1], split)  # the test ranking of the last seed
    e = res["table"][0]
    assert e["method"] == "rechub" and e["runs"] == 2 and e["hitrate@50"]["std"] is not None
    row = res["rows"][0]
    assert row["rechub_version"] and row["negatives_per_example"] == 8
    assert 1 <= len(row["validation"]["curve"]) <= 2
