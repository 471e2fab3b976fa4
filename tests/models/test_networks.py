"""Every registered architecture × family × subspace kind runs forward and backward."""

import pytest
import torch

from models import ARCHITECTURES, FAMILIES, KINDS, SubspaceSpec, compress, create_model

CASES = [(a, f, k) for a in ARCHITECTURES for f in FAMILIES for k in KINDS]


@pytest.mark.parametrize(("arch", "family", "kind"), CASES, ids=["-".join(c) for c in CASES])
def test_forward_backward_at_three_levels(arch, family, kind):
    net = create_model(arch, SubspaceSpec(family, kind), num_classes=7)
    c, h, w = ARCHITECTURES[arch].input_size
    x = torch.randn(2, c, min(h, 64), min(w, 64))  # smaller images keep the suite fast
    grid = net.spec.calc.grid(3)
    for alpha in (grid[0], grid[len(grid) // 2], grid[-1]):
        net.zero_grad()
        out = net(x, compress(net, alpha))
        assert out.shape == (2, 7) and torch.isfinite(out).all()
        out.square().mean().backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        # the classifier always receives gradient, whatever the level
        assert net.fc.weight.grad is not None and net.fc.weight.grad.abs().sum() > 0
