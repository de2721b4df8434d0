"""Statistics of a face training set: ``python -m eval.dataset_stats DIR [DIR ...] [--model ...]``.

Without a model (reads every record once, decodes no image): identities, images, images per
identity (min / median / max, histogram), image sizes and channels (from the encoded headers),
exact-duplicate images (hash of the encoded bytes) within and across identities, and label
anomalies (empty classes, gaps in the labels). With a model (flip-fused, normalised embeddings
as in the verification protocol): per identity its consistency (mean cosine of its images to
their centroid), diversity (1 - mean pairwise cosine within it) and separability (cosine of its
centroid to the nearest other centroid); pairs of identities whose images agree more than the
calibrated threshold (mean cosine between the two identities' images) are listed as likely the
same person, and images whose mean cosine to the other images of their identity is below it are
listed as label-noise candidates (with the nearest other identity). The threshold is the cosine
only 1 in 10,000 different-identity pairs exceed: of verification .bin files when given, else
of random pairs of the training set itself, or ``--threshold``.
Every number goes to ``stats.json``, the distributions to ``histograms.png``, the candidates to
contact sheets, and one Markdown summary row per data set to ``summary.md`` (several sets side by
side). The data are read by the trainer's own readers (RecordIO or image folder).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from utils import recordio
from utils.data_check import SYNTHETIC, find_layout, scan_image_folder
from utils.cli import model_parser, run_tool
from utils.errors import DataError
from utils.image import FACE_SIZE

IMAGE_SIZE = FACE_SIZE
MAX_EXAMPLES = 20                     # duplicate groups / anomalies listed by name in the JSON
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


# ----------------------------------------------------------------------------------------------
# reading the training set (the trainer's readers)
# ----------------------------------------------------------------------------------------------

class TrainingSet:
    """The samples of a training folder in the trainer's order: encoded bytes and label of each."""

    def __init__(self, root: str | Path):
        self.root = str(root)
        if self.root == SYNTHETIC:
            raise DataError("'synthetic' has no images to measure: pass a folder with train.rec/train.idx "
                            "or one sub-folder of images per identity")
        self.layout = find_layout(self.root)
        self.class_names: list[str] | None = None
        self.empty_classes: list[str] = []
        if self.layout == "recordio":
            from dataset import MXFaceDataset
            self._records = MXFaceDataset(self.root)
            self.keys = self._records.imgidx
            self.empty_classes = self._empty_identity_records()
        else:
            self.class_names, self.samples = scan_image_folder(self.root, allow_empty=True)
            present = {label for _, label in self.samples}
            self.empty_classes = [n for i, n in enumerate(self.class_names) if i not in present]
        if len(self) == 0:
            raise DataError(f"{self.root}: no images found (expected train.rec/train.idx or identity "
                            "sub-folders with .jpg/.png images)")

    def __len__(self) -> int:
        return len(self.keys) if self.layout == "recordio" else len(self.samples)

    def read(self, index: int) -> tuple[bytes, int]:
        """(encoded image bytes, label) of sample ``index``."""
        if self.layout == "recordio":
            header, payload = recordio.unpack(self._records.imgrec.read_idx(int(self.keys[index])))
            return payload, int(recordio.first_label(header))
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                return f.read(), label
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror})") from None

    def labels(self) -> np.ndarray:
        """The label of every sample (a RecordIO is read record by record; no image is decoded)."""
        if self.layout == "recordio":
            return np.fromiter((self.read(i)[1] for i in range(len(self))), np.int64, len(self))
        return np.fromiter((label for _, label in self.samples), np.int64, len(self))

    def image(self, index: int) -> np.ndarray:
        """Sample ``index`` decoded to uint8 RGB (3, 112, 112) (other sizes resized, bicubic)."""
        from dataset import bgr_to_rgb_chw
        from utils.image import decode_bgr_hwc
        payload, _ = self.read(index)
        try:
            bgr = decode_bgr_hwc(payload)
        except DataError as err:
            raise DataError(f"{self.where(index)}: {err}") from None
        if bgr.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            import cv2
            bgr = cv2.resize(bgr, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_CUBIC)
        return bgr_to_rgb_chw(bgr).numpy()

    def where(self, index: int) -> str:
        """Human-readable location of a sample (file and key, or path)."""
        if self.layout == "recordio":
            return f"{self._records.path_imgrec} key {int(self.keys[index])}"
        return self.samples[index][0]

    def label_name(self, label: int) -> str:
        """The identity's name: its folder, or the label number of a RecordIO."""
        return self.class_names[label] if self.class_names is not None else str(label)

    def _empty_identity_records(self) -> list[str]:
        """insightface layout: identity records (start, end) that hold no image."""
        ranges = recordio.identity_ranges(self._records.imgrec, self._records.header)
        return [str(identity) for identity, (start, end) in enumerate(ranges) if end <= start]


