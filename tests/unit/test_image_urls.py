"""The image URL check (gateway/translate/image_urls.py), table by table.

A self-hosted server fetches an image URL from inside the operator's network, so the
check must read a URL's host the way the fetching side's parsers and resolvers do:
`inet_aton` takes `2130706433`, `0x7f.1` and `0177.0.0.1` for 127.0.0.1, an IPv6
literal may carry an IPv4 address, and a single-label name is completed with the
network's search domains. Every row here is a spelling one of them accepts.
"""

from __future__ import annotations

import ipaddress

import pytest

from gateway.backends.image_hosts import rules_of
from gateway.config import ConfigError, parse
from gateway.translate.image_urls import (
    ImageUrlRules,
    Target,
    UrlRefused,
    address_refusal,
    check_url,
    ipv4,
    url_sources,
)

DEFAULT = ImageUrlRules()

PUBLIC = [
    ("https://example.com/a.png", Target("example.com", None)),
    ("HTTPS://Images.Example.COM/a.png", Target("images.example.com", None)),
    ("https://example.com./a.png", Target("example.com", None)),
    ("https://cdn.example.com:8443/x?y=1#z", Target("cdn.example.com", None)),
    ("https://under_score.example.com/", Target("under_score.example.com", None)),
    ("https://93.184.215.14/a.png", Target("93.184.215.14", ipaddress.IPv4Address("93.184.215.14"))),
    ("https://1.1.1.1", Target("1.1.1.1", ipaddress.IPv4Address("1.1.1.1"))),
    ("https://16843009/", Target("1.1.1.1", ipaddress.IPv4Address("1.1.1.1"))),  # one decimal number
    ("https://[2606:4700::1111]/a", Target("2606:4700::1111", ipaddress.IPv6Address("2606:4700::1111"))),
    ("https://example.com#@127.0.0.1", Target("example.com", None)),  # a fragment, not a host
]


@pytest.mark.parametrize(("url", "target"), PUBLIC, ids=[url for url, _ in PUBLIC])
def test_public_urls_pass(url, target):
    assert check_url(url, DEFAULT) == target


