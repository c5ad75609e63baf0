"""The exporter process, ``persona-exporter serve``: HTTP ingest (``create_app``), bodies
read under limits (``body``), batch application, the ingest and render threads
(``workers``), uvicorn's protocol with a header deadline and a connection cap
(``protocol``), the uvicorn runner with reload and graceful stop, and the OTLP metrics bridge.

May import: the core, ``metrics`` and ``tracing``; never ``sdk`` (what both need lives in
the core, like the ``Sink`` seam).
"""
