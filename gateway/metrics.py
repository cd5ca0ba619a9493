"""Every metric the gateway exports, defined here and nowhere else.

Names follow the ecosystem: the OpenTelemetry gen_ai histograms exactly as Envoy AI
Gateway exports them to Prometheus (`gen_ai_*`, with the conventions' attributes as
labels), and `gateway_*` series for what the conventions do not cover (teams, limits,
retries, cooldowns, Redis, in-flight work). Counters end in `_total`, durations are in
seconds. README.md ("Metrics") lists every series with its labels.

Label values are bounded by the configuration, never by traffic: a team comes only from
an authenticated principal (and past `MAX_TEAM_LABELS` distinct teams a process folds
the rest into `other`); a model, backend or upstream model name that the configuration
does not declare becomes `other`. Key ids, prompts, request ids and raw user-supplied
model names are never label values.

State lives on the app (`Metrics`, under the `METRICS` key), with a registry of its own,
never prometheus_client's global `REGISTRY`. The request path touches it once, at the end
(`Metrics.request_finished`, from the edge middleware): one dict lookup finds the label
children of that label combination, built the first time it is seen.

With several worker processes, prometheus-client's multiprocess mode keeps every value
in memory-mapped files under `PROMETHEUS_MULTIPROC_DIR` and `/metrics` adds up all of
them (`setup_multiprocess`, called by `gateway serve` before anything is built).
Collectors that read this process's state at scrape time (deployment cooldowns, build
info) report the process that answers the scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import importlib.metadata
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.identity import Limits

if TYPE_CHECKING:
    from gateway.app import Runtime

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- names

# OpenTelemetry gen_ai semantic conventions, as Envoy AI Gateway exports them.
GEN_AI_TOKEN_USAGE = "gen_ai_client_token_usage"
GEN_AI_REQUEST_DURATION = "gen_ai_server_request_duration_seconds"
GEN_AI_TIME_TO_FIRST_TOKEN = "gen_ai_server_time_to_first_token_seconds"
GEN_AI_TIME_PER_OUTPUT_TOKEN = "gen_ai_server_time_per_output_token_seconds"

# The gateway's own.
REQUESTS = "gateway_requests_total"
OVERHEAD = "gateway_overhead_seconds"
TOKENS = "gateway_tokens_total"
USAGE_ESTIMATED = "gateway_usage_estimated_total"
RATE_LIMIT_REJECTIONS = "gateway_rate_limit_rejections_total"
UPSTREAM_ERRORS = "gateway_upstream_errors_total"
RETRIES = "gateway_retries_total"
FALLBACKS = "gateway_fallbacks_total"
IN_FLIGHT = "gateway_in_flight_requests"
OPEN_STREAMS = "gateway_open_streams"
DEPLOYMENT_STATE = "gateway_deployment_state"
REDIS_ROUND_TRIP = "gateway_redis_round_trip_seconds"
REDIS_ERRORS = "gateway_redis_errors_total"
LIMITER_DEGRADED = "gateway_limiter_degraded"
LIMITER_OUTAGES = "gateway_limiter_outages_total"
LIMITER_FALLBACK_ADMISSIONS = "gateway_limiter_fallback_admissions_total"
LIMITER_REFUSED_ADMISSIONS = "gateway_limiter_refused_admissions_total"
LIMITER_LOST_SETTLEMENTS = "gateway_limiter_lost_settlements_total"
OPEN_CONNECTIONS = "gateway_open_connections"
CONNECTIONS_REFUSED = "gateway_connections_refused_total"
CLIENT_TIMEOUTS = "gateway_client_timeouts_total"
BUILD_INFO = "gateway_build_info"

# ---------------------------------------------------------------------------- labels

GEN_AI_LABELS = (
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_original_model",
    "error_type",
)
GEN_AI_TOKEN_LABELS = (*GEN_AI_LABELS, "gen_ai_token_type")
REQUEST_LABELS = ("operation", "team", "model", "backend", "status_class")
OVERHEAD_LABELS = ("operation", "backend")
TOKEN_LABELS = ("team", "model", "token_type")
DEPLOYMENT_LABELS = ("model", "backend", "upstream_model", "state")
REDIS_LABELS = ("component", "operation")
REDIS_ERROR_LABELS = ("component", "operation", "kind")
# The listeners (gateway/connections.py) and the parts of a request a deadline cuts.
LISTENERS = ("client", "admin")
CLIENT_TIMEOUT_PHASES = ("headers", "body")

# The value that stands for every name the configuration does not declare.
OTHER = "other"
# Distinct team label values one process exports before it folds the rest into `other`.
MAX_TEAM_LABELS = 1000
DEPLOYMENT_STATES = ("closed", "half_open", "open")
LIMIT_NAMES = frozenset(Limits.model_fields)
UPSTREAM_ERROR_KINDS = frozenset({
    "connect", "timeout", "protocol", "context_length", "status_429", "status_5xx",
    "stream_reset", "stream_timeout", "stream_protocol", "stream_error",
})


def _error_types(cls: type[GatewayError]) -> Iterator[str]:
    yield cls.error_type
    for sub in cls.__subclasses__():
        yield from _error_types(sub)


# Every Messages error type the gateway answers with, and a client that left; anything
# else (a type an upstream made up) is `_OTHER`, as in the conventions.
ERROR_TYPES = frozenset({*_error_types(GatewayError), "client_disconnected", "_OTHER"})

# Paths whose requests are counted, by operation; the rest of /v1 and /admin by prefix,
# anything else as `other`. The probes and /metrics are not counted.
OPERATIONS = {"/v1/messages": "messages", "/v1/messages/count_tokens": "count_tokens"}
NOT_COUNTED = frozenset({"/metrics", "/healthz", "/readyz", "/health"})
# The operations that reach an upstream: gen_ai histograms and the overhead histogram.
UPSTREAM_OPERATIONS = frozenset(OPERATIONS.values())

# ---------------------------------------------------------------------------- buckets

# Envoy AI Gateway's doubling buckets (0.01 … 81.92 s), extended down to a millisecond
# (what the gateway answers by itself) and up to eleven minutes (long generations).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, *(0.01 * 2**i for i in range(14)), 163.84, 327.68, 655.36)
# Envoy's, plus two minutes and five (a cold model, a long prompt).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0, 120.0, 300.0,
)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))  # 1, 4, 16 … 67108864 (Envoy's)
# The gateway's own time: from a tenth of a millisecond (a cached key, no limits) to
# seconds (a Redis that makes admissions wait).
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

STATUS_CLASSES = ("", "1xx", "2xx", "3xx", "4xx", "5xx")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# ---------------------------------------------------------------------------- vocabulary


class Vocabulary:
    """The label values one configuration allows, and how a name maps onto them. Built
    once per configuration (a reload swaps `runtime.config`, and with it this)."""

    __slots__ = ("config", "models", "wildcards", "upstream_models", "providers")

    def __init__(self, config: Any) -> None:
        self.config = config
        self.models: dict[str, str] = {}  # a name or alias → the configured model's name
        wildcards: set[str] = set()
        upstream: set[str] = set()
        for model in config.models:
            if model.name.endswith("*"):
                wildcards.add(model.name)
            else:
                self.models[model.name] = model.name
                for alias in model.aliases:
                    self.models[alias] = model.name
            for route in model.routes:
                if "*" not in route.model:  # a wildcard's routes carry what the client typed
                    upstream.add(route.model)
        self.wildcards = frozenset(wildcards)
        self.upstream_models = frozenset(upstream)
        self.providers = {name: provider_name(name, spec) for name, spec in config.backends.items()}

    def model(self, served: str | None, asked: str | None) -> str:
        """The configured model that answered, else the one asked for."""
        if served is not None:
            if served in self.wildcards:
                return served
            return self.models.get(served, OTHER)
        if asked is None:
            return ""
        return self.models.get(asked, OTHER)

    def original_model(self, asked: str | None, served: str | None) -> str:
        """The name as asked when the configuration knows it (an alias stays an alias); a
        name a wildcard model took, as that wildcard."""
        if asked is None:
            return ""
        if asked in self.models:
            return asked
        if served is not None and served in self.wildcards:
            return served
        return OTHER

    def upstream_model(self, name: str | None) -> str:
        if name is None:
            return ""
        return name if name in self.upstream_models else OTHER

    def backend(self, name: str | None) -> str:
        if name is None:
            return ""
        return name if name in self.providers else OTHER


def provider_name(backend: str, spec: Any) -> str:
    """`gen_ai.provider.name`: the conventions' well-known value for the backend, else
    the backend's name in the configuration (as Envoy AI Gateway does)."""
    if getattr(spec, "type", None) == "anthropic":
        return "anthropic"
    preset = getattr(spec, "preset", None)
    return {"openai": "openai", "azure": "azure.openai", "groq": "groq", "deepseek": "deepseek"}.get(preset, backend)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# ---------------------------------------------------------------------------- one combination


