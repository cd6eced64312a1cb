"""What runs student code: one check's task, executed in a sandboxed child (or in-process).

A task carries trusted inputs from the grader (cases, parameters, inputs,
cotangents); running it imports the submission and records what the
student's functions return: an :class:`Observation` of plain arrays and JSON
metadata. Every comparison with the reference happens afterwards in the
grader's own process (:mod:`bevialm.grading.grade`), so student code can
neither see the reference results nor touch the verdict. Observations cross
the process boundary through :func:`encode` / :func:`decode`: an ``.npz``
archive read with ``allow_pickle=False``, so a hostile child cannot make the
grader run code by unpickling.
"""

from __future__ import annotations

import io
import json
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bevialm import model
from bevialm.gradcheck import purity_problems, structure_problems, vjp_check
from bevialm.grading.student import PACKAGE, import_package, student_module, substituted
from bevialm.registry import BY_NAME, Bound, Case, PairSpec
from bevialm.types import Array, IntArray

MAX_MESSAGE = 300
"""Longest exception message kept in a report."""


@dataclass(frozen=True)
class Submission:
    """Where the student's package is and the package name to import it under."""

    root: str
    package: str = PACKAGE


@dataclass(frozen=True)
class PointInput:
    """One case of a pair with its float64 parameters, input and cotangent (made by the grader)."""

    case: Case
    params: dict[str, Array]
    x: Array
    dy: Array


@dataclass(frozen=True)
class PairTask:
    """A per-pair check: ``kind`` is forward, backward, gradcheck or purity."""

    check_id: str
    kind: str
    pair: str
    points: tuple[PointInput, ...]
    gradcheck_entries: int = 0


@dataclass(frozen=True)
class ModelTask:
    """A whole-model check: ``kind`` is loss_and_grads or training."""

    check_id: str
    kind: str
    cfg: model.ModelConfig
    params: dict[str, Array]
    idx: IntArray
    targets: IntArray
    seed: int
    steps: int = 0
    lr: float = 0.0


@dataclass(frozen=True)
class TrainingTask:
    """A check beyond the pairs (:mod:`bevialm.grading.training`): the model's own functions,
    AdamW, the schedule, clipping. ``cases`` holds the inputs (and the reference's answers,
    which the student's side never reads)."""

    check_id: str
    subject: str
    kind: str
    cases: Any


Task = PairTask | ModelTask | TrainingTask


@dataclass
class Observation:
    """What the student's code returned: arrays by key, and JSON-able metadata.

    ``meta["error"]`` describes an exception (None when there was none);
    ``meta["types"]`` names what was returned where an array was expected;
    ``meta["cases"]`` holds per-case findings (gradient-check results, purity problems).
    """

    arrays: dict[str, Array] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=lambda: {"error": None, "types": {}, "cases": {}})


class ResultError(Exception):
    """A child's result could not be read (it is not what :func:`encode` writes)."""


def encode(obs: Observation) -> bytes:
    buf = io.BytesIO()
    meta = np.frombuffer(json.dumps(obs.meta).encode("utf-8"), dtype=np.uint8)
    arrays: dict[str, Any] = {"a:" + k: v for k, v in obs.arrays.items()}
    np.savez(buf, __meta__=meta, **arrays)
    return buf.getvalue()


def decode(data: bytes) -> Observation:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {k[2:]: archive[k] for k in archive.files if k.startswith("a:")}
            meta = json.loads(archive["__meta__"].tobytes().decode("utf-8"))
    except Exception as exc:
        raise ResultError(f"unreadable result ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or not {"error", "types", "cases"} <= set(meta):
        raise ResultError("unreadable result (metadata of the wrong form)")
    return Observation(arrays, meta)


# --- describing what went wrong -----------------------------------------------------------


def where(exc: BaseException, root: Path) -> str:
    """The innermost frame of ``exc``'s traceback in the submission (``layers/linear.py:52 in
    forward``), or the innermost frame overall when none is."""
    frames = traceback.extract_tb(exc.__traceback__)
    resolved = root.resolve()
    for frame in reversed(frames):
        try:
            rel = Path(frame.filename).resolve().relative_to(resolved)
        except ValueError:
            continue
        return f"{rel.as_posix()}:{frame.lineno} in {frame.name}"
    if not frames:
        return ""
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name} (grader side)"


