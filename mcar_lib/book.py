"""What the book's notebooks share beyond the library proper: gluing results into the prose.

Chapters call :func:`glue` instead of ``myst_nb.glue`` directly, for two reasons: MyST formats a glued number
from its text form, which for a NumPy or torch scalar is ``np.float64(86.0)`` or ``tensor(0.5)`` and cannot
be formatted; and on Colab, where only ``mcar_lib`` is installed, a chapter must still run without MyST-NB.
"""

from __future__ import annotations

from typing import Any


def glue(name: str, value: Any, display: bool = False) -> None:
    """Record ``value`` under ``name`` for ``{glue:text}`` roles in the prose (MyST-NB), as a plain Python value.

    Scalars with an ``.item()`` (NumPy, torch) are converted first. Without MyST-NB installed nothing is
    recorded: the numbers only matter when the book is rendered.
    """
    if hasattr(value, "item"):
        value = value.item()
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    myst_glue(name, value, display=display)
