"""Data loading (Fashion-MNIST sources, CIFAR-10 and SVHN readers on synthetic files, load() by name without network),
seeded splits and folds, padding, augmentation, and any map-style data set as LabeledImages."""

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


# ------------------------------------------------------------------------------------- load() by name

@pytest.fixture
def offline(monkeypatch):
    """No network: torchvision's downloads (and any URL opened) fail at once with a URLError; returns the list of
    URLs a download was attempted for."""
    import urllib.error
    import urllib.request

    from torchvision.datasets import utils

    attempts: list[str] = []

    def refuse(url, *args, **kwargs):
        attempts.append(str(url))
        raise urllib.error.URLError("network is unreachable (test)")

    # torchvision's download_url checks the local file first, then resolves redirects (the first request)
    monkeypatch.setattr(utils, "_get_redirect_url", refuse)
    monkeypatch.setattr(utils, "_urlretrieve", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


def test_load_reads_synthetic_cifar10_and_svhn_when_checksums_are_off(tmp_path, monkeypatch, offline):
    synthetic.write_cifar10(tmp_path, n_train=10, n_test=5, seed=3)
    synthetic.write_svhn(tmp_path, n_train=6, n_test=4, seed=4)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(data.VERIFY_ENV, "0")
    cifar = data.load("cifar10", "test")
    direct = data.load_cifar10("test", root=tmp_path, verify_checksums=False)
    assert cifar.x.shape == (5, 3, 32, 32) and torch.equal(cifar.x, direct.x) and torch.equal(cifar.y, direct.y)
    svhn = data.load("svhn", "train", root=tmp_path)
    assert svhn.x.shape == (6, 3, 32, 32)
    assert torch.equal(svhn.x, data.load_svhn("train", root=tmp_path, verify_checksums=False).x)
    assert offline == [], "files that are there are not downloaded again"


@pytest.mark.parametrize("verify", [None, "1"], ids=["unset", "1"])
def test_load_checks_md5_sums_unless_told_not_to(tmp_path, monkeypatch, offline, verify):
    """Hand-made files fail the MD5 check of the real data set: with checks on, they are not read."""
    synthetic.write_cifar10(tmp_path, n_train=10, n_test=5, seed=3)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    if verify is None:
        monkeypatch.delenv(data.VERIFY_ENV, raising=False)
    else:
        monkeypatch.setenv(data.VERIFY_ENV, verify)
    with pytest.raises(data.DatasetNotFoundError):
        data.load("cifar10", "test")
    assert len(offline) == 1, "a file that fails its check is downloaded afresh (here: refused, no network)"
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").exists()


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_a_failed_checksum_says_so_and_names_the_switch(tmp_path, monkeypatch, offline, name):
    writer = synthetic.write_cifar10 if name == "cifar10" else synthetic.write_svhn
    writer(tmp_path, n_train=10, n_test=5, seed=3)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(data.VERIFY_ENV, raising=False)
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load(name, "test")
    assert data.VERIFY_ENV in str(info.value) and "is not under" not in str(info.value)
    assert "MD5" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_a_missing_data_set_that_cannot_be_downloaded_is_one_clear_line(tmp_path, monkeypatch, offline, name):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "empty"))
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load(name, "train")
    message = str(info.value)
    assert "\n" not in message, "one line"
    assert str(tmp_path / "empty") in message and data.DATA_DIR_ENV in message
    assert "download=True" in message and "URLError" in message
    assert len(offline) == 1  # it tried to download, once
    assert isinstance(info.value, FileNotFoundError)  # DatasetNotFoundError is one


def test_load_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        data.load("mnist")


def test_fashion_mnist32_is_fashion_mnist_padded_to_32(no_debian, tmp_path, monkeypatch):
    _write_idx(tmp_path / "fm", seed=5)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "fm"))
    plain, padded = data.load("fashion_mnist", "test"), data.load("fashion_mnist32", "test")
    assert padded.x.shape == (10, 1, 32, 32) and data.DATASET_INFO["fashion_mnist32"].image_shape == (1, 32, 32)
    assert torch.equal(padded.x[:, :, 2:30, 2:30], plain.x) and torch.equal(padded.y, plain.y)
    border = padded.x.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.abs().sum() == 0


# ------------------------------------------------------------------------------------------- pad_to

