"""How a local model is fed: its forward batch, the inputs in a request, the requests in flight and
the CPU threads each computes with. Shared by both local runtimes, so they are sized alike.

CPU (measured on the 2-core machine, bench/local.py's end-to-end path, ~220-token sections):
- batches of 8 ran fastest on torch (4-16 within 5%; 32 -12%, 128 -24%: bigger batches lose cache
  locality); on ONNX Runtime a check under heavy load found batches of 16 no faster than 8 (too
  noisy to say more), and requests of 32 inputs perhaps faster than 16. Requests of 16 answer in
  about a second, so the progress bar moves every second, for a few percent of throughput;
- two requests in flight with the cores shared between them (2 x 1 thread on 2 cores) beat one
  request on all cores: while one request is in its single-threaded steps (tokenizing, pooling,
  Python glue, the engine counting the next window) the other computes, and no core waits at the
  runtime's per-operation barriers. Every core computes either way: ``threads x concurrency`` is
  the number of cores this process may use.
A GPU wants large batches; its numbers are the usual ones, not measured here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from sections.engine.batching import Limits

__all__ = ["CPU_BATCH_SIZE", "CPU_CONCURRENCY", "CPU_REQUEST_INPUTS", "Sizing", "cpu_cores", "size"]

CPU_BATCH_SIZE = 8
CPU_REQUEST_INPUTS = 16
CPU_CONCURRENCY = 2
GPU_BATCH_SIZE = 128
GPU_REQUEST_INPUTS = 1024
GPU_CONCURRENCY = 2  # tokenizing one request on the CPU while the GPU runs the other


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's limit narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class Sizing:
    """What the engine and the runtime are told: ``threads`` is None on a GPU."""

    batch_size: int
    concurrency: int
    threads: int | None
    limits: Limits


def size(window: int, *, on_gpu: bool, batch_size: int | None = None, threads: int | None = None) -> Sizing:
    """The sizing for a model whose inputs hold ``window`` content tokens.

    On a CPU, requests in flight x threads each = the cores (more would oversubscribe them); a
    caller's ``threads`` leaves as many requests in flight as the cores then allow.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be positive")
    if threads is not None and threads < 1:
        raise ValueError("threads must be positive")
    if on_gpu:
        concurrency, threads = GPU_CONCURRENCY, None
    else:
        cores = cpu_cores()
        if threads is None:
            concurrency = max(1, min(CPU_CONCURRENCY, cores))
            threads = max(1, cores // concurrency)
        else:
            concurrency = max(1, min(CPU_CONCURRENCY, cores // threads))
    batch = batch_size or (GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE)
    max_inputs = max(batch, GPU_REQUEST_INPUTS if on_gpu else CPU_REQUEST_INPUTS)
    limits = Limits(max_inputs=max_inputs, max_request_tokens=max_inputs * window, max_input_tokens=window)
    return Sizing(batch, concurrency, threads, limits)
