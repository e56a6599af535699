"""Latent space geometry: seeded latents, interpolation and trajectories."""

from .seeds import gaussian, slerp, smoothstep
from .trajectories import TRAJECTORIES, AnyTrajectorySettings, Trajectory, build

__all__ = ["gaussian", "slerp", "smoothstep", "TRAJECTORIES", "AnyTrajectorySettings", "Trajectory", "build"]
