"""Tests for candidate_gen.towers and candidate_gen.config: shapes, shared id table, masking."""

from __future__ import annotations

import pytest
import torch
from test_cg_examples import random_dataset

from vidrec.candidate_gen.config import CandidateGenConfig
from vidrec.candidate_gen.towers import ItemBatch, TwoTowerModel, UserBatch, masked_mean
from vidrec.features.examples import CandidateFeaturizer
from vidrec.features.split import TimeSplit


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    ds = random_dataset(n_watches=600, n_searches=100)
    f = CandidateFeaturizer(max_history=10, max_search_tokens=8, min_token_count=1).fit(
        ds, TimeSplit.from_fractions(ds, 0.7, 0.15)
    )
    return f, f.examples(ds, "train"), f.item_features(ds)


def _model(f, **kw) -> TwoTowerModel:
    torch.manual_seed(0)
    kw.setdefault("user_layers", (16, 8))
    cfg = CandidateGenConfig(embedding_dim=8, categorical_dim=4, **kw)
    return TwoTowerModel(cfg, f.schema())


def test_masked_mean_ignores_padding_and_empty_rows_give_zero() -> None:
    emb = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [6.0], [7.0]]])  # (2, 3, 1)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    # row 0: (1 + 3) / 2 = 2; row 1: no valid position -> 0
    assert masked_mean(emb, mask).tolist() == [[2.0], [0.0]]


@pytest.mark.parametrize("layers", [(), (8,), (16, 8), (32, 16, 16, 8)])
def test_tower_shapes_for_depths_0_to_4(data, layers) -> None:
    f, ex, items = data
    model = _model(f, user_layers=layers)
    users = UserBatch.from_features(ex.features.take(slice(0, 5)))
    assert model.user_vectors(users).shape == (5, 8)
    assert model.item_vectors(ItemBatch.from_features(items)).shape == (len(items), 8)
    assert model(users, ItemBatch.from_features(items)).shape == (5, len(items))
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.user_tower.mlp)
    assert n_linear == max(1, len(layers))
    if layers:  # every YT16 tower layer is ReLU, the output too
        assert (model.user_vectors(users) >= 0).all()


def test_user_tower_input_width_follows_feature_toggles(data) -> None:
    f, _, _ = data
    # E=8 watch bag + 8 search bag + 2 categorical x 4 + 3 x 4 continuous (income and three
    # activity features, each with square and root) + 3 example age = 8 + 8 + 8 + 12 + 3 = 39
    assert _model(f).user_tower.input_dim == 39
    assert _model(f, use_searches=False).user_tower.input_dim == 31
    assert _model(f, use_demographics=False, use_example_age=False).user_tower.input_dim == 28
    assert _model(f, use_continuous=False).user_tower.input_dim == 27


def test_item_id_table_is_shared_with_the_watch_bag(data) -> None:
    f, ex, items = data
    model = _model(f)
    assert model.user_tower.item_embedding.weight is model.item_tower.id_embedding.weight
    ids = {id(p) for p in model.parameters()}
    assert len(ids) == len(list(model.parameters()))  # parameters() lists it once
    # a loss on the user side alone moves the item tower's id table
    users = UserBatch.from_features(ex.features.take(slice(0, 16)))
    model.user_vectors(users).sum().backward()
    grad = model.item_tower.id_embedding.weight.grad
    assert grad is not None and grad[1:].abs().sum() > 0
    assert grad[0].abs().sum() == 0  # padding/OOV row gets no gradient


def test_item_tower_exposes_per_feature_embeddings(data) -> None:
    f, _, items = data
    model = _model(f)
    batch = ItemBatch.from_features(items)
    emb = model.item_tower.feature_embeddings(batch)
    assert model.item_tower.feature_names == items.feature_names
    assert emb.shape == (len(items), len(items.feature_names), 8)
    assert model.item_tower.default_embeddings.shape == (len(items.feature_names), 8)
    id_only = _model(f, item_encoder="id_only")
    assert id_only.item_tower.feature_embeddings(batch).shape == (len(items), 1, 8)


def test_masking_every_feature_makes_all_items_identical(data) -> None:
    f, _, items = data
    model = _model(f)
    batch = ItemBatch.from_features(items)
    all_masked = torch.ones(model.item_tower.n_features, dtype=torch.bool)
    z = model.ssl_projection(batch, all_masked)
    assert torch.allclose(z, z[:1].expand_as(z))
    none_masked = torch.zeros_like(all_masked)
    z = model.ssl_projection(batch, none_masked)
    assert not torch.allclose(z, z[:1].expand_as(z))


def test_topic_mask_controls_pooling(data) -> None:
    f, _, items = data
    model = _model(f)
    batch = ItemBatch.from_features(items)
    t = list(model.item_tower.feature_names).index("topics")
    dropped = ItemBatch(batch.single, batch.topics, torch.zeros_like(batch.topics_mask))
    assert model.item_tower.feature_embeddings(dropped)[:, t].abs().sum() == 0


def test_normalized_embeddings_have_unit_norm(data) -> None:
    f, ex, items = data
    model = _model(f, normalize_embeddings=True)
    v = model.item_vectors(ItemBatch.from_features(items))
    assert torch.allclose(v.norm(dim=1), torch.ones(len(items)), atol=1e-5)


