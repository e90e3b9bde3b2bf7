"""Data sets as [0, 1] float tensors, and seeded, disjoint splits for the attacker and the defender.

Every experiment in the book needs three disjoint pieces of data: the attacker's **training** set, the
defender's small clean **bonafide** pool, and a held-out **test** set that neither of them touches. The
reference code drew its bonafide data from the test set with an unseeded shuffle; here the bonafide pool is
carved out of the training file and the test set comes from the official test file, so the three are
disjoint by construction and reproducible from one seed.

Images are float tensors in [0, 1], NCHW; any normalisation happens inside the model, so attack budgets
are in pixel units.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from mcar_lib.cache import cache_root, fingerprint

#: Where Debian's ``dataset-fashion-mnist`` package installs the four gzipped IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable naming a directory that holds data sets (checked before anything else).
DATA_DIR_ENV = "MCAR_DATA_DIR"

DatasetName = Literal["fashion_mnist", "fashion_mnist32", "cifar10", "svhn"]
DATASETS: tuple[str, ...] = ("fashion_mnist", "fashion_mnist32", "cifar10", "svhn")
#: Set to 0 for hand-made data files in torchvision's format (CI's synthetic CIFAR-10 and SVHN): their MD5 sums
#: cannot match the official ones.
VERIFY_ENV = "MCAR_VERIFY_CHECKSUMS"


@dataclass(frozen=True)
class DatasetInfo:
    """What a profile needs to know about a data set before loading it: image shape and split sizes."""

    image_shape: tuple[int, int, int]
    n_train: int
    n_test: int


DATASET_INFO: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo((1, 28, 28), 60_000, 10_000),
    "fashion_mnist32": DatasetInfo((1, 32, 32), 60_000, 10_000),
    "cifar10": DatasetInfo((3, 32, 32), 50_000, 10_000),
    "svhn": DatasetInfo((3, 32, 32), 73_257, 26_032),
}
CLASS_NAMES = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "fashion_mnist32": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "svhn": tuple(str(d) for d in range(10)),
}
_FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DatasetNotFoundError(FileNotFoundError):
    """A data set could not be found in any of the places we look; the message says how to get it."""


@dataclass(frozen=True)
class LabeledImages(Dataset):
    """Images ``x`` (N×C×H×W, float in [0, 1]) with integer labels ``y`` (N), held in memory.

    Indexing with a list or tensor of indices returns a whole batch at once, which is how :func:`loader`
    uses it (no per-sample collation).
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise ValueError(f"x must be N×C×H×W, got shape {tuple(self.x.shape)}")
        if self.y.ndim != 1 or len(self.y) != len(self.x):
            raise ValueError(f"y must be a vector of {len(self.x)} labels, got shape {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int | list[int] | Tensor) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]

    def subset(self, index: Tensor | slice) -> LabeledImages:
        """The samples at ``index`` as a new data set."""
        return LabeledImages(self.x[index], self.y[index])

    def to(self, device: str | torch.device) -> LabeledImages:
        return LabeledImages(self.x.to(device), self.y.to(device))

    def __cache_key__(self) -> dict[str, Any]:
        """What identifies the data in a cache key: a hash of the images and labels, and the size."""
        return {"data": fingerprint(self.x, self.y), "n": len(self)}

    @property
    def shape(self) -> tuple[int, int, int]:
        """C, H, W of one image."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]


def from_dataset(dataset: Dataset, *, limit: int | None = None) -> LabeledImages:
    """Any map-style data set of ``(image tensor, label)`` pairs (e.g. torchvision's
    ``ImageFolder(root, transform=ToTensor())``) as one in-memory :class:`LabeledImages`, images in [0, 1].

    ``limit`` keeps the first ``limit`` samples. The images must share one shape (resize them in the transform).
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the data set is empty")
    items = [dataset[i] for i in range(n)]
    images = [torch.as_tensor(x) for x, _ in items]
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) != 1:
        raise ValueError(f"the images have {len(shapes)} different shapes ({sorted(shapes)[:3]}...): resize them to "
                         "one size in the data set's transform")
    x = torch.stack(images).float()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    labels = torch.tensor([int(y) for _, y in items], dtype=torch.long)
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError("images must be in [0, 1]: use transforms.ToTensor() and normalise inside the model")
    return LabeledImages(x, labels)


