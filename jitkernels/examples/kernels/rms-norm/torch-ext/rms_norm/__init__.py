"""RMS norm in plain PyTorch: the bundled pure-Python example kernel of `jitkernels demo`."""

from . import layers
from .functional import rms_norm

__all__ = ["rms_norm", "layers"]
