"""IJB-B / IJB-C evaluation: 1:1 verification as the original ``eval_ijbc.py`` computes it, plus 1:N.

    python -m eval.ijb --model work_dirs/r50/model.pt --network r50 --image-path IJB_release/IJBC
    python -m eval.ijb --onnx model.onnx --image-path IJB_release/IJBB --target IJBB --result-dir out
    python -m eval.ijb --features out/ijbc_features.npy --image-path IJB_release/IJBC --all-switches

Same numbers as the original on the same images, weights and switches: five-point similarity
alignment (float32 Umeyama, OpenCV bilinear warp), flip sum, optional per-image normalisation,
detector-score weighting, media-then-template pooling, cosine pair scores in pair-file order and
the TAR at each FAR picked by the original's nearest-FPR rule on sklearn's ROC. The work around
the model is vectorised: decode and alignment run in DataLoader workers beside the model, pooling
is one sort and two segment sums, pair scores come from blocked matrix products.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from eval.verification import l2_normalize
from utils.cli import add_bool_argument, model_parser, run_tool
from utils.errors import DataError
from utils.image import FACE_SIZE, normalize

TARGETS = ("IJBC", "IJBB")
FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
IMAGE_SIZE = FACE_SIZE
ROC_MAX_POINTS = 2000
RANKS = (1, 5, 10)
FPIR_TARGETS = (1e-2, 1e-1)
# 1:N lists per target: the two galleries and the mixed-media probe templates
ONE_N_FILES = {"IJBC": ("ijbc_1N_gallery_G1.csv", "ijbc_1N_gallery_G2.csv", "ijbc_1N_probe_mixed.csv"),
               "IJBB": ("ijbb_1N_gallery_S1.csv", "ijbb_1N_gallery_S2.csv", "ijbb_1N_probe_mixed.csv")}


def _reference_points() -> np.ndarray:
    """The five ArcFace points of a 112x112 crop, built in float32 as the original builds them."""
    points = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                       [33.5493, 92.3655], [62.7299, 92.2041]], dtype=np.float32)
    points[:, 0] += 8.0
    return points


REFERENCE_POINTS = _reference_points()


class IJBDataError(DataError):
    """An IJB release folder, meta file, crop or feature file is missing or inconsistent."""


# ----------------------------------------------------------------------------------------------
# the release: meta files and crops
# ----------------------------------------------------------------------------------------------

@dataclass
class Release:
    """What the three meta files of one target hold (row i of every per-row array = crop i)."""
    root: Path
    target: str
    names: list[str]                 # crop file names (5pts file, column 1)
    templates: np.ndarray            # (N,) int64 template id per row
    medias: np.ndarray               # (N,) int64 media id per row
    landmarks: np.ndarray            # (N, 5, 2) float32
    faceness: np.ndarray             # (N,) float32 detector score
    pair_t1: np.ndarray              # (P,) int64
    pair_t2: np.ndarray
    labels: np.ndarray               # (P,) int64, 1 = same subject

    @property
    def crop_dir(self) -> Path:
        return self.root / "loose_crop"

    def crop_paths(self) -> list[str]:
        folder = str(self.crop_dir)
        return [os.path.join(folder, name) for name in self.names]


def meta_paths(root: Path, target: str) -> dict[str, Path]:
    """The three meta files of ``target`` under ``root`` (the IJBC or IJBB folder of the release)."""
    prefix = target.lower()
    return {kind: root / "meta" / f"{prefix}_{suffix}" for kind, suffix in
            (("tid_mid", "face_tid_mid.txt"), ("5pts", "name_5pts_score.txt"),
             ("pairs", "template_pair_label.txt"))}


def resolve_root(image_path: str | os.PathLike, target: str) -> Path:
    """The target folder: ``image_path`` itself, or its ``<target>`` sub-folder when given the release root."""
    root = Path(image_path)
    if not root.is_dir():
        raise IJBDataError(f"--image-path {root}: not a directory (pass the {target} folder of the insightface "
                           f"IJB release, holding meta/ and loose_crop/)")
    if not (root / "meta").is_dir() and (root / target / "meta").is_dir():
        print(f"note: using {root / target} (the {target} folder inside --image-path)")
        root = root / target
    missing = [str(p) for p in meta_paths(root, target).values() if not p.is_file()]
    if missing:
        raise IJBDataError(f"{missing[0]}: meta file not found ({len(missing)} of 3 missing); --image-path must be "
                           f"the {target} folder of the IJB release (meta/{target.lower()}_*.txt, loose_crop/) "
                           f"and --target must match it")
    return root


def _text_lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise IJBDataError(f"{path}: cannot read ({err})") from None
    return [line for line in text.splitlines() if line.strip()]


def read_tid_mid(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(template ids, media ids) of ``<name> <template_id> <media_id>`` lines."""
    lines = _text_lines(path)
    templates, medias = np.empty(len(lines), np.int64), np.empty(len(lines), np.int64)
    for i, line in enumerate(lines):
        parts = line.split()
        try:
            if len(parts) != 3:
                raise ValueError
            templates[i], medias[i] = int(parts[1]), int(parts[2])
        except ValueError:
            raise IJBDataError(f"{path}: line {i + 1} is {line.strip()!r}; expected '<name> <template_id> "
                               f"<media_id>'") from None
    return templates, medias


