"""The admin API through the real app on a real port: every route, every error status,
and the one rule that matters most: a key appears in exactly one answer, the one that
made it (create or rotate), and never again, in any answer or any log line.

The gateway here is the test config (tests/support/servers.py) plus an admin token; its
store is the memory store that `build_app` opens. Keys made here are also used against
`/v1/messages`, so rotation and revocation are checked where they matter: at the door.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.admin.routes import ROUTES
from gateway.identity import hash_key
from tests.support.servers import gateway_config, start_gateway

ADMIN_TOKEN = "admin-token-for-the-tests-0001"
ASK = {"model": "chat-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


class Admin:
    """An admin API client that keeps every answer it got (see `transcript`)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None = ADMIN_TOKEN) -> None:
        self.http, self.url, self.token = http, url, token
        self.transcript: list[tuple[str, str, int, str]] = []

    async def call(
        self, method: str, path: str, body: object = None, *, raw: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict, dict]:
        sent = {"authorization": f"Bearer {self.token}"} if self.token else {}
        if raw is not None or body is not None:
            sent["content-type"] = "application/json"
        sent.update(headers or {})
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        async with self.http.request(method, f"{self.url}/admin{path}", data=data, headers=sent) as response:
            text = await response.text()
            self.transcript.append((method, path, response.status, text))
            headers = {name.lower(): value for name, value in response.headers.items()}
            return response.status, headers, orjson.loads(text) if text else {}

    async def ok(self, method: str, path: str, body: object = None, status: int = 200) -> dict:
        got, _, answer = await self.call(method, path, body)
        assert got == status, answer
        return answer


def assert_error(status: int, headers: dict, body: dict, want: int, error_type: str, says: str = "") -> None:
    assert status == want, body
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    assert body["request_id"] == headers["request-id"]
    assert says in body["error"]["message"], body["error"]["message"]


@pytest.fixture
async def admin_gateway(upstream):
    running = await start_gateway(gateway_config(upstream.url, f"admin: {{token: {ADMIN_TOKEN}}}"))
    yield running
    await running.runner.cleanup()


@pytest.fixture
async def no_admin_gateway(upstream):
    running = await start_gateway(gateway_config(upstream.url))
    yield running
    await running.runner.cleanup()


@pytest.fixture
async def admin(admin_gateway):
    async with aiohttp.ClientSession() as http:
        yield Admin(http, admin_gateway.url)


async def messages_status(url: str, key: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/messages", json=ASK, headers={"x-api-key": key}) as response:
            return response.status


async def eventually_status(url: str, key: str, want: int, within: float = 2.0) -> None:
    """Auth caches drop entries when the store's change feed says so: soon, not at once."""
    deadline = time.monotonic() + within
    while (got := await messages_status(url, key)) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert got == want


# ---------------------------------------------------------------------------- the door


async def test_admin_api_is_off_without_a_token(no_admin_gateway):
    """No `admin.token`: every admin path answers as a path the gateway does not serve."""
    async with aiohttp.ClientSession() as http:
        client = Admin(http, no_admin_gateway.url, token="anything")
        for method, path in [
            ("GET", "/teams"),
            ("POST", "/keys"),
            ("GET", "/openapi.json"),
            ("PUT", "/teams"),
            ("GET", "/no-such-thing"),
        ]:
            status, headers, body = await client.call(method, path)
            assert_error(status, headers, body, 404, "not_found_error", "no such endpoint")


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {ADMIN_TOKEN}", f"Bearer {ADMIN_TOKEN}x", "Bearer client-key", "Bearer "],
    ids=["missing", "wrong", "basic-scheme", "longer", "a-client-key", "empty"],
)
async def test_wrong_or_missing_token_is_401(admin_gateway, authorization):
    async with aiohttp.ClientSession() as http:
        client = Admin(http, admin_gateway.url, token=None)
        headers = {"authorization": authorization} if authorization else {}
        # Unknown paths and wrong methods too: without the token nothing is learnt.
        for method, path in [
            ("GET", "/teams"),
            ("POST", "/keys"),
            ("GET", "/openapi.json"),
            ("GET", "/nope"),
            ("PUT", "/teams"),
        ]:
            status, response_headers, body = await client.call(method, path, headers=headers)
            assert_error(status, response_headers, body, 401, "authentication_error", "admin token")
            assert response_headers["x-should-retry"] == "false"
            assert response_headers["www-authenticate"].startswith("Bearer")