class _Series:
    """The label children of one combination of a request's labels, looked up once per
    request. Children that not every request records (tokens, time to first token…) are
    made on first use, so a combination that never streams has no empty TTFT series."""

    __slots__ = (
        "metrics", "gen_ai", "team", "model", "primary", "requests", "overhead", "duration",
        "_ttft", "_tpot", "_usage", "_tokens", "_estimated", "_retries",
    )

    def __init__(self, metrics: Metrics, operation: str, team: str, model: str, backend: str, status_class: str,
                 gen_ai: tuple[str, ...], primary: str) -> None:
        self.metrics = metrics
        self.gen_ai = gen_ai
        self.team, self.model, self.primary = team, model, primary
        self.requests = metrics.requests.labels(operation, team, model, backend, status_class)
        upstream = operation in UPSTREAM_OPERATIONS
        self.overhead = metrics.overhead.labels(operation, backend) if upstream else None
        self.duration = metrics.duration.labels(*gen_ai) if upstream else None
        self._ttft = self._tpot = self._usage = self._tokens = self._estimated = self._retries = None

    def ttft(self) -> Histogram:
        if self._ttft is None:
            self._ttft = self.metrics.ttft.labels(*self.gen_ai)
        return self._ttft

    def tpot(self) -> Histogram:
        if self._tpot is None:
            self._tpot = self.metrics.tpot.labels(*self.gen_ai)
        return self._tpot

    def usage(self, token_type: str) -> Histogram:
        usage = self._usage
        if usage is None:
            usage = self._usage = {}
        child = usage.get(token_type)
        if child is None:
            child = usage[token_type] = self.metrics.token_usage.labels(*self.gen_ai, token_type)
        return child

    def tokens(self) -> dict[str, Counter]:
        if self._tokens is None:
            tokens = self.metrics.tokens
            self._tokens = {kind: tokens.labels(self.team, self.model, kind)
                            for kind in ("input", "output", "cache_read", "cache_creation")}
        return self._tokens

    def estimated(self) -> Counter:
        if self._estimated is None:
            self._estimated = self.metrics.usage_estimated.labels(self.model)
        return self._estimated

    def retries(self) -> Counter:
        if self._retries is None:
            self._retries = self.metrics.retries.labels(self.primary)
        return self._retries


