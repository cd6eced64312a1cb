"""Who is in an export: one student per folder or zip, named by Gradescope's metadata when
the export has it.

Gradescope's "Export Submissions" holds a folder per submission (``submission_123/``) and,
at the top, ``submission_metadata.yml`` mapping each folder to its submitters::

    submission_123:
      :submitters:
      - :name: Ada Lovelace
        :email: ada@example.edu

The same mapping as JSON (``submission_metadata.json``) is read first. The YAML is read
with a small line parser for exactly this shape (no YAML dependency): a name it cannot
parse is left out, and the folder name stands in for it.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORED = frozenset({"__MACOSX", ".DS_Store"})
METADATA = ("submission_metadata.json", "submission_metadata.yml")
MAX_METADATA_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Student:
    name: str
    """The folder or zip name in the export: unique, the key of the results files."""
    entry: Path
    display: str = ""
    """The submitters' names from the metadata ("; " between a group's), or ``name``."""
    email: str = ""


class ExportError(Exception):
    """The export cannot be graded; the message is one line."""


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in IGNORED and name not in METADATA


def find_students(folder: Path) -> list[Student]:
    """One student per folder or ``.zip`` in ``folder``, named from the metadata. A link is a
    student too (its row says it was not followed); other files are not students."""
    people = submitters(folder)
    found: list[Student] = []
    for entry in sorted(folder.iterdir()):
        if not _visible(entry.name):
            continue
        mode = os.lstat(entry).st_mode
        is_zip = entry.suffix.lower() == ".zip"
        if stat.S_ISDIR(mode) or (stat.S_ISLNK(mode) and not is_zip):
            key = entry.name
        elif (stat.S_ISREG(mode) or stat.S_ISLNK(mode)) and is_zip:
            key = entry.stem
        else:
            continue  # a note, a FIFO, a device: not a student, and never opened
        name, email = people.get(entry.name, people.get(key, ("", "")))
        found.append(Student(key, entry, name or key, email))
    keys = [s.name for s in found]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ExportError(f"{folder}: {twice[0]!r} is both a folder and a zip; keep one of them")
    return found


def submitters(folder: Path) -> dict[str, tuple[str, str]]:
    """Folder name -> (names, emails) from the export's metadata; empty without one."""
    for name in METADATA:
        path = folder / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_METADATA_BYTES:
            continue  # a link or a FIFO in the instructor's export is not read either
        text = path.read_text(encoding="utf-8", errors="replace")
        found = _from_json(text) if name.endswith(".json") else _from_yaml(text)
        if found:
            return found
    return {}


def _field(person: Any, key: str) -> str:
    if not isinstance(person, dict):
        return ""
    value = person.get(f":{key}", person.get(key, ""))
    return " ".join(str(value).split()) if value is not None else ""


def _joined(people: list[Any]) -> tuple[str, str]:
    names = [n for n in (_field(p, "name") for p in people) if n]
    emails = [e for e in (_field(p, "email") for p in people) if e]
    return "; ".join(names), "; ".join(emails)


def _from_json(text: str) -> dict[str, tuple[str, str]]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    found: dict[str, tuple[str, str]] = {}
    for folder, meta in data.items() if isinstance(data, dict) else ():
        people = meta.get(":submitters", meta.get("submitters")) if isinstance(meta, dict) else None
        if isinstance(people, list):
            found[str(folder)] = _joined(people)
    return found


_TOP = re.compile(r"^([^\s:#'\"][^:#]*):\s*$")
_PERSON_FIELD = re.compile(r"^\s*(-\s+)?:(name|email):\s*(.*?)\s*$")


def _scalar(value: str) -> str:
    """A YAML scalar as Gradescope writes names: plain, 'single' ('' for ') or "double" quoted."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            return ""
    return "" if value[:1] in ("&", "*", "!", "|", ">", "[", "{") else value


def _from_yaml(text: str) -> dict[str, tuple[str, str]]:
    people: dict[str, list[dict[str, str]]] = {}
    folder = None
    for line in text.splitlines():
        top = _TOP.match(line)
        if top:
            folder = top.group(1).strip()
            people[folder] = []
            continue
        field = _PERSON_FIELD.match(line)
        if folder is None or field is None:
            continue
        if field.group(1) or not people[folder]:  # "- :name:" starts the next submitter
            people[folder].append({})
        people[folder][-1][field.group(2)] = _scalar(field.group(3))
    return {f: _joined(list(p)) for f, p in people.items() if p}
