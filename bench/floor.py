"""The floor: the least an aiohttp proxy can do, measured next to the gateway in every run.

    python -m bench.floor --port 9198 --upstream http://127.0.0.1:9199/v1/chat/completions

An aiohttp server on uvloop that forwards each request's body bytes to the upstream over
one shared `ClientSession` and streams the answer's bytes back (`StreamResponse`,
`iter_any()`), parsing nothing. Like the gateway it runs without aiohttp's access log and
with handler cancellation, so the difference between the two is the gateway's own work:
auth, limits, translation, logging, metrics.

It forwards `content-type` and the `x-fake-*` headers that shape the fake upstream's
streams (the gateway sets those from its backend config instead).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp
from aiohttp import web

FORWARDED = ("content-type", "x-fake-chunks", "x-fake-chunk-delay-ms")
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
    session = request.app[SESSION]
    async with session.post(request.app[UPSTREAM], data=body, headers=headers) as upstream:
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        if upstream.content_length is not None:  # a plain body: keep it out of chunked encoding
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for data in upstream.content.iter_any():
            await response.write(data)
        await response.write_eof()
    return response


def make_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[UPSTREAM] = upstream

    async def session_context(app: web.Application):
        # No pool limit and no decompression: the proxy should never be what waits.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_context)
    app.router.add_post("/{path:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the URL every request is posted to")
    args = parser.parse_args(argv)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        print("uvloop is not installed: the floor runs on the stock asyncio loop", file=sys.stderr)
    web.run_app(
        make_app(args.upstream),
        host=args.host,
        port=args.port,
        access_log=None,
        handler_cancellation=True,
        print=lambda _: print(f"bench floor listening on http://{args.host}:{args.port}", flush=True),
    )


if __name__ == "__main__":
    main()
