import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import vidrec.ranking.train as ranking_train
from vidrec.common.torch_utils import NonFiniteLossError
from vidrec.features.normalize import QuantileNormalizer
from vidrec.features.ranker_features import (
    CONTINUOUS_COLUMNS,
    FLAG_COLUMNS,
    RankerFeatureIndex,
    build_ranker_frame,
)
from vidrec.features.tables import Dataset
from vidrec.ranking.config import LightGBMConfig, RankerConfig
from vidrec.ranking.model import (
    DeepRanker,
    RankerBatch,
    example_weights,
    expected_watch_time,
    loss_weights,
    weighted_logistic_loss,
)
from vidrec.ranking.train import (
    TrainedRanker,
    fold_epochs,
    predict_expected_watch_time,
    train_ranker,
)

torch.set_num_threads(1)

# item -> (click probability, mean watch time of a click): item 0 is click-bait (often clicked,
# barely watched), item 1 is rarely clicked but watched long
TRUTH = {0: (0.5, 10.0), 1: (0.1, 300.0), 2: (0.2, 60.0), 3: (0.05, 30.0)}


def world(
    seed: int = 0, n_imps: int = 6000, n_users: int = 40, n_watches: int = 400, plain: bool = False
) -> Dataset:
    """Four items with known click rates and watch times (gamma, shape 4); random watches give
    users histories. `plain`: no watches, one user language and one source, so that only the
    item's own features vary."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": np.arange(4, dtype=np.int64),
            "upload_time": np.zeros(4, dtype=np.int64),
            "duration": [30.0, 600.0, 120.0, 60.0],
            "channel_id": ["bait", "docs", "docs", "misc"],
            "topics": [["fun"], ["science", "space"], ["science"], []],
            "language": ["en", "en", "fr", "en"],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": np.arange(n_users, dtype=np.int64),
            "language": rng.choice(["en"] if plain else ["en", "fr"], n_users).astype(object),
        }
    )
    n_w = 0 if plain else n_watches
    watches = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users, n_w).astype(np.int64),
            "item_id": rng.integers(0, 4, n_w).astype(np.int64),
            "timestamp": rng.integers(0, 10_000, n_w).astype(np.int64),
        }
    )
    item = rng.integers(0, 4, n_imps)
    p = np.array([TRUTH[i][0] for i in range(4)])[item]
    mean_t = np.array([TRUTH[i][1] for i in range(4)])[item]
    clicked = (rng.random(n_imps) < p).astype(np.int8)
    impressions = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users, n_imps).astype(np.int64),
            "item_id": item.astype(np.int64),
            "timestamp": rng.integers(0, 10_000, n_imps).astype(np.int64),
            "clicked": clicked,
            "watch_time": clicked * rng.gamma(4.0, mean_t / 4.0),
            "source": rng.choice(["ann"] if plain else ["ann", "popular"], n_imps).astype(object),
        }
    )
    return Dataset(users=users, items=items, watches=watches, impressions=impressions)


def frames(
    seed: int = 0, n_imps: int = 6000, plain: bool = False
) -> tuple[Dataset, object, object]:
    ds = world(seed, n_imps, plain=plain)
    imps = ds.impressions.sort_values("timestamp", kind="stable").reset_index(drop=True)
    cut = int(len(imps) * 0.8)
    return (
        ds,
        build_ranker_frame(ds, imps.iloc[:cut], history_len=5),
        build_ranker_frame(ds, imps.iloc[cut:], history_len=5),
    )


SMALL = dict(
    hidden=(16,), history_len=5, epochs=2, batch_size=256, n_quantiles=50, lr=0.01, patience=5
)


# ----------------------------------------------------------------------- the loss


def test_weighted_logistic_loss_by_hand():
    logits = torch.tensor([0.0, math.log(3.0)])
    clicked = torch.tensor([1, 0])
    wt = torch.tensor([10.0, 0.0])
    # row 0: clicked, -log σ(0) = ln 2, weight 10; row 1: not clicked, σ(ln 3) = 3/4,
    # -log(1 - 3/4) = ln 4, weight 1  ->  (10 ln 2 + ln 4) / 11 = (6.93147 + 1.38629) / 11
    assert float(weighted_logistic_loss(logits, clicked, wt)) == pytest.approx(
        (10 * math.log(2) + math.log(4)) / 11
    )
    # click-only: every weight 1 -> (ln 2 + ln 4) / 2
    assert float(weighted_logistic_loss(logits, clicked, wt, "click")) == pytest.approx(
        1.5 * math.log(2)
    )
    assert float(weighted_logistic_loss(logits, clicked, wt, reduction="sum")) == pytest.approx(
        12 * math.log(2)
    )
    none = weighted_logistic_loss(logits, clicked, wt, reduction="none")
    assert none.tolist() == pytest.approx([10 * math.log(2), math.log(4)])
    assert float(expected_watch_time(torch.tensor(math.log(42.0)))) == pytest.approx(42.0)


def test_weighted_logistic_loss_errors():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="must have the same shape"):
        weighted_logistic_loss(z, torch.zeros(3), z)
    with pytest.raises(ValueError, match="weighting must be one of"):
        weighted_logistic_loss(z, z, z, "views")
    with pytest.raises(ValueError, match="reduction must be"):
        weighted_logistic_loss(z, z, z, reduction="avg")


def test_weighted_odds_recover_total_watch_time_over_negatives():
    # One bias fitted by weighted LR: the optimum has odds Σ T / (N - k) exactly, and that is
    # ≈ E[T] (1 + P) with E[T] the expected watch time per impression.
    rng = np.random.default_rng(3)
    n, p = 20_000, 0.05
    clicked = torch.from_numpy((rng.random(n) < p).astype(np.int64))
    wt = torch.from_numpy(np.where(clicked.numpy() == 1, rng.exponential(120.0, n), 0.0))
    k = int(clicked.sum())
    target = float(wt.sum()) / (n - k)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([b], lr=1, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = weighted_logistic_loss(b.expand(n), clicked, wt)
        loss.backward()
        return loss

    opt.step(closure)
    assert float(torch.exp(b.detach())) == pytest.approx(target, rel=1e-4)
    true_mean = p * 120.0  # E[T] per impression = P * E[T | click] = 6 s
    assert float(torch.exp(b.detach())) == pytest.approx(true_mean * (1 + p), rel=0.1)


def test_unbiased_weighting_by_hand():
    logits = torch.tensor([0.0, math.log(3.0)])
    clicked = torch.tensor([1, 0])
    wt = torch.tensor([10.0, 0.0])
    # row 0: positive term 10 * -log σ(0) = 10 ln 2 AND negative term 1 * -log(1 - σ(0)) = ln 2;
    # row 1: negative term -log(1 - 3/4) = ln 4. Weights: (10 + 1) + 1 = 12.
    # mean = (11 ln 2 + 2 ln 2) / 12 = 13 ln 2 / 12
    u = "watch_time_unbiased"
    assert float(weighted_logistic_loss(logits, clicked, wt, u)) == pytest.approx(
        13 * math.log(2) / 12
    )
    none = weighted_logistic_loss(logits, clicked, wt, u, reduction="none")
    assert none.tolist() == pytest.approx([11 * math.log(2), 2 * math.log(2)])
    w_pos, w_neg = loss_weights(clicked, wt, u)
    assert w_pos.tolist() == [10.0, 0.0] and w_neg.tolist() == [1.0, 1.0]
    assert example_weights(clicked, wt, u).tolist() == [11.0, 1.0]


@pytest.mark.parametrize(
    ("weighting", "odds"),
    # 1 click of 8 s among 4 impressions: YT16 learns Σ T / #unclicked = 8 / 3; the unbiased
    # weighting learns Σ T / #impressions = 8 / 4 = 2 = E[T]; click-only the click odds 1 / 3
    [("watch_time", 8 / 3), ("watch_time_unbiased", 2.0), ("click", 1 / 3)],
)
def test_optimal_constant_odds_per_weighting(weighting, odds):
    clicked = torch.tensor([1, 0, 0, 0])
    wt = torch.tensor([8.0, 0.0, 0.0, 0.0])
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([b], lr=1, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = weighted_logistic_loss(b.expand(4), clicked, wt, weighting)
        loss.backward()
        return loss

    opt.step(closure)
    assert float(torch.exp(b.detach())) == pytest.approx(odds, rel=1e-4)


def test_unbiased_odds_recover_expected_watch_time_at_high_click_rate():
    # at P = 0.4 YT16's odds overshoot E[T] by 1 / (1 - P) = 1.67; the unbiased weighting doesn't
    rng = np.random.default_rng(4)
    n, p = 20_000, 0.4
    clicked = torch.from_numpy((rng.random(n) < p).astype(np.int64))
    wt = torch.from_numpy(np.where(clicked.numpy() == 1, rng.exponential(60.0, n), 0.0))
    mean_t = float(wt.mean())  # ≈ 0.4 * 60 = 24 s per impression
    fitted = {}
    for weighting in ("watch_time", "watch_time_unbiased"):
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([b], lr=1, max_iter=100, line_search_fn="strong_wolfe")

        def closure(weighting=weighting, b=b, opt=opt):
            opt.zero_grad()
            loss = weighted_logistic_loss(b.expand(n), clicked, wt, weighting)
            loss.backward()
            return loss

        opt.step(closure)
        fitted[weighting] = float(torch.exp(b.detach()))
    assert fitted["watch_time_unbiased"] == pytest.approx(mean_t, rel=2e-3)  # float32 loss
    k = int(clicked.sum())
    assert fitted["watch_time"] == pytest.approx(mean_t * n / (n - k), rel=2e-3)
    assert fitted["watch_time"] / fitted["watch_time_unbiased"] > 1.5


# ---------------------------------------------------------------------- the model


def _batch(b: int = 3, d: int = 4) -> RankerBatch:
    return RankerBatch(
        item=torch.tensor([1, 2, 0])[:b],
        history=torch.tensor([[1, 0, 0], [2, 1, 0], [0, 0, 0]])[:b],
        user_language=torch.tensor([1, 0, 1])[:b],
        item_language=torch.tensor([1, 1, 0])[:b],
        channel=torch.tensor([1, 1, 0])[:b],
        topics=torch.tensor([[1, 2], [0, 0], [2, 0]])[:b],
        source=torch.tensor([0, 1, 1])[:b],
        dense=torch.rand(b, d),
    )


SIZES = {"item": 3, "language": 2, "channel": 2, "topic": 3, "source": 2}
WIDTHS = {"item": 4, "language": 2, "channel": 2, "topic": 3, "source": 2}


def test_deep_ranker_shapes_padding_and_shared_item_table():
    torch.manual_seed(0)
    m = DeepRanker(SIZES, WIDTHS, n_dense=4, hidden=(8, 4))
    out = m(_batch())
    assert out.shape == (3,)
    # padding row 0 is the zero vector; one video table for the scored item and the bag
    assert torch.all(m.embeddings["item"].weight[0] == 0)
    assert set(m.embeddings) == {"item", "language", "channel", "topic", "source"}
    # no hidden layer: one Linear over 2*4 + 2*2 + 2 + 3 + 2 + 4 = 23 inputs
    lin = DeepRanker(SIZES, WIDTHS, n_dense=4, hidden=())
    assert [type(x).__name__ for x in lin.tower] == ["Linear"] and lin.tower[0].in_features == 23
    # without continuous features the dense block is not read at all
    nod = DeepRanker(SIZES, WIDTHS, n_dense=4, hidden=(), use_continuous=False)
    assert nod.tower[0].in_features == 19
    b = _batch()
    b.dense = torch.zeros(3, 0)
    assert nod(b).shape == (3,)


def test_bag_is_the_mean_of_non_padding_ids():
    # a linear ranker whose only non-zero weights read the watched-bag block: logit = v · mean(E[bag])
    m = DeepRanker(SIZES, WIDTHS, n_dense=0, hidden=(), use_continuous=False)
    with torch.no_grad():
        m.tower[0].weight.zero_()
        m.tower[0].bias.zero_()
        m.tower[0].weight[0, 4:8] = 1.0  # the bag block follows the scored item's 4 columns
    b = _batch()
    b.dense = torch.zeros(3, 0)
    e = m.embeddings["item"].weight
    # row 0: bag [1] -> sum E[1]; row 1: bag [2, 1] -> sum (E[1] + E[2]) / 2; row 2: empty -> 0
    want = torch.stack([e[1].sum(), (e[1] + e[2]).sum() / 2, torch.tensor(0.0)])
    torch.testing.assert_close(m(b), want)


def test_deep_ranker_errors():
    with pytest.raises(ValueError, match="need the spaces"):
        DeepRanker({"item": 3}, WIDTHS, n_dense=0)
    m = DeepRanker(SIZES, WIDTHS, n_dense=5, hidden=())
    with pytest.raises(ValueError, match="built for 5 dense features"):
        m(_batch(d=4))


def test_config_validation_and_roundtrip():
    c = RankerConfig(hidden=[64, 32], weighting="click")
    assert c.hidden == (64, 32) and RankerConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="weighting must be one of"):
        RankerConfig(weighting="views")
    with pytest.raises(ValueError, match="hidden widths must be >= 1"):
        RankerConfig(hidden=(0,))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        RankerConfig(batch_size=0)
    with pytest.raises(ValueError, match="device must be"):
        RankerConfig(device="tpu")
    with pytest.raises(ValueError, match="unknown field"):
        RankerConfig.from_dict({"hiden": [1]})
    with pytest.raises(ValueError, match="num_leaves must be >= 2"):
        LightGBMConfig(num_leaves=1)
    assert LightGBMConfig.from_dict(LightGBMConfig().to_dict()) == LightGBMConfig()


# ---------------------------------------------------------------------- training


def test_normalizer_fitted_on_train_frame_only_and_dense_layout():
    _, tr, va = frames(n_imps=1500)
    r = train_ranker(RankerConfig(**{**SMALL, "epochs": 1}), tr, va, progress=False)
    ref = QuantileNormalizer(50).fit(tr.continuous[list(CONTINUOUS_COLUMNS)])
    np.testing.assert_array_equal(r.normalizer.quantiles_, ref.quantiles_)
    assert not np.array_equal(
        r.normalizer.quantiles_, QuantileNormalizer(50).fit(va.continuous).quantiles_
    )
    # dense = 3 powers of each continuous feature + the flags
    assert r.model.n_dense == 3 * len(CONTINUOUS_COLUMNS) + len(FLAG_COLUMNS)
    lin = train_ranker(
        RankerConfig(**{**SMALL, "epochs": 1, "continuous_powers": False}), tr, va, progress=False
    )
    assert lin.model.n_dense == len(CONTINUOUS_COLUMNS) + len(FLAG_COLUMNS)


def test_exp_logit_recovers_expected_watch_time_and_weighting_demotes_click_bait():
    # `plain` world: only the item's own features vary, so the ranker's optimum is one logit per
    # item with odds Σ T / (N - k) over that item's impressions (in expectation
    # p μ / (1 - p): 10, 33.3, 15, 1.58 s for items 0..3)
    ds, tr, _ = frames(plain=True)
    cfg = RankerConfig(
        hidden=(), use_continuous=False, history_len=5, epochs=60, batch_size=1200, lr=0.02
    )
    weighted = train_ranker(cfg, tr, None, progress=False)
    ewt = weighted.predict_expected_watch_time(tr)
    item = tr.rows["item_id"].to_numpy()
    clicked, wt = tr.labels()
    for i in range(4):
        m = item == i
        target = wt[m].sum() / (m.sum() - clicked[m].sum())
        assert ewt[m].mean() == pytest.approx(target, rel=0.05), i
    # click-bait (p=.5, 10 s) vs long watch (p=.1, 300 s): weighted ranks the long watch first,
    # click-only ranks the click-bait first
    assert ewt[item == 1].mean() > 2 * ewt[item == 0].mean()
    click = train_ranker(
        RankerConfig(**{**cfg.to_dict(), "weighting": "click"}), tr, None, progress=False
    )
    logit = click.predict_logit(tr)
    assert logit[item == 0].mean() > logit[item == 1].mean()
    assert weighted.best_epoch == 60 and len(weighted.history) == 60


def test_early_stopping_keeps_best_epoch():
    _, tr, va = frames(n_imps=1500)
    # a huge step size makes the validation loss worse after a while; patience 1 stops there
    r = train_ranker(
        RankerConfig(**{**SMALL, "epochs": 8, "lr": 0.5, "patience": 1}), tr, va, progress=False
    )
    losses = [h["valid_loss"] for h in r.history]
    assert r.best_epoch == 1 + int(np.argmin(losses))
    assert len(r.history) == r.best_epoch + 1 or len(r.history) == 8


def test_a_diverging_ranker_stops_with_an_error(tmp_path):
    _, tr, va = frames(n_imps=1500)
    # Adam steps of 1e20 overflow the logits in the first epoch: the loss is NaN from then on
    cfg = RankerConfig(**{**SMALL, "lr": 1e20})
    with pytest.raises(NonFiniteLossError) as caught:
        train_ranker(cfg, tr, va, checkpoint_dir=tmp_path, progress=False)
    assert str(caught.value).startswith("ranker: the training loss is nan at epoch 1:")
    assert "lower ranking.lr (now 1e+20) and train again" in str(caught.value)
    assert not (tmp_path / "checkpoint.pt").exists()  # the diverged epoch is not kept


def test_without_selection_on_valid_every_epoch_runs_and_the_last_weights_are_kept():
    _, tr, va = frames(n_imps=1500)
    cfg = RankerConfig(**{**SMALL, "epochs": 5, "lr": 0.5, "patience": 1})
    picked = train_ranker(cfg, tr, va, progress=False)
    last = train_ranker(cfg, tr, va, progress=False, select_on_valid=False)
    losses = [h["valid_loss"] for h in last.history]
    assert len(losses) == 5 and last.best_epoch == 5  # patience 1 did not stop it
    assert np.argmin(losses) != 4  # the huge step makes the last epoch worse than the best
    plain = train_ranker(cfg, tr, None, progress=False)  # the same weights as without valid
    for a, b in zip(last.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)
    assert picked.best_epoch < 5


def test_fold_epochs_holds_every_user_out_once_and_picks_the_least_mean_loss(monkeypatch):
    _, tr, _ = frames(n_imps=1500)
    calls = []
    real = ranking_train.train_ranker

    def spy(config, train_frame, valid_frame, **kw):
        calls.append((config, train_frame.rows["user_id"], valid_frame.rows["user_id"]))
        return real(config, train_frame, valid_frame, **kw)

    monkeypatch.setattr(ranking_train, "train_ranker", spy)
    cfg = RankerConfig(**{**SMALL, "epochs": 4, "lr": 0.5, "patience": 1, "calibrate": True})
    epochs, curve = fold_epochs(cfg, tr, 3)
    assert len(calls) == 3 and len(curve) == 4
    assert epochs == 1 + int(np.argmin(curve))
    held = [set(v) for _, _, v in calls]
    assert set().union(*held) == set(tr.rows["user_id"])  # every user held out ...
    assert sum(len(h) for h in held) == len(set(tr.rows["user_id"]))  # ... exactly once
    for config, t, v in calls:
        assert not set(t) & set(v)  # a held-out user's rows never train its fold's model
        assert len(t) + len(v) == len(tr)
        assert config.patience == 4 and not config.calibrate  # all epochs; no calibration
    again, curve2 = fold_epochs(cfg, tr, 3)  # seeded: the same folds and curve
    assert (again, curve2) == (epochs, curve)
    with pytest.raises(ValueError, match="at least 2 folds"):
        fold_epochs(cfg, tr, 1)
    with pytest.raises(ValueError, match="cannot fill"):
        fold_epochs(cfg, tr, 10_000)


def test_checkpoints_resume_to_the_same_weights(tmp_path):
    _, tr, va = frames(n_imps=1500)
    cfg4 = RankerConfig(**{**SMALL, "epochs": 4, "patience": 10})
    straight = train_ranker(cfg4, tr, va, progress=False)
    ck = tmp_path / "ck"
    train_ranker(
        RankerConfig(**{**SMALL, "epochs": 2, "patience": 10}),
        tr,
        va,
        checkpoint_dir=ck,
        progress=False,
    )
    assert {p.name for p in ck.iterdir()} >= {
        "config.json",
        "vocabularies.json",
        "normalizer.json",
        "checkpoint.pt",
    }
    saved = torch.load(ck / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 2
    resumed = train_ranker(cfg4, tr, va, checkpoint_dir=ck, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v)
    with pytest.raises(ValueError, match="different config"):
        train_ranker(
            RankerConfig(**{**SMALL, "lr": 0.5}), tr, va, checkpoint_dir=ck, progress=False
        )


def test_save_load_roundtrip_and_single_user_scoring(tmp_path):
    ds, tr, va = frames(n_imps=1500)
    r = train_ranker(RankerConfig(**{**SMALL, "epochs": 1}), tr, va, progress=False)
    r.save(tmp_path / "ranker")
    back = TrainedRanker.load(tmp_path / "ranker")
    np.testing.assert_allclose(back.predict_logit(va), r.predict_logit(va), rtol=1e-6)
    assert back.config == r.config and back.best_epoch == r.best_epoch
    # one user's candidates at t (through a prebuilt index): same numbers as the bulk path
    ix = RankerFeatureIndex(ds)
    df = predict_expected_watch_time(
        back, ix, 3, [2, 0, 1], 5000, cg_scores=[0.1, 0.3, 0.2], cg_ranks=[9, 1, 4]
    )
    assert df["item_id"].tolist() == [2, 0, 1]
    req = pd.DataFrame(
        {
            "user_id": np.full(3, 3, dtype=np.int64),
            "item_id": np.array([2, 0, 1], dtype=np.int64),
            "timestamp": np.full(3, 5000, dtype=np.int64),
            "cg_score": [0.1, 0.3, 0.2],
            "cg_rank": [9, 1, 4],
        }
    )
    bulk = r.predict_expected_watch_time(build_ranker_frame(ds, req, history_len=5))
    np.testing.assert_allclose(df["expected_watch_time"].to_numpy(), bulk, rtol=1e-6)
    assert len(back.score_items(ds, 3, [], 5000)) == 0
    with pytest.raises(ValueError, match="cg_scores has 1 values for 2 item_ids"):
        back.score_items(ds, 3, [1, 2], 5000, cg_scores=[0.1])
    with pytest.raises(ValueError, match="cg_ranks has 1 values for 2 item_ids"):
        back.score_items(ds, 3, [1, 2], 5000, cg_scores=[0.1, 0.2], cg_ranks=[1])
    with pytest.raises(FileNotFoundError, match="not a saved TrainedRanker"):
        TrainedRanker.load(tmp_path / "nothing")


def test_distinct_bags_give_the_same_logits_as_one_bag_per_row():
    import torch

    ds, tr, va = frames(n_imps=1500)
    r = train_ranker(RankerConfig(**{**SMALL, "epochs": 1}), tr, va, progress=False)
    inputs = r._inputs(va)
    rows = np.arange(len(va))
    shared = inputs.batch(rows, torch.device("cpu"), distinct_bags=True)
    per_row = inputs.batch(rows, torch.device("cpu"))
    assert shared.history_row is not None and per_row.history_row is None
    assert len(shared.history) < len(per_row.history)  # pages share their user's bag
    np.testing.assert_array_equal(shared.history[shared.history_row], per_row.history)
    with torch.inference_mode():
        a, b = r.model(shared), r.model(per_row)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # bit for bit


def test_training_input_errors():
    ds, tr, va = frames(n_imps=500)
    unlabeled = build_ranker_frame(
        ds, ds.impressions[["user_id", "item_id", "timestamp"]], history_len=5
    )
    with pytest.raises(ValueError, match="train_frame has no labels"):
        train_ranker(RankerConfig(**SMALL), unlabeled, va, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cuda_request_without_cuda_is_refused():
    _, tr, va = frames(n_imps=300)
    with pytest.raises(ValueError, match="CUDA is not available"):
        train_ranker(RankerConfig(**{**SMALL, "device": "cuda"}), tr, va, progress=False)


def test_dropout_is_active_in_training_only_and_validated():
    m = DeepRanker(SIZES, WIDTHS, n_dense=4, hidden=(64, 64), dropout=0.5)
    assert sum(isinstance(x, torch.nn.Dropout) for x in m.tower) == 2
    b = _batch()
    m.eval()
    torch.testing.assert_close(m(b), m(b))  # eval: deterministic
    m.train()
    torch.manual_seed(0)
    assert not torch.equal(m(b), m(b))  # training: units dropped at random
    assert m.spec()["dropout"] == 0.5
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        DeepRanker(SIZES, WIDTHS, n_dense=4, dropout=1.0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        RankerConfig(dropout=-0.1)


def test_calibrated_ranker_keeps_the_order_and_round_trips(tmp_path):
    ds, tr, va = frames(n_imps=3000)
    raw = train_ranker(RankerConfig(**{**SMALL, "epochs": 1}), tr, va, progress=False)
    cal = train_ranker(
        RankerConfig(**{**SMALL, "epochs": 1, "calibrate": True}), tr, va, progress=False
    )
    assert raw.calibrator is None and cal.calibrator is not None
    # same network (same seed and batches): identical logits; the calibrated watch time is a
    # strictly increasing function of them, so every row keeps its rank
    np.testing.assert_allclose(cal.predict_logit(va), raw.predict_logit(va), rtol=1e-6)
    lg, ewt = cal.predict_logit(va), cal.predict_expected_watch_time(va)
    order = np.argsort(lg, kind="stable")
    assert np.all(np.diff(ewt[order]) >= 0)
    assert not np.allclose(ewt, np.exp(lg))
    # on the validation rows it was fitted on, Σ calibrated ≈ Σ observed (pooled bins keep sums
    # up to the piecewise-linear interpolation inside bins)
    clicked, wt = va.labels()
    assert ewt.sum() == pytest.approx(np.where(clicked, wt, 0.0).sum(), rel=0.25)
    cal.save(tmp_path / "r")
    back = TrainedRanker.load(tmp_path / "r")
    np.testing.assert_allclose(back.predict_expected_watch_time(va), ewt, rtol=1e-6)
    # a tampered calibration file is refused by its digest; a missing record too
    (tmp_path / "r" / "calibration.json").write_text("{}")
    with pytest.raises(Exception, match="calibration.json"):
        TrainedRanker.load(tmp_path / "r")
    raw.save(tmp_path / "r")  # overwriting with an uncalibrated model removes the old file
    assert not (tmp_path / "r" / "calibration.json").exists()
    assert TrainedRanker.load(tmp_path / "r").calibrator is None
    with pytest.raises(ValueError, match="calibrate=true fits the watch-time calibrator"):
        train_ranker(RankerConfig(**{**SMALL, "calibrate": True}), tr, None, progress=False)
    click = train_ranker(
        RankerConfig(**{**SMALL, "epochs": 1, "calibrate": True, "weighting": "click"}),
        tr,
        va,
        progress=False,
    )
    assert click.calibrator is None  # click odds are never mapped to watch time
    # too few validation rows to fit bins: no calibrator (a warning), and it saves and loads
    few = train_ranker(
        RankerConfig(**{**SMALL, "epochs": 1, "calibrate": True}),
        tr,
        va.take(np.arange(30)),
        progress=False,
    )
    assert few.calibrator is None
    few.save(tmp_path / "few")
    assert TrainedRanker.load(tmp_path / "few").calibrator is None


def test_random_exposure_slice_metrics_cover_only_its_rows():
    from vidrec.evaluation.ranking import ranking_metrics
    from vidrec.pipelines.stages_rank import slice_metrics

    _, tr, _ = frames(n_imps=1500)  # sources "ann" and "popular"
    clicked, watch = tr.labels()
    groups = tr.page_ids()
    rng = np.random.default_rng(0)
    scores = {"a": rng.random(len(tr)), "b": rng.random(len(tr))}
    assert slice_metrics(tr, groups, clicked, watch, scores, "random") == {}
    out = slice_metrics(tr, groups, clicked, watch, scores, "popular")["popular_exposure"]
    sel = np.flatnonzero(tr.rows["source"].to_numpy() == "popular")
    assert out["n_rows"] == len(sel) > 0
    expect = ranking_metrics(groups[sel], clicked[sel], watch[sel], scores["b"][sel])
    # the same metrics as computed on those rows alone (NaN where pages are single rows)
    assert json.dumps(out["metrics"]["b"], sort_keys=True) == json.dumps(expect, sort_keys=True)


def test_progress_goes_to_the_log_one_line_per_epoch_and_bars_only_on_a_terminal(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], monkeypatch
):
    import sys

    from vidrec.common.torch_utils import progress_bar

    _, tr, va = frames(n_imps=300)
    for progress in (True, False):  # without bars the epochs still log their lines
        caplog.clear()
        with caplog.at_level("INFO"):
            train_ranker(RankerConfig(**{**SMALL, "epochs": 2}), tr, va, progress=progress)
        epochs = [
            r.getMessage() for r in caplog.records if r.getMessage().startswith("ranker epoch")
        ]
        assert [m.split(":")[0] for m in epochs] == ["ranker epoch 1", "ranker epoch 2"]
    assert "\r" not in capsys.readouterr().err  # stderr is not a terminal here: no bar drawn
    assert progress_bar(True, total=3).disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert not progress_bar(True, total=3).disable and progress_bar(False, total=3).disable


def test_score_requests_gives_the_frame_paths_numbers_without_strings():
    """The serving path (numeric features, catalog codes built once) against score_items
    (a DataFrame of requests, a RankerFrame, string lookups): equal expected watch times for
    known and unknown users, with and without CG scores and ranks, missing channels and
    languages, extra item columns of every kind, item time signals and fresh watches."""
    from dataclasses import replace

    base = world(n_imps=1500)
    items = base.items.assign(
        channel_id=["bait", None, "docs", "misc"],
        language=["en", "en", None, "de"],
        studio=["a", "b", "a", None],
        rating=[1.0, 2.5, np.nan, 4.0],
        tags=[["x"], ["y", "z"], [], ["x"]],
    )
    columns = {"items": {"studio": "categorical", "rating": "continuous", "tags": "multi"}}
    ds = replace(base, items=items, columns=columns)
    windows = (600, 3600, 7200)
    imps = ds.impressions.sort_values("timestamp", kind="stable").reset_index(drop=True)
    cut = int(len(imps) * 0.8)
    tr, va = (
        build_ranker_frame(ds, part, history_len=5, time_windows=windows)
        for part in (imps.iloc[:cut], imps.iloc[cut:])
    )
    r = train_ranker(
        RankerConfig(**{**SMALL, "epochs": 1, "time_windows": windows}), tr, va, progress=False
    )
    assert r.vocabularies.attribute is not None  # the extra columns reach the model
    ix = RankerFeatureIndex(ds)
    codes = r.catalog_codes(ix)
    ids = np.array([2, 0, 1, 3, 0], dtype=np.int64)
    scores = np.array([0.1, 0.3, np.nan, 0.2, 0.3])
    cases = [
        {},
        {"cg_scores": scores},
        {"cg_scores": scores, "cg_ranks": np.array([9.0, 1.0, np.nan, 4.0, 2.0])},
        {"source": "ann"},
        {"source": "never seen"},
    ]
    for user in (3, 17, 10_000):  # 10_000: not in the data
        for t in (0, 5000, 20_000):
            for kw in cases:
                fast = r.score_requests(ix, codes, user, ids, t, **kw)
                slow = r.score_items(ix, user, ids, t, **kw)["expected_watch_time"].to_numpy()
                np.testing.assert_array_equal(fast, slow)
    # a view with fresh watches shares the catalog, and so the codes
    view = ix.for_user(3, np.array([1, 1, 2]), np.array([4990, 4995, 4999]))
    np.testing.assert_array_equal(
        r.score_requests(view, codes, 3, ids, 5000, source="ann"),
        r.score_items(view, 3, ids, 5000, source="ann")["expected_watch_time"].to_numpy(),
    )
    assert len(r.score_requests(ix, codes, 3, np.zeros(0, dtype=np.int64), 5000)) == 0
    with pytest.raises(ValueError, match=r"item\(s\) \[77\] are not in the catalog"):
        r.score_requests(ix, codes, 3, np.array([1, 77]), 5000)
    with pytest.raises(ValueError, match="cg_scores has shape"):
        r.score_requests(ix, codes, 3, ids, 5000, cg_scores=[0.1])
    with pytest.raises(ValueError, match="cg_ranks must be >= 1"):
        r.score_requests(ix, codes, 3, ids[:1], 5000, cg_scores=[0.1], cg_ranks=[0.0])
    other = RankerFeatureIndex(replace(ds, items=items.iloc[:3], columns=columns))
    with pytest.raises(ValueError, match="catalog codes cover 4 items, the index 3"):
        r.score_requests(other, codes, 3, ids[:1], 5000)
