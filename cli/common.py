"""Shared CLI pieces: the consoles."""
from __future__ import annotations

import sys

from rich.console import Console

# Rich falls back to 80 columns when output is piped; tables of dims read better wider.
_width = None if sys.stdout.isatty() else 160
console = Console(width=_width)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
