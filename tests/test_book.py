"""Book structure: every chapter in _toc.yml exists, has exactly one parameters cell, is committed with
in-order outputs and no errors, and ends with a claims summary cell; environment.yml agrees with pyproject."""

import re
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from mcar_lib import profiles

ROOT = Path(__file__).resolve().parent.parent
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
ENTRIES = [TOC["root"]] + [ch["file"] for part in TOC.get("parts", []) for ch in part.get("chapters", [])]
NOTEBOOKS = [ROOT / f"{e}.ipynb" for e in ENTRIES if (ROOT / f"{e}.ipynb").exists()]


@pytest.mark.parametrize("entry", ENTRIES)
def test_toc_entry_exists(entry):
    assert (ROOT / f"{entry}.ipynb").exists() or (ROOT / f"{entry}.md").exists(), f"{entry} listed in _toc.yml is missing"


def _code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exactly_one_parameters_cell(path):
    cells = [c for c in _code_cells(path) if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name} has {len(cells)} cells tagged 'parameters'"
    names = set(re.findall(r"^(\w+)\s*=", cells[0].source, flags=re.M))
    assert {"PROFILE", "SEED", "DEVICE"} <= names, f"{path.name}: parameters cell defines {sorted(names)}"
    assert re.search(r'^PROFILE\s*=\s*"cpu"', cells[0].source, flags=re.M), "the default profile must be cpu"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_with_in_order_outputs_and_no_errors(path):
    cells = [c for c in _code_cells(path) if c.source.strip()]
    counts = [c.execution_count for c in cells]
    assert all(n is not None for n in counts), f"{path.name}: some code cells were not executed"
    assert counts == list(range(counts[0], counts[0] + len(counts))), f"{path.name}: execution out of order {counts}"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: committed with an error output: {errors[0].get('ename')}"
    assert any(c.outputs for c in cells), f"{path.name}: committed without outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_ends_with_claims_summary_cell(path):
    """The last code cell checks the headline claims with mcar_lib.book.Claims and shows the reader its checklist
    (input hidden, output kept), enforced outside the smoke profile."""
    last = [c for c in _code_cells(path) if c.source.strip()][-1]
    tags = last.metadata.get("tags", [])
    assert "remove-input" in tags and "remove-cell" not in tags and "remove-output" not in tags, (
        f"{path.name}: the claims cell must be tagged remove-input (its checklist is shown), not {tags}")
    assert re.search(r"^claims = Claims\(", last.source, flags=re.M), f"{path.name}: last code cell must build Claims"
    assert re.search(r'enforce=(PROFILE != "smoke"|not cfg\.is_smoke)', last.source), (
        f"{path.name}: claims must be enforced outside the smoke profiles")
    assert last.source.rstrip().endswith("claims.report()"), f"{path.name}: the claims cell must end with claims.report()"
    assert not re.search(r"^\s*assert\b", last.source, flags=re.M), f"{path.name}: use claims.check, not assert"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_hand_typed_numbers_in_prose_without_glue(path):
    """Prose cites results through {glue:text}; a literal percentage in markdown is almost always a typed result."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        text = re.sub(r"\{glue:[a-z]+\}`[^`]*`", "", cell.source)
        text = re.sub(r"`[^`]*`|\$[^$]*\$", "", text)
        assert not re.search(r"\b\d+(\.\d+)?\s?%", text), f"{path.name}: typed percentage in prose: {cell.source[:120]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_glued_values_are_plain_python(path):
    """MyST formats a glued number from its text repr: ``np.float64(86.0)`` or ``tensor(0.5)`` breaks the build."""
    for cell in _code_cells(path):
        for output in cell.outputs:
            for mime, text in output.get("data", {}).items():
                if mime.endswith("text/plain") and "papermill.record" in mime:
                    assert not re.match(r"\s*(np\.|numpy\.|tensor\()", text), (
                        f"{path.name}: glued value {text!r} is not a plain Python value; glue float(x) or x.item()")


def _requirement_set(items):
    return {re.sub(r"\s+", "", item).lower() for item in items}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_set(project["dependencies"] + project["optional-dependencies"]["book"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = _requirement_set(p for p in pip_section if not p.startswith("-e"))
    assert declared == listed, f"only in pyproject: {sorted(declared - listed)}; only in environment.yml: {sorted(listed - declared)}"


def test_profiles():
    assert profiles.get("cpu").name == "cpu"
    assert profiles.get("smoke").n_train < profiles.get("cpu").n_train
    assert profiles.get("paper").dataset == "cifar10"
    with pytest.raises(ValueError, match="choose one of"):
        profiles.get("laptop")
