"""Atomic checkpoint files, exact resume, the output-folder lock and graceful stop on SIGTERM/SIGINT."""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import signal
import socket
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from utils.elastic import (ShardFile, class_range, describe_incomplete, latest_complete_set, load_set,
                           num_classes_of, read_shard, reshard, rows_per_class, scan_shards, write_resharded)
from utils.cli import run_tool
from utils.errors import CheckpointError, ConfigError
from utils.files import atomic_write, atomic_write_text

# Config keys a checkpoint must agree on to be resumable.
# world_size and batch_size may change: the resume reshards and counts progress in samples (utils/elastic.py).
FINGERPRINT_KEYS = ("network", "embedding_size", "num_classes", "sample_rate",
                    "optimizer", "margin")


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``.

    A failed write (full disk, read-only folder) leaves ``path`` as it was and raises a one-line
    CheckpointError naming the file, the reason and the size needed.
    """
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as err:
        raise CheckpointError(_write_failure(path, obj, err)) from None


def _write_failure(path: str, obj: Any, err: Exception) -> str:
    """'cannot write <path>: <reason> (needs about N MB, M MB free)'; the reason from errno or free space."""
    needed = _tensor_bytes(obj)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    code = getattr(err, "errno", None)
    if code is None and free is not None and free < needed:
        code = errno.ENOSPC       # torch's zip writer reports a full disk as "unexpected pos"
    reason = os.strerror(code) if code else str(err).splitlines()[0]
    space = f"needs about {needed / 2**20:.1f} MB" + ("" if free is None else f", {free / 2**20:.1f} MB free")
    kept = "the previous file is intact" if os.path.exists(path) else "nothing was written"
    return (f"cannot write {path}: {reason} ({space}; {kept}): free space there or set `output` "
            f"to a writable folder with room")


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested checkpoint (what torch.save must write, roughly)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def remove_stale_temporaries(output: str, rank: int) -> list[str]:
    """Delete the temporary files that killed saves of this rank left (``<file>.tmp.<pid>`` whose
    process is gone); returns their paths."""
    prefixes = (f"checkpoint_gpu_{rank}.pt.tmp.", f"checkpoint_gpu_{rank}.previous.pt.tmp.") + \
        (("model.pt.tmp.", "config.json.tmp.") if rank == 0 else ())
    stale = []
    for name in os.listdir(output):
        pid = name.rsplit(".tmp.", 1)[-1]
        if name.startswith(prefixes) and pid.isdigit() and not _process_alive(int(pid)):
            stale.append(os.path.join(output, name))
            os.remove(stale[-1])
            logging.warning("removed %s, left by an interrupted save", stale[-1])
    return stale


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def earlier_run_files(output: str) -> list[str]:
    """Names in ``output`` that a training run writes (model.pt, training.log, checkpoints)."""
    if not os.path.isdir(output):
        return []
    return sorted(name for name in os.listdir(output)
                  if name in ("model.pt", "training.log") or
                  (name.startswith("checkpoint_gpu_") and name.endswith(".pt")))


def prepare_output(output: str, resume: Any, overwrite: bool, is_main: bool) -> tuple[bool, list[str]]:
    """Create ``output``; refuse to start a fresh run over an earlier one unless ``overwrite``.

    Returns (whether the folder was created now, the earlier files removed by ``overwrite``).
    A fresh run (resume=False, or "auto" with no checkpoint but a model.pt) would overwrite model.pt
    and append to training.log, and eval.report would mix the two runs.
    """
    created = not os.path.isdir(output)
    removed: list[str] = []
    earlier = [] if created or not is_main else earlier_run_files(output)
    fresh = resume is False or (resume == "auto" and not any(n.startswith("checkpoint_gpu_") for n in earlier)
                                and "model.pt" in earlier)
    if earlier and fresh:
        if not overwrite:
            raise ConfigError(
                f"output folder {output} holds an earlier run ({', '.join(earlier[:4])}): set resume=True to "
                f"continue it, overwrite=True to replace it, or choose another `output`")
        for name in earlier + (["tensorboard"] if os.path.isdir(os.path.join(output, "tensorboard")) else []):
            path = os.path.join(output, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(path)
    try:
        os.makedirs(output, exist_ok=True)
        probe = os.path.join(output, f".write_test.tmp.{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as err:
        raise CheckpointError(f"cannot write to the output folder {output}: {err.strerror or err}: set "
                              f"`output` to a writable folder") from None
    return created, removed


def remove_failed_output(output: str) -> bool:
    """Remove an output folder made by a run that failed before writing any weights; True if removed."""
    if not os.path.isdir(output) or any(n != "training.log" for n in earlier_run_files(output)):
        return False
    shutil.rmtree(output, ignore_errors=True)
    return True


def checkpoint_path(output: str, rank: int) -> str:
    return os.path.join(output, f"checkpoint_gpu_{rank}.pt")


def fingerprint(cfg: Any) -> dict[str, Any]:
    return {key: cfg[key] for key in FINGERPRINT_KEYS}


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def previous_checkpoint_path(output: str, rank: int) -> str:
    return os.path.join(output, f"checkpoint_gpu_{rank}.previous.pt")


def save_rank_checkpoint(state: dict[str, Any], output: str, rank: int, keep_previous: bool) -> None:
    """Write this rank's checkpoint atomically; ``keep_previous`` (several ranks) keeps the one before.

    Ranks save one after another, so a job killed during a save can leave rank 0 at step N and
    rank 1 at step N - k. With the previous file kept, every rank still holds a common step and
    the resume picks it (``load_checkpoint``).
    """
    path = checkpoint_path(output, rank)
    if keep_previous and os.path.exists(path):
        os.replace(path, previous_checkpoint_path(output, rank))
    atomic_save(state, path)


def _held_steps(output: str, rank: int, world_size: int) -> tuple[dict[int, str], list[str]]:
    """{step: path} of this rank's files written by ``world_size`` ranks (or by the original), unreadable paths."""
    held, unreadable = {}, []
    for path in (previous_checkpoint_path(output, rank), checkpoint_path(output, rank)):
        shard = read_shard(path, rank) if os.path.exists(path) else None
        if shard is not None and shard.world_size in (None, world_size):
            held[shard.step] = path
        elif shard is None and os.path.exists(path):
            unreadable.append(path)
    return held, unreadable