async def test_client_keys_do_not_open_it_nor_the_admin_token_the_messages_api(admin_gateway):
    assert await messages_status(admin_gateway.url, ADMIN_TOKEN) == 401


# ---------------------------------------------------------------------------- teams


async def test_team_routes(admin):
    created = await admin.ok(
        "POST",
        "/teams",
        {
            "id": "ops",
            "name": "Ops",
            "models": ["claude-*"],
            "limits": {"requests_per_minute": 60},
            "metadata": {"owner": "sre"},
        },
        status=201,
    )
    assert created["id"] == "ops" and created["models"] == ["claude-*"] and created["metadata"] == {"owner": "sre"}
    assert created["limits"]["requests_per_minute"] == 60 and created["limits"]["tokens_per_day"] is None
    assert abs(created["created_at"] - time.time()) < 60
    assert await admin.ok("GET", "/teams/ops") == created
    listed = await admin.ok("GET", "/teams")
    assert [team["id"] for team in listed["data"]] == ["ops", "team-a", "team-b"]  # by id; the YAML's too

    # PATCH: only what is sent changes; limits merge field by field and null lifts one.
    patched = await admin.ok("PATCH", "/teams/ops", {"name": "Operations", "limits": {"concurrent_requests": 2}})
    assert patched["name"] == "Operations" and patched["models"] == ["claude-*"]
    assert patched["limits"]["requests_per_minute"] == 60 and patched["limits"]["concurrent_requests"] == 2
    patched = await admin.ok("PATCH", "/teams/ops", {"limits": {"requests_per_minute": None}, "metadata": {}})
    assert patched["limits"]["requests_per_minute"] is None and patched["limits"]["concurrent_requests"] == 2
    assert patched["metadata"] == {} and patched["created_at"] == created["created_at"]
    assert await admin.ok("PATCH", "/teams/ops", {}) == patched

    assert await admin.ok("DELETE", "/teams/ops") == {"id": "ops", "deleted": True}
    status, headers, body = await admin.call("GET", "/teams/ops")
    assert_error(status, headers, body, 404, "not_found_error", "ops")


async def test_team_models_take_effect_for_its_keys(admin, admin_gateway):
    await admin.ok("POST", "/teams", {"id": "narrow", "models": ["native-*"]}, status=201)
    key = (await admin.ok("POST", "/keys", {"teams": ["narrow"]}, status=201))["key"]
    assert await messages_status(admin_gateway.url, key) == 403  # chat-model is not native-*
    await admin.ok("PATCH", "/teams/narrow", {"models": ["*"]})
    await eventually_status(admin_gateway.url, key, 200)


# ---------------------------------------------------------------------------- keys


async def test_key_lifecycle(admin, admin_gateway):
    url = admin_gateway.url
    created = await admin.ok(
        "POST",
        "/keys",
        {
            "teams": ["team-a", "team-b"],
            "name": "ci",
            "description": "the CI runner",
            "expires_at": "2099-01-01T00:00:00Z",
            "limits": {"requests_per_minute": 10},
        },
        status=201,
    )
    key = created["key"]
    assert key.startswith("gk-") and len(key) >= 40 and key.startswith(created["prefix"])
    assert created["id"].startswith("key_") and created["default_team"] == "team-a"
    assert created["status"] == "active" and created["expires_at"] == 4070908800.0
    assert created["teams"] == ["team-a", "team-b"] and created["limits"]["requests_per_minute"] == 10
    assert "hash" not in created
    assert await messages_status(url, key) == 200

    shown = await admin.ok("GET", f"/keys/{created['id']}")
    assert "key" not in shown and "hash" not in shown
    assert shown == {name: value for name, value in created.items() if name != "key"}
    team_b = await admin.ok("GET", "/keys?team=team-b")
    assert created["id"] in [k["id"] for k in team_b["data"]]

    # Rotation: a new key; the previous one keeps working for the grace period.
    rotated = await admin.ok("POST", f"/keys/{created['id']}/rotate", {"grace_seconds": 60})
    second = rotated["key"]
    assert rotated["id"] == created["id"] and second != key and second.startswith(rotated["prefix"])
    assert rotated["rotated_at"] is not None and rotated["previous_key_expires_at"] == pytest.approx(
        rotated["rotated_at"] + 60
    )
    assert await messages_status(url, second) == 200 and await messages_status(url, key) == 200

    # No grace: the previous key stops at once (as soon as the change feed is heard).
    third = (await admin.ok("POST", f"/keys/{created['id']}/rotate", {"grace_seconds": 0}))["key"]
    await eventually_status(url, second, 401)
    assert await messages_status(url, third) == 200

    revoked = await admin.ok("POST", f"/keys/{created['id']}/revoke")
    assert revoked["status"] == "revoked" and revoked["revoked_at"] is not None
    await eventually_status(url, third, 401)
    again = await admin.ok("POST", f"/keys/{created['id']}/revoke")
    assert again == revoked  # idempotent: the first revocation time stands

    status, headers, body = await admin.call("POST", f"/keys/{created['id']}/rotate", {"grace_seconds": 0})
    assert_error(status, headers, body, 400, "invalid_request_error", "revoked")


