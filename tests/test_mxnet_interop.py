"""utils/recordio.py against the real mxnet 1.9.1 (side environment), both ways, in one subprocess."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from utils.recordio import IRHeader, MXIndexedRecordIO, MXRecordIO, pack, pack_img, unpack, unpack_img

MAGIC = b"\x0a\x23\xd7\xce"
MAGIC_FLOAT = float(np.frombuffer(MAGIC, np.float32)[0])
SIDE_SCRIPT = Path(__file__).parent / "mx_side" / "recordio_roundtrip.py"


def _packed(key: int, label, payload: bytes, id_: int | None = None, id2: int = 0) -> dict:
    return {"key": key, "kind": "pack", "flag": 0, "label": label, "id": key if id_ is None else id_,
            "id2": id2, "payload_hex": payload.hex()}


def _spec() -> tuple[dict, dict]:
    """Records for two files: 'raw' (byte-exact: pack and raw writes) and 'img' (pack_img)."""
    rng = np.random.default_rng(1234)
    raw = [
        {"key": 100, "kind": "raw", "payload_hex": ""},
        {"key": 5, "kind": "raw", "payload_hex": MAGIC.hex()},
        {"key": 42, "kind": "raw", "payload_hex": (MAGIC * 3 + b"abc").hex()},
        _packed(0, 0.0, b"head" + MAGIC + b"tail"),
        _packed(1, 1.0, bytes(8) + MAGIC + b"middle\0\0" + MAGIC + MAGIC + b"end"),
        _packed(2, 2.0, b"x" + MAGIC + b"unaligned magic"),
        _packed(3, 3.0, b"abcdabcdabcd" + MAGIC),
        _packed(4, [1.5, 2.5], b"label array" + MAGIC),
        _packed(6, [MAGIC_FLOAT, 7.0, 0.25], b"magic word in the label floats"),
        _packed(7, 7.0, b"magic word in the id", id_=int.from_bytes(MAGIC, "little"), id2=3),
        _packed(8, [9.0], b""),
        _packed(9, 2.0 ** 20, b"big id", id_=2 ** 40 + 5, id2=2 ** 33),
    ]
    for key in range(10, 16):
        payload = bytearray(rng.integers(0, 256, int(rng.integers(8, 60)), dtype=np.uint8).tobytes())
        for pos in rng.choice(len(payload) - 3, 2):
            payload[pos: pos + 4] = MAGIC
        raw.append(_packed(key, float(key), bytes(payload)))
    images = {f"im{i}": _face_like(rng, gray=(i == 3)) for i in range(4)}
    img = [
        {"key": 0, "kind": "img", "flag": 0, "label": 0.0, "id": 0, "id2": 0, "img": "im0",
         "quality": 95, "fmt": ".jpg"},
        {"key": 1, "kind": "img", "flag": 0, "label": [1.0, 0.0], "id": 1, "id2": 0, "img": "im1",
         "quality": 80, "fmt": ".jpg"},
        {"key": 2, "kind": "img", "flag": 0, "label": 2.0, "id": 2, "id2": 0, "img": "im2",
         "quality": 3, "fmt": ".png"},
        {"key": 3, "kind": "img", "flag": 0, "label": 3.0, "id": 3, "id2": 0, "img": "im3",
         "quality": 95, "fmt": ".jpg"},
    ]
    return {"raw": raw, "img": img}, images


def _face_like(rng: np.random.Generator, gray: bool) -> np.ndarray:
    """A smooth 112x112 BGR (or grey) image, so JPEG artefacts stay small."""
    yy, xx = np.mgrid[0:112, 0:112] / 111.0
    base = [np.sin(xx * rng.uniform(2, 6)) * np.cos(yy * rng.uniform(2, 6)) for _ in range(3)]
    img = (127.5 + 120 * np.stack(base, -1)).astype(np.uint8)
    return img[..., 0].copy() if gray else img


def _build(record: dict, images: dict) -> bytes:
    if record["kind"] == "raw":
        return bytes.fromhex(record["payload_hex"])
    header = IRHeader(record["flag"], record["label"], record["id"], record["id2"])
    if record["kind"] == "pack":
        return pack(header, bytes.fromhex(record["payload_hex"]))
    return pack_img(header, images[record["img"]], quality=record["quality"], img_fmt=record["fmt"])


def _header_json(header: IRHeader) -> list:
    label = header.label.tolist() if isinstance(header.label, np.ndarray) else header.label
    return [header.flag, label, header.id, header.id2]


@pytest.mark.mxnet
def test_roundtrip_with_real_mxnet(mxnet_python, tmp_path):
    spec, images = _spec()
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    np.savez(tmp_path / "images.npz", **images)
    built, tells = {}, {}
    for name, records in spec.items():
        built[name] = [_build(r, images) for r in records]
        with MXIndexedRecordIO(tmp_path / f"project_{name}.idx", tmp_path / f"project_{name}.rec",
                               "w") as out:
            tells[name] = []
            for record, buf in zip(records, built[name]):
                out.write_idx(record["key"], buf)
                tells[name].append(out.tell())
        with MXRecordIO(tmp_path / f"project_{name}_seq.rec", "w") as out:
            for buf in built[name]:
                out.write(buf)

    proc = subprocess.run([str(mxnet_python), str(SIDE_SCRIPT), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mx_read = json.loads((tmp_path / "mx_read.json").read_text())
    mx_imgs = np.load(tmp_path / "mx_imgs.npz")

    # identical input -> identical files (pack/raw records, incl. multi-part and label arrays)
    for ext in ("rec", "idx"):
        assert (tmp_path / f"project_raw.{ext}").read_bytes() == (tmp_path / f"mx_raw.{ext}").read_bytes()
    assert (tmp_path / "project_raw_seq.rec").read_bytes() == (tmp_path / "mx_raw.rec").read_bytes()

    for name, records in spec.items():
        report = mx_read[name]
        assert report["tells"] == tells[name]
        # the project wrote -> mxnet reads the same records, by key and sequentially
        assert [report["by_key"][str(r["key"])]["hex"] for r in records] == [b.hex() for b in built[name]]
        assert report["sequential"] == [b.hex() for b in built[name]]
        # mxnet wrote -> the project reads what mxnet packed
        with MXIndexedRecordIO(tmp_path / f"mx_{name}.idx", tmp_path / f"mx_{name}.rec", "r") as rec:
            assert rec.keys == [r["key"] for r in records]
            mx_records = [rec.read_idx(r["key"]) for r in records]
            rec.reset()
            assert list(iter(rec.read, None)) == mx_records
        for record, buf, ours in zip(records, mx_records, built[name]):
            if record["kind"] == "raw":
                assert buf == ours
                continue
            mx_view = report["by_key"][str(record["key"])]
            header, payload = unpack(buf)
            assert _header_json(header) == mx_view["header"]
            if record["kind"] == "pack":
                assert buf == ours and payload.hex() == mx_view["payload_hex"]
            else:
                _, img = unpack_img(buf)
                _, our_img = unpack_img(ours)
                assert img.shape == images[record["img"]].shape
                assert np.array_equal(img, mx_imgs[f"own_{name}_{record['key']}"])
                assert np.array_equal(our_img, mx_imgs[f"{name}_{record['key']}"])
                assert np.abs(img.astype(int) - images[record["img"]]).mean() < 2.0
