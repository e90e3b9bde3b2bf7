"""Curves in weight space between two trained networks (Garipov et al. 2018; Draxler et al. 2018).

A curve joins the weights of two networks of the same architecture, :math:`w(0) = w_a` and :math:`w(1) = w_b`,
through trainable control points ("bends") :math:`\\theta_1, \\dots, \\theta_n`:

* **Bezier**: :math:`w(t) = \\sum_{k=0}^{n+1} \\binom{n+1}{k} t^k (1-t)^{n+1-k} p_k` with control points
  :math:`p = (w_a, \\theta_1, \\dots, \\theta_n, w_b)`;
* **polygonal chain**: straight segments through :math:`p_k` placed at :math:`t = k/(n+1)` (hat-function
  coefficients :math:`\\max(0, 1 - |t(n+1) - k|)`);
* the **straight line** is the chain without bends.

How it is built, and why:

* One **template** copy of the architecture (kept on the ``meta`` device, so it costs no memory) is called with
  the weights at t through :func:`torch.func.functional_call`. No per-architecture "curve layers" are needed,
  any pair of ``nn.Module``s with identical parameter names and shapes works (torchvision models included),
  and the user's models are never touched.
* All parameters of a control point live in one flat vector: the endpoints as buffers (fixed), the bends as
  one trainable ``(n, D)`` parameter initialised on the straight line. Forming :math:`w(t)` is then three
  vector operations, so a curve training step costs about what a plain training step costs.
* **Batch norm.** Running statistics are not weights: the endpoints' statistics say nothing about the
  activations of the network at an interior t. At t = 0 and t = 1 the curve uses each endpoint's own buffers,
  so it reproduces the endpoints exactly; at an interior t the statistics are recomputed from data the
  caller gives (the defender's data, never the test set) by a cumulative average over batches, as
  :func:`torch.optim.swa_utils.update_bn` does, and cached per t. Asking for an interior point of a batch-norm
  network in eval mode without such statistics is an error rather than a silently wrong answer.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from mcar_lib.data import LabeledImages, batches, loader
from mcar_lib.train import History, LossFn, SGDConfig, cross_entropy_loss, evaluation_mode, lr_factor, progress

CurveKind = Literal["bezier", "polychain"]
#: Anything that yields ``(x, y)`` batches (or bare ``x`` tensors), or a :class:`LabeledImages` data set.
BatchSource = Iterable[Any] | LabeledImages
#: Batch size used when a :class:`LabeledImages` is given where batches are expected.
DEFAULT_BATCH_SIZE = 256


# --------------------------------------------------------------------------------------- coefficients

def check_t(t: float | Tensor) -> float:
    """``t`` as a Python float, or a clear error if it is not a number in [0, 1]."""
    try:
        value = float(t)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"t must be a number in [0, 1], got {t!r}") from err
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"t must be in [0, 1] (0 is endpoint a, 1 is endpoint b), got {value}")
    return value


def bezier_coefficients(t: float | Tensor, n_bends: int, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> Tensor:
    """Bernstein weights :math:`\\binom{m}{k} t^k (1-t)^{m-k}`, k = 0..m, m = ``n_bends`` + 1.

    ``t`` may be a float or a tensor of any shape; the result has shape ``t.shape + (n_bends + 2,)`` and sums to
    one. At t = 0 and t = 1 the weights are exactly one-hot (``0**0 == 1``).
    """
    _check_n_bends(n_bends)
    m = n_bends + 1
    t = torch.as_tensor(t, dtype=torch.float64, device=device).unsqueeze(-1)
    k = torch.arange(m + 1, dtype=torch.float64, device=t.device)
    binom = torch.tensor([math.comb(m, i) for i in range(m + 1)], dtype=torch.float64, device=t.device)
    return (binom * t.pow(k) * (1.0 - t).pow(m - k)).to(dtype)


def polychain_coefficients(t: float | Tensor, n_bends: int, *, dtype: torch.dtype = torch.float32,
                           device: torch.device | str | None = None) -> Tensor:
    """Hat-function weights :math:`\\max(0, 1 - |t(n+1) - k|)`, k = 0..n+1: the chain's control points sit at
    t = k/(n+1) and consecutive ones are joined by straight segments."""
    _check_n_bends(n_bends)
    t = torch.as_tensor(t, dtype=torch.float64, device=device).unsqueeze(-1)
    k = torch.arange(n_bends + 2, dtype=torch.float64, device=t.device)
    return torch.clamp(1.0 - (t * (n_bends + 1) - k).abs(), min=0.0).to(dtype)


COEFFICIENTS: dict[str, Callable[..., Tensor]] = {"bezier": bezier_coefficients, "polychain": polychain_coefficients}


def _check_n_bends(n_bends: int) -> None:
    if not isinstance(n_bends, int) or isinstance(n_bends, bool) or n_bends < 0:
        raise ValueError(f"n_bends must be a non-negative int (0 is the straight line), got {n_bends!r}")


# ------------------------------------------------------------------------------------ endpoint checks

def _check_same_architecture(a: nn.Module, b: nn.Module) -> None:
    """Raise a ValueError naming the first parameter or buffer in which ``a`` and ``b`` differ."""
    for label, model in (("a", a), ("b", b)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"endpoint {label} must be an nn.Module, got {type(model).__name__}")
        if next(model.parameters(), None) is None:
            raise ValueError(f"endpoint {label} ({type(model).__name__}) has no parameters: a curve in weight "
                             "space needs two models with weights")
    for kind, get in (("parameter", nn.Module.named_parameters), ("buffer", nn.Module.named_buffers)):
        in_a, in_b = dict(get(a)), dict(get(b))
        for name, tensor in in_a.items():
            if name not in in_b:
                raise ValueError(f"endpoint b has no {kind} {name!r} (a has it): are both endpoints the same "
                                 "architecture?")
            if tensor.shape != in_b[name].shape:
                raise ValueError(f"{kind} {name!r} has shape {tuple(tensor.shape)} in endpoint a but "
                                 f"{tuple(in_b[name].shape)} in endpoint b: are both endpoints built with the same "
                                 "arguments (width, number of classes, ...)?")
            if tensor.dtype != in_b[name].dtype:
                raise ValueError(f"{kind} {name!r} has dtype {tensor.dtype} in endpoint a but {in_b[name].dtype} "
                                 "in endpoint b: convert both endpoints to the same dtype first")
        for name in in_b:
            if name not in in_a:
                raise ValueError(f"endpoint a has no {kind} {name!r} (b has it): are both endpoints the same "
                                 "architecture?")
    dtypes = {p.dtype for p in a.parameters()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise ValueError(f"all parameters must share one floating-point dtype, got {sorted(map(str, dtypes))}")


def _statistics_names(model: nn.Module) -> set[str]:
    """Names of the running-statistics buffers of every batch-norm layer that tracks them."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.track_running_stats:
            for leaf in ("running_mean", "running_var", "num_batches_tracked"):
                if getattr(module, leaf, None) is not None:
                    names.add(f"{prefix}.{leaf}" if prefix else leaf)
    return names


