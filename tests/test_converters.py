"""DCFace release and Vec2Face HSFace LMDB converters against the fixtures' expected.json."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import lmdb
import msgpack
import pytest

import im2rec
from utils.converters import ConverterError, DCFaceRelease, HSFaceLMDB
from utils.image import decode_rgb_chw
from utils.recordio import MXIndexedRecordIO, unpack


def read_rec(folder: Path) -> list:
    """[(key, flag, label, id, payload)] in file order."""
    reader = MXIndexedRecordIO(folder / "train.idx", folder / "train.rec", "r")
    out = []
    for key in sorted(reader.keys, key=reader.idx.get):
        header, payload = unpack(reader.read_idx(key))
        label = header.label.tolist() if header.flag else header.label
        out.append((key, header.flag, label, header.id, bytes(payload)))
    reader.close()
    return out


def sha(buf: bytes) -> str:
    return hashlib.sha256(buf).hexdigest()


def mean_rgb(buf: bytes) -> list:
    return decode_rgb_chw(buf).float().mean(dim=(1, 2)).tolist()


def run(*argv) -> int:
    return im2rec.main([str(a) for a in argv])


@pytest.fixture
def dcface(fixtures_dir):
    return fixtures_dir / "dcface_release"


@pytest.fixture
def hsface(fixtures_dir):
    return fixtures_dir / "vec2face_lmdb"


def writable_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644)
    dst.chmod(0o755)
    return dst


# ---------------------------------------------------------------- DCFace

def test_dcface_release_converts_with_identities_from_list_txt(dcface, tmp_path, capsys):
    expected = json.loads((dcface / "expected.json").read_text())
    assert run("--from-dcface", dcface, tmp_path / "out") == 0
    assert "4 identities, 28 images" in capsys.readouterr().out
    records = read_rec(tmp_path / "out")
    assert len(records) == expected["num_records"]
    lst = (tmp_path / "out" / "train.lst").read_text().splitlines()
    for rec, exp, line in zip(records, expected["records"], lst):
        key, flag, label, rid, payload = rec
        assert (key, flag, label, rid) == (exp["key"], 0, float(exp["identity"]), exp["key"])
        assert len(payload) == exp["jpeg_bytes"] and sha(payload) == exp["jpeg_sha256"]
        assert line == f"{exp['key']}\t{exp['identity']:f}\t{exp['path']}"
    counts = {}
    for _, _, label, _, _ in records:
        counts[str(int(label))] = counts.get(str(int(label)), 0) + 1
    assert counts == expected["images_per_identity"]
    for exp in expected["records"][:6:5]:
        assert mean_rgb(records[exp["key"]][4]) == pytest.approx(exp["decoded_mean_rgb"], abs=1.5)


def test_dcface_insightface_header_groups_identities(dcface, tmp_path):
    expected = json.loads((dcface / "expected.json").read_text())
    assert run("--from-dcface", dcface, tmp_path, "--insightface-header") == 0
    records = read_rec(tmp_path)
    assert records[0][:3] == (0, 2, [29.0, 33.0])
    by_identity = {}
    for exp in expected["records"]:
        by_identity.setdefault(exp["identity"], []).append(exp["jpeg_sha256"])
    for c, (key, flag, (start, end), rid, payload) in enumerate(records[29:]):
        assert (key, flag, rid, payload) == (29 + c, 2, 29 + c, b"")
        members = records[int(start):int(end)]
        assert {r[2] for r in members} == {float(c)}
        assert [sha(r[4]) for r in members] == by_identity[c]
    assert (tmp_path / "property").read_text() == "4,112,112\n"
    lst = [line.split("\t") for line in (tmp_path / "train.lst").read_text().splitlines()]
    assert [int(f[0]) for f in lst] == list(range(1, 29))


def test_dcface_nested_record_folder_and_unlisted_keys(dcface, tmp_path, capsys):
    src = writable_copy(dcface, tmp_path / "dcface_0.5m" / "record")
    lines = (src / "list.txt").read_text().splitlines(keepends=True)
    (src / "list.txt").write_text("".join(lines[:-2]))
    assert run("--from-dcface", tmp_path / "dcface_0.5m", tmp_path / "out") == 0
    assert "2 record(s) of file.idx have no line in list.txt" in capsys.readouterr().err
    assert [r[0] for r in read_rec(tmp_path / "out")] == list(range(26))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "list.txt").unlink(), "no list.txt"),
    (lambda d: (d / "file.idx").unlink(), "no file.idx"),
    (lambda d: (d / "list.txt").write_text("0\t0/0.jpg\n28\t0/7.jpg\n99\t1/9.jpg\n"),
     "2 key(s) are not in file.idx (e.g. 28, 99)"),
    (lambda d: (d / "list.txt").write_text("0\t0/0.jpg\n1 0/1.jpg\n"), "list.txt line 2"),
    (lambda d: (d / "list.txt").write_text("0\t0/0.jpg\n0\t0/1.jpg\n"), "key 0 already on line 1"),
    (lambda d: (d / "list.txt").write_text("0\tnoidentity.jpg\n"), "list.txt line 1"),
])
def test_dcface_bad_release_folders(dcface, tmp_path, capsys, damage, message):
    src = writable_copy(dcface, tmp_path / "src")
    damage(src)
    with pytest.raises(ConverterError, match="^.*" + message.replace("(", r"\(").replace(")", r"\)")):
        DCFaceRelease(src)
    assert run("--from-dcface", src, tmp_path / "out") == 4
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "train.rec").exists()


def test_dcface_corrupt_record_is_skipped_and_reported(dcface, tmp_path, capsys):
    src = writable_copy(dcface, tmp_path / "src")
    offset = int((src / "file.idx").read_text().splitlines()[3].split("\t")[1])
    data = bytearray((src / "file.rec").read_bytes())
    data[offset:offset + 4] = b"\xef\xbe\xad\xde"
    (src / "file.rec").write_bytes(bytes(data))
    assert run("--from-dcface", src, tmp_path / "out") == 0
    out = capsys.readouterr()
    assert "skipped 0/3.jpg" in out.err and "1 of 28 images" in out.out
    assert 3 not in [r[0] for r in read_rec(tmp_path / "out")]


# ---------------------------------------------------------------- Vec2Face HSFace LMDB

def test_hsface_lmdb_converts_in_index_order(hsface, tmp_path, capsys):
    expected = json.loads((hsface / "expected.json").read_text())
    assert run("--from-lmdb", hsface / expected["file"]["name"], tmp_path / "out") == 0
    assert "4 identities, 20 images" in capsys.readouterr().out
    records = read_rec(tmp_path / "out")
    assert [r[0] for r in records] == [int(k) for k in expected["meta"]["__keys__"]]
    for (key, flag, label, rid, payload), exp in zip(records, expected["records"]):
        assert (key, flag, label, rid) == (exp["index"], 0, float(exp["label"]), exp["index"])
        assert len(payload) == exp["jpeg_bytes"] and sha(payload) == exp["jpeg_sha256"]
    for exp in expected["records"][:6:5]:
        assert mean_rgb(records[exp["index"]][4]) == pytest.approx(exp["decoded_mean_rgb"], abs=1.5)
    lst = (tmp_path / "out" / "train.lst").read_text().splitlines()
    assert lst[12] == "12\t2.000000\t2/12.jpg"


def test_hsface_lmdb_insightface_header(hsface, tmp_path):
    assert run("--from-lmdb", hsface / "hsface_tiny.lmdb", tmp_path, "--insightface-header") == 0
    records = read_rec(tmp_path)
    assert records[0][:3] == (0, 2, [21.0, 25.0])
    assert [r[2] for r in records[21:]] == [[1.0, 6.0], [6.0, 11.0], [11.0, 16.0], [16.0, 21.0]]
    assert (tmp_path / "property").read_text() == "4,112,112\n"


def make_lmdb(path: Path, items: dict) -> Path:
    env = lmdb.open(str(path), subdir=False, map_size=1 << 22)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, msgpack.dumps(value))
    env.close()
    Path(f"{path}-lock").unlink(missing_ok=True)
    return path


GOOD = {b"0": [b"\xff\xd8jpeg", 0], b"1": [b"\xff\xd8jpeg", 1],
        b"__keys__": [b"0", b"1"], b"__len__": 2, b"__classnum__": 2}


@pytest.mark.parametrize("change, message", [
    ({b"__keys__": None}, "key __keys__ is missing"),
    ({b"__len__": 3}, "__len__ (3) does not match the 2 entries"),
    ({b"1": None}, "record key '1' (index 1) is listed in __keys__ but missing"),
    ({b"1": [b"img", [0.5, 0.2], 1]}, "generator-training LMDB"),
    ({b"1": [b"img", 5]}, "label 5, outside 0..1"),
])
def test_hsface_lmdb_inconsistent(tmp_path, capsys, change, message):
    items = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    path = make_lmdb(tmp_path / "bad.lmdb", items)
    with pytest.raises(ConverterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        HSFaceLMDB(path)
    assert run("--from-lmdb", path, tmp_path / "out") == 4
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_hsface_good_synthetic_lmdb_reads(tmp_path):
    source = HSFaceLMDB(make_lmdb(tmp_path / "ok.lmdb", GOOD))
    assert [tuple(e) for e in source.entries] == [(0, 0, "0/0.jpg"), (1, 1, "1/1.jpg")]
    source.close()


@pytest.mark.parametrize("damage, message", [
    (lambda data: b"this is not an lmdb file" * 200, "not a readable LMDB"),
    (lambda data: data[:len(data) // 2], "truncated"),
    (lambda data: data[:100], "not a readable LMDB"),
])
def test_hsface_corrupt_file(hsface, tmp_path, capsys, damage, message):
    path = tmp_path / "broken.lmdb"
    path.write_bytes(damage((hsface / "hsface_tiny.lmdb").read_bytes()))
    assert run("--from-lmdb", path, tmp_path / "out") == 4
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and str(path) in err
    assert run("--from-lmdb", tmp_path / "missing.lmdb", tmp_path / "out") == 4
    assert "LMDB not found" in capsys.readouterr().err
