"""eval/leakage.py: held-out test identities injected into a demo training set are found, a clean set is clean."""
from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from eval import leakage as L
from utils.demo_data import _encode_jpeg, random_identity, render

TRAIN_IDS, TRAIN_IMAGES = 40, 8
VAL_IDS, VAL_PAIRS = 30, 200
INJECTED = 8                      # held-out identities injected as new classes: 0-3 with copies, 4-7 fresh renders
EMBEDDING = 64


@dataclass
class World:
    """Generated once per test session: the data sets, the verification .bin and a demo model trained on `clean`."""
    root: Path
    clean: Path
    injected: Path
    planted: Path                 # clean + a twin of id005 + a render of id010 mislabelled as id020
    bins: Path
    model: Path

    def leakage_args(self, train: Path, *extra: str) -> list[str]:
        return ["--model", str(self.model), "--network", "mbf_tiny", "--num-features", str(EMBEDDING),
                "--train", str(train), "--data-dir", str(self.bins), "--targets", "demo_val", "--workers", "0",
                "--no-progress", *extra]


def _write_identity(folder: Path, images: list[bytes], prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for j, data in enumerate(images):
        (folder / f"{prefix}{j:02d}.jpg").write_bytes(data)


def _build(root: Path) -> World:
    rng = np.random.default_rng(5)
    train_ids = [random_identity(rng) for _ in range(TRAIN_IDS)]
    val_ids = [random_identity(rng) for _ in range(VAL_IDS)]
    clean = root / "clean"
    for i, ident in enumerate(train_ids):
        _write_identity(clean / f"id{i:03d}", [_encode_jpeg(render(ident, rng)) for _ in range(TRAIN_IMAGES)])
    bins, issame, who = [], [], []
    for p in range(VAL_PAIRS):
        a = b = int(rng.integers(VAL_IDS))
        while p % 2 and b == a:
            b = int(rng.integers(VAL_IDS))
        for k in (a, b):
            bins.append(_encode_jpeg(render(val_ids[k], rng)))
            who.append(k)
        issame.append(p % 2 == 0)
    (root / "bins").mkdir()
    with open(root / "bins" / "demo_val.bin", "wb") as f:
        pickle.dump((bins, issame), f)
    injected = root / "injected"
    shutil.copytree(clean, injected)
    for k in range(INJECTED):
        copies = [bins[j] for j, w in enumerate(who) if w == k][:4] if k < 4 else []
        fresh = [_encode_jpeg(render(val_ids[k], rng)) for _ in range(TRAIN_IMAGES - len(copies))]
        _write_identity(injected / f"zz_leak{k}", copies + fresh)
    planted = root / "planted"
    shutil.copytree(clean, planted)
    _write_identity(planted / "id005_twin", [_encode_jpeg(render(train_ids[5], rng)) for _ in range(TRAIN_IMAGES)])
    _write_identity(planted / "id020", [_encode_jpeg(render(train_ids[10], rng))], prefix="mislabelled")
    model = _train(root, clean)
    return World(root, clean, injected, planted, root / "bins", model)


def _train(root: Path, data: Path) -> Path:
    """A short demo training run (in this process) on ``data``; returns its model.pt."""
    from tests.test_train import run_main, write_config
    config = write_config(root / "demo.py", data, root / "out", embedding_size=EMBEDDING, batch_size=32,
                          num_epoch=5, warmup_epoch=1, frequent=5, verbose=10 ** 6, val_targets=[],
                          save_all_states=False, tensorboard=False)
    run_main(config)
    return root / "out" / "model.pt"


def demo_world(base: Path) -> World:
    """The session's World: built by the first test module that asks, reused by the others."""
    root = base / "leakage_world"
    if not (root / "out" / "model.pt").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        return _build(root)
    return World(root, root / "clean", root / "injected", root / "planted", root / "bins", root / "out" / "model.pt")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return demo_world(tmp_path_factory.getbasetemp())


def face_like_embeddings(identities: np.ndarray, rng, genuine: float = 0.6) -> np.ndarray:
    """Unit embeddings of images of the given identity vectors: pair cosine ~``genuine`` within an identity."""
    noise = rng.normal(size=identities.shape) / np.sqrt(identities.shape[1])
    x = identities + np.sqrt(1 / genuine - 1) * noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_injected_identities_are_found_in_face_like_embeddings():
    """The method on embeddings shaped like a good face model's: injected copies and new draws of held-out
    test identities are found, nothing else is, a clean gallery touches nothing."""
    rng = np.random.default_rng(0)
    dim, n_train, n_test, per = 128, 200, 40, 10
    train_vecs, test_vecs = _unit(rng.normal(size=(n_train, dim))), _unit(rng.normal(size=(n_test, dim)))
    pairs = 400
    first = rng.integers(0, n_test, pairs)
    second = np.where(np.arange(pairs) % 2 == 0, first, (first + rng.integers(1, n_test, pairs)) % n_test)
    who = np.stack([first, second], 1).ravel()
    issame = first == second
    test = face_like_embeddings(test_vecs[who], rng)
    labels = np.repeat(np.arange(n_train), per)
    gallery = [face_like_embeddings(train_vecs[labels], rng)]
    injected = list(range(10))                  # held-out identities 0-4 as copies + draws, 5-9 as draws only
    for k in injected:
        copies = test[who == k][:3] if k < 5 else np.zeros((0, dim), np.float32)
        gallery.append(np.concatenate([copies, face_like_embeddings(test_vecs[[k] * (per - len(copies))], rng)]))
        labels = np.r_[labels, np.full(per, n_train + k)]
    gallery = np.concatenate(gallery)
    names = [f"train{i}" for i in range(n_train)] + [f"leak{k}" for k in injected]
    means = np.stack([gallery[labels == c].mean(0) for c in range(n_train + len(injected))])

    record, scores, _ = L.match_report(test, issame, means, names, None)
    found = [n for n in record["identities"] if n.startswith("leak")]
    assert len(found) / len(injected) >= 0.9, record["identities"]
    assert len(record["identities"]) - len(found) <= 2, record["identities"]
    touched = np.isin(who.reshape(-1, 2), injected).any(1)       # the pairs that hold an injected identity
    assert record["pairs_touched"] >= 0.9 * touched.sum()
    assert record["untouched_pairs"] == record["pairs"] - record["pairs_touched"]
    assert 0.0 < record["threshold"] < 0.6 and record["impostor_pairs"] == int((~issame).sum())
    assert record["threshold_source"] == "calibrated, normal tail fit"                # 200 pairs < 10,000
    assert record["strongest"][0]["identity"].startswith("leak") and record["strongest"][0]["matched"]
    copied = np.concatenate([np.flatnonzero(who == k)[:3] for k in range(5)])
    same_ids = np.setdiff1d(np.flatnonzero(who < 5), copied)
    assert scores[copied].mean() > scores[same_ids].mean() + 0.02     # a copy also matches itself
    assert record["acc_untouched"] is not None and abs(record["acc_untouched"] - record["acc_all"]) < 0.05

    clean, _, _ = L.match_report(test, issame, means[:n_train], names[:n_train], None)
    assert clean["pairs_touched_pct"] <= 1.0 and clean["identities_matched"] <= 1
    assert clean["threshold"] == record["threshold"]
    given, _, _ = L.match_report(test, issame, means, names, -1.0)             # everything matches
    assert given["threshold_source"] == "given" and given["pairs_touched"] == pairs
    assert given["acc_untouched"] is None


@pytest.mark.slow
def test_cli_end_to_end_on_demo_data(world, tmp_path, capsys):
    """python -m eval.leakage with a demo model trained on the clean set, against clean and injected sets."""
    assert L.main(world.leakage_args(world.injected, "--out", str(tmp_path / "inj"))) == 0
    printed = capsys.readouterr().out
    r = json.loads((tmp_path / "inj" / "leakage.json").read_text())["targets"]["demo_val"]
    assert (f"[demo_val] threshold {r['threshold']:.4f} (calibrated, normal tail fit of 100 different-identity "
            "pairs)") in printed
    # copies of test images are in the injected classes: the strongest matches are those classes
    assert r["strongest"][0]["identity"] in {f"zz_leak{k}" for k in range(4)}
    table = (tmp_path / "inj" / "leakage.md").read_text().splitlines()
    assert table[0].startswith("| Target | Threshold | Images matched") and table[2].startswith("| demo_val | ")
    assert f"{r['pairs_touched']} / {VAL_PAIRS}" in table[2]
    assert (tmp_path / "inj" / "leakage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert L.main(world.leakage_args(world.clean, "--out", str(tmp_path / "clean"))) == 0
    c = json.loads((tmp_path / "clean" / "leakage.json").read_text())["targets"]["demo_val"]
    assert c["threshold"] == pytest.approx(r["threshold"])          # same model, same test set
    assert not any(m["identity"].startswith("zz_leak") for m in c["strongest"])
    assert c["strongest"][0]["score"] < r["strongest"][0]["score"]
    assert c["pairs_touched"] <= r["pairs_touched"]


def test_sample_per_class_takes_at_most_k_of_every_identity():
    labels = np.array([3, 3, 3, 3, 1, 1, 7, 3, 1, 7, 7, 7, 7])
    picked = L.sample_per_class(labels, 2)
    assert sorted(np.bincount(labels[picked]).tolist()) == sorted(np.bincount(np.array([3, 3, 1, 1, 7, 7])).tolist())
    assert np.array_equal(picked, np.sort(picked)) and len(set(picked)) == len(picked)
    assert np.array_equal(L.sample_per_class(labels, 0), np.arange(len(labels)))
    assert np.array_equal(L.sample_per_class(labels, 2), picked)                   # deterministic


def test_nearest_is_the_same_in_any_block_size():
    from eval.dataset_stats import nearest, unit_rows
    rng = np.random.default_rng(0)
    queries, keys = unit_rows(rng.normal(size=(300, 16))), unit_rows(rng.normal(size=(70_000, 16)))
    sims, idx = nearest(queries, keys, block_bytes=1 << 16)         # many row and column blocks
    full = queries @ keys.T
    assert np.array_equal(idx, full.argmax(1)) and np.allclose(sims, full.max(1))
    exclude = full.argmax(1)
    sims2, idx2 = nearest(queries, keys, exclude=exclude, block_bytes=1 << 16)
    full[np.arange(300), exclude] = -np.inf
    assert np.array_equal(idx2, full.argmax(1))


def test_bad_input_is_one_line_before_heavy_work(tmp_path, capsys):
    import torch
    from backbones import get_model
    rng = np.random.default_rng(0)
    _write_identity(tmp_path / "train" / "a", [_encode_jpeg(render(random_identity(rng), rng))])
    (tmp_path / "bins").mkdir()
    with open(tmp_path / "bins" / "demo_val.bin", "wb") as f:
        pickle.dump(([_encode_jpeg(render(random_identity(rng), rng)) for _ in range(2)], [False]), f)
    torch.save(get_model("mbf_tiny", num_features=EMBEDDING).state_dict(), tmp_path / "model.pt")
    world = World(tmp_path, tmp_path / "train", tmp_path, tmp_path, tmp_path / "bins", tmp_path / "model.pt")

    def fails(args, *needles):
        assert L.main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        for needle in needles:
            assert needle in err, err

    fails(world.leakage_args(world.clean, "--threshold", "1.5", "--out", str(tmp_path / "o")), "--threshold 1.5",
          "[-1, 1]")
    fails(world.leakage_args(world.clean, "--targets", "demo_val,lfw", "--out", str(tmp_path / "o")), "lfw.bin",
          "demo_val")
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    fails(world.leakage_args(tmp_path / "empty", "--out", str(tmp_path / "o")), "no images found")
    args = world.leakage_args(world.clean, "--out", str(tmp_path / "o"))
    args[args.index("--num-features") + 1] = "32"
    fails(args, "does not fit --network mbf_tiny")
    assert not (tmp_path / "o").exists()
