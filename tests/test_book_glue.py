"""mcar_lib.book.glue: plain Python values reach MyST-NB, and a missing MyST-NB is not an error; glue_table shows what
it glues; mean_sd is the mean and sample standard deviation."""

import statistics
import sys
import types

import numpy as np
import pytest
import torch

from mcar_lib import book


def _fake_myst(monkeypatch, store):
    module = types.ModuleType("myst_nb")
    module.glue = lambda name, value, display=True: store.append((name, value, display))
    monkeypatch.setitem(sys.modules, "myst_nb", module)


def test_scalars_become_python_numbers(monkeypatch) -> None:
    store: list = []
    _fake_myst(monkeypatch, store)
    book.glue("a", np.float64(86.5))
    book.glue("b", torch.tensor(3))
    book.glue("c", "fc.weight")
    assert [(n, v, type(v)) for n, v, _ in store] == [("a", 86.5, float), ("b", 3, int), ("c", "fc.weight", str)]
    assert all(display is False for _, _, display in store)


def test_without_myst_nb_nothing_happens(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # makes `import myst_nb` raise ImportError
    book.glue("a", 1.0)  # must not raise


def test_glue_table_glues_every_value_and_shows_it_rounded(monkeypatch) -> None:
    store: list = []
    _fake_myst(monkeypatch, store)
    table = book.glue_table({"bd_asr": (3.14159, "ASR after repair (%)"), "bd_n": (500, "bonafide images"),
                             "bd_layer": ("conv2.weight", "pruned layer"), "bd_t": (np.float64(0.30000001), "t")},
                            decimals=3)
    assert [(name, value) for name, value, _ in store] == [("bd_asr", 3.14159), ("bd_n", 500),
                                                           ("bd_layer", "conv2.weight"), ("bd_t", 0.30000001)]
    assert type(store[-1][1]) is float  # glued as a plain Python number, at full precision
    assert table.index.name == "quantity" and list(table.columns) == ["value", "glued as"]
    assert list(table.index) == ["ASR after repair (%)", "bonafide images", "pruned layer", "t"]
    assert table["value"].tolist() == [3.142, 500, "conv2.weight", 0.3]
    assert table["glued as"].tolist() == ["bd_asr", "bd_n", "bd_layer", "bd_t"]
    assert book.glue_table({"x": (2.0 / 3.0, "two thirds")})["value"].iloc[0] == 0.67  # two decimals by default


def test_glue_table_without_myst_nb_still_returns_the_table(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "myst_nb", None)
    assert book.glue_table({"a": (1.0, "one")})["value"].tolist() == [1.0]


def test_glue_table_shows_numpy_and_torch_scalars_like_the_glued_values(monkeypatch) -> None:
    store: list = []
    _fake_myst(monkeypatch, store)
    table = book.glue_table({"a": (np.float32(1.23456), "a"), "b": (torch.tensor(2.34567), "b")})
    assert table["value"].tolist() == [1.23, 2.35]


@pytest.mark.parametrize("values", [[86.5], [1.0, 2.0, 4.0], [90.25, 88.5, 91.0, 87.75, 89.5],
                                    [x / 7 for x in range(5)]])
def test_mean_sd_is_the_mean_and_the_sample_standard_deviation(values) -> None:
    values = list(values)
    mean, sd = book.mean_sd(np.array(values))
    assert mean == pytest.approx(statistics.fmean(values))
    assert sd == pytest.approx(statistics.stdev(values) if len(values) > 1 else 0.0)
    assert type(mean) is float and type(sd) is float


def test_mean_sd_refuses_no_values() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        book.mean_sd([])
