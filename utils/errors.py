"""Error types shown to users as one clear line (file/key and the fix)."""


class ArcFaceError(Exception):
    """Base of every error the toolkit raises on bad input."""


class ConfigError(ArcFaceError, ValueError):
    """A config key is unknown, mistyped or inconsistent."""


class DataError(ArcFaceError, ValueError):
    """A data file is missing, corrupt, or disagrees with the config."""


class CheckpointError(ArcFaceError, OSError):
    """A checkpoint or model file cannot be read or written (full disk, read-only folder)."""


class EnvironmentVersionError(ArcFaceError, RuntimeError):
    """An installed package is older than the toolkit supports."""


MIN_TORCH = (2, 4)   # torch.amp.is_autocast_available, onnx.export(dynamo=...); suite run on 2.5.1 .. 2.14.1


def require_torch(version: str | None = None) -> None:
    """Raise a one-line error when torch (or `version`) is older than MIN_TORCH."""
    if version is None:
        import torch
        version = torch.__version__
    numbers = []
    for part in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    if tuple(numbers) < MIN_TORCH:
        wanted = ".".join(map(str, MIN_TORCH))
        raise EnvironmentVersionError(
            f"torch {version} is older than {wanted}, the oldest this toolkit supports: "
            f"pip install -r requirement.txt (or torch>={wanted} with its matching torchvision)")
