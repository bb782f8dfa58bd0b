"""Automatic-differentiation reconstruction: phase plus the microscope's own parameters."""

from ltemlive.reconstruct.config import FreeGroups, ReconstructionConfig
from ltemlive.reconstruct.solver import ReconstructionResult, Reconstructor, Snapshot, reconstruct

__all__ = ["FreeGroups", "ReconstructionConfig", "ReconstructionResult", "Reconstructor", "Snapshot", "reconstruct"]
