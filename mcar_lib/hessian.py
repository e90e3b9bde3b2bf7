"""Curvature: Hessian-vector products, power iteration and Lanczos, and the per-sample input-Hessian λ_max.

Nothing here forms a Hessian: every routine only needs products ``H v`` (two backward passes), so it scales to
real networks. Two operators matter for the book:

* the **input Hessian** ``∇²ₓ ℓ(f(x), y)`` of each sample, which measures how fast the loss can grow when the
  image is perturbed (the curvature term of the robust-loss bound in chapter 5);
* the **weight Hessian** of the mean loss over a data set, the classical "sharpness" of a minimum.

The per-sample trick: in eval mode (batch norm on its running statistics, no dropout) a network treats the
samples of a batch independently, so the Hessian of the **summed** loss with respect to the whole input batch
is block-diagonal, one block ``H_i`` per sample. One double-backward pass with the stacked vectors
``[v_1, …, v_B]`` returns ``[H_1 v_1, …, H_B v_B]``; normalising each block separately turns one batched power
iteration into ``B`` independent ones that share every forward and backward pass. Samples that have converged
stop changing and leave the batch (the graph is rebuilt on the remaining samples when at most half are left).

Power iteration finds the eigenvalue of largest **magnitude**. The functions whose name says ``lambda_max``
return the largest **algebraic** eigenvalue: when the dominant eigenvalue ``μ`` is negative they run a second
power iteration on the shifted operator ``H − μ I`` (its spectrum lies in ``[0, λ_max − μ]``, so its dominant
eigenvalue is ``λ_max − μ``) and add ``μ`` back. For ReLU networks the input Hessian of the cross-entropy is
``Jᵀ (diag p − p pᵀ) J`` (positive semi-definite), so the second pass almost never runs there.

For piecewise-linear networks (ReLU, max-pool, eval-mode batch norm, linear layers) the input Hessian is
exactly ``Jᵀ A J`` and :func:`input_lambda_max_gauss_newton` gets every sample's λ_max from the ``C × C``
matrix ``A^½ J Jᵀ A^½``, without iterating.

No function changes the model it is given: products are taken in eval mode (the caller's modes are restored),
batch-norm buffers are only read, parameters' ``.grad`` are left alone.

Every public function runs under :func:`mcar_lib.precision.full_precision`: on GPUs that default to TF32 for
float32 products (Ampere and newer), curvature is still computed in full float32 precision, without the reader
changing any setting. Tolerances of internal checks come from :func:`mcar_lib.precision.relative_tolerance`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcar_lib.attacks import input_gradient as loss_input_gradient
from mcar_lib.attacks import per_sample_norm
from mcar_lib.checks import check_finite_tensor, check_finite_weights, check_labels
from mcar_lib.data import BatchSource, batch_list
from mcar_lib.functional import call
from mcar_lib.modes import evaluation_mode
from mcar_lib.precision import full_precision, relative_tolerance
from mcar_lib.repro import model_device

__all__ = [
    "EigResult",
    "input_hvp",
    "weight_hvp",
    "power_iteration",
    "lanczos",
    "largest_eigenvalue",
    "input_hessian_eig",
    "input_lambda_max",
    "input_lambda_max_loop",
    "input_lambda_max_gauss_newton",
    "input_gradient",
    "mean_input_lambda_max",
    "compare_batched_and_loop",
    "slot_averaged_lambda_max",
    "weight_lambda_max",
    "weight_top_eigenvalues",
]

Matvec = Callable[[Tensor], Tensor]
#: ``matvec(v, rows)``: products of the blocks ``rows`` (indices into the batch) with the stacked vectors ``v``.
BlockMatvec = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class EigResult:
    """An eigenvalue estimate with its vector and how the iteration ended.

    For a per-sample iteration ``value``, ``iterations`` and ``converged`` have one entry per sample and
    ``vector`` has the batch shape; for Lanczos ``value`` holds the top ``k`` eigenvalues (descending) and
    ``vector`` the matching Ritz vectors stacked along a new first dimension.
    """

    value: Tensor
    vector: Tensor
    iterations: Tensor
    converged: Tensor


# ---------------------------------------------------------------------------------------------- helpers


def _check_iteration(iters: int, tol: float) -> None:
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int (matrix-vector products per sample), got {iters!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be a non-negative relative tolerance, got {tol!r}")


def _float_dtype(model: nn.Module) -> torch.dtype:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def _check_batch(x: Tensor, y: Tensor) -> None:
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (N×…), got shape {tuple(x.shape)}; add a batch dim with x[None]")
    check_labels(y, len(x))
    if len(x) == 0:
        raise ValueError("x is an empty batch; pass at least one sample")
    check_finite_tensor(x, "x")


def _block_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1)


def _block_norm(a: Tensor) -> Tensor:
    return per_sample_norm(a).view(-1)


def _per_block(scale: Tensor, like: Tensor) -> Tensor:
    return scale.view(-1, *([1] * (like.ndim - 1)))


def _random_like(x: Tensor, seed: int) -> Tensor:
    """A seeded Gaussian start vector (drawn on the CPU so that every device gets the same numbers)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


