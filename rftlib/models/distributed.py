"""Data-parallel and sharded runs with ``torch.distributed``, launched by ``torchrun``.

Two kinds of parallel work in the study:

- **fine-tuning** one model on several devices: :func:`rftlib.models.finetune.finetune` already wraps the
  model in ``DistributedDataParallel`` when a process group is initialized; :func:`init_from_env`
  initializes it from the variables ``torchrun`` sets (``rft finetune``, :mod:`rftlib.book.finetune_ddp`);
  :func:`torchrun_command` and :func:`launch` start N such processes on this machine;
- **embarrassingly parallel job lists** (the (run, α) points of a WiSE-FT sweep, sharpness per run
  and α): :func:`run_sharded` gives rank r the jobs r, r+W, r+2W, … (:func:`shard`), each rank
  writes its rows to ``<out>.rank<r>.csv`` atomically, and after a barrier rank 0 merges them
  (:func:`merge_shards`) in the jobs' original order, so the merged file is byte for byte the file
  a single process writes with :func:`rftlib.files.io.atomic_write_csv`.

Communication is ``torch.distributed`` only (``nccl`` between GPUs, ``gloo`` on CPUs); the shard
files need a folder that every rank sees (one machine, or a shared file system).

Example:
    >>> shard(["a", "b", "c", "d", "e"], rank=1, world=2)
    ['b', 'd']
    >>> shard_path("book/results/sweep/wiseft.csv", 3).name
    'wiseft.rank3.csv'
    >>> info = init_from_env()          # no torchrun variables: a single process, no group
    >>> info.rank, info.world, is_main()
    (0, 1, True)
    >>> torchrun_command(2, ["-m", "rftlib.cli", "finetune"])[1:]
    ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m', 'rftlib.cli', 'finetune']
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import pandas as pd
import torch
import torch.distributed as dist

from rftlib.models.device import pick_device
from rftlib.errors import DataNotFoundError, ParameterError
from rftlib.files.io import atomic_path, atomic_write_csv
from rftlib.progress import bar

__all__ = [
    "DistInfo",
    "init_from_env",
    "cleanup",
    "is_initialized",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "shard",
    "shard_path",
    "run_sharded",
    "merge_shards",
    "ITEM_COLUMN",
    "launched_by_torchrun",
    "torchrun_command",
    "launch",
]

T = TypeVar("T")
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: column that carries each row's job position in the shard files (dropped when merging)
ITEM_COLUMN = "_item"


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world`` processes, its local rank on the machine,
    the backend of the process group (``None``: no group) and the device it should use."""

    rank: int
    world: int
    local_rank: int
    backend: str | None
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise ParameterError(f"environment variable {name}={value!r} must be an integer (torchrun sets it).") from None
    if v < 0:
        raise ParameterError(f"environment variable {name}={value!r} must be >= 0.")
    return v


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is up."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, and in a plain single process (the one that writes shared files)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if is_initialized():
        if dist.get_backend() == "nccl" and torch.cuda.is_available():
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _rank_device(device: str | torch.device, local: int) -> torch.device:
    """This rank's device: CUDA device ``local`` for ``"auto"``/``"cuda"`` when CUDA is there, else as asked."""
    req = str(device).lower()
    if req in ("auto", "cuda") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if local >= n:
            raise ParameterError(f"LOCAL_RANK={local} but this machine has {n} CUDA device(s): "
                                 f"use --nproc_per_node <= {n}.")
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    if req.startswith("cuda:") and torch.cuda.is_available():
        dev = pick_device(req)
        torch.cuda.set_device(dev)
        return dev
    return pick_device(device if req != "auto" else "cpu")


