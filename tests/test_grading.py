"""The grader, run in-process: full marks for the reference, zero for the skeleton, and each
planted mistake losing exactly the checks it should, with a hint naming the wrong tensor.
(The sandbox and the command line are tested in test_grading_sandbox.py.)"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bevialm.grading import cli as grading_cli
from bevialm.grading import gradescope
from bevialm.grading.grade import (
    Comparison,
    GradeError,
    GradeReport,
    Options,
    compare,
    format_report,
    grade,
    pair_dependencies,
    plan_checks,
    tensor_name,
)
from bevialm.grading.observation import Observation, store
from bevialm.grading.rubric import DEFAULT_RUBRIC, TASK_KINDS, RubricError, default_rubric, load, parse
from bevialm.grading.skeleton import SkeletonError, plan, rewrite, write_skeleton
from bevialm.grading.student import (
    SubmissionError,
    find_package_root,
    forget_package,
    import_package,
    reference_imports,
    scan_source,
)
from bevialm.grading.task_list import TASKS
from bevialm.grading.tasks import describe
from bevialm.registry import PAIRS

from . import planted

_counter = itertools.count()

PAIR_CHECKS = ("forward", "backward", "gradcheck", "purity")
MODEL_CHECKS = {"model.backward", "model.loss_and_grads", "model.training"}
"""The model checks a wrong pair backward fails: the model composes the pairs."""


def solution_copy(dest: Path) -> Path:
    """The reference in the skeleton's shape (the instructors' --with-solutions copy)."""
    write_skeleton(dest, with_solutions=True)
    return dest


def patch(root: Path, file: str, old: str, new: str) -> None:
    text = (root / file).read_text()
    assert text.count(old) == 1, f"{file} no longer contains {old!r}: update the planted mistake"
    (root / file).write_text(text.replace(old, new))


def grade_here(folder: Path, **kwargs: object) -> GradeReport:
    """Grade in this process under a fresh package name (so submissions never share modules)."""
    package = f"bevialm_submission_t{next(_counter)}"
    try:
        return grade(folder, Options(sandbox=False, package=package, **kwargs))  # type: ignore[arg-type]
    finally:
        forget_package(package)


def graded_with(solution: Path, tmp_path: Path, file: str, code: str, only: tuple[str, ...]) -> GradeReport:
    """Grade a copy of ``solution`` with one planted mistake (:func:`planted.plant`), on ``only``."""
    folder = tmp_path / "pkg"
    shutil.copytree(solution, folder)
    planted.plant(folder, file, code)
    return grade_here(folder, only=only)


def failing(report: GradeReport) -> set[str]:
    return {r.check.id for r in report.results if not r.passed}


def hint(report: GradeReport, check_id: str) -> str:
    return next(r.hint for r in report.results if r.check.id == check_id)


@pytest.fixture(scope="module")
def solution(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return solution_copy(tmp_path_factory.mktemp("solution") / "pkg")


@pytest.fixture(scope="module")
def skeleton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("skeleton") / "pkg"
    write_skeleton(out)
    return out


@pytest.fixture(scope="module")
def solution_report(solution: Path) -> GradeReport:
    return grade_here(solution)


# --- full marks and zero ----------------------------------------------------------------------


def test_reference_in_skeleton_shape_gets_full_marks(solution_report: GradeReport) -> None:
    report = solution_report
    assert failing(report) == set(), format_report(report)
    assert report.score == report.max_score > 0
    ids = {r.check.id for r in report.results}
    assert ids == {f"{task}.{k}" for task, kinds in TASK_KINDS.items() for k in kinds}
    assert report.reference_uses == [] and report.missing == []
    assert all(r.hint == "ok" for r in report.results)


def test_bare_skeleton_scores_zero_without_crashing(skeleton: Path) -> None:
    report = grade_here(skeleton)
    assert report.score == 0 and report.max_score > 0
    assert all("NotImplementedError" in r.hint for r in report.results), format_report(report)
    assert "layers/linear.py" in hint(report, "linear.forward")


# --- planted mistakes -------------------------------------------------------------------------

Planted = tuple[str, str]
"""A planted mistake: the module file and the function(s) substituted in it (see tests/planted.py)."""

# Each mistake: the substitution, the checks that must fail (all others must pass), and
# the pair it is in with the tensor its backward check's hint must name.
MISTAKES: dict[str, tuple[Planted, set[str], str, str]] = {
    "bias gradient not summed over the batch": (
        ("layers/linear.py", planted.BIAS_GRADIENT_AVERAGED),
        {f"{p}.{k}" for p in ("linear", "attention", "mlp", "block") for k in ("backward", "gradcheck")} | MODEL_CHECKS,
        "linear",
        "db",
    ),
    "transposed weight gradient": (
        ("layers/linear.py", planted.WEIGHT_GRADIENT_TRANSPOSED),
        # attention's projections are square, so only its values are wrong, not its shapes
        {f"{p}.{k}" for p in ("linear", "mlp", "block") for k in ("backward", "gradcheck", "purity")}
        | {"attention.backward", "attention.gradcheck"}
        | MODEL_CHECKS,
        "linear",
        "dW",
    ),
    "mask forgotten in the attention backward": (
        ("layers/attention.py", planted.MASK_FORGOTTEN_IN_ATTEND_BACKWARD),
        {f"{p}.{k}" for p in ("attention", "block") for k in ("backward", "gradcheck")} | MODEL_CHECKS,
        "attention",
        "dx",
    ),
    "embedding backward overwrites repeated indices": (
        ("layers/embedding.py", planted.EMBEDDING_ROWS_OVERWRITTEN),
        {"embedding.backward", "embedding.gradcheck"} | MODEL_CHECKS,
        "embedding",
        "dW",
    ),
    "layer-norm backward missing the mean term": (
        ("layers/layernorm.py", planted.LAYERNORM_MEAN_TERM_MISSING),
        {f"{p}.{k}" for p in ("layernorm", "block") for k in ("backward", "gradcheck")} | MODEL_CHECKS,
        "layernorm",
        "dx",
    ),
    "softmax backward without the row sum": (
        ("layers/softmax.py", planted.SOFTMAX_BACKWARD_WITHOUT_ROW_SUM),
        {f"{p}.{k}" for p in ("softmax", "attention", "block") for k in ("backward", "gradcheck")} | MODEL_CHECKS,
        "softmax",
        "dx",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_planted_mistake_loses_exactly_its_checks(mistake: str, solution: Path, tmp_path: Path) -> None:
    (file, code), expected, pair, tensor = MISTAKES[mistake]
    folder = tmp_path / "pkg"
    shutil.copytree(solution, folder)
    planted.plant(folder, file, code)
    report = grade_here(folder)
    assert failing(report) == expected, format_report(report, width=400)
    backward_hint = hint(report, f"{pair}.backward")
    assert backward_hint.startswith(f"{tensor} "), backward_hint
    gradcheck_hint = hint(report, f"{pair}.gradcheck")
    assert f"{tensor} " in gradcheck_hint
    if " has shape " not in backward_hint:  # (every hint's case label says "input shape")
        # the forward is right, so the hint can say so: "your forward is right, your dW is not"
        assert gradcheck_hint.startswith(f"your forward matches the reference, but your {tensor} ")
    else:  # shapes read as in the backward hint, not as Python tuples
        assert re.search(rf"{tensor} is \((\d+), (\d+)\) float64, expected \(\2, \1\) float64", hint(report, f"{pair}.purity"))
    if pair == "attention":  # the mistake is in the core the student writes too: the hint says so
        assert "your backward calls your attend_backward" in backward_hint
        assert "attend_backward" in gradcheck_hint
    assert report.score < report.max_score


def test_composite_failures_point_at_the_failing_sub_pair(solution: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    shutil.copytree(solution, folder)
    planted.plant(folder, *MISTAKES["softmax backward without the row sum"][0])
    report = grade_here(folder, only=("softmax", "attention", "model.loss_and_grads"))
    assert "it uses softmax, which fails this check too" in hint(report, "attention.backward")
    assert "it uses softmax, which fails this check too" in format_report(report)  # wrapped, not cut
    assert "fix the failing pairs first: attention, softmax" in hint(report, "model.loss_and_grads")
    assert pair_dependencies()["block"] >= {"attention", "mlp", "layernorm", "softmax", "linear"}
    assert "softmax" not in pair_dependencies()["cross_entropy"]  # it uses only softmax's helper


def test_wrong_forward_and_returned_garbage_are_reported(solution: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    shutil.copytree(solution, folder)
    planted.plant(folder, "layers/layernorm.py", planted.LAYERNORM_EPS_REPLACED_BY_ONE)
    planted.plant(folder, "layers/gelu.py", planted.returning("backward", "dx", "[1, 2]"))
    planted.plant(folder, "layers/softmax.py", planted.returning("forward", "y.tolist()", "cache"))
    planted.plant(folder, "layers/dropout.py", planted.returning("backward", "dx", "{'extra': dx}"))
    planted.plant(folder, "layers/linear.py", planted.returning("backward", "dx", "{'W': grads['W']}"))
    report = grade_here(folder, only=("layernorm", "gelu", "softmax", "dropout", "linear.backward"))
    assert hint(report, "layernorm.forward").startswith("forward output y differs from the reference")
    assert "your forward is wrong too" in hint(report, "layernorm.backward")
    assert "grads is a list" in hint(report, "gelu.backward")
    assert "backward returned grads as a list" in hint(report, "gelu.purity")
    assert "y is a list" in hint(report, "softmax.forward")
    assert "unexpected keys ['extra']" in hint(report, "dropout.backward")
    assert hint(report, "linear.backward").startswith("db ") and "grads has no 'b'" in hint(report, "linear.backward")


def test_impure_and_upcasting_pairs_fail_purity(solution: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    shutil.copytree(solution, folder)
    planted.plant(folder, "layers/gelu.py", planted.COTANGENT_DOUBLED_IN_PLACE)
    planted.plant(folder, "layers/relu.py", planted.returning("backward", "dx.astype(np.float64)", "grads"))
    planted.plant(folder, "layers/layernorm.py", planted.INIT_WITHOUT_BETA_IN_FLOAT64)
    report = grade_here(folder, only=("purity",))
    # the MLP and the block use relu, gelu and layernorm, so they fail too
    assert failing(report) == {f"{p}.purity" for p in ("gelu", "relu", "layernorm", "mlp", "block")}
    gelu = next(r for r in report.results if r.check.id == "gelu.purity")
    assert "backward mutated the cotangent dy" in gelu.details
    assert "float32" in hint(report, "relu.purity")
    assert re.search(r"init\(cfg, rng, np.float64\) gave \{gamma: \[\d+\] float64\}", hint(report, "layernorm.purity"))


def test_submission_using_the_reference_is_flagged(solution: Path, tmp_path: Path) -> None:
    folder = tmp_path / "upload" / "mine"
    shutil.copytree(solution, folder)
    patch(folder, "layers/block.py", "from . import attention, dropout, layernorm, mlp", "from . import dropout, layernorm, mlp\nfrom bevialm.layers import attention")
    # ... and tries to hide it: once imported, the package rewrites its source (the scan comes first)
    with (folder / "__init__.py").open("a") as init:
        init.write("import pathlib\n_f = pathlib.Path(__file__).parent / 'layers' / 'block.py'\n")
        init.write("_f.write_text(_f.read_text().replace('from bevialm.layers import attention', 'from . import attention'))\n")
    report = grade_here(folder.parent, only=("block.forward",))
    assert report.root == folder  # found one level down, as students often upload it
    assert report.reference_uses == ["layers/block.py:25: uses the reference bevialm.layers.attention"]
    assert "FLAGGED" in format_report(report) and "bevialm.layers.attention" in format_report(report)
    assert failing(report) == set()  # flagged for the instructor, not penalised by itself


def test_scan_finds_every_way_to_reach_the_reference() -> None:
    source = "\n".join(
        [
            "import bevialm.layers.linear as lin",
            "from bevialm import losses, types",
            "from bevialm.model import forward",
            "import bevialm",
            "x = bevialm.layers",
            "import importlib; importlib.import_module('bevialm.layers.attention')",
            "from bevialm.types import Array",
            "from bevialm.gradcheck import vjp_check",
            "from . import linear",
        ]
    )
    found = scan_source(source, "m.py")
    assert [f.split("reference ")[1] for f in found] == [
        "bevialm.layers.linear",
        "bevialm.losses",
        "bevialm.model",
        "bevialm.layers",
        "bevialm.layers.attention",
    ]
    assert scan_source("def (:", "bad.py")[0].startswith("bad.py:1: does not parse")


# --- the pieces -------------------------------------------------------------------------------


def test_compare_names_shape_nan_and_worst_entry() -> None:
    want = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert compare("dW", want + 1e-13, want, None).passed
    assert compare("dW", None, want, "list").problem == "dW is a list, expected an array of shape (2, 2)"
    assert compare("dW", None, want, None).problem.startswith("dW is missing")
    assert "shape (2,)" in compare("dW", np.ones(2), want, None).problem
    nan = compare("dW", want * np.nan, want, None)
    assert not nan.passed and "NaN (4 of 4" in nan.problem
    assert "inf" in compare("dW", want * np.inf, want, None).problem
    wrong = compare("dW", want + np.array([[0, 0], [0.5, 0]]), want, None)
    assert not wrong.passed and "at [1, 0]" in wrong.problem and "yours 3.5, reference 3" in wrong.problem
    assert compare("e", np.zeros(0), np.zeros(0), None) == Comparison("e", True, 0.0)
    assert tensor_name("W") == "dW" and tensor_name("q.W") == "d(q.W)"


def test_observations_record_arrays_and_the_types_of_everything_else() -> None:
    obs = Observation()
    store(obs, "0/y", np.arange(3.0))
    store(obs, "0/n", 2.5)
    store(obs, "0/l", [1, 2])
    store(obs, "0/o", np.array([None]))
    assert np.array_equal(obs.arrays["0/y"], np.arange(3.0)) and obs.arrays["0/n"] == 2.5
    assert obs.types == {"0/n": "float", "0/l": "list", "0/o": "object array"}
    try:
        raise SystemExit(4)
    except SystemExit as exc:
        assert describe(exc, Path("/nowhere")).message == "sys.exit(4) was called"
    long = describe(ValueError("x" * 1000), Path("/nowhere"))
    assert long.message.endswith("...") and long.where == ""


def test_import_errors_and_missing_functions_are_graded_not_fatal(solution: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    shutil.copytree(solution, folder)
    (folder / "__init__.py").unlink()  # a package without __init__.py still imports
    patch(folder, "layers/gelu.py", "def backward(", "def backwards(")
    (folder / "layers" / "relu.py").write_text("def (:\n")
    report = grade_here(folder, only=("gelu.backward", "relu.forward", "linear.forward"))
    assert "has no function 'backward'" in hint(report, "gelu.backward")
    assert hint(report, "relu.forward").startswith("raised SyntaxError")
    assert failing(report) == {"gelu.backward", "relu.forward"}


def test_package_root_and_import(tmp_path: Path, solution: Path) -> None:
    with pytest.raises(SubmissionError, match="does not exist"):
        find_package_root(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(SubmissionError, match="not a folder"):
        find_package_root(tmp_path / "file.txt")
    with pytest.raises(SubmissionError, match="no BeviaLLM package"):
        find_package_root(tmp_path)
    module = import_package(solution, "bevialm_submission_import_test")
    try:
        assert import_package(solution, "bevialm_submission_import_test") is module
    finally:
        forget_package("bevialm_submission_import_test")
    broken = tmp_path / "broken"
    shutil.copytree(solution, broken)
    (broken / "__init__.py").write_text("raise ImportError('nope')\n")
    with pytest.raises(ImportError):
        import_package(broken, "bevialm_submission_broken")
    assert reference_imports(broken) == []


# --- skeleton ---------------------------------------------------------------------------------


def test_skeleton_blanks_exactly_the_registry_functions(skeleton: Path) -> None:
    import ast

    listed: dict[str, set[str]] = {}
    for task in TASKS:
        listed.setdefault(task.module.__name__, set()).update(task.functions)
    for m in plan():
        tree = ast.parse((skeleton / m.path).read_text())
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef):
                continue
            blanked = isinstance(node.body[-1], ast.Raise) and len(node.body) <= 2
            assert blanked == (node.name in listed.get(m.name, set())), f"{m.path}: {node.name}"
    linear = (skeleton / "layers/linear.py").read_text()
    assert "class LinearConfig" in linear and "class LinearCache" in linear and "x2d.T @ dy2d" not in linear
    assert "from . import attention, dropout, layernorm, mlp" in (skeleton / "layers/block.py").read_text()
    assert "from . import linear, softmax" in (skeleton / "layers/attention.py").read_text()
    assert "from bevialm.types import" in linear  # infrastructure stays shared
    assert reference_imports(skeleton) == []
    assert "layers/linear.py" in (skeleton / "README.md").read_text()
    assert "`attend`, `attend_backward`" in (skeleton / "README.md").read_text()  # students write the core


def test_rewrite_handles_other_import_forms() -> None:
    source = "\n".join(
        [
            '"""doc"""',
            "import os",
            "import bevialm.layers.linear as lin",
            "from bevialm import losses, types",
            "from ..types import Array",
            "",
            "def forward(x):",
            "    '''doc'''",
            "    from bevialm.layers import linear",
            "    y = x",
            "    return y",
            "    # a trailing comment of the solution",
            "",
            "def init(x):",
            "    '''only a docstring'''",
            "",
        ]
    )
    out = rewrite(source, "bevialm.layers.thing", False, frozenset({"forward"}))
    assert "from . import linear as lin" in out and "from .. import losses" in out
    assert "from bevialm import types" in out and "from bevialm.types import Array" in out
    assert "trailing comment" not in out and "y = x" not in out and "from bevialm.layers import linear" not in out
    with pytest.raises(SkeletonError, match="does not define"):
        rewrite("x = 1\n", "bevialm.layers.thing", False, frozenset({"forward"}))
    with pytest.raises(SkeletonError, match="cannot rewrite 'import bevialm.layers'"):
        rewrite("import bevialm.layers\n", "bevialm.layers.thing", False, frozenset())
    with pytest.raises(SkeletonError, match="'def' line"):
        rewrite("def forward(x): return x\n", "bevialm.layers.thing", False, frozenset({"forward"}))
    stub = rewrite("def init(x):\n    '''doc'''\n", "bevialm.layers.thing", False, frozenset({"init"}))
    assert stub.endswith("    '''doc'''\n    raise NotImplementedError\n")


# --- rubric -----------------------------------------------------------------------------------


def test_default_rubric_and_overrides(tmp_path: Path) -> None:
    rubric = default_rubric()
    assert rubric.rule("linear.forward").points == 2 and rubric.rule("model.training").visibility == "after_published"
    custom = tmp_path / "rubric.toml"
    custom.write_text(
        '[settings]\nseed = 7\ntime_limit = 5\n[kinds.forward]\npoints = 4\n'
        '[checks."attention.backward"]\npoints = 6\nvisibility = "hidden"\n'
        '[checks."dropout.gradcheck"]\nenabled = false\n'
    )
    loaded = load(custom)
    assert loaded.settings.seed == 7 and loaded.settings.time_limit == 5.0
    assert loaded.rule("relu.forward").points == 4 and loaded.rule("attention.backward").points == 6
    checks = plan_checks(loaded, visible_only=True)
    ids = {c.id for c in checks}
    assert "attention.backward" not in ids and "dropout.gradcheck" not in ids and "model.training" not in ids
    assert {c.id for c in plan_checks(loaded, only=("*.backward",))} == {f"{s.name}.backward" for s in PAIRS} | {"model.backward"}
    with pytest.raises(GradeError, match="matches no check"):
        plan_checks(loaded, only=("lineaer",))
    assert load(None) == rubric


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[settings\n", "not valid TOML"),
        ("[grading]\n", "unknown table"),
        ("settings = 3\n", "must be a table"),
        ("[settings]\nspeed = 1\n", "unknown setting"),
        ("[settings]\nseed = -1\n", "integer >= 0"),
        ("[settings]\ntime_limit = 0\n", "> 0"),
        ("[settings]\nresults_visibility = 'secret'\n", "must be one of"),
        ("[kinds.speed]\npoints = 1\n", "unknown kind"),
        ("[kinds.forward]\npoints = 'two'\n", "must be a number"),
        ("[kinds.forward]\nweight = 1\n", "unknown key 'weight'"),
        ("[kinds]\nforward = 1\n", "must be a table"),
        ("[checks.forward]\npoints = 1\n", "SUBJECT.KIND"),
        ("[checks.'linear.forward']\nenabled = 'no'\n", "true or false"),
    ],
)
def test_bad_rubrics_are_refused_with_one_line(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RubricError, match=message) as info:
        load(path)
    assert "\n" not in str(info.value) and "bad.toml" in str(info.value)


def test_rubric_naming_unknown_checks_or_kinds_is_refused(tmp_path: Path) -> None:
    rubric = parse('[checks."lstm.forward"]\npoints = 1\n', "r.toml", default_rubric())
    with pytest.raises(RubricError, match="unknown check 'lstm.forward'"):
        plan_checks(rubric)
    with pytest.raises(RubricError, match="no points for kind"):
        parse("", "empty.toml")
    with pytest.raises(RubricError, match="cannot read rubric"):
        load(tmp_path / "missing.toml")


# --- Gradescope and the command line ------------------------------------------------------------


def test_gradescope_results_format(solution_report: GradeReport, tmp_path: Path) -> None:
    path = tmp_path / "results" / "results.json"
    path.parent.mkdir()
    path.write_text('{"score": 1000}')  # whatever was there is replaced
    gradescope.write_results(solution_report, path)
    data = json.loads(path.read_text())
    assert set(data) >= {"score", "execution_time", "output", "visibility", "tests"}
    assert data["score"] == solution_report.score and isinstance(data["execution_time"], int)
    first = data["tests"][0]
    assert set(first) == {"name", "number", "score", "max_score", "status", "output", "output_format", "visibility", "tags"}
    assert data["output_format"] == data["test_output_format"] == first["output_format"] == "text"
    assert first["name"] not in first["output"]
    assert first["number"] == "1.1" and first["status"] == "passed" and first["tags"] == ["linear", "forward"]
    assert {t["visibility"] for t in data["tests"]} == {"visible", "after_published"}


def test_cli_skeleton_grade_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "student"
    assert grading_cli.main(["skeleton", str(out)]) == 0
    assert "bevialm grade" in capsys.readouterr().out
    assert grading_cli.main(["skeleton", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert grading_cli.main(["skeleton", str(out), "--force", "--with-solutions"]) == 0
    assert "instructors" in capsys.readouterr().out
    assert grading_cli.main(["grade", "--list-checks", "--visible-only"]) == 0
    listing = capsys.readouterr().out
    assert "linear.forward" in listing and "model.training" not in listing
    results = tmp_path / "r.json"
    code = grading_cli.main(["grade", str(out), "--only", "linear.forward,relu", "--no-sandbox", "--results", str(results)])
    assert code == 0 and json.loads(results.read_text())["score"] == 10
    assert "score 10/10" in capsys.readouterr().out
    forget_package("bevialm_submission")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["grade", "{tmp}/missing"], "does not exist"),
        (["grade"], "give the SUBMISSION"),
        (["grade", "{tmp}", "--jobs", "0"], "must be positive"),
        (["grade", "{tmp}", "--rubric", "{tmp}/none.toml"], "cannot read rubric"),
        (["grade", "{tmp}", "--only", "nothing"], "matches no check"),
        (["grade", "{tmp}"], "no BeviaLLM package"),
        (["autograder", "{tmp}/a.zip", "--rubric", "{tmp}/none.toml"], "cannot read rubric"),
    ],
)
def test_cli_fails_with_one_line_when_grading_cannot_run(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert grading_cli.main([a.format(tmp=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("bevialm ")


def test_autograder_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rubric = tmp_path / "rubric.toml"
    rubric.write_text("[kinds.forward]\npoints = 5\n")
    out = tmp_path / "autograder.zip"
    assert grading_cli.main(["autograder", str(out), "--rubric", str(rubric)]) == 0
    with zipfile.ZipFile(out) as bundle:
        names = set(bundle.namelist())
        assert {"setup.sh", "run_autograder", "rubric.toml", "bevialm-src/pyproject.toml"} <= names
        assert "bevialm-src/bevialm/grading/grade.py" in names and "bevialm-src/bevialm/py.typed" in names
        assert bundle.read("rubric.toml").decode() == rubric.read_text()
        run = bundle.read("run_autograder").decode()
        assert 'grade "$AUTOGRADER/submission"' in run and '--results "$AUTOGRADER/results/results.json"' in run
        assert (bundle.getinfo("run_autograder").external_attr >> 16) & 0o111
        setup = bundle.read("setup.sh").decode()
        assert 'pip install "$AUTOGRADER/source/bevialm-src"' in setup and "useradd" in setup
    assert grading_cli.main(["autograder", str(tmp_path / "default.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "default.zip") as bundle:
        assert bundle.read("rubric.toml").decode() == DEFAULT_RUBRIC



def test_gradescope_output_keeps_hidden_checks_hidden(solution_report: GradeReport) -> None:
    data = gradescope.results(solution_report)
    assert "model.training" not in data["output"]  # after_published in the built-in rubric
    assert "1 more check is shown once grades are published" in data["output"]
    assert "model.training" in format_report(solution_report)


def test_sandbox_outcomes_from_exit_codes() -> None:
    import signal

    from bevialm.grading.sandbox import Limits, ending

    limits = Limits(time_limit=1.0, output_limit_kb=1)
    assert ending("ended", -signal.SIGXCPU, 0, limits) == ("timeout", "used more than 1 s of CPU")
    assert ending("ended", -signal.SIGSEGV, 0, limits) == ("crashed", "killed by signal SIGSEGV")
    assert ending("ended", 3, 0, limits)[0] == "exited"
    assert ending("ok", 0, 2000, limits)[0] == "flood"
    assert ending("timeout", -9, 2000, limits)[0] == "timeout"
    assert ending("ok", 0, 10, limits) == ("ok", "")


def test_training_that_does_not_lower_the_loss_fails() -> None:
    from bevialm.grading.pair_judges import judge_training

    rising = np.array([1.0, 1.5])
    obs = Observation()
    store(obs, "losses", rising)
    verdict = judge_training(rising, obs)
    assert not verdict.passed and "did not go down" in verdict.hint


def test_progress_is_reported_per_check(solution: Path) -> None:
    seen: list[str] = []
    package = "bevialm_submission_progress"
    try:
        grade(solution, Options(sandbox=False, package=package, only=("relu",)), progress=lambda r: seen.append(r.check.id))
    finally:
        forget_package(package)
    assert seen == ["relu.forward", "relu.backward", "relu.gradcheck", "relu.purity"]


def test_every_check_has_one_row_in_the_table_of_check_kinds() -> None:
    """The grader's loop finds every check the rubric can plan in one table, and the table holds
    no row the rubric cannot plan."""
    from bevialm.grading.kinds import CHECK_KINDS
    from bevialm.grading.plan import all_checks

    assert {(c.subject, c.kind) for c in all_checks(default_rubric())} == set(CHECK_KINDS)
    assert {(s, k) for s, kinds in TASK_KINDS.items() for k in kinds} == set(CHECK_KINDS)
