"""Periods: one year (``2014``) or one month (``2014-03``) of a dated corpus.

Periods are strings everywhere outside this module (paths, tables, plots); this class is how
code parses, orders and measures them. A strict parser matters because period strings end up in
store paths: anything that is not exactly ``YYYY`` or ``YYYY-MM`` is refused, so a period can
never smuggle ``..`` or ``/`` into a path.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import total_ordering
from typing import Literal

from timevec.errors import TimevecError

Granularity = Literal["year", "month"]

_PATTERN = re.compile(r"^(?P<year>\d{4})(?:-(?P<month>\d{2}))?$")


class PeriodError(TimevecError, ValueError):
    """A string that is not a valid period, or periods that cannot be combined."""

    exit_status = 2


@total_ordering
@dataclass(frozen=True)
class Period:
    """A year or a month. Ordered by start date; a year sorts before its own months."""

    year: int
    month: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.year <= 9999:
            raise PeriodError(f"period year {self.year} is out of range 1..9999")
        if self.month is not None and not 1 <= self.month <= 12:
            raise PeriodError(f"period month {self.month} is out of range 1..12")

    def _key(self) -> tuple[int, int]:
        return (self.year, self.month or 0)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Period):
            return NotImplemented
        return self._key() < other._key()

    @classmethod
    def parse(cls, text: str | int | Period) -> Period:
        """Parse ``YYYY`` or ``YYYY-MM``; anything else is a :class:`PeriodError` naming it."""
        if isinstance(text, Period):
            return text
        if isinstance(text, int):
            text = str(text)
        if not isinstance(text, str):
            raise PeriodError(f"period must be a string like '2014' or '2014-03', got {text!r}")
        match = _PATTERN.match(text.strip())
        if match is None:
            raise PeriodError(f"bad period {text!r}: expected 'YYYY' or 'YYYY-MM'")
        month = match.group("month")
        try:
            return cls(int(match.group("year")), int(month) if month else None)
        except PeriodError as exc:
            raise PeriodError(f"bad period {text!r}: {exc}") from None

    @classmethod
    def of_date(cls, date: dt.date | dt.datetime, granularity: Granularity) -> Period:
        """The period of ``granularity`` that contains ``date``."""
        if granularity == "year":
            return cls(date.year)
        if granularity == "month":
            return cls(date.year, date.month)
        raise PeriodError(f"unknown granularity {granularity!r}: expected 'year' or 'month'")

    @property
    def granularity(self) -> Granularity:
        return "year" if self.month is None else "month"

    @property
    def month_of_year(self) -> int:
        """1..12 for a month; a year has none."""
        if self.month is None:
            raise PeriodError(f"period {self} is a year and has no month of year")
        return self.month

    def index(self) -> int:
        """A running number: years count years, months count months since year 0."""
        return self.year if self.month is None else self.year * 12 + (self.month - 1)

    def distance(self, other: Period | str) -> int:
        """Signed gap ``other - self`` in this granularity's units (years or months)."""
        other = Period.parse(other)
        if other.granularity != self.granularity:
            raise PeriodError(f"cannot measure the gap between {self} and {other}: a year and a month")
        return other.index() - self.index()

    def shift(self, steps: int) -> Period:
        """The period ``steps`` units later (earlier when negative)."""
        if self.month is None:
            return Period(self.year + steps)
        idx = self.index() + steps
        return Period(idx // 12, idx % 12 + 1)

    def contains(self, other: Period | str) -> bool:
        """A year contains itself and its months; a month contains itself."""
        other = Period.parse(other)
        if self.month is None:
            return other.year == self.year
        return other == self

    def start(self) -> dt.date:
        return dt.date(self.year, self.month or 1, 1)

    def __str__(self) -> str:
        return f"{self.year:04d}" if self.month is None else f"{self.year:04d}-{self.month:02d}"


def period_range(first: Period | str, last: Period | str) -> list[Period]:
    """Every period from ``first`` to ``last`` inclusive, in order, at their common granularity."""
    first, last = Period.parse(first), Period.parse(last)
    if first.granularity != last.granularity:
        raise PeriodError(f"range {first}..{last} mixes a year and a month")
    if last < first:
        raise PeriodError(f"range {first}..{last} is empty: {last} is before {first}")
    return list(_iter_range(first, last))


def _iter_range(first: Period, last: Period) -> Iterator[Period]:
    current = first
    while current <= last:
        yield current
        current = current.shift(1)


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
    years and months, leap years counted by their own length.
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
    return (fractional_year(period.start()) + fractional_year(period.shift(1).start())) / 2
