"""Pack face images into MXNet RecordIO, as MXNet's tools/im2rec.py does (no mxnet needed).

    python -m im2rec --list --recursive train <root>    # -> train.lst (one class per sub-folder)
    python -m im2rec train.lst <root>                   # -> train.rec + train.idx beside train.lst
    python -m im2rec --check train.rec                  # list what training would refuse
    python -m im2rec --from-dcface <record_dir> <out>   # DCFace release -> <out>/train.rec/.idx/.lst
    python -m im2rec --from-lmdb <x.lmdb> <out>         # Vec2Face HSFace LMDB -> <out>/train.*

The .lst (sorted walk, `random.seed(100)` shuffle, `index<TAB>label<TAB>path`) and the records
(key = .lst index, header flag 0 / label / id = key / id2 = 0, written in .lst order) match
MXNet's im2rec. `--insightface-header` writes the insightface layout instead (record 0 = header,
images at keys 1..N grouped by class, one identity record per class, plus a `property` file).
Images are decoded as strictly as training decodes them (utils.image): a truncated or undecodable
image stops packing (listed by path; --skip-bad leaves it out), never re-encoded. Outputs are
written to temporary files and renamed only when complete.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

from utils.cli import run_tool
from utils.errors import DataError
from utils.recordio import (IRHeader, MXIndexedRecordIO, MXRecordIO, RecordIOError, pack, pack_img,
                            read_layout, unpack)

DEFAULT_EXTS = [".jpeg", ".jpg", ".png"]
LIST_SEED = 100


class Im2RecError(DataError):
    """Bad input to im2rec: missing folder, unreadable .lst line, nothing packable."""


class ListItem(NamedTuple):
    index: int                    # .lst index column = record key
    path: str                     # path relative to the image root
    labels: tuple                 # one or more float labels


@dataclass
class PackResult:
    rec_path: str
    written: list = field(default_factory=list)      # (record key, ListItem) in file order
    skipped: list = field(default_factory=list)      # (path, reason)
    sizes: dict = field(default_factory=dict)        # (H, W) -> first path of that size
    odd_sizes: int = 0                               # images training refuses for their size
    num_classes: int = 0


def _temp_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _write_text(path: str, lines: Iterable[str]) -> None:
    """Write a text file atomically (temp file in the same folder + os.replace)."""
    tmp = _temp_name(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


# ---------------------------------------------------------------- .lst creation (--list)

def list_image(root: str, recursive: bool, exts: Sequence[str]) -> list:
    """Images under `root` in MXNet's walk order; recursive: one class per folder, in walk order."""
    exts = {e.lower() for e in exts}
    items: list = []
    if not recursive:
        for name in sorted(os.listdir(root)):
            full = os.path.join(root, name)
            if os.path.splitext(name)[1].lower() in exts and os.path.isfile(full):
                items.append(ListItem(len(items), os.path.relpath(full, root), (0.0,)))
        return items
    classes: dict = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        files.sort()
        for name in files:
            full = os.path.join(folder, name)
            if os.path.splitext(name)[1].lower() in exts and os.path.isfile(full):
                label = classes.setdefault(folder, len(classes))
                items.append(ListItem(len(items), os.path.relpath(full, root), (float(label),)))
    return items


def format_list_line(item: ListItem) -> str:
    """One .lst line in MXNet's layout: index, labels as %f, path, tab separated."""
    return "%d\t" % item.index + "".join("%f\t" % v for v in item.labels) + "%s\n" % item.path


def write_list(path_out: str, items: Iterable[ListItem]) -> None:
    """Write a .lst file atomically."""
    _write_text(path_out, (format_list_line(item) for item in items))


def _check_root(root: str) -> None:
    if not os.path.isdir(root):
        raise Im2RecError(f"image root {root} not found (or not a folder); pass the folder that holds "
                          "one sub-folder of images per identity")


