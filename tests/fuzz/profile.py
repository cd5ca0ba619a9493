"""How hard the fuzz pushes: `FUZZ_PROFILE=ci` (the default, in every test run) or `long`
(by hand: `FUZZ_PROFILE=long python -m pytest tests/fuzz -q`).

`ci` is derandomized (the same examples every run, so a red run is red again on any
machine) with few examples, and no shrinking: a failure is reported as generated,
already readable (`Example.describe`), rather than after minutes of shrinking. Its sizes
keep the module well under a minute on a loaded two-core machine, and keep what a
gateway doing linear work spends on the largest of them to a third of the `/healthz`
bound or less (on the machine these were measured on: 2 MiB of non-ASCII text ~30 ms of
CPU, 2 500 assistant turns calling tools ~35 ms), so that the bound fails on work that
should not be there, not on a slower machine. `long` draws new examples every run, many
more of them, with 100 000 messages and bodies up to and past the gateway's 32 MiB cap
(where parsing alone takes longer than the bound), and shrinks what fails to a minimal
example (hypothesis prints how to replay it: `@reproduce_failure`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, settings

KIB, MIB = 1024, 1024 * 1024


@dataclass(frozen=True, repr=False)
class Profile:
    name: str
    settings: settings
    # examples per test, by kind of generation
    valid: int
    invalid: int
    hostile: int
    # bytes of the huge strings the hostile mutations put in bodies, and of huge model names
    huge: tuple[int, ...]
    huge_model: tuple[int, ...]
    # how many messages (or blocks, tools, stop sequences) the "many" mutations send
    many: tuple[int, ...]

    def __repr__(self) -> str:  # strategies show their arguments: the name says it all
        return f"profile {self.name!r}"


# The generators build big values on purpose and some schema branches are rarely valid:
# those health checks would only complain about what the fuzz means to do.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much, HealthCheck.large_base_example]

PROFILES = {
    "ci": Profile(
        name="ci",
        settings=settings(
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=_QUIET,
            print_blob=False,
            phases=[Phase.explicit, Phase.generate],
        ),
        valid=15,
        invalid=15,
        hostile=10,
        huge=(64 * KIB, 512 * KIB, 2 * MIB),
        huge_model=(4 * KIB, 1 * MIB, 8 * MIB),
        many=(300, 1000, 2500),
    ),
    "long": Profile(
        name="long",
        settings=settings(deadline=None, database=None, suppress_health_check=_QUIET, print_blob=True),
        valid=300,
        invalid=200,
        hostile=200,
        huge=(64 * KIB, 1 * MIB, 8 * MIB, 30 * MIB, 33 * MIB),
        huge_model=(4 * KIB, 1 * MIB, 8 * MIB, 30 * MIB, 33 * MIB),
        many=(300, 3000, 20000, 100000),
    ),
}


def current() -> Profile:
    name = os.environ.get("FUZZ_PROFILE", "ci")
    if name not in PROFILES:
        raise ValueError(f"FUZZ_PROFILE={name!r}: expected one of {', '.join(PROFILES)}")
    return PROFILES[name]
