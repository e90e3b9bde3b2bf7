"""The helpers behind the appendix "How robust are these results?": finding the sweep file (locally, or from the
release when the notebook is opened alone), merging sweep files, and summarising claims and value spreads."""

import math
import urllib.error

import pytest

from mcar_lib import book


def _run(chapter, seed, device="cpu", passed=True, failed=(), **values):
    return {"chapter": chapter, "seed": seed, "device": device, "profile": "cpu", "passed": passed,
            "failed_claims": list(failed), "n_claims": 3, "seconds": 1.0, "values": values}


RUNS = [
    _run("01_a", 0, acc=80.0, n=100, name="fc"), _run("01_a", 1, acc=82.0, n=100, name="conv"),
    _run("01_a", 2, passed=False, failed=["acc above 81 (78.0)"], acc=78.0, n=100, name="fc"),
    _run("02_b", 0, loss=1.0), _run("02_b", 1, passed=False,
                                    failed=["the chapter stopped before its claims held: ValueError: x"]),
]


def test_found_locally(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.json").write_text('{"runs": []}')
    assert book.find_repository_file("r.json", "benchmarks/r.json") == ('{"runs": []}', "r.json")


def test_missing_in_a_checkout_is_reported_not_downloaded(tmp_path, monkeypatch) -> None:
    (tmp_path / "_toc.yml").write_text("")
    (tmp_path / "book").mkdir()
    monkeypatch.chdir(tmp_path / "book")
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("must not download in a checkout"))
    text, why = book.find_repository_file("../benchmarks/r.json", "benchmarks/r.json")
    assert text is None and "does not exist in this checkout" in why


def test_opened_alone_it_downloads_from_the_release_or_says_why_not(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ../_toc.yml: a notebook on its own, as on Colab
    url = book.release_raw_url("benchmarks/r.json")
    assert url is not None and url.startswith("https://raw.githubusercontent.com/") and "/v" in url

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return b'{"runs": [1]}'

    monkeypatch.setattr("urllib.request.urlopen", lambda address, timeout: Response())
    assert book.find_repository_file("../benchmarks/r.json", "benchmarks/r.json") == ('{"runs": [1]}', url)

    def not_found(address, timeout):
        raise urllib.error.HTTPError(address, 404, "Not Found", {}, None)

    monkeypatch.setattr("urllib.request.urlopen", not_found)
    text, why = book.find_repository_file("../benchmarks/r.json", "benchmarks/r.json")
    assert text is None and "404" in why and url in why


def test_later_sweep_files_win_and_devices_become_columns() -> None:
    cuda = {"runs": [_run("01_a", 0, device="cuda", acc=81.0), _run("01_a", 1, device="cuda", passed=False,
                                                                   failed=["x", "y"])]}
    redo = {"runs": [_run("02_b", 1, loss=1.5)]}
    runs = book.sweep_runs([{"runs": RUNS}, cuda, redo])
    assert len(runs) == 7
    table = book.claims_overview(runs)
    assert list(table.columns.names) == ["device", "seed"]
    assert table.loc["01_a", ("cpu", 2)] == "✗ 1" and table.loc["01_a", ("cuda", 1)] == "✗ 2"
    assert table.loc["02_b", ("cpu", 1)] == "✓"  # the rerun replaced the crash
    assert table.loc["02_b", ("cuda", 0)] == ""
    one_device = book.claims_overview(RUNS)
    assert one_device.columns.name == "seed" and one_device.loc["02_b", 1] == "✗ stopped"
    failed = book.failed_claims_table(RUNS)
    assert failed.values.tolist() == [["01_a", "cpu", 2, "acc above 81 (78.0)"],
                                      ["02_b", "cpu", 1, "the chapter stopped before its claims held: ValueError: x"]]


def test_value_spread_matches_a_direct_computation() -> None:
    table = book.value_spread(RUNS, "01_a", flag_above=0.02).set_index("value")
    acc = [80.0, 82.0, 78.0]
    mean = sum(acc) / 3
    std = math.sqrt(sum((a - mean) ** 2 for a in acc) / 2)
    assert table.loc["acc", "mean"] == pytest.approx(mean) and table.loc["acc", "std"] == pytest.approx(std)
    assert (table.loc["acc", "min"], table.loc["acc", "max"], table.loc["acc", "seeds"]) == (78.0, 82.0, 3)
    assert table.loc["acc", "spread"] == pytest.approx(std / mean) and bool(table.loc["acc", "large"])
    assert table.loc["n", "std"] == 0 and not table.loc["n", "large"]
    assert "name" not in table.index  # text values are not averaged ...
    assert book.varying_text_values(RUNS, "01_a") == {"name": ["fc", "conv"]}  # ... but listed when they vary
    assert book.value_spread(RUNS, "03_none").empty


def test_device_files_beside_the_results_are_added_and_bad_json_is_left_out(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "_toc.yml").write_text("")  # a checkout: nothing is downloaded
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "robustness.json").write_text('{"runs": [{"x": 1}]}')
    (folder / "device-cuda.json").write_text('{"runs": [{"x": 2}]}')
    (folder / "device-mps.json").write_text("{not json")
    monkeypatch.chdir(folder)
    documents, notes = book.load_sweep_files("robustness.json")
    assert documents == [{"runs": [{"x": 1}]}, {"runs": [{"x": 2}]}]
    assert notes[0] == "read robustness.json" and "device-mps.json is not valid JSON" in notes[-1]


def test_a_missing_sweep_file_is_a_note_not_an_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "_toc.yml").write_text("")
    (tmp_path / "book").mkdir()
    monkeypatch.chdir(tmp_path / "book")
    documents, notes = book.load_sweep_files("../benchmarks/robustness.json")
    assert documents == [] and notes == ["no sweep results: ../benchmarks/robustness.json does not exist in this checkout"]
