"""utils/elastic.py and the resume path: a checkpoint of W ranks continues on W' ranks, sample-exact."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from easydict import EasyDict

from tests.conftest import REPO
from tests.test_train import run_main, write_config
from utils import checkpoint as C
from utils import elastic as E
from utils.demo_data import make_demo_dataset
from utils.errors import CheckpointError, ConfigError

ENV = dict(os.environ, OMP_NUM_THREADS="1", ARCFACE_DEVICE="cpu", PYTHONPATH=str(REPO))


# --- resharding the states ------------------------------------------------------------------------

def shard_states(num_classes: int, world: int, k: int = 1, optimizer: str = "sgd", step: int = 7) -> list[dict]:
    """Checkpoint states of ``world`` ranks after two real optimiser steps on their class-centre shards."""
    torch.manual_seed(0)
    backbone = torch.nn.Linear(4, 3)
    states = []
    for rank in range(world):
        _, count = E.class_range(num_classes, rank, world)
        weight = torch.nn.Parameter(torch.randn(count * k, 3))
        params = [{"params": backbone.parameters()}, {"params": [weight]}]
        opt = (torch.optim.SGD(params, lr=0.1, momentum=0.9) if optimizer == "sgd"
               else torch.optim.AdamW(params, lr=0.1))
        for _ in range(2):
            (backbone(torch.randn(2, 4)).sum() + (weight ** 2).sum() * (rank + 1)).backward()
            opt.step()
        states.append({"epoch": 1, "global_step": step, "batch_in_epoch": 2, "samples_in_epoch": 16,
                       "state_dict_backbone": backbone.state_dict(),
                       "state_dict_softmax_fc": {"weight": weight.detach().clone(),
                                                 "margin_softmax.batch_mean": torch.tensor([rank + 20.0])},
                       "state_optimizer": opt.state_dict(), "rng": {"rank": rank},
                       "fingerprint": {"network": "r18", "num_classes": num_classes, "margin": "adaface",
                                       "world_size": world, "batch_size": 4}})
    return states


def gathered(states: list[dict], key: str | None = None) -> torch.Tensor:
    """The class-centre rows (or their optimiser entry ``key``) of all shards in rank order."""
    if key is None:
        return torch.cat([s["state_dict_softmax_fc"]["weight"] for s in states])
    pid = s_pid(states[0])
    return torch.cat([s["state_optimizer"]["state"][pid][key] for s in states])


def s_pid(state: dict) -> int:
    return state["state_optimizer"]["param_groups"][-1]["params"][0]


@pytest.mark.parametrize("old, new, k, optimizer", [(2, 1, 1, "sgd"), (1, 2, 1, "sgd"), (2, 3, 1, "sgd"),
                                                    (3, 2, 3, "sgd"), (4, 3, 1, "adamw"), (3, 5, 2, "adamw")])
def test_reshard_keeps_the_class_order_and_the_optimiser_state_exactly(old, new, k, optimizer):
    states = shard_states(11, old, k, optimizer)
    out = E.reshard(states, 11, new, k=k)
    assert sorted(out) == list(range(new))
    resharded = [out[r] for r in range(new)]
    assert torch.equal(gathered(resharded), gathered(states))
    for key in ("momentum_buffer",) if optimizer == "sgd" else ("exp_avg", "exp_avg_sq"):
        assert torch.equal(gathered(resharded, key), gathered(states, key)), key
    for r, state in enumerate(resharded):
        assert state["state_dict_softmax_fc"]["weight"].shape[0] == E.class_range(11, r, new)[1] * k
        assert state["rng"] == {"rank": r % old}                          # rank r continues old rank r % W
        assert torch.equal(state["state_dict_softmax_fc"]["margin_softmax.batch_mean"], torch.tensor([20.0]))
        assert state["fingerprint"]["world_size"] == new and state["resharded_from"] == old
        assert state["samples_in_epoch"] == 16
        for name, value in states[0]["state_dict_backbone"].items():
            assert torch.equal(state["state_dict_backbone"][name], value)
        if optimizer == "adamw":   # the scalar step count is not a row tensor: kept as it was
            assert torch.equal(state["state_optimizer"]["state"][s_pid(state)]["step"],
                               states[0]["state_optimizer"]["state"][s_pid(state)]["step"])
    # there and back again
    back = E.reshard(resharded, 11, old, k=k)
    assert torch.equal(gathered([back[r] for r in range(old)]), gathered(states))


def save_set(folder: Path, states: list[dict], previous: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for rank, state in enumerate(states):
        name = f"checkpoint_gpu_{rank}.previous.pt" if previous else f"checkpoint_gpu_{rank}.pt"
        torch.save(state, folder / name)


def test_stale_shards_of_another_world_size_are_never_mixed_in(tmp_path):
    """Run on 4 ranks to step 10, resumed on 2 ranks to step 20: ranks 2 and 3 of step 10 stay out."""
    save_set(tmp_path, shard_states(10, 4, step=10))
    save_set(tmp_path, shard_states(10, 4, step=10)[:2], previous=True)   # what keep_previous leaves
    save_set(tmp_path, shard_states(10, 2, step=20))
    files = E.latest_complete_set(str(tmp_path))
    assert [(f.rank, f.step, f.world_size) for f in files] == [(0, 20, 2), (1, 20, 2)]
    os.remove(tmp_path / "checkpoint_gpu_1.pt")           # the 2-rank set lost a shard: step 10 of 4 ranks
    files = E.latest_complete_set(str(tmp_path))
    assert [(f.rank, f.step, f.world_size) for f in files] == [(r, 10, 4) for r in range(4)]
    assert "step 20, world size 2: ranks 0 of 2" in E.describe_incomplete(str(tmp_path))


def test_shards_of_different_runs_are_refused_naming_the_files(tmp_path):
    states = shard_states(10, 2)
    states[1]["fingerprint"]["network"] = "r50"
    save_set(tmp_path, states)
    with pytest.raises(CheckpointError, match=r"come from different runs \(.*checkpoint_gpu_0.pt, .*checkpoint_gpu_1"):
        E.latest_complete_set(str(tmp_path))


def resume_cfg(output: Path, num_classes: int = 10, **overrides) -> EasyDict:
    values = dict(resume=True, output=str(output), network="r18", embedding_size=512, num_classes=num_classes,
                  sample_rate=1.0, optimizer="sgd", margin="adaface", world_size=1, batch_size=8)
    values.update(overrides)
    return EasyDict(values)


def test_resume_on_one_rank_takes_the_gathered_state(tmp_path):
    states = shard_states(10, 3)
    save_set(tmp_path, states)
    state = C.load_checkpoint(resume_cfg(tmp_path), rank=0)
    assert torch.equal(state["state_dict_softmax_fc"]["weight"], gathered(states))
    assert torch.equal(state["state_optimizer"]["state"][s_pid(state)]["momentum_buffer"],
                       gathered(states, "momentum_buffer"))
    assert state["resharded_from"] == 3 and "resharded to 1 ranks" in state["path"]


def test_missing_shard_wrong_class_count_and_other_run_stop_before_training(tmp_path):
    save_set(tmp_path / "a", shard_states(10, 3)[:2])      # rank 2 of 3 is missing
    os.rename(tmp_path / "a" / "checkpoint_gpu_1.pt", tmp_path / "a" / "checkpoint_gpu_2.pt")
    with pytest.raises(ConfigError, match=r"lacks shard files \(step 7, world size 3: ranks 0, 2 of 3\)"):
        C.load_checkpoint(resume_cfg(tmp_path / "a"), rank=0)
    with pytest.raises(ConfigError, match=r"lacks shard files"):
        C.load_checkpoint(resume_cfg(tmp_path / "a", resume="auto"), rank=0)
    save_set(tmp_path / "b", shard_states(10, 3))
    with pytest.raises(ConfigError, match=r"num_classes: checkpoint 10 vs config 12"):
        C.load_checkpoint(resume_cfg(tmp_path / "b", num_classes=12), rank=0)
    original = shard_states(10, 3)
    for state in original:
        del state["fingerprint"]                       # the original's files carry no fingerprint
    save_set(tmp_path / "c", original)
    with pytest.raises(CheckpointError, match=r"checkpoint_gpu_0.pt: 4, checkpoint_gpu_1.pt: 3, checkpoint_gpu_2.pt: 3 "
                                              r"rows\) do not split num_classes = 12 over 3 ranks"):
        C.load_checkpoint(resume_cfg(tmp_path / "c", num_classes=12), rank=0)


# --- python -m utils.checkpoint -------------------------------------------------------------------

def test_cli_info_and_reshard_of_an_original_checkpoint(tmp_path, capsys):
    """checkpoint_gpu_<rank>.pt of the original arcface_torch (no fingerprint) convert the same way."""
    original = shard_states(10, 2)
    for state in original:
        for key in ("fingerprint", "samples_in_epoch", "batch_in_epoch", "rng"):
            del state[key]
    save_set(tmp_path, original)
    assert C.main(["info", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "world size 2 (a checkpoint of the original arcface_torch)" in text
    assert "classes 10, 1 centre(s) per class, per shard: rank 0: 5, rank 1: 5" in text
    assert "global step 7, epoch 1" in text
    assert C.main(["reshard", str(tmp_path), "--world-size", "3"]) == 0
    assert "resharded global step 7 from 2 to 3 ranks" in capsys.readouterr().out
    new = [torch.load(tmp_path / f"checkpoint_gpu_{r}.pt", weights_only=False) for r in range(3)]
    assert torch.equal(gathered(new), gathered(original))
    assert [s["state_dict_softmax_fc"]["weight"].shape[0] for s in new] == [4, 3, 3]
    kept = [torch.load(tmp_path / f"checkpoint_gpu_{r}.previous.pt", weights_only=False) for r in range(2)]
    assert torch.equal(gathered(kept), gathered(original))
    assert C.main(["info", str(tmp_path)]) == 0
    assert "world size 3" in capsys.readouterr().out
    assert C.main(["reshard", str(tmp_path / "none"), "--world-size", "2"]) == 5
    assert capsys.readouterr().err.startswith("error: no complete set of checkpoint_gpu_<rank>.pt files")


def test_a_kill_at_any_point_of_a_reshard_leaves_a_usable_checkpoint(tmp_path, monkeypatch):
    """Every file operation of the offline reshard fails in turn: the folder always resumes to the same state."""
    states = shard_states(10, 2)
    operations = 0
    real_replace = os.replace

    def counting(src, dst):
        nonlocal operations
        operations += 1
        real_replace(src, dst)
    monkeypatch.setattr(E.os, "replace", counting)
    save_set(tmp_path / "probe", states)
    E.write_resharded(str(tmp_path / "probe"), 3, save=C.atomic_save)
    assert operations == 8       # 3 new shards written (temporary + rename), 2 old to .previous, 3 new in place

    class Killed(Exception):
        pass

    for fail_at in range(operations):
        folder = tmp_path / f"kill{fail_at}"
        save_set(folder, states)
        counter = {"n": 0}

        def replace(src, dst):
            counter["n"] += 1
            if counter["n"] == fail_at + 1:
                raise Killed
            real_replace(src, dst)
        monkeypatch.setattr(E.os, "replace", replace)
        with pytest.raises(Killed):
            E.write_resharded(str(folder), 3, save=C.atomic_save)
        monkeypatch.setattr(E.os, "replace", real_replace)
        for world in (1, 2, 3):
            state = C.load_checkpoint(resume_cfg(folder, world_size=world), rank=0) if world == 1 else None
            files = E.latest_complete_set(str(folder), prefer_world=world)
            assert files is not None, fail_at
            loaded = E.load_set(files)
            assert torch.equal(gathered(loaded), gathered(states)), fail_at
            if state is not None:
                assert torch.equal(state["state_dict_softmax_fc"]["weight"], gathered(states)), fail_at


# --- end to end: torchrun with 2 and 3 ranks, 1 rank in process -----------------------------------

NUM = 50                                          # one image per identity: a label names its sample
PROBE = """
import json, os, signal, sys
import train_v2
rank, stop_at = int(os.environ.get("RANK", 0)), int(os.environ.get("PROBE_STOP_AT", 0))
log, real, calls = open(os.environ["PROBE_LOG"] + f".{rank}", "a"), train_v2.train_step, [0]
def recorded(backbone, partial_fc, opt, amp, img, labels, *args, **kwargs):
    calls[0] += 1
    log.write(json.dumps([labels.tolist(), opt.param_groups[0]["lr"]]) + "\\n"); log.flush()
    if calls[0] == stop_at:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(backbone, partial_fc, opt, amp, img, labels, *args, **kwargs)
