"""Hostile requests: real requests (the validation fixtures, what Claude Code and the
SDKs really sent) mutated the ways a careless or malicious client would.

Each kind of mutation is a builder (`build_many(target, n, what)`: plain arguments, an
`Example` back) and a hypothesis strategy drawing the arguments (`many_things`). The
builders also make the explicit examples (`explicit`) every run sends first, whatever
the profile: the largest size of each kind, and the shapes the hardening issue names
(quadratic merges, deep nesting, bad headers, 30 MB model names, absurd max_tokens).
Every example's summary says what was done (`many: 10000 user messages`), so a failure
reads as what was sent, even unshrunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st

from tests.fuzz.profile import Profile
from tests.fuzz.stack import CLIENT_KEY
from tests.fuzz.targets import JSON_HEADERS, MESSAGES, Target, auth, encode, example, targets
from tests.fuzz.wire import Example

FIXTURES = Path(__file__).parent.parent / "fixtures"
# The base of the explicit examples: a real Claude Code turn (system blocks, tools, thinking).
CLAUDE_CODE = "clients/claude-code-2.1.330/interactive-turn.body"

# ---------------------------------------------------------------------- real requests to mutate


@cache
def _bases() -> dict[str, bytes]:
    """Valid requests: the validation fixtures (every block kind, tools, thinking,
    compatibility fields) and the requests real clients sent (Claude Code, the SDKs)."""
    found = {}
    for path in sorted((FIXTURES / "messages" / "valid").glob("*.json")):
        found[f"messages/valid/{path.stem}"] = orjson.dumps(json.loads(path.read_text())["body"])
    for path in sorted((FIXTURES / "clients").glob("*/*.body.json")):
        found[f"clients/{path.parent.name}/{path.stem}"] = path.read_bytes()
    return found


def aimed(name: str, target: Target) -> dict:
    """A fresh copy of the real request `name`, aimed at the target (model, stream)."""
    body = orjson.loads(_bases()[name])
    body["model"] = target.model
    body.pop("stream", None)
    if target.path == MESSAGES:
        body["stream"] = target.stream
    return body


BASES = st.sampled_from(sorted(_bases()))


def _last_user_message(body: dict) -> dict:
    for message in reversed(body["messages"]):
        if message.get("role") == "user":
            return message
    body["messages"].append({"role": "user", "content": "hi"})
    return body["messages"][-1]


def _add_user_text(body: dict, text: Any) -> None:
    message = _last_user_message(body)
    earlier = message["content"] if isinstance(message["content"], list) else []
    message["content"] = [*earlier, {"type": "text", "text": text}]


def _tool_use(tool_id: str, arguments: Any = None) -> dict:
    return {"type": "tool_use", "id": tool_id, "name": "f", "input": {} if arguments is None else arguments}


def _tool_round_trip(block: dict, result: Any = "ok") -> list[dict]:
    """An assistant turn with `block` (a tool_use) and the user turn answering it."""
    answer = {"type": "tool_result", "tool_use_id": block.get("id", "toolu_1"), "content": result}
    return [{"role": "assistant", "content": [block]}, {"role": "user", "content": [answer]}]


# ---------------------------------------------------------------------- deep nesting

DEPTHS = (64, 200, 254, 255, 256, 300, 600, 1000, 1023, 1024, 1025, 5000)
DEEP_PLACES = (
    "tools.0.input_schema",
    "metadata",
    "tool_use.input",
    "tool_result.content",
    "output_config.format.schema",
    "tool_choice",
    "x_undocumented",
)


def deep(depth: int, container: str) -> orjson.Fragment:
    if container == "object":
        return orjson.Fragment(b'{"a":' * depth + b"{}" + b"}" * depth)
    return orjson.Fragment(b"[" * depth + b"]" * depth)


def build_deep(target: Target, base: str, depth: int, container: str, where: str) -> Example:
    body = aimed(base, target)
    value = deep(depth, container)
    if where == "tools.0.input_schema":
        body["tools"] = [{"name": "deep", "input_schema": {"type": "object", "properties": {"x": value}}}]
    elif where == "metadata":
        body["metadata"] = {"user_id": "u-1", "deep": value}
    elif where == "tool_use.input":
        body["messages"] += _tool_round_trip(_tool_use("toolu_deep", {"x": value}))
    elif where == "tool_result.content":
        body["messages"] += _tool_round_trip(_tool_use("toolu_deep"), [value])
    elif where == "output_config.format.schema":
        schema = {"type": "object", "properties": {"x": value}}
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    elif where == "tool_choice":
        body["tool_choice"] = {"type": "auto", "x": value}
    else:  # an undocumented top-level field: kept for native backends
        body[where] = value
    return example(target, body, f"deep nesting: {depth} {container}s in {where} of {base}")


@st.composite
def deep_nesting(draw: st.DrawFn, target: Target, profile: Profile) -> Example:
    return build_deep(
        target,
        draw(BASES),
        draw(st.sampled_from(DEPTHS)),
        draw(st.sampled_from(["object", "array"])),
        draw(st.sampled_from(DEEP_PLACES)),
    )


# ---------------------------------------------------------------------- huge strings

STRING_PLACES = (
    "user text",
    "system",
    "tools.0.description",
    "tools.0.name",
    "metadata.user_id",
    "stop_sequences.0",
    "tool_use.id",
    "image data",
    "document data",
    "assistant prefill",
)


def huge_text(size: int, unit: str) -> str:
    """About `size` UTF-8 bytes of `unit` repeated. Without spaces: the scripted upstream
    echoes the last user text back one word per event, and a million words would fuzz
    the test's patience rather than the gateway."""
    unit = unit.replace(" ", "") or "x"
    return unit * max(1, size // len(unit.encode()))


def build_huge_string(target: Target, base: str, size: int, unit: str, where: str) -> Example:
    body = aimed(base, target)
    text = huge_text(size, unit)
    if where == "user text":
        _add_user_text(body, text)
    elif where == "system":
        body["system"] = text
    elif where.startswith("tools.0."):
        tool = {"name": "f", "description": "d", "input_schema": {"type": "object"}}
        tool[where.rsplit(".", 1)[1]] = text
        body["tools"] = [tool]
    elif where == "metadata.user_id":
        body["metadata"] = {"user_id": text}
    elif where == "stop_sequences.0":
        body["stop_sequences"] = [text]
    elif where == "tool_use.id":
        body["messages"] += _tool_round_trip(_tool_use(text))
    elif where == "image data":
        source = {"type": "base64", "media_type": "image/png", "data": huge_text(size, "iVBORw0KGgo")}
        _last_user_message(body)["content"] = [{"type": "image", "source": source}, {"type": "text", "text": "what?"}]
    elif where == "document data":
        source = {"type": "text", "media_type": "text/plain", "data": text}
        document = {"type": "document", "source": source}
        _last_user_message(body)["content"] = [document, {"type": "text", "text": "sum up"}]
    else:
        body["messages"].append({"role": "assistant", "content": text})
    return example(target, body, f"huge string: {len(text.encode())} bytes of {text[:6]!r}… in {where} of {base}")


_UNITS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=6)


