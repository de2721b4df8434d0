"""utils/data_check.py: counts from header / .lst / header scan / folder, cache, config checks."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from easydict import EasyDict

from utils import data_check as dc
from utils import recordio
from utils.errors import ConfigError, DataError

from test_dataset import lst_labels, record_payloads, write_rec


def cfg(**kw) -> EasyDict:
    base = dict(num_classes="auto", num_image="auto", batch_size=4, sample_rate=1.0,
                rec="synthetic", num_epoch=20)
    base.update(kw)
    return EasyDict(base)


@pytest.fixture
def scanned(fixtures_dir, tmp_path):
    """A writable copy of mx_multipart (no header, no .lst): counts need the header scan."""
    folder = tmp_path / "multipart"
    shutil.copytree(fixtures_dir / "mx_multipart", folder)
    return folder


def test_im2rec_counts_from_lst(fixtures_dir):
    folder = fixtures_dir / "mx_im2rec"
    labels = list(lst_labels(folder).values())
    info = dc.inspect_data(folder)
    assert info.source == "lst" and info.path == str(folder / "train.rec")
    assert (info.num_images, info.num_classes, info.min_label, info.max_label) == \
        (len(labels), len(set(labels)), min(labels), max(labels))


def test_insightface_counts_from_header(fixtures_dir):
    folder = fixtures_dir / "insightface_style"
    info = dc.inspect_data(folder)
    classes = int((folder / "property").read_text().split(",")[0])
    assert info.source == "header"
    counts = (info.num_images, info.num_classes, info.min_label, info.max_label)
    assert counts == (15, classes, 0, classes - 1)


def test_image_folder_counts(fixtures_dir):
    root = fixtures_dir / "mx_im2rec" / "images"
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    info = dc.inspect_data(root)
    assert info.source == "folder"
    assert (info.num_images, info.num_classes, info.min_label, info.max_label) == \
        (sum(len(list(p.iterdir())) for p in folders), len(folders), 0, len(folders) - 1)


def test_scan_reads_headers_only_and_is_cached(scanned, monkeypatch):
    read_idx = recordio.MXIndexedRecordIO.read_idx

    def only_record_zero(self, key):                # record 0 tells the layout, as upstream
        assert key == 0, f"the scan read the whole record {key}"
        return read_idx(self, key)
    monkeypatch.setattr(recordio.MXIndexedRecordIO, "read_idx", only_record_zero)
    assert dc.inspect_data(scanned, scan=False).source == "index"
    monkeypatch.setattr(dc, "_scan_headers", _counting(dc._scan_headers))
    info = dc.inspect_data(scanned)
    assert (info.source, info.num_images, info.num_classes, info.min_label, info.max_label) == \
        ("scan", 5, 5, 0, 4)                                        # key 3 holds [3.0, 0.0]
    cache = scanned / "train.rec.labels.json"
    assert json.loads(cache.read_text())["num_images"] == 5
    assert sorted(os.listdir(scanned)) == ["train.idx", "train.rec", "train.rec.labels.json"]
    assert dc.inspect_data(scanned).source == "cache" and dc._scan_headers.calls == 1
    os.utime(scanned / "train.rec", ns=(1, 1))                      # a changed .rec invalidates it
    assert dc.inspect_data(scanned).source == "scan" and dc._scan_headers.calls == 2


def _counting(fn):
    def wrapper(*args, **kw):
        wrapper.calls += 1
        return fn(*args, **kw)
    wrapper.calls = 0
    return wrapper


def test_scan_survives_read_only_folder(scanned, monkeypatch, caplog):
    monkeypatch.setattr(dc.tempfile, "mkstemp", _raise_permission)
    assert dc.inspect_data(scanned).source == "scan"
    assert "cannot cache" in caplog.text and not (scanned / "train.rec.labels.json").exists()


def _raise_permission(*args, **kw):
    raise PermissionError(13, "Permission denied")


def test_lst_that_does_not_match_is_ignored(fixtures_dir, tmp_path):
    folder = tmp_path / "im2rec"
    shutil.copytree(fixtures_dir / "mx_im2rec", folder, ignore=shutil.ignore_patterns("images"))
    lines = (folder / "train.lst").read_text().splitlines()
    (folder / "train.lst").write_text("\n".join(lines[:-1]) + "\n")
    assert dc.inspect_data(folder).source == "scan"


def test_dcface_trap_all_labels_equal(fixtures_dir, tmp_path):
    release = fixtures_dir / "dcface_release"
    folder = tmp_path / "dcface"
    folder.mkdir()
    shutil.copy(release / "file.rec", folder / "train.rec")
    shutil.copy(release / "file.idx", folder / "train.idx")
    count = len((release / "file.idx").read_text().splitlines())
    info = dc.inspect_data(folder)
    with pytest.raises(DataError, match=rf"all {count} records have label 0: is this a DCFace "
                                        rf"release\? convert it with python -m im2rec --from-dcface"):
        dc.check_data_vs_config(cfg(num_classes=4), info, 1)


def test_label_beyond_num_classes_names_label_and_file(fixtures_dir):
    info = dc.inspect_data(fixtures_dir / "mx_im2rec")
    with pytest.raises(DataError, match=rf"{info.path}: label 5 >= num_classes=5"):
        dc.check_data_vs_config(cfg(num_classes=5), info, 1)
    assert dc.check_data_vs_config(cfg(num_classes=6, num_image=24), info, 1) == []


def test_negative_label(fixtures_dir, tmp_path):
    payload = next(iter(record_payloads(fixtures_dir / "mx_im2rec").values()))
    folder = write_rec(tmp_path / "neg", [(k, float(k) - 1, payload) for k in range(3)])
    with pytest.raises(DataError, match="label -1 is negative"):
        dc.check_data_vs_config(cfg(), dc.inspect_data(folder), 1)


def test_config_errors(fixtures_dir):
    info = dc.inspect_data(fixtures_dir / "mx_im2rec")
    with pytest.raises(ConfigError, match=r"batch_size 8 x world_size 4 = 32 is more than the 24"):
        dc.check_data_vs_config(cfg(batch_size=8), info, 4)
    with pytest.raises(ConfigError, match="num_classes=6 < world_size=8"):
        dc.check_data_vs_config(cfg(batch_size=1), info, 8)
    assert dc.check_data_vs_config(cfg(sample_rate=0.0), info, 1) == []   # positives only: allowed


def test_missing_verification_targets_stop_or_warn(fixtures_dir, tmp_path):
    (tmp_path / "lfw.bin").write_bytes(b"x")
    config = cfg(rec=str(tmp_path), val_targets=["lfw", "agedb_30", "cfp_fp"])
    with pytest.raises(DataError, match=rf"not found: {tmp_path / 'agedb_30.bin'}, {tmp_path / 'cfp_fp.bin'}: "):
        dc.check_val_targets(config)
    config.val_targets_missing = "warn"
    assert dc.check_val_targets(config) == [f"verification targets not found, skipped: "
                                            f"{tmp_path / 'agedb_30.bin'}, {tmp_path / 'cfp_fp.bin'}"]
    assert dc.check_val_targets(cfg(rec=str(tmp_path), val_targets=["lfw"])) == []


def test_missing_or_wrong_rec_folder(fixtures_dir, tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path / 'absent'} does not exist .*train.rec \+ train.idx"):
        dc.inspect_data(tmp_path / "absent")
    with pytest.raises(DataError, match=rf"{tmp_path} holds neither train.rec/train.idx nor identity"):
        dc.inspect_data(tmp_path)
    shutil.copy(fixtures_dir / "mx_im2rec" / "train.idx", tmp_path / "train.idx")
    with pytest.raises(DataError, match="train.idx has no train.rec beside it"):
        dc.inspect_data(tmp_path)


def test_empty_identity_folder(fixtures_dir, tmp_path):
    root = tmp_path / "faces"
    shutil.copytree(fixtures_dir / "mx_im2rec" / "images", root)
    (root / "id_99").mkdir()
    with pytest.raises(DataError, match="identity folder.*without images: id_99"):
        dc.inspect_data(root)


def test_num_image_mismatch_warns_with_stretch_factor(fixtures_dir):
    info = dc.inspect_data(fixtures_dir / "mx_im2rec")
    (warning,) = dc.check_data_vs_config(cfg(num_image=240), info, 1)
    assert "num_image=240" in warning and "24 images" in warning and "10.00x" in warning
    (warning,) = dc.check_data_vs_config(cfg(num_image=12), info, 1)
    assert "0.50x" in warning and "50% of the epochs" in warning
    assert dc.check_data_vs_config(cfg(num_image=24), info, 1) == []


def test_more_classes_than_data_warns(fixtures_dir):
    info = dc.inspect_data(fixtures_dir / "mx_im2rec")
    (warning,) = dc.check_data_vs_config(cfg(num_classes=10, num_image=24), info, 1)
    assert "num_classes=10" in warning and "4 class centres never see an image" in warning


def test_resolve_auto(fixtures_dir):
    info = dc.inspect_data(fixtures_dir / "mx_im2rec")
    c = dc.resolve_auto(cfg(), info)
    assert (c.num_classes, c.num_image) == (6, 24)
    c = dc.resolve_auto(cfg(num_classes=100, num_image=5), info)
    assert (c.num_classes, c.num_image) == (100, 5)
    synthetic = dc.inspect_data("synthetic")
    assert dc.resolve_auto(cfg(num_classes=10), synthetic).num_image == 1_000_000
    with pytest.raises(ConfigError, match="num_classes=\"auto\" cannot be read"):
        dc.resolve_auto(cfg(), synthetic)
    assert dc.check_data_vs_config(cfg(num_classes=10), synthetic, 1) == []


def test_auto_uses_highest_label_when_labels_have_gaps(fixtures_dir, tmp_path):
    payload = next(iter(record_payloads(fixtures_dir / "mx_im2rec").values()))
    folder = write_rec(tmp_path / "gaps", [(k, float(3 * k), payload) for k in range(4)])
    info = dc.inspect_data(folder)
    assert (info.num_classes, info.max_label) == (4, 9)
    assert dc.resolve_auto(cfg(), info).num_classes == 10


def test_header_pointing_past_the_index(fixtures_dir, tmp_path):
    payload = next(iter(record_payloads(fixtures_dir / "mx_im2rec").values()))
    folder = tmp_path / "badheader"
    folder.mkdir()
    w = recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "w")
    w.write_idx(0, recordio.pack(recordio.IRHeader(0, [9.0, 12.0], 0, 0), b""))
    for key in (1, 2):
        w.write_idx(key, recordio.pack(recordio.IRHeader(0, 0.0, key, 0), payload))
    w.close()
    with pytest.raises(DataError, match="header record 0 says images are keys 1..8"):
        dc.inspect_data(folder)

