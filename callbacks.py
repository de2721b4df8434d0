"""Periodic logging and verification, with the original arcface_torch log-line formats."""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from utils.errors import ConfigError
from utils.files import atomic_write_text
from utils.image import FACE_SIZE
from utils.utils_logging import AverageMeter


class CallBackVerification:
    """Every call: embed each ``<rec_prefix>/<name>.bin`` and log XNorm, Accuracy-Flip, Accuracy-Highest."""

    def __init__(self, val_targets: list[str], rec_prefix: str, summary_writer: Any = None,
                 image_size: tuple[int, int] = (FACE_SIZE, FACE_SIZE), batch_size: int = 256) -> None:
        self.summary_writer = summary_writer
        self.batch_size = batch_size
        self.ver_list: list[Any] = []
        self.ver_name_list: list[str] = []
        self.highest_acc_list: list[float] = []
        self.last_results: dict[str, float] = {}
        self.init_dataset(val_targets, rec_prefix, image_size)

    def init_dataset(self, val_targets: list[str], data_dir: str, image_size: tuple[int, int]) -> None:
        from eval import verification

        missing = []
        for name in val_targets:
            path = os.path.join(data_dir, name + ".bin")
            if os.path.exists(path):
                self.ver_list.append(verification.load_bin(path, image_size))
                self.ver_name_list.append(name)
            else:
                missing.append(path)
        self.highest_acc_list = [0.0] * len(self.ver_list)
        if missing:
            logging.warning("verification targets not found, skipped: %s", ", ".join(missing))

    def ver_test(self, backbone: torch.nn.Module, global_step: int) -> dict[str, float]:
        from eval import verification

        results = {}
        for i, (name, data_set) in enumerate(zip(self.ver_name_list, self.ver_list)):
            _, _, acc2, std2, xnorm, _ = verification.test(data_set, backbone, self.batch_size, 10)
            logging.info("[%s][%d]XNorm: %f", name, global_step, xnorm)
            logging.info("[%s][%d]Accuracy-Flip: %1.5f+-%1.5f", name, global_step, acc2, std2)
            self.highest_acc_list[i] = max(self.highest_acc_list[i], acc2)
            logging.info("[%s][%d]Accuracy-Highest: %1.5f", name, global_step, self.highest_acc_list[i])
            if self.summary_writer is not None:
                self.summary_writer.add_scalar(name, acc2, global_step)
            results[name] = acc2
        self.last_results = results
        return results

    def __call__(self, num_update: int, backbone: torch.nn.Module) -> dict[str, float]:
        if num_update <= 0 or not self.ver_list:
            return {}
        was_training = backbone.training
        backbone.eval()
        try:
            return self.ver_test(backbone, num_update)
        finally:
            backbone.train(was_training)


