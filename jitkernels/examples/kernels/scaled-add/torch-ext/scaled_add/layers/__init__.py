import torch

from .._ops import ops


class ScaledAdd(torch.nn.Module):
    alpha: float = 1.0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        ops.scaled_add(out, x, y, self.alpha)
        return out
