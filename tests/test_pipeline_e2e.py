"""End to end on the tiny preset through the same function the CLI calls; resume; CLI errors."""

import json
import math

import numpy as np
import pytest

from vidrec.evaluation.report import flatten
from vidrec.pipelines.cli import main
from vidrec.pipelines.config import resolve_config
from vidrec.pipelines.run import STAGES, run_pipeline


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = resolve_config("tiny", seed=0)
    report = run_pipeline(cfg, out, progress=False)
    return out, cfg, report


def test_report_schema_and_ranges(tiny_run):
    out, _, report = tiny_run
    for name in ("report.json", "report.md", "report.html", "manifest.json", "config.json"):
        assert (out / name).exists(), name
    meta = report["_meta"]
    assert meta["dataset"].startswith("synthetic") and meta["seed"] == 0
    from vidrec.pipelines.rundir import git_commit

    manifest = json.loads((out / "manifest.json").read_text())
    for name in STAGES:  # each stage records the code that built it
        assert manifest["stages"][name]["git_commit"] == git_commit(), name
    flat = flatten({k: v for k, v in report.items() if k != "_meta"})
    for key in (
        "retrieval.recall@50",
        "retrieval.ann.recall@100",
        "ranking.weighted_per_user_loss",
        "ranking.auc",
        "watch_time.errors.mae",
        "end_to_end.true_expected_watch_time.mean",
        "baselines.most_popular.retrieval.recall@50",
        "baselines.deep_click.ranking.weighted_per_user_loss",
        "baselines.oracle.end_to_end.true_expected_watch_time.mean",
    ):
        assert key in flat, key
    fractions = [
        k
        for k in flat
        if k.split(".")[-1].split("@")[0]
        in ("recall", "hitrate", "ndcg", "auc", "gauc", "weighted_per_user_loss", "coverage")
    ]
    assert fractions
    for k in fractions:
        v = flat[k]
        assert v is None or (isinstance(v, float | int) and (math.isnan(v) or 0.0 <= v <= 1.0)), (
            k,
            v,
        )
    # the oracle is the ceiling of every slate's true expected watch time
    oracle = flat["baselines.oracle.end_to_end.true_expected_watch_time.mean"]
    for k, v in flat.items():
        if k.endswith("end_to_end.true_expected_watch_time.mean"):
            assert v <= oracle * (1 + 1e-9), k
    # every stage recorded its time, memory and artifact hashes
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["stages"]) == set(STAGES)
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    assert manifest["packages"]["torch"].startswith("2.")


def _stable(report):
    """Report values without timings (wall-clock dependent); NaN made comparable."""
    timing = ("seconds", "_ms", "speedup", "per_second", "git_commit", "load_avg")
    return {
        k: ("nan" if isinstance(v, float) and math.isnan(v) else v)
        for k, v in flatten(report).items()
        if not any(t in k for t in timing)
    }


def test_rerun_skips_and_interrupted_run_resumes_to_same_result(tiny_run, tmp_path):
    out, cfg, report = tiny_run
    # a finished run is skipped entirely and reports the same numbers
    again = run_pipeline(cfg, out, progress=False)
    assert _stable(again) == _stable(report)
    # an interrupted run (stopped after the candidate generator) resumes to the same report
    part = tmp_path / "part"
    run_pipeline(cfg, part, progress=False, stages=STAGES[:2])
    manifest = json.loads((part / "manifest.json").read_text())
    assert set(manifest["stages"]) == set(STAGES[:2])
    resumed = run_pipeline(cfg, part, progress=False)
    assert _stable(resumed) == _stable(report)


def test_cli_refuses_bad_override(tmp_path, capsys):
    rc = main(
        ["run", "--preset", "tiny", "--out", str(tmp_path / "x"), "--set", "ranking.hiden=[1]"]
    )
    assert rc != 0
    assert "unknown config key 'ranking.hiden'" in capsys.readouterr().err


