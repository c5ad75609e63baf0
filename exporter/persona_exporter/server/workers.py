"""The exporter's two worker threads, so that no batch or scrape holds the event loop.

- **ingest**: one thread applies batches in the order they were submitted (FIFO, like the
  loop did), and config reloads go through the same queue, so a reload never lands in the
  middle of a batch. At most ``max_queued_batches`` wait or run; beyond that a batch gets
  503 with ``Retry-After`` (back-pressure instead of unbounded memory).

  A small body (at most ``inline_bytes``, 32 KiB: about 150 events, about a millisecond
  of work) that finds the ingest thread idle is applied on the loop instead. Handing a
  batch to a thread and its answer back costs more than applying a small one: measured
  with four clients posting batches of 100, the hop took 40% of the throughput, as the two
  threads pass the GIL back and forth. Order is kept: a batch goes inline only when
  nothing is queued or running on the thread, and anything bigger, or arriving behind
  queued work, goes to the thread.
- **render**: one thread renders ``/metrics``. Scrapes that arrive while a render runs
  share the *next* render, never one begun before they arrived, so an event acknowledged
  before a scrape arrived is always in that scrape's answer.

A scrape may include part of a batch being applied; each series stays self-consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

logger = logging.getLogger("persona_exporter")

T = TypeVar("T")

DEFAULT_MAX_QUEUED_BATCHES = 64
DEFAULT_INLINE_BYTES = 32 * 1024


class BusyError(Exception):
    """Too many batches are queued; answer 503 with ``Retry-After``."""


class Workers:
    """Example::

        workers = Workers()
        result = await workers.ingest(partial(ingestor.ingest, body))
        text = await workers.render("text/plain", partial(generate_latest, registry))
        workers.submit(reload)        # ordered with the batches
        workers.close()               # after the server stopped: lets queued work finish
    """

    def __init__(self, max_queued_batches: int = DEFAULT_MAX_QUEUED_BATCHES,
                 inline_bytes: int = DEFAULT_INLINE_BYTES) -> None:
        self.max_queued_batches = max_queued_batches
        self.inline_bytes = inline_bytes
        self._on_thread = 0  # work submitted to the ingest thread and not finished
        self._ingest = ThreadPoolExecutor(1, thread_name_prefix="persona-ingest")
        self._render = ThreadPoolExecutor(1, thread_name_prefix="persona-render")
        self._queued = 0  # touched on the event loop only
        self._renders_started = 0
        self._rendered: dict[str, tuple[int, bytes]] = {}
        self._render_lock = asyncio.Lock()

    @property
    def queued(self) -> int:
        return self._queued

    async def ingest(self, apply: Callable[[], T], size: int | None = None) -> T:
        """Run ``apply`` after every batch submitted before it: on the ingest thread, or
        here when ``size`` (the body's bytes) is small and the thread has nothing to do."""
        if self._queued >= self.max_queued_batches:
            raise BusyError(f"{self._queued} batches are waiting to be applied; retry shortly")
        self._queued += 1
        try:
            if size is not None and size <= self.inline_bytes and self._on_thread == 0:
                return apply()
            self._on_thread += 1
            try:
                return await asyncio.get_running_loop().run_in_executor(self._ingest, apply)
            finally:
                self._on_thread -= 1
        finally:
            self._queued -= 1

    def submit(self, task: Callable[[], None]) -> None:
        """Run ``task`` on the ingest thread, ordered with the batches. Call it on the event
        loop (not inside a signal handler: it takes locks): no batch is applied inline
        while the task waits or runs. A failure is logged, since nobody awaits the result;
        after ``close()`` the task is skipped."""
        loop = asyncio.get_running_loop()
        try:
            future = self._ingest.submit(task)
        except RuntimeError:  # shut down: a SIGHUP during exit must not kill the process
            logger.info("shutting down: %s skipped", getattr(task, "__name__", "task"))
            return
        self._on_thread += 1

        def finished(done: Future[None]) -> None:
            _log_failure(done)
            # a reload still queued at shutdown finishes after the loop closed
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._task_done)

        future.add_done_callback(finished)

    def _task_done(self) -> None:
        self._on_thread -= 1

    async def render(self, kind: str, render: Callable[[], bytes]) -> bytes:
        """The output of ``render`` (one per ``kind``, e.g. the content type) from a run
        that began after this call."""
        arrived = self._renders_started
        async with self._render_lock:
            number, body = self._rendered.get(kind, (-1, b""))
            if number <= arrived:
                self._renders_started += 1
                number = self._renders_started
                body = await asyncio.get_running_loop().run_in_executor(self._render, render)
                self._rendered[kind] = (number, body)
        return body

    def close(self) -> None:
        """Finish what was queued (a batch being applied is applied), then stop."""
        self._ingest.shutdown(wait=True)
        self._render.shutdown(wait=True, cancel_futures=True)


def _log_failure(future: Future[None]) -> None:
    error = future.exception() if not future.cancelled() else None
    if error is not None:
        logger.error("background task failed: %r", error,
                     exc_info=(type(error), error, error.__traceback__))
