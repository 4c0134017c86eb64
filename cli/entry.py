"""The `offmarl` console script. `offmarl --version` is answered here, before typer, rich and the
command modules are imported (the whole CLI costs ~0.4 s of imports on a loaded 2-core CPU);
everything else goes to offmarl.cli.main."""
from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from offmarl import __version__  # the package's __init__ only: no torch, no typer

        print(f"offmarl {__version__}")
        return
    from offmarl.cli.main import main as run_cli  # the full CLI, only when a command runs

    run_cli()


if __name__ == "__main__":
    main()
