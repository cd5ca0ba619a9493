"""A lean Redis connection for the limiter's hot path: every admission and settlement.

redis-py spends about 150 µs of CPU on each command (connection pool, retry wrapper,
encoder, parser layers), more than the rest of a request through the gateway. This is a
single pipelined connection to one server, on an `asyncio.Protocol`:

- Commands issued in the same turn of the event loop leave in one write (corking), and
  their replies come back in order, parsed by hiredis.
- One timer per connection, not per command: replies arrive in order, so only the oldest
  command can be late. When it is (`timeout` seconds), the connection is abandoned and
  every command on it fails with `TimeoutError` (it may have run: callers must not
  repeat it blindly, as an admission run twice charges twice).
- A lost connection fails every command in flight with `ConnectionError`; the next
  command opens a new connection. A command never written is not lost: connecting
  failed, and the caller may try again.
- Opening a connection is one exchange, bounded by `timeout` with the connect itself:
  AUTH, SELECT and CLIENT SETNAME (those that apply) leave in one write, and the
  connection is used only once all their replies are in. Commands issued meanwhile wait
  for it, so none runs before AUTH or on the wrong database. Each connection matches
  replies to its own commands only: a reply never reaches a caller of another one.

Errors are redis-py's exception classes, so callers handle one set of errors whichever
client they run on. Used for one server or a Sentinel-discovered master; a cluster's
slots stay with redis-py's cluster client (`redis/clients.py`).
"""

from __future__ import annotations

import asyncio
import collections
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Sequence

import hiredis
from redis.exceptions import AuthenticationError, NoScriptError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    return b"*%d\r\n%b" % (len(args), encode_args(args))


def encode_args(args: Sequence[Arg]) -> bytes:
    """A command's arguments in RESP, without the array's header: parts of a command
    encoded apart (see `RespConnection.evalsha_packed`) are joined as bytes."""
    # The limiter's commands are text, nearly always ASCII: built as one string and
    # encoded once (a string's length is then its byte length); anything else, per part.
    try:
        parts = []
        for arg in args:
            text = arg if type(arg) is str else _ascii_text(arg)
            parts.append(f"${len(text)}\r\n{text}\r\n")
        return "".join(parts).encode("ascii")
    except (UnicodeEncodeError, TypeError):
        return _encode_parts(args)


def _ascii_text(arg: Arg) -> str:
    if type(arg) is int:
        return str(arg)
    if type(arg) is float:
        return repr(arg)
    raise TypeError  # bytes (and anything else): the general encoder


def _encode_parts(args: Sequence[Arg]) -> bytes:
    parts = []
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(float(arg)).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def _evalsha(sha: str, count: int, packed: bytes) -> bytes:
    return b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n%b" % (count + 2, len(sha), sha.encode(), packed)


def _eval(script: str, count: int, packed: bytes) -> bytes:
    return b"*%d\r\n%b%b" % (count + 2, encode_args(("EVAL", script)), packed)


def _reply_error(message: str) -> RedisError:
    if message.startswith("READONLY"):  # a master demoted by a failover: find the new one
        return ReadOnlyError(message)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith(("NOAUTH", "WRONGPASS")):
        return AuthenticationError(message)
    return ResponseError(message)


