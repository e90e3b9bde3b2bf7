"""train.fit against a plain SGD loop written here; budgets, no mutation, frozen tensors, refusals, evaluation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcar_lib import curves, train
from mcar_lib.data import LabeledImages
from mcar_lib.train import SGDConfig, accuracy, evaluate, fit, lr_factor, mean_loss, predict

from helpers import assert_unchanged, batch, chunks, same_weights, snapshot, tiny_cnn, warm_bn


def double_batches(n_batches: int, size: int = 6, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    x, y = batch(n_batches * size, seed)
    return chunks(x.double(), y, size)


def plain_sgd(model: nn.Module, batches: list[tuple[Tensor, Tensor]], *, lr: float, momentum: float,
              weight_decay: float, nesterov: bool = False, schedule: str = "cosine",
              ) -> tuple[nn.Module, list[float]]:
    """SGD written out: per step, lr · factor(step / steps), d = g + wd·w, buf = μ·buf + d (buf = d at the
    first step), w -= lr · (d + μ·buf if Nesterov else buf). Batches in the given order, train mode.

    Returns the trained copy and each step's loss (before its update)."""
    net = copy.deepcopy(model).train()
    params = [p for p in net.parameters() if p.requires_grad]
    buffers: list[Tensor | None] = [None] * len(params)
    losses = []
    for step, (x, y) in enumerate(batches):
        p_done = step / len(batches)
        factor = {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * p_done))}[schedule]
        loss = F.cross_entropy(net(x), y)
        grads = torch.autograd.grad(loss, params)
        losses.append(loss.item())
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                d = g + weight_decay * p
                buffers[i] = d.clone() if buffers[i] is None else momentum * buffers[i] + d
                update = d + momentum * buffers[i] if nesterov else buffers[i]
                p -= lr * factor * update
    return net, losses


def assert_close_states(got: nn.Module, expected: nn.Module) -> None:
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(got.state_dict()[key], value, rtol=1e-12, atol=1e-12, msg=key)


# ------------------------------------------------------------------------------------- the loop itself

@pytest.mark.parametrize("nesterov", [False, True])
def test_fit_equals_a_plain_sgd_loop_with_momentum_weight_decay_and_cosine_steps(nesterov: bool) -> None:
    model = warm_bn(tiny_cnn(0), 0).double()  # batch norm in train mode: running statistics must agree too
    data = double_batches(3)
    sgd = SGDConfig(lr=0.1, momentum=0.9, weight_decay=0.01, schedule="cosine", nesterov=nesterov)
    trained, history = fit(model, data, epochs=2, sgd=sgd, show_progress=False)
    expected, losses = plain_sgd(model, data + data, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    assert_close_states(trained, expected)
    assert history.column("epoch") == [1, 2] and history.column("step") == [3, 6]
    # each epoch's train_loss is the mean of its steps' losses (equal batch sizes)
    assert history.column("train_loss") == pytest.approx([sum(losses[:3]) / 3, sum(losses[3:]) / 3], rel=1e-12)
    assert not trained.training


def test_a_step_budget_larger_than_one_pass_cycles_the_data() -> None:
    model = tiny_cnn(1).double()
    data = double_batches(2)
    sgd = SGDConfig(lr=0.05, momentum=0.5, weight_decay=1e-3)
    trained, history = fit(model, data, steps=5, sgd=sgd, show_progress=False)
    cycled = [data[0], data[1], data[0], data[1], data[0]]  # the cosine runs over all 5 steps
    expected, losses = plain_sgd(model, cycled, lr=0.05, momentum=0.5, weight_decay=1e-3)
    assert_close_states(trained, expected)
    assert history.column("step") == [2, 4, 5]  # one row per (partial) pass
    assert history.column("train_loss")[-1] == pytest.approx(losses[4], rel=1e-12)


def test_steps_also_cycle_an_iterable_without_a_length() -> None:
    data = double_batches(2)

    class Twice:  # re-iterable, no __len__: the step budget alone sets the schedule's length
        def __iter__(self):
            return iter(data)

    model = tiny_cnn(2).double()
    sgd = SGDConfig(lr=0.05, momentum=0.0, weight_decay=0.0)
    trained, _ = fit(model, Twice(), steps=3, sgd=sgd, show_progress=False)
    expected, _ = plain_sgd(model, [data[0], data[1], data[0]], lr=0.05, momentum=0.0, weight_decay=0.0)
    assert_close_states(trained, expected)


def test_a_step_budget_shorter_than_one_pass_stops_inside_it() -> None:
    data = double_batches(4)
    model = tiny_cnn(3).double()
    sgd = SGDConfig(lr=0.05, momentum=0.9, weight_decay=0.0, schedule="constant")
    trained, history = fit(model, data, steps=2, sgd=sgd, show_progress=False)
    expected, _ = plain_sgd(model, data[:2], lr=0.05, momentum=0.9, weight_decay=0.0, schedule="constant")
    assert_close_states(trained, expected)
    assert history.column("step") == [2]


@pytest.mark.parametrize("budget", [{}, {"epochs": 1, "steps": 1}, {"epochs": 0}, {"steps": 0}, {"steps": -3}])
def test_exactly_one_positive_budget_is_required(budget: dict) -> None:
    with pytest.raises(ValueError, match="epochs|steps"):
        fit(tiny_cnn(), [batch()], show_progress=False, **budget)


# -------------------------------------------------------------------------------------- what it touches

def test_the_model_given_is_never_modified() -> None:
    model = warm_bn(tiny_cnn(0, dropout=0.3), 0).train()
    model.bn1.eval()  # mixed modes must come back exactly
    model.conv1.bias.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)  # a caller's gradient stays the caller's
    before = snapshot(model)
    data = [batch(8, seed) for seed in range(2)]
    trained, _ = fit(model, data, epochs=2, sgd=SGDConfig(lr=0.1), show_progress=False)
    assert_unchanged(model, before)
    assert trained is not model and not same_weights(trained, model)