def make_list(prefix: str, root: str, recursive: bool = False, exts: Sequence[str] = DEFAULT_EXTS,
              shuffle: bool = True, chunks: int = 1, train_ratio: float = 1.0,
              test_ratio: float = 0.0) -> list:
    """Create <prefix>.lst (or chunk/train/val/test lists) exactly as MXNet's im2rec; returns the paths."""
    _check_root(root)
    items = list_image(root, recursive, exts)
    if not items:
        has_dirs = any(os.path.isdir(os.path.join(root, n)) for n in os.listdir(root))
        hint = " (the images are in sub-folders: add --recursive)" if has_dirs and not recursive \
            else "; check the folder and --exts"
        raise Im2RecError(f"no images with extensions {' '.join(exts)} found in {root}{hint}")
    if shuffle:
        random.Random(LIST_SEED).shuffle(items)
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    chunk_size = (len(items) + chunks - 1) // chunks
    written = []
    for i in range(chunks):
        chunk = items[i * chunk_size:(i + 1) * chunk_size]
        stem = prefix + (f"_{i}" if chunks > 1 else "")
        sep = int(chunk_size * train_ratio)
        sep_test = int(chunk_size * test_ratio)
        outputs = []
        if train_ratio == 1.0:
            outputs.append((stem + ".lst", chunk))
        else:
            if test_ratio:
                outputs.append((stem + "_test.lst", chunk[:sep_test]))
            if train_ratio + test_ratio < 1.0:
                outputs.append((stem + "_val.lst", chunk[sep_test + sep:]))
            outputs.append((stem + "_train.lst", chunk[sep_test:sep_test + sep]))
        for path, part in outputs:
            write_list(path, part)
            written.append(path)
    return written


# ---------------------------------------------------------------- .lst reading

