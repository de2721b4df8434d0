"""Generated data for the benchmark-integrity tools' tests (eval.leakage, eval.dataset_stats).

Two kinds of world:

- **Pattern world** (no training, exact): every image is an 8 x 8 grid of flat 14-pixel colour
  blocks, stored as PNG (lossless). The "model" is an ONNX graph that averages each block
  (AveragePool 14 x 14 -> 192 numbers), so the tools' embedding of an image is known by hand:
  the block values on the [-1, 1] scale, the mirrored grid added (flip fusion), unit length.
  Identities are orthonormal patterns (mirror-symmetric, so the fusion keeps them), images add
  block noise: genuine pairs have cosine ~0.8, different identities ~0 +- 0.07. The expected
  numbers of a test are computed from the pixel arrays with numpy here, not by the tools' code.
- **Demo world** (the session's one short demo training run, tests/demo_model.py, also read by
  test_train's learning test): demo faces (utils/demo_data.py), the demo model train_v2 trained on
  them, the verification .bin of held-out identities, and image-folder variants with exact copies
  planted. The briefly trained model is weak and its numbers depend on float rounding, so tests
  on it assert only what exact copies decide (a copy's embedding equals the original's whatever
  the weights).
"""
from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from tests import demo_model as DM

GRID, BLOCK = 8, 14                    # 8 x 8 blocks of 14 x 14 pixels = 112 x 112
PATTERN_SD = 30.0                      # pixel sd of an identity's pattern around grey
NOISE_SD = 18.0                        # pixel sd of the per-image block noise
PATTERN_DIMS = 3 * GRID * GRID          # ONNX output size


# ----------------------------------------------------------------------------------------------
# pattern world
# ----------------------------------------------------------------------------------------------

