"""torch.distributed helpers of both trainers: rank, collectives, announcements.

Where it sits: `candidate_gen.train` and `ranking.train` train data-parallel
(DistributedDataParallel) whenever a default process group with more than one process is
initialized (torchrun, or `pipelines.distributed`), and single-process otherwise; these helpers are
no-ops or identities in a single process. The torch-free parts live in `features.dist_env`.

Object collectives (checkpoints, decisions, announcements) go over CPU tensors when the group
has a CPU backend (gloo, or "cpu:gloo,cuda:nccl"), and over the current CUDA device with a pure
NCCL group. Tensor gathers run on the tensors' device when the backend supports it.

Announcements: a launcher that runs a program on rank 0 only (`pipelines.distributed`) installs
an announcer with `set_announcer`; `train_candidate_generator` and `train_ranker` then announce each
call so that the launcher can replay it on the other ranks, which join the data-parallel training.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vidrec.features.dist_env import row_range

__all__ = [
    "EVERY_RANK",
    "Announcer",
    "all_gather_rows",
    "all_reduce_sum",
    "announce",
    "barrier",
    "broadcast_object",
    "check_same_on_all_ranks",
    "destroy_group",
    "gather_with_grad",
    "is_distributed",
    "new_group",
    "on_rank0",
    "rank_and_world",
    "set_announcer",
    "worker_device",
]

#: `announcer(function, args, kwargs)`, called on rank 0 before a collective entry point runs
Announcer = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], None]
_announcer: Announcer | None = None

#: set (True) on an exception that every rank raises at the same point, so no rank is left
#: inside a collective and a launcher may carry on (`pipelines.distributed`)
EVERY_RANK = "raised_on_every_rank"


def rank_and_world() -> tuple[int, int]:
    """Return `(rank, world size)` of the default process group, `(0, 1)` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """Return True when a default process group with more than one process is initialized."""
    return rank_and_world()[1] > 1


def worker_device(device: torch.device) -> torch.device:
    """Return this rank's device: `cuda:LOCAL_RANK` for a CUDA device under several processes.

    Each process of a CUDA job drives its own GPU: LOCAL_RANK (set by torchrun), or the global
    rank when the group was initialized without it. CPU stays CPU.
    """
    if device.type != "cuda" or not is_distributed():
        return device
    raw = os.environ.get("LOCAL_RANK", "").strip()
    local = (int(raw) if raw.isdigit() else dist.get_rank()) % max(torch.cuda.device_count(), 1)
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def _object_device() -> torch.device:
    """Where object and metric collectives run: CPU with a gloo backend, else the current GPU."""
    if "gloo" in str(dist.get_backend()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _tensor_device(device: torch.device) -> torch.device:
    """Where a gather of tensors on `device` runs: its GPU under NCCL, else CPU (gloo)."""
    backend = str(dist.get_backend())
    if "nccl" in backend and (device.type == "cuda" or "gloo" not in backend):
        return device if device.type == "cuda" else _object_device()
    return torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank `src`'s `obj` on every rank (pickled); `obj` itself in a single process."""
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_object_device())
    return box[0]


def on_rank0(fn: Callable[..., Any], *args: Any) -> Any:
    """Return `fn(*args)` computed on rank 0 only and broadcast to every rank.

    An exception raised by `fn` on rank 0 is re-raised on every rank (same type and message,
    marked with the attribute `EVERY_RANK`), so no rank is left waiting in a collective; the broadcast also makes the other ranks wait
    for rank 0 (a barrier). In a single process this is just `fn(*args)`.
    """
    if not is_distributed():
        return fn(*args)
    result: tuple[bool, Any] = (True, None)
    if dist.get_rank() == 0:
        try:
            result = (True, fn(*args))
        except Exception as exc:  # forwarded to every rank below, then raised there
            result = (False, exc)
    ok, value = broadcast_object(result)
    if not ok:
        setattr(value, EVERY_RANK, True)
        raise value
    return value


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: np.ndarray | list[float]) -> np.ndarray:
    """Return the element-wise sum over ranks of `values` (float64); `values` in one process."""
    arr = np.asarray(values, dtype=np.float64)
    if not is_distributed():
        return arr
    t = torch.from_numpy(arr.copy()).to(_object_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def check_same_on_all_ranks(value: Any, what: str) -> None:
    """Raise ValueError on every rank when ranks hold different `value`s (e.g. data fingerprints)."""
    if not is_distributed():
        return
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        exc = ValueError(
            f"ranks {differ} hold different {what} than rank 0; every process must build the same "
            "inputs (same data, config and seed)"
        )
        setattr(exc, EVERY_RANK, True)
        raise exc


def all_gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Return the (n, ...) concatenation of every rank's rows `features.dist_env.row_range(n)`.

    `local` holds this rank's rows (hi - lo, ...); the result is on `local`'s device and in row
    order. In a single process `local` (all n rows) is returned as is.
    """
    if not is_distributed():
        return local
    rank, world = rank_and_world()
    sizes = [row_range(n, r, world) for r in range(world)]
    lo, hi = sizes[rank]
    if local.shape[0] != hi - lo:
        raise ValueError(
            f"rank {rank} passed {local.shape[0]} rows to all_gather_rows but owns rows "
            f"[{lo}, {hi}) of {n}"
        )
    width = max(b - a for a, b in sizes)
    dev = _tensor_device(local.device)
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[: hi - lo] = local.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: b - a] for p, (a, b) in zip(parts, sizes, strict=True)]).to(local.device)


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums each rank's gradient of the gathered rows."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size(group)
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous(), group=group)
        ctx.group, ctx.rows, ctx.rank = group, local.shape[0], dist.get_rank(group)
        return torch.cat(parts)  # (W m, ...)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        # every rank's loss depends on every rank's rows: sum their gradients, keep our slice
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def gather_with_grad(local: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Return every rank's `local` rows concatenated in rank order (W m, ...), differentiable.

    All ranks must pass the same number of rows. The backward pass hands each rank the sum over
    ranks of the gradients of its own rows, so that when every rank's loss uses the gathered
    rows, DDP's gradient average equals the gradient of the global-batch loss. Identity in a
    single process.
    """
    if not is_distributed():
        return local
    dev = _tensor_device(local.device)
    return _GatherRows.apply(local.to(dev), group).to(local.device)


def new_group() -> Any:
    """Return a new process group of every rank (collectively: every rank must call it)."""
    return dist.new_group()


def destroy_group(group: Any) -> None:
    """Release a group made by `new_group` (None: nothing to release)."""
    if group is not None:
        dist.destroy_process_group(group)


def set_announcer(announcer: Announcer | None) -> Announcer | None:
    """Install `announcer` (None removes it) for collective entry points; return the previous one."""
    global _announcer
    previous, _announcer = _announcer, announcer
    return previous


def announce(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Tell an installed announcer that `fn(*args, **kwargs)` starts (no-op without one)."""
    if _announcer is not None and is_distributed():
        _announcer(fn, args, kwargs)
