"""mcar_lib.book.Claims and the notebook readers: every failure is listed, the checklist is shown whether or not
the claims hold, nothing is raised when not enforced, and the record is JSON that survives a notebook round trip.
Glued values are compared exactly as their repr; nothing here executes a chapter."""

import json
import sys

import nbformat
import numpy as np
import pytest
import torch

from mcar_lib import book


def _mixed() -> book.Claims:
    claims = book.Claims("02_backdoor_repair", enforce=True, profile="cpu", seed=1)
    claims.check(np.float64(3.0) <= 10, "path repair removes the backdoor", "ASR 3.0 %")
    claims.check(torch.tensor(12.0) <= 10, "the middle of every path lost the backdoor", "largest ASR 12.0 %")
    claims.check(False, "matched fine-tuning is no better")
    return claims


def test_all_failures_are_listed_in_one_error(capsys) -> None:
    claims = _mixed()
    with pytest.raises(AssertionError) as err:
        claims.report()
    message = str(err.value)
    assert "2 of 3 claims fail" in message
    assert "the middle of every path lost the backdoor (largest ASR 12.0 %)" in message
    assert "matched fine-tuning is no better" in message
    assert "path repair removes the backdoor" not in message
    shown = capsys.readouterr().out  # the checklist is shown before raising
    assert "✗ the middle of every path lost the backdoor — largest ASR 12.0 %" in shown
    assert "✓ path repair removes the backdoor — ASR 3.0 %" in shown


def test_all_holding_prints_the_checklist_and_records_it(capsys) -> None:
    claims = book.Claims("01_mode_connectivity", profile="cpu", seed=0)
    assert claims.check(87.1 >= 80, "both endpoints reach 80 %", "87.1 % and 86.1 %") is True
    assert claims.check(np.bool_(True), "the Bezier barrier is at most 2 points", "1.5 points") is True
    assert claims.report() is None  # nothing to echo as a cell result
    record = claims.record()
    out = capsys.readouterr().out
    assert out.startswith("What this run showed (01_mode_connectivity, profile cpu, seed 0): all 2 claims hold")
    assert out.count("✓") == 2 and "✗" not in out
    assert record["passed"] is True and record["failed_claims"] == []


def test_not_enforced_reports_without_raising(capsys) -> None:
    claims = book.Claims("02_backdoor_repair", enforce=False, profile="smoke")
    claims.check(False, "path repair removes the backdoor", "ASR 40.0 %")
    claims.report()  # must not raise
    record = claims.record()
    assert record["passed"] is False and record["enforced"] is False
    assert record["failed_claims"] == ["path repair removes the backdoor (ASR 40.0 %)"]
    assert ": the claim does not hold (not enforced in this run)" in capsys.readouterr().out


def test_record_is_json_with_every_claim() -> None:
    record = _mixed().record()
    assert json.loads(json.dumps(record)) == record
    assert record["passed"] is False
    assert [c["holds"] for c in record["claims"]] == [True, False, False]
    assert all(type(c["holds"]) is bool for c in record["claims"])  # numpy / torch booleans became bool
    assert record["failed_claims"] == ["the middle of every path lost the backdoor (largest ASR 12.0 %)",
                                       "matched fine-tuning is no better"]


def test_a_condition_that_is_not_a_single_truth_value_is_an_error() -> None:
    with pytest.raises(RuntimeError):  # a tensor of several booleans, like a Series, has no single truth value
        book.Claims("x").check(torch.tensor([True, False]), "ambiguous")


def test_claims_are_escaped_in_html() -> None:
    claims = book.Claims("x")
    claims.check(True, "loss < 1 & <b>not bold</b>", "0.5 < 1")
    assert "loss &lt; 1 &amp; &lt;b&gt;not bold&lt;/b&gt;" in claims.html() and "<b>" not in claims.html()


def test_in_a_kernel_one_display_output_carries_checklist_and_record(monkeypatch) -> None:
    shown = []
    monkeypatch.setattr(book, "_show", shown.append)
    claims = _mixed()
    claims.enforce = False
    claims.report()
    (bundle,) = shown
    assert set(bundle) == {"text/plain", "text/html", book.CLAIMS_MIME}
    assert bundle[book.CLAIMS_MIME] == claims.record()
    assert bundle["text/html"].count("<tr>") == 4  # header + three claims


