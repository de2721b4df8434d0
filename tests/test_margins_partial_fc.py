"""Margin heads inside PartialFC_V2: what each head is handed, sub-centres, resume, and 2 gloo ranks.

The heads' own numbers are pinned in tests/test_margins.py; here PartialFC_V2 must reproduce a plain
float64 computation on the whole global batch: cosines of normalised embeddings and centres,
norms of the raw embeddings, the target cosines, the full softmax, MagFace's regulariser.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from losses import get_margin
from partial_fc_v2 import PartialFC_V2, shard_range
from utils.errors import ConfigError

DIM = 8
HEADS = {  # name -> parameters small enough for the data below (norms around 1..30)
    "adaface": {},
    "adaface_st": {"straight_through": True},
    "magface": {"l_a": 1.0, "u_a": 51.0, "l_m": 0.45, "u_m": 1.0, "lambda_g": 5.0},
    "curricularface": {},
    "elasticface_arc": {},
    "elasticface_cos_plus": {"plus": True},
    "subcenter_arcface": {"k": 3},
    "uniface": {"lambda_": 0.5},
}


def _head(key: str):
    name = {"adaface_st": "adaface", "elasticface_cos_plus": "elasticface_cos"}.get(key, key)
    return get_margin(name, **HEADS[key]).double()


def _data(rows: int, classes: int, seed: int, k: int = 1):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(rows, DIM, generator=gen, dtype=torch.float64)
    X = X * torch.linspace(0.5, 30.0, rows, dtype=torch.float64)[:, None]  # varied norms
    W = torch.randn(classes * k, DIM, generator=gen, dtype=torch.float64) * 0.01
    labels = torch.randint(0, classes, (rows,), generator=gen)
    return X, W, labels


def reference(head, X, W, labels):
    """float64 loss, dL/dX, dL/dW of ``head`` on the whole batch, without PartialFC_V2."""
    X = X.detach().requires_grad_(True)
    W = W.detach().requires_grad_(True)
    head.zero_grad(set_to_none=True)
    k = getattr(head, "k", 1)
    cos = (F.normalize(X) @ F.normalize(W).t()).clamp(-1, 1)
    if k > 1:
        cos = cos.view(X.size(0), -1, k).max(dim=2).values
    column = labels.view(-1, 1)
    extras = {}
    if "norms" in getattr(head, "needs", ()):
        extras["norms"] = X.norm(dim=1)
    if "target_cos" in getattr(head, "needs", ()):
        extras["target_cos"] = cos.detach().gather(1, column).view(-1)
    if getattr(head, "replaces_cross_entropy", False):  # UniFace: its own loss, mean over the rows
        loss = head(cos, column) / X.size(0)
        loss.backward()
        return loss.detach(), X.grad, W.grad
    logits = head(cos, column, **extras)
    loss = F.cross_entropy(logits, labels)
    with torch.no_grad():  # the value floors p at 1e-30 like the distributed cross-entropy; the gradient does not
        value = -torch.softmax(logits, dim=1).gather(1, column).clamp_min(1e-30).log().mean()
    if hasattr(head, "regularizer"):
        regularizer = head.regularizer(X.norm(dim=1))
        loss, value = loss + regularizer, value + regularizer.detach()
    loss.backward()
    return value, X.grad, W.grad


def _pfc(head, W, num_classes, sample_rate=1.0, rank=0, world=1):
    pfc = PartialFC_V2(head, DIM, num_classes, sample_rate=sample_rate).double()
    pfc.zero_grad(set_to_none=True)
    k = pfc.k
    start, num_local = shard_range(num_classes, rank, world)
    with torch.no_grad():
        pfc.weight.copy_(W[start * k:(start + num_local) * k])
    return pfc


def _close(actual, expected, tol=1e-9):
    scale = max(float(expected.abs().max()), 1.0)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol * scale)


def _states(module) -> dict:
    return {key: value.clone() for key, value in module.state_dict().items() if torch.is_tensor(value)}


def _init_like_partial_fc(head, num_classes: int) -> None:
    """UniFace's bias starts at log(num_classes * r * 10), which PartialFC_V2 sets from the global class count."""
    if hasattr(head, "init_bias"):
        head.init_bias(num_classes)


def _check_head_parameters(pfc, ref_head) -> None:
    """The head's own parameters (UniFace's bias): same gradient as the one-process computation."""
    for name, parameter in ref_head.named_parameters():
        _close(pfc.margin_softmax.get_parameter(name).grad, parameter.grad)


