"""PartialFC_V2 against a float64 full softmax (straight-through margin), one process and 2 gloo ranks."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from losses import CombinedMarginLoss
from partial_fc_v2 import DistCrossEntropy, NormalizedLinear, PartialFC_V2, shard_range
from utils.errors import ConfigError, DataError

S = 64.0
ARC = (1.0, 0.5, 0.0)
COS = (1.0, 0.0, 0.4)
COMBINED = (1.1, 0.3, 0.15)
DIM = 8


def _margin(margins=ARC, s=S):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CombinedMarginLoss(s, *margins)


def reference(X, W, labels, margins=ARC, s=S, kept=None):
    """float64 loss, dL/dX, dL/dW of the full softmax over ``kept`` classes (all by default).

    Margin applied straight-through; the loss value uses -log(max(p, 1e-30)), the gradient does
    not see the floor (like the original's backward).
    """
    m1, m2, m3 = margins
    X = X.double().detach().requires_grad_(True)
    W = W.double().detach().requires_grad_(True)
    kept = torch.arange(W.size(0)) if kept is None else kept
    cos = (F.normalize(X) @ F.normalize(W[kept]).t()).clamp(-1, 1)
    cols = torch.searchsorted(kept, labels.view(-1))[:, None]
    assert torch.equal(kept[cols.view(-1)], labels.view(-1)), "reference: a label outside the kept classes"
    target = cos.gather(1, cols)
    delta = (torch.cos(m1 * torch.acos(target) + m2) - m3 - target).detach()
    logits = s * (cos + torch.zeros_like(cos).scatter(1, cols, delta))
    F.cross_entropy(logits, cols.view(-1)).backward()
    with torch.no_grad():
        prob = torch.softmax(logits, dim=1).gather(1, cols)
        loss = -prob.clamp_min(1e-30).log().mean()
    return loss, X.grad, W.grad


def _data(rows: int, classes: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(rows, DIM, generator=gen, dtype=torch.float64)
    W = torch.randn(classes, DIM, generator=gen, dtype=torch.float64) * 0.01
    labels = torch.randint(0, classes, (rows,), generator=gen)
    return X, W, labels


def _pfc(W, margins=ARC, sample_rate=1.0, dtype=torch.float64, num_classes=None, rank=0, world=1):
    num_classes = W.size(0) if num_classes is None else num_classes
    pfc = PartialFC_V2(_margin(margins), DIM, num_classes, sample_rate=sample_rate).to(dtype)
    start, num_local = shard_range(num_classes, rank, world)
    with torch.no_grad():
        pfc.weight.copy_(W[start:start + num_local])
    return pfc


def _assert_close(actual, expected, tol):
    scale = max(float(expected.abs().max()), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol * scale)


def _tol(dtype):
    return 1e-10 if dtype == torch.float64 else 1e-5


# ---------------------------------------------------------------- one process (no process group)

@pytest.mark.parametrize("margins", [ARC, COS, COMBINED], ids=["arcface", "cosface", "combined"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_single_process_equals_full_softmax(margins, dtype):
    X, W, labels = _data(10, 13, seed=1)
    pfc = _pfc(W, margins, dtype=dtype)
    assert (pfc.rank, pfc.world_size, pfc.class_start, pfc.num_local) == (0, 1, 0, 13)
    x = X.to(dtype).requires_grad_(True)
    local_labels = labels.clone().view(-1, 1).int()
    loss = pfc(x, local_labels)
    loss.backward()
    ref_loss, ref_dx, ref_dw = reference(X, W, labels, margins)
    _assert_close(loss, ref_loss, _tol(dtype))
    _assert_close(x.grad, ref_dx, _tol(dtype))
    _assert_close(pfc.weight.grad, ref_dw, _tol(dtype))
    assert torch.equal(local_labels.view(-1).long(), labels), "the caller's labels must not change"


def test_loss_floor_caps_sample_loss():
    """p < 1e-30 gives -log(1e-30) = 69.0776 per sample; the gradient still is (p - onehot)/N."""
    logits = torch.tensor([[-200.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[0], [1]])
    loss = DistCrossEntropy()(logits.clone(), labels)
    assert loss.item() == pytest.approx((-math.log(1e-30) + math.log(3)) / 2, rel=1e-6)
    loss.backward()
    expected = (torch.softmax(logits.detach(), 1) - F.one_hot(labels.view(-1), 3)) / 2
    torch.testing.assert_close(logits.grad, expected)


def test_normalized_linear_gradcheck():
    gen = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(5, 6, generator=gen, dtype=torch.float64)).requires_grad_(True)
    w = torch.randn(9, 6, generator=gen, dtype=torch.float64).requires_grad_(True)
    index = torch.tensor([0, 2, 3, 7])
    assert torch.autograd.gradcheck(lambda a, b: NormalizedLinear.apply(a, b, None, None), (x, w))
    assert torch.autograd.gradcheck(lambda a, b: NormalizedLinear.apply(a, b, index, None), (x, w))
    # the fp16-autocast branch (matmuls on normalised rows), exercised in float64
    assert torch.autograd.gradcheck(lambda a, b: NormalizedLinear.apply(a, b, None, torch.float64), (x, w))
    assert torch.autograd.gradcheck(lambda a, b: NormalizedLinear.apply(a, b, index, torch.float64), (x, w))


def _check_sampled_step(pfc, X, W, labels, rank=0, world=1, margins=ARC, rows=None):
    """One sampled step: positives kept, index sorted, only kept rows get gradient, loss = reference."""
    rows = slice(None) if rows is None else rows
    x = X[rows].clone().requires_grad_(True)
    pfc.weight.grad = None
    loss = pfc(x, labels[rows])
    loss.backward()
    index = pfc.weight_index
    start, num_local = pfc.class_start, pfc.num_local
    mine = labels[(labels >= start) & (labels < start + num_local)] - start
    positives = torch.unique(mine)
    assert torch.all(index[1:] > index[:-1]), "kept index must be sorted and unique"
    assert torch.isin(positives, index).all(), "every positive centre of the batch must be kept"
    assert index.numel() == max(pfc.num_sample, positives.numel())
    if positives.numel() > pfc.num_sample:
        assert torch.equal(index, positives)
    outside = torch.ones(num_local, dtype=torch.bool)
    outside[index] = False
    assert torch.all(pfc.weight.grad[outside] == 0), "only kept rows may get gradient"
    assert torch.all(pfc.weight.grad[index].abs().sum(1) > 0)
    kept = index + start
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, kept)
        kept = torch.cat(parts)
    ref_loss, ref_dx, ref_dw = reference(X, W, labels, margins, kept=kept)
    _assert_close(loss, ref_loss, 1e-10)
    _assert_close(x.grad, world * ref_dx[rows], 1e-10)
    local_rows = (kept >= start) & (kept < start + num_local)
    _assert_close(pfc.weight.grad[index], ref_dw[kept[local_rows]], 1e-10)
    return index


def test_sampling_single_process_keeps_positives():
    X, W, _ = _data(6, 40, seed=4)
    pfc = _pfc(W, sample_rate=0.3)
    assert pfc.num_sample == 12
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        labels = torch.randint(0, 40, (6,), generator=gen)
        _check_sampled_step(pfc, X, W, labels)


def test_sampling_with_more_positives_than_samples_keeps_exactly_them():
    X, W, _ = _data(6, 20, seed=6)
    pfc = _pfc(W, sample_rate=0.1)
    assert pfc.num_sample == 2
    labels = torch.tensor([3, 17, 3, 9, 11, 0])
    index = _check_sampled_step(pfc, X, W, labels)
    assert index.tolist() == [0, 3, 9, 11, 17]


def test_sample_rate_zero_keeps_only_the_positives():
    """The original's wf42m_pfc0008_32gpu_r100.py trains with sample_rate = 0: positives only."""
    X, W, _ = _data(6, 20, seed=8)
    pfc = _pfc(W, sample_rate=0.0)
    labels = torch.tensor([5, 1, 5, 12, 19, 7])
    index = _check_sampled_step(pfc, X, W, labels)
    assert index.tolist() == [1, 5, 7, 12, 19]


def test_sample_api_remaps_labels_and_returns_kept_rows():
    X, W, _ = _data(4, 30, seed=7)
    pfc = _pfc(W, sample_rate=0.5)
    labels = torch.tensor([[4], [29], [-1], [4]])
    index_positive = labels != -1
    rows = pfc.sample(labels, index_positive)
    index = pfc.weight_index
    torch.testing.assert_close(rows, pfc.weight[index])
    assert labels[2, 0].item() == -1
    assert index[labels[[0, 1, 3], 0]].tolist() == [4, 29, 4]


def test_negatives_are_drawn_uniformly():
    """With positives {0, 1} and 10 of 20 kept, each negative is kept with p = 8/18."""
    torch.manual_seed(8)
    X, W, _ = _data(2, 20, seed=8)
    pfc = _pfc(W, sample_rate=0.5)
    counts = torch.zeros(20)
    draws = 1500
    for _ in range(draws):
        labels = torch.tensor([[0], [1]])
        pfc.sample(labels, labels != -1)
        counts[pfc.weight_index] += 1
    assert counts[:2].tolist() == [draws, draws]
    p = 8 / 18
    sigma = math.sqrt(draws * p * (1 - p))
    assert torch.all((counts[2:] - draws * p).abs() < 5 * sigma), counts


def test_fp16_on_cpu_runs_in_bfloat16():
    X, W, labels = _data(8, 11, seed=9)
    full = _pfc(W, dtype=torch.float32)
    half = _pfc(W, dtype=torch.float32)
    half.fp16 = True
    x_full = X.float().requires_grad_(True)
    x_half = X.float().requires_grad_(True)
    loss_full, loss_half = full(x_full, labels), half(x_half, labels)
    (loss_full + loss_half).backward()
    assert loss_half.dtype == torch.float32 and x_half.grad.dtype == torch.float32
    assert loss_half.item() != loss_full.item(), "fp16=True must change the matmul precision"
    assert loss_half.item() == pytest.approx(loss_full.item(), rel=0.1)
    assert torch.isfinite(half.weight.grad).all()
    cos = torch.nn.functional.cosine_similarity(x_half.grad.flatten(), x_full.grad.flatten(), dim=0)
    assert cos > 0.98


def test_state_dict_is_the_originals():
    pfc = PartialFC_V2(_margin(), DIM, 7)
    assert list(pfc.state_dict()) == ["weight"]
    weight = torch.randn(7, DIM)
    pfc.load_state_dict({"weight": weight}, strict=True)
    assert torch.equal(pfc.weight.detach(), weight)
    assert pfc.weight.std().item() < 10  # loaded, not re-initialised


def test_initialisation_matches_the_original():
    torch.manual_seed(0)
    pfc = PartialFC_V2(_margin(), 16, 1000)
    torch.manual_seed(0)
    expected = torch.normal(0, 0.01, (1000, 16))
    assert torch.equal(pfc.weight.detach(), expected)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=0), "num_classes"),
    (dict(num_classes=10.5), "num_classes"),
    (dict(sample_rate=1.5), "sample_rate"),
    (dict(sample_rate=-0.1), "sample_rate"),
    (dict(embedding_size=0), "embedding_size"),
])
def test_constructor_errors(kwargs, match):
    args = dict(margin_loss=_margin(), embedding_size=DIM, num_classes=10, sample_rate=1.0) | kwargs
    with pytest.raises(ConfigError, match=match):
        PartialFC_V2(**args)
    with pytest.raises(ConfigError, match="callable"):
        PartialFC_V2(None, DIM, 10)


