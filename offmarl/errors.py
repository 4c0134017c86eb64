"""User-facing errors: the CLI prints these as one clear message (no traceback) and exits 2
(EXIT_USAGE), or 3 (EXIT_DIVERGED) for a run stopped by non-finite numbers."""

EXIT_USAGE = 2       # the user's input (file, key, option, name) is at fault
EXIT_DIVERGED = 3    # training produced NaN/inf: not bad input, but the run cannot go on


class OffmarlError(ValueError):
    """Base class of every error that is the user's input to fix (file, key, option, name)."""


class DivergedError(OffmarlError):
    """Training produced a non-finite loss or parameter; the message names the metric and step
    and the last good checkpoint (which is kept)."""
