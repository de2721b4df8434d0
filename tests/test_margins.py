"""Margin heads of losses.py against the formulas of ../shared/spec/margins.md, transcribed element by element.

Every expected value and derivative below is computed with Python's math module from the spec's
text (forward formula, gradient convention, running-state update), not with the code under test.
"""
from __future__ import annotations

import math

import pytest
import torch

from losses import AdaFace, CurricularFace, ElasticFaceArc, ElasticFaceCos, MagFace, get_margin

S = 64.0
EPS = 1e-3


def _close(actual: torch.Tensor, expected, tol: float = 1e-10) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.detach().double(), expected, rtol=tol, atol=tol)


def _cosines(rows: int, classes: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(rows, classes, generator=gen, dtype=torch.float64) * 1.6 - 0.8


def _grad(head_out: torch.Tensor, *inputs: torch.Tensor, seed: int = 7):
    """Gradients of sum(upstream * out) for a fixed random upstream; returns (upstream, grads)."""
    upstream = torch.randn(head_out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((head_out * upstream).sum(), inputs, allow_unused=True)
    return upstream, grads


def _std(values) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# ---------------------------------------------------------------- AdaFace

def _adaface_case():
    """Rows hit every branch: clamped cosines, clipped norms, angle clipped at eps and at pi - eps."""
    cos = _cosines(8, 5, seed=1)
    labels = torch.tensor([0, 1, 2, -1, 4, 3, 0, -1])
    norms = torch.tensor([0.0005, 5.0, 18.0, 22.0, 150.0, 40.0, 60.0, 9.0], dtype=torch.float64)
    cos[0, 0] = 0.9995        # clamped to 1 - eps; z = -1 (tiny norm)
    cos[4, 4] = 0.9993        # clamped; large norm -> z = +1 -> theta - m < eps: clipped
    cos[1, 1] = -0.9999       # clamped to -1 + eps; z = -1 -> theta + m > pi - eps: clipped
    cos[2, 0] = 0.99995       # a clamped negative
    cos[3, 2] = -0.99992      # clamped, on a row whose class is on another rank
    return cos, labels, norms


def _adaface_expected(cos, labels, norms, mu, sigma, m=0.4, h=0.333, straight=False):
    """(out, d out/d cos per element) of margins.md section 1, one row at a time."""
    out, grad = cos.clone(), torch.full_like(cos, S)
    for i, label in enumerate(labels.tolist()):
        n = min(max(norms[i].item(), 0.001), 100.0)
        z = min(max(h * (n - mu) / (sigma + EPS), -1.0), 1.0)
        for j in range(cos.size(1)):
            c = cos[i, j].item()
            if not straight:
                clamped = c < -1 + EPS or c > 1 - EPS
                c = min(max(c, -1 + EPS), 1 - EPS)
                grad[i, j] = 0.0 if clamped else S
            out[i, j] = S * c
            if j != label:
                continue
            theta = math.acos(c)
            angle = theta - m * z
            if straight:
                out[i, j] = S * (math.cos(angle) - (m + m * z))
                continue
            clipped = angle < EPS or angle > math.pi - EPS
            angle = min(max(angle, EPS), math.pi - EPS)
            out[i, j] = S * (math.cos(angle) - (m + m * z))
            if grad[i, j] != 0:
                grad[i, j] = 0.0 if clipped else S * math.sin(theta - m * z) / math.sin(theta)
    return out, grad


def _updated(stats, norms, alpha):
    clipped = [min(max(n, 0.001), 100.0) for n in norms.tolist()]
    mu, sigma = stats
    return (alpha * sum(clipped) / len(clipped) + (1 - alpha) * mu, alpha * _std(clipped) + (1 - alpha) * sigma)


@pytest.mark.parametrize("straight", [False, True], ids=["autograd", "straight_through"])
def test_adaface_forward_gradient_and_state_over_steps(straight):
    head = AdaFace(straight_through=straight).double()
    assert (head.batch_mean.item(), head.batch_std.item()) == (20.0, 100.0)
    cos0, labels, norms0 = _adaface_case()
    stats = (20.0, 100.0)
    for step in range(3):  # the statistics move: each step uses the values updated with its own batch
        cos = (cos0 * (1 - 0.05 * step)).clamp(-0.99999, 0.99999).requires_grad_(True)
        cos.data[0, 0], cos.data[4, 4], cos.data[1, 1] = 0.9995, 0.9993, -0.9999
        norms = (norms0 * (1 + 0.3 * step)).requires_grad_(True)
        stats = _updated(stats, norms.detach(), 0.01)
        out = head(cos, labels, norms)
        _close(head.batch_mean, [stats[0]], 1e-12)
        _close(head.batch_std, [stats[1]], 1e-12)
        expected, expected_grad = _adaface_expected(cos.detach(), labels, norms.detach(), *stats, straight=straight)
        _close(out, expected)
        upstream, (grad_cos, grad_norms) = _grad(out, cos, norms)
        _close(grad_cos, upstream * expected_grad)
        assert grad_norms is None, "AdaFace detaches the norms: no gradient through the margin"
    assert head.batch_mean.shape == (1,) and head.batch_std.shape == (1,)


def test_adaface_branches_are_hit():
    """The case above really exercises the clamps and both angle clips (else the test proves little)."""
    cos, labels, norms = _adaface_case()
    _, grad = _adaface_expected(cos, labels, norms, *_updated((20.0, 100.0), norms, 0.01))
    assert grad[0, 0] == 0 and grad[4, 4] == 0 and grad[1, 1] == 0 and grad[2, 0] == 0 and grad[3, 2] == 0
    assert (grad[5, 3] != S) and (grad[6, 0] != S)


def test_adaface_quality_extremes_reduce_to_arcface_and_cosface():
    """z = -1: ArcFace cos(theta + m); z = 0 (h = 0): CosFace cos(theta) - m; z = +1: cos(theta - m) - 2m."""
    cos = torch.tensor([[0.3, 0.1], [0.6, -0.2], [0.5, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0])
    low = AdaFace(h=1.0, t_alpha=1.0).double()
    out = low(cos, labels, torch.tensor([0.001, 0.001, 100.0], dtype=torch.float64))  # mu ~ 33, sigma ~ 57.7
    assert low.batch_mean.item() == pytest.approx((0.001 * 2 + 100) / 3)
    z = [max(-1.0, (n - low.batch_mean.item()) / (low.batch_std.item() + EPS)) for n in (0.001, 0.001, 100.0)]
    assert out[0, 0].item() == pytest.approx(S * (math.cos(math.acos(0.3) - 0.4 * z[0]) - 0.4 - 0.4 * z[0]))
    cosface = AdaFace(h=0.0).double()(cos, labels, torch.tensor([3.0, 50.0, 7.0], dtype=torch.float64))
    _close(cosface[:, 0], [S * (c - 0.4) for c in (0.3, 0.6, 0.5)])
    high = AdaFace(h=100.0, t_alpha=1.0).double()
    out = high(cos, labels, torch.tensor([1.0, 1.0, 99.0], dtype=torch.float64))
    assert out[2, 0].item() == pytest.approx(S * (math.cos(math.acos(0.5) - 0.4) - 0.8))
    assert out[0, 0].item() == pytest.approx(S * math.cos(math.acos(0.3) + 0.4))


def test_adaface_eval_mode_keeps_the_statistics():
    head = AdaFace().double().eval()
    cos, labels, norms = _adaface_case()
    head(cos, labels, norms)
    assert (head.batch_mean.item(), head.batch_std.item()) == (20.0, 100.0)


def test_adaface_float32_margins_from_half_inputs():
    cos, labels, norms = _adaface_case()
    head32, head_bf = AdaFace(), AdaFace()
    out32 = head32(cos.float(), labels, norms.float())
    out_bf = head_bf(cos.to(torch.bfloat16), labels, norms.float())
    assert head_bf.batch_mean.dtype == torch.float32 and torch.isfinite(out_bf.float()).all()
    torch.testing.assert_close(out_bf.float(), out32, rtol=0, atol=0.6)


# ---------------------------------------------------------------- MagFace

def _magface_expected(cos, labels, norms, easy=True, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8):
    """(out, d out/d cos, d out[target]/d norm per row) of margins.md section 2."""
    out, grad = S * cos.clone(), torch.full_like(cos, S)
    grad_norm = torch.zeros(cos.size(0), dtype=torch.float64)
    slope = (u_m - l_m) / (u_a - l_a)
    for i, label in enumerate(labels.tolist()):
        if label < 0:
            continue
        n = norms[i].item()
        a = min(max(n, l_a), u_a)
        da = 1.0 if l_a < n < u_a else 0.0
        m = slope * (a - l_a) + l_m
        c = cos[i, label].item()
        use_phi = c > 0 if easy else c > math.cos(math.pi - m)
        if use_phi:
            out[i, label] = S * math.cos(math.acos(c) + m)
            grad[i, label] = S * (math.cos(m) + c * math.sin(m) / math.sqrt(1 - c * c))
            grad_norm[i] = S * -math.sin(math.acos(c) + m) * slope * da
        elif not easy:
            out[i, label] = S * (c - m * math.sin(m))
            grad_norm[i] = -S * (math.sin(m) + m * math.cos(m)) * slope * da
    return out, grad, grad_norm


@pytest.mark.parametrize("easy", [True, False], ids=["easy_margin", "threshold"])
def test_magface_forward_and_gradients_through_the_norm(easy):
    cos = _cosines(9, 4, seed=3)
    labels = torch.tensor([0, 1, 2, 3, -1, 0, 1, 2, 3])
    cos[1, 1], cos[2, 2], cos[3, 3] = -0.3, -0.97, 0.8   # easy margin off for c <= 0; threshold branch
    norms = torch.tensor([5.0, 30.0, 100.0, 150.0, 40.0, 64.0, 12.0, 80.0, 10.5], dtype=torch.float64)
    cos.requires_grad_(True)
    norms.requires_grad_(True)
    head = MagFace(easy_margin=easy, u_m=1.2, lambda_g=60.0).double()
    out = head(cos, labels, norms)
    expected, expected_grad, expected_norm_grad = _magface_expected(cos.detach(), labels, norms.detach(), easy,
                                                                    u_m=1.2)
    _close(out, expected)
    upstream, (grad_cos, grad_norms) = _grad(out, cos, norms)
    _close(grad_cos, upstream * expected_grad)
    target_upstream = torch.tensor([upstream[i, l].item() if l >= 0 else 0.0 for i, l in enumerate(labels.tolist())],
                                   dtype=torch.float64)
    _close(grad_norms, target_upstream * expected_norm_grad)
    if not easy:  # cos(pi - m(a)) for a = 100: -0.97 falls back to c - m sin m
        m = 0.75 / 100 * 90 + 0.45
        assert -0.97 < math.cos(math.pi - m)
        assert out[2, 2].item() == pytest.approx(S * (-0.97 - m * math.sin(m)))


def test_magface_regularizer_value_and_gradient():
    head = MagFace().double()
    norms = torch.tensor([5.0, 20.0, 55.0, 109.0, 200.0], dtype=torch.float64, requires_grad=True)
    value = head.regularizer(norms)
    a = [10.0, 20.0, 55.0, 109.0, 110.0]
    assert value.item() == pytest.approx(35.0 * sum(x / 110 ** 2 + 1 / x for x in a) / 5, rel=1e-14)
    value.backward()
    inside = [0.0, 1.0, 1.0, 1.0, 0.0]
    _close(norms.grad, [35.0 * (1 / 110 ** 2 - 1 / x ** 2) / 5 * d for x, d in zip(a, inside)], 1e-14)


def test_magface_gradient_is_finite_at_unit_cosine():
    cos = torch.tensor([[1.0, 0.2], [-1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    norms = torch.tensor([50.0, 50.0], dtype=torch.float64, requires_grad=True)
    out = MagFace(easy_margin=False).double()(cos, torch.tensor([0, 0]), norms)
    out.sum().backward()
    assert torch.isfinite(cos.grad).all() and torch.isfinite(norms.grad).all()


# ---------------------------------------------------------------- CurricularFace

def _curricular_expected(cos, labels, target_cos, t, m=0.5):
    out, grad = cos.clone(), torch.ones_like(cos)
    for i, label in enumerate(labels.tolist()):
        ct = target_cos[i].item()
        phi = ct * math.cos(m) - math.sqrt(1 - ct * ct) * math.sin(m)
        for j in range(cos.size(1)):
            c = cos[i, j].item()
            if j == label:
                if c > math.cos(math.pi - m):
                    out[i, j] = math.cos(math.acos(c) + m)
                    grad[i, j] = math.cos(m) + c * math.sin(m) / math.sqrt(1 - c * c)
                else:
                    out[i, j] = c - m * math.sin(m)
            elif c > phi:
                out[i, j] = c * (t + c)
                grad[i, j] = t + 2 * c
    return S * out, S * grad


def test_curricularface_forward_gradient_and_t_over_steps():
    head = CurricularFace().double()
    assert head.t.item() == 0.0 and head.t.shape == (1,)
    labels = torch.tensor([0, 1, -1, 3, 2, -1, 0])
    t = 0.0
    for step in range(4):
        cos = _cosines(7, 5, seed=10 + step)
        cos[4, 2] = -0.95                      # below cos(pi - m): the fallback branch
        cos[0, 0] = 0.2 + 0.2 * step           # target cosines grow: t climbs
        target_cos = torch.tensor([0.2 + 0.2 * step, cos[1, 1], 0.5, cos[3, 3], -0.95, -0.1, cos[6, 0]],
                                  dtype=torch.float64)
        cos.requires_grad_(True)
        t = 0.01 * target_cos.mean().item() + 0.99 * t
        out = head(cos, labels, target_cos)
        assert head.t.item() == pytest.approx(t, rel=1e-13, abs=1e-16)
        expected, expected_grad = _curricular_expected(cos.detach(), labels, target_cos, t)
        _close(out, expected)
        upstream, (grad_cos,) = _grad(out, cos)
        _close(grad_cos, upstream * expected_grad)
    hard = expected_grad != S
    assert hard.sum() > 3, "the case must contain hard negatives"


def test_curricularface_rows_of_other_ranks_are_modulated_with_their_target():
    """Label -1 (class elsewhere): the negatives above that row's phi are still hard."""
    cos = torch.tensor([[0.7, 0.2, -0.5]], dtype=torch.float64)
    head = CurricularFace().double()
    out = head(cos, torch.tensor([-1]), torch.tensor([0.6], dtype=torch.float64))
    phi = math.cos(math.acos(0.6) + 0.5)
    t = 0.006
    assert 0.2 > phi > -0.5
    _close(out, [[S * 0.7 * (t + 0.7), S * 0.2 * (t + 0.2), S * -0.5]])


# ---------------------------------------------------------------- ElasticFace

class _Known:
    """A replacement draw returning fixed margins (in global row order)."""

    def __init__(self, margins):
        self.margins = torch.tensor(margins, dtype=torch.float64)
        self.calls = []

    def __call__(self, n, device, dtype):
        self.calls.append((n, torch.device(device).type, dtype))
        return self.margins[:n].to(device, dtype)


@pytest.mark.parametrize("cls", [ElasticFaceArc, ElasticFaceCos], ids=["arc", "cos"])
def test_elasticface_forward_and_gradient_with_known_margins(cls):
    cos = _cosines(6, 4, seed=20)
    cos[5, 1] = -0.995           # theta + m_i > pi: no threshold, cos(theta + m_i) still
    labels = torch.tensor([0, 3, -1, 2, 1, 1])
    margins = [0.45, 0.52, 0.6, 0.38, 0.5, 0.4]
    head = cls().double()
    head.draw = _Known(margins)
    cos.requires_grad_(True)
    out = head(cos, labels)
    assert head.draw.calls == [(6, "cpu", torch.float64)]
    expected, grad = S * cos.detach().clone(), torch.full_like(cos, S)
    for i, label in enumerate(labels.tolist()):
        if label < 0:
            continue
        c, mi = cos[i, label].item(), margins[i]
        if cls is ElasticFaceArc:
            expected[i, label] = S * math.cos(math.acos(c) + mi)
            grad[i, label] = S * math.sin(math.acos(c) + mi) / math.sin(math.acos(c))
        else:
            expected[i, label] = S * (c - mi)
    _close(out, expected)
    upstream, (grad_cos,) = _grad(out, cos)
    _close(grad_cos, upstream * grad)
    if cls is ElasticFaceArc:
        assert math.acos(-0.995) + 0.4 > math.pi and out[5, 1].item() > S * -0.995


def test_elasticface_plus_pairs_the_closest_row_with_the_smallest_margin():
    cos = torch.zeros(5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, -1, 2, 0])
    target_cos = torch.tensor([0.1, 0.9, 0.5, -0.2, 0.7], dtype=torch.float64)
    cos[0, 0], cos[1, 1], cos[3, 2], cos[4, 0] = 0.1, 0.9, -0.2, 0.7
    head = ElasticFaceCos(plus=True).double()
    assert head.needs == ("target_cos",) and ElasticFaceCos().needs == ()
    head.draw = _Known([0.40, 0.30, 0.36, 0.33, 0.38])
    out = head(cos, labels, target_cos)
    # ranking by descending target cosine: rows 1, 4, 2, 0, 3 get 0.30, 0.33, 0.36, 0.38, 0.40
    assigned = {1: 0.30, 4: 0.33, 0: 0.38, 3: 0.40}
    for row, mi in assigned.items():
        label = labels[row].item()
        assert out[row, label].item() == pytest.approx(S * (cos[row, label].item() - mi), abs=1e-12)


def test_elasticface_draws_are_seeded_normal_and_resumable():
    head = ElasticFaceArc(std=0.05)
    first = head.draw(20000, torch.device("cpu"), torch.float64)
    assert abs(first.mean().item() - 0.5) < 4 * 0.05 / math.sqrt(20000)
    assert abs(first.std().item() - 0.05) < 0.002
    assert torch.equal(ElasticFaceArc(std=0.05).draw(20000, "cpu", torch.float64), first)
    assert not torch.equal(ElasticFaceArc(std=0.05, seed=1).draw(5, "cpu", torch.float64), first[:5])
    saved = head.state_dict()
    after = head.draw(7, "cpu", torch.float64)
    restored = ElasticFaceArc(std=0.05)
    restored.load_state_dict(saved)
    assert torch.equal(restored.draw(7, "cpu", torch.float64), after)
    fresh = ElasticFaceArc(std=0.05)
    fresh.load_state_dict(ElasticFaceArc(std=0.05).state_dict())  # saved before any draw: starts at the seed
    assert torch.equal(fresh.draw(5, "cpu", torch.float64), ElasticFaceArc(std=0.05).draw(5, "cpu", torch.float64))


# ---------------------------------------------------------------- registry-built heads keep the same numbers

def test_registry_heads_equal_the_classes():
    cos, labels, norms = _adaface_case()
    torch.testing.assert_close(get_margin("adaface", h=0.2).double()(cos, labels, norms),
                               AdaFace(h=0.2).double()(cos, labels, norms), rtol=0, atol=0)
    target = cos.gather(1, labels.clamp_min(0)[:, None]).view(-1)
    torch.testing.assert_close(get_margin("curricularface").double()(cos, labels, target),
                               CurricularFace().double()(cos, labels, target), rtol=0, atol=0)


# ---------------------------------------------------------------- UniFace

def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_uniface_loss_and_gradients_by_hand():
    """sum of softplus(-clip(s(c_y - m) - b)) + lambda * softplus(clip(s c_j - b)), zero gradient outside the clips."""
    from losses import UniFace

    cos = _cosines(6, 5, seed=30)
    cos[0, 1] = -0.95                # s c - b < -s: negative clipped
    labels = torch.tensor([2, 0, -1, 4, 1, 3])
    cos[5, 3] = -0.97                # s (c - m) - b < -s: positive clipped
    head = UniFace(lambda_=0.7).double()
    head.init_bias(50)
    b = math.log(50 * 10)
    assert head.bias.item() == pytest.approx(b, rel=1e-15)
    cos.requires_grad_(True)
    loss = head(cos, labels)
    expected, grad, grad_b = 0.0, torch.zeros_like(cos), 0.0
    for i, label in enumerate(labels.tolist()):
        for j in range(cos.size(1)):
            c = cos[i, j].item()
            if j == label:
                z = S * (c - 0.4) - b
                inside = -S < z < S
                z = min(max(z, -S), S)
                expected += _softplus(-z)
                grad[i, j] = -S * _sigmoid(-z) if inside else 0.0
                grad_b += _sigmoid(-z) if inside else 0.0
            else:
                z = S * c - b
                inside = -S < z < S
                z = min(max(z, -S), S)
                expected += 0.7 * _softplus(z)
                grad[i, j] = 0.7 * S * _sigmoid(z) if inside else 0.0
                grad_b -= 0.7 * _sigmoid(z) if inside else 0.0
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    grad_cos, grad_bias = torch.autograd.grad(loss, (cos, head.bias))
    _close(grad_cos, grad)
    assert grad_bias.item() == pytest.approx(grad_b, rel=1e-12)
    assert grad[0, 1] == 0 and grad[5, 3] == 0, "the case must hit both clips"