@st.composite
def huge_string(draw: st.DrawFn, target: Target, profile: Profile) -> Example:
    return build_huge_string(
        target, draw(BASES), draw(st.sampled_from(profile.huge)), draw(_UNITS), draw(st.sampled_from(STRING_PLACES))
    )


# ---------------------------------------------------------------------- many of something

MANY_KINDS = (
    "user messages",
    "user block turns",
    "assistant tool turns",
    "alternating messages",
    "tool round trips",
    "text blocks",
    "tools",
    "stop sequences",
    "system blocks",
)


def build_many(target: Target, n: int, what: str) -> Example:
    body: dict[str, Any] = {"model": target.model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    if target.path == MESSAGES:
        body["stream"] = target.stream
    if what == "user messages":  # consecutive turns of one role: merged into one
        body["messages"] = [{"role": "user", "content": f"m{i}"} for i in range(n)]
    elif what == "user block turns":
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": f"m{i}"}]} for i in range(n)]
    elif what == "assistant tool turns":  # each calls a tool; the results all come in the last turn
        calls = [_tool_use(f"toolu_{i}", {"i": i}) for i in range(n)]
        results = [{"type": "tool_result", "tool_use_id": call["id"], "content": "ok"} for call in calls]
        body["messages"] += [{"role": "assistant", "content": [call]} for call in calls]
        body["messages"].append({"role": "user", "content": results})
    elif what == "alternating messages":
        roles = ("user", "assistant")
        body["messages"] = [{"role": roles[i % 2], "content": f"m{i}"} for i in range(n)]
        body["messages"].append({"role": "user", "content": "end"})
    elif what == "tool round trips":
        for i in range(n // 2):
            body["messages"] += _tool_round_trip(_tool_use(f"toolu_{i}", {"i": i}), str(i))
    elif what == "text blocks":
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": f"b{i}"} for i in range(n)]}]
    elif what == "tools":
        body["tools"] = [{"name": f"tool_{i}", "input_schema": {"type": "object"}} for i in range(n)]
    elif what == "stop sequences":
        body["stop_sequences"] = [f"s{i}" for i in range(n)]
    else:
        body["system"] = [{"type": "text", "text": f"s{i}"} for i in range(n)]
    return example(target, body, f"many: {n} {what}")


@st.composite
def many_things(draw: st.DrawFn, target: Target, profile: Profile) -> Example:
    return build_many(target, draw(st.sampled_from(profile.many)), draw(st.sampled_from(MANY_KINDS)))


# ---------------------------------------------------------------------- strange characters

# Every code point UTF-8 can carry: controls, format characters (bidi marks, BOM, zero
# widths), private use, unassigned, combining marks, astral planes.
_STRANGE = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=40)
_NASTY = st.sampled_from(
    [
        "\x00",
        "\x00hi",
        "\u2028\u2029",
        "\ufeff",
        "\u202e\u202d",
        "e\u0301" * 50,
        "\U0001f600" * 10,
        "\uffff",
        "\U0010ffff",
        "\x1b[31m",
        "\r\n\r\n",
        "\t \t",
        " ",
        "../../etc/passwd",
        "%00",
        "${jndi:x}",
        "'\"\\",
    ]
)
TEXT_PLACES = (
    "user text",
    "system",
    "model",
    "tools.0.name",
    "tool_choice.name",
    "metadata key",
    "metadata.user_id",
    "stop_sequences.0",
    "tool_use.id",
    "tool_use.name",
    "thinking.signature",
    "message role",
)


def build_strange_text(target: Target, base: str, text: str, where: str) -> Example:
    body = aimed(base, target)
    if where == "user text":
        _add_user_text(body, text)
    elif where == "system":
        body["system"] = [{"type": "text", "text": text}]
    elif where == "model":
        body["model"] = text
    elif where == "tools.0.name":
        body["tools"] = [{"name": text, "input_schema": {"type": "object"}}]
    elif where == "tool_choice.name":
        body["tools"] = [{"name": "f", "input_schema": {"type": "object"}}]
        body["tool_choice"] = {"type": "tool", "name": text}
    elif where == "metadata key":
        body["metadata"] = {text: "v"}
    elif where == "metadata.user_id":
        body["metadata"] = {"user_id": text}
    elif where == "stop_sequences.0":
        body["stop_sequences"] = [text]
    elif where.startswith("tool_use."):
        body["messages"] += _tool_round_trip({**_tool_use("toolu_1"), where.removeprefix("tool_use."): text})
    elif where == "thinking.signature":
        thought = [{"type": "thinking", "thinking": "hm", "signature": text}, {"type": "text", "text": "a"}]
        body["messages"] += [{"role": "assistant", "content": thought}, {"role": "user", "content": "b"}]
    else:
        body["messages"].append({"role": text, "content": "hi"})
    return example(target, body, f"strange text {text[:80]!r} in {where} of {base}")


@st.composite
def strange_text(draw: st.DrawFn, target: Target, profile: Profile) -> Example:
    text = draw(st.one_of(_STRANGE, _NASTY))
    return build_strange_text(target, draw(BASES), text, draw(st.sampled_from(TEXT_PLACES)))


# ---------------------------------------------------------------------- wrong types


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value: keys of objects, indexes of arrays (the first 20)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value[:20]):
            found += _paths(inner, (*prefix, index))
    return found