# ---------------------------------------------------------------- one process

@pytest.mark.parametrize("key", sorted(HEADS))
def test_single_process_equals_plain_computation_over_steps(key):
    num_classes = 9
    head, ref_head = _head(key), _head(key)
    _init_like_partial_fc(ref_head, num_classes)
    k = getattr(head, "k", 1)
    X, W, labels = _data(10, num_classes, seed=1, k=k)
    pfc = _pfc(head, W, num_classes)
    assert pfc.weight.shape == (num_classes * k, DIM)
    for step in range(3):
        x = (X * (1 + 0.2 * step)).requires_grad_(True)
        pfc.zero_grad(set_to_none=True)
        loss = pfc(x, labels)
        loss.backward()
        ref_loss, ref_dx, ref_dw = reference(ref_head, x.detach(), W, labels)
        _close(loss, ref_loss)
        _close(x.grad, ref_dx)
        _close(pfc.weight.grad, ref_dw)
        _check_head_parameters(pfc, ref_head)
        for name, value in _states(ref_head).items():
            _close(_states(pfc)[f"margin_softmax.{name}"], value)


def test_head_state_is_saved_with_the_softmax_fc_state_dict():
    assert set(PartialFC_V2(_head("adaface"), DIM, 5).state_dict()) == {
        "weight", "margin_softmax.batch_mean", "margin_softmax.batch_std"}
    assert set(PartialFC_V2(_head("curricularface"), DIM, 5).state_dict()) == {"weight", "margin_softmax.t"}
    assert set(PartialFC_V2(_head("elasticface_arc"), DIM, 5).state_dict()) == {
        "weight", "margin_softmax._extra_state"}
    assert set(PartialFC_V2(get_margin("combined"), DIM, 5).state_dict()) == {"weight"}
    uniface = PartialFC_V2(_head("uniface"), DIM, 5)
    assert set(uniface.state_dict()) == {"weight", "margin_softmax.bias"}
    assert uniface.margin_softmax.bias.item() == pytest.approx(math.log(5 * 1.0 * 10))


@pytest.mark.parametrize("key", ["adaface", "curricularface", "elasticface_cos_plus"])
def test_resume_continues_exactly(key):
    """Two steps, save, a fresh module loads the state_dict, two more steps = four uninterrupted steps."""
    X, W, labels = _data(8, 7, seed=2)
    steps = [(X * (1 + 0.3 * i), labels.roll(i)) for i in range(4)]
    straight = _pfc(_head(key), W, 7)
    for x, y in steps:
        last = straight(x, y)
    first = _pfc(_head(key), W, 7)
    for x, y in steps[:2]:
        first(x, y)
    saved = copy.deepcopy(first.state_dict())
    resumed = _pfc(_head(key), W, 7)
    resumed.load_state_dict(saved)
    for x, y in steps[2:]:
        again = resumed(x, y)
    assert again.item() == last.item()
    for name, value in _states(straight).items():
        assert torch.equal(_states(resumed)[name], value), name
    missing = {"weight": saved["weight"]}
    with pytest.raises(RuntimeError, match="Missing key"):
        _pfc(_head(key), W, 7).load_state_dict(missing)


def test_subcenter_gradient_goes_to_the_best_subcentre_only():
    X, W, labels = _data(6, 4, seed=3, k=3)
    pfc = _pfc(_head("subcenter_arcface"), W, 4)
    pfc(X, labels).backward()
    cos = F.normalize(X) @ F.normalize(W).t()
    winners = cos.view(6, 4, 3).argmax(dim=2)
    won = torch.zeros(12, dtype=torch.bool)
    won[(winners + torch.arange(4) * 3).view(-1)] = True
    assert won.sum() < 12, "the case must have a sub-centre that never wins"
    assert torch.all(pfc.weight.grad[~won] == 0)
    assert torch.all(pfc.weight.grad[won].abs().sum(1) > 0)


