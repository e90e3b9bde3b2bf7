"""Repair: the baselines never mutate their inputs, fine-pruning and filter pruning zero the channels they say,
batch norm comes from bonafide data, the t-selection rules do what they say, cross-validation pools every fold
like a plain loop, and the one-call ``repair.repair`` reports what its table shows."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcar_lib import models, repair
from mcar_lib.data import LabeledImages
from mcar_lib.train import SGDConfig, accuracy

from helpers import assert_unchanged, learnable, same_weights, small_cnn, snapshot, tiny_cnn, warm_bn

#: A path trained for a few steps, and a t grid of three candidates: enough to exercise every code path.
QUICK = repair.PathTraining(steps=3, batch_size=8, lr=0.05)
TS = (0.0, 0.5, 1.0)


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
        repair.fine_prune(a, bona, criterion="weight_norm", tolerance=100.0, steps=3, sgd=sgd),
        repair.path_repair(a, b, bona, training=QUICK, selection=repair.TSelection(folds=2, ts=TS)),
        repair.path_repair(a, repair.finetuned_endpoint(a, steps=2, sgd=sgd), bona, training=QUICK,
                           selection=repair.TSelection(folds=0, ts=TS)),
    ]
    tuned = repair.finetuned_endpoint(a, steps=2, sgd=sgd)(bona)
    assert tuned is not a and not same_weights(tuned, a)
    for tampered in ([a, b], a):
        model, _ = repair.repair(tampered, bona, training=QUICK, selection=repair.TSelection(folds=2, ts=TS),
                                 second_endpoint_steps=2)
        assert model is not a and model is not b and not model.training
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
    activity = torch.relu(_output_of(a, norm, bona.x)).mean(dim=(0, 2, 3))  # ranked on all bonafide images
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
    bona = learnable(seed=1)
    r = repair.fine_prune(a, bona, tolerance=0.0, steps=1, sgd=SGDConfig(lr=1e-9))
    table = r.table
    base = table.loc[0, "bonafide_accuracy"]
    assert base == pytest.approx(accuracy(a, [(bona.x, bona.y)]))  # judged on every bonafide image
    accepted = table[table["n_pruned"] <= r.details["n_pruned"]]
    assert (accepted["bonafide_accuracy"] >= base).all()
    if len(table) > len(accepted):
        assert table.iloc[-1]["bonafide_accuracy"] < base


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



def test_default_ts_is_an_exact_decimal_grid() -> None:
    assert repair.default_ts(5) == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert repair.default_ts(11)[3] == 0.3  # not float32's 0.30000001
    with pytest.raises(ValueError, match="at least the two endpoints"):
        repair.default_ts(1)


# --------------------------------------------------------------------------------- filter pruning (L1 norm)

def _filters_with_known_norms() -> tuple[nn.Sequential, list[float], list[float]]:
    """A net whose last convolution has six 4×3×3 filters with chosen L1 norms, ranked differently by their L2
    norms and by their plain sums (so only the L1 norm gives the expected order)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    spread = lambda v: torch.full((4, 3, 3), v)  # noqa: E731  every entry v: large L1, small L2
    alternating = torch.tensor([0.2, -0.2]).repeat(18).reshape(4, 3, 3)  # sums to 0, L1 7.2

    def single(v: float) -> Tensor:
        f = torch.zeros(4, 3, 3)
        f[1, 1, 1] = v
        return f

    filters = [spread(0.05), single(-1.0), spread(0.1), single(0.5), single(2.5), alternating]
    with torch.no_grad():
        net[2].weight.copy_(torch.stack(filters))
    l1 = [float(f.abs().sum()) for f in filters]
    l2 = [float(f.norm()) for f in filters]
    return net, l1, l2


