"""Pair verification on .bin sets (LFW, CFP-FP, AgeDB-30, CPLFW, CALFW): the original protocol, vectorised.

Same public names, arguments and return values as the original arcface_torch
``eval/verification.py`` (``load_bin``, ``evaluate``, ``test``, ``calculate_roc``,
``calculate_val``); the per-threshold Python loops are replaced by sorting and
``searchsorted`` counts, giving bit-identical decisions. ``*_folds`` variants also return
the per-fold details (chosen thresholds, VAL/FAR per fold). Run as a module for the
standalone evaluator: ``python -m eval.verification --help``.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from utils.cli import model_parser, run_tool
from utils.errors import DataError
from utils.image import ImageDecodeError, decode_rgb_chw

ACC_THRESHOLDS = np.arange(0, 4, 0.01)      # accuracy / ROC grid of the original
VAL_THRESHOLDS = np.arange(0, 4, 0.001)     # VAL@FAR grid of the original
FAR_TARGET = 1e-3
DEFAULT_TARGETS = ("lfw", "cfp_fp", "agedb_30", "cplfw", "calfw")


class BinFileError(DataError):
    """A verification .bin file is unreadable or inconsistent."""


# ----------------------------------------------------------------------------------------------
# .bin loading
# ----------------------------------------------------------------------------------------------

_PICKLE_GLOBALS = {
    ("_codecs", "encode"),                       # bytes pickled by Python 3 with protocol < 3
    ("builtins", "bytearray"), ("__builtin__", "bytearray"),
    ("builtins", "bytes"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class _BinUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the few globals a (images, issame_list) pickle can need."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise BinFileError(f"{self._path}: refusing to load {module}.{name} from the pickle "
                               "(a verification .bin holds only encoded images and a bool list)")
        return super().find_class(module, name)


def _read_bin_pickle(path: str) -> tuple[Sequence, list[bool]]:
    """Unpickle (bins, issame_list) written by Python 2 or 3; one-line errors naming the file."""
    try:
        with open(path, "rb") as f:
            obj = _BinUnpickler(f, path).load()
    except BinFileError:
        raise
    except FileNotFoundError:
        raise BinFileError(f"{path}: file not found") from None
    except OSError as err:
        raise BinFileError(f"{path}: cannot read ({err.strerror or err})") from None
    except (EOFError, pickle.UnpicklingError) as err:
        if os.path.getsize(path) == 0:
            what = "empty file"
        elif "truncated" in str(err) or isinstance(err, EOFError):
            what = f"truncated pickle (file cut short?): {err}"
        else:
            what = f"not a pickle: {str(err).rstrip('.')}"
        raise BinFileError(f"{path}: {what}; expected a pickled (images, issame_list) verification .bin") from None
    except Exception as err:  # malformed opcodes raise many different types
        raise BinFileError(f"{path}: not a valid verification .bin pickle: "
                           f"{type(err).__name__}: {err}") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFileError(f"{path}: expected a pickled (images, issame_list) tuple, "
                           f"got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple, np.ndarray)) or not isinstance(issame, (list, tuple, np.ndarray)):
        raise BinFileError(f"{path}: expected (list of images, list of bools), "
                           f"got ({type(bins).__name__}, {type(issame).__name__})")
    issame_list = []
    for i, flag in enumerate(issame):
        if not isinstance(flag, (bool, int, np.bool_, np.integer)):
            raise BinFileError(f"{path}: issame_list[{i}] is {type(flag).__name__}, expected bool")
        issame_list.append(bool(flag))
    if len(bins) != 2 * len(issame_list):
        raise BinFileError(f"{path}: {len(bins)} images but issame_list has {len(issame_list)} pairs "
                           f"(expected {2 * len(issame_list)} images)")
    if not issame_list:
        raise BinFileError(f"{path}: no pairs in issame_list")
    return bins, issame_list


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize with OpenCV, as the original (mx.image.resize_short uses OpenCV's bicubic)."""
    import cv2
    hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
    out = cv2.resize(hwc, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    return torch.from_numpy(out).permute(2, 0, 1)


def _decode_into(images: np.ndarray, flipped: np.ndarray, bins: Sequence, indices: range, path: str) -> None:
    """Decode bins[indices] into the two uint8 arrays (numpy copies: no intra-op thread pool per image)."""
    size = images.shape[2:]
    for idx in indices:
        buf = bins[idx]
        if isinstance(buf, str):                 # py2 str loaded as text elsewhere
            buf = buf.encode("latin1")
        if not isinstance(buf, (bytes, bytearray, memoryview, np.ndarray)):
            raise BinFileError(f"{path}: image {idx} is {type(buf).__name__}, expected encoded bytes")
        try:
            img = decode_rgb_chw(buf)
        except ImageDecodeError as err:
            raise BinFileError(f"{path}: image {idx} cannot be decoded ({err})") from None
        if tuple(img.shape[1:]) != size:
            img = _resize(img, size)
        chw = img.numpy()
        images[idx] = chw
        flipped[idx] = chw[:, :, ::-1]


def load_bin(path: str | os.PathLike, image_size: Sequence[int] = (112, 112),
             num_threads: int | None = None) -> tuple[list[torch.Tensor], list[bool]]:
    """Read a verification .bin -> ([images, flipped_images], issame_list).

    Same structure as the original: two NCHW RGB tensors of 2*P images (pairs adjacent; index 1
    mirrored left-right) and P booleans. Difference: the tensors are uint8 (0..255) instead of
    float32 holding 0..255, a quarter of the memory; ``test()`` accepts both. Images whose size
    differs from ``image_size`` (H, W) are resized (bicubic). Python 2 pickles are read with
    ``encoding='bytes'`` (one pass; equivalent to the original's UnicodeDecodeError fallback).
    """
    path = os.fspath(path)
    bins, issame_list = _read_bin_pickle(path)
    height, width = int(image_size[0]), int(image_size[1])
    data = torch.empty((len(bins), 3, height, width), dtype=torch.uint8)
    flipped = torch.empty_like(data)
    args = (data.numpy(), flipped.numpy(), bins)
    workers = max(1, min(num_threads or min(8, os.cpu_count() or 1), len(bins)))
    bounds = np.linspace(0, len(bins), workers * 4 + 1).astype(int) if workers > 1 else [0, len(bins)]
    chunks = [range(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if workers == 1:
        for chunk in chunks:
            _decode_into(*args, chunk, path)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(lambda c: _decode_into(*args, c, path), chunks):
                pass
    return [data, flipped], issame_list


# ----------------------------------------------------------------------------------------------
# protocol
# ----------------------------------------------------------------------------------------------

@dataclass
class RocResult:
    """Accuracy / ROC part of the protocol with its per-fold details."""
    tpr: np.ndarray                      # (T,) mean over folds of the test-fold TPR per threshold
    fpr: np.ndarray                      # (T,)
    accuracy: np.ndarray                 # (K,) test accuracy of each fold at its chosen threshold
    best_threshold_index: np.ndarray     # (K,) index into thresholds (first best on the train folds)
    best_threshold: np.ndarray           # (K,)
    thresholds: np.ndarray               # (T,)
    fold_sizes: list[int]


@dataclass
class ValResult:
    """VAL @ FAR part of the protocol with its per-fold details (NaN where a fold has no such pair)."""
    val: float
    val_std: float
    far: float
    val_per_fold: np.ndarray
    far_per_fold: np.ndarray
    threshold_per_fold: np.ndarray


@dataclass
class Evaluation:
    """Everything ``evaluate`` computes."""
    roc: RocResult
    val_far: ValResult

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, float]:
        """(tpr, fpr, accuracy, val, val_std, far) as the original ``evaluate`` returns."""
        return (self.roc.tpr, self.roc.fpr, self.roc.accuracy,
                self.val_far.val, self.val_far.val_std, self.val_far.far)


def fold_bounds(n_pairs: int, n_folds: int) -> list[tuple[int, int]]:
    """Contiguous test blocks of an unshuffled K-fold (first n % K folds one larger), as sklearn KFold."""
    if n_folds < 1:
        raise ValueError(f"nrof_folds must be >= 1, got {n_folds}")
    if n_folds > 1 and n_pairs < n_folds:
        raise ValueError(f"cannot split {n_pairs} pairs into {n_folds} folds")
    sizes = np.full(n_folds, n_pairs // n_folds)
    sizes[:n_pairs % n_folds] += 1
    stops = np.cumsum(sizes)
    return [(int(b - s), int(b)) for s, b in zip(sizes, stops)]


def pair_distances(embeddings1: np.ndarray, embeddings2: np.ndarray) -> np.ndarray:
    """Squared L2 distance of each pair, in the input dtype like the original, returned as float64.

    Same operations as the original (subtract, square, sum over the row), in cache-sized row
    blocks; each row's sum is unchanged by the blocking.
    """
    out = np.empty(embeddings1.shape[0], np.result_type(embeddings1, embeddings2))
    for start in range(0, embeddings1.shape[0], 1024):
        diff = np.subtract(embeddings1[start:start + 1024], embeddings2[start:start + 1024])
        out[start:start + 1024] = np.sum(np.square(diff, out=diff), 1)
    return out.astype(np.float64)


def _counts_below(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray):
    """Genuine and impostor counts with dist < t for every t, and the two totals."""
    genuine = np.sort(dist[issame])
    impostor = np.sort(dist[~issame])
    return (np.searchsorted(genuine, thresholds, side="left"),
            np.searchsorted(impostor, thresholds, side="left"), genuine.size, impostor.size)


def _fold_counts(dist: np.ndarray, issame: np.ndarray, bounds: list[tuple[int, int]],
                 thresholds: np.ndarray):
    """Per fold (K, T) counts for its test block and for its train set (all other pairs)."""
    k, t = len(bounds), len(thresholds)
    test_gen, test_imp = np.empty((k, t), np.int64), np.empty((k, t), np.int64)
    test_ng, test_ni = np.empty(k, np.int64), np.empty(k, np.int64)
    for i, (a, b) in enumerate(bounds):
        test_gen[i], test_imp[i], test_ng[i], test_ni[i] = _counts_below(dist[a:b], issame[a:b], thresholds)
    if k == 1:                                   # the original's LFold(1): train set = test set
        return (test_gen, test_imp, test_ng, test_ni), (test_gen, test_imp, test_ng, test_ni)
    train = (test_gen.sum(0) - test_gen, test_imp.sum(0) - test_imp, test_ng.sum() - test_ng,
             test_ni.sum() - test_ni)
    return (test_gen, test_imp, test_ng, test_ni), train


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den per row, 0 where den is 0 (the original's TPR/FPR convention)."""
    den = np.asarray(den)[..., None] if np.ndim(num) > np.ndim(den) else np.asarray(den)
    return np.divide(num, den, out=np.zeros(np.shape(num), np.float64), where=den != 0)


def _check_pairs(embeddings1: np.ndarray, embeddings2: np.ndarray, actual_issame) -> np.ndarray:
    issame = np.asarray(actual_issame, dtype=bool)
    if embeddings1.shape[0] != embeddings2.shape[0] or embeddings1.shape[0] != issame.shape[0]:
        raise ValueError(f"{embeddings1.shape[0]} / {embeddings2.shape[0]} embeddings for "
                         f"{issame.shape[0]} pairs; expected one embedding per pair side")
    return issame


def _pca_distances(embeddings1: np.ndarray, embeddings2: np.ndarray, train: np.ndarray, pca: int):
    """The original's pca > 0 branch: PCA fitted on the train pairs, re-normalised, squared L2."""
    from sklearn.decomposition import PCA
    model = PCA(n_components=pca).fit(np.concatenate((embeddings1[train], embeddings2[train]), axis=0))
    e1, e2 = l2_normalize(model.transform(embeddings1)), l2_normalize(model.transform(embeddings2))
    return pair_distances(e1, e2)


def _roc_from_counts(test, train, bounds, thresholds) -> RocResult:
    test_gen, test_imp, test_ng, test_ni = test
    train_gen, train_imp, train_ng, train_ni = train
    acc_train = (train_gen + (train_ni[:, None] - train_imp)) / (train_ng + train_ni)[:, None]
    best = np.argmax(acc_train, axis=1)                  # first maximum, as the original
    rows = np.arange(len(bounds))
    accuracy = (test_gen[rows, best] + test_ni - test_imp[rows, best]) / (test_ng + test_ni)
    return RocResult(tpr=np.mean(_ratio(test_gen, test_ng), 0), fpr=np.mean(_ratio(test_imp, test_ni), 0),
                     accuracy=accuracy, best_threshold_index=best, best_threshold=thresholds[best],
                     thresholds=thresholds, fold_sizes=[b - a for a, b in bounds])


def calculate_roc_folds(thresholds: np.ndarray, embeddings1: np.ndarray, embeddings2: np.ndarray,
                        actual_issame, nrof_folds: int = 10, pca: int = 0,
                        dist: np.ndarray | None = None) -> RocResult:
    """Per-fold best threshold on the train folds, its test accuracy, and the mean test ROC.

    ``dist`` (optional) is ``pair_distances(embeddings1, embeddings2)`` already computed.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    issame = _check_pairs(embeddings1, embeddings2, actual_issame)
    bounds = fold_bounds(issame.shape[0], nrof_folds)
    if pca > 0:
        test, train = _pca_fold_counts(embeddings1, embeddings2, issame, bounds, thresholds, pca)
    else:
        dist = pair_distances(embeddings1, embeddings2) if dist is None else dist
        test, train = _fold_counts(dist, issame, bounds, thresholds)
    return _roc_from_counts(test, train, bounds, thresholds)


def _pca_fold_counts(embeddings1, embeddings2, issame, bounds, thresholds, pca):
    k, t = len(bounds), len(thresholds)
    test = [np.empty((k, t), np.int64), np.empty((k, t), np.int64), np.empty(k, np.int64), np.empty(k, np.int64)]
    train = [np.empty((k, t), np.int64), np.empty((k, t), np.int64), np.empty(k, np.int64), np.empty(k, np.int64)]
    for i, (a, b) in enumerate(bounds):
        in_test = np.zeros(issame.shape[0], bool)
        in_test[a:b] = True
        in_train = ~in_test if k > 1 else in_test
        dist = _pca_distances(embeddings1, embeddings2, in_train, pca)
        for out, mask in ((test, in_test), (train, in_train)):
            out[0][i], out[1][i], out[2][i], out[3][i] = _counts_below(dist[mask], issame[mask], thresholds)
    return test, train


def calculate_roc(thresholds: np.ndarray, embeddings1: np.ndarray, embeddings2: np.ndarray,
                  actual_issame, nrof_folds: int = 10, pca: int = 0):
    """(tpr, fpr, accuracy) as the original."""
    roc = calculate_roc_folds(thresholds, embeddings1, embeddings2, actual_issame, nrof_folds, pca)
    return roc.tpr, roc.fpr, roc.accuracy


def interpolate_threshold(far_train: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """Threshold where FAR_train reaches far_target by linear interpolation (scipy<=1.8 slinear), 0 if never."""
    if far_train.size == 0 or far_train.max() < far_target:
        return 0.0
    a = int(np.searchsorted(far_train, far_target, side="right")) - 1   # last index with FAR <= target
    if a < 0:
        return float(thresholds[0])
    if a + 1 >= far_train.size:
        return float(thresholds[a])
    step = thresholds[a + 1] - thresholds[a]
    return float(thresholds[a] + step * (far_target - far_train[a]) / (far_train[a + 1] - far_train[a]))


def _nan_mean_std(values: np.ndarray) -> tuple[float, float]:
    ok = values[~np.isnan(values)]
    if ok.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(ok)), float(np.std(ok))


def calculate_val_folds(thresholds: np.ndarray, embeddings1: np.ndarray, embeddings2: np.ndarray,
                        actual_issame, far_target: float, nrof_folds: int = 10,
                        dist: np.ndarray | None = None) -> ValResult:
    """VAL (TAR) and FAR per test fold at the train-fold threshold for far_target.

    Where the original divides by zero (a test fold without genuine or without impostor pairs),
    that fold's VAL or FAR is NaN and the means/std are over the other folds (NaN if none).
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    issame = _check_pairs(embeddings1, embeddings2, actual_issame)
    bounds = fold_bounds(issame.shape[0], nrof_folds)
    dist = pair_distances(embeddings1, embeddings2) if dist is None else dist
    _, (_, train_imp, _, train_ni) = _fold_counts(dist, issame, bounds, thresholds)
    far_train = _ratio(train_imp, train_ni)
    val, far, chosen = (np.empty(len(bounds)) for _ in range(3))
    for i, (a, b) in enumerate(bounds):
        chosen[i] = interpolate_threshold(far_train[i], thresholds, far_target)
        accept, same = dist[a:b] < chosen[i], issame[a:b]
        n_same, n_diff = int(same.sum()), int((~same).sum())
        val[i] = np.count_nonzero(accept & same) / n_same if n_same else np.nan
        far[i] = np.count_nonzero(accept & ~same) / n_diff if n_diff else np.nan
    val_mean, val_std = (float(np.mean(val)), float(np.std(val))) if not np.isnan(val).any() \
        else _nan_mean_std(val)
    far_mean = float(np.mean(far)) if not np.isnan(far).any() else _nan_mean_std(far)[0]
    return ValResult(val=val_mean, val_std=val_std, far=far_mean, val_per_fold=val,
                     far_per_fold=far, threshold_per_fold=chosen)


def calculate_val(thresholds: np.ndarray, embeddings1: np.ndarray, embeddings2: np.ndarray,
                  actual_issame, far_target: float, nrof_folds: int = 10) -> tuple[float, float, float]:
    """(val_mean, val_std, far_mean) as the original."""
    res = calculate_val_folds(thresholds, embeddings1, embeddings2, actual_issame, far_target, nrof_folds)
    return res.val, res.val_std, res.far


def evaluate_folds(embeddings: np.ndarray, actual_issame, nrof_folds: int = 10, pca: int = 0) -> Evaluation:
    """The full protocol on 2P embeddings (pairs adjacent), with per-fold details."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] % 2:
        raise ValueError(f"embeddings must be (2P, D) with pairs adjacent, got shape {embeddings.shape}")
    e1, e2 = embeddings[0::2], embeddings[1::2]
    issame = np.asarray(actual_issame, dtype=bool)
    dist = pair_distances(e1, e2)
    roc = calculate_roc_folds(ACC_THRESHOLDS, e1, e2, issame, nrof_folds=nrof_folds, pca=pca, dist=dist)
    val = calculate_val_folds(VAL_THRESHOLDS, e1, e2, issame, FAR_TARGET, nrof_folds=nrof_folds, dist=dist)
    return Evaluation(roc=roc, val_far=val)


def evaluate(embeddings: np.ndarray, actual_issame, nrof_folds: int = 10, pca: int = 0):
    """(tpr, fpr, accuracy, val, val_std, far) as the original ``evaluate``."""
    return evaluate_folds(embeddings, actual_issame, nrof_folds, pca).as_tuple()


# ----------------------------------------------------------------------------------------------
# embeddings and the flip test
# ----------------------------------------------------------------------------------------------

def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation computed as sklearn.preprocessing.normalize (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms < 10 * np.finfo(norms.dtype).eps] = 1.0
    return x / norms[:, None]


def extract_embeddings(images: torch.Tensor, backbone: torch.nn.Module, batch_size: int,
                       progress: bool = False, desc: str | None = None) -> np.ndarray:
    """Raw backbone outputs (float64 array, as the original) for uint8 or 0..255 float NCHW images."""
    from face_model import embed_images     # lazily: the training's callback imports this module
    return embed_images(backbone, images, batch_size, progress, desc).astype(np.float64)


def xnorm(embeddings_list: Sequence[np.ndarray]) -> float:
    """Mean L2 norm of every raw embedding (original and flipped rows)."""
    rows = np.concatenate([np.asarray(e, dtype=np.float64) for e in embeddings_list])
    return float(np.linalg.norm(rows, axis=1).sum() / rows.shape[0])


def flip_embeddings(embeddings_list: Sequence[np.ndarray]) -> np.ndarray:
    """L2-normalise(original + flipped): the embeddings the flip test evaluates."""
    return l2_normalize(np.asarray(embeddings_list[0], np.float64) + np.asarray(embeddings_list[1], np.float64))


def embed_data_set(data_set, backbone: torch.nn.Module, batch_size: int,
                   progress: bool = False) -> list[np.ndarray]:
    """[original, flipped] raw embeddings; the backbone runs in eval mode, its mode restored after."""
    was_training = backbone.training
    backbone.eval()
    try:
        return [extract_embeddings(images, backbone, batch_size, progress, desc=f"view {i}")
                for i, images in enumerate(data_set[0])]
    finally:
        backbone.train(was_training)


def test(data_set, backbone: torch.nn.Module, batch_size: int, nfolds: int = 10,
         progress: bool = False):
    """Flip-test verification -> (acc1, std1, acc2, std2, xnorm, embeddings_list) as the original.

    acc1 = std1 = 0.0 always (the original never computes the non-flip accuracy); acc2/std2 are
    the mean/std of the fold accuracies of L2-normalise(original + flipped) embeddings.
    """
    embeddings_list = embed_data_set(data_set, backbone, batch_size, progress)
    _, _, accuracy, _, _, _ = evaluate(flip_embeddings(embeddings_list), data_set[1], nrof_folds=nfolds)
    return 0.0, 0.0, float(np.mean(accuracy)), float(np.std(accuracy)), xnorm(embeddings_list), embeddings_list


# ----------------------------------------------------------------------------------------------
# standalone evaluator
# ----------------------------------------------------------------------------------------------

def find_targets(data_dir: str, targets: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """Map each target to DIR/<target>.bin; also return the missing names; error if none exists."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"--data-dir {data_dir}: not a directory")
    found = {t: root / f"{t}.bin" for t in targets if (root / f"{t}.bin").is_file()}
    missing = [t for t in targets if t not in found]
    if not found:
        raise DataError(f"--data-dir {data_dir}: no verification file found; looked for "
                        + ", ".join(f"{t}.bin" for t in targets))
    return found, missing


def result_dict(ev: Evaluation, xnorm_value: float, file: str = "") -> dict:
    """Per-target JSON record: headline numbers, per-fold details and the ROC arrays."""
    return {
        "file": file, "pairs": int(sum(ev.roc.fold_sizes)),
        "acc": float(np.mean(ev.roc.accuracy)), "std": float(np.std(ev.roc.accuracy)),
        "xnorm": xnorm_value,
        "val": ev.val_far.val, "val_std": ev.val_far.val_std, "far": ev.val_far.far,
        "accuracy_per_fold": ev.roc.accuracy.tolist(),
        "best_thresholds": ev.roc.best_threshold.tolist(),
        "val_thresholds": ev.val_far.threshold_per_fold.tolist(),
        "thresholds": ev.roc.thresholds.tolist(), "tpr": ev.roc.tpr.tolist(), "fpr": ev.roc.fpr.tolist(),
    }


def evaluate_target(path: Path, backbone: torch.nn.Module, batch_size: int, nfolds: int = 10,
                    progress: bool = False) -> dict:
    """Load one .bin, run the flip test, and return its JSON record."""
    data_set = load_bin(path, (112, 112))
    embeddings_list = embed_data_set(data_set, backbone, batch_size, progress)
    ev = evaluate_folds(flip_embeddings(embeddings_list), data_set[1], nrof_folds=nfolds)
    return result_dict(ev, xnorm(embeddings_list), str(path))


def _write_json(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, allow_nan=True)
    os.replace(tmp, path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval.verification", parents=[model_parser()],
                                     description="Evaluate a model on verification .bin sets (flip test).")
    parser.add_argument("--data-dir", required=True, help="folder with <target>.bin files")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated target names")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--nfolds", type=int, default=10)
    parser.add_argument("--json", help="write every number (and ROC arrays) to this file")
    parser.add_argument("--name", help="row name in the table (default: the model's folder or file name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    return args


def run(args: argparse.Namespace) -> dict:
    """Evaluate every target found; print per-target lines and the table row; return the JSON payload."""
    from eval.report import markdown_table
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    from face_model import load_model
    found, missing = find_targets(args.data_dir, targets)
    loaded = load_model(args.model, args.onnx, args.network, args.num_features, args.device)
    backbone, args.network = loaded.backbone, loaded.network
    name = args.name or (Path(args.onnx).stem if args.onnx else loaded.path.resolve().parent.name)
    results = {}
    for target, path in found.items():
        res = evaluate_target(path, backbone, args.batch_size, args.nfolds, progress=not args.no_progress)
        results[target] = res
        print(f"[{target}]XNorm: {res['xnorm']:f}")
        print(f"[{target}]Accuracy-Flip: {res['acc']:1.5f}+-{res['std']:1.5f}")
        print(f"[{target}]VAL@FAR=1e-3: {res['val']:1.5f}+-{res['val_std']:1.5f} (FAR {res['far']:1.5f})")
    accs = {t: r["acc"] for t, r in results.items()}
    table, notes = markdown_table([(name, accs)], targets)
    for target in missing:
        print(f"note: {target}.bin not found in {args.data_dir}; {target} left out of the average")
    print(table)
    for note in notes:
        print(note)
    payload = {"kind": "verification", "name": name, "model": args.model or args.onnx,
               "network": args.network, "data_dir": str(args.data_dir), "targets": results,
               "missing": missing}
    if args.json:
        _write_json(args.json, payload)
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
