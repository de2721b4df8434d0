"""Log to <output>/training.log and the console in the original's line format."""
from __future__ import annotations

import logging
import os
import sys

LOG_FORMAT = "Training: %(asctime)s-%(message)s"


class AverageMeter:
    """Running average of a scalar (the loss between two log lines)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def init_logging(rank: int, models_root: str) -> None:
    """Rank 0 logs INFO to the console and to ``models_root/training.log``; other ranks stay quiet."""
    log_root = logging.getLogger()
    for handler in list(log_root.handlers):
        log_root.removeHandler(handler)
        handler.close()
    if rank != 0:
        log_root.setLevel(logging.WARNING)
        log_root.addHandler(logging.StreamHandler(sys.stderr))
        return
    log_root.setLevel(logging.INFO)
    logging.captureWarnings(True)      # Python warnings (e.g. from losses.py) reach training.log too
    formatter = logging.Formatter(LOG_FORMAT)
    handler_file = logging.FileHandler(os.path.join(models_root, "training.log"))
    handler_stream = logging.StreamHandler(sys.stdout)
    for handler in (handler_file, handler_stream):
        handler.setFormatter(formatter)
        log_root.addHandler(handler)
    log_root.info("rank_id: %d", rank)