def load_checkpoint(cfg: Any, rank: int, distributed: bool = False,
                    world_size: int | None = None) -> dict[str, Any] | None:
    """The checkpoint to resume from, None to start fresh.

    ConfigError when it does not fit the config, CheckpointError when no checkpoint can be read.

    With several ranks, they agree on the latest global step that every rank holds (in
    checkpoint_gpu_<rank>.pt or .previous.pt), so an interrupted save never resumes the ranks at
    different steps. When the latest complete set of shard files was written by another world
    size, every rank takes its part of it (elastic resume, utils/elastic.py; rank 0 must see the
    files of all old ranks, i.e. a shared output folder).
    """
    if cfg.resume is False:
        return None
    world = world_size if world_size is not None else (dist.get_world_size() if distributed else 1)
    held, unreadable = _held_steps(cfg.output, rank, world)
    per_rank = [(sorted(held), unreadable)]
    elastic = latest_complete_set(cfg.output, prefer_world=world) if rank == 0 else None
    if distributed:
        per_rank = [None] * world
        dist.all_gather_object(per_rank, (sorted(held), unreadable))
        shared = [elastic]
        dist.broadcast_object_list(shared, src=0)
        elastic = shared[0]
    damaged = [path for _, paths in per_rank for path in paths]
    per_rank = [steps for steps, _ in per_rank]
    common = set.intersection(*(set(steps) for steps in per_rank)) if all(per_rank) else set()
    if elastic and len(elastic) != world and (not common or elastic[0].step >= max(common)):
        return _load_resharded(cfg, elastic, rank, world)
    if not any(per_rank):
        if damaged:
            raise CheckpointError(f"no checkpoint can be read ({', '.join(damaged)}): move them away to start "
                              f"fresh, or restore them from a copy")
        if cfg.resume == "auto" and not describe_incomplete(cfg.output):
            return None
        raise ConfigError(_no_checkpoint(cfg.output, rank))
    if not common:
        listing = "; ".join(f"rank {r}: {steps or 'none'}" for r, steps in enumerate(per_rank))
        raise ConfigError(f"the ranks' checkpoints in {cfg.output} share no global step ({listing}): a shard "
                          f"file is missing; restore it, or start fresh with resume=False")
    path = held[max(common)]
    if max(common) != max(held):
        logging.warning("resuming every rank from global step %d (%s): a save was interrupted, this rank "
                        "also holds step %d", max(common), path, max(held))
    state = torch.load(path, map_location="cpu", weights_only=False)
    _check_fingerprint(state, cfg, path)
    state["path"] = path
    return state


