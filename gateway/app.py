"""`build_app(config)`: the aiohttp application and every resource it owns.

State lives on the application object (typed keys, one `cleanup_ctx` per resource);
there are no module globals. The `Runtime` (gateway/runtime.py) is the one mutable holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import BinaryIO

from aiohttp import web

from gateway import accounts
from gateway.admission import Admission
from gateway.auth import Authenticator
from gateway.backends.http_client import UpstreamClient
from gateway.config import Config
from gateway.limiter import Limiter, open_limiter
from gateway.middleware import edge, on_response_prepare
from gateway.observe.access_log import AccessLog
from gateway.observe.metrics import METRICS, Metrics
from gateway.routes import add_routes
from gateway.runtime import RUNTIME, Runtime, build_routes
from gateway.store import ALL, Store, open_store

log = logging.getLogger("gateway")


async def _upstream_client(app: web.Application) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await app[RUNTIME].client.close()


async def _identity(app: web.Application) -> AsyncIterator[None]:
    """The store, the YAML-declared teams and keys in it, the auth cache, and the two
    background tasks that keep that cache honest: the change-feed listener and the
    last-used flusher."""
    runtime = app[RUNTIME]
    config = runtime.config
    store = open_store(config.store)
    try:
        await accounts.bootstrap(store, config.teams)
    except BaseException:
        await store.close()
        raise
    runtime.store = store
    runtime.auth = auth = Authenticator(
        store,
        cache_ttl=config.auth.cache_ttl,
        serve_stale=config.limits.on_store_error == "fail_open",
        negative_cache_ttl=config.auth.negative_cache_ttl,
        negative_cache_size=config.auth.negative_cache_size,
    )
    tasks = [
        asyncio.create_task(_follow_invalidations(store, auth), name="invalidations"),
        asyncio.create_task(_flush_last_used(auth, config.auth.last_used_interval), name="last-used"),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await auth.flush_last_used()
        await store.close()


async def _limits(app: web.Application) -> AsyncIterator[None]:
    """The team limiter, the renewal of live requests' concurrency leases, and, at
    shutdown, the settlements still under way."""
    runtime = app[RUNTIME]
    config = runtime.config
    limiter = open_limiter(config.store, config.limits)
    runtime.admission = admission = Admission(limiter)
    renewing = asyncio.create_task(admission.renew_forever(config.limits.lease_seconds / 3), name="lease-renewal")
    try:
        yield
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        await admission.drain()
        await limiter.close()


async def _observe(app: web.Application) -> AsyncIterator[None]:
    """Metrics: the store and the limiter report their round trips to Redis and their
    outages to the app's `Metrics` (whose registry, made with the app, `/metrics` reads);
    in memory they make none, and report nothing."""
    runtime, metrics = app[RUNTIME], app[METRICS]
    assert runtime.store is not None and runtime.admission is not None  # set up before this
    observed: list[Store | Limiter] = [runtime.store, runtime.admission.limiter]
    for part in observed:
        part.observer = metrics.redis
    try:
        yield
    finally:
        for part in observed:
            part.observer = None


async def _follow_invalidations(store: Store, auth: Authenticator) -> None:
    delay = 0.1
    while True:
        try:
            async for message in store.invalidations():
                auth.invalidate(message)
                delay = 0.1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the feed is down; the cache TTL bounds staleness meanwhile
            log.warning("store change feed lost (%s); retrying", type(exc).__name__)
        # Messages may have been missed while the feed was down.
        auth.invalidate(ALL)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _flush_last_used(auth: Authenticator, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await auth.flush_last_used()
        except Exception as exc:
            log.warning("could not record keys' last-used times (%s)", type(exc).__name__)


def build_app(config: Config, config_path: str | None = None, access_stream: BinaryIO | None = None) -> web.Application:
    """`access_stream`: where access-log lines are written as bytes (`gateway serve`:
    stderr); None sends them to the `gateway.access` logger."""
    app = web.Application(middlewares=[edge], client_max_size=config.server.max_body_bytes)
    # One pool of connections for every upstream; per-backend timeouts are set per call.
    client = UpstreamClient()
    app[RUNTIME] = runtime = Runtime(
        build_routes(config, client), client, config_path=config_path, access_log=AccessLog(access_stream)
    )
    app.on_cleanup.append(lambda _: _flush(runtime.access_log))
    app.cleanup_ctx.append(_identity)
    app.cleanup_ctx.append(_limits)
    app.cleanup_ctx.append(_upstream_client)
    app[METRICS] = Metrics(app[RUNTIME])
    app.cleanup_ctx.append(_observe)
    app.on_response_prepare.append(on_response_prepare)
    add_routes(app)
    return app


async def _flush(access_log: AccessLog) -> None:
    access_log.flush()
