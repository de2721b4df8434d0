"""dataset.py: RecordIO layouts, image folders, synthetic data, order, sharding, resume, bad records."""
from __future__ import annotations

import functools
import io
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

import dataset as ds
from utils import recordio
from utils.errors import ConfigError, DataError


def idx_keys(folder: Path) -> list[int]:
    return [int(line.split("\t")[0]) for line in (folder / "train.idx").read_text().splitlines() if line]


def lst_labels(folder: Path) -> dict[int, int]:
    rows = [line.split("\t") for line in (folder / "train.lst").read_text().splitlines() if line]
    return {int(r[0]): int(float(r[1])) for r in rows}


def reference(payload: bytes) -> torch.Tensor:
    """What the original's ToTensor + Normalize(0.5, 0.5) gives for an encoded image."""
    pil = Image.open(io.BytesIO(payload)).convert("RGB")
    return transforms.Normalize([0.5] * 3, [0.5] * 3)(transforms.ToTensor()(pil))


def record_payloads(folder: Path) -> dict[int, bytes]:
    rec = recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "r")
    return {k: recordio.unpack(rec.read_idx(k))[1] for k in rec.keys}


@functools.lru_cache(maxsize=None)
def references(folder: Path) -> dict[int, torch.Tensor]:
    """reference() of every image record of a fixture folder, by key."""
    return {k: reference(p) for k, p in record_payloads(folder).items() if p}


def loader(root, batch_size, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("rank", 0)
    kw.setdefault("world_size", 1)
    return ds.get_dataloader(str(root), 0, batch_size, **kw)


def epoch(dl, number=0, start_batch=0):
    dl.set_epoch(number, start_batch)
    return [(x.clone(), y.clone()) for x, y in dl]


def sampled(dl) -> list[int]:
    """The sample indices the loader's sampler hands out this epoch, in order."""
    return [index for batch in dl.sampler for index, _ in batch]


def write_rec(folder: Path, records: list[tuple[int, object, bytes]]) -> Path:
    """train.rec/.idx with (key, label, payload) records, written by utils.recordio."""
    folder.mkdir(parents=True, exist_ok=True)
    w = recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "w")
    for key, label, payload in records:
        w.write_idx(key, recordio.pack(recordio.IRHeader(0, label, key, 0), payload))
    w.close()
    return folder


# --- layouts and labels -------------------------------------------------------------------------

def test_mx_im2rec_uses_every_key_in_idx_order(fixtures_dir):
    folder = fixtures_dir / "mx_im2rec"
    data = ds.MXFaceDataset(str(folder))
    keys, labels = idx_keys(folder), lst_labels(folder)
    assert data.imgidx.tolist() == keys and keys[0] != 0          # key 0 is an ordinary image
    assert [data.load_bgr(i)[1] for i in range(len(data))] == [labels[k] for k in keys]