async def test_rotate_and_revoke_need_no_body(admin, admin_gateway):
    created = await admin.ok("POST", "/keys", {"teams": ["team-a"]}, status=201)
    rotated = await admin.ok("POST", f"/keys/{created['id']}/rotate")  # grace 0
    assert rotated["previous_key_expires_at"] == pytest.approx(rotated["rotated_at"])
    await eventually_status(admin_gateway.url, created["key"], 401)
    assert await messages_status(admin_gateway.url, rotated["key"]) == 200


async def test_patch_key(admin, admin_gateway):
    await admin.ok("POST", "/teams", {"id": "other"}, status=201)
    created = await admin.ok("POST", "/keys", {"teams": ["team-a", "other"], "default_team": "other"}, status=201)
    path = f"/keys/{created['id']}"
    patched = await admin.ok(
        "PATCH",
        path,
        {
            "name": "renamed",
            "description": "d",
            "models": ["native-*"],
            "limits": {"tokens_per_day": 1000},
            "expires_at": 4070908800,
        },
    )
    assert (patched["name"], patched["description"], patched["models"]) == ("renamed", "d", ["native-*"])
    assert patched["limits"]["tokens_per_day"] == 1000 and patched["expires_at"] == 4070908800
    await eventually_status(admin_gateway.url, created["key"], 403)  # chat-model is outside the key's list

    # Its default team taken away, the default follows to the first remaining team.
    patched = await admin.ok("PATCH", path, {"teams": ["team-a"], "models": None, "expires_at": None})
    assert patched["teams"] == ["team-a"] and patched["default_team"] == "team-a"
    assert patched["models"] is None and patched["expires_at"] is None
    await eventually_status(admin_gateway.url, created["key"], 200)

    status, headers, body = await admin.call("PATCH", path, {"default_team": "other"})
    assert_error(status, headers, body, 400, "invalid_request_error", "default_team")


async def test_list_keys(admin):
    listed = await admin.ok("GET", "/keys")
    assert {k["name"] for k in listed["data"]} == {"client", "claude-code", "chat-only", "two-teams", "team-b"}
    assert all(k["status"] == "active" and "key" not in k and "hash" not in k for k in listed["data"])
    team_b = await admin.ok("GET", "/keys?team=team-b")
    assert {k["name"] for k in team_b["data"]} == {"two-teams", "team-b"}


