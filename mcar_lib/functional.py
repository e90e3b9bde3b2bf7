"""Running an architecture with weights it does not own: the one lower layer for curves, AWP and flatness.

A point of a curve, a network with adversarially perturbed weights and a network nudged along a random
direction are all "this architecture with those weights". They are computed here in one way, through
:func:`torch.func.functional_call`, so that no model given to the library is ever modified (not even
temporarily) and no per-architecture code is needed:

* :func:`structure` copies a module's *structure* onto the ``meta`` device (no memory for its tensors);
* :class:`FunctionalModel` is an ``nn.Module`` view of a structure with given weights and buffers (fixed
  dictionaries, or functions that produce them on every call, e.g. the differentiable weights of a curve at t);
* :func:`shifted` forms ``w + scale · v`` by name;
* :func:`materialize` turns weights and buffers into a standalone, ordinary module (for third-party code).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from typing import Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

Weights = Mapping[str, Tensor]
#: Fixed tensors, or a function that makes them for each call (it receives the view's training flag).
WeightsSource = Union[Weights, Callable[[], Weights]]
BuffersSource = Union[Weights, Callable[[bool], Weights], None]


def structure(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the ``meta`` device: the architecture only.

    Tied tensors stay tied (they map to one meta tensor), ``requires_grad`` flags are kept, and nothing is
    allocated, so copying a large network this way is cheap.
    """
    memo: dict[int, object] = {}
    for param in model.parameters():
        memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
    for buffer in model.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(model, memo)


def _resolve(source: WeightsSource | BuffersSource, *args: bool) -> dict[str, Tensor]:
    if source is None:
        return {}
    return dict(source(*args) if callable(source) else source)