def test_insightface_header_and_label_arrays(fixtures_dir):
    data = ds.MXFaceDataset(str(fixtures_dir / "insightface_style"))
    assert data.imgidx.tolist() == list(range(1, 16))              # header: keys 1..label[0]-1
    assert data.header0 == (16, 21)
    labels = {int(k): data.load_bgr(i)[1] for i, k in enumerate(data.imgidx)}
    assert [labels[k] for k in range(1, 16)] == [(k - 1) // 3 for k in range(1, 16)]
    assert labels[7] == 2 and labels[13] == 4                       # label arrays -> label[0]
    dl = loader(fixtures_dir / "insightface_style", 5)
    num_classes = int((fixtures_dir / "insightface_style" / "property").read_text().split(",")[0])
    assert (dl.num_images, dl.num_classes, len(dl)) == (15, num_classes, 3)


def test_multipart_records_decode(fixtures_dir):
    data = ds.MXFaceDataset(str(fixtures_dir / "mx_multipart"))
    payloads = record_payloads(fixtures_dir / "mx_multipart")
    # mean R of mx.image.imdecode per key, from fixtures/MANIFEST.md
    mean_r = {0: 137.03, 1: 135.13, 2: 181.39, 3: 178.25, 4: 163.41}
    for i, key in enumerate(data.imgidx.tolist()):
        image, label = data[i, 0]                                  # sample seed 0: not flipped
        assert label == key                                         # key 3: label [3.0, 0.0]
        assert image.shape == (3, 112, 112) and image.dtype == torch.uint8
        assert image[0].double().mean().item() == pytest.approx(mean_r[key], abs=0.006)
        assert torch.equal(ds.normalize(image), reference(payloads[key]))


def test_pixels_equal_totensor_normalize(fixtures_dir):
    folder = fixtures_dir / "mx_im2rec"
    dl = loader(folder, 24, aug={"flip": False})
    images, labels = epoch(dl)[0]
    keys = dl.dataset.imgidx[sampled(dl)].tolist()
    assert images.dtype == torch.float32 and images.shape == (24, 3, 112, 112)
    assert labels.dtype == torch.int64 and labels.tolist() == [lst_labels(folder)[k] for k in keys]
    for image, key in zip(images, keys):
        assert torch.equal(image, references(folder)[key])


def test_flip_is_horizontal_and_random(fixtures_dir):
    folder = fixtures_dir / "mx_im2rec"
    dl = loader(folder, 24)
    images, _ = epoch(dl)[0]
    keys = dl.dataset.imgidx[sampled(dl)].tolist()
    flipped = []
    for image, key in zip(images, keys):
        ref = references(folder)[key]
        assert torch.equal(image, ref) or torch.equal(image, ref.flip(-1))
        flipped.append(not torch.equal(image, ref))
    assert 3 <= sum(flipped) <= 21


def test_normalize_lookup_table_equals_totensor_normalize_for_every_pixel_value():
    from utils.image import normalize
    values = torch.arange(256, dtype=torch.uint8).repeat(3, 2, 1)            # (3, 2, 256) CHW
    expected = transforms.Normalize([0.5] * 3, [0.5] * 3)(values.float() / 255)
    assert torch.equal(normalize(values), expected)                          # table (cv2.LUT)
    assert torch.equal(normalize(values.float()), expected)                  # elementwise
    assert torch.equal(normalize(values.transpose(1, 2)), expected.transpose(1, 2))


def test_decode_bgr_hwc_refuses_truncated_and_foreign_bytes(fixtures_dir):
    from utils.image import ImageDecodeError, decode_bgr_hwc
    payload = next(p for p in record_payloads(fixtures_dir / "mx_im2rec").values() if p)
    image = decode_bgr_hwc(payload)
    assert image.shape == (112, 112, 3) and image.dtype.name == "uint8"
    for bad in (payload[: len(payload) // 2], b"not an image", b""):
        with pytest.raises(ImageDecodeError, match=f"cannot decode image \\({len(bad)} bytes\\)"):
            decode_bgr_hwc(bad)


def test_hflip_matches_torch_flip_for_any_layout():
    hwc_memory = torch.randint(0, 256, (112, 112, 3), dtype=torch.uint8).permute(2, 0, 1)
    for image in (hwc_memory, hwc_memory.contiguous()):
        flipped = ds.hflip(image)
        assert torch.equal(flipped, image.flip(-1)) and flipped.shape == (3, 112, 112)


def test_image_folder(fixtures_dir):
    root = fixtures_dir / "mx_im2rec" / "images"
    dl = loader(root, 8, aug={"flip": False})
    assert (dl.num_images, dl.num_classes, len(dl)) == (24, 6, 3)
    order = sampled(dl)
    images, labels = epoch(dl)[0]
    for image, label, index in zip(images, labels.tolist(), order[:8]):
        path, expected = dl.dataset.samples[index]
        assert label == expected == sorted(p.name for p in root.iterdir()).index(Path(path).parent.name)
        assert torch.equal(image, reference(Path(path).read_bytes()))


def test_rank_world_and_device_given_are_used(fixtures_dir, monkeypatch):
    """train_v2 passes what setup() decided: no second device choice, the shard of the given rank."""
    def second_choice(local_rank):
        raise AssertionError("the device was decided again")
    monkeypatch.setattr(ds, "pick_device", second_choice)
    dl = ds.get_dataloader(str(fixtures_dir / "mx_im2rec"), 0, 4, num_workers=0, rank=1, world_size=2,
                           device=torch.device("cpu"))
    assert (dl.rank, dl.world_size, dl.device) == (1, 2, torch.device("cpu"))
    monkeypatch.undo()
    alone = ds.get_dataloader(str(fixtures_dir / "mx_im2rec"), 0, 4, num_workers=0)   # the original's arguments
    assert (alone.rank, alone.world_size) == (0, 1) and len(alone) == 6


def test_synthetic():
    dl = loader("synthetic", 4)
    assert len(dl) == 1_000_000 // 4 and dl.num_images == 1_000_000
    images, labels = next(iter(dl))
    assert images.shape == (4, 3, 112, 112) and images.dtype == torch.float32
    assert labels.tolist() == [1, 1, 1, 1]
    assert torch.equal(images[0], images[3])
    pixels = (images * 127.5 + 127.5).round()
    assert torch.equal(ds.normalize(pixels.to(torch.uint8)), images)


# --- order, sharding, resume ---------------------------------------------------------------------

def test_sharding_two_ranks_disjoint_and_covering(fixtures_dir):
    folder = fixtures_dir / "mx_im2rec"
    seen = []
    for rank in (0, 1):
        dl = loader(folder, 4, rank=rank, world_size=2)
        assert len(dl) == 3
        seen.append([i for batch in dl.sampler for i, _ in batch])
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(24))
    # the same permutation and split as torch's DistributedSampler (the original's order)
    for rank in (0, 1):
        ref = torch.utils.data.DistributedSampler(range(24), num_replicas=2, rank=rank, seed=2048)
        assert seen[rank] == list(ref)


def test_sharding_pads_uneven_and_keeps_batch_count(fixtures_dir):
    counts = []
    for rank in range(4):
        dl = loader(fixtures_dir / "insightface_style", 2, rank=rank, world_size=4)
        batches = list(dl.sampler)
        counts.append(len(batches))
        assert all(len(b) == 2 for b in batches)
        labels = [y for _, y in dl]
        assert all(y.shape == (2,) for y in labels)
    assert counts == [2, 2, 2, 2]


def test_set_epoch_changes_order_deterministically(fixtures_dir):
    folder = fixtures_dir / "mx_im2rec"
    a, b = loader(folder, 4), loader(folder, 4)
    order = {}
    for e in (0, 1):
        a.set_epoch(e)
        b.set_epoch(e)
        order[e] = sampled(a)
        assert order[e] == sampled(b)
    assert order[0] != order[1]
    assert sampled(loader(folder, 4, seed=7)) != order[0]
    first, again = epoch(a, 1), epoch(b, 1)
    assert all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(first, again))


def test_start_batch_skips_exactly_without_decoding(fixtures_dir, monkeypatch):
    folder = fixtures_dir / "mx_im2rec"
    dl = loader(folder, 4, aug={"random_erasing": 0.5})
    full = epoch(dl, 3)
    loads = []
    original = ds.MXFaceDataset.load_bgr
    monkeypatch.setattr(ds.MXFaceDataset, "load_bgr", lambda self, i: loads.append(i) or original(self, i))
    resumed = epoch(dl, 3, start_batch=2)
    assert len(resumed) == len(full) - 2 == 4 and len(loads) == 4 * 4
    for (x, y), (x2, y2) in zip(full[2:], resumed):
        assert torch.equal(x, x2) and torch.equal(y, y2)            # same samples, flips, erasing
    assert len(epoch(dl, 3)) == 6                                   # start_batch applies once
    with pytest.raises(ValueError):
        dl.set_epoch(0, start_batch=7)


@pytest.mark.slow
def test_two_workers_same_batches_as_one_process(fixtures_dir):
    folder = fixtures_dir / "mx_im2rec"
    one = epoch(loader(folder, 4, num_workers=0), 2)
    two = epoch(loader(folder, 4, num_workers=2), 2)
    assert len(two) == 6
    for (x, y), (x2, y2) in zip(one, two):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_collate_uint8_any_layout():
    hwc = torch.randint(0, 256, (4, 112, 112, 3), dtype=torch.uint8)
    images = [hwc[0].permute(2, 0, 1), hwc[1].permute(2, 0, 1).contiguous(),
              ds.hflip(hwc[2].permute(2, 0, 1)), hwc[3].permute(2, 0, 1)]
    batch, labels = ds.collate_uint8([(im, k) for k, im in enumerate(images)])
    assert batch.is_contiguous() and torch.equal(batch, torch.stack(images))
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 3]


