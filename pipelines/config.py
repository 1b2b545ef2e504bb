"""Pipeline configuration: TOML presets (tiny, default, large) plus `--set a.b=value` overrides.

The preset file is the schema: every key a user may set exists in the preset with a default of
the right type, so an unknown key or a wrongly typed value is refused with a message naming the
key, what was given and what is expected (and the nearest known keys for a typo). The one
open table is `[data.columns]`, the declared types of a data directory's extra columns of users
and items (`zip = "categorical"`, or per table `[data.columns.items] budget = "ignore"`); a run
without declarations has no `data.columns` at all.
The resolved config is a plain nested dict, stored as JSON inside every artifact and the
run manifest, and hashed so a run directory can tell whether its artifacts match the config.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vidrec.candidate_gen.config import (
    DEVICES,
    INDEX_KINDS,
    ITEM_ENCODERS,
    LOSSES,
    NEGATIVE_SAMPLERS,
    OPTIMIZERS,
    SSL_METHODS,
    CandidateGenConfig,
)
from vidrec.features.sources.synthetic import CATALOGS, WorldConfig
from vidrec.features.sources.synthetic import PRESETS as WORLD_PRESETS
from vidrec.ranking.config import CALIBRATION_METHODS, WEIGHTINGS, RankerConfig

PRESETS: tuple[str, ...] = ("tiny", "default", "large", "movielens")
AUTO = "auto"  # the default preset plus settings derived from the log (derive_settings)


class UsageError(ValueError):
    """A command line that cannot be run as given (exit code 2, like argparse's own errors)."""


class ConfigError(ValueError):
    """A preset, override or config file is invalid."""


def load_preset(name: str) -> dict[str, Any]:
    """The nested config dict of a built-in preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    text = resources.files("vidrec.pipelines").joinpath("presets", f"{name}.toml").read_text("utf-8")
    return tomllib.loads(text)


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh) if p.suffix == ".toml" else json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "bool (true/false)"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list, e.g. [1024,512,256]"
    return type(v).__name__


def parse_value(raw: str) -> Any:
    """A `--set` value parsed as a TOML value; bare words are strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check `value` against the default's type; ints are accepted where floats are expected."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
        if ok and default and value:
            elem = default[0]
            ok = all(
                isinstance(x, type(elem)) or (isinstance(elem, float) and isinstance(x, int))
                for x in value
            )
    else:
        ok = True
    if not ok:
        raise ConfigError(
            f"config key {key!r} expects {_type_name(default)}, got {value!r} ({_type_name(value)})"
        )
    return value


def apply_overrides(
    config: dict[str, Any], overrides: dict[str, Any] | list[str]
) -> dict[str, Any]:
    """A copy of `config` with overrides applied ({'a.b': v} or ['a.b=v', ...]); validated."""
    if isinstance(overrides, list):
        parsed: dict[str, Any] = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(
                    f"--set expects key=value (e.g. ranking.hidden=[512,256]), got {item!r}"
                )
            k, raw = item.split("=", 1)
            parsed[k.strip()] = parse_value(raw.strip())
        overrides = parsed
    out = copy.deepcopy(config)
    known = flatten(config)
    for key, value in overrides.items():
        if key.startswith(COLUMNS_PREFIX):
            _set_column_type(out, key, value)
            continue
        if key not in known:
            close = difflib.get_close_matches(key, known.keys(), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            section = key.split(".")[0]
            in_section = sorted(k for k in known if k.startswith(section + "."))
            listing = f" Keys in [{section}]: {', '.join(in_section)}." if in_section else ""
            raise ConfigError(f"unknown config key {key!r}{hint}{listing}")
        value = _coerce(key, value, known[key])
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    check_values(out)
    return out


#: `data.columns.<column>` or `data.columns.<users|items>.<column>`: an extra column's type
COLUMNS_PREFIX = "data.columns."
# the types a column may be declared as (features.tables.COLUMN_TYPES; kept here so that the
# CLI resolves configs without importing the data layer)
_COLUMN_TYPES = ("categorical", "continuous", "multi", "ignore")


def _set_column_type(config: dict[str, Any], key: str, value: Any) -> None:
    """Set the declared type of an extra column (`data.columns.zip = "categorical"`)."""
    parts = key[len(COLUMNS_PREFIX) :].split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ConfigError(
            f"config key {key!r}: declare a column as data.columns.<column> or "
            "data.columns.<users|items>.<column>"
        )
    if len(parts) == 2 and parts[0] not in ("users", "items"):
        raise ConfigError(
            f"config key {key!r}: only extra columns of users and items can be declared, "
            f"not of {parts[0]!r}"
        )
    if not isinstance(value, str) or value not in _COLUMN_TYPES:
        raise ConfigError(
            f"config key {key!r} expects one of {', '.join(_COLUMN_TYPES)}, got {value!r}"
        )
    node = config.setdefault("data", {}).setdefault("columns", {})
    if len(parts) == 2:
        if not isinstance(node.setdefault(parts[0], {}), dict):
            raise ConfigError(f"config key {key!r}: data.columns.{parts[0]} is a column already")
        node = node[parts[0]]
    elif isinstance(node.get(parts[0]), dict):
        raise ConfigError(f"config key {key!r}: data.columns.{parts[0]} names a table")
    node[parts[-1]] = value


def _positive_list(v: Any, minimum: float, strict: bool) -> bool:
    return bool(v) and all((x > minimum) if strict else (x >= minimum) for x in v)


# value rules beyond the types: key -> (test, what the key expects)
#: the ranker-window validation protocols of the candidate generator (pipelines.run)
VALID_PROTOCOLS = ("next_watch", "window")

#: where a run's log comes from (`pipelines.run.load_source`)
DATA_SOURCES: tuple[str, ...] = ("synthetic", "dir", "movielens", "kuairand")
#: every string key with a closed set of values: a value outside it is refused when the config
#: is resolved, not when its stage starts
CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": DATA_SOURCES,
    "data.world_preset": WORLD_PRESETS,
    "data.catalog": CATALOGS,
    "candidate_gen.item_encoder": ITEM_ENCODERS,
    "candidate_gen.loss": LOSSES,
    "candidate_gen.negative_sampler": NEGATIVE_SAMPLERS,
    "candidate_gen.ssl": SSL_METHODS,
    "candidate_gen.optimizer": OPTIMIZERS,
    "candidate_gen.device": DEVICES,
    "candidate_gen.valid_protocol": VALID_PROTOCOLS,
    "retrieval.index": INDEX_KINDS,
    "ranking.weighting": WEIGHTINGS,
    "ranking.calibrator": CALIBRATION_METHODS,
    "ranking.device": DEVICES,
}


def _choice(options: tuple[str, ...]) -> tuple[Any, str]:
    return (lambda v: v in options), f"one of {', '.join(repr(o) for o in options)}"


_VALUE_RULES: dict[str, tuple[Any, str]] = {
    **{key: _choice(options) for key, options in CHOICES.items()},
    "retrieval_baselines.recent_popular_halvings": (
        lambda v: 0 <= v <= 30,
        "an integer in 0..30 (windows span / 2^j for j = 0..n)",
    ),
    "retrieval_baselines.item_knn_neighbors": (
        lambda v: _positive_list(v, 0, strict=False),
        "a non-empty list of integers >= 0 (0 = every item)",
    ),
    "retrieval_baselines.ease_l2": (
        lambda v: _positive_list(v, 0.0, strict=True),
        "a non-empty list of numbers > 0",
    ),
    "retrieval_baselines.ease_max_gb": (lambda v: v > 0, "a number of GB > 0"),
    "retrieval_baselines.pure_svd_ranks": (
        lambda v: _positive_list(v, 1, strict=False),
        "a non-empty list of integers >= 1",
    ),
}


def _rule(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
          hi_open: bool = False) -> tuple[Any, str]:
    """A range rule for one number: lo <= v <= hi (open ends with lo_open / hi_open)."""

    def test(v: Any) -> bool:
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return not (hi is not None and (v >= hi if hi_open else v > hi))

    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return test, "a number " + " and ".join(parts)


_POS = _rule(0, lo_open=True)
_NONNEG = _rule(0)
_AT_LEAST_1 = _rule(1)
_FRACTION_OPEN = _rule(0, 1, lo_open=True, hi_open=True)
# ranges of the pipeline's own keys (0 means "no limit" where the preset says so)
_RANGE_RULES: dict[str, tuple[Any, str]] = {
    "split.train_end": _FRACTION_OPEN,
    "split.valid_end": _FRACTION_OPEN,
    "split.ranker_valid_share": _FRACTION_OPEN,
    "retrieval.n_trees": _AT_LEAST_1,
    "retrieval.search_k": (lambda v: v == -1 or v >= 1, "-1 (annoy's default) or an integer >= 1"),
    "retrieval.hnsw_m": _rule(2),
    "retrieval.hnsw_ef_construction": _AT_LEAST_1,
    "retrieval.hnsw_ef_search": _AT_LEAST_1,
    "retrieval.n_candidates": _AT_LEAST_1,
    "data.world_scale": _POS,
    "evaluation.max_users": _NONNEG,
    "evaluation.ks": (lambda v: _positive_list(v, 1, strict=False), "a non-empty list of integers >= 1"),
    "evaluation.slate_k": _AT_LEAST_1,
    "evaluation.bootstrap": _NONNEG,
    "features.max_history": _AT_LEAST_1,
    "features.max_searches": _AT_LEAST_1,
    "features.max_search_tokens": _AT_LEAST_1,
    "features.max_topics": _AT_LEAST_1,
    "features.min_item_count": _AT_LEAST_1,
    "features.min_token_count": _AT_LEAST_1,
    "features.min_category_count": _AT_LEAST_1,
    "features.n_duration_buckets": _AT_LEAST_1,
    "features.n_quantiles": _rule(2),
    "candidate_gen.embedding_dim": _AT_LEAST_1,
    "candidate_gen.user_layers": (lambda v: all(x >= 1 for x in v), "a list of integers >= 1"),
    "candidate_gen.item_layers": (lambda v: all(x >= 1 for x in v), "a list of integers >= 1"),
    "candidate_gen.categorical_dim": _AT_LEAST_1,
    "candidate_gen.num_negatives": _AT_LEAST_1,
    "candidate_gen.unigram_power": _NONNEG,
    "candidate_gen.temperature": _POS,
    "candidate_gen.ssl_alpha": _NONNEG,
    "candidate_gen.ssl_temperature": _POS,
    "candidate_gen.ssl_batch_size": _AT_LEAST_1,
    "candidate_gen.ssl_dropout": _rule(0, 1, hi_open=True),
    "candidate_gen.learning_rate": _POS,
    "candidate_gen.weight_decay": _NONNEG,
    "candidate_gen.epochs": _AT_LEAST_1,
    "candidate_gen.batch_size": _AT_LEAST_1,
    "candidate_gen.patience": _AT_LEAST_1,
    "candidate_gen.valid_k": _AT_LEAST_1,
    "candidate_gen.valid_max_examples": _NONNEG,
    "candidate_gen.max_examples_per_user": _NONNEG,
    "candidate_gen.recent_history": _NONNEG,
    "candidate_gen.label_fraction": _rule(0, 1, lo_open=True),
    "ranking.hidden": (lambda v: all(x >= 1 for x in v), "a list of integers >= 1"),
    "ranking.history_len": _AT_LEAST_1,
    "ranking.vocab_top_n": _NONNEG,
    "ranking.embedding_scale": _POS,
    "ranking.max_embedding_width": _AT_LEAST_1,
    "ranking.n_quantiles": _rule(2),
    "ranking.dropout": _rule(0, 1, hi_open=True),
    "ranking.lr": _POS,
    "ranking.weight_decay": _NONNEG,
    "ranking.epochs": _AT_LEAST_1,
    "ranking.batch_size": _AT_LEAST_1,
    "ranking.patience": _AT_LEAST_1,
    "ranking.max_train_rows": _NONNEG,
    "ranking.epoch_folds": (lambda v: v == 0 or v >= 2, "0 (off) or at least 2 folds"),
    "ranking.max_eval_rows": _NONNEG,
    "lightgbm.num_leaves": _rule(2),
    "lightgbm.learning_rate": _POS,
    "lightgbm.n_estimators": _AT_LEAST_1,
    "lightgbm.min_data_in_leaf": _AT_LEAST_1,
    "lightgbm.feature_fraction": _rule(0, 1, lo_open=True),
    "lightgbm.lambda_l2": _NONNEG,
    "lightgbm.early_stopping_rounds": _AT_LEAST_1,
    "lightgbm.relevance_buckets": _rule(2),
    "lightgbm.ndcg_at": _AT_LEAST_1,
    "lightgbm.vocab_top_n": _NONNEG,
    "lightgbm.num_threads": _NONNEG,
}


def _non_finite(v: Any) -> bool:
    if isinstance(v, float):
        return not math.isfinite(v)
    if isinstance(v, list):
        return any(_non_finite(x) for x in v)
    return False


def check_values(config: dict[str, Any]) -> None:
    """Refuse values of the right type but out of range (ConfigError naming the key).

    Every number must be finite (nan and inf are refused wherever they appear); keys with a
    range must be in it, and the split's windows must be ordered (train_end < valid_end)."""
    flat = flatten(config)
    for key, value in flat.items():
        if _non_finite(value):
            raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
        if key.startswith(COLUMNS_PREFIX):
            _set_column_type(copy.deepcopy(config), key, value)  # refuses what it would
    for key, (test, expects) in {**_RANGE_RULES, **_VALUE_RULES}.items():
        if key in flat and not test(flat[key]):
            raise ConfigError(f"config key {key!r} expects {expects}, got {flat[key]!r}")
    t, v = flat.get("split.train_end"), flat.get("split.valid_end")
    if t is not None and v is not None and not t < v:
        raise ConfigError(
            f"config keys 'split.train_end' ({t!r}) and 'split.valid_end' ({v!r}) must satisfy "
            "0 < train_end < valid_end < 1 (fractions of the log's time span: the candidate "
            "generator's window, then the ranker's, then the test window)"
        )


#: the world's sizes that `data.world_scale` multiplies (`world_config`)
WORLD_SCALED: tuple[str, ...] = ("n_users", "n_items", "n_channels", "impressions")


def world_config(data: dict[str, Any]) -> WorldConfig:
    """The `WorldConfig` of a run's `data` section: the preset `world_preset` with `catalog`,
    its users, items, channels and impressions multiplied by `world_scale` (1 when a config
    from before the key lacks it; each size at least 1)."""
    base = WorldConfig.preset(data["world_preset"], catalog=data["catalog"])
    scale = float(data.get("world_scale", 1.0))
    sizes = {name: max(1, round(getattr(base, name) * scale)) for name in WORLD_SCALED}
    return WorldConfig.preset(data["world_preset"], catalog=data["catalog"], **sizes)


def none_if_zero(value: int) -> int | None:
    """TOML has no null: 0 stands for "no limit" in caps such as max_examples_per_user."""
    return None if int(value) <= 0 else int(value)


def cg_config(config: dict[str, Any]) -> CandidateGenConfig:
    """The candidate generator's typed config from a run config."""
    c = dict(config["candidate_gen"])
    c.pop("refit_for_test", None)  # pipeline settings (stage_candidate_gen), not the model's
    c.pop("valid_protocol", None)
    c["max_examples_per_user"] = none_if_zero(c["max_examples_per_user"])
    c["user_layers"] = tuple(c["user_layers"])
    c["item_layers"] = tuple(c["item_layers"])
    c["seed"] = int(config["seed"])
    return CandidateGenConfig.from_dict(c)


def ranker_config(
    config: dict[str, Any], weighting: str | None = None, time_windows: tuple[int, ...] = ()
) -> RankerConfig:
    """The deep ranker's typed config from a run config; `weighting` overrides ranking.weighting;
    `time_windows` are those of the item time signals its frames carry (`ranker_time_windows`)."""
    c = {
        k: v
        for k, v in config["ranking"].items()
        if k not in ("max_train_rows", "max_eval_rows", "epoch_folds")
    }
    c["hidden"] = tuple(c["hidden"])
    c["vocab_top_n"] = c["vocab_top_n"] if c["vocab_top_n"] > 0 else None
    c.update(weighting=weighting or c["weighting"], seed=int(config["seed"]))
    c["time_windows"] = tuple(time_windows)
    return RankerConfig.from_dict(c)


def check_stage_configs(config: dict[str, Any]) -> None:
    """Refuse settings the stages' own configs refuse (e.g. a user tower whose last width is not
    the embedding width) when the config is resolved, not when the stage starts."""
    for section, build in (("candidate_gen", cg_config), ("ranking", ranker_config)):
        if section not in config or "seed" not in config:
            continue
        try:
            build(config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config section [{section}]: {exc}") from None
    data = config.get("data", {})
    if data.get("source") == "synthetic" and "world_preset" in data:
        try:
            world_config(data)  # e.g. a world_scale that leaves fewer items than a slate
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config section [data]: {exc}") from None


#: the catalog size from which `derive_settings` serves HNSW instead of annoy
HNSW_MIN_ITEMS = 100_000


def index_kind(retrieval: dict[str, Any]) -> str:
    """Return the served index's kind that a config's [retrieval] section names (configs saved
    before `index` existed: annoy)."""
    return str(retrieval.get("index", "annoy"))


def index_settings(retrieval: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Return (kind, keyword settings of `candidate_gen.index.make_index`) of the served index
    that a config's [retrieval] section names."""
    kind = index_kind(retrieval)
    if kind == "annoy":
        return kind, {"n_trees": int(retrieval["n_trees"]), "search_k": int(retrieval["search_k"])}
    if kind == "hnsw":
        return kind, {
            "m": int(retrieval["hnsw_m"]),
            "ef_construction": int(retrieval["hnsw_ef_construction"]),
            "ef_search": int(retrieval["hnsw_ef_search"]),
        }
    return kind, {}


def _pow2(x: float, lo: int, hi: int) -> int:
    """The power of two nearest to x (in log scale), clipped to [lo, hi]."""
    p = 2 ** int(round(math.log2(max(x, 1.0))))
    return int(min(max(p, lo), hi))


def derive_settings(stats: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """Settings that follow from a log's own statistics (features.stats.log_statistics):
    {config key: (value, the statistic it came from)}. Nothing here knows a data set's name."""
    users, items = int(stats["n_users"]), max(int(stats["n_watched_items"]), 1)
    train = max(int(stats["n_train_watches"]), 1)
    out: dict[str, tuple[Any, str]] = {}
    dim = 32 if items < 20_000 else 64
    out["candidate_gen.embedding_dim"] = (dim, f"{items:,} watched items (< 20,000: 32, else 64)")
    out["candidate_gen.user_layers"] = (
        [4 * dim, dim],
        f"embedding width {dim}: a hidden layer of 4x, then the embedding",
    )
    out["candidate_gen.num_negatives"] = (
        _pow2(items / 4, 64, 2048),
        f"{items:,} watched items: about a quarter of the catalog, 64..2048",
    )
    out["candidate_gen.ssl_batch_size"] = (
        _pow2(items / 32, 32, 256),
        f"{items:,} watched items: about 1/32 of the catalog, 32..256",
    )
    cap = 0 if train <= 2_000_000 else 20
    out["candidate_gen.max_examples_per_user"] = (
        cap,
        f"{train:,} training watches: "
        + ("every label is kept (<= 2M)" if cap == 0 else "the 20 latest per user (> 2M)"),
    )
    # enough optimizer steps an epoch on a small log (with ~100, ml-latest-small's CG was still
    # learning after 15 epochs; with ~300 it peaks within ~6 on the validation targets)
    out["candidate_gen.batch_size"] = (
        _pow2(train / 300, 128, 1024),
        f"{train:,} training watches: about 300 steps an epoch, 128..1024",
    )
    epochs = int(min(max(math.ceil(3_000_000 / train), 3), 40))
    out["candidate_gen.epochs"] = (
        epochs,
        f"{train:,} training watches: at most ~3M examples seen, 3..40 epochs (early stopping "
        "on the ranker window picks the best)",
    )
    out["candidate_gen.patience"] = (
        3 if epochs > 5 else 2,
        f"{epochs} epochs at most: patience 3 above 5 epochs, else 2",
    )
    out["candidate_gen.valid_protocol"] = (
        "window",
        "the test serves each user once at the test window's start; early stopping measures "
        "the same on the ranker window (its users served at its start, their new items there "
        "as targets)",
    )
    n_items = int(stats["n_items"])
    # HNSW from 100,000 items: annoy's forest keeps its recall on catalogs of up to about that
    # size at a budget faster than exact search, and falls well short of it on the ~800k items
    # of the large preset (docs/large.md), where the HNSW graph holds it; below, annoy builds in
    # a fraction of the graph's time and exact search itself costs a few milliseconds
    kind = "hnsw" if n_items >= HNSW_MIN_ITEMS else "annoy"
    out["retrieval.index"] = (
        kind,
        f"{n_items:,} items (>= {HNSW_MIN_ITEMS:,}: hnsw, else annoy)",
    )
    small = int(stats["n_items"]) <= 50_000
    out["retrieval.n_trees"] = (
        20 if small else 50,
        f"{int(stats['n_items']):,} items (<= 50,000: 20 trees, else 50)",
    )
    out["retrieval.search_k"] = (
        20_000 if small else -1,
        f"{int(stats['n_items']):,} items: a deep annoy search is cheap below 50,000",
    )
    has_imp = bool(stats.get("has_impressions"))
    # the rows the ranker learns from: impressions of the ranker window, or the candidates of
    # the users active in it (older statistics without the count: the training watches)
    rows = max(int(stats.get("n_ranker_rows", train)), 1)
    what = "impressions of the ranker window" if has_imp else "candidates of its active users"
    few = rows < 1_000_000
    out["ranking.hidden"] = (
        [64, 32] if few else [256, 128],
        f"{rows:,} ranker rows ({what}; < 1M: [64, 32], else [256, 128])",
    )
    # enough optimizer steps whatever the row count: ~50 batches an epoch, and epochs up to
    # ~1M rows seen (early stopping on the held-out rows picks the best epoch)
    out["ranking.batch_size"] = (
        _pow2(rows / 50, 32, 1024),
        f"{rows:,} ranker rows: about 50 steps an epoch, 32..1024",
    )
    r_epochs = int(min(max(math.ceil(1_000_000 / rows), 4), 30))
    out["ranking.epochs"] = (
        r_epochs,
        f"{rows:,} ranker rows: at most ~1M rows seen, 4..30 epochs (early stopping picks "
        "the best)",
    )
    out["ranking.patience"] = (
        3 if r_epochs > 5 else 2,
        f"{r_epochs} ranker epochs at most: patience 3 above 5 epochs, else 2",
    )
    # an L2 penalty whose weight falls with the rows, as a prior's does: it keeps the embeddings
    # of rarely seen ids small on a few thousand rows and vanishes on millions
    decay = float(f"{min(0.5 / rows, 1e-3):.0e}")
    out["ranking.weight_decay"] = (
        decay,
        f"{rows:,} ranker rows: L2 weight 0.5 / rows (at most 1e-3)",
    )
    # the ranker's epoch is picked on a held-out slice of its users; a slice of fewer than ~100
    # users is too noisy to pick from, so every user is held out once instead (k folds)
    r_users = int(stats.get("n_ranker_users", users))
    folds = 5 if r_users < 500 else 0
    out["ranking.epoch_folds"] = (
        folds,
        f"{r_users:,} users in the ranker window ("
        + (
            "< 500: a validation slice of < 100 users is too noisy to pick an epoch from; the "
            "epoch count is chosen over 5 folds of the training users"
            if folds
            else ">= 500: early stopping on the validation slice"
        )
        + ")",
    )
    if not stats.get("has_watch_time", has_imp):
        out["ranking.weighting"] = (
            "watch_time",
            "no watch time in the log (clicks only): every clicked row weighs 1, so the "
            "watch-time-weighted loss is the click log-loss and exp(logit) the click odds",
        )
    out["lightgbm.n_estimators"] = (
        100 if few else 300,
        f"{rows:,} ranker rows (< 1M: 100 trees, early-stopped)",
    )
    out["evaluation.max_users"] = (
        min(2000, users),
        f"{users:,} users: every one up to 2,000 held-out users",
    )
    return out


def data_statistics(source: str, path: str | Path) -> tuple[dict[str, Any], tuple[Any, Any]]:
    """Statistics of the log at `path` that preset "auto" derives its settings from, and the
    loaded (dataset, info), which the run's data stage takes instead of reading the log again."""
    from vidrec.features.stats import log_statistics
    from vidrec.pipelines.run import load_source

    loaded = load_source(source, path)
    split = load_preset("default")["split"]
    stats = log_statistics(loaded[0], float(split["train_end"]), float(split["valid_end"]))
    return stats, loaded


def resolve_config(
    preset: str | None = "tiny",
    overrides: list[str] | dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    seed: int | None = None,
    data_stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Preset, then a config file's values, then `--set` overrides, then the seed.

    Preset "auto" (what `vidrec run --data DIR` uses when no preset is named) is the default
    preset with the settings `derive_settings(data_stats)` derives from the log itself; the
    config records them and the statistic each came from under `derived`, and a config file or
    `--set` still overrides any of them."""
    if preset == AUTO:
        if data_stats is None:
            raise ConfigError("preset 'auto' derives its settings from a log: give --data DIR")
        cfg = load_preset("default")
        derived = derive_settings(data_stats)
        cfg = apply_overrides(cfg, {k: v for k, (v, _) in derived.items()})
        cfg["derived"] = {
            "stats": data_stats,
            "settings": {k: {"value": v, "from": why} for k, (v, why) in derived.items()},
        }
    else:
        cfg = load_preset(preset or "default")
    if config_file is not None:
        values = load_config_file(config_file)
        tuned = values.pop("tuned", None)  # where `vidrec tune` found these settings
        cfg = apply_overrides(cfg, flatten(values))
        if isinstance(tuned, dict):
            cfg["tuned"] = tuned
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    if seed is not None:
        cfg = apply_overrides(cfg, {"seed": seed})
    check_values(cfg)
    check_stage_configs(cfg)
    return cfg


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a config (sorted JSON)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------- the typed config
#: sections that record where settings came from rather than settings themselves
_RECORDS = ("derived", "tuned")


@dataclass(frozen=True)
class Config:
    """A resolved, validated pipeline configuration; immutable (`replace` returns a new one).

    Build one with `Config.preset(name)`, `Config.for_data(dir)` (the default preset plus settings
    derived from the log's statistics, as `vidrec run --data DIR`), `Config.from_toml(path)` or
    `Config.from_dict(d)`. Keys are the presets' dotted names (`candidate_gen.embedding_dim`):
    `config["candidate_gen.embedding_dim"]` reads one, `config["ranking"]` a section (a copy);
    `config.candidate_gen` and `config.ranking` are the stages' own typed, frozen configs
    (`CandidateGenConfig`, `RankerConfig`). Every value is checked when the config is built:
    types against the preset, ranges, and the choices of every string key (`CHOICES`). The
    config is saved inside every artifact of a run (`to_dict`), and `to_toml` / `from_toml`
    round-trip it exactly.
    """

    _json: str = field(repr=False)

    def __post_init__(self) -> None:
        values = json.loads(self._json)
        check_values(values)
        check_stage_configs(values)

    # -- construction
    @classmethod
    def _of(cls, values: dict[str, Any]) -> Config:
        # TOML has no null: a None (only ever in the records of derived statistics) is left out
        # here, so that to_toml / from_toml give back an equal config
        return cls(json.dumps(_without_none(values), sort_keys=True))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Return the config of a nested dict: a full config (as a run saves) or any part of one
        over the default preset; unknown keys and wrong types are a ConfigError."""
        if not isinstance(values, dict):
            raise ConfigError(f"Config.from_dict expects a dict, got {type(values).__name__}")
        values = copy.deepcopy(values)
        records = {k: values.pop(k) for k in _RECORDS if k in values}
        cfg = apply_overrides(load_preset("default"), flatten(values))
        cfg.update(records)
        return cls._of(cfg)

    @classmethod
    def preset(
        cls, name: str = "default", overrides: dict[str, Any] | list[str] | None = None,
        *, seed: int | None = None,
    ) -> Config:
        """Return built-in preset `name` (`PRESETS`) with `overrides` ({"a.b": v} or ["a.b=v"])."""
        return cls._of(resolve_config(name, overrides, seed=seed))

    @classmethod
    def for_data(
        cls, data: str | Path, *, dataset: str = "dir",
        overrides: dict[str, Any] | list[str] | None = None, seed: int | None = None,
    ) -> Config:
        """Return the settings `vidrec run --data DIR` uses on the log in `data`: the default
        preset with what `derive_settings` derives from the log's statistics (recorded under
        `derived`, each with the statistic it came from), then `overrides`. `dataset` is the
        directory's layout: "dir" (the data contract), "movielens" or "kuairand"."""
        stats, _ = data_statistics(dataset, data)
        given = [f"data.source={dataset}"]
        if isinstance(overrides, dict):
            given += [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
        elif overrides:
            given += list(overrides)
        return cls._of(resolve_config(AUTO, given, seed=seed, data_stats=stats))

    @classmethod
    def from_toml(cls, source: str | Path) -> Config:
        """Return the config in a TOML file (a path) or TOML text (a string holding a newline)."""
        if isinstance(source, str) and "\n" in source:
            try:
                return cls.from_dict(tomllib.loads(source))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"cannot read the TOML config: {exc}") from None
        return cls.from_dict(load_config_file(source))

    def replace(self, overrides: dict[str, Any] | list[str]) -> Config:
        """Return a copy with `overrides` ({"a.b": v} or ["a.b=v"]) applied and validated."""
        cfg = self.to_dict()
        records = {k: cfg.pop(k) for k in _RECORDS if k in cfg}
        cfg = apply_overrides(cfg, overrides)
        cfg.update(records)
        return Config._of(cfg)

    # -- reading
    def to_dict(self) -> dict[str, Any]:
        """Return the nested dict (a copy), as every artifact of a run stores it."""
        return json.loads(self._json)

    def to_toml(self) -> str:
        """Return the config as TOML text that `from_toml` reads back to an equal config."""
        import tomli_w

        return tomli_w.dumps(_without_none(self.to_dict()))

    def save(self, path: str | Path) -> None:
        """Write the config as a TOML file, atomically."""
        from vidrec.features.atomic import atomic_write_text

        atomic_write_text(Path(path), self.to_toml())

    def __getitem__(self, key: str) -> Any:
        node: Any = self.to_dict()
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"no config key {key!r}")
            node = node[part]
        return node

    @property
    def seed(self) -> int:
        return int(self["seed"])

    @property
    def hash(self) -> str:
        """A short stable hash (the run directory compares it with its artifacts')."""
        return config_hash(self.to_dict())

    @property
    def candidate_gen(self) -> CandidateGenConfig:
        """The candidate generator's typed, frozen config."""
        return cg_config(self.to_dict())

    @property
    def ranking(self) -> RankerConfig:
        """The deep ranker's typed, frozen config."""
        return ranker_config(self.to_dict())


def _without_none(node: Any) -> Any:
    """TOML has no null: keys whose value is None are left out (they read back as absent)."""
    if isinstance(node, dict):
        return {k: _without_none(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_without_none(v) for v in node]
    return node
