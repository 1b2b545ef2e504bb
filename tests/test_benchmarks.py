"""Smoke tests of the benchmark suite (benchmarks/): the runner at tiny sizes, and its helpers.

The figures of a quick run mean nothing; these tests check that every benchmark runs, returns
its figure/reference/ratio and memory, and that the runner writes the JSON and markdown files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import annoy_curve, run
from benchmarks.common import (
    Column,
    PhasePeak,
    check_repeats,
    markdown_table,
    peak_rss_mb,
    time_interleaved,
)
from benchmarks.synthetic import clustered_vectors, load_vectors, synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quick_suite_in_process(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "results.json"
    code = run.main(["--quick", "--in-process", "--repeats", "1", "--out", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["quick"] is True
    assert set(results["benchmarks"]) == set(run.BENCHMARKS)
    for name, res in results["benchmarks"].items():
        assert "error" not in res, name
        h = res["headline"]
        assert h["figure"] > 0 and h["reference"] > 0, name
        assert h["ratio"] == pytest.approx(h["figure"] / h["reference"], rel=1e-6), name
        assert res["rows"] and res["memory_mb"]["peak_rss_mb"] > 0, name
        assert res["wall_s"] >= 0 and res["torch_threads"] == 1, name
    # the exact index's answer is checked against the per-block topk baseline on every run
    checked = [r["matches_baseline"] for r in results["benchmarks"]["exact_topk"]["rows"]]
    assert all(c in (True, None) for c in checked) and checked.count(True) == 2
    md = out.with_suffix(".md").read_text()
    assert "Quick (smoke) run" in md
    for name in run.BENCHMARKS:
        assert f"## {name}:" in md


def test_cli_runs_a_benchmark_in_a_child_process(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    # a result from an earlier run is kept when another benchmark is run
    out.write_text(
        json.dumps({"benchmarks": {"annoy_curve": {"name": "annoy_curve", "error": "x"}}})
    )
    proc = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--only", "exact_topk", "--quick", "--repeats", "1",
         "--threads", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "== exact_topk" in proc.stdout
    res = json.loads(out.read_text())
    assert set(res["benchmarks"]) == {"exact_topk", "annoy_curve"}
    assert res["benchmarks"]["exact_topk"]["torch_threads"] == 1
    assert res["benchmarks"]["exact_topk"]["memory_mb"]["peak_rss_mb"] > 0
    assert "FAILED: x" in out.with_suffix(".md").read_text()


def test_annoy_curve_reads_learned_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "item_vectors.npz"
    np.savez(path, ids=np.arange(100, 1600, dtype=np.int64), vectors=rng.normal(size=(1500, 8)))
    res = annoy_curve.run(quick=True, repeats=1, vectors=path)
    cases = {r["case"] for r in res["rows"]}
    assert cases == {"learned 1k x 8"}
    # one row per n_trees x search_k of the quick grid: 2 x 2
    assert len(res["rows"]) == 4
    assert all(0.0 <= r["recall"] <= 1.0 for r in res["rows"])
    assert res["params"]["vectors"] == str(path)


def test_recall_at_k_hand_computed() -> None:
    got = np.array([[1, 2, 3], [7, -1, -1]])
    want = np.array([[1, 3, 4], [7, 8, 9]])
    # row 0: {1, 3} of 3 -> 2/3; row 1: {7} of 3 -> 1/3 (padding never matches); mean 1/2
    assert annoy_curve.recall_at_k(got, want) == pytest.approx(0.5)


def test_load_vectors_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_vectors(tmp_path / "missing.npz", 4, seed=0)
    bad = tmp_path / "bad.npz"
    np.savez(bad, embeddings=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="needs 'ids'"):
        load_vectors(bad, 4, seed=0)
    shape = tmp_path / "shape.npz"
    np.savez(shape, ids=np.arange(4), vectors=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"must be \(N,\) and \(N, E\)"):
        load_vectors(shape, 4, seed=0)
    ok = tmp_path / "ok.npz"
    np.savez(ok, ids=np.arange(3), vectors=np.ones((3, 2)))
    p = load_vectors(ok, 5, seed=0)
    assert p.queries.shape == (5, 2) and p.queries.dtype == np.float32


def test_clustered_vectors_seeded_with_norm_spread() -> None:
    a = clustered_vectors(5000, 7, 16, seed=3)
    b = clustered_vectors(5000, 7, 16, seed=3)
    assert a.vectors.shape == (5000, 16) and a.vectors.dtype == np.float32
    assert a.queries.shape == (7, 16) and a.ids.tolist() == list(range(5000))
    np.testing.assert_array_equal(a.vectors, b.vectors)
    norms = np.linalg.norm(a.vectors, axis=1)
    # scale runs from 0.5 to 0.5 + 0.15 ln 5000 = 1.78: the head is ~3.5x longer than the tail
    assert np.percentile(norms, 99) / np.percentile(norms, 1) > 2.0
    with pytest.raises(ValueError, match="n_items >= 1"):
        clustered_vectors(0, 1, 4, seed=0)


def test_synthetic_dataset_is_a_valid_contract_dataset() -> None:
    ds = synthetic_dataset(
        n_users=20, n_items=40, n_watches=300, n_impressions=200, n_searches=30, seed=1
    )
    assert ds.counts() == {
        "users": 20, "items": 40, "watches": 300, "searches": 30, "impressions": 200
    }  # fmt: skip
    assert ds.impressions is not None
    clicked = ds.impressions["clicked"].to_numpy()
    wt = ds.impressions["watch_time"].to_numpy()
    assert ((wt > 0) == (clicked == 1)).all()  # watch time only on clicks


def test_runner_and_repeat_checks() -> None:
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "nope"])
    with pytest.raises(SystemExit):
        run.parse_args(["--repeats", "3"])  # reported figures need >= 5 repeats
    args = run.parse_args(["--only", "exact_topk,annoy_curve", "--only", "exact_topk", "--quick"])
    assert args.names == ["exact_topk", "annoy_curve"] and args.repeats == 2
    with pytest.raises(ValueError, match="repeats must be >= 5"):
        check_repeats(4, quick=False)
    assert check_repeats(1, quick=True) == 1
    with pytest.raises(SystemExit):
        run.parse_args(["--wait-load", "0"])
    # a limit no load reaches returns at once; an unreachable one gives up after wait_max
    assert run.wait_for_load(1e9, 5.0) < 1.0
    assert run.wait_for_load(1e-9, 0.0) < 1.0


def test_helpers() -> None:
    calls: list[str] = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # 1 warm-up round, then 2 interleaved repeats
    assert times["a"].shape == (2,)
    md = markdown_table([{"x": "a|b", "y": 1.5}], [Column("x", "X", "{}"), Column("y", "Y")])
    assert md.splitlines() == ["| X | Y |", "|---|---|", "| a\\|b | 1.5 |"]
    with PhasePeak() as peak:
        block = np.ones(40 * 2**20 // 8)  # 40 MiB, touched
        block.sum()
    del block
    if peak.reset:
        assert peak.peak_mb >= 30
    # the reset lowers the kernel's ru_maxrss; the lifetime peak must survive it
    lifetime = peak_rss_mb()
    with PhasePeak():
        pass
    assert peak_rss_mb() >= lifetime
