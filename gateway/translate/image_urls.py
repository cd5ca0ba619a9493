"""Which image (and document) URLs a backend's server may be sent to fetch. Pure: no I/O.

A self-hosted server (vLLM, Ollama, any OpenAI-compatible one) fetches an `image` block's
URL itself, from inside the operator's network: `http://169.254.169.254/...` would read a
cloud metadata service, `http://10.0.0.5:6379/` poke at an internal one. So by default a
URL must be `https`, name a host by a public address or a public-looking DNS name, and
carry no credentials. Each backend's `image_url_guard` may allow more.

The host is judged as the parsers that fetch it read it: an IPv4 address in any
spelling `inet_aton` and WHATWG URL parsers accept (`2130706433`, `0x7f.1`, `0177.0.0.1`,
`127.1`), an IPv6 one with an IPv4 address inside it (mapped, compatible, 6to4, NAT64),
a name that only a local resolver answers (`localhost`, `*.internal`, a single label
that search domains complete). A URL that parsers could read in two ways (backslashes,
spaces, `user@host`, percent-escapes or non-ASCII in the host) is refused rather than
guessed at.

A DNS name can still resolve to a private address: `backends.image_hosts` resolves
each one and checks every address (an I/O step before translation). What no check
here can close is a name whose answer changes between that lookup and the server's
own (DNS rebinding), or a public URL that redirects into the network; the README says
what covers those.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.protocols.messages import MessagesRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that resolve on the local machine or network only: RFC 6761 (`localhost`), 6762
# (`local`), 8375 (`home.arpa`), the cloud metadata names (`metadata.google.internal`),
# Kubernetes service names, and suffixes in common private use.
LOCAL_NAMES = (
    "localhost",
    "*.localhost",
    "localhost.localdomain",
    "*.localdomain",
    "*.local",
    "*.internal",
    "*.home.arpa",
    "*.lan",
    "*.home",
    "*.corp",
    "*.intranet",
    "*.private",
    "*.svc",
)
# RFC 6052's well-known NAT64 prefix: a gateway that translates it reaches the IPv4
# address in its last 32 bits. Its local-use sibling (RFC 8215) is never public.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMBER = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")
# Characters that parsers disagree on or strip: the ASCII controls, space, backslash
# (WHATWG reads it as `/` in http(s) URLs, `urlsplit` as part of the host) and DEL.
_AMBIGUOUS = re.compile(r"[\x00-\x20\\\x7f]")
MAX_HOST = 253


@dataclass(frozen=True, slots=True)
class ImageUrlRules:
    """A backend's `image_url_guard`: what its server may be asked to fetch."""

    schemes: frozenset[str] = frozenset({"https"})
    allow_private: bool = False  # private, loopback, link-local... addresses and local names
    hosts: tuple[str, ...] = ()  # lower-case fnmatch patterns; empty: any host
    max_per_request: int = 100

    def allows_host(self, host: str) -> bool:
        return not self.hosts or any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hosts)


class UrlRefused(ValueError):
    """Why a URL may not be fetched; the text names the reason and the setting, never the URL."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a URL that passed points at: an address, or a name still to resolve."""

    host: str
    address: Address | None  # None: a DNS name


def url_sources(request: MessagesRequest, *, documents: bool) -> Iterator[tuple[str, str]]:
    """(path, URL) of every `image` block with a URL source (and `document`, if asked),
    in the messages and in their tool results. The request is a validated one."""
    kinds = ("image", "document") if documents else ("image",)
    for i, message in enumerate(request["messages"]):
        content = message["content"]
        if isinstance(content, str):
            continue
        for j, block in enumerate(content):
            path = f"messages.{i}.content.{j}"
            if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                for k, inner in enumerate(block["content"]):
                    url = _url_of(inner, kinds)
                    if url is not None:
                        yield f"{path}.content.{k}.source.url", url
            else:
                url = _url_of(block, kinds)
                if url is not None:
                    yield f"{path}.source.url", url


def _url_of(block: object, kinds: tuple[str, ...]) -> str | None:
    if not isinstance(block, dict) or block.get("type") not in kinds:
        return None
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "url":
        url = source.get("url")
        return url if isinstance(url, str) else ""  # a document's URL is not validated: refused below
    return None


