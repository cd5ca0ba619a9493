"""The image URLs of a request, checked before it leaves for a server that fetches them.

Each URL is judged by `translate.image_urls` (scheme, host spelling, literal addresses,
local names); each DNS name left is then resolved here, and refused unless every
address it resolves to is public. The upstream server resolves the name again when it
fetches, so a name whose answers change in between (DNS rebinding) is not caught, nor a
redirect the server follows: an allow-list of hosts (`image_url_guard.hosts`) or the
server's own egress rules close those.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from gateway.config import ImageUrlGuard
from gateway.errors import InvalidRequest
from gateway.protocols.messages import MessagesRequest
from gateway.translate.image_urls import ImageUrlRules, UrlRefused, address_refusal, check_url, url_sources


def rules_of(guard: ImageUrlGuard) -> ImageUrlRules:
    return ImageUrlRules(
        schemes=frozenset(guard.schemes),
        allow_private=guard.allow_private,
        hosts=tuple(host.lower() for host in guard.hosts),
        max_per_request=guard.max_per_request,
    )


async def check_image_urls(request: MessagesRequest, rules: ImageUrlRules, *, documents: bool, timeout: float) -> None:
    """Refuse (400, naming the block and the reason) a request with a URL the server must
    not be sent to fetch. `documents`: document URLs too (a native server fetches them;
    translation refuses them). `timeout`: seconds for every name to resolve."""
    sources = list(url_sources(request, documents=documents))
    if not sources:
        return
    if len(sources) > rules.max_per_request:
        raise InvalidRequest(
            f"messages: {len(sources)} image URLs, more than the limit of {rules.max_per_request}"
            " (image_url_guard.max_per_request)"
        )
    names: dict[str, str] = {}  # DNS name → the path of the first URL naming it
    for path, url in sources:
        try:
            target = check_url(url, rules)
        except UrlRefused as refused:
            raise InvalidRequest(f"{path}: {refused}") from None
        if target.address is None and not rules.allow_private:
            names.setdefault(target.host, path)
    if names:
        await check_names(names, timeout)


async def check_names(names: dict[str, str], timeout: float) -> None:
    """Every name resolved at once; one that does not resolve in time, or resolves to a
    non-public address, refuses the request. The refusal does not say which (nor the
    address): a client must not learn the operator's internal names from it."""
    loop = asyncio.get_running_loop()
    lookups = [asyncio.ensure_future(_resolves_publicly(loop, name)) for name in names]
    try:
        done, _ = await asyncio.wait(lookups, timeout=timeout)
    finally:
        for lookup in lookups:
            lookup.cancel()  # (no-op on those done) those still waiting, or all if this request is cancelled
    for (name, path), lookup in zip(names.items(), lookups, strict=True):
        if lookup not in done or not lookup.result():
            raise InvalidRequest(
                f"{path}: the host '{name}' did not resolve, or not to public addresses only"
                " (image_url_guard.allow_private)"
            )


async def _resolves_publicly(loop: asyncio.AbstractEventLoop, name: str) -> bool:
    try:
        answers = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        return False
    addresses = {str(answer[4][0]) for answer in answers}
    return bool(addresses) and all(_public(address) for address in addresses)


def _public(address: str) -> bool:
    try:
        return address_refusal(ipaddress.ip_address(address)) is None
    except ValueError:
        return False
