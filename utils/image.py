"""Image decoding and the one input normalisation every backbone expects."""
from __future__ import annotations

import warnings
from typing import Optional

import cv2
import numpy as np
import torch

from utils.errors import DataError

# OpenCV's thread pool spins while it waits; next to DataLoader workers and torch's own threads it
# slowed the main process's batch normalise (bench: 2 workers 5.5k -> 8.8-10.7k img/s with it off).
# The cv2 calls of the data path work on one image or one batch: run them on the calling thread.
cv2.setNumThreads(0)


class ImageDecodeError(DataError):
    """An encoded image could not be decoded."""


def _torchvision_decoder():
    """torchvision's decode_image and its RGB mode, imported on first use.

    Why lazily: importing torchvision pulls in torch._dynamo (~2 s per process); the training and
    most tools never decode through it, and every command-line start paid for it.
    """
    with warnings.catch_warnings():
        # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they stay the fastest here.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_image
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)
    return decode_image, ImageReadMode.RGB


def decode_rgb_chw(buf: bytes | bytearray | memoryview | np.ndarray) -> torch.Tensor:
    """Decode JPEG/PNG bytes to a uint8 RGB tensor shaped (3, H, W)."""
    data = torch.frombuffer(bytearray(buf), dtype=torch.uint8) if not isinstance(buf, np.ndarray) \
        else torch.from_numpy(np.ascontiguousarray(buf, dtype=np.uint8))
    if data.numel() == 0:
        raise ImageDecodeError("empty image payload")
    decode_image, rgb = _torchvision_decoder()
    try:
        return decode_image(data, mode=rgb)
    except RuntimeError as err:
        raise ImageDecodeError(f"cannot decode image ({data.numel()} bytes): {err}") from None


_CV2_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
FACE_SIZE = 112                     # training takes aligned 112x112 faces only

_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"     # the last chunk: length 0, type, CRC
_PADDING = b"\x00\xff \t\r\n"       # fill some writers leave after the end marker


def decode_bgr_hwc(buf: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode JPEG/PNG/BMP/WebP bytes to a uint8 BGR array shaped (H, W, 3) with OpenCV.

    The fastest decoder on the data loader's path (libjpeg-turbo, same pixels as PIL and
    torchvision); EXIF orientation is ignored, as by decode_rgb_chw and the original.
    Truncated JPEG/PNG data is refused (see imdecode).
    """
    return imdecode(buf, _CV2_FLAGS)


def imdecode(buf: bytes | bytearray | memoryview | np.ndarray, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """cv2.imdecode(buf, flags) that raises ImageDecodeError instead of returning damaged pixels.

    OpenCV fills the missing rows of a cut JPEG with grey (cv2.imread always, cv2.imdecode in
    4.x) and keeps going: a JPEG must end with its end-of-image marker and a PNG hold its IEND
    chunk. The check reads a few bytes at each end (well under 1% of a decode).
    """
    data = buf if isinstance(buf, np.ndarray) else np.frombuffer(buf, dtype=np.uint8)
    raw = buf if isinstance(buf, bytes) else memoryview(data)
    problem = _truncation(raw) if data.size else "empty image payload"
    if problem is None:
        try:
            image = cv2.imdecode(data, flags)
        except cv2.error:
            image = None
        problem = None if image is not None else "not a complete JPEG, PNG, BMP or WebP"
    if problem is not None:
        raise ImageDecodeError(f"cannot decode image ({data.size} bytes): {problem}")
    return image


def _truncation(raw: bytes | memoryview) -> Optional[str]:
    """Why JPEG/PNG bytes are incomplete, or None (other formats are left to OpenCV)."""
    if raw[:2] == _JPEG_SOI:
        return None if raw[-2:] == _JPEG_EOI else _jpeg_truncation(bytes(raw))
    if raw[:8] == _PNG_SIGNATURE:
        return None if raw[-12:] == _PNG_IEND else _png_truncation(bytes(raw))
    return None


def _jpeg_truncation(raw: bytes) -> Optional[str]:
    """The slow path: padding after the marker, or data appended after a complete image."""
    if raw.rstrip(_PADDING).endswith(_JPEG_EOI):
        return None
    scan = _jpeg_scan_start(raw)
    # entropy-coded data never holds FF D9: an end marker after the first scan ends the image
    if scan > 0 and raw.rfind(_JPEG_EOI) > scan:
        return None
    return ("truncated JPEG: no end-of-image marker (FF D9) after the image data (an interrupted "
            "copy or write); re-create the file from its source")


def _jpeg_scan_start(raw: bytes) -> int:
    """Offset of the first start-of-scan marker, walking the marker segments; -1 if none."""
    pos = 2
    while pos + 4 <= len(raw):
        if raw[pos] != 0xFF:
            return -1
        marker = raw[pos + 1]
        if marker == 0xDA:
            return pos
        if marker == 0xFF:                              # fill byte before a marker
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(raw[pos + 2:pos + 4], "big")
    return -1


def _png_truncation(raw: bytes) -> Optional[str]:
    """The slow path: walk the chunks (length, type, data, CRC) up to IEND."""
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(raw):
        end = pos + 12 + int.from_bytes(raw[pos:pos + 4], "big")
        if end > len(raw):
            break
        if raw[pos + 4:pos + 8] == b"IEND":
            return None
        pos = end
    return ("truncated PNG: the file ends before its IEND chunk (an interrupted copy or write); "
            "re-create the file from its source")


def face_size_problem(shape: tuple) -> Optional[str]:
    """Why training refuses an image of this (H, W, ...) shape, or None for FACE_SIZE squares."""
    height, width = shape[:2]
    if (height, width) == (FACE_SIZE, FACE_SIZE):
        return None
    return (f"image is {height}x{width}, expected {FACE_SIZE}x{FACE_SIZE} aligned faces; re-pack "
            f"with python -m im2rec --resize {FACE_SIZE}")


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) images -> float32 in [-1, 1], bit-identical to ToTensor+Normalize(0.5, 0.5).

    Contiguous uint8 CPU tensors go through a 256-entry lookup table (cv2.LUT: one pass, several
    times faster than the four elementwise passes); other tensors (CUDA, float) compute it.
    """
    if images.device.type == "cpu" and images.dtype == torch.uint8 and images.is_contiguous() \
            and images.dim() >= 2 and images.numel() > 0:
        # numpy's allocation: glibc keeps reusing the heap block, where torch.empty returned it to
        # the system and page-faulted ~19 MB back in for every batch of 128 (~2x the table's time)
        out = torch.from_numpy(np.empty(images.shape, dtype=np.float32))
        width = images.shape[-1]
        cv2.LUT(images.numpy().reshape(-1, width), _NORMALIZE_LUT, dst=out.numpy().reshape(-1, width))
        return out
    return images.float().div_(255.0).sub_(0.5).div_(0.5)


# the value of every uint8 pixel, computed by the same float32 operations as the general case
_NORMALIZE_LUT = torch.arange(256, dtype=torch.float32).div_(255.0).sub_(0.5).div_(0.5).numpy()
