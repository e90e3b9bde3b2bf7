"""The shared robustness recipes: endpoints and curves come from the cache, keyed by everything they depend on."""

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