# ---------------------------------------------------------------------------- collectors


class _BuildInfo(Collector):
    def __init__(self) -> None:
        try:
            version = importlib.metadata.version("gateway")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        self._labels = [version, platform.python_version()]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(BUILD_INFO, "The gateway's version (always 1).", labels=["version", "python_version"])
        family.add_metric(self._labels, 1.0)
        yield family


class _Deployments(Collector):
    """Each deployment's circuit breaker, read from the router at scrape time: 1 for the
    state it is in, 0 for the other two (per process: the router keeps them per process)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            DEPLOYMENT_STATE,
            "A deployment's circuit breaker (cooldown) state in the answering process: 1 for its state.",
            labels=list(DEPLOYMENT_LABELS),
        )
        health = getattr(self._runtime.router, "health", None)
        if health is not None:
            for deployment in health():
                state = str(deployment.get("state", ""))
                labels = [str(deployment.get("model", "")), str(deployment.get("backend", "")),
                          str(deployment.get("upstream_model", ""))]
                for each in DEPLOYMENT_STATES:
                    family.add_metric([*labels, each], 1.0 if state == each else 0.0)
        yield family


# ---------------------------------------------------------------------------- Redis


class RedisObserver:
    """What the Redis store (`store/redis.py`) and the guarded limiter (`limiter/guard.py`)
    report, through their `observer` attribute: each operation's time, its failures, and
    the limiter's outages."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._round_trips: dict[tuple[str, str], Histogram] = {}
        self._errors: dict[tuple[str, str, str], Counter] = {}

    def round_trip(self, component: str, operation: str, seconds: float, error: BaseException | None = None) -> None:
        """One operation on Redis (one round trip; a store transaction may take a few).
        `error`: what it raised, if anything; only Redis and network failures count as
        errors (a store's own answers, such as a missing record, do not)."""
        if error is not None and isinstance(error, RedisError | OSError | asyncio.TimeoutError):
            if isinstance(error, RedisTimeoutError | asyncio.TimeoutError):
                kind = "timeout"
            elif isinstance(error, RedisConnectionError | OSError):
                kind = "connection"
            else:
                kind = "error"
            key = (component, operation, kind)
            counter = self._errors.get(key)
            if counter is None:
                counter = self._errors[key] = self._metrics.redis_errors.labels(*key)
            counter.inc()
            return
        histogram = self._round_trips.get((component, operation))
        if histogram is None:
            histogram = self._round_trips[(component, operation)] = self._metrics.redis_round_trip.labels(
                component, operation
            )
        histogram.observe(seconds)

    def limiter_event(self, event: str) -> None:
        """`outage` (the store became unreachable), `recovered`, `fallback_admission`,
        `refused_admission`, `lost_settlement`."""
        m = self._metrics
        if event == "outage":
            m.limiter_outages.inc()
            m.limiter_degraded.set(1)
        elif event == "recovered":
            m.limiter_degraded.set(0)
        elif event == "fallback_admission":
            m.limiter_fallback_admissions.inc()
        elif event == "refused_admission":
            m.limiter_refused_admissions.inc()
        elif event == "lost_settlement":
            m.limiter_lost_settlements.inc()


