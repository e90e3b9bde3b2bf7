"""Triggers land where configured, poisoning honours its rate exactly, ASR leaves the target class out, the path-aware
attacker releases points of its trained curve, and relapse measures a backdoor coming back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcar_lib import backdoor, curves, repair
from mcar_lib.backdoor import BlendTrigger, PatchTrigger
from mcar_lib.data import LabeledImages
from mcar_lib.train import SGDConfig

from helpers import ConstantClassifier, assert_unchanged, learnable, same_weights, small_cnn, snapshot


def _images(n: int, c: int, h: int, w: int, seed: int = 0) -> Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _expected_top_left(corner: str, size: int, margin: int, h: int, w: int) -> tuple[int, int]:
    row = margin if "top" in corner else h - 1 - margin - (size - 1)
    col = margin if "left" in corner else w - 1 - margin - (size - 1)
    return row, col


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (2, 17, 9)])
@pytest.mark.parametrize("corner", backdoor.CORNERS)
def test_patch_lands_where_configured(shape: tuple[int, int, int], corner: str) -> None:
    c, h, w = shape
    trig = PatchTrigger(size=3, value=0.75, corner=corner, margin=1)
    x = _images(4, c, h, w)
    before = x.clone()
    out = trig.apply(x)
    assert torch.equal(x, before), "apply must not change its input"
    row, col = _expected_top_left(corner, 3, 1, h, w)
    for n in range(4):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    inside = row <= i < row + 3 and col <= j < col + 3
                    expected = 0.75 if inside else before[n, ch, i, j].item()
                    assert out[n, ch, i, j].item() == pytest.approx(expected)


def test_patch_single_image_and_explicit_position() -> None:
    x = torch.zeros(3, 10, 12)
    out = PatchTrigger(size=2, value=1.0, position=(4, 7)).apply(x)
    assert out.shape == x.shape
    expected = torch.zeros(3, 10, 12)
    for i in (4, 5):
        for j in (7, 8):
            expected[:, i, j] = 1.0
    assert torch.equal(out, expected)
    assert PatchTrigger(size=2, position=(4, 7)).mask(10, 12).sum() == 4


def test_patch_that_does_not_fit_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        PatchTrigger(size=5, margin=2).apply(torch.zeros(1, 1, 6, 6))
    with pytest.raises(ValueError, match="corner"):
        PatchTrigger(corner="middle")
    with pytest.raises(TypeError, match="float"):
        PatchTrigger().apply(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))


def test_blend_trigger_formula_and_resizing() -> None:
    pattern = torch.rand(28, 28, generator=torch.Generator().manual_seed(1))
    trig = BlendTrigger(pattern, alpha=0.2)
    x = _images(3, 3, 28, 28)
    out = trig.apply(x)
    for ch in range(3):
        assert torch.allclose(out[:, ch], 0.8 * x[:, ch] + 0.2 * pattern)
    small = trig.apply(_images(2, 1, 14, 10))  # resized pattern, any size
    assert small.shape == (2, 1, 14, 10)
    assert small.min() >= 0 and small.max() <= 1


def _labelled(n_per_class: list[int], seed: int = 0) -> LabeledImages:
    y = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(n_per_class)])
    return LabeledImages(_images(len(y), 1, 8, 8, seed) * 0.5, y)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 1.0])
def test_poisoning_rate_is_exact_per_non_target_class(rate: float) -> None:
    counts = [13, 7, 20, 1, 9]
    data = _labelled(counts)
    x0, y0 = data.x.clone(), data.y.clone()
    trig = PatchTrigger(size=2, margin=0)
    out = backdoor.poison(data, trig, target=2, rate=rate, seed=3)
    assert torch.equal(data.x, x0) and torch.equal(data.y, y0), "poison must not change its input"
    for c, n_c in enumerate(counts):
        chosen = out.is_poisoned & (y0 == c)
        assert int(chosen.sum()) == (0 if c == 2 else round(rate * n_c))
    assert out.n_poisoned == sum(round(rate * n) for c, n in enumerate(counts) if c != 2)
    for i in range(len(y0)):
        if out.is_poisoned[i]:
            assert out.data.y[i] == 2
            assert torch.equal(out.data.x[i], trig.apply(x0[i]))
        else:
            assert out.data.y[i] == y0[i]
            assert torch.equal(out.data.x[i], x0[i])


def test_poisoning_is_seeded() -> None:
    data = _labelled([30, 30, 30])
    a = backdoor.poison(data, PatchTrigger(size=2), target=0, rate=0.3, seed=5)
    b = backdoor.poison(data, PatchTrigger(size=2), target=0, rate=0.3, seed=5)
    c = backdoor.poison(data, PatchTrigger(size=2), target=0, rate=0.3, seed=6)
    assert torch.equal(a.is_poisoned, b.is_poisoned)
    assert not torch.equal(a.is_poisoned, c.is_poisoned)
    with pytest.raises(ValueError, match="target"):
        backdoor.poison(data, PatchTrigger(size=2), target=0, rate=0.3, seed=5, source_classes=[0, 1])


class IgnoresTrigger(nn.Module):
    """A random linear classifier that cannot see the trigger's pixels (they are blanked before it)."""

    def __init__(self, mask: Tensor, n_classes: int = 4) -> None:
        super().__init__()
        self.register_buffer("keep", (~mask).float())
        self.fc = nn.Linear(mask.numel(), n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc((x * self.keep).flatten(1))


def test_asr_of_a_model_that_always_says_target_is_100() -> None:
    data = _labelled([10, 10, 10, 10])
    model = ConstantClassifier(1)
    assert backdoor.attack_success_rate(model, data, PatchTrigger(size=2), 1) == 100.0
    assert backdoor.clean_accuracy(model, data) == pytest.approx(25.0)


def test_asr_of_a_trigger_blind_model_is_its_error_rate_into_the_target() -> None:
    torch.manual_seed(0)
    data = _labelled([15, 12, 9, 14], seed=4)
    trig = PatchTrigger(size=3, margin=1)
    model = IgnoresTrigger(trig.mask(8, 8)).train()
    target = 2
    hits = sources = target_kept = triggered_right = 0
    with torch.no_grad():
        for i in range(len(data)):
            pred = model.fc((data.x[i] * (~trig.mask(8, 8)).float()).flatten()).argmax().item()
            label = data.y[i].item()
            if label == target:
                target_kept += pred == target
                continue
            sources += 1
            hits += pred == target
            triggered_right += pred == label
    assert 0 < hits < sources  # the check means something only if the model errs into the target sometimes
    assert backdoor.attack_success_rate(model, data, trig, target, batch_size=7) == pytest.approx(100 * hits / sources)
    assert backdoor.triggered_accuracy(model, data, trig, target) == pytest.approx(100 * triggered_right / sources)
    assert backdoor.inflated_asr(model, data, trig, target) == pytest.approx(100 * (hits + target_kept) / len(data))
    ev = backdoor.backdoor_metrics(model, data, trig, target)
    assert ev.attack_success_rate == pytest.approx(100 * hits / sources)
    assert model.training, "metrics must restore the model's train/eval mode"


def test_metrics_accept_any_iterable_of_batches_and_reject_empty_sources() -> None:
    data = _labelled([6, 6, 6])
    model = ConstantClassifier(0, n_classes=3)
    listed = [(data.x[:9], data.y[:9]), (data.x[9:], data.y[9:])]
    assert backdoor.attack_success_rate(model, listed, PatchTrigger(size=2), 0) == 100.0
    only_target = LabeledImages(data.x[:6], data.y[:6])
    with pytest.raises(ValueError, match="other than the target"):
        backdoor.attack_success_rate(model, only_target, PatchTrigger(size=2), 0)


# ------------------------------------------------------------------------ path-aware attacker and relapse

def _poisoned_set(n: int = 60, seed: int = 0) -> LabeledImages:
    """Learnable images, half of every non-target class triggered and relabelled as class 0."""
    return backdoor.poison(learnable(n, seed=seed), PatchTrigger(size=2, margin=0), target=0, rate=0.5, seed=seed).data


def _mean_loss(model: nn.Module, data: LabeledImages) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(data.x), data.y))


