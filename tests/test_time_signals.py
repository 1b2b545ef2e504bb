"""Time-aware item popularity and user recency (`features.time_signals`).

- Nothing at or after the reference time counts: an event at t or later changes no signal of
  (item, t), in the codes (table and single time), the candidate-generator features and the
  ranker's frame; an event just before t does.
- Training and serving take the same values for the same (item, t): the trainer's time table
  and scores equal `item_features(dataset, reference_time=t)` and the item tower at t, for
  every item-tower shape; validation recall equals a brute force over requests at each time.
- The switch off gives the features as they were (no new column, the same values).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from test_cg_examples import DAY, random_dataset

# the candidate-generator test settings, one torch thread (autouse), from the trainer's tests
from test_cg_train import BASE as _TRAIN_BASE  # noqa: E402
from test_cg_train import _one_thread  # noqa: E402, F401

import vidrec.candidate_gen.train as cg_train
from vidrec.candidate_gen.config import CandidateGenConfig
from vidrec.candidate_gen.towers import ItemBatch, TwoTowerModel, UserBatch
from vidrec.features.examples import ACTIVITY_FEATURES, RECENCY_FEATURES, CandidateFeaturizer
from vidrec.features.ranker_features import CONTINUOUS_COLUMNS, build_ranker_frame
from vidrec.features.split import TimeSplit
from vidrec.features.time_signals import (
    ITEM_TIME_CODES,
    ITEM_TIME_VALUES,
    NEVER_SECONDS,
    NO_EVENT,
    ItemTimeSignals,
    item_signal_values,
)

BASE = {**_TRAIN_BASE, "ssl_batch_size": 64}


def _signals() -> ItemTimeSignals:
    return ItemTimeSignals(
        windows=(10, 40, 100), step=10, anchor=1000, since_edges=(5, 50, 500), n_count_codes=8
    )


def _brute_counts(ev_row, ev_time, rows, times, windows) -> np.ndarray:
    """(Q, n_w) watches of rows[q] in [times[q] - W, times[q])."""
    out = np.zeros((len(rows), len(windows)), dtype=np.int64)
    for q, (r, t) in enumerate(zip(rows, times, strict=True)):
        mine = ev_time[ev_row == r]
        for j, w in enumerate(windows):
            out[q, j] = int(((mine >= t - w) & (mine < t)).sum())
    return out


# ----------------------------------------------------------------------------- the signals


def test_an_event_at_or_after_t_never_counts_and_one_just_before_does() -> None:
    s = _signals()
    ev_row = np.array([0, 0, 0, 1])
    ev_time = np.array([900, 960, 990, 500])
    base = s.codes_at(ev_row, ev_time, 3, 1000)
    counts = _brute_counts(ev_row, ev_time, [0], [1000], s.windows)
    assert counts[0].tolist() == [1, 2, 3]
    values = item_signal_values(counts, np.array([900]), np.array([1000]), s.windows)
    assert values[0, 3] == 100  # since the first watch
    # codes: counts 1, 2, 3 -> 2 + floor(log2 c); since 100 s -> bucket of [50, 500)
    assert base[0, :3].tolist() == [2, 3, 3]
    assert base[0, 3] == 2 + 2
    assert base[2].tolist() == [1, 1, 1, 1, 1]  # never watched: every "none" code
    # events at t and after t change nothing, in the single-time codes and in the table
    later_row = np.r_[ev_row, 0, 0, 2]
    later_time = np.r_[ev_time, 1000, 1005, 1000]
    np.testing.assert_array_equal(s.codes_at(later_row, later_time, 3, 1000), base)
    table = s.table(later_row, later_time, 3, 900, 1100)
    np.testing.assert_array_equal(table.codes[:, int(table.position(1000))], base)
    # ... while one just before t does (count and trend), and a request inside the grid step
    # (t = 1005) reads the codes of its grid time 1000
    earlier = s.codes_at(np.r_[ev_row, 0], np.r_[ev_time, 995], 3, 1000)
    assert earlier[0, 0] != base[0, 0]
    np.testing.assert_array_equal(s.codes_at(later_row, later_time, 3, 1005), base)


def test_table_and_single_time_codes_agree_with_brute_force_counts() -> None:
    rng = np.random.default_rng(0)
    s = _signals()
    ev_row = rng.integers(-1, 6, 400)  # -1: a watch of an item outside the catalog
    ev_time = rng.integers(600, 1300, 400)
    table = s.table(ev_row, ev_time, 6, 700, 1250)
    grid = s.anchor + (table.k_lo + np.arange(table.n_grid)) * s.step
    assert grid[0] <= 700 and grid[-1] >= 1250 - s.step
    rows = np.repeat(np.arange(6), len(grid))
    times = np.tile(grid, 6)
    counts = _brute_counts(ev_row, ev_time, rows, times, s.windows)
    first = np.full(6, NO_EVENT)
    for r in range(6):
        if (ev_row == r).any():
            first[r] = ev_time[ev_row == r].min()
    want = s.bucket(counts, first[rows], times).reshape(6, len(grid), -1)
    np.testing.assert_array_equal(table.codes, want)
    for k, t in enumerate(grid.tolist()):
        np.testing.assert_array_equal(s.codes_at(ev_row, ev_time, 6, t), table.codes[:, k])
    with pytest.raises(ValueError, match="outside the item time table"):
        table.position(grid[-1] + 2 * s.step)


def test_trend_is_zero_without_watches_and_grows_with_recent_ones() -> None:
    windows = (10, 40, 100)
    counts = np.array([[0, 0, 0], [5, 5, 5], [0, 0, 9], [1, 4, 10]])
    trend = item_signal_values(counts, np.zeros(4, np.int64), np.full(4, 50), windows)[:, 4]
    assert trend[0] == pytest.approx(0.0)
    assert trend[1] > 2 and trend[2] < -2  # all recent / none recent
    never = item_signal_values(counts[:1], np.array([NO_EVENT]), np.array([50]), windows)
    assert never[0, 3] == NEVER_SECONDS


def test_fit_derives_windows_and_grid_from_the_span_and_round_trips() -> None:
    s = ItemTimeSignals.fit(start=0, reference_time=256 * 1000, n_items=100, n_train_watches=500)
    assert s.step == 1000 and s.windows == (4000, 16000, 64000) and s.anchor == 256_000
    assert s.n_count_codes == 3 + 8  # counts up to 500 fit
    assert ItemTimeSignals.from_dict(s.to_dict()) == s
    # a catalog too large for a fine table gets a coarser grid, windows stay multiples of it
    big = ItemTimeSignals.fit(0, 256 * 1000, n_items=10_000_000, n_train_watches=500)
    assert big.step > s.step and all(w % big.step == 0 for w in big.windows)


def test_signal_columns_are_scored_in_groups_of_joint_codes() -> None:
    assert cg_train._code_groups([19, 19, 19, 9, 9], 2048) == [
        [(0, 19), (1, 19)],
        [(2, 19), (3, 9), (4, 9)],
    ]
    assert cg_train._code_groups([3000, 5, 5], 2048) == [[(0, 3000)], [(1, 5), (2, 5)]]
    codes = np.random.default_rng(0).integers(0, 5, (4, 3, 2)).astype(np.uint8)
    joint = cg_train._joint_codes(codes, [(0, 5), (1, 7)], [5, 7])
    np.testing.assert_array_equal(joint, (codes[..., 0] * 7 + codes[..., 1]).reshape(-1))
    parts = [torch.arange(3.0).unsqueeze(1), 10 * torch.arange(4.0).unsqueeze(1)]
    summed = cg_train._joint(parts, 0)[:, 0]  # entry c0 * 4 + c1 = c0 + 10 * c1
    assert summed.tolist() == [a + 10 * b for a in range(3) for b in range(4)]


# ----------------------------------------------------------------------------- featurizer


@pytest.fixture(scope="module")
def world():
    """random_dataset plus a few items uploaded during the validation window (watched there)."""
    ds = random_dataset(n_users=60, n_items=120, n_watches=3000, n_searches=400)
    split = TimeSplit.from_fractions(ds, 0.7, 0.15)
    rng = np.random.default_rng(5)
    late_ids = np.arange(20, dtype=np.int64) + 10_000
    up = split.train_end + rng.integers(0, split.valid_end - split.train_end - DAY, 20)
    late = ds.items.iloc[:20].copy()
    late["item_id"], late["upload_time"] = late_ids, up.astype(np.int64)
    ds.items = pd.concat([ds.items, late], ignore_index=True)
    extra = pd.DataFrame(
        {
            "user_id": np.int64(1000) + np.arange(60, dtype=np.int64) % 60,
            "item_id": np.repeat(late_ids, 3),
            "timestamp": np.repeat(up, 3) + rng.integers(60, DAY, 60),
            "watch_time": 100.0,
        }
    )
    ds.watches = pd.concat([ds.watches, extra], ignore_index=True)
    f = CandidateFeaturizer(
        max_history=20, max_search_tokens=16, min_token_count=1, time_signals=True
    ).fit(ds, split)
    return ds, split, f, f.examples(ds, "train"), f.examples(ds, "valid"), f.item_features(ds)


def _with_watches(ds, rows: pd.DataFrame):
    return dataclasses.replace(ds, watches=pd.concat([ds.watches, rows], ignore_index=True))


def test_future_watches_change_no_candidate_generator_feature_at_t(world) -> None:
    ds, split, f, _, _, _ = world
    t = split.train_end + 12_345
    users = ds.users["user_id"].to_numpy()[:20]
    items = f.item_features(ds, reference_time=t)
    feats = f.serving(ds, users, t)
    hot = ds.items["item_id"].to_numpy()[:10]
    future = pd.DataFrame(
        {
            "user_id": np.resize(users, 40),
            "item_id": np.resize(hot, 40),
            "timestamp": t + np.r_[np.zeros(20, np.int64), np.arange(1, 21) * 3600],
            "watch_time": 50.0,
        }
    )
    later = _with_watches(ds, future)
    np.testing.assert_array_equal(f.item_features(later, reference_time=t).single, items.single)
    np.testing.assert_array_equal(f.serving(later, users, t).continuous, feats.continuous)
    # one watch just before the grid time does change them (the test can see a change)
    g = int(f.item_signals_.grid_time(t))
    before = future.iloc[:20].assign(timestamp=g - 1)
    moved = _with_watches(ds, before)
    assert not np.array_equal(f.item_features(moved, reference_time=t).single, items.single)
    recent = f.serving(moved, users, g).continuous
    assert not np.array_equal(recent, f.serving(ds, users, g).continuous)


def test_user_recency_is_the_time_since_the_previous_watch_strictly_before(world) -> None:
    ds, split, f, train, _, _ = world
    k = f.continuous_names_.index(RECENCY_FEATURES[0])
    history = f.index_history(ds)
    raw = f._raw_continuous(history, train.user_id, train.timestamp)[:, k]
    w = ds.watches
    for i in np.random.default_rng(1).choice(len(train), 50, replace=False).tolist():
        u, t = train.user_id[i], train.timestamp[i]
        prev = w.loc[(w["user_id"] == u) & (w["timestamp"] < t), "timestamp"]
        want = (t - prev.max()) / 86_400.0 if len(prev) else NEVER_SECONDS / 86_400.0
        assert raw[i] == pytest.approx(want)


def test_training_catalog_codes_equal_the_serving_codes_at_each_time(world) -> None:
    ds, split, f, train, valid, items = world
    assert items.single_names[-len(ITEM_TIME_CODES) :] == ITEM_TIME_CODES
    times = np.r_[train.timestamp[::97], valid.timestamp[::53], split.train_end]
    for t in times.tolist():
        served = f.item_features(ds, reference_time=t)
        np.testing.assert_array_equal(items.at_time(t).single, served.single)
    # a saved and reloaded featurizer serves the same codes
    g = CandidateFeaturizer.from_dict(f.to_dict())
    t = int(valid.timestamp[0])
    np.testing.assert_array_equal(
        g.item_features(ds, reference_time=t).single, f.item_features(ds, reference_time=t).single
    )


def _model(f, **kw) -> TwoTowerModel:
    torch.manual_seed(0)
    return TwoTowerModel(CandidateGenConfig(**{**BASE, **kw}), f.schema()).eval()


@pytest.mark.parametrize(
    "tower",
    [
        {},  # linear item tower: one term per code and column
        {"normalize_embeddings": True},  # linear, cosine: the norm decomposes as well
        {"item_layers": (16,)},  # hidden layer: each distinct (item, age, grid time) embedded
        {"item_encoder": "id_only"},  # reads no time signal
    ],
)
def test_training_scores_equal_the_item_tower_served_at_each_row_time(world, tower) -> None:
    ds, _, f, train, _, items = world
    model = _model(f, **tower)
    catalog = cg_train.TimedCatalog(items, "cpu", n_single=model.item_tower.n_single)
    assert bool(catalog.time_cols) == ("item_encoder" not in tower)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(train), 6, replace=False)
    times = torch.from_numpy(train.timestamp[pick])
    rows = torch.from_numpy(rng.choice(len(items), 60, replace=False))
    users = UserBatch.from_features(train.features.take(pick))
    with torch.no_grad():
        u = model.user_vectors(users)
        scores, _ = catalog.scores(model, u, times, rows)
        positives = model.item_vectors(catalog.at(rows[:6], times))
    for b, t in enumerate(train.timestamp[pick].tolist()):
        served = f.item_features(ds, reference_time=t)  # what a request at t is served with
        with torch.no_grad():
            v = model.item_vectors(ItemBatch.from_features(served))
        torch.testing.assert_close(scores[b], u[b] @ v[rows].T, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(positives[b], v[rows[b]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tower", [{}, {"normalize_embeddings": True}, {"item_layers": (16,)}])
def test_validation_recall_equals_requests_served_at_each_label_time(world, tower) -> None:
    ds, _, f, _, valid, items = world
    model = _model(f, **tower)
    catalog = cg_train.TimedCatalog(items, "cpu", n_single=model.item_tower.n_single)
    pick = np.arange(0, len(valid), max(1, len(valid) // 25))
    users = UserBatch.from_features(valid.features.take(pick))
    labels = items.rows(valid.label_item[pick])
    times = valid.timestamp[pick]
    got = cg_train.recall_at_k(
        model, users, torch.from_numpy(labels), catalog, 10, times=torch.from_numpy(times)
    )
    upload = items.upload_time
    hits = 0
    with torch.no_grad():
        u = model.user_vectors(users)
        for i, t in enumerate(times.tolist()):
            served = f.item_features(ds, reference_time=t)
            s = (model.item_vectors(ItemBatch.from_features(served)) @ u[i]).numpy()
            s[upload > t] = -np.inf
            hits += int(labels[i] in np.argsort(-s, kind="stable")[:10])
    assert got == pytest.approx(hits / len(pick))


@pytest.mark.parametrize("loss", ["sampled", "in_batch"])
def test_a_model_with_time_signals_trains_and_serves_after_reloading(
    world, tmp_path, loss
) -> None:
    ds, split, f, train, valid, items = world
    cfg = CandidateGenConfig(**BASE, epochs=1, loss=loss, ssl="cfm", normalize_embeddings=True)
    model = cg_train.train_candidate_generator(cfg, train, items, valid=valid, progress=False)
    assert np.isfinite(model.history[0]["train_loss"])
    loaded = cg_train.TrainedCandidateGenerator.load(model.save(tmp_path / "m"), device="cpu")
    t = split.valid_end
    a = model.item_embeddings(model.featurizer.item_features(ds, reference_time=t))[1]
    b = loaded.item_embeddings(loaded.featurizer.item_features(ds, reference_time=t))[1]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # a serving snapshot (codes at one time, no time table) cannot train
    with pytest.raises(ValueError, match="time table"):
        cg_train.train_candidate_generator(
            cfg, train, f.item_features(ds, reference_time=t), progress=False
        )


def test_item_features_need_the_watches(world) -> None:
    ds, split, f, _, _, _ = world
    with pytest.raises(ValueError, match="watches"):
        f.item_features(ds.items, reference_time=split.valid_end)
    a = f.item_features(ds.items, reference_time=split.valid_end, watches=ds.watches)
    np.testing.assert_array_equal(a.single, f.item_features(ds, split.valid_end).single)


# ----------------------------------------------------------------------------- ranker


def test_ranker_item_signals_use_only_watches_before_each_row(world) -> None:
    ds, split, f, _, _, _ = world
    windows = f.item_signals_.windows
    rng = np.random.default_rng(3)
    n = 200
    req = pd.DataFrame(
        {
            "user_id": rng.choice(ds.users["user_id"].to_numpy(), n),
            "item_id": rng.choice(ds.items["item_id"].to_numpy(), n),
            "timestamp": rng.integers(split.start, split.test_end, n).astype(np.int64),
        }
    )
    frame = build_ranker_frame(ds, req, time_windows=windows)
    cols = list(frame.continuous.columns)
    assert cols == [*CONTINUOUS_COLUMNS, *ITEM_TIME_VALUES]
    got = frame.continuous[list(ITEM_TIME_VALUES)].to_numpy()
    # brute force over the watches strictly before each row's time
    item_row = pd.Index(ds.items["item_id"]).get_indexer(req["item_id"])
    ev_row = pd.Index(ds.items["item_id"]).get_indexer(ds.watches["item_id"])
    ev_t = ds.watches["timestamp"].to_numpy()
    counts = _brute_counts(ev_row, ev_t, item_row, req["timestamp"].to_numpy(), windows)
    first = np.full(n, NO_EVENT)
    for q, (r, t) in enumerate(zip(item_row, req["timestamp"], strict=True)):
        seen = ev_t[(ev_row == r) & (ev_t < t)]
        first[q] = seen.min() if len(seen) else NO_EVENT
    want = item_signal_values(counts, first, req["timestamp"].to_numpy(), windows)
    np.testing.assert_allclose(got, want)
    # requests at one time t: watches of their items at t and later change nothing
    t = int(f.item_signals_.grid_time(split.train_end + 5 * DAY))
    on_grid = req.assign(timestamp=np.int64(t))
    vals = build_ranker_frame(ds, on_grid, time_windows=windows).continuous
    after = np.r_[np.zeros(n // 2, dtype=np.int64), rng.integers(1, 3 * DAY, n - n // 2)]
    future = pd.DataFrame(
        {
            "user_id": req["user_id"],
            "item_id": req["item_id"],
            "timestamp": t + after,
            "watch_time": 10.0,
        }
    )
    later = build_ranker_frame(_with_watches(ds, future), on_grid, time_windows=windows)
    pd.testing.assert_frame_equal(later.continuous, vals)
    # at a grid time the ranker's values are the candidate generator's, before bucketing
    since = vals["since_item_first_watch"].to_numpy()
    codes = f.item_signals_.bucket(
        vals[list(ITEM_TIME_VALUES[:3])].to_numpy().astype(np.int64),
        np.where(since < NEVER_SECONDS, t - since, NO_EVENT).astype(np.int64),
        np.full(n, t),
    )
    served = f.item_features(ds, reference_time=t)
    cols_cg = list(served.time_columns)
    np.testing.assert_array_equal(codes, served.single[served.rows(req["item_id"])][:, cols_cg])


def test_lightgbm_with_item_extra_columns_and_time_signals_reloads(tmp_path) -> None:
    from test_ranker_model import world as ranker_world

    from vidrec.ranking.baselines import LightGBMWeightedRanker
    from vidrec.ranking.config import LightGBMConfig

    ds = ranker_world(0, 3000)
    ds.items["quality"] = np.linspace(0.0, 1.0, len(ds.items))
    ds.columns = {"items": {"quality": "continuous"}}
    imps = ds.impressions.sort_values("timestamp", kind="stable").reset_index(drop=True)
    windows = (3600, 4 * 3600, 16 * 3600)
    tr = build_ranker_frame(ds, imps.iloc[:2400], history_len=5, time_windows=windows)
    va = build_ranker_frame(ds, imps.iloc[2400:], history_len=5, time_windows=windows)
    assert list(tr.continuous.columns) == [*CONTINUOUS_COLUMNS, "item.quality", *ITEM_TIME_VALUES]
    cfg = LightGBMConfig(n_estimators=5, num_leaves=4, min_data_in_leaf=5, num_threads=1)
    model = LightGBMWeightedRanker(cfg, history_len=5).fit(tr, va)
    model.save(tmp_path / "lgbm")
    loaded = LightGBMWeightedRanker.load(tmp_path / "lgbm")
    np.testing.assert_allclose(loaded.predict_score(va), model.predict_score(va))


# ----------------------------------------------------------------------------- switch off


def test_switch_off_keeps_the_features_as_they_were(world) -> None:
    ds, split, on, train_on, _, items_on = world
    off = CandidateFeaturizer(max_history=20, max_search_tokens=16, min_token_count=1).fit(
        ds, split
    )
    same = CandidateFeaturizer(
        max_history=20, max_search_tokens=16, min_token_count=1, time_signals=False
    ).fit(ds, split)
    assert off.schema() == same.schema()
    assert off.item_signals_ is None
    assert not set(ITEM_TIME_CODES) & set(off.schema()["item_single"])
    assert off.continuous_names_ == on.continuous_names_[: -len(RECENCY_FEATURES)]
    assert off.continuous_names_[-len(ACTIVITY_FEATURES) :] == ACTIVITY_FEATURES
    n_off = len(off.schema()["item_single"])
    assert off.schema()["item_single"] == on.schema()["item_single"][:n_off]
    items_off = off.item_features(ds)
    assert items_off.time_table is None and items_off.time_columns == ()
    np.testing.assert_array_equal(items_off.single, items_on.single[:, :n_off])
    # the user features: the same values, the recency columns added after them
    train_off = off.examples(ds, "train")
    k_off, k_on = len(off.continuous_names_), len(on.continuous_names_)
    for p in range(3):  # x~, x~^2, sqrt x~ blocks
        np.testing.assert_array_equal(
            train_off.features.continuous[:, p * k_off : (p + 1) * k_off],
            train_on.features.continuous[:, p * k_on : p * k_on + k_off],
        )
    # the ranker frame without windows is the frame as before: same columns, same values
    req = pd.DataFrame(
        {
            "user_id": ds.watches["user_id"].to_numpy()[:100],
            "item_id": ds.watches["item_id"].to_numpy()[:100],
            "timestamp": ds.watches["timestamp"].to_numpy()[:100],
        }
    )
    plain = build_ranker_frame(ds, req)
    timed = build_ranker_frame(ds, req, time_windows=on.item_signals_.windows)
    assert list(plain.continuous.columns) == list(CONTINUOUS_COLUMNS)
    pd.testing.assert_frame_equal(plain.continuous, timed.continuous[list(CONTINUOUS_COLUMNS)])


def test_every_preset_turns_the_signals_on_and_the_switch_turns_them_off() -> None:
    from vidrec.pipelines.config import PRESETS, resolve_config
    from vidrec.pipelines.run import featurizer_from_config

    for preset in PRESETS:
        if preset == "auto":
            continue
        cfg = resolve_config(preset)
        assert cfg["features"]["time_signals"] is True
        assert featurizer_from_config(cfg).time_signals is True
        off = resolve_config(preset, ["features.time_signals=false"])
        assert featurizer_from_config(off).time_signals is False
