"""One figure style for the whole book, and the recurring "metric against t" figure.

Figures have an opaque white background so they stay legible in the book's dark mode, and every axis is
labelled with its unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import seaborn as sns

STYLE: dict[str, Any] = {
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.transparent": False,
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "font.size": 10,
}


def use_book_style() -> None:
    """Apply the book's style globally (chapters call it once, after imports)."""
    sns.set_palette("colorblind")
    mpl.rcParams.update(STYLE)


def figure(ncols: int = 1, nrows: int = 1, *, width: float = 4.2, height: float = 3.2, **kwargs: Any):
    """``plt.subplots`` with the book's style and a white, opaque background; returns ``(fig, axes)``."""
    use_book_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), layout="constrained", **kwargs)
    fig.patch.set_facecolor("white")
    fig.patch.set_alpha(1.0)
    return fig, axes


def plot_path(table: Any, ys: Sequence[str] | Mapping[str, str], *, x: str = "t", ax: Any = None,
              ylabel: str = "", xlabel: str = "position on the path t (unitless)", markers: bool = True,
              **line_kwargs: Any):
    """Plot columns of a path table (a pandas DataFrame with a ``t`` column) against ``t``.

    ``ys`` is a list of column names, or a mapping from column name to legend label.
    """
    if ax is None:
        _, ax = figure()
    labels = dict(ys) if isinstance(ys, Mapping) else {col: col for col in ys}
    for col, label in labels.items():
        if col not in table:
            raise KeyError(f"the table has no column {col!r}; it has {list(table.columns)}")
        ax.plot(table[x], table[col], marker="o" if markers else None, markersize=3, label=label, **line_kwargs)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if len(labels) > 1:
        ax.legend()
    return ax
