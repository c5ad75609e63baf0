"""A response without token usage: counted as 0 tokens, and said so, counted in
persona_exporter_internal_errors_total{component="usage",kind="missing"} and logged once
per model (a stream that was not asked for usage is the usual cause)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from persona_exporter import ObservableLLM, Telemetry, persona

from .conftest import sample

MISSING = {"component": "usage", "kind": "missing"}


def answer(**kwargs: Any) -> dict[str, Any]:
    if kwargs.get("fail"):
        raise TimeoutError("the provider timed out")
    if kwargs.get("with_usage"):
        return {"model": kwargs["model"], "usage": {"prompt_tokens": 10,
                                                    "completion_tokens": 5}}
    return {"model": kwargs["model"], "choices": []}  # no usage at all


def test_calls_without_usage_are_counted_and_logged_once_per_model(
        registry: CollectorRegistry, telemetry: Telemetry,
        caplog: pytest.LogCaptureFixture) -> None:
    chat = ObservableLLM(answer, provider="openai", telemetry=telemetry)
    with caplog.at_level(logging.WARNING, logger="persona_exporter"), \
            persona("qa-engineer", chatmode="bug-fix"):
        for model in ("gpt-4o", "gpt-4o", "o3-mini", "gpt-4o"):
            chat(model=model)
        chat(model="gpt-4o", with_usage=True)  # read: not missing
        with pytest.raises(TimeoutError):
            chat(model="gpt-4o", fail=True)  # failed: nothing to miss
    assert sample(registry, "persona_exporter_internal_errors_total", **MISSING) == 4
    lines = [r.getMessage() for r in caplog.records if "no token usage" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "model gpt-4o:" in lines[0] and "model o3-mini:" in lines[1]
    assert "include_usage" in lines[0] and 'kind="missing"' in lines[0]
    # still recorded as calls, with the tokens of the one response that had usage
    labels = {"persona": "qa-engineer", "chatmode": "bug-fix", "model": "gpt-4o",
              "provider": "openai"}
    assert sample(registry, "persona_llm_requests_total", **labels) == 5
    assert sample(registry, "persona_llm_tokens_total", **labels, token_type="input") == 10


def test_a_call_outside_any_context_without_usage_names_its_model(
        registry: CollectorRegistry, telemetry: Telemetry,
        caplog: pytest.LogCaptureFixture) -> None:
    chat = ObservableLLM(answer, telemetry=telemetry)
    with caplog.at_level(logging.WARNING, logger="persona_exporter"):
        chat(model="claude-sonnet-4")
    assert sample(registry, "persona_exporter_internal_errors_total", **MISSING) == 1
    assert any("model claude-sonnet-4:" in r.getMessage() for r in caplog.records)
    # outside any persona or workflow: persona "unknown", chatmode "none"
    assert sample(registry, "persona_llm_requests_total", persona="unknown", chatmode="none",
                  model="claude-sonnet-4", provider="unknown") == 1


class Chunks:
    """A stream object that is not a generator, as openai.Stream is."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self._chunks = iter(chunks)

    def __iter__(self) -> Chunks:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._chunks)


def chunks(model: str, usage_at_end: bool) -> list[dict[str, Any]]:
    """OpenAI's shape with stream_options={'include_usage': True}: every chunk has
    "usage": null except the last, which has no choices and the call's usage."""
    content = [{"model": model, "choices": [{"delta": {"content": "x"}}], "usage": None}
               for _ in range(3)]
    if not usage_at_end:
        return content
    return [*content, {"model": model, "choices": [],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 3}}]


def test_a_stream_stopped_before_its_usage_chunk_is_not_missing_usage(
        registry: CollectorRegistry, telemetry: Telemetry,
        caplog: pytest.LogCaptureFixture) -> None:
    """A consumer that stops a stream early (break, close) never sees its last chunk, where
    the usage is: nothing is misconfigured, so it is neither counted as missing usage nor
    answered with the include_usage advice. A stream read to its end without usage is."""
    def generate(**kwargs: Any) -> Any:
        yield from chunks(kwargs["model"], kwargs["usage_at_end"])

    streaming = ObservableLLM(generate, provider="openai", telemetry=telemetry)
    stream_object = ObservableLLM(lambda **kwargs: Chunks(chunks(kwargs["model"],
                                                                 kwargs["usage_at_end"])),
                                  provider="openai", telemetry=telemetry)
    with caplog.at_level(logging.WARNING, logger="persona_exporter"), persona("qa-engineer"):
        for llm in (streaming, stream_object):
            assert len(list(llm(model="gpt-4o", usage_at_end=True))) == 4
            for _ in llm(model="gpt-4o-early", usage_at_end=True):
                break  # stopped before the usage chunk
            stream = llm(model="gpt-4o-closed", usage_at_end=True)
            next(stream)
            stream.close()
        assert sample(registry, "persona_exporter_internal_errors_total", **MISSING) is None
        assert not [r for r in caplog.records if "no token usage" in r.getMessage()]
        for llm in (streaming, stream_object):
            assert len(list(llm(model="gpt-4o-no-usage", usage_at_end=False))) == 3
    assert sample(registry, "persona_exporter_internal_errors_total", **MISSING) == 2
    lines = [r.getMessage() for r in caplog.records if "no token usage" in r.getMessage()]
    assert len(lines) == 1 and "model gpt-4o-no-usage:" in lines[0], lines
    labels = {"persona": "qa-engineer", "chatmode": "none", "model": "gpt-4o",
              "provider": "openai"}
    assert sample(registry, "persona_llm_tokens_total", **labels, token_type="input") == 20
