"""Image decoding and the one input normalisation every backbone expects."""
from __future__ import annotations

import warnings

import numpy as np
import torch

with warnings.catch_warnings():
    # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they stay the fastest here.
    warnings.simplefilter("ignore", DeprecationWarning)
    from torchvision.io import ImageReadMode, decode_image
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

from utils.errors import DataError


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


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) images -> float32 in [-1, 1], bit-identical to ToTensor+Normalize(0.5, 0.5)."""
    return images.float().div_(255.0).sub_(0.5).div_(0.5)
