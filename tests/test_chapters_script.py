"""scripts/chapters.py without executing any chapter: `check` reports stale glued values, failed claims and
crashes (papermill replaced by a stand-in that writes a notebook), and the seeds sweep's entries and merging."""

import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest

from mcar_lib import book

ROOT = Path(__file__).resolve().parent.parent


def _load_script():
    spec = importlib.util.spec_from_file_location("chapters_script", ROOT / "scripts" / "chapters.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


chapters = _load_script()


def _glue(name, text):
    return nbformat.v4.new_output("display_data", data={book.GLUE_MIME: text},
                                  metadata={"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}})


def _notebook(values: dict[str, str], claims: book.Claims | None = None, error: str | None = None):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("...")
    cell.outputs = [_glue(name, text) for name, text in values.items()]
    nb.cells.append(cell)
    if claims is not None:
        last = nbformat.v4.new_code_cell("claims.report()")
        last.outputs = [nbformat.v4.new_output("display_data", data=claims.bundle())]
        nb.cells.append(last)
    if error is not None:
        ename, evalue = error.split(": ", 1)
        nb.cells[-1].outputs.append(nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[]))
    return nb


def _claims(*outcomes: bool) -> book.Claims:
    claims = book.Claims("01_x", profile="cpu", seed=0)
    for k, holds in enumerate(outcomes):
        claims.check(holds, f"claim {k}", f"value {k}")
    return claims


@pytest.fixture
def fake_book(tmp_path, monkeypatch):
    """Two committed chapters, and an `execute` that writes whatever notebook the test puts in `executed`."""
    committed = {"01_x": {"a": "1.5", "b": "'name'"}, "02_y": {"c": "3"}}
    paths = []
    for stem, values in committed.items():
        path = tmp_path / "book" / f"{stem}.ipynb"
        path.parent.mkdir(exist_ok=True)
        nbformat.write(_notebook(values, _claims(True)), path)
        paths.append(path)
    executed: dict[str, tuple] = {}

    def execute(path, out, parameters):
        nb, error = executed[path.stem]
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
        return chapters.Execution(path.stem, out, 1.0, error)

    monkeypatch.setattr(chapters, "chapter_paths", lambda: paths)
    monkeypatch.setattr(chapters, "execute", execute)
    return executed


def test_check_passes_when_every_glued_value_is_as_committed(fake_book, tmp_path, capsys) -> None:
    fake_book["01_x"] = (_notebook({"a": "1.5", "b": "'name'"}, _claims(True)), None)
    fake_book["02_y"] = (_notebook({"c": "3"}, _claims(True)), None)
    assert chapters.check(out_dir=str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "ok     01_x: 2 of 2 glued values as committed; 1 of 1 claims hold" in out
    assert "differ" not in out


def test_check_reports_a_stale_value_with_both_values(fake_book, tmp_path, capsys) -> None:
    fake_book["01_x"] = (_notebook({"a": "1.5000000000000002", "b": "'name'"}, _claims(True)), None)
    fake_book["02_y"] = (_notebook({"c": "3"}, _claims(True)), None)
    assert chapters.check(out_dir=str(tmp_path / "out")) == 1
    out = capsys.readouterr().out
    assert "FAILED 01_x: 1 of 2 glued values as committed" in out
    assert "ok     02_y" in out  # the other chapter still ran and passed
    row = next(line for line in out.splitlines() if line.startswith("01_x "))
    assert row.split() == ["01_x", "a", "1.5", "1.5000000000000002"]


def test_check_lists_every_failed_claim_and_a_crash(fake_book, tmp_path, capsys) -> None:
    failing = _claims(False, True, False)
    fake_book["01_x"] = (_notebook({"a": "1.5", "b": "'name'"}, failing), "AssertionError: 01_x: 2 of 3 claims fail")
    fake_book["02_y"] = (_notebook({}, error="RuntimeError: out of memory"), "RuntimeError: out of memory")
    assert chapters.check(out_dir=str(tmp_path / "out")) == 1
    out = capsys.readouterr().out
    assert "01_x: claim fails: claim 0 (value 0)" in out and "01_x: claim fails: claim 2 (value 2)" in out
    assert "02_y: stopped with RuntimeError: out of memory" in out
    assert "differ" not in out  # a chapter that crashed is only compared on what it glued before stopping


def test_run_entry_from_claims_record_crash_and_missing_output(tmp_path) -> None:
    out = tmp_path / "a.ipynb"
    nbformat.write(_notebook({"a": "1.5", "n": "'x'"}, _claims(True, False)), out)
    entry = chapters.run_entry(chapters.Execution("01_x", out, 12.34, "AssertionError: ..."), 1, "cpu", "cpu")
    assert entry == {"chapter": "01_x", "seed": 1, "device": "cpu", "profile": "cpu", "passed": False,
                     "failed_claims": ["claim 1 (value 1)"], "n_claims": 2, "seconds": 12.3,
                     "values": {"a": 1.5, "n": "x"}}
    nbformat.write(_notebook({"a": "2.0"}, error="ValueError: boom"), out)
    entry = chapters.run_entry(chapters.Execution("01_x", out, 1.0, "ValueError: boom"), 2, "cpu", "cpu")
    assert entry["passed"] is False and entry["values"] == {"a": 2.0}
    assert entry["failed_claims"] == ["the chapter stopped before its claims held: ValueError: boom"]
    gone = chapters.run_entry(chapters.Execution("01_x", tmp_path / "none.ipynb", 1.0, "DeadKernelError: x"), 0,
                              "cpu", "cpu")
    assert gone["values"] == {} and gone["passed"] is False and gone["n_claims"] is None
    nbformat.write(_notebook({"a": "2.0"}, _claims(False)), out)  # smoke: not enforced, ran through
    smoke = chapters.run_entry(chapters.Execution("01_x", out, 1.0, None), 0, "cpu", "smoke")
    assert smoke["passed"] is False and smoke["failed_claims"] == ["claim 0 (value 0)"]


def test_merge_keeps_other_seeds_and_devices_and_replaces_reruns() -> None:
    def entry(chapter, seed, device="cpu", profile="cpu", passed=True):
        return {"chapter": chapter, "seed": seed, "device": device, "profile": profile, "passed": passed}

    old = [entry("02_b", 0), entry("01_a", 1), entry("01_a", 0, device="cuda"), entry("01_a", 0, passed=False)]
    new = [entry("01_a", 0, passed=True), entry("01_a", 2)]
    merged = chapters.merge_runs(old, new)
    assert [(e["chapter"], e["device"], e["seed"], e["passed"]) for e in merged] == [
        ("01_a", "cpu", 0, True), ("01_a", "cpu", 1, True), ("01_a", "cpu", 2, True), ("01_a", "cuda", 0, True),
        ("02_b", "cpu", 0, True)]
    assert json.loads(json.dumps(merged)) == merged


def test_select_keeps_book_order_and_refuses_unknown_chapters(monkeypatch) -> None:
    paths = [Path("book/01_a.ipynb"), Path("book/02_b.ipynb"), Path("book/03_c.ipynb")]
    monkeypatch.setattr(chapters, "chapter_paths", lambda: paths)
    assert chapters.select(["03_c", "book/01_a.ipynb"]) == [paths[0], paths[2]]
    assert chapters.select(None) == paths
    with pytest.raises(SystemExit, match="not chapters of _toc.yml"):
        chapters.select(["04_d"])


def test_record_adds_executed_notebooks_as_one_seeds_runs(tmp_path) -> None:
    passing = _notebook({"a": "1.5"}, _claims(True, True))
    passing.cells[0].metadata["papermill"] = {"duration": 2.5}
    passing.cells[1].metadata["papermill"] = {"duration": 0.5}
    failing = _notebook({"c": "3"}, _claims(True, False), error="AssertionError: 1 of 2 claims fail")
    paths = [tmp_path / "01_x.ipynb", tmp_path / "02_y.ipynb"]
    for nb, path in zip((passing, failing), paths):
        nbformat.write(nb, path)
    out = tmp_path / "robustness.json"
    out.write_text(json.dumps({"seeds": [1], "runs": [{"chapter": "01_x", "seed": 1, "device": "cpu",
                                                       "profile": "cpu", "passed": True}]}))
    chapters.record([str(p) for p in paths], seed=0, out=out)
    written = json.loads(out.read_text())
    assert written["seeds"] == [1]  # the sweep's own header is left alone
    runs = {(r["chapter"], r["seed"]): r for r in written["runs"]}
    assert set(runs) == {("01_x", 1), ("01_x", 0), ("02_y", 0)}
    assert runs["01_x", 0]["passed"] and runs["01_x", 0]["seconds"] == 3.0 and runs["01_x", 0]["values"] == {"a": 1.5}
    assert not runs["02_y", 0]["passed"] and runs["02_y", 0]["failed_claims"] == ["claim 1 (value 1)"]


def test_run_executes_the_chosen_chapters_in_book_order(fake_book, tmp_path, monkeypatch) -> None:
    import papermill

    calls = []
    monkeypatch.setattr(chapters, "ROOT", tmp_path)
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda src, out, **kw: calls.append((Path(src).stem, Path(out), kw["parameters"])))
    assert list(chapters.run("cpu", str(tmp_path / "out"), ["02_y"])) == ["02_y"]
    assert calls == [("02_y", tmp_path / "out" / "02_y.ipynb", {})]  # the default profile injects nothing
    calls.clear()
    chapters.run("smoke", None, ["02_y", "01_x"])  # in place, in book order whatever the order asked
    assert [(stem, out.parent.name, params) for stem, out, params in calls] == [
        ("01_x", "book", {"PROFILE": "smoke"}), ("02_y", "book", {"PROFILE": "smoke"})]
    with pytest.raises(SystemExit, match="not chapters"):
        chapters.run("cpu", None, ["03_z"])
