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
from tests import integrity_worlds as W
from utils.demo_data import _encode_jpeg, random_identity, render

EMBEDDING = 64


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



def test_a_collapsed_model_matches_nothing_at_threshold_one():
    """Every image embedded the same (a collapsed model): the calibrated threshold saturates at 1 and no test
    image matches, although float32 rounding puts the products of the unit rows at 1 + 2e-7."""
    v = _unit(np.random.default_rng(0).normal(size=(1, 64))).astype(np.float32)
    flip, means = np.repeat(v, 40, 0), np.repeat(v, 5, 0)
    issame = np.arange(20) % 2 == 0
    from eval.dataset_stats import nearest
    assert nearest(flip, means)[0].max() > 1.0                         # the rounding this guards against
    record, scores, _ = L.match_report(flip, issame, means, [f"id{i}" for i in range(5)], None)
    assert record["threshold"] == 1.0 and record["images_matched"] == 0 and record["pairs_touched"] == 0
    assert scores.max() == 1.0

# ----------------------------------------------------------------------------------------------
# the command line on a pattern world (exact embeddings known by hand) and on the demo data
# ----------------------------------------------------------------------------------------------

TRAIN_IDS, TRAIN_IMAGES, VAL_IDS, VAL_PAIRS = 40, 6, 30, 200
INJECTED, COPIED = 8, 4            # held-out identities injected as zz_leak<k>; the first COPIED with copies


@dataclass
class PatternWorld:
    root: Path
    onnx: Path
    test: W.PatternTest
    classes: dict[str, np.ndarray]          # blocks of every training image of `injected`, by identity
    clean_names: list[str]

    def args(self, train: str, out: str, *extra: str) -> list[str]:
        return ["--onnx", str(self.onnx), "--train", str(self.root / train), "--data-dir", str(self.root / "bins"),
                "--targets", "demo_val", "--workers", "0", "--no-progress", "--out", out, *extra]


@pytest.fixture(scope="module")
def pattern_world(tmp_path_factory) -> PatternWorld:
    """40 training identities x 6 images; 200 test pairs of 30 held-out identities; `injected` adds 8 of
    them as zz_leak0-7 (0-3: 3 exact copies of their test images + 3 fresh draws; 4-7: 6 fresh draws)."""
    root = tmp_path_factory.mktemp("leakage_patterns")
    rng = np.random.default_rng(0)
    patterns = W.identity_patterns(TRAIN_IDS + VAL_IDS, rng)
    test = W.PatternTest.make(patterns[TRAIN_IDS:], VAL_PAIRS, rng)
    test.write(root / "bins" / "demo_val.bin")
    classes = {f"id{i:03d}": np.stack([W.draw(patterns[i], rng) for _ in range(TRAIN_IMAGES)])
               for i in range(TRAIN_IDS)}
    W.write_folder(root / "clean", {n: [W.encode_blocks(b) for b in c] for n, c in classes.items()})
    clean_names = sorted(classes)
    leaks = {}
    for k in range(INJECTED):
        copies = np.flatnonzero(test.who == k)[:3] if k < COPIED else np.zeros(0, int)
        fresh = [W.draw(patterns[TRAIN_IDS + k], rng) for _ in range(TRAIN_IMAGES - len(copies))]
        leaks[f"zz_leak{k}"] = ([test.images[i] for i in copies] + [W.encode_blocks(b) for b in fresh],
                                np.concatenate([test.blocks[copies], np.stack(fresh)]))
    shutil.copytree(root / "clean", root / "injected")
    W.write_folder(root / "injected", {n: images for n, (images, _) in leaks.items()})
    classes.update({n: blocks for n, (_, blocks) in leaks.items()})
    return PatternWorld(root, W.block_mean_onnx(root / "block_mean.onnx"), test, classes, clean_names)