def test_filter_pruning_prunes_the_filters_of_smallest_l1_norm_first() -> None:
    net, l1, l2 = _filters_with_known_norms()
    smallest_l1 = sorted(range(6), key=l1.__getitem__)[:4]
    assert set(smallest_l1) != set(sorted(range(6), key=l2.__getitem__)[:4])  # the test tells L1 from L2
    # a huge tolerance and steps of 2 try 2 and then 4 of the 6 channels: the four smallest in L1 go
    r = repair.fine_prune(net, learnable(), criterion="weight_norm", tolerance=100.0, prune_step=2, steps=1,
                          sgd=SGDConfig(lr=1e-9))
    assert r.name == "filter pruning + fine-tuning" and r.details["criterion"] == "weight_norm"
    assert r.details["layer"] == "2" and r.details["n_pruned"] == 4
    assert set(r.details["pruned_channels"]) == set(smallest_l1)
    with torch.no_grad():
        out = r.model[:3](learnable().x)
    assert torch.all(out[:, smallest_l1] == 0)
    kept = [c for c in range(6) if c not in smallest_l1]
    assert out[:, kept].abs().sum() > 0
    with pytest.raises(ValueError, match="unknown criterion"):
        repair.fine_prune(net, learnable(), criterion="gradient")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- settings objects

@pytest.mark.parametrize("bad", [dict(kind="spline"), dict(n_bends=0), dict(steps=0), dict(batch_size=0),
                                 dict(lr=-0.1), dict(lr=float("nan")), dict(weight_decay=-1e-4),
                                 dict(schedule="step")], ids=str)
def test_path_training_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError, match="|".join(bad)):
        repair.PathTraining(**bad)


@pytest.mark.parametrize("bad", [dict(folds=1), dict(folds=-2), dict(folds=0, holdout_fraction=0.0),
                                 dict(folds=0, holdout_fraction=1.0), dict(rule="peek_at_test"), dict(ts=(0.5,)),
                                 dict(ts=(0.0, 1.5)), dict(ts=(-0.1, 1.0)), dict(tolerance=-1.0),
                                 dict(tolerance=float("nan"))], ids=str)
def test_t_selection_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        repair.TSelection(**bad)


def test_settings_defaults_are_valid_and_the_paths_sgd_follows_them() -> None:
    training = repair.PathTraining(lr=0.2, weight_decay=1e-3, schedule="garipov")
    assert (training.sgd.lr, training.sgd.weight_decay, training.sgd.schedule) == (0.2, 1e-3, "garipov")
    selection = repair.TSelection()
    assert selection.folds >= 2 and selection.ts == repair.default_ts(11)
    assert repair.TSelection(folds=0).folds == 0  # the single held-out slice


# ---------------------------------------------------------------------------------- cross-validated t

def _rows_in(part: LabeledImages, whole: LabeledImages) -> Tensor:
    """The index in ``whole`` of every image of ``part`` (images are unique noise, so a row identifies one)."""
    same = (part.x.flatten(1)[:, None, :] == whole.x.flatten(1)[None]).all(-1)
    assert bool((same.sum(1) == 1).all()), "every image of the part must occur exactly once in the whole"
    return same.int().argmax(1)


def _complement(part: LabeledImages, whole: LabeledImages) -> LabeledImages:
    inside = torch.zeros(len(whole), dtype=torch.bool)
    inside[_rows_in(part, whole)] = True
    return whole.subset(~inside)


