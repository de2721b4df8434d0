"""Learning-rate schedules stepped once per iteration, each a closed form of the iteration count.

``PolynomialLRWarmup`` is the original arcface_torch schedule: ``base * step / warmup`` while
``step <= warmup``, then ``base * (1 - (step - warmup) / (total - warmup)) ** power``, held at
its value once ``step > total``. ``StepLRWarmup`` has the same linear warm-up, then multiplies
by ``gamma`` at each milestone (iterations; the trainer converts epochs to iterations).

Both compute the rate from ``last_epoch`` (the iteration count) and the base rates, never
from the previous rate, so the values are the same after ``state_dict``/``load_state_dict``
at any step. One difference from the original: at step 0 with a warm-up the original's
chained formula returned the base rate (its first optimiser step ran at full rate); this
returns the closed form, 0. Without warm-up both give the base rate at step 0.
"""
from __future__ import annotations

import bisect
import math
from typing import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from utils.errors import ConfigError


def _iterations(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a whole number of iterations >= 0, got {value!r}")
    return value


class _ClosedFormLR(LRScheduler):
    """Base: ``lr = base_lr * factor(last_epoch)`` for every param group."""

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def warmup_factor(self, step: int) -> float:
        return step / self.warmup_iters if 0 < self.warmup_iters and step <= self.warmup_iters else 1.0

    def get_lr(self) -> list[float]:
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float]:
        factor = self.factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore, then set the optimiser's rates to this step's (whatever order things were loaded in)."""
        super().load_state_dict(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self._get_closed_form_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class PolynomialLRWarmup(_ClosedFormLR):
    """Linear warm-up to the base rate, then polynomial decay to 0 at ``total_iters`` (the original's)."""

    def __init__(self, optimizer: Optimizer, warmup_iters: int, total_iters: int = 5, power: float = 1.0,
                 last_epoch: int = -1, verbose: bool = False):
        self.warmup_iters = _iterations("warmup_iters (warmup_epoch converted to steps)", warmup_iters)
        self.total_iters = _iterations("total_iters (num_epoch converted to steps)", total_iters)
        if self.total_iters < self.warmup_iters:
            raise ConfigError(f"total_iters ({total_iters}) is shorter than warmup_iters ({warmup_iters}): "
                              "warmup_epoch must not exceed num_epoch")
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power) or power < 0:
            raise ConfigError(f"power must be a number >= 0 (1.0 = linear decay), got {power!r}")
        self.power = float(power)
        self.verbose = verbose  # accepted for the original's signature; unused
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step <= self.warmup_iters:
            return self.warmup_factor(step)
        if self.total_iters == self.warmup_iters:
            return 1.0
        done = (min(step, self.total_iters) - self.warmup_iters) / (self.total_iters - self.warmup_iters)
        return (1.0 - done) ** self.power


class StepLRWarmup(_ClosedFormLR):
    """Linear warm-up, then ``base * gamma ** (milestones passed)``; milestones are iterations."""

    def __init__(self, optimizer: Optimizer, warmup_iters: int, milestones: Sequence[int], gamma: float = 0.1,
                 last_epoch: int = -1):
        self.warmup_iters = _iterations("warmup_iters (warmup_epoch converted to steps)", warmup_iters)
        milestones = [_iterations("each LR milestone", m) for m in milestones]
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ConfigError(f"LR milestones must be strictly increasing, got {milestones}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
            raise ConfigError(f"gamma (LR decay factor at each milestone) must be in (0, 1], got {gamma!r}")
        self.milestones = milestones
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return self.warmup_factor(step) * self.gamma ** bisect.bisect_right(self.milestones, step)
