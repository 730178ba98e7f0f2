"""When frames run: the pipeline's scheduling, apart from what each stage does.

- `prefetched`: one worker thread prepares (decode, preprocess, patchify) the next chunks
  while the model runs on this one (double buffering);
- `in_flight`: N chunks at once, each through every stage on a worker of its own (ONNX
  Runtime's `streams`), results in order.
An error in a worker is raised at the chunk it happened in; leaving early never waits on a
producer that blocks (a camera read)."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


def in_flight(chunks: Iterable[Any], run: Callable[[Any], Any], workers: ThreadPoolExecutor,
              streams: int, check: Callable[[], None] = lambda: None
              ) -> Iterator[tuple[Any, Any]]:
    """(chunk, run(chunk)) for each chunk, in order, `streams` chunks running at once on
    `workers` while the next are read; `check` runs before each chunk is taken (a closed
    pipeline raises there)."""
    pending: deque[tuple[Any, Future[Any]]] = deque()
    try:
        for chunk in chunks:
            check()
            pending.append((chunk, workers.submit(run, chunk)))
            if len(pending) > streams:  # one chunk queued behind the busy workers
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        for _chunk, future in pending:
            future.cancel()


def prefetched(chunks: Iterator[Any], prepare: Callable[[Any], Any | None], depth: int
               ) -> Iterator[Any]:
    """prepare(chunk) for each chunk, `depth` chunks ahead, on a worker thread; a chunk
    prepared to None is left out. An error in the worker is raised here, at its chunk.
    Leaving early tells the worker to stop; nobody waits for it."""
    done = object()
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                prepared = prepare(chunk)
                if prepared is not None and not put(prepared):
                    return
            put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)

    worker = threading.Thread(target=work, name="vitedge-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the worker sees it at its next put or chunk; nobody waits for that


def available_cores() -> int:
    """The cores this process may run on."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
