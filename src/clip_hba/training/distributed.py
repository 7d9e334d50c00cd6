"""Data-parallel training over processes (torch.distributed): ranks, launching, and the two
collectives a trainer needs.

A run on N processes computes what the same run on one process computes. Every process draws
the same batches (the same seeded generator); each runs the expensive part -- the concept
tower, from its share of the frozen-prefix or feature cache -- on the rows it owns (row k
belongs to rank k mod N), and `gather_rows` hands every process the whole batch. The rest --
the head, the MEG model's layer mixing, noise and RDMs, and the loss, none of which separates
over rows (RDMs compare every pair of the batch) -- runs on the whole batch in every process.
`reduce_gradients` then sums the gradients, so every process takes the same optimizer step.

Why not `torch.nn.parallel.DistributedDataParallel`: the trainers call their models through
cache entry points (hidden states entering a block, cached layer features), which DDP's
forward hook cannot wrap, and a loss over the pairs of the whole batch is not the mean of
per-process losses, which is what DDP's averaging assumes. Here the loss is divided by N and
the gradient flowing into a process's own rows multiplied by N (`gather_rows`), so that the
sum over processes is exactly the one-process gradient, for any loss.

Processes come from `launch` (``--devices N``: N local processes, one GPU each on CUDA, else
the CPU with the gloo backend) or from ``torchrun`` / ``accelerate launch`` (their
environment variables: `join`). Only rank 0 writes the run directory; the other ranks keep
their copies in a private temporary folder (`rank_run_dir`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from clip_hba._validation import InputError
from clip_hba.training.runs import RunDir

__all__ = [
    "Ranks",
    "agree",
    "barrier",
    "broadcast_parameters",
    "gather_rows",
    "join",
    "launch",
    "rank_run_dir",
    "reduce_gradients",
]


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of a run (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run directory and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def owners(self, rows: torch.Tensor) -> torch.Tensor:
        """The rank that computes each of ``rows`` (row k: rank k mod world), same shape."""
        return torch.as_tensor(rows) % self.world

    def own(self, rows: torch.Tensor) -> torch.Tensor:
        """Those of ``rows`` this process computes, in their order."""
        rows = torch.as_tensor(rows)
        return rows if not self.active else rows[self.owners(rows) == self.rank]


def join(device: torch.device | None = None) -> Ranks:
    """This process's ranks: the process group already started (by `launch`, or by torchrun /
    accelerate, whose environment variables start one here), else one process.

    ``device`` (where the model runs) picks the backend: NCCL for CUDA, gloo for the CPU.
    """
    if dist.is_available() and not dist.is_initialized() and int(_env("WORLD_SIZE", "1")) > 1:
        cuda = _uses_cuda(device)
        if cuda:  # one GPU per local process: "cuda" / "auto" mean this one
            torch.cuda.set_device(int(_env("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")  # env://: RANK, WORLD_SIZE, ...
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(_env("LOCAL_RANK", "0")))


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _uses_cuda(device: torch.device | None) -> bool:
    """Whether the processes run on GPUs; refuses one GPU named for several processes."""
    if device is None:
        return torch.cuda.is_available()
    if device.type == "cuda" and device.index is not None and int(_env("WORLD_SIZE", "1")) > 1:
        raise InputError(
            f"--device {device} names one GPU for several processes; give --device cuda "
            "(process k uses GPU k of its machine)."
        )
    return device.type == "cuda"


def _backend_device() -> torch.device:
    """Where the collectives' buffers live: the process's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------------- collectives