# ---------------------------------------------------------------------------- connections


class ConnectionObserver:
    """What the listeners' connections (`connections.py`) report, by listener: opened and
    closed, refused past `server.max_connections`, cut at a head or body deadline."""

    def __init__(self, metrics: Metrics) -> None:
        self._open = {name: metrics.open_connections.labels(name) for name in LISTENERS}
        self._refused = {name: metrics.connections_refused.labels(name) for name in LISTENERS}
        self._timeouts = {
            (name, phase): metrics.client_timeouts.labels(name, phase) for name in LISTENERS for phase in CLIENT_TIMEOUT_PHASES
        }

    def opened(self, listener: str) -> None:
        self._open[listener].inc()

    def closed(self, listener: str) -> None:
        self._open[listener].dec()

    def refused(self, listener: str) -> None:
        self._refused[listener].inc()

    def timed_out(self, listener: str, phase: str) -> None:
        self._timeouts[(listener, phase)].inc()


# ---------------------------------------------------------------------------- the metrics


class _FilesCollector(MultiProcessCollector):
    """prometheus-client's multiprocess collector, safe to run while another process
    starts: a worker creates its file empty and sizes it a moment later (and a process
    marked dead has its live gauges' files removed), and the stock collector fails the
    whole scrape, or the start of the worker registering it, on such a file."""

    def describe(self) -> list:
        return []  # registering need not read every process's files (the registry would collect)

    def collect(self):  # type: ignore[no-untyped-def]
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(path) >= 8:  # the used-bytes header and its padding
                    files.append(path)
            except OSError:  # removed meanwhile
                continue
        try:
            return self.merge(files, accumulate=True)
        except FileNotFoundError:  # removed between the look and the read: the next scrape has it right
            return self.merge([f for f in files if os.path.exists(f)], accumulate=True)


