"""Team-scoped rate limits, concurrency leases and budgets (see `limiter/base.py` for the
interface and `limiter/rules.py` for the arithmetic).

- `MemoryLimiter` (`limiter/memory.py`): one process; with the memory store.
- `RedisLimiter` (`limiter/redis.py`): every process shares it; one Lua script per
  admission and per settlement, each touching one team's keys (one cluster slot).
- `GuardedLimiter` (`limiter/guard.py`): the Redis limiter under `on_store_error`.
"""

from __future__ import annotations

from gateway.config import LimitsConfig, MemoryStoreConfig, RedisStoreConfig
from gateway.limiter.base import (
    COUNT_TOKENS,
    MESSAGES,
    Demand,
    Limiter,
    LimitExceeded,
    Ticket,
    Usage,
    Window,
    rate_limit_headers,
)
from gateway.limiter.memory import MemoryLimiter


def open_limiter(store_config: MemoryStoreConfig | RedisStoreConfig, limits_config: LimitsConfig) -> Limiter:
    """The limiter for the configured store: with Redis, on the same URL and prefix as the
    store (a connection pool of its own), under the configured failure policy."""
    if isinstance(store_config, RedisStoreConfig):
        from gateway.limiter.guard import GuardedLimiter
        from gateway.limiter.redis import RedisLimiter

        return GuardedLimiter(
            RedisLimiter.from_config(store_config, limits_config),
            on_store_error=limits_config.on_store_error,
            fallback_share=limits_config.fallback_share,
            lease_seconds=limits_config.lease_seconds,
        )
    return MemoryLimiter(
        lease_seconds=limits_config.lease_seconds, count_tokens_per_minute=limits_config.default_count_tokens_per_minute
    )


__all__ = [
    "COUNT_TOKENS",
    "MESSAGES",
    "Demand",
    "LimitExceeded",
    "Limiter",
    "MemoryLimiter",
    "Ticket",
    "Usage",
    "Window",
    "open_limiter",
    "rate_limit_headers",
]
