"""MXNet RecordIO (.rec/.idx) without mxnet: a drop-in for ``mxnet.recordio``.

Replace ``from mxnet import recordio`` (or ``mx.recordio``) by ``from utils import recordio``.
Files written here are byte-identical to MXNet 1.x's writer; docs/formats.md describes the layout.
This module is the one reader of that layout: the record framing, the IRHeader, and the insightface
train.rec layout (header record 0, identity records: ``read_layout``, ``identity_ranges``).
Readers use ``os.pread`` on a descriptor opened lazily in each process, so a reader can be
pickled into DataLoader workers (fork or spawn) and read by key without sharing file offsets.
"""
from __future__ import annotations

import numbers
import os
import struct
from collections import namedtuple
from typing import Any, Callable, Optional

import numpy as np

from utils.errors import DataError

__all__ = ["MXRecordIO", "MXIndexedRecordIO", "IRHeader", "pack", "unpack", "pack_img",
           "unpack_img", "RecordIOError", "RecordIOKeyError",
           # not in mx.recordio: the insightface layout and label readers
           "first_label", "read_layout", "identity_ranges", "scan_labels", "write_index"]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_PART_HEAD = struct.Struct("<II")
_LEN_MASK = (1 << 29) - 1
_IR_FORMAT = "<IfQQ"
_IR_STRUCT = struct.Struct(_IR_FORMAT)
_IR_SIZE = _IR_STRUCT.size
_IR_LABEL0 = struct.Struct(_IR_FORMAT + "f")     # the IRHeader and the first float of a label array

_MAX_EXTENT = 1 << 20       # one-read fast path for records up to 1 MiB

# Bumped in every forked child: readers then open their own descriptor (no getpid() per read).
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_REBUILD = "rebuild the .rec and .idx together with python -m im2rec <prefix>.lst <image root>"


class RecordIOError(DataError):
    """A .rec/.idx file is missing, corrupt, or does not match its index."""


