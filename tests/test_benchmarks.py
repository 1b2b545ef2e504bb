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

from benchmarks import annoy_curve, annoy_learned, rechub_compare, run, serving
from benchmarks.common import (
    Column,
    check_repeats,
    markdown_table,
    time_interleaved,
)
from benchmarks.learned_world import (
    LearnedWorld,
    WorldSpec,
    embed_items,
    grow_catalog,
    train_world,
    user_vectors,
)
from benchmarks.synthetic import clustered_vectors, load_vectors, synthetic_dataset
from vidrec.pipelines import scoring

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quick_suite_in_process(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "results.json"
    # the learned-embedding benchmarks have their own smoke tests below
    original = ("exact_topk", "annoy_curve", "ranker_scoring", "cg_training")
    code = run.main(
        [
            "--quick",
            "--in-process",
            "--repeats",
            "1",
            "--out",
            str(out),
            "--only",
            ",".join(original),
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert results["quick"] is True
    assert set(results["benchmarks"]) == set(original)
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
    for name in original:
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
    # torch-rechub lives outside our environment: run only when named
    assert "rechub_compare" not in run.parse_args([]).names
    assert "serving" in run.parse_args([]).names
    assert run.parse_args(["--only", "rechub_compare"]).names == ["rechub_compare"]
    assert run.parse_args(["--serving-annoy", "50,100000"]).serving_annoy == (50, 100_000)
    assert run.parse_args(["--serving-hnsw", "32,300,1600"]).serving_hnsw == (32, 300, 1600)
    assert run.parse_args([]).serving_hnsw is None
    grid = run.parse_args(["--annoy-trees", "10,50", "--annoy-search-k=-1,10000"])
    assert grid.annoy_trees == (10, 50) and grid.annoy_search_k == (-1, 10_000)
    for bad in (["--serving-annoy", "50"], ["--serving-annoy", "0,10"],
                ["--serving-annoy", "5,0"], ["--serving-users", "0"], ["--annoy-trees", "0"],
                ["--annoy-search-k=0,5"], ["--annoy-items=x"], ["--annoy-items="],
                ["--serving-hnsw", "32,300"], ["--serving-hnsw", "1,300,1600"]):  # fmt: skip
        with pytest.raises(SystemExit):
            run.parse_args(bad)
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


_PHASE_PEAK_PROBE = """
import json
import numpy as np
from benchmarks.common import PhasePeak, peak_rss_mb

with PhasePeak():
    block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
    block.sum()
del block
lifetime = peak_rss_mb()
with PhasePeak() as peak:
    block = np.ones(40 * 2**20 // 8)  # 40 MiB, touched
    block.sum()
del block
print(json.dumps({"lifetime": lifetime, "after": peak_rss_mb(), "peak": peak.peak_mb,
                  "reset": peak.reset}))
"""


def test_phase_peak_is_the_phases_own_and_the_lifetime_peak_survives_it() -> None:
    # in a fresh process: in this one, memory that earlier tests' allocators (pyarrow's pool,
    # torch) give back while the phase runs would lower the resident set under the phase
    done = subprocess.run(
        [sys.executable, "-c", _PHASE_PEAK_PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = json.loads(done.stdout.strip().splitlines()[-1])
    # the reset lowers the kernel's ru_maxrss; the lifetime peak must survive it
    assert got["after"] >= got["lifetime"] >= 200
    assert got["peak"] >= 30  # with or without a reset (then an upper bound)
    if not got["reset"]:
        pytest.skip(
            "this platform cannot reset the peak resident set (/proc/self/clear_refs): "
            "PhasePeak reports the lifetime peak, so the 200 MiB phase before is not told apart"
        )
    assert got["peak"] < 100  # the 200 MiB of the phase before do not count


# ----------------------------------------------------------------------------- learned world


@pytest.fixture(scope="module")
def tiny_world() -> LearnedWorld:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_world(WorldSpec(preset="tiny", epochs=1, quick=True), seed=0)
    finally:
        torch.set_num_threads(before)


def test_grow_catalog_adds_unseen_items_of_the_same_world(tiny_world: LearnedWorld) -> None:
    lw = tiny_world
    base = lw.dataset.items
    n_base = int((base["upload_time"].to_numpy() <= lw.at).sum())
    items, servable = grow_catalog(lw, n_base + 700)
    assert len(items) == len(base) + 700 and servable.sum() == n_base + 700
    assert items["item_id"].is_unique
    new = items.iloc[len(base) :]
    assert (new["item_id"] >= lw.n_world_items).all()  # ids the model never trained
    assert (new["upload_time"] <= lw.at).all()  # servable at the serving time
    # the same channels and topics as the world: the generator drew the same layout
    assert set(new["channel_id"]) <= set(base["channel_id"])
    assert set(np.concatenate(new["topics"].to_numpy())) <= set(
        np.concatenate(base["topics"].to_numpy())
    )
    ids, vectors = embed_items(lw.model, items[servable], lw.at, lw.dataset.watches)
    assert vectors.shape == (n_base + 700, lw.model.config.embedding_dim)
    assert np.isfinite(vectors).all() and np.array_equal(ids, items["item_id"][servable])
    # fewer than the world has: the first n servable items, nothing drawn
    small, small_servable = grow_catalog(lw, 10)
    assert len(small) == len(base) and small_servable.sum() == 10
    with pytest.raises(ValueError, match="n_items must be >= 1"):
        grow_catalog(lw, 0)


def test_user_vectors_of_active_users(tiny_world: LearnedWorld) -> None:
    users, vecs = user_vectors(tiny_world, 7, seed=3)
    assert users.shape == (7,) and len(set(users.tolist())) == 7
    assert vecs.shape == (7, tiny_world.model.config.embedding_dim)
    w = tiny_world.dataset.watches
    watched_before = set(w["user_id"][w["timestamp"] < tiny_world.at].tolist())
    assert set(users.tolist()) <= watched_before
    again, _ = user_vectors(tiny_world, 7, seed=3)
    np.testing.assert_array_equal(users, again)  # seeded


def test_train_world_refuses_bad_spec() -> None:
    with pytest.raises(ValueError, match="epochs and max_examples_per_user must be >= 1"):
        train_world(WorldSpec(preset="tiny", epochs=0, quick=True), seed=0)


# ----------------------------------------------------------------------------- annoy_learned


def test_recall_with_ties_hand_computed() -> None:
    ids = np.array([10, 20, 30, 40])
    vectors = np.array([[1.0, 0.0], [0.5, 0.0], [0.5, 0.0], [0.0, 1.0]], dtype=np.float32)
    queries = np.array([[1.0, 0.0]] * 3, dtype=np.float32)
    truth_scores = np.array([[1.0, 0.5]] * 3, dtype=np.float32)  # exact top-2: 10, then 20 or 30
    got = np.array([[10, 30], [10, 40], [-1, -1]])
    # query 0: scores 1, 0.5 both reach 0.5 -> 2/2 (30 ties with 20); query 1: 1, 0 -> 1/2;
    # query 2: padding never hits -> 0; mean (1 + 0.5 + 0) / 3 = 0.5
    assert annoy_learned.recall_with_ties(got, truth_scores, ids, vectors, queries) == (
        pytest.approx(0.5)
    )
    # by id, 30 is not the exact answer 20: (1/2 + 1/2 + 0) / 3
    want = np.array([[10, 20]] * 3)
    assert annoy_learned._recall_by_id(got, want) == pytest.approx(1 / 3)


def test_annoy_learned_grid_errors() -> None:
    with pytest.raises(ValueError, match="unknown grid key 'forests'"):
        annoy_learned.run(quick=True, repeats=1, grid={"forests": (1,)})
    with pytest.raises(ValueError, match=r"grid\['trees'\] is empty"):
        annoy_learned.run(quick=True, repeats=1, grid={"trees": ()})


def test_annoy_learned_quick() -> None:
    res = annoy_learned.run(quick=True, repeats=1)
    cases = {r["case"] for r in res["rows"]}
    assert cases == {
        "learned mips 1k x 64", "learned annoy-dot 1k x 64", "learned normalised 1k x 64",
        "learned mips 3k x 64", "learned annoy-dot 3k x 64", "learned normalised 3k x 64",
    }  # fmt: skip
    # mips: 2 forests x 2 search_k; annoy-dot and normalised: 1 forest x 2 search_k; per size
    assert len(res["rows"]) == 2 * (4 + 2 + 2)
    for r in res["rows"]:
        assert 0.0 <= r["recall"] <= r["recall_ties"] + 1e-9 <= 1.0 + 1e-9
        assert r["speedup_p50"] == pytest.approx(r["exact_p50_ms"] / r["annoy_p50_ms"])
    h = res["headline"]
    assert "learned mips 3k" in h["what"] and h["figure"] > 0 and h["reference"] > 0
    eb = res["params"]["exact_batch"]
    assert eb["items"] == 3_000 and eb["queries"] == 64 and eb["matches_baseline"] is True


# ----------------------------------------------------------------------------- serving


def test_serving_quick_times_the_real_path() -> None:
    saved = scoring.add_cg_features
    res = serving.run(quick=True, repeats=1)
    assert scoring.add_cg_features is saved  # the wrappers are removed again
    totals = [r for r in res["rows"] if r["what"].startswith("recommend")]
    # annoy (1 thread a request, and the process's count), with catalog CG features, exact
    assert len(totals) == 4
    per_user = res["params"]["per_user_ms"]
    assert set(per_user) == {
        "annoy", "annoy, the process's 1 thread(s)", "annoy, catalog cg features", "exact"
    }  # fmt: skip
    for label in per_user:
        t = per_user[label]
        assert len(t["total"]) == 5
        # the components add up to recommend()'s wall time (sort is the remainder, >= 0)
        parts = np.sum([t[c] for c in serving.COMPONENTS], axis=0)
        np.testing.assert_allclose(parts, t["total"], atol=0.005)  # params round to 1 us
        assert min(t["sort"]) >= 0
        # the catalog pass runs only in catalog mode; otherwise the retrieval carries the feature
        assert (min(t["cg_features"]) > 0) == (label == "annoy, catalog cg features")
    h = res["headline"]
    assert h["reference"] == serving.BUDGET_MS and h["figure"] > 0
    with pytest.raises(ValueError, match="serving_users must be >= 1"):
        serving.run(quick=True, repeats=1, serving_users=0)


# ----------------------------------------------------------------------------- rechub_compare


def test_rechub_python_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="create the separate virtual environment"):
        rechub_compare.rechub_python(tmp_path / "no-python")
    # our own interpreter has no torch-rechub (it must never be our dependency)
    with pytest.raises(RuntimeError, match="cannot import torch_rechub"):
        rechub_compare.rechub_python(sys.executable)


def test_export_examples_round_trip(tmp_path: Path, tiny_world: LearnedWorld) -> None:
    fz, ds = tiny_world.model.featurizer, tiny_world.dataset
    ex = fz.examples(ds, "train", max_examples_per_user=5)
    valid = fz.examples(ds, "valid").take(np.arange(3))
    path = tmp_path / "ex.npz"
    rechub_compare.export_examples(path, ex, valid, embedding_dim=64, user_layers=(32, 64))
    with np.load(path, allow_pickle=False) as z:
        assert z["label"].shape == (len(ex),) and (z["label"] >= 1).all()
        np.testing.assert_array_equal(z["history"], ex.features.history)
        k = ex.features.continuous.shape[1]
        assert z["dense"].shape == (len(ex), k + 3)
        np.testing.assert_array_equal(z["dense"][:, k:], ex.features.example_age)
        assert z["valid_label"].shape == (3,) and int(z["embedding_dim"]) == 64
        assert z["user_layers"].tolist() == [32, 64]
        assert int(z["n_item_codes"]) == fz.schema()["n_item_codes"]


def _rechub_available() -> bool:
    try:
        rechub_compare.rechub_python(None)
    except (FileNotFoundError, RuntimeError):
        return False
    return True


@pytest.mark.skipif(not _rechub_available(), reason="no virtual environment with torch-rechub")
def test_rechub_compare_quick() -> None:
    res = rechub_compare.run(quick=True, repeats=1)
    systems = [r["system"] for r in res["rows"]]
    assert systems == ["torch-rechub YoutubeDNN", "ours, closest", "ours, default"]
    for r in res["rows"]:
        assert r["examples_per_s"] > 0 and 0.0 <= r["recall50"] <= 1.0
    h = res["headline"]
    assert h["ratio"] == pytest.approx(h["figure"] / h["reference"])
    assert res["params"]["rechub_version"]


# ----------------------------------------------------------------------------- scaling


def _manifest(events: int, seconds: dict[str, float], peaks: dict[str, float]) -> dict:
    stages = {
        n: {"status": "done", "seconds": s, "peak_rss_mb": peaks[n]} for n, s in seconds.items()
    }
    stages["data"]["counts"] = {"impressions": events - 10, "watches": 7, "searches": 3, "users": 5}
    return {"stages": stages}


def test_scaling_fits_the_exponents_of_time_and_memory_against_events() -> None:
    from benchmarks import scaling

    runs = []
    for scale, events in ((0.25, 1_000), (0.5, 2_000), (1.0, 4_000)):
        seconds = {"data": 0.01 * events, "candidate_gen": 1e-4 * events**1.5, "report": 2.0}
        peaks = {"data": 100.0, "candidate_gen": 0.5 * events, "report": 0.5 * events}
        runs.append(scaling.run_figures(scale, _manifest(events, seconds, peaks), 1.0))
    assert [r["events"] for r in runs] == [1_000, 2_000, 4_000]  # users are not events
    assert runs[-1]["peak_mb"] == 2_000.0
    by = {row["what"]: row["exponent"] for row in scaling.fits(runs)}
    assert by["stage data"] == pytest.approx(1.0)
    assert by["stage candidate_gen"] == pytest.approx(1.5)
    assert by["stage report"] == pytest.approx(0.0, abs=1e-9)
    assert by["peak resident memory"] == pytest.approx(1.0)
    assert 1.0 < by["total time (the stages' seconds)"] < 1.5
    assert np.isnan(scaling.exponent([5, 5], [1.0, 2.0]))  # one size: no slope


def test_scaling_reads_a_finished_run_instead_of_running_it(tmp_path: Path) -> None:
    from benchmarks import scaling

    run = scaling.scale_dir(tmp_path, 0.5)
    assert run.name == "scale_0.5"
    run.mkdir()
    m = _manifest(100, {"data": 1.0, "report": 1.0}, {"data": 10.0, "report": 12.0})
    (run / "manifest.json").write_text(json.dumps(m))
    manifest, wall = scaling.run_scale("tiny", 0.5, 0, run, [])
    assert manifest == m and wall is None  # nothing was run


@pytest.mark.slow
def test_scaling_runs_the_pipeline_at_two_scales(tmp_path: Path) -> None:
    from benchmarks import scaling

    out = tmp_path / "scaling"
    assert scaling.main(["--preset", "tiny", "--scales", "0.5,1", "--out", str(out)]) == 0
    got = json.loads((out / "scaling.json").read_text())
    small, full = got["runs"]
    assert small["events"] < full["events"] and full["peak_mb"] > 0
    assert {"data", "candidate_gen", "report"} <= set(full["stage_seconds"])
    assert (out / "scaling.md").read_text().startswith("# Scaling of the pipeline")


def test_step_flops_grow_with_the_negatives_as_the_logits_and_item_tower_do(
    tiny_world: LearnedWorld,
) -> None:
    """One more sampled negative adds its logit column (B x E products, forward and two
    backward) and its pass through the id-only item tower's E x E layer (likewise)."""
    from benchmarks.cg_training import cg_config

    fz, ds = tiny_world.model.featurizer, tiny_world.dataset
    ex = fz.examples(ds, "train", max_examples_per_user=5)
    items = fz.item_features(ds)
    b = 32
    flops = {}
    for k in (16, 48):
        config = cg_config(
            True, 0, num_negatives=k, batch_size=b, item_encoder="id_only", ssl="none"
        )
        flops[k] = rechub_compare.step_flops(config, ex, items, b)
    e = config.embedding_dim
    assert flops[16] > 0
    assert flops[48] - flops[16] == pytest.approx(3 * 2 * (48 - 16) * (b * e + e * e), rel=0.05)
    assert rechub_compare.gemm_flops_per_s(64, repeats=2) > 0
