"""Adversarial-training losses: crafted in eval mode, one training forward, BN touched only by that forward."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcar_lib import adversarial
from mcar_lib.adversarial import RobustLoss, fgsm_rs_loss, fit_adversarial, pgd_loss
from mcar_lib.attacks import PGD, pgd
from mcar_lib.train import SGDConfig

from helpers import batch, tiny_cnn, warm_bn


def bn_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_pgd_loss_updates_bn_like_one_plain_training_forward_on_x_adv() -> None:
    """Eval-mode crafting + one train-mode CE: BN statistics move exactly as in a plain CE step on x_adv."""
    x, y = batch(16)
    ours = tiny_cnn().train()
    loss = pgd_loss(eps=0.1, alpha=0.03, steps=4, random_start=False)(ours, x, y)

    plain = tiny_cnn().train()
    with torch.no_grad():
        x_adv = pgd(copy.deepcopy(plain), x, y, eps=0.1, alpha=0.03, steps=4, random_start=False)
    expected = F.cross_entropy(plain(x_adv), y)  # a plain CE training forward

    torch.testing.assert_close(loss, expected)
    after, reference = bn_state(ours), bn_state(plain)
    for key in reference:
        torch.testing.assert_close(after[key], reference[key], msg=key)
    assert after["bn1.num_batches_tracked"].item() == 1  # the attack's forwards did not count
    assert ours.training and all(m.training for m in ours.modules())


def test_robust_loss_gradient_is_the_clean_gradient_at_x_adv() -> None:
    """The attack leaves no parameter gradient behind: backward gives exactly ∇_w CE(f(x_adv)) once."""
    x, y = batch(16)
    model = tiny_cnn().train()
    robust = pgd_loss(eps=0.1, alpha=0.03, steps=3, random_start=False)
    x_adv = robust.craft(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    twin = copy.deepcopy(model)
    robust(model, x, y).backward()
    F.cross_entropy(twin(x_adv), y).backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_fgsm_rs_is_one_step_of_1_25_eps_from_a_uniform_start() -> None:
    model = tiny_cnn().double().eval()
    x, y = batch(16)
    x = x.double()
    eps = 0.1
    loss = fgsm_rs_loss(eps)
    assert isinstance(loss.attack, PGD)
    x_adv = loss.attack(model, x, y, generator=torch.Generator().manual_seed(7))
    # the reference: the same uniform start, one signed step of 1.25·eps, projection, clipping
    start = x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype) * 2 - 1) * eps
    start = start.clamp(0, 1).requires_grad_(True)
    F.cross_entropy(model(start), y, reduction="sum").backward()
    expected = (x + (start + 1.25 * eps * start.grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected.detach())


def test_fit_adversarial_trains_a_copy_and_hands_the_robust_loss_to_awp() -> None:
    x, y = batch(32)
    data = [(x[:16], y[:16]), (x[16:], y[16:])]
    model = tiny_cnn()
    before = copy.deepcopy(model.state_dict())

    class Recorder:
        """A stand-in for AWP: records what it is given and counts the steps its loss is used for."""

        def __init__(self) -> None:
            self.seen: list[object] = []
            self.calls = 0

        def wrap(self, loss: RobustLoss, *, steps_per_epoch: int | None):
            self.seen.append((loss, steps_per_epoch))

            def wrapped(net: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
                self.calls += 1
                return loss.loss_on(net, loss.craft(net, xb, yb), yb)
            return wrapped

    awp = Recorder()
    robust = pgd_loss(eps=0.1, steps=2)
    trained, history = fit_adversarial(model, data, epochs=2, attack=robust, awp=awp,
                                       sgd=SGDConfig(lr=0.05), show_progress=False)
    assert awp.seen == [(robust, 2)] and awp.calls == 4
    assert len(history.rows) == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(v, before[k]) for k, v in trained.state_dict().items())


def test_fit_adversarial_equals_a_plain_adversarial_training_loop() -> None:
    """Per batch: craft x_adv against the current weights (eval mode), then one SGD step on CE(x_adv) in train mode.
    A bare attack and the loss factory give the same training."""
    x, y = batch(32)
    x = x.double()
    data = [(x[:16], y[:16]), (x[16:], y[16:])]
    model = tiny_cnn().double()
    sgd = SGDConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, schedule="constant")
    net = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        for xb, yb in data:
            x_adv = pgd(net, xb, yb, eps=0.1, alpha=0.05, steps=2, random_start=False)
            optimizer.zero_grad()
            F.cross_entropy(net(x_adv), yb).backward()
            optimizer.step()
    attack = PGD(eps=0.1, alpha=0.05, steps=2, random_start=False)
    for given in (attack, pgd_loss(0.1, 0.05, 2, random_start=False)):
        trained, _ = fit_adversarial(model, data, epochs=2, attack=given, sgd=sgd, show_progress=False)
        for key, value in net.state_dict().items():
            torch.testing.assert_close(trained.state_dict()[key], value, rtol=1e-10, atol=1e-12, msg=key)


def test_bad_budget_is_reported() -> None:
    with pytest.raises(ValueError, match="eps"):
        adversarial.pgd_loss(eps=float("nan"))


def test_robust_loss_on_a_curve_point_uses_batch_statistics_and_trains_the_bends() -> None:
    from mcar_lib import curves

    a, b = warm_bn(tiny_cnn(0), 0).eval(), warm_bn(tiny_cnn(1), 1).eval()  # non-default running statistics
    curve = curves.Curve.between(a, b, n_bends=1)
    x, y = batch(16)
    robust = pgd_loss(eps=0.1, alpha=0.04, steps=3, random_start=False, bn="batch")
    point = curve.point(0.3)
    point.train()
    x_adv = robust.craft(point, x, y)
    # the same network as a standalone module, attacked with batch statistics, gives the same examples
    standalone = curve.at(0.3, [(torch.rand(16, 1, 8, 8), y)])
    expected = pgd(standalone, x, y, eps=0.1, alpha=0.04, steps=3, random_start=False, bn="batch")
    torch.testing.assert_close(x_adv, expected)
    assert point.training
    before = {k: v.clone() for k, v in a.state_dict().items()}
    trained, history = curves.fit_curve(curve, [(x, y)], steps=2, loss_fn=robust, show_progress=False)
    assert not torch.equal(trained.bends, curve.bends)
    assert torch.equal(trained.start, curve.start) and torch.equal(trained.end, curve.end)
    for k, v in a.state_dict().items():
        assert torch.equal(v, before[k]), k
