"""What the training data holds (images, classes, label range) and whether the config agrees.

``inspect_data(rec)`` reads the counts the cheapest way the folder allows: the insightface
header record, a ``train.lst`` that matches the ``.idx``, a JSON cache beside the ``.rec``, a
scan of the record headers (24 + 4*flag bytes each, never the image; then cached), or a walk of
an image folder. ``check_data_vs_config`` turns disagreements into errors before the first
step, ``resolve_auto`` fills ``num_classes``/``num_image`` set to ``"auto"``.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Optional

from utils import recordio
from utils.errors import ConfigError, DataError

SYNTHETIC = "synthetic"
SYNTHETIC_IMAGES = 1_000_000        # the original SyntheticDataset's length
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
EXPECTED = ("train.rec + train.idx (made by python -m im2rec), or an image folder with one "
            "sub-folder of images per identity")
CACHE_SUFFIX = ".labels.json"
_CACHE_VERSION = 1
_NUM_IMAGE_TOLERANCE = 0.01

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataInfo:
    """Counts read from the data; labels/classes are None where the source does not tell them."""

    num_images: int
    num_classes: Optional[int]
    min_label: Optional[int]
    max_label: Optional[int]
    source: str                     # synthetic | header | lst | cache | scan | index | folder
    path: str = ""                  # the file or folder the numbers describe


def record_paths(root: str | os.PathLike) -> tuple[str, str]:
    """(train.rec, train.idx) inside ``root``."""
    return os.path.join(root, "train.rec"), os.path.join(root, "train.idx")


def find_layout(root: str | os.PathLike) -> str:
    """'synthetic', 'recordio' or 'folder'; a DataError says what is missing otherwise."""
    root = os.fspath(root)
    if root == SYNTHETIC:
        return SYNTHETIC
    if not os.path.isdir(root):
        raise DataError(f"data folder {root} does not exist (config 'rec'): expected {EXPECTED}")
    rec, idx = record_paths(root)
    if os.path.isfile(rec) and os.path.isfile(idx):
        return "recordio"
    if os.path.isfile(rec) or os.path.isfile(idx):
        have, missing = (rec, idx) if os.path.isfile(rec) else (idx, rec)
        raise DataError(f"{have} has no {os.path.basename(missing)} beside it: RecordIO needs both "
                        f"files of the same release (or rebuild them with python -m im2rec)")
    if any(os.path.isdir(os.path.join(root, name)) for name in os.listdir(root)):
        return "folder"
    raise DataError(f"{root} holds neither train.rec/train.idx nor identity sub-folders: "
                    f"expected {EXPECTED}")


def inspect_data(rec_dir: str | os.PathLike, *, scan: bool = True) -> DataInfo:
    """Number of images and classes and the label range of the data in ``rec_dir``.

    With ``scan=False`` a .rec without header, matching .lst or cache is not scanned and its
    label fields are None (source 'index').
    """
    rec_dir = os.fspath(rec_dir)
    layout = find_layout(rec_dir)
    if layout == SYNTHETIC:
        return DataInfo(SYNTHETIC_IMAGES, None, None, None, SYNTHETIC, SYNTHETIC)
    if layout == "folder":
        classes, samples = scan_image_folder(rec_dir)
        return DataInfo(len(samples), len(classes), 0, len(classes) - 1, "folder", rec_dir)
    rec_path, idx_path = record_paths(rec_dir)
    rec = recordio.MXIndexedRecordIO(idx_path, rec_path, "r")
    try:
        keys, header = recordio.read_layout(rec)
        return inspect_records(rec_dir, rec, keys, header, scan=scan)
    finally:
        rec.close()


def inspect_records(rec_dir: str, rec: recordio.MXIndexedRecordIO, keys: list,
                    header: Optional[recordio.IRHeader], *, scan: bool = True) -> DataInfo:
    """inspect_data for an already opened train.rec whose layout ``recordio.read_layout`` returned."""
    if header is not None:
        return _info_from_header(rec, keys, header)
    info = _info_from_lst(rec_dir, rec, keys)
    if info is None:
        info = _read_cache(rec.uri, rec.idx_path, len(keys))
    if info is None and scan:
        info = _scan_headers(rec, keys)
        _write_cache(rec.uri, rec.idx_path, info)
    return info or DataInfo(len(keys), None, None, None, "index", rec.uri)


def scan_image_folder(root: str, allow_empty: bool = False) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(path, class index)]) like torchvision's ImageFolder: sorted folders and files.

    Identity folders without images raise a DataError unless ``allow_empty`` (dataset statistics).
    """
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    samples: list[tuple[str, int]] = []
    empty = []
    for label, name in enumerate(classes):
        found = [os.path.join(d, f) for d, _, files in sorted(os.walk(os.path.join(root, name),
                                                                      followlinks=True))
                 for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            empty.append(name)
        samples.extend((path, label) for path in found)
    if empty and not allow_empty:
        raise DataError(f"{root}: identity folder(s) without images: {', '.join(empty[:5])}"
                        f"{' ...' if len(empty) > 5 else ''} (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                        f"remove them, class indices follow the sorted folder names")
    return classes, samples


def check_data_vs_config(cfg: Any, info: DataInfo, world_size: int) -> list[str]:
    """Raise on data/config disagreements that would break training; return warnings to log."""
    num_classes = _resolved(cfg.num_classes, _auto_classes(info))
    num_images = _resolved(cfg.num_image, info.num_images)
    warnings: list[str] = []
    if info.source != SYNTHETIC:
        _check_labels(info, num_classes, warnings)
    if num_classes is not None and num_classes < world_size:
        raise ConfigError(f"num_classes={num_classes} < world_size={world_size}: every process "
                          f"holds a shard of the class centres; use at most {num_classes} processes")
    global_batch = cfg.batch_size * world_size
    if global_batch > info.num_images:
        raise ConfigError(f"batch_size {cfg.batch_size} x world_size {world_size} = {global_batch} "
                          f"is more than the {info.num_images} images in {info.path}: not one full "
                          f"step per epoch; lower batch_size")
    if cfg.num_image != "auto" and info.source != SYNTHETIC:
        factor = num_images / info.num_images
        if abs(factor - 1.0) > _NUM_IMAGE_TOLERANCE:
            warnings.append(_num_image_warning(num_images, info, factor))
    return warnings


def check_val_targets(cfg: Any) -> list[str]:
    """The ``<rec>/<name>.bin`` of every val_targets entry must exist (or ``val_targets_missing="warn"``).

    A missing file used to be a start-up warning only, and a 26-epoch run could end without a single
    verification. Returns the warnings to log (relaxed mode).
    """
    missing = [os.path.join(cfg.rec, f"{name}.bin") for name in cfg.val_targets
               if not os.path.exists(os.path.join(cfg.rec, f"{name}.bin"))]
    if not missing:
        return []
    if cfg.get("val_targets_missing", "error") == "warn":
        return [f"verification targets not found, skipped: {', '.join(missing)}"]
    raise DataError(f"verification target file(s) not found: {', '.join(missing)}: put the .bin files "
                    f"beside train.rec, remove them from val_targets, or set val_targets_missing=\"warn\"")


def resolve_auto(cfg: Any, info: DataInfo) -> Any:
    """Fill ``num_classes`` / ``num_image`` set to "auto" from ``info`` (in place; returns cfg)."""
    if cfg.num_classes == "auto":
        value = _auto_classes(info)
        if value is None:
            raise ConfigError(f"num_classes=\"auto\" cannot be read from {info.path or info.source} "
                              f"(source {info.source}): set num_classes in the config")
        cfg.num_classes = value
    if cfg.num_image == "auto":
        cfg.num_image = info.num_images
    return cfg


def cache_path(rec_path: str) -> str:
    """The label-scan cache beside a .rec."""
    return rec_path + CACHE_SUFFIX


def _resolved(value: Any, auto_value: Optional[int]) -> Optional[int]:
    return auto_value if value == "auto" else int(value)


def _num_image_warning(num_image: int, info: DataInfo, factor: float) -> str:
    if factor > 1:
        effect = (f"when the epochs end the schedule is only {100 / factor:.0f}% through (the LR "
                  f"never decays fully)")
    else:
        effect = (f"the LR reaches its final value after {100 * factor:.0f}% of the epochs and the "
                  f"rest trains at that value")
    return (f"NUM_IMAGE MISMATCH: config num_image={num_image} but {info.path} holds "
            f"{info.num_images} images. The step count and the LR schedule are computed from "
            f"num_image, so they are stretched {factor:.2f}x: {effect}. Set num_image = "
            f"{info.num_images} or \"auto\"")


def _auto_classes(info: DataInfo) -> Optional[int]:
    if info.max_label is None:
        return info.num_classes
    return max(info.num_classes or 0, info.max_label + 1)


def _check_labels(info: DataInfo, num_classes: Optional[int], warnings: list[str]) -> None:
    if info.min_label is None or info.max_label is None:
        return
    if info.min_label < 0:
        raise DataError(f"{info.path}: label {info.min_label} is negative: labels must be class "
                        f"indices 0..num_classes-1; rebuild the data with python -m im2rec")
    if num_classes is not None and info.max_label >= num_classes:
        raise DataError(f"{info.path}: label {info.max_label} >= num_classes={num_classes} "
                        f"(labels {info.min_label}..{info.max_label}): set num_classes = "
                        f"{info.max_label + 1} or \"auto\"")
    if info.num_images > 1 and info.min_label == info.max_label:
        if info.source == "folder":
            raise DataError(f"{info.path}: all {info.num_images} images are in one identity "
                            f"folder: expected one sub-folder per identity")
        raise DataError(f"{info.path}: all {info.num_images} records have label {info.min_label}: "
                        f"is this a DCFace release? convert it with python -m im2rec --from-dcface "
                        f"<release folder> <output folder>")
    if num_classes is not None and info.num_classes is not None and num_classes > info.max_label + 1:
        warnings.append(f"config num_classes={num_classes} but {info.path} has {info.num_classes} "
                        f"classes (labels {info.min_label}..{info.max_label}): "
                        f"{num_classes - info.max_label - 1} class centres never see an image")


def _info_from_header(rec: recordio.MXIndexedRecordIO, keys: list,
                      header: recordio.IRHeader) -> DataInfo:
    """Counts from record 0; the label range from the first and last image (grouped by class)."""
    first, last = (int(recordio.first_label(recordio.unpack(rec.read_idx(k))[0]))
                   for k in (keys[0], keys[-1]))
    num_classes = None
    if header.flag >= 2 and header.label[1] > header.label[0]:
        num_classes = int(header.label[1]) - int(header.label[0])
    return DataInfo(len(keys), num_classes, min(first, last), max(first, last), "header", rec.uri)


def _info_from_lst(rec_dir: str, rec: recordio.MXIndexedRecordIO, keys: list) -> Optional[DataInfo]:
    """Labels from train.lst when its index column is exactly the .idx's key set."""
    path = os.path.join(rec_dir, "train.lst")
    if not os.path.isfile(path):
        return None
    labels: dict = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 3:
                continue
            try:
                labels[int(fields[0])] = int(float(fields[1]))
            except ValueError:
                return None
    if len(labels) != len(keys) or any(k not in labels for k in keys):
        logger.info("%s does not match %s (different keys); scanning the records instead", path,
                    rec.idx_path)
        return None
    return _summary(list(labels.values()), "lst", rec.uri)


def _summary(labels: list, source: str, path: str) -> DataInfo:
    distinct = set(labels)
    if not distinct:
        return DataInfo(0, 0, None, None, source, path)
    return DataInfo(len(labels), len(distinct), min(distinct), max(distinct), source, path)


def _scan_headers(rec: recordio.MXIndexedRecordIO, keys: list) -> DataInfo:
    """label[0] of every record, reading its header only (never the image)."""
    return _summary(recordio.scan_labels(rec, keys), "scan", rec.uri)


def _stamp(rec_path: str, idx_path: str) -> dict:
    rec_st, idx_st = os.stat(rec_path), os.stat(idx_path)
    return {"rec_size": rec_st.st_size, "rec_mtime_ns": rec_st.st_mtime_ns,
            "idx_size": idx_st.st_size, "idx_mtime_ns": idx_st.st_mtime_ns}


def _read_cache(rec_path: str, idx_path: str, num_keys: int) -> Optional[DataInfo]:
    path = cache_path(rec_path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if data.get("version") != _CACHE_VERSION or data.get("stamp") != _stamp(rec_path, idx_path) \
            or data.get("num_images") != num_keys:
        return None
    return DataInfo(data["num_images"], data["num_classes"], data["min_label"], data["max_label"],
                    "cache", rec_path)


def _write_cache(rec_path: str, idx_path: str, info: DataInfo) -> None:
    """Atomic write beside the .rec; a read-only folder only costs a rescan next time."""
    path = cache_path(rec_path)
    data = {"version": _CACHE_VERSION, "stamp": _stamp(rec_path, idx_path),
            "num_images": info.num_images, "num_classes": info.num_classes,
            "min_label": info.min_label, "max_label": info.max_label}
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", dir=os.path.dirname(path))
    except OSError as err:
        logger.warning("cannot cache the label scan beside %s (%s); it will be rescanned next time",
                       rec_path, err.strerror)
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        logger.warning("cannot cache the label scan at %s (%s)", path, err.strerror)
        try:
            os.unlink(tmp)
        except OSError:
            pass
