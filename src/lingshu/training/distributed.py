"""Multi-process data-parallel training with torch.distributed (DDP).

Two ways to start the processes, one code path after that:

* ``lingshu train DATA --devices N`` calls :func:`launch`, which spawns N local processes and
  describes the process group to each through the same environment variables torchrun sets;
* ``torchrun --nproc_per_node N -m lingshu train DATA`` sets ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` itself.

Every process then runs the same training function, which joins the group with
:func:`process_group` (gloo on CPU, NCCL with one GPU per rank on CUDA).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException


def env_world_size() -> int:
    """Number of processes the environment (torchrun or :func:`launch`) says take part."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """This process's global rank according to the environment (0 outside a group)."""
    return int(os.environ.get("RANK", "0"))


def env_local_rank() -> int:
    """This process's rank on its machine according to the environment (its GPU index)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Processes in the current process group (1 when none is initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Rank in the current process group (0 when none is initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes checkpoints and prints progress."""
    return rank() == 0


def check_batch_size(batch_size: int, n_processes: int) -> None:
    """Each process takes an equal contiguous share of the global batch: it must divide evenly."""
    if batch_size % n_processes:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {n_processes} training processes "
            "(--devices / --nproc_per_node); choose a multiple of the process count"
        )


def shard(size: int, part: int, n_parts: int) -> slice:
    """The contiguous slice of ``range(size)`` that process ``part`` of ``n_parts`` works on."""
    per = size // n_parts
    return slice(part * per, (part + 1) * per)


def mean_over_ranks(value: float, device: torch.device) -> float:
    """Average a Python number over all ranks (identity without a process group)."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world_size()


def barrier() -> None:
    """Wait until every rank reaches this point (no-op without a process group)."""
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join the process group the environment describes, for the duration of the block.

    Yields the device this rank trains on: ``cuda:LOCAL_RANK`` for CUDA (one GPU per rank),
    else ``device`` unchanged. Without ``WORLD_SIZE > 1``, or when a group already exists
    (the caller owns it), this does nothing.
    """
    if env_world_size() <= 1 or dist.is_initialized():
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", env_local_rank())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, init_method="env://", rank=env_rank(), world_size=env_world_size())
    try:
        yield device
    finally:
        dist.destroy_process_group()


def check_device_count(n_processes: int, device: torch.device) -> None:
    """CUDA training needs one GPU per process; CPU processes share the cores."""
    if device.type == "cuda" and torch.cuda.device_count() < n_processes:
        raise ValueError(
            f"--devices {n_processes} needs {n_processes} GPUs, found {torch.cuda.device_count()}"
        )


def free_port() -> int:
    """A TCP port on localhost that is free right now (for the rendezvous of local processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(function: Callable, n_processes: int, *args) -> None:
    """Run ``function(*args)`` in ``n_processes`` new local processes forming one process group.

    Returns when all have finished. If a process fails, the others are stopped and the first
    exception raised in a process is raised here with its own type (so a ``ValueError`` about
    bad input stays a ``ValueError``). ``function`` and ``args`` must be picklable.
    """
    if n_processes < 1:
        raise ValueError(f"--devices must be >= 1, got {n_processes}")
    errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(_worker, args=(n_processes, free_port(), errors, function, args), nprocs=n_processes)
    except ProcessException:
        if not errors.empty():
            raise errors.get() from None
        raise


def _worker(local_rank: int, n_processes: int, port: int, errors, function: Callable, args: tuple) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(n_processes),
        LOCAL_WORLD_SIZE=str(n_processes),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    # The processes share this machine's cores: without this each would start one thread per core.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // n_processes))
    try:
        function(*args)
    except Exception as error:
        with contextlib.suppress(Exception):  # an unpicklable exception still fails the process below
            errors.put(error)
        raise
