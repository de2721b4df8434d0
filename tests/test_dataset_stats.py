"""eval/dataset_stats.py: counts, duplicates, label anomalies (no model) on tiny generated sets."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from eval import dataset_stats as S
from tests import integrity_worlds as W
from utils import recordio
from utils.errors import DataError


def _jpeg(seed: int, size=(112, 112), gray: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*size, 1 if gray else 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _png(seed: int, size=(90, 100), channels: int = 1) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (*size, channels), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.fixture()
def planted_folder(tmp_path):
    """Numbered identity folders 0, 1, 3, 4, 5: '2' is a gap, '5' is empty; two planted duplicates."""
    files = {"0": [_jpeg(1), _jpeg(2), _jpeg(3)],
             "1": [_jpeg(4), _jpeg(4)],                        # within-identity copy
             "3": [_jpeg(5), _jpeg(6), _jpeg(7), _jpeg(1)],    # copy of an image of identity 0
             "4": [_png(8)],                                    # 100 wide, 90 high, grey
             "5": []}
    root = tmp_path / "planted"
    for name, images in files.items():
        (root / name).mkdir(parents=True)
        for i, data in enumerate(images):
            ext = "png" if data.startswith(b"\x89PNG") else "jpg"
            (root / name / f"{i}.{ext}").write_bytes(data)
    return root


def test_counts_duplicates_and_anomalies_by_hand(planted_folder):
    stats = S.measure(str(planted_folder))
    assert (stats["identities"], stats["images"], stats["classes"]) == (4, 10, 5)
    per = stats["images_per_identity"]
    assert (per["min"], per["median"], per["max"], per["mean"]) == (1, 2.5, 4, 2.5)
    assert sum(per["histogram"]["counts"]) == 4
    assert stats["image_sizes"] == {"112x112": 9, "90x100": 1}
    assert stats["channels"] == {"3": 9, "1": 1} and stats["formats"] == {"jpeg": 9, "png": 1}
    dup = stats["duplicates"]
    assert (dup["groups"], dup["extra_copies"], dup["within_identity_groups"], dup["across_identity_groups"]) \
        == (2, 2, 1, 1)
    across = next(e for e in dup["examples"] if len(e["identities"]) > 1)
    assert across["identities"] == ["0", "3"]
    assert sorted(p.split("planted/")[1] for p in across["samples"]) == ["0/0.jpg", "3/3.jpg"]
    anomalies = stats["label_anomalies"]
    assert anomalies["empty_classes"] == ["5"] and anomalies["gaps"] == ["2"] and anomalies["num_gaps"] == 1


def _write_rec(root, labels, payloads, identities=None):
    """train.rec/.idx; with ``identities`` [(start, end), ...] the insightface header layout."""
    root.mkdir()
    writer = recordio.MXIndexedRecordIO(str(root / "train.idx"), str(root / "train.rec"), "w")
    first = 1 if identities is not None else 0
    if identities is not None:
        end_images = len(labels) + 1
        writer.write_idx(0, recordio.pack(recordio.IRHeader(2, [end_images, end_images + len(identities)], 0, 0),
                                          b""))
    for i, (label, payload) in enumerate(zip(labels, payloads)):
        writer.write_idx(first + i, recordio.pack(recordio.IRHeader(0, float(label), first + i, 0), payload))
    for j, (start, end) in enumerate(identities or []):
        key = len(labels) + 1 + j
        writer.write_idx(key, recordio.pack(recordio.IRHeader(2, [start, end], key, 0), b""))
    writer.close()
    return root


def test_recordio_gap_and_empty_identity_record(tmp_path):
    labels = [0, 0, 1, 3, 3]
    payloads = [_jpeg(1), _jpeg(1), _jpeg(2), _jpeg(3), _jpeg(4, size=(120, 100), gray=True)]
    # identity 2's record holds the empty range (4, 4)
    root = _write_rec(tmp_path / "rec", labels, payloads, identities=[(1, 3), (3, 4), (4, 4), (4, 6)])
    stats = S.measure(str(root))
    assert (stats["identities"], stats["images"], stats["classes"]) == (3, 5, 4)
    assert stats["label_anomalies"]["gaps"] == ["2"] and stats["label_anomalies"]["empty_classes"] == ["2"]
    assert stats["duplicates"]["within_identity_groups"] == 1 and stats["duplicates"]["across_identity_groups"] == 0
    assert stats["image_sizes"] == {"112x112": 4, "120x100": 1} and stats["channels"] == {"3": 4, "1": 1}
    assert stats["duplicates"]["examples"][0]["samples"] == [f"{root / 'train.rec'} key 1",
                                                             f"{root / 'train.rec'} key 2"]
    plain = _write_rec(tmp_path / "plain", [1, 1, 4], payloads[:3])          # no header: labels 0, 2, 3 missing
    anomalies = S.measure(str(plain))["label_anomalies"]
    assert anomalies["gaps"] == ["0", "2", "3"] and anomalies["empty_classes"] == []


@pytest.mark.parametrize("encode, shape", [
    (lambda img: cv2.imencode(".jpg", img)[1], (37, 53, 3)),
    (lambda img: cv2.imencode(".jpg", img[..., 0])[1], (37, 53, 1)),
    (lambda img: cv2.imencode(".png", np.dstack([img, img[..., :1]]))[1], (37, 53, 4)),
    (lambda img: cv2.imencode(".bmp", img)[1], (37, 53, 3)),
])
def test_image_header_matches_the_decoded_image(encode, shape):
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    height, width, channels, _ = S.image_header(encode(img).tobytes())
    assert (height, width, channels) == shape
    assert S.image_header(b"not an image")[3] == "unreadable"


def test_cli_writes_json_png_and_a_summary_row_per_set(planted_folder, tmp_path, capsys):
    other = _write_rec(tmp_path / "other", [0, 1, 1], [_jpeg(1), _jpeg(2), _jpeg(3)])
    out = tmp_path / "out"
    assert S.main([str(planted_folder), str(other), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    rows = ["| planted | 4 | 10 | 1 / 2.5 / 4 | 1 | 1 | 1 / 1 |", "| other | 2 | 3 | 1 / 1.5 / 2 | 0 | 0 | 0 / 0 |"]
    assert all(row in printed.splitlines() for row in rows)
    assert (out / "summary.md").read_text().splitlines()[2:] == rows
    assert json.loads((out / "planted" / "stats.json").read_text())["images"] == 10
    assert (out / "other" / "histograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob(".*tmp*"))
    # earlier results join the table without measuring again
    assert S.main([str(out / "planted" / "stats.json"), "--out", str(tmp_path / "again")]) == 0
    assert rows[0] in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    assert S.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no images found" in err and str(tmp_path / "empty") in err
    assert S.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 4
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(DataError, match="synthetic"):
        S.TrainingSet("synthetic")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------
# with a model
# ----------------------------------------------------------------------------------------------

def _embedded(embeddings: np.ndarray, labels: np.ndarray) -> S.Embedded:
    ids, sums, counts = S.class_sums(embeddings, labels)
    return S.Embedded(np.arange(len(labels)), embeddings, np.searchsorted(ids, labels), ids, sums, counts)


def test_identity_measures_match_the_definitions():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 5])           # identity 5 has one image
    e = _embedded(S.unit_rows(rng.normal(size=(len(labels), 8))), labels)
    m = S.identity_measures(e)
    own = S.own_mean_cosines(e)
    cents = []
    for row, label in enumerate(e.identities):
        x = e.embeddings[labels == label].astype(np.float64)
        c = x.sum(0) / np.linalg.norm(x.sum(0))
        cents.append(c)
        assert m["consistency"][row] == pytest.approx((x @ c).mean(), abs=1e-6)
        if len(x) > 1:
            pairwise = (x @ x.T)[~np.eye(len(x), dtype=bool)].mean()
            assert m["diversity"][row] == pytest.approx(1 - pairwise, abs=1e-6)
            for i, j in enumerate(np.flatnonzero(labels == label)):
                assert own[j] == pytest.approx(np.delete(x @ x[i], i).mean(), abs=1e-6)
        else:
            assert np.isnan(m["diversity"][row]) and np.isnan(own[labels == label]).all()
    sims = np.asarray(cents) @ np.asarray(cents).T
    np.fill_diagonal(sims, -np.inf)
    assert np.allclose(m["separability"], sims.max(1), atol=1e-6) and np.array_equal(m["nearest"], sims.argmax(1))


class _Names:
    """The two TrainingSet methods model_stats reads (names and locations), for embeddings made here."""

    def label_name(self, label: int) -> str:
        return {7: "twin_of_3"}.get(label, f"id{label}")

    def where(self, index: int) -> str:
        return f"sample {index}"


def test_twin_identity_and_mislabelled_image_in_face_like_embeddings():
    rng = np.random.default_rng(1)
    vectors = S.unit_rows(rng.normal(size=(7, 64)))
    vectors = np.vstack([vectors, vectors[3]])                   # identity 7 is identity 3 again
    labels = np.repeat(np.arange(8), 12)
    source = labels.copy()
    source[30] = 5                                               # an image of identity 5 labelled 2
    noise = rng.normal(size=(len(labels), 64)) / 8.0
    e = _embedded(S.unit_rows(vectors[source] + 0.8 * noise), labels)
    section, cases = S.model_stats(_Names(), e, 0.35, "given")
    assert section["num_twins"] == 1 and section["twins"][0]["identities"] == ["id3", "twin_of_3"]
    assert section["twins"][0]["mean_cosine"] > 0.5
    assert section["num_outliers"] == 1
    outlier = section["outliers"][0]
    assert outlier["sample"] == "sample 30" and outlier["identity"] == "id2" and outlier["nearest_identity"] == "id5"
    assert outlier["mean_cosine_nearest"] > 0.35 > outlier["mean_cosine_own"]
    assert section["per_identity"]["nearest_identity"][3] == "twin_of_3"
    assert section["separability"]["max"] > 0.9 > section["separability"]["median"] and not section["saturated"]
    # a model whose different-identity cosines reach 1 (threshold 1) judges nothing: no image is flagged
    weak, _ = S.model_stats(_Names(), e, 1.0, "calibrated")
    assert weak["saturated"] and weak["num_outliers"] == 0 and weak["num_twins"] == 0
    # ... nor a collapsed one whose rounded cosines exceed 1: no twins at threshold 1
    same = np.repeat(S.unit_rows(np.random.default_rng(0).normal(size=(1, 64))).astype(np.float32), 24, 0)
    collapsed, _ = S.model_stats(_Names(), _embedded(same, np.repeat(np.arange(4), 6)), 1.0, "calibrated")
    assert collapsed["num_twins"] == 0 and collapsed["num_outliers"] == 0


# the command line with a model: a tiny pattern set whose embeddings are known by hand, and the demo data

PATTERN_IMAGES = 6


@pytest.fixture()
def pattern_set(tmp_path):
    """Identities p0-p5 of 6 pattern images each, planted: a within-identity copy (p1/06 = p1/00), an image of
    p2 copied into p5 (p5/06), a twin identity (p0_twin: fresh images of p0's pattern), and an image of p4
    labelled p3 (p3/06); a .bin of 100 pairs of 20 other identities to calibrate on."""
    rng = np.random.default_rng(3)
    patterns = W.identity_patterns(26, rng)
    blocks = {f"p{i}": [W.draw(patterns[i], rng) for _ in range(PATTERN_IMAGES)] for i in range(6)}
    blocks["p0_twin"] = [W.draw(patterns[0], rng) for _ in range(PATTERN_IMAGES)]
    blocks["p3"].append(W.draw(patterns[4], rng))
    images = {name: [W.encode_blocks(b) for b in bs] for name, bs in blocks.items()}
    images["p1"].append(images["p1"][0])
    blocks["p1"].append(blocks["p1"][0])
    images["p5"].append(images["p2"][0])
    blocks["p5"].append(blocks["p2"][0])
    root = W.write_folder(tmp_path / "planted", images)
    test = W.PatternTest.make(patterns[6:], 100, rng)
    test.write(tmp_path / "bins" / "demo_val.bin")
    onnx = W.block_mean_onnx(tmp_path / "block_mean.onnx")
    return root, onnx, tmp_path / "bins", {n: np.stack(b) for n, b in blocks.items()}, test


def stats_by_hand(classes: dict[str, np.ndarray], threshold: float) -> dict:
    """The model statistics from their definitions, on embeddings computed from the pixel blocks."""
    names = sorted(classes)
    emb = {n: W.hand_embedding(classes[n]) for n in names}
    centroid = {n: e.sum(0) / np.linalg.norm(e.sum(0)) for n, e in emb.items()}
    out = {"consistency": {}, "diversity": {}, "separability": {}, "nearest": {}, "twins": [], "outliers": [],
           "own": [], "cross": []}
    for n, e in emb.items():
        out["consistency"][n] = float((e @ centroid[n]).mean())
        gram = e @ e.T
        out["diversity"][n] = float(1 - gram[~np.eye(len(e), dtype=bool)].mean())
        others = {o: float(centroid[n] @ centroid[o]) for o in names if o != n}
        out["nearest"][n] = max(others, key=others.get)
        out["separability"][n] = others[out["nearest"][n]]
        for j in range(len(e)):
            own = float(np.delete(gram[j], j).mean())
            out["own"].append(own)
            if own < threshold:
                near = {o: float((emb[o] @ e[j]).mean()) for o in names if o != n}
                best = max(near, key=near.get)
                out["outliers"].append({"sample": f"{n}/{j:02d}.png", "identity": n, "mean_cosine_own": own,
                                        "nearest_identity": best, "mean_cosine_nearest": near[best]})
    for a in names:
        for b in names:
            cross = float((emb[a] @ emb[b].T).mean())
            out["cross"] += [cross] if a < b else []
            if a < b and cross > threshold:
                out["twins"].append({"identities": [a, b], "mean_cosine": cross})
    out["outliers"].sort(key=lambda o: o["mean_cosine_own"])
    return out


def test_cli_with_a_model_matches_hand_computed_statistics(pattern_set, tmp_path, capsys, monkeypatch):
    """python -m eval.dataset_stats --onnx ... --data-dir: duplicates, twin, mislabelled image and every
    per-identity number as computed by hand."""
    import face_model
    root, onnx, bins, classes, test = pattern_set
    out = tmp_path / "out"
    kept = []                # the tool keeps freed memory for the CPU model's passes (recorded, not applied here)
    monkeypatch.setattr(face_model, "reuse_freed_cpu_memory", lambda model: kept.append(model) or False)
    assert S.main([str(root), "--onnx", str(onnx), "--data-dir", str(bins), "--targets", "demo_val",
                   "--workers", "0", "--out", str(out), "--no-progress"]) == 0
    assert len(kept) == 1 and isinstance(kept[0], face_model.OnnxBackbone)
    printed = capsys.readouterr().out
    stats = json.loads((out / "planted" / "stats.json").read_text())
    dup = stats["duplicates"]
    assert (dup["groups"], dup["within_identity_groups"], dup["across_identity_groups"]) == (2, 1, 1)
    assert next(e for e in dup["examples"] if len(e["identities"]) > 1)["identities"] == ["p2", "p5"]
    m = stats["model"]
    emb = W.hand_embedding(test.blocks)
    pair_cos = np.einsum("ij,ij->i", emb[0::2], emb[1::2])
    threshold = W.calibrated_by_hand(pair_cos[~test.issame])
    assert m["threshold"] == pytest.approx(threshold, abs=1e-5) and m["threshold_source"] == "calibrated on demo_val"
    assert m["embedded_images"] == stats["images"] == sum(len(c) for c in classes.values())
    hand = stats_by_hand(classes, threshold)
    per = m["per_identity"]
    assert per["identity"] == sorted(classes)
    for key in ("consistency", "diversity", "separability"):
        assert per[key] == pytest.approx([hand[key][n] for n in per["identity"]], abs=1e-5), key
        assert m[key]["mean"] == pytest.approx(np.mean(list(hand[key].values())), abs=1e-5)
    assert per["nearest_identity"] == [hand["nearest"][n] for n in per["identity"]]
    # the twin identity, the mislabelled image and the copy of p2's image in p5: found, and nothing else
    assert [t["identities"] for t in m["twins"]] == [t["identities"] for t in hand["twins"]] == [["p0", "p0_twin"]]
    assert m["twins"][0]["mean_cosine"] == pytest.approx(hand["twins"][0]["mean_cosine"], abs=1e-5)
    assert [(o["identity"], o["nearest_identity"]) for o in hand["outliers"]] == [("p5", "p2"), ("p3", "p4")] or \
        [(o["identity"], o["nearest_identity"]) for o in hand["outliers"]] == [("p3", "p4"), ("p5", "p2")]
    assert len(m["outliers"]) == m["num_outliers"] == len(hand["outliers"])
    for got, want in zip(m["outliers"], hand["outliers"]):
        assert got["sample"].endswith(want["sample"]) and got["identity"] == want["identity"]
        assert got["nearest_identity"] == want["nearest_identity"]
        assert got["mean_cosine_own"] == pytest.approx(want["mean_cosine_own"], abs=1e-5)
        assert got["mean_cosine_nearest"] == pytest.approx(want["mean_cosine_nearest"], abs=1e-5)
    row = f"| planted | 7 | {stats['images']} | 6 / 6 / 7 | 1 | 1 | 0 / 0 | " \
          f"{np.mean(list(hand['consistency'].values())):.3f} | {np.mean(list(hand['diversity'].values())):.3f} | " \
          f"{np.mean(list(hand['separability'].values())):.3f} | 1 | 2 |"
    assert row in printed.splitlines() and (out / "summary.md").read_text().splitlines()[2] == row
    assert f"[planted] threshold {threshold:.4f} (calibrated on demo_val): 1 pairs of identities" in printed
    for png in ("histograms.png", "outliers.png", "twins.png"):
        assert (out / "planted" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    own, cross = np.sort(hand["own"]), np.sort(hand["cross"])
    print(f"margins: threshold {threshold:.3f}; own mean cosine of the 2 flagged images <= {own[1]:.3f}, of the "
          f"others >= {own[2]:.3f}; mean cosine of the twin pair {cross[-1]:.3f}, of the other pairs <= "
          f"{cross[-2]:.3f}")


@pytest.mark.slow
def test_cli_with_the_demo_model_on_demo_data(demo_world, tmp_path, capsys):
    """python -m eval.dataset_stats --model on demo faces with the session's demo model: an identity made of
    byte copies of id005's images has id005's centroid (separability 1) whatever the weights."""
    world = demo_world
    out = tmp_path / "out"
    assert S.main([str(world.planted), *world.model_args(), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    stats = json.loads((out / "planted" / "stats.json").read_text())
    assert stats["identities"] == W.DEMO_TRAIN_IDS + 1
    assert stats["duplicates"]["across_identity_groups"] == W.DEMO_TRAIN_IMAGES == stats["duplicates"]["groups"]
    m = stats["model"]
    assert m["threshold_source"] == "calibrated on the training set's own pairs"
    assert m["embedded_images"] == stats["images"]
    per = m["per_identity"]
    row = {name: i for i, name in enumerate(per["identity"])}
    a, b = row["id005"], row["id005_copy"]
    assert per["nearest_identity"][a] == "id005_copy" and per["nearest_identity"][b] == "id005"
    assert per["separability"][a] > 0.9999 and per["separability"][b] > 0.9999
    assert per["consistency"][a] == pytest.approx(per["consistency"][b], abs=1e-6)
    assert per["diversity"][a] == pytest.approx(per["diversity"][b], abs=1e-6)
    n = W.DEMO_TRAIN_IMAGES
    assert f"| planted | {W.DEMO_TRAIN_IDS + 1} | {(W.DEMO_TRAIN_IDS + 1) * n} | {n} / {n} / {n} | 0 | {n} | 0 / 0 |" \
        in printed
    for png in ("histograms.png", "outliers.png", "twins.png"):
        assert (out / "planted" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rest = [s for i, s in enumerate(per["separability"]) if i not in (a, b)]
    print(f"margin: highest separability of the other identities {max(rest):.4f}")


def test_model_inputs_are_checked_before_any_work(planted_folder, tmp_path, capsys, monkeypatch):
    import pickle
    import torch
    from backbones import get_model
    torch.save(get_model("mbf_tiny", num_features=32).state_dict(), tmp_path / "model.pt")
    (tmp_path / "bins").mkdir()
    with open(tmp_path / "bins" / "demo_val.bin", "wb") as f:
        pickle.dump(([_jpeg(1), _jpeg(2)], [False]), f)
    (tmp_path / "empty" / "a").mkdir(parents=True)

    def heavy(*args, **kwargs):
        raise AssertionError("the data were read before the inputs were checked")

    monkeypatch.setattr(S, "scan", heavy)
    monkeypatch.setattr(S, "embed_identities", heavy)
    model = ["--model", str(tmp_path / "model.pt"), "--network", "mbf_tiny", "--num-features", "32"]
    rest = ["--out", str(tmp_path / "o"), "--no-progress", "--workers", "0"]
    cases = [([str(planted_folder), *model, "--threshold", "-2"], "--threshold -2.0", 2),
             ([str(planted_folder), *model, "--threshold", "inf"], "--threshold inf", 2),
             ([str(planted_folder), *model, "--data-dir", str(tmp_path / "bins")], "lfw.bin", 4),
             ([str(planted_folder), *model[:-1], "64"], "the weights hold 32-d embeddings: pass --num-features 32", 2),
             ([str(planted_folder), "--onnx", str(W.wrong_input_onnx(tmp_path / "big.onnx"))], "224", 5),
             # a training folder with no images: also when it is not the first one, and with a model
             ([str(planted_folder), str(tmp_path / "empty"), *model], "no images found", 4),
             ([str(planted_folder), str(tmp_path / "empty")], "no images found", 4),
             ([str(planted_folder), str(tmp_path / "nothing.json")], "does not exist", 4)]
    for args, needle, code in cases:
        assert S.main(args + rest) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "o").exists()
