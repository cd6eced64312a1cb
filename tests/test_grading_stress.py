"""The grader's stress cases: each class catches the mistake it is there for, on the check
that names it, and the reference passes every one of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bevialm.grading.cases import cases
from bevialm.grading.grade import format_report
from bevialm.registry import BY_NAME

from . import planted
from .test_grading import failing, graded_with, hint, solution_copy

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the naive forms overflow, as they should


@pytest.fixture(scope="module")
def solution(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return solution_copy(tmp_path_factory.mktemp("stress") / "pkg")


def test_every_stress_case_is_graded() -> None:
    for name in ("softmax", "cross_entropy", "layernorm", "attention", "block", "linear"):
        spec = BY_NAME[name]
        assert spec.stress and all(c in cases(spec, 1, 2) for c in spec.stress)
    assert all(c.cfg.dim >= 4 for c in cases(BY_NAME["block"], 1, 5))
    assert all(c.cfg.dim >= 4 for c in cases(BY_NAME["layernorm"], 1, 5))


def test_softmax_without_max_subtraction_fails_on_large_logits(solution: Path, tmp_path: Path) -> None:
    report = graded_with(solution, tmp_path, "layers/softmax.py", planted.NAIVE_SOFTMAX, ("softmax", "attention.forward"))
    assert {"softmax.forward", "softmax.gradcheck"} <= failing(report), format_report(report)
    assert "attention.forward" not in failing(report)  # its scores are small: the stable form is not needed there
    text = hint(report, "softmax.forward")
    assert "y contains NaN" in text and "logits near" in text


def test_cross_entropy_without_max_subtraction_fails_on_large_logits(solution: Path, tmp_path: Path) -> None:
    report = graded_with(solution, tmp_path, "losses.py", planted.NAIVE_CROSS_ENTROPY, ("cross_entropy",))
    assert failing(report) == {"cross_entropy.forward", "cross_entropy.gradcheck"}, format_report(report)
    assert "logits near +1000" in hint(report, "cross_entropy.forward")


def test_layer_norm_with_eps_outside_the_root_fails_at_tiny_scale(solution: Path, tmp_path: Path) -> None:
    report = graded_with(solution, tmp_path, "layers/layernorm.py", planted.EPS_OUTSIDE_THE_SQUARE_ROOT, ("layernorm.forward",))
    assert failing(report) == {"layernorm.forward"}, format_report(report)
    worst = next(r.worst_rel for r in report.results)
    assert worst is not None and worst > 1e-2  # at scale 1 it is off by only ~4e-5


def test_squeezing_axes_of_length_one_fails(solution: Path, tmp_path: Path) -> None:
    report = graded_with(solution, tmp_path, "layers/linear.py", planted.SQUEEZED_BATCH, ("linear.forward",))
    assert failing(report) == {"linear.forward"}
    assert "has shape" in hint(report, "linear.forward")


HELPER_MISTAKES = {
    "causal_mask": planted.MASK_HIDES_THE_DIAGONAL,
    "split_heads": planted.SPLIT_HEADS_IN_THE_WRONG_ORDER,
    "merge_heads": planted.MERGE_HEADS_WITHOUT_THE_TRANSPOSE,
}


@pytest.mark.parametrize("helper", list(HELPER_MISTAKES))
def test_a_fault_in_an_attention_helper_is_named(helper: str, solution: Path, tmp_path: Path) -> None:
    report = graded_with(solution, tmp_path, "layers/attention.py", HELPER_MISTAKES[helper], ("attention",))
    assert "attention.forward" in failing(report), format_report(report)
    for check in failing(report) - {"attention.purity"}:
        assert f"[your {helper}(" in hint(report, check) and "fix it first" in hint(report, check)


def test_attention_hint_names_the_wrong_projection(solution: Path, tmp_path: Path) -> None:
    report = graded_with(solution, tmp_path, "layers/attention.py", planted.VALUE_PROJECTION_GRADIENT_DOUBLED, ("attention",))
    assert failing(report) == {"attention.backward", "attention.gradcheck"}
    text = hint(report, "attention.backward")
    assert text.startswith("d(v.") and "[wrong: v; right: q, k, proj]" in text
    assert "your helper" not in text and "fix it first" not in text


def test_backward_hint_leads_with_the_worst_tensor(solution: Path, tmp_path: Path) -> None:
    report = graded_with(solution, tmp_path, "layers/linear.py", planted.TWO_GRADIENTS_WRONG_BY_DIFFERENT_AMOUNTS, ("linear.backward",))
    text = hint(report, "linear.backward")
    assert text.startswith("dW differs") and "also wrong: dx" in text, text
