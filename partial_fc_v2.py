"""PartialFC_V2 (https://arxiv.org/abs/2203.15565): class centres sharded over ranks, margin softmax.

Semantics follow the original arcface_torch ``partial_fc_v2.py``:
- rank r holds ``C//W + (r < C%W)`` class centres starting at ``C//W*r + min(r, C%W)``;
- embeddings and labels of every rank are all-gathered; in backward each rank receives the sum
  over ranks of the gradient of its own rows times W (DDP's averaging then yields dL/dtheta);
- the softmax cross-entropy runs over all classes of all ranks (all-reduce of max and sum), and a
  sample's loss is ``-log(max(p, 1e-30))``;
- ``sample_rate < 1`` keeps every positive centre of the global batch plus uniformly drawn
  negatives, ``int(sample_rate * num_local)`` in all (at least 1; only the positives if they are
  more), sorted; only kept rows get gradient.
Works without a process group (one process) and with gloo or NCCL. The rank and world size are
those given (train_v2 passes what utils_distributed.setup() decided), else the process group's.

``fp16=True`` runs the matmuls in half precision like the original's autocast: float16 on CUDA,
bfloat16 on every other device (CPU); norms and the logits are float32.

Without fp16 the cosine logits come from ``x_n @ W.T`` scaled by ``1/|W_j|`` (one fused autograd
function): no normalised copy of the weight is made, which saves a weight-sized buffer and its
gradient at sample_rate 1.0 (the original's ``linear(normalize(x), normalize(W))`` keeps both).

Margin heads (losses.get_margin): the head's ``needs`` says what it gets beside the cosines and
the labels: ``norms``, the float32 norms of the gathered raw embeddings (with autograd history),
and ``target_cos``, the target cosine of every global row (one all-reduce of N floats, no
gradient). A head with ``k > 1`` (sub-center ArcFace) has ``num_local * k`` weight rows, row
``c * k + j`` being sub-centre j of local class c; sampling keeps a class's k rows together and
the class cosine is the maximum over them. A head's ``regularizer`` (MagFace) is added to the
loss, computed from the rank's own rows so that its gradient is counted once over the ranks.
A head with ``replaces_cross_entropy`` (UniFace) returns the sum of its own loss terms instead of
logits; the loss is their global mean, and the gradients of its ``replicated_parameters`` are
summed over ranks.

The step is free of device synchronisation when ``int(sample_rate * num_local)`` is at least the
global batch size (always true in practice); below that, a positive count is read each step.
"""
from __future__ import annotations

import functools
import numbers
from typing import Callable

import torch
from torch import distributed
from torch.nn.functional import normalize

from utils.errors import ConfigError, DataError
from utils.elastic import class_range
from utils.utils_distributed import amp_dtype, rank_and_world

PROB_FLOOR = 1e-30
NORM_EPS = 1e-12  # torch.nn.functional.normalize's eps


def _all_reduce(tensor: torch.Tensor, op, world_size: int) -> None:
    if world_size > 1:
        distributed.all_reduce(tensor, op)


shard_range = class_range      # (class_start, num_local) of a rank's shard: one split for training and resharding


def _all_gather(tensor: torch.Tensor, world: int) -> torch.Tensor:
    out = tensor.new_empty((world * tensor.size(0),) + tuple(tensor.shape[1:]))
    gather = getattr(distributed, "all_gather_single", None) or distributed.all_gather_into_tensor
    gather(out, tensor.contiguous())
    return out