def read_list(path: str) -> list:
    """Parse a .lst file; a malformed line or a repeated index is an error naming the line."""
    items: list = []
    seen: dict = {}
    fix = "fix the line or regenerate the list with python -m im2rec --list --recursive <prefix> <root>"
    try:
        f = open(path, encoding="utf-8")
    except OSError as err:
        raise Im2RecError(f"cannot read {path}: {err.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = [v.strip() for v in line.strip().split("\t")]
            try:
                if len(fields) < 3:
                    raise ValueError
                item = ListItem(int(fields[0]), fields[-1], tuple(float(v) for v in fields[1:-1]))
            except ValueError:
                raise Im2RecError(f"{path} line {lineno}: expected 'index<TAB>label<TAB>path', got "
                                  f"{line.strip()[:80]!r}; {fix}") from None
            if item.index in seen:
                raise Im2RecError(f"{path} line {lineno}: index {item.index} already used on line "
                                  f"{seen[item.index]} (indexes are record keys and must be unique); "
                                  f"{fix}")
            seen[item.index] = lineno
            items.append(item)
    if not items:
        raise Im2RecError(f"{path} holds no entries; {fix}")
    return items


# ---------------------------------------------------------------- encoding

def encode_image(root: str, item: ListItem, pass_through: bool = False, color: int = 1,
                 center_crop: bool = False, resize: int = 0, quality: int = 95,
                 encoding: str = ".jpg") -> bytes:
    """The image bytes to store: the file as is, or decode -> crop/resize -> cv2.imencode."""
    return load_image(root, item, pass_through, color, center_crop, resize, quality, encoding)[0]


def load_image(root: str, item: ListItem, pass_through: bool = False, color: int = 1,
               center_crop: bool = False, resize: int = 0, quality: int = 95,
               encoding: str = ".jpg") -> tuple:
    """(bytes to store, (H, W) of the stored image); a truncated or undecodable file raises.

    The file is decoded as MXNet's im2rec reads it (cv2.imread's flags: --color, EXIF
    orientation applied), but strictly: OpenCV's grey rows for a cut JPEG are never re-encoded.
    """
    import cv2
    from utils.image import imdecode

    full = os.path.join(root, item.path)
    try:
        with open(full, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise Im2RecError("file not found") from None
    except OSError as err:
        raise Im2RecError(f"cannot read it: {err.strerror}") from None
    if pass_through:
        return checked_payload(data)
    img = imdecode(data, color)
    if center_crop:
        h, w = img.shape[:2]
        margin = abs(h - w) // 2
        img = img[margin:margin + w, :] if h > w else img[:, margin:margin + h]
    if resize:
        h, w = img.shape[:2]
        size = (resize, h * resize // w) if h > w else (w * resize // h, resize)
        img = cv2.resize(img, size)
    payload = unpack(pack_img(IRHeader(0, 0.0, 0, 0), img, quality=quality, img_fmt=encoding))[1]
    return payload, img.shape[:2]


def checked_payload(payload: bytes) -> tuple:
    """(payload, (H, W)) once the training decoder has read it; ImageDecodeError otherwise."""
    from utils.image import decode_bgr_hwc

    return payload, decode_bgr_hwc(payload).shape[:2]


def ordered_map(fn: Callable, inputs: Iterable, num_thread: int = 1) -> Iterator:
    """fn over inputs with `num_thread` threads (cv2 and file reads release the GIL), in order."""
    if num_thread <= 1:
        yield from map(fn, inputs)
        return
    pool = ThreadPoolExecutor(num_thread)
    pending: deque = deque()
    try:
        for x in inputs:
            pending.append(pool.submit(fn, x))
            if len(pending) >= 4 * num_thread:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _try(load: Callable[[ListItem], tuple]) -> Callable:
    def run(item: ListItem):
        try:
            payload, size = load(item)
            return item, payload, size, ""
        except Exception as err:  # reported with its path; the caller skips it or refuses all
            return item, None, None, (str(err) or type(err).__name__)
    return run


# ---------------------------------------------------------------- writing .rec/.idx

def _class_of(item: ListItem, where: str) -> int:
    label = item.labels[0]
    if label < 0 or label != int(label):
        raise Im2RecError(f"{where}: label {label} of {item.path} is not a class index (0, 1, 2, ...); "
                          "--insightface-header needs integer class labels")
    return int(label)


def write_record(prefix: str, items: Sequence[ListItem], load: Callable[[ListItem], tuple],
                 insightface_header: bool = False, pack_label: bool = False, num_thread: int = 1,
                 desc: str = "", skip_bad: bool = False) -> PackResult:
    """Write <prefix>.rec/.idx from `items`; load(item) gives (image bytes, (H, W)). Atomic.

    An image that cannot be loaded is listed with its path; with `skip_bad` it is left out,
    otherwise nothing is written and an Im2RecError names how many were bad.
    """
    from tqdm import tqdm

    from utils.image import face_size_problem    # torch: imported only when packing

    rec_path, idx_path = prefix + ".rec", prefix + ".idx"
    result = PackResult(rec_path)
    if insightface_header:
        items = sorted(items, key=lambda it: (_class_of(it, prefix + ".lst"), it.index))
        result.num_classes = int(items[-1].labels[0]) + 1 if items else 0
    tmp_rec, tmp_idx = _temp_name(rec_path), _temp_name(idx_path)
    writer = MXIndexedRecordIO(tmp_idx, tmp_rec, "w")
    ranges: dict = {}
    try:
        if insightface_header:
            writer.write_idx(0, pack(IRHeader(0, [0.0, 0.0], 0, 0), b""))
        bar = tqdm(ordered_map(_try(load), items, num_thread), total=len(items), unit="img",
                   desc=desc or os.path.basename(rec_path), file=sys.stderr, mininterval=0.5)
        for item, payload, size, error in bar:
            if payload is None:
                result.skipped.append((item.path, error))
                bar.write(f"im2rec: {'skipped' if skip_bad else 'bad image'} {item.path}: {error}",
                          file=sys.stderr)
                continue
            key = len(result.written) + 1 if insightface_header else item.index
            label = list(item.labels) if pack_label and len(item.labels) > 1 else item.labels[0]
            writer.write_idx(key, pack(IRHeader(0, label, key, 0), payload))
            result.written.append((key, item))
            result.sizes.setdefault(tuple(size), item.path)
            result.odd_sizes += face_size_problem(size) is not None
            if insightface_header:
                start, _ = ranges.get(int(item.labels[0]), (key, key))
                ranges[int(item.labels[0])] = (start, key + 1)
        bar.close()
        _refuse_bad(result, len(items), skip_bad)
        if insightface_header:
            _write_identities(writer, ranges, len(result.written), result.num_classes)
        writer.close()
        if insightface_header:
            _patch_header(tmp_rec, len(result.written), result.num_classes)
        os.replace(tmp_rec, rec_path)
        os.replace(tmp_idx, idx_path)
    except BaseException:
        writer.close()
        _remove(tmp_rec)
        _remove(tmp_idx)
        raise
    if insightface_header:
        h, w = next(iter(result.sizes))
        _write_text(os.path.join(os.path.dirname(rec_path), "property"),
                    [f"{result.num_classes},{h},{w}\n"])
    return result


def _refuse_bad(result: PackResult, total: int, skip_bad: bool) -> None:
    """Raise when nothing could be packed, or when images were bad and --skip-bad is not set."""
    if not result.written:
        raise Im2RecError(f"none of the {total} images could be read, nothing written to "
                          f"{result.rec_path}; check that the image root is the folder the paths "
                          "are relative to")
    if result.skipped and not skip_bad:
        raise Im2RecError(f"{len(result.skipped)} of {total} images are missing, truncated or "
                          f"undecodable (listed above), nothing written to {result.rec_path}; "
                          "replace or remove them, or pass --skip-bad to leave them out")


def _write_identities(writer: MXIndexedRecordIO, ranges: dict, num_images: int,
                      num_classes: int) -> None:
    """One record per class 0..max with its [start, end) image keys (empty for a class with none)."""
    first = num_images + 1
    end = 1
    for c in range(num_classes):
        start, end = ranges.get(c, (end, end))
        key = first + c
        writer.write_idx(key, pack(IRHeader(0, [float(start), float(end)], key, 0), b""))


def _patch_header(rec_path: str, num_images: int, num_classes: int) -> None:
    """Fill record 0 (written first as a placeholder of the same size) once the counts are known.

    The label floats are non-negative, so they can never hold the (negative-float) magic word and
    the record stays one part at byte 0: its payload starts after the 8-byte part header.
    """
    first = num_images + 1
    real = pack(IRHeader(0, [float(first), float(first + num_classes)], 0, 0), b"")
    with open(rec_path, "r+b") as f:
        f.seek(8)
        f.write(real)


# ---------------------------------------------------------------- --check

def _rec_paths(arg: str) -> tuple:
    """.rec and .idx paths from a .rec/.idx path, a prefix or a folder holding train.rec."""
    if os.path.isdir(arg):
        base = os.path.join(arg, "train")
    elif arg.endswith((".rec", ".idx", ".lst")):
        base = arg[:-4]
    else:
        base = arg
    if not os.path.isfile(base + ".rec"):
        raise Im2RecError(f"{base}.rec not found; pass a .rec file, its prefix, or a folder holding "
                          "train.rec")
    return base + ".rec", base + ".idx"


def _decode_check(job: tuple) -> tuple:
    """What training would refuse in one record: the decode, the image size, a negative label.

    The record is read by the training loader's own decode_record (dataset.py), so --check
    refuses exactly what a training run would.
    """
    from dataset import decode_record
    from utils.image import face_size_problem

    key, offset, record, error = job
    if not error and record is not None:
        try:
            image, label = decode_record(record)
            error = face_size_problem(image.shape) or ""
        except DataError as err:
            error = str(err)
        else:
            if not error and label < 0:
                error = f"label {label} is negative: training takes class indices 0..num_classes-1"
    return key, offset, error


def _indexed_jobs(reader: MXIndexedRecordIO, keys: list) -> Iterator:
    """(key, offset, record, error) for each image key, read as the training loader reads it."""
    for key in keys:
        offset = reader.idx[key]
        try:
            yield key, offset, reader.read_idx(key), ""
        except RecordIOError as err:
            yield key, offset, None, str(err)


def _image_keys(reader: MXIndexedRecordIO) -> tuple:
    """(image keys, problem with record 0 or ""): the layout training reads (recordio.read_layout)."""
    try:
        return read_layout(reader)[0], ""
    except RecordIOError as err:        # record 0 unreadable: report it, check every other key
        return [key for key in reader.keys if key != 0], str(err)


def _sequential_jobs(rec_path: str) -> Iterator:
    """Jobs for a .rec without .idx, in file order; stops at the first unreadable framing.

    Records with an empty payload (the insightface header and identity records) are not checked.
    """
    reader = MXRecordIO(rec_path, "r")
    try:
        n = 0
        while True:
            offset = reader.tell()
            try:
                buf = reader.read()
            except RecordIOError as err:
                yield f"#{n}", offset, None, str(err)
                return
            if buf is None:
                return
            try:
                empty = not unpack(buf)[1]
            except RecordIOError:
                empty = False           # decode_record names the problem
            yield f"#{n}", offset, None if empty else buf, ""
            n += 1
    finally:
        reader.close()


def check_record(path: str, num_thread: int = 1) -> tuple:
    """Read every image record as training does; returns (records checked, [(key, byte offset, reason)]).

    A record is bad when training would refuse it: unreadable framing, an image the training
    decoder refuses (truncated, undecodable), a size other than 112x112, a negative label.
    """
    rec_path, idx_path = _rec_paths(path)
    if not os.path.isfile(idx_path):
        print(f"im2rec: warning: {idx_path} not found (training needs it: rebuild with python -m "
              f"im2rec <prefix>.lst <image root>); reading {rec_path} sequentially", file=sys.stderr)
        return _check_jobs(_sequential_jobs(rec_path), None, rec_path, num_thread, [])
    reader = MXIndexedRecordIO(idx_path, rec_path, "r")
    try:
        keys, problem = _image_keys(reader)
        bad = [(0, reader.idx[0], problem)] if problem else []
        if problem:
            print(f"im2rec: bad record: key 0 at byte {reader.idx[0]}: {problem}", file=sys.stderr)
        return _check_jobs(_indexed_jobs(reader, keys), len(keys), rec_path, num_thread, bad)
    finally:
        reader.close()


def _check_jobs(jobs: Iterator, total: Optional[int], rec_path: str, num_thread: int,
                bad: list) -> tuple:
    """Run _decode_check over the jobs with a progress bar counting records; (count, bad)."""
    from tqdm import tqdm

    import dataset  # noqa: F401  (torch loads here, before the progress bar starts)

    count = 0
    bar = tqdm(ordered_map(_decode_check, jobs, num_thread), total=total, unit="rec",
               file=sys.stderr, desc=f"check {os.path.basename(rec_path)}", mininterval=0.5)
    try:
        for key, offset, error in bar:
            count += 1
            if error:
                bad.append((key, offset, error))
                bar.write(f"im2rec: bad record: key {key} at byte {offset}: {error}", file=sys.stderr)
    finally:
        bar.close()
    return count, bad


# ---------------------------------------------------------------- converters

def convert(source, out_dir: str, insightface_header: bool = False) -> PackResult:
    """Write <out_dir>/train.rec/.idx/.lst from a utils.converters source, copying payload bytes.

    Every payload is read by the training decoder first: a damaged one is listed and left out
    (a release is converted as far as it can be).
    """
    os.makedirs(out_dir, exist_ok=True)
    items = [ListItem(e.key, e.path, (float(e.label),)) for e in source.entries]
    result = write_record(os.path.join(out_dir, "train"), items,
                          lambda it: checked_payload(source.payload(it.index)),
                          insightface_header=insightface_header, skip_bad=True)
    write_list(os.path.join(out_dir, "train.lst"),
               (item._replace(index=key) for key, item in result.written))
    result.num_classes = source.num_classes
    return result


# ---------------------------------------------------------------- command line

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m im2rec", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Create an image list or make a RecordIO database from it (MXNet's im2rec), "
                    "check a .rec, or convert DCFace / Vec2Face releases to RecordIO.")
    parser.add_argument("prefix", help="prefix of the .lst/.rec files (a .lst file or folder also "
                        "works); with --check the .rec; with --from-* the source")
    parser.add_argument("root", nargs="?", help="folder holding the images; with --from-* the "
                        "output folder")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="create <prefix>.lst by walking root")
    mode.add_argument("--check", action="store_true",
                      help="read every image record of a .rec as training does and list the ones "
                           "it would refuse (framing, decode, size, label)")
    mode.add_argument("--from-dcface", action="store_true",
                      help="convert DCFace's release folder (file.rec, file.idx, list.txt)")
    mode.add_argument("--from-lmdb", action="store_true",
                      help="convert a Vec2Face HSFace .lmdb (msgpack [image, label] records)")
    cgroup = parser.add_argument_group("Options for creating image lists")
    cgroup.add_argument("--exts", nargs="+", default=DEFAULT_EXTS, help="image extensions")
    cgroup.add_argument("--chunks", type=int, default=1, help="number of chunks")
    cgroup.add_argument("--train-ratio", type=float, default=1.0, help="ratio of images for training")
    cgroup.add_argument("--test-ratio", type=float, default=0, help="ratio of images for testing")
    cgroup.add_argument("--recursive", action="store_true",
                        help="walk sub-folders, one label per folder (sorted order)")
    cgroup.add_argument("--shuffle", dest="shuffle", action="store_true", default=True,
                        help="shuffle the list with seed 100 (the default)")
    cgroup.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                        help="keep the sorted walk order")
    rgroup = parser.add_argument_group("Options for creating the database")
    rgroup.add_argument("--pass-through", action="store_true",
                        help="store the image files as they are (no decode/re-encode)")
    rgroup.add_argument("--resize", type=int, default=0, help="resize the shorter edge to this size")
    rgroup.add_argument("--center-crop", action="store_true", help="crop the centre square")
    rgroup.add_argument("--quality", type=int, default=95,
                        help="JPEG quality 1-100, or PNG compression 1-9")
    rgroup.add_argument("--num-thread", type=int, default=1,
                        help="threads encoding in parallel (record order is kept)")
    rgroup.add_argument("--color", type=int, default=1, choices=[-1, 0, 1],
                        help="1: colour, 0: grayscale, -1: as is (with alpha)")
    rgroup.add_argument("--encoding", type=str, default=".jpg", choices=[".jpg", ".png"],
                        help="encoding of the stored images")
    rgroup.add_argument("--skip-bad", action="store_true",
                        help="leave out images that are missing, truncated or undecodable (listed "
                             "by path); without it they stop packing and nothing is written")
    rgroup.add_argument("--pack-label", action="store_true",
                        help="store all label columns of the .lst as a label array")
    rgroup.add_argument("--insightface-header", action="store_true",
                        help="insightface layout: record 0 = header (num images + 1, end), images "
                             "at keys 1..N grouped by class, identity records, and a property file")
    args = parser.parse_args(argv)
    if args.num_thread < 1 or args.chunks < 1:
        parser.error("--num-thread and --chunks must be at least 1")
    if (args.from_dcface or args.from_lmdb or not args.check) and args.root is None:
        parser.error("the image root (or, with --from-*, the output folder) is required")
    return args


