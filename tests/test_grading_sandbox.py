"""The sandbox: hostile submissions cost their checks and nothing else, through the real
command line. Kept quick: 2-second time limits, and every hostile behaviour in one grading run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bevialm.grading.grade import GradeReport, Options, format_report, grade
from bevialm.grading.rubric import load
from bevialm.grading.skeleton import write_skeleton

from .test_grading import patch

HOSTILE_PAIRS = ("linear", "layernorm", "embedding", "relu", "gelu", "softmax", "dropout", "cross_entropy")

FORGE = '''

def _forge() -> None:
    """Try to forge the grade: write the results file now, and again later from a forked process."""
    import os
    import time
    path = os.environ.get("HOSTILE_RESULTS")
    if not path or os.environ.get("FORGED"):
        return
    os.environ["FORGED"] = "once per check"  # forward runs many times in a check
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write('{"score": 1000, "tests": []}')
    if os.fork() == 0:
        time.sleep(1.0)
        with open(path, "w") as f:
            f.write('{"score": 2000, "tests": []}')
        with open(path + ".late", "w") as f:
            f.write("a forked process outlived its check")
        os._exit(0)


def _tamper() -> None:
    """Write a result file next to this check's output (where the grader once read results), then leave."""
    import os
    workdir = os.path.dirname(os.readlink("/proc/self/fd/1"))
    with open(os.path.join(workdir, "result.npz"), "wb") as f:
        f.write(b"PK garbage")
    os._exit(0)
