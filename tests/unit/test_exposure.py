"""Secrets too weak for where the gateway listens (`config.exposure_problems`).

On loopback anything goes: the quick start serves its published demo key there. On any
other address a placeholder, a value this repository published, or a secret under
`MIN_SECRET_LENGTH` characters is refused, naming the setting and the address but never
the value. The admin and metrics tokens are judged by the listener that serves them, the
client keys by the client listener."""

from __future__ import annotations

import secrets

import pytest

from gateway.config import MIN_SECRET_LENGTH, exposure_problems, is_loopback, parse

STRONG = secrets.token_hex(32)


def config(
    *,
    host: str = "127.0.0.1",
    admin_listen: str | None = None,
    admin: str | None = None,
    metrics: str | None = None,
    key: str | None = None,
):
    server = f"host: '{host}'" + (f", admin_listen: '{admin_listen}'" if admin_listen else "")
    if metrics is not None:
        server += f", metrics_token: '{metrics}'"
    text = f"server: {{{server}}}\n"
    if admin is not None:
        text += f"admin: {{token: '{admin}'}}\n"
    if key is not None:
        text += f"teams: [{{id: demo, keys: [{{name: demo, key: '{key}'}}]}}]\n"
    return parse(text, env={})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_addresses(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "192.168.1.2", "gateway.internal", "2001:db8::1"])
def test_every_other_address_is_reachable_from_the_network(host):
    assert not is_loopback(host)


def test_the_quick_start_demo_key_is_served_on_loopback():
    assert exposure_problems(config(key="gk-demo-change-me", admin="changeme")) == []


@pytest.mark.parametrize(
    "weak, why",
    [
        ("gk-demo-change-me", "a placeholder"),
        ("admin-change-me", "a placeholder"),
        ("REPLACE_ME", "a placeholder"),
        ("gk-" + "x" * 40 + "-changeme", "a placeholder"),
        (
            "x" * (MIN_SECRET_LENGTH - 1),
            f"too short ({MIN_SECRET_LENGTH - 1} characters; at least {MIN_SECRET_LENGTH})",
        ),
    ],
)
@pytest.mark.parametrize("setting", ["admin.token", "server.metrics_token", "teams[0].keys[0].key"])
def test_a_weak_secret_is_refused_on_every_interface(weak, why, setting):
    values = {"admin.token": "admin", "server.metrics_token": "metrics", "teams[0].keys[0].key": "key"}
    problems = exposure_problems(config(host="0.0.0.0", **{values[setting]: weak}))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{setting}: {why}")
    assert "non-loopback address (0.0.0.0)" in problems[0]
    assert weak not in problems[0]


def test_strong_secrets_pass_on_every_interface():
    strong = config(host="0.0.0.0", admin=STRONG, metrics=secrets.token_hex(32), key="gk-" + secrets.token_urlsafe(32))
    assert exposure_problems(strong) == []


def test_the_operator_tokens_are_judged_by_the_admin_listener():
    """An admin listener on loopback keeps a short admin token acceptable while the client
    listener faces the network, and the other way round."""
    inside = config(host="0.0.0.0", admin_listen="127.0.0.1:9091", admin="short-admin-token", metrics="short")
    assert exposure_problems(inside) == []
    outside = config(host="127.0.0.1", admin_listen="0.0.0.0:9091", admin="short-admin-token", key="gk-demo-change-me")
    assert [p.split(":")[0] for p in exposure_problems(outside)] == ["admin.token"]


def test_the_addresses_actually_served_override_the_configs():
    """`gateway serve --host 0.0.0.0` (the image's command) with a config that says
    127.0.0.1: the address used is the one judged."""
    quick_start = config(key="gk-demo-change-me")
    assert exposure_problems(quick_start) == []
    assert [p.split(":")[0] for p in exposure_problems(quick_start, host="0.0.0.0")] == ["teams[0].keys[0].key"]
    admin = config(admin="changeme-admin-token")
    assert [p.split(":")[0] for p in exposure_problems(admin, admin_host="::")] == ["admin.token"]
