import time

import numpy as np
import pandas as pd
import pytest

from vidrec.features.ranker_features import (
    CONTINUOUS_COLUMNS,
    FLAG_COLUMNS,
    NEVER_SECONDS,
    RankerFeatureIndex,
    RankerVocabularies,
    build_ranker_frame,
    embedding_width,
)
from vidrec.features.tables import Dataset


def _i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def tiny_dataset() -> Dataset:
    """4 items, 2 known users; user 1 watches 10@100, 12@200, 11@300, 10@400."""
    items = pd.DataFrame(
        {
            "item_id": _i64(10, 11, 12, 13),
            "upload_time": _i64(0, 50, 0, 500),
            "duration": [100.0, 200.0, 300.0, np.nan],
            "channel_id": ["A", "A", "B", "B"],
            "topics": [["x", "y"], ["y"], ["z"], []],
            "language": ["en", "en", "fr", None],
        }
    )
    users = pd.DataFrame({"user_id": _i64(1, 2), "language": ["en", "fr"]})
    watches = pd.DataFrame(
        {
            "user_id": _i64(1, 1, 1, 1, 2),
            "item_id": _i64(10, 12, 11, 10, 11),
            "timestamp": _i64(100, 200, 300, 400, 150),
            "watch_time": [50.0, 60.0, 70.0, 80.0, 90.0],
        }
    )
    impressions = pd.DataFrame(
        {
            "user_id": _i64(1, 1, 1, 1),
            "item_id": _i64(11, 11, 11, 13),
            "timestamp": _i64(50, 120, 300, 250),
            "clicked": np.array([0, 1, 0, 0], dtype=np.int8),
            "watch_time": [0.0, 30.0, 0.0, 0.0],
        }
    )
    return Dataset(users=users, items=items, watches=watches, impressions=impressions)


def tiny_requests() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": _i64(1, 1, 1, 2, 3),
            "item_id": _i64(11, 12, 13, 10, 12),
            "timestamp": _i64(300, 300, 300, 160, 1000),
            "cg_score": [0.5, 0.9, np.nan, 0.1, 0.2],
            "source": ["ann", "ann", "pop", None, "ann"],
        }
    )


def test_hand_built_features_use_only_strictly_earlier_events():
    f = build_ranker_frame(tiny_dataset(), tiny_requests(), history_len=3)
    c = f.continuous
    assert list(c.columns) == list(CONTINUOUS_COLUMNS) and list(f.flags.columns) == list(
        FLAG_COLUMNS
    )
    # row 0: user 1, item 11 (channel A, topic y) at t=300. Before 300 user 1 watched 10@100 and
    # 12@200; the watch of 11 AT 300 and of 10 at 400 are not in the past.
    r0 = c.iloc[0]
    assert r0["user_activity"] == 2
    assert r0["user_item_watches"] == 0  # 11@300 is not strictly before t
    assert r0["user_channel_watches"] == 1  # channel A: only 10@100
    assert r0["since_channel_watch"] == 300 - 100
    assert r0["since_topic_watch"] == 300 - 100  # topic y via 10@100 (x, y)
    assert r0["item_popularity"] == 1  # item 11: user 2 @150 (user 1's @300 excluded)
    assert r0["item_age"] == 300 - 50 and r0["duration"] == 200
    # churn: 11 shown to user 1 @50 (no click), @120 (click), @300 (same second: excluded)
    assert r0["user_item_impressions"] == 2 and r0["user_item_unclicked"] == 1
    # row 1: item 12 (channel B, topic z): 12@200 counts for channel, topic and user x item
    r1 = c.iloc[1]
    assert (r1["user_channel_watches"], r1["since_channel_watch"], r1["since_topic_watch"]) == (
        1,
        100,
        100,
    )
    assert r1["user_item_watches"] == 1 and r1["user_item_impressions"] == 0
    # row 2: item 13 has no topics -> never; upload 500 > t=300 -> age clipped to 0
    assert (
        c.iloc[2]["since_topic_watch"] == NEVER_SECONDS
        and f.flags.iloc[2]["never_watched_topic"] == 1
    )
    assert c.iloc[2]["item_age"] == 0 and np.isnan(c.iloc[2]["duration"])
    assert c.iloc[2]["user_item_impressions"] == 1  # 13 shown @250
    # row 3: user 2, item 10 at 160: channel A and topic y both via 11@150 -> 10 s
    assert (c.iloc[3]["since_channel_watch"], c.iloc[3]["since_topic_watch"]) == (10, 10)
    # row 4: user 3 is unknown: no history, never watched anything, language missing
    assert c.iloc[4]["user_activity"] == 0 and c.iloc[4]["since_channel_watch"] == NEVER_SECONDS
    assert f.flags.iloc[4]["never_watched_channel"] == 1
    assert pd.isna(f.rows["user_language"].iloc[4]) and f.rows["user_language"].iloc[0] == "en"
    # bags, most recent first, -1 padding
    assert f.history_ids().tolist() == [[12, 10, -1]] * 3 + [[11, -1, -1], [-1, -1, -1]]
    assert f.history_ids(history_len=1).tolist() == [[12]] * 3 + [[11], [-1]]


