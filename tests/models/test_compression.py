"""f(ω, γ) for each family, checked against independent computations."""

import pytest
import torch
import torch.nn.functional as F

from models import LevelCompressor, SubspaceSpec, compress, create_model
from models.compression import width


def _zeroed_copy(net, gamma):
    """The full network with every dropped channel's weights zeroed (the masked reference)."""
    full = compress(net, 1.0)
    params = {}
    for layer in net.subspace_layers():
        p = full[layer.key]
        w, b = p.weight.clone(), None if p.bias is None else p.bias.clone()
        if w.dim() == 1:  # norm: zero scale and shift of dropped channels
            k = width(w.shape[0], gamma)
            w[k:], b[k:] = 0, 0
        else:
            if layer.role != "last":
                k = width(w.shape[0], gamma)
                w[k:] = 0
                if b is not None:
                    b[k:] = 0
            if layer.role != "first":
                w[:, width(w.shape[1], gamma) :] = 0
        params[layer.key] = (w, b)
    return params


def test_structured_slicing_equals_zeroed_full_network():
    net = create_model("small_cnn", SubspaceSpec("structured")).eval()
    x = torch.randn(3, 1, 28, 28)
    gamma = 0.5
    level = compress(net, net.spec.calc.alpha(gamma))
    sliced = net(x, level)
    # Independent reference: plain torch ops on full-size tensors with dropped channels zeroed,
    # InstanceNorm over the kept channels only (a zero channel has no statistics of its own).
    ref = _zeroed_copy(net, gamma)
    h = x
    for conv, norm in zip(net.convs, net.norms, strict=True):
        w, _ = ref[conv.key]
        h = F.conv2d(h, w, None, conv.stride, conv.padding)
        k = width(w.shape[0], gamma)
        nw, nb = ref[norm.key]
        h = torch.cat([F.instance_norm(h[:, :k], weight=nw[:k], bias=nb[:k]), h[:, k:]], 1)
        h = F.relu(h)
    w, b = ref[net.fc.key]
    expected = F.linear(h.mean((2, 3)), w, b)
    assert torch.allclose(sliced, expected, atol=1e-5)
    assert level[net.convs[1].key].weight.shape == (32, 16, 3, 3)  # compute really shrinks


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.5, 0.9, 0.975])
def test_topk_prunes_exactly_the_fraction_per_layer(gamma):
    net = create_model("small_cnn", SubspaceSpec("unstructured")).eval()
    for compressor in (compress, LevelCompressor(net, cache=True)):
        level = compressor(net, 1 - gamma) if compressor is compress else compressor(1 - gamma)
        for layer in net.subspace_layers():
            w_full, w = layer.weight, level[layer.key].weight
            if layer.role != "hidden" or w.dim() == 1:
                assert torch.equal(w, w_full)  # input, output and norm layers are untouched
                continue
            n = int(gamma * w.numel())
            assert int((w == 0).sum()) == n
            kept = w_full.abs().flatten().sort().values[n:]
            # the survivors are exactly the largest-magnitude weights
            assert torch.equal(w[w != 0].abs().sort().values, kept)


@pytest.mark.parametrize("bits", [3, 4, 5, 6, 7, 8])
def test_quantized_weights_take_at_most_2_to_the_b_values(bits):
    net = create_model("small_cnn", SubspaceSpec("quantization")).eval()
    level = compress(net, net.spec.calc.alpha(bits))
    assert level.gamma == bits
    hidden = [m for m in net.subspace_layers() if m.role == "hidden" and m.weight.dim() > 1]
    for layer in hidden:
        w = level[layer.key].weight
        assert len(torch.unique(w)) <= 2**bits
        step = (max(w.max(), 0) - min(w.min(), 0)) / (2**bits - 1)
        assert (w - layer.weight).abs().max() <= step / 2 + 1e-6  # rounding error ≤ half a step


def test_line_endpoints():
    net = create_model("small_cnn", SubspaceSpec("unstructured", "line"))
    for layer in net.subspace_layers():
        w1, _ = layer.at(1.0)
        w0, _ = layer.at(0.0)
        assert torch.equal(w1, layer.weight)
        assert torch.allclose(w0, layer.weight_2)
        wm, _ = layer.at(0.25)
        assert torch.allclose(wm, 0.25 * layer.weight + 0.75 * layer.weight_2, atol=1e-6)


def test_structured_line_duplicates_only_norms():
    net = create_model("small_cnn", SubspaceSpec("structured", "line"))
    for layer in net.subspace_layers():
        assert layer.line == (layer.weight.dim() == 1)


def test_level_is_a_snapshot_unchanged_by_later_levels():
    net = create_model("small_cnn", SubspaceSpec("unstructured")).eval()
    levels = LevelCompressor(net, cache=True)
    a = levels(0.5)
    before = {k: p.weight.clone() for k, p in a.params.items()}
    levels(0.1)
    assert all(torch.equal(a[k].weight, before[k]) for k in before)


def test_width_rounds_to_nearest_as_the_reference():
    assert width(64, 0.25) == 16
    assert width(10, 0.25) == 2  # round(2.5): Python's (and the reference's) half-to-even
    assert width(10, 0.27) == 3
    assert width(16, 0.37500025) == 6  # the grid's float noise no longer adds a channel
    assert width(5, 0.01) == 1
