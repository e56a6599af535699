"""Latent trajectories: pure functions of (path time, params, seed), closed paths that loop exactly, shells kept."""

from __future__ import annotations

import math
import random
import threading

import numpy as np
import pytest
from pydantic import ValidationError

from installation.latent import TRAJECTORIES, build
from installation.latent.trajectories import (LoopSettings, OrbitSettings, SlerpSettings, TourSettings,
                                              WalkSettings, sub_latent)

KINDS = sorted(k for k in TRAJECTORIES if k != "images")  # images walks a space file: tests/spaces/test_space.py
CLOSED = ["loop", "orbit", "slerp", "tour"]
SHAPES = [(8,), (4, 16, 16)]
TAUS = [0.0, 0.25, 3.3, 7.3, 29.99, 61.7, 250.5, 1000.1]


def make(kind: str, shape=(8,), seed: int = 3, **settings):
    return build(TRAJECTORIES[kind].Settings(**settings), shape, seed)


def n64(z) -> float:
    return float(np.linalg.norm(np.asarray(z, np.float64)))


def test_registry_lists_every_kind():
    assert set(TRAJECTORIES) == {"still", "slerp", "tour", "loop", "orbit", "walk", "images"}
    for kind, cls in TRAJECTORIES.items():
        assert cls.kind == kind
        assert cls.Settings.model_fields["kind"].default == kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_output_is_float32_of_the_latent_shape_and_finite(kind, shape):
    traj = make(kind, shape)
    for tau in TAUS:
        z = traj(tau)
        assert z.dtype == np.float32 and z.shape == shape
        assert np.all(np.isfinite(z))


@pytest.mark.parametrize("kind", KINDS)
def test_period_is_declared_for_closed_paths_only(kind):
    traj = make(kind)
    expected = {"loop": 30.0, "orbit": 24.0, "slerp": 20.0, "tour": 6 * 8.0, "still": None, "walk": None}[kind]
    assert traj.period == expected
    assert make("tour", keyframes=5, step=3.0).period == 15.0


# -- purity ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_pure_same_inputs_give_bit_identical_latents_in_any_order(kind, shape):
    params = {"radius": 0.7, "temperature": 1.1}
    taus = TAUS + [0.4, 12.5, 5.0, 0.26]
    a = make(kind, shape, seed=9)
    forward = [a(t, params) for t in taus]
    again = [a(t, params) for t in taus]
    b = make(kind, shape, seed=9)  # fresh object, evaluated backwards
    backward = [b(t, params) for t in reversed(taus)][::-1]
    c = make(kind, shape, seed=9)  # fresh object, shuffled order
    order = list(range(len(taus)))
    random.Random(1).shuffle(order)
    shuffled = dict((i, c(taus[i], params)) for i in order)
    for i, t in enumerate(taus):
        assert np.array_equal(forward[i], again[i]), (kind, t)
        assert np.array_equal(forward[i], backward[i]), (kind, t)
        assert np.array_equal(forward[i], shuffled[i]), (kind, t)


@pytest.mark.parametrize("kind", KINDS)
def test_params_default_equals_none(kind):
    traj = make(kind)
    assert np.array_equal(traj(4.2), traj(4.2, {}))
    assert np.array_equal(traj(4.2, None), traj(4.2, {"radius": 0.5, "temperature": 1.0}))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_different_seeds_give_different_latents(kind, shape):
    for tau in (0.0, 5.5, 100.25):
        a, b = make(kind, shape, seed=1)(tau), make(kind, shape, seed=2)(tau)
        assert not np.allclose(a, b, atol=1e-3), (kind, tau)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "still"])
def test_moving_paths_move(kind):
    traj = make(kind, (4, 16, 16))
    assert not np.allclose(traj(1.0), traj(3.0), atol=1e-3)


def test_still_holds_one_seed():
    traj = make("still", (4, 16, 16), seed=5)
    expected = sub_latent(5, 0, (4, 16, 16)).astype(np.float32)
    for tau in TAUS:
        assert np.array_equal(traj(tau), expected)


# -- closed paths ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", CLOSED)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tau", [0.0, 0.25, 7.3, 13.0, 1000.1, -3.7])
def test_closed_paths_repeat_after_one_period(kind, shape, tau):
    traj = make(kind, shape, seed=4)
    p = traj.period
    assert p is not None
    z = traj(tau, {"radius": 0.8})
    for k in (1, 2, 7):
        assert np.allclose(traj(tau + k * p, {"radius": 0.8}), z, rtol=0, atol=1e-5), (kind, tau, k)


