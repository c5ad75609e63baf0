"""The exporter's two worker threads, so that no batch or scrape holds the event loop.

- **ingest**: one thread applies batches in the order they were submitted (FIFO, like the
  loop did), and config reloads go through the same queue, so a reload never lands in the
  middle of a batch. At most ``max_queued_batches`` wait or run; beyond that a batch gets
  503 with ``Retry-After`` (back-pressure instead of unbounded memory).
- **render**: one thread renders ``/metrics``. Scrapes that arrive while a render runs
  share the *next* render, never one begun before they arrived, so an event acknowledged
  before a scrape arrived is always in that scrape's answer.

A scrape may include part of a batch being applied; each series stays self-consistent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

logger = logging.getLogger("persona_exporter")

T = TypeVar("T")

DEFAULT_MAX_QUEUED_BATCHES = 64


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

    def __init__(self, max_queued_batches: int = DEFAULT_MAX_QUEUED_BATCHES) -> None:
        self.max_queued_batches = max_queued_batches
        self._ingest = ThreadPoolExecutor(1, thread_name_prefix="persona-ingest")
        self._render = ThreadPoolExecutor(1, thread_name_prefix="persona-render")
        self._queued = 0  # touched on the event loop only
        self._renders_started = 0
        self._rendered: dict[str, tuple[int, bytes]] = {}
        self._render_lock = asyncio.Lock()

    @property
    def queued(self) -> int:
        return self._queued

    async def ingest(self, apply: Callable[[], T]) -> T:
        """Run ``apply`` on the ingest thread after every batch submitted before it."""
        if self._queued >= self.max_queued_batches:
            raise BusyError(f"{self._queued} batches are waiting to be applied; retry shortly")
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._ingest, apply)
        finally:
            self._queued -= 1

    def submit(self, task: Callable[[], None]) -> None:
        """Run ``task`` on the ingest thread, ordered with the batches; callable from any
        thread (not from inside a signal handler: it takes locks). A failure is logged,
        since nobody awaits the result; after ``close()`` the task is skipped."""
        try:
            self._ingest.submit(task).add_done_callback(_log_failure)
        except RuntimeError:  # shut down: a SIGHUP during exit must not kill the process
            logger.info("shutting down: %s skipped", getattr(task, "__name__", "task"))

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
