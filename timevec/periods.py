"""Periods: a year (``2014``), a quarter (``2014-Q1``), a month (``2014-03``), an ISO week (``2015-W53``)
or a day (``2014-03-09``) of a dated corpus.

Periods are strings everywhere outside this module (paths, tables, plots); this class is how code
parses, orders and measures them. A strict parser matters because period strings end up in store
paths: anything that is not exactly one of the five forms is refused, so a period can never smuggle
``..`` or ``/`` into a path.

Weeks are ISO 8601 weeks (:meth:`datetime.date.isocalendar`): Monday to Sunday, numbered within their
ISO year, which is the calendar year of the week's Thursday. So 2016-01-01 (a Friday) is in
``2015-W53``, and an ISO year has 52 or 53 weeks; ``YYYY-W53`` exists only in the 53-week years.

One granularity's periods are a sequence: :meth:`Period.shift` and :meth:`Period.distance` count in
its own steps, and measuring or ranging across two granularities is refused, naming both. Ordering is
total across granularities (by start date, the coarser first on a tie: a year sorts before its
quarters, months, weeks and days), because a store lists the vectors of every granularity together.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import total_ordering
from typing import Literal, cast

from timevec.errors import TimevecError

Granularity = Literal["year", "quarter", "month", "week", "day"]
#: every granularity, coarsest first (the order of a tie in :class:`Period`'s ordering)
GRANULARITIES: tuple[Granularity, ...] = ("year", "quarter", "month", "week", "day")

#: The granularity's own cycle within a year, in its steps: the seasonal stripes of
#: :func:`timevec.analyze.misalignment.stripe_test` sit at multiples of it. A year has none. Days
#: cycle with the week (7 weekdays), not the year. An ISO year has 52 or 53 weeks; 52 is the cycle,
#: so a stripe at 52·k weeks is the same week number k years on give or take a week (within the
#: stripe test's window), the choice documented there.
CYCLE: dict[Granularity, int | None] = {"year": None, "quarter": 4, "month": 12, "week": 52, "day": 7}
#: the plural of each granularity's step, for axis labels and findings ("% per week")
UNITS: dict[Granularity, str] = {"year": "years", "quarter": "quarters", "month": "months", "week": "weeks",
                                 "day": "days"}

_FORMS = "'YYYY', 'YYYY-Qn', 'YYYY-MM', 'YYYY-Www' or 'YYYY-MM-DD'"
_PATTERN = re.compile(
    r"^(?P<year>\d{4})(?:-(?:Q(?P<quarter>\d)|W(?P<week>\d{2})|(?P<month>\d{2})(?:-(?P<day>\d{2}))?))?$"
)


class PeriodError(TimevecError, ValueError):
    """A string that is not a valid period, or periods that cannot be combined."""

    exit_status = 2


def check_granularity(name: object) -> Granularity:
    """``name`` as a :data:`Granularity`, or a :class:`PeriodError` naming it and the known ones."""
    if name not in GRANULARITIES:
        raise PeriodError(f"unknown granularity {name!r}: expected one of {', '.join(GRANULARITIES)}")
    return cast(Granularity, name)


def iso_weeks(year: int) -> int:
    """How many ISO weeks ``year`` has: 52, or 53 (when 28 December is in week 53)."""
    return dt.date(year, 12, 28).isocalendar()[1]


@total_ordering
@dataclass(frozen=True)
class Period:
    """One period: ``year`` alone, or with exactly one of ``month`` (and then maybe ``day``),
    ``quarter`` or ``week`` (``year`` is then the ISO year). Ordered by start date, coarser first."""

    year: int
    month: int | None = None
    day: int | None = None
    quarter: int | None = None
    week: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.year <= 9999:
            raise PeriodError(f"period year {self.year} is out of range 1..9999")
        if sum(x is not None for x in (self.month, self.quarter, self.week)) > 1:
            raise PeriodError(f"a period has at most one of month, quarter, week (got month={self.month}, "
                              f"quarter={self.quarter}, week={self.week})")
        if self.month is not None and not 1 <= self.month <= 12:
            raise PeriodError(f"period month {self.month} is out of range 1..12")
        if self.quarter is not None and not 1 <= self.quarter <= 4:
            raise PeriodError(f"period quarter {self.quarter} is out of range 1..4")
        if self.week is not None and not 1 <= self.week <= iso_weeks(self.year):
            raise PeriodError(f"period week {self.week} is out of range 1..{iso_weeks(self.year)} "
                              f"(ISO year {self.year} has {iso_weeks(self.year)} weeks)")
        if self.day is not None:
            if self.month is None:
                raise PeriodError(f"period day {self.day} needs a month")
            try:
                dt.date(self.year, self.month, self.day)
            except ValueError:
                leap = " (not a leap year)" if (self.month, self.day) == (2, 29) else ""
                raise PeriodError(f"period day {self.day} is out of range for {self.year:04d}-{self.month:02d}{leap}") from None

    def __repr__(self) -> str:
        return f"Period({str(self)!r})"

    def _key(self) -> tuple[int, int]:
        return (self.start().toordinal(), GRANULARITIES.index(self.granularity))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Period):
            return NotImplemented
        return self._key() < other._key()

    @classmethod
    def parse(cls, text: str | int | Period) -> Period:
        """Parse one of the five forms; anything else is a :class:`PeriodError` naming it."""
        if isinstance(text, Period):
            return text
        if isinstance(text, int) and not isinstance(text, bool):
            text = str(text)
        if not isinstance(text, str):
            raise PeriodError(f"period must be a string like '2014', '2014-Q1', '2014-03', '2015-W53' or "
                              f"'2014-03-09', got {text!r}")
        match = _PATTERN.match(text.strip())
        if match is None:
            raise PeriodError(f"bad period {text!r}: expected {_FORMS}")
        parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
        try:
            return cls(**parts)
        except PeriodError as exc:
            raise PeriodError(f"bad period {text!r}: {exc}") from None

    @classmethod
    def of_date(cls, date: dt.date | dt.datetime, granularity: Granularity) -> Period:
        """The period of ``granularity`` that contains ``date`` (a week: its ISO week)."""
        granularity = check_granularity(granularity)
        if granularity == "year":
            return cls(date.year)
        if granularity == "quarter":
            return cls(date.year, quarter=(date.month - 1) // 3 + 1)
        if granularity == "month":
            return cls(date.year, date.month)
        if granularity == "week":
            iso = date.isocalendar()
            return cls(iso[0], week=iso[1])
        return cls(date.year, date.month, date.day)

    @classmethod
    def first_of_year(cls, year: int, granularity: Granularity) -> Period:
        """The first period of ``granularity`` in ``year`` (weeks: week 1 of the ISO year)."""
        granularity = check_granularity(granularity)
        return {"year": lambda: cls(year), "quarter": lambda: cls(year, quarter=1), "month": lambda: cls(year, 1),
                "week": lambda: cls(year, week=1), "day": lambda: cls(year, 1, 1)}[granularity]()

    @classmethod
    def last_of_year(cls, year: int, granularity: Granularity) -> Period:
        """The last period of ``granularity`` in ``year`` (weeks: week 52 or 53 of the ISO year)."""
        granularity = check_granularity(granularity)
        return {"year": lambda: cls(year), "quarter": lambda: cls(year, quarter=4), "month": lambda: cls(year, 12),
                "week": lambda: cls(year, week=iso_weeks(year)), "day": lambda: cls(year, 12, 31)}[granularity]()

    @property
    def granularity(self) -> Granularity:
        if self.day is not None:
            return "day"
        if self.month is not None:
            return "month"
        if self.quarter is not None:
            return "quarter"
        if self.week is not None:
            return "week"
        return "year"

    @property
    def month_of_year(self) -> int:
        """1..12 for a month; other periods have none."""
        if self.granularity != "month":
            raise PeriodError(f"period {self} is a {self.granularity} and has no month of year")
        return cast(int, self.month)

    @property
    def in_cycle(self) -> int:
        """The 0-based place in the granularity's :data:`CYCLE`: quarter 0..3, month 0..11, ISO week 0..52
        (week 53 is 52), weekday 0..6 (Monday 0). A year has no cycle."""
        granularity = self.granularity
        if granularity == "quarter":
            return cast(int, self.quarter) - 1
        if granularity == "month":
            return cast(int, self.month) - 1
        if granularity == "week":
            return cast(int, self.week) - 1
        if granularity == "day":
            return self.start().weekday()
        raise PeriodError(f"period {self} is a year: a year has no cycle")

    def index(self) -> int:
        """A running number in this granularity's steps (years, quarters, months since year 0; ISO weeks
        and days since 0001-01-01)."""
        granularity = self.granularity
        if granularity == "year":
            return self.year
        if granularity == "quarter":
            return self.year * 4 + cast(int, self.quarter) - 1
        if granularity == "month":
            return self.year * 12 + cast(int, self.month) - 1
        if granularity == "week":
            return (self.start().toordinal() - 1) // 7  # 0001-01-01 is a Monday: week starts are 1 mod 7
        return self.start().toordinal()

    @classmethod
    def _of_index(cls, granularity: Granularity, idx: int) -> Period:
        try:
            if granularity == "year":
                return cls(idx)
            if granularity == "quarter":
                return cls(idx // 4, quarter=idx % 4 + 1)
            if granularity == "month":
                return cls(idx // 12, idx % 12 + 1)
            if granularity == "week":
                return cls.of_date(dt.date.fromordinal(idx * 7 + 1), "week")
            return cls.of_date(dt.date.fromordinal(idx), "day")
        except (ValueError, OverflowError):
            raise PeriodError(f"a {granularity} {idx} steps from the start of the calendar is out of range 1..9999") from None

    def distance(self, other: Period | str) -> int:
        """Signed gap ``other - self`` in this granularity's steps (years, quarters, months, weeks, days)."""
        other = Period.parse(other)
        if other.granularity != self.granularity:
            raise PeriodError(f"cannot measure the gap between {self} and {other}: a {self.granularity} and a "
                              f"{other.granularity}")
        return other.index() - self.index()

    def shift(self, steps: int) -> Period:
        """The period ``steps`` steps later (earlier when negative): ``2015-W53`` + 1 is ``2016-W01``."""
        if self.granularity == "year":
            return Period(self.year + steps)
        return Period._of_index(self.granularity, self.index() + steps)

    def contains(self, other: Period | str | dt.date) -> bool:
        """Is ``other`` (a period or a date) wholly inside this period? A year contains itself, its quarters,
        months and days and the weeks that start and end in it; a month contains itself and its days."""
        if isinstance(other, dt.date):
            day = other.date() if isinstance(other, dt.datetime) else other
            return self.start() <= day <= self.end()
        other = Period.parse(other)
        return self.start() <= other.start() and other.end() <= self.end()

    def start(self) -> dt.date:
        """The first day of the period (a week: its Monday)."""
        granularity = self.granularity
        if granularity == "week":
            return dt.date.fromisocalendar(self.year, cast(int, self.week), 1)
        if granularity == "quarter":
            return dt.date(self.year, 3 * cast(int, self.quarter) - 2, 1)
        return dt.date(self.year, self.month or 1, self.day or 1)

    def end(self) -> dt.date:
        """The last day of the period, included (a week: its Sunday)."""
        granularity = self.granularity
        if granularity == "day":
            return self.start()
        if granularity == "week":
            return self.start() + dt.timedelta(days=6)
        if granularity == "year":
            return dt.date(self.year, 12, 31)
        last_month = self.month if granularity == "month" else 3 * cast(int, self.quarter)
        following = dt.date(self.year + 1, 1, 1) if last_month == 12 else dt.date(self.year, cast(int, last_month) + 1, 1)
        return following - dt.timedelta(days=1)

    def __str__(self) -> str:
        granularity = self.granularity
        if granularity == "year":
            return f"{self.year:04d}"
        if granularity == "quarter":
            return f"{self.year:04d}-Q{self.quarter}"
        if granularity == "week":
            return f"{self.year:04d}-W{self.week:02d}"
        if granularity == "month":
            return f"{self.year:04d}-{self.month:02d}"
        return f"{self.year:04d}-{self.month:02d}-{self.day:02d}"


