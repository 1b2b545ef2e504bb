"""Run a `vidrec` command on several processes or machines: DDP training through torchrun.

One machine, N processes (gloo on CPU; with GPUs, one per process and NCCL):

    python -m vidrec.pipelines.distributed --nproc 2 -- run --preset default --out runs/ddp

Several machines: the same command on every machine, each with its own --node-rank (0 .. M-1);
--master-addr is an address of node 0 that the others can reach, --master-port a free TCP port
there:

    # on node 0 (10.0.0.1)
    python -m vidrec.pipelines.distributed --nproc 8 --nnodes 2 --node-rank 0 \\
        --master-addr 10.0.0.1 --master-port 29500 -- run --preset large --out runs/large
    # on node 1
    python -m vidrec.pipelines.distributed --nproc 8 --nnodes 2 --node-rank 1 \\
        --master-addr 10.0.0.1 --master-port 29500 -- run --preset large --out runs/large

Everything after `--` is a `vidrec` command line. The launcher starts torchrun
(`python -m torch.distributed.run`), which starts this module in worker mode in every process;
the direct torchrun equivalent of the first example is

    torchrun --standalone --nproc-per-node 2 -m vidrec.pipelines.distributed --worker -- \\
        run --preset default --out runs/ddp

How the work is split (first version): global rank 0 runs the `vidrec` command itself (data,
index, evaluation, report: single-process), and the training stages run on every rank. When rank
0 enters `train_candidate_generator` or `train_ranker`, the trainer announces the call; rank 0
broadcasts the function and its inputs to the other ranks, which are waiting for exactly that,
and all ranks train together with DistributedDataParallel (see candidate_gen/train.py and
ranking/train.py: rank-sharded global batches, per-rank negatives and SSL items, reduced
validation metrics, checkpoints read and written by rank 0 only). Only rank 0 reads the data and
touches the run directory, so the other machines need the same code and Python environment but
no copy of the data and no shared filesystem; interrupted runs resume as usual by rerunning the
same command (with any number of processes).

Your own scripts can train on every rank directly (SPMD): start them with torchrun, call
`init_from_env()`, build the same inputs on every rank and call the trainers; pass
`distributed=True` to `item_embeddings`, `user_embeddings` or `predict_logit` to shard batch
inference across the ranks.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from vidrec.common import distributed as dist_utils
from vidrec.features.dist_env import DistEnv

log = logging.getLogger("vidrec")

__all__ = [
    "LAUNCHER_OPTIONS",
    "init_from_env",
    "launch",
    "main",
    "strip_launcher_options",
    "torchrun_command",
    "worker_main",
]

DEFAULT_TIMEOUT_MIN = 24 * 60  # the other ranks wait while rank 0 runs the non-training stages

#: options of the launcher (each takes a value), for a CLI that accepts them on its own commands
LAUNCHER_OPTIONS = (
    "--nproc",
    "--nnodes",
    "--node-rank",
    "--master-addr",
    "--master-port",
    "--threads",
    "--timeout-min",
)


def strip_launcher_options(argv: Sequence[str]) -> list[str]:
    """Return `argv` without the `LAUNCHER_OPTIONS` and their values ("--opt v" or "--opt=v").

    For `vidrec run ... --nproc 2` style wiring: the command relaunches itself through `launch`
    with the remaining arguments, which every rank then parses without the launcher's options.
    """
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCHER_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in LAUNCHER_OPTIONS)):
            out.append(arg)
    return out


def torchrun_command(
    vidrec_args: Sequence[str],
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    timeout_min: int = DEFAULT_TIMEOUT_MIN,
) -> list[str]:
    """Return the torchrun command line that runs `vidrec <vidrec_args>` on nproc x nnodes ranks.

    One node without a port uses torchrun's --standalone rendezvous (a free local port).
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if nnodes < 1:
        raise ValueError(f"--nnodes must be >= 1, got {nnodes}")
    if not 0 <= node_rank < nnodes:
        raise ValueError(
            f"--node-rank must be in 0..{nnodes - 1} for --nnodes {nnodes}, got {node_rank}"
        )
    if nnodes > 1 and (master_addr is None or master_port is None):
        raise ValueError(
            f"--nnodes {nnodes} needs --master-addr (an address of node 0 every node can reach) "
            "and --master-port (a free TCP port on it), the same on every node"
        )
    if master_port is not None and not 0 < master_port < 65536:
        raise ValueError(f"--master-port must be a TCP port in 1..65535, got {master_port}")
    if timeout_min < 1:
        raise ValueError(f"--timeout-min must be >= 1, got {timeout_min}")
    if not vidrec_args:
        raise ValueError(
            "no vidrec command given; put it after '--', e.g. "
            "python -m vidrec.pipelines.distributed --nproc 2 -- run --preset tiny --out runs/x"
        )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1 and master_port is None:
        cmd.append("--standalone")
    else:
        cmd += ["--nnodes", str(nnodes), "--node-rank", str(node_rank)]
        cmd += ["--master-addr", master_addr or "127.0.0.1", "--master-port", str(master_port)]
    worker = ["-m", "vidrec.pipelines.distributed", "--worker", "--timeout-min", str(timeout_min)]
    return [*cmd, *worker, "--", *vidrec_args]


