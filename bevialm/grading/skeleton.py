"""Generate the student starter package from the reference source.

The skeleton is derived from the reference modules every time it is written,
so it cannot drift from them: the registry (:data:`bevialm.registry.PAIRS`)
says which modules hold pairs and which of their functions a student writes.
The generator parses each module with :mod:`ast` and edits the *source text*
at the places the tree points to, so everything it keeps (module docstrings,
config and cache dataclasses, constants, helper functions, comments, signatures
and docstrings) stays exactly as the reference has it:

- the body of every function the registry lists becomes ``raise NotImplementedError``
  (its docstring stays);
- imports of other reference modules become relative imports, so the student's
  package uses its *own* modules; shared infrastructure (:data:`INFRASTRUCTURE`)
  is still imported from ``bevialm``;
- any reference module the pair modules import is included too (copied whole
  when it holds no pair), so the package is complete.

``with_solutions=True`` keeps the bodies: a filled-in copy of the reference in
the skeleton's shape, for instructors and tests to check the grader against.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import textwrap
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bevialm.gradcheck import DEFAULT
from bevialm.grading.task_list import TASKS, TaskSpec

ROOT = "bevialm"

INFRASTRUCTURE = frozenset({"bevialm.types", "bevialm.validate", "bevialm.params"})
"""Reference modules a submission keeps importing from ``bevialm``: shared types and
helpers, not implementations of anything graded."""

MARKER = "BEVIALM_SKELETON"
"""Name of the constant in the generated ``__init__.py`` that records what the package was made from."""


class SkeletonError(Exception):
    """The reference source has a shape the generator cannot rewrite (a bug to fix here)."""


@dataclass(frozen=True)
class SourceModule:
    """One module of the generated package: the reference module's name and its file in the package."""

    name: str
    path: Path
    """Path relative to the package root, e.g. ``layers/linear.py``."""
    blank: frozenset[str]
    """Top-level functions whose bodies the student writes."""


def module_path(name: str) -> Path:
    """``bevialm.layers.linear`` -> ``layers/linear.py``; a package -> its ``__init__.py``."""
    module = importlib.import_module(name)
    parts = name.split(".")[1:]
    if hasattr(module, "__path__"):
        return Path(*parts, "__init__.py")
    if not parts:
        raise SkeletonError(f"{name} is not a module inside {ROOT}")
    return Path(*parts[:-1], parts[-1] + ".py")


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _is_infrastructure(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in INFRASTRUCTURE)


