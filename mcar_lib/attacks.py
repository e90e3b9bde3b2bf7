"""Evasion attacks (PGD, FGSM) and robust accuracy / robust loss over a data set.

An attack answers "how bad can the loss get inside a small ball around each input?". Everything here works on
any model-like callable: a plain function, an ``nn.Module``, a curve's point ``curve.point(t)`` or model
``curve.at(t)``, or an :class:`Ensemble` of models along a path. Three rules hold for every attack:

* inputs and outputs are images in [0, 1] (normalisation, if any, lives inside the model), so budgets are in
  pixel units;
* the model is attacked in **eval mode** and its batch-norm statistics are never touched; the caller's
  train/eval flags are restored afterwards (adversarial training crafts in eval mode, then trains in train mode);
* only the **input** gets a gradient: parameters keep ``requires_grad`` as they were and no ``.grad`` is left on
  them, and autograd skips the weight-gradient work altogether, so one PGD step costs one forward plus one
  input-gradient backward and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcar_lib.checks import check_finite_weights, check_labels
from mcar_lib.data import BatchSource, iter_batches
from mcar_lib.modes import BN_MODES, BNMode, attack_mode
from mcar_lib.repro import model_device

Model = Callable[[Tensor], Tensor]
Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")


class Attack(Protocol):
    """An attack: ``attack(model, x, y) -> x_adv`` (same shape as ``x``, values in [0, 1])."""

    def __call__(self, model: Model, x: Tensor, y: Tensor) -> Tensor: ...


# ---------------------------------------------------------------------------------------------- helpers

def _device_of(model: Model, fallback: torch.device) -> torch.device:
    return model_device(model) if isinstance(model, nn.Module) else fallback


def _check_budget(eps: float, norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose 'linf' or 'l2'")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite non-negative budget in pixel units, got {eps}")


def check_images(x: Tensor, y: Tensor) -> None:
    """Images must be a float batch in [0, 1] (NaN and inf fail too) with one integer label each.

    One reduction and one host-device synchronisation for the whole batch.
    """
    if x.ndim < 2:
        raise ValueError(f"expected x of shape N×... and y of N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    check_labels(y, len(x))
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor of images in [0, 1], got dtype {x.dtype}")
    if len(x):
        low, high = (v.item() for v in torch.aminmax(x.detach()))
        if not (0.0 <= low and high <= 1.0):  # NaN fails every comparison, so it is caught here too
            raise ValueError(f"x must hold finite images in [0, 1] (got min {low:.3g}, max {high:.3g}); normalise "
                             "inside the model, not in the data, and remove NaN/inf")


def per_sample_norm(v: Tensor) -> Tensor:
    """The l2 norm of each sample of a batch, shaped N×1×1×... for broadcasting."""
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))


def _uniform_noise(x: Tensor, eps: float, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A uniform random point of the ``norm`` ball of radius ``eps`` around 0, one per sample."""
    where = generator.device if generator is not None else x.device
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=where, dtype=x.dtype) * 2 - 1
        return (noise * eps).to(x.device)
    # uniform in the l2 ball: a Gaussian direction, radius eps·u^(1/d)
    direction = torch.randn(x.shape, generator=generator, device=where, dtype=x.dtype)
    direction = direction / per_sample_norm(direction).clamp_min(1e-12)
    d = x[0].numel()
    u = torch.rand((len(x),) + (1,) * (x.ndim - 1), generator=generator, device=where, dtype=x.dtype)
    return (direction * eps * u.pow(1.0 / d)).to(x.device)


def _project(delta: Tensor, eps: float, norm: Norm) -> Tensor:
    """Project perturbations back onto the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def _ascent_direction(grad: Tensor, norm: Norm) -> Tensor:
    """The steepest-ascent direction of unit ``norm`` size: sign for l∞, normalised gradient for l2."""
    if norm == "linf":
        return grad.sign()
    return grad / per_sample_norm(grad).clamp_min(1e-12)


def input_gradient(model: Model, x: Tensor, y: Tensor) -> Tensor:
    """∇ₓ of the summed cross-entropy, in the model's current mode: one forward, one backward to the input only
    (no parameter ``.grad`` is touched). Each PGD step follows it; chapter 5 uses it as the first-order term."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


