"""What the gateway records in its metrics, and the `/metrics` exposition.

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

The names, labels and buckets are in `names.py`; several worker processes share their
values through `multiprocess.py`.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config import BackendSettings
from gateway.exchange import Exchange
from gateway.observe.multiprocess import FilesCollector, use_mmap_values
from gateway.observe.names import (
    BUILD_INFO,
    CLIENT_TIMEOUT_PHASES,
    CLIENT_TIMEOUTS,
    CONNECTIONS_REFUSED,
    DEPLOYMENT_LABELS,
    DEPLOYMENT_STATE,
    DEPLOYMENT_STATES,
    DURATION_BUCKETS,
    ERROR_TYPES,
    FALLBACKS,
    GEN_AI_LABELS,
    GEN_AI_REQUEST_DURATION,
    GEN_AI_TIME_PER_OUTPUT_TOKEN,
    GEN_AI_TIME_TO_FIRST_TOKEN,
    GEN_AI_TOKEN_LABELS,
    GEN_AI_TOKEN_USAGE,
    IN_FLIGHT,
    LIMIT_NAMES,
    LIMITER_DEGRADED,
    LIMITER_FALLBACK_ADMISSIONS,
    LIMITER_LOST_SETTLEMENTS,
    LIMITER_OUTAGES,
    LIMITER_REFUSED_ADMISSIONS,
    LISTENERS,
    MAX_TEAM_LABELS,
    MULTIPROC_ENV,
    NOT_COUNTED,
    OPEN_CONNECTIONS,
    OPEN_STREAMS,
    OPERATIONS,
    OTHER,
    OVERHEAD,
    OVERHEAD_BUCKETS,
    OVERHEAD_LABELS,
    RATE_LIMIT_REJECTIONS,
    REDIS_BUCKETS,
    REDIS_ERROR_LABELS,
    REDIS_ERRORS,
    REDIS_LABELS,
    REDIS_ROUND_TRIP,
    REQUEST_LABELS,
    REQUESTS,
    RETRIES,
    STATUS_CLASSES,
    TOKEN_BUCKETS,
    TOKEN_LABELS,
    TOKENS,
    TPOT_BUCKETS,
    TTFT_BUCKETS,
    UPSTREAM_ERROR_KINDS,
    UPSTREAM_ERRORS,
    UPSTREAM_OPERATIONS,
    USAGE_ESTIMATED,
)

if TYPE_CHECKING:
    from gateway.runtime import Runtime


log = logging.getLogger(__name__)

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


def provider_name(backend: str, spec: BackendSettings) -> str:
    """`gen_ai.provider.name`: the conventions' well-known value for the backend, else
    the backend's name in the configuration (as Envoy AI Gateway does)."""
    return spec.provider() or backend


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# ---------------------------------------------------------------------------- one combination


