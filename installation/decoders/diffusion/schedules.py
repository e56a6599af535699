"""The timesteps a frame takes, as the folder's scheduler gives them to a diffusers pipeline (text-to-image and
img2img at any strength), and the per-step constants the frame program reads from its static table."""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

TABLE_COLUMNS = 7  # t, sqrt(a), sqrt(1-a), c_skip, c_out, sqrt(a_next), sqrt(1-a_next)


def loop_scheduler(sched: Any, steps: int, model_dir: Path) -> Any:
    """The scheduler whose schedule the loop follows: the folder's own when it calls the UNet once per step (Euler,
    DDIM, LCM, DPM-Solver...); for one that calls it more often (Heun, PNDM's warm-up) an Euler scheduler from the
    same config, since the loop's step is Euler's (deterministic, == DDIM)."""
    try:
        sched.set_timesteps(steps)
        if getattr(sched, "order", 1) == 1 and len(sched.timesteps) == steps:
            return sched
    except (ValueError, RuntimeError, TypeError):
        pass
    import diffusers

    log.info("diffusion: %s's %s does not take one UNet call per step; following an Euler schedule from its "
             "config", model_dir, type(sched).__name__)
    return diffusers.EulerDiscreteScheduler.from_config(sched.config)


class Schedule:
    """The loop's schedule: (timestep, alphas_cumprod) per step for text-to-image and for img2img at a strength."""

    def __init__(self, scheduler: Any, steps: int, timesteps: tuple[int, ...], lcm: bool) -> None:
        self.scheduler = scheduler
        self.steps = steps
        self.timesteps = timesteps
        self.lcm = lcm
        self.alphas_cumprod = scheduler.alphas_cumprod.double().cpu()
        self.num_train = int(scheduler.config.num_train_timesteps)
        self.full, self.z_coef = self._full_schedule()

    def _scheduler_run(self, n: int | None = None, **kw: Any) -> list[tuple[float, float]]:
        """set_timesteps on the loop's scheduler, as (timestep, alphas_cumprod) per step: the alpha from the scheduler's
        own sigmas where it keeps them (Euler, DPM-Solver: fractional and Karras timesteps too), else from the table."""
        sched, T = self.scheduler, self.num_train
        if n is None:
            sched.set_timesteps(**kw)
        else:
            sched.set_timesteps(n, **kw)
        ts = [float(t) for t in sched.timesteps]
        if not ts or any(not 0.0 <= t <= T - 1 for t in ts):
            raise ValueError(f"{type(sched).__name__} gives timesteps {ts[:8]}, outside the training range 0..{T - 1}")
        sigmas = getattr(sched, "sigmas", None)
        if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1 and len(sigmas) >= len(ts):
            return [(t, 1.0 / (1.0 + float(sg) ** 2)) for t, sg in zip(ts, sigmas.tolist())]
        return [(float(round(t)), float(self.alphas_cumprod[int(round(t))])) for t in ts]

    def _full_schedule(self) -> tuple[list[tuple[float, float]], float]:
        """The steps of a text-to-image run and the weight of z in its starting latent, as a diffusers pipeline given
        this folder sets them: it scales its noise by ``init_noise_sigma`` and the UNet input by ``scale_model_input``
        (Euler with trailing or linspace spacing starts from sqrt(1 - alphas_cumprod[t0]) * z, DDIM and LCM from z)."""
        sched = self.scheduler
        run = None
        if self.timesteps and "timesteps" in inspect.signature(sched.set_timesteps).parameters:
            try:
                run = self._scheduler_run(timesteps=list(self.timesteps))
            except ValueError:  # e.g. Karras sigmas take no explicit timesteps
                run = None
        if run is None:
            run = self._scheduler_run(self.steps)
            if self.timesteps:
                run = [(float(t), float(self.alphas_cumprod[t])) for t in self.timesteps]
        start = sched.scale_model_input(torch.full((1,), float(sched.init_noise_sigma)), sched.timesteps[0])
        return run, float(start[0])

    def img2img(self, strength: float) -> list[tuple[float, float]]:
        """The steps of an img2img run at a strength, as diffusers' img2img pipelines take them: the scheduler's own
        partial schedule where it has one (LCM: ``set_timesteps(strength=)``), else the last ``steps`` timesteps of a
        steps/strength-step run (``get_timesteps``), interpolated between whole step counts so that a moving strength
        moves the timesteps smoothly (exact wherever steps/strength is whole)."""
        steps, T, acp = self.steps, self.num_train, self.alphas_cumprod
        if self.timesteps:
            ts = [max(0, min(T - 1, int(round(t * strength)))) for t in self.timesteps]
            return [(float(t), float(acp[t])) for t in ts]
        try:
            if "strength" in inspect.signature(self.scheduler.set_timesteps).parameters:
                run = self._scheduler_run(steps, strength=strength)
                if len(run) != steps:
                    raise ValueError(f"{len(run)} timesteps at strength {strength}")
                return run
            n_eff = min(steps / strength, float(T))
            n = max(steps, math.floor(n_eff + 1e-6))
            upper = self._scheduler_run(n)[-steps:]  # strength steps/n >= strength: the larger timesteps
            if n_eff - n <= 1e-6:
                return upper
            lower = self._scheduler_run(n + 1)[-steps:]
            w = (strength - steps / (n + 1)) / (steps / n - steps / (n + 1))
            ts = [int(round((1 - w) * lo + w * hi)) for (lo, _), (hi, _) in zip(lower, upper)]
        except ValueError:  # the scheduler cannot go that low (LCM below steps/original_inference_steps)
            ts = [max(0, int(round((t + 1) * strength)) - 1) for t, _ in self.full]
        return [(float(t), float(acp[t])) for t in ts]

    def rows(self, run: list[tuple[float, float]]) -> list[list[float]]:
        """The per-step constants of a run, one row of TABLE_COLUMNS per step."""
        rows = []
        for i, (t, a) in enumerate(run):
            a_next = run[i + 1][1] if i + 1 < len(run) else 1.0
            if self.lcm:
                c_skip, c_out = self.scheduler.get_scalings_for_boundary_condition_discrete(int(round(t)))
            else:
                c_skip, c_out = 0.0, 1.0
            rows.append([t, math.sqrt(a), math.sqrt(1 - a), float(c_skip), float(c_out), math.sqrt(a_next),
                         math.sqrt(1 - a_next)])
        return rows
