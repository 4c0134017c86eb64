"""User-facing errors: the CLI prints these as one clear message (no traceback) and exits 2."""


class OffmarlError(ValueError):
    """Base class of every error that is the user's input to fix (file, key, option, name)."""
