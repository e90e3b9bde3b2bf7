"""Data loading (Fashion-MNIST sources, CIFAR-10 and SVHN readers on synthetic files) and seeded splits."""

import gzip
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mcar_lib import data


def _write_idx(folder, n_train=20, n_test=10, gz=True, seed=0):
    """Fashion-MNIST files in the IDX format (magic numbers 2051 for images, 2049 for labels); returns the test
    images and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        img_bytes = np.array([2051, n, 28, 28], dtype=">i4").tobytes() + images.tobytes()
        lab_bytes = np.array([2049, n], dtype=">i4").tobytes() + labels.tobytes()
        for name, payload in ((f"{prefix}-images-idx3-ubyte", img_bytes), (f"{prefix}-labels-idx1-ubyte", lab_bytes)):
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as handle:
                    handle.write(payload)
            else:
                (folder / name).write_bytes(payload)
    return images, labels


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-here")
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)


def test_missing_fashion_mnist_names_all_three_ways(no_debian):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_fashion_mnist("train", download=False)
    message = str(info.value)
    assert "MCAR_DATA_DIR" in message and "apt-get install dataset-fashion-mnist" in message
    assert "download" in message


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_explicit_directory(no_debian, tmp_path, gz):
    images, labels = _write_idx(tmp_path / "fm", gz=gz)
    test = data.load_fashion_mnist("test", root=tmp_path / "fm", download=False)
    assert test.x.shape == (10, 1, 28, 28) and test.x.dtype == torch.float32
    assert torch.equal(test.y, torch.from_numpy(labels.astype(np.int64)))
    assert torch.allclose(test.x[:, 0], torch.from_numpy(images).float() / 255)
    assert 0.0 <= test.x.min() and test.x.max() <= 1.0


def test_environment_variable_directory(no_debian, tmp_path, monkeypatch):
    _write_idx(tmp_path / "env")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    assert len(data.load_fashion_mnist("train", download=False)) == 20


def test_debian_package_location(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    _write_idx(tmp_path / "deb")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "deb")
    assert len(data.load_fashion_mnist("train", download=False)) == 20


def test_staging_is_keyed_by_the_source_folder(no_debian, tmp_path, monkeypatch):
    """Two folders with different images (one gzipped, one plain): each load returns its own folder's images,
    never a copy staged earlier for the other."""
    images_a, labels_a = _write_idx(tmp_path / "a", gz=True, seed=1)
    images_b, labels_b = _write_idx(tmp_path / "b", gz=False, seed=2)
    assert not np.array_equal(images_a, images_b)

    def as_tensor(images):
        return torch.from_numpy(images).float().div(255).unsqueeze(1)

    for folder, images, labels in (("a", images_a, labels_a), ("b", images_b, labels_b), ("a", images_a, labels_a)):
        monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / folder))
        loaded = data.load_fashion_mnist("test", download=False)
        assert torch.equal(loaded.x, as_tensor(images)), folder
        assert torch.equal(loaded.y, torch.from_numpy(labels.astype(np.int64))), folder
        by_root = data.load_fashion_mnist("test", root=tmp_path / folder, download=False)
        assert torch.equal(by_root.x, loaded.x)
    # new files in a folder already staged (same sizes, a later modification time) are staged afresh
    images_c, _ = _write_idx(tmp_path / "b", gz=False, seed=3)
    for path in (tmp_path / "b").iterdir():
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "b"))
    assert torch.equal(data.load_fashion_mnist("test", download=False).x, as_tensor(images_c))


def _synthetic_writers():
    """scripts/make_synthetic_data.py: the one writer of synthetic CIFAR-10 and SVHN files (CI uses it too)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "make_synthetic_data.py"
    spec = importlib.util.spec_from_file_location("make_synthetic_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synthetic = _synthetic_writers()


def test_cifar10_reader_on_synthetic_files(tmp_path):
    expected = synthetic.write_cifar10(tmp_path, n_train=20, n_test=4, seed=1)
    train = data.load_cifar10("train", root=tmp_path, verify_checksums=False)
    test = data.load_cifar10("test", root=tmp_path, verify_checksums=False)
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    pixels, labels = expected["test_batch"]
    # CIFAR stores each image as 1024 red, then green, then blue values, row-major.
    assert torch.allclose(test.x, torch.from_numpy(pixels.reshape(4, 3, 32, 32)).float() / 255)
    assert test.y.tolist() == labels
    # the training set is the five batches in order
    batches = [expected[f"data_batch_{i}"] for i in range(1, 6)]
    assert train.y.tolist() == [label for _, labels in batches for label in labels]
    assert torch.equal(train.x, torch.from_numpy(np.concatenate([p for p, _ in batches]).reshape(20, 3, 32, 32))
                       .float() / 255)
    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "rb") as handle:
        assert pickle.load(handle)["label_names"] == list(data.CLASS_NAMES["cifar10"])


