"""Seeded Gaussian latents, norm-keeping slerp, and smoothstep."""

from __future__ import annotations

import math

import numpy as np
import pytest

from installation.latent.seeds import gaussian, orthonormal_pair, slerp, smoothstep


# -- gaussian ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8,), (4, 16, 16)])
def test_gaussian_is_deterministic_per_seed(shape):
    a = gaussian(123, shape)
    b = gaussian(123, shape)
    assert a.shape == shape and a.dtype == np.float64
    assert np.array_equal(a, b)
    assert not np.array_equal(a, gaussian(124, shape))


def test_gaussian_is_standard_normal_and_fixed_across_versions():
    z = gaussian(0, (4, 16, 16))
    assert abs(z.mean()) < 0.1
    assert z.std() == pytest.approx(1.0, abs=0.06)
    assert np.linalg.norm(z) == pytest.approx(math.sqrt(z.size), rel=0.05)
    # PCG64 with a plain integer seed: a documented, platform-independent stream
    ref = np.random.Generator(np.random.PCG64(0)).standard_normal(3)
    assert np.array_equal(gaussian(0, (3,)), ref)


def test_gaussian_accepts_large_and_negative_seeds():
    big = gaussian(2**64 + 5, (4,))
    assert np.array_equal(big, gaussian(5, (4,)))  # masked to 64 bits
    neg = gaussian(-1, (4,))
    assert np.all(np.isfinite(neg))
    assert np.array_equal(neg, gaussian(-1, (4,)))


# -- slerp ---------------------------------------------------------------------------------------------------------

def _pair(d=512, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(d), rng.standard_normal(d)


def test_slerp_endpoints_are_exact():
    a, b = _pair()
    assert np.allclose(slerp(a, b, 0.0), a, rtol=0, atol=1e-12)
    assert np.allclose(slerp(a, b, 1.0), b, rtol=0, atol=1e-12)


def test_slerp_keeps_equal_norms_along_the_path():
    a, b = _pair()
    b = b * (np.linalg.norm(a) / np.linalg.norm(b))
    n = np.linalg.norm(a)
    for u in np.linspace(0.0, 1.0, 41):
        z = slerp(a, b, float(u))
        assert abs(np.linalg.norm(z) - n) <= 1e-9 * n, u


def test_slerp_interpolates_norms_linearly_when_they_differ():
    a, b = _pair()
    b = 3.0 * b / np.linalg.norm(b) * np.linalg.norm(a)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    for u in (0.1, 0.3, 0.5, 0.9):
        assert np.linalg.norm(slerp(a, b, u)) == pytest.approx((1 - u) * na + u * nb, rel=1e-9)


def test_slerp_stays_in_the_plane_and_moves_at_constant_angular_speed():
    a, b = _pair()
    b = b * (np.linalg.norm(a) / np.linalg.norm(b))
    ua, ub = a / np.linalg.norm(a), b / np.linalg.norm(b)
    omega = math.acos(float(ua @ ub))
    for u in (0.2, 0.5, 0.7):
        z = slerp(a, b, u)
        uz = z / np.linalg.norm(z)
        assert math.acos(min(1.0, float(ua @ uz))) == pytest.approx(u * omega, rel=1e-9)
        # in span(a, b): the residual after projecting onto the plane is zero
        e1, e2 = orthonormal_pair(a, b)
        resid = uz - (uz @ e1) * e1 - (uz @ e2) * e2
        assert np.linalg.norm(resid) < 1e-12


def test_slerp_is_not_lerp():
    """The midpoint of two near-orthogonal latents keeps the norm; lerp would lose ~30%."""
    a, b = _pair()
    b = b * (np.linalg.norm(a) / np.linalg.norm(b))
    mid = slerp(a, b, 0.5)
    lerp = 0.5 * (a + b)
    assert np.linalg.norm(lerp) < 0.8 * np.linalg.norm(a)
    assert np.linalg.norm(mid) == pytest.approx(np.linalg.norm(a), rel=1e-9)


@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-9, 1e-7, 1e-6, 1e-5])
def test_slerp_of_nearly_parallel_vectors_is_finite_and_close(eps):
    a, noise = _pair(64, seed=3)
    b = a + eps * noise
    for u in (0.0, 0.25, 0.5, 1.0):
        z = slerp(a, b, u)
        assert np.all(np.isfinite(z)), (eps, u)
        assert np.linalg.norm(z - a) <= 2 * eps * np.linalg.norm(noise) + 1e-12


def test_slerp_with_a_zero_vector_is_a_finite_lerp():
    a, _ = _pair(16)
    z = slerp(a, np.zeros_like(a), 0.25)
    assert np.all(np.isfinite(z))
    assert np.allclose(z, 0.75 * a)


def test_slerp_works_on_nd_latents():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((4, 16, 16)), rng.standard_normal((4, 16, 16))
    z = slerp(a, b, 0.5)
    assert z.shape == (4, 16, 16)
    assert np.linalg.norm(z) == pytest.approx(0.5 * (np.linalg.norm(a) + np.linalg.norm(b)), rel=1e-9)


def test_orthonormal_pair():
    a, b = _pair(32)
    e1, e2 = orthonormal_pair(a, b)
    assert np.linalg.norm(e1) == pytest.approx(1.0, abs=1e-12)
    assert np.linalg.norm(e2) == pytest.approx(1.0, abs=1e-12)
    assert abs(e1 @ e2) < 1e-12
    assert np.allclose(e1, a / np.linalg.norm(a))


# -- smoothstep ----------------------------------------------------------------------------------------------------

def test_smoothstep_values_and_clamping():
    assert smoothstep(0.0) == 0.0
    assert smoothstep(1.0) == 1.0
    assert smoothstep(0.5) == 0.5
    assert smoothstep(0.25) == pytest.approx(0.15625)
    assert smoothstep(-3.0) == 0.0
    assert smoothstep(7.0) == 1.0


def test_smoothstep_is_monotone_symmetric_and_flat_at_the_ends():
    us = np.linspace(0.0, 1.0, 101)
    vs = [smoothstep(float(u)) for u in us]
    assert all(x <= y for x, y in zip(vs, vs[1:]))
    for u in us:
        assert smoothstep(float(u)) + smoothstep(float(1 - u)) == pytest.approx(1.0, abs=1e-12)
    h = 1e-6
    assert smoothstep(h) / h < 1e-5
    assert (1 - smoothstep(1 - h)) / h < 1e-5
