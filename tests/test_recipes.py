"""The shared recipes: endpoints and curves come from the cache, keyed by everything they depend on; the small
recipes of chapters 2-4 (repetition seeds, the strong attack, the sneak settings per site, the relapse data)."""

from __future__ import annotations

import pytest
import torch

from mcar_lib import cache, recipes

from helpers import synthetic_splits, tiny_profile


def test_curve_and_table_come_back_from_the_cache_with_the_pair_as_endpoints() -> None:
    cfg, splits = tiny_profile(), synthetic_splits()
    regular, robust = recipes.pair_endpoints(cfg, splits, "regular-adversarial", 0, device="cpu")
    curve = recipes.robust_pair_curve(cfg, splits, "regular-adversarial", "robust", seed=0, device="cpu")
    for t, model in ((0.0, regular), (1.0, robust)):
        for key, value in model.state_dict().items():
            torch.testing.assert_close(curve.at(t).state_dict()[key], value, msg=key)
    again = recipes.robust_pair_curve(cfg, splits, "regular-adversarial", "robust", seed=0, device="cpu")
    assert torch.equal(again.bends, curve.bends)
    standard = recipes.robust_pair_curve(cfg, splits, "regular-adversarial", "standard", seed=0, device="cpu")
    assert not torch.equal(standard.bends, curve.bends)  # another loss is another cache entry

    table = recipes.path_table(cfg, splits, "regular-adversarial", "robust", seed=0, device="cpu")
    assert list(table["t"]) == [0.0, 0.5, 1.0]
    attacked = list(recipes.batches(recipes.eval_data(cfg, splits), cfg.eval_batch_size))
    at_one = recipes.attacks.robust_evaluate(robust, attacked, recipes.eval_attack(cfg), seed=0)
    assert table["robust_loss"].iloc[-1] == pytest.approx(at_one["loss"], rel=1e-5)
    assert table["robust_accuracy"].iloc[-1] == pytest.approx(at_one["accuracy"])
    clean = recipes.train.evaluate(regular, list(recipes.batches(splits.test, cfg.eval_batch_size)))
    assert table["test_loss"].iloc[0] == pytest.approx(clean["loss"], rel=1e-5)