def test_a_future_watch_never_counts():
    ds = tiny_dataset()
    req = pd.DataFrame(
        {"user_id": _i64(1, 1), "item_id": _i64(10, 10), "timestamp": _i64(150, 401)}
    )
    f = build_ranker_frame(ds, req, history_len=5)
    # at 150 only 10@100 is past; at 401 all four watches are (10 twice)
    assert f.continuous["user_item_watches"].tolist() == [1, 2]
    assert f.continuous["user_activity"].tolist() == [1, 4]
    assert f.history_ids().tolist() == [[10, -1, -1, -1, -1], [10, 11, 12, 10, -1]]
    # item 10's popularity at 150: 10@100 only; at 401: 10@100 and 10@400
    assert f.continuous["item_popularity"].tolist() == [1, 2]


def test_candidate_score_rank_and_absent_constant():
    f = build_ranker_frame(tiny_dataset(), tiny_requests())
    # page (1, 300): scores 0.5, 0.9, NaN -> ranks 2, 1 and "absent" (rank 0, score 0, flag 0)
    assert f.continuous["cg_rank"].tolist() == [2, 1, 0, 1, 1]
    assert f.continuous["cg_score"].tolist() == [0.5, 0.9, 0.0, 0.1, 0.2]
    assert f.flags["has_cg_score"].tolist() == [1, 1, 0, 1, 1]
    # a given cg_rank (e.g. over the whole catalog) is used as it is
    given = build_ranker_frame(
        tiny_dataset(), tiny_requests().assign(cg_rank=[7, 3, np.nan, 12, 40])
    )
    assert given.continuous["cg_rank"].tolist() == [7, 3, 0, 12, 40]
    no_cg = build_ranker_frame(tiny_dataset(), tiny_requests().drop(columns=["cg_score", "source"]))
    assert (no_cg.continuous["cg_rank"] == 0).all() and (no_cg.flags["has_cg_score"] == 0).all()
    assert no_cg.rows["source"].isna().all()


def test_source_given_as_categorical_or_strings_gives_the_same_rows():
    req = tiny_requests()
    as_str = build_ranker_frame(tiny_dataset(), req)
    cat = req.assign(source=pd.Categorical(req["source"].astype(object)))
    as_cat = build_ranker_frame(tiny_dataset(), cat)
    assert as_cat.rows["source"].astype(object).tolist() == (
        as_str.rows["source"].astype(object).tolist()
    )
    with_missing = req.assign(source=pd.Categorical([None, *req["source"].astype(object)[1:]]))
    expected = [True, *as_str.rows["source"].isna().tolist()[1:]]
    assert (
        build_ranker_frame(tiny_dataset(), with_missing).rows["source"].isna().tolist() == expected
    )


def test_labels_pages_and_take():
    ds = tiny_dataset()
    f = build_ranker_frame(ds, ds.impressions)
    clicked, wt = f.labels()
    assert clicked.tolist() == [0, 1, 0, 0] and wt.tolist() == [0, 30, 0, 0]
    # the click @120 is the only earlier event for impression 3 (@300): shown twice before
    assert f.continuous["user_item_impressions"].tolist() == [0, 1, 2, 0]
    assert f.continuous["user_item_unclicked"].tolist() == [0, 1, 1, 0]
    assert f.page_ids().tolist() == [0, 1, 2, 3]
    sub = f.take(np.array([2]))
    assert len(sub) == 1 and sub.history_ids().tolist() == f.history_ids(np.array([2])).tolist()
    with pytest.raises(ValueError, match="has no labels"):
        build_ranker_frame(ds, tiny_requests()).labels()


