"""A student edition and an instructor edition of the book's notebooks, from the same sources, with nbgrader.

    python scripts/editions.py build [--out _build/editions] [--profile PROFILE] [--html] [NOTEBOOK ...]
    python scripts/editions.py verify [--profile smoke] [NOTEBOOK ...]
    python scripts/editions.py grade ASSIGNMENT SUBMISSION.ipynb ... [--course _build/editions/instructor]

``build`` takes every notebook of ``_toc.yml`` that has exercises (or the notebooks given) and writes

- ``OUT/instructor/``: an nbgrader course folder. ``source/<stem>/<stem>.ipynb`` is the chapter with its
  solutions, its checks (hidden tests included) and nbgrader's cell metadata, derived from the book's convention
  (CONTRIBUTING.md, "Exercises"): code cells tagged ``solution`` become nbgrader solution cells, cells tagged
  ``check`` autograded test cells (1 point each), the ``parameters`` cell a locked cell (grading runs in the
  edition's profile whatever a student changed), and each exercise without a ``solution`` cell gets a
  manually graded answer cell (its reference answer is the book's written solution). ``release/`` holds what
  ``nbgrader generate_assignment`` made of it, ``gradebook.db`` the assignments, ``nbgrader_config.py`` the
  settings the ``nbgrader`` commands read there;
- ``OUT/student/<stem>.ipynb``: the student edition, the same notebook as ``release/``: every written
  ``{solution}`` removed, every answer region replaced by a stub (``raise NotImplementedError()``), hidden
  tests removed, the outputs of answer and check cells cleared, and the chapter's other outputs (figures,
  tables, glued numbers) kept so that it reads like the book;
- with ``--html``, ``OUT/student/html/``: the rendered book built from the student notebooks with
  sphinx-exercise's ``hide_solutions: true``, without the part for instructors.

Every student notebook is checked for leaks before the build succeeds: no line that only a solution, an answer
region, a hidden test or a solution's output holds may appear anywhere in it. ``--profile`` writes that profile
into the parameters cell of both editions (``smoke`` for a quick assignment; the default keeps ``cpu``).

``verify`` checks the checks (what CI runs): it builds both editions in the ``smoke`` profile into a temporary
folder and grades, for every notebook with autograded exercises, the student edition as handed out (every check
must fail) and with the reference answers filled in (every check must pass).

``grade`` copies each submission (the student id is the file name without ``.ipynb``) to
``submitted/<student>/<assignment>/`` of the course, runs ``nbgrader autograde`` on it (the whole notebook is
executed in this environment, with the instructor's checks restored), and prints every check's score. The same
with nbgrader's own commands, and the manual grading and feedback steps, are in ``OUT/instructor/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # mcar_lib of this checkout (installed or not), chapters.py

from chapters import chapter_paths as toc_notebooks  # noqa: E402  (the notebooks of _toc.yml, in book order)
from mcar_lib import book  # noqa: E402

DEFAULT_OUT = ROOT / "_build" / "editions"
COURSE_ID = "mcar-book"
CELL_TIMEOUT = 1800  # seconds per cell when grading, as for the chapters (scripts/chapters.py)
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"
SCHEMA = 3  # nbgrader's cell metadata schema

NBGRADER_CONFIG = f'''\
# nbgrader settings of this course folder, written by scripts/editions.py (rebuilding the editions rewrites it).
c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = "{COURSE_ID}"
# The student edition keeps the chapter's outputs (figures, tables, glued numbers): generate_assignment runs
# without ClearOutput; scripts/editions.py clears the outputs of answer and check cells itself.
from nbgrader.preprocessors import (  # noqa: E402
    CheckCellMetadata, ClearHiddenTests, ClearMarkScheme, ClearSolutions, ComputeChecksums, IncludeHeaderFooter,
    InstantiateTests, LockCells, SaveCells)
c.GenerateAssignment.preprocessors = [
    IncludeHeaderFooter, InstantiateTests, LockCells, ClearSolutions, CheckCellMetadata, ComputeChecksums,
    SaveCells, ClearHiddenTests, ClearMarkScheme, ComputeChecksums, CheckCellMetadata]
c.ClearSolutions.code_stub = {{"python": {CODE_STUB!r}}}
c.ClearSolutions.text_stub = {TEXT_STUB!r}
# Grading executes whole chapters: training cells take minutes in the cpu profile.
c.Execute.timeout = {CELL_TIMEOUT}
'''


def with_exercises(paths: list[Path]) -> list[Path]:
    return [p for p in paths if book.exercises(p)]


# ------------------------------------------------------------------------------------------ instructor source


def _nbgrader(grade_id: str, *, solution: bool = False, grade: bool = False, locked: bool = False,
              points: float | None = None) -> dict[str, Any]:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": SCHEMA,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return meta


def _set_profile(source: str, profile: str) -> str:
    new, n = re.subn(r'^PROFILE\s*=.*$', f'PROFILE = "{profile}"  # set by scripts/editions.py --profile', source,
                     count=1, flags=re.M)
    if n != 1:
        raise ValueError("the parameters cell has no PROFILE line")
    return new


def _split_markdown(cell: Any) -> list[Any]:
    """One markdown cell per prose part and per exercise or solution directive, so that answer cells can go
    right after their exercise and written solutions can be removed cell by cell."""
    blocks = book.directive_blocks(cell.source)
    if len(blocks) <= 1:
        return [cell]
    cells = []
    for k, block in enumerate(blocks):
        part = copy.deepcopy(cell)
        part.source = block.text
        if "id" in part:
            part.id = f"{cell.id}-{k}"
        cells.append(part)
    return cells


def instructor_notebook(path: Path, profile: str | None = None) -> Any:
    """The chapter as nbgrader's source notebook: markdown split at directives, nbgrader metadata derived from the
    tags, an answer cell (manually graded) after each exercise that has no ``solution`` cell, papermill's
    injected-parameters cell dropped, and ``profile`` (if given) written into the parameters cell."""
    nb = nbformat.read(path, as_version=4)
    info = {e.label: e for e in book.exercises(nb)}
    cells = []
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags:
            continue
        if cell.cell_type == "markdown":
            cells += _split_markdown(cell)
            continue
        if "parameters" in tags:
            if profile:
                cell.source = _set_profile(cell.source, profile)
            cell.metadata["nbgrader"] = _nbgrader("parameters", locked=True)
        cells.append(cell)

    # nbgrader metadata from the tags; written exercises remember where their last block (the solution) is
    current, counts, answer_after = None, {}, {}
    for position, cell in enumerate(cells):
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "markdown":
            for block in book.directive_blocks(cell.source):
                if block.kind == "exercise":
                    current = block.label
                if block.kind in ("exercise", "solution") and not info[current].solution_cells:
                    answer_after[current] = position
            continue
        for tag, role, meta in ((book.SOLUTION_TAG, "solution", {"solution": True}),
                                (book.CHECK_TAG, "check", {"grade": True, "locked": True, "points": 1})):
            if tag in tags:
                n = counts[current, role] = counts.get((current, role), 0) + 1
                cell.metadata["nbgrader"] = _nbgrader(f"{current}-{role}" + (f"-{n}" if n > 1 else ""), **meta)
    for label, position in sorted(answer_after.items(), key=lambda item: -item[1]):
        solution = next((b.body for b in book.directive_blocks(cells[position].source) if b.kind == "solution"),
                        "(the book gives no reference answer)")
        answer = nbformat.v4.new_markdown_cell(solution)
        answer.metadata["nbgrader"] = _nbgrader(f"{label}-answer", solution=True, grade=True, points=1)
        cells.insert(position + 1, answer)
    nb.cells = cells
    return nb


# ----------------------------------------------------------------------------------------------- student edition


def _role(cell: Any) -> str | None:
    """``"solution"`` (an answer cell), ``"check"`` (an autograded test) or None, from nbgrader's metadata."""
    meta = cell.metadata.get("nbgrader", {})
    if meta.get("solution"):
        return "solution"
    if meta.get("grade"):
        return "check"
    return None


