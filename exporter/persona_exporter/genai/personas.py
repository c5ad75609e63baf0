"""STUB: persona and chatmode of a span, by the configured attribute lists."""
