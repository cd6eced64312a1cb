"""A fake ``bevialm grade`` for grade-all's attack tests, and the command line that plugs it in.

The fake grades in milliseconds and reports exactly what it was given: one passed test per
file it finds in the submission, named by path, with the file's first bytes in its output.
So a test sees what grade-all let through (a link's target, a FIFO) without the real grader's
minutes. Markers in the submission or the environment make it misbehave:

- a file ``EXIT3``: exit 3 with one line, as ``bevialm grade`` does when its canary fails;
- a file ``CRASH``: a traceback, then the last line ``=2+5`` (a formula, for the CSV);
- a file named by ``$FAKE_SLEEP_IF``: hang (with a child process and a temporary folder in
  ``$TMPDIR``, like a real grader's checks); with ``$FAKE_STUBBORN`` set, ignore SIGTERM too.

Each run appends the submission's files to ``$FAKE_LOG``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

FAKE_SOURCE = r'''
import json, os, signal, subprocess, sys, tempfile, time
from pathlib import Path

args = sys.argv[1:]
folder = Path(args[0])
results = Path(args[args.index("--results") + 1])
files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
if os.environ.get("FAKE_LOG"):
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps(files) + "\n")
if "EXIT3" in files:
    print("bevialm grade: error: the check user (uid 64000) cannot read NumPy at /root/venv; install where other users can read", file=sys.stderr)
    sys.exit(3)
if "CRASH" in files:
    print("Traceback (most recent call last):\nValueError\n=2+5", file=sys.stderr)
    sys.exit(1)
if os.environ.get("FAKE_SLEEP_IF") in files:
    if os.environ.get("FAKE_STUBBORN"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tempfile.mkdtemp(prefix="bevialm-check-")
    subprocess.Popen([sys.executable, "-c", "import time, signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    while True:
        time.sleep(0.05)
tests = [
    {"name": f, "score": 1, "max_score": 1, "status": "passed", "tags": ["linear", "forward"],
     "output": f"read {f} in {folder}: {(folder / f).read_bytes()[:40]!r}", "visibility": "visible"}
    for f in files
]
named = [a.split("=", 1)[1] for a in args if a.startswith("--display-name=")]
shown = f"{named[0]} (by --display-name)" if named else str(folder)
report = {"score": len(files), "output": f"BeviaLLM grading of {shown}\nscore {len(files)}/{len(files)}", "tests": tests}
results.write_text(json.dumps(report))
'''

WRAPPER = (
    "import sys; from bevialm.grading import batch; "
    "batch.GRADE_COMMAND = (sys.executable, sys.argv.pop(1)); "
    "from bevialm.grading.cli import main; sys.exit(main())"
)
"""``python -c WRAPPER FAKE grade-all ...``: the real grade-all command, grading with FAKE."""


def fake_grader(folder: Path) -> Path:
    path = folder / "fake_grade.py"
    path.write_text(FAKE_SOURCE)
    return path


def command(fake: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", WRAPPER, str(fake), "grade-all", *args]


def start(fake: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(command(fake, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def run(fake: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(fake, *args), capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout, check=False)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the live processes whose command line or environment holds ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (text in cmdline or text in environ):
            found.append(cmdline)
    return found


def wait_for(condition: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)
