"""The native pass-through policy (gateway/passthrough.py): pattern lists read in order, the
last match deciding; a team's narrowing on top of the backend's; Files API references
found wherever a block carries one, and nowhere a client tool's input could hold one."""

from __future__ import annotations

import pytest

from gateway.config import (
    DEFAULT_BETAS,
    DEFAULT_FIELDS,
    DEFAULT_TOOLS,
    ConfigError,
    PassthroughConfig,
    TeamBootstrap,
    TeamPassthrough,
    parse,
)
from gateway.errors import InvalidRequest
from gateway.passthrough import Patterns, backend_policy, check, file_reference, team_policies


@pytest.mark.parametrize(
    ("patterns", "value", "allowed"),
    [
        (("*",), "anything", True),
        ((), "anything", False),  # no pattern matches: refused
        (("claude-code-*",), "claude-code-20250219", True),
        (("claude-code-*",), "files-api-2025-04-14", False),
        (("*", "!files-api-*"), "files-api-2025-04-14", False),
        (("*", "!files-api-*"), "effort-2025-11-24", True),
        (("*", "!files-api-*", "files-api-2025-04-14"), "files-api-2025-04-14", True),  # the last match decides
        (("!files-api-*", "*"), "files-api-2025-04-14", True),
        (("web_search_2025????",), "web_search_20250305", True),
        (("web_search_2025????",), "web_search_20260209", False),
    ],
)
def test_the_last_matching_pattern_decides(patterns, value, allowed):
    assert Patterns(patterns).allows(value) is allowed
    assert Patterns(patterns).allows(value) is allowed  # and again, from what it remembered


def test_the_defaults_let_claude_code_and_common_tools_through():
    betas, tools, fields = Patterns(DEFAULT_BETAS), Patterns(DEFAULT_TOOLS), Patterns(DEFAULT_FIELDS)
    claude_code = (
        "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,per-turn-control-2026-07-01,"
        "mid-conversation-tool-changes-2026-07-01,thinking-token-count-2026-05-13,advanced-tool-use-2025-11-20,"
        "effort-2025-11-24,dangerous-tool-use-2026-09-03,thinking-display-updates-2026-08-18,afk-mode-2026-01-31,"
        "token-counting-2024-11-01"
    )
    assert all(betas.allows(beta) for beta in claude_code.split(","))
    for refused in ("files-api-2025-04-14", "mcp-client-2025-11-20", "code-execution-2025-08-25", "skills-2025-10-02"):
        assert not betas.allows(refused)
    for kind in ("custom", "bash_20250124", "text_editor_20250728", "web_search_20250305", "web_fetch_20250910"):
        assert tools.allows(kind)
    for kind in ("code_execution_20250825", "mcp_toolset", "advisor_20260301"):
        assert not tools.allows(kind)
    for field in ("context_management", "safeguards", "cache_control", "service_tier"):
        assert fields.allows(field)
    for field in ("container", "mcp_servers", "thread", "inference_geo", "speed"):
        assert not fields.allows(field)


ASK = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
DEFAULT = backend_policy(PassthroughConfig())


def refusal(body: dict, betas: str | None = None, *policies) -> str:
    with pytest.raises(InvalidRequest) as refused:
        check(body, betas, policies or (DEFAULT,))
    return refused.value.message


def test_refusals_name_the_value_and_the_setting():
    assert refusal(ASK, "claude-code-20250219, files-api-2025-04-14") == (
        "anthropic-beta 'files-api-2025-04-14' is not allowed on this route (passthrough.betas)"
    )
    assert refusal(ASK, "FILES-API-2025-04-14") == (  # no way round by case
        "anthropic-beta 'files-api-2025-04-14' is not allowed on this route (passthrough.betas)"
    )
    assert refusal({**ASK, "container": "container_011"}) == (
        "container: the field 'container' is not allowed on this route (passthrough.fields)"
    )
    tools = [{"name": "Bash", "input_schema": {"type": "object"}}, {"type": "code_execution_20250825", "name": "ce"}]
    assert refusal({**ASK, "tools": tools}) == (
        "tools.1.type: the tool type 'code_execution_20250825' is not allowed on this route (passthrough.tools)"
    )
    long_name = "x" * 5000
    assert len(refusal({**ASK, long_name: 1})) < 300  # a body-sized name is not quoted whole


def test_what_the_gateway_reads_itself_always_passes():
    nothing = backend_policy(PassthroughConfig(betas=[], tools=["custom"], fields=[]))
    body = {
        **ASK,
        "system": "s",
        "stop_sequences": ["x"],
        "stream": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "metadata": {"user_id": "u"},
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "low"},
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
    }
    check(body, None, (nothing,))
    check(body, "", (nothing,))


