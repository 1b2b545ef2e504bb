"""The evaluation report: report.json (machine-readable), report.md and a self-contained
report.html (people), all written atomically.

Where this sits: the last stage of a run. The pipeline collects every metric of the retrieval,
ranking, watch-time, end-to-end and A/B evaluations (and of every baseline) into one nested
dict, adds what the numbers were computed on (data set, split, seed, preset), and lays out
`Section`s for people: a description saying what the numbers mean and on which data they were
computed, the section's key metrics, an optional table and figures (PNG bytes from
`evaluation.plots`).

report.json schema (schema_version 1)
-------------------------------------
One JSON object, keys sorted, 2-space indent::

    {
      "_meta": {
        "schema_version": 1,
        "title": str,                 # the report's title
        "dataset": str,               # e.g. "synthetic:default", "movielens-1m"
        "split": str,                 # how train/validation/test were cut, e.g. "time: last 2 days"
        "seed": int,                  # the one seed that drove the run
        "preset": str,                # pipeline preset (tiny / default / large / custom)
        ...                           # any extra metadata the caller passes (git commit, config)
      },
      "<area>": {                     # retrieval, ranking, watch_time, end_to_end, ab, data, ...
        "<metric>": number | null | bool | str | list,
        "<sub-area>": { ... }         # nested to any depth, e.g. by popularity bucket
      },
      "baselines": {"<name>": {"<area>": {...}}}   # same layout per baseline model
    }

A metric is named by its *key path*: the keys from the root joined by "." — for example
`retrieval.recall@50`, `retrieval.tail.recall@50`, `ranking.weighted_per_user_loss`,
`baselines.most_popular.retrieval.recall@50`. Keys therefore never contain "."; the cut-off k
is part of the metric's name (`recall@50`, `ndcg@10`). `flatten` turns the nested dict into
{key path: value}; `unflatten` goes back.

Values: fractions (recall, AUC, losses) are in [0, 1], never percent; times are in seconds;
counts are integers. Floats are rounded to 6 significant digits. NaN and ±inf (an undefined
metric: AUC with one class, no watch time in a group, ...) are written as `null`. Lists (e.g.
a per-epoch curve) are allowed as leaves. Keys starting with "_" are reserved at the top level.
No timestamp is added unless the caller passes one in `extra_meta`, so the same run writes the
same bytes (a resumed run can be compared with an uninterrupted one).

report.md links its figures as PNG files in `<stem>_figures/` next to it; report.html embeds
them inline (base64), so the HTML file can be mailed or opened anywhere on its own.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec.evaluation.retrieval import FRESH_DAYS, HEAD_SHARE, TAIL_SHARE
from vidrec.features.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = [
    "DISPLAY_FORMATS",
    "METRIC_GLOSSARY",
    "SCHEMA_VERSION",
    "SLICE_GLOSSARY",
    "Figure",
    "Report",
    "Section",
    "explain",
    "flatten",
    "format_as",
    "unflatten",
]

SCHEMA_VERSION = 1
_SIGNIFICANT_DIGITS = 6
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# What a metric means, by the last key of its path with any "@<k>" replaced by "@k", or, where
# the last key alone is ambiguous, by its last two keys ("true_expected_watch_time.mean").
METRIC_GLOSSARY: dict[str, str] = {
    "recall@k": "share of the held-out next watches found among the top {k} retrieved items "
    "(0-1, higher is better)",
    "hitrate@k": "share of users with at least one next watch in their top {k} (0-1, higher is better)",
    "ndcg@k": "normalised discounted cumulative gain of the top {k}: 1 = the best possible order "
    "(0-1, higher is better)",
    "ndcg_watch_time@k": "NDCG of the top {k} with the user's watch time of an item as its gain, "
    "the ideal being the user's own most-watched items (0-1, higher is better)",
    "map@k": "mean average precision of the top {k} (0-1, higher is better)",
    "map": "mean average precision (0-1, higher is better)",
    "coverage": "share of the catalogue that appears in at least one user's list (0-1)",
    "coverage@k": "share of the catalogue that appears in at least one user's top {k} (0-1)",
    "n_queries": "held-out users with at least one target (those the means are over)",
    "ann_recall@k": "share of the exact top {k} (brute-force inner product) that the approximate "
    "index also returns (0-1, 1 = identical)",
    "auc": "probability that a clicked impression is scored above a non-clicked one "
    "(0.5 = random, 1 = perfect)",
    "gauc": "AUC computed per user page, averaged with impression-count weights",
    "gauc_groups": "user pages with both a click and a non-click (those GAUC averages over)",
    "logloss": "mean binary cross-entropy of the click probability (nats, lower is better)",
    "weighted_per_user_loss": "[YT16] share of (clicked, not-clicked) pairs of the same page, "
    "weighted by the click's watch time, that the ranker ordered wrongly (0-1, lower is better)",
    "mae": "mean absolute error (seconds)",
    "rmse": "root mean squared error (seconds)",
    "bias": "mean of predicted minus reference (seconds; > 0 means over-prediction)",
    "relative_bias": "bias divided by the mean reference value (0 = unbiased)",
    "max_abs_relative_error": "largest |mean predicted / mean reference - 1| over the bins "
    "(0.15 = 15%)",
    "bins_within_tolerance": "calibration bins whose mean prediction is within the tolerance of "
    "the mean reference",
    "all_within_tolerance": "whether every calibration bin is within the tolerance",
    "pearson": "linear correlation of prediction and truth (-1 to 1)",
    "spearman": "rank correlation of prediction and truth (-1 to 1)",
    "worst_bin": "the calibration bin (1 = lowest predictions) farthest from calibrated",
    "overall_ratio": "total predicted / total reference watch time (1 = unbiased on average)",
    "mean_predicted": "mean predicted expected watch time per impression (seconds)",
    "mean_observed": "mean observed watch time per impression, 0 when not clicked (seconds)",
    "mean_watch_time": "mean observed watch time per impression, 0 when not clicked (seconds)",
    "tolerance": "allowed relative deviation for a calibrated bin (0.15 = ±15%)",
    "n_bins": "number of equal-count bins of the prediction",
    "fraction_of_oracle": "the slate's true expected watch time as a share of the oracle slate's "
    "(end to end: the best k items of the whole catalog under the ground truth; in the ranker "
    "table: the best k of the same candidates); shown in percent, report.json holds the "
    "fraction (0-1)",
    "true_expected_watch_time.mean": "true expected watch time of a user's slate under the "
    "simulated world (with position bias), mean over users (seconds)",
    "true_expected_watch_time.ci_low": "lower end of the bootstrap 95% interval of that mean "
    "(seconds)",
    "true_expected_watch_time.ci_high": "upper end of the bootstrap 95% interval of that mean "
    "(seconds)",
    "distinct_items": "distinct items over all users' slates",
    "users_with_next_watches": "users who watched something in the test window (those recall "
    "and NDCG average over)",
    "ctr": "click-through rate: clicks per impression (0-1)",
    "n": "rows the metric was computed on",
    "n_positives": "clicked impressions",
    "ndcg_groups": "user pages with some watch time (those NDCG averages over)",
    "n_rows": "rows (impressions or examples) the metric was computed on",
    "n_groups": "user pages (groups) in the data",
    "n_users": "users the metric was computed on",
    "counts.users": "users in the data set",
    "counts.items": "items in the data set's catalogue",
    "counts.watches": "watches in the log",
    "counts.impressions": "impressions (an item shown to a user) in the log",
    "counts.searches": "searches in the log",
}
# the short names of watch_time.errors
METRIC_GLOSSARY["mean_pred"] = METRIC_GLOSSARY["mean_predicted"]
METRIC_GLOSSARY["mean_obs"] = METRIC_GLOSSARY["mean_observed"]

# Which part of the data a metric was computed on, by the keys in its path before the metric's
# own: one key ("observed") or two ("popularity.head", the buckets of evaluation.retrieval's
# popularity_buckets, freshness_buckets and history_groups as the pipeline calls them).
SLICE_GLOSSARY: dict[str, str] = {
    "popularity.head": f"next watches of head items only: the {HEAD_SHARE:.0%} of the catalogue "
    "most watched in the training window",
    "popularity.torso": "next watches of torso items only: neither head nor tail, the middle of "
    "the catalogue by training-window watches",
    "popularity.tail": f"next watches of tail items only: the {TAIL_SHARE:.0%} of the catalogue "
    "least watched in the training window, and every item never watched there",
    "freshness.fresh": f"next watches of fresh items only: uploaded less than {FRESH_DAYS:g} days "
    "before serving",
    "freshness.old": f"next watches of old items only: uploaded {FRESH_DAYS:g} days or more "
    "before serving",
    "history.new": "new users only: no watch before serving",
    "history.returning": "returning users only: at least one watch before serving",
    "observed": "reference: the observed watch time",
    "errors": "reference: the observed watch time",
    "ground_truth_calibration": "reference: the simulated world's true expected watch time",
    "vs_ground_truth": "truth: the simulated world's true expected watch time",
}


def _glossary_key(key: str) -> tuple[str, str | None]:
    """Return (the key as the glossary names it, its cut-off or None): "recall@50" ->
    ("recall@k", "50")."""
    m = re.fullmatch(r"(.+)@(\d+)", key)
    return (f"{m.group(1)}@k", m.group(2)) if m else (key, None)


def explain(key_path: str) -> str:
    """Return the glossary meaning of a metric key path ("" when the metric is not in it),
    followed by the slice of the data it was computed on where its path names one (a
    popularity bucket, new users, the reference of a calibration)."""
    keys = key_path.split(".")
    last, k = _glossary_key(keys[-1])
    template = METRIC_GLOSSARY.get(".".join([*keys[-2:-1], last])) or METRIC_GLOSSARY.get(last, "")
    if not template:
        return ""
    meaning = template.format(k=k) if k is not None else template.replace("{k}", "k")
    parents, slices, i = keys[:-1], [], 0
    while i < len(parents):
        pair = ".".join(parents[i : i + 2])
        if pair in SLICE_GLOSSARY:
            slices.append(SLICE_GLOSSARY[pair])
            i += 2
            continue
        if parents[i] in SLICE_GLOSSARY:
            slices.append(SLICE_GLOSSARY[parents[i]])
        i += 1
    return "; ".join([meaning, *slices])


# --------------------------------------------------------------------------- key paths
def _check_key(key: Any, path: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(
            f"metric key {key!r} under {path or 'the root'} must be a non-empty string; "
            "name cut-offs inside the key, e.g. 'recall@50'"
        )
    if "." in key:
        raise ValueError(
            f"metric key {key!r} under {path or 'the root'} contains '.', which separates key "
            "paths; nest dicts instead (e.g. {'retrieval': {'recall@50': ...}})"
        )
    return key


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _is_number(value: Any) -> bool:
    return isinstance(value, Real | np.number) and not isinstance(value, bool | np.bool_)


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Return {key path: value} for every numeric leaf of `nested`, paths joined with ".".

    Numbers (Python or numpy) come back as float, booleans as 0.0/1.0, None as NaN. Strings
    and lists are descriptive, not metrics, and are not returned.
    """
    out: dict[str, float] = {}
    for key, value in nested.items():
        path = _join(prefix, _check_key(key, prefix))
        if isinstance(value, Mapping):
            out.update(flatten(value, path))
        elif value is None:
            out[path] = float("nan")
        elif isinstance(value, bool | np.bool_):
            out[path] = float(value)
        elif _is_number(value):
            out[path] = float(value)
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Return the nested dict whose `flatten` is `flat` (key paths split on ".")."""
    root: dict[str, Any] = {}
    for path, value in flat.items():
        keys = str(path).split(".")
        node = root
        for i, key in enumerate(keys[:-1]):
            _check_key(key, ".".join(keys[:i]))
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ValueError(
                    f"key path {path!r} runs through {'.'.join(keys[: i + 1])!r}, which is a value"
                )
            node = child
        last = _check_key(keys[-1], ".".join(keys[:-1]))
        if isinstance(node.get(last), dict):
            raise ValueError(f"key path {path!r} is both a value and a group of metrics")
        node[last] = value
    return root


def _leaves(nested: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Return (key path, value) for every leaf, numeric or not, in insertion order."""
    out: list[tuple[str, Any]] = []
    for key, value in nested.items():
        path = _join(prefix, _check_key(key, prefix))
        if isinstance(value, Mapping):
            out.extend(_leaves(value, path))
        else:
            out.append((path, value))
    return out


