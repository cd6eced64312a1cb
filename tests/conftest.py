"""Hypothesis profiles, registered and loaded explicitly.

Hypothesis loads a profile of its own called ``ci`` when the ``CI`` variable is
set; we register ours under the same names and load one by name, so the
settings below are the ones in force everywhere. ``deadline=None``: a finite
difference check runs the forward pass twice per checked entry, which is
legitimately slower than Hypothesis' 200 ms default.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": (HealthCheck.too_slow, HealthCheck.data_too_large),
}
settings.register_profile("dev", max_examples=25, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("ci", max_examples=25, derandomize=True, print_blob=True, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("thorough", max_examples=300, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("BEVIALM_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