def loader(data: LabeledImages, batch_size: int, *, shuffle: bool = False, seed: int = 0,
           drop_last: bool = False) -> DataLoader:
    """A DataLoader that yields whole batches by tensor indexing; shuffling is seeded and reproducible."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    base = RandomSampler(data, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(data)
    return DataLoader(data, sampler=BatchSampler(base, batch_size, drop_last), batch_size=None)


def batches(data: LabeledImages, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive batches in order (for evaluation)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(data), batch_size):
        yield data.x[start:start + batch_size], data.y[start:start + batch_size]


#: Batch size used where a :class:`LabeledImages` is given where batches are expected.
DEFAULT_BATCH_SIZE = 256
Batches = Iterable[tuple[Tensor, Tensor]]
#: A data set, or anything that yields ``(x, y)`` batches when iterated (a ``DataLoader``, a list of pairs).
BatchSource = Union[LabeledImages, Batches]


def iter_batches(source: BatchSource, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[tuple[Tensor, Tensor]]:
    """One pass over ``source``: consecutive batches of a :class:`LabeledImages`, or the source's own batches.

    The one adapter every function that reads data goes through. A re-iterable source (a loader, a list) can be
    passed again for another pass; a generator yields only once.
    """
    if isinstance(source, LabeledImages):
        return batches(source, batch_size)
    if isinstance(source, Tensor):
        raise TypeError("pass (x, y) batches or a LabeledImages, not a bare tensor")
    return iter(source)  # type: ignore[arg-type]


def iter_inputs(source: BatchSource | Iterable[Tensor], batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[Tensor]:
    """The inputs of one pass over ``source`` (items may be ``(x, y)`` pairs or bare input tensors)."""
    items = batches(source, batch_size) if isinstance(source, LabeledImages) else iter(source)
    for item in items:
        yield item[0] if isinstance(item, (tuple, list)) else item


def batch_list(source: BatchSource, batch_size: int = DEFAULT_BATCH_SIZE, *,
               device: torch.device | str | None = None) -> list[tuple[Tensor, Tensor]]:
    """``source``'s batches as a list (optionally moved to ``device``), for measurements that pass over the same
    data many times; an empty source is an error."""
    out = [(x, y) if device is None else (x.to(device), y.to(device)) for x, y in iter_batches(source, batch_size)]
    if not out or sum(len(y) for _, y in out) == 0:
        raise ValueError("the data set is empty; pass a LabeledImages or an iterable of (x, y) batches")
    return out


class StepBatches:
    """Exactly ``steps`` shuffled mini-batches, cycling through ``data`` (reshuffled, seeded, every pass).

    A training budget in steps rather than epochs is the same for every data-set size N (the reference code
    did the same by tiling its bonafide sets to a fixed number of samples per epoch). Has ``len`` so
    learning-rate schedules work; iterating it twice gives the same batches.
    """

    def __init__(self, data: LabeledImages, batch_size: int, steps: int, *, seed: int = 0) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if len(data) == 0:
            raise ValueError("cannot train on an empty data set")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.data, self.batch_size, self.steps, self.seed = data, batch_size, steps, seed

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        done, sweep = 0, 0
        while True:
            for batch in loader(self.data, self.batch_size, shuffle=True, seed=self.seed + sweep):
                if done == self.steps:
                    return
                yield batch
                done += 1
            sweep += 1


class Augmented:
    """Random shifts (up to ``shift`` pixels, zero padding) and horizontal flips of every batch of ``source``,
    drawn from a generator seeded with ``seed`` (iterating twice gives the same batches).

    A little data augmentation is the cheapest way to stretch a small bonafide set; both are label-preserving
    for the book's data sets (Fashion-MNIST, CIFAR-10; for digits, turn flips off).
    """

    def __init__(self, source: Iterable[tuple[Tensor, Tensor]], *, shift: int = 2, flip: bool = True,
                 seed: int = 0) -> None:
        if shift < 0:
            raise ValueError(f"shift must be non-negative, got {shift}")
        self.source, self.shift, self.flip, self.seed = source, shift, flip, seed

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        for x, y in self.source:
            yield self.transform(x, generator), y

    def transform(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """One random shift and flip per image of the batch ``x`` (N×C×H×W)."""
        n, _, height, width = x.shape
        out = x
        if self.shift:
            s = self.shift
            padded = torch.nn.functional.pad(x, (s, s, s, s))
            dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
            dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
            rows = (dy[:, None] + torch.arange(height)[None, :]).to(x.device)  # N×H
            cols = (dx[:, None] + torch.arange(width)[None, :]).to(x.device)  # N×W
            index = torch.arange(n, device=x.device)[:, None, None]
            out = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.flip:
            mirrored = torch.rand(n, generator=generator) < 0.5
            out = torch.where(mirrored.to(x.device)[:, None, None, None], out.flip(-1), out)
        return out.contiguous()


# ----------------------------------------------------------------------------------------------- loading

def _explicit_dir(root: str | os.PathLike | None) -> Path | None:
    if root is not None:
        return Path(root)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else None


def _find_idx_files(folder: Path) -> Path | None:
    """A folder holding the four Fashion-MNIST IDX files (plain or gzipped), in either of two layouts."""
    for candidate in (folder, folder / "FashionMNIST" / "raw"):
        if all((candidate / f).exists() or (candidate / f"{f}.gz").exists() for f in _FMNIST_FILES):
            return candidate
    return None


def _source_id(source: Path) -> str:
    """A short hash of where the IDX files are and which versions they are (size and modification time), so
    that another folder, or a changed file, is staged afresh instead of reusing an earlier copy."""
    digest = hashlib.sha256(str(source.resolve()).encode())
    for name in _FMNIST_FILES:
        for candidate in (source / name, source / f"{name}.gz"):
            if candidate.exists():
                info = candidate.stat()
                digest.update(f"{candidate.name}:{info.st_size}:{info.st_mtime_ns}".encode())
                break
    return digest.hexdigest()[:16]


def _stage_as_torchvision(source: Path) -> Path:
    """Copy (and un-gzip) IDX files into torchvision's layout under the cache, atomically; return the root.

    The staging folder is keyed by the source (:func:`_source_id`): pointing ``$MCAR_DATA_DIR`` at another
    folder changes the data, never silently returns the first folder's images.
    """
    root = cache_root() / "data" / f"fashion-mnist-{_source_id(source)}"
    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).exists() for f in _FMNIST_FILES):
        return root
    raw.mkdir(parents=True, exist_ok=True)
    for name in _FMNIST_FILES:
        plain, packed = source / name, source / f"{name}.gz"
        with tempfile.NamedTemporaryFile(dir=raw, delete=False) as tmp:
            if plain.exists():
                with open(plain, "rb") as src:
                    shutil.copyfileobj(src, tmp)
            else:
                with gzip.open(packed, "rb") as src:
                    shutil.copyfileobj(src, tmp)
        os.replace(tmp.name, raw / name)
    return root


def _to_float_images(images: Tensor) -> Tensor:
    """uint8 N×H×W or N×H×W×C → float N×C×H×W in [0, 1]."""
    if images.ndim == 3:
        images = images.unsqueeze(-1)
    return images.permute(0, 3, 1, 2).contiguous().float().div_(255.0)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None,
                       *, download: bool = True) -> LabeledImages:
    """Fashion-MNIST as [0, 1] tensors (N×1×28×28).

    Looked for, in this order: an explicit directory (``root`` or ``$MCAR_DATA_DIR``) holding the four IDX
    files; the files of Debian's ``dataset-fashion-mnist`` package; torchvision's download into the cache.
    """
    from torchvision.datasets import FashionMNIST

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    tried: list[str] = []
    explicit = _explicit_dir(root)
    sources = [("explicit directory", explicit)] if explicit is not None else []
    sources.append(("Debian package dataset-fashion-mnist", DEBIAN_FASHION_MNIST))
    for label, folder in sources:
        found = _find_idx_files(folder) if folder.exists() else None
        if found is None:
            tried.append(f"{label}: no Fashion-MNIST IDX files in {folder}")
            continue
        ds = FashionMNIST(str(_stage_as_torchvision(found)), train=split == "train", download=False)
        return LabeledImages(_to_float_images(ds.data), ds.targets.long())
    if download:
        try:
            ds = FashionMNIST(str(cache_root() / "data"), train=split == "train", download=True)
            return LabeledImages(_to_float_images(ds.data), ds.targets.long())
        except Exception as err:  # network errors come in many types
            tried.append(f"torchvision download: failed ({type(err).__name__}: {err})")
    else:
        tried.append("torchvision download: not attempted (download=False)")
    raise DatasetNotFoundError(
        "Fashion-MNIST was not found. Tried:\n  - " + "\n  - ".join(tried) + "\n"
        "Fix it in one of three ways: (1) put train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        f"t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] in a folder and pass root=... or set "
        f"${DATA_DIR_ENV}; (2) on Debian/Ubuntu run `apt-get install dataset-fashion-mnist`; "
        "(3) allow network access so torchvision can download it."
    )


def load_cifar10(split: str = "train", root: str | os.PathLike | None = None, *,
                 download: bool = False, verify_checksums: bool = True) -> LabeledImages:
    """CIFAR-10 as [0, 1] tensors (N×3×32×32), read by torchvision from ``root/cifar-10-batches-py``.

    ``verify_checksums=False`` skips torchvision's MD5 check (only for hand-made test files).
    """
    from torchvision.datasets import CIFAR10

    folder = _dataset_root(root)
    cls = CIFAR10 if verify_checksums else _without_md5(CIFAR10)
    try:
        ds = cls(str(folder), train=split == "train", download=download)
    except (RuntimeError, OSError) as err:  # missing or corrupt files; no network for the download
        if (folder / "cifar-10-batches-py").is_dir():
            raise DatasetNotFoundError(_failed_check("CIFAR-10", folder / "cifar-10-batches-py", err)) from err
        raise DatasetNotFoundError(
            f"CIFAR-10 is not under {folder} and could not be downloaded ({type(err).__name__}: {err}); on a machine "
            f"with network access run torchvision.datasets.CIFAR10('{folder}', download=True), or put the python "
            f"version (cifar-10-batches-py) in a folder and set ${DATA_DIR_ENV} to it."
        ) from err
    return LabeledImages(_to_float_images(torch.from_numpy(ds.data)), torch.tensor(ds.targets, dtype=torch.long))


def load_svhn(split: str = "train", root: str | os.PathLike | None = None, *,
              download: bool = False, verify_checksums: bool = True) -> LabeledImages:
    """SVHN (cropped digits) as [0, 1] tensors (N×3×32×32), read by torchvision from ``root/{split}_32x32.mat``."""
    from torchvision.datasets import SVHN

    folder = _dataset_root(root)
    cls = SVHN if verify_checksums else _without_md5(SVHN)
    try:
        ds = cls(str(folder), split=split, download=download)
    except (RuntimeError, OSError) as err:  # missing or corrupt files; no network for the download
        if (folder / f"{split}_32x32.mat").is_file():
            raise DatasetNotFoundError(_failed_check(f"SVHN ({split})", folder / f"{split}_32x32.mat", err)) from err
        raise DatasetNotFoundError(
            f"SVHN ({split}) is not under {folder} and could not be downloaded ({type(err).__name__}: {err}); on a "
            f"machine with network access run torchvision.datasets.SVHN('{folder}', split='{split}', download=True), "
            f"or put {split}_32x32.mat in a folder and set ${DATA_DIR_ENV} to it."
        ) from err
    images = torch.from_numpy(ds.data).permute(0, 2, 3, 1)  # torchvision keeps SVHN as N×C×H×W
    return LabeledImages(_to_float_images(images), torch.from_numpy(ds.labels).long())


def _failed_check(name: str, where: Path, err: Exception) -> str:
    """The error for files that are there but that torchvision will not read (a failed MD5 check)."""
    return (f"{name}: the files at {where} fail torchvision's MD5 check and could not be downloaded again "
            f"({type(err).__name__}: {err}); if they are hand-made test files (scripts/make_synthetic_data.py) set "
            f"${VERIFY_ENV}=0, otherwise delete them and download the data set again.")


def _dataset_root(root: str | os.PathLike | None) -> Path:
    explicit = _explicit_dir(root)
    return explicit if explicit is not None else cache_root() / "data"


def _without_md5(cls: type) -> type:
    """A subclass of a torchvision data set whose file checks ignore MD5 sums (for hand-made test files).

    torchvision's ``check_integrity(path, md5=None)`` only checks that the file exists, so clearing the
    stored sums keeps every other part of torchvision's reader unchanged.
    """
    overrides: dict = {}
    if hasattr(cls, "train_list"):
        overrides["train_list"] = [[name, None] for name, _ in cls.train_list]
        overrides["test_list"] = [[name, None] for name, _ in cls.test_list]
        overrides["meta"] = {**cls.meta, "md5": None}
    if hasattr(cls, "split_list"):
        overrides["split_list"] = {k: [url, name, None] for k, (url, name, _) in cls.split_list.items()}
    return type(f"Unverified{cls.__name__}", (cls,), overrides)


def pad_to(images: LabeledImages, size: int) -> LabeledImages:
    """Images zero-padded symmetrically to ``size``×``size`` (Fashion-MNIST's 28×28 to the 32×32 the paper's
    architectures expect; black borders are what the images already have)."""
    _, height, width = images.shape
    if height > size or width > size:
        raise ValueError(f"cannot pad {height}×{width} images to {size}×{size}")
    top, left = (size - height) // 2, (size - width) // 2
    padded = torch.nn.functional.pad(images.x, (left, size - width - left, top, size - height - top))
    return LabeledImages(padded, images.y)


def load(name: str, split: str = "train", root: str | os.PathLike | None = None) -> LabeledImages:
    """Load one of :data:`DATASETS` by name.

    CIFAR-10 and SVHN are downloaded by torchvision when missing (on a machine with network access), and their
    MD5 sums are checked unless ``$MCAR_VERIFY_CHECKSUMS`` is ``0`` (hand-made test files). ``fashion_mnist32``
    is Fashion-MNIST padded to 32×32.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {DATASETS}")
    if name == "fashion_mnist":
        return load_fashion_mnist(split, root)
    if name == "fashion_mnist32":
        return pad_to(load_fashion_mnist(split, root), 32)
    verify = os.environ.get(VERIFY_ENV, "1") != "0"
    reader = load_cifar10 if name == "cifar10" else load_svhn
    return reader(split, root, download=True, verify_checksums=verify)


