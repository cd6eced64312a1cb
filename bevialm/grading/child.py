"""The child of a check: a fresh interpreter that runs the student's functions for the grader.

The grader starts it as ``python -I -S -c <this file's source> <settings>``: no
site-packages, no environment, no current folder on the import path. It imports
only the standard library and NumPy -- never ``bevialm`` -- so no reference code,
rubric or grader state is in it. Its import path is set explicitly: the private
copy of the submission, the given code (shared infrastructure such as
``bevialm.types``, copied from the reference's source at grade time) and NumPy.

It runs as a *zygote*: it warms up once, then forks one child per check. Each
child confines itself (limits, output capture, and as root a dedicated uid)
before any student code runs, then serves calls over two pipes the grader owns, in the
format of :func:`send` / :func:`receive`: "call ``function`` of the student's
module ``module`` with these arguments". It answers with what the function
returned (arrays as raw bytes, never pickled), the arguments it changed, or the
exception it raised. Every verdict is the grader's: nothing here judges.

The grader also imports this module for the wire format (:func:`send`,
:func:`receive`), so it holds no state of its own at import.

(Over 500 lines on purpose: this file's source is the child's whole program, run with
``python -I -S -c``, so it cannot import a sibling module.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import select
import struct
import sys
import time
import traceback
from typing import Any

if __name__ == "__main__":  # pragma: no cover - the child: NumPy comes from the grader's path only
    sys.path[:0] = json.loads(sys.argv[1])["path"]

import numpy as np  # noqa: E402

MAX_HEADER = 16 * 2**20
"""Largest JSON header a frame may carry (bytes)."""

MAX_DATA = 256 * 2**20
"""Largest array payload a frame may carry (bytes): a bigger answer is refused, unread."""

MAX_ARRAYS = 100_000
MAX_DEPTH = 24
MAX_TEXT = 300
"""Longest string (an exception message, a type name) kept from a child."""

ARRAY_KINDS = "biuf"
"""Dtype kinds that cross the wire: booleans, integers, floats. Never objects."""

_PREFIX = struct.Struct("<QQ")


class WireError(Exception):
    """A frame that is not what :func:`send` writes (or the other side went away)."""


# --- frames ---------------------------------------------------------------------------------


def _read(fd: int, n: int, deadline: float | None) -> bytes:
    chunks = []
    while n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("no answer in time")
        chunk = os.read(fd, min(n, 2**20))
        if not chunk:
            raise EOFError("the other side closed the channel")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write(fd: int, data: bytes, deadline: float | None) -> None:
    view = memoryview(data)
    while view:
        if deadline is not None:  # a child that stops reading cannot stall the grader
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise TimeoutError("the other side stopped reading")
        try:
            view = view[os.write(fd, view[: 2**16]) :]
        except BlockingIOError:  # the grader's end is non-blocking: wait for room again
            continue


def send(fd: int, header: dict[str, Any], arrays: list[np.ndarray], deadline: float | None = None) -> None:
    """One frame: sizes, a JSON header (with each array's dtype and shape) and the arrays' bytes."""
    parts = [a if a.flags.c_contiguous else a.copy(order="C") for a in arrays]
    header = {**header, "arrays": [[a.dtype.str, list(a.shape)] for a in parts]}
    text = json.dumps(header).encode("utf-8")
    data = b"".join(a.tobytes() for a in parts)
    _write(fd, _PREFIX.pack(len(text), len(data)) + text + data, deadline)


def _dtype(text: Any) -> np.dtype[Any]:
    if not isinstance(text, str) or len(text) > 8:
        raise WireError(f"bad dtype {str(text)[:20]!r}")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise WireError(f"bad dtype {text[:20]!r}") from None
    if dtype.kind not in ARRAY_KINDS or dtype.itemsize > 8 or dtype.hasobject:
        raise WireError(f"dtype {dtype} may not cross the wire")
    return dtype


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 32 or not all(type(d) is int and 0 <= d < 2**40 for d in value):
        raise WireError("bad shape")
    return tuple(value)


def receive(fd: int, deadline: float | None = None) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Read one frame, checking every size, dtype and shape before anything is built from it."""
    header_len, data_len = _PREFIX.unpack(_read(fd, _PREFIX.size, deadline))
    if header_len > MAX_HEADER or data_len > MAX_DATA:
        raise WireError(f"frame too large ({header_len} + {data_len} bytes)")
    try:
        header = json.loads(_read(fd, header_len, deadline).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WireError("header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), list) or len(header["arrays"]) > MAX_ARRAYS:
        raise WireError("header of the wrong form")
    data = _read(fd, data_len, deadline)
    arrays, offset = [], 0
    for spec in header.pop("arrays"):
        if not isinstance(spec, list) or len(spec) != 2:
            raise WireError("bad array description")
        dtype, shape = _dtype(spec[0]), _shape(spec[1])
        count = math.prod(shape)
        size = count * dtype.itemsize
        if offset + size > len(data):
            raise WireError("array data shorter than its shape says")
        arrays.append(np.frombuffer(data, dtype, count, offset).reshape(shape).copy())
        offset += size
    if offset != len(data):
        raise WireError("array data longer than the arrays")
    return header, arrays


# --- the child's side of values ---------------------------------------------------------------


class Objects:
    """Objects the grader refers to by handle (a cache it will pass back to ``backward``)."""

    def __init__(self) -> None:
        self.by_handle: dict[int, Any] = {}
        self.handles: dict[int, int] = {}  # id(obj) -> handle
        self.next = 1

    def handle(self, obj: Any) -> int:
        h = self.handles.get(id(obj))
        if h is None:
            h, self.next = self.next, self.next + 1
            self.by_handle[h] = obj
            self.handles[id(obj)] = h
        return h

    def release(self, h: int) -> None:
        obj = self.by_handle.pop(h, None)
        if obj is not None:
            self.handles.pop(id(obj), None)


def encode(value: Any, arrays: list[np.ndarray], objects: Objects, depth: int = 0) -> Any:
    """A returned value as JSON: arrays by index into ``arrays``, other objects by handle
    (with their fields when they are dataclasses, so the grader can see every array)."""
    if value is None or isinstance(value, bool | int | str) or (isinstance(value, float)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
            return {"__o": "int (too large)"}
        return value[:MAX_TEXT] if isinstance(value, str) else value
    if depth > MAX_DEPTH:
        return {"__o": type(value).__name__[:MAX_TEXT]}
    if isinstance(value, np.ndarray) and value.dtype.kind in ARRAY_KINDS and value.dtype.itemsize <= 8:
        arrays.append(value)
        return {"__a": len(arrays) - 1}
    if isinstance(value, np.generic) and np.dtype(type(value)).kind in ARRAY_KINDS:
        arrays.append(np.asarray(value))
        return {"__s": len(arrays) - 1}
    if isinstance(value, tuple | list):
        items = [encode(v, arrays, objects, depth + 1) for v in value]
        return {"__t": items} if isinstance(value, tuple) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__d": {k: encode(v, arrays, objects, depth + 1) for k, v in value.items()}}
    if isinstance(value, dict) and all(isinstance(k, tuple) for k in value):  # pair counts: {(a, b): n}
        return {"__p": [[encode(k, arrays, objects, depth + 1), encode(v, arrays, objects, depth + 1)] for k, v in value.items()]}
    out: dict[str, Any] = {"__o": type(value).__name__[:MAX_TEXT], "h": objects.handle(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
        out["f"] = {k: encode(v, arrays, objects, depth + 1) for k, v in fields.items()}
    return out


def _rng(state: Any) -> np.random.Generator:
    generator = np.random.Generator(np.random.PCG64())
    generator.bit_generator.state = state
    return generator


def decode(value: Any, arrays: list[np.ndarray], objects: Objects, package: str) -> Any:
    """An argument from the grader: configs are rebuilt as the student's own dataclasses."""
    if isinstance(value, list):
        return [decode(v, arrays, objects, package) for v in value]
    if not isinstance(value, dict):
        return value
    if "__a" in value:
        return arrays[value["__a"]].copy()  # every use its own: one call's mutation stays its own
    if "__s" in value:
        return arrays[value["__s"]][()]
    if "__t" in value:
        return tuple(decode(v, arrays, objects, package) for v in value["__t"])
    if "__d" in value:
        return {k: decode(v, arrays, objects, package) for k, v in value["__d"].items()}
    if "__h" in value:
        return objects.by_handle[value["__h"]]
    if "__dtype" in value:
        return np.dtype(value["__dtype"]).type
    if "__rng" in value:
        return _rng(value["__rng"])
    if "__dc" in value:
        module, name = value["__dc"]
        cls = getattr(_import(f"{package}.{module}" if module else package), name)
        return cls(**{k: decode(v, arrays, objects, package) for k, v in value["f"].items()})
    raise ValueError(f"cannot decode {sorted(value)}")


def _import(name: str) -> Any:
    import importlib

    return importlib.import_module(name)


def student_function(module: Any, name: str, function: str) -> Any:
    """``function`` of the student's module ``name``, or an AttributeError that names the file."""
    found = getattr(module, function, None)
    if not callable(found):
        file = name.replace(".", "/") + ".py" if name else "__init__.py"
        raise AttributeError(f"{file} has no function {function!r}")
    return found


def _arrays_of(value: Any, objects: Objects, depth: int = 0) -> list[Any]:
    """Every array reachable from an argument, in a fixed order (to notice what a call changed)."""
    if depth > MAX_DEPTH:
        return []
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, tuple | list):
        return [a for v in value for a in _arrays_of(v, objects, depth + 1)]
    if isinstance(value, dict):
        return [k for k in value] + [a for v in value.values() for a in _arrays_of(v, objects, depth + 1)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [a for f in dataclasses.fields(value) for a in _arrays_of(getattr(value, f.name, None), objects, depth + 1)]
    return []


def _snapshot(value: Any, objects: Objects) -> list[Any]:
    return [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in _arrays_of(value, objects)]


def _same(before: list[Any], after: list[Any]) -> bool:
    if len(before) != len(after):
        return False
    for a, b in zip(before, after, strict=True):
        if isinstance(a, np.ndarray) != isinstance(b, np.ndarray):
            return False
        if isinstance(a, np.ndarray):
            if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                return False
        elif a != b:
            return False
    return True


def where(exc: BaseException, root: str) -> str:
    """The innermost frame of ``exc`` in the submission: ``layers/linear.py:52 in forward``."""
    frames = traceback.extract_tb(exc.__traceback__)
    prefix = root.rstrip("/") + "/"
    for frame in reversed(frames):
        if frame.filename.startswith(prefix):
            return f"{frame.filename[len(prefix):]}:{frame.lineno} in {frame.name}"
    return ""


def describe(exc: BaseException, root: str) -> dict[str, str]:
    if isinstance(exc, SystemExit):
        message = f"sys.exit({exc.code!r}) was called"
    else:
        try:
            message = str(exc)
        except Exception:  # a hostile __str__
            message = "(message could not be read)"
    if len(message) > MAX_TEXT:
        message = message[:MAX_TEXT] + "..."
    return {"type": type(exc).__name__[:MAX_TEXT], "message": message, "where": where(exc, root)}


def run_call(call: dict[str, Any], arrays: list[np.ndarray], objects: Objects, out: list[np.ndarray], settings: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - runs in the child
    """One call of a student function; what it returned, the arguments it changed, or its exception."""
    package = settings["package"]
    try:
        args = decode(call["args"], arrays, objects, package)
        kwargs = {str(k): decode(v, arrays, objects, package) for k, v in call["kwargs"].items()}
        function = student_function(_import(f"{package}.{call['module']}" if call["module"] else package), call["module"], call["function"])
        before = [_snapshot(a, objects) for a in args]
        result = function(*args, **kwargs)
        if "part" in call:  # only this item of what it returned (a forward's y, not its cache)
            result = result[call["part"]]
        changed = [[i, encode(a, out, objects)] for i, (a, b) in enumerate(zip(args, before, strict=True)) if not _same(b, _snapshot(a, objects))]
        return {"value": encode(result, out, objects), "changed": changed}
    except BaseException as exc:  # SystemExit and KeyboardInterrupt included: the grader decides
        return {"error": describe(exc, settings["root"])}


# --- confinement ---------------------------------------------------------------------------

PRELOAD = (
    "abc", "array", "bisect", "collections", "collections.abc", "contextlib", "copy", "ctypes",
    "dataclasses", "decimal", "enum", "fractions", "functools", "heapq", "importlib", "importlib.util",
    "itertools", "math", "numbers", "operator", "random", "re", "statistics", "string", "struct",
    "textwrap", "types", "typing", "warnings", "weakref",
    "numpy", "numpy.fft", "numpy.linalg", "numpy.random", "numpy.polynomial", "numpy.lib.stride_tricks",
)  # fmt: skip
"""Imported before the child gives up root: the uid it becomes may not be able to read the
interpreter's own folder (later standard-library imports go through a folder descriptor)."""


class Blocker:
    """Refuses any ``bevialm`` module but the given ones, and remembers each attempt."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = allowed
        self.attempts: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] == "bevialm" and name != "bevialm" and name not in self.allowed:
            self.record(name)
            raise ImportError(f"{name} is the reference implementation: it cannot be imported while grading")
        return None

    def record(self, name: str) -> None:
        if name not in self.attempts and len(self.attempts) < 20:
            self.attempts.append(name[:MAX_TEXT])


def _libc() -> Any:  # pragma: no cover - runs in the child
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000


def isolate(libc: Any = None) -> bool:
    """Put this process in a network namespace of its own, with no interface up (not even
    loopback): nothing it sends can reach a listener anywhere, 127.0.0.1 included; and in an IPC
    namespace of its own, so the System V shared memory, semaphores and message queues it makes
    end with its last process (they need no process to live on: left in the machine's namespace,
    they would hold memory check after check, for the next check as the same uid to read).
    Needs root (CAP_SYS_ADMIN), or a user namespace where the kernel lets users make one (then
    this process's uid is mapped to itself). Whether the network was closed."""
    if libc is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET | CLONE_NEWIPC) == 0 or libc.unshare(CLONE_NEWNET) == 0:  # a kernel without IPC namespaces
        return True
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC) != 0 and libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        return False
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        try:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        except OSError:
            pass  # unmapped, the process still reads files as its own uid
    return True


def warm_up(settings: dict[str, Any]) -> None:  # pragma: no cover - runs in the zygote
    """The import path, NumPy and the usual standard library: the slow part of a start, done
    once in the zygote that every check's child is forked from."""
    stdlib = [p for p in sys.path if p and p not in settings["path"]]
    sys.path[:] = settings["path"] + stdlib
    for name in PRELOAD:
        try:
            _import(name)
        except ImportError:
            pass


def _capture(out: int) -> None:  # pragma: no cover - runs in the child
    """Standard output and error to the grader's file (``out``), standard input empty."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd in (1, 2):
        os.dup2(out, fd)
    os.close(null)
    os.close(out)


def confine(settings: dict[str, Any], start: dict[str, Any]) -> Blocker:  # pragma: no cover - runs in the child
    """Limits, a private folder, and as root a uid of its own; then the import blocker.

    Coverage cannot see the children: tests/test_grading_hostile.py and
    tests/test_grading_sandbox.py check each step by what a hostile submission can then do."""
    import resource
    import types

    stdlib = [p for p in sys.path if p not in settings["path"]]
    limits = settings["limits"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cpu = math.ceil(limits["time"]) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["output"] + 1, limits["output"] + 1))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
    os.chdir(start["workdir"])
    os.environ.update(HOME=start["workdir"], TMPDIR=start["workdir"])
    uid = start["uid"]
    isolated = isolate() if uid is not None else False  # as root: before the uid is given up
    if uid is not None:
        folders = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in stdlib if os.path.isdir(p)]
        os.setgroups([])
        os.setgid(start["gid"])
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            os._exit(99)
        libc = _libc()
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid program gives root back
        libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: its own /proc/self/fd, for the folders below
        sys.path[:] = settings["path"] + [f"/proc/self/fd/{fd}" for fd in folders]
    if not isolated:
        isolate()  # as a user (or root without CAP_SYS_ADMIN): a user namespace, where allowed
    with open("/proc/self/statm") as f:
        base = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = base + limits["memory"]
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)  # a limit the grader was started under cannot be raised (a Slurm job, a ulimit -v)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    sys.argv[:] = ["bevialm-check"]
    sys.dont_write_bytecode = True
    blocker = Blocker(set(settings["given"]))
    sys.meta_path.insert(0, blocker)
    stub = types.ModuleType("bevialm", "Given code for grading: shared infrastructure only.")
    stub.__path__ = [settings["given_dir"]]

    def missing(name: str) -> Any:
        if not name.startswith("__"):
            blocker.record(f"bevialm.{name}")
        raise AttributeError(f"module 'bevialm' has no attribute {name!r} while grading")

    stub.__getattr__ = missing  # type: ignore[method-assign]
    sys.modules["bevialm"] = stub
    return blocker


def serve(settings: dict[str, Any]) -> None:  # pragma: no cover - runs in the child
    """One check: wait for the start, confine, then answer calls until the grader says stop."""
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails instead of killing
    _capture(settings["output_fd"])
    rfd, wfd = settings["request_fd"], settings["answer_fd"]
    start, _ = receive(rfd)
    blocker = confine(settings, start)
    objects = Objects()
    while True:
        header, arrays = receive(rfd)
        if header.get("op") == "exit":
            os._exit(0)
        for h in header.get("release", []):
            objects.release(h)
        out: list[np.ndarray] = []
        results = [run_call(c, arrays, objects, out, settings) for c in header["calls"]]
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        try:
            send(wfd, {"results": results, "blocked": blocker.attempts}, out)
        except BaseException as exc:  # MemoryError while encoding, a value json cannot write
            send(wfd, {"results": [{"error": describe(exc, settings["root"])} for _ in results], "blocked": blocker.attempts}, [])


def _stop_all(started: dict[int, Any]) -> None:  # pragma: no cover - runs in the zygote
    """Kill every check still running, and as root every process of its uid (as the grader
    would have, had it not died first)."""
    import signal

    for pid, user in started.items():
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        if user is None:
            continue
        for _ in range(20):
            helper = os.fork()
            if helper == 0:
                try:
                    os.setgroups([])
                    os.setgid(user[1])
                    os.setuid(user[0])
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(helper, 0)
            time.sleep(0.005)


def zygote(settings: dict[str, Any]) -> None:  # pragma: no cover - runs in the zygote
    """Warm up once, then fork the child of each check when the grader asks (a fork takes
    milliseconds; a fresh interpreter with NumPy a few tenths of a second). The zygote runs no
    student code and knows only the settings: where the copy is, and the limits."""
    import socket

    warm_up(settings)
    control = socket.socket(fileno=settings["control_fd"])
    started: dict[int, Any] = {}  # pid -> [uid, gid] of each check's child (None when not root)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 4096, 3)
            request = json.loads(message)
        except (OSError, ValueError):  # the grader is gone (killed, say): its checks go with it
            _stop_all(started)
            import shutil

            for folder in settings.get("folders", []):  # and the folders it would have removed
                shutil.rmtree(folder, ignore_errors=True)
            os._exit(0)
        if request["op"] == "fork":
            pid = os.fork()
            if pid == 0:
                control.close()
                os.setsid()
                try:
                    serve({**settings, "request_fd": fds[0], "answer_fd": fds[1], "output_fd": fds[2]})
                except BaseException:
                    os._exit(1)
                os._exit(0)
            for fd in fds:
                os.close(fd)
            started[pid] = request.get("user")
            answer: dict[str, Any] = {"pid": pid}
        else:  # "wait": the exit code of a child, if it ends within the time given
            answer = {"code": None}
            deadline = time.monotonic() + float(request["timeout"])
            while True:
                try:
                    done, status = os.waitpid(int(request["pid"]), os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    answer["code"] = os.waitstatus_to_exitcode(status)
                    started.pop(int(request["pid"]), None)
                    break
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.002)
        control.sendall(json.dumps(answer).encode())


if __name__ == "__main__":  # pragma: no cover - the grader runs this file's source with python -I -S -c
    zygote(json.loads(sys.argv[1]))
