"""Grading beyond the pairs: the model's own forward and backward, AdamW, the schedule and
clipping. The reference passes every check; each planted mistake loses exactly the checks that
name it, with a hint that points at it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bevialm.grading.grade import format_report
from bevialm.grading.rubric import PRESETS, default_rubric, parse

from . import planted
from .test_grading import failing, grade_here, graded_with, hint, solution_copy

COMPOSED = {"model.loss_and_grads", "model.training"}


@pytest.fixture(scope="module")
def solution(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return solution_copy(tmp_path_factory.mktemp("training") / "pkg")


OPTIMIZER = ("adamw", "schedule", "clipping")

# mistake -> (file, substitution, checks graded, the checks it must lose, the check that names it, words
# that check's hint must hold)
MISTAKES: dict[str, tuple[str, str, tuple[str, ...], set[str], str, list[str]]] = {
    "AdamW without bias correction": (
        "optim.py", planted.ADAMW_WITHOUT_BIAS_CORRECTION, OPTIMIZER, {"adamw.step"}, "adamw.step", ["after step 1, t = 1", "bias correction"],
    ),
    "L2 added to the gradient instead of decoupled decay": (
        "optim.py", planted.ADAMW_WITH_L2_INSTEAD_OF_DECOUPLED_DECAY, OPTIMIZER, {"adamw.step"},
        "adamw.step", ["moments of decayed parameters are wrong", "L2"],
    ),
    "decay applied to every parameter": (
        "optim.py", planted.ADAMW_DECAYING_EVERY_PARAMETER, OPTIMIZER, {"adamw.step"},
        "adamw.step", ["(exempt from decay)", "only the parameters exempt from decay are wrong"],
    ),
    "decay rule without the embedding exemption": (
        # adamw.step fails too: the config it is handed is the student's own class, in process as in
        # the sandbox, so its decays method calls the student's rule
        "optim.py", planted.DECAY_RULE_WITHOUT_THE_EMBEDDING_EXEMPTION, OPTIMIZER, {"adamw.decays", "adamw.step"},
        "adamw.decays", ["decays('tok_emb.W') returned True, the reference False"],
    ),
    "warmup off by one": (
        "optim.py", planted.SCHEDULE_WARMUP_OFF_BY_ONE, OPTIMIZER, {"schedule.key_points"}, "schedule.key_points", ["the first update"],
    ),
    "cosine off by one": (
        "optim.py", planted.SCHEDULE_COSINE_OFF_BY_ONE, OPTIMIZER, {"schedule.key_points"}, "schedule.key_points", ["the first cosine step"],
    ),
    "per-tensor clipping": (
        "optim.py", planted.PER_TENSOR_CLIPPING, OPTIMIZER, {"clipping.clip"}, "clipping.clip", ["below the norm", "clipped["],
    ),
    "global norm as a sum of norms": (
        "optim.py", planted.GLOBAL_NORM_AS_A_SUM_OF_NORMS, OPTIMIZER, {"clipping.global_norm", "clipping.clip"},
        "clipping.global_norm", ["global_norm differs", "two tensors"],
    ),
    "position-embedding gradient averaged over the batch": (
        "model.py", planted.POS_EMB_GRADIENT_AVERAGED, ("model",), {"model.backward"} | COMPOSED,
        "model.backward", ["d(pos_emb.W) differs", "batch of 2", "[wrong: pos_emb;"],
    ),
    "positions for the whole context": (
        "model.py", planted.POSITIONS_FOR_THE_WHOLE_CONTEXT, ("model",), {"model.forward", "model.backward"},
        "model.forward", ["raised ValueError", "T = 3 < ctx"],
    ),
}


def test_reference_passes_every_check_beyond_the_pairs(solution: Path) -> None:
    report = grade_here(solution, only=("model", *OPTIMIZER))
    assert failing(report) == set(), format_report(report)
    assert {r.check.id for r in report.results} >= {"model.forward", "model.backward", "adamw.step", "adamw.decays",
                                                     "schedule.key_points", "clipping.global_norm", "clipping.clip"}  # fmt: skip


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_planted_mistake_loses_the_check_that_names_it(mistake: str, solution: Path, tmp_path: Path) -> None:
    file, code, only, expected, named, words = MISTAKES[mistake]
    report = graded_with(solution, tmp_path, file, code, only)
    assert failing(report) == expected, format_report(report, width=400)
    text = hint(report, named)
    assert all(w in text for w in words), text
    assert report.score < report.max_score


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_gives_the_reference_full_marks(name: str, solution: Path) -> None:
    rubric = parse(f'[assignment]\npreset = "{name}"\n', "r.toml", default_rubric())
    report = grade_here(solution, rubric=rubric)
    assert report.max_score > 0 and report.score == report.max_score, format_report(report)
    graded = {r.check.subject for r in report.results}
    assert graded - {"model"} == set(PRESETS[name]) - {"model"}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_gives_its_bare_skeleton_zero(name: str, tmp_path: Path) -> None:
    from bevialm.grading.skeleton import write_skeleton

    write_skeleton(tmp_path / "pkg", written=PRESETS[name])
    rubric = parse(f'[assignment]\npreset = "{name}"\n', "r.toml", default_rubric())
    report = grade_here(tmp_path / "pkg", rubric=rubric)
    assert report.max_score > 0 and report.score == 0, format_report(report)
    assert all("NotImplementedError" in r.hint for r in report.results), format_report(report)


def test_assignment_tables_and_presets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import zipfile

    from bevialm.grading import cli as grading_cli
    from bevialm.grading.rubric import RubricError, load

    rubric = parse('[assignment]\ntasks = ["attention", "softmax"]\n', "r.toml", default_rubric())
    assert rubric.tasks == ("softmax", "attention")  # the registry's order
    assert rubric.graded("model", "training") and not rubric.graded("model", "forward") and not rubric.graded("linear", "forward")
    for text, message in [
        ('[assignment]\npreset = "everything"\n', "preset must be one of all, layers"),
        ('[assignment]\ntasks = ["lstm"]\n', "unknown task 'lstm'"),
        ("[assignment]\ntasks = []\n", "non-empty list"),
        ('[assignment]\nweek = 3\n', "unknown key"),
    ]:
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(RubricError, match=message):
            load(tmp_path / "bad.toml")
    out = tmp_path / "a.zip"
    assert grading_cli.main(["autograder", str(out), "--preset", "optimizer"]) == 0
    with zipfile.ZipFile(out) as bundle:
        assert parse(bundle.read("rubric.toml").decode(), "b", default_rubric()).tasks == PRESETS["optimizer"]
    (tmp_path / "mine.toml").write_text("[settings]\nseed = 3\n")
    assert grading_cli.main(["autograder", str(out), "--rubric", str(tmp_path / "mine.toml"), "--preset", "layers"]) == 0
    with zipfile.ZipFile(out) as bundle:
        assert parse(bundle.read("rubric.toml").decode(), "b", default_rubric()).tasks == PRESETS["layers"]
    (tmp_path / "own.toml").write_text('[assignment]\npreset = "layers"\n')
    assert grading_cli.main(["autograder", str(out), "--rubric", str(tmp_path / "own.toml"), "--preset", "all"]) == 1
    assert "has its own [assignment]" in capsys.readouterr().err
    assert grading_cli.main(["grade", "--list-checks", "--preset", "optimizer"]) == 0
    listed = capsys.readouterr().out
    assert "adamw.step" in listed and "linear.forward" not in listed and "model." not in listed


def test_garbage_returned_fails_with_a_readable_hint(solution: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    shutil.copytree(solution, folder)
    planted.plant(folder, "optim.py", planted.GARBAGE_FROM_THE_OPTIMIZER)
    planted.plant(folder, "model.py", planted.GARBAGE_FROM_THE_MODEL)
    report = grade_here(folder, only=("model.forward", "model.backward", *OPTIMIZER))
    assert failing(report) == {r.check.id for r in report.results}, format_report(report)
    assert "logits is a list" in hint(report, "model.forward")
    assert "grads is a list, expected a dict" in hint(report, "model.backward")
    assert "step returned its state as an int" in hint(report, "adamw.step") or "params is a list" in hint(report, "adamw.step")
    assert "decays('tok_emb.W') returned a str, expected True or False" in hint(report, "adamw.decays")
    assert "lr / base_lr is a str" in hint(report, "schedule.key_points")
    assert "global_norm is missing" in hint(report, "clipping.global_norm") or "global_norm is a NoneType" in hint(report, "clipping.global_norm")
    assert "clip_by_global_norm returned a float, expected (clipped, norm)" in hint(report, "clipping.clip")


def test_checks_beyond_the_pairs_in_the_sandbox(solution: Path, tmp_path: Path) -> None:
    """The same checks through the isolated child: configs and the optimizer's state are the
    student's own dataclasses there, and the state comes back as a remote object's fields."""
    from bevialm.grading.grade import Options, grade

    folder = tmp_path / "pkg"
    shutil.copytree(solution, folder)
    planted.plant(folder, "optim.py", planted.DECAY_RULE_WITHOUT_THE_EMBEDDING_EXEMPTION)
    planted.plant(folder, "optim.py", planted.SCHEDULE_WARMUP_OFF_BY_ONE)
    planted.plant(folder, "model.py", planted.POS_EMB_GRADIENT_AVERAGED)
    only = ("model.forward", "model.backward", *OPTIMIZER)
    report = grade(folder, Options(only=only, jobs=2))
    assert report.sandboxed
    # the student's own config calls the student's decay rule, so the step fails as well
    assert failing(report) == {"model.backward", "adamw.decays", "adamw.step", "schedule.key_points"}, format_report(report)
    assert "d(pos_emb.W) differs" in hint(report, "model.backward")
    assert "(exempt from decay)" in hint(report, "adamw.step")
    assert "the first update" in hint(report, "schedule.key_points")
    here = grade_here(folder, only=only)  # in process: the same verdicts and hints
    assert {r.check.id: (r.passed, r.hint) for r in here.results} == {r.check.id: (r.passed, r.hint) for r in report.results}


def test_handed_out_modules_are_the_graders_own(solution: Path, tmp_path: Path) -> None:
    """In an attention assignment the student's copy of linear.py is not used: a change there
    (a wrong bias gradient) costs nothing, and helps nothing either."""
    folder = tmp_path / "pkg"
    shutil.copytree(solution, folder)
    planted.plant(folder, "layers/linear.py", planted.BIAS_GRADIENT_AVERAGED)
    rubric = parse('[assignment]\npreset = "attention"\n', "r.toml", default_rubric())
    report = grade_here(folder, rubric=rubric)
    assert failing(report) == set() and report.score == report.max_score, format_report(report)
    everything = grade_here(folder)
    assert {"linear.backward", "attention.backward"} <= failing(everything)