def _print(msg: str) -> None:
    print(f"im2rec: {msg}", flush=True)


def _summary(result: PackResult, total: int) -> None:
    _print(f"wrote {len(result.written)} records to {result.rec_path}")
    if result.skipped:
        _print(f"{len(result.skipped)} of {total} images could not be read and were skipped "
               "(listed above)")
    if result.odd_sizes:
        print(f"im2rec: warning: {_size_warning(result)}", file=sys.stderr)


def _size_warning(result: PackResult) -> str:
    """One line: how many stored images training will refuse for their size, and the fix."""
    from utils.image import FACE_SIZE

    odd = [(size, path) for size, path in result.sizes.items() if size != (FACE_SIZE, FACE_SIZE)]
    examples = ", ".join(f"{path} is {h}x{w}" for (h, w), path in odd[:3])
    more = f" and {len(odd) - 3} other sizes" if len(odd) > 3 else ""
    return (f"{result.odd_sizes} of {len(result.written)} images in {result.rec_path} are not "
            f"{FACE_SIZE}x{FACE_SIZE} ({examples}{more}): training accepts only {FACE_SIZE}x"
            f"{FACE_SIZE} aligned faces and stops at the first other one; re-pack with --resize "
            f"{FACE_SIZE} --center-crop (without --pass-through)")


