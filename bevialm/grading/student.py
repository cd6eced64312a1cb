"""Finding, scanning and importing a student's package.

The submission is imported from its folder under a package name of the
grader's choosing (``bevialm_submission`` in the sandbox), never as
``bevialm``, so the reference can never be graded in its place; its modules
import each other relatively. Whether it imports the reference implementation
instead is read from its source (:func:`reference_imports`) without running it.
"""

from __future__ import annotations

import ast
import atexit
import importlib
import importlib.machinery
import importlib.util
import re
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from bevialm.grading.skeleton import INFRASTRUCTURE, ROOT, _is_module, plan

PACKAGE = "bevialm_submission"
"""The name the sandbox imports a submission under."""

ALLOWED_REFERENCE = INFRASTRUCTURE | {"bevialm.gradcheck"}
"""``bevialm`` modules a submission may import: shared infrastructure and the checking tools."""

IGNORED_DIRS = frozenset({"__pycache__", "__MACOSX", ".git", ".venv", "venv", "node_modules"})


class SubmissionError(Exception):
    """The submission folder holds no package to grade; the message is one line."""


def expected_files() -> list[Path]:
    """The module files of a complete package (from the skeleton plan), e.g. ``layers/linear.py``."""
    return [m.path for m in plan()]


def _candidate(folder: Path, wanted: list[Path]) -> str | None:
    """``"package"`` when ``folder`` holds module files where the skeleton puts them,
    ``"flattened"`` when it holds module files that belong in a subfolder (``linear.py``
    uploaded without ``layers/``), None otherwise."""
    if any((folder / p).is_file() for p in wanted if len(p.parts) > 1):
        return "package"
    if any((folder / p.name).is_file() for p in wanted if len(p.parts) > 1):
        return "flattened"
    if any((folder / p).is_file() for p in wanted):
        return "package"
    return None


def _relative_name(folder: Path, submission: Path) -> str:
    rel = folder.relative_to(submission).as_posix()
    return "the upload's top folder" if rel == "." else f"{rel}/"


def find_package_root(submission: Path, max_depth: int = 3) -> Path:
    """The folder that holds the package: ``submission`` itself or a folder below it with
    any of the skeleton's module files (students often upload a folder, or zip one).

    A *flattened* upload (the module files without their folders, as dragging files into
    an upload form gives) is rebuilt in a fresh temporary folder with every file placed
    by its name, and that folder is returned. Two candidate packages are an error naming
    both: the grader never picks one silently.
    """
    if not submission.exists():
        raise SubmissionError(f"submission folder {submission} does not exist")
    if not submission.is_dir():
        raise SubmissionError(f"submission {submission} is not a folder")
    wanted = [p for p in expected_files() if p.name != "__init__.py"]
    found: list[tuple[Path, str]] = []
    level = [submission]
    for _ in range(max_depth + 1):
        below = []
        for folder in level:
            kind = _candidate(folder, wanted)
            if kind is not None:
                found.append((folder, kind))  # a package's own subfolders are not candidates
            else:
                below += [d for d in folder.iterdir() if d.is_dir() and d.name not in IGNORED_DIRS]
        level = sorted(below)
    if len(found) > 1:
        names = " and ".join(_relative_name(f, submission) for f, _ in found[:2])
        more = f" (and {len(found) - 2} more)" if len(found) > 2 else ""
        raise SubmissionError(
            f"two packages in {submission}: {names}{more}; upload only the one to grade"
        )
    if not found:
        names = ", ".join(p.as_posix() for p in wanted[:3])
        raise SubmissionError(f"no BeviaLLM package in {submission}: expected files such as {names}")
    folder, kind = found[0]
    return folder if kind == "package" else rebuild_flattened(folder, wanted)


def rebuild_flattened(folder: Path, wanted: list[Path]) -> Path:
    """A fresh folder (removed when the grader exits) with ``folder``'s files placed by name:
    ``linear.py`` -> ``layers/linear.py``; an ``__init__.py`` and every other file at the top."""
    out = Path(tempfile.mkdtemp(prefix="bevialm-flattened-upload-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    by_name = {p.name: p for p in wanted}
    for item in sorted(folder.iterdir()):
        if item.is_file():
            target = out / by_name.get(item.name, Path(item.name))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item, target)
    for p in expected_files():  # the handed-out package files a flattened upload cannot place
        if p.name == "__init__.py" and not (out / p).exists() and (out / p).parent.is_dir():
            (out / p).write_text('"""Rebuilt by the grader from a flattened upload."""\n', encoding="utf-8")
    return out


def missing_files(root: Path) -> list[str]:
    """The skeleton's module files the package lacks."""
    return [p.as_posix() for p in expected_files() if not (root / p).is_file()]


# --- reading the source -----------------------------------------------------------------------

_MODULE_STRING = re.compile(r"^bevialm(\.\w+)+$")


def _forbidden(module: str) -> bool:
    return module.split(".")[0] == ROOT and module != ROOT and not any(
        module == a or module.startswith(a + ".") for a in ALLOWED_REFERENCE
    )


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def scan_source(source: str, filename: str) -> list[str]:
    """Where ``source`` uses the reference implementation: imports of ``bevialm`` modules other
    than :data:`ALLOWED_REFERENCE`, attribute paths such as ``bevialm.layers.linear``, and
    module names in strings (``importlib.import_module("bevialm.layers.linear")``)."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as exc:
        return [f"{filename}:{exc.lineno}: does not parse ({exc.msg})"]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if _forbidden(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == ROOT:
                found += [(node.lineno, f"{ROOT}.{a.name}") for a in node.names if _forbidden(f"{ROOT}.{a.name}")]
            elif _forbidden(node.module):
                subs = [f"{node.module}.{a.name}" for a in node.names]
                found += [(node.lineno, s) if _is_module(s) else (node.lineno, node.module) for s in subs]
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted and dotted.count(".") == 1 and _forbidden(dotted):
                found.append((node.lineno, dotted))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _MODULE_STRING.match(node.value) and _forbidden(node.value):
                found.append((node.lineno, node.value))
    return [f"{filename}:{line}: uses the reference {name}" for line, name in sorted(set(found))]


def reference_imports(root: Path) -> list[str]:
    """:func:`scan_source` over every Python file of the package."""
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if any(part in IGNORED_DIRS for part in path.relative_to(root).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:  # pragma: no cover - unreadable file; the import will report it
            continue
        out += scan_source(text, path.relative_to(root).as_posix())
    return out


# --- importing --------------------------------------------------------------------------------


def import_package(root: Path, package: str = PACKAGE) -> ModuleType:
    """Import the folder ``root`` as package ``package`` (its ``__init__.py`` may be missing)."""
    if package in sys.modules:
        return sys.modules[package]
    init = root / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[str(root)])
    else:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = [str(root)]
    if spec is None:  # pragma: no cover - only for paths importlib cannot load at all
        raise ImportError(f"cannot import {root}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    try:
        if spec.loader is not None:
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[package]
        raise
    return module


def forget_package(package: str) -> None:
    """Drop ``package`` and its modules from ``sys.modules`` (in-process grading only)."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
