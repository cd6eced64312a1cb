"""The child protocol piece by piece, in this process: frames, values, calls, and what the grader
refuses to read. (Whole checks through real children are in test_grading_sandbox.py and
test_grading_hostile.py.)"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bevialm.grading import child as wire
from bevialm.grading.session import (
    RemoteObject,
    SandboxFailure,
    Session,
    StudentError,
    _apply,
    _Arrays,
    _encode,
)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_frames_carry_arrays_of_every_layout(pipe: tuple[int, int]) -> None:
    r, w = pipe
    arrays = [np.arange(6.0).reshape(2, 3).T, np.asarray(3.5), np.arange(4, dtype=np.int32), np.zeros((0, 3), bool)]
    wire.send(w, {"op": "x", "n": [1, 2]}, arrays)
    header, back = wire.receive(r, time.monotonic() + 5)
    assert header == {"op": "x", "n": [1, 2]}
    for a, b in zip(arrays, back, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b) and b.flags.writeable


def _raw(w: int, header: Any, data: bytes = b"") -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    os.write(w, struct.pack("<QQ", len(text), len(data)) + text + data)


@pytest.mark.parametrize(
    ("header", "data", "words"),
    [
        ({"arrays": [["|O", [1]]]}, b"\0" * 8, "may not cross"),
        ({"arrays": [["<c16", [1]]]}, b"\0" * 16, "may not cross"),
        ({"arrays": [["nonsense", [1]]]}, b"", "bad dtype"),
        ({"arrays": [[7, [1]]]}, b"", "bad dtype"),
        ({"arrays": [["<f8", [-1]]]}, b"", "bad shape"),
        ({"arrays": [["<f8", [True]]]}, b"", "bad shape"),
        ({"arrays": [["<f8", [4]]]}, b"\0" * 8, "shorter"),
        ({"arrays": [["<f8", [1]]]}, b"\0" * 16, "longer"),
        ({"arrays": ["<f8"]}, b"", "bad array description"),
        ({"no": "arrays"}, b"", "wrong form"),
        (b"{not json", b"", "not JSON"),
        (b"[1, 2]", b"", "wrong form"),
    ],
)
def test_the_grader_refuses_what_send_never_writes(pipe: tuple[int, int], header: Any, data: bytes, words: str) -> None:
    r, w = pipe
    _raw(w, header, data)
    with pytest.raises(wire.WireError, match=words):
        wire.receive(r, time.monotonic() + 5)


def test_oversized_frames_are_refused_unread_and_silence_times_out(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, struct.pack("<QQ", 2**40, 0))
    with pytest.raises(wire.WireError, match="too large"):
        wire.receive(r, time.monotonic() + 5)
    with pytest.raises(TimeoutError):
        wire.receive(r, time.monotonic() + 0.05)
    os.close(w)
    with pytest.raises(EOFError):
        wire.receive(r, time.monotonic() + 5)


@dataclass
class Cache:
    x: np.ndarray
    inner: Any = None


def test_the_child_encodes_results_and_decodes_arguments() -> None:
    objects = wire.Objects()
    out: list[np.ndarray] = []
    cache = Cache(np.ones(2), Cache(np.zeros(1)))
    value = (np.arange(3.0), np.float32(2.0), [1, "s" * 1000], {"k": None}, cache, lambda: 0, 2**70, np.array(["a"]))
    encoded = wire.encode(value, out, objects)
    assert encoded["__t"][0] == {"__a": 0} and encoded["__t"][1] == {"__s": 1}
    assert len(encoded["__t"][2][1]) == wire.MAX_TEXT
    assert encoded["__t"][4]["__o"] == "Cache" and set(encoded["__t"][4]["f"]) == {"x", "inner"}
    assert encoded["__t"][5]["__o"] == "function" and encoded["__t"][6] == {"__o": "int (too large)"}
    handle = encoded["__t"][4]["h"]
    assert wire.encode(cache, [], objects)["h"] == handle  # the same object keeps its handle
    deep: Any = []
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    assert "__o" in json.dumps(wire.encode(deep, [], objects))

    rng = np.random.default_rng(3)
    args = [{"__a": 0}, {"__s": 1}, {"__t": [1, 2]}, {"__d": {"a": [1]}}, {"__h": handle}, {"__dtype": "<f4"}, {"__rng": rng.bit_generator.state}]
    decoded = wire.decode(args, out, objects, "unused")
    assert np.array_equal(decoded[0], np.arange(3.0)) and decoded[0] is not out[0]
    assert decoded[1] == 2.0 and decoded[2] == (1, 2) and decoded[3] == {"a": [1]} and decoded[4] is cache
    assert decoded[5] is np.float32 and decoded[6].random() == np.random.default_rng(3).random()
    with pytest.raises(ValueError, match="cannot decode"):
        wire.decode({"__what": 1}, out, objects, "unused")
    objects.release(handle)
    objects.release(handle)
    assert handle not in objects.by_handle


@pytest.fixture
def package(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A tiny student package importable as ``wire_pkg``, and the child's settings for it."""
    folder = tmp_path / "wire_pkg"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "mod.py").write_text(
        "from dataclasses import dataclass\n"
        "@dataclass(frozen=True)\n"
        "class Cfg:\n    n: int\n\n"
        "def double(x, cfg):\n    return x * cfg.n, {'seen': x.copy()}\n\n"
        "def scale_in_place(params):\n    params['w'] *= 2\n    params['new'] = 1.0\n    return None\n\n"
        "def fail(x):\n    raise ValueError('bad ' * 200)\n\n"
        "def leave():\n    raise SystemExit(3)\n\n"
        "NOT_A_FUNCTION = 1\n"
    )
    sys.path.insert(0, str(tmp_path))
    yield {"package": "wire_pkg", "root": str(folder)}
    sys.path.remove(str(tmp_path))
    for name in [n for n in sys.modules if n.startswith("wire_pkg")]:
        del sys.modules[name]


