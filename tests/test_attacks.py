"""PGD / FGSM against plain reference loops, budgets, and the no-mutation policy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcar_lib import attacks
from mcar_lib.attacks import PGD, Ensemble, fgsm, pgd, robust_evaluate

from helpers import assert_unchanged, batch, snapshot, tiny_cnn, warm_bn


def trained_bn(seed: int = 0) -> nn.Module:
    """A tiny CNN with dropout whose BN running statistics are not the defaults (so eval and train mode differ)."""
    return warm_bn(tiny_cnn(seed, dropout=0.5), seed).train()


def reference_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
                  norm: str) -> torch.Tensor:
    """The textbook loop, written independently: eval mode, start at x, ascend, project, clip."""
    net = copy.deepcopy(model).eval()
    x_adv = x.clone()
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(net(x_adv), y, reduction="sum")
        loss.backward()
        g = x_adv.grad
        if norm == "linf":
            x_adv = x_adv + alpha * g.sign()
            x_adv = torch.max(torch.min(x_adv, x + eps), x - eps)
        else:
            g_norm = g.reshape(len(g), -1).norm(dim=1).reshape(-1, 1, 1, 1)
            x_adv = x_adv + alpha * g / g_norm
            d = x_adv - x
            d_norm = d.reshape(len(d), -1).norm(dim=1).reshape(-1, 1, 1, 1)
            x_adv = x + d * torch.clamp(eps / d_norm, max=1.0)
        x_adv = x_adv.clamp(0, 1)
    return x_adv.detach()


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_output_within_budget_and_box(norm: str, eps: float) -> None:
    model = trained_bn()
    x, y = batch()
    x_adv = pgd(model, x, y, eps=eps, steps=5, norm=norm, restarts=2, generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert (size > 0).any()  # the attack moved


def test_random_start_alone_is_within_budget() -> None:
    model = trained_bn()
    x, y = batch()
    for norm, eps in (("linf", 0.2), ("l2", 1.0)):
        x0 = pgd(model, x, y, eps=eps, steps=0, norm=norm, random_start=True)
        delta = (x0 - x).flatten(1)
        size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
        assert (size <= eps + 1e-6).all() and (size > 0).all()


def test_model_mode_buffers_and_grads_untouched() -> None:
    model = trained_bn()
    model.train()
    model[1].eval()  # a mixed-mode model: every submodule's own flag must come back
    model[0].weight.requires_grad_(False)  # and a frozen parameter stays frozen
    before = snapshot(model)
    x, y = batch()
    for norm in ("linf", "l2"):
        pgd(model, x, y, eps=0.1, steps=3, norm=norm, restarts=2)
    fgsm(model, x, y, eps=0.1)
    robust_evaluate(model, [(x, y)], PGD(eps=0.1, steps=2))
    assert_unchanged(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_attack_runs_in_eval_mode() -> None:
    """A train-mode model (dropout, batch BN) is attacked as its eval-mode self: same result as from eval."""
    model = trained_bn()
    x, y = batch()
    from_train = pgd(model.train(), x, y, eps=0.1, steps=3, random_start=False)
    from_eval = pgd(model.eval(), x, y, eps=0.1, steps=3, random_start=False)
    assert torch.equal(from_train, from_eval)


def test_zero_steps_without_random_start_returns_clean_input() -> None:
    model = trained_bn()
    x, y = batch()
    assert torch.equal(pgd(model, x, y, eps=0.3, steps=0, random_start=False), x)


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 0.1, 0.03), ("l2", 0.8, 0.25)])
def test_agrees_with_reference_loop(norm: str, eps: float, alpha: float) -> None:
    model = trained_bn().double()
    x, y = batch()
    x = x.double()
    ours = pgd(model, x, y, eps=eps, alpha=alpha, steps=6, norm=norm, random_start=False)
    ref = reference_pgd(model, x, y, eps=eps, alpha=alpha, steps=6, norm=norm)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)


def test_fgsm_is_one_full_signed_step() -> None:
    model = trained_bn().double()
    x, y = batch()
    x = x.double()
    eps = 0.07
    net = copy.deepcopy(model).eval()
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(net(xr), y).backward()
    expected = (x + eps * xr.grad.sign()).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, x, y, eps=eps), expected, atol=1e-12, rtol=0)


def test_step_does_not_depend_on_batch_size() -> None:
    model = trained_bn().double()
    x, y = batch(10)
    x = x.double()
    whole = pgd(model, x, y, eps=0.5, alpha=0.2, steps=3, norm="l2", random_start=False)
    halves = torch.cat([pgd(model, x[:5], y[:5], eps=0.5, alpha=0.2, steps=3, norm="l2", random_start=False),
                        pgd(model, x[5:], y[5:], eps=0.5, alpha=0.2, steps=3, norm="l2", random_start=False)])
    torch.testing.assert_close(whole, halves)


def per_sample(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = copy.deepcopy(model).eval()(x_adv)
    return logits.argmax(1) != y, F.cross_entropy(logits, y, reduction="none")


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
def test_restarts_never_weaker_than_a_single_run_from_the_same_start(norm: str, eps: float) -> None:
    model = trained_bn().double()
    x, y = batch(24)
    x = x.double()
    single = pgd(model, x, y, eps=eps, steps=2, norm=norm, restarts=1, generator=torch.Generator().manual_seed(5))
    multi = pgd(model, x, y, eps=eps, steps=2, norm=norm, restarts=4, generator=torch.Generator().manual_seed(5))
    fooled_1, loss_1 = per_sample(model, single, y)
    fooled_k, loss_k = per_sample(model, multi, y)
    assert (fooled_k | ~fooled_1).all()  # never un-fools a sample
    same = fooled_k == fooled_1
    assert (loss_k[same] >= loss_1[same] - 1e-12).all()
    assert not torch.equal(single, multi)  # the later restarts did win somewhere


def test_plain_callable_and_ensemble() -> None:
    a, b = trained_bn(0).eval(), trained_bn(1).eval()
    x, y = batch()
    # a plain function is attacked like the module it wraps
    torch.testing.assert_close(pgd(lambda z: a(z), x, y, eps=0.1, steps=2, random_start=False),
                               pgd(a, x, y, eps=0.1, steps=2, random_start=False))
    ens = Ensemble([a, b])
    with torch.no_grad():
        expected = torch.log((F.softmax(a(x), 1) + F.softmax(b(x), 1)) / 2)
        torch.testing.assert_close(ens(x), expected)
    x_adv = pgd(ens, x, y, eps=0.1, steps=3, random_start=False)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    with torch.no_grad():
        assert F.cross_entropy(ens(x_adv), y) > F.cross_entropy(ens(x), y)


def test_robust_evaluate_matches_a_manual_computation() -> None:
    model = trained_bn().eval()
    x, y = batch(20)
    attack = PGD(eps=0.1, steps=3, random_start=False)
    result = robust_evaluate(model, [(x[:8], y[:8]), (x[8:], y[8:])], attack)
    x_adv = pgd(model, x, y, eps=0.1, steps=3, random_start=False)
    with torch.no_grad():
        logits = model(x_adv)
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert result["accuracy"] == pytest.approx(100.0 * (logits.argmax(1) == y).float().mean().item())
    assert attacks.robust_accuracy(model, [(x, y)], attack) == pytest.approx(result["accuracy"])
    assert attacks.robust_loss(model, [(x, y)], attack) == pytest.approx(result["loss"], rel=1e-5)


def test_seeded_evaluation_is_reproducible() -> None:
    model = trained_bn().eval()
    x, y = batch(20)
    attack = PGD(eps=0.1, steps=2)
    assert robust_evaluate(model, [(x, y)], attack, seed=3) == robust_evaluate(model, [(x, y)], attack, seed=3)


def test_clear_errors() -> None:
    model = trained_bn()
    x, y = batch()
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, eps=0.1, norm="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, eps=-0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd(model, x * 255, y, eps=0.1)
    with pytest.raises(ValueError, match="restarts"):
        pgd(model, x, y, eps=0.1, restarts=0)
    with pytest.raises(ValueError, match="empty"):
        robust_evaluate(model, [], PGD(eps=0.1))


def test_batch_statistics_mode_matches_a_reference_and_updates_nothing() -> None:
    """bn="batch": BN normalises with the batch's statistics (dropout off), running averages untouched."""
    model = trained_bn().double()
    model.train()
    before = snapshot(model)
    x, y = batch()
    x = x.double()
    ours = pgd(model, x, y, eps=0.1, alpha=0.03, steps=4, random_start=False, bn="batch")
    ref_net = copy.deepcopy(model).eval()
    for m in ref_net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()  # the copy's running averages change; the model under attack must not
    ref = reference_pgd(model, x, y, eps=0.1, alpha=0.03, steps=4, norm="linf")  # eval-mode reference
    ref_batch = x.clone()
    for _ in range(4):
        ref_batch = ref_batch.detach().requires_grad_(True)
        F.cross_entropy(ref_net(ref_batch), y, reduction="sum").backward()
        ref_batch = torch.max(torch.min(ref_batch + 0.03 * ref_batch.grad.sign(), x + 0.1), x - 0.1).clamp(0, 1)
    torch.testing.assert_close(ours, ref_batch.detach(), atol=1e-10, rtol=0)
    assert not torch.equal(ours, ref)  # batch statistics really were used
    assert_unchanged(model, before)
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
