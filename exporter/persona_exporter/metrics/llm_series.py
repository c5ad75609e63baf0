"""The LLM-call families, kept in plain numbers and exposed by a collector.

Every instrumented LLM call updates six series (requests, four token types, cost) and one
or two histograms. Through prometheus_client's instruments that is seven locked updates,
about 2.7 us here; one lock per label tuple around plain additions costs about 0.7 us. So
these families live in :class:`LLMSeries` objects, and :class:`LLMCollector` turns them
into metric families on each scrape - the pull-source pattern of prometheus_client.

Those families are written as text here rather than as Sample objects for
prometheus_client to format (see ``exposition``): each series' label prefixes are escaped
once, on its first scrape, and its lines are kept until it changes (``LLMSeries.version``),
so a scrape formats only the series written since the last one.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import accumulate
from operator import add, itemgetter
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..catalog import TOKEN_TYPES, spec
from .exposition import SMALL, PrerenderedFamily, escape_label_value, format_value

REQUESTS = spec("persona_llm_requests_total")
TOKENS = spec("persona_llm_tokens_total")
COST = spec("persona_llm_cost_usd_total")
DURATION = spec("persona_llm_request_duration_seconds")
FIRST_CHUNK = spec("persona_llm_time_to_first_chunk_seconds")
ACCEPTED = spec("persona_exporter_events_accepted_total")

DURATION_BOUNDS = DURATION.buckets
FIRST_CHUNK_BOUNDS = FIRST_CHUNK.buckets


class LLMSeries:
    """The running totals of one (persona, chatmode, model, provider) tuple.

    Writers hold ``lock`` while adding; ``tokens`` is ordered as ``TOKEN_TYPES``; the
    histogram count lists have one slot per bucket bound plus one for +Inf. ``version``
    goes up, under ``lock``, with every change (a writer that sets the fields itself
    must raise it too): a scrape reuses the series' lines while it stays the same.
    ``exposition`` belongs to the collector's renderer.
    """

    __slots__ = ("labels", "lock", "requests", "tokens", "cost", "duration_counts",
                 "duration_sum", "first_chunk_counts", "first_chunk_sum", "version",
                 "exposition")

    def __init__(self, labels: tuple[str, str, str, str]) -> None:
        self.labels = labels
        self.lock = threading.Lock()
        self.requests = 0
        self.tokens = [0, 0, 0, 0]
        self.cost = 0.0
        self.duration_counts = [0] * (len(DURATION_BOUNDS) + 1)
        self.duration_sum = 0.0
        self.first_chunk_counts = [0] * (len(FIRST_CHUNK_BOUNDS) + 1)
        self.first_chunk_sum = 0.0
        self.version = 0
        self.exposition: _SeriesLines | None = None

    def record(self, input_tokens: int, output_tokens: int, cache_read: int, reasoning: int,
               cost: float | None, duration: float, first_chunk: float | None) -> None:
        # bisect_left finds the first bound >= value: Prometheus buckets are "le".
        slot = bisect_left(DURATION_BOUNDS, duration)
        with self.lock:
            self.version += 1
            self.requests += 1
            tokens = self.tokens
            tokens[0] += input_tokens
            tokens[1] += output_tokens
            tokens[2] += cache_read
            tokens[3] += reasoning
            if cost:
                self.cost += cost
            self.duration_counts[slot] += 1
            self.duration_sum += duration
            if first_chunk is not None:
                self.first_chunk_counts[bisect_left(FIRST_CHUNK_BOUNDS, first_chunk)] += 1
                self.first_chunk_sum += first_chunk

    def snapshot(self) -> tuple[int, list[int], float, list[int], float, list[int], float]:
        with self.lock:
            return (self.requests, list(self.tokens), self.cost, list(self.duration_counts),
                    self.duration_sum, list(self.first_chunk_counts), self.first_chunk_sum)

    def versioned_snapshot(self) -> tuple[int, Snapshot]:
        """``(version, snapshot())``, read together."""
        with self.lock:
            return self.version, (
                self.requests, list(self.tokens), self.cost, list(self.duration_counts),
                self.duration_sum, list(self.first_chunk_counts), self.first_chunk_sum)


Snapshot = tuple[int, list[int], float, list[int], float, list[int], float]


class LLMCollector(Collector):
    """Expose every LLMSeries, plus ``persona_exporter_events_accepted_total``: each
    generation adds exactly one request, so its accepted count is the requests' sum and
    the hot path need not count it twice."""

    def __init__(self) -> None:
        self._series: list[LLMSeries] = []
        self._lock = threading.Lock()
        self._accepted: dict[str, int] = {}
        # The renderer's: held by one collect() at a time.
        self._render_lock = threading.Lock()
        self._histograms: dict[tuple[str, str, str], _HistogramLines] = {}
        self._grouped = 0  # the first _grouped series have their lines and histogram
        self._accepted_prefixes: dict[str, str] = {}

    def add(self, labels: tuple[str, str, str, str]) -> LLMSeries:
        series = LLMSeries(labels)
        with self._lock:
            self._series.append(series)
        return series

    def count_accepted(self, event_type: str) -> None:
        """Count an accepted event other than a generation."""
        with self._lock:
            self._accepted[event_type] = self._accepted.get(event_type, 0) + 1

    def accepted(self) -> dict[str, int]:
        """Accepted events other than generations, by type."""
        with self._lock:
            return dict(self._accepted)

    def restore_accepted(self, counts: dict[str, int]) -> None:
        with self._lock:
            self._accepted.update(counts)

    def init_accepted(self, event_types: tuple[str, ...]) -> None:
        with self._lock:
            for event_type in event_types:
                self._accepted.setdefault(event_type, 0)

    def describe(self) -> Iterator[Metric]:
        # Names only, so the registry refuses a second collector with the same families.
        yield from self._families()

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily,
                                 HistogramMetricFamily, HistogramMetricFamily,
                                 CounterMetricFamily]:
        return (
            CounterMetricFamily(REQUESTS.name, REQUESTS.help, labels=REQUESTS.labels),
            CounterMetricFamily(TOKENS.name, TOKENS.help, labels=TOKENS.labels, unit=TOKENS.unit),
            CounterMetricFamily(COST.name, COST.help, labels=COST.labels, unit=COST.unit),
            HistogramMetricFamily(DURATION.name, DURATION.help, labels=DURATION.labels,
                                  unit=DURATION.unit),
            HistogramMetricFamily(FIRST_CHUNK.name, FIRST_CHUNK.help, labels=FIRST_CHUNK.labels,
                                  unit=FIRST_CHUNK.unit),
            CounterMetricFamily(ACCEPTED.name, ACCEPTED.help, labels=ACCEPTED.labels),
        )

    def collect(self) -> Iterator[Metric]:
        """The six families, their lines written from each series' state (see
        ``exposition``); their ``samples``, when something reads them, hold the same
        numbers as prometheus_client's metric families."""
        with self._render_lock:
            # The list is taken under the render lock: a collect() holding an older,
            # shorter list must not group after one holding a newer list (it would move
            # _grouped back, and the next scrape would add those series to their
            # histogram a second time).
            with self._lock:
                series = list(self._series)
                other_accepted = dict(self._accepted)
            self._group(series)
            counters, snapshots = _series_pass(series)
            durations, first_chunks = [], []
            for histogram in self._histograms.values():
                if histogram.dirty:
                    histogram.update()
                durations.append(histogram.duration)
                first_chunks.append(histogram.first_chunk)
        other_accepted["llm_generation"] = sum(map(itemgetter(0), snapshots))
        accepted = sorted(other_accepted.items())
        accepted_lines = [f"{self._accepted_prefix(t)}{format_value(n)}\n".encode()
                          for t, n in accepted]
        labels = [s.labels for s in series]
        stock: list[tuple[Metric, ...]] = []

        def build(index: int) -> Metric:
            if not stock:
                stock.append(_stock_families(self._families(), zip(labels, snapshots,
                                                                    strict=True), accepted))
            return stock[0][index]

        for index, (empty, family_lines) in enumerate(zip(
                self._families(), (*counters, durations, first_chunks, accepted_lines),
                strict=True)):
            yield _prerendered(empty, family_lines, partial(build, index))

    def _group(self, series: list[LLMSeries]) -> None:
        """Give the series added since the last scrape their lines and their histogram
        series: the histograms have no chatmode label, so the tuples that differ only in
        it share one. Series are only ever appended, so the histograms' order stays that
        of their first series, as prometheus_client's families had it."""
        for s in series[self._grouped:]:
            key = (s.labels[0], s.labels[2], s.labels[3])
            histogram = self._histograms.get(key)
            if histogram is None:
                histogram = self._histograms[key] = _HistogramLines(key)
            histogram.members.append(s)
            histogram.dirty = True
            s.exposition = _SeriesLines(s.labels, histogram)
        self._grouped = len(series)

    def _accepted_prefix(self, event_type: str) -> str:
        prefix = self._accepted_prefixes.get(event_type)
        if prefix is None:
            prefix = self._accepted_prefixes[event_type] = _prefix(
                ACCEPTED.name, _escaped(ACCEPTED.labels, (event_type,)))
        return prefix


