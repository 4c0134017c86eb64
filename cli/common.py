"""Shared CLI pieces: the consoles.

``soft_wrap=True``: printed text is never broken into lines by rich, so a path or a command (the
resume line after Ctrl-C, the file written by ``datasets generate``) stays on one line for
copy-paste, on a terminal and in a pipe alike; tables still fit the width.
"""
from __future__ import annotations

import sys

from rich.console import Console

# Rich falls back to 80 columns when output is piped; tables of dims read better wider.
_width = None if sys.stdout.isatty() else 160
console = Console(width=_width, soft_wrap=True)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160, soft_wrap=True)
