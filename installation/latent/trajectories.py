"""Latent trajectories: pure functions of (path time, params, seed) -> latent.

A trajectory object is built once per (settings, latent shape, seed) and is then a function: calling it with the
same path time and params always returns the same latent, from any thread. Path time is the integral of the
``speed`` parameter over clock time (the show integrates it), so changing speed never makes the path jump.

Live parameters read here: ``radius`` (how far orbits and walks stray, 0..2) and ``temperature`` (latent scale).
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .seeds import orthonormal_pair, slerp

_TAU = 2.0 * math.pi


def sub_latent(seed: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """The ``index``-th standard-normal latent derived from a scene seed."""
    return np.random.default_rng([int(seed), int(index)]).standard_normal(shape)


def _shell(x: np.ndarray, radius: float) -> np.ndarray:
    n = np.linalg.norm(x)
    return x * (radius / n) if n > 0 else x


def _phase(tau: float, period: float) -> float:
    """Position along a closed path in [0, 1): reduced first, so t and t + period give the same latent."""
    return (tau % period) / period


class TrajectorySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Trajectory:
    """Base: holds the shape and seed; subclasses implement ``_at``."""

    kind: ClassVar[str] = ""
    Settings: ClassVar[type[TrajectorySettings]] = TrajectorySettings

    def __init__(self, settings: TrajectorySettings, shape: tuple[int, ...], seed: int) -> None:
        self.settings = settings
        self.shape = tuple(shape)
        self.seed = int(seed)
        self.dim = int(np.prod(self.shape))
        self.norm = math.sqrt(self.dim)  # expected radius of a standard-normal latent

    @property
    def period(self) -> float | None:
        """Path-time period for closed paths (a ``period`` setting, unless a subclass derives it), None otherwise."""
        return getattr(self.settings, "period", None)

    def __call__(self, tau: float, params: Mapping[str, float] | None = None) -> np.ndarray:
        params = params or {}
        z = self._at(float(tau), params) * float(params.get("temperature", 1.0))
        return z.astype(np.float32)

    def _at(self, tau: float, params: Mapping[str, float]) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def check(cls, settings: TrajectorySettings, shape: tuple[int, ...]) -> None:
        """Start-up check against the decoder's latent shape (files a trajectory reads); ValueError if wrong."""


class StillSettings(TrajectorySettings):
    kind: Literal["still"] = "still"


class Still(Trajectory):
    """One seed's latent, held: the decoder's view of a single point."""

    kind = "still"
    Settings = StillSettings

    def __init__(self, settings, shape, seed):
        super().__init__(settings, shape, seed)
        self._z = sub_latent(seed, 0, self.shape)

    def _at(self, tau, params):
        return self._z


class SlerpSettings(TrajectorySettings):
    kind: Literal["slerp"] = "slerp"
    period: Annotated[float, Field(gt=0, description="path seconds for A -> B -> A")] = 20.0


class Slerp(Trajectory):
    """There and back between two seeds along the great circle, eased at both ends (a closed path)."""

    kind = "slerp"
    Settings = SlerpSettings

    def __init__(self, settings, shape, seed):
        super().__init__(settings, shape, seed)
        self._a = sub_latent(seed, 0, self.shape)
        self._b = sub_latent(seed, 1, self.shape)

    def _at(self, tau, params):
        u = 0.5 - 0.5 * math.cos(_TAU * _phase(tau, self.settings.period))
        return slerp(self._a, self._b, u)


class TourSettings(TrajectorySettings):
    kind: Literal["tour"] = "tour"
    keyframes: Annotated[int, Field(ge=2, le=256, description="how many seeds the tour visits")] = 6
    step: Annotated[float, Field(gt=0, description="path seconds from one keyframe to the next")] = 8.0
    hold: Annotated[float, Field(ge=0, description="path seconds resting at each keyframe before travelling on")] = 0.0