async def test_expired_key_shows_as_expired(admin, admin_gateway):
    created = await admin.ok("POST", "/keys", {"teams": ["team-a"], "expires_at": time.time() + 0.5}, status=201)
    await asyncio.sleep(0.6)
    assert (await admin.ok("GET", f"/keys/{created['id']}"))["status"] == "expired"
    assert await messages_status(admin_gateway.url, created["key"]) == 401


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("method", "path", "body", "says"),
    [
        (
            "POST",
            "/teams",
            {"id": "t", "limits": {"requests_per_minute": -1}},
            "limits.requests_per_minute: Input should be greater than or equal to 0",
        ),
        (
            "POST",
            "/teams",
            {"id": "t", "limits": {"requests_per_minute": "5"}},
            "limits.requests_per_minute: Input should be a valid integer",
        ),
        ("POST", "/teams", {"id": "t", "colour": "blue"}, "colour: unknown field"),
        ("POST", "/teams", {"id": "no spaces allowed"}, "id: String should match pattern"),
        ("POST", "/teams", {"name": "no id"}, "id: Field required"),
        ("POST", "/teams", {"id": "t", "models": "claude-*"}, "models: Input should be a valid array"),
        ("POST", "/teams", {"id": "t", "metadata": {"k": 1}}, "metadata.k: Input should be a valid string"),
        ("POST", "/teams", [], "body: Input should be an object"),
        ("PATCH", "/teams/team-a", {"name": None}, "name: Input should be a valid string"),
        ("PATCH", "/teams/team-a", {"limits": {"tokens_per_day": 1.5}}, "limits.tokens_per_day"),
        ("POST", "/keys", {"teams": []}, "teams: List should have at least 1 item"),
        ("POST", "/keys", {}, "teams: Field required"),
        ("POST", "/keys", {"teams": ["team-a", "ghost"]}, "teams[1]: no team 'ghost'"),
        ("POST", "/keys", {"teams": ["team-a"], "default_team": "team-b"}, "default_team: 'team-b' is not one of"),
        ("POST", "/keys", {"teams": ["team-a"], "expires_at": "next tuesday"}, "expires_at: expected Unix seconds"),
        ("POST", "/keys", {"teams": ["team-a"], "expires_at": 1000}, "expires_at: must be in the future"),
        ("POST", "/keys", {"teams": ["team-a"], "models": [""]}, "models[0]: String should have at least 1 character"),
        ("POST", "/keys", {"teams": ["team-a"], "limits": {"cost_per_month_usd": -0.5}}, "limits.cost_per_month_usd"),
        ("POST", "/keys", {"teams": ["team-a"], "key": "gk-bring-your-own"}, "key: unknown field"),
        (
            "POST",
            "/keys/KEY/rotate",
            {"grace_seconds": -1},
            "grace_seconds: Input should be greater than or equal to 0",
        ),
        ("POST", "/keys/KEY/rotate", {"grace_seconds": 10**9}, "grace_seconds: Input should be less than or equal"),
        ("PATCH", "/keys/KEY", {"teams": ["team-a"], "hash": "x"}, "hash: unknown field"),
    ],
)
async def test_bad_input_is_400_naming_the_field(admin, method, path, body, says):
    if "KEY" in path:
        path = path.replace("KEY", (await admin.ok("POST", "/keys", {"teams": ["team-a"]}, status=201))["id"])
    status, headers, answer = await admin.call(method, path, body)
    assert_error(status, headers, answer, 400, "invalid_request_error", says)


@pytest.mark.parametrize(
    ("raw", "content_type", "says"),
    [(b"{not json", "application/json", "Invalid JSON"), (b'{"id": "t"}', "text/plain", "Content-Type")],
)
async def test_unreadable_bodies_are_400(admin, raw, content_type, says):
    status, headers, body = await admin.call("POST", "/teams", raw=raw, headers={"content-type": content_type})
    assert_error(status, headers, body, 400, "invalid_request_error", says)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/teams/ghost", None),
        ("PATCH", "/teams/ghost", {"name": "x"}),
        ("DELETE", "/teams/ghost", None),
        ("GET", "/keys/key_ghost", None),
        ("PATCH", "/keys/key_ghost", {"name": "x"}),
        ("POST", "/keys/key_ghost/revoke", None),
        ("POST", "/keys/key_ghost/rotate", {"grace_seconds": 1}),
        ("GET", "/keys?team=ghost", None),
        ("GET", "/no-such-route", None),
    ],
)
async def test_unknown_ids_are_404(admin, method, path, body):
    status, headers, answer = await admin.call(method, path, body)
    assert_error(status, headers, answer, 404, "not_found_error")


async def test_wrong_method_is_405(admin):
    status, headers, body = await admin.call("PUT", "/teams")
    assert_error(status, headers, body, 405, "invalid_request_error", "method not allowed")