def _brute_force(ds: Dataset, req: pd.DataFrame) -> pd.DataFrame:
    """The features by a plain loop over events (the reference the bulk builder must match)."""
    it = ds.items.set_index("item_id")
    w = ds.watches.merge(ds.items[["item_id", "channel_id", "topics"]], on="item_id")
    out = []
    for r in req.itertuples():
        past = w[(w.user_id == r.user_id) & (w.timestamp < r.timestamp)]
        ch = it.loc[r.item_id, "channel_id"]
        tops = set(it.loc[r.item_id, "topics"])
        same_ch = past[past.channel_id == ch]
        same_tp = past[[bool(tops & set(t)) for t in past.topics]]
        imp = ds.impressions
        shown = imp[
            (imp.user_id == r.user_id) & (imp.item_id == r.item_id) & (imp.timestamp < r.timestamp)
        ]
        out.append(
            {
                "user_channel_watches": len(same_ch),
                "since_channel_watch": r.timestamp - same_ch.timestamp.max()
                if len(same_ch)
                else NEVER_SECONDS,
                "since_topic_watch": r.timestamp - same_tp.timestamp.max()
                if len(same_tp)
                else NEVER_SECONDS,
                "user_item_watches": int((past.item_id == r.item_id).sum()),
                "user_item_impressions": len(shown),
                "user_item_unclicked": int((shown.clicked == 0).sum()),
                "item_popularity": int(
                    ((w.item_id == r.item_id) & (w.timestamp < r.timestamp)).sum()
                ),
                "user_activity": len(past),
                "last3": list(
                    past.sort_values("timestamp", kind="stable").item_id.to_numpy()[::-1][:3]
                ),
            }
        )
    return pd.DataFrame(out)


