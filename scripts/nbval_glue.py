"""A pytest plugin for the nbval run of the chapters: every glued value must equal the committed one.

``pytest --nbval-lax`` re-executes each chapter against its committed outputs but, in lax mode, compares none of
them: a change that moves a headline number would land with stale committed outputs as long as the claims still
hold. This plugin compares, cell by cell, every value the cell glues (the numbers the prose quotes) with the
committed one, exactly as text after the shared sanitizers (CPU runs are bit-reproducible), fails the cell with a
readable table when one differs or is missing, and prints every difference of the session at the end.

    PYTHONPATH=scripts pytest --nbval-lax -p nbval_glue --nbval-sanitize-with tests/nbval_sanitize.cfg book/*.ipynb
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcar_lib import book

SANITIZE_FILE = Path(__file__).resolve().parent.parent / "tests" / "nbval_sanitize.cfg"
_DIFFERENCES: list[book.GlueDifference] = []


def _glued(outputs: list[Any]) -> dict[str, str]:
    return book.glued_text({"cells": [{"cell_type": "code", "outputs": list(outputs or [])}]})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    outcome = yield
    executed = getattr(item, "test_outputs", None)
    cell = getattr(item, "cell", None)
    if executed is None or cell is None or outcome.excinfo is not None:
        return
    sanitize = book.sanitizer(book.load_sanitizers(SANITIZE_FILE))
    chapter = Path(str(item.fspath)).stem
    differences = book.compare_glued(_glued(cell.get("outputs", [])), _glued(executed), chapter=chapter,
                                     sanitize=sanitize)
    if differences:
        _DIFFERENCES.extend(differences)
        outcome.force_exception(AssertionError(
            "glued values differ from the committed ones (re-execute the chapters and commit them):\n"
            + book.format_differences(differences)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _DIFFERENCES:
        terminalreporter.section("glued values that differ from the committed notebooks")
        terminalreporter.write_line(book.format_differences(_DIFFERENCES))
