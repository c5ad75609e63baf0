"""The configuration file: persona budgets, chatmode allocations, model prices, label caps.

``load_config(path)`` returns a valid :class:`Config` or raises :class:`ConfigError` whose
message names the file, the key and what was expected, e.g.::

    budgets.yaml: personas.backend-engineer.tokens.24h: expected an integer >= 1, got -5

Example::

    personas:
      backend-engineer:
        tokens: {24h: 2000000, 7d: 10000000}   # input + output tokens per window
        cost_usd: {30d: 400}                    # optional
    chatmodes:
      package-release: {tokens_per_run: 5000}
    models:                                     # USD per million tokens
      gpt-4o: {provider: openai, input: 2.5, output: 10, cache_read: 1.25}
    limits:                                     # cardinality caps per label
      persona: 50
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import catalog
from .events import NAME_MAX_LENGTH, NAME_PATTERN, short_repr

Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)]
Window = Literal["1h", "24h", "7d", "30d"]
PositiveInt = Annotated[int, Field(ge=1, strict=True)]
NonNegativeInt = Annotated[int, Field(ge=0, strict=True)]
Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)]

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PersonaBudget(_Section):
    tokens: dict[Window, PositiveInt] = Field(default_factory=dict)
    cost_usd: dict[Window, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )


class ChatmodeBudget(_Section):
    tokens_per_run: PositiveInt | None = None


class ModelPrice(_Section):
    """Prices in US dollars per million tokens."""

    provider: Name = "unknown"
    input: Price = 0.0
    output: Price = 0.0
    # Cached prompt tokens are billed at this rate instead of ``input`` when it is given.
    cache_read: Price | None = None

    def rates(self) -> tuple[float, float, float]:
        """(input, output, cache_read) prices per token, for :func:`cost_usd`."""
        cache_read = self.input if self.cache_read is None else self.cache_read
        return self.input / 1e6, self.output / 1e6, cache_read / 1e6

    def cost_usd(self, input_tokens: int, output_tokens: int, cache_read_tokens: int) -> float:
        return cost_usd(self.rates(), input_tokens, output_tokens, cache_read_tokens)


def cost_usd(rates: tuple[float, float, float], input_tokens: int, output_tokens: int,
             cache_read_tokens: int) -> float:
    """The one pricing formula: cached prompt tokens at the cache rate, the rest of the
    prompt at the input rate, the completion at the output rate."""
    cached = min(cache_read_tokens, input_tokens)
    return (input_tokens - cached) * rates[0] + output_tokens * rates[1] + cached * rates[2]


class Limits(_Section):
    """Cardinality caps: distinct values per label before new ones become the overflow value."""

    persona: PositiveInt = 100
    chatmode: PositiveInt = 50
    model: PositiveInt = 100
    provider: PositiveInt = 20
    workflow: PositiveInt = 100
    stage: PositiveInt = 200
    error_type: PositiveInt = 50
    # Distinct label combinations per family (the per-label caps alone allow their
    # product: 100 personas x 50 chatmodes x 100 models). Past it, recordings go to one
    # series whose labels are all "__overflow__".
    series: PositiveInt = 500

    def cap(self, dimension: str) -> int:
        return int(getattr(self, dimension))


class Server(_Section):
    """``persona-exporter serve`` settings. The ingest token is never in this file: it comes
    from ``PERSONA_EXPORTER_TOKEN`` or the file named by ``token_file``."""

    listen_address: str | None = None
    token_file: str | None = None
    protect_metrics: bool = False
    max_body_bytes: PositiveInt = 1_048_576
    max_events_per_batch: PositiveInt = 1000
    remembered_batches: PositiveInt = 100_000
    # Durable state (see server/storage.py); without it counters live in memory only.
    storage_path: str | None = None
    storage_fsync: bool = False
    # Slow clients: the request line and headers must arrive within header_timeout_seconds
    # of the connection (or of its previous response); an idle keep-alive connection
    # closes after keepalive_timeout_seconds; a body must arrive within
    # body_timeout_seconds. Past max_connections (default: from `ulimit -n`, at most 4096)
    # the connection idle the longest is closed.
    header_timeout_seconds: Seconds = 10.0
    keepalive_timeout_seconds: Seconds = 5.0
    body_timeout_seconds: Seconds = 30.0
    max_connections: PositiveInt | None = None
    # Batches read and waiting for the ingest thread; past this, 503 with Retry-After.
    max_queued_batches: PositiveInt = 64
    # A body up to this size that finds the ingest thread idle is applied on the event
    # loop (about 1 ms for 32 KiB), cheaper than the hop to the thread; 0: always the thread.
    inline_batch_bytes: NonNegativeInt = 32 * 1024


# Where a received span's persona and chatmode are read from (see genai/personas.py).
# Default order, from ../shared/notes/otlp-ingest.md (d): an explicit attribute, the
# metadata each ecosystem propagates, the agent's name, then the resource. A user id is
# not in the list: in most instrumentations it is the human, and it has high cardinality.
DEFAULT_PERSONA_ATTRIBUTES = (
    "persona.name", "persona",
    "langfuse.observation.metadata.persona", "langfuse.trace.metadata.persona",
    "traceloop.association.properties.persona", "ai.telemetry.metadata.persona",
    "ai.settings.context.persona", "metadata.persona",
    "gen_ai.agent.name", "agent.name",
)
DEFAULT_CHATMODE_ATTRIBUTES = (
    "chatmode.name", "chatmode",
    "langfuse.observation.metadata.chatmode", "langfuse.trace.metadata.chatmode",
    "traceloop.association.properties.chatmode", "ai.telemetry.metadata.chatmode",
    "ai.settings.context.chatmode", "metadata.chatmode",
)
AttributeName = Annotated[str, Field(min_length=1, max_length=256)]


class Resolution(_Section):
    """How one label (persona or chatmode) is read from a span: the first of ``attributes``
    present on the span, else on its nearest ancestor, else on any span of its trace, else
    the first of ``resource_attributes``; then the first ``map`` pattern that matches
    (a Python regular expression, searched) names the canonical value."""

    attributes: tuple[AttributeName, ...]
    resource_attributes: tuple[AttributeName, ...]
    map: dict[str, Name] = Field(default_factory=dict)

    @field_validator("map")
    @classmethod
    def _patterns_compile(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return value


def _persona_resolution() -> Resolution:
    return Resolution(attributes=DEFAULT_PERSONA_ATTRIBUTES,
                      resource_attributes=("persona.name", "persona"))


def _chatmode_resolution() -> Resolution:
    return Resolution(attributes=DEFAULT_CHATMODE_ATTRIBUTES,
                      resource_attributes=("chatmode.name", "chatmode"))


class Otlp(_Section):
    """The OTLP traces receiver (``POST /v1/traces``): how spans become persona metrics."""

    persona: Resolution = Field(default_factory=_persona_resolution)
    chatmode: Resolution = Field(default_factory=_chatmode_resolution)
    # An LLM span whose persona is not on it waits this long for an ancestor (spans are
    # exported on end, so the root usually arrives last); then it is recorded as unknown.
    hold_seconds: Annotated[float, Field(ge=0, le=600, allow_inf_nan=False)] = 30.0
    # Memory bounds of that wait: spans held, and traces remembered (LRU).
    max_held_spans: PositiveInt = 100_000
    max_traces: PositiveInt = 100_000
    # Span names or gen_ai.operation.name values that make a root span a workflow run
    # (its child agent spans are the stages).
    workflow_spans: tuple[AttributeName, ...] = ("invoke_workflow", "invoke_agent")
    # A request body's limit, on the wire and once decompressed: spans carry prompts and
    # completions, so it is larger than the events' (the Collector's default is 20 MiB).
    max_body_bytes: PositiveInt = 8 * 1_048_576
    # The OTLP/gRPC listener (host:port), off unless set.
    grpc_listen_address: str | None = None


_UPSTREAM_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_HEADER_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # an HTTP token (RFC 9110 5.6.2)


def _env_name(value: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,255}", value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


class OtlpUpstream(_Section):
    """One upstream of ``otlp_forward:`` (see server/forward.py): where received OTLP
    trace requests are passed on, unchanged. Credentials are never in this file: they are
    read from the environment variables (or the file) named here."""

    name: str
    # The full URL of the traces path. Kind langfuse without it: the exporter's own
    # LANGFUSE_BASE_URL or LANGFUSE_HOST (as for its own traces) + /api/public/otel/v1/traces.
    endpoint: str | None = None
    kind: Literal["langfuse", "otlp"] = "otlp"
    # "configured": the credentials below; "passthrough": the client's own Authorization.
    auth: Literal["configured", "passthrough"] = "configured"
    # kind langfuse: Basic base64(public:secret), as Langfuse's OTLP endpoint expects.
    public_key_env: EnvName = "LANGFUSE_PUBLIC_KEY"
    secret_key_env: EnvName = "LANGFUSE_SECRET_KEY"  # noqa: S105 - a variable's name
    # kind otlp: an optional bearer token, and extra headers (header name -> variable).
    bearer_token_env: EnvName | None = None
    bearer_token_file: str | None = None
    headers_env: dict[str, EnvName] = Field(default_factory=dict)
    connect_timeout_seconds: Seconds = 5.0
    timeout_seconds: Seconds = 10.0
    backoff_initial_seconds: Seconds = 0.5
    backoff_max_seconds: Seconds = 30.0
    # Without a spool, a request still failing after this long is dropped.
    give_up_after_seconds: Seconds = 300.0
    max_queue_bytes: PositiveInt = 16 * 1024 * 1024
    max_spool_bytes: PositiveInt = 256 * 1024 * 1024

    @field_validator("name")
    @classmethod
    def _name_is_a_label_and_a_directory(cls, value: str) -> str:
        import re

        if not re.fullmatch(_UPSTREAM_NAME, value):
            raise ValueError(f"{value!r} is not an upstream name (letters, digits, '_', '.', "
                             "'-', at most 64, not starting with a punctuation mark)")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_an_http_url(cls, value: str | None) -> str | None:
        problem = None if value is None else http_url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _otlp_needs_an_endpoint(self) -> OtlpUpstream:
        if self.endpoint is None and self.kind == "otlp":
            raise ValueError("endpoint is required for kind otlp (only a langfuse upstream "
                             "defaults to LANGFUSE_BASE_URL or LANGFUSE_HOST)")
        return self

    @field_validator("headers_env")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for header in value:
            if not re.fullmatch(_HEADER_NAME, header):
                raise ValueError(f"{header!r} is not an HTTP header name")
        return value


def http_url_problem(value: str) -> str | None:
    """Why ``value`` is not an http(s) URL an upstream can be reached at, or None."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(value)
        port_ok = url.port is None or url.port > 0
    except ValueError as exc:
        return f"{value!r} is not a URL: {exc}"
    if url.scheme not in ("http", "https") or not url.hostname or not port_ok \
            or url.username or url.password or any(c.isspace() for c in value):
        return (f"{value!r} is not an http(s) URL such as "
                "https://cloud.langfuse.com/api/public/otel/v1/traces (no credentials in it)")
    return None


