import torch

from .functional import rms_norm


class RMSNorm(torch.nn.Module):
    weight: torch.Tensor
    variance_epsilon: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)