# ------------------------------------------------------------------------------------------------ splits

@dataclass(frozen=True)
class Splits:
    """Three disjoint data sets: the attacker's ``train``, the defender's ``bonafide`` pool, a held-out ``test``."""

    train: LabeledImages
    bonafide: LabeledImages
    test: LabeledImages
    dataset: str
    seed: int

    def describe(self) -> str:
        return (f"{self.dataset}: train {len(self.train)}, bonafide pool {len(self.bonafide)}, "
                f"test {len(self.test)} (seed {self.seed})")


def split(train_pool: LabeledImages, test_pool: LabeledImages, *, n_train: int, n_bonafide: int, n_test: int,
          seed: int, dataset: str = "custom") -> Splits:
    """Seeded, disjoint splits: train and bonafide from ``train_pool``, test from ``test_pool``.

    The same seed always gives the same indices; train and bonafide never share an image, and the test set
    comes from a different file, so the defender never sees test images.
    """
    if n_train + n_bonafide > len(train_pool):
        raise ValueError(f"n_train + n_bonafide = {n_train + n_bonafide} exceeds the {len(train_pool)} "
                         "training images available; lower the profile's sizes")
    if n_test > len(test_pool):
        raise ValueError(f"n_test = {n_test} exceeds the {len(test_pool)} test images available")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_pool), generator=gen)
    test_order = torch.randperm(len(test_pool), generator=gen)
    return Splits(
        train=train_pool.subset(order[:n_train]),
        bonafide=train_pool.subset(order[n_train:n_train + n_bonafide]),
        test=test_pool.subset(test_order[:n_test]),
        dataset=dataset,
        seed=seed,
    )


