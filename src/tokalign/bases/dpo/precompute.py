"""Per-token values of frozen models, computed once per dataset by every process and cached on disk.

Token-level DPO variants read, for each completion token, values from frozen models (reference
and guidance log-probs, self-generated token rewards). With several processes each one computes
a share of the batches and the shares are gathered, so the precompute is as parallel as
training; under ZeRO-3, where every forward gathers the weights from all processes, they also
run their forwards in lockstep. The cache is keyed by content (weights, tokens, settings), not
by a dataset fingerprint that a rebuilt dataset does not keep, and is published atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tokalign.artifacts.files import atomic_dir
from tokalign.artifacts.tracking import progress

Columns = dict[str, list[torch.Tensor]]  # column -> one 1-D tensor per example


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(value: Any) -> list[Any]:
    import torch.distributed as dist

    rank, world = _world()
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


def _barrier() -> None:
    import torch.distributed as dist

    if _world()[1] > 1:
        dist.barrier()


@contextlib.contextmanager
def _whole(tensor: torch.Tensor):
    """A ZeRO-3 partitioned parameter gathered on every process for the block; others as they are."""
    if hasattr(tensor, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
            yield
    else:
        yield


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over a model's parameters and buffers (names, dtypes, values).

    Under ZeRO-3 each partitioned parameter is gathered in turn (every process must call this),
    so the hash, and the cache key built on it, equals the one of the whole model in one process.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted([*model.named_parameters(), *model.named_buffers()], key=lambda item: item[0]):
        with _whole(tensor):
            data = tensor.detach().reshape(-1).contiguous().cpu()
            digest.update(f"{name}:{data.dtype}:{data.numel()}".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def compute_sharded(
    chunks: Sequence[Sequence[int]],
    compute: Callable[[Sequence[int]], Columns],
    *,
    lockstep: bool,
    desc: str = "per-token values",
) -> Columns:
    """`compute(chunk)` for every chunk, on every process, in chunk order.

    Process r computes chunks r, r + W, r + 2W, ...; after each round the results are gathered,
    so every process ends with all of them. `lockstep=True` (ZeRO-3) makes every process call
    `compute` in every round: one with no chunk left recomputes the last chunk and drops it.
    """
    rank, world = _world()
    columns: Columns = {}
    bar = progress(len(chunks), desc, unit="batch", disable=rank != 0)
    for start in range(0, len(chunks), world):
        mine = start + rank
        result = None
        if mine < len(chunks):
            result = compute(chunks[mine])
        elif lockstep:
            compute(chunks[-1])
        for part in _all_gather(result):
            for name, rows in (part or {}).items():
                columns.setdefault(name, []).extend(rows)
        bar.update(min(world, len(chunks) - start))
    bar.close()
    return columns


def cached_columns(path: Path | None, compute: Callable[[], Columns]):
    """The columns as a `datasets.Dataset` (float32 lists), from `path` when it holds them.

    Every process takes part in `compute` when any of them lacks the entry; then each node's
    first process publishes it (atomically; an entry another process published first is kept),
    so a cache directory that nodes do not share works too.
    """
    from datasets import Dataset, Features, Value
    from datasets import Sequence as ListOf

    def to_dataset(columns: Columns) -> Dataset:
        features = Features({name: ListOf(Value("float32")) for name in columns})
        return Dataset.from_dict(
            {name: [row.tolist() for row in rows] for name, rows in columns.items()}, features=features
        )

    if path is None:
        return to_dataset(compute())
    present = (path / "dataset_info.json").exists()
    if not all(_all_gather(present)):
        columns = compute()
        if not present and os.environ.get("LOCAL_RANK", "0") == "0":
            atomic_dir(path, lambda tmp: to_dataset(columns).save_to_disk(str(tmp)), replace=False)
        _barrier()
    return Dataset.load_from_disk(str(path))
