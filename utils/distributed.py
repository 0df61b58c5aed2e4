"""torchrun / DDP helpers that are no-ops in a single process.

``torchrun --nproc_per_node N train.py ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and starts the
process group (NCCL on CUDA, gloo on CPU). Without them (plain ``python train.py``) nothing
is initialised and every helper acts as for a world of one process.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from utils.runtime import UserError

__all__ = [
    "DistInfo",
    "env_world_size",
    "env_rank",
    "init_distributed",
    "check_gpus_per_process",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_reduce_mean",
    "all_reduce_sum",
    "all_gather_object",
    "broadcast_object",
    "cleanup_distributed",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """RANK set by torchrun (0 when absent): known before the process group starts."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Start the process group from the torchrun environment, or do nothing in one process.

    ``device_type`` 'cuda' uses NCCL and binds this process to GPU ``LOCAL_RANK``;
    anything else uses gloo.
    """
    world_size = env_world_size()
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        check_gpus_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        restart = _single_node_restart()
        if restart:
            # torchrun keeps one store server for all restarts (TCP store sharing) and torch's env://
            # rendezvous adds no per-restart prefix, so a restarted worker can read the address a dead
            # worker published and fail to connect (pytorch/pytorch#135712). On one node every worker
            # has the same restart count: the keys of this restart get their own prefix.
            store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=default_pg_timeout))
            store.set_timeout(default_pg_timeout)
            dist.init_process_group(backend=backend, store=dist.PrefixStore(f"default_pg/restart_{restart}", store),
                                    rank=rank, world_size=world_size)
        else:
            dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    logger.debug("process group started: rank %d / %d (%s)", rank, world_size, backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def _single_node_restart() -> int:
    """torchrun's restart count (0: first start) when its agent shares its store with the workers of
    one node; 0 otherwise (several nodes may count restarts differently: set
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun there, docs/cluster.md)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or os.environ.get("GROUP_WORLD_SIZE") != "1":
        return 0
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def check_gpus_per_process(local_processes: int) -> None:
    """UserError unless this machine has a GPU for each of its ``local_processes`` processes
    (checked before the process group starts, identically in every process, so none waits for the
    others in vain)."""
    visible = torch.cuda.device_count()
    if local_processes > visible:
        raise UserError(f"torchrun started {local_processes} processes on this machine but only {visible} GPU(s) "
                        f"are visible, and each process needs its own GPU: use --nproc_per_node {visible}, "
                        f"or --device cpu to run the processes on the CPU (gloo)")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _reduce(value: Any, op: str) -> Any:
    is_tensor = isinstance(value, torch.Tensor)
    tensor = value.detach().clone() if is_tensor else torch.tensor(float(value), dtype=torch.float64)
    if is_distributed():
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        if op == "mean":
            tensor = tensor / dist.get_world_size()
    if is_tensor:
        return tensor.to(value.device)
    return float(tensor.item())


def all_reduce_mean(value: Any) -> Any:
    """Mean over processes of a tensor (returned as tensor) or a number (returned as float)."""
    return _reduce(value, "mean")


def all_reduce_sum(value: Any) -> Any:
    """Sum over processes of a tensor or a number."""
    return _reduce(value, "sum")


def all_gather_object(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every process."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
