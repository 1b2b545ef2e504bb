"""Leakage and train/serve skew of the candidate generator.

- Nothing uploaded after the training examples (the future) is drawn as a sampled negative,
  enters the uniform SSL item batch, or counts in the CFM mutual-information matrix.
- A training row scores only items servable at its own time, and sees each item's upload age
  at that time: the definition serving uses (`CandidateFeaturizer.item_features` at the
  request time).
- Validation Recall@k ranks, for each validation label, the items servable at its time with
  their upload ages then.
"""

from __future__ import annotations

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
from vidrec.features.examples import CandidateFeaturizer
from vidrec.features.split import TimeSplit

BASE = {**_TRAIN_BASE, "ssl_batch_size": 64}
N_LATE = 40  # items uploaded after the training window


def _late_world():
    """random_dataset plus N_LATE items uploaded from train_end on (some watched in valid)."""
    ds = random_dataset(n_users=60, n_items=120, n_watches=3000, n_searches=400)
    split = TimeSplit.from_fractions(ds, 0.7, 0.15)
    rng = np.random.default_rng(5)
    late_ids = np.arange(N_LATE, dtype=np.int64) + 10_000
    late = pd.DataFrame(
        {
            "item_id": late_ids,
            # the first one at train_end exactly: not servable to any training example
            "upload_time": split.train_end
            + np.r_[0, rng.integers(0, split.test_end - split.train_end, N_LATE - 1)],
            "duration": rng.exponential(600.0, N_LATE),
            "channel_id": np.array([f"c{i % 12}" for i in range(N_LATE)], dtype=object),
            "topics": [[["music", "news", "cats", "games"][i % 4]] for i in range(N_LATE)],
            "language": rng.choice(["en", "de"], N_LATE).astype(object),
        }
    )
    ds.items = pd.concat([ds.items, late], ignore_index=True)
    # a few validation-window watches of the late items that exist by then
    lo, hi = split.bounds("valid")
    up = late["upload_time"].to_numpy()
    ok = late_ids[up < hi - DAY]
    t = np.maximum(up[np.isin(late_ids, ok)], lo) + 600
    extra = pd.DataFrame(
        {
            "user_id": np.int64(1000) + np.arange(len(ok), dtype=np.int64) % 60,
            "item_id": ok,
            "timestamp": t.astype(np.int64),
            "watch_time": 100.0,
        }
    )
    ds.watches = pd.concat([ds.watches, extra], ignore_index=True)
    f = CandidateFeaturizer(max_history=20, max_search_tokens=16, min_token_count=1).fit(ds, split)
    return ds, split, f


@pytest.fixture(scope="module")
def world():
    ds, split, f = _late_world()
    return ds, split, f, f.examples(ds, "train"), f.examples(ds, "valid"), f.item_features(ds)


def _upload(ds, items) -> np.ndarray:
    """Upload time of each catalog row of `items`."""
    return ds.items.set_index("item_id").loc[items.item_id, "upload_time"].to_numpy(np.int64)


