"""out = x + alpha * y, as a native kernel (a JitKernels test fixture in kernels-community's relu layout)."""

from typing import Optional

import torch

from ._ops import ops

from . import layers


def scaled_add(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    if out is None:
        out = torch.empty_like(x)
    ops.scaled_add(out, x, y, alpha)
    return out


__all__ = ["scaled_add", "layers"]