def _no_checkpoint(output: str, rank: int) -> str:
    incomplete = describe_incomplete(output)
    if incomplete:
        return (f"the checkpoint in {output} lacks shard files ({incomplete}): restore the missing "
                f"checkpoint_gpu_<rank>.pt, or start fresh with resume=False")
    return (f"resume=True but {checkpoint_path(output, rank)} does not exist (train with "
            f"save_all_states=True, or set resume=\"auto\" to start fresh when there is none)")


def _check_fingerprint(state: dict, cfg: Any, path: str) -> None:
    saved = state.get("fingerprint", {})
    differs = [f"{k}: checkpoint {saved[k]!r} vs config {cfg[k]!r}"
               for k in FINGERPRINT_KEYS if k in saved and saved[k] != cfg[k]]
    if differs:
        raise ConfigError(f"{path} was written by a different run ({'; '.join(differs)}); "
                          f"use another output folder or the matching config")


def _load_resharded(cfg: Any, files: list[ShardFile], rank: int, world: int) -> dict[str, Any]:
    """This rank's state, its class range taken out of the shard files of another world size."""
    states = load_set(files)
    _check_fingerprint(states[0], cfg, files[0].path)
    k = rows_per_class(files, int(cfg.num_classes))
    state = reshard(states, int(cfg.num_classes), world, ranks=[rank], k=k)[rank]
    state["path"] = (f"{len(files)} shard files of world size {len(files)} in {cfg.output} (resharded to "
                     f"{world} ranks)")
    return state


