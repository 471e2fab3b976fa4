"""Each family's gradients, sampling and initialisation against independent computations."""

import math
import random

import numpy as np
import pytest
import torch

from models import SubspaceSpec, compress, create_model
from models.families import Draw, Schedule
from models.layers import SConv2d, SLinear, SNorm, fake_quantize
from models.profile import count_macs
from models.train import TrainConfig, line_regulariser, members_loss, training_draws


def _hidden_convs(net):
    return [m for m in net.subspace_layers() if isinstance(m, SConv2d) and m.role == "hidden"]


def _backward(net, level, seed=0):
    """A loss whose gradient reaches every kept weight: random weights on the logits."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 28, 28, generator=gen)
    for m in net.subspace_layers():
        level[m.key].weight.retain_grad()
    (net(x, level) * torch.randn(4, 10, generator=gen)).sum().backward()


def test_unstructured_pruned_weights_get_exactly_zero_gradient():
    net = create_model("small_cnn", SubspaceSpec("unstructured"))
    level = compress(net, 0.4)  # γ = 0.6 pruned
    _backward(net, level)
    for conv in _hidden_convs(net):
        pruned = level[conv.key].weight.detach() == 0
        assert int(pruned.sum()) == int(0.6 * pruned.numel())
        grad = conv.weight.grad
        assert torch.all(grad[pruned] == 0), conv.key
        assert torch.all(grad[~pruned] != 0), conv.key
        # Kept weights: the gradient of the compressed weight, passed through unchanged.
        torch.testing.assert_close(grad[~pruned], level[conv.key].weight.grad[~pruned])


def test_structured_dropped_channels_get_exactly_zero_gradient():
    net = create_model("small_cnn", SubspaceSpec("structured"))
    level = compress(net, 0.0)  # width 0.25
    _backward(net, level)
    for conv in _hidden_convs(net):
        k_out, k_in = level[conv.key].weight.shape[:2]
        assert (k_out, k_in) == (conv.weight.shape[0] // 4, conv.weight.shape[1] // 4)
        grad = conv.weight.grad
        kept = torch.zeros_like(grad, dtype=torch.bool)
        kept[:k_out, :k_in] = True
        assert torch.all(grad[~kept] == 0), conv.key
        assert torch.all(grad[kept] != 0), conv.key


def test_quantization_straight_through_gradient_reaches_every_weight():
    net = create_model("small_cnn", SubspaceSpec("quantization"))
    level = compress(net, net.spec.calc.alpha(3))
    _backward(net, level)
    for conv in _hidden_convs(net):
        grad = conv.weight.grad
        assert torch.all(grad != 0), conv.key  # nothing is pruned
        torch.testing.assert_close(grad, level[conv.key].weight.grad)  # identity STE


def _numpy_fake_quantize(x, bits, lo, hi):
    """Independent: the nearest of the 2^bits representable values, clipped to the range."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = (hi - lo) / (qmax - qmin)
    zero = np.round(qmin - lo / scale)
    grid = (np.arange(qmin, qmax + 1) - zero) * scale
    return grid[np.abs(x[..., None] - grid).argmin(-1)]


@pytest.mark.parametrize("bits", [3, 5, 8])
def test_activation_fake_quantization_matches_an_independent_formula(bits):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(2, 16, 5, 5, generator=gen) * 2 + 0.5
    conv = SConv2d(16, 8, 3, quantizable=True)
    conv.key = "c"
    conv.act_range.copy_(torch.tensor([-1.5, 2.5, 1.0]))  # a range the input overflows
    params = {"c": compress_like(conv, bits)}
    conv.eval()
    out = conv(x, params)
    xq = torch.from_numpy(_numpy_fake_quantize(x.double().numpy(), bits, -1.5, 2.5)).float()
    expected = torch.nn.functional.conv2d(xq, conv.weight, None, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert len(torch.unique(fake_quantize(x, bits, -1.5, 2.5))) <= 2**bits


def compress_like(conv, bits):
    from models.layers import LayerParams

    return LayerParams(conv.weight, None, act_bits=bits)


def test_cpreresnet20_mac_count_is_table_2s_from_the_layer_shapes():
    # (C_in, C_out, kernel, output side) of every convolution, by hand from the architecture:
    # the stem, then per stage two bottlenecks (1×1, 3×3 with the stride, 1×1 to 4·planes) and
    # the first block's 1×1 downsample; the 1×1 before a strided 3×3 runs at the input's size.
    convs = [(3, 16, 3, 32)]
    for cin, planes, side_in, side in ((16, 16, 32, 32), (64, 32, 32, 16), (128, 64, 16, 8)):
        out = 4 * planes
        convs += [(cin, planes, 1, side_in), (planes, planes, 3, side), (planes, out, 1, side)]
        convs += [(cin, out, 1, side)]
        convs += [(out, planes, 1, side), (planes, planes, 3, side), (planes, out, 1, side)]
    expected = sum(ci * co * k * k * s * s for ci, co, k, s in convs) + 256 * 10
    net = create_model("cpreresnet20", SubspaceSpec("structured")).eval()
    assert count_macs(net, compress(net, 1.0), (3, 32, 32)) == expected
    assert round(expected / 1e6, 2) == 33.74


def test_in_place_distillation_loss_by_hand():
    teacher = torch.tensor([[2.0, 0.0]], requires_grad=True)
    student = torch.tensor([[0.0, 1.0]], requires_grad=True)
    y = torch.tensor([0])
    p1 = math.exp(2) / (math.exp(2) + 1)  # the teacher's softmax
    ce_teacher = -math.log(p1)
    soft = -(p1 * math.log(1 / (1 + math.e)) + (1 - p1) * math.log(math.e / (1 + math.e)))
    hard = -math.log(1 / (1 + math.e))
    loss = members_loss([teacher, student], y, distill=True)
    assert loss.item() == pytest.approx(ce_teacher + soft, abs=1e-6)
    assert members_loss([teacher, student], y, distill=False).item() == pytest.approx(
        ce_teacher + hard, abs=1e-6
    )
    loss.backward()
    # The teacher learns from the labels only: ∂CE/∂z = softmax − one-hot.
    torch.testing.assert_close(teacher.grad, torch.tensor([[p1 - 1, 1 - p1]]))
    # The student is pulled toward the teacher's probabilities: softmax(student) − p.
    s1 = 1 / (1 + math.e)
    torch.testing.assert_close(student.grad, torch.tensor([[s1 - p1, (1 - s1) - (1 - p1)]]))


def test_distillation_adds_a_dense_teacher_for_unstructured():
    spec = SubspaceSpec("unstructured")
    cfg = TrainConfig(family="unstructured", distill=True)
    draws = training_draws(spec, cfg, random.Random(0), 0.9)
    assert draws[0] == Draw(1.0) and spec.calc.gamma(draws[0].alpha) == 0.0
    assert len(draws) == 2 and draws[1].alpha < 1.0
    structured = training_draws(
        SubspaceSpec("structured"), TrainConfig(distill=True), random.Random(0), 0.5
    )
    assert len(structured) == 4 and structured[0] == Draw(1.0)  # already the sandwich's first


# -- the reference's choices (issue 19, departures 2-6) ---------------------------------------


def test_line_endpoints_are_initialised_as_the_reference():
    torch.manual_seed(0)
    conv = SConv2d(256, 64, 1, line=True)  # fan-in 256, fan-out 64
    assert conv.weight_2.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)  # α = 0
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.05)  # α = 1
    fc = SLinear(256, 100, line=True)  # the classifier keeps the fan-in draw at both ends
    for w in (fc.weight, fc.weight_2):
        assert w.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    norm = SNorm(64, 32, line=True)
    assert torch.all(norm.weight == 0.5) and torch.all(norm.weight_2 == 1.0)
    assert torch.equal(conv.at(1.0)[0], conv.weight)  # the re-initialised end is α = 1


