"""IJB-B / IJB-C evaluation (eval/ijb.py) pinned to a slow, literal transcription of the protocol.

The reference below follows ../shared/spec/IJB.md step by step (scikit-image fit per row, OpenCV
warp, interleaved crop/mirror batches with a remainder batch, per-template np.where loops, sklearn
normalise, 100,000-pair chunks, sklearn roc_curve and the nearest-FPR rule with Python's min) on
a small release generated in the test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eval import ijb

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# the reference: the protocol as written, one row / template / chunk at a time
# ----------------------------------------------------------------------------------------------

def ref_align(image_path: str, landmark: np.ndarray) -> np.ndarray:
    """(2, 3, 112, 112) uint8: the aligned crop and its mirror, RGB."""
    from skimage import transform as trans
    src = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                    [33.5493, 92.3655], [62.7299, 92.2041]], dtype=np.float32)
    src[:, 0] += 8.0
    tform = trans.SimilarityTransform()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tform.estimate(landmark, src)
    img = cv2.warpAffine(cv2.imread(image_path), tform.params[0:2, :], (112, 112), borderValue=0.0)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    blob = np.zeros((2, 3, 112, 112), dtype=np.uint8)
    blob[0] = np.transpose(img, (2, 0, 1))
    blob[1] = np.transpose(np.fliplr(img), (2, 0, 1))
    return blob


def ref_image_features(root: Path, target: str, model: torch.nn.Module, batch_size: int):
    """(N, 2D) float32 [crop | mirror] features and float32 detector scores, batch by batch."""
    lines = open(root / "meta" / f"{target.lower()}_name_5pts_score.txt").readlines()
    rare = len(lines) % batch_size
    feats, scores = None, []
    batches = [(0, len(lines) - rare, batch_size)] + ([(len(lines) - rare, len(lines), rare)] if rare else [])
    for first, stop, size in batches:
        for b0 in range(first, stop, size):
            data = np.empty((2 * size, 3, 112, 112))
            for j, line in enumerate(lines[b0:b0 + size]):
                parts = line.strip().split(" ")
                lmk = np.array([float(x) for x in parts[1:-1]], dtype=np.float32).reshape((5, 2))
                blob = ref_align(str(root / "loose_crop" / parts[0]), lmk)
                data[2 * j], data[2 * j + 1] = blob[0], blob[1]
                scores.append(parts[-1])
            with torch.no_grad():
                imgs = torch.Tensor(data)
                imgs.div_(255).sub_(0.5).div_(0.5)
                out = model(imgs)
                out = out.reshape([size, 2 * out.shape[1]]).numpy()
            if feats is None:
                feats = np.empty((len(lines), out.shape[1]), dtype=np.float32)
            feats[b0:b0 + size] = out
    return feats, np.array(scores).astype(np.float32)


def ref_switch(img_feats, faceness, flip, norm, detector):
    if flip:
        x = img_feats[:, 0:img_feats.shape[1] // 2] + img_feats[:, img_feats.shape[1] // 2:]
    else:
        x = img_feats[:, 0:img_feats.shape[1] // 2]
    if not norm:
        x = x / np.sqrt(np.sum(x ** 2, -1, keepdims=True))
    if detector:
        x = x * faceness[:, np.newaxis]
    return x


def ref_templates(img_feats, templates, medias):
    import sklearn.preprocessing
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_feats, face_medias = img_feats[ind_t], medias[ind_t]
        unique_medias, counts = np.unique(face_medias, return_counts=True)
        media_feats = []
        for u, ct in zip(unique_medias, counts):
            (ind_m,) = np.where(face_medias == u)
            media_feats += [face_feats[ind_m]] if ct == 1 else [np.mean(face_feats[ind_m], axis=0, keepdims=True)]
        template_feats[count] = np.sum(np.array(media_feats), axis=0)
    return sklearn.preprocessing.normalize(template_feats), unique_templates


def ref_scores(template_feats, unique_templates, p1, p2):
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count, uqt in enumerate(unique_templates):
        template2id[uqt] = count
    score = np.zeros((len(p1),))
    total = np.array(range(len(p1)))
    for s in [total[i:i + 100000] for i in range(0, len(p1), 100000)]:
        score[s] = np.sum(template_feats[template2id[p1[s]]] * template_feats[template2id[p2[s]]], -1).flatten()
    return score


def ref_tar(label, score):
    from sklearn.metrics import roc_curve
    fpr, tpr, _ = roc_curve(label, score)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    out = {}
    for x in [10 ** -6, 10 ** -5, 10 ** -4, 10 ** -3, 10 ** -2, 10 ** -1]:
        _, min_index = min(list(zip(abs(fpr - x), range(len(fpr)))))
        out[str(x)] = tpr[min_index]
    return out


def ref_meta(root: Path, target: str):
    t = target.lower()
    tid_mid = np.loadtxt(root / "meta" / f"{t}_face_tid_mid.txt", dtype=str)
    pairs = np.loadtxt(root / "meta" / f"{t}_template_pair_label.txt", dtype=int)
    return tid_mid[:, 1].astype(int), tid_mid[:, 2].astype(int), pairs[:, 0], pairs[:, 1], pairs[:, 2]


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------

class TinyNet(torch.nn.Module):
    """Average-pool to 8x8, linear to ``dim`` (not 512): a cheap deterministic embedding."""

    def __init__(self, dim: int = 96, seed: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.pool = torch.nn.AvgPool2d(14)
        self.fc = torch.nn.Linear(3 * 8 * 8, dim)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory) -> Path:
    return ijb.write_synthetic_release(tmp_path_factory.mktemp("ijb"), "IJBC", subjects=6,
                                       templates_per_subject=3, seed=1).root


@pytest.fixture(scope="module")
def reference(release_dir):
    """The reference's features (batch 5, a remainder batch on 67 rows) and its meta arrays."""
    feats, faceness = ref_image_features(release_dir, "IJBC", TinyNet().eval(), batch_size=5)
    assert len(feats) % 5
    return feats, faceness, ref_meta(release_dir, "IJBC")


