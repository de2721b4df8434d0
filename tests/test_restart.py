"""torchrun --max-restarts on CPU: a worker killed mid-training, the job restarts and finishes from its checkpoints."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from easydict import EasyDict

from tests.conftest import REPO
from tests.test_train import tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)

from backbones import get_model
from utils.checkpoint import load_checkpoint, save_rank_checkpoint
from utils.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.slow


def torchrun(config: Path, *extra: str) -> subprocess.Popen:
    """torchrun with 2 CPU workers (``stop_job`` ends them all)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", ARCFACE_DEVICE="cpu")
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *extra,
         "train_v2.py", str(config)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env)


def stop_job(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (which torchrun starts in sessions of their own)."""
    for pid in [*worker_pids(proc.pid).values(), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def worker_pids(root_pid: int) -> dict[int, int]:
    """{RANK: pid} of the processes below ``root_pid`` that torchrun started (they carry RANK in their env)."""
    found, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [item[5:] for item in env if item.startswith(b"RANK=")]
        if pid != root_pid and ranks:
            found[int(ranks[0])] = pid
    return found


def checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["global_step"])
    except Exception:  # not written yet, or being replaced right now
        return -1


def signal_rank_after_step(proc: subprocess.Popen, output: Path, rank: int, step: int, done: dict,
                           signum: int = signal.SIGKILL) -> None:
    """Send ``signum`` to the worker of ``rank`` once its checkpoint holds ``step`` or more (once)."""
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if checkpoint_step(output / f"checkpoint_gpu_{rank}.pt") >= step:
            pid = worker_pids(proc.pid).get(rank)
            if pid is not None:
                os.kill(pid, signum)
                done["killed"] = pid
                return
        time.sleep(0.02)


def job_config(tmp_path: Path, data: Path) -> Path:
    """64 images / (4 x 2 ranks) = 8 steps per epoch, 6 epochs = 48 steps, a checkpoint every 2 steps."""
    return write_config(tmp_path / "c.py", data, tmp_path / "out", batch_size=4, num_epoch=6,
                        checkpoint_every=2, resume="auto", frequent=4)


def run_and_signal(config: Path, output: Path, rank: int, step: int, signum: int,
                   *torchrun_options: str) -> tuple[str, subprocess.Popen]:
    """Run the job under torchrun, send ``signum`` to ``rank`` once it saved ``step``; (output, process)."""
    proc = torchrun(config, *torchrun_options)
    sent: dict = {}
    watcher = threading.Thread(target=signal_rank_after_step, args=(proc, output, rank, step, sent, signum))
    watcher.start()
    try:
        log, _ = proc.communicate(timeout=300)
    finally:
        stop_job(proc)
        watcher.join()
    assert sent, f"the run ended before rank {rank} got signal {signum}:\n{log[-3000:]}"
    return log, proc


@pytest.mark.parametrize("victim", [0, 1])
def test_killed_worker_restarts_and_finishes(tmp_path, tiny_data, victim):  # noqa: F811
    output = tmp_path / "out"
    config = job_config(tmp_path, tiny_data)
    log, proc = run_and_signal(config, output, victim, 10, signal.SIGKILL, "--max-restarts=1", "--monitor-interval=0.2")
    assert proc.returncode == 0, log[-4000:]
    training_log = (output / "training.log").read_text()
    assert "resumed from" in training_log, training_log[-2000:]
    for rank in (0, 1):
        assert checkpoint_step(output / f"checkpoint_gpu_{rank}.pt") == 48
    assert "training done: 48 steps" in training_log
    model = get_model("mbf_tiny", num_features=64)
    model.load_state_dict(torch.load(output / "model.pt", map_location="cpu", weights_only=True), strict=True)


def test_sigterm_to_one_rank_stops_both_with_checkpoints_then_resume_finishes(tmp_path, tiny_data):  # noqa: F811
    output = tmp_path / "out"
    config = job_config(tmp_path, tiny_data)
    log, proc = run_and_signal(config, output, 1, 6, signal.SIGTERM)
    assert proc.returncode != 0
    assert re.search(r"stopped by SIGTERM at global step (\d+)", log), log[-3000:]
    stopped_at = int(re.search(r"stopped by SIGTERM at global step (\d+)", log).group(1))
    assert 6 <= stopped_at < 48
    assert [checkpoint_step(output / f"checkpoint_gpu_{r}.pt") for r in (0, 1)] == [stopped_at, stopped_at]
    resumed = torchrun(config)
    try:
        log, _ = resumed.communicate(timeout=300)
    finally:
        stop_job(resumed)
    assert resumed.returncode == 0, log[-3000:]
    training_log = (output / "training.log").read_text()
    assert f"global step {stopped_at}" in training_log and "training done: 48 steps" in training_log


def _agreement_worker(rank: int, world: int, root: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{root}/init", rank=rank, world_size=world)
    try:
        def cfg(name: str, resume="auto") -> EasyDict:
            return EasyDict(output=os.path.join(root, name), resume=resume)

        def save(name: str, steps: list[int]) -> None:
            os.makedirs(cfg(name).output, exist_ok=True)
            for step in steps:
                save_rank_checkpoint({"global_step": step, "epoch": 0}, cfg(name).output, rank, keep_previous=True)
            dist.barrier()          # rank 0 reads every rank's files on resume: all written first, as in training

        # killed while saving step 12: rank 0 wrote it, rank 1 did not -> both resume from 10
        save("interrupted", [8, 10, 12] if rank == 0 else [8, 10])
        state = load_checkpoint(cfg("interrupted"), rank, distributed=True)
        assert state["global_step"] == 10
        assert state["path"].endswith(f"checkpoint_gpu_{rank}{'.previous' if rank == 0 else ''}.pt")
        # no step in common: every rank stops with the same message
        save("foreign", [10, 12] if rank == 0 else [4, 6])
        with pytest.raises(ConfigError, match=r"share no global step \(rank 0: \[10, 12\]; rank 1: \[4, 6\]\)"):
            load_checkpoint(cfg("foreign"), rank, distributed=True)
        # nothing anywhere: "auto" starts fresh on every rank, True is an error on every rank
        assert load_checkpoint(cfg("empty"), rank, distributed=True) is None
        with pytest.raises(ConfigError, match="resume=True but"):
            load_checkpoint(cfg("empty", resume=True), rank, distributed=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_ranks_resume_from_a_step_they_all_hold(tmp_path):
    mp.spawn(_agreement_worker, args=(2, str(tmp_path)), nprocs=2, join=True)


def test_unreadable_checkpoints_are_refused_and_legacy_format_files_resume(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    cfg = EasyDict(output=str(output), resume="auto")
    (output / "checkpoint_gpu_0.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"no checkpoint can be read \(.*checkpoint_gpu_0\.pt\)"):
        load_checkpoint(cfg, 0)                       # "auto" must not start over a damaged run
    torch.save({"global_step": 7, "epoch": 1}, output / "checkpoint_gpu_0.pt",
               _use_new_zipfile_serialization=False)  # written by an old torch: no memory mapping
    assert load_checkpoint(cfg, 0)["global_step"] == 7


def test_temporaries_of_killed_saves_are_removed_and_live_ones_kept(tmp_path):
    from utils.checkpoint import remove_stale_temporaries
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    names = [f"checkpoint_gpu_0.pt.tmp.{dead}", f"checkpoint_gpu_0.previous.pt.tmp.{dead}", f"model.pt.tmp.{dead}",
             f"checkpoint_gpu_0.pt.tmp.{os.getpid()}", f"checkpoint_gpu_1.pt.tmp.{dead}", "checkpoint_gpu_0.pt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(str(tmp_path), 0)
    assert sorted(Path(p).name for p in removed) == sorted(names[:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])   # a live save, rank 1's, the real one


def _cadence_worker(rank: int, world: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29541")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from utils.checkpoint import StopRequest
        calls = {"n": 0}
        real = dist.all_reduce

        def counting(*args, **kwargs):
            calls["n"] += 1
            return real(*args, **kwargs)

        dist.all_reduce = counting
        stop, stopped_at = StopRequest(), None
        for step in range(1, 21):
            if rank == 1 and step == 7:
                stop.signal_name = "SIGTERM"
            if stop.agreed(True, torch.device("cpu"), step, every=5):
                stopped_at = step
                break
        dist.all_reduce = real
        Path(root, f"rank{rank}.txt").write_text(f"{calls['n']} {stopped_at} {stop.signal_name}")
    finally:
        dist.destroy_process_group()


def test_ranks_agree_on_a_stop_only_every_logging_interval(tmp_path):
    """One all-reduce (a host sync) per `frequent` steps, not per step; a signal at step 7 stops both at 10."""
    mp.spawn(_cadence_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank0.txt").read_text() == "2 10 signal on another rank"
    assert (tmp_path / "rank1.txt").read_text() == "2 10 SIGTERM"


def test_a_second_node_says_it_joined(tmp_path, tiny_data):  # noqa: F811
    """Two torchrun "nodes" on this machine (static rendezvous); node 1 prints one line saying it joined."""
    config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "out", batch_size=8, num_epoch=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", ARCFACE_DEVICE="cpu")
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", "--master_port=29547",
                               "train_v2.py", str(config)], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for node in (0, 1)]
    outputs = [proc.communicate(timeout=300)[0] for proc in nodes]
    assert [proc.returncode for proc in nodes] == [0, 0], outputs[1][-3000:]
    joined = [line for line in outputs[1].splitlines() if "joined" in line]
    assert joined == ["node 1 joined: ranks from 1 of world size 2, master 127.0.0.1:29547, backend gloo"], joined
    assert "joined" not in outputs[0]
