"""Run-level artifact integrity: a run directory's artifacts must belong
together before they are served or resumed from.

Two miniature runs are built in process through `RunDir.run_stage` with real artifacts (the
data tables, a candidate generator trained one epoch, an annoy index over its item vectors, a
deep ranker), in the pipeline's stage order and with its lineage (`inputs`). Run A is then
damaged in the ways that happen in practice and every damage must be refused with one message
that names the artifact, what was expected, what was found and the `--redo STAGE` that fixes it:

- a file edited after the run wrote it (sha256 no longer the manifest's);
- an index directory copied in from run B (its provenance names another run);
- a vocabulary file copied in from run B (run level: manifest hash; model level: the hash the
  model directory recorded for the vocabulary it was trained with);
- an index of another embedding dimension / another catalog whose hashes were re-recorded;
- a stage built from an earlier output of a stage that was redone (stale lineage);
- an edited manifest, a missing manifest, an unfinished stage, a path leaving the run.

A control test shows that the intact run loads (so the refusals are not vacuous).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_cg_examples import random_dataset
from test_ranker_model import SMALL, frames

from vidrec.candidate_gen.config import CandidateGenConfig
from vidrec.candidate_gen.index import AnnoyIndex, make_index
from vidrec.candidate_gen.train import TrainedCandidateGenerator, train_candidate_generator
from vidrec.features.atomic import atomic_write_json, atomic_write_text, make_dirs
from vidrec.features.examples import CandidateFeaturizer
from vidrec.features.integrity import ArtifactError
from vidrec.features.io import write_dataset
from vidrec.features.split import TimeSplit
from vidrec.pipelines.cli import main as cli_main
from vidrec.pipelines.rundir import (
    RunDir,
    RunDirError,
    RunIntegrityError,
    check_index_matches_model,
)
from vidrec.pipelines.serve import Recommender
from vidrec.ranking.config import RankerConfig
from vidrec.ranking.train import TrainedRanker, train_ranker

torch.set_num_threads(1)

STAGES = ("data", "candidate_gen", "index", "ranker")


def _stage_fns(
    seed: int, dim: int, cache: dict[str, Any], kind: str = "annoy"
) -> dict[str, Callable[[Path], None]]:
    """The four stages serving reads, each writing real artifacts of a miniature run (the index
    of `kind`)."""
    ds = random_dataset(n_users=30, n_items=60, n_watches=1200, n_searches=100, seed=seed)
    split = TimeSplit.from_fractions(ds, 0.7, 0.15)

    def data(out: Path) -> None:
        write_dataset(ds, out / "tables")
        atomic_write_json(out / "split.json", split.to_dict())

    def candidate_gen(out: Path) -> None:
        f = CandidateFeaturizer(max_history=10, max_search_tokens=8, min_token_count=1)
        f.fit(ds, split)
        cfg = CandidateGenConfig(
            embedding_dim=dim,
            user_layers=(dim,),
            categorical_dim=4,
            num_negatives=16,
            batch_size=128,
            epochs=1,
            device="cpu",
            seed=seed + cache.get("cg_seed_offset", 0),
        )
        model = train_candidate_generator(
            cfg, f.examples(ds, "train"), f.item_features(ds), progress=False
        )
        model.save(out / "model")
        cache["cg"] = model

    def index(out: Path) -> None:
        ids, vecs = cache["cg"].item_embeddings()
        small = {"annoy": {"n_trees": 2}, "hnsw": {"m": 4, "ef_construction": 16}}.get(kind, {})
        make_index(kind, vecs, ids, seed=seed, **small).save(out / kind)

    def ranker(out: Path) -> None:
        _, tr, va = frames(seed=seed, n_imps=600)
        cfg = RankerConfig(**{**SMALL, "epochs": 1, "seed": seed})
        train_ranker(cfg, tr, va, progress=False).save(out / "deep_weighted" / "model")

    return {"data": data, "candidate_gen": candidate_gen, "index": index, "ranker": ranker}


def build_run(root: Path, *, seed: int, dim: int, kind: str | None = None) -> RunDir:
    """Return a finished miniature run in `root` (stages in pipeline order, with lineage),
    serving an index of `kind` (None: a config without retrieval.index, which serves annoy)."""
    retrieval: dict[str, Any] = {"n_candidates": 20} | ({"index": kind} if kind else {})
    rd = RunDir(root, {"seed": seed, "dim": dim, "retrieval": retrieval})
    fns = _stage_fns(seed, dim, {}, kind or "annoy")
    for i, name in enumerate(STAGES):
        rd.run_stage(name, fns[name], inputs=STAGES[:i])
    return rd


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("runs")
    build_run(base / "A", seed=0, dim=8)
    build_run(base / "B", seed=1, dim=4)
    return base / "A", base / "B"


@pytest.fixture
def run_a(runs: tuple[Path, Path], tmp_path: Path) -> Path:
    """A fresh copy of run A that a test may damage."""
    return Path(shutil.copytree(runs[0], tmp_path / "A"))


def _refused(run: Path, *patterns: str) -> str:
    with pytest.raises(RunIntegrityError) as info:
        Recommender.load(run)
    msg = str(info.value)
    for p in patterns:
        assert p in msg, f"{p!r} not in:\n{msg}"
    return msg


# ----------------------------------------------------------------------------- control


def test_intact_run_loads_and_records_lineage(run_a: Path) -> None:
    rec = Recommender.load(run_a)
    assert rec.index.dim == rec.cg.config.embedding_dim == 8
    m = json.loads((run_a / "manifest.json").read_text())
    assert isinstance(m["run_id"], str) and len(m["run_id"]) == 32
    # lineage: each stage recorded the digests of the stages before it, and they are current
    rd = RunDir.open(run_a)
    assert set(m["stages"]["index"]["inputs"]) == {"data", "candidate_gen"}
    assert m["stages"]["index"]["inputs"]["candidate_gen"] == rd.stage_digest("candidate_gen")
    prov = json.loads((run_a / "index" / "provenance.json").read_text())
    assert prov["run_id"] == m["run_id"] and prov["inputs"] == m["stages"]["index"]["inputs"]
    # the runtime settings that decide reproducibility are recorded per stage
    assert m["stages"]["candidate_gen"]["runtime"]["torch_threads"] == 1
    # a rerun of a finished, intact stage is skipped
    again = RunDir(run_a, m["config"])
    assert again.run_stage("index", lambda d: pytest.fail("reran"), inputs=STAGES[:2]).skipped


@pytest.mark.parametrize("kind", ["hnsw", "exact"])
def test_a_run_serves_the_index_its_config_names(tmp_path: Path, kind: str) -> None:
    build_run(tmp_path / "run", seed=0, dim=8, kind=kind)
    rec = Recommender.load(tmp_path / "run")
    assert rec.index.kind == kind and rec.index.dim == 8
    user = int(rec.dataset.users["user_id"].iloc[0])
    slate = rec.recommend(user, k=3)["slate"]
    assert len(slate) == 3 and slate[0]["stage"] == f"candidate generator ({kind}) -> deep ranker"
    # another kind of index where the config names this one is refused, checksums aside
    index_dir = tmp_path / "run" / "index" / kind
    shutil.rmtree(index_dir)
    ids, vecs = rec.cg.item_embeddings()
    AnnoyIndex(vecs, ids, n_trees=2).save(index_dir)
    with pytest.raises(RunIntegrityError, match=f"holds a 'annoy' index, not the '{kind}' index"):
        Recommender.load(tmp_path / "run", verify=False)


# ----------------------------------------------------------------------------- tampering


def test_an_edited_artifact_is_refused_with_the_stage_to_redo(run_a: Path) -> None:
    ids = run_a / "index" / "annoy" / "ids.npy"
    raw = bytearray(ids.read_bytes())
    raw[-1] ^= 0xFF  # one flipped byte in the last item id
    ids.write_bytes(bytes(raw))
    msg = _refused(run_a, "artifact index/annoy/ids.npy of stage index has changed", "--redo index")
    assert "the manifest records sha256" in msg and "the file has" in msg
    # resuming the run refuses it too instead of silently building on it ...
    m = json.loads((run_a / "manifest.json").read_text())
    rd = RunDir(run_a, m["config"])
    with pytest.raises(RunIntegrityError, match=r"index/annoy/ids.npy .*--redo index"):
        rd.run_stage("index", lambda d: None, inputs=STAGES[:2])
    # ... and --redo (forget) rebuilds it
    rd.forget("index")
    fns = _stage_fns(0, 8, {"cg": TrainedCandidateGenerator.load(run_a / "candidate_gen/model")})
    assert not rd.run_stage("index", fns["index"], inputs=STAGES[:2]).skipped
    Recommender.load(run_a)


def test_a_missing_artifact_is_refused(run_a: Path) -> None:
    (run_a / "ranker" / "deep_weighted" / "model" / "normalizer.json").unlink()
    _refused(
        run_a, "artifact ranker/deep_weighted/model/normalizer.json of stage ranker is missing"
    )


def test_an_index_copied_from_another_run_is_refused(run_a: Path, runs: tuple[Path, Path]) -> None:
    shutil.rmtree(run_a / "index")
    shutil.copytree(runs[1] / "index", run_a / "index")
    b_id = json.loads((runs[1] / "manifest.json").read_text())["run_id"]
    msg = _refused(run_a, "stage directory index/ was written by another run", "--redo index")
    assert f"run id {b_id}" in msg  # names what it found ...
    a_id = json.loads((run_a / "manifest.json").read_text())["run_id"]
    assert f"run id {a_id}" in msg  # ... and what it expected


def test_a_vocabulary_copied_from_another_run_is_refused(
    run_a: Path, runs: tuple[Path, Path]
) -> None:
    rel = Path("candidate_gen/model/featurizer.json")
    shutil.copy(runs[1] / rel, run_a / rel)
    _refused(run_a, f"artifact {rel} of stage candidate_gen has changed", "--redo candidate_gen")
    # outside a run directory the model directory itself knows its vocabulary's hash
    with pytest.raises(
        ArtifactError, match=r"featurizer.json does not belong here: the featurizer"
    ):
        TrainedCandidateGenerator.load(run_a / "candidate_gen" / "model", device="cpu")


def test_a_ranker_vocabulary_of_the_same_sizes_from_another_run_is_refused(
    run_a: Path, runs: tuple[Path, Path]
) -> None:
    model = run_a / "ranker" / "deep_weighted" / "model"
    other = runs[1] / "ranker" / "deep_weighted" / "model"
    a = json.loads((model / "vocabularies.json").read_text())
    b = json.loads((other / "vocabularies.json").read_text())
    assert a != b  # different runs fitted different vocabularies ...
    shutil.copy(other / "vocabularies.json", model / "vocabularies.json")
    # ... which the size check alone would accept if the sizes matched; the hash refuses it
    with pytest.raises(ArtifactError, match=r"vocabularies.json does not belong here"):
        TrainedRanker.load(model, device="cpu")


def test_an_index_of_another_dimension_is_refused_even_when_rehashed(
    run_a: Path, runs: tuple[Path, Path]
) -> None:
    # someone replaces the index files and re-records the stage's hashes by hand: the hashes
    # now agree, but the index was built by run B's 4-dimensional model
    for f in (runs[1] / "index" / "annoy").iterdir():
        shutil.copy(f, run_a / "index" / "annoy" / f.name)
    m = json.loads((run_a / "manifest.json").read_text())
    rd = RunDir(run_a, m["config"])
    rd.record("index", 0.0, None, m["stages"]["index"]["inputs"])
    rd.record("ranker", 0.0, None, {s: rd.stage_digest(s) for s in STAGES[:3]})
    _refused(
        run_a,
        "holds 4-dimensional vectors but the candidate generator of this run makes "
        "8-dimensional ones",
        "--redo index",
    )


def test_index_catalog_and_dimension_checks() -> None:
    ids = np.array([1, 2, 3], dtype=np.int64)
    check_index_matches_model("R", "R/index", 8, ids, 8, np.arange(10), "fix")  # belongs
    with pytest.raises(RunIntegrityError, match=r"holds 4-dimensional .* makes 8-dimensional"):
        check_index_matches_model("R", "R/index", 4, ids, 8, np.arange(10), "fix")
    # ids 11 and 12 are not in the catalog 0..9
    with pytest.raises(RunIntegrityError, match=r"2 item id\(s\) .* \(first: \[11, 12\]\)"):
        check_index_matches_model("R", "R/index", 8, np.array([1, 11, 12]), 8, np.arange(10), "x")


# ----------------------------------------------------------------------------- lineage


def test_a_stage_built_from_an_earlier_output_is_stale(run_a: Path) -> None:
    m = json.loads((run_a / "manifest.json").read_text())
    rd = RunDir(run_a, m["config"])
    # --redo candidate_gen, and this time the model comes out different (another seed offset)
    rd.forget("candidate_gen")
    cache: dict[str, Any] = {"cg_seed_offset": 7}
    fns = _stage_fns(0, 8, cache)
    rd.run_stage("candidate_gen", fns["candidate_gen"], inputs=STAGES[:1])
    # serving refuses the mix: the index was built by the previous candidate generator
    _refused(run_a, "stage index was built from an earlier output of candidate_gen")
    # a resumed run reruns the stale stages instead (the index, then the ranker)
    assert rd.stale_inputs("index", STAGES[:2]) == ["candidate_gen"]
    assert not rd.run_stage("index", fns["index"], inputs=STAGES[:2]).skipped
    assert not rd.run_stage("ranker", fns["ranker"], inputs=STAGES[:3]).skipped
    Recommender.load(run_a)


def test_redoing_a_stage_with_an_identical_output_keeps_the_rest(run_a: Path) -> None:
    m = json.loads((run_a / "manifest.json").read_text())
    rd = RunDir(run_a, m["config"])
    before = rd.stage_digest("index")
    rd.forget("index")
    fns = _stage_fns(0, 8, {"cg": TrainedCandidateGenerator.load(run_a / "candidate_gen/model")})
    rd.run_stage("index", fns["index"], inputs=STAGES[:2])
    # the same vectors and seed build the same forest, byte for byte: nothing downstream is stale
    assert rd.stage_digest("index") == before
    assert rd.run_stage("ranker", lambda d: pytest.fail("reran"), inputs=STAGES[:3]).skipped


# ----------------------------------------------------------------------------- the manifest


def test_manifest_problems(run_a: Path, tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=r"is not a vidrec run directory \(no manifest.json\)"):
        Recommender.load(tmp_path / "nothing")
    path = run_a / "manifest.json"
    m = json.loads(path.read_text())
    # an edited config no longer matches the recorded hash
    edited = {**m, "config": {**m["config"], "seed": 5}}
    path.write_text(json.dumps(edited))
    with pytest.raises(RunIntegrityError, match=r"config hashes to .* but the manifest records"):
        Recommender.load(run_a)
    # an artifact path that leaves the run directory
    escaped = json.loads(json.dumps(m))
    escaped["stages"]["index"]["artifacts"]["../../etc/passwd"] = "0" * 64
    path.write_text(json.dumps(escaped))
    with pytest.raises(ArtifactError, match=r"points outside"):
        Recommender.load(run_a)
    # an unfinished stage
    unfinished = json.loads(json.dumps(m))
    unfinished["stages"]["ranker"] = {"status": "running"}
    path.write_text(json.dumps(unfinished))
    with pytest.raises(RunDirError, match=r"has not finished stage\(s\) \['ranker'\]"):
        Recommender.load(run_a)
    path.write_text("{ not json")
    with pytest.raises(ArtifactError, match=r"manifest.json is not valid JSON"):
        Recommender.load(run_a)


def test_redo_hint_repeats_the_runs_own_command(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "my run", {"seed": 0})
    here = str(tmp_path / "my run")
    # the run was made elsewhere (then moved or copied here): --out names where it is now
    rd.manifest["command"] = ["/x/vidrec", "run", "--preset", "tiny", "--out", "/old/place"]
    assert rd.redo_hint("index") == f"vidrec run --preset tiny --out '{here}' --redo index"
    rd.manifest["command"] = [
        "vidrec",
        "run",
        "--out=r",
        "--redo",
        "data",
        "--redo=x",
        "--seed",
        "3",
    ]
    assert rd.redo_hint("ranker") == f"vidrec run --seed 3 --out '{here}' --redo ranker"
    rd.manifest["command"] = ["pytest"]
    assert rd.redo_hint("ranker") == (
        f"vidrec run --out '{here}' --redo ranker (with the run's other options)"
    )


def test_cli_prints_one_line_naming_the_artifact_and_the_fix(
    run_a: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_a / "index" / "annoy" / "index.json").write_text("{}")
    rc = cli_main(["recommend", "--run", str(run_a), "--user", "1000", "-k", "3"])
    err = capsys.readouterr().err.strip()
    assert rc == 3
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("vidrec recommend: error: run ")
    assert "index/annoy/index.json of stage index has changed" in err and "--redo index" in err


def test_ranker_checkpoint_refuses_swapped_vocabularies(tmp_path: Path) -> None:
    _, tr, va = frames(seed=0, n_imps=600)
    cfg = RankerConfig(**{**SMALL, "epochs": 1})
    ck = tmp_path / "ck"
    train_ranker(cfg, tr, va, checkpoint_dir=ck, progress=False)
    _, tr2, _ = frames(seed=3, n_imps=600)
    other = tmp_path / "other"
    train_ranker(cfg, tr2, None, checkpoint_dir=other, progress=False)
    shutil.copy(other / "vocabularies.json", ck / "vocabularies.json")
    with pytest.raises(ArtifactError, match=r"cannot resume from .*checkpoint.pt: .*vocabularies"):
        train_ranker(
            RankerConfig(**{**SMALL, "epochs": 2}), tr, va, checkpoint_dir=ck, progress=False
        )


# ----------------------------------------------------------------------------- determinism


def test_report_determinism_section(runs: tuple[Path, Path], tmp_path: Path) -> None:
    from vidrec.evaluation.report import Report
    from vidrec.pipelines.report import determinism_section

    m = json.loads((runs[0] / "manifest.json").read_text())
    m["stages"]["ranker"]["runtime"] = m["stages"]["candidate_gen"]["runtime"]
    cfg = {"seed": 0, "candidate_gen": {"device": "auto"}, "ranking": {"device": "auto"}}
    metrics, section = determinism_section(m, cfg)
    # this CPU run: the settings its training stages recorded, and a bit-identical rerun
    assert metrics["trained_on"] == "cpu" and metrics["torch_threads"] == 1
    assert metrics["deterministic_algorithms"] is False
    assert metrics["bit_identical_rerun_expected"] is True
    assert metrics["settings_differ_between_stages"] is False
    # several CPU threads may sum in a different order per run: no bit-identical promise
    threads2 = {**m, "stages": {k: {**v, "runtime": {**v["runtime"], "torch_threads": 2}}
                                for k, v in m["stages"].items() if "runtime" in v}}
    assert determinism_section(threads2, cfg)[0]["bit_identical_rerun_expected"] is False
    report = Report({"determinism": metrics}, dataset="d", split="s", seed=0, preset="p")
    report.sections = [section]
    md = report.write_markdown(tmp_path / "report.md").read_text()
    assert "## 1. Determinism" in md and "bit-identical" in md
    assert "atomic adds" not in md  # the note on GPU nondeterminism is for GPU runs only
    assert "| `determinism.torch_threads` | 1 | torch intra-op threads" in md
    # a GPU run is not expected to be bit-identical unless both switches were set
    gpu = {**m["stages"]["candidate_gen"]["runtime"], "cuda_available": True, "cuda_device": "H100"}
    m["stages"]["candidate_gen"]["runtime"] = m["stages"]["ranker"]["runtime"] = gpu
    metrics, gpu_section = determinism_section(m, cfg)
    assert metrics["trained_on"] == "H100" and metrics["bit_identical_rerun_expected"] is False
    report.sections = [gpu_section]
    md = report.write_markdown(tmp_path / "gpu.md").read_text()
    for phrase in ("atomic adds", "CUBLAS_WORKSPACE_CONFIG=:4096:8"):
        assert phrase in md
    strict = {**gpu, "deterministic_algorithms": True, "cublas_workspace_config": ":4096:8"}
    m["stages"]["ranker"]["runtime"] = strict
    metrics, _ = determinism_section(m, cfg)
    assert metrics["settings_differ_between_stages"] is True
    m["stages"]["candidate_gen"]["runtime"] = strict
    assert determinism_section(m, cfg)[0]["bit_identical_rerun_expected"] is True
    # a GPU was visible but the config pinned training to the CPU
    pinned = {**cfg, "candidate_gen": {"device": "cpu"}, "ranking": {"device": "cpu"}}
    assert determinism_section(m, pinned)[0]["trained_on"] == "cpu"


def test_only_an_interrupted_attempt_of_the_same_config_is_continued(tmp_path: Path) -> None:
    def write(name: str) -> Callable[[Path], None]:
        def stage(d: Path) -> None:
            # as vidrec's writers do: through features.atomic, which the run directory records
            make_dirs(d / "checkpoints")
            atomic_write_text(d / name, name)

        return stage

    root = tmp_path / "r"
    rd = RunDir(root, {"seed": 0})
    rd.run_stage("a", write("first"))
    # interrupted: the manifest says running; the rerun keeps the directory (checkpoints)
    rd.manifest["stages"]["b"] = {"status": "running"}
    rd.save()
    atomic_write_text(root / "b" / "checkpoints" / "checkpoint.pt", "epoch 1")
    rd = RunDir(root, {"seed": 0})
    seen: list[bool] = []

    def resume(d: Path) -> None:
        seen.append((d / "checkpoints" / "checkpoint.pt").exists())  # what a trainer resumes
        write("b")(d)

    rd.run_stage("b", resume, inputs=("a",))
    assert seen == [True]
    # a finished stage keeps its outputs, not the checkpoints it could have resumed from
    assert not (root / "b" / "checkpoints").exists() and (root / "b" / "b").exists()
    # --redo: the previous attempt's files go, nothing resumes from them
    rd.forget("a")
    rd.run_stage("a", write("second"))
    assert sorted(p.name for p in (root / "a").iterdir()) == ["provenance.json", "second"]
    # b was built from the first a: stale, so it reruns from an empty directory too
    rd.run_stage("b", write("b2"), inputs=("a",))
    assert not (root / "b" / "checkpoints" / "checkpoint.pt").exists()
    # another config in the same directory: every earlier stage directory is cleared when
    # its stage runs, also in a later process (the manifest remembers which)
    rd = RunDir(root, {"seed": 1})
    rd.run_stage("a", write("third"))
    assert "second" not in {p.name for p in (root / "a").iterdir()}
    m = json.loads((root / "manifest.json").read_text())
    assert sorted(m["stages"]["a"]["artifacts"]) == ["a/provenance.json", "a/third"]
    assert m["discard_before_running"] == ["b"]
    rd = RunDir(root, {"seed": 1})
    rd.run_stage("b", write("b3"), inputs=("a",))
    assert sorted(p.name for p in (root / "b").iterdir()) == ["b3", "provenance.json"]
    assert json.loads((root / "manifest.json").read_text())["discard_before_running"] == []
    # a directory no manifest ever listed is not vidrec's to delete
    (root / "c").mkdir()
    (root / "c" / "mine.txt").write_text("user data")
    rd.run_stage("c", write("c"))
    assert (root / "c" / "mine.txt").exists()
