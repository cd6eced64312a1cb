"""Hostile submissions against the real ``bevialm grade``: none scores what it did not earn.

Each attack is a student's function that tries to reach the reference, the rubric or the grader,
or to take the grading down. Every test checks, through the command line:

- the score is at most what the submission deserves (most attacks are planted in a bare
  skeleton, which deserves 0);
- the flag is raised where one is due;
- ``results.json`` is complete and is the grader's;
- no process the check started is alive afterwards (attacks note their pids in a drop box).

The grader runs as the autograder bundle installs it: BeviaLLM and the rubric in folders only
root can read. As root (CI, Gradescope) each check has a uid of its own; the tests that need
that skip, with the reason, when the suite is not root.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import bevialm
from bevialm.grading.grade import Options, grade
from bevialm.grading.rubric import load
from bevialm.grading.skeleton import write_skeleton

from .conftest import grader_leftovers
from .planted import plant

ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not ROOT, reason="a uid of its own for each check (and file permissions) protect only when grading as root")

SECRET_SEED = 918273645


@dataclass(frozen=True)
class Install:
    """BeviaLLM and the rubric as setup.sh leaves them: readable by root only."""

    folder: Path
    rubric: Path

    @property
    def reference_linear(self) -> Path:
        return self.folder / "bevialm" / "layers" / "linear.py"


@pytest.fixture(scope="module")
def install() -> Iterator[Install]:
    folder = Path(tempfile.mkdtemp(prefix="bevialm-hostile-install-"))  # 0700
    shutil.copytree(Path(bevialm.__file__).parent, folder / "bevialm", ignore=shutil.ignore_patterns("__pycache__"))
    rubric = folder / "rubric.toml"
    rubric.write_text(f"[settings]\nseed = {SECRET_SEED}\nmemory_limit_mb = 256\n")
    yield Install(folder, rubric)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def box() -> Iterator[Path]:
    """A folder every uid may write: where attacks note their pids and what they managed."""
    folder = Path(tempfile.mkdtemp(prefix="bevialm-hostile-box-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


NOTE = """
def _note(name, text):
    import os
    try:
        with open(os.path.join(BOX, name), "a") as f:
            f.write(str(text) + "\\n")
    except OSError:
        pass
"""


def submission(tmp_path: Path, box: Path, forward: str, *, solution: bool = False, extra: str = "") -> Path:
    """A skeleton (bare: it deserves 0) whose ``linear.forward`` is ``forward``'s body."""
    folder = tmp_path / "submission"
    write_skeleton(folder, with_solutions=solution)
    code = f"BOX, SUBMISSION = {str(box)!r}, {str(folder)!r}\n{NOTE}\n{GRADER_ARGUMENT}\n{extra}\n\ndef forward(params, x, cfg):\n{textwrap.indent(textwrap.dedent(forward), '    ')}"
    plant(folder, "layers/linear.py", code)
    return folder


@dataclass(frozen=True)
class Graded:
    data: dict[str, object]
    stdout: str
    results: Path

    @property
    def score(self) -> float:
        return float(self.data["score"])  # type: ignore[arg-type]

    def test(self, check_id: str) -> dict[str, object]:
        tests = self.data["tests"]
        assert isinstance(tests, list)
        return next(t for t in tests if str(t["name"]).startswith(check_id + ":"))

    def output(self, check_id: str) -> str:
        return str(self.test(check_id)["output"])


