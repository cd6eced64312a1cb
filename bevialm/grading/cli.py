"""The grading subcommands of the ``bevialm`` command: ``skeleton``, ``grade``, ``grade-all`` and ``autograder``.

``bevialm.cli`` adds them to its own parser through its plugin hook,
:func:`add_grading_subcommands`; :func:`main` runs
them on their own. Every handler returns the exit code: 0 whenever its job was
done (for ``grade``: whatever the score), 1 with one ``error:`` line on standard
error when it could not be (a missing folder, a bad rubric), as for every
``bevialm`` command; argparse's usage errors are 2. ``grade`` exits 3, with one line, when
the environment is broken (:mod:`bevialm.grading.canary`): ``grade-all`` stops on it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bevialm.cli_args import OneLineParser
from bevialm.grading.batch import (
    DEFAULT_STUDENT_TIME,
    BatchError,
    BatchOptions,
    EnvironmentBroken,
    Stopped,
    default_jobs,
    grade_all,
)
from bevialm.grading.batch_csv import Row
from bevialm.grading.canary import EXIT_GRADING_FAILED
from bevialm.grading.grade import (
    DEFAULT_TOTAL_TIME,
    CheckResult,
    GradeError,
    GradingFailure,
    Options,
    format_report,
    grade,
    plan_checks,
)
from bevialm.grading.gradescope import write_bundle, write_results
from bevialm.grading.rubric import DEFAULT_RUBRIC, PRESETS, Rubric, RubricError, load, preset, with_preset
from bevialm.grading.skeleton import DOCSTRINGS, SkeletonError, plan, write_skeleton
from bevialm.grading.student import SubmissionError

ERRORS = (SubmissionError, RubricError, GradeError, SkeletonError, OSError)
"""What stops a command from doing its job (reported in one line, exit code 1)."""

EXIT_CANNOT_RUN = 1


def _fail(command: str, exc: BaseException) -> int:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"bevialm {command}: error: {message}", file=sys.stderr)
    return EXIT_CANNOT_RUN


def _rubric(args: argparse.Namespace) -> Rubric:
    """The rubric of ``--rubric`` (the built-in one without it), with ``--preset``'s tasks."""
    rubric = load(args.rubric)
    return rubric if args.preset is None else replace(rubric, tasks=preset(args.preset, "--preset"))


def _preset_flag(args: argparse.Namespace) -> str:
    return f" --preset {args.preset}" if args.preset else ""


def cmd_skeleton(args: argparse.Namespace) -> int:
    out: Path = args.out_dir
    try:
        tasks = _rubric(args).tasks
        clashes = [m.path.as_posix() for m in plan() if (out / m.path).exists()]
        if clashes and not args.force:
            raise SkeletonError(f"{out} already has {clashes[0]} (and maybe more): pass --force to overwrite")
        written = write_skeleton(
            out, with_solutions=args.with_solutions, written=tasks, docstrings=args.docstrings, preset_hint=_preset_flag(args)
        )
    except ERRORS as exc:
        return _fail("skeleton", exc)
    what = "a filled-in reference copy (for instructors: never hand it out)" if args.with_solutions else "the student skeleton"
    print(f"wrote {what}: {len(written)} files in {out}; students write: {', '.join(tasks)}")
    if not args.with_solutions:
        print(f"students check their work with: bevialm grade {out}{_preset_flag(args)} --visible-only")
    return 0