def test_subcenter_sampling_keeps_the_k_rows_of_a_class_together():
    X, W, _ = _data(6, 30, seed=4, k=3)
    pfc = _pfc(_head("subcenter_arcface"), W, 30, sample_rate=0.3)
    labels = torch.tensor([2, 17, 2, 29, 5, 11])
    x = X.clone().requires_grad_(True)
    loss = pfc(x, labels)
    loss.backward()
    kept = pfc.weight_index
    assert kept.numel() == 9 and torch.isin(labels.unique(), kept).all()
    rows = (kept.view(-1, 1) * 3 + torch.arange(3)).view(-1)
    outside = torch.ones(90, dtype=torch.bool)
    outside[rows] = False
    assert torch.all(pfc.weight.grad[outside] == 0)
    assert pfc.sample(labels.view(-1, 1).clone(), torch.ones(6, 1, dtype=torch.bool)).shape == (27, DIM)
    ref_loss, ref_dx, ref_dw = reference(_head("subcenter_arcface"), X, W.view(30, 3, DIM)[kept].reshape(-1, DIM),
                                         torch.searchsorted(kept, labels))
    _close(loss, ref_loss)
    _close(x.grad, ref_dx)
    _close(pfc.weight.grad[rows], ref_dw)


def test_a_bad_k_is_refused():
    class Bad(torch.nn.Module):
        k = 0

        def forward(self, logits, labels):
            return logits

    with pytest.raises(ConfigError, match="k"):
        PartialFC_V2(Bad(), DIM, 5)


@pytest.mark.parametrize("key", ["adaface", "magface", "curricularface"])
def test_fp16_is_finite_with_float32_margins(key):
    X, W, labels = _data(8, 9, seed=5)
    full = PartialFC_V2(_head(key).float(), DIM, 9).float()
    half = PartialFC_V2(_head(key).float(), DIM, 9, fp16=True).float()
    with torch.no_grad():
        full.weight.copy_(W.float())
        half.weight.copy_(W.float())
    x_full, x_half = X.float().requires_grad_(True), X.float().requires_grad_(True)
    loss_full, loss_half = full(x_full, labels), half(x_half, labels)
    (loss_full + loss_half).backward()
    assert loss_half.dtype == torch.float32 and torch.isfinite(x_half.grad).all()
    assert loss_half.item() == pytest.approx(loss_full.item(), rel=0.1)
    for name, value in _states(full).items():
        assert _states(half)[name].dtype == torch.float32
        torch.testing.assert_close(_states(half)[name], value, rtol=1e-2, atol=1e-4)


# ---------------------------------------------------------------- 2 processes, gloo

LOCAL_BATCH = 4


def _gathered(tensor: torch.Tensor, world: int) -> torch.Tensor:
    parts = [None] * world
    dist.all_gather_object(parts, tensor)
    return torch.cat(parts)


def _check_head(rank, world, key, sample_rate, seed):
    num_classes = 22 if sample_rate < 1 else 11
    k = 3 if key == "subcenter_arcface" else 1
    X, W, _ = _data(world * LOCAL_BATCH, num_classes, seed, k=k)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    pfc = _pfc(_head(key), W, num_classes, sample_rate, rank, world)
    ref_head = _head(key)
    _init_like_partial_fc(ref_head, num_classes)
    start, num_local = pfc.class_start, pfc.num_local
    gen = torch.Generator().manual_seed(seed + 1)
    for step in range(3):
        labels = torch.randint(0, num_classes, (world * LOCAL_BATCH,), generator=gen)
        x = (X[rows] * (1 + 0.25 * step)).requires_grad_(True)
        pfc.zero_grad(set_to_none=True)
        loss = pfc(x, labels[rows])
        loss.backward()
        losses = [None] * world
        dist.all_gather_object(losses, loss.item())
        assert losses[0] == losses[1], f"{key}: loss differs between ranks {losses}"
        index = pfc.weight_index if sample_rate < 1 else torch.arange(num_local)
        kept = _gathered(index + start, world)
        sub_W = W.view(num_classes, k, DIM)[kept].reshape(-1, DIM)
        ref_loss, ref_dx, ref_dw = reference(ref_head, X * (1 + 0.25 * step), sub_W,
                                             torch.searchsorted(kept, labels))
        _close(loss, ref_loss)
        _close(x.grad, world * ref_dx[rows])
        mine = ((kept >= start) & (kept < start + num_local)).repeat_interleave(k)
        local_rows = (index.view(-1, 1) * k + torch.arange(k)).view(-1)
        _close(pfc.weight.grad[local_rows], ref_dw[mine])
        _check_head_parameters(pfc, ref_head)
        for name, value in _states(ref_head).items():
            _close(_states(pfc)[f"margin_softmax.{name}"], value)


def _dist_worker(rank, world, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for seed, key in enumerate(sorted(HEADS)):
            _check_head(rank, world, key, 1.0, seed=30 + seed)
            _check_head(rank, world, key, 0.5, seed=60 + seed)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_gloo_ranks_equal_one_process_for_every_head(tmp_path):
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)
