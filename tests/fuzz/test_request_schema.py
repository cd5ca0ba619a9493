"""The Messages request schema the fuzz generates from (tests/fixtures/messages/request.schema.json)
says what the gateway's validator says: the same documented fields and enums, every valid
fixture and every request a real client sent fits it, every invalid fixture breaks it
(but the few whose fault only the gateway can see). A schema that drifted from the
validator would have the fuzz generate requests of some other API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (pip install -e '.[dev]')")

from gateway.protocols import messages  # noqa: E402
from tests.fuzz.schema_requests import request_schema  # noqa: E402

FIXTURES = Path(__file__).parent.parent / "fixtures"
# Invalid for reasons no JSON schema can state: how two fields relate.
CROSS_FIELD = {"thinking_budget_not_below_max_tokens"}


def validator():
    schema = request_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def bodies(kind: str) -> list:
    paths = sorted((FIXTURES / "messages" / kind).glob("*.json"))
    return [pytest.param(json.loads(path.read_text())["body"], id=path.stem) for path in paths]


def client_bodies() -> list:
    paths = sorted((FIXTURES / "clients").glob("*/*.body.json"))
    return [pytest.param(json.loads(path.read_text()), id=f"{path.parent.name}/{path.stem}") for path in paths]


def test_the_documented_fields_are_the_validators() -> None:
    assert set(request_schema()["properties"]) == set(messages.KNOWN_FIELDS)


def test_the_enums_are_the_validators() -> None:
    definitions = request_schema()["$defs"]
    roles = {branch["properties"]["role"]["const"] for branch in definitions["message"]["anyOf"]}
    assert roles == set(messages.ROLES)
    efforts = definitions["output_config"]["properties"]["effort"]["enum"]
    assert efforts == list(messages.EFFORTS)
    choices = set()
    for branch in definitions["tool_choice"]["anyOf"]:
        kind = branch["properties"]["type"]
        choices |= set(kind.get("enum", [kind.get("const")]))
    assert choices == set(messages.TOOL_CHOICES)
    base64 = definitions["image_source"]["anyOf"][0]["properties"]["media_type"]["enum"]
    assert base64 == list(messages.IMAGE_MEDIA_TYPES)
    budget = definitions["thinking"]["anyOf"][0]["properties"]["budget_tokens"]["minimum"]
    assert budget == messages.MIN_THINKING_BUDGET
    assert request_schema()["properties"]["max_tokens"]["anyOf"][0]["maximum"] == messages.MAX_TOKENS
    name = definitions["tool"]["anyOf"][0]["properties"]["name"]["pattern"]
    assert name == messages.TOOL_NAME.pattern


@pytest.mark.parametrize("body", bodies("valid"))
def test_every_valid_fixture_fits(body: dict) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator().iter_errors(body)]
    assert not errors


@pytest.mark.parametrize("body", client_bodies())
def test_every_real_clients_request_fits(body: dict) -> None:
    # Undocumented fields (Claude Code's own) are kept by the gateway and left out here.
    documented = {key: value for key, value in body.items() if key in messages.KNOWN_FIELDS}
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator().iter_errors(documented)]
    assert not errors


def test_every_invalid_fixture_breaks_it_but_the_cross_field_ones() -> None:
    check = validator()
    fitting = {
        path.stem
        for path in (FIXTURES / "messages" / "invalid").glob("*.json")
        if check.is_valid(json.loads(path.read_text())["body"])
    }
    assert fitting == CROSS_FIELD
