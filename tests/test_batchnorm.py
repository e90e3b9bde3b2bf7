"""One batch-norm recalibration: the semantics of torch.optim.swa_utils.update_bn, nothing mutated."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from mcar_lib import batchnorm, curves, repair
from mcar_lib.data import LabeledImages, batches


def cnn(seed: int = 0, dropout: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8),
              nn.BatchNorm1d(8), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.5))
    return nn.Sequential(*layers, nn.Linear(8, 3))


def images(n: int = 300, seed: int = 0) -> LabeledImages:
    g = torch.Generator().manual_seed(seed)
    return LabeledImages(torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()}


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
    before = statistics(model)
    recalibrated = batchnorm.recalibrated(model, data)
    assert model.training and all(m.training for m in model.modules())
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), name
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
    plain = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    assert batchnorm.statistics_names(plain) == set()
    copy_ = batchnorm.recalibrated(plain, images())
    assert copy_ is not plain and torch.equal(copy_[1].weight, plain[1].weight)
    with pytest.raises(ValueError, match="no batches"):
        batchnorm.recalibrated(cnn(), [])
