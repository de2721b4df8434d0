"""Stop and resume as users run it: default DataLoader workers, real signals sent to the whole process
group (as torchrun, scancel and timeout send them), real torchrun; resume that honours or reports every
changed key; full disks and read-only folders; earlier runs never overwritten silently."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.test_train import assert_same_weights, load_weights, run_main, tiny_data, write_config  # noqa: F401

import dataset as ds
import train_v2
from utils.errors import ArcFaceError, CheckpointError, ConfigError, DataError

DEFAULTS = dict(num_workers=2, save_all_states=False)   # what configs/base.py and the original use
ENV = dict(os.environ, OMP_NUM_THREADS="1", ARCFACE_DEVICE="cpu")


def signal_during_step(monkeypatch, step: int, signum: int = signal.SIGINT) -> None:
    """Send a real ``signum`` to this process while global step ``step`` runs."""
    real, calls = train_v2.train_step, {"n": 0}

    def step_then_signal(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(train_v2, "train_step", step_then_signal)


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """model.pt of uninterrupted 8-step runs: the PyTorch loader (no workers) and DALI."""
    out = {}
    for name, extra in (("torch", dict(num_workers=0)), ("dali", dict(dali=True))):
        root = tmp_path_factory.mktemp(f"reference_{name}")
        run_main(write_config(root / "c.py", tiny_data, root / "out", **extra))
        out[name] = root / "out" / "model.pt"
    return out


@pytest.mark.slow
# Restoring a DALI reader from its checkpoint reserves ~2 MB of heap address space per initial_fill slot
# (64 GB at the original's 32768; DALI 2.4, barely resident). Left in the suite process, that heap makes
# every later fork of DataLoader workers fail with ENOMEM, so the DALI case runs in its own interpreter.
@pytest.mark.parametrize("loader", ["workers0", "workers1", "workers2",
                                    pytest.param("dali", marks=pytest.mark.fresh_process)])
def test_signal_mid_epoch_then_resume_is_exact(tmp_path, tiny_data, reference, monkeypatch, loader):  # noqa: F811
    """SIGINT at step 6 of 8 (batch 2 of epoch 2), resume: the same weights as the uninterrupted run."""
    extra = dict(dali=True) if loader == "dali" else dict(num_workers=int(loader[-1]))
    config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "out", save_all_states=False, **extra)
    with monkeypatch.context() as patch:
        signal_during_step(patch, 6)
        with pytest.raises(train_v2.TrainingStopped, match="stopped by SIGINT at global step 6; checkpoint "
                                                           "written to .*checkpoint_gpu_0.pt"):
            run_main(config)
    state = torch.load(tmp_path / "out" / "checkpoint_gpu_0.pt", map_location="cpu", weights_only=False)
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (6, 1, 2)
    run_main(config, "resume=true")
    log = (tmp_path / "out" / "training.log").read_text()
    assert "training done: 8 steps" in log
    assert_same_weights(reference["dali" if loader == "dali" else "torch"], tmp_path / "out" / "model.pt")


def test_batch_sampler_keeps_the_resume_position_for_every_iterator():
    """torch's multi-process loader calls iter() on the batch sampler twice per epoch."""
    sampler = ds.DistributedBatchSampler(40, 4)
    sampler.set_epoch(3, start_batch=6)
    first, second = list(iter(sampler)), list(iter(sampler))
    assert len(first) == len(second) == len(sampler) == 4 and first == second
    sampler.set_epoch(4)
    assert len(list(sampler)) == 10


# --- signals sent to the whole process group -----------------------------------------------------------

def long_config(tmp_path: Path, data: Path, **overrides) -> Path:
    values = dict(DEFAULTS, num_epoch=400, frequent=1)
    values.update(overrides)
    return write_config(tmp_path / "c.py", data, tmp_path / "out", **values)


