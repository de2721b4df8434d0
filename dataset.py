"""Training data: MXNet RecordIO, image folders, synthetic images and DALI, one batch contract.

``get_dataloader`` returns a loader whose iteration yields ``(images, labels)``: float32
``(B, 3, 112, 112)`` RGB normalised by ``utils.image.normalize`` ((x/255 - 0.5) / 0.5, as
ToTensor + Normalize(0.5, 0.5)) and int64 ``(B,)``, on ``cuda:local_rank`` when CUDA is present.

Speed: a worker builds a whole batch in ``FaceDataset.__getitems__``: each record is decoded by
OpenCV (the fastest decoder here) to BGR HWC, split straight into the batch's RGB planes and
flipped in place there, so a uint8 batch leaves the worker with one copy per image. The main
process normalises once per batch: on the GPU, on a side stream, when there is one; otherwise by
a 256-entry lookup table (``utils.image.normalize``). Order: every rank
takes its shard of one permutation per (seed, epoch) (torch's DistributedSampler order),
``drop_last`` keeps the batch size fixed, and ``set_epoch(epoch, start_batch)`` resumes mid-epoch
without decoding the skipped batches. Random decisions (flip, RandAugment) are keyed on (seed,
epoch, position in the epoch), RandomErasing on (seed, epoch, rank, batch): the same samples get
the same augmentation whatever the number of workers and after a resume.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import signal
import tempfile
from typing import Any, Iterator, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from utils import recordio
from utils.data_check import SYNTHETIC, SYNTHETIC_IMAGES, find_layout, inspect_records, record_paths, \
    scan_image_folder
from utils.errors import ConfigError, DataError
from utils.image import FACE_SIZE, decode_bgr_hwc, normalize
from utils.utils_distributed import pick_device, rank_and_world

IMAGE_SIZE = FACE_SIZE
AUG_DEFAULTS = {"flip": True, "random_erasing": 0.0, "randaugment": False,
                "randaugment_num_ops": 2, "randaugment_magnitude": 9}
ERASE_SCALE = (0.02, 0.33)          # torchvision RandomErasing defaults
ERASE_RATIO = (0.3, 3.3)
_ERASE_TRIES = 10
_MASK64 = (1 << 64) - 1

logger = logging.getLogger(__name__)


class BadRecordError(DataError):
    """A training sample could not be read or decoded."""


def get_dataloader(root_dir: str, local_rank: int, batch_size: int, dali: bool = False,
                   dali_aug: bool = False, seed: int = 2048, num_workers: int = 2, *,
                   aug: Optional[dict] = None, rank: Optional[int] = None,
                   world_size: Optional[int] = None, max_bad_samples: int = 0,
                   num_classes: Optional[int] = None, num_image: Optional[int] = None,
                   device: Optional[torch.device] = None):
    """The training loader for ``root_dir``: RecordIO, an image folder, or "synthetic".

    ``aug``: see AUG_DEFAULTS (defaults reproduce the original: flip only). ``num_classes``:
    labels >= it stop training with the file and key. ``max_bad_samples``: undecodable samples
    replaced (with a warning each) before a BadRecordError stops training. ``num_image``: the
    length of "synthetic" data (the config's num_image; 1,000,000 when None, as the original).
    ``rank``, ``world_size``, ``device``: as utils_distributed.setup() decided them; when not given,
    the process group's rank and world size and ``pick_device(local_rank)``.
    """
    aug = resolve_aug(aug)
    rank, world_size = rank_and_world(rank, world_size)
    device = pick_device(local_rank) if device is None else device
    layout = find_layout(root_dir)
    known_classes = None
    if layout == SYNTHETIC:
        dataset: Dataset = SyntheticDataset(SYNTHETIC_IMAGES if num_image is None else num_image)
    elif layout == "recordio":
        dataset = MXFaceDataset(root_dir, local_rank, aug=aug, num_classes=num_classes,
                                budget=BadSampleBudget(max_bad_samples))
        known_classes = inspect_records(root_dir, dataset.imgrec, dataset.imgidx.tolist(),
                                        dataset.header, scan=False).num_classes
    else:
        dataset = ImageFolderDataset(root_dir, aug=aug, num_classes=num_classes,
                                     budget=BadSampleBudget(max_bad_samples))
        known_classes = len(dataset.classes)
    if dali and layout != SYNTHETIC:
        if layout != "recordio":
            raise ConfigError(f"dali=True reads train.rec/train.idx, but {root_dir} is an image "
                              f"folder: pack it with python -m im2rec, or set dali=False")
        return DALILoader(dataset, batch_size, local_rank, rank, world_size, seed, dali_aug, aug,
                          num_classes=known_classes, device=device)
    return FaceDataLoader(dataset, batch_size, local_rank, rank, world_size, seed, num_workers,
                          aug, num_classes=known_classes, device=device)


def aug_from_config(cfg: Any) -> dict:
    """The ``aug`` dict from a config's ``aug_<name>`` keys (aug_flip, aug_random_erasing, ...)."""
    return {key: cfg[f"aug_{key}"] for key in AUG_DEFAULTS if f"aug_{key}" in cfg}


def resolve_aug(aug: Optional[dict]) -> dict:
    """AUG_DEFAULTS updated by ``aug``; unknown keys and bad values raise ConfigError."""
    out = dict(AUG_DEFAULTS)
    for key, value in (aug or {}).items():
        if key not in out:
            raise ConfigError(f"unknown augmentation '{key}': known are {', '.join(AUG_DEFAULTS)}")
        out[key] = value
    if not 0.0 <= float(out["random_erasing"]) <= 1.0:
        raise ConfigError(f"augmentation random_erasing={out['random_erasing']} is a probability: "
                          f"use a value in [0, 1]")
    return out


def mix64(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): independent seeds from (seed, epoch, ...)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h


def _mix64_array(base: int, positions: np.ndarray) -> np.ndarray:
    """mix64(base, p) for an array of positions (uint64 arithmetic wraps like the & mask)."""
    with np.errstate(over="ignore"):
        h = np.uint64(mix64(base)) ^ positions.astype(np.uint64)
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h = h * np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return h


class BadSampleBudget:
    """Distinct bad samples met so far, shared by the DataLoader worker processes of a loader.

    A sample already counted is replaced again without a new warning (e.g. in the next epoch).
    """

    def __init__(self, limit: int):
        self.limit = int(limit)
        ctx = multiprocessing.get_context()
        self._count = ctx.Value("q", 0)
        self._seen = ctx.Array("q", max(self.limit, 1), lock=False)

    def is_known(self, index: int) -> bool:
        return index in self._seen[:min(self._count.value, self.limit)]

    def spend(self, index: int, err: Exception) -> None:
        """Count sample ``index`` as bad; raise (BadRecordError) once more than ``limit`` are."""
        with self._count.get_lock():
            if self.is_known(index):
                return
            used = self._count.value = self._count.value + 1
            if used <= self.limit:
                self._seen[used - 1] = index
        if used > self.limit:
            raise BadRecordError(f"{err} (bad sample {used}, max_bad_samples={self.limit}: fix or "
                                 f"re-pack the data, or raise config.max_bad_samples)")
        logger.warning("skipping bad sample %d of at most %d: %s", used, self.limit, err)


class FaceDataset(Dataset):
    """Samples as (uint8 RGB (3,112,112) tensor, int label), augmented, bad samples replaced.

    An index may be an int or (index, sample_seed); the seed keys the random flip/RandAugment.
    ``__getitems__`` (used by the DataLoader for a whole batch) writes each decoded image
    straight into the batch tensor: decode to BGR HWC, split into the RGB planes, flip the
    planes in place; it returns the collated ``(uint8 (B,3,H,W), int64 (B,))`` batch.
    """

    def __init__(self, aug: Optional[dict] = None, budget: Optional[BadSampleBudget] = None,
                 num_classes: Optional[int] = None):
        self.aug = resolve_aug(aug)
        self.budget = budget or BadSampleBudget(0)
        self.num_classes = num_classes
        self._randaugment = None
        if self.aug["randaugment"]:
            from torchvision.transforms import RandAugment
            self._randaugment = RandAugment(num_ops=int(self.aug["randaugment_num_ops"]),
                                            magnitude=int(self.aug["randaugment_magnitude"]))

    def load_bgr(self, index: int) -> tuple[np.ndarray, int]:
        """Decoded uint8 BGR (H, W, 3) image and label of sample ``index`` (raises DataError)."""
        raise NotImplementedError

    def __getitem__(self, item) -> tuple[torch.Tensor, int]:
        index, sample_seed = _index_and_seed(item)
        image, label = self._load_or_replace(index, sample_seed)
        return self.augment(bgr_to_rgb_chw(image), sample_seed), label

    def __getitems__(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        batch = _new_batch((len(items), 3, IMAGE_SIZE, IMAGE_SIZE))
        labels = []
        for slot, item in zip(batch.numpy(), items):
            if self._randaugment is not None:
                image, label = self[item]
                torch.from_numpy(slot).copy_(image)
            else:
                index, sample_seed = _index_and_seed(item)
                image, label = self._load_or_replace(index, sample_seed)
                split_bgr_into_rgb_planes(image, slot)
                if self.aug["flip"] and (sample_seed >> 32) & 1:
                    rows = slot.reshape(-1, slot.shape[-1])      # the 3 planes as one image
                    cv2.flip(rows, 1, dst=rows)
            labels.append(label)
        return batch, torch.tensor(labels, dtype=torch.int64)

    def augment(self, image: torch.Tensor, sample_seed: int) -> torch.Tensor:
        """RandAugment (if on) then the horizontal flip (p=0.5), decided by ``sample_seed``."""
        if self._randaugment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed & 0x7FFFFFFFFFFFFFFF)
                image = self._randaugment(image)
        if self.aug["flip"] and (sample_seed >> 32) & 1:
            image = hflip(image)
        return image

    def _load_or_replace(self, index: int, sample_seed: int) -> tuple[np.ndarray, int]:
        tries = 0
        while True:
            try:
                image, label = self.load_bgr(index)
                break
            except BadRecordError as err:
                self.budget.spend(index, err)
                tries += 1
                index = mix64(sample_seed, tries) % len(self)
                while self.budget.is_known(index) and tries < 1000:
                    tries += 1
                    index = mix64(sample_seed, tries) % len(self)
        if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(f"{self.where(index)}: image is {image.shape[0]}x{image.shape[1]}, "
                            f"expected {IMAGE_SIZE}x{IMAGE_SIZE} aligned faces; re-pack with "
                            f"python -m im2rec --resize {IMAGE_SIZE}")
        if label < 0 or (self.num_classes is not None and label >= self.num_classes):
            raise DataError(f"{self.where(index)}: label {label} is outside 0..num_classes-1 "
                            f"(num_classes={self.num_classes}); set num_classes = \"auto\" or "
                            f"fix the data")
        return image, label

    def where(self, index: int) -> str:
        """Human-readable location of a sample (file, key, byte offset)."""
        return f"sample {index}"


class MXFaceDataset(FaceDataset):
    """MXNet RecordIO (train.rec + train.idx), with or without the insightface header record."""

    def __init__(self, root_dir: str, local_rank: int = 0, **kwargs):
        # local_rank: the original's signature; the device is the loader's, not the dataset's
        super().__init__(**kwargs)
        self.root_dir = root_dir
        self.path_imgrec, self.path_imgidx = record_paths(root_dir)
        self.imgrec = recordio.MXIndexedRecordIO(self.path_imgidx, self.path_imgrec, "r")
        keys, self.header = recordio.read_layout(self.imgrec)
        self.header0 = None if self.header is None else tuple(int(v) for v in self.header.label[:2])
        self.imgidx = np.asarray(keys, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.imgidx)

    def where(self, index: int) -> str:
        key = int(self.imgidx[index])
        return f"{self.path_imgrec}: key {key} at byte offset {self.imgrec.idx[key]}"

    def load_bgr(self, index: int) -> tuple[np.ndarray, int]:
        key = int(self.imgidx[index])
        try:
            record = self.imgrec.read_idx(key)     # its errors name the file, key and offset
        except recordio.RecordIOError as err:
            raise BadRecordError(_first_line(err)) from None
        try:
            return decode_record(record)
        except DataError as err:
            raise BadRecordError(f"{self.where(index)}: {_first_line(err)}") from None


def decode_record(record: bytes) -> tuple[np.ndarray, int]:
    """(BGR HWC image, class) of one train.rec record, as training reads it (also im2rec --check's judge)."""
    header, payload = recordio.unpack(record)
    return decode_bgr_hwc(payload), int(recordio.first_label(header))


class ImageFolderDataset(FaceDataset):
    """One sub-folder of images per identity; classes in sorted folder order (as ImageFolder)."""

    def __init__(self, root_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.root_dir = root_dir
        self.classes, self.samples = scan_image_folder(root_dir)

    def __len__(self) -> int:
        return len(self.samples)

    def where(self, index: int) -> str:
        return self.samples[index][0]

    def load_bgr(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                data = f.read()
            try:
                image = decode_bgr_hwc(data)
            except DataError:
                image = _decode_with_pil(data)      # formats OpenCV lacks (e.g. GIF)
        except (OSError, DataError) as err:
            raise BadRecordError(f"{path}: {_first_line(err)}") from None
        return image, label


class SyntheticDataset(Dataset):
    """One random image (label 1) repeated ``num_images`` times (the original: 1,000,000 always).

    The length follows the config's ``num_image``, so the schedule computed from it ends with the
    epochs (with a fixed length the original's 3millions.py trained on at LR 0).
    """

    def __init__(self, num_images: int = SYNTHETIC_IMAGES):
        img = np.random.randint(0, 255, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        self.img = torch.from_numpy(img).permute(2, 0, 1)   # CHW view of HWC memory, as decoders
        self.label = 1
        self.num_images = int(num_images)

    def __getitem__(self, item) -> tuple[torch.Tensor, int]:
        return self.img, self.label

    def __len__(self) -> int:
        return self.num_images


def hflip(image: torch.Tensor) -> torch.Tensor:
    """Left-right flip of a uint8 (3, H, W) image; cv2.flip when its memory is HWC (as decoded).

    cv2.flip copies HWC pixels several times faster than torch.flip; the result is again a CHW
    view of HWC memory. Other layouts use torch.flip.
    """
    hwc = image.permute(1, 2, 0)
    if image.dtype == torch.uint8 and hwc.is_contiguous():
        return torch.from_numpy(cv2.flip(hwc.numpy(), 1)).permute(2, 0, 1)
    return image.flip(-1)


def _index_and_seed(item) -> tuple[int, int]:
    """(index, sample_seed) of a sampler item; a plain index gets a seed from torch's RNG."""
    index, sample_seed = item if isinstance(item, tuple) else (item, None)
    if sample_seed is None:
        sample_seed = mix64(int(torch.randint(0, 1 << 62, ())))
    return int(index), sample_seed


def split_bgr_into_rgb_planes(image: np.ndarray, planes: np.ndarray) -> None:
    """Write a uint8 BGR (H, W, 3) image into uint8 (3, H, W) ``planes`` as RGB (one cv2.split)."""
    cv2.split(image, [planes[2], planes[1], planes[0]])


def bgr_to_rgb_chw(image: np.ndarray) -> torch.Tensor:
    """uint8 BGR (H, W, 3) -> a new uint8 RGB (3, H, W) tensor."""
    out = np.empty((3,) + image.shape[:2], dtype=np.uint8)
    split_bgr_into_rgb_planes(image, out)
    return torch.from_numpy(out)


def _decode_with_pil(data: bytes) -> np.ndarray:
    import io

    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as img:
            array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot decode image ({len(data)} bytes): {err}") from None
    return np.ascontiguousarray(array[:, :, ::-1])


def _outside_epoch(start_batch: int, batches_per_epoch: int) -> str:
    return (f"the checkpoint resumes at batch {start_batch} of its epoch, but an epoch now has "
            f"{batches_per_epoch} batches (data, num_image or batch size changed): resume with the "
            f"data of the checkpoint's run, or start fresh")


def _first_line(err: Exception) -> str:
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__


class DistributedBatchSampler(Sampler):
    """Batches of (index, sample_seed) for one rank: torch DistributedSampler order + drop_last.

    The epoch's permutation is ``randperm(n)`` seeded with ``seed + epoch``, padded by wrapping
    to a multiple of ``world_size``; rank r takes positions r, r+W, ..., so global batch k is the
    positions [k*G, (k+1)*G) of the permutation (G = batch_size * world_size). The resume position
    is a sample position of the epoch (``start_sample``; ``start_batch`` = start_batch * G): every
    iteration of the epoch set by ``set_epoch`` starts there, whatever the world size that
    consumed the samples before it (elastic resume). A sample's seed is keyed on its position.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 2048, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world_size {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0
        self.start_batch = self.start_sample = 0
        self.per_rank = math.ceil(num_samples / world_size)
        self.batches_per_epoch = self.per_rank // batch_size
        self.global_batch = batch_size * world_size
        self.padded = self.per_rank * world_size

    def set_epoch(self, epoch: int, start_batch: int = 0, start_sample: Optional[int] = None) -> None:
        """The next iterations yield ``epoch`` from ``start_sample`` (default: batch ``start_batch``) on."""
        if start_sample is None:
            if not 0 <= start_batch <= self.batches_per_epoch:
                raise ConfigError(_outside_epoch(start_batch, self.batches_per_epoch))
            start_sample = start_batch * self.global_batch
        if not 0 <= start_sample <= self.padded:
            raise ConfigError(f"the checkpoint resumes at sample {start_sample} of its epoch, but an epoch now "
                              f"has {self.padded} positions (data or num_image changed): resume with the data "
                              f"of the checkpoint's run, or start fresh")
        self.epoch, self.start_sample = int(epoch), int(start_sample)
        self.start_batch = self.start_sample // self.global_batch

    def epoch_order(self) -> torch.Tensor:
        """The epoch's permutation, padded to a multiple of world_size (every rank's positions)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        if self.padded > self.num_samples:               # pad by wrapping, as DistributedSampler
            order = order.repeat(math.ceil(self.padded / self.num_samples))[:self.padded]
        return order

    def __iter__(self) -> Iterator[list]:
        # the position belongs to the epoch, not to the first iterator: torch's multi-process
        # loader calls iter() on its batch sampler twice per epoch, so a reset here lost it.
        order, base = self.epoch_order().numpy(), mix64(self.seed, self.epoch)
        within = self.rank + self.world_size * np.arange(self.batch_size)
        for batch in range(len(self)):
            positions = self.start_sample + batch * self.global_batch + within
            yield list(zip(order[positions].tolist(), _mix64_array(base, positions).tolist()))

    def __len__(self) -> int:
        return (self.padded - self.start_sample) // self.global_batch


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _WorkerInit:
    """Seeds python, numpy and torch in a worker from seed + num_workers * rank + worker id, and
    makes the worker ignore SIGINT/SIGTERM.

    A cluster stops a job by signalling its whole process group (torchrun, scancel, timeout):
    a worker that died of it made torch's SIGCHLD handler raise in the main process before the
    graceful stop could write its checkpoint. The main process alone decides, and it stops the
    workers itself. The signals are blocked while workers start (``_start_workers``), so one
    that arrives before this runs stays pending and is discarded here.
    """

    def __init__(self, seed: int, rank: int, num_workers: int):
        self.seed, self.rank, self.num_workers = seed, rank, num_workers

    def __call__(self, worker_id: int) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        import random
        worker_seed = self.seed + self.num_workers * self.rank + worker_id
        random.seed(worker_seed)
        np.random.seed(worker_seed % (1 << 32))
        torch.manual_seed(worker_seed)


def erase_boxes(n: int, p: float, generator: torch.Generator, height: int = IMAGE_SIZE,
                width: int = IMAGE_SIZE) -> torch.Tensor:
    """(n, 4) int64 boxes (top, left, h, w) of torchvision RandomErasing, h = 0 where none.

    Same distribution as RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3)): up to 10 tries
    of area and log-uniform aspect ratio, the first box that fits wins, none if no try fits.
    """
    area = height * width
    log_ratio = torch.tensor(ERASE_RATIO).log()
    erase_area = area * torch.empty(n, _ERASE_TRIES).uniform_(*ERASE_SCALE, generator=generator)
    aspect = torch.exp(torch.empty(n, _ERASE_TRIES).uniform_(float(log_ratio[0]), float(log_ratio[1]),
                                                             generator=generator))
    h = torch.round(torch.sqrt(erase_area * aspect)).long()
    w = torch.round(torch.sqrt(erase_area / aspect)).long()
    fits = (h < height) & (w < width)
    first = torch.where(fits.any(1), fits.long().argmax(1), -1)
    rows = torch.arange(n)
    h, w = h[rows, first.clamp(min=0)], w[rows, first.clamp(min=0)]
    on = (first >= 0) & (torch.rand(n, generator=generator) < p)
    top = (torch.rand(n, generator=generator) * (height - h + 1)).long()
    left = (torch.rand(n, generator=generator) * (width - w + 1)).long()
    return torch.stack([top, left, torch.where(on, h, 0), torch.where(on, w, 0)], 1)


def apply_erasing(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Set each image's box to 0 (the normalised value: RandomErasing(value=0) after Normalize)."""
    boxes = boxes.to(images.device)
    ys = torch.arange(images.shape[-2], device=images.device)
    xs = torch.arange(images.shape[-1], device=images.device)
    top, left, h, w = (boxes[:, k, None] for k in range(4))
    in_rows = (ys >= top) & (ys < top + h)
    in_cols = (xs >= left) & (xs < left + w)
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return images.masked_fill_(mask, 0.0)


def collate_uint8(samples) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 (B, 3, H, W), int64 (B,)) from (image, label) samples; in shared memory in workers.

    A batch already collated by ``FaceDataset.__getitems__`` passes through. Decoded images
    that are CHW views of HWC memory are transposed by cv2.split per image into the batch's
    planes (about twice as fast as torch.stack).
    """
    if isinstance(samples, tuple) and len(samples) == 2 and isinstance(samples[1], torch.Tensor):
        return samples
    images, labels = zip(*samples)
    batch = _new_batch((len(images),) + tuple(images[0].shape))
    for slot, image in zip(batch.numpy(), images):
        hwc = image.permute(1, 2, 0)
        if image.dtype == torch.uint8 and len(slot) == 3 and hwc.is_contiguous():
            cv2.split(hwc.numpy(), list(slot))
        else:
            torch.from_numpy(slot).copy_(image)
    return batch, torch.tensor(labels, dtype=torch.int64)


def _new_batch(shape: tuple) -> torch.Tensor:
    """An uninitialised uint8 batch: in shared memory in a DataLoader worker (it crosses to the main
    process), else in numpy's heap memory (torch.empty page-faults a large tensor in afresh each time)."""
    if get_worker_info() is not None:
        new_shared = getattr(torch.UntypedStorage, "_new_shared", None)    # what default_collate uses
        if new_shared is None:
            return torch.empty(shape, dtype=torch.uint8).share_memory_()
        return torch.empty(0, dtype=torch.uint8).set_(new_shared(int(np.prod(shape)))).view(shape)
    return torch.from_numpy(np.empty(shape, dtype=np.uint8))


class _BatchFinisher:
    """Normalise a uint8 batch and apply the batch-level RandomErasing (keyed on the batch)."""

    def __init__(self, seed: int, rank: int, erase_p: float):
        self.seed, self.rank, self.erase_p = seed, rank, float(erase_p)

    def __call__(self, images: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        images = normalize(images)
        if self.erase_p > 0:
            g = torch.Generator()
            g.manual_seed(mix64(self.seed, epoch, self.rank, batch) & 0x7FFFFFFFFFFFFFFF)
            images = apply_erasing(images, erase_boxes(images.shape[0], self.erase_p, g))
        return images


class FaceDataLoader:
    """Iterates (images, labels) batches on the training device; see the module docstring."""

    def __init__(self, dataset: Dataset, batch_size: int, local_rank: int = 0, rank: int = 0,
                 world_size: int = 1, seed: int = 2048, num_workers: int = 2,
                 aug: Optional[dict] = None, num_classes: Optional[int] = None,
                 device: Optional[torch.device] = None):
        aug = resolve_aug(aug)
        self.dataset = dataset
        self.num_images = len(dataset)
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.device = pick_device(local_rank) if device is None else device
        if self.num_images < world_size * batch_size:
            raise ConfigError(f"{self.num_images} images cannot fill one batch of {batch_size} on "
                              f"each of {world_size} processes: lower batch_size")
        self.sampler = DistributedBatchSampler(self.num_images, batch_size, rank, world_size, seed)
        self.finish = _BatchFinisher(seed, rank, aug["random_erasing"])
        self.loader = DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=num_workers,
            collate_fn=collate_uint8, pin_memory=self.device.type == "cuda",
            worker_init_fn=_WorkerInit(seed, rank, num_workers) if num_workers else None,
            prefetch_factor=4 if num_workers else None)

    def __len__(self) -> int:
        return self.sampler.batches_per_epoch

    def set_epoch(self, epoch: int, start_batch: int = 0, start_sample: Optional[int] = None) -> None:
        """Order of ``epoch``; the next iteration starts at batch ``start_batch`` (or sample position
        ``start_sample``, after a resume on another world size) of it."""
        self.sampler.set_epoch(epoch, start_batch, start_sample)

    def state_dict(self) -> dict:
        """Nothing beyond (epoch, batch): the order is a function of them (DALI loaders hold more)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: ``set_epoch(epoch, start_batch)`` replays the order exactly."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start = self.sampler.epoch, self.sampler.start_batch
        batches = _start_workers(self.loader)
        try:
            if self.device.type != "cuda":
                for number, (images, labels) in enumerate(batches, start):
                    yield self.finish(images, epoch, number), labels
            else:
                yield from self._cuda_prefetch(batches, epoch, start)
        except DataError as err:
            raise unwrap_worker_error(err) from None
        finally:
            # stop the workers now on an error or an early break: left to the garbage collector,
            # torch's shutdown waits 5 s per worker that is blocked on its index queue
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _cuda_prefetch(self, batches, epoch: int, start: int):
        """Copy and normalise batch k+1 on a side stream while the caller trains on batch k."""
        stream = torch.cuda.Stream(self.device)

        def load(number: int):
            item = next(batches, None)
            if item is None:
                return None
            with torch.cuda.stream(stream):
                images = item[0].to(self.device, non_blocking=True)
                labels = item[1].to(self.device, non_blocking=True)
                return self.finish(images, epoch, number), labels

        number = start
        ready = load(number)
        while ready is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
            for tensor in ready:
                tensor.record_stream(torch.cuda.current_stream(self.device))
            number += 1
            upcoming = load(number)
            yield ready
            ready = upcoming


class _SampleCheck(Dataset):
    """Decodes sample i of a dataset and returns its problem ('' when training can use it)."""

    def __init__(self, dataset: FaceDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> str:
        try:
            image, label = self.dataset.load_bgr(index)
        except DataError as err:
            return _first_line(err)
        if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            return (f"{self.dataset.where(index)}: image is {image.shape[0]}x{image.shape[1]}, expected "
                    f"{IMAGE_SIZE}x{IMAGE_SIZE}")
        num_classes = self.dataset.num_classes
        if label < 0 or (num_classes is not None and label >= num_classes):
            return f"{self.dataset.where(index)}: label {label} is outside 0..{num_classes}-1"
        return ""


def check_all_samples(root_dir: str, num_workers: int = 2, max_bad_samples: int = 0,
                      num_classes: Optional[int] = None) -> int:
    """check_data="full": decode every sample once before training; returns the number of bad ones.

    More than ``max_bad_samples`` bad samples raise a DataError naming the first ones (fewer are
    warned about and replaced during training as usual).
    """
    layout = find_layout(root_dir)
    if layout == SYNTHETIC:
        return 0
    kind = MXFaceDataset if layout == "recordio" else ImageFolderDataset
    checker = _SampleCheck(kind(root_dir, num_classes=num_classes))
    loader = DataLoader(checker, batch_size=256, num_workers=num_workers, collate_fn=list,
                        worker_init_fn=_WorkerInit(0, 0, num_workers) if num_workers else None)
    problems = [p for batch in _start_workers(loader) for p in batch if p]
    logger.info("check_data=full: decoded %d samples of %s, %d bad", len(checker), root_dir, len(problems))
    for problem in problems[:max_bad_samples]:
        logger.warning("bad sample: %s", problem)
    if len(problems) > max_bad_samples:
        raise DataError(f"{len(problems)} of {len(checker)} samples cannot be used (max_bad_samples="
                        f"{max_bad_samples}); first: {problems[0]}: fix or re-pack the data "
                        f"(python -m im2rec --check lists them all), or raise max_bad_samples")
    return len(problems)


def _start_workers(loader: DataLoader):
    """iter(loader) with SIGINT/SIGTERM blocked while the worker processes fork (see _WorkerInit)."""
    if loader.num_workers == 0:
        return iter(loader)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unwrap_worker_error(err: DataError) -> DataError:
    """The error a DataLoader worker raised, without the worker traceback torch wraps around it.

    torch re-raises a worker's exception as ``type(err)("Caught X in DataLoader worker process
    N.\nOriginal Traceback ...\nX: <message>")``; the message is the last line after "X: ".
    """
    text = str(err)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return err
    name = type(err).__name__
    last = text.rstrip().splitlines()[-1]
    message = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return type(err)(message)


class DALILoader:
    """NVIDIA DALI pipeline over train.rec with the same batch contract as FaceDataLoader.

    ``fn.readers.mxnet`` sharded by rank (shard_id/num_shards, shuffled, pad_last_batch=False,
    last partial batch dropped), decoded on the GPU ('mixed') when CUDA is present, on the CPU
    (``device_id=None``) otherwise. insightface files are read through a filtered copy of the
    .idx (image keys only, header and identity records left out), the class is label[0], and
    the .idx is trimmed to a multiple of world_size so every rank runs the same number of steps.
    Augmentations: flip; ``dali_aug`` as the original (random down/up-resize p=0.1, gaussian
    blur p=0.2, HSV p=0.2, grey p=0.1). The pipeline outputs uint8 CHW and the batch is
    normalised by utils.image.normalize, so pixels match the PyTorch path bit for bit.
    RandomErasing: the boxes are drawn per batch as in the PyTorch path and painted after
    normalisation, because fn.erase would paint the uint8 image, where RandomErasing's value 0
    after Normalize (pixel 127.5) does not exist. RandAugment cannot be expressed with DALI
    operators here and raises ConfigError. DALI owns the sample order; resume is exact through
    DALI's own checkpointing: ``state_dict()`` holds the pipeline's reader and random-operator
    state after the batches consumed so far, ``load_state_dict()`` rebuilds the pipeline from it,
    and the next ``set_epoch(epoch, start_batch)`` continues there. Without such a state (an old
    checkpoint) ``start_batch`` skips by reading those batches (the step count is exact, the
    samples are not; a warning says so).
    """

    def __init__(self, dataset: MXFaceDataset, batch_size: int, local_rank: int = 0,
                 rank: int = 0, world_size: int = 1, seed: int = 2048, dali_aug: bool = False,
                 aug: Optional[dict] = None, num_classes: Optional[int] = None,
                 num_threads: int = 2, device: Optional[torch.device] = None):
        aug = resolve_aug(aug)
        if aug["randaugment"]:
            raise ConfigError("RandAugment is not available with dali=True (DALI has no "
                              "equivalent operators here): set dali=False or randaugment off")
        self.dataset = dataset
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.device = pick_device(local_rank) if device is None else device
        self.finish = _BatchFinisher(seed, rank, aug["random_erasing"])
        self._tmpdir = tempfile.mkdtemp(prefix="arcface_dali_")
        idx_path, self.num_images = self._write_index(dataset, world_size)
        per_rank = self.num_images // world_size
        if per_rank < batch_size:
            raise ConfigError(f"{self.num_images} images cannot fill one batch of {batch_size} on "
                              f"each of {world_size} processes: lower batch_size")
        self.batches_per_epoch = per_rank // batch_size
        self.epoch, self._skip, self._start = 0, 0, 0
        self._position = (0, 0)              # (epoch, batch) of the next batch the pipeline yields
        self._restored: Optional[tuple[int, int]] = None
        self._build_args = (dataset.path_imgrec, idx_path, seed, dali_aug, aug["flip"], num_threads)
        self._iter = self._build(*self._build_args)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __del__(self):
        shutil.rmtree(getattr(self, "_tmpdir", ""), ignore_errors=True)

    def state_dict(self) -> dict:
        """The pipeline's position after the batches handed out so far (DALI checkpoint)."""
        epoch, batch = self._position
        return {"dali_checkpoint": self._iter.checkpoints()[0], "epoch": epoch, "batch": batch}

    def load_state_dict(self, state: dict) -> None:
        """Rebuild the pipeline at a saved position; the matching set_epoch continues there."""
        if "dali_checkpoint" not in state:
            return                       # an older checkpoint: set_epoch skips by reading, with a warning
        self._iter = self._build(*self._build_args, checkpoint=state["dali_checkpoint"])
        self._restored = (int(state["epoch"]), int(state["batch"]))

    def set_epoch(self, epoch: int, start_batch: int = 0, start_sample: Optional[int] = None) -> None:
        if start_sample is not None:     # DALI's order is its own: resume at the nearest batch
            start_batch = min(start_sample // (self.batch_size * self.world_size), self.batches_per_epoch)
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ConfigError(_outside_epoch(start_batch, self.batches_per_epoch))
        restored, self._restored = self._restored, None
        self.epoch, self._start, self._skip = int(epoch), int(start_batch), 0
        self._position = (self.epoch, self._start)
        if restored is not None and restored != (self.epoch, self._start):
            raise ConfigError(f"the DALI pipeline state was saved at epoch {restored[0]} batch "
                              f"{restored[1]}, but training resumes at epoch {epoch} batch {start_batch}: "
                              f"the checkpoint is inconsistent; resume from another one")
        if start_batch and restored is None:
            logger.warning("no DALI pipeline state in the checkpoint (written by an older version): "
                           "skipping %d batches of epoch %d by reading them (the step count is exact, "
                           "the samples are not)", start_batch, epoch)
            self._skip = int(start_batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skip, self._skip = self._skip, 0
        start, self._start = self._start, 0      # a second iteration is DALI's next epoch
        # one DALI epoch (auto_reset at its end); after a restore it holds the epoch's remaining batches
        for number, out in enumerate(self._iter, start - skip):
            if number < start:
                continue
            images = out[0]["data"].to(self.device, non_blocking=True)
            labels = out[0]["label"].reshape(-1).to(self.device, non_blocking=True).long()
            self._position = (self.epoch, number + 1)
            yield self.finish(images, self.epoch, number), labels
        self._position = (self.epoch + 1, 0)

    def _write_index(self, dataset: MXFaceDataset, world_size: int) -> tuple[str, int]:
        """A .idx with the image keys only, trimmed to a multiple of world_size."""
        keys = dataset.imgidx.tolist()
        keep = len(keys) - len(keys) % world_size
        if dataset.header0 is None and keep == len(keys):
            return dataset.path_imgidx, keep
        path = os.path.join(self._tmpdir, "train.idx")
        recordio.write_index(path, dataset.imgrec, keys[:keep])
        return path, keep

    def _build(self, rec_path: str, idx_path: str, seed: int, dali_aug: bool, flip: bool,
               num_threads: int, checkpoint: Optional[str] = None):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali.pipeline import Pipeline
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        gpu = self.device.type == "cuda"
        gpu_id = (torch.cuda.current_device() if self.device.index is None else self.device.index) if gpu else None
        pipe = Pipeline(batch_size=self.batch_size, num_threads=num_threads,
                        device_id=gpu_id, seed=(seed + self.rank) % (1 << 31),
                        prefetch_queue_depth=2, enable_checkpointing=True, checkpoint=checkpoint)
        with pipe:
            jpegs, labels = fn.readers.mxnet(
                path=rec_path, index_path=idx_path, initial_fill=32768,
                num_shards=self.world_size, shard_id=self.rank, random_shuffle=True,
                pad_last_batch=False, name="reader")
            images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu",
                                       output_type=types.RGB)
            if dali_aug:
                images = _dali_original_aug(fn, types, images)
            mirror = fn.random.coin_flip(probability=0.5) if flip else 0
            images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW",
                                              mirror=mirror)
            pipe.set_outputs(images, labels[0])
        pipe.build()
        return DALIGenericIterator([pipe], ["data", "label"], reader_name="reader",
                                   last_batch_policy=LastBatchPolicy.DROP, auto_reset=True)


def _dali_original_aug(fn: Any, types: Any, images: Any) -> Any:
    """The original's dali_aug: resize down/up p=0.1, blur p=0.2, HSV p=0.2, grey p=0.1."""
    def choose(condition, true_case, false_case):
        return condition * true_case + (condition ^ True) * false_case

    resize = fn.random.coin_flip(probability=0.1)
    size = fn.random.uniform(range=(int(IMAGE_SIZE * 0.5), int(IMAGE_SIZE * 0.8)), dtype=types.FLOAT)
    blur = fn.random.coin_flip(probability=0.2)
    window = fn.random.uniform(range=(1, 2), dtype=types.INT32)
    hsv = fn.random.coin_flip(probability=0.2)
    hue = fn.random.uniform(range=(0.0, 20.0), dtype=types.FLOAT)
    saturation = fn.random.uniform(range=(1.0, 1.2), dtype=types.FLOAT)
    keep_colour = fn.cast(fn.random.coin_flip(probability=0.9), dtype=types.FLOAT)

    images = fn.cast(images, dtype=types.UINT8)
    small = fn.resize(images, resize_x=size, resize_y=size)
    images = choose(resize, fn.resize(small, size=(IMAGE_SIZE, IMAGE_SIZE)), images)
    images = choose(blur, fn.gaussian_blur(images, window_size=window * 2 + 1), images)
    images = choose(hsv, fn.hsv(images, hue=hue, saturation=saturation), images)
    return fn.hsv(images, saturation=keep_colour)
