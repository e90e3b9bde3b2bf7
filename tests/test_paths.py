"""Path evaluation: the tidy table, arc length, barrier, metrics and the plane through a, b and the bend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mcar_lib import paths
from mcar_lib.curves import Curve
from mcar_lib.data import LabeledImages
from mcar_lib.train import evaluate as evaluate_model

from helpers import images, small_cnn, tiny_cnn


def _plain_net(seed: int = 0) -> nn.Module:
    return tiny_cnn(seed, batch_norm=False)


def test_barrier_on_a_known_table() -> None:
    table = pd.DataFrame({"t": [0.0, 0.25, 0.5, 0.75, 1.0], "err": [10.0, 30.0, 40.0, 22.0, 20.0]})
    # straight line between 10 and 20: 12.5, 15, 17.5 at the interior points; largest excess 40 - 15
    assert paths.barrier(table, "err") == pytest.approx(25.0)
    below = pd.DataFrame({"t": [0.0, 0.5, 1.0], "err": [10.0, 5.0, 20.0]})
    assert paths.barrier(below, "err") == pytest.approx(0.0)


def test_barrier_needs_the_endpoints_and_the_column() -> None:
    table = pd.DataFrame({"t": [0.0, 0.5], "err": [1.0, 2.0]})
    with pytest.raises(ValueError, match="t = 1"):
        paths.barrier(table, "err")
    with pytest.raises(ValueError, match="no column 'loss'"):
        paths.barrier(table, "loss")


def test_evaluate_line_table_arc_length_and_metrics() -> None:
    a, b = _plain_net(0), _plain_net(1)
    test = images(32, 1)
    line = Curve.line(a, b)
    table = paths.evaluate(line, [1.0, 0.0, 0.5, 0.25], {"error": paths.error_on(test), "acc": paths.accuracy_on(test),
                                                         "loss": paths.loss_on(test)}, show_progress=False)
    assert list(table.columns) == ["t", "arc_length", "error", "acc", "loss"]
    assert table["t"].tolist() == [0.0, 0.25, 0.5, 1.0]
    distance = float(torch.linalg.vector_norm(line.end - line.start))
    assert np.allclose(table["arc_length"], table["t"] * distance, rtol=1e-5)
    assert np.allclose(table["error"], 100.0 - table["acc"])
    assert table["acc"].iloc[0] == pytest.approx(evaluate_model(a, [(test.x, test.y)])["accuracy"])
    assert table["loss"].iloc[-1] == pytest.approx(evaluate_model(b, [(test.x, test.y)])["loss"], rel=1e-6)


def test_metrics_receive_the_curve_model_with_recomputed_bn() -> None:
    a, b = small_cnn(0, classes=10, size=28), small_cnn(1, classes=10, size=28)
    curve = Curve.between(a, b)
    bonafide = [(torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))]
    x = torch.rand(3, 1, 28, 28)
    seen: dict[float, torch.Tensor] = {}

    def record(model: nn.Module) -> float:
        assert not model.training
        with torch.no_grad():
            out = model(x)
        seen[len(seen)] = out
        return float(out.sum())

    table = paths.evaluate(curve, 3, {"s": record}, bonafide, show_progress=False)
    assert table["t"].tolist() == [0.0, 0.5, 1.0]
    with torch.no_grad():
        assert torch.allclose(seen[1], curve.at(0.5, bonafide)(x))
    with torch.no_grad():
        assert torch.equal(seen[0], a.eval()(x)) and torch.equal(seen[2], b.eval()(x))
    with pytest.raises(ValueError, match="bn_data"):
        paths.evaluate(curve, [0.0, 0.5, 1.0], {"s": record}, show_progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        paths.evaluate(curve, [0.0, 1.2], {"s": record}, bonafide, show_progress=False)
    with pytest.raises(ValueError, match="reserved"):
        paths.evaluate(curve, [0.0], {"t": record}, bonafide, show_progress=False)


def test_plane_basis_and_projected_points() -> None:
    a, b = _plain_net(0), _plain_net(1)
    curve = Curve.between(a, b)
    with pytest.raises(ValueError, match="straight line"):
        paths.plane_basis(curve)
    with torch.no_grad():
        curve.bends.add_(0.3 * torch.randn_like(curve.bends))
    origin, u, v = paths.plane_basis(curve)
    assert float(u @ u) == pytest.approx(1.0) and float(v @ v) == pytest.approx(1.0)
    assert abs(float(u @ v)) < 1e-10
    data = images(16, 2)
    surface = paths.plane_surface(curve, paths.error_on(data), grid=(3, 2), margin=0.1, metric_name="error",
                                  show_progress=False)
    assert surface.values.shape == (2, 3)
    assert surface.points["a"] == (0.0, 0.0)
    bx, by = surface.points["b"]
    assert bx == pytest.approx(float(torch.linalg.vector_norm(curve.end.double() - curve.start.double())))
    assert by == pytest.approx(0.0, abs=1e-6)
    # the bend is in the plane, so its coordinates rebuild it exactly
    px, py = surface.points["bend"]
    assert torch.allclose(origin + px * u + py * v, curve.bends[0].detach().double(), atol=1e-5)
    # so is the one-bend Bezier curve: projected path points rebuild w(t)
    k = 7
    rebuilt = origin + surface.path[k, 0] * u + surface.path[k, 1] * v
    assert torch.allclose(rebuilt, curve.flat_weights_at(float(surface.path_t[k])).detach().double(), atol=1e-5)
    # one grid value, independently: a fresh network loaded with the plane's weights
    i, j = 1, 2
    w = (origin + surface.x[j] * u + surface.y[i] * v).float()
    plain = _plain_net(2)
    plain.load_state_dict(curve.unflatten(w))
    assert surface.values[i, j] == pytest.approx(100.0 - evaluate_model(plain, [(data.x, data.y)])["accuracy"])
    assert surface.to_frame().shape == (6, 3)


def test_plane_surface_of_a_bn_model_needs_bn_data() -> None:
    curve = Curve.between(small_cnn(0, classes=10, size=28), small_cnn(1, classes=10, size=28))
    with torch.no_grad():
        curve.bends.add_(0.1)
    with pytest.raises(ValueError, match="bn_data"):
        paths.plane_surface(curve, lambda m: 0.0, grid=2, show_progress=False)
    surface = paths.plane_surface(curve, lambda m: float(m.bn1.running_mean.abs().sum()),
                                  [torch.rand(4, 1, 28, 28)], grid=2, show_progress=False)
    assert (surface.values > 0).all()  # statistics were recomputed at every grid point (defaults are 0)
