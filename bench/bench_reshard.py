"""Offline resharding time of a PartialFC checkpoint (python -m utils.checkpoint reshard), against copying its files.

Writes W shard files of CLASSES x DIM float32 centres plus SGD momentum (the state a resume must carry),
reshards them to W' ranks with utils.elastic.write_resharded, and reports the seconds beside the I/O
floor measured in the same run: copying the same files (shutil.copyfile) once.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils import elastic  # noqa: E402
from utils.checkpoint import atomic_save  # noqa: E402


def write_shards(folder: str, classes: int, dim: int, world: int) -> int:
    """W checkpoint files as training writes them; returns their total bytes."""
    total = 0
    backbone = torch.nn.Linear(8, 8)
    for rank in range(world):
        _, count = elastic.class_range(classes, rank, world)
        weight = torch.randn(count, dim)
        state = {"epoch": 3, "global_step": 1000, "samples_in_epoch": 4096,
                 "state_dict_backbone": backbone.state_dict(),
                 "state_dict_softmax_fc": {"weight": weight},
                 "state_optimizer": {"param_groups": [{"params": [0, 1], "lr": 0.1}, {"params": [2], "lr": 0.1}],
                                     "state": {2: {"momentum_buffer": torch.randn(count, dim)}}},
                 "fingerprint": {"network": "r50", "num_classes": classes, "world_size": world, "batch_size": 128}}
        path = os.path.join(folder, f"checkpoint_gpu_{rank}.pt")
        torch.save(state, path)
        total += os.path.getsize(path)
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--from-world", type=int, default=8)
    parser.add_argument("--to-world", type=int, default=4)
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(dir=args.dir)
    try:
        src = os.path.join(root, "run")
        os.makedirs(src)
        size = write_shards(src, args.classes, args.dim, args.from_world)
        copy = os.path.join(root, "copy")
        os.makedirs(copy)
        t0 = time.perf_counter()
        for name in os.listdir(src):
            shutil.copyfile(os.path.join(src, name), os.path.join(copy, name))
        t_copy = time.perf_counter() - t0
        shutil.rmtree(copy)
        t0 = time.perf_counter()
        old, new = elastic.write_resharded(src, args.to_world, save=atomic_save)
        t_reshard = time.perf_counter() - t0
        check = elastic.load_set(elastic.latest_complete_set(src, prefer_world=args.to_world))
        rows = sum(s["state_dict_softmax_fc"]["weight"].shape[0] for s in check)
        assert rows == args.classes and len(new) == args.to_world
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
          f"torch {torch.__version__}")
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; load average "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print(f"command: python bench/bench_reshard.py --classes {args.classes} --dim {args.dim} "
          f"--from-world {args.from_world} --to-world {args.to_world}")
    print(f"{args.classes:,} classes x {args.dim} float32, centres + momentum: {size / 2**30:.2f} GiB in "
          f"{args.from_world} files")
    print(f"copy the files once (I/O floor): {t_copy:.1f} s; reshard {args.from_world} -> {args.to_world}: "
          f"{t_reshard:.1f} s = {t_reshard / t_copy:.2f}x the copy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
