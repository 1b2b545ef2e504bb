"""The synthetic world (features.sources.synthetic): determinism, the statistical properties
its data must show, ground truth consistent with sampling, reference policies, the closed
loop, the KuaiRand catalog option and every input error."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from vidrec.features.schema import validate_dataset
from vidrec.features.sources.kuairand_catalog import load_kuairand_catalog
from vidrec.features.sources.synthetic import (
    DAY,
    PRESETS,
    World,
    WorldConfig,
    generate_world,
    impressions_to_watches,
)
from vidrec.features.tables import TABLES


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(WorldConfig.preset("tiny"), seed=0)


def _item_topics(world: World, idx: np.ndarray) -> list[set[int]]:
    return [
        set(t[w > 0].tolist())
        for t, w in zip(world.item_topics[idx], world.item_topic_weight[idx], strict=True)
    ]


# ----------------------------------------------------------------------------- config


def test_presets_and_overrides() -> None:
    assert set(PRESETS) == {"tiny", "default", "large"}
    tiny = WorldConfig.preset("tiny")
    assert (tiny.n_users, tiny.n_items, tiny.impressions) == (500, 1_000, 20_000)
    default = WorldConfig.preset("default")
    assert default.n_users >= 20_000 and default.n_items == 50_000
    assert default.impressions >= 2_000_000
    large = WorldConfig.preset("large")
    assert (large.n_users, large.n_items) == (1_000_000, 1_000_000)
    # string overrides (a command line) are converted to the field's type
    cfg = WorldConfig.preset("tiny", n_users="40", w_fresh="0.5", catalog_path="none")
    assert (cfg.n_users, cfg.w_fresh, cfg.catalog_path, cfg.name) == (40, 0.5, None, "tiny")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: WorldConfig.preset("huge"),
            "unknown world preset 'huge'; choose one of: tiny, default, large",
        ),
        (
            lambda: WorldConfig.preset("tiny", n_userz=3),
            r"unknown WorldConfig field\(s\) \['n_userz'\]",
        ),
        (lambda: WorldConfig.preset("tiny", n_users="many"), "n_users expects a int"),
        (lambda: WorldConfig(n_users=0), "n_users must be a positive integer"),
        (lambda: WorldConfig(impressions=-1), "impressions must be an integer >= 0"),
        (
            lambda: WorldConfig(searches_per_visit=-0.1),
            "searches_per_visit must be a finite number >= 0",
        ),
        (
            lambda: WorldConfig(fresh_tau_days=0.0),
            "fresh_tau_days and completion_concentration must be > 0",
        ),
        (lambda: WorldConfig(activity_alpha=1.0), "activity_alpha must be > 1"),
        (lambda: WorldConfig(catalog="movielens"), "catalog must be one of"),
        (lambda: WorldConfig(n_items=5), r"n_items \(5\) must be >= slate_size \(10\)"),
        (lambda: WorldConfig(start="not a date"), "cannot parse time 'not a date'"),
    ],
)
def test_config_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_generate_world_argument_errors() -> None:
    with pytest.raises(TypeError, match="config must be a WorldConfig"):
        generate_world("tiny", seed=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an integer"):
        generate_world(WorldConfig.preset("tiny"), seed=1.5)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the dataset


def test_dataset_satisfies_the_contract(world: World) -> None:
    ds = world.dataset
    assert ds.name == "synthetic:tiny"
    checked = validate_dataset(ds)  # raises DataContractError on any problem
    for name in TABLES:
        pd.testing.assert_frame_equal(checked.table(name), ds.table(name), check_dtype=True)
    assert ds.users.columns.tolist() == [
        "user_id", "gender", "age_bucket", "country", "language", "account_age_days",
    ]  # fmt: skip
    assert ds.items.columns.tolist() == [
        "item_id", "upload_time", "duration", "channel_id", "topics", "language", "title",
    ]  # fmt: skip
    imp = ds.impressions
    assert imp is not None and set(imp["source"]) == {"logging"}
    assert set(imp["position"]) == set(range(10))
    # watch time only on clicked impressions, never negative
    assert (imp.loc[imp["clicked"] == 0, "watch_time"] == 0).all()
    assert (imp["watch_time"] >= 0).all()
    # window: 28 days from 2026-01-01 UTC; events inside it (watches start after impressions)
    assert world.start == 1_767_225_600 and world.end - world.start == 28 * DAY
    assert imp["timestamp"].between(world.start, world.end - 1).all()
    # hidden future items: in the catalog, not in the dataset, uploaded after the window
    hidden = world.catalog[~world.catalog["item_id"].isin(ds.items["item_id"])]
    assert len(hidden) > 0 and (hidden["upload_time"] >= world.end).all()
    assert (ds.items["upload_time"] < world.end).all()
    # some items were uploaded before the window, some during it
    assert (ds.items["upload_time"] < world.start).any()
    assert (ds.items["upload_time"] >= world.start).any()


def test_determinism_for_a_seed(world: World) -> None:
    again = generate_world(WorldConfig.preset("tiny"), seed=0)
    for name in TABLES:
        pd.testing.assert_frame_equal(again.dataset.table(name), world.dataset.table(name))
    assert again.card() == world.card()
    other = generate_world(WorldConfig.preset("tiny"), seed=1)
    assert not other.dataset.watches.equals(world.dataset.watches)


# ----------------------------------------------------------------------------- properties


def test_popularity_skew_and_heavy_users(world: World) -> None:
    ds = world.dataset
    per_item = ds.watches["item_id"].value_counts().reindex(ds.items["item_id"], fill_value=0)
    counts = np.sort(per_item.to_numpy())[::-1]
    # under uniform popularity the top 10% of items would hold about 10% of watches
    assert counts[: len(counts) // 10].sum() / counts.sum() > 0.4
    per_user = np.sort(np.bincount(ds.watches["user_id"], minlength=world.n_users))[::-1]
    assert per_user[: world.n_users // 10].sum() / per_user.sum() > 0.3
    assert per_user.max() > 10 * max(1.0, float(np.median(per_user)))
    card = world.card()
    assert card["popularity"]["top10pct_items_watch_share"] == pytest.approx(
        counts[: round(0.1 * len(counts))].sum() / counts.sum()
    )
    assert card["popularity"]["gini_items"] > 0.5


def test_click_bait_raises_clicks_and_lowers_completion(world: World) -> None:
    imp = world.dataset.impressions
    assert imp is not None
    idx = world._item_index(imp["item_id"].to_numpy())
    assert np.corrcoef(world.appeal[idx], imp["clicked"])[0, 1] > 0.02
    clicked = imp["clicked"].to_numpy() == 1
    completion = imp["watch_time"].to_numpy()[clicked] / world.duration[idx[clicked]]
    assert np.corrcoef(world.appeal[idx[clicked]], completion)[0, 1] < -0.2
    # and it shows in titles: appealing items carry click-bait phrases far more often
    bait = world.catalog["title"].str.contains("shocking|insane|believe|gone wrong|must see")
    high = world.appeal > 1.0
    assert bait[high].mean() > 0.5 > 0.1 > bait[~high].mean()


def test_freshness_watch_rate_declines_with_item_age(world: World) -> None:
    w = world.dataset.watches
    idx = world._item_index(w["item_id"].to_numpy())
    up = world.upload_time[idx]
    age = (w["timestamp"].to_numpy() - up) / DAY
    # items uploaded in the window's first 14 days are observed for their first 14 days whole,
    # so watches in their first week vs their second week compare equal exposure times
    observed = (up >= world.start) & (up < world.end - 14 * DAY)
    first = int(((age < 7) & observed).sum())
    second = int(((age >= 7) & (age < 14) & observed).sum())
    assert first > 1.3 * second > 0
    # the truth: a fixed user-item pair at age 0 vs age 14 days (freshness exp(-age/4 d))
    u, i = np.array([0]), np.array([int(np.argmax(world.upload_time))])
    item = world.item_ids[i]
    t0 = int(world.upload_time[i[0]])
    assert world.p_click(u, item, t0)[0] > world.p_click(u, item, t0 + 14 * DAY)[0]
    assert world.p_click(u, item, t0 - 1)[0] == 0.0  # not uploaded yet


def test_searches_precede_related_watches(world: World) -> None:
    s, w = world.dataset.searches, world.dataset.watches
    assert s is not None and len(s) > 100
    word_topic = {word: t for t, row in enumerate(world.topic_words) for word in row}
    query_topics = [{word_topic[x] for x in q.split(" ")} for q in s["query"]]
    # the next watch of the same user after each search
    w = w.sort_values(["user_id", "timestamp"], kind="stable")
    wkey = w["user_id"].to_numpy() * 10**10 + w["timestamp"].to_numpy()
    skey = s["user_id"].to_numpy() * 10**10 + s["timestamp"].to_numpy()
    j = np.searchsorted(wkey, skey, side="right")
    ok = j < len(w)
    ok[ok] &= w["user_id"].to_numpy()[j[ok]] == s["user_id"].to_numpy()[ok]
    nxt = _item_topics(world, world._item_index(w["item_id"].to_numpy()[j[ok]]))
    q = [query_topics[k] for k in np.flatnonzero(ok)]
    overlap = np.mean([len(a & b) > 0 for a, b in zip(q, nxt, strict=True)])
    perm = np.random.default_rng(0).permutation(len(nxt))
    chance = np.mean([len(q[k] & nxt[perm[k]]) > 0 for k in range(len(q))])
    assert overlap > 0.8 and overlap > 2.5 * chance


def test_demographics_geography_channels_and_language(world: World) -> None:
    users, items = world.dataset.users, world.catalog
    # interests differ more between genders f/m than between two random halves of users
    th = world.interest.astype(np.float64)
    g = users["gender"].to_numpy()
    tv_gender = 0.5 * np.abs(th[g == "f"].mean(0) - th[g == "m"].mean(0)).sum()
    half = np.random.default_rng(0).random(world.n_users) < 0.5
    tv_random = 0.5 * np.abs(th[half].mean(0) - th[~half].mean(0)).sum()
    assert tv_gender > 1.5 * tv_random
    # geography -> language: most users speak their country's primary language
    assert (users.loc[users["country"] == "JP", "language"] == "ja").mean() > 0.6
    # channels specialise: most of a channel's items carry its main topic
    first = world.item_topics[:, 0]
    main = world.channel_topics[world.item_channel, 0]
    assert (first == main).mean() > 0.7
    # watches are in the user's language far more often than a random catalog item is
    w = world.dataset.watches
    ulang = users["language"].to_numpy()[w["user_id"].to_numpy()]
    ilang = items.set_index("item_id").loc[w["item_id"], "language"].to_numpy()
    chance_lang = items["language"].to_numpy()[
        np.random.default_rng(0).integers(0, len(items), size=len(w))
    ]
    assert (ulang == ilang).mean() > 1.5 * (ulang == chance_lang).mean()
    assert (items["language"] == "en").mean() < 0.6


# ----------------------------------------------------------------------------- ground truth


def test_ground_truth_matches_monte_carlo_sampling(world: World) -> None:
    # fixed (user, item, t, position = 2): n impressions through respond
    u, t, n = 7, world.end - DAY, 40_000
    ewt = world.expected_watch_time(np.arange(world.n_users), np.full(world.n_users, 3), t)
    items = world.oracle_slates(np.array([u]), t, 3)[0]  # 3 items of high E[watch] for u
    slates = np.tile(items, (n, 1))  # (n, 3), the item of interest in column 2
    imp = world.respond(np.full(n, u), slates, t, np.random.default_rng(1))
    at2 = imp[imp["position"] == 2]
    target = np.array([items[2]])
    p = world.p_click([u], target, t, position=[2])[0]
    mean_given_click = world.expected_watch_given_click([u], target, t)[0]
    expected = world.expected_watch_time([u], target, t, position=2)[0]
    assert expected == pytest.approx(p * mean_given_click)
    assert len(at2) == n and ewt.shape == (world.n_users,)
    # Var[W] = p E[W^2 | click] - E[W]^2 with W | click = d B, B ~ Beta(m k, (1-m) k):
    # E[B^2] = m(1-m)/(k+1) + m^2. With n = 40,000 draws, SE = sqrt(Var / n); allow 4 SE
    # (a 6e-5 two-sided chance of failing for a correct implementation).
    d = world.duration[world._item_index(target)[0]]
    m = mean_given_click / d
    kappa = world.config.completion_concentration
    var = p * d**2 * (m * (1 - m) / (kappa + 1) + m**2) - expected**2
    se = math.sqrt(var / n)
    assert abs(at2["watch_time"].mean() - expected) < 4 * se
    # click rate: binomial SE sqrt(p(1-p)/n)
    assert abs(at2["clicked"].mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    # completion among clicks: mean m, SE sqrt(m(1-m)/(k+1) / n_clicks)
    clicked = at2[at2["clicked"] == 1]
    comp_se = math.sqrt(m * (1 - m) / (kappa + 1) / len(clicked))
    assert abs((clicked["watch_time"] / d).mean() - m) < 4 * comp_se


def test_position_bias_and_slate_value(world: World) -> None:
    u, t = np.array([3, 4]), world.end
    slate = world.oracle_slates(u, t, 4)
    flat_u, flat_i = np.repeat(u, 4), slate.ravel()
    pos = np.tile(np.arange(4), 2)
    # examination (1 + position) ** -0.8: position 3 is seen with probability 4 ** -0.8 = 0.330
    ratio = world.p_click(flat_u, flat_i, t, position=pos) / world.p_click(flat_u, flat_i, t)
    np.testing.assert_allclose(ratio, (1.0 + pos) ** -0.8)
    value = world.expected_watch_time(flat_u, flat_i, t, position=pos).reshape(2, 4).sum(1)
    np.testing.assert_allclose(world.slate_expected_watch_time(u, slate, t), value)
    # -1 is an empty slot worth 0; the oracle orders best first so reversing it loses value
    padded = slate.copy()
    padded[:, 3] = -1
    assert (world.slate_expected_watch_time(u, padded, t) < value).all()
    assert (world.slate_expected_watch_time(u, slate[:, ::-1], t) < value).all()


def test_oracle_beats_reference_policies(world: World) -> None:
    users, t, k = np.arange(200), world.end, 10
    rng = np.random.default_rng(5)
    oracle = world.slate_expected_watch_time(users, world.oracle_slates(users, t, k), t)
    others = {
        "random": world.random_slates(users, t, k, rng),
        "most_popular": world.most_popular_slates(users, t, k),
        "logging": world.logging_policy_slates(users, t, k, rng),
    }
    values = {name: world.slate_expected_watch_time(users, s, t) for name, s in others.items()}
    for name, v in values.items():
        assert (oracle >= v - 1e-9).all(), name  # exact optimum for every user
        assert oracle.mean() > 1.5 * v.mean(), name
    # the logging policy is reasonable: far better than random
    assert values["logging"].mean() > 3 * values["random"].mean()
    # oracle over a candidate subset: the best of those candidates
    cands = np.tile(others["random"][0], (len(users), 1))
    sub = world.oracle_slates(users, t, 3, candidates=cands)
    shared = world.oracle_slates(users, t, 3, candidates=others["random"][0])
    np.testing.assert_array_equal(sub, shared)
    assert set(sub[0]) <= set(others["random"][0])


def test_policies_return_distinct_uploaded_items(world: World) -> None:
    users = np.arange(300)
    t = np.full(len(users), world.start)
    rng = np.random.default_rng(2)
    for slates in (
        world.random_slates(users, t, 10, rng),
        world.most_popular_slates(users, t, 10),
        world.logging_policy_slates(users, t, 10, rng),
        world.oracle_slates(users, t, 10),
    ):
        assert slates.shape == (300, 10)
        assert (np.sort(slates, axis=1)[:, 1:] != np.sort(slates, axis=1)[:, :-1]).all()
        up = world.upload_time[world._item_index(slates)]
        assert (up <= world.start).all()


# ----------------------------------------------------------------------------- closed loop


def test_closed_loop_beyond_the_window(world: World) -> None:
    rng = np.random.default_rng(3)
    lo, hi = world.end, world.end + 2 * DAY
    users, times = world.visitors(lo, hi, rng)
    assert (np.diff(times) >= 0).all() and ((times >= lo) & (times < hi)).all()
    # expected visits = sum of activity rates x 2 days; Poisson SD = sqrt(mean)
    mean = world.activity.sum() * 2
    assert abs(len(users) - mean) < 4 * math.sqrt(mean)

    def oracle(u: np.ndarray, t: np.ndarray, k: int) -> np.ndarray:
        return world.oracle_slates(u, t, k)

    logs = world.advance(lo, hi, rng, oracle, k=5)
    ds = logs.dataset
    assert len(ds.impressions) == 5 * len(logs.slates) and set(ds.impressions["source"]) == {
        "served"
    }
    # items uploaded during these days were hidden from the dataset and are now served
    new = ds.items["upload_time"] >= world.end
    assert new.any() and len(ds.items) > len(world.dataset.items)
    served_new = ds.impressions["item_id"].isin(ds.items.loc[new, "item_id"])
    assert served_new.any()
    assert len(world.items_at(hi)) == len(ds.items) + int((world.upload_time == hi).sum())
    # the served slates' true value beats the logging policy's in the dataset window
    base = world.advance(lo, hi, np.random.default_rng(3), None, k=5)
    assert logs.slates["expected_watch_time"].mean() > base.slates["expected_watch_time"].mean()
    assert set(logs.watch_surface) == {"home", "search", "browse"}
    assert len(logs.watch_surface) == len(ds.watches)
    validate_dataset(ds)


def test_impressions_to_watches_orders_clicks_in_a_slate() -> None:
    imp = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2],
            "item_id": [10, 11, 12, 10],
            "timestamp": [100, 100, 100, 50],
            "clicked": [1, 0, 1, 1],
            "watch_time": [30.2, 0.0, 5.0, 7.0],
            "position": [0, 1, 2, 0],
        }
    )
    w = impressions_to_watches(imp)
    # user 1: first click at 100 + 1 = 101; the second after ceil(30.2) = 31 s: 132
    assert w.to_dict("list") == {
        "user_id": [1, 1, 2],
        "item_id": [10, 12, 10],
        "timestamp": [101, 132, 51],
        "watch_time": [30.2, 5.0, 7.0],
    }
    with pytest.raises(ValueError, match=r"impressions lack column\(s\) \['clicked'\]"):
        impressions_to_watches(imp.drop(columns="clicked"))


def test_card(world: World) -> None:
    card = world.card()
    imp = world.dataset.impressions
    assert imp is not None
    assert card["impressions"]["ctr"] == pytest.approx(imp["clicked"].mean())
    assert 0.01 < card["impressions"]["ctr"] < 0.2
    ctr = card["impressions"]["ctr_by_position"]
    assert len(ctr) == 10 and ctr[0] > 3 * ctr[-1]
    assert card["counts"]["items_hidden_future"] == world.n_items - len(world.dataset.items)
    assert 0.2 < card["watches"]["mean_completion"] < 0.9
    shares = card["watches"]["share_by_surface"]
    assert set(shares) == {"home", "search", "browse"} and sum(shares.values()) == pytest.approx(1)
    assert card["watches"]["frac_on_items_younger_than_7d"] > 0.1
    rate = card["watches"]["watches_per_item_day_by_age"]
    assert rate["0-1d"] > rate["3-7d"] > rate["14-28d"] and rate["0-1d"] > 2 * rate["14-28d"]
    assert card["searches"]["per_user"] > 0.5


# ----------------------------------------------------------------------------- errors


def test_input_errors(world: World) -> None:
    t, rng = world.end, np.random.default_rng(0)
    with pytest.raises(
        ValueError, match=r"1 item ids are not in the world's catalog \(first: \[99999\]\)"
    ):
        world.slate_expected_watch_time([0], [[1, 99999]], t)
    with pytest.raises(
        ValueError, match=r"user ids are not users of this world \(first: \[500\]\)"
    ):
        world.p_click([500], [1], t)
    with pytest.raises(ValueError, match="user_ids must be integers"):
        world.p_click([0.5], [1], t)
    with pytest.raises(ValueError, match="1-D of equal length"):
        world.expected_watch_time([0, 1], [1], t)
    with pytest.raises(ValueError, match=r"times must be a scalar or have shape \(2,\)"):
        world.p_click([0, 1], [1, 2], [t, t, t])
    with pytest.raises(ValueError, match="position must be >= 0"):
        world.p_click([0], [1], t, position=[-1])
    with pytest.raises(ValueError, match=r"slates must be a \(U, k\) array"):
        world.slate_expected_watch_time([0, 1], [[1, 2]], t)
    with pytest.raises(ValueError, match="1 slates repeat an item"):
        world.respond([0], [[1, 1]], t, rng)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        world.oracle_slates([0], t, 0)
    with pytest.raises(ValueError, match="fewer than k=3 distinct candidate items"):
        world.oracle_slates([0], t, 3, candidates=[1, 1, 2])
    with pytest.raises(ValueError, match=r"only \d+ items are uploaded at time"):
        world.random_slates([0], world.start - 10**9, 5, rng)
    with pytest.raises(ValueError, match="must be after start"):
        world.visitors(world.end, world.start, rng)


def test_kuairand_catalog(tmp_path) -> None:
    # the KuaiRand-Pure format: durations in ms (one missing), comma-separated tags (one missing)
    csv = tmp_path / "video_features_basic_pure.csv"
    pd.DataFrame(
        {
            "video_id": [3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11],
            "author_id": [70, 70, 71, 72, 72, 73, 74, 75, 76, 77, 78, 79],
            "video_type": "NORMAL",
            "upload_dt": ["2022-04-09"] * 6 + ["2022-04-10"] * 6,
            "video_duration": [10_000.0, 20_000.0, np.nan, 40_000.0] + [5_000.0] * 8,
            "tag": ["7", "7,9", "9", None, "12", "7", "9", "12", "7", "9", "12", "7"],
        }
    ).to_csv(csv, index=False)
    cat = load_kuairand_catalog(csv)
    assert cat.item_id.tolist() == list(range(12))  # sorted by id
    # video 1 (tag 9) lacks a duration: the median of tag-9 durations (videos 0, 6, 9 ->
    # 20 s, 5 s, 5 s) is 5 s. Video 2 lacks tags: author 72's other video (4) has tag 12.
    assert cat.duration[1] == 5.0 and cat.duration[3] == 10.0
    assert cat.latent_tag[2] == "12"
    assert cat.tag_values[cat.tag_offsets[0] : cat.tag_offsets[1]].tolist() == ["7", "9"]
    assert cat.tag_offsets[3] == cat.tag_offsets[2]  # video 2 keeps no real tag
    assert cat.missing == {"tag_imputed_from_author": 1, "tag_imputed_global_mode": 0,
                           "duration_imputed_tag_median": 1, "duration_imputed_global_median": 0}  # fmt: skip

    cfg = WorldConfig.preset("tiny", catalog="kuairand", catalog_path=str(csv), slate_size=5)
    w = generate_world(cfg, seed=0)
    items = w.dataset.items
    assert items["item_id"].tolist() == list(range(12))
    assert items.loc[2, "topics"] == [] and items.loc[0, "topics"] == ["tag7", "tag9"]
    assert items["channel_id"].iloc[0] == "70"
    # the window starts the day after the last upload day (2022-04-11 00:00 UTC)
    assert w.start == 1_649_635_200 and (items["upload_time"] < w.start).all()
    assert w.card()["catalog_missing_values"] == cat.missing
    validate_dataset(w.dataset)


def test_kuairand_catalog_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="pass catalog_path="):
        load_kuairand_catalog(tmp_path / "absent.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"video_id": [1], "author_id": [2]}).to_csv(bad, index=False)
    with pytest.raises(
        ValueError, match=r"lacks column\(s\) \['upload_dt', 'video_duration', 'tag'\]"
    ):
        load_kuairand_catalog(bad)
    pd.DataFrame(
        {
            "video_id": [1, 1],
            "author_id": [2, 2],
            "upload_dt": ["2022-04-09"] * 2,
            "video_duration": [1.0, 2.0],
            "tag": ["1", "2"],
        }  # fmt: skip
    ).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="column video_id: 1 duplicate ids"):
        load_kuairand_catalog(bad)
    pd.DataFrame(
        {
            "video_id": [1, 2],
            "author_id": [2, 2],
            "upload_dt": ["2022-04-09", "yesterday"],
            "video_duration": [1.0, 2.0],
            "tag": ["1", "2"],
        }  # fmt: skip
    ).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"column upload_dt: 1 rows are not dates"):
        load_kuairand_catalog(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        generate_world(
            WorldConfig.preset("tiny", catalog="kuairand", catalog_path=str(tmp_path / "x.csv")), 0
        )