class _Protocol(asyncio.Protocol):
    """One connection: its replies, matched in order to the commands written on it."""

    def __init__(self, connection: RespConnection) -> None:
        self._connection = connection
        self._reader = hiredis.Reader(replyError=_reply_error)
        self.transport: asyncio.Transport | None = None
        # (future, time written) per command in flight on this connection, oldest first.
        self.waiting: collections.deque[tuple[asyncio.Future, float]] = collections.deque()

    async def handshake(self, commands: list[bytes]) -> None:
        """Send the connection's first commands in one write and wait for all their
        replies; raise the first error among them (AUTH refused: SELECT then fails too)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        now = loop.time()
        self.waiting.extend((future, now) for future in futures)
        self.transport.write(b"".join(commands))
        for reply in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(reply, BaseException):
                raise reply

    def fail(self, error: Exception) -> None:
        """Close this connection; every command in flight on it fails with `error`."""
        if self.transport is not None:
            self.transport.abort()
        waiting, self.waiting = self.waiting, collections.deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(error)

    def _broken(self, error: Exception) -> None:
        if self._connection.uses(self):
            self._connection.abandon(error)
        else:  # still opening, or already replaced
            self.fail(error)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._broken(RedisConnectionError(f"Redis sent a malformed reply: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # nobody asked: the stream is out of step
                self._broken(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            future = waiting.popleft()[0]
            if not future.done():
                if isinstance(reply, Exception):  # an error reply, made by `_reply_error`
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
            if isinstance(reply, ReadOnlyError):
                self._broken(RedisConnectionError("the Redis master became a replica"))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._broken(RedisConnectionError(f"Redis closed the connection ({exc or 'end of stream'})"))


Address = tuple[str, int]


class RespConnection:
    """A pipelined connection to one Redis server (opened on first use, again after a loss).

    `locate`, when given, is asked for the server's address before each connect (a
    Sentinel's current master); `host`/`port` are then ignored."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        locate: Callable[[], Awaitable[Address]] | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 1.0,
        client_name: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._locate = locate
        self._username, self._password, self._db, self._ssl = username, password, db, ssl
        self._client_name = client_name
        self._timeout = timeout
        # The connection in use (both None while there is none, and while one opens).
        self._protocol: _Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future | None = None
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def call(self, *args: Arg) -> object:
        return await self.send(encode_command(args))

    async def send(self, command: bytes) -> object:
        """One command already in RESP (`encode_command`); its reply."""
        transport = self._transport
        if transport is None or transport.is_closing():
            await self._connect()
        return await self._queue(command)

    async def send_many(self, commands: Sequence[bytes]) -> list[object]:
        """Commands already in RESP, in one write: each one's reply, or the exception it
        raised (an error reply, a timeout, a lost connection), in order."""
        transport = self._transport
        if transport is None or transport.is_closing():
            await self._connect()
        futures = [self._queue(command) for command in commands]
        replies: list[object] = []
        for future in futures:  # replies come in order: waits once, for the first
            try:
                replies.append(await future)
            except (RedisError, OSError) as exc:
                replies.append(exc)
        return replies

    def _queue(self, command: bytes) -> asyncio.Future:
        loop = self._loop
        assert loop is not None
        future = loop.create_future()
        protocol = self._protocol
        if protocol is None:  # lost between its open and this command
            future.set_exception(RedisConnectionError("the connection to Redis closed before a command left"))
            return future
        protocol.waiting.append((future, loop.time()))
        self._outgoing.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._check)
        return future

    async def evalsha(self, sha: str, script: str, keys: Sequence[Arg], args: Sequence[Arg]) -> object:
        """EVALSHA; after a NOSCRIPT (a restarted or flushed server), EVAL once: the
        script then runs, and the server keeps it for the next EVALSHA."""
        return await self.evalsha_packed(sha, script, 1 + len(keys) + len(args), encode_args((len(keys), *keys, *args)))

    async def evalsha_packed(self, sha: str, script: str, count: int, packed: bytes) -> object:
        """`evalsha` with its numkeys, keys and arguments already in RESP (`encode_args`):
        `count` of them in `packed`. A caller can so encode once what its calls share."""
        transport = self._transport
        if transport is None or transport.is_closing():
            await self._connect()
        try:
            return await self._queue(_evalsha(sha, count, packed))  # (`send`, one coroutine less)
        except NoScriptError:
            return await self.send(_eval(script, count, packed))

    async def evalsha_many(self, sha: str, script: str, calls: Sequence[tuple[int, bytes]]) -> list[object]:
        """`evalsha_packed` of each (count, packed), in one write: each one's reply or
        exception (as `send_many`). Those refused for NOSCRIPT are sent again with EVAL."""
        replies = await self.send_many([_evalsha(sha, count, packed) for count, packed in calls])
        again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if again:
            retried = await self.send_many([_eval(script, *calls[i]) for i in again])
            for i, reply in zip(again, retried, strict=True):
                replies[i] = reply
        return replies

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outgoing:
            return
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        transport = self._transport
        if transport is None or transport.is_closing():
            self.abandon(RedisConnectionError("the connection to Redis closed before a command left"))
            return
        transport.write(data)

    def _check(self) -> None:
        """The oldest command's deadline (one timer for the connection, moved along)."""
        self._watchdog = None
        protocol = self._protocol
        if protocol is None or not protocol.waiting:
            return
        loop = self._loop
        assert loop is not None
        due = protocol.waiting[0][1] + self._timeout
        if loop.time() >= due:
            self.abandon(RedisTimeoutError(f"Redis did not answer within {self._timeout}s"))
            return
        self._watchdog = loop.call_at(due, self._check)

    async def _connect(self) -> None:
        """Open the connection, once however many callers ask at the same time. The open
        runs as a task of its own: a caller cancelled meanwhile (its client left) cancels
        only its own wait, never the open the others are waiting on."""
        if self._closed:
            raise RedisConnectionError("the connection was closed")
        if self._connecting is None:
            self._loop = asyncio.get_running_loop()
            self._connecting = self._loop.create_task(self._open())
            self._connecting.add_done_callback(self._opened)
        await asyncio.shield(self._connecting)

    def _opened(self, task: asyncio.Task) -> None:
        self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here; each waiter raises it from its own await

    async def _open(self) -> None:
        """Connect and handshake, within `timeout`; only then is the connection the one
        commands go to."""
        loop = self._loop
        assert loop is not None
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self._timeout):
                if self._locate is not None:
                    self.host, self.port = await self._locate()
                _, protocol = await loop.create_connection(lambda: _Protocol(self), self.host, self.port, ssl=self._ssl)
                commands = self._handshake()
                if commands:
                    await protocol.handshake(commands)
        except AuthenticationError:
            _close(protocol)
            raise
        except (OSError, TimeoutError, RedisConnectionError) as exc:
            _close(protocol)
            raise RedisConnectionError(
                f"cannot connect to Redis at {self.host}:{self.port}: {str(exc) or 'timed out'}"
            ) from None
        except BaseException:
            _close(protocol)
            raise
        if self._closed:  # closed while it opened
            _close(protocol)
            raise RedisConnectionError("the connection was closed")
        if protocol.transport is None or protocol.transport.is_closing():
            raise RedisConnectionError(f"Redis at {self.host}:{self.port} closed the connection as it opened")
        self._protocol, self._transport = protocol, protocol.transport

    def _handshake(self) -> list[bytes]:
        """The commands a new connection sends before any other."""
        commands = []
        if self._password is not None:
            auth = (self._username, self._password) if self._username else (self._password,)
            commands.append(encode_command(("AUTH", *auth)))
        if self._db:
            commands.append(encode_command(("SELECT", self._db)))
        if self._client_name:
            commands.append(encode_command(("CLIENT", "SETNAME", self._client_name)))
        return commands

    def uses(self, protocol: _Protocol) -> bool:
        """Whether `protocol` is the connection commands go to now."""
        return self._protocol is protocol

    def abandon(self, error: Exception) -> None:
        """Fail every command in flight with `error` and drop the connection."""
        protocol, self._protocol, self._transport = self._protocol, None, None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._outgoing.clear()
        if protocol is not None:
            protocol.fail(error)

    async def close(self) -> None:
        self._closed = True
        self.abandon(RedisConnectionError("the connection was closed"))