def _series_pass(series: list[LLMSeries]) -> tuple[
        tuple[list[bytes], list[bytes], list[bytes]], list[Snapshot]]:
    """The counter families' lines of every series (written again for those that
    changed, whose histogram series is then due too) and the state they show. Nothing
    is allocated per unchanged series: at 100k series the garbage collector's passes
    over new objects cost as much as the rest."""
    requests, tokens, cost, snapshots = [], [], [], []
    for s in series:
        lines: _SeriesLines = s.exposition  # type: ignore[assignment]  # set by _group
        if lines.version != s.version:
            lines.update(*s.versioned_snapshot())
        requests.append(lines.requests)
        tokens.append(lines.tokens)
        cost.append(lines.cost)
        snapshots.append(lines.snapshot)
    return (requests, tokens, cost), snapshots


class _SeriesLines:
    """One LLMSeries' lines of the three counter families (UTF-8, ready to send), and
    the state they show. Only the escaped label text is kept besides, not a prefix per
    line: memory per series matters at 100k series."""

    __slots__ = ("cost", "histogram", "labels", "requests", "snapshot", "token_head",
                 "token_tail", "tokens", "version")

    def __init__(self, labels: tuple[str, str, str, str], histogram: _HistogramLines) -> None:
        pairs = _escaped(REQUESTS.labels, labels)
        self.labels = _label_text(pairs)
        self.token_head, self.token_tail = _open_label(TOKENS.name, pairs, TOKENS.labels[-1])
        self.histogram = histogram
        self.version = -1
        self.snapshot: Snapshot = _ZERO
        self.requests = self.tokens = self.cost = b""

    def update(self, version: int, snapshot: Snapshot) -> None:
        requests, tokens, cost = snapshot[0], snapshot[1], snapshot[2]
        self.version, self.snapshot = version, snapshot
        self.requests = f"{REQUESTS.name}{{{self.labels}}} {format_value(requests)}\n".encode()
        self.tokens = _counts_text(self.token_head, _TOKEN_TYPE_TEXTS, self.token_tail,
                                   tokens).encode()
        self.cost = f"{COST.name}{{{self.labels}}} {format_value(cost)}\n".encode()
        self.histogram.dirty = True


