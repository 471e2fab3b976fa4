"""Checkpoints round-trip, and every broken file is refused with a message naming the problem."""

import json

import pytest
import torch
from safetensors.torch import save_file

from models import SubspaceSpec, compress, create_model
from models import checkpoint as ckpt


@pytest.fixture
def saved(tmp_path):
    net = create_model("small_cnn", SubspaceSpec("unstructured", "line"))
    meta = ckpt.Metadata(
        arch="small_cnn",
        family="unstructured",
        kind="line",
        calculator=net.spec.calc.to_dict(),
        num_classes=10,
        class_names=list("0123456789"),
        input_size=[1, 28, 28],
        mean=[0.13],
        std=[0.31],
        dataset="mnist-5000",
        accuracy=[{"alpha": 1.0, "gamma": 0.0, "accuracy": 0.5}],
    )
    path = tmp_path / "m.safetensors"
    ckpt.save(path, net, meta)
    return net, meta, path


def test_round_trip(saved):
    net, meta, path = saved
    loaded, meta2, digest = ckpt.load(path)
    assert meta2 == meta and len(digest) == 64
    x = torch.randn(2, 1, 28, 28)
    net.eval()
    for alpha in (0.3, 1.0):
        assert torch.equal(net(x, compress(net, alpha)), loaded(x, compress(loaded, alpha)))


def test_missing(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load(tmp_path / "nope.safetensors")


def test_truncated(saved, tmp_path):
    _, _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.load(bad)


def test_flipped_tensor_byte(saved, tmp_path):
    _, _, path = saved
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    bad = tmp_path / "c.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        ckpt.load(bad)


def test_garbage_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ckpt.CheckpointError, match="not a readable"):
        ckpt.load(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ckpt.CheckpointError, match="not an lcs-serve"):
        ckpt.load(plain)


def test_other_architecture(saved, tmp_path):
    net, meta, _path = saved
    meta.arch = "cpreresnet20"
    header = {"format": ckpt.FORMAT, "lcs": json.dumps(meta.__dict__)}
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    header["sha256"] = ckpt.content_hash(tensors)
    bad = tmp_path / "other.safetensors"
    save_file(tensors, str(bad), metadata=header)
    with pytest.raises(ckpt.CheckpointError, match="does not fit cpreresnet20"):
        ckpt.load(bad)


def test_default_model_is_bundled_and_meets_its_targets():
    _net, meta, _ = ckpt.load()
    assert (meta.arch, meta.family, meta.kind) == ("small_cnn", "structured", "point")
    acc = {round(r["gamma"], 3): r["accuracy"] for r in meta.accuracy}
    assert acc[1.0] >= 0.97 and acc[0.25] >= 0.94