def test_pad_to_centres_the_images_with_zero_borders():
    images = data.LabeledImages(torch.rand(3, 2, 5, 4) + 0.1, torch.tensor([0, 1, 2]))
    padded = data.pad_to(images, 8)
    assert padded.x.shape == (3, 2, 8, 8) and torch.equal(padded.y, images.y)
    # 3 rows to add: 1 above, 2 below; 4 columns: 2 left, 2 right
    assert torch.equal(padded.x[:, :, 1:6, 2:6], images.x)
    assert padded.x.sum() == pytest.approx(float(images.x.sum()))
    assert torch.equal(data.pad_to(images, 5).x[:, :, :, :4], images.x[:, :, :, :4])  # already 5 high: columns only
    with pytest.raises(ValueError, match="cannot pad 5×4 images to 4×4"):
        data.pad_to(images, 4)


# -------------------------------------------------------------------------------------------- folds

def _numbered(n):
    """Images whose single pixel is their index: a sample is identified by its value."""
    return data.LabeledImages(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n) % 3)


@pytest.mark.parametrize("n, k", [(23, 5), (10, 2), (7, 7)])
def test_folds_hold_every_sample_out_exactly_once(n, k):
    ds = _numbered(n)
    folds = data.folds(ds, k, seed=1)
    assert len(folds) == k
    held_out = sorted(int(v) for _, held in folds for v in held.x.flatten())
    assert held_out == list(range(n))
    sizes = [len(held) for _, held in folds]
    assert max(sizes) - min(sizes) <= 1
    for rest, held in folds:
        rest_ids, held_ids = set(rest.x.flatten().tolist()), set(held.x.flatten().tolist())
        assert not rest_ids & held_ids and rest_ids | held_ids == set(range(n))
        assert torch.equal(held.y, held.x.flatten().long() % 3)  # labels travel with their images


def test_folds_are_seeded():
    ds = _numbered(20)

    def assignment(seed):
        return [sorted(held.x.flatten().tolist()) for _, held in data.folds(ds, 4, seed=seed)]

    assert assignment(3) == assignment(3)
    assert assignment(3) != assignment(4)
    assert assignment(3) != [list(range(i, i + 5)) for i in range(0, 20, 5)]  # shuffled, not consecutive


@pytest.mark.parametrize("k", [1, 0, 21, 2.0])
def test_folds_refuse_impossible_k(k):
    with pytest.raises(ValueError):
        data.folds(_numbered(20), k, seed=0)


# ---------------------------------------------------------------------------------------- Augmented