def run_pack(args: argparse.Namespace) -> int:
    prefix = os.path.abspath(args.prefix)
    root = os.path.abspath(args.root)
    working_dir = prefix if os.path.isdir(prefix) else os.path.dirname(prefix)
    if not os.path.isdir(working_dir):
        raise Im2RecError(f"folder {working_dir} not found; pass <prefix> or <prefix>.lst of an "
                          "existing list")
    lists = sorted(os.path.join(working_dir, n) for n in os.listdir(working_dir)
                   if n.endswith(".lst") and os.path.join(working_dir, n).startswith(prefix)
                   and os.path.isfile(os.path.join(working_dir, n)))
    if not lists:
        raise Im2RecError(f"no .lst file with prefix {prefix}; create one first with python -m "
                          f"im2rec --list --recursive {args.prefix} {args.root}")
    _check_root(root)
    if args.pass_through and (args.resize or args.center_crop):
        print("im2rec: --pass-through stores files as they are: --resize/--center-crop are ignored",
              file=sys.stderr)
    options = dict(pass_through=args.pass_through, color=args.color, center_crop=args.center_crop,
                   resize=args.resize, quality=args.quality, encoding=args.encoding)
    for lst in lists:
        items = read_list(lst)
        _print(f"creating .rec file from {lst} in {working_dir}")
        result = write_record(os.path.splitext(lst)[0], items,
                              lambda it: load_image(root, it, **options), skip_bad=args.skip_bad,
                              insightface_header=args.insightface_header,
                              pack_label=args.pack_label, num_thread=args.num_thread)
        _summary(result, len(items))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from utils.converters import DCFaceRelease, HSFaceLMDB

    source = DCFaceRelease(args.prefix) if args.from_dcface else HSFaceLMDB(args.prefix)
    try:
        unlisted = getattr(source, "unlisted_keys", [])
        if unlisted:
            print(f"im2rec: {len(unlisted)} record(s) of file.idx have no line in list.txt (no "
                  "identity) and are left out", file=sys.stderr)
        result = convert(source, os.path.abspath(args.root), args.insightface_header)
    finally:
        source.close()
    _summary(result, len(source.entries))
    _print(f"{result.num_classes} identities, {len(result.written)} images "
           "(set num_classes / num_image in the config, or leave them 'auto')")
    if result.num_classes < 2:
        print("im2rec: warning: only one identity: training on this set learns nothing",
              file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    """The mode asked for; exit status 1 when --check found bad records."""
    if args.check:
        count, bad = check_record(args.prefix, args.num_thread)
        _print(f"checked {count} records: {len(bad)} bad"
               + (f" (keys {', '.join(str(k) for k, _, _ in bad[:20])}"
                  f"{', ...' if len(bad) > 20 else ''})" if bad else ""))
        return 1 if bad else 0
    if args.from_dcface or args.from_lmdb:
        return run_convert(args)
    if args.list:
        paths = make_list(os.path.abspath(args.prefix), os.path.abspath(args.root),
                          args.recursive, args.exts, args.shuffle, args.chunks,
                          args.train_ratio, args.test_ratio)
        _print("wrote " + ", ".join(paths))
        return 0
    return run_pack(args)


if __name__ == "__main__":
    sys.exit(main())
