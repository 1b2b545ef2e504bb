"""The candidate generator's catalog rank of logged ranker rows: counted per page vs per block.

Figure: the `cg_rank` feature of the ranker's training rows (`pipelines.scoring.
add_cg_features`): for each logged page (a user at a time, ~10 impressions) the number of
items servable then that the candidate generator scores above each impression. Over P pages
and N items it costs a P x N product whatever the method; what differs is the counting after it.
Timed side by side, interleaved, on the same score blocks (the add_cg_features blocking):
- the GEMM floor: the blocked products alone;
- per page: the products, then per page one pass keeping the items above the page's lowest
  row and a count per row (`scoring._count_higher`, a Python loop over the pages);
- per block: the products, then every page of the block counted at once
  (`scoring._rank_pages`: the page's rows sorted, one `searchsorted` of every item, a suffix
  sum), what add_cg_features runs for pages of <= 32 rows.
Both countings are checked to give the same ranks. Vectors: Gaussian item (N, E) and user
(P, E) vectors; each page's servable prefix is a random share of the catalog (uploads in
time), its rows random catalog items.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    Column,
    PhasePeak,
    check_repeats,
    median,
    ratio,
    result,
    time_interleaved,
)
from vidrec.pipelines import scoring

NAME = "catalog_rank"

COLUMNS = (
    Column("items", "items", "{:,}"),
    Column("pages", "pages", "{:,}"),
    Column("rows_per_page", "rows / page", "{}"),
    Column("gemm_s", "GEMM floor s", "{:.3g}"),
    Column("per_page_s", "per page s", "{:.3g}"),
    Column("per_block_s", "per block s", "{:.3g}"),
    Column("speedup", "per page / per block", "{:.2f}"),
    Column("per_block_vs_gemm", "per block / GEMM", "{:.2f}"),
    Column("same_ranks", "same ranks", "{}"),
)


def sizes(quick: bool) -> dict[str, Any]:
    """Return the benchmark's sizes (quick: a smoke run of a second)."""
    if quick:
        return {"items": 20_000, "pages": 200, "rows": 10, "dim": 16}
    # the `large` preset's ranker stage: ~815k servable items, pages of ~10 impressions
    return {"items": 815_000, "pages": 1_000, "rows": 10, "dim": 64}


def _problem(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n, p, m, e = cfg["items"], cfg["pages"], cfg["rows"], cfg["dim"]
    return {
        "items": torch.from_numpy(rng.standard_normal((n, e), dtype=np.float32)),
        "users": torch.from_numpy(rng.standard_normal((p, e), dtype=np.float32)),
        "n_servable": rng.integers(n // 2, n + 1, size=p),
        "row_slot": rng.integers(0, n, size=p * m),
        "rows_of": [np.arange(i * m, (i + 1) * m) for i in range(p)],
    }


def _blocks(prob: dict[str, Any]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """The (pages, score block) pairs of add_cg_features' blocking, one block at a time."""
    n = prob["items"].shape[0]
    chunk = max(1, scoring._SCORE_ELEMENTS // n)
    p = prob["users"].shape[0]
    for lo in range(0, p, chunk):
        yield np.arange(lo, min(lo + chunk, p)), prob["users"][lo : lo + chunk] @ prob["items"].T


def gemm_floor(prob: dict[str, Any]) -> None:
    """The blocked products alone, each discarded."""
    for _ in _blocks(prob):
        pass


def per_page(prob: dict[str, Any]) -> np.ndarray:
    """Ranks by the per-page count (the loop add_cg_features ran for every page before)."""
    rank = np.empty(len(prob["row_slot"]))
    for pc, block in _blocks(prob):
        scores = block.numpy()
        for c, page in enumerate(pc):
            rows = prob["rows_of"][page]
            s_rows = scores[c, prob["row_slot"][rows]]
            servable = scores[c, : prob["n_servable"][page]]
            rank[rows] = 1 + scoring._count_higher(servable, s_rows)
    return rank


def per_block(prob: dict[str, Any]) -> np.ndarray:
    """Ranks by `scoring._rank_pages`, every page of a block at once."""
    n_rows = len(prob["row_slot"])
    rank, score = np.empty(n_rows), np.empty(n_rows)
    for pc, block in _blocks(prob):
        rows_of = [prob["rows_of"][p] for p in pc]
        few = np.ones(len(pc), dtype=bool)
        scoring._rank_pages(
            block, rows_of, few, prob["n_servable"][pc], prob["row_slot"], score, rank
        )
    return rank


def run(*, quick: bool = False, repeats: int = 5, seed: int = 0, **_: Any) -> dict[str, Any]:
    """Return the catalog-rank benchmark's result (table printed)."""
    repeats = check_repeats(repeats, quick)
    cfg = sizes(quick)
    prob = _problem(cfg, seed)
    got: dict[str, np.ndarray] = {}
    times = time_interleaved(
        {
            "gemm": lambda: gemm_floor(prob),
            "per_page": lambda: got.__setitem__("page", per_page(prob)),
            "per_block": lambda: got.__setitem__("block", per_block(prob)),
        },
        repeats,
    )
    with PhasePeak() as peak:
        per_block(prob)
    same = bool(np.array_equal(got["page"], got["block"]))
    t_gemm, t_page, t_block = (median(times[k]) for k in ("gemm", "per_page", "per_block"))
    row = {
        "items": cfg["items"],
        "pages": cfg["pages"],
        "rows_per_page": cfg["rows"],
        "dim": cfg["dim"],
        "gemm_s": t_gemm,
        "per_page_s": t_page,
        "per_block_s": t_block,
        "speedup": ratio(t_page, t_block),
        "per_block_vs_gemm": ratio(t_block, t_gemm),
        "same_ranks": same,
        "times_s": {k: [round(float(x), 4) for x in v] for k, v in times.items()},
    }
    headline = {
        "what": f"catalog rank of {cfg['pages']:,} logged pages x {cfg['rows']} rows over "
        f"{cfg['items']:,} items: per-page count / per-block count",
        "figure": row["speedup"],
        "reference": 1.0,
        "ratio": row["speedup"],
        "unit": "x",
        "per_block_vs_gemm": row["per_block_vs_gemm"],
    }
    notes = [
        f"Gaussian vectors, E = {cfg['dim']}; servable prefix per page uniform in [N/2, N]; "
        "rows: random catalog items; blocks of add_cg_features' size",
        "times: median of the interleaved repeats; the GEMM floor computes the same products",
    ]
    return result(
        NAME,
        "catalog rank of logged ranker rows: per page vs per block",
        [row],
        COLUMNS,
        headline=headline,
        repeats=repeats,
        notes=notes,
        memory={"per_block_peak_mb": peak.peak_mb},
        params={"seed": seed, **cfg},
    )
