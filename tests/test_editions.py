"""scripts/editions.py on a small notebook written to the book's exercise convention (CONTRIBUTING.md, "Exercises"):
its student edition holds no solution text, and nbgrader's autograder passes the reference answer and fails a
wrong one, an unanswered stub and an answer that only the hidden tests catch. No chapter is executed."""

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_script():
    spec = importlib.util.spec_from_file_location("editions_script", ROOT / "scripts" / "editions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


editions = _load_script()

REFERENCE = "mean = sum(data) / len(data)  # the reference answer"
HIDDEN = "assert isinstance(mean, float), 'the mean of a list of numbers is a float'"
WRITTEN = "Dividing the total by the count is what makes it the arithmetic mean."
REASON = "Because every element counts once, the mean moves with each of them."


def _code(source, *tags):
    return nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)} if tags else {})


def fixture_notebook():
    """A chapter in miniature: parameters, an autograded exercise (reference answer, check with a hidden test,
    written discussion) and a written exercise, then a last cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A fixture chapter"),
        _code('PROFILE = "cpu"\nSEED = 0\nDEVICE = "auto"', "parameters"),
        _code("data = [float(k) for k in range(1, 11)]"),
        nbformat.v4.new_markdown_cell("## Exercises\n\n```{exercise}\n:label: fx-ex-mean\n\n"
                                      "Compute the mean `mean` of `data`.\n```"),
        _code(f"# Exercise fx-ex-mean\n### BEGIN SOLUTION\n{REFERENCE}\n### END SOLUTION", "solution", "hide-input"),
        _code("import statistics\n\nassert abs(mean - statistics.fmean(data)) < 1e-12, 'not the mean of data'\n"
              f"### BEGIN HIDDEN TESTS\n{HIDDEN}\n### END HIDDEN TESTS\nprint('fx-ex-mean: the checks pass')",
              "check", "hide-input"),
        nbformat.v4.new_markdown_cell(f"```{{solution}} fx-ex-mean\n:class: dropdown\n\n{WRITTEN}\n```\n\n"
                                      "```{exercise}\n:label: fx-ex-why\n\nWhy does the mean move with every "
                                      f"element?\n```\n\n```{{solution}} fx-ex-why\n:class: dropdown\n\n{REASON}\n```"),
        _code("print('end of the chapter')", "remove-input"),
    ]
    return nb


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("editions")
    path = folder / "fx_chapter.ipynb"
    nbformat.write(fixture_notebook(), path)
    made = editions.build([path], folder / "out")
    source = nbformat.read(made.course / "source" / "fx_chapter" / "fx_chapter.ipynb", as_version=4)
    student = nbformat.read(made.student / "fx_chapter.ipynb", as_version=4)
    return made, source, student


def _text(nb):
    return "\n".join(c.source + "\n" + editions._output_text(c) for c in nb.cells)


def test_student_edition_has_no_solution_text(built):
    made, source, student = built
    text = _text(student)
    for secret in (REFERENCE, HIDDEN, WRITTEN, REASON, "BEGIN SOLUTION", "HIDDEN TESTS", "{solution}"):
        assert secret not in text, f"the student edition contains {secret!r}"
    assert editions.leaks(source, student) == []
    # what the student gets instead: a stub, the public check, an answer cell for the written exercise
    assert "raise NotImplementedError()" in text and "statistics.fmean(data)" in text
    assert editions.TEXT_STUB in text
    assert (made.course / "release" / "fx_chapter" / "fx_chapter.ipynb").read_text() == \
        (made.student / "fx_chapter.ipynb").read_text()


def test_leak_check_notices_a_leaked_solution(built):
    _, source, student = built
    leaky = nbformat.from_dict(student)
    leaky.cells.append(nbformat.v4.new_markdown_cell(WRITTEN))
    assert editions.leaks(source, leaky) == [WRITTEN]


def test_instructor_edition_holds_solutions_checks_and_grading_metadata(built):
    _, source, _ = built
    text = _text(source)
    assert REFERENCE in text and HIDDEN in text and WRITTEN in text
    roles = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"] for c in source.cells if "nbgrader" in c.metadata}
    assert roles["parameters"]["locked"] and not roles["parameters"]["grade"]
    assert roles["fx-ex-mean-solution"]["solution"] and not roles["fx-ex-mean-solution"]["grade"]
    assert roles["fx-ex-mean-check"]["grade"] and roles["fx-ex-mean-check"]["locked"]
    assert roles["fx-ex-why-answer"]["solution"] and roles["fx-ex-why-answer"]["grade"]  # graded by hand
    assert set(roles) == {"parameters", "fx-ex-mean-solution", "fx-ex-mean-check", "fx-ex-why-answer"}


def test_autograder_passes_the_reference_answer_and_fails_wrong_ones(built, tmp_path):
    made, source, student = built
    answers = {
        "reference": editions.answered(student, source),
        "wrong": editions.answered(student, source, {"fx-ex-mean-solution": "mean = max(data) / 2"}),
        # equal to the mean (the public check passes) but not a float (the hidden test fails), and the check
        # rewritten to pass: grading restores the instructor's check with its hidden test
        "tampered": editions.answered(student, source, {"fx-ex-mean-solution": "from fractions import Fraction\n"
                                                        "mean = Fraction(sum(data)) / len(data)"}),
        "unanswered": student,
    }
    for cell in answers["tampered"].cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "fx-ex-mean-check":
            cell.source = "pass"
    paths = {}
    for name, nb in answers.items():
        paths[name] = tmp_path / f"{name}.ipynb"
        nbformat.write(nb, paths[name])
    scores = {(s.student, s.cell): s for s in editions.grade("fx_chapter", paths, made.course)}
    assert scores["reference", "fx-ex-mean-check"].passed
    for student_id in ("wrong", "unanswered", "tampered"):
        assert not scores[student_id, "fx-ex-mean-check"].passed, student_id
        assert scores[student_id, "fx-ex-mean-check"].score == 0
    # the written exercise waits for the instructor unless it was left as handed out (nbgrader scores that 0)
    assert scores["unanswered", "fx-ex-why-answer"].score == 0
