"""Prompt weights moved by path time: the prompt half of a text-to-image model's latent path.

A scene's prompts are a weighted set. ``[prompt_motion]`` makes their weights pure functions of path time (the
same integral of ``speed`` the noise trajectory walks), so pausing, speeding up, a fixed-step render and a resume
all move the prompts exactly as they move the noise:

- ``fixed``: the weights as written (the default);
- ``tour``: one prompt after another, ``period`` path seconds each; a prompt is held for ``hold`` of that time,
  then crossfades into the next; the tour is closed (the last prompt fades back into the first);
- ``drift``: every weight wanders smoothly and independently between ``floor`` and 1 (seeded, never periodic).

On top, the bus's ``prompt.<i>.gain`` multiplies prompt i's moved weight (a fader per prompt). Each prompt's drift
is seeded by its index, so adding a prompt leaves the others' motion as it was.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .seeds import smoothstep


class PromptMotionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fixed", "tour", "drift"] = "fixed"
    period: Annotated[float, Field(gt=0, le=86400, description="path seconds per prompt (tour), or the drift's "
                                                                 "time scale")] = 20.0
    hold: Annotated[float, Field(ge=0, le=1, description="tour: share of each period a prompt is held alone")] = 0.25
    floor: Annotated[float, Field(ge=0, le=1, description="drift: the lowest share a weight falls to")] = 0.05


def prompt_shares(settings: PromptMotionSettings, n: int, tau: float, seed: int) -> tuple[float, ...]:
    """Multipliers (0..1) for n prompts' weights at path time ``tau``."""
    if settings.kind == "fixed" or n < 2:
        return (1.0,) * n
    if settings.kind == "tour":
        x = (tau / settings.period) % n
        i, frac = int(x) % n, x - int(x)
        u = smoothstep((frac - settings.hold) / (1.0 - settings.hold)) if settings.hold < 1.0 else 0.0
        out = [0.0] * n
        out[i] += 1.0 - u
        out[(i + 1) % n] += u
        return tuple(out)
    # drift: two incommensurate seeded sines per prompt, mapped to floor..1
    lo = settings.floor
    return tuple(lo + (1.0 - lo) * 0.5 * (1.0 + _drift(int(seed), i, tau / settings.period)) for i in range(n))


@functools.lru_cache(maxsize=256)
def _drift_terms(seed: int, index: int) -> tuple[float, float, float, float]:
    """Prompt ``index``'s two frequencies and phases (its own generator, so they do not depend on the count)."""
    rng = np.random.default_rng([seed, 0x9E37, index])
    f1, f2 = rng.uniform(0.6, 1.4, 2)
    p1, p2 = rng.uniform(0.0, 2.0 * math.pi, 2)
    return float(f1), float(f2), float(p1), float(p2)


def _drift(seed: int, index: int, x: float) -> float:
    """-1..1: prompt ``index``'s wave at ``x`` periods."""
    f1, f2, p1, p2 = _drift_terms(seed, index)
    return 0.5 * (math.sin(2.0 * math.pi * f1 * x + p1) + math.sin(2.0 * math.pi * f2 * math.sqrt(2.0) * x + p2))


def moved_prompts(prompts: tuple[tuple[str, float], ...], settings: PromptMotionSettings, tau: float,
                  seed: int) -> tuple[tuple[str, float], ...]:
    """The prompt set with each weight multiplied by its share at ``tau``."""
    shares = prompt_shares(settings, len(prompts), tau, seed)
    return tuple((text, weight * share) for (text, weight), share in zip(prompts, shares))
