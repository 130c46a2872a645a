"""Evaluation across processes with torch.distributed, with results identical to one process.

Launch with torchrun (`torchrun --nproc_per_node N ...`), which sets WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `initialize(device)` then joins the default process
group (gloo for CPU, nccl for CUDA). Work is split into disjoint pieces (every rank fills only
its own entries of an array and leaves the others zero), and `sum_disjoint` all-reduces such
arrays. That sum is exact: in IEEE 754 arithmetic x + 0 = x for every x, so whatever order the
backend adds the ranks' contributions in, each entry comes out as the one nonzero term (integers
in int64 are exact anyway). Totals over entries are then taken by the caller in a fixed order
(math.fsum), so a distributed run reproduces a single process bit for bit.

Before results are combined, `run_checked` makes every rank stop with one message if any rank
failed (a collective after a failure would otherwise hang the others) and checks that all ranks
agree on what they evaluated (model weights, data, settings): sums over ranks holding different
models or data would be a number about no model.

Without a process group every helper acts as for a single process (rank 0 of 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")

#: Variables torchrun sets for every worker; all are needed to join the group.
TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}

# The device on which collectives run: nccl needs CUDA tensors, gloo CPU tensors.
_collective_device = torch.device("cpu")


def _environment() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun variables; ValueError if absent."""
    missing = [name for name in TORCHRUN_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ValueError(
            "distributed evaluation needs the environment torchrun sets up (missing "
            f"{', '.join(missing)}); launch with `torchrun --nproc_per_node N ...`"
        )
    try:
        values = [int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")]
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    rank_, world, local = values
    if world < 1 or not 0 <= rank_ < world or local < 0:
        raise ValueError(f"invalid torchrun environment: RANK={rank_}, WORLD_SIZE={world}")
    return rank_, world, local


def initialize(device: str = "cpu") -> bool:
    """Join the default process group of a torchrun launch; True if this call created it.

    `device` is "cpu" (backend gloo) or "cuda" (backend nccl; each rank uses the GPU of its
    LOCAL_RANK, so pass the bare "cuda"). A second call with the same device does nothing and
    returns False. Without the torchrun environment, or for another device, raises ValueError.
    """
    global _collective_device
    kind = torch.device(device)
    if kind.type not in BACKENDS:
        raise ValueError(f"distributed evaluation runs on 'cpu' or 'cuda', got device {device!r}")
    if kind.type == "cuda" and kind.index is not None:
        raise ValueError(
            f"pass the device as 'cuda', not {device!r}: each rank uses the GPU of its LOCAL_RANK"
        )
    backend = BACKENDS[kind.type]
    if not dist.is_available():
        raise ValueError("this build of torch has no torch.distributed")
    if dist.is_initialized():
        if dist.get_backend() != backend:
            raise ValueError(
                f"the process group already uses backend {dist.get_backend()!r}, "
                f"not {backend!r} for device {device!r}"
            )
        _collective_device = _device_of(kind.type, None)
        return False
    _, _, local = _environment()
    _collective_device = _device_of(kind.type, local)
    dist.init_process_group(backend=backend, init_method="env://")
    return True


def _device_of(kind: str, local_rank: int | None) -> torch.device:
    """The device collectives use; for CUDA, the rank's GPU becomes the current device."""
    if kind == "cpu":
        return torch.device("cpu")
    if local_rank is None:  # a group someone else set up: keep their current device
        return torch.device("cuda", torch.cuda.current_device())
    if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank} has no CUDA device to run on")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def active() -> bool:
    """True when this process is part of an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes in the group (1 without one)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, the one process that writes reports and shows progress."""
    return rank() == 0


def shard() -> tuple[int, int] | None:
    """(rank, world size) when distributed, else None: a rank takes the pieces i ≡ rank."""
    return (rank(), world_size()) if active() else None


def sum_disjoint(array: np.ndarray) -> np.ndarray:
    """Entry-wise sum over ranks of an int64 or float64 array nonzero on at most one rank.

    Every rank passes an array of the same dtype and shape. The result equals, bit for bit,
    the entries of whichever rank holds them (x + 0 = x exactly in IEEE arithmetic, and
    int64 sums are exact), on every rank; only a −0.0 comes back as +0.0. An entry nonzero
    on two ranks would make the sum depend on the backend's order, so that raises ValueError
    on every rank. Without a process group, returns a copy of `array`.
    """
    array = np.asarray(array)
    if array.dtype not in (np.dtype(np.int64), np.dtype(np.float64)):
        raise ValueError(f"sum_disjoint takes int64 or float64 arrays, got {array.dtype}")
    if not active():
        return array.copy()
    layouts = _gather((array.dtype.str, array.shape))
    if any(layout != layouts[0] for layout in layouts):
        raise ValueError(f"sum_disjoint needs the same dtype and shape on every rank: {layouts}")
    owners = torch.from_numpy((array != 0).astype(np.int64)).to(_collective_device)
    dist.all_reduce(owners, op=dist.ReduceOp.SUM)
    if bool((owners > 1).any()):
        shared = int((owners > 1).sum())
        raise ValueError(f"sum_disjoint: {shared} entries are nonzero on more than one rank")
    total = torch.from_numpy(np.ascontiguousarray(array)).to(_collective_device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.cpu().numpy()


def _gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not active():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def check_identical(value: Any, what: str) -> None:
    """Raise ValueError on every rank unless all ranks pass an equal `value`.

    `what` names the value (in the plural) in the message.
    """
    check_agreement({what: value})


#: A value no rank can send: stands for a key that one rank's values lack.
_MISSING = object()


def check_agreement(values: Mapping[str, Any]) -> None:
    """Raise ValueError on every rank unless all ranks pass equal `values`.

    Keys name the values in the plural ("the model weights"); the message names those that
    differ, and the ranks whose values differ from rank 0's.
    """
    everyone = _gather(dict(values))
    first = everyone[0]
    differing = [r for r, other in enumerate(everyone) if other != first]
    if differing:
        names = [
            name
            for name in dict.fromkeys(key for other in everyone for key in other)
            if any(other.get(name, _MISSING) != first.get(name, _MISSING) for other in everyone)
        ]
        listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        raise ValueError(f"{listed} differ between rank 0 and rank(s) {differing}")


def run_checked(work: Callable[[], T], agreed: Callable[[T], Mapping[str, Any]] | None = None) -> T:
    """`work()` on this rank, made safe to combine with the other ranks' results.

    In a process group, a failure of any rank (in `work` or in `agreed`) is raised on every
    rank (`raise_if_any`); then, with `agreed`, every rank must get equal `agreed(result)`
    (`check_agreement`), e.g. digests of the model and data. Every rank must call this at the
    same point. Without a process group, just `work()` (and `agreed` is not computed).
    """
    if not active():
        return work()
    result, values, failure = None, {}, None
    try:
        result = work()
        if agreed is not None:
            values = agreed(result)
    except Exception as error:  # re-raised on every rank just below
        failure = error
    raise_if_any(failure)
    if agreed is not None:
        check_agreement(values)
    return result


def raise_if_any(error: BaseException | None) -> None:
    """Propagate a failure of one rank to all: collectives after it would otherwise hang.

    The failing rank re-raises its own exception; the others raise ValueError naming it.
    """
    messages = _gather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, message) for r, message in enumerate(messages) if message is not None]
    if failed:
        failing_rank, message = failed[0]
        raise ValueError(f"rank {failing_rank} failed: {message}")


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` (picklable) on every rank; `obj` itself without a process group."""
    if not active():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    """Wait until every rank gets here (no-op without a process group)."""
    if active():
        dist.barrier()


def shutdown() -> None:
    """Leave and destroy the process group, if any (safe to call more than once)."""
    global _collective_device
    if active():
        dist.destroy_process_group()
    _collective_device = torch.device("cpu")