def read_5pts(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, float32 landmarks (N, 5, 2), float32 detector scores) of the 5-point file."""
    lines = _text_lines(path)
    names, coords, scores = [], np.empty((len(lines), 10), np.float64), []
    for i, line in enumerate(lines):
        parts = line.strip().split(" ")
        try:
            if len(parts) != 12:
                raise ValueError
            coords[i] = [float(x) for x in parts[1:11]]
            float(parts[11])
        except ValueError:
            raise IJBDataError(f"{path}: line {i + 1} has {len(parts)} fields; expected '<name> x1 y1 ... x5 y5 "
                               f"<detector_score>' (12 fields, single spaces)") from None
        names.append(parts[0])
        scores.append(parts[11])
    # float -> float32 and string -> float32 exactly as the original converts them
    return names, coords.astype(np.float32).reshape(-1, 5, 2), np.array(scores).astype(np.float32)


def parse_int_table(data: bytes, ncols: int, path: Path | str, first_line: int = 1) -> np.ndarray:
    """Whitespace-separated non-negative integers, ``ncols`` per non-empty line -> (rows, ncols) int64.

    Vectorised (the IJB-C pair file has 15.7 M lines); any other character or a line with another
    field count is an error naming the line.
    """
    b = np.frombuffer(data, np.uint8)
    digit = (b >= 48) & (b <= 57)
    bad = ~(digit | (b == 32) | (b == 9) | (b == 13) | (b == 10))
    if bad.any():
        pos = int(np.argmax(bad))
        line = int(np.count_nonzero(b[:pos] == 10)) + first_line
        raise IJBDataError(f"{path}: line {line}: unexpected character {chr(b[pos])!r}; expected {ncols} "
                           "non-negative integers per line")
    edges = np.diff(digit.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = ends - starts
    if lengths.size and lengths.max() > 18:
        raise IJBDataError(f"{path}: a number with {lengths.max()} digits; expected template ids and labels")
    values = np.zeros(starts.size, np.int64)
    for k in range(int(lengths.max()) if lengths.size else 0):      # Horner, one digit column at a time
        more = np.flatnonzero(lengths > k)
        values[more] = values[more] * 10 + (b[starts[more] + k] - 48)
    line_of = np.searchsorted(np.flatnonzero(b == 10), starts)        # newlines before each number
    per_line = np.bincount(line_of)
    wrong = (per_line > 0) & (per_line != ncols)
    if wrong.any():
        line = int(np.argmax(wrong))
        raise IJBDataError(f"{path}: line {line + first_line} has {per_line[line]} fields; expected {ncols}")
    return values.reshape(-1, ncols)


def read_pairs(path: Path, chunk_bytes: int = 1 << 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(template_1, template_2, label) of the pair file, read in line-aligned chunks."""
    parts, first_line = [], 1
    try:
        with open(path, "rb") as f:
            rest = b""
            while True:
                block = f.read(chunk_bytes)
                data = rest + block
                cut = data.rfind(b"\n") + 1 if block else len(data)
                rest = data[cut:]
                if cut:
                    parts.append(parse_int_table(data[:cut], 3, path, first_line))
                    first_line += data[:cut].count(b"\n")
                if not block:
                    break
    except OSError as err:
        raise IJBDataError(f"{path}: cannot read ({err.strerror or err})") from None
    table = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    if table.shape[0] == 0:
        raise IJBDataError(f"{path}: no pairs")
    labels = table[:, 2]
    if not np.isin(labels, (0, 1)).all():
        line = int(np.argmax(~np.isin(labels, (0, 1)))) + 1
        raise IJBDataError(f"{path}: pair {line} has label {labels[line - 1]}; labels are 1 (same subject) or 0")
    if labels.all() or not labels.any():
        raise IJBDataError(f"{path}: all {labels.size} pairs have label {labels[0]}; TAR@FAR needs both "
                           "genuine (1) and impostor (0) pairs")
    return table[:, 0].copy(), table[:, 1].copy(), labels.copy()


def read_release(image_path: str | os.PathLike, target: str) -> Release:
    """Read and cross-check the three meta files (row counts, pair templates) before any image work."""
    target = target.upper()
    root = resolve_root(image_path, target)
    paths = meta_paths(root, target)
    templates, medias = read_tid_mid(paths["tid_mid"])
    names, landmarks, faceness = read_5pts(paths["5pts"])
    if len(names) != templates.size:
        raise IJBDataError(f"{paths['5pts']}: {len(names)} rows but {paths['tid_mid'].name} has {templates.size}; "
                           "row i of both files describes the same crop: use the two files of one release")
    if templates.size == 0:
        raise IJBDataError(f"{paths['tid_mid']}: no rows")
    t1, t2, labels = read_pairs(paths["pairs"])
    known = np.unique(templates)
    for column in (t1, t2):
        undefined = ~np.isin(column, known)
        if undefined.any():
            first = int(np.argmax(undefined))
            raise IJBDataError(f"{paths['pairs']}: {int(undefined.sum())} pairs name templates that no row of "
                               f"{paths['tid_mid'].name} defines (first: line {first + 1}, template "
                               f"{column[first]}); use the pair file of the same release")
    return Release(root, target, names, templates, medias, landmarks, faceness, t1, t2, labels)


def missing_crops(release: Release) -> np.ndarray:
    """Boolean mask of rows whose crop file does not exist (one directory listing, not N stats)."""
    folder = release.crop_dir
    if not folder.is_dir():
        raise IJBDataError(f"{folder}: crop folder not found; --image-path must hold loose_crop/ beside meta/")
    if all("/" not in n and os.sep not in n for n in release.names):
        present = set(os.listdir(folder))
        return np.array([n not in present for n in release.names], dtype=bool)
    return np.array([not (folder / n).is_file() for n in release.names], dtype=bool)


def check_bad_budget(bad_rows: Sequence[int], reasons: Sequence[str], total: int, max_bad: int,
                     names: Sequence[str]) -> None:
    """Raise once more than ``max_bad`` crops cannot be used; name the first ones and the count."""
    if len(bad_rows) <= max_bad:
        return
    shown = "; ".join(f"{names[r]} ({why})" for r, why in list(zip(bad_rows, reasons))[:3])
    raise IJBDataError(f"{len(bad_rows)} of {total} crops cannot be read (--max-bad {max_bad}): {shown}: "
                       "re-extract loose_crop from the release, or raise --max-bad to skip them")


# ----------------------------------------------------------------------------------------------
# alignment and embedding
# ----------------------------------------------------------------------------------------------

def similarity_matrices(landmarks: np.ndarray, reference: np.ndarray = REFERENCE_POINTS) -> np.ndarray:
    """(N, 2, 3) float64 affine matrices mapping each row's 5 landmarks onto ``reference``.

    scikit-image's ``SimilarityTransform.estimate`` (Umeyama with scaling) for a whole batch, with
    the same float32 / float64 mix of operations, so the matrices are bit-identical to it.
    """
    src = np.asarray(landmarks, np.float32)
    dst = np.asarray(reference, np.float32)
    num = src.shape[1]
    src_mean, dst_mean = src.mean(axis=1), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean[:, None, :], dst - dst_mean
    a = np.matmul(dst_demean.T[None], src_demean) / num
    d = np.ones((src.shape[0], 2))
    d[np.linalg.det(a) < 0, 1] = -1
    u, s, v = np.linalg.svd(a)
    rotation = np.matmul(u * d[:, None, :], v)
    tol = s.max(axis=1) * 2 * np.finfo(float).eps
    rank = np.count_nonzero(s > tol[:, None], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):      # coincident points: replaced below
        scale = 1.0 / src_demean.var(axis=1).sum(axis=1) * np.einsum("ij,ij->i", s, d)
    out = np.empty((src.shape[0], 2, 3))
    out[:, :, 2] = dst_mean - scale[:, None] * np.matmul(rotation, src_mean[:, :, None])[..., 0]
    out[:, :, :2] = rotation * scale[:, None, None]
    for i in np.flatnonzero(rank < 2):          # degenerate landmarks, row by row
        out[i] = _degenerate_matrix(src[i], dst)
    return out


