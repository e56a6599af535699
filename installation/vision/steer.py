"""Steer by meaning: bend the walk towards frames that match a text.

Method (measured by ``installation bench --steer``): every ``period`` path seconds, take the current seed and
``candidates`` other seeds (drawn from the current one and the round, so a run is reproducible), evaluate each
seed's path a few path seconds ahead (``horizon``) with cheap low-resolution renders of the scene's own decoder,
embed them with CLIP and score each seed by its mean similarity to the text. When the best beats the current path
by more than ``(1 - strength) * MARGIN``, post a seed jump: the show glides to the new path by the slerp it uses for
every seed change, so the picture bends rather than cuts. ``strength`` 1 takes any better path, 0.5 only a clearly
better one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..decoders import DecoderSpec, LatentRequest, decoder_class
from ..latent import build
from ..render.worker import DecoderGuard
from .clip import ClipModel, similarity
from .settings import SteerSettings

log = logging.getLogger(__name__)

MARGIN = 0.05  # similarity a better path must win by at strength 0


def low_res(spec: DecoderSpec, scale: int) -> DecoderSpec:
    """The decoder spec at 1/scale resolution, aspect kept (width/height in multiples of 8 for diffusion)."""
    s = spec.settings
    if scale <= 1:
        return spec
    if hasattr(s, "resolution"):
        w, h = s.resolution
        update: dict[str, Any] = {"resolution": (max(16, w // scale), max(16, h // scale))}
    elif hasattr(s, "width") and hasattr(s, "height"):
        update = {"width": max(64, s.width // scale // 8 * 8), "height": max(64, s.height // scale // 8 * 8)}
    else:
        return spec
    return DecoderSpec(spec.type, type(s).model_validate({**s.model_dump(), **update}))


@dataclass
class Verdict:
    """One round: the seeds scored (the current one first), their scores, and the seed to glide to (or None)."""

    seeds: list[int]
    scores: list[float]
    jump: int | None = None


@dataclass
class Steerer:
    """Scores candidate paths with CLIP; one instance per thread (it keeps its own low-resolution decoder)."""

    clip: ClipModel
    device: str = "cpu"
    rounds: int = 0
    jumps: int = 0
    _guards: dict[DecoderSpec, DecoderGuard] = field(default_factory=dict)

    def evaluate(self, scene: Any, seed: int, tau: float, params: Mapping[str, float], text: str, strength: float,
                 settings: SteerSettings, prompts: Sequence[tuple[str, float]] = ()) -> Verdict:
        spec = low_res(scene.decoder, settings.scale)
        guard = self._guards.get(spec)
        if guard is None:
            for old in self._guards.values():
                old.close()
            self._guards = {spec: DecoderGuard(self.device)}
            guard = self._guards[spec]
        shape = decoder_class(spec.type).latent_shape(spec.settings)
        rng = np.random.default_rng([seed, self.rounds, 0x57EE])
        seeds = [seed] + [int(s) for s in rng.integers(0, 2**31 - 1, settings.candidates)]
        self.rounds += 1
        frames, owners = [], []
        for i, s in enumerate(seeds):
            traj = build(scene.trajectory, shape, s)
            for d in settings.horizon:
                z = np.asarray(traj(tau + d, params), np.float32)
                rgb = guard.render(LatentRequest(z, 0.0, 0, spec, scene.name, params, {"prompts": tuple(prompts)}))
                if rgb is not None:
                    frames.append(rgb)
                    owners.append(i)
        if not frames:
            return Verdict(seeds, [])
        sims = similarity(self.clip.embed_frames(frames), self.clip.embed_texts([text]))[:, 0]
        owners_a = np.array(owners)
        scores = [float(sims[owners_a == i].mean()) if (owners_a == i).any() else -2.0 for i in range(len(seeds))]
        best = int(np.argmax(scores))
        verdict = Verdict(seeds, scores)
        if best != 0 and scores[best] > scores[0] + (1.0 - strength) * MARGIN:
            verdict.jump = seeds[best]
            self.jumps += 1
        return verdict

    def close(self) -> None:
        for guard in self._guards.values():
            guard.close()
        self._guards = {}