def call(module: nn.Module, tensors: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``module(x)`` with some of its parameters or buffers replaced by ``tensors`` (by name), in the module's
    current mode; the rest are the module's own. The one place the library calls ``functional_call``."""
    return functional_call(module, dict(tensors), (x,), strict=False)


class FunctionalModel(nn.Module):
    """An architecture (a :func:`structure`) run with given weights and buffers: ``functional_call`` as a module.

    ``weights`` and ``buffers`` are dictionaries by name, or functions that make them on every forward pass
    (``buffers(training)`` receives the view's mode, so that train mode can use throw-away statistics). The view
    decides the mode of each forward pass through its own ``train()``/``eval()`` flag; the structure is private
    (not registered as a submodule), so nothing outside the view changes. ``scratch_statistics=True`` declares
    that train-mode statistics go to throw-away buffers (see :func:`mcar_lib.modes.batch_statistics_mode`).
    The view holds an empty buffer on ``device`` so that device look-ups find where its weights live.
    """

    def __init__(self, architecture: nn.Module, weights: WeightsSource, buffers: BuffersSource = None, *,
                 device: torch.device | str | None = None, scratch_statistics: bool = False) -> None:
        super().__init__()
        object.__setattr__(self, "architecture", architecture)  # not a submodule: its mode is ours to set
        self._weights = weights
        self._buffers_source = buffers
        self.scratch_statistics = scratch_statistics
        if device is None:
            first = next(iter(_resolve(weights).values()), None) if not callable(weights) else None
            device = first.device if first is not None else torch.device("cpu")
        self.register_buffer("_device_anchor", torch.empty(0, device=device), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        self.architecture.train(self.training)
        return call(self.architecture, {**_resolve(self._buffers_source, self.training), **_resolve(self._weights)},
                    x)


def perturbable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that weight perturbations move (AWP, flatness): those with at least two
    dimensions (convolution and linear weights).

    Biases and normalisation-layer scales and shifts are one-dimensional and excluded: the references leave
    them alone, and a radius relative to ‖w_l‖ says little about how far a per-channel shift may move.
    """
    return [name for name, p in model.named_parameters() if p.ndim > 1]


def shifted(weights: Weights, delta: Weights, scale: float = 1.0) -> dict[str, Tensor]:
    """``w + scale · delta`` by name, differentiable with respect to ``w``; names missing from ``delta`` pass
    through unchanged. An unknown name or a shape mismatch is an error (a direction made for another model)."""
    unknown = set(delta) - set(weights)
    if unknown:
        raise KeyError(f"the perturbation names parameters the model does not have: {sorted(unknown)[:5]}; was it "
                       "computed for another architecture?")
    out: dict[str, Tensor] = {}
    for name, w in weights.items():
        if name not in delta:
            out[name] = w
            continue
        d = delta[name]
        if d.shape != w.shape:
            raise ValueError(f"perturbation for {name!r} has shape {tuple(d.shape)}, the parameter {tuple(w.shape)}")
        out[name] = w + scale * d.to(w.device, w.dtype)
    return out


def tied_names(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """Aliases of tied parameters and buffers, ``{alias: canonical name}``, so a copy can tie them again."""

    def aliases(everything: list[tuple[str, Tensor]], unique: dict[str, Tensor]) -> dict[str, str]:
        canonical = {id(t): n for n, t in unique.items()}
        return {n: canonical[id(t)] for n, t in everything if n not in unique}

    return (aliases(list(model.named_parameters(remove_duplicate=False)), dict(model.named_parameters())),
            aliases(list(model.named_buffers(remove_duplicate=False)), dict(model.named_buffers())))


def _set_tensor(model: nn.Module, name: str, value: Tensor, *, parameter: bool) -> None:
    prefix, _, leaf = name.rpartition(".")
    module = model.get_submodule(prefix) if prefix else model
    if parameter:
        module._parameters[leaf] = value  # type: ignore[assignment]
    else:
        module._buffers[leaf] = value


def materialize(architecture: nn.Module, weights: Weights, buffers: Weights) -> nn.Module:
    """A standalone module of ``architecture`` holding detached copies of ``weights`` and ``buffers``, in eval
    mode; ``requires_grad`` follows the architecture's parameters, and tied tensors are tied again."""
    model = copy.deepcopy(architecture)
    flags = {name: p.requires_grad for name, p in architecture.named_parameters()}
    param_alias, buffer_alias = tied_names(architecture)
    params = {n: nn.Parameter(w.detach().clone(), requires_grad=flags.get(n, True)) for n, w in weights.items()}
    bufs = {n: v.detach().clone() for n, v in buffers.items()}
    for name, value in params.items():
        _set_tensor(model, name, value, parameter=True)
    for alias, name in param_alias.items():
        _set_tensor(model, alias, params[name], parameter=True)
    for name, value in bufs.items():
        _set_tensor(model, name, value, parameter=False)
    for alias, name in buffer_alias.items():
        _set_tensor(model, alias, bufs[name], parameter=False)
    missing = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if missing:
        raise ValueError(f"no value given for {missing[:5]}: pass every parameter and buffer of the architecture")
    return model.eval()


def detached_weights(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters by name, detached (no copy)."""
    return {name: p.detach() for name, p in model.named_parameters()}


def buffers_of(model: nn.Module) -> dict[str, Tensor]:
    """The model's buffers by name, detached (no copy)."""
    return {name: b.detach() for name, b in model.named_buffers()}


def view(model: nn.Module, weights: Weights) -> FunctionalModel:
    """``model``'s architecture with other ``weights`` (its own buffers, read-only in eval mode) as a module.

    ``model`` itself is never touched. For measuring perturbed copies of a model: flatness, loss landscapes.
    """
    device = next(iter(weights.values())).device if weights else None
    buffers = {name: b.clone() for name, b in buffers_of(model).items()}  # a train-mode call writes only these
    return FunctionalModel(structure(model), dict(weights), buffers, device=device)


__all__ = ["FunctionalModel", "buffers_of", "call", "detached_weights", "materialize", "perturbable_names", "shifted", "structure",
           "tied_names", "view"]
