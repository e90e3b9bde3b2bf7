"""Measuring things along a curve: a tidy table over a grid of t, the barrier, and the 2-D surface on the
curve's plane.

Every chapter asks the same question (what happens to clean error, attack success, robust loss, curvature
... along a path?), so one loop serves them all: :func:`evaluate` builds the network at each t with its
batch-norm statistics recomputed from the defender's data, hands it to each metric, and returns one row per t.
A metric is any ``Callable[[nn.Module], float]``, or one that returns several numbers from one pass as a
mapping (``{"loss": ..., "accuracy": ...}`` becomes the columns ``<name>_loss`` and ``<name>_accuracy``);
:func:`error_on`, :func:`accuracy_on`, :func:`loss_on` and :func:`evaluation_on` make the common ones. The
straight line is just ``Curve.line(a, b)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from mcar_lib.curves import Curve, check_t
from mcar_lib.data import BatchSource
from mcar_lib.train import evaluate as evaluate_model
from mcar_lib.train import progress

#: A measurement of one model: a number, or several numbers from one pass (a mapping name -> value).
Metric = Callable[[nn.Module], "float | Mapping[str, float]"]


# ---------------------------------------------------------------------------------------------- metrics

def evaluation_on(data: BatchSource, *, batch_size: int = 512) -> Metric:
    """A metric: ``{"loss": mean cross-entropy (nats), "accuracy": accuracy (%)}`` on ``data``, from one pass.

    ``data`` is a LabeledImages or a re-iterable loader (a one-shot generator would be empty the second time).
    """
    return lambda model: evaluate_model(model, data, batch_size=batch_size)


def accuracy_on(data: BatchSource, *, batch_size: int = 512) -> Metric:
    """A metric: accuracy (%) on ``data``, in eval mode."""
    return lambda model: evaluate_model(model, data, batch_size=batch_size)["accuracy"]


def error_on(data: BatchSource, *, batch_size: int = 512) -> Metric:
    """A metric: error rate (%, 100 − accuracy) on ``data``."""
    return lambda model: 100.0 - evaluate_model(model, data, batch_size=batch_size)["accuracy"]


def loss_on(data: BatchSource, *, batch_size: int = 512) -> Metric:
    """A metric: mean cross-entropy (nats) on ``data``."""
    return lambda model: evaluate_model(model, data, batch_size=batch_size)["loss"]


def _columns(name: str, value: float | Mapping[str, float]) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {f"{name}_{key}": float(v) for key, v in value.items()}
    return {name: float(value)}


# ------------------------------------------------------------------------------------------- evaluation

def _grid(ts: Sequence[float] | np.ndarray | torch.Tensor | int) -> list[float]:
    if isinstance(ts, int):
        if ts < 2:
            raise ValueError(f"a grid of t needs at least 2 points, got {ts}")
        ts = np.linspace(0.0, 1.0, ts)
    values = sorted({check_t(t) for t in (ts.tolist() if hasattr(ts, "tolist") else ts)})
    if not values:
        raise ValueError("ts is empty: give the values of t to evaluate, e.g. numpy.linspace(0, 1, 11)")
    return values


def evaluate(curve: Curve, ts: Sequence[float] | np.ndarray | torch.Tensor | int, metrics: Mapping[str, Metric],
             bn_data: BatchSource | None = None, *, show_progress: bool = True) -> pd.DataFrame:
    """One row per t (sorted): ``t``, ``arc_length`` and one column per metric (``<name>_<key>`` for each number
    of a metric that returns a mapping).

    Each metric receives ``curve.at(t, bn_data)``: a standalone network whose batch-norm statistics were
    recomputed from ``bn_data`` (the defender's data; required for an interior t of a batch-norm network;
    the endpoints keep their own). ``arc_length`` is the cumulative L2 length of :math:`w(t)` along the grid
    (a polygonal approximation; finer grids give longer, more exact values). ``ts`` may be an int (that many
    evenly spaced points).
    """
    grid = _grid(ts)
    for name in metrics:
        if name in ("t", "arc_length"):
            raise ValueError(f"metric name {name!r} is reserved for a column of the table; rename the metric")
    rows, length, previous = [], 0.0, None
    for t in progress(grid, desc="path", enabled=show_progress):
        with torch.no_grad():
            w = curve.flat_weights_at(t)
            if previous is not None:
                length += float(torch.linalg.vector_norm(w - previous))
            previous = w
        model = curve.at(t, bn_data)
        row: dict[str, float] = {"t": t, "arc_length": length}
        for name, fn in metrics.items():
            row.update(_columns(name, fn(model)))
        rows.append(row)
    return pd.DataFrame(rows)


def barrier(table: pd.DataFrame, column: str) -> float:
    """The height of the barrier in ``column``: :math:`\\max_t [v(t) - ((1-t)\\,v(0) + t\\,v(1))]`.

    The straight-line interpolation of the endpoint values is what one would expect of a "flat" path; the
    barrier is how far the path rises above it (0 if it never does; the value at the ends is 0 by
    construction). ``table`` needs a ``t`` column with rows at t = 0 and t = 1 (as :func:`evaluate` returns).
    """
    for needed in ("t", column):
        if needed not in table.columns:
            raise ValueError(f"the table has no column {needed!r}; it has {list(table.columns)}")
    t = table["t"].to_numpy(dtype=float)
    v = table[column].to_numpy(dtype=float)
    at0, at1 = np.isclose(t, 0.0, rtol=0.0, atol=1e-12), np.isclose(t, 1.0, rtol=0.0, atol=1e-12)
    if not at0.any() or not at1.any():
        raise ValueError("the table needs rows at t = 0 and t = 1 (the endpoints) to compute a barrier; "
                         "include 0 and 1 in the grid of t")
    v0, v1 = v[at0][0], v[at1][0]
    return float(np.max(v - ((1.0 - t) * v0 + t * v1)))


# ------------------------------------------------------------------------------------------- the plane

@dataclass(frozen=True)
class PlaneSurface:
    """A metric on the plane through endpoint a, endpoint b and a bend (Garipov et al.'s figure).

    Coordinates are in weight-space L2 units: ``x`` runs along a → b (a at 0, b at ``points["b"][0]``), ``y``
    along the component of the bend orthogonal to it. ``values[i, j]`` is the metric at ``(x[j], y[i])``
    (the layout ``matplotlib.pyplot.contourf(x, y, values)`` expects). ``points`` holds the projected positions
    of ``"a"``, ``"b"`` and ``"bend"``; ``path`` the curve's positions at ``path_t`` (the curve lies in the
    plane exactly for one bend).
    """

    x: np.ndarray
    y: np.ndarray
    values: np.ndarray
    points: dict[str, tuple[float, float]]
    path: np.ndarray
    path_t: np.ndarray
    metric: str

    def to_frame(self) -> pd.DataFrame:
        """The grid as a tidy table (``x``, ``y``, value)."""
        xx, yy = np.meshgrid(self.x, self.y)
        return pd.DataFrame({"x": xx.ravel(), "y": yy.ravel(), self.metric: self.values.ravel()})


def plane_basis(curve: Curve, bend: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Origin (endpoint a) and orthonormal directions (u, v) of the plane through a, b and a bend (Gram-Schmidt)."""
    if curve.n_bends < 1:
        raise ValueError("the plane is spanned by the endpoints and a bend; this curve has no bends")
    if not 0 <= bend < curve.n_bends:
        raise ValueError(f"bend must be in 0..{curve.n_bends - 1}, got {bend}")
    with torch.no_grad():
        origin = curve.start.double()
        u = curve.end.double() - origin
        u_norm = torch.linalg.vector_norm(u)
        if u_norm == 0:
            raise ValueError("the two endpoints are identical: there is no plane through them")
        u = u / u_norm
        v = curve.bends[bend].detach().double() - origin
        v = v - (v @ u) * u
        v_norm = torch.linalg.vector_norm(v)
        if v_norm <= 1e-6 * u_norm:
            raise ValueError("the bend lies on the straight line (an untrained curve?): train the curve first")
        return origin, u, v / v_norm


