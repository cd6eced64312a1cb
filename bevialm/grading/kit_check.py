"""The student kit's checker: the visible checks, run on the student's own machine with NumPy only.

``bevialm student-kit OUT`` (:mod:`bevialm.grading.kit`) copies this module into the kit as
``check/checks.py``, beside ``cases.json`` (the checks, their cases and the arguments of every
call) and ``expected.npz`` (every array: the inputs, and the answers the reference gave, stored
without pickle). Nothing here is a solution: the checker calls the student's functions, compares
what they return with the stored answers by the grader's rules (``|yours - reference| <= atol +
rtol |reference|``, exact for tokens and texts) and runs the self-consistency checks
(finite differences, purity) as the grader does, with the gradient checker
(``bevialm/gradcheck.py``, copied into the kit). Only pass or fail per check and a short hint
come out: the grader's own hints are richer.

It imports nothing of BeviaLLM but the gradient checker, so it runs in the kit as it runs here
(the tests run it in this process on planted mistakes, and in a venv that holds only NumPy).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bevialm.gradcheck import DEFAULT, purity_problems, structure_problems, vjp_check

__all__ = ["DEFAULT", "KitError", "check_package", "main", "plain", "report"]

Verdict = tuple[bool, str]
"""``(passed, hint)`` of one check."""


class KitError(Exception):
    """The kit cannot run (no package, a damaged cases file); the message is one line."""


# --- reading the stored cases ---------------------------------------------------------------


class Decoder:
    """Rebuilds stored values: arrays from ``expected.npz`` (a fresh copy each time, so one call's
    mutation stays its own) and configs as the student's own dataclasses."""

    def __init__(self, arrays: Mapping[str, np.ndarray], package: str) -> None:
        self.arrays, self.package = arrays, package

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__a" in value:
            return np.array(self.arrays[f"a{value['__a']}"], copy=True)
        if "__s" in value:
            return np.array(self.arrays[f"a{value['__s']}"])[()]
        if "__t" in value:
            return tuple(self(v) for v in value["__t"])
        if "__d" in value:
            return {k: self(v) for k, v in value["__d"].items()}
        if "__dtype" in value:
            return np.dtype(value["__dtype"]).type
        if "__dc" in value:
            module, name = value["__dc"]
            cls = getattr(importlib.import_module(f"{self.package}.{module}" if module else self.package), name)
            return cls(**{k: self(v) for k, v in value["f"].items()})
        raise KitError(f"cases.json holds a value the checker cannot read ({sorted(value)})")


# --- comparing ---------------------------------------------------------------------------------


def as_array(value: Any) -> np.ndarray | None:
    """A returned value as the grader records it: numeric arrays as they are, numbers as 0-d
    arrays, anything else None."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return np.asarray(value)
    return None


def close(name: str, value: Any, want: Any) -> str:
    """"" when ``value`` matches ``want`` within the tolerances, else what is wrong."""
    got = as_array(value)
    want = np.asarray(want)
    if got is None:
        return f"{name} is a {type(value).__name__}, expected an array of shape {want.shape}"
    if got.shape != want.shape:
        return f"{name} has shape {got.shape}, the reference's has {want.shape}"
    a, n = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if not np.isfinite(a).all():
        return f"{name} contains NaN or inf"
    if (np.abs(a - n) <= DEFAULT.atol + DEFAULT.rtol * np.abs(n)).all():
        return ""
    return f"{name} differs from the reference (largest difference {float(np.max(np.abs(a - n))):.3g})"


def mapping(name: str, value: Any, want: Mapping[str, Any], *, extra_allowed: bool = False) -> list[str]:
    """What is wrong with the dict ``value`` against ``want``, tensor by tensor."""
    if not isinstance(value, Mapping):
        return [f"{name} is a {type(value).__name__}, expected a dict"]
    problems = [f"{name}[{k!r}] is missing" for k in want if k not in value]
    problems += [close(f"{name}[{k!r}]", value[k], w) for k, w in want.items() if k in value]
    extra = sorted(str(k) for k in value if k not in want)
    if extra and not extra_allowed:
        problems.append(f"{name} has unexpected keys {extra}")
    return [p for p in problems if p]


def plain(kind: str, value: Any) -> Any:
    """A BPE answer in the form it is compared in (JSON-able), or ``"returned T"``: shared with
    the grader (:mod:`bevialm.grading.bpe_task`), so both judge alike."""
    try:
        if kind == "decode":
            if isinstance(value, str):
                return value
        elif kind == "stats":
            if isinstance(value, Mapping):
                return sorted([*_pair(k), _int(v)] for k, v in value.items())
        elif kind == "train":
            if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str):
                return [_pair(p) for p in value]
        elif isinstance(value, Sequence | np.ndarray) and not isinstance(value, str):
            return [_int(i) for i in value]
    except (TypeError, ValueError):
        pass
    return f"returned {type(value).__name__}"


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError("not an integer")
    return int(value)


def _pair(value: Any) -> list[int]:
    if isinstance(value, str) or len(value) != 2:
        raise ValueError("not a pair")
    return [_int(value[0]), _int(value[1])]


def first(problems: Sequence[str], label: str) -> Verdict:
    problems = [p for p in problems if p]
    return (False, f"{problems[0]} ({label})") if problems else (True, "ok")


# --- the checks --------------------------------------------------------------------------------


class Student:
    """The student's package, imported under its folder's name."""

    def __init__(self, package: str) -> None:
        self.package = package

    def function(self, module: str, name: str) -> Callable[..., Any]:
        found = getattr(importlib.import_module(f"{self.package}.{module}" if module else self.package), name, None)
        if not callable(found):
            raise AttributeError(f"{module.replace('.', '/')}.py has no function {name}")
        function: Callable[..., Any] = found
        return function


Bind = tuple[Callable[[Any, Any], Any], Callable[[Any, Any, Any], Any]]


def bind(student: Student, data: Mapping[str, Any], case: Mapping[str, Any], cfg: Any, targets: Any) -> Bind:
    """A pair with its case bound in, as the grader's registry binds it."""
    module = data["module"]
    if data["bind"] == "ce":
        loss, loss_backward = student.function(module, "cross_entropy"), student.function(module, "cross_entropy_backward")
        return (lambda params, x: loss(x, targets)), (lambda params, cache, dy: (loss_backward(cache, dy), {}))
    forward, backward = student.function(module, "forward"), student.function(module, "backward")
    if data["bind"] == "seeded":
        seed = case["seed"]
        return (lambda params, x: forward(params, x, cfg, rng=np.random.default_rng(seed))), backward
    return (lambda params, x: forward(params, x, cfg)), backward