@pytest.mark.parametrize("kind", CLOSED)
def test_closed_paths_are_not_constant_within_a_period(kind):
    traj = make(kind, (4, 16, 16), seed=4)
    p = traj.period
    zs = [traj(p * f) for f in (0.0, 0.3, 0.55, 0.8)]
    for i in range(len(zs)):
        for j in range(i + 1, len(zs)):
            assert not np.allclose(zs[i], zs[j], atol=1e-3)


@pytest.mark.parametrize("kind", CLOSED)
def test_closed_paths_are_continuous_across_the_seam(kind):
    traj = make(kind, (4, 16, 16), seed=4)
    p = traj.period
    eps = 1e-3
    before, at, after = traj(p - eps), traj(p), traj(p + eps)
    scale = n64(at)
    assert n64(before - at) / scale < 1e-3
    assert n64(after - at) / scale < 1e-3


def test_slerp_path_goes_from_a_to_b_and_back():
    shape = (4, 16, 16)
    traj = make("slerp", shape, seed=8, period=10.0)
    a, b = sub_latent(8, 0, shape), sub_latent(8, 1, shape)
    assert np.allclose(traj(0.0), a, atol=1e-5)
    assert np.allclose(traj(5.0), b, atol=1e-5)
    assert np.allclose(traj(10.0), a, atol=1e-5)
    # symmetric: there and back along the same arc
    assert np.allclose(traj(2.0), traj(8.0), atol=1e-5)


# -- tour ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("keyframes, step", [(6, 8.0), (3, 2.5), (8, 7.0)])
def test_tour_passes_through_every_keyframe(shape, keyframes, step):
    seed = 21
    traj = make("tour", shape, seed=seed, keyframes=keyframes, step=step)
    for lap in (0, 3):
        for k in range(keyframes):
            tau = lap * traj.period + k * step
            key = sub_latent(seed, k, shape)
            z = traj(tau).astype(np.float64)
            cos = float(np.sum(z * key)) / (n64(z) * n64(key))
            assert cos == pytest.approx(1.0, abs=1e-9), (k, lap)
            assert np.allclose(z, key, rtol=0, atol=1e-5), (k, lap)
            z2 = traj(tau, {"temperature": 0.5}).astype(np.float64)
            assert np.allclose(z2, 0.5 * key, rtol=0, atol=1e-5)


