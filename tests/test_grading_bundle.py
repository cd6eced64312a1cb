"""The Gradescope bundle end to end, as root, in a simulated ``/autograder``: ``setup.sh`` builds
the venv (from PyPI) and locks BeviaLLM away from the checks' user, then ``run_autograder`` grades a
correct and a hostile submission.

It installs packages and creates the ``bevialm-check`` user, so it runs only when asked
(``BEVIALM_BUNDLE_TEST=1``, about a minute) and only as root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bevialm.grading import cli as grading_cli
from bevialm.grading.skeleton import write_skeleton

from .planted import plant

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="setup.sh and the checks' own uid need root, as on Gradescope"),
    pytest.mark.skipif(os.environ.get("BEVIALM_BUNDLE_TEST") != "1", reason="installs from PyPI and adds a user: set BEVIALM_BUNDLE_TEST=1"),
]

SECRET_SEED = 55501234


@pytest.fixture(scope="module")
def autograder() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="autograder-"))
    root.chmod(0o755)
    rubric = root / "instructor-rubric.toml"
    rubric.write_text(f"[settings]\nseed = {SECRET_SEED}\n")
    bundle = root / "autograder.zip"
    assert grading_cli.main(["autograder", str(bundle), "--rubric", str(rubric)]) == 0
    with zipfile.ZipFile(bundle) as z:
        z.extractall(root / "source")
    for script in ("setup.sh", "run_autograder"):
        (root / "source" / script).chmod(0o755)
    env = {**os.environ, "AUTOGRADER": str(root)}
    done = subprocess.run(["bash", str(root / "source" / "setup.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_autograder(root: Path, submission: Path) -> dict[str, object]:
    shutil.rmtree(root / "submission", ignore_errors=True)
    shutil.copytree(submission, root / "submission")
    results = root / "results" / "results.json"
    results.unlink(missing_ok=True)
    env = {"PATH": "/usr/bin:/bin", "AUTOGRADER": str(root)}
    done = subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    data: dict[str, object] = json.loads(results.read_text())
    return data


def test_the_bundle_grades_a_correct_submission(autograder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "correct"
    write_skeleton(folder, with_solutions=True)
    data = run_autograder(autograder, folder)
    tests = data["tests"]
    assert isinstance(tests, list) and tests
    assert data["score"] == sum(t["max_score"] for t in tests), data["output"]
    assert "not running as root" not in str(data["output"])


def test_the_bundle_keeps_the_reference_and_the_rubric_from_a_hostile_submission(autograder: Path, tmp_path: Path) -> None:
    package = subprocess.run(
        [str(autograder / "venv" / "bin" / "python"), "-c", "import bevialm, os; print(os.path.dirname(bevialm.__file__))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    folder = tmp_path / "hostile"
    write_skeleton(folder)
    plant(
        folder,
        "layers/linear.py",
        f"""
        def forward(params, x, cfg):
            import importlib.util, json
            for path in ({str(autograder / "source" / "rubric.toml")!r}, {package + "/layers/linear.py"!r}):
                try:
                    print(open(path).read())
                except OSError as exc:
                    print("could not read", path, exc)
            try:
                json.dump({{"score": 1000, "tests": []}}, open({str(autograder / "results" / "results.json")!r}, "w"))
            except OSError as exc:
                print("could not write the results", exc)
            spec = importlib.util.spec_from_file_location("stolen", {package + "/layers/linear.py"!r})
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.forward(params, x, cfg)
        """,
    )
    data = run_autograder(autograder, folder)
    assert data["score"] == 0
    text = json.dumps(data)
    assert str(SECRET_SEED) not in text and "could not read" in text and "could not write the results" in text