def image_header(payload: bytes) -> tuple[int, int, int, str]:
    """(height, width, channels, format) from an encoded image's header, without decoding it."""
    if payload[:2] == b"\xff\xd8":
        pos = 2
        while pos + 9 < len(payload):
            if payload[pos] != 0xFF:
                break
            marker = payload[pos + 1]
            if marker == 0xFF:                     # fill byte
                pos += 1
                continue
            if marker in _JPEG_SOF:
                height, width = struct.unpack_from(">HH", payload, pos + 5)
                return height, width, payload[pos + 9], "jpeg"
            pos += 2 + struct.unpack_from(">H", payload, pos + 2)[0]
    elif payload[:8] == b"\x89PNG\r\n\x1a\n" and len(payload) >= 26:
        width, height = struct.unpack_from(">II", payload, 16)
        return height, width, _PNG_CHANNELS.get(payload[25], 0), "png"
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(payload)) as img:
            return img.size[1], img.size[0], len(img.getbands()), (img.format or "?").lower()
    except (UnidentifiedImageError, OSError, ValueError):
        return 0, 0, 0, "unreadable"


@dataclass
class Scan:
    """Per-sample facts of one pass over the data (arrays aligned with the sample order)."""
    labels: np.ndarray          # int64
    hashes: np.ndarray          # uint64 (blake2b of the encoded bytes)
    heights: np.ndarray
    widths: np.ndarray
    channels: np.ndarray
    formats: list[str]


def scan(data: TrainingSet, progress: bool = False) -> Scan:
    """Read every sample once: label, content hash and header size (no image decode)."""
    n = len(data)
    labels, hashes = np.empty(n, np.int64), np.empty(n, np.uint64)
    heights, widths, channels = (np.empty(n, np.int32) for _ in range(3))
    formats = []
    indices = range(n)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="reading", unit="img", leave=False)
    for i in indices:
        payload, labels[i] = data.read(i)
        hashes[i] = int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")
        heights[i], widths[i], channels[i], fmt = image_header(payload)
        formats.append(fmt)
    return Scan(labels, hashes, heights, widths, channels, formats)


# ----------------------------------------------------------------------------------------------
# statistics without a model (vectorised over the scan)
# ----------------------------------------------------------------------------------------------