def test_cli_recommend_and_predict(tiny_run, capsys):
    out, _, _ = tiny_run
    assert main(["recommend", "--run", str(out), "--user", "0", "-k", "5", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert len(rec["slate"]) == 5
    assert all(r["expected_watch_time"] > 0 for r in rec["slate"])
    assert main(["recommend", "--run", str(out), "--user", "987654321", "-k", "3", "--json"]) == 0
    cold = json.loads(capsys.readouterr().out)
    assert "cold start" in cold["note"] and len(cold["slate"]) == 3
    item = rec["slate"][0]["item_id"]
    assert (
        main(
            ["predict", "--run", str(out), "--user", "0", "--items", f"{item},999999999", "--json"]
        )
        == 0
    )
    pred = json.loads(capsys.readouterr().out)
    assert pred["unknown_items"] == [999999999]
    assert pred["items"][0]["expected_watch_time"] == pytest.approx(
        rec["slate"][0]["expected_watch_time"], rel=1e-5
    )


def test_ab_closed_loop_is_seeded_paired_and_refuses_a_tampered_run(tiny_run, tmp_path):
    import shutil

    from vidrec.features.integrity import ArtifactError
    from vidrec.pipelines.ab import run_ab_command
    from vidrec.pipelines.config import ConfigError

    out, _, _ = tiny_run
    kw = dict(days=1, k=5, max_visits=60, retrain=False, seed=None)
    a = run_ab_command(out, ["system", "most_popular", "logging_policy"], **kw)
    m = a["metrics"]
    assert set(m["arms"]) == {"system", "most_popular", "logging_policy"}
    for arm in m["arms"].values():
        lo, hi = arm["watch_time_per_user"]["ci"]
        assert 0.0 <= lo <= arm["watch_time_per_user"]["mean"] <= hi
        assert 0.0 <= arm["ctr"]["mean"] <= 1.0
        assert arm["impressions"] > 0
    # every arm but the control is compared with it, pairing the same visitors
    assert set(m["vs_control"]) == {"most_popular", "logging_policy"}
    assert all(v["control"] == "system" for v in m["vs_control"].values())
    assert json.loads((out / "ab" / "ab.json").read_text("utf-8"))["config"]["days"] == 1
    # same seed -> the same visitors, draws and numbers
    b = run_ab_command(out, ["system", "most_popular", "logging_policy"], **kw)
    assert b["metrics"] == a["metrics"]
    with pytest.raises(ConfigError, match="at least two arms"):
        run_ab_command(out, ["system"], **kw)
    with pytest.raises(ConfigError, match="--days must be >= 1"):
        run_ab_command(out, ["system", "most_popular"], **{**kw, "days": 0})
    # a copy of the run whose ranker file was edited is refused before anything is simulated
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    victim = next(p for p in sorted((bad / "ranker").rglob("*")) if p.is_file())
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="ranker"):
        run_ab_command(bad, ["system", "most_popular"], **kw)


def test_cg_rank_feature_equals_brute_force_on_both_paths(tiny_run):
    import numpy as np
    import pandas as pd

    from vidrec.candidate_gen.train import TrainedCandidateGenerator
    from vidrec.features.io import read_dataset
    from vidrec.pipelines import scoring

    out, _, _ = tiny_run
    cg = TrainedCandidateGenerator.load(out / "candidate_gen" / "model")
    ds, _ = read_dataset(out / "data" / "tables")
    items = ds.items["item_id"].to_numpy()
    upload = ds.items["upload_time"].to_numpy()
    users = ds.users["user_id"].to_numpy()[:8]
    # pages at three times of one day (different servable prefixes of the catalog) and one of
    # the next day; pages 0-2 hold items the model likes, 3-5 random items (deep in the
    # catalog, some not uploaded yet at the page's time), 6-7 forty random items each (the
    # sorted-count path); one request frame with every kind
    day = (int(ds.watches["timestamp"].quantile(0.5)) // 86400) * 86400
    times = np.array([day + 3600, day + 40_000, day + 80_000, day + 86_400 + 7200] * 2)
    rng = np.random.default_rng(0)
    rows, expected = [], []
    for p, (user, t) in enumerate(zip(users, times, strict=True)):
        feats = cg.featurizer.serving(ds, np.array([user]), np.array([t]))
        u = cg.user_embeddings(feats, example_age=0.0)[0]
        ref = (t // 86400) * 86400
        _, iv = cg.item_embeddings(cg.featurizer.item_features(ds, reference_time=ref))
        s_all = np.where(upload <= t, iv @ u, -np.inf)  # (N,) only items servable at t count
        if p < 3:
            pick = np.argsort(-s_all)[:5]
        else:
            pick = rng.choice(len(items), 5 if p < 6 else 40, replace=False)
        rows += [(user, int(items[i]), int(t)) for i in pick]
        s = iv[pick] @ u
        # brute force, as a range: float32 products summed in another order (numpy's matvec
        # here, a GEMM in add_cg_features) can flip an item scoring within rounding of the
        # candidate (seen on an AVX-512 machine: one rank of 110 off by one)
        tol = 1e-6 * float(np.abs(s_all[np.isfinite(s_all)]).max())
        low = 1 + (s_all[None, :] > s[:, None] + tol).sum(axis=1)
        high = (s_all[None, :] > s[:, None] - tol).sum(axis=1) + (upload[pick] > t)  # not itself
        expected.append(np.stack([low, high]))
    assert (upload > times.min()).any()  # some items are not servable on the first page
    low_rank, high_rank = np.concatenate(expected, axis=1)
    # items within rounding of a candidate (mostly exact ties: tiny-world items with the same
    # features share a vector) are 12% of the rows here; the rest must match exactly
    assert (low_rank == high_rank).mean() > 0.8
    req = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    cache = scoring.CatalogCache()
    got = scoring.add_cg_features(cg, ds, req, cache)
    assert len(cache.vectors) == 2  # one item-vector pass per day, kept for the next call
    assert cache.order is not None
    again = scoring.add_cg_features(cg, ds, req, cache)
    pd.testing.assert_frame_equal(got, again)
    rank = got["cg_rank"].to_numpy()
    assert ((rank >= low_rank) & (rank <= high_rank)).all()
    # each kind alone (the liked pages, the deep ones, the long ones) gives the same ranks
    for lo, hi in ((0, 15), (15, 30), (30, len(req))):
        part = scoring.add_cg_features(cg, ds, req.iloc[lo:hi], cache)
        np.testing.assert_array_equal(part["cg_rank"].to_numpy(), rank[lo:hi])
    assert got["cg_rank"].iloc[:15].max() <= 5 < got["cg_rank"].iloc[15:30].max()
    with pytest.raises(ValueError, match="not in the catalog.*rows \\[1\\]"):
        bad = req.iloc[:3].copy()
        bad.loc[1, "item_id"] = -12345
        scoring.add_cg_features(cg, ds, bad, cache)


def test_count_higher_matches_brute_force_with_ties():
    import numpy as np

    from vidrec.pipelines.scoring import _count_higher

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 50, size=5000).astype(np.float32)  # many ties
    for m in (1, 5, 32, 33, 200):  # direct counts up to 32 thresholds, sorted search beyond
        thr = rng.choice(scores, m)
        got = _count_higher(scores, thr)
        np.testing.assert_array_equal(got, (scores[None, :] > thr[:, None]).sum(axis=1))


def test_recommend_cg_features_from_retrieval_equal_the_catalog_definition(tiny_run):
    # with an exact index over the serving-time vectors, the retrieval's own scores and
    # pre-exclusion ranks equal the catalog definition exactly: same ranks, same slates
    import numpy as np

    from vidrec.candidate_gen.index import ExactIndex
    from vidrec.pipelines.serve import Recommender

    out, _, _ = tiny_run
    rec = Recommender.load(out)
    cg, ds = rec.cg, rec.dataset
    ids, vecs = cg.item_embeddings(cg.featurizer.item_features(ds, reference_time=rec.at))
    keep = ds.items.set_index("item_id").loc[ids, "upload_time"].to_numpy() <= rec.at
    rec.retriever.index = ExactIndex(vecs[keep], ids[keep])
    users = ds.watches["user_id"].unique()[:5]
    for user in users:
        view = rec._view(int(user), None, None)
        cands, (score, rank) = rec._retrieve(int(user), 40, view)
        want_score, want_rank = rec._catalog_cg(int(user), cands, view)  # catalog definition
        np.testing.assert_array_equal(rank, want_rank)
        np.testing.assert_allclose(score, want_score, rtol=1e-4, atol=1e-5)
        # the same candidates as the retriever's own exclusion of watched items
        want = rec.retriever.retrieve(np.array([user]), 40, at_time=rec.at, exclude_watched=True)
        # (items with identical vectors tie, and which tied items fill the last places may
        # differ between the two searches: the score sequences must be the same)
        np.testing.assert_allclose(score, want["score"].to_numpy(), rtol=1e-6)
        same = np.isin(cands, want["item_id"].to_numpy())
        assert np.all(score[~same] <= score.min() + 1e-6)  # only ties at the cut-off differ
        rec.cg_features = "retrieval"
        fast = rec.recommend(int(user), k=5, n_candidates=40)
        rec.cg_features = "catalog"
        slow = rec.recommend(int(user), k=5, n_candidates=40)
        assert [s["item_id"] for s in fast["slate"]] == [s["item_id"] for s in slow["slate"]]
        for a, b in zip(fast["slate"], slow["slate"], strict=True):
            assert a["expected_watch_time"] == pytest.approx(b["expected_watch_time"], rel=1e-4)
    # watched items never come back, and a user who watched a lot still gets n candidates
    heavy = int(ds.watches["user_id"].value_counts().index[0])
    cands, _ = rec._retrieve(heavy, 30, rec._view(heavy, None, None))
    from vidrec.features.examples import watched_before

    _, seen = watched_before(rec.retriever.history, np.array([heavy]), rec.at)
    assert len(cands) == 30 and not np.isin(cands, seen).any()
    with pytest.raises(ValueError, match="cg_features must be one of"):
        Recommender(ds, rec.split, cg, rec.index, rec.ranker, rec.config, cg_features="x")


def test_report_has_the_tuned_retrieval_baselines(tiny_run):
    out, _, report = tiny_run
    flat = flatten({k: v for k, v in report.items() if k != "_meta"})
    for name in ("recent_popular", "item_knn", "ease", "pure_svd"):
        for key in ("retrieval.recall@50", "retrieval.popularity.tail.recall@50",
                    "end_to_end.recall@10", "end_to_end.true_expected_watch_time.mean"):  # fmt: skip
            assert f"baselines.{name}.{key}" in flat, (name, key)
        tuning = report["baselines"][name]["retrieval_tuning"]
        assert tuning["chosen"] in tuning["grid"]
        assert len(tuning["grid_validation_recall@50"]) == len(tuning["grid"])
    md = (out / "report.md").read_text("utf-8")
    assert "Retrieval baselines (tuned on the ranker window)" in md
    chosen = report["baselines"]["ease"]["retrieval_tuning"]["chosen_label"]
    assert f"| EASE, {chosen} |" in md  # the retrieval table names the tuned value


def test_the_report_reads_as_explained_plain_text(tiny_run):
    """Every metric row of report.md has a meaning; no Python reprs, no HTML entities in the
    markdown; latencies come with the machine's load; a CPU run carries no GPU note."""
    import re

    out, _, report = tiny_run
    md = (out / "report.md").read_text("utf-8")
    rows = [re.split(r"(?<!\\)\|", ln)[1:-1] for ln in md.splitlines() if ln.startswith("| `")]
    assert len(rows) > 50
    assert [r[0] for r in rows if not r[2].strip()] == []
    assert "None" not in md and "{'" not in md and not re.search(r"&(gt|lt|amp);", md)
    assert "| stage_seconds.data |" in md
    assert "report" not in report["_meta"]["stage_seconds"]  # still running when written
    ann = report["retrieval"]["ann"]
    assert ann["load_avg_1m"] is None or ann["load_avg_1m"] >= 0
    assert "1-minute load average" in md or "load unknown" in md
    assert ("atomic adds" in md) == (report["determinism"]["trained_on"] != "cpu")
    assert re.search(r"\| \d+(\.\d+)?% \|", md)  # the share of the oracle, in percent


def test_test_window_is_served_by_a_model_refit_before_it(tiny_run):
    """Production protocol: the candidate generator that serves the test window is refit on
    everything before valid_end (for the epochs the first model chose), while the ranker's
    training rows keep the out-of-sample scores of the model trained before train_end."""
    from vidrec.candidate_gen.train import TrainedCandidateGenerator
    from vidrec.pipelines.context import RunContext
    from vidrec.pipelines.run import best_epoch, cg_model
    from vidrec.pipelines.rundir import RunDir, serving_cg_dir

    out, _, _ = tiny_run
    m = json.loads((out / "manifest.json").read_text())
    info = m["stages"]["candidate_gen"]
    assert set(info["models"]) == {"model", "serving_model"}
    first = TrainedCandidateGenerator.load(out / "candidate_gen" / "model")
    assert info["refit_epochs"] == best_epoch(first.history, first.config.epochs)
    assert serving_cg_dir(out) == out / "candidate_gen" / "serving_model"
    serving = TrainedCandidateGenerator.load(serving_cg_dir(out))
    # the refit saw the ranker window: its vocabularies were fitted up to valid_end
    assert serving.featurizer.reference_time_ > first.featurizer.reference_time_
    ctx = RunContext(RunDir.open(out), progress=False)
    split = ctx.split()
    assert cg_model(ctx, split.train_end).featurizer.reference_time_ == split.train_end
    assert cg_model(ctx, split.valid_end).featurizer.reference_time_ == split.valid_end
    # the served index holds the refit model's item vectors at valid_end
    with np.load(out / "index" / "item_vectors.npz") as z:
        ids, vecs = z["ids"], z["vectors"]
    items = serving.featurizer.item_features(ctx.dataset(), reference_time=split.valid_end)
    sids, svecs = serving.item_embeddings(items)
    pos = {int(i): n for n, i in enumerate(sids)}
    np.testing.assert_allclose(vecs, svecs[[pos[int(i)] for i in ids]], rtol=1e-5, atol=1e-6)


def test_artifacts_are_readable_as_the_umask_allows_and_no_checkpoints_stay(tiny_run):
    """A serving user or web server reads report.html and the models (mode 0644 under the usual
    umask 022, never mkstemp's 0600); the training checkpoints are gone once a stage finished."""
    import os
    import stat

    from vidrec.features.atomic import FILE_MODE

    out, _, _ = tiny_run
    assert FILE_MODE == 0o666 & ~_umask()
    for name in ("report.html", "report.json", "manifest.json"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == FILE_MODE, name
    models = [p for p in out.rglob("*.pt")] + [p for p in out.rglob("*.ann")]
    assert models and all(stat.S_IMODE(p.stat().st_mode) == FILE_MODE for p in models)
    assert [p for p in out.rglob("checkpoint*.pt")] == []


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_fresh_history_and_serving_time(tiny_run):
    """`history` serves a user from watches the logs do not hold yet; `at` moves the serving
    time; both leave the default request as it was."""
    import numpy as np
    import pandas as pd

    from vidrec.features.ids import UnknownIdError
    from vidrec.features.ranker_features import build_ranker_frame
    from vidrec.pipelines.serve import Recommender

    out, _, _ = tiny_run
    rec = Recommender.load(out)
    ds = rec.dataset
    user = int(ds.watches["user_id"].value_counts().index[0])
    base = rec.recommend(user, k=5)
    assert rec.recommend(user, k=5, history=[]) == base
    assert rec.recommend(user, k=5, at=rec.at) == base
    assert rec.recommend(user, k=5, at=base["at"].replace(" UTC", "")) == base  # ISO, UTC
    # a view with no fresh watches builds the same ranker rows as the whole log's index
    items = np.array([s["item_id"] for s in base["slate"]])
    req = pd.DataFrame({"user_id": np.full(len(items), user), "item_id": items,
                        "timestamp": np.full(len(items), rec.at)})
    whole = build_ranker_frame(rec.features, req, history_len=rec.ranker.config.history_len)
    one = build_ranker_frame(rec.features.for_user(user, np.zeros(0, np.int64),
                                                   np.zeros(0, np.int64)),
                             req, history_len=rec.ranker.config.history_len)
    np.testing.assert_array_equal(whole.continuous, one.continuous)
    np.testing.assert_array_equal(whole.flags, one.flags)
    np.testing.assert_array_equal(whole.history_matrix(), one.history_matrix())
    # a user the data has never seen: a cold start, unless fresh watches are passed
    new_user = int(ds.users["user_id"].max()) + 1000
    cold = rec.retrieve(new_user, n=20)
    popular = ds.watches["item_id"].value_counts().index[:3].tolist()
    warm = rec.retrieve(new_user, n=20, history=popular)
    assert "cold start" in cold["note"] and "3 watch(es) passed as history" in warm["note"]
    got = [c["item_id"] for c in warm["candidates"]]
    assert got != [c["item_id"] for c in cold["candidates"]]
    assert not set(got) & set(popular)  # watched items are not served again
    slate = rec.recommend(new_user, k=5, history=popular)["slate"]
    assert len(slate) == 5 and not {s["item_id"] for s in slate} & set(popular)
    pred = rec.predict_watch_time(new_user, got[:3], history=popular)
    assert len(pred["items"]) == 3
    earlier = rec.recommend(user, k=5, at=int(rec.split.train_end))
    assert earlier["at"] != base["at"]
    many = rec.recommend_many([user, new_user], k=3)
    assert [m["user"] for m in many] == [user, new_user] and many[0] == rec.recommend(user, k=3)
    with pytest.raises(UnknownIdError, match="not in the catalog"):
        rec.recommend(user, history=[10**9])
    with pytest.raises(ValueError, match="not a time"):
        rec.recommend(user, at="yesterday")


def test_slates_carry_titles_when_the_catalog_has_them(tiny_run):
    from vidrec.pipelines.serve import Recommender

    out, _, _ = tiny_run
    rec = Recommender.load(out)
    titles = rec.dataset.items.set_index("item_id")["title"]
    slate = rec.recommend(1, k=3)["slate"]
    assert [s["title"] for s in slate] == [titles[s["item_id"]] for s in slate]
    from dataclasses import replace

    ds = replace(rec.dataset, items=rec.dataset.items.drop(columns="title"))
    plain = Recommender(ds, rec.split, rec.cg, rec.index, rec.ranker, rec.config)
    assert "title" not in plain.recommend(1, k=2)["slate"][0]


def test_cli_serves_fresh_history_and_a_serving_time(tiny_run, capsys):
    out, _, _ = tiny_run
    assert main(["recommend", "--run", str(out), "--user", "999999", "-k", "3",
                 "--history", "1,2,3", "--at", "2024-01-01T00:00"]) == 0
    shown = capsys.readouterr().out
    assert "3 watch(es) passed as history" in shown and "2024-01-01 00:00:00 UTC" in shown
    assert main(["recommend", "--run", str(out), "--user", "1", "--at", "soon"]) == 2
    assert "is not a time" in capsys.readouterr().err


def test_results_docs_are_generated_from_run_records(tiny_run, tmp_path):
    """`docs record` copies a run's summary, commit and machine; `docs build` renders them and
    `--check` tells when a page no longer matches its records."""
    from vidrec.pipelines import docs

    out, _, report = tiny_run
    (tmp_path / "README.md").write_text(f"# x\n\n{docs.BEGIN}\nold\n{docs.END}\nrest\n")
    path = docs.record_run(out, "tiny-world", tmp_path)
    rec = json.loads(path.read_text())
    assert rec["summary"] == report["summary"] and rec["machine"]["cores"] >= 1
    assert rec["git_commit"] == report["_meta"]["git_commit"] and rec["seed"] == 0
    assert docs.build(tmp_path, check=True) != []
    docs.build(tmp_path)
    assert docs.build(tmp_path, check=True) == []
    readme = (tmp_path / "README.md").read_text()
    system = report["summary"]["retrieval"]["system"]
    assert f"{system:.4g}" in readme and readme.endswith("rest\n") and "old" not in readme
    assert "tiny-world" in (tmp_path / "docs" / "results.md").read_text()
    rec["summary"]["retrieval"]["system"] = 0.999
    path.write_text(json.dumps(rec))
    assert docs.main(["--root", str(tmp_path), "build", "--check"]) == 1


def test_the_repositorys_results_pages_match_their_records():
    from pathlib import Path

    from vidrec.pipelines import docs

    root = Path(__file__).resolve().parents[1]
    assert docs.build(root, check=True) == [], "run: python -m vidrec.pipelines.docs build"


def test_requests_run_on_the_recommenders_thread_count_and_restore_the_callers(tiny_run):
    import torch

    from vidrec.pipelines.serve import Recommender

    out, _, _ = tiny_run
    seen: list[int] = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for threads, expect in ((1, 1), (None, 2), (2, 2)):
            rec = Recommender.load(out, threads=threads)
            score = rec.ranker._predict_inputs
            rec.ranker._predict_inputs = lambda f, s=score: (
                seen.append(torch.get_num_threads()) or s(f)
            )
            user = int(rec.dataset.watches["user_id"].iloc[0])
            rec.recommend(user, k=3)
            rec.predict(user, [int(rec.dataset.items["item_id"].iloc[0])])
            assert seen[-2:] == [expect, expect], threads
            assert torch.get_num_threads() == 2  # the caller's count is back
        with pytest.raises(ValueError, match="threads must be"):
            Recommender.load(out, threads=0)
    finally:
        torch.set_num_threads(before)


def test_end_to_end_slates_scored_in_chunks_of_users_equal_one_pass(tiny_run):
    """The end-to-end stage scores the held-out users' candidates a chunk of users at a time
    (bounded memory); any chunking gives the slates of one pass, and the run's own slates."""
    import pandas as pd

    from vidrec.features.ids import to_codes
    from vidrec.pipelines.context import RunContext
    from vidrec.pipelines.run import heldout_users
    from vidrec.pipelines.rundir import RunDir
    from vidrec.pipelines.stages_rank import ranked_slates

    out, cfg, _ = tiny_run
    ctx = RunContext(RunDir.open(out), progress=False)
    ds, t_serve, k = ctx.dataset(), ctx.split().valid_end, int(cfg["evaluation"]["slate_k"])
    cands = to_codes(ds.ids, pd.read_parquet(out / "retrieval" / "candidates.parquet"), "cands")
    users = heldout_users(ctx)
    assert len(users) > 3
    one_pass = ranked_slates(ctx, cands, users, t_serve, k, chunk_rows=len(cands))
    per_user = ranked_slates(ctx, cands, users, t_serve, k, chunk_rows=1)  # a user a chunk
    uneven = ranked_slates(ctx, cands, users, t_serve, k, chunk_rows=len(cands) // 3)
    assert set(one_pass) == set(per_user) >= {"deep_weighted", "candidate_gen_only"}
    for name in one_pass:
        assert one_pass[name].shape == (len(users), k)
        np.testing.assert_array_equal(per_user[name], one_pass[name], err_msg=name)
        np.testing.assert_array_equal(uneven[name], one_pass[name], err_msg=name)
    served = pd.read_parquet(out / "end_to_end" / "slates.parquet")
    assert served["item_id"].to_numpy().tolist() == one_pass["deep_weighted"].ravel().tolist()
    # users without candidates get empty slates (-1), in a chunk of their own or not
    absent = np.array([cands["user_id"].max() + 1, cands["user_id"].max() + 2])
    more = np.concatenate([users, absent])
    for rows in (1, len(cands)):
        got = ranked_slates(ctx, cands, more, t_serve, k, chunk_rows=rows)
        for name in one_pass:
            np.testing.assert_array_equal(got[name][: len(users)], one_pass[name])
            assert (got[name][len(users) :] == -1).all()