def test_config_round_trip_and_validation() -> None:
    cfg = CandidateGenConfig(embedding_dim=16, user_layers=[32, 16], ssl="cfm")
    assert cfg.user_layers == (32, 16) and cfg.depth == 2
    assert CandidateGenConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(epochs=9).epochs == 9
    with pytest.raises(
        ValueError, match=r"last user_layers width \(32\) must equal embedding_dim \(16\)"
    ):
        CandidateGenConfig(embedding_dim=16, user_layers=(64, 32))
    with pytest.raises(
        ValueError, match=r"unknown candidate-generator config key\(s\) \['epoch'\]"
    ):
        CandidateGenConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="unknown candidate-generator config key"):
        cfg.replace(lr=0.1)
    with pytest.raises(ValueError, match="loss must be one of sampled, in_batch"):
        CandidateGenConfig(loss="full")
    with pytest.raises(ValueError, match="item_encoder='id_only' has a single feature"):
        CandidateGenConfig(ssl="rfm", item_encoder="id_only")
    with pytest.raises(ValueError, match="ssl_dropout must be in"):
        CandidateGenConfig(ssl_dropout=1.0)
    with pytest.raises(ValueError, match="label_fraction must be in"):
        CandidateGenConfig(label_fraction=0.0)
    with pytest.raises(ValueError, match="num_negatives must be an integer >= 1"):
        CandidateGenConfig(num_negatives=0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        CandidateGenConfig(temperature=float("nan"))
    with pytest.raises(ValueError, match="use_searches must be true or false"):
        CandidateGenConfig(use_searches="yes")
    with pytest.raises(ValueError, match="user_layers must be a list of widths"):
        CandidateGenConfig(user_layers=64)
    with pytest.raises(TypeError, match="expects a dict"):
        CandidateGenConfig.from_dict([("epochs", 1)])


def test_item_tower_rejects_a_schema_without_item_id(data) -> None:
    f, _, _ = data
    schema = dict(f.schema(), item_single=["channel_id"], item_single_cardinalities=[3])
    with pytest.raises(ValueError, match="first single-valued item feature to be 'item_id'"):
        TwoTowerModel(CandidateGenConfig(embedding_dim=8, user_layers=(8,)), schema)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    from vidrec.common.torch_utils import EarlyStopping

    model = torch.nn.Linear(2, 1)
    stop = EarlyStopping(higher_is_better=False, patience=2)
    for epoch, loss in enumerate([0.5, 0.4, 0.45, 0.41], start=1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))  # the weights say which epoch they are from
        stop.update(loss, epoch, model)
    assert (stop.best, stop.best_epoch, stop.bad_epochs, stop.stopped) == (0.4, 2, 2, True)
    stop.restore(model)
    assert model.weight.tolist() == [[2.0, 2.0]]
    up = EarlyStopping(higher_is_better=True, patience=0)  # 0: never stops
    for epoch, recall in enumerate([0.1, 0.05, 0.04, 0.03], start=1):
        up.update(recall, epoch, model)
    assert up.best_epoch == 1 and up.bad_epochs == 3 and not up.stopped
    last = EarlyStopping(higher_is_better=False, patience=3)
    last.restore(model)  # nothing kept: the model stays as it is
    assert model.weight.tolist() == [[2.0, 2.0]]


def test_intra_op_threads_sets_the_count_for_the_block_and_restores_it() -> None:
    from vidrec.common.torch_utils import intra_op_threads

    torch.set_num_threads(2)
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with intra_op_threads(None):
        assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), intra_op_threads(1):
        raise RuntimeError("a failed request")
    assert torch.get_num_threads() == 2
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="threads must be"), intra_op_threads(bad):
            pass


def test_last_in_bag_keeps_each_rows_last_filled_slots() -> None:
    from vidrec.candidate_gen.towers import last_in_bag

    bags = torch.tensor([[5, 6, 7, 0, 0], [1, 0, 3, 4, 0], [0, 0, 0, 0, 0], [9, 0, 0, 0, 0]])
    # left-aligned, 0-padded; an out-of-vocabulary 0 inside a bag (row 1) takes a slot
    assert last_in_bag(bags, 2).tolist() == [
        [0, 6, 7, 0, 0],
        [0, 0, 3, 4, 0],
        [0, 0, 0, 0, 0],
        [9, 0, 0, 0, 0],
    ]
    assert last_in_bag(bags, 1)[:, :4].tolist() == [
        [0, 0, 7, 0],
        [0, 0, 0, 4],
        [0] * 4,
        [9, 0, 0, 0],
    ]
    assert torch.equal(last_in_bag(bags, 5), bags)


def test_recent_history_bag_makes_the_order_of_watches_matter(data) -> None:
    # the whole bag is a mean, blind to order; the recent bag sees the last watches
    f, ex, _ = data
    users = UserBatch.from_features(ex.features.take(slice(0, 200)))
    full = (users.history != 0).sum(dim=1) == users.history.shape[1]
    assert full.sum() >= 2
    users = users.index(torch.nonzero(full).squeeze(1))
    flipped = UserBatch(**{**users.__dict__, "history": users.history.flip(1)})
    plain = _model(f)
    assert torch.allclose(plain.user_vectors(users), plain.user_vectors(flipped), atol=1e-6)
    recent = _model(f, recent_history=3)
    assert recent.user_tower.input_dim == plain.user_tower.input_dim + 8
    assert not torch.allclose(recent.user_vectors(users), recent.user_vectors(flipped), atol=1e-4)
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match="recent_history"):
            CandidateGenConfig(recent_history=bad)
