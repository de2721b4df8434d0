"""python -m im2rec against MXNet's own im2rec output (fixtures/mx_im2rec) and on bad input."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import im2rec
from tests.conftest import REPO
from utils.errors import DataError
from utils.recordio import MXIndexedRecordIO, unpack


def read_rec(prefix: Path) -> list:
    """[(key, flag, label, id, id2, payload)] in file order."""
    reader = MXIndexedRecordIO(f"{prefix}.idx", f"{prefix}.rec", "r")
    out = []
    for key in sorted(reader.keys, key=reader.idx.get):
        header, payload = unpack(reader.read_idx(key))
        label = header.label.tolist() if header.flag else header.label
        out.append((key, header.flag, label, header.id, header.id2, bytes(payload)))
    reader.close()
    return out


def decode(buf: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None
    return img.astype(np.int16)


@pytest.fixture
def work(tmp_path, fixtures_dir):
    """A writable copy of fixtures/mx_im2rec/images plus MXNet's train.lst, in tmp_path."""
    shutil.copytree(fixtures_dir / "mx_im2rec" / "images", tmp_path / "images")
    shutil.copy(fixtures_dir / "mx_im2rec" / "train.lst", tmp_path / "train.lst")
    for p in tmp_path.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return tmp_path


def run(*argv) -> int:
    return im2rec.main([str(a) for a in argv])


def leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# ---------------------------------------------------------------- .lst

def test_list_equals_mxnet_byte_for_byte(work, fixtures_dir):
    (work / "train.lst").unlink()
    assert run("--list", "--recursive", work / "train", work / "images") == 0
    assert (work / "train.lst").read_bytes() == (fixtures_dir / "mx_im2rec" / "train.lst").read_bytes()


def test_no_shuffle_is_the_sorted_walk(work):
    assert run("--list", "--recursive", "--no-shuffle", work / "plain", work / "images") == 0
    lines = (work / "plain.lst").read_text().splitlines()
    paths = sorted(str(p.relative_to(work / "images")) for p in (work / "images").rglob("*.jpg"))
    assert [line.split("\t")[2] for line in lines] == paths
    assert [int(line.split("\t")[0]) for line in lines] == list(range(len(paths)))
    assert sorted(lines) == sorted((work / "train.lst").read_text().splitlines())


@pytest.mark.mxnet
def test_list_options_match_mxnet(tmp_path, mxnet_python):
    """Ratios, chunks, non-recursive and an odd tree: same files as MXNet's im2rec writes."""
    root = tmp_path / "tree"
    for rel in ["a.jpg", "B.JPG", "notes.txt", "x/1.png", "x/0.jpeg", "x/deep/2.jpg", "y/3.jpg",
                "empty_dir_has_txt/readme.txt", "z/4.jpg", "z/5.jpg", "z/6.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    variants = {
        "ratio": ["--recursive", "--train-ratio", "0.5", "--test-ratio", "0.25"],
        "chunks": ["--recursive", "--chunks", "2", "--no-shuffle"],
        "flat": [],
        "trainonly": ["--recursive", "--train-ratio", "0.6"],
    }
    driver = ("import sys\nfrom mxnet.tools import im2rec as m\n"
              "for argv in eval(sys.argv[1]):\n"
              "    sys.argv = ['im2rec'] + argv\n"
              "    m.make_list(m.parse_args())\n")
    mx_dir, our_dir = tmp_path / "mx", tmp_path / "ours"
    mx_dir.mkdir()
    our_dir.mkdir()
    argvs = [opts + ["--list", str(mx_dir / name), str(root)] for name, opts in variants.items()]
    subprocess.run([str(mxnet_python), "-c", driver, repr(argvs)], check=True, capture_output=True,
                   timeout=120)
    for name, opts in variants.items():
        assert run(*opts, "--list", our_dir / name, root) == 0
    mx_files = sorted(p.name for p in mx_dir.iterdir())
    assert len(mx_files) == 8
    assert sorted(p.name for p in our_dir.iterdir()) == mx_files
    for fname in mx_files:
        assert (our_dir / fname).read_bytes() == (mx_dir / fname).read_bytes(), fname


# ---------------------------------------------------------------- packing

