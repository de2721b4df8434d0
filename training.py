"""Builders used by train_v2.py: backbone on its device, optimiser, LR schedule, step counts, AMP."""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

from backbones import get_model
from lr_scheduler import PolynomialLRWarmup, StepLRWarmup
from utils.elastic import samples_in_epoch
from utils.errors import ConfigError
from utils.weights import describe_mismatch, key_differences, read_backbone_state
from utils.utils_distributed import DistInfo, amp_dtype


def build_backbone(cfg: Any, info: DistInfo) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(model to train, maybe DDP/compiled; the plain module whose state_dict is model.pt)."""
    # dropout None: each network's own (0 for iresnet, the fork's 0.5 for LResNet50E_IR, which ignored
    # the original's dropout=0.0); gradient_checkpointing None: upstream's default (on for the big ViTs),
    # False: off, True: on.
    module = get_model(cfg.network, dropout=None, fp16=cfg.fp16, num_features=cfg.embedding_size,
                       gradient_checkpointing=cfg.gradient_checkpointing).to(info.device)
    if cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)
    model = module
    if info.distributed:
        device_ids = [info.local_rank] if info.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(
            module=module, broadcast_buffers=False, device_ids=device_ids, bucket_cap_mb=16,
            find_unused_parameters=False, static_graph=True)
        if cfg.fp16 and info.device.type == "cuda":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
            model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    if cfg.compile:
        model = torch.compile(model)
    model.train()
    return model, module


def load_pretrained(cfg: Any, module: torch.nn.Module) -> list[str]:
    """Initialise the backbone from ``cfg.pretrained`` (a model.pt or checkpoint); returns the log lines.

    Strict by default (``pretrained_strict``): any missing, unexpected or differently shaped key stops
    start-up naming the file. Not strict: the fitting tensors load and the rest is listed.
    """
    if not cfg.pretrained:
        return []
    if not os.path.isfile(cfg.pretrained):
        raise ConfigError(f"config key 'pretrained': {cfg.pretrained} does not exist (give the path of a model.pt)")
    state = read_backbone_state(cfg.pretrained)
    missing, unexpected, shapes = key_differences(module.state_dict(), state)
    if (missing or unexpected or shapes) and cfg.pretrained_strict:
        raise ConfigError(f"config key 'pretrained': {cfg.pretrained} does not fit network {cfg.network} "
                          f"(embedding_size {cfg.embedding_size}): {describe_mismatch(module.state_dict(), state)}; "
                          f"set pretrained_strict=False to load the tensors that fit")
    fitting = {k: v for k, v in state.items() if k not in unexpected and k not in shapes}
    module.load_state_dict(fitting, strict=False)
    lines = [f"pretrained: initialised {len(fitting)} tensors of {cfg.network} from {cfg.pretrained}"]
    for label, keys in (("left at their initial values (missing in the file)", missing + shapes),
                        ("in the file but not in the network (ignored)", unexpected)):
        if keys:
            lines.append(f"pretrained: {len(keys)} keys {label}: {', '.join(keys[:8])}"
                         + (", ..." if len(keys) > 8 else ""))
    return lines


def build_optimizer(cfg: Any, backbone: torch.nn.Module, partial_fc: torch.nn.Module) -> torch.optim.Optimizer:
    """Backbone first, the class centres last (the original's param-group order)."""
    groups = [{"params": backbone.parameters()}, {"params": partial_fc.parameters()}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_step_counts(cfg: Any, world_size: int) -> None:
    """total_batch_size, steps per epoch, warmup_step and total_step, as the original computes them."""
    cfg.world_size = world_size
    cfg.total_batch_size = cfg.batch_size * world_size
    cfg.steps_per_epoch = cfg.num_image // cfg.total_batch_size
    if cfg.steps_per_epoch < 1:
        raise ConfigError(f"batch_size * world_size = {cfg.total_batch_size} is larger than num_image = "
                          f"{cfg.num_image}: lower batch_size")
    # warmup_epoch -1 (the original's 3millions.py) means no warm-up
    cfg.warmup_step = cfg.steps_per_epoch * max(cfg.warmup_epoch, 0)
    cfg.total_step = cfg.steps_per_epoch * cfg.num_epoch


def build_lr_scheduler(cfg: Any, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.lr_scheduler == "step":
        milestones = [int(epoch * cfg.steps_per_epoch) for epoch in cfg.lr_steps]
        return StepLRWarmup(opt, cfg.warmup_step, milestones, gamma=cfg.lr_gamma)
    return PolynomialLRWarmup(opt, cfg.warmup_step, cfg.total_step, power=cfg.lr_power)


def build_grad_scaler(cfg: Any, device: torch.device) -> torch.amp.GradScaler:
    """float16 needs loss scaling; bfloat16 (amp_dtype off CUDA) does not (scaler disabled)."""
    enabled = bool(cfg.fp16) and amp_dtype(device) == torch.float16
    if cfg.fp16 and not enabled:
        logging.info("fp16 on %s: bfloat16 autocast, no loss scaling", device.type.upper())
    return torch.amp.GradScaler(device.type, growth_interval=100, enabled=enabled)


class GradScaleWatch:
    """Reports a collapsing fp16 loss scale, checked at logging steps (reading the scale syncs).

    The GradScaler halves its scale and skips the step whenever the gradients overflow. A scale
    that keeps falling (``falls`` logging intervals in a row) or drops below ``floor`` means
    steps are being skipped over and over and small gradients underflow to zero.
    """

    def __init__(self, scaler: torch.amp.GradScaler, floor: float = 1.0, falls: int = 3):
        self.scaler, self.floor, self.falls_needed = scaler, floor, falls
        self.last = scaler.get_scale() if scaler.is_enabled() else None
        self.falls = 0
        self.reported = float("inf")

    def check(self, global_step: int) -> str | None:
        """Log (warning) and return a message when the scale collapses; None otherwise."""
        if self.last is None:
            return None
        scale = self.scaler.get_scale()
        self.falls = self.falls + 1 if scale < self.last else 0
        self.last = scale
        collapsing = scale < self.floor or self.falls >= self.falls_needed
        if not collapsing or scale >= self.reported:
            return None
        self.reported = scale
        message = (f"fp16 loss scale fell to {scale:g} at global step {global_step} (falling for {self.falls} "
                   f"logging intervals): gradients overflow again and again and those steps are skipped; "
                   f"lower lr, lengthen warmup_epoch, or check the data")
        logging.warning(message)
        return message


def log_config(cfg: Any) -> None:
    """The original's config dump in training.log, secrets (wandb_key, tokens, ...) masked."""
    for key, value in masked_config(cfg).items():
        logging.info(": " + key + " " * max(25 - len(key), 1) + str(value))


# Optimiser hyper-parameters a checkpoint's param groups would silently bring back on resume.
_GROUP_KEYS = ("momentum", "weight_decay")
# Scheduler state that comes from the config (num_epoch, warmup_epoch, lr, lr_* keys).
_PLAN_KEYS = ("base_lrs", "warmup_iters", "total_iters", "power", "milestones", "gamma")
# Keys that differ between runs without meaning anything for the training itself.
# (the derived step counts follow the keys they come from, which are reported).
_NOT_REPORTED = ("resume", "overwrite", "config_file", "total_step", "warmup_step", "steps_per_epoch",
                 "total_batch_size")


def resume_position(cfg: Any, state: dict) -> tuple[int, int, int, list[str]]:
    """(global_step, start_batch, start_sample, log lines) of a resume, counted in samples of the epoch.

    With the checkpoint's global batch the position is its own; with another one (other world size
    or batch_size) the run continues at the first sample of the epoch no rank consumed, and the
    global step (hence the LR) is where the new plan has that many samples behind it.
    """
    saved = state.get("fingerprint", {})
    old_world = int(state.get("resharded_from") or saved.get("world_size") or cfg.world_size)
    old_global = int(saved.get("batch_size", cfg.batch_size)) * old_world
    start_sample = samples_in_epoch(state, old_world)
    start_batch = start_sample // cfg.total_batch_size
    notes = []
    if old_world != cfg.world_size:
        notes.append(f"resume: class centres and their optimiser state resharded from {old_world} to "
                     f"{cfg.world_size} ranks")
    if old_global == cfg.total_batch_size:
        return int(state["global_step"]), start_batch, start_sample, notes
    global_step = int(state["epoch"]) * cfg.steps_per_epoch + start_batch
    keep = (f"--set batch_size={old_global // cfg.world_size} keeps it" if old_global % cfg.world_size == 0
            else f"no per-rank batch_size keeps the global batch {old_global} on {cfg.world_size} ranks")
    logging.warning(f"resume: the global batch changes from {old_global} to {cfg.total_batch_size} ({cfg.world_size} "
                    f"ranks x {cfg.batch_size}); training continues at sample {start_sample} of epoch "
                    f"{state['epoch']} as global step {global_step} of {cfg.total_step} (was "
                    f"{state['global_step']}); {keep}")
    return global_step, start_batch, start_sample, notes


def restore_schedule(cfg: Any, opt: torch.optim.Optimizer, lr_scheduler: Any, saved: dict,
                     global_step: int) -> list[str]:
    """Load the scheduler state, or re-plan it from the config when its plan differs; return log lines.

    The checkpoint's scheduler carries the old total steps and base LR: loading it as is trained
    an extended run (larger num_epoch) at LR 0 while training.log showed the new values. When
    the plan of the config differs, the schedule continues at ``global_step`` on the new plan.
    """
    planned = lr_scheduler.state_dict()
    changed = [k for k in _PLAN_KEYS if k in planned and saved.get(k) != planned[k]]
    if not changed:
        lr_scheduler.load_state_dict(saved)
        return []
    for group in opt.param_groups:
        group["initial_lr"] = cfg.lr
    state = dict(planned, last_epoch=global_step, _step_count=global_step + 1)
    lr_scheduler.load_state_dict(state)
    old_total, old_lr = saved.get("total_iters", "?"), (saved.get("base_lrs") or ["?"])[0]
    return [f"resume: LR schedule re-planned from the config ({', '.join(changed)} changed): total steps "
            f"{old_total} -> {getattr(lr_scheduler, 'total_iters', cfg.total_step)}, base lr {old_lr} -> "
            f"{cfg.lr}; learning rate now {lr_scheduler.get_last_lr()[0]:.6f} at global step {global_step}"]


def restore_group_settings(cfg: Any, opt: torch.optim.Optimizer) -> list[str]:
    """Apply momentum / weight_decay of the config over those the optimiser state brought back."""
    lines = []
    for key in _GROUP_KEYS:
        old = {group[key] for group in opt.param_groups if key in group}
        if old and old != {cfg[key]}:
            for group in opt.param_groups:
                group[key] = cfg[key]
            lines.append(f"resume: {key} {', '.join(map(str, sorted(old)))} -> {cfg[key]} (from the config)")
    return lines


def config_changes(saved: dict | None, cfg: Any) -> list[str]:
    """Config keys whose value differs from the checkpoint's run (they apply from now on)."""
    if not saved:
        return []
    current = masked_config(cfg)
    return [f"{key}: {saved[key]!r} -> {current[key]!r}" for key in current
            if key in saved and key not in _NOT_REPORTED and saved[key] != current[key]]


def masked_config(cfg: Any) -> dict:
    """The config as plain values, every secret-looking key's value masked."""
    return {key: mask_secret(key, value) for key, value in cfg.items()}


_SECRET_WORDS = ("key", "token", "secret", "password")


def mask_secret(key: str, value: Any) -> Any:
    """'********' for keys naming a secret (wandb_key, hf_token, ...) when they hold a value."""
    if value and isinstance(value, str) and any(word in key.lower() for word in _SECRET_WORDS):
        return "*" * 8
    return value


def train_step(backbone: torch.nn.Module, partial_fc: torch.nn.Module, opt: torch.optim.Optimizer,
               amp: torch.amp.GradScaler, img: torch.Tensor, labels: torch.Tensor, update: bool = True,
               gradient_acc: int = 1, clip_grad_norm: float = 5.0) -> torch.Tensor:
    """Forward, backward and (when ``update``) the clipped optimiser step; returns the detached loss."""
    local_embeddings = backbone(img)
    loss = partial_fc(local_embeddings, labels)
    amp.scale(loss / gradient_acc).backward()
    if update:
        amp.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], clip_grad_norm)
        amp.step(opt)
        amp.update()
        opt.zero_grad(set_to_none=True)
    return loss.detach()