def expected_by_hand(world: PatternWorld, names: list[str]) -> dict:
    """Each test image's best training identity and score (its cosine to the mean of that identity's unit
    embeddings), the calibrated threshold and what matches, from the pixel blocks with numpy."""
    test = W.hand_embedding(world.test.blocks)
    means = np.stack([W.hand_embedding(world.classes[n]).mean(0) for n in names])
    scores = test @ means.T
    best, row = scores.max(1), scores.argmax(1)
    pair_cos = np.einsum("ij,ij->i", test[0::2], test[1::2])
    threshold = W.calibrated_by_hand(pair_cos[~world.test.issame])
    matched = best > threshold
    return {"test": test, "best": best, "identity": [names[r] for r in row], "threshold": threshold,
            "matched": matched, "touched": matched[0::2] | matched[1::2],
            "identities": sorted({names[r] for r in row[matched]})}


def test_cli_finds_injected_identities_in_a_pattern_world(pattern_world, tmp_path, capsys, monkeypatch):
    """python -m eval.leakage end to end (image folders, .bin, ONNX model, calibration, JSON/Markdown/PNG),
    every reported number against the same numbers computed by hand from the pixels."""
    import face_model
    from eval.verification import evaluate_folds
    world = pattern_world
    kept = []                # the tool keeps freed memory for the CPU model's passes (recorded, not applied here)
    monkeypatch.setattr(face_model, "reuse_freed_cpu_memory", lambda model: kept.append(model) or False)
    assert L.main(world.args("injected", str(tmp_path / "inj"))) == 0
    assert len(kept) == 1 and isinstance(kept[0], face_model.OnnxBackbone)
    printed = capsys.readouterr().out
    r = json.loads((tmp_path / "inj" / "leakage.json").read_text())["targets"]["demo_val"]
    hand = expected_by_hand(world, sorted(world.classes))
    assert r["threshold"] == pytest.approx(hand["threshold"], abs=1e-5)
    assert r["threshold_source"] == "calibrated, normal tail fit" and r["impostor_pairs"] == VAL_PAIRS // 2
    assert (f"[demo_val] threshold {r['threshold']:.4f} (calibrated, normal tail fit of {VAL_PAIRS // 2} "
            f"different-identity pairs)") in printed
    # the criteria: injected identities found (recall >= 0.9), <= 2 others
    injected = {f"zz_leak{k}" for k in range(INJECTED)}
    assert len(injected & set(r["identities"])) >= 0.9 * INJECTED
    assert len(set(r["identities"]) - injected) <= 2
    # ... and exactly what the hand computation says
    assert r["identities"] == hand["identities"] and r["identities_matched"] == len(hand["identities"])
    assert r["images_matched"] == hand["matched"].sum()
    assert r["pairs_touched"] == hand["touched"].sum() and r["untouched_pairs"] == VAL_PAIRS - r["pairs_touched"]
    holding = np.isin(world.test.who.reshape(-1, 2), range(INJECTED)).any(1)       # pairs with an injected identity
    assert (hand["touched"] >= holding).all()
    for m in r["strongest"]:
        i = m["image"]
        assert m["score"] == pytest.approx(hand["best"][i], abs=1e-5) and m["identity"] == hand["identity"][i]
        assert m["matched"] == hand["matched"][i] and m["pair"] == i // 2
    assert [m["score"] for m in r["strongest"]] == sorted((m["score"] for m in r["strongest"]), reverse=True)
    assert len(r["strongest"]) == 200 and r["strongest"][-1]["score"] >= np.sort(hand["best"])[-200] - 1e-5
    copies = [i for n in sorted(injected)[:COPIED] for i in np.flatnonzero(world.test.who == int(n[-1]))[:3]]
    assert all(hand["identity"][i].startswith("zz_leak") for i in copies)
    # accuracy by the 10-fold protocol, on all pairs and on the untouched ones
    issame, keep = world.test.issame, ~hand["touched"]
    assert r["acc_all"] == pytest.approx(np.mean(evaluate_folds(hand["test"], issame, 10).roc.accuracy), abs=1e-9)
    rows = np.repeat(np.flatnonzero(keep) * 2, 2) + np.tile([0, 1], keep.sum())
    assert r["acc_untouched"] == pytest.approx(
        np.mean(evaluate_folds(hand["test"][rows], issame[keep], 10).roc.accuracy), abs=1e-9)
    table = (tmp_path / "inj" / "leakage.md").read_text().splitlines()
    assert table[0].startswith("| Target | Threshold | Images matched") and table[2].startswith("| demo_val | ")
    assert f"| {r['images_matched']} / {2 * VAL_PAIRS} | {r['identities_matched']} | {r['pairs_touched']} / " \
           f"{VAL_PAIRS} " in table[2]
    assert (tmp_path / "inj" / "leakage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert L.main(world.args("clean", str(tmp_path / "clean"))) == 0
    c = json.loads((tmp_path / "clean" / "leakage.json").read_text())["targets"]["demo_val"]
    clean = expected_by_hand(world, world.clean_names)
    assert c["threshold"] == pytest.approx(r["threshold"], abs=1e-7)           # same model, same test set
    assert c["pairs_touched"] == clean["touched"].sum() == 0 and c["identities"] == []
    assert c["acc_untouched"] == pytest.approx(c["acc_all"])
    print(f"margins: lowest score of an injected identity's matched image {hand['best'][hand['matched']].min():.3f}, "
          f"threshold {hand['threshold']:.3f}, highest score against a clean identity {clean['best'].max():.3f}")


# New renders of held-out identities are found in the pattern world and the face-like embeddings above, not
# with the session's demo model: measured on it (16 new renders per injected identity, 8 identities), their
# test images score 0.10-0.80 (median 0.60; 48 renders: the same) against their own identity while the other held-out identities'
# test images reach 0.79 against some training identity, and the calibrated threshold is 1 (different-identity
# cosines mean 0.07, sd 0.29): no threshold finds more than 3 of 8 with <= 2 false identities (README).
@pytest.mark.slow
def test_cli_finds_copied_test_images_on_demo_data(demo_world, tmp_path, capsys):
    """python -m eval.leakage with the session's demo model on demo faces: the test images copied into the
    training set (each as a one-image class) are the strongest matches, whatever the briefly trained
    weights: a copy's embedding is the original's (cosine 1); every other score is the cosine of two
    different images (this weak model's highest: ~0.92)."""
    world = demo_world
    assert L.main(world.leakage_args(world.injected, "--threshold", "0.999", "--out", str(tmp_path / "inj"))) == 0
    assert "[demo_val] threshold 0.9990 (given of " in capsys.readouterr().out
    r = json.loads((tmp_path / "inj" / "leakage.json").read_text())["targets"]["demo_val"]
    copies = {i: f"zz_copy{k}" for k, i in enumerate(world.copied)}
    top = r["strongest"][:len(copies)]
    assert {m["image"]: m["identity"] for m in top} == copies
    assert all(m["score"] > 0.9999 and m["matched"] for m in top)
    # the threshold decides the matches, the matches decide the counts
    assert all(m["matched"] == (m["score"] > 0.999) for m in r["strongest"]) and not r["strongest"][-1]["matched"]
    matched = [m for m in r["strongest"] if m["matched"]]
    assert r["images_matched"] == len(matched) and r["identities"] == sorted({m["identity"] for m in matched})
    assert r["pairs_touched"] == len({m["pair"] for m in matched}) and r["threshold_source"] == "given"
    assert r["acc_untouched"] is not None and r["untouched_pairs"] == W.DEMO_VAL_PAIRS - r["pairs_touched"]
    table = (tmp_path / "inj" / "leakage.md").read_text().splitlines()
    assert table[2].startswith(f"| demo_val | 0.999 (given) | {len(matched)} / {2 * W.DEMO_VAL_PAIRS} | ")
    assert (tmp_path / "inj" / "leakage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"margin: lowest score of a copy {min(m['score'] for m in top):.7f}, highest of any other test image "
          f"{r['strongest'][len(copies)]['score']:.4f}")


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


def _write_identity(folder: Path, images: list[bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for j, data in enumerate(images):
        (folder / f"{j:02d}.jpg").write_bytes(data)


def test_bad_input_is_one_line_before_heavy_work(tmp_path, capsys, monkeypatch):
    import torch
    from backbones import get_model
    rng = np.random.default_rng(0)
    _write_identity(tmp_path / "train" / "a", [_encode_jpeg(render(random_identity(rng), rng))])
    (tmp_path / "bins").mkdir()
    with open(tmp_path / "bins" / "demo_val.bin", "wb") as f:
        pickle.dump(([_encode_jpeg(render(random_identity(rng), rng)) for _ in range(2)], [False]), f)
    torch.save(get_model("mbf_tiny", num_features=EMBEDDING).state_dict(), tmp_path / "model.pt")
    model = ["--model", str(tmp_path / "model.pt"), "--network", "mbf_tiny", "--num-features", str(EMBEDDING)]

    def heavy(*args, **kwargs):
        raise AssertionError("embedding started before the inputs were checked")

    monkeypatch.setattr(L, "build_gallery", heavy)
    monkeypatch.setattr(L, "check_target", heavy)

    def fails(*extra, needles, code, train="train", source=model):
        args = [*source, "--train", str(tmp_path / train), "--data-dir", str(tmp_path / "bins"), "--targets",
                "demo_val", "--workers", "0", "--no-progress", "--out", str(tmp_path / "o"), *extra]
        assert L.main(args) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        for needle in needles:
            assert needle in err, err

    # a threshold outside [-1, 1]
    fails("--threshold", "1.5", needles=["--threshold 1.5", "[-1, 1]"], code=2)
    fails("--threshold", "-1.01", needles=["--threshold -1.01", "[-1, 1]"], code=2)
    fails("--threshold", "nan", needles=["--threshold nan"], code=2)
    # a target without its .bin; a data folder that is none
    fails("--targets", "demo_val,lfw", needles=["lfw.bin", "demo_val"], code=4)
    fails("--data-dir", str(tmp_path / "nowhere"), needles=["nowhere: not a directory"], code=4)
    # a training folder with no images (or none at all)
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    fails(train="empty", needles=["no images found"], code=4)
    fails(train="missing", needles=["missing"], code=4)
    # a model that does not fit the network; an ONNX model that does not take the tools' crops
    fails(needles=[f"the weights hold {EMBEDDING}-d embeddings: pass --num-features {EMBEDDING}"],
          source=[*model[:-1], "32"], code=2)
    fails(needles=["does not fit --network"], source=[*model[:3], "r18", *model[4:]], code=2)
    fails(needles=["224", "112"], source=["--onnx", str(W.wrong_input_onnx(tmp_path / "big.onnx"))], code=5)
    fails(needles=["ONNX model not found"], source=["--onnx", str(tmp_path / "none.onnx")], code=5)
    assert not (tmp_path / "o").exists()


def test_bench_leakage_world_and_best_threshold(tmp_path):
    """bench/bench_leakage.py's parts: the injected classes hold exact copies of their identity's test images
    (the clean folder none), and the best threshold stops before a third false identity."""
    import bench.bench_leakage as B
    sizes = B.Sizes(train_ids=3, images=4, val_ids=4, pairs=12, injected=2, copied=1, copies=2)
    who = B.build_world(tmp_path, sizes)
    with open(tmp_path / "demo_val.bin", "rb") as f:
        images, issame = pickle.load(f)
    assert len(who) == len(images) == 2 * len(issame) and np.array_equal(who[0::2] == who[1::2], issame)
    clean = sorted(p.name for p in (tmp_path / "clean").iterdir() if p.is_dir())
    injected = sorted(p.name for p in (tmp_path / "injected").iterdir() if p.is_dir())
    assert clean == ["id000", "id001", "id002"] and injected == clean + ["zz_leak0", "zz_leak1"]
    leak0 = [p.read_bytes() for p in sorted((tmp_path / "injected" / "zz_leak0").iterdir())]
    assert leak0[:2] == [bytes(images[i]) for i in np.flatnonzero(who == 0)[:2]] and len(leak0) == 4
    test_bytes = {bytes(b) for b in images}
    assert not any(p.read_bytes() in test_bytes for p in (tmp_path / "injected" / "zz_leak1").iterdir())
    assert (tmp_path / "clean" / "demo_val.bin").read_bytes() == (tmp_path / "demo_val.bin").read_bytes()
    strongest = [{"score": s, "identity": n} for s, n in
                 [(0.9, "zz_leak0"), (0.8, "a"), (0.7, "zz_leak1"), (0.6, "b"), (0.5, "c"), (0.4, "zz_leak2")]]
    assert B.best_threshold({"strongest": strongest}, {"zz_leak0", "zz_leak1", "zz_leak2"}) == (0.7, 2, 1)
