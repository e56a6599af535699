"""Parts: the runtime's subsystems (inputs, the health endpoint, the state keeper, ...) behind one small protocol,
found by name in a registry, like the decoders.

A part is registered with the config table its settings live in, its settings model and the bus parameters it
writes; the config is built from the registry (``[inputs.osc]``, ``[health]``, ...) and so is the parameter set.
The runtime builds every registered part from its settings, starts them in order, supervises them (a part whose
worker died is counted and restarted with a backoff), reports their stats in /health, calls their optional per-tick
hooks, and stops them in reverse order. Adding a part is one module with a ``@register`` builder (plus, for a
built-in, its line in ``_BUILTINS``)::

    @register("ticker", table="inputs.ticker", settings=TickerSettings, params=ticker_specs)
    def build(settings: TickerSettings, ctx: PartContext) -> Part | None:
        return Ticker(settings, ctx.bus) if settings.enabled else None
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel

if TYPE_CHECKING:
    from .bus import ParamBus, ParamSpec

INPUTS = "inputs"  # parts whose table is [inputs.<name>] are inputs: off with --no-inputs, listed under "inputs"


@runtime_checkable
class Part(Protocol):
    """What the runtime needs of a part. ``start()`` returns at once (a part works on its own thread or process, or
    only in its hooks) and raises only for a start-up error (a port that cannot be bound); ``stop()`` is idempotent;
    ``alive`` is False once started work has ended unexpectedly (the runtime then restarts the part);
    ``stats()`` is a small JSON-able dict for /health (``rejects``: counts of refused input by reason; ``failures``:
    contained faults, which make health say "degraded").

    Optional hooks, looked up by name on the loop thread, all must return quickly and never block:
    ``tick(moment)`` once per loop tick after the frame is presented, ``plan(plan, moment) -> plan`` to add
    decoder inputs (the camera's img2img source) to the plan before it is submitted, and
    ``events(events, moment) -> events`` to hold back or let through the tick's events (Link: scene changes on
    the bar), and ``overlay(ctx, framebuffer, size)`` to draw over the window after the outputs (GL on the loop
    thread: the archive's live map). Optional attributes: ``restart_max_s``, the longest wait between restarts
    after repeated deaths (cheap to restart: short; the default is a minute). A part's ``stats()`` may carry
    ``degraded``: why it does not do its work now ("" while it does), which /health reports under ``reasons``.
    Threads a part owns run as :class:`~installation.ops.supervise.SupervisedThread`: a fault in one is counted and
    it runs again, without the part dying.
    """

    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def alive(self) -> bool: ...

    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Moment:
    """What a part's hook learns of the current tick: show time, its step, the scene playing, and whether the
    decoder runs in another process (then large plan extras should travel only when they change)."""

    t: float
    dt: float
    scene: Any  # the playing scene, a config.Scene (the config is built from this registry: it sits above it)
    remote_decoder: bool = False


@dataclass
class PartContext:
    """What a builder may use: the bus, the show's scene names (they change on reload), the config's folder, the
    runtime's health and state snapshots, and the runtime's options (``serve_health``, ``keep_state``,
    ``only_scene``)."""

    bus: "ParamBus"
    scenes: Callable[[], Sequence[str]]
    base_dir: Path
    snapshot: Callable[[], dict[str, Any]] = dict
    state: Callable[[], dict[str, Any]] = dict
    serve_health: bool = False
    keep_state: bool = False
    only_scene: str | None = None
    # The taps a watching part attaches to: the bus journal is bus.subscribe(); presented frames come from here
    # (``presented.add(sink)``, see render/outputs.py); post-render hook results arrive on the bus.
    presented: Any = None
    # The whole validated config, for a part that serves what another part's table says (OSCQuery: the OSC port).
    config: Any = None
    clock: Any = None  # the show clock (a part may share its source: Link)
    # Scene name -> {"params": the parameters that act in it, "prompts": whether its decoder reads prompts,
    # "description"} (installation/scene_params.py), for the page and presets.
    scene_info: Callable[[], Mapping[str, Mapping[str, Any]]] = dict


Builder = Callable[[Any, PartContext], "Part | None"]


@dataclass(frozen=True)
class PartInfo:
    """A registered part: its name, the config table of its settings (``"inputs.osc"``, ``"health"``), the
    settings model (its defaults are the table's), the builder (``None`` from it: disabled), the bus parameters it
    writes for given settings, and its place in the start order (lower first; stopped in reverse)."""

    name: str
    table: str
    settings: type[BaseModel]
    build: Builder
    params: Callable[[Any], Iterable["ParamSpec"]] | None = None
    order: int = 100
    # Optional: post-render hooks the part needs in the decoder process, as (hook name, options) pairs, from its
    # settings and the loaded show; and a start-up check of its files from its settings and the config's folder
    # (raises ValueError or OSError).
    hooks: Callable[[Any, Any], Iterable[tuple[str, Any]]] | None = None
    check: Callable[[Any, Path], None] | None = None

    @property
    def is_input(self) -> bool:
        """bool: an ``[inputs.<name>]`` part (steers the show; off when the runtime runs without inputs)."""
        return self.table.split(".", 1)[0] == INPUTS

    @property
    def fault_key(self) -> str:
        """str: the runtime's fault counter for this part's deaths (``input.<name>`` or ``part.<name>``)."""
        return f"{'input' if self.is_input else 'part'}.{self.name}"

    def settings_in(self, config: Any) -> Any:
        """This part's settings inside a validated config (its table, walked by attribute)."""
        obj = config
        for key in self.table.split("."):
            obj = getattr(obj, key)
        return obj


_LOCK = threading.Lock()
_REGISTRY: dict[str, PartInfo] = {}
_generation = 0  # bumped on every change, so a config model built from the registry knows when it is stale
# Built-in parts, imported on first use of the registry (their modules import devices' libraries only when started).
_BUILTINS = {
    "health": "installation.ops.health",
    "state": "installation.ops.state",
    "osc": "installation.inputs.osc",
    "audio": "installation.inputs.audio",
    "camera": "installation.inputs.camera",
    "archive": "installation.archive",
    "search": "installation.archive.seek",
    "vision": "installation.vision.part",
    "sinks": "installation.render.ndi",
    "web": "installation.ops.web",
    "presets": "installation.ops.presets",
    "oscquery": "installation.inputs.oscquery",
    "midi": "installation.inputs.midi",
    "link": "installation.sync",
}
_loaded = False


def register(name: str, *, table: str, settings: type[BaseModel],
             params: Callable[[Any], Iterable["ParamSpec"]] | None = None,
             order: int = 100, hooks: Callable[[Any, Any], Iterable[tuple[str, Any]]] | None = None,
             check: Callable[[Any, Path], None] | None = None) -> Callable[[Builder], Builder]:
    """Decorator on a builder ``build(settings, ctx) -> Part | None``: make a part available as ``name`` with its
    settings in the config table ``table`` (at most two levels: ``"health"`` or ``"inputs.osc"``)."""
    if not 1 <= len(table.split(".")) <= 2 or not all(table.split(".")):
        raise ValueError(f"part {name!r}: table {table!r} must be 'name' or 'group.name'")

    def deco(build: Builder) -> Builder:
        global _generation
        with _LOCK:
            taken = next((i for i in _REGISTRY.values() if i.table == table and i.name != name), None)
            if taken is not None:
                raise ValueError(f"part {name!r}: table [{table}] is already part {taken.name!r}'s")
            _REGISTRY[name] = PartInfo(name, table, settings, build, params, order, hooks, check)
            _generation += 1
        return build

    return deco


def unregister(name: str) -> None:
    """Forget a registered part (tests that register their own)."""
    global _generation
    with _LOCK:
        if _REGISTRY.pop(name, None) is not None:
            _generation += 1


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTINS.values():
        importlib.import_module(module)


def generation() -> int:
    """int: changes whenever a part is registered or unregistered."""
    _load_builtins()
    return _generation


def infos() -> list[PartInfo]:
    """Every registered part in start order (built-ins imported on first use)."""
    _load_builtins()
    with _LOCK:
        found = list(_REGISTRY.values())
    return sorted(found, key=lambda i: i.order)  # stable: registration order within one order value


def names() -> list[str]:
    """The registered parts' names, in start order."""
    return [i.name for i in infos()]


def info(name: str) -> PartInfo:
    """The registration of ``name``; KeyError naming the known parts when there is none."""
    for i in infos():
        if i.name == name:
            return i
    raise KeyError(f"unknown part {name!r}; known: {', '.join(names())}")


def param_specs(config: Any) -> list["ParamSpec"]:
    """The bus parameters the registered parts write, for a validated config (zero while a part is off, so routes
    can name them anywhere)."""
    out: list[ParamSpec] = []
    for i in infos():
        if i.params is not None:
            out.extend(i.params(i.settings_in(config)))
    return out


def hook_specs(show: Any) -> tuple[tuple[str, Any], ...]:
    """The post-render hooks the registered parts need for a loaded show (``(name, options)`` pairs)."""
    out: list[tuple[str, Any]] = []
    for i in infos():
        if i.hooks is not None:
            out.extend(i.hooks(i.settings_in(show.config), show))
    return tuple(out)


def check_all(config: Any, base_dir: Path) -> None:
    """Run every part's start-up check; raises ``(table, error)`` as ``PartCheckError``."""
    for i in infos():
        if i.check is not None:
            try:
                i.check(i.settings_in(config), base_dir)
            except (ValueError, OSError) as e:
                raise PartCheckError(i.table, str(e)) from None


class PartCheckError(Exception):
    """A part's files are not usable: ``table`` is its config table, ``str()`` the one-line reason."""

    def __init__(self, table: str, message: str) -> None:
        super().__init__(message)
        self.table = table


def build_all(config: Any, ctx: PartContext, *, inputs: bool = True) -> dict[str, Part]:
    """Build the enabled parts from a validated config, in start order (``inputs=False`` leaves every input out)."""
    built: dict[str, Part] = {}
    for i in infos():
        if i.is_input and not inputs:
            continue
        part = i.build(i.settings_in(config), ctx)
        if part is not None:
            built[i.name] = part
    return built


__all__ = ["INPUTS", "Moment", "Part", "PartCheckError", "PartContext", "PartInfo", "build_all", "check_all",
           "generation", "hook_specs", "info", "infos", "names", "param_specs", "register", "unregister"]