def _shown(values: tuple) -> tuple[tuple[str, Any], ...]:
    """Each value with how a summary shows it. A str is a JSON literal, written as it is
    (numbers Python would not write so, strings)."""
    return tuple((v, orjson.Fragment(v)) if isinstance(v, str) else (repr(v), v) for v in values)


WRONG_VALUES = _shown(
    (
        None,
        True,
        False,
        0,
        -1,
        1.5,
        -0.0,
        1e308,
        '""',
        '"x"',
        [],
        {},
        [[]],
        [{}],
        {"type": None},
        [None],
        "18446744073709551616",
        "-9223372036854775809",
        2**63 - 1,
    )
)


@st.composite
def wrong_type(draw: st.DrawFn, target: Target, profile: Profile) -> Example:
    base = draw(BASES)
    body = aimed(base, target)
    path = draw(st.sampled_from(_paths(body)))
    shown, value = draw(st.sampled_from(WRONG_VALUES))
    inner = body
    for step in path[:-1]:
        inner = inner[step]
    inner[path[-1]] = value
    return example(target, body, f"wrong type: {'.'.join(map(str, path))} = {shown} in {base}")


# ---------------------------------------------------------------------- bodies that are not JSON in UTF-8

MARKER = "@@FUZZ@@"
BAD_UTF8 = (
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc0\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
)
RAW_KINDS = (
    "bad UTF-8 in a string",
    "bad UTF-8 in a key",
    "lone surrogate escape",
    "not an object",
    "truncated",
    "trailing garbage",
    "BOM",
    "UTF-16",
    "empty",
    "NaN",
    "huge number literal",
    "duplicate keys",
    "random bytes",
)