def _structure(params: Any) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        return {"type": type(params).__name__}
    return {str(k): [list(v.shape), str(v.dtype)] if isinstance(v, np.ndarray) else type(v).__name__ for k, v in params.items()}


def _float32(fwd: Any, bwd: Any, params: Any, x: Any, dy: Any) -> list[str]:
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    x32 = x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x
    y, cache = fwd(p32, x32)
    dx, grads = bwd(p32, cache, np.asarray(dy, dtype=np.float32))
    problems = []
    if getattr(y, "dtype", None) != np.float32:
        problems.append("with float32 params and input, forward did not return float32")
    if dx is not None and getattr(dx, "dtype", None) != np.float32:
        problems.append("with float32 params and input, dx is not float32")
    if isinstance(grads, Mapping) and any(getattr(g, "dtype", None) != np.float32 for g in grads.values()):
        problems.append("with float32 params and input, some grads are not float32")
    return problems


def pair_check(kind: str, student: Student, data: Mapping[str, Any], decode: Decoder, entries: int) -> Verdict:
    for c in data["cases"]:
        cfg, targets, params, x, dy = (decode(c[k]) for k in ("cfg", "targets", "params", "x", "dy"))
        fwd, bwd = bind(student, data, c, cfg, targets)
        label = c["label"]
        if kind == "forward":
            verdict = first([close("y", fwd(params, x)[0], decode(c["y"]))], label)
        elif kind == "backward":
            _, cache = fwd(params, x)
            dx, grads = bwd(params, cache, dy)
            problems = [close("dx", dx, decode(c["dx"]))] if c["dx"] is not None else []
            verdict = first(problems + mapping("grads", grads, decode(c["grads"])), label)
        elif kind == "gradcheck":
            report = vjp_check(fwd, bwd, params, x, rng=np.random.default_rng([c["seed"], 99]), max_elements=entries or None)
            failing = [f"your {r.name} disagrees with finite differences of your own forward" for r in report.results if not r.passed]
            verdict = first([*failing, *report.problems], label)
        else:
            verdict = first(_purity(student, data, c, cfg, fwd, bwd, params, x, dy, decode), label)
        if not verdict[0]:
            return verdict
    return True, "ok"