def init_from_env(backend: str | None = None, device: str | torch.device = "auto",
                  timeout_s: float | None = None) -> DistInfo:
    """Initialize the process group from ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

    Without those variables (a plain ``python`` run) no group is created and a single-process
    :class:`DistInfo` is returned, so the same script runs with and without ``torchrun``. Calling it
    again once a group is up returns the current state.

    Args:
        backend: ``"nccl"`` (default when this rank uses a CUDA device) or ``"gloo"`` (default on CPUs).
        device: ``"auto"`` (CUDA device ``LOCAL_RANK`` when CUDA is present, else the CPU), ``"cpu"``
            or ``"cuda"``; see :func:`rftlib.models.device.pick_device`.
        timeout_s: how long collective operations wait for a lagging rank (PyTorch's default if None).

    Raises:
        ParameterError: malformed variables, a rank outside the world, a local rank without a GPU,
            or ``nccl`` without CUDA.
    """
    if backend is not None and backend not in ("nccl", "gloo"):
        raise ParameterError(f"backend={backend!r} must be 'nccl', 'gloo' or None (choose by device).")
    if is_initialized():
        r, w = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", r))
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else pick_device(
            "cpu" if str(device) == "auto" else device)
        return DistInfo(r, w, local, dist.get_backend(), dev)
    present = [v for v in ENV_VARS if v in os.environ]
    if not present:
        return DistInfo(0, 1, 0, None, pick_device(device))
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise ParameterError(f"environment variables {missing} are missing (found {present}); launch with "
                             "`torchrun --nproc_per_node=N script.py ...`, which sets all of them.")
    r, w, local = (_env_int(v, os.environ[v]) for v in ENV_VARS)
    if w < 1 or r >= w:
        raise ParameterError(f"RANK={r} must be < WORLD_SIZE={w} (and WORLD_SIZE >= 1).")
    for v in ("MASTER_ADDR", "MASTER_PORT"):
        if v not in os.environ:
            raise ParameterError(f"environment variable {v} is missing; torchrun sets it (or export it yourself).")
    dev = _rank_device(device, local)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend == "nccl" and dev.type != "cuda":
        raise ParameterError(f"backend='nccl' needs CUDA devices; this rank runs on {dev}. Use backend='gloo'.")
    kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://", "rank": r, "world_size": w}
    if timeout_s is not None:
        kwargs["timeout"] = timedelta(seconds=timeout_s)
    if backend == "nccl":
        kwargs["device_id"] = dev
    dist.init_process_group(**kwargs)
    return DistInfo(r, w, local, backend, dev)


def launched_by_torchrun() -> bool:
    """Whether this process is a rank started by ``torchrun`` (its variables are set)."""
    return any(v in os.environ for v in ENV_VARS)


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The command that runs ``python ARGS`` as ``nproc`` ranks on this machine (``torch.distributed.run``,
    ``--standalone``: a free port, no rendezvous server).

    Raises:
        ParameterError: ``nproc`` below 1.
    """
    if nproc < 1:
        raise ParameterError(f"nproc={nproc} must be at least 1 (the number of processes)")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def launch(cmd: Sequence[str], cwd: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run ``cmd`` (from :func:`torchrun_command`) to its end; its output goes to this process's; the exit code."""
    return subprocess.run(list(cmd), cwd=cwd, env=None if env is None else dict(env)).returncode


def cleanup() -> None:
    """Destroy the process group (if any); call once at the end of a ``torchrun`` script."""
    if is_initialized():
        dist.destroy_process_group()


