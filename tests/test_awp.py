"""AWP: the perturbation against a plain gradient loop, exact weight restoration, exclusions, warm-up."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcar_lib.adversarial import RobustLoss, fit_adversarial
from mcar_lib.attacks import PGD
from mcar_lib.awp import AWP, AWPLoss, awp_perturbation, training_steps
from mcar_lib.functional import perturbable_names, shifted
from mcar_lib.data import LabeledImages, loader

from helpers import assert_unchanged, batch, snapshot, tiny_cnn, warm_bn


def warmed_up(seed: int = 0) -> nn.Module:
    """A tiny CNN in train mode whose BN running statistics are not the defaults."""
    return warm_bn(tiny_cnn(seed), seed).train()


#: deterministic (no random start), so a test can craft the very same x_adv again
ROBUST = RobustLoss(PGD(eps=0.1, steps=2, random_start=False))


def reference_v(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, gamma: float) -> dict[str, torch.Tensor]:
    """v_l = γ‖w_l‖ g_l/‖g_l‖ by a plain backward on a copy (same mode), looping over the weights."""
    net = copy.deepcopy(model)
    net.zero_grad()
    F.cross_entropy(net(x_adv), y).backward()
    return {name: gamma * p.detach().norm() * p.grad / p.grad.norm()
            for name, p in net.named_parameters() if p.ndim > 1}


def test_perturbation_matches_plain_gradient_and_has_relative_norm() -> None:
    model = warmed_up()
    x, y = batch(10)
    gamma = 0.05
    x_adv = ROBUST.craft(model, x, y)
    before = snapshot(model)
    v = awp_perturbation(model, x_adv, y, gamma=gamma)
    assert_unchanged(model, before)  # the extra forward updates no BN statistics
    assert model.training
    expected = reference_v(model, x_adv, y, gamma)
    assert set(v) == set(expected)
    params = dict(model.named_parameters())
    for name in v:
        torch.testing.assert_close(v[name], expected[name], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(v[name].norm(), gamma * params[name].detach().norm(), rtol=1e-5, atol=0)


def test_excluded_parameters_are_never_perturbed() -> None:
    model = warmed_up()
    x, y = batch(10)
    v = awp_perturbation(model, ROBUST.craft(model, x, y), y, gamma=0.1)
    one_dim = {n for n, p in model.named_parameters() if p.ndim <= 1}
    assert one_dim and one_dim.isdisjoint(v)  # biases and BN scales/shifts are not in v
    assert set(v) == set(perturbable_names(model)) == {"conv1.weight", "conv2.weight", "fc.weight"}
    params = dict(model.named_parameters())
    moved = shifted(params, v)
    for name in one_dim:
        assert moved[name] is params[name]


def test_awp_step_restores_weights_bit_for_bit_and_uses_gradient_at_perturbed_point() -> None:
    model = warmed_up()
    x, y = batch(10)
    gamma = 0.05
    before = snapshot(model)
    x_adv = ROBUST.craft(model, x, y)
    v = reference_v(model, x_adv, y, gamma)

    loss = AWPLoss(ROBUST, gamma=gamma)(model, x, y)
    loss.backward()
    for name, p in model.named_parameters():  # weights bit-for-bit as before the step
        assert torch.equal(p.detach(), before.state[name]), name

    # independent: a copy whose weights really are w + v, plain forward/backward in train mode
    twin = copy.deepcopy(model)
    twin.load_state_dict(before.state)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if name in v:
                p.add_(v[name])
    twin.zero_grad()
    twin_loss = F.cross_entropy(twin(x_adv), y)
    twin_loss.backward()
    torch.testing.assert_close(loss, twin_loss, rtol=1e-5, atol=1e-6)
    twin_params = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, twin_params[name].grad, rtol=1e-4, atol=1e-6)
    # BN running statistics were updated exactly once, by the forward at w + v
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, dict(twin.named_buffers())[name], rtol=1e-5, atol=1e-6)


def test_warmup_skips_the_perturbation_for_the_first_epochs() -> None:
    model = warmed_up()
    model.eval()  # BN in eval mode so repeated calls see identical statistics
    x, y = batch(10)
    hook = AWPLoss(ROBUST, gamma=0.2, warmup_epochs=1, steps_per_epoch=2)
    plain = ROBUST(model, x, y).item()
    perturbed = AWPLoss(ROBUST, gamma=0.2)(model, x, y).item()
    assert perturbed != pytest.approx(plain)
    assert [hook(model, x, y).item() for _ in range(3)] == pytest.approx([plain, plain, perturbed], rel=1e-5)


def test_fit_adversarial_with_awp_trains_a_copy() -> None:
    model = tiny_cnn()
    before = snapshot(model)
    x, y = batch(24)
    data = loader(LabeledImages(x, y), 8, shuffle=True, seed=0)
    trained, history = fit_adversarial(model, data, epochs=2, attack=ROBUST, awp=AWP(gamma=0.01, warmup_epochs=1),
                                       show_progress=False)
    assert_unchanged(model, before)
    assert len(history.rows) == 2
    assert any(not torch.equal(p, before.state[n]) for n, p in trained.state_dict().items())


def test_benchmark_steps_run_on_copies() -> None:
    model = tiny_cnn()
    before = snapshot(model)
    x, y = batch(10)
    steps = training_steps(model, x, y, robust=ROBUST, gamma=0.01)
    assert set(steps) == {"adversarial", "awp"}
    losses = {name: step() for name, step in steps.items()}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert_unchanged(model, before)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="gamma"):
        AWP(gamma=-0.1)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        AWPLoss(ROBUST, gamma=0.01, warmup_epochs=2)
    with pytest.raises(ValueError, match="two or more dimensions"):
        awp_perturbation(nn.Sequential(nn.BatchNorm1d(3)), torch.rand(4, 3), torch.zeros(4, dtype=torch.long),
                         gamma=0.1)
