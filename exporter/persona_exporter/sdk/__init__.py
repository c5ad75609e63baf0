"""The in-process SDK: persona, workflow and stage contexts, ``ObservableLLM`` and
``@observe_llm``, usage extraction, run budgets, the ``Telemetry`` that wires sinks
together, the remote sink that ships events to an exporter, and pipeline governance.

May import: the core, ``metrics`` and ``tracing``. The server never imports it.
"""
