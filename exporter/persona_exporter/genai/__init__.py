"""Spans from other instrumentations: OTLP traces (the OpenTelemetry GenAI conventions,
Langfuse, OpenLIT, OpenLLMetry, OpenInference, the Vercel AI SDK, LiteLLM) decoded into
plain :class:`~.span.Span` views (``span``), LLM calls recognised and read into the
fields of an ``LLMGeneration`` (``mapping``), persona and chatmode resolved by the
configured attribute lists (``personas``), and the per-trace state that holds spans until
their persona is known, counts aggregate spans once and finds workflow runs (``traces``).

May import: the core, and opentelemetry-proto (protobuf) for decoding. Nothing here knows of the
recorder, the server, tracing or the SDK: it turns spans into events, and the server
applies them like any other batch.
"""
