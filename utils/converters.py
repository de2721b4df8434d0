"""Readers for the formats synthetic face data sets ship in, for `python -m im2rec --from-*`.

- DCFace's released record folder (`file.rec`, `file.idx`, `list.txt`): every record header
  has label 0.0; the identity is the first path component in `list.txt`, matched by key.
- Vec2Face's HSFace LMDB (one file): msgpack `[image_bytes, label]` under keys `b"0".."N-1"`,
  plus `__keys__`, `__len__`, `__classnum__`.
Both expose `entries` (key, label, path) in source order, `num_classes`, and `payload(key)`:
the encoded image bytes exactly as stored (never re-encoded).
"""
from __future__ import annotations

import os
from typing import NamedTuple

from utils.errors import DataError
from utils.recordio import MXIndexedRecordIO, RecordIOError, unpack


class ConverterError(DataError):
    """A source data set is missing a file, or its files disagree."""


class Entry(NamedTuple):
    key: int      # key in the source (DCFace record key, LMDB index)
    label: int    # class index 0..num_classes-1
    path: str     # relative path written to the .lst


def _examples(keys: list, n: int = 5) -> str:
    shown = ", ".join(str(k) for k in keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def _class_order(names: set) -> list:
    """Identity names in class order: numerically when all are decimal, else as text."""
    if all(name.isdigit() for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


class DCFaceRelease:
    """DCFace's released record folder; identities come from list.txt only."""

    def __init__(self, folder: str | os.PathLike):
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise ConverterError(f"{folder}: DCFace record folder not found; pass the folder that "
                                 "holds file.rec, file.idx and list.txt")
        nested = os.path.join(folder, "record")
        if not os.path.exists(os.path.join(folder, "file.rec")) and os.path.isdir(nested):
            folder = nested
        self.folder = folder
        self.list_path = os.path.join(folder, "list.txt")
        for name in ("file.rec", "file.idx"):
            if not os.path.isfile(os.path.join(folder, name)):
                raise ConverterError(f"{folder}: no {name}; a DCFace release folder holds file.rec, "
                                     "file.idx and list.txt (extract the whole record folder)")
        if not os.path.isfile(self.list_path):
            raise ConverterError(f"{folder}: no list.txt; DCFace keeps each record's identity only "
                                 "in list.txt (key<TAB><identity>/<name>.jpg) and every record "
                                 "header says label 0, so labels cannot be recovered without it: "
                                 "extract list.txt from the release zip into this folder")
        self.record = MXIndexedRecordIO(os.path.join(folder, "file.idx"),
                                        os.path.join(folder, "file.rec"), "r")
        keys, paths = self._read_list()
        missing = [k for k in keys if k not in self.record.idx]
        if missing:
            raise ConverterError(f"{self.list_path}: {len(missing)} key(s) are not in file.idx "
                                 f"(e.g. {_examples(missing)}); list.txt and file.rec come from "
                                 "different releases or an incomplete extraction: re-extract the "
                                 "record folder")
        listed = set(keys)
        self.unlisted_keys = [k for k in self.record.keys if k not in listed]
        identities = [path.split("/")[0] for path in paths]
        self.class_names = _class_order(set(identities))
        label_of = {name: i for i, name in enumerate(self.class_names)}
        self.entries = [Entry(k, label_of[name], p) for k, name, p in zip(keys, identities, paths)]
        self.num_classes = len(self.class_names)

    def _read_list(self) -> tuple[list, list]:
        keys: list = []
        paths: list = []
        seen: dict = {}
        fix = "each line must be '<key><TAB><identity>/<name>.jpg' as in DCFace's release"
        with open(self.list_path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                try:
                    key = int(fields[0])
                except ValueError:
                    key = None
                if len(fields) != 2 or key is None or "/" not in fields[1].strip("/"):
                    raise ConverterError(f"{self.list_path} line {lineno}: cannot read {line[:80]!r}; "
                                         f"{fix}")
                if key in seen:
                    raise ConverterError(f"{self.list_path} line {lineno}: key {key} already on line "
                                         f"{seen[key]}; each record key must appear once")
                seen[key] = lineno
                keys.append(key)
                paths.append(fields[1].strip("/"))
        if not keys:
            raise ConverterError(f"{self.list_path} is empty; {fix}")
        return keys, paths

    def payload(self, key: int) -> bytes:
        """The JPEG bytes of record `key` (its header, always label 0, is dropped)."""
        try:
            return bytes(unpack(self.record.read_idx(key))[1])
        except RecordIOError as err:
            raise ConverterError(str(err)) from None

    def close(self) -> None:
        self.record.close()


class HSFaceLMDB:
    """Vec2Face's HSFace LMDB: msgpack [image_bytes, label] per index, read via __keys__."""

    def __init__(self, path: str | os.PathLike):
        import lmdb

        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise ConverterError(f"{self.path}: LMDB not found; pass the .lmdb file (or the folder "
                                 "holding data.mdb) of an HSFace release")
        subdir = os.path.isdir(self.path)
        data_file = os.path.join(self.path, "data.mdb") if subdir else self.path
        try:
            self.env = lmdb.open(self.path, subdir=subdir, readonly=True, lock=False,
                                 readahead=False, meminit=False)
        except lmdb.Error as err:
            raise ConverterError(f"{self.path}: not a readable LMDB ({err}); the file is corrupt "
                                 "or incomplete: download it again") from None
        self._check_size(data_file)
        self._txn = self.env.begin(buffers=False)
        count = self._meta("__len__")
        keys = self._meta("__keys__")
        self.num_classes = self._meta("__classnum__")
        if not isinstance(count, int) or not isinstance(keys, (list, tuple)) or len(keys) != count:
            raise ConverterError(f"{self.path}: __len__ ({count!r}) does not match the "
                                 f"{len(keys) if isinstance(keys, (list, tuple)) else '?'} entries "
                                 "of __keys__; the LMDB is corrupt: download it again")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ConverterError(f"{self.path}: __classnum__ is {self.num_classes!r}, not a positive "
                                 "integer; the LMDB is corrupt: download it again")
        self.keys = [k if isinstance(k, bytes) else str(k).encode() for k in keys]
        self.entries = [self._entry(i) for i in range(count)]

    def _check_size(self, data_file: str) -> None:
        """A truncated LMDB would crash the process on access (SIGBUS): refuse it up front."""
        need = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        have = os.path.getsize(data_file)
        if have < need:
            self.env.close()
            raise ConverterError(f"{data_file}: LMDB is truncated ({have} bytes, its pages need "
                                 f"{need}); download it again")

    def _get(self, key: bytes):
        import lmdb
        import msgpack

        try:
            raw = self._txn.get(key)
        except lmdb.Error as err:
            raise ConverterError(f"{self.path}: key {key.decode(errors='replace')!r}: {err}; "
                                 "the LMDB is corrupt: download it again") from None
        if raw is None:
            return None
        try:
            return msgpack.unpackb(raw, raw=True)
        except Exception as err:
            raise ConverterError(f"{self.path}: key {key.decode(errors='replace')!r} does not hold "
                                 f"msgpack data ({type(err).__name__}); the LMDB is corrupt or not "
                                 "an HSFace set") from None

    def _meta(self, name: str):
        value = self._get(name.encode())
        if value is None:
            raise ConverterError(f"{self.path}: key {name} is missing; an HSFace LMDB holds "
                                 "__keys__, __len__, __classnum__ and msgpack [image, label] records")
        return value

    def _record(self, index: int) -> tuple[bytes, int]:
        key = self.keys[index]
        value = self._get(key)
        name = key.decode(errors="replace")
        if value is None:
            raise ConverterError(f"{self.path}: record key {name!r} (index {index}) is listed in "
                                 "__keys__ but missing; the LMDB is incomplete: download it again")
        if isinstance(value, (list, tuple)) and len(value) == 3:
            raise ConverterError(f"{self.path}: key {name!r} holds [image, feature, label]: this is "
                                 "Vec2Face's generator-training LMDB, not an HSFace training set")
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and isinstance(value[0], bytes) and isinstance(value[1], int)):
            raise ConverterError(f"{self.path}: key {name!r} does not hold [image_bytes, int label]; "
                                 "not an HSFace LMDB")
        return value[0], value[1]

    def _entry(self, index: int) -> Entry:
        image, label = self._record(index)
        if not 0 <= label < self.num_classes:
            raise ConverterError(f"{self.path}: key {self.keys[index].decode(errors='replace')!r} has "
                                 f"label {label}, outside 0..{self.num_classes - 1} (__classnum__ = "
                                 f"{self.num_classes}); the LMDB is inconsistent")
        ext = ".png" if image.startswith(b"\x89PNG") else ".jpg"
        return Entry(index, label, f"{label}/{index}{ext}")

    def payload(self, key: int) -> bytes:
        """The image file bytes stored at index `key`."""
        return self._record(key)[0]

    def close(self) -> None:
        self._txn.abort()
        self.env.close()
