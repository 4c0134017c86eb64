"""Running the real `offmarl` entry point inside the test process (shared by the CLI tests)."""
from __future__ import annotations

import sys


def run_cli(capsys, *args) -> tuple[int, str]:
    """Run `offmarl ARGS` in this process; returns (exit code, stdout + stderr)."""
    from offmarl.cli.main import main

    old = sys.argv
    sys.argv = ["offmarl", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out + out.err
