"""Grading the BPE merge step (task ``bpe``): the five functions of :mod:`bevialm.bpe`.

As for the other checks beyond the pairs (:mod:`bevialm.grading.training`), three parts:
the reference's cases with their answers (:func:`bpe_cases`, made before any student code
runs), the student's side (:func:`run`: each check calls one of the student's
functions on every case through the session) and judging (:func:`judge`), put together
in :data:`bevialm.grading.kinds.CHECK_KINDS`. Tokens are
integers and texts strings, so answers are compared exactly, not within a tolerance.

The cases: Wikipedia's ``aaabdaaabac`` (the worked example of ``docs/tokenizer.md``),
overlapping pairs (``aaa``), ties (every pair once), bytes that are not UTF-8, texts
with multi-byte characters, and texts drawn from the rubric's seed over a small
alphabet (so pairs repeat and ties are common).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bevialm import bpe
from bevialm.grading.compare import Verdict
from bevialm.grading.kit_check import plain
from bevialm.grading.observation import Observation
from bevialm.grading.rubric import Settings

Call = Callable[..., Any]
MODULE = "bpe"
"""The student-side module of the task."""

KINDS = ("stats", "merge", "train", "encode", "decode")

WORKED = "aaabdaaabac"
"""Wikipedia's example (``docs/tokenizer.md``): merges aa, ab (a tie with Za), then ZY."""

DRAWN_ALPHABET = "ab c\u00e9"
"""Drawn texts use few characters (one of two bytes in UTF-8), so pairs repeat and tie."""


@dataclass(frozen=True)
class BpeCase:
    """One call of one function (``args``) and the reference's answer."""

    label: str
    args: tuple[Any, ...]
    answer: Any


@dataclass(frozen=True)
class BpeCases:
    """Every check's cases, by kind."""

    by_kind: Mapping[str, tuple[BpeCase, ...]]


def drawn_texts(settings: Settings, n: int = 3) -> list[str]:
    rng = np.random.default_rng([settings.seed, 74])
    return ["".join(rng.choice(list(DRAWN_ALPHABET), size=int(rng.integers(12, 40)))) for _ in range(n)]


NOT_UTF8 = [0xFF, 0xFE, 0xFF, 0xFE, 0x61, 0xC3]
"""Bytes that are not UTF-8: two invalid bytes repeated, an ``a``, a lone lead byte."""


def _calls(settings: Settings) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
    """The arguments of every case, by kind (answers come from the reference)."""
    drawn = drawn_texts(settings)
    worked_merges = bpe.train(WORKED, 259)
    drawn_merges = bpe.train(drawn[0] + drawn[1], 270)
    e_acute = list("\u00e9".encode())
    return {
        "stats": [
            (f"the worked example {WORKED!r} (aa counted 4 times: overlaps count)", (list(WORKED.encode()),)),
            ("'aaa': the pair (97, 97) twice (overlaps count)", (list(b"aaa"),)),
            ("bytes that are not UTF-8", (NOT_UTF8,)),
            ("tokens above 255 after merges", ([256, 97, 98, 256, 97, 98, 257],)),
            ("one token: no pairs", ([97],)),
            ("no tokens", ([],)),
            *((f"drawn text {t!r}", (list(t.encode()),)) for t in drawn),
        ],
        "merge": [
            ("'aaa' with (97, 97): left to right, never overlapping", (list(b"aaa"), (97, 97), 256)),
            ("'aaaa' with (97, 97)", (list(b"aaaa"), (97, 97), 256)),
            (f"{WORKED!r} with (97, 98)", (list(WORKED.encode()), (97, 98), 300)),
            ("the pair at the very end", ([1, 2, 3, 4], (3, 4), 260)),
            ("the pair absent (but its first token present)", ([1, 2, 1, 3], (1, 4), 260)),
            ("bytes that are not UTF-8", (NOT_UTF8, (0xFF, 0xFE), 256)),
            ("'\u00e9' as its two bytes", ([*e_acute, 32, *e_acute], tuple(e_acute), 256)),
        ],
        "train": [
            (f"the worked example {WORKED!r} to 259 tokens (a tie at the second merge)", (WORKED, 259)),
            ("'abcd': a tie between every pair (the smallest pair wins)", ("abcd", 258)),
            ("'dcba dcba': ties that the smallest pair, not the first seen, wins", ("dcba dcba", 260)),
            ("'aaaaaaa' (overlapping pairs)", ("aaaaaaa", 259)),
            ("vocab_size 256: no merges", (WORKED, 256)),
            ("more tokens asked than pairs left: stops early", ("ab", 300)),
            ("multi-byte characters", ("\u00e9t\u00e9 \u00e9t\u00e9 \u65e5\u672c", 266)),
            *((f"drawn text {t!r} to 272 tokens", (t, 272)) for t in drawn),
        ],
        "encode": [
            (f"the worked example with its own merges {worked_merges}", (WORKED, worked_merges)),
            ("'aaaaa' with the worked example's merges", ("aaaaa", worked_merges)),
            ("a drawn text with merges learned from others (merges by rank)", (drawn[2], drawn_merges)),
            ("a text with no merges", ("hello", [])),
            ("the empty text", ("", worked_merges)),
            ("merges whose order matters: (98, 99) before (97, 98)", ("abc", [(98, 99), (97, 98), (97, 256)])),
        ],
        "decode": [
            ("the worked example", ([258, 100, 258, 97, 99], worked_merges)),
            ("merged tokens of multi-byte characters", (bpe.encode("\u00e9t\u00e9 \u65e5\u672c", drawn_merges), drawn_merges)),
            ("bytes that are not UTF-8 (errors='replace')", (NOT_UTF8, [])),
            ("a character cut in half at the end (errors='replace')", ([97, 0xE6, 0x97], [])),
            ("no tokens", ([], worked_merges)),
        ],
    }  # fmt: skip


