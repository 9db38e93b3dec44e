"""The progress bar's rate and ETA: those of the last 30 seconds, measured up to the moment of drawing."""
from __future__ import annotations

from rich.progress import Progress

from sections.cli.progress_bars import RATE_WINDOW_S, RecentRate, eta


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run(rate: RecentRate, clock: Clock, done: float, per_second: float, seconds: int) -> float:
    for _ in range(seconds):
        clock.now += 1
        done += per_second
        rate.add(done)
    return done


def test_the_rate_follows_the_last_window_not_the_whole_run():
    clock = Clock()
    rate = RecentRate(clock=clock)
    rate.add(0)
    done = _run(rate, clock, 0, 100, 120)  # two minutes at 100/s ...
    assert rate.per_second() == 100
    done = _run(rate, clock, done, 10, 15)  # ... then rate-limited to 10/s: half the window in
    assert 50 < rate.per_second() < 60
    _run(rate, clock, done, 10, int(RATE_WINDOW_S))  # a whole window later only the new rate counts
    assert rate.per_second() == 10  # the run's average (~70/s) would promise an ETA 7x too soon


def test_a_stall_shows_while_nothing_arrives():
    clock = Clock()
    rate = RecentRate(clock=clock)
    rate.add(0)
    _run(rate, clock, 0, 50, 10)
    clock.now += 10  # ten seconds without an answer: drawn now, the rate has already halved
    assert rate.per_second() == 25
    clock.now += RATE_WINDOW_S  # nothing for a whole window: no rate, no ETA
    assert rate.per_second() == 0


def test_eta_is_the_remaining_work_at_the_recent_rate():
    with Progress() as bar:
        task_id = bar.add_task("ingest", total=1000)
        bar.update(task_id, completed=400)
        task = bar.tasks[0]
        assert eta(task, 20.0) == "0:00:30"
        assert eta(task, None) == eta(task, 0.0) == "-:--:--"
        bar.update(task_id, total=1200)  # chunking grew the total: the estimate is not reset
        assert eta(bar.tasks[0], 20.0) == "0:00:40"
        bar.update(task_id, completed=1200)
        assert eta(bar.tasks[0], None) == "0:00:00"