REFUSED = [
    # scheme and shape
    ("http://169.254.169.254/latest/meta-data/", "only https URLs are allowed (image_url_guard.schemes)"),
    ("file:///etc/passwd", "only https URLs are allowed"),
    ("data:image/png;base64,iVBORw0KGgo=", "only https URLs are allowed"),
    ("gopher://127.0.0.1:6379/_INFO", "only https URLs are allowed"),
    ("//example.com/a.png", "only https URLs are allowed"),
    ("https:example.com/a.png", "the URL must start with https://"),
    ("https:/example.com/a.png", "the URL must start with https://"),
    ("https:///example.com/a.png", "the URL has no host"),
    ("https://example.com\\@127.0.0.1/", "backslashes"),
    ("https:\\\\127.0.0.1/", "backslashes"),
    ("https://127.0.0.\t1/", "control characters"),
    (" https://127.0.0.1/", "spaces"),
    ("https://user:secret@example.com/a.png", "credentials in an image URL are not allowed"),
    ("https://example.com@127.0.0.1/", "credentials in an image URL are not allowed"),
    ("https://%6c%6fcalhost/", "without %-escapes"),
    ("https://ｌｏｃａｌｈｏｓｔ/", "plain ASCII"),  # fullwidth letters: IDNA maps them to `localhost`
    ("https://exa_mple..com/", "not a valid host name"),
    ("https://-example.com/", "not a valid host name"),
    ("https://example.com:0/", "port is not valid"),
    ("https://example.com:99999/", "host or port is not valid"),
    ("https://[::1/", "host or port is not valid"),
    ("https://[v1.fe80::1]/", "is not valid"),  # IPvFuture: the message depends on the Python version
    # IPv4 literals in every spelling inet_aton and WHATWG read
    ("https://127.0.0.1/", "127.0.0.1 is a loopback address (image_url_guard.allow_private)"),
    ("https://2130706433/", "127.0.0.1 is a loopback address"),
    ("https://0x7f000001/", "127.0.0.1 is a loopback address"),
    ("https://0x7f.1/", "127.0.0.1 is a loopback address"),
    ("https://0177.0.0.1/", "127.0.0.1 is a loopback address"),
    ("https://127.1/", "127.0.0.1 is a loopback address"),
    ("https://127.0.1/", "127.0.0.1 is a loopback address"),
    ("https://0x7F.0.0.1./", "127.0.0.1 is a loopback address"),
    ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("https://0xa9fea9fe/", "169.254.169.254 is a link-local address"),
    ("https://025177524776/", "169.254.169.254 is a link-local address"),
    ("https://10.0.0.5:6379/", "10.0.0.5 is a private address"),
    ("https://172.16.0.1/", "172.16.0.1 is a private address"),
    ("https://192.168.1.1/", "192.168.1.1 is a private address"),
    ("https://100.64.0.1/", "100.64.0.1 is a non-public address"),  # carrier-grade NAT
    ("https://224.0.0.1/", "224.0.0.1 is a multicast address"),
    ("https://0.0.0.0/", "0.0.0.0 is the unspecified address"),
    ("https://0/", "0.0.0.0 is the unspecified address"),
    ("https://0x/", "0.0.0.0 is the unspecified address"),
    ("https://240.0.0.1/", "240.0.0.1 is a private address"),
    ("https://255.255.255.255/", "255.255.255.255 is a private address"),
    ("https://1.2.3.4.5/", "not a valid IPv4 address"),
    ("https://256.0.0.1/", "not a valid IPv4 address"),
    ("https://1.2.3.256/", "not a valid IPv4 address"),
    ("https://4294967296/", "not a valid IPv4 address"),
    ("https://08.0.0.1/", "not a valid IPv4 address"),
    ("https://example.0x1/", "not a valid IPv4 address"),  # ends in a number: an address or nothing
    # IPv6 literals, and IPv6 spellings of IPv4 addresses
    ("https://[::1]/", "::1 is a loopback address"),
    ("https://[::]/", ":: is the unspecified address"),
    ("https://[fe80::1]/", "fe80::1 is a link-local address"),
    ("https://[fe80::1%25eth0]/", "without %-escapes"),
    ("https://[fc00::1]/", "fc00::1 is a private address"),
    ("https://[fd12:3456::1]/", "fd12:3456::1 is a private address"),
    ("https://[fec0::1]/", "fec0::1 is a site-local address"),
    ("https://[ff02::1]/", "ff02::1 is a multicast address"),
    ("https://[::ffff:127.0.0.1]/", "::ffff:7f00:1 stands for 127.0.0.1, a loopback address"),
    ("https://[::ffff:7f00:1]/", "::ffff:7f00:1 stands for 127.0.0.1, a loopback address"),
    ("https://[::ffff:169.254.169.254]/", "stands for 169.254.169.254, a link-local address"),
    ("https://[::127.0.0.1]/", "::7f00:1 stands for 127.0.0.1, a loopback address"),
    ("https://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe stands for 169.254.169.254, a link-local address"),
    ("https://[64:ff9b:1::a00:5]/", "64:ff9b:1::a00:5 is a local-use NAT64 address"),
    ("https://[2002:a9fe:a9fe::1]/", "2002:a9fe:a9fe::1 stands for 169.254.169.254, a link-local address"),
    ("https://[2002:0a00:0005::1]/", "stands for 10.0.0.5, a private address"),
    ("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "a private address"),  # Teredo
    ("https://[::ffff:8.8.8.8]/", "::ffff:808:808 is a reserved address"),  # write the IPv4 address
    # names only a local resolver answers
    ("https://localhost/", "the host 'localhost' is a name of the local machine or network"),
    ("https://LOCALHOST./", "the host 'localhost' is a name of the local machine or network"),
    ("https://api.localhost/", "the host 'api.localhost' is a name of the local machine or network"),
    ("https://metadata.google.internal/computeMetadata/v1/", "'metadata.google.internal' is a name of the local"),
    ("https://printer.local/", "'printer.local' is a name of the local machine or network"),
    ("https://redis.default.svc/", "'redis.default.svc' is a name of the local machine or network"),
    ("https://nas.home.arpa/", "'nas.home.arpa' is a name of the local machine or network"),
    ("https://metadata/", "the host 'metadata' is a single label, which resolvers complete with local search domains"),
    ("https://kubernetes:443/", "the host 'kubernetes' is a single label"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED, ids=[url for url, _ in REFUSED])
def test_refused_urls_say_why(url, reason):
    with pytest.raises(UrlRefused) as refused:
        check_url(url, DEFAULT)
    assert reason in str(refused.value)


def test_a_refusal_never_quotes_the_url():
    """A URL may carry a signed query (a token): the reason names the host at most."""
    with pytest.raises(UrlRefused) as refused:
        check_url("https://10.0.0.5/a.png?X-Amz-Signature=abcdef0123456789", DEFAULT)
    assert "Signature" not in str(refused.value) and "a.png" not in str(refused.value)


ALLOW_PRIVATE = ImageUrlRules(schemes=frozenset({"https", "http"}), allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9099/a.png",
        "https://10.0.0.5/",
        "http://localhost/a",
        "http://vllm-images/a",
        "https://[::1]/",
    ],
)
def test_allow_private_lets_the_operator_reach_its_own_network(url):
    check_url(url, ALLOW_PRIVATE)
    with pytest.raises(UrlRefused):
        check_url(url, DEFAULT)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1\\@x/", "http://user@127.0.0.1/", "ftp://127.0.0.1/", "http://0x7f.1.2.3.4/"]
)
def test_allow_private_still_refuses_ambiguous_urls_and_other_schemes(url):
    with pytest.raises(UrlRefused):
        check_url(url, ALLOW_PRIVATE)