class OutputLock:
    """A lock file in the output folder holding the owner's pid and host; refuses a second run."""

    def __init__(self, output: str, resume: Any, overwrite: bool = False) -> None:
        self.path = os.path.join(output, ".lock")
        self.resume = resume
        self.overwrite = overwrite
        self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return True  # cannot check another machine: assume it is running
        try:
            return _process_alive(int(holder["pid"]))
        except (ValueError, KeyError, TypeError):
            return False

    def acquire(self) -> None:
        holder = self._holder()
        if holder is not None:
            if self._alive(holder) or (self.resume is False and not self.overwrite):
                state = "running" if self._alive(holder) else "stale (its process is gone)"
                raise ConfigError(
                    f"output folder {os.path.dirname(self.path)} is locked by pid {holder.get('pid')} on "
                    f"{holder.get('host')} ({state}); use another `output`, or set resume=True to continue a "
                    f"stopped run or overwrite=True to replace it (remove {self.path} if you are sure "
                    f"nothing runs)")
            logging.warning("removing stale lock %s of pid %s", self.path, holder.get("pid"))
        atomic_write_text(self.path, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        self.held = True

    def release(self) -> None:
        if self.held and os.path.exists(self.path):
            os.remove(self.path)
        self.held = False


class StopRequest:
    """Set by SIGTERM/SIGINT; the loop finishes the step, saves and exits. Ranks agree via all-reduce."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    def agreed(self, distributed: bool, device: torch.device, step: int = 0, every: int = 1) -> bool:
        """True on every rank when any rank was signalled; with several ranks checked every ``every`` steps.

        The check is an all-reduce and a host sync, so ranks agree only at steps that are multiples of
        ``every`` (the logging interval: the loss is read there anyway), keeping the other steps free of
        syncs; a stop then waits at most ``every`` steps.
        """
        if not distributed:
            return self.signal_name is not None
        if step % every:
            return False
        flag = torch.tensor([1.0 if self.signal_name else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and self.signal_name is None:
            self.signal_name = "signal on another rank"
        return flag.item() > 0


def describe_checkpoint(output: str) -> list[str]:
    """Lines for ``info``: every set of shard files, and the one a resume takes."""
    shards = scan_shards(output)
    if not shards:
        raise CheckpointError(f"no readable checkpoint_gpu_<rank>.pt in {output}")
    files = latest_complete_set(output)
    lines = [f"{output}: {len(shards)} shard file(s)"]
    incomplete = describe_incomplete(output)
    if incomplete:
        lines.append(f"  incomplete (not used): {incomplete}")
    if files is None:
        return lines + ["  no complete set: a resume cannot use this folder"]
    state = torch.load(files[0].path, map_location="cpu", weights_only=False, mmap=True)
    saved = state.get("fingerprint", {})
    classes = num_classes_of(files)
    k = rows_per_class(files, classes)
    world = len(files)
    lines += [f"  resume takes: global step {files[0].step}, epoch {files[0].epoch}, "
              f"{state.get('samples_in_epoch', state.get('batch_in_epoch', 0) * saved.get('batch_size', 0) * world)} "
              f"samples into the epoch",
              f"  world size {world}" + ("" if saved else " (a checkpoint of the original arcface_torch)")
              + (f", batch_size {saved['batch_size']} per rank" if "batch_size" in saved else ""),
              f"  classes {classes}, {k} centre(s) per class, per shard: "
              + ", ".join(f"rank {r}: {class_range(classes, r, world)[1]}" for r in range(world)),
              f"  margin head {saved.get('margin', 'combined (the original)')}; optimizer "
              f"{saved.get('optimizer', type(state.get('state_optimizer')).__name__)}",
              "  fingerprint " + ", ".join(f"{key}={value!r}" for key, value in saved.items())]
    lines += [f"  {os.path.basename(f.path)}: rank {f.rank}, {f.rows} rows" for f in files]
    return lines


def main(argv: list[str] | None = None) -> int:
    """python -m utils.checkpoint info DIR | reshard DIR --world-size N"""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m utils.checkpoint",
                                     description="inspect or reshard the checkpoint of a training run")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="epoch, step, world size, classes per shard, head, fingerprint")
    info.add_argument("output", help="the run's output folder (cfg.output)")
    convert = commands.add_parser("reshard", help="rewrite the shard files for another number of ranks")
    convert.add_argument("output", help="the run's output folder (cfg.output)")
    convert.add_argument("--world-size", type=int, required=True, help="number of ranks of the next run")
    convert.add_argument("--num-classes", type=int, default=None,
                         help="class count (default: the checkpoint's; its rows for the original's files)")
    args = parser.parse_args(argv)
    if args.command == "reshard" and args.world_size < 1:
        parser.error("--world-size must be >= 1")
    return run_tool(lambda: _info(args.output) if args.command == "info" else _reshard(args))


def _info(output: str) -> None:
    print("\n".join(describe_checkpoint(output)))


def _reshard(args) -> None:
    old, new = write_resharded(args.output, args.world_size, args.num_classes, save=atomic_save)
    print(f"resharded global step {old[0].step} from {len(old)} to {len(new)} ranks: {', '.join(new)} "
          f"(the old files are kept as checkpoint_gpu_<rank>.previous.pt)")


if __name__ == "__main__":
    raise SystemExit(main())
