"""Process coordinates from torchrun's environment and rank sharding of rows (torch-free).

Where it sits: `torchrun` (torch.distributed.run) starts one worker per rank and sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each; `pipelines.distributed` reads them
with `DistEnv.from_env` to join the process group. The trainers of `candidate_gen` and `ranking`
(which may not import each other) share the pure numpy parts of data-parallel training here:

- `shard_batches`: one epoch's permutation cut into global batches, each split into equal
  per-rank slices, so every rank runs the same number of steps (no rank waits forever in a
  collective) and the union of the slices of a step is that step's single-process batch;
- `row_range`: contiguous rows of a rank for sharded batch inference;
- `rank_seed`: the seed of a rank's own random stream in an epoch (sampled negatives, SSL items).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["DistEnv", "rank_seed", "row_range", "shard_batches"]


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    """Return the integer value of env[name], or None when it is unset or empty."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not an integer; torchrun sets it, so "
            "start the workers with torchrun (or python -m vidrec.pipelines.distributed) or unset it"
        ) from None


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job: rank, world size, local rank, rendezvous address."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"WORLD_SIZE must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"RANK must be in [0, WORLD_SIZE={self.world_size}), got {self.rank}; "
                "every worker needs its own rank below the world size"
            )
        if self.local_rank < 0:
            raise ValueError(f"LOCAL_RANK must be >= 0, got {self.local_rank}")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise ValueError(f"MASTER_PORT must be a TCP port in 1..65535, got {self.master_port}")

    @property
    def is_distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """Return the coordinates torchrun put in `environ` (default os.environ); 1 process if none.

        A multi-process job (WORLD_SIZE > 1) must also name its rendezvous (MASTER_ADDR,
        MASTER_PORT), as torchrun does.
        """
        env = os.environ if environ is None else environ
        world = _env_int(env, "WORLD_SIZE")
        rank = _env_int(env, "RANK")
        local = _env_int(env, "LOCAL_RANK")
        port = _env_int(env, "MASTER_PORT")
        addr = env.get("MASTER_ADDR") or None
        rank = 0 if rank is None else rank
        out = cls(rank, 1 if world is None else world, rank if local is None else local, addr, port)
        if out.is_distributed and (addr is None or port is None):
            raise ValueError(
                f"WORLD_SIZE={world} but MASTER_ADDR/MASTER_PORT are not set; start the workers "
                "with torchrun or python -m vidrec.pipelines.distributed, or set both variables"
            )
        return out


def row_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Return `[lo, hi)`: rank's contiguous share of n rows (sizes differ by at most one).

    Rank r gets rows [r n / W, (r + 1) n / W) (integer division), so the ranges in rank order
    tile [0, n) and concatenating the ranks' results restores the row order.
    """
    _check_rank(rank, world_size)
    if n < 0:
        raise ValueError(f"row_range: n must be >= 0, got {n}")
    return rank * n // world_size, (rank + 1) * n // world_size


def shard_batches(
    order: np.ndarray, batch_size: int, rank: int, world_size: int
) -> list[np.ndarray]:
    """Return this rank's index arrays, one per training step, from one epoch's permutation.

    Step s covers the global batch `order[s B : (s + 1) B]` (B = `batch_size`, the
    single-process batch); rank r takes the r-th of W equal slices of it, B / W rows. The last,
    partial global batch of R rows is split into W slices of ceil(R / W) rows, padded by
    wrapping around to the start of `order` (as torch's DistributedSampler pads), so at most
    W - 1 examples are seen twice per epoch. Every rank gets ceil(n / B) steps. With W = 1
    these are exactly the single-process batches.
    """
    _check_rank(rank, world_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size % world_size:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {world_size} processes; choose a "
            f"batch size that is a multiple of the process count (e.g. "
            f"{batch_size - batch_size % world_size or world_size}) so that the global batch "
            "equals the single-process batch"
        )
    order = np.asarray(order)
    if order.ndim != 1:
        raise ValueError(f"order must be 1-D (a permutation), got shape {order.shape}")
    n, per = len(order), batch_size // world_size
    full = n // batch_size
    # (steps, W, B / W): the full global batches, cut into rank slices
    steps = list(order[: full * batch_size].reshape(full, world_size, per)[:, rank])
    rest = n - full * batch_size
    if rest:
        per_last = -(-rest // world_size)  # ceil(R / W)
        pad = np.resize(order, per_last * world_size - rest)  # wraps around if n is tiny
        last = np.concatenate([order[full * batch_size :], pad])
        steps.append(last.reshape(world_size, per_last)[rank])
    return steps


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """Return the seed of rank's random stream in `epoch`: independent across ranks and epochs.

    Derived with numpy's SeedSequence from (seed, epoch, rank), so a run resumed after any epoch,
    with any number of processes, draws the same numbers on a given rank as an uninterrupted run.
    """
    if min(seed, epoch, rank) < 0:
        raise ValueError(
            f"rank_seed: seed, epoch and rank must be >= 0, got {seed}, {epoch}, {rank}"
        )
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # < 2**63: fits torch.Generator.manual_seed


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank {rank} is not in [0, world_size={world_size}); pass this process's rank and "
            "the number of processes"
        )