def test_pass_through_payloads_are_the_source_files(work, fixtures_dir):
    assert run(work / "train", work / "images", "--pass-through") == 0
    ours = read_rec(work / "train")
    theirs = read_rec(fixtures_dir / "mx_im2rec" / "train")
    assert [r[:5] for r in ours] == [r[:5] for r in theirs]
    paths = {int(line.split("\t")[0]): line.split("\t")[2]
             for line in (work / "train.lst").read_text().splitlines()}
    for key, *_, payload in ours:
        assert payload == (work / "images" / paths[key]).read_bytes()
    assert leftovers(work) == []


def test_reencode_matches_mxnet_records_within_jpeg_tolerance(work, fixtures_dir, monkeypatch):
    monkeypatch.chdir(work)
    assert run("train.lst", "images") == 0
    ours = read_rec(work / "train")
    theirs = read_rec(fixtures_dir / "mx_im2rec" / "train")
    assert [r[:5] for r in ours] == [r[:5] for r in theirs]
    assert (work / "train.idx").read_text().splitlines()[0].split("\t")[0] == "10"
    paths = {int(line.split("\t")[0]): line.split("\t")[2]
             for line in (work / "train.lst").read_text().splitlines()}
    for (key, *_, payload), (_, *_, mx_payload) in zip(ours, theirs):
        source = (work / "images" / paths[key]).read_bytes()
        assert payload != source
        img, src, mx = decode(payload), decode(source), decode(mx_payload)
        assert img.shape == (112, 112, 3)
        assert np.abs(img - src).mean() < 2.0
        assert np.abs(img - mx).max() <= 8


def test_num_thread_2_is_identical_to_1(work):
    assert run(work / "train", work / "images", "--num-thread", "1") == 0
    one = (work / "train.rec").read_bytes(), (work / "train.idx").read_bytes()
    assert run(work / "train", work / "images", "--num-thread", "2") == 0
    assert ((work / "train.rec").read_bytes(), (work / "train.idx").read_bytes()) == one


def test_ordered_map_keeps_input_order_under_threads():
    import time

    def slow(x):
        time.sleep(0.002 * (20 - x))
        return x * x

    assert list(im2rec.ordered_map(slow, range(20), num_thread=4)) == [x * x for x in range(20)]


def test_insightface_header_layout_with_a_failed_last_class(work):
    for p in (work / "images" / "id_05").iterdir():
        p.write_bytes(b"broken")
    assert run(work / "train", work / "images", "--insightface-header", "--skip-bad") == 0
    records = read_rec(work / "train")
    assert records[0][2] == [21.0, 27.0]
    assert [r[2] for r in records[21:]][-2:] == [[17.0, 21.0], [21.0, 21.0]]
    assert (work / "property").read_text() == "6,112,112\n"


def test_insightface_header_layout(work):
    assert run(work / "train", work / "images", "--pass-through", "--insightface-header") == 0
    records = read_rec(work / "train")
    reader = MXIndexedRecordIO(work / "train.idx", work / "train.rec", "r")
    assert reader.idx[0] == 0
    reader.close()
    key0, flag, label, rid, _, payload = records[0]
    assert (key0, flag, label, rid, payload) == (0, 2, [25.0, 31.0], 0, b"")
    images, identities = records[1:25], records[25:]
    assert [r[0] for r in images] == list(range(1, 25))
    assert all(r[1] == 0 and r[3] == r[0] and r[4] == 0 for r in images)
    labels = [r[2] for r in images]
    assert labels == sorted(labels)
    lst = [line.split("\t") for line in (work / "train.lst").read_text().splitlines()]
    by_class = {}
    for _, lab, path in lst:
        by_class.setdefault(int(float(lab)), []).append((work / "images" / path).read_bytes())
    assert [r[0] for r in identities] == list(range(25, 31))
    for c, (key, flag, (start, end), rid, _, payload) in enumerate(identities):
        assert (flag, rid, payload) == (2, key, b"")
        members = [r for r in images if start <= r[0] < end]
        assert [r[2] for r in members] == [float(c)] * 4
        assert sorted(r[5] for r in members) == sorted(by_class[c])
    assert (work / "property").read_text() == "6,112,112\n"