def test_a_team_narrows_and_cannot_widen():
    wide = backend_policy(PassthroughConfig(betas=["*"], tools=["*"], fields=["*"], files=True))
    team = TeamBootstrap(
        id="search", passthrough=TeamPassthrough(betas=["claude-code-*"], tools=["custom"], files=False)
    )
    narrow = team_policies([team, TeamBootstrap(id="other")])
    assert set(narrow) == {"search"}
    policies = (wide, narrow["search"])
    assert refusal(ASK, "effort-2025-11-24", *policies) == (
        "anthropic-beta 'effort-2025-11-24' is not allowed for team 'search' (teams[].passthrough.betas)"
    )
    search = {**ASK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    assert "for team 'search' (teams[].passthrough.tools)" in refusal(search, None, *policies)
    check(search, None, (wide,))
    check({**ASK, "container": "c"}, "claude-code-20250219", policies)  # fields: not narrowed
    # A team's `true` never widens the backend's `false`.
    permissive = team_policies([TeamBootstrap(id="t", passthrough=TeamPassthrough(files=True, betas=["*"]))])["t"]
    with_file = {**ASK, "messages": [{"role": "user", "content": [{"type": "container_upload", "file_id": "file_1"}]}]}
    assert "(passthrough.files)" in refusal(with_file, None, DEFAULT, permissive)
    assert "(passthrough.betas)" in refusal(ASK, "files-api-2025-04-14", DEFAULT, permissive)


def image_file(file_id: str | None = "file_011") -> dict:
    return {"type": "image", "source": {"type": "file", "file_id": file_id}}


@pytest.mark.parametrize(
    ("content", "path"),
    [
        ([{"type": "text", "text": "hi"}, image_file()], "messages.0.content.1.source.file_id"),
        (
            [{"type": "document", "source": {"type": "file", "file_id": "file_2"}}],
            "messages.0.content.0.source.file_id",
        ),
        ([{"type": "container_upload", "file_id": "file_3"}], "messages.0.content.0.file_id"),
        (
            [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "x"}, image_file()]}],
            "messages.0.content.0.content.1.source.file_id",
        ),
        (
            [
                {
                    "type": "code_execution_tool_result",
                    "tool_use_id": "s",
                    "content": {
                        "type": "code_execution_result",
                        "content": [{"type": "code_execution_output", "file_id": "f"}],
                    },
                }
            ],
            "messages.0.content.0.content.content.0.file_id",
        ),
    ],
)
def test_file_references_are_found_wherever_a_block_carries_one(content, path):
    messages = [{"role": "user", "content": content}]
    assert file_reference(messages) == path
    assert refusal({**ASK, "messages": messages}) == (
        f"{path}: Files API references (file_id) are not allowed on this route (passthrough.files)"
    )


@pytest.mark.parametrize(
    "content",
    [
        "a file_id in text",
        [{"type": "text", "text": "file_id"}],
        [
            {
                "type": "tool_use",
                "id": "t",
                "name": "fetch",
                "input": {"file_id": "the client's own", "nested": [{"file_id": 1}]},
            }
        ],
        [
            {
                "type": "text",
                "text": "cited",
                "citations": [{"type": "char_location", "file_id": None, "cited_text": "c"}],
            }
        ],
        [image_file(None)],
    ],
)
def test_what_is_not_a_file_reference(content):
    messages = [{"role": "assistant", "content": content}]
    assert file_reference(messages) is None
    check({**ASK, "messages": messages}, None, (DEFAULT,))


def test_the_configuration_names_every_bad_setting():
    text = """
backends:
  native: {type: anthropic, base_url: "http://127.0.0.1:1", passthrough: {betas: [""], tool: [custom]}}
  chat: {type: openai, base_url: "http://127.0.0.1:1/v1", passthrough: {}}
teams:
  - id: t
    passthrough: {files: maybe, fields: ["!"]}
models:
  - name: m
    routes: [{backend: native, model: x}]
"""
    with pytest.raises(ConfigError) as refused:
        parse(text, env={})
    assert refused.value.problems == [
        "backends.native.passthrough.betas[0]: a pattern must not be empty",
        "backends.native.passthrough.tool: unknown key",
        "backends.chat.passthrough: unknown key",  # nothing passes through to a translated backend
        "teams[0].passthrough.fields[0]: a pattern must not be empty",
        "teams[0].passthrough.files: Input should be a valid boolean, unable to interpret input",
    ]
