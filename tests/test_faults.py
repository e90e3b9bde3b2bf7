"""Tests for mcar_lib.faults: fault sneaking by parameter name and float32 bit flips."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from mcar_lib import faults
from mcar_lib.data import LabeledImages

from helpers import assert_unchanged, snapshot, tiny_cnn, warm_bn


def make_problem(seed: int = 0, n: int = 60, classes: int = 3) -> tuple[nn.Module, LabeledImages]:
    """A random network and images labelled by that network itself, so every image starts correct."""
    model = warm_bn(tiny_cnn(seed, classes=classes), seed).eval()  # non-default statistics, to notice any change
    x = torch.rand(n, 1, 8, 8) ** 3  # sparse bright pixels: images that differ in feature space
    with torch.no_grad():
        model.fc.weight /= model(x).std()  # logits of order 1, like a trained network's
        model.fc.bias -= model(x).mean(0)  # centre the logits so that every class occurs
        y = model(x).argmax(1)
    return model, LabeledImages(x, y)


# ------------------------------------------------------------------------------------------- targets

def test_pick_targets_is_seeded_disjoint_and_wrong() -> None:
    model, data = make_problem()
    a = faults.pick_targets(model, data, n_sneak=3, n_keep=20, num_classes=3, seed=5)
    b = faults.pick_targets(model, data, n_sneak=3, n_keep=20, num_classes=3, seed=5)
    assert torch.equal(a.x, b.x) and torch.equal(a.target_labels, b.target_labels)
    assert bool((a.target_labels != a.true_labels).all())
    assert bool(((a.target_labels >= 0) & (a.target_labels < 3)).all())
    # S and the keep-set are different images of the data set
    rows = {tuple(r.flatten().tolist()) for r in a.keep.x}
    assert not any(tuple(r.flatten().tolist()) in rows for r in a.x)
    assert len(a.keep) == 20


def test_pick_targets_uses_only_images_every_model_gets_right() -> None:
    model, data = make_problem()
    common = int(data.y.mode().values)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.fc.bias[common] += 100.0  # the other model now answers `common` for everything
    t = faults.pick_targets([model, other], data, n_sneak=2, n_keep=3, num_classes=3, seed=0)
    assert bool((t.true_labels == common).all()) and bool((t.keep.y == common).all())
    with pytest.raises(ValueError, match="fewer than"):
        faults.pick_targets([model, other], data, n_sneak=2, n_keep=len(data), num_classes=3)
    # smoke runs: networks that learned nothing still give a seeded S drawn from every image
    anywhere = faults.pick_targets([model, other], data, n_sneak=2, n_keep=len(data) - 2, num_classes=3, seed=0,
                                   among_correct=False)
    assert len(anywhere.keep) == len(data) - 2 and bool((anywhere.target_labels != anywhere.true_labels).all())


def test_margin_loss_matches_a_plain_loop() -> None:
    torch.manual_seed(1)
    logits, labels = torch.randn(7, 5), torch.randint(0, 5, (7,))
    expected = []
    for z, y in zip(logits.tolist(), labels.tolist()):
        best_other = max(v for j, v in enumerate(z) if j != y)
        expected.append(max(0.0, best_other - z[y] + 0.5))
    assert torch.allclose(faults.margin_loss(logits, labels, kappa=0.5), torch.tensor(expected))


# ------------------------------------------------------------------------------------------- sneaking

def test_sneak_edits_only_the_named_parameter_and_reaches_full_success() -> None:
    model, data = make_problem()
    targets = faults.pick_targets(model, data, n_sneak=2, n_keep=40, num_classes=3, seed=0)
    model.train()  # the caller's mode must survive, and BN statistics must not move
    snap = snapshot(model)
    new, report = faults.sneak(model, targets, param_names=["fc.weight"], steps=600, lr=0.05,
                               optimizer="adam")
    assert_unchanged(model, snap)
    before = snap.state
    after = new.state_dict()
    for k, v in before.items():
        if k != "fc.weight":
            assert torch.equal(after[k], v), f"unselected tensor {k} changed"
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert report.success == 100.0
    assert faults.sneak_success(new, targets) == 100.0
    assert report.keep_accuracy >= 95.0
    assert report.param_names == ("fc.weight",)
    delta = (after["fc.weight"] - before["fc.weight"]).double()
    assert report.l2_norm == pytest.approx(float(delta.norm()), rel=1e-6)
    assert report.n_modified == int((delta != 0).sum())
    assert report.n_selected == before["fc.weight"].numel()


def test_same_targets_go_into_two_models() -> None:
    model_a, data = make_problem(seed=0)
    model_b = copy.deepcopy(model_a)
    with torch.no_grad():
        for p in model_b.parameters():
            p.mul_(1.05)  # a second, slightly different endpoint
    targets = faults.pick_targets([model_a, model_b], data, n_sneak=2, n_keep=20, num_classes=3, seed=3)
    saved = (targets.x.clone(), targets.target_labels.clone(), targets.keep.x.clone())
    for m in (model_a, model_b):
        _, report = faults.sneak(m, targets, param_names=["fc.weight", "fc.bias"], steps=600, lr=0.05,
                                 optimizer="adam")
        assert report.success == 100.0
    assert torch.equal(saved[0], targets.x) and torch.equal(saved[1], targets.target_labels)
    assert torch.equal(saved[2], targets.keep.x)


def test_sampled_keep_set_is_seeded_and_logits_keep_loss_preserves_the_function() -> None:
    model, data = make_problem()
    targets = faults.pick_targets(model, data, n_sneak=1, n_keep=40, num_classes=3, seed=2)
    settings = dict(param_names=["fc.weight"], steps=150, lr=0.05, optimizer="adam", keep_sample=10, patience=1000)
    one, _ = faults.sneak(model, targets, seed=7, **settings)
    two, _ = faults.sneak(model, targets, seed=7, **settings)
    assert torch.equal(one.fc.weight, two.fc.weight)
    by_logits, report = faults.sneak(model, targets, keep_loss="logits", **{**settings, "keep_sample": None})
    assert report.success == 100.0

    def logit_change(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(targets.keep.x) - model(targets.keep.x)).abs().mean())

    by_margin, _ = faults.sneak(model, targets, **{**settings, "keep_sample": None})
    assert logit_change(by_logits) < logit_change(by_margin)


def test_l1_penalty_leaves_many_weights_exactly_unchanged() -> None:
    model, data = make_problem()
    targets = faults.pick_targets(model, data, n_sneak=1, n_keep=20, num_classes=3, seed=1)
    settings = dict(param_names=["fc.weight"], steps=300, lr=0.05, optimizer="gd")
    new, report = faults.sneak(model, targets, penalty="l1", penalty_weight=0.1, **settings)
    plain, _ = faults.sneak(model, targets, **settings)
    changed = int((new.fc.weight != model.fc.weight).sum())  # counted directly, entry by entry
    assert report.success == 100.0 and report.n_modified == changed
    assert 0 < changed < int((plain.fc.weight != model.fc.weight).sum()) / 2  # far sparser than without L1


def test_unknown_parameter_name_is_a_clear_error() -> None:
    model, data = make_problem()
    targets = faults.pick_targets(model, data, n_sneak=1, n_keep=5, num_classes=3)
    with pytest.raises(KeyError, match=r"fc\.weights.*Did you mean.*'fc\.weight'"):
        faults.sneak(model, targets, param_names=["fc.weights"], steps=1)
    with pytest.raises(TypeError, match="list of parameter names"):
        faults.sneak(model, targets, param_names="fc.weight", steps=1)  # type: ignore[arg-type]


def test_bad_sneak_settings_are_rejected() -> None:
    model, data = make_problem()
    targets = faults.pick_targets(model, data, n_sneak=1, n_keep=5, num_classes=3)
    with pytest.raises(ValueError, match="schedule"):
        faults.sneak(model, targets, param_names=["fc.bias"], schedule="sometimes")
    with pytest.raises(ValueError, match="keep_sample"):
        faults.sneak(model, targets, param_names=["fc.bias"], keep_sample=100)
    with pytest.raises(ValueError, match="penalty_weight"):
        faults.sneak(model, targets, param_names=["fc.bias"], penalty="l2")
    with pytest.raises(ValueError, match="target label equals the true label"):
        faults.SneakTargets(targets.x, targets.true_labels, targets.true_labels, targets.keep)


# ------------------------------------------------------------------------------------------- bit flips

def test_bit_30_of_one_blows_up_and_flipping_back_restores() -> None:
    t = torch.tensor([1.0, 0.5, -2.0])
    flipped = faults.flip_bits(t, [0, 1], 30)
    assert torch.equal(t, torch.tensor([1.0, 0.5, -2.0]))  # pure
    assert flipped[0].abs() > 1e38 and flipped[1].abs() > 1e38  # 1.0 → inf, 0.5 → 2^127
    assert flipped[2] == -2.0
    assert torch.equal(faults.flip_bits(flipped, [0, 1], 30), t)


def test_flip_bits_matches_numpy_for_every_bit() -> None:
    torch.manual_seed(0)
    values = torch.randn(3, 11)
    for bit in range(32):
        idx = torch.tensor([0, 5, 32])
        got = faults.flip_bits(values, idx, bit)
        words = values.numpy().copy().reshape(-1).view(np.uint32)
        words[idx.numpy()] ^= np.uint32(1 << bit)
        expected = torch.from_numpy(words.view(np.float32).reshape(3, 11))
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32)), f"bit {bit}"


def test_flip_bits_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="float32"):
        faults.flip_bits(torch.ones(3, dtype=torch.float64), [0], 3)
    with pytest.raises(ValueError, match="0..31"):
        faults.flip_bits(torch.ones(3), [0], 32)
    with pytest.raises(IndexError, match="flat indices"):
        faults.flip_bits(torch.ones(3), [3], 1)
    with pytest.raises(ValueError, match="repeat"):
        faults.flip_bits(torch.ones(3), [1, 1], 1)


def test_flip_bits_in_touches_only_named_entries() -> None:
    model, _ = make_problem()
    snap = snapshot(model)
    new = faults.flip_bits_in(model, {"conv1.weight": (torch.tensor([0, 7]), 30), "bn1.running_var": ([2], 31)})
    assert_unchanged(model, snap)
    before = snap.state
    after = new.state_dict()
    for k in before:
        if k not in ("conv1.weight", "bn1.running_var"):
            assert torch.equal(after[k], before[k])
    diff = (after["conv1.weight"] != before["conv1.weight"]).flatten()
    assert torch.nonzero(diff).flatten().tolist() == [0, 7]
    assert after["bn1.running_var"][2] == -before["bn1.running_var"][2]
    with pytest.raises(KeyError, match="conv1.weight"):
        faults.flip_bits_in(model, {"conv1.wieght": ([0], 30)})


def test_random_flips_are_reproducible_and_counted() -> None:
    model, _ = make_problem()
    a = faults.random_flips(model, 25, bits=(23, 30), generator=torch.Generator().manual_seed(4))
    b = faults.random_flips(model, 25, bits=(23, 30), generator=torch.Generator().manual_seed(4))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) for k in a)
    assert sum(len(idx) for idx, _ in a.values()) == 25
    new = faults.flip_bits_in(model, a)
    assert faults.weight_change(model, new).n_modified == 25
    only_fc = faults.random_flips(model, 2, param_names=["fc.bias"], generator=torch.Generator().manual_seed(0))
    assert list(only_fc) == ["fc.bias"]


def test_zero_implausible_undoes_the_blow_up_of_an_exponent_flip() -> None:
    model, _ = make_problem()
    broken = faults.flip_bits_in(model, {"fc.weight": ([3], 30), "conv1.weight": ([0], 30)})
    fixed, zeroed = faults.zero_implausible(broken, max_abs=1e3)
    assert zeroed == {"conv1.weight": 1, "fc.weight": 1}
    expected = snapshot(model).state
    expected["fc.weight"].view(-1)[3] = 0.0
    expected["conv1.weight"].view(-1)[0] = 0.0
    for k, v in fixed.state_dict().items():
        assert torch.equal(v, expected[k]), k
    assert broken.fc.weight.abs().max() > 1e3  # the input keeps its broken weight
    with pytest.raises(ValueError, match="max_abs"):
        faults.zero_implausible(model, max_abs=0.0)

