"""``bevialm student-kit OUT``: the skeleton and a checker for students, without the solutions.

The kit holds:

- the student's package (``my_pkg/``, the skeleton of :mod:`bevialm.grading.skeleton`);
- ``check/``: the visible checks of the assignment (:mod:`bevialm.grading.kit_check`, copied
  as ``check/checks.py``), their cases and the reference's answers, precomputed here as
  ``cases.json`` and ``expected.npz`` (plain arrays, no pickle, no code);
- ``bevialm/``: only the shared helpers the skeleton imports (``types``, ``validate``,
  ``params``) and the gradient checker the self-consistency checks use, none of them a
  solution;
- ``README.md``: what to write and how to check it.

So a student runs ``python -m check`` in the kit with nothing installed but NumPy. The
answers come from the reference run in this process on the grader's own cases
(:mod:`bevialm.grading.cases`, :mod:`bevialm.grading.training_cases`), so the kit passes and fails
the visible checks exactly as ``bevialm grade --visible-only`` does
(``tests/test_grading_kit.py`` checks it on every planted mistake).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bevialm.grading import cases as reference
from bevialm.grading import kit_check
from bevialm.grading import training_cases as beyond_pairs
from bevialm.grading.plan import Check, plan_checks
from bevialm.grading.rubric import Rubric, Settings
from bevialm.grading.session import student_module
from bevialm.grading.skeleton import write_skeleton
from bevialm.registry import BY_NAME, PairSpec, no_params

PACKAGE = "my_pkg"
"""The student's package inside the kit."""

SHARED = ("types", "validate", "params", "gradcheck")
"""BeviaLLM modules the kit carries: the helpers the skeleton imports, and the gradient checker."""


class Encoder:
    """Values as JSON, arrays by index into the ``.npz`` (the child protocol's encoding)."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def __call__(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, np.ndarray | np.generic):
            self.arrays.append(np.asarray(value))
            return {"__a" if isinstance(value, np.ndarray) else "__s": len(self.arrays) - 1}
        if isinstance(value, tuple):
            return {"__t": [self(v) for v in value]}
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, Mapping):
            return {"__d": {str(k): self(v) for k, v in value.items()}}
        if isinstance(value, type) and issubclass(value, np.generic):
            return {"__dtype": np.dtype(value).str}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: self(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
            return {"__dc": [student_module(type(value).__module__), type(value).__qualname__], "f": fields}
        raise TypeError(f"the kit cannot store a {type(value).__name__}")


def _pair_data(spec: PairSpec, settings: Settings, enc: Encoder) -> dict[str, Any]:
    ce = spec.module.__name__ == "bevialm.losses"
    seeded = spec.name in ("dropout", "mlp", "block")
    cases = []
    for p in reference.pair_points(spec, settings):
        case = p.input.case
        targets = enc(np.random.default_rng(case.seed + 1).integers(0, case.cfg.vocab, size=case.shape[:-1])) if ce else None
        cases.append({
            "label": p.label, "seed": case.seed, "cfg": None if ce else enc(case.cfg), "targets": targets,
            "params": enc(p.input.params), "x": enc(p.input.x), "dy": enc(p.input.dy),
            "y": enc(p.y), "dx": None if p.dx is None else enc(p.dx), "grads": enc(p.grads), "init": p.init,
        })  # fmt: skip
    return {
        "pair": True, "module": student_module(spec.module.__name__), "cases": cases,
        "bind": "ce" if ce else "seeded" if seeded else "layer", "init_float64": spec.init is not no_params,
    }  # fmt: skip


def _model_data(kind: str, settings: Settings, others: beyond_pairs.TrainingCases, enc: Encoder) -> dict[str, Any]:
    if kind == "loss_and_grads":
        mp = reference.model_point(settings)
        one = {"label": "the model on one batch", "cfg": enc(mp.cfg), "params": enc(mp.params), "idx": enc(mp.idx),
               "targets": enc(mp.targets), "seed": mp.seed, "dropout": bool(mp.cfg.dropout), "loss": enc(np.asarray(mp.loss)), "grads": enc(mp.grads)}  # fmt: skip
        return {"cases": [one]}
    return {"cases": [
        {"label": c.label, "cfg": enc(c.cfg), "params": enc(c.params), "idx": enc(c.idx), "seed": c.seed, "dropout": bool(c.cfg.dropout),
         "dlogits": enc(c.dlogits), "logits": enc(c.logits), "grads": enc(c.grads)}
        for c in others.model
    ]}  # fmt: skip


def _beyond_data(check: Check, others: beyond_pairs.TrainingCases, enc: Encoder) -> dict[str, Any]:
    kind = check.kind
    if check.subject == "bpe":
        return {"cases": [{"label": c.label, "args": enc(list(c.args)), "answer": kit_check.plain(kind, c.answer)} for c in others.bpe.by_kind[kind]]}
    if kind == "step":
        return {"cases": [
            {"label": c.label, "cfg": enc(c.cfg), "params": enc(c.params), "state": enc(c.state), "grads": [enc(g) for g in c.grads],
             "lrs": list(c.lrs), "after": [{"params": enc(p), "t": s.t, "m": enc(s.m), "v": enc(s.v)} for p, s in c.after]}
            for c in others.adamw
        ]}  # fmt: skip
    if kind == "decays":
        return {"cases": [[name, want] for name, want in others.decay_names]}
    if kind == "key_points":
        return {"cases": [{"label": p.label, "args": list(p.args), "lr": p.lr} for p in others.schedule]}
    if kind == "global_norm":
        return {"cases": [{"label": label, "grads": enc(g), "norm": norm} for label, g, norm in others.norms]}
    return {"cases": [{"label": c.label, "grads": enc(c.grads), "max_norm": c.max_norm, "clipped": enc(c.clipped), "norm": c.norm} for c in others.clips]}


def kit_plan(rubric: Rubric) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The visible checks of ``rubric``'s assignment with their cases and the reference's answers."""
    settings = rubric.settings
    checks = plan_checks(rubric, visible_only=True)
    others = beyond_pairs.reference_cases(settings)
    enc = Encoder()
    pairs: dict[str, dict[str, Any]] = {}
    out = []
    for c in checks:
        if c.subject in BY_NAME:
            data = pairs.setdefault(c.subject, _pair_data(BY_NAME[c.subject], settings, enc))
        elif c.subject == "model":
            data = _model_data(c.kind, settings, others, enc)
        else:
            data = _beyond_data(c, others, enc)
        out.append({"id": c.id, "subject": c.subject, "kind": c.kind, "points": c.rule.points, "title": c.title, "data": data})
    return {"package": PACKAGE, "gradcheck_entries": settings.gradcheck_entries, "tasks": list(rubric.tasks), "checks": out}, enc.arrays


