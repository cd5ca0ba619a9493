"""Image URLs and SSRF, through the real gateway and the scripted upstream.

A self-hosted OpenAI-style server (vLLM, Ollama) fetches an image block's URL from
inside the operator's network. Before the guard, `{"type": "url", "url":
"http://169.254.169.254/latest/meta-data/"}` was handed to it as it came: any tenant
could make the server read the cloud metadata service or an internal one. Now such a URL
is refused (400, naming the block and the reason) before the request leaves, unless
the backend's `image_url_guard` allows it.
"""

from __future__ import annotations

import aiohttp
import anthropic
import orjson
import pytest

from gateway.backends.image_hosts import check_names
from gateway.errors import InvalidRequest
from tests.support.replies import chat_message, native_message
from tests.support.servers import start_gateway


def config(upstream_url: str) -> str:
    return f"""
teams:
  - id: team-a
    keys: [{{name: client, key: client-key}}]
backends:
  chat:
    type: openai
    base_url: {upstream_url}/v1
    preset: vllm
    tokenize_url: {upstream_url}/tokenize
    timeouts: {{connect: 2}}  # bounds the gateway's own name lookups
  chat-inside:
    type: openai
    base_url: {upstream_url}/v1
    preset: vllm
    image_url_guard: {{schemes: [https, http], allow_private: true}}
  chat-listed:
    type: openai
    base_url: {upstream_url}/v1
    preset: vllm
    image_url_guard: {{hosts: [93.184.215.14], max_per_request: 2}}
  native:
    type: anthropic
    base_url: {upstream_url}
  native-self-hosted:
    type: anthropic
    base_url: {upstream_url}
    image_url_guard: {{}}
models:
  - name: chat-model
    routes: [{{backend: chat, model: upstream-chat-model}}]
  - name: inside-model
    routes: [{{backend: chat-inside, model: upstream-chat-model}}]
  - name: listed-model
    routes: [{{backend: chat-listed, model: upstream-chat-model}}]
  - name: native-model
    routes: [{{backend: native, model: upstream-native-model}}]
  - name: self-hosted-model
    routes: [{{backend: native-self-hosted, model: upstream-native-model}}]
"""


@pytest.fixture
async def gateway(upstream):
    running = await start_gateway(config(upstream.url))
    yield running
    await running.runner.cleanup()


def asking(model: str, *urls: str, stream: bool = False) -> dict:
    images = [{"type": "image", "source": {"type": "url", "url": url}} for url in urls]
    content = [{"type": "text", "text": "What is in this image?"}, *images]
    return {"model": model, "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": content}]}


async def post(url: str, body: dict, path: str = "/v1/messages") -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}{path}",
            data=orjson.dumps(body),
            headers={"x-api-key": "client-key", "content-type": "application/json"},
        ) as response:
            assert response.content_type == "application/json"
            return response.status, orjson.loads(await response.read())


REFUSED = [
    ("http://169.254.169.254/latest/meta-data/iam/", "only https URLs are allowed (image_url_guard.schemes)"),
    (
        "https://169.254.169.254/latest/meta-data/",
        "169.254.169.254 is a link-local address (image_url_guard.allow_private)",
    ),
    ("https://2130706433/", "127.0.0.1 is a loopback address"),
    ("https://0x7f.1/", "127.0.0.1 is a loopback address"),
    ("https://[::ffff:169.254.169.254]/", "stands for 169.254.169.254, a link-local address"),
    ("https://10.0.0.5:6379/", "10.0.0.5 is a private address"),
    ("https://localhost/a.png", "the host 'localhost' is a name of the local machine or network"),
    ("https://metadata.google.internal/computeMetadata/v1/", "is a name of the local machine or network"),
    ("https://metadata/computeMetadata/v1/", "the host 'metadata' is a single label"),
    # A name is resolved by the gateway first; `.invalid` never resolves (RFC 6761).
    ("https://images.example.invalid/a.png", "the host 'images.example.invalid' did not resolve, or not to public"),
    ("https://user:secret@example.com/a.png", "credentials in an image URL are not allowed"),
    ("https://example.com\\@10.0.0.5/a.png", "backslashes"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("url", "reason"), REFUSED, ids=[url for url, _ in REFUSED])
async def test_urls_into_the_operators_network_are_refused(gateway, upstream, url, reason, stream):
    status, answer = await post(gateway.url, asking("chat-model", url, stream=stream))
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["message"].startswith("messages.0.content.1.source.url: ")
    assert reason in answer["error"]["message"]
    assert "secret" not in answer["error"]["message"]
    assert upstream.requests == []  # the server was never asked


async def test_a_public_url_reaches_the_server(gateway, upstream):
    upstream.script(chat_message("a cat"))
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="client-key", max_retries=0) as sdk:
        message = await sdk.messages.create(**asking("chat-model", "https://93.184.215.14/cat.png"))
    assert message.content[0].text == "a cat"
    parts = upstream.requests[-1].body["messages"][0]["content"]
    assert {"type": "image_url", "image_url": {"url": "https://93.184.215.14/cat.png"}} in parts