if __name__ == "__main__":
    train_v2.train_step = recorded
    sys.exit(train_v2.cli(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def one_per_class(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one_per_class")
    make_demo_dataset(str(root), num_ids=NUM, images_per_id=1, num_val_ids=2, num_pairs=4, seed=2)
    (root / "probe.py").write_text(PROBE)
    return root


def elastic_config(folder: Path, data: Path, name: str, **overrides) -> Path:
    values = dict(batch_size=4, num_epoch=2, frequent=1, val_targets=[], num_workers=1, lr=0.1,
                  sample_rate=0.5, margin="adaface", save_all_states=False, warmup_epoch=1)
    values.update(overrides)
    return write_config(folder / f"{name}.py", data, folder / name, **values)


def run_ranks(data: Path, config: Path, ranks: int, log: Path, *overrides: str, stop_at: int = 0) -> str:
    """probe.py under torchrun with ``ranks`` processes; returns its output."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           str(data / "probe.py"), str(config)] + (["--set", *overrides] if overrides else [])
    env = dict(ENV, PROBE_LOG=str(log), PROBE_STOP_AT=str(stop_at))
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert (result.returncode != 0) == bool(stop_at), output[-4000:]
    return output


def run_in_process(monkeypatch, config: Path, log: Path, *overrides: str, stop_at: int = 0) -> None:
    import train_v2
    with monkeypatch.context() as patch:
        patch.setenv("PROBE_LOG", str(log))
        patch.setenv("PROBE_STOP_AT", str(stop_at))
        patch.delenv("RANK", raising=False)
        namespace: dict = {}
        exec(compile(PROBE, "probe", "exec"), namespace)           # defines recorded(), patches nothing
        patch.setattr(train_v2, "train_step", namespace["recorded"])
        try:
            if stop_at:
                with pytest.raises(train_v2.TrainingStopped):
                    run_main(config, *overrides)
            else:
                run_main(config, *overrides)
        finally:
            namespace["log"].close()


def global_steps(log: Path, ranks: int) -> list[tuple[list[int], float]]:
    """[(sorted labels of the global batch, LR)] per step, the ranks' records joined."""
    per_rank = [[json.loads(line) for line in Path(f"{log}.{r}").read_text().splitlines()] for r in range(ranks)]
    assert len({len(records) for records in per_rank}) == 1
    steps = []
    for records in zip(*per_rank):
        assert len({lr for _, lr in records}) == 1              # every rank at the same LR
        steps.append((sorted(label for labels, _ in records for label in labels), records[0][1]))
    return steps


@pytest.mark.slow
def test_two_ranks_resume_on_one_and_on_three(tmp_path, one_per_class, monkeypatch):
    """2 ranks x batch 4 stopped mid-epoch; resumed on 1 rank x batch 8 (same global batch) and on 3 ranks
    (uneven shards, another global batch): every sample of the epoch once, the same batches and LRs."""
    data = one_per_class
    full = elastic_config(tmp_path, data, "full")
    run_ranks(data, full, 2, tmp_path / "full.log")
    reference = global_steps(tmp_path / "full.log", 2)
    steps_per_epoch = (NUM // 2 // 4)                       # 25 per rank -> 6 batches of 4 per epoch
    assert len(reference) == 2 * steps_per_epoch

    cut = elastic_config(tmp_path, data, "cut")
    stop = steps_per_epoch + 3                             # mid-epoch 1
    output = run_ranks(data, cut, 2, tmp_path / "cut.log", stop_at=stop)
    assert f"stopped by SIGTERM at global step {stop}" in output
    before = global_steps(tmp_path / "cut.log", 2)
    assert before == reference[:stop]
    shards = [torch.load(tmp_path / "cut" / f"checkpoint_gpu_{r}.pt", weights_only=False) for r in range(2)]
    shutil.copytree(tmp_path / "cut", tmp_path / "three")

    # on 1 rank, batch 8: the gathered centres and momentum are the saved ones, exactly
    one = elastic_config(tmp_path, data, "cut", batch_size=8)
    state = C.load_checkpoint(resume_cfg(tmp_path / "cut", num_classes=NUM, network="mbf_tiny", embedding_size=64,
                                         sample_rate=0.5), rank=0)
    assert torch.equal(state["state_dict_softmax_fc"]["weight"], gathered(shards))
    assert torch.equal(state["state_optimizer"]["state"][s_pid(state)]["momentum_buffer"],
                       gathered(shards, "momentum_buffer"))
    run_in_process(monkeypatch, one, tmp_path / "one.log", "resume=true")
    after = global_steps(tmp_path / "one.log", 1)
    assert after == reference[stop:]                       # same sample sets and the same LR at every step
    epoch = [label for labels, _ in before[steps_per_epoch:] + after for label in labels]
    assert len(epoch) == len(set(epoch)) == steps_per_epoch * 8
    log = (tmp_path / "cut" / "training.log").read_text()
    assert "class centres and their optimiser state resharded from 2 to 1 ranks" in log
    assert "training done: 12 steps" in log

    # on 3 ranks, batch 4: global batch 12; the epoch continues at sample 24, the LR at the same fraction
    three = elastic_config(tmp_path, data, "three")
    output = run_ranks(data, three, 3, tmp_path / "three.log", "resume=true", "save_all_states=true")
    after = global_steps(tmp_path / "three.log", 3)
    log = (tmp_path / "three" / "training.log").read_text()
    assert "the global batch changes from 8 to 12 (3 ranks x 4); training continues at sample 24 of epoch 1" in log
    assert "no per-rank batch_size keeps the global batch 8 on 3 ranks" in log
    assert len(after) == 2                                 # (51 positions - 24) // 12 = 2 steps left
    seen = [label for labels, _ in before[steps_per_epoch:] + after for label in labels]
    full_epoch = {label for labels, _ in reference[steps_per_epoch:] for label in labels}
    assert len(seen) == len(set(seen)) == 48 and set(seen) == full_epoch
    total = 2 * (17 // 4)                                  # 3 ranks: 17 per rank -> 4 batches per epoch
    assert f"training done: {total} steps" in log, log[-2000:]
    fraction = [lr for _, lr in after]
    assert all(a > b for a, b in zip(fraction, fraction[1:]))       # polynomial decay continues downwards
    new = [torch.load(tmp_path / "three" / f"checkpoint_gpu_{r}.pt", weights_only=False) for r in range(3)]
    assert [s["state_dict_softmax_fc"]["weight"].shape[0] for s in new] == [17, 17, 16]


@pytest.mark.slow
def test_one_rank_resumes_on_two(tmp_path, one_per_class, monkeypatch):
    """1 rank x batch 8 stopped mid-epoch, resumed by torchrun on 2 ranks x batch 4: like an uninterrupted run."""
    data = one_per_class
    full = elastic_config(tmp_path, data, "full", batch_size=8, num_workers=2)
    run_in_process(monkeypatch, full, tmp_path / "full.log")
    reference = global_steps(tmp_path / "full.log", 1)
    cut = elastic_config(tmp_path, data, "cut", batch_size=8, num_workers=2)
    run_in_process(monkeypatch, cut, tmp_path / "cut.log", stop_at=3)
    before = global_steps(tmp_path / "cut.log", 1)
    assert before == reference[:3]
    two = elastic_config(tmp_path, data, "cut", batch_size=4, num_workers=2)
    run_ranks(data, two, 2, tmp_path / "two.log", "resume=true", "save_all_states=true")
    after = global_steps(tmp_path / "two.log", 2)
    assert after == reference[3:]
    log = (tmp_path / "cut" / "training.log").read_text()
    assert "resharded from 1 to 2 ranks" in log and "global step 3" in log
    new = [torch.load(tmp_path / "cut" / f"checkpoint_gpu_{r}.pt", weights_only=False) for r in range(2)]
    assert torch.equal(new[0]["state_dict_softmax_fc"]["margin_softmax.batch_mean"],
                       new[1]["state_dict_softmax_fc"]["margin_softmax.batch_mean"])


def test_bench_reshard_small(tmp_path, capsys):
    """bench/bench_reshard.py end to end on a small checkpoint (its code path, not its speed)."""
    sys.path.insert(0, str(REPO / "bench"))
    import bench_reshard
    assert bench_reshard.main(["--classes", "1003", "--dim", "8", "--from-world", "3", "--to-world", "2",
                               "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1,003 classes x 8 float32" in out and "reshard 3 -> 2:" in out
    assert not any(tmp_path.iterdir())                      # the scratch folder is removed
