"""Which OTLP exporter the standard OpenTelemetry variables ask for, per signal.

``OTEL_{TRACES,METRICS}_EXPORTER=none`` turns a signal off; the endpoint comes from
``OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``; the protocol
from ``OTEL_EXPORTER_OTLP_{SIGNAL}_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``
(``http/protobuf`` by default, or ``grpc``). The exporters themselves read the rest
(headers, timeout, compression, TLS).
"""

from __future__ import annotations

import logging
import os
from typing import Literal

logger = logging.getLogger("persona_exporter")

Protocol = Literal["http/protobuf", "grpc"]


def otlp_protocol(signal: Literal["TRACES", "METRICS"]) -> Protocol | None:
    """The protocol to export ``signal`` with, or None when OTLP is not configured for it
    (or asks for a protocol the Python exporters lack, which is logged)."""
    if os.environ.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower() == "none":
        return None
    endpoint = (os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
                or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if not endpoint:
        return None
    protocol = (os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    chosen: Protocol | None = ("grpc" if protocol == "grpc" else
                               "http/protobuf" if protocol == "http/protobuf" else None)
    if chosen is not None:
        logger.info("OTLP %s on: %s over %s", signal.lower(), endpoint, protocol)
        return chosen

    logger.warning("OTLP %s are off: protocol %r is not supported (use http/protobuf or "
                   "grpc)", signal.lower(), protocol)
    return None