'''

# file -> (old, new) patches; each line of the comment says what the check should then report.
HOSTILE: dict[str, list[tuple[str, str]]] = {
    # an exception in forward; a 512 MiB allocation in init (over the rubric's 256 MiB)
    "layers/linear.py": [
        ('    check_inputs(LAYER, x, cfg.d_in, cfg=cfg, params=params)\n    W, b = params["W"], params["b"]', '    raise RuntimeError("boom")'),
        ('    return {\n        "W": (rng', '    hog = np.ones(2**26)\n    return {\n        "W": (rng'),
    ],
    # an endless loop in init (only the purity check calls it); forging the results in forward
    "layers/relu.py": [
        ('    """No parameters."""\n    return {}', '    """No parameters."""\n    while True:\n        pass'),
        ('    check_inputs("relu", x)\n', '    check_inputs("relu", x)\n    _forge()\n'),
    ],
    "layers/gelu.py": [('    check_inputs("gelu", x)\n', '    check_inputs("gelu", x)\n    import sys\n    sys.exit(3)\n')],
    "layers/softmax.py": [('    check_inputs("softmax", x)\n    y = softmax(x)', '    check_inputs("softmax", x)\n    import os\n    os._exit(7)')],
    # NaN out of forward; a tampered result file from init
    "layers/layernorm.py": [
        ("    y += beta\n", "    y += beta\n    y *= np.nan\n"),
        ('    return {"gamma": np.ones', '    from .relu import _tamper\n    _tamper()\n    return {"gamma": np.ones'),
    ],
    "layers/embedding.py": [('    return None, {"W": dW}', '    return None, {"W": dW[:, :1]}')],
    "layers/dropout.py": [("    check_inputs(LAYER, x, rng=rng)\n    if rng is None", "    check_inputs(LAYER, x, rng=rng)\n    import os, signal\n    os.kill(os.getpid(), signal.SIGSEGV)\n    if rng is None")],
    "losses.py": [("    _check(logits, targets)\n    z = ", '    _check(logits, targets)\n    for _ in range(3000):\n        print("spam " * 200)\n    z = ')],
}

EXPECTED: dict[str, str] = {
    "linear.forward": "raised RuntimeError: boom at layers/linear.py",
    "linear.backward": "raised RuntimeError: boom",
    "linear.purity": "raised MemoryError",
    "layernorm.forward": "forward output y contains NaN",
    "layernorm.gradcheck": "your dx disagrees with finite differences",
    "layernorm.purity": "",  # no result file to forge any more: denied (as root) or just ended
    "embedding.backward": "dW has shape (5, 1), the reference's has (5, 3)",
    "embedding.purity": "dW is (5, 1) float64, expected (5, 3) float64",
    "relu.purity": "timed out: no result within 2 s",
    "gelu.forward": "raised SystemExit: sys.exit(3) was called at layers/gelu.py",
    "softmax.forward": "ended without a result: exited with code 7",
    "softmax.purity": "ended without a result: exited with code 7",
    "dropout.forward": "crashed: killed by signal SIGSEGV",
    "dropout.backward": "crashed: killed by signal SIGSEGV",
    "cross_entropy.forward": "output flood: printed more than 256 KiB",
    "cross_entropy.backward": "output flood",
}
PASSING = {"layernorm.backward", "embedding.forward", "relu.forward", "relu.backward", "relu.gradcheck"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "submission"
    write_skeleton(folder, with_solutions=True)
    for file, patches in HOSTILE.items():
        for old, new in patches:
            patch(folder, file, old, new)
    relu = folder / "layers/relu.py"
    relu.write_text(relu.read_text() + FORGE)
    (root / "rubric.toml").write_text("[settings]\nmemory_limit_mb = 256\noutput_limit_kb = 256\n")
    return folder


def _check_hostile(report: dict[str, tuple[bool, str]]) -> None:
    for check_id, words in EXPECTED.items():
        passed, hint = report[check_id]
        assert not passed and words in hint, f"{check_id}: {hint}"
    for check_id in PASSING:
        assert report[check_id][0], f"{check_id}: {report[check_id][1]}"


def test_hostile_submission_through_the_command_line(hostile: Path) -> None:
    results = hostile.parent / "results" / "results.json"
    env = {**os.environ, "HOSTILE_RESULTS": str(results)}
    command = [
        sys.executable, "-m", "bevialm.cli", "grade", str(hostile),
        "--results", str(results),
        "--rubric", str(hostile.parent / "rubric.toml"),
        "--time-limit", "2",
        "--jobs", "2",
        "--only", ",".join(HOSTILE_PAIRS),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "spam" not in done.stdout  # the flood stayed in the sandbox
    data = json.loads(results.read_text())  # the grader's file, not the forged one
    tests = {t["name"].split(":")[0]: t for t in data["tests"]}
    assert len(tests) == 4 * len(HOSTILE_PAIRS)
    _check_hostile({k: (t["status"] == "passed", t["output"].splitlines()[0]) for k, t in tests.items()})
    assert 0 < data["score"] < sum(t["max_score"] for t in data["tests"])
    assert "spam" in tests["cross_entropy.forward"]["output"]  # the start of the flood is shown
    time.sleep(1.2)  # long enough for the forked forger to have written, had it survived
    assert not Path(str(results) + ".late").exists()
    assert json.loads(results.read_text()) == data


def test_sandbox_outcomes_in_process(hostile: Path) -> None:
    """The same run from inside the test process (where coverage can see the grader's side)."""
    rubric = load(hostile.parent / "rubric.toml")
    only = tuple(c for c in [*EXPECTED, *PASSING] if not c.startswith(("linear.", "layernorm.gradcheck")))
    report: GradeReport = grade(hostile, Options(rubric=rubric, only=("linear.purity", *only), time_limit=2.0, jobs=2))
    assert report.sandboxed and "no sandbox" not in format_report(report)
    _check_hostile({r.check.id: (r.passed, r.hint) for r in report.results} | _absent(report))


def _absent(report: GradeReport) -> dict[str, tuple[bool, str]]:
    """Checks left out of the in-process run, with the outcome the full run gives them."""
    ran = {r.check.id for r in report.results}
    return {k: (False, v) for k, v in EXPECTED.items() if k not in ran}


def test_reference_gets_full_marks_in_the_sandbox(tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    write_skeleton(folder, with_solutions=True)
    report = grade(folder, Options(jobs=2))
    assert report.score == report.max_score and all(r.passed for r in report.results), format_report(report)