def test_tour_norm_stays_between_the_neighbouring_keyframe_norms():
    seed, shape, step, n = 2, (8,), 4.0, 6
    traj = make("tour", shape, seed=seed, keyframes=n, step=step)
    norms = [n64(sub_latent(seed, k, shape)) for k in range(n)]
    for tau in np.linspace(0.0, n * step, 97):
        k = int(tau // step) % n
        lo, hi = sorted((norms[k], norms[(k + 1) % n]))
        assert lo * (1 - 1e-6) <= n64(traj(float(tau))) <= hi * (1 + 1e-6), tau


def test_tour_is_continuous_through_keyframes():
    traj = make("tour", (4, 16, 16), seed=2, keyframes=5, step=2.0)
    for k in range(6):
        t = k * 2.0
        a, b = traj(t - 1e-4), traj(t + 1e-4)
        assert n64(a - b) / n64(a) < 1e-3


def test_tour_with_holds_rests_at_each_keyframe_then_travels_on():
    seed, shape, n, step, hold = 4, (8,), 5, 3.0, 2.0
    traj = make("tour", shape, seed=seed, keyframes=n, step=step, hold=hold)
    assert traj.period == n * (step + hold)
    for lap in (0, 2):
        for k in range(n):
            start = lap * traj.period + k * (step + hold)
            key = sub_latent(seed, k, shape)
            for tau in np.linspace(start, start + hold, 5):  # the whole hold sits on the keyframe
                assert np.allclose(traj(float(tau)), key, rtol=0, atol=1e-5), (k, tau)
            mid = traj(start + hold + step / 2)  # then it travels, and arrives at the next one
            assert n64(mid - key) > 0.1 * n64(key)
            assert np.allclose(traj(start + hold + step - 1e-9), sub_latent(seed, (k + 1) % n, shape), atol=1e-4)
    # it eases: leaving a hold it moves slowly, in the middle of the journey fast
    start = hold
    near = n64(traj(start + 0.05) - traj(start))
    far = n64(traj(start + step / 2 + 0.05) - traj(start + step / 2))
    assert near < 0.2 * far


# -- shells ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_loop_stays_on_the_sqrt_dim_shell(shape):
    traj = make("loop", shape, seed=6)
    r = math.sqrt(np.prod(shape))
    for tau in np.linspace(0.0, 60.0, 61):
        assert n64(traj(float(tau))) == pytest.approx(r, rel=1e-6)


@pytest.mark.parametrize("kind", ["orbit", "walk"])
@pytest.mark.parametrize("shape", SHAPES)
def test_orbit_and_walk_stay_on_their_centre_seeds_shell(kind, shape):
    seed = 6
    traj = make(kind, shape, seed=seed)
    r = n64(sub_latent(seed, 0, shape))
    for tau in np.linspace(0.0, 60.0, 61):
        for radius in (0.0, 0.5, 2.0):
            assert n64(traj(float(tau), {"radius": radius})) == pytest.approx(r, rel=1e-6)


@pytest.mark.parametrize("kind", ["loop", "orbit", "walk", "tour"])
def test_norms_near_sqrt_dim_in_high_dimension(kind):
    shape = (4, 16, 16)
    traj = make(kind, shape, seed=13)
    r = math.sqrt(np.prod(shape))
    for tau in np.linspace(0.0, 100.0, 41):
        assert n64(traj(float(tau), {"radius": 1.5})) == pytest.approx(r, rel=0.1), tau


# -- live params -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temp", [0.0, 0.5, 1.7, 3.0])
def test_temperature_scales_the_latent(kind, temp):
    traj = make(kind, (4, 16, 16))
    for tau in (0.0, 9.1):
        base = traj(tau, {"radius": 0.4}).astype(np.float64)
        hot = traj(tau, {"radius": 0.4, "temperature": temp}).astype(np.float64)
        assert np.allclose(hot, temp * base, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["orbit", "walk"])
def test_radius_changes_orbit_and_walk(kind):
    shape = (4, 16, 16)
    seed = 7
    traj = make(kind, shape, seed=seed)
    centre = sub_latent(seed, 0, shape)
    dists = []
    for radius in (0.0, 0.25, 1.0, 2.0):
        z = traj(5.0, {"radius": radius}).astype(np.float64)
        cos = float(np.sum(z * centre)) / (n64(z) * n64(centre))
        dists.append(math.acos(min(cos, 1.0)))
    assert dists[0] == pytest.approx(0.0, abs=1e-3)  # radius 0 sits on the centre
    assert dists[0] < dists[1] < dists[2] < dists[3]  # further out as the radius grows


@pytest.mark.parametrize("shape, seed", [((6,), 42), ((4, 16, 16), 7)])  # (6,), 42: the shipped halo scene
def test_orbit_circles_the_centre_at_constant_distance(shape, seed):
    """A circle *around* the centre seed: every point on it is equally far (in angle) from the centre."""
    traj = make("orbit", shape, seed=seed)
    centre = sub_latent(seed, 0, shape)
    angles = []
    for tau in np.linspace(0.0, 24.0, 13):
        z = traj(float(tau), {"radius": 0.6}).astype(np.float64)
        angles.append(math.acos(float(np.sum(z * centre)) / (n64(z) * n64(centre))))
    assert max(angles) - min(angles) < 1e-4
    assert min(angles) > 0.1


@pytest.mark.parametrize("kind", ["loop", "still", "slerp", "tour"])
def test_radius_does_not_change_paths_without_a_radius(kind):
    traj = make(kind, (4, 16, 16))
    for tau in (0.0, 3.3, 77.7):
        assert np.array_equal(traj(tau, {"radius": 0.0}), traj(tau, {"radius": 2.0}))


# -- walk ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_walk_is_continuous_at_30_fps(shape):
    traj = make("walk", shape, seed=11)
    frames = [traj(i / 30.0).astype(np.float64) for i in range(30 * 20)]
    steps = [n64(b - a) / n64(a) for a, b in zip(frames, frames[1:])]
    assert max(steps) < 0.06
    # not frozen: twenty seconds of walking goes much further than any one frame's step
    assert n64(frames[-1] - frames[0]) / n64(frames[0]) > 5 * max(steps)
    # and smooth: the step size itself changes gently (no kinks at the knots)
    accel = [n64((c - b) - (b - a)) / n64(a) for a, b, c in zip(frames, frames[1:], frames[2:])]
    assert max(accel) < 0.5 * max(steps)  # a kink (velocity jump) at a knot would be about 1x or more


@pytest.mark.parametrize("shape", SHAPES)
def test_walk_is_bounded_over_ten_minutes(shape):
    seed = 11
    traj = make("walk", shape, seed=seed)
    home = sub_latent(seed, 0, shape)
    r = n64(home)
    min_cos = 1.0
    for tau in np.arange(0.0, 600.0, 0.25):
        z = traj(float(tau)).astype(np.float64)
        assert r * (1 - 1e-6) <= n64(z) <= r * (1 + 1e-6)
        min_cos = min(min_cos, float(np.sum(z * home)) / (n64(z) * r))
    if len(shape) > 1:  # in high dimension the walk keeps well within its neighbourhood of home
        assert min_cos > 0.7
    else:
        assert min_cos > -0.5


def test_walk_stationary_deviation_is_one_per_dimension():
    """The docstring's contract: the OU deviation around home has std 1 per dimension, scaled by ``radius``.

    Recover the deviation from the shelled output: z is parallel to home + r * ou, so rescaling z to put its
    component along home back at |home| gives home + r * ou (up to the tiny ou . home term).
    """
    shape = (4, 16, 16)
    seed, r = 11, 0.5
    traj = make("walk", shape, seed=seed)
    home = sub_latent(seed, 0, shape)
    hn = n64(home)
    hhat = home / hn
    ms = []
    for tau in np.arange(0.0, 600.0, 0.5):
        z = traj(float(tau), {"radius": r}).astype(np.float64)
        x = z * (hn / float(np.sum(z * hhat)))
        ou = (x - home) / r
        ms.append(float(np.mean(ou * ou)))
    std = math.sqrt(float(np.mean(ms)))
    assert std == pytest.approx(1.0, rel=0.1)


def test_walk_backwards_after_forwards_is_bit_identical():
    traj = make("walk", (4, 16, 16), seed=17)
    taus = [i / 30.0 for i in range(0, 30 * 120, 7)]
    forward = [traj(t) for t in taus]
    backward = [traj(t) for t in reversed(taus)][::-1]
    for t, a, b in zip(taus, forward, backward):
        assert np.array_equal(a, b), t


def test_walk_far_jump_matches_walking_there():
    """Many knots ahead (past the checkpoint pruning), a fresh object and one that walked there agree exactly."""
    s = dict(knot=0.01, theta=0.5)
    walked = make("walk", (8,), seed=5, **s)
    for i in range(0, 8000):
        walked(i * 0.01 + 0.005)
    jumped = make("walk", (8,), seed=5, **s)
    for tau in (79.9, 12.34, 70.0, 0.5, 79.995, 40.0):
        assert np.array_equal(walked(tau), jumped(tau)), tau


def test_walk_is_thread_safe():
    ref = make("walk", (4, 16, 16), seed=19)
    taus = [i * 0.37 for i in range(200)]
    expected = [ref(t) for t in taus]
    shared = make("walk", (4, 16, 16), seed=19)
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def worker(k):
        try:
            order = list(range(len(taus)))
            random.Random(k).shuffle(order)
            results[k] = [(i, shared(taus[i])) for i in order]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for k in range(4):
        for i, z in results[k]:
            assert np.array_equal(z, expected[i]), (k, i)


def test_walk_differs_across_seeds_over_time():
    a, b = make("walk", (8,), seed=1), make("walk", (8,), seed=2)
    for tau in np.arange(0.0, 30.0, 1.5):
        assert not np.allclose(a(float(tau)), b(float(tau)), atol=1e-3)


def test_walk_before_zero_holds_the_start():
    traj = make("walk", (8,), seed=1)
    assert np.array_equal(traj(-5.0), traj(0.0))


# -- settings --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, bad", [
    (LoopSettings, {"period": 0}), (LoopSettings, {"harmonics": 9}), (LoopSettings, {"harmonics": 0}),
    (OrbitSettings, {"period": -1.0}), (SlerpSettings, {"period": 0.0}),
    (TourSettings, {"keyframes": 1}), (TourSettings, {"keyframes": 257}), (TourSettings, {"step": 0}),
    (WalkSettings, {"theta": 0}), (WalkSettings, {"theta": 11}), (WalkSettings, {"knot": 0}),
    (LoopSettings, {"speed": 1.0}), (LoopSettings, {"kind": "orbit"}),
])
def test_settings_reject_bad_values_and_unknown_keys(cls, bad):
    with pytest.raises(ValidationError):
        cls(**bad)


def test_settings_are_frozen():
    s = LoopSettings()
    with pytest.raises(ValidationError):
        s.period = 3.0


@pytest.mark.parametrize("harmonics", [1, 3, 8])
def test_loop_harmonics_all_loop(harmonics):
    traj = make("loop", (8,), seed=3, harmonics=harmonics, period=12.0)
    assert np.allclose(traj(2.5), traj(14.5), atol=1e-5)
    assert n64(traj(2.5)) == pytest.approx(math.sqrt(8), rel=1e-6)
