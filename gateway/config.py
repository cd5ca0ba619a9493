"""The YAML configuration: strict, typed, frozen, checked as a whole before anything serves.

Two phases, as in the peers worth copying: `parse()` turns YAML text into typed models
(unknown keys are errors, backends are tagged by `type`, `${ENV}` references resolved),
then `check()` validates cross-references (a route naming a backend that does not exist,
a model name claimed twice). Every problem is reported at once, each with the dotted
path of the bad field: `models[2].routes[0].backend: unknown backend 'opnai'`.

Secret values are read from the environment only through `${VAR}` references and are
held as `SecretStr`; no message here ever includes one.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.identity import DEFAULT_COUNT_TOKENS_PER_MINUTE, KEY_FORMAT, TEAM_ID, Limits, well_formed_key
from gateway.protocols.messages import DEFAULT_CAPS, MAX_TOKENS


class ConfigError(Exception):
    """A configuration with problems; `problems` holds one line per bad field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    # Seconds of upstream silence in a stream after which the client gets a `ping` event
    # (keeps proxies and client idle timeouts from cutting a slow first token).
    ping_interval: Annotated[float, Field(gt=0)] = 10.0
    # On SIGTERM: how long requests and streams in flight may run on after the listening
    # socket closes; what is left then is cancelled (a stream ends with an `error` event).
    drain_seconds: Annotated[float, Field(ge=0)] = 30.0
    # Slow clients (gateway/connections.py): seconds to send a request's headers (from the
    # accept, or from a kept-alive connection's next first byte) and then its body; past
    # either, 408 and the connection closes. Neither applies while the answer streams.
    header_timeout: Annotated[float, Field(gt=0)] = 10.0
    body_timeout: Annotated[float, Field(gt=0)] = 60.0
    # Seconds an idle kept-alive connection stays open; keep it longer than the idle
    # timeout of a proxy's pooled connections to the gateway.
    keepalive_timeout: Annotated[float, Field(gt=0)] = 75.0
    # Open connections per listener per worker process; past it, 503 overloaded_error.
    max_connections: Annotated[int, Field(ge=1)] = 4096
    # host:port of a second listener that alone serves /admin and /metrics (and the
    # probes); the client listener then answers them 404. Absent: one listener serves all.
    admin_listen: str | None = None
    # `Authorization: Bearer <token>` for /metrics. Absent or empty: /metrics is open.
    metrics_token: SecretStr | None = None

    @field_validator("admin_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                host_port(value)
            except ValueError:
                raise ValueError("must be host:port (127.0.0.1:9091; [::1]:9091 for IPv6)") from None
        return value

    @field_validator("metrics_token")
    @classmethod
    def _empty_is_off(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _admin_port_of_its_own(self) -> ServerConfig:
        if self.admin_listen is not None and host_port(self.admin_listen)[1] == self.port:
            raise ValidationError.from_exception_data(
                "server",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("server", "needs a port of its own, not server.port"),
                        loc=("admin_listen",),
                        input=None,
                    )
                ],
            )
        return self

    # A request's shape (`protocols.messages.RequestCaps`): past these, a 400 naming the
    # setting. Depth at most 200: the translation nests one level deeper, and orjson
    # encodes no deeper than 254.
    max_messages: Annotated[int, Field(ge=1)] = DEFAULT_CAPS.max_messages
    max_blocks_per_message: Annotated[int, Field(ge=1)] = DEFAULT_CAPS.max_blocks_per_message
    max_json_depth: Annotated[int, Field(ge=8, le=200)] = DEFAULT_CAPS.max_json_depth


class Timeouts(_Strict):
    """Seconds. `first_byte` bounds the wait for the upstream's response headers; `idle`
    the silence between two chunks of a stream; `total` the whole exchange; `keepalive`
    how long an idle pooled connection to this backend is reused (keep it below the
    server's own idle timeout: uvicorn's, in front of vLLM and many others, is 5 s)."""

    connect: Annotated[float, Field(gt=0)] = 10.0
    first_byte: Annotated[float, Field(gt=0)] = 120.0
    idle: Annotated[float, Field(gt=0)] = 120.0
    total: Annotated[float, Field(gt=0)] = 600.0
    keepalive: Annotated[float, Field(ge=0)] = 4.0


