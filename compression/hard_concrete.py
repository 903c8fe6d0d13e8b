"""Hard-concrete gates (Louizos et al. 2018, "Learning Sparse Neural Networks through L0 Regularization"), the
masks Sheared-LLaMA prunes with: each gate z in [0, 1] is a stretched, clamped binary-concrete sample, so it is
exactly 0 or 1 with non-zero probability yet differentiable in its log-odds, and P(z != 0) -- what the model's
expected size counts -- has a closed form."""

from __future__ import annotations

import math

import torch

BETA = 2.0 / 3.0  # temperature of the concrete distribution
LOW, HIGH = -0.1, 1.1  # the stretch interval: P(z == 0) and P(z == 1) are both > 0
INIT_LOG_ALPHA = 2.0  # P(z != 0) = 0.93 at the start: pruning begins from (almost) the whole model


class HardConcrete(torch.nn.Module):
    """``n`` independent gates; ``forward()`` samples them (training) or returns their deterministic value."""

    def __init__(self, n: int):
        super().__init__()
        self.log_alpha = torch.nn.Parameter(torch.full((n,), INIT_LOG_ALPHA))

    def forward(self, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.training:
            u = torch.rand(self.log_alpha.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / BETA)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (HIGH - LOW) + LOW).clamp(0.0, 1.0)

    def keep_probability(self) -> torch.Tensor:
        """P(z != 0) per gate: the expected L0 norm's terms."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-LOW / HIGH))