async def test_the_sdk_sees_a_refusal_as_a_bad_request(gateway, upstream):
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="client-key", max_retries=0) as sdk:
        with pytest.raises(anthropic.BadRequestError) as refused:
            body = asking("chat-model", "https://127.1/")
            del body["stream"]
            async with sdk.messages.stream(**body) as stream:
                await stream.get_final_message()
    assert "127.0.0.1 is a loopback address" in refused.value.message
    assert upstream.requests == []


async def test_image_urls_in_tool_results_are_checked_too(gateway, upstream):
    body = {
        "model": "chat-model",
        "max_tokens": 50,
        "messages": [
            {"role": "user", "content": "fetch it"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [
                            {"type": "image", "source": {"type": "url", "url": "https://192.168.1.1/admin.png"}}
                        ],
                    }
                ],
            },
        ],
    }
    status, answer = await post(gateway.url, body)
    assert status == 400
    assert answer["error"]["message"] == (
        "messages.2.content.0.content.0.source.url: 192.168.1.1 is a private address (image_url_guard.allow_private)"
    )
    assert upstream.requests == []


async def test_a_backend_inside_a_trusted_network_may_allow_private_urls(gateway, upstream):
    upstream.script(chat_message("ok"))
    url = "http://127.0.0.1:9/internal.png"
    status, _ = await post(gateway.url, asking("inside-model", url))
    assert status == 200
    assert {"type": "image_url", "image_url": {"url": url}} in upstream.requests[-1].body["messages"][0]["content"]


async def test_a_host_list_and_a_cap_on_urls_per_request(gateway, upstream):
    status, answer = await post(gateway.url, asking("listed-model", "https://93.184.215.15/a.png"))
    assert status == 400
    assert (
        "the host '93.184.215.15' is not one this model's backend may fetch from (image_url_guard.hosts)"
        in (answer["error"]["message"])
    )
    three = asking("listed-model", *["https://93.184.215.14/a.png"] * 3)
    status, answer = await post(gateway.url, three)
    assert status == 400
    assert answer["error"]["message"] == (
        "messages: 3 image URLs, more than the limit of 2 (image_url_guard.max_per_request)"
    )
    assert upstream.requests == []
    upstream.script(chat_message("ok"))
    status, _ = await post(gateway.url, asking("listed-model", *["https://93.184.215.14/a.png"] * 2))
    assert status == 200


async def test_a_tokenizer_that_would_fetch_is_guarded_too(gateway, upstream):
    body = asking("chat-model", "https://169.254.169.254/")
    del body["max_tokens"], body["stream"]
    status, answer = await post(gateway.url, body, path="/v1/messages/count_tokens")
    assert status == 400 and "link-local" in answer["error"]["message"]
    assert upstream.requests == []


async def test_anthropic_fetches_from_its_own_network(gateway, upstream):
    """A native backend passes URLs unchecked by default: Anthropic's servers fetch them
    from Anthropic's network, not the operator's. A self-hosted server speaking Messages
    gets the guard when its backend sets `image_url_guard`, documents included."""
    upstream.script(native_message([{"type": "text", "text": "ok"}]))
    url = "https://169.254.169.254/latest/meta-data/"
    status, _ = await post(gateway.url, asking("native-model", url))
    assert status == 200
    assert upstream.requests[-1].body["messages"][0]["content"][1]["source"]["url"] == url
    upstream.requests.clear()
    status, answer = await post(gateway.url, asking("self-hosted-model", url))
    assert status == 400 and "link-local" in answer["error"]["message"]
    pdf = {
        "model": "self-hosted-model",
        "max_tokens": 50,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "document", "source": {"type": "url", "url": "http://10.0.0.5/report.pdf"}}],
            }
        ],
    }
    status, answer = await post(gateway.url, pdf)
    assert status == 400
    assert answer["error"]["message"] == (
        "messages.0.content.0.source.url: only https URLs are allowed (image_url_guard.schemes)"
    )
    assert upstream.requests == []


async def test_the_dns_step_refuses_names_unless_every_address_is_public():
    """The resolution step alone, with this machine's resolver and names it answers
    without a DNS server: `localhost` (the hosts file), and numbers that `getaddrinfo`
    reads as addresses, as the server's own resolver would."""
    await check_names({"93.184.215.14": "messages.0.content.1.source.url"}, timeout=5)
    for name in ("localhost", "2130706433", "0x7f.1", "10.1"):
        with pytest.raises(InvalidRequest) as refused:
            await check_names({name: "messages.0.content.1.source.url"}, timeout=5)
        assert refused.value.message == (
            f"messages.0.content.1.source.url: the host '{name}' did not resolve, or not to public addresses only"
            " (image_url_guard.allow_private)"
        )