def _count_table(values: Sequence) -> dict[str, int]:
    keys, counts = np.unique(np.asarray(values), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return {str(keys[i]): int(counts[i]) for i in order}


def per_identity_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels present, images of each), sorted by label."""
    return np.unique(labels, return_counts=True)


def duplicates(data: TrainingSet, s: Scan) -> dict:
    """Groups of byte-identical images: how many, extra copies, within one identity or across several."""
    _, inverse, counts = np.unique(s.hashes, return_inverse=True, return_counts=True)
    dup_groups = np.flatnonzero(counts > 1)
    members = np.flatnonzero(counts[inverse] > 1)
    by_group = members[np.argsort(inverse[members], kind="stable")]
    starts = np.searchsorted(inverse[by_group], dup_groups)
    within = across = 0
    examples = []
    for g, start in zip(dup_groups, starts):
        idx = by_group[start:start + counts[g]]
        identities = np.unique(s.labels[idx])
        within += identities.size == 1
        across += identities.size > 1
        if len(examples) < MAX_EXAMPLES:
            examples.append({"identities": [data.label_name(int(x)) for x in identities],
                             "samples": [data.where(int(i)) for i in idx]})
    return {"groups": int(dup_groups.size), "extra_copies": int((counts[dup_groups] - 1).sum()),
            "within_identity_groups": int(within), "across_identity_groups": int(across),
            "examples": examples}


def label_anomalies(data: TrainingSet, present: np.ndarray) -> dict:
    """Empty classes (identities with no image) and gaps (label numbers or numbered folders skipped)."""
    if data.class_names is None:
        top = int(present.max()) if present.size else -1
        gaps = np.setdiff1d(np.arange(0, top + 1), present)
        return {"empty_classes": data.empty_classes, "gaps": [str(g) for g in gaps[:MAX_EXAMPLES]],
                "num_gaps": int(gaps.size), "min_label": int(present.min()), "max_label": top}
    numbers = [int(n) for n in data.class_names if n.isdigit()]
    gaps = []
    if numbers and len(numbers) == len(data.class_names):
        gaps = sorted(set(range(min(numbers), max(numbers) + 1)) - set(numbers))
    return {"empty_classes": data.empty_classes, "gaps": [str(g) for g in gaps[:MAX_EXAMPLES]],
            "num_gaps": len(gaps), "min_label": 0, "max_label": len(data.class_names) - 1}


def histogram(values: np.ndarray, bins: int = 30, integer: bool = False) -> dict:
    """{"edges", "counts"} of a distribution (integer data: bins of whole numbers)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"edges": [], "counts": []}
    if integer:
        lo, hi = int(values.min()), int(values.max())
        width = max(1, int(np.ceil((hi - lo + 1) / bins)))
        edges = np.arange(lo, hi + width + 1, width) - 0.5
    else:
        edges = np.histogram_bin_edges(values, bins=bins)
    counts, edges = np.histogram(values, bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def basic_stats(data: TrainingSet, s: Scan) -> dict:
    """Everything the tool reports without a model, as a JSON-ready dict."""
    present, per_id = per_identity_counts(s.labels)
    shapes, shape_counts = np.unique(np.stack([s.heights, s.widths], 1), axis=0, return_counts=True)
    sizes = {f"{h}x{w}": int(c) for (h, w), c in sorted(zip(shapes.tolist(), shape_counts), key=lambda x: -x[1])}
    anomalies = label_anomalies(data, present)
    unreadable = [data.where(i) for i, f in enumerate(s.formats) if f == "unreadable"]
    anomalies["unreadable_headers"] = unreadable[:MAX_EXAMPLES]
    anomalies["num_unreadable_headers"] = len(unreadable)
    return {
        "kind": "dataset_stats", "path": data.root, "layout": data.layout,
        "identities": int(present.size), "images": int(s.labels.size),
        "classes": anomalies["max_label"] + 1 if data.class_names is None else len(data.class_names),
        "images_per_identity": {"min": int(per_id.min()), "median": float(np.median(per_id)),
                                "max": int(per_id.max()), "mean": float(per_id.mean()),
                                "histogram": histogram(per_id.astype(float), integer=True)},
        "image_sizes": sizes, "channels": _count_table(s.channels),
        "formats": _count_table(s.formats),
        "duplicates": duplicates(data, s), "label_anomalies": anomalies,
    }


# ----------------------------------------------------------------------------------------------
# embeddings, centroids, nearest-centroid search (shared with eval.leakage)
# ----------------------------------------------------------------------------------------------

FAR_CALIBRATION = 1e-4               # the threshold only 1 in 10,000 different-identity pairs exceed


class _Decoded:
    """Map-style dataset: position -> uint8 RGB image of ``indices[position]`` (for a DataLoader)."""

    def __init__(self, data: TrainingSet, indices: np.ndarray):
        self.data, self.indices = data, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        import torch
        return torch.from_numpy(self.data.image(int(self.indices[position])))


def embed_samples(data: TrainingSet, indices: np.ndarray, backbone, batch_size: int = 256,
                  workers: int = 2, progress: bool = False) -> np.ndarray:
    """Flip-fused, L2-normalised float32 embeddings (the verification protocol's) of the samples."""
    import torch
    from torch.utils.data import DataLoader
    from eval.verification import extract_embeddings, flip_embeddings
    loader = DataLoader(_Decoded(data, np.asarray(indices)), batch_size=batch_size, num_workers=workers,
                        collate_fn=torch.stack)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc="embedding", unit="batch", leave=False)
    was_training = backbone.training
    backbone.eval()
    parts = []
    try:
        for images in loader:
            raw = [extract_embeddings(images, backbone, batch_size),
                   extract_embeddings(images.flip(3), backbone, batch_size)]
            parts.append(flip_embeddings(raw).astype(np.float32))
    finally:
        backbone.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def class_sums(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(identities, per-identity sum of embeddings (K, D) float64, image counts): one sparse product."""
    from scipy import sparse
    ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    members = sparse.csr_matrix((np.ones(len(labels)), (inverse, np.arange(len(labels)))),
                                shape=(len(ids), len(labels)))
    return ids, np.asarray(members @ embeddings.astype(np.float64)), counts


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), float32."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def nearest(queries: np.ndarray, keys: np.ndarray, exclude: np.ndarray | None = None,
            block_bytes: int = 64 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Most similar key (dot product) of every query: (similarity, key index), in bounded blocks.

    ``exclude[i]`` is a key index query i must not pick (its own identity), -1 for none. Memory is
    one (rows x cols) float32 block whatever the numbers of queries and keys (2 M identities fit).
    """
    queries, keys = np.asarray(queries, np.float32), np.asarray(keys, np.float32)
    cols = max(1, min(len(keys), 1 << 16))
    rows = max(1, min(len(queries), block_bytes // (4 * cols)))
    best = np.full(len(queries), -np.inf, np.float32)
    best_idx = np.full(len(queries), -1, np.int64)
    for r0 in range(0, len(queries), rows):
        r1 = min(r0 + rows, len(queries))
        for c0 in range(0, len(keys), cols):
            sims = queries[r0:r1] @ keys[c0:c0 + cols].T
            if exclude is not None:
                local = exclude[r0:r1] - c0
                hit = np.flatnonzero((local >= 0) & (local < sims.shape[1]))
                sims[hit, local[hit]] = -np.inf
            arg = sims.argmax(1)
            val = sims[np.arange(r1 - r0), arg]
            better = val > best[r0:r1]
            best[r0:r1][better] = val[better]
            best_idx[r0:r1][better] = arg[better] + c0
    return best, best_idx


def calibrated_threshold(impostor_cosines: np.ndarray, far: float = FAR_CALIBRATION) -> float:
    """The cosine that only a fraction ``far`` of different-identity pairs exceed.

    The empirical quantile when there are at least 1 / far pairs; with fewer (LFW has 3,000) the
    highest pair is only the 1 / n level, so the quantile is extrapolated from a normal fit of the
    cosines (mean + z sd), and never below the highest pair.
    """
    if impostor_cosines.size < 2:
        raise DataError("too few different-identity pairs to calibrate the threshold on: pass --threshold")
    if impostor_cosines.size * far >= 1:
        return float(np.quantile(impostor_cosines, 1.0 - far))
    from statistics import NormalDist
    fit = impostor_cosines.mean() + NormalDist().inv_cdf(1.0 - far) * impostor_cosines.std(ddof=1)
    return float(min(1.0, max(impostor_cosines.max(), fit)))


SATURATED_NOTE = ("note: threshold 1: this model's different-identity cosines reach 1 at 1 in 10,000, so no "
                  "pair or image can be judged (no twins, no label-noise candidates, no leakage); use a stronger "
                  "model")


def calibration_method(pairs: int, far: float = FAR_CALIBRATION) -> str:
    """How calibrated_threshold decides for this many pairs (printed with the threshold)."""
    return "empirical quantile" if pairs * far >= 1 else "normal tail fit"


def pair_cosines(flip_embeddings: np.ndarray) -> np.ndarray:
    """Cosine of each adjacent pair (2P normalised rows -> P values)."""
    return np.einsum("ij,ij->i", flip_embeddings[0::2], flip_embeddings[1::2])


def contact_sheet(rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]], path: Path,
                  title: str) -> Path:
    """A PNG grid: one row per case (its title on the left image), images CHW uint8 with captions."""
    from matplotlib.figure import Figure
    from eval.report import save_figure
    ncols = max([len(images) for _, images in rows] + [1])
    height = 2.1 * max(len(rows), 1) + 0.4
    fig = Figure(figsize=(1.9 * ncols, height), dpi=80)
    axes = np.asarray(fig.subplots(max(len(rows), 1), ncols, squeeze=False))
    for ax in axes.ravel():
        ax.axis("off")
    for r, (row_title, images) in enumerate(rows):
        for c, (image, caption) in enumerate(images):
            ax = axes[r, c]
            ax.imshow(np.transpose(image, (1, 2, 0)))
            ax.set_title((row_title + "\n" if c == 0 else "\n") + caption, fontsize=7)
    if not rows:
        axes[0, 0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))      # the title above the first row's captions
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# statistics with a model
# ----------------------------------------------------------------------------------------------