def random_dataset(
    seed: int, n_users: int = 12, n_items: int = 15, n_watches: int = 150, n_imps: int = 120
) -> Dataset:
    """A small random world; timestamps drawn from a few values so ties occur."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": np.arange(100, 100 + n_items, dtype=np.int64),
            "upload_time": rng.integers(0, 50, n_items).astype(np.int64),
            "duration": rng.uniform(10, 600, n_items),
            "channel_id": rng.choice(["c0", "c1", "c2", "c3"], n_items).astype(object),
            "topics": [
                list(rng.choice(["a", "b", "c", "d", "e"], k, replace=False))
                for k in rng.integers(0, 3, n_items)
            ],
            "language": rng.choice(["en", "fr"], n_items).astype(object),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": np.arange(n_users, dtype=np.int64),
            "language": rng.choice(["en", "de"], n_users).astype(object),
        }
    )
    watches = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users, n_watches).astype(np.int64),
            "item_id": rng.integers(100, 100 + n_items, n_watches).astype(np.int64),
            "timestamp": (rng.integers(0, 60, n_watches) * 10).astype(np.int64),
        }
    )
    watches["watch_time"] = rng.uniform(1, 300, n_watches)
    clicked = (rng.random(n_imps) < 0.3).astype(np.int8)
    impressions = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users, n_imps).astype(np.int64),
            "item_id": rng.integers(100, 100 + n_items, n_imps).astype(np.int64),
            "timestamp": (rng.integers(0, 60, n_imps) * 10).astype(np.int64),
            "clicked": clicked,
            "watch_time": clicked * rng.uniform(1, 300, n_imps),
            "source": rng.choice(["ann", "pop"], n_imps).astype(object),
        }
    )
    return Dataset(users=users, items=items, watches=watches, impressions=impressions)


@pytest.mark.parametrize("seed", [0, 1])
def test_bulk_builder_matches_a_per_row_loop(seed):
    ds = random_dataset(seed)
    f = build_ranker_frame(ds, ds.impressions, history_len=3)
    ref = _brute_force(ds, ds.impressions)
    for col in [c for c in ref.columns if c != "last3"]:
        np.testing.assert_array_equal(
            f.continuous[col].to_numpy(), ref[col].to_numpy(dtype=float), err_msg=col
        )
    # same multiset per bag (ties within one second may be ordered either way)
    got = [sorted(x for x in row if x >= 0) for row in f.history_ids().tolist()]
    assert got == [sorted(x) for x in ref["last3"]]


def test_index_reuse_and_huge_time_spans_match_the_loop():
    ds = random_dataset(2)
    ix = RankerFeatureIndex(ds)
    a = build_ranker_frame(ds, ds.impressions, history_len=3)
    b = build_ranker_frame(ix, ds.impressions, history_len=3)
    pd.testing.assert_frame_equal(a.continuous, b.continuous)
    np.testing.assert_array_equal(a.history_ids(), b.history_ids())
    # one user at a time through the same index gives the same rows
    one = ds.impressions[ds.impressions.user_id == 3]
    c = build_ranker_frame(ix, one, history_len=3)
    np.testing.assert_array_equal(
        c.continuous.to_numpy(), a.continuous[(ds.impressions.user_id == 3).to_numpy()].to_numpy()
    )
    # timestamps spread over ~2**61 s (590 * 2**52) overflow a (group, time) product key: times get rank codes
    big = random_dataset(3)
    for table in (big.watches, big.impressions):
        table["timestamp"] = table["timestamp"] * 2**52
    f = build_ranker_frame(big, big.impressions, history_len=3)
    ref = _brute_force(big, big.impressions)
    for col in ("user_item_watches", "item_popularity", "user_item_impressions", "user_activity"):
        np.testing.assert_array_equal(
            f.continuous[col].to_numpy(), ref[col].to_numpy(dtype=float), err_msg=col
        )


def test_vocabularies_top_n_shared_item_space_and_roundtrip(tmp_path):
    f = build_ranker_frame(tiny_dataset(), tiny_requests(), history_len=3)
    # item frequency: scored 11, 12, 13, 10, 12 + watches in bags 10@100, 12@200, 11@150
    # -> 12: 3, 10: 2, 11: 2, 13: 1; top 2 keeps 12 and 10 (tie 10/11 broken by value)
    v = RankerVocabularies.fit(f, top_n={"item": 2})
    e = v.encode(f)
    assert e.item.tolist() == [0, 1, 0, 2, 1]
    assert e.history(np.arange(5), 3).tolist() == [[1, 2, 0]] * 3 + [[0, 0, 0], [0, 0, 0]]
    # language is one id space for user and item: en (4: users 1,1,1 + items 11,10) first
    assert v.language.inverse_transform([1, 2]).tolist() == ["en", "fr"]
    assert e.user_language.tolist() == [1, 1, 1, 2, 0] and e.item_language.tolist() == [
        1,
        2,
        0,
        1,
        2,
    ]
    assert e.source.tolist() == [1, 1, 2, 0, 1]  # ann (3) then pop (1); None -> 0
    assert e.topics(np.arange(5)).shape == (5, 2)
    assert v.sizes()["item"] == 3 and v.embedding_widths()["item"] == embedding_width(3)
    v.save(tmp_path / "vocab.json")
    w = RankerVocabularies.load(tmp_path / "vocab.json")
    e2 = w.encode(f)
    assert e2.item.tolist() == e.item.tolist() and e2.topic_codes.tolist() == e.topic_codes.tolist()
    with pytest.raises(ValueError, match="unknown id space"):
        RankerVocabularies.fit(f, top_n={"video": 3})
    with pytest.raises(ValueError, match="must be >= 1 or None"):
        RankerVocabularies.fit(f, top_n=0)
    with pytest.raises(ValueError, match="not a RankerVocabularies record"):
        RankerVocabularies.from_dict({"kind": "x"})


def test_embedding_width_grows_with_log_of_vocab_size():
    # round(6 * log2 n): 2 -> 6, 1024 -> 60, 2**20 -> 120; clipped to [4, 128]
    assert [embedding_width(n) for n in (1, 2, 1024, 2**20, 2**40)] == [4, 6, 60, 120, 128]
    with pytest.raises(ValueError, match="vocab_size must be >= 1"):
        embedding_width(0)


def test_input_errors_name_the_problem():
    ds = tiny_dataset()
    req = tiny_requests()
    with pytest.raises(ValueError, match="missing column"):
        build_ranker_frame(ds, req.drop(columns=["timestamp"]))
    with pytest.raises(ValueError, match="absent from dataset.items"):
        build_ranker_frame(ds, req.assign(item_id=_i64(11, 99, 13, 10, 12)))
    with pytest.raises(TypeError, match="requests.timestamp must be an integer column"):
        build_ranker_frame(ds, req.assign(timestamp=req["timestamp"].astype(float)))
    with pytest.raises(ValueError, match="only one of 'clicked'"):
        build_ranker_frame(ds, req.assign(clicked=0))
    with pytest.raises(ValueError, match="clicked must be 0 or 1"):
        build_ranker_frame(ds, req.assign(clicked=2, watch_time=0.0))
    with pytest.raises(ValueError, match="watch_time must be finite and >= 0"):
        build_ranker_frame(ds, req.assign(clicked=1, watch_time=-1.0))
    with pytest.raises(ValueError, match="cg_score contains inf"):
        build_ranker_frame(ds, req.assign(cg_score=np.inf))
    with pytest.raises(ValueError, match="cg_rank but no cg_score"):
        build_ranker_frame(ds, req.drop(columns=["cg_score"]).assign(cg_rank=1))
    with pytest.raises(ValueError, match="cg_rank must be a number >= 1"):
        build_ranker_frame(ds, req.assign(cg_rank=0))
    with pytest.raises(ValueError, match="history_len must be >= 1"):
        build_ranker_frame(ds, req, history_len=0)
    with pytest.raises(TypeError, match="must be a pandas DataFrame"):
        build_ranker_frame(ds, req.to_numpy())
    bad = Dataset(users=ds.users, items=ds.items.drop(columns=["upload_time"]), watches=ds.watches)
    with pytest.raises(ValueError, match=r"dataset.items is missing column\(s\) \['upload_time'\]"):
        build_ranker_frame(bad, req)


def test_minimal_tables_without_optional_columns():
    ds = tiny_dataset()
    bare = Dataset(
        users=ds.users[["user_id"]],
        items=ds.items[["item_id", "upload_time"]],
        watches=ds.watches[["user_id", "item_id", "timestamp"]],
    )
    f = build_ranker_frame(bare, tiny_requests().drop(columns=["source"]))
    assert (f.flags["never_watched_channel"] == 1).all() and (
        f.flags["never_watched_topic"] == 1
    ).all()
    assert f.continuous["user_activity"].tolist() == [2, 2, 2, 1, 0]
    v = RankerVocabularies.fit(f)
    assert v.sizes() == {"item": 5, "language": 1, "channel": 1, "topic": 1, "source": 1}
    assert (v.encode(f).channel == 0).all()


@pytest.mark.slow
def test_two_million_rows_build_in_well_under_a_minute():
    rng = np.random.default_rng(0)
    n_users, n_items, n_w, n_r = 100_000, 50_000, 4_000_000, 2_000_000
    items = pd.DataFrame(
        {
            "item_id": np.arange(n_items, dtype=np.int64),
            "upload_time": rng.integers(0, 10**6, n_items).astype(np.int64),
            "duration": rng.gamma(2, 200, n_items),
            "channel_id": np.array([f"c{i}" for i in rng.integers(0, 2500, n_items)], dtype=object),
            "topics": [
                [f"t{j}" for j in rng.integers(0, 200, k)] for k in rng.integers(0, 4, n_items)
            ],
        }
    )
    users = pd.DataFrame({"user_id": np.arange(n_users, dtype=np.int64)})
    watches = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users, n_w).astype(np.int64),
            "item_id": (rng.zipf(1.3, n_w) % n_items).astype(np.int64),
            "timestamp": rng.integers(0, 2 * 10**6, n_w).astype(np.int64),
        }
    )
    clicked = (rng.random(n_r) < 0.1).astype(np.int8)
    imps = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users, n_r).astype(np.int64),
            "item_id": (rng.zipf(1.3, n_r) % n_items).astype(np.int64),
            "timestamp": rng.integers(0, 2 * 10**6, n_r).astype(np.int64),
            "clicked": clicked,
            "watch_time": clicked * 60.0,
        }
    )
    ds = Dataset(users=users, items=items, watches=watches, impressions=imps)
    t0 = time.perf_counter()
    f = build_ranker_frame(ds, imps)
    assert len(f) == n_r
    assert time.perf_counter() - t0 < 45