# ---------------------------------------------------------------------------------- Hessian-vector products


class _InputHessian:
    """Products of each sample's input Hessian with a vector, reusing one double-backward graph.

    The gradient ``g = ∇ₓ Σᵢ ℓᵢ`` is built once with ``create_graph=True`` (in eval mode); a product with the
    stacked vectors is then one more backward pass. When the rows asked for shrink to at most half of the rows
    the graph holds, the graph is rebuilt on those rows only, so converged samples stop costing anything.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        self.model, self.x, self.y = model, x, y
        self._rows: Tensor | None = None
        self._build(torch.arange(len(x), device=x.device))

    def _build(self, rows: Tensor) -> None:
        self._rows = rows
        self._where = torch.full((len(self.x),), -1, dtype=torch.long, device=self.x.device)
        self._where[rows] = torch.arange(len(rows), device=self.x.device)
        with torch.enable_grad():
            self._xg = self.x[rows].detach().clone().requires_grad_(True)
            loss = F.cross_entropy(self.model(self._xg), self.y[rows], reduction="sum")
            (self._g,) = torch.autograd.grad(loss, self._xg, create_graph=True)

    def __call__(self, v: Tensor, rows: Tensor) -> Tensor:
        assert self._rows is not None
        if 2 * len(rows) <= len(self._rows) and len(rows) < len(self._rows):
            self._build(rows)
        pos = self._where[rows]
        if bool((pos < 0).any()):
            raise RuntimeError("internal error: a row outside the current graph was requested")
        if not self._g.requires_grad:  # the loss is linear in x: the Hessian is zero
            return torch.zeros_like(v)
        full = v if len(rows) == len(self._rows) else torch.zeros_like(self._xg).index_copy(0, pos, v)
        with torch.enable_grad():
            (hv,) = torch.autograd.grad(self._g, self._xg, grad_outputs=full, retain_graph=True)
        hv = hv.detach()
        return hv if len(rows) == len(self._rows) else hv.index_select(0, pos)


def _prepare_inputs(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    _check_batch(x, y)
    check_finite_weights(model)
    device = model_device(model)
    return x.to(device=device, dtype=_float_dtype(model)), y.to(device)


@full_precision()
def input_hvp(model: nn.Module, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
    """``H v`` for the input Hessian of the **summed** cross-entropy, taken in eval mode.

    Because the loss is a sum of per-sample losses and eval mode keeps samples independent, row ``i`` of the
    result is ``H_i v_i``: each sample's own Hessian times its own vector. Returned on the model's device.
    """
    x, y = _prepare_inputs(model, x, y)
    if v.shape != x.shape:
        raise ValueError(f"v must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
    v = v.to(device=x.device, dtype=x.dtype)
    with evaluation_mode(model):
        op = _InputHessian(model, x, y)
        return op(v, torch.arange(len(x), device=x.device))


class _WeightHessian:
    """Products of the Hessian of the mean cross-entropy over a data set (w.r.t. the weights) with a vector.

    The model is called functionally on detached copies of its parameters and **cloned** buffers, in eval
    mode: the model's own tensors are never part of the graph and batch-norm statistics cannot move.
    """

    def __init__(self, model: nn.Module, data: BatchSource) -> None:
        check_finite_weights(model)
        self.model = model
        self.device = model_device(model)
        self.batches = batch_list(data)
        for i, (x, _) in enumerate(self.batches):
            check_finite_tensor(x, f"batch {i} of the data")
        self.count = sum(len(y) for _, y in self.batches)
        self.params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("the model has no trainable parameters, so it has no weight Hessian")
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.names = list(self.params)
        self.dtype = _float_dtype(model)

    def check(self, v: Mapping[str, Tensor]) -> None:
        missing = [n for n in self.names if n not in v]
        extra = [n for n in v if n not in self.params]
        if missing or extra:
            raise ValueError(f"v must have one tensor per trainable parameter; missing {missing[:3]}, "
                             f"unexpected {extra[:3]} (build it from dict(model.named_parameters()))")
        for n in self.names:
            if v[n].shape != self.params[n].shape:
                raise ValueError(f"v[{n!r}] has shape {tuple(v[n].shape)}, the parameter has "
                                 f"{tuple(self.params[n].shape)}")

    def __call__(self, v: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.check(v)
        vs = [v[n].to(self.params[n]) for n in self.names]
        total = [torch.zeros_like(self.params[n]) for n in self.names]
        with evaluation_mode(self.model), torch.enable_grad():
            for x, y in self.batches:
                x = x.to(device=self.device, dtype=self.dtype)
                y = y.to(self.device)
                params = {n: p.clone().requires_grad_(True) for n, p in self.params.items()}
                logits = call(self.model, {**self.buffers, **params}, x)
                loss = F.cross_entropy(logits, y, reduction="sum") / self.count
                grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
                dot = sum((g * u).sum() for g, u in zip(grads, vs))
                hv = torch.autograd.grad(dot, list(params.values()), allow_unused=True)
                for acc, h in zip(total, hv):
                    if h is not None:
                        acc.add_(h.detach())
        return dict(zip(self.names, total))

    def flatten(self, v: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([v[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        out, start = {}, 0
        for n in self.names:
            size = self.params[n].numel()
            out[n] = flat[start:start + size].view_as(self.params[n])
            start += size
        return out

    def flat_matvec(self, flat: Tensor) -> Tensor:
        return self.flatten(self(self.unflatten(flat)))

    def like(self) -> Tensor:
        return torch.cat([p.reshape(-1) for p in self.params.values()])


@full_precision()
def weight_hvp(model: nn.Module, data: BatchSource, v: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``H v`` for the Hessian of the mean cross-entropy over ``data`` w.r.t. the trainable parameters.

    ``v`` maps each trainable parameter name to a tensor of its shape (like ``dict(model.named_parameters())``).
    Taken in eval mode on cloned buffers: batch-norm statistics and the model's mode are left as they were.
    """
    return _WeightHessian(model, data)(v)


