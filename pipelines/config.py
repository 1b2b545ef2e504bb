"""Pipeline configuration: TOML presets (tiny, default, large) plus `--set a.b=value` overrides.

The preset file is the schema: every key a user may set exists in the preset with a default of
the right type, so an unknown key or a wrongly typed value is refused with a message naming the
key, what was given and what is expected (and the nearest known keys for a typo).
The resolved config is a plain nested dict, stored as JSON inside every artifact and the
run manifest, and hashed so a run directory can tell whether its artifacts match the config.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

PRESETS: tuple[str, ...] = ("tiny", "default", "large", "movielens")


class ConfigError(ValueError):
    """A preset, override or config file is invalid."""


def load_preset(name: str) -> dict[str, Any]:
    """The nested config dict of a built-in preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    text = resources.files("pipelines").joinpath("presets", f"{name}.toml").read_text("utf-8")
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
    return out


def resolve_config(
    preset: str = "tiny",
    overrides: list[str] | dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Preset, then a config file's values, then `--set` overrides, then the seed."""
    cfg = load_preset(preset)
    if config_file is not None:
        cfg = apply_overrides(cfg, flatten(load_config_file(config_file)))
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    if seed is not None:
        cfg = apply_overrides(cfg, {"seed": seed})
    return cfg


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a config (sorted JSON)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