class Tour(Trajectory):
    """A closed Catmull-Rom spline through N seeded keyframes, its norm kept on the shell (slerp-aware).

    The spline passes through every keyframe with continuous velocity; between keyframes it is projected back to the
    norm interpolated between its neighbours, so it never dips through the low-norm interior the way a straight
    chord does. With ``hold`` the tour rests at each keyframe, then eases out, travels and eases in to the next
    (a smoothstep in time along the spline): an arrival, a stay and a departure a viewer can see.
    """

    kind = "tour"
    Settings = TourSettings

    def __init__(self, settings, shape, seed):
        super().__init__(settings, shape, seed)
        self._keys = [sub_latent(seed, i, self.shape) for i in range(settings.keyframes)]
        self._norms = [float(np.linalg.norm(k)) for k in self._keys]

    @property
    def period(self):
        return self.settings.keyframes * (self.settings.step + self.settings.hold)

    def _at(self, tau, params):
        n = self.settings.keyframes
        x = _phase(tau, self.period) * n
        i = int(x) % n
        u = x - int(x)
        hold = self.settings.hold
        if hold > 0:
            share = hold / (hold + self.settings.step)  # of each keyframe's segment, spent at rest
            u = max(u - share, 0.0) / (1.0 - share)
            u = u * u * (3.0 - 2.0 * u)
        p0, p1, p2, p3 = (self._keys[(i + j) % n] for j in (-1, 0, 1, 2))
        u2, u3 = u * u, u * u * u
        z = 0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u2 + (-p0 + 3 * p1 - 3 * p2 + p3) * u3)
        return _shell(z, (1 - u) * self._norms[i] + u * self._norms[(i + 1) % n])


class LoopSettings(TrajectorySettings):
    kind: Literal["loop"] = "loop"
    period: Annotated[float, Field(gt=0, description="path seconds for one lap")] = 30.0
    harmonics: Annotated[int, Field(ge=1, le=8, description="Fourier terms: 1 is a great circle, more wander")] = 3


class Loop(Trajectory):
    """A perfect loop: a seeded Fourier curve on the shell, so the latent at t and t + period are identical."""

    kind = "loop"
    Settings = LoopSettings

    def __init__(self, settings, shape, seed):
        super().__init__(settings, shape, seed)
        k = settings.harmonics
        self._coef = [(sub_latent(seed, 2 * j, self.shape), sub_latent(seed, 2 * j + 1, self.shape), 1.0 / (j + 1))
                      for j in range(k)]

    def _at(self, tau, params):
        theta = _TAU * _phase(tau, self.settings.period)
        z = sum(w * (a * math.cos((j + 1) * theta) + b * math.sin((j + 1) * theta))
                for j, (a, b, w) in enumerate(self._coef))
        return _shell(z, self.norm)


class OrbitSettings(TrajectorySettings):
    kind: Literal["orbit"] = "orbit"
    period: Annotated[float, Field(gt=0, description="path seconds for one revolution")] = 24.0


class Orbit(Trajectory):
    """A circle of live ``radius`` around a centre seed: the neighbourhood of one image, walked round."""

    kind = "orbit"
    Settings = OrbitSettings

    def __init__(self, settings, shape, seed):
        super().__init__(settings, shape, seed)
        self._c = sub_latent(seed, 0, self.shape)
        # The circle's plane must be orthogonal to the centre, or the angle from it would swing around the lap.
        c = self._c / np.linalg.norm(self._c)
        a, b = sub_latent(seed, 1, self.shape), sub_latent(seed, 2, self.shape)
        self._u, self._v = orthonormal_pair(a - np.sum(a * c) * c, b - np.sum(b * c) * c)

    def _at(self, tau, params):
        theta = _TAU * _phase(tau, self.settings.period)
        r = float(params.get("radius", 0.5)) * self.norm
        return _shell(self._c + r * (math.cos(theta) * self._u + math.sin(theta) * self._v), np.linalg.norm(self._c))


class WalkSettings(TrajectorySettings):
    kind: Literal["walk"] = "walk"
    theta: Annotated[float, Field(gt=0, le=10, description="mean reversion rate per path second")] = 0.15
    knot: Annotated[float, Field(gt=0, le=10, description="smoothness: no wiggle faster than one per 2 knots")] = 0.5