def _degenerate_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """scikit-image's answer for collinear (rank 1) or coincident (rank 0: NaN, a black crop) landmarks."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    a = dst_demean.T @ src_demean / src.shape[0]
    u, s, v = np.linalg.svd(a)
    if np.count_nonzero(s > s.max() * 2 * np.finfo(float).eps) == 0:
        return np.full((2, 3), np.nan)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(v) > 0:
        rotation = (u @ v).astype(np.float64)     # float32 product stored in a float64 matrix
    else:
        rotation = u @ np.diag([1.0, -1.0]) @ v
    if np.linalg.det(a) < 0:
        d[1] = -1
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ d)
    out = np.empty((2, 3))
    out[:, 2] = dst_mean - scale * (rotation @ src_mean.T)
    out[:, :2] = rotation * scale
    return out


def align_crop(image_bgr: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """112x112 RGB (HWC uint8) crop: bilinear warp with a black border, then BGR -> RGB."""
    warped = cv2.warpAffine(image_bgr, matrix, (IMAGE_SIZE, IMAGE_SIZE), borderValue=0.0)
    return cv2.cvtColor(warped, cv2.COLOR_BGR2RGB)


class AlignedCropBatches(torch.utils.data.Dataset):
    """Batch i = (first row, uint8 RGB (2B, 3, 112, 112): B aligned crops then their B mirrors,
    [(row, reason) of unusable crops]).

    Decoding, warping and mirroring happen here, i.e. in DataLoader workers beside the model; the
    batch is already the model's input layout (one copy of each crop, no concatenation after).
    """

    def __init__(self, paths: Sequence[str], matrices: np.ndarray, batch_size: int, skip: np.ndarray):
        self.paths, self.matrices, self.batch_size, self.skip = list(paths), matrices, batch_size, skip

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, index: int):
        start = index * self.batch_size
        stop = min(len(self.paths), start + self.batch_size)
        size = stop - start
        both = np.zeros((2 * size, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        bad = []
        for j, row in enumerate(range(start, stop)):
            why = self._load_into(row, both[j], both[size + j])
            if why:
                bad.append((row, why))
        return start, torch.from_numpy(both), bad

    def _load_into(self, row: int, crop: np.ndarray, mirror: np.ndarray) -> str | None:
        """Write the aligned crop and its mirror (CHW RGB); return why the row cannot be used."""
        if self.skip[row]:
            return "missing"
        if not np.isfinite(self.matrices[row]).all():
            return "its five landmarks coincide: no alignment"
        image = cv2.imread(self.paths[row], cv2.IMREAD_COLOR)
        if image is None:
            return "not a decodable image"
        # BGR -> RGB as a reversed channel axis in the copy (same bytes as cvtColor, one pass less)
        chw = cv2.warpAffine(image, self.matrices[row], (IMAGE_SIZE, IMAGE_SIZE),
                             borderValue=0.0).transpose(2, 0, 1)[::-1]
        crop[...] = chw
        mirror[...] = chw[:, :, ::-1]
        return None


@dataclass
class EmbedResult:
    """Per-row [features(crop) | features(mirror)] (NaN rows = unusable crops) and how long it took."""
    features: np.ndarray
    bad_rows: list[int]
    bad_reasons: list[str]
    model_seconds: float
    total_seconds: float


def embed_release(release: Release, backbone: torch.nn.Module, batch_size: int = 128, workers: int = 0,
                  device: torch.device | str = "cpu", max_bad: int = 0, skip: np.ndarray | None = None,
                  progress: bool = False) -> EmbedResult:
    """Align every crop and embed it and its mirror; the model runs here, decoding in ``workers`` processes."""
    t0 = time.perf_counter()
    n = len(release.names)
    skip = np.zeros(n, bool) if skip is None else skip
    bad_rows = [int(r) for r in np.flatnonzero(skip)]
    bad_reasons = ["missing"] * len(bad_rows)
    check_bad_budget(bad_rows, bad_reasons, n, max_bad, release.names)
    dataset = AlignedCropBatches(release.crop_paths(), similarity_matrices(release.landmarks), batch_size, skip)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                         prefetch_factor=4 if workers else None,
                                         pin_memory=torch.device(device).type == "cuda")
    batches = loader
    if progress:
        from tqdm import tqdm
        batches = tqdm(loader, desc=f"{release.target} embedding", unit="batch", leave=False)
    device = torch.device(device)
    features, model_seconds = None, 0.0
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            for start, both, bad in batches:
                for row, why in bad:
                    if not skip[row]:
                        bad_rows.append(row)
                        bad_reasons.append(why)
                        check_bad_budget(bad_rows, bad_reasons, n, max_bad, release.names)
                x = normalize(both.to(device, non_blocking=True))
                t_model = time.perf_counter()
                out = backbone(x).float().cpu().numpy()
                model_seconds += time.perf_counter() - t_model
                if features is None:
                    features = np.empty((n, 2 * out.shape[1]), np.float32)
                b = both.shape[0] // 2
                features[start:start + b, :out.shape[1]] = out[:b]
                features[start:start + b, out.shape[1]:] = out[b:]
    finally:
        backbone.train(was_training)
    if bad_rows:
        features[bad_rows] = np.nan
    return EmbedResult(features, bad_rows, bad_reasons, model_seconds, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# switches, template pooling, pair scores
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Switches:
    """The original's three module constants: flip sum (F), keep the norm (N), detector weighting (D)."""
    flip: bool = True
    norm: bool = True
    detector_score: bool = True

    @property
    def code(self) -> str:
        return f"N{int(self.norm)}D{int(self.detector_score)}F{int(self.flip)}"

    def as_dict(self) -> dict:
        return {"flip": self.flip, "norm": self.norm, "detector_score": self.detector_score}


ALL_SWITCHES = tuple(Switches(flip=f, norm=n, detector_score=d)
                     for n, d, f in itertools.product((True, False), repeat=3))


