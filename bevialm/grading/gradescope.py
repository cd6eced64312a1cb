"""Gradescope: the ``results.json`` the autograder reports, and the bundle an instructor uploads.

Gradescope runs ``setup.sh`` once, as root, to build the autograder image, and
``run_autograder`` for every submission, with the student's files in
``/autograder/submission`` and the bundle in ``/autograder/source``; it reads
``/autograder/results/results.json``. See docs/grading-instructors.md.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import bevialm
from bevialm.grading.grade import CheckResult, GradeReport, format_rel, format_report

DEPENDENCIES = ("numpy>=1.24,<3", "tomli>=1.1; python_version < '3.11'")
"""The bundle's runtime dependencies: the repository's pyproject.toml's (a test keeps them equal)."""

MAX_OUTPUT = 8000
"""Characters of output per test (Gradescope shows them all; very long ones help nobody)."""


def _clip(text: str, limit: int = MAX_OUTPUT) -> str:
    return text if len(text) <= limit else text[:limit] + "\n... (cut)"


def _output(r: CheckResult) -> str:
    """A test's output: its verdict and hint, then the details the hint does not already say
    (Gradescope shows the test's name above it, so the name is not repeated)."""
    lines = ["ok" if r.passed else r.hint]
    details = r.details.splitlines() if not r.passed else []
    while details and (not details[0].strip() or details[0].strip() in r.hint):
        details.pop(0)  # the hint says it already
    if details:
        lines += ["", *details]
    if r.worst_rel is not None:
        lines.append(f"{'worst relative error' if r.passed else 'relative error of the failing tensor'}: {format_rel(r.worst_rel)}")
    return "\n".join(lines)


def results(report: GradeReport) -> dict[str, Any]:
    """The report in Gradescope's format (plain text everywhere: the table is aligned in a
    fixed-width font)."""
    tests = [
        {
            "name": r.check.title,
            "number": r.check.number,
            "score": r.score,
            "max_score": r.check.rule.points,
            "status": "passed" if r.passed else "failed",
            "output": _clip(_output(r)),
            "output_format": "text",
            "visibility": r.check.rule.visibility,
            "tags": [r.check.subject, r.check.kind],
        }
        for r in report.results
    ]
    return {
        "score": report.score,
        "max_score": report.max_score,
        "scope": report.scope,
        "execution_time": round(report.seconds),
        "output": _clip(format_report(report, width=200, visible_rows_only=True), 20000),
        "output_format": "text",
        "test_output_format": "text",
        "visibility": report.rubric.settings.results_visibility,
        "stdout_visibility": "hidden",
        "tests": tests,
        "flags": [*report.reference_uses, *report.import_attempts],
    }


def write_results(report: GradeReport, path: Path) -> None:
    """Write ``results.json`` atomically, replacing whatever a submission may have put there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".results-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(results(report), f, indent=2, allow_nan=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


# --- the autograder bundle ---------------------------------------------------------------------

SETUP_SH = """\
#!/usr/bin/env bash
# Gradescope runs this once, as root, while it builds the autograder image.
# Gradescope's base images are Ubuntu (22.04: Python 3.10; 24.04: Python 3.12). The
# system Python is "externally managed" on 24.04, so BeviaLLM goes into its own venv.
set -euo pipefail
AUTOGRADER="${AUTOGRADER:-/autograder}"
export DEBIAN_FRONTEND=noninteractive
# Try to make the venv itself: on Debian and Ubuntu "python3 -m venv --help" works without
# python3-venv, but creating one fails (no ensurepip) until it is installed.
if ! python3 -m venv "$AUTOGRADER/venv" > /dev/null 2>&1; then
    rm -rf "$AUTOGRADER/venv"
    apt-get update
    apt-get install -y --no-install-recommends python3 python3-venv python3-pip
    python3 -m venv "$AUTOGRADER/venv"
fi
"$AUTOGRADER/venv/bin/python" -m pip install --upgrade pip
"$AUTOGRADER/venv/bin/python" -m pip install "$AUTOGRADER/source/bevialm-src"
"$AUTOGRADER/venv/bin/bevialm" --help > /dev/null

