"""Bad input and faults through the real command line (issue 11): absurd sizes, devices and
pipes as data, --overwrite that must lose nothing, SIGTERM, stale temporary files, NaN and
zip-bomb checkpoints, the lowest NumPy's archive format, ``--version``, ``python -m bevialm``
and the numbered run folders.

Every case runs a real process and checks its exit code and that stderr is exactly one line
with no traceback; where data could be lost, a hash of the run folder before and after."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import resource
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bevialm import __version__, checkpoint, checkpoint_archive, runtime
from bevialm.checkpoint import load_checkpoint, save_checkpoint
from bevialm.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
DATA = str(ROOT / "data.txt")
MAIN = str(ROOT / "main.py")
TINY = ["--ctx", "16", "--dim", "16", "--layers", "1", "--heads", "2", "--mlp_hidden", "32", "--batch", "4"]
QUIET = ["--log_every", "0", "--eval_iters", "1", "--sample_len", "0", "--warmup", "1"]
BEVIALM = [sys.executable, "-m", "bevialm"]
GIB = 1 << 30


def main_py(*flags: str) -> list[str]:
    return [sys.executable, MAIN, *flags]


def run(argv: list[str], cwd: Path, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The single stderr line of a process that exited with ``code``."""
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n"), done.stderr
    return done.stderr.rstrip("\n")


def folder_hash(folder: Path) -> str:
    """Every file's name and bytes under ``folder``: equal hashes, nothing lost or changed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (in-process: no interpreter start-up) that the cases below must not damage."""
    out = tmp_path_factory.mktemp("good") / "run"
    cfg = TrainConfig(data=DATA, ctx=16, dim=16, layers=1, heads=2, mlp_hidden=32, batch=4, steps=6,
                      eval_every=3, eval_iters=1, log_every=0, sample_len=0, out=str(out))  # fmt: skip
    train(cfg, stdout=open(os.devnull, "w"))  # noqa: SIM115
    return out


# --- one line for each bad input, all started at once ---------------------------------------------

SIZE_ADVICE = "use a smaller --batch, --ctx, --dim, --layers, --mlp_hidden or --sample_len"
NEEDS = r"this run needs about [\d,.]+ (GiB|MiB) of memory \(parameters and AdamW state .*\); this machine has [\d,.]+ (GiB|MiB) available \((MemAvailable|the .*)\)"