def _purity(student: Student, data: Mapping[str, Any], c: Mapping[str, Any], cfg: Any, fwd: Any, bwd: Any, params: Any, x: Any, dy: Any, decode: Decoder) -> list[str]:  # fmt: skip
    problems: list[str] = []
    if c["init"] is not None:
        init = student.function(data["module"], "init")
        if data["init_float64"] and _structure(init(cfg, np.random.default_rng(0), np.float64)) != c["init"]:
            problems.append("init(cfg, rng, np.float64) gives other keys, shapes or dtypes than the reference's")
        if _structure(init(cfg, np.random.default_rng(0))) != {k: [v[0], "float32"] for k, v in c["init"].items()}:
            problems.append("init(cfg, rng) does not give float32 parameters of the reference's keys and shapes")
    y, cache = fwd(params, x)
    want = decode(c["y"])
    if list(np.shape(y)) != list(want.shape) or str(getattr(y, "dtype", type(y).__name__)) != str(want.dtype):
        problems.insert(0, f"forward returned y of shape {np.shape(y)}, expected {want.shape} {want.dtype}")
    dx, grads = bwd(params, cache, dy)
    if not isinstance(grads, Mapping):
        return [*problems, "backward returned grads that are not a dict"]
    problems += structure_problems(params, grads, dx, x)
    problems += purity_problems(fwd, bwd, params, x, dy)
    return problems + _float32(fwd, bwd, params, x, dy)


def model_check(kind: str, student: Student, data: Mapping[str, Any], decode: Decoder) -> Verdict:
    """The model's own forward and backward, or ``loss_and_grads`` with the student's pairs."""
    for c in data["cases"]:
        params, idx, cfg = decode(c["params"]), decode(c["idx"]), decode(c["cfg"])
        rng = np.random.default_rng([c["seed"], 0]) if c["dropout"] else None
        if kind == "loss_and_grads":
            loss, grads = student.function("model", "loss_and_grads")(params, idx, decode(c["targets"]), cfg, rng=rng)
            if not isinstance(grads, Mapping):
                return False, "loss_and_grads returned the gradients as something other than a dict"
            float(loss)
            problems = [close("loss", np.asarray(loss, dtype=np.float64), decode(c["loss"]))]
            problems += mapping("grads", grads, decode(c["grads"]), extra_allowed=True)
        else:
            logits, cache = student.function("model", "forward")(params, idx, cfg, rng=rng)
            if kind == "forward":
                problems = [close("logits", logits, decode(c["logits"]))]
            else:
                grads = student.function("model", "backward")(params, cache, decode(c["dlogits"]))
                problems = mapping("grads", grads, decode(c["grads"]))
        verdict = first(problems, c["label"])
        if not verdict[0]:
            return verdict
    return True, "ok"


def _fields(state: Any) -> dict[str, Any] | None:
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return None


def adamw_step(student: Student, data: Mapping[str, Any], decode: Decoder) -> Verdict:
    """Several AdamW steps in lockstep with the reference, each from the student's own state."""
    step = student.function("optim", "step")
    for c in data["cases"]:
        params, state, cfg = decode(c["params"]), decode(c["state"]), decode(c["cfg"])
        for s, (grads, lr, after) in enumerate(zip(c["grads"], c["lrs"], c["after"], strict=True)):
            params, state = step(params, decode(grads), state, cfg, lr)
            found = _fields(state)
            label = f"{c['label']}: after step {s + 1}"
            if found is None:
                return False, f"step returned its state as a {type(state).__name__}, expected an AdamWState ({label})"
            problems = mapping("params", params, decode(after["params"]))
            problems += [close("state.t", found.get("t"), float(after["t"]))]
            problems += mapping("state.m", found.get("m"), decode(after["m"])) + mapping("state.v", found.get("v"), decode(after["v"]))
            verdict = first(problems, label)
            if not verdict[0]:
                return verdict
    return True, "ok"


def decays(student: Student, data: Mapping[str, Any], decode: Decoder) -> Verdict:
    rule = student.function("optim", "decays")
    for name, want in data["cases"]:
        got = rule(name)
        ok = isinstance(got, bool | np.bool_) or (isinstance(got, np.ndarray) and got.shape == () and got.dtype == bool)
        if not ok or bool(got) is not want:
            return False, f"decays({name!r}) returned {got!r}, the reference {want}"
    return True, "ok"


def schedule(student: Student, data: Mapping[str, Any], decode: Decoder) -> Verdict:
    lr_at = student.function("optim", "lr_at")
    for c in data["cases"]:
        got = as_array(lr_at(*c["args"]))
        base = c["args"][1]  # in units of base_lr, as the grader compares
        verdict = first([close("lr / base_lr", None if got is None else got / base, c["lr"] / base)], c["label"])
        if not verdict[0]:
            return verdict
    return True, "ok"


def clipping(kind: str, student: Student, data: Mapping[str, Any], decode: Decoder) -> Verdict:
    for c in data["cases"]:
        grads = decode(c["grads"])
        if kind == "global_norm":
            problems = [close("global_norm", student.function("optim", "global_norm")(grads), c["norm"])]
        else:
            result = student.function("optim", "clip_by_global_norm")(grads, c["max_norm"])
            if not (isinstance(result, tuple) and len(result) == 2):
                return False, f"clip_by_global_norm returned a {type(result).__name__}, expected (clipped, norm) ({c['label']})"
            problems = mapping("clipped", result[0], decode(c["clipped"])) + [close("norm", result[1], c["norm"])]
        verdict = first(problems, c["label"])
        if not verdict[0]:
            return verdict
    return True, "ok"


