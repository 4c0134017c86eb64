"""The training progress bar: a rich bar fed by the loop's ``Progress`` hooks (offmarl/loop.py)."""
from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from offmarl.cli.common import console


class RichProgress:
    """Bar with the step count, the latest evaluation score, elapsed and remaining time."""

    def __init__(self):
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[score]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, transient=False)
        self.task = None

    def start(self, name: str, total: int, completed: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task(name, total=total, completed=completed, score="score -")

    def update(self, step: int, score: float | None) -> None:
        self.bar.update(self.task, completed=step, score="score -" if score is None else f"score {score:.3f}")

    def close(self) -> None:
        self.bar.stop()
