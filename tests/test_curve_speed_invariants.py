"""What makes a curve step cost what a plain step costs (issue 15), checked as behaviour, not as time.

* w(t) is formed per parameter tensor, with no full-size temporary in the forward pass and a single full-size
  tensor (the bends' gradient) in the backward pass;
* a training step forms w(t) once per sampled t, shared by the loss (all of its forward passes) and the
  L2 penalty;
* none of this changes a number: w(t) equals the flat formula c_0 w_a + c_{n+1} w_b + Σ c_k θ_k element by
  element (the same operations as the flat implementation before, so bit for bit), and the bends' gradient of
  a training objective is bit for bit the one of the objective that forms w(t) once for the loss and once for
  the penalty. The penalty's value is summed per tensor (last bits may differ from a flat sum).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from mcar_lib import curves
from mcar_lib.curves import Curve, CurveObjective, coefficient_list
from mcar_lib.train import SGDConfig

from helpers import batch, tiny_cnn, warm_bn

CASES = [("bezier", 1), ("polychain", 1), ("bezier", 3), ("polychain", 2), ("polychain", 0)]


def _curve(kind: str, n_bends: int, *, noise: float = 0.1, widths: tuple[int, ...] = (4, 6),
           hidden: int | None = 5) -> Curve:
    a = warm_bn(tiny_cnn(0, widths=widths, hidden=hidden), 1).eval()
    b = warm_bn(tiny_cnn(1, widths=widths, hidden=hidden), 2).eval()
    curve = Curve.between(a, b, kind=kind, n_bends=n_bends)
    if n_bends:
        with torch.no_grad():  # bends off the straight line, so that every control point matters
            curve.bends.add_(noise * torch.randn(curve.bends.shape, generator=torch.Generator().manual_seed(3)))
    return curve


def _flat_formula(curve: Curve, t: float) -> Tensor:
    """The flat implementation as it was (one vector, the same operations): the reference, bit for bit."""
    c = coefficient_list(curve.kind, t, curve.n_bends)
    w = torch.add(curve.start * c[0], curve.end, alpha=c[-1])
    if curve.n_bends == 1:
        w = w + c[1] * curve.bends[0]
    elif curve.n_bends > 1:
        w = torch.addmv(w, curve.bends.t(), torch.tensor(c[1:-1], dtype=w.dtype))
    return w


TS = (0.0, 0.137, 0.5, 0.9, 1.0)


@pytest.mark.parametrize("kind,n_bends", CASES)
def test_per_parameter_weights_equal_the_flat_formula_bit_for_bit(kind: str, n_bends: int) -> None:
    curve = _curve(kind, n_bends)
    points = torch.cat([curve.start[None], curve.bends.detach(), curve.end[None]]).double()
    for t in TS:
        weights = curve.weights_at(t)
        assert list(weights) == curve.parameter_names
        flat = torch.cat([w.reshape(-1) for w in weights.values()])
        assert torch.equal(flat, _flat_formula(curve, t).detach())
        assert torch.equal(curve.flat_weights_at(t), flat)
        # and the formula itself, in float64
        c = torch.tensor(coefficient_list(kind, t, n_bends), dtype=torch.float64)
        assert torch.allclose(flat.double(), c @ points, rtol=1e-6, atol=1e-7)
        for name, w in weights.items():  # one tensor per parameter, of its shape, not a view of a flat vector
            assert w.shape == curve.unflatten(flat)[name].shape and w.is_contiguous()
            assert w.untyped_storage().nbytes() == w.numel() * w.element_size()
    a_params = dict(curve.unflatten(curve.start))
    for name, w in curve.weights_at(0.0).items():
        assert torch.equal(w, a_params[name])  # exact endpoints
    for name, w in curve.weights_at(1.0).items():
        assert torch.equal(w, curve.unflatten(curve.end)[name])


@pytest.mark.parametrize("kind,n_bends", [c for c in CASES if c[1] > 0])
def test_gradients_reach_only_the_bends_and_equal_the_flat_formulas(kind: str, n_bends: int) -> None:
    curve = _curve(kind, n_bends)
    r = torch.randn(curve.start.shape, generator=torch.Generator().manual_seed(4))
    for t in TS:
        curve.bends.grad = None
        weights = curve.weights_at(t)
        sum((w * piece).sum() for w, piece in zip(weights.values(), curve.unflatten(r).values())).backward()
        ours = curve.bends.grad.clone()
        curve.bends.grad = None
        (_flat_formula(curve, t) * r).sum().backward()
        assert torch.equal(ours, curve.bends.grad)
        # d<r, w(t)>/dθ_k = c_k r
        c = coefficient_list(kind, t, n_bends)
        expected = torch.stack([c[k + 1] * r for k in range(n_bends)])
        assert torch.allclose(ours, expected, rtol=1e-6, atol=1e-7)
    assert curve.start.grad is None and curve.end.grad is None and not curve.start.requires_grad


def _two_formations_objective(curve: Curve, x: Tensor, y: Tensor, t: float, wd: float) -> Tensor:
    """The objective as it was computed before: w(t) formed for the forward pass and again for the penalty."""
    point = curve.point(t)  # forms w(t) on its own on every call
    return F.cross_entropy(point(x), y) + 0.5 * wd * _flat_formula(curve, t).square().sum()


@pytest.mark.parametrize("kind,n_bends", [c for c in CASES if c[1] > 0])
def test_one_formation_gives_the_same_gradient_as_two(kind: str, n_bends: int) -> None:
    curve = _curve(kind, n_bends).train()
    x, y = batch(16, classes=3)
    wd = 0.05
    objective = CurveObjective(lambda model, xb, yb: F.cross_entropy(model(xb), yb), weight_decay=wd, seed=5)
    t = torch.rand(1, generator=torch.Generator().manual_seed(5), dtype=torch.float64).tolist()[0]
    loss = objective(curve, x, y)
    loss.backward()
    shared = curve.bends.grad.clone()
    curve.bends.grad = None
    reference = _two_formations_objective(curve, x, y, t, wd)
    reference.backward()
    assert torch.equal(shared, curve.bends.grad)
    assert torch.allclose(loss, reference, rtol=1e-6)  # the penalty is summed per tensor: last bits may differ


def test_squared_norm_is_the_flat_squared_norm_and_checks_its_weights() -> None:
    curve = _curve("bezier", 2)
    for t in (0.0, 0.4, 1.0):
        flat = _flat_formula(curve, t).detach().double()
        assert torch.allclose(curve.squared_norm_at(t).double(), flat.square().sum(), rtol=1e-6)
        weights = curve.weights_at(t, squared_norm=True)
        assert torch.equal(curve.squared_norm_at(t, weights), curve.squared_norm_at(t))
        assert torch.equal(torch.cat([w.reshape(-1) for w in weights.values()]), curve.flat_weights_at(t))
    with pytest.raises(ValueError, match="weights_at"):
        curve.squared_norm_at(0.3, curve.weights_at(0.4, squared_norm=True))  # weights of another t
    with pytest.raises(ValueError, match="weights_at"):
        curve.squared_norm_at(0.3, dict(curve.weights_at(0.3, squared_norm=True)))  # not formed by a curve
    with pytest.raises(ValueError, match="squared_norm=True"):
        curve.squared_norm_at(0.3, curve.weights_at(0.3))  # formed without its norm
    line = _curve("polychain", 0)
    assert not line.squared_norm_at(0.5).requires_grad
    assert torch.allclose(line.squared_norm_at(0.5).double(), _flat_formula(line, 0.5).double().square().sum())


def test_penalty_gradient_is_the_flat_penalty_gradient() -> None:
    """d‖w(t)‖²/dθ_k, alone and with a loss on the same weights, bit for bit as the flat formula's."""
    for n_bends in (1, 3):
        curve = _curve("bezier", n_bends)
        r = torch.randn(curve.start.shape, generator=torch.Generator().manual_seed(4))
        for t in (0.0, 0.3, 1.0):
            curve.bends.grad = None
            weights = curve.weights_at(t, squared_norm=True)
            (0.7 * curve.squared_norm_at(t, weights)).backward()
            alone = curve.bends.grad.clone()
            curve.bends.grad = None
            (0.7 * _flat_formula(curve, t).square().sum()).backward()
            assert torch.equal(alone, curve.bends.grad)
            c = coefficient_list("bezier", t, n_bends)
            expected = torch.stack([c[k + 1] * 1.4 * _flat_formula(curve, t).detach() for k in range(n_bends)])
            assert torch.allclose(alone, expected, rtol=1e-5, atol=1e-6)
            curve.bends.grad = None
            weights = curve.weights_at(t, squared_norm=True)
            loss = sum((w * p).sum() for w, p in zip(weights.values(), curve.unflatten(r).values()))
            (loss + 0.7 * curve.squared_norm_at(t, weights)).backward()
            both = curve.bends.grad.clone()
            curve.bends.grad = None
            ((_flat_formula(curve, t) * r).sum() + 0.7 * _flat_formula(curve, t).square().sum()).backward()
            assert torch.equal(both, curve.bends.grad)


