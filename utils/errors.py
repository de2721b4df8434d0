"""Error types shown to users as one clear line (file/key and the fix)."""


class ArcFaceError(Exception):
    """Base of every error the toolkit raises on bad input."""


class ConfigError(ArcFaceError, ValueError):
    """A config key is unknown, mistyped or inconsistent."""


class DataError(ArcFaceError, ValueError):
    """A data file is missing, corrupt, or disagrees with the config."""
