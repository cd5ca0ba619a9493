"""The input-token estimate: four characters per token, wide scripts one per character,
counted in C whatever the text (a Claude Code request is 30–100 KB)."""

from __future__ import annotations

import sys

from hypothesis import given
from hypothesis import strategies as st

from gateway.translate.estimate import CHARS_PER_TOKEN, PER_MESSAGE, _Counter, estimate_input_tokens


def reference(text: str) -> tuple[int, int]:
    """Per character, as the rule is written: (narrow characters, wide characters)."""
    wide = sum(1 for c in text if ord(c) > 0x2E7F)
    return len(text) - wide, wide


@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_the_counter_agrees_with_the_rule_character_by_character(text):
    counter = _Counter()
    counter.text(text)
    assert (counter.chars, counter.tokens) == reference(text)


def test_wide_scripts_count_per_character_and_the_rest_per_four():
    request = {"messages": [{"role": "user", "content": "abcd" * 10 + "你好世界"}]}
    assert estimate_input_tokens(request) == PER_MESSAGE + 4 + 40 // CHARS_PER_TOKEN


def test_lone_surrogates_are_counted_not_refused():
    counter = _Counter()
    counter.text("x\ud800y")
    assert (counter.chars, counter.tokens) == (2, 1)


def test_non_ascii_text_is_not_walked_in_python():
    """A walk over the characters in Python (a generator per character) kept the event
    loop busy for over 100 ms on a few megabytes of non-ASCII text (found by the fuzz
    suite, tests/fuzz). Counted here without a clock: the lines of Python run for 10 000
    characters and for 100 000 are the same few."""

    def lines_run(text: str) -> int:
        counter, count = _Counter(), 0

        def trace(frame, event, arg):
            nonlocal count
            count += event == "line"
            return trace

        previous = sys.gettrace()  # (a coverage tool's, say)
        sys.settrace(trace)
        try:
            counter.text(text)
        finally:
            sys.settrace(previous)
        return count

    assert lines_run("é中" * 50_000) == lines_run("é中" * 5_000) < 50