def test_unstructured_point_trains_dense_then_uniform():
    spec = SubspaceSpec("unstructured")
    h, rng = spec.handler, random.Random(0)
    assert h.sample(spec.calc, "point", rng, Schedule(0.79)) == [Draw(1.0)]
    alphas = [h.sample(spec.calc, "point", rng, Schedule(0.8))[0].alpha for _ in range(2000)]
    assert all(0.025 <= a < 1.0 for a in alphas)  # no mass at the endpoints
    assert np.mean(alphas) == pytest.approx((0.025 + 1) / 2, abs=0.02)
    assert np.mean([a < 0.5125 for a in alphas]) == pytest.approx(0.5, abs=0.04)


def test_quantization_point_trains_8_bits_then_a_width_per_layer():
    assert TrainConfig().act_quant_start == 0.8
    spec = SubspaceSpec("quantization")
    h, rng = spec.handler, random.Random(0)
    assert not h.activations_quantized(Schedule(0.79))
    assert h.sample(spec.calc, "point", rng, Schedule(0.79)) == [Draw(1.0)]
    net = create_model("small_cnn", spec)
    net.act_quant_enabled.fill_(True)
    seen = set()
    for _ in range(5):
        (draw,) = h.sample(spec.calc, "point", rng, Schedule(0.8))
        level = compress(net, draw.alpha, draw.gamma, draw.per_layer)
        for conv in _hidden_convs(net):
            p = level[conv.key]
            assert 3 <= p.act_bits <= 8
            assert len(torch.unique(p.weight.detach())) <= 2**p.act_bits
            seen.add(p.act_bits)
    assert len(seen) >= 4  # independent widths, not one shared


@pytest.mark.parametrize("family", ["unstructured", "quantization"])
def test_groupnorm_has_32_groups_capped_at_c(family):
    for arch in ("cpreresnet20", "resnet18", "vgg19"):
        with torch.device("meta"):
            net = create_model(arch, SubspaceSpec(family))
        norms = [m for m in net.subspace_layers() if isinstance(m, SNorm)]
        assert norms and all(m.groups == min(32, m.weight.shape[0]) for m in norms), arch


def test_line_beta_applies_to_structured_lcs_l_norm_scales():
    torch.manual_seed(0)
    net = create_model("small_cnn", SubspaceSpec("structured", "line"))
    with torch.no_grad():
        for m in net.subspace_layers():
            if m.line:
                m.weight_2.add_(torch.randn_like(m.weight_2))  # endpoints not parallel
    ends = [(m.weight, m.weight_2) for m in net.subspace_layers() if m.line]
    assert ends and all(isinstance(m, SNorm) for m in net.subspace_layers() if m.line)
    a = np.concatenate([w.detach().numpy().ravel() for w, _ in ends])
    b = np.concatenate([w.detach().numpy().ravel() for _, w in ends])
    cos2 = (a @ b / np.linalg.norm(a) / np.linalg.norm(b)) ** 2
    assert float(line_regulariser(net, 0.5).detach()) == pytest.approx(0.5 * cos2, rel=1e-5)
    assert line_regulariser(net, 0.0) == 0.0
    point = create_model("small_cnn", SubspaceSpec("structured"))
    assert line_regulariser(point, 1.0) == 0.0
