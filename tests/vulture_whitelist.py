"""Names vulture reports in gateway/ that are used in a way it cannot see.

Passed to vulture by tests/unit/test_dead_code.py. At the confidence that test uses (80),
vulture reports only near-certain dead code: unused imports, unused arguments,
unreachable code. Callbacks whose signature a framework fixes (an aiohttp signal
handler's `app`, an asyncio protocol method's argument) can trip it: list such a name
here as vulture's whitelists do (`_.name`, an attribute of any object), each with a
comment saying who calls it. Never list code that is merely unused: delete it.
"""
