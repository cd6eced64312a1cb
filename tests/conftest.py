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


# --- no leftovers ------------------------------------------------------------------------------
# The whole suite runs with a temporary folder of its own (that a check's uid can enter, as /tmp),
# and ends by checking that no grading left a folder of its own there.

import shutil  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

GRADER_FOLDERS = ("bevialm-check-", "bevialm-grader-", "bevialm-canary-")


def grader_leftovers(wait: float = 0.0) -> list[str]:
    """The graders' folders in TMPDIR, once none is left or after ``wait`` seconds."""
    import time

    deadline = time.monotonic() + wait
    while True:
        left = sorted(p.name for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith(GRADER_FOLDERS))
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(scope="session", autouse=True)
def no_grader_leftovers() -> Iterator[None]:
    temp = Path(tempfile.mkdtemp(prefix="bevialm-suite-", dir="/tmp" if os.path.isdir("/tmp") else None))
    temp.chmod(0o755)
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(temp), str(temp)
    try:
        yield
    finally:
        left = grader_leftovers()
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"grading left folders in TMPDIR: {left}"