def _call(settings: dict[str, Any], function: str, args: list[Any], arrays: list[np.ndarray], **extra: Any) -> dict[str, Any]:
    call = {"module": "mod", "function": function, "args": args, "kwargs": {}, **extra}
    return wire.run_call(call, arrays, wire.Objects(), [], settings)


def test_calls_return_values_changes_and_exceptions(package: dict[str, Any]) -> None:
    x = np.arange(3.0)
    done = _call(package, "double", [{"__a": 0}, {"__dc": ["mod", "Cfg"], "f": {"n": 2}}], [x])
    assert done["changed"] == [] and done["value"]["__t"][0] == {"__a": 0}
    part = _call(package, "double", [{"__a": 0}, {"__dc": ["mod", "Cfg"], "f": {"n": 2}}], [x], part=0)
    assert part["value"] == {"__a": 0}
    changed = _call(package, "scale_in_place", [{"__d": {"w": {"__a": 0}}}], [x])
    assert changed["changed"][0][0] == 0 and set(changed["changed"][0][1]["__d"]) == {"w", "new"}
    error = _call(package, "fail", [1], [])["error"]
    assert error["type"] == "ValueError" and error["message"].endswith("...") and error["where"].startswith("mod.py:")
    assert _call(package, "leave", [], [])["error"]["message"] == "sys.exit(3) was called"
    for name in ("missing", "NOT_A_FUNCTION"):
        assert _call(package, name, [], [])["error"]["message"] == f"mod.py has no function {name!r}"


def test_the_blocker_refuses_and_remembers() -> None:
    blocker = wire.Blocker({"bevialm.types"})
    for allowed in ("bevialm", "bevialm.types", "numpy"):
        blocker.find_spec(allowed)  # left to the usual finders
    assert blocker.attempts == []
    with pytest.raises(ImportError, match="reference implementation"):
        blocker.find_spec("bevialm.layers.linear")
    for i in range(30):
        blocker.record(f"bevialm.x{i}")
    assert blocker.attempts[0] == "bevialm.layers.linear" and len(blocker.attempts) == 20


def _session(pipe: tuple[int, int]) -> Session:
    r, w = pipe
    return Session(w, r, time.monotonic() + 5, Path("/nowhere"))


@pytest.mark.parametrize("value", [{"__a": 5}, {"__what": 1}, {"__t": 3}, {"__o": "x", "f": {"a": {"__a": 9}}}, object()])
def test_the_grader_refuses_values_it_cannot_read(pipe: tuple[int, int], value: Any) -> None:
    with pytest.raises(SandboxFailure) as failed:
        _session(pipe)._decode(value, [])
    assert failed.value.status == "unreadable"


def test_the_grader_decodes_answers_and_mirrors_changes(pipe: tuple[int, int]) -> None:
    session = _session(pipe)
    arrays = [np.arange(2.0), np.asarray(1.5)]
    value = session._decode({"__t": [{"__a": 0}, {"__s": 1}, [None, "s"], {"__d": {"k": 1}}]}, arrays)
    assert np.array_equal(value[0], arrays[0]) and value[1] == 1.5 and value[2] == [None, "s"] and value[3] == {"k": 1}
    obj = session._decode({"__o": "Cache", "h": 4, "f": {"x": {"__a": 0}}}, arrays)
    again = session._decode({"__o": "Cache", "h": 4, "f": {"x": {"__a": 1}}}, arrays)
    assert again is obj and isinstance(obj.fields, dict) and obj.fields["x"] == 1.5
    assert session._decode({"__o": "function"}, arrays).handle == 0
    deep: Any = {"__a": 0}
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(SandboxFailure):
        session._decode(deep, arrays)
    del obj, again
    assert 4 in session.released

    params = {"w": np.zeros(2), "gone": np.zeros(1), "reshaped": np.zeros(3)}
    kept = params["w"]
    _apply(params, {"w": np.ones(2), "reshaped": np.ones(2), "new": 1.0})
    assert params["w"] is kept and np.array_equal(kept, np.ones(2)) and set(params) == {"w", "reshaped", "new"}
    remote, now = RemoteObject("C", {"a": 1}), RemoteObject("C", {"a": 2})
    _apply(remote, now)
    assert remote.fields == {"a": 2}


def test_the_grader_encodes_its_arguments_once_each() -> None:
    arrays = _Arrays()
    w = np.ones(2)

    @dataclass(frozen=True)
    class Cfg:
        n: int

    encoded = _encode(({"w": w, "v": w}, [np.float32(2)], np.float32, np.random.default_rng(0), Cfg(1), RemoteObject("C", None, 7)), arrays)
    assert len(arrays.items) == 2  # w once, the scalar once
    items = encoded["__t"]
    assert items[2] == {"__dtype": "<f4"} and "__rng" in items[3] and items[4]["f"] == {"n": 1} and items[5] == {"__h": 7}
    with pytest.raises(TypeError, match="cannot send"):
        _encode(object(), arrays)


def test_a_student_exception_keeps_only_its_description() -> None:
    error = StudentError({"type": "ValueError", "message": "m" * 1000, "where": "mod.py:1 in f", "extra": "dropped"})
    assert set(error.info) == {"type", "message", "where"} and len(error.info["message"]) <= wire.MAX_TEXT + 3