def describe(exc: BaseException, root: Path) -> dict[str, Any]:
    if isinstance(exc, SystemExit):
        message = f"sys.exit({exc.code!r}) was called"
    else:
        message = str(exc)
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    return {"type": type(exc).__name__, "message": message, "where": where(exc, root)}


def store(obs: Observation, key: str, value: Any) -> None:
    """Record ``value`` under ``key``: numeric arrays as they are, numbers as 0-d arrays (the
    type noted), anything else by its type name only."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        obs.arrays[key] = value
        return
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        obs.arrays[key] = np.asarray(value)
    obs.meta["types"][key] = type(value).__name__ if not isinstance(value, np.ndarray) else f"{value.dtype} array"


def _structure(params: Any) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        return {"type": type(params).__name__}
    return {
        str(k): [list(v.shape), str(v.dtype)] if isinstance(v, np.ndarray) else type(v).__name__
        for k, v in params.items()
    }


# --- the per-kind runners -----------------------------------------------------------------


def _forward(task: PairTask, spec: PairSpec, obs: Observation, case: Callable[[int], None]) -> None:
    for i, p in enumerate(task.points):
        case(i)
        y, _ = spec.bind(p.case).forward(p.params, p.x)
        store(obs, f"{i}/y", y)


def _backward(task: PairTask, spec: PairSpec, obs: Observation, case: Callable[[int], None]) -> None:
    for i, p in enumerate(task.points):
        case(i)
        bound = spec.bind(p.case)
        _, cache = bound.forward(p.params, p.x)
        dx, grads = bound.backward(p.params, cache, p.dy)
        store(obs, f"{i}/dx", dx)
        if not isinstance(grads, Mapping):
            obs.meta["types"][f"{i}/grads"] = type(grads).__name__
            continue
        obs.meta["cases"][str(i)] = {"grad_keys": sorted(str(k) for k in grads)}
        for key, g in grads.items():
            store(obs, f"{i}/grad/{key}", g)


def _gradcheck(task: PairTask, spec: PairSpec, obs: Observation, case: Callable[[int], None]) -> None:
    for i, p in enumerate(task.points):
        case(i)
        bound = spec.bind(p.case)
        report = vjp_check(
            bound.forward,
            bound.backward,
            p.params,
            p.x,
            rng=np.random.default_rng([p.case.seed, 99]),
            max_elements=task.gradcheck_entries or None,
        )
        obs.meta["cases"][str(i)] = {
            "problems": list(report.problems),
            "results": [
                {
                    "name": r.name,
                    "passed": r.passed,
                    "abs": r.max_abs_error,
                    "analytic": r.analytic,
                    "numeric": r.numeric,
                    "index": list(r.worst_index),
                }
                for r in report.results
            ],
        }


def _float32(bound: Bound, p: PointInput) -> list[str]:
    """The contract's dtype rule: float32 in, float32 out (no silent upcast)."""
    p32 = {k: v.astype(np.float32) for k, v in p.params.items()}
    x32 = p.x.astype(np.float32) if np.issubdtype(p.x.dtype, np.floating) else p.x
    y, cache = bound.forward(p32, x32)
    dx, grads = bound.backward(p32, cache, np.asarray(p.dy, dtype=np.float32))
    problems = []
    if getattr(y, "dtype", None) != np.float32:
        problems.append(f"with float32 params and input, forward returned {getattr(y, 'dtype', type(y).__name__)} (expected float32)")
    if dx is not None and getattr(dx, "dtype", None) != np.float32:
        problems.append(f"with float32 params and input, dx is {getattr(dx, 'dtype', type(dx).__name__)} (expected float32)")
    if isinstance(grads, Mapping):
        wrong = sorted(str(k) for k, g in grads.items() if getattr(g, "dtype", None) != np.float32)
        if wrong:
            problems.append(f"with float32 params and input, grads {wrong} are not float32")
    return problems