class RecordIOKeyError(RecordIOError, KeyError):
    """A key is not in the .idx (also a KeyError, as with mxnet)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MXRecordIO:
    """Sequential reader ('r') or writer ('w') of a RecordIO file, like mx.recordio.MXRecordIO."""

    def __init__(self, uri: str | os.PathLike, flag: str):
        self.uri = os.fspath(uri)
        self.flag = flag
        self.pid: Optional[int] = None
        self.is_open = False
        self.writable = False
        self._fd: Optional[int] = None
        self._fd_generation: Optional[int] = None
        self._size = 0
        self._pos = 0
        self._file = None
        self.open()

    def open(self) -> None:
        """Open the file: 'w' truncates it, 'r' checks it exists (the descriptor opens lazily)."""
        if self.is_open:
            self.close()
        if self.flag == "w":
            self._file = _create(self.uri)
            self.writable = True
        elif self.flag == "r":
            if not os.path.isfile(self.uri):
                raise RecordIOError(f"{self.uri}: record file not found (or not a file); "
                                    f"check the path or {_REBUILD}")
            self.writable = False
        else:
            raise ValueError(f"invalid flag {self.flag!r} for {self.uri}: use 'r' or 'w'")
        self._pos = 0
        self.pid = os.getpid()
        self.is_open = True

    def close(self) -> None:
        """Close the file (flushes a writer)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._drop_fd()
        self.is_open = False
        self.pid = None

    def reset(self) -> None:
        """Go back to the first record; a writer truncates the file to empty (as mxnet)."""
        self.close()
        self.open()

    def tell(self) -> int:
        """Byte offset where the next record will be written (writer) or read (reader)."""
        return self._pos

    def write(self, buf: bytes) -> None:
        """Append one record, cut into parts wherever the magic word sits at a 4-aligned offset."""
        self._check_writer()
        data = buf if isinstance(buf, bytes) else bytes(memoryview(buf))
        self._pos += _write_all(self._file, b"".join(_encode_record(data, self.uri)))

    def read(self) -> Optional[bytes]:
        """Return the next record in file order, or None at the end of the file."""
        self._check_reader()
        buf, self._pos = self._read_record(self._pos)
        return buf

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        if self.writable and self.is_open:
            raise TypeError(f"cannot pickle {self.uri} while it is open for writing")
        state = dict(self.__dict__)
        state.update(_fd=None, _fd_generation=None, _file=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _check_writer(self) -> None:
        if not (self.is_open and self.writable):
            raise RecordIOError(f"{self.uri} is not open for writing (flag={self.flag!r}, "
                                f"open={self.is_open})")
        if self.pid != os.getpid():
            raise RecordIOError(f"{self.uri}: a writer cannot be used from another process; "
                                f"create it in the process that writes")

    def _check_reader(self) -> None:
        if not self.is_open or self.writable:
            raise RecordIOError(f"{self.uri} is not open for reading (flag={self.flag!r}, "
                                f"open={self.is_open}); call open() or use flag 'r'")

    def _drop_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None
        self._fd_generation = None

    def _ensure_fd(self) -> int:
        """The descriptor of this process, opened on first use (after fork/spawn: a new one)."""
        if self._fd is None or self._fd_generation != _fork_generation:
            self._drop_fd()
            try:
                self._fd = os.open(self.uri, os.O_RDONLY)
                self._size = os.fstat(self._fd).st_size
            except OSError as err:
                self._drop_fd()
                raise RecordIOError(f"cannot open {self.uri}: {err.strerror}") from None
            self._fd_generation = _fork_generation
        return self._fd

    def _where(self, offset: int, key: Any = None) -> str:
        return f"record at byte {offset}" if key is None else f"key {key!r} at byte {offset}"

    def _fail(self, start: int, key: Any, problem: str, fix: str) -> RecordIOError:
        return RecordIOError(f"{self.uri}: {self._where(start, key)}: {problem}; {fix}")

    def _pread(self, fd: int, n: int, pos: int, start: int, key: Any) -> bytes:
        try:
            return os.pread(fd, n, pos)
        except OSError as err:
            raise self._fail(start, key, f"read error at byte {pos}: {err.strerror}",
                             "check the disk or copy the file again") from None

    def _fits(self, fd: int, end: int) -> bool:
        """Whether the file holds `end` bytes (re-stat once, in case it grew since opening)."""
        if end <= self._size:
            return True
        self._size = os.fstat(fd).st_size
        return end <= self._size

    def _read_record(self, start: int, key: Any = None) -> tuple[Optional[bytes], int]:
        """Read the record starting at byte `start`: (bytes, next offset), or (None, start) at EOF."""
        fd = self._ensure_fd()
        if not self._fits(fd, start + 1):
            return None, start
        parts: list[bytes] = []
        pos = start
        truncated = "the file is cut short (interrupted copy or write); copy it again or " + _REBUILD
        while True:
            if not self._fits(fd, pos + 8):
                raise self._fail(start, key, f"the file ends at byte {self._size} inside the part "
                                 f"header at byte {pos}", truncated)
            magic, word = _PART_HEAD.unpack(self._pread(fd, 8, pos, start, key))
            if magic != MAGIC:
                raise self._fail(start, key, f"wrong magic word 0x{magic:08x} at byte {pos} "
                                 f"(expected 0x{MAGIC:08x})",
                                 "the file is corrupt or the .idx does not belong to it; " + _REBUILD)
            cflag, length = word >> 29, word & _LEN_MASK
            if (cflag in (0, 1)) != (not parts):
                problem = (f"part at byte {pos} has cflag {cflag}, "
                           + ("a continuation part where a record should start" if not parts
                              else "but the record started at the previous part is not finished"))
                raise self._fail(start, key, problem,
                                 "the file is corrupt or the .idx does not point at record starts; "
                                 + _REBUILD)
            end = pos + 8 + ((length + 3) & ~3)
            if not self._fits(fd, end):
                raise self._fail(start, key, f"part at byte {pos} needs {end - pos} bytes but the "
                                 f"file ends at byte {self._size}", truncated)
            data = self._pread(fd, length, pos + 8, start, key) if length else b""
            if len(data) != length:
                raise self._fail(start, key, f"short read of the part at byte {pos}", truncated)
            parts.append(data)
            pos = end
            if cflag in (0, 3):
                break
        return (parts[0] if len(parts) == 1 else _MAGIC_BYTES.join(parts)), pos


class MXIndexedRecordIO(MXRecordIO):
    """RecordIO with a .idx (key<TAB>offset) for random access, like mx.recordio.MXIndexedRecordIO."""

    def __init__(self, idx_path: str | os.PathLike, uri: str | os.PathLike, flag: str,
                 key_type: Callable[[str], Any] = int):
        self.idx_path = os.fspath(idx_path)
        self.idx: dict = {}
        self.keys: list = []
        self.key_type = key_type
        self.fidx = None
        self._offset_keys: Optional[dict] = None
        self._extents: Optional[dict] = None
        super().__init__(uri, flag)

    def open(self) -> None:
        """Open the .rec and the .idx: for reading, only the .idx is read (parsed into keys/idx)."""
        super().open()
        self.idx = {}
        self.keys = []
        self._offset_keys = None
        self._extents = None
        try:
            if self.writable:
                self.fidx = _create(self.idx_path)
            else:
                self._load_index()
        except RecordIOError:
            self.close()
            raise

    def close(self) -> None:
        """Close the .rec and the .idx."""
        if self.fidx is not None:
            self.fidx.close()
            self.fidx = None
        super().close()

    def seek(self, idx: Any) -> None:
        """Set the read position to the record of key `idx`."""
        self._check_reader()
        self._pos = self._offset(idx)

    def read_idx(self, idx: Any) -> bytes:
        """Return the record of key `idx`."""
        self._check_reader()
        offset = self._offset(idx)
        buf, pos = self._read_in_one(offset, idx)
        if buf is None:
            buf, pos = self._read_record(offset, idx)
            if buf is None:
                raise self._fail(offset, idx, f"offset is past the end of the file ({self._size} "
                                 f"bytes)", f"{self.idx_path} does not match this .rec; " + _REBUILD)
            self._check_end(offset, idx, pos)
        self._pos = pos
        return buf

    def write_idx(self, idx: Any, buf: bytes) -> None:
        """Append a record and its index line `key<TAB>offset`."""
        self._check_writer()
        key = self.key_type(idx)
        pos = self.tell()
        self.write(buf)
        _write_all(self.fidx, _index_line(key, pos).encode("utf-8"))
        self.idx[key] = pos
        self.keys.append(key)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update(fidx=None, _offset_keys=None, _extents=None)
        return state

    def _read_in_one(self, offset: int, key: Any = None) -> tuple[Optional[bytes], int]:
        """A single-part record in one read, its extent known from the index; (None, 0) otherwise.

        The part header's length must end the record where another record starts (the next
        indexed offset, or a magic word) or at the end of the file: a damaged length is an
        error, never a silently cut or extended payload. Anything else unusual (multi-part,
        damaged magic, cut short) returns (None, 0) and is left to ``_read_record``, which
        reads part by part and names the problem.
        """
        fd = self._ensure_fd()
        if self._extents is None:
            self._extents = self._record_extents()
        extent = self._extents.get(offset)
        if extent is None or not 8 <= extent <= _MAX_EXTENT:
            return None, 0
        try:
            data = os.pread(fd, extent, offset)
        except OSError:
            return None, 0
        if len(data) < extent:
            return None, 0
        magic, word = _PART_HEAD.unpack_from(data)
        if magic != MAGIC or word >> 29 != 0:
            return None, 0
        length = word & _LEN_MASK
        size = 8 + ((length + 3) & ~3)
        if size == extent or data[size:size + 4] == _MAGIC_BYTES:
            return data[8:8 + length], offset + size
        if size > extent and offset + extent >= self._size:
            return None, 0                  # the last record, cut short: _read_record says so
        if size > extent:
            problem = f"the next indexed record starts at byte {offset + extent}"
        else:
            problem = f"byte {offset + size} holds {data[size:size + 4].hex(' ')}, not a magic word"
        raise self._bad_length(offset, key, offset + size, problem)

    def _check_end(self, offset: int, key: Any, end: int) -> None:
        """A record read part by part must end at the next indexed record, a magic word or EOF."""
        extent = self._extents.get(offset) if self._extents is not None else None
        following = offset + extent if extent and extent > 0 else None
        if end == following or not self._fits(self._ensure_fd(), end + 1):
            return
        if following is not None and end > following:
            raise self._bad_length(offset, key, end, f"the next indexed record starts at byte "
                                   f"{following}")
        found = self._pread(self._ensure_fd(), 4, end, offset, key)
        if found != _MAGIC_BYTES:
            raise self._bad_length(offset, key, end, f"byte {end} holds {found.hex(' ')}, not a "
                                   f"magic word")

    def _bad_length(self, start: int, key: Any, end: int, problem: str) -> RecordIOError:
        """The error for a record whose length field does not end it where the next one starts."""
        return self._fail(start, key, f"the length in its part header ends the record at byte "
                          f"{end}, but {problem} (a damaged length field)",
                          "copy the file again or " + _REBUILD)

    def _record_extents(self) -> dict:
        """{offset: bytes up to the next indexed record or the end of the file} (<= 0: past EOF)."""
        offsets = sorted(set(self.idx.values()))
        ends = [min(end, self._size) for end in offsets[1:]] + [self._size]
        return {start: end - start for start, end in zip(offsets, ends)}

    def _offset(self, idx: Any) -> int:
        try:
            return self.idx[idx]
        except KeyError:
            raise RecordIOKeyError(f"{self.idx_path}: key {idx!r} is not in the index "
                                   f"({len(self.idx)} keys); use a key from .keys") from None

    def _where(self, offset: int, key: Any = None) -> str:
        if key is None:
            if self._offset_keys is None:
                self._offset_keys = {off: k for k, off in self.idx.items()}
            key = self._offset_keys.get(offset)
        return super()._where(offset, key)

    def _load_index(self) -> None:
        try:
            with open(self.idx_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise RecordIOError(f"{self.idx_path}: index file not found (needed to read "
                                f"{self.uri} by key); {_REBUILD}") from None
        except OSError as err:
            raise RecordIOError(f"cannot read index {self.idx_path}: {err.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RecordIOError(f"{self.idx_path}: not a text index (byte {err.start} is not "
                                f"UTF-8); {_REBUILD}") from None
        for lineno, line in enumerate(text.split("\n"), 1):
            line = line.strip()
            if line:
                key, offset = self._parse_line(line, lineno)
                self.idx[key] = offset
                self.keys.append(key)

    def _parse_line(self, line: str, lineno: int) -> tuple[Any, int]:
        fields = line.split("\t")
        try:
            key, offset = self.key_type(fields[0]), int(fields[1])
        except (IndexError, ValueError, TypeError, OverflowError):
            offset = -1
        if offset < 0:
            raise RecordIOError(f"{self.idx_path} line {lineno}: expected 'key<TAB>offset', got "
                                f"{line[:60]!r}; {_REBUILD}")
        return key, offset


def _index_line(key: Any, offset: int) -> str:
    return f"{key}\t{offset}\n"


def write_index(path: str | os.PathLike, rec: MXIndexedRecordIO, keys: list) -> None:
    """A .idx holding only ``keys`` of ``rec`` (same offsets), e.g. the image keys for a reader that
    takes every line for an image (DALI)."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(_index_line(k, rec._offset(k)) for k in keys)


def _create(path: str):
    """Unbuffered: a forked child that inherits a writer can never flush duplicate data."""
    try:
        return open(path, "wb", buffering=0)
    except OSError as err:
        raise RecordIOError(f"cannot create {path}: {err.strerror}") from None


def _write_all(f, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[f.write(view):]
    return len(data)


def _encode_record(data: bytes, uri: str) -> list:
    """The on-disk parts of one record, cut exactly where MXNet's writer cuts."""
    n = len(data)
    if n > _LEN_MASK:
        raise RecordIOError(f"{uri}: a record of {n} bytes is too large (RecordIO stores < 512 MiB)")
    limit = n & ~3
    chunks = []
    start = 0
    hit = data.find(_MAGIC_BYTES)
    while 0 <= hit and hit + 4 <= limit:
        if hit % 4:
            hit = data.find(_MAGIC_BYTES, hit + 1)
            continue
        chunks += [_PART_HEAD.pack(MAGIC, (2 if start else 1) << 29 | (hit - start)), data[start:hit]]
        start = hit + 4
        hit = data.find(_MAGIC_BYTES, start)
    chunks += [_PART_HEAD.pack(MAGIC, (3 if start else 0) << 29 | (n - start)), data[start:],
               b"\0" * (-n % 4)]
    return chunks


IRHeader = namedtuple("HEADER", ["flag", "label", "id", "id2"])
"""Record header: flag (number of label floats, 0 = scalar label), label, id, id2."""


def pack(header: IRHeader, s: bytes) -> bytes:
    """Prepend the 24-byte IRHeader (and a float32 label array when the label is not a number)."""
    header = IRHeader(*header)
    if isinstance(header.label, numbers.Number):
        header = header._replace(flag=0)
    else:
        label = np.asarray(header.label, dtype=np.float32)
        header = header._replace(flag=label.size, label=0)
        return _IR_STRUCT.pack(*header) + label.tobytes() + bytes(s)
    return _IR_STRUCT.pack(*header) + bytes(s)


def unpack(s: bytes) -> tuple[IRHeader, bytes]:
    """Split a record into (IRHeader, payload); label is a float32 array when flag > 0."""
    if len(s) < _IR_SIZE:
        raise RecordIOError(f"record of {len(s)} bytes is shorter than the {_IR_SIZE}-byte IRHeader; "
                            "it is not an image record (wrong file or corrupt .rec)")
    header = IRHeader(*_IR_STRUCT.unpack_from(s))
    if header.flag > 0:
        end = _IR_SIZE + 4 * header.flag
        if end > len(s):
            raise RecordIOError(f"record of {len(s)} bytes declares {header.flag} label floats, "
                                "more than it holds (corrupt .rec)")
        header = header._replace(label=np.frombuffer(s, np.float32, header.flag, _IR_SIZE))
        return header, s[end:]
    return header, s[_IR_SIZE:]


def unpack_img(s: bytes, iscolor: int = -1) -> tuple[IRHeader, np.ndarray]:
    """Unpack a record and decode its image with cv2.imdecode (BGR, as mxnet)."""
    import cv2

    header, payload = unpack(s)
    img = None
    if len(payload):
        try:
            img = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), iscolor)
        except cv2.error:
            img = None
    if img is None:
        raise RecordIOError(f"record id {header.id}: payload of {len(payload)} bytes is not a "
                            "decodable image (corrupt .rec?); check it with python -m im2rec --check")
    return header, img


def pack_img(header: IRHeader, img: np.ndarray, quality: int = 95, img_fmt: str = ".jpg") -> bytes:
    """Encode a BGR image with cv2.imencode (JPEG quality or PNG compression) and pack it."""
    import cv2

    params: list = []
    if img_fmt.upper() in (".JPG", ".JPEG"):
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif img_fmt.upper() == ".PNG":
        params = [cv2.IMWRITE_PNG_COMPRESSION, quality]
    ok, buf = cv2.imencode(img_fmt, img, params)
    if not ok:
        raise ValueError(f"cv2.imencode could not encode an image of shape {np.shape(img)} as {img_fmt}")
    return pack(header, buf.tobytes())


# ---------------------------------------------------------------- labels and the insightface layout

def first_label(header: IRHeader) -> float:
    """A record's class: its label, or label[0] when the header holds a label array."""
    return header.label if header.flag == 0 else header.label[0]


def read_layout(rec: MXIndexedRecordIO) -> tuple[list, Optional[IRHeader]]:
    """Image keys of an indexed .rec and its insightface header (None when there is none).

    insightface layout: record 0 has flag > 0 and an empty payload; its label holds
    [first identity key, end of the identity keys], so the images are keys 1 .. label[0]-1.
    Otherwise every key of the .idx is an image, in .idx order (a record 0 with a label array
    *and* an image, as im2rec --pack-label writes, is an ordinary image).
    """
    if 0 not in rec.idx:
        return list(rec.keys), None
    header, payload = unpack(rec.read_idx(0))
    if header.flag == 0 or len(payload):
        return list(rec.keys), None
    end = int(header.label[0])
    if end < 2 or 1 not in rec.idx or end - 1 not in rec.idx:
        raise RecordIOError(f"{rec.uri}: header record 0 says images are keys 1..{end - 1}, which "
                            f"{rec.idx_path} does not hold: the .idx does not belong to this .rec or "
                            f"the files are damaged (copy both again)")
    return list(range(1, end)), header


def identity_ranges(rec: MXIndexedRecordIO, header: Optional[IRHeader]) -> list[tuple[int, int]]:
    """[start, end) image keys of each identity record the insightface header points at, in order.

    Stops at the first identity key missing from the .idx or not holding a (start, end) label;
    [] without an insightface header.
    """
    if header is None or header.flag < 2:
        return []
    ranges = []
    for key in range(int(header.label[0]), int(header.label[1])):
        if key not in rec.idx:
            break
        label = np.atleast_1d(unpack(rec.read_idx(key))[0].label)
        if label.size < 2:
            break
        ranges.append((int(label[0]), int(label[1])))
    return ranges


def scan_labels(rec: MXIndexedRecordIO, keys: list) -> list[int]:
    """first_label of each record of ``keys`` (same order), reading only its header.

    36 bytes per record, in file order (never the image); a header cut into parts, a short record
    or damage falls back to the full reader, which names the problem.
    """
    rec._check_reader()
    fd = rec._ensure_fd()
    labels: list = [0] * len(keys)
    for offset, position in sorted((rec._offset(k), i) for i, k in enumerate(keys)):
        label = _label_from_head(os.pread(fd, 8 + _IR_LABEL0.size, offset))
        if label is None:
            label = first_label(unpack(rec.read_idx(keys[position]))[0])
        labels[position] = int(label)
    return labels


def _label_from_head(buf: bytes) -> Optional[float]:
    """first_label from a record's first 36 bytes, or None when they do not hold the whole header."""
    if len(buf) < 8 + _IR_LABEL0.size:
        return None
    magic, word = _PART_HEAD.unpack_from(buf)
    flag, label, _, _, first = _IR_LABEL0.unpack_from(buf, 8)
    if magic != MAGIC or word >> 29 not in (0, 1) or (word & _LEN_MASK) < _IR_LABEL0.size - (0 if flag else 4):
        return None
    return label if flag == 0 else first
