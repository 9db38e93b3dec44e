"""An ``Embedder`` whose texts are embedded by Ray Data actors across a cluster.

Only the embedding leaves this process. The ingest around it is the one-process ingest, unchanged
(``sections.pipeline.ingest``): validation, the fingerprint skip, the leases that keep concurrent
runs from paying twice, and the writer's binary COPY all run here, so a Ray run stores exactly
what one process would, and a kill followed by a rerun pays only for what was in flight.

The due texts go out in windows: each window is one Ray Dataset, ``map_batches`` over a pool of
``EmbedBatch`` actors, read back as the batches finish (so the writer commits while the cluster
embeds). Windows start small, so the first vectors are stored within seconds, and double up to
``RayOptions.window``: a window's actors load the model once, and a big window pays that start-up
over many texts. Nothing is sent twice: a text goes to exactly one batch of one window.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

from sections.engine.errors import Interrupted, ProviderFatalError
from sections.records import EmbeddingOutcome, EmbeddingSettings
from sections.scale.actor import EmbedBatch, ServiceSpec, answer_of

__all__ = ["RayEmbedder", "RayOptions"]


@dataclass(frozen=True, slots=True)
class RayOptions:
    """How the actors are laid out. ``actors`` None: as many as the cluster's CPUs (or GPUs, with
    ``gpus_per_actor``) hold; ``batch_size`` texts go to an actor per call; windows grow from
    ``first_window`` to ``window`` texts."""

    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 128
    first_window: int = 1024
    window: int = 65536

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ValueError("actors must be at least 1")
        if self.batch_size < 1 or not 1 <= self.first_window <= self.window:
            raise ValueError("batch_size must be positive and 1 <= first_window <= window")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ValueError("cpus_per_actor and gpus_per_actor cannot be negative")

    def actor_count(self, resources: dict[str, float]) -> int:
        """The pool's size on a cluster with ``resources`` (``ray.cluster_resources()``)."""
        if self.actors is not None:
            return self.actors
        if self.gpus_per_actor > 0:
            return max(1, int(resources.get("GPU", 0) // self.gpus_per_actor))
        return max(1, int(resources.get("CPU", 1) // max(self.cpus_per_actor, 1e-9)))


def windows(items: Iterable[tuple[Hashable, str]], first: int, most: int) -> Iterator[list[tuple[Hashable, str]]]:
    """Lists of items, read lazily, each twice the one before, from ``first`` up to ``most``."""
    iterator = iter(items)
    size = first
    while window := list(islice(iterator, size)):
        yield window
        size = min(most, size * 2)


def pool(size: int) -> Any:
    """A fixed pool of actors, each sent one batch at a time: a batch queued behind another on an
    actor would be paid for too if the run died, and it gains nothing (an actor works one batch at
    a time), so what a kill can waste stays the batches being embedded."""
    import ray.data

    return ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1)


class RayEmbedder:
    """Embeds with Ray actors built from ``spec``; Ray must be started (``sections.scale.ray_ingest``).

    Set ``stop_requested`` (Ctrl-C, SIGTERM) and the stream yields what has come back and raises
    ``Interrupted``; a provider's refusal (quota, auth) on any actor yields what arrived and raises
    ``ProviderFatalError``, as the one-process engine does."""

    def __init__(self, spec: ServiceSpec, options: RayOptions | None = None):
        self.spec = spec
        self.options = options or RayOptions()
        self.model = spec.model
        self.stop_requested = threading.Event()
        self._billed = 0
        self._actors: int | None = None

    @property
    def settings(self) -> EmbeddingSettings:
        return self.spec.settings

    @property
    def total_tokens(self) -> int:
        """Tokens the actors' providers billed for this embedder's texts."""
        return self._billed

    @property
    def actors(self) -> int:
        if self._actors is None:
            import ray

            self._actors = self.options.actor_count(dict(ray.cluster_resources()))
        return self._actors

    def stream_embeddings(self, items: Iterable[tuple[Hashable, str]]) -> Iterator[EmbeddingOutcome]:
        """One outcome per (key, text) answered, as the actors' batches come back (any order)."""
        for window in windows(items, self.options.first_window, self.options.window):
            yield from self._window(window)

    def generate_embedding(self, text: str) -> list[float]:
        for outcome in self._window([(0, text)]):
            if outcome.ok and outcome.vector is not None:
                return [float(value) for value in outcome.vector]
            raise ValueError(outcome.error or "embedding failed")
        raise RuntimeError("no answer for the text")

    def _dataset(self, window: list[tuple[Hashable, str]]) -> Any:
        import ray.data

        batch = self.options.batch_size
        if len(window) < batch * self.actors:  # a small window still keeps every actor busy
            batch = max(1, math.ceil(len(window) / self.actors))
        rows = [{"pos": pos, "text": text} for pos, (_, text) in enumerate(window)]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch)))
        return dataset.map_batches(EmbedBatch, fn_constructor_kwargs={"spec": self.spec}, batch_size=batch,
                                   batch_format="numpy", compute=pool(self.actors),
                                   num_cpus=self.options.cpus_per_actor, num_gpus=self.options.gpus_per_actor)

    def _window(self, window: list[tuple[Hashable, str]]) -> Iterator[EmbeddingOutcome]:
        if self.stop_requested.is_set():
            raise Interrupted("stopped before the next window was sent")
        keys = [key for key, _ in window]
        fatal: str | None = None
        for batch in self._dataset(window).iter_batches(batch_size=None, batch_format="numpy"):
            answer = answer_of(batch)
            self._billed += answer.billed
            for outcome in answer.outcomes:
                yield replace(outcome, key=keys[int(outcome.key)])  # type: ignore[call-overload]
            fatal = fatal or answer.fatal
            if fatal is not None:
                raise ProviderFatalError(fatal)
            if self.stop_requested.is_set():
                raise Interrupted("stopped: the actors' batches in flight are dropped")