class _Series:
    """The label children of one combination of a request's labels, looked up once per
    request. Children that not every request records (tokens, time to first token…) are
    made on first use, so a combination that never streams has no empty TTFT series."""

    __slots__ = (
        "metrics",
        "gen_ai",
        "team",
        "model",
        "primary",
        "requests",
        "overhead",
        "duration",
        "_ttft",
        "_tpot",
        "_usage",
        "_tokens",
        "_estimated",
        "_retries",
    )

    def __init__(
        self,
        metrics: Metrics,
        operation: str,
        team: str,
        model: str,
        backend: str,
        status_class: str,
        gen_ai: tuple[str, ...],
        primary: str,
    ) -> None:
        self.metrics = metrics
        self.gen_ai = gen_ai
        self.team, self.model, self.primary = team, model, primary
        self.requests = metrics.requests.labels(operation, team, model, backend, status_class)
        upstream = operation in UPSTREAM_OPERATIONS
        self.overhead = metrics.overhead.labels(operation, backend) if upstream else None
        self.duration = metrics.duration.labels(*gen_ai) if upstream else None
        # Made on first use (see the class docstring).
        self._ttft: Histogram | None = None
        self._tpot: Histogram | None = None
        self._usage: dict[str, Histogram] | None = None
        self._tokens: dict[str, Counter] | None = None
        self._estimated: Counter | None = None
        self._retries: Counter | None = None

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
            self._tokens = {
                kind: tokens.labels(self.team, self.model, kind)
                for kind in ("input", "output", "cache_read", "cache_creation")
            }
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
        family = GaugeMetricFamily(
            BUILD_INFO, "The gateway's version (always 1).", labels=["version", "python_version"]
        )
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
        for deployment in self._runtime.routes.router.health():
            state = str(deployment.get("state", ""))
            labels = [
                str(deployment.get("model", "")),
                str(deployment.get("backend", "")),
                str(deployment.get("upstream_model", "")),
            ]
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
            (name, phase): metrics.client_timeouts.labels(name, phase)
            for name in LISTENERS
            for phase in CLIENT_TIMEOUT_PHASES
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
            use_mmap_values()
            own = None  # the metrics below register nowhere: the collector reads the files
            FilesCollector(self.registry, path=self.multiprocess_dir)
        else:
            own = self.registry
            ProcessCollector(registry=own)
        self.registry.register(_BuildInfo())
        self.registry.register(_Deployments(runtime))

        self.token_usage = Histogram(
            GEN_AI_TOKEN_USAGE,
            "Tokens per request by type (gen_ai.client.token.usage; input includes cached).",
            GEN_AI_TOKEN_LABELS,
            buckets=TOKEN_BUCKETS,
            registry=own,
        )
        self.duration = Histogram(
            GEN_AI_REQUEST_DURATION,
            "Time from a request's arrival to its last byte (gen_ai.server.request.duration).",
            GEN_AI_LABELS,
            buckets=DURATION_BUCKETS,
            registry=own,
        )
        self.ttft = Histogram(
            GEN_AI_TIME_TO_FIRST_TOKEN,
            "Time from a streamed request's arrival to its first content (streams only).",
            GEN_AI_LABELS,
            buckets=TTFT_BUCKETS,
            registry=own,
        )
        self.tpot = Histogram(
            GEN_AI_TIME_PER_OUTPUT_TOKEN,
            "(duration - time to first token) / (output tokens - 1), per stream.",
            GEN_AI_LABELS,
            buckets=TPOT_BUCKETS,
            registry=own,
        )
        self.requests = Counter(
            REQUESTS,
            "Requests answered, by team, model (as served), backend and status class.",
            REQUEST_LABELS,
            registry=own,
        )
        self.overhead = Histogram(
            OVERHEAD,
            "The gateway's own time per request: duration minus time waiting on the upstream.",
            OVERHEAD_LABELS,
            buckets=OVERHEAD_BUCKETS,
            registry=own,
        )
        self.tokens = Counter(
            TOKENS,
            "Tokens used, by team and served model; token_type: input (uncached), output, cache_read, "
            "cache_creation (Anthropic's usage fields: they add up to the total).",
            TOKEN_LABELS,
            registry=own,
        )
        self.usage_estimated = Counter(
            USAGE_ESTIMATED,
            "Requests whose usage the upstream did not report (the gateway estimated it).",
            ("model",),
            registry=own,
        )
        self.rate_limit_rejections = Counter(
            RATE_LIMIT_REJECTIONS,
            "Requests refused by a team or key limit (429), by team and limit.",
            ("team", "limit"),
            registry=own,
        )
        self.upstream_errors = Counter(
            UPSTREAM_ERRORS,
            "Upstream failures met (retried or not), by backend and kind.",
            ("backend", "kind"),
            registry=own,
        )
        self.retries = Counter(
            RETRIES, "Upstream attempts beyond the first, by the model asked for.", ("model",), registry=own
        )
        self.fallbacks = Counter(
            FALLBACKS,
            "Fallbacks to another model, by the model asked for and the fallback.",
            ("model", "fallback_model"),
            registry=own,
        )
        self.in_flight = Gauge(
            IN_FLIGHT,
            "Requests being handled (API requests; not probes or scrapes).",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.open_streams = Gauge(
            OPEN_STREAMS, "Streamed responses under way.", registry=own, multiprocess_mode="livesum"
        )
        self.redis_round_trip = Histogram(
            REDIS_ROUND_TRIP,
            "Time of each operation on Redis, by component (store, limiter) and operation.",
            REDIS_LABELS,
            buckets=REDIS_BUCKETS,
            registry=own,
        )
        self.redis_errors = Counter(
            REDIS_ERRORS,
            "Operations on Redis that failed, by component, operation and kind (connection, timeout, error).",
            REDIS_ERROR_LABELS,
            registry=own,
        )
        self.limiter_degraded = Gauge(
            LIMITER_DEGRADED,
            "1 while the limiter cannot reach its store (Redis); on_store_error applies.",
            registry=own,
            multiprocess_mode="livemax",
        )
        self.limiter_outages = Counter(LIMITER_OUTAGES, "Outages of the limiter's store begun.", registry=own)
        self.limiter_fallback_admissions = Counter(
            LIMITER_FALLBACK_ADMISSIONS,
            "Admissions served by the per-process fallback limiter (fail_open).",
            registry=own,
        )
        self.limiter_refused_admissions = Counter(
            LIMITER_REFUSED_ADMISSIONS,
            "Admissions refused because the store was unreachable (fail_closed).",
            registry=own,
        )
        self.limiter_lost_settlements = Counter(
            LIMITER_LOST_SETTLEMENTS, "Settlements that timed out (their usage may be missing).", registry=own
        )
        self.open_connections = Gauge(
            OPEN_CONNECTIONS,
            "Connections open, by listener (client, admin).",
            ("listener",),
            registry=own,
            multiprocess_mode="livesum",
        )
        self.connections_refused = Counter(
            CONNECTIONS_REFUSED,
            "Connections answered 503 at once: the process had server.max_connections open on the listener.",
            ("listener",),
            registry=own,
        )
        self.client_timeouts = Counter(
            CLIENT_TIMEOUTS,
            "Requests cut because the client did not send its headers (server.header_timeout) or "
            "body (server.body_timeout) in time, by listener and phase.",
            ("listener", "phase"),
            registry=own,
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
        duration, overhead = series.duration, series.overhead
        if duration is None or overhead is None:  # both or neither: set for upstream operations
            return
        duration.observe(elapsed)
        overhead.observe(max(elapsed - exchange.upstream_seconds, 0.0))
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
                    log.warning(
                        "metrics: more than %d teams in this process; the others are counted as team '%s'",
                        MAX_TEAM_LABELS,
                        OTHER,
                    )
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
                known = kind in UPSTREAM_ERROR_KINDS or (
                    len(kind) == 10 and kind[:7] == "status_" and kind[7:].isdigit()
                )
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
