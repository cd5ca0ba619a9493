"""The limiter's lean Redis connection, against a real redis-server: pipelining in order,
scripts after a flush, errors that leave the connection usable, and what a hung, killed
or password-protected server does to the commands in flight."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis.pipelined import RespConnection, encode_args, encode_command, lean_connection
from tests.support import binaries
from tests.support.redis_server import RedisServer

pytestmark = binaries.needs("redis-server", how="apt-get install redis-server")

SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def _reference(args) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else (repr(arg) if isinstance(arg, float) else str(arg)).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


@given(st.lists(st.one_of(st.text(), st.binary(), st.integers(), st.floats(allow_nan=False)), max_size=12))
def test_any_arguments_encode_as_resp_arrays(args):
    assert encode_command(args) == _reference(args)


def test_commands_are_encoded_as_resp_arrays():
    assert (
        encode_command(["SET", b"k", 5, 0.5, "é"])
        == b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n$3\r\n0.5\r\n$2\r\n\xc3\xa9\r\n"
    )


async def test_concurrent_commands_are_answered_in_order(redis_url, redis_server):
    connection = RespConnection("127.0.0.1", redis_server.port)
    try:
        replies = await asyncio.gather(*(connection.call("INCR", "counter") for _ in range(500)))
        assert replies == list(range(1, 501))
        assert await connection.call("SET", "k", "v") == b"OK"
        assert await connection.call("GET", "k") == b"v"
    finally:
        await connection.close()


async def test_an_error_reply_fails_its_command_only(redis_url, redis_server):
    connection = RespConnection("127.0.0.1", redis_server.port)
    try:
        await connection.call("SET", "text", "x")
        results = await asyncio.gather(
            connection.call("INCR", "text"), connection.call("INCR", "n"), return_exceptions=True
        )
        assert isinstance(results[0], ResponseError) and results[1] == 1
        assert await connection.call("INCR", "n") == 2
    finally:
        await connection.close()


async def test_evalsha_loads_the_script_again_after_a_flush(redis_url, redis_server):
    connection = RespConnection("127.0.0.1", redis_server.port)
    try:
        sha = (await connection.call("SCRIPT", "LOAD", SCRIPT)).decode()
        assert await connection.evalsha(sha, SCRIPT, ["k"], [2]) == 2
        assert redis_server.command("SCRIPT", "FLUSH") == "+OK"
        assert await connection.evalsha(sha, SCRIPT, ["k"], [3]) == 5  # EVAL, once
        assert await connection.evalsha(sha, SCRIPT, ["k"], [1]) == 6  # cached again
    finally:
        await connection.close()


async def test_commands_sent_together_get_each_its_reply_or_error(redis_url, redis_server):
    connection = RespConnection("127.0.0.1", redis_server.port)
    try:
        await connection.call("SET", "text", "x")
        replies = await connection.send_many(
            [encode_command(["INCR", "m"]), encode_command(["INCR", "text"]), encode_command(["INCR", "m"])]
        )
        assert replies[0] == 1 and isinstance(replies[1], ResponseError) and replies[2] == 2
    finally:
        await connection.close()


async def test_evalsha_many_loads_the_script_again_after_a_flush(redis_url, redis_server):
    connection = RespConnection("127.0.0.1", redis_server.port)
    calls = [(3, encode_args([1, "j", n])) for n in (1, 2, 3)]  # numkeys, key, argument: encoded once
    try:
        sha = (await connection.call("SCRIPT", "LOAD", SCRIPT)).decode()
        assert await connection.evalsha_many(sha, SCRIPT, calls) == [1, 3, 6]
        assert redis_server.command("SCRIPT", "FLUSH") == "+OK"
        assert await connection.evalsha_many(sha, SCRIPT, calls) == [7, 9, 12]  # EVAL for each
        assert await connection.evalsha_packed(sha, SCRIPT, *calls[0]) == 13  # cached again
    finally:
        await connection.close()


async def test_a_hung_server_times_out_every_command_in_flight_then_the_connection_recovers():
    with RedisServer() as server:
        connection = RespConnection("127.0.0.1", server.port, timeout=0.3)
        try:
            assert await connection.call("PING") == b"PONG"
            server.pause()
            results = await asyncio.gather(*(connection.call("INCR", "n") for _ in range(3)), return_exceptions=True)
            assert all(isinstance(result, RedisTimeoutError) for result in results), results
            server.resume()
            assert await connection.call("PING") == b"PONG"  # a new connection
        finally:
            server.resume()
            await connection.close()


async def test_a_killed_server_fails_commands_with_connection_errors_until_it_is_back():
    server = RedisServer()
    server.start()
    connection = RespConnection("127.0.0.1", server.port, timeout=1.0)
    try:
        assert await connection.call("PING") == b"PONG"
        server.kill()
        with pytest.raises(RedisConnectionError):
            await connection.call("PING")
        with pytest.raises(RedisConnectionError):  # nothing listens: the connect fails
            await connection.call("PING")
        server.start()
        assert await connection.call("PING") == b"PONG"
    finally:
        await connection.close()
        server.close()


async def test_password_and_acl_user():
    with RedisServer() as server:
        assert server.command("ACL", "SETUSER", "gateway", "on", ">s3cret", "~*", "+@all") == "+OK"
        assert server.command("CONFIG", "SET", "requirepass", "topsecret") == "+OK"
        for username, password in ((None, "topsecret"), ("gateway", "s3cret")):
            connection = RespConnection("127.0.0.1", server.port, username=username, password=password, db=2)
            try:
                assert await connection.call("SET", "k", username or "default") == b"OK"
            finally:
                await connection.close()
        wrong = RespConnection("127.0.0.1", server.port, password="nope")
        with pytest.raises(AuthenticationError):
            await wrong.call("PING")
        await wrong.close()
        refused = RespConnection("127.0.0.1", server.port)
        with pytest.raises(AuthenticationError):  # NOAUTH
            await refused.call("PING")
        await refused.close()


async def test_a_caller_cancelled_while_connecting_leaves_the_others_served(redis_url, redis_server):
    connection = RespConnection("127.0.0.1", redis_server.port)
    try:
        first = asyncio.create_task(connection.call("INCR", "n"))
        second = asyncio.create_task(connection.call("INCR", "n"))
        await asyncio.sleep(0)  # both wait on the one connect
        first.cancel()
        assert await second == 1
        assert first.cancelled()
        assert await connection.call("INCR", "n") == 2
    finally:
        await connection.close()


async def test_commands_issued_during_the_handshake_run_after_it_each_with_its_own_reply():
    """With a password and a database, the connection sends AUTH and SELECT first. A
    command issued while their replies were still on the way used to be written between
    AUTH and SELECT: it ran on database 0. Callers keep arriving here, one per turn of the
    event loop, for as long as the first connect takes."""
    with RedisServer() as server:
        assert server.command("CONFIG", "SET", "requirepass", "topsecret") == "+OK"
        # As the limiter makes it: from the redis-py client of the same settings.
        client = Redis(port=server.port, password="topsecret", db=2, client_name="limiter")
        connection = lean_connection(client, 1.0)
        assert connection is not None
        try:
            calls = [asyncio.create_task(connection.call("INCRBY", "k0", 1))]
            while not calls[0].done() and len(calls) < 1000:
                await asyncio.sleep(0)
                calls.append(asyncio.create_task(connection.call("INCRBY", f"k{len(calls)}", len(calls) + 1)))
            assert len(calls) > 2, "the connect took no time at all: nothing arrived during it"
            assert await asyncio.gather(*calls) == [n + 1 for n in range(len(calls))]
            assert await connection.call("CLIENT", "GETNAME") == b"limiter"
        finally:
            await connection.close()
            await client.aclose()
        for db, keys in ((2, len(calls)), (0, 0)):
            check = Redis(port=server.port, password="topsecret", db=db)
            try:
                assert await check.dbsize() == keys, db
            finally:
                await check.aclose()


async def test_a_handshake_without_an_answer_fails_within_the_connect_timeout():
    """A server that accepts the connection (the kernel does, for a stopped process) but
    never answers AUTH: the connect fails in `timeout` rather than hang every caller."""
    with RedisServer() as server:
        assert server.command("CONFIG", "SET", "requirepass", "topsecret") == "+OK"
        connection = RespConnection("127.0.0.1", server.port, password="topsecret", db=2, timeout=0.3)
        server.pause()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(connection.call("PING") for _ in range(3)), return_exceptions=True), 10
            )
            assert all(isinstance(r, RedisConnectionError) and "timed out" in str(r) for r in results), results
            server.resume()
            assert await connection.call("PING") == b"PONG"  # a new connection, handshake and all
        finally:
            server.resume()
            await connection.close()