class _PathSpy:
    """Records each ``repair.train_path`` call (its endpoint b, data and seed) and passes it on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict[str, Any]] = []
        real = repair.train_path

        def spy(a: nn.Module, b: nn.Module, data: LabeledImages, **kw: Any) -> Any:
            self.calls.append({"b": b, "data": data, **kw})
            return real(a, b, data, **kw)

        monkeypatch.setattr(repair, "train_path", spy)


def test_cross_validated_table_pools_the_folds_like_a_plain_loop(monkeypatch) -> None:
    a, b, bona = small_cnn(0), small_cnn(1), learnable(31)
    spy = _PathSpy(monkeypatch)
    table = repair.cross_validated_table(a, b, bona, folds=3, ts=TS, training=QUICK, seed=4)
    monkeypatch.undo()
    assert len(spy.calls) == 3, "one path per fold"
    assert list(table["t"]) == list(TS)

    correct = {t: 0 for t in TS}
    loss_sum = {t: 0.0 for t in TS}
    fold_accuracy: dict[float, list[float]] = {t: [] for t in TS}
    held_out = torch.zeros(len(bona), dtype=torch.long)
    for call in spy.calls:
        rest = call["data"]
        held = _complement(rest, bona)
        held_out[_rows_in(held, bona)] += 1
        curve = repair.train_path(a, b, rest, training=QUICK, seed=call["seed"])  # the fold's path, once more
        for t in TS:
            model = curve.at(t, bn_data=rest).eval()
            with torch.no_grad():
                logits = model(held.x)
            hits = int((logits.argmax(1) == held.y).sum())
            correct[t] += hits
            loss_sum[t] += float(F.cross_entropy(logits, held.y, reduction="sum"))
            fold_accuracy[t].append(100.0 * hits / len(held))
    assert held_out.tolist() == [1] * len(bona), "every image is held out by exactly one fold"
    sizes = sorted(len(bona) - len(call["data"]) for call in spy.calls)
    assert sizes[-1] - sizes[0] <= 1
    for _, row in table.iterrows():
        t = row["t"]
        assert row["heldout_accuracy"] == pytest.approx(100.0 * correct[t] / len(bona))
        assert row["heldout_loss"] == pytest.approx(loss_sum[t] / len(bona), rel=1e-5)
        assert row["fold_sd"] == pytest.approx(statistics.stdev(fold_accuracy[t]))


def test_path_repair_with_a_held_out_slice_trains_on_the_rest_and_picks_t_there(monkeypatch) -> None:
    a, b, bona = small_cnn(0).train(), small_cnn(1), learnable()
    snap_a, snap_b = snapshot(a), snapshot(b)
    ts = (0.0, 0.25, 0.5, 0.75, 1.0)
    spy = _PathSpy(monkeypatch)
    r = repair.path_repair(a, b, bona, training=QUICK, seed=2,
                           selection=repair.TSelection(folds=0, holdout_fraction=0.2, ts=ts, tolerance=100.0))
    assert_unchanged(a, snap_a)
    assert_unchanged(b, snap_b)
    assert len(spy.calls) == 1
    rest = spy.calls[0]["data"]
    held = _complement(rest, bona)
    assert len(held) == round(0.2 * len(bona))
    assert len(r.bn_data) == len(rest) and torch.equal(r.bn_data.x, rest.x)
    assert list(r.table["t"]) == list(ts)
    assert r.t == 0.5  # a huge tolerance admits every candidate: the farthest from both ends wins
    assert r.t == repair.select_t(r.table, tolerance=100.0)
    assert r.table.loc[0, "heldout_accuracy"] == pytest.approx(accuracy(a, [(held.x, held.y)]))
    assert r.table.loc[4, "heldout_accuracy"] == pytest.approx(accuracy(b, [(held.x, held.y)]))
    assert (r.table["n"] == len(held)).all()
    expected = r.curve.at(0.5, bn_data=rest)
    with torch.no_grad():
        assert torch.allclose(r.model(bona.x), expected(bona.x), atol=1e-5)
    assert not r.model.training


def test_path_repair_with_folds_trains_the_final_path_on_every_bonafide_image(monkeypatch) -> None:
    a, b, bona = small_cnn(0), small_cnn(1), learnable(30)
    selection = repair.TSelection(folds=3, ts=TS, tolerance=100.0)
    spy = _PathSpy(monkeypatch)
    r = repair.path_repair(a, b, bona, training=QUICK, selection=selection, seed=5)
    monkeypatch.undo()
    assert len(spy.calls) == 3 + 1  # a path per fold, then the final one
    final = spy.calls[-1]
    assert torch.equal(final["data"].x, bona.x) and torch.equal(final["data"].y, bona.y)
    assert r.bn_data is not None and torch.equal(r.bn_data.x, bona.x) and r.details["n_train"] == len(bona)
    again = repair.train_path(a, b, bona, training=QUICK, seed=final["seed"])
    assert torch.equal(r.curve.bends, again.bends)
    table = repair.cross_validated_table(a, b, bona, folds=3, ts=TS, training=QUICK, seed=5)
    pd.testing.assert_frame_equal(r.table, table)
    assert r.t == repair.select_t(table, tolerance=100.0) == 0.5
    with torch.no_grad():
        assert torch.allclose(r.model(bona.x), r.curve.at(r.t, bn_data=bona)(bona.x), atol=1e-5)


@pytest.mark.parametrize("folds", [0, 3])
def test_a_callable_second_endpoint_sees_only_each_paths_training_images(monkeypatch, folds: int) -> None:
    """One-model variant: the endpoint is made once per path (each fold, then the final path), from exactly the
    images that path is trained on; no image a fold is scored on ever reaches the endpoint of that fold."""
    a, bona = small_cnn(0), learnable(30)
    made: list[tuple[LabeledImages, nn.Module]] = []

    def second_endpoint(data: LabeledImages) -> nn.Module:
        model = small_cnn(1)
        made.append((data, model))
        return model

    spy = _PathSpy(monkeypatch)
    repair.path_repair(a, second_endpoint, bona, training=QUICK, seed=1,
                       selection=repair.TSelection(folds=folds, ts=TS))
    assert len(made) == len(spy.calls) == (folds + 1 if folds else 1)
    for (data, model), call in zip(made, spy.calls):
        assert call["b"] is model, "the path must join a to the endpoint made for it"
        assert torch.equal(data.x, call["data"].x) and torch.equal(data.y, call["data"].y)
    if folds:
        assert torch.equal(made[-1][0].x, bona.x)  # the final path: every image
        held_counts = torch.zeros(len(bona), dtype=torch.long)
        for data, _ in made[:-1]:
            held_counts[_rows_in(_complement(data, bona), bona)] += 1
        assert held_counts.tolist() == [1] * len(bona)
    else:
        assert len(made[0][0]) == len(bona) - round(0.2 * len(bona))


def test_path_repair_accepts_models_without_batch_norm_and_the_one_model_variant() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 64, 3))
    ts = (0.0, 0.3, 0.5, 0.7, 1.0)
    r = repair.path_repair(net, repair.finetuned_endpoint(net, steps=3, sgd=SGDConfig(lr=0.05)), learnable(),
                           training=QUICK, selection=repair.TSelection(folds=2, ts=ts, rule="best_interior",
                                                                       min_distance=0.3))
    assert r.t in (0.3, 0.5, 0.7)
    interior = r.table[r.table["t"].between(0.3, 0.7)]
    assert r.table.loc[r.table["t"] == r.t, "heldout_accuracy"].item() == interior["heldout_accuracy"].max()


def test_cache_trains_once_and_reloads_the_same_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MCAR_CACHE_DIR", str(tmp_path))
    a, b, bona = small_cnn(0), small_cnn(1), learnable()
    single = repair.TSelection(folds=0, ts=TS)

    def entries() -> int:
        return len(list(tmp_path.rglob("path-bezier-1-*.pt")))

    first = repair.path_repair(a, b, bona, training=QUICK, selection=single, cache=True)
    assert entries() == 1
    again = repair.path_repair(a, b, bona, training=QUICK, selection=single, cache=True)
    assert torch.equal(first.curve.bends, again.curve.bends)
    assert first.table.equals(again.table) and first.t == again.t
    other = repair.path_repair(a, b, learnable(seed=5), training=QUICK, selection=single, cache=True)
    assert entries() == 2, "another bonafide set must not reuse the entry"
    assert not torch.equal(first.curve.bends, other.curve.bends)
    folds = repair.path_repair(a, b, bona, training=QUICK, selection=repair.TSelection(folds=2, ts=TS), cache=True)
    assert entries() == 2 + 3  # two fold paths and a final path on all images: none of them seen before
    folds_again = repair.path_repair(a, b, bona, training=QUICK, selection=repair.TSelection(folds=2, ts=TS),
                                     cache=True)
    assert entries() == 5 and folds.table.equals(folds_again.table)
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
    single = repair.TSelection(folds=0, ts=TS)
    repair.path_repair(a, b, bona, training=QUICK, selection=single, cache=True)
    repair.path_repair(a, b, bona, training=QUICK, selection=single, cache=True, loss_fn=_label_smoothed)
    assert len(list(tmp_path.rglob("path-bezier-1-*.pt"))) == 2


def test_finetuned_endpoint_trains_on_the_data_it_is_given() -> None:
    """The factory's endpoint depends on its data only: the same data give the same weights, other data others."""
    a = small_cnn(0)
    make = repair.finetuned_endpoint(a, steps=5, sgd=SGDConfig(lr=0.05), batch_size=8, seed=3)
    first, second, other = make(learnable(20)), make(learnable(20)), make(learnable(20, seed=7))
    assert same_weights(first, second) and not same_weights(first, other) and not same_weights(first, a)
    direct = repair.finetune(a, learnable(20), steps=5, sgd=SGDConfig(lr=0.05), batch_size=8, seed=3).model
    assert same_weights(first, direct)


