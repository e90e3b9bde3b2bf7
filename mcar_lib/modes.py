"""Train and eval modes, set for a block and restored afterwards: the one place the library handles them.

A function that measures a model must not leave it in another mode, and must not move its batch-norm
statistics. Three contexts cover every case in the book:

* :func:`evaluation_mode`: the whole model in eval mode (running statistics, no dropout);
* :func:`batch_statistics_mode`: batch norm normalises with each batch's own statistics *without* updating any
  running average, everything else in eval mode (what a training step's forward computes, for attacks crafted
  during training of a curve);
* :func:`attack_mode` picks one of the two by name (``bn="eval"`` or ``bn="batch"``).

Every context restores each submodule's own flag, not just the top-level one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

BNMode = Literal["eval", "batch"]
BN_MODES: tuple[str, ...] = ("eval", "batch")


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore every submodule's own mode."""
    modes = {name: module.training for name, module in model.named_modules()}
    model.eval()
    try:
        yield model
    finally:
        for name, module in model.named_modules():
            module.training = modes.get(name, module.training)


@contextlib.contextmanager
def batch_statistics_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Batch norm on batch statistics with no running-average update, everything else in eval mode.

    A module that keeps its training-mode statistics in throw-away buffers of its own (a point of a curve,
    :class:`mcar_lib.functional.FunctionalModel` built with ``scratch_statistics=True``) is simply put in
    train mode: its forward never writes to anyone's running averages.
    """
    with evaluation_mode(model):
        if getattr(model, "scratch_statistics", False):
            model.train()
            yield model
            return
        layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        tracking = [m.track_running_stats for m in layers]
        for layer in layers:  # train mode without tracking: batch statistics, nothing updated
            layer.train()
            layer.track_running_stats = False
        try:
            yield model
        finally:
            for layer, flag in zip(layers, tracking):
                layer.track_running_stats = flag


@contextlib.contextmanager
def attack_mode(model: nn.Module | Callable[[Tensor], Tensor], bn: BNMode = "eval") -> Iterator:
    """The mode an attack runs in: ``bn="eval"`` (:func:`evaluation_mode`) or ``bn="batch"``
    (:func:`batch_statistics_mode`). Plain callables (not ``nn.Module``) are used as they are."""
    if bn not in BN_MODES:
        raise ValueError(f"unknown bn mode {bn!r}; choose 'eval' (running statistics) or 'batch' (batch "
                         "statistics, nothing updated)")
    if not isinstance(model, nn.Module):
        yield model
        return
    context = evaluation_mode if bn == "eval" else batch_statistics_mode
    with context(model):
        yield model


__all__ = ["BNMode", "BN_MODES", "attack_mode", "batch_statistics_mode", "evaluation_mode"]
