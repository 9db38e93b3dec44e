"""Correctness: replies out of order and 2% of requests answered with a 5xx.

The simulator shuffles the items of every reply (each keeps its ``index``, as the API allows) and
answers 2% of requests with a 500. Every vector a player returns is checked against the
simulator's deterministic vector for the text it sent: *wrong* is a vector stored against the
wrong text (silent corruption), *failed* a text the player reported it could not embed, *lost* a
text that got neither (silently missing).
"""
from __future__ import annotations

import tempfile

from bench import players as P
from bench.report import Result, median, spread
from sections.postgres.embedded import EmbeddedPostgres
from sections.reading.sample_corpus import stdlib_sections
from sections.simulator.server import SimulatorProcess
from sections.fingerprint import section_text

SETTINGS = {"shuffle": True, "error_rate": 0.02, "latency_base": 0.01, "seed": 7}


def run(quick: bool = False) -> Result:
    count, repeats = (100, 1) if quick else (1000, 3)
    sections = stdlib_sections(count)
    texts = [section_text(s["title"], s["content"]) for s in sections]
    players = [P.ONE_PER_SECTION, P.LEGACY, *P.PEERS, *P.SWAPPED, P.OURS]
    tally = P.Tally()
    with SimulatorProcess(**SETTINGS) as sim, tempfile.TemporaryDirectory() as data, EmbeddedPostgres(data) as pg:
        for repeat in range(repeats):
            outcomes = [(player.name, *P.scored(player, sim.base_url, texts)) for player in players]
            url = P.fresh_database(pg, f"correctness_{repeat}")
            outcomes.append((P.END_TO_END, *P.ingest_end_to_end(sim.base_url, sections, url)))
            for name, result, score in outcomes:
                tally.add(name, result.seconds, score, result.error)
        served = sim.stats()
    times, scores, errors = tally.times, tally.scores, tally.notes
    total = count * repeats
    rows, plot = [], {}
    for name, values in times.items():
        s = scores[name]
        rows.append([name, s.wrong, s.failed, s.lost, total - s.wrong - s.failed - s.lost, f"{median(values):.2f}",
                     spread(values, 2), errors.get(name, "")])
        plot[name] = s.wrong + s.failed + s.lost
    clean = scores[P.OURS.name].wrong + scores[P.END_TO_END].wrong + scores[P.OURS.name].lost + scores[P.END_TO_END].lost
    verdict = (f"Ours: {'no' if clean == 0 else clean} wrong or lost vectors. The simulator answered "
               f"{served['by_status'].get('500', 0)} requests with a 500 in all.")
    return Result(
        key="correctness",
        title=f"Correctness: {count:,} sections, shuffled replies, 2% of requests fail with a 5xx",
        conditions=(f"Simulator: {SETTINGS}. {repeats} interleaved repeats; counts are summed over all of them "
                    f"({total:,} texts per player)."),
        header=["player", "wrong", "failed (reported)", "lost (silently)", "right", "seconds", "spread", "error"],
        rows=rows, verdict=verdict, plot={"wrong + failed + lost vectors": plot},
    )
