"""mcar_lib.book reads the exercise convention: directives split out of markdown as MyST closes them, exercises with
their solution and check cells, and every layout the editions cannot handle refused with a reason."""

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
