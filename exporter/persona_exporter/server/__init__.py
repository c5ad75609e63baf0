"""The exporter process, ``persona-exporter serve``: HTTP ingest (``create_app``), batch
application, the uvicorn runner with reload and graceful stop, and the OTLP metrics bridge.

May import: the core, ``metrics`` and ``tracing``; never ``sdk`` (what both need lives in
the core, like the ``Sink`` seam).
"""