def image_features(features: np.ndarray, faceness: np.ndarray, switches: Switches,
                   chunk: int = 65536) -> np.ndarray:
    """(N, D) float32 per-image features: flip sum -> optional L2 normalise -> times detector score."""
    dim = features.shape[1] // 2
    out = np.empty((features.shape[0], dim), np.float32)
    for a in range(0, features.shape[0], chunk):
        x = features[a:a + chunk]
        x = x[:, :dim] + x[:, dim:] if switches.flip else x[:, :dim]
        if not switches.norm:
            with np.errstate(invalid="ignore", divide="ignore"):
                x = x / np.sqrt(np.sum(x ** 2, -1, keepdims=True))
        if switches.detector_score:
            x = x * faceness[a:a + chunk, np.newaxis]
        out[a:a + x.shape[0]] = x
    return out


def template_features(feats: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                      usable: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised float64 template features (T, D), sorted unique template ids).

    Within each template its rows are grouped by media id; a media contributes the float32 mean of
    its rows, the template the float32 sum of its media, in ascending id and row order as the
    original's loops. Rows not ``usable`` are left out; a template left without rows gets a zero
    feature (score 0 with everything).
    """
    unique_templates = np.unique(templates)
    rows = np.arange(templates.size) if usable is None else np.flatnonzero(usable)
    order = rows[np.lexsort((medias[rows], templates[rows]))]
    t_sorted, m_sorted = templates[order], medias[order]
    new_media = np.ones(order.size, bool)
    new_media[1:] = (t_sorted[1:] != t_sorted[:-1]) | (m_sorted[1:] != m_sorted[:-1])
    media_starts = np.flatnonzero(new_media)
    media_template = t_sorted[media_starts]
    new_template = np.ones(media_starts.size, bool)
    new_template[1:] = media_template[1:] != media_template[:-1]
    out = np.zeros((unique_templates.size, feats.shape[1]), np.float64)
    if order.size == 0:
        return out, unique_templates
    # segment sums in chunks of whole templates (bounded memory), sequential like the original's loops
    template_starts = np.flatnonzero(new_template)
    bounds = np.append(media_starts, order.size)
    target = np.searchsorted(unique_templates, media_template[template_starts])
    for ta, tb in _template_chunks(template_starts, media_starts, order.size):
        ma = template_starts[ta]
        mb = template_starts[tb] if tb < template_starts.size else media_starts.size
        ra, rb = media_starts[ma], bounds[mb]
        block = feats[order[ra:rb]]
        counts = np.diff(bounds[ma:mb + 1])
        sums = segment_sums(block, media_starts[ma:mb] - ra)
        means = np.true_divide(sums, counts[:, None], out=sums, casting="unsafe")   # as np.mean: / int count
        out[target[ta:tb]] = segment_sums(means, template_starts[ta:tb] - ma)
    return l2_normalize(out), unique_templates


def segment_sums(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sum of each run of rows x[starts[i]:starts[i+1]], added in row order in x's dtype.

    The original's np.mean / np.sum over axis 0 add rows one after another; np.add.reduceat
    rounds differently. One vectorised step per row position: as many steps as the longest run.
    """
    lengths = np.diff(np.append(starts, x.shape[0]))
    out = x[starts].copy()
    for k in range(1, int(lengths.max()) if lengths.size else 0):
        longer = np.flatnonzero(lengths > k)
        out[longer] += x[starts[longer] + k]
    return out


def _template_chunks(template_starts: np.ndarray, media_starts: np.ndarray, n_rows: int,
                     rows_per_chunk: int = 65536):
    """(first, end) template ranges of about ``rows_per_chunk`` rows each."""
    row_of_template = np.append(media_starts[template_starts], n_rows)
    first = 0
    while first < template_starts.size:
        end = int(np.searchsorted(row_of_template, row_of_template[first] + rows_per_chunk, side="right")) - 1
        end = min(max(end, first + 1), template_starts.size)
        yield first, end
        first = end


def template_index(unique_templates: np.ndarray, ids: np.ndarray, what: str = "pair file") -> np.ndarray:
    """Row of each template id in ``unique_templates``; an unknown id is an error."""
    idx = np.searchsorted(unique_templates, ids)
    idx = np.minimum(idx, unique_templates.size - 1)
    unknown = unique_templates[idx] != ids
    if unknown.any():
        raise IJBDataError(f"{what}: {int(unknown.sum())} template ids have no rows (first: {ids[unknown][0]})")
    return idx


