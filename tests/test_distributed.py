"""Tests for data-parallel training and sharded inference (features.dist_env,
candidate_gen/ranking distributed paths, pipelines.distributed).

The multi-process tests start 2 processes on loopback (gloo, MASTER_ADDR=127.0.0.1, a free port)
with torch.multiprocessing once per module (~15 s on 2 busy cores); each rank runs every
scenario and saves what it got, and the tests compare that with one-process runs of the same
global batch.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_cg_examples import random_dataset
from test_ranker_model import SMALL, frames

from vidrec.candidate_gen.config import CandidateGenConfig
from vidrec.candidate_gen.train import train_candidate_generator
from vidrec.common import distributed as cg_dist
from vidrec.features.dist_env import DistEnv, rank_seed, row_range, shard_batches
from vidrec.features.examples import CandidateFeaturizer
from vidrec.features.split import TimeSplit
from vidrec.pipelines import distributed as launcher
from vidrec.ranking.config import RankerConfig
from vidrec.ranking.train import train_ranker

WORLD = 2
CG = dict(
    embedding_dim=16,
    user_layers=(32, 16),
    categorical_dim=4,
    num_negatives=64,
    batch_size=128,
    learning_rate=5e-3,
    valid_k=10,
    device="cpu",
    epochs=2,
    patience=0,
)
IN_BATCH = dict(loss="in_batch", ssl="none")  # no sampling: 2 processes = 1 process up to float
SAMPLED = dict(loss="sampled", ssl="cfm")  # per-rank negatives and SSL items: equal in law
RANKER = dict(SMALL, epochs=2, patience=10)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cg_world():
    """Train examples (2048 = 16 global batches of 128: no padded last batch), valid, items."""
    ds = random_dataset(n_users=60, n_items=120, n_watches=3000, n_searches=400)
    split = TimeSplit.from_fractions(ds, 0.7, 0.15)
    f = CandidateFeaturizer(
        max_history=20, max_search_tokens=16, min_token_count=1, time_signals=True
    ).fit(ds, split)  # item time signals: each rank takes them at its own rows' times
    train = f.examples(ds, "train")
    return train.take(np.arange(2048)), f.examples(ds, "valid"), f.item_features(ds)


def cg_config(**kw: Any) -> CandidateGenConfig:
    return CandidateGenConfig(**{**CG, **kw})


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _error(fn: Any) -> str:
    try:
        fn()
    except (ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


# --------------------------------------------------------------------- what every rank runs
def _scenarios(rank: int, out: Path) -> dict[str, Any]:
    train, valid, items = cg_world()
    _, tr, va = frames(n_imps=3000)  # 2400 training rows: 9 global batches of 256 + 96 (even)
    res: dict[str, Any] = {}

    m = train_candidate_generator(cg_config(**IN_BATCH), train, items, valid=valid, progress=False)
    res["inbatch"] = (_weights(m.model), m.history)
    res["item_vectors"] = (m.item_embeddings()[1], m.item_embeddings(distributed=True)[1])
    feats = valid.features
    res["user_vectors"] = (m.user_embeddings(feats), m.user_embeddings(feats, distributed=True))

    cfg = cg_config(**SAMPLED)
    m = train_candidate_generator(
        cfg, train, items, valid=valid, checkpoint_dir=out / "cg_a", progress=False
    )
    res["sampled"] = (_weights(m.model), m.history)
    # interrupted after epoch 1, resumed to epoch 2 in a fresh call
    train_candidate_generator(
        cfg.replace(epochs=1),
        train,
        items,
        valid=valid,
        checkpoint_dir=out / "cg_b",
        progress=False,
    )
    m = train_candidate_generator(
        cfg, train, items, valid=valid, checkpoint_dir=out / "cg_b", resume=True, progress=False
    )
    res["sampled_resumed"] = (_weights(m.model), m.history)

    # SGD steps of 1e-12 leave the float32 weights as they were: recall does not improve after
    # epoch 1, patience 1 stops
    m = train_candidate_generator(
        cg_config(epochs=6, patience=1, optimizer="sgd", learning_rate=1e-12),
        train,
        items,
        valid=valid,
        progress=False,
    )
    res["early_stop"] = m.history
    # SGD at learning rate 1e5 diverges in epoch 1: every rank raises, none waits in a collective
    res["diverged"] = _error(
        lambda: train_candidate_generator(
            cg_config(optimizer="sgd", learning_rate=1e5), train, items, progress=False
        )
    )
    res["odd_batch"] = _error(
        lambda: train_candidate_generator(cg_config(batch_size=127), train, items, progress=False)
    )
    mine = train if rank == 0 else train.take(np.arange(2000))
    res["different_data"] = _error(
        lambda: train_candidate_generator(cg_config(), mine, items, progress=False)
    )

    r = train_ranker(RankerConfig(**RANKER), tr, va, checkpoint_dir=out / "rk_a", progress=False)
    res["ranker"] = (_weights(r.model), r.history)
    res["logits"] = (r.predict_logit(va), r.predict_logit(va, distributed=True))
    short = RankerConfig(**{**RANKER, "epochs": 1})
    train_ranker(short, tr, va, checkpoint_dir=out / "rk_b", progress=False)
    r = train_ranker(RankerConfig(**RANKER), tr, va, checkpoint_dir=out / "rk_b", progress=False)
    res["ranker_resumed"] = (_weights(r.model), r.history)
    # rank 0 finds a different config in the directory: every rank raises its error
    res["ranker_wrong_dir"] = _error(
        lambda: train_ranker(
            RankerConfig(**{**RANKER, "lr": 0.5}), tr, va, checkpoint_dir=out / "rk_a"
        )
    )

    # driver mode (pipelines.distributed): rank 0 alone calls the trainers, which announce
    # themselves; rank 1 replays them, and keeps following after an error raised on every rank
    if rank == 0:
        previous = cg_dist.set_announcer(launcher._announce)
        m = train_candidate_generator(
            cg_config(**IN_BATCH), train, items, valid=valid, progress=False
        )
        res["driven"] = (_weights(m.model), m.history)
        res["driven_error"] = _error(
            lambda: train_ranker(
                RankerConfig(**{**RANKER, "lr": 0.5}), tr, va, checkpoint_dir=out / "rk_a"
            )
        )
        res["driven_diverged"] = _error(
            lambda: train_ranker(RankerConfig(**{**RANKER, "lr": 1e20}), tr, va, progress=False)
        )
        cg_dist.set_announcer(previous)
        cg_dist.broadcast_object(None)  # the stop message
    else:
        launcher._follow(rank)
    return res


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    env = launcher.init_from_env("cpu")
    try:
        res = _scenarios(env.rank, Path(out))
        with open(Path(out) / f"rank{rank}.pkl", "wb") as fh:
            pickle.dump(res, fh)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[list[dict[str, Any]], Path]:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("ddp")
    # Linux: fork the ranks from this process, so they share its imports (torch's first optimizer
    # imports torch._dynamo, ~2 s per process, 10 s on a loaded 2-core machine); the ranks set
    # 1 thread first (as DataLoader workers do) so no OpenMP pool crosses the fork. Elsewhere:
    # spawn.
    fork = sys.platform == "linux" and "fork" in mp.get_all_start_methods()
    if fork:
        import torch._dynamo  # noqa: F401
    method = "fork" if fork else "spawn"
    mp.start_processes(
        _worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True, start_method=method
    )
    results = []
    for r in range(WORLD):
        with open(out / f"rank{r}.pkl", "rb") as fh:
            results.append(pickle.load(fh))
    return results, out


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    train, valid, items = cg_world()
    _, tr, va = frames(n_imps=3000)
    res: dict[str, Any] = {}
    m = train_candidate_generator(cg_config(**IN_BATCH), train, items, valid=valid, progress=False)
    res["inbatch"] = (_weights(m.model), m.history)
    m = train_candidate_generator(cg_config(**SAMPLED), train, items, valid=valid, progress=False)
    res["sampled"] = (_weights(m.model), m.history)
    r = train_ranker(RankerConfig(**RANKER), tr, va, progress=False)
    res["ranker"] = (_weights(r.model), r.history)
    torch.set_num_threads(before)
    return res


def _strip(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if "second" not in k} for h in history]


# --------------------------------------------------------------------- two processes
def test_ranks_end_with_identical_models_and_histories(ranks) -> None:
    (r0, r1), _ = ranks
    for key in ("inbatch", "sampled", "sampled_resumed", "ranker", "ranker_resumed"):
        w0, w1 = r0[key][0], r1[key][0]
        for k in w0:  # DDP keeps replicas identical and rank 0's values decide early stopping
            torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0)
        assert _strip(r0[key][1]) == _strip(r1[key][1])


def test_in_batch_two_processes_match_one_process(ranks, single) -> None:
    (r0, _), _ = ranks
    ddp, one = r0["inbatch"][1], single["inbatch"][1]
    # without sampling, the two rank halves of each global batch are gathered into the same
    # 128 x 128 in-batch softmax as in one process, and DDP's mean of the two rank gradients is
    # the batch gradient: the runs differ only by float summation order (~1e-7 relative)
    for a, b in zip(ddp, one, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        # 445 validation users: one flipped top-10 tie moves recall by 1/445 = 0.0022
        assert abs(a["valid_recall@10"] - b["valid_recall@10"]) <= 1 / 445 + 1e-12


def test_sampled_softmax_with_ssl_reaches_one_process_quality(ranks, single) -> None:
    (r0, _), _ = ranks
    ddp = r0["sampled"][1][-1]["valid_recall@10"]
    one = single["sampled"][1][-1]["valid_recall@10"]
    # Per-rank negatives and SSL items make a different (equally distributed) random stream, so
    # the runs agree in law only. Measured over seeds 0..7
    # (python benchmarks/ddp_throughput.py --quick --repeats 1 --quality-seeds 8):
    # one process ends at recall@10 0.660 +- 0.022 (sd), two at 0.669 +- 0.017; the per-seed
    # difference has sd 0.026 (max |diff| 0.040, mean +0.010 +- 0.009 se: no quality loss).
    # The bar is three standard deviations of that difference.
    assert abs(ddp - one) <= 3 * 0.026
    assert ddp > 0.5  # random top-10 of 120 items would give 10 / 120 = 0.083


def test_resume_across_ranks_equals_uninterrupted(ranks) -> None:
    (r0, _), out = ranks
    full, resumed = r0["sampled"], r0["sampled_resumed"]
    for k in full[0]:
        torch.testing.assert_close(full[0][k], resumed[0][k], rtol=0, atol=0)
    assert _strip(full[1]) == _strip(resumed[1])
    rk_full, rk_resumed = r0["ranker"], r0["ranker_resumed"]
    for k in rk_full[0]:
        torch.testing.assert_close(rk_full[0][k], rk_resumed[0][k], rtol=0, atol=0)
    assert rk_resumed[1] == rk_full[1]
    # rank 0 alone wrote the checkpoints, atomically (no temporary files left)
    assert (out / "cg_b" / "checkpoint.pt").exists() and (out / "rk_b" / "checkpoint.pt").exists()
    assert not [p for p in out.rglob(".*.tmp")]


def test_single_process_resumes_a_two_process_checkpoint(ranks, tmp_path) -> None:
    (r0, _), out = ranks
    train, valid, items = cg_world()
    ckpt = tmp_path / "cg"
    ckpt.mkdir()
    for name in ("checkpoint.pt", "config.json"):  # the 2-process run stopped after epoch 1...
        (ckpt / name).write_bytes((out / "cg_b" / name).read_bytes())
    cfg = cg_config(**SAMPLED, epochs=3)  # ...and a 1-process run takes it to epoch 3
    state = torch.load(ckpt / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2  # cg_b was resumed to epoch 2 by the ranks
    m = train_candidate_generator(
        cfg, train, items, valid=valid, checkpoint_dir=ckpt, resume=True, progress=False
    )
    assert [h["epoch"] for h in m.history] == [1, 2, 3]
    assert _strip(m.history[:2]) == _strip(r0["sampled_resumed"][1])


def test_ranker_two_processes_match_one_process(ranks, single) -> None:
    (r0, _), _ = ranks
    # no randomness besides the (seed, epoch) permutation, which both runs share: 2400 rows are
    # 9 global batches of 256 and one of 96 (2 x 48, no padding), so both runs take the same
    # gradient steps up to float summation order
    for a, b in zip(r0["ranker"][1], single["ranker"][1], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-5)
    for k, v in single["ranker"][0].items():
        torch.testing.assert_close(r0["ranker"][0][k], v, rtol=1e-4, atol=1e-5)


def test_early_stopping_is_decided_identically_on_every_rank(ranks) -> None:
    (r0, r1), _ = ranks
    assert len(r0["early_stop"]) == len(r1["early_stop"]) == 2
    assert r0["early_stop"][1]["valid_recall@10"] == r0["early_stop"][0]["valid_recall@10"]
    assert _strip(r0["early_stop"]) == _strip(r1["early_stop"])


def test_sharded_inference_equals_local_inference(ranks) -> None:
    for res in ranks[0]:
        for key in ("item_vectors", "user_vectors", "logits"):
            local, sharded = res[key]
            assert local.shape == sharded.shape
            np.testing.assert_allclose(sharded, local, rtol=1e-6, atol=1e-6)


def test_rank0_driven_training_equals_spmd_training(ranks) -> None:
    (r0, _), _ = ranks
    driven, spmd = r0["driven"], r0["inbatch"]
    for k in spmd[0]:
        torch.testing.assert_close(driven[0][k], spmd[0][k], rtol=0, atol=0)
    assert _strip(driven[1]) == _strip(spmd[1])
    assert "different config (fields ['lr'])" in r0["driven_error"]
    # rank 1 followed on past the divergence: it ran the ranker, then got the stop message
    assert "ranker: the training loss is nan at epoch 1" in r0["driven_diverged"]


def test_errors_reach_every_rank(ranks) -> None:
    for res in ranks[0]:
        assert "batch_size 127 is not divisible by the 2 processes" in res["odd_batch"]
        assert "ranks [1] hold different training examples or config" in res["different_data"]
        assert "holds a run with a different config (fields ['lr'])" in res["ranker_wrong_dir"]
        assert res["diverged"].startswith(
            "NonFiniteLossError: candidate_gen: the training loss is nan at epoch 1"
        )


# --------------------------------------------------------------------- one process, pure helpers
def test_shard_batches_by_hand() -> None:
    order = np.arange(10)
    # B = 4, W = 2: global batches [0 1 2 3] [4 5 6 7] [8 9]; rank 0 takes the first half of each
    assert [s.tolist() for s in shard_batches(order, 4, 0, 2)] == [[0, 1], [4, 5], [8]]
    assert [s.tolist() for s in shard_batches(order, 4, 1, 2)] == [[2, 3], [6, 7], [9]]
    # n = 11: the last global batch [8 9 10] is padded with order[0] to 2 x 2 rows
    assert [s.tolist() for s in shard_batches(np.arange(11), 4, 1, 2)][-1] == [10, 0]
    # n = 1 < W = 4: every rank gets one row, the first wrapped around three times
    assert [shard_batches(np.array([7]), 4, r, 4)[0].tolist() for r in range(4)] == [[7]] * 4
    # one process: exactly the single-process batches
    assert [s.tolist() for s in shard_batches(order, 4, 0, 1)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]
    with pytest.raises(ValueError, match="batch_size 5 is not divisible by the 2 processes"):
        shard_batches(order, 5, 0, 2)
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size=2\)"):
        shard_batches(order, 4, 2, 2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        shard_batches(order, 0, 0, 1)
    with pytest.raises(ValueError, match="order must be 1-D"):
        shard_batches(order.reshape(2, 5), 4, 0, 1)


def test_row_range_tiles_the_rows() -> None:
    # 5 rows over 2 ranks: [0, 5 // 2) = [0, 2) and [2, 5)
    assert [row_range(5, r, 2) for r in range(2)] == [(0, 2), (2, 5)]
    assert [row_range(2, r, 3) for r in range(3)] == [(0, 0), (0, 1), (1, 2)]
    with pytest.raises(ValueError, match="n must be >= 0"):
        row_range(-1, 0, 1)


def test_rank_seed_is_deterministic_and_distinct() -> None:
    seeds = {rank_seed(0, e, r) for e in range(1, 4) for r in range(4)}
    assert len(seeds) == 12 and rank_seed(0, 1, 1) == rank_seed(0, 1, 1)
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError, match="must be >= 0"):
        rank_seed(0, 1, -1)


def test_dist_env_from_environment() -> None:
    assert DistEnv.from_env({}) == DistEnv()
    env = DistEnv.from_env(
        {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "9"}
    )
    assert (env.rank, env.world_size, env.local_rank, env.master_port) == (3, 4, 1, 9)
    assert env.is_distributed
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        DistEnv.from_env({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match=r"RANK must be in \[0, WORLD_SIZE=2\)"):
        DistEnv.from_env({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    with pytest.raises(ValueError, match="MASTER_ADDR/MASTER_PORT are not set"):
        DistEnv.from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="MASTER_PORT must be a TCP port"):
        DistEnv(master_port=70000)
    with pytest.raises(ValueError, match="WORLD_SIZE must be >= 1"):
        DistEnv(world_size=0)
    with pytest.raises(ValueError, match="LOCAL_RANK must be >= 0"):
        DistEnv(local_rank=-1)


def test_collectives_are_identities_in_one_process() -> None:
    x = torch.arange(6.0).reshape(3, 2)
    calls: list[Any] = []
    for mod in (cg_dist,):
        assert mod.rank_and_world() == (0, 1) and not mod.is_distributed()
        assert mod.all_gather_rows(x, 3) is x
        np.testing.assert_array_equal(mod.all_reduce_sum([1.0, 2.0]), [1.0, 2.0])
        assert mod.on_rank0(lambda a, b: a + b, 1, 2) == 3
        assert mod.broadcast_object("x") == "x"
        mod.check_same_on_all_ranks(1, "anything")
        mod.barrier()
        previous = mod.set_announcer(lambda *a: calls.append(a))
        mod.announce(print, (), {})  # one process: nothing to announce to
        mod.set_announcer(previous)
    assert calls == []
    assert cg_dist.gather_with_grad(x) is x


def test_torchrun_command_lines() -> None:
    cmd = launcher.torchrun_command(["run", "--out", "x"], nproc=2)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    assert cmd[-4:] == ["--", "run", "--out", "x"]
    assert cmd[6:9] == ["-m", "vidrec.pipelines.distributed", "--worker"]
    multi = launcher.torchrun_command(
        ["run"], nproc=8, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29500
    )
    joined = " ".join(multi)
    assert "--nnodes 2 --node-rank 1 --master-addr 10.0.0.1 --master-port 29500" in joined
    assert "--standalone" not in joined
    with pytest.raises(ValueError, match="--nnodes 2 needs --master-addr"):
        launcher.torchrun_command(["run"], nproc=1, nnodes=2)
    with pytest.raises(ValueError, match="--node-rank must be in 0..1"):
        launcher.torchrun_command(["run"], nproc=1, nnodes=2, node_rank=2)
    with pytest.raises(ValueError, match="--nproc must be >= 1"):
        launcher.torchrun_command(["run"], nproc=0)
    with pytest.raises(ValueError, match="--nnodes must be >= 1"):
        launcher.torchrun_command(["run"], nproc=1, nnodes=0)
    with pytest.raises(ValueError, match="--master-port must be a TCP port"):
        launcher.torchrun_command(["run"], nproc=1, master_port=0)
    with pytest.raises(ValueError, match="--timeout-min must be >= 1"):
        launcher.torchrun_command(["run"], nproc=1, timeout_min=0)
    with pytest.raises(ValueError, match="no vidrec command given"):
        launcher.torchrun_command([], nproc=2)


def test_strip_launcher_options() -> None:
    argv = ["run", "--nproc", "2", "--out", "x", "--master-port=29500", "--set", "a=1"]
    assert launcher.strip_launcher_options(argv) == ["run", "--out", "x", "--set", "a=1"]


def test_launcher_reports_bad_options(capsys) -> None:
    assert launcher.main(["--nproc", "2", "--nnodes", "2", "--", "run"]) == 2
    assert "needs --master-addr" in capsys.readouterr().err
    assert launcher.main(["--nproc", "2", "--threads", "0", "--", "run"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_launcher_runs_the_tiny_pipeline_on_two_processes(tmp_path) -> None:
    import subprocess

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "vidrec.pipelines.distributed", "--nproc", "2", "--threads", "1", "--"]
        + ["run", "--preset", "tiny", "--out", str(out), "--no-progress"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # both trainers were announced by rank 0 and ran on the 2 ranks
    assert "train_candidate_generator: data-parallel on 2 processes" in proc.stderr
    assert proc.stderr.count("train_ranker: data-parallel on 2 processes") == 2  # weighted, click
    assert (out / "report.json").exists() and (
        out / "candidate_gen" / "model" / "model.json"
    ).exists()