def wait_for_steps(log: Path, proc: subprocess.Popen, steps: int = 3, timeout: float = 180) -> None:
    """Until training.log shows ``steps`` logged steps (training runs, workers are up)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("Global Step:") >= steps:
            return
        time.sleep(0.1)
    raise AssertionError(f"training did not start (rc {proc.poll()}): {log.read_text()[-2000:] if log.exists() else ''}")


def assert_stopped_with_checkpoint(rc: int, output: str, out: Path, ranks: int = 1) -> list[int]:
    assert rc == 3, output[-3000:]
    assert "Traceback" not in output and "killed by signal" not in output, output[-3000:]
    assert "stopped by SIGTERM" in output or "signal on another rank" in output, output[-3000:]
    return [torch.load(out / f"checkpoint_gpu_{r}.pt", map_location="cpu", weights_only=False)["global_step"]
            for r in range(ranks)]


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_writes_a_checkpoint(tmp_path, tiny_data):  # noqa: F811
    config = long_config(tmp_path, tiny_data)
    proc = subprocess.Popen([sys.executable, "train_v2.py", str(config)], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_steps(tmp_path / "out" / "training.log", proc)
        os.killpg(proc.pid, signal.SIGTERM)           # the trainer and its DataLoader workers
        output, _ = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    [step] = assert_stopped_with_checkpoint(proc.returncode, output, tmp_path / "out")
    run_main(config, "resume=true", "num_epoch=1")    # re-planned to fewer epochs: ends at once
    log = (tmp_path / "out" / "training.log").read_text()
    assert f"resumed from {tmp_path / 'out' / 'checkpoint_gpu_0.pt'}: epoch" in log and f"global step {step}" in log


@pytest.mark.slow
def test_timeout_command_stops_training_gracefully(tmp_path, tiny_data):  # noqa: F811
    """coreutils timeout signals its whole process group when the time is up (SIGALRM = time is up)."""
    config = long_config(tmp_path, tiny_data)
    proc = subprocess.Popen(["timeout", "-s", "TERM", "--preserve-status", "600", sys.executable, "train_v2.py",
                             str(config)], cwd=REPO, env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_steps(tmp_path / "out" / "training.log", proc)
        os.kill(proc.pid, signal.SIGALRM)
        output, _ = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert_stopped_with_checkpoint(proc.returncode, output, tmp_path / "out")


@pytest.mark.slow
def test_torchrun_group_sigterm_stops_both_ranks_with_workers(tmp_path, tiny_data):  # noqa: F811
    config = long_config(tmp_path, tiny_data, batch_size=8)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train_v2.py", str(config)], cwd=REPO, env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_steps(tmp_path / "out" / "training.log", proc)
        os.killpg(proc.pid, signal.SIGTERM)           # torchrun, both ranks and their workers
        output, _ = proc.communicate(timeout=150)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0      # torchrun itself reports the signal it got (its own traceback)
    assert "DataLoader worker" not in output and "killed by signal" not in output, output[-3000:]
    stopped = {int(rank): int(step) for step, rank in re.findall(
        r"error: stopped by SIGTERM at global step (\d+); checkpoint written to \S*checkpoint_gpu_(\d).pt", output)}
    steps = {r: torch.load(tmp_path / "out" / f"checkpoint_gpu_{r}.pt", map_location="cpu",
                           weights_only=False)["global_step"] for r in (0, 1)}
    assert stopped == steps and steps[0] == steps[1] > 0, (stopped, steps, output[-3000:])


# --- resume honours or reports every changed key ------------------------------------------------------

@pytest.fixture
def finished_one_epoch(tmp_path, tiny_data) -> Path:  # noqa: F811
    config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "out", num_epoch=1)
    run_main(config)
    return config


def test_extending_num_epoch_replans_the_schedule(tmp_path, finished_one_epoch):
    before = load_weights(tmp_path / "out" / "model.pt")
    run_main(finished_one_epoch, "resume=true", "num_epoch=2", "frequent=1")
    log = (tmp_path / "out" / "training.log").read_text()
    assert "LR schedule re-planned from the config (total_iters changed): total steps 4 -> 8, base lr 0.1 -> 0.1; " \
           "learning rate now 0.050000 at global step 4" in log
    assert "training done: 8 steps" in log
    lrs = {int(step): float(lr) for lr, step in re.findall(r"LearningRate ([0-9.]+) .*Global Step: (\d+)", log)}
    assert [lrs[step] for step in (6, 7, 8)] == pytest.approx([0.025, 0.0125, 0.0], abs=1e-6)  # not LR 0 throughout
    after = load_weights(tmp_path / "out" / "model.pt")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_changed_lr_momentum_and_other_keys_are_applied_or_listed(tmp_path, finished_one_epoch):
    run_main(finished_one_epoch, "resume=true", "num_epoch=2", "lr=0.2", "momentum=0.5", "frequent=1")
    log = (tmp_path / "out" / "training.log").read_text()
    assert "base lr 0.1 -> 0.2; learning rate now 0.100000 at global step 4" in log
    assert "resume: momentum 0.9 -> 0.5 (from the config)" in log
    assert "resume: frequent: 2 -> 1 (applies from now on)" in log
    assert "resume: num_epoch: 1 -> 2 (applies from now on)" in log


def test_changed_optimizer_is_refused_naming_the_key(tmp_path, finished_one_epoch):
    with pytest.raises(ConfigError, match="optimizer: checkpoint 'sgd' vs config 'adamw'"):
        run_main(finished_one_epoch, "resume=true", "optimizer=adamw", "lr=0.001")


def test_unchanged_resume_reports_nothing(tmp_path, finished_one_epoch):
    run_main(finished_one_epoch, "resume=true")
    log = (tmp_path / "out" / "training.log").read_text()
    assert "resume:" not in log and "training done: 4 steps" in log


# --- synthetic data, secrets, validation before the data scan --------------------------------------------

def test_synthetic_data_has_num_image_samples():
    loader = ds.get_dataloader("synthetic", 0, 32, num_workers=0, num_image=320, rank=0, world_size=1)
    assert len(loader.dataset) == 320 and len(loader) == 10
    assert len(ds.get_dataloader("synthetic", 0, 32, num_workers=0, rank=0, world_size=1).dataset) == 1_000_000


def test_synthetic_run_ends_with_its_schedule(tmp_path):
    config = write_config(tmp_path / "c.py", "synthetic", tmp_path / "out", num_classes=10, num_image=64,
                          val_targets=[], num_epoch=1, warmup_epoch=-1)
    run_main(config)
    log = (tmp_path / "out" / "training.log").read_text()
    assert "training done: 4 steps" in log


def test_secrets_never_reach_the_log_or_the_checkpoint(tmp_path, tiny_data):  # noqa: F811
    secret = "0123456789abcdef-not-for-logs"
    config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "out", num_epoch=1, wandb_key=secret)
    run_main(config)
    out = tmp_path / "out"
    assert secret not in (out / "training.log").read_text()
    assert "wandb_key" in (out / "training.log").read_text()
    assert secret.encode() not in (out / "checkpoint_gpu_0.pt").read_bytes()


def test_unknown_network_is_reported_before_the_data(tmp_path):
    config = write_config(tmp_path / "c.py", tmp_path / "no_such_data", tmp_path / "out", network="r5O")
    with pytest.raises(ConfigError, match=r"unknown network 'r5O' \(config key 'network'\): did you mean 'r50'"):
        run_main(config)
    assert not (tmp_path / "out").exists()


# --- earlier runs, failed start-ups ------------------------------------------------------------------

def test_fresh_run_over_a_finished_run_is_refused_unless_overwrite(tmp_path, finished_one_epoch):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="holds an earlier run .*set resume=True to continue it, overwrite=True"):
        run_main(finished_one_epoch)
    assert (out / "training.log").read_text().count("training done") == 1
    run_main(finished_one_epoch, "overwrite=true")
    log = (out / "training.log").read_text()
    assert log.count("training done") == 1 and "overwrite=True: removed" in log


def test_resume_auto_without_checkpoint_over_a_finished_run_is_refused(tmp_path, tiny_data):  # noqa: F811
    config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "out", num_epoch=1, save_all_states=False)
    run_main(config)
    with pytest.raises(ConfigError, match="holds an earlier run"):
        run_main(config, "resume=auto")


def test_stale_lock_needs_resume_or_overwrite(tmp_path, finished_one_epoch):
    lock = tmp_path / "out" / ".lock"
    lock.write_text('{"pid": 999999999, "host": "%s"}' % os.uname().nodename)
    with pytest.raises(ConfigError, match="holds an earlier run"):
        run_main(finished_one_epoch)
    run_main(finished_one_epoch, "overwrite=true")
    assert not lock.exists()


def test_failed_start_up_leaves_no_new_output_folder(tmp_path, tiny_data):  # noqa: F811
    config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "out", num_classes=4)
    with pytest.raises(ArcFaceError, match="num_classes"):   # labels beyond num_classes
        run_main(config)
    assert not (tmp_path / "out").exists()


# --- bad samples in DataLoader workers ----------------------------------------------------------------

def corrupt_copy(src: Path, dst: Path, keys_to_break: int = 1) -> Path:
    """A copy of a RecordIO data set whose first record's JPEG bytes are garbage."""
    from utils import recordio
    dst.mkdir()
    reader = recordio.MXIndexedRecordIO(str(src / "train.idx"), str(src / "train.rec"), "r")
    writer = recordio.MXIndexedRecordIO(str(dst / "train.idx"), str(dst / "train.rec"), "w")
    broken = 0
    for key in sorted(reader.keys):
        record = reader.read_idx(key)
        header, payload = recordio.unpack(record)
        if header.flag == 0 and broken < keys_to_break and len(payload) > 100:
            payload, broken = b"\x00" * len(payload), broken + 1
        writer.write_idx(key, recordio.pack(header, payload))
    writer.close()
    for extra in src.iterdir():
        if extra.suffix in (".bin", ".lst"):
            (dst / extra.name).write_bytes(extra.read_bytes())
    return dst