SHEET_ROWS = 12


def _distribution(values: np.ndarray) -> dict:
    """Mean, median, 5th percentile, min, max and histogram of the finite values."""
    ok = values[np.isfinite(values)]
    if ok.size == 0:
        return {"mean": None, "median": None, "p5": None, "min": None, "max": None, "histogram": histogram(ok)}
    return {"mean": float(ok.mean()), "median": float(np.median(ok)), "p5": float(np.percentile(ok, 5)),
            "min": float(ok.min()), "max": float(ok.max()), "histogram": histogram(ok)}


@dataclass
class Embedded:
    """Embedded samples of a training set and the per-identity sums they give."""
    indices: np.ndarray          # sample index of each row
    embeddings: np.ndarray       # (N, D) float32, unit rows
    rows: np.ndarray             # identity row of each embedding
    identities: np.ndarray       # labels, sorted
    sums: np.ndarray             # (K, D) float64
    counts: np.ndarray

    @property
    def centroids(self) -> np.ndarray:
        return unit_rows(self.sums)


def embed_identities(data: TrainingSet, labels: np.ndarray, backbone, per_class: int = 0,
                     batch_size: int = 256, workers: int = 2, progress: bool = False) -> Embedded:
    """Embed ``per_class`` images of every identity (0 = all) and sum them per identity."""
    from eval.leakage import sample_per_class
    indices = sample_per_class(labels, per_class)
    embeddings = embed_samples(data, indices, backbone, batch_size, workers, progress)
    identities, sums, counts = class_sums(embeddings, labels[indices])
    return Embedded(indices, embeddings, np.searchsorted(identities, labels[indices]), identities, sums, counts)


