"""W2: 5,000 sections under a tokens-per-minute limit: how close to the limit each player runs.

The simulator enforces 6M tokens per minute with a 1M-token bucket (it starts full) and sends
OpenAI's ``x-ratelimit-*`` headers and ``retry-after`` on 429s. Ideal time, the same for every
player: the bucket at once, then tpm/60 tokens a second, plus the reply to one last section.
Efficiency = ideal ÷ actual. Target: ours ≥ 0.95.
"""
from __future__ import annotations

from bench import players as P
from bench.report import Result, median, spread
from sections.reading.sample_corpus import stdlib_sections
from sections.simulator.server import SimulatorProcess
from sections.fingerprint import section_text

TARGET = 0.95


def ideal_seconds(tokens: int, sections: int, settings: dict) -> float:
    refill = max(0, tokens - settings["tpm_burst"]) / (settings["tpm"] / 60)
    return refill + settings["latency_base"] + settings["latency_per_token"] * tokens / sections


def run(quick: bool = False) -> Result:
    count, repeats = (400, 1) if quick else (5000, 3)
    settings = {"latency_base": 0.2, "latency_per_token": 5e-6, "tpm": 6_000_000, "tpm_burst": 1_000_000}
    if quick:
        settings.update(tpm=3_000_000, tpm_burst=60_000)
    sections = stdlib_sections(count)
    texts = [section_text(s["title"], s["content"]) for s in sections]
    players = [*P.PEERS, P.OURS]
    runs: dict[str, list[dict]] = {p.name: [] for p in players}
    with SimulatorProcess(**settings) as sim:
        for _ in range(repeats):
            for player in players:
                sim.reset()  # a full bucket and fresh counters for each player
                result, score = P.scored(player, sim.base_url, texts)
                stats = sim.stats()
                runs[player.name].append({
                    "seconds": result.seconds, "score": score, "error": result.error,
                    "ideal": ideal_seconds(stats["tokens"], count, settings),
                    "rate_limited": stats["rate_limited"], "ok_requests": stats["by_status"].get("200", 0),
                })
    rows, plot = [], {}
    for player in players:
        results = runs[player.name]
        seconds = [r["seconds"] for r in results]
        efficiency = [r["ideal"] / r["seconds"] for r in results if r["error"] is None]
        failed = sum(r["score"].failed + r["score"].lost for r in results)
        rows.append([
            player.name, f"{median(seconds):.2f}", spread(seconds, 2), f"{median([r['ideal'] for r in results]):.2f}",
            f"{median(efficiency):.3f}" if efficiency else "-", spread(efficiency),
            f"{median([r['rate_limited'] for r in results]):.0f}", f"{median([r['ok_requests'] for r in results]):.0f}",
            failed, sum(r["score"].wrong for r in results),
            next((r["error"] for r in results if r["error"]), player.note),
        ])
        plot[player.name if efficiency else f"{player.name} (failed)"] = median(seconds)
    ours = [r["ideal"] / r["seconds"] for r in runs[P.OURS.name]]
    verdict = f"Ours runs at {median(ours):.3f} of the ideal: target ≥ {TARGET} {'met' if median(ours) >= TARGET else 'NOT met'}."
    return Result(
        key="w2",
        title=f"W2: {count:,} sections under a {settings['tpm']:,} tokens-per-minute limit",
        conditions=(f"Simulator: {settings} (the bucket starts full and is refilled for each run). Median of "
                    f"{repeats} interleaved repeats; failed and wrong are summed over all repeats."),
        header=["player", "seconds", "spread", "ideal seconds", "efficiency (ideal/actual)", "efficiency spread",
                "429s received", "successful requests", "failed or lost", "wrong vectors", "note"],
        rows=rows, verdict=verdict, plot={"seconds": plot},
    )
