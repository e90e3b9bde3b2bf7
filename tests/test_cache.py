"""The checkpoint cache: load-if-present, atomic writes, refusal of unsafe or mismatched entries."""

import pickle
import warnings

import pytest
import torch
from torch import nn

from mcar_lib import cache


def _build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _train_counter(calls: list):
    def train(model: nn.Module) -> nn.Module:
        calls.append(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model[1].running_mean.fill_(0.5)
        return model
    return train


CONFIG = {"name": "unit", "seed": 0, "lr": 0.1}


def test_trains_once_then_loads_identical_weights():
    calls: list = []
    first = cache.load_or_train(CONFIG, _build, _train_counter(calls))
    second = cache.load_or_train(CONFIG, _build, _train_counter(calls))
    assert len(calls) == 1
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(second[1].running_mean, torch.full((4,), 0.5))


def test_different_configuration_gets_its_own_entry():
    calls: list = []
    cache.load_or_train(CONFIG, _build, _train_counter(calls))
    cache.load_or_train({**CONFIG, "lr": 0.2}, _build, _train_counter(calls))
    assert len(calls) == 2
    assert cache.entry_path(CONFIG) != cache.entry_path({**CONFIG, "lr": 0.2})


def test_truncated_entry_is_detected_and_rebuilt():
    calls: list = []
    cache.load_or_train(CONFIG, _build, _train_counter(calls))
    path = cache.entry_path(CONFIG)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(cache.CacheEntryError):
        cache.read_entry(path, CONFIG)
    with pytest.warns(UserWarning, match="cannot be read"):
        cache.load_or_train(CONFIG, _build, _train_counter(calls))
    assert len(calls) == 2
    cache.read_entry(path, CONFIG)  # the rebuilt entry is valid


class _RunsCodeOnLoad:
    """A pickle payload that would execute a command if unpickled."""

    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the hand-made pickle
def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = cache.entry_path(CONFIG)
    with open(path, "wb") as handle:
        pickle.dump({"key": cache.canonical_key(CONFIG), "tensors": _RunsCodeOnLoad()}, handle)
    with pytest.raises(cache.CacheEntryError, match="cannot be read safely"):
        cache.read_entry(path, CONFIG)
    # torch.save'd objects are refused by weights_only loading too
    torch.save({"key": cache.canonical_key(CONFIG), "tensors": _RunsCodeOnLoad()}, path)
    with pytest.raises(cache.CacheEntryError):
        cache.read_entry(path, CONFIG)


def test_entry_for_another_configuration_is_refused():
    calls: list = []
    cache.load_or_train(CONFIG, _build, _train_counter(calls))
    other = {**CONFIG, "lr": 0.3}
    cache.entry_path(other).write_bytes(cache.entry_path(CONFIG).read_bytes())
    with pytest.raises(cache.CacheEntryError, match="another configuration"):
        cache.read_entry(cache.entry_path(other), other)


def test_atomic_save_leaves_no_partial_file_on_failure(tmp_path):
    target = tmp_path / "x.pt"

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(Exception):
        cache.atomic_save({"bad": Boom()}, target)
    assert not target.exists()
    assert list(tmp_path.glob(".x.pt.*")) == []


def test_cached_tensors_computes_once():
    calls: list = []

    def compute():
        calls.append(1)
        return {"a": torch.arange(3.0)}

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = cache.cached_tensors({"name": "r"}, compute)
        second = cache.cached_tensors({"name": "r"}, compute)
    assert len(calls) == 1 and torch.equal(first["a"], second["a"])


def test_cache_root_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(tmp_path / "elsewhere"))
    assert cache.cache_root() == tmp_path / "elsewhere"
    assert (tmp_path / "elsewhere").is_dir()


def test_an_entry_for_another_configuration_is_retrained_with_a_warning_naming_the_file_and_the_field():
    calls: list = []
    cache.load_or_train(CONFIG, _build, _train_counter(calls))
    other = {**CONFIG, "lr": 0.3}
    path = cache.entry_path(other)
    path.write_bytes(cache.entry_path(CONFIG).read_bytes())  # a hand-copied file under the other key's name
    with pytest.warns(UserWarning) as record:
        cache.load_or_train(other, _build, _train_counter(calls))
    message = str(record[0].message)
    assert str(path) in message and "another configuration" in message
    assert 'lr: "0.1" -> "0.3"' in message and "seed" not in message  # only what differs
    assert len(calls) == 2
    cache.read_entry(path, other)  # rewritten for its own key


def test_an_entry_that_does_not_fit_the_architecture_is_retrained_with_a_warning_naming_the_file():
    calls: list = []
    cache.load_or_train(CONFIG, _build, _train_counter(calls))

    def wider() -> nn.Module:  # same key, another architecture: 5 features instead of 4
        return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5))

    with pytest.warns(UserWarning) as record:
        model = cache.load_or_train(CONFIG, wider, _train_counter(calls))
    message = str(record[0].message)
    assert str(cache.entry_path(CONFIG)) in message and "does not fit" in message
    assert "0.weight" in message and "size mismatch" in message
    assert len(calls) == 2 and model[0].weight.shape == (5, 3)


def test_a_result_entry_for_another_configuration_is_recomputed_with_a_warning():
    computed: list = []

    def compute(value: float):
        def run():
            computed.append(value)
            return {"v": torch.tensor([value])}
        return run

    first = {"name": "table", "points": 3}
    cache.cached_tensors(first, compute(1.0))
    second = {"name": "table", "points": 5}
    path = cache.entry_path(second, "results")
    path.write_bytes(cache.entry_path(first, "results").read_bytes())
    with pytest.warns(UserWarning, match="another configuration") as record:
        result = cache.cached_tensors(second, compute(2.0))
    assert str(path) in str(record[0].message) and "points: 3 -> 5" in str(record[0].message)
    assert torch.equal(result["v"], torch.tensor([2.0])) and computed == [1.0, 2.0]
