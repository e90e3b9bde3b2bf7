"""Curves: coefficients, exact endpoints, gradients, no mutation, BN recomputation, training, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

from mcar_lib import models
from mcar_lib.curves import Curve, bezier_coefficients, fit_curve, polychain_coefficients
from mcar_lib.train import SGDConfig

from helpers import assert_unchanged, small_cnn, snapshot, tiny_cnn, warm_bn


def _pair(name: str = "small_cnn", seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Two endpoints with batch norm whose running statistics differ from the defaults and from each other."""
    if name == "resnet18":
        torch.manual_seed(seed)
        a, b = torchvision.models.resnet18(num_classes=10), torchvision.models.resnet18(num_classes=10)
    else:
        a, b = (small_cnn(2 * seed + i, width=4, classes=10, size=28) for i in (0, 1))
    return warm_bn(a, seed + 1).eval(), warm_bn(b, seed + 2).eval()


# ------------------------------------------------------------------------------------------ coefficients

@pytest.mark.parametrize("n_bends", [0, 1, 3])
def test_bezier_coefficients_match_binomial_formula(n_bends: int) -> None:
    m = n_bends + 1
    for t in (0.0, 0.13, 0.5, 0.77, 1.0):
        expected = [math.comb(m, k) * t**k * (1 - t) ** (m - k) for k in range(m + 1)]
        got = bezier_coefficients(t, n_bends, dtype=torch.float64)
        assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-15)
    ts = torch.linspace(0, 1, 7)
    assert torch.allclose(bezier_coefficients(ts, n_bends).sum(-1), torch.ones(7))


def test_polychain_coefficients_are_hat_functions() -> None:
    n = 2  # control points at t = 0, 1/3, 2/3, 1
    for k in range(n + 2):
        one_hot = torch.zeros(n + 2)
        one_hot[k] = 1.0
        assert torch.allclose(polychain_coefficients(k / (n + 1), n), one_hot, atol=1e-6)
    # halfway between the second and third control points
    assert torch.allclose(polychain_coefficients(0.5, n), torch.tensor([0.0, 0.5, 0.5, 0.0]), atol=1e-6)


def test_weights_follow_the_bezier_formula_and_start_on_the_line() -> None:
    a, b = _pair()
    curve = Curve.between(a, b)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    t = 0.3
    for name, w in curve.weights_at(t).items():  # untrained: the bend is the midpoint, w(t) is the line
        assert torch.allclose(w, (1 - t) * pa[name] + t * pb[name], atol=1e-6)
    with torch.no_grad():
        curve.bends.add_(torch.randn_like(curve.bends))
    theta = curve.unflatten(curve.bends[0].detach())
    for name, w in curve.weights_at(t).items():
        direct = (1 - t) ** 2 * pa[name] + 2 * t * (1 - t) * theta[name] + t**2 * pb[name]
        assert torch.allclose(w, direct, atol=1e-6)
    chain = Curve.between(a, b, kind="polychain")
    with torch.no_grad():
        chain.bends.add_(1.0)
    assert torch.equal(chain.flat_weights_at(0.5), chain.bends[0].detach())


# -------------------------------------------------------------------------------------- exact endpoints

@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_curve_reproduces_both_endpoints_exactly(name: str) -> None:
    a, b = _pair(name)
    x = torch.rand(1 if name == "resnet18" else 4, *((3, 32, 32) if name == "resnet18" else (1, 28, 28)))
    curve = Curve.between(a, b, n_bends=2).eval()
    with torch.no_grad():
        curve.bends.add_(0.1 * torch.randn_like(curve.bends))  # a trained-looking curve
        for t, end in ((0.0, a), (1.0, b)):
            expected = end(x)
            assert torch.equal(curve(x, t), expected)
            assert torch.equal(curve.at(t)(x), expected)
            assert torch.equal(curve.at(t, [(torch.rand_like(x), None)])(x), expected)  # own buffers kept
            exported = curve.at(t)
            for key, value in end.state_dict().items():
                assert torch.equal(exported.state_dict()[key], value), key
    if name == "small_cnn":  # train mode too (batch statistics), without touching anyone's buffers
        xb = torch.rand(8, 1, 28, 28)
        twin = copy.deepcopy(a).train()
        curve.train()
        assert torch.allclose(curve(xb, 0.0), twin(xb), atol=0, rtol=0)


# -------------------------------------------------------------------------------- gradients, no mutation