def _compact(idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values of ``idx``, position of each entry among them): np.unique in O(n + size)."""
    present = np.zeros(size, bool)
    present[idx] = True
    rank = np.cumsum(present) - 1
    return np.flatnonzero(present), rank[idx]


def pair_scores(tfeats: np.ndarray, idx1: np.ndarray, idx2: np.ndarray, block: int = 256,
                max_columns: int = 8192, dense: float = 0.05) -> np.ndarray:
    """Cosine score of every pair (rows ``idx1``/``idx2`` of normalised ``tfeats``), float64, pair order.

    Pairs are grouped by blocks of ``block`` distinct first templates; a block whose pairs fill at
    least ``dense`` of its first x second template grid is scored by matrix products (BLAS),
    sparser ones by row dot products. Memory: block x max_columns doubles plus 8192-pair chunks.
    """
    scores = np.empty(idx1.size, np.float64)
    if idx1.size == 0:
        return scores
    firsts, pos1 = _compact(idx1, tfeats.shape[0])
    block_of = (pos1 // block).astype(np.uint16 if firsts.size // block < 65535 else np.uint32)
    order = np.argsort(block_of, kind="stable")          # radix sort for 16-bit keys
    bounds = np.searchsorted(block_of[order], np.arange(int(block_of.max()) + 2))
    for b in range(bounds.size - 1):
        sel = order[bounds[b]:bounds[b + 1]]
        rows = tfeats[firsts[b * block:(b + 1) * block]]
        scores[sel] = _block_scores(tfeats, rows, pos1[sel] - b * block, idx2[sel], max_columns, dense)
    return scores


def _block_scores(tfeats, rows, local, i2, max_columns, dense):
    cols, inverse = _compact(i2, tfeats.shape[0])
    out = np.empty(i2.size)
    if i2.size < dense * rows.shape[0] * cols.size:
        for a in range(0, i2.size, 8192):
            out[a:a + 8192] = np.einsum("ij,ij->i", rows[local[a:a + 8192]], tfeats[i2[a:a + 8192]])
        return out
    for c in range(0, cols.size, max_columns):
        gram = rows @ tfeats[cols[c:c + max_columns]].T
        if cols.size <= max_columns:
            out[:] = gram[local, inverse]
            break
        here = (inverse >= c) & (inverse < c + max_columns)
        out[here] = gram[local[here], inverse[here] - c]
    return out


# ----------------------------------------------------------------------------------------------
# ROC and TAR@FAR
# ----------------------------------------------------------------------------------------------

def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) identical to ``sklearn.metrics.roc_curve(labels, scores)``.

    Same thresholds and the same drop_intermediate rule, from a counting pass over the distinct
    scores (a value sort instead of sklearn's stable argsort: several times faster on 15.7 M).
    """
    scores = np.asarray(scores, np.float64)
    genuine = np.asarray(labels).astype(bool)
    if not np.isfinite(scores).all():
        raise IJBDataError(f"{int((~np.isfinite(scores)).sum())} pair scores are not finite (features with NaN "
                           "or infinite values, or a zero feature normalised with --no-norm-score)")
    values, counts = np.unique(scores, return_counts=True)
    gen_sorted = np.sort(scores[genuine])
    gen_counts = np.searchsorted(gen_sorted, values, "right") - np.searchsorted(gen_sorted, values, "left")
    values, counts, gen_counts = values[::-1], counts[::-1], gen_counts[::-1]
    tps = np.cumsum(gen_counts, dtype=np.float64)
    fps = np.cumsum(counts).astype(np.float64) - tps
    thresholds = values
    if fps.shape[0] > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, targets: Sequence[float] = FAR_TARGETS) -> dict[str, float]:
    """TPR at the ROC point whose FPR is nearest each target (first in reversed order on ties).

    The original's rule: on the reversed arrays, ``min(zip(abs(fpr - x), range(n)))``; argmin keeps
    the first minimum the same way: the largest TPR at that FPR, the larger FPR on equal distances.
    """
    fpr_r, tpr_r = np.flipud(fpr), np.flipud(tpr)
    return {str(x): float(tpr_r[int(np.argmin(np.abs(fpr_r - x)))]) for x in targets}


def downsample_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int = ROC_MAX_POINTS) -> tuple[list, list]:
    """At most ``max_points`` ROC points, log-spaced in FPR (the highest TPR at or below each grid FPR)."""
    if fpr.size <= max_points:
        return fpr.tolist(), tpr.tolist()
    positive = fpr[fpr > 0]
    grid = np.logspace(np.log10(positive.min()), 0.0, max_points - 2)
    idx = np.unique(np.r_[0, np.searchsorted(fpr, grid, side="right") - 1, fpr.size - 1])
    return fpr[idx].tolist(), tpr[idx].tolist()


@dataclass
class Verification:
    """1:1 result of one switch setting."""
    switches: Switches
    scores: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    tar: dict[str, float]
    auc: float
    template_feats: np.ndarray = field(repr=False, default=None)
    unique_templates: np.ndarray = field(repr=False, default=None)


