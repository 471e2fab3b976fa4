"""The paper's baselines: BatchNorm sliced without recalibration, training at fixed levels."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from models import SubspaceSpec, checkpoint, create_model
from models.compression import LevelCompressor
from models.data import load_digits
from models.layers import LayerParams, SBatchNorm
from models.train import TrainConfig, train, training_draws


def test_batchnorm_updates_only_the_kept_channels_statistics():
    torch.manual_seed(0)
    bn = SBatchNorm(8)
    bn.key = "bn"
    k = 3
    w, b = torch.rand(k) + 0.5, torch.randn(k)
    level = {"bn": LayerParams(w, b, groups=k)}
    x = torch.randn(4, k, 5, 5) * 3 + 1
    bn.train()
    y = bn(x, level)  # type: ignore[arg-type]
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
    torch.testing.assert_close(bn.running_mean[:k], 0.1 * mean)
    torch.testing.assert_close(bn.running_var[:k], 0.9 + 0.1 * var)
    assert torch.equal(bn.running_mean[k:], torch.zeros(8 - k))
    assert torch.equal(bn.running_var[k:], torch.ones(8 - k))
    batch_norm = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(
        x.var((0, 2, 3), unbiased=False).view(1, -1, 1, 1) + 1e-5
    )
    torch.testing.assert_close(y, batch_norm * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1))
    bn.eval()  # inference: the stored (sliced) statistics, whatever width trained them
    rm, rv = bn.running_mean[:k].view(1, -1, 1, 1), bn.running_var[:k].view(1, -1, 1, 1)
    expected = (x - rm) / torch.sqrt(rv + 1e-5) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    torch.testing.assert_close(bn(x, level), expected)  # type: ignore[arg-type]


def test_baseline_levels_replace_the_subspace_sampling():
    spec = SubspaceSpec("structured", norm="batch")
    cfg = TrainConfig(norm="batch", train_gammas=(0.25, 0.5, 0.75, 1.0))
    draws = training_draws(spec, cfg, random.Random(0), 0.5)
    assert [spec.calc.gamma(d.alpha) for d in draws] == [1.0, 0.75, 0.5, 0.25]
    sandwich = training_draws(spec, TrainConfig(norm="batch"), random.Random(0), 0.5)
    assert [d.alpha for d in sandwich[:2]] == [1.0, 0.0] and len(sandwich) == 4  # sandwich rule
    with pytest.raises(ValueError, match="outside"):
        TrainConfig(family="quantization", train_gammas=(2.0,))
    with pytest.raises(ValueError, match="point-subspace"):
        SubspaceSpec("structured", "line", norm="batch")
    with pytest.raises(ValueError, match="norm"):
        TrainConfig(norm="layer")


@pytest.fixture(scope="module")
def half_width(tmp_path_factory):
    """A BatchNorm network trained at width 0.5 only, and its initial weights."""
    out = tmp_path_factory.mktemp("baseline") / "w05.safetensors"
    cfg = TrainConfig(norm="batch", train_gammas=(0.5,), epochs=1, max_train=256, out=str(out))
    torch.manual_seed(cfg.seed)  # train() seeds the same way, so this is its initialisation
    init = create_model("small_cnn", SubspaceSpec("structured", norm="batch")).state_dict()
    train(cfg, load_digits(), progress=False)
    return checkpoint.load(out), init


def test_a_single_width_network_trains_only_its_channels(half_width):
    (net, meta, _), init = half_width
    assert meta.norm == "batch" and net.spec.norm == "batch"
    assert isinstance(net.norms[1], SBatchNorm)
    w, w0 = net.convs[2].weight, init["convs.2.weight"]  # 64 → 64 channels; 32 kept
    assert not torch.allclose(w[:32, :32], w0[:32, :32])
    # The pruned channels get no gradient: only weight decay touches them, which scales.
    cos = F.cosine_similarity(w[32:].flatten(), w0[32:].flatten(), dim=0)
    assert cos > 1 - 1e-5
    rm = net.norms[2].running_mean
    assert rm[:32].abs().sum() > 0 and torch.equal(rm[32:], torch.zeros(32))


def test_baseline_checkpoint_keeps_its_statistics_and_serves(half_width, tmp_path):
    (net, meta, _), _ = half_width
    path = tmp_path / "again.safetensors"
    checkpoint.save(path, net, meta)
    again, meta2, _ = checkpoint.load(path)
    assert meta2.spec == meta.spec
    for k, v in net.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    level = LevelCompressor(again, cache=True)(again.spec.calc.alpha(0.5))
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(again(x, level), net(x, level))
