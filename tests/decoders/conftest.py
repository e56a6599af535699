"""Tiny real diffusers models built from config, saved with save_pretrained and shared by the decoder tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from installation.decoders import DecoderSpec, LatentRequest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """sd-turbo/, sdxl-turbo/, lcm/ and taesd/ folders with tiny random weights (seeded)."""
    from installation.decoders.random_models import make_all

    root = tmp_path_factory.mktemp("models")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return {k: Path(v) for k, v in make_all(root, full=False, seed=0).items()}


def _make_request(settings, z: np.ndarray, params=None, extras=None, seq: int = 0, kind: str = "diffusion"):
    return LatentRequest(z=np.asarray(z, np.float32), t=seq / 30.0, seq=seq, decoder=DecoderSpec(kind, settings),
                         params=params or {}, extras=extras or {})


def _unit_z(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture
def make_request():
    """A request like the core's: float32 z, bus params, extras."""
    return _make_request


@pytest.fixture
def unit_z():
    """Seeded unit-variance Gaussian latent of a shape (what the trajectory hands over)."""
    return _unit_z