# --- augmentation --------------------------------------------------------------------------------

def test_random_erasing_boxes_follow_torchvision_ranges():
    g = torch.Generator().manual_seed(0)
    boxes = ds.erase_boxes(4000, 1.0, g)
    top, left, h, w = boxes.unbind(1)
    assert (h > 0).all() and (w > 0).all() and (h < 112).all() and (w < 112).all()
    assert (top + h <= 112).all() and (left + w <= 112).all() and (top >= 0).all() and (left >= 0).all()
    area = (h * w).double() / 112 ** 2
    assert area.min() > 0.015 and area.max() < 0.345
    assert ((h.double() / w) > 0.25).all() and ((h.double() / w) < 3.6).all()
    assert 0.45 < (top < (112 - h) / 2).double().mean() < 0.55     # uniform placement
    half = ds.erase_boxes(4000, 0.5, torch.Generator().manual_seed(1))
    assert 0.45 < (half[:, 2] > 0).double().mean() < 0.55
    assert not ds.erase_boxes(10, 0.0, g)[:, 2:].any()


def test_apply_erasing_zeroes_exactly_the_box():
    images = torch.ones(2, 3, 112, 112)
    ds.apply_erasing(images, torch.tensor([[10, 20, 5, 7], [0, 0, 0, 0]]))
    assert (images[0, :, 10:15, 20:27] == 0).all() and images[0].eq(0).sum() == 3 * 5 * 7
    assert images[1].eq(1).all()