# --------------------------------------------------------------------------- JSON values
def _round(x: float) -> float | None:
    if not math.isfinite(x):
        return None
    return float(f"{x:.{_SIGNIFICANT_DIGITS}g}")


def _jsonable(value: Any, path: str) -> Any:
    """Return `value` as plain JSON types: rounded floats, NaN/inf -> None, numpy -> Python."""
    if isinstance(value, Mapping):
        return {_check_key(k, path): _jsonable(v, _join(path, k)) for k, v in value.items()}
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, Integral | np.integer):
        return int(value)
    if _is_number(value):
        return _round(float(value))
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"report value at {path or 'the root'} has type {type(value).__name__}; metrics must be "
        "numbers, bools, strings, None, lists or dicts (put tables in a Section)"
    )


# --------------------------------------------------------------------------- display
def _fmt(value: Any) -> str:
    """Return a value formatted for people: 4 significant digits, thousands separators."""
    if value is None:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, Integral | np.integer):
        return f"{int(value):,}"
    if _is_number(value):
        x = float(value)
        if not math.isfinite(x):
            return "n/a" if math.isnan(x) else ("∞" if x > 0 else "-∞")
        if x == 0:
            return "0"
        if abs(x) >= 1e4:
            return f"{x:,.0f}"
        return f"{x:.4g}"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, np.ndarray | list | tuple):
        items = [_fmt(v) for v in list(value)[:8]]
        return "[" + ", ".join(items) + (", …" if len(value) > 8 else "") + "]"
    return str(value)


