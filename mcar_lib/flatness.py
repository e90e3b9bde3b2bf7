"""Weight-space flatness of the robust loss: how much worse does a model get if its weights are nudged?

Robust overfitting goes with a *sharp* robust-loss landscape in weight space (Stutz et al. 2021; Wu et al.
2020). Three probes, all scale-invariant so that networks of different weight norms can be compared:

* **average-case robust flatness** (Stutz et al.): E_ν[ρ(w + ν)] − ρ(w), ν uniform on the layer-wise relative
  sphere ‖ν_l‖ = ξ‖w_l‖, ρ the robust loss with adversarial examples *recomputed* for every weight sample;
* **worst-case robust flatness** (Stutz et al.): max over ‖ν_l‖ ≤ ξ‖w_l‖ and the input perturbations δ,
  optimised *jointly*, minus ρ(w);
* **1-D loss curves** along a random *filter-normalised* direction (Li et al. 2018): each filter of the
  direction is rescaled to the norm of the matching weight filter, one-dimensional parameters are left out.

Only parameters with at least two dimensions move (:func:`mcar_lib.functional.perturbable_names`): biases and
normalisation layers stay as they are. Everything runs in eval mode (batch norm uses its running statistics)
through :mod:`mcar_lib.functional`: the model given is never modified, not even temporarily.

Random starts of the attack are drawn from the same seed for every weight sample (common random numbers), so
the difference measures the weights' effect rather than attack noise, and ξ = 0 gives exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcar_lib import functional
from mcar_lib.attacks import Attack, robust_evaluate
from mcar_lib.checks import check_finite_weights
from mcar_lib.data import BatchSource, batch_list
from mcar_lib.functional import detached_weights, perturbable_names, shifted
from mcar_lib.modes import evaluation_mode
from mcar_lib.repro import model_device
from mcar_lib.train import evaluate

__all__ = [
    "Flatness",
    "average_flatness",
    "filter_normalized_direction",
    "loss_curve",
    "relative_random_perturbation",
    "worst_flatness",
]


def _check_radius(xi: float, what: str = "xi") -> None:
    if not (math.isfinite(xi) and xi >= 0):
        raise ValueError(f"{what} (a radius relative to each layer's weight norm) must be finite and >= 0, "
                         f"got {xi}")


def relative_random_perturbation(model: nn.Module, xi: float, *,
                                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A random ν with ‖ν_l‖ = ξ‖w_l‖ exactly, uniform in direction, for each perturbable parameter.

    Drawn on the CPU from ``generator`` (reproducible on any device) and moved to the parameter's device.
    """
    _check_radius(xi)
    out: dict[str, Tensor] = {}
    params = dict(model.named_parameters())
    for name in perturbable_names(model):
        w = params[name].detach()
        z = torch.randn(w.shape, generator=generator, dtype=torch.float64).to(w.device, w.dtype)
        out[name] = xi * w.norm() * z / z.norm().clamp_min(1e-30)
    return out


@dataclass(frozen=True)
class Flatness:
    """A flatness measurement: robust loss at ``w``, at the perturbed weights, and their difference (nats)."""

    loss: float
    perturbed_loss: float
    flatness: float
    samples: tuple[float, ...] = ()


def _robust_loss(view: nn.Module, batches: BatchSource, attack: Attack | None, seed: int) -> float:
    """Mean (robust) cross-entropy of ``view``; the attack's random draws come from ``seed`` each time."""
    if attack is None:
        return evaluate(view, batches)["loss"]
    devices = [model_device(view)] if model_device(view).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # for attacks that draw from the global generator
        return robust_evaluate(view, batches, attack, seed=seed)["loss"]


def average_flatness(model: nn.Module, data: BatchSource, *, attack: Attack | None, xi: float = 0.5,
                     n_samples: int = 10, seed: int = 0) -> Flatness:
    """Average-case robust flatness (Stutz et al. 2021): E_ν[ρ(w + ν)] − ρ(w), in nats; lower is flatter.

    ν is uniform on the layer-wise relative sphere of radius ``xi`` (only weights with ≥ 2 dimensions), ρ the
    mean cross-entropy on ``attack``'s examples, crafted anew against each perturbed model (``attack=None``:
    clean flatness). The model stays in eval mode and is not modified.
    """
    _check_radius(xi)
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    check_finite_weights(model)
    batches = batch_list(data, device=model_device(model))
    base = detached_weights(model)
    generator = torch.Generator().manual_seed(seed)
    with evaluation_mode(model):
        reference = _robust_loss(functional.view(model, base), batches, attack, seed)
        samples = []
        for _ in range(n_samples):
            nu = relative_random_perturbation(model, xi, generator=generator)
            samples.append(_robust_loss(functional.view(model, shifted(base, nu)), batches, attack, seed))
    mean = sum(samples) / len(samples)
    return Flatness(loss=reference, perturbed_loss=mean, flatness=mean - reference, samples=tuple(samples))


def _project_relative(nu: Tensor, radius: Tensor) -> Tensor:
    """Project ν onto the l2 ball of the given radius."""
    return nu * (radius / nu.norm().clamp_min(1e-30)).clamp(max=1.0)


