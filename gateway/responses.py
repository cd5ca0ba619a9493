"""The one way the gateway answers with JSON: a body encoded by orjson, served as
`application/json` (no charset: JSON is UTF-8 by definition). The client endpoints, the
probes, the admin API and the HTTP edge's error bodies all come through here."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

JSON = "application/json"


def json_response(payload: object, status: int = 200, *, headers: Mapping[str, str] | None = None) -> web.Response:
    """`payload` as a JSON answer with `status`, and `headers` besides its content type."""
    return web.Response(body=orjson.dumps(payload), status=status, content_type=JSON, headers=headers)
