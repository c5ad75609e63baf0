"""The real OpenAI and Anthropic SDKs, instrumented, talking to a provider on 127.0.0.1.

Their client methods are plain functions that return a response, a coroutine (async
clients) or a stream object: each must be measured to its real end, with its usage."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client import CollectorRegistry

from persona_exporter import ObservableLLM, Telemetry, persona

from .conftest import sample
from .provider_stub import provider

MESSAGES = [{"role": "user", "content": "hi"}]
DELAY = 0.2


def llm_labels(model: str, provider_name: str) -> dict[str, str]:
    return {"persona": "backend-engineer", "chatmode": "bug-fix", "model": model,
            "provider": provider_name}


def tokens(registry: CollectorRegistry, labels: dict[str, str]) -> dict[str, float | None]:
    return {t: sample(registry, "persona_llm_tokens_total", **labels, token_type=t)
            for t in ("input", "output", "cache_read", "reasoning")}


def duration(registry: CollectorRegistry, model: str, provider_name: str,
             suffix: str = "sum") -> float | None:
    return sample(registry, f"persona_llm_request_duration_seconds_{suffix}",
                  persona="backend-engineer", model=model, provider=provider_name)


@pytest.fixture
def tel(registry: CollectorRegistry) -> Telemetry:
    return Telemetry(registry=registry)


def test_openai_sync(tel: Telemetry, registry: CollectorRegistry) -> None:
    with provider(DELAY) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)
        chat = ObservableLLM(client.chat.completions.create, provider="openai", telemetry=tel)
        with persona("backend-engineer", chatmode="bug-fix"):
            response = chat(model="gpt-4o", messages=MESSAGES)
    assert isinstance(response, openai.types.chat.ChatCompletion)
    assert tokens(registry, llm_labels("gpt-4o", "openai")) == {
        "input": 120, "output": 30, "cache_read": 64, "reasoning": 10}
    assert (duration(registry, "gpt-4o", "openai") or 0) >= DELAY


def test_openai_async_client_is_measured_to_the_response(tel: Telemetry,
                                                         registry: CollectorRegistry) -> None:
    async def main(url: str) -> Any:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)
        chat = ObservableLLM(client.chat.completions.create, provider="openai", telemetry=tel)
        with persona("backend-engineer", chatmode="bug-fix"):
            return await chat(model="gpt-4o", messages=MESSAGES)

    with provider(DELAY) as url:
        response = asyncio.run(main(url))
    assert response.usage.prompt_tokens == 120
    assert tokens(registry, llm_labels("gpt-4o", "openai"))["input"] == 120
    assert (duration(registry, "gpt-4o", "openai") or 0) >= DELAY


def test_openai_stream_object_is_observed_and_still_itself(
        tel: Telemetry, registry: CollectorRegistry) -> None:
    with provider(DELAY) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)
        chat = ObservableLLM(client.chat.completions.create, provider="openai", telemetry=tel)
        with persona("backend-engineer", chatmode="bug-fix"):
            stream = chat(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                          stream_options={"include_usage": True})
        assert stream.response.status_code == 200  # the Stream's own attributes still work
        with stream:
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "done"
    labels = llm_labels("gpt-4o-mini", "openai")
    assert tokens(registry, labels)["output"] == 30
    assert sample(registry, "persona_llm_time_to_first_chunk_seconds_count",
                  persona="backend-engineer", model="gpt-4o-mini", provider="openai") == 1
    assert sample(registry, "persona_llm_requests_total", **labels) == 1


def test_openai_async_stream(tel: Telemetry, registry: CollectorRegistry) -> None:
    async def main(url: str) -> str:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)
        chat = ObservableLLM(client.chat.completions.create, provider="openai", telemetry=tel)
        with persona("backend-engineer", chatmode="bug-fix"):
            stream = await chat(model="gpt-4o", messages=MESSAGES, stream=True,
                                stream_options={"include_usage": True})
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        return "".join(parts)

    with provider(DELAY) as url:
        assert asyncio.run(main(url)) == "done"
    assert tokens(registry, llm_labels("gpt-4o", "openai"))["cache_read"] == 64
    assert (duration(registry, "gpt-4o", "openai") or 0) >= DELAY


def test_openai_errors_pass_through_and_are_counted(tel: Telemetry,
                                                    registry: CollectorRegistry) -> None:
    with provider() as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)
        chat = ObservableLLM(client.chat.completions.create, provider="openai", telemetry=tel)
        with persona("backend-engineer", chatmode="bug-fix"), \
                pytest.raises(openai.RateLimitError) as caught:
            chat(model="rate-limited", messages=MESSAGES)
    assert caught.value.status_code == 429
    assert sample(registry, "persona_llm_request_failures_total",
                  **llm_labels("rate-limited", "openai"), error_type="RateLimitError") == 1


def test_anthropic_counts_cache_reads_as_input(tel: Telemetry,
                                               registry: CollectorRegistry) -> None:
    with provider() as url:
        client = anthropic.Anthropic(base_url=url, api_key="test", max_retries=0)
        create = ObservableLLM(client.messages.create, provider="anthropic", telemetry=tel)
        with persona("backend-engineer", chatmode="bug-fix"):
            create(model="claude-sonnet-4", max_tokens=64, messages=MESSAGES)
    # input_tokens 20 + cache reads 100 + cache writes 5
    assert tokens(registry, llm_labels("claude-sonnet-4", "anthropic")) == {
        "input": 125, "output": 45, "cache_read": 100, "reasoning": 0}


def test_anthropic_stream_reads_usage_from_message_start_and_delta(
        tel: Telemetry, registry: CollectorRegistry) -> None:
    with provider() as url:
        client = anthropic.Anthropic(base_url=url, api_key="test", max_retries=0)
        create = ObservableLLM(client.messages.create, provider="anthropic", telemetry=tel)
        with persona("backend-engineer", chatmode="bug-fix"):
            events = [e.type for e in create(model="claude-sonnet-4", max_tokens=64,
                                             messages=MESSAGES, stream=True)]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert tokens(registry, llm_labels("claude-sonnet-4", "anthropic")) == {
        "input": 125, "output": 45, "cache_read": 100, "reasoning": 0}


def test_anthropic_async(tel: Telemetry, registry: CollectorRegistry) -> None:
    async def main(url: str) -> None:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="test", max_retries=0)
        create = ObservableLLM(client.messages.create, provider="anthropic", telemetry=tel)
        with persona("backend-engineer", chatmode="bug-fix"):
            await create(model="claude-sonnet-4", max_tokens=64, messages=MESSAGES)

    with provider(DELAY) as url:
        asyncio.run(main(url))
    assert tokens(registry, llm_labels("claude-sonnet-4", "anthropic"))["output"] == 45
    assert (duration(registry, "claude-sonnet-4", "anthropic") or 0) >= DELAY
