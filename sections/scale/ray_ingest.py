"""The ingest on Ray: ``ray_ingest`` (a Ray Dataset or any iterable of sections) and ``ray_runtime``.

``ray_runtime(address)`` joins a running cluster (``ray://…`` or ``host:port``, or ``auto``) or,
with no address, starts a local Ray on this machine's cores, and shuts it down afterwards. The run
passes ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` to a cluster's workers through its runtime
environment; a local Ray's workers inherit this process's environment.

``ray_ingest`` is ``SupabaseStore.ingest`` with a ``RayEmbedder``: everything but the embedding
runs in this process (``sections.scale.ray_embedder`` says why), so the summary, the fingerprints,
the leases and the exactly-once writes are the one-process ingest's own.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from sections.pipeline.tally import ProgressCallback
from sections.records import DEFAULT_COLLECTION, IngestSummary
from sections.scale.actor import ServiceSpec
from sections.scale.ray_embedder import RayEmbedder, RayOptions
from sections.store.supabase_store import SupabaseStore

__all__ = ["ray_ingest", "ray_runtime", "rows_of"]

PASSED_TO_WORKERS = ("OPENAI_API_KEY", "OPENAI_BASE_URL")


@contextmanager
def ray_runtime(address: str | None = None) -> Iterator[None]:
    """Ray started (no ``address``) or joined for the block, quietly: no dashboard, no progress bars,
    the workers' logs kept out of this process's output."""
    import ray
    import ray.data

    if ray.is_initialized():  # a caller's own session: use it, leave it running
        yield
        return
    env = {name: os.environ[name] for name in PASSED_TO_WORKERS if name in os.environ}
    # A local Ray's workers run at the command's priority, not Ray's default nice 15: on a machine
    # shared with other work they would get a fraction of the cores one process gets.
    local = {} if address else {"_system_config": {"worker_niceness": 0}}
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             configure_logging=True, runtime_env={"env_vars": env} if address and env else None, **local)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def rows_of(sections: Any) -> Iterable[Any]:
    """A Ray Dataset's rows (read as this run consumes them) or the iterable as given."""
    iter_rows = getattr(sections, "iter_rows", None)
    return iter_rows() if callable(iter_rows) and hasattr(sections, "map_batches") else sections  # type: ignore[no-any-return]


def ray_ingest(store: SupabaseStore, sections: Any, spec: ServiceSpec, options: RayOptions | None = None, *,
               address: str | None = None, share_budget: bool = True, collection: str = DEFAULT_COLLECTION,
               build_index: bool | None = None, on_progress: ProgressCallback | None = None) -> IngestSummary:
    """Store ``sections`` (a ``ray.data.Dataset`` of section rows, or any iterable of sections) in
    ``collection`` and embed the due ones on Ray actors built from ``spec``; the summary is
    ``SupabaseStore.ingest``'s. ``share_budget``: actors of an OpenAI-compatible model draw on the
    rate budget every worker of this database shares. Starts or joins Ray unless it is running."""
    if share_budget and spec.budget_url is None:
        spec = replace(spec, budget_url=store.database.url)
    with ray_runtime(address):
        embedder = RayEmbedder(spec, options)
        return store.ingest(rows_of(sections), embedder, collection=collection, build_index=build_index,
                            on_progress=on_progress)
