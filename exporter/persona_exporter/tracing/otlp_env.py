"""Which OTLP exporter the standard OpenTelemetry variables ask for, per signal.

``OTEL_{TRACES,METRICS}_EXPORTER=none`` turns a signal off; the endpoint comes from
``OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``; the protocol
from ``OTEL_EXPORTER_OTLP_{SIGNAL}_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``
(``http/protobuf`` by default, or ``grpc``). The exporters themselves read the rest
(headers, timeout, compression, TLS). ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
name the resource; without a service name it is ``persona-exporter``.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

from opentelemetry.sdk.resources import SERVICE_NAME, Resource

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


def default_resource() -> Resource:
    """The resource the environment describes; ``service.name`` is ``persona-exporter`` only
    when neither ``OTEL_SERVICE_NAME`` nor ``OTEL_RESOURCE_ATTRIBUTES`` names one (an
    application instrumented with the SDK keeps its own name)."""
    detected = Resource.create()
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        return detected.merge(Resource({SERVICE_NAME: "persona-exporter"}))
    return detected


def env_float(name: str, default: float, *, low: float, high: float | None = None) -> float:
    """The number in the environment variable ``name``, or ``default`` when it is unset or
    blank; a value that is not a number within ``low``..``high`` is logged by name and
    ``default`` used (a bad variable must not stop the process)."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= low and (high is None or value <= high)):
        limit = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        logger.warning("%s=%r is not a number %s; using %g", name, raw, limit, default)
        return default
    return value
