"""Following a result that is not finished yet: a generator, an async generator or a
stream object (``openai.Stream``, ``openai.AsyncStream``), observed chunk by chunk.

Everything passes through as if nobody watched: chunks, ``send``/``throw``/``athrow``,
return values, the caller's exceptions, ``close``, and any attribute of a stream object.
The observer is told when the stream begins, of each chunk, and once how it ended; the
SDK's observer (:mod:`.llm`) records the call then. Nothing here knows what is recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Generator
from typing import Any, Protocol


class StreamObserver(Protocol):
    def begin(self) -> None:
        """The stream starts producing (a generator's body runs from its first ``next``)."""

    def chunk(self, chunk: Any) -> None:
        """A chunk went to the consumer."""

    def end(self) -> None:
        """The stream ran to its end (``finish`` follows): not stopped early by the
        consumer, so what its last chunks carry (a usage summary) was seen."""

    def finish(self, error: BaseException | None) -> None:
        """The stream ended, failed with ``error``, or was closed; may be called again."""


def follow(observer: StreamObserver,
           stream: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Yield the stream's chunks, as ``yield from`` would (send, throw and the return
    value pass through), noting each chunk."""
    observer.begin()
    sent: Any = None
    thrown: BaseException | None = None
    error: BaseException | None = None
    try:
        while True:
            try:
                if thrown is not None:
                    exc, thrown = thrown, None
                    chunk = stream.throw(exc)
                elif sent is None:
                    chunk = next(stream)
                else:
                    chunk = stream.send(sent)
            except StopIteration as stop:
                observer.end()
                return stop.value
            observer.chunk(chunk)
            try:
                sent = yield chunk
            except GeneratorExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in by the consumer: pass it on
                thrown, sent = exc, None
    except GeneratorExit:  # the consumer stopped early: not a failed request
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        stream.close()
        observer.finish(error)

async def afollow(observer: StreamObserver,
                  stream: AsyncGenerator[Any, Any]) -> AsyncGenerator[Any, Any]:
    observer.begin()
    sent: Any = None
    thrown: BaseException | None = None
    error: BaseException | None = None
    try:
        while True:
            try:
                if thrown is not None:
                    exc, thrown = thrown, None
                    chunk = await stream.athrow(exc)
                elif sent is None:
                    chunk = await stream.__anext__()
                else:
                    chunk = await stream.asend(sent)
            except StopAsyncIteration:
                observer.end()
                return
            observer.chunk(chunk)
            try:
                sent = yield chunk
            except GeneratorExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - passed on, as above
                thrown, sent = exc, None
    except GeneratorExit:
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            await stream.aclose()  # the provider's stream is closed with ours
        finally:
            observer.finish(error)


class StreamProxy:
    """Stands in for a stream object (``openai.Stream``, any iterator) that is not a
    generator: iteration is observed, everything else is the stream's own."""

    def __init__(self, stream: Any, observer: StreamObserver) -> None:
        self._stream = stream
        self._observer = observer

    def __iter__(self) -> StreamProxy:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self._stream)
        except StopIteration:
            self._observer.end()
            self._observer.finish(None)
            raise
        except BaseException as exc:
            self._observer.finish(exc)
            raise
        self._observer.chunk(chunk)
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
        finally:
            self._observer.finish(None)

    def __enter__(self) -> StreamProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __del__(self) -> None:
        # A stream dropped unfinished is recorded when collected; a finaliser never raises.
        with contextlib.suppress(Exception):
            self._observer.finish(None)


class AsyncStreamProxy:
    """The async counterpart of :class:`StreamProxy` (``openai.AsyncStream``)."""

    def __init__(self, stream: Any, observer: StreamObserver) -> None:
        self._stream = stream
        self._observer = observer

    def __aiter__(self) -> AsyncStreamProxy:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            self._observer.end()
            self._observer.finish(None)
            raise
        except BaseException as exc:
            self._observer.finish(exc)
            raise
        self._observer.chunk(chunk)
        return chunk

    async def aclose(self) -> None:
        try:
            for name in ("aclose", "close"):
                close = getattr(self._stream, name, None)
                if close is not None:
                    result = close()
                    if hasattr(result, "__await__"):
                        await result
                    break
        finally:
            self._observer.finish(None)

    async def close(self) -> None:
        await self.aclose()

    async def __aenter__(self) -> AsyncStreamProxy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._observer.finish(None)
