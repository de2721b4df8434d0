"""Margin softmax heads: cosine logits in, scaled logits with the margin on the target out.

``CombinedMarginLoss(s, m1, m2, m3)`` replaces the target cosine ``cos(theta)`` by
``cos(m1 * theta + m2) - m3`` and multiplies every logit by ``s``. As in the original
arcface_torch the margin is applied outside autograd, so the backward pass treats it as identity
(straight-through: d logit / d cos = s for the target too); the published arcface_torch numbers
were trained with that gradient. Like the original there is no ``easy_margin`` and no fallback
for ``m1 * theta + m2 > pi``: the target is ``cos(m1 * theta + m2) - m3`` for every angle.

Labels hold the local class index of each row, or -1 where the row's class lives on another
rank. Nothing here synchronises with the device (no ``torch.where(labels != -1)``/``.item()``).

Beyond the combined margin, ``get_margin(name, **params)`` builds AdaFace, MagFace, CurricularFace,
ElasticFace (Arc/Cos, plain and "+"), sub-center ArcFace and UniFace as ../shared/spec/margins.md
states them. A head lists in ``needs`` what PartialFC_V2 must hand it beside the cosines:
``norms`` (float32 norms of the gathered raw embeddings, with their autograd history) and
``target_cos`` (the target cosine of every global row, without gradient, the same on every rank).
Every statistic is taken over the global batch, so W ranks give the numbers of one process fed
the whole batch. Running state (AdaFace's ``batch_mean``/``batch_std``, CurricularFace's ``t``,
ElasticFace's generator) is module state, saved with PartialFC_V2's state_dict; it is updated in
training mode only.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import torch

from utils.errors import ConfigError
from utils.margin_schema import MARGIN_NAMES, MARGIN_PARAMS, check_margin_config, check_margin_params

M1_MAX = 4.0


def _number(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return value


def check_margins(s: float, m1: float, m2: float, m3: float, threshold: float = 0.0) -> tuple:
    """Validate (s, m1, m2, m3, interclass_filtering_threshold); ConfigError naming the config key."""
    s = _number("margin_scale (s)", s)
    m1 = _number("margin_list[0] (m1)", m1)
    m2 = _number("margin_list[1] (m2)", m2)
    m3 = _number("margin_list[2] (m3)", m3)
    threshold = _number("interclass_filtering_threshold", threshold)
    hint = "ArcFace is margin_list=(1.0, 0.5, 0.0), CosFace (1.0, 0.0, 0.4)"
    if s <= 0:
        raise ConfigError(f"margin_scale (s) must be > 0 (the original uses 64), got {s}")
    if not 1.0 <= m1 <= M1_MAX:
        raise ConfigError(f"margin_list[0] (m1, multiplicative angular margin) must be in [1, {M1_MAX}], "
                          f"got {m1}; {hint}")
    if not 0.0 <= m2 < math.pi / 2:
        raise ConfigError(f"margin_list[1] (m2, additive angular margin) must be in [0, pi/2), got {m2}; {hint}")
    if not 0.0 <= m3 < 1.0:
        raise ConfigError(f"margin_list[2] (m3, additive cosine margin) must be in [0, 1), got {m3}; {hint}")
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"interclass_filtering_threshold must be in [0, 1) (0 disables it), got {threshold}")
    return s, m1, m2, m3, threshold


class CombinedMarginLoss(torch.nn.Module):
    """``s * (cos(m1*theta + m2) - m3)`` on the target logit, ``s * cos`` elsewhere (straight-through)."""

    def __init__(self, s: float, m1: float, m2: float, m3: float, interclass_filtering_threshold: float = 0):
        super().__init__()
        self.s, self.m1, self.m2, self.m3, self.interclass_filtering_threshold = check_margins(
            s, m1, m2, m3, interclass_filtering_threshold)
        if self.m3 > 0 and (self.m1 != 1.0 or self.m2 != 0.0):
            warnings.warn(
                f"margin_list ({self.m1}, {self.m2}, {self.m3}): the original arcface_torch ignored m1 and m2 "
                "when m3 > 0; this applies the full combined margin cos(m1*theta + m2) - m3", stacklevel=2)

    def extra_repr(self) -> str:
        return (f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
                f"interclass_filtering_threshold={self.interclass_filtering_threshold}")

    def margin_target(self, cos: torch.Tensor) -> torch.Tensor:
        """The target cosine after the margin: ``cos(m1*acos(cos) + m2) - m3``."""
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cos - self.m3
        theta = torch.acos(cos.clamp(-1.0, 1.0))
        if self.m1 != 1.0:
            theta = theta * self.m1
        return torch.cos(theta + self.m2) - self.m3

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.reshape(-1, 1)
        valid = labels != -1
        cols = labels.clamp_min(0)
        if self.interclass_filtering_threshold > 0:
            logits = logits.masked_fill(self._filter_mask(logits, cols, valid), 0.0)
        out = logits * self.s
        with torch.no_grad():
            work_dtype = torch.promote_types(logits.dtype, torch.float32)
            target = logits.gather(1, cols).to(work_dtype)
            margin = (self.margin_target(target) * self.s).to(out.dtype)
            out.scatter_(1, cols, torch.where(valid, margin, out.gather(1, cols)))
        return out

    def _filter_mask(self, logits: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Negatives whose cosine exceeds the threshold (a row's own positive is never filtered)."""
        with torch.no_grad():
            dirty = logits > self.interclass_filtering_threshold
            dirty.scatter_(1, cols, dirty.gather(1, cols) & ~valid)
        return dirty