def test_cifar10_missing_is_a_clear_error(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="cifar-10-batches-py"):
        data.load_cifar10("train", root=tmp_path)


def test_svhn_reader_on_synthetic_files(tmp_path):
    from scipy.io import loadmat

    expected = synthetic.write_svhn(tmp_path, n_train=12, n_test=6, seed=2)
    images, digits = expected["test"]
    stored = loadmat(tmp_path / "test_32x32.mat")
    assert stored["X"].shape == (32, 32, 3, 6)  # SVHN stores H×W×C×N
    assert sorted(stored["y"].ravel().tolist()) == [1, 2, 3, 4, 5, 10]  # 10 means digit 0
    test = data.load_svhn("test", root=tmp_path, verify_checksums=False)
    assert test.x.shape == (6, 3, 32, 32)
    assert test.y.tolist() == digits.tolist() and sorted(digits.tolist()) == [0, 1, 2, 3, 4, 5]
    assert torch.allclose(test.x[2], torch.from_numpy(images[..., 2]).permute(2, 0, 1).float() / 255)
    assert len(data.load_svhn("train", root=tmp_path, verify_checksums=False)) == 12
    (tmp_path / "train_32x32.mat").unlink()
    with pytest.raises(data.DatasetNotFoundError, match="train_32x32.mat"):
        data.load_svhn("train", root=tmp_path, verify_checksums=False)


def _pool(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return data.LabeledImages(torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % 10)


def test_splits_are_disjoint_and_reproducible():
    train_pool, test_pool = _pool(100), _pool(50, seed=1)
    a = data.split(train_pool, test_pool, n_train=60, n_bonafide=30, n_test=20, seed=7)
    b = data.split(train_pool, test_pool, n_train=60, n_bonafide=30, n_test=20, seed=7)
    c = data.split(train_pool, test_pool, n_train=60, n_bonafide=30, n_test=20, seed=8)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.bonafide.x, b.bonafide.x)
    assert not torch.equal(a.train.x, c.train.x)
    keys = lambda ds: {tuple(row.flatten().tolist()) for row in ds.x}
    assert not keys(a.train) & keys(a.bonafide)
    assert not keys(a.test) & (keys(a.train) | keys(a.bonafide))
    assert (len(a.train), len(a.bonafide), len(a.test)) == (60, 30, 20)


def test_split_sizes_are_checked():
    with pytest.raises(ValueError, match="exceeds"):
        data.split(_pool(10), _pool(10), n_train=8, n_bonafide=5, n_test=2, seed=0)


def test_loader_shuffles_reproducibly_and_covers_everything():
    ds = _pool(23)
    first = [y.tolist() for _, y in data.loader(ds, 5, shuffle=True, seed=3)]
    again = [y.tolist() for _, y in data.loader(ds, 5, shuffle=True, seed=3)]
    assert first == again
    assert sorted(sum(first, [])) == sorted(ds.y.tolist())
    ordered = [x for x, _ in data.loader(ds, 5)]
    assert torch.equal(torch.cat(ordered), ds.x)


def test_split_off_and_take():
    ds = _pool(40)
    rest, held = data.split_off(ds, 0.25, seed=0)
    assert len(held) == 10 and len(rest) == 30
    assert len(data.take(ds, 7, seed=1)) == 7
    with pytest.raises(ValueError):
        data.take(ds, 41, seed=0)


def test_labeled_images_validates_shapes():
    with pytest.raises(ValueError, match="N×C×H×W"):
        data.LabeledImages(torch.zeros(3, 4, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        data.LabeledImages(torch.zeros(3, 1, 4, 4), torch.zeros(2, dtype=torch.long))
