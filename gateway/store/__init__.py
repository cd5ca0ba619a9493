"""The store named by the configuration (see `store/base.py` for the interface)."""

from __future__ import annotations

from gateway.config import MemoryStoreConfig, RedisStoreConfig
from gateway.store.base import ALL, Store


def open_store(config: MemoryStoreConfig | RedisStoreConfig) -> Store:
    if isinstance(config, RedisStoreConfig):
        from gateway.store.redis import RedisStore

        return RedisStore.from_config(config)
    from gateway.store.memory import MemoryStore

    return MemoryStore()


__all__ = ["ALL", "Store", "open_store"]
