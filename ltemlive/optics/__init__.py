"""Differentiable LTEM optics (PyTorch): microscope parameters, transfer function, image formation."""

from ltemlive.optics.params import MicroscopeParams

__all__ = ["MicroscopeParams"]