def test_batch_errors():
    pfc = PartialFC_V2(_margin(), DIM, 10)
    pfc(torch.randn(4, DIM), torch.arange(4))
    with pytest.raises(DataError, match="drop_last"):
        pfc(torch.randn(3, DIM), torch.arange(3))
    with pytest.raises(DataError, match="embedding_size"):
        pfc(torch.randn(4, DIM + 1), torch.arange(4))
    with pytest.raises(DataError, match="labels"):
        pfc(torch.randn(4, DIM), torch.arange(5))


def test_rank_and_world_size_given_are_used_without_a_process_group():
    """train_v2 passes setup()'s rank and world size: the shard is theirs, not the (absent) group's."""
    pfc = PartialFC_V2(_margin(), DIM, 10, rank=1, world_size=3)
    assert (pfc.rank, pfc.world_size, pfc.class_start, pfc.num_local) == (1, 3, *shard_range(10, 1, 3))
    with pytest.raises(ConfigError, match="world size"):
        PartialFC_V2(_margin(), DIM, 2, world_size=3)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shard_range_covers_every_class_once(world):
    for num_classes in range(world, 30):
        shards = [shard_range(num_classes, rank, world) for rank in range(world)]
        assert shards[0][0] == 0
        for (start, size), (next_start, _) in zip(shards, shards[1:]):
            assert start + size == next_start
        assert sum(size for _, size in shards) == num_classes
        sizes = [size for _, size in shards]
        assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1
        assert sizes.count(num_classes // world + 1) == num_classes % world


# ---------------------------------------------------------------- 2 processes, gloo

LOCAL_BATCH = 4


def _check_full_softmax(rank, world, num_classes, margins, dtype, seed):
    X, W, labels = _data(world * LOCAL_BATCH, num_classes, seed)
    pfc = _pfc(W, margins, dtype=dtype, rank=rank, world=world)
    start, num_local = shard_range(num_classes, rank, world)
    assert (pfc.class_start, pfc.num_local) == (start, num_local)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    x = X[rows].to(dtype).requires_grad_(True)
    loss = pfc(x, labels[rows])
    loss.backward()
    losses = [None] * world
    dist.all_gather_object(losses, loss.item())
    assert len(set(losses)) == 1, f"loss differs between ranks: {losses}"
    ref_loss, ref_dx, ref_dw = reference(X, W, labels, margins)
    _assert_close(loss, ref_loss, _tol(dtype))
    _assert_close(x.grad, world * ref_dx[rows], _tol(dtype))
    _assert_close(pfc.weight.grad, ref_dw[start:start + num_local], _tol(dtype))


def _check_sampling(rank, world):
    X, W, _ = _data(world * LOCAL_BATCH, 40, seed=21)
    pfc = _pfc(W, sample_rate=0.3, rank=rank, world=world)
    assert pfc.num_local == 20 and pfc.num_sample == 6
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    gen = torch.Generator().manual_seed(22)
    for _ in range(5):
        labels = torch.randint(0, 40, (world * LOCAL_BATCH,), generator=gen)
        _check_sampled_step(pfc, X, W, labels, rank, world, rows=rows)
    only_rank0 = torch.tensor([1, 3, 3, 5, 7, 9, 11, 13])
    _check_sampled_step(pfc, X, W, only_rank0, rank, world, rows=rows)
    crowded = _pfc(W, sample_rate=0.1, rank=rank, world=world)
    assert crowded.num_sample == 2
    index = _check_sampled_step(crowded, X, W, torch.tensor([0, 2, 4, 4, 21, 23, 25, 27]), rank, world, rows=rows)
    assert index.tolist() == ([0, 2, 4] if rank == 0 else [1, 3, 5, 7])


def _check_given_world_wins_over_the_group(rank):
    """world_size=1 inside a 2-rank group: one process on the whole batch, no collective."""
    X, W, labels = _data(2 * LOCAL_BATCH, 9, seed=15)
    pfc = PartialFC_V2(_margin(ARC), DIM, 9, rank=0, world_size=1).double()
    with torch.no_grad():
        pfc.weight.copy_(W)
    x = X.clone().requires_grad_(True)
    loss = pfc(x, labels if rank == 0 else labels.flip(0))
    loss.backward()
    ref_loss, ref_dx, _ = reference(X, W, labels if rank == 0 else labels.flip(0), ARC)
    _assert_close(loss, ref_loss, _tol(torch.float64))
    _assert_close(x.grad, ref_dx, _tol(torch.float64))


def _dist_worker(rank, world, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _check_full_softmax(rank, world, 11, ARC, torch.float64, seed=11)
        _check_full_softmax(rank, world, 11, ARC, torch.float32, seed=12)
        _check_full_softmax(rank, world, 10, COS, torch.float32, seed=13)
        _check_full_softmax(rank, world, 13, COMBINED, torch.float64, seed=14)
        _check_sampling(rank, world)
        _check_given_world_wins_over_the_group(rank)
        with pytest.raises(ConfigError, match="world size"):
            PartialFC_V2(_margin(), DIM, 1)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_gloo_ranks_equal_single_process_softmax(tmp_path):
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_benchmark_quick_runs(tmp_path):
    """bench/bench_partial_fc.py --quick still runs and writes its table."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "RESULTS_partial_fc.md"
    proc = subprocess.run([sys.executable, str(repo / "bench" / "bench_partial_fc.py"), "--quick", "--iters", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    for head, rate in (("plain", 1.0), ("pfc", 1.0), ("pfc", 0.3), ("pfc", 0.1)):
        assert f"| 10,000 | {head} | {rate} |" in text