def _notebook(*outputs, error=None) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("...")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n"), *outputs]
    if error:
        cell.outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue=error, traceback=[]))
    nb.cells.append(cell)
    return nb


def _glue(name, text):
    return nbformat.v4.new_output("display_data", data={book.GLUE_MIME: text},
                                  metadata={"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}})


def test_claims_record_survives_writing_and_reading_the_notebook(tmp_path) -> None:
    claims = _mixed()
    bundle = claims.bundle()
    nb = _notebook(nbformat.v4.new_output("display_data", data=bundle), _glue("bd_acc", "84.15"))
    nbformat.validate(nb)  # a JSON MIME type may hold an object
    path = tmp_path / "out.ipynb"
    nbformat.write(nb, path)
    assert book.claims_record(path) == claims.record()
    assert book.claims_record(_notebook()) is None


def test_glued_values_and_errors_are_read_back(tmp_path) -> None:
    nb = _notebook(_glue("bd_acc", "84.15"), _glue("bd_name", "'Trouser'"), _glue("bd_n", "2500"),
                   _glue("bd_acc", "84.2"), error="boom")
    path = tmp_path / "out.ipynb"
    nbformat.write(nb, path)
    assert book.glued_text(path) == {"bd_acc": "84.2", "bd_name": "'Trouser'", "bd_n": "2500"}  # the later glue wins
    assert book.glued_values(path) == {"bd_acc": 84.2, "bd_name": "Trouser", "bd_n": 2500}
    assert book.parse_glued("np.float64(1.0)") == "np.float64(1.0)"  # not a literal: kept as text
    assert book.errors(path) == ["ValueError: boom"]


def test_a_changed_value_is_reported_an_unchanged_one_is_not() -> None:
    committed = {"a": "16.909746170043945", "b": "87.1", "c": "'fc.weight'", "gone": "1"}
    executed = {"a": "16.909746170043945", "b": "87.10000000000001", "c": "'fc.weight'", "new": "2"}
    diffs = book.compare_glued(committed, executed, chapter="01_mode_connectivity")
    assert [(d.name, d.committed, d.executed) for d in diffs] == [
        ("b", "87.1", "87.10000000000001"), ("gone", "1", None), ("new", None, "2")]
    assert all(d.chapter == "01_mode_connectivity" for d in diffs)
    assert book.compare_glued(committed, dict(committed)) == []
    table = book.format_differences(diffs)
    lines = [line.split() for line in table.splitlines()]
    assert lines[0] == ["chapter", "glued", "value", "committed", "re-executed"]
    assert lines[2:] == [["01_mode_connectivity", "b", "87.1", "87.10000000000001"],
                         ["01_mode_connectivity", "gone", "1", "-"], ["01_mode_connectivity", "new", "-", "2"]]


def test_floats_are_compared_exactly_as_their_repr() -> None:
    x = 0.1 + 0.2
    assert repr(x) != repr(0.3)
    assert book.compare_glued({"x": repr(0.3)}, {"x": repr(x)})  # a last-bit change is a change
    assert not book.compare_glued({"x": repr(x)}, {"x": repr(0.1 + 0.2)})


def test_sanitizers_from_the_shared_file_apply_before_comparing(tmp_path) -> None:
    from pathlib import Path

    cfg = Path(__file__).parent / "nbval_sanitize.cfg"
    sanitize = book.sanitizer(book.load_sanitizers(cfg))
    assert not book.compare_glued({"t": "'took 12.5 s'"}, {"t": "'took 13.0 s'"}, sanitize=sanitize)
    assert book.compare_glued({"t": "12.5"}, {"t": "13.0"}, sanitize=sanitize)  # bare numbers are never sanitized


def test_outside_ipython_the_checklist_is_printed(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "IPython", None)  # `import IPython` raises ImportError
    book._show({"text/plain": "checklist"})
    assert capsys.readouterr().out == "checklist\n"