def build_raw(target: Target, base: str, what: str, piece: bytes) -> Example:
    """`piece`: the bytes the kind puts in (a bad sequence, a literal, a cut, garbage)."""
    body = aimed(base, target)
    if what in ("bad UTF-8 in a string", "lone surrogate escape"):
        _add_user_text(body, f"a{MARKER}b")
        raw = encode(body).replace(MARKER.encode(), piece)
    elif what == "bad UTF-8 in a key":
        body[MARKER] = 1
        raw = encode(body).replace(MARKER.encode(), piece)
    elif what in ("NaN", "huge number literal"):
        body["temperature" if what == "NaN" else "max_tokens"] = MARKER
        raw = encode(body).replace(f'"{MARKER}"'.encode(), piece)
    elif what == "truncated":
        whole = encode(body)
        raw = whole[: max(1, len(whole) * piece[0] // 256)]
    elif what == "trailing garbage":
        raw = encode(body) + piece
    elif what == "BOM":
        raw = b"\xef\xbb\xbf" + encode(body)
    elif what == "UTF-16":
        raw = encode(body).decode().encode("utf-16")
    elif what == "duplicate keys":
        raw = b'{"model": "other", ' + encode(body)[1:]
    else:  # not an object, empty, random bytes: the piece is the body
        raw = piece
    return example(target, raw, f"raw body: {what} {piece[:40]!r} ({base})")


_PIECES: dict[str, st.SearchStrategy[bytes]] = {
    "bad UTF-8 in a string": st.sampled_from(BAD_UTF8),
    "bad UTF-8 in a key": st.sampled_from(BAD_UTF8),
    "lone surrogate escape": st.sampled_from([b"\\ud800", b"\\udfff", b"x\\ud83dy", b"\\u0000"]),
    "not an object": st.sampled_from([b"[]", b"null", b'"x"', b"1", b"true", b'[{"model": "m"}]']),
    "truncated": st.binary(min_size=1, max_size=1),
    "trailing garbage": st.sampled_from([b"x", b"\x00", b"}", b" {}", b"\n\n\n"]),
    "NaN": st.sampled_from([b"NaN", b"Infinity", b"-Infinity"]),
    "huge number literal": st.sampled_from([b"1e999", b"-1e999", b"1" * 5000, b"0." + b"0" * 5000 + b"1"]),
    "empty": st.just(b""),
    "random bytes": st.binary(max_size=512),
}


@st.composite
def raw_bytes(draw: st.DrawFn, target: Target, profile: Profile) -> Example:
    what = draw(st.sampled_from(RAW_KINDS))
    return build_raw(target, draw(BASES), what, draw(_PIECES.get(what, st.just(b""))))


# ---------------------------------------------------------------------- odd headers

HEADER_KINDS = (
    "anthropic-beta",
    "anthropic-version",
    "x-team-id",
    "content-type",
    "x-api-key",
    "authorization",
    "key with a stray byte",
    "two keys",
    "two anthropic-beta",
    "many headers",
    "no content-type",
)
# CR and LF are left out: they would end the header (a different request, not a strange one).
_VALUES = st.one_of(
    st.binary(max_size=64).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b"\x00", b"\x01", b"\x7f", b"\xff\xfe", b"\xe2\x80\xa8", b"a" * 10_000, b"b" * 100_000]),
)
_CONTENT_TYPES = st.sampled_from(
    [
        b"text/plain",
        b"application/json; charset=utf-16",
        b"application/vnd.api+json",
        b"multipart/form-data",
        b"application/x-www-form-urlencoded",
        b"application/json; charset=\xff",
        b"*/*",
    ]
)