def load_splits(dataset: str, *, n_train: int, n_bonafide: int, n_test: int, seed: int,
                root: str | os.PathLike | None = None) -> Splits:
    """Load ``dataset`` and split it with :func:`split`."""
    return split(load(dataset, "train", root), load(dataset, "test", root), n_train=n_train,
                 n_bonafide=n_bonafide, n_test=n_test, seed=seed, dataset=dataset)


def take(data: LabeledImages, n: int, *, seed: int) -> LabeledImages:
    """A seeded random subset of ``n`` samples (e.g. a bonafide set of size N from the pool)."""
    if n > len(data):
        raise ValueError(f"cannot take {n} samples from a data set of {len(data)}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[:n])


def folds(data: LabeledImages, k: int, *, seed: int) -> list[tuple[LabeledImages, LabeledImages]]:
    """``k`` seeded folds for cross-validation: ``(the other folds, this fold)`` for each fold, every sample
    held out exactly once; fold sizes differ by at most one."""
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"cross-validation needs k >= 2 folds, got {k!r}")
    if k > len(data):
        raise ValueError(f"cannot cut {len(data)} samples into {k} folds")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    parts = torch.tensor_split(order, k)
    return [(data.subset(torch.cat([p for j, p in enumerate(parts) if j != i])), data.subset(held))
            for i, held in enumerate(parts)]


def split_off(data: LabeledImages, fraction: float, *, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """Split ``data`` into (rest, held_out) with ``round(fraction·N)`` (at least 1) held-out samples.

    Used to keep a slice of the defender's own data for choosing hyper-parameters such as t.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n_out = max(1, round(fraction * len(data)))
    if n_out >= len(data):
        raise ValueError(f"a data set of {len(data)} samples is too small to hold out {n_out}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[n_out:]), data.subset(order[:n_out])
