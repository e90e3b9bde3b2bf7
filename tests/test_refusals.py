"""Inputs that would give a silently wrong answer are refused, with a message that names the problem.

Non-finite weights (a NaN anywhere poisons every result built from it), non-finite images, empty bonafide sets,
models without parameters, t outside [0, 1] and endpoints that do not line up. (Fashion-MNIST staging and
refused cache entries are tested with their modules, in ``test_data.py`` and ``test_cache.py``; NaN training
data in ``test_train.py``.)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from mcar_lib import attacks, curves, hessian, repair
from mcar_lib.data import LabeledImages
from mcar_lib.train import SGDConfig

from helpers import batch, learnable, tiny_cnn, warm_bn

QUICK = dict(steps=1, sgd=SGDConfig(lr=0.01), batch_size=8)
QUICK_PATH = dict(training=repair.PathTraining(steps=1, batch_size=8, lr=0.01),
                  selection=repair.TSelection(folds=2, ts=(0.0, 0.5, 1.0)))
EMPTY = LabeledImages(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))


def poisoned(seed: int = 1, name: str = "conv2.weight", value: float = float("nan"), buffer: bool = False) -> nn.Module:
    """A tiny CNN with one non-finite entry in the parameter (or buffer) ``name``."""
    model = warm_bn(tiny_cnn(seed), seed).eval()
    tensors = dict(model.named_buffers()) if buffer else dict(model.named_parameters())
    with torch.no_grad():
        tensors[name].view(-1)[1] = value
    return model


def nan_images(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch(n, seed)
    x[1, 0, 3, 4] = float("nan")
    return x, y


# ------------------------------------------------------------------------------------- curve endpoints

@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", ["a", "b"])
def test_a_non_finite_weight_in_an_endpoint_is_refused_naming_the_parameter(value: float, which: str) -> None:
    good, bad = tiny_cnn(0), poisoned(value=value)
    a, b = (bad, good) if which == "a" else (good, bad)
    for build in (lambda: curves.Curve.between(a, b), lambda: curves.Curve.line(a, b),
                  lambda: curves.Curve.between(a, b, kind="polychain", n_bends=3)):
        with pytest.raises(ValueError, match=rf"endpoint {which} .*non-finite.*parameter 'conv2.weight'"):
            build()


def test_a_non_finite_batch_norm_statistic_in_an_endpoint_is_refused_naming_the_buffer() -> None:
    bad = poisoned(name="bn1.running_var", value=float("inf"), buffer=True)
    with pytest.raises(ValueError, match=r"endpoint b .*buffer 'bn1.running_var'"):
        curves.Curve.between(tiny_cnn(0), bad)


def test_mismatched_endpoints_are_refused_naming_the_difference() -> None:
    plain = tiny_cnn(0, batch_norm=False)
    cases = [(tiny_cnn(0), tiny_cnn(1, widths=(4, 5)), r"'conv2.weight' has shape .* in endpoint a but"),
             (tiny_cnn(0), tiny_cnn(1, classes=4), r"'fc.weight' has shape \(3, 96\) in endpoint a but \(4, 96\)"),
             (tiny_cnn(0), tiny_cnn(1).double(), r"dtype torch.float32 in endpoint a but torch.float64"),
             (tiny_cnn(0), tiny_cnn(1, batch_norm=False), r"endpoint b has no parameter 'bn1.weight'"),
             (plain, tiny_cnn(1), r"endpoint a has no parameter 'bn1.weight'")]
    for a, other, message in cases:
        for join in (lambda: curves.Curve.between(a, other),
                     lambda: repair.path_repair(a, other, learnable(20), **QUICK_PATH),
                     lambda: repair.noisy_model(a, other, learnable(20))):
            with pytest.raises(ValueError, match=message):
                join()
    no_stats = tiny_cnn(1)
    no_stats.bn2.track_running_stats = False
    no_stats.bn2.running_mean = no_stats.bn2.running_var = no_stats.bn2.num_batches_tracked = None
    with pytest.raises(ValueError, match=r"endpoint b has no buffer 'bn2.running_mean'"):
        curves.Curve.between(tiny_cnn(0), no_stats)


@pytest.mark.parametrize("t", [-1e-9, 1.0 + 1e-9, 2.0, float("nan"), float("inf")])
def test_t_outside_the_unit_interval_is_refused_everywhere(t: float) -> None:
    curve = curves.Curve.between(tiny_cnn(0), tiny_cnn(1))
    bn = [batch(8)[0]]
    calls: list[Callable[[], object]] = [
        lambda: curve.weights_at(t), lambda: curve.flat_weights_at(t), lambda: curve.coefficients(t),
        lambda: curve.point(t), lambda: curve.at(t, bn), lambda: curve.recompute_bn(t, bn),
        lambda: curve(batch(2)[0], t), lambda: curves.check_t(t),
        lambda: repair.heldout_table(curve, learnable(10), learnable(10), [0.0, t]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            call()


# ------------------------------------------------------------------------------------------------ repair

def repairs(model: nn.Module, other: nn.Module, bonafide: LabeledImages) -> dict[str, Callable[[], object]]:
    """Every repair entry point, called with ``model`` as the (first) tampered model."""
    return {
        "path_repair": lambda: repair.path_repair(model, other, bonafide, **QUICK_PATH),
        "path_repair (one model)": lambda: repair.path_repair(model, repair.finetuned_endpoint(model, steps=1),
                                                              bonafide, **QUICK_PATH),
        "train_path": lambda: repair.train_path(model, other, bonafide, training=QUICK_PATH["training"]),
        "cross_validated_table": lambda: repair.cross_validated_table(model, other, bonafide, folds=2,
                                                                      training=QUICK_PATH["training"]),
        "finetune": lambda: repair.finetune(model, bonafide, **QUICK),
        "noisy_model": lambda: repair.noisy_model(model, other, bonafide),
        "fine_prune": lambda: repair.fine_prune(model, bonafide, steps=1),
        "finetuned_endpoint": lambda: repair.finetuned_endpoint(model, steps=1)(bonafide),
        "repair (two models)": lambda: repair.repair([model, other], bonafide, **QUICK_PATH),
        "repair (one model)": lambda: repair.repair(model, bonafide, second_endpoint_steps=1, **QUICK_PATH),
    }


@pytest.mark.parametrize("entry", list(repairs(nn.ReLU(), nn.ReLU(), EMPTY)))
def test_repair_refuses_a_non_finite_model_naming_the_parameter(entry: str) -> None:
    with pytest.raises(ValueError, match=r"non-finite.*'conv2.weight'"):
        repairs(poisoned(), tiny_cnn(0), learnable(20))[entry]()


@pytest.mark.parametrize("entry", [*repairs(nn.ReLU(), nn.ReLU(), EMPTY), "train_from_scratch"])
def test_repair_refuses_an_empty_bonafide_set(entry: str) -> None:
    calls = {**repairs(tiny_cnn(0), tiny_cnn(1), EMPTY),
             "train_from_scratch": lambda: repair.train_from_scratch(tiny_cnn(0), EMPTY, **QUICK)}
    with pytest.raises(ValueError, match=r"empty|0 samples"):
        calls[entry]()


@pytest.mark.parametrize("entry", [*repairs(nn.ReLU(), nn.ReLU(), EMPTY), "train_from_scratch"])
def test_repair_refuses_a_model_without_parameters(entry: str) -> None:
    calls = {**repairs(nn.ReLU(), nn.ReLU(), learnable(20)),
             "train_from_scratch": lambda: repair.train_from_scratch(nn.ReLU(), learnable(20), **QUICK)}
    with pytest.raises(ValueError, match=r"no parameters|no nn.Conv2d"):
        calls[entry]()


def test_repair_refuses_a_bonafide_set_that_is_not_labelled_images() -> None:
    x, y = batch(8)
    with pytest.raises(TypeError, match="LabeledImages"):
        repair.finetune(tiny_cnn(0), [(x, y)], **QUICK)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- attacks

def test_attacks_refuse_nan_images() -> None:
    model = tiny_cnn(0)
    x, y = nan_images()
    for attack in (lambda: attacks.pgd(model, x, y, eps=0.1), lambda: attacks.fgsm(model, x, y, eps=0.1),
                   lambda: attacks.PGD(eps=0.1, steps=1)(model, x, y),
                   lambda: attacks.robust_evaluate(model, [(x, y)], attacks.PGD(eps=0.1, steps=1)),
                   lambda: attacks.robust_accuracy(model, [(x, y)], attacks.PGD(eps=0.1, steps=1))):
        with pytest.raises(ValueError, match=r"finite images in \[0, 1\].*NaN"):
            attack()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_robust_evaluation_refuses_a_non_finite_model_naming_the_parameter(value: float) -> None:
    x, y = batch(4)
    bad = poisoned(value=value)
    with pytest.raises(ValueError, match=r"attacked model .*non-finite.*'conv2.weight'"):
        attacks.robust_evaluate(bad, [(x, y)], attacks.PGD(eps=0.1, steps=1))
    with pytest.raises(ValueError, match=r"non-finite.*'members.1.conv2.weight'"):
        attacks.robust_evaluate(attacks.Ensemble([tiny_cnn(0), bad]), [(x, y)], attacks.PGD(eps=0.1, steps=1))


def test_pgd_refuses_a_non_finite_model() -> None:
    x, y = batch(4)
    with pytest.raises(ValueError, match="non-finite"):
        attacks.pgd(poisoned(), x, y, eps=0.1, steps=2)


# ----------------------------------------------------------------------------------------------- hessian

def input_curvature_calls(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    return {
        "input_hvp": lambda: hessian.input_hvp(model, x, y, torch.ones_like(x)),
        "input_hessian_eig": lambda: hessian.input_hessian_eig(model, x, y, iters=2),
        "input_lambda_max": lambda: hessian.input_lambda_max(model, x, y, iters=2),
        "input_lambda_max_loop": lambda: hessian.input_lambda_max_loop(model, x, y, iters=2),
        "input_lambda_max_gauss_newton": lambda: hessian.input_lambda_max_gauss_newton(model, x, y),
        "input_gradient": lambda: hessian.input_gradient(model, x, y),
        "mean_input_lambda_max": lambda: hessian.mean_input_lambda_max(model, [(x, y)], iters=2),
        "slot_averaged_lambda_max": lambda: hessian.slot_averaged_lambda_max(model, [(x, y)], iters=2),
    }


@pytest.mark.parametrize("entry", list(input_curvature_calls(nn.ReLU(), *batch(1))))
def test_input_curvature_refuses_nan_inputs(entry: str) -> None:
    with pytest.raises(ValueError, match=r"x holds 1 non-finite value"):
        input_curvature_calls(tiny_cnn(0), *nan_images())[entry]()


@pytest.mark.parametrize("entry", list(input_curvature_calls(nn.ReLU(), *batch(1))))
def test_input_curvature_refuses_a_non_finite_model(entry: str) -> None:
    with pytest.raises(ValueError, match=r"non-finite.*'conv2.weight'"):
        input_curvature_calls(poisoned(), *batch(4))[entry]()


def weight_curvature_calls(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    v = {name: torch.ones_like(p) for name, p in model.named_parameters()}
    return {
        "weight_hvp": lambda: hessian.weight_hvp(model, [(x, y)], v),
        "weight_lambda_max": lambda: hessian.weight_lambda_max(model, [(x, y)], iters=2),
        "weight_top_eigenvalues": lambda: hessian.weight_top_eigenvalues(model, [(x, y)], k=1, m=3),
    }


@pytest.mark.parametrize("broken", ["data", "model"])
@pytest.mark.parametrize("entry", list(weight_curvature_calls(nn.Linear(1, 1), *batch(1))))
def test_weight_curvature_refuses_nan_inputs_and_non_finite_models(entry: str, broken: str) -> None:
    model, (x, y) = (tiny_cnn(0), nan_images()) if broken == "data" else (poisoned(), batch(4))
    with pytest.raises(ValueError, match="non-finite"):
        weight_curvature_calls(model, x, y)[entry]()
