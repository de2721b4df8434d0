"""Error types shown to users as one clear line (file/key and the fix)."""


class ArcFaceError(Exception):
    """Base of every error the toolkit raises on bad input."""

    exit_code = 1       # a command-line tool's exit status (utils.cli.run_tool): one number per class


class ConfigError(ArcFaceError, ValueError):
    """A config key or command-line flag is unknown, mistyped or inconsistent."""

    exit_code = 2       # argparse's usage errors exit 2 too: both are fixed on the command line


class DataError(ArcFaceError, ValueError):
    """A data file is missing, corrupt, or disagrees with the config."""

    exit_code = 4       # 3 is train_v2's "stopped, resume it"


class CheckpointError(ArcFaceError, OSError):
    """A checkpoint or model file cannot be read or written (full disk, read-only folder)."""

    exit_code = 5


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