class ArcFace(CombinedMarginLoss):
    """ArcFace (https://arxiv.org/abs/1801.07698): ``s * cos(theta + margin)`` on the target."""

    def __init__(self, s: float = 64.0, margin: float = 0.5):
        super().__init__(s, 1.0, margin, 0.0)
        self.margin = self.m2


class CosFace(CombinedMarginLoss):
    """CosFace (https://arxiv.org/abs/1801.09414): ``s * (cos(theta) - m)`` on the target."""

    def __init__(self, s: float = 64.0, m: float = 0.40):
        super().__init__(s, 1.0, 0.0, m)
        self.m = self.m3


# ---------------------------------------------------------------- the other heads (margins.md)

EPS = 1e-3                  # AdaFace's cosine clamp, angle clip and std offset
NORM_RANGE = (0.001, 100.0)  # AdaFace's clip of the feature norms


def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 at least: margins are never computed in half precision (arccos near +-1)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _rows(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid (N, 1): the row's class is on this rank, cols (N, 1): its column, 0 where not valid)."""
    labels = labels.reshape(-1, 1)
    return labels != -1, labels.clamp_min(0)


def _safe_sqrt(value: torch.Tensor) -> torch.Tensor:
    """sqrt(max(value, 0)) whose derivative is 0 (not inf) where value <= 0 (|cos| = 1)."""
    positive = value > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, value, torch.ones_like(value))), 0.0)


def _cos_plus(cos: torch.Tensor, margin) -> torch.Tensor:
    """cos(theta + margin) from cos(theta), differentiable in both (finite gradient at |cos| = 1)."""
    margin = torch.as_tensor(margin, dtype=cos.dtype, device=cos.device)
    return cos * torch.cos(margin) - _safe_sqrt(1.0 - cos * cos) * torch.sin(margin)