def build_headers(target: Target, base: str, what: str, value: bytes, count: int = 200) -> Example:
    """A valid body with strange headers: `value` is the odd part (a header's value, a
    stray byte in the key, a content type); `count` headers for "many headers"."""
    headers: list[tuple[str, bytes]] = [auth(), *JSON_HEADERS]
    key = CLIENT_KEY.encode()
    if what in ("anthropic-beta", "anthropic-version", "x-team-id"):
        headers.append((what, value))
    elif what == "content-type":
        headers[1] = ("content-type", value)
    elif what == "x-api-key":
        headers[0] = ("x-api-key", value)
    elif what == "authorization":
        headers[0] = ("authorization", b"Bearer " + value)
    elif what == "key with a stray byte":  # the right key, spoiled: it must not reach the log either
        headers[0] = ("x-api-key", key[:10] + value + key[10:])
    elif what == "two keys":
        headers += [("x-api-key", value), ("authorization", b"Bearer " + key)]
    elif what == "two anthropic-beta":
        headers += [("anthropic-beta", b"tools-2024-04-04"), ("anthropic-beta", value)]
    elif what == "many headers":
        headers += [(f"x-fuzz-{i}", value[:100]) for i in range(count)]
    else:
        headers = [auth()]
    shown = value[:40] + (b"..." if len(value) > 40 else b"")
    summary = f"odd headers: {what} {shown!r} ({len(value)} bytes) on {base}"
    return example(target, aimed(base, target), summary, tuple(headers))


@st.composite
def odd_headers(draw: st.DrawFn, target: Target, profile: Profile) -> Example:
    what = draw(st.sampled_from(HEADER_KINDS))
    value = draw(_CONTENT_TYPES | _VALUES if what == "content-type" else _VALUES)
    if what == "key with a stray byte":
        value = draw(st.sampled_from([b"\x00", b"\x01", b"\x7f", b"\t", b"\xff", b" "]))
    return build_headers(target, draw(BASES), what, value, draw(st.sampled_from([50, 200, 1000])))


# ---------------------------------------------------------------------- huge model names


def build_huge_model(target: Target, base: str, size: int, unit: str) -> Example:
    body = aimed(base, target)
    body["model"] = huge_text(size, unit)
    return example(target, body, f"huge model name: {len(body['model'].encode())} bytes of {unit!r} ({base})")


@st.composite
def huge_model_name(draw: st.DrawFn, target: Target, profile: Profile) -> Example:
    unit = draw(st.sampled_from(["m", "é", "\U0001f600", target.model, "*", "/"]))
    return build_huge_model(target, draw(BASES), draw(st.sampled_from(profile.huge_model)), unit)


# ---------------------------------------------------------------------- absurd numbers

NUMBER_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "thinking.budget_tokens", "tools.0.max_uses")
ABSURD = _shown(
    (
        0,
        -1,
        2**31,
        2**53 + 1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        1e308,
        -1e308,
        5e-324,
        -0.0,
        1.0,
        1e-7,
        True,
        "100000000000000000000000000000",
        "1e400",
    )
)


