"""One batch-norm recalibration: the semantics of torch.optim.swa_utils.update_bn, nothing mutated."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from mcar_lib import batchnorm, curves, repair
from mcar_lib.data import LabeledImages, batches

import helpers
from helpers import assert_unchanged, same_weights, snapshot, tiny_cnn


def cnn(seed: int = 0, dropout: bool = False) -> nn.Module:
    """Batch norm after a convolution (2-D) and after a hidden linear layer (1-D), on 1×6×6 images."""
    return tiny_cnn(seed, widths=(4,), size=6, hidden=8, dropout=0.5 if dropout else 0.0)


def images(n: int = 300, seed: int = 0) -> LabeledImages:
    return helpers.images(n, seed, shape=(1, 6, 6))


@pytest.mark.parametrize("batch_size", [256, 100, 300])
def test_recalibrated_equals_update_bn(batch_size: int) -> None:
    model, data = cnn(), images()  # 300 images: batches of 256 + 44 give unequal batches
    reference = copy.deepcopy(model)
    update_bn(list(batches(data, batch_size)), reference)
    ours = batchnorm.recalibrated(model, data, batch_size=batch_size)
    for name, value in reference.named_buffers():
        torch.testing.assert_close(dict(ours.named_buffers())[name], value, rtol=0, atol=0, msg=name)
    assert not ours.training


def test_nothing_given_is_changed_and_dropout_stays_off() -> None:
    model, data = cnn(dropout=True).train(), images()
    before, x_before = snapshot(model), data.x.clone()
    recalibrated = batchnorm.recalibrated(model, data)
    assert_unchanged(model, before)
    assert model.training and torch.equal(data.x, x_before)
    # with dropout off, the result does not depend on the random state (update_bn would: it trains dropout)
    torch.manual_seed(1)
    again = batchnorm.recalibrated(model, data)
    for name, value in recalibrated.named_buffers():
        assert torch.equal(dict(again.named_buffers())[name], value), name


def test_curve_statistics_use_the_same_recalibration() -> None:
    a, b, data = cnn(0), cnn(1), images()
    curve = curves.Curve.between(a, b)
    at_half = curve.at(0.5, bn_data=data)
    plain = copy.deepcopy(at_half)
    update_bn(list(batches(data, 256)), plain)  # the curve's batches of 256 by default
    for name, value in plain.named_buffers():
        torch.testing.assert_close(dict(at_half.named_buffers())[name], value, rtol=0, atol=0, msg=name)


def test_noisy_model_statistics_come_from_the_bonafide_data() -> None:
    a, b, data = cnn(0), cnn(1), images()
    noisy = repair.noisy_model(a, b, data, seed=3).model
    reference = copy.deepcopy(noisy)
    update_bn(list(batches(data, 256)), reference)
    for name, value in reference.named_buffers():
        torch.testing.assert_close(dict(noisy.named_buffers())[name], value, rtol=0, atol=0, msg=name)


def test_models_without_batch_norm_and_empty_data() -> None:
    plain = tiny_cnn(widths=(4,), size=6, batch_norm=False)
    assert batchnorm.statistics_names(plain) == set()
    copy_ = batchnorm.recalibrated(plain, images())
    assert copy_ is not plain and same_weights(copy_, plain)
    with pytest.raises(ValueError, match="no batches"):
        batchnorm.recalibrated(cnn(), [])
