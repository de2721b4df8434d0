"""Margin softmax heads: cosine logits in, scaled logits with the margin on the target out.

``CombinedMarginLoss(s, m1, m2, m3)`` replaces the target cosine ``cos(theta)`` by
``cos(m1 * theta + m2) - m3`` and multiplies every logit by ``s``. As in the original
arcface_torch the margin is applied outside autograd, so the backward pass treats it as identity
(straight-through: d logit / d cos = s for the target too); the published arcface_torch numbers
were trained with that gradient. Like the original there is no ``easy_margin`` and no fallback
for ``m1 * theta + m2 > pi``: the target is ``cos(m1 * theta + m2) - m3`` for every angle.

Labels hold the local class index of each row, or -1 where the row's class lives on another
rank. Nothing here synchronises with the device (no ``torch.where(labels != -1)``/``.item()``).
"""
from __future__ import annotations

import math
import warnings

import torch

from utils.errors import ConfigError

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