def build_absurd(target: Target, base: str, field: str, number: tuple[str, Any], max_tokens: int = 2048) -> Example:
    """`number`: (how it is shown, the value); `max_tokens` goes with a thinking budget."""
    body = aimed(base, target)
    shown, value = number
    if field == "thinking.budget_tokens":
        body["thinking"] = {"type": "enabled", "budget_tokens": value}
        body["max_tokens"] = max_tokens
    elif field == "tools.0.max_uses":
        body["tools"] = [{"type": "web_search_20250305", "name": "web_search", "max_uses": value}]
    else:
        body[field] = value
    return example(target, body, f"absurd number: {field} = {shown} ({base})")


@st.composite
def absurd_numbers(draw: st.DrawFn, target: Target, profile: Profile) -> Example:
    return build_absurd(
        target,
        draw(BASES),
        draw(st.sampled_from(NUMBER_FIELDS)),
        draw(st.sampled_from(ABSURD)),
        draw(st.sampled_from([2048, 2**63 - 1])),
    )


# ---------------------------------------------------------------------- all of them

Mutation = Callable[[Target, Profile], st.SearchStrategy[Example]]
MUTATIONS: dict[str, Mutation] = {
    mutation.__name__: mutation
    for mutation in (
        deep_nesting,
        huge_string,
        many_things,
        strange_text,
        wrong_type,
        raw_bytes,
        odd_headers,
        huge_model_name,
        absurd_numbers,
    )
}


def hostile(mutation: str, model: str, profile: Profile) -> st.SearchStrategy[Example]:
    """One kind of mutation, sent to either endpoint, streaming or not."""
    return st.sampled_from(targets(model)).flatmap(lambda target: MUTATIONS[mutation](target, profile))


def explicit(mutation: str, model: str, profile: Profile) -> list[Example]:
    """The examples of a kind that every run sends before generating any."""
    complete, stream, count = targets(model)
    huge, many, huge_model = profile.huge[-1], profile.many[-1], profile.huge_model[-1]
    cases: dict[str, list[Example]] = {
        "deep_nesting": [
            build_deep(complete, CLAUDE_CODE, 300, "object", "tools.0.input_schema"),
            build_deep(stream, CLAUDE_CODE, 600, "array", "x_undocumented"),
            build_deep(count, CLAUDE_CODE, 300, "object", "metadata"),
        ],
        "huge_string": [
            build_huge_string(complete, CLAUDE_CODE, huge, "é中", "user text"),
            build_huge_string(stream, CLAUDE_CODE, huge, "x", "system"),
            build_huge_string(count, CLAUDE_CODE, huge, "\U0001f600", "tools.0.description"),
        ],
        "many_things": [
            build_many(complete, many, "user messages"),
            build_many(stream, many, "user block turns"),
            build_many(complete, many, "assistant tool turns"),
            build_many(stream, many, "alternating messages"),
            build_many(stream, many, "tool round trips"),
            build_many(count, many, "text blocks"),
        ],
        "odd_headers": [
            build_headers(complete, CLAUDE_CODE, "anthropic-beta", b"\xff\xfe"),
            build_headers(stream, CLAUDE_CODE, "anthropic-beta", b"a\x01b"),
            build_headers(complete, CLAUDE_CODE, "key with a stray byte", b"\x01"),
            build_headers(count, CLAUDE_CODE, "anthropic-version", b"x" * 100_000),
        ],
        "huge_model_name": [
            build_huge_model(complete, CLAUDE_CODE, huge_model, "m"),
            build_huge_model(stream, CLAUDE_CODE, huge_model, "é"),
        ],
        "absurd_numbers": [
            build_absurd(complete, CLAUDE_CODE, "max_tokens", ABSURD[4]),
            build_absurd(stream, CLAUDE_CODE, "max_tokens", ABSURD[-2]),
            build_absurd(count, CLAUDE_CODE, "thinking.budget_tokens", ABSURD[4], max_tokens=2**63 - 1),
        ],
        "raw_bytes": [
            build_raw(complete, CLAUDE_CODE, "bad UTF-8 in a string", b"\xff"),
            build_raw(stream, CLAUDE_CODE, "lone surrogate escape", b"\\ud800"),
        ],
    }
    return cases.get(mutation, [])