# ----------------------------------------------------------------------------------------- eigen-solvers


def power_iteration(matvec: Matvec | BlockMatvec, v0: Tensor, *, iters: int = 100, tol: float = 1e-4,
                    per_sample: bool = False) -> EigResult:
    """The eigenvalue of largest **magnitude** of a symmetric operator, by power iteration.

    Stops when the Rayleigh quotient's estimated remaining error is at most ``tol`` relative to its value, or
    after ``iters`` products. The estimate assumes the geometric convergence of power iteration: with the
    last two changes ``Δ_k`` and ``Δ_{k-1}`` and their ratio ``ρ < 1`` it is ``Δ_k / (1 − ρ)``. A plain
    "change below tol" test stops far too early when the top two eigenvalues are close; this one is safer
    but can still be fooled by a cluster of top eigenvalues (use :func:`lanczos` there).

    With ``per_sample=True`` the first dimension of ``v0`` is a batch of independent problems (a
    block-diagonal operator): each block is normalised, tested and stopped on its own, and ``matvec`` is
    called as ``matvec(v, rows)`` with the stacked vectors of the samples still iterating and their indices
    ``rows`` into the batch; converged samples are not passed again and keep their value and vector.
    A sample whose product is exactly zero has eigenvalue 0 and counts as converged.
    """
    _check_iteration(iters, tol)
    if not v0.is_floating_point():
        raise ValueError(f"v0 must be a floating-point tensor, got {v0.dtype}")
    if not per_sample:
        def block_matvec(v: Tensor, rows: Tensor) -> Tensor:
            return matvec(v[0]).unsqueeze(0)  # type: ignore[call-arg]
        result = power_iteration(block_matvec, v0.unsqueeze(0), iters=iters, tol=tol, per_sample=True)
        return EigResult(result.value[0], result.vector[0], result.iterations[0], result.converged[0])
    if v0.ndim < 2:
        raise ValueError(f"per_sample=True needs a batch of vectors (B×…), got shape {tuple(v0.shape)}")
    norms = _block_norm(v0)
    if bool((norms == 0).any()) or not bool(torch.isfinite(norms).all()):
        raise ValueError("every block of v0 must be finite and non-zero; start from a random vector")
    n = v0.shape[0]
    vector = v0 / _per_block(norms, v0)
    value = torch.full((n,), float("nan"), dtype=v0.dtype, device=v0.device)
    iterations = torch.zeros(n, dtype=torch.long, device=v0.device)
    converged = torch.zeros(n, dtype=torch.bool, device=v0.device)
    last_change = torch.full((n,), float("inf"), dtype=v0.dtype, device=v0.device)
    for step in range(iters):
        rows = (~converged).nonzero().squeeze(1)
        if len(rows) == 0:
            break
        v = vector[rows]
        hv = matvec(v, rows)  # type: ignore[call-arg]
        if hv.shape != v.shape:
            raise ValueError(f"matvec returned shape {tuple(hv.shape)} for vectors of shape {tuple(v.shape)}")
        rayleigh = _block_dot(v, hv)
        size = _block_norm(hv)
        zero = size == 0
        rayleigh = torch.where(zero, torch.zeros_like(rayleigh), rayleigh)
        change = (rayleigh - value[rows]).abs() if step > 0 else torch.full_like(rayleigh, float("inf"))
        # remaining error of a geometric sequence with ratio ρ = Δ_k / Δ_{k-1}: Δ_k ρ / (1 - ρ) ≤ Δ_k / (1 - ρ)
        ratio = change / last_change[rows]
        remaining = torch.where(ratio < 1, change / (1 - ratio).clamp_min(1e-12), torch.full_like(change,
                                                                                                float("inf")))
        done = zero | (change == 0) | (remaining <= tol * rayleigh.abs())
        last_change[rows] = change
        value[rows] = rayleigh
        iterations[rows] += 1
        converged[rows] = done
        moving = ~done
        if step < iters - 1 and bool(moving.any()):  # keep the vector whose Rayleigh quotient is `value`
            safe = torch.where(zero, torch.ones_like(size), size)
            vector[rows[moving]] = (hv / _per_block(safe, hv))[moving]
    return EigResult(value, vector, iterations, converged)