# ----------------------------------------------------------------------------------------------
# alignment and embedding
# ----------------------------------------------------------------------------------------------

def test_similarity_matrices_bit_identical_to_skimage():
    from skimage import transform as trans
    rng = np.random.default_rng(0)
    pts = ijb.REFERENCE_POINTS - 56
    angle, scale = rng.uniform(-3, 3, 300), rng.uniform(0.3, 5, 300)
    rot = np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1), np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
    lm = np.einsum("nij,kj->nki", rot * scale[:, None, None], pts) + rng.uniform(40, 300, (300, 1, 2))
    lm = np.round(lm + rng.normal(0, 2, lm.shape), 3).astype(np.float32)
    lm[5] = lm[5, :, ::-1]                                  # a mirrored (reflection) landmark set
    lm[6] = np.float32([[10, 20], [30, 20], [50, 20], [70, 20], [90, 20]])     # collinear: rank 1
    lm[7] = np.float32([[10, 20], [20, 10], [30, 0], [40, -10], [50, -20]])
    lm[8] = 42.0                                            # one point five times: rank 0, NaN matrix
    got = ijb.similarity_matrices(lm)
    for i in range(len(lm)):
        t = trans.SimilarityTransform()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t.estimate(lm[i], ijb.REFERENCE_POINTS)
        assert np.array_equal(got[i], t.params[:2], equal_nan=True), i
    assert np.isnan(got[8]).all() and not np.isnan(got[:8]).any()