async def test_conflicts_are_409(admin):
    status, headers, body = await admin.call("POST", "/teams", {"id": "team-a"})
    assert_error(status, headers, body, 409, "invalid_request_error", "already exists")
    # A team with keys that still work cannot go; revoked, they no longer hold it.
    await admin.ok("POST", "/teams", {"id": "busy"}, status=201)
    key = await admin.ok("POST", "/keys", {"teams": ["busy"]}, status=201)
    status, headers, body = await admin.call("DELETE", "/teams/busy")
    assert_error(status, headers, body, 409, "invalid_request_error", key["id"])
    await admin.ok("POST", f"/keys/{key['id']}/revoke")
    await admin.ok("DELETE", "/teams/busy")


# ---------------------------------------------------------------------------- secrecy


async def test_keys_never_shown_after_creation(admin, admin_gateway, caplog):
    """Each key appears in the one answer that made it; never in another answer, never in
    a log line; nor does its hash, anywhere."""
    caplog.set_level(logging.DEBUG)
    made: list[tuple[int, str]] = []  # (index in the transcript of the answer that showed it, key)
    await admin.ok("POST", "/teams", {"id": "secrets"}, status=201)
    created = await admin.ok("POST", "/keys", {"teams": ["secrets"], "name": "s"}, status=201)
    made.append((len(admin.transcript) - 1, created["key"]))
    key_id = created["id"]
    for grace in (30, 0):
        rotated = await admin.ok("POST", f"/keys/{key_id}/rotate", {"grace_seconds": grace})
        made.append((len(admin.transcript) - 1, rotated["key"]))
    for _, key in made:
        await messages_status(admin_gateway.url, key)  # used, and so logged, if anything logs them
    await admin.ok("PATCH", f"/keys/{key_id}", {"name": "renamed"})
    for method, path in [
        ("GET", f"/keys/{key_id}"),
        ("GET", "/keys"),
        ("GET", "/keys?team=secrets"),
        ("GET", "/teams"),
        ("GET", "/openapi.json"),
    ]:
        await admin.ok(method, path)
    await admin.ok("POST", f"/keys/{key_id}/revoke")
    await admin.call("POST", f"/keys/{key_id}/rotate", {"grace_seconds": 0})  # refused: revoked

    shown_in = {index for index, _ in made}
    for index, (method, path, status, text) in enumerate(admin.transcript):
        for made_at, key in made:
            assert hash_key(key) not in text, (method, path)
            if index != made_at:
                assert key not in text, f"{method} {path} ({status}) shows a key made earlier"
        if index not in shown_in and path != "/openapi.json":
            answer = orjson.loads(text)
            for record in [answer, *answer.get("data", [])]:
                assert "key" not in record, (method, path)
    assert caplog.records, "nothing was logged at all"
    for _, key in made:
        assert key not in caplog.text and hash_key(key) not in caplog.text
    assert ADMIN_TOKEN not in caplog.text


# ---------------------------------------------------------------------------- the document


async def test_openapi_document_describes_every_route(admin, admin_gateway):
    document = await admin.ok("GET", "/openapi.json")
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["admin_token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "the `admin.token` of the configuration",
    }
    assert document["security"] == [{"admin_token": []}]

    # Every route the admin app really serves is in the document, and nothing else.
    mounted = next(
        resource
        for resource in admin_gateway.app.router.resources()
        if isinstance(resource, web.PrefixedSubAppResource) and resource.canonical == "/admin"
    )
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in mounted.get_info()["app"].router.routes()
        if route.method != "HEAD"
    }
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert served == documented and len(documented) == len(ROUTES)

    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert responses["401"]["content"]["application/json"]["schema"] == error_ref, (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
            if "requestBody" in operation:
                assert "400" in responses, (method, path)
                schema = operation["requestBody"]["content"]["application/json"]["schema"]
                name = schema["$ref"].rsplit("/", 1)[1]
                assert document["components"]["schemas"][name]["additionalProperties"] is False
    assert "409" in document["paths"]["/admin/teams"]["post"]["responses"]
    assert "409" in document["paths"]["/admin/teams/{team_id}"]["delete"]["responses"]
    # The document's shape for a key is the one the API answers with, field for field.
    key_view = document["components"]["schemas"]["KeyView"]
    created = await admin.ok("POST", "/keys", {"teams": ["team-a"]}, status=201)
    assert set(key_view["properties"]) == set(created) - {"key"}
    assert set(key_view["required"]) == set(key_view["properties"])