class ChatOptions(_Strict):
    """Overrides of the preset's Chat Completions dialect (see `translate/messages_chat/dialect.py`)."""

    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    top_k: bool | None = None
    sampling: bool | None = None
    max_stop_sequences: Annotated[int, Field(ge=1)] | None = None
    documents: bool | None = None
    image_urls: bool | None = None
    reasoning: Literal["none", "effort", "chat_template_kwargs", "deepseek"] | None = None
    reasoning_history: Literal["drop", "reasoning_content", "reasoning"] | None = None
    stream_usage: bool | None = None
    system_role: Literal["system", "developer"] | None = None
    drop_billing_header: bool | None = None
    send_user: bool | None = None
    tool_name_limit: Annotated[int, Field(ge=16)] | None = None


class BackendSettings(_Strict):
    """What every backend's settings hold, whatever its type.

    A backend type's settings are a subclass here that names the type in a `type`
    Literal (`type: Literal["openai"]`); defining it is all the configuration needs to
    accept the type (`backend_types`). Its implementation is paired with it in
    `gateway/backends/__init__.py`, the one registry of backend types. The registry
    cannot live here: backends import this module, and so do the store and the limiter,
    which must reach nothing of HTTP (`tests/unit/test_layering.py`)."""

    base_url: str
    api_key: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    # What the gateway holds of one answer, so a broken or hostile upstream cannot exhaust
    # a worker's memory: bytes of a whole answer (error bodies too) after decompression,
    # and of one line or event of a stream. Past either, the answer is a protocol error.
    max_response_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    max_event_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024
    # Narrowed to one Literal by each type's settings.
    type: str

    def provider(self) -> str | None:
        """The OpenTelemetry `gen_ai.provider.name` well-known value for this backend, if
        it has one (metrics label it so; otherwise by the backend's name)."""
        return None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


def _pattern(value: str) -> str:
    if not value.removeprefix("!"):
        raise ValueError("a pattern must not be empty")
    return value


# What a native backend lets through by default (`passthrough`, judged in
# gateway/passthrough.py). Betas: all but those that reach the organisation's own resources.
DEFAULT_BETAS = (
    "*",
    "!files-api-*",  # file sources and container uploads: the organisation's Files API
    "!mcp-client-*",  # `mcp_servers`: the upstream connects to servers the request names
    "!mcp-tunnels-*",  # MCP servers reached through the organisation's tunnels
    "!code-execution-*",  # containers, reusable by id, billed per container-hour
    "!skills-*",  # the organisation's skills, run in containers
    "!message-threads-*",  # `thread`: conversations held by the upstream, resumable by id
    "!user-profiles-*",  # the organisation's user profiles
)
# Client tools (the client runs them, whatever their schema's origin), web search (priced
# per search: `pricing.web_search_per_thousand`), web fetch (free but for its tokens) and
# tool search. Not code execution (containers), MCP toolsets or anything newer.
DEFAULT_TOOLS = (
    "custom",
    "bash_*",
    "text_editor_*",
    "computer_*",
    "memory_*",
    "web_search_*",
    "web_fetch_*",
    "tool_search_tool_*",
)
# What Claude Code and the SDKs send beyond the fields the gateway reads itself
# (`passthrough.ALWAYS`). Not `container`, `mcp_servers`,
# `thread`, nor `inference_geo` and `speed` (priced apart from the model's tokens).
DEFAULT_FIELDS = ("cache_control", "context_management", "output_format", "safeguards", "service_tier")


# An fnmatch pattern; a leading `!` refuses what it matches (gateway/passthrough.py).
Pattern = Annotated[str, AfterValidator(_pattern)]


class PassthroughConfig(_Strict):
    """What a native backend lets through to its upstream, which holds the operator's
    organisation key (`gateway/passthrough.py`): pattern lists, read in order, the last
    match deciding (`!` refuses; no match refuses)."""

    # `anthropic-beta` values; tool types (`custom`: client tools); body fields the gateway does not read.
    betas: list[Pattern] = Field(default_factory=lambda: list(DEFAULT_BETAS))
    tools: list[Pattern] = Field(default_factory=lambda: list(DEFAULT_TOOLS))
    fields: list[Pattern] = Field(default_factory=lambda: list(DEFAULT_FIELDS))
    # Content that refers to Files API objects (`file_id`): the organisation's files.
    files: bool = False


