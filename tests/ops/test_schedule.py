"""Opening hours: weekly ranges, ranges past midnight, closed dates, special days, DST, next_change, bad input."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from installation.ops.schedule import DAYS, Schedule, ScheduleSettings

BER = ZoneInfo("Europe/Berlin")


def at(s: str, tz=BER) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=tz)


def sched(**kw) -> Schedule:
    kw.setdefault("enabled", True)
    kw.setdefault("timezone", "Europe/Berlin")
    return Schedule(ScheduleSettings(**kw))


def test_disabled_is_always_open():
    s = Schedule(ScheduleSettings())
    assert not s.enabled
    assert s.is_open(at("2026-01-01T03:00")) and s.next_change(at("2026-01-01T03:00")) is None


def test_default_hours_ten_to_six():
    s = sched()
    # 2026-05-11 is a Monday
    assert not s.is_open(at("2026-05-11T09:59"))
    assert s.is_open(at("2026-05-11T10:00"))
    assert s.is_open(at("2026-05-11T17:59:59"))
    assert not s.is_open(at("2026-05-11T18:00"))  # the end is exclusive
    assert s.next_change(at("2026-05-11T09:00")) == at("2026-05-11T10:00")
    assert s.next_change(at("2026-05-11T10:00")) == at("2026-05-11T18:00")
    assert s.next_change(at("2026-05-11T18:00")) == at("2026-05-12T10:00")


def test_several_ranges_and_closed_days():
    s = sched(hours={"tue": ["10:00-12:00", "14:00-18:00"], "sat": ["12:00-24:00"]})
    assert s.is_open(at("2026-05-12T11:00")) and not s.is_open(at("2026-05-12T13:00"))
    assert s.is_open(at("2026-05-12T15:00"))
    assert not s.is_open(at("2026-05-11T12:00"))  # Monday not listed: closed
    assert s.next_change(at("2026-05-12T12:30")) == at("2026-05-12T14:00")
    assert s.next_change(at("2026-05-12T18:00")) == at("2026-05-16T12:00")  # skips to Saturday
    assert s.is_open(at("2026-05-16T23:59")) and not s.is_open(at("2026-05-17T00:00"))
    assert s.next_change(at("2026-05-16T13:00")) == at("2026-05-17T00:00")


def test_range_past_midnight_belongs_to_its_start_day():
    s = sched(hours={"fri": ["20:00-02:00"], "sat": ["20:00-02:00"]})
    # 2026-05-15 is a Friday
    assert not s.is_open(at("2026-05-15T19:59"))
    assert s.is_open(at("2026-05-15T23:00"))
    assert s.is_open(at("2026-05-16T01:59"))  # Saturday early morning: Friday's night
    assert not s.is_open(at("2026-05-16T02:00"))
    assert s.is_open(at("2026-05-17T01:00"))  # Sunday early morning: Saturday's night
    assert not s.is_open(at("2026-05-18T01:00"))  # Monday early morning: Sunday has no hours
    assert s.next_change(at("2026-05-15T21:00")) == at("2026-05-16T02:00")
    assert s.next_change(at("2026-05-16T03:00")) == at("2026-05-16T20:00")


def test_adjacent_ranges_merge_for_next_change():
    s = sched(hours={"mon": ["18:00-24:00"], "tue": ["00:00-02:00"]})
    assert s.next_change(at("2026-05-11T19:00")) == at("2026-05-12T02:00")  # no false change at midnight


def test_closed_date_and_special_day():
    s = sched(hours={d: ["10:00-18:00"] for d in DAYS}, closed_dates=["2026-12-24", date(2026, 12, 25)],
              special=[{"date": "2026-12-31", "hours": ["20:00-03:00"]}, {"date": "2027-01-01", "hours": []}])
    assert s.is_open(at("2026-12-23T12:00"))
    assert not s.is_open(at("2026-12-24T12:00")) and not s.is_open(at("2026-12-25T12:00"))
    assert s.next_change(at("2026-12-23T12:00")) == at("2026-12-23T18:00")
    assert s.next_change(at("2026-12-23T18:00")) == at("2026-12-26T10:00")
    assert not s.is_open(at("2026-12-31T12:00"))  # the special day replaces the usual hours
    assert s.is_open(at("2026-12-31T23:30")) and s.is_open(at("2027-01-01T02:30"))
    assert not s.is_open(at("2027-01-01T12:00"))  # special day with no hours: closed
    assert s.next_change(at("2026-12-31T12:00")) == at("2026-12-31T20:00")
    assert s.next_change(at("2026-12-31T20:00")) == at("2027-01-01T03:00")
    assert s.next_change(at("2027-01-01T03:00")) == at("2027-01-02T10:00")


def test_dst_changes_in_berlin():
    # Spring forward: 2026-03-29 02:00 CET -> 03:00 CEST. Fall back: 2026-10-25 03:00 CEST -> 02:00 CET.
    s = sched(hours={d: ["01:00-04:00"] for d in DAYS})
    opening = s.next_change(at("2026-03-29T00:30"))
    closing = s.next_change(at("2026-03-29T01:30"))
    assert (opening, closing) == (at("2026-03-29T01:00"), at("2026-03-29T04:00"))
    # A short night: the wall clock skips an hour. (Subtract in UTC: same-tzinfo arithmetic ignores offsets.)
    assert closing.astimezone(timezone.utc) - opening.astimezone(timezone.utc) == timedelta(hours=2)
    assert closing.utcoffset() == timedelta(hours=2)
    opening = s.next_change(at("2026-10-25T00:30"))
    closing = s.next_change(at("2026-10-25T01:30"))
    assert closing.astimezone(timezone.utc) - opening.astimezone(timezone.utc) == timedelta(hours=4)
    assert closing.utcoffset() == timedelta(hours=1)
    # Both occurrences of 02:30 on the fall-back night are open.
    first = datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc)  # 02:30 CEST
    second = datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc)  # 02:30 CET
    assert s.is_open(first) and s.is_open(second)
    # Normal hours keep their wall-clock times across the change (10:00 local = 08:00 UTC in summer).
    day = sched()
    assert day.next_change(at("2026-03-29T05:00")).astimezone(timezone.utc) == datetime(2026, 3, 29, 8, 0,
                                                                                       tzinfo=timezone.utc)
    assert day.next_change(at("2026-03-28T05:00")).astimezone(timezone.utc) == datetime(2026, 3, 28, 9, 0,
                                                                                       tzinfo=timezone.utc)


def test_time_zone_is_honoured_for_other_zones():
    s = sched(timezone="America/New_York", hours={d: ["10:00-18:00"] for d in DAYS})
    assert s.is_open(datetime(2026, 7, 1, 15, 0, tzinfo=timezone.utc))  # 11:00 in New York
    assert not s.is_open(datetime(2026, 7, 1, 13, 0, tzinfo=timezone.utc))  # 09:00 in New York
    assert s.is_open(at("2026-07-01T17:00"))  # Berlin 17:00 = New York 11:00


def test_never_changing_schedules():
    always = sched(hours={d: ["00:00-24:00"] for d in DAYS})
    assert always.is_open(at("2026-05-11T03:00")) and always.next_change(at("2026-05-11T03:00")) is None
    never = sched(hours={})
    assert not never.is_open(at("2026-05-11T12:00")) and never.next_change(at("2026-05-11T12:00")) is None
    # Always open, except one closed date far ahead: that date is found.
    far = sched(hours={d: ["00:00-24:00"] for d in DAYS}, closed_dates=["2027-06-01"])
    assert far.next_change(at("2026-05-11T03:00")) == at("2027-06-01T00:00")
    assert far.next_change(at("2027-06-01T12:00")) == at("2027-06-02T00:00")
    assert far.describe(at("2027-06-01T12:00")) == "closed until 2027-06-02T00:00+02:00"


def test_naive_datetime_is_refused():
    with pytest.raises(ValueError, match="aware datetime"):
        sched().is_open(datetime(2026, 5, 11, 12, 0))


@pytest.mark.parametrize("kw, message", [
    ({"hours": {"mon": ["10-18"]}}, r"hours\.mon\[0\]: expected 'HH:MM-HH:MM', got '10-18'"),
    ({"hours": {"tue": ["10:00-18:00", "25:00-26:00"]}}, r"hours\.tue\[1\]: time out of range"),
    ({"hours": {"wed": ["10:00-10:00"]}}, r"hours\.wed\[0\]: empty range"),
    ({"hours": {"wed": ["24:00-02:00"]}}, r"hours\.wed\[0\]: time out of range"),
    ({"hours": {"funday": ["10:00-18:00"]}}, r"hours\.funday: unknown day; allowed: mon, tue"),
    ({"timezone": "Europe/Berln"}, r"timezone: unknown time zone 'Europe/Berln'"),
    ({"timezone": "../etc/passwd"}, r"timezone: unknown time zone"),
    ({"closed_dates": ["2026-13-01"]}, r"closed_dates\[0\]: expected a date 'YYYY-MM-DD', got '2026-13-01'"),
    ({"closed_dates": ["2026-12-24", "2026-12-24"]}, r"closed_dates\[1\]: 2026-12-24 is listed twice"),
    ({"special": [{"date": "24.12.2026", "hours": []}]}, r"special\[0\]\.date: expected a date"),
    ({"special": [{"date": "2026-12-24", "hours": ["x"]}]}, r"special\[0\]\.hours\[0\]: expected 'HH:MM-HH:MM'"),
    ({"closed_dates": ["2026-12-24"], "special": [{"date": "2026-12-24"}]}, r"special\[0\]\.date: 2026-12-24 is"),
    ({"closed_action": "standby"}, r"standby_scene: required"),
    ({"closed_action": "sleep"}, r"closed_action"),
    ({"fade_s": -1}, r"fade_s"),
    ({"opening": {}}, r"opening"),
])
def test_bad_settings_name_the_key(kw, message):
    with pytest.raises(ValueError, match=message):
        ScheduleSettings(**kw)


def test_standby_settings_and_toml_dates():
    import tomllib

    data = tomllib.loads("""
        enabled = true
        timezone = "Europe/Berlin"
        closed_action = "standby"
        standby_scene = "tide"
        closed_dates = [2026-12-24]
        [hours]
        mon = ["10:00-18:00"]
        [[special]]
        date = 2026-12-31
        hours = ["20:00-24:00"]
    """)
    settings = ScheduleSettings.model_validate(data)
    s = Schedule(settings)
    assert settings.standby_scene == "tide" and settings.fade_s == 3.0
    assert s.is_open(at("2026-12-31T21:00")) and not s.is_open(at("2026-12-24T12:00"))