class _TensorSet(nn.Module):
    """Named tensors stored as buffers (dots in names are not allowed there, so they become ``__``)."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        super().__init__()
        self.names = list(tensors)
        keys = [name.replace(".", "__") for name in self.names]
        if len(set(keys)) != len(keys):
            raise ValueError("buffer names collide after replacing '.' by '__'; rename the model's buffers")
        self._keys = dict(zip(self.names, keys))
        for name, tensor in tensors.items():
            self.register_buffer(self._keys[name], tensor.detach().clone())

    def as_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, self._keys[name]) for name in self.names}


class _StatisticsCache:
    """Recomputed BN statistics per t; a deep copy starts empty (it is a cache, not state)."""

    def __init__(self) -> None:
        self.entries: dict[float, tuple[Any, tuple[int, ...], dict[str, Tensor]]] = {}

    def __deepcopy__(self, memo: dict) -> _StatisticsCache:
        return _StatisticsCache()


def _set_tensor(model: nn.Module, name: str, value: Tensor, *, parameter: bool) -> None:
    prefix, _, leaf = name.rpartition(".")
    module = model.get_submodule(prefix) if prefix else model
    if parameter:
        module._parameters[leaf] = value  # type: ignore[assignment]
    else:
        module._buffers[leaf] = value


def _inputs(source: BatchSource) -> Iterator[Tensor]:
    """The input tensors of a batch source (``(x, y)`` pairs, bare tensors, or a LabeledImages)."""
    if isinstance(source, LabeledImages):
        source = batches(source, DEFAULT_BATCH_SIZE)
    for item in source:
        yield item[0] if isinstance(item, (tuple, list)) else item


# ---------------------------------------------------------------------------------------------- Curve

class Curve(nn.Module):
    """A Bezier curve or polygonal chain between two networks ``a`` (t = 0) and ``b`` (t = 1).

    Build one with :meth:`between` or :meth:`line`. ``curve(x, t)`` runs the network at t; :meth:`weights_at`
    gives the (differentiable) weights; :meth:`point` a module view at fixed t for loss functions and attacks;
    :meth:`at` a standalone, detached ``nn.Module`` with batch-norm statistics recomputed from ``bn_data``.
    Neither endpoint is changed or kept: the curve copies their weights and buffers.
    """

    def __init__(self, a: nn.Module, b: nn.Module, *, kind: CurveKind = "bezier", n_bends: int = 1) -> None:
        super().__init__()
        if kind not in COEFFICIENTS:
            raise ValueError(f"kind must be 'bezier' or 'polychain', got {kind!r}")
        _check_n_bends(n_bends)
        _check_same_architecture(a, b)
        self.kind: CurveKind = kind
        self.n_bends = n_bends
        params_a = dict(a.named_parameters())
        params_b = dict(b.named_parameters())
        device = next(iter(params_a.values())).device
        self._names = list(params_a)
        self._shapes = [params_a[n].shape for n in self._names]
        self._numels = [params_a[n].numel() for n in self._names]
        self._requires_grad = {n: params_a[n].requires_grad for n in self._names}
        with torch.no_grad():
            start = torch.cat([params_a[n].detach().reshape(-1) for n in self._names]).to(device)
            end = torch.cat([params_b[n].detach().reshape(-1).to(device) for n in self._names])
            fractions = torch.arange(1, n_bends + 1, dtype=start.dtype, device=device) / (n_bends + 1)
            bends = start + fractions[:, None] * (end - start)  # on the straight line, evenly spaced
        self.register_buffer("start", start)
        self.register_buffer("end", end)
        self.bends = nn.Parameter(bends)
        buffers_b = dict(b.named_buffers())
        self.buffers_a = _TensorSet({n: t for n, t in a.named_buffers()})
        self.buffers_b = _TensorSet({n: buffers_b[n].to(device) for n in self.buffers_a.names})
        self._statistics = _statistics_names(a)
        # aliases of tied parameters / buffers, so that a standalone copy ties them again
        self._param_alias = self._aliases(a.named_parameters(remove_duplicate=False), dict(a.named_parameters()))
        self._buffer_alias = self._aliases(a.named_buffers(remove_duplicate=False), dict(a.named_buffers()))
        template = copy.deepcopy(a)
        self._template_holder = (template.to("meta"),)  # a tuple: not a submodule, never moved or saved
        self._bn_cache = _StatisticsCache()
        self._scratch: dict[str, Tensor] | None = None

    @staticmethod
    def _aliases(all_named: Iterable[tuple[str, Tensor]], unique: dict[str, Tensor]) -> dict[str, str]:
        canonical = {id(t): n for n, t in unique.items()}
        return {n: canonical[id(t)] for n, t in all_named if n not in unique}

    # ---------------------------------------------------------------------------------- construction
    @classmethod
    def between(cls, a: nn.Module, b: nn.Module, *, kind: CurveKind = "bezier", n_bends: int = 1) -> Curve:
        """A curve from ``a`` to ``b`` with ``n_bends`` trainable bends initialised on the straight line."""
        return cls(a, b, kind=kind, n_bends=n_bends)

    @classmethod
    def line(cls, a: nn.Module, b: nn.Module) -> Curve:
        """The straight line :math:`w(t) = (1-t) w_a + t w_b` (a chain with no bends; nothing to train)."""
        return cls(a, b, kind="polychain", n_bends=0)

    @property
    def template(self) -> nn.Module:
        """The architecture (on the ``meta`` device: structure only, no weights)."""
        return self._template_holder[0]

    @property
    def parameter_names(self) -> list[str]:
        return list(self._names)

    @property
    def has_batch_norm(self) -> bool:
        """Whether the architecture has batch-norm layers with running statistics."""
        return bool(self._statistics)

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, n_bends={self.n_bends}, architecture={type(self.template).__name__}, "
                f"parameters_per_point={self.start.numel()}")

    def _apply(self, fn: Callable, recurse: bool = True) -> Curve:  # .to(), .cuda(), .double() ...
        self.clear_bn_cache()
        self._scratch = None
        return super()._apply(fn, recurse)

    # ---------------------------------------------------------------------------------- weights at t
    def coefficients(self, t: float | Tensor) -> Tensor:
        """The weight of each control point (a, bends..., b) at ``t``: shape ``(n_bends + 2,)``, sums to 1."""
        return torch.tensor(self._coefficient_list(check_t(t)), dtype=self.start.dtype, device=self.start.device)

    def _coefficient_list(self, t: float) -> list[float]:
        """The coefficients as Python floats (no tensor work: this runs on every forward pass)."""
        n = self.n_bends
        if self.kind == "bezier":
            m = n + 1
            return [math.comb(m, k) * t**k * (1.0 - t) ** (m - k) for k in range(m + 1)]
        return [max(0.0, 1.0 - abs(t * (n + 1) - k)) for k in range(n + 2)]

    def control_points(self) -> Tensor:
        """The control points as rows of a ``(n_bends + 2, D)`` matrix (a, bends..., b), detached."""
        return torch.cat([self.start[None], self.bends.detach(), self.end[None]])

    def flat_weights_at(self, t: float | Tensor) -> Tensor:
        """:math:`w(t)` as one flat vector (parameters in ``named_parameters`` order), differentiable w.r.t.
        the bends. At t = 0 and t = 1 it equals the endpoint exactly."""
        c = self._coefficient_list(check_t(t))
        w = torch.add(self.start * c[0], self.end, alpha=c[-1])
        if self.n_bends == 1:
            w = w + c[1] * self.bends[0]
        elif self.n_bends > 1:
            w = torch.addmv(w, self.bends.t(), torch.tensor(c[1:-1], dtype=w.dtype, device=w.device))
        return w

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a flat weight vector into named tensors of the architecture's shapes (views, no copy)."""
        if flat.shape != self.start.shape:
            raise ValueError(f"a flat weight vector must have {self.start.numel()} entries, got {tuple(flat.shape)}")
        return {n: piece.view(shape) for n, piece, shape in
                zip(self._names, torch.split(flat, self._numels), self._shapes)}

    def weights_at(self, t: float | Tensor) -> dict[str, Tensor]:
        """:math:`w(t)` by parameter name, differentiable w.r.t. the bends (the endpoints get no gradient)."""
        return self.unflatten(self.flat_weights_at(t))

    def squared_norm_at(self, t: float | Tensor) -> Tensor:
        """:math:`\\|w(t)\\|^2`, the quantity the paper's L2 regulariser penalises."""
        return self.flat_weights_at(t).square().sum()

    # ---------------------------------------------------------------------------------- buffers at t
    def _other_buffers_at(self, t: float) -> dict[str, Tensor]:
        """Buffers that are not BN statistics: floats interpolated linearly, others taken from ``a``."""
        out = {}
        a, b = self.buffers_a.as_dict(), self.buffers_b.as_dict()
        for name, value in a.items():
            if name in self._statistics:
                continue
            out[name] = torch.lerp(value, b[name], t) if value.is_floating_point() else value
        return out

    def _scratch_buffers(self, t: float) -> dict[str, Tensor]:
        """Buffers for a train-mode forward: BN uses batch statistics there and writes its running averages
        into these throw-away copies, never into the endpoints' buffers."""
        if self._scratch is None:
            self._scratch = {n: v.clone() for n, v in self.buffers_a.as_dict().items() if n in self._statistics}
        return {**self._other_buffers_at(t), **self._scratch}

    def _eval_buffers(self, t: float) -> dict[str, Tensor]:
        if t == 0.0:
            return self.buffers_a.as_dict()
        if t == 1.0:
            return self.buffers_b.as_dict()
        buffers = self._other_buffers_at(t)
        if self._statistics:
            entry = self._bn_cache.entries.get(t)
            if entry is None or entry[1] != self._version_key():
                raise RuntimeError(
                    f"the curve's model has batch norm, and no statistics were recomputed for t = {t} (since the "
                    "bends last changed): in eval mode an interior point needs them. Call curve.recompute_bn(t, "
                    "bn_data) or curve.at(t, bn_data) with the defender's data first, or use train mode (batch "
                    "statistics).")
            buffers.update(entry[2])
        return buffers

    # ---------------------------------------------------------------------------------------- forward
    def _call(self, x: Tensor, t: float | Tensor, training: bool) -> Tensor:
        t = check_t(t)
        template = self.template
        template.train(training)
        buffers = self._scratch_buffers(t) if training else self._eval_buffers(t)
        return functional_call(template, (self.weights_at(t), buffers), (x,), strict=True)

    def forward(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The network at ``t`` applied to ``x``, in the curve's mode (train mode: batch BN statistics)."""
        return self._call(x, t, self.training)

    def point(self, t: float | Tensor) -> CurvePoint:
        """A module view of the network at fixed ``t``, differentiable w.r.t. the bends; its train/eval mode
        starts as the curve's. For loss functions and attacks during curve training."""
        return CurvePoint(self, check_t(t))

    # ---------------------------------------------------------------------------------- BN statistics
    def _version_key(self) -> tuple[int, ...]:
        return (self.start._version, self.end._version, self.bends._version)

    def clear_bn_cache(self) -> None:
        """Forget every recomputed statistic (done automatically when the bends change or the curve moves)."""
        if hasattr(self, "_bn_cache"):
            self._bn_cache.entries.clear()

    @torch.no_grad()
    def _statistics_for(self, weights: dict[str, Tensor], other_buffers: dict[str, Tensor],
                        bn_data: BatchSource) -> dict[str, Tensor]:
        """Running statistics of every BN layer for the given weights: reset, then a cumulative average over
        ``bn_data`` with only the BN layers in train mode (dropout stays off)."""
        if not self._statistics:
            return {}
        template = self.template
        device = self.start.device
        stats: dict[str, Tensor] = {}
        for name, value in self.buffers_a.as_dict().items():
            if name in self._statistics:
                leaf = name.rpartition(".")[2]
                stats[name] = (torch.zeros_like(value) if leaf != "running_var" else torch.ones_like(value))
        bn_layers = [m for m in template.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        momenta = [m.momentum for m in bn_layers]
        template.eval()
        for module in bn_layers:
            module.train()
            module.momentum = None  # cumulative average over batches
        seen = 0
        try:
            for x in _inputs(bn_data):
                functional_call(template, (weights, {**other_buffers, **stats}), (x.to(device),), strict=True)
                seen += 1
        finally:
            for module, momentum in zip(bn_layers, momenta):
                module.momentum = momentum
            template.eval()
        if seen == 0:
            raise ValueError("bn_data yielded no batches: pass the defender's data (a LabeledImages or a loader)")
        return stats

    def recompute_bn(self, t: float | Tensor, bn_data: BatchSource) -> dict[str, Tensor]:
        """Batch-norm statistics of the network at ``t`` from ``bn_data`` (the defender's data), cached per t.

        The cache entry is reused while the bends are unchanged and the same ``bn_data`` object is passed.
        Returns ``{}`` for a model without batch norm.
        """
        t = check_t(t)
        if not self._statistics:
            return {}
        entry = self._bn_cache.entries.get(t)
        if entry is not None and entry[0] is bn_data and entry[1] == self._version_key():
            return entry[2]
        with torch.no_grad():
            weights = self.weights_at(t)
        stats = self._statistics_for(weights, self._other_buffers_at(t), bn_data)
        self._bn_cache.entries[t] = (bn_data, self._version_key(), stats)
        return stats

    # ------------------------------------------------------------------------------ standalone export
    def _materialize(self, weights: dict[str, Tensor], buffers: dict[str, Tensor]) -> nn.Module:
        model = copy.deepcopy(self.template)
        params = {n: nn.Parameter(w.detach().clone(), requires_grad=self._requires_grad[n]) for n, w in weights.items()}
        bufs = {n: v.detach().clone() for n, v in buffers.items()}
        for name, value in params.items():
            _set_tensor(model, name, value, parameter=True)
        for alias, name in self._param_alias.items():
            _set_tensor(model, alias, params[name], parameter=True)
        for name, value in bufs.items():
            _set_tensor(model, name, value, parameter=False)
        for alias, name in self._buffer_alias.items():
            _set_tensor(model, alias, bufs[name], parameter=False)
        return model.eval()

    def at(self, t: float | Tensor, bn_data: BatchSource | None = None) -> nn.Module:
        """A standalone, detached copy of the network at ``t``, in eval mode.

        At t = 0 and t = 1 it is exactly the endpoint (weights and its own buffers). At an interior t, a model
        with batch norm needs ``bn_data`` (the defender's data): its statistics are recomputed from it and
        cached per t.
        """
        t = check_t(t)
        with torch.no_grad():
            weights = self.weights_at(t)
        if t in (0.0, 1.0):
            return self._materialize(weights, self._eval_buffers(t))
        if self._statistics and bn_data is None:
            raise ValueError(f"the curve's model has batch norm: the network at t = {t} needs bn_data (the "
                             "defender's data) to recompute its BN statistics, e.g. curve.at(t, splits.bonafide)")
        stats = self.recompute_bn(t, bn_data) if bn_data is not None else {}
        return self._materialize(weights, {**self._other_buffers_at(t), **stats})

    def model_at_weights(self, flat: Tensor, bn_data: BatchSource | None = None) -> nn.Module:
        """A standalone model with the flat weight vector ``flat`` (any point of weight space, e.g. on the
        curve's plane); BN statistics recomputed from ``bn_data``, other buffers taken from endpoint a."""
        weights = self.unflatten(flat.detach().to(self.start.device, self.start.dtype))
        if self._statistics and bn_data is None:
            raise ValueError("the curve's model has batch norm: a model at arbitrary weights needs bn_data (the "
                             "defender's data) to recompute its BN statistics")
        other = self._other_buffers_at(0.0)
        stats = self._statistics_for(weights, other, bn_data) if bn_data is not None else {}
        return self._materialize(weights, {**other, **stats})


class CurvePoint(nn.Module):
    """The curve's network at one fixed t, as a module; gradients flow into the curve's bends.

    Its own train/eval flag decides the mode of the forward pass (train mode: batch BN statistics, written to
    throw-away buffers; eval mode at an interior t: statistics previously recomputed for that t).
    """

    def __init__(self, curve: Curve, t: float) -> None:
        super().__init__()
        self.curve = curve
        self.t = t
        self.train(curve.training)

    def forward(self, x: Tensor) -> Tensor:
        return self.curve._call(x, self.t, self.training)

    def extra_repr(self) -> str:
        return f"t={self.t}"


# -------------------------------------------------------------------------------------------- training

def fit_curve(curve: Curve, data: BatchSource, *, epochs: int | None = None, steps: int | None = None,
              sgd: SGDConfig = SGDConfig(lr=0.05, weight_decay=5e-4, schedule="cosine"),
              loss_fn: LossFn = cross_entropy_loss, ts_per_step: int = 1, seed: int = 0,
              batch_size: int = 128, epoch_end: Callable[[Curve, int], dict[str, float]] | None = None,
              amp_bf16: bool = False, show_progress: bool = True) -> tuple[Curve, History]:
    """Train a copy of ``curve``'s bends to minimise :math:`E_{t\\sim U(0,1)}[\\ell(w(t))] + \\tfrac{wd}{2}\\|w(t)\\|^2`.

    Each step draws ``ts_per_step`` values of t (one, as in the paper, by default; several average the loss
    over t on the same batch) and calls ``loss_fn(curve.point(t), x, y)`` in train mode: pass a robust loss for
    adversarial curve training. Weight decay is the explicit L2 penalty on :math:`w(t)` (``sgd.weight_decay``),
    the optimiser's own decay is off; the learning rate follows ``sgd.schedule`` per step. Give ``epochs``
    (passes over ``data``) or ``steps``. ``data`` is a loader or a :class:`LabeledImages` (then shuffled with
    ``seed`` in batches of ``batch_size``); t is drawn from a generator seeded with ``seed``.
    Returns ``(trained_copy, history)``; ``curve`` itself is not changed.
    """
    if curve.n_bends == 0:
        raise ValueError("this curve has no bends (a straight line): there is nothing to train")
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    if (epochs is not None and epochs < 1) or (steps is not None and steps < 1):
        raise ValueError(f"epochs/steps must be at least 1, got epochs={epochs}, steps={steps}")
    if ts_per_step < 1:
        raise ValueError(f"ts_per_step must be at least 1, got {ts_per_step}")
    if isinstance(data, LabeledImages):
        data = loader(data, batch_size, shuffle=True, seed=seed)
    try:
        per_epoch: int | None = len(data)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    if per_epoch == 0:
        raise ValueError("the training data yielded no batches")
    total = steps if steps is not None else (epochs * per_epoch if per_epoch else None)
    n_epochs = epochs if epochs is not None else (math.ceil(steps / per_epoch) if per_epoch else None)

    net = copy.deepcopy(curve)
    net.train()
    device = net.start.device
    optimizer = torch.optim.SGD([net.bends], lr=sgd.lr, momentum=sgd.momentum, weight_decay=0.0,
                                nesterov=sgd.nesterov)
    generator = torch.Generator().manual_seed(seed)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (amp_bf16 and device.type == "cuda") \
        else contextlib.nullcontext
    history = History()
    step, epoch = 0, 0
    ticker = iter(progress(range(total), total=total, desc="curve steps", enabled=show_progress)) if total else None
    while (steps is None or step < steps) and (n_epochs is None or epoch < n_epochs):
        loss_sum, count = 0.0, 0
        for x, y in data:
            if steps is not None and step >= steps:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            fraction = step / total if total else epoch / max(n_epochs or 1, 1)
            for group in optimizer.param_groups:
                group["lr"] = sgd.lr * lr_factor(sgd.schedule, fraction)
            optimizer.zero_grad(set_to_none=True)
            ts = torch.rand(ts_per_step, generator=generator, dtype=torch.float64).tolist()
            batch_loss = 0.0
            for t in ts:
                with autocast():
                    loss = loss_fn(net.point(t), x, y)
                total_loss = loss + 0.5 * sgd.weight_decay * net.squared_norm_at(t)
                (total_loss / ts_per_step).backward()
                batch_loss += loss.item() / ts_per_step
            optimizer.step()
            loss_sum += batch_loss * len(y)
            count += len(y)
            step += 1
            if ticker is not None:
                next(ticker, None)
        epoch += 1
        if count == 0:
            raise ValueError("the training data yielded no batches")
        row: dict[str, float] = {"epoch": epoch, "step": step, "train_loss": loss_sum / count}
        if epoch_end is not None:
            with evaluation_mode(net):
                row.update(epoch_end(net, epoch))
        history.append(**row)
    net.clear_bn_cache()
    return net.eval(), history


__all__ = ["Curve", "CurvePoint", "bezier_coefficients", "polychain_coefficients", "check_t", "fit_curve"]
