"""Executors: how the driver's tasks run (one after the other here, or as Ray tasks on a cluster)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from ..errors import InputError
from ..io.dicom import one_line
from .tasks import ChunkResult, SeriesResult, SeriesTask, SliceChunk, finish_chunks, process_chunk, split_chunks

log = logging.getLogger(__name__)

RAY_INSTALL_HINT = "the ray engine needs Ray, which is not installed: pip install 'dd-medical[ray]'"


class Executor(Protocol):
    """Runs :func:`process_series` over tasks and yields results as they finish (any order).

    An executor that may run a task more than once (retries after a worker died) sets ``uses_receipts = True``:
    the driver then gives every task of the run a token, and a repeated task returns the result of an earlier
    attempt whose outputs are complete instead of writing them again (:func:`completed_earlier`).
    """

    def map(self, fn: Callable[[SeriesTask], SeriesResult], tasks: Sequence[SeriesTask]) -> Iterator[SeriesResult]:
        ...


class SerialExecutor:
    """One task after the other in this process (slice progress bars shown)."""

    def map(self, fn: Callable[[SeriesTask], SeriesResult], tasks: Sequence[SeriesTask]) -> Iterator[SeriesResult]:
        for task in tasks:
            yield fn(task)


def import_ray():
    """The ``ray`` module; :class:`InputError` telling how to install it when it cannot be imported."""
    try:
        import ray
    except ImportError as err:
        raise InputError(RAY_INSTALL_HINT) from err
    return ray


#: ``wrapper(fn, item)`` runs a task's ``fn(item)`` in the worker (tests inject one that marks and waits).
TaskWrapper = Callable[[Callable, object], object]


def _run_in_worker(fn: Callable, item: SeriesTask | SliceChunk, wrapper: TaskWrapper | None):
    """What a Ray task runs: ``fn(item)``, through ``wrapper`` when one was given."""
    return fn(item) if wrapper is None else wrapper(fn, item)


class RayExecutor:
    """Series (or slice chunks of large series) as Ray tasks, results streamed back as they finish (``ray.wait``).

    Args:
        address: ``None`` (``ray.init()``: ``RAY_ADDRESS`` or a new local instance using every GPU of this
            machine), ``"auto"`` (the cluster started with ``ray start`` here) or ``"ray://host:port"`` (Ray Client).
            Ignored when Ray is already initialised in this process.
        gpus_per_task: GPUs a task reserves; fractional (0.25: four series share a GPU); 0 for CPU-only tasks.
            ``None``: 1 when the cluster has GPUs and the tasks' device is not ``"cpu"``, else 0.
        cpus_per_task: CPUs a task reserves (also its torch thread count, which Ray sets through OMP_NUM_THREADS).
        max_retries: times a task is rerun after its worker died (killed, out of host memory, node lost).
        chunk_slices: split series with more slices than this into chunks of this many, one task each; the driver
            reassembles them in order and writes the series once. ``None``: one task per series.
        runtime_env: Ray runtime environment of the tasks (e.g. ``{"env_vars": {...}}``, ``{"pip": [...]}``).
        task_wrapper: ``wrapper(fn, item)`` run in the worker instead of ``fn(item)`` (:data:`TaskWrapper`; tests
            use it to mark and pause workers).

    Only the driver writes the manifest. Every task writes its outputs atomically, then a receipt; a task retried
    after its worker died once its outputs were in place finds the receipt, verifies the outputs and returns the
    recorded result without redoing (or duplicating) anything. Task results do not depend on the executor: a
    series gives the same pixels here as with :class:`SerialExecutor` (per-slice seeds).
    """

    uses_receipts = True

    def __init__(self, address: str | None = None, *, gpus_per_task: float | None = None, cpus_per_task: float = 1.0,
                 max_retries: int = 3, chunk_slices: int | None = None, runtime_env: dict | None = None,
                 task_wrapper: TaskWrapper | None = None) -> None:
        if min(gpus_per_task or 0, cpus_per_task, max_retries) < 0 or (chunk_slices or 1) < 1:
            raise InputError("gpus/cpus per task and retries must be >= 0, chunk slices >= 1")
        self.ray = import_ray()
        self.address, self.gpus_per_task, self.cpus_per_task = address, gpus_per_task, cpus_per_task
        self.max_retries, self.chunk_slices, self.runtime_env = max_retries, chunk_slices, runtime_env
        self.task_wrapper = task_wrapper

    def map(self, fn: Callable[[SeriesTask], SeriesResult], tasks: Sequence[SeriesTask]) -> Iterator[SeriesResult]:
        ray = self.ray
        if not tasks:
            return
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, log_to_driver=False)
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        gpus = self.gpus_per_task
        if gpus is None:
            gpus = 1.0 if cluster_gpus and tasks[0].device != "cpu" else 0.0
        elif gpus > 0 and not cluster_gpus:
            log.warning("tasks ask for %g GPU but the Ray cluster has none (yet): they wait until a GPU node joins",
                        gpus)
        log.info("Ray cluster: %s; %g CPU and %g GPU per task", ray.cluster_resources(), self.cpus_per_task, gpus)
        options = dict(num_cpus=self.cpus_per_task, num_gpus=gpus, max_retries=self.max_retries,
                       retry_exceptions=False)
        if self.runtime_env is not None:
            options["runtime_env"] = self.runtime_env
        remote = ray.remote(_run_in_worker).options(**options)
        pending: dict = {}  # ObjectRef -> (task, chunk start or None)
        chunks: dict[str, list[ChunkResult]] = {}
        expected: dict[str, int] = {}
        try:
            for task in tasks:
                parts = split_chunks(task, self.chunk_slices)
                expected[task.key] = len(parts)
                chunks[task.key] = []
                for part in parts:
                    pending[remote.remote(process_chunk, part, self.task_wrapper)] = (task, part)
                if not parts:
                    pending[remote.remote(fn, task, self.task_wrapper)] = (task, None)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task, part = pending.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.RayError as err:  # retries used up: worker died, node lost, ...
                        reason = f"{type(err).__name__}: {one_line(err)}"
                        value = (SeriesResult(key=task.key, status="failed", reason=reason) if part is None else
                                 ChunkResult(key=task.key, start=part.start, stop=part.stop, reason=reason))
                    if part is None:
                        yield value
                        continue
                    chunks[task.key].append(value)
                    if len(chunks[task.key]) == expected[task.key]:
                        yield finish_chunks(task, chunks.pop(task.key))
        finally:
            for ref in pending:  # interrupted: stop what is still running (its outputs are atomic)
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


#: Executors by name (``--engine``), each built with its default settings.
EXECUTORS: dict[str, Callable[[], Executor]] = {"serial": SerialExecutor, "ray": RayExecutor}