# --------------------------------------------------------------------------------- repair(): the one call

def _check_report(report: repair.RepairReport, selection: repair.TSelection, n: int) -> None:
    """The report's numbers are its table's: accuracy at t, the better endpoint, their difference."""
    table = report.table
    assert list(table["t"]) == list(selection.ts)
    accuracy_at = dict(zip(table["t"], table["heldout_accuracy"]))
    assert report.t == repair.select_t(table, rule=selection.rule, tolerance=selection.tolerance,
                                       min_distance=selection.min_distance)
    assert report.accuracy_at_t == accuracy_at[report.t]
    assert report.endpoint_accuracy == max(accuracy_at[0.0], accuracy_at[1.0])
    assert report.cost == pytest.approx(report.endpoint_accuracy - report.accuracy_at_t)
    assert report.n_bonafide == n
    text = str(report)
    assert f"t = {report.t:g}" in text and f"{report.accuracy_at_t:.1f} %" in text and str(n) in text


def test_repair_with_two_models_is_path_repair_between_them() -> None:
    a, b, bona = small_cnn(0), small_cnn(1), learnable(30)
    selection = repair.TSelection(folds=2, ts=(0.0, 0.25, 0.5, 0.75, 1.0), tolerance=5.0)
    snap_a, snap_b = snapshot(a), snapshot(b)
    model, report = repair.repair([a, b], bona, training=QUICK, selection=selection, seed=3)
    assert_unchanged(a, snap_a)
    assert_unchanged(b, snap_b)
    direct = repair.path_repair(a, b, bona, training=QUICK, selection=selection, seed=3)
    assert same_weights(model, direct.model) and report.t == direct.t
    pd.testing.assert_frame_equal(report.table, direct.table)
    assert report.second_endpoint == "the second tampered model"
    _check_report(report, selection, len(bona))
    assert same_weights(repair.repair((a, b), bona, training=QUICK, selection=selection, seed=3)[0], model)


