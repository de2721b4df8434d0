"""Process set-up, done once: the device, the process-group backend, seeds, the CPU allocator."""
from __future__ import annotations

import ctypes
import logging
import os
import random
import sys
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: one process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def pick_device(local_rank: int) -> torch.device:
    """cuda:<local_rank> when CUDA is present (ARCFACE_DEVICE=cpu forces the CPU), else cpu."""
    forced = os.environ.get("ARCFACE_DEVICE", "")
    if forced != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def amp_dtype(device: torch.device | str) -> torch.dtype:
    """The half-precision dtype of ``fp16=True`` on ``device``: float16 on CUDA, bfloat16 elsewhere.

    Only CUDA gets a loss-scaling GradScaler (training.build_grad_scaler); float16 without one
    underflows small gradients, bfloat16 has float32's range and needs none.
    """
    device_type = device if isinstance(device, str) else device.type
    return torch.float16 if device_type == "cuda" else torch.bfloat16


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): those given, else the initialised process group's, else (0, 1).

    The fallback of the original signatures (get_dataloader, PartialFC_V2) for callers that do not
    pass what setup() decided.
    """
    if rank is None or world_size is None:
        group = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() \
            else (0, 1)
        rank = group[0] if rank is None else rank
        world_size = group[1] if world_size is None else world_size
    return int(rank), int(world_size)


def setup(local_rank: int | None = None) -> DistInfo:
    """One process without torchrun (no process group, no NCCL); torchrun's env -> nccl on GPU, gloo on CPU."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(local_rank)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return DistInfo(0, local_rank, 1, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        store = restart_safe_store()
        if store is None:
            dist.init_process_group(backend=backend, init_method="env://")
        else:
            dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=world_size)
    info = DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), device, backend)
    if local_rank == 0 and info.rank != 0:   # rank 0 logs the run; the other nodes say once that they are in
        print(_joined_line(info), file=sys.stderr, flush=True)
    return info


def _joined_line(info: DistInfo) -> str:
    """The line a node's first process prints on joining: node, first rank, world size, master, backend."""
    # GROUP_RANK is torchrun's node rank; other launchers (srun, mpirun) set only RANK and LOCAL_WORLD_SIZE
    node = os.environ.get("GROUP_RANK") or info.rank // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return (f"node {node} joined: ranks from {info.rank} of world size {info.world_size}, master "
            f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}, backend {info.backend}")


def restart_safe_store() -> dist.Store | None:
    """torchrun's shared store with this restart attempt's own keys; None: use env:// as usual.

    torchrun (c10d rendezvous) keeps one store for all restart attempts, so after
    ``--max-restarts`` restarts a rank can read the previous attempt's gloo/NCCL addresses and
    fail with "Connection refused" (pytorch/pytorch#135712). On one node the restart count is
    the same for every worker and prefixes the keys. Across nodes it is not: there, set
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for restarts (torchrun then makes a fresh store).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
            logging.warning("torchrun --max-restarts across nodes reuses one store for every attempt: "
                            "set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 so that restarts can connect")
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(minutes=30))
    return dist.PrefixStore(f"arcface_attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3      # glibc mallopt parameters


def keep_freed_cpu_memory() -> bool:
    """Let glibc keep freed memory for reuse: large blocks from the heap, the heap never trimmed.

    A training step frees and re-allocates the same activation tensors. By default glibc hands
    large blocks back to the system and page-faults them in again at the next step, which was over
    half of a CPU step here (mbf_tiny, batch 64: 1176 -> 549 ms/step). The price is a higher resident
    set: the heap keeps its peak, plus fragmentation (that step: 3.0-3.1 GB instead of a 2.3 GB peak
    over 100 steps). Returns False where there is no glibc mallopt (other C libraries, other
    systems): nothing changes there.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def setup_seed(seed: int, cuda_deterministic: bool = False) -> None:
    """Seed python, numpy and torch (the original's name and signature)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if cuda_deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
