"""Team limits through the real gateway on a real Redis: exact across processes, leases that
free themselves, usage that adds up, one team unable to starve another, and Redis dying
under load.

"Two gateway processes" are two `gateway serve` processes on two ports sharing one Redis,
as two machines would be. The exactness test runs on one server and on a 3-master Redis
Cluster.
"""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp
import anthropic
import pytest
from multidict import CIMultiDict
from redis.asyncio import Redis

from gateway.admission import UNCAPPED_OUTPUT_RESERVATION
from gateway.protocols.messages import MAX_TOKENS
from gateway.runtime import RUNTIME
from gateway.translate.estimate import estimate_input_tokens, estimate_output_tokens
from tests.support import binaries
from tests.support.processes import start_gateway_process
from tests.support.redis_cluster import LocalRedisCluster, cluster_url_fixture, redis_cluster_fixture  # noqa: F401
from tests.support.redis_server import RedisServer
from tests.support.replies import chat_chunks, chat_message, error
from tests.support.servers import gateway_config, start_gateway

ASK = {"model": "chat-model", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
RATE_HEADERS = ("limit", "remaining", "reset")
# Claude Code asks for `max_tokens` far past what a model writes; chat-model's route has no
# `max_output_tokens`, so the reservation is UNCAPPED_OUTPUT_RESERVATION.
GREEDY = {**ASK, "max_tokens": MAX_TOKENS, "stream": True}
# A day's budget with room for GREEDY's input and reservation, and the input of ASK: a
# reservation of one token more leaves a team-mate no room.
BUDGET = estimate_input_tokens(GREEDY) + UNCAPPED_OUTPUT_RESERVATION + estimate_input_tokens(ASK)

TEAMS = (
    """
  - id: rpm
    limits: {requests_per_minute: 50}
    keys: [{name: rpm, key: rpm-key-0001}]
  - id: conc
    limits: {concurrent_requests: 5}
    keys: [{name: conc, key: conc-key-0001}]
  - id: acct
    limits: {input_tokens_per_minute: 1000000, output_tokens_per_minute: 1000000}
    keys: [{name: acct, key: acct-key-0001}]
  - id: small
    limits: {requests_per_minute: 5}
    keys: [{name: small, key: small-key-0001}]
  - id: free
    keys: [{name: free, key: free-key-0001}]
  - id: counting
    limits: {requests_per_minute: 2, count_tokens_per_minute: 30}
    keys: [{name: counting, key: counting-key-0001}]
"""
    + f"""\
  - id: budget
    limits: {{tokens_per_day: {BUDGET}}}
    keys: [{{name: greedy, key: greedy-key-0001}}, {{name: mate, key: mate-key-0001}}]
"""
)


def config(
    upstream_url: str, redis_url: str, policy: str = "fail_closed", lease: float = 60, mode: str = "standalone"
) -> str:
    extra = (
        f"store: {{type: redis, mode: {mode}, url: '{redis_url}'}}\n"
        f"limits: {{on_store_error: {policy}, lease_seconds: {lease}}}\n"
    )
    return extra + gateway_config(upstream_url, teams=TEAMS)


async def post(http: aiohttp.ClientSession, url: str, key: str, body: dict = ASK) -> tuple[int, dict, bytes]:
    async with http.post(f"{url}/v1/messages", json=body, headers={"x-api-key": key}) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


async def count(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, dict, bytes]:
    body = {"model": ASK["model"], "messages": ASK["messages"]}
    async with http.post(f"{url}/v1/messages/count_tokens", json=body, headers={"x-api-key": key}) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


@pytest.fixture
async def gateway_on_redis(upstream, redis_url):
    running = await start_gateway(config(upstream.url, redis_url))
    yield running
    await running.runner.cleanup()


@pytest.fixture(params=["standalone", "cluster"])
def shared_redis(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(mode, url) of an emptied Redis: the tests' own server, or their 3-master cluster."""
    if request.param == "cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        url = request.getfixturevalue("cluster_url")
        # The URL names the first node; the team's limiter keys are on the third, the
        # keys and teams on the second (slots are assigned in order by --cluster create):
        # both processes' clients must route every script, and one master decides.
        assert cluster.node_of("{gw:t:rpm}:") == 2 and cluster.node_of("{gw}:") == 1
        return "cluster", url
    return "standalone", request.getfixturevalue("redis_url")


async def test_rpm_is_exact_across_two_processes(upstream, shared_redis, tmp_path):
    mode, url = shared_redis
    text = config(upstream.url, url, mode=mode)
    first = await start_gateway_process(text, tmp_path, "one")
    second = await start_gateway_process(text, tmp_path, "two")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            began = time.monotonic()
            results = await asyncio.gather(
                *(post(http, (first, second)[i % 2].url, "rpm-key-0001") for i in range(200))
            )
            elapsed = time.monotonic() - began
            statuses = [status for status, _, _ in results]
            admitted = statuses.count(200)
            refilled = math.floor(elapsed * 50 / 60)
            assert set(statuses) == {200, 429}
            assert 50 <= admitted <= 50 + refilled, (admitted, elapsed)
            for status, headers, body in results:
                assert headers["anthropic-ratelimit-requests-limit"] == "50"
                if status == 429:
                    assert int(headers["retry-after"]) >= 1
                    assert b"requests_per_minute" in body and b"rate_limit_error" in body
            # After the wait the bucket has refilled enough for the next request.
            wait = min(int(h["retry-after"]) for s, h, _ in results if s == 429)
            await asyncio.sleep(wait)
            status, _, _ = await post(http, first.url, "rpm-key-0001")
            assert status == 200
    finally:
        await first.stop()
        await second.stop()


async def test_count_tokens_is_exact_across_two_processes_and_spends_no_request(upstream, redis_url, tmp_path):
    text = config(upstream.url, redis_url)
    first = await start_gateway_process(text, tmp_path, "one")
    second = await start_gateway_process(text, tmp_path, "two")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            began = time.monotonic()
            results = await asyncio.gather(
                *(count(http, (first, second)[i % 2].url, "counting-key-0001") for i in range(80))
            )
            elapsed = time.monotonic() - began
            statuses = [status for status, _, _ in results]
            assert 30 <= statuses.count(200) <= 30 + math.floor(elapsed * 30 / 60), (statuses.count(200), elapsed)
            assert set(statuses) == {200, 429}
            for status, headers, body in results:
                assert headers["anthropic-ratelimit-requests-limit"] == "30"  # the count's own bucket
                if status == 429:
                    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
                    assert int(headers["retry-after"]) >= 1 and b"rate_limit_error" in body
                    assert b"count_tokens_per_minute of team 'counting'" in body
            # Both messages requests of the minute are still there, in either process.
            for url, remaining in ((first.url, "1"), (second.url, "0")):
                status, headers, _ = await post(http, url, "counting-key-0001")
                assert status == 200 and headers["anthropic-ratelimit-requests-limit"] == "2"
                assert headers["anthropic-ratelimit-requests-remaining"] == remaining
    finally:
        await first.stop()
        await second.stop()


async def test_count_tokens_has_a_limit_by_default_that_a_context_burst_fits(upstream):
    """Claude Code's `/context` sends about 26 count_tokens at once; the default (300 a
    minute, a full minute's worth at once) takes it, and refuses a key that keeps on."""
    running = await start_gateway(gateway_config(upstream.url))
    try:
        async with anthropic.AsyncAnthropic(base_url=running.url, api_key="client-key", max_retries=0) as sdk:
            began = time.monotonic()
            burst = [
                sdk.messages.with_raw_response.count_tokens(model="chat-model", messages=ASK["messages"])
                for _ in range(26)
            ]
            answers = await asyncio.gather(*burst)
            assert {answer.headers["anthropic-ratelimit-requests-limit"] for answer in answers} == {"300"}
            assert all(counted.input_tokens > 0 for counted in await asyncio.gather(*(a.parse() for a in answers)))

            more = await asyncio.gather(
                *(sdk.messages.count_tokens(model="chat-model", messages=ASK["messages"]) for _ in range(400)),
                return_exceptions=True,
            )
            elapsed = time.monotonic() - began
            refused = [error for error in more if isinstance(error, anthropic.RateLimitError)]
            assert len(refused) + sum(not isinstance(answer, BaseException) for answer in more) == 400
            assert 274 <= 400 - len(refused) <= 274 + math.floor(elapsed * 300 / 60), (len(refused), elapsed)
            assert "count_tokens_per_minute of team 'team-a'" in refused[0].message
            # Generation is not counted against it: still served.
            assert (await sdk.messages.create(model="chat-model", max_tokens=20, messages=ASK["messages"])).content
    finally:
        await running.runner.cleanup()


async def test_every_answer_carries_the_team_headers(gateway_on_redis, upstream):
    upstream.script(chat_message("ok"), error(500, "boom"))
    async with aiohttp.ClientSession() as http:
        ok = await post(http, gateway_on_redis.url, "small-key-0001")
        failed = await post(http, gateway_on_redis.url, "small-key-0001")
        upstream.script({"sse": chat_chunks({"content": "streamed"})})
        streamed = await post(http, gateway_on_redis.url, "small-key-0001", {**ASK, "stream": True})
    assert (ok[0], failed[0], streamed[0]) == (200, 500, 200)
    for _, headers, _ in (ok, failed, streamed):
        for field in RATE_HEADERS:
            assert f"anthropic-ratelimit-requests-{field}" in headers
    assert [int(h["anthropic-ratelimit-requests-remaining"]) for _, h, _ in (ok, failed, streamed)] == [4, 3, 2]


async def test_concurrency_slots_hold_under_load_and_free_up(gateway_on_redis, upstream):
    upstream.script(*[{**chat_message("slow"), "delay": 0.3} for _ in range(50)])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        results = await asyncio.gather(*(post(http, gateway_on_redis.url, "conc-key-0001") for _ in range(50)))
        statuses = [status for status, _, _ in results]
        assert upstream.max_in_flight <= 5
        assert statuses.count(200) >= 5 and set(statuses) <= {200, 429}
        for status, _, body in results:
            if status == 429:
                assert b"concurrent_requests" in body

        # Slots come back after upstream errors and after clients that leave mid-stream.
        upstream.reset()
        upstream.script(*[error(500, "boom") for _ in range(5)])
        assert [
            s
            for s, _, _ in await asyncio.gather(*(post(http, gateway_on_redis.url, "conc-key-0001") for _ in range(5)))
        ] == [500] * 5
        upstream.script(*[{"sse": chat_chunks({"content": "never ends"}), "stall_after": 2} for _ in range(5)])
        for _ in range(5):
            async with http.post(
                f"{gateway_on_redis.url}/v1/messages",
                json={**ASK, "stream": True},
                headers={"x-api-key": "conc-key-0001"},
            ) as response:
                assert b"message_start" in await response.content.readany()
        # (each response is closed on leaving its block: the client went away)
        await settle_a_moment(upstream, disconnects=5)
        upstream.reset()
        upstream.script(*[{**chat_message("again"), "delay": 0.2} for _ in range(5)])
        statuses = [
            s
            for s, _, _ in await asyncio.gather(*(post(http, gateway_on_redis.url, "conc-key-0001") for _ in range(5)))
        ]
        assert statuses == [200] * 5


async def settle_a_moment(upstream, *, disconnects: int) -> None:
    for _ in range(100):
        if upstream.disconnects >= disconnects:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # the background settlements after the cancellations


async def test_a_killed_process_frees_its_slots_when_the_leases_end(upstream, redis_url, tmp_path):
    text = config(upstream.url, redis_url, lease=3)
    doomed = await start_gateway_process(text, tmp_path, "doomed")
    survivor = await start_gateway(text)
    try:
        upstream.script(*[{"sse": chat_chunks({"content": "stuck"}), "stall_after": 2} for _ in range(5)])
        async with aiohttp.ClientSession() as http:
            streams = [
                await http.post(
                    f"{doomed.url}/v1/messages", json={**ASK, "stream": True}, headers={"x-api-key": "conc-key-0001"}
                )
                for _ in range(5)
            ]
            for stream in streams:
                assert b"message_start" in await stream.content.readany()
            doomed.kill()
            killed = time.monotonic()
            status, _, body = await post(http, survivor.url, "conc-key-0001")
            assert status == 429 and b"concurrent_requests" in body  # the dead process's slots still count
            upstream.script(chat_message("free again"))
            while (await post(http, survivor.url, "conc-key-0001"))[0] != 200:
                assert time.monotonic() - killed < 15, "the leases never ran out"
                await asyncio.sleep(0.25)
            for stream in streams:
                stream.close()
    finally:
        await doomed.stop()
        await survivor.runner.cleanup()


async def test_recorded_usage_is_the_exact_sum(gateway_on_redis, upstream):
    replies, expected_in, expected_out = [], 0, 0
    for i in range(20):
        usage = {"prompt_tokens": 100 + i, "completion_tokens": 10 + i, "total_tokens": 110 + 2 * i}
        expected_in += 100 + i
        expected_out += 10 + i
        if i % 2:
            replies.append({"sse": chat_chunks({"content": f"answer {i}"}, usage=usage)})
        else:
            replies.append(chat_message(f"answer {i}", usage=usage))
    upstream.script(*replies)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        # The scripted replies are taken in arrival order: send them one stream flag each.
        bodies = [{**ASK, "stream": bool(i % 2)} for i in range(20)]
        results = []
        for body in bodies:  # in order, so each request meets its own reply
            results.append(await post(http, gateway_on_redis.url, "acct-key-0001", body))
        assert [s for s, _, _ in results] == [200] * 20

        # A stream the client cuts counts what it was sent (no usage ever came: estimated).
        upstream.script({"sse": chat_chunks({"content": "partial"}), "stall_after": 2})
        async with http.post(
            f"{gateway_on_redis.url}/v1/messages", json={**ASK, "stream": True}, headers={"x-api-key": "acct-key-0001"}
        ) as response:
            seen = b""
            while b"partial" not in seen:
                seen += await response.content.readany()
        await settle_a_moment(upstream, disconnects=1)
    expected_in += estimate_input_tokens({**ASK, "stream": True})
    expected_out += estimate_output_tokens(len("partial"))

    runtime = gateway_on_redis.app[RUNTIME]
    await runtime.admission.drain()
    today = time.strftime("%Y-%m-%d", time.gmtime())
    rows = await runtime.admission.limiter.usage("acct", today, today)
    assert sum(row["requests"] for row in rows) == 21
    assert sum(row["input"] for row in rows) == expected_in
    assert sum(row["output"] for row in rows) == expected_out


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_max_tokens_cannot_reserve_a_teams_budget(upstream, store, request):
    """A security review's request: `max_tokens: 10000000000000000000` reserved the team's
    whole day while it ran, and every team-mate was told the budget resets at midnight."""
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else None
    running = await start_gateway(
        config(upstream.url, redis_url) if redis_url else gateway_config(upstream.url, teams=TEAMS)
    )
    counter = f"{{gw:t:budget}}:tpd:{time.strftime('%Y-%m-%d', time.gmtime())}"
    raw = Redis.from_url(redis_url) if redis_url else None
    try:
        async with aiohttp.ClientSession() as http:
            status, _, body = await post(http, running.url, "greedy-key-0001", {**ASK, "max_tokens": 10**19})
            assert status == 400 and b"max_tokens: Input should be less than or equal to 1000000" in body
            assert upstream.requests == [] and (raw is None or await raw.get(counter) is None)

            upstream.script({"sse": chat_chunks({"content": "thinking hard"}), "stall_after": 2}, chat_message("ok"))
            async with http.post(
                f"{running.url}/v1/messages", json=GREEDY, headers={"x-api-key": "greedy-key-0001"}
            ) as greedy:
                assert greedy.status == 200 and b"message_start" in await greedy.content.readany()
                if raw is not None:  # what the limiter holds for it while it runs
                    assert (
                        int(float(await raw.get(counter)))
                        == estimate_input_tokens(GREEDY) + UNCAPPED_OUTPUT_RESERVATION
                    )
                # A team-mate is admitted meanwhile...
                status, _, body = await post(http, running.url, "mate-key-0001")
                assert status == 200, body
                await running.app[RUNTIME].admission.drain()
                # ...and the reservation is no smaller than that: its 18 tokens fill the budget.
                status, _, body = await post(http, running.url, "mate-key-0001")
                assert status == 429 and b"tokens_per_day" in body
    finally:
        if raw is not None:
            await raw.aclose()
        await running.runner.cleanup()


async def test_one_team_cannot_starve_another(gateway_on_redis, upstream):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        saturating = [post(http, gateway_on_redis.url, "small-key-0001") for _ in range(30)]
        others = [post(http, gateway_on_redis.url, "free-key-0001") for _ in range(30)]
        results = await asyncio.gather(*saturating, *others)
    small = [s for s, _, _ in results[:30]]
    free = [s for s, _, _ in results[30:]]
    assert small.count(200) == 5 and small.count(429) == 25
    assert free == [200] * 30


@pytest.fixture
def own_redis():
    """A Redis of this test's own that keeps its data across a kill, as a production one does."""
    binaries.require("redis-server", "apt-get install redis-server")
    with RedisServer(persistent=True) as server:
        yield server


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
async def test_redis_dies_under_load_and_comes_back(upstream, own_redis, policy):
    redis_server = own_redis
    running = await start_gateway(config(upstream.url, own_redis.url, policy=policy))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            assert (await post(http, running.url, "free-key-0001"))[0] == 200  # the key is cached from here on
            redis_server.kill()
            during = await asyncio.gather(*(post(http, running.url, "free-key-0001") for _ in range(10)))
            statuses = {status for status, _, _ in during}
            if policy == "fail_closed":
                assert statuses == {529}
                assert all(b"overloaded_error" in body for _, _, body in during)
            else:
                assert statuses == {200}
            redis_server.start()
            for _ in range(100):
                if (await post(http, running.url, "free-key-0001"))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the gateway did not recover when Redis came back")
            # No slot is stuck: a team with a concurrency limit gets all of them.
            upstream.script(*[{**chat_message("ok"), "delay": 0.1} for _ in range(5)])
            statuses = [
                s for s, _, _ in await asyncio.gather(*(post(http, running.url, "conc-key-0001") for _ in range(5)))
            ]
            assert statuses == [200] * 5
    finally:
        await running.runner.cleanup()


async def test_a_limit_changed_through_the_admin_api_applies_to_the_next_request(upstream, redis_url):
    """No restart: the team update reaches the auth cache through the store's change feed,
    and admission reads the limits of the team it is handed. (A team made through the API:
    the YAML's own are the file's to change.)"""
    running = await start_gateway("admin: {token: admin-token-0001}\n" + config(upstream.url, redis_url))
    admin = {"authorization": "Bearer admin-token-0001"}
    try:
        async with aiohttp.ClientSession() as http:
            team = {"id": "made", "limits": {"requests_per_minute": 5}}
            async with http.post(f"{running.url}/admin/teams", json=team, headers=admin) as response:
                assert response.status == 201
            async with http.post(f"{running.url}/admin/keys", json={"teams": ["made"]}, headers=admin) as response:
                key = (await response.json())["key"]
            status, headers, _ = await post(http, running.url, key)
            assert status == 200 and headers["anthropic-ratelimit-requests-limit"] == "5"
            async with http.patch(
                f"{running.url}/admin/teams/made", json={"limits": {"requests_per_minute": 1}}, headers=admin
            ) as response:
                assert response.status == 200
            for _ in range(50):  # the change feed is asynchronous: milliseconds
                status, headers, body = await post(http, running.url, key)
                if headers.get("anthropic-ratelimit-requests-limit") == "1":
                    break
                await asyncio.sleep(0.02)
            assert headers["anthropic-ratelimit-requests-limit"] == "1"
            assert status == 429 and b"requests_per_minute" in body  # the first request already spent the new minute
    finally:
        await running.runner.cleanup()


async def test_count_tokens_per_minute_is_set_through_the_admin_api_like_any_limit(upstream):
    running = await start_gateway("admin: {token: admin-token-0001}\n" + gateway_config(upstream.url))
    admin = {"authorization": "Bearer admin-token-0001"}
    try:
        async with aiohttp.ClientSession() as http:
            team = {"id": "made", "limits": {"count_tokens_per_minute": 2}}
            async with http.post(f"{running.url}/admin/teams", json=team, headers=admin) as response:
                assert response.status == 201
                assert (await response.json())["limits"]["count_tokens_per_minute"] == 2
            keyed = {"teams": ["made"], "limits": {"count_tokens_per_minute": 1}}
            async with http.post(f"{running.url}/admin/keys", json=keyed, headers=admin) as response:
                narrow = (await response.json())["key"]
            async with http.post(f"{running.url}/admin/keys", json={"teams": ["made"]}, headers=admin) as response:
                key = (await response.json())["key"]
            assert (await count(http, running.url, narrow))[0] == 200
            status, headers, body = await count(http, running.url, narrow)
            assert status == 429 and b"count_tokens_per_minute of key" in body
            assert (await count(http, running.url, key))[0] == 200  # the team's second
            status, headers, body = await count(http, running.url, key)
            assert status == 429 and b"count_tokens_per_minute of team 'made'" in body
            assert headers["anthropic-ratelimit-requests-limit"] == "2"
    finally:
        await running.runner.cleanup()
