"""Shared tools of the benchmark suite: timing with repeats, memory peaks, tables, results.

Where it sits: every benchmark module (`benchmarks/<name>.py`) measures its figure and the
reference it is compared with side by side, with these helpers, and returns the dict built by
`result`; `benchmarks/run.py` runs the modules (each in its own process by default, so that peak
RSS is the benchmark's own) and writes every result to one JSON file and a markdown summary.

Memory is measured three ways, each named in the results:
- `peak_rss_mb`: the process's lifetime peak resident set (getrusage ru_maxrss through
  `vidrec.pipelines.peak_rss`, NaN where the platform reports none, and the peaks seen before
  each `PhasePeak` reset, which lowers ru_maxrss on Linux);
- `PhasePeak`: the peak resident set during one phase (Linux: VmHWM after resetting it through
  /proc/self/clear_refs), minus the resident set when the phase began; it sees torch and numpy
  allocations alike;
- `tracemalloc_peak_mb`: the peak of Python-tracked allocations (numpy and pandas buffers are
  tracked, torch tensors are not) during one untimed call.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidrec.pipelines import peak_rss
from vidrec.pipelines.rundir import cpu_model

MIN_REPEATS = 5
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


# ----------------------------------------------------------------------------- timing


def time_repeats(fn: Callable[[], Any], repeats: int, *, warmup: int = 1) -> np.ndarray:
    """Return the wall seconds (repeats,) of `repeats` calls of fn, after `warmup` untimed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    out = np.empty(repeats, dtype=np.float64)
    for r in range(repeats):
        t0 = time.perf_counter()
        fn()
        out[r] = time.perf_counter() - t0
    return out


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, *, warmup: int = 1
) -> dict[str, np.ndarray]:
    """Return each fn's wall seconds (repeats,), the fns called in turn within every repeat.

    Interleaving puts ours and its reference under the same machine load (the machine is shared),
    so their ratio is fairer than two back-to-back series.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = {name: np.empty(repeats, dtype=np.float64) for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name][r] = time.perf_counter() - t0
    return out


def per_call_ms(fn: Callable[[int], Any], n_calls: int, *, warmup: int = 3) -> np.ndarray:
    """Return the latency in ms (n_calls,) of fn(i) for i in range(n_calls), after warm-up calls."""
    for i in range(min(warmup, n_calls)):
        fn(i)
    out = np.empty(n_calls, dtype=np.float64)
    for i in range(n_calls):
        t0 = time.perf_counter()
        fn(i)
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def median(values: Sequence[float] | np.ndarray) -> float:
    """Return the median of `values` as a float."""
    return float(np.median(np.asarray(values, dtype=np.float64)))


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    """Return the q-th percentile (0..100) of `values` as a float."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def ratio(figure: float, reference: float) -> float:
    """Return figure / reference (nan when the reference is 0 or not finite)."""
    if not math.isfinite(reference) or reference == 0:
        return float("nan")
    return float(figure / reference)


# ----------------------------------------------------------------------------- memory


_peak_before_resets_mb = 0.0  # PhasePeak resets the kernel's peak; the lifetime peak lives on here


def peak_rss_mb() -> float:
    """Return this process's lifetime peak resident set in MiB (getrusage; NaN where the
    platform reports none).

    On Linux ru_maxrss is the high-water mark that `PhasePeak` resets, so the peaks seen
    before each reset are kept and included.
    """
    peak = peak_rss.peak_rss_mb()
    return float("nan") if peak is None else max(_peak_before_resets_mb, peak)