# Each check runs as this user, which owns nothing: it may import NumPy from the venv, but not
# read BeviaLLM (the reference), the rubric or the bundle, nor write the results.
if ! id -u bevialm-check > /dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin bevialm-check
fi
package="$("$AUTOGRADER/venv/bin/python" -c 'import bevialm, os; print(os.path.dirname(bevialm.__file__))')"
chown -R root:root "$package" "$AUTOGRADER/source"
chmod 0700 "$package" "$AUTOGRADER/source"
mkdir -p "$AUTOGRADER/results"
chmod 0755 "$AUTOGRADER/results"

# The canary: the reference's own solution of one check, graded as the checks will be. If it
# fails, no submission could pass: the build stops here, with one line saying why.
"$AUTOGRADER/venv/bin/python" -m bevialm.grading.canary
"""

RUN_AUTOGRADER = """\
#!/usr/bin/env bash
# Gradescope runs this for every submission, as root. bevialm grade writes results.json
# whenever grading ran; when it could not (nothing to grade in the submission), it exits
# 1 with one line, and that line becomes the result the student sees.
set -uo pipefail
AUTOGRADER="${AUTOGRADER:-/autograder}"
mkdir -p "$AUTOGRADER/results"
errors="$(mktemp)"
"$AUTOGRADER/venv/bin/bevialm" grade "$AUTOGRADER/submission" --display-name submission \\
    --rubric "$AUTOGRADER/source/rubric.toml" \\
    --results "$AUTOGRADER/results/results.json" 2> "$errors"
code=$?
if [ "$code" -ne 0 ]; then
    # Exit code 3: the environment is broken (the canary failed), so there is no grade to give:
    # results.json carries the message and no score, and it goes to the log the instructor reads.
    CODE="$code" ERRORS="$errors" RESULTS="$AUTOGRADER/results/results.json" "$AUTOGRADER/venv/bin/python" - <<'PY'
import json, os
message = open(os.environ["ERRORS"], encoding="utf-8", errors="replace").read().strip()
if os.environ["CODE"] == "3":
    message = "GRADING FAILED (this is not a grade; the instructor must fix the autograder): " + message
    result = {"output": message, "tests": [], "stdout_visibility": "visible"}
    print(message)
else:
    result = {"score": 0, "output": message or "grading could not run", "tests": []}
json.dump(result, open(os.environ["RESULTS"], "w", encoding="utf-8"))
PY
fi
rm -f "$errors"
exit 0
"""


def pyproject() -> str:
    """A minimal ``pyproject.toml`` for the bundled source (the repository's may not be at hand
    when bevialm was installed from a wheel)."""
    return (
        "[build-system]\n"
        'requires = ["setuptools>=61"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        "[project]\n"
        'name = "bevialm"\n'
        f'version = "{bevialm.__version__}"\n'
        'requires-python = ">=3.10"\n'
        f"dependencies = {json.dumps(list(DEPENDENCIES))}\n\n"
        "[project.scripts]\n"
        'bevialm = "bevialm.cli:main"\n\n'
        "[tool.setuptools.packages.find]\n"
        'include = ["bevialm*"]\n\n'
        "[tool.setuptools.package-data]\n"
        'bevialm = ["py.typed"]\n'
    )


def _add(bundle: zipfile.ZipFile, name: str, text: str, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    mode = 0o755 if executable else 0o644
    info.external_attr = (stat.S_IFREG | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    bundle.writestr(info, text)


def write_bundle(out: Path, rubric_text: str) -> list[str]:
    """Write the autograder zip: ``setup.sh`` and ``run_autograder`` at the top (where Gradescope
    looks for them), the rubric, and BeviaLLM's own source to install. Returns the names written."""
    package_dir = Path(bevialm.__file__).parent
    out.parent.mkdir(parents=True, exist_ok=True)
    names = []
    with zipfile.ZipFile(out, "w") as bundle:
        _add(bundle, "setup.sh", SETUP_SH, executable=True)
        _add(bundle, "run_autograder", RUN_AUTOGRADER, executable=True)
        _add(bundle, "rubric.toml", rubric_text)
        _add(bundle, "bevialm-src/pyproject.toml", pyproject())
        names += ["setup.sh", "run_autograder", "rubric.toml", "bevialm-src/pyproject.toml"]
        for path in sorted(package_dir.rglob("*")):
            rel = path.relative_to(package_dir)
            if "__pycache__" in rel.parts or not path.is_file() or path.suffix not in (".py", ".typed"):
                continue
            name = f"bevialm-src/bevialm/{rel.as_posix()}"
            _add(bundle, name, path.read_text(encoding="utf-8"))
            names.append(name)
    return names
