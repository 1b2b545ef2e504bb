"""Safe loading: saved artifacts load without running code, and pieces
that do not belong together are refused with a clear message.

- a crafted pickle (its __reduce__ creates a marker file) put in place of a model's weights
  file or a training checkpoint is refused, and the marker is never created (a control test
  shows the same payload does create it when unpickled without weights_only);
- an annoy or exact index directory whose index.json disagrees with its .ann / .npy files
  (dimension, item count), or whose files are damaged, is refused before annoy touches them;
- a LightGBM model directory whose baseline.json / vocabularies.json do not belong to its
  model.txt is refused;
- a file name read from a record that would leave the artifact's directory ("../../x", an
  absolute path, a symlink pointing outside) is refused.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from vidrec.candidate_gen.index import INDEX_META_FILE, AnnoyIndex, ExactIndex, load_index
from vidrec.features.integrity import (
    ArtifactError,
    check_match,
    read_json_object,
    require_int,
    resolve_inside,
    unsafe_pickle_error,
)

torch.set_num_threads(1)

# what torch's weights-only unpickler or our wrapper names when it refuses the payload
REFUSED = r"GLOBAL (posix\.system|io\.open)|refusing to load"


class OpenPayload:
    """Unpickling this calls open(marker, "w"): the marker file proves that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return builtins.open, (self.marker, "w")


class ShellPayload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch '{self.marker}'",)


PAYLOADS = [OpenPayload, ShellPayload]