def test_random_erasing_in_loader(fixtures_dir):
    folder = fixtures_dir / "mx_im2rec"
    plain = epoch(loader(folder, 8), 0)
    erased = epoch(loader(folder, 8, aug={"random_erasing": 1.0}), 0)
    for (x, _), (x2, _) in zip(plain, erased):
        assert not x.eq(0).any()                    # (p/255 - .5)/.5 is never 0 for integer p
        zeros = x2.eq(0)
        assert zeros.flatten(1).any(1).all()
        assert torch.equal(x2[~zeros], x[~zeros])


def test_randaugment_deterministic_and_changes_pixels(fixtures_dir):
    folder = fixtures_dir / "mx_im2rec"
    aug = {"randaugment": True, "flip": False}
    a, b = epoch(loader(folder, 8, aug=aug), 0), epoch(loader(folder, 8, aug=aug), 0)
    plain = epoch(loader(folder, 8, aug={"flip": False}), 0)
    assert all(torch.equal(x, x2) for (x, _), (x2, _) in zip(a, b))
    assert any(not torch.equal(x, x2) for (x, _), (x2, _) in zip(a, plain))


def test_aug_from_config_reads_the_config_keys():
    from utils.utils_config import get_config
    cfg = get_config("configs/base.py", ["aug_random_erasing=0.25", "aug_flip=False"])
    aug = ds.aug_from_config(cfg)
    assert set(aug) == set(ds.AUG_DEFAULTS)
    assert ds.resolve_aug(aug) == dict(ds.AUG_DEFAULTS, random_erasing=0.25, flip=False)


def test_unknown_augmentation_is_an_error():
    with pytest.raises(ConfigError, match="unknown augmentation 'flipp'"):
        ds.resolve_aug({"flipp": True})
    with pytest.raises(ConfigError, match="random_erasing"):
        ds.resolve_aug({"random_erasing": 2})


# --- bad input -----------------------------------------------------------------------------------

@pytest.fixture
def broken_rec(fixtures_dir, tmp_path):
    """mx_im2rec with the payloads of its 2nd and 5th records replaced by non-images."""
    folder = fixtures_dir / "mx_im2rec"
    payloads, labels, keys = record_payloads(folder), lst_labels(folder), idx_keys(folder)
    bad = {keys[1], keys[4]}
    records = [(k, float(labels[k]), b"not a jpeg" if k in bad else payloads[k]) for k in keys]
    return write_rec(tmp_path / "broken", records), sorted(bad)


def test_bad_record_names_file_key_and_offset(broken_rec):
    folder, bad = broken_rec
    offsets = dict(line.split("\t") for line in (folder / "train.idx").read_text().splitlines())
    with pytest.raises(ds.BadRecordError) as err:
        epoch(loader(folder, 24))
    text = str(err.value)
    assert str(folder / "train.rec") in text and "max_bad_samples=0" in text
    assert any(f"key {k} at byte offset {offsets[str(k)]}" in text for k in bad)


