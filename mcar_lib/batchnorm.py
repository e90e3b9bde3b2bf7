"""Batch-norm statistics for weights that were never trained together: one recalibration for the whole library.

Running means and variances are not weights. A point in the middle of a curve, a noisy copy of a model or a
model on the curve's plane has weights whose activations no stored statistics describe, so the statistics are
recomputed from data (always the defender's data, never the test set). This module does it one way, with the
semantics of :func:`torch.optim.swa_utils.update_bn`: the statistics are reset, then every batch norm averages
the batch statistics of one pass over the data with equal weight per batch (``momentum=None``).

One documented difference: ``update_bn`` runs the whole model in train mode, so dropout is active and adds
noise to the statistics; here only the batch-norm layers are in train mode and dropout stays off. For a model
without dropout the two agree exactly (tested). Batches of equal size make the per-batch average a per-image
average; the last, smaller batch of a pass counts as one batch, as in ``update_bn``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mcar_lib.data import DEFAULT_BATCH_SIZE, BatchSource, iter_inputs
from mcar_lib.functional import call

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def tracking_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every batch-norm layer that keeps running statistics, with its qualified name."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def statistics_names(model: nn.Module) -> set[str]:
    """Names of the running-statistics buffers of ``model`` (empty for a model without batch norm)."""
    names = set()
    for prefix, module in tracking_layers(model):
        for leaf in STATISTICS:
            if getattr(module, leaf, None) is not None:
                names.add(f"{prefix}.{leaf}" if prefix else leaf)
    return names


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` has a batch-norm layer with running statistics."""
    return bool(tracking_layers(model))


def _reset(name: str, like: Tensor) -> Tensor:
    """The value a statistic has after ``reset_running_stats``: mean 0, variance 1, no batches counted."""
    return torch.ones_like(like) if name.endswith("running_var") else torch.zeros_like(like)


@contextlib.contextmanager
def _cumulative_averaging(model: nn.Module) -> Iterator[None]:
    """Only the batch norms in train mode, averaging with equal weight per batch; every flag restored after."""
    modes = {name: module.training for name, module in model.named_modules()}
    layers = [m for _, m in tracking_layers(model)]
    momenta = [m.momentum for m in layers]
    model.eval()
    for layer in layers:
        layer.train()
        layer.momentum = None
    try:
        yield
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for name, module in model.named_modules():
            module.training = modes.get(name, module.training)


@torch.no_grad()
def recompute_statistics(architecture: nn.Module, weights: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                         data: BatchSource, *, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Tensor]:
    """Fresh running statistics of every batch norm of ``architecture`` run with ``weights``, from ``data``.

    ``buffers`` holds the architecture's other buffers (and, for shape and dtype, its statistics, whose values
    are ignored). ``architecture`` may be a real module or a :func:`mcar_lib.functional.structure`; it is called
    through :func:`mcar_lib.functional.call`, so neither it nor any tensor passed in is changed. ``data`` yields ``(x, y)``
    batches or bare inputs (a ``LabeledImages`` is cut into batches of ``batch_size``). Returns ``{}`` for an
    architecture without batch norm.
    """
    names = statistics_names(architecture)
    if not names:
        return {}
    missing = sorted(names - set(buffers))
    if missing:
        raise ValueError(f"buffers lacks the batch-norm statistics {missing[:3]} (needed for their shapes)")
    stats = {name: _reset(name, buffers[name]) for name in names}
    device = next(iter(weights.values())).device
    tensors = {**buffers, **stats, **weights}
    seen = 0
    with _cumulative_averaging(architecture):
        for x in iter_inputs(data, batch_size):
            call(architecture, tensors, x.to(device))
            seen += 1
    if seen == 0:
        raise ValueError("the data for batch-norm statistics yielded no batches: pass the defender's data "
                         "(a LabeledImages or a loader)")
    return stats


def recalibrated(model: nn.Module, data: BatchSource, *, batch_size: int = DEFAULT_BATCH_SIZE) -> nn.Module:
    """A copy of ``model`` (eval mode) whose batch-norm statistics are recomputed from ``data``.

    The model given is not changed. A model without batch norm comes back as an eval-mode copy.
    """
    net = copy.deepcopy(model)
    weights = {name: p.detach() for name, p in net.named_parameters()}
    buffers = dict(net.named_buffers())
    stats = recompute_statistics(net, weights, buffers, data, batch_size=batch_size)
    with torch.no_grad():
        for name, value in stats.items():
            buffers[name].copy_(value)
    return net.eval()


__all__ = ["has_batch_norm", "recalibrated", "recompute_statistics", "statistics_names", "tracking_layers"]
