"""Architectures: shapes, parameter counts computed by hand, batch norm where expected, the cached trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mcar_lib import cache, models
from mcar_lib.data import LabeledImages


def _conv(cin: int, cout: int, k: int = 3, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def test_small_cnn_shapes_and_parameter_count() -> None:
    w = 5
    model = models.build("small_cnn", width=w)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    expected = _conv(1, w, bias=False) + 2 * w + _conv(w, 2 * w, bias=False) + 2 * 2 * w + (2 * w * 7 * 7 + 1) * 10
    assert models.count_parameters(model) == expected
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2
    rgb = models.build("small_cnn", in_channels=3, num_classes=4, width=2, image_size=8)
    assert rgb(torch.rand(1, 3, 8, 8)).shape == (1, 4)


def test_vgg16_is_garipovs_without_batch_norm() -> None:
    model = models.build("vgg16")
    layout = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs = sum(_conv(cin, cout) for cin, cout in zip([3] + layout[:-1], layout))
    classifier = (512 * 512 + 512) * 2 + 512 * 10 + 10
    assert models.count_parameters(model) == convs + classifier
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_preresnet26_has_four_basic_blocks_per_stage() -> None:
    model = models.build("preresnet26")
    blocks = [m for m in model.modules() if isinstance(m, models.PreActBlock)]
    assert len(blocks) == 12 and len(model.layer1) == len(model.layer2) == len(model.layer3) == 4
    # by hand: stem, 3 stages of 4 blocks (bn-conv-bn-conv, 1x1 shortcut where the width changes), bn, fc
    total = _conv(3, 16, bias=False)
    cin = 16
    for planes in (16, 32, 64):
        for i in range(4):
            total += 2 * cin + _conv(cin, planes, bias=False) + 2 * planes + _conv(planes, planes, bias=False)
            if i == 0 and cin != planes:
                total += _conv(cin, planes, k=1, bias=False)
            cin = planes
    total += 2 * 64 + 64 * 10 + 10
    assert models.count_parameters(model) == total
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_narrow_paper_architectures_keep_every_layer_and_name() -> None:
    # the *_smoke profiles run the paper's code path on narrow networks: same parameter names, fewer channels
    for name, default, narrow in (("vgg16", 64, 8), ("preresnet26", 16, 2)):
        wide, thin = models.build(name), models.build(name, width=narrow)
        assert [n for n, _ in wide.named_parameters()] == [n for n, _ in thin.named_parameters()]
        first = next(m for m in thin.modules() if isinstance(m, nn.Conv2d))
        assert first.out_channels == narrow
        assert thin.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        assert models.architecture_kwargs(name, (3, 32, 32), width=default) == {"in_channels": 3, "num_classes": 10}
        assert models.architecture_kwargs(name, (3, 32, 32), width=narrow)["width"] == narrow
    layout = [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
    convs = sum(_conv(cin, cout) for cin, cout in zip([3] + layout[:-1], layout))
    assert models.count_parameters(models.build("vgg16", width=8)) == convs + (64 * 64 + 64) * 2 + 64 * 10 + 10
    with pytest.raises(ValueError, match="width"):
        models.build("vgg16", width=0)


def test_last_conv_name_and_bad_input() -> None:
    assert models.last_conv_name(models.build("small_cnn", width=2)) == "conv2"
    assert models.last_conv_name(models.build("preresnet26")) == "layer3.3.conv2"
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        models.last_conv_name(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown architecture"):
        models.build("resnet50")
    with pytest.raises(TypeError, match="small_cnn"):
        models.build("small_cnn", depth=3)
    with pytest.raises(ValueError, match="width"):
        models.build("small_cnn", width=0)


def test_cache_descriptions_tell_data_and_models_apart() -> None:
    x = torch.zeros(4, 1, 2, 2)
    same = LabeledImages(x, torch.zeros(4, dtype=torch.long))
    assert cache.describe(same) == cache.describe(LabeledImages(x.clone(), torch.zeros(4, dtype=torch.long)))
    relabelled = LabeledImages(x, torch.tensor([0, 0, 0, 1]))
    assert cache.describe(same) != cache.describe(relabelled)
    torch.manual_seed(0)
    a, b = models.build("small_cnn", width=2), models.build("small_cnn", width=2)
    assert cache.fingerprint(a) != cache.fingerprint(b)
    b.load_state_dict(a.state_dict())
    assert cache.fingerprint(a) == cache.fingerprint(b)
    with pytest.raises(TypeError, match="fingerprint"):
        cache.fingerprint([1, 2])  # type: ignore[arg-type]
