"""Fixtures that start the OpenAI-compatible simulator (sections.simulator.server) for tests.

One simulator process serves the whole session: starting one costs a few hundred milliseconds,
and its live config can be changed per test. ``sim`` hands a test that process with default
settings and zeroed stats; ``make_simulator`` is for the rare test that needs a process of its
own (for instance to check the command-line flags).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sections.simulator.server import SimulatorConfig, SimulatorProcess

__all__ = ["simulator", "sim", "make_simulator"]


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess() as process:
        yield process


@pytest.fixture
def sim(simulator: SimulatorProcess) -> SimulatorProcess:
    """The session's simulator, back to default settings and zeroed stats, whatever earlier tests did."""
    simulator.configure(**dataclasses.asdict(SimulatorConfig()))
    simulator.reset()
    return simulator


@pytest.fixture
def make_simulator() -> Iterator[Callable[..., SimulatorProcess]]:
    """Start private simulators with the given config fields; all are stopped after the test."""
    started: list[SimulatorProcess] = []

    def make(**overrides: Any) -> SimulatorProcess:
        process = SimulatorProcess(**overrides)
        started.append(process)
        return process.start()

    yield make
    for process in started:
        process.stop()
