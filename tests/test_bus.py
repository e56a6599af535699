"""ParamBus: typed, ranged, smoothed parameters and a bounded event queue, written from any thread."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from installation.bus import Event, Follower, ParamBus, ParamSpec, Tick


def _bus(**kw) -> ParamBus:
    return ParamBus([
        ParamSpec("level", "float", 0.0, 1.0, 0.25),
        ParamSpec("gain", "float", -2.0, 2.0, 0.0),
        ParamSpec("count", "int", 0, 10, 3),
        ParamSpec("on", "bool", 0, 1, 0),
        ParamSpec("slow", "float", 0.0, 1.0, 0.0, attack=0.5, release=2.0),
    ], **kw)


# -- ParamSpec -------------------------------------------------------------------------------------------------

def test_paramspec_rejects_bad_type_and_default_outside_range():
    with pytest.raises(ValueError, match="type must be one of"):
        ParamSpec("x", "double")
    with pytest.raises(ValueError, match="outside"):
        ParamSpec("x", "float", 0.0, 1.0, 2.0)


# -- declare / set / set_norm ----------------------------------------------------------------------------------

def test_declare_sets_defaults_as_targets_and_values():
    bus = _bus()
    assert bus.targets() == {"level": 0.25, "gain": 0.0, "count": 3.0, "on": 0.0, "slow": 0.0}
    tick = bus.tick(0.0)
    assert dict(tick.values) == bus.targets()
    assert set(bus.specs) == {"level", "gain", "count", "on", "slow"}
    assert bus.spec("gain").min == -2.0 and bus.spec("nope") is None
    bus.declare(ParamSpec("late", "float", 0.0, 5.0, 4.0))
    assert bus.targets()["late"] == 4.0 and bus.tick(0.1).values["late"] == 4.0


def test_set_in_range_is_accepted_and_reaches_the_tick():
    bus = _bus()
    assert bus.set("level", 0.75) is True
    assert bus.set("gain", -1.5, source="osc:1.2.3.4") is True
    tick = bus.tick(1 / 60)
    assert tick.values["level"] == 0.75 and tick.values["gain"] == -1.5
    assert tick.changed == frozenset({"level", "gain"})
    assert bus.stats() == {"accepted": 2, "rejects": {}}


@pytest.mark.parametrize("value, expected", [(1.5, 1.0), (-0.1, 0.0), (1e300, 1.0), (-7, 0.0)])
def test_set_out_of_range_is_clamped_and_counted(value, expected):
    bus = _bus()
    assert bus.set("level", value) is True
    assert bus.targets()["level"] == expected
    assert bus.tick(0.0).values["level"] == expected
    assert bus.rejects["clamped"] == 1
    assert bus.accepted == 1


@pytest.mark.parametrize("value, why", [
    ("0.5", "type"), (None, "type"), ([0.5], "type"), (object(), "type"), (1 + 2j, "type"), (b"1", "type"),
    (math.nan, "nonfinite"), (math.inf, "nonfinite"), (-math.inf, "nonfinite"),
])
def test_set_rejects_bad_values_without_raising_and_counts_why(value, why):
    bus = _bus()
    before = bus.targets()
    assert bus.set("level", value) is False
    assert bus.rejects[why] == 1
    assert sum(bus.rejects.values()) == 1
    assert bus.accepted == 0
    assert bus.targets() == before
    assert bus.tick(0.1).changed == frozenset()


def test_set_unknown_name_is_rejected_and_counted():
    bus = _bus()
    assert bus.set("nope", 0.5) is False
    assert bus.set_norm("nope", 0.5) is False
    assert bus.rejects["unknown"] == 2
    assert "nope" not in bus.targets()
    assert bus.accepted == 0


@pytest.mark.parametrize("value", [np.float64(0.5), np.float32(0.5), np.int64(1), np.int32(0)])
def test_set_accepts_numpy_scalars(value):
    """Features computed with numpy (audio, camera) arrive as numpy scalars; they are numbers, not bad types."""
    bus = _bus()
    assert bus.set("level", value) is True, dict(bus.rejects)
    assert bus.targets()["level"] == float(value)
    assert type(bus.targets()["level"]) is float


@pytest.mark.parametrize("value, expected", [(2.6, 3.0), (2.4, 2.0), (7, 7.0), (True, 1.0), (11.2, 10.0), (-0.4, 0.0)])
def test_int_parameter_rounds(value, expected):
    bus = _bus()
    assert bus.set("count", value) is True
    assert bus.targets()["count"] == expected
    assert bus.rejects["clamped"] == (1 if value in (11.2,) else 0)


@pytest.mark.parametrize("value, expected", [(True, 1.0), (False, 0.0), (0.7, 1.0), (0.5, 1.0), (0.49, 0.0), (1, 1.0),
                                             (0, 0.0)])
def test_bool_parameter_coerces_to_zero_or_one(value, expected):
    bus = _bus()
    assert bus.set("on", value) is True
    assert bus.targets()["on"] == expected
    assert not bus.rejects


def test_bool_parameter_out_of_range_is_clamped():
    bus = _bus()
    assert bus.set("on", 5.0) is True
    assert bus.targets()["on"] == 1.0
    assert bus.set("on", -5.0) is True
    assert bus.targets()["on"] == 0.0


@pytest.mark.parametrize("u, expected", [(0.0, -2.0), (1.0, 2.0), (0.25, -1.0), (0.5, 0.0)])
def test_set_norm_maps_across_the_range(u, expected):
    bus = _bus()
    assert bus.set_norm("gain", u) is True
    assert bus.targets()["gain"] == pytest.approx(expected, abs=1e-12)
    assert not bus.rejects


def test_set_norm_int_rounds_after_mapping():
    bus = _bus()
    assert bus.set_norm("count", 0.33) is True  # 3.3 -> 3
    assert bus.targets()["count"] == 3.0


@pytest.mark.parametrize("u, expected", [(1.5, 2.0), (-0.5, -2.0)])
def test_set_norm_out_of_range_is_clamped_and_counted_once(u, expected):
    bus = _bus()
    assert bus.set_norm("gain", u) is True
    assert bus.targets()["gain"] == expected
    assert dict(bus.rejects) == {"clamped": 1}


@pytest.mark.parametrize("u", [math.nan, math.inf, "0.5", None, True])
def test_set_norm_rejects_bad_values(u):
    bus = _bus()
    assert bus.set_norm("gain", u) is False
    assert sum(bus.rejects.values()) == 1
    assert bus.targets()["gain"] == 0.0
    assert bus.accepted == 0


# -- followers ---------------------------------------------------------------------------------------------------

def test_follower_reaches_63_percent_after_one_attack_time_constant():
    bus = _bus()
    bus.set("slow", 1.0)
    steps = 50
    dt = 0.5 / steps  # attack is 0.5 s
    for _ in range(steps):
        tick = bus.tick(dt)
    assert tick.values["slow"] == pytest.approx(1.0 - math.exp(-1.0), abs=1e-9)
    # A single step of one time constant gives the same value: exact exponential, independent of the frame rate.
    bus2 = _bus()
    bus2.set("slow", 1.0)
    assert bus2.tick(0.5).values["slow"] == pytest.approx(1.0 - math.exp(-1.0), abs=1e-12)


def test_follower_release_uses_the_release_time_constant():
    bus = _bus()
    bus.reset({"slow": 1.0}, snap=True)
    bus.set("slow", 0.0)
    for _ in range(40):
        tick = bus.tick(2.0 / 40)  # release is 2 s
    assert tick.values["slow"] == pytest.approx(math.exp(-1.0), abs=1e-9)
    # after one *attack* constant it must still be well above the attack's 37%
    bus.reset({"slow": 1.0}, snap=True)
    bus.set("slow", 0.0)
    assert bus.tick(0.5).values["slow"] == pytest.approx(math.exp(-0.25), abs=1e-12)


def test_follower_is_monotone_and_never_overshoots():
    f = Follower(0.0, attack=0.3, release=0.1)
    prev = 0.0
    for _ in range(200):
        v = f.step(2.0, 1 / 30)
        assert prev <= v <= 2.0
        prev = v
    assert v == pytest.approx(2.0, abs=1e-6)
    for _ in range(200):
        v = f.step(-1.0, 1 / 30)
        assert -1.0 <= v <= prev
        prev = v


def test_follower_zero_time_constant_jumps_and_zero_dt_holds():
    assert Follower(0.0).step(0.8, 1 / 60) == 0.8
    f = Follower(0.0, attack=1.0)
    assert f.step(1.0, 0.0) == 0.0
    assert f.step(1.0, -1.0) == 0.0
    assert 0.0 < f.step(1.0, 0.01) < 0.02


# -- tick and events -----------------------------------------------------------------------------------------------

def test_tick_drains_events_in_order_and_changed_names_once():
    bus = _bus()
    evs = [Event("scene.next"), Event("seed", 7, "osc"), Event("scene.goto", "tide"), Event("onset", 0.4, "audio")]
    for ev in evs:
        assert bus.post(ev) is True
    bus.set("level", 0.5)
    bus.set("count", 4)
    bus.set("level", 0.6)  # latest value wins
    tick = bus.tick(1 / 60)
    assert isinstance(tick, Tick)
    assert tick.events == tuple(evs)
    assert tick.changed == frozenset({"level", "count"})
    assert tick.values["level"] == 0.6
    again = bus.tick(1 / 60)
    assert again.events == () and again.changed == frozenset()
    assert again.values["level"] == 0.6


def test_rejected_set_does_not_mark_changed():
    bus = _bus()
    bus.set("level", math.nan)
    bus.set("nope", 1.0)
    assert bus.tick(0.1).changed == frozenset()


def test_event_queue_overflow_keeps_the_oldest_and_counts_the_dropped():
    bus = _bus(max_events=4)
    results = [bus.post(Event("e", i)) for i in range(7)]
    assert results == [True] * 4 + [False] * 3
    assert bus.rejects["event_overflow"] == 3
    tick = bus.tick(0.0)
    assert [e.value for e in tick.events] == [0, 1, 2, 3]
    assert bus.post(Event("e", 99)) is True  # room again after the drain
    assert [e.value for e in bus.tick(0.0).events] == [99]


def test_reset_snap_jumps_followers_and_without_snap_smooths():
    bus = _bus()
    bus.reset({"slow": 0.8, "level": 0.9, "unknown": 5.0}, snap=True)
    tick = bus.tick(1 / 60)
    assert tick.values["slow"] == 0.8
    assert tick.values["level"] == 0.9
    assert tick.changed == frozenset({"slow", "level"})
    assert "unknown" not in tick.values
    bus.reset({"slow": 0.0})
    v = bus.tick(1 / 60).values["slow"]
    assert 0.0 < v < 0.8  # released toward 0 with the 2 s constant, not jumped
    assert v == pytest.approx(0.8 * math.exp(-(1 / 60) / 2.0), abs=1e-12)


# -- threads -------------------------------------------------------------------------------------------------------

def test_concurrent_writers_lose_no_count_and_never_raise():
    bus = ParamBus([ParamSpec(f"p{i}", "float", 0.0, 1.0, 0.0) for i in range(4)], max_events=100_000)
    n_threads, n_iter = 4, 1500
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads + 1)

    def writer(k: int) -> None:
        try:
            start.wait()
            for i in range(n_iter):
                bus.set(f"p{k}", (i % 100) / 100.0)       # accepted
                bus.set(f"p{(k + 1) % 4}", 2.0)           # accepted, clamped
                bus.set_norm(f"p{k}", 0.5)                # accepted
                bus.set(f"p{k}", math.nan)                # rejected: nonfinite
                bus.set("missing", 0.1)                   # rejected: unknown
                bus.post(Event("e", (k, i)))
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(n_threads)]
    for th in threads:
        th.start()
    start.wait()
    drained: list[Event] = []
    while any(th.is_alive() for th in threads):
        drained.extend(bus.tick(1 / 60).events)
    for th in threads:
        th.join()
    drained.extend(bus.tick(1 / 60).events)
    assert errors == []
    total = n_threads * n_iter
    assert bus.accepted == 3 * total
    assert bus.rejects["clamped"] == total
    assert bus.rejects["nonfinite"] == total
    assert bus.rejects["unknown"] == total
    assert "event_overflow" not in bus.rejects
    assert len(drained) == total
    # each writer's events arrive in its own order
    for k in range(n_threads):
        assert [e.value[1] for e in drained if e.value[0] == k] == list(range(n_iter))
    assert all(0.0 <= v <= 1.0 for v in bus.targets().values())


# -- the journal ---------------------------------------------------------------------------------------------------

def test_the_journal_records_every_accepted_change_with_show_time_and_source():
    now = [0.0]
    bus = _bus(clock=lambda: now[0])
    early = bus.subscribe()
    bus.set("level", 0.5, source="osc:127.0.0.1")
    now[0] = 1.5
    assert not bus.set("nope", 1.0, source="osc:127.0.0.1")  # rejected: not journalled
    bus.set_norm("gain", 1.0, source="midi")
    bus.post(Event("scene.next", source="keyboard"))
    late = bus.subscribe()  # sees only what comes after it
    now[0] = 2.0
    bus.reset({"level": 0.1, "unknown": 3.0}, source="panic")
    got = early.drain()
    assert [(c.t, c.kind, c.name, c.value, c.source) for c in got] == [
        (0.0, "set", "level", 0.5, "osc:127.0.0.1"),
        (1.5, "set", "gain", 2.0, "midi"),
        (1.5, "event", "scene.next", None, "keyboard"),
        (2.0, "reset", "", {"level": 0.1}, "panic"),
    ]
    assert early.drain() == []
    assert [c.kind for c in late.drain()] == ["reset"]
    late.close()
    bus.set("level", 0.2)
    assert late.drain() == [] and len(early.drain()) == 1


def test_a_slow_subscriber_loses_its_oldest_entries_counted_and_never_blocks_a_writer():
    bus = _bus()
    sub = bus.subscribe(maxlen=10)
    writers = [threading.Thread(target=lambda k=k: [bus.set("level", (i % 100) / 100, source=f"w{k}")
                                                     for i in range(500)]) for k in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(30)
    got = sub.drain()
    assert len(got) == 10 and sub.dropped == 1990
    assert bus.stats()["accepted"] == 2000


def test_a_sampled_feature_is_journaled_as_each_tick_consumed_it_and_only_when_it_changed():
    """A continuous input (camera, microphone) sets many times between two ticks; the journal gets the value the
    tick read, stamped with the tick's time, once, and nothing when the tick read what the journal last said."""
    now = [0.0]
    bus = _bus(clock=lambda: now[0])
    journal = bus.subscribe()
    for k, v in enumerate((0.1, 0.2, 0.3)):  # three blocks between two ticks
        now[0] = 0.01 * (k + 1)
        bus.set("level", v, source="audio", sampled=True)
    assert journal.drain() == []  # nothing yet: no tick has read them
    now[0] = 0.04
    assert bus.tick(0.02, t=0.035).values["level"] == 0.3
    assert [(c.t, c.kind, c.name, c.value, c.source, c.sampled) for c in journal.drain()] == [
        (0.035, "set", "level", 0.3, "audio", True)]
    bus.set("level", 0.3, source="audio", sampled=True)  # the same value again: nothing new to journal
    bus.tick(0.02, t=0.05)
    assert journal.drain() == []
    # a performer's set after the input's carries the newest value itself; a reset too
    bus.set("level", 0.6, source="audio", sampled=True)
    bus.set("level", 0.7, source="osc:127.0.0.1")
    bus.set("gain", 1.0, source="audio", sampled=True)
    bus.reset({"gain": 0.5}, source="panic")
    bus.tick(0.02, t=0.07)
    assert [(c.kind, c.name, c.value, c.sampled) for c in journal.drain()] == [
        ("set", "level", 0.7, False), ("reset", "", {"gain": 0.5}, False)]
    # the input's value that a tick reads after the performer's set is journaled, even when it equals an older one
    bus.set("level", 0.3, source="audio", sampled=True)
    bus.tick(0.02)  # no time given: the clock's
    assert [(c.t, c.name, c.value, c.sampled) for c in journal.drain()] == [(0.04, "level", 0.3, True)]
    # set, but no tick read it before the performer's: only the performer's value was ever read
    bus.set("level", 0.9, source="audio", sampled=True)
    bus.set("level", 0.8, source="osc:127.0.0.1")
    bus.tick(0.02, t=0.1)
    assert [(c.name, c.value, c.sampled) for c in journal.drain()] == [("level", 0.8, False)]
    assert bus.stats()["accepted"] == 10
