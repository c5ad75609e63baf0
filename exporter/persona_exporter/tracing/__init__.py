"""Events to spans, off the caller's thread: span building, OTLP encoding and transport,
the standard OTLP environment variables, and the tracing sink with its backends
(Langfuse with persona-as-user, any OTLP endpoint).

May import: the core and ``metrics`` (the tracing sink's self-metrics); never the SDK,
the server or the bundle, so both the SDK and the exporter process can trace.
"""
