"""The public Python API (`import vidrec`): the README's example runs as written, on a small log
in the data contract's layout; Config validates, is frozen and round-trips through TOML."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vidrec
from vidrec.pipelines.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# a small run: the log's derived settings, with the candidate generator and ranker kept short
SHORT = {
    "candidate_gen.epochs": 2,
    "candidate_gen.embedding_dim": 8,
    "candidate_gen.user_layers": [8],
    "candidate_gen.num_negatives": 16,
    "ranking.epochs": 2,
    "ranking.epoch_folds": 0,
    "evaluation.bootstrap": 0,
}


def readme_example() -> str:
    """The README's Python quickstart: its first ```python block that imports vidrec."""
    text = (ROOT / "README.md").read_text("utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if "import vidrec" in b and "vidrec.run(" in b]
    assert found, "the README has no Python quickstart calling vidrec.run"
    return found[0]


@pytest.fixture(scope="module")
def my_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_cg_examples import random_dataset

    from vidrec.features.io import write_dataset

    root = tmp_path_factory.mktemp("api")
    ds = random_dataset(n_users=40, n_items=60, n_watches=1200, n_searches=80, seed=3)
    write_dataset(ds, root / "my_logs", fmt="csv")
    return root


def test_readme_python_example_runs_as_written(my_logs: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(my_logs)
    code = readme_example()
    # the example's one training-length setting is kept; the rest of SHORT keeps the test fast
    code = code.replace(
        'config = config.replace({"candidate_gen.epochs": 5})',
        f"config = config.replace({{**{{'candidate_gen.epochs': 5}}, **{SHORT!r}}})",
    )
    data = vidrec.load_data("my_logs/")
    users = data.watches["user_id"].to_numpy()
    items = data.items["item_id"].to_numpy()
    scope = {"user_id": int(users[0]), "item_a": int(items[0]), "item_b": int(items[1])}
    exec(compile(code, "README.md", "exec"), scope)
    report, rec = scope["report"], scope["rec"]
    assert "retrieval" in report and (my_logs / "runs" / "mine" / "report.html").is_file()
    slate = rec.recommend(scope["user_id"], k=5)["slate"]
    assert len(slate) == 5 and len({s["item_id"] for s in slate}) == 5
    cands = rec.retrieve(scope["user_id"], n=20)["candidates"]
    assert [c["rank"] for c in cands] == list(range(1, len(cands) + 1)) and len(cands) <= 20
    pred = rec.predict_watch_time(scope["user_id"], [scope["item_a"], scope["item_b"], 10**9])
    assert len(pred["items"]) == 2 and pred["unknown_items"] == [10**9]
    assert vidrec.Config.from_toml(scope["config"].to_toml()) == scope["config"]


def test_config_is_frozen_validated_and_round_trips(tmp_path: Path):
    cfg = vidrec.Config.preset(
        "tiny", {"candidate_gen.embedding_dim": 16, "candidate_gen.user_layers": [16]}, seed=4
    )
    assert cfg.seed == 4 and cfg["candidate_gen.embedding_dim"] == 16
    assert cfg.candidate_gen.embedding_dim == 16 and cfg.ranking.seed == 4  # the stages' types
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg._json = "{}"  # type: ignore[misc]
    section = cfg["ranking"]
    section["lr"] = 99.0  # a copy: the config does not change
    assert cfg["ranking.lr"] != 99.0
    assert vidrec.Config.from_toml(cfg.to_toml()) == cfg
    cfg.save(tmp_path / "c.toml")
    assert vidrec.Config.from_toml(tmp_path / "c.toml") == cfg
    assert cfg.replace(["ranking.lr=0.5"])["ranking.lr"] == 0.5
    with pytest.raises(KeyError, match="no config key 'ranking.lrr'"):
        cfg["ranking.lrr"]


@pytest.mark.parametrize(
    ("key", "value"),
    [("candidate_gen.ssl", "cmf"), ("ranking.calibrator", "twopart"), ("data.source", "csv"),
     ("candidate_gen.device", "gpu"), ("ranking.weighting", "clicks")],
)
def test_a_value_outside_a_keys_choices_is_refused_when_the_config_is_built(key, value):
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}' expects one of .*{value}"):
        vidrec.Config.preset("tiny", {key: value})


def test_run_refuses_a_log_config_without_data_and_a_dict(tmp_path: Path):
    cfg = vidrec.Config.preset("tiny", {"data.source": "dir"})
    with pytest.raises(ConfigError, match="pass data=DIR"):
        vidrec.run(cfg, out=tmp_path / "r")
    with pytest.raises(ConfigError, match="must be a vidrec.Config"):
        vidrec.run({"seed": 0}, out=tmp_path / "r")  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()


def test_importing_vidrec_is_cheap_and_names_its_api():
    probe = "import sys, vidrec; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert {"Config", "load_data", "run", "Recommender"} <= set(vidrec.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vidrec.nope  # noqa: B018


def test_settings_the_stages_refuse_are_refused_when_the_config_is_built():
    with pytest.raises(ConfigError, match=r"\[candidate_gen\].*last user_layers width"):
        vidrec.Config.preset("tiny", {"candidate_gen.embedding_dim": 16})


def test_every_public_name_resolves():
    import importlib

    fresh = importlib.reload(vidrec)
    for name in fresh.__all__:
        assert getattr(fresh, name) is not None, name
    assert set(fresh.__all__) - {"__version__"} == set(fresh._API)


def test_fit_candidate_generator_alone_saves_and_loads(my_logs: Path, tmp_path: Path):
    import numpy as np

    from vidrec.candidate_gen.train import TrainedCandidateGenerator

    data = vidrec.load_data(my_logs / "my_logs")
    config = vidrec.Config.for_data(my_logs / "my_logs").replace(SHORT)
    model = vidrec.fit_candidate_generator(data, config)
    assert [h["epoch"] for h in model.history] == [1, 2]
    assert any(k.startswith("valid_recall@") for k in model.history[-1])  # early-stopped on the ranker window
    model.save(tmp_path / "cg")
    again = TrainedCandidateGenerator.load(tmp_path / "cg")
    ids, vectors = model.item_embeddings()
    ids2, vectors2 = again.item_embeddings()
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_allclose(vectors, vectors2)
    assert vectors.shape[1] == config["candidate_gen.embedding_dim"] == 8


def test_a_config_with_null_statistics_round_trips_through_toml():
    cfg = vidrec.Config.from_dict({"seed": 3, "derived": {"stats": {"span_days": None, "users": 9}}})
    assert cfg["derived"] == {"stats": {"users": 9}}  # TOML has no null
    assert vidrec.Config.from_toml(cfg.to_toml()) == cfg and cfg.seed == 3
