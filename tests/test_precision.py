"""Full precision where exact arithmetic matters: flags switched off inside, restored after; tolerances by dtype."""

from __future__ import annotations

import pytest
import torch

from mcar_lib import hessian, precision

NEW_API = hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision")


def flags() -> tuple:
    if NEW_API:
        return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def set_tf32(on: bool) -> None:
    if NEW_API:
        torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if on else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


@pytest.fixture
def tf32_on():
    before = flags()
    set_tf32(True)
    yield
    if NEW_API:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before
    else:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_full_precision_switches_tf32_off_and_restores_it(tf32_on) -> None:
    before = flags()
    assert precision.tf32_enabled()
    with precision.full_precision():
        assert not precision.tf32_enabled()
    assert flags() == before and precision.tf32_enabled()


def test_flags_are_restored_after_an_exception(tf32_on) -> None:
    before = flags()
    with pytest.raises(RuntimeError, match="inside"):
        with precision.full_precision():
            raise RuntimeError("inside")
    assert flags() == before


def test_curvature_functions_run_without_tf32_and_leave_the_settings_alone(tf32_on) -> None:
    seen: list[bool] = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    model.register_forward_hook(lambda *_: seen.append(precision.tf32_enabled()))
    before = flags()
    hessian.input_lambda_max(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), iters=3)
    assert seen and not any(seen)
    assert flags() == before


def test_tolerances_follow_the_dtype_and_widen_only_for_tf32_on_cuda(tf32_on) -> None:
    single, double = precision.relative_tolerance(torch.float32), precision.relative_tolerance(torch.float64)
    assert double < 1e-10 < single < 2e-3
    assert precision.relative_tolerance(torch.float32, "cpu") == single
    assert precision.relative_tolerance(torch.float32, "cuda") >= 1e-2  # TF32 is on in this test
    with precision.full_precision():
        assert precision.relative_tolerance(torch.float32, "cuda") == single
