"""utils/image.py: the strict decoder training and im2rec share (truncated JPEG/PNG refused)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from utils.image import ImageDecodeError, decode_bgr_hwc, face_size_problem, imdecode
from utils.recordio import MXIndexedRecordIO, unpack


@pytest.fixture(scope="module")
def face(fixtures_dir) -> bytes:
    """A 112x112 JPEG written by MXNet's im2rec."""
    rec = MXIndexedRecordIO(fixtures_dir / "mx_im2rec" / "train.idx",
                            fixtures_dir / "mx_im2rec" / "train.rec", "r")
    payload = unpack(rec.read_idx(rec.keys[0]))[1]
    rec.close()
    return payload


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _with_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
    """`jpeg` with an APP1 (EXIF-style) segment holding a whole second JPEG, as cameras write."""
    body = b"Exif\0\0" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + (2 + len(body)).to_bytes(2, "big") + body + jpeg[2:]


def test_complete_images_decode_to_the_pixels_opencv_gives(face):
    image = decode_bgr_hwc(face)
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8
    reference = cv2.imdecode(np.frombuffer(face, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(image, reference)
    for kind in (bytearray, memoryview, lambda b: np.frombuffer(b, np.uint8)):
        assert np.array_equal(decode_bgr_hwc(kind(face)), reference)
    assert np.array_equal(decode_bgr_hwc(_png(reference)), reference)
    assert imdecode(face, cv2.IMREAD_GRAYSCALE).shape == (112, 112)


def test_padding_and_data_after_a_complete_image_are_accepted(face):
    reference = decode_bgr_hwc(face)
    thumbnail = cv2.imencode(".jpg", reference[::4, ::4])[1].tobytes()
    for ok in (face + bytes(3), face + b"\xff\r\n", face + b"trailer appended by a camera",
               _with_thumbnail(face, thumbnail), _png(reference) + b"\0" * 5 + b"extra"):
        assert decode_bgr_hwc(ok).shape == (112, 112, 3)


def test_truncated_jpeg_and_png_are_refused(face):
    """OpenCV gives grey rows for most of these (cv2.imread always, cv2.imdecode in 4.x) and
    decodes a JPEG missing only its end marker in every version: all must raise."""
    reference = decode_bgr_hwc(face)
    progressive = cv2.imencode(".jpg", reference, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    thumbnail = cv2.imencode(".jpg", reference[::4, ::4])[1].tobytes()
    with_thumbnail = _with_thumbnail(face, thumbnail)
    jpegs = [face[:-2], face[:-1], face[:len(face) // 2], face[:len(face) * 9 // 10] + bytes(2),
             progressive[:-300], with_thumbnail[:-200]]
    png = _png(reference)
    pngs = [png[:-12], png[:-1], png[:len(png) // 2]]
    for bad, kind in [(b, "truncated JPEG") for b in jpegs] + [(b, "truncated PNG") for b in pngs]:
        with pytest.raises(ImageDecodeError, match=f"^cannot decode image \\({len(bad)} bytes\\): "
                                                   f"{kind}"):
            decode_bgr_hwc(bad)
        with pytest.raises(ImageDecodeError):
            imdecode(np.frombuffer(bad, np.uint8), cv2.IMREAD_UNCHANGED)


def test_bytes_opencv_cannot_decode_are_refused(face):
    for bad in (b"", b"not an image", b"\xff\xd8" + bytes(60) + b"\xff\xd9", face[:2] + face[40:]):
        with pytest.raises(ImageDecodeError, match=f"^cannot decode image \\({len(bad)} bytes\\)"):
            decode_bgr_hwc(bad)


def test_face_size_problem_names_the_size_and_the_fix():
    assert face_size_problem((112, 112, 3)) is None and face_size_problem((112, 112)) is None
    problem = face_size_problem((120, 100, 3))
    assert problem.startswith("image is 120x100, expected 112x112 aligned faces")
    assert "python -m im2rec --resize 112" in problem