# -------------------------------------------------------------------------------------------------- PGD

def pgd(model: Model, x: Tensor, y: Tensor, *, eps: float, alpha: float | None = None, steps: int = 10,
        norm: Norm = "linf", random_start: bool = True, restarts: int = 1,
        bn: BNMode = "eval", generator: torch.Generator | None = None, validate: bool = True) -> Tensor:
    """Projected gradient ascent on the cross-entropy inside the ``norm`` ball of radius ``eps`` (Madry et al.).

    Each step moves by ``alpha`` (default ``2.5·eps/steps``) along the sign of the input gradient (l∞) or the
    normalised gradient (l2), then projects back onto the ball and onto [0, 1]. ``random_start`` begins at a
    uniform point of the ball; with ``restarts > 1`` the attack is repeated from fresh starts and, per sample,
    the strongest result is kept (a misclassified one first, then the highest loss). The loss is *summed* over
    the batch, so the step does not depend on the batch size. ``bn`` chooses the batch-norm behaviour during the
    attack (see :func:`attack_mode`; running statistics are never updated). Returns ``x_adv`` (detached, on
    ``x``'s device). ``validate=False`` skips the checks of the images and of the model's weights (a
    host-device synchronisation each), for training loops that checked their data once already.
    """
    _check_budget(eps, norm)
    if validate:
        check_images(x, y)
        if isinstance(model, nn.Module):
            check_finite_weights(model, "the attacked model")
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    if restarts < 1:
        raise ValueError(f"restarts must be at least 1, got {restarts}")
    if alpha is None:
        alpha = 2.5 * eps / max(steps, 1)
    if alpha < 0:
        raise ValueError(f"alpha (the step size) must be non-negative, got {alpha}")
    device = _device_of(model, x.device)
    x0, y0 = x.detach().to(device), y.to(device)
    best: Tensor | None = None
    best_key: tuple[Tensor, Tensor] | None = None
    with attack_mode(model, bn):
        for _ in range(restarts):
            delta = _uniform_noise(x0, eps, norm, generator) if random_start else torch.zeros_like(x0)
            x_adv = (x0 + delta).clamp(0.0, 1.0)
            for _ in range(steps):
                step = alpha * _ascent_direction(input_gradient(model, x_adv, y0), norm)
                x_adv = (x0 + _project(x_adv + step - x0, eps, norm)).clamp(0.0, 1.0)
            if restarts == 1:
                best = x_adv
                break
            best, best_key = _keep_stronger(model, x_adv, y0, best, best_key)
    assert best is not None
    return best.detach().to(x.device)


def _strength(model: Model, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample: (misclassified, loss), the order in which restarts are compared."""
    with torch.no_grad():
        logits = model(x_adv)
        return logits.argmax(1) != y, F.cross_entropy(logits, y, reduction="none")


def _keep_stronger(model: Model, x_adv: Tensor, y: Tensor, best: Tensor | None,
                   best_key: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Merge a restart into the running best: per sample, fooled beats not fooled, then higher loss wins."""
    fooled, loss = _strength(model, x_adv, y)
    if best is None or best_key is None:
        return x_adv, (fooled, loss)
    best_fooled, best_loss = best_key
    better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
    mask = better.view(-1, *([1] * (x_adv.ndim - 1)))
    return (torch.where(mask, x_adv, best),
            (torch.where(better, fooled, best_fooled), torch.where(better, loss, best_loss)))


def fgsm(model: Model, x: Tensor, y: Tensor, *, eps: float, norm: Norm = "linf") -> Tensor:
    """The fast gradient sign method (Goodfellow et al.): one full step of size ``eps``, no random start."""
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1, norm=norm, random_start=False)