FUNCTIONS = {"stats": "get_stats", "merge": "merge", "train": "train", "encode": "encode", "decode": "decode"}


def bpe_cases(settings: Settings) -> BpeCases:
    """Every case with the reference's answer, made in the grader's process."""
    by_kind = {
        kind: tuple(BpeCase(label, args, getattr(bpe, FUNCTIONS[kind])(*args)) for label, args in calls)
        for kind, calls in _calls(settings).items()
    }
    return BpeCases(by_kind)


# --- the student's side ---------------------------------------------------------------------------


def run(kind: str, cases: BpeCases, call: Call, obs: Observation) -> None:
    """Call the student's function on every case of ``kind``; record what came back."""
    for i, c in enumerate(cases.by_kind[kind]):
        obs.case = i
        obs.answers.append(plain(kind, call(MODULE, FUNCTIONS[kind], *c.args)))


# --- judging -----------------------------------------------------------------------------------


def _show(kind: str, value: Any) -> str:
    if isinstance(value, str) and value.startswith("returned ") and kind != "decode":
        return value
    text = repr(value) if kind == "decode" else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def judge(kind: str, cases: BpeCases, obs: Observation) -> Verdict:
    """Exact agreement with the reference on every case; the first wrong case names itself."""
    answers = obs.answers
    wanted = cases.by_kind[kind]
    if len(answers) != len(wanted):
        return Verdict(False, None, f"{FUNCTIONS[kind]} did not answer every case")
    wrong = [(c, got) for c, got in zip(wanted, answers, strict=True) if got != plain(kind, c.answer)]
    if not wrong:
        return Verdict(True)
    c, got = wrong[0]
    want = plain(kind, c.answer)
    what = "got" if not (isinstance(got, str) and got.startswith("returned ")) or kind == "decode" else ""
    yours = f"{what} {_show(kind, got)}".strip()
    if kind == "stats" and isinstance(got, list):
        return Verdict(False, None, _stats_hint(got, want, c.label, len(wrong)), "\n".join(f"{w.label}: yours {_show(kind, g)}" for w, g in wrong))
    also = f"; also wrong: {len(wrong) - 1} more case{'s' if len(wrong) > 2 else ''}" if len(wrong) > 1 else ""
    hint = f"{FUNCTIONS[kind]} {yours}, the reference {_show(kind, want)} ({c.label}){also}"
    details = "\n".join(f"{w.label}: yours {_show(kind, g)}, reference {_show(kind, plain(kind, w.answer))}" for w, g in wrong)
    return Verdict(False, None, hint, details)


def _stats_hint(got: list[list[int]], want: list[list[int]], label: str, n_wrong: int) -> str:
    """``get_stats gave (97, 97): 2, the reference 4 (...)``: the first pair counted wrong."""
    yours, theirs = ({(a, b): n for a, b, n in rows} for rows in (got, want))
    pair = min(p for p in yours.keys() | theirs.keys() if yours.get(p) != theirs.get(p))
    also = f"; also wrong: {n_wrong - 1} more case{'s' if n_wrong > 2 else ''}" if n_wrong > 1 else ""
    return f"get_stats gave {pair}: {yours.get(pair, 'nothing')}, the reference {theirs.get(pair, 'nothing')} ({label}){also}"
