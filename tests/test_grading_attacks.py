"""Attacks on the grader's core, written before the defences: a backward that works from state
kept since the last forward instead of its cache, and a submission that stalls every check."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import planted
from .test_grading import grade_here, solution_copy

STASHED_CACHE = """
_STASH = {}
_reference_forward = forward
_reference_backward = backward

def forward(params, x, cfg):
    y, cache = _reference_forward(params, x, cfg)
    _STASH["cache"] = cache  # kept in a global ...
    return y, None  # ... and no cache handed back

def backward(params, cache, dy):
    return _reference_backward(params, _STASH["cache"], dy)
"""

STALLS = """
def forward(params, x, cfg):
    import time
    time.sleep(1000)

def backward(params, cache, dy):
    import time
    time.sleep(1000)
"""


@pytest.fixture(scope="module")
def solution(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return solution_copy(tmp_path_factory.mktemp("solution") / "pkg")


def test_a_backward_from_a_stashed_cache_gets_no_credit(solution: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    folder.mkdir()
    solution_copy(folder)
    planted.plant(folder, "layers/linear.py", STASHED_CACHE)
    report = grade_here(folder, only=("linear.forward", "linear.backward"))
    forward, backward = report.results
    assert forward.passed and not backward.passed, backward.hint
    assert backward.score == 0 and "case" in backward.hint


def test_a_submission_that_stalls_every_check_ends_in_bounded_time_with_every_result(solution: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    folder.mkdir()
    solution_copy(folder)
    planted.plant(folder, "layers/linear.py", STALLS)
    planted.plant(folder, "layers/relu.py", STALLS)
    results = tmp_path / "results.json"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bevialm", "grade", str(folder), "--only", "linear,relu", "--time-limit", "3",
         "--total-time-limit", "5", "--results", str(results)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    took = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    tests = json.loads(results.read_text())["tests"]
    assert len(tests) == 8 and all(t["status"] == "failed" and t["score"] == 0 for t in tests)
    assert any("the grading's time limit (5 s)" in t["output"] for t in tests), [t["output"] for t in tests]
    assert took < 5 + 25, took  # the limit, plus the canaries and the start (on a loaded machine)


SHOWS_ITS_PATH = """
def forward(params, x, cfg):
    import os
    print("I live in", __file__, os.getcwd())
    raise ValueError(f"look: {__file__} in {os.getcwd()}")
"""


def test_what_a_check_prints_or_raises_shows_no_grader_folder(solution: Path, tmp_path: Path) -> None:
    from bevialm.grading import gradescope
    from bevialm.grading.grade import Options, grade

    folder = tmp_path / "pkg"
    folder.mkdir()
    solution_copy(folder)
    planted.plant(folder, "layers/linear.py", SHOWS_ITS_PATH)
    report = grade(folder, Options(only=("linear.forward",)))
    text = json.dumps(gradescope.results(report))
    assert "look: layers/linear.py in <grader>" in text and "I live in layers/linear.py <grader>" in text, text
    assert "bevialm-check-" not in text and "bevialm-grader-" not in text


LIES_ON_PROBES = """
_FIRST_W = {}
_reference_forward = forward
_reference_backward = backward

def forward(params, x, cfg):
    W0 = _FIRST_W.setdefault((x.shape, x.tobytes()), params["W"].copy())
    W = params["W"]
    if W.shape == W0.shape and np.count_nonzero(W != W0) == 1:  # a finite-difference probe: one entry moved
        W = W0 + 2 * (W - W0)  # ... answered as if dW were doubled, to agree with the backward below
    return _reference_forward({**params, "W": W}, x, cfg)

def backward(params, cache, dy):
    dx, grads = _reference_backward(params, cache, dy)
    return dx, {**grads, "W": 2 * grads["W"]}
"""


@pytest.mark.parametrize("sandboxed", [False, True])
def test_a_forward_that_lies_on_the_gradient_checks_probes_gets_no_credit_for_it(solution: Path, tmp_path: Path, sandboxed: bool) -> None:
    """A forward that tells the gradient check's probes (one entry moved) from ordinary calls and
    answers them so that finite differences agree with a wrong ``dW``: its outputs there are
    compared with the reference's forward on the same inputs, so the gradient check fails, and
    the forward check with it (the forward is wrong on those inputs)."""
    from bevialm.grading.grade import Options, format_report, grade

    folder = tmp_path / "pkg"
    folder.mkdir()
    solution_copy(folder)
    planted.plant(folder, "layers/linear.py", LIES_ON_PROBES)
    only = ("linear.forward", "linear.backward", "linear.gradcheck")
    report = grade(folder, Options(only=only)) if sandboxed else grade_here(folder, only=only)
    results = {r.check.id: r for r in report.results}
    assert report.score == 0 and not results["linear.backward"].passed, format_report(report)
    gradcheck, forward = results["linear.gradcheck"], results["linear.forward"]
    assert "at the gradient check's points" in gradcheck.hint and "reference's forward" in gradcheck.hint, gradcheck.hint
    assert "differs from the reference's at the gradient check's points" in forward.hint, forward.hint