def identity_measures(e: Embedded) -> dict[str, np.ndarray]:
    """Consistency, diversity, separability (and the nearest identity row) of every identity, exactly.

    With S the sum of an identity's n unit embeddings: mean cosine to the normalised centroid is
    |S| / n, the mean pairwise cosine (i != j) is (|S|^2 - n) / (n (n - 1)).
    """
    norms = np.linalg.norm(e.sums, axis=1)
    n = e.counts.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        pairwise = np.where(n > 1, (norms ** 2 - n) / (n * (n - 1)), np.nan)
    centroids = e.centroids
    everyone = np.arange(len(centroids))
    separability, nearest_row = nearest(centroids, centroids, exclude=everyone)
    # twins are judged on the mean cosine between the two identities' images (S_a . S_b / (n_a n_b)):
    # the scale of a pair cosine, which the calibrated threshold is
    means = (e.sums / n[:, None]).astype(np.float32)
    cross, twin_row = nearest(means, means, exclude=everyone)
    return {"consistency": norms / n, "diversity": 1.0 - pairwise, "separability": separability.astype(np.float64),
            "nearest": nearest_row, "cross": np.minimum(cross, 1.0).astype(np.float64), "twin": twin_row}        # 1 + rounding is 1


def own_mean_cosines(e: Embedded) -> np.ndarray:
    """Mean cosine of every image to the other images of its identity (NaN for one-image identities)."""
    rest = e.sums[e.rows] - e.embeddings
    dots = np.einsum("ij,ij->i", e.embeddings.astype(np.float64), rest)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(e.counts[e.rows] > 1, dots / (e.counts[e.rows] - 1), np.nan)