def test_pack_label_resize_crop_png_gray(work):
    img = np.zeros((120, 100, 3), np.uint8)
    img[:, :, 2] = 200
    cv2.imwrite(str(work / "images" / "tall.png"), img)
    (work / "multi.lst").write_text("7\t3.000000\t1.500000\ttall.png\n")
    assert run(work / "multi.lst", work / "images", "--pack-label", "--center-crop", "--resize", "50",
               "--encoding", ".png") == 0
    [(key, flag, label, rid, _, payload)] = read_rec(work / "multi")
    assert (key, flag, label, rid) == (7, 2, [3.0, 1.5], 7)
    assert payload.startswith(b"\x89PNG")
    out = decode(payload)
    assert out.shape == (50, 50, 3) and out[..., 2].min() == 200 and out[..., :2].max() == 0
    assert run(work / "multi.lst", work / "images", "--color", "0", "--resize", "60") == 0
    [(_, flag, label, *_, payload)] = read_rec(work / "multi")
    assert (flag, label) == (0, 3.0)
    assert decode(payload).shape == (72, 60)


def test_unreadable_image_is_skipped_with_skip_bad_and_counted(work, capsys):
    bad = work / "images" / "id_03" / "2.jpg"
    bad.write_bytes(b"not a jpeg")
    (work / "images" / "id_01" / "0.jpg").unlink()
    assert run(work / "train", work / "images", "--skip-bad") == 0
    captured = capsys.readouterr()
    assert "id_03/2.jpg" in captured.err and "id_01/0.jpg" in captured.err
    assert "2 of 24 images could not be read" in captured.out
    keys = [r[0] for r in read_rec(work / "train")]
    assert len(keys) == 22 and 14 not in keys and 4 not in keys


