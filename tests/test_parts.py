"""Parts: a part registered here (a real one: a thread, a tick hook, a bus parameter, its own settings table) goes
through the real config loader and the real runtime: validation, parameters, start/tick/stop, supervision, /health."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from installation import parts
from installation.bus import ParamBus, ParamSpec
from installation.clock import Clock, FixedClock
from installation.config import Config, ConfigError, load_show
from installation.render.targets import HeadlessTarget, Target
from installation.runtime import Runtime
from support import scene_toml, wait_until, write_show


class TickerSettings(BaseModel):
    """``[inputs.ticker]``: counts loop ticks and writes the count to the bus every ``every`` ticks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    every: int = Field(default=1, ge=1, le=1000)


def ticker_specs(settings: TickerSettings) -> list[ParamSpec]:
    return [ParamSpec("ticker.count", min=0.0, max=1e9, default=0.0, doc="loop ticks counted by the ticker part")]


class Ticker:
    """A small real part: a worker thread (which can die), a tick hook that writes to the bus, counters."""

    def __init__(self, settings: TickerSettings, bus: ParamBus) -> None:
        self.settings, self.bus = settings, bus
        self.ticks = self.starts = self.stops = 0
        self.scenes: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._stop.wait, name="ticker", daemon=True)
        self._thread.start()
        self.starts += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.stops += 1

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        return {"ticks": self.ticks, "starts": self.starts, "rejects": {"late": 0}}

    def tick(self, moment: parts.Moment) -> None:
        self.ticks += 1
        self.scenes.add(moment.scene.name)
        if self.ticks % self.settings.every == 0:
            self.bus.set("ticker.count", float(self.ticks), source="ticker")


def build_ticker(settings: TickerSettings, ctx: parts.PartContext) -> Ticker | None:
    return Ticker(settings, ctx.bus) if settings.enabled else None


@pytest.fixture
def ticker():
    parts.register("ticker", table="inputs.ticker", settings=TickerSettings, params=ticker_specs)(build_ticker)
    try:
        yield
    finally:
        parts.unregister("ticker")


def test_builtin_parts_and_their_tables():
    assert parts.names()[:2] == ["health", "state"]  # started first, stopped last
    assert set(parts.names()) >= {"health", "state", "osc", "audio", "camera"}
    assert parts.info("osc").table == "inputs.osc" and parts.info("osc").is_input
    assert not parts.info("health").is_input and parts.info("state").fault_key == "part.state"
    # the config model is the registry's: one [inputs] sub-table per input, [health] and [state] at the top
    assert set(Config.model_fields["inputs"].annotation.model_fields) == {"osc", "audio", "camera", "midi"}
    assert {"health", "state"} <= set(Config.model_fields)
    with pytest.raises(KeyError, match="unknown part 'nope'"):
        parts.info("nope")


def test_a_table_is_one_parts(ticker):
    with pytest.raises(ValueError, match="already part 'ticker'"):
        parts.register("other", table="inputs.ticker", settings=TickerSettings)(build_ticker)
    with pytest.raises(ValueError, match="must be 'name' or 'group.name'"):
        parts.register("deep", table="a.b.c", settings=TickerSettings)(build_ticker)


def test_a_registered_part_brings_its_settings_table(tmp_path, ticker):
    cfg = write_show(tmp_path, {"a": scene_toml()}, extra="[inputs.ticker]\nenabled = true\nevery = 0\n")
    with pytest.raises(ConfigError) as e:
        load_show(cfg)
    assert e.value.key == "inputs.ticker.every" and "greater than or equal to 1" in str(e.value)
    cfg.write_text(cfg.read_text().replace("every = 0", "often = 2"))
    with pytest.raises(ConfigError) as e:
        load_show(cfg)
    assert e.value.key == "inputs.ticker.often" and "unknown key; allowed: enabled, every" in str(e.value)


def test_an_unregistered_parts_table_is_an_unknown_key(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml()}, extra="[inputs.ticker]\nenabled = true\n")
    with pytest.raises(ConfigError) as e:
        load_show(cfg)
    assert e.value.key == "inputs.ticker" and "allowed: audio, camera, midi, osc" in str(e.value)


