"""A bounded queue in front of the model: requests wait in it, worker threads take them a batch at a time.

Many clients sending one image each are served in batches (one forward pass for up to `max_batch` images, which
is several times faster per image than one pass each), and a full queue is refused at once rather than
answered late: `submit` raises `QueueFull` with a Retry-After estimate, which the server turns into a 503.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future


class QueueFull(Exception):
    """The queue holds `max_queue` waiting requests; `retry_after` is the estimated wait in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"busy: retry after {retry_after} s")


class Batcher:
    """Worker threads calling `run_batch` on up to `max_batch` waiting items at a time.

    Args:
        run_batch: list of items -> list of results, one per item, in order; an exception fails the whole batch.
        max_queue: requests allowed to wait; one more raises `QueueFull`.
        max_batch: items per call of `run_batch`.
        workers: threads calling `run_batch` concurrently (1 lets torch use every core for one batch).
    """

    def __init__(
        self, run_batch: Callable[[Sequence], list], max_queue: int = 64, max_batch: int = 8, workers: int = 1
    ) -> None:
        self.run_batch, self.max_batch = run_batch, max(1, max_batch)
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, max_queue))
        self.seconds_per_item = 0.05  # running mean, for Retry-After
        self.served = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"medcad-infer-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def submit(self, item) -> Future:
        """Queue one item; its Future gets the result (or the batch's exception).

        Raises:
            QueueFull: the queue is full.
        """
        fut: Future = Future()
        try:
            self.queue.put_nowait((item, fut))
        except queue.Full:
            wait = self.queue.qsize() * self.seconds_per_item / len(self._threads)
            raise QueueFull(max(1, math.ceil(wait))) from None
        return fut

    def _take(self) -> list[tuple[object, Future]]:
        """Block for one item, then take what else is waiting, up to max_batch; skip cancelled (timed-out) ones."""
        batch = []
        while not batch and not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch.append(first)
        while len(batch) < self.max_batch:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]

    def _work(self) -> None:
        while not self._stop.is_set():
            batch = self._take()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = self.run_batch([item for item, _ in batch])
            except BaseException as e:  # handed to every waiting request; the worker lives on
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            per_item = (time.perf_counter() - t0) / len(batch)
            self.seconds_per_item = 0.8 * self.seconds_per_item + 0.2 * per_item
            self.served += len(batch)
            for (_, fut), result in zip(batch, results, strict=True):
                fut.set_result(result)

    def close(self) -> None:
        """Stop the workers after their current batch; requests still queued are cancelled."""
        self._stop.set()
        while True:
            try:
                _, fut = self.queue.get_nowait()
            except queue.Empty:
                break
            fut.cancel()
        for t in self._threads:
            t.join(timeout=30)