def test_max_bad_samples_skips_with_warnings_then_stops(broken_rec, caplog):
    folder, bad = broken_rec
    dl = loader(folder, 24, max_bad_samples=2)
    with caplog.at_level(logging.WARNING, logger="dataset"):
        batches = epoch(dl) + epoch(dl, 1)                  # a known bad sample is not counted twice
    assert len(batches) == 2 and batches[0][0].shape == (24, 3, 112, 112)
    warned = [r.getMessage() for r in caplog.records if "skipping bad sample" in r.getMessage()]
    assert len(warned) == 2 and all(any(f"key {k} " in m for k in bad) for m in warned)
    assert {k for k in bad if any(f"key {k} " in m for m in warned)} == set(bad)
    with pytest.raises(ds.BadRecordError, match="max_bad_samples=1"):
        epoch(loader(folder, 24, max_bad_samples=1))


@pytest.mark.slow
def test_bad_sample_budget_is_shared_by_workers(broken_rec):
    folder, _ = broken_rec
    with pytest.raises(DataError, match="max_bad_samples=1"):
        epoch(loader(folder, 4, max_bad_samples=1, num_workers=2))


@pytest.mark.parametrize("name", ["bad_magic", "truncated"])
def test_corrupt_fixture_record_is_a_bad_record(fixtures_dir, tmp_path, name):
    for suffix in ("rec", "idx"):
        shutil.copy(fixtures_dir / "corrupt" / f"{name}.{suffix}", tmp_path / f"train.{suffix}")
    with pytest.raises(ds.BadRecordError, match=rf"train\.rec: key \d+ at byte \d+"):
        epoch(loader(tmp_path, 3))
    assert len(epoch(loader(tmp_path, 2, max_bad_samples=1))) == 1


def test_label_outside_num_classes(fixtures_dir):
    with pytest.raises(DataError, match=r"key \d+ at byte offset \d+: label 5 is outside"):
        epoch(loader(fixtures_dir / "mx_im2rec", 24, num_classes=5))


def test_wrong_image_size_is_reported(fixtures_dir, tmp_path):
    import cv2
    import numpy as np
    ok, big = cv2.imencode(".jpg", np.zeros((128, 128, 3), np.uint8))
    folder = write_rec(tmp_path / "big", [(k, float(k % 2), big.tobytes()) for k in range(4)])
    with pytest.raises(DataError, match="image is 128x128, expected 112x112"):
        epoch(loader(folder, 2))


def test_missing_or_unusable_folders(fixtures_dir, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        loader(tmp_path / "nope", 2)
    with pytest.raises(DataError, match="neither train.rec/train.idx nor"):
        loader(tmp_path, 2)
    shutil.copy(fixtures_dir / "mx_im2rec" / "train.rec", tmp_path / "train.rec")
    with pytest.raises(DataError, match="no train.idx beside it"):
        loader(tmp_path, 2)
    with pytest.raises(ConfigError, match="dali=True reads train.rec"):
        loader(fixtures_dir / "mx_im2rec" / "images", 2, dali=True)
    with pytest.raises(ConfigError, match="lower batch_size"):
        loader(fixtures_dir / "mx_im2rec", 16, world_size=2)


def test_pack_label_record_zero_is_an_image_not_a_header(fixtures_dir, tmp_path):
    payload = next(iter(record_payloads(fixtures_dir / "mx_im2rec").values()))
    folder = tmp_path / "packlabel"
    folder.mkdir()
    w = recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "w")
    for key in range(4):
        w.write_idx(key, recordio.pack(recordio.IRHeader(0, [float(key % 2), 7.0], key, 0), payload))
    w.close()
    data = ds.MXFaceDataset(str(folder))
    assert data.header0 is None and data.imgidx.tolist() == [0, 1, 2, 3]
    assert Counter(data.load_bgr(i)[1] for i in range(4)) == {0: 2, 1: 2}


@pytest.mark.slow
@pytest.mark.mxnet
def test_bench_data_quick_runs(tmp_path, mxnet_python):
    import subprocess
    import sys

    from conftest import REPO
    out = tmp_path / "RESULTS_data.md"
    proc = subprocess.run([sys.executable, "bench/bench_data.py", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "| (a) original per-sample path (mxnet 1.9.1" in text and "not run" not in text
    for row in ("| (a') the same all in the MXNet side env", "+ torchvision ToPILImage/flip/ToTensor/Normalize",
                "| (b') project loader", "| (b) the same + the CPU normalise", "cv2.imdecode, 1 core",
                "| project DataLoader, 2 workers", "| DALI CPU pipeline"):
        assert row in text
    assert "failed:" not in text and "- loader (b') / original path (a) = " in text
    assert "- loader (b') / fastest raw decode" in text
