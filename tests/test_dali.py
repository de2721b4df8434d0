"""The DALI path, run for real on the CPU (device_id=None) with nvidia-dali-cuda120."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

import dataset as ds
from utils.errors import ConfigError

from test_dataset import idx_keys, lst_labels, references

try:
    import nvidia.dali  # noqa: F401
except ImportError as err:  # DALI is in requirement.txt: its absence is a failure, not a skip
    pytest.fail(f"nvidia-dali-cuda120 is not importable ({err}); pip install -r requirement.txt",
                pytrace=False)

pytestmark = pytest.mark.slow


def dali_loader(root, batch_size, **kw):
    kw.setdefault("rank", 0)
    kw.setdefault("world_size", 1)
    return ds.get_dataloader(str(root), 0, batch_size, dali=True, **kw)


def all_batches(dl):
    return [(x.clone(), y.clone()) for x, y in dl]


def match_records(images, labels, folder, expected_labels):
    """Every image equals exactly one record's ToTensor+Normalize; its label is that record's."""
    by_pixels: dict = {}
    for key, ref in references(folder).items():
        by_pixels.setdefault(ref.numpy().tobytes(), []).append(key)
    keys = []
    for image, label in zip(images, labels.tolist()):
        found = by_pixels.get(image.numpy().tobytes(), [])
        assert len(found) == 1
        assert label == expected_labels[found[0]]
        keys.append(found[0])
    return keys


def test_dali_cpu_im2rec_pixels_and_labels(fixtures_dir):
    folder = fixtures_dir / "mx_im2rec"
    dl = dali_loader(folder, 6, aug={"flip": False})
    assert isinstance(dl, ds.DALILoader) and dl.device.type == "cpu"
    assert (len(dl), dl.num_images, dl.num_classes) == (4, 24, 6)
    batches = all_batches(dl)
    assert len(batches) == 4
    for images, labels in batches:
        assert images.shape == (6, 3, 112, 112) and images.dtype == torch.float32
        assert labels.shape == (6,) and labels.dtype == torch.int64
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    keys = match_records(images, labels, folder, lst_labels(folder))
    assert sorted(keys) == sorted(idx_keys(folder))                 # one epoch = every record once


def test_dali_insightface_skips_header_and_takes_label0(fixtures_dir):
    folder = fixtures_dir / "insightface_style"
    dl = dali_loader(folder, 5, aug={"flip": False})
    assert (len(dl), dl.num_images, dl.num_classes) == (3, 15, 5)
    batches = all_batches(dl)
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    expected = {k: (k - 1) // 3 for k in range(1, 16)}             # keys 7, 13 carry label arrays
    assert sorted(match_records(images, labels, folder, expected)) == list(range(1, 16))


def test_dali_multipart_and_flip(fixtures_dir):
    folder = fixtures_dir / "mx_multipart"
    refs = references(folder)
    seen = Counter()
    dl = dali_loader(folder, 5)
    for number in range(4):
        dl.set_epoch(number)
        for images, labels in dl:
            for image, label in zip(images, labels.tolist()):
                ref = refs[label]                                   # label == key here
                same, flipped = torch.equal(image, ref), torch.equal(image, ref.flip(-1))
                assert same or flipped
                seen[flipped] += 1
    assert seen[True] > 0 and seen[False] > 0


def test_dali_two_ranks_disjoint_and_covering(fixtures_dir):
    folder = fixtures_dir / "mx_im2rec"
    labels = lst_labels(folder)
    keys = []
    for rank in (0, 1):
        dl = dali_loader(folder, 4, rank=rank, world_size=2, aug={"flip": False})
        assert len(dl) == 3
        for images, y in all_batches(dl):
            keys += match_records(images, y, folder, labels)
    assert sorted(keys) == sorted(idx_keys(folder))


def test_dali_uneven_shards_same_step_count(fixtures_dir):
    lengths = [len(all_batches(dali_loader(fixtures_dir / "insightface_style", 3, rank=r,
                                           world_size=2))) for r in (0, 1)]
    assert lengths == [2, 2]                                        # 15 images -> 14 = 2 x 7


def test_dali_aug_and_erasing_run_every_epoch(fixtures_dir):
    dl = dali_loader(fixtures_dir / "mx_im2rec", 8, dali_aug=True, aug={"random_erasing": 1.0})
    for number in range(2):
        dl.set_epoch(number)
        batches = all_batches(dl)
        assert len(batches) == 3
        for images, labels in batches:
            assert images.shape == (8, 3, 112, 112) and torch.isfinite(images).all()
            assert images.min() >= -1 and images.max() <= 1
            assert images.eq(0).flatten(1).any(1).all()             # every image has its box
            assert set(labels.tolist()) <= set(range(6))


def test_dali_start_batch_keeps_step_count(fixtures_dir):
    dl = dali_loader(fixtures_dir / "mx_im2rec", 4)
    dl.set_epoch(0, start_batch=2)
    assert len(all_batches(dl)) == 4
    assert len(all_batches(dl)) == 6


def test_dali_randaugment_is_refused(fixtures_dir):
    with pytest.raises(ConfigError, match="RandAugment is not available with dali=True"):
        dali_loader(fixtures_dir / "mx_im2rec", 4, aug={"randaugment": True})
