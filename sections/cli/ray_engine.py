"""``--engine ray`` on ``sections ingest``: its options, the checks made before anything starts, and
the embedder it hands the ingest.

Ray is an extra (``pip install 'sections-pgvector[ray]'``): this module never imports it at the
top, so the command starts as fast without it, and a run that asks for it without the extra gets
one line saying what to install.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from enum import Enum
from typing import Annotated, Any, Optional

import typer

from sections.cli.console import fail


DEFAULT_BATCH = 128  # RayOptions.batch_size's default, repeated here so the command's help loads no Ray module


class Engine(str, Enum):
    """Where the embedding runs: in this process, or on Ray actors (this machine or a cluster)."""

    PROCESS = "process"
    RAY = "ray"


EngineOption = Annotated[Engine, typer.Option(
    "--engine", help="process: embed in this process; ray: on Ray Data actors (a local Ray, or --ray-address).")]
RayAddress = Annotated[Optional[str], typer.Option(
    "--ray-address", help="Join this Ray cluster (ray://host:10001, host:6379 or auto) instead of starting a "
                          "local Ray.", show_default=False)]
RayActors = Annotated[Optional[int], typer.Option(
    "--ray-actors", help="Embedding actors (default: one per CPU of the cluster, or per GPU with "
                         "--ray-gpus-per-actor).", show_default=False)]
RayBatch = Annotated[int, typer.Option("--ray-batch-size", help="Texts an actor embeds per call (larger for GPUs; "
                                                                 "a killed run pays again for at most one batch per actor).")]
RayGpus = Annotated[float, typer.Option("--ray-gpus-per-actor", help="GPUs each actor holds (a local model on "
                                                                      "GPUs: 1).")]


def check_engine(engine: Engine, batch_api: bool, address: Optional[str], actors: Optional[int], gpus: float,
                 batch_size: int) -> None:
    """Refuse what cannot run, in one line, before any file is read or database opened."""
    if engine is not Engine.RAY:
        if address is not None or actors is not None or gpus or batch_size != DEFAULT_BATCH:
            fail("--ray-address, --ray-actors, --ray-gpus-per-actor and --ray-batch-size need --engine ray")
        return
    if batch_api:
        fail("--engine ray embeds on Ray actors and --batch-api hands the work to OpenAI's Batch API: choose one")
    if actors is not None and actors < 1:
        fail("--ray-actors must be at least 1")
    if gpus < 0:
        fail("--ray-gpus-per-actor cannot be negative")
    if batch_size < 1:
        fail("--ray-batch-size must be at least 1")
    if importlib.util.find_spec("ray") is None:
        fail("--engine ray needs Ray: pip install 'sections-pgvector[ray]'")


def ray_embedder(service: Any, store: Any, share_budget: bool, actors: Optional[int], gpus: float, batch_size: int,
                 options: dict[str, Any]) -> Any:
    """The embedder for ``--engine ray``: actors that build the service this process built (same
    model, settings and limits), drawing on the database's shared rate budget unless
    ``--own-budget``. ``options``: the command's concurrency, rpm and tpm."""
    from sections.scale.actor import ServiceSpec
    from sections.scale.ray_embedder import RayEmbedder, RayOptions

    spec = ServiceSpec(model=service.model, base_url=service.base_url, provider=service.provider_name.value,
                       dimensions=service.dimensions, long_input=service.long_input.value,
                       budget_url=store.database.url if share_budget else None,
                       **{key: value for key, value in options.items() if value is not None})
    try:
        layout = RayOptions(actors=actors, gpus_per_actor=gpus, cpus_per_actor=0.0 if gpus else 1.0,
                            batch_size=batch_size)
    except ValueError as error:
        fail(str(error))
    return RayEmbedder(spec, layout)


@contextmanager
def runtime(engine: Engine, address: Optional[str]) -> Iterator[None]:
    """Ray, started or joined, for ``--engine ray`` (one line and exit 1 when it cannot be); nothing
    otherwise. Entered before the command's signal handlers, which then win over Ray's own."""
    if engine is not Engine.RAY:
        yield
        return
    from sections.scale.ray_ingest import ray_runtime

    with ExitStack() as stack:
        try:
            stack.enter_context(ray_runtime(address))
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"join the Ray cluster at {address}" if address else "start a local Ray"  # fail() masks secrets
            reason = str(error).strip().splitlines()
            fail(f"cannot {where}: {reason[0] if reason else type(error).__name__}")
        yield
