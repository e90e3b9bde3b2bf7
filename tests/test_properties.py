"""Properties that must hold for every input, checked on many small random ones (hypothesis).

Curve coefficients and endpoints, PGD's constraints, the attack success rate's bounds and what it counts, and
cache keys. Each example is tiny (a few hundred weights, a handful of 8×8 images), so a test runs in seconds.
The examples are the same on every run (see ``conftest.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from mcar_lib import attacks, backdoor, cache, curves
from mcar_lib.data import LabeledImages
from mcar_lib.train import SGDConfig

from helpers import ConstantClassifier, batch, tiny_cnn, warm_bn

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
kinds = st.sampled_from(curves.CURVE_KINDS)


def bernstein(t: float, n_bends: int) -> list[float]:
    m = n_bends + 1
    return [math.comb(m, k) * t**k * (1 - t) ** (m - k) for k in range(m + 1)]


def hat(t: float, n_bends: int) -> list[float]:
    """The polygonal chain's weights by locating t's segment: control point k sits at k / (n + 1)."""
    segments = n_bends + 1
    k = min(int(t * segments), segments - 1)  # t in [k, k + 1] / segments
    local = t * segments - k
    out = [0.0] * (n_bends + 2)
    out[k], out[k + 1] = 1.0 - local, local
    return out


def expected_coefficients(kind: str, t: float, n_bends: int) -> list[float]:
    return bernstein(t, n_bends) if kind == "bezier" else hat(t, n_bends)


# ------------------------------------------------------------------------------------------ coefficients

@settings(max_examples=200, deadline=None)
@given(kind=kinds, t=unit, n_bends=st.integers(0, 6))
def test_coefficients_are_non_negative_sum_to_one_and_match_the_definition(kind: str, t: float, n_bends: int) -> None:
    c = curves.coefficient_list(kind, t, n_bends)
    assert len(c) == n_bends + 2
    assert all(v >= 0.0 for v in c)
    assert math.fsum(c) == pytest.approx(1.0, abs=1e-12)
    assert c == pytest.approx(expected_coefficients(kind, t, n_bends), abs=1e-12)
    as_tensor = curves.COEFFICIENTS[kind](t, n_bends, dtype=torch.float64)
    assert as_tensor.tolist() == pytest.approx(c, abs=1e-15)


@settings(max_examples=30, deadline=None)
@given(kind=kinds, n_bends=st.integers(0, 8))
def test_coefficients_are_exactly_one_hot_at_the_ends(kind: str, n_bends: int) -> None:
    zeros = [0.0] * n_bends
    assert curves.coefficient_list(kind, 0.0, n_bends) == [1.0, *zeros, 0.0]
    assert curves.coefficient_list(kind, 1.0, n_bends) == [0.0, *zeros, 1.0]


@settings(max_examples=100, deadline=None)
@given(t=unit)
def test_closed_forms_for_no_bend_and_one_bend(t: float) -> None:
    for kind in curves.CURVE_KINDS:  # no bend: both families are the straight line
        assert curves.coefficient_list(kind, t, 0) == pytest.approx([1 - t, t], abs=1e-15)
    assert curves.coefficient_list("bezier", t, 1) == pytest.approx([(1 - t) ** 2, 2 * t * (1 - t), t**2], abs=1e-15)
    chain = [1 - 2 * t, 2 * t, 0.0] if t <= 0.5 else [0.0, 2 - 2 * t, 2 * t - 1]
    assert curves.coefficient_list("polychain", t, 1) == pytest.approx(chain, abs=1e-15)


@settings(max_examples=40, deadline=None)
@given(kind=kinds, t=st.one_of(st.floats(max_value=-1e-12), st.floats(min_value=1 + 1e-12), st.just(math.nan)))
def test_t_outside_the_unit_interval_is_refused(kind: str, t: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        curves.coefficient_list(kind, t, 1)


# -------------------------------------------------------------------------------------- curve endpoints

endpoint_models = st.fixed_dictionaries({
    "widths": st.sampled_from([(2,), (3,), (2, 3)]),
    "batch_norm": st.booleans(),
    "classes": st.integers(2, 4),
})


@settings(max_examples=25, deadline=None)
@given(spec=endpoint_models, seeds=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
       kind=kinds, n_bends=st.integers(0, 3), t=unit, noise_seed=st.integers(0, 10**6))
def test_a_curve_reproduces_its_endpoints_exactly_and_follows_the_formula_inside(
        spec: dict, seeds: tuple[int, int], kind: str, n_bends: int, t: float, noise_seed: int) -> None:
    a = warm_bn(tiny_cnn(seeds[0], **spec), seeds[0]).eval()
    b = warm_bn(tiny_cnn(seeds[1], **spec), seeds[1] + 1).eval()
    curve = curves.Curve.between(a, b, kind=kind, n_bends=n_bends)
    with torch.no_grad():  # bends anywhere, not only on the straight line
        noise = torch.randn(curve.bends.shape, generator=torch.Generator().manual_seed(noise_seed))
        curve.bends.add_(noise)
    for end, model in ((0.0, a), (1.0, b)):
        exported = curve.at(end).state_dict()
        assert exported.keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            assert torch.equal(exported[key], value), key
    # inside: Σ_k c_k(t) p_k per parameter, computed in float64 from the control points by name
    points = [dict(a.named_parameters())] + [curve.unflatten(bend.detach()) for bend in curve.bends] \
        + [dict(b.named_parameters())]
    coefficients = expected_coefficients(kind, t, n_bends)
    for name, value in curve.weights_at(t).items():
        expected = sum(c * p[name].detach().double() for c, p in zip(coefficients, points))
        torch.testing.assert_close(value.detach().double(), expected, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------ PGD

@functools.cache
def attacked_model() -> nn.Module:
    return warm_bn(tiny_cnn(0, dropout=0.5), 0).train()


pgd_settings = st.fixed_dictionaries({
    "norm": st.sampled_from(attacks.NORMS),
    "eps": st.floats(0.0, 0.5),
    "steps": st.integers(0, 4),
    "alpha": st.one_of(st.none(), st.floats(0.0, 0.6)),
    "restarts": st.integers(1, 3),
    "random_start": st.booleans(),
    "bn": st.sampled_from(["eval", "batch"]),
})


@settings(max_examples=40, deadline=None)
@given(spec=pgd_settings, data_seed=st.integers(0, 10**6), scale=st.sampled_from([1.0, 4.0]))
def test_pgd_stays_in_the_ball_and_in_the_image_box(spec: dict, data_seed: int, scale: float) -> None:
    """For l2 the budget is scaled up (``scale``) so that the ball is not always inside the box."""
    eps = spec["eps"] * (scale if spec["norm"] == "l2" else 1.0)
    x, y = batch(6, data_seed)
    x[0] = 0.0  # images on the box's faces, where clipping matters
    x[1] = 1.0
    x0 = x.clone()
    x_adv = attacks.pgd(attacked_model(), x, y, **{**spec, "eps": eps},
                        generator=torch.Generator().manual_seed(data_seed))
    assert torch.equal(x, x0)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    delta = (x_adv - x).flatten(1).double()
    size = delta.abs().max(1).values if spec["norm"] == "linf" else delta.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-5) + 1e-6).all()), (size.max().item(), eps)


# ------------------------------------------------------------------------------------------------- ASR

asr_problems = st.fixed_dictionaries({
    "labels": st.lists(st.integers(0, 3), min_size=2, max_size=16),
    "target": st.integers(0, 3),
    "size": st.integers(1, 3),
    "corner": st.sampled_from(backdoor.CORNERS),
    "seed": st.integers(0, 10**6),
})


def problem(spec: dict) -> tuple[LabeledImages, backdoor.PatchTrigger, int]:
    labels = torch.tensor(spec["labels"])
    assume(bool((labels != spec["target"]).any()))  # the ASR is defined only with non-target images
    x = torch.rand(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(spec["seed"]))
    return LabeledImages(x, labels), backdoor.PatchTrigger(size=spec["size"], corner=spec["corner"]), spec["target"]


@settings(max_examples=40, deadline=None)
@given(spec=asr_problems, model_seed=st.integers(0, 10**6), batch_size=st.integers(1, 8))
def test_asr_is_a_percentage_that_ignores_target_class_images(spec: dict, model_seed: int, batch_size: int) -> None:
    data, trigger, target = problem(spec)
    model = tiny_cnn(model_seed, classes=4).eval()
    asr = backdoor.attack_success_rate(model, data, trigger, target, batch_size=batch_size)
    assert 0.0 <= asr <= 100.0
    # the same value with the target-class images removed, or replaced by anything else
    is_target = data.y == target
    without = data.subset(~is_target)
    assert backdoor.attack_success_rate(model, without, trigger, target) == pytest.approx(asr)
    scrambled = data.x.clone()
    scrambled[is_target] = torch.rand(scrambled[is_target].shape, generator=torch.Generator().manual_seed(1))
    again = LabeledImages(scrambled, data.y)
    assert backdoor.attack_success_rate(model, again, trigger, target) == pytest.approx(asr)
    # and it is the share of triggered non-target images that land on the target, counted one by one
    with torch.no_grad():
        hits = [int(model(trigger.apply(img[None])).argmax()) == target for img in without.x]
    assert asr == pytest.approx(100.0 * sum(hits) / len(hits))


@settings(max_examples=40, deadline=None)
@given(spec=asr_problems, other=st.integers(0, 3))
def test_asr_of_constant_models_is_100_or_0(spec: dict, other: int) -> None:
    data, trigger, target = problem(spec)
    assume(other != target)
    assert backdoor.attack_success_rate(ConstantClassifier(target), data, trigger, target) == 100.0
    assert backdoor.attack_success_rate(ConstantClassifier(other), data, trigger, target) == 0.0


# ------------------------------------------------------------------------------------------ cache keys

def key_of(value: object) -> str:
    return cache.canonical_key({"name": "property", "value": value})


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), batch_norm=st.booleans(), pick=st.integers(0, 10**6),
       delta=st.sampled_from([1e-3, -0.5, 2.0]), buffer=st.booleans())
def test_model_keys_are_equal_for_copies_and_differ_for_any_changed_weight(
        seed: int, batch_norm: bool, pick: int, delta: float, buffer: bool) -> None:
    model = warm_bn(tiny_cnn(seed, batch_norm=batch_norm), seed)
    twin = copy.deepcopy(model)
    original = key_of(model)
    assert key_of(twin) == original
    tensors = dict(twin.named_buffers()) if buffer and batch_norm else dict(twin.named_parameters())
    tensors = {n: t for n, t in tensors.items() if t.is_floating_point()}
    name = sorted(tensors)[pick % len(tensors)]
    with torch.no_grad():
        flat = tensors[name].view(-1)
        flat[pick % flat.numel()] += delta
    assert key_of(twin) != original, name


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 10**6), pick=st.integers(0, 10**6), change=st.sampled_from(["x", "y"]))
def test_data_keys_are_equal_for_clones_and_differ_for_any_changed_value(n: int, seed: int, pick: int,
                                                                          change: str) -> None:
    x, y = batch(n, seed)
    data = LabeledImages(x, y)
    assert key_of(LabeledImages(x.clone(), y.clone())) == key_of(data)
    x2, y2 = x.clone(), y.clone()
    if change == "x":
        flat = x2.view(-1)
        flat[pick % flat.numel()] = 1.0 - flat[pick % flat.numel()] + 1e-3
    else:
        y2[pick % n] = (y2[pick % n] + 1) % 3
    assert key_of(LabeledImages(x2, y2)) != key_of(data)


def smoothed_loss(smoothing: float):
    def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=smoothing)
    return loss


@settings(max_examples=25, deadline=None)
@given(a=st.floats(0.0, 0.5), b=st.floats(0.0, 0.5))
def test_function_keys_follow_the_values_they_close_over(a: float, b: float) -> None:
    assert (key_of(smoothed_loss(a)) == key_of(smoothed_loss(b))) == (a == b)
    partial_a = functools.partial(F.cross_entropy, label_smoothing=a)
    partial_b = functools.partial(F.cross_entropy, label_smoothing=b)
    assert (key_of(partial_a) == key_of(partial_b)) == (a == b)


sgd_changes = st.sampled_from([("lr", 0.07), ("momentum", 0.5), ("weight_decay", 0.0), ("schedule", "garipov"),
                               ("nesterov", True)])


@settings(max_examples=20, deadline=None)
@given(change=sgd_changes, seed=st.integers(0, 10), steps=st.integers(1, 50))
def test_configuration_keys_differ_when_any_single_field_changes(change: tuple[str, object], seed: int,
                                                                 steps: int) -> None:
    config = {"name": "run", "sgd": SGDConfig(), "seed": seed, "steps": steps, "tag": "a"}
    reordered = dict(reversed(list(config.items())))
    assert cache.canonical_key(reordered) == cache.canonical_key(config)
    field, value = change
    changed = {**config, "sgd": dataclasses.replace(SGDConfig(), **{field: value})}
    assert cache.canonical_key(changed) != cache.canonical_key(config)
    for name, other in (("seed", seed + 1), ("steps", steps + 1), ("tag", "b")):
        assert cache.canonical_key({**config, name: other}) != cache.canonical_key(config), name
    assert cache.canonical_key({**config, "lr": 0.1}) != cache.canonical_key({**config, "lr": 0.1000000001})


def smoothed_by_default(smoothing: float):
    return lambda model, x, y, smoothing=smoothing: F.cross_entropy(model(x), y, label_smoothing=smoothing)


def test_function_keys_follow_default_argument_values() -> None:
    assert key_of(smoothed_by_default(0.1)) != key_of(smoothed_by_default(0.2))


class Scaled(nn.Module):
    """A module whose behaviour depends on a plain attribute (neither a parameter, a buffer, nor in its repr)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.fc = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * self.scale


def test_module_keys_follow_plain_attributes_that_change_the_forward() -> None:
    one, two = Scaled(1.0), Scaled(2.0)
    two.load_state_dict(one.state_dict())
    x = torch.rand(3, 2)
    assert not torch.equal(one(x), two(x))
    assert key_of(one) != key_of(two)