def test_repair_with_one_model_fine_tunes_the_second_endpoint() -> None:
    a, bona = small_cnn(0), learnable(30)
    selection = repair.TSelection(folds=2, ts=TS, tolerance=100.0)
    snap = snapshot(a)
    model, report = repair.repair(a, bona, training=QUICK, selection=selection, second_endpoint_steps=4, seed=1)
    assert_unchanged(a, snap)
    assert model is not a and not model.training and not same_weights(model, a)
    assert "fine-tuned for 4 steps" in report.second_endpoint
    _check_report(report, selection, len(bona))
    assert report.t == 0.5  # a huge tolerance: the middle
    same_call = repair.repair([a], bona, training=QUICK, selection=selection, second_endpoint_steps=4, seed=1)[0]
    assert same_weights(same_call, model)
    with torch.no_grad():
        assert torch.isfinite(model(bona.x)).all()


def test_repair_refuses_bad_input_with_clear_errors() -> None:
    a, bona = tiny_cnn(0), learnable(20)
    empty = LabeledImages(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    quick: dict[str, Any] = dict(training=QUICK, selection=repair.TSelection(folds=2, ts=TS),
                                 second_endpoint_steps=2)
    nan_model = warm_bn(tiny_cnn(1), 1)
    with torch.no_grad():
        nan_model.conv2.weight.view(-1)[3] = float("inf")
    cases: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: repair.repair(a, empty, **quick), ValueError, "bonafide data set is empty"),
        (lambda: repair.repair([a, tiny_cnn(1)], empty, **quick), ValueError, "bonafide data set is empty"),
        (lambda: repair.repair(a, [(bona.x, bona.y)], **quick), TypeError, "LabeledImages"),  # type: ignore[arg-type]
        (lambda: repair.repair([a, tiny_cnn(1, classes=4)], bona, **quick), ValueError,
         r"'fc.weight' has shape \(3, 96\) in endpoint 1 but \(4, 96\) in endpoint 2"),
        (lambda: repair.repair([a, tiny_cnn(1, batch_norm=False)], bona, **quick), ValueError,
         r"no parameter 'bn1.weight'"),
        (lambda: repair.repair([a, a, a], bona, **quick), ValueError, "one or two tampered models, got 3"),
        (lambda: repair.repair([], bona, **quick), ValueError, "one or two tampered models, got 0"),
        (lambda: repair.repair(nn.ReLU(), bona, **quick), ValueError, r"tampered model 1 \(ReLU\) has no parameters"),
        (lambda: repair.repair([a, nn.ReLU()], bona, **quick), ValueError, "tampered model 2 .*no parameters"),
        (lambda: repair.repair(nan_model, bona, **quick), ValueError,
         r"tampered model 1 has 1 non-finite value.*'conv2.weight'"),
        (lambda: repair.repair([a, nan_model], bona, **quick), ValueError, r"tampered model 2 .*'conv2.weight'"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    assert math.isfinite(repair.repair(a, bona, **quick)[1].t)  # the same call with good input works


def test_augmented_path_training_sees_other_batches_and_is_seeded() -> None:
    a, b, bona = small_cnn(0), small_cnn(1), learnable(24)
    augmented = repair.PathTraining(steps=3, batch_size=8, lr=0.05, augment=True)
    first = repair.train_path(a, b, bona, training=augmented, seed=2)
    again = repair.train_path(a, b, bona, training=augmented, seed=2)
    plain = repair.train_path(a, b, bona, training=QUICK, seed=2)
    assert torch.equal(first.bends, again.bends)
    assert not torch.equal(first.bends, plain.bends)


def test_repair_report_without_the_endpoints_in_the_grid_compares_with_the_best_candidate() -> None:
    a, b, bona = small_cnn(0), small_cnn(1), learnable(30)
    selection = repair.TSelection(folds=2, ts=(0.2, 0.5, 0.8), tolerance=100.0)
    _, report = repair.repair([a, b], bona, training=QUICK, selection=selection)
    assert report.t == 0.5
    assert report.endpoint_accuracy == report.table["heldout_accuracy"].max()
    assert report.cost == pytest.approx(report.endpoint_accuracy - report.accuracy_at_t) and report.cost >= 0
