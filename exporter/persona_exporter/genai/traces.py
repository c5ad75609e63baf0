"""STUB: the per-trace state of the OTLP receiver."""