def test_gradients_reach_the_bends_only_and_inputs_are_unchanged() -> None:
    a, b = _pair()
    a.train()  # mixed modes must survive as well
    snaps = (snapshot(a), snapshot(b))
    curve = Curve.between(a, b, n_bends=2).train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(curve(x, 0.4), y).backward()
    assert curve.bends.grad is not None and curve.bends.grad.abs().sum() > 0
    assert not curve.start.requires_grad and not curve.end.requires_grad
    assert curve.start.grad is None and curve.end.grad is None
    assert [n for n, p in curve.named_parameters()] == ["bends"]
    bn = [(torch.rand(8, 1, 28, 28), y)]
    curve.at(0.4, bn)
    curve.eval()(x, 0.4)
    fit_curve(curve, [(x, y)], steps=2, show_progress=False)
    for model, snap in zip((a, b), snaps):
        assert_unchanged(model, snap)
    assert a.training and not b.training


def test_train_mode_forward_leaves_endpoint_buffers_alone() -> None:
    a, b = _pair()
    curve = Curve.between(a, b).train()
    before = {k: v.clone() for k, v in curve.buffers_a.as_dict().items()}
    curve(torch.rand(8, 1, 28, 28), 0.0)
    for k, v in curve.buffers_a.as_dict().items():
        assert torch.equal(v, before[k])


def test_standalone_export_is_detached() -> None:
    a, b = _pair()
    curve = Curve.between(a, b)
    model = curve.at(0.5, [torch.rand(8, 1, 28, 28)])
    assert all(p.grad_fn is None and p.is_leaf for p in model.parameters())
    before = curve.flat_weights_at(0.5).detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(curve.flat_weights_at(0.5).detach(), before)


def test_tied_parameters_are_tied_again_in_the_export() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(4, 4)
            self.dec = nn.Linear(4, 4)
            self.dec.weight = self.enc.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dec(self.enc(x))

    a, b = Tied(), Tied()
    model = Curve.between(a, b).at(0.5)
    assert model.dec.weight is model.enc.weight
    x = torch.rand(3, 4)
    assert torch.equal(Curve.between(a, b).at(0.0)(x), a(x))


# ---------------------------------------------------------------------------------------- batch norm

def test_bn_recompute_matches_a_plain_loop_over_layer_inputs() -> None:
    a, b = _pair()
    curve = Curve.between(a, b)
    with torch.no_grad():
        curve.bends.add_(0.05 * torch.randn_like(curve.bends))
    gen = torch.Generator().manual_seed(7)
    bn_data = [(torch.rand(16, 1, 28, 28, generator=gen), torch.zeros(16, dtype=torch.long)) for _ in range(3)]
    t = 0.3
    exported = curve.at(t, bn_data)

    # independent computation: a fresh model with w(t), train mode, record every BN layer's input per batch
    plain = models.build("small_cnn", width=4)
    plain.load_state_dict({k: v.detach() for k, v in curve.weights_at(t).items()}, strict=False)
    plain.train()
    inputs: dict[str, list[torch.Tensor]] = {"bn1": [], "bn2": []}
    hooks = [getattr(plain, n).register_forward_pre_hook(lambda m, i, n=n: inputs[n].append(i[0].detach()))
             for n in inputs]
    with torch.no_grad():
        for x, _ in bn_data:
            plain(x)
    for h in hooks:
        h.remove()
    for name, xs in inputs.items():
        means = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs])
        variances = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in xs])
        layer = getattr(exported, name)
        assert torch.allclose(layer.running_mean, means.mean(0), atol=1e-5)
        assert torch.allclose(layer.running_var, variances.mean(0), atol=1e-5)
        assert int(layer.num_batches_tracked) == len(bn_data)


def test_bn_statistics_are_cached_per_t_and_refreshed_when_bends_change() -> None:
    a, b = _pair()
    curve = Curve.between(a, b)
    bn_data = [torch.rand(8, 1, 28, 28)]
    first = curve.recompute_bn(0.5, bn_data)
    assert curve.recompute_bn(0.5, bn_data) is first
    assert curve.recompute_bn(0.5, list(bn_data)) is not first  # other data: recomputed
    with torch.no_grad():
        curve.bends.add_(0.1)
    assert curve.recompute_bn(0.5, bn_data) is not first
    curve.eval()
    with pytest.raises(RuntimeError, match="recompute"):
        curve(bn_data[0], 0.25)