def plane_surface(curve: Curve, metric: Metric, bn_data: BatchSource | None = None, *,
                  grid: int | tuple[int, int] = 11, margin: float = 0.2, bend: int = 0, path_points: int = 41,
                  metric_name: str = "value", show_progress: bool = True) -> PlaneSurface:
    """``metric`` on a ``grid`` of points of the plane through the endpoints and bend ``bend``.

    The grid covers the triangle a, b, bend plus ``margin`` (a fraction of its width and height) on every side.
    At every grid point the network gets the plane's weights and batch-norm statistics recomputed from
    ``bn_data`` (the defender's data); ``grid`` points per axis (an int, or ``(nx, ny)``).
    """
    nx, ny = (grid, grid) if isinstance(grid, int) else grid
    if nx < 2 or ny < 2:
        raise ValueError(f"grid needs at least 2 points per axis, got {grid}")
    if margin < 0:
        raise ValueError(f"margin must be non-negative, got {margin}")
    origin, u, v = plane_basis(curve, bend)

    def project(w: torch.Tensor) -> tuple[float, float]:
        d = w.double() - origin
        return float(d @ u), float(d @ v)

    with torch.no_grad():
        points = {"a": (0.0, 0.0), "b": project(curve.end), "bend": project(curve.bends[bend].detach())}
        path_t = np.linspace(0.0, 1.0, path_points)
        path = np.array([project(curve.flat_weights_at(float(t))) for t in path_t])
    xs = [p[0] for p in points.values()] + path[:, 0].tolist()
    ys = [p[1] for p in points.values()] + path[:, 1].tolist()
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    x = np.linspace(min(xs) - margin * width, max(xs) + margin * width, nx)
    y = np.linspace(min(ys) - margin * height, max(ys) + margin * height, ny)
    values = np.empty((ny, nx))
    dtype, device = curve.start.dtype, curve.start.device
    cells = [(i, j) for i in range(ny) for j in range(nx)]
    for i, j in progress(cells, desc="plane", enabled=show_progress):
        w = (origin + x[j] * u + y[i] * v).to(device, dtype)
        value = metric(curve.model_at_weights(w, bn_data))
        if isinstance(value, Mapping):
            raise TypeError("plane_surface draws one number per point; pass a metric that returns a float")
        values[i, j] = float(value)
    return PlaneSurface(x=x, y=y, values=values, points=points, path=path, path_t=path_t, metric=metric_name)