def test_only_tensors_that_require_grad_are_trained() -> None:
    model = tiny_cnn(0)
    model.conv1.weight.requires_grad_(False)
    model.bn1.weight.requires_grad_(False)
    trained, _ = fit(model, [batch(8)], epochs=3, sgd=SGDConfig(lr=0.1, weight_decay=0.1), show_progress=False)
    frozen = {"conv1.weight", "bn1.weight"}
    params = dict(trained.named_parameters())
    for name, p in model.named_parameters():
        if name in frozen:  # not even weight decay moves a frozen tensor
            assert torch.equal(params[name], p) and not params[name].requires_grad, name
        else:
            assert not torch.equal(params[name], p), name
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(model.requires_grad_(False), [batch(8)], steps=1, show_progress=False)


def test_epoch_end_rows_are_logged_from_eval_mode_and_training_goes_on_in_train_mode() -> None:
    model = tiny_cnn(0, dropout=0.5)
    modes_in_loss: list[bool] = []
    seen: list[tuple[int, bool]] = []

    def loss_fn(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        modes_in_loss.append(all(m.training for m in net.modules()))
        return F.cross_entropy(net(x), y)

    def epoch_end(net: nn.Module, epoch: int) -> dict[str, float]:
        seen.append((epoch, any(m.training for m in net.modules())))
        return {"accuracy": accuracy(net, [batch(8, 5)]), "epoch_squared": float(epoch ** 2)}

    _, history = fit(model, [batch(8, 1), batch(8, 2)], epochs=3, loss_fn=loss_fn, epoch_end=epoch_end,
                     show_progress=False)
    assert seen == [(1, False), (2, False), (3, False)]
    assert modes_in_loss == [True] * 6
    assert history.column("epoch_squared") == [1.0, 4.0, 9.0]
    frame = history.to_frame()
    assert list(frame.columns) == ["epoch", "step", "train_loss", "accuracy", "epoch_squared"]
    assert frame["step"].tolist() == [2, 4, 6]


# ------------------------------------------------------------------------------------------ refusals

def test_nan_in_the_first_batch_is_refused_before_any_step() -> None:
    x, y = batch(8)
    x[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="first training batch.*non-finite"):
        fit(tiny_cnn(), [(x, y)], epochs=1, show_progress=False)


def test_a_loss_that_becomes_non_finite_is_refused_naming_the_epoch() -> None:
    calls = {"n": 0}

    def poisoned(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        calls["n"] += 1
        loss = F.cross_entropy(net(x), y)
        return loss * float("inf") if calls["n"] == 3 else loss  # finite through epoch 1, inf in epoch 2

    with pytest.raises(FloatingPointError, match="non-finite.*epoch 2"):
        fit(tiny_cnn(), [batch(8, 1), batch(8, 2)], epochs=3, loss_fn=poisoned, show_progress=False)


def test_a_model_with_non_finite_weights_is_refused_naming_the_parameter() -> None:
    model = tiny_cnn()
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="conv2.weight"):
        fit(model, [batch(8)], epochs=1, show_progress=False)


def test_empty_data_is_refused() -> None:
    with pytest.raises(ValueError, match="no batches"):
        fit(tiny_cnn(), [], epochs=1, show_progress=False)


def test_weights_that_become_non_finite_in_the_last_update_are_refused() -> None:
    def steep(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(net(x) * 1e3, y)  # a finite loss whose gradient, times lr, overflows float32

    sgd = SGDConfig(lr=1e37, momentum=0.0, weight_decay=0.0, schedule="constant")
    with pytest.raises((ValueError, FloatingPointError), match="non-finite"):
        fit(tiny_cnn(), [batch(8)], steps=1, sgd=sgd, loss_fn=steep, show_progress=False)


@pytest.mark.parametrize("bad", [dict(lr=-0.1), dict(lr=float("nan")), dict(lr=float("inf")),
                                 dict(weight_decay=-1e-4), dict(weight_decay=float("nan")),
                                 dict(schedule="linear")])
def test_sgd_config_refuses_bad_values(bad: dict) -> None:
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field):
        SGDConfig(**bad)


@pytest.mark.parametrize("momentum", [float("nan"), -0.5])
def test_sgd_config_refuses_a_bad_momentum(momentum: float) -> None:
    with pytest.raises(ValueError, match="momentum"):
        SGDConfig(momentum=momentum)


# ------------------------------------------------------------------------------------- the schedules

@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_lr_factor_closed_forms(p: float) -> None:
    assert lr_factor("constant", p) == 1.0
    assert lr_factor("cosine", p) == pytest.approx((1 + math.cos(math.pi * p)) / 2, abs=1e-15)
    garipov = 1.0 if p <= 0.5 else (1.0 - 0.99 * (p - 0.5) / 0.4 if p <= 0.9 else 0.01)
    assert lr_factor("garipov", p) == pytest.approx(garipov, abs=1e-15)


def test_lr_factor_known_values_and_clamping() -> None:
    assert lr_factor("cosine", 0.5) == pytest.approx(0.5)
    assert lr_factor("cosine", 1.0) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor("garipov", 0.7) == pytest.approx(0.505)  # halfway down the linear part: 1 - 0.99/2
    assert lr_factor("garipov", 0.95) == 0.01
    for schedule in train.SCHEDULES:  # outside [0, 1] the ends hold
        assert lr_factor(schedule, -0.5) == lr_factor(schedule, 0.0)
        assert lr_factor(schedule, 7.0) == lr_factor(schedule, 1.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor("step", 0.3)


# -------------------------------------------------------------------------------------- evaluation

def plain_evaluation(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float, list[int]]:
    """Per sample, on an eval-mode copy: mean cross-entropy, accuracy (%) and the predicted labels."""
    net = copy.deepcopy(model).eval()
    losses, predictions = [], []
    with torch.no_grad():
        for xi, yi in zip(x, y):
            logits = net(xi[None])[0]
            losses.append(float(torch.logsumexp(logits.double(), 0) - logits[yi].double()))
            predictions.append(int(logits.argmax()))
    correct = sum(p == int(t) for p, t in zip(predictions, y))
    return sum(losses) / len(x), 100.0 * correct / len(x), predictions


def test_evaluate_accuracy_mean_loss_and_predict_agree_with_a_per_sample_loop() -> None:
    model = warm_bn(tiny_cnn(4, dropout=0.5), 4).train()  # eval mode must be used, and restored afterwards
    before = snapshot(model)
    x, y = batch(23, seed=7)
    loss, acc, predictions = plain_evaluation(model, x, y)
    for source in (LabeledImages(x, y), chunks(x, y, 5)):
        result = evaluate(model, source, batch_size=4)
        assert result["loss"] == pytest.approx(loss, rel=1e-6)
        assert result["accuracy"] == pytest.approx(acc)
    assert accuracy(model, chunks(x, y, 10)) == pytest.approx(acc)
    assert mean_loss(model, chunks(x, y, 10)) == pytest.approx(loss, rel=1e-6)
    assert predict(model, x, batch_size=4).tolist() == predictions
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, [])


def test_evaluate_takes_a_plain_function() -> None:
    weights = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    x, y = batch(10)
    result = evaluate(lambda z: z.flatten(1) @ weights, [(x, y)])
    logits = x.flatten(1) @ weights
    assert result["accuracy"] == pytest.approx(100.0 * float((logits.argmax(1) == y).double().mean()))
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits.double(), y)), rel=1e-6)


