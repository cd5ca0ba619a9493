"""Vendors of the Chat Completions API as presets of one dialect, not as modules.

A vendor that only varies the OpenAI API gets a line here; the YAML `options:` of a
backend override any flag of its preset.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.config import ChatOptions
from gateway.translate.messages_chat.dialect import ChatDialect

PRESETS: dict[str, ChatDialect] = {
    # OpenAI: max_completion_tokens (reasoning models reject max_tokens), no top_k, at most
    # 4 stop sequences, PDF file parts.
    "openai": ChatDialect(max_tokens_field="max_completion_tokens", top_k=False, max_stop_sequences=4, documents=True),
    "azure": ChatDialect(max_tokens_field="max_completion_tokens", top_k=False, max_stop_sequences=4, documents=True),
    "groq": ChatDialect(max_tokens_field="max_completion_tokens", top_k=False, max_stop_sequences=4),
    "vllm": ChatDialect(max_tokens_field="max_tokens", top_k=True),
    # Ollama's OpenAI layer cannot fetch image URLs.
    "ollama": ChatDialect(max_tokens_field="max_tokens", top_k=True, image_urls=False),
    # DeepSeek's thinking mode wants earlier reasoning echoed on every assistant turn.
    "deepseek": ChatDialect(
        max_tokens_field="max_tokens",
        top_k=False,
        max_stop_sequences=16,
        reasoning="deepseek",
        reasoning_history="reasoning_content",
    ),
    "together": ChatDialect(max_tokens_field="max_tokens", top_k=True),
    "generic": ChatDialect(),
}


def dialect_for(preset: str, options: ChatOptions) -> ChatDialect:
    overrides = {key: value for key, value in options.model_dump().items() if value is not None}
    return replace(PRESETS[preset], **overrides)