def _progress(total: int) -> Any:
    done = 0

    def show(result: CheckResult) -> None:
        nonlocal done
        done += 1
        end = "\n" if done == total else ""
        print(f"\rgraded {done}/{total} checks", end=end, file=sys.stderr, flush=True)

    return show if sys.stderr.isatty() else None


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM (a batch's time limit, say) ends grading cleanly: every check's processes are
    killed on the way out, and no results file is written."""
    raise SystemExit(128 + signum)


def cmd_grade(args: argparse.Namespace) -> int:
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return _grade(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _grade(args: argparse.Namespace) -> int:
    try:
        rubric = _rubric(args)
        only = tuple(p.strip() for item in args.only for p in item.split(",") if p.strip())
        checks = plan_checks(rubric, visible_only=args.visible_only, only=only)
        if args.list_checks:
            for c in checks:
                unit = "pt " if c.rule.points == 1 else "pts"
                print(f"{c.number:>5}  {c.id:<26} {c.rule.points:>5g} {unit}  {c.rule.visibility:<15} {c.title.split(': ', 1)[1]}")
            return 0
        if args.submission is None:
            raise GradeError("give the SUBMISSION folder to grade")
        if args.jobs < 1 or (args.time_limit is not None and args.time_limit <= 0) or not args.total_time_limit > 0:
            raise GradeError("--jobs, --time-limit and --total-time-limit must be positive")
        options = Options(
            rubric=rubric,
            seed=args.seed,
            visible_only=args.visible_only,
            only=only,
            sandbox=not args.no_sandbox,
            jobs=args.jobs,
            time_limit=args.time_limit,
            total_time_limit=args.total_time_limit,
            display_name=args.display_name,
        )
        report = grade(args.submission, options, progress=_progress(len(checks)))
        print(format_report(report))
        for note in report.notes:  # the instructor's, on standard error: never in a student's results
            print(note, file=sys.stderr)
        if args.results is not None:
            write_results(report, args.results)
            print(f"results written to {args.results}")
    except GradingFailure as exc:  # the environment, not the submission: no scores written
        _fail("grade", exc)
        return EXIT_GRADING_FAILED
    except ERRORS as exc:
        return _fail("grade", exc)
    return 0


def cmd_grade_all(args: argparse.Namespace) -> int:
    try:
        rubric = _rubric(args)
        checks = plan_checks(rubric, visible_only=args.visible_only)
        if (args.jobs is not None and args.jobs < 1) or args.student_time_limit <= 0:
            raise BatchError("--jobs and --student-time-limit must be positive")
        extra = (("--preset", args.preset) if args.preset else ()) + (("--visible-only",) if args.visible_only else ())
        options = BatchOptions(
            csv=args.csv,
            results_dir=args.results_dir or args.csv.with_name(args.csv.stem + "-results"),
            rubric=args.rubric,
            salt=(args.rubric.read_text(encoding="utf-8") if args.rubric else "") + "\0" + " ".join(extra),
            extra_args=extra,
            tasks=tuple(dict.fromkeys(c.subject for c in checks)),
            max_score=sum(c.rule.points for c in checks),
            checks="visible only" if args.visible_only else "all",
            jobs=args.jobs or default_jobs(),
            regrade=args.regrade,
            time_limit=args.student_time_limit,
        )

        def show(done: int, total: int, r: Row) -> None:
            note = f"  [{'; '.join(r.flags)}]" if r.flags else ""
            score = f"{r.score:g}/{r.max_score:g}" if r.status == "graded" else f"{r.status} (max {r.max_score:g})"
            print(f"[{done}/{total}] {r.student}: {score}{note}", file=sys.stderr, flush=True)

        rows = grade_all(args.submissions, options, progress=show)
    except (*ERRORS, BatchError) as exc:
        return _fail("grade-all", exc)
    except Stopped as exc:
        print(f"bevialm grade-all: {exc}", file=sys.stderr)
        return exc.code
    except EnvironmentBroken as exc:
        print(f"bevialm grade-all: error: {exc} (grading stopped; the gradebook is unchanged)", file=sys.stderr)
        return EXIT_GRADING_FAILED
    skipped = sum(not r.graded_now for r in rows)
    again = f" ({skipped} unchanged since the last run, not graded again: --regrade to grade them)" if skipped else ""
    print(f"graded {len(rows)} students{again}; gradebook {args.csv}, results in {options.results_dir}")
    return 0


def cmd_autograder(args: argparse.Namespace) -> int:
    try:
        load(args.rubric)  # refuse to bundle a rubric that would fail on Gradescope
        text = DEFAULT_RUBRIC if args.rubric is None else args.rubric.read_text(encoding="utf-8")
        if args.preset is not None:
            text = with_preset(text, args.preset, str(args.rubric or "the built-in rubric"))
        names = write_bundle(args.out, text)
    except ERRORS as exc:
        return _fail("autograder", exc)
    print(f"wrote the Gradescope autograder bundle {args.out} ({len(names)} files); upload it as the")
    print("assignment's autograder (Ubuntu base image); students submit their package folder")
    return 0


def add_grading_subcommands(subparsers: Any) -> None:
    """Add ``skeleton``, ``grade``, ``grade-all``, ``autograder`` and ``student-kit`` to an
    ``argparse`` subparsers object; each sets ``handler``, a function of the parsed arguments
    returning the exit code."""
    for add in (_add_skeleton, _add_grade, _add_grade_all, _add_autograder):
        add(subparsers)

    from bevialm.grading import kit  # noqa: PLC0415 - the kit's command lives with the kit

    kit.add_subcommand(subparsers)


def _add_skeleton(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "skeleton",
        help="write the student starter package",
        description="Write the student starter package: the reference pairs' modules with their configs, "
        "caches, signatures and docstrings, every function a student writes raising NotImplementedError.",
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--with-solutions", action="store_true", help="keep the reference bodies (instructors only: a copy to test the grader with)")
    p.add_argument("--force", action="store_true", help="overwrite files already in OUT_DIR")
    p.add_argument("--rubric", type=Path, metavar="FILE", help="TOML rubric whose [assignment] says which tasks students write (default: all)")
    p.add_argument("--preset", choices=PRESETS, metavar="NAME", help=f"the assignment: the tasks students write ({', '.join(PRESETS)}); overrides the rubric's [assignment]")
    p.add_argument(
        "--docstrings",
        choices=DOCSTRINGS,
        default="full",
        help="what the stubs' docstrings say: the reference's (full: formulas, derivation hints) or only "
        "the signature and the shapes of one example call (shapes); default full",
    )
    p.set_defaults(handler=cmd_skeleton)


def _add_grade(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "grade",
        help="grade a student's package against the reference",
        description="Grade a student's package (a filled-in skeleton) against the reference. Exit code 0 "
        "whenever grading ran, whatever the score; 1 when it could not run (bad input); 3 when the "
        "environment is broken (the reference's own solution fails in the sandbox: no scores are written).",
    )
    p.add_argument("submission", type=Path, nargs="?", metavar="SUBMISSION", help="the package folder (or a folder holding it)")
    p.add_argument("--results", type=Path, metavar="FILE", help="also write Gradescope's results.json here")
    p.add_argument("--rubric", type=Path, metavar="FILE", help="TOML rubric (default: the built-in one)")
    p.add_argument("--preset", choices=PRESETS, metavar="NAME", help=f"the assignment: the tasks students write ({', '.join(PRESETS)}); overrides the rubric's [assignment]")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the drawn cases (default: the rubric's)")
    p.add_argument("--visible-only", action="store_true", help="run only the checks the rubric makes visible")
    p.add_argument("--only", action="append", default=[], metavar="CHECKS", help="only these checks: ids, pair names, kinds or globs, comma-separated (e.g. linear,*.backward)")
    p.add_argument("--list-checks", action="store_true", help="list the checks with their points and stop")
    p.add_argument("--time-limit", type=float, metavar="SECONDS", help="wall time per check (default: the rubric's)")
    p.add_argument(
        "--total-time-limit", type=float, default=DEFAULT_TOTAL_TIME, metavar="SECONDS",
        help=f"wall time for the whole grading: checks not done by then are reported as timed out (default {DEFAULT_TOTAL_TIME:g})",
    )  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="checks run at once (default 1)")
    p.add_argument("--no-sandbox", action="store_true", help="run your code in this process (faster, debugger-friendly; no limits: only for your own code)")
    p.add_argument("--display-name", metavar="NAME", help="the name the report shows for the submission (default: its folder's name)")
    p.set_defaults(handler=cmd_grade)


def _add_grade_all(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "grade-all",
        help="grade a whole class's submissions into a CSV gradebook",
        description="Grade every student's submission in SUBMISSIONS (a folder, or a zip of one, holding one "
        "folder or zip per student, as Gradescope's export or an LMS gives them). Each student is graded by its "
        "own 'bevialm grade' process, in parallel; a broken or hostile submission affects only its own row. "
        "Writes one results JSON per student and the CSV gradebook (student, name, email, status, score, max, "
        "checks, one column per task, flags). Running it again grades only new or changed submissions; Ctrl-C "
        "stops it, and the next run grades the rest.",
    )
    p.add_argument("submissions", type=Path, metavar="SUBMISSIONS")
    p.add_argument("--csv", type=Path, required=True, metavar="FILE", help="the gradebook to write")
    p.add_argument("--results-dir", type=Path, metavar="DIR", help="one results JSON per student (default: next to the CSV, CSVNAME-results/)")
    p.add_argument("--rubric", type=Path, metavar="FILE", help="TOML rubric (default: the built-in one)")
    p.add_argument("--preset", choices=PRESETS, metavar="NAME", help=f"the assignment: the tasks students write ({', '.join(PRESETS)}); overrides the rubric's [assignment]")
    p.add_argument("--jobs", type=int, metavar="N", help="students graded at once (default: one per core)")
    p.add_argument("--regrade", action="store_true", help="grade every student again, even when nothing changed")
    p.add_argument("--visible-only", action="store_true", help="grade only the checks the rubric makes visible (the CSV's max and its 'checks' column say so)")
    p.add_argument(
        "--student-time-limit", type=float, default=DEFAULT_STUDENT_TIME, metavar="SECONDS",
        help=f"wall time for one student's whole grading (default {DEFAULT_STUDENT_TIME:g})",
    )  # fmt: skip
    p.set_defaults(handler=cmd_grade_all)


def _add_autograder(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "autograder",
        help="write the Gradescope autograder bundle",
        description="Write the zip to upload to Gradescope as the autograder: setup.sh, run_autograder, "
        "the rubric and BeviaLLM's source.",
    )
    p.add_argument("out", type=Path, metavar="OUT.zip")
    p.add_argument("--rubric", type=Path, metavar="FILE", help="TOML rubric to bundle (default: the built-in one)")
    p.add_argument("--preset", choices=PRESETS, metavar="NAME", help=f"the assignment: the tasks students write ({', '.join(PRESETS)}); overrides the rubric's [assignment]")
    p.set_defaults(handler=cmd_autograder)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one grading subcommand on its own (``python -m bevialm.grading.cli grade ...``)."""
    parser = OneLineParser(prog="bevialm", description="BeviaLLM coursework grading.")
    add_grading_subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