# ------------------------------------------------------------------------------------ curves through fit

def test_a_curve_trained_through_fit_curve_changes_only_its_bends() -> None:
    a, b = warm_bn(tiny_cnn(0), 1).eval(), warm_bn(tiny_cnn(1), 2).eval()
    curve = curves.Curve.between(a, b, n_bends=2)
    before = snapshot(curve)
    endpoint_buffers = [{k: v.clone() for k, v in part.as_dict().items()} for part in (curve.buffers_a,
                                                                                       curve.buffers_b)]
    trained, history = curves.fit_curve(curve, [batch(8, 1), batch(8, 2)], epochs=2,
                                        sgd=SGDConfig(lr=0.1, weight_decay=0.01), show_progress=False)
    assert_unchanged(curve, before)
    assert not torch.equal(trained.bends, curve.bends)
    assert torch.equal(trained.start, curve.start) and torch.equal(trained.end, curve.end)
    for part, saved in zip((trained.buffers_a, trained.buffers_b), endpoint_buffers):
        for name, value in part.as_dict().items():  # train-mode BN wrote only to throw-away buffers
            assert torch.equal(value, saved[name]), name
    assert [n for n, _ in trained.named_parameters()] == ["bends"]
    assert history.column("step") == [2, 4] and not trained.training
    with pytest.raises(TypeError, match="Curve"):
        curves.fit_curve(a, [batch(8)], steps=1)  # type: ignore[arg-type]
