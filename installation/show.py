"""The show: which scene plays, where on its path we are, and the plan the decoder thread renders from.

Only :meth:`Show.update` mutates show state, once per tick, from the bus snapshot and the drained events. It
integrates path time (tau += speed * dt) and returns an immutable :class:`PathPlan`, a pure map from clock time to
a latent request: the decoder thread evaluates it at its own pace, the fixed-step renderer at exactly frame n / fps.
Scene changes between scenes on the same decoder slerp from the old path to the new one; changes of decoder are a
"cut" that the presenter crossfades in image space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from .bus import Event, ParamBus, Tick
from .config import Scene, ShowSpec
from .decoders import DecoderSpec, LatentRequest, decoder_class, param_specs
from .latent import build, slerp, smoothstep
from .latent.prompts import PromptMotionSettings, moved_prompts
from .latent.trajectories import Trajectory

log = logging.getLogger(__name__)

SHOW_EVENTS = frozenset({"scene.next", "scene.prev", "scene.goto", "seed", "seek", "prompt"})
SEED_BLEND = 2.0  # seconds to glide to a new seed's path


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


class FrozenParams(dict):
    """A read-only dict that pickles: plans cross threads and processes, and no reader may change them."""

    def _readonly(self, *args, **kwargs):
        raise TypeError("plan parameters are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __reduce__(self):
        return (FrozenParams, (dict(self),))


def _valid_seed(value: Any) -> int | None:
    """An integral seed in 0..2**63-1, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if isinstance(value, (float, np.floating)) and (not np.isfinite(value) or value != int(value)):
        return None
    value = int(value)
    return value if 0 <= value < 2**63 else None


