"""Shared by the CLI tests: running the real `offmarl` entry point inside the test process, one
torch thread, and the settings of a tiny IBC run (seconds on the coordination game)."""
from __future__ import annotations

import sys

TINY_IBC = ["--set", "hidden=[16,16]", "--set", "batch_size=32", "--set", "loop.eval_every=10",
            "--set", "loop.eval_episodes=2", "--set", "loop.final_eval_episodes=2", "--set", "loop.log_every=5",
            "--set", "loop.checkpoint_every=10"]



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
