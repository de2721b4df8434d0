"""Train an ArcFace-style face-recognition model: python train_v2.py configs/x.py [--set key=value ...]

One process without torchrun, or ``torchrun --nproc_per_node=N train_v2.py configs/x.py``; CUDA (NCCL) or CPU (gloo).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time

import torch

from backbones import check_network
from dataset import aug_from_config, check_all_samples, get_dataloader
from losses import build_margin
from partial_fc_v2 import PartialFC_V2
from utils.checkpoint import (OutputLock, StopRequest, atomic_save, checkpoint_path, fingerprint,
                              load_checkpoint, prepare_output, remove_failed_output, remove_stale_temporaries,
                              rng_states, save_rank_checkpoint, set_rng_states)
from utils.data_check import check_data_vs_config, check_val_targets, inspect_data, resolve_auto
from utils.demo_data import ensure_demo_data
from utils.cli import run_tool
from utils.errors import ArcFaceError
from callbacks import CallBackLogging, CallBackVerification, build_metric_writers
from utils.run_config import describe_run, write_run_config
from utils.utils_config import config_warnings, get_config
from utils.utils_distributed import cleanup, keep_freed_cpu_memory, setup, setup_seed
from utils.utils_logging import AverageMeter, init_logging
from training import (GradScaleWatch, build_backbone, build_grad_scaler, build_lr_scheduler,
                               build_optimizer, config_changes, load_pretrained, log_config, masked_config,
                               restore_group_settings, restore_schedule, resume_position, set_step_counts,
                               train_step)


class TrainingStopped(ArcFaceError):
    """Training stopped early (signal, non-finite loss); a checkpoint was written where possible."""
    exit_code = 3       # "resume it": schedulers requeue on this status


def main(args: argparse.Namespace) -> None:
    cfg = get_config(args.config, args.set)
    check_network(cfg.network)      # a typo stops here, not after the data scan
    info = setup(args.local_rank)
    if info.device.type == "cpu":
        keep_freed_cpu_memory()     # activations live in CPU memory: reuse them (2.3x faster steps)
    setup_seed(cfg.seed, cuda_deterministic=False)
    created, removed = prepare_output(cfg.output, cfg.resume, cfg.overwrite, info.is_main)
    init_logging(info.rank, cfg.output)
    for path in removed:
        logging.warning("overwrite=True: removed %s of the earlier run", path)
    lock = OutputLock(cfg.output, cfg.resume, cfg.overwrite)
    progress = {"started": False}
    try:
        if info.is_main:
            lock.acquire()
        train(cfg, info, progress)
    except ArcFaceError:
        if created and info.is_main and not progress["started"]:   # a failed start-up leaves no folder behind
            lock.release()
            remove_failed_output(cfg.output)
        raise
    finally:
        lock.release()
        cleanup(info)


def train(cfg, info, progress: dict | None = None) -> None:
    """Build, loop, save; ``progress["started"]`` turns True when the first step begins."""
    # Data first: every disagreement between data and config stops here, before any heavy work.
    if cfg.demo_data:
        ensure_demo_data(cfg.rec, info.is_main, info.distributed)
    data_info = inspect_data(cfg.rec)
    resolve_auto(cfg, data_info)
    for warning in check_data_vs_config(cfg, data_info, info.world_size) + check_val_targets(cfg) + \
            config_warnings(cfg):
        logging.warning(warning)
    set_step_counts(cfg, info.world_size)
    if info.is_main:     # the run describes itself: the tools read network and sizes from it
        write_run_config(cfg.output, describe_run(cfg, masked_config(cfg)))
    train_loader = get_dataloader(
        cfg.rec, info.local_rank, cfg.batch_size, cfg.dali, cfg.dali_aug, cfg.seed, cfg.num_workers,
        aug=aug_from_config(cfg), rank=info.rank, world_size=info.world_size, device=info.device,
        max_bad_samples=cfg.max_bad_samples, num_classes=cfg.num_classes, num_image=cfg.num_image)
    if cfg.check_data == "full":
        check_all_samples(cfg.rec, cfg.num_workers, cfg.max_bad_samples, cfg.num_classes)

    summary_writer = build_metric_writers(cfg, masked_config(cfg), info.is_main)   # TensorBoard, W&B

    backbone, backbone_module = build_backbone(cfg, info)
    pretrained_notes = load_pretrained(cfg, backbone_module)    # a resumed checkpoint overrides it
    margin_loss = build_margin(cfg)
    module_partial_fc = PartialFC_V2(margin_loss, cfg.embedding_size, cfg.num_classes, cfg.sample_rate, cfg.fp16,
                                     rank=info.rank, world_size=info.world_size).train().to(info.device)
    opt = build_optimizer(cfg, backbone_module, module_partial_fc)
    lr_scheduler = build_lr_scheduler(cfg, opt)
    amp = build_grad_scaler(cfg, info.device)

    start_epoch, global_step, start_batch, start_sample = 0, 0, 0, 0
    remove_stale_temporaries(cfg.output, info.rank)
    dict_checkpoint = load_checkpoint(cfg, info.rank, info.distributed, info.world_size)
    resume_notes: list[str] = []
    if dict_checkpoint is not None:
        start_epoch = dict_checkpoint["epoch"]
        global_step, start_batch, start_sample, position_notes = resume_position(cfg, dict_checkpoint)
        resume_notes += position_notes
        backbone_module.load_state_dict(dict_checkpoint["state_dict_backbone"])
        module_partial_fc.load_state_dict(dict_checkpoint["state_dict_softmax_fc"])
        opt.load_state_dict(dict_checkpoint["state_optimizer"])
        # nothing the config changed is dropped silently: applied and logged, or listed
        resume_notes += restore_schedule(cfg, opt, lr_scheduler, dict_checkpoint["state_lr_scheduler"], global_step)
        resume_notes += restore_group_settings(cfg, opt)
        resume_notes += [f"resume: {change} (applies from now on)"
                         for change in config_changes(dict_checkpoint.get("config"), cfg)]
        if "state_grad_scaler" in dict_checkpoint:
            amp.load_state_dict(dict_checkpoint["state_grad_scaler"])
        if "rng" in dict_checkpoint:
            set_rng_states(dict_checkpoint["rng"])
        train_loader.load_state_dict(dict_checkpoint.get("state_loader") or {})
        resume_notes.insert(0, f"resumed from {dict_checkpoint['path']}: epoch {start_epoch}, global step "
                               f"{global_step}")
        del dict_checkpoint

    log_config(cfg)
    for note in pretrained_notes + resume_notes:
        logging.info(note)
    scale_watch = GradScaleWatch(amp)     # after the resume: it starts from the restored scale
    callback_verification = CallBackVerification(
        val_targets=cfg.val_targets if info.is_main else [], rec_prefix=cfg.rec, summary_writer=summary_writer,
        image_size=tuple(cfg.image_size), batch_size=cfg.verification_batch_size)
    callback_logging = CallBackLogging(
        frequent=cfg.frequent, total_step=cfg.total_step, batch_size=cfg.batch_size,
        start_step=global_step, writer=summary_writer, world_size=info.world_size)

    def save_checkpoint(epoch: int, batch_in_epoch: int, resumable: bool = False) -> None:
        """model.pt, and the rank's resumable checkpoint when asked for (always on a stop by signal)."""
        if resumable or cfg.save_all_states or cfg.save_checkpoint or cfg.checkpoint_every:
            save_rank_checkpoint({
                "epoch": epoch, "global_step": global_step, "batch_in_epoch": batch_in_epoch,
                "samples_in_epoch": start_sample + (batch_in_epoch - start_batch) * cfg.total_batch_size,
                "state_dict_backbone": backbone_module.state_dict(),
                "state_dict_softmax_fc": module_partial_fc.state_dict(),
                "state_optimizer": opt.state_dict(),
                "state_lr_scheduler": lr_scheduler.state_dict(),
                "state_grad_scaler": amp.state_dict(),
                "rng": rng_states(),
                "state_loader": train_loader.state_dict(),
                "fingerprint": fingerprint(cfg),
                "config": masked_config(cfg),
            }, cfg.output, info.rank, keep_previous=info.distributed)
        if info.is_main:
            atomic_save(backbone_module.state_dict(), os.path.join(cfg.output, "model.pt"))
            if summary_writer is not None:
                summary_writer.save_model(os.path.join(cfg.output, "model.pt"), global_step)

    loss_am = AverageMeter()
    loss_sum = torch.zeros((), device=info.device)
    stop = StopRequest()
    stop.install()
    if progress is not None:
        progress["started"] = True
    try:
        for epoch in range(start_epoch, cfg.num_epoch):
            train_loader.set_epoch(epoch, start_batch, start_sample)
            for batch_in_epoch, (img, local_labels) in enumerate(train_loader, start=start_batch + 1):
                global_step += 1
                loss = train_step(backbone, module_partial_fc, opt, amp, img, local_labels,
                                  update=global_step % cfg.gradient_acc == 0, gradient_acc=cfg.gradient_acc,
                                  clip_grad_norm=cfg.clip_grad_norm)
                loss_sum += loss
                lr_scheduler.step()

                if global_step % cfg.frequent == 0:
                    mean_loss = loss_sum.item() / cfg.frequent
                    loss_sum.zero_()
                    if not math.isfinite(mean_loss):
                        raise TrainingStopped(
                            f"loss is {mean_loss} at global step {global_step} (learning rate "
                            f"{lr_scheduler.get_last_lr()[0]:.6f}); the last good checkpoint is "
                            f"{checkpoint_path(cfg.output, info.rank)} (if saved): lower lr, enable warmup, "
                            f"or check the data")
                    loss_am.update(mean_loss, cfg.frequent)
                    if info.is_main:
                        callback_logging(global_step, loss_am, epoch, cfg.fp16, lr_scheduler.get_last_lr()[0], amp)
                        scale_watch.check(global_step)
                if global_step % cfg.verbose == 0 and info.is_main:
                    tic = time.time()
                    callback_verification(global_step, backbone_module)
                    callback_logging.exclude(time.time() - tic)
                if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
                    save_checkpoint(epoch, batch_in_epoch)
                if stop.agreed(info.distributed, info.device, global_step, cfg.frequent):
                    save_checkpoint(epoch, batch_in_epoch, resumable=True)
                    raise TrainingStopped(f"stopped by {stop.signal_name} at global step {global_step}; "
                                          f"checkpoint written to {checkpoint_path(cfg.output, info.rank)}: "
                                          f"rerun with resume=True to continue")
            start_batch = start_sample = 0
            save_checkpoint(epoch + 1, 0)
    finally:
        stop.uninstall()
        if summary_writer is not None:
            summary_writer.close()
    if info.is_main:
        atomic_save(backbone_module.state_dict(), os.path.join(cfg.output, "model.pt"))
        logging.info("training done: %d steps, model saved to %s", global_step, os.path.join(cfg.output, "model.pt"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Distributed ArcFace Training in PyTorch")
    parser.add_argument("config", type=str, help="py config file")
    parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)),
                        help="local rank (torchrun sets LOCAL_RANK)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set lr=0.05 batch_size=64")
    return parser.parse_args(argv)


def log_error_line(line: str) -> None:
    """Keep the reason of a failed run in training.log too, not only on stderr."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.ERROR}))


def cli(argv: list[str] | None = None) -> int:
    """The command line (``python train_v2.py`` and ``arcface-train``); exit codes of utils.cli.run_tool."""
    return run_tool(lambda: main(parse_args(argv)), on_error=log_error_line)

if __name__ == "__main__":
    sys.exit(cli())