class _Recorder(TorchDispatchMode):
    """The number of elements of every tensor an operation produces (forward and backward alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, Tensor) and not func._schema.name.startswith(("aten::view", "aten::_unsafe_view",
                                                                                  "aten::split", "aten::t",
                                                                                  "aten::transpose", "aten::slice",
                                                                                  "aten::detach", "aten::alias",
                                                                                  "aten::expand", "aten::select")):
                self.sizes.append((func._schema.name, value.numel()))
        return out


@pytest.mark.parametrize("kind,n_bends", [("bezier", 1), ("bezier", 3)])
def test_no_full_size_temporaries(kind: str, n_bends: int) -> None:
    """Forming w(t) and the training objective never makes a tensor as large as a whole control point (D
    weights); the backward pass makes exactly one, the bends' gradient (n × D)."""
    curve = _curve(kind, n_bends, widths=(4, 4, 4, 4, 4), hidden=None).train()  # many small tensors
    x, y = batch(2, classes=3)  # activations smaller than D, so that D-sized tensors can only be weights
    D = curve.start.numel()
    largest = max(w.numel() for w in curve.unflatten(curve.start).values())
    assert n_bends * largest < D  # a per-parameter tensor is told apart from a full-size one
    objective = CurveObjective(lambda model, xb, yb: F.cross_entropy(model(xb), yb), weight_decay=0.01)
    with _Recorder() as forward:
        loss = objective(curve, x, y)
    with _Recorder() as backward:
        loss.backward()
    assert forward.sizes and max(n for _, n in forward.sizes) < D, sorted(forward.sizes, key=lambda s: -s[1])[:3]
    assert [n for _, n in backward.sizes if n >= D] == [n_bends * D], backward.sizes
    assert curve.bends.grad is not None and curve.bends.grad.shape == (n_bends, D)