def launch(
    vidrec_args: Sequence[str],
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    threads: int | None = None,
    timeout_min: int = DEFAULT_TIMEOUT_MIN,
) -> int:
    """Run `vidrec <vidrec_args>` on nproc processes of this node (of nnodes); return the exit code.

    Each process gets `threads` intra-op threads (default: this machine's cores / nproc). A
    single process in all (nproc = nnodes = 1) runs the command here, without torchrun.
    """
    cmd = torchrun_command(
        vidrec_args,
        nproc=nproc,
        nnodes=nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        timeout_min=timeout_min,
    )
    if nproc * nnodes == 1:
        from vidrec.pipelines.cli import main as vidrec_main

        return vidrec_main(list(vidrec_args))
    env = dict(os.environ)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    env.setdefault("OMP_NUM_THREADS", str(threads or max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(cmd, env=env, check=False).returncode


def init_from_env(device: str = "auto", *, timeout_min: int = DEFAULT_TIMEOUT_MIN) -> DistEnv:
    """Join the process group described by torchrun's environment; return this rank's place.

    Backend: gloo on CPU; with CUDA ("auto" when available, or "cuda") each process drives GPU
    LOCAL_RANK and the group is "cpu:gloo,cuda:nccl" (NCCL for GPU tensors, gloo for the
    CPU-side collectives). A one-process environment (no WORLD_SIZE) joins nothing. Idempotent.
    """
    env = DistEnv.from_env()
    if not env.is_distributed or dist.is_initialized():
        return env
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch sees no CUDA device")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    dist.init_process_group(
        backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo",
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(minutes=timeout_min),
    )
    return env


def _announce(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Rank 0: send a trainer call and its inputs to the ranks waiting in `_follow`."""
    name = getattr(fn, "__name__", repr(fn))
    log.info("%s: data-parallel on %d processes", name, dist.get_world_size())
    dist_utils.broadcast_object((fn, args, kwargs))


def _follow(rank: int) -> None:
    """Ranks > 0: run every trainer call rank 0 announces, until it sends the stop (None).

    An error that every rank raises at the same point (marked `EVERY_RANK`, e.g. a checkpoint
    directory of another config) is rank 0's to report: keep waiting for its next message. Any
    other error may leave rank 0 inside a collective: re-raise it, so that this process exits
    and torchrun stops the job instead of letting rank 0 wait until the timeout.
    """
    while True:
        message = dist_utils.broadcast_object(None)
        if message is None:
            return
        fn, args, kwargs = message
        try:
            fn(*args, **{**kwargs, "progress": False})
        except Exception as exc:
            if not getattr(exc, dist_utils.EVERY_RANK, False):
                raise
            log.warning("rank %d: %s failed as on rank 0: %s", rank, fn.__name__, exc)


def worker_main(vidrec_args: Sequence[str], *, timeout_min: int = DEFAULT_TIMEOUT_MIN) -> int:
    """Run one rank of a `launch`ed job: rank 0 runs the vidrec command, the others follow it.

    Returns the command's exit code on rank 0 and 0 on the other ranks.
    """
    env = init_from_env(timeout_min=timeout_min)
    from vidrec.pipelines.cli import main as vidrec_main

    if not env.is_distributed:
        return vidrec_main(list(vidrec_args))
    if env.rank > 0:
        logging.basicConfig(level=logging.WARNING, format=f"[rank {env.rank}] %(message)s")
        _follow(env.rank)
        dist.destroy_process_group()
        return 0
    previous = dist_utils.set_announcer(_announce)
    try:
        # an exception escaping here may leave the other ranks inside a collective: no stop
        # message then, the process exits and torchrun stops the job
        rc = vidrec_main(list(vidrec_args))
    finally:
        dist_utils.set_announcer(previous)
    dist_utils.broadcast_object(None)  # release the followers
    dist.destroy_process_group()
    return rc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vidrec.pipelines.distributed",
        description="Run a vidrec command with data-parallel training on several processes "
        "(this machine) or machines, through torchrun. Put the vidrec command after '--'.",
        epilog="example: python -m vidrec.pipelines.distributed --nproc 2 -- run --preset tiny --out runs/x",
    )
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine (default 1)")
    p.add_argument("--nnodes", type=int, default=1, help="machines taking part (default 1)")
    p.add_argument("--node-rank", type=int, default=0, help="this machine's index, 0..nnodes-1")
    p.add_argument("--master-addr", default=None, help="address of node 0 (several machines)")
    p.add_argument("--master-port", type=int, default=None, help="free TCP port on node 0")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per process (default cores/nproc)"
    )
    p.add_argument(
        "--timeout-min",
        type=int,
        default=DEFAULT_TIMEOUT_MIN,
        help="how long a rank may wait in a collective, e.g. for rank 0's non-training stages",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `[launcher options] -- <vidrec args>`; launch (or, with --worker, be one rank)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = _parser().parse_args(argv[:cut])
    vidrec_args = argv[cut + 1 :]
    if args.worker:
        return worker_main(vidrec_args, timeout_min=args.timeout_min)
    try:
        return launch(
            vidrec_args,
            nproc=args.nproc,
            nnodes=args.nnodes,
            node_rank=args.node_rank,
            master_addr=args.master_addr,
            master_port=args.master_port,
            threads=args.threads,
            timeout_min=args.timeout_min,
        )
    except ValueError as exc:
        print(f"vidrec.pipelines.distributed: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
