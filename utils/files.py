"""The one atomic-write scheme: write ``<path>.tmp.<pid>``, fsync, rename over ``path``.

Readers never see a half-written file, and a killed writer leaves only a temporary whose pid is
gone (``utils.checkpoint.remove_stale_temporaries`` finds those by this name).
"""
from __future__ import annotations

import os
from typing import BinaryIO, Callable


def temporary_name(path: str) -> str:
    return f"{path}.tmp.{os.getpid()}"


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary beside ``path``, then replace ``path`` with it; no temporary is left."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
