"""The book's notebooks follow the exercise convention (CONTRIBUTING.md, "Exercises"), and their student edition
(scripts/editions.py with nbgrader, nothing executed) holds no solution: a stub or an answer cell for every
exercise, the public part of every check, no written solution, answer region or hidden test."""

import re
from collections import Counter
from pathlib import Path

import nbformat
import pytest
import yaml

from mcar_lib import book
from test_editions import editions

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = editions.with_exercises(editions.toc_notebooks())
HIDDEN_IN_BOOK = {"hide-input", "hide-cell", "remove-input", "remove-cell"}


def test_the_template_and_the_chapters_have_exercises():
    assert ROOT / "book" / "_template.ipynb" in NOTEBOOKS
    assert any(e.autograded for e in book.exercises(ROOT / "book" / "_template.ipynb")), \
        "the template demonstrates an autograded exercise"


def test_exercise_labels_are_unique_across_the_book():
    labels = Counter(e.label for path in NOTEBOOKS for e in book.exercises(path))
    assert not [label for label, n in labels.items() if n > 1], "Sphinx labels are global to the book"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_follow_the_convention(path):
    nb = nbformat.read(path, as_version=4)
    found = book.exercises(nb)  # raises on a missing or repeated label, misplaced solution or tagged cell
    for exercise in found:
        if exercise.autograded:
            assert max(exercise.solution_cells) < min(exercise.check_cells), (
                f"{exercise.label}: its checks must come after its answer")
    for index, cell in enumerate(nb.cells):
        tags = set(cell.metadata.get("tags", []))
        source = cell.source
        if "BEGIN SOLUTION" in source or "END SOLUTION" in source:
            assert cell.cell_type == "code" and book.SOLUTION_TAG in tags, (
                f"cell {index}: nbgrader's solution delimiters belong in code cells tagged {book.SOLUTION_TAG!r}")
            assert source.count("BEGIN SOLUTION") == source.count("END SOLUTION"), f"cell {index}: unbalanced"
        if "HIDDEN TESTS" in source:
            assert cell.cell_type == "code" and book.CHECK_TAG in tags, (
                f"cell {index}: hidden tests belong in code cells tagged {book.CHECK_TAG!r}")
        if book.SOLUTION_TAG in tags:
            assert tags & HIDDEN_IN_BOOK, f"cell {index}: a reference answer is folded in the book (hide-input)"
        if book.CHECK_TAG in tags:
            assert not re.search(r"^\s*(import\s+pytest|from\s+pytest)", source, flags=re.M), (
                f"cell {index}: checks are plain assertions (the student edition runs without pytest)")


def test_chapters_are_numbered_so_that_exercises_are_numbered_per_chapter():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = next(p for p in toc["parts"] if p["caption"] == "Chapters")
    assert chapters.get("numbered"), "sphinx-exercise numbers exercises per chapter only in a numbered toctree"


@pytest.fixture(scope="module")
def student_editions(tmp_path_factory):
    return editions.build(NOTEBOOKS, tmp_path_factory.mktemp("editions"))  # raises if a solution leaks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_edition_has_a_stub_for_every_exercise_and_no_solution(student_editions, path):
    student = nbformat.read(student_editions.student / path.name, as_version=4)
    text = "\n".join(c.source for c in student.cells)
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert not [b for c in student.cells if c.cell_type == "markdown"
                for b in book.directive_blocks(c.source) if b.kind == "solution"]
    graded = {c.metadata["nbgrader"]["grade_id"]: c for c in student.cells if "nbgrader" in c.metadata}
    for exercise in book.exercises(path):
        if exercise.autograded:
            stub = graded[f"{exercise.label}-solution"]
            assert "raise NotImplementedError()" in stub.source and not stub.outputs
            check = graded[f"{exercise.label}-check"]
            assert check.source.strip() and not check.outputs
        else:
            assert graded[f"{exercise.label}-answer"].source == editions.TEXT_STUB
    assert graded["parameters"].metadata["nbgrader"]["locked"]
