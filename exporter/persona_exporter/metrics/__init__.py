"""The Prometheus side: the :class:`~.recorder.Recorder` that turns events into the catalog's
families, the LLM-call series it renders from plain numbers, and the label cardinality caps.

May import: the core (``catalog``, ``events``, ``config``, ``errors``, ``sink``) and
prometheus_client. Nothing here knows of the SDK, tracing, the server or the bundle.
"""