def _joint_attack_loss(model: nn.Module, base: Mapping[str, Tensor], x: Tensor, y: Tensor, *, eps: float,
                       input_step: float, steps: int, xi: float, weight_step: float,
                       generator: torch.Generator) -> Tensor:
    """Summed CE after ``steps`` joint ascent steps on δ (l∞ sign steps) and ν (layer-wise normalised steps)."""
    names = [n for n in base if base[n].ndim > 1]
    radius = {n: xi * base[n].norm() for n in names}
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    delta = ((x + eps * (2 * noise - 1)).clamp(0, 1) - x).detach()
    nu = {}
    for n in names:  # a random start inside the relative ball (as for δ)
        z = torch.randn(base[n].shape, generator=generator, dtype=torch.float64).to(base[n].device, base[n].dtype)
        u = torch.rand((), generator=generator).item()
        nu[n] = radius[n] * u * z / z.norm().clamp_min(1e-30)
    move_weights = xi > 0
    for _ in range(steps):
        delta.requires_grad_(True)
        for n in names:
            nu[n].requires_grad_(move_weights)
        with torch.enable_grad():
            loss = F.cross_entropy(functional.call(model, shifted(base, nu), x + delta), y, reduction="sum")
            wrt = [delta] + ([nu[n] for n in names] if move_weights else [])
            grads = torch.autograd.grad(loss, wrt)
        with torch.no_grad():
            delta = (delta + input_step * grads[0].sign()).clamp(-eps, eps)
            delta = ((x + delta).clamp(0, 1) - x).detach()
            if move_weights:
                for n, g in zip(names, grads[1:]):
                    step = weight_step * base[n].norm() * g / g.norm().clamp_min(1e-30)
                    nu[n] = _project_relative(nu[n] + step, radius[n]).detach()
    with torch.no_grad():
        nu = {n: t.detach() for n, t in nu.items()}
        return F.cross_entropy(functional.call(model, shifted(base, nu), x + delta), y, reduction="sum")


def worst_flatness(model: nn.Module, data: BatchSource, *, eps: float, xi: float = 0.003, steps: int = 20,
                   input_step: float | None = None, weight_step: float | None = None, seed: int = 0) -> Flatness:
    """Worst-case robust flatness (Stutz et al. 2021): max_{ν, δ} CE(x+δ; w+ν) − max_δ CE(x+δ; w), in nats.

    Per batch, δ (l∞ ball of radius ``eps``, images kept in [0, 1]) and ν (‖ν_l‖ ≤ ξ‖w_l‖ for weights with ≥ 2
    dimensions) ascend *jointly* for ``steps`` steps from a random start: sign steps of ``input_step``
    (default 2.5·eps/steps) for δ, steps of ``weight_step``·‖w_l‖ along the layer's normalised gradient
    (default 2.5·ξ/steps) for ν, each followed by a projection. The reference ρ(w) is the same procedure with
    ν held at 0 and the same random start for δ (plain PGD), so ξ = 0 gives exactly 0.
    """
    _check_radius(xi)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite non-negative l∞ budget in pixel units, got {eps}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    input_step = 2.5 * eps / max(steps, 1) if input_step is None else input_step
    weight_step = 2.5 * xi / max(steps, 1) if weight_step is None else weight_step
    check_finite_weights(model)
    batches = batch_list(data, device=model_device(model))
    base = detached_weights(model)
    totals = {}
    with evaluation_mode(model):
        for radius in (0.0, xi):
            generator = torch.Generator().manual_seed(seed)
            total, count = 0.0, 0
            for x, y in batches:
                total += _joint_attack_loss(model, base, x, y, eps=eps, input_step=input_step, steps=steps,
                                            xi=radius, weight_step=weight_step, generator=generator).item()
                count += len(y)
            totals[radius] = total / count
    return Flatness(loss=totals[0.0], perturbed_loss=totals[xi], flatness=totals[xi] - totals[0.0])


def filter_normalized_direction(model: nn.Module, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A random direction d for every parameter, filter-normalised as in Li et al. (2018).

    For a weight with ≥ 2 dimensions, each filter d_i (a slice along the first, output dimension) is a Gaussian
    rescaled to ‖d_i‖ = ‖w_i‖; one-dimensional parameters (biases, batch norm) get d = 0, so they do not move.
    """
    out: dict[str, Tensor] = {}
    for name, p in model.named_parameters():
        w = p.detach()
        if w.ndim <= 1:
            out[name] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=generator, dtype=torch.float64).to(w.device, w.dtype)
        d_norms = d.flatten(1).norm(dim=1).clamp_min(1e-30)
        w_norms = w.flatten(1).norm(dim=1)
        out[name] = d * (w_norms / d_norms).view(-1, *([1] * (w.ndim - 1)))
    return out


def loss_curve(model: nn.Module, data: BatchSource, *, direction: Mapping[str, Tensor], alphas: Sequence[float],
               attack: Attack | None = None, seed: int = 0):  # -> pandas.DataFrame
    """The (robust) loss along ``w + α·d``: a table with columns ``alpha``, ``loss`` (nats), ``accuracy`` (%).

    With an ``attack`` the adversarial examples are crafted anew at every α (the weight-loss landscape of the
    AWP paper), from the same random start; without, the clean loss. Eval mode, model untouched.
    """
    import pandas as pd

    base = detached_weights(model)
    device = model_device(model)
    batches = batch_list(data, device=device)
    rows = []
    with evaluation_mode(model):
        for alpha in alphas:
            view = functional.view(model, shifted(base, direction, float(alpha)))
            if attack is None:
                result = evaluate(view, batches)
            else:
                devices = [device] if device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed)
                    result = robust_evaluate(view, batches, attack, seed=seed)
            rows.append({"alpha": float(alpha), "loss": result["loss"], "accuracy": result["accuracy"]})
    return pd.DataFrame(rows)