def period_range(first: Period | str, last: Period | str) -> list[Period]:
    """Every period from ``first`` to ``last`` inclusive, in order, at their common granularity."""
    first, last = Period.parse(first), Period.parse(last)
    if first.granularity != last.granularity:
        raise PeriodError(f"range {first}..{last} mixes a {first.granularity} and a {last.granularity}")
    if last < first:
        raise PeriodError(f"range {first}..{last} is empty: {last} is before {first}")
    return list(_iter_range(first, last))


def _iter_range(first: Period, last: Period) -> Iterator[Period]:
    current = first
    while current <= last:
        yield current
        if current == last:
            return  # not one step further: the last period of year 9999 has no successor
        current = current.shift(1)


def steps_between(first: Period | str, last: Period | str) -> int:
    """``last - first`` in their common granularity's steps (:meth:`Period.distance`)."""
    return Period.parse(first).distance(last)


def sort_periods(periods: Iterable[str | Period]) -> list[str]:
    """The distinct periods as strings, in time order (each validated)."""
    return [str(p) for p in sorted({Period.parse(p) for p in periods})]


def latest_before(period: str | Period, periods: Iterable[str | Period]) -> str | None:
    """The latest of ``periods`` strictly before ``period`` (what was deployable when it began)."""
    target = Period.parse(period)
    earlier = [p for p in (Period.parse(q) for q in periods) if p < target]
    return str(max(earlier)) if earlier else None


def fractional_year(date: dt.date | dt.datetime) -> float:
    """``date`` as a fractional year: 2014-07-02 00:00 → 2014.5 (the year plus the elapsed share of it).

    The time probes regress on this (:mod:`timevec.analyze.probe`): one number per text, comparable across
    granularities, leap years counted by their own length.
    """
    if not isinstance(date, dt.datetime):
        date = dt.datetime(date.year, date.month, date.day)
    date = date.replace(tzinfo=None)
    start = dt.datetime(date.year, 1, 1)
    length = (dt.datetime(date.year + 1, 1, 1) - start).total_seconds()
    return date.year + (date - start).total_seconds() / length


def period_midpoint(period: Period | str) -> float:
    """The middle of a period as a fractional year (2014 → 2014.5; 2014-01 → 2014 + 15.5/365)."""
    period = Period.parse(period)
    return (fractional_year(period.start()) + fractional_year(period.end() + dt.timedelta(days=1))) / 2
