"""The BPE merge step (task ``bpe``): the reference module agrees with the fast tokenizer, the
reference passes every check (in process and through the sandbox), the skeleton none, and each
planted mistake loses the check that names it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bevialm import bpe
from bevialm.grading import bpe_task, kit_check
from bevialm.grading.grade import Options, format_report, grade
from bevialm.grading.rubric import PRESETS, Settings, default_rubric, parse
from bevialm.tokenizer import train_bpe

from . import planted
from .test_grading import failing, grade_here, graded_with, hint, solution_copy

TEXTS = st.text(alphabet=st.sampled_from("ab c\u00e9\u65e5"), max_size=40)


@pytest.fixture(scope="module")
def solution(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return solution_copy(tmp_path_factory.mktemp("bpe") / "pkg")


def test_the_worked_example_of_the_docs() -> None:
    a, b, c, d = (ord(ch) for ch in "abcd")
    merges = bpe.train("aaabdaaabac", 259)
    assert merges == [(a, a), (a, b), (256, 257)]  # Z = aa, Y = ab (the tie with Za), X = ZY
    assert bpe.encode("aaabdaaabac", merges) == [258, d, 258, a, c]
    assert bpe.decode([258, d, 258, a, c], merges) == "aaabdaaabac"
    assert bpe.get_stats([a, a, a]) == {(a, a): 2}  # overlaps count
    assert bpe.merge([a, a, a], (a, a), 256) == [256, a]  # left to right, never overlapping


def test_bytes_that_are_not_utf8() -> None:
    assert bpe.decode([0xFF, 0x61, 0xE6, 0x97], []) == "\ufffda\ufffd"
    raw = bytes([0xFF, 0xFE, 0xFF, 0xFE])
    merges = bpe.train(raw, 257)
    assert merges == [(0xFF, 0xFE)] and bpe.encode(raw, merges) == [256, 256]


@settings(max_examples=60, deadline=None)
@given(TEXTS, st.integers(256, 290))
def test_the_exercise_learns_what_the_fast_tokenizer_learns(text: str, vocab_size: int) -> None:
    merges = bpe.train(text, vocab_size)
    if text:
        fast = train_bpe(text, vocab_size, pre_split_rule="none")
        assert merges == list(fast.merges)
        assert bpe.encode(text, merges) == fast.encode(text).tolist()
    assert bpe.decode(bpe.encode(text, merges), merges) == text


@settings(max_examples=40, deadline=None)
@given(TEXTS, TEXTS)
def test_encoding_another_text_matches_the_fast_tokenizer(train_text: str, text: str) -> None:
    if not train_text:
        return
    fast = train_bpe(train_text, 280, pre_split_rule="none")
    assert bpe.encode(text, list(fast.merges)) == fast.encode(text).tolist()


def test_the_cases_cover_what_the_issue_asks() -> None:
    cases = bpe_task.bpe_cases(Settings())
    labels = " ".join(c.label for kind in bpe_task.KINDS for c in cases.by_kind[kind])
    for words in ("worked example", "tie", "not UTF-8", "'aaa'", "drawn text", "errors='replace'"):
        assert words in labels
    assert bpe_task.bpe_cases(Settings()) == cases  # the same seed, the same cases
    assert bpe_task.drawn_texts(Settings(seed=1)) != bpe_task.drawn_texts(Settings(seed=2))


def test_plain_describes_what_is_not_an_answer() -> None:
    assert kit_check.plain("encode", (1, 2)) == [1, 2]
    assert kit_check.plain("encode", "12") == "returned str"
    assert kit_check.plain("encode", [1.5]) == "returned list"
    assert kit_check.plain("train", [(1, 2, 3)]) == "returned list"
    assert kit_check.plain("stats", [1]) == "returned list"
    assert kit_check.plain("decode", b"x") == "returned bytes"


def test_reference_passes_and_skeleton_fails_through_the_sandbox(solution: Path, tmp_path: Path) -> None:
    from bevialm.grading.skeleton import write_skeleton

    rubric = parse('[assignment]\npreset = "tokenizer"\n', "r.toml", default_rubric())
    report = grade(solution, Options(rubric=rubric))
    assert report.score == report.max_score == 12, format_report(report)
    write_skeleton(tmp_path / "pkg", written=PRESETS["tokenizer"])
    bare = grade(tmp_path / "pkg", Options(rubric=rubric))
    assert bare.score == 0 and all("NotImplementedError" in r.hint for r in bare.results), format_report(bare)


# mistake -> (substitution, the checks it must lose, the check that names it, words its hint must hold)
MISTAKES: dict[str, tuple[str, set[str], str, list[str]]] = {
    "tie broken the wrong way": (planted.BPE_TIE_TO_THE_LARGEST_PAIR, {"bpe.train"}, "bpe.train", ["tie"]),
    "overlapping pairs merged twice": (
        planted.BPE_OVERLAPPING_MERGE, {"bpe.merge", "bpe.train", "bpe.encode"}, "bpe.merge", ["'aaa'", "[256, 256]", "[256, 97]"],
    ),
    "overlapping pairs counted once": (planted.BPE_STATS_WITHOUT_OVERLAPS, {"bpe.stats", "bpe.train"}, "bpe.stats", ["overlaps count"]),
    "merges applied out of order in encode": (planted.BPE_ENCODE_MERGES_IN_REVERSE, {"bpe.encode"}, "bpe.encode", ["merges"]),
    "decode without errors='replace'": (planted.BPE_DECODE_STRICT, {"bpe.decode"}, "bpe.decode", ["UnicodeDecodeError", "not UTF-8"]),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_planted_mistake_loses_the_check_that_names_it(mistake: str, solution: Path, tmp_path: Path) -> None:
    code, expected, named, words = MISTAKES[mistake]
    report = graded_with(solution, tmp_path, "bpe.py", code, ("bpe",))
    assert failing(report) == expected, format_report(report, width=400)
    text = hint(report, named)
    assert all(w in text for w in words), text


def test_reference_passes_in_process(solution: Path) -> None:
    report = grade_here(solution, only=("bpe",))
    assert failing(report) == set() and len(report.results) == 5, format_report(report)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_the_reference_passes_on_cases_drawn_from_any_seed(seed: int) -> None:
    from bevialm.grading.compare import Verdict
    from bevialm.grading.observation import Observation

    cases = bpe_task.bpe_cases(Settings(seed=seed))
    for kind in bpe_task.KINDS:
        obs = Observation()
        bpe_task.run(kind, cases, lambda module, function, *args: getattr(bpe, function)(*args), obs)
        assert bpe_task.judge(kind, cases, obs) == Verdict(True, None, "ok", "")
        obs.answers[-1] = "returned NoneType"  # one wrong answer fails the check
        verdict = bpe_task.judge(kind, cases, obs)
        assert not verdict.passed and cases.by_kind[kind][-1].label in verdict.hint