@dataclass(frozen=True)
class PGD:
    """PGD's settings as a value: callable as an :class:`Attack`, printable, and usable in cache keys.

    ``PGD(eps=0.1, steps=1, alpha=0.125)`` is FGSM with a random start (Wong et al. 2020); see
    :func:`fgsm_rs`.
    """

    eps: float
    alpha: float | None = None
    steps: int = 10
    norm: Norm = "linf"
    random_start: bool = True
    restarts: int = 1
    bn: BNMode = "eval"

    def __post_init__(self) -> None:
        _check_budget(self.eps, self.norm)
        if self.bn not in BN_MODES:
            raise ValueError(f"unknown bn mode {self.bn!r}; choose 'eval' or 'batch'")
        if self.steps < 0 or self.restarts < 1:
            raise ValueError(f"PGD needs steps >= 0 and restarts >= 1, got steps={self.steps}, "
                             f"restarts={self.restarts}")

    def __call__(self, model: Model, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None,
                 validate: bool = True) -> Tensor:
        return pgd(model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm,
                   random_start=self.random_start, restarts=self.restarts, bn=self.bn, generator=generator,
                   validate=validate)

    @property
    def step_size(self) -> float:
        """The step size actually used (``alpha`` or its default ``2.5·eps/steps``)."""
        return self.alpha if self.alpha is not None else 2.5 * self.eps / max(self.steps, 1)


def fgsm_rs(eps: float, alpha: float | None = None, norm: Norm = "linf", bn: BNMode = "eval") -> PGD:
    """FGSM with a random start (Wong et al. 2020): a uniform start, then one step of ``alpha = 1.25·eps``."""
    return PGD(eps=eps, alpha=1.25 * eps if alpha is None else alpha, steps=1, norm=norm, random_start=True, bn=bn)


# --------------------------------------------------------------------------------------------- ensembles

class Ensemble(nn.Module):
    """The average prediction of several models (e.g. models sampled along a path).

    The output is the log of the mean of the members' softmax probabilities, so cross-entropy on it is the
    ensemble's loss and an attack on it is a white-box attack on the whole ensemble (not on one member).
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(models) == 0:
            raise ValueError("an Ensemble needs at least one model")
        self.members = nn.ModuleList(models)

    def forward(self, x: Tensor) -> Tensor:
        log_probs = torch.stack([F.log_softmax(m(x), dim=1) for m in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


# ------------------------------------------------------------------------------------ robust evaluation

def robust_evaluate(model: Model, data: BatchSource, attack: Attack, *, seed: int | None = 0,
                    batch_size: int = 512) -> dict[str, float]:
    """Robust loss (nats) and robust accuracy (%) of ``model``: mean CE and accuracy on ``attack``'s examples.

    ``attack(model, x, y)`` is called per batch (e.g. ``PGD(eps=0.1)``); with a ``seed`` the random starts
    are reproducible (attacks that accept a ``generator`` get one seeded with it). A model with non-finite
    weights is refused. Sums stay on the device and are read once at the end.
    """
    fallback = torch.device("cpu")
    device = _device_of(model, fallback)
    if isinstance(model, nn.Module):
        check_finite_weights(model, "the attacked model")
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    for x, y in iter_batches(data, batch_size):
        x, y = x.to(device), y.to(device)
        x_adv = _call_attack(attack, model, x, y, generator)
        with attack_mode(model), torch.no_grad():
            logits = model(x_adv)
        total_loss += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    if count == 0:
        raise ValueError("cannot evaluate robustness on an empty data set")
    return {"loss": float(total_loss) / count, "accuracy": 100.0 * int(correct) / count}


def _call_attack(attack: Attack, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Tensor:
    """One batch of a robust evaluation: the model was checked once for the whole evaluation, the images here."""
    if isinstance(attack, PGD):
        check_images(x, y)
        return attack(model, x, y, generator=generator, validate=False)
    return attack(model, x, y)


def robust_accuracy(model: Model, data: BatchSource, attack: Attack, *, seed: int | None = 0) -> float:
    """Accuracy (%) on adversarial examples crafted by ``attack`` against ``model`` itself."""
    return robust_evaluate(model, data, attack, seed=seed)["accuracy"]


def robust_loss(model: Model, data: BatchSource, attack: Attack, *, seed: int | None = 0) -> float:
    """Mean cross-entropy (nats) on adversarial examples crafted by ``attack`` against ``model`` itself."""
    return robust_evaluate(model, data, attack, seed=seed)["loss"]