class Metrics:
    def __init__(self, runtime: Runtime, *, multiprocess_dir: str | None = None) -> None:
        """`multiprocess_dir`: default `$PROMETHEUS_MULTIPROC_DIR`; when set, values live
        in files there and `/metrics` adds up every process's."""
        self._runtime = runtime
        # No `_created` series next to every counter and histogram: they would double the
        # series Prometheus stores, for a timestamp it does not use (prometheus-client's
        # switch, for the whole process).
        disable_created_metrics()
        self.multiprocess_dir = multiprocess_dir or os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry(auto_describe=True)
        if self.multiprocess_dir:
            _use_mmap_values()
            own = None  # the metrics below register nowhere: the collector reads the files
            _FilesCollector(self.registry, path=self.multiprocess_dir)
        else:
            own = self.registry
            ProcessCollector(registry=own)
        self.registry.register(_BuildInfo())
        self.registry.register(_Deployments(runtime))

        self.token_usage = Histogram(
            GEN_AI_TOKEN_USAGE, "Tokens per request by type (gen_ai.client.token.usage; input includes cached).",
            GEN_AI_TOKEN_LABELS, buckets=TOKEN_BUCKETS, registry=own,
        )
        self.duration = Histogram(
            GEN_AI_REQUEST_DURATION, "Time from a request's arrival to its last byte (gen_ai.server.request.duration).",
            GEN_AI_LABELS, buckets=DURATION_BUCKETS, registry=own,
        )
        self.ttft = Histogram(
            GEN_AI_TIME_TO_FIRST_TOKEN, "Time from a streamed request's arrival to its first content (streams only).",
            GEN_AI_LABELS, buckets=TTFT_BUCKETS, registry=own,
        )
        self.tpot = Histogram(
            GEN_AI_TIME_PER_OUTPUT_TOKEN, "(duration - time to first token) / (output tokens - 1), per stream.",
            GEN_AI_LABELS, buckets=TPOT_BUCKETS, registry=own,
        )
        self.requests = Counter(
            REQUESTS, "Requests answered, by team, model (as served), backend and status class.",
            REQUEST_LABELS, registry=own,
        )
        self.overhead = Histogram(
            OVERHEAD, "The gateway's own time per request: duration minus time waiting on the upstream.",
            OVERHEAD_LABELS, buckets=OVERHEAD_BUCKETS, registry=own,
        )
        self.tokens = Counter(
            TOKENS, "Tokens used, by team and served model; token_type: input (uncached), output, cache_read, "
            "cache_creation (Anthropic's usage fields: they add up to the total).",
            TOKEN_LABELS, registry=own,
        )
        self.usage_estimated = Counter(
            USAGE_ESTIMATED, "Requests whose usage the upstream did not report (the gateway estimated it).",
            ("model",), registry=own,
        )
        self.rate_limit_rejections = Counter(
            RATE_LIMIT_REJECTIONS, "Requests refused by a team or key limit (429), by team and limit.",
            ("team", "limit"), registry=own,
        )
        self.upstream_errors = Counter(
            UPSTREAM_ERRORS, "Upstream failures met (retried or not), by backend and kind.",
            ("backend", "kind"), registry=own,
        )
        self.retries = Counter(
            RETRIES, "Upstream attempts beyond the first, by the model asked for.", ("model",), registry=own,
        )
        self.fallbacks = Counter(
            FALLBACKS, "Fallbacks to another model, by the model asked for and the fallback.",
            ("model", "fallback_model"), registry=own,
        )
        self.in_flight = Gauge(
            IN_FLIGHT, "Requests being handled (API requests; not probes or scrapes).",
            registry=own, multiprocess_mode="livesum",
        )
        self.open_streams = Gauge(
            OPEN_STREAMS, "Streamed responses under way.", registry=own, multiprocess_mode="livesum",
        )
        self.redis_round_trip = Histogram(
            REDIS_ROUND_TRIP, "Time of each operation on Redis, by component (store, limiter) and operation.",
            REDIS_LABELS, buckets=REDIS_BUCKETS, registry=own,
        )
        self.redis_errors = Counter(
            REDIS_ERRORS, "Operations on Redis that failed, by component, operation and kind (connection, timeout, error).",
            REDIS_ERROR_LABELS, registry=own,
        )
        self.limiter_degraded = Gauge(
            LIMITER_DEGRADED, "1 while the limiter cannot reach its store (Redis); on_store_error applies.",
            registry=own, multiprocess_mode="livemax",
        )
        self.limiter_outages = Counter(LIMITER_OUTAGES, "Outages of the limiter's store begun.", registry=own)
        self.limiter_fallback_admissions = Counter(
            LIMITER_FALLBACK_ADMISSIONS, "Admissions served by the per-process fallback limiter (fail_open).",
            registry=own,
        )
        self.limiter_refused_admissions = Counter(
            LIMITER_REFUSED_ADMISSIONS, "Admissions refused because the store was unreachable (fail_closed).",
            registry=own,
        )
        self.limiter_lost_settlements = Counter(
            LIMITER_LOST_SETTLEMENTS, "Settlements that timed out (their usage may be missing).", registry=own,
        )
        self.open_connections = Gauge(
            OPEN_CONNECTIONS, "Connections open, by listener (client, admin).", ("listener",),
            registry=own, multiprocess_mode="livesum",
        )
        self.connections_refused = Counter(
            CONNECTIONS_REFUSED, "Connections answered 503 at once: the process had server.max_connections open "
            "on the listener.", ("listener",), registry=own,
        )
        self.client_timeouts = Counter(
            CLIENT_TIMEOUTS, "Requests cut because the client did not send its headers (server.header_timeout) or "
            "body (server.body_timeout) in time, by listener and phase.", ("listener", "phase"), registry=own,
        )
        self.redis = RedisObserver(self)
        self.connections = ConnectionObserver(self)

        self._vocabulary: Vocabulary | None = None
        self._series: dict[tuple, _Series] = {}
        self._teams: set[str] = set()
        self._teams_folded = False
        self._rejections: dict[tuple[str, str], Counter] = {}
        self._upstream_errors: dict[tuple[str, str], Counter] = {}
        self._fallbacks: dict[tuple[str, str], Counter] = {}

    # ------------------------------------------------------------------ per request

    def request_started(self, path: str) -> str | None:
        """The operation a path counts as (None: not counted), the request now in flight."""
        operation = OPERATIONS.get(path)
        if operation is None:
            if path in NOT_COUNTED:
                return None
            if path.startswith("/v1/models"):
                operation = "models"
            elif path.startswith("/admin"):
                operation = "admin"
            else:
                operation = OTHER
        self.in_flight.inc()
        return operation

    def stream_opened(self) -> None:
        self.open_streams.inc()

    def request_finished(self, exchange: Exchange, operation: str | None, elapsed: float, *, streamed: bool) -> None:
        """Everything one request adds, from its `Exchange`, once, at its end. `streamed`:
        `stream_opened()` was called for it."""
        if streamed:
            self.open_streams.dec()
        if operation is None:
            return
        self.in_flight.dec()
        vocabulary = self._vocabulary
        config = self._runtime.config
        if vocabulary is None or vocabulary.config is not config:
            vocabulary = self._vocabulary = Vocabulary(config)
        asked, served = exchange.model, exchange.served_model
        error_type = exchange.error_type
        if error_type is not None and error_type not in ERROR_TYPES:
            error_type = "_OTHER"
        key = (
            operation,
            exchange.team_id,
            vocabulary.model(served, asked),
            vocabulary.backend(exchange.backend),
            vocabulary.upstream_model(exchange.upstream_model),
            vocabulary.original_model(asked, served),
            STATUS_CLASSES[min(exchange.status // 100, 5)],
            error_type or "",
        )
        series = self._series.get(key)
        if series is None:
            series = self._new_series(key, vocabulary)
        series.requests.inc()
        duration = series.duration
        if duration is None:
            return
        duration.observe(elapsed)
        series.overhead.observe(max(elapsed - exchange.upstream_seconds, 0.0))
        usage = exchange.usage
        output = 0
        if usage:
            input_, output = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
            cache_read = _count(usage.get("cache_read_input_tokens"))
            cache_creation = _count(usage.get("cache_creation_input_tokens"))
            tokens = series.tokens()
            tokens["input"].inc(input_)
            tokens["output"].inc(output)
            if cache_read:
                tokens["cache_read"].inc(cache_read)
            if cache_creation:
                tokens["cache_creation"].inc(cache_creation)
            # The conventions' input includes the cached part (Anthropic's does not).
            series.usage("input").observe(input_ + cache_read + cache_creation)
            series.usage("output").observe(output)
            if cache_read:
                series.usage("cached_input").observe(cache_read)
            if cache_creation:
                series.usage("cache_creation_input").observe(cache_creation)
            if exchange.usage_estimated:
                series.estimated().inc()
        first_token = exchange.first_token_seconds
        if first_token is not None:
            series.ttft().observe(first_token)
            if output > 1 and error_type is None:
                series.tpot().observe(max(elapsed - first_token, 0.0) / (output - 1))
        if exchange.retries:
            series.retries().inc(exchange.retries)
        if exchange.fallbacks:
            self._count_fallbacks(series.primary, exchange.fallbacks, vocabulary)
        if exchange.upstream_errors:
            self._count_upstream_errors(exchange.upstream_errors, vocabulary)
        if exchange.rejected_limit is not None:
            self._count_rejection(series.team, exchange.rejected_limit)

    def _new_series(self, key: tuple, vocabulary: Vocabulary) -> _Series:
        operation, team, model, backend, request_model, original_model, status_class, error_type = key
        if team is None:
            team = ""
        elif team not in self._teams:
            if len(self._teams) < MAX_TEAM_LABELS:
                self._teams.add(team)
            else:
                if not self._teams_folded:
                    self._teams_folded = True
                    log.warning("metrics: more than %d teams in this process; the others are counted as team '%s'",
                                MAX_TEAM_LABELS, OTHER)
                team = OTHER
        provider = vocabulary.providers.get(backend, backend)
        gen_ai = (operation, provider, request_model, original_model, error_type)
        # The model asked for, as configured (an alias as its model; a wildcard's as the wildcard).
        primary = vocabulary.models.get(original_model, original_model)
        series = self._series[key] = _Series(self, operation, team, model, backend, status_class, gen_ai, primary)
        return series

    def _count_fallbacks(self, primary: str, fallbacks: list[str], vocabulary: Vocabulary) -> None:
        for name in fallbacks:
            key = (primary, vocabulary.model(name, None))
            counter = self._fallbacks.get(key)
            if counter is None:
                counter = self._fallbacks[key] = self.fallbacks.labels(*key)
            counter.inc()

    def _count_upstream_errors(self, errors: list[tuple[str, str]], vocabulary: Vocabulary) -> None:
        for backend, kind in errors:
            counter = self._upstream_errors.get((backend, kind))
            if counter is None:
                # Kinds: those of `dispatch.failure_kind`, and `status_<code>` (bounded by HTTP).
                known = kind in UPSTREAM_ERROR_KINDS or (len(kind) == 10 and kind[:7] == "status_" and kind[7:].isdigit())
                counter = self._upstream_errors[(backend, kind)] = self.upstream_errors.labels(
                    vocabulary.backend(backend), kind if known else OTHER
                )
            counter.inc()

    def _count_rejection(self, team: str, limit: str) -> None:
        key = (team, limit)
        counter = self._rejections.get(key)
        if counter is None:
            counter = self._rejections[key] = self.rate_limit_rejections.labels(
                team, limit if limit in LIMIT_NAMES else OTHER
            )
        counter.inc()

    # ------------------------------------------------------------------ exposition

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The scrape's body and content type: OpenMetrics when `accept` asks for it, else
        the Prometheus text format."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


# ---------------------------------------------------------------------------- processes


def _use_mmap_values() -> None:
    """prometheus-client picks where values live when it is imported, from the
    environment; a directory chosen later (by `gateway serve`) must switch it, before
    any metric is made."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()


@dataclass(frozen=True, slots=True)
class Multiprocess:
    """How this server keeps its metrics (`setup_multiprocess`)."""

    directory: str | None  # None: in this process's memory
    owned: bool = False  # created for this server: removed when it stops
    shared: bool = False  # the operator's: other processes may be using it


def setup_multiprocess(workers: int, environ: MutableMapping[str, str] | None = None) -> Multiprocess:
    """Before the app is built (and before workers fork): where metric values will live.

    - More than one worker: `$PROMETHEUS_MULTIPROC_DIR`, or a new temporary directory
      (then set in the environment the workers inherit); emptied now, since files left
      by an earlier run would add dead processes' counts to this one's.
    - One process, `$PROMETHEUS_MULTIPROC_DIR` set: the operator runs several `gateway
      serve` processes on one directory; it is used as it is (the operator empties it
      before starting them all).
    - Otherwise: this process's memory.
    """
    environ = os.environ if environ is None else environ
    directory = environ.get(MULTIPROC_ENV) or None
    if workers <= 1:
        if directory is None:
            return Multiprocess(None)
        os.makedirs(directory, exist_ok=True)
        _use_mmap_values()
        return Multiprocess(directory, shared=True)
    owned = directory is None
    if owned:
        directory = tempfile.mkdtemp(prefix="gateway-metrics-")
        environ[MULTIPROC_ENV] = directory
    else:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))
    _use_mmap_values()
    return Multiprocess(directory, owned=owned)


def worker_exited(setup: Multiprocess, pid: int) -> None:
    """A worker process is gone: its live gauges (in flight, open streams) stop counting.
    Its counters and histograms stay, so totals never go down."""
    if setup.directory is not None:
        with contextlib.suppress(OSError):
            mark_process_dead(pid, setup.directory)


def teardown_multiprocess(setup: Multiprocess) -> None:
    """When the server stops: this process's live gauges go; a directory it made goes."""
    if setup.directory is None:
        return
    worker_exited(setup, os.getpid())
    if setup.owned:
        shutil.rmtree(setup.directory, ignore_errors=True)
