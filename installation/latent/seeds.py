"""Seeded latents and the interpolations that respect where Gaussian latents live.

In high dimension a standard Gaussian sample sits near the sphere of radius sqrt(d); lerp between two of them cuts
through the interior (low-norm, washed-out images), slerp stays on the shell. Everything here is float64 inside
and float32 out, deterministic across platforms for a given seed.
"""

from __future__ import annotations

import numpy as np


def gaussian(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The standard-normal latent for ``seed`` (float64, so paths built from it are exact)."""
    rng = np.random.Generator(np.random.PCG64(int(seed) & 0xFFFFFFFFFFFFFFFF))
    return rng.standard_normal(shape)


def slerp(a: np.ndarray, b: np.ndarray, u: float) -> np.ndarray:
    """Spherical interpolation that also interpolates the norm, so norms are kept (equal norms stay equal)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        return (1.0 - u) * a + u * b
    ua, ub = a / na, b / nb
    cos = float(np.clip(np.sum(ua * ub), -1.0, 1.0))
    omega = np.arccos(cos)
    if omega < 1e-6:
        direction = (1.0 - u) * ua + u * ub
    else:
        s = np.sin(omega)
        direction = (np.sin((1.0 - u) * omega) / s) * ua + (np.sin(u * omega) / s) * ub
    direction /= np.linalg.norm(direction)
    return direction * ((1.0 - u) * na + u * nb)


def orthonormal_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gram-Schmidt: unit vectors spanning the plane of ``a`` and ``b``."""
    ua = a / np.linalg.norm(a)
    v = b - np.sum(b * ua) * ua
    return ua, v / np.linalg.norm(v)


def smoothstep(u: float) -> float:
    """Ease in and out, for transitions that start and stop without a jolt."""
    u = min(max(u, 0.0), 1.0)
    return u * u * (3.0 - 2.0 * u)
