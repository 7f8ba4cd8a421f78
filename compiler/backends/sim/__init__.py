"""The simulated-accelerator backend: instruction emission, functional and timing simulation."""
from .simulate import SimResult, simulate

__all__ = ["simulate", "SimResult"]