class _Clamped:
    """Non-target cosines clamped to [low, high], zero gradient where clamped (AdaFace)."""

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def forward(self, cos: torch.Tensor) -> torch.Tensor:
        return cos.clamp(self.low, self.high)

    def backward(self, cos: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if self.low == -self.high:  # one comparison pass instead of two
            return grad.masked_fill_(cos.abs() > self.high, 0.0)
        return grad.masked_fill_((cos < self.low) | (cos > self.high), 0.0)


class _HardNegatives:
    """Cosines above their row's ``phi`` become cos * (t + cos), derivative t + 2 cos (CurricularFace)."""

    def __init__(self, phi: torch.Tensor, t: torch.Tensor):
        self.phi, self.t = phi, t

    def forward(self, cos: torch.Tensor) -> torch.Tensor:
        return torch.where(cos > self.phi, (cos + self.t).mul_(cos), cos)

    def backward(self, cos: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        factor = (2 * cos).add_(self.t).masked_fill_(cos <= self.phi, 1.0)
        return grad.mul_(factor)


class _MarginLogits(torch.autograd.Function):
    """``s * g(cos)`` with the target column of valid rows replaced by ``s * target_fn(cos_y, *inputs)``.

    Differentiated as written (autograd), but as one (N, C) output and one (N, C) gradient: the
    target, a function of N cosines, is differentiated on its own small graph instead of through a
    gather whose backward would build another dense (N, C) gradient. ``g`` is the identity or
    ``negatives`` (an object with forward(cos) and backward(cos, grad)).
    """

    @staticmethod
    def forward(ctx, cos, cols, valid, s, target_fn, negatives, *inputs):
        with torch.no_grad():
            out = cos * s if negatives is None else negatives.forward(cos).mul_(s)
            kept = out.gather(1, cols)
        leaves = [cos.detach().gather(1, cols).to(_work_dtype(cos)).requires_grad_(True)]
        leaves += [x.detach().requires_grad_(x.requires_grad) for x in inputs]
        with torch.enable_grad():
            target = target_fn(*leaves)
        out.scatter_(1, cols, torch.where(valid, (target.detach() * s).to(out.dtype), kept))
        ctx.save_for_backward(cos, cols, valid)
        ctx.inner = (target, leaves)
        ctx.s, ctx.negatives = s, negatives
        return out

    @staticmethod
    def backward(ctx, grad_out):
        cos, cols, valid = ctx.saved_tensors
        target, leaves = ctx.inner
        grad = grad_out * ctx.s
        if ctx.negatives is not None:
            grad = ctx.negatives.backward(cos, grad)
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        grad_target = (grad_out.gather(1, cols) * ctx.s).masked_fill_(~valid, 0.0).to(target.dtype)
        grads = iter(torch.autograd.grad(target, wanted, grad_target, allow_unused=True))
        grads = [next(grads) if leaf.requires_grad else None for leaf in leaves]
        grad_cos = grads[0] if grads[0] is not None else torch.zeros_like(leaves[0])
        grad.scatter_(1, cols, torch.where(valid, grad_cos.to(grad.dtype), grad.gather(1, cols)))
        ctx.inner = None
        return (grad, None, None, None, None, None, *grads[1:])


def _margin_logits(logits: torch.Tensor, labels: torch.Tensor, s: float, target_fn: Callable, *inputs,
                   negatives=None) -> torch.Tensor:
    valid, cols = _rows(labels)
    return _MarginLogits.apply(logits, cols, valid, s, target_fn, negatives, *inputs)


class MarginHead(torch.nn.Module):
    """Base of the heads built by get_margin: ``forward(cosines (N, C), labels (N, 1), **needs) -> s * logits``."""

    name = ""
    needs: tuple[str, ...] = ()
    k = 1  # class centres per class (sub-center ArcFace)

    def _params(self, **params) -> dict:
        values = check_margin_params(self.name, params)
        for key, value in values.items():
            setattr(self, key, value)
        return values

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={getattr(self, key)}" for key in MARGIN_PARAMS[self.name])


class AdaFace(MarginHead):
    """AdaFace (CVPR 2022): the margin follows the feature norm's place in the batch's norm distribution.

    Target ``s * [cos(clip(theta - m z, eps, pi - eps)) - (m + m z)]``, z = clip(h (n - mu) / (sigma + eps),
    -1, 1), where mu / sigma are running means (weight t_alpha, updated before use, over the global
    batch) of the mean and unbiased std of the clipped norms. Gradient: autograd as in the AdaFace
    repository (all cosines clamped to [-1 + eps, 1 - eps]); ``straight_through=True`` is CVLface's
    variant: margin under no_grad, no clamp of the cosines nor clip of the angle.
    """

    name = "adaface"
    needs = ("norms",)

    def __init__(self, s: float = 64.0, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01,
                 straight_through: bool = False):
        super().__init__()
        self._params(s=s, m=m, h=h, t_alpha=t_alpha, straight_through=straight_through)
        self.register_buffer("batch_mean", torch.ones(1) * 20)
        self.register_buffer("batch_std", torch.ones(1) * 100)

    def quality(self, norms: torch.Tensor) -> torch.Tensor:
        """z (N, 1): the clipped, detached norms standardised by the (just updated) statistics."""
        with torch.no_grad():
            n = norms.detach().reshape(-1, 1).to(self.batch_mean.dtype).clamp(*NORM_RANGE)
            if self.training:
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * n.mean())
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * n.std())
            return (self.h * (n - self.batch_mean) / (self.batch_std + EPS)).clamp(-1, 1)

    def target(self, cos: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        theta = torch.acos(cos.clamp(-1 + EPS, 1 - EPS))
        return torch.cos((theta - self.m * z).clamp(EPS, math.pi - EPS)) - (self.m + self.m * z)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        z = self.quality(norms).to(_work_dtype(logits))
        if not self.straight_through:
            return _margin_logits(logits, labels, self.s, self.target, z, negatives=_Clamped(-1 + EPS, 1 - EPS))
        valid, cols = _rows(labels)
        out = logits * self.s  # like CombinedMarginLoss: the target is overwritten outside autograd
        with torch.no_grad():
            theta = torch.acos(logits.gather(1, cols).to(z.dtype))
            target = (torch.cos(theta - self.m * z) - (self.m + self.m * z)) * self.s
            out.scatter_(1, cols, torch.where(valid, target.to(out.dtype), out.gather(1, cols)))
        return out


class MagFace(MarginHead):
    """MagFace (CVPR 2021): ArcFace margin m(a) growing linearly with the clipped feature norm a.

    Target cos(theta + m(a)) (easy margin: only where cos > 0); loss gets lambda_g * mean g(a),
    g(a) = a / u_a^2 + 1 / a, through ``regularizer`` (PartialFC_V2 counts it once over ranks).
    Gradient: autograd everywhere, through the norm too.
    """

    name = "magface"
    needs = ("norms",)

    def __init__(self, s: float = 64.0, l_a: float = 10.0, u_a: float = 110.0, l_m: float = 0.45,
                 u_m: float = 0.8, lambda_g: float = 35.0, easy_margin: bool = True):
        super().__init__()
        self._params(s=s, l_a=l_a, u_a=u_a, l_m=l_m, u_m=u_m, lambda_g=lambda_g, easy_margin=easy_margin)

    def margin(self, a: torch.Tensor) -> torch.Tensor:
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

    def target(self, cos: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        m = self.margin(norms.reshape(-1, 1).to(cos.dtype).clamp(self.l_a, self.u_a))
        phi = _cos_plus(cos, m)
        if self.easy_margin:
            return torch.where(cos > 0, phi, cos)
        return torch.where(cos > torch.cos(math.pi - m), phi, cos - m * torch.sin(m))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        return _margin_logits(logits, labels, self.s, self.target, norms)

    def regularizer(self, norms: torch.Tensor) -> torch.Tensor:
        """lambda_g * mean of g(a) over the given rows (PartialFC_V2 passes the rank's own rows)."""
        a = norms.to(torch.promote_types(norms.dtype, torch.float32)).clamp(self.l_a, self.u_a)
        return self.lambda_g * (a / self.u_a ** 2 + 1.0 / a).mean()


class CurricularFace(MarginHead):
    """CurricularFace (CVPR 2020): hard negatives (cos > cos(theta_y + m)) become cos * (t + cos).

    t is a running mean (weight 0.01, updated before use) of the global batch's target cosines.
    Target cos(theta + m) where cos > cos(pi - m), else cos - m sin m. Gradient: autograd (t constant).
    """

    name = "curricularface"
    needs = ("target_cos",)
    momentum = 0.01

    def __init__(self, s: float = 64.0, m: float = 0.5):
        super().__init__()
        self._params(s=s, m=m)
        self.register_buffer("t", torch.zeros(1))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, target_cos: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            every_target = target_cos.detach().reshape(-1, 1).to(_work_dtype(logits))
            if self.training:
                self.t.mul_(1 - self.momentum).add_(self.momentum * every_target.mean())
            hard = _HardNegatives(_cos_plus(every_target, self.m).to(logits.dtype), self.t.to(logits.dtype))
        return _margin_logits(logits, labels, self.s, self.target, negatives=hard)

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        return torch.where(cos > math.cos(math.pi - self.m), _cos_plus(cos, self.m), cos - self.m * math.sin(self.m))


class _ElasticFace(MarginHead):
    """ElasticFace (CVPRW 2022): each row's margin is drawn from Normal(m, std) every step.

    ``draw(n, device, dtype)`` draws the margins of the n global rows from a generator seeded with
    ``seed`` (identical on every rank; its state is part of the state_dict). ``plus=True`` pairs
    the sorted margins with the rows ranked by target cosine: the row closest to its centre gets
    the smallest margin (the pairing the paper describes, not the reference code's permutation).
    """

    def __init__(self, s: float, m: float, std: float | None, plus: bool, seed: int):
        super().__init__()
        self._params(s=s, m=m, std=std, plus=plus, seed=seed)
        self.needs = ("target_cos",) if self.plus else ()
        self._generator: torch.Generator | None = None
        self._pending_state: dict | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        device = torch.device(device)
        if self._generator is None or self._generator.device.type != device.type:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
            if self._pending_state is not None:
                self._restore(self._pending_state)
        return self._generator

    def _restore(self, state: dict) -> None:
        if state["device"] != self._generator.device.type:
            raise ConfigError(f"{self.name}: the checkpoint's margin generator ran on {state['device']}, this run "
                              f"on {self._generator.device.type}; resume on the same kind of device")
        self._generator.set_state(state["state"])
        self._pending_state = None

    def get_extra_state(self) -> dict:
        if self._generator is None:
            return self._pending_state or {"seed": self.seed, "device": None, "state": None}
        return {"seed": self.seed, "device": self._generator.device.type, "state": self._generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self._generator = None
        self._pending_state = state if state.get("state") is not None else None

    def draw(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """n margins ~ Normal(m, std) in global row order."""
        return torch.normal(self.m, self.std, (n,), generator=self.generator(device), device=device, dtype=dtype)

    def margins(self, logits: torch.Tensor, target_cos: torch.Tensor | None) -> torch.Tensor:
        margins = self.draw(logits.size(0), logits.device, _work_dtype(logits))
        if self.plus:
            order = torch.sort(target_cos.detach().reshape(-1), descending=True, stable=True).indices
            margins = torch.empty_like(margins).scatter_(0, order, torch.sort(margins).values)
        return margins.view(-1, 1)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, target_cos: torch.Tensor | None = None):
        return _margin_logits(logits, labels, self.s, self.target, self.margins(logits, target_cos))


class ElasticFaceArc(_ElasticFace):
    """ElasticFace-Arc: target cos(theta + m_i), no threshold (theta + m_i > pi allowed); autograd."""

    name = "elasticface_arc"

    def __init__(self, s: float = 64.0, m: float = 0.5, std: float | None = None, plus: bool = False,
                 seed: int = 2048):
        super().__init__(s, m, std, plus, seed)

    @staticmethod
    def target(cos: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
        return _cos_plus(cos, margins)


class ElasticFaceCos(_ElasticFace):
    """ElasticFace-Cos: target cos - m_i."""

    name = "elasticface_cos"

    def __init__(self, s: float = 64.0, m: float = 0.35, std: float | None = None, plus: bool = False,
                 seed: int = 2048):
        super().__init__(s, m, std, plus, seed)

    @staticmethod
    def target(cos: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
        return cos - margins


class SubcenterArcFace(CombinedMarginLoss):
    """Sub-center ArcFace (ECCV 2020): k centres per class, class cosine = max over them, ArcFace margin.

    PartialFC_V2 holds ``num_classes * k`` weight rows (row c*k + j = sub-centre j of class c) and
    pools them before calling this head; the margin is CombinedMarginLoss's (straight-through).
    """

    name = "subcenter_arcface"

    def __init__(self, s: float = 64.0, m: float = 0.5, k: int = 3):
        values = check_margin_params(self.name, {"s": s, "m": m, "k": k})
        super().__init__(values["s"], 1.0, values["m"], 0.0)
        self.m, self.k = values["m"], values["k"]

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, k={self.k}"


class UniFace(MarginHead):
    """UniFace (ICCV 2023): unified cross-entropy with a learnable bias b, not a softmax.

    Per row: softplus(-clamp(s (cos_y - m) - b, -s, s)) + lambda_ * sum over the other classes of
    softplus(clamp(s cos_j - b, -s, s)); gradient autograd (zero outside the clamps). ``forward``
    returns the sum of this rank's terms (its positives and its columns); PartialFC_V2 divides by
    the global batch, reports the all-reduced value and sums b's gradient over ranks
    (``replicated_parameters``). b starts at log(num_classes * r * 10) (``init_bias``).
    """

    name = "uniface"
    replaces_cross_entropy = True

    def __init__(self, s: float = 64.0, m: float = 0.4, lambda_: float = 1.0, r: float = 1.0):
        super().__init__()
        self._params(s=s, m=m, lambda_=lambda_, r=r)
        self.bias = torch.nn.Parameter(torch.zeros(1))

    def init_bias(self, num_classes: int) -> None:
        with torch.no_grad():
            self.bias.fill_(math.log(num_classes * self.r * 10))

    def replicated_parameters(self) -> list[torch.nn.Parameter]:
        return [self.bias]

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        valid, cols = _rows(labels)
        cos = logits.to(_work_dtype(logits))
        bias = self.bias.to(cos.dtype)
        negative = torch.nn.functional.softplus((self.s * cos - bias).clamp(-self.s, self.s), threshold=100.0)
        is_target = torch.zeros_like(cos, dtype=torch.bool).scatter_(1, cols, valid)
        positive = (self.s * (cos.gather(1, cols) - self.m) - bias).clamp(-self.s, self.s)
        positive = torch.nn.functional.softplus(-positive, threshold=100.0).masked_fill(~valid, 0.0)
        return positive.sum() + self.lambda_ * negative.masked_fill(is_target, 0.0).sum()


def _combined(s: float, margin_list, interclass_filtering_threshold: float) -> CombinedMarginLoss:
    if len(margin_list) != 3:
        raise ConfigError(f"margin_list must hold 3 numbers (m1, m2, m3), got {margin_list!r}")
    return CombinedMarginLoss(s, *margin_list, interclass_filtering_threshold)


MARGINS: dict[str, Callable[..., torch.nn.Module]] = {
    "combined": _combined,
    "arcface": lambda s, m: ArcFace(s, m),
    "cosface": lambda s, m: CosFace(s, m),
    "adaface": AdaFace,
    "magface": MagFace,
    "curricularface": CurricularFace,
    "elasticface_arc": ElasticFaceArc,
    "elasticface_cos": ElasticFaceCos,
    "subcenter_arcface": SubcenterArcFace,
    "uniface": UniFace,
}


def get_margin(name: str, **params) -> torch.nn.Module:
    """The margin head ``name`` (see MARGIN_NAMES); unset parameters take the published recipe values."""
    values = check_margin_params(name, params)
    if name not in MARGINS:
        raise ConfigError(f"margin {name!r} is not available in this version; valid names: {', '.join(MARGINS)}")
    return MARGINS[name](**values)


def build_margin(cfg) -> torch.nn.Module:
    """The head of a training config: ``margin`` with ``margin_params`` (s defaults to margin_scale)."""
    check_margin_config(cfg.margin, cfg.margin_params, cfg.margin_scale)
    if cfg.margin == "combined":
        return get_margin("combined", s=cfg.margin_scale, margin_list=tuple(cfg.margin_list),
                          interclass_filtering_threshold=cfg.interclass_filtering_threshold)
    if cfg.interclass_filtering_threshold:
        raise ConfigError(f"interclass_filtering_threshold works with margin 'combined' only (margin is "
                          f"'{cfg.margin}'); set it to 0")
    return get_margin(cfg.margin, **({"s": cfg.margin_scale} | dict(cfg.margin_params)))
