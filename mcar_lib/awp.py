"""Adversarial Weight Perturbation (Wu et al. 2020): adversarial training that also perturbs the weights.

Adversarial training minimises the robust loss ρ(w) = E max_δ ℓ(f(x+δ; w), y) and tends to *robustly overfit*:
robust training accuracy keeps rising while robust test accuracy falls. AWP minimises the robust loss in the
worst case over a small, layer-wise relative neighbourhood of the weights instead,

    min_w  max_{‖v_l‖ ≤ γ‖w_l‖}  ρ(w + v),

which flattens the weight-loss landscape and closes much of the robust generalisation gap.

This module implements the *proxy-free* form. The reference code copies the model into a proxy, takes one
plain SGD step that increases the adversarial loss and rescales the weight difference per layer; that
difference is exactly the layer's gradient, so here the perturbation comes from one ``autograd.grad``:

    v_l = γ · ‖w_l‖ · g_l / ‖g_l‖,     g = ∇_w ℓ(f(x_adv; w), y),

for every parameter with at least two dimensions (convolution and linear weights); biases and batch-norm
parameters (one-dimensional) are never perturbed. The loss at ``w + v`` is computed with
``torch.func.functional_call``, so the stored weights are never modified (nothing to restore, hence nothing
to restore wrongly), and its gradient with respect to ``w`` *is* the gradient at ``w + v``, which the
optimiser then applies to ``w``. The extra cost over a plain adversarial-training step is one forward and
one backward pass (no extra attack).

It plugs into :func:`mcar_lib.adversarial.fit_adversarial` as ``awp=AWP(gamma=..., warmup_epochs=...)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcar_lib import functional
from mcar_lib.adversarial import RobustLoss
from mcar_lib.functional import perturbable_names
from mcar_lib.repro import model_device
from mcar_lib.train import LossFn

__all__ = ["AWP", "AWPLoss", "awp_perturbation", "training_steps"]


def _check_gamma(gamma: float) -> None:
    if not gamma >= 0.0:
        raise ValueError(f"gamma (the relative weight-perturbation radius) must be >= 0, got {gamma}")


def _mean_cross_entropy(f: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(f(x), y)


def awp_perturbation(model: nn.Module, x_adv: Tensor, y: Tensor, *, gamma: float,
                     loss_on: Callable[[Callable[[Tensor], Tensor], Tensor, Tensor], Tensor] | None = None,
                     ) -> dict[str, Tensor]:
    """The AWP weight perturbation ``v`` (detached), one tensor per perturbable parameter.

    ``v_l = γ‖w_l‖ g_l/‖g_l‖`` with ``g`` the gradient, with respect to the weights, of ``loss_on(f, x_adv, y)``
    (default: mean cross-entropy), evaluated in the model's current mode. This extra forward pass runs on
    *copies* of the buffers, so batch-norm running statistics are not updated by it: a training step still
    updates them exactly once.
    """
    _check_gamma(gamma)
    names = perturbable_names(model)
    if not names:
        raise ValueError("the model has no parameter with two or more dimensions to perturb; AWP needs "
                         "convolution or linear weights")
    if loss_on is None:
        loss_on = _mean_cross_entropy
    params = dict(model.named_parameters())
    scratch_buffers = {name: b.clone() for name, b in model.named_buffers()}
    device = model_device(model)

    def f(x: Tensor) -> Tensor:
        return functional.call(model, {**params, **scratch_buffers}, x)

    value = loss_on(f, x_adv.to(device), y.to(device))
    grads = torch.autograd.grad(value, [params[n] for n in names], allow_unused=True)
    v: dict[str, Tensor] = {}
    for name, g in zip(names, grads):
        w = params[name].detach()
        if g is None:  # a weight that does not influence the loss (e.g. an unused head) stays put
            v[name] = torch.zeros_like(w)
            continue
        # a zero gradient gives a zero perturbation (no division by zero, no host-device sync)
        v[name] = (gamma * w.norm() / g.norm().clamp_min(1e-30) * g).detach()
    return v


class AWPLoss:
    """A ``train.fit`` loss hook: the robust loss at ``w + v``, ``v`` the AWP perturbation of this batch.

    ``robust`` (a :class:`mcar_lib.adversarial.RobustLoss`) crafts ``x_adv`` once per step (in eval mode) and
    says how the loss is taken on it; the perturbation costs one more gradient on top. For the first
    ``warmup_epochs`` epochs no weight perturbation is applied (plain adversarial training); counting epochs
    needs ``steps_per_epoch`` because ``fit`` calls the hook once per step. Use a fresh object for each
    training run: it counts the steps it has seen.
    """

    def __init__(self, robust: RobustLoss, *, gamma: float = 0.01, warmup_epochs: int = 0,
                 steps_per_epoch: int | None = None) -> None:
        _check_gamma(gamma)
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if warmup_epochs > 0 and (steps_per_epoch is None or steps_per_epoch < 1):
            raise ValueError("a warm-up needs steps_per_epoch (the number of batches per epoch, e.g. "
                             "len(train_loader)) so the hook knows when an epoch ends; pass a DataLoader "
                             "with a length to fit_adversarial")
        self.robust = robust
        self.gamma = gamma
        self.warmup_steps = warmup_epochs * (steps_per_epoch or 0)
        self.steps = 0

    @property
    def perturbing(self) -> bool:
        """Whether the next step perturbs the weights (False during the warm-up or with γ = 0)."""
        return self.gamma > 0 and self.steps >= self.warmup_steps

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        x_adv = self.robust.craft(model, x, y).detach()
        perturb = self.perturbing
        self.steps += 1
        if not perturb:
            return self.robust.loss_on(model, x_adv, y)
        v = awp_perturbation(model, x_adv, y, gamma=self.gamma, loss_on=self.robust.loss_on)
        perturbed = functional.shifted(dict(model.named_parameters()), v)
        return self.robust.loss_on(lambda x: functional.call(model, perturbed, x), x_adv, y)


@dataclass(frozen=True)
class AWP:
    """AWP's settings as a value (usable in cache keys): ``fit_adversarial(..., awp=AWP(gamma=0.01))``.

    ``gamma`` is the layer-wise relative radius (the paper: 0.01 for PGD-AT, 0.005 for TRADES);
    ``warmup_epochs`` epochs of plain adversarial training come first.
    """

    gamma: float = 0.01
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        _check_gamma(self.gamma)
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")

    def wrap(self, loss: RobustLoss, *, steps_per_epoch: int | None) -> LossFn:
        """The AWP version of ``loss`` (the hook :func:`mcar_lib.adversarial.fit_adversarial` asks for)."""
        return AWPLoss(loss, gamma=self.gamma, warmup_epochs=self.warmup_epochs, steps_per_epoch=steps_per_epoch)


def training_steps(model: nn.Module, x: Tensor, y: Tensor, *, robust: RobustLoss, gamma: float = 0.01,
                   lr: float = 0.01) -> dict[str, Callable[[], float]]:
    """Two zero-argument callables for a benchmark: one plain adversarial-training step and one AWP step.

    Both act on their own copy of ``model`` (in train mode) and the same batch ``(x, y)``, with plain SGD, and
    return the loss; each call is one full step (attack, forward, backward, update). ``model`` is not touched.
    The ratio of their times is AWP's overhead (target: at most 1.15 with PGD-10).
    """
    device = model_device(model)
    x, y = x.to(device), y.to(device)

    def make(loss_fn: LossFn) -> Callable[[], float]:
        net = copy.deepcopy(model).train()
        optimizer = torch.optim.SGD(net.parameters(), lr=lr)

        def step() -> float:
            loss = loss_fn(net, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.item()

        return step

    return {"adversarial": make(robust), "awp": make(AWPLoss(robust, gamma=gamma))}