def usable_rows(features: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Rows without NaN (NaN rows stand for crops that could not be read)."""
    return np.concatenate([~np.isnan(features[a:a + chunk]).any(axis=1) for a in range(0, len(features), chunk)])


def verify(release: Release, features: np.ndarray, switches: Switches) -> Verification:
    """Pool ``features`` (N, 2D) into templates with ``switches`` and score every pair."""
    from sklearn.metrics import auc
    usable = usable_rows(features)
    feats = image_features(features, release.faceness, switches)
    tfeats, unique = template_features(feats, release.templates, release.medias, None if usable.all() else usable)
    scores = pair_scores(tfeats, template_index(unique, release.pair_t1), template_index(unique, release.pair_t2))
    fpr, tpr, _ = roc_curve(release.labels, scores)
    return Verification(switches, scores, fpr, tpr, tar_at_far(fpr, tpr), float(auc(fpr, tpr)), tfeats, unique)


def table(rows: Sequence[tuple[str, Sequence[str]]], header: Sequence[str]) -> str:
    """A prettytable-style box table (centred cells), as the original prints it."""
    widths = [max(len(h), *(len(r[1][i - 1]) if i else len(r[0]) for r in rows)) for i, h in enumerate(header)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells):
        return "|" + "|".join(" " + _centre(c, w) + " " for c, w in zip(cells, widths)) + "|"

    return "\n".join([rule, line(header), rule, *(line([name, *cells]) for name, cells in rows), rule])


def _centre(text: str, width: int) -> str:
    excess = width - len(text)
    left = excess // 2 + (1 if excess % 2 and len(text) % 2 == 0 else 0)
    return " " * left + text + " " * (excess - left)


def tar_table(rows: Sequence[tuple[str, dict[str, float]]]) -> str:
    """``Methods | 1e-06 | ... | 0.1`` with TAR x 100 at 2 decimals."""
    header = ["Methods", *(str(x) for x in FAR_TARGETS)]
    return table([(name, [f"{tar[str(x)] * 100:.2f}" for x in FAR_TARGETS]) for name, tar in rows], header)


# ----------------------------------------------------------------------------------------------
# 1:N identification
# ----------------------------------------------------------------------------------------------

def read_1n_list(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(template ids, subject ids), one per template, of a 1:N CSV (header row; columns 1 and 2)."""
    if not path.is_file():
        raise IJBDataError(f"{path}: 1:N list not found (--1n needs the release's meta/*_1N_*.csv files)")
    pairs: dict[int, int] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        for i, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                tid, sid = int(row[0]), int(row[1])
            except (ValueError, IndexError):
                raise IJBDataError(f"{path}: line {i} is {','.join(row)!r}; expected TEMPLATE_ID,SUBJECT_ID,...") \
                    from None
            if pairs.setdefault(tid, sid) != sid:
                raise IJBDataError(f"{path}: line {i}: template {tid} listed with subjects {pairs[tid]} and {sid}")
    if not pairs:
        raise IJBDataError(f"{path}: no templates")
    tids = np.fromiter(pairs, np.int64, len(pairs))
    return tids, np.array([pairs[t] for t in tids], np.int64)


def gallery_metrics(similarity: np.ndarray, probe_subjects: np.ndarray, gallery_subjects: np.ndarray,
                    ranks: Sequence[int] = RANKS, fpirs: Sequence[float] = FPIR_TARGETS) -> dict:
    """CMC and TPIR@FPIR of probes (rows) against one gallery (columns).

    A probe is mated when the gallery holds its subject. Its rank is 1 + the number of gallery
    templates of other subjects scoring at least its best mate score (ties count against it).
    The threshold at FPIR f is the (floor(f n)+1)-th highest of the n non-mated probes' best
    scores; TPIR = share of mated probes at rank 1 whose mate score exceeds it.
    """
    mated = np.isin(probe_subjects, gallery_subjects)
    same = probe_subjects[:, None] == gallery_subjects[None, :]
    sim_m = similarity[mated]
    mate = np.where(same[mated], sim_m, -np.inf).max(axis=1)
    rank = 1 + np.count_nonzero(np.where(same[mated], -np.inf, sim_m) >= mate[:, None], axis=1)
    best_nonmated = np.sort(similarity[~mated].max(axis=1))[::-1] if (~mated).any() else np.zeros(0)
    out = {"mated_probes": int(mated.sum()), "nonmated_probes": int((~mated).sum()),
           "cmc": {str(k): float(np.mean(rank <= k)) if mated.any() else None for k in ranks}, "tpir_at_fpir": {}}
    for f in fpirs:
        n = best_nonmated.size
        if n == 0 or not mated.any():
            out["tpir_at_fpir"][str(f)] = None
            continue
        k = int(math.floor(f * n + 1e-9))
        threshold = best_nonmated[k] if k < n else -np.inf
        out["tpir_at_fpir"][str(f)] = float(np.mean((rank == 1) & (mate > threshold)))
    return out


def read_1n_lists(release: Release) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """(path, template ids, subject ids) of gallery 1, gallery 2 and the probes, checked against the rows."""
    known = np.unique(release.templates)
    lists = []
    for name in ONE_N_FILES[release.target]:
        path = release.root / "meta" / name
        tids, sids = read_1n_list(path)
        template_index(known, tids, str(path))
        lists.append((path, tids, sids))
    return lists


def identification(release: Release, template_feats: np.ndarray, unique_templates: np.ndarray,
                   lists: list | None = None) -> dict:
    """1:N over both galleries separately (the other gallery's subjects as non-mated probes), and their mean."""
    lists = lists or read_1n_lists(release)
    probe_path, probe_t, probe_s = lists[2]
    probes = template_feats[template_index(unique_templates, probe_t, str(probe_path))]
    result = {"galleries": {}}
    for path, tids, sids in lists[:2]:
        gallery = template_feats[template_index(unique_templates, tids, str(path))]
        result["galleries"][path.stem.rsplit("_", 1)[-1]] = gallery_metrics(probes @ gallery.T, probe_s, sids)
    result["mean"] = _mean_metrics(list(result["galleries"].values()))
    return result


def _mean_metrics(results: list[dict]) -> dict:
    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None
    return {"cmc": {k: mean([r["cmc"][k] for r in results]) for k in results[0]["cmc"]},
            "tpir_at_fpir": {k: mean([r["tpir_at_fpir"][k] for r in results]) for k in results[0]["tpir_at_fpir"]}}


def identification_table(result: dict) -> str:
    header = ["Gallery", *(f"rank-{k}" for k in RANKS), *(f"TPIR@FPIR={f}" for f in FPIR_TARGETS)]

    def cells(r):
        values = [r["cmc"][str(k)] for k in RANKS] + [r["tpir_at_fpir"][str(f)] for f in FPIR_TARGETS]
        return ["-" if v is None else f"{v * 100:.2f}" for v in values]

    rows = [(name, cells(r)) for name, r in result["galleries"].items()] + [("mean", cells(result["mean"]))]
    return table(rows, header)


# ----------------------------------------------------------------------------------------------
# a generated release in the insightface layout (tests and benchmarks)
# ----------------------------------------------------------------------------------------------

def _identity_face(rng: np.random.Generator) -> np.ndarray:
    """A 112x112 BGR 'face': a smooth identity texture with dark blobs at the five reference points."""
    low = rng.uniform(40, 220, (6, 6, 3)).astype(np.float32)
    face = cv2.resize(low, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_CUBIC)
    for x, y in REFERENCE_POINTS:
        cv2.circle(face, (int(round(x)), int(round(y))), 5, tuple(float(v) for v in rng.uniform(0, 60, 3)), -1)
    return face


def _crop_of(face: np.ndarray, rng: np.random.Generator, size_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A loose crop holding ``face`` under a random similarity transform, and its five landmarks."""
    size = int(rng.integers(size_range[0], size_range[1] + 1))
    angle, scale = rng.uniform(-0.4, 0.4), size / IMAGE_SIZE * rng.uniform(0.55, 0.8)
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    centre = size / 2 + rng.uniform(-0.08, 0.08, 2) * size
    matrix = np.array([[c, -s, 0.0], [s, c, 0.0]])
    matrix[:, 2] = centre - matrix[:, :2] @ np.array([56.0, 60.0])
    texture = face * rng.uniform(0.7, 1.2) + rng.normal(0, 18, face.shape).astype(np.float32)
    background = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
    canvas = cv2.resize(background, (size, size), interpolation=cv2.INTER_LINEAR)
    canvas = cv2.warpAffine(texture, matrix, (size, size), dst=canvas, borderMode=cv2.BORDER_TRANSPARENT)
    landmarks = REFERENCE_POINTS.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2] + rng.normal(0, 1.0, (5, 2))
    return np.clip(canvas, 0, 255).astype(np.uint8), np.round(landmarks, 3)


@dataclass
class SyntheticRelease:
    """Ground truth of a generated release."""
    root: Path
    template_subject: dict[int, int]
    gallery: dict[str, list[int]]
    probes: list[int]


def write_synthetic_release(root: str | os.PathLike, target: str = "IJBC", subjects: int = 6,
                            templates_per_subject: int = 3, max_media: int = 3, max_frames: int = 3,
                            crop_size: tuple[int, int] = (64, 96), max_pairs: int | None = None,
                            seed: int = 0, jpeg_quality: int = 90) -> SyntheticRelease:
    """Write ``<root>/<target>/{loose_crop,meta}`` in the release layout, with identity-bearing crops.

    Ids are neither contiguous nor sorted, rows are shuffled (templates interleave), some media are
    video-like (several rows), one media id is shared by two templates, some crops are grayscale
    JPEGs and some detector scores are low. The first template of each subject is its gallery
    template (pair column 1, 1:N galleries: first half of the subjects G1/S1, second half G2/S2);
    the others are probes (pair column 2, 1:N mixed probes).
    """
    target = target.upper()
    rng = np.random.default_rng(seed)
    folder = Path(root) / target
    (folder / "loose_crop").mkdir(parents=True, exist_ok=True)
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    n_templates = subjects * templates_per_subject
    template_ids = rng.choice(np.arange(1, 50 * n_templates + 10), n_templates, replace=False)
    rows, template_subject, next_media = [], {}, int(rng.integers(1000, 5000))
    faces = [_identity_face(rng) for _ in range(subjects)]
    for t, tid in enumerate(template_ids):
        subject = t // templates_per_subject
        template_subject[int(tid)] = subject
        for _ in range(int(rng.integers(1, max_media + 1))):
            next_media += int(rng.integers(1, 40))
            rows += [(int(tid), next_media, subject) for _ in range(int(rng.integers(1, max_frames + 1)))]
    if templates_per_subject > 1:                    # one media id in two templates of subject 0
        rows.append((int(template_ids[1]), rows[0][1], 0))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    tid_mid, pts = [], []
    for i, (tid, mid, subject) in enumerate(rows):
        name = f"{i + 1}.jpg"
        crop, landmarks = _crop_of(faces[subject], rng, crop_size)
        if rng.random() < 0.08:
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(folder / "loose_crop" / name), crop, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        score = rng.uniform(0.9, 1.0) if rng.random() < 0.9 else rng.uniform(0.1, 0.5)
        tid_mid.append(f"{name} {tid} {mid}")
        pts.append(" ".join([name, *(f"{v:.3f}" for v in landmarks.ravel()), f"{score:.3f}"]))
    gallery_t = [int(template_ids[s * templates_per_subject]) for s in range(subjects)]
    probe_t = [int(t) for t in template_ids if int(t) not in set(gallery_t)]
    pairs = [(g, p, int(template_subject[g] == template_subject[p])) for g in gallery_t for p in probe_t]
    if max_pairs is not None and len(pairs) > max_pairs:
        genuine = [p for p in pairs if p[2]]
        impostor = [pairs[i] for i in rng.choice(len(pairs), max_pairs, replace=False) if not pairs[i][2]]
        pairs = genuine + impostor[:max_pairs - len(genuine)]
        pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    prefix = target.lower()
    meta = folder / "meta"
    (meta / f"{prefix}_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (meta / f"{prefix}_name_5pts_score.txt").write_text("\n".join(pts) + "\n")
    (meta / f"{prefix}_template_pair_label.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in pairs))
    half = (subjects + 1) // 2
    galleries = {"G1": gallery_t[:half], "G2": gallery_t[half:]} if target == "IJBC" else \
        {"S1": gallery_t[:half], "S2": gallery_t[half:]}
    names = ONE_N_FILES[target]
    for (key, tids), name in zip(galleries.items(), names[:2]):
        _write_1n_csv(meta / name, tids, rows, template_subject)
    _write_1n_csv(meta / names[2], probe_t, rows, template_subject)
    return SyntheticRelease(folder, template_subject, galleries, probe_t)


def _write_1n_csv(path: Path, tids: Sequence[int], rows, template_subject) -> None:
    """One line per crop of each listed template, as the release's 1:N CSVs (header row)."""
    wanted = set(tids)
    lines = ["TEMPLATE_ID,SUBJECT_ID,FILENAME"]
    lines += [f"{tid},{template_subject[tid] + 100},{i + 1}.jpg" for i, (tid, _, _) in enumerate(rows) if tid in wanted]
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# models, outputs, command line
# ----------------------------------------------------------------------------------------------

class StagedOutputs:
    """Files written under temporary names and renamed together at the end (nothing partial on failure)."""

    def __init__(self, folder: Path):
        self.folder, self.created, self.files = folder, not folder.exists(), []

    def path(self, name: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / name
        tmp = self.folder / f"{name}.tmp.{os.getpid()}"
        self.files.append((tmp, final))
        return tmp

    def commit(self) -> list[Path]:
        for tmp, final in self.files:
            os.replace(tmp, final)
        return [final for _, final in self.files]

    def discard(self) -> None:
        for tmp, _ in self.files:
            if tmp.exists():
                tmp.unlink()
        if self.created and self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def _save_json(path: Path, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, allow_nan=True)


def plot_roc(path: Path, curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]]) -> None:
    """The original's ROC figure (log FPR 1e-6..0.1, TPR 0.3..1, AUC in the legend) as PNG."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    ax = fig.subplots()
    for name, fpr, tpr, auc_value in curves:
        ax.plot(fpr, tpr, lw=1, label=f"[{name} (AUC = {auc_value * 100:.4f} %)]")
    ax.set_xlim([1e-6, 0.1])
    ax.set_ylim([0.3, 1.0])
    ax.grid(linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xticks(list(FAR_TARGETS))
    ax.set_yticks(np.linspace(0.3, 1.0, 8, endpoint=True))
    ax.set(xlabel="False Positive Rate", ylabel="True Positive Rate", title="ROC on IJB")
    ax.legend(loc="lower right")
    fig.savefig(path, format="png")


def default_result_dir(args: argparse.Namespace) -> Path:
    """--result-dir, else <run folder>/ijb for a model inside a training run, else the features' folder."""
    if args.result_dir:
        return Path(args.result_dir)
    source = Path(args.model or args.onnx or args.features)
    folder = source if source.is_dir() else source.resolve().parent
    if args.features:
        return folder
    if (folder / "training.log").is_file():
        return folder / "ijb"
    raise IJBDataError(f"{source} is not inside a training run folder (no training.log beside it): "
                       "pass --result-dir")


def _row_label(args: argparse.Namespace) -> str:
    if args.name:
        return args.name
    source = Path(args.model or args.onnx or args.features)
    if args.model:
        return source.resolve().parent.name if source.is_file() else source.resolve().name
    return source.stem


def _verification_dict(v: Verification) -> dict:
    fpr, tpr = downsample_roc(v.fpr, v.tpr)
    return {"switches": v.switches.as_dict(), "tar_at_far": v.tar, "auc": v.auc, "roc": {"fpr": fpr, "tpr": tpr}}


def run(args: argparse.Namespace) -> dict:
    """Read and check the release, embed (or load features), score, print the tables, write the outputs."""
    t_start = time.perf_counter()
    target = args.target.upper()
    release = read_release(args.image_path, target)
    result_dir = default_result_dir(args)
    lists = read_1n_lists(release) if args.one_n else None
    print(f"{target}: {len(release.names)} crops, {np.unique(release.templates).size} templates, "
          f"{release.labels.size} pairs ({int(release.labels.sum())} genuine)")
    features, bad_rows, timings = _features(args, release)
    chosen = Switches(flip=args.flip_test, norm=args.norm_score, detector_score=args.detector_score)
    t0 = time.perf_counter()
    results = {s: verify(release, features, s) for s in (ALL_SWITCHES if args.all_switches else (chosen,))}
    timings["scoring_s"] = time.perf_counter() - t0
    main = results[chosen]
    label = _row_label(args)
    print(tar_table([(f"{label}-{target}" if not args.all_switches else f"{label}-{s.code}-{target}", v.tar)
                     for s, v in results.items()]))
    print(f"AUC {main.auc * 100:.4f} %" + (f" ({chosen.code})" if args.all_switches else ""))
    payload = {"kind": "ijb", "target": target, "name": f"{label}-{target}", "label": label,
               "model": args.model or args.onnx or args.features, "network": args.network,
               "image_path": str(release.root), **_verification_dict(main), "switch_code": chosen.code,
               "crops": len(release.names), "templates": int(main.unique_templates.size),
               "pairs": int(release.labels.size), "genuine": int(release.labels.sum()),
               "embedding_size": features.shape[1] // 2, "bad_crops": [release.names[r] for r in bad_rows],
               "opencv": cv2.__version__}
    if args.all_switches:
        payload["all_switches"] = {s.code: _verification_dict(v) for s, v in results.items()}
    if args.one_n:
        payload["identification"] = identification(release, main.template_feats, main.unique_templates, lists)
        print(identification_table(payload["identification"]))
    payload["timings"] = {**timings, "total_s": time.perf_counter() - t_start}
    _write_outputs(result_dir, target, payload, main, features,
                   save_features=not (args.features or args.no_save_features))
    return payload


def _features(args: argparse.Namespace, release: Release) -> tuple[np.ndarray, list[int], dict]:
    """Per-row features from --features or from the model; bad rows reported (10 named)."""
    n = len(release.names)
    if args.features:
        features = _load_features(args.features, n)
        bad_rows = [int(r) for r in np.flatnonzero(~usable_rows(features))]
        bad_reasons, timings = ["NaN in the features file"] * len(bad_rows), {}
    else:
        skip = missing_crops(release)
        check_bad_budget(list(np.flatnonzero(skip)), ["missing"] * int(skip.sum()), n, args.max_bad, release.names)
        from face_model import load_model, tool_device
        device = tool_device(args.device)
        loaded = load_model(args.model, args.onnx, args.network, args.num_features, device)
        backbone, args.network = loaded.backbone, loaded.network
        emb = embed_release(release, backbone, args.batch_size, args.workers, device, args.max_bad, skip,
                            progress=not args.no_progress)
        features, bad_rows, bad_reasons = emb.features, emb.bad_rows, emb.bad_reasons
        timings = {"embedding_s": emb.total_seconds, "model_s": emb.model_seconds}
        print(f"embedded {n} crops and mirrors in {emb.total_seconds:.1f} s (model {emb.model_seconds:.1f} s), "
              f"{features.shape[1] // 2}-d")
    for row, why in list(zip(bad_rows, bad_reasons))[:10]:
        print(f"warning: crop {release.names[row]} skipped ({why})")
    if len(bad_rows) > 10:
        print(f"warning: {len(bad_rows) - 10} more crops skipped")
    if len(bad_rows) == n:
        raise IJBDataError(f"none of the {n} crops could be used")
    return features, bad_rows, timings


def _load_features(path: str, n: int) -> np.ndarray:
    try:
        features = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise IJBDataError(f"--features {path}: cannot read ({str(err).splitlines()[0]})") from None
    if features.ndim != 2 or features.shape[0] != n or features.shape[1] % 2:
        raise IJBDataError(f"--features {path}: shape {features.shape}; expected ({n}, 2 x D) [crop | mirror] "
                           "features, one row per crop, as written by python -m eval.ijb")
    return np.asarray(features, np.float32)


def _write_outputs(folder: Path, target: str, payload: dict, main: Verification, features: np.ndarray,
                   save_features: bool) -> None:
    stem = target.lower()
    staged = StagedOutputs(folder)
    try:
        _save_npy(staged.path(f"{stem}.npy"), main.scores)
        if save_features:
            _save_npy(staged.path(f"{stem}_features.npy"), features)
        plot_roc(staged.path(f"{stem}.png"), [(payload["name"], main.fpr, main.tpr, main.auc)])
        _save_json(staged.path(f"{stem}.json"), payload)
        written = staged.commit()
    except BaseException:
        staged.discard()
        raise
    for path in written:
        print(f"wrote {path}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval.ijb", description=__doc__.splitlines()[0],
                                     parents=[model_parser(required=False)])
    parser.add_argument("--features", help="re-score per-image features saved by an earlier run (no model)")
    parser.add_argument("--image-path", required=True, help="the IJBC (or IJBB) folder: meta/ and loose_crop/")
    parser.add_argument("--target", default="IJBC", type=str.upper, choices=TARGETS)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--result-dir", help="output folder (default: <run folder>/ijb for a model in a run)")
    parser.add_argument("--name", help="row name (default: the run folder's name, or the model file's stem)")
    add_bool_argument(parser, "--flip-test", default=True,
                      help="F1: image feature = features(crop) + features(mirror); --no-flip-test: off")
    add_bool_argument(parser, "--norm-score", default=True,
                      help="N1: keep each image feature's norm as a quality weight; off = L2-normalise")
    add_bool_argument(parser, "--detector-score", default=True,
                      help="D1: weight each image feature by its detector score")
    parser.add_argument("--all-switches", action="store_true", help="all eight N/D/F combinations")
    parser.add_argument("--1n", dest="one_n", action="store_true", help="also 1:N identification (mixed media)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="decode/align processes beside the model (0: in the main process)")
    parser.add_argument("--max-bad", type=int, default=0, help="unreadable crops to skip before stopping")
    parser.add_argument("--no-save-features", action="store_true",
                        help="do not write <target>_features.npy (the per-image features for --features)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if sum(bool(x) for x in (args.model, args.onnx, args.features)) != 1:
        parser.error("pass one of --model, --onnx, --features")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.workers < 0 or args.max_bad < 0:
        parser.error("--workers and --max-bad must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