# How some numbers are shown (report.json keeps them as they are), by a metric's last key or a
# table column's name: "percent" for a share of a whole, "ratio" for a quotient of two numbers.
# Both keep 3 significant digits with trailing zeros, so 0.300 does not read as a rounded 0.3.
DISPLAY_FORMATS: dict[str, str] = {
    "fraction_of_oracle": "percent",
    "overall_ratio": "ratio",
    "speedup_p50": "ratio",
}
_FORMAT_KINDS = ("percent", "ratio")


def _three_digits(x: float) -> str:
    x = float(f"{x:.3g}")  # round first: 9.996 shows as 10.0, not as 10.00
    if x == 0 or abs(x) >= 1e4:
        return _fmt(x)
    return f"{x:,.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def format_as(value: Any, kind: str | None) -> str:
    """Return `value` for people as `kind`: "percent" (0.3 -> "30.0%"), "ratio" (0.3 -> "0.300")
    or None (4 significant digits, as every other number of the report)."""
    if kind is None or not _is_number(value) or not math.isfinite(float(value)):
        return _fmt(value)
    if kind == "percent":
        return _three_digits(100.0 * float(value)) + "%"
    if kind == "ratio":
        return _three_digits(float(value))
    raise ValueError(f"unknown display format {kind!r}; use one of {_FORMAT_KINDS}")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "item"


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _frame_rows(
    table: pd.DataFrame, formats: Mapping[str, str]
) -> tuple[list[str], list[list[str]], list[bool]]:
    """Return header, formatted cells (`formats`: DISPLAY_FORMATS kinds by column name) and
    which columns are numeric (right-aligned)."""
    frame = table if isinstance(table.index, pd.RangeIndex) else table.reset_index()
    header = [str(c) for c in frame.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c].dtype)
        and not pd.api.types.is_bool_dtype(frame[c].dtype)
        for c in frame.columns
    ]
    kinds = [formats.get(h) for h in header]
    rows = [
        [format_as(v, kind) for v, kind in zip(row, kinds, strict=True)]
        for row in frame.itertuples(index=False, name=None)
    ]
    return header, rows, numeric


