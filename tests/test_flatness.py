"""Flatness measures against plain loops on copies of the model, radii, filter normalisation, no mutation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcar_lib.attacks import PGD, pgd
from mcar_lib.flatness import (average_flatness, filter_normalized_direction, loss_curve,
                               relative_random_perturbation, worst_flatness)

from helpers import assert_unchanged, batch, chunks, snapshot, tiny_cnn, warm_bn


def warmed_up(seed: int = 0) -> nn.Module:
    """A tiny CNN in train mode with non-default BN statistics, so eval and train mode differ."""
    return warm_bn(tiny_cnn(seed), seed).train()


def data(n: int = 12, seed: int = 1, batch_size: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return chunks(*batch(n, seed), batch_size)


def shifted_copy(model: nn.Module, delta: dict[str, torch.Tensor], alpha: float = 1.0) -> nn.Module:
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name in delta:
                p.add_(alpha * delta[name])
    return net


DETERMINISTIC = PGD(eps=0.1, steps=3, random_start=False)


def reference_robust_loss(net: nn.Module, batches) -> float:
    """Mean CE on a PGD computed by attacks.pgd on a real (copied) model, summed by hand."""
    total, count = 0.0, 0
    for x, y in batches:
        x_adv = pgd(net, x, y, eps=0.1, steps=3, random_start=False)
        with torch.no_grad():
            total += F.cross_entropy(net(x_adv), y, reduction="sum").item()
        count += len(y)
    return total / count


def test_relative_perturbation_has_layerwise_radius_and_skips_1d() -> None:
    model = warmed_up()
    nu = relative_random_perturbation(model, 0.3, generator=torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    assert set(nu) == {n for n, p in params.items() if p.ndim > 1}
    for name, v in nu.items():
        torch.testing.assert_close(v.norm(), 0.3 * params[name].detach().norm(), rtol=1e-5, atol=0)


def test_filter_normalised_direction() -> None:
    model = warmed_up()
    d = filter_normalized_direction(model, generator=torch.Generator().manual_seed(0))
    for name, p in model.named_parameters():
        if p.ndim <= 1:
            assert torch.equal(d[name], torch.zeros_like(p)), name
            continue
        for i in range(p.shape[0]):  # plain loop over filters
            torch.testing.assert_close(d[name][i].norm(), p[i].detach().norm(), rtol=1e-5, atol=0)


def test_average_flatness_matches_a_loop_over_copied_models() -> None:
    model = warmed_up()
    batches = data()
    result = average_flatness(model, batches, attack=DETERMINISTIC, xi=0.2, n_samples=2, seed=3)
    gen = torch.Generator().manual_seed(3)  # the same draws, applied to real copies of the model
    expected = [reference_robust_loss(shifted_copy(model, relative_random_perturbation(model, 0.2, generator=gen)),
                                      batches) for _ in range(2)]
    reference = reference_robust_loss(copy.deepcopy(model).eval(), batches)
    assert result.loss == pytest.approx(reference, rel=1e-5)
    assert list(result.samples) == pytest.approx(expected, rel=1e-5)
    assert result.flatness == pytest.approx(sum(expected) / 2 - reference, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("measure", ["average", "worst"])
def test_zero_radius_gives_zero_flatness_even_with_random_starts(measure: str) -> None:
    model = warmed_up()
    if measure == "average":
        result = average_flatness(model, data(), attack=PGD(eps=0.1, steps=2), xi=0.0, n_samples=2)
    else:
        result = worst_flatness(model, data(), eps=0.1, xi=0.0, steps=2)
    assert result.flatness == 0.0
    assert result.loss > 0


def test_worst_flatness_reference_is_pgd_and_joint_loop_agrees() -> None:
    model = warmed_up()
    batches = data(n=6)
    x, y = batches[0]
    eps, steps, xi = 0.1, 2, 0.05
    result = worst_flatness(model, batches, eps=eps, xi=xi, steps=steps, seed=4)
    # the reference: plain PGD with a random start drawn from the same seed
    net = copy.deepcopy(model).eval()
    x_adv = pgd(net, x, y, eps=eps, steps=steps, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert result.loss == pytest.approx(F.cross_entropy(net(x_adv), y).item(), rel=1e-5)
    # the joint ascent, as a plain loop on a copied model (draw order: δ start, then per layer z and u)
    gen = torch.Generator().manual_seed(4)
    delta = ((x + eps * (2 * torch.rand(x.shape, generator=gen) - 1)).clamp(0, 1) - x)
    weights = {n: p for n, p in net.named_parameters() if p.ndim > 1}
    w0 = {n: p.detach().clone() for n, p in weights.items()}
    with torch.no_grad():
        for n, p in weights.items():
            z = torch.randn(p.shape, generator=gen, dtype=torch.float64).float()
            u = torch.rand((), generator=gen).item()
            p.add_(xi * w0[n].norm() * u * z / z.norm())
    for _ in range(steps):
        delta.requires_grad_(True)
        net.zero_grad()
        loss = F.cross_entropy(net(x + delta), y, reduction="sum")
        loss.backward()
        with torch.no_grad():
            delta = (delta + 2.5 * eps / steps * delta.grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
            for n, p in weights.items():
                nu = p - w0[n] + 2.5 * xi / steps * w0[n].norm() * p.grad / p.grad.norm()
                nu = nu * min(1.0, (xi * w0[n].norm() / nu.norm()).item())
                p.copy_(w0[n] + nu)
    with torch.no_grad():
        expected = F.cross_entropy(net(x + delta), y).item()
    assert result.perturbed_loss == pytest.approx(expected, rel=1e-4)


def test_loss_curve_matches_shifted_copies() -> None:
    model = warmed_up()
    batches = data()
    d = filter_normalized_direction(model, generator=torch.Generator().manual_seed(0))
    table = loss_curve(model, batches, direction=d, alphas=[0.0, 0.5], attack=DETERMINISTIC)
    assert list(table.columns) == ["alpha", "loss", "accuracy"]
    for alpha, loss in zip(table["alpha"], table["loss"]):
        assert loss == pytest.approx(reference_robust_loss(shifted_copy(model, d, alpha), batches), rel=1e-5)
    clean = loss_curve(model, batches, direction=d, alphas=[0.0])
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = sum(F.cross_entropy(net(x), y, reduction="sum").item() for x, y in batches) / 12
    assert clean["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_nothing_is_mutated() -> None:
    model = warmed_up()  # left in train mode on purpose
    batches = data()
    inputs = [(x.clone(), y.clone()) for x, y in batches]
    before = snapshot(model)
    d = filter_normalized_direction(model, generator=torch.Generator().manual_seed(0))
    average_flatness(model, batches, attack=PGD(eps=0.1, steps=1), xi=0.5, n_samples=1)
    worst_flatness(model, batches, eps=0.1, xi=0.01, steps=1)
    loss_curve(model, batches, direction=d, alphas=[-0.5, 0.5], attack=PGD(eps=0.1, steps=1))
    assert_unchanged(model, before)
    assert all(m.training for m in model.modules())
    for (x, y), (x0, y0) in zip(batches, inputs):
        assert torch.equal(x, x0) and torch.equal(y, y0)


def test_bad_input_is_refused() -> None:
    model = warmed_up()
    with pytest.raises(ValueError, match="xi"):
        average_flatness(model, data(), attack=None, xi=-1.0)
    with pytest.raises(ValueError, match="empty"):
        average_flatness(model, [], attack=None)
    with pytest.raises(KeyError, match="does not have"):
        loss_curve(model, data(), direction={"nope": torch.zeros(1)}, alphas=[0.0])