ONE_LINE_CASES: list[tuple[str, list[str], int, str]] = [
    # (id, argv: {tmp} and {good} are filled in, exit code, regular expression the line must match)
    ("dim-1e9", main_py("--data", DATA, *TINY, "--dim", "1000000000", "--heads", "1"), 1, NEEDS),
    ("mlp-hidden-1e9", main_py("--data", DATA, *TINY, "--mlp_hidden", "1000000000"), 1, NEEDS),
    ("batch-1e9", main_py("--data", DATA, *TINY, "--batch", "1000000000"), 1, NEEDS + "; " + re.escape(SIZE_ADVICE)),
    ("layers-1e9", main_py("--data", DATA, *TINY, "--layers", "1000000000"), 1, NEEDS),
    ("layers-1e30", main_py("--data", DATA, *TINY, "--layers", str(10**30)), 1, NEEDS),
    ("train-sample-len-1e12", main_py("--data", DATA, *TINY, "--sample_len", str(10**12)), 1, NEEDS),
    ("sample-num-samples-1e9", [*BEVIALM, "sample", "--out", "{good}", "--num_samples", "1000000000"], 1,
     r"sampling 1000000000 x 400 tokens needs about .* GiB of memory .*; this machine has .* available .*; use a smaller --num_samples or --sample_len"),  # fmt: skip
    ("sample-len-1e12", [*BEVIALM, "sample", "--out", "{good}", "--sample_len", str(10**12)], 1,
     r"sampling 1 x 1000000000000 tokens needs about"),  # fmt: skip
    ("data-dev-zero", main_py("--data", "/dev/zero", *TINY), 1, r"error: data file '/dev/zero' is a character device; give a regular file$"),
    ("data-fifo", main_py("--data", "{tmp}/fifo", *TINY), 1, r"error: data file '.*/fifo' is a named pipe \(FIFO\); give a regular file$"),
    ("data-too-large", main_py("--data", "{tmp}/huge.txt", *TINY), 1, r"error: data file '.*huge.txt' is 300 MiB, more than the 256 MiB limit$"),
    ("prompt-fifo", [*BEVIALM, "sample", "--out", "{good}", "--prompt_file", "{tmp}/fifo"], 1, r"prompt file '.*/fifo' is a named pipe"),
    ("checkpoint-dev-zero", [*BEVIALM, "sample", "--checkpoint", "/dev/zero"], 1, r"error: checkpoint '/dev/zero' is a character device"),
    ("checkpoint-fifo", [*BEVIALM, "sample", "--checkpoint", "{tmp}/fifo"], 1, r"error: checkpoint '.*/fifo' is a named pipe"),
    ("sample-no-runs", [*BEVIALM, "sample"], 1, r"error: no checkpoint to sample from: 'runs' holds no run with best.npz or last.npz; train one first"),
    ("resume-no-runs", main_py("--data", DATA, *TINY, "--resume"), 1, r"error: --resume: no run in 'runs' has a last.npz to resume from; pass its --out$"),
    ("sample-nan-checkpoint", [*BEVIALM, "sample", "--checkpoint", "{tmp}/nan.npz"], 1,
     r"error: checkpoint '.*nan.npz': parameter '[^']+' holds NaN or infinite values \(the run diverged\); use an earlier checkpoint$"),  # fmt: skip
    ("sample-zip-bomb", [*BEVIALM, "sample", "--checkpoint", "{tmp}/bomb.npz"], 1,
     r"error: checkpoint '.*bomb.npz': parameter 'lm_head.W' is <f4\(536870912,\), its header says \{.*'shape': \[16, 59\]\}$"),  # fmt: skip
    ("out-parent-a-file", main_py("--data", DATA, *TINY, "--out", "{tmp}/huge.txt/run"), 1, r"run folder '.*huge.txt/run' cannot be written"),
]


def _nan_checkpoint(good: Path, path: Path) -> None:
    ckpt = load_checkpoint(good / "best.npz")
    params = {k: np.full_like(p, np.nan) for k, p in ckpt.params.items()}
    header = {k: ckpt.header[k] for k in checkpoint.TRAINER_KEYS}
    save_checkpoint(path, params=params, header=header)


