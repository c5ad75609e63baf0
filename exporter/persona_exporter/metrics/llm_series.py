"""The LLM-call families, kept in plain numbers and exposed by a collector.

Every instrumented LLM call updates six series (requests, four token types, cost) and one
or two histograms. Through prometheus_client's instruments that is seven locked updates,
about 2.7 us here; one lock per label tuple around plain additions costs about 0.7 us. So
these families live in :class:`LLMSeries` objects, and :class:`LLMCollector` turns them
into metric families on each scrape - the pull-source pattern of prometheus_client - while
exposition stays prometheus_client's own.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..catalog import TOKEN_TYPES, spec

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
    histogram count lists have one slot per bucket bound plus one for +Inf.
    """

    __slots__ = ("labels", "lock", "requests", "tokens", "cost", "duration_counts",
                 "duration_sum", "first_chunk_counts", "first_chunk_sum")

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

    def record(self, input_tokens: int, output_tokens: int, cache_read: int, reasoning: int,
               cost: float | None, duration: float, first_chunk: float | None) -> None:
        # bisect_left finds the first bound >= value: Prometheus buckets are "le".
        slot = bisect_left(DURATION_BOUNDS, duration)
        with self.lock:
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


class LLMCollector(Collector):
    """Expose every LLMSeries, plus ``persona_exporter_events_accepted_total``: each
    generation adds exactly one request, so its accepted count is the requests' sum and
    the hot path need not count it twice."""

    def __init__(self) -> None:
        self._series: list[LLMSeries] = []
        self._lock = threading.Lock()
        self._accepted: dict[str, int] = {}

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
        requests, tokens, cost, duration, first_chunk, accepted = self._families()
        with self._lock:
            series = list(self._series)
            other_accepted = dict(self._accepted)
        # The histograms have no chatmode label: sum the tuples that differ only in it.
        durations: dict[tuple[str, str, str], tuple[list[int], float]] = {}
        first_chunks: dict[tuple[str, str, str], tuple[list[int], float]] = {}
        total_requests = 0
        for s in series:
            n, token_counts, usd, d_counts, d_sum, f_counts, f_sum = s.snapshot()
            total_requests += n
            requests.add_metric(s.labels, n)
            for token_type, value in zip(TOKEN_TYPES, token_counts, strict=True):
                tokens.add_metric((*s.labels, token_type), value)
            cost.add_metric(s.labels, usd)
            key = (s.labels[0], s.labels[2], s.labels[3])
            _merge(durations, key, d_counts, d_sum)
            _merge(first_chunks, key, f_counts, f_sum)
        for key, (counts, total) in durations.items():
            duration.add_metric(key, _buckets(DURATION_BOUNDS, counts), total)
        for key, (counts, total) in first_chunks.items():
            first_chunk.add_metric(key, _buckets(FIRST_CHUNK_BOUNDS, counts), total)
        other_accepted["llm_generation"] = total_requests
        for event_type, value in sorted(other_accepted.items()):
            accepted.add_metric((event_type,), value)
        yield from (requests, tokens, cost, duration, first_chunk, accepted)


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