def check_url(url: str, rules: ImageUrlRules) -> Target:
    """The host `url` points at, or `UrlRefused` saying why it may not be fetched."""
    if _AMBIGUOUS.search(url):
        raise UrlRefused("a URL with spaces, control characters or backslashes is not allowed")
    scheme, separator, _ = url.partition(":")
    scheme = scheme.lower()
    if not separator or scheme not in rules.schemes:
        allowed = ", ".join(sorted(rules.schemes))
        raise UrlRefused(f"only {allowed} URLs are allowed (image_url_guard.schemes)")
    if not url[len(scheme) + 1 :].startswith("//"):
        raise UrlRefused(f"the URL must start with {scheme}://")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when it is not a number in range
    except ValueError:
        raise UrlRefused("the URL's host or port is not valid") from None
    if port == 0:
        raise UrlRefused("the URL's port is not valid")
    netloc = parts.netloc
    if "@" in netloc:
        raise UrlRefused("credentials in an image URL are not allowed")
    if not netloc.isascii() or "%" in netloc:
        raise UrlRefused("the URL's host must be plain ASCII (an IDN as punycode), without %-escapes")
    host = parts.hostname or ""
    target = _target(host, bracketed=netloc.startswith("["))
    if not rules.allows_host(target.host):
        raise UrlRefused(
            f"the host '{target.host}' is not one this model's backend may fetch from (image_url_guard.hosts)"
        )
    if not rules.allow_private:
        reason = address_refusal(target.address) if target.address is not None else name_refusal(target.host)
        if reason is not None:
            raise UrlRefused(f"{reason} (image_url_guard.allow_private)")
    return target


def _target(host: str, *, bracketed: bool) -> Target:
    """A URL's host (lower case, brackets removed) as an address or a DNS name."""
    if not host:
        raise UrlRefused("the URL has no host")
    if bracketed:
        try:
            return Target(host, ipaddress.IPv6Address(host))
        except ValueError:
            raise UrlRefused("the URL's IPv6 address is not valid") from None
    name = host[:-1] if host.endswith(".") else host  # `localhost.` is `localhost`
    labels = name.split(".")
    if _NUMBER.fullmatch(labels[-1]):  # WHATWG: a host ending in a number is an IPv4 address
        address = ipv4(labels)
        return Target(str(address), address)
    if len(name) > MAX_HOST or not all(_LABEL.fullmatch(label) for label in labels):
        raise UrlRefused("the URL's host is not a valid host name")
    return Target(name, None)


def ipv4(labels: list[str]) -> ipaddress.IPv4Address:
    """An IPv4 address as `inet_aton` and WHATWG read it: 1 to 4 parts, each decimal,
    octal (a leading 0) or hex (0x); the last fills the bytes the others left."""
    if not 1 <= len(labels) <= 4:
        raise UrlRefused("the URL's host is not a valid IPv4 address")
    numbers = []
    for label in labels:
        try:
            if label[:2].lower() == "0x":
                numbers.append(int(label[2:] or "0", 16))
            elif len(label) > 1 and label.startswith("0"):
                numbers.append(int(label[1:], 8))
            else:
                numbers.append(int(label, 10))
        except ValueError:
            raise UrlRefused("the URL's host is not a valid IPv4 address") from None
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        raise UrlRefused("the URL's host is not a valid IPv4 address")
    value = last
    for n, part in enumerate(leading):
        value += part << (8 * (3 - n))
    return ipaddress.IPv4Address(value)


def address_refusal(address: Address) -> str | None:
    """Why a server must not be sent to `address`, or None for a public one. An IPv6
    address that stands for an IPv4 one (mapped, compatible, 6to4, NAT64) is judged as
    that one too."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return f"{address} is a local-use NAT64 address"
        inner = embedded_ipv4(address)
        kind = _kind(inner) if inner is not None else None
        if kind is not None:
            return f"{address} stands for {inner}, {kind}"
    kind = _kind(address)
    return f"{address} is {kind}" if kind is not None else None


def _kind(address: Address) -> str | None:
    """What kind of non-public address `address` is, or None. `is_global` alone would pass
    multicast and IPv6 site-local addresses."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if not address.is_global:
        return "a non-public address"
    return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for on the way, if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 1):  # NAT64; `::a.b.c.d` (RFC 4291 §2.5.5.1)
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def name_refusal(host: str) -> str | None:
    """Why a DNS name is refused without resolving it, or None."""
    if any(fnmatch.fnmatchcase(host, pattern) for pattern in LOCAL_NAMES):
        return f"the host '{host}' is a name of the local machine or network"
    if "." not in host:
        return f"the host '{host}' is a single label, which resolvers complete with local search domains"
    return None
