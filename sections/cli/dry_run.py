"""The dry runs of ``ingest`` and ``sync``: what a run would embed, cost (at the synchronous and the
Batch API price) and prune, from the stored fingerprints and exact token counts; nothing is sent
and nothing deleted.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import islice
from typing import Any, Optional

from sections.cli.console import Reading, out, print_table
from sections.engine.usage import estimate_cost_usd

__all__ = ["dry_run_report", "sync_dry_run"]


def dry_run_report(store, sections: Iterable[Any], reading: Reading, service, json_out: bool, collection: str,
                   scope, verbose: bool) -> None:
    """What an ingest would embed, cost and prune, from the stored fingerprints and exact token counts."""
    from sections.fingerprint import split_current
    from sections.pipeline.prune import prune_unseen

    unchanged = to_embed = tokens = 0
    seen: set[str] = set()
    stream = iter(sections)
    while batch := list(islice(stream, 1000)):
        split = split_current(batch, service.settings, store.stored_hashes(service.model, [s.id for s in batch]))
        unchanged += split.unchanged
        to_embed += len(split.due)
        tokens += sum(service.tokenizer.count(due.text) for due in split.due)
        seen.update(section.id for section in batch)
    report: dict[str, Any] = {
        "model": service.model, "collection": collection, "read": reading.read, "chunks": reading.stored,
        "invalid": reading.invalid, "unchanged": unchanged, "would_embed": to_embed, "tokens": tokens,
        "estimated_cost_usd": round(estimate_cost_usd(service.model, tokens), 6),
        "estimated_batch_cost_usd": round(estimate_cost_usd(service.model, tokens, batch=True), 6)}
    doomed = prune_unseen(store.backend, scope, seen, dry_run=True).ids if scope is not None else None
    if doomed is not None:
        report["would_prune"] = len(doomed)
    if json_out:
        out.print_json(json.dumps({**report, **({"prune_ids": doomed} if doomed is not None else {})}))
        return
    print_table(f"dry run ({service.model}, collection {collection}): nothing sent, nothing deleted",
                {key.replace("_", " "): f"${value:.4f}" if key.endswith("cost_usd") else f"{value:,}"
                 for key, value in report.items() if key not in ("model", "collection")})
    shown = doomed if verbose else (doomed or [])[:20]
    for section_id in shown or []:
        out.print(f"  would prune: {section_id}", markup=False)
    if doomed and len(doomed) > len(shown or []):
        out.print(f"  … and {len(doomed) - len(shown or []):,} more (--verbose lists them all)", markup=False)


def sync_dry_run(store, service, collection: Optional[str], json_out: bool) -> None:
    """What a sync would embed now and its cost: the due sections, their exact token counts."""
    from sections.fingerprint import section_text

    count = tokens = 0
    first: list[str] = []
    for section in store.due_sections(service.settings, collection):
        count += 1
        tokens += service.tokenizer.count(section_text(section.title, section.content))
        if len(first) < 20:
            first.append(section.id)
    report = {"model": service.model, "collection": collection, "would_embed": count, "tokens": tokens,
              "estimated_cost_usd": round(estimate_cost_usd(service.model, tokens), 6),
              "estimated_batch_cost_usd": round(estimate_cost_usd(service.model, tokens, batch=True), 6)}
    if json_out:
        out.print_json(json.dumps(report))
        return
    where = "every collection" if collection is None else f"collection {collection}"
    print_table(f"sync dry run ({service.model}, {where}): nothing sent",
                {"would embed": f"{count:,}", "tokens": f"{tokens:,}",
                 "estimated cost": f"${report['estimated_cost_usd']:.4f}",
                 "estimated cost with --batch-api": f"${report['estimated_batch_cost_usd']:.4f}"})
    for section_id in first:
        out.print(f"  due: {section_id}", markup=False)
    if count > len(first):
        out.print(f"  … and {count - len(first):,} more", markup=False)
