"""Tiny synthetic CIFAR-10 and SVHN files in torchvision's on-disk formats, for CI and tests.

    python scripts/make_synthetic_data.py OUT_DIR [--n-train 256] [--n-test 64] [--seed 0]

writes

* ``OUT_DIR/cifar-10-batches-py/``: ``data_batch_1`` ... ``data_batch_5`` (the training images, split as evenly
  as possible), ``test_batch`` and ``batches.meta``, pickles as in the python version of CIFAR-10: each batch
  a dict with ``data`` (N×3072 uint8, each row 1024 red, then green, then blue values, row-major),
  ``labels``, ``batch_label`` and ``filenames``; the meta file with ``label_names``;
* ``OUT_DIR/train_32x32.mat`` and ``OUT_DIR/test_32x32.mat``: SVHN's cropped digits as MATLAB files with ``X``
  (32×32×3×N uint8) and ``y`` (N×1, digit 0 stored as 10, as in the real files).

Images are uniform random bytes, labels balanced over the ten classes (a seeded shuffle of 0..9 repeated).
The files have other MD5 sums than the real ones: read them with ``mcar_lib.data.load_cifar10(...,
verify_checksums=False)`` and ``load_svhn(..., verify_checksums=False)``. ``tests/test_data.py`` uses the same
writers (:func:`write_cifar10`, :func:`write_svhn`), so the script and the tests cannot drift apart.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # mcar_lib from this checkout, also when it is not installed

from mcar_lib.data import CLASS_NAMES  # noqa: E402

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))


def balanced_labels(n: int, rng: np.random.Generator, classes: int = 10) -> np.ndarray:
    """``n`` labels, each class ``n // classes`` or one more times, in a seeded random order."""
    return rng.permutation(np.arange(n) % classes)


def _cifar_batch(labels: np.ndarray, rng: np.random.Generator, name: str) -> dict:
    pixels = rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
    return {"batch_label": name, "labels": labels.tolist(), "data": pixels,
            "filenames": [f"synthetic_{name.replace(' ', '_')}_{i:05d}.png" for i in range(len(labels))]}


def write_cifar10(root: str | Path, n_train: int = 256, n_test: int = 64,
                  seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write CIFAR-10's python-version files under ``root/cifar-10-batches-py``; return each file's
    ``(pixels, labels)`` (pixels N×3072 uint8 as stored)."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive, got {n_train} and {n_test}")
    folder = Path(root) / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    train_labels = np.split(balanced_labels(n_train, rng), np.cumsum(sizes)[:-1])  # balanced over all five
    written: dict[str, tuple[np.ndarray, list[int]]] = {}
    for index, (name, labels) in enumerate(zip(CIFAR10_TRAIN_FILES + ("test_batch",),
                                               train_labels + [balanced_labels(n_test, rng)])):
        label = f"training batch {index + 1} of 5" if name != "test_batch" else "testing batch 1 of 1"
        batch = _cifar_batch(labels, rng, label)
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
        written[name] = (batch["data"], batch["labels"])
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": list(CLASS_NAMES["cifar10"]), "num_cases_per_batch": max(sizes), "num_vis": 3072},
                    handle)
    return written


def write_svhn(root: str | Path, n_train: int = 256, n_test: int = 64,
               seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``root/train_32x32.mat`` and ``root/test_32x32.mat``; return each split's ``(X, digits)``: X as stored
    (32×32×3×N uint8), digits 0..9 (stored with 0 as 10)."""
    from scipy.io import savemat

    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive, got {n_train} and {n_test}")
    Path(root).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)  # not the CIFAR-10 images
    written: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        digits = balanced_labels(n, rng)
        stored = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        savemat(Path(root) / f"{split}_32x32.mat", {"X": images, "y": stored})
        written[split] = (images, digits)
    return written


def write_all(root: str | Path, n_train: int = 256, n_test: int = 64, seed: int = 0) -> None:
    write_cifar10(root, n_train, n_test, seed)
    write_svhn(root, n_train, n_test, seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to write into (MCAR_DATA_DIR for the chapters)")
    parser.add_argument("--n-train", type=int, default=256, help="training images per data set (default 256)")
    parser.add_argument("--n-test", type=int, default=64, help="test images per data set (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true",
                        help="read the files back with mcar_lib.data (without MD5 checks) and print their sizes")
    args = parser.parse_args(argv)
    write_all(args.out_dir, args.n_train, args.n_test, args.seed)
    print(f"wrote synthetic CIFAR-10 and SVHN ({args.n_train} training and {args.n_test} test images each) "
          f"to {args.out_dir}")
    if args.check:
        from mcar_lib import data

        for name, load in (("cifar10", data.load_cifar10), ("svhn", data.load_svhn)):
            sizes = {split: len(load(split, root=args.out_dir, verify_checksums=False)) for split in ("train", "test")}
            print(f"  {name}: {sizes}")


if __name__ == "__main__":
    main()