FOLDED = ("hide-input", "hide-output", "hide-cell")


def student_notebook(released: Any) -> Any:
    """nbgrader's student version made into the student edition: written solutions removed (a markdown cell left
    empty goes), outputs and execution counts of answer and check cells cleared, and these cells unfolded."""
    nb = copy.deepcopy(released)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and _role(cell) is None:
            blocks = book.directive_blocks(cell.source)
            if any(b.kind == "solution" for b in blocks):
                cell.source = "\n\n".join(b.text for b in blocks if b.kind != "solution")
                if not cell.source.strip():
                    continue
        if cell.cell_type == "code" and _role(cell) is not None:
            cell.outputs, cell.execution_count = [], None
            tags = [t for t in cell.metadata.get("tags", []) if t not in FOLDED]  # stubs and checks in full view
            cell.metadata["tags"] = tags
        cells.append(cell)
    nb.cells = cells
    return nb


def _output_text(cell: Any) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(book._text(output.get("text", "")))
        for mime, value in output.get("data", {}).items():
            if mime.endswith("json"):
                parts.append(json.dumps(value))
            elif mime.startswith("text/"):
                parts.append(book._text(value))
    return "\n".join(parts)


def _regions(source: str, begin: str, end: str) -> list[str]:
    """The lines between ``begin`` and ``end`` delimiter lines (nbgrader's markers)."""
    inside, lines = False, []
    for line in source.split("\n"):
        if begin in line:
            inside = True
        elif end in line:
            inside = False
        elif inside:
            lines.append(line)
    return lines


