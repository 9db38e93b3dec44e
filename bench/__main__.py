"""Run the benchmarks: ``python -m bench`` runs every scenario; ``python -m bench w1 write`` some.

Writes ``bench/results.md`` (the tables), ``bench/results.png`` (the plot) and
``bench/results.json`` (what both are drawn from), and rewrites the results block of
docs/benchmarks.md and the README's headline figures (bench/pages.py), so no number is ever typed
by hand. Running some scenarios replaces only theirs; each table keeps the machine, versions and
date of the run that made it. ``--quick`` runs tiny sizes (a smoke test of the harness, written to
a temporary folder, never to the pages).

Before a scenario's results replace the stored ones, its ratios (``Result.metrics``, e.g. W1's
ours ÷ the bare-pool floor) are compared with theirs: one more than 10% worse is called out in
the output (``bench/guard.py``).

Peers come from the ``bench`` extra: ``pip install -e '.[bench]'``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import tempfile
import time
from pathlib import Path

from bench import correctness, local, pages, ray_engine, retrieval, scale, search, startup, w1, w2, workers, write
from bench.guard import regressions
from bench.players import require_peers
from bench.plot import draw
from bench.report import (
    LOCAL_PACKAGES,
    PACKAGES,
    PEER_PACKAGES,
    Result,
    machine,
    versions,
)

SCENARIOS = {"w1": w1, "w2": w2, "correctness": correctness, "write": write, "local": local, "scale": scale,
             "ray": ray_engine, "retrieval": retrieval, "search": search, "workers": workers, "startup": startup}
# What a scenario runs on beyond the common packages, so its table names their versions.
EXTRA_PACKAGES = {"local": LOCAL_PACKAGES, "ray": LOCAL_PACKAGES + ("ray",), "retrieval": retrieval.PACKAGES, "startup": LOCAL_PACKAGES}
ROOT = Path(__file__).resolve().parent.parent


def stamp(result: Result, seconds: float) -> dict:
    packages = PACKAGES + PEER_PACKAGES + EXTRA_PACKAGES.get(result.key, ())
    entry = dataclasses.asdict(result)
    entry["environment"] = (f"Ran {datetime.date.today().isoformat()} in {seconds:.0f} s on {machine()}. "
                            f"Packages: {versions(packages)}.")
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, proves nothing")
    parser.add_argument("--out", type=Path, help="folder for results.* (default: bench/, or a temporary one with --quick)")
    parser.add_argument("--redraw", action="store_true",
                        help="run nothing: redraw the plot, the tables and the pages from results.json")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.redraw and (args.scenarios or args.quick):
        parser.error("--redraw runs no scenario")
    if not args.redraw:
        require_peers()
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-quick-")) if args.quick else ROOT / "bench")
    store = out / "results.json"
    if args.redraw and not store.exists():
        parser.error(f"--redraw: no {store} to redraw from")
    out.mkdir(parents=True, exist_ok=True)
    entries = json.loads(store.read_text()) if store.exists() else {}
    for key in [] if args.redraw else args.scenarios or list(SCENARIOS):
        print(f"running {key} …", flush=True)
        started = time.perf_counter()
        committed = entries.get(key, {}).get("metrics", {})
        result = SCENARIOS[key].run(quick=args.quick)
        entries[key] = stamp(result, time.perf_counter() - started)
        print(result.markdown() + "\n", flush=True)
        if not args.quick:  # tiny sizes are no measure of anything the committed results hold
            for regression in regressions(key, committed, result.metrics):
                print(f"*** {regression} ***\n", flush=True)
        store.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    results = [pages.as_result(entries[key]) for key in SCENARIOS if key in entries]
    draw(results, out / "results.png")
    block = pages.tables(entries, list(SCENARIOS), "results.png")
    (out / "results.md").write_text("# Benchmark results (`python -m bench`)\n\n" + block, encoding="utf-8")
    if not args.quick and out.resolve() == ROOT / "bench":
        pages.rewrite(entries, list(SCENARIOS))
    print(f"wrote {out / 'results.md'} and {out / 'results.png'}")


if __name__ == "__main__":
    main()