def training_threshold(e: Embedded, pairs: int = 200_000, seed: int = 0) -> float:
    """Calibrated threshold from random different-identity image pairs of the training set itself."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(e.rows), (2, pairs))
    keep = e.rows[a] != e.rows[b]
    cos = np.einsum("ij,ij->i", e.embeddings[a[keep]], e.embeddings[b[keep]])
    return calibrated_threshold(cos)


def bin_threshold(paths: Sequence[Path], backbone, batch_size: int, progress: bool) -> float:
    """Calibrated threshold from the different-identity pairs of verification .bin files (pooled)."""
    from eval.verification import embed_data_set, flip_embeddings, load_bin
    cosines = []
    for path in paths:
        data_set = load_bin(path, (112, 112))
        flip = flip_embeddings(embed_data_set(data_set, backbone, batch_size, progress))
        cosines.append(pair_cosines(flip)[~np.asarray(data_set[1], bool)])
    return calibrated_threshold(np.concatenate(cosines))


def model_stats(data: TrainingSet, e: Embedded, threshold: float, threshold_source: str) -> tuple[dict, dict]:
    """The model section of stats.json, and the cases for the contact sheets."""
    m = identity_measures(e)
    names = [data.label_name(int(x)) for x in e.identities]
    twins = {}
    for row in np.flatnonzero(m["cross"] > threshold):
        pair = (min(row, m["twin"][row]), max(row, m["twin"][row]))
        twins[pair] = float(m["cross"][row])
    twin_list = sorted(twins.items(), key=lambda kv: -kv[1])
    own = own_mean_cosines(e)
    # a threshold of 1 (a model whose different-identity cosines reach 1) judges no image: none flagged
    flagged = np.flatnonzero(own < threshold) if threshold < 1.0 else np.zeros(0, np.int64)
    flagged = flagged[np.argsort(own[flagged])]
    means = (e.sums / e.counts[:, None]).astype(np.float32)
    other_cos, other_row = nearest(e.embeddings[flagged], means, exclude=e.rows[flagged])
    section = {
        "embedded_images": int(len(e.indices)), "threshold": float(threshold), "threshold_source": threshold_source,
        "consistency": _distribution(m["consistency"]), "diversity": _distribution(m["diversity"]),
        "separability": _distribution(m["separability"]),
        "num_twins": len(twin_list),
        "twins": [{"identities": [names[a], names[b]], "mean_cosine": c} for (a, b), c in twin_list[:200]],
        "num_outliers": int(flagged.size), "saturated": bool(threshold >= 1.0),
        "outliers": [{"sample": data.where(int(e.indices[i])), "identity": names[e.rows[i]],
                      "mean_cosine_own": float(own[i]), "nearest_identity": names[r], "mean_cosine_nearest": float(c)}
                     for i, r, c in zip(flagged[:200], other_row[:200], other_cos[:200])],
        "per_identity": {"identity": names, "images_embedded": e.counts.tolist(),
                         "consistency": m["consistency"].tolist(), "diversity": m["diversity"].tolist(),
                         "separability": m["separability"].tolist(),
                         "nearest_identity": [names[r] for r in m["nearest"]]},
    }
    cases = {"twins": twin_list[:SHEET_ROWS],
             "outliers": list(zip(flagged[:SHEET_ROWS], other_row[:SHEET_ROWS], own[flagged[:SHEET_ROWS]]))}
    return section, cases


def _closest_members(e: Embedded, row: int, k: int) -> list[int]:
    """Sample indices of the k images of an identity nearest its centroid."""
    members = np.flatnonzero(e.rows == row)
    sims = e.embeddings[members] @ e.centroids[row]
    return [int(e.indices[members[j]]) for j in np.argsort(-sims)[:k]]


def write_sheets(data: TrainingSet, e: Embedded, cases: dict, folder: Path) -> list[Path]:
    """outliers.png (image, its identity, the nearest other identity) and twins.png (both identities)."""
    name = lambda row: data.label_name(int(e.identities[row]))  # noqa: E731
    rows = []
    for i, other, cos in cases["outliers"]:
        own_row = int(e.rows[i])
        images = [(data.image(int(e.indices[i])), f"mean cos to own {cos:.3f}")]
        images += [(data.image(j), f"id {name(own_row)}") for j in _closest_members(e, own_row, 3)]
        images += [(data.image(j), f"nearest: id {name(other)}") for j in _closest_members(e, int(other), 2)]
        rows.append((data.where(int(e.indices[i]))[-40:], images))
    outliers = contact_sheet(rows, folder / "outliers.png", "label-noise candidates: image | its identity | "
                                                            "nearest other identity")
    rows = []
    for (a, b), cos in cases["twins"]:
        images = [(data.image(j), f"id {name(a)}") for j in _closest_members(e, int(a), 3)]
        images += [(data.image(j), f"id {name(b)}") for j in _closest_members(e, int(b), 3)]
        rows.append((f"mean cosine {cos:.3f}", images))
    twins = contact_sheet(rows, folder / "twins.png", "likely the same person: identity A | identity B")
    return [outliers, twins]


# ----------------------------------------------------------------------------------------------
# summary table
# ----------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("Data set", "IDs", "Images", "Img/ID min/med/max", "Dup. within", "Dup. across",
                   "Empty / gaps")
MODEL_COLUMNS = ("Consistency", "Diversity", "Separability", "Twins", "Outliers")


def summary_row(name: str, stats: dict, with_model: bool = False) -> list[str]:
    """The Markdown cells of one data set (the model columns: means of the distributions, counts)."""
    per = stats["images_per_identity"]
    dup, anomalies = stats["duplicates"], stats["label_anomalies"]
    cells = [name, f"{stats['identities']:,}", f"{stats['images']:,}",
             f"{per['min']} / {per['median']:g} / {per['max']}", str(dup["within_identity_groups"]),
             str(dup["across_identity_groups"]), f"{len(anomalies['empty_classes'])} / {anomalies['num_gaps']}"]
    if with_model:
        m = stats.get("model")
        if m is None:
            cells += ["-"] * len(MODEL_COLUMNS)
        else:
            cells += [_num(m[k]["mean"]) for k in ("consistency", "diversity", "separability")]
            cells += [str(m["num_twins"]), str(m["num_outliers"])]
    return cells


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_table(named_stats: Sequence[tuple[str, dict]]) -> str:
    """One Markdown row per data set, same columns for all."""
    with_model = any("model" in s for _, s in named_stats)
    columns = SUMMARY_COLUMNS + (MODEL_COLUMNS if with_model else ())
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(summary_row(n, s, with_model)) + " |" for n, s in named_stats]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------

def plot_histograms(stats: dict, path: Path) -> Path:
    """A PNG with one histogram per distribution in the stats (the threshold marked on separability)."""
    from matplotlib.figure import Figure
    from eval.report import save_figure
    panels = [("images per identity", stats["images_per_identity"]["histogram"], None)]
    model = stats.get("model")
    if model is not None:
        panels += [("consistency (cosine to centroid)", model["consistency"]["histogram"], None),
                   ("diversity (1 - mean pairwise cosine)", model["diversity"]["histogram"], None),
                   ("separability (nearest other centroid)", model["separability"]["histogram"], model["threshold"])]
    fig = Figure(figsize=(4.2 * len(panels), 3.6), dpi=100)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, hist, line) in zip(axes, panels):
        edges = np.asarray(hist["edges"])
        if edges.size:
            ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", edgecolor="black", lw=0.3)
        if line is not None:
            ax.axvline(line, color="red", ls="--", label=f"threshold {line:.3f}")
            ax.legend(fontsize=7)
        ax.set(title=title, ylabel="identities")
        ax.grid(True, alpha=0.3)
    fig.suptitle(stats["path"], fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

@dataclass
class ModelOptions:
    """What the model part needs: the backbone and how to calibrate."""
    backbone: object
    per_class: int = 0
    threshold: float | None = None
    bins: Sequence[Path] = ()
    batch_size: int = 256
    workers: int = 2


def measure(root: "str | TrainingSet", progress: bool = False, model: ModelOptions | None = None,
            sheets_to: Path | None = None) -> dict:
    """The statistics of one training folder (with ``model``: also the embedding-based ones)."""
    data = root if isinstance(root, TrainingSet) else TrainingSet(root)
    s = scan(data, progress)
    stats = basic_stats(data, s)
    if model is None:
        return stats
    e = embed_identities(data, s.labels, model.backbone, model.per_class, model.batch_size, model.workers, progress)
    if model.threshold is not None:
        threshold, source = model.threshold, "given"
    elif model.bins:
        threshold = bin_threshold(model.bins, model.backbone, model.batch_size, progress)
        source = "calibrated on " + ", ".join(Path(p).stem for p in model.bins)
    else:
        threshold, source = training_threshold(e), "calibrated on the training set's own pairs"
    stats["model"], cases = model_stats(data, e, threshold, source)
    if sheets_to is not None:
        write_sheets(data, e, cases, sheets_to)
    return stats


def _load_stats(path: Path) -> dict:
    from eval.report import _load_json
    stats = _load_json(path)
    if stats is None or stats.get("kind") != "dataset_stats":
        raise DataError(f"{path}: not a stats.json written by python -m eval.dataset_stats")
    return stats


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval.dataset_stats", description=__doc__.splitlines()[0],
                                     parents=[model_parser(required=False)])
    parser.add_argument("data", nargs="+", help="training folders (RecordIO or image folder), or stats.json "
                                                "files of earlier runs to put in the same table")
    parser.add_argument("--out", default="work_dirs/dataset_stats",
                        help="output folder: <out>/<name>/stats.json, histograms.png[, outliers.png, twins.png]; "
                             "<out>/summary.md")
    parser.add_argument("--per-class", type=int, default=0, help="images embedded per identity (default 0 = all)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="cosine above which two identities are likely one person and below which an "
                             "image is a label-noise candidate (default: calibrated, 1 in 10,000 "
                             "different-identity pairs)")
    parser.add_argument("--data-dir", help="calibrate on the different-identity pairs of these .bin files "
                                           "(default: on random pairs of the training set itself)")
    parser.add_argument("--targets", default="lfw,cfp_fp,agedb_30,cplfw,calfw",
                        help="the .bin files of --data-dir to calibrate on")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="decode processes for the embedding pass")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _model_options(args: argparse.Namespace) -> ModelOptions | None:
    """Check the model inputs (threshold, .bin files, weights) before any heavy work."""
    if not (args.model or args.onnx):
        return None
    from eval.leakage import check_threshold, find_bins
    check_threshold(args.threshold)
    bins = ()
    if args.data_dir and args.threshold is None:
        bins = list(find_bins(args.data_dir, [t.strip() for t in args.targets.split(",") if t.strip()]).values())
    from face_model import load_model, reuse_freed_cpu_memory
    backbone = load_model(args.model, args.onnx, args.network, args.num_features, args.device).backbone
    reuse_freed_cpu_memory(backbone)         # the embedding pass's activations: reused, not page-faulted
    return ModelOptions(backbone, args.per_class, args.threshold, bins, args.batch_size, args.workers)


def run(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """Measure every data set, write the outputs, print and return the summary rows."""
    from eval.report import write_json, write_text
    inputs = []                      # every folder opened (and every stats.json read) before any measuring
    for item in args.data:
        path = Path(item)
        is_json = path.is_file() and path.suffix == ".json"
        inputs.append((path, _load_stats(path) if is_json else TrainingSet(item)))
    model = _model_options(args)
    out = Path(args.out)
    named = []
    for path, data in inputs:
        if isinstance(data, dict):
            named.append((path.parent.name, data))
            continue
        name = path.resolve().name
        folder = out / name
        stats = measure(data, progress=not args.no_progress, model=model, sheets_to=folder)
        write_json(folder / "stats.json", stats)
        plot_histograms(stats, folder / "histograms.png")
        if "model" in stats:
            m = stats["model"]
            print(f"[{name}] threshold {m['threshold']:.4f} ({m['threshold_source']}): {m['num_twins']} pairs of "
                  f"identities likely one person, {m['num_outliers']} label-noise candidates")
            if m["saturated"]:
                print(f"[{name}] {SATURATED_NOTE}")
        print(f"wrote {folder / 'stats.json'}, {folder / 'histograms.png'}"
              + (f", {folder / 'outliers.png'}, {folder / 'twins.png'}" if model else ""))
        named.append((name, stats))
    table = summary_table(named)
    write_text(out / "summary.md", table + "\n")
    print(table)
    return named


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
