"""Opening hours: is the show open at a given instant, and when does that change next.

Pure and deterministic: every answer is a function of the settings and the aware datetime passed in (no clock is read
here), so tests and the runtime agree. Hours are local wall-clock times in ``timezone``; a range belongs to the day it
starts on, so ``fri = ["20:00-02:00"]`` keeps the show open until 02:00 on Saturday, and closing Friday closes that
night too. Times that a DST change skips are read with the offset before the change (02:30 on a spring-forward day is
03:30 summer time); times that occur twice take the first occurrence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Any, Literal, Mapping, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, model_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_WEEK_SCAN_DAYS = 9  # one full weekly period plus the day before and after: enough to find any weekly change


class SpecialDay(BaseModel):
    """One date with its own hours (an empty list closes it), replacing that weekday's hours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    date: date | str
    hours: list[str] = []


class ScheduleSettings(BaseModel):
    """``[schedule]``: opening hours per weekday in ``timezone``, closed dates, special days, what closed looks like."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False  # off: always open
    timezone: str = "UTC"
    hours: dict[str, list[str]] = {d: ["10:00-18:00"] for d in DAYS}  # a day left out is closed
    closed_dates: list[date | str] = []
    special: list[SpecialDay] = []
    closed_action: Literal["black", "standby"] = "black"
    standby_scene: str = ""
    fade_s: Annotated[float, Field(ge=0, le=600)] = 3.0

    @model_validator(mode="after")
    def _check(self) -> "ScheduleSettings":
        _compile(self)
        if self.closed_action == "standby" and not self.standby_scene:
            raise ValueError("standby_scene: required when closed_action = 'standby' (a scene name)")
        return self


@dataclass(frozen=True)
class _Plan:
    tz: ZoneInfo
    week: tuple[tuple[tuple[time, time, int], ...], ...]  # per weekday: (start, end, day offset of end: 0 or 1)
    dates: Mapping[date, tuple[tuple[time, time, int], ...]]  # closed dates (empty) and special days
    last_exception: date | None


def _parse_time(hh: str, mm: str, key: str, raw: Any, allow_24: bool) -> time | None:
    h, m = int(hh), int(mm)
    if allow_24 and h == 24 and m == 0:
        return None  # midnight at the end of the day
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise ValueError(f"{key}: time out of range in {raw!r} (hours 00-23, minutes 00-59; '24:00' only as an end)")
    return time(h, m)


def _parse_range(raw: Any, key: str) -> tuple[time, time, int]:
    """'HH:MM-HH:MM' -> (start, end, 0 if it ends the same day else 1)."""
    match = _RANGE.match(raw) if isinstance(raw, str) else None
    if not match:
        raise ValueError(f"{key}: expected 'HH:MM-HH:MM', got {raw!r}")
    start = _parse_time(match[1], match[2], key, raw, allow_24=False)
    end = _parse_time(match[3], match[4], key, raw, allow_24=True)
    if end is None:
        return start, time(0, 0), 1
    if end == start:
        raise ValueError(f"{key}: empty range {raw!r} (for all day write '00:00-24:00')")
    return start, end, 0 if end > start else 1


def _parse_ranges(values: Any, key: str) -> tuple[tuple[time, time, int], ...]:
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{key}: expected a list of 'HH:MM-HH:MM' ranges, got {values!r}")
    return tuple(sorted(_parse_range(v, f"{key}[{i}]") for i, v in enumerate(values)))


def _parse_date(raw: Any, key: str) -> date:
    if isinstance(raw, datetime):
        raise ValueError(f"{key}: expected a date 'YYYY-MM-DD', got a date and time {raw!r}")
    if isinstance(raw, date):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw.strip()):
        try:
            return date.fromisoformat(raw.strip())
        except ValueError:
            pass
    raise ValueError(f"{key}: expected a date 'YYYY-MM-DD', got {raw!r}")


def _compile(s: ScheduleSettings) -> _Plan:
    """Settings -> plan; raises ValueError naming the key (``hours.mon[0]``, ``special[1].date``) on bad input."""
    try:
        tz = ZoneInfo(s.timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"timezone: unknown time zone {s.timezone!r} (use an IANA name such as 'Europe/Berlin')") \
            from None
    for day in s.hours:
        if day not in DAYS:
            raise ValueError(f"hours.{day}: unknown day; allowed: {', '.join(DAYS)}")
    week = tuple(_parse_ranges(s.hours.get(d, []), f"hours.{d}") for d in DAYS)
    dates: dict[date, tuple[tuple[time, time, int], ...]] = {}
    for i, raw in enumerate(s.closed_dates):
        d = _parse_date(raw, f"closed_dates[{i}]")
        if d in dates:
            raise ValueError(f"closed_dates[{i}]: {d} is listed twice")
        dates[d] = ()
    for i, sp in enumerate(s.special):
        d = _parse_date(sp.date, f"special[{i}].date")
        if d in dates:
            raise ValueError(f"special[{i}].date: {d} is already in closed_dates or special")
        dates[d] = _parse_ranges(sp.hours, f"special[{i}].hours")
    return _Plan(tz, week, dates, max(dates) if dates else None)


class Schedule:
    """Answers "open now?" and "when does that change?" for aware datetimes; always open when not enabled."""

    def __init__(self, settings: ScheduleSettings) -> None:
        self.settings = settings
        self._plan = _compile(settings)

    @property
    def enabled(self) -> bool:
        """bool: whether opening hours apply at all."""
        return self.settings.enabled

    def _ranges(self, day: date) -> Sequence[tuple[time, time, int]]:
        plan = self._plan
        return plan.dates[day] if day in plan.dates else plan.week[day.weekday()]

    def _intervals(self, first: date, last: date) -> list[tuple[datetime, datetime]]:
        """Opening intervals (UTC, half-open) of ranges starting on local days first..last, sorted and merged."""
        tz = self._plan.tz
        out: list[tuple[datetime, datetime]] = []
        day = first
        while day <= last:
            for start, end, offset in self._ranges(day):
                a = datetime.combine(day, start, tz).astimezone(timezone.utc)
                b = datetime.combine(day + timedelta(days=offset), end, tz).astimezone(timezone.utc)
                if b > a:  # a range inside a skipped DST hour is empty
                    out.append((a, b))
            day += timedelta(days=1)
        out.sort()
        merged: list[tuple[datetime, datetime]] = []
        for a, b in out:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    @staticmethod
    def _utc(when: datetime) -> datetime:
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"schedule: need an aware datetime (with a time zone), got {when!r}")
        return when.astimezone(timezone.utc)

    def is_open(self, when: datetime) -> bool:
        """Whether the show is open at ``when`` (aware datetime)."""
        if not self.enabled:
            return True
        t = self._utc(when)
        today = t.astimezone(self._plan.tz).date()
        return any(a <= t < b for a, b in self._intervals(today - timedelta(days=1), today))

    def next_change(self, when: datetime) -> datetime | None:
        """The first instant after ``when`` at which ``is_open`` flips (aware, in the schedule's time zone), or None.

        None means it never changes: not enabled, or the hours are always open or always closed from here on.
        """
        if not self.enabled:
            return None
        t = self._utc(when)
        today = t.astimezone(self._plan.tz).date()
        last = today + timedelta(days=_WEEK_SCAN_DAYS)
        if self._plan.last_exception is not None and self._plan.last_exception + timedelta(days=_WEEK_SCAN_DAYS) > last:
            last = self._plan.last_exception + timedelta(days=_WEEK_SCAN_DAYS)
        # Intervals of days up to `last` are complete only until the first instant of `last` (later days add more).
        horizon = datetime.combine(last, time(0, 0), self._plan.tz).astimezone(timezone.utc)
        for a, b in self._intervals(today - timedelta(days=1), last):
            if b <= t:
                continue
            change = a if a > t else b
            return change.astimezone(self._plan.tz) if change < horizon else None
        return None

    def describe(self, when: datetime) -> str:
        """One line for logs and the systemd status: 'open until ...' / 'closed until ...'."""
        if not self.enabled:
            return "no opening hours (always open)"
        nxt = self.next_change(when)
        state = "open" if self.is_open(when) else "closed"
        return f"{state} until {nxt.isoformat(timespec='minutes')}" if nxt else f"{state} from now on"
