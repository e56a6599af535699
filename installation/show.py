"""The show: which scene plays, where on its path we are, and the plan the decoder thread renders from.

Only :meth:`Show.update` mutates show state, once per tick, from the bus snapshot and the drained events. It
integrates path time (tau += speed * dt) and returns an immutable :class:`~installation.latent.plan.PathPlan`, a
pure map from clock time to a latent request: the decoder thread evaluates it at its own pace, the fixed-step
renderer at exactly frame n / fps.
Scene changes between scenes on the same decoder slerp from the old path to the new one; changes of decoder are a
"cut" that the presenter crossfades in image space.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from .bus import MAX_GLIDE, Event, ParamBus, Tick
from .config import Scene, ShowSpec
from .decoders import decoder_class, param_specs
from .latent import build
from .latent.plan import PathPlan, TrajectoryCache, part  # noqa: F401 - TrajectoryCache: its old home
from .latent.trajectories import Trajectory

log = logging.getLogger(__name__)

SHOW_EVENTS = frozenset({"scene.next", "scene.prev", "scene.goto", "seed", "seek", "seek.release", "prompt"})
SEED_BLEND = 2.0  # seconds to glide to a new seed's path


class FrozenParams(dict):
    """A read-only dict that pickles: plans cross threads and processes, and no reader may change them."""

    def _readonly(self, *args, **kwargs):
        raise TypeError("plan parameters are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __reduce__(self):
        return (FrozenParams, (dict(self),))


def _seek_value(value: Any) -> tuple[int, float, float, bool] | None:
    """A seek event's ``[seed, path time]``, optionally ``+ [glide seconds[, hold]]``, checked; None if malformed."""
    if not isinstance(value, (tuple, list)) or not 2 <= len(value) <= 4:
        return None
    seed = _valid_seed(value[0])
    nums = value[1:3]
    if seed is None or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v)
                           for v in nums):
        return None
    glide = float(value[2]) if len(value) > 2 else SEED_BLEND
    hold = value[3] if len(value) > 3 else False
    if not 0.0 <= glide <= MAX_GLIDE or not isinstance(hold, bool):
        return None
    return seed, float(value[1]), glide, hold


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
        self.held = False  # a /seek holds the walk on the moment it found (path time and scene timer still)
        self._activate(0, 0.0, first=True)

    # -- the play order ----------------------------------------------------------------------------------------
    def scene_index(self, position: int) -> int:
        n = len(self.scenes)
        if self.order != "shuffle" or n == 1:
            return position % n
        cycle, k = divmod(position, n)
        return int(np.random.default_rng([self.shuffle_seed, cycle]).permutation(n)[k])

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
        self.held = False
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

    def _jump_seed(self, seed: int, t: float, blend: float = SEED_BLEND) -> None:
        if self._prior is not None and t - self._blend[0] < self._blend[1]:
            self._prior2, self._blend2 = self._prior, self._blend  # keep the blend on screen going
        else:
            self._prior2 = None
        self._prior = (self.trajectory, self.tau)
        shape = self.trajectory.shape
        self.seed = seed
        self.trajectory = build(self.scene.trajectory, shape, seed)
        self._blend = (t, blend)

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
        held_at = None
        for ev in tick.events:
            if ev.kind not in SHOW_EVENTS:
                rest.append(ev)
            elif ev.kind == "scene.next":
                self._activate(self.position + 1, t)
            elif ev.kind == "scene.prev":
                self._activate(max(self.position - 1, 0), t)
            elif ev.kind == "scene.goto":
                self.goto(ev.value, t)
            elif ev.kind == "seed":
                seed = _valid_seed(ev.value)
                if seed is None:
                    self.bus.reject("seed")
                else:
                    self._jump_seed(seed, t)
            elif ev.kind == "seek":  # (seed, path time[, glide s[, hold]]): glide to that place of the path
                place = _seek_value(ev.value)
                if place is None:
                    self.bus.reject("seek")
                else:
                    seed, tau, glide, hold = place
                    self._jump_seed(seed, t, glide)
                    self.tau = tau
                    self.held = hold
                    held_at = tau if hold else None
            elif ev.kind == "seek.release":  # the walk goes on from the moment it was held on
                self.held = False
            elif ev.kind == "prompt":
                self._set_prompt(*ev.value)
        if self.detour is not None and t >= self._detour_until and not frozen:
            log.info("detour over: trying scene %s again", self.scenes[self.scene_index(self.position)].name)
            self._activate(self.position, t)
        if self.held and not frozen:  # held by a seek: the scene stays as long as the walk does
            self.started += dt
        if frozen:  # a freeze pauses the show's own clocks too: the scene timer and any blend in progress
            self.started += dt
            self._blend = (self._blend[0] + dt, self._blend[1])
            self._blend2 = (self._blend2[0] + dt, self._blend2[1])
        scene = self.scene
        if scene.duration > 0 and t - self.started >= scene.duration and len(self.scenes) > 1:
            ended = self.started + scene.duration
            self._activate(self.position + 1, t)
            self.started = ended  # the next scene's clock starts when this one ended, not at this tick: no drift
            scene = self.scene
        rate = 0.0 if frozen or self.held else float(tick.values.get("speed", 1.0))
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
        if held_at is not None and self.held:  # exactly the moment sought, not a tick's walk past it
            self.tau = held_at
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
