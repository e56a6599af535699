"""Modulation matrix math: curves, LFOs, sums, clamps, smoothing, event routes, validation, example config."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from installation.bus import ParamBus, ParamSpec
from installation.modulation import LFO, ModMatrix, ModRoute, ModulationSettings

SPECS = {
    s.name: s
    for s in (
        ParamSpec("speed", min=0.0, max=4.0, default=1.0),
        ParamSpec("strength", min=0.0, max=1.0, default=0.2),
        ParamSpec("steps", type="int", min=1, max=8, default=2),
        ParamSpec("audio.low", min=0.0, max=1.0),
        ParamSpec("audio.onset", min=0.0, max=1.0),
        ParamSpec("camera.presence", min=0.0, max=1.0),
        ParamSpec("fader", min=-10.0, max=10.0),
    )
}


def test_lfo_shapes_and_phase():
    sine = LFO(name="a", shape="sine", rate=1.0)
    assert sine.value(0.0) == pytest.approx(0.0)
    assert sine.value(0.25) == pytest.approx(0.5)
    assert sine.value(0.5) == pytest.approx(1.0)
    tri = LFO(name="t", shape="triangle", rate=2.0)
    assert [tri.value(x) for x in (0.0, 0.125, 0.25, 0.5)] == pytest.approx([0.0, 0.5, 1.0, 0.0])
    sq = LFO(name="s", shape="square", rate=1.0, phase=0.5)
    assert sq.value(0.1) == 0.0 and sq.value(0.6) == 1.0
    saw = LFO(name="w", shape="saw", rate=0.5, bipolar=True)
    assert saw.value(0.0) == pytest.approx(-1.0) and saw.value(1.0) == pytest.approx(0.0)
    # far from t=0 the phase is still exact enough
    assert sine.value(1e6 + 0.5) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "curve,u,expected",
    [
        ("linear", 0.25, 0.25),
        ("exp", 0.0, 0.0),
        ("exp", 1.0, 1.0),
        ("exp", 0.5, math.expm1(2.0) / math.expm1(4.0)),
        ("log", 0.5, math.log1p(2.0) / math.log1p(4.0)),
        ("step", 0.49, 0.0),
        ("step", 0.5, 1.0),
    ],
)
def test_curves(curve, u, expected):
    assert ModRoute(source="x", target="y", curve=curve).shape(u) == pytest.approx(expected)


def test_step_levels():
    r = ModRoute(source="x", target="y", curve="step", steps=5)
    assert [r.shape(u) for u in (0.0, 0.2, 0.45, 0.99, 1.0)] == pytest.approx([0.0, 0.25, 0.5, 1.0, 1.0])


def test_sum_gain_offset_and_clamp():
    m = ModMatrix(
        [
            {"source": "audio.low", "target": "speed", "gain": 2.0},
            {"source": "camera.presence", "target": "speed", "gain": 1.0, "offset": -0.5},
        ],
        specs=SPECS,
    )
    out = m.apply({"speed": 1.0, "audio.low": 0.25, "camera.presence": 1.0}, t=0.0, dt=0.0)
    assert out == {"speed": pytest.approx(1.0 + 0.5 + 0.5)}
    out = m.apply({"speed": 3.5, "audio.low": 1.0, "camera.presence": 1.0}, t=0.0, dt=0.0)
    assert out["speed"] == 4.0  # clamped to the spec's max
    # base comes from the spec default when the values lack it; sources outside range are clamped to 0..1
    out = m.apply({"audio.low": 7.0}, t=0.0, dt=0.0)
    assert out["speed"] == pytest.approx(1.0 + 2.0 - 0.5)


def test_source_range_and_int_target():
    m = ModMatrix([ModRoute(source="fader", target="steps", range=(0.0, 10.0), gain=6.0)], specs=SPECS)
    assert m.apply({"fader": 5.0}, 0.0, 0.0) == {"steps": 5.0}  # 2 + 3
    assert m.apply({"fader": -5.0}, 0.0, 0.0) == {"steps": 2.0}


def test_smoothing_is_one_pole_and_deterministic():
    def run():
        m = ModMatrix([ModRoute(source="audio.low", target="strength", gain=0.5, smoothing=0.1)], specs=SPECS)
        vals = [m.apply({"strength": 0.0, "audio.low": 0.0}, 0.0, 0.0)["strength"]]
        for n in range(1, 31):
            vals.append(m.apply({"strength": 0.0, "audio.low": 1.0}, n / 30, 1 / 30)["strength"])
        return vals

    a, b = run(), run()
    assert a == b
    assert a[0] == 0.0
    assert a[1] == pytest.approx(0.5 * (1 - math.exp(-(1 / 30) / 0.1)))
    assert a[-1] == pytest.approx(0.5, abs=1e-3)
    assert all(x <= y for x, y in zip(a, a[1:]))


def test_lfo_and_clock_sources():
    m = ModMatrix(
        [
            ModRoute(source="lfo.wob", target="strength", gain=0.5),
            ModRoute(source="clock", target="speed", gain=0.1),
            ModRoute(source="clock", target="fader", range=(0.0, 10.0), gain=10.0, curve="step", steps=2),
        ],
        lfos=[LFO(name="wob", shape="square", rate=1.0)],
        specs=SPECS,
    )
    out = m.apply({}, t=2.0, dt=0.0)
    assert out["strength"] == pytest.approx(0.7)
    assert out["speed"] == pytest.approx(1.2)
    assert out["fader"] == 0.0
    assert m.apply({}, t=6.0, dt=0.0)["fader"] == 10.0


def test_event_routes_fire_on_rising_edge_with_cooldown():
    m = ModMatrix(
        [
            ModRoute(source="audio.onset", target="event:seed", threshold=0.5, cooldown=0.2),
            ModRoute(source="camera.presence", target="event:blackout", threshold=0.3),
        ],
        specs=SPECS,
        seed=7,
    )
    seq = [0.0, 0.9, 0.8, 0.1, 0.9, 0.1, 0.1, 0.9]  # edges at frames 1, 4 (inside cooldown), 7
    fired = []
    for n, x in enumerate(seq):
        assert m.apply({"audio.onset": x, "camera.presence": 1.0 if n >= 2 else 0.0}, n * 0.05, 0.05) == {}
        fired.append([(e.kind, e.value) for e in m.take_events()])
    seeds = [v for f in fired for k, v in f if k == "seed"]
    assert [i for i, f in enumerate(fired) if any(k == "seed" for k, _ in f)] == [1, 7]
    assert all(isinstance(s, int) for s in seeds) and seeds[0] != seeds[1]
    assert ("blackout", True) in fired[2]
    # the same seed gives the same seeds: deterministic replay
    m2 = ModMatrix([ModRoute(source="audio.onset", target="event:seed")], specs=SPECS, seed=7)
    m2.apply({"audio.onset": 1.0}, 0.0, 0.0)
    assert m2.take_events()[0].value == seeds[0]


def test_gate_event_falls():
    m = ModMatrix([ModRoute(source="camera.presence", target="event:freeze")], specs=SPECS)
    m.apply({"camera.presence": 1.0}, 0.0, 0.0)
    m.apply({"camera.presence": 0.0}, 0.1, 0.1)
    assert [(e.kind, e.value) for e in m.take_events()] == [("freeze", True), ("freeze", False)]


@pytest.mark.parametrize(
    "route,lfos,needle",
    [
        ({"source": "nope", "target": "speed"}, [], "'nope'"),
        ({"source": "audio.low", "target": "missing"}, [], "'missing'"),
        ({"source": "lfo.x", "target": "speed"}, [], "'lfo.x'"),
        ({"source": "audio.low", "target": "event:explode"}, [], "'explode'"),
        ({"source": "audio.low", "target": "event:quit"}, [], "'quit'"),
        ({"source": "clock", "target": "speed", "curve": "exp"}, [], "range"),
    ],
)
def test_validation_names_the_culprit(route, lfos, needle):
    with pytest.raises(ValueError, match=needle):
        ModMatrix([route], lfos, SPECS)


def test_validation_of_models():
    with pytest.raises(ValueError):
        ModRoute(source="a", target="b", curve="cubic")
    with pytest.raises(ValueError):
        ModRoute(source="a", target="b", range=(1.0, 1.0))
    with pytest.raises(ValueError):
        ModRoute(source="a", target="b", bogus=1)
    with pytest.raises(ValueError, match="twice"):
        ModMatrix([], [LFO(name="a"), LFO(name="a")], SPECS)


def test_nonfinite_source_does_not_poison():
    m = ModMatrix([ModRoute(source="audio.low", target="speed")], specs=SPECS)
    assert m.apply({"audio.low": float("nan"), "speed": 1.0}, 0.0, 0.0) == {"speed": 1.0}


def test_example_config_validates():
    """The shipped config/inputs.example.toml loads into the input settings and a modulation matrix."""
    from installation.config import config_model
    from installation.inputs.audio import feature_specs as audio_specs
    from installation.inputs.camera import feature_specs as camera_specs

    path = Path(__file__).resolve().parents[1] / "config" / "inputs.example.toml"
    data = tomllib.loads(path.read_text())
    inputs = config_model().model_fields["inputs"].annotation.model_validate(data["inputs"])
    mod = ModulationSettings.model_validate(data["modulation"])
    bus = ParamBus(
        [
            ParamSpec("speed", min=0.0, max=4.0, default=1.0),
            ParamSpec("img2img.strength", min=0.0, max=1.0, default=0.3),
            ParamSpec("prompt.mix", min=0.0, max=1.0, default=0.0),
            ParamSpec("warp", min=0.0, max=1.0, default=0.0),
            *audio_specs(inputs.audio),
            *camera_specs(inputs.camera),
        ]
    )
    matrix = ModMatrix.from_settings(mod, bus.specs)
    out = matrix.apply(bus.tick(0.0).values, 0.0, 1 / 60)
    assert set(out) <= set(bus.specs)