def _meaningful(line: str) -> bool:
    return len(re.sub(r"[\W_]+", "", line)) >= 8


def secrets(instructor: Any) -> set[str]:
    """Lines of the instructor notebook that the student edition must not contain: the lines of written solutions,
    of answer regions (a whole answer cell without delimiters), of hidden tests and of the outputs of answer cells,
    each stripped, except short ones and those that the rest of the notebook also holds."""
    secret: list[str] = []
    public: list[str] = []
    for cell in instructor.cells:
        role = _role(cell)
        if cell.cell_type == "markdown":
            if role == "solution":  # a written answer cell: the book's solution
                secret.append(cell.source)
                continue
            for block in book.directive_blocks(cell.source):
                if block.kind == "solution":
                    secret.append(block.body)
                else:
                    public.append(block.text)
            continue
        if role == "solution":
            region = _regions(cell.source, "BEGIN SOLUTION", "END SOLUTION")
            secret += region or [cell.source]
            public += [line for line in cell.source.split("\n") if line not in region] if region else []
            secret.append(_output_text(cell))
        else:
            hidden = _regions(cell.source, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
            secret += hidden
            public += [line for line in cell.source.split("\n") if line not in hidden]
            public.append(_output_text(cell))
    known = {line.strip() for text in public for line in text.split("\n")}
    return {s for text in secret for line in text.split("\n")
            if _meaningful(s := line.strip()) and s not in known}


def leaks(instructor: Any, student: Any) -> list[str]:
    """Every secret line (:func:`secrets`) that is a line of the student notebook (a cell's source or output), and
    every nbgrader marker or ``{solution}`` directive left in it."""
    text = "\n".join(book._text(c.source) + "\n" + _output_text(c) for c in student.cells)
    lines = {line.strip() for line in text.split("\n")}
    found = sorted(secrets(instructor) & lines)
    found += [m for m in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS") if m in text]
    found += [f"{{solution}} {b.label}" for c in student.cells if c.cell_type == "markdown"
              for b in book.directive_blocks(c.source) if b.kind == "solution"]
    return found


# ------------------------------------------------------------------------------------------------------ build


@dataclass
class Editions:
    """Where ``build`` put things."""

    out: Path
    course: Path
    student: Path
    assignments: list[str]


@functools.cache
def _alembic_head() -> str:
    """The revision nbgrader stamps on a new gradebook, read in this process: nbgrader 0.9 runs the ``alembic``
    command for it, which must then be on PATH (it is not without an activated environment) and costs a second
    Python start-up for every new gradebook."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import ALEMBIC_DIR

    config = Config()
    config.set_main_option("script_location", ALEMBIC_DIR)
    return ScriptDirectory.from_config(config).get_current_head()


def _api(course: Path):
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    import nbgrader.api

    nbgrader.api.get_alembic_version = _alembic_head
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    coursedir = CourseDirectory(root=str(course), config=config)
    return NbGraderAPI(coursedir=coursedir, config=config)


def _check(result: dict[str, Any], what: str) -> None:
    if not result.get("success"):
        raise RuntimeError(f"nbgrader {what} failed:\n{result.get('log', '')}\n{result.get('error', '')}")


def build(notebooks: list[Path] | None = None, out: Path = DEFAULT_OUT, profile: str | None = None,
          html: bool = False) -> Editions:
    """Write both editions of ``notebooks`` (default: the TOC notebooks with exercises) under ``out``; raise if a
    student notebook leaks a solution. A course folder's gradebook, submissions and grades are kept."""
    notebooks = with_exercises(toc_notebooks()) if notebooks is None else [Path(p) for p in notebooks]
    course, student = out / "instructor", out / "student"
    for folder in (course / "source", course / "release", student):
        shutil.rmtree(folder, ignore_errors=True)
    student.mkdir(parents=True)
    course.mkdir(parents=True, exist_ok=True)
    (course / "nbgrader_config.py").write_text(NBGRADER_CONFIG)
    (course / "README.md").write_text(INSTRUCTOR_README)
    sources = {}
    for path in notebooks:
        stem = path.stem
        sources[stem] = instructor_notebook(path, profile)
        target = course / "source" / stem / f"{stem}.ipynb"
        target.parent.mkdir(parents=True)
        nbformat.write(sources[stem], target)
    api = _api(course)
    problems = []
    for stem, source in sources.items():
        _check(api.generate_assignment(stem, force=True, create=True), f"generate_assignment {stem}")
        released = course / "release" / stem / f"{stem}.ipynb"
        nb = student_notebook(nbformat.read(released, as_version=4))
        nbformat.write(nb, released)
        nbformat.write(nb, student / f"{stem}.ipynb")
        problems += [f"{stem}: {line}" for line in leaks(source, nb)]
    if problems:
        raise RuntimeError("the student edition leaks solutions:\n  " + "\n  ".join(problems))
    if html:
        build_student_html(student, student / "html")
    return Editions(out, course, student, list(sources))


def build_student_html(student: Path, html: Path) -> None:
    """Render the book from the student notebooks: a copy of the book's sources with the edition's notebooks in
    place of the chapters, sphinx-exercise's ``hide_solutions: true``, no launch buttons (they would open the
    chapters with their solutions) and no part for instructors; warnings are errors, as for the book."""
    stage = html.parent / "book-src"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(html, ignore_errors=True)
    (stage / "book").mkdir(parents=True)
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    toc["parts"] = [p for p in toc["parts"] if not p.get("caption", "").lower().startswith("for instructors")]
    (stage / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["title"] = f"{config['title']} (student edition)"
    config["sphinx"].setdefault("config", {})["hide_solutions"] = True
    config.pop("launch_buttons", None)
    (stage / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in config.get("bibtex_bibfiles", []):
        shutil.copy(ROOT / name, stage / name)
    entries = [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    for entry in entries:
        original, edition = ROOT / f"{entry}.ipynb", student / f"{Path(entry).name}.ipynb"
        if original.exists() and book.exercises(original) and not edition.exists():
            raise ValueError(f"no student edition of {entry}: build every chapter for --html")
        for src in (edition, original, ROOT / f"{entry}.md"):
            if src.exists():
                shutil.copy(src, stage / f"{entry}{src.suffix}")
                break
    built = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(stage), "--all", "-W",
                            "-n", "--keep-going", "--path-output", str(html.parent / "html-build")])
    if built.returncode != 0:
        raise RuntimeError(f"jupyter-book could not build the student book from {stage} (see its report above)")
    shutil.move(str(html.parent / "html-build" / "_build" / "html"), str(html))
    shutil.rmtree(html.parent / "html-build")


# ------------------------------------------------------------------------------------------------------ grade


@dataclass
class Score:
    """One graded cell of one submission: an autograded check or a manually graded answer."""

    student: str
    cell: str
    score: float | None  # None: waits for manual grading
    max_score: float

    @property
    def passed(self) -> bool:
        return self.score is not None and self.score >= self.max_score


def grade(assignment: str, submissions: dict[str, Path], course: Path = DEFAULT_OUT / "instructor") -> list[Score]:
    """Autograde each student's notebook (``{student_id: path}``) with nbgrader and return every graded cell's
    score. The notebook is executed in this environment, with the checks and locked cells of the source."""
    import warnings

    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning

    api = _api(course)
    for student, path in submissions.items():
        folder = course / "submitted" / student / assignment
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.copy(path, folder / f"{assignment}.ipynb")
        with warnings.catch_warnings():  # nbgrader 0.9.6's own session handling, harmless
            warnings.filterwarnings("ignore", category=SAWarning)
            result = api.autograde(assignment, student, force=True, create=True)
        _check(result, f"autograde {assignment} {student}")
    scores = []
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for student in submissions:
            notebook = gradebook.find_submission_notebook(assignment, assignment, student)
            for g in sorted(notebook.grades, key=lambda g: g.name):
                manual = g.needs_manual_grade and g.manual_score is None
                scores.append(Score(student, g.name, None if manual else g.score, g.max_score))
    return scores


def answered(student: Any, instructor: Any, answers: dict[str, str] | None = None) -> Any:
    """The student notebook with its code answer cells filled in, as a student would submit it: with the
    instructor's reference answers, or, for the grade ids in ``answers``, with the source given there."""
    reference = {c.metadata["nbgrader"]["grade_id"]: c.source for c in instructor.cells
                 if c.cell_type == "code" and _role(c) == "solution"}
    nb = copy.deepcopy(student)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.cell_type == "code" and _role(cell) == "solution":
            cell.source = (answers or {}).get(grade_id, reference[grade_id])
    return nb


def verify(notebooks: list[Path] | None = None, out: Path | None = None, profile: str = "smoke") -> list[str]:
    """Check the checks of every autograded exercise end to end: build both editions in ``profile``, autograde the
    student edition as handed out (every check must fail: the stubs raise) and with the reference answers filled
    in (every check must pass). Returns the problems found (none: all good)."""
    import tempfile

    out = Path(out or tempfile.mkdtemp(prefix="mcar-editions-"))
    made = build(notebooks, out, profile)
    problems = []
    for stem in made.assignments:
        source = nbformat.read(made.course / "source" / stem / f"{stem}.ipynb", as_version=4)
        if not any(c.cell_type == "code" and _role(c) == "check" for c in source.cells):
            continue
        student = nbformat.read(made.student / f"{stem}.ipynb", as_version=4)
        submissions = {"unanswered": made.student / f"{stem}.ipynb", "reference": out / f"reference-{stem}.ipynb"}
        nbformat.write(answered(student, source), submissions["reference"])
        for s in grade(stem, submissions, made.course):
            if s.cell.endswith("-answer") or s.cell == "parameters":
                continue
            if s.student == "unanswered" and s.passed:
                problems.append(f"{stem}: {s.cell} passes without an answer")
            if s.student == "reference" and not s.passed:
                problems.append(f"{stem}: {s.cell} fails with the reference answer")
        print(f"{stem}: checked", flush=True)
    return problems


INSTRUCTOR_README = """\
# Instructor edition (generated by scripts/editions.py; rebuilding rewrites source/, release/ and this file)

This folder is an nbgrader course. `source/<chapter>/` holds each chapter with its solutions and checks,
`release/<chapter>/` the student version (the same as ../student/<chapter>.ipynb), `gradebook.db` the
assignments. Run the commands below from this folder, with the book's environment (`.venv/bin/nbgrader`).

Hand out `release/<chapter>/<chapter>.ipynb` (or ../student/), then put each submission at
`submitted/<student id>/<chapter>/<chapter>.ipynb` (`nbgrader zip_collect <chapter>` unpacks an LMS download).

    nbgrader autograde <chapter> --create       # execute every submission with the source's checks restored
    nbgrader formgrader                          # (in Jupyter) grade the written answers by hand
    nbgrader generate_feedback <chapter>         # feedback/<student>/<chapter>/<chapter>.html
    nbgrader export                              # grades.csv: every student, every assignment

Or, for a few files: `python scripts/editions.py grade <chapter> alice.ipynb bob.ipynb --course <this folder>`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the student and instructor editions")
    b.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook of _toc.yml with exercises")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT)
    b.add_argument("--profile", help="write this profile into the parameters cells (default: keep cpu)")
    b.add_argument("--html", action="store_true", help="also render the student edition of the book")
    v = sub.add_parser("verify", help="autograde the stubs (checks must fail) and the reference answers "
                                      "(checks must pass) of every autograded exercise")
    v.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook of _toc.yml with exercises")
    v.add_argument("--profile", default="smoke")
    v.add_argument("--out", type=Path, help="default: a new temporary folder")
    g = sub.add_parser("grade", help="autograde submissions of one assignment")
    g.add_argument("assignment", help="the chapter's name, e.g. 01_mode_connectivity")
    g.add_argument("submissions", nargs="+", type=Path, help="notebooks named <student id>.ipynb")
    g.add_argument("--course", type=Path, default=DEFAULT_OUT / "instructor")
    args = parser.parse_args(argv)
    if args.command == "build":
        made = build(args.notebooks or None, args.out, args.profile, args.html)
        print(f"instructor edition (nbgrader course): {made.course}")
        print(f"student edition: {made.student} ({', '.join(made.assignments)})")
        return 0
    if args.command == "verify":
        problems = verify(args.notebooks or None, args.out, args.profile)
        print("\n".join(problems) or "every check fails on the stubs and passes with the reference answers")
        return 1 if problems else 0
    scores = grade(args.assignment, {p.stem: p for p in args.submissions}, args.course)
    for student in dict.fromkeys(s.student for s in scores):
        checks = [s for s in scores if s.student == student and not s.cell.endswith("-answer")]
        written = [s for s in scores if s.student == student and s.cell.endswith("-answer")]
        print(f"{student}: checks {sum(s.score for s in checks):g} of {sum(s.max_score for s in checks):g} points; "
              f"written answers: {sum(s.score is None for s in written)} to grade by hand (nbgrader formgrader), "
              f"{sum(s.score is not None for s in written)} left as handed out (0 points)")
        for s in checks:
            print(f"  {s.cell}: {'passed' if s.passed else 'FAILED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
