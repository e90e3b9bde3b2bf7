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
  one trainable ``(n, D)`` parameter initialised on the straight line. :math:`w(t)` is formed **per parameter
  tensor** from views of these vectors: the fixed part :math:`c_0 w_a + c_{n+1} w_b` without autograd, then the
  bends' share, so each parameter costs one allocation of its own size and no full-size temporary is made (a
  large network's flat vectors exceed the C allocator's mmap threshold, and full-size temporaries would be
  mapped and unmapped again on every step). A training step forms :math:`w(t)` once and shares it between the
  forward pass and the L2 penalty (:class:`CurveObjective`), so a curve training step costs about what a plain
  training step costs.
* **Batch norm.** Running statistics are not weights: the endpoints' statistics say nothing about the
  activations of the network at an interior t. At t = 0 and t = 1 the curve uses each endpoint's own buffers,
  so it reproduces the endpoints exactly; at an interior t the statistics are recomputed from data the
  caller gives (the defender's data, never the test set) by a cumulative average over batches, as
  :func:`torch.optim.swa_utils.update_bn` does, and cached per t. Asking for an interior point of a batch-norm
  network in eval mode without such statistics is an error rather than a silently wrong answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mcar_lib import batchnorm, functional, train
from mcar_lib.cache import architecture_id, fingerprint
from mcar_lib.checks import check_finite_weights, check_same_architecture
from mcar_lib.data import BatchSource, LabeledImages, loader
from mcar_lib.train import History, LossFn, SGDConfig, cross_entropy_loss

CurveKind = Literal["bezier", "polychain"]
CURVE_KINDS: tuple[str, ...] = ("bezier", "polychain")


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


def _check_n_bends(n_bends: int) -> None:
    if not isinstance(n_bends, int) or isinstance(n_bends, bool) or n_bends < 0:
        raise ValueError(f"n_bends must be a non-negative int (0 is the straight line), got {n_bends!r}")


def coefficient_list(kind: str, t: float, n_bends: int) -> list[float]:
    """The weight of each control point (a, bends..., b) at ``t``, as Python floats: the one implementation.

    Bezier: Bernstein weights :math:`\\binom{m}{k} t^k (1-t)^{m-k}`, m = ``n_bends`` + 1; at t = 0 and t = 1 they
    are exactly one-hot (``0**0 == 1``). Polygonal chain: hat functions :math:`\\max(0, 1 - |t(n+1) - k|)`, so the
    control points sit at t = k/(n+1). Both sum to one. (Floats, not tensors: this runs on every forward pass.)
    """
    if kind not in CURVE_KINDS:
        raise ValueError(f"kind must be one of {CURVE_KINDS}, got {kind!r}")
    _check_n_bends(n_bends)
    t = check_t(t)
    if kind == "bezier":
        m = n_bends + 1
        return [math.comb(m, k) * t**k * (1.0 - t) ** (m - k) for k in range(m + 1)]
    return [max(0.0, 1.0 - abs(t * (n_bends + 1) - k)) for k in range(n_bends + 2)]


def _coefficients(kind: str, t: float | Tensor, n_bends: int, dtype: torch.dtype,
                  device: torch.device | str | None) -> Tensor:
    values = torch.as_tensor(t, dtype=torch.float64)
    rows = [coefficient_list(kind, v, n_bends) for v in values.reshape(-1).tolist()]
    out = torch.tensor(rows, dtype=torch.float64).reshape(*values.shape, n_bends + 2)
    return out.to(dtype=dtype, device=device)


def bezier_coefficients(t: float | Tensor, n_bends: int, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> Tensor:
    """Bernstein weights for a float or a tensor of t (any shape): shape ``t.shape + (n_bends + 2,)``."""
    return _coefficients("bezier", t, n_bends, dtype, device)


def polychain_coefficients(t: float | Tensor, n_bends: int, *, dtype: torch.dtype = torch.float32,
                           device: torch.device | str | None = None) -> Tensor:
    """Hat-function weights of the polygonal chain for a float or a tensor of t: ``t.shape + (n_bends + 2,)``."""
    return _coefficients("polychain", t, n_bends, dtype, device)


COEFFICIENTS: dict[str, Callable[..., Tensor]] = {"bezier": bezier_coefficients, "polychain": polychain_coefficients}


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


class _PointWeights(dict):
    """:meth:`Curve.weights_at`'s answer: ``{name: w(t)}``, plus the t it was formed for and, when asked for,
    :math:`\\|w(t)\\|^2` from the same formation (for :meth:`Curve.squared_norm_at`)."""

    t: float
    squared_norm: Tensor | None


def _fixed_part(start: Tensor, end: Tensor, c: list[float], numels: list[int]) -> list[Tensor]:
    """:math:`c_0 w_a + c_{n+1} w_b` per parameter (one new tensor each; the flat formula's operations)."""
    return [torch.mul(a, c[0]).add_(b, alpha=c[-1]) for a, b in zip(torch.split(start, numels),
                                                                   torch.split(end, numels))]


class _GradientMemory:
    """The storage of the bends' last gradient (CPU), reused for the next one once nobody else holds it.

    Why: the bends' gradient is n·D numbers, far above the C allocator's mmap threshold for a large network, so
    a fresh tensor every step is mapped, page-faulted in and unmapped again (VGG16 with 5 bends: 300 MB, about
    75 000 page faults a step). A training loop that drops the gradient after each step (``zero_grad(set_to_none=
    True)``, as :func:`mcar_lib.train.fit` does) leaves this storage with one owner, this object, and the next
    backward pass writes into it. While anything else holds it (a ``.grad`` kept or accumulated into, a gradient
    returned by ``torch.autograd.grad``), a new tensor is allocated instead, so a live gradient is never
    overwritten. CUDA's caching allocator already reuses memory, so there it is not used. Not state: a copy of
    the curve starts empty.
    """

    def __init__(self) -> None:
        self.storage: torch.UntypedStorage | None = None

    def __deepcopy__(self, memo: dict) -> _GradientMemory:
        return _GradientMemory()

    def empty(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        old = self.storage
        if old is not None and old.device == device and old.nbytes() == nbytes \
                and torch._C._storage_Use_Count(old._cdata) == 1:  # only this object holds it
            return torch.empty(0, dtype=dtype, device=device).set_(old, 0, shape)
        fresh = torch.empty(shape, dtype=dtype, device=device)
        self.storage = fresh.untyped_storage()
        return fresh


class _CurveWeights(torch.autograd.Function):
    """:math:`w(t)` per parameter from the flat control points, and optionally :math:`\\|w(t)\\|^2`, with a
    backward that writes the bends' gradient straight into one ``(n, D)`` tensor.

    Forward: the flat formula's operations on each parameter's views, ``c_0·a + c_{n+1}·b`` then ``+ c_1·θ`` (one
    bend) or ``addmv`` (several), so the values are those of the flat vector, element by element.

    Backward: row k of the bends' gradient is :math:`c_k g` for each parameter's gradient g, written in place
    into the parameter's columns by one broadcast product (autograd's ``ger`` and ``cat`` made strided
    temporaries of the full size).
    The penalty's gradient :math:`c_k \\cdot 2 w g_{pen}` is added to :math:`c_k g_{loss}` as a separate product:
    that is how the gradient rounded when :math:`w(t)` was formed once for the loss and once for the penalty,
    so training gives the same bends to the last bit as it did then.
    """

    @staticmethod
    def forward(ctx, bends: Tensor, start: Tensor, end: Tensor, c: list[float], numels: list[int],  # type: ignore[override]
                with_norm: bool, memory: _GradientMemory) -> tuple[Tensor, ...]:
        pieces = _fixed_part(start, end, c, numels)
        thetas = torch.split(bends, numels, dim=1)  # (n, numel) views
        if len(c) == 3:
            for w, theta in zip(pieces, thetas):
                w.add_(c[1] * theta.view(-1))
        else:
            middle = torch.tensor(c[1:-1], dtype=bends.dtype, device=bends.device)
            for w, theta in zip(pieces, thetas):
                w.addmv_(theta.t(), middle)
        ctx.c, ctx.numels, ctx.with_norm = c, numels, with_norm
        ctx.bends_layout = (bends.shape, bends.dtype, bends.device)
        ctx.memory = memory
        ctx.set_materialize_grads(False)  # an unused parameter's gradient is None, not a tensor of zeros
        if not with_norm:
            return tuple(pieces)
        ctx.save_for_backward(*pieces)
        norm = torch.stack([w.square().sum() for w in pieces]).sum()
        return (*pieces, norm)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_norm = grads[-1] if ctx.with_norm else None
        grads = grads[:-1] if ctx.with_norm else grads
        if grad_norm is None and all(g is None for g in grads):
            return None, None, None, None, None, None, None
        pieces = ctx.saved_tensors if grad_norm is not None else (None,) * len(grads)
        grad = ctx.memory.empty(*ctx.bends_layout)  # the one full-size tensor: the bends' gradient, every row written
        middle = torch.tensor(ctx.c[1:-1], dtype=grad.dtype, device=grad.device)[:, None]  # (n, 1)
        offset = 0
        for g, numel, w in zip(grads, ctx.numels, pieces):
            block = grad[:, offset:offset + numel]  # (n, numel): row k gets c_k times the parameter's gradient
            offset += numel
            if g is not None:
                torch.mul(middle, g.reshape(1, -1), out=block)  # the loss's share: c_k · g
            else:
                block.zero_()
            if w is not None:
                g_pen = grad_norm * (2.0 * w)  # pow's backward for w ** 2
                for k, c_k in enumerate(ctx.c[1:-1]):  # row by row: temporaries of one parameter's size
                    block[k].add_(g_pen * c_k)  # the penalty's share, its own product
        return grad, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------- Curve

class Curve(nn.Module):
    """A Bezier curve or polygonal chain between two networks ``a`` (t = 0) and ``b`` (t = 1).

    Build one with :meth:`between` or :meth:`line`. ``curve(x, t)`` runs the network at t; :meth:`weights_at`
    gives the (differentiable) weights; :meth:`point` a module view at fixed t for loss functions and attacks;
    :meth:`at` a standalone, detached ``nn.Module`` with batch-norm statistics recomputed from ``bn_data``.
    Neither endpoint is changed or kept: the curve copies their weights and buffers. Endpoints with a NaN or
    inf anywhere are refused (``0 · NaN`` is NaN, so even t = 0 would be wrong).
    """

    def __init__(self, a: nn.Module, b: nn.Module, *, kind: CurveKind = "bezier", n_bends: int = 1) -> None:
        super().__init__()
        if kind not in CURVE_KINDS:
            raise ValueError(f"kind must be one of {CURVE_KINDS}, got {kind!r}")
        _check_n_bends(n_bends)
        check_same_architecture(a, b)
        check_finite_weights(a, "endpoint a")
        check_finite_weights(b, "endpoint b")
        dtypes = {p.dtype for p in a.parameters()}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise ValueError(f"all parameters must share one floating-point dtype, got {sorted(map(str, dtypes))}")
        self.kind: CurveKind = kind
        self.n_bends = n_bends
        params_a = dict(a.named_parameters())
        params_b = dict(b.named_parameters())
        device = next(iter(params_a.values())).device
        self._names = list(params_a)
        self._shapes = [params_a[n].shape for n in self._names]
        self._numels = [params_a[n].numel() for n in self._names]
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
        self._statistics = batchnorm.statistics_names(a)
        self._template_holder = (functional.structure(a),)  # a tuple: not a submodule, never moved or saved
        self._bn_cache = _StatisticsCache()
        self._scratch: dict[str, Tensor] | None = None
        self._gradient_memory = _GradientMemory()

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

    def __cache_key__(self) -> dict[str, Any]:
        """What identifies a curve in a cache key: its architecture, kind and every control point."""
        return {"architecture": architecture_id(self.template), "kind": self.kind, "n_bends": self.n_bends,
                "weights": fingerprint(self)}

    def _apply(self, fn: Callable, recurse: bool = True) -> Curve:  # .to(), .cuda(), .double() ...
        self.clear_bn_cache()
        self._scratch = None
        self._gradient_memory = _GradientMemory()
        return super()._apply(fn, recurse)

    # ---------------------------------------------------------------------------------- weights at t
    def coefficients(self, t: float | Tensor) -> Tensor:
        """The weight of each control point (a, bends..., b) at ``t``: shape ``(n_bends + 2,)``, sums to 1."""
        return torch.tensor(coefficient_list(self.kind, t, self.n_bends), dtype=self.start.dtype,
                            device=self.start.device)

    def control_points(self) -> Tensor:
        """The control points as rows of a ``(n_bends + 2, D)`` matrix (a, bends..., b), detached."""
        return torch.cat([self.start[None], self.bends.detach(), self.end[None]])

    def flat_weights_at(self, t: float | Tensor) -> Tensor:
        """:math:`w(t)` as one flat vector (parameters in ``named_parameters`` order), differentiable w.r.t.
        the bends: the concatenation of :meth:`weights_at`, so the two agree exactly. At t = 0 and t = 1 it
        equals the endpoint exactly. (For the curve's plane and path lengths; training never forms it.)"""
        return torch.cat([w.reshape(-1) for w in self.weights_at(t).values()])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a flat weight vector into named tensors of the architecture's shapes (views, no copy)."""
        if flat.shape != self.start.shape:
            raise ValueError(f"a flat weight vector must have {self.start.numel()} entries, got {tuple(flat.shape)}")
        return {n: piece.view(shape) for n, piece, shape in
                zip(self._names, torch.split(flat, self._numels), self._shapes)}

    def weights_at(self, t: float | Tensor, *, squared_norm: bool = False) -> dict[str, Tensor]:
        """:math:`w(t)` by parameter name, differentiable w.r.t. the bends (the endpoints get no gradient).

        Formed per parameter from views of the flat control points, with the same operations, element by
        element, as the flat formula :math:`c_0 w_a + c_{n+1} w_b + \\sum_k c_k \\theta_k`, so the values do not
        depend on how the vector is cut. Each parameter's tensor is one allocation of its own size; the backward
        pass writes the ``(n, D)`` gradient of the bends directly. Outside autocast: these are the master
        weights, whatever precision the forward pass then runs in. ``squared_norm=True`` also computes
        :math:`\\|w(t)\\|^2` from the same tensors, for :meth:`squared_norm_at` (the L2 penalty of training):
        pass the result to :meth:`point` and :meth:`squared_norm_at` to use one :math:`w(t)` for both.
        """
        t = check_t(t)
        c = coefficient_list(self.kind, t, self.n_bends)
        norm: Tensor | None = None
        with torch.autocast(self.start.device.type, enabled=False):
            if self.n_bends == 0:
                pieces = _fixed_part(self.start, self.end, c, self._numels)
                if squared_norm:
                    norm = torch.stack([w.square().sum() for w in pieces]).sum()
            else:
                out = _CurveWeights.apply(self.bends, self.start, self.end, c, self._numels, squared_norm,
                                          self._gradient_memory)
                pieces, norm = (list(out[:-1]), out[-1]) if squared_norm else (list(out), None)
        weights = _PointWeights({n: w.view(shape) for n, w, shape in zip(self._names, pieces, self._shapes)})
        weights.t, weights.squared_norm = t, norm
        return weights

    def squared_norm_at(self, t: float | Tensor, weights: dict[str, Tensor] | None = None) -> Tensor:
        """:math:`\\|w(t)\\|^2`, the quantity the paper's L2 regulariser penalises (summed per parameter tensor).

        ``weights``: ``curve.weights_at(t, squared_norm=True)``, formed by the caller: its norm is returned, and
        nothing is formed again. Its gradient reaches the bends as :math:`c_k \\cdot 2 w(t) g`, added to the
        loss's :math:`c_k g_{loss}` as a separate product (see :class:`_CurveWeights`).
        """
        t = check_t(t)
        if weights is None:
            weights = self.weights_at(t, squared_norm=True)
        if not isinstance(weights, _PointWeights) or weights.t != t or list(weights) != self._names:
            raise ValueError(f"weights must be this curve's weights_at({t}, squared_norm=True)")
        if weights.squared_norm is None:
            raise ValueError(f"these weights were formed without their norm: form them with "
                             f"curve.weights_at({t}, squared_norm=True) to share them with the penalty")
        return weights.squared_norm

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

    def _buffers_at(self, t: float, training: bool) -> dict[str, Tensor]:
        return self._scratch_buffers(t) if training else self._eval_buffers(t)

    # ---------------------------------------------------------------------------------------- forward
    def point(self, t: float | Tensor, weights: dict[str, Tensor] | None = None) -> functional.FunctionalModel:
        """The network at fixed ``t`` as a module, differentiable w.r.t. the bends; its train/eval mode starts
        as the curve's (train mode: batch statistics, written to throw-away buffers; eval mode at an interior
        t: statistics recomputed for that t). For loss functions and attacks during curve training.

        Without ``weights``, :math:`w(t)` is formed afresh on every forward pass (it follows the bends when they
        change). With ``weights`` (``curve.weights_at(t)``, formed once by the caller) every forward pass uses
        those: a training step shares one :math:`w(t)` between the loss, an attack's forward passes and the
        L2 penalty.
        """
        t = check_t(t)
        if weights is not None and (list(weights) != self._names or getattr(weights, "t", t) != t):
            raise ValueError(f"weights must be curve.weights_at({t}) (one tensor per parameter, in the curve's "
                             f"order, at this t); got names {list(weights)[:3]}... at t = {getattr(weights, 't', '?')}")
        source = dict(weights) if weights is not None else (lambda: self.weights_at(t))
        view = functional.FunctionalModel(self.template, source, lambda training: self._buffers_at(t, training),
                                          device=self.start.device, scratch_statistics=True)
        return view.train(self.training)

    def forward(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The network at ``t`` applied to ``x``, in the curve's mode (train mode: batch BN statistics)."""
        return self.point(t)(x)

    # ---------------------------------------------------------------------------------- BN statistics
    def _version_key(self) -> tuple[int, ...]:
        return (self.start._version, self.end._version, self.bends._version)

    def clear_bn_cache(self) -> None:
        """Forget every recomputed statistic (done automatically when the bends change or the curve moves)."""
        if hasattr(self, "_bn_cache"):
            self._bn_cache.entries.clear()

    def _statistics_for(self, weights: dict[str, Tensor], other_buffers: dict[str, Tensor],
                        bn_data: BatchSource) -> dict[str, Tensor]:
        reference = {**self.buffers_a.as_dict(), **other_buffers}
        return batchnorm.recompute_statistics(self.template, weights, reference, bn_data)

    def recompute_bn(self, t: float | Tensor, bn_data: BatchSource) -> dict[str, Tensor]:
        """Batch-norm statistics of the network at ``t`` from ``bn_data`` (the defender's data), cached per t.

        The statistics are those of :func:`mcar_lib.batchnorm.recompute_statistics` (``update_bn``'s average).
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
            return functional.materialize(self.template, weights, self._eval_buffers(t))
        if self._statistics and bn_data is None:
            raise ValueError(f"the curve's model has batch norm: the network at t = {t} needs bn_data (the "
                             "defender's data) to recompute its BN statistics, e.g. curve.at(t, splits.bonafide)")
        stats = self.recompute_bn(t, bn_data) if bn_data is not None else {}
        return functional.materialize(self.template, weights, {**self._other_buffers_at(t), **stats})

    def model_at_weights(self, flat: Tensor, bn_data: BatchSource | None = None) -> nn.Module:
        """A standalone model with the flat weight vector ``flat`` (any point of weight space, e.g. on the
        curve's plane); BN statistics recomputed from ``bn_data``, other buffers taken from endpoint a."""
        weights = self.unflatten(flat.detach().to(self.start.device, self.start.dtype))
        if self._statistics and bn_data is None:
            raise ValueError("the curve's model has batch norm: a model at arbitrary weights needs bn_data (the "
                             "defender's data) to recompute its BN statistics")
        other = self._other_buffers_at(0.0)
        stats = self._statistics_for(weights, other, bn_data) if bn_data is not None else {}
        return functional.materialize(self.template, weights, {**other, **stats})


# -------------------------------------------------------------------------------------------- training

class CurveObjective:
    """The loss hook of curve training: :math:`\\ell(w(t)) + \\tfrac{wd}{2}\\|w(t)\\|^2` at ``ts_per_step``
    values of t drawn uniformly per step from a generator seeded with ``seed`` (averaged when more than one).

    ``loss_fn(point, x, y)`` is called with the curve's network at t (train mode, batch statistics): pass a
    robust loss for adversarial curve training.
    """

    def __init__(self, loss_fn: LossFn, *, weight_decay: float, ts_per_step: int = 1, seed: int = 0) -> None:
        if ts_per_step < 1:
            raise ValueError(f"ts_per_step must be at least 1, got {ts_per_step}")
        self.loss_fn, self.weight_decay, self.ts_per_step = loss_fn, weight_decay, ts_per_step
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, curve: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if not isinstance(curve, Curve):
            raise TypeError(f"CurveObjective trains a Curve, got {type(curve).__name__}")
        ts = torch.rand(self.ts_per_step, generator=self.generator, dtype=torch.float64).tolist()
        terms = []
        for t in ts:
            # w(t) formed once per t: the loss (all of its forward passes) and the penalty share it
            weights = curve.weights_at(t, squared_norm=self.weight_decay != 0)
            loss = self.loss_fn(curve.point(t, weights), x, y)
            if self.weight_decay != 0:
                loss = loss + 0.5 * self.weight_decay * curve.squared_norm_at(t, weights)
            terms.append(loss)
        return terms[0] if len(terms) == 1 else torch.stack(terms).mean()


def fit_curve(curve: Curve, data: BatchSource, *, epochs: int | None = None, steps: int | None = None,
              sgd: SGDConfig = SGDConfig(lr=0.05, weight_decay=5e-4, schedule="cosine"),
              loss_fn: LossFn = cross_entropy_loss, ts_per_step: int = 1, seed: int = 0,
              batch_size: int = 128, epoch_end: Callable[[nn.Module, int], dict[str, float]] | None = None,
              amp_bf16: bool = False, show_progress: bool = True) -> tuple[Curve, History]:
    """Train a copy of ``curve``'s bends to minimise :math:`E_{t\\sim U(0,1)}[\\ell(w(t))] + \\tfrac{wd}{2}\\|w(t)\\|^2`.

    The book's one training loop (:func:`mcar_lib.train.fit`) with the curve as the model (its only trainable
    tensors are the bends) and :class:`CurveObjective` as the loss hook. Weight decay is the explicit L2 penalty
    on :math:`w(t)` (``sgd.weight_decay``; the optimiser's own decay is off), as in the paper's code. Give
    ``epochs`` (passes over ``data``) or ``steps``. ``data`` is a loader or a :class:`LabeledImages` (then
    shuffled with ``seed`` in batches of ``batch_size``); t is drawn from a generator seeded with ``seed``.
    Returns ``(trained_copy, history)``; ``curve`` itself is not changed.
    """
    if not isinstance(curve, Curve):
        raise TypeError(f"fit_curve trains a Curve, got {type(curve).__name__}; use train.fit for a network")
    if curve.n_bends == 0:
        raise ValueError("this curve has no bends (a straight line): there is nothing to train")
    if isinstance(data, LabeledImages):
        data = loader(data, batch_size, shuffle=True, seed=seed)
    objective = CurveObjective(loss_fn, weight_decay=sgd.weight_decay, ts_per_step=ts_per_step, seed=seed)
    trained, history = train.fit(curve, data, epochs=epochs, steps=steps, sgd=replace(sgd, weight_decay=0.0),
                                 loss_fn=objective, epoch_end=epoch_end, amp_bf16=amp_bf16,
                                 show_progress=show_progress)
    trained.clear_bn_cache()
    trained._gradient_memory = _GradientMemory()  # the last step's gradient storage: not needed any more
    return trained, history  # type: ignore[return-value]


__all__ = ["CURVE_KINDS", "Curve", "CurveObjective", "bezier_coefficients", "check_t", "coefficient_list",
           "fit_curve", "polychain_coefficients"]