def _zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip of ``(name, data as stored, method, crc, uncompressed size)`` members, written by hand
    so that a member can hold a deflate stream of 2 GiB without compressing 2 GiB here."""
    body, central = bytearray(), bytearray()
    for name, data, method, crc, size in members:
        raw = name.encode()
        fields = (20, 0, method, 0, 0x21, crc, len(data), size, len(raw))
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, 0, len(body)) + raw
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields, 0) + raw + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))


def _zip_bomb(good: Path, path: Path) -> None:
    """The good run's best.npz with ``lm_head.W`` replaced by a 9 MB deflate stream that declares
    (and holds) a 2 GiB float32 array, while the JSON header says (16, 59)."""
    members = []
    with np.load(good / "best.npz", allow_pickle=False) as z:
        for key in z.files:
            if key == "param/lm_head.W":
                continue
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, z[key], allow_pickle=False)
            data = buffer.getvalue()
            members.append((key + ".npy", data, 0, zlib.crc32(data), len(data)))
    header = np.lib.format.header_data_from_array_1_0(np.zeros(0, np.float32))
    header["shape"] = (GIB // 2,)  # 2 GiB of float32
    prefix = io.BytesIO()
    np.lib.format.write_array_header_1_0(prefix, header)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = compressor.compress(prefix.getvalue()) + compressor.flush(zlib.Z_FULL_FLUSH)
    chunk = compressor.compress(bytes(64 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)  # same bytes every 64 MiB
    stream = start + chunk * 32 + compressor.flush(zlib.Z_FINISH)
    size = len(prefix.getvalue()) + 2 * GIB
    members.append(("param/lm_head.W.npy", stream, 8, 0, size))  # crc never reached: refused before
    _zip(path, members)


@pytest.fixture(scope="module")
def one_line_runs(good_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, subprocess.CompletedProcess[str]]]]:
    tmp = tmp_path_factory.mktemp("bad")
    os.mkfifo(tmp / "fifo")  # no writer ever: opening it to read would block for good
    with open(tmp / "huge.txt", "wb") as f:
        f.truncate(300 << 20)  # sparse: no disk used
    _nan_checkpoint(good_run, tmp / "nan.npz")
    _zip_bomb(good_run, tmp / "bomb.npz")
    procs = {}
    for case_id, argv, _, _ in ONE_LINE_CASES:
        cwd = tmp / case_id
        cwd.mkdir()
        cmd = [a.replace("{tmp}", str(tmp)).replace("{good}", str(good_run)) for a in argv]
        procs[case_id] = (cwd, subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for case_id, (cwd, proc) in procs.items():
        out, err = proc.communicate(timeout=180)
        results[case_id] = (cwd, subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    yield results


@pytest.mark.parametrize(("case_id", "argv", "code", "pattern"), ONE_LINE_CASES, ids=[c[0] for c in ONE_LINE_CASES])
def test_one_clear_line(
    one_line_runs: dict[str, tuple[Path, subprocess.CompletedProcess[str]]], case_id: str, argv: list[str], code: int, pattern: str
) -> None:
    cwd, done = one_line_runs[case_id]
    line = one_line(done, code)
    assert re.search(pattern, line), line
    assert done.stdout == "" or case_id.startswith("sample-"), done.stdout
    assert not (cwd / "runs").exists() or not any((cwd / "runs").iterdir())  # a refused run leaves no folder


def test_the_zip_bomb_is_refused_before_its_data_is_decompressed(tmp_path: Path, good_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _zip_bomb(good_run, tmp_path / "bomb.npz")
    assert (tmp_path / "bomb.npz").stat().st_size < 12 << 20  # "a 9 MB checkpoint"
    read: list[int] = []
    real = checkpoint_archive.read_data

    def counting(zf: Any, info: Any, layout: Any) -> Any:
        read.append(layout.nbytes)
        return real(zf, info, layout)

    monkeypatch.setattr(checkpoint_archive, "read_data", counting)
    with pytest.raises(checkpoint.CheckpointError, match="parameter 'lm_head.W' is <f4"):
        load_checkpoint(tmp_path / "bomb.npz")
    assert len(read) == 1 and read[0] < 1 << 20  # the JSON header only


def test_the_address_space_limit_is_what_the_machine_has(tmp_path: Path) -> None:
    """Under ``ulimit -v`` the refusal names that limit: with 1.5 GiB of address space, a run
    of a few GiB is refused before it allocates, rather than failing mid-step."""
    limit = 3 * GIB // 2

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # its per-thread buffers count against the limit
    big = ["--data", DATA, "--ctx", "512", "--dim", "512", "--batch", "64", "--layers", "1", "--mlp_hidden", "2048"]
    done = run(main_py(*big), tmp_path, preexec_fn=limited, env=env)
    line = one_line(done, 1)
    assert re.search(r"this run needs about [\d.]+ GiB of memory .*; this machine has [\d,.]+ (MiB|GiB) available "
                     r"\(the address-space limit, ulimit -v\)", line), line  # fmt: skip
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- --overwrite and failed starts lose nothing -----------------------------------------------------


def test_a_failed_overwrite_leaves_the_old_run_intact(good_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    before = folder_hash(out)
    attempts = [
        ("--dim", "1000000000", "--heads", "1"),  # too large for memory
        ("--data", str(tmp_path / "missing.txt")),  # bad data
        ("--ctx", "100000"),  # data too short
    ]
    for extra in attempts:
        done = run(main_py("--data", DATA, *TINY, *QUIET, "--steps", "2", "--out", str(out), "--overwrite", *extra), tmp_path)
        assert one_line(done, 1).startswith("error: ")
        assert folder_hash(out) == before, extra
    # the first checkpoint cannot be written (last.npz is a folder): the old best.npz and metrics stay
    (out / "last.npz").rename(tmp_path / "kept.npz")
    (out / "last.npz").mkdir()
    before = folder_hash(out)
    done = run(main_py("--data", DATA, *TINY, *QUIET, "--steps", "2", "--out", str(out), "--overwrite"), tmp_path)
    assert one_line(done, 1).startswith(f"error: cannot write checkpoint '{out / 'last.npz'}'")
    assert folder_hash(out) == before and not any(p.name.endswith(".tmp") for p in out.iterdir())
    # a start that succeeds replaces the old run
    (out / "last.npz").rmdir()
    done = run(main_py("--data", DATA, *TINY, *QUIET, "--steps", "2", "--out", str(out), "--overwrite"), tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert load_checkpoint(out / "last.npz").step == 2


def test_a_failed_start_leaves_nothing_that_refuses_the_same_command(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "new" / "run"
    too_big = main_py("--data", DATA, *TINY, *QUIET, "--steps", "2", "--out", str(out), "--batch", "1000000000")
    for _ in range(2):  # the same command twice: the same message, never "already holds a run"
        assert "needs about" in one_line(run(too_big, tmp_path), 1)
        assert not (tmp_path / "deep").exists()
    fixed = main_py("--data", DATA, *TINY, *QUIET, "--steps", "2", "--out", str(out))
    assert run(fixed, tmp_path).returncode == 0 and load_checkpoint(out / "last.npz").step == 2


# --- signals ----------------------------------------------------------------------------------------


def _start_and_signal(argv: list[str], cwd: Path, sig: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Start a long run, wait for its second log line (step 1 committed), send ``sig``."""
    proc = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # whatever the parent ignores
    )  # fmt: skip
    assert proc.stdout is not None
    seen, deadline = [], time.monotonic() + 90
    for line in proc.stdout:
        seen.append(line)
        if sum(s.startswith("step ") for s in seen) == 2 or time.monotonic() > deadline:
            break
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=90)
    return subprocess.CompletedProcess(argv, proc.returncode, "".join(seen) + rest, err), seen