def _shifted(x, dy, dx):
    """``x`` (C×H×W) moved ``dy`` rows down and ``dx`` columns right, zeros where nothing moved in."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[:, max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
        x[:, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    return out


def _which_shift(image, out, s, flips):
    """The (dy, dx, flipped) among all shifts up to ``s`` (and mirrorings, if ``flips``) that turn ``image`` into
    ``out``, or None."""
    for flipped in ((False, True) if flips else (False,)):
        source = image.flip(-1) if flipped else image
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                if torch.equal(_shifted(source, dy, dx), out):
                    return dy, dx, flipped
    return None


def _batches(n=40, seed=0, size=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, size, size, generator=g) + 0.05  # no zero pixel: a shift is visible
    y = torch.randint(0, 10, (n,), generator=g)
    return [(x[:16], y[:16]), (x[16:], y[16:])]


def test_augmented_shifts_each_image_by_at_most_shift_pixels():
    source = _batches()
    out = list(data.Augmented(source, shift=2, flip=False, seed=0))
    assert len(out) == len(source) == len(data.Augmented(source, seed=0))
    seen = set()
    for (x, y), (xa, ya) in zip(source, out):
        assert xa.shape == x.shape and xa.dtype == x.dtype
        assert ya is y, "labels are passed through untouched"
        for image, moved in zip(x, xa):
            found = _which_shift(image, moved, 2, flips=False)
            assert found is not None, "every output is its image shifted by at most 2 pixels"
            seen.add(found[:2])
    assert len(seen) > 5, "the shifts are drawn at random per image"


def _one_pixel(row, col, n=64, size=7):
    image = torch.zeros(n, 1, size, size)
    image[:, 0, row, col] = 1.0
    return [(image, torch.zeros(n, dtype=torch.long))]


def _positions(x):
    """Where the bright pixel of each image is, or None where it left the image."""
    return [tuple(torch.nonzero(img[0]).flatten().tolist()) or None for img in x]


def test_augmented_moves_a_known_pixel_where_the_shift_says():
    (x, _), = data.Augmented(_one_pixel(3, 3), shift=1, flip=False, seed=2)  # a bright pixel in the middle
    assert all(float(img.sum()) == 1.0 for img in x)  # the pixel moved, nothing else appeared
    moved = _positions(x)
    assert set(moved) == {(r, c) for r in (2, 3, 4) for c in (2, 3, 4)}  # every shift of at most 1, all seen
    # the same seed draws the same shifts for a batch of the same size: a pixel in the top-left corner moves by
    # the same (dy, dx), so it stays exactly when dy and dx are not negative, and zeros come in where it was
    (corner, _), = data.Augmented(_one_pixel(0, 0), shift=1, flip=False, seed=2)
    expected = [(r - 3, c - 3) if r >= 3 and c >= 3 else None for r, c in moved]
    assert _positions(corner) == expected and None in expected
    assert all(float(img.sum()) == (0.0 if where is None else 1.0) for img, where in zip(corner, expected))


def test_augmented_flips_mirror_the_image():
    source = _batches(seed=1)
    out = list(data.Augmented(source, shift=0, flip=True, seed=5))
    kinds = set()
    for (x, _), (xa, _) in zip(source, out):
        for image, result in zip(x, xa):
            if torch.equal(result, image):
                kinds.add("kept")
            else:
                assert torch.equal(result, image.flip(-1)), "a flip mirrors left and right"
                kinds.add("mirrored")
    assert kinds == {"kept", "mirrored"}
    both = list(data.Augmented(source, shift=1, flip=True, seed=5))
    for (x, _), (xa, _) in zip(source, both):
        assert all(_which_shift(image, result, 1, flips=True) is not None for image, result in zip(x, xa))
    untouched = list(data.Augmented(source, shift=0, flip=False, seed=5))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(source, untouched))


def test_augmented_is_seeded_and_repeatable():
    source = _batches(seed=2)
    first, again = data.Augmented(source, seed=7), data.Augmented(source, seed=7)
    runs = [list(first), list(first), list(again)]
    for run in runs[1:]:
        assert all(torch.equal(a[0], b[0]) for a, b in zip(runs[0], run))
    other = list(data.Augmented(source, seed=8))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(runs[0], other))
    assert all(torch.equal(s[0], b[0]) for s, b in zip(_batches(seed=2), source)), "the source is not changed"
    with pytest.raises(ValueError, match="shift must be non-negative"):
        data.Augmented(source, shift=-1)


# ------------------------------------------------------------------------------------- from_dataset

class _Pairs(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def test_from_dataset_stacks_any_map_style_data_set():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 5, 4, generator=g) for _ in range(6)]
    labels = [2, 0, 1, 1, 9, 3]
    ds = data.from_dataset(_Pairs(images, labels))
    assert ds.x.shape == (6, 3, 5, 4) and ds.x.dtype == torch.float32
    assert torch.equal(ds.x, torch.stack(images)) and ds.y.tolist() == labels and ds.y.dtype == torch.long
    assert torch.equal(data.from_dataset(_Pairs(images, labels), limit=4).x, torch.stack(images[:4]))
    assert len(data.from_dataset(_Pairs(images, labels), limit=100)) == 6
    grey = data.from_dataset(_Pairs([img[0] for img in images], [torch.tensor(v) for v in labels]))
    assert grey.x.shape == (6, 1, 5, 4) and grey.y.tolist() == labels  # H×W images get a channel; tensor labels


def test_from_dataset_reads_a_torchvision_data_set():
    from torchvision.datasets import FakeData
    from torchvision.transforms import ToTensor

    fake = FakeData(size=5, image_size=(3, 6, 7), num_classes=4, transform=ToTensor(), random_offset=3)
    ds = data.from_dataset(fake)
    assert ds.x.shape == (5, 3, 6, 7) and 0 <= float(ds.x.min()) and float(ds.x.max()) <= 1
    for i in range(5):
        image, label = fake[i]
        assert torch.equal(ds.x[i], image) and ds.y[i] == int(label)


def test_from_dataset_refuses_what_it_cannot_stack():
    with pytest.raises(ValueError, match="2 different shapes"):
        data.from_dataset(_Pairs([torch.rand(1, 4, 4), torch.rand(1, 5, 4)], [0, 1]))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        data.from_dataset(_Pairs([torch.rand(1, 4, 4) * 255], [0]))
    with pytest.raises(ValueError, match="empty"):
        data.from_dataset(_Pairs([], []))
