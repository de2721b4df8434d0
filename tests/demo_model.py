"""The session's one short demo training run (conftest's ``demo_run`` fixture), shared by every test that
needs a demo model trained on demo faces: test_train's learning test reads its training.log, the
integrity tools' tests (tests/integrity_worlds.py) embed with its model.pt.

A shortened ``configs/demo.py``: 40 identities x 16 demo faces in train.rec/train.idx, 6 epochs of
batch 32 (120 steps), the accuracy on demo_val.bin (200 pairs of 30 held-out identities) logged
every 20 steps. It runs ``python train_v2.py`` in a fresh interpreter, as the README runs it (no
state left by other tests), once per test session (~1 min on 2 CPU cores).
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TRAIN_IDS, TRAIN_IMAGES = 40, 16
VAL_IDS, VAL_PAIRS = 30, 200
EMBEDDING = 128
NETWORK = "mbf_tiny"
SEED = 3                       # of the demo data (utils.demo_data.make_demo_dataset)


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


def train_demo(root: Path) -> DemoRun:
    """Generate the demo data in ``root / 'data'`` and train on it in a fresh interpreter."""
    from tests.test_train import write_config
    from utils.demo_data import make_demo_dataset
    data = root / "data"
    make_demo_dataset(str(data), num_ids=TRAIN_IDS, images_per_id=TRAIN_IMAGES, num_val_ids=VAL_IDS,
                      num_pairs=VAL_PAIRS, seed=SEED)
    config = write_config(root / "demo.py", data, root / "out", network=NETWORK, embedding_size=EMBEDDING,
                          batch_size=32, num_epoch=6, warmup_epoch=1, frequent=5, verbose=20, lr=0.1)
    result = subprocess.run([sys.executable, "train_v2.py", str(config)], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    return DemoRun(data, root / "out", result.returncode, result.stderr)
