"""subcenter_clean.py: dominant sub-centre, angle threshold, class renumbering, the cleaned .rec/.lst."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import subcenter_clean
from backbones import get_model
from dataset import MXFaceDataset
from subcenter_clean import clean_selection, dominant_subcentres, main
from utils.demo_data import make_demo_dataset


def _unit(degrees) -> np.ndarray:
    r = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_selection_by_hand():
    """2-d embeddings at known angles; sub-centres at known angles (norms vary: only directions count)."""
    centres = np.stack([_unit([0, 90, 180]), _unit([0, 90, 180]), _unit([10, 80, 200]), _unit([0, 10, 20])])
    centres *= np.array([1.0, 3.0, 0.5])[None, :, None]
    angles = [10, 20, 80, 30,   85, 95, 5,   10, 80,   170, 175]
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    embeddings = _unit(angles) * np.linspace(1, 9, len(angles))[:, None]
    dominant, cosine = dominant_subcentres(embeddings, labels, centres)
    # class 0: nearest 0,0,90,0 -> 0; class 1: 90,90,0 -> 1; class 2: tie 10 deg / 80 deg -> the first;
    # class 3: every image nearest the 20 deg centre
    assert dominant.tolist() == [0, 1, 0, 2]
    to_dominant = [10, 20, 80, 30, 5, 5, 85, 0, 70, 150, 155]
    np.testing.assert_allclose(cosine, np.cos(np.radians(to_dominant)), atol=1e-12)
    keep, new_label = clean_selection(embeddings, labels, centres, angle=75.0)
    assert keep.tolist() == [True, True, False, True, True, True, False, True, True, False, False]
    assert new_label.tolist() == [0, 1, 2, -1]
    keep, new_label = clean_selection(embeddings, labels, centres, angle=60.0)
    assert keep[8] == False and new_label.tolist() == [0, 1, 2, -1]  # noqa: E712
    assert clean_selection(embeddings, labels, centres, angle=70.001)[0][8]      # 70 deg: kept below ...
    assert not clean_selection(embeddings, labels, centres, angle=69.999)[0][8]  # ... dropped beyond


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """A tiny record set, a random mbf_tiny, and centres made so that class 1 loses images and 3 dies."""
    root = tmp_path_factory.mktemp("noisy")
    data, run = root / "data", root / "run"
    make_demo_dataset(str(data), num_ids=4, images_per_id=5, num_val_ids=2, num_pairs=4, seed=5)
    run.mkdir()
    torch.manual_seed(0)
    model = get_model("mbf_tiny", num_features=16).eval()
    torch.save(model.state_dict(), run / "model.pt")
    keys, labels, payloads = subcenter_clean.read_records(str(data))
    embeddings = subcenter_clean.embed_payloads(model, payloads, batch_size=8)
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    gen = np.random.default_rng(1)
    centres = gen.normal(size=(4, 3, 16)).astype(np.float32)
    for c in range(3):  # sub-centre 1 of classes 0..2 sits on the class mean
        centres[c, 1] = x[labels == c].mean(axis=0)
    centres[1] = _straddling(x[labels == 1])                 # class 1: part of its images beyond 75 deg
    centres[3] = -x[labels == 3].mean(axis=0)               # class 3: pointing away from its images
    weight = torch.from_numpy(centres.reshape(12, 16))
    for rank, rows in enumerate((slice(0, 6), slice(6, 12))):  # two rank shards, 2 classes x 3 rows each
        torch.save({"state_dict_softmax_fc": {"weight": weight[rows].clone()}}, run / f"checkpoint_gpu_{rank}.pt")
    return data, run, keys, labels, payloads, x, centres


def _straddling(x: np.ndarray) -> np.ndarray:
    """Sub-centres (-m, d, -m) with d turned from the mean m so that some, not all, rows are within 75 deg."""
    m = x.mean(axis=0)
    m /= np.linalg.norm(m)
    u = x[0] - x[1]
    u -= (u @ m) * m
    u /= np.linalg.norm(u)
    for theta in np.linspace(0, np.pi, 4001):
        d = np.cos(theta) * m + np.sin(theta) * u
        if 0 < int((x @ d > math.cos(math.radians(75))).sum()) < len(x):
            return np.stack([-m, d, -m]).astype(np.float32)
    raise AssertionError("no straddling direction")


def _expected(labels, x, centres, angle=75.0):
    """The drop rule, written out: nearest sub-centre, most frequent one, cosine > cos(angle)."""
    w = centres / np.linalg.norm(centres, axis=2, keepdims=True)
    keep = []
    for c in range(centres.shape[0]):
        rows = np.flatnonzero(labels == c)
        sims = x[rows] @ w[c].T
        counts = np.bincount(sims.argmax(axis=1), minlength=centres.shape[1])
        best = int(np.argmax(counts))
        keep += [int(r) for r, s in zip(rows, sims[:, best]) if s > math.cos(math.radians(angle))]
    return sorted(keep)


def _args(data, run, out, *extra):
    return ["--rec", str(data), "--run", str(run), "--network", "mbf_tiny", "--embedding-size", "16",
            "--out", str(out), "--batch-size", "8", *extra]


def test_cleaned_record_set(noisy, tmp_path, capsys):
    data, run, keys, labels, payloads, x, centres = noisy
    kept = _expected(labels, x, centres)
    assert 0 < len([i for i in kept if labels[i] == 1]) < 5, "the case must drop part of class 1"
    assert not any(labels[i] == 3 for i in kept), "the case must empty class 3"
    out = tmp_path / "clean"
    assert main(_args(data, run, out)) == 0
    assert f"kept {len(kept)} of 20 images and 3 of 4 classes" in capsys.readouterr().out
    cleaned = MXFaceDataset(str(out))
    assert len(cleaned) == len(kept)
    from utils import recordio
    for index, old in enumerate(kept):
        header, payload = recordio.unpack(cleaned.imgrec.read_idx(int(cleaned.imgidx[index])))
        assert payload == payloads[old], "images are copied byte for byte"
        assert int(header.label) == labels[old]  # classes 0, 1, 2 keep their numbers, 3 is gone
    lines = (out / "train.lst").read_text().splitlines()
    assert [line.split("\t")[-1] for line in lines] == [f"{keys[i]}:{labels[i]}" for i in kept]
    assert (out / "property").read_text().startswith("3,")
    assert main(_args(data, run, out)) == 2
    assert "already holds a train.rec" in capsys.readouterr().err


def test_renumbering_skips_a_dropped_class(noisy, tmp_path):
    data, run, keys, labels, payloads, x, centres = noisy
    keep = np.zeros(len(labels), dtype=bool)
    keep[labels != 1] = True
    new_label = np.array([0, -1, 1, 2])
    out = tmp_path / "renumbered"
    images, classes = subcenter_clean.write_clean(str(out), keys, labels, payloads, keep, new_label)
    assert (images, classes) == (15, 3)
    cleaned = MXFaceDataset(str(out))
    assert sorted({cleaned.load_bgr(i)[1] for i in range(len(cleaned))}) == [0, 1, 2]
    assert cleaned.load_bgr(len(cleaned) - 1)[1] == 2  # old class 3


@pytest.mark.parametrize("extra, message, code", [(["--k", "5"], "not a multiple of --k 5", 2),
                                                  (["--angle", "0"], "--angle", 2),
                                                  (["--k", "0"], "--k must be >= 1", 2),
                                                  (["--num-features", "8"], "the weights hold 16-d embeddings", 2)])
def test_bad_input_is_one_line_and_leaves_nothing(noisy, tmp_path, capsys, extra, message, code):
    data, run, *_ = noisy
    out = tmp_path / "never"
    assert main(_args(data, run, out, *extra)) == code
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("error: ")
    assert not out.exists()


def test_a_run_without_checkpoints_is_explained(noisy, tmp_path, capsys):
    data, _, *_ = noisy
    assert main(_args(data, tmp_path, tmp_path / "o")) == 5
    assert "save_all_states=True" in capsys.readouterr().err


def test_an_unreadable_centre_shard_is_a_checkpoint_error(noisy, tmp_path, capsys):
    import shutil
    data, run, *_ = noisy
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "checkpoint_gpu_1.pt").write_bytes(b"not a checkpoint")
    assert main(_args(data, broken, tmp_path / "o")) == 5
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot read the class centres of {broken / 'checkpoint_gpu_1.pt'}") and "\n" not in err


def test_network_and_size_come_from_the_run_config(noisy, tmp_path, capsys):
    import json
    import shutil
    data, run, *_ = noisy
    described = tmp_path / "run"
    shutil.copytree(run, described)
    (described / "config.json").write_text(json.dumps({"network": "mbf_tiny", "embedding_size": 16}))
    args = ["--rec", str(data), "--run", str(described), "--out", str(tmp_path / "clean"), "--batch-size", "8"]
    assert main(args) == 0
    assert "kept " in capsys.readouterr().out