@pytest.mark.fresh_process
def test_bad_sample_in_a_worker_is_one_line(tmp_path, tiny_data):  # noqa: F811
    data = corrupt_copy(tiny_data, tmp_path / "bad")
    loader = ds.get_dataloader(str(data), 0, 16, num_workers=2, rank=0, world_size=1)
    loader.set_epoch(0)
    with pytest.raises(DataError) as info:
        for _ in loader:
            pass
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and "Caught" not in message, message
    assert "train.rec: key" in message and "max_bad_samples=0" in message


@pytest.mark.fresh_process
def test_check_data_full_finds_bad_samples_before_the_first_step(tmp_path, tiny_data):  # noqa: F811
    data = corrupt_copy(tiny_data, tmp_path / "bad")
    config = write_config(tmp_path / "c.py", data, tmp_path / "out", check_data="full", num_workers=2)
    with pytest.raises(DataError, match=r"1 of \d+ samples cannot be used \(max_bad_samples=0\); first: .*train.rec"):
        run_main(config)
    assert not (tmp_path / "out").exists()
    assert ds.check_all_samples(str(data), num_workers=0, max_bad_samples=1) == 1
    assert ds.check_all_samples(str(tiny_data), num_workers=2) == 0


# --- full disks and read-only folders -------------------------------------------------------------------

