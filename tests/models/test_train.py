"""Training: a short real run learns; resume continues; torchrun trains on two gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from models import checkpoint
from models.data import load_digits
from models.evaluate import accuracy_at_levels
from models.train import TrainConfig, train
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_short_training_improves_accuracy_at_every_level(tmp_path, digits):
    from models import SubspaceSpec, create_model

    torch.manual_seed(0)
    untrained = create_model("small_cnn", SubspaceSpec("structured"))
    mean, std = digits.normalisation()
    before = accuracy_at_levels(untrained, digits.test, [0.0, 1.0], mean, std)
    cfg = TrainConfig(epochs=3, max_train=1600, batch_size=50, out=str(tmp_path / "m.safetensors"))
    net, meta, _ = checkpoint.load(train(cfg, digits, progress=False))
    after = accuracy_at_levels(net, digits.test, [0.0, 1.0], meta.mean, meta.std)
    for b, a in zip(before, after, strict=True):
        assert b["accuracy"] < 0.3 and a["accuracy"] > b["accuracy"] + 0.2, (b, a)
    assert after[-1]["accuracy"] > 0.75  # full width learns fastest (0.796 at seed 0)
    assert [r["alpha"] for r in meta.accuracy] == net.spec.calc.grid()
    assert meta.training["epochs"] == 3


@pytest.mark.parametrize("family", ["unstructured", "quantization"])
def test_other_families_train_as_line_subspaces(tmp_path, digits, family):
    cfg = TrainConfig(
        family=family,
        kind="line",
        epochs=3,
        max_train=1280,
        batch_size=32,
        act_quant_start=0.5,
        out=str(tmp_path / "m.safetensors"),
    )
    net, meta, _ = checkpoint.load(train(cfg, digits, progress=False))
    assert meta.kind == "line" and max(r["accuracy"] for r in meta.accuracy) > 0.3
    if family == "quantization":
        assert bool(net.act_quant_enabled)  # activation ranges observed, then switched on
        ranges = [
            m.act_range for m in net.subspace_layers() if getattr(m, "act_range", None) is not None
        ]
        assert ranges and all(r[2] == 1 and r[1] > r[0] for r in ranges)


def test_resume_continues_from_saved_state(tmp_path, digits):
    out = str(tmp_path / "m.safetensors")
    base = dict(epochs=2, max_train=300, batch_size=100, out=out)
    train(TrainConfig(**base), digits, progress=False)
    full = checkpoint.load(out)[0].state_dict()
    state = torch.load(tmp_path / "m.state.pt", weights_only=True)
    assert state["epoch"] == 2
    # Resuming a finished run trains nothing more: same weights.
    train(TrainConfig(**base, resume=True), digits, progress=False)
    again = checkpoint.load(out)[0].state_dict()
    assert all(torch.equal(full[k], again[k]) for k in full)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="architecture"):
        TrainConfig(arch="resnet1000")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    r = subprocess.run(
        [sys.executable, "-m", "server.cli", "train", "--epochs", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "epochs" in r.stderr


@pytest.mark.slow
def test_torchrun_two_gloo_processes(tmp_path):
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29581",
        "-m",
        "server.cli",
        "train",
        "--epochs",
        "2",
        "--max-train",
        "1024",
        "--batch-size",
        "32",
        "--no-progress",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _, meta, _ = checkpoint.load(out)
    assert meta.training["world_size"] == 2
    assert max(x["accuracy"] for x in meta.accuracy) > 0.2  # chance is 0.1


def test_eval_cli_matches_the_stored_accuracy(tmp_path):
    png = tmp_path / "acc.png"
    r = subprocess.run(
        [sys.executable, "-m", "server.cli", "eval", "--json", "--plot", str(png)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    _, meta, _ = checkpoint.load()
    assert [round(x["accuracy"], 4) for x in rows] == [
        round(x["accuracy"], 4) for x in meta.accuracy
    ]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("done", [0.0, 0.2, 0.4, 0.79])
def test_unstructured_warmup_prunes_a_growing_fraction(done):
    """Before the warm-up ends a step prunes γ(α)·done/warm-up of each hidden layer's weights."""
    from models import SubspaceSpec, create_model
    from models.compression import compress
    from models.families import Schedule

    spec = SubspaceSpec("unstructured")
    net = create_model("small_cnn", spec)
    alpha = 0.1  # γ(α) = 0.9
    gamma = spec.handler.warmup_gamma(spec.calc, alpha, Schedule(done, prune_warmup=0.8))
    assert gamma == pytest.approx(0.9 * done / 0.8)
    level = compress(net, alpha, gamma)
    conv = net.convs[1]
    zeros = int((level[conv.key].weight == 0).sum())
    assert zeros == int(gamma * conv.weight.numel())
    assert level.alpha == alpha and level.gamma == gamma


def test_warmup_ends_and_leaves_other_families_alone():
    from models import SubspaceSpec
    from models.families import Schedule

    def warmup(family, alpha, done):
        spec = SubspaceSpec(family)
        return spec.handler.warmup_gamma(spec.calc, alpha, Schedule(done, prune_warmup=0.8))

    assert warmup("unstructured", 0.1, 0.8) is None
    assert warmup("structured", 0.1, 0.1) is None
    assert warmup("quantization", 0.5, 0.1) is None