def test_model_without_batch_norm_needs_no_bn_data() -> None:
    a, b = tiny_cnn(0, batch_norm=False), tiny_cnn(1, batch_norm=False)
    curve = Curve.between(a, b).eval()
    x = torch.rand(2, 1, 8, 8)
    w = curve.weights_at(0.5)
    plain = tiny_cnn(2, batch_norm=False)
    plain.load_state_dict({k: v.detach() for k, v in w.items()})
    assert torch.allclose(curve.at(0.5)(x), plain(x), atol=1e-6)
    assert torch.allclose(curve(x, 0.5), plain(x), atol=1e-6)


# ------------------------------------------------------------------------------------------- training

@pytest.mark.parametrize("ts_per_step", [1, 2])
def test_fit_curve_minimises_the_paper_l2_on_w_of_t(ts_per_step: int) -> None:
    """With a zero data loss, one SGD step (no momentum) is θ ← θ − lr·wd·mean_t c_θ(t)·w(t)."""
    a, b = _pair()
    curve = Curve.between(a, b)
    lr, wd, seed = 0.1, 0.01, 3
    zero_loss = lambda model, x, y: 0.0 * model(x).sum()  # noqa: E731
    sgd = SGDConfig(lr=lr, momentum=0.0, weight_decay=wd, schedule="constant")
    trained, history = fit_curve(curve, [(torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))],
                                 steps=1, sgd=sgd, loss_fn=zero_loss, ts_per_step=ts_per_step, seed=seed,
                                 show_progress=False)
    ts = torch.rand(ts_per_step, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tolist()
    grad = torch.zeros_like(curve.bends)
    for t in ts:
        c_bend = 2 * t * (1 - t)
        grad += wd * c_bend * curve.flat_weights_at(t).detach() / ts_per_step
    assert torch.allclose(trained.bends.detach(), curve.bends.detach() - lr * grad, atol=1e-7)
    assert torch.equal(trained.start, curve.start) and torch.equal(trained.end, curve.end)
    assert len(history.rows) == 1 and not trained.training


def test_fit_curve_lowers_the_loss_and_returns_a_copy() -> None:
    a, b = _pair()
    curve = Curve.between(a, b)
    before = curve.bends.detach().clone()
    gen = torch.Generator().manual_seed(0)
    data = [(torch.rand(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen))]
    trained, history = fit_curve(curve, data, epochs=30, sgd=SGDConfig(lr=0.05, schedule="constant"),
                                 show_progress=False)
    assert torch.equal(curve.bends.detach(), before)
    losses = history.column("train_loss")
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])


# ---------------------------------------------------------------------------------------------- errors

def test_mismatched_endpoints_name_the_first_difference() -> None:
    a = models.build("small_cnn", width=4)
    with pytest.raises(ValueError, match="conv1.weight"):
        Curve.between(a, models.build("small_cnn", width=5))
    with pytest.raises(ValueError, match="fc.weight"):
        Curve.between(a, models.build("small_cnn", width=4, num_classes=3))
    renamed = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="has no parameter '0.weight'"):
        Curve.between(renamed, nn.Sequential(nn.Identity(), nn.Linear(2, 2)))


def test_model_without_parameters_is_rejected() -> None:
    with pytest.raises(ValueError, match="no parameters"):
        Curve.between(nn.ReLU(), nn.ReLU())


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan")])
def test_t_outside_unit_interval_is_rejected(t: float) -> None:
    a, b = _pair()
    curve = Curve.between(a, b)
    x = torch.rand(2, 1, 28, 28)
    for call in (lambda: curve(x, t), lambda: curve.weights_at(t), lambda: curve.at(t), lambda: curve.point(t)):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            call()


def test_interior_point_of_bn_model_needs_statistics() -> None:
    a, b = _pair()
    curve = Curve.between(a, b).eval()
    with pytest.raises(ValueError, match="bn_data"):
        curve.at(0.5)
    with pytest.raises(RuntimeError, match="batch norm"):
        curve(torch.rand(2, 1, 28, 28), 0.5)
    point = curve.point(0.5)
    with pytest.raises(RuntimeError, match="batch norm"):
        point(torch.rand(2, 1, 28, 28))


def test_bad_curve_arguments() -> None:
    a, b = _pair()
    with pytest.raises(ValueError, match="kind"):
        Curve.between(a, b, kind="spline")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_bends"):
        Curve.between(a, b, n_bends=-1)
    with pytest.raises(ValueError, match="nothing to train"):
        fit_curve(Curve.line(a, b), [(torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))], steps=1)
