import pytest

from vidrec.pipelines.config import (
    ConfigError,
    apply_overrides,
    config_hash,
    flatten,
    load_preset,
    parse_value,
    resolve_config,
)

BASE = {"seed": 0, "ranking": {"hidden": [256], "lr": 0.01, "epochs": 3, "weighting": "watch_time"}}


def test_presets_load_and_share_keys():
    keys = {p: set(flatten(load_preset(p))) for p in ("tiny", "default", "large")}
    assert keys["tiny"] == keys["default"] == keys["large"]


def test_parse_value():
    assert parse_value("[1024,512,256]") == [1024, 512, 256]
    assert parse_value("0.5") == 0.5
    assert parse_value("true") is True
    assert parse_value("cfm") == "cfm"


def test_overrides_apply_and_validate():
    out = apply_overrides(BASE, ["ranking.hidden=[1024,512]", "ranking.lr=1", "seed=3"])
    assert out["ranking"]["hidden"] == [1024, 512]
    assert out["ranking"]["lr"] == 1.0 and isinstance(out["ranking"]["lr"], float)
    assert BASE["ranking"]["hidden"] == [256]  # the input is not modified
    with pytest.raises(ConfigError, match="unknown config key 'ranking.hiden'.*ranking.hidden"):
        apply_overrides(BASE, ["ranking.hiden=[1]"])
    with pytest.raises(ConfigError, match="'ranking.epochs' expects int, got 'many'"):
        apply_overrides(BASE, ["ranking.epochs=many"])
    with pytest.raises(ConfigError, match="expects list"):
        apply_overrides(BASE, ["ranking.hidden=5"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(BASE, ["ranking.hidden"])


def test_resolve_config_seed_and_hash():
    a = resolve_config("tiny", seed=1)
    b = resolve_config("tiny", seed=2)
    assert a["seed"] == 1 and b["seed"] == 2
    assert config_hash(a) != config_hash(b)
    assert config_hash(a) == config_hash(resolve_config("tiny", seed=1))
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        resolve_config("huge")


def test_the_served_index_is_a_checked_choice_with_its_settings():
    from vidrec.pipelines.config import index_kind, index_settings

    assert resolve_config("default")["retrieval"]["index"] == "annoy"
    assert resolve_config("large")["retrieval"]["index"] == "hnsw"  # where annoy's recall falls
    cfg = resolve_config("tiny", ["retrieval.index=hnsw", "retrieval.hnsw_ef_search=64"])
    assert index_settings(cfg["retrieval"]) == (
        "hnsw",
        {"m": 32, "ef_construction": 300, "ef_search": 64},
    )
    assert index_settings(resolve_config("tiny")["retrieval"]) == (
        "annoy",
        {"n_trees": 20, "search_k": -1},
    )
    assert index_settings({"index": "exact"}) == ("exact", {})
    assert index_kind({"n_trees": 50}) == "annoy"  # a config saved before the choice existed
    with pytest.raises(ConfigError, match="'retrieval.index' expects one of 'annoy', 'hnsw'"):
        resolve_config("tiny", ["retrieval.index=faiss"])
    for key, value in [("hnsw_m", 1), ("hnsw_ef_construction", 0), ("hnsw_ef_search", 0)]:
        with pytest.raises(ConfigError, match=f"'retrieval.{key}' expects a number >="):
            resolve_config("tiny", [f"retrieval.{key}={value}"])


def test_world_scale_multiplies_the_world_presets_sizes():
    from vidrec.features.sources.synthetic import WorldConfig
    from vidrec.pipelines.config import WORLD_SCALED, world_config

    base = WorldConfig.preset("default")
    assert world_config(resolve_config("default")["data"]) == base  # scale 1: the preset itself
    half = world_config(resolve_config("default", ["data.world_scale=0.5"])["data"])
    for name in WORLD_SCALED:
        assert getattr(half, name) == round(getattr(base, name) / 2)
    assert half.n_topics == base.n_topics and half.name == "default"  # only the sizes change
    # a world too small for its own rules is refused when the config is resolved
    with pytest.raises(ConfigError, match=r"\[data\].*n_items \(1\) must be >= slate_size"):
        resolve_config("tiny", ["data.world_scale=1e-9"])
    # a config written before the key existed reads as scale 1
    assert world_config({"world_preset": "tiny", "catalog": "synthetic"}) == WorldConfig.preset(
        "tiny"
    )
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="world_scale"):
            resolve_config("tiny", [f"data.world_scale={bad}"])
