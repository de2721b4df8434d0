"""The session's one short demo training run (conftest's ``demo_run`` fixture), shared by every test that
needs a demo model trained on demo faces: test_train's learning test reads its training.log, the
integrity tools' tests (tests/integrity_worlds.py) embed with its model.pt.

A shortened ``configs/demo.py``: 40 identities x 16 demo faces in train.rec/train.idx, 6 epochs of
batch 32 (120 steps), the accuracy on demo_val.bin (200 pairs of 30 held-out identities) and on
demo_seen.bin (200 pairs of new renders of the 40 training identities) logged every 40 steps.

Why two sets: an untrained mbf_tiny already scores 0.55-0.62 on demo_val, and a CPU-length run only
adds 0.07-0.2 there (it depends on the thread count's numerics), so held-out accuracy alone is a weak
witness of learning. New images of the trained identities rise from ~0.53 to 0.70-0.89 in the same
runs: the learning tests compare both with the untrained network on the same pairs.

It runs ``python train_v2.py`` in a fresh interpreter, as the README runs it (no state left by other
tests), once per test session (~2 min on 2 CPU cores).
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

TRAIN_IDS, TRAIN_IMAGES = 40, 16
VAL_IDS, VAL_PAIRS = 30, 200
EMBEDDING = 128
NETWORK = "mbf_tiny"
SEED = 3                       # of the demo data (utils.demo_data.make_demo_dataset)
SEEN_PAIRS = 200
LOSS_RE = re.compile(r"Loss ([0-9.]+)\s+LearningRate")


def accuracies(log: str, target: str) -> list[float]:
    """The flip-test accuracies the training log reports for ``target``, in step order."""
    return [float(a) for a in re.findall(rf"\[{target}\]\[\d+\]Accuracy-Flip: ([0-9.]+)", log)]


def write_seen_bin(data: Path, num_ids: int = TRAIN_IDS, seed: int = SEED, pairs: int = SEEN_PAIRS) -> Path:
    """``data/demo_seen.bin``: pairs of new renders of the training identities of make_demo_dataset(seed)."""
    from utils.demo_data import random_identity, write_verification_bin
    rng = np.random.default_rng(seed)          # the same draws make_demo_dataset makes first
    identities = [random_identity(rng) for _ in range(num_ids)]
    path = data / "demo_seen.bin"
    write_verification_bin(str(path), identities, pairs, np.random.default_rng(seed + 1000))
    return path


THREADS = 2     # the learning tests' numbers depend on the thread count (short CPU runs): always 2, as on CI


def training_env() -> dict[str, str]:
    """The environment of a learning test's training run: THREADS threads, whatever the suite runs with."""
    import os
    return dict(os.environ, OMP_NUM_THREADS=str(THREADS))


_BASELINES: dict[tuple, float] = {}     # the learning tests share their data: each baseline once


def untrained_accuracy(bin_path: Path, network: str = NETWORK, embedding: int = EMBEDDING,
                       seeds=(0, 1, 2)) -> float:
    """Mean flip-test accuracy of freshly initialised networks on ``bin_path`` (the learning baseline)."""
    key = (hashlib.sha1(Path(bin_path).read_bytes()).hexdigest(), network, embedding, tuple(seeds))
    if key not in _BASELINES:
        import torch

        from backbones import get_model
        from eval.verification import load_bin, test
        data = load_bin(str(bin_path))
        scores, threads = [], torch.get_num_threads()
        torch.set_num_threads(THREADS)      # an untrained network's near-equal embeddings: rounding decides
        try:
            for seed in seeds:
                torch.manual_seed(seed)
                # batch 20: its activations stay below glibc's mmap threshold (batch 100 page-faults them
                # in afresh every layer in this process: 14 s instead of 5.5 s per set)
                scores.append(test(data, get_model(network, num_features=embedding).eval(), 20)[2])
        finally:
            torch.set_num_threads(threads)
        _BASELINES[key] = float(np.mean(scores))
    return _BASELINES[key]


def assert_learned(log: str, data: Path, network: str = NETWORK, embedding: int = EMBEDDING) -> None:
    """Accuracy on new renders of the training identities rises clearly above the untrained network's,
    held-out accuracy rises above it too, and the loss falls."""
    seen, held = accuracies(log, "demo_seen"), accuracies(log, "demo_val")
    losses = [float(x) for x in LOSS_RE.findall(log)]
    assert len(seen) >= 3 and len(held) == len(seen) and len(losses) >= 4, log[-2000:]
    base_seen = untrained_accuracy(data / "demo_seen.bin", network, embedding)
    base_held = untrained_accuracy(data / "demo_val.bin", network, embedding)
    assert max(seen) >= base_seen + 0.12, (base_seen, seen)
    assert max(held) >= base_held + 0.04, (base_held, held)
    assert min(losses[-2:]) < losses[0] - 3.0, losses


@dataclass
class DemoRun:
    data: Path                 # train.rec/train.idx and demo_val.bin
    output: Path               # the run's output folder: model.pt, training.log, config.json
    returncode: int
    stderr: str

    @property
    def model(self) -> Path:
        return self.output / "model.pt"

    @property
    def log(self) -> Path:
        return self.output / "training.log"

    def check(self) -> None:
        """Raise unless the run finished (the tests that only use its model say why they cannot run)."""
        if self.returncode != 0 or not self.model.is_file():
            raise RuntimeError(f"the session's demo training run failed (exit {self.returncode}):\n"
                               f"{self.stderr[-3000:]}")


def shared_demo_run(root: Path) -> DemoRun:
    """train_demo(root) once for all the processes that ask (an exclusive lock on root.lock); the result is
    kept in root/run.json for the later ones."""
    import fcntl
    import json

    from utils.files import atomic_write_text
    root.mkdir(parents=True, exist_ok=True)
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = root / "run.json"
        if record.is_file():
            saved = json.loads(record.read_text())
            return DemoRun(root / "data", root / "out", saved["returncode"], saved["stderr"])
        run = train_demo(root)
        atomic_write_text(str(record), json.dumps({"returncode": run.returncode, "stderr": run.stderr}))
        return run


def train_demo(root: Path) -> DemoRun:
    """Generate the demo data in ``root / 'data'`` and train on it in a fresh interpreter."""
    from tests.test_train import write_config
    from utils.demo_data import make_demo_dataset
    data = root / "data"
    make_demo_dataset(str(data), num_ids=TRAIN_IDS, images_per_id=TRAIN_IMAGES, num_val_ids=VAL_IDS,
                      num_pairs=VAL_PAIRS, seed=SEED)
    write_seen_bin(data)
    config = write_config(root / "demo.py", data, root / "out", network=NETWORK, embedding_size=EMBEDDING,
                          batch_size=32, num_epoch=6, warmup_epoch=1, frequent=5, verbose=40, lr=0.1,
                          val_targets=["demo_val", "demo_seen"], num_workers=2)
    result = subprocess.run([sys.executable, "train_v2.py", str(config)], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env=training_env())
    return DemoRun(data, root / "out", result.returncode, result.stderr)