def test_sigterm_saves_last_npz_exits_143_and_says_so_once(tmp_path: Path) -> None:
    argv = main_py("--data", DATA, *TINY, "--log_every", "1", "--eval_iters", "1", "--sample_len", "0", "--steps", "100000")
    done, _ = _start_and_signal(argv, tmp_path, signal.SIGTERM)
    line = one_line(done, 143)
    folder = tmp_path / "runs" / "run-001"
    match = re.fullmatch(
        rf"terminated \(SIGTERM\) at step (\d+)/100000: saved {re.escape(str(Path('runs') / 'run-001' / 'last.npz'))}; "
        rf"continue with the same command and --resume --out {re.escape(str(Path('runs') / 'run-001'))}",
        line,
    )
    assert match, line
    step = int(match.group(1))
    assert step >= 1 and load_checkpoint(folder / "last.npz").step == step
    assert "terminated" not in done.stdout and "interrupted" not in done.stdout
    # the advice works as written
    resumed = run([*argv[:-1], str(step + 2), "--resume", "--out", str(Path("runs") / "run-001")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(folder / "last.npz").step == step + 2


def test_a_second_signal_while_saving_changes_nothing(tmp_path: Path) -> None:
    """Both signals at once: still one line, and a good last.npz."""
    argv = main_py("--data", DATA, *TINY, "--log_every", "1", "--eval_iters", "1", "--sample_len", "0", "--steps", "100000", "--out", "r")
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if re.match(r"step +2/", line):
            break
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode in (130, 143) and err.count("\n") == 1 and "saved" in err, err
    assert load_checkpoint(tmp_path / "r" / "last.npz").step >= 1


def test_stop_signals_raise_restores_and_respects_ignored_signals() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with runtime.stop_signals_raise():
        with pytest.raises(runtime.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # pragma: no cover - the signal arrives first
        os.kill(os.getpid(), signal.SIGINT)  # a second signal (Ctrl-C while saving) does nothing
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) == before
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with runtime.stop_signals_raise():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # inherited "ignore" is kept
    finally:
        signal.signal(signal.SIGINT, previous)


def test_stale_temp_files_are_removed_at_the_next_start(good_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    for name in (".last.npz.k1ll3d.tmp", ".best.npz.x.tmp"):
        (out / name).write_bytes(b"PK\x03\x04 half a checkpoint")
    (out / "notes.tmp").write_text("mine")  # not ours: kept
    done = run(main_py("--data", DATA, *TINY, *QUIET, "--steps", "7", "--eval_every", "3", "--out", str(out), "--resume"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "removed 2 temporary file(s) left by an interrupted checkpoint write" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["best.npz", "config.toml", "last.npz", "metrics.jsonl", "notes.tmp"]


def test_resuming_a_nan_checkpoint_is_refused(good_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    ckpt = load_checkpoint(out / "last.npz")
    params = {k: np.where(np.arange(p.size).reshape(p.shape) == 0, np.inf, p).astype(p.dtype) for k, p in ckpt.params.items()}
    save_checkpoint(out / "last.npz", params=params, header={k: ckpt.header[k] for k in checkpoint.TRAINER_KEYS}, opt_state=ckpt.opt_state)
    before = folder_hash(out)
    done = run(main_py("--data", DATA, *TINY, *QUIET, "--steps", "9", "--out", str(out), "--resume"), tmp_path)
    assert "holds NaN or infinite values" in one_line(done, 1)
    assert folder_hash(out) == before


@pytest.mark.parametrize("batch", ["4", "64"], ids=["one-shard", "sharded"])  # 64 x 32 tokens: two shards, one in a worker process
def test_a_diverging_run_prints_one_line_and_no_numpy_warnings(tmp_path: Path, batch: str) -> None:
    flags = [*TINY, *QUIET, "--ctx", "32", "--batch", batch, "--shards", "2", "--dropout", "0"]
    done = run(main_py("--data", DATA, *flags, "--steps", "50", "--lr", "1e30", "--grad_clip", "0", "--wd", "0"), tmp_path)
    line = one_line(done, 3)
    assert line.startswith("error: training diverged at step ") and "try a lower --lr" in line


# --- checkpoints written by this NumPy read back on any -----------------------------------------------


def test_the_archive_holds_exactly_the_arrays_and_no_pickle(good_run: Path) -> None:
    import zipfile

    with zipfile.ZipFile(good_run / "last.npz") as zf:
        names = zf.namelist()
    assert "allow_pickle.npy" not in names  # NumPy 1.x's np.savez stored the keyword as an array
    assert all(n.endswith(".npy") and n.split("/")[0] in ("header.npy", "param", "adam_m", "adam_v") for n in names)
    with np.load(good_run / "last.npz", allow_pickle=False) as z:  # a plain .npz for any reader
        assert json.loads(z["header"].tobytes())["format"] == "bevialm-checkpoint"


# --- entry points and run folders ---------------------------------------------------------------------


def test_version_and_python_dash_m(tmp_path: Path) -> None:
    for argv in ([*BEVIALM, "--version"], [str(Path(sys.executable).parent / "bevialm"), "--version"]):
        if not Path(argv[0]).exists():
            continue  # pragma: no cover - the console script is not installed here
        done = run(argv, tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (0, f"bevialm {__version__}\n", "")
    helped = run([*BEVIALM, "--help"], tmp_path)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: python -m bevialm [-h] [--version] COMMAND")
    for command in ("train", "sample", "skeleton", "grade", "autograder"):
        assert command in helped.stdout


def test_every_run_gets_a_new_folder_and_sample_reads_the_newest(tmp_path: Path) -> None:
    argv = main_py("--data", DATA, *TINY, *QUIET, "--steps", "3")
    first, second = run(argv, tmp_path), run(argv, tmp_path)  # the same command twice
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "run folder: runs/run-001" in first.stdout and "run folder: runs/run-002" in second.stdout
    hint = next(line for line in second.stdout.splitlines() if line.startswith("sample from it: "))
    command = hint.removeprefix("sample from it: ").replace('"..."', "MARA")
    assert " -m bevialm sample --checkpoint runs/run-002/best.npz" in command
    done = run(shlex.split(command), tmp_path)  # the hint works as printed
    assert done.returncode == 0 and done.stdout.startswith("MARA"), done.stderr
    sampled = run([*BEVIALM, "sample", "--sample_len", "5", "--prompt", "MARA"], tmp_path)
    assert sampled.returncode == 0 and sampled.stderr == "sampling from runs/run-002/best.npz (step 3)\n"
    resumed = run([*argv[:-1], "5", "--resume"], tmp_path)  # --resume without --out: the newest run
    assert resumed.returncode == 0 and "run folder: runs/run-002 (resuming from step 3 of last.npz)" in resumed.stdout
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run-001", "run-002"]


def test_runs_folder_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    done = run(main_py("--data", DATA, *TINY, *QUIET, "--steps", "2"), tmp_path)
    assert one_line(done, 1).startswith("error: cannot create a run folder in 'runs': ")


def test_the_hint_names_a_command_that_exists_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/bevialm", "train"])
    assert runtime.command() == "bevialm"
    monkeypatch.setattr(sys, "argv", ["main.py"])
    monkeypatch.chdir(ROOT)
    assert runtime.command().endswith(" -m bevialm") and "PYTHONPATH" not in runtime.command()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(ROOT)])  # the playbook's venv: NumPy only, the package in main.py's folder
    assert runtime.command().startswith(f"PYTHONPATH={ROOT} ") and runtime.command().endswith(" -m bevialm")


def test_the_playbooks_numpy_only_route_prints_a_hint_that_works(tmp_path: Path) -> None:
    """``python main.py`` in a venv with NumPy alone (no bevialm installed), run from another
    folder: the printed sample command must work exactly as printed, from that folder."""
    import numpy

    numpy_only = f"import sys; sys.path[1:] = [{str(Path(numpy.__file__).parent.parent)!r}] + [p for p in sys.path if 'site-packages' not in p][1:]"
    boot = tmp_path / "boot.py"  # site off (-S: no .pth, so no editable install), then main.py as __main__
    boot.write_text(f"{numpy_only}\nimport runpy\nsys.argv = sys.argv[1:]\nsys.path.insert(0, {str(ROOT)!r})\n"
                    f"runpy.run_path({MAIN!r}, run_name='__main__')\n")  # fmt: skip
    done = run([sys.executable, "-S", str(boot), MAIN, "--data", DATA, *TINY, *QUIET, "--steps", "2"], tmp_path)
    assert done.returncode == 0, done.stderr
    hint = next(line for line in done.stdout.splitlines() if line.startswith("sample from it: "))
    command = hint.removeprefix("sample from it: ").replace('"..."', "MARA")
    assert command.startswith(f"PYTHONPATH={ROOT} ")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    sampled = run(["sh", "-c", f"{command} --sample_len 3"], tmp_path, env=env)
    assert sampled.returncode == 0 and sampled.stdout.startswith("MARA"), sampled.stderr


def test_memory_error_that_slips_through_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from bevialm import cli, cli_flags

    def out_of_memory(args: Any) -> int:
        raise MemoryError("Unable to allocate 7.45 GiB for an array with shape (1000000000,) and data type int64")

    monkeypatch.setattr(cli_flags, "run_sample", out_of_memory)
    assert cli.main(["sample"]) == 1
    assert capsys.readouterr().err == (
        "error: out of memory (Unable to allocate 7.45 GiB for an array with shape (1000000000,) and data type int64); "
        "try smaller sizes\n"
    )



def test_a_closed_pipe_stops_sampling_quietly(good_run: Path) -> None:
    """``bevialm sample ... | head``: no "Broken pipe" error and no traceback when the reader leaves."""
    # ~400 kB of samples: far more than a pipe holds (64 kB), so the writer must meet the closed end
    cmd = [*BEVIALM, "sample", "--checkpoint", str(good_run / "best.npz"), "--num_samples", "2000", "--sample_len", "200"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # as head does once it has its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Broken pipe" not in err and "Traceback" not in err, err
