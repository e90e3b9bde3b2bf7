"""mcar_lib.book.glue: plain Python values reach MyST-NB, and a missing MyST-NB is not an error."""

import sys
import types

import numpy as np
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
