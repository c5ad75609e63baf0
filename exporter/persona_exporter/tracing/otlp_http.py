"""The OpenTelemetry OTLP/HTTP span exporter, encoding with :mod:`.span_encoding`.

Everything but the encoding stays the stock exporter's: endpoint and header resolution
from the standard variables, compression, TLS, retries with backoff, the shutdown that
aborts them. The encoded bytes go to the exporter's own transport client. That client is
an internal of the exporter; if a release renames it, this falls back to the stock
``export`` (slower, same result), and a test pins that the fast path is the one in use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from .span_encoding import SpanEncoder


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
