"""The progress bars a run draws on the terminal: the sections' bar, whose rate and ETA are those
of the last half minute, and the index builds' bars.

Apart from ``sections.cli.console`` (summaries, errors) because a bar is a live display with its own
clock: what it shows is computed when it is drawn, not only when the run reports.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from math import ceil
from typing import Any

from rich.console import Console
from rich.table import Column
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

__all__ = ["RATE_WINDOW_S", "IndexBars", "RecentRate", "eta", "progress_bar"]

RATE_WINDOW_S = 30.0  # the bar's rate and ETA are those of the last 30 seconds


class RecentRate:
    """Sections per second over the last ``window`` seconds, asked when the bar is drawn.

    Rich's own estimate (``TimeRemainingColumn``) drops all its samples whenever the total
    changes, which chunking does as the run reads on, and it divides by the time between updates,
    not up to now, so a run that stalls keeps its old ETA. This one keeps the samples of the
    window (and the last one before it, so a stall longer than the window reads as 0, no ETA)
    and measures up to the moment of drawing: a rate-limited stretch or a stall shows at once.
    """

    def __init__(self, window: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self.window, self.clock = window, clock
        self._samples: deque[tuple[float, float]] = deque()  # (time, sections done)
        self._lock = threading.Lock()

    def add(self, done: float) -> None:
        now = self.clock()
        with self._lock:
            self._samples.append((now, done))
            self._prune(now)

    def per_second(self) -> float | None:
        """None until there are two moments to compare."""
        now = self.clock()
        with self._lock:
            self._prune(now)
            if not self._samples:
                return None
            (first_time, first_done), (_, last_done) = self._samples[0], self._samples[-1]
        return (last_done - first_done) / (now - first_time) if now > first_time else None

    def _prune(self, now: float) -> None:
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()


class DrawnColumn(ProgressColumn):
    """A column computed each time the bar is drawn (ten times a second), not only on updates."""

    def __init__(self, text: Callable[[Task], str], style: str = ""):
        super().__init__(table_column=Column(no_wrap=True))  # a narrow terminal shortens the bar, not this
        self.text, self.style = text, style

    def render(self, task: Task) -> Text:
        return Text(self.text(task), style=self.style)


def eta(task: Task, rate: float | None) -> str:
    if task.finished:
        return "0:00:00"
    if not rate or task.remaining is None:
        return "-:--:--"
    return str(timedelta(seconds=ceil(task.remaining / rate)))


def progress_bar(quiet: bool, rate: RecentRate, console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        DrawnColumn(lambda task: f"{rate.per_second() or 0.0:>7.1f} sections/s"),
        TextColumn("{task.fields[tokens]:>10,} tokens"), TimeElapsedColumn(), TextColumn("ETA"),
        DrawnColumn(lambda task: eta(task, rate.per_second()), style="progress.remaining"),
        console=console, disable=quiet, transient=False,
    )


class IndexBars:
    """The progress of index builds (``IndexProgress`` events, from any thread): one bar per index,
    shown from the first event, so a run that builds nothing shows nothing. ``before`` runs first:
    an ingest's own bar stops there (one live display at a time)."""

    def __init__(self, quiet: bool, console: Console):
        self.quiet, self.console = quiet, console
        self.before: Callable[[], None] | None = None
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, event: Any) -> None:
        if self.bar is None:
            if self.before is not None:
                self.before()
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[phase]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), console=self.console, disable=self.quiet)
            self.bar.start()
        if event.name not in self.tasks:
            self.tasks[event.name] = self.bar.add_task(f"index {event.dimensions:,} dims", total=event.total,
                                                       phase=event.phase)
        self.bar.update(self.tasks[event.name], completed=event.done, phase=event.phase)

    def __enter__(self) -> IndexBars:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
