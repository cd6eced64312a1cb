"""Two processes in one run folder (bevialm.runs.lock_run_folder): the second is refused with one
line naming the first's pid and host, a stale lock from a dead process is taken over, the lock
goes when the run ends (SIGTERM included), and nothing the first run wrote is lost."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bevialm import runs
from bevialm.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DATA = str(ROOT / "data.txt")
TINY = ["--ctx", "16", "--dim", "16", "--layers", "1", "--heads", "2", "--mlp_hidden", "32", "--batch", "4"]
HOST = socket.gethostname()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_lock_is_refused_naming_the_holder_and_release_removes_the_file(tmp_path: Path) -> None:
    lock = runs.lock_run_folder(str(tmp_path))
    assert (tmp_path / runs.LOCK).read_text() == f"{os.getpid()} {HOST}\n"
    assert lock.taken_over is None
    with pytest.raises(runs.RunFolderBusy) as e:
        runs.lock_run_folder(str(tmp_path))  # a second open file: flock refuses it as it would another process
    assert str(e.value) == (
        f"run folder '{tmp_path}' is in use: process {os.getpid()} on host '{HOST}' is training there "
        f"(it holds {tmp_path / runs.LOCK}); wait for it to finish or stop it, or train in another --out"
    )
    lock.release()
    lock.release()  # twice is harmless
    assert not (tmp_path / runs.LOCK).exists()
    with runs.lock_run_folder(str(tmp_path)) as again:
        assert again.fd >= 0
    assert not (tmp_path / runs.LOCK).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    pid = dead_pid()
    (tmp_path / runs.LOCK).write_text(f"{pid} {HOST}\n")
    with runs.lock_run_folder(str(tmp_path)) as lock:
        assert lock.taken_over == (pid, HOST)
        assert (tmp_path / runs.LOCK).read_text() == f"{os.getpid()} {HOST}\n"


def test_a_lock_file_that_names_nobody_is_reported_as_another_process(tmp_path: Path) -> None:
    with runs.lock_run_folder(str(tmp_path)):
        (tmp_path / runs.LOCK).write_text("garbage")
        with pytest.raises(runs.RunFolderBusy, match="is in use: another process is training there"):
            runs.lock_run_folder(str(tmp_path))


@pytest.mark.parametrize(
    ("owner", "refused"),
    [("alive", True), ("dead", False), ("other-host", True), ("nobody", False)],
)
def test_without_flock_the_pid_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: str, refused: bool) -> None:
    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    text = {"alive": f"{os.getppid()} {HOST}", "dead": f"{dead_pid()} {HOST}", "other-host": "1 elsewhere", "nobody": ""}
    (tmp_path / runs.LOCK).write_text(text[owner])
    if refused:
        with pytest.raises(runs.RunFolderBusy, match=f"is in use: process {text[owner].split()[0]} on host"):
            runs.lock_run_folder(str(tmp_path))
        assert (tmp_path / runs.LOCK).read_text() == text[owner]  # left as it was
    else:
        with runs.lock_run_folder(str(tmp_path)):
            assert (tmp_path / runs.LOCK).read_text() == f"{os.getpid()} {HOST}\n"


def test_other_flock_failures_are_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, op: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="Input/output error"):
        runs.lock_run_folder(str(tmp_path))


def test_a_lock_file_removed_while_locking_is_locked_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder removes the file as we lock it: our lock is on a file no one else sees, so try again."""
    real, calls = fcntl.flock, list[int]()

    def remove_on_first(fd: int, op: int) -> None:
        real(fd, op)
        if not calls:
            os.remove(tmp_path / runs.LOCK)
        calls.append(fd)

    monkeypatch.setattr(fcntl, "flock", remove_on_first)
    with runs.lock_run_folder(str(tmp_path)):
        assert len(calls) == 2 and (tmp_path / runs.LOCK).exists()


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != runs.LOCK):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def start_training(cwd: Path, out: str) -> subprocess.Popen[str]:
    """A long run in ``out``; returns once its first checkpoint and lock are on disk."""
    argv = [sys.executable, str(ROOT / "main.py"), "--data", DATA, *TINY, "--log_every", "1", "--eval_iters", "1",
            "--sample_len", "0", "--steps", "100000", "--out", out]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("step "):
            break
    assert (cwd / out / "last.npz").exists() and (cwd / out / runs.LOCK).exists()
    return proc


def resume(cwd: Path, out: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bevialm", "train", "--data", DATA, *TINY, "--eval_iters", "1", "--sample_len", "0",
            "--log_every", "0", "--steps", "3", "--resume", "--out", out]  # fmt: skip
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_resume_while_another_process_trains_is_refused_in_one_line_and_loses_nothing(tmp_path: Path) -> None:
    first = start_training(tmp_path, "run")
    try:
        first.send_signal(signal.SIGSTOP)  # hold it still, so the folder can be compared before and after
        before = folder_hash(tmp_path / "run")
        second = resume(tmp_path, "run")
        assert second.returncode == 1 and second.stdout == ""
        assert second.stderr == (
            f"error: run folder 'run' is in use: process {first.pid} on host '{HOST}' is training there "
            f"(it holds {Path('run') / runs.LOCK}); wait for it to finish or stop it, or train in another --out\n"
        )
        assert folder_hash(tmp_path / "run") == before
        first.send_signal(signal.SIGCONT)
        first.send_signal(signal.SIGTERM)  # the lock goes with the run, SIGTERM included
        _, err = first.communicate(timeout=90)
        assert first.returncode == 143, err
    finally:
        first.kill()
        first.wait()
    assert not (tmp_path / "run" / runs.LOCK).exists()
    step = load_checkpoint(tmp_path / "run" / "last.npz").step
    again = resume(tmp_path, "run")  # now the folder is free
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(tmp_path / "run" / "last.npz").step == max(step, 3)


def test_resume_after_kill_9_takes_the_stale_lock_over(tmp_path: Path) -> None:
    first = start_training(tmp_path, "run")
    first.kill()  # SIGKILL: no chance to remove the lock file
    first.communicate(timeout=90)
    assert (tmp_path / "run" / runs.LOCK).read_text() == f"{first.pid} {HOST}\n"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the kernel drops the flock as the process goes
        again = resume(tmp_path, "run")
        if again.returncode == 0:
            break
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "run" / runs.LOCK).exists()
