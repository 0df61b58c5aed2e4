"""torchrun / DDP helpers that are no-ops in a single process.

``torchrun --nproc_per_node N train.py ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and starts the
process group (NCCL on CUDA, gloo on CPU). Without them (plain ``python train.py``) nothing
is initialised and every helper acts as for a world of one process.

A broken environment is one :class:`UserError` that names the variables read and what to do
(:func:`distributed_env`): ``WORLD_SIZE`` > 1 without ``RANK`` or ``MASTER_ADDR`` (variables left
over from another job in a shell without torchrun), values that are not numbers, a rank outside
the world. The processes must meet within ``VIPMT_RENDEZVOUS_TIMEOUT`` seconds (default
:data:`DEFAULT_RENDEZVOUS_TIMEOUT_S`): stale variables that name a world nobody else joins end
with an error naming them, not a wait of torch's 30 minutes. (Collectives after that keep torch's
default timeout: rank 0 may write a checkpoint while the others wait.)
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Optional

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from utils.runtime import UserError

__all__ = [
    "DistInfo",
    "DistEnv",
    "ENV_VARIABLES",
    "RENDEZVOUS_TIMEOUT_ENV",
    "DEFAULT_RENDEZVOUS_TIMEOUT_S",
    "distributed_env",
    "describe_environment",
    "rendezvous_timeout",
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


# What torchrun sets for its workers and init_distributed reads.
ENV_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
RENDEZVOUS_TIMEOUT_ENV = "VIPMT_RENDEZVOUS_TIMEOUT"
DEFAULT_RENDEZVOUS_TIMEOUT_S = 120.0     # the processes of one job start within seconds of each other
UNSET_ADVICE = ("If no torchrun started this process, they are left over from another job: unset them "
                "(unset " + " ".join(ENV_VARIABLES) + ") to run as one process, or start the script with "
                "torchrun (torchrun --nproc_per_node N ...)")


@dataclass(frozen=True)
class DistEnv:
    """The torchrun variables of this process, checked (:func:`distributed_env`)."""
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0


def describe_environment() -> str:
    """What this process read, for the messages: ``WORLD_SIZE=2, RANK=0, MASTER_ADDR=node1,
    MASTER_PORT=29500 (LOCAL_RANK not set; not started by torchrun: no TORCHELASTIC_RUN_ID)``."""
    variables = {name: os.environ[name] for name in ENV_VARIABLES if name in os.environ}
    unset = [name for name in ENV_VARIABLES if name not in variables]
    text = ", ".join(f"{name}={value}" for name, value in variables.items()) or "none of " + ", ".join(ENV_VARIABLES)
    notes = ([f"{', '.join(unset)} not set"] if unset and variables else [])
    if variables:
        notes.append("started by torchrun" if "TORCHELASTIC_RUN_ID" in os.environ
                     else "not started by torchrun: no TORCHELASTIC_RUN_ID")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _environment_error(problem: str) -> UserError:
    return UserError(f"broken distributed environment: {problem}. This process read {describe_environment()}. "
                     f"{UNSET_ADVICE}")


def _int_variable(name: str, default: int, minimum: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _environment_error(f"{name}={text!r} is not an integer") from None
    if value < minimum:
        raise _environment_error(f"{name}={value}: expected an integer >= {minimum}")
    return value


def distributed_env() -> DistEnv:
    """This process's place in a torchrun job, from the environment (a world of one without it).

    UserError, naming the variables read, when they cannot describe a job: WORLD_SIZE or RANK not
    an integer, a rank outside the world, or WORLD_SIZE > 1 without RANK, MASTER_ADDR or MASTER_PORT.
    """
    world_size = _int_variable("WORLD_SIZE", 1, 1)
    rank = _int_variable("RANK", 0, 0)
    if rank >= world_size:
        raise _environment_error(f"RANK={rank} is not below WORLD_SIZE={world_size}"
                                 + ("" if "WORLD_SIZE" in os.environ else " (WORLD_SIZE not set)"))
    if world_size > 1:
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            names = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
            raise _environment_error(f"WORLD_SIZE={world_size} asks for {world_size} processes, but {names} "
                                     f"{'is' if len(missing) == 1 else 'are'} not set (torchrun sets all of them)")
        _int_variable("MASTER_PORT", 0, 1)
    local_rank = _int_variable("LOCAL_RANK", rank, 0) if world_size > 1 else 0
    return DistEnv(world_size=world_size, rank=rank, local_rank=local_rank)


def rendezvous_timeout() -> float:
    """Seconds the processes of a job have to meet: ``VIPMT_RENDEZVOUS_TIMEOUT`` or the default."""
    text = os.environ.get(RENDEZVOUS_TIMEOUT_ENV)
    if text is None or not text.strip():
        return DEFAULT_RENDEZVOUS_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UserError(f"{RENDEZVOUS_TIMEOUT_ENV}={text!r}: expected a number of seconds > 0 (default "
                        f"{DEFAULT_RENDEZVOUS_TIMEOUT_S:g})")
    return value


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when absent); UserError when the environment is broken."""
    return distributed_env().world_size


def env_rank() -> int:
    """RANK set by torchrun (0 when absent): known before the process group starts."""
    return distributed_env().rank


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Start the process group from the torchrun environment, or do nothing in one process.

    ``device_type`` 'cuda' uses NCCL and binds this process to GPU ``LOCAL_RANK``;
    anything else uses gloo. UserError (naming the variables read) when the environment is broken
    or the processes do not meet within :func:`rendezvous_timeout` seconds.
    """
    env = distributed_env()
    if env.world_size <= 1:
        return DistInfo()
    rank, world_size, local_rank = env.rank, env.world_size, env.local_rank
    timeout = rendezvous_timeout()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        check_gpus_per_process(_int_variable("LOCAL_WORLD_SIZE", world_size, 1))
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        store = _meet(rank, world_size, timeout)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size,
                                timeout=default_pg_timeout)
    logger.debug("process group started: rank %d / %d (%s)", rank, world_size, backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def _meet(rank: int, world_size: int, timeout_s: float) -> "dist.Store":
    """The store of the process group, once every process of the world has reached it (within
    ``timeout_s``); UserError naming the variables read when they do not."""
    timeout = timedelta(seconds=timeout_s)
    logger.info("waiting up to %g s for the %d processes of the job (%s)", timeout_s, world_size,
                describe_environment())
    # torchrun keeps one store server for all restarts (TCP store sharing) and torch's env://
    # rendezvous adds no per-restart prefix, so a restarted worker can read the address a dead
    # worker published and fail to connect (pytorch/pytorch#135712). On one node every worker
    # has the same restart count: the keys of a restart get their own prefix.
    restart = _single_node_restart()
    suffix = f"/restart_{restart}" if restart else ""
    try:
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
        # Each process checks in; the wait names a missing one after timeout_s (the process group's own
        # connection would wait torch's default of 30 minutes).
        arrivals = dist.PrefixStore(f"vipmt_arrivals{suffix}", store)
        arrivals.set(str(rank), "1")
        arrivals.wait([str(r) for r in range(world_size)], timeout)
    except (RuntimeError, ValueError, OSError) as exc:      # torch's DistStoreError / DistNetworkError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(f"the {world_size} processes of this job did not meet within {timeout_s:g} s ({reason}). "
                        f"This process read {describe_environment()}. {UNSET_ADVICE}; if the other processes "
                        f"are only slow to start, raise {RENDEZVOUS_TIMEOUT_ENV} (seconds, now "
                        f"{timeout_s:g})") from None
    store.set_timeout(default_pg_timeout)
    return dist.PrefixStore(f"default_pg{suffix}", store)


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