class TeamPassthrough(_Strict):
    """A team's narrowing of its native backends' `passthrough`: a value must pass both.
    Absent parts narrow nothing; `files: true` cannot widen a backend's `false`."""

    betas: list[Pattern] | None = None
    tools: list[Pattern] | None = None
    fields: list[Pattern] | None = None
    files: bool | None = None


class ImageUrlGuard(_Strict):
    """Which image URLs a backend's server may be sent to fetch (`translate/image_urls.py`):
    by default https only, to public addresses, the names resolved and checked first."""

    schemes: Annotated[list[Literal["https", "http"]], Field(min_length=1)] = Field(
        default_factory=lambda: list[Literal["https", "http"]](["https"])
    )
    # Also private, loopback, link-local... addresses and local names (`localhost`,
    # `*.internal`, single labels), and no DNS check: for servers fetching inside a trusted network.
    allow_private: bool = False
    # When given, the only hosts allowed (fnmatch patterns: `*.cdn.example.com`).
    hosts: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # URL images (and documents, on native backends) in one request; past it, a 400.
    max_per_request: Annotated[int, Field(ge=0)] = 100


# The presets the gen_ai semantic conventions name; the others are labelled by backend name.
_GEN_AI_PROVIDERS = {"openai": "openai", "azure": "azure.openai", "groq": "groq", "deepseek": "deepseek"}


class OpenAIBackend(BackendSettings):
    """Any Chat Completions server: OpenAI, Azure OpenAI, vLLM, Ollama, Groq, DeepSeek, Together."""

    type: Literal["openai"]
    preset: Literal["openai", "azure", "vllm", "ollama", "groq", "deepseek", "together", "generic"] = "generic"

    def provider(self) -> str | None:
        return _GEN_AI_PROVIDERS.get(self.preset)

    options: ChatOptions = Field(default_factory=ChatOptions)
    # Azure OpenAI: the `api-version` query parameter (and the `api-key` header is used).
    api_version: str | None = None
    # A tokenizer endpoint that counts exactly (vLLM: `{base}/tokenize`, without the /v1).
    tokenize_url: str | None = None
    image_url_guard: ImageUrlGuard = Field(default_factory=ImageUrlGuard)


class AnthropicBackend(BackendSettings):
    """A server that speaks the Messages API itself; requests pass through."""

    type: Literal["anthropic"]

    def provider(self) -> str | None:
        return "anthropic"

    # Sent when the client sent none.
    anthropic_version: str = "2023-06-01"
    passthrough: PassthroughConfig = Field(default_factory=PassthroughConfig)
    # Absent: URLs pass unchecked, as Anthropic fetches them from its own network; set it
    # for a self-hosted server that speaks Messages and fetches them from the operator's.
    image_url_guard: ImageUrlGuard | None = None


def backend_types() -> dict[str, type[BackendSettings]]:
    """Each backend `type` the configuration accepts → its settings: the subclasses of
    `BackendSettings` (at any depth) that name their type; a type named twice is a bug."""
    found: dict[str, type[BackendSettings]] = {}
    todo = BackendSettings.__subclasses__()
    while todo:
        settings = todo.pop()
        todo.extend(settings.__subclasses__())
        name = type_name(settings)
        if name is None:
            continue
        if name in found:
            raise TypeError(f"backend type {name!r} is named by both {found[name].__name__} and {settings.__name__}")
        found[name] = settings
    return found


def type_name(settings: type[BackendSettings]) -> str | None:
    """The backend type `settings` are for (their `type` Literal); None for settings
    shared by several types, which name none."""
    annotation = settings.model_fields["type"].annotation
    if get_origin(annotation) is not Literal:
        return None
    (name,) = get_args(annotation)
    return str(name)


class RouteConfig(_Strict):
    """One deployment of a model: a backend and the model name it knows.

    For a wildcard model (`openai/*`), `*` in `model` stands for the part of the asked
    name the wildcard matched (the default, `*`, passes it on as it is)."""

    backend: str
    model: str = "*"
    # Share of the traffic among the model's healthy deployments.
    weight: Annotated[float, Field(gt=0)] = 1.0
    # Clamp a client's `max_tokens` to what the upstream model accepts (Claude Code asks
    # for 128000 whatever the model).
    max_output_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None