@contextlib.contextmanager
def small_filesystem(path: Path, size_kb: int, read_only: bool = False):
    """A real tmpfs of ``size_kb`` at ``path`` (True), or a plain folder when mounting is not allowed (False)."""
    path.mkdir()
    options = f"size={size_kb}k" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_read_only_output_is_one_line_naming_the_folder(tmp_path, tiny_data, monkeypatch):  # noqa: F811
    with small_filesystem(tmp_path / "ro", 1024, read_only=True) as mounted:
        if not mounted:                      # no mount here: the kernel's answer, injected
            real = os.makedirs

            def read_only(path, *args, **kwargs):
                if str(path).startswith(str(tmp_path / "ro")):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
                return real(path, *args, **kwargs)
            monkeypatch.setattr(os, "makedirs", read_only)
        config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "ro" / "run")
        with pytest.raises(CheckpointError, match=r"cannot write to the output folder .*ro/run: Read-only file system"):
            run_main(config)


def test_full_disk_at_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, tiny_data, monkeypatch):  # noqa: F811
    disk = tmp_path / "disk"
    with small_filesystem(disk, 64 * 1024) as mounted:
        real_save, calls = train_v2.save_rank_checkpoint, {"n": 0}

        def fill_then_save(state, output, rank, keep_previous):
            calls["n"] += 1
            if calls["n"] == 2:                  # epoch 2's checkpoint: leave 64 KB of room
                if mounted:
                    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
                    with open(disk / "filler", "wb") as f:
                        f.write(b"\0" * max(free - 64 * 1024, 0))
                else:
                    def no_space(*args, **kwargs):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    monkeypatch.setattr(torch, "save", no_space)
            return real_save(state, output, rank, keep_previous)

        monkeypatch.setattr(train_v2, "save_rank_checkpoint", fill_then_save)
        config = write_config(tmp_path / "c.py", tiny_data, disk / "run", num_epoch=2)
        with pytest.raises(CheckpointError) as info:
            run_main(config)
        message = str(info.value)
        assert "\n" not in message
        assert re.search(r"cannot write .*checkpoint_gpu_0.pt: No space left on device \(needs about [0-9.]+ MB, "
                         r"[0-9.]+ MB free; the previous file is intact\)", message), message
        state = torch.load(disk / "run" / "checkpoint_gpu_0.pt", map_location="cpu", weights_only=False)
        assert state["global_step"] == 4
        assert not [p for p in (disk / "run").iterdir() if ".tmp." in p.name]


def test_python_warnings_and_config_warnings_reach_training_log(tmp_path, tiny_data):  # noqa: F811
    config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "out", num_epoch=1, margin_list=(1.0, 0.2, 0.3),
                          dali_aug=True)
    # a fresh interpreter: pytest would catch the Python warnings itself
    result = subprocess.run([sys.executable, "train_v2.py", str(config)], cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "out" / "training.log").read_text()
    assert "the original arcface_torch ignored m1 and m2 when m3 > 0" in log       # a warnings.warn
    assert "'dali_aug' has no effect without dali=True" in log


def test_missing_verification_target_stops_before_training(tmp_path, tiny_data):  # noqa: F811
    config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "out", val_targets=["demo_val", "lfw"])
    with pytest.raises(DataError, match=r"verification target file\(s\) not found: .*lfw.bin"):
        run_main(config)
    assert not (tmp_path / "out").exists()
    run_main(config, "val_targets_missing=warn", "num_epoch=1")
    assert "verification targets not found, skipped" in (tmp_path / "out" / "training.log").read_text()
