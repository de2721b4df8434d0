"""CombinedMarginLoss / ArcFace / CosFace: float64 closed form, straight-through gradient, filtering."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from losses import ArcFace, CombinedMarginLoss, CosFace, check_margins
from utils.errors import ConfigError

MARGINS = {
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.4),
    "combined": (1.2, 0.3, 0.2),
    "plain": (1.0, 0.0, 0.0),
}


def _inputs(rows: int = 12, classes: int = 9, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cos = torch.rand(rows, classes, generator=gen, dtype=torch.float64) * 1.98 - 0.99
    labels = torch.randint(0, classes, (rows, 1), generator=gen)
    labels[::4] = -1
    return cos, labels


def _closed_form(cos, labels, s, m1, m2, m3, threshold=0.0):
    """float64 reference, element by element as the formula reads."""
    out = cos.clone()
    for i, label in enumerate(labels.view(-1).tolist()):
        for j in range(cos.size(1)):
            c = cos[i, j].item()
            if label == j:
                out[i, j] = math.cos(m1 * math.acos(c) + m2) - m3
            elif threshold > 0 and c > threshold:
                out[i, j] = 0.0
    return s * out


def _loss(name: str, s: float = 64.0, threshold: float = 0.0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CombinedMarginLoss(s, *MARGINS[name], interclass_filtering_threshold=threshold)


@pytest.mark.parametrize("name", sorted(MARGINS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_closed_form(name, dtype):
    cos, labels = _inputs()
    out = _loss(name)(cos.to(dtype), labels)
    expected = _closed_form(cos, labels, 64.0, *MARGINS[name])
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tol)
    assert out.dtype == dtype


def test_arcface_has_no_easy_margin_or_fallback():
    """theta + m2 > pi: the target is still cos(theta + m2) (larger than cos theta), like the original."""
    cos = torch.tensor([[-0.99, 0.2], [0.9, -0.3]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    out = ArcFace()(cos, labels)
    assert out[0, 0].item() == pytest.approx(64 * math.cos(math.acos(-0.99) + 0.5), abs=1e-12)
    assert out[0, 0].item() > 64 * -0.99
    assert out[1, 0].item() == pytest.approx(64 * math.cos(math.acos(0.9) + 0.5), abs=1e-12)


@pytest.mark.parametrize("name", sorted(MARGINS))
def test_backward_is_straight_through(name):
    """d out / d cos = s for every element, the target included (the original's no_grad margin)."""
    cos, labels = _inputs(seed=1)
    cos.requires_grad_(True)
    upstream = torch.randn(cos.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (_loss(name)(cos, labels) * upstream).sum().backward()
    torch.testing.assert_close(cos.grad, 64.0 * upstream, rtol=0, atol=1e-12)


def test_input_untouched_and_label_shapes():
    cos, labels = _inputs(seed=3)
    before = cos.clone()
    loss = _loss("arcface")
    out_column = loss(cos, labels)
    out_flat = loss(cos, labels.view(-1))
    assert torch.equal(cos, before)
    assert torch.equal(out_column, out_flat)


def test_rows_without_local_class_are_only_scaled():
    cos, _ = _inputs(seed=4)
    labels = torch.full((cos.size(0), 1), -1)
    torch.testing.assert_close(_loss("combined")(cos, labels), 64.0 * cos, rtol=0, atol=0)


def test_arcface_and_cosface_classes_equal_combined():
    cos, labels = _inputs(seed=5)
    arc = ArcFace(s=32.0, margin=0.3)
    assert (arc.s, arc.margin) == (32.0, 0.3)
    torch.testing.assert_close(arc(cos, labels), CombinedMarginLoss(32.0, 1.0, 0.3, 0.0)(cos, labels), rtol=0, atol=0)
    cosface = CosFace(s=30.0, m=0.35)
    assert (cosface.s, cosface.m) == (30.0, 0.35)
    torch.testing.assert_close(cosface(cos, labels), CombinedMarginLoss(30.0, 1.0, 0.0, 0.35)(cos, labels),
                               rtol=0, atol=0)
    defaults = ArcFace(), CosFace()
    assert (defaults[0].s, defaults[0].margin, defaults[1].s, defaults[1].m) == (64.0, 0.5, 64.0, 0.4)


def test_interclass_filtering():
    """Negatives above the threshold become 0 with zero gradient; a row's own positive is kept."""
    threshold = 0.3
    cos, labels = _inputs(rows=16, classes=10, seed=6)
    cos[1, labels[1, 0]] = 0.8  # a positive above the threshold stays
    cos.requires_grad_(True)
    out = _loss("arcface", threshold=threshold)(cos, labels)
    expected = _closed_form(cos.detach(), labels, 64.0, *MARGINS["arcface"], threshold=threshold)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert out[1, labels[1, 0]].item() == pytest.approx(64 * math.cos(math.acos(0.8) + 0.5))
    out.sum().backward()
    positive = torch.zeros_like(cos, dtype=torch.bool)
    valid = labels.view(-1) != -1
    positive[valid.nonzero().view(-1), labels.view(-1)[valid]] = True
    filtered = (cos.detach() > threshold) & ~positive
    assert filtered.any() and (~filtered).any()
    assert torch.all(cos.grad[filtered] == 0)
    assert torch.all(cos.grad[~filtered] == 64.0)


@pytest.mark.parametrize("args, key", [
    ((64.0, 0.5, 0.5, 0.0), "m1"),
    ((64.0, 5.0, 0.0, 0.0), "m1"),
    ((64.0, 1.0, -0.1, 0.0), "m2"),
    ((64.0, 1.0, 2.0, 0.0), "m2"),
    ((64.0, 1.0, 0.0, 1.0), "m3"),
    ((64.0, 1.0, 0.0, -0.2), "m3"),
    ((0.0, 1.0, 0.5, 0.0), "margin_scale"),
    ((64.0, "x", 0.5, 0.0), "m1"),
    ((64.0, 1.0, float("nan"), 0.0), "m2"),
])
def test_out_of_range_margins(args, key):
    with pytest.raises(ConfigError, match=key):
        CombinedMarginLoss(*args)


def test_bad_threshold_and_valid_values():
    with pytest.raises(ConfigError, match="interclass_filtering_threshold"):
        CombinedMarginLoss(64.0, 1.0, 0.5, 0.0, interclass_filtering_threshold=1.5)
    assert check_margins(64, 1, 0.5, 0, 0.2) == (64.0, 1.0, 0.5, 0.0, 0.2)
    with pytest.raises(ConfigError, match="margin"):
        ArcFace(margin=-0.5)


def test_combined_with_m3_warns_about_the_original():
    with pytest.warns(UserWarning, match="ignored m1 and m2"):
        CombinedMarginLoss(64.0, 1.0, 0.5, 0.2)
