"""Prompt weights moved by path time: the prompt half of a text-to-image model's latent path.

A scene's prompts are a weighted set. ``[prompt_motion]`` makes their weights pure functions of path time (the
same integral of ``speed`` the noise trajectory walks), so pausing, speeding up, a fixed-step render and a resume
all move the prompts exactly as they move the noise:

- ``fixed``: the weights as written (the default);
- ``tour``: one prompt after another, ``period`` path seconds each; a prompt is held for ``hold`` of that time,
  then crossfades into the next; the tour is closed (the last prompt fades back into the first);
- ``drift``: every weight wanders smoothly and independently between ``floor`` and 1 (seeded, never periodic).

The bus still has the last word: a ``prompt.<i>.weight`` parameter overrides prompt i's moved weight.
"""

from __future__ import annotations

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
    rng = np.random.default_rng([int(seed), 0x9E37, n])
    freqs = rng.uniform(0.6, 1.4, (n, 2)) * np.array([1.0, math.sqrt(2.0)])
    phases = rng.uniform(0.0, 2.0 * math.pi, (n, 2))
    wave = np.sin(2.0 * math.pi * freqs * (tau / settings.period) + phases).mean(axis=1)  # -1..1
    lo = settings.floor
    return tuple(float(lo + (1.0 - lo) * 0.5 * (1.0 + w)) for w in wave)


def moved_prompts(prompts: tuple[tuple[str, float], ...], settings: PromptMotionSettings, tau: float,
                  seed: int) -> tuple[tuple[str, float], ...]:
    """The prompt set with each weight multiplied by its share at ``tau``."""
    shares = prompt_shares(settings, len(prompts), tau, seed)
    return tuple((text, weight * share) for (text, weight), share in zip(prompts, shares))