def _package_of(name: str, is_package: bool) -> str:
    return name if is_package else name.rpartition(".")[0]


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` names (resolving relative levels)."""
    if node.level == 0:
        return node.module or ""
    base = package.split(".")
    if node.level - 1 > len(base) - 1:
        raise SkeletonError(f"relative import beyond {ROOT} in {package}")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def referenced_modules(name: str) -> set[str]:
    """The ``bevialm`` modules (not infrastructure) that module ``name`` imports."""
    module = importlib.import_module(name)
    package = _package_of(name, hasattr(module, "__path__"))
    tree = ast.parse(Path(_source_file(module)).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if _is_module(sub) else base)
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        found.update(t for t in targets if t.split(".")[0] == ROOT and not _is_infrastructure(t))
    return found


def _source_file(module: ModuleType) -> str:
    if not module.__file__:
        raise SkeletonError(f"{module.__name__} has no source file")
    return module.__file__


def plan(tasks: Sequence[TaskSpec] = TASKS, written: Collection[str] | None = None) -> list[SourceModule]:
    """Every module of the package, with the functions to blank: the modules of ``tasks``,
    every reference module they import (transitively), and the packages holding them.
    Only the functions of the tasks named in ``written`` are blanked (every task's when
    None); the others are handed out filled in."""
    blank: dict[str, set[str]] = {}
    for task in tasks:
        chosen = written is None or task.name in written
        blank.setdefault(task.module.__name__, set()).update(task.functions if chosen else ())
    todo, seen = list(blank), set(blank)
    while todo:
        for dep in sorted(referenced_modules(todo.pop())):
            if dep != ROOT and dep not in seen:
                seen.add(dep)
                todo.append(dep)
    for name in list(seen):  # the packages on the way down, e.g. bevialm.layers
        parts = name.split(".")
        seen.update(".".join(parts[:i]) for i in range(2, len(parts)))
    return [SourceModule(n, module_path(n), frozenset(blank.get(n, ()))) for n in sorted(seen)]


# --- what a stub's docstring says -----------------------------------------------------------

DOCSTRINGS = ("full", "shapes")
"""``full``: each stub keeps the reference's docstring (the formula, often the derivation);
``shapes``: only the signature and the shapes it takes and returns in one example."""


def _describe(value: Any) -> str:
    """A value's shape, the way a stub docstring shows it: ``(2, 5) float64``, ``{W: (5, 2), b: (2,)}``."""
    if isinstance(value, np.ndarray):
        return f"{value.shape} {value.dtype}" if value.ndim else f"scalar array {value.dtype}"
    if isinstance(value, Mapping):
        items = [f"{k}: {_describe(v)}" for k, v in value.items()]
        more = f", ... ({len(items)} entries)" if len(items) > 5 else ""
        return "{" + ", ".join(items[:4] if more else items) + more + "}"
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return "(" + ", ".join(_describe(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = {f.name for f in dataclasses.fields(value)}
        if type(value).__name__.endswith("Config"):
            return repr(value)
        name = type(value).__name__
        return f"{'an' if name[0] in 'AEIOU' else 'a'} {name} ({', '.join(sorted(names))})"
    if isinstance(value, np.random.Generator):
        return "a numpy Generator"
    if isinstance(value, bool | int | float | str) or value is None:
        return repr(value) if not isinstance(value, float) else type(value).__name__
    return f"a {type(value).__name__}"


def traced_shapes(task: TaskSpec) -> dict[str, str]:
    """For each of ``task``'s functions, a docstring body with the argument and result shapes
    of its first call in the task's example (the reference's functions, traced)."""
    module = task.module
    calls: dict[str, str] = {}
    saved = {name: getattr(module, name) for name in task.functions}

    def tracer(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(function)

        def traced(*args: Any, **kwargs: Any) -> Any:
            result = function(*args, **kwargs)
            if name not in calls:
                bound = signature.bind(*args, **kwargs)
                described = [*((arg, _describe(value)) for arg, value in bound.arguments.items()), ("returns", _describe(result))]
                calls[name] = "\n".join(
                    textwrap.fill(f"{arg}: {text}", 88, initial_indent="    ", subsequent_indent="        ")
                    for arg, text in described
                )
            return result

        return traced

    try:
        for name, function in saved.items():
            setattr(module, name, tracer(name, function))
        task.example()
    finally:
        for name, function in saved.items():
            setattr(module, name, function)
    return calls


def shape_docstrings(tasks: Sequence[TaskSpec]) -> dict[str, dict[str, str]]:
    """``{module name: {function: docstring text}}`` of the ``shapes`` style for ``tasks``."""
    out: dict[str, dict[str, str]] = {}
    for task in tasks:
        traced = traced_shapes(task)
        for name in task.functions:
            shapes = traced.get(name)
            where = f"In one call of the example:\n\n{shapes}" if shapes else "(Not called in the example.)"
            out.setdefault(task.module.__name__, {})[name] = f"Write this function: keep its signature.\n\n{where}\n"
    return out


# --- rewriting one module -----------------------------------------------------------------


def _relative(from_package: str, target: str) -> tuple[int, str]:
    """``(level, module)`` of a relative import of ``target`` from inside ``from_package``."""
    cur, tgt = from_package.split(".")[1:], target.split(".")[1:]
    common = 0
    while common < min(len(cur), len(tgt)) and cur[common] == tgt[common]:
        common += 1
    return len(cur) - common + 1, ".".join(tgt[common:])


def _alias(alias: ast.alias) -> str:
    return alias.name + (f" as {alias.asname}" if alias.asname else "")


def _from(level: int, module: str, names: list[ast.alias]) -> str:
    source = "." * level + module if level else module
    return f"from {source} import {', '.join(_alias(a) for a in names)}"


def _rewrite_import(node: ast.Import | ast.ImportFrom, package: str) -> str | None:
    """The replacement text of an import statement, or None to keep it as it is."""
    if isinstance(node, ast.Import):
        lines = []
        changed = False
        for alias in node.names:
            name = alias.name
            if name.split(".")[0] != ROOT or _is_infrastructure(name):
                lines.append(f"import {_alias(alias)}")
                continue
            if not alias.asname or "." not in name:
                raise SkeletonError(f"cannot rewrite 'import {name}' in {package}: use 'from ... import ...'")
            parent, _, leaf = name.rpartition(".")
            level, module = _relative(package, parent)
            lines.append(_from(level, module, [ast.alias(leaf, alias.asname)]))
            changed = True
        return "\n".join(lines) if changed else None
    base = _absolute(node, package)
    if base.split(".")[0] != ROOT:
        return None
    keep_absolute: list[ast.alias] = []
    relative: list[ast.alias] = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        target = sub if _is_module(sub) else base
        (keep_absolute if _is_infrastructure(target) else relative).append(alias)
    lines = []
    if keep_absolute:
        lines.append(_from(0, base, keep_absolute))
    if relative:
        level, module = _relative(package, base)
        lines.append(_from(level, module, relative))
    text = "\n".join(lines)
    original = _from(node.level, node.module or "", list(node.names))
    return None if text == original else text


def _blank_body(
    node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str], docstring: str | None = None
) -> tuple[int, int, str]:
    """``(first, last, text)``: the 1-based line range of the body after the docstring, and its
    stub; with ``docstring``, the range includes the docstring, replaced by this one."""
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(
        body[0].value.value, str
    )
    if body[0].lineno == node.lineno:
        raise SkeletonError(f"function {node.name} has its body on the 'def' line")
    indent = " " * body[0].col_offset
    stub = f"{indent}raise NotImplementedError"
    end = max(n.end_lineno or n.lineno for n in body)
    # Comment lines right after the last statement, at the body's indentation, belong to it.
    while end < len(lines) and lines[end].startswith(indent) and lines[end].strip().startswith("#"):
        end += 1
    if docstring is not None:
        doc = textwrap.indent(f'"""{docstring.rstrip()}\n"""', indent)
        return body[0].lineno, end, f"{doc}\n{stub}"
    if has_doc:
        rest = body[1:]
        if not rest:
            return (body[0].end_lineno or body[0].lineno) + 1, body[0].end_lineno or body[0].lineno, stub
        return rest[0].lineno, end, stub
    return body[0].lineno, end, stub


def rewrite(
    source: str, name: str, is_package: bool, blank: frozenset[str], docstrings: Mapping[str, str] | None = None
) -> str:
    """The student version of module ``name``'s ``source`` (see the module docstring);
    ``docstrings`` replaces the docstrings of blanked functions it names."""
    tree = ast.parse(source)
    lines = source.splitlines()
    package = _package_of(name, is_package)
    edits: list[tuple[int, int, str]] = []  # (first line, last line, replacement), 1-based, inclusive
    missing = set(blank)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in blank:
            missing.discard(node.name)
            edits.append(_blank_body(node, lines, (docstrings or {}).get(node.name)))
    blanked = [(first, last) for first, last, _ in edits]
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Import | ast.ImportFrom):
            node = sub
            if any(first <= node.lineno <= last for first, last in blanked):
                continue  # removed with the body it is in
            text = _rewrite_import(node, package)
            if text is not None:
                indent = " " * node.col_offset
                edits.append((node.lineno, node.end_lineno or node.lineno, textwrap.indent(text, indent)))
    if missing:
        raise SkeletonError(f"{name} does not define {sorted(missing)} at the top level")
    for first, last, text in sorted(edits, reverse=True):
        if first > last:  # insert after a docstring-only body
            lines[last:last] = [text]
        else:
            lines[first - 1 : last] = [text]
    return "\n".join(lines) + "\n"


# --- the package ----------------------------------------------------------------------------


def _init_source(with_solutions: bool, written: Collection[str] | None) -> str:
    from bevialm import __version__

    kind = "a filled-in copy of the reference (instructors only)" if with_solutions else "a student skeleton"
    tasks = "every task" if written is None else ", ".join(written)
    return (
        '"""My BeviaLLM package: fill in every function that raises ``NotImplementedError``.\n'
        "\n"
        "Check your work with ``bevialm grade <this folder> --visible-only``. Import your own\n"
        "modules relatively (``from . import linear``), never from ``bevialm.layers``: the\n"
        "grader imports this folder under its own package name.\n"
        '"""\n'
        "\n"
        f'{MARKER} = "{kind} ({tasks}), generated from bevialm {__version__}"\n'
    )


def _readme(modules: list[SourceModule], preset_hint: str, first: str) -> str:
    rows = "\n".join(
        f"- `{m.path.as_posix()}`: {', '.join(f'`{f}`' for f in sorted(m.blank))}" for m in modules if m.blank
    )
    given = ", ".join(f"`{m.path.as_posix()}`" for m in modules if not m.blank and m.path.name != "__init__.py")
    return (
        "# Your BeviaLLM package\n\n"
        "Fill in the body of every function listed below (each raises `NotImplementedError`\n"
        "now); keep the names, signatures, configs and caches as they are.\n\n"
        f"{rows}\n\n"
        + (f"Handed out filled in (not graded in this assignment; the grader uses its own copy): {given}.\n\n" if given else "")
        + "Check your work as you go. With the student kit your instructor hands out (this folder\n"
        "inside it), you need only NumPy: in the kit's folder, run\n\n"
        "    python -m check\n\n"
        "With BeviaLLM installed, run the grader itself in this folder:\n\n"
        f"    bevialm grade .{preset_hint} --visible-only\n"
        f"    bevialm grade .{preset_hint} --only {first}\n\n"
        "Each check passes or fails: `forward` and `backward` compare your numbers with the\n"
        f"reference's (within `|yours - reference| <= {DEFAULT.atol:g} + {DEFAULT.rtol:g} |reference|`); `gradcheck` compares\n"
        "your backward with finite differences of your own forward (when `forward` passes and\n"
        "`gradcheck` fails, the gradient it names is wrong); `purity` fails when a function changes\n"
        "its inputs, returns grads not shaped like the params, or turns float32 into float64.\n"
        "Tokens and texts (the BPE task) must match exactly. Import your own modules relatively\n"
        "(`from . import linear`), never from `bevialm.layers`.\n"
    )


def write_skeleton(
    out_dir: Path,
    *,
    with_solutions: bool = False,
    tasks: Sequence[TaskSpec] = TASKS,
    written: Collection[str] | None = None,
    docstrings: str = "full",
    preset_hint: str = "",
) -> list[Path]:
    """Write the package into ``out_dir`` (created; existing files are overwritten) and
    return the files written, relative to ``out_dir``. The functions of the tasks named in
    ``written`` (all of ``tasks`` when None) are blanked, with docstrings of the given
    style (:data:`DOCSTRINGS`); the other tasks are handed out filled in."""
    if docstrings not in DOCSTRINGS:
        raise SkeletonError(f"docstrings must be one of {', '.join(DOCSTRINGS)}, got {docstrings!r}")
    modules = plan(tasks, written)
    replaced = shape_docstrings([t for t in tasks if written is None or t.name in written]) if docstrings == "shapes" else {}
    files: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for m in modules:
        module = importlib.import_module(m.name)
        source = Path(_source_file(module)).read_text(encoding="utf-8")
        blank = frozenset() if with_solutions else m.blank
        text = rewrite(source, m.name, hasattr(module, "__path__"), blank, None if with_solutions else replaced.get(m.name))
        target = out_dir / m.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        files.append(m.path)
    (out_dir / "__init__.py").write_text(_init_source(with_solutions, written), encoding="utf-8")
    first = next((t.name for t in tasks if written is None or t.name in written), "linear")
    (out_dir / "README.md").write_text(_readme(modules, preset_hint, first), encoding="utf-8")
    files += [Path("__init__.py"), Path("README.md")]
    return files
