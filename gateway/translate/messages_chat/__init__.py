"""Anthropic Messages in, OpenAI Chat Completions out: request, answer, stream, relay."""
