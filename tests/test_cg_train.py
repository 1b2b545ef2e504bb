"""Tests for candidate_gen.train and candidate_gen.retrieve: learning, resume, save/load, retrieval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_cg_examples import random_dataset

from vidrec.candidate_gen.config import CandidateGenConfig
from vidrec.candidate_gen.index import ExactIndex
from vidrec.candidate_gen.retrieve import Retriever, build_index
from vidrec.candidate_gen.towers import UserBatch
from vidrec.candidate_gen.train import (
    CHECKPOINT_FILE,
    TimedCatalog,
    TrainedCandidateGenerator,
    _select_examples,
    recall_at_k,
    resolve_device,
    train_candidate_generator,
)
from vidrec.common.torch_utils import NonFiniteLossError
from vidrec.features.examples import CandidateFeaturizer, watched_before
from vidrec.features.split import TimeSplit

BASE = dict(
    embedding_dim=16,
    user_layers=(32, 16),
    categorical_dim=4,
    num_negatives=64,
    batch_size=128,
    learning_rate=5e-3,
    valid_k=10,
    device="cpu",
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world():
    ds = random_dataset(n_users=60, n_items=120, n_watches=3000, n_searches=400)
    split = TimeSplit.from_fractions(ds, 0.7, 0.15)
    f = CandidateFeaturizer(max_history=20, max_search_tokens=16, min_token_count=1).fit(ds, split)
    return ds, split, f, f.examples(ds, "train"), f.examples(ds, "valid"), f.item_features(ds)


def _config(**kw) -> CandidateGenConfig:
    return CandidateGenConfig(**{**BASE, **kw})


def test_tiny_training_beats_random_recall(world, caplog: pytest.LogCaptureFixture) -> None:
    _, _, _, train, valid, items = world
    with caplog.at_level("INFO"):
        model = train_candidate_generator(
            _config(epochs=3, patience=0), train, items, valid=valid, progress=False
        )
    # without progress bars an epoch still logs its one line (a long run is not silent)
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("vidrec")]
    assert sum("epoch" in m and "valid_recall@10" in m for m in logged) == 3, logged
    recall = [h["valid_recall@10"] for h in model.history]
    # random top-10 of 120 items holds the label with probability 10 / 120 = 0.083; users here
    # watch their own topic (30 items, Zipf inside) 90% of the time, so a model must do far better
    assert max(recall) > 0.3
    assert all(h["examples_per_second"] > 0 for h in model.history)
    assert [h["epoch"] for h in model.history] == [1, 2, 3]


@pytest.mark.parametrize(
    "kw",
    [
        dict(loss="in_batch"),
        dict(ssl="spread_out"),
        dict(ssl="rfm", loss="in_batch"),
        dict(ssl="cfm", negative_sampler="uniform", normalize_embeddings=True, temperature=0.1),
        dict(item_encoder="id_only", user_layers=(), optimizer="adagrad"),
    ],
)
def test_every_objective_trains(world, kw) -> None:
    _, _, _, train, _, items = world
    model = train_candidate_generator(_config(epochs=1, **kw), train, items, progress=False)
    h = model.history[0]
    assert np.isfinite(h["train_loss"])
    assert (h["ssl_loss"] > 0) == (kw.get("ssl", "none") != "none")


def _weights(model: TrainedCandidateGenerator) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.model.state_dict().items()}


def test_resume_equals_uninterrupted(world, tmp_path) -> None:
    _, _, _, train, valid, items = world
    cfg = _config(epochs=2, ssl="cfm", patience=0)
    full = train_candidate_generator(
        cfg, train, items, valid=valid, checkpoint_dir=tmp_path / "a", progress=False
    )
    # "interrupted" after epoch 1, then resumed to epoch 2 in a fresh call
    train_candidate_generator(
        cfg.replace(epochs=1),
        train,
        items,
        valid=valid,
        checkpoint_dir=tmp_path / "b",
        progress=False,
    )
    assert (tmp_path / "b" / CHECKPOINT_FILE).exists() and (tmp_path / "b" / "config.json").exists()
    resumed = train_candidate_generator(
        cfg, train, items, valid=valid, checkpoint_dir=tmp_path / "b", resume=True, progress=False
    )
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    drop = ("train_seconds", "examples_per_second")
    strip = [{k: v for k, v in h.items() if k not in drop} for h in resumed.history]
    assert strip == [{k: v for k, v in h.items() if k not in drop} for h in full.history]


def test_resume_refuses_a_different_config_or_data(world, tmp_path) -> None:
    _, _, _, train, _, items = world
    cfg = _config(epochs=1)
    train_candidate_generator(cfg, train, items, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"config differs in \['learning_rate'\]"):
        train_candidate_generator(
            cfg.replace(learning_rate=0.1),
            train,
            items,
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="trained on different examples"):
        train_candidate_generator(
            cfg,
            train.take(np.arange(100)),
            items,
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )


def test_early_stopping_returns_the_best_epoch(world) -> None:
    _, _, _, train, valid, items = world
    model = train_candidate_generator(
        _config(epochs=5, patience=1, learning_rate=0.1), train, items, valid=valid, progress=False
    )
    recall = [h["valid_recall@10"] for h in model.history]
    if len(recall) < 5:  # stopped: the last epoch (patience 1) did not beat the best before it
        assert recall[-1] <= max(recall[:-1])
    # the returned weights are the best epoch's, not the last one's
    users = UserBatch.from_features(valid.features)
    rows = torch.from_numpy(items.rows(valid.label_item))
    # (each validation label ranks the items servable at its time, with their ages then)
    catalog = TimedCatalog(items, "cpu")
    times = torch.from_numpy(valid.timestamp)
    again = recall_at_k(model.model, users, rows, catalog, 10, times=times)
    assert again == pytest.approx(max(recall), abs=1e-12)


def test_early_stopping_stops_when_recall_does_not_improve(world) -> None:
    _, _, _, train, valid, items = world
    # SGD steps of 1e-12 are far below float32 resolution of the weights: recall stays flat, so
    # epoch 2 is no better than epoch 1 and patience 1 stops there
    model = train_candidate_generator(
        _config(epochs=6, patience=1, optimizer="sgd", learning_rate=1e-12),
        train,
        items,
        valid=valid,
        progress=False,
    )
    recall = [h["valid_recall@10"] for h in model.history]
    assert len(recall) == 2 and recall[1] == recall[0]


def test_a_diverging_run_stops_with_an_error(world, tmp_path) -> None:
    _, _, _, train, valid, items = world
    # SGD at learning rate 50 overflows in the first epoch: the loss is NaN from then on
    with pytest.raises(NonFiniteLossError) as caught:
        train_candidate_generator(
            _config(epochs=3, optimizer="sgd", learning_rate=50.0),
            train,
            items,
            valid=valid,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    assert str(caught.value).startswith("candidate_gen: the training loss is nan at epoch 1:")
    assert "lower candidate_gen.learning_rate (now 50) and train again" in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert not (tmp_path / CHECKPOINT_FILE).exists()  # the diverged epoch is not kept


def test_save_load_round_trip(world, tmp_path) -> None:
    ds, split, f, train, _, items = world
    model = train_candidate_generator(_config(epochs=1), train, items, progress=False)
    model.save(tmp_path / "m")
    loaded = TrainedCandidateGenerator.load(tmp_path / "m", device="cpu")
    ids_a, vec_a = model.item_embeddings()
    ids_b, vec_b = loaded.item_embeddings()
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(vec_a, vec_b, rtol=0, atol=0)
    serving = f.serving(ds, np.array([1000, 1001]), split.train_end)
    np.testing.assert_allclose(
        model.user_embeddings(serving), loaded.user_embeddings(serving), rtol=0, atol=0
    )
    assert loaded.history == model.history
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        TrainedCandidateGenerator.load(tmp_path / "nothing")


def test_embeddings_cover_the_catalog_and_ignore_example_age(world) -> None:
    _, _, _, train, _, items = world
    model = train_candidate_generator(_config(epochs=1), train, items, progress=False)
    ids, vectors = model.item_embeddings()
    never_watched = items.single[:, 0] == 0  # id code 0: no training watch
    assert vectors.shape == (len(items), 16) and np.isfinite(vectors).all()
    assert (
        never_watched.any() and np.abs(vectors[never_watched]).sum() > 0
    )  # features still embed them
    feats = train.features.take(np.arange(20))
    # serving vectors use example age 0 whatever the features carry
    np.testing.assert_array_equal(
        model.user_embeddings(feats), model.user_embeddings(feats.with_example_age(0.0))
    )
    kept = model.user_embeddings(feats, example_age=None)
    assert not np.array_equal(kept, model.user_embeddings(feats))


def test_retrieval_excludes_watched_items(world) -> None:
    ds, split, _, train, _, items = world
    model = train_candidate_generator(_config(epochs=1), train, items, progress=False)
    index = build_index(model, "exact")
    retriever = Retriever(model, index, ds)
    users = np.array([1000, 1001, 1002, 99_999])  # 99_999 is unknown: served from defaults
    plain = retriever.retrieve(users, 30, at_time=split.train_end)
    assert list(plain.columns) == ["user_id", "item_id", "score", "rank"]
    assert len(plain) == 4 * 30 and plain["rank"].tolist()[:30] == list(range(1, 31))
    assert (plain.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()
    offsets, watched = watched_before(ds, users, split.train_end)
    seen = pd.DataFrame({"user_id": np.repeat(users, np.diff(offsets)), "item_id": watched})
    assert len(plain.merge(seen)) > 0  # without exclusion, popular watched items come back
    excl = retriever.retrieve(users, 30, at_time=split.train_end, exclude_watched=True)
    assert len(excl.merge(seen)) == 0
    assert (excl.groupby("user_id").size() == 30).all()
    annoy = Retriever(model, build_index(model, "annoy", n_trees=10), ds)
    assert (
        len(
            annoy.retrieve(users[:2], 10, at_time=split.train_end, exclude_watched=True).merge(seen)
        )
        == 0
    )


def test_example_selection_cap_and_fraction(world) -> None:
    _, _, _, train, _, _ = world
    keep = _select_examples(_config(max_examples_per_user=3), train)
    per_user = pd.Series(train.user_id[keep]).value_counts()
    assert per_user.max() == 3
    # the kept ones are each user's 3 latest labels
    last = pd.DataFrame({"u": train.user_id, "t": train.timestamp}).groupby("u")["t"].nlargest(3)
    assert sorted(train.timestamp[keep].tolist()) == sorted(last.tolist())
    # label_fraction 0.25 of n examples keeps round(0.25 n)
    assert len(_select_examples(_config(label_fraction=0.25), train)) == round(0.25 * len(train))


def test_errors_are_actionable(world) -> None:
    ds, split, f, train, _, items = world
    with pytest.raises(ValueError, match="not in the catalog"):
        train_candidate_generator(
            _config(), train, f.item_features(ds.items.iloc[:10]), progress=False
        )
    other = CandidateFeaturizer(min_item_count=5).fit(ds, split)
    with pytest.raises(ValueError, match="built by a different featurizer"):
        train_candidate_generator(_config(), train, other.item_features(ds), progress=False)
    with pytest.raises(TypeError, match="must be a CandidateGenConfig"):
        train_candidate_generator({"epochs": 1}, train, items, progress=False)
    model = train_candidate_generator(_config(epochs=1), train, items, progress=False)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        Retriever(model, build_index(model, "exact"), ds).retrieve(
            [1000], 0, at_time=split.train_end
        )
    _, vectors = model.item_embeddings()
    with pytest.raises(ValueError, match="index holds 8-dim vectors"):
        Retriever(model, ExactIndex(vectors[:, :8].copy(), items.item_id), ds)
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(model, "faiss")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
