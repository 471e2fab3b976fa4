"""Every grid α of every architecture compresses to exactly the level γ it stands for."""

from fractions import Fraction

import pytest
import torch

from models import ARCHITECTURES, LevelCompressor, SubspaceSpec, create_model
from models.layers import SNorm


def _meta_net(arch: str, family: str):
    # On the meta device: shapes only, so even VGG19 builds in milliseconds.
    with torch.device("meta"):
        net = create_model(arch, SubspaceSpec(family)).eval().requires_grad_(False)
    net.act_quant_enabled = torch.zeros((), dtype=torch.bool)  # read as a Python bool
    return net


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_structured_grid_keeps_exactly_gamma_c_channels(arch):
    net = _meta_net(arch, "structured")
    levels = LevelCompressor(net, cache=True)
    grid = net.spec.calc.grid()
    assert len(grid) == 7
    for i, alpha in enumerate(grid):
        # Independently of the calculator: the grid's widths are 2/8, 3/8, …, 8/8 (§3.4).
        gamma = Fraction(2 + i, 8)
        level = levels(alpha)
        for layer in net.subspace_layers():
            full = layer.weight.shape
            got = level[layer.key].weight.shape
            if isinstance(layer, SNorm):
                assert got[0] == full[0] * gamma, (layer.key, alpha)
                continue
            out_c = full[0] if layer.role == "last" else full[0] * gamma
            in_c = full[1] if layer.role == "first" else full[1] * gamma
            assert (got[0], got[1]) == (out_c, in_c), (layer.key, alpha, got)


def test_unstructured_grid_prunes_floor_gamma_n_weights():
    net = create_model("small_cnn", SubspaceSpec("unstructured")).eval().requires_grad_(False)
    levels = LevelCompressor(net, cache=True)
    for alpha in net.spec.calc.grid():
        gamma = 1 - Fraction(str(alpha))  # the grid's α are exact decimals
        level = levels(alpha)
        for layer in net.subspace_layers():
            if layer.role != "hidden" or isinstance(layer, SNorm):
                continue
            w = level[layer.key].weight
            pruned = w.numel() - int(torch.count_nonzero(w))
            assert pruned == int(gamma * w.numel()), (layer.key, alpha)