class Pricing(_Strict):
    """USD per million tokens; used for cost budgets and usage reports."""

    input_per_mtok: Annotated[float, Field(ge=0)] = 0.0
    output_per_mtok: Annotated[float, Field(ge=0)] = 0.0
    cache_read_per_mtok: Annotated[float, Field(ge=0)] | None = None  # default: the input price
    cache_write_per_mtok: Annotated[float, Field(ge=0)] | None = None  # default: the input price
    # USD per 1000 server-side web searches (`usage.server_tool_use.web_search_requests`);
    # Anthropic's price. Searches run only on native backends.
    web_search_per_thousand: Annotated[float, Field(ge=0)] = 10.0


class ModelConfig(_Strict):
    name: Annotated[str, Field(min_length=1)]
    aliases: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    display_name: str | None = None
    # RFC 3339; shown in `/v1/models` (clients sort by it).
    created_at: str = "2025-01-01T00:00:00Z"
    # Used when a request has no `max_tokens` and the backend needs one (native backends).
    default_max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = 4096
    pricing: Pricing | None = None
    routes: Annotated[list[RouteConfig], Field(min_length=1)]
    # How a deployment is picked: by weight, or the one with the fewest requests in flight
    # in this process (ties by weight).
    strategy: Literal["weighted", "least_busy"] = "weighted"
    # Other models to try, in order, when every deployment of this one failed.
    fallbacks: list[str] = Field(default_factory=list)
    # Other models to try when the upstream refused the request as too long for it.
    context_fallbacks: list[str] = Field(default_factory=list)


class CooldownConfig(_Strict):
    """A circuit breaker per deployment, per process: `failures` retryable failures within
    `window` seconds open it for `seconds`; then one probe request may go through
    (half-open): success closes it, failure opens it again. `failures: 0` turns it off."""

    failures: Annotated[int, Field(ge=0)] = 3
    window: Annotated[float, Field(gt=0)] = 30.0
    seconds: Annotated[float, Field(gt=0)] = 30.0
    # When every deployment of a model and of its fallbacks is cooling down: `route` sends
    # the request to the one whose cooldown ends first (as its probe), so a blip never
    # becomes an outage; `refuse` answers 429 (cooled down after 429s) or 529, with
    # `retry-after` the cooldown left.
    when_all_open: Literal["route", "refuse"] = "route"


class RoutingConfig(_Strict):
    # Extra attempts after a retryable failure (connect error, timeout, 429, 5xx, 529),
    # across the model's deployments, before its fallbacks are tried.
    retries: Annotated[int, Field(ge=0)] = 2
    # Exponential backoff with full jitter between attempts: base * 2^n, at most `backoff_max`;
    # an upstream's `retry-after` is honoured when it fits in the deadline.
    backoff_base: Annotated[float, Field(ge=0)] = 0.25
    backoff_max: Annotated[float, Field(ge=0)] = 4.0
    # Seconds from the request's arrival after which no new attempt starts.
    deadline: Annotated[float, Field(gt=0)] = 60.0
    cooldown: CooldownConfig = Field(default_factory=CooldownConfig)
    # Where a model name nobody configured goes (absent: 404 not_found_error).
    default_model: str | None = None


class MemoryStoreConfig(_Strict):
    """The embedded store: one process only (limits and revocations are not shared)."""

    type: Literal["memory"] = "memory"


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})$")


def host_port(value: str) -> tuple[str, int]:
    """`host:port` (`[v6 address]:port`) → (host, port); ValueError if it is not one."""
    match = _HOST_PORT.match(value)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError("must be host:port (redis-0.internal:6379; [::1]:6379 for IPv6)")
    return match["v6"] or match["host"], int(match["port"])


def _checked_host_port(value: str) -> str:
    host_port(value)
    return value


HostPort = Annotated[str, AfterValidator(_checked_host_port)]

# Fields that belong to one mode only: given with another, they are an error rather
# than silently unused.
_MODE_ONLY = {
    "nodes": "cluster",
    "sentinels": "sentinel",
    "service": "sentinel",
    "sentinel_username": "sentinel",
    "sentinel_password": "sentinel",
    "sentinel_tls": "sentinel",
    "db": "sentinel",
}


