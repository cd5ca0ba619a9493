"""Authentication and authorization through the real app, with the anthropic SDK as the client.

Keys come from the test config's YAML bootstrap (tests/support/servers.py). Claude Code
retries a 401 ten times unless told not to, so every 401 and 403 must also say
`x-should-retry: false`.
"""

from __future__ import annotations

import logging
import time

import aiohttp
import anthropic
import pytest

from gateway.identity import ApiKey, hash_key, shown_prefix
from gateway.runtime import RUNTIME

ASK = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def sdk(gateway, **kwargs) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.url, max_retries=0, **kwargs)


async def test_both_header_styles_authenticate_the_same_key(gateway, upstream):
    async with sdk(gateway, api_key="client-key") as client:  # SDK 2.x: Authorization: Bearer
        assert (await client.messages.create(model="chat-model", **ASK)).type == "message"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gateway.url}/v1/messages", json={"model": "chat-model", **ASK}, headers={"x-api-key": "client-key"}
        ) as r:
            assert r.status == 200
        async with http.post(
            f"{gateway.url}/v1/messages",
            json={"model": "chat-model", **ASK},
            headers={"authorization": "Bearer client-key"},
        ) as r:
            assert r.status == 200
    # The client's credential never reaches the upstream, whichever header carried it.
    for sent in upstream.requests:
        assert "client-key" not in str(sent.headers)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key"),
        ({"x-api-key": "not-a-key-we-know"}, "invalid API key"),
        ({"authorization": "Bearer not-a-key-we-know"}, "invalid API key"),
        ({"authorization": "Basic Y2xpZW50LWtleQ=="}, "missing API key"),
    ],
    ids=["missing", "unknown", "unknown-bearer", "basic-scheme"],
)
async def test_401_cases(gateway, upstream, headers, message):
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gateway.url}/v1/messages", json={"model": "chat-model", **ASK}, headers=headers
        ) as response:
            body = await response.json()
            assert response.status == 401
            assert response.headers["x-should-retry"] == "false"
    assert body["error"]["type"] == "authentication_error" and message in body["error"]["message"]
    assert upstream.requests == []


async def test_sdk_raises_authentication_error_and_sends_once(gateway, caplog):
    caplog.set_level(logging.INFO, logger="gateway.access")
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="wrong-key", max_retries=2) as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client.messages.create(model="chat-model", **ASK)
    assert caught.value.status_code == 401 and caught.value.request_id.startswith("req_")
    await gateway.settled()
    attempts = [r for r in caplog.records if r.name == "gateway.access" and '"status":401' in r.getMessage()]
    assert len(attempts) == 1  # x-should-retry: false stops the SDK's retries


async def add_key(gateway, raw: str, **fields) -> ApiKey:
    record = ApiKey(
        id="key_test_" + raw[-4:],
        prefix=shown_prefix(raw),
        hash=hash_key(raw),
        teams=("team-a",),
        default_team="team-a",
        created_at=time.time(),
        **fields,
    )
    return await gateway.app[RUNTIME].store.create_key(record)


async def test_expired_and_revoked_keys_are_401(gateway):
    await add_key(gateway, "expired-key-0001", expires_at=time.time() - 1)
    revoked = await add_key(gateway, "revoked-key-0002")
    async with sdk(gateway, api_key="revoked-key-0002") as client:
        await client.messages.create(model="chat-model", **ASK)  # works, and is now cached
    await gateway.app[RUNTIME].store.revoke_key(revoked.id, time.time())
    for key, says in (("expired-key-0001", "expired"), ("revoked-key-0002", "revoked")):
        async with sdk(gateway, api_key=key) as client:
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await client.messages.create(model="chat-model", **ASK)
        assert says in caught.value.body["error"]["message"]


@pytest.mark.parametrize(
    ("key", "team", "model", "says"),
    [
        ("chat-only-key", None, "native-model", "may not use model 'native-model'"),  # the key's own list
        ("team-b-key", None, "chat-model", "team 'team-b' may not use model 'chat-model'"),  # the team's list
        ("two-teams-key", "team-b", "chat-model", "team 'team-b' may not use model 'chat-model'"),
        ("client-key", "team-b", "chat-model", "not a member of team 'team-b'"),
        ("client-key", "no-such-team", "chat-model", "not a member of team 'no-such-team'"),
    ],
)
async def test_403_cases(gateway, upstream, key, team, model, says):
    headers = {"x-team-id": team} if team else {}
    async with sdk(gateway, api_key=key, default_headers=headers) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            await client.messages.create(model=model, **ASK)
    assert caught.value.status_code == 403
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.body["error"]["type"] == "permission_error"
    assert says in caught.value.body["error"]["message"]
    assert upstream.requests == []


async def test_team_picked_by_header(gateway, upstream):
    async with sdk(gateway, api_key="two-teams-key", default_headers={"x-team-id": "team-b"}) as client:
        assert (await client.messages.create(model="native-model", **ASK)).type == "message"
        ids = [model.id async for model in client.models.list()]
    assert ids == ["native-model"]  # a team sees only what it may use
    async with sdk(gateway, api_key="two-teams-key") as client:  # default team: team-a
        assert (await client.messages.create(model="chat-model", **ASK)).type == "message"


async def test_models_and_count_tokens_need_a_key(gateway):
    async with sdk(gateway, api_key="wrong-key") as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.models.list()
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.count_tokens(model="chat-model", messages=ASK["messages"])
    async with sdk(gateway, api_key="chat-only-key") as client:
        with pytest.raises(anthropic.NotFoundError):
            await client.models.retrieve("native-model")  # hidden from a key that may not use it
        with pytest.raises(anthropic.PermissionDeniedError):
            await client.messages.count_tokens(model="native-model", messages=ASK["messages"])


async def test_unknown_model_is_404_after_auth(gateway):
    async with sdk(gateway, api_key="wrong-key") as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(model="no-such-model", **ASK)
    async with sdk(gateway, api_key="client-key") as client:
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.create(model="no-such-model", **ASK)


async def test_keys_never_logged(gateway, caplog):
    caplog.set_level(logging.DEBUG)
    for key in ("client-key", "wrong-key-9999"):
        async with sdk(gateway, api_key=key) as client:
            try:
                await client.messages.create(model="chat-model", **ASK)
            except anthropic.AuthenticationError:
                pass
    await gateway.settled()
    assert caplog.records, "nothing was logged at all"
    assert "client-key" not in caplog.text and "wrong-key-9999" not in caplog.text
    assert any('"key_id":"key_' in record.getMessage() for record in caplog.records)  # the id stands in
