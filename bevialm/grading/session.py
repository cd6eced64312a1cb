"""The grader's side of a check: call the student's functions in the child, get plain values back.

A :class:`Session` is one check's conversation with its child (:mod:`bevialm.grading.child`):
``session.call("layers.linear", "forward", params, x, cfg)`` runs the student's
``forward`` over there and returns what it returned, decoded from the wire and
checked on arrival (arrays of numbers only, of the size and shape their header
says). Objects that are not plain data (a cache) come back as a
:class:`RemoteObject`: a handle to pass back to the next call (``backward``), with
the arrays of its fields as they are now, for the purity check. Arguments the
student's function changed in place are changed here too, so the grader sees a
mutation exactly as if the function had run in its own process.

:class:`LocalSession` does the same in the grader's own process (``--no-sandbox``:
fast and debugger-friendly, for one's own code only).

:func:`routed` makes the registry call the student: within it, the reference
module functions the student writes (``linear.forward`` ...) call the current
session's child instead, so the registry's bindings, the gradient checker and the
purity checks all run unchanged, in the grader, on what the child returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import os
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bevialm.grading import child as wire

ROOT = "bevialm"


class SandboxFailure(Exception):
    """The child did not answer: ``status`` is timeout, ended (it exited or crashed) or unreadable."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class StudentError(Exception):
    """The student's function raised: ``info`` has its type, message and where (file:line)."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        self.info = {k: str(info.get(k, ""))[: wire.MAX_TEXT + 3] for k in ("type", "message", "where")}
        super().__init__(f"{self.info['type']}: {self.info['message']}")


@dataclass(eq=False)
class RemoteObject:
    """An object that lives in the child (a cache): passed back by handle, its arrays seen here."""

    type_name: str
    fields: dict[str, Any] | None = None
    """Its dataclass fields as they are now (None when it is not a dataclass)."""
    handle: int = field(default=0, repr=False)
    session: Any = field(default=None, repr=False, compare=False)

    def __del__(self) -> None:
        if self.session is not None and self.handle:
            self.session.released.append(self.handle)


def student_module(reference: str) -> str:
    """``bevialm.layers.linear`` -> ``layers.linear`` (the module's name inside the submission)."""
    return reference[len(ROOT) + 1 :] if reference.startswith(ROOT + ".") else reference


class Session:
    """One check's child: calls go out over a pipe, answers come back over another."""

    def __init__(self, requests: int, answers: int, deadline: float, root: Path) -> None:
        self.root = root
        self.requests = requests
        os.set_blocking(requests, False)  # a child that stops reading must not stall a write
        self.answers = answers
        self.deadline = deadline
        self.blocked: list[str] = []
        self.released: list[int] = []
        self.objects: weakref.WeakValueDictionary[int, RemoteObject] = weakref.WeakValueDictionary()

    def call(self, module: str, function: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` of the student's ``module`` on these arguments; what it returned."""
        return self.calls([(module, function, args, kwargs)])[0]

    def calls(self, batch: Sequence[tuple[str, str, Sequence[Any], Mapping[str, Any]]], part: int | None = None) -> list[Any]:
        """Several calls in one message (each as :meth:`call`); the first exception is raised.
        With ``part``, each call returns only that item of what the function returned."""
        arrays = _Arrays()
        calls = [
            {"module": m, "function": f, "args": [_encode(a, arrays) for a in args], "kwargs": {k: _encode(v, arrays) for k, v in kwargs.items()}}
            | ({} if part is None else {"part": part})
            for m, f, args, kwargs in batch
        ]
        released, self.released = self.released, []
        try:
            wire.send(self.requests, {"op": "calls", "calls": calls, "release": released}, arrays.items, self.deadline)
            header, answer = wire.receive(self.answers, self.deadline)
        except TimeoutError:
            raise SandboxFailure("timeout", "") from None
        except (EOFError, BrokenPipeError):
            raise SandboxFailure("ended", "") from None
        except (wire.WireError, OSError) as exc:
            raise SandboxFailure("unreadable", f"its answer could not be read ({exc})") from None
        results = header.get("results")
        blocked = header.get("blocked")
        if not isinstance(results, list) or len(results) != len(batch) or not isinstance(blocked, list):
            raise SandboxFailure("unreadable", "its answer could not be read (an answer of the wrong form)")
        self.blocked = [str(b)[: wire.MAX_TEXT] for b in blocked[:20]]
        out = []
        for (_, _, args, _), result in zip(batch, results, strict=True):
            if not isinstance(result, dict):
                raise SandboxFailure("unreadable", "its answer could not be read (a result of the wrong form)")
            if "error" in result:
                raise StudentError(result["error"] if isinstance(result["error"], dict) else {})
            for item in result.get("changed", []):
                if isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and 0 <= item[0] < len(args):
                    _apply(args[item[0]], self._decode(item[1], answer))
            out.append(self._decode(result.get("value"), answer))
        return out

    def _decode(self, value: Any, arrays: list[np.ndarray], depth: int = 0) -> Any:
        if depth > wire.MAX_DEPTH + 2:
            raise SandboxFailure("unreadable", "its answer could not be read (nested too deeply)")
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, list):
            return [self._decode(v, arrays, depth + 1) for v in value]
        if not isinstance(value, dict):
            raise SandboxFailure("unreadable", "its answer could not be read (an unknown value)")
        try:
            if "__a" in value:
                return arrays[value["__a"]]
            if "__s" in value:
                return arrays[value["__s"]][()]
            if "__t" in value:
                return tuple(self._decode(v, arrays, depth + 1) for v in value["__t"])
            if "__d" in value:
                return {str(k): self._decode(v, arrays, depth + 1) for k, v in value["__d"].items()}
            if "__p" in value:  # a dict keyed by tuples (pair counts)
                return {self._decode(k, arrays, depth + 1): self._decode(v, arrays, depth + 1) for k, v in value["__p"]}
            if "__o" in value:
                fields = value.get("f")
                decoded = {str(k): self._decode(v, arrays, depth + 1) for k, v in fields.items()} if isinstance(fields, dict) else None
                handle = value.get("h")
                if not isinstance(handle, int) or handle <= 0:
                    return RemoteObject(str(value["__o"])[: wire.MAX_TEXT], decoded)
                existing = self.objects.get(handle)
                if existing is not None:
                    existing.fields = decoded
                    return existing
                obj = RemoteObject(str(value["__o"])[: wire.MAX_TEXT], decoded, handle, self)
                self.objects[handle] = obj
                return obj
        except (IndexError, TypeError, AttributeError):
            pass
        raise SandboxFailure("unreadable", "its answer could not be read (an unknown value)")

    def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            wire.send(self.requests, {"op": "exit"}, [], time.monotonic() + 0.1)
        for fd in (self.requests, self.answers):
            with contextlib.suppress(OSError):
                os.close(fd)
        for obj in list(self.objects.values()):
            obj.session = None


class _Arrays:
    """The arrays of one message, each sent once however many calls use it (the child gives
    every use its own copy)."""

    def __init__(self) -> None:
        self.items: list[np.ndarray] = []
        self.index: dict[int, int] = {}

    def add(self, value: np.ndarray) -> int:
        i = self.index.get(id(value))
        if i is None:
            i = self.index[id(value)] = len(self.items)
            self.items.append(value)
        return i


def _encode(value: Any, arrays: _Arrays, depth: int = 0) -> Any:
    """An argument for the child (the grader's own values: configs, params, generators)."""
    if depth > wire.MAX_DEPTH:
        raise ValueError("argument nested too deeply")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.ndarray):
        return {"__a": arrays.add(value)}
    if isinstance(value, np.generic):
        return {"__s": arrays.add(np.asarray(value))}
    if isinstance(value, RemoteObject):
        return {"__h": value.handle}
    if isinstance(value, tuple):
        return {"__t": [_encode(v, arrays, depth + 1) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays, depth + 1) for v in value]
    if isinstance(value, Mapping):
        return {"__d": {str(k): _encode(v, arrays, depth + 1) for k, v in value.items()}}
    if isinstance(value, type) and issubclass(value, np.generic):
        return {"__dtype": np.dtype(value).str}
    if isinstance(value, np.random.Generator):
        return {"__rng": value.bit_generator.state}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        module = student_module(type(value).__module__)
        fields = {f.name: _encode(getattr(value, f.name), arrays, depth + 1) for f in dataclasses.fields(value) if f.init}
        return {"__dc": [module, type(value).__qualname__], "f": fields}
    raise TypeError(f"cannot send a {type(value).__name__} to the child")


def _apply(original: Any, now: Any) -> None:
    """Change ``original`` (an argument the grader passed) as the student's function changed it."""
    if isinstance(original, np.ndarray) and isinstance(now, np.ndarray):
        if original.shape == now.shape and original.flags.writeable:
            np.copyto(original, now, casting="unsafe")
    elif isinstance(original, dict) and isinstance(now, dict):
        for key in list(original):
            if key not in now:
                del original[key]
        for key, value in now.items():
            old = original.get(key)
            if isinstance(old, np.ndarray) and isinstance(value, np.ndarray) and old.shape == value.shape and old.dtype == value.dtype:
                _apply(old, value)
            else:
                original[key] = value
    elif isinstance(original, RemoteObject) and isinstance(now, RemoteObject) and original is not now:
        original.fields = now.fields


class LocalSession:
    """The same calls, made in this process on the submission imported under ``package``."""

    def __init__(self, package: str, root: Path) -> None:
        self.package = package
        self.root = root
        self.blocked: list[str] = []

    def module(self, module: str) -> ModuleType:
        return importlib.import_module(f"{self.package}.{module}" if module else self.package)

    def call(self, module: str, function: str, *args: Any, **kwargs: Any) -> Any:
        args = tuple(self.student_value(a) for a in args)
        kwargs = {k: self.student_value(v) for k, v in kwargs.items()}
        return wire.student_function(self.module(module), module, function)(*args, **kwargs)

    def student_value(self, value: Any, depth: int = 0) -> Any:
        """``value`` as the child would see it: each reference dataclass (a config) rebuilt as the
        student's class of the same name, so its methods (``AdamWConfig.decays``) are the
        student's, as in the sandbox. Anything holding no reference dataclass is passed as it is
        (the same object: an argument changed in place is seen changed)."""
        if depth > wire.MAX_DEPTH:
            return value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if not type(value).__module__.startswith(ROOT + "."):
                return value  # the student's own object (the sandbox passes it back by handle)
            cls = getattr(self.module(student_module(type(value).__module__)), type(value).__qualname__)
            return cls(**{f.name: self.student_value(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value) if f.init})
        if isinstance(value, tuple | list):
            items = [self.student_value(v, depth + 1) for v in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else type(value)(items)
        if isinstance(value, dict):
            found = {k: self.student_value(v, depth + 1) for k, v in value.items()}
            return value if all(found[k] is v for k, v in value.items()) else found
        return value

    def calls(self, batch: Sequence[tuple[str, str, Sequence[Any], Mapping[str, Any]]], part: int | None = None) -> list[Any]:
        results = [self.call(m, f, *a, **k) for m, f, a, k in batch]
        return results if part is None else [r[part] for r in results]

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class _Pending:
    """Item ``part`` of what recorded call ``call`` will return."""

    call: int
    part: int


class _Recorder:
    """Records the calls routed functions make instead of making them (see :func:`evaluate`)."""

    def __init__(self) -> None:
        self.batch: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = []

    def call(self, module: str, function: str, *args: Any, **kwargs: Any) -> Any:
        self.batch.append((module, function, args, kwargs))  # sent before anything can change them
        n = len(self.batch) - 1
        return (_Pending(n, 0), _Pending(n, 1))


def evaluate(session: Session | LocalSession, f: Callable[[np.ndarray], Any], points: list[np.ndarray]) -> list[Any]:
    """``[f(p) for p in points]`` in one message to the child, when each ``f(p)`` is exactly an
    item of what one routed call returns (a bound forward's ``y``); one call at a time otherwise."""
    if isinstance(session, Session):
        recorder = _Recorder()
        token = CURRENT.set(recorder)  # type: ignore[arg-type]
        try:
            pending = [f(p) for p in points]
        finally:
            CURRENT.reset(token)
        parts = {p.part for p in pending if isinstance(p, _Pending)}
        if len(parts) == 1 and all(isinstance(p, _Pending) for p in pending) and len(recorder.batch) == len(points):
            return session.calls(recorder.batch, part=parts.pop())
    return [f(p) for p in points]


AnySession = Session | LocalSession

CURRENT: contextvars.ContextVar[AnySession | None] = contextvars.ContextVar("bevialm_grading_session", default=None)


@contextlib.contextmanager
def current(session: AnySession) -> Iterator[AnySession]:
    """Within the block (in this thread), routed functions call ``session``."""
    token = CURRENT.set(session)
    try:
        yield session
    finally:
        CURRENT.reset(token)


def _router(module: ModuleType, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    student = student_module(module.__name__)

    def call(*args: Any, **kwargs: Any) -> Any:
        session = CURRENT.get()
        if session is None:
            return original(*args, **kwargs)
        return session.call(student, name, *args, **kwargs)

    call.__wrapped__ = original  # type: ignore[attr-defined]
    return call


@contextlib.contextmanager
def routed(functions: Mapping[ModuleType, Sequence[str]]) -> Iterator[None]:
    """Within the block, each named reference function calls the current session's student
    function of the same name (or itself, where no session is current)."""
    saved = [(m, name, getattr(m, name)) for m, names in functions.items() for name in names]
    try:
        for m, name, original in saved:
            setattr(m, name, _router(m, name, original))
        yield
    finally:
        for m, name, original in saved:
            setattr(m, name, original)