class CallBackLogging:
    """Every ``frequent`` steps: speed (training time only), loss, LR, epoch, step and ETA."""

    def __init__(self, frequent: int, total_step: int, batch_size: int, start_step: int = 0,
                 writer: Any = None, world_size: int = 1) -> None:
        self.frequent = frequent
        self.total_step = total_step
        self.batch_size = batch_size
        self.world_size = world_size
        self.start_step = start_step
        self.writer = writer
        self.time_start = time.time()
        self.tic = 0.0
        self.init = False
        self.excluded = 0.0  # seconds spent outside training (verification) since the last line

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (e.g. verification) out of the speed and ETA."""
        self.excluded += seconds
        self.time_start += seconds

    def __call__(self, global_step: int, loss: AverageMeter, epoch: int, fp16: bool,
                 learning_rate: float, grad_scaler: Any = None) -> str | None:
        if global_step <= 0 or global_step % self.frequent != 0:
            return None
        now = time.time()
        if not self.init:
            self.init, self.tic, self.excluded = True, now, 0.0
            return None
        elapsed = max(now - self.tic - self.excluded, 1e-9)
        speed_total = self.frequent * self.batch_size * self.world_size / elapsed
        done = max(global_step - self.start_step, 1)
        time_for_end = (now - self.time_start) / done * max(self.total_step - global_step, 0) / 3600
        if self.writer is not None:
            self.writer.add_scalar("time_for_end", time_for_end, global_step)
            self.writer.add_scalar("learning_rate", learning_rate, global_step)
            self.writer.add_scalar("loss", loss.avg, global_step)
        msg = "Speed %.2f samples/sec   Loss %.4f   LearningRate %.6f   Epoch: %d   Global Step: %d   " % (
            speed_total, loss.avg, learning_rate, epoch, global_step)
        if fp16 and grad_scaler is not None and grad_scaler.is_enabled():
            msg += "Fp16 Grad Scale: %2.f   " % grad_scaler.get_scale()
        msg += "Required: %1.f hours" % time_for_end
        logging.info(msg)
        loss.reset()
        self.tic, self.excluded = time.time(), 0.0
        return msg


class MetricWriters:
    """``add_scalar`` to every sink at once: TensorBoard's SummaryWriter and/or W&B (rank 0 only)."""

    def __init__(self, writers: list[Any]) -> None:
        self.writers = [w for w in writers if w is not None]

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        for writer in self.writers:
            writer.add_scalar(tag, value, step)

    def save_model(self, path: str, step: int) -> None:
        for writer in self.writers:
            if hasattr(writer, "save_model"):
                writer.save_model(path, step)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class WandbWriter:
    """Weights & Biases logging as the original's keys ask for it: loss, LR, verification, config, model.

    The key comes from ``wandb_key`` or WANDB_API_KEY (the placeholder of configs/base.py counts as
    unset); ``WANDB_MODE=offline`` needs none. The run lives in ``<output>/wandb``; its id is kept in
    ``<output>/wandb_run_id`` so that ``wandb_resume`` continues the same W&B run after a resume.
    """

    PLACEHOLDER = "X" * 40

    def __init__(self, cfg: Any, config: dict) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("using_wandb=True but the wandb package is not installed: pip install wandb, "
                              "or set using_wandb=False") from None
        self.wandb, self.save_artifacts = wandb, bool(cfg.save_artifacts)
        key = cfg.wandb_key if cfg.wandb_key and cfg.wandb_key != self.PLACEHOLDER else os.environ.get("WANDB_API_KEY")
        offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")
        if not key and not offline:
            raise ConfigError("using_wandb=True needs an API key: set wandb_key in the config or WANDB_API_KEY, "
                              "or run with WANDB_MODE=offline (sync later with `wandb sync`)")
        if key and not offline:
            wandb.login(key=key, relogin=False)
        id_path = os.path.join(cfg.output, "wandb_run_id")
        run_id = None
        if cfg.wandb_resume and os.path.exists(id_path):
            with open(id_path) as f:
                run_id = f.read().strip() or None
        name = time.strftime("%y%m%d_%H%M") + ("" if cfg.suffix_run_name is None else f"_{cfg.suffix_run_name}")
        self.run = wandb.init(entity=cfg.wandb_entity, project=cfg.wandb_project, name=name, dir=cfg.output,
                              id=run_id, resume="allow" if cfg.wandb_resume else None, config=config)
        atomic_write_text(id_path, self.run.id)
        self.name = name

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.run.log({tag: value}, step=step)

    def save_model(self, path: str, step: int) -> None:
        """model.pt as a W&B artifact (``save_artifacts``)."""
        if self.save_artifacts:
            artifact = self.wandb.Artifact(name=f"model_{self.run.id}", type="model", metadata={"step": step})
            artifact.add_file(path)
            self.run.log_artifact(artifact)

    def close(self) -> None:
        self.run.finish()


def build_metric_writers(cfg: Any, config: dict, is_main: bool) -> MetricWriters | None:
    """TensorBoard (``tensorboard``) and W&B (``using_wandb``) sinks of rank 0; None when there are none."""
    if not is_main or not (cfg.tensorboard or cfg.using_wandb):
        return None
    writers: list[Any] = []
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        writers.append(SummaryWriter(log_dir=os.path.join(cfg.output, "tensorboard")))
    if cfg.using_wandb:
        writers.append(WandbWriter(cfg, config))
    return MetricWriters(writers)
