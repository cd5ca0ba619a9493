"""Typed keys for what the application and each request carry (aiohttp `AppKey`/`RequestKey`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from gateway.exchange import Exchange

if TYPE_CHECKING:
    from gateway.app import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
EXCHANGE: web.RequestKey[Exchange] = web.RequestKey("exchange", Exchange)