class Show:
    """Plays a list of scenes in order or shuffled, with transitions, seed jumps and live prompts."""

    def __init__(self, spec: ShowSpec, bus: ParamBus, order: str | None = None, shuffle_seed: int | None = None):
        self.spec = spec
        self.bus = bus
        self.scenes: list[Scene] = spec.scenes
        self.order = order or spec.config.show.order
        self.shuffle_seed = spec.config.show.shuffle_seed if shuffle_seed is None else shuffle_seed
        self.position = 0  # index into the (possibly shuffled) play order, growing without bound
        self.cut = 0
        self.tau = 0.0
        self._rate = 0.0  # path seconds per second promised by the last plan
        self.seed = 0
        self.started = 0.0
        self.trajectory: Trajectory | None = None
        self.detour: Scene | None = None
        self._detour_until = 0.0
        self.prompts: tuple[tuple[str, float], ...] = ()
        self._prior: tuple[Trajectory, float] | None = None
        self._blend = (0.0, 0.0)
        self._prior2: tuple[Trajectory, float] | None = None
        self._blend2 = (0.0, 0.0)
        # Whether a scene can play now (the atlas: once the archive holds enough points); the rotation and
        # next/prev pass over one that cannot. Set by the runtime; None: every scene can.
        self.ready: Callable[[Scene], bool] | None = None
        self.skipped = 0
        self._activate(0, 0.0, first=True)

    # -- the play order ----------------------------------------------------------------------------------------
    def scene_index(self, position: int) -> int:
        n = len(self.scenes)
        if self.order != "shuffle" or n == 1:
            return position % n
        cycle, k = divmod(position, n)
        return int(np.random.default_rng([self.shuffle_seed, cycle]).permutation(n)[k])

    def _playable(self, position: int, step: int) -> int:
        """``position``, or the first one after it in ``step``'s direction whose scene is ready (``position`` itself
        when none is: the show never stops for want of a ready scene)."""
        if self.ready is None:
            return position
        for k in range(len(self.scenes)):
            p = max(position + k * step, 0)
            scene = self.scenes[self.scene_index(p)]
            try:
                ok = self.ready(scene)
            except Exception:  # noqa: BLE001 - a failing check plays the scene rather than stopping the show
                log.exception("cannot tell whether scene %s is ready; playing it", scene.name)
                ok = True
            if ok:
                return p
            self.skipped += 1
            log.info("scene %s skipped: not ready", scene.name)
        return position

    @property
    def scene(self) -> Scene:
        """The scene playing: a detour (the safe scene after faults) or the show's scene at ``position``."""
        return self.detour if self.detour is not None else self.scenes[self.scene_index(self.position)]

    def play_detour(self, scene: Scene, t: float, seconds: float) -> None:
        """Play a scene outside the show's list for ``seconds``, then retry the scene at the current position."""
        self._activate(self.position, t, detour=scene)
        self._detour_until = t + seconds

    def defaults(self, scene: Scene | None = None) -> dict[str, float]:
        """Parameter targets a scene starts from: declared defaults, the scene's decoder settings (its img2img
        strength, say), then the config's [params], then the scene's own [params]."""
        scene = scene or self.scene
        values = {name: spec.default for name, spec in self.spec.params.items()}
        values.update({p.name: p.default for p in param_specs(scene.decoder) if p.name in self.spec.params})
        values.update(self.spec.config.params)
        values.update(scene.params)
        return values

    def _activate(self, position: int, t: float, first: bool = False, seed: int | None = None,
                  detour: Scene | None = None) -> None:
        old_scene = None if first else self.scene
        old = (self.trajectory, self.tau) if self.trajectory is not None else None
        self.position = position
        self.detour = detour
        scene = self.scene
        shape = decoder_class(scene.decoder.type).latent_shape(scene.decoder.settings)
        self.seed = scene.seed if seed is None else seed
        self.trajectory = build(scene.trajectory, shape, self.seed)
        self.tau = 0.0
        self.started = t
        if old_scene is not None and old_scene.decoder == scene.decoder and old is not None and \
                old[0].shape == self.trajectory.shape:
            self._prior, self._blend = old, (t, scene.transition)
        else:
            self._prior = None
            if old_scene is not None:
                self.cut += 1
        self._prior2 = None
        if seed is None:
            self.prompts = self._scene_prompts(scene)
            self.bus.reset(self.defaults(scene), snap=first)
        log.info("scene %s (%s, %s, seed %d)", scene.name, scene.decoder.type, scene.trajectory.kind, self.seed)

    @staticmethod
    def _scene_prompts(scene: Scene) -> tuple[tuple[str, float], ...]:
        """The scene's prompts, else its decoder's (so /prompt/<slot> edits the set that is on screen)."""
        if scene.prompts:
            return tuple((p.text, p.weight) for p in scene.prompts)
        return tuple((str(t), float(w)) for t, w in getattr(scene.decoder.settings, "prompts", ()))

    def _jump_seed(self, seed: int, t: float) -> None:
        if self._prior is not None and t - self._blend[0] < self._blend[1]:
            self._prior2, self._blend2 = self._prior, self._blend  # keep the blend on screen going
        else:
            self._prior2 = None
        self._prior = (self.trajectory, self.tau)
        shape = self.trajectory.shape
        self.seed = seed
        self.trajectory = build(self.scene.trajectory, shape, seed)
        self._blend = (t, SEED_BLEND)

    def goto(self, target: Any, t: float) -> bool:
        """Switch to a scene by name or by its index in the show's list."""
        names = [s.name for s in self.scenes]
        if isinstance(target, str) and target in names:
            idx = names.index(target)
        elif isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(names):
            idx = target
        else:
            self.bus.reject("scene")
            return False
        # Keep the position's cycle, land on the position that plays that scene.
        base = self.position - self.position % len(names)
        pos = next(p for p in range(base, base + len(names)) if self.scene_index(p) == idx)
        self._activate(pos, t)
        return True

    # -- the update step ---------------------------------------------------------------------------------------
    def update(self, t: float, dt: float, tick: Tick, frozen: bool = False) -> tuple[PathPlan, list[Event]]:
        """Advance one tick; returns the plan and the events the show does not handle (for the runtime)."""
        rest = []
        for ev in tick.events:
            if ev.kind not in SHOW_EVENTS:
                rest.append(ev)
            elif ev.kind == "scene.next":
                self._activate(self._playable(self.position + 1, 1), t)
            elif ev.kind == "scene.prev":
                self._activate(self._playable(max(self.position - 1, 0), -1), t)
            elif ev.kind == "scene.goto":
                self.goto(ev.value, t)
            elif ev.kind == "seed":
                seed = _valid_seed(ev.value)
                if seed is None:
                    self.bus.reject("seed")
                else:
                    self._jump_seed(seed, t)
            elif ev.kind == "seek":  # (seed, path time): glide to that place of the path, like a seed jump
                seed = _valid_seed(ev.value[0]) if isinstance(ev.value, (tuple, list)) and len(ev.value) == 2 else None
                tau = ev.value[1] if seed is not None else None
                if seed is None or isinstance(tau, bool) or not isinstance(tau, (int, float)) or not np.isfinite(tau):
                    self.bus.reject("seek")
                else:
                    self._jump_seed(seed, t)
                    self.tau = float(tau)
            elif ev.kind == "prompt":
                self._set_prompt(*ev.value)
        if self.detour is not None and t >= self._detour_until and not frozen:
            log.info("detour over: trying scene %s again", self.scenes[self.scene_index(self.position)].name)
            self._activate(self.position, t)
        if frozen:  # a freeze pauses the show's own clocks too: the scene timer and any blend in progress
            self.started += dt
            self._blend = (self._blend[0] + dt, self._blend[1])
            self._blend2 = (self._blend2[0] + dt, self._blend2[1])
        scene = self.scene
        if scene.duration > 0 and t - self.started >= scene.duration and len(self.scenes) > 1:
            ended = self.started + scene.duration
            self._activate(self._playable(self.position + 1, 1), t)
            self.started = ended  # the next scene's clock starts when this one ended, not at this tick: no drift
            scene = self.scene
        rate = 0.0 if frozen else float(tick.values.get("speed", 1.0))
        if not frozen:
            # The interval that just passed was walked at the rate the last plan promised (the decoder extrapolated
            # with it); the new rate applies from now. Otherwise a jump in speed would pull the path backwards.
            self.tau += self._rate * dt
            if self._prior is not None:
                self._prior = (self._prior[0], self._prior[1] + self._rate * dt)
                if t - self._blend[0] >= self._blend[1]:
                    self._prior = None
            if self._prior2 is not None:
                self._prior2 = (self._prior2[0], self._prior2[1] + self._rate * dt)
                if self._prior is None or t - self._blend2[0] >= self._blend2[1]:
                    self._prior2 = None
        self._rate = rate
        prior = part(self._prior[0], self._prior[1], rate) if self._prior else None
        prior2 = part(self._prior2[0], self._prior2[1], rate) if self._prior2 else None
        # Seeded by the scene, not the live seed: a /seed jump glides the noise and must not snap the prompts.
        motion = None if scene.prompt_motion.kind == "fixed" else (scene.prompt_motion, scene.seed)
        plan = PathPlan(t0=t, part=part(self.trajectory, self.tau, rate), decoder=scene.decoder,
                        scene=scene.name, cut=self.cut, params=FrozenParams(tick.values), prior=prior,
                        blend_start=self._blend[0], blend_len=self._blend[1], frozen=frozen, prior2=prior2,
                        prior2_start=self._blend2[0], prior2_len=self._blend2[1],
                        extras={"prompts": self.prompts}, prompt_motion=motion)
        return plan, rest

    def _set_prompt(self, slot: int | None, text: str, weight: float | None) -> None:
        prompts = list(self.prompts)
        w = 1.0 if weight is None else float(weight)
        if slot is None:
            prompts = [(text, w)]
        elif 0 <= slot < len(prompts):
            prompts[slot] = (text, prompts[slot][1] if weight is None else w)
        elif slot == len(prompts) and slot < 16:
            prompts.append((text, w))
        else:
            self.bus.reject("prompt_slot")
            return
        self.prompts = tuple(prompts)

    def state(self, t: float) -> dict[str, Any]:
        """Where the show is: enough to resume it (scene, time in scene, path time, seed, prompts)."""
        # On a detour, the scene to come back to is what a restart should resume.
        if self.detour is not None:
            return {"scene": self.scenes[self.scene_index(self.position)].name, "position": self.position,
                    "scene_time": 0.0, "tau": 0.0, "seed": self.scene.seed, "prompts": []}
        return {"scene": self.scene.name, "position": self.position, "scene_time": t - self.started,
                "tau": self.tau, "seed": self.seed,
                # Only prompts set live: a scene's own (edited in its file, then reloaded) must not be shadowed.
                "prompts": [list(p) for p in self.prompts] if self.prompts != self._scene_prompts(self.scene) else []}

    def restore(self, state: Mapping[str, Any], t: float) -> bool:
        """Resume from a saved :meth:`state` (plus ``params``, the bus targets) at clock time ``t``.

        Returns False, changing nothing, when the saved scene is not in this show (a stale state file).
        """
        names = [s.name for s in self.scenes]
        name = state.get("scene")
        if name not in names:
            return False
        idx = names.index(name)
        pos = state.get("position")
        if not isinstance(pos, int) or pos < 0 or self.scene_index(pos) != idx:
            pos = next(p for p in range(len(names)) if self.scene_index(p) == idx)
        seed = _valid_seed(state.get("seed"))
        self._activate(pos, t, seed=seed)
        self._prior = None
        self.started = t - float(state.get("scene_time", 0.0))
        self.tau = float(state.get("tau", 0.0))
        prompts = state.get("prompts")
        self.prompts = tuple((str(p), float(w)) for p, w in prompts)[:16] if prompts else \
            self._scene_prompts(self.scene)
        values = dict(self.defaults())
        for key, value in (state.get("params") or {}).items():
            spec = self.bus.spec(key)
            v = spec.coerce(value)[0] if spec is not None else None
            if v is not None:
                values[key] = v
        self.bus.reset(values, snap=True, source="resume")
        log.info("resumed scene %s at %.1f s in scene, path time %.2f, seed %d", name, t - self.started, self.tau,
                 self.seed)
        return True
