"""utils/recordio.py against the files the real MXNet 1.9.1 wrote (shared/fixtures)."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.errors import DataError
from utils.recordio import (IRHeader, MXIndexedRecordIO, MXRecordIO, RecordIOError,
                            RecordIOKeyError, first_label, identity_ranges, pack, pack_img, read_layout,
                            scan_labels, unpack, unpack_img, write_index)

MAGIC = b"\x0a\x23\xd7\xce"
REC_FIXTURES = {  # folder: (idx, rec)
    "mx_im2rec": ("train.idx", "train.rec"),
    "insightface_style": ("train.idx", "train.rec"),
    "mx_multipart": ("train.idx", "train.rec"),
    "split_record": ("split.idx", "split.rec"),
}
MANIFEST_SECTIONS = ["mx_im2rec", "insightface_style", "mx_multipart"]


def _paths(fixtures_dir: Path, name: str) -> tuple[Path, Path]:
    idx, rec = REC_FIXTURES[name]
    return fixtures_dir / name / idx, fixtures_dir / name / rec


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_tables(fixtures_dir: Path) -> dict[str, list[dict]]:
    """Record tables of MANIFEST.md, by section folder: one dict per row, keyed by column name."""
    tables: dict[str, list[dict]] = {}
    section, columns = None, None
    for line in (fixtures_dir / "MANIFEST.md").read_text().splitlines():
        heading = re.match(r"^## (\S+)/", line)
        if heading:
            section, columns = heading.group(1), None
        elif line.startswith("| key |"):
            columns = [c.strip() for c in line.strip("|").split("|")]
        elif columns and re.match(r"^\| \d+ \|", line):
            cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
            tables.setdefault(section, []).append(dict(zip(columns, cells)))
    return tables


def _manifest_label(text: str):
    return [float(v) for v in text.strip("[]").split(",")] if text.startswith("[") else float(text)


def _scan_parts(path: Path) -> list[tuple[int, int, int]]:
    """Raw (offset, cflag, length) of every part: an independent reader of the on-disk layout."""
    data, parts, pos = path.read_bytes(), [], 0
    while pos < len(data):
        magic, word = struct.unpack_from("<II", data, pos)
        assert magic == 0xCED7230A
        parts.append((pos, word >> 29, word & ((1 << 29) - 1)))
        pos += 8 + ((word & ((1 << 29) - 1)) + 3) // 4 * 4
    return parts


def _read_all(rec: MXIndexedRecordIO) -> list[bytes]:
    return [rec.read_idx(k) for k in rec.keys]


@pytest.fixture(scope="module")
def manifest(fixtures_dir) -> dict[str, list[dict]]:
    tables = _manifest_tables(fixtures_dir)
    assert set(MANIFEST_SECTIONS) <= set(tables), "MANIFEST.md tables not found"
    return tables


@pytest.mark.parametrize("name", MANIFEST_SECTIONS)
def test_fixture_records_match_manifest(fixtures_dir, manifest, name):
    rows = manifest[name]
    with MXIndexedRecordIO(*_paths(fixtures_dir, name), "r") as rec:
        assert rec.keys == [int(r["key"]) for r in rows]
        assert [rec.idx[k] for k in rec.keys] == [int(r["offset"]) for r in rows]
        for row in rows:
            header, payload = unpack(rec.read_idx(int(row["key"])))
            assert header.flag == int(row["flag"])
            assert header.id == int(row["id"]) and header.id2 == 0
            expected = _manifest_label(row["label"])
            if isinstance(expected, list):
                assert isinstance(header.label, np.ndarray) and header.label.dtype == np.float32
                assert header.label.tolist() == expected
            else:
                assert header.label == expected
            assert len(payload) == int(row["payload bytes"])
            assert _sha(payload) == row["payload sha256"]


@pytest.mark.parametrize("name", MANIFEST_SECTIONS)
def test_rewrite_gives_identical_parts_and_bytes(fixtures_dir, manifest, tmp_path, name):
    idx_path, rec_path = _paths(fixtures_dir, name)
    with MXIndexedRecordIO(idx_path, rec_path, "r") as rec:
        records = [(k, rec.read_idx(k)) for k in rec.keys]
    with MXIndexedRecordIO(tmp_path / "out.idx", tmp_path / "out.rec", "w") as out:
        for key, buf in records:
            out.write_idx(key, buf)
    assert (tmp_path / "out.rec").read_bytes() == rec_path.read_bytes()
    assert (tmp_path / "out.idx").read_bytes() == idx_path.read_bytes()
    cflags: dict[int, list[str]] = {}
    starts = {int(r["offset"]): int(r["key"]) for r in manifest[name]}
    key = None
    for offset, cflag, _ in _scan_parts(tmp_path / "out.rec"):
        key = starts.get(offset, key)
        cflags.setdefault(key, []).append(str(cflag))
    assert {k: ",".join(v) for k, v in cflags.items()} == \
        {int(r["key"]): r["parts (cflag)"] for r in manifest[name]}


def test_split_record_expected(fixtures_dir, tmp_path):
    expected = json.loads((fixtures_dir / "split_record" / "expected.json").read_text())
    idx_path, rec_path = _paths(fixtures_dir, "split_record")
    with MXIndexedRecordIO(idx_path, rec_path, "r") as rec:
        assert rec.keys == [r["key"] for r in expected["records"]]
        records = _read_all(rec)
    for want, buf in zip(expected["records"], records):
        header, payload = unpack(buf)
        assert header.label == want["label"]
        assert len(payload) == want["payload_len"] and payload.hex() == want["payload_hex"]
        assert _sha(payload) == want["payload_sha256"]
    with MXIndexedRecordIO(tmp_path / "s.idx", tmp_path / "s.rec", "w") as out:
        for want, buf in zip(expected["records"], records):
            out.write_idx(want["key"], buf)
    assert _scan_parts(tmp_path / "s.rec") == \
        [(p["offset"], p["cflag"], p["length"]) for p in expected["parts"]]
    assert (tmp_path / "s.rec").read_bytes() == rec_path.read_bytes()
    assert (tmp_path / "s.idx").read_bytes() == idx_path.read_bytes()


def test_sequential_writer_and_reader_in_file_order(fixtures_dir, tmp_path):
    idx_path, rec_path = _paths(fixtures_dir, "mx_multipart")
    with MXIndexedRecordIO(idx_path, rec_path, "r") as rec:
        by_key = _read_all(rec)
        seq = iter(lambda: rec.read(), None)
        rec.reset()
        assert list(seq) == by_key
        assert rec.read() is None and rec.read() is None
        rec.read_idx(rec.keys[2])
        assert rec.read() == by_key[3]
        rec.seek(rec.keys[1])
        assert rec.read() == by_key[1]
    with MXRecordIO(tmp_path / "seq.rec", "w") as out:
        for buf in by_key:
            out.write(buf)
        assert out.tell() == rec_path.stat().st_size
    assert (tmp_path / "seq.rec").read_bytes() == rec_path.read_bytes()
    reader = MXRecordIO(tmp_path / "seq.rec", "r")
    assert [reader.read() for _ in by_key] == by_key and reader.read() is None
    reader.close()


def test_unpack_img_matches_mxnet_decode(fixtures_dir, manifest):
    rows = {int(r["key"]): r for r in manifest["mx_im2rec"]}
    with MXIndexedRecordIO(*_paths(fixtures_dir, "mx_im2rec"), "r") as rec:
        for key in rec.keys[:6]:
            header, img = unpack_img(rec.read_idx(key))
            assert header.id == key and img.shape == (112, 112, 3)
            rgb_means = img[..., ::-1].reshape(-1, 3).mean(0)
            want = [float(v) for v in rows[key]["mean R,G,B (mx.image.imdecode)"].split(",")]
            np.testing.assert_allclose(rgb_means, want, atol=0.006)


def test_pack_unpack_labels():
    header, payload = unpack(pack(IRHeader(5, 3.0, 7, 1), b"abc"))
    assert header == IRHeader(0, 3.0, 7, 1) and payload == b"abc"
    header, payload = unpack(pack(IRHeader(0, [1.5, -2.0, 3.0], 9, 0), b"xyz"))
    assert header.flag == 3 and header.label.dtype == np.float32
    assert header.label.tolist() == [1.5, -2.0, 3.0] and payload == b"xyz"
    packed = pack(IRHeader(0, np.array([4.0], dtype=np.float64), 1, 0), b"")
    assert len(packed) == 24 + 4 and unpack(packed)[0].label.tolist() == [4.0]
    with pytest.raises(RecordIOError, match="24-byte IRHeader"):
        unpack(b"short")
    with pytest.raises(RecordIOError, match="label floats"):
        unpack(struct.pack("<IfQQ", 1000, 0.0, 0, 0) + b"12")


def test_pack_img_roundtrip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    header, back = unpack_img(pack_img(IRHeader(0, 2.0, 3, 0), img, quality=3, img_fmt=".png"))
    assert header == IRHeader(0, 2.0, 3, 0) and np.array_equal(back, img)
    smooth = np.repeat(np.linspace(0, 255, 20, dtype=np.uint8)[None, :, None], 16, 0).repeat(3, 2)
    header, back = unpack_img(pack_img(IRHeader(0, [1.0, 2.0], 4, 0), smooth, quality=95))
    assert header.label.tolist() == [1.0, 2.0] and back.shape == smooth.shape
    assert np.abs(back.astype(int) - smooth).max() <= 3
    with pytest.raises(RecordIOError, match="not a decodable image"):
        unpack_img(pack(IRHeader(0, 0.0, 5, 0), b"not an image"))


def test_writer_tell_keys_and_magic_edge_cases(tmp_path):
    records = [b"", MAGIC, MAGIC * 3, b"ab" + MAGIC + b"cd", b"abcd" + MAGIC, b"x" * 5]
    with MXIndexedRecordIO(tmp_path / "e.idx", tmp_path / "e.rec", "w", key_type=str) as out:
        tells = []
        for i, buf in enumerate(records):
            out.write_idx(f"k{i}", buf)
            tells.append(out.tell())
        assert out.keys == [f"k{i}" for i in range(len(records))]
        assert out.idx["k1"] == tells[0]
    assert tells[-1] == (tmp_path / "e.rec").stat().st_size
    parts = _scan_parts(tmp_path / "e.rec")
    assert [(c, n) for _, c, n in parts] == [
        (0, 0), (1, 0), (3, 0), (1, 0), (2, 0), (2, 0), (3, 0), (0, 8), (1, 4), (3, 0), (0, 5)]
    with MXIndexedRecordIO(tmp_path / "e.idx", tmp_path / "e.rec", "r", key_type=str) as rec:
        assert _read_all(rec) == records


def _corrupt_expectations(fixtures_dir: Path) -> dict[str, list[tuple[str, int, str]]]:
    """From MANIFEST.md: what mxnet 1.9.1 did per key/sequential read: ('idx'|'seq', n, outcome)."""
    text = (fixtures_dir / "MANIFEST.md").read_text()
    result: dict[str, list] = {}
    for name, block in re.findall(r"### `(\w+)\.rec`.*?```\n(.*?)```", text, re.S):
        for kind, num, outcome in re.findall(r"^(read_idx\(|sequential read #)(\d+)\)?: (.*)$",
                                             block, re.M):
            result.setdefault(name, []).append(("idx" if kind == "read_idx(" else "seq",
                                                int(num), outcome))
    return result


@pytest.mark.parametrize("name", ["truncated", "bad_magic", "idx_past_eof"])
def test_corrupt_fixtures(fixtures_dir, name):
    expectations = _corrupt_expectations(fixtures_dir)[name]
    idx_path = fixtures_dir / "corrupt" / f"{name}.idx"
    rec_path = fixtures_dir / "corrupt" / f"{name}.rec"
    rec = MXIndexedRecordIO(idx_path, rec_path, "r")
    errors = 0
    for kind, num, outcome in expectations:
        if kind == "seq" and num == 0:
            rec.reset()
        if kind == "seq" and outcome.startswith("None"):
            assert rec.read() is None
            continue
        try:
            got = len(rec.read_idx(num) if kind == "idx" else rec.read())
        except RecordIOError as err:
            message = str(err)
            assert outcome.startswith(("MXNetError", "None")), f"{kind} {num}: {message}"
            assert "\n" not in message and str(rec_path) in message
            key = num if kind == "idx" else rec.keys[num]
            assert f"key {key} at byte {rec.idx[key]}" in message
            assert "python -m im2rec" in message
            errors += 1
        else:
            assert outcome == f"{got} bytes", f"{kind} {num}"
    assert errors >= 1
    rec.close()


def test_missing_files_and_bad_index(tmp_path, fixtures_dir):
    rec_path = fixtures_dir / "split_record" / "split.rec"
    with pytest.raises(RecordIOError, match=re.escape(str(tmp_path / "none.idx"))):
        MXIndexedRecordIO(tmp_path / "none.idx", rec_path, "r")
    (tmp_path / "ok.idx").write_text("0\t0\n")
    with pytest.raises(RecordIOError, match=re.escape(str(tmp_path / "none.rec"))):
        MXIndexedRecordIO(tmp_path / "ok.idx", tmp_path / "none.rec", "r")
    for bad in ["0\t0\n1 36\n", "0\t0\nx\t36\n", "0\t-8\n", b"0\t0\n\xff\xfe\n"]:
        path = tmp_path / "bad.idx"
        path.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
        with pytest.raises(RecordIOError, match=re.escape(str(path))) as info:
            MXIndexedRecordIO(path, rec_path, "r")
        assert "\n" not in str(info.value)
    (tmp_path / "crlf.idx").write_bytes(b"0\t0\r\n1\t64\r\n\r\n")
    with MXIndexedRecordIO(tmp_path / "crlf.idx", rec_path, "r") as rec:
        assert rec.keys == [0, 1] and len(rec.read_idx(1)) == 24 + 27
    (tmp_path / "far.idx").write_text(f"0\t{2 ** 70}\n5\t36\n")
    with MXIndexedRecordIO(tmp_path / "far.idx", rec_path, "r") as rec:
        with pytest.raises(RecordIOError, match="key 0 at byte"):
            rec.read_idx(0)
        with pytest.raises(RecordIOError, match="cflag 3"):
            rec.read_idx(5)
        with pytest.raises(RecordIOKeyError) as info:
            rec.read_idx(99)
        assert isinstance(info.value, KeyError) and isinstance(info.value, DataError)
        assert "key 99" in str(info.value)


def test_open_reads_only_the_index(tmp_path):
    """A reader on a 3 GiB (sparse) file opens and reads a far record at once."""
    far = 3 << 30
    buf = pack(IRHeader(0, 1.0, 42, 0), b"far away" + MAGIC + b"!")
    with MXRecordIO(tmp_path / "tmp.rec", "w") as out:
        out.write(buf)
    encoded = (tmp_path / "tmp.rec").read_bytes()
    with open(tmp_path / "big.rec", "wb") as f:
        f.truncate(far)
        f.seek(far)
        f.write(encoded)
    (tmp_path / "big.idx").write_text(f"7\t{far}\n")
    start = time.perf_counter()
    with MXIndexedRecordIO(tmp_path / "big.idx", tmp_path / "big.rec", "r") as rec:
        assert rec.read_idx(7) == buf
    assert time.perf_counter() - start < 0.5


def test_single_part_records_take_one_read_and_sparse_indexes_still_work(tmp_path, fixtures_dir, monkeypatch):
    """read_idx reads a single-part record in one pread (its extent from the index); records the
    index skips, multi-part records and a file cut short after opening take the part-by-part path."""
    import utils.recordio as recordio_module
    payloads = [pack(IRHeader(0, float(k), k, 0), bytes([k]) * (50 + 7 * k)) for k in range(4)]
    with MXIndexedRecordIO(tmp_path / "all.idx", tmp_path / "t.rec", "w") as out:
        for k, buf in enumerate(payloads):
            out.write_idx(k, buf)
    (tmp_path / "sparse.idx").write_text("".join(line for i, line in enumerate(
        (tmp_path / "all.idx").read_text().splitlines(keepends=True)) if i in (0, 3)))
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(recordio_module.os, "pread", lambda *a: reads.append(a[1]) or real_pread(*a))
    with MXIndexedRecordIO(tmp_path / "all.idx", tmp_path / "t.rec", "r") as rec:
        for k in (2, 0, 3, 1):
            reads.clear()
            assert rec.read_idx(k) == payloads[k] and len(reads) == 1
    with MXIndexedRecordIO(tmp_path / "sparse.idx", tmp_path / "t.rec", "r") as rec:
        assert rec.read_idx(0) == payloads[0] and rec.read_idx(3) == payloads[3]
    idx_path, rec_path = _paths(fixtures_dir, "mx_multipart")
    raw = rec_path.read_bytes()
    with MXIndexedRecordIO(idx_path, rec_path, "r") as rec:
        cflags = {key: struct.unpack_from("<II", raw, rec.idx[key])[1] >> 29 for key in rec.keys}
        assert set(cflags.values()) == {0, 1}
        for key in rec.keys:
            reads.clear()
            rec.read_idx(key)
            assert (len(reads) == 1) == (cflags[key] == 0)          # multi-part: part by part
    with MXIndexedRecordIO(tmp_path / "all.idx", tmp_path / "t.rec", "r") as rec:
        rec.read_idx(0)
        os.truncate(tmp_path / "t.rec", (tmp_path / "t.rec").stat().st_size - 8)
        with pytest.raises(RecordIOError, match="key 3 at byte .*cut short"):
            rec.read_idx(3)


@pytest.mark.parametrize("path", ["one read", "part by part"])
def test_a_damaged_length_field_is_an_error_naming_file_and_key(tmp_path, monkeypatch, path):
    """Every flip of length bits 2..28 of any part (single-part, multi-part, last record) is an
    error naming the file and key, never a cut or extended payload; bits 0-1 that stay inside
    the 4-byte padding move the end by at most 3 bytes (the strict image decoder catches a cut JPEG)."""
    import utils.recordio as recordio_module
    if path == "part by part":
        monkeypatch.setattr(recordio_module, "_MAX_EXTENT", 0)
    payloads = {0: b"\x01" * 301, 1: b"abcd" + MAGIC + b"\x02" * 97, 2: b"\x03" * 202, 3: b"\x04" * 150}
    with MXIndexedRecordIO(tmp_path / "ok.idx", tmp_path / "ok.rec", "w") as out:
        for key, payload in payloads.items():
            out.write_idx(key, pack(IRHeader(0, float(key), key, 0), payload))
    good = (tmp_path / "ok.rec").read_bytes()
    parts = _scan_parts(tmp_path / "ok.rec")
    assert [cflag for _, cflag, _ in parts] == [0, 1, 3, 0, 0]
    offsets = [int(line.split("\t")[1]) for line in (tmp_path / "ok.idx").read_text().splitlines()]
    rec_path = tmp_path / "bad.rec"
    for part_at, _, length in parts:
        key = max(k for k, off in enumerate(offsets) if off <= part_at)
        for bit in range(29):
            damaged = bytearray(good)
            damaged[part_at + 4:part_at + 8] = struct.pack("<I", struct.unpack_from(
                "<I", good, part_at + 4)[0] ^ (1 << bit))
            rec_path.write_bytes(bytes(damaged))
            with MXIndexedRecordIO(tmp_path / "ok.idx", rec_path, "r") as rec:
                try:
                    payload = unpack(rec.read_idx(key))[1]
                except RecordIOError as err:
                    assert f"{rec_path}: key {key} at byte {offsets[key]}: " in str(err)
                    continue
            assert bit < 2 and (length + 3) // 4 == ((length ^ (1 << bit)) + 3) // 4, (key, bit)
            assert 0 < abs(len(payload) - len(payloads[key])) <= 3


def test_pickled_reader_reads_in_fresh_object(fixtures_dir):
    idx_path, rec_path = _paths(fixtures_dir, "mx_multipart")
    rec = MXIndexedRecordIO(idx_path, rec_path, "r")
    first = rec.read_idx(1)
    clone = pickle.loads(pickle.dumps(rec))
    assert clone.keys == rec.keys and clone.read_idx(1) == first
    assert _read_all(clone) == _read_all(rec)
    clone.close()
    assert rec.read_idx(3) == _read_all(rec)[3]


def test_writer_misuse(tmp_path):
    writer = MXIndexedRecordIO(tmp_path / "w.idx", tmp_path / "w.rec", "w")
    with pytest.raises(TypeError, match="open for writing"):
        pickle.dumps(writer)
    with pytest.raises(RecordIOError, match="not open for reading"):
        writer.read()
    writer.close()
    with pytest.raises(RecordIOError, match="not open for writing"):
        writer.write(b"x")
    with pytest.raises(ValueError, match="invalid flag"):
        MXRecordIO(tmp_path / "w.rec", "a")


class _RecordDataset(torch.utils.data.Dataset):
    """Returns (key, worker pid, payload sha256) for each key of a shared reader."""

    def __init__(self, rec: MXIndexedRecordIO):
        self.rec = rec

    def __len__(self) -> int:
        return len(self.rec.keys)

    def __getitem__(self, i: int):
        key = self.rec.keys[i]
        return key, os.getpid(), _sha(unpack(self.rec.read_idx(key))[1])


@pytest.mark.slow
@pytest.mark.fresh_process
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers(fixtures_dir, manifest, context):
    rows = {int(r["key"]): r["payload sha256"] for r in manifest["mx_multipart"]}
    rec = MXIndexedRecordIO(*_paths(fixtures_dir, "mx_multipart"), "r")
    in_order = _read_all(rec)
    rec.reset()
    assert rec.read() == in_order[0]
    loader = torch.utils.data.DataLoader(_RecordDataset(rec), batch_size=None, num_workers=2,
                                         multiprocessing_context=context)
    got, pids = {}, set()
    for n, (key, pid, sha) in enumerate(loader, 1):
        got[key] = sha
        pids.add(pid)
        if n < len(in_order):
            assert rec.read() == in_order[n]
    assert got == rows
    assert os.getpid() not in pids and len(pids) == 2
    assert rec.read() is None


# ---------------------------------------------------------------- labels and the insightface layout

def test_first_label_of_scalar_and_array_labels():
    assert first_label(unpack(pack(IRHeader(0, 3.0, 1, 0), b"x"))[0]) == 3.0
    assert first_label(unpack(pack(IRHeader(0, [5.0, 2.0], 1, 0), b"x"))[0]) == 5.0


def _full_labels(rec: MXIndexedRecordIO, keys: list) -> list:
    return [int(first_label(unpack(rec.read_idx(k))[0])) for k in keys]


def test_read_layout_and_identity_ranges_of_the_insightface_fixture(fixtures_dir):
    rec = MXIndexedRecordIO(fixtures_dir / "insightface_style" / "train.idx",
                            fixtures_dir / "insightface_style" / "train.rec", "r")
    keys, header = read_layout(rec)
    first, end = int(header.label[0]), int(header.label[1])
    assert keys == list(range(1, first))
    ranges = identity_ranges(rec, header)
    assert len(ranges) == end - first
    assert ranges[0][0] == 1 and ranges[-1][1] == first
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))       # contiguous, grouped by class
    labels = _full_labels(rec, keys)
    for identity, (start, stop) in enumerate(ranges):
        assert labels[start - 1:stop - 1] == [identity] * (stop - start)


def test_read_layout_without_header_takes_every_key(fixtures_dir):
    rec = MXIndexedRecordIO(fixtures_dir / "mx_im2rec" / "train.idx", fixtures_dir / "mx_im2rec" / "train.rec", "r")
    keys, header = read_layout(rec)
    assert header is None and keys == rec.keys
    assert identity_ranges(rec, header) == []


def test_read_layout_refuses_a_header_past_the_index(tmp_path):
    with MXIndexedRecordIO(tmp_path / "t.idx", tmp_path / "t.rec", "w") as w:
        w.write_idx(0, pack(IRHeader(0, [9.0, 12.0], 0, 0), b""))
        w.write_idx(1, pack(IRHeader(0, 0.0, 1, 0), b"img"))
    rec = MXIndexedRecordIO(tmp_path / "t.idx", tmp_path / "t.rec", "r")
    with pytest.raises(RecordIOError, match=r"t.rec: header record 0 says images are keys 1..8"):
        read_layout(rec)


@pytest.mark.parametrize("folder", ["mx_im2rec", "insightface_style", "mx_multipart", "split_record"])
def test_scan_labels_reads_what_the_full_reader_reads(fixtures_dir, folder):
    idx = next((fixtures_dir / folder).glob("*.idx"))
    rec = MXIndexedRecordIO(idx, idx.with_suffix(".rec"), "r")
    keys = read_layout(rec)[0][::-1]          # any key order: labels come back in that order
    assert scan_labels(rec, keys) == _full_labels(rec, keys)


def test_scan_labels_reads_headers_only(tmp_path, monkeypatch):
    with MXIndexedRecordIO(tmp_path / "t.idx", tmp_path / "t.rec", "w") as w:
        for key in range(5):
            w.write_idx(key, pack(IRHeader(0, [float(key * 2), 1.0], key, 0), bytes(5000)))
    rec = MXIndexedRecordIO(tmp_path / "t.idx", tmp_path / "t.rec", "r")
    sizes = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, pos: sizes.append(n) or real(fd, n, pos))
    assert scan_labels(rec, [3, 0, 4]) == [6, 0, 8]
    assert sizes and max(sizes) <= 36


def test_write_index_keeps_the_chosen_keys_and_their_offsets(tmp_path, fixtures_dir):
    src = fixtures_dir / "insightface_style"
    rec = MXIndexedRecordIO(src / "train.idx", src / "train.rec", "r")
    keys = read_layout(rec)[0][:5]
    write_index(tmp_path / "images.idx", rec, keys)
    subset = MXIndexedRecordIO(tmp_path / "images.idx", src / "train.rec", "r")
    assert subset.keys == keys and all(subset.idx[k] == rec.idx[k] for k in keys)
    assert [subset.read_idx(k) for k in keys] == [rec.read_idx(k) for k in keys]
    with pytest.raises(RecordIOKeyError):
        write_index(tmp_path / "bad.idx", rec, [10 ** 9])
