"""The checks' work: call the student's functions (through a session) and record what came back.

Each task runs in the grader's process. The registry's bindings, the gradient
checker and the purity checks run here unchanged; within a task, the reference
functions a student writes are routed (:func:`bevialm.grading.session.routed`) to
the session, which runs the student's function in the check's child and returns
its plain results. What came back is recorded in an :class:`~bevialm.grading.observation.Observation`,
which the check's judge (:mod:`bevialm.grading.kinds`) compares with the reference.
So the student's code never sees a reference result, a checker or a verdict.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bevialm import model
from bevialm.gradcheck import purity_problems, structure_problems, vjp_check
from bevialm.grading.compare import compare
from bevialm.grading.observation import Findings, Observation, StudentFault, store, store_mapping, type_name
from bevialm.grading.session import (
    CURRENT,
    AnySession,
    SandboxFailure,
    StudentError,
    current,
    evaluate,
    student_module,
)
from bevialm.registry import BY_NAME, Bound, Case, PairSpec
from bevialm.types import Array, IntArray

MAX_MESSAGE = 300
"""Longest exception message kept in a report."""

MODEL_MODULE = "model"
"""The student-side module of the model's glue (given code when the model is not graded)."""


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
    AdamW, the schedule, clipping. ``run(call, obs)`` calls the student's functions through
    ``call`` (the session's) and records what came back in ``obs``."""

    check_id: str
    subject: str
    kind: str
    run: Callable[[Callable[..., Any], Observation], None]


Task = PairTask | ModelTask | TrainingTask


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


def describe(exc: BaseException, root: Path) -> StudentFault:
    if isinstance(exc, StudentError):
        return StudentFault(exc.info["type"], exc.info["message"], exc.info["where"])
    if isinstance(exc, SystemExit):
        message = f"sys.exit({exc.code!r}) was called"
    else:
        message = str(exc)
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    return StudentFault(type(exc).__name__, message, where(exc, root))


def _structure(params: Any) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        return {"type": type_name(params)}
    return {
        str(k): [list(v.shape), str(v.dtype)] if isinstance(v, np.ndarray) else type_name(v)
        for k, v in params.items()
    }


# --- the per-kind runners -----------------------------------------------------------------


def _forward(task: PairTask, spec: PairSpec, obs: Observation) -> None:
    for i, p in enumerate(task.points):
        obs.case = i
        y, _ = spec.bind(p.case).forward(p.params, p.x)
        store(obs, f"{i}/y", y)


def _backward(task: PairTask, spec: PairSpec, obs: Observation) -> None:
    """Every case's forward first, then the backwards in the reverse order, each given its own
    case's cache: a backward that works from state its module kept from the last forward (a
    global) instead of from the cache it is given gets every case but the last one wrong."""
    caches = []
    for i, p in enumerate(task.points):
        obs.case = i
        caches.append(spec.bind(p.case).forward(p.params, p.x)[1])
    for i in reversed(range(len(task.points))):
        p = task.points[i]
        obs.case = i
        dx, grads = spec.bind(p.case).backward(p.params, caches[i], p.dy)
        store(obs, f"{i}/dx", dx)
        store_mapping(obs, f"{i}/grads", grads)


def _gradcheck(task: PairTask, spec: PairSpec, obs: Observation) -> None:
    session = _session()
    for i, p in enumerate(task.points):
        obs.case = i
        obs.findings[i] = _gradcheck_case(spec.bind(p.case), p, task.gradcheck_entries, session)


def _gradcheck_case(bound: Bound, p: PointInput, entries: int, session: AnySession) -> Findings:
    """The gradient check of one case, every output of the student's forward kept to be held
    against the reference's forward on the same input (see :func:`_probes_differ`)."""
    calls: list[tuple[Callable[[Array], Any], Array, Any]] = []  # every probe: (f, point, f(point))
    first: list[Any] = []

    def kept(f: Callable[[Array], Any], points: list[Array]) -> list[Any]:
        outputs = evaluate(session, f, points)
        calls.extend((f, z, y) for z, y in zip(points, outputs, strict=True))
        return outputs

    def forward(params: Mapping[str, Array], x: Array) -> tuple[Array, Any]:
        y, cache = bound.forward(params, x)
        if not first:
            first.append(y)  # the case's own point: the checker's first call
        return y, cache

    rng = np.random.default_rng([p.case.seed, 99])
    report = vjp_check(forward, bound.backward, p.params, p.x, rng=rng, max_elements=entries or None, evaluate=kept)
    differ = _probes_differ(bound, p, first[0], calls) if first else ""
    return Findings(list(report.problems), list(report.results), probes_differ=differ)


def _probes_differ(bound: Bound, p: PointInput, y: Any, calls: list[tuple[Callable[[Array], Any], Array, Any]]) -> str:
    """Where the student's forward, right (``y``) at the case's own point, gave at a finite
    difference's point another output than the reference's forward on the same input ("" if
    nowhere): a forward that tells the checker's probes from other calls and answers them otherwise."""
    token = CURRENT.set(None)  # the reference's own functions from here on
    try:
        if not _agrees(y, bound.forward(p.params, p.x)[0]):
            return ""  # a wrong forward: the gradient check judges it against itself, as ever
        for n, (f, z, got) in enumerate(calls):
            if not _agrees(got, f(z)):
                return f"the {_ordinal(n + 1)} of {len(calls)} points"
        return ""
    finally:
        CURRENT.reset(token)


def _agrees(got: Any, want: Any) -> bool:
    if not (isinstance(got, np.ndarray) and got.dtype.kind in "biuf"):
        return True  # not a number: the checker itself reports it
    return compare("y", got, np.asarray(want), None).passed


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


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


def _purity(task: PairTask, spec: PairSpec, obs: Observation) -> None:
    session = _session()
    module = student_module(spec.module.__name__)
    for i, p in enumerate(task.points):
        obs.case = i
        found = obs.findings[i] = Findings()
        if "init" in spec.functions:
            found.init = _structure(spec.init(p.case.cfg, np.random.default_rng(0)))
            found.init_default = _structure(session.call(module, "init", p.case.cfg, np.random.default_rng(0)))
        bound = spec.bind(p.case)
        y, cache = bound.forward(p.params, p.x)
        found.y = (tuple(np.shape(y)), str(getattr(y, "dtype", type(y).__name__)))
        dx, grads = bound.backward(p.params, cache, p.dy)
        if not isinstance(grads, Mapping):
            found.problems.append(f"backward returned grads as a {type_name(grads)}, not a dict")
        else:
            found.problems += structure_problems(p.params, grads, dx, p.x)
            found.problems += purity_problems(bound.forward, bound.backward, p.params, p.x, p.dy)
            found.problems += _float32(bound, p)


PROBED = frozenset({"forward", "backward", "gradcheck"})
"""Kinds of check whose wrong numbers a faulty helper can explain (see ``PairSpec.probes``)."""


def _probe(spec: PairSpec, obs: Observation) -> None:
    """The student's helpers on the registry's probes: what each returned, or what it raised."""
    session = _session()
    module = student_module(spec.module.__name__)
    for j, p in enumerate(spec.probes):
        try:
            store(obs, f"probe/{j}", session.call(module, p.function, *p.args))
        except SandboxFailure:
            raise
        except Exception as exc:  # evidence about the helper, not a failure of the check
            raised = exc.info["type"] if isinstance(exc, StudentError) else type(exc).__name__
            obs.types[f"probe/{j}"] = f"raised {raised}"


def _session() -> AnySession:
    session = CURRENT.get()
    assert session is not None, "tasks run within bevialm.grading.session.current"
    return session


PAIR_RUNNERS: dict[str, Callable[[PairTask, PairSpec, Observation], None]] = {
    "forward": _forward,
    "backward": _backward,
    "gradcheck": _gradcheck,
    "purity": _purity,
}


def _model(task: ModelTask, obs: Observation) -> None:
    session = _session()
    params = dict(task.params)
    losses = []
    for step in range(task.steps + 1):
        rng = np.random.default_rng([task.seed, step]) if task.cfg.dropout else None
        loss, grads = session.call(MODEL_MODULE, "loss_and_grads", params, task.idx, task.targets, task.cfg, rng=rng)
        if not isinstance(grads, Mapping):
            raise TypeError(f"loss_and_grads returned the gradients as a {type_name(grads)}, not a dict")
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
                    got = grad.shape if isinstance(grad, np.ndarray) else type_name(grad)
                    raise ValueError(f"cannot take a gradient step: the gradient of {key!r} is {got}, its parameter {value.shape}")
            params = {k: v - task.lr * grads[k] for k, v in params.items()}
    store(obs, "losses", np.asarray(losses))


def run_task(task: Task, session: AnySession) -> Observation:
    """Run one check's student code through ``session``; the student's exceptions (and
    ``sys.exit``) are recorded in the observation, never raised. A child that stops
    answering raises :class:`~bevialm.grading.session.SandboxFailure`."""
    obs = Observation()
    try:
        with current(session):
            if isinstance(task, PairTask):
                spec = BY_NAME[task.pair]
                PAIR_RUNNERS[task.kind](task, spec, obs)
                if task.kind in PROBED:
                    _probe(spec, obs)
            elif isinstance(task, TrainingTask):
                task.run(session.call, obs)
            else:
                _model(task, obs)
    except SandboxFailure:
        raise
    except (Exception, SystemExit) as exc:
        obs.error = describe(exc, session.root)
    return obs
