"""Report figures as PNG bytes (matplotlib, Agg canvas; no pyplot, no global state).

Where this sits: the pipeline computes metrics, builds small tables (pandas) and calls these
functions; the returned PNG bytes go into `evaluation.report.Figure` and end up inline in
report.html (base64) and as files next to report.md. Every figure has a title, axis labels
with units and a legend (or, for bar charts, a note on what the error bars are), so it reads
on its own.

Each function draws on its own `matplotlib.figure.Figure` with an Agg canvas, so it is safe to
call from any thread and never touches the user's backend choice. PNGs carry no software or
date metadata, so the same inputs give the same bytes.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "bars_with_ci",
    "calibration_plot",
    "recall_curves_by_bucket",
    "training_curves",
    "upload_age_histograms",
]

_DPI = 110


def _new_figure(
    n_panels: int = 1, *, width: float = 6.4, height: float = 4.2
) -> tuple[MplFigure, list[Axes]]:
    """Return a figure with `n_panels` axes, two per row, each about width x height inches."""
    cols = min(n_panels, 2)
    rows = -(-n_panels // cols)
    fig = MplFigure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _png(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _require_columns(name: str, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(
            f"{name} must be a pandas DataFrame with columns {list(columns)}, got {type(frame).__name__}"
        )
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} is missing columns {missing}; it needs {list(columns)} (has {list(frame.columns)})"
        )
    if frame.empty:
        raise ValueError(f"{name} has no rows; there is nothing to plot")


def _require_nonempty(name: str, mapping: Mapping[str, Any]) -> None:
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(f"{name} must be a non-empty mapping of series name -> values")


# --------------------------------------------------------------------------- retrieval
def recall_curves_by_bucket(
    frame: pd.DataFrame,
    *,
    metric: str = "Recall@k",
    title: str = "Retrieval recall@k by item popularity",
) -> bytes:
    """Return a PNG with one panel per popularity bucket: `metric` against k, one line per model.

    `frame` is long-form with columns `model`, `bucket` (e.g. all / head / torso / tail),
    `k` (int) and `value` (a fraction in [0, 1]). Panels and lines keep first-appearance order.
    """
    _require_columns("frame", frame, ["model", "bucket", "k", "value"])
    buckets = list(dict.fromkeys(frame["bucket"]))
    models = list(dict.fromkeys(frame["model"]))
    fig, axes = _new_figure(len(buckets), width=5.2, height=3.8)
    handles: dict[str, Any] = {}  # one legend for every panel, in model order
    for ax, bucket in zip(axes, buckets, strict=True):
        part = frame[frame["bucket"] == bucket]
        for i, model in enumerate(models):
            rows = part[part["model"] == model].sort_values("k")
            if rows.empty:
                continue
            (line,) = ax.plot(rows["k"], rows["value"], marker="o", color=f"C{i}")
            handles.setdefault(str(model), line)
        ax.set_xscale("log")
        ks = sorted(set(part["k"]))
        ax.set_xticks(ks, [str(int(k)) for k in ks])
        ax.minorticks_off()
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"{bucket} items")
        ax.set_xlabel("k (number of retrieved items, log scale)")
        ax.set_ylabel(f"{metric} (fraction of next watches)")
        ax.grid(alpha=0.3)
    # below the panels, long names wrapped: a legend inside each panel squeezed the panels to
    # nothing once a baseline's name ran to a sentence
    labels = [textwrap.fill(name, 60) for name in handles]
    fig.legend(
        list(handles.values()), labels, loc="outside lower center", ncols=2, fontsize="small"
    )
    fig.suptitle(title)
    return _png(fig)


def upload_age_histograms(
    ages: Mapping[str, Any],
    *,
    bins: int = 30,
    unit: str = "days",
    title: str = "Upload age of retrieved vs watched items",
    clip_quantile: float = 0.99,
    xlabel: str | None = None,
) -> bytes:
    """Return a PNG of overlaid upload-age distributions (share of items per age bin).

    `ages` maps a series name (e.g. "retrieved, with example age", "retrieved, without example
    age", "watched next") to ages in `unit`. Bins are shared; ages above the pooled
    `clip_quantile` are counted in the last bin, so one very old item does not squash the plot.
    """
    _require_nonempty("ages", ages)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    series = {}
    for name, values in ages.items():
        arr = np.asarray(values, dtype=np.float64).ravel()
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            raise ValueError(f"ages[{name!r}] has no finite values; there is nothing to plot")
        series[name] = arr
    pooled = np.concatenate(list(series.values()))
    lo = min(0.0, float(pooled.min()))
    hi = float(np.quantile(pooled, clip_quantile))
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    fig, (ax,) = _new_figure(1, width=7.0)
    for i, (name, arr) in enumerate(series.items()):
        counts, _ = np.histogram(np.clip(arr, lo, hi), bins=edges)
        share = counts / arr.size
        ax.stairs(share, edges, color=f"C{i}", linewidth=1.8, label=f"{name} (n={arr.size:,})")
    ax.set_title(title)
    ax.set_xlabel(xlabel or f"item age at the time of the event ({unit}; last bin includes older)")
    ax.set_ylabel("share of items in the bin")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


# --------------------------------------------------------------------------- training
def training_curves(
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    title: str = "Training curves",
    xlabel: str = "epoch",
) -> bytes:
    """Return a PNG with one panel per quantity (e.g. "train loss (nats)", "validation recall@50").

    `panels` maps the panel's y-axis label to {series name: values per epoch}; epoch 1 is the
    first value. NaN values leave a gap.
    """
    _require_nonempty("panels", panels)
    fig, axes = _new_figure(len(panels), width=5.2, height=3.6)
    for ax, (ylabel, series) in zip(axes, panels.items(), strict=True):
        _require_nonempty(f"panels[{ylabel!r}]", series)
        for i, (name, values) in enumerate(series.items()):
            y = np.asarray(values, dtype=np.float64).ravel()
            if y.size == 0:
                raise ValueError(f"panels[{ylabel!r}][{name!r}] is empty; pass one value per epoch")
            x = np.arange(1, y.size + 1)
            ax.plot(x, y, marker="o" if y.size <= 30 else None, color=f"C{i}", label=str(name))
        ax.set_title(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return _png(fig)


# --------------------------------------------------------------------------- watch time
def calibration_plot(
    tables: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    tolerance: float = 0.15,
    title: str = "Expected watch time: predicted vs observed, by decile of prediction",
    unit: str = "s",
    log_scale: bool | None = None,
    reference: str = "observed watch time",
) -> bytes:
    """Return a PNG of the mean reference against mean predicted watch time per bin, with y = x.

    `tables` is one `calibration_by_decile` table or {model name: table}. Their
    "mean_observed" column is the reference the predictions are held against, named on the y
    axis by `reference`: the observed watch time, or e.g. "true expected watch time
    (simulator)" for a table against a simulated world's ground truth. The shaded band is
    where a bin counts as calibrated: |predicted / reference − 1| <= tolerance, i.e. reference
    in [predicted / (1 + tol), predicted / (1 − tol)]. Axes are log-scaled when every mean is
    positive and they span more than a factor 20 (`log_scale=None`), or as requested.
    """
    named = {"model": tables} if isinstance(tables, pd.DataFrame) else dict(tables)
    _require_nonempty("tables", named)
    for name, table in named.items():
        _require_columns(f"tables[{name!r}]", table, ["mean_predicted", "mean_observed"])
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be a fraction in (0, 1) such as 0.15, got {tolerance}")
    values = np.concatenate(
        [
            t[["mean_predicted", "mean_observed"]].to_numpy(dtype=np.float64).ravel()
            for t in named.values()
        ]
    )
    values = values[np.isfinite(values)]
    positive = values.size > 0 and bool((values > 0).all())
    if log_scale is None:
        log_scale = positive and values.max() / values.min() > 20
    if log_scale and not positive:
        raise ValueError("log_scale=True needs every mean watch time > 0; use log_scale=False")
    lo = float(values.min()) if values.size else 0.0
    hi = float(values.max()) if values.size else 1.0
    lo = lo / 1.5 if log_scale else min(0.0, lo)
    hi = hi * 1.3 if hi > 0 else 1.0
    grid = np.geomspace(lo, hi, 200) if log_scale else np.linspace(lo, hi, 200)
    fig, (ax,) = _new_figure(1, width=6.0, height=5.4)
    ax.fill_between(
        grid, grid / (1 + tolerance), grid / (1 - tolerance), color="0.85",
        label=f"within ±{tolerance:.0%} (calibrated)",
    )  # fmt: skip
    ax.plot(
        grid, grid, color="0.3", linestyle="--", linewidth=1.0, label="perfect calibration (y = x)"
    )
    for i, (name, table) in enumerate(named.items()):
        ax.plot(
            table["mean_predicted"], table["mean_observed"], marker="o", color=f"C{i}",
            label=f"{name} (one point per bin)",
        )  # fmt: skip
    if log_scale:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_title(title)
    ax.set_xlabel(f"mean predicted expected watch time ({unit})")
    ax.set_ylabel(f"mean {reference} ({unit})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return _png(fig)


# --------------------------------------------------------------------------- comparisons
def bars_with_ci(
    frame: pd.DataFrame,
    *,
    title: str,
    ylabel: str,
    highlight: str | None = None,
    level: str = "95% CI",
) -> bytes:
    """Return a PNG bar chart of `mean` per `name` with error bars from `ci_low` to `ci_high`.

    Used for the slates' true expected watch time per user (random, most popular, logging
    policy, candidate generator, click-only ranker, full system, oracle) and for A/B arms.
    `highlight` names the bar to draw in a stronger colour (e.g. the full system); each bar is
    annotated with its mean; a note in the corner says what the error bars are (`level`).
    """
    _require_columns("frame", frame, ["name", "mean", "ci_low", "ci_high"])
    names = [str(n) for n in frame["name"]]
    if highlight is not None and highlight not in names:
        raise ValueError(f"highlight={highlight!r} is not one of the bars {names}")
    mean = frame["mean"].to_numpy(dtype=np.float64)
    low = frame["ci_low"].to_numpy(dtype=np.float64)
    high = frame["ci_high"].to_numpy(dtype=np.float64)
    bad = (low > mean + 1e-12 * np.abs(mean)) | (high < mean - 1e-12 * np.abs(mean))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"bar {names[i]!r}: the interval [{low[i]}, {high[i]}] does not contain the mean {mean[i]}"
        )
    err = np.vstack([np.nan_to_num(mean - low), np.nan_to_num(high - mean)])  # (2, n_bars)
    colors = ["C0" if n == highlight else ("0.6" if highlight is not None else "C0") for n in names]
    fig, (ax,) = _new_figure(1, width=max(6.0, 1.1 * len(names)), height=4.4)
    x = np.arange(len(names))
    ax.bar(x, mean, color=colors, yerr=err, capsize=4, ecolor="0.2")
    for xi, m, h in zip(x, mean, np.nan_to_num(high, nan=0.0), strict=True):
        if np.isfinite(m):
            ax.annotate(f"{m:.4g}", (xi, max(m, h)), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize="small")  # fmt: skip
    ax.set_xticks(
        x, names, rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center"
    )
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.text(
        0.01, 0.98, f"bars: mean; error bars: {level}", transform=ax.transAxes,
        ha="left", va="top", fontsize="small",
        bbox={"facecolor": "white", "edgecolor": "0.8", "boxstyle": "round"},
    )  # fmt: skip
    return _png(fig)
