"""The plan the decoder renders from: an immutable, picklable map from clock time to a latent request.

:class:`~installation.show.Show` makes one per tick (a trajectory, where on it the show is and how fast it moves,
the blend from the previous path, the parameters and extras); the decoder thread, the decoder process and the
fixed-step renderer evaluate it at their own times (:meth:`PathPlan.request`). A plan crosses to a decoder process
in a few hundred bytes: its trajectories travel as keys, and :class:`TrajectoryCache` rebuilds them there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from ..decoders import DecoderSpec, LatentRequest
from .prompts import PromptMotionSettings, moved_prompts
from .seeds import slerp, smoothstep
from .trajectories import Trajectory, build


@dataclass(frozen=True)
class PathPart:
    """A trajectory and where on it we are at the plan's time, moving at ``rate`` path seconds per second.

    Pickles without the trajectory object (only the key that rebuilds it), so plans cross to a decoder process in
    a few hundred bytes; that process re-attaches its own cached trajectory with :class:`TrajectoryCache`.
    """

    key: tuple
    tau0: float
    rate: float
    trajectory: Trajectory | None = field(default=None, compare=False, repr=False)

    def tau(self, dt: float) -> float:
        """Path time ``dt`` seconds after the plan's time."""
        return self.tau0 + self.rate * dt

    def at(self, dt: float, params: Mapping[str, float]) -> np.ndarray:
        return self.trajectory(self.tau(dt), params)

    def __getstate__(self) -> dict:
        return {"key": self.key, "tau0": self.tau0, "rate": self.rate, "trajectory": None}

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)


def part(trajectory: Trajectory, tau0: float, rate: float) -> PathPart:
    return PathPart((trajectory.settings, trajectory.shape, trajectory.seed), tau0, rate, trajectory)


class TrajectoryCache:
    """Rebuilds trajectories from their keys, keeping the few most recent (a walk's checkpoints live on)."""

    def __init__(self, size: int = 4) -> None:
        self._items: dict[tuple, Trajectory] = {}
        self._size = size

    def get(self, key: tuple) -> Trajectory:
        traj = self._items.pop(key, None) or build(*key)
        self._items[key] = traj
        while len(self._items) > self._size:
            del self._items[next(iter(self._items))]
        return traj

    def attach(self, plan: "PathPlan") -> "PathPlan":
        """The same plan with live trajectory objects (after unpickling in another process)."""
        if not isinstance(plan, PathPlan):
            return plan

        def fix(p: PathPart | None) -> PathPart | None:
            return p if p is None or p.trajectory is not None else replace(p, trajectory=self.get(p.key))

        return replace(plan, part=fix(plan.part), prior=fix(plan.prior), prior2=fix(plan.prior2))


@dataclass(frozen=True)
class PathPlan:
    """Immutable: safe to hand to the decoder thread, which calls :meth:`request` for its own clock time."""

    t0: float
    part: PathPart
    decoder: DecoderSpec
    scene: str
    cut: int
    params: Mapping[str, float]
    prior: PathPart | None = None
    blend_start: float = 0.0
    blend_len: float = 0.0
    frozen: bool = False
    extras: Mapping[str, Any] = field(default_factory=dict)
    wants_source: bool = False  # an img2img source is in play (a decoder process keeps the last one it received)
    # A blend still running when the next one began: the prior is itself on its way from ``prior2``, so a second
    # seed jump within the blend time starts from what is on screen, not from an unblended path.
    prior2: PathPart | None = None
    prior2_start: float = 0.0
    prior2_len: float = 0.0
    # Prompt weights as functions of path time (None: as written); with the seed that shapes a drift.
    prompt_motion: tuple[PromptMotionSettings, int] | None = None

    def _dt(self, t: float) -> float:
        """Seconds since the plan's time that the path has moved (none while frozen)."""
        return max(t - self.t0, 0.0) if not self.frozen else 0.0

    def latent(self, t: float) -> np.ndarray:
        dt = self._dt(t)
        when = self.t0 if self.frozen else t
        z = self.part.at(dt, self.params)
        if self.prior is not None and self.blend_len > 0:
            u = smoothstep((when - self.blend_start) / self.blend_len)
            if u < 1.0:
                zp = self.prior.at(dt, self.params).astype(np.float64)
                if self.prior2 is not None and self.prior2_len > 0:
                    u2 = smoothstep((when - self.prior2_start) / self.prior2_len)
                    if u2 < 1.0:
                        zp = slerp(self.prior2.at(dt, self.params).astype(np.float64), zp, u2)
                z = slerp(zp, z.astype(np.float64), u)
        return np.asarray(z, dtype=np.float32)

    def request(self, t: float, seq: int) -> LatentRequest:
        extras = self.extras
        if self.prompt_motion is not None and extras.get("prompts"):
            settings, seed = self.prompt_motion
            tau = self.part.tau(self._dt(t))
            extras = {**extras, "prompts": moved_prompts(extras["prompts"], settings, tau, seed)}
        if extras.get("hidden"):  # a scene's hidden prompts (vision part): always blended in, after the motion
            extras = {**extras, "prompts": tuple(extras.get("prompts") or ()) + tuple(extras["hidden"])}
        return LatentRequest(z=self.latent(t), t=t, seq=seq, decoder=self.decoder, scene=self.scene,
                             params=self.params, extras=extras)
