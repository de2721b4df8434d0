"""Image decoding and the one input normalisation every backbone expects."""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import torch

with warnings.catch_warnings():
    # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they stay the fastest here.
    warnings.simplefilter("ignore", DeprecationWarning)
    from torchvision.io import ImageReadMode, decode_image
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

from utils.errors import DataError

# OpenCV's thread pool spins while it waits; next to DataLoader workers and torch's own threads it
# slowed the main process's batch normalise (bench: 2 workers 5.5k -> 8.8-10.7k img/s with it off).
# The cv2 calls of the data path work on one image or one batch: run them on the calling thread.
cv2.setNumThreads(0)


class ImageDecodeError(DataError):
    """An encoded image could not be decoded."""


def decode_rgb_chw(buf: bytes | bytearray | memoryview | np.ndarray) -> torch.Tensor:
    """Decode JPEG/PNG bytes to a uint8 RGB tensor shaped (3, H, W)."""
    data = torch.frombuffer(bytearray(buf), dtype=torch.uint8) if not isinstance(buf, np.ndarray) \
        else torch.from_numpy(np.ascontiguousarray(buf, dtype=np.uint8))
    if data.numel() == 0:
        raise ImageDecodeError("empty image payload")
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as err:
        raise ImageDecodeError(f"cannot decode image ({data.numel()} bytes): {err}") from None


_CV2_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def decode_bgr_hwc(buf: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode JPEG/PNG/BMP/WebP bytes to a uint8 BGR array shaped (H, W, 3) with OpenCV.

    The fastest decoder on the data loader's path (libjpeg-turbo, same pixels as PIL and
    torchvision); EXIF orientation is ignored, as by decode_rgb_chw and the original.
    """
    data = buf if isinstance(buf, np.ndarray) else np.frombuffer(buf, dtype=np.uint8)
    image = cv2.imdecode(data, _CV2_FLAGS) if data.size else None
    if image is None:
        raise ImageDecodeError(f"cannot decode image ({data.size} bytes): not a complete JPEG, "
                               f"PNG, BMP or WebP")
    return image


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