def _largest_algebraic(block_matvec: BlockMatvec, v0: Tensor, *, iters: int, tol: float,
                       restrict: Callable[[Tensor], BlockMatvec] | None = None) -> EigResult:
    """Per-sample largest algebraic eigenvalue: power iteration, then a shifted pass where it found μ < 0.

    ``restrict(rows)`` may return a block matvec that only knows the samples ``rows`` (cheaper second pass).
    """
    first = power_iteration(block_matvec, v0, iters=iters, tol=tol, per_sample=True)
    negative = (first.value < 0).nonzero().squeeze(1)
    if len(negative) == 0:
        return first
    shift = first.value[negative]
    inner = restrict(negative) if restrict is not None else (
        lambda v, rows: block_matvec(v, negative[rows]))

    def shifted(v: Tensor, rows: Tensor) -> Tensor:
        return inner(v, rows) - _per_block(shift[rows], v) * v

    second = power_iteration(shifted, v0[negative], iters=iters, tol=tol, per_sample=True)
    value, vector = first.value.clone(), first.vector.clone()
    iterations, converged = first.iterations.clone(), first.converged.clone()
    value[negative] = second.value + shift
    vector[negative] = second.vector
    iterations[negative] += second.iterations
    converged[negative] = first.converged[negative] & second.converged
    return EigResult(value, vector, iterations, converged)