def test_fit_path_aware_trains_a_copy_of_the_curve_on_the_poisoned_data() -> None:
    poisoned = _poisoned_set()
    curve = curves.Curve.between(small_cnn(0), small_cnn(1))
    bends, start, end = curve.bends.detach().clone(), curve.start.clone(), curve.end.clone()
    sgd = SGDConfig(lr=0.1)
    trained = backdoor.fit_path_aware(curve, poisoned, steps=30, sgd=sgd, batch_size=16, seed=0)
    assert trained is not curve and torch.equal(curve.bends, bends), "the attacker's input curve is not changed"
    assert torch.equal(trained.start, start) and torch.equal(trained.end, end), "the endpoints stay where they are"
    assert not torch.equal(trained.bends, bends)
    before, after = (_mean_loss(c.at(0.5, bn_data=poisoned), poisoned) for c in (curve, trained))
    assert after < before, "the middle of the path fits the poisoned data better after training"
    again = backdoor.fit_path_aware(curve, poisoned, steps=30, sgd=sgd, batch_size=16, seed=0)
    assert torch.equal(again.bends, trained.bends)


def test_released_models_lie_on_the_trained_curve() -> None:
    poisoned = _poisoned_set()
    curve = backdoor.fit_path_aware(curves.Curve.between(small_cnn(0), small_cnn(1)), poisoned, steps=5,
                                    sgd=SGDConfig(lr=0.1), batch_size=16, seed=1)
    released = backdoor.release(curve, poisoned, ts=(0.25, 0.75))
    assert len(released) == 2
    for t, model in zip((0.25, 0.75), released):
        expected = curve.at(t, bn_data=poisoned)
        assert same_weights(model, expected)  # the curve's weights at t, batch norm from the attacker's data
        assert not model.training
    assert not same_weights(released[0], released[1])
    default = backdoor.release(curve, poisoned)
    assert all(same_weights(m, r) for m, r in zip(default, released))  # (0.25, 0.75) by default
    for bad in ((0.5, 1.5), (-0.1,)):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            backdoor.release(curve, poisoned, ts=bad)