def _distinct_upstreams(value: tuple[OtlpUpstream, ...]) -> tuple[OtlpUpstream, ...]:
    names = [upstream.name for upstream in value]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"the upstream name {name!r} is used twice (it names the "
                             "metrics' upstream label and the spool directory)")
    return value


class Config(_Section):
    personas: dict[Name, PersonaBudget] = Field(default_factory=dict)
    chatmodes: dict[Name, ChatmodeBudget] = Field(default_factory=dict)
    models: dict[Name, ModelPrice] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    server: Server = Field(default_factory=Server)
    otlp: Otlp = Field(default_factory=Otlp)
    otlp_forward: Annotated[tuple[OtlpUpstream, ...], AfterValidator(_distinct_upstreams)] = ()

    @field_validator("personas", "chatmodes", "models", "limits", "server", "otlp",
                     mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        # "personas:" with nothing under it is YAML null; read it as an empty section.
        return {} if value is None else value

    @field_validator("otlp_forward", mode="before")
    @classmethod
    def _none_is_no_upstream(cls, value: Any) -> Any:
        return () if value is None else value

    def allocation(self, chatmode: str) -> int | None:
        budget = self.chatmodes.get(chatmode)
        return budget.tokens_per_run if budget else None

    def price(self, model: str) -> ModelPrice | None:
        return self.models.get(model)


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and key."""


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the file is not UTF-8 text") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str = "<config>") -> Config:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_kind(data)}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(source, e) for e in exc.errors())) from None


def _describe(source: str, error: Any) -> str:
    # pydantic marks a failing dict key with a trailing "[key]"; the key itself is the
    # part before it, which is what a person wants to read.
    loc = [str(part) for part in error["loc"] if part != "[key]"]
    key = ".".join(loc)
    value = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        if tuple(error["loc"]) == ("server", "token"):
            return (f"{source}: server.token: the token is never written in the config file: "
                    "set PERSONA_EXPORTER_TOKEN, or put it alone in a file and name that "
                    "file in server.token_file")
        allowed = _allowed_keys(error["loc"])
        hint = f" (expected one of: {allowed})" if allowed else ""
        return f"{source}: {key}: unknown key{hint}"
    if kind == "literal_error" and error["loc"] and error["loc"][-1] == "[key]":
        return (
            f"{source}: {key}: unknown budget window {value!r} "
            f"(expected one of: {', '.join(catalog.BUDGET_WINDOWS)})"
        )
    if kind == "string_pattern_mismatch" or (kind == "string_too_long"):
        return (
            f"{source}: {key}: {value!r} is not a valid name "
            f"(1-{NAME_MAX_LENGTH} printable ASCII characters)"
        )
    if kind == "value_error":  # our validators' messages quote the value themselves
        return f"{source}: {key}: {error['ctx']['error']}"
    expected = _EXPECTED.get(kind)
    if expected is not None:
        ctx = error.get("ctx", {})
        return f"{source}: {key}: expected {expected.format(**ctx)}, got {_kind_and_value(value)}"
    return f"{source}: {key}: {error['msg']}, got {_kind_and_value(value)}"


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "greater_than_equal": "a number >= {ge}",
    "greater_than": "a number > {gt}",
    "less_than_equal": "a number <= {le}",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "dict_type": "a mapping",
    "tuple_type": "a list",
    "model_type": "a mapping",
    "string_type": "a string",
    "literal_error": "one of {expected}",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


def _allowed_keys(loc: tuple[Any, ...]) -> str:
    """The keys allowed where an unknown one was found, for the error message."""
    parents = [str(part) for part in loc[:-1]]
    model: type[BaseModel] = Config
    if parents[:1] == ["limits"] and len(parents) == 1:
        model = Limits
    elif parents[:1] == ["server"] and len(parents) == 1:
        model = Server
    elif parents[:1] == ["otlp_forward"] and len(parents) == 2:
        model = OtlpUpstream  # parents[1] is the upstream's index
    elif parents and parents[0] in _NAMED_SECTIONS and len(parents) == 2:
        model = _NAMED_SECTIONS[parents[0]]  # parents[1] is the persona/chatmode/model name
    elif parents:
        return ""
    return ", ".join(model.model_fields)


_NAMED_SECTIONS: dict[str, type[BaseModel]] = {
    "personas": PersonaBudget,
    "chatmodes": ChatmodeBudget,
    "models": ModelPrice,
}


def _kind(value: Any) -> str:
    names: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


def _kind_and_value(value: Any) -> str:
    return _kind(value) if isinstance(value, (dict, list)) else short_repr(value)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: YAML would silently keep the last one,
    so a persona listed twice would lose its first budget without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
