"""Hypothesis profiles for the fuzz suite.

``short`` (the default) keeps ``tests/fuzz`` within about half a minute so it
runs in every ``make test``; ``long`` is what ``make fuzz`` runs
(``HYPOTHESIS_PROFILE=long``): 2,500 examples per test times the test's
scale (7,500 to 10,000 for the cheap parsers, a few hundred for the
end-to-end ones), no per-example deadline, about six minutes in all on two
cores. ``FUZZ_EXAMPLES=N`` sets the long profile's base for a longer run.
Any other ``HYPOTHESIS_PROFILE`` value means ``short`` here.

The profiles are applied per test through :func:`fuzz`, never loaded as
hypothesis' global default, so the other property tests of the suite keep
their own settings whichever profile is chosen here.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILES = ("short", "long")
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "short")
if PROFILE not in PROFILES:
    PROFILE = "short"

_COMMON = {
    "deadline": None,  # hangs are caught by guard.only_raises (5 s a call) and pytest-timeout, not a flaky clock
    "print_blob": True,  # a failure prints @reproduce_failure(...) to replay it exactly
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
settings.register_profile("short", max_examples=120, **_COMMON)
settings.register_profile("long", max_examples=int(os.environ.get("FUZZ_EXAMPLES") or 2_500), **_COMMON)


def fuzz(scale: float = 1.0) -> settings:
    """The active profile, with ``scale`` times its example budget (cheap targets get more, costly ones fewer)."""
    base = settings.get_profile(PROFILE)
    return settings(base, max_examples=max(5, int(base.max_examples * scale)))