def _close(protocol: _Protocol | None) -> None:
    """Drop a connection that did not open."""
    if protocol is not None:
        protocol.fail(RedisConnectionError("the connection to Redis did not open"))


def lean_connection(client: object, timeout: float) -> RespConnection | None:
    """A `RespConnection` to the server a redis-py client talks to (one server, or the
    master its Sentinels name), with the same credentials, database and TLS; None for
    what it does not cover (a cluster, a Unix socket)."""
    from redis.asyncio import Redis
    from redis.asyncio.connection import SSLConnection
    from redis.asyncio.sentinel import SentinelConnectionPool

    if type(client) is not Redis:
        return None
    pool = client.connection_pool
    settings = pool.connection_kwargs
    if "path" in settings:
        return None
    context = None
    if issubclass(pool.connection_class, SSLConnection):
        context = ssl_module.create_default_context(cafile=settings.get("ssl_ca_certs"))
    locate = pool.get_master_address if isinstance(pool, SentinelConnectionPool) else None
    return RespConnection(
        settings.get("host", "127.0.0.1"),
        int(settings.get("port", 6379)),
        locate=locate,
        username=settings.get("username"),
        password=settings.get("password"),
        db=int(settings.get("db") or 0),
        ssl=context,
        timeout=timeout,
        client_name=settings.get("client_name"),
    )
