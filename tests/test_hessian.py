"""Tests for mcar_lib.hessian against dense Hessians (float64, tiny models), plain loops and known matrices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mcar_lib import hessian
from mcar_lib.data import LabeledImages

import helpers
from helpers import warm_bn


@pytest.fixture(autouse=True)
def float64():
    """Dense comparisons to 1e-4 and tighter need float64; restore the default afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def tiny_cnn(activation: type[nn.Module] = nn.ReLU, seed: int = 0) -> nn.Module:
    """A 1×6×6-input CNN (one convolution, batch norm with non-default running statistics), in float64."""
    return warm_bn(helpers.tiny_cnn(seed, widths=(3,), size=6, classes=4, activation=activation), seed).double()


def tiny_mlp(seed: int = 0) -> nn.Module:
    """A smooth (tanh) MLP with few parameters, so that a dense weight Hessian is cheap."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def dense_input_hessians(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each sample's input Hessian, one ``torch.autograd.functional.hessian`` call per sample (eval mode)."""
    model.eval()
    out = []
    for xi, yi in zip(x, y):
        def loss(z: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(model(z[None]), yi[None])
        h = torch.autograd.functional.hessian(loss, xi)
        out.append(h.reshape(xi.numel(), xi.numel()))
    return torch.stack(out)


def dense_weight_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian of the mean cross-entropy w.r.t. all parameters, flattened (eval mode)."""
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buffers = dict(model.named_buffers())

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params, start = {}, 0
        for n, s in zip(names, shapes):
            size = int(torch.tensor(s).prod())
            params[n] = flat[start:start + size].view(s)
            start += size
        return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y)

    return torch.autograd.functional.hessian(loss, flat0)


def batch(n: int = 5, shape: tuple[int, ...] = (1, 6, 6), classes: int = 4, seed: int = 1):
    return helpers.batch(n, seed, shape=shape, classes=classes)


def rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs() / b.abs()


# ---------------------------------------------------------------------------------------------- products


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
def test_input_hvp_matches_dense_hessian_per_sample(activation):
    model = tiny_cnn(activation)
    x, y = batch()
    v = torch.randn_like(x)
    hv = hessian.input_hvp(model, x, y, v)
    dense = dense_input_hessians(model, x, y)
    expected = torch.einsum("bij,bj->bi", dense, v.flatten(1)).view_as(x)
    torch.testing.assert_close(hv, expected, rtol=1e-9, atol=1e-12)


def test_weight_hvp_matches_dense_hessian():
    model = tiny_mlp()
    x, y = batch(12, (2, 4), classes=3)
    dense = dense_weight_hessian(model, x, y)
    v = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    # two batches of different sizes: the mean must be over samples, not batches
    hv = hessian.weight_hvp(model, [(x[:7], y[:7]), (x[7:], y[7:])], v)
    flat_v = torch.cat([t.reshape(-1) for t in v.values()])
    flat_hv = torch.cat([hv[n].reshape(-1) for n in v])
    torch.testing.assert_close(flat_hv, dense @ flat_v, rtol=1e-9, atol=1e-12)


def test_weight_hvp_rejects_a_vector_of_the_wrong_shape():
    model = tiny_mlp()
    x, y = batch(4, (2, 4), classes=3)
    v = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    v["1.weight"] = torch.randn(3, 3)
    with pytest.raises(ValueError, match="1.weight"):
        hessian.weight_hvp(model, [(x, y)], v)
    with pytest.raises(ValueError, match="missing"):
        hessian.weight_hvp(model, [(x, y)], {})


# -------------------------------------------------------------------------------------- eigen-solvers


def block_operator(blocks: torch.Tensor):
    def matvec(v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bij,bj->bi", blocks[rows], v)
    return matvec


def symmetric_with_spectrum(eigenvalues: list[float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g))
    return q @ torch.diag(torch.tensor(eigenvalues)) @ q.T


def test_power_iteration_finds_largest_magnitude_and_shift_finds_largest_algebraic():
    blocks = torch.stack([
        symmetric_with_spectrum([5.0, 1.0, -0.5, 0.2], seed=0),   # dominant and largest agree
        symmetric_with_spectrum([2.0, 0.5, -6.0, 0.1], seed=1),   # dominant is negative
        symmetric_with_spectrum([-1.0, -3.0, -0.2, -2.0], seed=2),  # negative definite
    ])
    v0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    dominant = hessian.power_iteration(block_operator(blocks), v0, iters=2000, tol=1e-13, per_sample=True)
    largest = hessian.largest_eigenvalue(block_operator(blocks), v0, iters=2000, tol=1e-13, per_sample=True)
    eig = torch.linalg.eigvalsh(blocks)
    magnitude = eig.gather(1, eig.abs().argmax(1, keepdim=True)).squeeze(1)
    torch.testing.assert_close(dominant.value, magnitude, rtol=1e-8, atol=0)
    torch.testing.assert_close(largest.value, eig.max(1).values, rtol=1e-8, atol=0)
    assert bool(largest.converged.all())
    # the returned vectors are eigenvectors of the returned values
    residual = torch.einsum("bij,bj->bi", blocks, largest.vector) - largest.value[:, None] * largest.vector
    assert float(residual.norm(dim=1).max()) < 1e-5


def test_per_sample_convergence_stops_converged_samples():
    fast = torch.diag(torch.tensor([10.0, 0.1, 0.1]))   # ratio 0.01: converges in a few steps
    slow = torch.diag(torch.tensor([1.0, 0.97, 0.5]))   # ratio 0.97: needs many
    blocks = torch.stack([fast, slow])
    seen: list[list[int]] = []

    def matvec(v, rows):
        seen.append(rows.tolist())
        return block_operator(blocks)(v, rows)

    v0 = torch.ones(2, 3)
    result = hessian.power_iteration(matvec, v0, iters=500, tol=1e-10, per_sample=True)
    assert bool(result.converged.all())
    assert int(result.iterations[0]) < int(result.iterations[1])
    assert all(rows == [1] for rows in seen[int(result.iterations[0]):])
    assert sum(0 in rows for rows in seen) == int(result.iterations[0])
    torch.testing.assert_close(result.value, torch.tensor([10.0, 1.0]), rtol=1e-6, atol=0)


def test_power_iteration_handles_a_zero_block_and_reports_non_convergence():
    blocks = torch.stack([torch.zeros(3, 3), torch.diag(torch.tensor([1.0, 0.999, 0.0]))])
    result = hessian.power_iteration(block_operator(blocks), torch.ones(2, 3), iters=3, tol=1e-12,
                                     per_sample=True)
    assert float(result.value[0]) == 0.0 and bool(result.converged[0])
    assert not bool(result.converged[1]) and int(result.iterations[1]) == 3


def test_power_iteration_rejects_bad_arguments():
    with pytest.raises(ValueError, match="iters"):
        hessian.power_iteration(lambda v: v, torch.ones(3), iters=0)
    with pytest.raises(ValueError, match="non-zero"):
        hessian.power_iteration(lambda v, r: v, torch.zeros(2, 3), per_sample=True)
    with pytest.raises(ValueError, match="batch"):
        hessian.power_iteration(lambda v, r: v, torch.ones(3), per_sample=True)


def test_lanczos_top_k_matches_eigh():
    spectrum = [float(s) for s in torch.linspace(-3.0, 1.0, 60)] + [9.0, 7.0, 5.0, -8.0]
    matrix = symmetric_with_spectrum(spectrum, seed=4)
    v0 = torch.randn(64, generator=torch.Generator().manual_seed(5))
    expected = torch.linalg.eigvalsh(matrix).flip(0)[:3]
    full = hessian.lanczos(lambda v: matrix @ v, v0, k=3, m=64)
    torch.testing.assert_close(full.value, expected, rtol=1e-10, atol=1e-10)
    partial = hessian.lanczos(lambda v: matrix @ v, v0, k=3, m=30)  # well-separated top: few steps suffice
    torch.testing.assert_close(partial.value, expected, rtol=1e-6, atol=0)
    for value, vector in zip(full.value, full.vector):
        torch.testing.assert_close(matrix @ vector, value * vector, rtol=0, atol=1e-8)


def test_lanczos_restarts_past_an_invariant_subspace():
    matrix = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    v0 = torch.tensor([0.0, 1.0, 0.0, 0.0])  # an eigenvector: the Krylov space closes after one step
    result = hessian.lanczos(lambda v: matrix @ v, v0, k=2, m=4)
    torch.testing.assert_close(result.value, torch.tensor([4.0, 3.0]), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------ input curvature


@pytest.mark.parametrize("activation, seed", [(nn.ReLU, 0), (nn.Tanh, 6)])
def test_per_sample_lambda_max_matches_dense_top_eigenvalue(activation, seed):
    model = tiny_cnn(activation, seed)
    x, y = batch(6)
    lam = hessian.input_lambda_max(model, x, y, iters=3000, tol=1e-12)
    eig = torch.linalg.eigvalsh(dense_input_hessians(model, x, y))
    dense = eig.max(1).values
    assert float(rel(lam, dense).max()) <= 1e-4
    if activation is nn.Tanh:  # smooth: indefinite Hessians, some with a dominant negative eigenvalue (shift)
        assert bool((eig.min(1).values.abs() > dense).any())


def test_batched_equals_one_sample_at_a_time():
    model = tiny_cnn(nn.Tanh, seed=3)
    x, y = batch(7, seed=4)
    batched = hessian.input_hessian_eig(model, x, y, iters=400, tol=1e-9)
    looped = hessian.input_lambda_max_loop(model, x, y, iters=400, tol=1e-9)
    torch.testing.assert_close(batched.value, looped, rtol=1e-10, atol=1e-14)
    assert len(set(batched.iterations.tolist())) > 1  # the samples really did stop at different steps


def test_compare_batched_and_loop_reports_agreement():
    model = tiny_cnn()
    x, y = batch(4)
    report = hessian.compare_batched_and_loop(model, x, y, iters=50, tol=1e-6)
    assert report["max_relative_difference"] < 1e-10
    assert report["batch_size"] == 4 and report["seconds_batched"] > 0 and report["seconds_loop"] > 0


def test_mean_input_lambda_max_averages_over_a_data_set():
    model = tiny_cnn()
    x, y = batch(9)
    mean = hessian.mean_input_lambda_max(model, LabeledImages(x, y), batch_size=4, iters=3000, tol=1e-12)
    dense = torch.linalg.eigvalsh(dense_input_hessians(model, x, y)).max(1).values
    assert abs(mean - float(dense.mean())) <= 1e-4 * float(dense.mean())


def test_slot_averaged_estimate_is_max_over_slots_of_mean_block_over_batch_size():
    model = tiny_cnn()
    x, y = batch(8, seed=1)  # two batches of four; top-two slot eigenvalue ratio about 0.9 (fast enough)
    b = 4
    estimate = hessian.slot_averaged_lambda_max(model, [(x[:b], y[:b]), (x[b:], y[b:])], iters=400, tol=1e-12)
    dense = dense_input_hessians(model, x, y)
    blocks = dense.view(2, b, 36, 36).mean(0)  # slot j: mean over batches
    expected = torch.linalg.eigvalsh(blocks).max() / b
    assert abs(estimate - float(expected)) <= 1e-4 * float(expected)
    per_sample_mean = torch.linalg.eigvalsh(dense).max(1).values.mean()
    assert abs(estimate - float(per_sample_mean)) > 0.1 * float(per_sample_mean)


def test_input_functions_reject_mismatched_labels():
    model = tiny_cnn()
    x, y = batch(3)
    with pytest.raises(ValueError, match="one label per sample"):
        hessian.input_lambda_max(model, x, y[:2])
    with pytest.raises(ValueError, match="shape of x"):
        hessian.input_hvp(model, x, y, torch.ones(2, 1, 6, 6))


# ------------------------------------------------------------------------------------ weight curvature


def test_weight_lambda_max_and_lanczos_match_dense_hessian():
    model = tiny_mlp()
    x, y = batch(16, (2, 4), classes=3)
    eig = torch.linalg.eigvalsh(dense_weight_hessian(model, x, y))
    lam = hessian.weight_lambda_max(model, LabeledImages(x.view(16, 1, 2, 4), y), iters=5000, tol=1e-13)
    assert abs(lam - float(eig.max())) <= 1e-4 * abs(float(eig.max()))
    top = hessian.weight_top_eigenvalues(model, [(x, y)], k=3, m=len(eig))
    torch.testing.assert_close(top.value, eig.flip(0)[:3], rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------------ no mutation


def test_nothing_changes_the_model():
    model = tiny_cnn()
    model.train()
    model[1].eval()  # a mixed mode that must be restored exactly
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch(4)
    expected = hessian.input_lambda_max(tiny_cnn().eval(), x, y, iters=50, tol=1e-6)
    with torch.no_grad():  # works inside a caller's no_grad block (path metrics often run in one)
        lam = hessian.input_lambda_max(model, x, y, iters=50, tol=1e-6)
    torch.testing.assert_close(lam, expected, rtol=1e-12, atol=0)  # eval-mode numbers even from train mode
    hessian.input_hvp(model, x, y, torch.ones_like(x))
    hessian.weight_hvp(model, [(x, y)], {n: torch.ones_like(p) for n, p in model.named_parameters()})
    hessian.weight_lambda_max(model, [(x, y)], iters=5)
    hessian.slot_averaged_lambda_max(model, [(x, y)], iters=5)
    hessian.input_lambda_max_gauss_newton(model, x, y)
    hessian.input_gradient(model, x, y)
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------ Gauss-Newton shortcut (ReLU)


def test_gauss_newton_lambda_max_is_exact_for_relu_networks_and_refuses_smooth_ones():
    model = tiny_cnn(nn.ReLU, seed=1)
    x, y = batch(5)
    dense = torch.linalg.eigvalsh(dense_input_hessians(model, x, y)).max(1).values
    torch.testing.assert_close(hessian.input_lambda_max_gauss_newton(model, x, y), dense, rtol=1e-9, atol=1e-14)
    mean = hessian.mean_input_lambda_max(model, [(x, y)], method="gauss_newton")
    assert abs(mean - float(dense.mean())) <= 1e-9 * float(dense.mean())
    with pytest.raises(ValueError, match="piecewise linear"):
        hessian.input_lambda_max_gauss_newton(tiny_cnn(nn.Tanh, seed=1), x, y)


def test_input_gradient_matches_per_sample_autograd():
    model = tiny_cnn()
    x, y = batch(3)
    model.eval()
    expected = torch.stack([
        torch.autograd.functional.jacobian(lambda z: F.cross_entropy(model(z[None]), yi[None]), xi)
        for xi, yi in zip(x, y)])
    torch.testing.assert_close(hessian.input_gradient(model, x, y), expected, rtol=1e-10, atol=1e-14)


def test_input_jacobian_by_repeated_batch_matches_autograd_in_chunks():
    model = tiny_cnn()
    x, _ = batch(5)
    model.eval()
    logits, jac = hessian._input_jacobian(model, x, max_rows=8)  # 2 samples × 4 classes per chunk
    expected = torch.stack([torch.autograd.functional.jacobian(lambda z: model(z[None])[0], xi).flatten(1)
                            for xi in x])
    torch.testing.assert_close(jac, expected, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(logits, model(x), rtol=1e-12, atol=1e-14)
