"""The regression guard: a scenario's ratios against the ones in the committed results.

A scenario may report ``Result.metrics``: ratios of ours to a reference measured side by side in
the same run (W1: ours ÷ the bare thread pool), so that they hold on a busy or slow machine where
seconds do not. Lower is better. A ratio more than ``TOLERANCE`` above the committed one is called
out in the benchmark's output; nothing fails, since timings are not tests.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TOLERANCE = 0.10  # a ratio may grow this much (as a fraction) before it is called a regression


@dataclass(frozen=True)
class Regression:
    scenario: str
    metric: str
    committed: float
    measured: float

    def __str__(self) -> str:
        growth = self.measured / self.committed - 1
        return (f"REGRESSION in {self.scenario}: {self.metric} is {self.measured:.3f}, "
                f"{growth:+.0%} against {self.committed:.3f} in the committed results "
                f"(more than the {TOLERANCE:.0%} allowed)")


def regressions(scenario: str, committed: Mapping[str, float], measured: Mapping[str, float],
                tolerance: float = TOLERANCE) -> list[Regression]:
    """The ratios in ``measured`` more than ``tolerance`` above their ``committed`` value.

    A ratio the committed results lack (a new metric, an older results file) has nothing to be
    compared with and is not called out.
    """
    return [Regression(scenario, name, committed[name], value) for name, value in measured.items()
            if committed.get(name, 0) > 0 and value > committed[name] * (1 + tolerance)]