BPE_FUNCTIONS = {"stats": "get_stats", "merge": "merge", "train": "train", "encode": "encode", "decode": "decode"}


def bpe(kind: str, student: Student, data: Mapping[str, Any], decode: Decoder) -> Verdict:
    function = student.function("bpe", BPE_FUNCTIONS[kind])
    for c in data["cases"]:
        got = plain(kind, function(*decode(c["args"])))
        if got != c["answer"]:
            return False, f"{BPE_FUNCTIONS[kind]} gave {str(got)[:60]}, the reference {str(c['answer'])[:60]} ({c['label']})"
    return True, "ok"


def run_check(check: Mapping[str, Any], student: Student, decode: Decoder, entries: int) -> Verdict:
    """One check's verdict; an exception the student's code raises fails it."""
    subject, kind, data = check["subject"], check["kind"], check["data"]
    try:
        if data.get("pair"):
            return pair_check(kind, student, data, decode, entries)
        if subject == "model":
            return model_check(kind, student, data, decode)
        if subject == "bpe":
            return bpe(kind, student, data, decode)
        if subject == "clipping":
            return clipping(kind, student, data, decode)
        runs: dict[str, Callable[[Student, Mapping[str, Any], Decoder], Verdict]] = {"step": adamw_step, "decays": decays, "key_points": schedule}
        return runs[kind](student, data, decode)
    except KitError:
        raise
    except (Exception, SystemExit) as exc:  # the student's mistake: the check fails, the others run
        if isinstance(exc, NotImplementedError):
            return False, "not implemented yet (NotImplementedError)"
        return False, f"raised {type(exc).__name__}: {str(exc)[:200]}"


# --- the command -------------------------------------------------------------------------------


def load(kit: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        plan = json.loads((kit / "cases.json").read_text(encoding="utf-8"))
        with np.load(kit / "expected.npz", allow_pickle=False) as stored:
            arrays = {k: stored[k] for k in stored.files}
    except (OSError, ValueError) as exc:
        raise KitError(f"cannot read the kit's cases in {kit}: {exc}") from None
    return plan, arrays


def check_package(kit: Path, package_dir: Path) -> list[tuple[Mapping[str, Any], Verdict]]:
    """Every visible check of the kit in ``kit`` on the package in ``package_dir``."""
    plan, arrays = load(kit)
    if not (package_dir / "__init__.py").is_file():
        raise KitError(f"no package in {package_dir} (a folder with an __init__.py): pass the folder of your package")
    name = package_dir.resolve().name
    loaded = sys.modules.get(name)
    if not name.isidentifier() or (loaded is not None and Path(getattr(loaded, "__file__", "") or "").parent != package_dir.resolve()):
        raise KitError(f"your package's folder name {name!r} clashes with a Python module: rename the folder (e.g. my_pkg)")
    sys.path.insert(0, str(package_dir.resolve().parent))
    try:
        student, decode = Student(package_dir.resolve().name), Decoder(arrays, package_dir.resolve().name)
        with np.errstate(all="ignore"):  # overflow in a naive softmax fails its check; no warnings in the table
            return [(c, run_check(c, student, decode, plan["gradcheck_entries"])) for c in plan["checks"]]
    finally:
        sys.path.remove(str(package_dir.resolve().parent))


def report(results: list[tuple[Mapping[str, Any], Verdict]]) -> str:
    width = max((len(c["id"]) for c, _ in results), default=5) + 2
    lines = [f"{'check':<{width}}points  hint", "-" * 72]
    for c, (passed, hint) in results:
        got = c["points"] if passed else 0
        lines.append(f"{c['id']:<{width}}{_num(got)}/{_num(c['points'])}".ljust(width + 9) + ("ok" if passed else hint))
    score, total = sum(c["points"] for c, (p, _) in results if p), sum(c["points"] for c, _ in results)
    lines += ["-" * 72, f"score {_num(score)}/{_num(total)} (visible checks only): {sum(p for _, (p, _) in results)} of {len(results)} checks passed"]
    return "\n".join(lines)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def main(kit: Path, argv: Sequence[str]) -> int:
    """``python -m check [PACKAGE]``: the visible checks on ``PACKAGE`` (default: the kit's)."""
    if len(argv) > 1 or any(a.startswith("-") for a in argv):
        print("usage: python -m check [PACKAGE_FOLDER]", file=sys.stderr)
        return 2
    try:
        plan, _ = load(kit)
        results = check_package(kit, Path(argv[0]) if argv else kit.parent / plan["package"])
    except KitError as exc:
        print(f"check: error: {exc}", file=sys.stderr)
        return 1
    print(report(results))
    return 0
