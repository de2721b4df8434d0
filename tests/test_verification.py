"""eval/verification.py: the protocol pinned to the original's numbers, the flip test, load_bin."""
from __future__ import annotations

import json
import pickle
import re

import cv2
import numpy as np
import pytest
import torch

from bench import eval_loop_baseline as baseline
from eval import verification as V


@pytest.fixture(scope="module")
def ver_dir(fixtures_dir):
    return fixtures_dir / "verification"


@pytest.fixture(scope="module")
def expected(ver_dir):
    return json.loads((ver_dir / "expected.json").read_text())


def _case_embeddings(ver_dir, case):
    """The embeddings the original evaluated for a fixture case, and its issame list."""
    if case == "small_p300":
        data = np.load(ver_dir / "small_p300.npz")
        return data["embeddings"], data["issame"]
    data = np.load(ver_dir / "flip_p300.npz")
    return V.flip_embeddings([data["emb_orig"], data["emb_flip"]]), data["issame"]


# ---------------------------------------------------------------------------------------------
# protocol vs the original's numbers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["small_p300", "flip_p300"])
def test_evaluate_matches_original(ver_dir, expected, case):
    exp = expected[case]
    arrays = np.load(ver_dir / exp["tpr_fpr_file"])
    embeddings, issame = _case_embeddings(ver_dir, case)
    ev = V.evaluate_folds(embeddings, issame, nrof_folds=exp["n_folds"])

    assert ev.roc.accuracy.tolist() == exp["accuracy_per_fold"]
    assert ev.roc.best_threshold_index.tolist() == exp["best_threshold_index_per_fold"]
    np.testing.assert_allclose(ev.roc.best_threshold, exp["best_threshold_per_fold"], rtol=0, atol=1e-12)
    assert ev.roc.fold_sizes == exp["test_fold_sizes"]
    assert abs(np.mean(ev.roc.accuracy) - exp["acc_mean"]) < 1e-12
    assert abs(np.std(ev.roc.accuracy) - exp["acc_std"]) < 1e-12
    np.testing.assert_allclose(ev.roc.thresholds, arrays["thresholds_roc"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ev.roc.tpr, arrays["tpr"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ev.roc.fpr, arrays["fpr"], rtol=0, atol=1e-12)

    vf = ev.val_far
    assert abs(vf.val - exp["val"]) < 1e-12 and abs(vf.val_std - exp["val_std"]) < 1e-12
    assert abs(vf.far - exp["far"]) < 1e-12
    np.testing.assert_allclose(vf.val_per_fold, exp["val_per_fold"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(vf.far_per_fold, exp["far_per_fold"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(vf.threshold_per_fold, exp["val_threshold_per_fold"], rtol=0, atol=1e-12)

    tpr, fpr, accuracy, val, val_std, far = V.evaluate(embeddings, issame)
    assert accuracy.tolist() == exp["accuracy_per_fold"]
    assert (val, val_std, far) == (vf.val, vf.val_std, vf.far)
    np.testing.assert_array_equal(tpr, ev.roc.tpr)
    np.testing.assert_array_equal(fpr, ev.roc.fpr)


def test_float32_and_float64_inputs_agree(ver_dir, expected):
    embeddings, issame = _case_embeddings(ver_dir, "small_p300")
    a = V.evaluate_folds(embeddings.astype(np.float32), issame)
    b = V.evaluate_folds(embeddings.astype(np.float64), issame)
    assert a.roc.accuracy.tolist() == b.roc.accuracy.tolist() == expected["small_p300"]["accuracy_per_fold"]


def test_original_function_signatures(ver_dir, expected):
    embeddings, issame = _case_embeddings(ver_dir, "small_p300")
    exp = expected["small_p300"]
    tpr, fpr, acc = V.calculate_roc(np.arange(0, 4, 0.01), embeddings[0::2], embeddings[1::2],
                                    np.asarray(issame), nrof_folds=10, pca=0)
    assert acc.tolist() == exp["accuracy_per_fold"] and tpr.shape == fpr.shape == (400,)
    val, val_std, far = V.calculate_val(np.arange(0, 4, 0.001), embeddings[0::2], embeddings[1::2],
                                        np.asarray(issame), 1e-3, nrof_folds=10)
    assert abs(val - exp["val"]) < 1e-12 and abs(val_std - exp["val_std"]) < 1e-12 and abs(far - exp["far"]) < 1e-12


def test_flip_embeddings_and_xnorm(ver_dir, expected):
    data = np.load(ver_dir / "flip_p300.npz")
    combined = np.load(ver_dir / "flip_p300_expected.npz")["embeddings_combined"]
    raw = [data["emb_orig"], data["emb_flip"]]
    np.testing.assert_allclose(V.flip_embeddings(raw), combined, rtol=0, atol=1e-12)
    assert V.xnorm(raw) == pytest.approx(expected["flip_p300"]["xnorm"], rel=1e-6)


def _random_pairs(n_pairs, seed, dim=32, coarse=False):
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.45
    first = rng.standard_normal((n_pairs, dim))
    noise = rng.uniform(0.3, 2.5, (n_pairs, 1)) * rng.standard_normal((n_pairs, dim))
    second = np.where(issame[:, None], first + noise, rng.standard_normal((n_pairs, dim)))
    emb = np.empty((2 * n_pairs, dim))
    emb[0::2], emb[1::2] = first, second
    emb = V.l2_normalize(emb)
    if coarse:                     # many equal distances: ties on the accuracy plateau
        emb = V.l2_normalize(np.round(emb * 4) / 4)
    return emb.astype(np.float32), issame


@pytest.mark.parametrize("n_pairs,n_folds,seed,coarse", [(137, 10, 1, False), (61, 10, 2, True),
                                                         (40, 3, 3, False), (25, 1, 4, True)])
def test_vectorised_equals_loop_baseline(n_pairs, n_folds, seed, coarse):
    emb, issame = _random_pairs(n_pairs, seed, coarse=coarse)
    tpr, fpr, acc, val, val_std, far, best, val_thr = baseline.evaluate(emb, issame, nrof_folds=n_folds)
    ev = V.evaluate_folds(emb, issame, nrof_folds=n_folds)
    assert ev.roc.accuracy.tolist() == acc.tolist()
    assert ev.roc.best_threshold_index.tolist() == best.tolist()
    np.testing.assert_allclose(ev.roc.tpr, tpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ev.roc.fpr, fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ev.val_far.threshold_per_fold, val_thr, rtol=0, atol=1e-12)
    assert (ev.val_far.val, ev.val_far.val_std, ev.val_far.far) == pytest.approx((val, val_std, far), abs=1e-12)


def test_fold_bounds_like_sklearn_kfold():
    from sklearn.model_selection import KFold
    for n, k in [(300, 10), (137, 10), (11, 10), (7000, 10), (50, 7)]:
        tests = [(int(t[0]), int(t[-1]) + 1) for _, t in KFold(n_splits=k).split(np.arange(n))]
        assert V.fold_bounds(n, k) == tests
    with pytest.raises(ValueError, match="cannot split 5 pairs into 10 folds"):
        V.fold_bounds(5, 10)


def test_pca_branch_matches_reference():
    from sklearn.decomposition import PCA
    from sklearn.model_selection import KFold
    emb, issame = _random_pairs(60, 5, dim=16)
    e1, e2 = emb[0::2].astype(np.float64), emb[1::2].astype(np.float64)
    thresholds = np.arange(0, 4, 0.01)
    accs = []
    for train, test in KFold(n_splits=3).split(np.arange(60)):
        model = PCA(n_components=4).fit(np.concatenate((e1[train], e2[train])))
        a, b = V.l2_normalize(model.transform(e1)), V.l2_normalize(model.transform(e2))
        dist = np.sum(np.square(a - b), 1)
        train_acc = [baseline.accuracy_at(t, dist[train], issame[train])[2] for t in thresholds]
        accs.append(baseline.accuracy_at(thresholds[int(np.argmax(train_acc))], dist[test], issame[test])[2])
    _, _, accuracy, _, _, _ = V.evaluate(emb.astype(np.float64), issame, nrof_folds=3, pca=4)
    assert accuracy.tolist() == accs


def test_interpolate_threshold_formula():
    thresholds = np.arange(0, 4, 0.001)
    far = np.zeros(4000)
    far[1500:] = 0.0005
    far[1600:] = 0.002
    far[3000:] = 0.01
    # last index with FAR <= 1e-3 is 1599, next is 1600: 1.599 + 0.001 * (0.0005 / 0.0015)
    assert V.interpolate_threshold(far, thresholds, 1e-3) == pytest.approx(1.599 + 0.001 / 3, abs=1e-15)
    assert V.interpolate_threshold(np.minimum(far, 0.0009), thresholds, 1e-3) == 0.0
    far[1600:] = 0.001                                    # reaches the target exactly, never above it
    assert V.interpolate_threshold(far, thresholds, 1e-3) == pytest.approx(3.999, abs=1e-15)


def test_val_division_by_zero_edge_cases_give_nan_not_crash():
    emb, issame = _random_pairs(40, 6)
    issame[0:4] = False                                   # fold 0 (pairs 0-3): no genuine pair
    ev = V.evaluate_folds(emb, issame, nrof_folds=10)
    assert np.isnan(ev.val_far.val_per_fold[0]) and not np.isnan(ev.val_far.val_per_fold[1:]).any()
    assert ev.val_far.val == pytest.approx(np.mean(ev.val_far.val_per_fold[1:]))
    assert ev.roc.tpr.shape == (400,) and ev.roc.accuracy.shape == (10,)

    only_genuine = np.ones(40, bool)
    ev = V.evaluate_folds(emb, only_genuine, nrof_folds=10)
    assert (ev.val_far.threshold_per_fold == 0.0).all() and np.isnan(ev.val_far.far)
    assert ev.val_far.val == 0.0 and (ev.roc.fpr == 0).all()


def test_evaluate_rejects_inconsistent_input():
    emb, issame = _random_pairs(20, 7)
    with pytest.raises(ValueError, match="20 / 20 embeddings for 19 pairs"):
        V.evaluate(emb, issame[:19])
    with pytest.raises(ValueError, match="pairs adjacent"):
        V.evaluate(emb[:-1], issame)


# ---------------------------------------------------------------------------------------------
# test(): the flip test with a stand-in backbone returning the fixture's raw embeddings
# ---------------------------------------------------------------------------------------------

class FixtureBackbone(torch.nn.Module):
    """Returns the fixture's raw outputs for the image whose pixels encode (index, view)."""

    def __init__(self, emb_orig, emb_flip):
        super().__init__()
        self.register_buffer("table", torch.from_numpy(np.stack([emb_orig, emb_flip])))
        self.calls: list[tuple[bool, list[int], list[int]]] = []

    def forward(self, x):
        assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
        pixels = torch.round((x * 0.5 + 0.5) * 255).long()
        index = pixels[:, 0, 0, 0] + 256 * pixels[:, 1, 0, 0]
        view = pixels[:, 2, 0, 0] // 255
        self.calls.append((self.training, index.tolist(), view.tolist()))
        return self.table[view, index]


def _encoded_images(n, view, dtype):
    idx = torch.arange(n)
    images = torch.zeros((n, 3, 2, 2), dtype=torch.uint8)
    images[:, 0], images[:, 1], images[:, 2] = (idx % 256)[:, None, None], (idx // 256)[:, None, None], 255 * view
    return images.to(dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_flip_test_returns_original_tuple(ver_dir, expected, dtype):
    data = np.load(ver_dir / "flip_p300.npz")
    exp = expected["flip_p300"]
    n = data["emb_orig"].shape[0]
    images = [_encoded_images(n, 0, dtype), _encoded_images(n, 1, dtype)]
    copies = [im.clone() for im in images]
    backbone = FixtureBackbone(data["emb_orig"], data["emb_flip"])
    backbone.train()
    acc1, std1, acc2, std2, xn, embeddings_list = V.test((images, list(data["issame"])), backbone, 64, 10)

    ret = exp["test_returns"]
    assert (acc1, std1) == (0.0, 0.0)
    assert abs(acc2 - ret["acc2"]) < 1e-12 and abs(std2 - ret["std2"]) < 1e-12
    assert xn == pytest.approx(ret["xnorm"], rel=1e-6)
    np.testing.assert_array_equal(embeddings_list[0], data["emb_orig"].astype(np.float64))
    np.testing.assert_array_equal(embeddings_list[1], data["emb_flip"].astype(np.float64))
    assert embeddings_list[0].dtype == np.float64
    assert [f"[flip_p300][0]XNorm: {xn:f}", f"[flip_p300][0]Accuracy-Flip: {acc2:1.5f}+-{std2:1.5f}"] \
        == exp["log_lines_as_upstream_prints"]
    # each image embedded exactly once, in order, in batches of 64 (last one partial), in eval mode
    for view in (0, 1):
        calls = [c for c in backbone.calls if c[2][0] == view]
        assert [len(c[1]) for c in calls] == [64] * 9 + [24]
        assert sum((c[1] for c in calls), []) == list(range(n))
    assert not any(training for training, _, _ in backbone.calls)
    assert backbone.training                                  # mode restored
    for im, copy in zip(images, copies):
        assert torch.equal(im, copy)                          # input not normalised in place


def test_flip_test_keeps_eval_mode_and_handles_small_sets(ver_dir):
    data = np.load(ver_dir / "flip_p300.npz")
    backbone = FixtureBackbone(data["emb_orig"], data["emb_flip"]).eval()
    images = [_encoded_images(20, 0, torch.uint8), _encoded_images(20, 1, torch.uint8)]
    out = V.test((images, list(data["issame"][:10])), backbone, batch_size=256, nfolds=10)
    assert not backbone.training
    assert [len(c[1]) for c in backbone.calls] == [20, 20]   # batch larger than the set: one call each
    assert out[4] == pytest.approx(V.xnorm([data["emb_orig"][:20], data["emb_flip"][:20]]))


# ---------------------------------------------------------------------------------------------
# load_bin
# ---------------------------------------------------------------------------------------------

def _manifest_channel_means(fixtures_dir):
    text = (fixtures_dir / "MANIFEST.md").read_text().split("## bin/", 1)[1].split("## corrupt/", 1)[0]
    rows = re.findall(r"^\| (\d+) \|.*\| ([\d.]+), ([\d.]+), ([\d.]+) \|$", text, flags=re.M)
    return {int(r[0]): [float(v) for v in r[1:]] for r in rows}


def test_load_bin_py2_and_py3_fixtures(fixtures_dir):
    means = _manifest_channel_means(fixtures_dir)
    assert len(means) == 20
    loaded = {}
    for name in ("tiny_py2.bin", "tiny_py3.bin"):
        data_list, issame = V.load_bin(fixtures_dir / "bin" / name, (112, 112))
        assert issame == [True, True, False, True, False, False, True, False, True, False]
        assert len(data_list) == 2
        for t in data_list:
            assert t.shape == (20, 3, 112, 112) and t.dtype == torch.uint8
        assert torch.equal(data_list[1], data_list[0].flip(3))
        assert not torch.equal(data_list[1], data_list[0])
        got = data_list[0].double().mean(dim=(2, 3))
        np.testing.assert_allclose(got.numpy(), [means[i] for i in range(20)], atol=0.006)
        loaded[name] = data_list
    assert torch.equal(loaded["tiny_py2.bin"][0], loaded["tiny_py3.bin"][0])
    single, _ = V.load_bin(fixtures_dir / "bin" / "tiny_py3.bin", (112, 112), num_threads=1)
    assert torch.equal(single[0], loaded["tiny_py3.bin"][0])


def _write_bin(path, images, issame, protocol=pickle.HIGHEST_PROTOCOL):
    bins = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            if isinstance(im, np.ndarray) else im for im in images]
    with open(path, "wb") as f:
        pickle.dump((bins, issame), f, protocol=protocol)
    return bins


def _faces(n, h=112, w=112, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        base = rng.uniform(40, 200, 3)
        img = base + 40 * np.sin(xx[..., None] / rng.uniform(4, 12)) + 30 * np.cos(yy[..., None] / rng.uniform(4, 12))
        out.append(np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8))
    return out


def test_load_bin_resizes_other_sizes_and_reads_protocol2(tmp_path):
    images = _faces(4, 120, 100)
    bins = _write_bin(tmp_path / "x.bin", images, [True, False], protocol=2)
    data_list, issame = V.load_bin(tmp_path / "x.bin", (112, 96))
    assert issame == [True, False] and data_list[0].shape == (4, 3, 112, 96)
    for i, buf in enumerate(bins):
        bgr = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
        ref = cv2.resize(bgr[..., ::-1].copy(), (96, 112), interpolation=cv2.INTER_CUBIC)
        assert torch.equal(data_list[0][i], torch.from_numpy(ref).permute(2, 0, 1))


@pytest.mark.parametrize("name,message", [("not_a_pickle.bin", "not a pickle"),
                                          ("truncated_pickle.bin", "truncated pickle")])
def test_load_bin_corrupt_fixtures(fixtures_dir, name, message):
    path = fixtures_dir / "corrupt" / name
    with pytest.raises(V.BinFileError) as err:
        V.load_bin(path, (112, 112))
    text = str(err.value)
    assert str(path) in text and message in text and "\n" not in text


def test_load_bin_bad_content_errors(tmp_path):
    good = _faces(4)
    cases = {
        "count.bin": ((_faces(3), [True, False]), "3 images but issame_list has 2 pairs (expected 4 images)"),
        "decode.bin": ((good[:3] + [b"not a jpeg"], [True, False]), "image 3 cannot be decoded"),
        "flags.bin": ((good, [True, b"x"]), "issame_list[1] is bytes, expected bool"),
        "shape.bin": (({"a": 1}, None), "expected a pickled (images, issame_list) tuple"),
    }
    for name, (obj, message) in cases.items():
        path = tmp_path / name
        if isinstance(obj, tuple) and obj[1] is not None:
            _write_bin(path, *obj)
        else:
            path.write_bytes(pickle.dumps(obj[0]))
        with pytest.raises(V.BinFileError, match=re.escape(message)) as err:
            V.load_bin(path)
        assert str(path) in str(err.value)
    with pytest.raises(V.BinFileError, match="file not found"):
        V.load_bin(tmp_path / "missing.bin")


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_load_bin_refuses_arbitrary_globals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Evil(), _Evil()], [True])))
    with pytest.raises(V.BinFileError, match="refusing to load builtins.exec"):
        V.load_bin(path)
    assert not (tmp_path / "PWNED").exists()