def write_kit(out: Path, rubric: Rubric, preset_hint: str = "") -> list[Path]:
    """Write the kit into ``out`` (created; its files are overwritten) and return its files."""
    plan, arrays = kit_plan(rubric)
    files = [Path(PACKAGE) / f for f in write_skeleton(out / PACKAGE, written=rubric.tasks, preset_hint=preset_hint)]
    check = out / "check"
    check.mkdir(parents=True, exist_ok=True)
    (check / "cases.json").write_text(json.dumps(plan), encoding="utf-8")
    _save(check / "expected.npz", arrays)
    shutil.copyfile(Path(kit_check.__file__), check / "checks.py")
    (check / "__init__.py").write_text('"""The visible checks of your assignment: run ``python -m check`` here."""\n', encoding="utf-8")
    (check / "__main__.py").write_text(MAIN, encoding="utf-8")
    shared = out / "bevialm"
    shared.mkdir(exist_ok=True)
    root = Path(kit_check.__file__).parents[1]
    for name in SHARED:
        shutil.copyfile(root / f"{name}.py", shared / f"{name}.py")
    (shared / "__init__.py").write_text(SHARED_INIT, encoding="utf-8")
    (out / "README.md").write_text(readme(plan), encoding="utf-8")
    files += [Path("check", n) for n in ("cases.json", "expected.npz", "checks.py", "__init__.py", "__main__.py")]
    files += [Path("bevialm", f"{n}.py") for n in (*SHARED, "__init__")] + [Path("README.md")]
    return files


