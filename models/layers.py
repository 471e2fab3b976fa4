"""Subspace layers: one set of weights ω (LCS+P) or two endpoints ω1, ω2 (LCS+L)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from models.compression import Level

# Where a layer sits decides what compression may touch: the input layer keeps the image's
# channels and the classifier keeps every class (paper §3.4); neither is pruned nor quantized.
ROLES = ("first", "hidden", "last")


class LayerParams(NamedTuple):
    """One layer's tensors at one level: f(ω*(α), γ(α)) restricted to this layer."""

    weight: Tensor
    bias: Tensor | None
    groups: int = 1  # GroupNorm groups (norm layers only)
    act_bits: int | None = None  # quantize this layer's input to this many bits


class SubspaceLayer(nn.Module):
    """Holds ω, or ω1 (`weight`, the α = 1 end) and ω2 (`weight_2`, the α = 0 end)."""

    key: str = ""  # the layer's module path; set by SubspaceNet, used to look up LayerParams

    def __init__(self, weight: Tensor, bias: Tensor | None, line: bool, role: str) -> None:
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"unknown layer role {role!r}")
        self.role = role
        self.line = line
        if line:
            weight, weight_2 = self._line_endpoints(weight)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None
        if line:
            self.weight_2 = nn.Parameter(weight_2)
            self.bias_2 = nn.Parameter(bias.clone()) if bias is not None else None

    def _line_endpoints(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """(ω1 at α = 1, ω2 at α = 0), independent draws (§3.1), as the reference initialises a
        line: Kaiming-normal fan-in for the α = 0 end (its first endpoint), then the α = 1 end
        re-initialised with N(0, 2/(k²·C_out)) (fan-out), except the classifier, which keeps
        the fan-in draw for both ends."""
        at_zero, at_one = torch.empty_like(weight), torch.empty_like(weight)
        nn.init.kaiming_normal_(at_zero, mode="fan_in", nonlinearity="relu")
        if self.role == "last":
            nn.init.kaiming_normal_(at_one, mode="fan_in", nonlinearity="relu")
        else:
            nn.init.kaiming_normal_(at_one, mode="fan_out", nonlinearity="relu")
        return at_one, at_zero

    def at(self, alpha: float) -> tuple[Tensor, Tensor | None]:
        """ω*(α) = α·ω1 + (1 − α)·ω2 for a line; ω for a point."""
        if not self.line:
            return self.weight, self.bias
        return torch.lerp(self.weight_2, self.weight, alpha), self.at_bias(alpha)

    def at_bias(self, alpha: float) -> Tensor | None:
        """The bias of ω*(α): a line's lerp of its ends (None unless both have one)."""
        if not self.line:
            return self.bias
        if self.bias is None or self.bias_2 is None:
            return None
        return torch.lerp(self.bias_2, self.bias, alpha)


class SConv2d(SubspaceLayer):
    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        *,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
        line: bool = False,
        role: str = "hidden",
        quantizable: bool = False,
    ) -> None:
        conv = nn.Conv2d(
            cin, cout, k, stride=stride, padding=k // 2 if padding is None else padding, bias=bias
        )
        super().__init__(
            conv.weight.data, None if conv.bias is None else conv.bias.data, line, role
        )
        self.stride, self.padding = conv.stride, conv.padding
        # Running (min, max, seen) of this layer's input, for activation quantization (EMA 0.1).
        self.act_range: Tensor | None
        self.register_buffer("act_range", torch.zeros(3) if quantizable else None)

    def forward(self, x: Tensor, level: Level) -> Tensor:  # (B, C, H, W) -> (B, C', H', W')
        p = level[self.key]
        if self.act_range is not None and self.training:
            _observe_(self.act_range, x)
        if p.act_bits is not None and self.act_range is not None:
            x = fake_quantize(x, p.act_bits, self.act_range[0], self.act_range[1])
        return F.conv2d(x, p.weight, p.bias, self.stride, self.padding)


class SLinear(SubspaceLayer):
    def __init__(self, cin: int, cout: int, *, line: bool = False, role: str = "last") -> None:
        lin = nn.Linear(cin, cout)
        super().__init__(lin.weight.data, lin.bias.data, line, role)

    def forward(self, x: Tensor, level: Level) -> Tensor:  # (B, C) -> (B, classes)
        p = level[self.key]
        return F.linear(x, p.weight, p.bias)


NORM_EPS = 1e-5


class SNorm(SubspaceLayer):
    """GroupNorm in place of BatchNorm: no running statistics to corrupt when ω changes (§3.5).

    `groups` is the count at full width; structured compression uses one group per kept channel
    (InstanceNorm), since the channel count changes with γ.
    """

    def __init__(self, channels: int, groups: int, *, line: bool = False) -> None:
        super().__init__(torch.ones(channels), torch.zeros(channels), line, "hidden")
        self.groups = groups

    def _line_endpoints(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        # As the reference: scales 0.5 at the re-initialised (α = 1) end, 1 at the α = 0 end.
        return torch.full_like(weight, 0.5), torch.ones_like(weight)

    def forward(self, x: Tensor, level: Level) -> Tensor:
        p = level[self.key]
        return F.group_norm(x, p.groups, p.weight, p.bias, NORM_EPS)


class SBatchNorm(SNorm):
    """BatchNorm, for the baselines only: its running statistics are what compression corrupts
    and what Network/Universal Slimming must recalibrate (§3.5). Structured compression slices
    them with the channels; nothing recalibrates them."""

    def __init__(self, channels: int, momentum: float = 0.1) -> None:
        super().__init__(channels, 1, line=False)
        self.momentum = momentum
        self.running_mean: Tensor
        self.running_var: Tensor
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor, level: Level) -> Tensor:
        p = level[self.key]
        k = p.weight.shape[0]  # kept channels; slices are views, so training updates the buffers
        return F.batch_norm(
            x,
            self.running_mean[:k],
            self.running_var[:k],
            p.weight,
            p.bias,
            self.training,
            self.momentum,
            1e-5,
        )


@torch.no_grad()
def _observe_(act_range: Tensor, x: Tensor) -> None:
    lo, hi = x.min(), x.max()
    if act_range[2] == 0:
        act_range.copy_(torch.stack([lo, hi, torch.ones_like(lo)]))
    else:
        act_range[0].lerp_(lo, 0.1)
        act_range[1].lerp_(hi, 0.1)


def fake_quantize(x: Tensor, bits: int, lo: Tensor | float, hi: Tensor | float) -> Tensor:
    """Per-tensor asymmetric affine quantization to `bits` bits, straight-through gradient.

    The range is forced to include 0 so that zero (padding, ReLU) stays exact. The result
    takes at most 2**bits distinct values.
    """
    lo_t = torch.clamp(torch.as_tensor(lo, dtype=x.dtype), max=0.0)
    hi_t = torch.clamp(torch.as_tensor(hi, dtype=x.dtype), min=0.0)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = torch.clamp((hi_t - lo_t) / (qmax - qmin), min=1e-8)
    zero_point = torch.round(qmin - lo_t / scale)
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    xq = (q - zero_point) * scale
    # Identity gradient (STE). Written as xq + (x − x̄) rather than x + (xq − x)̄: the latter
    # rounds xq by one ulp in places, so a level took more than 2**bits distinct values.
    return xq.detach() + (x - x.detach())
