"""Persona and chatmode of a span, read by the configured attribute lists (``otlp.persona``,
``otlp.chatmode`` in the config; defaults and sources in ``config.py`` and
``../shared/notes/otlp-ingest.md`` (d)).

For each of the two labels the first configured attribute present on the span with a
non-empty string value wins. A dotted name with no attribute of exactly that name is also
looked up one level down: ``metadata.persona`` reads the key ``persona`` of the attribute
``metadata`` when that is a dict (an OTLP kvlist) or a JSON object in a string, which is
how OpenInference's ``using_metadata`` writes it
(``python/openinference-instrumentation/src/openinference/instrumentation/context_attributes.py``).
Resource attributes are read separately (``resource_attributes``): the caller decides
where they rank. The value found is then named by the first ``map`` pattern it matches
(``re.search``), else kept as it is; both are cleaned into a label value.

>>> from persona_exporter.config import Otlp
>>> resolver = Resolver(Otlp.model_validate(
...     {"persona": {"attributes": ["persona"], "resource_attributes": [],
...                  "map": {"^qa": "qa-engineer"}}}))
>>> resolver.read({"persona": "qa-bot", "chatmode": "review"})
('qa-engineer', 'review')
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from ..config import Otlp
from ..events import clean_name

# A JSON metadata string longer than this is not parsed: a persona is a short name, and a
# client sending megabytes of metadata on every span must not cost a parse per span.
MAX_METADATA_JSON: Final = 16 * 1024
# Distinct raw values whose mapped and cleaned name is remembered (the map runs once per value).
_CACHE_SIZE: Final = 4096


class _Lookup:
    """One label's attribute list, precomputed: ``(name, container, key)`` per attribute,
    where ``container``/``key`` is the one-level-down reading of a dotted name."""

    __slots__ = ("_cache", "_map", "gate", "keys")

    def __init__(self, names: tuple[str, ...], mapping: Mapping[str, str]) -> None:
        self.keys: tuple[tuple[str, str | None, str], ...] = tuple(
            (name, *_split(name)) for name in names)
        # Every attribute name that can matter: most spans have none of them, and one
        # isdisjoint (in C, over the span's few keys) says so.
        self.gate = frozenset({name for name, _, _ in self.keys}
                              | {container for _, container, _ in self.keys if container})
        self._map = tuple((re.compile(pattern), clean_name(canonical))
                          for pattern, canonical in mapping.items())
        self._cache: dict[str, str] = {}

    def name(self, raw: str) -> str:
        """The canonical, cleaned label value of a raw attribute value."""
        cached = self._cache.get(raw)
        if cached is not None:
            return cached
        value = None
        for pattern, canonical in self._map:
            if pattern.search(raw):
                value = canonical
                break
        if value is None:
            value = clean_name(raw)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()  # hostile cardinality: start over rather than grow
        self._cache[raw] = value
        return value


def _split(name: str) -> tuple[str | None, str]:
    container, dot, key = name.rpartition(".")
    return (container, key) if dot and container and key else (None, "")


def _text(value: Any) -> str | None:
    if isinstance(value, str):  # a number or a bool is not a name
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            # The Langfuse SDK writes metadata values as JSON, a string too:
            # langfuse.trace.metadata.persona = '"qa-engineer"' (langfuse-python
            # langfuse/_client/attributes.py _serialize; seen from SDK 5.0.4).
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = None
            if isinstance(decoded, str):
                value = decoded.strip()
        return value or None
    return None


class Resolver:
    """Reads persona and chatmode from span and resource attributes (see the module doc)."""

    __slots__ = ("_last_resource", "_resource_chatmode", "_resource_persona", "chatmode",
                 "persona")

    def __init__(self, config: Otlp) -> None:
        self.persona = _Lookup(config.persona.attributes, config.persona.map)
        self.chatmode = _Lookup(config.chatmode.attributes, config.chatmode.map)
        self._resource_persona = _Lookup(config.persona.resource_attributes,
                                         config.persona.map)
        self._resource_chatmode = _Lookup(config.chatmode.resource_attributes,
                                          config.chatmode.map)
        self._last_resource: tuple[Mapping[str, Any], tuple[str | None, str | None]] | None = None

    @property
    def keys(self) -> frozenset[str]:
        """Every span attribute :meth:`read` may look at (containers of dotted names too)."""
        return self.persona.gate | self.chatmode.gate

    def read(self, attributes: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """``(persona, chatmode)`` named by the span's own attributes, ``None`` where absent."""
        if not attributes:
            return None, None
        parsed: dict[str, Mapping[str, Any] | None] = {}
        return (_first(self.persona, attributes, parsed),
                _first(self.chatmode, attributes, parsed))

    def read_resource(self, resource: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """``(persona, chatmode)`` named by the resource attributes."""
        # The spans of one resource share its dict, so a batch reads it once.
        last = self._last_resource
        if last is not None and last[0] is resource:
            return last[1]
        parsed: dict[str, Mapping[str, Any] | None] = {}
        result = (_first(self._resource_persona, resource, parsed),
                  _first(self._resource_chatmode, resource, parsed))
        self._last_resource = (resource, result)
        return result


def _first(lookup: _Lookup, attributes: Mapping[str, Any],
           parsed: dict[str, Mapping[str, Any] | None]) -> str | None:
    if lookup.gate.isdisjoint(attributes):
        return None
    get = attributes.get
    for name, container, key in lookup.keys:
        raw = get(name)
        if raw is None and container is not None and container in attributes:
            nested = parsed.get(container, _UNPARSED)
            if nested is _UNPARSED:
                nested = parsed[container] = _nested(get(container))
            raw = nested.get(key) if nested is not None else None
        if raw is None:
            continue
        text = _text(raw)
        if text is not None:
            return lookup.name(text)
    return None


_UNPARSED: Final[Mapping[str, Any]] = {}


def _nested(value: Any) -> Mapping[str, Any] | None:
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or len(value) > MAX_METADATA_JSON:
        return None
    text = value.lstrip()
    if not text.startswith("{"):
        return None
    try:
        decoded = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return decoded if isinstance(decoded, dict) else None
