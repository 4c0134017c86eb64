"""Training progress for the loop's ``Progress`` hooks (offmarl/loop.py): a rich bar on a terminal,
plain periodic lines when the output goes to a file or a pipe (where a bar shows nothing until
the run ends)."""
from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from offmarl.cli.common import console


def make_progress():
    """The bar on a terminal, plain lines otherwise."""
    return RichProgress() if console.is_terminal else PlainProgress()


class RichProgress:
    """Bar with the step count, the latest evaluation score, elapsed and remaining time. The run's
    name is printed once above it (``run directory: ...``), not in the bar, so that the columns
    fit in 80 columns."""

    def __init__(self):
        self.bar = Progress(TextColumn("train"), BarColumn(bar_width=None), MofNCompleteColumn(),
                            TextColumn("{task.fields[score]}"), TimeElapsedColumn(), TextColumn("eta"),
                            TimeRemainingColumn(), console=console, transient=False, expand=False)
        self.task = None

    def start(self, name: str, total: int, completed: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task(name, total=total, completed=completed, score="score -")

    def update(self, step: int, score: float | None) -> None:
        self.bar.update(self.task, completed=step, score="score -" if score is None else f"score {score:.3f}")

    def close(self) -> None:
        self.bar.stop()


class PlainProgress:
    """``step 1000/2000  score 0.412  412 steps/s  elapsed 0:00:05  eta 0:00:05`` (``5.2 s/step`` when
    a step takes longer than a second) at the start, then at most every ``every_s`` seconds, and at
    the end."""

    def __init__(self, every_s: float = 30.0):
        self.every_s = every_s

    def start(self, name: str, total: int, completed: int) -> None:
        self.total, self.first, self.step, self.score = total, completed, completed, None
        self.t0 = self.last = time.perf_counter()
        self._line()

    def update(self, step: int, score: float | None) -> None:
        self.step, self.score = step, score
        if time.perf_counter() - self.last >= self.every_s:
            self._line()

    def close(self) -> None:
        self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        self.last = now
        rate = (self.step - self.first) / max(now - self.t0, 1e-9)
        eta = _clock((self.total - self.step) / rate) if rate > 0 else "-"
        score = "-" if self.score is None else f"{self.score:.3f}"
        console.print(f"step {self.step}/{self.total}  score {score}  {_rate(rate)}  "
                      f"elapsed {_clock(now - self.t0)}  eta {eta}", highlight=False)


def _rate(per_s: float, unit: str = "step") -> str:
    """``412 steps/s``, or ``5.2 s/step`` below one a second (a MOMA-PPO iteration takes seconds:
    "0 steps/s" said nothing); ``- steps/s`` before the first one."""
    if per_s <= 0:
        return f"- {unit}s/s"
    if per_s < 1:
        return f"{1 / per_s:.1f} s/{unit}"
    return f"{per_s:.0f} {unit}s/s"


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