@pytest.mark.parametrize("sampler", ["unigram", "uniform"])
def test_no_item_from_after_the_window_is_a_negative_an_ssl_item_or_in_mi(
    world, monkeypatch, sampler
) -> None:
    ds, split, _, train, _, items = world
    upload = _upload(ds, items)
    t_last = int(train.timestamp.max())
    future = np.flatnonzero(upload > t_last)
    assert len(future) >= N_LATE  # the late items, at least

    negatives: list[np.ndarray] = []
    ssl_rows: list[np.ndarray] = []
    mi_codes: list[np.ndarray] = []
    in_ssl = [False]

    original_sample = cg_train._NegativeSampler.sample

    def sample(self, gen, size=None):
        rows = original_sample(self, gen, size)
        negatives.append(rows.cpu().numpy())
        return rows

    original_ssl = cg_train._ssl_loss

    def ssl_loss(*args, **kwargs):
        in_ssl[0] = True
        try:
            return original_ssl(*args, **kwargs)
        finally:
            in_ssl[0] = False

    original_index = ItemBatch.index

    def index(self, rows):
        if in_ssl[0]:
            ssl_rows.append(rows.cpu().numpy())
        return original_index(self, rows)

    original_mi = cg_train.mutual_information

    def mutual_information(codes):
        mi_codes.append(np.asarray(codes))
        return original_mi(codes)

    monkeypatch.setattr(cg_train._NegativeSampler, "sample", sample)
    monkeypatch.setattr(cg_train, "_ssl_loss", ssl_loss)
    monkeypatch.setattr(ItemBatch, "index", index)
    monkeypatch.setattr(cg_train, "mutual_information", mutual_information)
    cfg = CandidateGenConfig(**BASE, epochs=2, ssl="cfm", negative_sampler=sampler)
    cg_train.train_candidate_generator(cfg, train, items, progress=False)

    drawn = np.concatenate(negatives)
    assert len(drawn) >= 2 * cfg.num_negatives
    assert not np.isin(drawn, future).any(), "a negative was uploaded after the training window"
    ssl = np.concatenate(ssl_rows)
    assert len(ssl) >= cfg.ssl_batch_size
    assert not np.isin(ssl, future).any(), "an SSL item was uploaded after the training window"
    assert len(mi_codes) == 1
    # MI over the items servable by the last training example, nothing else
    assert mi_codes[0].shape[0] == int((upload <= t_last).sum())


def test_negative_sampler_draws_only_allowed_rows() -> None:
    counts = np.array([5.0, 0.0, 3.0, 9.0, 0.0, 1.0])
    allowed = np.array([True, True, False, True, False, False])  # the last row barred too
    for kind in ("unigram", "uniform"):
        cfg = CandidateGenConfig(**BASE, negative_sampler=kind)
        sampler = cg_train._NegativeSampler(cfg, counts, torch.device("cpu"), allowed)
        rows = sampler.sample(torch.Generator().manual_seed(0), 20_000).numpy()
        assert set(np.unique(rows)) == {0, 1, 3}
        assert np.isneginf(sampler.log_q[~torch.from_numpy(allowed)].numpy()).all()
        q = np.exp(sampler.log_q.numpy())
        assert q.sum() == pytest.approx(1.0, abs=1e-6)
        freq = np.bincount(rows, minlength=6) / len(rows)
        np.testing.assert_allclose(freq, q, atol=0.02)
        # a uniform draw just below 1 (cumulative sums may end below it) is clamped to an
        # allowed row, never to the barred last row of the catalog
        sampler.cdf = sampler.cdf * 0.5
        assert set(sampler.sample(torch.Generator().manual_seed(1), 1000).tolist()) <= {0, 1, 3}


def _model(f, **kw) -> TwoTowerModel:
    torch.manual_seed(0)
    return TwoTowerModel(CandidateGenConfig(**{**BASE, **kw}), f.schema()).eval()