class RedisStoreConfig(_Strict):
    """Redis in one of three shapes (`mode`):

    - `standalone` (the default): one server, `url`.
    - `sentinel`: the master the `sentinels` know as `service`, followed through failovers.
    - `cluster`: Redis Cluster, found from `url` (any one node) or `nodes` (several).

    `username`, `password` and `tls` are the Redis servers' (with a `url` they may
    supply what it does not say; never both); `sentinel_*` are the sentinels' own."""

    type: Literal["redis"]
    mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    # redis://[user:password@]host:port/db, or rediss:// for TLS; may hold a password.
    url: SecretStr | None = None
    nodes: Annotated[list[HostPort], Field(min_length=1)] | None = None
    sentinels: Annotated[list[HostPort], Field(min_length=1)] | None = None
    # The master's name in the sentinels' configuration (`sentinel monitor <service> ...`).
    service: Annotated[str, Field(min_length=1)] | None = None
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    # A CA bundle (PEM) to verify the servers' certificates by, instead of the system's.
    tls_ca_file: str | None = None
    db: Annotated[int, Field(ge=0)] = 0
    sentinel_username: str | None = None
    sentinel_password: SecretStr | None = None
    sentinel_tls: bool | None = None  # default: as `tls`
    # Every key the gateway writes starts with this (identity data under one hash tag:
    # `{gw}:...`); two gateways may share one Redis with different prefixes.
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,32}$")] = "gw"
    # The key store's connections, per process (the limiter keeps its own): seconds to
    # wait for an answer (also for a free connection) and for a connect, and how many it
    # may hold, so a slow Redis or a flood of lookups cannot use up Redis's `maxclients`.
    socket_timeout: Annotated[float, Field(gt=0)] = 2.0
    socket_connect_timeout: Annotated[float, Field(gt=0)] = 2.0
    max_connections: Annotated[int, Field(ge=1)] = 32

    @model_validator(mode="after")
    def _one_shape(self) -> RedisStoreConfig:
        problems = {
            name: f"only with mode: {mode}"
            for name, mode in _MODE_ONLY.items()
            if name in self.model_fields_set and self.mode != mode
        }
        url = self.url.get_secret_value() if self.url is not None else None
        if self.mode == "sentinel":
            if url is not None:
                problems["url"] = (
                    "not with mode: sentinel (the sentinels name the master: give `sentinels` and `service`)"
                )
            if not self.sentinels:
                problems["sentinels"] = "required with mode: sentinel (host:port of each sentinel)"
            if not self.service:
                problems["service"] = "required with mode: sentinel (the master's name in the sentinels' configuration)"
        elif self.mode == "cluster" and (url is None) == (self.nodes is None):
            problems["url"] = (
                "give `url` (any node) or `nodes`, not both"
                if url is not None
                else "required with mode: cluster, or `nodes`"
            )
        elif self.mode == "standalone" and url is None:
            problems["url"] = "required"
        if url is not None:
            problems = {**_url_problems(url, self), **problems}
        if problems:
            raise ValidationError.from_exception_data(
                "store",
                [
                    InitErrorDetails(type=PydanticCustomError("store", message), loc=(name,), input=None)
                    for name, message in problems.items()
                ],
            )
        return self


def _url_problems(url: str, config: RedisStoreConfig) -> dict[str, str]:
    """What is wrong with a store URL, by field. Never quotes the URL: it may hold a password."""
    schemes = ("redis", "rediss", "unix") if config.mode == "standalone" else ("redis", "rediss")
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return {"url": "not a valid URL"}
    if parts.scheme not in schemes:
        return {"url": "must start with " + " or ".join(f"{scheme}://" for scheme in schemes)}
    problems = {}
    if password and config.password is not None:
        problems["password"] = "the url has a password already: give it in one place"
    if username and config.username is not None:
        problems["username"] = "the url has a username already: give it in one place"
    if "tls" in config.model_fields_set:
        problems["tls"] = "with a url, its scheme chooses TLS (rediss://)"
    if config.mode == "cluster" and parts.path.strip("/") not in ("", "0"):
        problems["url"] = "Redis Cluster has only database 0"
    return problems


StoreConfig = Annotated[MemoryStoreConfig | RedisStoreConfig, Field(discriminator="type")]


