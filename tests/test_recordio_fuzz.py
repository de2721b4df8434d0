"""Property tests: on arbitrary or damaged .rec/.idx bytes the reader ends and raises only RecordIOError."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils.recordio import IRHeader, MXIndexedRecordIO, MXRecordIO, RecordIOError, pack, unpack

MAGIC = b"\x0a\x23\xd7\xce"
FUZZ = settings(max_examples=150, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _valid_files() -> tuple[bytes, bytes]:
    """A small .rec/.idx with single- and multi-part records, label arrays and empty records."""
    with tempfile.TemporaryDirectory() as tmp:
        rec = MXIndexedRecordIO(f"{tmp}/v.idx", f"{tmp}/v.rec", "w")
        payloads = [b"", MAGIC, b"ab" + MAGIC * 2 + b"cdefg", b"plain record", MAGIC + b"z" * 9]
        for key, payload in enumerate(payloads):
            label = [float(key), 1.0] if key % 2 else float(key)
            rec.write_idx(key * 3, pack(IRHeader(0, label, key, 0), payload))
        rec.write_idx(99, MAGIC * 2)
        rec.close()
        return Path(f"{tmp}/v.rec").read_bytes(), Path(f"{tmp}/v.idx").read_bytes()


VALID_REC, VALID_IDX = _valid_files()


def _exercise(rec_bytes: bytes, idx_bytes: bytes) -> None:
    """Open, read every key, iterate, unpack: anything but RecordIOError fails the test."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(f"{tmp}/f.rec").write_bytes(rec_bytes)
        Path(f"{tmp}/f.idx").write_bytes(idx_bytes)
        try:
            rec = MXIndexedRecordIO(f"{tmp}/f.idx", f"{tmp}/f.rec", "r")
        except RecordIOError:
            rec = None
        if rec is not None:
            for key in rec.keys:
                try:
                    _check_record(rec.read_idx(key))
                except RecordIOError:
                    pass
            rec.close()
        seq = MXRecordIO(f"{tmp}/f.rec", "r")
        try:
            for _ in range(len(rec_bytes) // 8 + 2):
                buf = seq.read()
                if buf is None:
                    break
                _check_record(buf)
            else:
                pytest.fail("sequential reading did not reach the end of the file")
        except RecordIOError:
            pass
        seq.close()


def _check_record(buf: bytes) -> None:
    assert isinstance(buf, bytes)
    try:
        header, payload = unpack(buf)
    except RecordIOError:
        return
    if header.flag > 0:
        assert isinstance(header.label, np.ndarray) and header.label.size == header.flag
    assert isinstance(payload, bytes)


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, pos, value in ops:
        pos = pos % (len(out) + 1)
        if kind == 0 and pos < len(out):
            out[pos] ^= 1 << (value % 8)
        elif kind == 1:
            del out[pos:]
        elif kind == 2:
            out[pos:pos] = bytes([value % 256]) * (value % 9)
        elif kind == 3:
            out[pos:pos + 4] = MAGIC
        elif kind == 4 and pos < len(out):
            out[pos] = value % 256
    return bytes(out)


_ops = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 1 << 12)),
                min_size=1, max_size=6)
_idx_lines = st.lists(st.one_of(
    st.tuples(st.integers(-5, 1 << 40), st.integers(-5, 1 << 70)).map(lambda t: f"{t[0]}\t{t[1]}"),
    st.integers(0, len(VALID_REC) + 16).map(lambda off: f"7\t{off}"),
    st.text(max_size=20)), max_size=8)


@FUZZ
@given(rec_bytes=st.binary(max_size=600), idx_bytes=st.binary(max_size=80))
def test_random_bytes(rec_bytes, idx_bytes):
    _exercise(rec_bytes, idx_bytes)


@FUZZ
@given(ops=_ops, idx_ops=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 200),
                                            st.integers(0, 255)), max_size=3),
       extra_lines=_idx_lines)
def test_mutated_valid_files(ops, idx_ops, extra_lines):
    idx = _mutate(VALID_IDX, idx_ops) + "\n".join(extra_lines).encode("utf-8", "replace")
    _exercise(_mutate(VALID_REC, ops), idx)


@FUZZ
@given(st.binary(max_size=200))
def test_unpack_arbitrary_bytes(buf):
    _check_record(buf)


def test_valid_files_read_back():
    """The base of the mutations is itself valid, so the mutations start from real structure."""
    _exercise(VALID_REC, VALID_IDX)
    with tempfile.TemporaryDirectory() as tmp:
        Path(f"{tmp}/v.rec").write_bytes(VALID_REC)
        Path(f"{tmp}/v.idx").write_bytes(VALID_IDX)
        with MXIndexedRecordIO(f"{tmp}/v.idx", f"{tmp}/v.rec", "r") as rec:
            assert rec.keys == [0, 3, 6, 9, 12, 99]
            assert unpack(rec.read_idx(6))[1] == b"ab" + MAGIC * 2 + b"cdefg"
            assert rec.read_idx(99) == MAGIC * 2