def test_aligned_crops_equal_reference_pixels(release_dir):
    release = ijb.read_release(release_dir, "IJBC")
    batches = ijb.AlignedCropBatches(release.crop_paths(), ijb.similarity_matrices(release.landmarks), 16,
                                     np.zeros(len(release.names), bool))
    parts = [batches[i][1].numpy() for i in range(len(batches))]
    crops = np.concatenate([p[:len(p) // 2] for p in parts])
    mirrors = np.concatenate([p[len(p) // 2:] for p in parts])
    assert crops.shape == mirrors.shape == (len(release.names), 3, 112, 112)
    for row in range(len(release.names)):
        blob = ref_align(str(release.crop_dir / release.names[row]), release.landmarks[row])
        assert np.array_equal(crops[row], blob[0]), release.names[row]
        assert np.array_equal(mirrors[row], blob[1])
    assert (crops.reshape(len(crops), -1).min(1) == 0).any()        # some warp reaches the black border


def test_embedding_matches_reference_any_batch_size(release_dir, reference):
    feats_ref, faceness_ref, _ = reference
    release = ijb.read_release(release_dir, "IJBC")
    assert np.array_equal(release.faceness, faceness_ref)
    for batch_size in (7, 128):                             # remainder batch / one partial batch
        emb = ijb.embed_release(release, TinyNet().eval(), batch_size=batch_size)
        assert emb.features.shape == (len(feats_ref), 192) and emb.features.dtype == np.float32
        np.testing.assert_allclose(emb.features, feats_ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# switches, pooling, scoring, TAR
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("switches", ijb.ALL_SWITCHES, ids=lambda s: s.code)
def test_every_switch_scores_and_tars_equal_reference(release_dir, reference, switches):
    feats, faceness, (templates, medias, p1, p2, label) = reference
    x = ref_switch(feats, faceness, switches.flip, switches.norm, switches.detector_score)
    tfeats, unique = ref_templates(x, templates, medias)
    expected = ref_scores(tfeats, unique, p1, p2)
    release = ijb.read_release(release_dir, "IJBC")
    got = ijb.verify(release, feats, switches)
    np.testing.assert_allclose(got.scores, expected, rtol=0, atol=1e-12)
    assert got.tar == ref_tar(label, expected)


def test_template_pooling_bit_identical_to_reference_loops():
    rng = np.random.default_rng(5)
    n = 3000
    templates = rng.choice([7, 3, 900, 41, 42, 10 ** 6], n)
    medias = rng.integers(0, 40, n)                          # media ids shared across templates
    feats = (rng.standard_normal((n, 24)) * rng.uniform(0.1, 30, (n, 1))).astype(np.float32)
    expected, unique_ref = ref_templates(feats, templates, medias)
    got, unique = ijb.template_features(feats, templates, medias)
    assert np.array_equal(unique, unique_ref)
    assert np.array_equal(got, expected)


def test_unusable_rows_are_left_out_of_pooling():
    rng = np.random.default_rng(2)
    templates, medias = np.array([5, 5, 5, 9, 9, 11]), np.array([1, 1, 2, 3, 3, 4])
    feats = rng.standard_normal((6, 8)).astype(np.float32)
    usable = np.array([True, False, True, True, True, False])
    got, unique = ijb.template_features(feats, templates, medias, usable)
    expected, _ = ref_templates(feats[usable], templates[usable], medias[usable])
    assert np.array_equal(got[:2], expected) and not got[2].any()     # template 11 lost its only row


@pytest.mark.parametrize("dense", [0.0, 1.1])                  # all blocks by BLAS / all by row dots
def test_pair_scores_blocked_equal_row_dots(dense):
    rng = np.random.default_rng(4)
    tfeats = ijb.l2_normalize(rng.standard_normal((23, 17)))
    i1, i2 = rng.integers(0, 23, 500), rng.integers(0, 23, 500)
    got = ijb.pair_scores(tfeats, i1, i2, block=4, max_columns=3, dense=dense)
    np.testing.assert_allclose(got, np.sum(tfeats[i1] * tfeats[i2], -1), rtol=0, atol=1e-14)


def test_roc_curve_identical_to_sklearn_with_ties():
    from sklearn.metrics import roc_curve
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(3, 4000))
        labels = (rng.random(n) < rng.uniform(0.01, 0.5)).astype(int)
        labels[:2] = [0, 1]
        scores = np.round(rng.standard_normal(n) + labels, int(rng.integers(0, 4)))   # many ties
        expected = roc_curve(labels, scores)
        for a, b in zip(ijb.roc_curve(labels, scores), expected):
            assert np.array_equal(a, b), trial


def test_tar_rule_nearest_fpr_ties_and_below_smallest_fpr():
    # 4 genuine, 1000 impostors: one impostor at 0.85, the others below 0.5
    genuine = [0.9, 0.8, 0.3, 0.1]
    impostor = [0.85] + list(np.linspace(0.0, 0.45, 999))
    label = np.array([1] * 4 + [0] * 1000)
    score = np.array(genuine + impostor)
    fpr, tpr, _ = ijb.roc_curve(label, score)
    tar = ijb.tar_at_far(fpr, tpr)
    assert tar == ref_tar(label, score)
    assert tar["1e-06"] == 0.25 and tar["1e-05"] == 0.25      # below 1/1000: FPR 0, largest TPR there (0.9)
    assert tar["0.001"] == 0.5                                # one false accept: 0.9 and 0.8 accepted
    # exact tie in distance: FPR 0.0 and 0.02 around 0.01 -> the larger FPR (first in reversed order)
    fpr = np.array([0.0, 0.0, 0.02, 0.02, 1.0])
    tpr = np.array([0.0, 0.3, 0.3, 0.6, 1.0])
    assert abs(0.0 - 0.01) == abs(0.02 - 0.01)
    fpr_r, tpr_r = np.flipud(fpr), np.flipud(tpr)
    _, i = min(list(zip(abs(fpr_r - 0.01), range(len(fpr_r)))))       # the original's expression
    assert ijb.tar_at_far(fpr, tpr)["0.01"] == tpr_r[i] == 0.6
    assert ijb.tar_at_far(fpr, tpr)["1e-06"] == 0.3          # largest TPR at FPR 0


def test_downsampled_roc_is_log_spaced_and_bounded():
    fpr = np.r_[0.0, np.sort(np.random.default_rng(0).random(10000)) ** 4, 1.0]
    tpr = np.sqrt(fpr)
    down_f, down_t = ijb.downsample_roc(fpr, tpr, 2000)
    assert len(down_f) <= 2000 and down_f[0] == 0.0 and down_f[-1] == 1.0
    assert np.all(np.diff(down_f) > 0) and np.allclose(down_t, np.sqrt(down_f))
    assert sum(f < 1e-4 for f in down_f) > 300                # log spacing keeps the low-FPR end


def test_table_format_matches_original():
    text = ijb.tar_table([("ijbc-IJBC", {str(x): 0.5 + i / 100 for i, x in enumerate(ijb.FAR_TARGETS)})])
    lines = text.splitlines()
    assert lines[1] == "|  Methods  | 1e-06 | 1e-05 | 0.0001 | 0.001 |  0.01 |  0.1  |"
    assert lines[3] == "| ijbc-IJBC | 50.00 | 51.00 | 52.00  | 53.00 | 54.00 | 55.00 |"
    assert lines[0] == lines[2] == lines[4] and lines[0].startswith("+-----------+")


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------

def _copy_release(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_missing_meta_file_named(release_dir, tmp_path):
    root = _copy_release(release_dir, tmp_path / "IJBC")
    (root / "meta" / "ijbc_name_5pts_score.txt").unlink()
    with pytest.raises(ijb.IJBDataError, match=r"ijbc_name_5pts_score.txt: meta file not found"):
        ijb.read_release(root, "IJBC")
    with pytest.raises(ijb.IJBDataError, match="--target must match"):
        ijb.read_release(release_dir, "IJBB")


def test_landmark_rows_must_match_tid_mid_rows(release_dir, tmp_path):
    root = _copy_release(release_dir, tmp_path / "IJBC")
    path = root / "meta" / "ijbc_name_5pts_score.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    n = len(path.read_text().splitlines())
    with pytest.raises(ijb.IJBDataError, match=rf"{n} rows but ijbc_face_tid_mid.txt has {n + 1}"):
        ijb.read_release(root, "IJBC")


def test_pair_template_without_rows_named(release_dir, tmp_path):
    root = _copy_release(release_dir, tmp_path / "IJBC")
    path = root / "meta" / "ijbc_template_pair_label.txt"
    lines = path.read_text().splitlines()
    lines[2] = f"{lines[2].split()[0]} 999999 0"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ijb.IJBDataError, match=r"1 pairs name templates that no row .* line 3, template 999999"):
        ijb.read_release(root, "IJBC")


def test_pair_file_errors_name_the_line_across_chunks(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("".join(f"{i} {i + 1} {i % 2}\n" for i in range(1000)) + "5 6 x\n")
    with pytest.raises(ijb.IJBDataError, match=r"pairs.txt: line 1001: unexpected character 'x'"):
        ijb.read_pairs(path, chunk_bytes=100)
    path.write_text("".join(f"{i} {i + 1} {i % 2}\n" for i in range(1000)) + "5 6\n")
    with pytest.raises(ijb.IJBDataError, match=r"line 1001 has 2 fields; expected 3"):
        ijb.read_pairs(path, chunk_bytes=64)
    path.write_text("".join(f"{i} {i + 1} {i % 2}\n" for i in range(1000)))
    t1, t2, label = ijb.read_pairs(path, chunk_bytes=37)
    assert t1.tolist() == list(range(1000)) and t2.tolist() == list(range(1, 1001))
    assert label.tolist() == [i % 2 for i in range(1000)]


def test_unreadable_crops_counted_and_named(release_dir, tmp_path):
    root = _copy_release(release_dir, tmp_path / "IJBC")
    (root / "loose_crop" / "3.jpg").write_bytes(b"not a jpeg")
    (root / "loose_crop" / "10.jpg").unlink()
    release = ijb.read_release(root, "IJBC")
    skip = ijb.missing_crops(release)
    assert np.flatnonzero(skip).tolist() == [9]
    with pytest.raises(ijb.IJBDataError, match=rf"2 of {len(release.names)} crops cannot be read \(--max-bad 1\): 10.jpg \(missing\); "
                                               r"3.jpg \(not a decodable image\)"):
        ijb.embed_release(release, TinyNet().eval(), 16, max_bad=1, skip=skip)
    emb = ijb.embed_release(release, TinyNet().eval(), 16, max_bad=2, skip=skip)
    assert sorted(emb.bad_rows) == [2, 9] and np.isnan(emb.features[[2, 9]]).all()
    assert not np.isnan(np.delete(emb.features, [2, 9], 0)).any()


# ----------------------------------------------------------------------------------------------
# 1:N identification
# ----------------------------------------------------------------------------------------------

def test_gallery_metrics_hand_checked_ranks():
    gallery_subjects = np.array([10, 20, 30])
    probe_subjects = np.array([10, 20, 30, 99, 98])
    sim = np.array([[0.9, 0.1, 0.2],     # mate 10 first: rank 1
                    [0.5, 0.4, 0.6],     # mate 20 scores 0.4 < 0.5, 0.6: rank 3
                    [0.3, 0.7, 0.7],     # mate 30 ties 0.7 with subject 20: rank 2 (ties count against)
                    [0.2, 0.8, 0.1],     # non-mated, best 0.8
                    [0.35, 0.1, 0.0]])   # non-mated, best 0.35
    m = ijb.gallery_metrics(sim, probe_subjects, gallery_subjects, ranks=(1, 2, 3), fpirs=(0.0, 0.5, 1.0))
    assert m["mated_probes"] == 3 and m["nonmated_probes"] == 2
    assert m["cmc"] == {"1": 1 / 3, "2": 2 / 3, "3": 1.0}
    # FPIR 0: threshold 0.8 (no non-mated probe above): only probe 0 (rank 1, 0.9 > 0.8)
    # FPIR 0.5: threshold 0.35: probe 0 again (probe 2 is rank 2); FPIR 1: no threshold
    assert m["tpir_at_fpir"] == {"0.0": 1 / 3, "0.5": 1 / 3, "1.0": 1 / 3}


def test_identification_on_generated_release(release_dir, reference):
    feats = reference[0]
    release = ijb.read_release(release_dir, "IJBC")
    v = ijb.verify(release, feats, ijb.Switches())
    result = ijb.identification(release, v.template_feats, v.unique_templates)
    g1, g2 = result["galleries"]["G1"], result["galleries"]["G2"]
    assert (g1["mated_probes"], g1["nonmated_probes"]) == (6, 6) == (g2["mated_probes"], g2["nonmated_probes"])
    # by hand: a probe's rank from the template features and the generator's ground truth
    info_subject = {}
    for line in (release_dir / "meta" / "ijbc_1N_gallery_G1.csv").read_text().splitlines()[1:]:
        tid, sid = map(int, line.split(",")[:2])
        info_subject[tid] = sid
    gal = sorted(info_subject)
    probes = [int(l.split(",")[0]) for l in (release_dir / "meta" / "ijbc_1N_probe_mixed.csv").read_text()
              .splitlines()[1:]]
    ranks = []
    for p in dict.fromkeys(probes):
        sid = [int(l.split(",")[1]) for l in (release_dir / "meta" / "ijbc_1N_probe_mixed.csv").read_text()
               .splitlines()[1:] if int(l.split(",")[0]) == p][0]
        if sid not in info_subject.values():
            continue
        f = v.template_feats[np.searchsorted(v.unique_templates, p)]
        s = {g: float(f @ v.template_feats[np.searchsorted(v.unique_templates, g)]) for g in gal}
        mate = [g for g in gal if info_subject[g] == sid][0]
        ranks.append(1 + sum(s[g] >= s[mate] for g in gal if g != mate))
    assert g1["cmc"]["1"] == np.mean(np.array(ranks) <= 1)
    assert result["mean"]["cmc"]["1"] == (g1["cmc"]["1"] + g2["cmc"]["1"]) / 2


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def _run_folder(tmp_path: Path, dim: int = 64) -> tuple[Path, torch.nn.Module]:
    from backbones import get_model
    run = tmp_path / "run_a"
    run.mkdir()
    torch.manual_seed(0)
    net = get_model("mbf_tiny", num_features=dim).eval()
    torch.save(net.state_dict(), run / "model.pt")
    (run / "training.log").write_text("")
    return run, net


@pytest.mark.slow
def test_cli_end_to_end_torch_onnx_features_all_switches(release_dir, tmp_path, capsys):
    import torch2onnx
    run, net = _run_folder(tmp_path)
    args = ["--image-path", str(release_dir), "--target", "IJBC", "--batch-size", "16", "--no-progress"]
    assert ijb.main(["--model", str(run / "model.pt"), "--network", "mbf_tiny", "--num-features", "64",
                     "--workers", "2", "--1n", *args]) == 0
    out = capsys.readouterr().out
    result = run / "ijb"
    assert sorted(p.name for p in result.iterdir()) == ["ijbc.json", "ijbc.npy", "ijbc.png", "ijbc_features.npy"]
    payload = json.loads((result / "ijbc.json").read_text())
    assert payload["target"] == "IJBC" and payload["name"] == "run_a-IJBC" and payload["model"].endswith("model.pt")
    assert payload["switches"] == {"flip": True, "norm": True, "detector_score": True}
    assert list(payload["tar_at_far"]) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    assert 0 < payload["auc"] <= 1 and len(payload["roc"]["fpr"]) == len(payload["roc"]["tpr"]) <= 2000
    assert payload["embedding_size"] == 64 and set(payload["identification"]["galleries"]) == {"G1", "G2"}
    row = [line for line in out.splitlines() if line.startswith("| run_a-IJBC |")][0]
    assert row.split("|")[2].strip() == f"{payload['tar_at_far']['1e-06'] * 100:.2f}"
    assert "rank-1" in out and (result / "ijbc.png").read_bytes()[:4] == b"\x89PNG"
    # the library on the same release and network gives the same scores
    release = ijb.read_release(release_dir, "IJBC")
    features = np.load(result / "ijbc_features.npy")
    lib = ijb.verify(release, ijb.embed_release(release, net, 16).features, ijb.Switches())
    np.testing.assert_allclose(np.load(result / "ijbc.npy"), lib.scores, rtol=0, atol=1e-6)
    assert payload["tar_at_far"] == lib.tar
    # ONNX export of the same weights: the same numbers
    onnx_path = tmp_path / "m.onnx"
    torch2onnx.convert_onnx(net, None, onnx_path)
    assert ijb.main(["--onnx", str(onnx_path), "--result-dir", str(tmp_path / "onnx"), "--workers", "0", *args]) == 0
    onnx_payload = json.loads((tmp_path / "onnx" / "ijbc.json").read_text())
    np.testing.assert_allclose(np.load(tmp_path / "onnx" / "ijbc.npy"), lib.scores, rtol=0, atol=1e-5)
    assert onnx_payload["tar_at_far"] == payload["tar_at_far"] and onnx_payload["name"] == "m-IJBC"
    # cached features: no model, identical scores; all eight switch settings from one pass
    assert ijb.main(["--features", str(result / "ijbc_features.npy"), "--all-switches",
                     "--result-dir", str(tmp_path / "feat"), *args]) == 0
    feat_payload = json.loads((tmp_path / "feat" / "ijbc.json").read_text())
    assert np.array_equal(np.load(tmp_path / "feat" / "ijbc.npy"), np.load(result / "ijbc.npy"))
    assert set(feat_payload["all_switches"]) == {s.code for s in ijb.ALL_SWITCHES}
    assert feat_payload["all_switches"]["N1D1F1"]["tar_at_far"] == payload["tar_at_far"]
    n0 = ijb.verify(release, features, ijb.Switches(flip=False, norm=False, detector_score=True))
    assert feat_payload["all_switches"]["N0D1F0"]["tar_at_far"] == n0.tar
    assert not (tmp_path / "feat" / "ijbc_features.npy").exists()


@pytest.mark.slow
def test_cli_subprocess_errors_one_line_and_nothing_left(release_dir, tmp_path):
    root = _copy_release(release_dir, tmp_path / "IJBC")
    (root / "loose_crop" / "4.jpg").unlink()
    run, _ = _run_folder(tmp_path)
    out_dir = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "eval.ijb", "--model", str(run / "model.pt"), "--network",
                           "mbf_tiny", "--num-features", "64", "--image-path", str(root), "--result-dir",
                           str(out_dir), "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines() == [
        f"error: 1 of {len(ijb.read_release(root, 'IJBC').names)} crops cannot be read (--max-bad 0): 4.jpg (missing): re-extract loose_crop from the "
        "release, or raise --max-bad to skip them"]
    assert not out_dir.exists()


def test_cli_bad_network_and_missing_result_dir(release_dir, tmp_path, capsys):
    assert ijb.main(["--model", "x.pt", "--network", "iresnet50", "--image-path", str(release_dir),
                     "--result-dir", str(tmp_path / "o")]) == 2
    assert "unknown network 'iresnet50'" in capsys.readouterr().err
    assert ijb.main(["--onnx", str(tmp_path / "m.onnx"), "--image-path", str(release_dir)]) == 4
    assert "pass --result-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ijb.parse_args(["--model", "x.pt", "--features", "f.npy", "--image-path", str(release_dir)])
    with pytest.raises(SystemExit):
        ijb.parse_args(["--image-path", str(release_dir)])
    assert ijb.parse_args(["--features", "f.npy", "--image-path", "x", "--flip-test", "false"]).flip_test is False
    assert ijb.parse_args(["--features", "f.npy", "--image-path", "x", "--no-norm-score"]).norm_score is False
    assert not (tmp_path / "o").exists()


def test_failed_write_leaves_nothing(release_dir, reference, tmp_path, monkeypatch):
    np.save(tmp_path / "f.npy", reference[0])
    out = tmp_path / "res"

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ijb, "plot_roc", broken)
    with pytest.raises(OSError):
        ijb.main(["--features", str(tmp_path / "f.npy"), "--image-path", str(release_dir), "--result-dir", str(out)])
    assert not out.exists()


def test_ijbb_layout_same_code(tmp_path):
    root = ijb.write_synthetic_release(tmp_path, "IJBB", subjects=4, templates_per_subject=2, seed=3).root
    assert (root / "meta" / "ijbb_face_tid_mid.txt").is_file() and root.name == "IJBB"
    release = ijb.read_release(tmp_path, "IJBB")                 # the release root: uses its IJBB folder
    assert release.root == root and release.target == "IJBB"
    v = ijb.verify(release, ijb.embed_release(release, TinyNet(dim=40).eval(), 3).features, ijb.Switches())
    result = ijb.identification(release, v.template_feats, v.unique_templates)
    assert set(result["galleries"]) == {"S1", "S2"}
    assert all(g["mated_probes"] == 2 and g["nonmated_probes"] == 2 for g in result["galleries"].values())


def test_benchmark_baseline_transcription_agrees(release_dir):
    sys.path.insert(0, str(REPO / "bench"))
    import bench_ijb
    orig = bench_ijb.run_original(release_dir, "IJBC", batch_size=16)
    ours = bench_ijb.run_project(release_dir, "IJBC", batch_size=16, workers=0)
    assert orig["tar"] == ours["tar"]
    np.testing.assert_allclose(orig["score"], ours["score"], rtol=0, atol=1e-6)
    assert set(orig["times"]) <= set(ours["times"]) and ours["times"]["model_s"] > 0


def test_1n_lists_checked_before_the_model(release_dir, tmp_path, capsys):
    root = _copy_release(release_dir, tmp_path / "IJBC")
    (root / "meta" / "ijbc_1N_gallery_G2.csv").unlink()
    args = ["--onnx", str(tmp_path / "absent.onnx"), "--image-path", str(root), "--result-dir", str(tmp_path / "o")]
    assert ijb.main([*args, "--1n"]) == 4
    assert "ijbc_1N_gallery_G2.csv: 1:N list not found" in capsys.readouterr().err
    assert ijb.main(args) == 5                                  # without --1n the model is the first problem
    assert "ONNX model not found: " in capsys.readouterr().err


def test_three_node_onnx_graph_with_96_d_output_equals_torch(release_dir, tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from face_model import check_onnx_model, load_onnx
    net = TinyNet(dim=96).eval()
    nodes = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[14, 14], strides=[14, 14]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 96])],
                              [numpy_helper.from_array(net.fc.weight.detach().numpy(), "w"),
                               numpy_helper.from_array(net.fc.bias.detach().numpy(), "b")])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    check_onnx_model(str(path))                                   # few nodes, 96-d: accepted
    release = ijb.read_release(release_dir, "IJBC")
    via_onnx = ijb.embed_release(release, load_onnx(path), 32).features
    via_torch = ijb.embed_release(release, net, 32).features
    np.testing.assert_allclose(via_onnx, via_torch, rtol=1e-5, atol=1e-5)
    assert ijb.verify(release, via_onnx, ijb.Switches()).tar == ijb.verify(release, via_torch, ijb.Switches()).tar
