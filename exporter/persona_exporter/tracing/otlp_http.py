"""The OpenTelemetry OTLP/HTTP span exporter, encoding with :mod:`.span_encoding`.

Everything but the encoding stays the stock exporter's: endpoint and header resolution
from the standard variables, compression, TLS, retries with backoff, the shutdown that
aborts them. The encoded bytes go to the exporter's own transport client. That client is
an internal of the exporter; if a release renames it, this falls back to the stock
``export`` (slower, same result), and a test pins that the fast path is the one in use.

Its HTTP session is a :class:`CountingSession`, so the tracing sink reads the bytes each
export posted without encoding the batch a second time.
"""

from __future__ import annotations

import gzip
import weakref
from collections.abc import Sequence
from typing import Any

import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .span_encoding import SpanEncoder


class CountingSession(requests.Session):
    """The HTTP session of an OTLP/HTTP exporter, counting the (compressed) bytes it posts:
    the export-volume self-metric without encoding every batch a second time.

    With ``gzip_level`` it also compresses the body (the exporter is then built without
    compression): the stock exporter's gzip runs at level 9, which cost a fifth of the
    export thread's time on our spans for a few percent smaller bodies."""

    def __init__(self, gzip_level: int | None = None) -> None:
        super().__init__()
        self.sent = 0
        self.gzip_level = gzip_level

    def request(self, method: str, url: str | bytes, *args: Any,
                **kwargs: Any) -> requests.Response:
        data = kwargs.get("data", args[1] if len(args) > 1 else None)
        if isinstance(data, (bytes, bytearray)):
            if self.gzip_level is not None and "data" in kwargs:
                data = kwargs["data"] = gzip.compress(data, self.gzip_level, mtime=0)
                kwargs["headers"] = {**(kwargs.get("headers") or {}),
                                     "Content-Encoding": "gzip"}
            self.sent += len(data)
        return super().request(method, url, *args, **kwargs)


# Which exporters we built with a CountingSession (the OTLP/HTTP exporter keeps its session
# private); weak, so a discarded exporter is not kept alive.
COUNTING_SESSIONS: weakref.WeakKeyDictionary[SpanExporter, CountingSession] = (
    weakref.WeakKeyDictionary())


class EncodingOTLPSpanExporter(OTLPSpanExporter):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = SpanEncoder()
        client = getattr(self, "_client", None)
        self.fast_path = callable(getattr(client, "export", None))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if (not self.fast_path or getattr(self, "_shutdown", False)
                or not SpanEncoder.supports(spans)):
            return super().export(spans)
        try:
            data = self._encoder.encode(spans)
        except Exception:  # noqa: BLE001 - let the stock encoder try, and report, instead
            return super().export(spans)
        result = self._client.export(data)
        return (SpanExportResult.SUCCESS if getattr(result, "success", False)
                else SpanExportResult.FAILURE)
