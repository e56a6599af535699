"""Post-render hooks: the tap on decoded frames.

A hook looks at each decoded frame where frames are made (the decoder process, where the GPU is) and says what it
learned as bus parameters and events. Results travel back beside frames and stats (a "hook" message on the decoder
pipe; straight to the bus when the decoder runs in this process), so modulation, OSC feedback and /health see them
like any input's. A hook that raises is counted and skipped; it never costs the decoder a frame. Hooks are named in
the config (``[decoder] hooks = ["frame_stats"]``) and declare their parameters, so routes and OSC can use them;
a part may contribute a hook with its own options (the CLIP worker of ``[vision]``, see ``parts.hook_specs``).

Optional hook methods: ``bind(deliver)`` (a hook that works on its own thread delivers its results later, so the
decoder never waits for it), ``admit(frame) -> bool`` (a gate, run before the frame is published: False keeps it
off the screen, the last admitted frame stays) and ``close()``. Results may carry ``notes`` (facts for watchers,
see ``ParamBus.note``) besides ``params`` and ``events``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from ..bus import Event, ParamBus, ParamSpec
from ..ops.logs import RepeatLog
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
_MODULE_HOOKS = {"vision": ("installation.vision.hook", "VisionHook")}  # contributed by parts, imported on use


def hook_class(name: str) -> type:
    """The hook class registered as ``name`` (KeyError for an unknown one)."""
    if name in _MODULE_HOOKS:
        import importlib

        module, attr = _MODULE_HOOKS[name]
        return getattr(importlib.import_module(module), attr)
    return HOOKS[name]


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
    for name, value in (result.get("notes") or {}).items():
        bus.note(name, value, source=source)
    for kind, value in result.get("events") or ():
        bus.post(Event(str(kind), value, source))


class _ClosedGate:
    """Stands in for a frame check whose hook could not start: no frame passes (fail closed)."""

    every = 1

    def __init__(self, name: str) -> None:
        self.name = name

    def admit(self, frame: Frame) -> bool:
        return False

    def __call__(self, frame: Frame) -> None:
        return None


class HookRunner:
    """Runs the hooks on each published frame and hands each result to ``deliver``. ``specs`` are hook names or
    ``(name, options)`` pairs (a hook with options is built as ``cls(options)``)."""

    def __init__(self, specs: Iterable[str | tuple[str, Any]], deliver: Callable[[dict[str, Any]], None]) -> None:
        self.hooks = []
        self.faults = 0
        self._repeats = RepeatLog(log, interval=60.0)  # a hook failing on every frame: a line a minute
        for spec in specs:
            name, options = (spec, None) if isinstance(spec, str) else spec
            cls = hook_class(name)
            try:
                self.hooks.append(cls() if options is None else cls(options))
            except Exception as e:  # noqa: BLE001 - a hook that cannot start never stops the decoder...
                self.faults += 1
                log.error("frame hook %s could not start: %s", name, e)
                if getattr(options, "fail_closed", False):  # ...but a frame check that cannot run shows nothing
                    self.hooks.append(_ClosedGate(name))
        self.deliver = deliver
        self.gates = [h for h in self.hooks if callable(getattr(h, "admit", None))]
        for hook in self.hooks:
            if callable(getattr(hook, "bind", None)):
                hook.bind(lambda result, name=hook.name: self.deliver({"hook": name, **result}))
        self.runs = 0
        self.held = 0  # frames a gate kept off the screen (or whose check failed)

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def admit(self, frame: Frame) -> bool:
        """Whether every gate lets ``frame`` be published; a gate that raises holds the frame (counted)."""
        for gate in self.gates:
            try:
                ok = gate.admit(frame)
            except Exception as e:  # noqa: BLE001 - a failing check holds the frame: the guard fails closed
                self.faults += 1
                ok = False
                self._repeats.warning(gate.name, "frame gate %s failed (%s), %d so far", gate.name, e, self.faults)
            if not ok:
                self.held += 1
                return False
        return True

    def close(self) -> None:
        for hook in self.hooks:
            close = getattr(hook, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - shutting down
                    log.exception("closing hook %s failed", hook.name)

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
                self._repeats.warning(hook.name, "frame hook %s failed (%s), %d so far", hook.name, e, self.faults)
