import numpy as np
import pandas as pd
import pytest

from vidrec.features.ranker_features import (
    CONTINUOUS_COLUMNS,
    FLAG_COLUMNS,
    RankerVocabularies,
    build_ranker_frame,
)
from vidrec.features.tables import Dataset
from vidrec.features.vocab import NotFittedError
from vidrec.ranking.baselines import (
    CATEGORICAL_FEATURES,
    LightGBMLambdaRanker,
    LightGBMWeightedRanker,
    PopularityRanker,
    binary_training_rows,
    flatten_frame,
    ideal_dcg,
    relevance_labels,
)
from vidrec.ranking.config import LightGBMConfig

# item -> (click probability, mean watch time of a click); item 0 is click-bait
TRUTH = {0: (0.5, 10.0), 1: (0.1, 300.0), 2: (0.2, 60.0), 3: (0.05, 30.0)}
FAST = LightGBMConfig(
    n_estimators=60, num_leaves=7, min_data_in_leaf=20, learning_rate=0.1, num_threads=1
)


def paged_world(seed: int = 0, n_pages: int = 1500, n_users: int = 30) -> Dataset:
    """Every page (user, t) shows all four items; clicks and watch times from TRUTH."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": np.arange(4, dtype=np.int64),
            "upload_time": np.zeros(4, dtype=np.int64),
            "duration": [30.0, 600.0, 120.0, 60.0],
            "channel_id": ["bait", "docs", "docs", "misc"],
            "topics": [["fun"], ["science"], ["science"], []],
        }
    )
    users = pd.DataFrame({"user_id": np.arange(n_users, dtype=np.int64)})
    watches = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users, 200).astype(np.int64),
            "item_id": rng.integers(0, 4, 200).astype(np.int64),
            "timestamp": rng.integers(0, 10_000, 200).astype(np.int64),
        }
    )
    page_user = rng.integers(0, n_users, n_pages)
    page_t = rng.choice(10_000, n_pages, replace=False)  # distinct times: one page per (user, t)
    item = np.tile(np.arange(4), n_pages)
    p = np.array([TRUTH[i][0] for i in range(4)])[item]
    mu = np.array([TRUTH[i][1] for i in range(4)])[item]
    clicked = (rng.random(len(item)) < p).astype(np.int8)
    impressions = pd.DataFrame(
        {
            "user_id": np.repeat(page_user, 4).astype(np.int64),
            "item_id": item.astype(np.int64),
            "timestamp": np.repeat(page_t, 4).astype(np.int64),
            "clicked": clicked,
            "watch_time": clicked * rng.gamma(4.0, mu / 4.0),
            "source": "ann",
        }
    )
    return Dataset(users=users, items=items, watches=watches, impressions=impressions)


def split(ds: Dataset):
    imps = ds.impressions.sort_values("timestamp", kind="stable").reset_index(drop=True)
    cut = int(len(imps) * 0.8) // 4 * 4
    return build_ranker_frame(ds, imps.iloc[:cut], history_len=5), build_ranker_frame(
        ds, imps.iloc[cut:], history_len=5
    )


def test_flatten_frame_columns_and_bag_summary():
    items = pd.DataFrame(
        {"item_id": np.array([1, 2], dtype=np.int64), "upload_time": np.zeros(2, dtype=np.int64)}
    )
    users = pd.DataFrame({"user_id": np.array([7], dtype=np.int64)})
    # user 7 watched 1, 1, 2 at 10, 20, 30; requests at 25 (bag [1, 1]) and 40 (bag [2, 1, 1])
    watches = pd.DataFrame(
        {
            "user_id": np.full(3, 7, dtype=np.int64),
            "item_id": np.array([1, 1, 2], dtype=np.int64),
            "timestamp": np.array([10, 20, 30], dtype=np.int64),
        }
    )
    req = pd.DataFrame(
        {
            "user_id": np.full(2, 7, dtype=np.int64),
            "item_id": np.array([1, 2], dtype=np.int64),
            "timestamp": np.array([25, 40], dtype=np.int64),
        }
    )
    f = build_ranker_frame(Dataset(users=users, items=items, watches=watches), req, history_len=2)
    X = flatten_frame(f, RankerVocabularies.fit(f), history_len=2)
    assert list(X.columns) == [
        *CATEGORICAL_FEATURES,
        *CONTINUOUS_COLUMNS,
        *FLAG_COLUMNS,
        "bag_size",
        "bag_has_item",
    ]
    # row 0: last 2 watches [1, 1] contain item 1 twice; row 1: last 2 [2, 1] contain item 2 once
    assert X["bag_size"].tolist() == [2, 2] and X["bag_has_item"].tolist() == [2, 1]


def test_relevance_labels_buckets():
    # edges 10, 100: unclicked -> 0; 5 -> 1; 10 and 50 -> 2; 100 and 500 -> 3
    got = relevance_labels(
        np.array([0, 1, 1, 1, 1, 1]), np.array([0, 5, 10, 50, 100, 500.0]), np.array([10.0, 100.0])
    )
    assert got.tolist() == [0, 1, 2, 2, 3, 3]


def test_weighted_lightgbm_odds_arithmetic_and_ordering():
    tr, va = split(paged_world())
    clicked, wt = tr.labels()
    # no split allowed (min_data_in_leaf > N): the model is LightGBM's weighted-average start,
    # log(Σ w y / Σ w (1 - y)) = log(Σ T / (N - k)), so exp(score) is that number for every row
    stump = LightGBMWeightedRanker(
        LightGBMConfig(**{**FAST.to_dict(), "min_data_in_leaf": 10**6}), history_len=5
    )
    ewt = stump.fit(tr).predict_expected_watch_time(va)
    np.testing.assert_allclose(ewt, wt.sum() / (len(wt) - clicked.sum()), rtol=1e-6)
    # a real model ranks the long watch (~33 s expected) above click-bait (~10 s)
    m = LightGBMWeightedRanker(FAST, history_len=5).fit(tr)
    ewt = m.predict_expected_watch_time(va)
    item = va.rows["item_id"].to_numpy()
    assert ewt[item == 1].mean() > ewt[item == 0].mean()
    again = LightGBMWeightedRanker(FAST, history_len=5).fit(tr)
    np.testing.assert_array_equal(again.predict_score(va), m.predict_score(va))
    # click weighting ranks the click-bait first
    click = LightGBMWeightedRanker(
        LightGBMConfig(**{**FAST.to_dict(), "weighting": "click"}), history_len=5
    ).fit(tr)
    s = click.predict_score(va)
    assert s[item == 0].mean() > s[item == 1].mean()
    # with a validation frame, training stops early on its weighted log loss
    es = LightGBMWeightedRanker(FAST, history_len=5).fit(tr, va)
    assert 1 <= es.best_iteration_ <= FAST.n_estimators


def test_binary_training_rows_per_weighting():
    clicked = np.array([1, 0, 1, 0])
    wt = np.array([5.0, 0.0, 7.0, 0.0])
    rows, y, w = binary_training_rows(clicked, wt, "watch_time")
    assert rows.tolist() == [0, 1, 2, 3] and y.tolist() == [1, 0, 1, 0]
    assert w.tolist() == [5.0, 1.0, 7.0, 1.0]
    # unbiased: the clicked rows 0 and 2 come again as negatives of weight 1
    rows, y, w = binary_training_rows(clicked, wt, "watch_time_unbiased")
    assert rows.tolist() == [0, 1, 2, 3, 0, 2] and y.tolist() == [1, 0, 1, 0, 0, 0]
    assert w.tolist() == [5.0, 1.0, 7.0, 1.0, 1.0, 1.0]
    rows, y, w = binary_training_rows(clicked, wt, "click")
    assert w.tolist() == [1.0] * 4 and y.tolist() == [1, 0, 1, 0]


def test_unbiased_lightgbm_stump_learns_mean_watch_time():
    tr, va = split(paged_world())
    clicked, wt = tr.labels()
    # no split allowed: exp(score) = Σ w y / Σ w (1 - y) = Σ T / N, the mean watch time per row
    stump = LightGBMWeightedRanker(
        LightGBMConfig(
            **{**FAST.to_dict(), "min_data_in_leaf": 10**6, "weighting": "watch_time_unbiased"}
        ),
        history_len=5,
    )
    np.testing.assert_allclose(
        stump.fit(tr).predict_expected_watch_time(va), wt.sum() / len(wt), rtol=1e-6
    )


def test_ideal_dcg_by_hand():
    # page 0 gains [1, 3] -> 3/log2(2) + 1/log2(3) = 3 + 0.63093; page 1 gains [0, 2, 2] -> 2 + 2/log2(3)
    got = ideal_dcg(np.array([0, 0, 1, 1, 1]), np.array([1.0, 3.0, 0.0, 2.0, 2.0]))
    assert got.tolist() == pytest.approx([3 + 1 / np.log2(3), 2 + 2 / np.log2(3)])


def test_lambdarank_page_weighted_puts_long_watches_first():
    tr, va = split(paged_world(n_pages=3000))
    item = va.rows["item_id"].to_numpy()
    m = LightGBMLambdaRanker(FAST, history_len=5).fit(tr, va)
    s = m.predict_score(va)
    # expected watch time per impression: item 1 ~33 s > item 2 ~15 s > item 0 ~10 s
    assert s[item == 1].mean() > s[item == 0].mean()
    # gains grow with the label, starting at 0 for unclicked
    assert m.label_gain_[0] == 0 and np.all(np.diff(m.label_gain_) > 0)
    assert len(m.label_gain_) == len(m.edges_) + 2
    assert not hasattr(m, "predict_expected_watch_time") and not m.provides_expected_watch_time
    # plain NDCG rescales every page to [0, 1]: the often-clicked click-bait wins there
    plain = LightGBMLambdaRanker(
        LightGBMConfig(**{**FAST.to_dict(), "page_weighted": False}), history_len=5
    ).fit(tr, va)
    s = plain.predict_score(va)
    assert s[item == 0].mean() > s[item == 1].mean()


def test_popularity_ranker_by_hand():
    tr, va = split(paged_world(n_pages=200))
    m = PopularityRanker(n_bins=2).fit(tr)
    pop = tr.continuous["item_popularity"].to_numpy()
    _, wt = tr.labels()
    # two bins split at the median popularity; each bin predicts its mean watch time per impression
    median = np.quantile(pop, 0.5)
    low = pop < median
    assert m.edges_.tolist() == [median]
    pred = m.predict_expected_watch_time(tr)
    assert pred[low] == pytest.approx(np.full(low.sum(), wt[low].mean()))
    assert pred[~low] == pytest.approx(np.full((~low).sum(), wt[~low].mean()))
    np.testing.assert_array_equal(m.predict_score(va), va.continuous["item_popularity"].to_numpy())


def test_save_load_roundtrips(tmp_path):
    tr, va = split(paged_world(n_pages=400))
    for cls in (LightGBMWeightedRanker, LightGBMLambdaRanker):
        m = cls(FAST, history_len=5).fit(tr, va)
        m.save(tmp_path / cls.kind)
        back = cls.load(tmp_path / cls.kind)
        np.testing.assert_allclose(back.predict_score(va), m.predict_score(va))
        assert back.config == m.config
    with pytest.raises(ValueError, match="not a 'lightgbm_lambdarank'"):
        LightGBMLambdaRanker.load(tmp_path / "lightgbm_weighted")
    p = PopularityRanker(3).fit(tr)
    p.save(tmp_path / "pop")
    np.testing.assert_array_equal(
        PopularityRanker.load(tmp_path / "pop").predict_expected_watch_time(va),
        p.predict_expected_watch_time(va),
    )
    with pytest.raises(FileNotFoundError, match="missing baseline.json"):
        LightGBMWeightedRanker.load(tmp_path / "nothing")


def test_errors():
    tr, _ = split(paged_world(n_pages=100))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        LightGBMWeightedRanker(FAST).predict_score(tr)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        PopularityRanker().predict_expected_watch_time(tr)
    unlabeled = tr.take(np.arange(4))
    unlabeled.rows = unlabeled.rows.drop(columns=["clicked", "watch_time"])
    with pytest.raises(ValueError, match="train frame has no labels"):
        LightGBMWeightedRanker(FAST).fit(unlabeled)
    no_clicks = tr.take(np.flatnonzero(tr.labels()[0] == 0))
    with pytest.raises(ValueError, match="no clicked rows"):
        LightGBMLambdaRanker(FAST).fit(no_clicks)
    with pytest.raises(ValueError, match="n_bins must be >= 1"):
        PopularityRanker(0)