def _purity(task: PairTask, spec: PairSpec, obs: Observation, case: Callable[[int], None]) -> None:
    student = student_module(spec.module, _package(obs))
    for i, p in enumerate(task.points):
        case(i)
        found: dict[str, Any] = {"problems": []}
        if "init" in spec.functions:
            found["init"] = _structure(spec.init(p.case.cfg, np.random.default_rng(0)))
            found["init_default"] = _structure(student.init(p.case.cfg, np.random.default_rng(0)))
        bound = spec.bind(p.case)
        y, cache = bound.forward(p.params, p.x)
        found["y"] = [list(np.shape(y)), str(getattr(y, "dtype", type(y).__name__))]
        dx, grads = bound.backward(p.params, cache, p.dy)
        if not isinstance(grads, Mapping):
            found["problems"].append(f"backward returned grads as a {type(grads).__name__}, not a dict")
        else:
            found["problems"] += structure_problems(p.params, grads, dx, p.x)
            found["problems"] += purity_problems(bound.forward, bound.backward, p.params, p.x, p.dy)
            found["problems"] += _float32(bound, p)
        obs.meta["cases"][str(i)] = found


PROBED = frozenset({"forward", "backward", "gradcheck"})
"""Kinds of check whose wrong numbers a faulty helper can explain (see :data:`PairSpec.probes`)."""


def _probe(spec: PairSpec, obs: Observation) -> None:
    """The student's helpers on the registry's probes: what each returned, or what it raised."""
    student = student_module(spec.module, _package(obs))
    for j, p in enumerate(spec.probes):
        try:
            store(obs, f"probe/{j}", getattr(student, p.function)(*p.args))
        except Exception as exc:  # evidence about the helper, not a failure of the check
            obs.meta["types"][f"probe/{j}"] = f"raised {type(exc).__name__}"


def _package(obs: Observation) -> str:
    return str(obs.meta["package"])


PAIR_RUNNERS: dict[str, Callable[[PairTask, PairSpec, Observation, Callable[[int], None]], None]] = {
    "forward": _forward,
    "backward": _backward,
    "gradcheck": _gradcheck,
    "purity": _purity,
}


def _model(task: ModelTask, obs: Observation) -> None:
    student_model = student_module(model, _package(obs))  # the student's, or the handed-out copy
    params = dict(task.params)
    losses = []
    for step in range(task.steps + 1):
        rng = np.random.default_rng([task.seed, step]) if task.cfg.dropout else None
        loss, grads = student_model.loss_and_grads(params, task.idx, task.targets, task.cfg, rng=rng)
        losses.append(float(loss))
        if task.kind == "loss_and_grads":
            store(obs, "loss", np.asarray(loss, dtype=np.float64))
            for key, g in grads.items():
                store(obs, f"grad/{key}", g)
            return
        if step < task.steps:
            for key, value in params.items():
                grad = grads.get(key)
                if not isinstance(grad, np.ndarray) or grad.shape != value.shape:
                    got = grad.shape if isinstance(grad, np.ndarray) else type(grad).__name__
                    raise ValueError(f"cannot take a gradient step: the gradient of {key!r} is {got}, its parameter {value.shape}")
            params = {k: v - task.lr * grads[k] for k, v in params.items()}
    store(obs, "losses", np.asarray(losses))


def run_task(task: Task, submission: Submission) -> Observation:
    """Import the submission and run one check's student code; exceptions (and ``sys.exit``)
    are recorded in the observation, never raised."""
    obs = Observation()
    obs.meta["package"] = submission.package

    def case(i: int) -> None:
        obs.meta["case"] = i

    try:
        import_package(Path(submission.root), submission.package)
        if isinstance(task, PairTask):
            spec = BY_NAME[task.pair]
            with substituted(spec, submission.package):
                PAIR_RUNNERS[task.kind](task, spec, obs, case)
                if task.kind in PROBED:
                    _probe(spec, obs)
        elif isinstance(task, TrainingTask):
            from bevialm.grading import training

            def call(module: str, function: str, *args: Any, **kwargs: Any) -> Any:
                return getattr(student_module(f"bevialm.{module}", submission.package), function)(*args, **kwargs)

            training.run(task.subject, task.kind, task.cases, call, obs)
        else:
            _model(task, obs)
    except (Exception, SystemExit) as exc:
        obs.meta["error"] = describe(exc, Path(submission.root))
    return obs