# --------------------------------------------------------------------------- content
@dataclass(frozen=True)
class Figure:
    """A PNG figure with a title and a caption saying what to look at."""

    title: str
    png: bytes
    caption: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.png, bytes | bytearray) or not bytes(self.png).startswith(
            _PNG_SIGNATURE
        ):
            raise ValueError(
                f"Figure {self.title!r}: png must be PNG bytes (as returned by evaluation.plots), "
                f"got {type(self.png).__name__}"
            )


@dataclass
class Section:
    """One part of the report: what was measured and on which data, then numbers and figures.

    `metrics` is a (possibly nested) dict shown as a key/value table; keys are shown as key
    paths, each with its meaning from `metric_notes` (keyed by the path within `metrics`) or
    else from `METRIC_GLOSSARY`. `key_prefix` is where `metrics` sits in report.json (e.g.
    "ranking" or "baselines.lightgbm.ranking"); when given, the table shows full key paths.
    `column_formats` shows columns of `table` as a DISPLAY_FORMATS kind ({"share": "percent"}).
    """

    title: str
    description: str
    metrics: Mapping[str, Any] = field(default_factory=dict)
    table: pd.DataFrame | None = None
    figures: Sequence[Figure] = field(default_factory=list)
    table_caption: str = ""
    metric_notes: Mapping[str, str] = field(default_factory=dict)
    key_prefix: str = ""
    column_formats: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.title, str) or not self.title.strip():
            raise ValueError("Section needs a non-empty title")
        if not isinstance(self.description, str) or not self.description.strip():
            raise ValueError(
                f"Section {self.title!r} needs a description saying what the numbers mean and "
                "on which data they were computed"
            )
        if self.table is not None and not isinstance(self.table, pd.DataFrame):
            raise TypeError(f"Section {self.title!r}: table must be a pandas DataFrame or None")
        for fig in self.figures:
            if not isinstance(fig, Figure):
                raise TypeError(
                    f"Section {self.title!r}: figures must be evaluation.report.Figure objects"
                )
        _leaves(self.metrics)  # validates keys now, not at write time
        bad = {c: k for c, k in self.column_formats.items() if k not in _FORMAT_KINDS}
        if bad:
            raise ValueError(
                f"Section {self.title!r}: column_formats {bad} name unknown formats; use one "
                f"of {_FORMAT_KINDS}"
            )
        if self.key_prefix and not all(self.key_prefix.split(".")):
            raise ValueError(
                f"Section {self.title!r}: key_prefix {self.key_prefix!r} must be a key path of "
                "non-empty keys joined by '.', e.g. 'baselines.lightgbm.ranking'"
            )

    def metric_rows(self) -> list[tuple[str, str, str]]:
        """Return (key path, formatted value, meaning) for every metric of the section."""
        return [
            (
                _join(self.key_prefix, path),
                format_as(value, DISPLAY_FORMATS.get(path.rsplit(".", 1)[-1])),
                self.metric_notes.get(path) or explain(path),
            )
            for path, value in _leaves(self.metrics)
        ]

    @property
    def metric_header(self) -> str:
        """Return the heading of the metric column (says whether keys are full key paths)."""
        return "metric (key path in report.json)" if self.key_prefix else "metric"


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
background:#fff;margin:0}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:28px;margin:8px 0 4px}h2{font-size:21px;margin:40px 0 8px;padding-top:8px;
border-top:1px solid #d0d7de}
p{margin:6px 0 10px;max-width:80ch}.muted{color:#59636e;font-size:13px}
table{border-collapse:collapse;margin:10px 0 16px;font-size:14px}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.key{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px;white-space:nowrap}
.wrap{overflow-x:auto}figure{margin:16px 0 24px}
figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{font-size:14px;color:#333;max-width:80ch;margin-top:4px}
nav ol{margin:4px 0 0;padding-left:22px}code{font-family:ui-monospace,monospace}
"""


_FOOTER = (
    "Every number here is also in report.json: a section's metrics sit under its key paths, "
    "and report.json's _meta block repeats the data set, split, seed and preset."
)


class Report:
    """An evaluation report: nested metrics + metadata (→ report.json) and sections (→ md, html)."""

    def __init__(
        self,
        metrics: Mapping[str, Any],
        *,
        dataset: str,
        split: str,
        seed: int,
        preset: str,
        sections: Sequence[Section] = (),
        title: str = "vidrec evaluation report",
        intro: str = "",
        extra_meta: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"metrics must be a nested dict of metric values, got {type(metrics).__name__}"
            )
        reserved = [k for k in metrics if isinstance(k, str) and k.startswith("_")]
        if reserved:
            raise ValueError(
                f"top-level metric keys starting with '_' are reserved (got {reserved}); rename them"
            )
        if isinstance(seed, bool) or not isinstance(seed, Integral | np.integer):
            raise TypeError(f"seed must be an int, got {seed!r}")
        for name, value in (("dataset", dataset), ("split", split), ("preset", preset)):
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"{name} must be a non-empty string describing the run, got {value!r}"
                )
        for s in sections:
            if not isinstance(s, Section):
                raise TypeError(
                    f"sections must be evaluation.report.Section objects, got {type(s).__name__}"
                )
        self.metrics: dict[str, Any] = _jsonable(metrics, "")  # validates keys and values now
        self.sections: list[Section] = list(sections)
        self.title: str = title
        self.intro: str = intro
        extra = _jsonable(dict(extra_meta or {}), "_meta")
        clash = sorted(
            set(extra) & {"schema_version", "title", "dataset", "split", "seed", "preset"}
        )
        if clash:
            raise ValueError(f"extra_meta may not override {clash}; pass them as arguments")
        self.meta: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "title": title,
            "dataset": dataset,
            "split": split,
            "seed": int(seed),
            "preset": preset,
            **extra,
        }

    # ----------------------------------------------------------------- views
    def to_dict(self) -> dict[str, Any]:
        """Return the report.json content: the rounded nested metrics plus the `_meta` block."""
        return {"_meta": dict(self.meta), **self.metrics}

    def flat(self) -> dict[str, float]:
        """Return {key path: value} of every numeric metric (see `flatten`)."""
        return flatten(self.metrics)

    def _shown_meta(self) -> list[tuple[str, Any]]:
        """Return (key path in `_meta`, value) rows: a dict (e.g. seconds per stage) is shown
        one row per entry, never as one cell of braces and quotes."""
        # the title is the page heading and the schema version is for programs, not readers
        shown = {k: v for k, v in self.meta.items() if k not in ("title", "schema_version")}
        return _leaves(shown)

    # ----------------------------------------------------------------- writers
    def write_json(self, path: str | Path) -> Path:
        """Write report.json atomically; return its path."""
        return atomic_write_json(path, self.to_dict())

    def write_markdown(self, path: str | Path) -> Path:
        """Write report.md atomically, its figures as PNGs in `<stem>_figures/`; return its path."""
        path = Path(path)
        fig_dir_name = f"{path.stem}_figures"
        lines = [f"# {self.title}", ""]
        lines += [p + "\n" for p in _paragraphs(self.intro)]
        lines += ["| computed on | |", "|---|---|"]
        lines += [f"| {_md_cell(k)} | {_md_cell(_fmt(v))} |" for k, v in self._shown_meta()]
        lines.append("")
        for i, section in enumerate(self.sections, 1):
            lines += [f"## {i}. {section.title}", ""]
            lines += [p + "\n" for p in _paragraphs(section.description)]
            rows = section.metric_rows()
            if rows:
                lines += [f"| {section.metric_header} | value | meaning |", "|---|--:|---|"]
                lines += [f"| `{k}` | {_md_cell(v)} | {_md_cell(m)} |" for k, v, m in rows]
                lines.append("")
            if section.table is not None:
                header, cells, numeric = _frame_rows(section.table, section.column_formats)
                if section.table_caption:
                    lines += [f"*{_md_cell(section.table_caption)}*", ""]
                lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                lines.append("|" + "|".join("--:" if n else "---" for n in numeric) + "|")
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in cells]
                lines.append("")
            for j, fig in enumerate(section.figures, 1):
                name = f"{i:02d}-{j:02d}-{_slug(fig.title)}.png"
                atomic_write_bytes(path.parent / fig_dir_name / name, bytes(fig.png))
                lines += [f"![{_md_cell(fig.title)}]({fig_dir_name}/{name})", ""]
                caption = f"**{fig.title}.** {' '.join(fig.caption.split())}".strip()
                lines += [caption, ""]
        lines.append(_FOOTER)
        return atomic_write_text(path, "\n".join(lines) + "\n")

    def write_html(self, path: str | Path) -> Path:
        """Write a single self-contained report.html (inline CSS, base64 PNGs); return its path."""
        esc = html.escape
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(self.title)}</title><style>{_CSS}</style></head><body><main>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        out += [f"<p>{esc(p)}</p>" for p in _paragraphs(self.intro)]
        out.append('<table class="meta"><caption class="muted">computed on</caption><tbody>')
        out += [
            f'<tr><th scope="row">{esc(str(k))}</th><td>{esc(_fmt(v))}</td></tr>'
            for k, v in self._shown_meta()
        ]
        out.append("</tbody></table>")
        if self.sections:
            out.append("<nav><strong>Contents</strong><ol>")
            out += [
                f'<li><a href="#s{i}">{esc(s.title)}</a></li>'
                for i, s in enumerate(self.sections, 1)
            ]
            out.append("</ol></nav>")
        for i, section in enumerate(self.sections, 1):
            out.append(f'<section id="s{i}"><h2>{i}. {esc(section.title)}</h2>')
            out += [f"<p>{esc(p)}</p>" for p in _paragraphs(section.description)]
            rows = section.metric_rows()
            if rows:
                out.append(
                    f'<div class="wrap"><table class="metrics"><thead><tr><th>{esc(section.metric_header)}</th><th>value</th><th>meaning</th></tr></thead><tbody>'
                )
                out += [
                    f'<tr><td class="key">{esc(k)}</td><td class="num">{esc(v)}</td><td>{esc(m)}</td></tr>'
                    for k, v, m in rows
                ]
                out.append("</tbody></table></div>")
            if section.table is not None:
                header, cells, numeric = _frame_rows(section.table, section.column_formats)
                out.append('<div class="wrap"><table class="data">')
                if section.table_caption:
                    out.append(f'<caption class="muted">{esc(section.table_caption)}</caption>')
                out.append(
                    "<thead><tr>"
                    + "".join(f"<th>{esc(h)}</th>" for h in header)
                    + "</tr></thead><tbody>"
                )
                for row in cells:
                    tds = "".join(
                        f'<td class="num">{esc(c)}</td>' if n else f"<td>{esc(c)}</td>"
                        for c, n in zip(row, numeric, strict=True)
                    )
                    out.append(f"<tr>{tds}</tr>")
                out.append("</tbody></table></div>")
            for fig in section.figures:
                data = base64.b64encode(bytes(fig.png)).decode("ascii")
                caption = f"<strong>{esc(fig.title)}.</strong> {esc(' '.join(fig.caption.split()))}"
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{esc(fig.title)}">'
                    f"<figcaption>{caption}</figcaption></figure>"
                )
            out.append("</section>")
        out.append(f'<p class="muted">{esc(_FOOTER)}</p></main></body></html>')
        return atomic_write_text(path, "\n".join(out) + "\n")

    def write_all(self, directory: str | Path, stem: str = "report") -> dict[str, Path]:
        """Write `<stem>.json`, `<stem>.md` and `<stem>.html` into `directory`; return their paths."""
        directory = Path(directory)
        return {
            "json": self.write_json(directory / f"{stem}.json"),
            "markdown": self.write_markdown(directory / f"{stem}.md"),
            "html": self.write_html(directory / f"{stem}.html"),
        }


def _md_cell(text: Any) -> str:
    """Return text safe inside a markdown table cell: one line, pipes escaped, and a "<" that
    could open an HTML tag backslash-escaped; the rest stays plain text ("->", "a < b", "&")."""
    one_line = " ".join(str(text).split())
    return re.sub(r"<(?=[A-Za-z/!?])", r"\\<", one_line.replace("|", "\\|"))
