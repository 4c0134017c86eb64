"""The CLI respects the user's time and speaks one error style (issue 14, defects 6 and 8)."""
from __future__ import annotations

import os
import subprocess
import sys

from cli_helpers import run_cli

PROBE = """
import sys
sys.argv = ["offmarl", *{args!r}]
from offmarl.cli.entry import main
try:
    main()
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "numpy", "jax", "h5py", "rich.progress") if m in sys.modules)
print("HEAVY", ",".join(heavy))
"""


def _heavy_imports(*args) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args))], capture_output=True, text=True,
                         env=dict(os.environ, OFFMARL_NUM_THREADS="1"), check=True).stdout
    line = [x for x in out.splitlines() if x.startswith("HEAVY")][-1]
    return [m for m in line.split(" ", 1)[1].split(",") if m]


def test_version_imports_nothing_heavy():
    """`offmarl --help` took ~3 s under OFFMARL_NUM_THREADS=1: torch was imported for every command."""
    assert _heavy_imports("--version") == []


def test_help_imports_nothing_heavy():
    for args in (["--help"], ["train", "--help"], ["datasets", "--help"], ["envs", "--help"]):
        assert _heavy_imports(*args) == [], args


def test_thread_setting_reaches_torch():
    code = ("import os, sys; sys.argv = ['offmarl', '--help']\n"
            "from offmarl.cli.main import _apply_thread_setting; _apply_thread_setting()\n"
            "import torch; print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
                         | {"OFFMARL_NUM_THREADS": "1"}).stdout
    assert out.strip() == "1"


def test_typer_range_errors_use_the_same_one_line_style(capsys):
    code, out = run_cli(capsys, "train", "--dataset", "x", "--steps", "0")
    assert code == 2 and out.startswith("error:") and "--steps" in out and len(out.strip().splitlines()) == 1
    code, out = run_cli(capsys, "evaluate", "somewhere", "--episodes", "0")
    assert code == 2 and out.startswith("error:") and "--episodes" in out


def test_bad_thread_setting_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("OFFMARL_NUM_THREADS", "two")
    code, out = run_cli(capsys, "datasets", "list")
    assert code == 2 and out.startswith("error: OFFMARL_NUM_THREADS='two'")


def test_help_is_plain_text_with_readable_metavars(capsys):
    """Help texts broke mid-sentence (rich kept the docstrings' line breaks). (typer 0.29 still adds
    its type labels such as `<list[Path]>` after each name; the argument's name is now RUN_DIR...)"""
    code, out = run_cli(capsys, "evaluate", "--help")
    assert code == 0
    assert "RUN_DIR..." in out and "╭" not in out
    code, out = run_cli(capsys, "datasets", "info", "--help")
    # click re-flows each paragraph: the docstring's own line break after "coverage and" is gone
    assert "coverage and\n" not in out


def test_warnings_print_as_one_line():
    code = ("import sys, warnings; sys.argv = ['offmarl', '--help']\n"
            "from offmarl.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "warnings.warn('the sky is falling')\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err.strip() == "warning: the sky is falling (UserWarning)"


def test_plain_progress_reads_seconds_per_step_below_one_step_per_second(monkeypatch, capsys):
    """Without a terminal, a slow loop (a MOMA-PPO iteration takes seconds) reads '4.0 s/step',
    not '0 steps/s'; a fast one keeps steps/s. A fake clock: no dependence on real time."""
    from offmarl.cli import progress

    clock = iter([100.0, 100.0, 108.0, 108.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    p = progress.PlainProgress(every_s=1.0)
    p.start("run", 10, 0)
    p.update(2, 0.5)  # 2 steps in 8 s
    out = capsys.readouterr().out
    assert "4.0 s/step" in out and "0 steps/s" not in out, out
    assert progress._rate(412.3) == "412 steps/s"
