"""Repair baselines: they never mutate their inputs, fine-pruning really zeroes channels, batch norm comes from
bonafide data, and the t-selection rules do what they say."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from mcar_lib import models, repair
from mcar_lib.data import LabeledImages
from mcar_lib.train import SGDConfig

from helpers import assert_unchanged, learnable, same_weights, small_cnn, snapshot


def test_step_batches_gives_exactly_steps_batches_covering_the_data() -> None:
    data = learnable(10)
    batches = list(repair.StepBatches(data, 4, 7, seed=1))
    assert len(batches) == 7 == len(repair.StepBatches(data, 4, 7))
    first_sweep = torch.cat([x for x, _ in batches[:3]])  # 4 + 4 + 2 = one pass over the data
    assert sorted(first_sweep.flatten().tolist()) == sorted(data.x.flatten().tolist())


def test_baselines_never_mutate_their_inputs() -> None:
    a, b = small_cnn(0).train(), small_cnn(1).eval()
    bona = learnable()
    snap_a, snap_b = snapshot(a), snapshot(b)
    x0 = bona.x.clone()
    sgd = SGDConfig(lr=0.05)
    results = [
        repair.finetune(a, bona, steps=3, sgd=sgd),
        repair.train_from_scratch(a, bona, steps=3, sgd=sgd),
        repair.noisy_model(a, b, bona, scale=0.5),
        repair.fine_prune(a, bona, tolerance=100.0, steps=3, sgd=sgd),
    ]
    a2, tuned = repair.one_model_endpoints(a, bona, steps=2, sgd=sgd)
    assert a2 is a and tuned is not a
    assert_unchanged(a, snap_a)
    assert_unchanged(b, snap_b)
    assert torch.equal(bona.x, x0)
    for r in results:
        assert r.model is not a and r.model is not b
        assert not r.model.training, f"{r.name} should return an eval-mode model"


def test_finetune_is_reproducible_and_learns() -> None:
    a, bona = small_cnn(0), learnable()
    r1 = repair.finetune(a, bona, steps=40, sgd=SGDConfig(lr=0.1))
    r2 = repair.finetune(a, bona, steps=40, sgd=SGDConfig(lr=0.1))
    for p, q in zip(r1.model.parameters(), r2.model.parameters()):
        assert torch.equal(p, q)
    from mcar_lib.train import accuracy
    assert accuracy(r1.model, [(bona.x, bona.y)]) > accuracy(a, [(bona.x, bona.y)])


def test_train_from_scratch_forgets_the_template() -> None:
    """The result does not depend on the template's weights (only on its architecture and the seed); with a
    zero learning rate it is the freshly initialised network itself."""
    frozen = SGDConfig(lr=0.0)

    def weights(model: nn.Module) -> list[Tensor]:
        return [p.detach() for p in model.parameters()]

    r = repair.train_from_scratch(small_cnn(0), learnable(), steps=2, sgd=frozen, seed=7)
    other_template = repair.train_from_scratch(small_cnn(5), learnable(), steps=2, sgd=frozen, seed=7)
    other_seed = repair.train_from_scratch(small_cnn(0), learnable(), steps=2, sgd=frozen, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(weights(r.model), weights(other_template.model)))
    assert not any(torch.equal(p, q) for p, q in zip(weights(r.model), weights(small_cnn(0))) if p.ndim > 1)
    assert not torch.equal(weights(r.model)[0], weights(other_seed.model)[0])
    fresh = repair.train_from_scratch(lambda: small_cnn(3), learnable(), steps=2, sgd=frozen, seed=7)
    assert fresh.name == "from scratch"
    assert all(torch.equal(p, q) for p, q in zip(weights(fresh.model), weights(small_cnn(3))))


def test_noisy_model_centre_and_scale() -> None:
    a, b = small_cnn(0), small_cnn(1)
    r0 = repair.noisy_model(a, b, learnable(), scale=0.0)
    for (name, p), q, w in zip(r0.model.named_parameters(), a.parameters(), b.parameters()):
        assert torch.allclose(p, 0.5 * q + 0.5 * w), name
    lin_a, lin_b = nn.Linear(100, 100), nn.Linear(100, 100)
    bona = LabeledImages(torch.rand(4, 1, 10, 10), torch.zeros(4, dtype=torch.long))
    flat = nn.Sequential(nn.Flatten(), lin_a)
    other = nn.Sequential(nn.Flatten(), lin_b)
    r = repair.noisy_model(flat, other, bona, scale=0.3, seed=2)
    w = r.model[1].weight
    mid = 0.5 * (lin_a.weight + lin_b.weight)
    z = (w - mid) / (lin_b.weight - lin_a.weight).abs()
    assert abs(z.mean().item()) < 0.05
    assert z.std().item() == pytest.approx(0.3, rel=0.05)
    with pytest.raises(ValueError, match="same architecture"):
        repair.noisy_model(a, flat, bona)


def _output_of(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    seen: list[Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return seen[0]


def test_fine_pruning_zeroes_the_least_active_channels() -> None:
    a, bona = small_cnn(0), learnable()
    r = repair.fine_prune(a, bona, tolerance=100.0, prune_step=2, steps=5, sgd=SGDConfig(lr=0.05), seed=1)
    pruned = r.details["pruned_channels"]
    conv, norm = r.details["layer"], r.details["norm"]
    assert conv == models.last_conv_name(a)
    modules = dict(a.named_modules())
    n_channels = modules[conv].out_channels
    assert isinstance(modules[norm], nn.BatchNorm2d) and modules[norm].num_features == n_channels
    assert r.details["n_pruned"] == len(pruned) == 2  # a huge tolerance prunes in steps of 2 up to C - 1 = 3
    rest, _ = repair.split_off(bona, 0.2, seed=1)
    activity = torch.relu(_output_of(a, norm, rest.x)).mean(dim=(0, 2, 3))
    assert set(pruned) == set(torch.argsort(activity)[:len(pruned)].tolist())
    m = r.model
    state = m.state_dict()
    assert torch.all(state[f"{conv}.weight"][pruned] == 0)
    assert torch.all(state[f"{norm}.weight"][pruned] == 0) and torch.all(state[f"{norm}.bias"][pruned] == 0)
    out = _output_of(m, norm, bona.x)
    assert torch.all(out[:, pruned] == 0)
    kept = [c for c in range(n_channels) if c not in pruned]
    assert out[:, kept].abs().sum() > 0
    before_finetuning = _output_of(r.details["pruned_only"], norm, bona.x)
    assert torch.all(before_finetuning[:, pruned] == 0)


def test_fine_pruning_stops_at_the_tolerance() -> None:
    a = repair.finetune(small_cnn(0), learnable(), steps=60, sgd=SGDConfig(lr=0.1)).model
    r = repair.fine_prune(a, learnable(seed=1), tolerance=0.0, steps=1, sgd=SGDConfig(lr=1e-9))
    table = r.table
    base = table.loc[0, "heldout_accuracy"]
    accepted = table[table["n_pruned"] <= r.details["n_pruned"]]
    assert (accepted["heldout_accuracy"] >= base).all()
    if len(table) > len(accepted):
        assert table.iloc[-1]["heldout_accuracy"] < base


def test_fine_pruning_without_batch_norm_zeroes_the_convolution() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    r = repair.fine_prune(net, learnable(), tolerance=100.0, steps=3, sgd=SGDConfig(lr=0.05))
    assert r.details["layer"] == "2" and r.details["norm"] is None
    pruned = r.details["pruned_channels"]
    with torch.no_grad():
        out = r.model[:3](learnable().x)
    assert len(pruned) == 5 and torch.all(out[:, pruned] == 0)
    with pytest.raises(ValueError, match="not an nn.Conv2d"):
        repair.fine_prune(net, learnable(), layer="6")


def test_select_t_rules() -> None:
    table = pd.DataFrame({"t": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                          "heldout_accuracy": [90, 89, 88.5, 87, 86, 85, 86.5, 87.9, 88.4, 88.9, 91]})
    # within 2.6 points of the best (91): t in {0, 0.1, 0.2, 0.8, 0.9, 1}; farthest from the ends: 0.2 and 0.8
    # (both at distance 0.2), the tie goes to the more accurate 0.2
    assert repair.select_t(table, tolerance=2.6) == 0.2
    assert repair.select_t(table, tolerance=2.0) == 0.1
    assert repair.select_t(table, tolerance=6.0) == 0.5
    assert repair.select_t(table, tolerance=0.0) == 1.0
    assert repair.select_t(table, rule="best_interior", min_distance=0.1) == 0.1
    assert repair.select_t(table, rule="best_interior", min_distance=0.25) == 0.7
    with pytest.raises(ValueError, match="unknown selection rule"):
        repair.select_t(table, rule="peek_at_test")


def test_path_repair_trains_on_bonafide_data_and_picks_t_on_a_held_out_slice() -> None:
    from mcar_lib.train import accuracy

    a, b, bona = small_cnn(0).train(), small_cnn(1), learnable()
    snap_a, snap_b = snapshot(a), snapshot(b)
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    r = repair.path_repair(a, b, bona, steps=4, sgd=SGDConfig(lr=0.05), ts=ts, tolerance=100.0, seed=2)
    assert_unchanged(a, snap_a)
    assert_unchanged(b, snap_b)
    assert list(r.table["t"]) == ts
    assert r.t == 0.5  # a huge tolerance admits every candidate: the farthest from both ends wins
    assert r.t == repair.select_t(r.table, tolerance=100.0)
    rest, held = repair.split_off(bona, 0.2, seed=2)
    assert len(r.bn_data) == len(rest) and torch.equal(r.bn_data.x, rest.x)
    assert r.table.loc[0, "heldout_accuracy"] == pytest.approx(accuracy(a, [(held.x, held.y)]))
    assert r.table.loc[4, "heldout_accuracy"] == pytest.approx(accuracy(b, [(held.x, held.y)]))
    expected = r.curve.at(0.5, bn_data=rest)
    with torch.no_grad():
        assert torch.allclose(r.model(bona.x), expected(bona.x), atol=1e-5)
    assert not r.model.training


def test_path_repair_accepts_models_without_batch_norm_and_the_one_model_variant() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 64, 3))
    tampered, tuned = repair.one_model_endpoints(net, learnable(), steps=3, sgd=SGDConfig(lr=0.05))
    r = repair.path_repair(tampered, tuned, learnable(), steps=3, sgd=SGDConfig(lr=0.05), select="best_interior",
                           min_distance=0.3, ts=[0.0, 0.3, 0.5, 0.7, 1.0])
    assert r.t in (0.3, 0.5, 0.7)
    interior = r.table[r.table["t"].between(0.3, 0.7)]
    assert r.table.loc[r.table["t"] == r.t, "heldout_accuracy"].item() == interior["heldout_accuracy"].max()


def test_cache_trains_once_and_reloads_the_same_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MCAR_CACHE_DIR", str(tmp_path))
    a, b, bona = small_cnn(0), small_cnn(1), learnable()
    ts = [0.0, 0.5, 1.0]
    first = repair.path_repair(a, b, bona, steps=3, sgd=SGDConfig(lr=0.05), ts=ts, cache=True)
    assert len(list(tmp_path.rglob("path-bezier-1-*.pt"))) == 1
    again = repair.path_repair(a, b, bona, steps=3, sgd=SGDConfig(lr=0.05), ts=ts, cache=True)
    assert torch.equal(first.curve.bends, again.curve.bends)
    assert first.table.equals(again.table) and first.t == again.t
    other = repair.path_repair(a, b, learnable(seed=5), steps=3, sgd=SGDConfig(lr=0.05), ts=ts, cache=True)
    assert len(list(tmp_path.rglob("path-bezier-1-*.pt"))) == 2, "another bonafide set must not reuse the entry"
    assert not torch.equal(first.curve.bends, other.curve.bends)
    ft = repair.finetune(a, bona, steps=3, sgd=SGDConfig(lr=0.05), cache=True)
    ft2 = repair.finetune(a, bona, steps=3, sgd=SGDConfig(lr=0.05), cache=True)
    for p, q in zip(ft.model.parameters(), ft2.model.parameters()):
        assert torch.equal(p, q)
    assert len(list(tmp_path.rglob("fine-tuning-*.pt"))) == 1


def _label_smoothed(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.2)


def test_the_loss_function_is_part_of_the_cache_key(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MCAR_CACHE_DIR", str(tmp_path))
    a, b, bona = small_cnn(0), small_cnn(1), learnable()
    plain = repair.finetune(a, bona, steps=3, sgd=SGDConfig(lr=0.05), cache=True)
    smoothed = repair.finetune(a, bona, steps=3, sgd=SGDConfig(lr=0.05), loss_fn=_label_smoothed, cache=True)
    assert len(list(tmp_path.rglob("fine-tuning-*.pt"))) == 2
    assert any(not torch.equal(p, q) for p, q in zip(plain.model.parameters(), smoothed.model.parameters()))
    ts = [0.0, 0.5, 1.0]
    repair.path_repair(a, b, bona, steps=2, sgd=SGDConfig(lr=0.05), ts=ts, cache=True)
    repair.path_repair(a, b, bona, steps=2, sgd=SGDConfig(lr=0.05), ts=ts, cache=True, loss_fn=_label_smoothed)
    assert len(list(tmp_path.rglob("path-bezier-1-*.pt"))) == 2


def test_one_model_endpoints_never_see_the_held_out_slice() -> None:
    """Replacing the images of the held-out slice (the ones path_repair chooses t on) leaves the fine-tuned
    endpoint bit-identical; replacing a training image does not."""
    a, bona = small_cnn(0), learnable()
    settings = dict(steps=5, sgd=SGDConfig(lr=0.05), holdout_fraction=0.25, seed=3)
    _, tuned = repair.one_model_endpoints(a, bona, **settings)
    _, held = repair.split_off(bona, 0.25, seed=3)
    is_held = (bona.x.flatten(1)[:, None, :] == held.x.flatten(1)[None]).all(-1).any(1)
    assert int(is_held.sum()) == len(held) == 24
    noise = torch.rand(bona.x.shape, generator=torch.Generator().manual_seed(9))
    one_trained_on = torch.zeros(len(bona), dtype=torch.bool)
    one_trained_on[int((~is_held).nonzero()[0])] = True
    for replaced, same in ((is_held, True), (one_trained_on, False)):
        x = torch.where(replaced[:, None, None, None], noise, bona.x)
        _, again = repair.one_model_endpoints(a, LabeledImages(x, bona.y), **settings)
        assert same_weights(again, tuned) == same