class _HistogramLines:
    """The two histograms' lines of one (persona, model, provider), written again when
    one of its member series changed."""

    __slots__ = ("bucket_head", "bucket_tail", "dirty", "duration", "first_chunk", "labels",
                 "members")

    def __init__(self, key: tuple[str, str, str]) -> None:
        # The two histograms have the same labels and buckets (checked at import).
        pairs = _escaped(DURATION.labels, key)
        self.labels = _label_text(pairs)
        self.bucket_head, self.bucket_tail = _open_label("", pairs, "le")
        self.members: list[LLMSeries] = []
        self.dirty = True
        self.duration = self.first_chunk = b""

    def update(self) -> None:
        snapshots = [s.exposition.snapshot for s in self.members]  # type: ignore[union-attr]
        d_counts, d_sum = _merged([(s[3], s[4]) for s in snapshots])
        f_counts, f_sum = _merged([(s[5], s[6]) for s in snapshots])
        self.duration = self._text(DURATION.name, d_counts, d_sum).encode()
        self.first_chunk = self._text(FIRST_CHUNK.name, f_counts, f_sum).encode()
        self.dirty = False

    def _text(self, name: str, counts: list[int], total: float) -> str:
        cumulative = list(accumulate(counts))
        return (_counts_text(f"{name}_bucket{self.bucket_head}", _LE_TEXTS, self.bucket_tail,
                             cumulative)
                + f"{name}_count{{{self.labels}}} {format_value(cumulative[-1])}\n"
                  f"{name}_sum{{{self.labels}}} {format_value(total)}\n")


_ZERO: Snapshot = (0, [], 0.0, [], 0.0, [], 0.0)


def _escaped(names: tuple[str, ...], values: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(k, escape_label_value(v)) for k, v in zip(names, values, strict=True)]


def _label_text(escaped: list[tuple[str, str]]) -> str:
    """``k="v",...`` from escaped pairs, sorted as ``sample_line`` sorts them."""
    return ",".join([f'{k}="{v}"' for k, v in sorted(escaped)])


def _prefix(sample_name: str, escaped: list[tuple[str, str]]) -> str:
    return f"{sample_name}{{{_label_text(escaped)}}} "


def _open_label(sample_name: str, escaped: list[tuple[str, str]],
                name: str) -> tuple[str, str]:
    """The text before and after the value of label ``name``, which sorts into one place
    among the others whatever its value."""
    before = _label_text([(k, v) for k, v in escaped if k < name])
    after = _label_text([(k, v) for k, v in escaped if k > name])
    return (f"{sample_name}{{{before}{',' if before else ''}{name}=\"",
            f"\"{',' if after else ''}{after}}} ")


