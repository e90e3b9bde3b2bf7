"""Refusing input that would give a silently wrong answer: non-finite weights or data, mismatched models.

One NaN anywhere in a weight vector poisons everything built from it: a curve multiplies endpoint b by 0 at
t = 0, and 0 · NaN is NaN, so even "endpoint a" would come back as NaN. These checks run once, where a model or
a data set enters the library (building a curve, starting a repair or a training run, attacking, measuring
curvature), and name what is wrong and how to fix it. They cost one pass over the tensors and one
host-device synchronisation each, never one per training step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def check_finite_tensor(tensor: Tensor, what: str) -> None:
    """Raise a ``ValueError`` naming ``what`` if ``tensor`` holds a NaN or an infinity."""
    if tensor.is_floating_point() or tensor.is_complex():
        bad = ~torch.isfinite(tensor.detach())
        count = int(bad.sum())
        if count:
            raise ValueError(f"{what} holds {count} non-finite value(s) (NaN or inf) out of {tensor.numel()}: "
                             "remove or replace them before passing it in")


def check_finite_weights(model: nn.Module, label: str = "model") -> None:
    """Raise a ``ValueError`` naming the first parameter or buffer of ``model`` that is not finite.

    A tampered or corrupted checkpoint (an exponent bit flip gives inf) must be cleaned first, e.g. with
    :func:`mcar_lib.faults.zero_implausible`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{label} must be an nn.Module, got {type(model).__name__}")
    for kind, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in tensors:
            if not (tensor.is_floating_point() or tensor.is_complex()):
                continue
            bad = ~torch.isfinite(tensor.detach())
            count = int(bad.sum())
            if count:
                raise ValueError(
                    f"{label} has {count} non-finite value(s) (NaN or inf) in {kind} {name!r}: every result "
                    "computed from it would be NaN. Clean the model first (e.g. "
                    "mcar_lib.faults.zero_implausible(model, max_abs)) or use another checkpoint.")


def check_has_parameters(model: nn.Module, label: str = "model") -> None:
    """Raise if ``model`` is not an ``nn.Module`` with at least one parameter."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{label} must be an nn.Module, got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise ValueError(f"{label} ({type(model).__name__}) has no parameters: it has no weights to train, "
                         "repair or connect")


def check_same_architecture(a: nn.Module, b: nn.Module, labels: tuple[str, str] = ("a", "b")) -> None:
    """Raise naming the first parameter or buffer in which ``a`` and ``b`` differ (name, shape or dtype).

    Two models can be joined by a path, compared or averaged only if their weights line up one to one.
    """
    la, lb = labels
    for label, model in ((la, a), (lb, b)):
        check_has_parameters(model, f"endpoint {label}")
    for kind, get in (("parameter", nn.Module.named_parameters), ("buffer", nn.Module.named_buffers)):
        in_a, in_b = dict(get(a)), dict(get(b))
        for name, tensor in in_a.items():
            if name not in in_b:
                raise ValueError(f"endpoint {lb} has no {kind} {name!r} ({la} has it): are both endpoints the "
                                 "same architecture?")
            other = in_b[name]
            if tensor.shape != other.shape:
                raise ValueError(f"{kind} {name!r} has shape {tuple(tensor.shape)} in endpoint {la} but "
                                 f"{tuple(other.shape)} in endpoint {lb}: are both endpoints built with the same "
                                 "arguments (width, number of classes, ...)?")
            if tensor.dtype != other.dtype:
                raise ValueError(f"{kind} {name!r} has dtype {tensor.dtype} in endpoint {la} but {other.dtype} "
                                 f"in endpoint {lb}: convert both endpoints to the same dtype first")
        for name in in_b:
            if name not in in_a:
                raise ValueError(f"endpoint {la} has no {kind} {name!r} ({lb} has it): are both endpoints the "
                                 "same architecture?")


def check_labels(y: Tensor, n: int, what: str = "y") -> None:
    """Raise unless ``y`` is a vector of ``n`` integer class labels."""
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{what} must hold one label per sample ({n}), got shape {tuple(y.shape)}")
    if y.is_floating_point():
        raise TypeError(f"{what} must hold integer class labels, got dtype {y.dtype}")


def first_batch(batches: Iterable) -> object | None:
    """The first item of a re-iterable batch source, or None if it is empty (a loader is not consumed)."""
    for item in batches:
        return item
    return None


__all__ = ["check_finite_tensor", "check_finite_weights", "check_has_parameters", "check_labels",
           "check_same_architecture", "first_batch"]