def gather_rows(
    local: torch.Tensor, owners: torch.Tensor, ranks: Ranks, dim: int = 0
) -> torch.Tensor:
    """The whole batch on every process from each process's own rows.

    Parameters
    ----------
    local : Tensor
        This process's rows (those ``owners`` gives to it, in batch order) along ``dim``.
    owners : Tensor, shape (n,)
        The rank of every row of the batch (`Ranks.owners`).
    ranks : Ranks
    dim : int
        The axis of rows (MEG layer features: 1, for (L, B, P)).

    Returns
    -------
    Tensor, the n rows in batch order along ``dim``. If ``local`` has a gradient, it flows
    back into this process's rows multiplied by the number of processes (see the module
    docstring); the other rows are constants here.
    """
    if not ranks.active:
        return local
    moved = local.movedim(dim, 0).float().to(_backend_device()).contiguous()
    counts = torch.bincount(owners, minlength=ranks.world).tolist()
    padded = moved.new_zeros((max(counts), *moved.shape[1:]))
    padded[: len(moved)] = moved.detach()
    parts = [torch.empty_like(padded) for _ in range(ranks.world)]
    dist.all_gather(parts, padded)
    if moved.requires_grad:  # the value of `moved`, and N x the gradient it receives
        parts[ranks.rank] = moved.detach() + ranks.world * (moved - moved.detach())
    pieces = [part[: counts[r]] for r, part in enumerate(parts)]
    order = torch.cat([torch.nonzero(owners == r).flatten() for r in range(ranks.world)])
    whole = torch.cat(pieces)[torch.argsort(order.to(pieces[0].device))]
    return whole.movedim(0, dim).to(device=local.device, dtype=local.dtype)


def reduce_gradients(parameters: Sequence[torch.nn.Parameter], ranks: Ranks) -> None:
    """Sum the gradients of ``parameters`` over the processes, in place (one flat all-reduce).

    A parameter without a gradient in this process (no own row in the batch) counts as zero;
    one without a gradient in any process keeps none, so the optimizer skips it as one
    process would.
    """
    if not ranks.active:
        return
    parameters = list(parameters)
    device = _backend_device()
    has = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32, device=device)
    dist.all_reduce(has)
    used = [p for p, count in zip(parameters, has.tolist(), strict=True) if count > 0]
    for param in used:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    if not used:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in used]).to(device)
    dist.all_reduce(flat)
    offset = 0
    for param in used:
        size = param.grad.numel()
        param.grad.copy_(flat[offset : offset + size].view_as(param.grad))
        offset += size


def broadcast_parameters(parameters: Sequence[torch.nn.Parameter], ranks: Ranks) -> None:
    """Every process starts from rank 0's values of ``parameters``."""
    if ranks.active:
        with torch.no_grad():
            for param in parameters:
                dist.broadcast(param.data, src=0)


def agree(flag: bool, ranks: Ranks) -> bool:
    """Rank 0's ``flag`` in every process (decisions that must not diverge: stop, keep)."""
    if not ranks.active:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int64, device=_backend_device())
    dist.broadcast(value, src=0)
    return bool(value.item())


def barrier(ranks: Ranks) -> None:
    """Wait for every process (e.g. until rank 0 has checked or written the run)."""
    if ranks.active:
        dist.barrier()


# ---------------------------------------------------------------------------- run directories


@contextlib.contextmanager
def rank_run_dir(run: RunDir, ranks: Ranks, resume: bool) -> Iterator[RunDir]:
    """The run directory a process writes: rank 0 the run's own; the others a private
    temporary copy (of the checkpoint, to resume), removed at the end.

    Every process runs the same lifecycle (saving and reloading its best weights, its
    checkpoints), so each needs a run directory; only rank 0's is the user's.
    """
    if ranks.main:
        yield run
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"clip-hba-rank{ranks.rank}-"))
    try:
        if resume:
            shutil.copytree(run.path, scratch / "run", ignore=shutil.ignore_patterns("cache"))
        yield RunDir(scratch / "run")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------- launching