def test_a_step_forms_w_once_per_t_and_shares_it(monkeypatch: pytest.MonkeyPatch) -> None:
    curve = _curve("bezier", 1).train()
    x, y = batch(8, classes=3)
    calls: list[float] = []
    original = Curve.weights_at

    def counting(self: Curve, t: float, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(float(t))
        return original(self, t, **kwargs)

    monkeypatch.setattr(Curve, "weights_at", counting)

    def three_forward_passes(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:  # like an attack, then the loss
        for _ in range(2):
            with torch.no_grad():
                model(xb)
        return F.cross_entropy(model(xb), yb)

    for ts_per_step in (1, 3):
        calls.clear()
        objective = CurveObjective(three_forward_passes, weight_decay=0.01, ts_per_step=ts_per_step)
        objective(curve, x, y).backward()
        assert len(calls) == ts_per_step and len(set(calls)) == ts_per_step
    calls.clear()
    view = curve.point(0.3)  # without weights, a point follows the bends: one formation per forward pass
    view(x), view(x)
    assert calls == [0.3, 0.3]


def test_point_with_given_weights_is_the_point() -> None:
    curve = _curve("polychain", 2).train()
    x, _ = batch(8, classes=3)
    for t in (0.0, 0.6, 1.0):
        weights = curve.weights_at(t)
        torch.manual_seed(0)
        given = curve.point(t, weights)(x)
        torch.manual_seed(0)
        formed = curve.point(t)(x)
        assert torch.equal(given, formed)
    with pytest.raises(ValueError, match="weights_at"):
        curve.point(0.5, {"conv1.weight": curve.weights_at(0.5)["conv1.weight"]})
    with pytest.raises(ValueError, match="weights_at"):
        curve.point(0.5, curve.weights_at(0.4))


def test_weights_are_master_weights_under_autocast() -> None:
    curve = _curve("bezier", 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weights = curve.weights_at(0.3)
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert torch.equal(torch.cat([w.reshape(-1) for w in weights.values()]), _flat_formula(curve, 0.3).detach())


def test_training_a_curve_changes_nothing_but_the_bends_and_matches_two_formations() -> None:
    """Two SGD steps through fit_curve equal two hand-written steps on the two-formation objective, bit for bit."""
    curve = _curve("bezier", 1, noise=0.05)
    x, y = batch(16, classes=3)
    sgd = SGDConfig(lr=0.1, momentum=0.9, weight_decay=0.02, schedule="constant")
    trained, _ = curves.fit_curve(curve, [(x, y)] * 2, epochs=1, sgd=sgd, seed=7, show_progress=False)
    by_hand = _copy_train(curve)
    optimizer = torch.optim.SGD([by_hand.bends], lr=0.1, momentum=0.9)
    ts = torch.rand(2, generator=torch.Generator().manual_seed(7), dtype=torch.float64).tolist()
    for t in ts:
        optimizer.zero_grad(set_to_none=True)
        _two_formations_objective(by_hand, x, y, t, 0.02).backward()
        optimizer.step()
    assert torch.equal(trained.bends, by_hand.bends)
    assert torch.equal(trained.start, curve.start) and torch.equal(trained.end, curve.end)


def _copy_train(curve: Curve) -> Curve:
    return copy.deepcopy(curve).train()


def test_parameters_left_out_of_the_loss_get_zero_or_penalty_gradients() -> None:
    """A loss that uses some parameters only (the others' gradients are None inside autograd): their rows of
    the bends' gradient are zero, or the penalty's alone; as with the flat formula."""
    curve = _curve("polychain", 2)
    for with_penalty in (False, True):
        curve.bends.grad = None
        weights = curve.weights_at(0.45, squared_norm=with_penalty)
        loss = weights["fc.weight"].square().sum()
        if with_penalty:
            loss = loss + 0.3 * curve.squared_norm_at(0.45, weights)
        loss.backward()
        ours = curve.bends.grad.clone()
        curve.bends.grad = None
        flat = _flat_formula(curve, 0.45)
        reference = curve.unflatten(flat)["fc.weight"].square().sum()
        if with_penalty:
            reference = reference + 0.3 * _flat_formula(curve, 0.45).square().sum()
        reference.backward()
        assert torch.equal(ours, curve.bends.grad)
        conv = curve.unflatten(ours[0])["conv1.weight"]
        assert (conv != 0).any() if with_penalty else (conv == 0).all()


def _backward(curve: Curve, t: float, r: Tensor) -> None:
    weights = curve.weights_at(t, squared_norm=True)
    loss = sum((w * p).sum() for w, p in zip(weights.values(), curve.unflatten(r).values()))
    (loss + 0.1 * curve.squared_norm_at(t, weights)).backward()


def test_the_gradient_storage_is_reused_only_when_nobody_holds_it() -> None:
    """A loop that drops the gradient each step gets the same storage back (no fresh large allocation); a kept
    gradient, an accumulated one or one returned by torch.autograd.grad is never overwritten."""
    curve = _curve("bezier", 2)
    r = torch.randn(curve.start.shape, generator=torch.Generator().manual_seed(6))

    def fresh_gradient(t: float) -> Tensor:
        twin = copy.deepcopy(curve)
        _backward(twin, t, r)
        return twin.bends.grad

    _backward(curve, 0.3, r)
    first_pointer = curve.bends.grad.data_ptr()
    curve.bends.grad = None  # zero_grad(set_to_none=True)
    _backward(curve, 0.6, r)
    assert curve.bends.grad.data_ptr() == first_pointer  # reused
    assert torch.equal(curve.bends.grad, fresh_gradient(0.6))
    kept = curve.bends.grad
    kept_values = kept.clone()
    curve.bends.grad = None
    _backward(curve, 0.2, r)
    assert torch.equal(kept, kept_values) and curve.bends.grad.data_ptr() != kept.data_ptr()
    assert torch.equal(curve.bends.grad, fresh_gradient(0.2))
    del kept
    _backward(curve, 0.8, r)  # no zeroing: accumulated into the existing gradient
    assert torch.allclose(curve.bends.grad, fresh_gradient(0.2) + fresh_gradient(0.8))
    curve.bends.grad = None
    weights = curve.weights_at(0.4)
    (g1,) = torch.autograd.grad(sum(w.sum() for w in weights.values()), curve.bends)
    g1_values = g1.clone()
    weights = curve.weights_at(0.7)
    (g2,) = torch.autograd.grad(sum(w.sum() for w in weights.values()), curve.bends)
    assert torch.equal(g1, g1_values) and g1.data_ptr() != g2.data_ptr()
    assert copy.deepcopy(curve)._gradient_memory.storage is None  # a copy starts empty


def test_fit_curve_keeps_no_gradient_memory() -> None:
    curve = _curve("bezier", 1)
    trained, _ = curves.fit_curve(curve, [batch(8, classes=3)] * 2, epochs=1, show_progress=False)
    assert trained._gradient_memory.storage is None and curve._gradient_memory.storage is None