def _status_kb(key: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float:
    """Return the current resident set in MiB (nan where /proc is unavailable)."""
    kb = _status_kb("VmRSS")
    return float("nan") if kb is None else kb / 1024.0


class PhasePeak:
    """Context manager: `.peak_mb` = peak resident set during the block minus that at its start.

    On Linux the kernel's high-water mark (VmHWM) is reset on entry (/proc/self/clear_refs, "5"),
    so the peak is the block's own; elsewhere, or when the reset is refused, it falls back to the
    lifetime peak (`reset` is then False and the figure is an upper bound).
    """

    def __init__(self) -> None:
        self.start_mb = float("nan")
        self.peak_mb = float("nan")
        self.reset = False

    def __enter__(self) -> PhasePeak:
        global _peak_before_resets_mb
        gc.collect()
        _peak_before_resets_mb = peak_rss_mb()  # about to be reset: keep the lifetime peak
        try:
            _CLEAR_REFS.write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.start_mb = current_rss_mb()
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _status_kb("VmHWM")
        top = hwm / 1024.0 if hwm is not None else peak_rss_mb()
        self.peak_mb = float(max(0.0, top - self.start_mb)) if math.isfinite(self.start_mb) else top


def tracemalloc_peak_mb(fn: Callable[[], Any]) -> float:
    """Return the peak MiB of Python-tracked allocations during one call of fn (untimed)."""
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return float(max(0, peak - base) / 2**20)


# ----------------------------------------------------------------------------- machine


def load_average() -> list[float]:
    """Return the 1, 5 and 15 minute load averages (empty where the OS does not report them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    """Return what the figures depend on: CPU, cores, torch threads, versions, load average."""
    import annoy  # noqa: PLC0415  (only for its version)

    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numpy": np.__version__,
        "annoy": getattr(annoy, "__version__", "unknown"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": load_average(),
    }


# ----------------------------------------------------------------------------- output


@dataclass(frozen=True)
class Column:
    """A table column: the row key, its header and its number format."""

    key: str
    header: str
    fmt: str = "{:.3g}"


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    if isinstance(value, int | float | np.integer | np.floating):
        return fmt.format(value)
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: Sequence[Column]) -> list[list[str]]:
    """Return the rows as lists of cell strings (header first)."""
    out = [[c.header for c in columns]]
    out += [[_cell(r.get(c.key), c.fmt) for c in columns] for r in rows]
    return out


def text_table(rows: list[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Return an aligned plain-text table of `rows`."""
    cells = format_table(rows, columns)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Return a GitHub markdown table of `rows` (pipes in cells escaped)."""
    cells = [[c.replace("|", "\\|") for c in r] for r in format_table(rows, columns)]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def result(
    name: str,
    title: str,
    rows: list[dict[str, Any]],
    columns: Sequence[Column],
    *,
    headline: dict[str, Any],
    repeats: int,
    notes: Sequence[str] = (),
    memory: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return a benchmark's result dict (JSON-ready) and print its table.

    `headline` holds the figure, its reference and their ratio (keys figure, reference, ratio,
    unit, plus target/met where the issue sets a target); `rows` every measured case; `memory`
    the phase peaks in MiB (peak_rss_mb, the process's lifetime peak, is added here).
    """
    mem = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    mem.update({k: round(float(v), 1) for k, v in (memory or {}).items()})
    out = {
        "name": name,
        "title": title,
        "headline": headline,
        "rows": rows,
        "columns": [{"key": c.key, "header": c.header, "fmt": c.fmt} for c in columns],
        "repeats": int(repeats),
        "memory_mb": mem,
        "params": params or {},
        "notes": list(notes),
        "load_average_end": load_average(),
    }
    print(f"\n== {name}: {title}")
    print(text_table(rows, columns))
    for n in notes:
        print(f"  note: {n}")
    print("  memory (MiB): " + ", ".join(f"{k} {v}" for k, v in mem.items()))
    return out


def columns_of(res: dict[str, Any]) -> list[Column]:
    """Return the `Column`s stored in a result dict."""
    return [Column(c["key"], c["header"], c["fmt"]) for c in res["columns"]]


def check_repeats(repeats: int, quick: bool) -> int:
    """Return `repeats`, refusing fewer than MIN_REPEATS outside quick (smoke) runs."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not quick and repeats < MIN_REPEATS:
        raise ValueError(
            f"repeats must be >= {MIN_REPEATS} for reported figures (medians), got {repeats}; "
            "use --quick for a smoke run"
        )
    return int(repeats)