def largest_eigenvalue(matvec: Matvec | BlockMatvec, v0: Tensor, *, iters: int = 100, tol: float = 1e-4,
                       per_sample: bool = False) -> EigResult:
    """The largest **algebraic** eigenvalue (power iteration, plus a shifted pass if the dominant one is < 0).

    Same calling convention as :func:`power_iteration`; ``iterations`` counts the products of both passes.
    """
    _check_iteration(iters, tol)
    if per_sample:
        return _largest_algebraic(matvec, v0, iters=iters, tol=tol)  # type: ignore[arg-type]
    result = _largest_algebraic(lambda v, rows: matvec(v[0]).unsqueeze(0),  # type: ignore[call-arg]
                                v0.unsqueeze(0), iters=iters, tol=tol)
    return EigResult(result.value[0], result.vector[0], result.iterations[0], result.converged[0])


def lanczos(matvec: Matvec, v0: Tensor, *, k: int = 1, m: int | None = None, tol: float = 1e-6) -> EigResult:
    """The ``k`` largest (algebraic) eigenvalues of a symmetric operator by ``m`` Lanczos steps.

    Every new Lanczos vector is re-orthogonalised against all previous ones (twice), so no spurious copies of
    converged eigenvalues appear; the eigenvalues of the tridiagonal matrix come from ``torch.linalg.eigh``.
    If the Krylov space closes early (an invariant subspace), the iteration restarts from a random vector
    orthogonal to it. ``m`` defaults to ``max(2k + 10, 20)``, capped at the dimension. ``converged`` is true
    where the residual estimate ``|β_m s_m|`` is at most ``tol`` times the largest Ritz value.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int (number of eigenvalues), got {k!r}")
    dim = v0.numel()
    if k > dim:
        raise ValueError(f"k={k} eigenvalues requested but the operator has dimension {dim}")
    m = min(dim, max(2 * k + 10, 20)) if m is None else m
    if m < k or m > dim:
        raise ValueError(f"m must lie between k={k} and the dimension {dim}, got {m}")
    start = v0.reshape(-1)
    if not bool(start.norm() > 0):
        raise ValueError("v0 must be non-zero; start from a random vector")
    generator = torch.Generator().manual_seed(0)
    basis = torch.zeros(m, dim, dtype=v0.dtype, device=v0.device)
    alphas = torch.zeros(m, dtype=v0.dtype, device=v0.device)
    betas = torch.zeros(m, dtype=v0.dtype, device=v0.device)  # betas[j] couples q_j and q_{j+1}
    q = start / start.norm()
    for j in range(m):
        basis[j] = q
        w = matvec(q.view_as(v0)).reshape(-1).to(v0.dtype)
        alphas[j] = torch.dot(w, q)
        for _ in range(2):  # full re-orthogonalisation, twice is enough
            w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        if j == m - 1:
            betas[j] = w.norm()
            break
        beta = w.norm()
        scale = alphas[:j + 1].abs().max().clamp_min(torch.finfo(v0.dtype).tiny)
        if beta <= 1e3 * torch.finfo(v0.dtype).eps * scale:  # invariant subspace: restart orthogonally
            betas[j] = 0.0
            fresh = torch.randn(dim, generator=generator, dtype=v0.dtype).to(v0.device)
            for _ in range(2):
                fresh = fresh - basis[:j + 1].T @ (basis[:j + 1] @ fresh)
            q = fresh / fresh.norm()
        else:
            betas[j] = beta
            q = w / beta
    tridiagonal = torch.diag(alphas) + torch.diag(betas[:-1], 1) + torch.diag(betas[:-1], -1)
    ritz, coefficients = torch.linalg.eigh(tridiagonal)
    order = torch.argsort(ritz, descending=True)[:k]
    values = ritz[order]
    vectors = (coefficients[:, order].T @ basis).view(k, *v0.shape)
    residual = (betas[-1] * coefficients[-1, order]).abs()
    converged = residual <= tol * ritz.abs().max().clamp_min(torch.finfo(v0.dtype).tiny)
    return EigResult(values, vectors, torch.tensor(m), converged)


# --------------------------------------------------------------------------------------- input curvature


@full_precision()
def input_hessian_eig(model: nn.Module, x: Tensor, y: Tensor, *, iters: int = 100, tol: float = 1e-4,
                      v0: Tensor | None = None, seed: int = 0) -> EigResult:
    """The largest algebraic eigenvalue of **each** sample's input Hessian, in one batched power iteration.

    ``value[i]`` is λ_max of ``∇²ₓ ℓ(f(xᵢ), yᵢ)`` (cross-entropy in nats, model in eval mode). The start vectors
    are ``v0`` or a Gaussian drawn from ``seed``. Results live on the model's device in the model's dtype.
    """
    x, y = _prepare_inputs(model, x, y)
    _check_iteration(iters, tol)
    start = _random_like(x, seed) if v0 is None else v0.to(device=x.device, dtype=x.dtype)
    if start.shape != x.shape:
        raise ValueError(f"v0 must have the shape of x {tuple(x.shape)}, got {tuple(start.shape)}")
    with evaluation_mode(model):
        op = _InputHessian(model, x, y)

        def restrict(rows: Tensor) -> BlockMatvec:
            sub = _InputHessian(model, x[rows], y[rows])
            return sub

        return _largest_algebraic(op, start, iters=iters, tol=tol, restrict=restrict)


@full_precision()
def input_lambda_max(model: nn.Module, x: Tensor, y: Tensor, *, iters: int = 100, tol: float = 1e-4,
                     v0: Tensor | None = None, seed: int = 0) -> Tensor:
    """λ_max of each sample's input Hessian (a vector of length ``len(x)``); see :func:`input_hessian_eig`."""
    return input_hessian_eig(model, x, y, iters=iters, tol=tol, v0=v0, seed=seed).value


