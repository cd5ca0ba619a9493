"""Anthropic Messages in, Messages out: the native backends' stream relay."""