def run_grade(install: Install, folder: Path, only: str, *, time_limit: float = 10.0, checks: int = 1) -> Graded:
    """``bevialm grade`` from the private install, with the results where only root may write."""
    out = Path(tempfile.mkdtemp(prefix="bevialm-hostile-results-"))
    results = out / "results.json"
    site = str(Path(np.__file__).parent.parent)
    boot = f"import sys; sys.path[:0] = [{str(install.folder)!r}, {site!r}]; from bevialm.cli import main; sys.exit(main())"
    command = [
        sys.executable, "-I", "-S", "-c", boot, "grade", str(folder),
        "--results", str(results), "--rubric", str(install.rubric),
        "--time-limit", str(time_limit), "--only", only,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        text = results.read_text()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    data = json.loads(text)
    # Complete, and the grader's: every check planned is there, and the score is their sum.
    tests = data["tests"]
    assert len(tests) == checks and all({"name", "score", "max_score", "status", "output"} <= set(t) for t in tests)
    assert data["score"] == sum(t["score"] for t in tests)
    assert str(data["output"]).startswith("BeviaLLM grading of")
    return Graded(data, done.stdout, results)


def pids(box: Path) -> list[int]:
    path = box / "pids"
    return [int(v) for v in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except OSError:
        return False


def assert_all_dead(box: Path) -> None:
    left = [p for p in pids(box) if alive(p)]
    assert not left, f"processes of the check still alive: {left}"


# --- reaching the reference --------------------------------------------------------------------

ENCODED = base64.b64encode(b"from bevialm.layers.linear import forward as f").decode()

ROUTES = {
    "importlib": ('import importlib\nm = importlib.import_module("bevi" + "alm.layers.li" + "near")\nreturn m.forward(params, x, cfg)', True),
    "__import__": ('m = __import__("bevialm.layers.linear", fromlist=["forward"])\nreturn m.forward(params, x, cfg)', True),
    "attribute": ("import bevialm\nreturn bevialm.layers.linear.forward(params, x, cfg)", True),
    "exec": (f'import base64\nns = {{}}\nexec(base64.b64decode("{ENCODED}").decode(), ns)\nreturn ns["f"](params, x, cfg)', True),
    "sys.modules": (
        "import sys\nm = [v for k, v in list(sys.modules.items()) if k.endswith('layers.linear') and 'submission' not in k][0]\n"
        "return m.forward(params, x, cfg)",
        False,
    ),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_the_reference_cannot_be_imported(route: str, install: Install, box: Path, tmp_path: Path) -> None:
    code, flagged = ROUTES[route]
    graded = run_grade(install, submission(tmp_path, box, code), "linear.forward")
    assert graded.score == 0, graded.output("linear.forward")
    if flagged:
        assert "tried to import bevialm.layers" in str(graded.data["output"]), graded.data["output"]
        assert "FLAGGED" in graded.stdout


@root_only
def test_the_reference_cannot_be_loaded_from_disk(install: Install, box: Path, tmp_path: Path) -> None:
    code = f"""
    import importlib.util, os
    found = []
    with open(f"/proc/{{os.getppid()}}/cmdline", "rb") as f:  # the grader's command line
        found += [p for p in f.read().decode().split("\\0") if "/" in p]
    _note("cmdline", found)
    spec = importlib.util.spec_from_file_location("copied", {str(install.reference_linear)!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.forward(params, x, cfg)
    """
    graded = run_grade(install, submission(tmp_path, box, code), "linear.forward")
    assert graded.score == 0
    assert "PermissionError" in graded.output("linear.forward")


def test_a_package_that_re_exports_the_reference_scores_nothing(install: Install, tmp_path: Path) -> None:
    folder = tmp_path / "reexport"
    write_skeleton(folder)
    for path in folder.rglob("*.py"):
        if path.name != "__init__.py":
            module = "bevialm." + ".".join(path.relative_to(folder).with_suffix("").parts)
            path.write_text(f"from {module} import *  # noqa\n")
    graded = run_grade(install, folder, "linear,relu", checks=8)
    assert graded.score == 0
    assert "uses the reference bevialm.layers.linear" in graded.stdout
    assert "tried to import bevialm.layers" in graded.stdout


def test_patching_the_checks_changes_nothing(install: Install, box: Path, tmp_path: Path) -> None:
    """A right forward, an all-zero backward, and every checker it can reach replaced."""
    folder = tmp_path / "patcher"
    write_skeleton(folder, with_solutions=True)
    plant(
        folder,
        "layers/linear.py",
        """
        def backward(params, cache, dy):
            import sys
            import bevialm.gradcheck as checks
            checks.vjp_check = lambda *a, **k: None
            checks.compare = lambda *a, **k: None
            checks.purity_problems = lambda *a, **k: []
            for name, module in list(sys.modules.items()):
                for attr in ("vjp_check", "compare", "judge", "_judge"):
                    if hasattr(module, attr):
                        setattr(module, attr, lambda *a, **k: None)
            return np.zeros_like(cache.x), {"W": np.zeros_like(params["W"]), "b": np.zeros_like(params["b"])}
        """,
    )
    graded = run_grade(install, folder, "linear", checks=4)
    assert graded.test("linear.backward")["status"] == "failed"
    assert graded.test("linear.gradcheck")["status"] == "failed"
    assert graded.score <= 3  # forward (2) and purity (1) are earned


# --- the results, the rubric and the install ---------------------------------------------------

GRADER_ARGUMENT = """
def _grader_argument(flag):
    \"\"\"What follows ``flag`` on the grader's command line, found in /proc (readable by all).\"\"\"
    import os
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\\0")
        except OSError:
            continue
        if flag in argv and "grade" in argv and SUBMISSION in argv:  # this test's grader, not another's
            return argv[argv.index(flag) + 1]
    raise LookupError(flag)
"""

FORGER = """
import json, os, time
results = _grader_argument("--results")
forged = json.dumps({"score": 1000, "tests": [], "output": "forged"})
try:
    with open(results, "w") as f:
        f.write(forged)
    _note("wrote", "now")
except OSError as exc:
    _note("refused", exc)
if os.fork() == 0:  # a double-forked, setsid survivor waits for the grader to finish
    os.setsid()
    if os.fork() == 0:
        _note("pids", os.getpid())
        time.sleep(2.0)
        _note("survived", "yes")
        try:
            with open(results, "w") as f:
                f.write(forged)
        except OSError:
            pass
        os._exit(0)
    os._exit(0)
time.sleep(0.2)
return x
"""


def test_forged_results_and_survivors_change_nothing(install: Install, box: Path, tmp_path: Path) -> None:
    graded = run_grade(install, submission(tmp_path, box, FORGER), "linear.forward")
    assert graded.score == 0
    assert pids(box), "the survivor never started"
    time.sleep(2.5)  # long enough for the survivor to have written, had it survived
    assert not (box / "survived").exists()
    assert_all_dead(box)
    if ROOT:
        assert not (box / "wrote").exists() and (box / "refused").exists()


def test_survivors_are_killed_without_root_too(box: Path, tmp_path: Path) -> None:
    """Not root (forced here): orphans are adopted by the grader and killed after the check."""
    folder = submission(tmp_path, box, FORGER.replace('results = _grader_argument("--results")', 'results = "/nonexistent/results.json"'))
    report = grade(folder, Options(rubric=load(None), only=("linear.forward",), time_limit=10.0, as_root=False))
    assert report.score == 0 and any("not running as root" in n for n in report.notes)
    time.sleep(2.5)
    assert not (box / "survived").exists()
    assert_all_dead(box)


@root_only
def test_the_rubric_and_the_reference_stay_hidden(install: Install, box: Path, tmp_path: Path) -> None:
    code = f"""
    import os
    for path in (_grader_argument("--rubric"), {str(install.reference_linear)!r}):
        try:
            print(open(path).read())
        except OSError as exc:
            print("could not read", path, exc)
    raise ValueError("see the printing above")
    """
    graded = run_grade(install, submission(tmp_path, box, code), "linear.forward")
    text = json.dumps(graded.data)
    assert "could not read" in graded.output("linear.forward") and "Permission denied" in text
    assert str(SECRET_SEED) not in text
    assert "W, b = params" not in text  # a line of the reference's forward


@root_only
def test_the_install_cannot_be_changed(install: Install, box: Path, tmp_path: Path) -> None:
    before = install.reference_linear.read_bytes()
    code = f"""
    import os
    target = {str(install.reference_linear)!r}
    for path in (target, os.path.join(os.path.dirname(target), "evil.py")):
        with open(path, "w") as f:
            f.write("def forward(*a): return 'pwned'")
    return x
    """
    graded = run_grade(install, submission(tmp_path, box, code), "linear.forward")
    assert graded.score == 0 and "PermissionError" in graded.output("linear.forward")
    assert install.reference_linear.read_bytes() == before
    assert not (install.reference_linear.parent / "evil.py").exists()


# --- taking the grader down --------------------------------------------------------------------


@root_only  # without a uid of its own, RLIMIT_NPROC would count (and a root grader ignores it)
def test_a_fork_bomb_is_contained(install: Install, box: Path, tmp_path: Path) -> None:
    code = """
    import os, time
    for _ in range(1000):
        try:
            if os.fork() == 0:
                _note("pids", os.getpid())
                while True:
                    time.sleep(0.01)
        except OSError:
            _note("refused", "fork")
            break
    while True:
        pass
    """
    start = time.monotonic()
    graded = run_grade(install, submission(tmp_path, box, code), "linear.forward", time_limit=3.0)
    assert time.monotonic() - start < 60
    assert graded.score == 0 and "timed out" in graded.output("linear.forward")
    assert (box / "refused").exists(), "the process limit never stopped the forks"
    assert len(pids(box)) < 100
    assert_all_dead(box)


@root_only
def test_memory_bombs_are_contained(install: Install, box: Path, tmp_path: Path) -> None:
    code = """
    import os, time
    if os.fork() == 0:
        _note("pids", os.getpid())
        try:
            hog = np.ones(2**33)
        except MemoryError:
            _note("refused", "memory")
        time.sleep(30)
        os._exit(0)
    for _ in range(500):  # until the forked one has tried
        if os.path.exists(os.path.join(BOX, "refused")):
            break
        time.sleep(0.01)
    hog = np.ones(2**33)
    return x
    """
    graded = run_grade(install, submission(tmp_path, box, code), "linear.forward")
    assert graded.score == 0 and "MemoryError" in graded.output("linear.forward")
    assert (box / "refused").exists()
    assert_all_dead(box)


@root_only
def test_signals_cannot_reach_the_grader(install: Install, box: Path, tmp_path: Path) -> None:
    code = """
    import os, signal
    parent = os.getppid()
    for attempt in (lambda: os.kill(parent, signal.SIGKILL), lambda: os.killpg(os.getpgid(parent), signal.SIGKILL),
                    lambda: os.kill(1, signal.SIGKILL)):
        try:
            attempt()
            _note("sent", "yes")
        except OSError as exc:
            _note("refused", exc)
    os.kill(-1, signal.SIGKILL)  # every process this uid may signal (but itself): only the check's own
    os.killpg(0, signal.SIGKILL)  # its own group: itself
    """
    graded = run_grade(install, submission(tmp_path, box, code), "linear.forward")
    assert graded.score == 0 and "crashed: killed by signal SIGKILL" in graded.output("linear.forward")
    assert not (box / "sent").exists() and len((box / "refused").read_text().splitlines()) == 3


def test_garbage_on_the_grader_s_pipes_fails_only_the_check(install: Install, box: Path, tmp_path: Path) -> None:
    code = """
    import os, struct
    for fd in range(3, 64):
        try:
            os.write(fd, struct.pack("<QQ", 2**40, 2**40) + b"{not json")
        except OSError:
            pass
    return x
    """
    graded = run_grade(install, submission(tmp_path, box, code), "linear.forward,linear.backward", checks=2)
    assert graded.score == 0
    assert graded.test("linear.backward")["status"] == "failed"


@root_only  # the checks' uid cannot read the interpreter's folder here (/root is 0700)
def test_standard_library_modules_not_preloaded_still_import(install: Install, box: Path, tmp_path: Path) -> None:
    folder = tmp_path / "stdlib"
    write_skeleton(folder, with_solutions=True)
    plant(
        folder,
        "layers/linear.py",
        """
        _reference_forward = forward

        def forward(params, x, cfg):
            import csv, hashlib, io, sqlite3, xml.dom.minidom  # none of them preloaded; C extensions too
            hashlib.sha256(b"x").hexdigest()
            next(csv.reader(io.StringIO("a,b")))
            return _reference_forward(params, x, cfg)
        """,
    )
    graded = run_grade(install, folder, "linear.forward")
    assert graded.score == 2, graded.output("linear.forward")


@root_only
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_grader_killed_mid_check_takes_its_checks_along(how: str, install: Install, box: Path, tmp_path: Path) -> None:
    """As grade-all's time limit does: the grader's process group is killed while a check runs;
    nothing of the check (a double-forked, setsid survivor included) may live on."""
    import signal

    code = """
    import os, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            _note("pids", os.getpid())
            time.sleep(60)
        os._exit(0)
    _note("pids", os.getpid())
    while True:
        time.sleep(0.01)
    """
    folder = submission(tmp_path, box, code)
    site = str(Path(np.__file__).parent.parent)
    boot = f"import sys; sys.path[:0] = [{str(install.folder)!r}, {site!r}]; from bevialm.cli import main; sys.exit(main())"
    grader = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", boot, "grade", str(folder), "--rubric", str(install.rubric), "--only", "linear.forward"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(600):
            if len(pids(box)) == 2:
                break
            time.sleep(0.05)
        assert len(pids(box)) == 2, "the check never started"
        os.killpg(grader.pid, getattr(signal, how))
        grader.wait(30)
    finally:
        if grader.poll() is None:
            grader.kill()
            grader.wait()
    for _ in range(100):
        if not any(alive(p) for p in pids(box)):
            break
        time.sleep(0.05)
    assert_all_dead(box)
    assert grader_leftovers(wait=5.0) == []  # the zygote removes the dead grader's folders too


@root_only
def test_what_a_check_leaves_deeper_in_world_writable_folders_is_removed(install: Install, box: Path, tmp_path: Path) -> None:
    # Root's sticky, world-writable folders inside /tmp (as /tmp/.X11-unix is), one inside another,
    # and /run/lock: the check's uid may write in any of them.
    outer = Path(tempfile.mkdtemp(prefix="bevialm-shared-", dir="/tmp"))
    inner = outer / "inner"
    inner.mkdir()
    for folder in (outer, inner):
        folder.chmod(0o1777)
    neighbour = inner / "root's.txt"  # root's file beside the litter: it must survive
    neighbour.write_text("root's")
    places = [str(outer), str(inner)] + (["/run/lock"] if os.path.isdir("/run/lock") else [])
    try:
        extra = f"PLACES, TARGET = {places!r}, {str(neighbour)!r}"
        graded = run_grade(install, submission(tmp_path, box, LITTERER, extra=extra), "linear.forward")
        assert graded.score == 0
        (tag,) = (box / "litter").read_text().split()
        assert sorted((box / "wrote").read_text().split()) == sorted(places)
        left = [p for place in places for p in Path(place).glob(tag + "*")]
        assert not left, f"the check's files are still there: {left}"
        assert neighbour.read_text() == "root's"
    finally:
        shutil.rmtree(outer)


SYSV_LITTERER = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
shmid = libc.shmget(KEY, 1 << 20, 0o1000 | 0o600)  # IPC_CREAT
if shmid >= 0:
    _note("made", "segment")
else:
    _note("errors", os.strerror(ctypes.get_errno()))
raise NotImplementedError
"""


@root_only
def test_system_v_memory_a_check_makes_does_not_outlive_it(install: Install, box: Path, tmp_path: Path) -> None:
    # A segment needs no process to live on: left behind, one check after another could hold the
    # machine's memory until a reboot, and the next check as the same uid could read it.
    key = 0x42650000 + os.getpid() % 0x10000
    try:
        graded = run_grade(install, submission(tmp_path, box, SYSV_LITTERER, extra=f"KEY = {key}"), "linear.forward")
        assert graded.score == 0
        assert (box / "made").read_text().split() == ["segment"], (box / "errors").read_text() if (box / "errors").exists() else ""
        assert key not in segments(), "the check's System V segment outlived it"
    finally:
        for shmid in segments().get(key, []):  # without the defence: not left on the machine
            ctypes.CDLL(None).shmctl(shmid, 0, None)  # IPC_RMID


def segments() -> dict[int, list[int]]:
    """The System V shared memory segments of this IPC namespace: key -> ids."""
    found: dict[int, list[int]] = {}
    for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]:
        key, shmid = map(int, line.split()[:2])
        found.setdefault(key, []).append(shmid)
    return found




LITTERER = """
import os
tag = "bevialm-litter-%d" % os.getpid()
for place in PLACES:
    try:
        with open(os.path.join(place, tag), "w") as f:
            f.write("left behind for the next check")
        os.makedirs(os.path.join(place, tag + ".d", "inner"))
        with open(os.path.join(place, tag + ".d", "inner", "f"), "w") as f:
            f.write("x")
        os.symlink(TARGET, os.path.join(place, tag + ".link"))
        _note("wrote", place)
    except OSError as e:
        _note("errors", e)
_note("litter", tag)
raise NotImplementedError
"""


@root_only
def test_what_a_check_leaves_in_shared_temporary_places_is_removed(install: Install, box: Path, tmp_path: Path) -> None:
    target = tmp_path / "root-owned.txt"  # a file the check's links point at: it must survive
    target.write_text("root's")
    tmp_path.chmod(0o755)
    neighbour = Path(tempfile.mkstemp(prefix="bevialm-not-the-checks-", dir="/tmp")[1])  # root's file, beside the litter
    try:
        extra = f"PLACES, TARGET = {['/tmp', '/var/tmp', '/dev/shm']!r}, {str(target)!r}"
        graded = run_grade(install, submission(tmp_path, box, LITTERER, extra=extra), "linear.forward")
        assert graded.score == 0
        (tag,) = (box / "litter").read_text().split()
        assert sorted((box / "wrote").read_text().split()) == ["/dev/shm", "/tmp", "/var/tmp"]
        left = [p for place in ("/tmp", "/var/tmp", "/dev/shm") for p in Path(place).glob(tag + "*")]
        assert not left, f"the check's files are still there: {left}"
        assert target.read_text() == "root's" and neighbour.exists()
    finally:
        neighbour.unlink()
