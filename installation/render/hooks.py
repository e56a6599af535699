"""Post-render hooks: the tap on decoded frames.

A hook looks at each decoded frame where frames are made (the decoder process, where the GPU is) and says what it
learned as bus parameters and events. Results travel back beside frames and stats (a "hook" message on the decoder
pipe; straight to the bus when the decoder runs in this process), so modulation, OSC feedback and /health see them
like any input's. A hook that raises is counted and skipped; it never costs the decoder a frame. Hooks are named in
the config (``[decoder] hooks = ["frame_stats"]``) and declare their parameters, so routes and OSC can use them.
A CLIP worker that describes or scores frames is the next hook.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from ..bus import Event, ParamBus, ParamSpec
from .slot import Frame

log = logging.getLogger(__name__)


class FrameHook(Protocol):
    """Looks at decoded frames; returns ``{"params": {name: value}, "events": [(kind, value), ...]}`` or None."""

    name: str
    every: int  # run on every Nth frame

    def __call__(self, frame: Frame) -> dict[str, Any] | None: ...


class FrameStats:
    """How bright the decoded image is and how much it moves: cheap (a 4x subsampled frame), every frame."""

    name = "frame_stats"
    every = 1

    def __init__(self) -> None:
        self._prev: np.ndarray | None = None

    @staticmethod
    def params() -> list[ParamSpec]:
        return [ParamSpec("frame.brightness", "float", 0.0, 1.0, 0.0, 0.1, 0.1, "mean luma of the decoded frame"),
                ParamSpec("frame.motion", "float", 0.0, 1.0, 0.0, 0.1, 0.3,
                          "mean change from the previous decoded frame (0 still, 1 every pixel flips)")]

    def __call__(self, frame: Frame) -> dict[str, Any]:
        small = frame.rgb[::4, ::4].astype(np.float32) * (1.0 / 255.0)
        luma = small @ np.array([0.2126, 0.7152, 0.0722], np.float32)
        motion = 0.0 if self._prev is None or self._prev.shape != luma.shape else \
            float(np.abs(luma - self._prev).mean())
        self._prev = luma
        return {"params": {"frame.brightness": float(luma.mean()), "frame.motion": min(motion, 1.0)}}


HOOKS: dict[str, type] = {"frame_stats": FrameStats}


def hook_params(names: Iterable[str]) -> list[ParamSpec]:
    """The bus parameters the named hooks set (ValueError naming the allowed hooks for an unknown one)."""
    out = []
    for name in names:
        if name not in HOOKS:
            raise ValueError(f"unknown hook {name!r}; allowed: {', '.join(sorted(HOOKS))}")
        out += HOOKS[name].params()
    return out


def apply_result(bus: ParamBus, result: dict[str, Any]) -> None:
    """Put one hook result on the bus, with ``hook:<name>`` as its source (values out of range are clamped)."""
    source = f"hook:{result.get('hook', '?')}"
    for name, value in (result.get("params") or {}).items():
        bus.set(name, value, source=source)
    for kind, value in result.get("events") or ():
        bus.post(Event(str(kind), value, source))


class HookRunner:
    """Runs the named hooks on each published frame and hands each result to ``deliver``."""

    def __init__(self, names: Iterable[str], deliver: Callable[[dict[str, Any]], None]) -> None:
        self.hooks = [HOOKS[n]() for n in names]
        self.deliver = deliver
        self.runs = 0
        self.faults = 0

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def __call__(self, frame: Frame) -> None:
        for hook in self.hooks:
            if frame.seq % hook.every:
                continue
            try:
                result = hook(frame)
                if result:
                    self.deliver({"hook": hook.name, **result})
                self.runs += 1
            except Exception as e:  # noqa: BLE001 - a hook never costs the decoder a frame
                self.faults += 1
                if self.faults in (1, 100, 10000):
                    log.warning("frame hook %s failed (%s), %d so far", hook.name, e, self.faults)