class AllGatherFunc(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradient over ranks and scales it by world size."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rank: int | None = None, world_size: int | None = None) -> torch.Tensor:
        ctx.rank, ctx.world = rank_and_world(rank, world_size)
        return _all_gather(tensor, ctx.world)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rank, world = ctx.rank, ctx.world
        grad = grad.contiguous().clone()
        distributed.all_reduce(grad, distributed.ReduceOp.SUM)
        rows = grad.size(0) // world
        return grad[rank * rows:(rank + 1) * rows] * world, None, None


AllGather = AllGatherFunc.apply


class DistCrossEntropyFunc(torch.autograd.Function):
    """Softmax cross-entropy over class shards; rows whose label is -1 have their class elsewhere.

    Works in place on ``logits`` (the margin's fresh output) and on its saved probabilities in
    backward, like the original: the graph can be backpropagated once.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, label: torch.Tensor, world_size: int | None = None) -> torch.Tensor:
        world_size = rank_and_world(world_size=world_size)[1]
        label = label.reshape(-1, 1)
        valid = label != -1
        cols = label.clamp_min(0)
        max_logits = logits.amax(dim=1, keepdim=True)
        _all_reduce(max_logits, distributed.ReduceOp.MAX, world_size)
        logits.sub_(max_logits).exp_()
        sum_exp = logits.sum(dim=1, keepdim=True)
        _all_reduce(sum_exp, distributed.ReduceOp.SUM, world_size)
        logits.div_(sum_exp)
        target_prob = logits.gather(1, cols).masked_fill_(~valid, 0.0)
        _all_reduce(target_prob, distributed.ReduceOp.SUM, world_size)
        ctx.save_for_backward(logits, cols, valid)
        return target_prob.clamp_min_(PROB_FLOOR).log_().mean().neg()

    @staticmethod
    def backward(ctx, loss_gradient: torch.Tensor):
        probs, cols, valid = ctx.saved_tensors
        probs.scatter_add_(1, cols, valid.to(probs.dtype).neg())
        probs.mul_(loss_gradient / probs.size(0))
        return probs, None, None


class DistCrossEntropy(torch.nn.Module):
    """The cross-entropy over the class shards of ``world_size`` ranks (None: the process group's)."""

    def __init__(self, world_size: int | None = None):
        super().__init__()
        self.world_size = world_size

    def forward(self, logit_part: torch.Tensor, label_part: torch.Tensor) -> torch.Tensor:
        return DistCrossEntropyFunc.apply(logit_part, label_part, self.world_size)


class NormalizedLinear(torch.autograd.Function):
    """``clamp(x_n @ normalize(W[index]).T, -1, 1)``; float32 without materialising normalize(W).

    ``x_n`` is already L2-normalised; ``index`` None uses every row. The weight gradient is dense
    (zeros outside ``index``), as autograd of ``normalize(W[index])`` would give. Full precision
    scales the columns of ``x_n @ W.T`` by ``1/|W_j|`` (no normalised copy of the weight); with a
    ``compute_dtype`` (fp16 autocast) both matmuls run on a normalised copy of the rows in that dtype,
    like the original's autocast, and the result is float32. The clamp passes no gradient where it
    clamped (|cos| = 1).
    """

    @staticmethod
    def forward(ctx, norm_x: torch.Tensor, weight: torch.Tensor, index: torch.Tensor | None,
                compute_dtype: torch.dtype | None) -> torch.Tensor:
        rows = weight.detach() if index is None else weight.detach().index_select(0, index)
        out_dtype = torch.promote_types(norm_x.dtype, rows.dtype)
        norms = torch.linalg.vector_norm(rows, dim=1, dtype=out_dtype)
        inv_norm = norms.clamp_min(NORM_EPS).reciprocal_()
        if compute_dtype is None:
            x_c, rows_c = norm_x, rows
            cos = torch.mm(norm_x, rows.t()).mul_(inv_norm)
        else:
            x_c = norm_x.to(compute_dtype)
            rows_c = (rows * inv_norm.unsqueeze(1).to(rows.dtype)).to(compute_dtype)
            cos = torch.mm(x_c, rows_c.t()).to(out_dtype)
        cos.clamp_(-1.0, 1.0)
        ctx.save_for_backward(x_c, rows, rows_c, norms, inv_norm, cos, index)
        ctx.weight_meta = (weight.shape, weight.dtype, weight.device)
        ctx.x_dtype = norm_x.dtype
        ctx.low_precision = compute_dtype is not None
        return cos

    @staticmethod
    def backward(ctx, grad_cos: torch.Tensor):
        x_c, rows, rows_c, norms, inv_norm, cos, index = ctx.saved_tensors
        clamped = cos.abs() >= 1.0
        if ctx.low_precision:  # d/d(x_n) and d/d(normalised rows) in the compute dtype
            grad = grad_cos.masked_fill(clamped, 0.0)
            grad_c = grad.to(x_c.dtype)
            radial_scale = inv_norm * inv_norm
        else:  # fold 1/|W_j| into the gradient's columns
            grad = (grad_cos * inv_norm).masked_fill_(clamped, 0.0)
            grad_c = grad
            radial_scale = inv_norm
        grad_x = torch.mm(grad_c, rows_c).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_rows = torch.mm(grad_c.t(), x_c).to(rows.dtype)
            if ctx.low_precision:
                grad_rows.mul_(inv_norm.unsqueeze(1).to(rows.dtype))
            radial = (grad * cos).sum(dim=0).mul_(radial_scale).masked_fill_(norms < NORM_EPS, 0.0)
            grad_rows.addcmul_(rows, radial.to(rows.dtype).unsqueeze(1), value=-1.0)
            grad_weight = grad_rows if index is None else _scatter_rows(grad_rows, index, *ctx.weight_meta)
        return grad_x, grad_weight, None, None


def _scatter_rows(rows: torch.Tensor, index: torch.Tensor, shape, dtype, device) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, device=device).index_add_(0, index, rows)


def _sorted_nonzero(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of the ``size`` set entries of ``mask`` in ascending order, without a host sync."""
    if mask.device.type in ("cpu", "cuda"):
        return torch.nonzero_static(mask, size=size).view(-1)
    return mask.nonzero().view(-1)


class PartialFC_V2(torch.nn.Module):
    """Sharded, optionally sampled class centres + margin softmax + distributed cross-entropy.

    ``forward(local_embeddings (B, D), local_labels (B,) or (B, 1)) -> loss`` (same value on every
    rank). Every step must use the same batch size (the loader drops the last partial batch).
    """

    _version = 2

    def __init__(self, margin_loss: Callable, embedding_size: int, num_classes: int,
                 sample_rate: float = 1.0, fp16: bool = False, *, rank: int | None = None,
                 world_size: int | None = None):
        """``rank``, ``world_size``: this process's, as utils_distributed.setup() decided them (the
        process group's when not given)."""
        super().__init__()
        if not callable(margin_loss):
            raise ConfigError("PartialFC_V2: margin_loss must be callable (e.g. CombinedMarginLoss), "
                              f"got {margin_loss!r}")
        self.rank, self.world_size = rank_and_world(rank, world_size)
        _check_sizes(embedding_size, num_classes, sample_rate, self.world_size)
        self.dist_cross_entropy = DistCrossEntropy(self.world_size)
        self.embedding_size = int(embedding_size)
        self.sample_rate = float(sample_rate)
        self.fp16 = bool(fp16)
        self.class_start, self.num_local = shard_range(int(num_classes), self.rank, self.world_size)
        self.num_sample = max(1, int(self.sample_rate * self.num_local))
        self.last_batch_size = 0
        self.weight_index = None
        self.k = _centres_per_class(margin_loss)
        self.weight = torch.nn.Parameter(torch.normal(0, 0.01, (self.num_local * self.k, self.embedding_size)))
        self.margin_softmax = margin_loss
        if hasattr(margin_loss, "init_bias"):
            margin_loss.init_bias(int(num_classes))
        summed = functools.partial(_summed_over_ranks, world_size=self.world_size)
        for parameter in getattr(margin_loss, "replicated_parameters", list)():
            parameter.register_hook(summed)  # each rank's loss holds only its columns' terms

    def extra_repr(self) -> str:
        centres = f", centres_per_class={self.k}" if self.k > 1 else ""
        return (f"embedding_size={self.embedding_size}, num_local={self.num_local}, class_start={self.class_start}, "
                f"sample_rate={self.sample_rate}, num_sample={self.num_sample}, fp16={self.fp16}{centres}")

    def sample(self, labels: torch.Tensor, index_positive: torch.Tensor) -> torch.Tensor:
        """The original's API: pick this step's centres, remap ``labels`` in place, return the kept rows."""
        return self.weight.index_select(0, self._weight_rows(self._sample_index(labels, index_positive)))

    def _weight_rows(self, class_index: torch.Tensor | None) -> torch.Tensor | None:
        """Weight rows of the kept classes: each class's k sub-centres, in class order."""
        if class_index is None or self.k == 1:
            return class_index
        offsets = torch.arange(self.k, device=class_index.device)
        return (class_index.view(-1, 1) * self.k + offsets).view(-1)

    def _sample_index(self, labels: torch.Tensor, index_positive: torch.Tensor) -> torch.Tensor:
        """Sorted indices of this step's centres (also ``self.weight_index``); remaps ``labels`` in place."""
        with torch.no_grad():
            is_positive = self._positive_mask(labels, index_positive)
            if self.num_sample < labels.numel() and int(is_positive.sum()) > self.num_sample:
                index = is_positive.nonzero().view(-1)
            else:
                index = self._draw(is_positive)
            self.weight_index = index
            remapped = torch.searchsorted(index, labels.clamp_min(0))
            labels.copy_(torch.where(index_positive, remapped, labels))
        return index

    def _positive_mask(self, labels: torch.Tensor, index_positive: torch.Tensor) -> torch.Tensor:
        slots = torch.where(index_positive, labels, self.num_local).view(-1)
        mask = torch.zeros(self.num_local + 1, dtype=torch.bool, device=labels.device)
        return mask.scatter_(0, slots, True)[:self.num_local]

    def _draw(self, is_positive: torch.Tensor) -> torch.Tensor:
        """All positives plus the first negatives of a random permutation, ``num_sample`` in all, sorted."""
        order = torch.randperm(self.num_local, device=is_positive.device)
        positive_in_order = is_positive[order]
        negative_rank = torch.cumsum(~positive_in_order, dim=0)
        room = self.num_sample - is_positive.sum()
        keep = torch.empty_like(is_positive).scatter_(0, order, positive_in_order | (negative_rank <= room))
        return _sorted_nonzero(keep, self.num_sample)

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        local_labels = local_labels.reshape(-1).long()
        self._check_batch(local_embeddings, local_labels)
        if self.world_size > 1:
            embeddings = AllGather(local_embeddings, self.rank, self.world_size)
            labels = _all_gather(local_labels, self.world_size)
        else:
            embeddings, labels = local_embeddings, local_labels
        labels = labels.view(-1, 1)
        index_positive = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        labels = torch.where(index_positive, labels - self.class_start, -1)
        index = self._sample_index(labels, index_positive) if self.sample_rate < 1 else None

        compute_dtype = amp_dtype(embeddings.device) if self.fp16 else None
        needs = getattr(self.margin_softmax, "needs", ())
        extras = {}
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            embeddings = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
            logits = NormalizedLinear.apply(normalize(embeddings), self.weight, self._weight_rows(index),
                                            compute_dtype)
            if self.k > 1:  # the class cosine is its best sub-centre's (gradient to that one only)
                logits = logits.view(logits.size(0), -1, self.k).max(dim=2).values
            if "norms" in needs:
                extras["norms"] = torch.linalg.vector_norm(embeddings, dim=1)
            if "target_cos" in needs:
                extras["target_cos"] = _global_target_cos(logits, labels, self.world_size)
            if getattr(self.margin_softmax, "replaces_cross_entropy", False):
                return _global_mean(self.margin_softmax(logits, labels, **extras), labels.size(0), self.world_size)
            logits = self.margin_softmax(logits, labels, **extras)
            loss = self.dist_cross_entropy(logits, labels)
            regularizer = getattr(self.margin_softmax, "regularizer", None)
            if regularizer is not None:
                loss = loss + _counted_once(regularizer, local_embeddings, self.world_size)
        return loss

    def _check_batch(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        batch_size = embeddings.size(0)
        if labels.numel() != batch_size:
            raise DataError(f"PartialFC_V2: {labels.numel()} labels for {batch_size} embeddings")
        if embeddings.dim() != 2 or embeddings.size(1) != self.embedding_size:
            raise DataError(f"PartialFC_V2: embeddings of shape {tuple(embeddings.shape)}, expected "
                            f"(batch, {self.embedding_size}); set embedding_size to the backbone's num_features")
        if self.last_batch_size == 0:
            self.last_batch_size = batch_size
        elif batch_size != self.last_batch_size:
            raise DataError(f"PartialFC_V2: batch size {batch_size} differs from the first step's "
                            f"{self.last_batch_size}; every step needs the same batch size on every rank "
                            "(use drop_last=True in the data loader)")


def _centres_per_class(margin_loss: Callable) -> int:
    k = getattr(margin_loss, "k", 1)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ConfigError(f"PartialFC_V2: the margin's k (sub-centres per class) must be an integer >= 1, got {k!r}")
    return int(k)


def _global_target_cos(logits: torch.Tensor, labels: torch.Tensor, world_size: int) -> torch.Tensor:
    """(N,) target cosine of every global row: each rank fills the rows whose class it holds, one all-reduce."""
    with torch.no_grad():
        valid = labels.view(-1, 1) != -1
        target = logits.gather(1, labels.view(-1, 1).clamp_min(0)).masked_fill_(~valid, 0.0).view(-1)
        _all_reduce(target, distributed.ReduceOp.SUM, world_size)
    return target


def _global_mean(local_sum: torch.Tensor, rows: int, world_size: int) -> torch.Tensor:
    """A loss summed over this rank's terms, over the N global rows: back-propagated as is, its value
    the all-reduced total (the same on every rank)."""
    local = local_sum / rows
    if world_size == 1:
        return local
    total = local.detach().clone()
    _all_reduce(total, distributed.ReduceOp.SUM, world_size)
    return local + (total - local.detach())


def _summed_over_ranks(grad: torch.Tensor, world_size: int) -> torch.Tensor:
    """Gradient hook of a parameter every rank holds a copy of: the sum of the ranks' gradients."""
    grad = grad.clone()
    _all_reduce(grad, distributed.ReduceOp.SUM, world_size)
    return grad


def _counted_once(regularizer: Callable, local_embeddings: torch.Tensor, world_size: int) -> torch.Tensor:
    """The regulariser of the rank's own rows, back-propagated as is; its value the mean over all ranks.

    DDP averages the backbone gradient over ranks, so the local term's gradient becomes the global
    mean's; computing it from the gathered rows instead would count it W times.
    """
    norms = torch.linalg.vector_norm(local_embeddings.to(torch.promote_types(local_embeddings.dtype,
                                                                             torch.float32)), dim=1)
    local = regularizer(norms)
    if world_size == 1:
        return local
    total = local.detach().clone()
    _all_reduce(total, distributed.ReduceOp.SUM, world_size)
    return local + (total / world_size - local.detach())


def _check_sizes(embedding_size: int, num_classes: int, sample_rate: float, world_size: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if num_classes < world_size:
        raise ConfigError(f"num_classes ({num_classes}) is smaller than the world size ({world_size}): "
                          "every rank needs at least one class centre; use fewer processes")
    if isinstance(embedding_size, bool) or not isinstance(embedding_size, numbers.Integral) or embedding_size < 1:
        raise ConfigError(f"embedding_size must be a positive integer, got {embedding_size!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real) or not 0.0 <= sample_rate <= 1.0:
        raise ConfigError(f"sample_rate must be in [0, 1] (1.0 = no sampling, 0 = the positives only), "
                          f"got {sample_rate!r}")