def _check_rank_world(r: int, w: int) -> None:
    for name, v in (("rank", r), ("world", w)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ParameterError(f"{name}={v!r} must be an integer.")
    if w < 1 or not 0 <= r < w:
        raise ParameterError(f"rank={r}, world={w}: need world >= 1 and 0 <= rank < world.")


def shard(items: Iterable[T], rank: int, world: int) -> list[T]:
    """Round-robin share of ``items`` for ``rank`` of ``world``: items ``rank, rank+world, …``.

    Deterministic (it depends only on the order of ``items``); the shards of all ranks partition the
    items, and their sizes differ by at most one.

    Example:
        >>> [shard(range(7), r, 3) for r in range(3)]
        [[0, 3, 6], [1, 4], [2, 5]]
    """
    _check_rank_world(rank, world)
    return list(items)[rank::world]


def shard_path(out_path: str | os.PathLike, rank: int) -> Path:
    """The shard file of ``rank`` beside ``out_path``: ``<stem>.rank<r>.csv``.

    Example:
        >>> shard_path("out/sweep.csv", 0).as_posix()
        'out/sweep.rank0.csv'
    """
    p = Path(out_path)
    return p.with_name(f"{p.stem}.rank{rank}.csv")


def _check_out(out_path: str | os.PathLike) -> Path:
    p = Path(out_path)
    if p.suffix != ".csv":
        raise ParameterError(f"out_path={str(out_path)!r} must end in .csv (a tidy results table).")
    return p


def _rows_of(result: Any, item: Any) -> list[dict[str, Any]]:
    if result is None:
        return []
    if isinstance(result, pd.DataFrame):
        rows = result.to_dict("records")
    elif isinstance(result, Mapping):
        rows = [dict(result)]
    elif isinstance(result, (list, tuple)):
        rows = [dict(r) for r in result]
    else:
        raise ParameterError(f"fn({item!r}) returned {type(result).__name__}; return a dict (one row), "
                             "a list of dicts, a DataFrame or None.")
    if any(ITEM_COLUMN in r for r in rows):
        raise ParameterError(f"fn({item!r}) returned a column {ITEM_COLUMN!r}, which run_sharded reserves.")
    return rows


def _merge_in_group(out: Path, r: int, w: int, keep_shards: bool) -> None:
    """All ranks wait; rank 0 merges and tells the others whether it could (an error on every rank)."""
    barrier()
    error: list[str | None] = [None]
    exc: Exception | None = None
    if r == 0:
        try:
            merge_shards(out, w, keep_shards=keep_shards)
        except Exception as e:  # noqa: BLE001 - re-raised below on every rank
            error = [f"{type(e).__name__}: {e}"]
            exc = e
    dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        if exc is not None:
            raise exc
        raise RuntimeError(f"rank 0 could not merge the shards of {out}: {error[0]}")


def run_sharded(items: Sequence[Any], fn: Callable[[Any], Any], out_path: str | os.PathLike, *,
                rank: int | None = None, world: int | None = None, keep_shards: bool = False,
                float_format: str = "%.6g", progress: bool = True, desc: str = "jobs") -> Path:
    """Run ``fn`` on this rank's share of ``items`` and merge every rank's rows into ``out_path``.

    Each rank computes ``fn(item)`` for the items of :func:`shard` (in order) and writes the rows,
    with their job position in a leading ``_item`` column, to :func:`shard_path` atomically. Then,
    inside a process group, all ranks wait at a barrier, rank 0 calls :func:`merge_shards`, and
    rank 0 tells the others whether the merge succeeded (a merge error is raised on every rank).
    The merged file equals, byte for byte, ``atomic_write_csv(out_path, pd.DataFrame(rows))`` of a
    single process that ran every item in order, provided every row has the same columns and a
    column holds values of one type (see :func:`merge_shards`).

    Without a process group, ``rank``/``world`` may be given by hand (independent jobs, e.g. an
    array job on a cluster): each writes its shard and only a world of 1 merges; merge later with
    :func:`merge_shards`.

    Args:
        items: the jobs, e.g. ``[(run, alpha), ...]``; only their order matters to the merge.
        fn: ``fn(item)`` returns one row (a dict), a list of rows, a DataFrame, or ``None``.
        out_path: the merged ``.csv`` file.
        rank, world: override the process group's (only without a group).
        keep_shards: keep the ``.rank<r>.csv`` files after merging; ``float_format``: as in
            :func:`rftlib.files.io.atomic_write_csv`; ``progress``, ``desc``: rank 0's bar.

    Returns:
        ``out_path`` (merged) or, for an unmerged independent job, this rank's shard file.
    """
    out = _check_out(out_path)
    items = list(items)
    if is_initialized():
        if (rank is not None and rank != dist.get_rank()) or (world is not None and world != dist.get_world_size()):
            raise ParameterError(f"rank={rank}, world={world} differ from the process group's "
                                 f"({dist.get_rank()}, {dist.get_world_size()}); leave them None.")
        r, w = dist.get_rank(), dist.get_world_size()
    else:
        r, w = (0 if rank is None else rank), (1 if world is None else world)
    _check_rank_world(r, w)
    mine = shard(list(enumerate(items)), r, w)
    rows: list[dict[str, Any]] = []
    for i, item in bar(mine, desc=f"{desc} (rank {r}/{w})", disable=not progress or r != 0, unit="job"):
        rows += [{ITEM_COLUMN: i, **row} for row in _rows_of(fn(item), item)]
    part = shard_path(out, r)
    atomic_write_csv(part, pd.DataFrame(rows) if rows else pd.DataFrame(columns=[ITEM_COLUMN]), float_format)
    if is_initialized():
        _merge_in_group(out, r, w, keep_shards)
        return out
    if w == 1:
        return merge_shards(out, 1, keep_shards=keep_shards)
    return part


def merge_shards(out_path: str | os.PathLike, world: int, keep_shards: bool = False) -> Path:
    """Merge ``<stem>.rank0.csv`` … ``<stem>.rank<world-1>.csv`` into ``out_path`` (atomically).

    Rows are put back in the order of their ``_item`` column (stable within a job), which is then
    dropped. The cells are copied as text, never re-parsed as numbers, so each value keeps exactly
    the bytes its rank wrote. The result equals a single process's file when every row has the same
    columns and a column holds values of one type (a column that is an integer in one shard and a
    float in another, e.g. an int that is missing in some rows, would be formatted differently).

    Args:
        out_path: the merged ``.csv`` file.
        world: the number of shards.
        keep_shards: keep the shard files (default: delete them after a successful merge).

    Raises:
        DataNotFoundError: a shard file is missing (a rank has not finished, or failed).
        ParameterError: shards with different columns, or a file that is not a shard.
    """
    out = _check_out(out_path)
    _check_rank_world(0, world)
    parts = [shard_path(out, r) for r in range(world)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise DataNotFoundError(f"cannot merge {out.name}: shard file(s) {missing} missing in {out.parent} "
                                f"(expected {world}); a rank has not finished or failed. Re-run those ranks.")
    frames, columns = [], None
    for p in parts:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, na_filter=False)
        if not len(df.columns) or df.columns[0] != ITEM_COLUMN:
            raise ParameterError(f"{p.name} is not a shard file of run_sharded (its first column is not {ITEM_COLUMN!r}).")
        if len(df) == 0:
            continue
        cols = list(df.columns[1:])
        if columns is None:
            columns = cols
        elif cols != columns:
            raise ParameterError(f"shards of {out.name} have different columns: {columns} vs {cols} in {p.name}; "
                                 "make fn return rows with the same keys, in the same order.")
        frames.append(df)
    if not frames:
        atomic_write_csv(out, pd.DataFrame())
    else:
        merged = pd.concat(frames, ignore_index=True)
        order = merged[ITEM_COLUMN].astype(int)
        merged = merged.iloc[order.argsort(kind="stable").to_numpy()].drop(columns=[ITEM_COLUMN])
        with atomic_path(out) as tmp:
            merged.to_csv(tmp, index=False, lineterminator="\n")
    if not keep_shards:
        for p in parts:
            p.unlink(missing_ok=True)
    stray = shard_path(out, world)
    if stray.is_file():
        warnings.warn(f"{stray.name} exists beside {out.name} but is not one of the {world} shards merged "
                      "(a leftover of a run with more ranks?); it was ignored.", stacklevel=2)
    return out