def _save(path: Path, arrays: list[np.ndarray]) -> None:
    """An ``.npz`` of ``a0``, ``a1``, ...: written with ``allow_pickle=False``, so an array that
    would need pickle (an object array) stops the kit instead of entering it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, array in enumerate(arrays):
            with archive.open(f"a{i}.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


MAIN = '''"""``python -m check [PACKAGE_FOLDER]``: the visible checks on your package (default: my_pkg)."""

import sys
from pathlib import Path

from check.checks import main

sys.exit(main(Path(__file__).resolve().parent, sys.argv[1:]))
'''

SHARED_INIT = '''"""Only the helpers your package imports from BeviaLLM (types, validate, params) and the
gradient checker the checks use: no solutions. The full BeviaLLM is not needed to check your work."""
'''


def readme(plan: Mapping[str, Any]) -> str:
    rows = "\n".join(
        f"- `{c['id']}` ({kit_check._num(c['points'])} point{'' if c['points'] == 1 else 's'}): {c['title'].split(': ', 1)[1]}" for c in plan["checks"]
    )
    total = kit_check._num(sum(c["points"] for c in plan["checks"]))
    return (
        "# Your BeviaLLM assignment\n\n"
        f"Write the functions listed in `{PACKAGE}/README.md` (each raises `NotImplementedError` now),\n"
        "keeping their names and signatures. Check your work here, with only NumPy installed:\n\n"
        "    python -m check            # every visible check on my_pkg\n"
        "    python -m check path/to/pkg\n\n"
        "It runs the checks your instructor marks visible, on the grader's own cases, against the\n"
        "reference's answers (stored in `check/expected.npz`): the same pass or fail as\n"
        "`bevialm grade --visible-only` (only the grader enforces its time and memory limits).\n"
        "Hidden checks are graded only when you hand in.\n"
        f"The visible checks ({total} points):\n\n{rows}\n\n"
        "A check fails on wrong numbers, on an exception, or when your code breaks a rule of the\n"
        "contract (a forward or backward that changes its inputs, grads not shaped like the\n"
        "params, float32 in but not float32 out). `gradcheck` compares your backward with finite\n"
        "differences of your own forward: when `forward` passes and `gradcheck` fails, the\n"
        "gradient it names is wrong. Numbers pass within\n"
        f"`|yours - reference| <= {kit_check.DEFAULT.atol:g} + {kit_check.DEFAULT.rtol:g} |reference|`; tokens and texts must match exactly.\n\n"
        "Import your own modules relatively (`from . import linear`). Hand in the folder\n"
        f"`{PACKAGE}` as your instructor says. The folder `bevialm/` here holds only the helpers\n"
        "your package imports and the gradient checker, not BeviaLLM itself.\n"
    )


# --- the command ---------------------------------------------------------------------------------


def cmd_student_kit(args: Any) -> int:
    """``bevialm student-kit OUT``: exit 0 with the kit written, 1 with one error line."""
    import sys
    from dataclasses import replace

    from bevialm.grading.rubric import RubricError, load, preset
    from bevialm.grading.skeleton import SkeletonError

    out: Path = args.out_dir
    try:
        rubric = load(args.rubric)
        if args.preset is not None:
            rubric = replace(rubric, tasks=preset(args.preset, "--preset"))
        if out.exists() and not out.is_dir():
            raise SkeletonError(f"{out} is a file, not a folder")
        if out.is_dir() and any(out.iterdir()) and not args.force:
            raise SkeletonError(f"{out} is not empty: pass --force to overwrite the kit's files in it")
        files = write_kit(out, rubric, f" --preset {args.preset}" if args.preset else "")
    except (RubricError, SkeletonError, OSError) as exc:
        print(f"bevialm student-kit: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"wrote the student kit: {len(files)} files in {out} (no solutions); students write: {', '.join(rubric.tasks)}")
    print(f"students check their work with NumPy only: cd {out} && python -m check")
    return 0


def add_subcommand(subparsers: Any) -> None:
    """Add ``student-kit`` to the grading subcommands."""
    from bevialm.grading.rubric import PRESETS

    p = subparsers.add_parser(
        "student-kit",
        help="write the skeleton with a checker that needs only NumPy (no solutions)",
        description="Write a kit for students: the skeleton package, and a checker (python -m check) that runs "
        "the assignment's visible checks against the reference's answers, precomputed as .npz (no pickle, no "
        "reference code). Students need only NumPy.",
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--rubric", type=Path, metavar="FILE", help="TOML rubric: its assignment, seed and visible checks (default: the built-in one)")
    p.add_argument("--preset", choices=PRESETS, metavar="NAME", help=f"the assignment: the tasks students write ({', '.join(PRESETS)}); overrides the rubric's [assignment]")
    p.add_argument("--force", action="store_true", help="write into OUT_DIR even when it is not empty (the kit's files are overwritten)")
    p.set_defaults(handler=cmd_student_kit)