@pytest.mark.parametrize(
    "tower",
    [
        {},  # linear item tower: the age term is added per code
        {"item_layers": (16,)},  # hidden layer: each distinct (item, age code) embedded
        {"normalize_embeddings": True},
        {"item_encoder": "id_only"},  # the tower reads no age: servability only
    ],
)
def test_training_scores_are_taken_at_each_row_time_as_serving_does(world, tower) -> None:
    ds, split, f, train, _, items = world
    model = _model(f, **tower)
    catalog = cg_train.TimedCatalog(items, "cpu", n_single=model.item_tower.n_single)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(train), 6, replace=False)
    times = torch.from_numpy(train.timestamp[pick])
    rows = torch.from_numpy(rng.choice(len(items), 50, replace=False))
    users = UserBatch.from_features(train.features.take(pick))
    with torch.no_grad():
        u = model.user_vectors(users)
        scores, servable = catalog.scores(model, u, times, rows)
        positives = model.item_vectors(catalog.at(rows[:6], times))
    upload = _upload(ds, items)
    np.testing.assert_array_equal(
        servable.numpy(), upload[rows.numpy()][None, :] <= train.timestamp[pick][:, None]
    )
    assert (~servable).any()  # some picked items are not uploaded yet at some row's time
    for b, t in enumerate(train.timestamp[pick].tolist()):
        # the serving definition: the featurizer's item features at the request time
        served = f.item_features(ds, reference_time=t)
        with torch.no_grad():
            v = model.item_vectors(ItemBatch.from_features(served))
        torch.testing.assert_close(scores[b], u[b] @ v[rows].T, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(positives[b], v[rows[b]], rtol=1e-5, atol=1e-6)
        # the numpy definition (MI, SSL codes) is the same as well
        np.testing.assert_array_equal(items.at_time(t).single, served.single)


def test_training_softmaxes_drop_items_not_servable_at_the_row_time(world, monkeypatch) -> None:
    ds, _, _, train, _, items = world
    upload = _upload(ds, items)
    seen: list[tuple[str, np.ndarray]] = []
    original_scores = cg_train.TimedCatalog.scores

    def scores(self, model, users, times, rows):
        out, servable = original_scores(self, model, users, times, rows)
        want = self.upload[rows].unsqueeze(0) <= times.unsqueeze(1)
        assert torch.equal(servable, want)
        return out, servable

    for name in ("sampled_softmax_from_scores", "in_batch_softmax_from_scores"):
        original = getattr(cg_train, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            mask = kwargs.get("neg_mask", kwargs.get("mask"))
            seen.append((_name, mask.numpy()))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cg_train, name, spy)
    monkeypatch.setattr(cg_train.TimedCatalog, "scores", scores)
    for loss in ("sampled", "in_batch"):
        cfg = CandidateGenConfig(**BASE, epochs=1, loss=loss)
        cg_train.train_candidate_generator(cfg, train, items, progress=False)
    masks = {n: np.concatenate([m.reshape(-1) for k, m in seen if k == n]) for n, _ in seen}
    assert len(masks) == 2
    for mask in masks.values():
        assert 0 < (~mask).sum() < len(mask)  # early rows cannot meet later uploads
    assert (upload > train.timestamp.min()).any()


def test_validation_recall_ranks_the_items_servable_at_each_label(world) -> None:
    ds, _, f, _, valid, items = world
    model = _model(f)
    catalog = cg_train.TimedCatalog(items, "cpu", n_single=model.item_tower.n_single)
    pick = np.arange(0, len(valid), max(1, len(valid) // 40))
    users = UserBatch.from_features(valid.features.take(pick))
    labels = items.rows(valid.label_item[pick])
    times = valid.timestamp[pick]
    k = 10
    got = cg_train.recall_at_k(
        model, users, torch.from_numpy(labels), catalog, k, times=torch.from_numpy(times)
    )
    upload = _upload(ds, items)
    hits = 0
    with torch.no_grad():
        u = model.user_vectors(users)
        for i, t in enumerate(times.tolist()):
            served = f.item_features(ds, reference_time=t)  # as a request at t
            s = (model.item_vectors(ItemBatch.from_features(served)) @ u[i]).numpy()
            s[upload > t] = -np.inf  # not uploaded yet: not servable
            hits += int(labels[i] in np.argsort(-s, kind="stable")[:k])
    assert got == pytest.approx(hits / len(pick))
    # late items uploaded during the validation window are servable to later labels only
    late = np.flatnonzero(upload >= times.min())
    assert len(late) > 0 and (upload[late] <= times.max()).any()


def test_an_item_watched_before_its_upload_time_is_servable_from_that_watch() -> None:
    ds = random_dataset(n_users=20, n_items=40, n_watches=600, n_searches=50)
    split = TimeSplit.from_fractions(ds, 0.7, 0.15)
    f = CandidateFeaturizer(max_history=10, min_token_count=1).fit(ds, split)
    train, items = f.examples(ds, "train"), f.item_features(ds)
    rows = items.rows(train.label_item)
    fixed = cg_train._uploaded_by_first_watch(items, rows, train.timestamp)
    early = train.timestamp < items.upload_time[rows]
    assert early.any()  # random_dataset logs watches before uploads
    assert (fixed.upload_time[rows] <= train.timestamp).all()
    first = pd.Series(train.timestamp).groupby(rows).min()
    want = items.upload_time.copy()
    want[first.index] = np.minimum(want[first.index], first.to_numpy())
    np.testing.assert_array_equal(fixed.upload_time, want)
    assert items.upload_time is not fixed.upload_time  # the caller's catalog is untouched