def plant(path: Path, payload: type, marker: Path, *, wrap: bool = True) -> None:
    """Replace `path` with a torch.save file holding the payload (inside a plausible dict)."""
    obj = {"weight": torch.zeros(2), "evil": payload(marker)} if wrap else payload(marker)
    path.unlink(missing_ok=True)
    torch.save(obj, path)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_runs_code_when_unpickled_unsafely(tmp_path: Path, payload: type) -> None:
    # control: the crafted file is live, so the refusals below are meaningful
    marker = tmp_path / "marker"
    plant(tmp_path / "evil.pt", payload, marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_weights_only_load_refuses_the_payload(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "marker"
    plant(tmp_path / "evil.pt", payload, marker, wrap=False)
    with pytest.raises(pickle.UnpicklingError, match=REFUSED) as exc:
        torch.load(tmp_path / "evil.pt", weights_only=True)
    assert not marker.exists()
    # the wrapped message names the reference and says what to do
    err = unsafe_pickle_error(tmp_path / "evil.pt", exc.value)
    assert isinstance(err, ArtifactError)
    assert f"refusing to load {tmp_path / 'evil.pt'}" in str(err)
    assert ("references posix.system" in str(err)) or ("references io.open" in str(err))
    assert "\x1b" not in str(err)  # torch's message carries terminal escape codes; ours not
    assert "weights_only=False" in str(err) and "retrain" in str(err)


# ----------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def cg_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from test_cg_examples import random_dataset

    from vidrec.candidate_gen.config import CandidateGenConfig
    from vidrec.candidate_gen.train import train_candidate_generator
    from vidrec.features.examples import CandidateFeaturizer
    from vidrec.features.split import TimeSplit

    ds = random_dataset(n_users=20, n_items=30, n_watches=400, n_searches=50)
    split = TimeSplit.from_fractions(ds, 0.7, 0.15)
    f = CandidateFeaturizer(max_history=5, max_search_tokens=4, min_token_count=1).fit(ds, split)
    config = CandidateGenConfig(
        embedding_dim=8,
        user_layers=(8,),
        categorical_dim=4,
        num_negatives=8,
        batch_size=64,
        epochs=1,
        valid_k=5,
        device="cpu",
    )
    ck = tmp_path_factory.mktemp("cg_ckpt")
    model = train_candidate_generator(
        config, f.examples(ds, "train"), f.item_features(ds), checkpoint_dir=ck, progress=False
    )
    return model, config, f.examples(ds, "train"), f.item_features(ds), ck


@pytest.mark.parametrize("payload", PAYLOADS)
def test_candidate_generator_refuses_a_malicious_weights_file(
    cg_model, tmp_path: Path, payload: type
) -> None:
    from vidrec.candidate_gen.train import TrainedCandidateGenerator

    model = cg_model[0]
    d = model.save(tmp_path / "cg")
    TrainedCandidateGenerator.load(d, device="cpu")  # the intact directory loads
    marker = tmp_path / "marker"
    plant(d / "model.pt", payload, marker)
    with pytest.raises((pickle.UnpicklingError, ArtifactError), match=REFUSED):
        TrainedCandidateGenerator.load(d, device="cpu")
    assert not marker.exists()


def test_candidate_generator_refuses_a_malicious_checkpoint(cg_model, tmp_path: Path) -> None:
    from vidrec.candidate_gen.train import CHECKPOINT_FILE, train_candidate_generator

    _, config, examples, items, ck = cg_model
    assert (ck / CHECKPOINT_FILE).exists()
    marker = tmp_path / "marker"
    plant(ck / CHECKPOINT_FILE, OpenPayload, marker)
    with pytest.raises((pickle.UnpicklingError, ArtifactError), match=REFUSED):
        train_candidate_generator(
            config, examples, items, checkpoint_dir=ck, resume=True, progress=False
        )
    assert not marker.exists()


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from test_ranker_model import SMALL, frames

    from vidrec.ranking.config import RankerConfig
    from vidrec.ranking.train import train_ranker

    _, tr, va = frames(n_imps=600)
    ck = tmp_path_factory.mktemp("ranker_ckpt")
    cfg = RankerConfig(**{**SMALL, "epochs": 1})
    return train_ranker(cfg, tr, va, checkpoint_dir=ck, progress=False), cfg, tr, va, ck


@pytest.mark.parametrize("payload", PAYLOADS)
def test_ranker_refuses_a_malicious_weights_file(ranker, tmp_path: Path, payload: type) -> None:
    from vidrec.ranking.train import TrainedRanker

    d = ranker[0].save(tmp_path / "ranker")
    TrainedRanker.load(d)
    marker = tmp_path / "marker"
    plant(d / "model.pt", payload, marker)
    with pytest.raises((pickle.UnpicklingError, ArtifactError), match=REFUSED):
        TrainedRanker.load(d)
    assert not marker.exists()


def test_ranker_refuses_a_malicious_checkpoint(ranker, tmp_path: Path) -> None:
    from vidrec.ranking.train import train_ranker

    _, cfg, tr, va, ck = ranker
    assert (ck / "checkpoint.pt").exists()
    marker = tmp_path / "marker"
    plant(ck / "checkpoint.pt", ShellPayload, marker)
    with pytest.raises((pickle.UnpicklingError, ArtifactError), match=REFUSED):
        train_ranker(cfg, tr, va, checkpoint_dir=ck, progress=False)
    assert not marker.exists()


def test_model_json_records_are_never_unpickled(ranker, tmp_path: Path) -> None:
    # vocabularies and normalizers are JSON: a pickle put in their place is a JSON error
    from vidrec.ranking.train import TrainedRanker

    d = ranker[0].save(tmp_path / "ranker")
    marker = tmp_path / "marker"
    (d / "vocabularies.json").write_bytes(pickle.dumps(OpenPayload(marker)))
    with pytest.raises((ValueError, UnicodeDecodeError)):
        TrainedRanker.load(d)
    assert not marker.exists()


# ----------------------------------------------------------------------------- indexes


def _vectors(n: int = 40, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), np.arange(n, dtype=np.int64) * 7 + 3


def _edit_meta(d: Path, **changes: object) -> None:
    meta = json.loads((d / INDEX_META_FILE).read_text())
    (d / INDEX_META_FILE).write_text(json.dumps({**meta, **changes}))


@pytest.fixture
def annoy_dir(tmp_path: Path) -> Path:
    v, ids = _vectors()
    return AnnoyIndex(v, ids, n_trees=3).save(tmp_path / "annoy")


@pytest.mark.parametrize("dim", [4, 7, 9, 16])
def test_annoy_refuses_a_dimension_other_than_the_files(annoy_dir: Path, dim: int) -> None:
    _edit_meta(annoy_dir, dim=dim)
    with pytest.raises(ArtifactError, match=f"another dimension .*dim {dim}, 40 items"):
        AnnoyIndex.load(annoy_dir)


@pytest.mark.parametrize("size", [39, 41, 400])
def test_annoy_refuses_an_item_count_other_than_the_files(annoy_dir: Path, size: int) -> None:
    _edit_meta(annoy_dir, size=size)
    with pytest.raises(ArtifactError, match=f"dim 8, {size} items"):
        load_index(annoy_dir)


def test_annoy_refuses_ids_of_another_index(annoy_dir: Path, tmp_path: Path) -> None:
    v, ids = _vectors(n=30)
    other = AnnoyIndex(v, ids, n_trees=3).save(tmp_path / "other")
    (annoy_dir / "ids.npy").write_bytes((other / "ids.npy").read_bytes())
    with pytest.raises(ArtifactError, match=r"holds int64 \(30,\), but index.json says 40"):
        AnnoyIndex.load(annoy_dir)


def test_annoy_refuses_an_ann_file_of_another_dimension(annoy_dir: Path, tmp_path: Path) -> None:
    # same item count, dimension 4 instead of 8: annoy itself would load it and answer garbage
    v, ids = _vectors(dim=4)
    other = AnnoyIndex(v, ids, n_trees=3).save(tmp_path / "other")
    (annoy_dir / "items.ann").write_bytes((other / "items.ann").read_bytes())
    with pytest.raises(ArtifactError, match="another dimension or item count"):
        AnnoyIndex.load(annoy_dir)


@pytest.mark.parametrize("damage", ["truncate", "random", "child_out_of_range", "empty"])
def test_annoy_refuses_a_damaged_ann_file(annoy_dir: Path, damage: str) -> None:
    path = annoy_dir / "items.ann"
    data = bytearray(path.read_bytes())
    node = 4 * (4 + 8)  # bytes per node at dim 8
    if damage == "truncate":
        data = data[: len(data) - node // 2]
    elif damage == "random":
        data = bytearray(np.random.default_rng(0).bytes(len(data)))
    elif damage == "child_out_of_range":
        # the last node is a root (a split node): point its first child far beyond the file
        at = len(data) - node + 4
        data[at : at + 4] = np.int32(10**6).tobytes()
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="rebuild the index"):
        AnnoyIndex.load(annoy_dir)


def test_index_files_are_never_unpickled(annoy_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = np.empty(40, dtype=object)
    evil[0] = OpenPayload(marker)
    with open(annoy_dir / "ids.npy", "wb") as fh:
        np.save(fh, evil, allow_pickle=True)
    with pytest.raises(ArtifactError, match="not a readable .npy array of item ids"):
        AnnoyIndex.load(annoy_dir)
    assert not marker.exists()


def test_exact_index_refuses_mismatched_and_damaged_files(tmp_path: Path) -> None:
    v, ids = _vectors()
    d = ExactIndex(v, ids).save(tmp_path / "exact")
    _edit_meta(d, dim=4)
    with pytest.raises(ArtifactError, match=r"holds float32 \(40, 8\), expected float32 \(40, 4\)"):
        ExactIndex.load(d)
    _edit_meta(d, dim=8)
    np.save(d / "ids.npy", np.r_[ids[:-1], ids[0]])  # a repeated id
    with pytest.raises(ArtifactError, match="negative or repeated item ids"):
        ExactIndex.load(d)
    (d / "ids.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ArtifactError, match="not a readable .npy array"):
        load_index(d)
    (d / INDEX_META_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match=r"index.json is not valid JSON \(line 1"):
        load_index(d)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ids_file", "../../etc/passwd"),
        ("ids_file", "/etc/passwd"),
        ("ann_file", "sub/../../outside.ann"),
        ("ids_file", 42),
    ],
)
def test_index_refuses_file_names_leaving_its_directory(
    annoy_dir: Path, key: str, value: object
) -> None:
    _edit_meta(annoy_dir, **{key: value})
    with pytest.raises(ArtifactError, match="points outside|absolute path|relative file name"):
        AnnoyIndex.load(annoy_dir)


def test_index_refuses_a_symlink_leaving_its_directory(annoy_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.npy"
    np.save(outside, np.arange(40, dtype=np.int64))
    (annoy_dir / "ids.npy").unlink()
    (annoy_dir / "ids.npy").symlink_to(outside)
    with pytest.raises(ArtifactError, match="points outside"):
        AnnoyIndex.load(annoy_dir)


def test_index_json_fields_are_typed(annoy_dir: Path) -> None:
    for key, value in [("dim", "8"), ("size", -1), ("n_trees", 0), ("search_k", 0)]:
        meta = json.loads((annoy_dir / INDEX_META_FILE).read_text())
        _edit_meta(annoy_dir, **{key: value})
        with pytest.raises(ArtifactError, match=f"'{key}' must be"):
            AnnoyIndex.load(annoy_dir)
        (annoy_dir / INDEX_META_FILE).write_text(json.dumps(meta))
    assert AnnoyIndex.load(annoy_dir).size == 40


# ----------------------------------------------------------------------------- LightGBM


@pytest.fixture(scope="module")
def lgbm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from test_ranker_baselines import FAST, paged_world, split

    from vidrec.ranking.baselines import LightGBMWeightedRanker

    tr, va = split(paged_world(n_pages=200))
    m = LightGBMWeightedRanker(FAST, history_len=5).fit(tr, va)
    return m, va, m.save(tmp_path_factory.mktemp("lgbm") / "m")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_lightgbm_loads_its_own_files(lgbm) -> None:
    from vidrec.ranking.baselines import LightGBMWeightedRanker

    m, va, d = lgbm
    back = LightGBMWeightedRanker.load(d)
    np.testing.assert_allclose(back.predict_score(va), m.predict_score(va))


def test_lightgbm_refuses_vocabularies_of_another_run(lgbm, tmp_path: Path) -> None:
    from vidrec.ranking.baselines import LightGBMWeightedRanker

    d = _copy(lgbm[2], tmp_path / "m")
    vocab = json.loads((d / "vocabularies.json").read_text())
    item = vocab["item"]
    # a smaller item vocabulary (a consistent record, as another run would write)
    item["values"], item["counts"] = item["values"][:1], item["counts"][:2]
    (d / "vocabularies.json").write_text(json.dumps(vocab))
    with pytest.raises(ArtifactError, match="item codes up to 4, but vocabularies.json has 2"):
        LightGBMWeightedRanker.load(d)


def test_lightgbm_refuses_a_best_iteration_beyond_its_trees(lgbm, tmp_path: Path) -> None:
    from vidrec.ranking.baselines import LightGBMWeightedRanker

    d = _copy(lgbm[2], tmp_path / "m")
    meta = json.loads((d / "baseline.json").read_text())
    (d / "baseline.json").write_text(json.dumps({**meta, "best_iteration": 10_000}))
    with pytest.raises(ArtifactError, match="baseline.json says the best is 10000"):
        LightGBMWeightedRanker.load(d)


def test_lightgbm_refuses_damaged_files(lgbm, tmp_path: Path) -> None:
    from vidrec.ranking.baselines import LightGBMLambdaRanker, LightGBMWeightedRanker

    d = _copy(lgbm[2], tmp_path / "m")
    text = (d / "model.txt").read_text()
    (d / "model.txt").write_text(text.replace("feature_names=item ", "feature_names=itemz ", 1))
    with pytest.raises(ArtifactError, match="was trained on the features"):
        LightGBMWeightedRanker.load(d)
    (d / "model.txt").write_text("not a model")
    with pytest.raises(ArtifactError, match="cannot read the LightGBM model"):
        LightGBMWeightedRanker.load(d)
    (d / "model.txt").write_text(text)
    (d / "baseline.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="holds a JSON list, not an object"):
        LightGBMWeightedRanker.load(d)
    (d / "baseline.json").write_text(json.dumps({"kind": "lightgbm_lambdarank", "config": {}}))
    with pytest.raises(ArtifactError, match="no valid LightGBM config|'history_len' must be"):
        LightGBMLambdaRanker.load(d)


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("relative", "says"),
    [
        ("../../etc/passwd", "points outside"),
        ("a/../../x", "points outside"),
        ("/etc/passwd", "absolute path"),
        ("", "relative file name"),
        ("a\x00b", "relative file name"),
        (None, "relative file name"),
        (["ids.npy"], "relative file name"),
    ],
)
def test_resolve_inside_refuses_escapes(tmp_path: Path, relative: object, says: str) -> None:
    with pytest.raises(ArtifactError, match=says):
        resolve_inside(tmp_path, relative, "config 'file'")


def test_resolve_inside_accepts_paths_that_stay_inside(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert resolve_inside(tmp_path, "sub/../ids.npy", "x") == (tmp_path / "ids.npy").resolve()
    assert resolve_inside(tmp_path, "sub/a.json", "x") == (tmp_path / "sub/a.json").resolve()


def test_json_and_field_helpers(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="is missing: the model is incomplete"):
        read_json_object(tmp_path / "none.json", "the model")
    (tmp_path / "a.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ArtifactError, match="cannot read"):
        read_json_object(tmp_path / "a.json", "the model")
    (tmp_path / "a.json").write_text('{"n": 3.0, "b": true, "s": "x"}')
    rec = read_json_object(tmp_path / "a.json", "the model")
    assert require_int(rec, "n", "a.json") == 3  # 3.0 is an integer in JSON's number model
    with pytest.raises(ArtifactError, match="'b' must be an integer >= 0, got True"):
        require_int(rec, "b", "a.json")
    with pytest.raises(ArtifactError, match="'n' must be an integer >= 5, got 3"):
        require_int(rec, "n", "a.json", minimum=5)
    check_match("item count", 3, 3, "here")
    with pytest.raises(ArtifactError, match="here: item count is 4 but 3 was expected; redo"):
        check_match("item count", 3, 4, "here", "redo")