def launch(
    function: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    devices: int,
    device: torch.device | None = None,
) -> None:
    """Run ``function(*args, **kwargs)`` in ``devices`` local processes with a process group.

    CUDA: one GPU each (``cuda:<rank>``) with NCCL, which needs ``devices`` GPUs; else the
    CPU with gloo and the CPU threads shared out. The first error of any process is raised
    here (an `InputError` as one; anything else naming its rank), after the others stop.
    """
    if devices < 1:
        raise InputError(f"Invalid value for '--devices': expected >= 1, got {devices}.")
    cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
    if cuda and device is not None and device.index is not None:
        raise InputError(
            f"--device {device} names one GPU for {devices} processes; give --device cuda "
            "(process k uses GPU k)."
        )
    if cuda and torch.cuda.device_count() < devices:
        raise InputError(
            f"--devices {devices}, but this machine has {torch.cuda.device_count()} GPU(s)."
        )
    context = _context(function, cuda)
    errors = context.SimpleQueue()
    port = _free_port()
    environ = dict(os.environ)  # a fork server's children would have its environment
    threads = max(1, torch.get_num_threads() // devices)
    processes = [
        context.Process(
            target=_worker,
            args=(rank, devices, port, threads, cuda, errors, function, args, kwargs, environ),
            daemon=False,
        )
        for rank in range(devices)
    ]
    for process in processes:
        process.start()
    try:
        _wait(processes)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    if not errors.empty():
        rank, kind, message = errors.get()
        if kind == "InputError":
            raise InputError(message)
        raise RuntimeError(f"Process {rank} of {devices} failed: {kind}: {message}")
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {devices} training processes failed ({failed}).")


# What numpy, torch, transformers, huggingface_hub, peft and the BLAS/OpenMP runtimes may read from
# the environment when imported; a fork server started under other values is not used.
_IMPORT_TIME_PREFIXES = (
    "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "PEFT_", "SAFETENSORS_", "TOKENIZERS_", "TORCH",
    "PYTORCH_", "CUDA_", "NCCL_", "GLOO_", "OMP_", "KMP_", "MKL_", "OPENBLAS_", "XDG_", "LD_",
    "NPY_", "NUMPY_", "PYTHON",
)  # fmt: skip
_server_settings: dict[str, str] | None = None  # those of the fork server, once started


def _import_time_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_IMPORT_TIME_PREFIXES)}


def _context(function: Callable[..., Any], cuda: bool) -> Any:
    """Processes forked from a server that has imported the trainer once, else spawned.

    A spawned process imports torch, transformers and peft afresh: seconds each, at every
    launch. The fork server imports them once per session, so later launches cost nothing.
    Its children get the launch's environment (`_worker`), but keep what the libraries read
    from it at import time (``HF_HUB_OFFLINE``, ``HF_HOME``, ``OMP_*``), so a launch under other
    such settings than the server's is spawned instead. Only on Linux (macOS's system
    libraries are not fork-safe) and only for the CPU: forking after an import that touched
    CUDA would break the workers.
    """
    global _server_settings
    spawn = torch.multiprocessing.get_context("spawn")
    if cuda or not sys.platform.startswith("linux"):
        return spawn
    forkserver = torch.multiprocessing.get_context("forkserver")
    if _server_settings is None:
        _server_settings = _import_time_settings()
        forkserver.set_forkserver_preload([function.__module__])
    return forkserver if _import_time_settings() == _server_settings else spawn


def _wait(processes: list) -> None:
    """Join the processes; when one fails, stop the others (they would wait for it forever)."""
    while any(p.is_alive() for p in processes):
        for process in processes:
            process.join(timeout=0.2)
            if process.exitcode not in (None, 0):
                for other in processes:
                    if other.is_alive():
                        other.terminate()
                return


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(
    rank: int,
    world: int,
    port: int,
    threads: int,
    cuda: bool,
    errors: Any,
    function: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    environ: dict[str, str],
) -> None:
    os.environ.clear()
    os.environ.update(environ)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(threads)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        function(*args, **kwargs)
    except BaseException as err:
        errors.put((rank, type(err).__name__, str(err)[:2000]))  # (a pipe holds 64 KiB)
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()
