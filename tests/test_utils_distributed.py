"""Process set-up: the half-precision dtype per device, rank/world fallback, the line a joining node prints."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from easydict import EasyDict

from backbones.iresnet import resolve_amp_dtype
from training import build_grad_scaler
from utils.utils_distributed import amp_dtype, cleanup, rank_and_world, setup


@pytest.mark.parametrize("device, dtype", [("cuda", torch.float16), ("cpu", torch.bfloat16),
                                           ("xpu", torch.bfloat16), (torch.device("cpu"), torch.bfloat16)])
def test_amp_dtype_float16_only_where_a_loss_scaler_runs(device, dtype):
    assert amp_dtype(device) == dtype
    assert resolve_amp_dtype(torch.device(device).type, None) == dtype      # the backbones' autocast
    if torch.device(device).type != "cuda" or torch.cuda.is_available():   # GradScaler turns itself off without CUDA
        assert build_grad_scaler(EasyDict(fp16=True), torch.device(device)).is_enabled() == (dtype == torch.float16)


def test_rank_and_world_given_else_the_process_groups():
    assert rank_and_world() == (0, 1)                     # no process group here
    assert rank_and_world(2, 5) == (2, 5)
    assert rank_and_world(world_size=3) == (0, 3)


def _setup_worker(rank: int, port: int, root: str) -> None:
    """One "node" of a 2-node run with one process each: the env a launcher sets, then setup()."""
    for key in ("GROUP_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_USE_AGENT_STORE"):
        os.environ.pop(key, None)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK="0", ARCFACE_DEVICE="cpu")
    with open(Path(root, f"stderr{rank}.txt"), "w") as f:
        os.dup2(f.fileno(), 2)
        info = setup()
        cleanup(info)


@pytest.mark.timeout(120)
def test_the_second_node_prints_one_line_saying_it_joined(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_setup_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    joined = [line for line in (tmp_path / "stderr1.txt").read_text().splitlines() if "joined" in line]
    assert joined == [f"node 1 joined: ranks from 1 of world size 2, master 127.0.0.1:{port}, backend gloo"]
    assert "joined" not in (tmp_path / "stderr0.txt").read_text()