def truncated_images(work: Path) -> list:
    """Cut three images of the list: half a JPEG, a JPEG without its end marker, half a PNG."""
    images = work / "images"
    jpeg = (images / "id_03" / "2.jpg").read_bytes()
    (images / "id_03" / "2.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    jpeg = (images / "id_04" / "1.jpg").read_bytes()
    (images / "id_04" / "1.jpg").write_bytes(jpeg[:-2])
    png = cv2.imencode(".png", cv2.imread(str(images / "id_00" / "0.jpg")))[1].tobytes()
    (images / "id_00" / "cut.png").write_bytes(png[:len(png) // 2])
    with open(work / "train.lst", "a") as f:
        f.write("24\t0.000000\tid_00/cut.png\n")
    return ["id_03/2.jpg", "id_04/1.jpg", "id_00/cut.png"]


@pytest.mark.parametrize("mode", [[], ["--pass-through"]])
def test_truncated_images_are_refused_or_skipped_never_packed(work, tmp_path, capsys, mode):
    """OpenCV fills a cut JPEG with grey rows; packing refuses it (or leaves it out with
    --skip-bad), lists it by path, and packs the good images exactly as without it."""
    assert run(work / "train", work / "images", *mode) == 0
    clean = {r[0]: r for r in read_rec(work / "train")}
    bad = truncated_images(work)
    capsys.readouterr()
    shutil.copy(work / "train.lst", work / "again.lst")
    assert run(work / "again", work / "images", *mode) == 4
    err = capsys.readouterr().err
    for path in bad:
        assert f"bad image {path}: cannot decode image" in err
    assert "truncated JPEG" in err and "truncated PNG" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 3 of 25 images are missing, truncated or undecodable")
    assert "--skip-bad" in last
    assert not (work / "again.rec").exists() and not (work / "again.idx").exists()
    assert leftovers(work) == []
    assert run(work / "again", work / "images", "--skip-bad", *mode) == 0
    out = capsys.readouterr()
    assert all(f"skipped {path}: " in out.err for path in bad)
    assert "3 of 25 images could not be read and were skipped" in out.out
    packed = read_rec(work / "again")
    assert len(packed) == 22 and all(r == clean[r[0]] for r in packed)


def test_sizes_training_refuses_are_warned_and_resize_fixes_them(work, capsys):
    images = work / "images"
    face = cv2.imread(str(images / "id_00" / "0.jpg"))
    cv2.imwrite(str(images / "id_00" / "0.jpg"), cv2.resize(face, (100, 120)))
    cv2.imwrite(str(images / "id_02" / "1.jpg"), cv2.resize(face, (250, 250)))
    for mode in ([], ["--pass-through"]):
        assert run(work / "train", images, *mode) == 0
        warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
        assert len(warning) == 1, warning
        assert "2 of 24 images" in warning[0] and "are not 112x112" in warning[0]
        assert "id_00/0.jpg is 120x100" in warning[0] and "id_02/1.jpg is 250x250" in warning[0]
        assert "--resize 112 --center-crop" in warning[0]
    assert run(work / "train", images, "--resize", "112", "--center-crop") == 0
    assert "warning" not in capsys.readouterr().err
    assert {decode(r[5]).shape for r in read_rec(work / "train")} == {(112, 112, 3)}


def test_all_images_failing_is_an_error_and_writes_nothing(work, tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    assert run(work / "train", tmp_path / "elsewhere", "--pass-through") == 4
    assert "none of the 24 images could be read" in capsys.readouterr().err
    assert not (work / "train.rec").exists() and not (work / "train.idx").exists()
    assert leftovers(work) == []


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failing_write_leaves_no_partial_rec(work, monkeypatch, exc):
    (work / "train.rec").write_bytes(b"previous complete file")
    real = im2rec.MXIndexedRecordIO.write_idx
    calls = []

    def failing(self, idx, buf):
        calls.append(idx)
        if len(calls) == 5:
            raise exc
        return real(self, idx, buf)

    monkeypatch.setattr(im2rec.MXIndexedRecordIO, "write_idx", failing)
    with pytest.raises(type(exc)):
        run(work / "train", work / "images")
    assert len(calls) == 5
    assert (work / "train.rec").read_bytes() == b"previous complete file"
    assert not (work / "train.idx").exists()
    assert leftovers(work) == []


# ---------------------------------------------------------------- --check

def test_check_reports_bad_keys_with_offsets(work, capsys):
    assert run(work / "train", work / "images", "--pass-through") == 0
    assert run("--check", work / "train.rec") == 0
    offsets = dict(line.split("\t") for line in (work / "train.idx").read_text().splitlines())
    data = bytearray((work / "train.rec").read_bytes())
    jpeg_at = int(offsets["21"]) + 8 + 24
    assert data[jpeg_at:jpeg_at + 2] == b"\xff\xd8"
    data[jpeg_at:jpeg_at + 16] = bytes(16)
    data[int(offsets["3"]):int(offsets["3"]) + 4] = b"\xef\xbe\xad\xde"
    (work / "train.rec").write_bytes(bytes(data))
    capsys.readouterr()
    assert run("--check", work) == 1
    out = capsys.readouterr()
    assert f"key 21 at byte {offsets['21']}" in out.err
    assert f"key 3 at byte {offsets['3']}" in out.err
    assert "checked 24 records: 2 bad (keys 21, 3)" in out.out


def test_check_refuses_exactly_what_training_refuses(tmp_path, fixtures_dir, capsys):
    """--check and the training loader (MXFaceDataset, max_bad_samples=0) agree on every record:
    cut JPEG/PNG, a JPEG without its end marker, a 100x100 face, a negative label; the progress
    bar counts records against their total."""
    from dataset import MXFaceDataset
    face = next(r[5] for r in read_rec(fixtures_dir / "mx_im2rec" / "train"))
    png = cv2.imencode(".png", cv2.imdecode(np.frombuffer(face, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
    small = cv2.imencode(".jpg", np.full((100, 100, 3), 90, np.uint8))[1].tobytes()
    records = [(0, face), (1, face[:len(face) // 2]), (2, face[:-2]), (3, png[:-12]), (4, small),
               (-1, face), (6, png), (7, face + bytes(3))]             # label, payload
    writer = MXIndexedRecordIO(tmp_path / "train.idx", tmp_path / "train.rec", "w")
    for key, (label, payload) in enumerate(records):
        writer.write_idx(key, im2rec.pack(im2rec.IRHeader(0, float(label), key, 0), payload))
    writer.close()
    capsys.readouterr()
    assert run("--check", tmp_path / "train.rec") == 1
    out = capsys.readouterr()
    assert "checked 8 records: 5 bad (keys 1, 2, 3, 4, 5)" in out.out
    for key, reason in [(1, "truncated JPEG"), (2, "truncated JPEG"), (3, "truncated PNG"),
                        (4, "image is 100x100, expected 112x112"), (5, "label -1 is negative")]:
        assert f"key {key} at byte " in out.err and reason in out.err.split(f"key {key} at byte ")[1]
    assert "8/8 [" in out.err
    training = MXFaceDataset(str(tmp_path))
    refused = []
    for index in range(len(records)):
        try:
            training[index]
        except DataError:
            refused.append(index)
    assert refused == [1, 2, 3, 4, 5]


def test_check_judges_records_with_the_training_decoder(work, monkeypatch, capsys):
    """--check calls the loader's dataset.decode_record: what training refuses, --check refuses."""
    import dataset
    real = dataset.decode_record
    seen = []

    def training_decoder(record):
        seen.append(unpack(record)[0].id)
        if unpack(record)[0].id == 7:
            raise DataError("refused by the training decoder")
        return real(record)

    assert run(work / "train", work / "images", "--pass-through") == 0
    monkeypatch.setattr(dataset, "decode_record", training_decoder)
    capsys.readouterr()
    assert run("--check", work / "train.rec") == 1
    out = capsys.readouterr()
    assert "checked 24 records: 1 bad (keys 7)" in out.out
    assert "refused by the training decoder" in out.err
    assert sorted(seen) == sorted(read_lst_keys(work / "train.lst"))


def read_lst_keys(path) -> list:
    return [int(line.split("\t")[0]) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name, bad", [("truncated", 2), ("bad_magic", 1)])
def test_check_on_the_corrupt_fixtures(fixtures_dir, capsys, name, bad):
    assert run("--check", fixtures_dir / "corrupt" / f"{name}.rec") == 1
    assert f"checked 3 records: 1 bad (keys {bad})" in capsys.readouterr().out


def test_check_insightface_layout_and_missing_idx(work, capsys):
    assert run(work / "train", work / "images", "--pass-through", "--insightface-header") == 0
    capsys.readouterr()
    assert run("--check", work / "train") == 0
    assert "checked 24 records: 0 bad" in capsys.readouterr().out     # images only, as training
    good = (work / "train.rec").read_bytes()
    (work / "train.rec").write_bytes(b"\xef\xbe\xad\xde" + good[4:])
    assert run("--check", work / "train") == 1
    out = capsys.readouterr()
    assert "bad record: key 0 at byte 0: " in out.err and "wrong magic word" in out.err
    assert "checked 30 records: " in out.out and "bad (keys 0, " in out.out
    (work / "train.rec").write_bytes(good)
    (work / "train.idx").unlink()
    assert run("--check", work / "train.rec") == 0
    assert "reading" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input

def test_bad_input_gives_one_line_errors(work, tmp_path, capsys):
    cases = [
        (["--list", "--recursive", tmp_path / "x", tmp_path / "missing"], "missing not found"),
        (["--list", "--recursive", tmp_path / "x", tmp_path / "empty"], "no images with extensions"),
        (["--list", tmp_path / "x", work / "images"], "add --recursive"),
        ([tmp_path / "nolist", work / "images"], "--list --recursive"),
        ([work / "train", tmp_path / "missing"], "image root"),
        ([work / "broken", work / "images"], "broken.lst line 2"),
        ([work / "dup", work / "images"], "dup.lst line 2: index 4 already used on line 1"),
        (["--check", tmp_path / "none.rec"], "none.rec not found"),
        ([work / "frac", work / "images", "--insightface-header"], "label 1.5 of id_00/0.jpg is not"),
    ]
    (work / "frac.lst").write_text("0\t1.500000\tid_00/0.jpg\n")
    (tmp_path / "empty").mkdir()
    (work / "broken.lst").write_text("0\t1.000000\tid_00/0.jpg\nnot-a-number\t1\tid_00/1.jpg\n")
    (work / "dup.lst").write_text("4\t1.000000\tid_00/0.jpg\n4\t1.000000\tid_00/1.jpg\n")
    for argv, expected in cases:
        assert run(*argv) == 4, argv
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, (argv, err)
    assert leftovers(work) == []


@pytest.mark.slow
def test_python_dash_m_entry_point(work):
    """The documented commands, run as the user runs them (from the repository root)."""
    (work / "train.lst").unlink()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for argv in (["--list", "--recursive", work / "train", work / "images"],
                 [work / "train.lst", work / "images", "--num-thread", "2"]):
        proc = subprocess.run([sys.executable, "-m", "im2rec", *map(str, argv)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert len(read_rec(work / "train")) == 24
    proc = subprocess.run([sys.executable, "-m", "im2rec", "--list", str(work / "x"),
                           str(work / "nope")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr
