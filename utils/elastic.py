"""Elastic resume: checkpoints written by W ranks continue on W' ranks.

PartialFC_V2 shards the class centres by class ranges (``class_range``: the original's uneven
split, ``k`` rows per class for sub-centre heads, class-major). Resharding takes, for every new
rank, its class range's rows out of the W old shards (of the centres and of their optimiser
state: momentum, Adam moments), so the concatenation of the shards in rank order, which is the
global class order, is the same before and after. What every rank holds alike (backbone, its
optimiser state, the margin head's running state, the GradScaler) comes from rank 0; new rank r
continues the RNG streams of old rank r % W. Progress is counted in samples of the epoch's
permutation (``samples_in_epoch``), so a resumed run starts at the first sample no rank consumed.

A set of shard files is usable when the files of ranks 0..W-1 hold the same global step and
world size W (``checkpoint_gpu_<r>.pt`` or ``.previous.pt``): stale shards of another world size
or step are never mixed in.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from utils.errors import CheckpointError

_SHARD_NAME = re.compile(r"^checkpoint_gpu_(\d+)(\.previous)?\.pt$")
RESHARD_SUFFIX = ".resharded"          # complete new shards wait under this name until all are written


def class_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first class, number of classes) of ``rank``'s shard: the original's uneven split."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


@dataclass(frozen=True)
class ShardFile:
    path: str
    rank: int
    step: int
    epoch: int
    world_size: int | None       # None: a file of the original arcface_torch (it records none)
    fingerprint: tuple
    rows: int
    mtime: float


def _load(path: str) -> Any:
    """torch.load on the CPU, tensors memory-mapped when the file's format allows."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:         # files of old torch.save formats cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=False)


def read_shard(path: str, rank: int) -> ShardFile | None:
    """The header of one rank's checkpoint file; None when it is unreadable or not a checkpoint."""
    try:
        state = _load(path)
    except Exception:  # a damaged file is skipped here; the callers name it
        return None
    if not isinstance(state, dict) or "global_step" not in state:
        return None
    saved = dict(state.get("fingerprint", {}))
    world = saved.pop("world_size", None)
    saved.pop("batch_size", None)
    weight = state.get("state_dict_softmax_fc", {}).get("weight")
    return ShardFile(path, rank, int(state["global_step"]), int(state.get("epoch", 0)), world,
                     tuple(sorted(saved.items())), 0 if weight is None else int(weight.shape[0]),
                     os.path.getmtime(path))


def scan_shards(output: str) -> list[ShardFile]:
    """Every readable checkpoint_gpu_<r>[.previous].pt in ``output``."""
    found = []
    for name in sorted(os.listdir(output)) if os.path.isdir(output) else []:
        match = _SHARD_NAME.match(name)
        if match:
            shard = read_shard(os.path.join(output, name), int(match[1]))
            if shard is not None:
                found.append(shard)
    return found


def _sets(shards: Iterable[ShardFile]) -> dict[tuple[int, int], dict[int, ShardFile]]:
    """{(step, world size): {rank: file}}; the original's files count as one set of all their ranks."""
    shards = list(shards)
    original_world = len({s.rank for s in shards if s.world_size is None})
    groups: dict[tuple[int, int], dict[int, ShardFile]] = {}
    for shard in sorted(shards, key=lambda s: -s.mtime):          # the newer file of a rank first
        world = shard.world_size if shard.world_size is not None else original_world
        groups.setdefault((shard.step, world), {}).setdefault(shard.rank, shard)
    return groups


def latest_complete_set(output: str, prefer_world: int | None = None) -> list[ShardFile] | None:
    """The shard files (rank order) of the latest step that ranks 0..W-1 of one world size W all hold.

    Of two complete sets of that step (before and after an offline reshard), the one of
    ``prefer_world`` wins, else the newer one.
    """
    groups = _sets(scan_shards(output))
    complete = {key: ranks for key, ranks in groups.items() if set(ranks) == set(range(key[1]))}
    if not complete:
        return None
    last = max(step for step, _ in complete)
    candidates = [(world == prefer_world, max(f.mtime for f in ranks.values()), world)
                  for (step, world), ranks in complete.items() if step == last]
    world = max(candidates)[2]
    files = [complete[(last, world)][r] for r in range(world)]
    if len({f.fingerprint for f in files}) > 1:
        raise CheckpointError(f"the shard files of step {last} in {output} come from different runs "
                              f"({', '.join(f.path for f in files)}): move the stray ones away")
    return files


def describe_incomplete(output: str) -> str:
    """'step S, world size W: ranks 0, 2 of 3' for every set of shard files that lacks a rank."""
    parts = [f"step {step}, world size {world}: ranks {', '.join(map(str, sorted(ranks)))} of {world}"
             for (step, world), ranks in sorted(_sets(scan_shards(output)).items())
             if set(ranks) != set(range(world))]
    return "; ".join(parts)


def rows_per_class(files: list[ShardFile], num_classes: int) -> int:
    """k (sub-centres per class) of a shard set; an error naming the files when it does not fit num_classes."""
    rows = sum(f.rows for f in files)
    k = rows // num_classes if num_classes and rows % num_classes == 0 else 0
    world = len(files)
    expected = [class_range(num_classes, r, world)[1] * k for r in range(world)] if k else []
    if not k or [f.rows for f in files] != expected:
        per_file = ", ".join(f"{os.path.basename(f.path)}: {f.rows}" for f in files)
        raise CheckpointError(f"the class-centre shards in {os.path.dirname(files[0].path) or '.'} ({per_file} "
                              f"rows) do not split num_classes = {num_classes} over {world} ranks: the checkpoint "
                              f"is of another data set; set num_classes to the checkpoint's, or start fresh")
    return k


def _pfc_param_ids(optimizer_state: dict) -> list[int]:
    """Ids of the PartialFC parameters: the last param group (the original's group order)."""
    return list(optimizer_state["param_groups"][-1]["params"])


def _rows(tensors: list[torch.Tensor], old_ranges: list[tuple[int, int]], first: int, count: int,
          k: int) -> torch.Tensor:
    """Rows of classes [first, first + count) out of the old shards (one copy: the new shard)."""
    pieces = []
    for tensor, (start, num) in zip(tensors, old_ranges):
        lo, hi = max(start, first), min(start + num, first + count)
        if lo < hi:
            pieces.append(tensor[(lo - start) * k:(hi - start) * k])
    return torch.cat(pieces) if pieces else tensors[0][:0].clone()


def reshard(states: list[dict], num_classes: int, new_world: int, ranks: Iterable[int] | None = None,
            k: int = 1) -> dict[int, dict]:
    """{new rank: checkpoint state} for ``new_world`` ranks from the W states of one step (rank order)."""
    old_world = len(states)
    old_ranges = [class_range(num_classes, r, old_world) for r in range(old_world)]
    weights = [s["state_dict_softmax_fc"]["weight"] for s in states]
    base = states[0]
    row_entries = [(pid, key) for pid in _pfc_param_ids(base["state_optimizer"])
                   for key, value in base["state_optimizer"]["state"].get(pid, {}).items()
                   if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape == weights[0].shape]
    out = {}
    for rank in range(new_world) if ranks is None else ranks:
        first, count = class_range(num_classes, rank, new_world)
        opt_state = {pid: dict(entries) for pid, entries in base["state_optimizer"]["state"].items()}
        for pid, key in row_entries:
            opt_state[pid][key] = _rows([s["state_optimizer"]["state"][pid][key] for s in states],
                                        old_ranges, first, count, k)
        new = dict(base)
        new["state_dict_softmax_fc"] = dict(base["state_dict_softmax_fc"],
                                            weight=_rows(weights, old_ranges, first, count, k))
        new["state_optimizer"] = {"param_groups": base["state_optimizer"]["param_groups"], "state": opt_state}
        new["rng"] = states[rank % old_world].get("rng", base.get("rng"))
        new["state_loader"] = {}                # a DALI pipeline state belongs to its old shard
        if "fingerprint" in base:
            new["fingerprint"] = dict(base["fingerprint"], world_size=new_world)
        new["samples_in_epoch"] = samples_in_epoch(base, old_world)
        new["resharded_from"] = old_world
        out[rank] = new
    return out


def samples_in_epoch(state: dict, world_size: int | None = None) -> int:
    """Samples of the epoch's permutation that all ranks together consumed when ``state`` was saved."""
    if "samples_in_epoch" in state:
        return int(state["samples_in_epoch"])
    saved = state.get("fingerprint", {})
    world = world_size or int(saved.get("world_size") or 1)
    return int(state.get("batch_in_epoch", 0)) * int(saved.get("batch_size", 0)) * world


def num_classes_of(files: list[ShardFile], given: int | None = None) -> int:
    """The class count of a shard set: given, else its fingerprint's, else its rows (the original: k = 1)."""
    if given:
        return int(given)
    saved = dict(files[0].fingerprint)
    return int(saved.get("num_classes") or sum(f.rows for f in files))


def load_set(files: list[ShardFile]) -> list[dict]:
    return [_load(f.path) for f in files]


def write_resharded(output: str, new_world: int, num_classes: int | None = None,
                    save: Any = None) -> tuple[list[ShardFile], list[str]]:
    """Reshard the latest complete set in ``output`` to ``new_world`` ranks on disk; (old files, new paths).

    Safe to kill at any point: the new shards are written completely under temporary names first,
    then the old files become ``.previous.pt`` (a complete set the resume path still finds), and
    only then do the new ones take the ``checkpoint_gpu_<r>.pt`` names.
    """
    files = latest_complete_set(output)
    if files is None:
        raise CheckpointError(f"no complete set of checkpoint_gpu_<rank>.pt files in {output}"
                              + (f" ({describe_incomplete(output)})" if describe_incomplete(output) else ""))
    classes = num_classes_of(files, num_classes)
    k = rows_per_class(files, classes)
    states = load_set(files)
    temporaries = []
    for rank, state in reshard(states, classes, new_world, k=k).items():
        temporaries.append(os.path.join(output, f"checkpoint_gpu_{rank}.pt{RESHARD_SUFFIX}"))
        save(state, temporaries[-1])
    del states
    for f in files:
        previous = os.path.join(output, f"checkpoint_gpu_{f.rank}.previous.pt")
        if f.path != previous:
            os.replace(f.path, previous)
    final = [t[:-len(RESHARD_SUFFIX)] for t in temporaries]
    for tmp, path in zip(temporaries, final):
        os.replace(tmp, path)
    return files, final