def test_a_registered_part_runs_in_the_real_runtime(tmp_path, ticker):
    cfg = write_show(tmp_path, {"a": scene_toml()}, extra="[inputs.ticker]\nenabled = true\nevery = 2\n")
    spec = load_show(cfg)
    assert spec.config.inputs.ticker == TickerSettings(enabled=True, every=2)
    assert spec.params["ticker.count"].max == 1e9  # its parameter is the show's: routes and OSC may name it
    target = HeadlessTarget(spec.config.output.size)
    clock = FixedClock(20)
    assert isinstance(target, Target) and isinstance(clock, Clock)
    rt = Runtime(spec, target, clock, fps=20, serve_health=True)
    tick = rt.part("ticker")
    try:
        assert isinstance(tick, Ticker) and isinstance(tick, parts.Part) and list(rt.parts)[-1] == "ticker"
        assert rt.bus.spec("ticker.count") is not None
        rt.start()
        assert tick.starts == 1 and tick.alive
        for _ in range(10):
            rt.step()
        assert tick.ticks == 10 and tick.scenes == {"a"}
        assert rt.bus.targets()["ticker.count"] == 10.0  # written by its tick hook every second tick
        # its worker thread dies: counted and restarted by the supervisor within a second of show time
        tick._stop.set()
        assert wait_until(lambda: not tick.alive, 5)
        for _ in range(31):  # to t = 2.0 s: supervision at t = 1 s, the health report again at t = 2 s
            rt.step()
        assert tick.alive and tick.starts == 2 and rt.faults["input.ticker"] == 1
        health = rt.health_snapshot()
        assert health["faults"]["input_deaths"] == {"ticker": 1}
        assert health["inputs"]["ticker"]["ticks"] == 41 and health["inputs"]["audio"] == {"state": "off"}
        assert health["faults"]["inputs_rejects"]["ticker"] == 0
        with urllib.request.urlopen(rt.health_server.url, timeout=10) as r:  # and so over HTTP
            body = json.loads(r.read())
        assert body["inputs"]["ticker"]["starts"] == 2 and body["health"]["max_connections"] >= 1
    finally:
        rt.close()
        target.close()
    assert not tick.alive and tick.stops >= 2  # stopped by the restart, then by close()
    assert rt.health_server is not None and not rt.health_server.running


def test_without_inputs_the_part_is_not_built(tmp_path, ticker):
    cfg = write_show(tmp_path, {"a": scene_toml()}, extra="[inputs.ticker]\nenabled = true\n")
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20, inputs=False)
    try:
        assert rt.part("ticker") is None and rt.osc is None and list(rt.parts) == ["state", "archive", "presets"]  # presets: not an input (no [inputs.*] table)
        for _ in range(25):
            rt.step()
        assert rt.health_snapshot()["inputs"]["ticker"] == {"state": "off"}
        assert rt.bus.spec("ticker.count") is not None  # declared all the same: zero while off
    finally:
        rt.close()
        target.close()


class PeekSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False


class Peek:
    """A watching part (the shape of an archive or a web preview): it steers nothing, it takes the presented frames
    through a sink and the bus journal through a subscription."""

    def __init__(self, ctx: parts.PartContext) -> None:
        from installation.render.outputs import LatestFrame

        self.frames = LatestFrame(max_fps=0)
        ctx.presented.add(self.frames)
        self.journal = ctx.bus.subscribe()

    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def alive(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {"frames": self.frames.taken, "journal_dropped": self.journal.dropped}


def test_a_watching_part_reaches_the_presented_frames_and_the_bus_journal(tmp_path):
    from installation.bus import Event
    from installation.render.targets import pixels

    parts.register("peek", table="peek", settings=PeekSettings)(
        lambda settings, ctx: Peek(ctx) if settings.enabled else None)
    try:
        cfg = write_show(tmp_path, {"a": scene_toml(), "b": scene_toml()}, extra="[peek]\nenabled = true\n")
        spec = load_show(cfg)
        target = HeadlessTarget(spec.config.output.size)
        rt = Runtime(spec, target, FixedClock(20), fps=20, inputs=False)
        try:
            peek = rt.parts["peek"]
            for _ in range(3):
                rt.step()
            rt.bus.post(Event("scene.next", source="test"))
            rt.step()
            assert peek.frames.taken == 4
            rgb, size, t = peek.frames.frame
            assert size == target.size and t is None  # a fixed-step render: every frame, no wall-clock time
            assert pixels(rgb, size).mean() > 10  # what the output showed, not black
            seen = [(c.kind, c.name, c.source) for c in peek.journal.drain()]
            assert ("event", "scene.next", "test") in seen and ("reset", "", "scene") in seen
            assert rt.health_snapshot() is not None
        finally:
            rt.close()
            target.close()
    finally:
        parts.unregister("peek")
