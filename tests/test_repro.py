"""Seeding: two calls of the helper give identical training results."""

import pytest
import torch

from mcar_lib import data, repro, train

from helpers import tiny_cnn


def _train_once(seed: int) -> dict[str, torch.Tensor]:
    repro.seed_everything(seed)
    x = torch.rand(96, 1, 8, 8)
    y = torch.randint(0, 3, (96,))
    model = tiny_cnn(None, dropout=0.2)  # initialised from the state seed_everything left
    trained, _ = train.fit(model, data.loader(data.LabeledImages(x, y), 16, shuffle=True, seed=seed), epochs=2,
                           sgd=train.SGDConfig(lr=0.1))
    return trained.state_dict()


def test_two_seeded_runs_train_identically():
    first, second = _train_once(3), _train_once(3)
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_different_seeds_differ():
    first, second = _train_once(3), _train_once(4)
    assert any(not torch.equal(first[n], second[n]) for n in first if first[n].is_floating_point())


def test_bad_seed_and_device_are_clear_errors():
    with pytest.raises(ValueError, match="non-negative int"):
        repro.seed_everything(-1)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            repro.resolve_device("cuda")
    assert repro.resolve_device("auto").type in ("cpu", "cuda")
