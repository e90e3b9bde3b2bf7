"""scripts/make_synthetic_data.py: the synthetic CIFAR-10 and SVHN files CI runs the paper-shaped profiles on.

How the readers see the files is tested in tests/test_data.py (with the same writers); here: the command line,
balanced labels, seeding, and how the training images are spread over CIFAR-10's five batches."""

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mcar_lib import data

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_synthetic_data.py"


def _module():
    spec = importlib.util.spec_from_file_location("make_synthetic_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synthetic = _module()


def test_command_line_writes_files_the_loaders_read(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "d"), "--n-train", "30", "--n-test", "20",
                          "--check"], capture_output=True, text=True, check=True).stdout
    assert "cifar10: {'train': 30, 'test': 20}" in out and "svhn: {'train': 30, 'test': 20}" in out
    names = sorted(p.name for p in (tmp_path / "d" / "cifar-10-batches-py").iterdir())
    assert names == ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for split, n in (("train", 30), ("test", 20)):
        for load in (data.load_cifar10, data.load_svhn):
            ds = load(split, root=tmp_path / "d", verify_checksums=False)
            assert len(ds) == n and ds.x.shape[1:] == (3, 32, 32)
            assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
            assert Counter(ds.y.tolist()) == Counter(np.arange(n) % 10)  # balanced: each class n/10 (±1) times


def test_training_images_are_spread_over_five_batches(tmp_path):
    written = synthetic.write_cifar10(tmp_path, n_train=23, n_test=3)
    assert [len(written[f"data_batch_{i}"][1]) for i in range(1, 6)] == [5, 5, 5, 4, 4]
    assert len(written["test_batch"][1]) == 3


def test_seeded(tmp_path):
    first = synthetic.write_svhn(tmp_path / "a", n_train=10, n_test=10, seed=3)
    again = synthetic.write_svhn(tmp_path / "b", n_train=10, n_test=10, seed=3)
    other = synthetic.write_svhn(tmp_path / "c", n_train=10, n_test=10, seed=4)
    assert all(np.array_equal(first[s][0], again[s][0]) and np.array_equal(first[s][1], again[s][1])
               for s in ("train", "test"))
    assert not np.array_equal(first["train"][0], other["train"][0])
    cifar = synthetic.write_cifar10(tmp_path / "a", n_train=10, n_test=10, seed=3)
    assert not np.array_equal(cifar["test_batch"][0].reshape(-1)[:100], first["test"][0].reshape(-1)[:100])


def test_sizes_are_checked(tmp_path):
    with pytest.raises(ValueError, match="positive"):
        synthetic.write_cifar10(tmp_path, n_train=0)
    with pytest.raises(ValueError, match="positive"):
        synthetic.write_svhn(tmp_path, n_test=0)
