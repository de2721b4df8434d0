"""Statistics of a face training set: ``python -m eval.dataset_stats DIR [DIR ...] [--model ...]``.

Without a model (reads every record once, decodes no image): identities, images, images per
identity (min / median / max, histogram), image sizes and channels (from the encoded headers),
exact-duplicate images (hash of the encoded bytes) within and across identities, and label
anomalies (empty classes, gaps in the labels). With a model (flip-fused, normalised embeddings
as in the verification protocol): per identity its consistency (mean cosine of its images to
their centroid), diversity (1 - mean pairwise cosine within it) and separability (cosine of its
centroid to the nearest other centroid; pairs above the calibrated threshold are listed as likely
the same person), and per image the label-noise candidates (images far from their own identity).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from utils import recordio
from utils.data_check import SYNTHETIC, find_layout, scan_image_folder
from utils.errors import ArcFaceError, DataError

IMAGE_SIZE = 112
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
            label = header.label if header.flag == 0 else header.label[0]
            return payload, int(label)
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                return f.read(), label
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror})") from None

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
        header = self._records.header
        if header is None or len(header.label) < 2:
            return []
        first, end = int(header.label[0]), int(header.label[1])
        empty = []
        for identity, key in enumerate(range(first, end)):
            if key not in self._records.imgrec.idx:
                break
            label = recordio.unpack(self._records.imgrec.read_idx(key))[0].label
            if len(np.atleast_1d(label)) >= 2 and int(label[1]) <= int(label[0]):
                empty.append(str(identity))
        return empty


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
    sizes = [f"{h}x{w}" for h, w in zip(s.heights.tolist(), s.widths.tolist())]
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
        "image_sizes": _count_table(sizes), "channels": _count_table(s.channels),
        "formats": _count_table(s.formats),
        "duplicates": duplicates(data, s), "label_anomalies": anomalies,
    }


# ----------------------------------------------------------------------------------------------
# summary table
# ----------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("Data set", "IDs", "Images", "Img/ID min/med/max", "Dup. within", "Dup. across",
                   "Empty / gaps")


def summary_row(name: str, stats: dict) -> list[str]:
    """The Markdown cells of one data set (model columns when the stats have them)."""
    per = stats["images_per_identity"]
    dup, anomalies = stats["duplicates"], stats["label_anomalies"]
    return [name, f"{stats['identities']:,}", f"{stats['images']:,}",
            f"{per['min']} / {per['median']:g} / {per['max']}", str(dup["within_identity_groups"]),
            str(dup["across_identity_groups"]),
            f"{len(anomalies['empty_classes'])} / {anomalies['num_gaps']}"]


def summary_table(named_stats: Sequence[tuple[str, dict]]) -> str:
    """One Markdown row per data set, same columns for all."""
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|"]
    lines += ["| " + " | ".join(summary_row(n, s)) + " |" for n, s in named_stats]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------

def plot_histograms(stats: dict, path: Path) -> Path:
    """A PNG with one histogram per distribution in the stats."""
    from matplotlib.figure import Figure
    from eval.report import save_figure
    panels = [("images per identity", stats["images_per_identity"]["histogram"])]
    fig = Figure(figsize=(5 * len(panels), 3.6), dpi=100)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, hist) in zip(axes, panels):
        edges = np.asarray(hist["edges"])
        if edges.size:
            ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", edgecolor="black", lw=0.3)
        ax.set(title=title, ylabel="count")
        ax.grid(True, alpha=0.3)
    fig.suptitle(stats["path"], fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def measure(root: str, progress: bool = False) -> dict:
    """The statistics of one training folder (no model)."""
    data = TrainingSet(root)
    return basic_stats(data, scan(data, progress))


def _load_stats(path: Path) -> dict:
    from eval.report import _load_json
    stats = _load_json(path)
    if stats is None or stats.get("kind") != "dataset_stats":
        raise DataError(f"{path}: not a stats.json written by python -m eval.dataset_stats")
    return stats


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval.dataset_stats", description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", help="training folders (RecordIO or image folder), or stats.json "
                                                "files of earlier runs to put in the same table")
    parser.add_argument("--out", default="work_dirs/dataset_stats",
                        help="output folder: <out>/<name>/stats.json, histograms.png; <out>/summary.md")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """Measure every data set, write the outputs, print and return the summary rows."""
    out = Path(args.out)
    named = []
    for item in args.data:
        path = Path(item)
        if path.is_file() and path.suffix == ".json":
            named.append((path.parent.name, _load_stats(path)))
            continue
        from eval.report import write_json
        name = path.resolve().name
        stats = measure(item, progress=not args.no_progress)
        folder = out / name
        write_json(folder / "stats.json", stats)
        plot_histograms(stats, folder / "histograms.png")
        print(f"wrote {folder / 'stats.json'}, {folder / 'histograms.png'}")
        named.append((name, stats))
    from eval.report import write_text
    table = summary_table(named)
    write_text(out / "summary.md", table + "\n")
    print(table)
    return named


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ArcFaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