def _merged(parts: list[tuple[list[int], float]]) -> tuple[list[int], float]:
    # In series order, as _merge adds them: the float sum must come out the same.
    counts, total = parts[0]
    for more, subtotal in parts[1:]:
        counts = list(map(add, counts, more))
        total = total + subtotal
    return counts, total


def _counts_text(head: str, values: tuple[str, ...], tail: str, counts: list[int]) -> str:
    """One line per count: ``head`` + the open label's value + ``tail`` + the count."""
    if all(type(c) is int and 0 <= c < SMALL for c in counts):
        # format_value's result for these, without a call per line
        return "".join([f"{head}{v}{tail}{c}.0\n" for v, c in zip(values, counts, strict=True)])
    return "".join([f"{head}{v}{tail}{format_value(c)}\n"
                    for v, c in zip(values, counts, strict=True)])


def _prerendered(empty: Metric, lines: list[bytes], build: Any) -> PrerenderedFamily:
    labels = _LABEL_NAMES[empty.name]
    if empty.type == "histogram":
        sample_names = tuple(empty.name + s for s in ("_bucket", "_count", "_sum"))
        labels = (*labels, "le")
    else:
        sample_names = (empty.name + "_total",)
    return PrerenderedFamily(empty, lines, sample_names, labels, build)


def _stock_families(families: tuple[Metric, ...],
                    taken: Iterable[tuple[tuple[str, str, str, str], Snapshot]],
                    accepted: list[tuple[str, int]]) -> tuple[Metric, ...]:
    """The six families as prometheus_client metric families, from the same state."""
    requests, tokens, cost, duration, first_chunk, accepted_family = families
    durations: dict[tuple[str, str, str], tuple[list[int], float]] = {}
    first_chunks: dict[tuple[str, str, str], tuple[list[int], float]] = {}
    for labels, (n, token_counts, usd, d_counts, d_sum, f_counts, f_sum) in taken:
        requests.add_metric(labels, n)  # type: ignore[attr-defined]
        for token_type, value in zip(TOKEN_TYPES, token_counts, strict=True):
            tokens.add_metric((*labels, token_type), value)  # type: ignore[attr-defined]
        cost.add_metric(labels, usd)  # type: ignore[attr-defined]
        key = (labels[0], labels[2], labels[3])
        _merge(durations, key, d_counts, d_sum)
        _merge(first_chunks, key, f_counts, f_sum)
    for key, (counts, total) in durations.items():
        duration.add_metric(key, _buckets(DURATION_BOUNDS, counts), total)  # type: ignore[attr-defined]
    for key, (counts, total) in first_chunks.items():
        first_chunk.add_metric(  # type: ignore[attr-defined]
            key, _buckets(FIRST_CHUNK_BOUNDS, counts), total)
    for event_type, value in accepted:
        accepted_family.add_metric((event_type,), value)  # type: ignore[attr-defined]
    return families


def _merge(into: dict[tuple[str, str, str], tuple[list[int], float]], key: tuple[str, str, str],
           counts: list[int], total: float) -> None:
    seen = into.get(key)
    if seen is None:
        into[key] = (counts, total)
    else:
        into[key] = ([a + b for a, b in zip(seen[0], counts, strict=True)], seen[1] + total)


def _buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    cumulative = list(accumulate(counts))
    edges = (*bounds, float("inf"))
    return [(_go_float(b), float(c)) for b, c in zip(edges, cumulative, strict=True)]


def _go_float(value: float) -> str:
    # The "le" label as prometheus_client's own histograms write it ("0.01", "+Inf").
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


_LABEL_NAMES = {REQUESTS.name.removesuffix("_total"): REQUESTS.labels,
                TOKENS.name.removesuffix("_total"): TOKENS.labels,
                COST.name.removesuffix("_total"): COST.labels,
                DURATION.name: DURATION.labels, FIRST_CHUNK.name: FIRST_CHUNK.labels,
                ACCEPTED.name.removesuffix("_total"): ACCEPTED.labels}

if (DURATION.labels, DURATION.buckets) != (FIRST_CHUNK.labels, FIRST_CHUNK.buckets):
    raise RuntimeError("the LLM histograms differ in labels or buckets: _HistogramLines "
                       "writes both from one label text")
_LE_TEXTS = tuple(_go_float(b) for b in (*DURATION.buckets, float("inf")))
_TOKEN_TYPE_TEXTS = tuple(escape_label_value(t) for t in TOKEN_TYPES)