class AuthConfig(_Strict):
    # Seconds a process trusts its cached view of a key. Revocations reach every process
    # at once through the store's change feed; this bounds staleness if a message is lost.
    cache_ttl: Annotated[float, Field(ge=0)] = 10.0
    # Seconds between writes of keys' last-used times (batched, off the request path).
    last_used_interval: Annotated[float, Field(gt=0)] = 5.0
    # Keys the store did not know are refused without asking it again for this many
    # seconds, at most this many of them per process (0: none kept). A new key clears
    # them: in its own process at once, in the others through the change feed.
    negative_cache_ttl: Annotated[float, Field(ge=0)] = 5.0
    negative_cache_size: Annotated[int, Field(ge=0)] = 4096


class LimitsConfig(_Strict):
    """How team limits are enforced (the limits themselves belong to teams and keys)."""

    # When the store cannot be reached: refuse (529 overloaded_error), or serve with a
    # per-process limiter that applies each team's limits divided by `fallback_share`.
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    fallback_share: Annotated[int, Field(ge=1)] = 1
    # A concurrency slot is a lease: a process that dies mid-request frees its slots when
    # their leases run out. Live requests renew theirs every third of this.
    lease_seconds: Annotated[float, Field(ge=3)] = 60.0
    # `count_tokens_per_minute` of a team whose limits set none (null: no such limit). A
    # count is cheap for the gateway, not for an upstream tokenizer every tenant shares;
    # 300 a minute takes Claude Code's `/context` (about 26 at once) ten times a minute.
    default_count_tokens_per_minute: Annotated[int, Field(ge=0)] | None = DEFAULT_COUNT_TOKENS_PER_MINUTE


