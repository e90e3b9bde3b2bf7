"""mcar_lib.book for the editions and the page for instructors: directives split out of markdown as MyST closes
them, exercises with their solution and check cells, every layout the editions cannot handle refused with a
reason, and the chapters' execution times gathered from the benchmark and sweep files."""

import math

import nbformat
import pytest

from mcar_lib import book

SOLUTION_WITH_CODE = """Some prose.

````{solution} ex-a
:class: dropdown

```python
x = 1
```

The rest.
````

:::{exercise}
:label: ex-b

Colon fences work too.
:::
trailing prose"""


def test_directive_blocks_close_where_myst_does():
    blocks = book.directive_blocks(SOLUTION_WITH_CODE)
    assert [(b.kind, b.label) for b in blocks] == [("text", None), ("solution", "ex-a"), ("exercise", "ex-b"),
                                                   ("text", None)]
    assert blocks[1].body == "```python\nx = 1\n```\n\nThe rest."  # the inner fence does not close it
    assert blocks[2].body == "Colon fences work too."
    assert (blocks[0].text, blocks[3].text) == ("Some prose.", "trailing prose")


@pytest.mark.parametrize("markdown, message", [
    ("```{solution-start} ex-a\n```", "gated"),
    ("```{exercise}\n:label: ex-a\nno end", "unclosed"),
])
def test_directive_blocks_refuse(markdown, message):
    with pytest.raises(ValueError, match=message):
        book.directive_blocks(markdown)


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(c) if isinstance(c, str) else c for c in cells]
    return nb


def _code(*tags):
    return nbformat.v4.new_code_cell("x = 1", metadata={"tags": list(tags)})


EX_A = "```{exercise}\n:label: ex-a\n\nDo a.\n```"
EX_B = "```{exercise}\n:label: ex-b\n\nDo b.\n```\n\n```{solution} ex-b\nBecause.\n```"


def test_exercises_collect_cells_of_the_exercise_above_them():
    found = book.exercises(_nb("intro", EX_A, _code("solution"), _code("check"), _code("check"), EX_B, _code()))
    assert [(e.label, e.autograded, e.written_solution, e.solution_cells, e.check_cells) for e in found] == [
        ("ex-a", True, False, (2,), (3, 4)), ("ex-b", False, True, (), ())]
    assert found[0].statement == "Do a."


@pytest.mark.parametrize("cells, message", [
    (("```{exercise}\nNo label.\n```",), "without a :label:"),
    ((EX_A, EX_A), "used twice"),
    ((EX_A, "```{solution} ex-b\n```"), "follows exercise 'ex-a'"),
    ((_code("solution"), EX_A), "no exercise comes before it"),
    ((EX_A, _code("solution", "check")), "split it in two"),
    ((EX_A, _code("check")), "no cell tagged 'solution'"),
])
def test_exercises_refuse_what_the_editions_cannot_handle(cells, message):
    with pytest.raises(ValueError, match=message):
        book.exercises(_nb(*cells))


def test_chapter_times_one_column_per_source():
    cpu = {"chapter_seconds/01_a": 40.0, "chapter_seconds/02_b": 100.0, "book_seconds": 140.0, "machine": {}}
    sweep = {"runs": [
        {"chapter": "01_a", "seed": s, "device": "cuda", "profile": "cpu", "seconds": t, "failed_claims": []}
        for s, t in ((0, 10.0), (1, 30.0), (2, 12.0))] + [
        {"chapter": "02_b", "seed": 0, "device": "cuda", "profile": "cpu", "seconds": 1.0,
         "failed_claims": ["the chapter stopped before its claims held: boom"]},
        {"chapter": "02_b", "seed": 0, "device": "cpu", "profile": "cpu", "seconds": 99.0, "failed_claims": []},
        {"chapter": "02_b", "seed": 0, "device": "cuda", "profile": "paper", "seconds": 900.0, "failed_claims": []}]}
    estimates = {"paper_estimate_seconds/01_a": 3600.0, "machine": {}}
    table = book.chapter_times(cpu, [sweep], estimates)
    assert list(table.columns) == ["CPU, cpu profile", "GPU, cpu profile", "GPU, paper profile",
                                   "GPU, paper profile (estimate)"]
    row = table.loc["01_a"]
    assert (row["CPU, cpu profile"], row["GPU, cpu profile"], row["GPU, paper profile (estimate)"]) == (
        40.0, 12.0, 3600.0)  # the GPU time is the median over seeds
    assert math.isnan(row["GPU, paper profile"])
    assert table.loc["02_b", "CPU, cpu profile"] == 100.0 and table.loc["02_b", "GPU, paper profile"] == 900.0
    assert table.loc[["02_b"], "GPU, cpu profile"].isna().all()  # the stopped run is no time; the cpu run no GPU
    assert book.chapter_times().empty
