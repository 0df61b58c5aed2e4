"""Distributed helpers: no-ops in one process, real reductions with gloo and 2 processes."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from utils import distributed as du


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = du.init_distributed("cpu")
    assert info.world_size == 1 and info.rank == 0 and info.is_main and not info.distributed
    assert du.get_rank() == 0 and du.get_world_size() == 1 and du.is_main_process()
    du.barrier()
    assert du.all_reduce_mean(3.0) == 3.0
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(du.all_reduce_sum(t), t)
    assert du.all_gather_object({"a": 1}) == [{"a": 1}]
    assert du.broadcast_object(5) == 5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = du.init_distributed("cpu")
    try:
        mean = du.all_reduce_mean(float(rank + 1))                     # (1 + 2) / 2
        total = du.all_reduce_sum(torch.tensor([rank, 10.0]))          # [0 + 1, 20]
        gathered = du.all_gather_object(f"r{rank}")
        value = du.broadcast_object(f"from{rank}", src=0)
        du.barrier()
        torch.save({"info": (info.rank, info.world_size, info.backend), "mean": mean,
                    "total": total, "gathered": gathered, "value": value},
                   os.path.join(out_dir, f"{rank}.pt"))
    finally:
        du.cleanup_distributed()


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_gloo(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        r = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert r["info"] == (rank, 2, "gloo")
        assert r["mean"] == 1.5
        assert torch.equal(r["total"], torch.tensor([1.0, 20.0]))
        assert r["gathered"] == ["r0", "r1"] and r["value"] == "from0"
