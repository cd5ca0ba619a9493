"""The admin API fuzzed by schemathesis from its own OpenAPI document (`/admin/openapi.json`).

Every operation gets generated requests, valid ones and ones the document calls invalid,
sent to a live gateway with the admin token. Each answer must not be a 5xx, must have a
status the document lists for that operation, and must match the schema documented for
that status; invalid input must be refused with a 4xx. Examples are bounded and
derandomized so the run is quick and the same every time.

Hypothesis drives these tests synchronously, so the gateway runs on its own event loop
in a thread rather than on the test's loop.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -e '.[dev]')")

import requests  # noqa: E402  (a dependency of schemathesis)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.admin.routes import ROUTES  # noqa: E402
from tests.support.servers import (
    Running,  # noqa: E402
    start_gateway,  # noqa: E402
)

ADMIN_TOKEN = "admin-token-for-schemathesis-0001"
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CONFIG = f"""
admin: {{token: {ADMIN_TOKEN}}}
teams:
  - id: team-a
    keys: [{{name: client, key: client-key-for-schemathesis}}]
  - id: team-b
"""
EXAMPLES = 20  # per operation and mode: the whole file stays well under 30 s
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# (Not `ignored_auth`: the 401s have their own tests in test_admin.py.)


class GatewayThread:
    """The real app on a real port, served by an event loop of its own."""

    def __init__(self, config_text: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.thread.start()
        self.running: Running = self._run(start_gateway(config_text))

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def close(self) -> None:
        self._run(self.running.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def live_gateway() -> Iterator[str]:
    server = GatewayThread(CONFIG)
    yield server.running.url
    server.close()


@pytest.fixture(scope="module")
def admin_schema(live_gateway: str):
    # The token through the document's own security scheme (not as a fixed header), so
    # negative cases that leave it out really go without it.
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"admin_token": {"bearer": ADMIN_TOKEN}}}})
    return schemathesis.openapi.from_url(f"{live_gateway}/admin/openapi.json", headers=AUTH, config=config)


# One test per documented operation (schemathesis's own lazy pytest loader does not work
# with this pytest, so operations are looked up by the route table instead).
OPERATIONS = [(route.method, f"/admin{route.path}") for route in ROUTES]


def make(url: str, path: str, body: dict) -> dict:
    response = requests.post(f"{url}/admin{path}", json=body, headers=AUTH, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def aimed_at(team_id: str, key_id: str):
    """Random ids almost never exist; half the valid cases are pointed at a team and a key
    that do, so the successful paths (200, 201, 409) are fuzzed too, not only the 404s."""

    def aim(case):
        parameters = case.path_parameters or {}
        if "team_id" in parameters:
            parameters["team_id"] = team_id
        if "key_id" in parameters:
            parameters["key_id"] = key_id
        if isinstance(case.body, dict):
            if "teams" in case.body:
                case.body["teams"] = [team_id]
            if case.body.get("default_team") is not None:
                case.body["default_team"] = team_id
        return case

    return aim


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda mode: mode.value)
def test_admin_api_conforms_to_its_document(admin_schema, live_gateway, method, path, mode):
    operation = admin_schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:  # (a negative case re-aimed could become a valid one)
        team = make(live_gateway, "/teams", {"id": f"fuzz-{uuid.uuid4().hex[:12]}"})
        key = make(live_gateway, "/keys", {"teams": [team["id"]]})
        strategy = strategy | strategy.map(aimed_at(team["id"], key["id"]))
    statuses: list[int] = []

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case):
        statuses.append(case.call_and_validate(base_url=live_gateway, checks=CHECKS).status_code)

    check()
    assert statuses
    if mode is GenerationMode.POSITIVE:  # every valid case carries the token: none may be turned away at the door
        assert 401 not in statuses, statuses
