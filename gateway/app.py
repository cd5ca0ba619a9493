"""`build_app(config)`: the aiohttp application and every resource it owns.

State lives on the application object (typed keys, one `cleanup_ctx` per resource);
there are no module globals. `Runtime` is the one mutable holder: a config reload builds
a new `Router` and swaps the attribute, so in-flight requests keep the one they took.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from gateway.backends import Backend, build_backend
from gateway.config import Config
from gateway.keys import RUNTIME
from gateway.middleware import edge
from gateway.routes import add_routes
from gateway.routing import Router


@dataclass(slots=True)
class Runtime:
    config: Config
    router: Router | None = None
    session: aiohttp.ClientSession | None = None
    backends: dict[str, Backend] = field(default_factory=dict)

    def build_router(self, config: Config) -> Router:
        assert self.session is not None
        backends = {name: build_backend(name, spec, self.session) for name, spec in config.backends.items()}
        router = Router(config, backends)
        self.config, self.backends, self.router = config, backends, router
        return router


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    # One pooled client for every upstream; per-backend timeouts are set per request.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    runtime.session = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=True, skip_auto_headers=("User-Agent",)
    )
    runtime.build_router(runtime.config)
    try:
        yield
    finally:
        await runtime.session.close()


def build_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[edge], client_max_size=config.server.max_body_bytes)
    app[RUNTIME] = Runtime(config=config)
    app.cleanup_ctx.append(_upstream_session)
    add_routes(app)
    return app