def test_relapse_starts_at_the_models_own_metrics_and_a_poisoned_set_brings_the_backdoor() -> None:
    trigger, target = PatchTrigger(size=2, margin=0), 0
    clean = repair.finetune(small_cnn(0), learnable(90), steps=60, sgd=SGDConfig(lr=0.1), batch_size=16).model
    test = learnable(60, seed=3)
    sources = learnable(60, seed=5)
    sources = sources.subset(sources.y != target)
    attacker = LabeledImages(trigger.apply(sources.x), torch.full((len(sources),), target))  # purely poisoned
    snap = snapshot(clean)
    table = backdoor.relapse(clean, attacker, test, trigger, target, steps=20, every=5,
                             sgd=SGDConfig(lr=0.05, schedule="constant"), batch_size=16, seed=0)
    assert_unchanged(clean, snap)
    assert list(table.columns) == ["step", "clean_accuracy", "asr"]
    assert table["step"].tolist() == [0, 5, 10, 15, 20]
    own = backdoor.backdoor_metrics(clean, test, trigger, target)
    assert table.loc[0, "clean_accuracy"] == pytest.approx(own.clean_accuracy)
    assert table.loc[0, "asr"] == pytest.approx(own.attack_success_rate)
    assert table["asr"].iloc[-1] > table.loc[0, "asr"]
    for bad in (dict(steps=0), dict(every=0)):
        with pytest.raises(ValueError, match="must be positive"):
            backdoor.relapse(clean, attacker, test, trigger, target, **{"steps": 4, "every": 2, **bad})