@full_precision()
def input_lambda_max_loop(model: nn.Module, x: Tensor, y: Tensor, *, iters: int = 100, tol: float = 1e-4,
                          v0: Tensor | None = None, seed: int = 0) -> Tensor:
    """The same numbers as :func:`input_lambda_max`, one sample at a time (the baseline the batch beats).

    The start vectors are drawn for the whole batch exactly as the batched version draws them, so the two
    agree to rounding error.
    """
    x, y = _prepare_inputs(model, x, y)
    start = _random_like(x, seed) if v0 is None else v0.to(device=x.device, dtype=x.dtype)
    return torch.cat([input_lambda_max(model, x[i:i + 1], y[i:i + 1], iters=iters, tol=tol, v0=start[i:i + 1])
                      for i in range(len(x))])


@full_precision()
def compare_batched_and_loop(model: nn.Module, x: Tensor, y: Tensor, *, iters: int = 100,
                             tol: float = 1e-4, seed: int = 0) -> dict[str, float]:
    """Run the batched and the one-at-a-time per-sample power iteration on the same inputs (for benchmarks).

    Returns both wall times (seconds), the speed-up and the largest relative disagreement between the two.
    Both are first run once on two samples for two iterations: the first double-backward pass of a process
    pays one-off set-up costs (kernel selection, allocator) that would otherwise be charged to whichever
    method is timed first.
    """
    for warm in (input_lambda_max, input_lambda_max_loop):
        warm(model, x[:2], y[:2], iters=2, tol=tol, seed=seed)
    start = time.perf_counter()
    batched = input_lambda_max(model, x, y, iters=iters, tol=tol, seed=seed)
    if batched.device.type == "cuda":
        torch.cuda.synchronize()
    seconds_batched = time.perf_counter() - start
    start = time.perf_counter()
    looped = input_lambda_max_loop(model, x, y, iters=iters, tol=tol, seed=seed)
    if looped.device.type == "cuda":
        torch.cuda.synchronize()
    seconds_loop = time.perf_counter() - start
    scale = looped.abs().clamp_min(torch.finfo(looped.dtype).tiny)
    return {
        "batch_size": float(len(x)),
        "seconds_batched": seconds_batched,
        "seconds_loop": seconds_loop,
        "speedup": seconds_loop / seconds_batched,
        "max_relative_difference": float(((batched - looped).abs() / scale).max()),
    }


