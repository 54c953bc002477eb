"""Micro-batching: requests that arrive together share one engine call.

A network reads its weights once per call and runs larger matrix products on a batch, so a
service that embeds each request on its own can waste the machine when it is busiest; whether
batching pays depends on the model and the machine (``bench/bench_serve.py`` measures it, and
``--max-batch 1`` turns it off). ``MicroBatcher`` puts each submitted item in a queue; one worker
thread takes the first waiting item and everything queued behind it, up to ``max_batch``, and
calls ``run(items) -> results`` once for all of them. Each submitter gets its own item's result (or
the batch's exception) through a ``concurrent.futures.Future``, whose ``batch_size`` says how many
items shared the call.

The worker waits for more items (at most ``max_wait_s``) only while some are known to be on their
way: a request announces itself with ``coming()`` while it decodes its image. A lone request is
never delayed, and a burst is gathered.

The engine is only ever called from that one thread, so engines need not be thread-safe.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Callable, Sequence

_STOP = object()


class MicroBatcher:
    def __init__(self, run: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 32,
                 max_wait_s: float = 0.005, start: bool = True):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be at least 1 and max_wait_s at least 0")
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.batch_sizes: list[int] = []  # of every call so far, in order
        self._queue: queue.Queue = queue.Queue()
        self._coming, self._lock = 0, threading.Lock()
        self._thread = threading.Thread(target=self._work, name="micro-batcher", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        """Start the worker (``start=False`` lets a caller queue items first, e.g. to see them batched)."""
        self._thread.start()

    @contextmanager
    def coming(self):
        """Around the preparation of an item that will be submitted: the worker waits for it."""
        with self._lock:
            self._coming += 1
        try:
            yield
        finally:
            with self._lock:
                self._coming -= 1

    def submit(self, item: Any) -> Future:
        future: Future = Future()
        self._queue.put((item, future))
        return future

    def close(self) -> None:
        """Finish the queued items, then stop the worker."""
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join()

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:  # what is queued already is taken without waiting
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if self._coming <= 0 or remaining <= 0:
                        break
                    try:
                        entry = self._queue.get(timeout=min(remaining, 0.001))  # and re-check who is coming
                    except queue.Empty:
                        continue
                if entry is _STOP:
                    stopping = True
                    break
                batch.append(entry)
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[Any, Future]]) -> None:
        futures = [f for _, f in batch if f.set_running_or_notify_cancel()]
        items = [item for item, f in batch if f in futures]
        if not items:
            return
        self.batch_sizes.append(len(items))
        try:
            results = self.run(items)
        except BaseException as err:  # every waiting request learns of the failure; the worker lives on
            for f in futures:
                f.set_exception(err)
            return
        for f, result in zip(futures, results):
            f.batch_size = len(items)
            f.set_result(result)