def test_a_host_list_is_the_only_hosts_allowed():
    rules = ImageUrlRules(hosts=("images.example.com", "*.cdn.example.net"))
    assert check_url("https://images.example.com/a.png", rules).host == "images.example.com"
    assert check_url("https://eu.cdn.example.net/a.png", rules).host == "eu.cdn.example.net"
    for url in ("https://example.com/a.png", "https://cdn.example.net.evil.com/a.png", "https://93.184.215.14/"):
        with pytest.raises(UrlRefused, match=r"\(image_url_guard.hosts\)"):
            check_url(url, rules)
    # A listed host is still judged by its address.
    with pytest.raises(UrlRefused, match="loopback"):
        check_url("https://127.0.0.1/", ImageUrlRules(hosts=("127.0.0.1",)))


@pytest.mark.parametrize(
    ("labels", "address"),
    [
        (["127", "0", "0", "1"], "127.0.0.1"),
        (["2130706433"], "127.0.0.1"),
        (["0x7f", "1"], "127.0.0.1"),
        (["0177", "0", "1"], "127.0.0.1"),
        (["0x7F", "0x0", "0x0", "0x1"], "127.0.0.1"),
        (["0"], "0.0.0.0"),
        (["0x"], "0.0.0.0"),
        (["1", "65535"], "1.0.255.255"),
        (["1", "2", "65535"], "1.2.255.255"),
        (["1", "2", "255"], "1.2.0.255"),
        (["4294967295"], "255.255.255.255"),
    ],
)
def test_ipv4_reads_every_spelling_inet_aton_reads(labels, address):
    assert ipv4(labels) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize(
    "labels",
    [["1", "2", "3", "4", "5"], ["256", "1"], ["1", "2", "65536"], ["4294967296"], ["09"], ["0x1g"], ["1", ""]],
)
def test_ipv4_refuses_what_inet_aton_refuses(labels):
    with pytest.raises(UrlRefused):
        ipv4(labels)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("93.184.215.14", True),
        ("2606:4700::1111", True),
        ("2a00:1450:4001:82b::200e", True),
        ("127.0.0.53", False),
        ("169.254.0.1", False),
        ("192.0.2.1", False),  # documentation
        ("198.18.0.1", False),  # benchmarking
        ("::ffff:10.1.1.1", False),
        ("64:ff9b::7f00:1", False),
        ("2002:7f00:1::", False),
        ("fe80::abcd", False),
        ("ff0e::1", False),
    ],
)
def test_address_refusal(address, public):
    assert (address_refusal(ipaddress.ip_address(address)) is None) is public


def test_url_sources_finds_images_in_messages_and_tool_results():
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    document = {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}
    request = {
        "messages": [
            {"role": "user", "content": "text only"},
            {"role": "user", "content": [{"type": "text", "text": "look"}, image, document]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {"source": image}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "x"}, image]},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
                ],
            },
        ]
    }
    assert list(url_sources(request, documents=False)) == [
        ("messages.1.content.1.source.url", "https://example.com/a.png"),
        ("messages.3.content.0.content.1.source.url", "https://example.com/a.png"),
    ]
    assert ("messages.1.content.2.source.url", "https://example.com/a.pdf") in list(
        url_sources(request, documents=True)
    )


def test_a_backends_guard_as_configured():
    config = parse(
        """
backends:
  vllm: {type: openai, base_url: "http://127.0.0.1:1/v1", preset: vllm,
         image_url_guard: {schemes: [https, http], hosts: [Images.Example.COM]}}
  claude: {type: anthropic, base_url: "http://127.0.0.1:1"}
models:
  - name: m
    routes: [{backend: vllm, model: x}]
""",
        env={},
    )
    rules = rules_of(config.backends["vllm"].image_url_guard)
    assert rules == ImageUrlRules(schemes=frozenset({"https", "http"}), hosts=("images.example.com",))
    assert check_url("http://IMAGES.example.com/a.png", rules).host == "images.example.com"
    assert config.backends["claude"].image_url_guard is None  # Anthropic fetches from its own network
    default = parse("backends: {o: {type: openai, base_url: 'http://h/v1'}}", env={}).backends["o"]
    assert rules_of(default.image_url_guard) == DEFAULT
    bad = "{schemes: [file], max_per_request: -1}"
    with pytest.raises(ConfigError) as refused:
        parse(f"backends: {{o: {{type: openai, base_url: 'http://h/v1', image_url_guard: {bad}}}}}", env={})
    assert refused.value.problems == [
        "backends.o.image_url_guard.schemes[0]: Input should be 'https' or 'http'",
        "backends.o.image_url_guard.max_per_request: Input should be greater than or equal to 0",
    ]