class Walk(Trajectory):
    """A bounded random walk around a home seed: an Ornstein-Uhlenbeck-like process, evaluated in O(1).

    Each latent dimension is a sum of seeded random cosines whose frequencies are drawn from the OU spectrum (a
    Cauchy distribution of scale ``theta``), cut off above pi / ``knot`` so the motion stays smooth; the frequencies
    are shared and the phases are per dimension, so a frame is one small matrix product. That gives the
    OU's exponential correlation exp(-theta * |dt|) at the time scales that show, stationary deviation 1 per
    dimension, and a pure function of path time: any time, weeks into a show, costs the same to evaluate, needs no
    history and no memory that grows. The deviation is scaled by ``radius`` and projected back to the shell.
    """

    kind = "walk"
    Settings = WalkSettings
    _COMPONENTS = 24

    def __init__(self, settings, shape, seed):
        super().__init__(settings, shape, seed)
        self._home = sub_latent(seed, 0, self.shape)
        rng = np.random.default_rng([self.seed, 7])
        cutoff = math.pi / settings.knot
        # Cauchy(0, theta) by its inverse CDF, restricted to |omega| < cutoff (drawn inside the cut, not clipped).
        edge = math.atan(cutoff / settings.theta) / math.pi
        self._omega = settings.theta * np.tan(math.pi * rng.uniform(-edge, edge, self._COMPONENTS))
        phase = rng.uniform(0.0, 2.0 * math.pi, (self._COMPONENTS, self.dim))
        amp = math.sqrt(2.0 / self._COMPONENTS)
        # cos(w t + p) = cos(w t) cos(p) - sin(w t) sin(p): one (2K x dim) matrix, one product per frame.
        self._basis = np.concatenate([amp * np.cos(phase), -amp * np.sin(phase)])

    def _at(self, tau, params):
        wt = self._omega * max(tau, 0.0)
        ou = (np.concatenate([np.cos(wt), np.sin(wt)]) @ self._basis).reshape(self.shape)
        ou = np.clip(ou, -4.0, 4.0)
        r = float(params.get("radius", 0.5))
        return _shell(self._home + r * ou, np.linalg.norm(self._home))


class ImagesSettings(TrajectorySettings):
    kind: Literal["images"] = "images"
    space: str = Field(description="space file (installation space build); relative to the scene file")
    order: Literal["similar", "given"] = Field("similar", description="similar: nearest-neighbour chain on the "
                                                                      "embeddings; given: the file's (name) order")
    step: Annotated[float, Field(gt=0, description="path seconds from one image to the next")] = 6.0
    hold: Annotated[float, Field(ge=0, lt=1, description="part of each step spent resting on the image")] = 0.3


class Images(Trajectory):
    """A closed tour through the images of a space file: rests on each image's latent, then glides to the next by
    slerp (eased). The scene seed picks the image the tour starts from; the diffusion decoder renders the latent by
    img2img (``latent_source``) at ``diffusion.strength``, so 0 shows the images themselves."""

    kind = "images"
    Settings = ImagesSettings

    def __init__(self, settings, shape, seed):
        super().__init__(settings, shape, seed)
        from ..spaces.space import shared_space, similarity_order

        space = shared_space(settings.space)
        self.check_shape(settings, space.latent_shape, shape)
        n = len(space.latents)
        start = self.seed % n
        order = similarity_order(space.embeddings, start) if settings.order == "similar" else \
            [(start + i) % n for i in range(n)]
        self.order = order
        self.names = [space.names[i] for i in order]
        self._keys = [space.latents[i].astype(np.float64) for i in order]

    @staticmethod
    def check_shape(settings: ImagesSettings, have: tuple[int, ...], want: tuple[int, ...]) -> None:
        if tuple(have) != tuple(want):
            raise ValueError(f"space file {settings.space} holds latents of shape {tuple(have)}, the scene's decoder "
                             f"walks {tuple(want)}: build the space at the scene's size (space build --size), or "
                             f"set the decoder's width/height to match")

    @classmethod
    def check(cls, settings, shape):
        from ..spaces.space import space_meta

        cls.check_shape(settings, tuple(space_meta(settings.space)["latent_shape"]), shape)

    @property
    def period(self):
        return len(self._keys) * self.settings.step

    def _at(self, tau, params):
        n = len(self._keys)
        x = _phase(tau, self.period) * n
        i = int(x) % n
        u = max(0.0, (x - int(x) - self.settings.hold) / (1.0 - self.settings.hold))
        u = u * u * (3.0 - 2.0 * u)  # eased: no jolt leaving or reaching an image
        return slerp(self._keys[i], self._keys[(i + 1) % n], u)


TRAJECTORIES: dict[str, type[Trajectory]] = {cls.kind: cls for cls in (Still, Slerp, Tour, Loop, Orbit, Walk, Images)}

AnyTrajectorySettings = Annotated[
    StillSettings | SlerpSettings | TourSettings | LoopSettings | OrbitSettings | WalkSettings | ImagesSettings,
    Field(discriminator="kind"),
]


def build(settings: TrajectorySettings, shape: tuple[int, ...], seed: int) -> Trajectory:
    """The trajectory that ``settings.kind`` names."""
    return TRAJECTORIES[settings.kind](settings, shape, seed)
