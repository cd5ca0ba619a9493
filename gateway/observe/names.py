"""The name, labels and buckets of every metric the gateway exports, and nothing else.

Names follow the ecosystem: the OpenTelemetry gen_ai histograms exactly as Envoy AI
Gateway exports them to Prometheus (`gen_ai_*`, with the conventions' attributes as
labels), and `gateway_*` series for what the conventions do not cover (teams, limits,
retries, cooldowns, Redis, in-flight work). Counters end in `_total`, durations are in
seconds. README.md ("Metrics") lists every series with its labels; `metrics.py` records
them.
"""

from __future__ import annotations

from collections.abc import Iterator

from gateway.errors import GatewayError
from gateway.identity import Limits

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
UPSTREAM_ERROR_KINDS = frozenset(
    {
        "connect",
        "timeout",
        "protocol",
        "context_length",
        "status_429",
        "status_5xx",
        "stream_reset",
        "stream_timeout",
        "stream_protocol",
        "stream_error",
    }
)


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
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
    120.0,
    300.0,
)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))  # 1, 4, 16 … 67108864 (Envoy's)
# The gateway's own time: from a tenth of a millisecond (a cached key, no limits) to
# seconds (a Redis that makes admissions wait).
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

STATUS_CLASSES = ("", "1xx", "2xx", "3xx", "4xx", "5xx")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
