"""``/metrics`` bodies: prometheus_client's two text formats, byte for byte, without a
Sample object per line for the families that can write their own lines.

prometheus_client formats every label pair of every sample on every scrape
(``sample_line`` in ``prometheus_client/exposition.py``); at 10k series that was 78% of a
100-200 ms scrape. A :class:`PrerenderedFamily` carries its sample lines as UTF-8 text already
(built from label prefixes escaped once per series, see ``llm_series``); the renderers here
write its ``# HELP``/``# TYPE``/``# UNIT`` header as prometheus_client does, by asking
prometheus_client to render the family with no samples, then the lines. Every other
family, and a pre-rendered one whose names an escaping scheme would change, goes through
prometheus_client itself, in registry order, so the body stays the one prometheus_client
would write for the whole registry.

    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    body = encoder(registry)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache, partial

from prometheus_client import exposition as text_format
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["PrerenderedFamily", "choose_encoder", "SMALL", "escape_label_value", "format_value",
           "generate_latest", "generate_openmetrics", "label_text"]

UNDERSCORES = openmetrics.UNDERSCORES
SMALL = 1_000_000  # format_value writes an int n in [0, SMALL) as f"{n}.0"
EOF = b"# EOF\n"

# Names every escaping scheme in which the pre-rendered lines hold leaves as they are:
# ``underscores`` keeps a legacy name, ``allow-utf-8`` only escapes \ " and newline. (The
# OpenMetrics writer escapes sample names with the label-name rune set, so a colon would
# change under ``underscores``; ``dots`` and ``values`` rewrite every underscore.)
_PLAIN_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SAME_NAME_ESCAPINGS = frozenset({openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8})


def escape_label_value(value: str) -> str:
    """A label value as both prometheus_client writers put it between quotes (``_escape``
    with ``ALLOWUTF8`` in ``prometheus_client/openmetrics/exposition.py``)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    """``{k="v",...}`` sorted by label name, as ``sample_line`` writes it; "" for none."""
    items = sorted(pairs)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in items) + "}"


def format_value(value: float) -> str:
    """A sample value as prometheus_client writes it (``floatToGoString``: ``5`` as
    ``5.0``, ``1234567`` as ``1.234567e+06``)."""
    if type(value) is int and 0 <= value < SMALL:
        # floatToGoString's repr(float(n)) for the counts that fill most lines, without
        # the float round trip; from 1e6 on Go switches to exponents.
        return f"{value}.0"
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


class PrerenderedFamily(Metric):
    """A metric family whose sample lines are text already.

    ``lines`` are complete sample lines in UTF-8 (an item may hold several), in the order the
    samples would have; ``sample_names`` and ``label_names`` every name they use, so the
    renderers know when an escaping scheme would write them otherwise. ``samples`` is
    built on first use by ``build`` (the family as prometheus_client's metric families
    hold it, from the same state), so anything reading the registry the usual way -
    ``get_sample_value``, prometheus_client's own ``generate_latest`` - sees the same
    content::

        PrerenderedFamily(CounterMetricFamily("x", "X.", labels=["a"]),
                          [b'x_total{a="1"} 2.0\\n'], ("x_total",), ("a",), build)
    """

    def __init__(self, empty: Metric, lines: list[bytes], sample_names: tuple[str, ...],
                 label_names: tuple[str, ...], build: Callable[[], Metric]) -> None:
        super().__init__(empty.name, empty.documentation, empty.type, empty.unit)
        self.lines = lines
        self.sample_names = sample_names
        self.label_names = label_names
        self._build: Callable[[], Metric] | None = build

    @property
    def samples(self) -> list[Sample]:
        if self._build is not None:
            self._samples = self._build().samples
            self._build = None
        return self._samples

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        self._samples = value
        self._build = None

    def writes_plainly(self, escaping: str) -> bool:
        """Whether ``escaping`` leaves every name of the lines as it is."""
        return _plain(self.name, self.sample_names, self.label_names, escaping)


@lru_cache(maxsize=1024)
def _plain(name: str, sample_names: tuple[str, ...], label_names: tuple[str, ...],
           escaping: str) -> bool:
    return escaping in _SAME_NAME_ESCAPINGS and all(
        _PLAIN_NAME.fullmatch(n) for n in (name, *sample_names, *label_names))


class _Families:
    """A collector of given families, to hand a run of them to prometheus_client."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _stock_text(families: list[Metric], escaping: str) -> bytes:
    return text_format.generate_latest(_Families(families), escaping=escaping)


def _stock_openmetrics(families: list[Metric], escaping: str, version: str) -> bytes:
    body: bytes = openmetrics.generate_latest(  # type: ignore[no-untyped-call]
        _Families(families), escaping=escaping, version=version)
    return body[:-len(EOF)]  # one "# EOF" ends the whole body


@lru_cache(maxsize=256)
def _header(name: str, documentation: str, typ: str, unit: str, escaping: str,
            version: str | None) -> bytes:
    # prometheus_client's own HELP/TYPE/UNIT lines (name munging, help escaping);
    # version None for the text format.
    empty = [Metric(name, documentation, typ, unit)]
    if version is None:
        return _stock_text(empty, escaping)
    return _stock_openmetrics(empty, escaping, version)


def _render(registry: Collector, escaping: str, version: str | None, end: bytes = b"") -> bytes:
    parts: list[bytes] = []
    waiting: list[Metric] = []  # a run of families prometheus_client renders itself

    def flush() -> None:
        if waiting:
            parts.append(_stock_text(waiting, escaping) if version is None
                         else _stock_openmetrics(waiting, escaping, version))
            waiting.clear()

    for family in registry.collect():
        if isinstance(family, PrerenderedFamily) and family.writes_plainly(escaping):
            flush()
            parts.append(_header(family.name, family.documentation, family.type,
                                 family.unit, escaping, version))
            parts.extend(family.lines)
        else:
            waiting.append(family)
    flush()
    parts.append(end)  # here, not added to the joined body: that would copy it again
    return b"".join(parts)


def generate_latest(registry: Collector, escaping: str = UNDERSCORES) -> bytes:
    """What ``prometheus_client.exposition.generate_latest`` returns for ``registry``."""
    return _render(registry, escaping, None)


def generate_openmetrics(registry: Collector, escaping: str = UNDERSCORES,
                         version: str = "1.0.0") -> bytes:
    """What ``prometheus_client.openmetrics.exposition.generate_latest`` returns."""
    return _render(registry, escaping, version, EOF)


def choose_encoder(accept_header: str) -> tuple[Callable[[Collector], bytes], str]:
    """prometheus_client's content negotiation (``choose_encoder``), with the encoders
    here in place of its own: same content types, same escaping and version."""
    encoder, content_type = text_format.choose_encoder(accept_header)
    func = encoder.func if isinstance(encoder, partial) else encoder
    keywords = encoder.keywords if isinstance(encoder, partial) else {}
    if func is text_format.generate_latest:
        return partial(generate_latest, **keywords), content_type
    if func is openmetrics.generate_latest:
        return partial(generate_openmetrics, **keywords), content_type
    return encoder, content_type  # a format added upstream: its own encoder