def block_mean_onnx(path: Path) -> Path:
    """ONNX model: (N, 3, 112, 112) -> (N, 192), the mean of every 14 x 14 block of every channel."""
    import onnx
    from onnx import TensorProto, helper
    nodes = [helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[BLOCK, BLOCK],
                              strides=[BLOCK, BLOCK]),
             helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1)]
    graph = helper.make_graph(nodes, "block_mean",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", PATTERN_DIMS])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def wrong_input_onnx(path: Path) -> Path:
    """An ONNX graph that takes 3 x 224 x 224 images (not the 112 x 112 crops the tools feed)."""
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"], axis=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 150528])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def identity_patterns(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, GRID, GRID) float pixel patterns around 128: mirror-symmetric, orthogonal to each other."""
    half = 3 * GRID * (GRID // 2)
    if n > half:
        raise ValueError(f"at most {half} orthogonal patterns")
    q, _ = np.linalg.qr(rng.normal(size=(half, n)))               # orthonormal columns
    left = (q.T * np.sqrt(half) * PATTERN_SD).reshape(n, 3, GRID, GRID // 2)
    return 128.0 + np.concatenate([left, left[..., ::-1]], axis=3)


def draw(pattern: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One image of an identity: its pattern plus block noise, as uint8 blocks (3, GRID, GRID)."""
    return np.clip(np.rint(pattern + rng.normal(0, NOISE_SD, pattern.shape)), 0, 255).astype(np.uint8)


def encode_blocks(blocks: np.ndarray) -> bytes:
    """PNG of the 112 x 112 RGB image whose 14 x 14 blocks have the given (3, GRID, GRID) values."""
    rgb = np.repeat(np.repeat(blocks.transpose(1, 2, 0), BLOCK, 0), BLOCK, 1)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return buf.tobytes()


def hand_embedding(blocks: np.ndarray) -> np.ndarray:
    """The flip-fused unit embedding of block images (..., 3, GRID, GRID), float64, by hand."""
    v = np.asarray(blocks, np.float64) / 127.5 - 1.0               # ToTensor + Normalize(0.5, 0.5)
    fused = (v + v[..., ::-1]).reshape(*v.shape[:-3], -1)          # + the mirrored image's blocks
    return fused / np.linalg.norm(fused, axis=-1, keepdims=True)


def write_folder(root: Path, classes: dict[str, list[bytes]]) -> Path:
    """An image folder: one sub-folder per identity, files 00.png, 01.png, ..."""
    for name, images in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for j, data in enumerate(images):
            (root / name / f"{j:02d}.png").write_bytes(data)
    return root


def write_bin(path: Path, images: list[bytes], issame: list[bool]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump((images, issame), f)
    return path


def pairs_of(identities: int, pairs: int, rng: np.random.Generator) -> np.ndarray:
    """(pairs, 2) identity indices: even pairs the same identity, odd pairs two different ones."""
    first = rng.integers(0, identities, pairs)
    other = (first + rng.integers(1, identities, pairs)) % identities
    return np.stack([first, np.where(np.arange(pairs) % 2 == 0, first, other)], 1)


def calibrated_by_hand(impostor_cosines: np.ndarray) -> float:
    """The documented default threshold for fewer than 10,000 different-identity pairs: the normal tail
    fit at 1 in 10,000 (mean + 3.719 sd), never below the highest pair, never above 1."""
    z = 3.7190164854556804                                         # standard normal quantile at 1 - 1e-4
    fit = impostor_cosines.mean() + z * impostor_cosines.std(ddof=1)
    return float(min(1.0, max(impostor_cosines.max(), fit)))


@dataclass
class PatternTest:
    """A verification .bin of pattern images: blocks and identity of every image, pairs adjacent."""
    blocks: np.ndarray            # (2P, 3, GRID, GRID) uint8
    who: np.ndarray               # (2P,) identity index
    issame: np.ndarray            # (P,) bool
    images: list[bytes] = field(default_factory=list)

    @classmethod
    def make(cls, patterns: np.ndarray, pairs: int, rng: np.random.Generator) -> "PatternTest":
        who = pairs_of(len(patterns), pairs, rng).ravel()
        blocks = np.stack([draw(patterns[k], rng) for k in who])
        return cls(blocks, who, who[0::2] == who[1::2], [encode_blocks(b) for b in blocks])

    def write(self, path: Path) -> Path:
        return write_bin(path, self.images, self.issame.tolist())


# ----------------------------------------------------------------------------------------------
# demo world (the session's demo run, tests/demo_model.py)
# ----------------------------------------------------------------------------------------------

DEMO_TRAIN_IDS, DEMO_TRAIN_IMAGES = DM.TRAIN_IDS, DM.TRAIN_IMAGES
DEMO_VAL_PAIRS = DM.VAL_PAIRS
DEMO_EMBEDDING = DM.EMBEDDING
DEMO_COPIES = 4                   # test images copied, each as a one-image class zz_copy<k>, into `injected`


@dataclass
class DemoWorld:
    """The demo run's training images as an image folder, its model and .bin, and variants with planted copies."""
    root: Path
    clean: Path                   # the demo run's training images, one folder id<label> per identity
    injected: Path                # clean + zz_copy<k>: exact copies of test images copied[k]
    planted: Path                 # clean + id005_copy (byte copies of id005's images)
    bins: Path
    model: Path
    copied: list[int]             # the test image index behind zz_copy<k>

    def model_args(self) -> list[str]:
        return ["--model", str(self.model), "--network", DM.NETWORK, "--num-features", str(DEMO_EMBEDDING),
                "--workers", "0", "--no-progress"]

    def leakage_args(self, train: Path, *extra: str) -> list[str]:
        return [*self.model_args(), "--train", str(train), "--data-dir", str(self.bins), "--targets", "demo_val",
                *extra]


def _demo_folder(folder: Path, images: list[bytes], prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for j, data in enumerate(images):
        (folder / f"{prefix}{j:02d}.jpg").write_bytes(data)


def demo_world(run: DM.DemoRun, root: Path) -> DemoWorld:
    """The variants of the demo run's data (the record bytes written out as files: the same images the model
    trained on); the first image of the first DEMO_COPIES pairs is copied into `injected`."""
    from eval.dataset_stats import TrainingSet
    records = TrainingSet(run.data)
    by_label: dict[int, list[bytes]] = {}
    for i in range(len(records)):
        payload, label = records.read(i)
        by_label.setdefault(label, []).append(payload)
    clean = root / "clean"
    for label, images in sorted(by_label.items()):
        _demo_folder(clean / f"id{label:03d}", images)
    with open(run.data / "demo_val.bin", "rb") as f:
        images, _ = pickle.load(f)
    copied = [2 * k for k in range(DEMO_COPIES)]
    injected = root / "injected"
    shutil.copytree(clean, injected)
    for k, index in enumerate(copied):
        _demo_folder(injected / f"zz_copy{k}", [bytes(images[index])])
    planted = root / "planted"
    shutil.copytree(clean, planted)
    shutil.copytree(clean / "id005", planted / "id005_copy")
    return DemoWorld(root, clean, injected, planted, run.data, run.model, copied)
