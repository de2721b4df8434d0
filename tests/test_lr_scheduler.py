"""PolynomialLRWarmup and StepLRWarmup: every step against the closed form, also across a resume."""
from __future__ import annotations

import pytest
import torch

from lr_scheduler import PolynomialLRWarmup, StepLRWarmup
from utils.errors import ConfigError

BASE = (0.1, 0.1 / 3)  # backbone group, PartialFC group


def _optimizer():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    return torch.optim.SGD([{"params": [params[0]], "lr": BASE[0]}, {"params": [params[1]], "lr": BASE[1]}],
                           lr=BASE[0], momentum=0.9)


def poly_closed_form(step, warmup, total, power):
    """The spec's formula (training.md); the rate is kept once step > total."""
    step = min(step, total)
    if step <= warmup:
        return step / warmup if warmup else 1.0
    return (1 - (step - warmup) / (total - warmup)) ** power


def step_closed_form(step, warmup, milestones, gamma):
    warm = step / warmup if warmup and step <= warmup else 1.0
    return warm * gamma ** sum(step >= m for m in milestones)


def _lrs_over(optimizer, scheduler, steps):
    """The rate each optimiser step uses: read, step the optimiser, step the scheduler."""
    seen = []
    for _ in range(steps):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


def _assert_schedule(seen, first_step, expected_factor):
    for offset, lrs in enumerate(seen):
        factor = expected_factor(first_step + offset)
        assert lrs == pytest.approx([base * factor for base in BASE], rel=1e-12, abs=1e-15), first_step + offset


@pytest.mark.parametrize("warmup, total, power", [(10, 50, 1.0), (7, 40, 2.0), (0, 30, 1.0), (5, 5, 1.0)])
def test_polynomial_every_step(warmup, total, power):
    opt = _optimizer()
    sched = PolynomialLRWarmup(opt, warmup, total, power)
    seen = _lrs_over(opt, sched, total + 10)
    _assert_schedule(seen, 0, lambda s: poly_closed_form(s, warmup, total, power))
    assert seen[-1] == [0.0, 0.0] or warmup == total


def test_polynomial_matches_the_originals_chained_values_after_step_0():
    """The original multiplied the previous rate by a ratio; from step 1 on that equals the closed form."""
    warmup, total, power = 3, 10, 2.0
    opt = _optimizer()
    seen = _lrs_over(opt, PolynomialLRWarmup(opt, warmup, total, power), 13)
    chained = BASE[0]
    for step in range(1, 13):
        if step <= warmup:
            chained = BASE[0] * step / warmup
        elif step <= total:
            ratio = (1 - (step - warmup) / (total - warmup)) / (1 - (step - 1 - warmup) / (total - warmup))
            chained *= ratio ** power
        assert seen[step][0] == pytest.approx(chained, abs=1e-12)
    assert seen[0][0] == 0.0


@pytest.mark.parametrize("make, closed", [
    (lambda opt: PolynomialLRWarmup(opt, 6, 40, 1.5), lambda s: poly_closed_form(s, 6, 40, 1.5)),
    (lambda opt: StepLRWarmup(opt, 4, [12, 20, 24], 0.1), lambda s: step_closed_form(s, 4, [12, 20, 24], 0.1)),
], ids=["polynomial", "step"])
@pytest.mark.parametrize("stop", [3, 17, 45])
def test_resume_mid_run(make, closed, stop):
    """state_dict after `stop` steps into a fresh optimiser + scheduler: the same rates follow."""
    opt = _optimizer()
    sched = make(opt)
    _lrs_over(opt, sched, stop)
    opt_state, sched_state = opt.state_dict(), sched.state_dict()

    fresh_opt = _optimizer()
    fresh = make(fresh_opt)
    fresh_opt.load_state_dict(opt_state)
    fresh.load_state_dict(sched_state)
    resumed = _lrs_over(fresh_opt, fresh, 20)
    uninterrupted = _lrs_over(opt, sched, 20)
    assert resumed == uninterrupted
    _assert_schedule(resumed, stop, closed)

    late_opt = _optimizer()  # the other order: optimiser state first, then the scheduler
    late_opt.load_state_dict(opt_state)
    late = make(late_opt)
    late.load_state_dict(sched_state)
    _assert_schedule(_lrs_over(late_opt, late, 5), stop, closed)


@pytest.mark.parametrize("warmup, milestones, gamma", [(0, [12, 20, 24], 0.1), (5, [8, 9], 0.5), (3, [], 0.1)])
def test_step_every_step(warmup, milestones, gamma):
    opt = _optimizer()
    seen = _lrs_over(opt, StepLRWarmup(opt, warmup, milestones, gamma), 30)
    _assert_schedule(seen, 0, lambda s: step_closed_form(s, warmup, milestones, gamma))


def test_step_recipe_in_epochs():
    """"step LR at epochs 12/20/24" with 100 iterations per epoch."""
    opt = _optimizer()
    seen = _lrs_over(opt, StepLRWarmup(opt, 0, [1200, 2000, 2400]), 2600)
    assert [seen[i][0] for i in (0, 1199, 1200, 1999, 2000, 2399, 2400, 2599)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])


def test_original_keys_and_signature():
    opt = _optimizer()
    sched = PolynomialLRWarmup(opt, warmup_iters=2, total_iters=9, power=1.0, last_epoch=-1, verbose=False)
    state = sched.state_dict()
    assert {"warmup_iters", "total_iters", "power", "last_epoch", "base_lrs"} <= set(state)
    assert PolynomialLRWarmup(_optimizer(), 0).total_iters == 5


@pytest.mark.parametrize("make, match", [
    (lambda opt: PolynomialLRWarmup(opt, 10, 5), "warmup_epoch must not exceed num_epoch"),
    (lambda opt: PolynomialLRWarmup(opt, -1, 5), "warmup_iters"),
    (lambda opt: PolynomialLRWarmup(opt, 1.5, 5), "warmup_iters"),
    (lambda opt: PolynomialLRWarmup(opt, 1, 5, power=-1.0), "power"),
    (lambda opt: StepLRWarmup(opt, 0, [20, 12]), "increasing"),
    (lambda opt: StepLRWarmup(opt, 0, [12], gamma=0), "gamma"),
    (lambda opt: StepLRWarmup(opt, 0, [-3]), "milestone"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ConfigError, match=match):
        make(_optimizer())
