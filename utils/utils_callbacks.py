"""Periodic logging and verification, with the original arcface_torch log-line formats."""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from utils.utils_logging import AverageMeter


class CallBackVerification:
    """Every call: embed each ``<rec_prefix>/<name>.bin`` and log XNorm, Accuracy-Flip, Accuracy-Highest."""

    def __init__(self, val_targets: list[str], rec_prefix: str, summary_writer: Any = None,
                 image_size: tuple[int, int] = (112, 112), batch_size: int = 256) -> None:
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