@full_precision()
def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Each sample's input gradient ``∇ₓ ℓ(f(xᵢ), yᵢ)`` (of the summed loss, in eval mode): the first-order term."""
    x, y = _prepare_inputs(model, x, y)
    with evaluation_mode(model):
        return loss_input_gradient(model, x, y)  # the very gradient each PGD step follows


def _input_jacobian(model: nn.Module, x: Tensor, *, max_rows: int = 4096) -> tuple[Tensor, Tensor]:
    """Logits (B × C) and each sample's input Jacobian (B × C × d), in eval mode.

    Every sample is repeated C times and copy k back-propagates only its logit k: one forward and one
    backward pass of a C-times larger batch (eval mode keeps the copies independent). On a CPU that is
    several times faster than C backward passes through the same graph. Chunks of at most ``max_rows``
    copies bound the memory.
    """
    with evaluation_mode(model):
        with torch.no_grad():
            logits = model(x)
        if logits.ndim != 2:
            raise ValueError(f"the model must return logits of shape N×C, got {tuple(logits.shape)}")
        classes = logits.shape[1]
        chunk = max(1, max_rows // classes)
        parts = []
        with torch.enable_grad():
            for start in range(0, len(x), chunk):
                part = x[start:start + chunk]
                copies = part.repeat_interleave(classes, dim=0).detach().requires_grad_(True)
                select = torch.eye(classes, dtype=logits.dtype, device=x.device).repeat(len(part), 1)
                (grad,) = torch.autograd.grad((model(copies) * select).sum(), copies)
                parts.append(grad.view(len(part), classes, -1))
    return logits, torch.cat(parts).detach()


@full_precision()
def input_lambda_max_gauss_newton(model: nn.Module, x: Tensor, y: Tensor, *, check: bool = True) -> Tensor:
    """Exact per-sample input-Hessian λ_max for networks whose logits are **piecewise linear** in the input.

    With logits ``z = f(x)`` and ``A = diag(p) − p pᵀ`` (the Hessian of the cross-entropy w.r.t. the logits,
    ``p`` the softmax), the input Hessian is ``Jᵀ A J + Σ_k (p_k − [k = y]) ∇²z_k``. For ReLU / max-pool /
    eval-mode batch-norm / linear networks every ``∇²z_k`` is zero (wherever the Hessian exists), so
    ``H = Jᵀ A J`` has rank at most ``C − 1`` and its top eigenvalue is the one of the ``C × C`` matrix
    ``A^½ J Jᵀ A^½``. That costs one forward and backward pass of a ``C``-times repeated batch instead of tens
    of Hessian-vector products, and is exact. Note that it does not depend on the label.

    With ``check=True`` one Hessian-vector product with a random vector is compared with ``Jᵀ A J v``; a
    model with smooth activations (tanh, GELU, softplus, ...) fails the check with a ``ValueError``: use
    :func:`input_lambda_max` there.
    """
    x, y = _prepare_inputs(model, x, y)
    logits, jac = _input_jacobian(model, x)
    p = torch.softmax(logits.detach().double(), dim=1)
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    evals, evecs = torch.linalg.eigh(a)
    root = evecs @ torch.diag_embed(evals.clamp_min(0).sqrt()) @ evecs.transpose(1, 2)
    gram = jac.double() @ jac.double().transpose(1, 2)
    lam = torch.linalg.eigvalsh(root @ gram @ root)[:, -1]
    if check:
        v = _random_like(x, seed=12345)
        with evaluation_mode(model):
            hv = _InputHessian(model, x, y)(v, torch.arange(len(x), device=x.device)).flatten(1).double()
        jv = (jac.double() @ v.flatten(1).double()[:, :, None])
        gn = (jac.double().transpose(1, 2) @ (a @ jv)).squeeze(2)
        scale = max(float(gn.norm()), float(hv.norm()))
        error = float((hv - gn).norm()) / scale if scale > 1e-12 else 0.0  # both zero: saturated softmax
        limit = relative_tolerance(x.dtype, x.device)
        if error > limit:
            raise ValueError(f"the input Hessian is not Jᵀ A J (relative difference {error:.1e}): the model is not "
                             "piecewise linear in its input (smooth activations?); use input_lambda_max instead")
    return lam.to(x.dtype)


@full_precision()
def mean_input_lambda_max(model: nn.Module, data: BatchSource, *, batch_size: int = 256,
                          iters: int = 100, tol: float = 1e-4, seed: int = 0,
                          method: Literal["power", "gauss_newton"] = "power") -> float:
    """The mean over ``data`` of each sample's input-Hessian λ_max: a path metric (curvature at a point t).

    ``method="power"`` (any model) runs the batched power iteration; ``"gauss_newton"`` the exact and much
    cheaper computation for piecewise-linear (ReLU) networks, :func:`input_lambda_max_gauss_newton`.
    """
    if method not in ("power", "gauss_newton"):
        raise ValueError(f"unknown method {method!r}; choose 'power' or 'gauss_newton'")
    total, count = 0.0, 0
    for i, (x, y) in enumerate(batch_list(data, batch_size)):
        if method == "power":
            values = input_lambda_max(model, x, y, iters=iters, tol=tol, seed=seed + i)
        else:
            values = input_lambda_max_gauss_newton(model, x, y, check=i == 0)
        total += float(values.double().sum())
        count += len(values)
    return total / count


@full_precision()
def slot_averaged_lambda_max(model: nn.Module, data: BatchSource, *, iters: int = 10, tol: float = 1e-2,
                             seed: int = 0) -> float:
    """The reference code's estimate (HessianFlow's ``get_eigen_full_dataset_only_inputs``), for comparison.

    One batch-shaped vector ``v`` is shared by all batches; each batch contributes the input-Hessian product
    of its **mean** loss, and the products are averaged over batches. The operator is block-diagonal over
    *batch slots*, slot ``j`` carrying ``(1/B) · mean_b H_{b,j}``, so the result is
    ``max_j λ_max(mean_b H_{b,j}) / B``: neither one sample's λ_max nor the average of them. Batches of a
    size other than the first one's are dropped, as a shared vector cannot multiply them.
    """
    materialised = batch_list(data)
    size = len(materialised[0][1])
    prepared = [_prepare_inputs(model, x, y) for x, y in materialised if len(y) == size]
    with evaluation_mode(model):
        operators = [_InputHessian(model, x, y) for x, y in prepared]
        rows = torch.arange(size, device=prepared[0][0].device)

        def matvec(v: Tensor) -> Tensor:
            return sum(op(v, rows) for op in operators) / (size * len(operators))  # type: ignore[return-value]

        start = _random_like(prepared[0][0], seed)
        return float(power_iteration(matvec, start, iters=iters, tol=tol).value)


# -------------------------------------------------------------------------------------- weight curvature


@full_precision()
def weight_top_eigenvalues(model: nn.Module, data: BatchSource, *, k: int = 1, m: int | None = None,
                           seed: int = 0) -> EigResult:
    """The ``k`` largest eigenvalues of the weight Hessian of the mean loss over ``data``, by Lanczos.

    Vectors are flat (parameters concatenated in ``named_parameters`` order).
    """
    op = _WeightHessian(model, data)
    start = _random_like(op.like(), seed)
    return lanczos(op.flat_matvec, start, k=k, m=m)


@full_precision()
def weight_lambda_max(model: nn.Module, data: BatchSource, *, iters: int = 100, tol: float = 1e-4,
                      seed: int = 0) -> float:
    """The largest algebraic eigenvalue of the weight Hessian of the mean cross-entropy over ``data``.

    Power iteration on weight HVPs (eval mode, cloned buffers), shifted if the dominant eigenvalue is negative.
    """
    op = _WeightHessian(model, data)
    start = _random_like(op.like(), seed)
    return float(largest_eigenvalue(op.flat_matvec, start, iters=iters, tol=tol).value)