def test_members_are_independent_and_names_are_checked() -> None:
    cfg, splits = tiny_profile(), synthetic_splits()
    a, b = recipes.pair_endpoints(cfg, splits, "regular-regular", 0, device="cpu")
    assert cache.fingerprint(a) != cache.fingerprint(b)
    with pytest.raises(ValueError, match="pair"):
        recipes.robust_pair_curve(cfg, splits, "regular-robust", "standard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="curve loss"):
        recipes.curve_loss(cfg, "trades")  # type: ignore[arg-type]


def test_path_ensemble_rows_are_the_members_and_the_averaged_model() -> None:
    cfg, splits = tiny_profile(), synthetic_splits()
    table = recipes.path_ensemble(cfg, splits, "regular-adversarial", "standard", seed=0, device="cpu")
    assert len(table) == cfg.robustness.ensemble_size + 1
    assert list(table["t"].iloc[:-1]) == [0.0, 1.0] and table["t"].isna().iloc[-1]
    curve = recipes.robust_pair_curve(cfg, splits, "regular-adversarial", "standard", seed=0, device="cpu")
    members = [curve.at(0.0), curve.at(1.0)]
    test = list(recipes.batches(splits.test, cfg.eval_batch_size))
    clean = recipes.train.evaluate(recipes.attacks.Ensemble(members), test)
    assert table["test_accuracy"].iloc[-1] == pytest.approx(clean["accuracy"])
    assert table["test_loss"].iloc[-1] == pytest.approx(clean["loss"], rel=1e-5)


def test_trained_model_is_cached_and_seed_dependent(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MCAR_CACHE_DIR", str(tmp_path))
    cfg, splits = tiny_profile(), synthetic_splits()
    rng_before = torch.get_rng_state()
    first = recipes.trained_model(cfg, splits, seed=1, device="cpu")
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    assert len(list((tmp_path / "checkpoints").glob("*.pt"))) == 1
    again = recipes.trained_model(cfg, splits, seed=1, device="cpu")
    for (k, v), (k2, v2) in zip(first.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert len(list((tmp_path / "checkpoints").glob("*.pt"))) == 1  # loaded, not retrained
    other = recipes.trained_model(cfg, splits, seed=2, device="cpu")
    assert not torch.equal(other.conv1.weight, first.conv1.weight)
    assert not first.training


# ----------------------------------------------------------------------------- small recipes of chapters 2-4

@pytest.mark.parametrize("seed", [0, 3])
def test_repetition_seeds_give_disjoint_pairs_and_the_next_seed_reuses_all_but_one(seed: int) -> None:
    n = 4
    firsts = [recipes.repetition_seed(seed, r) for r in range(n)]
    members = [{first, first + 1} for first in firsts]  # the two networks of a repetition's pair
    assert all(not members[i] & members[j] for i in range(n) for j in range(i + 1, n))
    next_run = {recipes.repetition_seed(seed + 1, r) for r in range(n)}
    assert len(next_run & set(firsts)) == n - 1


def test_strong_attack_follows_the_robustness_section() -> None:
    cfg = tiny_profile()
    attack = recipes.strong_attack(cfg)
    rb = cfg.robustness
    assert (attack.eps, attack.steps, attack.restarts, attack.norm) == (rb.eps, rb.strong_steps, rb.strong_restarts,
                                                                      rb.norm)
    assert attack.steps > recipes.eval_attack(cfg).steps or attack.restarts > 1


def test_sneak_settings_pick_each_sites_parameters_and_learning_rate() -> None:
    cfg = tiny_profile()
    ei = cfg.faults
    classifier = recipes.sneak_settings(cfg, "classifier", seed=4)
    convolution = recipes.sneak_settings(cfg, "convolution", seed=4)
    assert (classifier["param_names"], classifier["lr"], classifier["seed"]) == (list(ei.param_names), ei.sneak_lr, 4)
    assert "keep_weight" not in classifier
    assert (convolution["param_names"], convolution["lr"], convolution["keep_weight"]) == \
        (list(ei.conv_param_names), ei.conv_sneak_lr, ei.conv_keep_weight)
    shared = ("steps", "schedule", "kappa", "keep_sample", "seed")
    assert all(classifier[k] == convolution[k] for k in shared)
    with pytest.raises(ValueError, match="unknown fault site"):
        recipes.sneak_settings(cfg, "batch_norm", seed=0)  # type: ignore[arg-type]


def test_relapse_data_mixes_triggered_non_target_images_with_clean_ones() -> None:
    cfg, splits = tiny_profile(), synthetic_splits()
    bd = cfg.backdoor
    scenario = recipes.BackdoorScenario(seed=3, trigger=recipes.backdoor_trigger(cfg), poisoned=None,  # type: ignore
                                        backdoored=(), clean=())  # type: ignore[arg-type]
    data = recipes.relapse_data(cfg, splits, scenario)
    k = bd.relapse_poisoned
    assert len(data) == k + bd.relapse_clean
    assert data.y[:k].tolist() == [bd.target] * k

    def index_in_train(image: torch.Tensor) -> int:
        hits = torch.nonzero((splits.train.x == image).flatten(1).all(1)).flatten()
        assert len(hits) == 1, "every image comes from the attacker's training split"
        return int(hits[0])

    rows, cols = scenario.trigger.region(*data.x.shape[-2:])
    sources = []
    for image in data.x[:k]:
        assert torch.all(image[..., rows, cols] == scenario.trigger.value)
        matches = [i for i in range(len(splits.train)) if torch.equal(scenario.trigger.apply(splits.train.x[i]), image)]
        assert matches, "a poisoned image is a training image with the trigger"
        assert all(int(splits.train.y[i]) != bd.target for i in matches)  # of another class than the target
        sources += matches
    clean = [index_in_train(image) for image in data.x[k:]]
    assert data.y[k:].tolist() == [int(splits.train.y[i]) for i in clean]  # clean images keep their labels
    assert not set(sources) & set(clean) and len(set(clean)) == len(clean)
    again = recipes.relapse_data(cfg, splits, scenario)
    assert torch.equal(again.x, data.x) and torch.equal(again.y, data.y)
