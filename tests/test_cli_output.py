"""What the CLI prints without a terminal: no wrapped paths or commands, readable rates."""
from __future__ import annotations

from offmarl.cli.common import console
from offmarl.cli.progress import _rate


def test_long_lines_are_not_wrapped(capsys):
    """The resume command after Ctrl-C and the file after `datasets generate` stay on one line."""
    line = "continue with: offmarl train --resume " + "runs/" + "x" * 300
    console.print(line)
    assert capsys.readouterr().out == line + "\n"


def test_rate_below_one_step_per_second_reads_as_seconds_per_step():
    assert _rate(412.3) == "412 steps/s"
    assert _rate(0.2) == "5.0 s/step"
    assert _rate(0.0) == "- steps/s"


def test_usage_lines_name_arguments_plainly(capsys):
    from cli_helpers import run_cli

    for cmd, usage in ((["evaluate"], "offmarl evaluate [OPTIONS] RUN_DIR..."),
                       (["report"], "offmarl report [OPTIONS] DIRS..."),
                       (["envs", "info"], "offmarl envs info [OPTIONS] NAME")):
        code, out = run_cli(capsys, *cmd, "--help")
        assert code == 0 and f"Usage: {usage}\n" in out, out[:300]
        assert "{" not in out.splitlines()[0]
