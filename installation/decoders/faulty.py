"""A CPPN that fails on purpose: for fault-injection tests and the soak run.

Every ``raise_every``-th frame raises, every ``nan_every``-th frame comes back with NaNs in it, every
``stall_every``-th frame hangs for ``stall_s`` and ``prepare_s`` makes prepare() slow: the faults a real backend
shows (driver errors, fp16 overflow, a wedged driver) made reproducible, so the guard that keeps them off the
screen is tested with the real runtime.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from pydantic import Field

from . import register
from .cppn import CPPN, CPPNSettings


class InjectedFault(RuntimeError):
    """The fault the ``faulty`` decoder raises by design."""


class FaultySettings(CPPNSettings):
    raise_every: Annotated[int, Field(ge=0, description="raise on every Nth frame (0 = never)")] = 0
    nan_every: Annotated[int, Field(ge=0, description="return NaNs on every Nth frame (0 = never)")] = 0
    stall_every: Annotated[int, Field(ge=0, description="hang for stall_s seconds on every Nth frame (0 = never)")] = 0
    stall_s: Annotated[float, Field(ge=0, le=3600)] = 0.0
    oom_above: Annotated[int, Field(ge=0, description="raise out-of-memory while the frame is wider (0 = never)")] = 0
    prepare_s: Annotated[float, Field(ge=0, le=3600, description="prepare() takes this long (a model load)")] = 0.0


@register("faulty")
class FaultyCPPN(CPPN):
    Settings = FaultySettings

    def __init__(self, settings: FaultySettings, device: str = "cpu") -> None:
        super().__init__(settings, device)
        self.frames = 0

    def prepare(self) -> None:
        time.sleep(self.settings.prepare_s)
        super().prepare()

    def render(self, request):
        self.frames += 1
        s = self.settings
        if s.stall_every and self.frames % s.stall_every == 0:
            time.sleep(s.stall_s)
        if s.oom_above and s.resolution[0] > s.oom_above:
            import torch

            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected: width {s.resolution[0]})")
        if s.raise_every and self.frames % s.raise_every == 0:
            raise InjectedFault(f"injected exception at frame {self.frames}")
        frame = super().render(request)
        if s.nan_every and self.frames % s.nan_every == 0:
            frame = frame.copy()
            frame[::7, ::5] = np.nan
        return frame
