"""Adversarial training: the robust loss as a drop-in ``loss_fn`` for ``train.fit`` and ``curves.fit_curve``.

Madry et al. (2018) train on the worst case inside the threat model, min_w E max_{‖δ‖≤ε} ℓ(f_w(x+δ), y), and
approximate the inner maximum with PGD. Here that is a :class:`RobustLoss`: it first *crafts* ``x_adv`` against
the model in eval mode (so the attack's many forward passes leave batch-norm statistics alone), then returns
the cross-entropy on ``x_adv`` in the caller's train mode, exactly once, like a plain training step would.

The two halves are separate on purpose: :meth:`RobustLoss.craft` gives ``x_adv`` alone and
:meth:`RobustLoss.loss_on` the training loss on given examples, so a method that changes the *weights* before
the loss (AWP, in ``mcar_lib.awp``) can reuse the attack and wrap the loss without copying either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from mcar_lib.attacks import PGD, Attack, Model, Norm, fgsm_rs
from mcar_lib.modes import BNMode
from mcar_lib.train import History, LossFn, SGDConfig, fit


@dataclass(frozen=True)
class RobustLoss:
    """Cross-entropy on adversarial examples crafted by ``attack`` against the model being trained.

    Callable as a :data:`mcar_lib.train.LossFn`: ``loss(model, x, y)`` with the model in train mode.
    """

    attack: Attack

    def craft(self, model: Model, x: Tensor, y: Tensor) -> Tensor:
        """``x_adv`` against ``model`` (the attack runs in eval mode; BN statistics and modes untouched).

        The inputs are not re-validated here (that costs a host-device synchronisation per step): the
        training loop checked its data once.
        """
        if isinstance(self.attack, PGD):
            return self.attack(model, x, y, validate=False)
        return self.attack(model, x, y)

    def loss_on(self, model: Model, x_adv: Tensor, y: Tensor) -> Tensor:
        """The training loss on already-crafted examples: mean CE, one forward in the model's current mode."""
        return F.cross_entropy(model(x_adv), y)

    def __call__(self, model: Model, x: Tensor, y: Tensor) -> Tensor:
        return self.loss_on(model, self.craft(model, x, y), y)


def pgd_loss(eps: float, alpha: float | None = None, steps: int = 10, *, norm: Norm = "linf",
             random_start: bool = True, bn: BNMode = "eval") -> RobustLoss:
    """PGD adversarial training's loss (Madry et al. 2018): CE on PGD-``steps`` examples of budget ``eps``.

    ``bn="eval"`` crafts against the model's running statistics (Madry et al.; the default for training a
    network). For adversarial *curve* training of a batch-norm network use ``bn="batch"``: an interior point
    of the curve has no running statistics yet, so the attack uses the batch statistics the training forward
    uses (nothing is updated either way).
    """
    return RobustLoss(PGD(eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start, bn=bn))


def fgsm_rs_loss(eps: float, alpha: float | None = None, *, bn: BNMode = "eval") -> RobustLoss:
    """"Fast is better than free" (Wong et al. 2020): CE on FGSM examples from a random start, ``alpha=1.25·eps``."""
    return RobustLoss(fgsm_rs(eps, alpha, bn=bn))


class LossWrapper(Protocol):
    """A training method that changes how the robust loss is taken (AWP): ``wrap`` returns the new loss."""

    def wrap(self, loss: RobustLoss, *, steps_per_epoch: int | None) -> LossFn: ...


def fit_adversarial(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]], *, epochs: int,
                    attack: RobustLoss | Attack, awp: LossWrapper | None = None, sgd: SGDConfig = SGDConfig(),
                    epoch_end: Callable[[nn.Module, int], dict[str, float]] | None = None,
                    show_progress: bool = True) -> tuple[nn.Module, History]:
    """Adversarially train a copy of ``model``; return ``(trained_copy, history)`` (a thin layer on ``train.fit``).

    ``attack`` is a :class:`RobustLoss` (:func:`pgd_loss`, :func:`fgsm_rs_loss`) or a bare attack such as
    ``attacks.PGD(eps=0.1, steps=5)``. ``awp`` (see ``mcar_lib.awp``) wraps the robust loss, e.g. to perturb the
    weights before the loss is taken.
    """
    loss = attack if isinstance(attack, RobustLoss) else RobustLoss(attack)
    loss_fn: LossFn = loss
    if awp is not None:
        try:
            steps_per_epoch: int | None = len(data)  # type: ignore[arg-type]
        except TypeError:
            steps_per_epoch = None
        loss_fn = awp.wrap(loss, steps_per_epoch=steps_per_epoch)
    return fit(model, data, epochs=epochs, sgd=sgd, loss_fn=loss_fn, epoch_end=epoch_end,
               show_progress=show_progress)