class AdminConfig(_Strict):
    # `Authorization: Bearer <token>` for /admin/. Absent or empty: the admin API is off.
    token: SecretStr | None = None

    @field_validator("token")
    @classmethod
    def _empty_is_off(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None


class KeyBootstrap(_Strict):
    """A key declared in the YAML; the raw key comes from the environment and is hashed on load."""

    name: str = ""
    key: SecretStr
    description: str = ""
    models: list[str] | None = None
    limits: Limits = Field(default_factory=Limits)
    # Other teams the key also belongs to (it always belongs to the team that declares it).
    also_teams: list[str] = Field(default_factory=list)

    @field_validator("key")
    @classmethod
    def _well_formed(cls, value: SecretStr) -> SecretStr:
        # What a client could not send is refused here, never silently unusable.
        if len(value.get_secret_value()) < 8:
            raise ValueError("a key must be at least 8 characters long")
        if not well_formed_key(value.get_secret_value()):
            raise ValueError(f"a key must be {KEY_FORMAT}")
        return value


class TeamBootstrap(_Strict):
    id: Annotated[str, Field(pattern=TEAM_ID)]
    name: str = ""
    models: list[str] = Field(default_factory=lambda: ["*"])
    limits: Limits = Field(default_factory=Limits)
    metadata: dict[str, str] = Field(default_factory=dict)
    keys: list[KeyBootstrap] = Field(default_factory=list)
    # Narrower than the native backends' own; none: theirs as they are.
    passthrough: TeamPassthrough | None = None


class Config(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreConfig = Field(default_factory=MemoryStoreConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    teams: list[TeamBootstrap] = Field(default_factory=list)
    backends: dict[str, BackendSettings] = Field(default_factory=dict)
    models: list[ModelConfig] = Field(default_factory=list)


# ---------------------------------------------------------------------------- loading

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _resolve_env(value: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable {name} is not set (use ${{{name}:-default}} for a default)")
            return ""

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _resolve_env(v, f"{path}.{k}" if path else str(k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    return value


def _loc(parts: tuple) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _pydantic_problems(error: ValidationError, prefix: tuple = ()) -> list[str]:
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        loc = prefix + tuple(item["loc"])
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        problems.append(f"{_loc(loc)}: {msg}")
    return problems


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping: PyYAML silently keeps the last,
    so a second `teams:` or `limits:` would quietly drop the first."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def parse(text: str, env: Mapping[str, str] | None = None) -> Config:
    """YAML text → a checked `Config`, or `ConfigError` listing every problem."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{where}not valid YAML ({getattr(exc, 'problem', None) or exc})"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["the configuration must be a mapping at the top level"])
    problems: list[str] = []
    raw = _resolve_env(raw, "", os.environ if env is None else env, problems)

    # Backends are validated one by one so a bad field's path reads
    # `backends.openai.base_url`, not pydantic's union branch names.
    backends_raw = raw.get("backends") or {}
    backends: dict[str, BackendSettings] = {}
    types = backend_types()
    if not isinstance(backends_raw, dict):
        problems.append("backends: must be a mapping of name → backend")
        backends_raw = {}
    for name, spec in backends_raw.items():
        path = ("backends", str(name))
        if not isinstance(spec, dict):
            problems.append(f"{_loc(path)}: must be a mapping")
            continue
        kind = spec.get("type")
        cls = types.get(kind) if isinstance(kind, str) else None
        if cls is None:
            known = ", ".join(sorted(types))
            problems.append(f"{_loc(path + ('type',))}: unknown backend type {kind!r} (expected one of: {known})")
            continue
        try:
            backends[str(name)] = cls.model_validate(spec)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, path))

    rest = {k: v for k, v in raw.items() if k != "backends"}
    config: Config | None = None
    try:
        config = Config.model_validate({**rest, "backends": {}})
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc))
    problems.extend(check(raw.get("models"), backends_raw))
    default_model = (raw.get("routing") or {}).get("default_model") if isinstance(raw.get("routing"), dict) else None
    names = {m.get("name") for m in raw.get("models") or [] if isinstance(m, dict)}
    names |= {a for m in raw.get("models") or [] if isinstance(m, dict) for a in (m.get("aliases") or [])}
    if isinstance(default_model, str) and default_model not in names:
        problems.append(f"routing.default_model: unknown model {default_model!r}")
    if config is not None:
        config = config.model_copy(update={"backends": backends})
        problems.extend(_check_secrets(config))
        problems.extend(_check_key_names(config))
    if problems:
        raise ConfigError(problems)
    assert config is not None
    return config


def check(models: Any, declared_backends: Mapping[str, Any]) -> list[str]:
    """Cross-reference problems: duplicate model names, routes to backends that do not exist.

    Works on the raw `models` list, so these are reported even when other fields of the
    same file fail to validate.
    """
    problems: list[str] = []
    seen: dict[str, str] = {}
    for i, model in enumerate(models if isinstance(models, list) else []):
        if not isinstance(model, dict):
            continue
        aliases = _list(model.get("aliases"))
        for j, name in enumerate([model.get("name"), *aliases]):
            if not isinstance(name, str):
                continue
            where = f"models[{i}].name" if j == 0 else f"models[{i}].aliases[{j - 1}]"
            if name in seen:
                problems.append(f"{where}: model name {name!r} is already used by {seen[name]}")
            else:
                seen[name] = where
        routes = _list(model.get("routes"))
        wildcard = isinstance(model.get("name"), str) and model["name"].endswith("*")
        for k, route in enumerate(routes):
            backend = route.get("backend") if isinstance(route, dict) else None
            if isinstance(backend, str) and backend not in declared_backends:
                problems.append(f"models[{i}].routes[{k}].backend: unknown backend {backend!r}")
            upstream = route.get("model", "*") if isinstance(route, dict) else None
            if not wildcard and isinstance(upstream, str) and "*" in upstream:
                problems.append(f"models[{i}].routes[{k}].model: required (a `*` here needs a wildcard model name)")
    for i, model in enumerate(models if isinstance(models, list) else []):
        if not isinstance(model, dict):
            continue
        for field in ("fallbacks", "context_fallbacks"):
            targets = _list(model.get(field))
            for j, target in enumerate(targets):
                if isinstance(target, str) and target not in seen:
                    problems.append(f"models[{i}].{field}[{j}]: unknown model {target!r}")
                elif target == model.get("name"):
                    problems.append(f"models[{i}].{field}[{j}]: a model cannot fall back to itself")
    return problems


def _check_secrets(config: Config) -> list[str]:
    """The admin token is its own credential: a client key that opened the admin API would
    let any team hand itself keys. Bootstrap keys must also differ from one another."""
    problems = []
    admin = config.admin.token.get_secret_value() if config.admin.token else None
    metrics = config.server.metrics_token.get_secret_value() if config.server.metrics_token else None
    if metrics is not None and metrics == admin:  # whoever scrapes would hold the admin API
        problems.append("server.metrics_token: must not be the same as admin.token")
    seen: dict[str, str] = {}
    for i, team in enumerate(config.teams):
        for j, key in enumerate(team.keys):
            where = f"teams[{i}].keys[{j}].key"
            value = key.key.get_secret_value()
            if admin is not None and value == admin:
                problems.append(f"admin.token: must not be the same as a client key ({where})")
            if value in seen:
                problems.append(f"{where}: the same key is already declared at {seen[value]}")
            else:
                seen[value] = where
    return problems


def _check_key_names(config: Config) -> list[str]:
    """A named key is known across loads by its team and name: a new value under the same
    name replaces the old one, so two keys of a team may not share a name."""
    problems = []
    for i, team in enumerate(config.teams):
        seen: dict[str, int] = {}
        for j, key in enumerate(team.keys):
            if not key.name:
                continue
            if key.name in seen:
                problems.append(
                    f"teams[{i}].keys[{j}].name: '{key.name}' is already the name of teams[{i}].keys[{seen[key.name]}]"
                    " (a name identifies a key across loads)"
                )
            else:
                seen[key.name] = j
    return problems


# ---------------------------------------------------------------------------- exposure

# A secret that guards a listener on a non-loopback address must be at least this long
# (`openssl rand -hex 32` gives 64 characters).
MIN_SECRET_LENGTH = 32
# Values this repository has shipped in its configs and docs, and the words that mark a
# value as one to replace: on a non-loopback address they are anybody's.
PUBLISHED_SECRETS = frozenset({"gk-demo-change-me", "admin-change-me"})
PLACEHOLDER_WORDS = ("changeme", "change-me", "change_me", "replaceme", "replace-me", "replace_me", "placeholder")


def is_loopback(host: str) -> bool:
    """Only this machine can connect to `host` (127.0.0.0/8, ::1, localhost). Any other
    name, `0.0.0.0` and `::` included, counts as reachable from the network."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _weakness(value: str) -> str | None:
    lowered = value.lower()
    if lowered in PUBLISHED_SECRETS or any(word in lowered for word in PLACEHOLDER_WORDS):
        return "a placeholder or a value published with the gateway"
    if len(value) < MIN_SECRET_LENGTH:
        return f"too short ({len(value)} characters; at least {MIN_SECRET_LENGTH})"
    return None


def exposure_problems(config: Config, host: str | None = None, admin_host: str | None = None) -> list[str]:
    """Secrets too weak for the addresses the gateway serves on: a placeholder, a value
    this repository published, or one shorter than `MIN_SECRET_LENGTH`, guarding a
    listener that is not on loopback (where the quick start's demo key is fine).

    `host`, `admin_host`: the client and admin listeners' addresses when they are not the
    configuration's own (`gateway serve --host`, `--admin-listen`). The admin and metrics
    tokens are judged by the listener that serves them, the client keys by the client
    one. No message includes a secret's value."""
    host = config.server.host if host is None else host
    if admin_host is None and config.server.admin_listen is not None:
        admin_host = host_port(config.server.admin_listen)[0]
    operator_host = host if admin_host is None else admin_host
    guarded: list[tuple[str, SecretStr, str]] = []
    for where, secret in (("admin.token", config.admin.token), ("server.metrics_token", config.server.metrics_token)):
        if secret is not None:
            guarded.append((where, secret, operator_host))
    for i, team in enumerate(config.teams):
        for j, key in enumerate(team.keys):
            guarded.append((f"teams[{i}].keys[{j}].key", key.key, host))
    problems = []
    for where, secret, exposed in guarded:
        weakness = None if is_loopback(exposed) else _weakness(secret.get_secret_value())
        if weakness is not None:
            problems.append(
                f"{where}: {weakness}: refused on a non-loopback address ({exposed or 'every interface'}); "
                f"set a random value (openssl rand -hex 32), or listen on 127.0.0.1"
            )
    return problems


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    return parse(text, env)


def _list(value: object) -> list[object]:
    """`value` when the raw YAML has a list there, else none (the schema reports the shape)."""
    return value if isinstance(value, list) else []
