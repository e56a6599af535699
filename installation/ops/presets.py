"""Presets: a named set of the playing scene's parameters, stored beside the config and recalled with a fade.

``/preset/store <name>`` (OSC, the web page) saves the current targets of the parameters that act in the playing
scene (``installation/scene_params.py``; the inputs' own features left out) under ``name`` in ``[presets] file``
(``presets.json`` beside the config, written atomically); ``/preset/recall <name> [seconds]`` glides those parameters
from where they are to the stored values over ``seconds`` (``[presets] fade_s`` when not given; 0 jumps). The part
watches the bus journal for the two events (the control surface posts them after checking the name), steps a fade
about ``rate`` times a second on its own supervised thread, and publishes the stored names as the bus note
``presets`` (what the surface checks a recall against and the page lists) and the last recalled as ``preset``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field

from ..bus import ParamBus
from ..parts import PartContext, register
from .state import write_atomic
from .supervise import Worker

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9 _.\-]{1,64}$")
MAX_PRESETS = 256
MAX_FADE_S = 600.0
EXCLUDE = ("audio.", "camera.", "midi.", "link.", "vision.")


class PresetSettings(BaseModel):
    """``[presets]``: where presets are kept and how a recall fades."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    file: str = Field(default="presets.json", description="the presets, relative to the config's folder")
    fade_s: Annotated[float, Field(ge=0.0, le=MAX_FADE_S)] = Field(
        default=2.0, description="seconds a recall glides over when the message names none")
    rate: Annotated[float, Field(gt=0.0, le=240.0)] = Field(default=30.0, description="fade steps per second")


def valid_name(name: Any) -> bool:
    """Whether ``name`` may name a preset: 1-64 letters, digits, spaces, ``_ . -``."""
    return isinstance(name, str) and bool(NAME.match(name))


class Presets(Worker):
    """The presets part: the file, the journal watcher and the fades."""

    thread_name = "presets"

    def __init__(self, settings: PresetSettings, bus: ParamBus, base_dir: Path | str,
                 snapshot: Callable[[], Mapping[str, Any]] = dict,
                 scene_info: Callable[[], Mapping[str, Mapping[str, Any]]] = dict) -> None:
        self.settings = settings
        self.bus = bus
        self.path = Path(base_dir) / settings.file
        self._snapshot = snapshot
        self._scene_info = scene_info
        super().__init__()
        self._lock = threading.Lock()
        self._fade: tuple[float, float, dict[str, tuple[float, float]]] | None = None  # (t0, seconds, a -> b)
        self.counts = {"stored": 0, "recalled": 0, "unknown": 0, "file_errors": 0, "fades_done": 0}
        self._presets: dict[str, dict[str, Any]] = self._load()
        self._publish()

    # -- the file ------------------------------------------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("presets file %s unreadable (%s); starting without presets", self.path, e)
            self.counts["file_errors"] += 1
            return {}
        out: dict[str, dict[str, Any]] = {}
        items = data.get("presets", {}) if isinstance(data, dict) else {}
        for name, p in list(items.items() if isinstance(items, dict) else ())[:MAX_PRESETS]:
            if not valid_name(name) or not isinstance(p, dict) or not isinstance(p.get("params"), dict):
                continue
            params = {k: float(v) for k, v in p["params"].items()
                      if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                      and self.bus.spec(k) is not None}
            out[name] = {"scene": str(p.get("scene", ""))[:200], "params": params}
        return out

    def _save(self) -> None:
        with self._lock:
            data = json.dumps({"presets": self._presets}, indent=1, sort_keys=True)
        try:
            write_atomic(self.path, data.encode())
        except OSError as e:
            with self._lock:
                self.counts["file_errors"] += 1
            log.warning("presets: cannot save %s: %s", self.path, e)

    def _publish(self) -> None:
        with self._lock:
            names = sorted(self._presets)
        self.bus.note("presets", names, "presets")

    @property
    def names(self) -> list[str]:
        """list: the stored presets' names."""
        with self._lock:
            return sorted(self._presets)

    # -- store and recall ---------------------------------------------------------------------------------------------
    def store(self, name: str) -> bool:
        """Store the playing scene's parameters (their targets now) as ``name``; False for a bad name."""
        if not valid_name(name):
            return False
        scene = str((self._snapshot() or {}).get("scene") or "")
        acting = list(((self._scene_info() or {}).get(scene) or {}).get("params", ())) or list(self.bus.specs)
        targets = self.bus.targets()
        params = {n: float(targets[n]) for n in acting if n in targets and not n.startswith(EXCLUDE)}
        with self._lock:
            if name not in self._presets and len(self._presets) >= MAX_PRESETS:
                return False
            self._presets[name] = {"scene": scene, "params": params}
            self.counts["stored"] += 1
        self._save()
        self._publish()
        log.info("preset %r stored (%d parameters of scene %s)", name, len(params), scene or "-")
        return True

    def recall(self, name: str, seconds: float | None = None, now: float | None = None) -> bool:
        """Start gliding to preset ``name`` over ``seconds`` (the configured fade when None); False if unknown."""
        with self._lock:
            preset = self._presets.get(name)
            if preset is None:
                self.counts["unknown"] += 1
                return False
            self.counts["recalled"] += 1
        fade = self.settings.fade_s if seconds is None else min(max(float(seconds), 0.0), MAX_FADE_S)
        targets = self.bus.targets()
        path = {n: (targets.get(n, v), v) for n, v in preset["params"].items() if self.bus.spec(n) is not None}
        with self._lock:
            self._fade = (time.monotonic() if now is None else now, fade, path)
        self.bus.note("preset", name, "presets")
        self.step(now)
        return True

    def step(self, now: float | None = None) -> bool:
        """Set the fading parameters for time ``now``; True while a fade goes on."""
        with self._lock:
            fade = self._fade
        if fade is None:
            return False
        t0, seconds, path = fade
        now = time.monotonic() if now is None else now
        u = 1.0 if seconds <= 0 else min(max((now - t0) / seconds, 0.0), 1.0)
        for n, (a, b) in path.items():
            self.bus.set(n, a + (b - a) * u, source="preset")
        if u >= 1.0:
            with self._lock:
                if self._fade is fade:
                    self._fade = None
                self.counts["fades_done"] += 1
            return False
        return True

    # -- the part -----------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        sub = self.bus.subscribe(maxlen=256)
        period = 1.0 / self.settings.rate
        try:
            while not self._stop.wait(period):
                for change in sub.drain():
                    if change.kind != "event":
                        continue
                    if change.name == "preset.store" and isinstance(change.value, str):
                        self.store(change.value)
                    elif change.name == "preset.recall" and isinstance(change.value, tuple):
                        name, seconds = change.value
                        self.recall(name, seconds)
                self.step()
        finally:
            sub.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self.counts)
            out["presets"] = len(self._presets)
            out["fading"] = self._fade is not None
        return out


@register("presets", table="presets", settings=PresetSettings, order=6)
def build(settings: PresetSettings, ctx: PartContext) -> Presets | None:
    """The presets part: on unless ``[presets] enabled = false``."""
    if not settings.enabled:
        return None
    return Presets(settings, ctx.bus, ctx.base_dir, ctx.snapshot, ctx.scene_info)
