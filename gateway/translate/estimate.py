"""A local estimate of a Messages request's input tokens, for backends that cannot count.

Not a tokenizer: about four characters of English or code per token (the rule of thumb
OpenAI and Anthropic both publish), counted over every text the model reads, plus a
small fixed cost per message, tool and image. Within ±20 % on typical English and code
prompts; CJK text is counted per character, which over-estimates slightly rather than
under-estimates. Pure.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.protocols.messages import MessagesRequest

CHARS_PER_TOKEN = 4
PER_MESSAGE = 4
PER_TOOL = 8
PER_IMAGE = 1000  # a mid-sized image; the real cost depends on its pixels
# Characters above U+2E7F (CJK and the rest counted one per token) are, in UTF-8, the
# sequences led by E3–F4 (U+3000 and up) and those led by E2 then BA–BF (U+2E80–U+2FFF).
# Every other byte, deleted: what is left is one lead byte per wide character.
_NOT_WIDE_LEADS = bytes(b for b in range(256) if not 0xE3 <= b <= 0xF4)
_WIDE_AFTER_E2 = tuple(bytes((0xE2, b)) for b in range(0xBA, 0xC0))


def estimate_output_tokens(chars: int) -> int:
    """Tokens for `chars` characters of generated text (used when a server reports no usage)."""
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def estimate_input_tokens(request: MessagesRequest) -> int:
    counter = _Counter()
    counter.add(request.get("system"))
    for message in request.get("messages") or ():
        counter.tokens += PER_MESSAGE
        counter.add(message.get("content"))
    for tool in request.get("tools") or ():
        counter.tokens += PER_TOOL
        counter.text(tool.get("name", ""))
        counter.text(tool.get("description", ""))
        if "input_schema" in tool:
            counter.text(orjson.dumps(tool["input_schema"]).decode())
    return max(counter.tokens + (counter.chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN, 1)


class _Counter:
    __slots__ = ("tokens", "chars")

    def __init__(self) -> None:
        self.tokens = 0
        self.chars = 0

    def text(self, text: Any) -> None:
        if not isinstance(text, str):
            return
        if text.isascii():  # nearly always, and checked in C: no walk over the characters
            self.chars += len(text)
            return
        # Non-ASCII scripts (CJK in particular) run near one token per character. Counted
        # in C over the UTF-8 bytes: a walk over the characters in Python blocked the
        # event loop for over 100 ms on a few megabytes of non-ASCII text.
        encoded = text.encode("utf-8", "surrogatepass")
        wide = len(encoded.translate(None, _NOT_WIDE_LEADS)) + sum(map(encoded.count, _WIDE_AFTER_E2))
        self.chars += len(text) - wide
        self.tokens += wide

    def add(self, content: Any) -> None:
        if content is None:
            return
        if isinstance(content, str):
            self.text(content)
            return
        if isinstance(content, dict):
            content = [content]
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                self.text(block.get("text"))
            elif kind == "image":
                self.tokens += PER_IMAGE
            elif kind == "tool_use":
                self.text(block.get("name"))
                self.text(orjson.dumps(block.get("input", {})).decode())
            elif kind == "tool_result":
                self.add(block.get("content"))
            elif kind == "thinking":
                self.text(block.get("thinking"))
            elif kind == "document":
                source = block.get("source") or {}
                if source.get("type") == "text":
                    self.text(source.get("data"))
                else:
                    self.tokens += PER_IMAGE
            else:
                self.text(orjson.dumps(block).decode())
